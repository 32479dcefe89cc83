//! `init`: adopt a host whose tenants already run. It inventories the engine's containers
//! (read only: no container is started, stopped, changed or probed other than by an HTTP GET),
//! proposes the stacks among the running ones (compose projects of several services: see
//! [`stack`]), groups the others by image repository, and proposes one `[[app]]` per group: `select`
//! (a label only that group carries, else a name prefix only it shares), `tenant_from` (the
//! names' common prefix and suffix, or a label whose value differs per container), `data_dir`
//! (the bind mount whose source names the tenant, as a template), the health port (the exposed
//! port; the path is the first common one that answers 2xx on every tenant, else `/` marked to
//! fix) and the digest the tenants run (from the image's repo digests). Containers that do not
//! fit (a one-off, no data bind, no registry digest, nothing that tells them apart) are listed
//! as skipped with the reason and the fix. It writes a host config (0600) and a `fleet.toml`,
//! both checked by the loaders `config check` uses, and refuses to overwrite either unless
//! forced.
//!
//! The inference ([`propose`]) is a pure function of the inventory, so it is tested on plain data.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::adapters::docker::{Engine, HostContainer};
use crate::adapters::health::Prober;
use crate::config::{DockerConfig, Fleet, HostConfig, Selector};
use crate::error::{Error, ExitKind, Result};
use crate::trust::normalise_repo;
use crate::types::{Digest, TenantId};

pub mod stack;

/// Health paths tried, in order, on every tenant of an app; the first that answers 2xx on
/// all of them is proposed.
pub const HEALTH_PATHS: &[&str] = &["/healthz", "/health", "/api/health", "/status", "/"];

/// Where the written host config points `desired.repo` until the operator says otherwise.
pub const REPO_PLACEHOLDER: &str = "/srv/git/fleet.git";

/// What `slipway init` is asked to do.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Where `config.toml` and `fleet.toml` are written.
    pub dir: PathBuf,
    /// Print the files and touch nothing.
    pub dry_run: bool,
    /// Overwrite files that exist.
    pub force: bool,
    /// Only containers this selector matches (`label=value`, `label` or `name:<prefix>*`).
    pub only: Option<Selector>,
}

/// One tenant of a proposed app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProposedTenant {
    /// The tenant id `tenant_from` gives.
    pub tenant: String,
    /// Its container.
    pub container: String,
    /// The digest it runs, when its image has one for the app's repository.
    pub digest: Option<String>,
}

/// One proposed `[[app]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProposedApp {
    /// App name (the repository's last path part).
    pub name: String,
    /// The image repository its tenants run.
    pub repository: String,
    /// `repository@digest`: the digest most tenants run.
    pub image: String,
    /// `select`.
    pub select: String,
    /// Why that selector: which containers it matches.
    pub select_why: String,
    /// `tenant_from`.
    pub tenant_from: String,
    /// `data_dir`.
    pub data_dir: String,
    /// Where the data dir is mounted in the containers.
    pub data_mount: String,
    /// `health.port` (0 until a port is known; rendered as a placeholder to fix).
    pub health_port: u16,
    /// `health.path`.
    pub health_path: String,
    /// Whether `health_path` answered 2xx on every tenant just now.
    pub health_checked: bool,
    /// `health.network`, when the tenants are on several networks.
    pub health_network: Option<String>,
    /// The tenants, sorted by id.
    pub tenants: Vec<ProposedTenant>,
    /// What to review: tenants on another digest, other mounts, ports, guesses.
    pub notes: Vec<String>,
    /// A stack app's `[app.stack]` and `[app.services]` (then `data_dir` is empty and each
    /// tenant's container is its health service's); None for a single-container app.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stack: Option<stack::ProposedStack>,
    /// A single-container app whose every tenant has a container of its own running a Postgres
    /// image, named after it the same way: that name with the tenant id as `{tenant}`, proposed
    /// as `[app.database] container`, commented out (an image name proposes, never declares).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
}

/// A running container that is not proposed as a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// Container name.
    pub container: String,
    /// The image reference it runs.
    pub image: String,
    /// Why, and what to do to adopt it.
    pub reason: String,
}

/// What the inventory suggests, before the health paths are probed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Proposal {
    /// Running containers looked at (in scope).
    pub containers: usize,
    /// One per group that fits.
    pub apps: Vec<ProposedApp>,
    /// Everything else.
    pub skipped: Vec<Skipped>,
}

/// A file `init` wrote (or would write).
#[derive(Debug, Clone, Serialize)]
pub struct InitFile {
    /// Its path.
    pub path: PathBuf,
    /// Its mode.
    pub mode: String,
    /// Written (false under `--dry-run` or when nothing could be proposed).
    pub written: bool,
    /// Its text.
    pub text: String,
}

/// The result of `slipway init`.
#[derive(Debug, Clone, Serialize)]
pub struct InitReport {
    /// The directory written to.
    pub dir: PathBuf,
    /// Nothing was written.
    pub dry_run: bool,
    /// Running containers looked at.
    pub containers: usize,
    /// The proposed apps.
    pub apps: Vec<ProposedApp>,
    /// The containers left out, with the reason.
    pub skipped: Vec<Skipped>,
    /// The host config.
    pub config: InitFile,
    /// The fleet file.
    pub fleet: InitFile,
    /// The next commands, in order.
    pub next: Vec<String>,
}

impl InitReport {
    /// Failure when no app could be proposed (nothing is written then).
    pub fn exit_kind(&self) -> ExitKind {
        if self.apps.is_empty() {
            ExitKind::Failure
        } else {
            ExitKind::Success
        }
    }
}

/// Run `init`.
pub async fn init(opts: &InitOptions) -> Result<InitReport> {
    let docker = DockerConfig { host: std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()) };
    let engine = Engine::connect(&DockerConfig::default()).await?;
    let inventory = engine.inventory().await?;
    let mut proposal = propose(&inventory, opts.only.as_ref());
    let prober = Prober::new()?;
    for app in &mut proposal.apps {
        probe_health(&engine, &prober, app).await?;
    }
    let config_path = opts.dir.join("config.toml");
    let fleet_path = opts.dir.join("fleet.toml");
    let config_text = render_config(docker.host.as_deref());
    let fleet_text = render_fleet(&proposal.apps);
    // The same loaders `config check` uses, before anything is written.
    HostConfig::parse(&config_text, &config_path.display().to_string(), std::env::vars())?;
    if !proposal.apps.is_empty() {
        Fleet::parse(&fleet_text, &fleet_path.display().to_string())?;
    }
    let write = !opts.dry_run && !proposal.apps.is_empty();
    if write {
        for p in [&config_path, &fleet_path] {
            if !opts.force && p.symlink_metadata().is_ok() {
                return Err(Error::Usage(format!(
                    "{} exists; pass --force to overwrite it, or --dir another directory (nothing was written)",
                    p.display()
                )));
            }
        }
        crate::fsutil::create_private_dir(&opts.dir).map_err(|e| Error::io(&opts.dir, e))?;
        crate::fsutil::atomic_write(&config_path, config_text.as_bytes(), 0o600)
            .map_err(|e| Error::io(&config_path, e))?;
        crate::fsutil::atomic_write(&fleet_path, fleet_text.as_bytes(), 0o644)
            .map_err(|e| Error::io(&fleet_path, e))?;
        // Read back as `config check` will: the mode check included.
        HostConfig::load(&config_path)?;
        let back = std::fs::read_to_string(&fleet_path).map_err(|e| Error::io(&fleet_path, e))?;
        Fleet::parse(&back, &fleet_path.display().to_string())?;
    }
    Ok(InitReport {
        dir: opts.dir.clone(),
        dry_run: opts.dry_run,
        containers: proposal.containers,
        next: next_commands(&config_path, &fleet_path),
        apps: proposal.apps,
        skipped: proposal.skipped,
        config: InitFile { path: config_path, mode: "0600".into(), written: write, text: config_text },
        fleet: InitFile { path: fleet_path, mode: "0644".into(), written: write, text: fleet_text },
    })
}

