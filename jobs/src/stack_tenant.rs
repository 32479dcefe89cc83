//! A stack tenant (`[app.services]`) as the backup jobs see it — `snapshot`, `restore` and the
//! rollout's plan: its containers in start order (the compose labels' `depends_on` where they
//! say, else the fleet's `order`), which of them write the data, and its data mounts (the union
//! of the writers' `data` mounts, each host dir once, in the services' start order).
//!
//! Invariants: a data mount is a real dir on this host — a bind of a dir or a named volume of
//! the `local` driver, never a symlink, a mount point, a tmpfs, an anonymous volume or another
//! driver's volume ([`data_mount`]); a tenant whose containers are not exactly the declared
//! services, one each, is refused with the tenant and the service named.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::adapters::docker::{StackMember, TenantMount};
use crate::config::stack::{depends_on, start_order, COMPOSE_DEPENDS_ON};
use crate::config::{App, HealthSpec, Stack};
use crate::journal::{HeldDetail, HeldRow, HeldStep, RestoreStep};
use crate::types::TenantId;

/// One container of a stack tenant.
#[derive(Debug, Clone)]
pub struct StackContainer {
    /// Its service.
    pub service: String,
    /// The container's name.
    pub name: String,
    /// The image it runs, as the engine names it.
    pub image: String,
    /// Whether the service writes the tenant's data (`writes = true`).
    pub writes: bool,
    /// Whether it was running when listed.
    pub running: bool,
    /// Its HTTP checks: the service's own, and the app's when `health.service` names it.
    pub checks: Vec<HealthSpec>,
    /// The tenant's data mounts it mounts (read-only ones too), as indexes into
    /// [`StackTenant::mounts`]: a drill points each at its restored copy.
    pub data: Vec<usize>,
    /// Every mount of its with a dir on this host: (its path in the container, that dir).
    pub mounted: Vec<(String, PathBuf)>,
}

/// One data mount of a stack tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataMount {
    /// As an operator names it (`volume "p_appdata" at /data`).
    pub what: String,
    /// What finds it again: a volume's name, a bind mount's host dir.
    pub source: String,
    /// Its dir on this host.
    pub dir: PathBuf,
}

/// A stack tenant: its containers in start order and its data mounts.
#[derive(Debug, Clone)]
pub struct StackTenant {
    /// The tenant.
    pub tenant: TenantId,
    /// Every container, in start order.
    pub containers: Vec<StackContainer>,
    /// The data mounts, each host dir once.
    pub mounts: Vec<DataMount>,
}

impl StackTenant {
    /// The writers, in start order.
    pub fn writers(&self) -> impl DoubleEndedIterator<Item = &StackContainer> {
        self.containers.iter().filter(|c| c.writes)
    }

    /// Where the file at container path `path` of `service`'s container is: the data mount
    /// holding it (an index into [`StackTenant::mounts`]) and its path beneath that mount. The
    /// mount is the container's deepest one above `path`, as the engine resolves it; Err names
    /// the tenant, the service and the path when that is no data mount (or none is).
    pub fn locate(&self, service: &str, path: &str) -> std::result::Result<(usize, String), String> {
        let tenant = &self.tenant;
        let Some(c) = self.containers.iter().find(|c| c.service == service) else {
            return Err(format!("tenant {tenant}: no container of service {service}"));
        };
        let deepest = c
            .mounted
            .iter()
            .filter_map(|(dest, dir)| crate::config::below(path, dest).map(|rest| (dest, dir, rest)))
            .max_by_key(|(dest, _, _)| dest.trim_end_matches('/').len());
        let Some((dest, dir, rest)) = deepest else {
            return Err(format!(
                "tenant {tenant}: service {service}'s SQLite file {path} is in no mount of container {}; it must be in \
                 one of its data mounts",
                c.name
            ));
        };
        match self.mounts.iter().position(|m| &m.dir == dir) {
            Some(i) => Ok((i, rest.to_string())),
            None => Err(format!(
                "tenant {tenant}: service {service}'s SQLite file {path} is in container {}'s mount at {dest}, which \
                 is no data mount of the stack: it must be in one of the service's data mounts",
                c.name
            )),
        }
    }
}

