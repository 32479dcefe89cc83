//! `rollout`: roll every tenant of an app to the digest pinned in git, canary first, then one
//! tenant at a time — or in the waves of `[app.rollout]` ([`waves`]), several tenants of a wave
//! at once, each on its own, a failure budget letting the run go on past tenants that failed
//! (each undone as below). Each tenant goes through the state machine of [`Step::ALL`], one
//! small function per step, each journaled before and after with everything needed to undo it
//! ([`TenantJournal`]). One place decides to undo (`TenantRoll::go`): a failed step, or a
//! SIGINT/SIGTERM/SIGHUP between steps before the new version passed its health gate. The undo
//! ([`undo_tenant`]) removes the new container, puts the pre-rollout data back when the new
//! version may have written to it, brings the prior container back, starts and health-checks
//! it; the run halts (or, within the budget, goes on). A step whose journal row cannot be
//! written is not taken, and once the tenant is stopped that undoes it too. Customer data is
//! never changed before a copy of it exists, and the plan refuses (before any tenant is
//! stopped) a tenant that keeps state outside its data dir, where neither the copy nor the
//! snapshot can see it.
//!
//! A tenant's downtime does not grow with its data. While the prior version still serves:
//! pre-copy (mirror the data dir to a copy beside it, on its filesystem — reflinks where the
//! filesystem has them), create the new container under a staging name with everything final
//! (the tenant's aliases, its restart policy; it is not reachable and cannot start by itself
//! while it is only created), check it. Down: stop, copy-delta (only what changed since the
//! pre-copy: the copy is then exactly the pre-rollout data), switch (two renames: the prior
//! aside, the staged one to the tenant's name), start, health. Once healthy (and soaked): the run's
//! compressed, hashed archive is made from the copy, and the copy removed — so the archive is
//! off the critical path and the copy lives only while a failure could need it: an undo swaps
//! it back with one rename instead of a decompress. Where a copy is not possible (the data dir
//! is a mount point, too little free space beside it, `pre_copy = false`), the tenant takes the
//! archive-while-down path (snapshot instead of copy-delta and archive); the plan says which.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::adapters::archive;
use crate::adapters::desired;
use crate::adapters::docker::{ContainerSpec, Engine, HookRun, StackMember, TenantContainer};
use crate::adapters::health::Prober;
use crate::adapters::mirror::{self, MirrorReport};
use crate::config::rollout::WavesOverride;
use crate::config::{App, HealthSpec, OnBudget};
use crate::container::Restart;
use crate::context::Ctx;
use crate::error::{Error, ExitKind, Result};
use crate::layout::{self, SnapshotId, SnapshotKind};
use crate::manifest::Manifest;
use crate::naming;
use crate::step::{Step, TenantJournal};
use crate::types::{Digest, RunId, TenantId};
use crate::undo::{archive_copy, record_rollout_archive, undo_tenant, ROLLOUT_ZSTD_LEVEL};

mod pause;
pub(crate) use pause::open_after_timeouts;
mod plan;
mod proxy_gate;
pub mod stack;
pub mod stack_plan;
pub mod waves;
pub use crate::adapters::proxy::ProxyReport;
pub use plan::{copy_plan, plan, CopyPlan, PlanItem, RolloutPlan};
use plan::{decide_copies, new_volume_problems};
pub use waves::Wave;

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
    /// Deploy a commit that does not descend from the one last deployed (a person's decision).
    pub allow_rewind: bool,
    /// Roll at most this many tenants of a wave at once (`--max-parallel`; overrides
    /// `[app.rollout]`'s `max_parallel` and its waves'; the canary is always alone).
    pub max_parallel: Option<usize>,
    /// This run's failure budget and what it does over it, instead of `[app.rollout]`'s
    /// (`--max-failed`, `--max-failure-ratio`, `--on-budget`; a resume uses fleet.toml's).
    pub budget: BudgetOverride,
    /// This run's waves instead of `[app.rollout]`'s (`rollout --waves FILE`: `[[waves]]`
    /// tables written as fleet.toml's are; a resume goes on with the waves the run froze).
    pub waves: Option<PathBuf>,
    /// Go on with this paused run (`rollout resume RUN`): its release, its frozen waves, the
    /// tenants it has not reached; its failures still count against its budget.
    pub resume: Option<RunId>,
}

/// A run's own failure budget (`rollout --max-failed N --max-failure-ratio R --on-budget M`):
/// each key given replaces that key of the app's `[app.rollout]` for this run.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BudgetOverride {
    /// `max_failed`.
    pub max_failed: Option<usize>,
    /// `max_failure_ratio`, 0..=1.
    pub max_failure_ratio: Option<f64>,
    /// `on_budget`.
    pub on_budget: Option<OnBudget>,
}

impl BudgetOverride {
    /// `app` with this run's budget and waves, or None when nothing is overridden.
    fn apply(&self, app: &App, waves: Option<&WavesOverride>) -> Option<App> {
        if *self == BudgetOverride::default() && waves.is_none() {
            return None;
        }
        let mut a = app.clone();
        a.rollout.max_failed = self.max_failed.or(a.rollout.max_failed);
        a.rollout.max_failure_ratio = self.max_failure_ratio.or(a.rollout.max_failure_ratio);
        a.rollout.on_budget = self.on_budget.unwrap_or(a.rollout.on_budget);
        if let Some(w) = waves {
            w.apply(&mut a.rollout);
        }
        Some(a)
    }
}

/// Read and check a `rollout --waves` file; Err (usage) names the file and the key.
fn read_waves(path: &Path) -> Result<WavesOverride> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::Usage(format!("--waves {}: cannot read it ({e}); give a file of [[waves]] tables", path.display()))
    })?;
    WavesOverride::parse(&text)
        .map_err(|e| Error::Usage(format!("--waves {}: {e}; nothing was touched", path.display())))
}

/// A paused run gone on with: its id and the tenants that already failed in it.
struct Resume {
    run: RunId,
    failed: usize,
    /// How many tenants the run froze in its waves: `max_failure_ratio`'s denominator, the
    /// same as before its pause (not only the tenants it has left).
    frozen: usize,
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
    /// Not touched: its container or its data dir disappeared between the plan and its turn
    /// (the report says which); the run goes on without it.
    Skipped,
}

impl TenantOutcome {
    fn word(self) -> &'static str {
        match self {
            TenantOutcome::Rolled => "rolled",
            TenantOutcome::Restored => "restored",
            TenantOutcome::PersonNeeded => "person_needed",
            TenantOutcome::NotReached => "not_reached",
            TenantOutcome::Skipped => "skipped",
        }
    }
}

/// Milliseconds spent in each step of a tenant's rollout.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StepTimings {
    /// Pre-copy of the data dir while the tenant runs (not downtime).
    pub pre_copy_ms: u64,
    /// `docker create` (and network connects); before the stop, so not downtime.
    pub create_ms: u64,
    /// Checking the new container against the old one; before the stop.
    pub check_ms: u64,
    /// `docker stop`.
    pub stop_ms: u64,
    /// Dumping the tenant's database (`[app.database]`) while the app is down.
    pub db_dump_ms: u64,
    /// Archiving the data dir while down (archive-while-down path).
    pub snapshot_ms: u64,
    /// Bringing the copy up to date while down (pre-copy path).
    pub copy_delta_ms: u64,
    /// The `pre_switch` hook (`[app.hooks]`), while down.
    #[serde(default)]
    pub pre_switch_ms: u64,
    /// The `post_switch` hook, the new version up.
    #[serde(default)]
    pub post_switch_ms: u64,
    /// The switch's first half: renaming the prior container aside.
    pub rename_ms: u64,
    /// The switch's second half: renaming the staged container to the tenant's name.
    pub switch_ms: u64,
    /// `docker start`.
    pub start_ms: u64,
    /// Start → first 2xx.
    pub health_ms: u64,
    /// Archiving the copy after the health gate (not downtime).
    pub archive_ms: u64,
    /// The whole undo of a failed tenant.
    pub undo_ms: u64,
    /// Of which putting the pre-rollout data back (a rename of the copy, or an extract).
    pub undo_restore_ms: u64,
    /// Of which the prior container's start and health check.
    pub undo_prior_ms: u64,
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
    /// The pre-copy pass (pre-copy path): how and how much was copied while it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pre_copy: Option<MirrorReport>,
    /// The delta pass while it was down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copy_delta: Option<MirrorReport>,
    /// What customers saw through the proxy during the switch (`[app.proxy]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyReport>,
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
    /// The waves the plan's tenants roll in (`[app.rollout]`), canary first; frozen in the run
    /// ledger before the first tenant is touched.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub waves: Vec<Wave>,
    /// Per tenant, in plan order.
    pub tenants: Vec<TenantReport>,
    /// How it ended.
    pub outcome: ExitKind,
    /// One line for people.
    pub summary: String,
    /// Paused over its failure budget: `rollout resume` or `rollout abort` of its run.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// The run's rollback that `on_budget` asked for (`rollback-wave`, `rollback-all`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget_rollback: Option<crate::rollback::RollbackReport>,
    /// The wave index in which its failures went over the budget, for `on_budget`.
    #[serde(skip)]
    over_in: Option<usize>,
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
    /// What admitted the commit: its signer and, per app, the allow-list rule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trust: Option<crate::trust::Admission>,
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

