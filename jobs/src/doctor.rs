//! `doctor`: what a first run needs, checked one line at a time — the Docker engine and its
//! API version, the state dir and backup root (writable, which filesystem, whether it clones
//! files), free space against the largest tenant, the desired-state repo and its head's
//! `fleet.toml`, each stack app's tenants and mounts ([`stack`]), the remote (a HEAD on the
//! bucket with the configured credentials) and the timers. Each line is ok, warn or fail, with the fix; any fail makes the exit code 1.
//!
//! It changes nothing it reports on: the writability and reflink probes are temporary files
//! removed at once; it takes no lock and records no run, so it can run beside any job.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::adapters::docker::{Engine, EngineVersion};
use crate::adapters::remote::Remote;
use crate::adapters::{desired, systemd};
use crate::config::{Fleet, HostConfig};
use crate::error::{Error, ExitKind, Result};

mod stack;

/// The oldest Docker API slipway is tested against (Docker 20.10).
pub const MIN_API: (u32, u32) = (1, 41);

/// How long the remote may take to answer the HEAD.
const REMOTE_TIMEOUT: Duration = Duration::from_secs(30);

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Fine.
    Ok,
    /// Works, but something should be done.
    Warn,
    /// A first run would fail.
    Fail,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, not `write_str`: the human report aligns the words.
        f.pad(match self {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Fail => "fail",
        })
    }
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked: `docker`, `state_dir`, `backup_root`, `free_space`, `desired`,
    /// `remote`, `timers`.
    pub check: String,
    /// How it came out.
    pub level: Level,
    /// What was found.
    pub detail: String,
    /// What to do, when not ok.
    pub fix: Option<String>,
}

/// A directory slipway writes to, as found.
#[derive(Debug, Clone, Serialize)]
pub struct DirFacts {
    /// The config key (`state_dir`, `backup_root`).
    pub key: String,
    /// The path.
    pub path: PathBuf,
    /// A file could be created in it.
    pub writable: bool,
    /// The filesystem's type.
    pub filesystem: Option<String>,
    /// Whether that filesystem clones files (FICLONE).
    pub reflinks: Option<bool>,
    /// Bytes free to slipway there.
    pub free_bytes: Option<u64>,
}

/// The largest tenant data dir.
#[derive(Debug, Clone, Serialize)]
pub struct LargestTenant {
    /// App.
    pub app: String,
    /// Tenant.
    pub tenant: String,
    /// Its data dir.
    pub data_dir: PathBuf,
    /// Bytes in it.
    pub bytes: u64,
}

/// The result of `slipway doctor`.
#[derive(Debug, Clone, Serialize)]
pub struct DoctorReport {
    /// The host config checked.
    pub config: PathBuf,
    /// Every check, in order.
    pub checks: Vec<Check>,
    /// The engine, when it answered.
    pub docker: Option<EngineVersion>,
    /// The state dir and the backup root.
    pub dirs: Vec<DirFacts>,
    /// The largest tenant, when the fleet and the engine could be read.
    pub largest_tenant: Option<LargestTenant>,
    /// Bytes in all tenants' data dirs together.
    pub tenants_bytes: Option<u64>,
}

impl DoctorReport {
    /// Failure when any check failed.
    pub fn exit_kind(&self) -> ExitKind {
        if self.checks.iter().any(|c| c.level == Level::Fail) {
            ExitKind::Failure
        } else {
            ExitKind::Success
        }
    }
}

fn line(check: &str, level: Level, detail: String, fix: Option<String>) -> Check {
    Check { check: check.into(), level, detail, fix }
}