/// The tenants of a stack app among `members` (every container the engine listed for it).
pub fn tenants_of(members: &[StackMember]) -> Vec<TenantId> {
    let mut out: Vec<TenantId> = members.iter().map(|m| m.container.tenant.clone()).collect();
    out.dedup();
    out
}

/// `tenant` of stack app `app` as it runs now, or why it cannot be backed up as a unit (the
/// tenant, the container, the service or the mount named, and the fix).
pub fn resolve(
    app: &App,
    stack: &Stack,
    tenant: &TenantId,
    members: &[StackMember],
) -> std::result::Result<StackTenant, String> {
    let mine: Vec<&StackMember> = members.iter().filter(|m| &m.container.tenant == tenant).collect();
    let mut found: BTreeMap<&str, &StackMember> = BTreeMap::new();
    for m in &mine {
        if stack.service(&m.service).is_none() {
            return Err(format!(
                "tenant {tenant}: container {} is service \"{}\", which fleet.toml does not declare (services: {}); \
                 declare [app.services.{}] or narrow select",
                m.container.name,
                m.service,
                stack.names(),
                m.service
            ));
        }
        if let Some(other) = found.insert(&m.service, m) {
            return Err(format!(
                "tenant {tenant}: service \"{}\" has several containers ({}, {}); slipway backs up one container per \
                 service",
                m.service, other.container.name, m.container.name
            ));
        }
    }
    let missing: Vec<&str> =
        stack.services.iter().map(|s| s.name.as_str()).filter(|s| !found.contains_key(s)).collect();
    if !missing.is_empty() {
        return Err(format!(
            "tenant {tenant}: no container of service {}; every service in [app.services] must run in each tenant",
            missing.join(", ")
        ));
    }
    let fleet_order: Vec<String> = stack.services.iter().map(|s| s.name.clone()).collect();
    let mut deps = BTreeMap::new();
    for s in &fleet_order {
        if let Some(l) = found[s.as_str()].labels.get(COMPOSE_DEPENDS_ON) {
            deps.insert(s.clone(), depends_on(l));
        }
    }
    let mut containers = Vec::new();
    let mut mounts: Vec<DataMount> = Vec::new();
    for name in start_order(&fleet_order, &deps) {
        let (Some(svc), Some(m)) = (stack.service(&name), found.get(name.as_str())) else { continue };
        let c = &m.container;
        let mut checks: Vec<HealthSpec> = svc.health.iter().cloned().collect();
        if app.health.service.as_deref() == Some(name.as_str()) {
            checks.push(app.health.clone());
        }
        if svc.writes {
            for d in &svc.data {
                let Some(mt) = c.mounts.iter().find(|x| Path::new(&x.destination) == Path::new(d)) else {
                    return Err(format!(
                        "tenant {tenant}: service {name} (container {}): services.{name}.data lists {d}, but the \
                         container mounts nothing there",
                        c.name
                    ));
                };
                let dir = data_mount(mt)
                    .map_err(|why| format!("tenant {tenant}: service {name} (container {}): {why}", c.name))?;
                if !mounts.iter().any(|f| f.dir == dir) {
                    let source = if mt.kind == "volume" { mt.source.clone() } else { dir.display().to_string() };
                    mounts.push(DataMount { what: mt.describe(), source, dir });
                }
            }
        }
        containers.push(StackContainer {
            service: name.clone(),
            name: c.name.clone(),
            image: c.image_ref.clone(),
            writes: svc.writes,
            running: c.is_running(),
            checks,
            data: Vec::new(),
            mounted: c
                .mounts
                .iter()
                .filter_map(|mt| {
                    let dir = if mt.kind == "volume" { &mt.host_path } else { &mt.source };
                    (mt.kind != "tmpfs" && !dir.is_empty()).then(|| (mt.destination.clone(), PathBuf::from(dir)))
                })
                .collect(),
        });
    }
    for sc in &mut containers {
        let Some(m) = found.get(sc.service.as_str()) else { continue };
        for mt in &m.container.mounts {
            let dir = if mt.kind == "volume" { PathBuf::from(&mt.host_path) } else { PathBuf::from(&mt.source) };
            if let Some(i) = mounts.iter().position(|d| d.dir == dir) {
                if !sc.data.contains(&i) {
                    sc.data.push(i);
                }
            }
        }
    }
    if mounts.is_empty() {
        return Err(format!("tenant {tenant}: no service writes data (no `data` of a `writes = true` service)"));
    }
    Ok(StackTenant { tenant: tenant.clone(), containers, mounts })
}