/// Run `rollout`.
pub async fn rollout(ctx: &mut Ctx, opts: &RolloutOptions) -> Result<RolloutReport> {
    if let Some(run) = &opts.resume {
        return pause::resume(ctx, opts, run).await;
    }
    let waves = opts.waves.as_deref().map(read_waves).transpose()?;
    let state = desired::read(&ctx.cfg.desired, &ctx.cfg.state_dir, opts.git_ref.as_deref())?;
    let apps: Vec<&App> = match &opts.app {
        Some(name) => vec![state.fleet.app(name)?],
        None => state.fleet.apps.iter().collect(),
    };
    if let (Some(w), Some(path)) = (&waves, &opts.waves) {
        for app in apps.iter().filter(|a| a.stack.is_some()) {
            let mut spec = app.rollout.clone();
            w.apply(&mut spec);
            if let Some(why) = spec.stack_refusal() {
                return Err(Error::Usage(format!(
                    "--waves {}: app {}: {why}; drop them from the file (waves, order_by, min_healthy and \
                     progress_deadline_s apply); nothing was touched",
                    path.display(),
                    app.name
                )));
            }
        }
    }
    // A paused run of an app is resumed or aborted, never rolled past; one past its
    // pause_timeout is aborted first.
    if !opts.dry_run {
        for app in &apps {
            if let Some(p) = pause::open_after_timeouts(ctx, app).await? {
                return Err(Error::Usage(pause::blocked(&p)));
            }
        }
    }
    let names: Vec<&str> = apps.iter().map(|a| a.name.as_str()).collect();
    let trust = crate::trust::admit(ctx, &state, &names, opts.allow_rewind)?;
    let engine = Engine::connect(&ctx.cfg.docker).await?;
    let mut reports = Vec::new();
    for app in apps {
        let overridden = opts.budget.apply(app, waves.as_ref());
        let app = overridden.as_ref().unwrap_or(app);
        let (tenants, members, mut plan) = match &app.stack {
            None => {
                let (tenants, unmapped) = engine.tenants_and_unmapped(app).await?;
                let mut plan = plan(app, &state.commit, &tenants, unmapped, &opts.tenants)?;
                decide_copies(app, &mut plan).await?;
                (tenants, Vec::new(), plan)
            }
            Some(st) => {
                let (members, unmapped) = engine.stack_members(app, st).await?;
                let plan = stack_plan::plan_stack(app, st, &state.commit, &members, unmapped, &opts.tenants)?;
                stack_plan::check_copies(app, &plan, &members).await?;
                (Vec::new(), members, plan)
            }
        };
        hold_outside_windows(app, &mut plan, (&tenants, &members));
        let waves = cut_waves(app, &mut plan, (&tenants, &members), opts.max_parallel);
        if opts.dry_run || plan.items.is_empty() {
            let pin = release_of(app);
            let summary = if plan.items.is_empty() && !plan.outside_window.is_empty() {
                format!(
                    "app {}: nothing rolled to {pin}: every tenant behind is outside its maintenance window ({}: {})",
                    app.name,
                    plan.outside_window.len(),
                    plan.outside_window.first().map(|o| o.why.as_str()).unwrap_or_default()
                )
            } else if plan.items.is_empty() {
                format!("app {}: every tenant already runs {pin}", app.name)
            } else {
                format!("app {}: would roll {} tenant(s) to {pin}", app.name, plan.items.len())
            };
            let waves = if plan.items.is_empty() { Vec::new() } else { waves };
            reports.push(AppReport {
                plan,
                run_id: None,
                waves,
                tenants: Vec::new(),
                outcome: ExitKind::Success,
                summary,
                paused: false,
                budget_rollback: None,
                over_in: None,
            });
            continue;
        }
        let mut report = rollout_app(ctx, &engine, app, (plan, waves), &tenants, &members, opts.keep_old, None).await?;
        pause::budget_rollback(ctx, app, &mut report).await?;
        let stop = report.outcome != ExitKind::Success;
        reports.push(report);
        if stop {
            break;
        }
    }
    Ok(RolloutReport { dry_run: opts.dry_run, commit: state.commit, apps: reports, trust: Some(trust) })
}

/// The plan's tenants cut into waves (`[app.rollout]`; the plan reordered to follow them).
/// The labels they select and order by are those listed for the plan.
fn cut_waves(
    app: &App,
    plan: &mut RolloutPlan,
    (tenants, members): (&[TenantContainer], &[StackMember]),
    max_parallel: Option<usize>,
) -> Vec<Wave> {
    let spec = &app.rollout;
    let labels = tenant_labels(tenants, members);
    let of = |t: &TenantId| labels.get(t).map(|l| (*l).clone()).unwrap_or_default();
    // A stack's tenants roll one at a time (the fleet config refuses max_parallel for one).
    let max_parallel = if app.stack.is_some() { Some(1) } else { max_parallel };
    waves::cut(spec, &mut plan.items, &of, max_parallel)
}

/// A tenant's labels, as listed for the plan: its container's, or a stack tenant's first
/// service's.
fn tenant_labels<'a>(
    tenants: &'a [TenantContainer],
    members: &'a [StackMember],
) -> std::collections::HashMap<&'a TenantId, &'a std::collections::BTreeMap<String, String>> {
    let mut labels: std::collections::HashMap<&TenantId, &std::collections::BTreeMap<String, String>> =
        Default::default();
    for c in tenants.iter().chain(members.iter().map(|m| &m.container)) {
        labels.entry(&c.tenant).or_insert(&c.labels);
    }
    labels
}

/// Why `tenant` may not be rolled at `now` by the app's maintenance windows, if it may not.
fn closed_now(
    app: &App,
    labels: &std::collections::HashMap<&TenantId, &std::collections::BTreeMap<String, String>>,
    tenant: &TenantId,
    now: jiff::Timestamp,
) -> Option<String> {
    if app.rollout.windows.is_empty() {
        return None;
    }
    let empty = std::collections::BTreeMap::new();
    crate::config::closed_for(&app.rollout.windows, labels.get(tenant).copied().unwrap_or(&empty), now)
}

/// Take the tenants outside their maintenance window now out of the plan (into
/// `outside_window`, with why); the first tenant left that is running becomes the canary.
fn hold_outside_windows(app: &App, plan: &mut RolloutPlan, (tenants, members): (&[TenantContainer], &[StackMember])) {
    if app.rollout.windows.is_empty() {
        return;
    }
    let labels = tenant_labels(tenants, members);
    let now = crate::context::window_now(false);
    let had_canary = plan.items.first().is_some_and(|i| i.canary);
    let (keep, out): (Vec<PlanItem>, Vec<PlanItem>) =
        std::mem::take(&mut plan.items).into_iter().partition(|i| closed_now(app, &labels, &i.tenant, now).is_none());
    plan.outside_window = out
        .into_iter()
        .map(|i| plan::OutsideWindow {
            why: closed_now(app, &labels, &i.tenant, now).unwrap_or_default(),
            tenant: i.tenant,
        })
        .collect();
    plan.items = keep;
    if had_canary && !plan.items.first().is_some_and(|i| i.canary) {
        if let Some(pos) = plan.items.iter().position(|i| !i.stopped) {
            let mut c = plan.items.remove(pos);
            c.canary = true;
            plan.items.insert(0, c);
        }
    }
}

/// What every tenant of one app's rollout shares.
struct AppRun<'a> {
    ctx: &'a Ctx,
    engine: &'a Engine,
    prober: &'a Prober,
    app: &'a App,
    /// `rollout/<run id>` under the backup root.
    run_dir: PathBuf,
    keep_old: bool,
    /// The run's manifest, which every tenant's archive is written into: tenants of a wave
    /// roll at once, so each takes it only while it records its archive.
    manifest: tokio::sync::Mutex<Manifest>,
}