/// Try [`HEALTH_PATHS`] on every tenant of `app` (one GET each, no retries): the first that
/// answers 2xx on all of them becomes the app's health path.
/// Wait until every URL answers at all (any HTTP status: the app is up), for at most
/// [`PROBE_PATIENCE`] in all: an app still starting, or a loaded host, must not make `init`
/// propose "/" because its first probe was refused.
async fn until_answering(prober: &Prober, urls: &[String]) {
    let deadline = std::time::Instant::now() + PROBE_PATIENCE;
    for u in urls {
        let url = format!("{u}{}", HEALTH_PATHS[0]);
        while std::time::Instant::now() < deadline {
            match prober.probe(&url).await {
                Err(e) if !e.starts_with("HTTP ") => tokio::time::sleep(std::time::Duration::from_millis(250)).await,
                _ => break,
            }
        }
    }
}

/// How long `init` waits, in all, for tenants that do not answer at all.
const PROBE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(15);

async fn probe_health(engine: &Engine, prober: &Prober, app: &mut ProposedApp) -> Result<()> {
    if app.health_port == 0 {
        return Ok(());
    }
    let mut urls = Vec::new();
    for t in &app.tenants {
        match engine.ip(&t.container, app.health_network.as_deref()).await? {
            Ok(ip) => urls.push(match ip {
                std::net::IpAddr::V6(v6) => format!("http://[{v6}]:{}", app.health_port),
                std::net::IpAddr::V4(v4) => format!("http://{v4}:{}", app.health_port),
            }),
            Err(why) => {
                app.notes.push(format!("tenant {}: no address to probe its health: {why}", t.tenant));
                return Ok(());
            }
        }
    }
    until_answering(prober, &urls).await;
    for path in HEALTH_PATHS {
        let mut all = true;
        for u in &urls {
            if prober.probe(&format!("{u}{path}")).await.is_err() {
                all = false;
                break;
            }
        }
        if all {
            app.health_path = path.to_string();
            app.health_checked = true;
            return Ok(());
        }
    }
    Ok(())
}

/// The repository a container's image belongs to: from its reference (tag and digest
/// removed), or, when it was created from an image id, from the image's own names.
pub fn repository_of(c: &HostContainer) -> Option<String> {
    let r = c.image_ref.trim();
    let id = c.image_id.trim_start_matches("sha256:");
    let bare = r.trim_start_matches("sha256:");
    let is_id = r.is_empty()
        || (bare.len() >= 12 && bare.bytes().all(|b| b.is_ascii_hexdigit()) && id.starts_with(bare))
        || r.starts_with("sha256:");
    let name = if is_id {
        c.repo_digests.first().or(c.repo_tags.first()).map(String::as_str).filter(|n| !n.starts_with("<none>"))?
    } else {
        r
    };
    let name = name.split('@').next().unwrap_or(name);
    let repo = match name.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => repo,
        _ => name,
    };
    (!repo.is_empty()).then(|| repo.to_string())
}

/// The digest a container runs for `repo`: from its reference when pinned, else from its
/// image's repo digests for that repository.
pub fn digest_of(c: &HostContainer, repo: &str) -> Option<Digest> {
    if let Some(d) = c.image_ref.split_once('@').and_then(|(_, d)| d.parse().ok()) {
        return Some(d);
    }
    let want = normalise_repo(repo);
    let mut found: Vec<Digest> = c
        .repo_digests
        .iter()
        .filter_map(|rd| rd.split_once('@'))
        .filter(|(r, _)| normalise_repo(r) == want)
        .filter_map(|(_, d)| d.parse().ok())
        .collect();
    found.sort();
    found.into_iter().next()
}

fn is_sep(c: char) -> bool {
    matches!(c, '-' | '_' | '.')
}

/// The longest common prefix of `names` that ends at a separator (`-`, `_`, `.`), and the
/// longest common suffix (of the rest) that starts at one.
pub fn common_affixes(names: &[&str]) -> (String, String) {
    let Some(first) = names.first() else { return (String::new(), String::new()) };
    let mut pre = first.len();
    for n in &names[1..] {
        pre = first.bytes().zip(n.bytes()).take(pre).take_while(|(a, b)| a == b).count();
    }
    while !first.is_char_boundary(pre) {
        pre -= 1;
    }
    let mut prefix = &first[..pre];
    prefix = prefix.rfind(is_sep).map_or("", |i| &prefix[..=i]);
    let rests: Vec<&str> = names.iter().map(|n| &n[prefix.len()..]).collect();
    let mut suf = rests[0].len();
    for r in &rests[1..] {
        suf = rests[0].bytes().rev().zip(r.bytes().rev()).take(suf).take_while(|(a, b)| a == b).count();
    }
    while !rests[0].is_char_boundary(rests[0].len() - suf) {
        suf -= 1;
    }
    let mut suffix = &rests[0][rests[0].len() - suf..];
    suffix = suffix.find(is_sep).map_or("", |i| &suffix[i..]);
    (prefix.to_string(), suffix.to_string())
}

/// `name:<prefix>{tenant}<suffix>` for these container names, when it gives each a valid,
/// distinct tenant id.
pub fn name_pattern(names: &[&str]) -> Option<(String, String)> {
    let (prefix, suffix) = common_affixes(names);
    if prefix.is_empty() && suffix.is_empty() {
        return None;
    }
    let mut seen = BTreeSet::new();
    for n in names {
        let t = n.strip_prefix(prefix.as_str())?.strip_suffix(suffix.as_str())?;
        if t.parse::<TenantId>().is_err() || !seen.insert(t) {
            return None;
        }
    }
    Some((prefix, suffix))
}

