//! `rollout`: roll every tenant of an app to the digest pinned in git, canary first, one
//! tenant at a time. Each tenant goes through an explicit state machine — stop, snapshot,
//! rename, create, check, start, health, cleanup — each step journaled before and after with
//! everything needed to undo it ([`TenantJournal`]). On any failure the tenant is undone
//! ([`undo_tenant`]): new container removed, data restored from the snapshot when the new
//! version may have written to it, the prior container renamed back, started and
//! health-checked; the run halts. Customer data is never changed before a verified snapshot
//! of it exists.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::adapters::archive;
use crate::adapters::desired;
use crate::adapters::docker::{Engine, OperatorSettings, TenantContainer};
use crate::adapters::health::Prober;
use crate::config::{App, HealthSpec};
use crate::context::{crash_point, Ctx};
use crate::error::{Error, ExitKind, Result};
use crate::manifest::{ArchiveEntry, Manifest, SnapshotKind};
use crate::types::{Digest, RunId, TenantId};

/// zstd level of rollout snapshots: taken while the tenant is down, so speed over ratio.
const ROLLOUT_ZSTD_LEVEL: i32 = 1;

/// What to roll out.
#[derive(Debug, Clone, Default)]
pub struct RolloutOptions {
    /// Only this app (default: every app whose pin differs).
    pub app: Option<String>,
    /// Read the desired state at this ref instead of the configured branch.
    pub git_ref: Option<String>,
    /// Only these tenants.
    pub tenants: Vec<TenantId>,
    /// Print the plan and touch nothing.
    pub dry_run: bool,
    /// Keep the pre-rollout containers after success.
    pub keep_old: bool,
}

/// One tenant to roll.
#[derive(Debug, Clone, Serialize)]
pub struct PlanItem {
    /// Tenant.
    pub tenant: TenantId,
    /// Its container.
    pub container: String,
    /// Digest it runs now.
    pub from: Option<Digest>,
    /// Digest it will run.
    pub to: Digest,
    /// The canary goes first and gates the rest.
    pub canary: bool,
}

/// The plan for one app.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutPlan {
    /// App name.
    pub app: String,
    /// The pinned image.
    pub image: String,
    /// Desired-state commit.
    pub commit: String,
    /// Tenants to roll, in order (canary first).
    pub items: Vec<PlanItem>,
    /// Tenants left alone because of `hold`.
    pub held: Vec<TenantId>,
    /// Tenants already on the pinned digest.
    pub up_to_date: Vec<TenantId>,
}

/// How one tenant ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantOutcome {
    /// Running the new digest, healthy.
    Rolled,
    /// Failed; prior container and data back, healthy.
    Restored,
    /// Failed and the undo failed too: a person is needed.
    PersonNeeded,
    /// Not reached: an earlier tenant halted the run, or it was interrupted.
    NotReached,
}

impl TenantOutcome {
    fn word(self) -> &'static str {
        match self {
            TenantOutcome::Rolled => "rolled",
            TenantOutcome::Restored => "restored",
            TenantOutcome::PersonNeeded => "person_needed",
            TenantOutcome::NotReached => "not_reached",
        }
    }
}

/// Milliseconds spent in each step of a tenant's rollout.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StepTimings {
    /// `docker stop`.
    pub stop_ms: u64,
    /// Archiving the data dir.
    pub snapshot_ms: u64,
    /// Renaming the prior container aside.
    pub rename_ms: u64,
    /// `docker create` (and network connects).
    pub create_ms: u64,
    /// Checking the new container against the old one.
    pub check_ms: u64,
    /// `docker start`.
    pub start_ms: u64,
    /// Start → first 2xx.
    pub health_ms: u64,
}

/// The result for one tenant.
#[derive(Debug, Clone, Serialize)]
pub struct TenantReport {
    /// Tenant.
    pub tenant: TenantId,
    /// Digest before.
    pub from: Option<Digest>,
    /// Digest rolled to.
    pub to: Digest,
    /// Outcome.
    pub outcome: TenantOutcome,
    /// Stop begun → healthy again (on either version).
    pub downtime_ms: Option<u64>,
    /// Where its data was snapshotted.
    pub snapshot: Option<PathBuf>,
    /// Step timings.
    pub timings: StepTimings,
    /// What went wrong, and what state it was left in.
    pub detail: Option<String>,
}

