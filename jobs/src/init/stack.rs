//! `init`'s proposal for tenants that are stacks: containers grouped by their compose project
//! (`com.docker.compose.project` and `.service`, or Coolify's `coolify.resourceName` and
//! `coolify.service`), projects of the same shape (the same services, each on the same image
//! repository with the same data mounts) proposed as one app with `[app.stack]` and one
//! `[app.services.<name>]` each. A project of one service is no stack: the single-container
//! proposal takes it.
//!
//! Invariants: a project is proposed whole or not at all, and one that is not has every
//! container listed with the reason; a project name is proposed only when it is a valid tenant
//! id and a service only when its name is a valid service name (neither ever reaches a path
//! here); a data mount is a writable dir on this host as `lstat` sees it — a symlink, a file, a
//! tmpfs, an anonymous volume or another driver's volume is named with the fix, never followed.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::{app_name, common_affixes, digest_of, operator_labels, repository_of, Left, ProposedApp, ProposedTenant};
use crate::adapters::docker::HostContainer;
use crate::config::stack::{depends_on, start_order, COMPOSE_DEPENDS_ON, COMPOSE_PROJECT, COMPOSE_SERVICE};
use crate::trust::normalise_repo;
use crate::types::TenantId;

/// The label pairs (group, service) that make a container one service of a stack, in the order
/// they are tried.
pub const STACK_LABELS: &[(&str, &str)] =
    &[(COMPOSE_PROJECT, COMPOSE_SERVICE), ("coolify.resourceName", "coolify.service")];

/// Services whose name says they answer HTTP, preferred for the app's health check.
const FRONT_NAMES: &[&str] = &["app", "web", "server", "api", "frontend"];

/// A proposed stack: `[app.stack]` and its `[app.services]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProposedStack {
    /// `stack.group`: the label grouping a tenant's containers; its value is the tenant id.
    pub group: String,
    /// `stack.service_label`.
    pub service_label: String,
    /// The service whose container answers the app's HTTP check (`health.service`).
    pub health_service: String,
    /// Every service, by name.
    pub services: Vec<ProposedService>,
    /// A service whose image's name says Postgres: `[app.database]` proposed for it, commented
    /// out (an image name proposes a database, it never declares one).
    pub database: Option<ProposedDatabase>,
}

/// A commented `[app.database]` for a stack's Postgres service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProposedDatabase {
    /// The service.
    pub service: String,
    /// `container`: its containers' name with the tenant id as `{tenant}`.
    pub container: String,
}

/// Whether the repository `repo` names a Postgres server image (`postgres`, `bitnami/postgresql`,
/// `postgis/postgis`, `timescale/timescaledb`): by its last path component only.
pub(super) fn is_postgres_repo(repo: &str) -> bool {
    let last = repo.rsplit('/').next().unwrap_or(repo).to_ascii_lowercase();
    ["postgres", "postgresql", "postgis", "timescaledb", "timescaledb-ha"].contains(&last.as_str())
}

/// One proposed `[app.services.<name>]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProposedService {
    /// Its name (the service label's value).
    pub name: String,
    /// `repo@digest`: the digest most tenants run.
    pub image: String,
    /// It mounts data writable.
    pub writes: bool,
    /// Start order: `depends_on` where the labels say, else by name.
    pub order: i64,
    /// The container paths of its data mounts.
    pub data: Vec<String>,
}

/// What a host path is, as `lstat` sees it (a symlink is never followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKind {
    /// A directory.
    Dir,
    /// A symlink.
    Symlink,
    /// A regular file.
    File,
    /// A socket, fifo or device: holds nothing a copy could take.
    Special,
    /// Not there (or not readable).
    Missing,
}

/// `lstat` of `path`.
pub fn host_kind(path: &str) -> HostKind {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => HostKind::Symlink,
        Ok(m) if m.is_dir() => HostKind::Dir,
        Ok(m) if m.is_file() => HostKind::File,
        Ok(m) if m.file_type().is_socket() || m.file_type().is_fifo() || m.file_type().is_char_device() => {
            HostKind::Special
        }
        Ok(m) if m.file_type().is_block_device() => HostKind::Special,
        _ => HostKind::Missing,
    }
}

