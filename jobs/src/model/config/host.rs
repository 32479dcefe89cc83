//! The host config (`/etc/slipway/config.toml`): where state and backups live, the desired-state
//! repo, the Docker engine, retention, the remote store, notifications and metrics. Every key can
//! be overridden by a `SLIPWAY_…` environment variable; an unknown one is an error.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Where the host config is looked for when neither `--config` nor `$SLIPWAY_CONFIG` is given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/slipway/config.toml";

/// The host config (`/etc/slipway/config.toml`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// Holds `state.db` and `slipway.lock`.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Root of `daily/` and `rollout/` snapshots.
    #[serde(default = "default_backup_root")]
    pub backup_root: PathBuf,
    /// Directories archived by `snapshot --control-plane`.
    #[serde(default)]
    pub control_plane: Vec<PathBuf>,
    /// Where the desired state lives.
    pub desired: DesiredConfig,
    /// How to reach the Docker engine.
    #[serde(default)]
    pub docker: DockerConfig,
    /// Local retention policy (restic `forget` semantics).
    #[serde(default)]
    pub retention: Retention,
    /// Optional off-site store (DigitalOcean Spaces or any S3 API).
    #[serde(default)]
    pub remote: Option<RemoteConfig>,
    /// Failure notifications.
    #[serde(default)]
    pub notify: NotifyConfig,
    /// Prometheus textfile output.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// How daily snapshots hold a tenant still.
    #[serde(default)]
    pub snapshot: SnapshotConfig,
    /// Restore drills (`slipway drill`).
    #[serde(default)]
    pub drill: DrillConfig,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/slipway")
}
fn default_backup_root() -> PathBuf {
    PathBuf::from("/data/backups")
}

/// `[desired]`: the git repository holding `fleet.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredConfig {
    /// Local path, `file://`, `https://` or `ssh://` URL.
    pub repo: String,
    /// Branch to follow.
    #[serde(default = "default_branch")]
    pub branch: String,
    /// Path of the fleet file inside the repo.
    #[serde(default = "default_fleet_file")]
    pub file: String,
    /// Image repositories fleet.toml may pin (`ghcr.io/example/pulse`, or a prefix ending in
    /// `/*`); unset: any. Registry names are normalised (`docker.io/library/x` = `x`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_images: Option<Vec<String>>,
    /// Deploy only commits with a valid SSH signature by a key in `allowed_signers`.
    #[serde(default)]
    pub require_signed: bool,
    /// OpenSSH allowed-signers file (as `git config gpg.ssh.allowedSignersFile` takes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_signers: Option<PathBuf>,
    /// For an `https://` repo: a file (mode 0600) holding `user:token` or just a token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
    /// For an `ssh://` repo: the private key to authenticate with (default: the ssh agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_key: Option<PathBuf>,
    /// For an `ssh://` repo: the known_hosts file the server's host key must be in
    /// (default `~/.ssh/known_hosts`). An unknown or changed host key is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_hosts: Option<PathBuf>,
}
fn default_branch() -> String {
    "main".into()
}
fn default_fleet_file() -> String {
    "fleet.toml".into()
}

/// `[docker]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerConfig {
    /// `unix:///var/run/docker.sock` or `tcp://…`; default: `$DOCKER_HOST`, then the local socket.
    pub host: Option<String>,
}

/// `[retention]` and `[remote.retention]`: restic `forget` rules, applied per tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Keep the n newest snapshots.
    pub keep_last: Option<u32>,
    /// Keep the newest snapshot of each of the last n days that have one.
    pub keep_daily: Option<u32>,
    /// … of the last n ISO weeks (Monday–Sunday).
    pub keep_weekly: Option<u32>,
    /// … of the last n months.
    pub keep_monthly: Option<u32>,
    /// … of the last n years.
    pub keep_yearly: Option<u32>,
    /// Keep everything newer than this duration before the newest snapshot (`30d`, `2w`, `1y6m`).
    pub keep_within: Option<String>,
    /// Keep the snapshots of the n newest rollout runs.
    pub keep_rollout_runs: Option<u32>,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            keep_last: None,
            keep_daily: Some(7),
            keep_weekly: None,
            keep_monthly: None,
            keep_yearly: None,
            keep_within: None,
            keep_rollout_runs: Some(5),
        }
    }
}

