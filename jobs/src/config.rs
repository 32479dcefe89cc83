//! The two configuration files: the host config (TOML on the host, never in git, every key
//! overridable by a `SLIPWAY_…` environment variable) and `fleet.toml`, the desired state read
//! from git. Both are validated completely when loaded: unknown keys, tag-only images, bad
//! tenant ids and impossible values are errors that name the file, the key and the fix.
//! Defaults live here and nowhere else; `deploy/config.example.toml` documents them.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::types::{PinnedImage, TenantId};

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
    /// AWS shared-credentials file (profile `default`); else the standard AWS chain.
    pub credentials_file: Option<PathBuf>,
    /// Remote retention; none = the local policy.
    pub retention: Option<Retention>,
    /// Multipart part size in MiB (raised when an archive would need more than 10 000 parts).
    pub part_size_mb: Option<u64>,
    /// Parts in flight per object (at most 10, Spaces' limit).
    pub concurrency: Option<usize>,
}
fn default_region() -> String {
    "us-east-1".into()
}

/// `[notify]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// JSON POST target on failures and halts (Slack-compatible `text`).
    pub webhook: Option<String>,
}

/// `[metrics]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Prometheus text file rewritten after every job.
    pub file: Option<PathBuf>,
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
];

#[derive(Clone, Copy)]
enum Kind {
    Str,
    Int,
    Bool,
    PathList,
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
    ("SLIPWAY_NOTIFY_WEBHOOK", &["notify", "webhook"], Kind::Str),
    ("SLIPWAY_METRICS_FILE", &["metrics", "file"], Kind::Str),
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
        for (name, value) in env {
            if !name.starts_with("SLIPWAY_") || NON_CONFIG_ENV.contains(&name.as_str()) {
                continue;
            }
            let Some((_, path, kind)) = ENV_KEYS.iter().find(|(n, _, _)| *n == name) else {
                let known: Vec<&str> = ENV_KEYS.iter().map(|(n, _, _)| *n).collect();
                return Err(Error::Config(format!(
                    "environment variable {name} is not a slipway setting; unset it or use one of: {}",
                    known.join(", ")
                )));
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
            };
            set_path(&mut table, path, v);
        }
        let cfg: HostConfig = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| Error::Config(format!("{origin}: {}", e.to_string().trim_end())))?;
        cfg.validate(origin)?;
        Ok(cfg)
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
        if let Some(r) = &self.remote {
            if r.bucket.trim().is_empty() {
                return bad("remote.bucket", "is empty".into());
            }
            if let Some(c) = r.concurrency {
                if !(1..=10).contains(&c) {
                    return bad("remote.concurrency", format!("{c} is out of range; use 1 to 10"));
                }
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

/// `fleet.toml`: the desired state.
#[derive(Debug, Clone, Serialize)]
pub struct Fleet {
    /// Every app, in file order.
    pub apps: Vec<App>,
}

/// How a tenant id is derived from a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum TenantFrom {
    /// `name:pulse-{tenant}`: the container name with the pattern's prefix and suffix removed.
    Name {
        /// Text before `{tenant}`.
        prefix: String,
        /// Text after `{tenant}`.
        suffix: String,
    },
    /// `label:pulse.tenant`: the value of that label.
    Label(String),
}

impl TenantFrom {
    /// The tenant id for a container with this name and labels, if the pattern matches.
    pub fn tenant_of(&self, name: &str, labels: &std::collections::HashMap<String, String>) -> Option<String> {
        match self {
            TenantFrom::Name { prefix, suffix } => name
                .strip_prefix(prefix.as_str())
                .and_then(|s| s.strip_suffix(suffix.as_str()))
                .filter(|s| !s.is_empty())
                .map(str::to_string),
            TenantFrom::Label(l) => labels.get(l).cloned(),
        }
    }
}

/// A label filter: `key=value` or `key` (any value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Selector {
    /// Label key.
    pub key: String,
    /// Required value; none = the label only has to exist.
    pub value: Option<String>,
}

impl Selector {
    /// The Docker `label` filter string.
    pub fn filter(&self) -> String {
        match &self.value {
            Some(v) => format!("{}={v}", self.key),
            None => self.key.clone(),
        }
    }
}