/// What the stack proposal made of the candidates.
pub(super) struct Stacks<'a> {
    /// One app per shape of project.
    pub apps: Vec<ProposedApp>,
    /// The containers of projects that are not proposed, with the reason.
    pub left: Left<'a>,
    /// Containers of no stack (no stack labels, or a project of one service): the
    /// single-container proposal takes them.
    pub rest: Vec<&'a HostContainer>,
}

/// One compose project, checked.
struct Project<'a> {
    name: String,
    tenant: TenantId,
    /// Service → its container.
    members: BTreeMap<String, &'a HostContainer>,
    /// Service → (normalised repository, repository, data mounts).
    shape: BTreeMap<String, (String, String, Vec<String>)>,
}

/// Whether `s` may name a service: what fleet.toml accepts (letters, digits, `-`, `_`, `.`,
/// starting with a letter or digit, at most 63).
pub fn service_name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// How an operator names a bind's source: a named volume by its name, else the host path.
fn describe(source: &str, destination: &str) -> String {
    match super::volume_of(source) {
        Some(v) => format!("volume \"{v}\" at {destination}"),
        None => format!("bind mount {source} at {destination}"),
    }
}

/// Propose the stacks among `candidates`; `all` is every container on the host (a selector
/// must match no container outside the app), `kind` says what a host path is.
pub(super) fn propose_stacks<'a>(
    candidates: &[&'a HostContainer],
    all: &[HostContainer],
    kind: &dyn Fn(&str) -> HostKind,
) -> Stacks<'a> {
    let mut out = Stacks { apps: Vec::new(), left: Vec::new(), rest: Vec::new() };
    // (group label, service label, project) → its containers.
    let mut projects: BTreeMap<(&str, &str, String), Vec<&'a HostContainer>> = BTreeMap::new();
    for &c in candidates {
        let pair = STACK_LABELS.iter().find(|(g, s)| c.labels.contains_key(*g) && c.labels.contains_key(*s));
        match pair {
            Some((g, s)) => projects.entry((g, s, c.labels[*g].clone())).or_default().push(c),
            None => out.rest.push(c),
        }
    }
    // (group, service label, shape) → the projects of that shape.
    type Shape = Vec<(String, String, Vec<String>)>;
    let mut shapes: BTreeMap<(&str, &str, Shape), Vec<Project<'a>>> = BTreeMap::new();
    for ((group, service_label, name), members) in projects {
        let services: BTreeSet<&str> = members.iter().map(|c| c.labels[service_label].as_str()).collect();
        if services.len() < 2 {
            out.rest.extend(members);
            continue;
        }
        // Every container of the project is one of the tenant's services to snapshot and
        // restore: one that is stopped or out of scope would be refused by them.
        let others: Vec<String> = all
            .iter()
            .filter(|c| c.labels.get(group) == Some(&name) && !members.iter().any(|m| m.name == c.name))
            .filter(|c| !crate::naming::is_set_aside(&c.name) && !crate::naming::is_drill(&c.name))
            .map(|c| format!("{} ({})", c.name, if c.running { "out of --only's scope" } else { "not running" }))
            .collect();
        if !others.is_empty() {
            let why = format!(
                "compose project {name} has other containers: {}; slipway takes every container of a project as one \
                 service of the tenant, running: start or remove them (docker-compose rm for a one-off that has \
                 exited), or widen --only, then run init again",
                others.join(", ")
            );
            out.left.extend(members.iter().map(|c| (*c, why.clone())));
            continue;
        }
        match project(group, service_label, &name, &members, kind) {
            Ok(p) => {
                let shape: Shape = p.shape.iter().map(|(s, (k, _, d))| (s.clone(), k.clone(), d.clone())).collect();
                shapes.entry((group, service_label, shape)).or_default().push(p);
            }
            Err(why) => out.left.extend(members.iter().map(|c| (*c, why.clone()))),
        }
    }
    for ((group, service_label, _), projects) in shapes {
        match stack_app(group, service_label, &projects, all) {
            Ok(app) => out.apps.push(app),
            Err(why) => {
                out.left.extend(projects.iter().flat_map(|p| p.members.values().map(|c| (*c, why.clone()))));
            }
        }
    }
    out
}