/// `[remote]`: an S3-compatible store.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteConfig {
    /// Custom endpoint, e.g. `https://nyc3.digitaloceanspaces.com`; none = AWS.
    pub endpoint: Option<String>,
    /// Signing region (Spaces accepts `us-east-1`).
    #[serde(default = "default_region")]
    pub region: String,
    /// Bucket name.
    pub bucket: String,
    /// Key prefix under which `daily/` and `rollout/` are mirrored.
    #[serde(default)]
    pub prefix: String,
    /// Path-style addressing (`endpoint/bucket/key`) instead of virtual-host style.
    #[serde(default)]
    pub path_style: bool,
    /// AWS shared-credentials file (profile `default`); else the AWS SDK's default chain: the
    /// `AWS_*` environment, `~/.aws/credentials`, … (`adapters::remote::credentials` has the
    /// exact order).
    pub credentials_file: Option<PathBuf>,
    /// Remote retention; none = the local policy.
    pub retention: Option<Retention>,
    /// Multipart part size in MiB (raised when an archive would need more than 10 000 parts).
    pub part_size_mb: Option<u64>,
    /// Parts in flight per object (at most 10, Spaces' limit).
    pub concurrency: Option<usize>,
    /// Client-side encryption of everything uploaded (age, X25519 recipients).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypt: Option<EncryptConfig>,
    /// The age identity file that decrypts the remote copy (restore, verify --deep, drill);
    /// `--identity FILE` overrides it. Read only when an encrypted object is, never copied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_file: Option<PathBuf>,
}

/// `[remote] encrypt = { recipients_file = "…" }`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptConfig {
    /// age X25519 recipients (`age1…`), one per line, `#` comments allowed.
    pub recipients_file: PathBuf,
}
fn default_region() -> String {
    "us-east-1".into()
}

/// `[notify]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// A JSON POST target (Slack-compatible `text`): the same as one `https://` entry of `urls`.
    pub webhook: Option<String>,
    /// Where each run's message goes: `https://` (JSON), `generic://`, `ntfy://`, `slack://`,
    /// `discord://`, `smtp://` (see [`super::notify::Target::parse`]).
    #[serde(default)]
    pub urls: Vec<String>,
    /// Which runs are notified: `failures` (the default) or `all`.
    #[serde(default)]
    pub level: super::notify::NotifyLevel,
}

impl NotifyConfig {
    /// Every target, `webhook` first; an entry that does not parse is left out (the config's
    /// validation refuses it before any job runs).
    pub fn targets(&self) -> Vec<super::notify::Target> {
        self.webhook.iter().chain(&self.urls).filter_map(|u| super::notify::Target::parse(u).ok()).collect()
    }
}

/// `[metrics]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Prometheus text file rewritten after every job.
    pub file: Option<PathBuf>,
}

/// `[snapshot]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotConfig {
    /// Keep a staging copy of each tenant's data dir under the backup root, brought up to date
    /// while the tenant runs, so that the tenant is paused only for the last delta and the archive
    /// is made from the copy; `false`: the tenant stays paused while its archive is written.
    #[serde(default = "default_staging")]
    pub staging: bool,
    /// Every file of a staging copy is compared with its source byte for byte at least once in
    /// this many days, although its metadata says the copy is current (a copy damaged behind
    /// the mirror's back is copied again and reported); 0: never.
    #[serde(default = "default_check_copy_days")]
    pub check_copy_days: u64,
    /// At most this many MiB per tenant and day are compared so.
    #[serde(default = "default_check_copy_mib")]
    pub check_copy_mib: u64,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        SnapshotConfig {
            staging: default_staging(),
            check_copy_days: default_check_copy_days(),
            check_copy_mib: default_check_copy_mib(),
        }
    }
}
fn default_check_copy_days() -> u64 {
    7
}
fn default_check_copy_mib() -> u64 {
    1024
}
fn default_staging() -> bool {
    true
}