/// The result for one app.
#[derive(Debug, Clone, Serialize)]
pub struct AppReport {
    /// The plan that was (or would be) carried out.
    pub plan: RolloutPlan,
    /// Run id (none for a dry run or an empty plan).
    pub run_id: Option<RunId>,
    /// Per tenant, in plan order.
    pub tenants: Vec<TenantReport>,
    /// How it ended.
    pub outcome: ExitKind,
    /// One line for people.
    pub summary: String,
}

/// The result of `slipway rollout`.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutReport {
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// Desired-state commit.
    pub commit: String,
    /// One entry per app considered.
    pub apps: Vec<AppReport>,
}

impl RolloutReport {
    /// The worst outcome over all apps.
    pub fn exit_kind(&self) -> ExitKind {
        worst(self.apps.iter().map(|a| a.outcome))
    }
}

/// The most severe of several outcomes.
pub fn worst(kinds: impl Iterator<Item = ExitKind>) -> ExitKind {
    let rank = |k: ExitKind| match k {
        ExitKind::Success => 0,
        ExitKind::Failure => 2,
        ExitKind::Halted => 3,
        ExitKind::Interrupted => 4,
        ExitKind::PersonNeeded => 5,
        _ => 1,
    };
    kinds.max_by_key(|k| rank(*k)).unwrap_or(ExitKind::Success)
}

/// Everything needed to finish or undo a tenant's rollout, journaled with every step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TenantJournal {
    /// App.
    pub app: String,
    /// Tenant.
    pub tenant: String,
    /// Container name.
    pub name: String,
    /// Name the prior container is renamed to.
    pub pre_name: String,
    /// Id of the prior container.
    pub old_id: String,
    /// Image reference of the prior container.
    pub old_image: String,
    /// Digest of the prior container.
    pub old_digest: Option<String>,
    /// Image reference rolled to.
    pub new_image: String,
    /// Id of the new container, once created.
    pub new_id: Option<String>,
    /// The tenant's data dir.
    pub data_dir: PathBuf,
    /// The snapshot archive, once written.
    pub snapshot: Option<PathBuf>,
    /// Its sha256.
    pub sha256: Option<String>,
    /// Stop timeout.
    pub stop_timeout_s: u64,
    /// Health probe.
    pub health: HealthSpec,
    /// Keep the prior container after success.
    pub keep_old: bool,
    /// The prior container's operator settings (to check the new one against).
    pub settings: OperatorSettings,
}

/// Run `rollout`.
pub async fn rollout(ctx: &mut Ctx, opts: &RolloutOptions) -> Result<RolloutReport> {
    let state = desired::read(&ctx.cfg.desired, &ctx.cfg.state_dir, opts.git_ref.as_deref())?;
    let apps: Vec<&App> = match &opts.app {
        Some(name) => vec![state.fleet.app(name)?],
        None => state.fleet.apps.iter().collect(),
    };
    let engine = Engine::connect(&ctx.cfg.docker).await?;
    let mut reports = Vec::new();
    for app in apps {
        let tenants = engine.tenants(app).await?;
        let plan = plan(app, &state.commit, &tenants, &opts.tenants)?;
        if opts.dry_run || plan.items.is_empty() {
            let summary = if plan.items.is_empty() {
                format!("app {}: every tenant already runs {}", app.name, app.image.digest().short())
            } else {
                format!("app {}: would roll {} tenant(s) to {}", app.name, plan.items.len(), app.image.digest().short())
            };
            reports.push(AppReport { plan, run_id: None, tenants: Vec::new(), outcome: ExitKind::Success, summary });
            continue;
        }
        let report = rollout_app(ctx, &engine, app, plan, opts.keep_old).await?;
        let stop = report.outcome != ExitKind::Success;
        reports.push(report);
        if stop {
            break;
        }
    }
    Ok(RolloutReport { dry_run: opts.dry_run, commit: state.commit, apps: reports })
}