/// One project checked: a valid tenant id, valid service names, one container each, an image
/// repository each, and every writable mount a data dir (or a socket or device).
fn project<'a>(
    group: &str,
    service_label: &str,
    name: &str,
    members: &[&'a HostContainer],
    kind: &dyn Fn(&str) -> HostKind,
) -> Result<Project<'a>, String> {
    let tenant: TenantId = name.parse().map_err(|e| {
        format!(
            "its {group} label names the project {name:?}, which is no valid tenant id ({e}): slipway names a \
             tenant's backups after it; recreate the project under a name of letters, digits, '-', '_' and '.' \
             that starts with a letter or digit, at most 63 characters (docker-compose -p NAME), then run init \
             again"
        )
    })?;
    let mut by_service: BTreeMap<String, &'a HostContainer> = BTreeMap::new();
    for &c in members {
        let svc = &c.labels[service_label];
        if !service_name_ok(svc) {
            return Err(format!(
                "compose project {name}: container {} is service {svc:?} (label {service_label}), which is no valid \
                 service name (letters, digits, '-', '_' and '.', starting with a letter or digit, at most 63): \
                 rename the service in the project, then run init again",
                c.name
            ));
        }
        if let Some(other) = by_service.insert(svc.clone(), c) {
            return Err(format!(
                "compose project {name}: service {svc:?} has several containers ({}, {}); slipway backs up one \
                 container per service: scale it to one or remove the container that is not the project's, then \
                 run init again",
                other.name, c.name
            ));
        }
    }
    let mut shape = BTreeMap::new();
    for (svc, c) in &by_service {
        let at = |why: String| format!("compose project {name}: service {svc} (container {}): {why}", c.name);
        let Some(repo) = repository_of(c) else {
            return Err(at(format!(
                "its image {} has no repository name; push it to a registry and recreate the service from that \
                 repo@sha256:… reference",
                c.image_id
            )));
        };
        let mut data = Vec::new();
        for b in &c.binds {
            if c.read_only.contains(&b.destination) {
                continue;
            }
            let what = describe(&b.source, &b.destination);
            match kind(&b.source) {
                HostKind::Dir => data.push(b.destination.clone()),
                HostKind::Special => {}
                HostKind::Symlink => {
                    return Err(at(format!(
                        "its {what} is a symlink on the host ({}); slipway never follows one: mount the real dir",
                        b.source
                    )))
                }
                HostKind::File => {
                    return Err(at(format!(
                        "its {what} is a writable file, not a dir slipway could copy and swap back: mount it \
                         read-only, or list {} in the app's scratch_mounts if it holds no customer data",
                        b.destination
                    )))
                }
                HostKind::Missing => return Err(at(format!("its {what} is not on this host ({})", b.source))),
            }
        }
        if let Some(v) = c.volumes.iter().find(|v| !c.read_only.contains(v)) {
            return Err(at(format!(
                "its volume at {v} is anonymous or not of the local driver, so it is no dir on this host slipway \
                 could copy or re-attach by name: make it a named volume of the local driver (or, if it holds no \
                 customer data, list {v} in the app's scratch_mounts)"
            )));
        }
        if let Some(t) = c.tmpfs.first() {
            return Err(at(format!(
                "its tmpfs at {t} holds nothing across a restart, and a writable mount that is neither data nor \
                 scratch is refused by the rollout's plan: add scratch_mounts = [\"{t}\"] to the app by hand"
            )));
        }
        data.sort();
        data.dedup();
        shape.insert(svc.clone(), (normalise_repo(&repo), repo, data));
    }
    Ok(Project { name: name.to_string(), tenant, members: by_service, shape })
}

