//! The Docker engine adapter: the few container and image operations the jobs need, with
//! domain types in and out. It owns the rule for recreating a tenant's container on a new
//! image: carry over what the operator set (labels, env, binds and volumes — an anonymous
//! volume by its name, as Compose does, so it never comes back empty — networks with
//! aliases, restart policy, limits, ports, log config) and drop what came from the old image's
//! defaults (Cmd, Entrypoint, image Env and Labels, ExposedPorts, WorkingDir, User,
//! Healthcheck), by comparing the container's config with its old image's config.
//! The API version is negotiated, so it works with Docker 20.10 (API 1.41) and current engines.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use bollard::models::{
    ContainerConfig, ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, ContainerUpdateBody,
    EndpointSettings, ImageConfig, Mount, MountType, NetworkConnectRequest, NetworkCreateRequest, NetworkingConfig,
    RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder, ListNetworksOptionsBuilder,
    RemoveContainerOptionsBuilder, RenameContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use serde::Serialize;

use crate::config::{App, DockerConfig, Stack};
use crate::container::{OperatorSettings, Restart};
use crate::error::{Error, Result};
use crate::types::{Digest, PinnedImage, TenantId};

/// Per-request timeout of the engine client; `stop` adds the stop timeout on top.
const CLIENT_TIMEOUT_S: u64 = 120;

/// How long a call that must not be given up on — an undo's, `recover`'s connection — waits for
/// a Docker engine that does not answer (its socket gone while dockerd restarts) before it
/// fails. A restart takes seconds; giving up sooner leaves a tenant down.
pub const ENGINE_WAIT: Duration = Duration::from_secs(60);

/// A connection to the Docker engine.
#[derive(Clone)]
pub struct Engine {
    docker: Docker,
}

/// A tenant's container as the jobs see it.
#[derive(Debug, Clone, Serialize)]
pub struct TenantContainer {
    /// Tenant id derived from the name or label.
    pub tenant: TenantId,
    /// Container name (without the leading '/').
    pub name: String,
    /// Container id.
    pub id: String,
    /// The image reference the container was created from.
    pub image_ref: String,
    /// The digest it runs, if known (from the reference or the image's repo digests).
    pub digest: Option<Digest>,
    /// running, exited, paused, …
    pub state: String,
    /// The networks it is connected to, sorted.
    pub networks: Vec<String>,
    /// Its network mode: a network name, `bridge`, `host`, `none` or `container:<id>`.
    pub network_mode: String,
    /// What is mounted into it (binds, volumes, tmpfs), as the engine reports it.
    pub mounts: Vec<TenantMount>,
    /// Started with `docker run --rm` (`HostConfig.AutoRemove`): the engine deletes it as soon
    /// as it stops, so a rollout could never bring it back.
    pub auto_remove: bool,
    /// Its labels, as the engine's list gave them: what a rollout's waves select by and
    /// `order_by` orders by (`[app.rollout]`). Not in reports.
    #[serde(skip)]
    pub labels: BTreeMap<String, String>,
}

/// One mount of a tenant's container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TenantMount {
    /// `bind`, `volume`, `tmpfs`, …
    pub kind: String,
    /// The host path of a bind, the name of a volume; empty for a tmpfs.
    pub source: String,
    /// Where it is mounted in the container.
    pub destination: String,
    /// Mounted read-write.
    pub writable: bool,
    /// Where it is on this host: a bind's path, a volume's mountpoint (empty when the engine
    /// does not say).
    pub host_path: String,
    /// A volume's driver (`local` keeps it in a dir on this host); empty for other mounts.
    pub driver: String,
}

impl TenantMount {
    /// Whether this is a volume Docker named itself (an image's `VOLUME`, `-v /path`,
    /// `--mount type=volume` without a source): 64 hex digits.
    pub fn is_anonymous_volume(&self) -> bool {
        self.kind == "volume" && self.source.len() == 64 && self.source.bytes().all(|b| b.is_ascii_hexdigit())
    }

    /// How an operator would name it: `bind /srv/x`, `volume "cache"`, `anonymous volume 3f2a…`.
    pub fn describe(&self) -> String {
        match self.kind.as_str() {
            "bind" => format!("bind mount {} at {}", self.source, self.destination),
            "volume" if self.is_anonymous_volume() => {
                format!("anonymous volume {} at {}", &self.source[..12], self.destination)
            }
            "volume" => format!("volume \"{}\" at {}", self.source, self.destination),
            k => format!("{k} mount at {}", self.destination),
        }
    }
}

impl TenantContainer {
    /// Why the health probe cannot tell which address to use, if it cannot: host or
    /// `container:` networking (no address of its own), or several networks and no
    /// `health.network`.
    pub fn probe_network_problem(&self, network: Option<&str>) -> Option<String> {
        let mode = self.network_mode.as_str();
        if mode == "host" || mode.starts_with("container:") || mode == "none" {
            return Some(format!(
                "container {} uses network mode \"{mode}\": it has no address of its own for the health probe; \
                 slipway rolls only tenants on a Docker network",
                self.name
            ));
        }
        match network {
            Some(n) if self.networks.iter().any(|x| x == n) => None,
            Some(n) => Some(format!(
                "container {} is not on health.network \"{n}\" (its networks: {})",
                self.name,
                if self.networks.is_empty() { "none".to_string() } else { self.networks.join(", ") }
            )),
            None if self.networks.len() > 1 => Some(format!(
                "container {} is on several networks ({}); set health.network to the one the probe should use",
                self.name,
                self.networks.join(", ")
            )),
            None => None,
        }
    }

    /// Whether its container runs (or is paused or restarting): a person may have stopped
    /// it on purpose (a suspended customer), and a rollout must not start it.
    pub fn is_running(&self) -> bool {
        matches!(self.state.as_str(), "running" | "paused" | "restarting")
    }
}

/// One container of a stack tenant: the service it is, and its labels.
#[derive(Debug, Clone, Serialize)]
pub struct StackMember {
    /// Its service (the stack's service label).
    pub service: String,
    /// Every label it carries.
    pub labels: BTreeMap<String, String>,
    /// The container.
    pub container: TenantContainer,
}

/// A container that matches an app's `select` but cannot be mapped to one tenant.
#[derive(Debug, Clone, Serialize)]
pub struct Unmapped {
    /// Container name.
    pub container: String,
    /// The tenant it maps to, when that is known.
    pub tenant: Option<String>,
    /// Why it was skipped, and what to fix.
    pub reason: String,
}

/// A container as `init` inventories the host: what it runs and what it carries, read from
/// the engine and never changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HostContainer {
    /// Container name (without the leading '/').
    pub name: String,
    /// Running (or paused or restarting): the containers `init` groups into apps.
    pub running: bool,
    /// The image reference it was created from (`Config.Image`): `repo:tag`, `repo@sha256:…`
    /// or an image id.
    pub image_ref: String,
    /// The id of the image it runs.
    pub image_id: String,
    /// That image's `RepoTags`.
    pub repo_tags: Vec<String>,
    /// That image's `RepoDigests` (`repo@sha256:…`): what a registry knows it as.
    pub repo_digests: Vec<String>,
    /// That image's own labels (a container label with the same value came from the image,
    /// not from the operator, and changes with the next image).
    pub image_labels: std::collections::BTreeMap<String, String>,
    /// Its labels.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Its bind mounts, and its named volumes of the local driver as binds of their
    /// mountpoints (running containers only).
    pub binds: Vec<Bind>,
    /// The container paths of its other volumes: anonymous ones, other drivers' (running
    /// containers only).
    pub volumes: Vec<String>,
    /// The container paths of its tmpfs mounts (running containers only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tmpfs: Vec<String>,
    /// The container paths of its binds and volumes mounted read-only (running containers
    /// only): never data a rollout could change.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read_only: Vec<String>,
    /// The TCP ports it exposes, sorted (running containers only).
    pub exposed_ports: Vec<u16>,
    /// The networks it is on, sorted.
    pub networks: Vec<String>,
}

/// A bind mount: a host path mounted into a container.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Bind {
    /// The host path.
    pub source: String,
    /// The path inside the container.
    pub destination: String,
}

/// The engine's version, and the API version the client speaks with it.
#[derive(Debug, Clone, Serialize)]
pub struct EngineVersion {
    /// The engine's release (`24.0.7`).
    pub version: String,
    /// The newest API version the engine speaks (`1.43`).
    pub api_version: String,
    /// The API version negotiated for this client.
    pub negotiated: String,
}

/// The state of a container, as the health gate needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunState {
    /// Running (not restarting).
    pub running: bool,
    /// The engine is restarting it.
    pub restarting: bool,
    /// Paused.
    pub paused: bool,
    /// Times restarted.
    pub restart_count: i64,
    /// Last exit code.
    pub exit_code: i64,
    /// Status word.
    pub status: String,
    /// The image's HEALTHCHECK verdict (`starting`, `healthy`, `unhealthy`); empty without one.
    pub health: String,
}

/// What is needed to recreate a container on another image: its full inspect, and the
/// config of the image it was created from (to tell operator settings from image defaults).
#[derive(Clone)]
pub struct ContainerSpec {
    inspect: ContainerInspectResponse,
    image_config: ImageConfig,
}