/// Compute the plan: tenants whose digest differs from the pin, minus `hold`, canary first.
pub fn plan(app: &App, commit: &str, tenants: &[TenantContainer], only: &[TenantId]) -> Result<RolloutPlan> {
    for t in only {
        if !tenants.iter().any(|c| &c.tenant == t) {
            let known: Vec<&str> = tenants.iter().map(|c| c.tenant.as_str()).collect();
            return Err(Error::Usage(format!(
                "app {}: no tenant \"{t}\" (tenants: {})",
                app.name,
                if known.is_empty() { "none".to_string() } else { known.join(", ") }
            )));
        }
    }
    let pinned = app.image.digest();
    let mut items = Vec::new();
    let mut held = Vec::new();
    let mut up_to_date = Vec::new();
    for c in tenants {
        if !only.is_empty() && !only.contains(&c.tenant) {
            continue;
        }
        if c.digest.as_ref() == Some(pinned) {
            up_to_date.push(c.tenant.clone());
        } else if app.hold.contains(&c.tenant) {
            held.push(c.tenant.clone());
        } else {
            items.push(PlanItem {
                tenant: c.tenant.clone(),
                container: c.name.clone(),
                from: c.digest.clone(),
                to: pinned.clone(),
                canary: false,
            });
        }
    }
    // Tenants arrive sorted; the configured canary (if it is in the plan) goes first.
    let canary_pos = app.canary.as_ref().and_then(|c| items.iter().position(|i| &i.tenant == c)).unwrap_or(0);
    if !items.is_empty() {
        let c = items.remove(canary_pos);
        items.insert(0, c);
        items[0].canary = true;
    }
    Ok(RolloutPlan {
        app: app.name.clone(),
        image: app.image.to_string(),
        commit: commit.to_string(),
        items,
        held,
        up_to_date,
    })
}

async fn rollout_app(
    ctx: &mut Ctx,
    engine: &Engine,
    app: &App,
    plan: RolloutPlan,
    keep_old: bool,
) -> Result<AppReport> {
    // Pre-pull before touching any tenant: a missing digest changes nothing.
    ctx.progress.start(&format!("pull {}", app.image), None);
    let pulled = engine.pull(&app.image).await;
    ctx.progress.finish();
    pulled?;
    ctx.next_run_id();
    let digest = app.image.digest().to_string();
    ctx.start_run("rollout", Some(&app.name), Some(&plan.commit), Some(&digest))?;
    let prober = Prober::new()?;
    let mut tenants = Vec::new();
    let mut outcome = ExitKind::Success;
    let run_dir = ctx.cfg.backup_root.join("rollout").join(ctx.run_id.as_str());
    let mut manifest = Manifest::new(SnapshotKind::Rollout, ctx.run_id.as_str());
    for (i, item) in plan.items.iter().enumerate() {
        if outcome != ExitKind::Success || ctx.cancel.is_cancelled() {
            if outcome == ExitKind::Success {
                outcome = ExitKind::Interrupted;
            }
            tenants.push(not_reached(item));
            continue;
        }
        let report = roll_tenant(ctx, engine, &prober, app, item, &run_dir, &mut manifest, keep_old).await?;
        outcome = match report.outcome {
            TenantOutcome::Rolled => ExitKind::Success,
            TenantOutcome::Restored if ctx.cancel.is_cancelled() => ExitKind::Interrupted,
            TenantOutcome::Restored => ExitKind::Halted,
            TenantOutcome::PersonNeeded => ExitKind::PersonNeeded,
            TenantOutcome::NotReached => ExitKind::Interrupted,
        };
        ctx.store.record_tenant(&slipway_state::TenantResult {
            run_id: ctx.run_id.to_string(),
            tenant: item.tenant.to_string(),
            from_digest: item.from.as_ref().map(|d| d.to_string()),
            to_digest: Some(item.to.to_string()),
            outcome: report.outcome.word().to_string(),
            downtime_ms: report.downtime_ms.map(|d| d as i64),
            detail: report.detail.clone(),
        })?;
        let canary_ok = i == 0 && outcome == ExitKind::Success && plan.items.len() > 1;
        tenants.push(report);
        if canary_ok {
            if let Some(r) = soak_canary(ctx, engine, &prober, app, item).await? {
                outcome = r.0;
                if let Some(t) = tenants.last_mut() {
                    t.outcome = r.1;
                    t.detail = Some(r.2);
                }
            }
        }
    }
    let rolled = tenants.iter().filter(|t| t.outcome == TenantOutcome::Rolled).count();
    let summary = match outcome {
        ExitKind::Success => format!("app {}: rolled {rolled} tenant(s) to {}", app.name, app.image.digest().short()),
        ExitKind::Halted => {
            let t = tenants.iter().find(|t| t.outcome == TenantOutcome::Restored);
            let untouched = tenants.iter().filter(|t| t.outcome == TenantOutcome::NotReached).count();
            format!(
                "app {}: HALTED at tenant {}: restored to its prior container and data; {rolled} rolled, {untouched} untouched",
                app.name,
                t.map_or("?", |t| t.tenant.as_str()),
            )
        }
        ExitKind::Interrupted => {
            format!("app {}: interrupted; {rolled} tenant(s) rolled, no tenant left stopped", app.name)
        }
        _ => {
            let t = tenants.iter().find(|t| t.outcome == TenantOutcome::PersonNeeded);
            format!(
                "app {}: ROLLBACK FAILED at tenant {}: {}; a person is needed",
                app.name,
                t.map_or("?", |t| t.tenant.as_str()),
                t.and_then(|t| t.detail.as_deref()).unwrap_or("")
            )
        }
    };
    let word = match outcome {
        ExitKind::Success => "success",
        ExitKind::Halted => "halted",
        ExitKind::Interrupted => "interrupted",
        ExitKind::PersonNeeded => "person_needed",
        _ => "failed",
    };
    ctx.store.finish_run(ctx.run_id.as_str(), word, outcome.code() as i64, &summary)?;
    Ok(AppReport { plan, run_id: Some(ctx.run_id.clone()), tenants, outcome, summary })
}

