//! `fleet.toml`, the desired state read from git: every app, its pinned image, how its tenants
//! are found, where their data lives and how their health is checked.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::stack::{RawService, RawStack, Stack};
use crate::error::{Error, Result};
use crate::types::{PinnedImage, TenantId};

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

impl std::fmt::Display for TenantFrom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TenantFrom::Name { prefix, suffix } => write!(f, "name:{prefix}{{tenant}}{suffix}"),
            TenantFrom::Label(l) => write!(f, "label:{l}"),
        }
    }
}

/// Which containers are an app's tenants: a label filter (`key=value`, or `key` with any
/// value), or a container-name prefix (`name:pulse-*`) for hosts whose containers carry no
/// label of their own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Selector {
    /// `key=value` or `key`.
    Label {
        /// Label key.
        key: String,
        /// Required value; none = the label only has to exist.
        value: Option<String>,
    },
    /// `name:<prefix>*`: every container whose name starts with the prefix.
    Name {
        /// What the name starts with.
        prefix: String,
    },
}

impl Selector {
    /// The Docker `label` filter string, for a label selector.
    pub fn label_filter(&self) -> Option<String> {
        match self {
            Selector::Label { key, value: Some(v) } => Some(format!("{key}={v}")),
            Selector::Label { key, value: None } => Some(key.clone()),
            Selector::Name { .. } => None,
        }
    }

    /// Whether a container with this name (without the leading '/') is selected by name;
    /// always true for a label selector (the engine filters by label).
    pub fn name_matches(&self, name: &str) -> bool {
        match self {
            Selector::Label { .. } => true,
            Selector::Name { prefix } => name.starts_with(prefix.as_str()),
        }
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Selector::Name { prefix } => write!(f, "name:{prefix}*"),
            label => f.write_str(&label.label_filter().unwrap_or_default()),
        }
    }
}

impl std::str::FromStr for Selector {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Selector, String> {
        if let Some(pat) = s.strip_prefix("name:") {
            return match pat.strip_suffix('*') {
                Some(prefix) if !prefix.is_empty() && !prefix.contains('*') => {
                    Ok(Selector::Name { prefix: prefix.into() })
                }
                _ => Err(format!(
                    "select \"{s}\": a name selector is a prefix and one trailing '*', e.g. \"name:pulse-*\""
                )),
            };
        }
        match s.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok(Selector::Label { key: k.into(), value: Some(v.into()) }),
            None if !s.is_empty() => Ok(Selector::Label { key: s.into(), value: None }),
            _ => Err(format!("select \"{s}\" must be `label=value`, `label` or `name:<prefix>*`")),
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
    /// The Docker network whose address the probe uses; default: the container's only one
    /// (a container on several is refused at plan time: never a guess).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// A stack's app only: the service whose container answers this check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}
fn default_health_timeout() -> u64 {
    60
}

/// How customers reach an app's tenants through the reverse proxy (`[app.proxy]`, opt-in):
/// after a new container passes its health gate, the rollout waits until the proxy routes the
/// tenant's host to it, and measures what the tenant's customers saw during the switch.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySpec {
    /// The proxy's entrypoint as slipway reaches it from the host, e.g. `http://127.0.0.1:80`.
    pub entrypoint: String,
    /// The tenant's Host header, with `{tenant}`, e.g. `{tenant}.cloud.example.com`.
    pub host: String,
    /// The path requested through the proxy; default: the health path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Seconds, after the container's health gate, for the proxy to route the tenant's host to
    /// the new container (the Docker provider reloads after its throttle, 2 s by default).
    #[serde(default = "default_proxy_timeout")]
    pub timeout_s: u64,
}
fn default_proxy_timeout() -> u64 {
    30
}

impl ProxySpec {
    /// The Host header of `tenant`.
    pub fn host_of(&self, tenant: &TenantId) -> String {
        self.host.replace("{tenant}", tenant.as_str())
    }

    /// The URL requested through the proxy (the Host header says which tenant).
    pub fn url(&self, health: &HealthSpec) -> String {
        let path = self.path.as_deref().unwrap_or(&health.path);
        format!("{}{path}", self.entrypoint.trim_end_matches('/'))
    }

