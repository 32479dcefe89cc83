//! The age layer of the off-site copy: the recipients every upload is encrypted to
//! (`[remote] encrypt = { recipients_file = … }`), the identity the remote copy is decrypted
//! with (`--identity FILE` or `[remote] identity_file`, read when needed and never copied or
//! recorded), and the two streams between a local file and the remote's bytes.
//!
//! X25519 only (`age1…` recipients, `AGE-SECRET-KEY-1…` identities): no plugins, passphrases
//! or SSH keys. Both streams are synchronous (they run through [`crate::blocking::run`]) and
//! bounded: [`seal_file`] hands the ciphertext on in parts of a fixed size through a channel of
//! one, [`unseal_to_file`] reads it from a channel of a few chunks. A file is written only
//! after the age header has been opened with the identity, so a wrong identity writes nothing.

use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The recipients every upload is encrypted to, read from a recipients file.
#[derive(Clone)]
pub struct Recipients {
    /// The file they were read from (for messages).
    pub file: PathBuf,
    keys: Vec<age::x25519::Recipient>,
}

impl std::fmt::Debug for Recipients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Recipients({}, {} key(s))", self.file.display(), self.keys.len())
    }
}

impl Recipients {
    /// How many recipients.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are none (never, once read).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The meaningful lines of a key file: (line number, trimmed text), without blanks and `#` comments.
fn key_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())).filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
}

/// Read a recipients file: one X25519 recipient (`age1…`) per line, blank lines and `#`
/// comments allowed. `key` names the config key in messages.
pub fn read_recipients(file: &Path, key: &str) -> Result<Recipients> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        Error::Config(format!(
            "{key}: {}: {e}; it must list the age recipients (`age1…`, one per line) the off-site copy is \
             encrypted to (make one with `age-keygen -o identity.txt`, keep that file off this host, and put the \
             `public key:` line here)",
            file.display()
        ))
    })?;
    parse_recipients(&text, file, key)
}

fn parse_recipients(text: &str, file: &Path, key: &str) -> Result<Recipients> {
    let mut keys = Vec::new();
    for (n, line) in key_lines(text) {
        let r = age::x25519::Recipient::from_str(line).map_err(|_| {
            Error::Config(format!(
                "{key}: {}: line {n}: \"{line}\" is not an age X25519 recipient; each line must be a public key \
                 starting with `age1` (as `age-keygen -y identity.txt` prints), or a `#` comment",
                file.display()
            ))
        })?;
        keys.push(r);
    }
    if keys.is_empty() {
        return Err(Error::Config(format!(
            "{key}: {}: no recipients in it; add at least one `age1…` public key (`age-keygen -y identity.txt`)",
            file.display()
        )));
    }
    Ok(Recipients { file: file.to_path_buf(), keys })
}

/// An identity to decrypt with, read from an identity file (what `age-keygen` writes).
pub struct Identity {
    /// The file it was read from (for messages; its contents are never shown).
    pub file: PathBuf,
    keys: Vec<age::x25519::Identity>,
}

/// Read an identity file: X25519 secret keys (`AGE-SECRET-KEY-1…`), one per line, blank
/// lines and `#` comments allowed. A bad line is named by number only: it may be a secret.
pub fn read_identity(file: &Path) -> Result<Identity> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        Error::Config(format!(
            "identity file {}: {e}; give the age identity (`AGE-SECRET-KEY-1…`, as age-keygen writes it) with \
             --identity FILE or [remote] identity_file",
            file.display()
        ))
    })?;
    let mut keys = Vec::new();
    for (n, line) in key_lines(&text) {
        keys.push(age::x25519::Identity::from_str(line).map_err(|_| {
            Error::Config(format!(
                "identity file {}: line {n} is not an age X25519 identity (a line starting with \
                 `AGE-SECRET-KEY-1`, as age-keygen writes it)",
                file.display()
            ))
        })?);
    }
    if keys.is_empty() {
        return Err(Error::Config(format!(
            "identity file {}: no `AGE-SECRET-KEY-1…` line in it; give the file age-keygen wrote",
            file.display()
        )));
    }
    Ok(Identity { file: file.to_path_buf(), keys })
}