/// Run `doctor` on the host config loaded from `config`.
pub async fn doctor(cfg: &HostConfig, config: &Path) -> Result<DoctorReport> {
    let mut checks = vec![line("config", Level::Ok, format!("{} loads", config.display()), None)];

    // The engine.
    let (engine, docker) = match Engine::connect(&cfg.docker).await {
        Ok(e) => match e.version().await {
            Ok(v) => {
                let old = api_tuple(&v.negotiated).is_some_and(|a| a < MIN_API);
                let detail =
                    format!("Docker {} reachable, API {} (slipway speaks {})", v.version, v.api_version, v.negotiated);
                checks.push(if old {
                    line(
                        "docker",
                        Level::Warn,
                        detail,
                        Some(format!(
                            "upgrade the engine: slipway is tested with API {}.{} (Docker 20.10) and newer",
                            MIN_API.0, MIN_API.1
                        )),
                    )
                } else {
                    line("docker", Level::Ok, detail, None)
                });
                (Some(e), Some(v))
            }
            Err(err) => {
                checks.push(docker_fail(cfg, &err));
                (None, None)
            }
        },
        Err(err) => {
            checks.push(docker_fail(cfg, &err));
            (None, None)
        }
    };

    // The dirs slipway writes.
    let mut dirs = Vec::new();
    for (key, path) in [("state_dir", &cfg.state_dir), ("backup_root", &cfg.backup_root)] {
        let (check, facts) = dir_check(key, path.clone()).await?;
        checks.push(check);
        dirs.push(facts);
    }

    // The desired state (before the free space: the tenants come from it).
    let state = {
        let (d, s) = (cfg.desired.clone(), cfg.state_dir.clone());
        crate::blocking::run("reading the desired state", move || desired::read(&d, &s, None)).await?
    };
    let fleet = match state {
        Ok(st) => {
            let names: Vec<&str> = st.fleet.apps.iter().map(|a| a.name.as_str()).collect();
            checks.push(line(
                "desired",
                Level::Ok,
                format!(
                    "{} ({}) at commit {}: {} parses, {} app(s): {}",
                    desired::redact(&cfg.desired.repo),
                    cfg.desired.branch,
                    &st.commit[..12.min(st.commit.len())],
                    cfg.desired.file,
                    names.len(),
                    names.join(", ")
                ),
                None,
            ));
            Some(st.fleet)
        }
        Err(e) => {
            checks.push(line(
                "desired",
                Level::Fail,
                {
                    // Most errors name the repo already; say it once.
                    let (repo, e) = (desired::redact(&cfg.desired.repo), desired::redact(&e.to_string()));
                    if e.contains(&repo) {
                        e
                    } else {
                        format!("desired.repo {repo}: {e}")
                    }
                },
                Some(
                    "check desired.repo, desired.branch and desired.file; the branch's head must hold fleet.toml \
                     (`slipway init` writes one to start from)"
                        .into(),
                ),
            ));
            None
        }
    };

    // The stack apps: their tenants' containers and mounts.
    let stacks = match (&engine, &fleet) {
        (Some(engine), Some(fleet)) => stack::stack_checks(engine, fleet).await,
        _ => stack::StackFacts::default(),
    };
    checks.extend(stacks.checks);

    // Free space against the tenants (a stack tenant: all its mounts together).
    let (largest_tenant, tenants_bytes) = match (&engine, &fleet) {
        (Some(engine), Some(fleet)) => {
            let mut dirs_of = stacks.tenants;
            for app in fleet.apps.iter().filter(|a| a.stack.is_none()) {
                match engine.tenants(app).await {
                    Ok(ts) => dirs_of.extend(
                        ts.into_iter()
                            .map(|t| (app.name.clone(), t.tenant.to_string(), vec![app.data_dir_of(&t.tenant)])),
                    ),
                    Err(e) => tracing::warn!("app {}: cannot list its tenants: {e}", app.name),
                }
            }
            crate::blocking::run("measuring the tenants' data", move || {
                let mut largest: Option<LargestTenant> = None;
                let mut total = 0u64;
                for (app, tenant, dirs) in dirs_of {
                    let bytes = dirs.iter().map(|d| crate::fsutil::tree_size(d).unwrap_or(0)).sum::<u64>();
                    total = total.saturating_add(bytes);
                    if largest.as_ref().is_none_or(|l| bytes > l.bytes) {
                        let data_dir = dirs.into_iter().next().unwrap_or_default();
                        largest = Some(LargestTenant { app, tenant, data_dir, bytes });
                    }
                }
                (largest, Some(total))
            })
            .await?
        }
        _ => (None, None),
    };
    let free = dirs.iter().find(|d| d.key == "backup_root").and_then(|d| d.free_bytes);
    checks.push(space_check(free, largest_tenant.as_ref(), tenants_bytes, &cfg.backup_root));

    // The reverse proxy in front of the tenants ([app.proxy]).
    if let (Some(engine), Some(fleet)) = (&engine, &fleet) {
        for app in fleet.apps.iter().filter(|a| a.proxy.is_some()) {
            checks.extend(proxy_checks(engine, app).await);
        }
    }

    // The remote.
    checks.push(remote_check(cfg).await);

    // The timers, and the sandbox of the units they start.
    checks.push(crate::blocking::run("asking systemd about the timers", timers_check).await?);
    checks.extend(swap_checks(fleet.as_ref()));
    let needed = write_paths(cfg, fleet.as_ref(), &stacks.write_dirs);
    if let Some(c) = crate::blocking::run("asking systemd about the units", move || sandbox_check(&needed)).await? {
        checks.push(c);
    }

    Ok(DoctorReport { config: config.to_path_buf(), checks, docker, dirs, largest_tenant, tenants_bytes })
}