fn not_reached(item: &PlanItem) -> TenantReport {
    TenantReport {
        tenant: item.tenant.clone(),
        from: item.from.clone(),
        to: item.to.clone(),
        outcome: TenantOutcome::NotReached,
        downtime_ms: None,
        snapshot: None,
        timings: StepTimings::default(),
        detail: None,
    }
}

/// After the canary is healthy: wait `canary_soak_s`, probe again; on failure undo it.
/// Returns the new outcome when the soak failed.
async fn soak_canary(
    ctx: &Ctx,
    engine: &Engine,
    prober: &Prober,
    app: &App,
    item: &PlanItem,
) -> Result<Option<(ExitKind, TenantOutcome, String)>> {
    let soak = Duration::from_secs(app.canary_soak_s);
    let until = Instant::now() + soak;
    while Instant::now() < until && !ctx.cancel.is_cancelled() {
        tokio::time::sleep(Duration::from_millis(200).min(until.saturating_duration_since(Instant::now()))).await;
    }
    let step =
        ctx.begin(Some(item.tenant.as_str()), "canary-soak", &serde_json::json!({"soak_s": app.canary_soak_s}))?;
    let check = prober.gate(engine, &item.container, &app.health, Some(Duration::from_secs(5))).await?;
    match check {
        Ok(_) => {
            ctx.end(step, "ok", None::<&()>)?;
            Ok(None)
        }
        Err(why) => {
            ctx.end(step, "failed", Some(&serde_json::json!({"reason": why.to_string()})))?;
            // The canary went bad during the soak: undo it from the journal of its rollout.
            let journal = last_journal(ctx, item.tenant.as_str())?
                .ok_or_else(|| Error::Other(format!("no journal for canary {}", item.tenant)))?;
            let undo = undo_tenant(ctx, engine, prober, &journal, true).await?;
            let detail = format!("canary unhealthy after the {}s soak: {why}; {}", app.canary_soak_s, undo.detail);
            Ok(Some(if undo.ok {
                (ExitKind::Halted, TenantOutcome::Restored, detail)
            } else {
                (ExitKind::PersonNeeded, TenantOutcome::PersonNeeded, detail)
            }))
        }
    }
}