/// What a drill's throw-away container gets instead of the tenant's own settings.
pub struct DrillSpec<'a> {
    /// Its name.
    pub name: &'a str,
    /// The only network it joins (internal, the drill's own).
    pub network: &'a str,
    /// Its one alias there (a stack's service name, by which its peers find it); none for a
    /// single container.
    pub alias: Option<&'a str>,
    /// The tenant's data mounts it has, each pointed at its restored copy: exactly one for a
    /// single container; for a service of a stack, the data mounts it mounts (maybe none).
    pub data: Vec<DrillData<'a>>,
    /// Labels of the drill's own (the run id, the tenant).
    pub labels: BTreeMap<String, String>,
    /// Whether a label key must not reach the container (routing labels, the app's select label).
    pub strip: &'a (dyn Fn(&str) -> bool + Sync),
}

/// One data mount of a drill's container and the restored copy that stands in for it.
#[derive(Debug, Clone, Copy)]
pub struct DrillData<'a> {
    /// The tenant's data dir (a bind's host dir, or a volume's mountpoint): its bind is pointed
    /// at `scratch` instead.
    pub data_dir: &'a std::path::Path,
    /// The named volume holding the data, when it is one: its mount is replaced by a bind of
    /// `scratch` (never the live volume).
    pub data_volume: Option<&'a str>,
    /// The restored copy.
    pub scratch: &'a std::path::Path,
}

/// How a drill's container differs from the tenant's, for the report.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct DrillChanges {
    /// The tenant's label keys it does not carry (values are never reported: they can be secrets).
    pub labels_stripped: Vec<String>,
    /// Image labels that route traffic, overridden with an empty value (an image label cannot be
    /// removed from a container).
    pub image_labels_blanked: Vec<String>,
    /// The tenant's networks it does not join.
    pub networks_left: Vec<String>,
    /// The tenant's writable mounts besides its data dir, not mounted (they hold live data).
    pub mounts_left: Vec<String>,
    /// The tenant's published ports, not published.
    pub ports_unpublished: Vec<String>,
    /// The tenant's restart policy, replaced by `no`.
    pub restart_replaced: String,
}

/// How a hook's container ended.
#[derive(Debug, Clone)]
pub struct HookRun {
    /// Its exit code; none when it was killed for its timeout or the engine did not say.
    pub exit: Option<i64>,
    /// Killed after its `timeout_s`.
    pub timed_out: bool,
    /// Its last log lines.
    pub tail: String,
}

fn derr(op: impl std::fmt::Display, container: Option<&str>, e: bollard::errors::Error) -> Error {
    Error::Docker { op: op.to_string(), container: container.map(str::to_string), source: Some(e) }
}

/// A Docker error without an engine error behind it.
fn refused(op: String, container: Option<&str>) -> Error {
    Error::Docker { op, container: container.map(str::to_string), source: None }
}

fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { status_code: 404, .. })
}

impl Engine {
    /// Connect to the engine named in the host config (else `$DOCKER_HOST`, else the local
    /// socket) and negotiate the API version.
    pub async fn connect(cfg: &DockerConfig) -> Result<Engine> {
        let docker = match &cfg.host {
            Some(h) => Docker::connect_with_host(h),
            None => Docker::connect_with_defaults(),
        }
        .map_err(|e| derr("cannot connect to the Docker engine", None, e))?;
        let docker = docker
            .with_timeout(Duration::from_secs(CLIENT_TIMEOUT_S))
            .negotiate_version()
            .await
            .map_err(|e| derr("cannot reach the Docker engine (is dockerd running?)", None, e))?;
        Ok(Engine { docker })
    }