/// An app behind a reverse proxy: does the proxy route every tenant's host now (else the proxy
/// gate would undo every rollout), and does every tenant keep a fixed address (what a held
/// route to it needs, for a switch no request fails on: README, "A switch no request fails on").
async fn proxy_checks(engine: &Engine, app: &crate::config::App) -> Vec<Check> {
    let Some(spec) = &app.proxy else { return Vec::new() };
    let tenants = match engine.tenants(app).await {
        Ok(t) => t,
        Err(e) => {
            return vec![line("proxy", Level::Warn, format!("app {}: cannot list its tenants: {e}", app.name), None)]
        }
    };
    let (mut unrouted, mut loose) = (Vec::new(), Vec::new());
    for t in tenants.iter().filter(|t| t.state == "running") {
        match crate::adapters::proxy::Proxy::new(spec, &app.health, &t.tenant) {
            Ok(p) => {
                if let Err(why) = p.answers().await {
                    unrouted.push(format!("{} ({why})", p.host()));
                }
            }
            Err(e) => unrouted.push(format!("{}: {e}", t.tenant)),
        }
        match engine.spec(&t.name).await {
            Ok(s) if !s.fixed_addresses().is_empty() => {}
            _ => loose.push(t.tenant.to_string()),
        }
    }
    let mut out = Vec::new();
    let url = spec.url(&app.health);
    if unrouted.is_empty() {
        out.push(line(
            "proxy",
            Level::Ok,
            format!("app {}: {url} answers 2xx for every running tenant's host", app.name),
            None,
        ));
    } else {
        out.push(line(
            "proxy",
            Level::Fail,
            format!("app {}: {url} does not answer 2xx for {}", app.name, unrouted.join(", ")),
            Some(format!(
                "fix the proxy's route to those tenants (router rule, service port, network), or correct [app.proxy] \
                 (entrypoint {}, host {}): the rollout's proxy gate would undo every release of them",
                spec.entrypoint, spec.host
            )),
        ));
    }
    if loose.is_empty() {
        out.push(line(
            "proxy_hold",
            Level::Ok,
            format!(
                "app {}: every tenant keeps a fixed address across a switch (a held route can point at it)",
                app.name
            ),
            None,
        ));
    } else {
        out.push(line(
            "proxy_hold",
            Level::Warn,
            format!(
                "app {}: {} tenant(s) have no fixed address ({}): behind the Docker provider alone, customers' \
                 requests fail while a switch stops the old container and the provider sees the new one",
                app.name,
                loose.len(),
                loose.join(", ")
            ),
            Some(
                "give each tenant a fixed address (`docker run --ip` on a network with a subnet) and route it from \
                 Traefik's file provider with the retry middleware (`slipway config held-routes --write FILE` \
                 writes those routes): README, \"A switch no request fails on\""
                    .into(),
            ),
        ));
    }
    out
}

fn docker_fail(cfg: &HostConfig, err: &Error) -> Check {
    let place = cfg.docker.host.clone().unwrap_or_else(|| "$DOCKER_HOST, else the local socket".into());
    line(
        "docker",
        Level::Fail,
        format!("{err} ({place})"),
        Some(
            "start the engine (`systemctl start docker`), or point [docker] host at it; slipway needs API 1.41 \
             (Docker 20.10) or newer"
                .into(),
        ),
    )
}