    fn validate(&self) -> std::result::Result<(), String> {
        let Some(rest) = self.entrypoint.strip_prefix("http://") else {
            return Err(format!(
                "proxy.entrypoint \"{}\" must be the proxy's plain-HTTP entrypoint as this host reaches it, \
                 e.g. \"http://127.0.0.1:80\"",
                self.entrypoint
            ));
        };
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains(['/', '?', '#', ' ', '@']) {
            return Err(format!(
                "proxy.entrypoint \"{}\" must be a scheme and an address only (no path), e.g. \"http://127.0.0.1:80\"",
                self.entrypoint
            ));
        }
        let host_ok = self.host.matches("{tenant}").count() == 1
            && self.host.replace("{tenant}", "t").bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:".contains(&b));
        if !host_ok {
            return Err(format!(
                "proxy.host \"{}\" must be a host name with {{tenant}} exactly once (letters, digits, '-', '.'), \
                 e.g. \"{{tenant}}.cloud.example.com\"",
                self.host
            ));
        }
        if let Some(p) = self.path.as_deref().filter(|p| !p.starts_with('/')) {
            return Err(format!("proxy.path \"{p}\" must start with '/'"));
        }
        if self.timeout_s == 0 {
            return Err("proxy.timeout_s must be greater than 0".into());
        }
        Ok(())
    }
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
    /// Data dir pattern with `{tenant}`: a dir bind-mounted into each tenant's container, or
    /// the mountpoint of its named volume (`data_volume`).
    pub data_dir: String,
    /// The name pattern (with `{tenant}`) of the named volume of the `local` driver that holds
    /// each tenant's data, when it is one (`data_volume` in fleet.toml): `data_dir` is then its
    /// mountpoint, and the plan checks the container mounts exactly that volume.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_volume: Option<String>,
    /// Health probe.
    pub health: HealthSpec,
    /// The reverse proxy in front of the tenants (`[app.proxy]`), when the rollout should
    /// gate on it and measure the switch as customers see it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxySpec>,
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
    /// Recreate tenants whose container is not running on the new image too (left stopped);
    /// by default they are skipped and reported as behind.
    pub include_stopped: bool,
    /// Container paths whose mounts hold no customer data (caches, temp files): a writable
    /// volume or bind there is allowed though a snapshot misses it; it is kept across a
    /// rollout (a volume by its name), never snapshotted or restored.
    pub scratch_mounts: Vec<String>,
    /// Rollout copies the data dir beside it while the tenant runs and only the delta while it
    /// is down (default); `false`: archive the whole data dir while the tenant is down.
    pub pre_copy: bool,
    /// The tenant is a stack of containers (`[app.services]`): its services, their pins and
    /// data mounts. None for the single-container tenant (then `image`, `data_dir` say it all).
    /// For a stack, `image` is its first service's pin and `data_dir` is empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stack: Option<Stack>,
    /// The database each tenant keeps besides its files (`[app.database]`), dumped into its
    /// snapshot and replayed by its restore.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<super::database::DatabaseSpec>,
    /// The SQLite files each tenant keeps in its data dir (`[app.database] kind = "sqlite"`),
    /// copied online through SQLite's backup API into its snapshot, the tenant never paused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sqlite: Option<super::database::SqliteSpec>,
    /// Waves, order and failure budgets of its rollouts (`[app.rollout]`); the default is the
    /// canary, then one tenant at a time, halting at the first failure.
    pub rollout: super::rollout::RolloutSpec,
    /// Commands the rollout runs per tenant in a one-shot container of the new image
    /// (`[app.hooks]`).
    pub hooks: super::hooks::Hooks,
}

impl App {
    /// The data dir of `tenant`.
    pub fn data_dir_of(&self, tenant: &TenantId) -> PathBuf {
        PathBuf::from(self.data_dir.replace("{tenant}", tenant.as_str()))
    }

