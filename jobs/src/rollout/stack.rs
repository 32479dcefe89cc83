//! The rollout of an app whose tenant is a stack of containers (`[app.services]`): its plan,
//! with every refusal made before any container is touched, and its step loop.
//!
//! A stack tenant goes through the same [`Step`]s as a single container, each acting on the
//! whole stack and journaled with one [`StackJournal`]:
//! - only the services whose pin differs are changed; every other container keeps running as
//!   it is, unless the tenant's data must be held still: when a changed service writes the
//!   data, every writer of it stops with it;
//! - pre-copy mirrors every data mount (a bind dir or a `local` volume's dir) beside itself
//!   while the stack runs; create and check stage each changed service's new container (its
//!   compose labels, project network and aliases carried over, so `docker compose ps` and
//!   Coolify still find it);
//! - stop (reverse start order), copy-delta of every mount, switch (each changed service's
//!   prior container aside, its staged one to its name), start (start order:
//!   `com.docker.compose.depends_on` when the labels say, else the fleet's), health (every
//!   started container running, healthy where it has a HEALTHCHECK, and answering its HTTP
//!   checks, the app's among them), soak (the canary), archive (each mount's copy into the
//!   run's snapshot), cleanup;
//! - a failure or a signal before the health gate passed undoes the whole stack
//!   ([`undo_stack`]): every changed service back to its prior container, every mount swapped
//!   back, every stopped container started; the run halts.
//!
//! A stack tenant always takes the copy path: a mount that cannot be copied beside itself (a
//! mount point, too little room) is refused at plan time, and so is `pre_copy = false`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{AppRun, PlanItem, RolloutPlan, StepTimings, TenantOutcome, TenantReport};
use crate::adapters::docker::{Engine, Restart, StackMember, TenantMount, Unmapped};
use crate::adapters::mirror::{self, MirrorReport};
use crate::config::stack::{depends_on, start_order, COMPOSE_DEPENDS_ON};
use crate::config::{App, HealthSpec, Stack};
use crate::error::{Error, Result};
use crate::layout::{self, SnapshotId, SnapshotKind};
use crate::manifest::Manifest;
use crate::naming;
use crate::stack_undo::{gate_member, undo_stack};
use crate::step::{MemberJournal, MountJournal, ServiceJournal, StackJournal, Step};
use crate::types::{Digest, TenantId};
use crate::undo::{record_rollout_archive, ROLLOUT_ZSTD_LEVEL};

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
        let writer_changes = changed.iter().any(|s| s.writes);
        let to_stop: Vec<&crate::config::Service> = stack
            .services
            .iter()
            .filter(|s| changed.iter().any(|c| c.name == s.name) || (writer_changes && s.writes))
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