fn api_tuple(v: &str) -> Option<(u32, u32)> {
    let (a, b) = v.split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Exists, writable (a temporary file created and removed), which filesystem, reflinks, free.
async fn dir_check(key: &'static str, path: PathBuf) -> Result<(Check, DirFacts)> {
    crate::blocking::run("checking a directory", move || {
        use std::os::unix::fs::PermissionsExt;
        let mut facts = DirFacts {
            key: key.into(),
            path: path.clone(),
            writable: false,
            filesystem: None,
            reflinks: None,
            free_bytes: None,
        };
        let meta = match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => m,
            Ok(_) => {
                let fix = format!("{key} must be a directory; point {key} at one");
                return (line(key, Level::Fail, format!("{} is not a directory", path.display()), Some(fix)), facts);
            }
            Err(e) => {
                let fix = format!(
                    "`sudo deploy/install.sh` creates it (or the package does), or `sudo install -d -m 700 {}`",
                    path.display()
                );
                return (line(key, Level::Fail, format!("{}: {e}", path.display()), Some(fix)), facts);
            }
        };
        let probe = tempfile::Builder::new().prefix(".slipway-doctor-").tempfile_in(&path);
        if let Err(e) = probe.and_then(|f| f.as_file().sync_all()) {
            let fix = "run slipway as the user the timers run as (root by default), or chown the directory to it";
            let detail = format!("{}: cannot create a file in it: {e}", path.display());
            return (line(key, Level::Fail, detail, Some(fix.into())), facts);
        }
        facts.writable = true;
        facts.filesystem = crate::fsutil::fs_type_name(&path).ok();
        facts.reflinks = crate::fsutil::supports_reflink(&path).ok();
        facts.free_bytes = crate::fsutil::free_bytes(&path).ok();
        let fs = facts.filesystem.clone().unwrap_or_else(|| "an unknown filesystem".into());
        let reflinks = match facts.reflinks {
            Some(true) => "yes",
            Some(false) => "no",
            None => "unknown",
        };
        let free = facts.free_bytes.map_or("?".into(), human_bytes);
        let detail = format!("{}: writable, {fs}, reflinks: {reflinks}, {free} free", path.display());
        let mode = meta.permissions().mode() & 0o777;
        let check = if mode & 0o077 != 0 {
            let holds = if key == "state_dir" { "the run record" } else { "every tenant's data" };
            let fix = format!("`chmod 700 {}`: it holds {holds}", path.display());
            line(key, Level::Warn, format!("{detail}; mode {mode:04o} lets other users read it"), Some(fix))
        } else {
            line(key, Level::Ok, detail, None)
        };
        (check, facts)
    })
    .await
}

fn space_check(free: Option<u64>, largest: Option<&LargestTenant>, total: Option<u64>, root: &Path) -> Check {
    let (Some(free), Some(l), Some(total)) = (free, largest, total) else {
        let why = if free.is_none() {
            "the backup root cannot be read"
        } else {
            "the tenants are not known (see the docker and desired lines)"
        };
        return line(
            "free_space",
            Level::Warn,
            format!("cannot compare: {why}"),
            Some("fix the lines above, then run doctor again".into()),
        );
    };
    let detail = format!(
        "{} free under {}; the largest tenant, {} of app {}, holds {}; all tenants {}",
        human_bytes(free),
        root.display(),
        l.tenant,
        l.app,
        human_bytes(l.bytes),
        human_bytes(total)
    );
    if free < l.bytes {
        line(
            "free_space",
            Level::Fail,
            detail,
            Some(format!(
                "make room under {} (or point backup_root at a bigger disk): a rollout's snapshot of {} may not fit",
                root.display(),
                l.tenant
            )),
        )
    } else if free < total {
        line(
            "free_space",
            Level::Warn,
            detail,
            Some("a daily snapshot of every tenant may not fit if the data does not compress; add room".into()),
        )
    } else {
        line("free_space", Level::Ok, detail, None)
    }
}

async fn remote_check(cfg: &HostConfig) -> Check {
    let Some(rc) = &cfg.remote else {
        return line(
            "remote",
            Level::Warn,
            "no [remote]: the snapshots stay on this host only".into(),
            Some("add [remote] (DigitalOcean Spaces or any S3 API) to the host config, then run doctor again".into()),
        );
    };
    let place = format!("{} bucket {}", rc.endpoint.as_deref().unwrap_or("AWS S3"), rc.bucket);
    let head = async {
        let remote = Remote::connect(rc).await?;
        remote.head_bucket().await
    };
    match tokio::time::timeout(REMOTE_TIMEOUT, head).await {
        Ok(Ok(())) => line("remote", Level::Ok, format!("{place}: reachable with the credentials"), None),
        Ok(Err(e @ Error::RemoteAuth { .. })) => line(
            "remote",
            Level::Fail,
            format!("{place}: {e}"),
            Some("check remote.credentials_file (profile default) or the AWS_* environment".into()),
        ),
        Ok(Err(e)) => line(
            "remote",
            Level::Fail,
            format!("{place}: {e}"),
            Some("check remote.endpoint, remote.bucket and that this host can reach the store".into()),
        ),
        Err(_) => line(
            "remote",
            Level::Fail,
            format!("{place}: no answer within {} s", REMOTE_TIMEOUT.as_secs()),
            Some("check remote.endpoint and that this host can reach the store".into()),
        ),
    }
}