    /// The named volume holding `tenant`'s data, when the app keeps it in one.
    pub fn data_volume_of(&self, tenant: &TenantId) -> Option<String> {
        self.data_volume.as_ref().map(|v| v.replace("{tenant}", tenant.as_str()))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    name: String,
    #[serde(default)]
    image: Option<String>,
    select: String,
    #[serde(default)]
    tenant_from: Option<String>,
    #[serde(default)]
    data_dir: Option<String>,
    #[serde(default)]
    data_volume: Option<String>,
    health: HealthSpec,
    #[serde(default)]
    proxy: Option<ProxySpec>,
    #[serde(default = "default_stop_timeout")]
    stop_timeout_s: u64,
    canary: Option<String>,
    #[serde(default)]
    canary_soak_s: u64,
    #[serde(default)]
    hold: Vec<String>,
    #[serde(default)]
    quiesce: Quiesce,
    #[serde(default)]
    include_stopped: bool,
    #[serde(default)]
    scratch_mounts: Vec<String>,
    #[serde(default = "default_pre_copy")]
    pre_copy: bool,
    #[serde(default)]
    stack: Option<RawStack>,
    #[serde(default)]
    services: Option<BTreeMap<String, RawService>>,
    database: Option<super::database::RawDatabase>,
    #[serde(default)]
    rollout: Option<super::rollout::RawRollout>,
    #[serde(default)]
    hooks: Option<super::hooks::RawHooks>,
}
/// Where the engine keeps the data of a `local` volume `<name>`: `<VOLUMES_DIR>/<name>/_data`
/// (Docker's default root). On a host whose Docker root is elsewhere, give `data_dir` as the
/// volume's mountpoint instead; either way the plan checks the container mounts that dir.
pub const VOLUMES_DIR: &str = "/var/lib/docker/volumes";

fn default_pre_copy() -> bool {
    true
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
            let guess = if super::closest(k, ["app"]).is_some() { "did you mean `app`? " } else { "" };
            return Err(cfg(format!("unknown key `{k}`; {guess}the file holds only [[app]] tables")));
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
            let raw: RawApp = v.try_into().map_err(|e: toml::de::Error| {
                let msg = super::unknown_key(e.message(), None).unwrap_or_else(|| e.message().trim_end().into());
                cfg(format!("{label}: {msg}"))
            })?;
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
        if self.services.is_none() && self.stack.is_some() {
            return Err("[app.stack] without [app.services]: declare each service of the stack as \
                        [app.services.<name>] (or drop [app.stack] for a single-container tenant)"
                .into());
        }
        let stack = match self.services {
            None => None,
            Some(services) => {
                if let Some(i) = &self.image {
                    return Err(format!(
                        "image \"{i}\": a stack pins an image per service ([app.services.<name>] image = …), not \
                         one for the app"
                    ));
                }
                if self.data_dir.is_some() || self.data_volume.is_some() {
                    return Err("data_dir / data_volume: a stack keeps its data in its services' mounts; list them \
                                as [app.services.<name>] data = [\"/data\"]"
                        .into());
                }
                if !self.pre_copy {
                    return Err("pre_copy = false: a stack's rollout copies each data mount beside itself (it has \
                                no archive-while-down path); drop pre_copy"
                        .into());
                }
                if self.proxy.is_some() {
                    return Err("[app.proxy]: the proxy gate is not available for a stack yet; drop [app.proxy] \
                                (the app's HTTP check still gates the rollout)"
                        .into());
                }
                let stack = super::stack::validate(self.stack, services, &self.scratch_mounts)?;
                match self.health.service.as_deref() {
                    None => {
                        return Err(format!(
                            "health.service is missing: name the service that answers the app's HTTP check \
                             (services: {})",
                            stack.names()
                        ))
                    }
                    Some(s) if stack.service(s).is_none() => {
                        return Err(format!(
                            "health.service \"{s}\" is not a service of the stack (services: {})",
                            stack.names()
                        ))
                    }
                    Some(_) => {}
                }
                Some(stack)
            }
        };
        if stack.is_none() && self.health.service.is_some() {
            return Err("health.service names a service of a stack; this app has no [app.services]".into());
        }
        let image: PinnedImage = match (&stack, &self.image) {
            (Some(s), _) => s.services[0].image.clone(),
            (None, Some(i)) => i.parse().map_err(|e| format!("image: {e}"))?,
            (None, None) => {
                return Err("missing image: the pinned image every tenant runs, e.g. \
                            \"ghcr.io/x/pulse@sha256:…\" (or [app.services.<name>] for a stack)"
                    .into())
            }
        };
        let select: Selector = self.select.parse()?;
        let tenant_from = match (&self.tenant_from, &stack) {
            (Some(t), _) => t.clone(),
            (None, Some(s)) => format!("label:{}", s.group),
            (None, None) => {
                return Err("missing tenant_from, e.g. \"name:pulse-{tenant}\" or \"label:pulse.tenant\"".into())
            }
        };
        let tenant_from = if let Some(pat) = tenant_from.strip_prefix("name:") {
            match pat.split_once("{tenant}") {
                Some((p, s)) if !s.contains("{tenant}") => TenantFrom::Name { prefix: p.into(), suffix: s.into() },
                _ => {
                    return Err(format!(
                        "tenant_from \"{tenant_from}\" must contain {{tenant}} exactly once, e.g. \"name:pulse-{{tenant}}\""
                    ))
                }
            }
        } else if let Some(l) = tenant_from.strip_prefix("label:").filter(|l| !l.is_empty()) {
            TenantFrom::Label(l.into())
        } else {
            return Err(format!(
                "tenant_from \"{tenant_from}\" must be \"name:<pattern with {{tenant}}>\" or \"label:<label key>\""
            ));
        };
        let data_dir = match (self.data_dir, &self.data_volume) {
            (None, None) if stack.is_some() => String::new(),
            (Some(_), Some(_)) => {
                return Err("give data_dir (a bind-mounted dir) or data_volume (a named volume), not both".into())
            }
            (None, None) => {
                return Err("missing data_dir (e.g. \"/data/tenants/{tenant}\") or data_volume (e.g. \
                            \"cf-agent-{tenant}_data\"): where each tenant keeps its data"
                    .into())
            }
            (Some(d), None) => {
                if !d.starts_with('/') || !d.contains("{tenant}") {
                    return Err(format!(
                        "data_dir \"{d}\" must be an absolute path containing {{tenant}}, e.g. \"/data/tenants/{{tenant}}\""
                    ));
                }
                d
            }
            (None, Some(v)) => {
                let name_ok = |s: &str| {
                    s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-{}".contains(&b))
                        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric() || b == b'{')
                };
                if !v.contains("{tenant}") || !name_ok(v) {
                    return Err(format!(
                        "data_volume \"{v}\" must be a volume name containing {{tenant}} (letters, digits, '_', '.', \
                         '-'), e.g. \"cf-agent-{{tenant}}_data\""
                    ));
                }
                format!("{VOLUMES_DIR}/{v}/_data")
            }
        };
        if !self.health.path.starts_with('/') {
            return Err(format!("health.path \"{}\" must start with '/'", self.health.path));
        }
        if self.health.port == 0 || self.health.timeout_s == 0 {
            return Err("health.port and health.timeout_s must be greater than 0".into());
        }
        if let Some(p) = &self.proxy {
            p.validate()?;
        }
        if let Some(m) = self.scratch_mounts.iter().find(|m| !m.starts_with('/')) {
            return Err(format!(
                "scratch_mounts: \"{m}\" must be an absolute path in the container, e.g. \"/var/cache/app\""
            ));
        }
        let (database, sqlite) = match self.database.map(|d| d.validate(stack.is_some())).transpose()? {
            None => (None, None),
            Some(super::database::Declared::Postgres(d)) => (Some(d), None),
            Some(super::database::Declared::Sqlite(s)) => {
                if let Some(st) = &stack {
                    s.check_in_stack(st)?;
                }
                (None, Some(s))
            }
        };
        // Without the table: the rollout as it always was (the first failure halts, no pause).
        let rollout = match self.rollout {
            Some(r) => r.validate()?,
            None => super::rollout::RolloutSpec::default(),
        };
        if let Some(why) = rollout.stack_refusal().filter(|_| stack.is_some()) {
            return Err(format!("[app.rollout]: {why}; drop them (waves, order_by and the budgets apply)"));
        }
        // A stack's switch is timed (its report shows the downtime) but not held to a budget.
        if stack.is_some() && rollout.downtime_budget_ms.is_some() {
            return Err("[app.rollout] downtime_budget_ms: a stack's rollout does not hold its tenants to a downtime \
                        budget yet (its switch is timed and reported); drop the key, or roll the app as a single \
                        container"
                .into());
        }
        let hooks = self.hooks.unwrap_or_default().validate()?;
        if stack.is_some() && hooks != super::hooks::Hooks::default() {
            return Err("[app.hooks]: a stack's rollout does not run hooks yet; drop them, or roll the app as a \
                        single container"
                .into());
        }
        let tenant = |key: &str, s: String| s.parse::<TenantId>().map_err(|e| format!("{key}: {e}"));
        let canary = self.canary.map(|c| tenant("canary", c)).transpose()?;
        let hold = self.hold.into_iter().map(|h| tenant("hold", h)).collect::<std::result::Result<_, _>>()?;
        Ok(App {
            name: self.name,
            image,
            select,
            tenant_from,
            data_dir,
            data_volume: self.data_volume,
            health: self.health,
            proxy: self.proxy,
            stop_timeout_s: self.stop_timeout_s,
            canary,
            canary_soak_s: self.canary_soak_s,
            hold,
            quiesce: self.quiesce,
            include_stopped: self.include_stopped,
            scratch_mounts: self.scratch_mounts,
            pre_copy: self.pre_copy,
            stack,
            database,
            sqlite,
            rollout,
            hooks,
        })
    }
}