    /// [`Engine::connect`], waiting up to `budget` for an engine that does not answer yet
    /// (dockerd restarting): for `recover`, which must not give up on a tenant left down.
    pub async fn connect_within(cfg: &DockerConfig, budget: Duration) -> Result<Engine> {
        let deadline = tokio::time::Instant::now() + budget;
        loop {
            match Engine::connect(cfg).await {
                Err(e) if e.engine_unreachable() && tokio::time::Instant::now() < deadline => {
                    tracing::warn!("{e}; waiting for the Docker engine (up to {} s in all)", budget.as_secs());
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                r => return r,
            }
        }
    }

    /// The engine client, for an adapter that drives one more of its APIs (`postgres`: exec).
    pub(crate) fn client(&self) -> &Docker {
        &self.docker
    }

    /// Wait until the engine answers a ping, up to `budget`; whether it did.
    pub async fn wait_ready(&self, budget: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + budget;
        loop {
            if self.docker.ping().await.is_ok() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The engine's version and the negotiated API version.
    pub async fn version(&self) -> Result<EngineVersion> {
        let v = self.docker.version().await.map_err(|e| derr("asking the engine for its version", None, e))?;
        let c = self.docker.client_version();
        Ok(EngineVersion {
            version: v.version.unwrap_or_default(),
            api_version: v.api_version.unwrap_or_default(),
            negotiated: format!("{}.{}", c.major_version, c.minor_version),
        })
    }

    /// The dir the engine keeps its named volumes in (`<DockerRootDir>/volumes`).
    pub async fn volumes_dir(&self) -> Result<std::path::PathBuf> {
        let i = self.docker.info().await.map_err(|e| derr("asking the engine for its root dir", None, e))?;
        let root = i.docker_root_dir.filter(|r| !r.is_empty()).unwrap_or_else(|| "/var/lib/docker".into());
        Ok(std::path::PathBuf::from(root).join("volumes"))
    }

    /// Every container on the host (running or not), with its image's tags and repo digests;
    /// mounts and exposed ports for the running ones. Sorted by name. Read only.
    pub async fn inventory(&self) -> Result<Vec<HostContainer>> {
        let opts = ListContainersOptionsBuilder::default().all(true).build();
        let list = self.docker.list_containers(Some(opts)).await.map_err(|e| derr("listing containers", None, e))?;
        type ImageNames = (Vec<String>, Vec<String>, std::collections::BTreeMap<String, String>);
        let mut images: HashMap<String, ImageNames> = HashMap::new();
        let mut out = Vec::new();
        for c in list {
            let Some(name) = c.names.as_ref().and_then(|n| n.first()).map(|n| n.trim_start_matches('/').to_string())
            else {
                continue;
            };
            let running = matches!(
                c.state,
                Some(
                    bollard::models::ContainerSummaryStateEnum::RUNNING
                        | bollard::models::ContainerSummaryStateEnum::PAUSED
                        | bollard::models::ContainerSummaryStateEnum::RESTARTING
                )
            );
            let image_id = c.image_id.clone().unwrap_or_default();
            if !images.contains_key(&image_id) {
                let found = match self.docker.inspect_image(&image_id).await {
                    Ok(i) => (
                        i.repo_tags.unwrap_or_default(),
                        i.repo_digests.unwrap_or_default(),
                        i.config.and_then(|c| c.labels).unwrap_or_default().into_iter().collect(),
                    ),
                    Err(e) if is_not_found(&e) => Default::default(),
                    Err(e) => return Err(derr(format!("inspecting image {image_id}"), None, e)),
                };
                images.insert(image_id.clone(), found);
            }
            let (repo_tags, repo_digests, image_labels) = images.get(&image_id).cloned().unwrap_or_default();
            let mut networks: Vec<String> =
                c.network_settings.and_then(|n| n.networks).unwrap_or_default().into_keys().collect();
            networks.sort();
            let mut h = HostContainer {
                name,
                running,
                image_ref: c.image.clone().unwrap_or_default(),
                image_id,
                repo_tags,
                repo_digests,
                image_labels,
                labels: c.labels.unwrap_or_default().into_iter().collect(),
                networks,
                ..Default::default()
            };
            if running {
                // A container removed since the list is simply not there any more.
                let i = match self.docker.inspect_container(&h.name, None).await {
                    Ok(i) => i,
                    Err(e) if is_not_found(&e) => continue,
                    Err(e) => return Err(derr(format!("inspecting container {}", h.name), Some(&h.name), e)),
                };
                let tmpfs = i.host_config.as_ref().and_then(|h| h.tmpfs.as_ref());
                h.tmpfs.extend(tmpfs.into_iter().flat_map(|t| t.keys().cloned()));
                for m in i.mounts.unwrap_or_default() {
                    let dest = m.destination.unwrap_or_default();
                    if m.rw == Some(false) {
                        h.read_only.push(dest.clone());
                    }
                    match m.typ.as_deref() {
                        Some("bind") => h.binds.push(Bind { source: m.source.unwrap_or_default(), destination: dest }),
                        // A named volume of the local driver is a dir on this host: offered
                        // as a data dir like a bind of its mountpoint (`data_volume`).
                        Some("volume")
                            if m.driver.as_deref() == Some("local")
                                && m.source.as_deref().is_some_and(|s| !s.is_empty())
                                && m.name
                                    .as_deref()
                                    .is_some_and(|n| !(n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()))) =>
                        {
                            h.binds.push(Bind { source: m.source.unwrap_or_default(), destination: dest })
                        }
                        Some("volume") => h.volumes.push(dest),
                        Some("tmpfs") => h.tmpfs.push(dest),
                        _ => {}
                    }
                }
                h.binds.sort();
                h.volumes.sort();
                h.tmpfs.sort();
                h.tmpfs.dedup();
                h.read_only.sort();
                let ports = i.config.and_then(|c| c.exposed_ports).unwrap_or_default();
                h.exposed_ports = ports.iter().filter_map(|p| p.strip_suffix("/tcp")?.parse().ok()).collect();
                h.exposed_ports.sort_unstable();
                h.exposed_ports.dedup();
            }
            out.push(h);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Every container (running or not) of `app`, by tenant, sorted by tenant id; those that
    /// cannot be mapped to one tenant are left out (see [`Engine::tenants_and_unmapped`]).
    pub async fn tenants(&self, app: &App) -> Result<Vec<TenantContainer>> {
        let (tenants, unmapped) = self.tenants_and_unmapped(app).await?;
        for u in unmapped {
            tracing::warn!(app = %app.name, container = %u.container, "not a tenant: {}", u.reason);
        }
        Ok(tenants)
    }

    /// Every container (running or not) of `app`, by tenant, sorted by tenant id, and the
    /// containers `select` matches that map to no tenant (a name `tenant_from` does not
    /// match, an invalid tenant id, two containers of one tenant): one odd container never
    /// stops the fleet. Containers a rollout set aside or staged ([`crate::naming::is_set_aside`])
    /// and a drill's throw-away containers ([`crate::naming::is_drill`]) are neither.
    pub async fn tenants_and_unmapped(&self, app: &App) -> Result<(Vec<TenantContainer>, Vec<Unmapped>)> {
        // A stack's tenant is several containers: a job that takes one container per tenant
        // must not see a stack at all (it would skip every tenant, silently).
        if app.stack.is_some() {
            return Err(Error::Usage(format!(
                "app \"{}\" is a stack ([app.services]): this command takes one container per tenant and does not \
                 handle stack tenants (rollout, rollback, reconcile, recover, snapshot, restore, drill, status, \
                 doctor and init do), so nothing was done for it",
                app.name
            )));
        }
        let mut filters = HashMap::new();
        if let Some(label) = app.select.label_filter() {
            filters.insert("label".to_string(), vec![label]);
        }
        let opts = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
        let list = self
            .docker
            .list_containers(Some(opts))
            .await
            .map_err(|e| derr(format!("listing containers of app \"{}\"", app.name), None, e))?;
        let mut out = Vec::new();
        let mut unmapped = Vec::new();
        for c in list {
            let Some(name) = c.names.as_ref().and_then(|n| n.first()).map(|n| n.trim_start_matches('/').to_string())
            else {
                continue;
            };
            if crate::naming::is_set_aside(&name) || crate::naming::is_drill(&name) || !app.select.name_matches(&name) {
                continue;
            }
            let labels = c.labels.clone().unwrap_or_default();
            let Some(tenant) = app.tenant_from.tenant_of(&name, &labels) else {
                let reason = format!(
                    "matches select \"{}\" but tenant_from \"{}\" gives no tenant id for it; rename or relabel it, \
                     or narrow select",
                    app.select, app.tenant_from
                );
                unmapped.push(Unmapped { container: name, tenant: None, reason });
                continue;
            };
            let tenant: TenantId = match tenant.parse() {
                Ok(t) => t,
                Err(e) => {
                    let reason = format!("tenant_from \"{}\" gives an invalid tenant id: {e}", app.tenant_from);
                    unmapped.push(Unmapped { container: name, tenant: None, reason });
                    continue;
                }
            };
            out.push(self.tenant_container(c, name, tenant).await?);
        }
        out.sort_by(|a, b| a.tenant.cmp(&b.tenant));
        // Two containers of one tenant: which one holds the tenant is a person's call.
        let mut dup: Vec<TenantId> =
            out.windows(2).filter(|w| w[0].tenant == w[1].tenant).map(|w| w[0].tenant.clone()).collect();
        dup.dedup();
        for t in dup {
            let names: Vec<String> = out.iter().filter(|c| c.tenant == t).map(|c| c.name.clone()).collect();
            for n in &names {
                let reason = format!(
                    "tenant {t} maps to several containers ({}); remove or relabel all but one",
                    names.join(", ")
                );
                unmapped.push(Unmapped { container: n.clone(), tenant: Some(t.to_string()), reason });
            }
            out.retain(|c| c.tenant != t);
        }
        Ok((out, unmapped))
    }

    /// One listed container as a tenant's container (one inspect, for `AutoRemove`).
    async fn tenant_container(
        &self,
        c: bollard::models::ContainerSummary,
        name: String,
        tenant: TenantId,
    ) -> Result<TenantContainer> {
        let image_ref = c.image.clone().unwrap_or_default();
        let labels: BTreeMap<String, String> = c.labels.clone().unwrap_or_default().into_iter().collect();
        let digest = match digest_of_ref(&image_ref) {
            Some(d) => Some(d),
            None => self.image_digest(c.image_id.as_deref().unwrap_or(&image_ref), &image_ref).await?,
        };
        let mut networks: Vec<String> =
            c.network_settings.and_then(|n| n.networks).unwrap_or_default().into_keys().collect();
        networks.sort();
        let id = c.id.unwrap_or_default();
        // The list does not carry AutoRemove; one inspect does (a container removed since
        // the list does not auto-remove any more).
        let auto_remove = match self.docker.inspect_container(&id, None).await {
            Ok(i) => i.host_config.and_then(|h| h.auto_remove).unwrap_or(false),
            Err(e) if is_not_found(&e) => false,
            Err(e) => return Err(derr(format!("inspecting container {name}"), Some(&name), e)),
        };
        Ok(TenantContainer {
            tenant,
            name,
            id,
            image_ref,
            digest,
            state: c.state.map(|s| s.to_string()).unwrap_or_default(),
            networks,
            network_mode: c.host_config.and_then(|h| h.network_mode).unwrap_or_default(),
            mounts: c.mounts.unwrap_or_default().into_iter().map(tenant_mount).collect(),
            auto_remove,
            labels,
        })
    }

    /// Every container of a stack app (`[app.services]`), with its service (from the stack's
    /// service label) and labels: the containers `select` matches, grouped into tenants by
    /// `tenant_from` (default: the stack's group label). A container that gives no tenant or no
    /// service is returned as unmapped, with the reason; set-aside, staged and drill containers
    /// are never members.
    pub async fn stack_members(&self, app: &App, stack: &Stack) -> Result<(Vec<StackMember>, Vec<Unmapped>)> {
        let mut filters = HashMap::new();
        if let Some(label) = app.select.label_filter() {
            filters.insert("label".to_string(), vec![label]);
        }
        let opts = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
        let list = self
            .docker
            .list_containers(Some(opts))
            .await
            .map_err(|e| derr(format!("listing containers of app \"{}\"", app.name), None, e))?;
        let mut out = Vec::new();
        let mut unmapped = Vec::new();
        for c in list {
            let Some(name) = c.names.as_ref().and_then(|n| n.first()).map(|n| n.trim_start_matches('/').to_string())
            else {
                continue;
            };
            if crate::naming::is_set_aside(&name) || crate::naming::is_drill(&name) || !app.select.name_matches(&name) {
                continue;
            }
            let labels: BTreeMap<String, String> = c.labels.clone().unwrap_or_default().into_iter().collect();
            let hl: HashMap<String, String> = labels.clone().into_iter().collect();
            let tenant = app.tenant_from.tenant_of(&name, &hl).map(|t| t.parse::<TenantId>());
            let tenant = match tenant {
                Some(Ok(t)) => t,
                Some(Err(e)) => {
                    let reason = format!("tenant_from \"{}\" gives an invalid tenant id: {e}", app.tenant_from);
                    unmapped.push(Unmapped { container: name, tenant: None, reason });
                    continue;
                }
                None => {
                    let reason = format!(
                        "matches select \"{}\" but tenant_from \"{}\" gives no tenant id for it; label it, or \
                         narrow select",
                        app.select, app.tenant_from
                    );
                    unmapped.push(Unmapped { container: name, tenant: None, reason });
                    continue;
                }
            };
            let Some(service) = labels.get(&stack.service_label).cloned() else {
                let reason = format!(
                    "it has no label {} naming its service, so it is no service of tenant {tenant}'s stack",
                    stack.service_label
                );
                unmapped.push(Unmapped { container: name, tenant: Some(tenant.to_string()), reason });
                continue;
            };
            let container = self.tenant_container(c, name, tenant).await?;
            out.push(StackMember { service, labels, container });
        }
        out.sort_by(|a, b| (&a.container.tenant, &a.service).cmp(&(&b.container.tenant, &b.service)));
        Ok((out, unmapped))
    }

    /// The repo digest of an image id whose repository matches `reference`'s.
    async fn image_digest(&self, image: &str, reference: &str) -> Result<Option<Digest>> {
        let repo = repo_of(reference);
        match self.docker.inspect_image(image).await {
            Ok(i) => Ok(i
                .repo_digests
                .unwrap_or_default()
                .iter()
                .filter_map(|rd| rd.split_once('@'))
                .find(|(r, _)| *r == repo)
                .and_then(|(_, d)| d.parse().ok())),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(derr(format!("inspecting image {image}"), None, e)),
        }
    }

    /// Pull the pinned image and check that what the engine has is that digest.
    pub async fn pull(&self, image: &PinnedImage) -> Result<()> {
        let opts = CreateImageOptionsBuilder::default().from_image(&image.reference()).build();
        let mut stream = self.docker.create_image(Some(opts), None, None);
        while let Some(item) = stream.next().await {
            if let Err(e) = item {
                return Err(derr(
                    format!("pulling {image} failed; check that the registry has this digest (nothing was changed)"),
                    None,
                    e,
                ));
            }
        }
        let found = self.image_digest(&image.reference(), &image.reference()).await?;
        if found.as_ref() != Some(image.digest()) {
            return Err(refused(
                format!(
                    "pulled {image} but the engine reports digest {}; refusing to roll out (nothing was changed)",
                    found.map_or("none".to_string(), |d| d.to_string())
                ),
                None,
            ));
        }
        Ok(())
    }

    /// The id (`sha256:…`) of the image `reference` names on this engine, if it has it.
    pub async fn image_id(&self, reference: &str) -> Result<Option<String>> {
        match self.docker.inspect_image(reference).await {
            Ok(i) => Ok(i.id),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(derr(format!("inspecting image {reference}"), None, e)),
        }
    }

    /// A reference that names exactly the image `id` on this engine, to recreate a container
    /// it ran: `reference` (what the container was created from) while it still names that
    /// image; else `repo@digest`, present or pulled back by its digest; else the id itself,
    /// while the engine still has the image under another name or none. A tag moved or pruned
    /// since never yields another image. Err when the engine has no such image and it cannot be
    /// pulled back by its digest.
    pub async fn image_ref_for(&self, reference: &str, id: &str, digest: Option<&str>) -> Result<String> {
        if self.image_id(reference).await?.as_deref() == Some(id) {
            return Ok(reference.to_string());
        }
        let pinned = digest.and_then(|d| format!("{}@{d}", repo_of(reference)).parse::<PinnedImage>().ok());
        let short: String = id.trim_start_matches("sha256:").chars().take(12).collect();
        let pulled = match &pinned {
            Some(img) => {
                if self.image_id(&img.reference()).await?.as_deref() == Some(id) {
                    return Ok(img.reference());
                }
                match self.pull(img).await {
                    Ok(()) if self.image_id(&img.reference()).await?.as_deref() == Some(id) => {
                        return Ok(img.reference())
                    }
                    Ok(()) => format!("{img} was pulled but is not image {short}"),
                    Err(e) => format!("pulling it back by its digest failed: {e}"),
                }
            }
            None => "its digest is not known, so it cannot be pulled back".to_string(),
        };
        if self.image_id(id).await?.is_some() {
            return Ok(id.to_string());
        }
        Err(refused(format!("the image {reference} (id {short}) is gone from the engine and {pulled}"), None))
    }

    /// The container paths the image `reference` declares as `VOLUME`s, sorted.
    pub async fn image_volumes(&self, reference: &str) -> Result<Vec<String>> {
        let i = self
            .docker
            .inspect_image(reference)
            .await
            .map_err(|e| derr(format!("inspecting image {reference}"), None, e))?;
        let mut v: Vec<String> = i.config.and_then(|c| c.volumes).unwrap_or_default().into_iter().collect();
        v.sort();
        Ok(v)
    }

    /// Whether a container with this name or id exists.
    pub async fn exists(&self, name: &str) -> Result<bool> {
        match self.docker.inspect_container(name, None).await {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(derr(format!("inspecting container {name}"), Some(name), e)),
        }
    }

    /// The id of a container by name, if it exists.
    pub async fn id_of(&self, name: &str) -> Result<Option<String>> {
        match self.docker.inspect_container(name, None).await {
            Ok(i) => Ok(i.id),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(derr(format!("inspecting container {name}"), Some(name), e)),
        }
    }

    async fn inspect(&self, name: &str) -> Result<ContainerInspectResponse> {
        self.docker
            .inspect_container(name, None)
            .await
            .map_err(|e| derr(format!("inspecting container {name}"), Some(name), e))
    }

    /// The state of a container.
    pub async fn state(&self, name: &str) -> Result<RunState> {
        Ok(run_state(&self.inspect(name).await?))
    }

    /// The container's IP address on `network`, else on its only network. Ok(Err(why)) when
    /// there is none to use: no address yet, not on that network, or several networks and no
    /// `network` (never a guess: the wrong network can answer for another service).
    pub async fn ip(&self, name: &str, network: Option<&str>) -> Result<std::result::Result<IpAddr, String>> {
        Ok(ip_of(self.inspect(name).await?, network))
    }

    /// [`Engine::state`] and [`Engine::ip`] from one inspect: what each poll of a health gate
    /// needs, in one engine call.
    pub async fn state_and_ip(
        &self,
        name: &str,
        network: Option<&str>,
    ) -> Result<(RunState, std::result::Result<IpAddr, String>)> {
        let i = self.inspect(name).await?;
        Ok((run_state(&i), ip_of(i, network)))
    }

    /// Stop with `timeout_s` before SIGKILL. Stopping a stopped container is fine.
    pub async fn stop(&self, name: &str, timeout_s: u64) -> Result<()> {
        let opts = StopContainerOptionsBuilder::default().t(timeout_s.min(i32::MAX as u64) as i32).build();
        // The engine waits up to the stop timeout before it answers: allow for it.
        let docker = self.docker.clone().with_timeout(Duration::from_secs(CLIENT_TIMEOUT_S + timeout_s));
        match docker.stop_container(name, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 304, .. }) => Ok(()),
            Err(e) => Err(derr(format!("stopping container {name}"), Some(name), e)),
        }
    }

    /// Start. Starting a running container is fine.
    pub async fn start(&self, name: &str) -> Result<()> {
        match self.docker.start_container(name, None).await {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 304, .. }) => Ok(()),
            Err(e) => Err(derr(format!("starting container {name}"), Some(name), e)),
        }
    }

