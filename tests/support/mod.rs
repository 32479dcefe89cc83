//! The test harness. [`Sandbox`] gives each test its own temp dirs (state, backups, tenant
//! data), Docker network, desired-state git repo (bare + clone, changed by real pushes), host
//! config and registry repos, and removes its containers and network on `Drop`, so tests run
//! in parallel and leave nothing behind. [`Env`] is what `make test` started.

#![allow(dead_code)]

pub mod gitserve;
pub mod receivers;
pub mod reports;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// What `make test` started: registry, S3 server, fixture images.
pub struct Env {
    /// `127.0.0.1:PORT` of the local registry.
    pub registry: String,
    /// `http://127.0.0.1:PORT` of the S3 server.
    pub s3_endpoint: String,
    /// S3 access key.
    pub s3_access_key: String,
    /// S3 secret key.
    pub s3_secret_key: String,
    /// S3 region.
    pub s3_region: String,
    /// Fixture name (lowercase) → `repo@sha256:…`.
    pub fixtures: HashMap<String, String>,
}

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: the end-to-end tests need the test environment; run `make test` (or `scripts/testenv.sh up && . .testenv/env`)")
    })
}

impl Env {
    /// The environment, read once.
    pub fn get() -> &'static Env {
        static ENV: OnceLock<Env> = OnceLock::new();
        ENV.get_or_init(|| Env {
            registry: var("SWTEST_REGISTRY"),
            s3_endpoint: var("SWTEST_S3_ENDPOINT"),
            s3_access_key: var("SWTEST_S3_ACCESS_KEY"),
            s3_secret_key: var("SWTEST_S3_SECRET_KEY"),
            s3_region: std::env::var("SWTEST_S3_REGION").unwrap_or_else(|_| "us-east-1".into()),
            fixtures: std::env::vars()
                .filter_map(|(k, v)| k.strip_prefix("SWTEST_FIXTURE_").map(|f| (f.to_lowercase(), v)))
                .collect(),
        })
    }

    /// The `repo@sha256:…` of a fixture image.
    pub fn fixture(&self, name: &str) -> &str {
        self.fixtures.get(name).unwrap_or_else(|| panic!("no fixture {name}; have {:?}", self.fixtures.keys()))
    }
}

/// Run a command, panic with its output if it fails, return stdout.
pub fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn docker(args: &[&str]) -> String {
    sh(Command::new("docker").args(args))
}

/// The output of one slipway run.
#[derive(Debug)]
pub struct Out {
    /// Exit code; -1 when killed by a signal.
    pub code: i32,
    /// stdout.
    pub stdout: String,
    /// stderr.
    pub stderr: String,
}

impl Out {
    /// stdout parsed as the `--json` object.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}\nstderr: {}", self.stdout, self.stderr))
    }

    /// stdout parsed as the `--json` envelope of a report of type `R` (see [`reports`]).
    pub fn envelope<R: serde::de::DeserializeOwned>(&self) -> reports::Envelope<R> {
        reports::parse(&self.stdout, &self.stderr)
    }

    /// The typed report of a `--json` run (panics if the job ended with an error instead).
    pub fn report<R: serde::de::DeserializeOwned>(&self) -> R {
        self.envelope::<R>().report()
    }

    /// The run id of a `--json` run.
    pub fn run_id(&self) -> String {
        self.envelope::<serde::de::IgnoredAny>().run_id.unwrap_or_else(|| panic!("no run_id in {}", self.stdout))
    }
}