/// How a tenant's data is held still while it is archived by `snapshot`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Quiesce {
    /// `docker pause` while reading, unpause right after.
    #[default]
    Pause,
    /// Stop the container while reading, start it after.
    Stop,
    /// Read while it runs.
    None,
}

/// The health probe of an app.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSpec {
    /// HTTP path, e.g. `/api/health`.
    pub path: String,
    /// Container port.
    pub port: u16,
    /// Seconds a new container has to answer 2xx.
    #[serde(default = "default_health_timeout")]
    pub timeout_s: u64,
}
fn default_health_timeout() -> u64 {
    60
}

/// One `[[app]]` of `fleet.toml`.
#[derive(Debug, Clone, Serialize)]
pub struct App {
    /// App name (`--app`).
    pub name: String,
    /// The pinned image every tenant should run.
    pub image: PinnedImage,
    /// Which containers are this app's tenants.
    pub select: Selector,
    /// How tenant ids are derived.
    pub tenant_from: TenantFrom,
    /// Data dir pattern with `{tenant}`.
    pub data_dir: String,
    /// Health probe.
    pub health: HealthSpec,
    /// Seconds `docker stop` waits before SIGKILL.
    pub stop_timeout_s: u64,
    /// The canary tenant; default: first in sorted order.
    pub canary: Option<TenantId>,
    /// Seconds to wait after the canary is healthy before checking it again and going on.
    pub canary_soak_s: u64,
    /// Tenants rollout must not touch.
    pub hold: Vec<TenantId>,
    /// How `snapshot` holds the data still.
    pub quiesce: Quiesce,
}

impl App {
    /// The data dir of `tenant`.
    pub fn data_dir_of(&self, tenant: &TenantId) -> PathBuf {
        PathBuf::from(self.data_dir.replace("{tenant}", tenant.as_str()))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    name: String,
    image: String,
    select: String,
    tenant_from: String,
    data_dir: String,
    health: HealthSpec,
    #[serde(default = "default_stop_timeout")]
    stop_timeout_s: u64,
    canary: Option<String>,
    #[serde(default)]
    canary_soak_s: u64,
    #[serde(default)]
    hold: Vec<String>,
    #[serde(default)]
    quiesce: Quiesce,
}
fn default_stop_timeout() -> u64 {
    30
}

impl Fleet {
    /// Parse and validate `fleet.toml`; `origin` names it in errors (file, commit).
    pub fn parse(text: &str, origin: &str) -> Result<Fleet> {
        let cfg = |msg: String| Error::Config(format!("{origin}: {msg}"));
        let mut table: toml::Table = toml::from_str(text).map_err(|e| cfg(e.to_string().trim_end().to_string()))?;
        if let Some(k) = table.keys().find(|k| k.as_str() != "app") {
            return Err(cfg(format!("unknown key `{k}`; the file holds only [[app]] tables")));
        }
        let Some(apps) = table.remove("app") else {
            return Err(cfg("no [[app]] table; add one per app".into()));
        };
        let toml::Value::Array(apps) = apps else {
            return Err(cfg("`app` must be an array of tables: write [[app]]".into()));
        };
        let mut names = BTreeSet::new();
        let mut out = Vec::new();
        for (i, v) in apps.into_iter().enumerate() {
            let label = v
                .get("name")
                .and_then(|n| n.as_str())
                .map_or_else(|| format!("app #{}", i + 1), |n| format!("app \"{n}\""));
            let raw: RawApp =
                v.try_into().map_err(|e: toml::de::Error| cfg(format!("{label}: {}", e.message().trim_end())))?;
            let app = raw.validate().map_err(|m| cfg(format!("{label}: {m}")))?;
            if !names.insert(app.name.clone()) {
                return Err(cfg(format!("{label}: the name is used twice; app names must be unique")));
            }
            out.push(app);
        }
        Ok(Fleet { apps: out })
    }