    /// Rename a container.
    pub async fn rename(&self, from: &str, to: &str) -> Result<()> {
        let opts = RenameContainerOptionsBuilder::default().name(to).build();
        self.docker
            .rename_container(from, opts)
            .await
            .map_err(|e| derr(format!("renaming container {from} to {to}"), Some(from), e))
    }

    /// Force-remove a container (its volumes are kept). Removing a missing one is fine.
    pub async fn remove(&self, name: &str) -> Result<()> {
        let opts = RemoveContainerOptionsBuilder::default().force(true).build();
        match self.docker.remove_container(name, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(derr(format!("removing container {name}"), Some(name), e)),
        }
    }

    /// `docker pause`.
    pub async fn pause(&self, name: &str) -> Result<()> {
        self.docker.pause_container(name).await.map_err(|e| derr(format!("pausing container {name}"), Some(name), e))
    }

    /// `docker unpause`; unpausing a container that is not paused is fine.
    pub async fn unpause(&self, name: &str) -> Result<()> {
        match self.docker.unpause_container(name).await {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 409, .. }) => Ok(()),
            Err(e) => Err(derr(format!("unpausing container {name}"), Some(name), e)),
        }
    }

    /// Read what is needed to recreate `name` on another image.
    pub async fn spec(&self, name: &str) -> Result<ContainerSpec> {
        let inspect = self.inspect(name).await?;
        let image_id = inspect.image.clone().unwrap_or_default();
        let image = self.docker.inspect_image(&image_id).await.map_err(|e| {
            let op = format!(
                "container {name}: its image {image_id} is gone from the engine, so its settings cannot be told \
                 from the image's defaults"
            );
            derr(op, Some(name), e)
        })?;
        Ok(ContainerSpec { inspect, image_config: image.config.unwrap_or_default() })
    }

    /// Create a container named `name` from `spec` on `image`, connected to all of the old
    /// container's networks with their aliases, not started. Returns its id.
    pub async fn create_from(&self, name: &str, spec: &ContainerSpec, image: &str) -> Result<String> {
        let (body, extra_networks) = spec.create_body(image);
        self.create_body_named(name, body, extra_networks, image).await
    }

    async fn create_body_named(
        &self,
        name: &str,
        body: ContainerCreateBody,
        extra_networks: Vec<(String, EndpointSettings)>,
        image: &str,
    ) -> Result<String> {
        let opts = CreateContainerOptionsBuilder::default().name(name).build();
        let created = self
            .docker
            .create_container(Some(opts), body)
            .await
            .map_err(|e| derr(format!("creating container {name} from {image}"), Some(name), e))?;
        // API < 1.44 accepts one network at create; the others are connected before start.
        for (net, endpoint) in extra_networks {
            let req = NetworkConnectRequest { container: created.id.clone(), endpoint_config: Some(endpoint) };
            if let Err(e) = self.docker.connect_network(&net, req).await {
                let _ = self.remove(&created.id).await;
                return Err(derr(format!("connecting container {name} to network {net}"), Some(name), e));
            }
        }
        Ok(created.id)
    }

    /// Stage the new container before the prior one stops: [`Engine::create_from`] under the
    /// staging name `name`, with everything final — the tenant's aliases on each network and
    /// its restart policy —, so that once the prior one is stopped only renames are left
    /// before the start. Returns its id.
    ///
    /// Created and never started, it can neither be reached nor start by itself meanwhile:
    /// - the embedded DNS answers a name or an alias only for a container that runs (a created
    ///   one has no endpoint on its networks, nor an address), so the tenant's aliases keep
    ///   resolving to the prior container alone;
    /// - on a daemon restart the engine starts only containers that were started before
    ///   (moby's `restore()`: `AutoRestart && ShouldRestart() && HasBeenStartedBefore`), and
    ///   the restart manager acts only on a container that exits: a restart policy cannot start
    ///   it beside the prior one on the same data;
    /// - its labels are set, but label-driven routers (Traefik's Docker provider) route running
    ///   containers only.
    pub async fn create_staged(&self, name: &str, spec: &ContainerSpec, image: &str) -> Result<String> {
        self.create_from(name, spec, image).await
    }

    /// Rename the container `id` from `from` to `to`. A rename already done (its answer lost:
    /// `from` is gone and `to` is that container) is fine.
    pub async fn rename_id(&self, id: &str, from: &str, to: &str) -> Result<()> {
        match self.rename(from, to).await {
            Ok(()) => Ok(()),
            Err(e) => match (self.id_of(from).await?, self.id_of(to).await?) {
                (None, Some(now)) if now == id => Ok(()),
                _ => Err(e),
            },
        }
    }

    /// Run a hook (`[app.hooks]`) to its end in a one-shot container named `name` made from
    /// the tenant's `spec` on `image` ([`ContainerSpec::hook_body`]): created, started, waited
    /// for at most `hook.timeout_s` (then killed), its last log lines read, removed whatever
    /// happened. A container of that name left by an earlier, killed run is removed first.
    pub async fn run_hook(
        &self,
        name: &str,
        spec: &ContainerSpec,
        image: &str,
        hook: &crate::config::HookSpec,
        env: Vec<String>,
    ) -> Result<HookRun> {
        let _ = self.remove(name).await;
        let (body, extra) = spec.hook_body(image, hook, env);
        self.create_body_named(name, body, extra, image).await?;
        let r = self.wait_hook(name, hook.timeout_s).await;
        let tail = self.log_tail(name, 20).await;
        let _ = self.remove(name).await;
        let (exit, timed_out) = r?;
        Ok(HookRun { exit, timed_out, tail })
    }

    async fn wait_hook(&self, name: &str, timeout_s: u64) -> Result<(Option<i64>, bool)> {
        self.start(name).await?;
        // The wait is one long request: the client's own timeout must outlast the hook's.
        let docker = self.docker.clone().with_timeout(Duration::from_secs(CLIENT_TIMEOUT_S + timeout_s));
        let mut wait = docker.wait_container(name, None::<bollard::query_parameters::WaitContainerOptions>);
        match tokio::time::timeout(Duration::from_secs(timeout_s), wait.next()).await {
            Ok(Some(Ok(w))) => Ok((Some(w.status_code), false)),
            Ok(Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. }))) => Ok((Some(code), false)),
            Ok(Some(Err(e))) => Err(derr(format!("waiting for hook container {name}"), Some(name), e)),
            Ok(None) => Ok((None, false)),
            Err(_) => {
                let _ = self.docker.kill_container(name, None::<bollard::query_parameters::KillContainerOptions>).await;
                Ok((None, true))
            }
        }
    }

    /// The last `n` lines a container wrote (stdout and stderr), for a report.
    async fn log_tail(&self, name: &str, n: usize) -> String {
        let opts = bollard::query_parameters::LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail(&n.to_string())
            .build();
        let mut logs = self.docker.logs(name, Some(opts));
        let mut out = String::new();
        while let Some(Ok(chunk)) = logs.next().await {
            out.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
            if out.len() > 4096 {
                break;
            }
        }
        out.trim_end().to_string()
    }

    /// Create a drill's throw-away container from the tenant's `spec` (not started): the
    /// tenant's own image and settings, changed as [`ContainerSpec::drill_body`] says.
    /// Ok(Err(why)) when the tenant's settings cannot be drilled safely (nothing was created).
    pub async fn create_drill(
        &self,
        spec: &ContainerSpec,
        drill: &DrillSpec<'_>,
    ) -> Result<std::result::Result<DrillChanges, String>> {
        let (body, changes) = match spec.drill_body(drill) {
            Ok(x) => x,
            Err(why) => return Ok(Err(why)),
        };
        let opts = CreateContainerOptionsBuilder::default().name(drill.name).build();
        self.docker
            .create_container(Some(opts), body)
            .await
            .map_err(|e| derr(format!("creating drill container {}", drill.name), Some(drill.name), e))?;
        Ok(Ok(changes))
    }

    /// Create a drill's scratch database container ([`ContainerSpec::drill_db_body`]) from the
    /// tenant's database container `db`, of `image` (an image id) when given, else of `db`'s.
    pub async fn create_drill_db(
        &self,
        db: &ContainerSpec,
        image: Option<&str>,
        name: &str,
        network: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<()> {
        let mut body = db.drill_db_body(name, network, labels);
        if let Some(i) = image {
            body.image = Some(i.to_string());
        }
        let opts = CreateContainerOptionsBuilder::default().name(name).build();
        self.docker
            .create_container(Some(opts), body)
            .await
            .map_err(|e| derr(format!("creating the drill's scratch database {name}"), Some(name), e))?;
        Ok(())
    }

    /// Create an `--internal` bridge network (no route off the host, no published ports)
    /// carrying `labels`. Returns its id.
    pub async fn create_internal_network(&self, name: &str, labels: &BTreeMap<String, String>) -> Result<String> {
        let req = NetworkCreateRequest {
            name: name.to_string(),
            driver: Some("bridge".into()),
            internal: Some(true),
            attachable: Some(false),
            labels: Some(labels.clone().into_iter().collect()),
            ..Default::default()
        };
        let created = self
            .docker
            .create_network(req)
            .await
            .map_err(|e| derr(format!("creating the internal network {name}"), None, e))?;
        Ok(created.id)
    }

    /// Remove a network. Removing a missing one is fine.
    pub async fn remove_network(&self, name: &str) -> Result<()> {
        match self.docker.remove_network(name).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(derr(format!("removing network {name}"), None, e)),
        }
    }

    /// Force-remove a container with its anonymous volumes (named volumes are never removed
    /// by the engine). Removing a missing one is fine.
    pub async fn remove_with_volumes(&self, name: &str) -> Result<()> {
        let opts = RemoveContainerOptionsBuilder::default().force(true).v(true).build();
        match self.docker.remove_container(name, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(derr(format!("removing container {name}"), Some(name), e)),
        }
    }

    /// Every container and every network carrying label `key`, as (name, the label's value),
    /// each list sorted.
    pub async fn labelled(&self, key: &str) -> Result<(Vec<(String, String)>, Vec<(String, String)>)> {
        let mut filters = HashMap::new();
        filters.insert("label".to_string(), vec![key.to_string()]);
        let opts = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
        let list = self
            .docker
            .list_containers(Some(opts))
            .await
            .map_err(|e| derr(format!("listing containers labelled {key}"), None, e))?;
        let mut containers: Vec<(String, String)> = list
            .into_iter()
            .filter_map(|c| {
                let name = c.names.as_ref()?.first()?.trim_start_matches('/').to_string();
                Some((name, c.labels.unwrap_or_default().remove(key).unwrap_or_default()))
            })
            .collect();
        containers.sort();
        let opts = ListNetworksOptionsBuilder::default().filters(&filters).build();
        let nets = self
            .docker
            .list_networks(Some(opts))
            .await
            .map_err(|e| derr(format!("listing networks labelled {key}"), None, e))?;
        let mut networks: Vec<(String, String)> = nets
            .into_iter()
            .filter_map(|n| Some((n.name?, n.labels.unwrap_or_default().remove(key).unwrap_or_default())))
            .collect();
        networks.sort();
        Ok((containers, networks))
    }

    /// The networks a container is connected to, and its labels (for checking a drill's
    /// container).
    pub async fn networks_and_labels(&self, name: &str) -> Result<(Vec<String>, BTreeMap<String, String>)> {
        let i = self.inspect(name).await?;
        let mut nets: Vec<String> =
            i.network_settings.and_then(|n| n.networks).unwrap_or_default().into_keys().collect();
        nets.sort();
        let labels = i.config.and_then(|c| c.labels).unwrap_or_default().into_iter().collect();
        Ok((nets, labels))
    }

    /// Set a container's restart policy (nothing else of it changes).
    pub async fn set_restart(&self, name: &str, restart: &Restart) -> Result<()> {
        let policy = match restart.name.as_str() {
            "" | "no" => RestartPolicyNameEnum::NO,
            "always" => RestartPolicyNameEnum::ALWAYS,
            "unless-stopped" => RestartPolicyNameEnum::UNLESS_STOPPED,
            "on-failure" => RestartPolicyNameEnum::ON_FAILURE,
            other => {
                let known = "no, always, unless-stopped, on-failure";
                return Err(Error::Docker {
                    op: format!("setting an unknown restart policy \"{other}\" (known: {known})"),
                    container: Some(name.to_string()),
                    source: None,
                });
            }
        };
        let retries = (policy == RestartPolicyNameEnum::ON_FAILURE).then_some(restart.max_retries);
        let body = ContainerUpdateBody {
            restart_policy: Some(RestartPolicy { name: Some(policy), maximum_retry_count: retries }),
            ..Default::default()
        };
        self.docker
            .update_container(name, body)
            .await
            .map_err(|e| derr(format!("setting the restart policy to {restart}"), Some(name), e))
    }

    /// Everything a container has (for checking a new container against the old one's
    /// operator settings).
    pub async fn actual_settings(&self, name: &str) -> Result<OperatorSettings> {
        Ok(self.spec(name).await?.actual_settings())
    }
}