/// `source` as a template for `tenant`: the path parts equal to the tenant id become
/// `{tenant}`; failing that, the tenant id inside the last part (`/data/shop-t1` →
/// `/data/shop-{tenant}`). None when the path does not name the tenant.
pub fn data_template(source: &str, tenant: &str) -> Option<String> {
    if !source.starts_with('/') || tenant.is_empty() {
        return None;
    }
    let parts: Vec<&str> = source.split('/').collect();
    if parts.contains(&tenant) {
        let t: Vec<&str> = parts.iter().map(|p| if *p == tenant { "{tenant}" } else { *p }).collect();
        return Some(t.join("/"));
    }
    // A local volume's mountpoint: the tenant is in the volume's name (`cf-agent-c1_data`).
    if let Some(name) = volume_of(source) {
        if name.matches(tenant).count() == 1 {
            return Some(format!("{}/{}/_data", crate::config::VOLUMES_DIR, name.replace(tenant, "{tenant}")));
        }
    }
    let last = parts.last()?;
    if last.matches(tenant).count() == 1 {
        let mut t = parts[..parts.len() - 1].to_vec();
        let replaced = last.replace(tenant, "{tenant}");
        t.push(&replaced);
        return Some(t.join("/"));
    }
    None
}

/// An app name from a repository: its last path part, with anything but letters, digits,
/// `-`, `_` and `.` dropped.
fn app_name(repo: &str) -> String {
    let last = repo.rsplit('/').next().unwrap_or(repo);
    let name: String = last.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')).collect();
    if name.is_empty() {
        "app".into()
    } else {
        name
    }
}

/// A label key/value the operator set (not one the image carries with the same value).
fn operator_labels(c: &HostContainer) -> impl Iterator<Item = (&String, &String)> {
    c.labels.iter().filter(move |(k, v)| c.image_labels.get(*k) != Some(*v))
}

/// Group the running containers in scope into stacks (compose projects of several services,
/// see [`stack`]) and the others by image repository, and propose an app for each group that
/// fits; everything else is skipped with the reason. `all` is every container on the host
/// (running or not): a selector must match no container outside its app.
pub fn propose(all: &[HostContainer], only: Option<&Selector>) -> Proposal {
    propose_with(all, only, &stack::host_kind)
}

/// [`propose`], with `kind` saying what a host path is (`lstat`: a stack's data mounts).
pub fn propose_with(
    all: &[HostContainer],
    only: Option<&Selector>,
    kind: &dyn Fn(&str) -> stack::HostKind,
) -> Proposal {
    let in_scope = |c: &HostContainer| match only {
        None => true,
        Some(s @ Selector::Name { .. }) => s.name_matches(&c.name),
        Some(Selector::Label { key, value }) => {
            c.labels.get(key).is_some_and(|v| value.as_ref().is_none_or(|want| want == v))
        }
    };
    let candidates: Vec<&HostContainer> =
        all.iter().filter(|c| c.running && !crate::naming::is_pre_rollout(&c.name) && in_scope(c)).collect();
    let mut skipped = Vec::new();
    let skip =
        |c: &HostContainer, reason: String| Skipped { container: c.name.clone(), image: c.image_ref.clone(), reason };
    let stacks = stack::propose_stacks(&candidates, all, kind);
    skipped.extend(stacks.left.into_iter().map(|(c, r)| skip(c, r)));
    // Normalised repository → (the repository as first seen, its containers).
    let mut groups: BTreeMap<String, (String, Vec<&HostContainer>)> = BTreeMap::new();
    for &c in &stacks.rest {
        match repository_of(c) {
            Some(r) => groups.entry(normalise_repo(&r)).or_insert_with(|| (r, Vec::new())).1.push(c),
            None => skipped.push(skip(
                c,
                format!(
                    "its image {} has no repository name; push it to a registry, recreate the container from \
                     that repo@sha256:… reference, then run init again",
                    short_id(&c.image_id)
                ),
            )),
        }
    }
    let repo_of_any: Vec<(&HostContainer, Option<String>)> = all
        .iter()
        .filter(|c| !crate::naming::is_pre_rollout(&c.name))
        .map(|c| (c, repository_of(c).map(|r| normalise_repo(&r))))
        .collect();
    let mut proposed = stacks.apps;
    for (key, (repo, members)) in groups {
        match propose_app(&key, &repo, &members, &repo_of_any) {
            Ok((app, left)) => {
                skipped.extend(left.into_iter().map(|(c, r)| skip(c, r)));
                proposed.push(app);
            }
            Err(left) => skipped.extend(left.into_iter().map(|(c, r)| skip(c, r))),
        }
    }
    propose_databases(&mut proposed, &candidates);
    let mut apps = Vec::new();
    let mut names = BTreeSet::new();
    for mut app in proposed {
        let base = app.name.clone();
        let mut n = 2;
        while !names.insert(app.name.clone()) {
            app.name = format!("{base}-{n}");
            n += 1;
        }
        apps.push(app);
    }
    skipped.sort_by(|a, b| a.container.cmp(&b.container));
    Proposal { containers: candidates.len(), apps, skipped }
}

/// For each single-container app: the running containers of a Postgres image (by its
/// repository's name, [`stack::is_postgres_repo`]) named after its tenants — one per tenant,
/// every tenant, all named the same way — proposed as its `[app.database] container`. An app
/// proposed for those Postgres containers themselves is noted as being those databases.
fn propose_databases(apps: &mut [ProposedApp], running: &[&HostContainer]) {
    let pg: BTreeSet<&str> = running
        .iter()
        .filter(|c| repository_of(c).is_some_and(|r| stack::is_postgres_repo(&r)))
        .map(|c| c.name.as_str())
        .collect();
    if pg.is_empty() {
        return;
    }
    let mut found: Vec<(usize, String)> = Vec::new();
    for (n, a) in apps.iter().enumerate() {
        let Some(first) = a.tenants.first() else { continue };
        if a.stack.is_some() || a.tenants.iter().any(|t| pg.contains(t.container.as_str())) {
            continue;
        }
        // Every name the first tenant's id is in once, as a template, kept if it names a
        // Postgres container for every tenant.
        let template = pg
            .iter()
            .filter(|name| name.matches(first.tenant.as_str()).count() == 1)
            .map(|name| name.replacen(first.tenant.as_str(), "{tenant}", 1))
            .filter(|t| a.tenants.iter().all(|x| pg.contains(t.replace("{tenant}", &x.tenant).as_str())))
            .min_by_key(|t| (t.len(), t.clone()));
        if let Some(t) = template {
            found.push((n, t));
        }
    }
    for (n, template) in found {
        let (owner, tenants): (String, Vec<String>) =
            (apps[n].name.clone(), apps[n].tenants.iter().map(|t| template.replace("{tenant}", &t.tenant)).collect());
        apps[n].database = Some(template);
        // The Postgres containers proposed as an app of their own: say what they are.
        for other in apps.iter_mut().filter(|o| o.tenants.iter().any(|t| tenants.contains(&t.container))) {
            other.notes.push(format!(
                "these containers are the databases of app {owner}'s tenants (proposed, commented, as its \
                 [app.database]); rolling them as an app of their own upgrades each tenant's Postgres server: keep \
                 this app only if that is what you mean"
            ));
        }
    }
}

type Left<'a> = Vec<(&'a HostContainer, String)>;