/// The newest journal detail of a tenant in the current run.
fn last_journal(ctx: &Ctx, tenant: &str) -> Result<Option<TenantJournal>> {
    Ok(ctx
        .store
        .steps(ctx.run_id.as_str())?
        .into_iter()
        .rev()
        .filter(|s| s.tenant.as_deref() == Some(tenant))
        .find_map(|s| s.detail.and_then(|d| serde_json::from_str(&d).ok())))
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

#[allow(clippy::too_many_arguments)]
async fn roll_tenant(
    ctx: &Ctx,
    engine: &Engine,
    prober: &Prober,
    app: &App,
    item: &PlanItem,
    run_dir: &Path,
    manifest: &mut Manifest,
    keep_old: bool,
) -> Result<TenantReport> {
    let tenant = item.tenant.as_str();
    let name = item.container.clone();
    let mut timings = StepTimings::default();
    let report = |outcome, downtime: Option<Duration>, snapshot, timings, detail| TenantReport {
        tenant: item.tenant.clone(),
        from: item.from.clone(),
        to: item.to.clone(),
        outcome,
        downtime_ms: downtime.map(ms),
        snapshot,
        timings,
        detail,
    };
    // Read everything before touching anything: a failure here changes nothing.
    let spec = match engine.spec(&name).await {
        Ok(s) => s,
        Err(e) => return Ok(report(TenantOutcome::Restored, None, None, timings, Some(format!("not touched: {e}")))),
    };
    let data_dir = app.data_dir_of(&item.tenant);
    if !data_dir.is_dir() {
        let detail = format!("not touched: data dir {} does not exist", data_dir.display());
        return Ok(report(TenantOutcome::Restored, None, None, timings, Some(detail)));
    }
    let mut j = TenantJournal {
        app: app.name.clone(),
        tenant: tenant.to_string(),
        name: name.clone(),
        pre_name: format!("{name}.pre-rollout-{}", ctx.run_id),
        old_id: spec.id(),
        old_image: spec.image_ref(),
        old_digest: item.from.as_ref().map(|d| d.to_string()),
        new_image: app.image.reference(),
        new_id: None,
        data_dir: data_dir.clone(),
        snapshot: None,
        sha256: None,
        stop_timeout_s: app.stop_timeout_s,
        health: app.health.clone(),
        keep_old,
        settings: spec.operator_settings(),
    };

    let t0 = Instant::now();
    // SIGINT/SIGTERM between steps: undo this tenant now rather than go on.
    macro_rules! stop_if_cancelled {
        ($restore:expr, $snap:expr) => {
            if ctx.cancel.is_cancelled() {
                let undo = undo_tenant(ctx, engine, prober, &j, $restore).await?;
                let detail = format!("interrupted by a signal; {}", undo.detail);
                return Ok(report(undo.outcome(), Some(t0.elapsed()), $snap, timings, Some(detail)));
            }
        };
    }
    // 1. stop
    let s = ctx.begin(Some(tenant), "stop", &j)?;
    let t = Instant::now();
    if let Err(e) = engine.stop(&name, app.stop_timeout_s).await {
        ctx.end(s, "failed", Some(&j))?;
        let undo = undo_tenant(ctx, engine, prober, &j, false).await?;
        return Ok(report(
            undo.outcome(),
            Some(t0.elapsed()),
            None,
            timings,
            Some(format!("stop failed: {e}; {}", undo.detail)),
        ));
    }
    timings.stop_ms = ms(t.elapsed());
    ctx.end(s, "ok", Some(&j))?;
    crash_point("after-stop");
    stop_if_cancelled!(false, None);

    // 2. snapshot (the data is still only the prior version's)
    let s = ctx.begin(Some(tenant), "snapshot", &j)?;
    crash_point("during-snapshot");
    let t = Instant::now();
    let archive_path = run_dir.join(format!("{tenant}.tar.zst"));
    let snap = {
        let (src, dest) = (data_dir.clone(), archive_path.clone());
        crate::blocking::run("snapshot", move || archive::create_with_level(&src, &dest, ROLLOUT_ZSTD_LEVEL)).await?
    };
    let summary = match snap {
        Ok(summary) => summary,
        Err(e) => {
            ctx.end(s, "failed", Some(&j))?;
            let undo = undo_tenant(ctx, engine, prober, &j, false).await?;
            let detail = format!("snapshot of {} failed: {e}; {}", data_dir.display(), undo.detail);
            return Ok(report(undo.outcome(), Some(t0.elapsed()), None, timings, Some(detail)));
        }
    };
    timings.snapshot_ms = ms(t.elapsed());
    j.snapshot = Some(archive_path.clone());
    j.sha256 = Some(summary.sha256.clone());
    record_rollout_snapshot(ctx, run_dir, manifest, tenant, &archive_path, &summary)?;
    ctx.end(s, "ok", Some(&j))?;
    crash_point("after-snapshot");
    stop_if_cancelled!(false, Some(archive_path.clone()));

    // 3. rename the prior container aside; 4. create the new one; 5. check it.
    let failed = |detail: String| detail;
    let created: std::result::Result<(), String> = async {
        let t = Instant::now();
        let s = ctx.begin(Some(tenant), "rename", &j)?;
        engine.rename(&name, &j.pre_name).await.inspect_err(|_| {
            let _ = ctx.end(s, "failed", Some(&j));
        })?;
        ctx.end(s, "ok", Some(&j))?;
        timings.rename_ms = ms(t.elapsed());
        crash_point("after-rename");
        let t = Instant::now();
        let s = ctx.begin(Some(tenant), "create", &j)?;
        let id = engine.create_from(&name, &spec, &j.new_image).await.inspect_err(|_| {
            let _ = ctx.end(s, "failed", Some(&j));
        })?;
        j.new_id = Some(id);
        ctx.end(s, "ok", Some(&j))?;
        timings.create_ms = ms(t.elapsed());
        crash_point("after-create");
        let t = Instant::now();
        let s = ctx.begin(Some(tenant), "check", &j)?;
        let lost = j.settings.lost_in(&engine.actual_settings(&name).await?);
        if !lost.is_empty() {
            ctx.end(s, "failed", Some(&j))?;
            return Err(Error::Other(format!("the new container lost what the operator set: {}", lost.join(", "))));
        }
        ctx.end(s, "ok", Some(&j))?;
        timings.check_ms = ms(t.elapsed());
        Ok::<_, Error>(())
    }
    .await
    .map_err(|e| failed(e.to_string()));
    if let Err(detail) = created {
        let undo = undo_tenant(ctx, engine, prober, &j, false).await?;
        let detail = format!("{detail}; {}", undo.detail);
        return Ok(report(undo.outcome(), Some(t0.elapsed()), Some(archive_path), timings, Some(detail)));
    }

    stop_if_cancelled!(false, Some(archive_path.clone()));
    // 6. start; 7. health gate. From here on the new version may write to the data dir.
    let s = ctx.begin(Some(tenant), "start", &j)?;
    let t = Instant::now();
    let started = engine.start(&name).await;
    timings.start_ms = ms(t.elapsed());
    ctx.end(s, if started.is_ok() { "ok" } else { "failed" }, Some(&j))?;
    crash_point("after-start");
    let health = match started {
        Err(e) => Err(format!("start failed: {e}")),
        Ok(()) => {
            let s = ctx.begin(Some(tenant), "health", &j)?;
            crash_point("during-health");
            let t = Instant::now();
            let r = gate_cancellable(ctx, engine, prober, &name, &app.health).await?;
            timings.health_ms = ms(t.elapsed());
            ctx.end(s, if r.is_ok() { "ok" } else { "failed" }, Some(&j))?;
            r
        }
    };
    match health {
        Ok(()) => {
            let downtime = t0.elapsed();
            crash_point("after-health");
            if !keep_old {
                let s = ctx.begin(Some(tenant), "cleanup", &j)?;
                // The new version is healthy; failing to remove the old container is only untidy.
                let outcome = if engine.remove(&j.pre_name).await.is_ok() { "ok" } else { "failed" };
                ctx.end(s, outcome, Some(&j))?;
            }
            Ok(report(TenantOutcome::Rolled, Some(downtime), Some(archive_path), timings, None))
        }
        Err(why) => {
            let undo = undo_tenant(ctx, engine, prober, &j, true).await?;
            let detail = format!("new version failed: {why}; {}", undo.detail);
            Ok(report(undo.outcome(), Some(t0.elapsed()), Some(archive_path), timings, Some(detail)))
        }
    }
}

/// The health gate, stopped early by SIGINT/SIGTERM (then the tenant is undone).
async fn gate_cancellable(
    ctx: &Ctx,
    engine: &Engine,
    prober: &Prober,
    name: &str,
    spec: &HealthSpec,
) -> Result<std::result::Result<(), String>> {
    let gate = prober.gate(engine, name, spec, None);
    tokio::pin!(gate);
    loop {
        tokio::select! {
            r = &mut gate => return Ok(r?.map(|_| ()).map_err(|u| u.to_string())),
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                if ctx.cancel.is_cancelled() {
                    return Ok(Err("interrupted by a signal during the health gate".into()));
                }
            }
        }
    }
}