/// The dirs slipway's jobs write, for the units' sandbox: the state dir, the backup root, the
/// metrics file's dir, for each app the dir holding its data dirs (the template's part
/// before `{tenant}`: the data dirs, the rollout copies beside them and a restore's scratch),
/// and for stack apps the dirs holding their mounts (`stack_dirs`, found on the engine) and the
/// default volume dir. None inside another.
pub fn write_paths(cfg: &HostConfig, fleet: Option<&Fleet>, stack_dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut paths = vec![cfg.state_dir.clone(), cfg.backup_root.clone()];
    if let Some(dir) = cfg.metrics.file.as_ref().and_then(|f| f.parent()) {
        paths.push(dir.to_path_buf());
    }
    for app in fleet.map(|f| f.apps.as_slice()).unwrap_or_default() {
        // A stack has no data_dir: an empty one would be a prefix of every path.
        if app.stack.is_some() {
            paths.push(PathBuf::from(crate::config::VOLUMES_DIR));
        } else {
            paths.push(data_root(&app.data_dir));
        }
    }
    paths.extend(stack_dirs.iter().cloned());
    paths.sort();
    paths.dedup();
    let all = paths.clone();
    paths.retain(|p| !all.iter().any(|q| q != p && p.starts_with(q)));
    paths
}

/// The fixed dirs of a `data_dir` template, up to the component holding `{tenant}`.
fn data_root(template: &str) -> PathBuf {
    Path::new(template).components().take_while(|c| !c.as_os_str().to_string_lossy().contains("{tenant}")).collect()
}

/// Whether the installed units may write every dir in `needed` and keep setuid bits; `None`
/// off systemd or when no unit is installed (the timers check says so).
fn sandbox_check(needed: &[PathBuf]) -> Option<Check> {
    if !systemd::is_systemd_host() {
        return None;
    }
    let (mut missing, mut suid, mut loaded) = (Vec::new(), Vec::new(), false);
    for unit in systemd::SERVICES {
        let u = match systemd::unit_sandbox(unit) {
            Ok(u) if u.loaded => u,
            Ok(_) => continue,
            Err(e) => return Some(line("sandbox", Level::Warn, format!("cannot ask systemd about {unit}: {e}"), None)),
        };
        loaded = true;
        for p in needed.iter().filter(|p| !u.write_paths.iter().any(|w| p.starts_with(w))) {
            missing.push(format!("{unit}: {}", p.display()));
        }
        if u.restricts_suid {
            suid.push(unit.to_string());
        }
    }
    if !loaded {
        return None;
    }
    if missing.is_empty() && suid.is_empty() {
        let all: Vec<String> = needed.iter().map(|p| p.display().to_string()).collect();
        return Some(line("sandbox", Level::Ok, format!("the units may write {}", all.join(", ")), None));
    }
    let mut detail = Vec::new();
    if !missing.is_empty() {
        detail.push(format!(
            "the units may not write {} (a pre-copy, an undo or a restore there would fail with the tenant down)",
            missing.join(", ")
        ));
    }
    if !suid.is_empty() {
        detail.push(format!(
            "{} set RestrictSUIDSGID=yes (a tenant's setuid/setgid files could not be copied or restored)",
            suid.join(", ")
        ));
    }
    Some(line(
        "sandbox",
        Level::Fail,
        detail.join("; "),
        Some(format!(
            "`sudo slipway config sandbox --write` writes {} from this config{}",
            systemd::DROPIN,
            if suid.is_empty() { "" } else { "; remove RestrictSUIDSGID=yes from your own drop-ins" }
        )),
    ))
}