/// The run state in an inspect.
fn run_state(i: &ContainerInspectResponse) -> RunState {
    let s = i.state.clone().unwrap_or_default();
    RunState {
        running: s.running.unwrap_or(false) && !s.restarting.unwrap_or(false),
        restarting: s.restarting.unwrap_or(false),
        paused: s.paused.unwrap_or(false),
        restart_count: i.restart_count.unwrap_or(0),
        exit_code: s.exit_code.unwrap_or(0),
        status: s.status.unwrap_or(ContainerStateStatusEnum::EMPTY).to_string(),
        health: s
            .health
            .and_then(|h| h.status)
            .map(|h| h.to_string())
            .filter(|h| !h.is_empty() && h != "none")
            .unwrap_or_default(),
    }
}

/// The address in an inspect, as [`Engine::ip`] chooses it.
fn ip_of(i: ContainerInspectResponse, network: Option<&str>) -> std::result::Result<IpAddr, String> {
    let nets = i.network_settings.and_then(|n| n.networks).unwrap_or_default();
    let mut names: Vec<&String> = nets.keys().collect();
    names.sort();
    let net = match network {
        Some(n) => match nets.get(n) {
            Some(ep) => (n.to_string(), ep),
            None => {
                let on: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
                return Err(format!("not on health.network \"{n}\" (its networks: {})", on.join(", ")));
            }
        },
        None if names.len() == 1 => (names[0].clone(), &nets[names[0]]),
        None if names.is_empty() => return Err("the container is on no network".into()),
        None => {
            let on: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
            return Err(format!("on several networks ({}); set health.network", on.join(", ")));
        }
    };
    net.1
        .ip_address
        .as_deref()
        .and_then(|ip| ip.parse().ok())
        .ok_or_else(|| format!("the container has no IP address on network {} (yet)", net.0))
}