fn record_rollout_snapshot(
    ctx: &Ctx,
    run_dir: &Path,
    manifest: &mut Manifest,
    tenant: &str,
    archive_path: &Path,
    s: &archive::ArchiveSummary,
) -> Result<()> {
    let file_list = archive::file_list_path(archive_path);
    let rel = |p: &Path| p.strip_prefix(run_dir).unwrap_or(p).to_string_lossy().into_owned();
    let entry = ArchiveEntry {
        path: rel(archive_path),
        tenant: Some(tenant.to_string()),
        sha256: s.sha256.clone(),
        size: s.size,
        files: s.files,
        file_list: rel(&file_list),
        file_list_sha256: s.file_list_sha256.clone(),
    };
    manifest.upsert(entry.clone());
    manifest.write(run_dir)?;
    let rel_root = archive_path.strip_prefix(&ctx.cfg.backup_root).unwrap_or(archive_path);
    ctx.record_archive(&rel_root.to_string_lossy(), "rollout", ctx.run_id.as_str(), &entry)
}

/// The result of undoing a tenant.
#[derive(Debug, Clone, Serialize)]
pub struct UndoResult {
    /// The prior container runs, healthy, on its data.
    pub ok: bool,
    /// What was done, or what state it was left in.
    pub detail: String,
}