/// Whether the filesystems of the apps' data dirs swap two dirs in one rename
/// (`RENAME_EXCHANGE`); where they do not (OpenZFS before 2.2, NFS, CIFS) undo and restore
/// take a journaled swap of three renames, which `recover` finishes after a crash.
fn swap_checks(fleet: Option<&Fleet>) -> Vec<Check> {
    let mut roots: Vec<PathBuf> = fleet
        .map(|f| f.apps.iter().filter(|a| a.stack.is_none()).map(|a| data_root(&a.data_dir)).collect())
        .unwrap_or_default();
    roots.sort();
    roots.dedup();
    roots
        .into_iter()
        .filter(|r| r.is_dir())
        .map(|r| match crate::adapters::confined::supports_exchange(&r) {
            Ok(true) => {
                line("swap", Level::Ok, format!("{}: a restore or undo swaps dirs in one rename", r.display()), None)
            }
            Ok(false) => line(
                "swap",
                Level::Warn,
                format!(
                    "{}: this filesystem cannot exchange two dirs in one rename (RENAME_EXCHANGE); a restore or undo \
                     there takes three journaled renames, which `recover` finishes if a crash cuts them short",
                    r.display()
                ),
                Some("nothing to do; on OpenZFS, 2.2 or newer has the exchange".into()),
            ),
            Err(e) => line("swap", Level::Warn, format!("{}: cannot probe a rename there: {e}", r.display()), None),
        })
        .collect()
}

/// What `config sandbox` computed, and whether it wrote it.
#[derive(Debug, Clone, Serialize)]
pub struct SandboxReport {
    /// The drop-in's path.
    pub dropin: PathBuf,
    /// The dirs it lets the units write.
    pub write_paths: Vec<PathBuf>,
    /// Its text.
    pub text: String,
    /// Whether it was written (and systemd reloaded).
    pub written: bool,
}

impl fmt::Display for SandboxReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.written {
            writeln!(f, "wrote {} (systemd reloaded):", self.dropin.display())?;
        } else {
            writeln!(f, "{} (not written; --write writes it):", self.dropin.display())?;
        }
        f.write_str(&self.text)
    }
}

/// The units' drop-in of write paths for this host's config and fleet.toml; with `write`,
/// written (0644) and systemd reloaded.
pub async fn sandbox(cfg: &HostConfig, write: bool) -> Result<SandboxReport> {
    let (d, s) = (cfg.desired.clone(), cfg.state_dir.clone());
    let state = crate::blocking::run("reading the desired state", move || desired::read(&d, &s, None)).await??;
    // A stack's mounts are found on the engine; without one, the default volume dir stands in.
    let stack_dirs = match Engine::connect(&cfg.docker).await {
        Ok(engine) => stack::stack_checks(&engine, &state.fleet).await.write_dirs,
        Err(_) => Vec::new(),
    };
    let paths = write_paths(cfg, Some(&state.fleet), &stack_dirs);
    let text = systemd::render_dropin(&paths);
    let dropin = PathBuf::from(systemd::DROPIN);
    if write {
        if let Some(dir) = dropin.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        crate::fsutil::atomic_write(&dropin, text.as_bytes(), 0o644).map_err(|e| Error::io(&dropin, e))?;
        if systemd::is_systemd_host() {
            let _ = std::process::Command::new("systemctl").arg("daemon-reload").status();
        }
    }
    Ok(SandboxReport { dropin, write_paths: paths, text, written: write })
}

fn timers_check() -> Check {
    if !systemd::is_systemd_host() {
        return if Path::new(systemd::CRON_FILE).is_file() {
            line("timers", Level::Ok, format!("not a systemd host; {} is installed", systemd::CRON_FILE), None)
        } else {
            line(
                "timers",
                Level::Warn,
                format!("not a systemd host, and {} is not installed: nothing runs the jobs", systemd::CRON_FILE),
                Some(format!(
                    "`sudo deploy/install.sh` installs it (or copy deploy/cron.d/slipway to {})",
                    systemd::CRON_FILE
                )),
            )
        };
    }
    let states = systemd::enabled_states(systemd::TIMERS);
    let off: Vec<&(String, String)> = states.iter().filter(|(_, s)| s != "enabled").collect();
    if off.is_empty() {
        return line("timers", Level::Ok, format!("enabled: {}", systemd::TIMERS.join(", ")), None);
    }
    let detail = off.iter().map(|(u, s)| format!("{u} ({s})")).collect::<Vec<_>>().join(", ");
    let missing = off.iter().any(|(_, s)| s == "not-found");
    let fix = if missing {
        "install the units: `sudo deploy/install.sh` (or the package), which enables them".to_string()
    } else {
        format!("sudo systemctl enable --now {}", off.iter().map(|(u, _)| u.as_str()).collect::<Vec<_>>().join(" "))
    };
    line("timers", Level::Warn, format!("not enabled: {detail}"), Some(fix))
}