/// What an app's tenants are rolled to, for people: the pinned digest, or a stack's
/// `service@digest` pins.
fn release_of(app: &App) -> String {
    match &app.stack {
        None => app.image.digest().short().to_string(),
        Some(s) => {
            s.services.iter().map(|v| format!("{}@{}", v.name, v.image.digest().short())).collect::<Vec<_>>().join(", ")
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn rollout_app(
    ctx: &mut Ctx,
    engine: &Engine,
    app: &App,
    (plan, waves): (RolloutPlan, Vec<Wave>),
    containers: &[TenantContainer],
    members: &[StackMember],
    keep_old: bool,
    resume: Option<Resume>,
) -> Result<AppReport> {
    // Pre-pull before touching any tenant: a missing digest changes nothing. A stack pulls
    // each service's pin.
    let images: Vec<&crate::types::PinnedImage> = match &app.stack {
        None => vec![&app.image],
        Some(s) => s.services.iter().map(|v| &v.image).collect(),
    };
    for image in &images {
        ctx.progress.start(&format!("pull {image}"), None);
        let pulled = engine.pull(image).await;
        ctx.progress.finish();
        pulled?;
    }
    // A VOLUME the new image adds would be a fresh anonymous volume in the new container,
    // written by the new version and held by no snapshot: refused before any tenant is touched.
    let mut unheld: Vec<String> = Vec::new();
    match &app.stack {
        None => {
            let volumes = engine.image_volumes(&app.image.reference()).await?;
            unheld.extend(
                plan.items
                    .iter()
                    .filter_map(|i| containers.iter().find(|c| c.tenant == i.tenant))
                    .flat_map(|c| new_volume_problems(c, &volumes, &app.scratch_mounts)),
            );
        }
        Some(s) => {
            for item in &plan.items {
                for ch in item.stack.iter().flat_map(|si| &si.changed) {
                    let Some(svc) = s.service(&ch.service) else { continue };
                    let volumes = engine.image_volumes(&svc.image.reference()).await?;
                    let c = members.iter().find(|m| m.container.tenant == item.tenant && m.service == ch.service);
                    unheld.extend(
                        c.into_iter().flat_map(|m| new_volume_problems(&m.container, &volumes, &app.scratch_mounts)),
                    );
                }
            }
        }
    }
    if !unheld.is_empty() {
        return Err(Error::Config(format!(
            "app \"{}\": the new image(s) {} would give a tenant state no snapshot holds, so nothing was touched: {}",
            app.name,
            images.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", "),
            unheld.join("; ")
        )));
    }
    ctx.next_run_id();
    let digest = match &app.stack {
        None => app.image.digest().to_string(),
        Some(s) => s.pin_key(),
    };
    let resumed = resume.is_some();
    let record = match &resume {
        // The paused run goes on under its own id: one run, one journal, one rollback.
        // Its pause stays open until the resumed run ends: killed in the middle, `recover`
        // leaves every tenant on one version and the run still paused, for another resume of
        // the same frozen waves (or an abort).
        Some(r) => ctx.reopen_run("rollout", &r.run)?,
        None => ctx.start_run("rollout", Some(&app.name), Some(&plan.commit), Some(&digest))?,
    };
    let ctx = &*ctx;
    // The waves, frozen in the run ledger before any tenant is touched: `recover` after a
    // crash reads exactly these sets back (a resumed run's are already there).
    let rows: Vec<slipway_state::WaveRow> = if resumed {
        Vec::new()
    } else {
        waves
            .iter()
            .flat_map(|w| w.tenants.iter().map(move |t| (w, t)))
            .enumerate()
            .map(|(position, (w, t))| slipway_state::WaveRow {
                wave: w.index as i64,
                position: position as i64,
                tenant: t.to_string(),
                name: w.name.clone(),
                max_parallel: w.max_parallel as i64,
                bake_s: w.bake_s as i64,
                min_healthy: Some(w.min_healthy.unwrap_or(0.0)),
                progress_deadline_s: Some(w.progress_deadline_s.unwrap_or(0) as i64),
            })
            .collect()
    };
    if let Err(e) = ctx.store.record_waves(ctx.run_id().as_str(), &rows) {
        let why = format!("app {}: state.db could not record the run's waves, so no tenant was touched: {e}", app.name);
        record.finish(ctx, ExitKind::Failure, &why)?;
        return Err(Error::Other(why));
    }
    let prober = Prober::new()?;
    let run = AppRun {
        ctx,
        engine,
        prober: &prober,
        app,
        run_dir: SnapshotId::rollout(ctx.run_id()).dir(&ctx.cfg.backup_root),
        keep_old,
        manifest: tokio::sync::Mutex::new(Manifest::new(&SnapshotId::rollout(ctx.run_id()))),
    };
    let total = plan.items.len();
    let mut done: Vec<Option<TenantReport>> = vec![None; total];
    let mut outcome = ExitKind::Success;
    // Tenants that failed (each rolled back with its data), counted against the budget; a
    // resumed run's earlier failures still count.
    let mut failed = resume.as_ref().map_or(0, |r| r.failed);
    // The budget's ratio is of the whole run's tenants, a resumed run's too.
    let budget_total = resume.as_ref().map_or(total, |r| r.frozen.max(total));
    // The wave in which the failures went over the budget (not a gating tenant's failure).
    let mut over_in: Option<usize> = None;
    // An error that is no tenant's outcome (the run record, an undo that could not even
    // start): no tenant starts after it; those in flight finish first, then it is returned.
    let mut error: Option<Error> = None;
    // Whether the tenant rolled next gates the others (the canary, or the first tenant after
    // a canary that was skipped): it rolls alone, and its failure halts whatever the budget.
    let mut gate = !resumed;
    let at: std::collections::HashMap<&TenantId, usize> =
        plan.items.iter().enumerate().map(|(n, i)| (&i.tenant, n)).collect();
    // A maintenance window that closed since the plan pauses the run at the next wave
    // boundary: no tenant of that wave starts; reconcile resumes it once the window opens.
    let labels = tenant_labels(containers, members);
    let mut window_closed: Option<String> = None;
    // A wave that missed its progress_deadline_s or ended under its min_healthy: the run is
    // over its budget there, whatever its failures.
    let mut budget_why: Option<String> = None;
    for (k, wave) in waves.iter().enumerate() {
        if k > 0 && outcome == ExitKind::Success && error.is_none() && !ctx.cancel.is_cancelled() {
            let now = crate::context::window_now(true);
            if let Some((t, why)) =
                wave.tenants.iter().find_map(|t| closed_now(app, &labels, t, now).map(|why| (t, why)))
            {
                window_closed = Some(format!("{} ({t}: {why})", wave.name));
                break;
            }
        }
        // A test's kill at a wave boundary: the waves before it done, none of its tenants started.
        if k > 0 {
            crate::context::crash_point("wave-start");
        }
        let mut queue = wave.tenants.iter().filter_map(|t| at.get(t).copied()).peekable();
        let mut running = futures_util::stream::FuturesUnordered::new();
        let wave_started = Instant::now();
        let mut deadline_passed = false;
        // A gating tenant is in flight: nothing starts beside it.
        let mut gating = false;
        loop {
            // Start tenants up to the wave's max_parallel, unless the run is halting: a failure
            // over budget, an error or a signal starts no further tenant.
            while outcome == ExitKind::Success
                && error.is_none()
                && !ctx.cancel.is_cancelled()
                && !gating
                && running.len() < wave.max_parallel
            {
                if queue.peek().is_some()
                    && wave.progress_deadline_s.is_some_and(|d| wave_started.elapsed() >= Duration::from_secs(d))
                {
                    deadline_passed = true;
                    break;
                }
                let Some(n) = queue.next() else { break };
                let item = &plan.items[n];
                // The canary soaks only when it gates tenants after it; a wave's tenants bake.
                let soak = if gate && !item.stopped && n + 1 < total {
                    Some(Soak::Canary(app.canary_soak_s))
                } else {
                    (wave.bake_s > 0 && !item.stopped).then_some(Soak::Bake(wave.bake_s))
                };
                gating = gate;
                let run = &run;
                let wave_name = wave.name.as_str();
                running.push(Box::pin(async move { (n, roll_one(run, item, members, soak, wave_name).await) }));
            }
            let Some((n, report)) = futures_util::StreamExt::next(&mut running).await else { break };
            let item = &plan.items[n];
            let was_gating = std::mem::take(&mut gating);
            let report = match report {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!("tenant {}: {e}", item.tenant);
                    error.get_or_insert(e);
                    continue;
                }
            };
            if report.outcome != TenantOutcome::Skipped {
                gate = false;
            }
            let this = match report.outcome {
                TenantOutcome::Rolled => ExitKind::Success,
                // A stopped tenant never ran the new version: its failure says nothing of the
                // release, so it neither halts the run nor marks the digest bad.
                TenantOutcome::Restored if item.stopped && !ctx.cancel.is_cancelled() => ExitKind::Success,
                TenantOutcome::Restored if ctx.cancel.is_cancelled() => ExitKind::Interrupted,
                // Rolled back with its data; within the budget the run goes on.
                TenantOutcome::Restored => {
                    failed += 1;
                    if was_gating {
                        ExitKind::Halted
                    } else if app.rollout.over_budget(failed, budget_total) {
                        over_in.get_or_insert(wave.index);
                        ExitKind::Halted
                    } else {
                        ExitKind::Success
                    }
                }
                TenantOutcome::PersonNeeded => ExitKind::PersonNeeded,
                TenantOutcome::NotReached => ExitKind::Interrupted,
                // Gone before its turn: nothing of it was touched, and it says nothing of the
                // release.
                TenantOutcome::Skipped => ExitKind::Success,
            };
            outcome = worst([outcome, this].into_iter());
            let recorded = ctx.store.record_tenant(&slipway_state::TenantResult {
                run_id: ctx.run_id().to_string(),
                tenant: item.tenant.to_string(),
                from_digest: item.from.as_ref().map(|d| d.to_string()),
                to_digest: Some(item.to.to_string()),
                outcome: report.outcome.word().to_string(),
                downtime_ms: report.downtime_ms.map(|d| d as i64),
                detail: report.detail.clone(),
                proxy_requests: report.proxy.as_ref().map(|p| p.requests as i64),
                proxy_failed: report.proxy.as_ref().map(|p| p.failed as i64),
                proxy_downtime_ms: report.proxy.as_ref().map(|p| p.downtime_ms as i64),
            });
            if let Err(e) = recorded {
                error.get_or_insert(e.into());
            }
            done[n] = Some(report);
            // A test's kill in the middle of a parallel wave: one tenant done, others in flight.
            if wave.index > 0 && !running.is_empty() {
                crate::context::crash_point("wave-tenant-done");
            }
        }
        // The wave is done: did it keep its deadline and its share of healthy tenants?
        if outcome == ExitKind::Success && error.is_none() && !ctx.cancel.is_cancelled() {
            let ended: Vec<&TenantReport> = wave
                .tenants
                .iter()
                .filter_map(|t| at.get(t).and_then(|n| done[*n].as_ref()))
                .filter(|r| r.outcome != TenantOutcome::Skipped)
                .collect();
            let healthy = ended.iter().filter(|r| r.outcome == TenantOutcome::Rolled).count();
            let short = if deadline_passed {
                Some(format!(
                    "{} did not finish within its progress_deadline_s = {}",
                    wave.name,
                    wave.progress_deadline_s.unwrap_or_default()
                ))
            } else {
                wave.min_healthy.filter(|m| !ended.is_empty() && (healthy as f64) < m * ended.len() as f64).map(|m| {
                    format!(
                        "{}: {healthy} of {} tenant(s) healthy, under its min_healthy = {m}",
                        wave.name,
                        ended.len()
                    )
                })
            };
            if let Some(why) = short {
                over_in.get_or_insert(wave.index);
                outcome = ExitKind::Halted;
                budget_why = Some(why);
                break;
            }
        }
    }
    if let Some(e) = error {
        return Err(e);
    }
    if done.iter().any(Option::is_none) && outcome == ExitKind::Success && ctx.cancel.is_cancelled() {
        outcome = ExitKind::Interrupted;
    }
    let tenants: Vec<TenantReport> =
        done.into_iter().zip(&plan.items).map(|(r, item)| r.unwrap_or_else(|| not_reached(item))).collect();
    // Within the budget, failed tenants (rolled back) leave the run failed, not halted.
    if outcome == ExitKind::Success && failed > 0 {
        outcome = ExitKind::Failure;
    }
    let rolled = tenants.iter().filter(|t| t.outcome == TenantOutcome::Rolled).count();
    let skipped: Vec<&str> =
        tenants.iter().filter(|t| t.outcome == TenantOutcome::Skipped).map(|t| t.tenant.as_str()).collect();
    let restored: Vec<&str> =
        tenants.iter().filter(|t| t.outcome == TenantOutcome::Restored).map(|t| t.tenant.as_str()).collect();
    let summary = match outcome {
        ExitKind::Success if skipped.is_empty() => {
            format!("app {}: rolled {rolled} tenant(s) to {}", app.name, release_of(app))
        }
        ExitKind::Success => format!(
            "app {}: rolled {rolled} tenant(s) to {}; skipped {} (gone before its turn, see its detail)",
            app.name,
            app.image.digest().short(),
            skipped.join(", ")
        ),
        ExitKind::Failure => format!(
            "app {}: rolled {rolled} tenant(s) to {}; {failed} failed within the failure budget, each restored to its \
             prior container and data: {}",
            app.name,
            release_of(app),
            restored.join(", ")
        ),
        ExitKind::Halted => {
            let t = tenants.iter().find(|t| t.outcome == TenantOutcome::Restored);
            let untouched = tenants.iter().filter(|t| t.outcome == TenantOutcome::NotReached).count();
            let all = if restored.len() > 1 {
                format!(" ({} failed, over the failure budget, each restored: {})", restored.len(), restored.join(", "))
            } else {
                String::new()
            };
            match (&budget_why, t) {
                (Some(why), _) => {
                    format!("app {}: HALTED over its budget: {why}; {rolled} rolled, {untouched} untouched", app.name)
                }
                (None, t) => format!(
                    "app {}: HALTED at tenant {}: restored to its prior container and data{all}; {rolled} rolled, {untouched} untouched",
                    app.name,
                    t.map_or("?", |t| t.tenant.as_str()),
                ),
            }
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
    // Paused at a wave boundary by a window: not a failure; the run goes on when it opens.
    let window_closed = window_closed.filter(|_| matches!(outcome, ExitKind::Success | ExitKind::Failure));
    let summary = match &window_closed {
        Some(why) => format!(
            "{summary}; PAUSED at the wave boundary before {why}: its maintenance window closed; reconcile goes on with \
             `slipway rollout resume {}` once it opens",
            ctx.run_id()
        ),
        None => summary,
    };
    // Over the budget in a wave: what `on_budget` says (a gating tenant's failure halts).
    let on_budget = match over_in {
        Some(w) if outcome == ExitKind::Halted => Some((app.rollout.on_budget, w)),
        _ => None,
    };
    let summary = match on_budget {
        Some((OnBudget::Pause | OnBudget::RollbackWave, _)) => format!(
            "{summary}; PAUSED over the failure budget: `slipway rollout resume {run}` goes on with the same waves, \
             `slipway rollout abort {run}` rolls back what it changed (so does the next rollout or reconcile after \
             pause_timeout_s = {}s)",
            app.rollout.pause_timeout_s,
            run = ctx.run_id()
        ),
        _ => summary,
    };
    // The pause is recorded before the run is finished: a run that ends over its budget is
    // never seen finished and not paused.
    if let Some((OnBudget::Pause | OnBudget::RollbackWave, _)) = on_budget {
        let reason =
            budget_why.clone().unwrap_or_else(|| format!("{failed} tenant(s) failed, over the failure budget"));
        ctx.store.pause_run(ctx.run_id().as_str(), &app.name, "budget", &reason)?;
        // A test's kill with the pause recorded and the run not yet finished.
        crate::context::crash_point("rollout-paused");
    }
    if let Some(why) = &window_closed {
        ctx.store.pause_run(
            ctx.run_id().as_str(),
            &app.name,
            "window",
            &format!("maintenance window closed before {why}"),
        )?;
        crate::context::crash_point("rollout-paused");
    }
    // A resumed run that did not pause again is no longer paused once it is over (one a
    // signal cut short stays paused, for another resume of the tenants it did not reach).
    let paused = matches!(on_budget, Some((OnBudget::Pause | OnBudget::RollbackWave, _))) || window_closed.is_some();
    if resumed && !paused && outcome != ExitKind::Interrupted {
        ctx.store.end_pause(ctx.run_id().as_str(), "resumed")?;
    }
    // One outcome word per exit code (ExitKind::word), as every job records it.
    record.finish(ctx, outcome, &summary)?;
    let over_in = on_budget.map(|(_, w)| w);
    Ok(AppReport {
        plan,
        run_id: Some(ctx.run_id().clone()),
        waves,
        tenants,
        outcome,
        summary,
        paused,
        budget_rollback: None,
        over_in,
    })
}

fn not_reached(item: &PlanItem) -> TenantReport {
    TenantReport {
        tenant: item.tenant.clone(),
        from: item.from.clone(),
        to: item.to.clone(),
        outcome: TenantOutcome::NotReached,
        downtime_ms: None,
        snapshot: None,
        pre_copy: None,
        copy_delta: None,
        proxy: None,
        timings: StepTimings::default(),
        detail: None,
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

impl StepTimings {
    fn record(&mut self, step: Step, took: Duration) {
        let slot = match step {
            Step::PreCopy => &mut self.pre_copy_ms,
            Step::Create => &mut self.create_ms,
            Step::Check => &mut self.check_ms,
            Step::Stop => &mut self.stop_ms,
            Step::DbDump => &mut self.db_dump_ms,
            Step::Snapshot => &mut self.snapshot_ms,
            Step::CopyDelta => &mut self.copy_delta_ms,
            Step::PreSwitch => &mut self.pre_switch_ms,
            Step::PostSwitch => &mut self.post_switch_ms,
            Step::Rename => &mut self.rename_ms,
            // Its two renames are timed apart, by the step itself.
            Step::Switch => return,
            Step::Start => &mut self.start_ms,
            Step::Health => &mut self.health_ms,
            Step::Archive => &mut self.archive_ms,
            Step::Soak | Step::Bake | Step::Cleanup => return,
        };
        *slot = ms(took);
    }
}

/// How one step ended: `Err` says what went wrong, for the report.
type StepResult = std::result::Result<(), String>;

/// One tenant's rollout in progress: its inputs and what its steps have done so far.
struct TenantRoll<'a> {
    run: &'a AppRun<'a>,
    item: &'a PlanItem,
    /// Its soak after its health gate: the canary's before the others follow, or a wave's
    /// bake (`bake_s`); None: no soak.
    soak: Option<Soak>,
    /// The prior container as inspected before anything was touched.
    spec: ContainerSpec,
    /// Journaled with every step; updated as the steps learn things (new id, snapshot).
    j: TenantJournal,
    /// When the stop began: downtime is measured from here.
    t0: Option<Instant>,
    timings: StepTimings,
    /// Stop begun → the new version healthy.
    downtime: Option<Duration>,
    pre_copy: Option<MirrorReport>,
    copy_delta: Option<MirrorReport>,
    /// What the report should say besides the outcome (a fallback, an archive that failed).
    notes: Vec<String>,
    /// The proxy watch of the switch, while it runs (`[app.proxy]`).
    proxy_watch: Option<proxy_gate::ProxyWatch>,
    /// Its figures, once finished.
    proxy_report: Option<ProxyReport>,
    /// The container's health gate → the proxy routing to it.
    route: Option<Duration>,
    /// The wave it rolls in (`canary`, `wave 1`, …), for hooks.
    wave: String,
    /// The `pre_switch` hook has started: the data is the new version's from then on.
    hook_ran: bool,
    /// The `pre_switch` hook exited 75: the tenant is put back and reported skipped.
    hook_skipped: bool,
}

/// A tenant's wait after its health gate, probed again at its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Soak {
    /// The canary's (`canary_soak_s`), before the tenants after it follow: [`Step::Soak`].
    Canary(u64),
    /// A wave's tenant's (`bake_s`), before the next wave starts: [`Step::Bake`].
    Bake(u64),
}

/// Roll one tenant of a wave: a container ([`roll_tenant`]) or a stack ([`stack::roll_stack`],
/// which holds the run's manifest throughout: a stack's tenants roll one at a time).
async fn roll_one(
    run: &AppRun<'_>,
    item: &PlanItem,
    members: &[StackMember],
    soak: Option<Soak>,
    wave: &str,
) -> Result<TenantReport> {
    if run.app.stack.is_some() {
        // A stack's waves take no bake (refused in fleet.toml and --waves): only the canary soaks.
        let mut manifest = run.manifest.lock().await;
        stack::roll_stack(run, item, members, &mut manifest, soak.is_some()).await
    } else {
        roll_tenant(run, item, soak, wave).await
    }
}

/// Roll one tenant through [`Step::ALL`]. A failed step or a signal between steps undoes the
/// tenant from where it was (see [`TenantRoll::undo_from`]); a tenant that cannot even be read
/// is not touched.
async fn roll_tenant(run: &AppRun<'_>, item: &PlanItem, soak: Option<Soak>, wave: &str) -> Result<TenantReport> {
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
    // Read everything before touching anything: a failure here changes nothing. A tenant
    // whose container or data dir went away since the plan (removed by hand, a `--rm` one
    // that stopped) is skipped, named, and the run goes on: it says nothing of the release.
    let gone = |what: String| untouched(TenantOutcome::Skipped, format!("{what} since the plan; skipped"));
    match run.engine.id_of(&item.container).await {
        Ok(Some(_)) => {}
        Ok(None) => return Ok(gone(format!("its container {} was removed", item.container))),
        Err(e) => return Ok(untouched(TenantOutcome::Restored, e.to_string())),
    }
    let spec = match run.engine.spec(&item.container).await {
        Ok(s) => s,
        Err(e) => return Ok(untouched(TenantOutcome::Restored, e.to_string())),
    };
    let data_dir = run.app.data_dir_of(&item.tenant);
    if !data_dir.is_dir() {
        return Ok(gone(format!("its data dir {} (container {}) disappeared", data_dir.display(), item.container)));
    }
    let name = item.container.clone();
    let staged = naming::staged(&name, run.ctx.run_id());
    let copy = match &item.copy {
        Some(CopyPlan::PreCopy { .. }) => layout::rollout_copy(&data_dir, run.ctx.run_id(), item.tenant.as_str()),
        _ => None,
    };
    let j = TenantJournal {
        app: run.app.name.clone(),
        tenant: item.tenant.to_string(),
        pre_name: naming::pre_rollout(&name, run.ctx.run_id()),
        name,
        old_id: spec.id(),
        old_image: spec.image_ref(),
        old_digest: item.from.as_ref().map(|d| d.to_string()),
        old_image_id: Some(spec.image_id()),
        new_image: run.app.image.reference(),
        new_id: None,
        data_dir,
        snapshot: None,
        sha256: None,
        stop_timeout_s: run.app.stop_timeout_s,
        health: run.app.health.clone(),
        keep_old: run.keep_old,
        settings: spec.operator_settings(),
        restart: Some(spec.restart()),
        was_running: !item.stopped,
        copy,
        copy_ino: None,
        staged_name: Some(staged),
        db: run.app.database.as_ref().map(|d| crate::step::DbJournal {
            container: d.container_of(&item.tenant),
            user: d.user.clone(),
            password_file: d.password_file.clone(),
            run_dir: run.run_dir.clone(),
            dumps: None,
            kept: None,
        }),
    };
    let mut t = TenantRoll {
        run,
        item,
        soak,
        spec,
        j,
        t0: None,
        timings: StepTimings::default(),
        downtime: None,
        pre_copy: None,
        copy_delta: None,
        notes: Vec::new(),
        proxy_watch: None,
        proxy_report: None,
        route: None,
        wave: wave.to_string(),
        hook_ran: false,
        hook_skipped: false,
    };
    t.go().await
}

impl TenantRoll<'_> {
    /// The state machine: each step journaled before and after, with one place that decides
    /// to undo. While the tenant is down, the end of a step and the begin of the next are one
    /// journal write ([`Step::journals_with`]); a signal that comes just after it is heard
    /// once that next (short) step has acted, as one that comes while a step acts.
    async fn go(&mut self) -> Result<TenantReport> {
        let ctx = self.run.ctx;
        let tenant = self.item.tenant.as_str();
        let mut last: Option<Step> = None;
        // This step's row, when it was begun with the end of the step before.
        let mut begun: Option<i64> = None;
        for step in Step::ALL {
            if !self.applies(step) {
                continue;
            }
            let id = match begun.take() {
                Some(id) => id,
                None => {
                    // SIGINT/SIGTERM between steps: undo this tenant now rather than go on,
                    // unless its new version has passed the health gate (then it is finished
                    // instead).
                    if let Some(last) = last.filter(|_| ctx.cancel.is_cancelled() && !step.after_health_gate()) {
                        return self.undo_from(last, "interrupted by a signal".into()).await;
                    }
                    // A step that cannot be journaled is not taken: without its row, a crash in
                    // it would leave `recover` blind. Once the tenant is stopped, that undoes it
                    // here.
                    match self.begin(step, last).await {
                        Ok(Some(id)) => id,
                        Ok(None) => continue,
                        Err(report) => return report,
                    }
                }
            };
            step.during().reach();
            let began = Instant::now();
            let result = self.run_step(step).await;
            // The stop's time is the engine's stop alone (the restart policy set just before
            // it is not downtime).
            let took = match (step, self.t0) {
                (Step::Stop, Some(t0)) => t0.elapsed(),
                _ => began.elapsed(),
            };
            self.timings.record(step, took);
            // The step has acted: a failure to journal its end undoes the tenant like a failed
            // step (a cleanup has nothing left to undo).
            let next = Step::ALL.into_iter().find(|n| *n > step && self.applies(*n));
            let written = match next.filter(|n| result.is_ok() && !ctx.cancel.is_cancelled() && step.journals_with(*n))
            {
                Some(n) => ctx.end_and_begin(id, Some(tenant), n, &self.j).map(|id| begun = Some(id)),
                None => ctx.end(id, if result.is_ok() { "ok" } else { "failed" }, Some(&self.j)),
            };
            let result = match written {
                Ok(()) => result,
                Err(e) => {
                    let why = format!("state.db could not record the end of step {step}: {e}");
                    tracing::warn!("tenant {tenant}: {why}");
                    match result {
                        Ok(()) if !step.failure_undoes() => {
                            self.notes.push(why);
                            Ok(())
                        }
                        Ok(()) => Err(why),
                        Err(failed) => Err(format!("{failed}; {why}")),
                    }
                }
            };
            step.after().reach();
            match result {
                Err(why) if step.failure_undoes() => return self.undo_from(step, why).await,
                _ => last = Some(step),
            }
        }
        if self.item.stopped {
            self.notes.insert(0, "recreated on the new image and left stopped, as it was".to_string());
        }
        self.finish_watch().await;
        let detail = (!self.notes.is_empty()).then(|| self.notes.join("; "));
        Ok(self.report(TenantOutcome::Rolled, detail))
    }

    /// Journal `step` as begun (`last`: the step before it). Ok(None) when the row cannot be
    /// written and only the cleanup is left (skipped, the prior container kept); Err(report)
    /// when it cannot be written otherwise: the tenant is left untouched, or undone.
    async fn begin(
        &mut self,
        step: Step,
        last: Option<Step>,
    ) -> std::result::Result<Option<i64>, Result<TenantReport>> {
        let tenant = self.item.tenant.as_str();
        let e = match self.run.ctx.begin(Some(tenant), step, &self.j) {
            Ok(id) => return Ok(Some(id)),
            Err(e) => e,
        };
        let why = format!("state.db could not record step {step} as begun: {e}");
        match last {
            None => Err(Ok(self.report(TenantOutcome::Restored, Some(format!("not touched: {why}"))))),
            // Only the cleanup is left: the prior container stays aside, untidy.
            Some(_) if !step.failure_undoes() => {
                tracing::warn!("tenant {tenant}: {why}; {} is kept", self.j.pre_name);
                self.notes.push(format!("{why}; the prior container {} is kept", self.j.pre_name));
                Ok(None)
            }
            Some(last) => Err(self.undo_from(last, why).await),
        }
    }

    /// Whether this tenant goes through `step` at all.
    fn applies(&self, step: Step) -> bool {
        match step {
            // A tenant that was not running stays stopped: recreated, checked, never started.
            Step::Start | Step::Health => !self.item.stopped,
            Step::Soak => matches!(self.soak, Some(Soak::Canary(_))) && !self.item.stopped,
            Step::Bake => matches!(self.soak, Some(Soak::Bake(_))) && !self.item.stopped,
            Step::Cleanup => !self.run.keep_old,
            // One of two paths: a copy beside the data dir (pre-copy, delta, archive after the
            // health gate), or the whole archive while down. A failed pre-copy falls back.
            Step::PreCopy | Step::CopyDelta | Step::Archive => self.j.copy.is_some(),
            Step::Snapshot => self.j.copy.is_none(),
            // Only journals of earlier versions hold it: the switch renames the prior aside.
            Step::Rename => false,
            Step::DbDump => self.j.db.is_some(),
            Step::PreSwitch => self.run.app.hooks.pre_switch.is_some(),
            Step::PostSwitch => self.run.app.hooks.post_switch.is_some() && !self.item.stopped,
            Step::Create | Step::Check | Step::Stop | Step::Switch => true,
        }
    }

    async fn run_step(&mut self, step: Step) -> StepResult {
        match step {
            Step::PreCopy => self.pre_copy().await,
            Step::Create => self.create().await,
            Step::Check => self.check().await,
            Step::Stop => self.stop().await,
            Step::DbDump => self.db_dump().await,
            Step::Snapshot => self.snapshot().await,
            Step::CopyDelta => self.copy_delta().await,
            Step::PreSwitch => self.hook_step("pre_switch").await,
            Step::PostSwitch => self.hook_step("post_switch").await,
            Step::Rename => self.rename_aside().await,
            Step::Switch => self.switch().await,
            Step::Start => self.start().await,
            Step::Health => self.health().await,
            Step::Soak | Step::Bake => self.soak().await,
            Step::Archive => self.archive().await,
            Step::Cleanup => self.cleanup().await,
        }
    }

    /// Undo the tenant, caught in (or just after) `step`, and report why.
    async fn undo_from(&mut self, step: Step, why: String) -> Result<TenantReport> {
        let r = &self.run;
        let began = Instant::now();
        // Once the pre_switch hook started, the data is the new version's whatever step failed.
        let restore = step.new_version_may_have_run() || self.hook_ran;
        let undo = undo_tenant(r.ctx, r.engine, r.prober, &self.j, restore).await?;
        self.timings.undo_ms = ms(began.elapsed());
        self.timings.undo_restore_ms = undo.timings.restore_ms;
        self.timings.undo_prior_ms = undo.timings.prior_ms;
        self.downtime = self.t0.map(|t| t.elapsed());
        self.finish_watch().await;
        // The tenant is back: `on_failure` (the prior image) is told; its exit is only reported.
        let mut detail = format!("{why}; {}", undo.detail);
        let app = self.run.app;
        if let (true, false, Some(hook)) = (undo.ok, self.hook_skipped, app.hooks.on_failure.as_ref()) {
            let image = self.j.old_image.clone();
            detail.push_str(&match self.run_hook("on_failure", hook, &image).await {
                Ok(HookRun { exit: Some(0), .. }) => "; on_failure hook ran".to_string(),
                Ok(HookRun { exit: Some(c), .. }) => format!("; on_failure hook exited {c}"),
                Ok(HookRun { .. }) => "; on_failure hook timed out or was killed".to_string(),
                Err(e) => format!("; {e}"),
            });
        }
        let outcome = match (undo.ok, self.hook_skipped) {
            // The hook asked for this tenant to be skipped: put back as it was, not a failure.
            (true, true) => TenantOutcome::Skipped,
            (true, false) => TenantOutcome::Restored,
            (false, _) => TenantOutcome::PersonNeeded,
        };
        Ok(self.report(outcome, Some(detail)))
    }

    fn report(&self, outcome: TenantOutcome, detail: Option<String>) -> TenantReport {
        TenantReport {
            tenant: self.item.tenant.clone(),
            from: self.item.from.clone(),
            to: self.item.to.clone(),
            outcome,
            downtime_ms: self.downtime.map(ms),
            snapshot: self.j.snapshot.clone(),
            pre_copy: self.pre_copy.clone(),
            copy_delta: self.copy_delta.clone(),
            proxy: self.proxy_report.clone(),
            timings: self.timings.clone(),
            detail,
        }
    }

    /// While the prior version still serves: mirror the data dir to the rollout copy. A copy
    /// that fails (the disk filled up, say) is removed and the tenant takes the
    /// archive-while-down path instead; nothing of the tenant was touched.
    async fn pre_copy(&mut self) -> StepResult {
        let Some(copy) = self.j.copy.clone() else { return Ok(()) };
        let (src, dst) = (self.j.data_dir.clone(), copy.clone());
        let r = crate::blocking::run("pre-copy", move || mirror::mirror(&src, &dst)).await;
        match r {
            Ok(Ok(report)) => {
                self.pre_copy = Some(report);
                crate::context::test_pause("after-pre-copy");
                Ok(())
            }
            Ok(Err(e)) => self.fall_back(&copy, &e).await,
            Err(e) => self.fall_back(&copy, &e).await,
        }
    }

    async fn fall_back(&mut self, copy: &Path, why: &dyn fmt::Display) -> StepResult {
        let note = format!("pre-copy to {} failed ({why}); archived while down instead", copy.display());
        let c = copy.to_path_buf();
        let dropped = crate::blocking::run("drop copy", move || crate::undo::drop_copy(&c)).await;
        if !matches!(dropped, Ok(Ok(()))) {
            tracing::warn!("tenant {}: the partial copy {} stays", self.j.tenant, copy.display());
        }
        self.j.copy = None;
        self.notes.push(note);
        Ok(())
    }

    /// A hook of `[app.hooks]` in a one-shot container of the new image with the tenant's
    /// mounts, env and networks: `pre_switch` while down, the data before it copied (or
    /// archived); `post_switch` beside the healthy new version. Exit 0 goes on; 75 skips the
    /// tenant (undone, reported skipped); anything else, or its timeout, fails it.
    async fn hook_step(&mut self, which: &str) -> StepResult {
        let r = self.run;
        let hook = match which {
            "pre_switch" => r.app.hooks.pre_switch.as_ref(),
            _ => r.app.hooks.post_switch.as_ref(),
        };
        let Some(hook) = hook else { return Ok(()) };
        self.hook_ran = true;
        let ran = self.run_hook(which, hook, &self.j.new_image.clone()).await?;
        crate::context::test_pause("after-hook");
        let tail =
            |t: &str| if t.is_empty() { String::new() } else { format!(": {}", t.lines().last().unwrap_or_default()) };
        match ran {
            HookRun { exit: Some(0), .. } => Ok(()),
            HookRun { exit: Some(crate::config::HOOK_SKIP), tail: t, .. } => {
                self.hook_skipped = true;
                Err(format!("{which} hook exited {} (skip this tenant){}", crate::config::HOOK_SKIP, tail(&t)))
            }
            HookRun { timed_out: true, tail: t, .. } => {
                Err(format!("{which} hook timed out after {} s and was killed{}", hook.timeout_s, tail(&t)))
            }
            HookRun { exit: Some(c), tail: t, .. } => Err(format!("{which} hook exited {c}{}", tail(&t))),
            HookRun { exit: None, tail: t, .. } => Err(format!("{which} hook ended without an exit code{}", tail(&t))),
        }
    }

    /// Run `hook` (named `which` in its env) for this tenant on `image`.
    async fn run_hook(&self, which: &str, hook: &crate::config::HookSpec, image: &str) -> Result<HookRun, String> {
        let r = self.run;
        let env = vec![
            format!("SLIPWAY_HOOK={which}"),
            format!("SLIPWAY_TENANT={}", self.item.tenant),
            format!("SLIPWAY_OLD_DIGEST={}", self.item.from.as_ref().map(|d| d.to_string()).unwrap_or_default()),
            format!("SLIPWAY_NEW_DIGEST={}", self.item.to),
            format!("SLIPWAY_RUN_ID={}", r.ctx.run_id()),
            format!("SLIPWAY_WAVE={}", self.wave),
        ];
        let name = naming::hook(&self.j.pre_name);
        r.engine.run_hook(&name, &self.spec, image, hook, env).await.map_err(|e| format!("{which} hook: {e}"))
    }

    /// Down: bring the copy up to date with only what changed since the pre-copy. The copy is
    /// then exactly the pre-rollout data; its inode is journaled for the swap back.
    async fn copy_delta(&mut self) -> StepResult {
        let Some(copy) = self.j.copy.clone() else { return Ok(()) };
        let failed = |e: &dyn fmt::Display| format!("copy of {} failed: {e}", self.j.data_dir.display());
        let (src, dst) = (self.j.data_dir.clone(), copy.clone());
        let report = crate::blocking::run("copy-delta", move || mirror::mirror(&src, &dst))
            .await
            .map_err(|e| failed(&e))?
            .map_err(|e| failed(&e))?;
        use std::os::unix::fs::MetadataExt;
        let ino = std::fs::symlink_metadata(&copy).map_err(|e| failed(&e))?.ino();
        self.j.copy_ino = Some(ino);
        self.copy_delta = Some(report);
        Ok(())
    }

    /// After the health gate (and soak): the run's archive from the copy, then the copy goes.
    /// A failure keeps the copy (named in the report) and the healthy new version.
    async fn archive(&mut self) -> StepResult {
        let r = self.run;
        let run_id = r.ctx.run_id().clone();
        // The run's manifest is held while the archive is written and recorded: a wave's
        // tenants archive one at a time (after their health gate, so not downtime).
        let mut manifest = r.manifest.lock().await;
        match archive_copy(r.ctx, &run_id, &mut manifest, &mut self.j).await {
            Ok(_) => Ok(()),
            Err(e) => {
                let copy = self.j.copy.as_deref().map(|c| c.display().to_string()).unwrap_or_default();
                let why = format!(
                    "archive of the rollout copy failed ({e}); the data from before the rollout stays in {copy}"
                );
                self.notes.push(why.clone());
                Err(why)
            }
        }
    }

    /// Down: the prior container aside, the staged one (aliases and restart policy already
    /// final) to the tenant's name. One journaled step for two renames: a crash between them
    /// (the tenant's name free) is undone like one before or after them, from what the engine
    /// holds.
    async fn switch(&mut self) -> StepResult {
        crate::context::test_pause("before-switch");
        let began = Instant::now();
        self.still_stopped().await?;
        self.rename_aside().await?;
        self.timings.rename_ms = ms(began.elapsed());
        if let Some(point) = Step::Switch.halfway() {
            point.reach();
        }
        let began = Instant::now();
        let staged = self.j.staged_name.clone().unwrap_or_else(|| self.j.name.clone());
        let id = self.j.new_id.clone().unwrap_or_default();
        let r = self.run.engine.rename_id(&id, &staged, &self.j.name).await.map_err(|e| e.to_string());
        self.timings.switch_ms = ms(began.elapsed());
        r
    }

    async fn stop(&mut self) -> StepResult {
        crate::context::test_pause("before-stop");
        // Stopped and then aside, the prior container must not come back by itself: a daemon
        // restart would start it beside the new one, on the same data dir. Set just before the
        // stop (so not downtime); undo puts its policy back.
        let engine = self.run.engine;
        if self.j.restart.as_ref().is_some_and(Restart::restarts) {
            engine.set_restart(&self.j.name, &Restart::never()).await.map_err(|e| e.to_string())?;
        }
        self.start_watch();
        self.t0 = Some(Instant::now());
        engine.stop(&self.j.name, self.j.stop_timeout_s).await.map_err(|e| format!("stop failed: {e}"))
    }

    /// Down, before the new version starts: every declared database dumped into the run's
    /// snapshot (`rollout/<run>/<tenant>.db/`), each hashed; the journal holds them for an
    /// undo. A failure fails the tenant before the switch (its prior container comes back on
    /// untouched data and database).
    async fn db_dump(&mut self) -> StepResult {
        let Some(spec) = self.run.app.database.as_ref() else { return Ok(()) };
        let r = self.run;
        let archive_rel = layout::tenant_archive(SnapshotKind::Rollout, &self.j.tenant);
        let data_dir = r.app.data_dir_of(&self.item.tenant);
        let pending =
            crate::database::dump(r.engine, spec, &self.item.tenant, Some(&data_dir), &r.run_dir, &archive_rel)
                .await
                .map_err(|e| e.to_string())?;
        let dumps = pending.place().await.map_err(|e| format!("tenant {}: {e}", self.j.tenant))?;
        if let Some(db) = self.j.db.as_mut() {
            db.dumps = Some(dumps);
        }
        Ok(())
    }

    /// The data is still only the prior version's here.
    async fn snapshot(&mut self) -> StepResult {
        let data_dir = self.j.data_dir.clone();
        let failed = |e: &dyn fmt::Display| format!("snapshot of {} failed: {e}", data_dir.display());
        let archive_path = self.run.run_dir.join(layout::tenant_archive(SnapshotKind::Rollout, &self.j.tenant));
        let (src, dest) = (data_dir.clone(), archive_path.clone());
        let summary =
            crate::blocking::run("snapshot", move || archive::create_with_level(&src, &dest, ROLLOUT_ZSTD_LEVEL))
                .await
                .map_err(|e| failed(&e))?
                .map_err(|e| failed(&e))?;
        self.j.snapshot = Some(archive_path.clone());
        self.j.sha256 = Some(summary.sha256.clone());
        let r = self.run;
        let run_id = r.ctx.run_id().clone();
        let db = self.j.db.as_ref().and_then(|d| d.dumps.clone());
        let mut manifest = r.manifest.lock().await;
        record_rollout_archive(r.ctx, &run_id, &r.run_dir, &mut manifest, &self.j.tenant, &archive_path, &summary, db)
            .map_err(|e| failed(&e))
    }

    /// The prior container is still the one stopped at the stop step, and still stopped: a
    /// systemd unit running `docker start -a`, compose or Portainer may start it again right
    /// after the stop, and switching then would start the new version beside it on the same
    /// data dir. Checked just before the switch (its renames are the last thing before the start).
    async fn still_stopped(&mut self) -> StepResult {
        let st = self.run.engine.state(&self.j.old_id).await.map_err(|e| e.to_string())?;
        if st.running || st.restarting || st.paused {
            return Err(format!(
                "the prior container {} was started again by something other than slipway after slipway stopped \
                 it (a systemd unit running `docker start -a`, compose, Portainer?); not switching, so the new \
                 version never runs beside it on the same data; find what starts it and stop that before the \
                 next rollout",
                self.j.name
            ));
        }
        Ok(())
    }

    /// The prior container (stopped, restart policy `no`) aside, freeing the tenant's name.
    async fn rename_aside(&mut self) -> StepResult {
        self.run.engine.rename_id(&self.j.old_id, &self.j.name, &self.j.pre_name).await.map_err(|e| e.to_string())
    }

    /// While the prior version still serves: the new container, under its staging name.
    async fn create(&mut self) -> StepResult {
        let staged = self.j.staged_name.clone().unwrap_or_else(|| self.j.name.clone());
        let id =
            self.run.engine.create_staged(&staged, &self.spec, &self.j.new_image).await.map_err(|e| e.to_string())?;
        self.j.new_id = Some(id);
        Ok(())
    }

    /// The staged container has everything the operator set on the prior one but the name,
    /// as final values: the same aliases on each network (none lost, none added) and the same
    /// restart policy. Nothing is set on it after this but its name.
    async fn check(&mut self) -> StepResult {
        let staged = self.j.staged_name.clone().unwrap_or_else(|| self.j.name.clone());
        let spec = self.run.engine.spec(&staged).await.map_err(|e| e.to_string())?;
        let actual = spec.actual_settings();
        let want = self.j.settings.as_staged(&staged);
        let mut lost = want.lost_in(&actual);
        let (had, has) = (self.j.restart.clone().unwrap_or_else(Restart::never), spec.restart());
        if has.to_string() != had.to_string() {
            lost.push(format!("restart policy {had} became {has}"));
        }
        let added = want.aliases_added_in(&actual);
        match (lost.is_empty(), added.is_empty()) {
            (true, true) => Ok(()),
            (false, _) => Err(format!("the new container lost what the operator set: {}", lost.join(", "))),
            (true, false) => Err(format!("the new container has what the prior one had not: {}", added.join(", "))),
        }
    }

    /// From here on the new version may write to the data dir.
    async fn start(&mut self) -> StepResult {
        self.run.engine.start(&self.j.name).await.map_err(|e| format!("new version failed: start failed: {e}"))
    }

    async fn health(&mut self) -> StepResult {
        let r = &self.run;
        // `downtime_budget_ms`: stop → healthy within it, or the tenant is failed (and rolled
        // back with its data) at the budget's end, even if it would have turned healthy later.
        let budget = r.app.rollout.downtime_budget_ms.map(Duration::from_millis);
        let deadline = budget.zip(self.t0).map(|(b, t0)| (t0 + b, b));
        match gate_cancellable(r.ctx, r.engine, r.prober, &self.j.name, &r.app.health, deadline).await {
            Ok(Ok(())) => {
                self.downtime = self.t0.map(|t| t.elapsed());
                if let Some((b, down)) = budget.zip(self.downtime).filter(|(b, d)| d > b) {
                    return Err(format!(
                        "new version failed: down {} ms, over the downtime budget of {} ms (downtime_budget_ms)",
                        ms(down),
                        ms(b)
                    ));
                }
                // Healthy at its own address; customers reach it through the proxy.
                self.route_gate(None).await.map_err(|why| format!("new version failed: {why}"))
            }
            Ok(Err(why)) => Err(format!("new version failed: {why}")),
            Err(e) => Err(format!("new version failed: {e}")),
        }
    }

    /// After the canary is healthy: wait `canary_soak_s` (cut short by a signal), probe again.
    async fn soak(&mut self) -> StepResult {
        let r = &self.run;
        let (soak_s, what) = match self.soak.unwrap_or(Soak::Canary(r.app.canary_soak_s)) {
            Soak::Bake(s) => {
                // A test's kill while a wave's tenant bakes.
                crate::context::crash_point("wave-bake");
                (s, "bake")
            }
            Soak::Canary(s) => (s, "soak"),
        };
        let until = Instant::now() + Duration::from_secs(soak_s);
        while Instant::now() < until && !r.ctx.cancel.is_cancelled() {
            tokio::time::sleep(Duration::from_millis(200).min(until.saturating_duration_since(Instant::now()))).await;
        }
        let who = if self.item.canary { "canary" } else { "tenant" };
        let unhealthy = |why: &dyn fmt::Display| format!("{who} unhealthy after the {soak_s}s {what}: {why}");
        // Restarts count from the new container's start (it had none), not from this probe.
        match r.prober.gate_since(r.engine, &self.j.name, &r.app.health, Some(Duration::from_secs(5)), Some(0)).await {
            Ok(Ok(_)) => self.route_after_soak().await.map_err(|why| unhealthy(&why)),
            Ok(Err(why)) => Err(unhealthy(&why)),
            Err(e) => Err(unhealthy(&e)),
        }
    }

    async fn cleanup(&mut self) -> StepResult {
        self.run.engine.remove(&self.j.pre_name).await.map_err(|e| e.to_string())
    }
}

/// The health gate, stopped early by SIGINT/SIGTERM (then the tenant is undone).
async fn gate_cancellable(
    ctx: &Ctx,
    engine: &Engine,
    prober: &Prober,
    name: &str,
    spec: &HealthSpec,
    budget: Option<(Instant, Duration)>,
) -> Result<std::result::Result<(), String>> {
    let interrupted = || Ok(Err("interrupted by a signal during the health gate".into()));
    if ctx.cancel.is_cancelled() {
        return interrupted();
    }
    // A new container: any restart since its start counts.
    let gate = prober.gate_since(engine, name, spec, None, Some(0));
    tokio::pin!(gate);
    loop {
        tokio::select! {
            biased;
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                if ctx.cancel.is_cancelled() {
                    return interrupted();
                }
                if let Some((_, b)) = budget.filter(|(d, _)| Instant::now() >= *d) {
                    return Ok(Err(format!(
                        "not healthy within the downtime budget of {} ms (downtime_budget_ms)",
                        ms(b)
                    )));
                }
            }
            r = &mut gate => return Ok(r?.map(|_| ()).map_err(|u| u.to_string())),
        }
    }
}

impl fmt::Display for RolloutReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(t) = self.trust.as_ref().filter(|t| t.signature != crate::adapters::desired::Signature::NotChecked)
        {
            writeln!(f, "commit {}: {}", &t.commit[..12.min(t.commit.len())], t.signature)?;
        }
        for app in &self.apps {
            let p = &app.plan;
            writeln!(f, "app {} -> {} (commit {})", p.app, p.image, &p.commit[..12.min(p.commit.len())])?;
            if let Some(id) = &app.run_id {
                writeln!(f, "  run {id}")?;
            }
            // The waves, when they are more than the canary and then one at a time.
            if app.waves.len() > 2 || app.waves.iter().any(|w| w.max_parallel > 1 || w.bake_s > 0) {
                for w in &app.waves {
                    let mut names: Vec<&str> = w.tenants.iter().take(8).map(|t| t.as_str()).collect();
                    if w.tenants.len() > names.len() {
                        names.push("…");
                    }
                    let bake = if w.bake_s > 0 { format!(", bake {}s", w.bake_s) } else { String::new() };
                    writeln!(
                        f,
                        "  {} ({}; {} tenant(s), max_parallel {}{bake}): {}",
                        w.name,
                        w.select,
                        w.tenants.len(),
                        w.max_parallel,
                        names.join(", ")
                    )?;
                }
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
                    if let Some(c) = &i.copy {
                        writeln!(f, "      {c}")?;
                    }
                    if let Some(st) = &i.stack {
                        for c in &st.changed {
                            let from = c.from.as_ref().map_or("unknown", |d| d.short());
                            writeln!(f, "      service {} ({}): {from} -> {}", c.service, c.container, c.to.short())?;
                        }
                        writeln!(f, "      stops: {}", st.stopped.join(", "))?;
                        if !st.mounts.is_empty() {
                            writeln!(f, "      copies: {}", st.mounts.join("; "))?;
                        }
                    }
                }
            }
            for t in &app.tenants {
                let down = t.downtime_ms.map_or(String::new(), |d| format!(" downtime {d} ms"));
                writeln!(f, "  {:<24} {:<14}{down}", t.tenant.as_str(), t.outcome.word())?;
                if let Some(p) = &t.proxy {
                    writeln!(f, "      {p}")?;
                }
                if let Some(d) = &t.detail {
                    writeln!(f, "      {d}")?;
                }
            }
            if !p.held.is_empty() {
                let held: Vec<&str> = p.held.iter().map(|t| t.as_str()).collect();
                writeln!(f, "  held: {}", held.join(", "))?;
            }
            if !p.stopped.is_empty() {
                let stopped: Vec<&str> = p.stopped.iter().map(|t| t.as_str()).collect();
                writeln!(
                    f,
                    "  behind (stopped): {} (include_stopped = true recreates them, stopped)",
                    stopped.join(", ")
                )?;
            }
            for s in &p.skipped {
                writeln!(f, "  skipped container {}: {}", s.container, s.reason)?;
            }
            writeln!(f, "{}", app.summary)?;
        }
        Ok(())
    }
}