/// The app for projects of one shape, or why none fits.
fn stack_app(
    group: &str,
    service_label: &str,
    projects: &[Project],
    all: &[HostContainer],
) -> Result<ProposedApp, String> {
    let first = &projects[0];
    let names: Vec<String> = first.shape.keys().cloned().collect();
    let which =
        |svc: &str| -> Vec<(&Project, &HostContainer)> { projects.iter().map(|p| (p, p.members[svc])).collect() };
    // Images: the digest most tenants run, per service.
    let mut notes = Vec::new();
    let mut images = BTreeMap::new();
    for svc in &names {
        let repo = &first.shape[svc].1;
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for (_, c) in which(svc) {
            if let Some(d) = digest_of(c, repo) {
                *counts.entry(d.to_string()).or_default() += 1;
            }
        }
        let Some(pin) = counts.iter().max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0))).map(|(d, _)| d.clone())
        else {
            return Err(format!(
                "service {svc} runs {}, an image with no registry digest (built or loaded on this host?): slipway pins \
                 images by digest; push it to a registry and recreate the service from {repo}@sha256:<digest>, then \
                 run init again",
                first.members[svc].image_ref
            ));
        };
        for (p, c) in which(svc) {
            match digest_of(c, repo) {
                Some(d) if d.to_string() == pin => {}
                _ => notes.push(format!(
                    "tenant {} runs another image of service {svc} than the pinned {}: the first rollout moves it to \
                     the pin",
                    p.tenant,
                    &pin[..19.min(pin.len())]
                )),
            }
        }
        images.insert(svc.clone(), format!("{repo}@{pin}"));
    }
    // Start order: compose's depends_on labels (of the first project) over the names' order.
    let mut deps = BTreeMap::new();
    for svc in &names {
        if let Some(l) = first.members[svc].labels.get(COMPOSE_DEPENDS_ON) {
            deps.insert(svc.clone(), depends_on(l));
        }
    }
    let order = start_order(&names, &deps);
    // Health: a service every tenant's container of exposes a TCP port, a front one first.
    let ports_of = |svc: &str| -> BTreeSet<u16> {
        let mut it = which(svc).into_iter().map(|(_, c)| c.exposed_ports.iter().copied().collect::<BTreeSet<u16>>());
        let first = it.next().unwrap_or_default();
        it.fold(first, |a, b| a.intersection(&b).copied().collect())
    };
    let with_port: Vec<&String> = order.iter().filter(|s| !ports_of(s).is_empty()).collect();
    let health_service = FRONT_NAMES
        .iter()
        .find_map(|f| with_port.iter().find(|s| s.as_str() == *f))
        .or(with_port.first())
        .map_or_else(|| order[0].clone(), |s| s.to_string());
    let ports = ports_of(&health_service);
    let health_port = ports.first().copied().unwrap_or(0);
    if with_port.len() > 1 {
        let others: Vec<&str> = with_port.iter().map(|s| s.as_str()).filter(|s| *s != health_service).collect();
        notes.push(format!(
            "services {} expose ports too; health.service is {health_service}, the one customers reach: check it",
            others.join(", ")
        ));
    }
    if ports.len() > 1 {
        notes.push(format!("service {health_service} exposes several ports; health.port is the lowest, check it"));
    }
    let health_network = if which(&health_service).iter().any(|(_, c)| c.networks.len() > 1) {
        notes.push(format!(
            "service {health_service}'s containers are on several networks; set health.network to the one the probe \
             should use (a network every tenant's container of {health_service} is on)"
        ));
        let mut common: Option<BTreeSet<&String>> = None;
        for (_, c) in which(&health_service) {
            let theirs: BTreeSet<&String> = c.networks.iter().collect();
            common = Some(match common {
                None => theirs,
                Some(x) => x.intersection(&theirs).copied().collect(),
            });
        }
        common.unwrap_or_default().into_iter().find(|n| !matches!(n.as_str(), "bridge" | "host" | "none")).cloned()
    } else {
        None
    };
    // select: a label every container of these projects carries and no other container does
    // (compose's own labels describe one project, not the app); else their names' prefix.
    let members: Vec<&HostContainer> = projects.iter().flat_map(|p| p.members.values().copied()).collect();
    let mine: BTreeSet<&str> = members.iter().map(|c| c.name.as_str()).collect();
    let others = || all.iter().filter(|c| !mine.contains(c.name.as_str()) && !crate::naming::is_pre_rollout(&c.name));
    let mut shared: Vec<(&String, &String)> = operator_labels(members[0])
        .filter(|(k, _)| !k.starts_with("com.docker.compose.") && k.as_str() != group && k.as_str() != service_label)
        .filter(|(k, v)| members.iter().all(|c| c.labels.get(*k) == Some(*v) && c.image_labels.get(*k) != Some(*v)))
        .collect();
    shared.sort();
    let label = shared.into_iter().find(|(k, v)| !others().any(|c| c.labels.get(*k) == Some(*v)));
    let member_names: Vec<&str> = members.iter().map(|c| c.name.as_str()).collect();
    let (prefix, _) = common_affixes(&member_names);
    let (select, select_why) = if let Some((k, v)) = label {
        (
            format!("{k}={v}"),
            format!("the label {k}={v}: these projects' containers carry it and no other container does"),
        )
    } else if !prefix.is_empty() && !others().any(|c| c.name.starts_with(&prefix)) {
        (
            format!("name:{prefix}*"),
            format!("names starting with {prefix}: no label is theirs alone, and no other container's name starts so"),
        )
    } else {
        let ps: Vec<&str> = projects.iter().map(|p| p.name.as_str()).collect();
        return Err(format!(
            "nothing tells the containers of the projects {} from the others: no label only they carry and no name \
             prefix only they share; label their services (labels: {{ app: {} }} in the compose file) and `up -d` \
             them, then run init again",
            ps.join(", "),
            app_name(&first.shape[&health_service].1)
        ));
    };
    let mut tenants: Vec<ProposedTenant> = projects
        .iter()
        .map(|p| {
            let c = p.members[&health_service];
            ProposedTenant {
                tenant: p.tenant.to_string(),
                container: c.name.clone(),
                digest: digest_of(c, &first.shape[&health_service].1).map(|d| d.to_string()),
            }
        })
        .collect();
    tenants.sort_by(|a, b| a.tenant.cmp(&b.tenant));
    let services = names
        .iter()
        .map(|svc| {
            let data = first.shape[svc].2.clone();
            ProposedService {
                name: svc.clone(),
                image: images[svc].clone(),
                writes: !data.is_empty(),
                order: order.iter().position(|o| o == svc).map_or(0, |i| i as i64 + 1),
                data,
            }
        })
        .collect();
    // A Postgres service, by its image's name: proposed, commented, when every tenant's
    // container of it is named after the tenant the same way.
    let database = order.iter().find(|s| is_postgres_repo(&first.shape[s.as_str()].1)).and_then(|svc| {
        let template = |p: &Project| {
            let name = &p.members[svc.as_str()].name;
            (name.matches(p.tenant.as_str()).count() == 1).then(|| name.replacen(p.tenant.as_str(), "{tenant}", 1))
        };
        let container = template(first)?;
        projects
            .iter()
            .all(|p| template(p).as_deref() == Some(container.as_str()))
            .then(|| ProposedDatabase { service: svc.clone(), container })
    });
    let repo = first.shape[&health_service].1.clone();
    Ok(ProposedApp {
        name: app_name(&repo),
        image: images[&health_service].clone(),
        repository: repo,
        select,
        select_why,
        tenant_from: format!("label:{group}"),
        data_dir: String::new(),
        data_mount: String::new(),
        health_port,
        health_path: "/".into(),
        health_checked: false,
        health_network,
        tenants,
        notes,
        stack: Some(ProposedStack {
            group: group.to_string(),
            service_label: service_label.to_string(),
            health_service,
            services,
            database,
        }),
        database: None,
    })
}