/// The app for one repository's running containers, and the ones left out; or all of them
/// left out, each with the reason.
fn propose_app<'a>(
    key: &str,
    repo: &str,
    members: &[&'a HostContainer],
    everyone: &[(&HostContainer, Option<String>)],
) -> std::result::Result<(ProposedApp, Left<'a>), Left<'a>> {
    let mut left: Left<'a> = Vec::new();
    let mut with_binds: Vec<&'a HostContainer> = Vec::new();
    for &c in members {
        if c.binds.is_empty() {
            let vols = if c.volumes.is_empty() {
                String::new()
            } else {
                format!(
                    "; its data is in Docker volumes at {} that are anonymous or not of the local driver: slipway \
                     snapshots host directories (a bind mount, or a named volume of the local driver), so move it \
                     to one to adopt it",
                    c.volumes.join(", ")
                )
            };
            left.push((c, format!("no bind mount: slipway snapshots a tenant's data dir, a host directory bind-mounted into its container{vols}")));
        } else {
            with_binds.push(c);
        }
    }
    let one_off = |c: &'a HostContainer| {
        (
            c,
            format!(
                "a one-off: the only running container of {repo} with a data bind; if it is a tenant, add its \
                 [[app]] to fleet.toml by hand"
            ),
        )
    };
    if with_binds.len() < 2 {
        left.extend(with_binds.into_iter().map(one_off));
        return Err(left);
    }

    // tenant_from: a label naming the tenant, the names' common prefix and suffix, any label
    // whose value differs per container — in that order.
    let names: Vec<&str> = with_binds.iter().map(|c| c.name.as_str()).collect();
    let label_tenants = |want_tenant_word: bool| -> Option<String> {
        let first = with_binds[0];
        let mut keys: Vec<&String> = operator_labels(first).map(|(k, _)| k).collect();
        keys.sort();
        keys.into_iter()
            .filter(|k| k.to_ascii_lowercase().contains("tenant") == want_tenant_word)
            .find(|k| {
                let mut seen = BTreeSet::new();
                with_binds
                    .iter()
                    .all(|c| c.labels.get(*k).is_some_and(|v| v.parse::<TenantId>().is_ok() && seen.insert(v.clone())))
            })
            .cloned()
    };
    let tenant_from = if let Some(k) = label_tenants(true) {
        TenantRule::Label(k)
    } else if let Some((p, s)) = name_pattern(&names) {
        TenantRule::Name(p, s)
    } else if let Some(k) = label_tenants(false) {
        TenantRule::Label(k)
    } else {
        left.extend(with_binds.into_iter().map(|c| {
            (
                c,
                format!(
                    "nothing gives the containers of {repo} each a tenant id: no common name prefix or suffix \
                     (like {}-<tenant>) and no label whose value differs per container; rename them or label each \
                     (--label {}.tenant=<id>), then run init again",
                    app_name(repo),
                    app_name(repo)
                ),
            )
        }));
        return Err(left);
    };
    let tenant_of = |c: &HostContainer| -> String {
        match &tenant_from {
            TenantRule::Label(k) => c.labels.get(k).cloned().unwrap_or_default(),
            TenantRule::Name(p, s) => {
                c.name.strip_prefix(p.as_str()).and_then(|r| r.strip_suffix(s.as_str())).unwrap_or_default().into()
            }
        }
    };

    // data_dir: the (mount point, template) most containers share.
    let mut votes: BTreeMap<(String, String), usize> = BTreeMap::new();
    for c in &with_binds {
        let t = tenant_of(c);
        let mine: BTreeSet<(String, String)> = c
            .binds
            .iter()
            .filter_map(|b| data_template(&b.source, &t).map(|tpl| (b.destination.clone(), tpl)))
            .collect();
        for m in mine {
            *votes.entry(m).or_default() += 1;
        }
    }
    let best = votes.iter().max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0))).map(|(k, n)| (k.clone(), *n));
    let Some(((mount, template), _)) = best.filter(|(_, n)| *n >= 2) else {
        left.extend(with_binds.into_iter().map(|c| {
            let t = tenant_of(c);
            let binds: Vec<String> = c.binds.iter().map(|b| format!("{}:{}", b.source, b.destination)).collect();
            (
                c,
                format!(
                    "as tenant {t}, none of its bind mounts ({}) is a data dir named after the tenant that the other \
                     containers of {repo} share; slipway needs each tenant's data at a path like /data/tenants/<tenant>",
                    binds.join(", ")
                ),
            )
        }));
        return Err(left);
    };
    let mut tenants_of: Vec<&'a HostContainer> = Vec::new();
    for c in with_binds {
        let t = tenant_of(c);
        if c.binds
            .iter()
            .any(|b| b.destination == mount && data_template(&b.source, &t).as_deref() == Some(template.as_str()))
        {
            tenants_of.push(c);
        } else {
            let binds: Vec<String> = c.binds.iter().map(|b| format!("{}:{}", b.source, b.destination)).collect();
            left.push((
                c,
                format!(
                    "its bind mounts ({}) do not follow {template} at {mount} as the other containers of {repo} do",
                    binds.join(", ")
                ),
            ));
        }
    }
    if tenants_of.len() < 2 {
        left.extend(tenants_of.into_iter().map(one_off));
        return Err(left);
    }

    // select: a label all of them carry that no container of another repository has; else
    // their common name prefix, when no container of another repository starts with it.
    let others_have =
        |pred: &dyn Fn(&HostContainer) -> bool| everyone.iter().any(|(c, r)| pred(c) && r.as_deref() != Some(key));
    let first = tenants_of[0];
    let mut shared: Vec<(&String, &String)> = operator_labels(first)
        .filter(|(k, v)| tenants_of.iter().all(|c| c.labels.get(*k) == Some(*v) && c.image_labels.get(*k) != Some(*v)))
        .collect();
    shared.sort();
    let label = shared.into_iter().find(|(k, v)| !others_have(&|c: &HostContainer| c.labels.get(*k) == Some(*v)));
    let tenant_names: Vec<&str> = tenants_of.iter().map(|c| c.name.as_str()).collect();
    let (prefix, _) = common_affixes(&tenant_names);
    let (select, select_why) = if let Some((k, v)) = label {
        (format!("{k}={v}"), format!("the label {k}={v}: these containers carry it and no other container does"))
    } else if !prefix.is_empty() && !others_have(&|c: &HostContainer| c.name.starts_with(&prefix)) {
        (
            format!("name:{prefix}*"),
            format!("names starting with {prefix}: no label is theirs alone, and no other container's name starts so"),
        )
    } else {
        left.extend(tenants_of.into_iter().map(|c| {
            (
                c,
                format!(
                    "nothing tells the containers of {repo} from the others: no label only they carry and no name \
                     prefix only they share; label them (--label app={}) when you next recreate them, then run init \
                     again",
                    app_name(repo)
                ),
            )
        }));
        return Err(left);
    };

    // Digests: the one most tenants run is pinned.
    let mut tenants: Vec<ProposedTenant> = tenants_of
        .iter()
        .map(|c| ProposedTenant {
            tenant: tenant_of(c),
            container: c.name.clone(),
            digest: digest_of(c, repo).map(|d| d.to_string()),
        })
        .collect();
    tenants.sort_by(|a, b| a.tenant.cmp(&b.tenant));
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for t in &tenants {
        if let Some(d) = &t.digest {
            *counts.entry(d.as_str()).or_default() += 1;
        }
    }
    let Some(pinned) = counts.iter().max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0))).map(|(d, _)| d.to_string())
    else {
        left.extend(tenants_of.into_iter().map(|c| {
            (
                c,
                format!(
                    "it runs {}, an image with no registry digest (built or loaded on this host?): slipway pins \
                     images by digest; push it to a registry and recreate the container from \
                     {repo}@sha256:<digest> (or pin it: docker run … {repo}@sha256:…), then run init again",
                    c.image_ref
                ),
            )
        }));
        return Err(left);
    };
    let mut notes = Vec::new();
    for t in &tenants {
        match &t.digest {
            Some(d) if *d == pinned => {}
            Some(d) => notes.push(format!(
                "tenant {} runs {}, not the pinned {}: the first rollout moves it to the pin",
                t.tenant,
                &d[..19.min(d.len())],
                &pinned[..19.min(pinned.len())]
            )),
            None => notes.push(format!(
                "tenant {} runs an image with no registry digest for {repo}: the first rollout moves it to the pin \
                 (or push its image and pin that digest instead)",
                t.tenant
            )),
        }
    }

    // Other data-looking mounts and volumes are not snapshotted: say so.
    let mut other: BTreeSet<String> = BTreeSet::new();
    for c in &tenants_of {
        let t = tenant_of(c);
        for b in &c.binds {
            if b.destination != mount {
                if let Some(tpl) = data_template(&b.source, &t) {
                    other.insert(format!("{tpl} at {}", b.destination));
                }
            }
        }
        for v in &c.volumes {
            other.insert(format!("a Docker volume at {v}"));
        }
    }
    if !other.is_empty() {
        notes.push(format!(
            "also mounted: {}; only data_dir is snapshotted and restored",
            other.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }

    // Health: the lowest TCP port every tenant exposes; the network when they are on several.
    let mut ports: BTreeSet<u16> = first.exposed_ports.iter().copied().collect();
    for c in &tenants_of {
        let mine: BTreeSet<u16> = c.exposed_ports.iter().copied().collect();
        ports = ports.intersection(&mine).copied().collect();
    }
    let health_port = ports.first().copied().unwrap_or(0);
    if ports.len() > 1 {
        let rest: Vec<String> = ports.iter().skip(1).map(u16::to_string).collect();
        notes.push(format!("they also expose {}; health.port is the lowest, check it", rest.join(", ")));
    }
    let health_network = if tenants_of.iter().any(|c| c.networks.len() > 1) {
        let mut common: BTreeSet<&String> = first.networks.iter().collect();
        for c in &tenants_of {
            let theirs: BTreeSet<&String> = c.networks.iter().collect();
            common = common.intersection(&theirs).copied().collect();
        }
        let pick = common.iter().find(|n| !matches!(n.as_str(), "bridge" | "host" | "none")).map(|n| n.to_string());
        notes.push(format!(
            "the tenants are on several networks; health.network is {}, the one the probe uses: check it",
            pick.as_deref().unwrap_or("(none in common)")
        ));
        pick
    } else {
        None
    };
    let name = app_name(repo);
    Ok((
        ProposedApp {
            image: format!("{repo}@{pinned}"),
            name,
            repository: repo.to_string(),
            select,
            select_why,
            tenant_from: match &tenant_from {
                TenantRule::Name(p, s) => format!("name:{p}{{tenant}}{s}"),
                TenantRule::Label(k) => format!("label:{k}"),
            },
            data_dir: template,
            data_mount: mount,
            health_port,
            health_path: "/".into(),
            health_checked: false,
            health_network,
            tenants,
            notes,
            stack: None,
            database: None,
        },
        left,
    ))
}

/// How tenant ids come from containers, as inferred.
enum TenantRule {
    Name(String, String),
    Label(String),
}

fn short_id(id: &str) -> &str {
    let id = id.trim_start_matches("sha256:");
    &id[..12.min(id.len())]
}

/// The volume name pattern of a data dir template that is a local volume's mountpoint
/// (`/var/lib/docker/volumes/<name>/_data`).
fn volume_of(template: &str) -> Option<&str> {
    let rest = template.strip_prefix(crate::config::VOLUMES_DIR)?.strip_prefix('/')?;
    rest.strip_suffix("/_data").filter(|n| !n.contains('/'))
}

/// A TOML string literal.
fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// `fleet.toml` for the proposed apps, each key with a comment saying where it came from.
pub fn render_fleet(apps: &[ProposedApp]) -> String {
    let mut out = String::from(
        "# fleet.toml, written by `slipway init` from the containers running on this host.\n\
         # Review each app, then commit this file to the desired-state repo: from then on a commit\n\
         # that changes an image digest is a release (see README \"Adopting a running host\").\n",
    );
    for a in apps {
        if let Some(st) = &a.stack {
            stack::render(a, st, &mut out);
            continue;
        }
        let tenants: Vec<String> = a.tenants.iter().map(|t| format!("{} ({})", t.tenant, t.container)).collect();
        out.push_str(&format!("\n[[app]]\nname = {}\n", q(&a.name)));
        out.push_str(&format!("# {} tenants: {}\n", a.tenants.len(), tenants.join(", ")));
        out.push_str(&format!("image = {}\n", q(&a.image)));
        out.push_str(&format!("# select: {}\n", a.select_why));
        out.push_str(&format!("select = {}\n", q(&a.select)));
        out.push_str(&format!("tenant_from = {}\n", q(&a.tenant_from)));
        match volume_of(&a.data_dir) {
            Some(v) => {
                out.push_str(&format!("# the named volume at {} in every tenant's container\n", a.data_mount));
                out.push_str(&format!("data_volume = {}\n", q(v)));
            }
            None => {
                out.push_str(&format!("# the bind mount at {} in every tenant's container\n", a.data_mount));
                out.push_str(&format!("data_dir = {}\n", q(&a.data_dir)));
            }
        }
        render_health(a, None, &mut out);
        for n in &a.notes {
            out.push_str(&format!("# note: {n}\n"));
        }
        if let Some(db) = &a.database {
            out.push_str(&format!(
                "# note: every tenant has a container {db} that runs a Postgres image (by its name: check it). To\n\
                 # back each tenant's database up as a database, not only its files: uncomment this table (each\n\
                 # snapshot then dumps it live inside its container, a rollout dumps it before the switch and\n\
                 # replays it on an undo, a restore replays it), and check user (add password_file if the server\n\
                 # asks for a password).\n"
            ));
            out.push_str(&format!(
                "# [app.database]\n# kind = \"postgres\"\n# container = {}\n# databases = \"all\"\n# user = \"postgres\"\n",
                q(db)
            ));
        }
    }
    out
}

/// `health = { … }` of a proposed app (`service`: a stack's health service), with the FIXMEs.
fn render_health(a: &ProposedApp, service: Option<&str>, out: &mut String) {
    if a.health_port == 0 {
        out.push_str("# FIXME: no TCP port is exposed by every tenant; set health.port to the app's HTTP port\n");
    }
    if !a.health_checked {
        out.push_str(&format!(
            "# FIXME: none of {} answered 2xx on every tenant; set health.path to the app's health endpoint\n",
            HEALTH_PATHS.join(", ")
        ));
    } else {
        out.push_str("# health.path answered 2xx on every tenant when init ran\n");
    }
    let network = a.health_network.as_ref().map_or(String::new(), |n| format!(", network = {}", q(n)));
    let service = service.map_or(String::new(), |s| format!(", service = {}", q(s)));
    out.push_str(&format!(
        "health = {{ path = {}, port = {}, timeout_s = 60{network}{service} }}\n",
        q(&a.health_path),
        if a.health_port == 0 { 80 } else { a.health_port }
    ));
}

/// The host config: defaults, and the desired repo as a placeholder to fill in.
pub fn render_config(docker_host: Option<&str>) -> String {
    let mut out = format!(
        "# slipway host config, written by `slipway init`. Keep it mode 0600. Every key and its default:\n\
         # deploy/config.example.toml (installed as /usr/share/doc/slipway/examples/config.example.toml).\n\
         state_dir = \"/var/lib/slipway\"   # state.db (the run record) and the host lock\n\
         backup_root = \"/data/backups\"    # the snapshots: a disk with room for every tenant\n\
         \n\
         [desired]\n\
         repo = {}   # the desired-state repo you push fleet.toml to: a path or a git URL\n\
         branch = \"main\"\n\
         file = \"fleet.toml\"\n\
         \n\
         [retention]\n\
         keep_daily = 7\n\
         keep_rollout_runs = 5\n",
        q(REPO_PLACEHOLDER)
    );
    if let Some(h) = docker_host {
        out.push_str(&format!("\n[docker]\nhost = {}   # $DOCKER_HOST when init ran\n", q(h)));
    }
    out.push_str(
        "\n# Off-site copies (DigitalOcean Spaces or any S3 API): uncomment and fill in, then `slipway doctor`.\n\
         # [remote]\n\
         # endpoint = \"https://nyc3.digitaloceanspaces.com\"\n\
         # bucket = \"backups\"\n\
         # prefix = \"slipway/host-1\"\n\
         # credentials_file = \"/etc/slipway/s3.credentials\"\n",
    );
    out
}

/// The three commands that take the host from here to protected.
fn next_commands(config: &Path, fleet: &Path) -> Vec<String> {
    let installed = Path::new(crate::config::DEFAULT_CONFIG_PATH);
    let check = if config == installed {
        "slipway config check".to_string()
    } else {
        format!("sudo install -D -m 600 {} {} && slipway config check", config.display(), installed.display())
    };
    vec![
        format!(
            "git init -q --bare {REPO_PLACEHOLDER} && git clone -q {REPO_PLACEHOLDER} fleet && cp {} fleet/ && \
             git -C fleet add fleet.toml && git -C fleet commit -qm \"Adopt the running tenants\" && \
             git -C fleet push -q origin HEAD:main",
            fleet.display()
        ),
        check,
        "sudo deploy/install.sh && slipway doctor   # installs and enables the timers (with the package: \
         sudo systemctl enable --now slipway-reconcile.timer slipway-snapshot.timer slipway-sync.timer \
         slipway-prune.timer slipway-verify.timer slipway-drill.timer)"
            .to_string(),
    ]
}

impl fmt::Display for InitReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} running container(s) looked at: {} app(s) proposed, {} container(s) skipped",
            self.containers,
            self.apps.len(),
            self.skipped.len()
        )?;
        for a in &self.apps {
            let ids: Vec<&str> = a.tenants.iter().map(|t| t.tenant.as_str()).collect();
            writeln!(f, "\napp {} ({} tenants: {})", a.name, a.tenants.len(), ids.join(", "))?;
            writeln!(f, "  image        {}", a.image)?;
            writeln!(f, "  select       {}   ({})", a.select, a.select_why)?;
            writeln!(f, "  tenant_from  {}", a.tenant_from)?;
            match &a.stack {
                Some(st) => {
                    for s in &st.services {
                        let data = if s.writes { format!(", writes {}", s.data.join(", ")) } else { String::new() };
                        writeln!(f, "  service      {} (order {}{data}): {}", s.name, s.order, s.image)?;
                    }
                }
                None => writeln!(f, "  data_dir     {}   (mounted at {})", a.data_dir, a.data_mount)?,
            }
            let checked = if a.health_checked { "answered 2xx on every tenant" } else { "FIXME: not confirmed" };
            writeln!(f, "  health       port {} path {}   ({checked})", a.health_port, a.health_path)?;
            for n in &a.notes {
                writeln!(f, "  note: {n}")?;
            }
        }
        if !self.skipped.is_empty() {
            writeln!(f, "\nskipped:")?;
            for s in &self.skipped {
                writeln!(f, "  {} ({}): {}", s.container, s.image, s.reason)?;
            }
        }
        if self.apps.is_empty() {
            return writeln!(f, "\nno app to adopt: nothing was written");
        }
        if self.dry_run {
            writeln!(
                f,
                "\n--dry-run: nothing was written. {} would be:\n{}",
                self.config.path.display(),
                self.config.text
            )?;
            writeln!(f, "{} would be:\n{}", self.fleet.path.display(), self.fleet.text)?;
        } else {
            writeln!(
                f,
                "\nwrote {} (mode 0600) and {}; both load as `slipway config check` loads them",
                self.config.path.display(),
                self.fleet.path.display()
            )?;
        }
        writeln!(f, "\nnext (set desired.repo in the host config if your repo lives elsewhere):")?;
        for (i, c) in self.next.iter().enumerate() {
            writeln!(f, "  {}. {c}", i + 1)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::docker::Bind;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    /// A running container of `image` (`repo:tag`) whose image has `digest` in `repo`.
    pub(crate) fn c(
        name: &str,
        image: &str,
        digest: Option<&str>,
        labels: &[(&str, &str)],
        binds: &[(&str, &str)],
    ) -> HostContainer {
        let repo = image.rsplit_once(':').map_or(image, |(r, _)| r);
        HostContainer {
            name: name.into(),
            running: true,
            image_ref: image.into(),
            image_id: format!("sha256:{}", "ab".repeat(32)),
            repo_tags: vec![image.into()],
            repo_digests: digest.map(|d| vec![format!("{repo}@{d}")]).unwrap_or_default(),
            image_labels: [("org.opencontainers.image.title".to_string(), repo.to_string())].into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .chain([("org.opencontainers.image.title".to_string(), repo.to_string())])
                .collect(),
            binds: binds.iter().map(|(s, d)| Bind { source: s.to_string(), destination: d.to_string() }).collect(),
            volumes: vec![],
            tmpfs: vec![],
            read_only: vec![],
            exposed_ports: vec![8080],
            networks: vec!["front".into()],
        }
    }

    #[test]
    fn the_repository_comes_from_the_reference_or_the_images_names() {
        let mut x = c("a", "reg.example:5000/team/shop:v1", None, &[], &[]);
        let cases: &[(&str, &[&str], Option<&str>)] = &[
            ("reg.example:5000/team/shop:v1", &[], Some("reg.example:5000/team/shop")),
            ("reg.example:5000/team/shop", &[], Some("reg.example:5000/team/shop")),
            (&format!("ghcr.io/x/pulse@{D1}"), &[], Some("ghcr.io/x/pulse")),
            (&format!("ghcr.io/x/pulse:v2@{D1}"), &[], Some("ghcr.io/x/pulse")),
            ("nginx", &[], Some("nginx")),
            // Created from an image id: the image's own names say the repository.
            ("abababababab", &["ghcr.io/x/blog@sha256:0"], Some("ghcr.io/x/blog")),
            (&format!("sha256:{}", "ab".repeat(32)), &[], None),
        ];
        for (image_ref, digests, want) in cases {
            x.image_ref = image_ref.to_string();
            x.repo_tags = vec![];
            x.repo_digests = digests.iter().map(|s| s.to_string()).collect();
            assert_eq!(repository_of(&x).as_deref(), *want, "{image_ref}");
        }
        // The digest: from a pinned reference, else the image's digest in that repository.
        let y = c("b", "nginx:1.25", Some(D1), &[], &[]);
        assert_eq!(digest_of(&y, "docker.io/library/nginx").map(|d| d.to_string()).as_deref(), Some(D1));
        assert_eq!(digest_of(&y, "ghcr.io/other/nginx"), None);
        let mut z = y.clone();
        z.image_ref = format!("nginx@{D2}");
        assert_eq!(digest_of(&z, "nginx").map(|d| d.to_string()).as_deref(), Some(D2));
    }

    #[test]
    fn tenant_ids_come_from_the_names_common_prefix_and_suffix_cut_at_a_separator() {
        type Case<'a> = (&'a [&'a str], Option<(&'a str, &'a str)>);
        let cases: &[Case] = &[
            (&["shop-t1", "shop-t2"], Some(("shop-", ""))),
            (&["shop-acme", "shop-apex", "shop-zed"], Some(("shop-", ""))),
            (&["acme-web", "apex-web"], Some(("", "-web"))),
            (&["x1-shop-a.web", "x1-shop-b.web"], Some(("x1-shop-", ".web"))),
            (&["shop1", "shop2"], None),
            (&["acme", "apex"], None),
            // A separator inside the tenant id is kept in the id.
            (&["pulse-t-1", "pulse-t-2"], Some(("pulse-t-", ""))),
        ];
        for (names, want) in cases {
            let got = name_pattern(names);
            assert_eq!(got.as_ref().map(|(p, s)| (p.as_str(), s.as_str())), *want, "{names:?}");
        }
    }

    #[test]
    fn a_data_dir_template_substitutes_the_tenant_id_in_the_bind_source() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("/data/tenants/t1", "t1", Some("/data/tenants/{tenant}")),
            ("/srv/t1/data", "t1", Some("/srv/{tenant}/data")),
            ("/data/shop-t1", "t1", Some("/data/shop-{tenant}")),
            // "a" is in "data" too: only a whole path part, or the last part, is replaced.
            ("/data/a", "a", Some("/data/{tenant}")),
            ("/data/tenants/shared", "t1", None),
            ("/data/t1t1", "t1", None),
            ("relative/t1", "t1", None),
        ];
        for (source, tenant, want) in cases {
            assert_eq!(data_template(source, tenant).as_deref(), *want, "{source} / {tenant}");
        }
    }

    /// Two apps, a labelled one and a name-only one, beside strays of every kind.
    fn host() -> Vec<HostContainer> {
        vec![
            c("shop-t1", "reg/shop:v1", Some(D1), &[("app", "shop"), ("common", "x")], &[("/data/shop/t1", "/data")]),
            c("shop-t2", "reg/shop:v1", Some(D1), &[("app", "shop"), ("common", "x")], &[("/data/shop/t2", "/data")]),
            c("shop-t3", "reg/shop:v0", Some(D2), &[("app", "shop"), ("common", "x")], &[("/data/shop/t3", "/data")]),
            c("blog-b1", "reg/blog:v1", Some(D1), &[("common", "x")], &[("/srv/blog-b1", "/var/lib/blog")]),
            c("blog-b2", "reg/blog:v1", Some(D1), &[("common", "x")], &[("/srv/blog-b2", "/var/lib/blog")]),
            // A one-off of another image.
            c("traefik", "traefik:v3", Some(D1), &[("common", "x")], &[("/etc/traefik", "/etc/traefik")]),
            // Same image as the shop, but no data bind.
            c("shop-debug", "reg/shop:v1", Some(D1), &[("common", "x")], &[]),
            // Built locally: no registry digest.
            c("cron-a", "local/cron:dev", None, &[], &[("/data/cron/a", "/data")]),
            c("cron-b", "local/cron:dev", None, &[], &[("/data/cron/b", "/data")]),
        ]
    }

    #[test]
    fn init_proposes_one_app_per_repository_and_skips_the_strays_with_the_reason() {
        let p = propose(&host(), None);
        assert_eq!(p.containers, 9);
        let shop = &p.apps.iter().find(|a| a.name == "shop").unwrap();
        assert_eq!(shop.select, "app=shop");
        assert_eq!(shop.tenant_from, "name:shop-{tenant}");
        assert_eq!(shop.data_dir, "/data/shop/{tenant}");
        assert_eq!(shop.data_mount, "/data");
        assert_eq!(shop.image, format!("reg/shop@{D1}"), "the digest most tenants run");
        assert_eq!(shop.health_port, 8080);
        let ids: Vec<&str> = shop.tenants.iter().map(|t| t.tenant.as_str()).collect();
        assert_eq!(ids, ["t1", "t2", "t3"]);
        assert!(shop.notes.iter().any(|n| n.contains("tenant t3") && n.contains("first rollout")), "{:?}", shop.notes);

        // No label is the blog's alone (the image's own label does not count): its names are.
        let blog = p.apps.iter().find(|a| a.name == "blog").unwrap();
        assert_eq!(blog.select, "name:blog-*");
        assert_eq!(blog.tenant_from, "name:blog-{tenant}");
        assert_eq!(blog.data_dir, "/srv/blog-{tenant}");
        assert_eq!(p.apps.len(), 2);

        let reason = |name: &str| p.skipped.iter().find(|s| s.container == name).unwrap().reason.clone();
        assert!(reason("traefik").contains("one-off"), "{}", reason("traefik"));
        assert!(reason("shop-debug").contains("no bind mount"), "{}", reason("shop-debug"));
        for cron in ["cron-a", "cron-b"] {
            let r = reason(cron);
            assert!(r.contains("no registry digest") && r.contains("push it to a registry"), "{r}");
        }
        assert_eq!(p.skipped.len(), 4);

        // The written fleet parses with the loader `config check` uses.
        let mut apps = p.apps.clone();
        apps[0].health_checked = true;
        let fleet = Fleet::parse(&render_fleet(&apps), "fleet.toml").unwrap();
        assert_eq!(fleet.apps.len(), 2);
        HostConfig::parse(&render_config(Some("unix:///run/docker.sock")), "config.toml", std::iter::empty()).unwrap();
    }

    #[test]
    fn a_selector_that_would_also_match_a_container_of_another_image_is_not_proposed() {
        let cases: Vec<(&str, Vec<HostContainer>, Option<&str>)> = vec![
            // A stopped container of another image carries the shop's label: the name is used.
            (
                "label shared with another image",
                {
                    let mut h = host();
                    let mut old = c("legacy", "reg/legacy:1", Some(D1), &[("app", "shop")], &[]);
                    old.running = false;
                    h.push(old);
                    h
                },
                Some("name:shop-*"),
            ),
            // ...and when another image's container also starts with the prefix, nothing fits.
            (
                "label and prefix shared",
                {
                    let mut h = host();
                    let mut old = c("shop-legacy", "reg/legacy:1", Some(D1), &[("app", "shop")], &[]);
                    old.running = false;
                    h.push(old);
                    h
                },
                None,
            ),
        ];
        for (what, h, want) in cases {
            let p = propose(&h, None);
            let shop = p.apps.iter().find(|a| a.repository == "reg/shop").map(|a| a.select.as_str());
            assert_eq!(shop, want, "{what}");
            if want.is_none() {
                assert!(
                    p.skipped.iter().any(|s| s.container == "shop-t1" && s.reason.contains("nothing tells")),
                    "{what}"
                );
            }
        }
    }

    #[test]
    fn a_tenant_label_wins_over_the_names_and_the_scope_limits_what_is_looked_at() {
        let h = vec![
            c("a1", "reg/app:1", Some(D1), &[("app.tenant", "acme"), ("app", "a")], &[("/d/acme", "/data")]),
            c("a2", "reg/app:1", Some(D1), &[("app.tenant", "apex"), ("app", "a")], &[("/d/apex", "/data")]),
            c("other-1", "reg/other:1", Some(D1), &[], &[("/o/1", "/data")]),
            c("other-2", "reg/other:1", Some(D1), &[], &[("/o/2", "/data")]),
        ];
        let p = propose(&h, None);
        assert_eq!(p.apps[0].tenant_from, "label:app.tenant");
        assert_eq!(p.apps[0].data_dir, "/d/{tenant}");
        assert_eq!(p.apps.len(), 2);
        let only: Selector = "app=a".parse().unwrap();
        let p = propose(&h, Some(&only));
        assert_eq!((p.containers, p.apps.len(), p.skipped.len()), (2, 1, 0));
        let only: Selector = "name:other-*".parse().unwrap();
        assert_eq!(propose(&h, Some(&only)).apps[0].name, "other");
    }

    /// Issue #26 item 1: tenants whose data is a named volume (compose's `<project>_data`, as
    /// the engine lists it: a bind of the volume's mountpoint) are proposed with `data_volume`,
    /// and the fleet it renders parses.
    #[test]
    fn init_proposes_data_volume_for_tenants_whose_data_is_a_named_volume() {
        let vol = |t: &str| format!("/var/lib/docker/volumes/cf-agent-{t}_data/_data");
        let (v1, v2) = (vol("c1"), vol("c2"));
        let host = vec![
            c("cf-agent-c1", "reg/agent:v1", Some(D1), &[("app", "agent")], &[(&v1, "/app/data")]),
            c("cf-agent-c2", "reg/agent:v1", Some(D1), &[("app", "agent")], &[(&v2, "/app/data")]),
        ];
        let p = propose(&host, None);
        assert_eq!(p.apps.len(), 1, "{:?}", p.skipped);
        let text = render_fleet(&p.apps);
        assert!(text.contains("data_volume = \"cf-agent-{tenant}_data\""), "{text}");
        assert!(!text.contains("data_dir ="), "{text}");
        let app =
            crate::config::Fleet::parse(&text, "proposal").unwrap_or_else(|e| panic!("{e}\n{text}")).apps[0].clone();
        assert_eq!(app.data_dir_of(&"c1".parse().unwrap()), std::path::PathBuf::from(v1));
        assert_eq!(app.data_volume_of(&"c1".parse().unwrap()).as_deref(), Some("cf-agent-c1_data"));
    }

    #[test]
    fn a_postgres_container_per_tenant_is_proposed_commented_as_the_apps_database() {
        let app =
            |t: &str| c(&format!("pulse-{t}"), "reg/pulse:v1", Some(D1), &[], &[(&format!("/srv/pulse/{t}"), "/data")]);
        let pg = |t: &str| {
            c(
                &format!("pg-{t}"),
                "postgres:16",
                Some(D2),
                &[],
                &[(&format!("/srv/pg/{t}"), "/var/lib/postgresql/data")],
            )
        };
        let host = vec![app("t1"), app("t2"), app("t10"), pg("t1"), pg("t2"), pg("t10")];
        let p = propose(&host, None);
        let pulse = p.apps.iter().find(|a| a.name == "pulse").unwrap();
        assert_eq!(pulse.database.as_deref(), Some("pg-{tenant}"));
        // The Postgres containers proposed as an app of their own say what they are.
        let pgs = p.apps.iter().find(|a| a.name == "postgres").expect("the pg containers' app");
        assert!(pgs.database.is_none());
        assert!(pgs.notes.iter().any(|n| n.contains("databases of app pulse's tenants")), "{:?}", pgs.notes);
        // As written it declares nothing; uncommented as its note says, it parses.
        let mut apps = p.apps.clone();
        for a in &mut apps {
            a.health_checked = true;
        }
        let text = render_fleet(&apps);
        let f = Fleet::parse(&text, "fleet.toml").unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert!(f.apps.iter().all(|a| a.database.is_none()));
        let mut uncommented = String::new();
        let mut in_db = false;
        for line in text.lines() {
            in_db = (in_db || line == "# [app.database]") && !line.starts_with("[[app]]");
            uncommented.push_str(if in_db { line.strip_prefix("# ").unwrap_or(line) } else { line });
            uncommented.push('\n');
        }
        let f = Fleet::parse(&uncommented, "fleet.toml").unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
        let d = f.app("pulse").unwrap().database.as_ref().expect("the table parsed");
        assert_eq!(d.container_of(&"t10".parse().unwrap()), "pg-t10");
        // A tenant without a database container of that name: nothing is proposed.
        let p = propose(&[app("t1"), app("t2"), pg("t1")], None);
        assert!(p.apps.iter().all(|a| a.database.is_none()));
    }
}
