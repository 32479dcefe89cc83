//! A stack tenant's rollout plan (`[app.services]`), made before any container is touched:
//! which services of which tenant change, which containers stop with them, which data mounts
//! are copied; and every refusal that must come first — a container of an undeclared service, a
//! declared service a tenant lacks, a data mount that is no bind dir or `local` volume, a
//! writable mount that is neither data nor scratch, a mount that cannot be copied beside
//! itself. Pure logic over what the engine reported, except for reading the mounts' dirs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{PlanItem, RolloutPlan};
use crate::adapters::docker::{StackMember, TenantMount, Unmapped};
use crate::config::{App, HealthSpec, Stack};
use crate::error::{Error, Result};
use crate::stack_tenant::data_mount;
use crate::types::{Digest, TenantId};

/// One service of a stack tenant whose pin differs.
#[derive(Debug, Clone, Serialize)]
pub struct ServicePlan {
    /// Service name.
    pub service: String,
    /// Its container.
    pub container: String,
    /// Digest it runs now.
    pub from: Option<Digest>,
    /// Digest it will run.
    pub to: Digest,
}

/// A stack tenant in the plan: what changes, what stops, which mounts are copied.
#[derive(Debug, Clone, Serialize)]
pub struct StackPlanItem {
    /// The services that change, in start order.
    pub changed: Vec<ServicePlan>,
    /// The containers stopped for the switch (service names, start order).
    pub stopped: Vec<String>,
    /// The data mounts copied beside themselves and swapped back on failure.
    pub mounts: Vec<String>,
}

/// A data mount of a tenant, as the plan found it.
#[derive(Debug, Clone)]
struct FoundMount {
    what: String,
    dir: PathBuf,
}