/// The host dir of a declared data mount, or why it cannot be one: a bind of a real dir (not a
/// symlink, not a mount point: the copy beside it is swapped back by a rename) or a named
/// volume of the `local` driver; never a tmpfs, an anonymous volume or another driver's volume.
pub fn data_mount(m: &TenantMount) -> std::result::Result<PathBuf, String> {
    let dir = match m.kind.as_str() {
        "bind" => PathBuf::from(&m.source),
        "volume" if m.driver != "local" && !m.driver.is_empty() => {
            return Err(format!(
                "its {} uses the volume driver \"{}\", whose data is not a dir on this host that slipway could copy \
                 or swap back: move the data to a volume of the local driver (or a bind mount)",
                m.describe(),
                m.driver
            ))
        }
        "volume" if m.is_anonymous_volume() => {
            return Err(format!(
                "its {} is an anonymous volume: give it a name (a named volume in the compose file) so it is \
                 re-attached by name",
                m.describe()
            ))
        }
        "volume" if !m.host_path.is_empty() => PathBuf::from(&m.host_path),
        "tmpfs" => {
            return Err(format!(
                "its data mount at {} is a tmpfs, which holds nothing across a restart: drop it from data (list it \
                 in scratch_mounts)",
                m.destination
            ))
        }
        _ => return Err(format!("its {} is no bind dir or local volume the engine gives a dir for", m.describe())),
    };
    if !m.writable {
        return Err(format!(
            "its data mount {} is read-only: a service that only reads data is not a writer",
            m.describe()
        ));
    }
    match std::fs::symlink_metadata(&dir) {
        Ok(md) if md.file_type().is_symlink() => {
            return Err(format!("its data mount {} is a symlink on the host; mount the real dir", m.describe()))
        }
        Ok(md) if md.is_dir() => {}
        _ => {
            return Err(format!("its data mount {} is not a directory on this host ({})", m.describe(), dir.display()))
        }
    }
    if crate::fsutil::is_mount_point(&dir).unwrap_or(true) {
        return Err(format!(
            "its data mount {} ({}) is a mount point: the copy beside it could not be swapped back by a rename",
            m.describe(),
            dir.display()
        ));
    }
    Ok(dir)
}

/// The journal details of a stack restore, as `recover` and `restore --run` read them back
/// (the model owns them: `journal`).
pub use crate::journal::{MountSwapDetail, RestorePlanDetail};