/// `1.5 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

impl fmt::Display for DoctorReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.checks {
            writeln!(f, "{:<4}  {:<11}  {}", c.level, c.check, c.detail)?;
            if let Some(fix) = &c.fix {
                writeln!(f, "      {:<11}  fix: {fix}", "")?;
            }
        }
        let fails = self.checks.iter().filter(|c| c.level == Level::Fail).count();
        let warns = self.checks.iter().filter(|c| c.level == Level::Warn).count();
        writeln!(f, "{fails} fail, {warns} warn")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_fails_below_the_largest_tenant_and_warns_below_all_of_them() {
        let l = LargestTenant { app: "a".into(), tenant: "t1".into(), data_dir: "/d/t1".into(), bytes: 100 };
        let root = Path::new("/b");
        let cases = [(99, Level::Fail), (100, Level::Warn), (250, Level::Warn), (300, Level::Ok)];
        for (free, want) in cases {
            let c = space_check(Some(free), Some(&l), Some(300), root);
            assert_eq!(c.level, want, "{free}: {}", c.detail);
            assert_eq!(c.fix.is_some(), want != Level::Ok);
        }
        assert_eq!(space_check(Some(1), None, None, root).level, Level::Warn);
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(api_tuple("1.41"), Some((1, 41)));
    }

    #[test]
    fn the_units_must_write_the_state_the_backups_and_every_apps_dir_of_data_dirs_and_nothing_twice() {
        let hex = "0123456789abcdef".repeat(4);
        let app = |name: &str, dir: &str| {
            format!(
                "[[app]]\nname = \"{name}\"\nimage = \"reg/{name}@sha256:{hex}\"\nselect = \"{name}=1\"\n\
                 tenant_from = \"label:t\"\ndata_dir = \"{dir}\"\nhealth = {{ path = \"/\", port = 80 }}\n"
            )
        };
        let fleet = Fleet::parse(
            &[
                app("a", "/srv/tenants/{tenant}"),
                app("b", "/mnt/disk2/{tenant}/data"),
                app("c", "/srv/tenants/c-{tenant}"),
            ]
            .concat(),
            "fleet.toml",
        )
        .unwrap();
        let cfg = HostConfig::parse(
            "backup_root = \"/srv/tenants/backups\"\n[desired]\nrepo = \"/g\"\n[metrics]\nfile = \"/var/lib/node/slipway.prom\"\n",
            "config.toml",
            Vec::new(),
        )
        .unwrap();
        let want: Vec<PathBuf> =
            ["/mnt/disk2", "/srv/tenants", "/var/lib/node", "/var/lib/slipway"].iter().map(PathBuf::from).collect();
        assert_eq!(write_paths(&cfg, Some(&fleet), &[]), want);
        assert_eq!(data_root("/data/{tenant}"), PathBuf::from("/data"));
    }

    /// A stack app has no data_dir: its empty template must not become a prefix of every path
    /// (which left the units nothing but "" to write); its mounts' dirs are written instead.
    #[test]
    fn a_stack_app_makes_the_units_write_its_mounts_dirs_beside_the_state_and_the_backups() {
        let hex = "0123456789abcdef".repeat(4);
        let fleet = Fleet::parse(
            &format!(
                "[[app]]\nname = \"s\"\nselect = \"s=1\"\nhealth = {{ path = \"/\", port = 80, service = \"app\" }}\n\
                 [app.services.app]\nimage = \"reg/app@sha256:{hex}\"\nwrites = true\ndata = [\"/data\"]\n"
            ),
            "fleet.toml",
        )
        .unwrap();
        let cfg =
            HostConfig::parse("backup_root = \"/srv/backups\"\n[desired]\nrepo = \"/g\"\n", "config.toml", Vec::new())
                .unwrap();
        let want: Vec<PathBuf> = ["/srv/backups", "/srv/binds", "/var/lib/docker/volumes", "/var/lib/slipway"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(write_paths(&cfg, Some(&fleet), &[PathBuf::from("/srv/binds")]), want);
    }
}