/// A mount as the jobs see it: a volume by its name, a bind by its host path.
fn tenant_mount(m: bollard::models::MountPoint) -> TenantMount {
    let kind = m.typ.unwrap_or_default();
    let name = m.name.filter(|n| !n.is_empty());
    let host_path = m.source.clone().unwrap_or_default();
    let source = if kind == "volume" { name.or(m.source) } else { m.source.or(name) };
    TenantMount {
        kind,
        source: source.unwrap_or_default(),
        destination: m.destination.unwrap_or_default(),
        writable: m.rw.unwrap_or(true),
        host_path,
        driver: m.driver.unwrap_or_default(),
    }
}

/// `sha256:<hex>` of a label value: what the journal keeps instead of the value.
fn value_hash(value: &str) -> String {
    use sha2::{Digest as _, Sha256};
    let hash = Sha256::digest(value.as_bytes());
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// The repository of an image reference, without its tag or digest (`reg:5000/x/pulse:1.4` →
/// `reg:5000/x/pulse`).
fn repo_of(reference: &str) -> &str {
    let repo = reference.split('@').next().unwrap_or(reference);
    match repo.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => r,
        _ => repo,
    }
}

/// The digest in a `repo@sha256:…` reference.
pub fn digest_of_ref(reference: &str) -> Option<Digest> {
    reference.split_once('@').and_then(|(_, d)| d.parse().ok())
}

impl ContainerSpec {
    fn config(&self) -> ContainerConfig {
        self.inspect.config.clone().unwrap_or_default()
    }

    fn short_id(&self) -> String {
        self.inspect.id.as_deref().unwrap_or_default().chars().take(12).collect()
    }

    /// The container's networks, each with the aliases the operator gave (the engine adds the
    /// short container id as an alias; that one is not carried over).
    fn networks(&self) -> Vec<(String, EndpointSettings, Vec<String>)> {
        let short = self.short_id();
        self.inspect
            .network_settings
            .as_ref()
            .and_then(|n| n.networks.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|(net, mut ep)| {
                let aliases = ep.aliases.take().unwrap_or_default().into_iter().filter(|a| *a != short).collect();
                (net, ep, aliases)
            })
            .collect()
    }

    /// The addresses fixed for the container by its operator (`docker run --ip`), by network:
    /// a container created from this spec is given the same one when it starts.
    pub fn fixed_addresses(&self) -> Vec<(String, String)> {
        self.networks()
            .into_iter()
            .filter_map(|(net, ep, _)| {
                let c = ep.ipam_config?;
                let a = c.ipv4_address.filter(|a| !a.is_empty()).or(c.ipv6_address.filter(|a| !a.is_empty()))?;
                Some((net, a))
            })
            .collect()
    }

    /// The container's restart policy.
    pub fn restart(&self) -> Restart {
        let policy = self.inspect.host_config.as_ref().and_then(|h| h.restart_policy.clone()).unwrap_or_default();
        Restart {
            name: policy.name.map_or(String::new(), |n| n.to_string()),
            max_retries: policy.maximum_retry_count.unwrap_or(0),
        }
    }

    /// The container's id.
    pub fn id(&self) -> String {
        self.inspect.id.clone().unwrap_or_default()
    }

    /// The host paths the container can write to (its writable binds and volumes), as the
    /// engine reports them.
    pub fn writable_host_paths(&self) -> Vec<String> {
        self.tenant_mounts().filter(|m| m.writable && m.host_path.starts_with('/')).map(|m| m.host_path).collect()
    }

    /// What is mounted into the container, as the engine reports it.
    fn tenant_mounts(&self) -> impl Iterator<Item = TenantMount> {
        self.inspect.mounts.clone().unwrap_or_default().into_iter().map(tenant_mount)
    }

    /// This spec on another image (an image id): a drill's database service booted from the
    /// image its dump was taken with. The settings stay the container's, told from the image
    /// defaults of the image it runs now.
    pub fn on_image(mut self, image_id: &str) -> ContainerSpec {
        self.inspect.image = Some(image_id.to_string());
        self
    }

    /// The id (`sha256:…`) of the image the container runs.
    pub fn image_id(&self) -> String {
        self.inspect.image.clone().unwrap_or_default()
    }

    /// The image reference the container was created from.
    pub fn image_ref(&self) -> String {
        self.config().image.unwrap_or_default()
    }

    /// The container's name, without the leading '/'.
    pub fn name(&self) -> String {
        self.inspect.name.as_deref().unwrap_or_default().trim_start_matches('/').to_string()
    }

    /// What the operator set, with image defaults and engine-generated values removed.
    pub fn operator_settings(&self) -> OperatorSettings {
        self.settings(true)
    }

    /// Everything the container has (image defaults included): the side a check compares to.
    pub fn actual_settings(&self) -> OperatorSettings {
        self.settings(false)
    }