/// `[drill]`: restore drills.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillConfig {
    /// Label keys the throw-away container must not carry, beyond every `traefik.*` label
    /// (always removed): exact keys or patterns with `*` (`caddy*`). These are the labels a
    /// reverse proxy or orchestrator routes traffic (or counts replicas) by.
    #[serde(default = "default_strip_labels")]
    pub strip_labels: Vec<String>,
    /// `status` flags a tenant whose last successful drill is older than this many days
    /// (0: never).
    #[serde(default = "default_drill_max_age_days")]
    pub max_age_days: u64,
}

impl Default for DrillConfig {
    fn default() -> Self {
        DrillConfig { strip_labels: default_strip_labels(), max_age_days: default_drill_max_age_days() }
    }
}

/// The labels stripped by default beyond `traefik.*`: caddy-docker-proxy's and Docker
/// Compose's (a drill container must not count as a replica of a compose service).
pub fn default_strip_labels() -> Vec<String> {
    vec!["caddy*".into(), "com.docker.compose.*".into()]
}
fn default_drill_max_age_days() -> u64 {
    35
}

/// Whether the label `key` matches `pattern`: the same text, where each `*` in the pattern
/// stands for any run of characters (none included).
pub fn label_matches(pattern: &str, key: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == key;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if key.len() < first.len() + last.len() || !key.starts_with(first) || !key.ends_with(last) {
        return false;
    }
    let mut rest = &key[first.len()..key.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// Environment variables that start with `SLIPWAY_` but are not config overrides.
const NON_CONFIG_ENV: &[&str] = &[
    "SLIPWAY_CONFIG",
    "SLIPWAY_LOG",
    "SLIPWAY_BIN",
    "SLIPWAY_BRANCH",
    "SLIPWAY_HOOK_LOG",
    "SLIPWAY_TEST_CRASH_AT",
    "SLIPWAY_TEST_SIGNAL_AT",
    "SLIPWAY_TEST_PAUSE_AT",
    "SLIPWAY_TEST_REFUSE",
    "SLIPWAY_TEST_JOURNAL_FAILS_FROM",
    "SLIPWAY_TEST_NO_EXCHANGE",
];

#[derive(Clone, Copy)]
enum Kind {
    Str,
    Int,
    Bool,
    PathList,
    CommaList,
    /// Separated by whitespace (URLs, which may hold commas).
    SpaceList,
}

/// `SLIPWAY_…` overrides: variable, key path in the TOML, value kind.
const ENV_KEYS: &[(&str, &[&str], Kind)] = &[
    ("SLIPWAY_STATE_DIR", &["state_dir"], Kind::Str),
    ("SLIPWAY_BACKUP_ROOT", &["backup_root"], Kind::Str),
    ("SLIPWAY_CONTROL_PLANE", &["control_plane"], Kind::PathList),
    ("SLIPWAY_DESIRED_REPO", &["desired", "repo"], Kind::Str),
    ("SLIPWAY_DESIRED_BRANCH", &["desired", "branch"], Kind::Str),
    ("SLIPWAY_DESIRED_FILE", &["desired", "file"], Kind::Str),
    ("SLIPWAY_DOCKER_HOST", &["docker", "host"], Kind::Str),
    ("SLIPWAY_RETENTION_KEEP_LAST", &["retention", "keep_last"], Kind::Int),
    ("SLIPWAY_RETENTION_KEEP_DAILY", &["retention", "keep_daily"], Kind::Int),
    ("SLIPWAY_RETENTION_KEEP_WEEKLY", &["retention", "keep_weekly"], Kind::Int),
    ("SLIPWAY_RETENTION_KEEP_MONTHLY", &["retention", "keep_monthly"], Kind::Int),
    ("SLIPWAY_RETENTION_KEEP_YEARLY", &["retention", "keep_yearly"], Kind::Int),
    ("SLIPWAY_RETENTION_KEEP_WITHIN", &["retention", "keep_within"], Kind::Str),
    ("SLIPWAY_RETENTION_KEEP_ROLLOUT_RUNS", &["retention", "keep_rollout_runs"], Kind::Int),
    ("SLIPWAY_REMOTE_ENDPOINT", &["remote", "endpoint"], Kind::Str),
    ("SLIPWAY_REMOTE_REGION", &["remote", "region"], Kind::Str),
    ("SLIPWAY_REMOTE_BUCKET", &["remote", "bucket"], Kind::Str),
    ("SLIPWAY_REMOTE_PREFIX", &["remote", "prefix"], Kind::Str),
    ("SLIPWAY_REMOTE_PATH_STYLE", &["remote", "path_style"], Kind::Bool),
    ("SLIPWAY_REMOTE_CREDENTIALS_FILE", &["remote", "credentials_file"], Kind::Str),
    ("SLIPWAY_REMOTE_PART_SIZE_MB", &["remote", "part_size_mb"], Kind::Int),
    ("SLIPWAY_REMOTE_CONCURRENCY", &["remote", "concurrency"], Kind::Int),
    ("SLIPWAY_REMOTE_ENCRYPT_RECIPIENTS_FILE", &["remote", "encrypt", "recipients_file"], Kind::Str),
    ("SLIPWAY_REMOTE_IDENTITY_FILE", &["remote", "identity_file"], Kind::Str),
    ("SLIPWAY_NOTIFY_WEBHOOK", &["notify", "webhook"], Kind::Str),
    ("SLIPWAY_NOTIFY_URLS", &["notify", "urls"], Kind::SpaceList),
    ("SLIPWAY_NOTIFY_LEVEL", &["notify", "level"], Kind::Str),
    ("SLIPWAY_METRICS_FILE", &["metrics", "file"], Kind::Str),
    ("SLIPWAY_SNAPSHOT_STAGING", &["snapshot", "staging"], Kind::Bool),
    ("SLIPWAY_SNAPSHOT_CHECK_COPY_DAYS", &["snapshot", "check_copy_days"], Kind::Int),
    ("SLIPWAY_SNAPSHOT_CHECK_COPY_MIB", &["snapshot", "check_copy_mib"], Kind::Int),
    ("SLIPWAY_DRILL_STRIP_LABELS", &["drill", "strip_labels"], Kind::CommaList),
    ("SLIPWAY_DRILL_MAX_AGE_DAYS", &["drill", "max_age_days"], Kind::Int),
];

impl HostConfig {
    /// Which file to load: `--config`, else `$SLIPWAY_CONFIG`, else the default path.
    pub fn locate(flag: Option<&Path>) -> PathBuf {
        flag.map(Path::to_path_buf)
            .or_else(|| std::env::var_os("SLIPWAY_CONFIG").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH))
    }

    /// Load `path`, apply the process environment's `SLIPWAY_…` overrides and validate.
    pub fn load(path: &Path) -> Result<HostConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Config(format!(
                "{}: cannot read the host config: {e}; pass --config PATH or set SLIPWAY_CONFIG \
                 (an example is deploy/config.example.toml)",
                path.display()
            ))
        })?;
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(Error::Config(format!(
                    "{}: mode {mode:04o} lets other users read the host config; run `chmod 600 {}`",
                    path.display(),
                    path.display()
                )));
            }
        }
        HostConfig::parse(&text, &path.display().to_string(), std::env::vars())
    }

    /// Parse config text with the given environment (testable without touching the process env).
    pub fn parse(text: &str, origin: &str, env: impl IntoIterator<Item = (String, String)>) -> Result<HostConfig> {
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| Error::Config(format!("{origin}: {}", e.to_string().trim_end())))?;
        // The file alone, typed, to name an unknown key with its line and table (the merged
        // table below has no positions).
        if let Err(e) = toml::from_str::<HostConfig>(text) {
            if let Some(msg) = unknown_key_at(text, &e) {
                return Err(Error::Config(format!("{origin}: {msg}")));
            }
        }
        for (name, value) in env {
            if !name.starts_with("SLIPWAY_") || NON_CONFIG_ENV.contains(&name.as_str()) {
                continue;
            }
            let Some((_, path, kind)) = ENV_KEYS.iter().find(|(n, _, _)| *n == name) else {
                let known: Vec<&str> = ENV_KEYS.iter().map(|(n, _, _)| *n).collect();
                // Compared without the shared prefix, which would make any two names look close.
                let bare = |n: &'static str| n.strip_prefix("SLIPWAY_").unwrap_or(n);
                let all = known.iter().chain(NON_CONFIG_ENV).copied().map(bare);
                return Err(Error::Config(match super::closest(bare_name(&name), all) {
                    Some(k) => format!(
                        "environment variable {name} is not a slipway setting; did you mean SLIPWAY_{k}? \
                         (rename or unset it)"
                    ),
                    None => format!(
                        "environment variable {name} is not a slipway setting; unset it or use one of: {}",
                        known.join(", ")
                    ),
                }));
            };
            let v = match kind {
                Kind::Str => toml::Value::String(value),
                Kind::Int => toml::Value::Integer(value.trim().parse().map_err(|_| {
                    Error::Config(format!("environment variable {name}={value:?}: expected a whole number"))
                })?),
                Kind::Bool => toml::Value::Boolean(match value.trim() {
                    "1" | "true" | "yes" => true,
                    "0" | "false" | "no" => false,
                    _ => {
                        return Err(Error::Config(format!(
                            "environment variable {name}={value:?}: expected true or false"
                        )))
                    }
                }),
                Kind::PathList => toml::Value::Array(
                    value.split(':').filter(|s| !s.is_empty()).map(|s| toml::Value::String(s.into())).collect(),
                ),
                Kind::SpaceList => {
                    toml::Value::Array(value.split_whitespace().map(|s| toml::Value::String(s.into())).collect())
                }
                Kind::CommaList => toml::Value::Array(
                    value
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(|s| toml::Value::String(s.into()))
                        .collect(),
                ),
            };
            set_path(&mut table, path, v);
        }
        let cfg: HostConfig = toml::Value::Table(table).try_into().map_err(|e: toml::de::Error| {
            let msg = e.to_string();
            Error::Config(format!("{origin}: {}", super::unknown_key(&msg, None).unwrap_or(msg.trim_end().into())))
        })?;
        cfg.validate(origin)?;
        Ok(cfg)
    }

    /// Decrypt the remote copy with `file` (`--identity`), in place of `[remote] identity_file`.
    /// Only its path is kept; it is read when an encrypted object is.
    pub fn use_identity(&mut self, file: &Path) -> Result<()> {
        let Some(r) = self.remote.as_mut() else {
            return Err(Error::Config(
                "--identity: the host config has no [remote], so there is nothing to decrypt".into(),
            ));
        };
        let abs =
            std::path::absolute(file).map_err(|e| Error::Config(format!("--identity {}: {e}", file.display())))?;
        r.identity_file = Some(abs);
        Ok(())
    }

    fn validate(&self, origin: &str) -> Result<()> {
        let bad = |key: &str, msg: String| Err(Error::Config(format!("{origin}: {key}: {msg}")));
        for (key, p) in [("state_dir", &self.state_dir), ("backup_root", &self.backup_root)] {
            if !p.is_absolute() {
                return bad(key, format!("\"{}\" must be an absolute path", p.display()));
            }
        }
        for p in &self.control_plane {
            if !p.is_absolute() {
                return bad("control_plane", format!("\"{}\" must be an absolute path", p.display()));
            }
        }
        if self.desired.repo.trim().is_empty() {
            return bad("desired.repo", "is empty; give a local path or a git URL".into());
        }
        for (key, p) in [
            ("desired.credentials_file", &self.desired.credentials_file),
            ("desired.ssh_key", &self.desired.ssh_key),
            ("desired.known_hosts", &self.desired.known_hosts),
        ] {
            if let Some(p) = p.as_ref().filter(|p| !p.is_absolute()) {
                return bad(key, format!("\"{}\" must be an absolute path", p.display()));
            }
        }
        match &self.desired.allowed_signers {
            Some(p) if !p.is_absolute() => {
                return bad("desired.allowed_signers", format!("\"{}\" must be an absolute path", p.display()))
            }
            None if self.desired.require_signed => {
                return bad(
                    "desired.require_signed",
                    "is true but desired.allowed_signers is not set; point it at an OpenSSH allowed-signers file"
                        .into(),
                )
            }
            _ => {}
        }
        for img in self.desired.allowed_images.iter().flatten() {
            let repo = img.strip_suffix("/*").unwrap_or(img);
            if repo.is_empty() || repo.contains('@') || repo.rsplit('/').next().is_some_and(|last| last.contains(':')) {
                return bad(
                    "desired.allowed_images",
                    format!("\"{img}\" must be an image repository (\"ghcr.io/example/pulse\") or a prefix ending in \"/*\", without tag or digest"),
                );
            }
        }
        for p in &self.drill.strip_labels {
            if p.trim().is_empty() || p.chars().all(|c| c == '*') || p.chars().any(char::is_whitespace) {
                return bad(
                    "drill.strip_labels",
                    format!(
                        "\"{p}\" is not a label key or pattern; give keys like \"caddy\" or patterns like \"caddy*\" \
                         (a pattern that matches every label would strip the app's own)"
                    ),
                );
            }
        }
        for (key, url) in self
            .notify
            .webhook
            .iter()
            .map(|u| ("notify.webhook".to_string(), u))
            .chain(self.notify.urls.iter().enumerate().map(|(i, u)| (format!("notify.urls[{i}]"), u)))
        {
            // The URL itself is not repeated: its path or user part is a secret.
            if let Err(why) = super::notify::Target::parse(url) {
                return bad(&key, format!("the URL {why}"));
            }
        }
        if let Some(r) = &self.remote {
            if r.bucket.trim().is_empty() {
                return bad("remote.bucket", "is empty".into());
            }
            if let Some(c) = r.concurrency {
                if !(1..=10).contains(&c) {
                    return bad("remote.concurrency", format!("{c} is out of range; use 1 to 10"));
                }
            }
            if let Some(p) = r.identity_file.as_ref().filter(|p| !p.is_absolute()) {
                return bad("remote.identity_file", format!("\"{}\" must be an absolute path", p.display()));
            }
            if let Some(enc) = &r.encrypt {
                let p = &enc.recipients_file;
                if !p.is_absolute() {
                    return bad(
                        "remote.encrypt.recipients_file",
                        format!("\"{}\" must be an absolute path", p.display()),
                    );
                }
                crate::crypt::read_recipients(p, &format!("{origin}: remote.encrypt.recipients_file"))?;
            }
            if let Some(e) = &r.endpoint {
                if !(e.starts_with("http://") || e.starts_with("https://")) {
                    return bad("remote.endpoint", format!("\"{e}\" must start with https:// (or http://)"));
                }
            }
        }
        Ok(())
    }
}

fn bare_name(name: &str) -> &str {
    name.strip_prefix("SLIPWAY_").unwrap_or(name)
}

/// "line N: unknown key `table.key`; did you mean …" for an unknown-key error with a position.
fn unknown_key_at(text: &str, e: &toml::de::Error) -> Option<String> {
    let start = e.span()?.start;
    let before = text.get(..start)?;
    let line = before.matches('\n').count() + 1;
    // The table the key sits in: the last [header] above it.
    let table = before.lines().rev().find_map(|l| {
        let l = l.trim();
        l.strip_prefix('[').and_then(|h| h.split(']').next()).map(|h| h.trim_matches(['[', ' ']).to_string())
    });
    let msg = super::unknown_key(e.message(), table.as_deref())?;
    Some(format!("line {line}: {msg}"))
}

fn set_path(table: &mut toml::Table, path: &[&str], v: toml::Value) {
    let (last, parents) = path.split_last().expect("env key paths are never empty");
    let mut t = table;
    for p in parents {
        let entry = t.entry(p.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        t = entry.as_table_mut().expect("just made a table");
    }
    t.insert(last.to_string(), v);
}