/// Bytes age adds to `plain` bytes at most, beyond its header: a 16-byte tag per 64 KiB chunk
/// and the 16-byte nonce.
pub fn overhead(plain: u64) -> u64 {
    16 * (plain / (64 * 1024) + 1) + 16
}

/// A `Write` that cuts what is written into parts of `part_size` bytes and hands each to the
/// uploader; the last, shorter part on [`PartSink::finish`].
struct PartSink {
    buf: Vec<u8>,
    part_size: usize,
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
}

impl PartSink {
    fn send(&mut self) -> std::io::Result<()> {
        let part = std::mem::replace(&mut self.buf, Vec::with_capacity(self.part_size));
        self.tx
            .blocking_send(part)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the upload stopped"))
    }

    fn finish(mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            self.send()
        }
    }
}

impl Write for PartSink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(self.part_size - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == self.part_size {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Encrypt `path` to `recipients`, handing the ciphertext to `tx` in parts of `part_size`
/// bytes (the last one shorter). Returns the sha256 and size of the plaintext read, so the
/// caller can refuse to complete an upload of a file that no longer matches its manifest.
pub fn seal_file(
    path: &Path,
    recipients: &Recipients,
    part_size: usize,
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
) -> Result<(String, u64)> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let enc = age::Encryptor::with_recipients(recipients.keys.iter().map(|r| r as &dyn age::Recipient))
        .map_err(|e| Error::Config(format!("{}: {e}", recipients.file.display())))?;
    let sink = PartSink { buf: Vec::with_capacity(part_size), part_size, tx };
    let stopped = |e: std::io::Error| Error::Backup(format!("{}: encrypting for upload: {e}", path.display()));
    let mut w = enc.wrap_output(sink).map_err(stopped)?;
    let (mut hash, mut size) = (Sha256::new(), 0u64);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io(path, e)),
        };
        hash.update(&buf[..n]);
        size += n as u64;
        w.write_all(&buf[..n]).map_err(stopped)?;
    }
    w.finish().map_err(stopped)?.finish().map_err(stopped)?;
    Ok((hex::encode(hash.finalize()), size))
}

/// A `Read` over the chunks a download hands on; an error sent down the channel (the
/// connection broke) is returned as a read error, never taken for the end of the object.
struct ChunkReader {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.blocking_recv() {
                Some(Ok(c)) => (self.cur, self.pos) = (c, 0),
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.cur.len() - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Why an object could not be decrypted.
#[derive(Debug)]
pub enum UnsealError {
    /// The identity is none of the object's recipients.
    WrongIdentity,
    /// The object is not an age file, or was damaged or cut short (age authenticates every chunk).
    Damaged(String),
    /// Writing the plaintext failed.
    Local(Error),
}

/// Decrypt the age object arriving on `rx` with `identity` into `tmp` (created, with its
/// parent dirs, only once the header has opened), hashing the plaintext. Returns its sha256
/// and size; on any error `tmp` is removed.
pub fn unseal_to_file(
    rx: tokio::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
    identity: &Identity,
    tmp: &Path,
) -> std::result::Result<(String, u64), UnsealError> {
    let input = std::io::BufReader::with_capacity(256 * 1024, ChunkReader { rx, cur: Vec::new(), pos: 0 });
    let dec = age::Decryptor::new_buffered(input).map_err(|e| UnsealError::Damaged(e.to_string()))?;
    let mut plain = dec.decrypt(identity.keys.iter().map(|i| i as &dyn age::Identity)).map_err(|e| match e {
        age::DecryptError::NoMatchingKeys => UnsealError::WrongIdentity,
        e => UnsealError::Damaged(e.to_string()),
    })?;
    if let Some(parent) = tmp.parent() {
        crate::fsutil::create_private_dir(parent).map_err(|e| UnsealError::Local(Error::io(parent, e)))?;
    }
    let res = (|| {
        let mut f = std::fs::File::create(tmp).map_err(|e| UnsealError::Local(Error::io(tmp, e)))?;
        let (mut hash, mut size) = (Sha256::new(), 0u64);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match plain.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(UnsealError::Damaged(e.to_string())),
            };
            hash.update(&buf[..n]);
            size += n as u64;
            f.write_all(&buf[..n]).map_err(|e| UnsealError::Local(Error::io(tmp, e)))?;
        }
        f.sync_all().map_err(|e| UnsealError::Local(Error::io(tmp, e)))?;
        Ok((hex::encode(hash.finalize()), size))
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    res
}

/// Whether `bytes` begin like an age file (its header line), for tests and messages.
pub fn looks_sealed(mut bytes: impl BufRead) -> bool {
    let mut first = String::new();
    bytes.read_line(&mut first).is_ok() && first.trim_end() == "age-encryption.org/v1"
}

#[cfg(test)]
mod tests {
    use super::*;