/// Run slipway with another host config than a sandbox's (one `slipway init` wrote, say).
pub fn slipway_with_config(config: &Path, args: &[&str]) -> Out {
    let out = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("SLIPWAY_LOG", "info")
        .output()
        .unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A one-request HTTP server on 127.0.0.1 (a webhook receiver): answers 200 and hands over the
/// request body.
pub struct Webhook {
    /// The URL to configure.
    pub url: String,
    handle: std::thread::JoinHandle<String>,
}

impl Webhook {
    /// Listen on a free port; `path` is the URL path the sender is told to use.
    pub fn listen(path: &str) -> Webhook {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}{path}", l.local_addr().unwrap());
        let handle = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 8192];
            loop {
                let n = c.read(&mut buf).unwrap();
                assert!(n > 0, "the sender closed before the whole request arrived");
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got).into_owned();
                if let Some(i) = text.find("\r\n\r\n") {
                    let len: usize = text[..i]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    if got.len() >= i + 4 + len {
                        c.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").unwrap();
                        return text[i + 4..].to_string();
                    }
                }
            }
        });
        Webhook { url, handle }
    }

    /// The body of the one request (blocks until it came).
    pub fn body(self) -> String {
        self.handle.join().unwrap()
    }

    /// A URL on which nothing listens.
    pub fn dead_url() -> String {
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        format!("http://{addr}/x")
    }
}

/// One test's world.
pub struct Sandbox {
    id: String,
    root: tempfile::TempDir,
    network: String,
    config_extra: std::cell::RefCell<String>,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

impl Sandbox {
    /// A fresh sandbox with its own network, git repo and host config.
    pub fn new() -> Sandbox {
        Sandbox::new_in(&std::env::temp_dir())
    }

    /// [`Sandbox::new`] with its root under `parent` rather than the temp dir (a unit with
    /// `PrivateTmp=yes` sees another `/tmp`).
    pub fn new_in(parent: &Path) -> Sandbox {
        Env::get();
        // The testenv's tag starts every id, so `testenv.sh down` removes the leftovers of its
        // own tests only, never those of another work tree's testenv on this engine.
        let id = format!(
            "sw{}p{}x{}x{}",
            std::env::var("SWTEST_ENV_TAG").unwrap_or_default(),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_micros() % 1000
        );
        std::fs::create_dir_all(parent).unwrap();
        let root = tempfile::Builder::new().prefix(&format!("{id}-")).tempdir_in(parent).unwrap();
        for d in ["state", "backups", "data"] {
            std::fs::create_dir_all(root.path().join(d)).unwrap();
        }
        let network = format!("{id}-net");
        docker(&["network", "create", "--label", &format!("slipway.test={id}"), &network]);
        let s = Sandbox { id, root, network, config_extra: Default::default() };
        sh(Command::new("git").args(["init", "-q", "--bare", "-b", "main"]).arg(s.root().join("fleet.git")));
        sh(Command::new("git").args(["init", "-q", "-b", "main"]).arg(s.root().join("fleet")));
        s.write_config();
        s
    }

    /// Unique id of this sandbox (container name prefix, label value).
    pub fn id(&self) -> &str {
        &self.id
    }
    /// The temp root.
    pub fn root(&self) -> &Path {
        self.root.path()
    }
    /// The sandbox's Docker network.
    pub fn network(&self) -> &str {
        &self.network
    }
    /// The backup root.
    pub fn backups(&self) -> PathBuf {
        self.root().join("backups")
    }
    /// The state dir.
    pub fn state(&self) -> PathBuf {
        self.root().join("state")
    }
    /// A tenant's data dir.
    pub fn data_dir(&self, tenant: &str) -> PathBuf {
        self.root().join("data").join(tenant)
    }
    /// The host config file.
    pub fn config_path(&self) -> PathBuf {
        self.root().join("config.toml")
    }