/// The host dir of a declared data mount, or why it cannot be one: a bind of a real dir (not a
/// symlink, not a mount point: the copy beside it is swapped back by a rename) or a named
/// volume of the `local` driver; never a tmpfs, an anonymous volume or another driver's volume.
fn data_mount(m: &TenantMount) -> std::result::Result<PathBuf, String> {
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

/// Every plan item's mounts can be copied beside themselves (reads the trees: blocking). A
/// stack has no archive-while-down path: a mount that cannot is refused, nothing touched.
pub(super) async fn check_copies(app: &App, plan: &RolloutPlan, members: &[StackMember]) -> Result<()> {
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
fn item_mount_dirs(app: &App, item: &PlanItem, members: &[StackMember]) -> Vec<PathBuf> {
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

/// How one step ended.
type StepResult = std::result::Result<(), String>;

/// One stack tenant's rollout in progress.
struct StackRoll<'a> {
    run: &'a AppRun<'a>,
    item: &'a PlanItem,
    manifest: &'a mut Manifest,
    soak: bool,
    j: StackJournal,
    /// Each changed service's prior container, as inspected before anything was touched.
    specs: BTreeMap<String, crate::adapters::docker::ContainerSpec>,
    t0: Option<Instant>,
    timings: StepTimings,
    downtime: Option<Duration>,
    pre_copy: Option<MirrorReport>,
    copy_delta: Option<MirrorReport>,
    notes: Vec<String>,
}

/// Roll one stack tenant through [`Step::ALL`] (the copy path).
pub(super) async fn roll_stack(
    run: &AppRun<'_>,
    item: &PlanItem,
    members: &[StackMember],
    manifest: &mut Manifest,
    soak: bool,
) -> Result<TenantReport> {
    let untouched = |outcome: TenantOutcome, detail: String| TenantReport {
        tenant: item.tenant.clone(),
        from: item.from.clone(),
        to: item.to.clone(),
        outcome,
        downtime_ms: None,
        snapshot: None,
        pre_copy: None,
        copy_delta: None,
        proxy: None,
        timings: StepTimings::default(),
        detail: Some(format!("not touched: {detail}")),
    };
    let (Some(stack), Some(si)) = (run.app.stack.as_ref(), item.stack.as_ref()) else {
        return Ok(untouched(TenantOutcome::Restored, "not a stack tenant".into()));
    };
    let engine = run.engine;
    let run_id = &run.ctx.run_id;
    let member = |svc: &str| members.iter().find(|m| m.container.tenant == item.tenant && m.service == svc);
    // Start order: the compose labels' depends_on where they say, else the fleet's order.
    let fleet_order: Vec<String> = stack.services.iter().map(|s| s.name.clone()).collect();
    let mut deps = BTreeMap::new();
    for s in &fleet_order {
        if let Some(l) = member(s).and_then(|m| m.labels.get(COMPOSE_DEPENDS_ON)) {
            deps.insert(s.clone(), depends_on(l));
        }
    }
    let order = start_order(&fleet_order, &deps);
    let changed: BTreeSet<&str> = si.changed.iter().map(|c| c.service.as_str()).collect();
    let to_stop: BTreeSet<&str> = si.stopped.iter().map(String::as_str).collect();
    let mut services = Vec::new();
    let mut specs = BTreeMap::new();
    let mut member_js = Vec::new();
    for name in &order {
        let Some(svc) = stack.service(name) else { continue };
        let Some(m) = member(name) else {
            return Ok(untouched(
                TenantOutcome::Skipped,
                format!("its service {name} has no container since the plan"),
            ));
        };
        let c = &m.container;
        if !to_stop.contains(name.as_str()) {
            continue;
        }
        // Read everything before touching anything: a container gone since the plan skips
        // the tenant, untouched.
        let spec = match engine.spec(&c.name).await {
            Ok(s) if s.id() == c.id => s,
            Ok(_) | Err(_) => {
                return Ok(untouched(
                    TenantOutcome::Skipped,
                    format!("container {} (service {name}) changed or disappeared since the plan; skipped", c.name),
                ))
            }
        };
        let mut checks: Vec<HealthSpec> = svc.health.iter().cloned().collect();
        if run.app.health.service.as_deref() == Some(name.as_str()) {
            checks.push(run.app.health.clone());
        }
        let is_changed = changed.contains(name.as_str());
        member_js.push(MemberJournal {
            service: name.clone(),
            name: c.name.clone(),
            id: c.id.clone(),
            changed: is_changed,
            checks,
        });
        if is_changed {
            services.push(ServiceJournal {
                service: name.clone(),
                name: c.name.clone(),
                pre_name: naming::pre_rollout(&c.name, run_id),
                staged_name: naming::staged(&c.name, run_id),
                old_id: c.id.clone(),
                old_image: spec.image_ref(),
                old_digest: c.digest.as_ref().map(|d| d.to_string()),
                new_image: svc.image.reference(),
                new_id: None,
                settings: spec.operator_settings(),
                restart: spec.restart(),
            });
            specs.insert(name.clone(), spec);
        }
    }
    let mut mounts = Vec::new();
    for (i, dir) in item_mount_dirs(run.app, item, members).into_iter().enumerate() {
        let key = format!("{}+{i}", item.tenant);
        let Some(copy) = layout::rollout_copy(&dir, run_id, &key) else {
            return Ok(untouched(TenantOutcome::Restored, format!("{} has no parent dir for its copy", dir.display())));
        };
        let what = si.mounts.get(i).cloned().unwrap_or_else(|| dir.display().to_string());
        mounts.push(MountJournal { what, data_dir: dir, copy, copy_ino: None, archive: None });
    }
    let j = StackJournal {
        app: run.app.name.clone(),
        tenant: item.tenant.to_string(),
        services,
        members: member_js,
        mounts,
        stop_timeout_s: run.app.stop_timeout_s,
        keep_old: run.keep_old,
    };
    let mut t = StackRoll {
        run,
        item,
        manifest,
        soak,
        j,
        specs,
        t0: None,
        timings: StepTimings::default(),
        downtime: None,
        pre_copy: None,
        copy_delta: None,
        notes: Vec::new(),
    };
    t.go().await
}

impl StackRoll<'_> {
    fn applies(&self, step: Step) -> bool {
        match step {
            Step::PreCopy | Step::CopyDelta | Step::Archive => !self.j.mounts.is_empty(),
            Step::Snapshot | Step::Rename => false,
            Step::Soak => self.soak,
            Step::Cleanup => !self.run.keep_old,
            _ => true,
        }
    }

    async fn go(&mut self) -> Result<TenantReport> {
        let ctx = self.run.ctx;
        let tenant = self.item.tenant.to_string();
        let mut last: Option<Step> = None;
        for step in Step::ALL {
            if !self.applies(step) {
                continue;
            }
            if let Some(l) = last.filter(|_| ctx.cancel.is_cancelled() && !step.after_health_gate()) {
                return self.undo_from(l, "interrupted by a signal".into()).await;
            }
            let id = match ctx.begin(Some(&tenant), step.as_str(), &self.j) {
                Ok(id) => id,
                Err(e) => {
                    let why = format!("state.db could not record step {step} as begun: {e}");
                    match last {
                        None => return Ok(self.report(TenantOutcome::Restored, Some(format!("not touched: {why}")))),
                        Some(_) if !step.failure_undoes() => {
                            self.notes.push(why);
                            continue;
                        }
                        Some(l) => return self.undo_from(l, why).await,
                    }
                }
            };
            step.during().reach();
            let began = Instant::now();
            let result = self.run_step(step).await;
            self.timings_record(step, began.elapsed());
            let written = ctx.end(id, if result.is_ok() { "ok" } else { "failed" }, Some(&self.j));
            let result = match (written, result) {
                (Ok(()), r) => r,
                (Err(e), Ok(())) if !step.failure_undoes() => {
                    self.notes.push(format!("state.db could not record the end of step {step}: {e}"));
                    Ok(())
                }
                (Err(e), r) => Err(format!(
                    "{}state.db could not record the end of step {step}: {e}",
                    r.err().map(|f| format!("{f}; ")).unwrap_or_default()
                )),
            };
            step.after().reach();
            match result {
                Err(why) if step.failure_undoes() => return self.undo_from(step, why).await,
                Err(why) => self.notes.push(why),
                Ok(()) => {}
            }
            last = Some(step);
        }
        let detail = (!self.notes.is_empty()).then(|| self.notes.join("; "));
        Ok(self.report(TenantOutcome::Rolled, detail))
    }

    fn timings_record(&mut self, step: Step, took: Duration) {
        let ms = took.as_millis() as u64;
        let slot = match step {
            Step::PreCopy => &mut self.timings.pre_copy_ms,
            Step::Create => &mut self.timings.create_ms,
            Step::Check => &mut self.timings.check_ms,
            Step::Stop => &mut self.timings.stop_ms,
            Step::CopyDelta => &mut self.timings.copy_delta_ms,
            Step::Switch => &mut self.timings.switch_ms,
            Step::Start => &mut self.timings.start_ms,
            Step::Health => &mut self.timings.health_ms,
            Step::Archive => &mut self.timings.archive_ms,
            _ => return,
        };
        *slot = ms;
    }

    async fn run_step(&mut self, step: Step) -> StepResult {
        match step {
            Step::PreCopy => self.mirror_all(false).await,
            Step::Create => self.create().await,
            Step::Check => self.check().await,
            Step::Stop => self.stop().await,
            Step::CopyDelta => self.mirror_all(true).await,
            Step::Switch => self.switch().await,
            Step::Start => self.start().await,
            Step::Health => self.health().await,
            Step::Soak => self.soak().await,
            Step::Archive => self.archive().await,
            Step::Cleanup => self.cleanup().await,
            Step::Snapshot | Step::Rename => Ok(()),
        }
    }

    async fn undo_from(&mut self, step: Step, why: String) -> Result<TenantReport> {
        let r = self.run;
        let began = Instant::now();
        let undo = undo_stack(r.ctx, r.engine, r.prober, &self.j, step.new_version_may_have_run()).await;
        self.timings.undo_ms = began.elapsed().as_millis() as u64;
        self.downtime = self.t0.map(|t| t.elapsed());
        let outcome = if undo.ok { TenantOutcome::Restored } else { TenantOutcome::PersonNeeded };
        Ok(self.report(outcome, Some(format!("{why}; {}", undo.detail))))
    }

    fn report(&self, outcome: TenantOutcome, detail: Option<String>) -> TenantReport {
        TenantReport {
            tenant: self.item.tenant.clone(),
            from: self.item.from.clone(),
            to: self.item.to.clone(),
            outcome,
            downtime_ms: self.downtime.map(|d| d.as_millis() as u64),
            snapshot: self.j.mounts.first().and_then(|m| m.archive.clone()),
            pre_copy: self.pre_copy.clone(),
            copy_delta: self.copy_delta.clone(),
            proxy: None,
            timings: self.timings.clone(),
            detail,
        }
    }

    /// Pre-copy (while the stack runs) or copy-delta (while its writers are stopped): mirror
    /// every mount to its copy; after the delta, each copy's inode is journaled for the swap
    /// back. A failed pre-copy leaves the stack untouched (undo removes nothing but the copies).
    async fn mirror_all(&mut self, delta: bool) -> StepResult {
        let mut total: Option<MirrorReport> = None;
        for m in &mut self.j.mounts {
            let (src, dst) = (m.data_dir.clone(), m.copy.clone());
            let what = m.what.clone();
            let report = crate::blocking::run("mirror", move || mirror::mirror(&src, &dst))
                .await
                .map_err(|e| format!("copy of {what} failed: {e}"))?
                .map_err(|e| format!("copy of {what} failed: {e}"))?;
            if delta {
                use std::os::unix::fs::MetadataExt;
                let ino = std::fs::symlink_metadata(&m.copy).map_err(|e| format!("copy of {what}: {e}"))?.ino();
                m.copy_ino = Some(ino);
            }
            total = Some(match total {
                None => report,
                Some(mut t) => {
                    t.files_copied += report.files_copied;
                    t.bytes_copied += report.bytes_copied;
                    t.removed += report.removed;
                    t.unchanged += report.unchanged;
                    t
                }
            });
        }
        if delta {
            self.copy_delta = total;
        } else {
            self.pre_copy = total;
            crate::context::test_pause("after-pre-copy");
        }
        Ok(())
    }

    async fn create(&mut self) -> StepResult {
        let engine = self.run.engine;
        for s in &mut self.j.services {
            let spec = self.specs.get(&s.service).ok_or_else(|| format!("service {}: no spec", s.service))?;
            let id = engine.create_staged(&s.staged_name, spec, &s.new_image).await.map_err(|e| e.to_string())?;
            s.new_id = Some(id);
        }
        Ok(())
    }

    /// Each staged container kept what the operator (compose, Coolify) set on the prior one:
    /// its labels (the compose project and service among them), networks and aliases, mounts
    /// (volumes by name) and restart policy.
    async fn check(&mut self) -> StepResult {
        for s in &self.j.services {
            let spec = self.run.engine.spec(&s.staged_name).await.map_err(|e| e.to_string())?;
            let actual = spec.actual_settings();
            let want = s.settings.as_staged(&s.staged_name);
            let mut lost = want.lost_in(&actual);
            let has = spec.restart();
            if has.to_string() != s.restart.to_string() {
                lost.push(format!("restart policy {} became {has}", s.restart));
            }
            let added = want.aliases_added_in(&actual);
            if !lost.is_empty() {
                return Err(format!(
                    "the new container of service {} lost what the operator set: {}",
                    s.service,
                    lost.join(", ")
                ));
            }
            if !added.is_empty() {
                return Err(format!(
                    "the new container of service {} has what the prior one had not: {}",
                    s.service,
                    added.join(", ")
                ));
            }
        }
        Ok(())
    }

    /// Every container to stop, in reverse start order; a changed one's restart policy set to
    /// `no` first (it goes aside and must not come back by itself).
    async fn stop(&mut self) -> StepResult {
        crate::context::test_pause("before-stop");
        let engine = self.run.engine;
        for s in self.j.services.iter().filter(|s| s.restart.restarts()) {
            engine.set_restart(&s.old_id, &Restart::never()).await.map_err(|e| e.to_string())?;
        }
        self.t0 = Some(Instant::now());
        for m in self.j.members.iter().rev() {
            engine
                .stop(&m.id, self.j.stop_timeout_s)
                .await
                .map_err(|e| format!("stop of {} (service {}) failed: {e}", m.name, m.service))?;
        }
        Ok(())
    }

    /// Each changed service: the prior container (still stopped) aside, the staged one to its
    /// name.
    async fn switch(&mut self) -> StepResult {
        crate::context::test_pause("before-switch");
        let engine = self.run.engine;
        for m in &self.j.members {
            let st = engine.state(&m.id).await.map_err(|e| e.to_string())?;
            if st.running || st.restarting || st.paused {
                return Err(format!(
                    "{} (service {}) was started again by something other than slipway after slipway stopped it \
                     (compose, a systemd unit, Coolify?); not switching",
                    m.name, m.service
                ));
            }
        }
        for (n, s) in self.j.services.iter().enumerate() {
            engine.rename_id(&s.old_id, &s.name, &s.pre_name).await.map_err(|e| e.to_string())?;
            if n == 0 {
                if let Some(point) = Step::Switch.halfway() {
                    point.reach();
                }
            }
            let id = s.new_id.clone().unwrap_or_default();
            engine.rename_id(&id, &s.staged_name, &s.name).await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Every stopped container, in start order: a changed service's new container under its
    /// name, an unchanged writer by its id.
    async fn start(&mut self) -> StepResult {
        let engine = self.run.engine;
        for m in &self.j.members {
            let target = if m.changed { m.name.clone() } else { m.id.clone() };
            engine
                .start(&target)
                .await
                .map_err(|e| format!("new version failed: start of {} (service {}) failed: {e}", m.name, m.service))?;
        }
        Ok(())
    }

    async fn health(&mut self) -> StepResult {
        self.gate_all().await.map_err(|why| format!("new version failed: {why}"))?;
        self.downtime = self.t0.map(|t| t.elapsed());
        Ok(())
    }

    async fn gate_all(&self) -> StepResult {
        let r = self.run;
        for m in &self.j.members {
            if r.ctx.cancel.is_cancelled() {
                return Err("interrupted by a signal during the health gate".into());
            }
            gate_member(r.engine, r.prober, &m.name, &m.checks)
                .await
                .map_err(|why| format!("{} (service {}): {why}", m.name, m.service))?;
        }
        Ok(())
    }

    async fn soak(&mut self) -> StepResult {
        let r = self.run;
        let soak_s = r.app.canary_soak_s;
        let until = Instant::now() + Duration::from_secs(soak_s);
        while Instant::now() < until && !r.ctx.cancel.is_cancelled() {
            tokio::time::sleep(Duration::from_millis(200).min(until.saturating_duration_since(Instant::now()))).await;
        }
        self.gate_all().await.map_err(|why| format!("canary unhealthy after the {soak_s}s soak: {why}"))
    }

    /// After the health gate: each mount's copy archived into the run's snapshot (one archive
    /// per mount, all in the run's manifest), then removed. A failure keeps the copy.
    async fn archive(&mut self) -> StepResult {
        let r = self.run;
        let run_id = r.ctx.run_id.clone();
        let run_dir = SnapshotId::rollout(&run_id).dir(&r.ctx.cfg.backup_root);
        for (i, m) in self.j.mounts.iter_mut().enumerate() {
            if m.archive.is_some() {
                continue;
            }
            let key = format!("{}+{i}", self.item.tenant);
            let dest = run_dir.join(layout::tenant_archive(SnapshotKind::Rollout, &key));
            let (src, d) = (m.copy.clone(), dest.clone());
            let summary = crate::blocking::run("archive", move || {
                crate::adapters::archive::create_with_level(&src, &d, ROLLOUT_ZSTD_LEVEL)
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("archive of the rollout copy {} failed ({e}); it stays", m.copy.display()))?;
            record_rollout_archive(r.ctx, &run_id, &run_dir, self.manifest, &key, &dest, &summary)
                .map_err(|e| e.to_string())?;
            m.archive = Some(dest);
            crate::context::crash_point("rollout-copy-removing");
            let c = m.copy.clone();
            crate::blocking::run("drop copy", move || crate::undo::drop_copy(&c))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    async fn cleanup(&mut self) -> StepResult {
        for s in &self.j.services {
            self.run.engine.remove(&s.pre_name).await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// Keep a stack whose new version passed its health gate (recover): archive the copies left,
/// remove the prior containers unless kept. Returns what was done and whether it is safe.
pub async fn finish_stack(
    ctx: &crate::context::Ctx,
    engine: &Engine,
    run_id: &crate::types::RunId,
    j: &StackJournal,
    dry_run: bool,
) -> Result<(String, bool)> {
    let mut done = vec!["kept the new version of the stack (it had passed its health gate)".to_string()];
    let mut ok = true;
    let snap = SnapshotId::rollout(run_id);
    let dir = snap.dir(&ctx.cfg.backup_root);
    let mut manifest = Manifest::read(&dir)?.unwrap_or_else(|| Manifest::new(&snap));
    for (i, m) in j.mounts.iter().enumerate().filter(|(_, m)| m.copy.is_dir()) {
        let key = format!("{}+{i}", j.tenant);
        if dry_run {
            done.push(format!("would archive the rollout copy of {} and remove it", m.what));
            continue;
        }
        if manifest.tenant(&key).is_some() {
            // Recorded before the crash: the copy was being removed; finish removing it.
            let c = m.copy.clone();
            match crate::blocking::run("drop copy", move || crate::undo::drop_copy(&c)).await? {
                Ok(()) => done.push(format!("removed the rest of the archived rollout copy of {}", m.what)),
                Err(e) => {
                    ok = false;
                    done.push(format!("the archived rollout copy {} could not be removed: {e}", m.copy.display()));
                }
            }
            continue;
        }
        let dest = dir.join(layout::tenant_archive(SnapshotKind::Rollout, &key));
        let (src, d) = (m.copy.clone(), dest.clone());
        let made = crate::blocking::run("archive", move || {
            crate::adapters::archive::create_with_level(&src, &d, ROLLOUT_ZSTD_LEVEL)
        })
        .await?;
        match made {
            Ok(summary) => {
                record_rollout_archive(ctx, run_id, &dir, &mut manifest, &key, &dest, &summary)?;
                let c = m.copy.clone();
                let _ = crate::blocking::run("drop copy", move || crate::undo::drop_copy(&c)).await?;
                done.push(format!("archived the rollout copy of {} to {}", m.what, dest.display()));
            }
            Err(e) => {
                ok = false;
                done.push(format!("archiving the rollout copy {} failed ({e}); it stays", m.copy.display()));
            }
        }
    }
    if !j.keep_old {
        for s in &j.services {
            if engine.exists(&s.pre_name).await? {
                if !dry_run {
                    engine.remove(&s.pre_name).await?;
                }
                done.push(format!("removed the prior container of service {}", s.service));
            }
        }
    }
    Ok((done.join("; "), ok))
}