    const R1: &str = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";

    #[test]
    fn a_recipients_file_allows_comments_and_a_bad_line_is_named_with_file_line_and_value() {
        let f = Path::new("/etc/slipway/age-recipients");
        let ok =
            parse_recipients(&format!("# ops team\n\n{R1}\n  {R1}  \n"), f, "remote.encrypt.recipients_file").unwrap();
        assert_eq!(ok.len(), 2);
        for (text, line, value) in [
            (format!("# x\n{R1}\nage1nope\n"), 3, "age1nope"),
            ("ssh-ed25519 AAAAC3Nza x@y\n".to_string(), 1, "ssh-ed25519 AAAAC3Nza x@y"),
        ] {
            let e = parse_recipients(&text, f, "remote.encrypt.recipients_file").unwrap_err();
            let m = e.to_string();
            assert!(
                m.contains("/etc/slipway/age-recipients")
                    && m.contains(&format!("line {line}:"))
                    && m.contains(value)
                    && m.contains("remote.encrypt.recipients_file"),
                "{m}"
            );
            assert_eq!(e.exit_kind(), crate::error::ExitKind::Usage);
        }
        let e = parse_recipients("# only a comment\n", f, "k").unwrap_err().to_string();
        assert!(e.contains("no recipients"), "{e}");
    }

    #[test]
    fn a_sealed_file_opens_only_with_its_identity_and_a_wrong_one_writes_nothing() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("plain");
        let data: Vec<u8> = (0..300_000u32).flat_map(|i| i.to_le_bytes()).collect();
        std::fs::write(&src, &data).unwrap();
        let id = age::x25519::Identity::generate();
        let recipients = Recipients { file: "r".into(), keys: vec![id.to_public()] };
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let src2 = src.clone();
        let h = std::thread::spawn(move || seal_file(&src2, &recipients, 100_000, tx));
        let mut parts = Vec::new();
        while let Some(p) = rx.blocking_recv() {
            parts.push(p);
        }
        let (sha, size) = h.join().unwrap().unwrap();
        assert_eq!((sha, size), (hex::encode(Sha256::digest(&data)), data.len() as u64));
        assert!(parts[..parts.len() - 1].iter().all(|p| p.len() == 100_000));
        let object: Vec<u8> = parts.concat();
        assert!(looks_sealed(&object[..]));
        assert!(object.len() as u64 <= data.len() as u64 + overhead(data.len() as u64) + 400);

        let open = |identity: &Identity, out: &Path| {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            let chunks: Vec<Vec<u8>> = object.chunks(7000).map(<[u8]>::to_vec).collect();
            let feeder = std::thread::spawn(move || {
                for c in chunks {
                    if tx.blocking_send(Ok(c)).is_err() {
                        break;
                    }
                }
            });
            let r = unseal_to_file(rx, identity, out);
            feeder.join().unwrap();
            r
        };
        let right = Identity { file: "i".into(), keys: vec![id] };
        let out = d.path().join("sub/out");
        let (sha, _) = open(&right, &out).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), data);
        assert_eq!(sha, hex::encode(Sha256::digest(&data)));
        let wrong = Identity { file: "w".into(), keys: vec![age::x25519::Identity::generate()] };
        let out2 = d.path().join("other/out");
        assert!(matches!(open(&wrong, &out2), Err(UnsealError::WrongIdentity)));
        assert!(!d.path().join("other").exists(), "nothing is written for a wrong identity");
    }
}
