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
//! - stop (reverse start order), with `[app.database]` db-dump (the database dumped into the
//!   run's snapshot as a single container's is: the writers are stopped, the database is not;
//!   when its own service changes it is stopped after its dump), copy-delta of every mount, switch (each changed service's
//!   prior container aside, its staged one to its name), start (start order:
//!   `com.docker.compose.depends_on` when the labels say, else the fleet's), health (every
//!   started container running, healthy where it has a HEALTHCHECK, and answering its HTTP
//!   checks, the app's among them), soak (the canary), archive (each mount's copy into the
//!   run's snapshot), cleanup;
//! - a failure or a signal before the health gate passed undoes the whole stack
//!   ([`undo_stack`]): every changed service back to its prior container, the database (when
//!   the new version ran) kept as it left it and made the pre-switch dump again, every mount
//!   swapped back, every stopped container started; the run halts.
//!
//! A stack tenant always takes the copy path: a mount that cannot be copied beside itself (a
//! mount point, too little room) is refused at plan time (`stack_plan`), and so is
//! `pre_copy = false`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::stack_plan::item_mount_dirs;
use super::{AppRun, PlanItem, StepTimings, TenantOutcome, TenantReport};
use crate::adapters::docker::{Engine, StackMember};
use crate::adapters::mirror::{self, MirrorReport};
use crate::config::stack::{depends_on, start_order, COMPOSE_DEPENDS_ON};
use crate::config::HealthSpec;
use crate::container::Restart;
use crate::error::Result;
use crate::layout::{self, SnapshotId, SnapshotKind};
use crate::manifest::Manifest;
use crate::naming;
use crate::stack_undo::{gate_member, undo_stack};
use crate::step::{MemberJournal, MountJournal, ServiceJournal, StackJournal, Step};
use crate::undo::{record_rollout_archive, ROLLOUT_ZSTD_LEVEL};

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
    let run_id = &run.ctx.run_id();
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
                old_image_id: Some(spec.image_id()).filter(|i| !i.is_empty()),
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
        db: run.app.database.as_ref().map(|d| crate::step::DbJournal {
            container: d.container_of(&item.tenant),
            user: d.user.clone(),
            password_file: d.password_file.clone(),
            run_dir: run.run_dir.clone(),
            dumps: None,
            kept: None,
        }),
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
            Step::DbDump => self.j.db.is_some(),
            Step::Snapshot | Step::Rename | Step::PreSwitch | Step::PostSwitch => false,
            Step::Soak => self.soak,
            Step::Bake => false,
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
            let id = match ctx.begin(Some(&tenant), step, &self.j) {
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
            Step::DbDump => &mut self.timings.db_dump_ms,
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
            Step::DbDump => self.db_dump().await,
            Step::CopyDelta => self.mirror_all(true).await,
            Step::Switch => self.switch().await,
            Step::Start => self.start().await,
            Step::Health => self.health().await,
            Step::Soak | Step::Bake => self.soak().await,
            Step::Archive => self.archive().await,
            Step::Cleanup => self.cleanup().await,
            Step::Snapshot | Step::Rename | Step::PreSwitch | Step::PostSwitch => Ok(()),
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

    /// The database container of `[app.database]`, when it is one the rollout stops (its
    /// service changes): the db-dump step stops it, after the dump.
    fn db_member(&self) -> Option<&MemberJournal> {
        let db = self.j.db.as_ref()?;
        self.j.members.iter().find(|m| m.name == db.container)
    }

    /// Every container to stop, in reverse start order; a changed one's restart policy set to
    /// `no` first (it goes aside and must not come back by itself). The database container of
    /// `[app.database]` is not stopped here: it is dumped first (db-dump).
    async fn stop(&mut self) -> StepResult {
        crate::context::test_pause("before-stop");
        let engine = self.run.engine;
        for s in self.j.services.iter().filter(|s| s.restart.restarts()) {
            engine.set_restart(&s.old_id, &Restart::never()).await.map_err(|e| e.to_string())?;
        }
        self.t0 = Some(Instant::now());
        let db = self.db_member().map(|m| m.id.clone());
        for m in self.j.members.iter().rev().filter(|m| Some(&m.id) != db.as_ref()) {
            engine
                .stop(&m.id, self.j.stop_timeout_s)
                .await
                .map_err(|e| format!("stop of {} (service {}) failed: {e}", m.name, m.service))?;
        }
        Ok(())
    }

    /// `[app.database]`, the writers stopped and nothing new started: every declared database
    /// dumped into the run's snapshot (`rollout/<run>/<tenant>.db/`), each hashed, as a single
    /// container's db-dump does; the journal holds them for an undo. When the database's own
    /// service changes, its container is stopped after its dump (it is switched with the
    /// others). A failure fails the tenant before the switch: every container comes back on
    /// data and database untouched.
    async fn db_dump(&mut self) -> StepResult {
        let (Some(spec), true) = (self.run.app.database.as_ref(), self.j.db.is_some()) else { return Ok(()) };
        let r = self.run;
        let archive_rel = layout::tenant_archive(SnapshotKind::Rollout, &self.j.tenant);
        let pending = crate::database::dump(r.engine, spec, &self.item.tenant, None, &r.run_dir, &archive_rel)
            .await
            .map_err(|e| e.to_string())?;
        let dumps = pending.place().await.map_err(|e| format!("tenant {}: {e}", self.j.tenant))?;
        if let Some(db) = self.j.db.as_mut() {
            db.dumps = Some(dumps);
        }
        if let Some(m) = self.db_member() {
            r.engine
                .stop(&m.id, self.j.stop_timeout_s)
                .await
                .map_err(|e| format!("stop of {} (service {}, the database) failed: {e}", m.name, m.service))?;
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
        self.gate_all(true).await.map_err(|why| format!("new version failed: {why}"))?;
        self.downtime = self.t0.map(|t| t.elapsed());
        Ok(())
    }

    /// Gate every started container. `cancellable`: a signal ends the gate (the health step's:
    /// the stack is then undone); after the gate passed (the soak) a signal finishes the stack
    /// on its new version instead, so it is not heard here.
    async fn gate_all(&self, cancellable: bool) -> StepResult {
        let r = self.run;
        for m in &self.j.members {
            if cancellable && r.ctx.cancel.is_cancelled() {
                return Err("interrupted by a signal during the health gate".into());
            }
            let gate = gate_member(r.engine, r.prober, &m.name, &m.checks, m.changed);
            tokio::pin!(gate);
            let result = loop {
                tokio::select! {
                    biased;
                    _ = tokio::time::sleep(Duration::from_millis(100)), if cancellable => {
                        if r.ctx.cancel.is_cancelled() {
                            return Err("interrupted by a signal during the health gate".into());
                        }
                    }
                    g = &mut gate => break g,
                }
            };
            result.map_err(|why| format!("{} (service {}): {why}", m.name, m.service))?;
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
        self.gate_all(false).await.map_err(|why| format!("canary unhealthy after the {soak_s}s soak: {why}"))
    }

    /// After the health gate: each mount's copy archived into the run's snapshot (one archive
    /// per mount, all in the run's manifest), then removed. A failure keeps the copy.
    async fn archive(&mut self) -> StepResult {
        let r = self.run;
        let run_id = r.ctx.run_id().clone();
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
            let db = if i == 0 { self.j.db.as_ref().and_then(|d| d.dumps.clone()) } else { None };
            record_rollout_archive(r.ctx, &run_id, &run_dir, self.manifest, &key, &dest, &summary, db)
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
                let db = if i == 0 { j.db.as_ref().and_then(|d| d.dumps.clone()) } else { None };
                record_rollout_archive(ctx, run_id, &dir, &mut manifest, &key, &dest, &summary, db)?;
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