/// The plan of a stack app: which tenants change which services. Every refusal names the
/// tenant, the container, the service or the mount, and the fix; nothing is touched.
pub fn plan_stack(
    app: &App,
    stack: &Stack,
    commit: &str,
    members: &[StackMember],
    unmapped: Vec<Unmapped>,
    only: &[TenantId],
) -> Result<RolloutPlan> {
    let mut by_tenant: BTreeMap<TenantId, Vec<&StackMember>> = BTreeMap::new();
    for m in members {
        by_tenant.entry(m.container.tenant.clone()).or_default().push(m);
    }
    for t in only {
        if !by_tenant.contains_key(t) {
            let known: Vec<&str> = by_tenant.keys().map(|t| t.as_str()).collect();
            return Err(Error::Usage(format!(
                "app {}: no tenant \"{t}\" (tenants: {})",
                app.name,
                if known.is_empty() { "none".to_string() } else { known.join(", ") }
            )));
        }
    }
    let mut problems = Vec::new();
    let mut items = Vec::new();
    let (mut held, mut up_to_date, mut stopped) = (Vec::new(), Vec::new(), Vec::new());
    for (tenant, ms) in &by_tenant {
        if !only.is_empty() && !only.contains(tenant) {
            continue;
        }
        let who = |why: String| format!("tenant {tenant}: {why}");
        // Every container is a declared service, once; every declared service is there.
        let mut found: BTreeMap<&str, &StackMember> = BTreeMap::new();
        for m in ms {
            if stack.service(&m.service).is_none() {
                problems.push(who(format!(
                    "container {} is service \"{}\", which fleet.toml does not declare (services: {}); declare \
                     [app.services.{}] or narrow select",
                    m.container.name,
                    m.service,
                    stack.names(),
                    m.service
                )));
            } else if let Some(other) = found.insert(&m.service, m) {
                problems.push(who(format!(
                    "service \"{}\" has several containers ({}, {}); slipway rolls one container per service",
                    m.service, other.container.name, m.container.name
                )));
            }
        }
        let missing: Vec<&str> =
            stack.services.iter().map(|s| s.name.as_str()).filter(|s| !found.contains_key(s)).collect();
        if !missing.is_empty() {
            let have: Vec<String> = ms.iter().map(|m| format!("{} ({})", m.container.name, m.service)).collect();
            problems.push(who(format!(
                "no container of service {} (its containers: {}); every service in [app.services] must run in \
                 each tenant, or the stack cannot be rolled as a unit",
                missing.join(", "),
                have.join(", ")
            )));
            continue;
        }
        if ms.iter().any(|m| stack.service(&m.service).is_none()) || found.len() != ms.len() {
            continue;
        }
        let changed: Vec<&crate::config::Service> = stack
            .services
            .iter()
            .filter(|s| found[s.name.as_str()].container.digest.as_ref() != Some(s.image.digest()))
            .collect();
        if changed.is_empty() {
            up_to_date.push(tenant.clone());
            continue;
        }
        if app.hold.contains(tenant) {
            held.push(tenant.clone());
            continue;
        }
        // `[app.database]`'s container, when it is one of the stack's: its data is the database,
        // kept by its dumps (db-dump), never stopped by the writers' stop, never copied.
        let db_container = app.database.as_ref().map(|d| d.container_of(tenant));
        let is_db = |s: &crate::config::Service| Some(&found[s.name.as_str()].container.name) == db_container.as_ref();
        // A change of the database's own service holds the writers still too: nothing writes
        // between its dump and the switch.
        let writer_changes = changed.iter().any(|s| s.writes || is_db(s));
        let to_stop: Vec<&crate::config::Service> = stack
            .services
            .iter()
            .filter(|s| changed.iter().any(|c| c.name == s.name) || (writer_changes && s.writes && !is_db(s)))
            .collect();
        if to_stop.iter().any(|s| !found[s.name.as_str()].container.is_running()) {
            stopped.push(tenant.clone());
            continue;
        }
        // Checked for every service of the stack, changed or not: state no copy holds would
        // be lost or mixed by a swap back.
        let mut mounts: Vec<FoundMount> = Vec::new();
        for svc in &stack.services {
            let c = &found[svc.name.as_str()].container;
            let ctx = |why: String| who(format!("service {} (container {}): {why}", svc.name, c.name));
            if c.auto_remove && to_stop.iter().any(|s| s.name == svc.name) {
                problems.push(ctx(
                    "it was started with `docker run --rm`: Docker deletes it the moment it stops, so a failed \
                     release could not bring it back; recreate it without --rm"
                        .into(),
                ));
            }
            let mut checks: Vec<&HealthSpec> = svc.health.iter().collect();
            if app.health.service.as_deref() == Some(svc.name.as_str()) {
                checks.push(&app.health);
            }
            for h in checks {
                if let Some(p) = c.probe_network_problem(h.network.as_deref()) {
                    problems.push(ctx(format!("its health check cannot be aimed: {p}")));
                }
            }
            if is_db(svc) {
                if !svc.data.is_empty() {
                    problems.push(ctx(format!(
                        "it is the database container of [app.database], whose data the rollout dumps with the \
                         database's own tools and replays on failure; its files cannot also be copied and swapped \
                         back under the running server: remove services.{}.data",
                        svc.name
                    )));
                }
                // Its writable mounts are the database's files: the dumps are their copy.
                continue;
            }
            for d in &svc.data {
                match c.mounts.iter().find(|m| Path::new(&m.destination) == Path::new(d)) {
                    None => problems.push(ctx(format!(
                        "services.{}.data lists {d}, but the container mounts nothing there (its mounts: {})",
                        svc.name,
                        describe_all(&c.mounts)
                    ))),
                    Some(m) => match data_mount(m) {
                        Ok(dir) => {
                            if !mounts.iter().any(|f| f.dir == dir) {
                                mounts.push(FoundMount { what: m.describe(), dir });
                            }
                        }
                        Err(why) => problems.push(ctx(why)),
                    },
                }
            }
            for m in c.mounts.iter().filter(|m| m.writable) {
                let dest = Path::new(&m.destination);
                if svc.data.iter().any(|d| Path::new(d) == dest)
                    || app.scratch_mounts.iter().any(|s| Path::new(s) == dest)
                {
                    continue;
                }
                if m.kind == "bind" && holds_no_state(m) {
                    continue;
                }
                if !matches!(m.kind.as_str(), "bind" | "volume" | "tmpfs") {
                    continue;
                }
                let fix = if m.kind == "tmpfs" {
                    format!("if it holds nothing to keep, list {} in the app's scratch_mounts", m.destination)
                } else if svc.writes {
                    format!(
                        "list {} in services.{}.data (a bind dir or a local volume), mount it read-only, or, if it \
                         holds no customer data, list it in scratch_mounts",
                        m.destination, svc.name
                    )
                } else {
                    format!(
                        "services.{} has writes = false: mount it read-only, set writes = true and list {} in its \
                         data, or, if it holds no customer data, list it in scratch_mounts",
                        svc.name, m.destination
                    )
                };
                problems.push(ctx(format!(
                    "its {} is writable and not declared as data or scratch, so a rollout would neither copy it nor \
                     swap it back: {fix}",
                    m.describe()
                )));
            }
        }
        // A mount a non-writer shares with the data (by host dir) would be written while the
        // writers are stopped and swapped.
        for svc in stack.services.iter().filter(|s| !s.writes) {
            let c = &found[svc.name.as_str()].container;
            for m in c.mounts.iter().filter(|m| m.writable && !m.host_path.is_empty()) {
                if mounts.iter().any(|f| Path::new(&m.host_path) == f.dir) {
                    problems.push(who(format!(
                        "service {} (container {}) mounts the tenant's data ({}) writable but has writes = false: set \
                         writes = true in services.{}, or mount it read-only",
                        svc.name,
                        c.name,
                        m.describe(),
                        svc.name
                    )));
                }
            }
        }
        let first = changed[0];
        let fc = &found[first.name.as_str()].container;
        let mounts_copied: Vec<String> =
            if writer_changes { mounts.iter().map(|m| m.what.clone()).collect() } else { Vec::new() };
        items.push(PlanItem {
            tenant: tenant.clone(),
            container: fc.name.clone(),
            from: fc.digest.clone(),
            to: first.image.digest().clone(),
            canary: false,
            stopped: false,
            copy: None,
            stack: Some(StackPlanItem {
                changed: changed
                    .iter()
                    .map(|s| {
                        let c = &found[s.name.as_str()].container;
                        ServicePlan {
                            service: s.name.clone(),
                            container: c.name.clone(),
                            from: c.digest.clone(),
                            to: s.image.digest().clone(),
                        }
                    })
                    .collect(),
                stopped: to_stop.iter().map(|s| s.name.clone()).collect(),
                mounts: mounts_copied,
            }),
        });
    }
    if !problems.is_empty() {
        return Err(Error::Config(format!(
            "fleet.toml: app \"{}\" (a stack): nothing was touched: {}",
            app.name,
            problems.join("; ")
        )));
    }
    let canary_pos = app.canary.as_ref().and_then(|c| items.iter().position(|i| &i.tenant == c)).unwrap_or(0);
    if !items.is_empty() {
        let c = items.remove(canary_pos);
        items.insert(0, c);
        items[0].canary = true;
    }
    Ok(RolloutPlan {
        app: app.name.clone(),
        image: stack.pin_key(),
        commit: commit.to_string(),
        items,
        held,
        up_to_date,
        stopped,
        skipped: unmapped,
        outside_window: Vec::new(),
    })
}