/// What a stack restore's journal says is left to put back: the mounts it swapped (ended `ok`,
/// their kept data named) and did not swap back, when the restore must be undone — it was
/// putting the mounts back ([`RestoreStep::UndoRestore`]), or its database replay was begun and
/// not ended `ok`, or it swapped some of its mounts and not all. Empty for a restore that
/// swapped every mount (finished: its containers are only started again) or none, and for any
/// other run. Pairs of (kept data, mount dir).
pub fn restore_left_to_undo(rows: &[HeldRow]) -> Vec<(PathBuf, PathBuf)> {
    let mut plan: Option<&Vec<PathBuf>> = None;
    let mut undoing = false;
    let mut swapped: Vec<(PathBuf, PathBuf)> = Vec::new();
    for r in rows {
        match (&r.step, &r.detail) {
            (HeldStep::Restore(RestoreStep::Mounts), HeldDetail::Plan(p)) => plan = Some(&p.stack_mounts),
            (HeldStep::Restore(RestoreStep::UndoRestore), _) => undoing = true,
            (HeldStep::Restore(RestoreStep::Replay), _) if !r.ended_ok => undoing = true,
            (HeldStep::Restore(RestoreStep::Restore), HeldDetail::Swap(d)) if r.ended_ok => {
                if d.back {
                    swapped.retain(|(_, dir)| *dir != d.dir);
                } else if let Some(kept) = &d.replaced {
                    swapped.push((kept.clone(), d.dir.clone()));
                }
            }
            _ => {}
        }
    }
    let Some(plan) = plan else { return Vec::new() };
    let all = plan.iter().all(|p| swapped.iter().any(|(_, d)| d == p));
    if undoing || !all {
        swapped
    } else {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(step: &str, outcome: Option<&str>, detail: serde_json::Value) -> HeldRow {
        let row = slipway_state::Step {
            id: 1,
            run_id: "r".into(),
            tenant: Some("t".into()),
            step: step.into(),
            started_at: String::new(),
            finished_at: None,
            outcome: outcome.map(str::to_string),
            detail: Some(detail.to_string()),
        };
        HeldRow::parse("restore", "r", &row).unwrap()
    }

    #[test]
    fn a_stacks_sqlite_file_is_located_in_the_deepest_mount_above_it_and_refused_outside_a_data_mount() {
        let dir = |d: &str| PathBuf::from(d);
        let mount = |d: &str| DataMount { what: d.into(), source: d.into(), dir: dir(d) };
        let st = StackTenant {
            tenant: "t1".parse().unwrap(),
            containers: vec![StackContainer {
                service: "app".into(),
                name: "t1_app_1".into(),
                image: String::new(),
                writes: true,
                running: true,
                checks: Vec::new(),
                data: vec![0, 1],
                mounted: vec![
                    ("/data".into(), dir("/v/data")),
                    ("/data/cache".into(), dir("/v/cache")),
                    ("/data/more/".into(), dir("/v/more")),
                ],
            }],
            mounts: vec![mount("/v/data"), mount("/v/more")],
        };
        assert_eq!(st.locate("app", "/data/db/app.db"), Ok((0, "db/app.db".to_string())));
        assert_eq!(st.locate("app", "/data/more/x.db"), Ok((1, "x.db".to_string())));
        assert_eq!(st.locate("app", "/data/cachex.db"), Ok((0, "cachex.db".to_string())));
        // A mount that is no data mount shadows the data mount beneath it: never its hidden file.
        let e = st.locate("app", "/data/cache/app.db").unwrap_err();
        assert!(e.contains("tenant t1") && e.contains("/data/cache/app.db") && e.contains("no data mount"), "{e}");
        let e = st.locate("app", "/srv/app.db").unwrap_err();
        assert!(e.contains("/srv/app.db") && e.contains("no mount"), "{e}");
        assert!(st.locate("worker", "/data/app.db").unwrap_err().contains("worker"));
    }

    #[test]
    fn a_stack_restore_cut_short_is_undone_and_one_that_swapped_every_mount_is_finished() {
        let plan = step("mounts", Some("ok"), serde_json::json!({ "stack_mounts": ["/v/a", "/v/b"] }));
        let a = step("restore", Some("ok"), serde_json::json!({ "dir": "/v/a", "replaced": "/k/a" }));
        let b = step("restore", Some("ok"), serde_json::json!({ "dir": "/v/b", "replaced": "/k/b" }));
        let b_cut = step("restore", None, serde_json::json!({ "dir": "/v/b" }));
        let a_back = step("restore", Some("ok"), serde_json::json!({ "dir": "/v/a", "back": true }));
        let undo = step("undo-restore", Some("ok"), serde_json::json!({}));
        let pair = |k: &str, d: &str| (PathBuf::from(k), PathBuf::from(d));
        // Killed after the first swap: it goes back.
        assert_eq!(restore_left_to_undo(&[plan.clone(), a.clone(), b_cut]), [pair("/k/a", "/v/a")]);
        // Every mount swapped: finished, nothing goes back.
        assert!(restore_left_to_undo(&[plan.clone(), a.clone(), b.clone()]).is_empty());
        // Killed while putting them back: what is left goes back.
        assert_eq!(restore_left_to_undo(&[plan.clone(), a.clone(), b.clone(), undo, a_back]), [pair("/k/b", "/v/b")]);
        // Killed inside the database replay (begun, never ended): every mount goes back.
        let replay = step("replay", None, serde_json::json!({ "database": "pg-t" }));
        assert_eq!(
            restore_left_to_undo(&[plan.clone(), a.clone(), b.clone(), replay]),
            [pair("/k/a", "/v/a"), pair("/k/b", "/v/b")]
        );
        let replayed = step("replay", Some("ok"), serde_json::json!({ "database": "pg-t" }));
        assert!(restore_left_to_undo(&[plan.clone(), a.clone(), b.clone(), replayed]).is_empty());
        // Not a stack restore.
        assert!(
            restore_left_to_undo(&[step("restore", Some("ok"), serde_json::json!({ "replaced": "/k" }))]).is_empty()
        );
    }
}