impl UndoResult {
    fn outcome(&self) -> TenantOutcome {
        if self.ok {
            TenantOutcome::Restored
        } else {
            TenantOutcome::PersonNeeded
        }
    }
}

/// Bring a tenant back to its prior container and data, whatever step it was caught in:
/// remove a new container, restore the snapshot when the new version may have written to the
/// data (`restore_data`), rename the prior container back (or recreate it from the prior image
/// when it is gone), start it and health-check it. Every action is idempotent and journaled,
/// so `recover` can call this again after a crash in the middle of it.
pub async fn undo_tenant(
    ctx: &Ctx,
    engine: &Engine,
    prober: &Prober,
    j: &TenantJournal,
    restore_data: bool,
) -> Result<UndoResult> {
    let tenant = Some(j.tenant.as_str());
    let mut done = Vec::new();
    let current = engine.id_of(&j.name).await?;
    let pre = engine.id_of(&j.pre_name).await?;
    let old_by_id = if j.old_id.is_empty() { None } else { engine.id_of(&j.old_id).await? };
    let fail = |step: i64, what: String, done: &[String]| -> Result<UndoResult> {
        ctx.end(step, "failed", Some(&serde_json::json!({"error": what})))?;
        let state = if done.is_empty() {
            "nothing was undone".to_string()
        } else {
            format!("done so far: {}", done.join(", "))
        };
        Ok(UndoResult { ok: false, detail: format!("UNDO FAILED for tenant {}: {what}; {state}", j.tenant) })
    };

    // The container under the tenant's name, if it is not the prior one, is the new version.
    let mut recreate_from = None;
    if let Some(id) = current.as_deref().filter(|id| *id != j.old_id) {
        let s = ctx.begin(tenant, "undo-remove-new", j)?;
        if old_by_id.is_none() && pre.is_none() {
            // The prior container is gone (a finished run without --keep-old): rebuild it
            // from the new one's settings on the prior image.
            recreate_from = Some(engine.spec(id).await?);
        }
        if let Err(e) = engine.stop(id, j.stop_timeout_s).await.and(engine.remove(id).await) {
            return fail(s, format!("cannot remove the new container {}: {e}", j.name), &done);
        }
        ctx.end(s, "ok", None::<&()>)?;
        done.push("new container removed".to_string());
    }
    if restore_data {
        if let (Some(snap), Some(sha)) = (&j.snapshot, &j.sha256) {
            let s = ctx.begin(tenant, "undo-restore", j)?;
            // Stop the prior container too if something started it: nothing may hold the data.
            if let Some(p) = pre.as_deref().or(old_by_id.as_deref()) {
                let _ = engine.stop(p, j.stop_timeout_s).await;
            }
            let (a, h, d) = (snap.clone(), sha.clone(), j.data_dir.clone());
            let r = crate::blocking::run("restore", move || archive::restore_swap(&a, &h, &d)).await?;
            if let Err(e) = r {
                return fail(
                    s,
                    format!("restoring {} from {} failed: {e}", j.data_dir.display(), snap.display()),
                    &done,
                );
            }
            ctx.end(s, "ok", None::<&()>)?;
            done.push(format!("data restored from {}", snap.display()));
        }
    }
    if let Some(spec) = recreate_from {
        let s = ctx.begin(tenant, "undo-recreate-prior", j)?;
        if let Err(e) = engine.create_from(&j.name, &spec, &j.old_image).await {
            return fail(s, format!("cannot recreate the prior container from {}: {e}", j.old_image), &done);
        }
        ctx.end(s, "ok", None::<&()>)?;
        done.push(format!("prior container recreated from {}", j.old_image));
    } else if pre.is_some() {
        let s = ctx.begin(tenant, "undo-rename-back", j)?;
        if let Err(e) = engine.rename(&j.pre_name, &j.name).await {
            return fail(s, format!("cannot rename {} back to {}: {e}", j.pre_name, j.name), &done);
        }
        ctx.end(s, "ok", None::<&()>)?;
        done.push("prior container renamed back".to_string());
    }
    let s = ctx.begin(tenant, "undo-start-prior", j)?;
    if let Err(e) = engine.start(&j.name).await {
        return fail(s, format!("cannot start the prior container {}: {e}", j.name), &done);
    }
    ctx.end(s, "ok", None::<&()>)?;
    let s = ctx.begin(tenant, "undo-health-prior", j)?;
    match prober.gate(engine, &j.name, &j.health, None).await? {
        Ok(_) => {
            ctx.end(s, "ok", None::<&()>)?;
            done.push("prior container running and healthy".to_string());
            Ok(UndoResult { ok: true, detail: done.join(", ") })
        }
        Err(why) => fail(s, format!("the prior container {} is not healthy: {why}", j.name), &done),
    }
}

impl fmt::Display for RolloutReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for app in &self.apps {
            let p = &app.plan;
            writeln!(f, "app {} -> {} (commit {})", p.app, p.image, &p.commit[..12.min(p.commit.len())])?;
            if let Some(id) = &app.run_id {
                writeln!(f, "  run {id}")?;
            }
            if self.dry_run {
                for i in &p.items {
                    let from = i.from.as_ref().map_or("unknown", |d| d.short());
                    writeln!(
                        f,
                        "  {}{}: {from} -> {}",
                        i.tenant,
                        if i.canary { " (canary)" } else { "" },
                        i.to.short()
                    )?;
                }
            }
            for t in &app.tenants {
                let down = t.downtime_ms.map_or(String::new(), |d| format!(" downtime {d} ms"));
                writeln!(f, "  {:<24} {:<14}{down}", t.tenant.as_str(), t.outcome.word())?;
                if let Some(d) = &t.detail {
                    writeln!(f, "      {d}")?;
                }
            }
            if !p.held.is_empty() {
                let held: Vec<&str> = p.held.iter().map(|t| t.as_str()).collect();
                writeln!(f, "  held: {}", held.join(", "))?;
            }
            writeln!(f, "{}", app.summary)?;
        }
        Ok(())
    }
}