fn describe_all(mounts: &[TenantMount]) -> String {
    if mounts.is_empty() {
        "none".into()
    } else {
        mounts.iter().map(TenantMount::describe).collect::<Vec<_>>().join(", ")
    }
}

/// A socket or a device holds nothing a copy could take (docker.sock, /dev/fuse).
fn holds_no_state(m: &TenantMount) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(&m.source).is_ok_and(|md| {
        let t = md.file_type();
        t.is_socket() || t.is_char_device() || t.is_block_device() || t.is_fifo()
    })
}

/// Every plan item's mounts can be copied beside themselves (reads the trees: blocking). A
/// stack has no archive-while-down path: a mount that cannot is refused, nothing touched.
pub async fn check_copies(app: &App, plan: &RolloutPlan, members: &[StackMember]) -> Result<()> {
    let mut problems = Vec::new();
    for item in &plan.items {
        for dir in item_mount_dirs(app, item, members) {
            let (a, d) = (app.clone(), dir.clone());
            if let super::CopyPlan::ArchiveWhileDown { why } =
                crate::blocking::run("copy plan", move || super::copy_plan(&a, &d)).await?
            {
                problems.push(format!(
                    "tenant {}: {} cannot be copied beside itself: {why}",
                    item.tenant,
                    dir.display()
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "app \"{}\" (a stack): a stack's rollout copies each data mount beside itself, so nothing was touched: {}",
            app.name,
            problems.join("; ")
        )))
    }
}

/// The host dirs of a plan item's copied mounts (only when a writer changes).
pub(super) fn item_mount_dirs(app: &App, item: &PlanItem, members: &[StackMember]) -> Vec<PathBuf> {
    let (Some(stack), Some(si)) = (app.stack.as_ref(), item.stack.as_ref()) else { return Vec::new() };
    if si.mounts.is_empty() {
        return Vec::new();
    }
    let mut dirs: Vec<PathBuf> = Vec::new();
    for svc in stack.services.iter().filter(|s| s.writes) {
        let Some(m) = members.iter().find(|m| m.container.tenant == item.tenant && m.service == svc.name) else {
            continue;
        };
        for d in &svc.data {
            if let Some(mt) = m.container.mounts.iter().find(|x| Path::new(&x.destination) == Path::new(d)) {
                if let Ok(dir) = data_mount(mt) {
                    if !dirs.contains(&dir) {
                        dirs.push(dir);
                    }
                }
            }
        }
    }
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(kind: &str, source: &str, host_path: &str, driver: &str, writable: bool) -> TenantMount {
        TenantMount {
            kind: kind.into(),
            source: source.into(),
            destination: "/data".into(),
            writable,
            host_path: host_path.into(),
            driver: driver.into(),
        }
    }

    #[test]
    fn a_data_mount_is_a_writable_bind_dir_or_local_volume_and_anything_else_is_refused_naming_it() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("vol/_data");
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.display().to_string();
        assert_eq!(data_mount(&mount("volume", "p_data", &d, "local", true)), Ok(dir.clone()));
        assert_eq!(data_mount(&mount("bind", &d, &d, "", true)), Ok(dir.clone()));
        let anon = "a".repeat(64);
        let cases: Vec<(TenantMount, &[&str])> = vec![
            (mount("volume", "p_data", &d, "rexray/ebs", true), &["\"rexray/ebs\"", "p_data", "local driver"]),
            (mount("volume", &anon, &d, "local", true), &["anonymous volume", "give it a name"]),
            (mount("tmpfs", "", "", "", true), &["tmpfs", "scratch_mounts"]),
            (mount("volume", "p_data", &d, "local", false), &["read-only"]),
            (mount("bind", "/nonexistent/x", "/nonexistent/x", "", true), &["not a directory"]),
        ];
        for (m, words) in cases {
            let e = data_mount(&m).unwrap_err();
            for w in words {
                assert!(e.contains(w), "{m:?}: missing {w:?} in {e}");
            }
        }
    }

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    /// A stack app (side, app write /data; worker writes nothing) pinned to `app`, `worker`.
    fn app(app: &str, worker: &str) -> App {
        let text = format!(
            "[[app]]\nname = \"agent\"\nselect = \"x\"\n\
             health = {{ path = \"/h\", port = 8080, service = \"app\" }}\n\
             [app.services.side]\nimage = \"r/side@{D1}\"\nwrites = true\norder = 1\ndata = [\"/data\"]\n\
             [app.services.app]\nimage = \"r/app@{app}\"\nwrites = true\norder = 2\ndata = [\"/data\"]\n\
             [app.services.worker]\nimage = \"r/worker@{worker}\"\norder = 3\n"
        );
        crate::config::Fleet::parse(&text, "fleet.toml").unwrap().apps.remove(0)
    }

    fn member(service: &str, digest: &str, mounts: Vec<TenantMount>) -> StackMember {
        StackMember {
            service: service.into(),
            labels: Default::default(),
            container: crate::adapters::docker::TenantContainer {
                tenant: "p1".parse().unwrap(),
                name: format!("p1_{service}_1"),
                id: format!("id-{service}"),
                image_ref: format!("r/{service}@{digest}"),
                digest: Some(digest.parse().unwrap()),
                state: "running".into(),
                networks: vec!["p1_default".into()],
                network_mode: "p1_default".into(),
                mounts,
                auto_remove: false,
                labels: Default::default(),
            },
        }
    }

    #[test]
    fn only_changed_services_roll_and_a_changed_writer_stops_every_writer_with_every_mount_copied() {
        let root = tempfile::tempdir().unwrap();
        let (a, b) = (root.path().join("a/_data"), root.path().join("b/_data"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let vol = |name: &str, dir: &Path| mount("volume", name, &dir.display().to_string(), "local", true);
        let members = vec![
            member("side", D1, vec![vol("p1_sidedata", &b)]),
            member("app", D1, vec![vol("p1_appdata", &a)]),
            member("worker", D1, vec![]),
        ];
        let plan_of = |app: &App| {
            let st = app.stack.clone().unwrap();
            plan_stack(app, &st, "c", &members, Vec::new(), &[]).unwrap()
        };
        // Only the worker's pin moved: it alone stops, nothing is copied.
        let p = plan_of(&app(D1, D2));
        let si = p.items[0].stack.clone().unwrap();
        assert_eq!(si.changed.iter().map(|c| c.service.as_str()).collect::<Vec<_>>(), ["worker"]);
        assert_eq!((si.stopped, si.mounts.len()), (vec!["worker".to_string()], 0));
        // The app's moved: both writers stop (start order), both volumes are copied.
        let p = plan_of(&app(D2, D1));
        let si = p.items[0].stack.clone().unwrap();
        assert_eq!(si.stopped, ["side", "app"]);
        assert_eq!(si.mounts.len(), 2);
        assert!(p.items[0].canary);
        // Every pin as running: up to date.
        assert_eq!(plan_of(&app(D1, D1)).up_to_date.len(), 1);
    }

    #[test]
    fn a_stack_unlike_its_declaration_is_refused_naming_the_tenant_and_the_service() {
        let root = tempfile::tempdir().unwrap();
        let a = root.path().join("a/_data");
        std::fs::create_dir_all(&a).unwrap();
        let vol = mount("volume", "p1_appdata", &a.display().to_string(), "local", true);
        let full =
            || vec![member("side", D1, vec![]), member("app", D1, vec![vol.clone()]), member("worker", D1, vec![])];
        let app = app(D2, D1);
        let st = app.stack.clone().unwrap();
        let refused = |members: Vec<StackMember>, words: &[&str]| {
            let e = plan_stack(&app, &st, "c", &members, Vec::new(), &[]).unwrap_err().to_string();
            assert!(e.contains("tenant p1") && e.contains("nothing was touched"), "{e}");
            for w in words {
                assert!(e.contains(w), "missing {w:?} in {e}");
            }
        };
        let mut extra = full();
        extra.push(member("cache", D1, vec![]));
        refused(extra, &["service \"cache\"", "[app.services.cache]"]);
        let mut twice = full();
        twice.push(member("worker", D1, vec![]));
        refused(twice, &["service \"worker\" has several containers"]);
        refused(full().into_iter().filter(|m| m.service != "side").collect(), &["no container of service side"]);
        // The side declares /data, but its container mounts nothing there.
        refused(full(), &["services.side.data lists /data", "mounts nothing there"]);
        // A worker (writes = false) mounting the data writable.
        let mut sneaky = full();
        sneaky[0].container.mounts.push(vol.clone());
        sneaky[2].container.mounts.push(vol.clone());
        refused(sneaky, &["service worker", "writes = false"]);
        // A tmpfs the fleet does not call scratch.
        let mut tmp = full();
        tmp[0].container.mounts.push(vol.clone());
        tmp[2].container.mounts.push(mount("tmpfs", "", "", "", true));
        refused(tmp, &["tmpfs mount at /data", "scratch_mounts"]);
    }

    #[test]
    fn the_database_service_of_app_database_is_never_stopped_by_the_writers_and_keeps_no_data() {
        let root = tempfile::tempdir().unwrap();
        let (a, b, pg) = (root.path().join("a/_data"), root.path().join("b/_data"), root.path().join("pg/_data"));
        for d in [&a, &b, &pg] {
            std::fs::create_dir_all(d).unwrap();
        }
        let vol = |name: &str, dir: &Path| mount("volume", name, &dir.display().to_string(), "local", true);
        let mut pg_vol = vol("p1_pgdata", &pg);
        pg_vol.destination = "/var/lib/postgresql/data".into();
        let members = vec![
            member("pg", D1, vec![pg_vol]),
            member("side", D1, vec![vol("p1_sidedata", &b)]),
            member("app", D1, vec![vol("p1_appdata", &a)]),
            member("worker", D1, vec![]),
        ];
        let fleet = |app: &str, pg: &str, pg_extra: &str, db: bool| {
            let db = if db {
                "[app.database]\nkind = \"postgres\"\ncontainer = \"{tenant}_pg_1\"\ndatabases = [\"app\"]\nuser = \"postgres\"\n"
            } else {
                ""
            };
            let text = format!(
                "[[app]]\nname = \"agent\"\nselect = \"x\"\n\
                 health = {{ path = \"/h\", port = 8080, service = \"app\" }}\n\
                 [app.services.pg]\nimage = \"r/pg@{pg}\"\nwrites = true\norder = 0\n{pg_extra}\
                 [app.services.side]\nimage = \"r/side@{D1}\"\nwrites = true\norder = 1\ndata = [\"/data\"]\n\
                 [app.services.app]\nimage = \"r/app@{app}\"\nwrites = true\norder = 2\ndata = [\"/data\"]\n\
                 [app.services.worker]\nimage = \"r/worker@{D1}\"\norder = 3\n{db}"
            );
            crate::config::Fleet::parse(&text, "fleet.toml").unwrap().apps.remove(0)
        };
        let plan_of = |app: &App| {
            let st = app.stack.clone().unwrap();
            plan_stack(app, &st, "c", &members, Vec::new(), &[])
        };
        // The app changes: the writers stop, the database does not; its volume is no data mount
        // and needs no `data` or scratch declaration (its dumps keep it).
        let si = plan_of(&fleet(D2, D1, "", true)).unwrap().items[0].stack.clone().unwrap();
        assert_eq!((si.stopped, si.mounts.len()), (vec!["side".to_string(), "app".to_string()], 2));
        // The database's own service changes: it stops (after its dump), and every writer with it.
        let si = plan_of(&fleet(D1, D2, "", true)).unwrap().items[0].stack.clone().unwrap();
        assert_eq!(si.stopped, ["pg", "side", "app"]);
        // Its files declared as data (copied and swapped under the running server): refused.
        let e = plan_of(&fleet(D2, D1, "data = [\"/var/lib/postgresql/data\"]\n", true)).unwrap_err().to_string();
        assert!(e.contains("services.pg.data") && e.contains("[app.database]") && e.contains("tenant p1"), "{e}");
        // Without [app.database] its volume is an undeclared writable mount, as before.
        let e = plan_of(&fleet(D2, D1, "", false)).unwrap_err().to_string();
        assert!(e.contains("service pg") && e.contains("not declared as data or scratch"), "{e}");
    }
}