/// `[[app]]` of a proposed stack, each key with a comment saying where it came from.
pub(super) fn render(a: &ProposedApp, st: &ProposedStack, out: &mut String) {
    use super::q;
    let tenants: Vec<String> = a.tenants.iter().map(|t| t.tenant.clone()).collect();
    out.push_str(&format!("\n[[app]]\nname = {}\n", q(&a.name)));
    out.push_str(&format!(
        "# {} tenants, each a stack (its containers grouped by the label {}, the tenant id its value): {}\n",
        a.tenants.len(),
        st.group,
        tenants.join(", ")
    ));
    out.push_str(&format!("# select: {}\n", a.select_why));
    out.push_str(&format!("select = {}\n", q(&a.select)));
    super::render_health(a, Some(&st.health_service), out);
    for n in &a.notes {
        out.push_str(&format!("# note: {n}\n"));
    }
    out.push_str(&format!("[app.stack]\ngroup = {}\nservice_label = {}\n", q(&st.group), q(&st.service_label)));
    for s in &st.services {
        // A bare key when it can be one: a '.' would make it a dotted key.
        let bare = s.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
        let key = if bare { s.name.clone() } else { q(&s.name) };
        out.push_str(&format!("[app.services.{key}]\n"));
        out.push_str(&format!("image = {}\n", q(&s.image)));
        if s.writes {
            let data: Vec<String> = s.data.iter().map(|d| q(d)).collect();
            out.push_str(
                "# it mounts these dirs or local volumes writable: its data, copied and swapped back as one\n",
            );
            out.push_str(&format!("writes = true\ndata = [{}]\n", data.join(", ")));
        }
        out.push_str(&format!("order = {}\n", s.order));
    }
    if let Some(db) = &st.database {
        out.push_str(&format!(
            "# note: service {} runs a Postgres image (by its name: check it). To back it up as a database, not as\n\
             # files under a running server: uncomment this table (each snapshot then dumps it live inside its\n\
             # container, a rollout dumps it before the switch and replays it on an undo), drop its `writes` and\n\
             # `data` above (its data is the database, kept by its dumps), and check user (add password_file\n\
             # if the server asks for a password).\n",
            db.service
        ));
        out.push_str(&format!(
            "# [app.database]\n# kind = \"postgres\"\n# container = {}\n# databases = \"all\"\n# user = \"postgres\"\n",
            q(&db.container),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::super::{propose_with, render_fleet, tests::c};
    use super::*;
    use crate::config::Fleet;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn vol(p: &str, v: &str) -> String {
        format!("{}/{p}_{v}/_data", crate::config::VOLUMES_DIR)
    }

    /// A compose container of `project`'s `service`.
    fn member(project: &str, service: &str, image: &str, digest: &str, binds: &[(&str, &str)]) -> HostContainer {
        let mut x = c(
            &format!("{project}_{service}_1"),
            image,
            Some(digest),
            &[(COMPOSE_PROJECT, project), (COMPOSE_SERVICE, service), ("cf.app", "agent")],
            &[],
        );
        x.binds = binds
            .iter()
            .map(|(s, d)| crate::adapters::docker::Bind { source: s.to_string(), destination: d.to_string() })
            .collect();
        x.exposed_ports = if service == "app" { vec![8080] } else { vec![] };
        x
    }

    fn tenant(p: &str) -> Vec<HostContainer> {
        let mut app =
            member(p, "app", "reg/agent:1", D1, &[(&vol(p, "appdata"), "/data"), ("/etc/app.conf", "/etc/app.conf")]);
        app.read_only.push("/etc/app.conf".into());
        app.labels.insert(COMPOSE_DEPENDS_ON.into(), "side:service_started:false".into());
        vec![
            app,
            member(p, "worker", "reg/worker:1", D2, &[("/var/run/docker.sock", "/var/run/docker.sock")]),
            member(p, "side", "reg/side:1", D1, &[(&vol(p, "sidedata"), "/data")]),
        ]
    }

    fn kind(p: &str) -> HostKind {
        match p {
            "/var/run/docker.sock" => HostKind::Special,
            "/etc/app.conf" | "/srv/file" => HostKind::File,
            p if p.contains("link") => HostKind::Symlink,
            _ => HostKind::Dir,
        }
    }

    #[test]
    fn a_postgres_service_gets_a_commented_database_table_that_parses_once_uncommented() {
        let with_db = |p: &str| {
            let mut t = tenant(p);
            t.push(member(p, "db", "postgres:16", D2, &[(&vol(p, "pgdata"), "/var/lib/postgresql/data")]));
            t
        };
        let host: Vec<HostContainer> = ["c1", "c2"].iter().flat_map(|p| with_db(p)).collect();
        let p = propose_with(&host, None, &kind);
        assert_eq!(p.apps.len(), 1, "{:?}", p.skipped);
        let db = p.apps[0].stack.as_ref().unwrap().database.clone().expect("a proposed database");
        assert_eq!((db.service.as_str(), db.container.as_str()), ("db", "{tenant}_db_1"));
        let text = render_fleet(&p.apps);
        // As written it declares nothing: the proposal is commented out.
        let f = Fleet::parse(&text, "fleet.toml").unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert!(f.apps[0].database.is_none());
        // Uncommented as its note says (the table, and the db service's data dropped): it parses.
        let mut uncommented = String::new();
        let mut in_db = false;
        let mut db_service = false;
        for line in text.lines() {
            db_service = if line.starts_with("[app.services.") { line == "[app.services.db]" } else { db_service };
            if line == "# [app.database]" {
                in_db = true;
            }
            if db_service && (line.starts_with("writes") || line.starts_with("data")) {
                continue;
            }
            match line.strip_prefix("# ") {
                Some(l) if in_db => uncommented.push_str(l),
                _ => uncommented.push_str(line),
            }
            uncommented.push('\n');
        }
        let f = Fleet::parse(&uncommented, "fleet.toml").unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
        let d = f.apps[0].database.as_ref().expect("the table parsed");
        assert_eq!(d.container_of(&"c2".parse().unwrap()), "c2_db_1");
        // An image that only has "postgres" in its path is not taken for one.
        assert!(!is_postgres_repo("reg/postgres-exporter") && is_postgres_repo("bitnami/postgresql"));
    }

    #[test]
    fn compose_projects_of_one_shape_are_proposed_as_one_stack_app_that_parses() {
        let mut host: Vec<HostContainer> = ["c1", "c2"].iter().flat_map(|p| tenant(p)).collect();
        host.push(c("traefik", "traefik:v3", Some(D1), &[], &[]));
        let p = propose_with(&host, None, &kind);
        assert_eq!(p.apps.len(), 1, "{:?}", p.skipped);
        let a = &p.apps[0];
        let st = a.stack.as_ref().unwrap();
        assert_eq!((a.select.as_str(), st.health_service.as_str(), a.health_port), ("cf.app=agent", "app", 8080));
        let svc: Vec<(&str, bool, i64, Vec<String>)> =
            st.services.iter().map(|s| (s.name.as_str(), s.writes, s.order, s.data.clone())).collect();
        assert_eq!(
            svc,
            [
                ("app", true, 2, vec!["/data".to_string()]),
                ("side", true, 1, vec!["/data".to_string()]),
                ("worker", false, 3, vec![])
            ]
        );
        let ids: Vec<&str> = a.tenants.iter().map(|t| t.tenant.as_str()).collect();
        assert_eq!(ids, ["c1", "c2"]);
        let text = render_fleet(&p.apps);
        let f = Fleet::parse(&text, "fleet.toml").unwrap_or_else(|e| panic!("{e}\n{text}"));
        let s = f.apps[0].stack.as_ref().unwrap();
        assert_eq!(s.names(), "side, app, worker");
        assert_eq!(f.apps[0].health.service.as_deref(), Some("app"));
        assert_eq!(s.service("worker").unwrap().image.to_string(), format!("reg/worker@{D2}"));
        assert_eq!(p.skipped.len(), 1, "only the one-off traefik: {:?}", p.skipped);
    }

    #[test]
    fn a_project_that_cannot_be_a_stack_tenant_is_skipped_whole_naming_the_project_service_and_mount() {
        type Case = (&'static str, fn(&mut Vec<HostContainer>), &'static [&'static str]);
        let cases: &[Case] = &[
            ("a path for a name", |h| relabel(h, COMPOSE_PROJECT, "../../etc"), &["\"../../etc\"", "tenant id"]),
            ("an option for a name", |h| relabel(h, COMPOSE_PROJECT, "-rf"), &["\"-rf\"", "tenant id"]),
            (
                "a path for a service",
                |h| h[1].labels.insert(COMPOSE_SERVICE.into(), "../x".into()).map_or((), drop),
                &["\"../x\"", "service name"],
            ),
            (
                "a second container claims a service",
                |h| {
                    let mut x = h[2].clone();
                    x.name = "impostor".into();
                    h.push(x);
                },
                &["several containers", "c1_side_1", "impostor"],
            ),
            (
                "a symlinked volume dir",
                |h| h[2].binds[0].source = format!("{}/c1_sidedata/link", crate::config::VOLUMES_DIR),
                &["symlink", "service side", "c1_sidedata"],
            ),
            (
                "a writable file",
                |h| {
                    h[0].binds
                        .push(crate::adapters::docker::Bind { source: "/srv/file".into(), destination: "/conf".into() })
                },
                &["writable file", "/conf", "scratch_mounts"],
            ),
            ("a tmpfs", |h| h[1].tmpfs.push("/tmp".into()), &["tmpfs at /tmp", "scratch_mounts"]),
            ("an anonymous volume", |h| h[1].volumes.push("/cache".into()), &["/cache", "anonymous"]),
            (
                "a one-off that has exited",
                |h| {
                    let mut x = h[1].clone();
                    x.name = "c1_migrate_1".into();
                    x.running = false;
                    x.labels.insert(COMPOSE_SERVICE.into(), "migrate".into());
                    h.push(x);
                },
                &["c1_migrate_1 (not running)", "docker-compose rm"],
            ),
        ];
        for (what, change, needles) in cases {
            let mut c1 = tenant("c1");
            change(&mut c1);
            let host: Vec<HostContainer> = c1.into_iter().chain(tenant("c2")).collect();
            let p = propose_with(&host, None, &kind);
            let ids: Vec<&str> = p.apps.iter().flat_map(|a| a.tenants.iter().map(|t| t.tenant.as_str())).collect();
            assert_eq!(ids, ["c2"], "{what}");
            let left: Vec<&super::super::Skipped> =
                p.skipped.iter().filter(|s| s.container.starts_with("c1_") || s.container == "impostor").collect();
            assert!(left.len() >= 3, "{what}: {:?}", p.skipped);
            for s in left {
                for n in *needles {
                    assert!(s.reason.contains(n), "{what}: missing {n:?} in {}", s.reason);
                }
            }
        }
    }

    #[test]
    fn coolify_labelled_stacks_are_grouped_by_their_resource_with_its_labels_named() {
        let mut host: Vec<HostContainer> = ["r1", "r2"].iter().flat_map(|p| tenant(p)).collect();
        for c in &mut host {
            let (p, svc) = (c.labels.remove(COMPOSE_PROJECT).unwrap(), c.labels.remove(COMPOSE_SERVICE).unwrap());
            c.labels.insert("coolify.resourceName".into(), p);
            c.labels.insert("coolify.service".into(), svc);
        }
        let p = propose_with(&host, None, &kind);
        assert_eq!(p.apps.len(), 1, "{:?}", p.skipped);
        let st = p.apps[0].stack.as_ref().unwrap();
        assert_eq!((st.group.as_str(), st.service_label.as_str()), ("coolify.resourceName", "coolify.service"));
        let text = render_fleet(&p.apps);
        let f = Fleet::parse(&text, "fleet.toml").unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(f.apps[0].tenant_from.to_string(), "label:coolify.resourceName");
        assert_eq!(f.apps[0].stack.as_ref().unwrap().service_label, "coolify.service");
    }

    #[test]
    fn a_service_name_with_a_dot_is_rendered_as_one_quoted_key() {
        let mut host: Vec<HostContainer> = ["c1", "c2"].iter().flat_map(|p| tenant(p)).collect();
        for c in host.iter_mut().filter(|c| c.labels[COMPOSE_SERVICE] == "worker") {
            c.labels.insert(COMPOSE_SERVICE.into(), "work.er".into());
        }
        let text = render_fleet(&propose_with(&host, None, &kind).apps);
        assert!(text.contains("[app.services.\"work.er\"]"), "{text}");
        let f = Fleet::parse(&text, "fleet.toml").unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert!(f.apps[0].stack.as_ref().unwrap().service("work.er").is_some());
    }

    fn relabel(h: &mut [HostContainer], key: &str, value: &str) {
        for c in h {
            c.labels.insert(key.into(), value.into());
        }
    }
}