    fn settings(&self, strip_image_defaults: bool) -> OperatorSettings {
        let cfg = self.config();
        let empty = ImageConfig::default();
        let img = if strip_image_defaults { &self.image_config } else { &empty };
        let img_labels = img.labels.clone().unwrap_or_default();
        let labels = cfg
            .labels
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, v)| img_labels.get(k) != Some(v))
            .map(|(k, v)| (k, value_hash(&v)))
            .collect();
        let img_env: BTreeSet<String> = img.env.clone().unwrap_or_default().into_iter().collect();
        let env_keys = cfg
            .env
            .unwrap_or_default()
            .into_iter()
            .filter(|e| !img_env.contains(e))
            .map(|e| e.split_once('=').map_or(e.clone(), |(k, _)| k.to_string()))
            .collect();
        let networks =
            self.networks().into_iter().map(|(net, _, aliases)| (net, aliases.into_iter().collect())).collect();
        // A volume by its name, a bind by its host path: an anonymous volume carried to the
        // new container by name is the same mount.
        let mounts = self
            .tenant_mounts()
            .map(|m| format!("{}:{}:{}", m.source, m.destination, if m.writable { "rw" } else { "ro" }))
            .collect();
        OperatorSettings { name: self.name(), labels, networks, mounts, env_keys }
    }

    /// The volumes the container has that its create options do not name (an image's
    /// `VOLUME`, `-v /path`, `--mount type=volume` without a source), as (name, destination,
    /// read-only). Recreated as they were, they would come back as fresh, empty volumes.
    fn unnamed_volumes(&self) -> Vec<(String, String, bool)> {
        let host = self.inspect.host_config.clone().unwrap_or_default();
        // `source:destination[:options]`: the destination is the second field.
        let mut named: BTreeSet<String> =
            host.binds.unwrap_or_default().iter().filter_map(|b| b.split(':').nth(1).map(str::to_string)).collect();
        named.extend(
            host.mounts
                .unwrap_or_default()
                .into_iter()
                .filter(|m| m.source.as_deref().is_some_and(|s| !s.is_empty()))
                .filter_map(|m| m.target),
        );
        self.tenant_mounts()
            .filter(|m| m.kind == "volume" && !m.source.is_empty() && !named.contains(&m.destination))
            .map(|m| (m.source, m.destination, !m.writable))
            .collect()
    }

    /// The create body for the same container on `image`, and the networks to connect after
    /// create. Image defaults of the old image are dropped so the new image's defaults apply.
    fn create_body(&self, image: &str) -> (ContainerCreateBody, Vec<(String, EndpointSettings)>) {
        let cfg = self.config();
        let img = &self.image_config;
        let same = |a: &Option<Vec<String>>, b: &Option<Vec<String>>| {
            a.as_deref().unwrap_or_default() == b.as_deref().unwrap_or_default()
        };
        let drop_if_default = |v: Option<Vec<String>>, d: &Option<Vec<String>>| if same(&v, d) { None } else { v };
        let img_env: BTreeSet<String> = img.env.clone().unwrap_or_default().into_iter().collect();
        let env: Vec<String> =
            cfg.env.clone().unwrap_or_default().into_iter().filter(|e| !img_env.contains(e)).collect();
        let img_labels = img.labels.clone().unwrap_or_default();
        let labels: HashMap<String, String> =
            cfg.labels.clone().unwrap_or_default().into_iter().filter(|(k, v)| img_labels.get(k) != Some(v)).collect();
        let img_ports: BTreeSet<String> = img.exposed_ports.clone().unwrap_or_default().into_iter().collect();
        let ports: Vec<String> =
            cfg.exposed_ports.clone().unwrap_or_default().into_iter().filter(|p| !img_ports.contains(p)).collect();
        let img_vols: BTreeSet<String> = img.volumes.clone().unwrap_or_default().into_iter().collect();
        let vols: Vec<String> =
            cfg.volumes.clone().unwrap_or_default().into_iter().filter(|v| !img_vols.contains(v)).collect();
        let str_default = |v: Option<String>, d: &Option<String>| {
            if v.as_deref().unwrap_or_default() == d.as_deref().unwrap_or_default() {
                None
            } else {
                v
            }
        };
        let short = self.short_id();
        let hostname = cfg.hostname.clone().filter(|h| *h != short);
        let entrypoint_default = same(&cfg.entrypoint, &img.entrypoint);
        let cmd_default = same(&cfg.cmd, &img.cmd);
        // An operator entrypoint with the image's cmd: Docker had reset Cmd; keep what ran.
        let cmd = if cmd_default && entrypoint_default { None } else { cfg.cmd.clone() };
        let healthcheck = if cfg.healthcheck == img.healthcheck { None } else { cfg.healthcheck.clone() };

        let mut nets: Vec<(String, EndpointSettings)> = self
            .networks()
            .into_iter()
            .map(|(net, ep, aliases)| {
                let endpoint = EndpointSettings {
                    aliases: if aliases.is_empty() { None } else { Some(aliases) },
                    ipam_config: ep.ipam_config,
                    links: ep.links,
                    driver_opts: ep.driver_opts,
                    ..Default::default()
                };
                (net, endpoint)
            })
            .collect();
        let mut host = self.inspect.host_config.clone().unwrap_or_default();
        // Anonymous volumes go to the new container by name, at the same destination (as
        // Compose does): what they hold stays with the tenant.
        let unnamed = self.unnamed_volumes();
        if !unnamed.is_empty() {
            let mut mounts = host.mounts.take().unwrap_or_default();
            mounts.retain(|m| !unnamed.iter().any(|(_, dest, _)| m.target.as_ref() == Some(dest)));
            mounts.extend(unnamed.iter().map(|(name, dest, read_only)| Mount {
                target: Some(dest.clone()),
                source: Some(name.clone()),
                typ: Some(MountType::VOLUME),
                read_only: Some(*read_only),
                ..Default::default()
            }));
            host.mounts = Some(mounts);
        }
        let vols: Vec<String> = vols.into_iter().filter(|v| !unnamed.iter().any(|(_, dest, _)| dest == v)).collect();
        let mode = host.network_mode.clone().unwrap_or_default();
        // The network named by NetworkMode goes in the create call; the rest are connected after.
        nets.sort_by_key(|(n, _)| (n != &mode, n.clone()));
        let first: Vec<(String, EndpointSettings)> = nets.drain(..nets.len().min(1)).collect();
        let container_net_mode = mode.starts_with("container:") || mode == "host" || mode == "none";
        let networking_config = if first.is_empty() || container_net_mode {
            None
        } else {
            Some(NetworkingConfig { endpoints_config: Some(first.into_iter().collect()) })
        };
        let extra = if container_net_mode { Vec::new() } else { nets };

        let body = ContainerCreateBody {
            hostname,
            domainname: cfg.domainname.clone(),
            user: str_default(cfg.user.clone(), &img.user),
            attach_stdin: cfg.attach_stdin,
            attach_stdout: cfg.attach_stdout,
            attach_stderr: cfg.attach_stderr,
            exposed_ports: if ports.is_empty() { None } else { Some(ports) },
            tty: cfg.tty,
            open_stdin: cfg.open_stdin,
            stdin_once: cfg.stdin_once,
            env: if env.is_empty() { None } else { Some(env) },
            cmd,
            healthcheck,
            args_escaped: None,
            image: Some(image.to_string()),
            volumes: if vols.is_empty() { None } else { Some(vols) },
            working_dir: str_default(cfg.working_dir.clone(), &img.working_dir),
            entrypoint: drop_if_default(cfg.entrypoint.clone(), &img.entrypoint),
            network_disabled: cfg.network_disabled,
            on_build: None,
            labels: if labels.is_empty() { None } else { Some(labels) },
            stop_signal: str_default(cfg.stop_signal.clone(), &img.stop_signal),
            stop_timeout: cfg.stop_timeout,
            shell: drop_if_default(cfg.shell.clone(), &img.shell),
            host_config: Some(host),
            networking_config,
        };
        (body, extra)
    }
}

impl ContainerSpec {
    /// The create body of a hook's one-shot container: the container the tenant would run on
    /// `image` (its env, mounts, user, working dir, networks) with the hook's command (and
    /// entrypoint, if it gives one), `env` added, and nothing that would let anyone reach it as
    /// the tenant or keep it: no network alias, no published port, restart `no`, only the
    /// label naming it a hook (`traefik.enable=false`, so a router never routes to it).
    pub fn hook_body(
        &self,
        image: &str,
        hook: &crate::config::HookSpec,
        env: Vec<String>,
    ) -> (ContainerCreateBody, Vec<(String, EndpointSettings)>) {
        let (mut body, mut extra) = self.create_body(image);
        body.cmd = Some(hook.command.clone());
        if let Some(e) = &hook.entrypoint {
            body.entrypoint = Some(e.clone());
        }
        let mut all_env = body.env.take().unwrap_or_default();
        all_env.extend(env);
        body.env = Some(all_env);
        body.labels = Some(
            [("slipway.hook".to_string(), self.name()), ("traefik.enable".to_string(), "false".to_string())]
                .into_iter()
                .collect(),
        );
        body.healthcheck = None;
        body.exposed_ports = None;
        body.hostname = None;
        if let Some(h) = body.host_config.as_mut() {
            h.restart_policy = Some(RestartPolicy { name: Some(RestartPolicyNameEnum::NO), maximum_retry_count: None });
            h.port_bindings = None;
            h.publish_all_ports = Some(false);
            h.auto_remove = Some(false);
        }
        if let Some(n) = body.networking_config.as_mut() {
            for ep in n.endpoints_config.iter_mut().flat_map(|m| m.values_mut()) {
                ep.aliases = None;
            }
        }
        for (_, ep) in &mut extra {
            ep.aliases = None;
        }
        (body, extra)
    }

    /// The create body of a drill's throw-away container: the tenant's own image (by id, so
    /// exactly what runs) and operator settings — env, cmd, entrypoint, user, working dir,
    /// limits, read-only mounts — except: `drill.name`; only `drill.network`, with no alias of
    /// the tenant; the data dir's bind pointed at the scratch copy; no label `drill.strip`
    /// names (and image labels it names blanked, `traefik.enable=false` if any was traefik's);
    /// no published ports; restart policy `no`; no writable mount besides the data dir, no
    /// `volumes_from`, links or another container's namespaces. Err(why) when the tenant has
    /// no bind of its data dir (the drill could only run on live data).
    pub fn drill_body(
        &self,
        drill: &DrillSpec<'_>,
    ) -> std::result::Result<(ContainerCreateBody, DrillChanges), String> {
        let (body, changes, data_binds) = self.drill_body_binds(drill);
        if let Some((n, d)) = data_binds.iter().zip(&drill.data).find(|(n, _)| **n != 1) {
            return Err(format!(
                "container {} has {n} binds of its data dir {} (it needs exactly one, `-v {}:<path>`), so a \
                 restored copy cannot stand in for it; nothing was started",
                self.name(),
                d.data_dir.display(),
                d.data_dir.display()
            ));
        }
        Ok((body, changes))
    }

    /// A drill's scratch database (`[app.database]`) made from the tenant's database container
    /// (this spec): its image by id (the same digest), env, command and user, on the drill's
    /// internal network only, answering there to the database container's name and aliases (so
    /// the drill's app finds it as the tenant's app does), with none of its writable mounts (its
    /// data dir starts empty: the image's own volumes are fresh anonymous ones), no port, no
    /// restart, and only the drill's labels.
    pub fn drill_db_body(&self, name: &str, network: &str, labels: BTreeMap<String, String>) -> ContainerCreateBody {
        let strip = |_: &str| true;
        let drill = DrillSpec { name, network, alias: None, data: Vec::new(), labels, strip: &strip };
        let (mut body, _, _) = self.drill_body_binds(&drill);
        let mut aliases: Vec<String> = self.networks().into_iter().flat_map(|(_, _, a)| a).collect();
        aliases.push(self.name());
        aliases.sort();
        aliases.dedup();
        let endpoint = EndpointSettings { aliases: Some(aliases), ..Default::default() };
        body.networking_config =
            Some(NetworkingConfig { endpoints_config: Some([(network.to_string(), endpoint)].into_iter().collect()) });
        body
    }