    fn write_config(&self) {
        use std::os::unix::fs::PermissionsExt;
        let text = format!(
            "{}state_dir = \"{}\"\nbackup_root = \"{}\"\n\n[desired]\nrepo = \"{}\"\nbranch = \"main\"\n",
            self.config_extra.borrow(),
            self.state().display(),
            self.backups().display(),
            self.root().join("fleet.git").display()
        );
        std::fs::write(self.config_path(), text).unwrap();
        std::fs::set_permissions(self.config_path(), std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    /// Add a top-level key (TOML value text) to the host config.
    pub fn set_config(&self, key: &str, toml_value: &str) {
        self.config_extra.borrow_mut().push_str(&format!("{key} = {toml_value}\n"));
        self.write_config();
    }

    /// Append whole tables to the host config (e.g. `[remote]…`).
    pub fn append_config(&self, tables: &str) {
        let mut text = std::fs::read_to_string(self.config_path()).unwrap();
        text.push('\n');
        text.push_str(tables);
        std::fs::write(self.config_path(), text).unwrap();
    }

    /// An `[[app]]` named "app" selecting this sandbox's tenants, pinned to `image`.
    pub fn fleet_app(&self, image: &str, extra: &str) -> String {
        let mut app = format!(
            "[[app]]\nname = \"app\"\nimage = \"{image}\"\nselect = \"slipway.test={id}\"\n\
             tenant_from = \"name:{id}-{{tenant}}\"\ndata_dir = \"{data}/{{tenant}}\"\n",
            id = self.id,
            data = self.root().join("data").display()
        );
        if !extra.contains("health =") {
            app.push_str("health = { path = \"/api/health\", port = 8080, timeout_s = 20 }\n");
        }
        if !extra.contains("stop_timeout_s") {
            app.push_str("stop_timeout_s = 5\n");
        }
        app.push_str(extra);
        app
    }

    /// Commit `fleet.toml` and push it to the bare repo; returns the commit id.
    pub fn write_fleet(&self, text: &str) -> String {
        self.write_fleet_with(text, &[])
    }

    /// [`Sandbox::write_fleet`] with extra `git commit` arguments and config (`-S`, say).
    pub fn write_fleet_signed(&self, text: &str, key: &Path) -> String {
        self.write_fleet_with(text, &["-c", "gpg.format=ssh", "-c", &format!("user.signingkey={}", key.display())])
    }

    /// Run git in the fleet work tree; stdout.
    pub fn fleet_git(&self, args: &[&str]) -> String {
        sh(Command::new("git")
            .arg("-C")
            .arg(self.root().join("fleet"))
            .args(["-c", "user.name=test", "-c", "user.email=test@localhost"])
            .args(args))
    }

    fn write_fleet_with(&self, text: &str, config: &[&str]) -> String {
        let work = self.root().join("fleet");
        std::fs::write(work.join("fleet.toml"), text).unwrap();
        let git = |args: &[&str]| {
            sh(Command::new("git")
                .arg("-C")
                .arg(&work)
                .args(["-c", "user.name=test", "-c", "user.email=test@localhost"])
                .args(args))
        };
        git(&["add", "fleet.toml"]);
        let mut commit: Vec<&str> = config.to_vec();
        commit.extend(["commit", "-q", "--allow-empty", "-m", "pin"]);
        if !config.is_empty() {
            commit.push("-S");
        }
        git(&commit);
        git(&["push", "-q", self.root().join("fleet.git").to_str().unwrap(), "HEAD:main"]);
        git(&["rev-parse", "HEAD"])
    }

    /// Tag and push a fixture into a per-test registry repo; returns `repo@sha256:…`.
    pub fn push_fixture_as(&self, fixture: &str, suffix: &str) -> String {
        let env = Env::get();
        let src = env.fixture(fixture);
        let repo = format!("{}/{}-{suffix}", env.registry, self.id);
        let tag = format!("{repo}:{fixture}");
        docker(&["tag", src, &tag]);
        let out = docker(&["push", &tag]);
        let digest = out
            .split_whitespace()
            .find(|w| w.starts_with("sha256:") && w.len() == 71)
            .unwrap_or_else(|| panic!("no digest in push output: {out}"))
            .to_string();
        format!("{repo}@{digest}")
    }

    /// Create and start a tenant container `<id>-<tenant>` as an operator would.
    pub fn add_tenant(&self, tenant: &str, image: &str) -> String {
        self.add_tenant_with(tenant, image, &[])
    }

    /// [`Sandbox::add_tenant`] with extra `docker run` options (labels, env) before the image.
    pub fn add_tenant_with(&self, tenant: &str, image: &str, extra: &[&str]) -> String {
        let data = self.data_dir(tenant);
        std::fs::create_dir_all(&data).unwrap();
        self.add_tenant_on(tenant, image, &data.display().to_string(), extra)
    }

    /// [`Sandbox::add_tenant_with`] with `source` (a host dir, or a volume's name) at `/data`.
    pub fn add_tenant_on(&self, tenant: &str, image: &str, source: &str, extra: &[&str]) -> String {
        let name = format!("{}-{tenant}", self.id);
        let (label, rule) = (
            format!("slipway.test={}", self.id),
            format!("traefik.http.routers.app.rule=Host(`{tenant}.example.test`)"),
        );
        let (env, vol) = (format!("TENANT={tenant}"), format!("{source}:/data"));
        let mut args = vec![
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            &self.network,
            "--network-alias",
            tenant,
            "--label",
            &label,
            "--label",
            "app.managed=true",
            "--label",
            &rule,
            "--env",
            &env,
            "--volume",
            &vol,
            "--restart",
            "unless-stopped",
            "--memory",
            "64m",
        ];
        args.extend_from_slice(extra);
        args.push(image);
        docker(&args);
        name
    }

    /// Write a file into a tenant's data dir.
    pub fn write_data(&self, tenant: &str, rel: &str, content: &str) {
        let p = self.data_dir(tenant).join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    /// Run slipway with this sandbox's config.
    pub fn slipway(&self, args: &[&str]) -> Out {
        self.slipway_env(args, &[])
    }

    /// Run slipway with `args`, killed at the test point `point` (feature `test-crash`): the
    /// point was reached and the process died there.
    pub fn slipway_killed_at(&self, args: &[&str], point: &str) -> Out {
        let out = self.slipway_env(args, &[("SLIPWAY_TEST_CRASH_AT", point)]);
        let reached = format!("slipway test point reached: {point}");
        assert!(out.stderr.contains(&reached), "{point}: {} {}", out.stdout, out.stderr);
        assert_eq!(out.code, -1, "{point}: {}", out.stdout);
        out
    }

    /// Run slipway with extra environment variables.
    pub fn slipway_env(&self, args: &[&str], env: &[(&str, &str)]) -> Out {
        let out = Command::new(env!("CARGO_BIN_EXE_slipway"))
            .arg("--config")
            .arg(self.config_path())
            .args(args)
            .envs(env.iter().copied())
            .env("SLIPWAY_LOG", "info")
            .output()
            .unwrap();
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Start slipway with this sandbox's config in the background, stdout and stderr piped.
    pub fn spawn(&self, args: &[&str], env: &[(&str, &str)]) -> std::process::Child {
        Command::new(env!("CARGO_BIN_EXE_slipway"))
            .arg("--config")
            .arg(self.config_path())
            .args(args)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Spawn slipway with `SLIPWAY_TEST_PAUSE_AT=<point>:<ms>` and wait until it says it is
    /// held there (it announces a test point on stderr, then sleeps): a test acts while the job
    /// is held at a known point, never after a guessed sleep. Returns the child (its stderr
    /// taken), whether the point was reached within 120 s, and a reader that yields all of
    /// stderr once the child ends.
    pub fn spawn_held_at(
        &self,
        args: &[&str],
        point: &str,
        ms: u64,
    ) -> (std::process::Child, bool, std::thread::JoinHandle<String>) {
        use std::io::BufRead;
        let pause = format!("{point}:{ms}");
        let mut child = self.spawn(args, &[("SLIPWAY_TEST_PAUSE_AT", pause.as_str())]);
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let said = format!("slipway test point reached: {point}");
        let reader = std::thread::spawn(move || {
            let mut seen = String::new();
            for line in std::io::BufReader::new(stderr).lines() {
                let line = line.unwrap_or_default();
                if line.contains(&said) {
                    let _ = tx.send(());
                }
                seen.push_str(&line);
                seen.push('\n');
            }
            seen
        });
        let reached = rx.recv_timeout(std::time::Duration::from_secs(120)).is_ok();
        (child, reached, reader)
    }

    /// `docker inspect` of a container.
    pub fn inspect(&self, name: &str) -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_str(&docker(&["inspect", name])).unwrap();
        v[0].clone()
    }

    /// `docker inspect`, or None while the container does not exist (mid-rollout, say).
    pub fn try_inspect(&self, name: &str) -> Option<serde_json::Value> {
        let out = Command::new("docker").args(["inspect", name]).output().ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice::<serde_json::Value>(&out.stdout).ok().map(|v| v[0].clone())
    }

    /// `docker image inspect`.
    pub fn image_inspect(&self, image: &str) -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_str(&docker(&["image", "inspect", image])).unwrap();
        v[0].clone()
    }

    /// The image reference a container was created from (`Config.Image`).
    pub fn image_of(&self, container: &str) -> String {
        self.inspect(container)["Config"]["Image"].as_str().unwrap_or_default().to_string()
    }

    /// Whether a container exists.
    pub fn container_exists(&self, name: &str) -> bool {
        Command::new("docker").args(["inspect", name]).output().unwrap().status.success()
    }

    /// This sandbox's containers whose name contains `part`.
    pub fn containers_named_like(&self, part: &str) -> Vec<String> {
        docker(&["ps", "-a", "--filter", &format!("label=slipway.test={}", self.id), "--format", "{{.Names}}"])
            .lines()
            .filter(|n| n.contains(part))
            .map(str::to_string)
            .collect()
    }

    /// The container's IP on the sandbox network.
    pub fn container_ip(&self, name: &str) -> String {
        self.inspect(name)["NetworkSettings"]["Networks"][&self.network]["IPAddress"].as_str().unwrap().to_string()
    }

    /// GET a URL, retrying briefly; the body (panics if no 2xx within 10 s).
    pub fn http_get(&self, url: &str) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let r = Command::new("curl").args(["-fsS", "-m", "2", url]).output().unwrap();
            if r.status.success() {
                return String::from_utf8_lossy(&r.stdout).into_owned();
            }
            assert!(std::time::Instant::now() < deadline, "GET {url}: {}", String::from_utf8_lossy(&r.stderr));
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    /// Mount a tmpfs of `size` over `dir` until the guard drops.
    pub fn mount_tmpfs(&self, dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        sh(Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"]).arg(dir));
        Tmpfs(dir.to_path_buf())
    }
}

/// A mounted tmpfs, unmounted on drop.
pub struct Tmpfs(PathBuf);
impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let ids = Command::new("docker")
            .args(["ps", "-aq", "--filter", &format!("label=slipway.test={}", self.id)])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let _ = Command::new("docker").args(["rm", "-f"]).args(&ids).output();
        }
        let _ = Command::new("docker").args(["network", "rm", &self.network]).output();
        // The per-test registry repos' local tags.
        let tags = Command::new("docker")
            .args(["images", "--format", "{{.Repository}}:{{.Tag}}"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let mine: Vec<&str> = tags.lines().filter(|t| t.contains(&format!("/{}-", self.id))).collect();
        if !mine.is_empty() {
            let _ = Command::new("docker").args(["rmi"]).args(&mine).output();
        }
    }
}

/// Every file under `dir` (recursively), sorted; empty when `dir` does not exist.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// `n` incompressible pseudo-random bytes (xorshift; the same for the same seed).
pub fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A digest of a whole tree (paths, kinds, modes, owners, mtimes, contents, link targets), to
/// compare data dirs byte for byte.
pub fn tree_hash(dir: &Path) -> String {
    slipway_jobs::adapters::archive::tree_digest(dir)
        .unwrap_or_else(|e| panic!("tree digest of {}: {e}", dir.display()))
}

/// `rclone` configured for an S3 endpoint through its environment (no config file).
fn rclone(endpoint: &str, key: &str, secret: &str) -> Command {
    let mut c = Command::new("rclone");
    c.env("RCLONE_CONFIG", "/dev/null")
        .env("RCLONE_S3_PROVIDER", "Other")
        .env("RCLONE_S3_ENDPOINT", endpoint)
        .env("RCLONE_S3_ACCESS_KEY_ID", key)
        .env("RCLONE_S3_SECRET_ACCESS_KEY", secret)
        .env("RCLONE_S3_FORCE_PATH_STYLE", "true");
    c
}

/// An S3 server of a test's own (`rclone serve s3` on a free 127.0.0.1 port over a temp dir),
/// for tests that kill and restart it without disturbing the shared one.
pub struct S3Server {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<std::process::Child>,
    /// Access key.
    pub key: String,
    /// Secret key.
    pub secret: String,
}

impl S3Server {
    /// Start one.
    pub fn start() -> S3Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut s = S3Server {
            dir: tempfile::tempdir().unwrap(),
            port,
            child: None,
            key: format!("k{port}"),
            secret: format!("s3cret-{port}-{}", std::process::id()),
        };
        s.restart();
        s
    }
    /// The endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
    /// Kill it (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    /// (Re)start it on the same port and data.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("rclone")
            .args([
                "serve",
                "s3",
                "--addr",
                &format!("127.0.0.1:{}", self.port),
                "--auth-key",
                &format!("{},{}", self.key, self.secret),
            ])
            .args(["--force-path-style", "--no-cleanup"])
            .arg(self.dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "rclone serve s3 did not start");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Sandbox {
    /// Point the host config at an S3 server: a fresh bucket, a credentials file, `extra` keys.
    pub fn use_remote(&self, endpoint: &str, key: &str, secret: &str, extra: &str) -> String {
        let bucket = format!("b-{}", self.id.to_lowercase());
        let creds = self.root().join("s3.credentials");
        std::fs::write(&creds, format!("[default]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\n"))
            .unwrap();
        self.append_config(&format!(
            "[remote]\nendpoint = \"{endpoint}\"\nregion = \"us-east-1\"\nbucket = \"{bucket}\"\nprefix = \"slipway/host-1\"\npath_style = true\ncredentials_file = \"{}\"\n{extra}",
            creds.display()
        ));
        // The bucket exists before the first sync, as it would on Spaces.
        let st = rclone(endpoint, key, secret).args(["mkdir", &format!(":s3:{bucket}")]).output().unwrap();
        assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
        bucket
    }

    /// `use_remote` against the shared S3 server of `make test`.
    pub fn use_shared_remote(&self, extra: &str) -> String {
        let env = Env::get();
        self.use_remote(&env.s3_endpoint, &env.s3_access_key, &env.s3_secret_key, extra)
    }

    /// Put `bytes` at `key` under the sandbox prefix of the shared S3 server with `sha256` as its
    /// metadata, as whoever can write the bucket could (via rclone).
    pub fn put_remote_object(&self, bucket: &str, key: &str, bytes: &[u8], sha256: &str) {
        use std::io::Write;
        let env = Env::get();
        let mut child = rclone(&env.s3_endpoint, &env.s3_access_key, &env.s3_secret_key)
            .args(["rcat", "--header-upload", &format!("x-amz-meta-sha256: {sha256}")])
            .arg(format!(":s3:{bucket}/slipway/host-1/{key}"))
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(bytes).unwrap();
        assert!(child.wait().unwrap().success(), "rclone rcat {key}");
    }

    /// The bytes of the object at `key` under the sandbox prefix of the shared S3 server, as
    /// anyone who can read the bucket sees them (via rclone).
    pub fn remote_object_bytes(&self, bucket: &str, key: &str) -> Vec<u8> {
        let env = Env::get();
        let out = rclone(&env.s3_endpoint, &env.s3_access_key, &env.s3_secret_key)
            .arg("cat")
            .arg(format!(":s3:{bucket}/slipway/host-1/{key}"))
            .output()
            .unwrap();
        assert!(out.status.success(), "rclone cat {key}: {}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    }

    /// Delete the object at `key` under the sandbox prefix of the shared S3 server, as a
    /// lifecycle rule or a person with the bucket's keys would (via rclone).
    pub fn delete_remote_object(&self, bucket: &str, key: &str) {
        let env = Env::get();
        let out = rclone(&env.s3_endpoint, &env.s3_access_key, &env.s3_secret_key)
            .arg("deletefile")
            .arg(format!(":s3:{bucket}/slipway/host-1/{key}"))
            .output()
            .unwrap();
        assert!(out.status.success(), "rclone deletefile {key}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Delete every object under `prefix` in `bucket` of the shared S3 server (an emptied
    /// bucket), via rclone.
    pub fn empty_remote(&self, bucket: &str, prefix: &str) {
        let env = Env::get();
        let out = rclone(&env.s3_endpoint, &env.s3_access_key, &env.s3_secret_key)
            .arg("delete")
            .arg(format!(":s3:{bucket}/{prefix}"))
            .output()
            .unwrap();
        assert!(out.status.success(), "rclone delete {prefix}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Replace `remote.prefix` in the host config (`use_remote` sets `slipway/host-1`).
    pub fn set_remote_prefix(&self, prefix: &str) {
        let text = std::fs::read_to_string(self.config_path()).unwrap();
        assert!(text.contains("prefix = \"slipway/host-1\""), "no remote prefix to replace");
        std::fs::write(
            self.config_path(),
            text.replace("prefix = \"slipway/host-1\"", &format!("prefix = \"{prefix}\"")),
        )
        .unwrap();
    }

    /// Every object key in the bucket under the sandbox prefix, with sizes (via rclone).
    pub fn remote_objects(&self, endpoint: &str, key: &str, secret: &str, bucket: &str) -> Vec<(String, u64)> {
        let out = Command::new("rclone")
            .args([
                "lsf",
                "-R",
                "--files-only",
                "--format",
                "ps",
                "--separator",
                "\t",
                &format!(":s3:{bucket}/slipway/host-1"),
            ])
            .env("RCLONE_S3_PROVIDER", "Other")
            .env("RCLONE_S3_ENDPOINT", endpoint)
            .env("RCLONE_S3_ACCESS_KEY_ID", key)
            .env("RCLONE_S3_SECRET_ACCESS_KEY", secret)
            .env("RCLONE_S3_FORCE_PATH_STYLE", "true")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let mut v: Vec<(String, u64)> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('\t').map(|(p, s)| (p.to_string(), s.parse().unwrap_or(0))))
            .collect();
        v.sort();
        v
    }
}

/// A stand-in for the Docker engine's socket that can go away and come back, as the engine's
/// own socket does while dockerd restarts: a unix socket in a temp dir that forwards every
/// connection to the real engine (`/var/run/docker.sock`). [`EngineProxy::down`] closes every
/// connection and removes the socket; [`EngineProxy::up`] listens again.
pub struct EngineProxy {
    path: PathBuf,
    state: std::sync::Arc<ProxyState>,
}

struct ProxyState {
    up: std::sync::atomic::AtomicBool,
    conns: std::sync::Mutex<Vec<std::os::unix::net::UnixStream>>,
}

impl EngineProxy {
    /// Listen at `path`.
    pub fn start(path: &Path) -> EngineProxy {
        let p = EngineProxy {
            path: path.to_path_buf(),
            state: std::sync::Arc::new(ProxyState {
                up: std::sync::atomic::AtomicBool::new(false),
                conns: std::sync::Mutex::new(Vec::new()),
            }),
        };
        p.up();
        p
    }

    /// The `docker.host` value that points at it.
    pub fn host(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    /// Listen (again).
    pub fn up(&self) {
        use std::os::unix::net::{UnixListener, UnixStream};
        let _ = std::fs::remove_file(&self.path);
        let listener = UnixListener::bind(&self.path).unwrap();
        listener.set_nonblocking(true).unwrap();
        self.state.up.store(true, Ordering::SeqCst);
        let state = self.state.clone();
        std::thread::spawn(move || {
            while state.up.load(Ordering::SeqCst) {
                let client = match listener.accept() {
                    Ok((c, _)) => c,
                    Err(_) => {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                        continue;
                    }
                };
                client.set_nonblocking(false).unwrap();
                let Ok(engine) = UnixStream::connect("/var/run/docker.sock") else { continue };
                let mut conns = state.conns.lock().unwrap();
                conns.push(client.try_clone().unwrap());
                conns.push(engine.try_clone().unwrap());
                for (mut from, mut to) in [(client.try_clone().unwrap(), engine.try_clone().unwrap()), (engine, client)]
                {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
    }

    /// Go away: every connection closed, the socket removed, as while dockerd restarts.
    pub fn down(&self) {
        self.state.up.store(false, Ordering::SeqCst);
        let _ = std::fs::remove_file(&self.path);
        for c in self.state.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for EngineProxy {
    fn drop(&mut self) {
        self.down();
    }
}