    /// The app named `name`, or a usage error listing the ones there are.
    pub fn app(&self, name: &str) -> Result<&App> {
        self.apps.iter().find(|a| a.name == name).ok_or_else(|| {
            let names: Vec<&str> = self.apps.iter().map(|a| a.name.as_str()).collect();
            Error::Usage(format!("no app \"{name}\" in fleet.toml; apps are: {}", names.join(", ")))
        })
    }
}

impl RawApp {
    fn validate(self) -> std::result::Result<App, String> {
        if self.name.is_empty()
            || !self.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return Err(format!("name \"{}\" must be letters, digits, '-', '_' or '.'", self.name));
        }
        let image: PinnedImage = self.image.parse().map_err(|e| format!("image: {e}"))?;
        let select = match self.select.split_once('=') {
            Some((k, v)) if !k.is_empty() => Selector { key: k.into(), value: Some(v.into()) },
            None if !self.select.is_empty() => Selector { key: self.select.clone(), value: None },
            _ => return Err(format!("select \"{}\" must be `label=value` or `label`", self.select)),
        };
        let tenant_from = if let Some(pat) = self.tenant_from.strip_prefix("name:") {
            match pat.split_once("{tenant}") {
                Some((p, s)) if !s.contains("{tenant}") => TenantFrom::Name { prefix: p.into(), suffix: s.into() },
                _ => {
                    return Err(format!(
                        "tenant_from \"{}\" must contain {{tenant}} exactly once, e.g. \"name:pulse-{{tenant}}\"",
                        self.tenant_from
                    ))
                }
            }
        } else if let Some(l) = self.tenant_from.strip_prefix("label:").filter(|l| !l.is_empty()) {
            TenantFrom::Label(l.into())
        } else {
            return Err(format!(
                "tenant_from \"{}\" must be \"name:<pattern with {{tenant}}>\" or \"label:<label key>\"",
                self.tenant_from
            ));
        };
        if !self.data_dir.starts_with('/') || !self.data_dir.contains("{tenant}") {
            return Err(format!(
                "data_dir \"{}\" must be an absolute path containing {{tenant}}, e.g. \"/data/tenants/{{tenant}}\"",
                self.data_dir
            ));
        }
        if !self.health.path.starts_with('/') {
            return Err(format!("health.path \"{}\" must start with '/'", self.health.path));
        }
        if self.health.port == 0 || self.health.timeout_s == 0 {
            return Err("health.port and health.timeout_s must be greater than 0".into());
        }
        let tenant = |key: &str, s: String| s.parse::<TenantId>().map_err(|e| format!("{key}: {e}"));
        let canary = self.canary.map(|c| tenant("canary", c)).transpose()?;
        let hold = self.hold.into_iter().map(|h| tenant("hold", h)).collect::<std::result::Result<_, _>>()?;
        Ok(App {
            name: self.name,
            image,
            select,
            tenant_from,
            data_dir: self.data_dir,
            health: self.health,
            stop_timeout_s: self.stop_timeout_s,
            canary,
            canary_soak_s: self.canary_soak_s,
            hold,
            quiesce: self.quiesce,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn host(text: &str, env: &[(&str, &str)]) -> Result<HostConfig> {
        HostConfig::parse(text, "config.toml", env.iter().map(|(a, b)| (a.to_string(), b.to_string())))
    }

    fn app(extra: &str) -> String {
        format!(
            "[[app]]\nname = \"pulse\"\nimage = \"reg/pulse@sha256:{HEX}\"\nselect = \"pulse.managed=true\"\n\
             tenant_from = \"name:pulse-{{tenant}}\"\ndata_dir = \"/data/tenants/{{tenant}}\"\n\
             health = {{ path = \"/api/health\", port = 8080 }}\n{extra}"
        )
    }

    #[test]
    fn the_deploy_examples_parse() {
        host(include_str!("../../deploy/config.example.toml"), &[]).unwrap();
        Fleet::parse(include_str!("../../deploy/fleet.example.toml"), "fleet.example.toml").unwrap();
    }

    #[test]
    fn minimal_host_config_gets_the_documented_defaults() {
        let c = host("[desired]\nrepo = \"/srv/git/fleet.git\"\n", &[]).unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/slipway"));
        assert_eq!(c.backup_root, PathBuf::from("/data/backups"));
        assert_eq!(c.desired.branch, "main");
        assert_eq!(c.retention.keep_daily, Some(7));
        assert_eq!(c.retention.keep_rollout_runs, Some(5));
        assert!(c.remote.is_none());
    }

    #[test]
    fn environment_overrides_keys_and_unknown_variables_are_errors() {
        let c = host(
            "[desired]\nrepo = \"/r\"\n",
            &[
                ("SLIPWAY_BACKUP_ROOT", "/b"),
                ("SLIPWAY_REMOTE_BUCKET", "bk"),
                ("SLIPWAY_REMOTE_PATH_STYLE", "true"),
                ("SLIPWAY_CONFIG", "/ignored"),
            ],
        )
        .unwrap();
        assert_eq!(c.backup_root, PathBuf::from("/b"));
        let r = c.remote.unwrap();
        assert_eq!((r.bucket.as_str(), r.path_style), ("bk", true));
        let e = host("[desired]\nrepo = \"/r\"\n", &[("SLIPWAY_BACKUP_RUT", "/b")]).unwrap_err().to_string();
        assert!(e.contains("SLIPWAY_BACKUP_RUT") && e.contains("SLIPWAY_BACKUP_ROOT"), "{e}");
    }

    #[test]
    fn bad_host_configs_name_the_file_and_key() {
        let cases: &[(&str, &str)] = &[
            ("[desired]\nrepo = \"/r\"\nbackup_rot = \"/x\"\n", "backup_rot"),
            ("backup_root = \"/x\"\n", "desired"),
            ("[desired]\nrepo = \"/r\"\n[remote]\nbucket = \"b\"\nconcurrency = 11\n", "remote.concurrency"),
            ("[desired]\nrepo = \"/r\"\nstate_dir = \"rel\"\n", "state_dir"),
            ("[desired\nrepo=", "config.toml"),
        ];
        for (text, needle) in cases {
            let e = host(text, &[]).unwrap_err().to_string();
            assert!(e.contains("config.toml") && e.contains(needle), "{text:?} -> {e}");
        }
    }

    #[test]
    fn a_valid_fleet_parses_with_defaults() {
        let f = Fleet::parse(&app("hold = [\"t-2\"]\n"), "fleet.toml").unwrap();
        let a = &f.apps[0];
        assert_eq!(a.stop_timeout_s, 30);
        assert_eq!(a.health.timeout_s, 60);
        assert_eq!(a.quiesce, Quiesce::Pause);
        assert_eq!(a.hold[0].as_str(), "t-2");
        let labels = Default::default();
        assert_eq!(a.tenant_from.tenant_of("pulse-t-1", &labels).as_deref(), Some("t-1"));
        assert_eq!(a.tenant_from.tenant_of("other", &labels), None);
        assert_eq!(a.data_dir_of(&"t-1".parse().unwrap()), PathBuf::from("/data/tenants/t-1"));
    }

    #[test]
    fn each_bad_fleet_input_gets_a_message_naming_file_app_and_key() {
        let tag = app("").replace(&format!("reg/pulse@sha256:{HEX}"), "reg/pulse:latest");
        let cases: Vec<(String, &[&str])> = vec![
            (tag, &["fleet.toml", "app \"pulse\"", "not pinned by digest", "reg/pulse@sha256:"]),
            (app("").replace(HEX, "abc"), &["app \"pulse\"", "sha256"]),
            (app("canary = \"../etc\"\n"), &["app \"pulse\"", "canary", "../etc"]),
            (app("hold = [\"a b\"]\n"), &["hold", "a b"]),
            (app("colour = 1\n"), &["app \"pulse\"", "colour"]),
            (app("").replace("name:pulse-{tenant}", "pulse"), &["tenant_from"]),
            (app("").replace("/data/tenants/{tenant}", "data"), &["data_dir"]),
            (format!("{}\n{}", app(""), app("")), &["used twice"]),
            ("apps = 1\n".into(), &["unknown key `apps`"]),
            ("[[app]\nname=".into(), &["fleet.toml"]),
        ];
        for (text, needles) in cases {
            let e = Fleet::parse(&text, "fleet.toml").unwrap_err().to_string();
            for n in needles {
                assert!(e.contains(n), "missing {n:?} in: {e}");
            }
        }
    }
}
