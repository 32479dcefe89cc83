//! The far ends of notifications, real and on 127.0.0.1: an HTTP server that records every
//! request it is sent (a webhook, ntfy, Slack or Discord endpoint as the sender sees it), and
//! aiosmtpd (Debian's `python3-aiosmtpd`, an RFC 5321 server) delivering into a Maildir.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct Request {
    /// The path (and query).
    pub path: String,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: String,
}

impl Request {
    /// The header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// An HTTP server that answers 200 to anything and keeps every request.
pub struct Recorder {
    /// `127.0.0.1:port`.
    pub addr: String,
    got: Arc<Mutex<Vec<Request>>>,
}

impl Recorder {
    /// Listen on a free port, in a thread that lives as long as the test process.
    pub fn start() -> Recorder {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let got = Arc::new(Mutex::new(Vec::new()));
        let keep = got.clone();
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(c) = c else { continue };
                if let Some(r) = read_request(c) {
                    keep.lock().unwrap().push(r);
                }
            }
        });
        Recorder { addr, got }
    }

    /// Every request whose path starts with `prefix`, waiting up to 10 s for at least `n`.
    pub fn wait_for(&self, prefix: &str, n: usize) -> Vec<Request> {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let now: Vec<Request> =
                self.got.lock().unwrap().iter().filter(|r| r.path.starts_with(prefix)).cloned().collect();
            if now.len() >= n || Instant::now() > until {
                return now;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every request so far.
    pub fn all(&self) -> Vec<Request> {
        self.got.lock().unwrap().clone()
    }
}

fn read_request(mut c: std::net::TcpStream) -> Option<Request> {
    c.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut r = BufReader::new(c.try_clone().ok()?);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let path = line.split_whitespace().nth(1)?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let len: usize = headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).ok()?;
    c.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").ok()?;
    Some(Request { path, headers, body: String::from_utf8_lossy(&body).into_owned() })
}

/// aiosmtpd on a free 127.0.0.1 port, delivering into a Maildir; stopped when dropped.
pub struct Smtp {
    /// The port.
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl Smtp {
    /// Start it and wait until it answers.
    pub fn start() -> Smtp {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("/usr/bin/python3")
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}"), "-c", "aiosmtpd.handlers.Mailbox"])
            .arg(dir.path().join("mail"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("aiosmtpd (Debian's python3-aiosmtpd, installed by scripts/testenv.sh up)");
        let until = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < until, "aiosmtpd did not listen on {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        Smtp { port, child, dir }
    }

    /// Every message delivered (raw RFC 5322 text), waiting up to 10 s for at least `n`.
    pub fn messages(&self, n: usize) -> Vec<String> {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let new: PathBuf = self.dir.path().join("mail/new");
            let mut got: Vec<String> = std::fs::read_dir(&new)
                .map(|d| d.flatten().map(|e| std::fs::read_to_string(e.path()).unwrap_or_default()).collect())
                .unwrap_or_default();
            got.sort();
            if got.len() >= n || Instant::now() > until {
                return got;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