    /// [`ContainerSpec::drill_body`] and how many binds of each data mount it pointed at its copy.
    fn drill_body_binds(&self, drill: &DrillSpec<'_>) -> (ContainerCreateBody, DrillChanges, Vec<usize>) {
        let image = self.inspect.image.clone().unwrap_or_else(|| self.image_ref());
        let (mut body, _) = self.create_body(&image);
        let mut changes = DrillChanges::default();
        let mut labels = body.labels.take().unwrap_or_default();
        changes.labels_stripped = labels.keys().filter(|k| (drill.strip)(k)).cloned().collect();
        changes.labels_stripped.sort();
        labels.retain(|k, _| !(drill.strip)(k));
        let img_labels = self.image_config.labels.clone().unwrap_or_default();
        changes.image_labels_blanked = img_labels.keys().filter(|k| (drill.strip)(k)).cloned().collect();
        changes.image_labels_blanked.sort();
        for k in &changes.image_labels_blanked {
            labels.insert(k.clone(), String::new());
        }
        if changes.image_labels_blanked.iter().any(|k| k.starts_with("traefik.")) {
            labels.insert("traefik.enable".into(), "false".into());
        }
        labels.extend(drill.labels.clone());
        body.labels = Some(labels);

        changes.networks_left = self.networks().into_iter().map(|(n, _, _)| n).collect();
        changes.networks_left.sort();
        let endpoint =
            EndpointSettings { aliases: drill.alias.map(|a| vec![a.to_string()]), ..EndpointSettings::default() };
        body.networking_config = Some(NetworkingConfig {
            endpoints_config: Some([(drill.network.to_string(), endpoint)].into_iter().collect()),
        });

        let mut host = body.host_config.take().unwrap_or_default();
        host.network_mode = Some(drill.network.to_string());
        changes.ports_unpublished = host
            .port_bindings
            .take()
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, b)| b.as_ref().is_some_and(|b| !b.is_empty()))
            .map(|(p, _)| p)
            .collect();
        changes.ports_unpublished.sort();
        host.publish_all_ports = Some(false);
        changes.restart_replaced = self.restart().to_string();
        host.restart_policy = Some(RestartPolicy { name: Some(RestartPolicyNameEnum::NO), maximum_retry_count: None });
        host.auto_remove = Some(false);
        host.links = None;
        if host.volumes_from.take().is_some_and(|v| !v.is_empty()) {
            changes.mounts_left.push("volumes_from".into());
        }
        for mode in [&mut host.pid_mode, &mut host.ipc_mode, &mut host.uts_mode] {
            if mode.as_deref().is_some_and(|m| m.starts_with("container:")) {
                *mode = None;
            }
        }
        // Which of the drill's data mounts a source is, if any.
        let data_of = |src: &str, volume: bool| {
            drill
                .data
                .iter()
                .position(|d| (!volume && std::path::Path::new(src) == d.data_dir) || d.data_volume == Some(src))
        };
        let mut data_binds = vec![0usize; drill.data.len()];
        let mut binds = Vec::new();
        for b in host.binds.take().unwrap_or_default() {
            let mut parts = b.splitn(3, ':');
            let (src, dst, opts) = (parts.next().unwrap_or_default(), parts.next(), parts.next());
            let read_only = opts.is_some_and(|o| o.split(',').any(|o| o == "ro"));
            if let Some(i) = data_of(src, !src.starts_with('/')) {
                data_binds[i] += 1;
                let scratch = drill.data[i].scratch.to_string_lossy();
                let rw: Vec<&str> =
                    opts.unwrap_or_default().split(',').filter(|o| !o.is_empty() && *o != "ro").collect();
                let opts = if rw.is_empty() { String::new() } else { format!(":{}", rw.join(",")) };
                binds.push(format!("{scratch}:{}{opts}", dst.unwrap_or_default()));
            } else if read_only {
                binds.push(b);
            } else {
                changes.mounts_left.push(b);
            }
        }
        host.binds = if binds.is_empty() { None } else { Some(binds) };
        let mut mounts = Vec::new();
        for mut m in host.mounts.take().unwrap_or_default() {
            let is_data = match (m.typ, m.source.as_deref()) {
                (Some(MountType::BIND), Some(s)) => data_of(s, false),
                (Some(MountType::VOLUME), Some(s)) => data_of(s, true),
                _ => None,
            };
            if let Some(i) = is_data {
                data_binds[i] += 1;
                m.typ = Some(MountType::BIND);
                m.source = Some(drill.data[i].scratch.to_string_lossy().into_owned());
                m.read_only = Some(false);
                m.volume_options = None;
                mounts.push(m);
            } else if m.typ == Some(MountType::TMPFS) || m.read_only == Some(true) {
                mounts.push(m);
            } else {
                let what = m.typ.map_or("mount".to_string(), |t| t.to_string());
                changes.mounts_left.push(format!(
                    "{what} {}:{}",
                    m.source.unwrap_or_default(),
                    m.target.unwrap_or_default()
                ));
            }
        }
        host.mounts = if mounts.is_empty() { None } else { Some(mounts) };
        body.host_config = Some(host);
        (body, changes, data_binds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{HostConfig, MountPoint};

    fn tenant(mode: &str, networks: &[&str]) -> TenantContainer {
        TenantContainer {
            tenant: "t1".parse().unwrap(),
            name: "pulse-t1".into(),
            id: "abc".into(),
            image_ref: "reg/pulse:v1".into(),
            digest: None,
            state: "running".into(),
            networks: networks.iter().map(|s| s.to_string()).collect(),
            network_mode: mode.into(),
            mounts: Vec::new(),
            auto_remove: false,
            labels: Default::default(),
        }
    }

    fn mount_point(kind: &str, name: Option<&str>, source: &str, destination: &str, rw: bool) -> MountPoint {
        MountPoint {
            typ: Some(kind.into()),
            name: name.map(str::to_string),
            source: Some(source.into()),
            destination: Some(destination.into()),
            rw: Some(rw),
            ..Default::default()
        }
    }

    /// A tenant with its data dir bound, a named volume and an anonymous one (from `-v /cache`).
    fn spec_with_volumes(anon: &str) -> ContainerSpec {
        let inspect = ContainerInspectResponse {
            id: Some("0123456789abcdef".into()),
            name: Some("/pulse-t1".into()),
            config: Some(ContainerConfig { volumes: Some(vec!["/cache".into()]), ..Default::default() }),
            host_config: Some(HostConfig {
                binds: Some(vec!["/data/t1:/data".into(), "assets:/assets:ro".into()]),
                ..Default::default()
            }),
            mounts: Some(vec![
                mount_point("bind", None, "/data/t1", "/data", true),
                mount_point("volume", Some("assets"), "/var/lib/docker/volumes/assets/_data", "/assets", false),
                mount_point("volume", Some(anon), &format!("/var/lib/docker/volumes/{anon}/_data"), "/cache", true),
            ]),
            ..Default::default()
        };
        ContainerSpec { inspect, image_config: ImageConfig::default() }
    }

    #[test]
    fn an_anonymous_volume_is_created_by_name_and_the_check_finds_it_the_same() {
        let anon = "ab".repeat(32);
        let old = spec_with_volumes(&anon);
        let (body, _) = old.create_body("reg/pulse@sha256:x");
        let host = body.host_config.unwrap();
        let mounts = host.mounts.unwrap_or_default();
        assert_eq!(mounts.len(), 1, "{mounts:?}");
        assert_eq!(mounts[0].source.as_deref(), Some(anon.as_str()));
        assert_eq!(mounts[0].target.as_deref(), Some("/cache"));
        assert_eq!(mounts[0].typ, Some(MountType::VOLUME));
        // Not asked for again as a fresh anonymous volume; the named one stays a bind string.
        assert!(body.volumes.unwrap_or_default().is_empty());
        assert_eq!(host.binds.unwrap().len(), 2);
        // The new container has the same volume by name: nothing was lost.
        let new = spec_with_volumes(&anon);
        assert!(old.operator_settings().lost_in(&new.actual_settings()).is_empty());
        // A fresh anonymous volume in its place is a lost mount, named in the check.
        let lost = old.operator_settings().lost_in(&spec_with_volumes(&"cd".repeat(32)).actual_settings());
        assert_eq!(lost, vec![format!("mount {anon}:/cache:rw")]);
    }

    #[test]
    fn the_probe_network_is_never_a_guess() {
        assert_eq!(tenant("front", &["front"]).probe_network_problem(None), None);
        assert_eq!(tenant("front", &["back", "front"]).probe_network_problem(Some("front")), None);
        let several = tenant("front", &["back", "front"]).probe_network_problem(None).unwrap();
        assert!(several.contains("back, front") && several.contains("health.network"), "{several}");
        let missing = tenant("front", &["front"]).probe_network_problem(Some("back")).unwrap();
        assert!(missing.contains("\"back\"") && missing.contains("front"), "{missing}");
        for mode in ["host", "container:0123abcd", "none"] {
            let why = tenant(mode, &[]).probe_network_problem(None).unwrap();
            assert!(why.contains(mode) && why.contains("pulse-t1"), "{why}");
        }
    }
}
