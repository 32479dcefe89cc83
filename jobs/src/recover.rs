//! `recover`, also run at the start of every job that changes containers: find runs that
//! never finished (the process was killed: OOM, reboot, SIGKILL) and bring every tenant they
//! caught mid-step to a safe state, from the journal alone:
//! - a rollout tenant whose new container had passed its health gate keeps it (the prior
//!   container is removed unless the run kept it), and a rollout copy it left (the archive
//!   after the health gate was cut short) is archived into the run's snapshot, then removed —
//!   unless the run's manifest already records that archive (the crash came while the copy was
//!   being removed): then the copy, maybe half gone, is never archived again; it is removed once
//!   the recorded archive re-hashes to its manifest, else kept and a person is needed;
//! - any other rollout tenant is undone: new (or staged) container removed, data put back if
//!   the new version was started — the rollout copy swapped back in, or the run's snapshot
//!   extracted —, prior container back, started, health-checked; a copy that was not needed
//!   is removed (its data dir was never touched);
//! - exactly what a snapshot or restore held is given back (its journaled hold): a container it
//!   paused is unpaused, one it stopped is started, one it found not running (hold `none`) is
//!   left stopped; a restore that finished needing a person (its tenant unhealthy) is left
//!   unresolved, so `status` names it until a person resolves it;
//! - what a killed restore drill made — its throw-away containers and networks (labelled
//!   [`crate::naming::DRILL_LABEL`]) and its scratch copies — is removed; the drill never
//!   touched the live tenant, so nothing else is to be done.
//!
//! Each run is then marked finished with outcome `recovered`. Idempotent: a second run finds
//! nothing unfinished and changes nothing.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use slipway_state::{Run, Step as StepRow};

use crate::adapters::docker::{Engine, ENGINE_WAIT};
use crate::adapters::health::Prober;
use crate::context::Ctx;
use crate::error::{ExitKind, Result};
use crate::journal::{HeldDetail, HeldRow, HeldStep, RestoreStep, SnapshotStep};
use crate::journal::{RolloutDetail, RolloutRow};
use crate::manifest::Manifest;
use crate::step::{Journaled, StackJournal, Step, TenantJournal, UndoStep};
use crate::undo::undo_tenant;

/// Options of `recover`.
#[derive(Debug, Clone, Default)]
pub struct RecoverOptions {
    /// Say what would be done; change nothing.
    pub dry_run: bool,
}

/// What recover decided for one tenant of a run, from its journal and what the engine holds:
/// the plan `--dry-run` prints, and the real run carries out (the same decision, taken by the
/// same code before anything is touched).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Planned {
    /// A rollout tenant past its health gate: keep the new version, finish what the run left
    /// (its rollout copy archived, the prior container removed).
    KeepNew,
    /// A stack tenant past its health gate: keep the new version, finish the stack.
    FinishStack,
    /// The tenant's undo already finished: nothing to do.
    AlreadyRestored,
    /// Undo: the new container removed, the prior container back (its data was not touched).
    Undo,
    /// Undo with the data: the run's snapshot (or rollout copy) put back, the prior container back.
    UndoWithData,
    /// Undo a stack tenant: every prior container back.
    UndoStack,
    /// Undo a stack tenant with its data: every data mount swapped back, every prior container back.
    UndoStackWithData,
    /// Put back a mount a stack restore cut short had swapped.
    PutBackMount,
    /// Unpause a container a snapshot paused.
    Unpause,
    /// Start a container a snapshot or restore stopped.
    Start,
    /// Leave a held container as it is (not paused, not running, or running already).
    LeaveAsFound,
    /// A killed drill's tenant: remove what the drill made (the live tenant was never touched).
    RemoveDrillLeftovers,
    /// A tenant of the run's waves that the run never started: untouched.
    Untouched,
    /// A tenant whose journal rows are only failed steps' reasons: left as it is, for a person.
    PersonNeeded,
}

/// What was (or would be) done for one tenant.
#[derive(Debug, Clone, Serialize)]
pub struct TenantAction {
    /// Tenant or container.
    pub tenant: String,
    /// What was found.
    pub found: String,
    /// What recover decided (the same in a dry run and the real one).
    pub plan: Planned,
    /// What was done.
    pub action: String,
    /// Whether it ended safe (running, healthy).
    pub ok: bool,
}

/// One unfinished run.
#[derive(Debug, Clone, Serialize)]
pub struct RecoveredRun {
    /// Run id.
    pub run_id: String,
    /// Its job.
    pub job: String,
    /// Per tenant.
    pub tenants: Vec<TenantAction>,
}

/// The result of `recover`.
#[derive(Debug, Clone, Serialize)]
pub struct RecoverReport {
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// Every unfinished run found.
    pub runs: Vec<RecoveredRun>,
    /// Leftovers of dead processes removed (or, in a dry run, that would be), one line each.
    #[serde(default)]
    pub swept: Vec<String>,
}

impl RecoverReport {
    /// PersonNeeded when a tenant could not be brought to a safe state.
    pub fn exit_kind(&self) -> ExitKind {
        if self.runs.iter().flat_map(|r| &r.tenants).all(|t| t.ok) {
            ExitKind::Success
        } else {
            ExitKind::PersonNeeded
        }
    }
}

/// A container a job paused or stopped while it worked on it (the model owns it: `journal`).
pub use crate::journal::HeldContainer;

fn pid_alive(pid: i64) -> bool {
    if pid <= 0 || pid as u32 == std::process::id() {
        return false;
    }
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains("slipway"))
}

/// Run `recover`.
pub async fn recover(ctx: &Ctx, opts: &RecoverOptions) -> Result<RecoverReport> {
    let mut runs = Vec::new();
    let mut unfinished: Vec<Run> = ctx
        .store
        .unfinished_runs()?
        .into_iter()
        .filter(|r| r.id != ctx.run_id().as_str() && !pid_alive(r.pid))
        .collect();
    // A snapshot or restore that finished needing a person with a tenant it could not bring
    // back (left paused or stopped): its journal says which container to bring back. One that
    // needs a person for another reason (a restore whose tenant is unhealthy) is not ours.
    for r in ctx.store.unresolved_halts()? {
        if matches!(r.job.as_str(), "snapshot" | "restore")
            && r.id != ctx.run_id().as_str()
            && !open_holds(&HeldRow::parse_all(&r.job, &r.id, &ctx.store.steps(&r.id)?)?).is_empty()
        {
            unfinished.push(r);
        }
    }
    // A drill's leftovers: a killed drill's run, or a scratch copy nobody removed.
    let drill_root = crate::layout::drill_root(&ctx.cfg.backup_root);
    let drill_left = unfinished.iter().any(|r| r.job == "drill")
        || std::fs::read_dir(&drill_root).is_ok_and(|mut rd| rd.next().is_some());
    if unfinished.is_empty() {
        let mut swept = sweep(ctx, opts.dry_run)?;
        if drill_left {
            let engine = Engine::connect(&ctx.cfg.docker).await?;
            swept.extend(sweep_drills(ctx, &engine, opts.dry_run).await?);
        }
        return Ok(RecoverReport { dry_run: opts.dry_run, runs, swept });
    }
    // Unfinished runs may have left a tenant down: wait out an engine that is restarting.
    let engine = Engine::connect_within(&ctx.cfg.docker, ENGINE_WAIT).await?;
    let prober = Prober::new()?;
    let record = if opts.dry_run { None } else { Some(ctx.start_run("recover", None, None, None)?) };
    for run in unfinished {
        let steps = ctx.store.steps(&run.id)?;
        let tenants = match run.job.as_str() {
            "rollout" | "rollback" => recover_rollout(ctx, &engine, &prober, &run, &steps, opts.dry_run).await?,
            "drill" => recover_drill(&run, &steps, opts.dry_run)?,
            _ => recover_held(ctx, &engine, &run, &steps, opts.dry_run).await?,
        };
        // A restore that finished needing a person keeps needing one: its container is
        // brought back, but what made it fail (an unhealthy tenant after the swap, say) is not
        // recover's to judge. It stays unresolved, in `status`, until a person resolves it.
        let needs_person = run.finished_at.is_some() && run.job == "restore";
        if let Some(record) = record.as_ref().filter(|_| !needs_person) {
            let ok = tenants.iter().all(|t| t.ok);
            let what = if run.finished_at.is_some() { "left a tenant frozen" } else { "killed mid-run" };
            let summary = format!(
                "{what}; recovered by {}: {}",
                ctx.run_id(),
                tenants.iter().map(|t| format!("{} {}", t.tenant, t.action)).collect::<Vec<_>>().join("; ")
            );
            record.finish_dead_run(ctx, &run.id, ok, &summary)?;
        }
        runs.push(RecoveredRun { run_id: run.id, job: run.job, tenants });
    }
    // Only now: an unfinished rollout's snapshot dir may have had no manifest yet, and its
    // undo above needed the archive in it.
    let mut swept = sweep(ctx, opts.dry_run)?;
    if drill_left {
        swept.extend(sweep_drills(ctx, &engine, opts.dry_run).await?);
    }
    swept.extend(sweep_hooks(ctx, &engine, opts.dry_run).await?);
    let report = RecoverReport { dry_run: opts.dry_run, runs, swept };
    if let Some(record) = record {
        let kind = report.exit_kind();
        let summary = format!("recovered {} unfinished run(s)", report.runs.len());
        record.finish(ctx, kind, &summary)?;
    }
    Ok(report)
}

/// The pid in a temporary name `….<what>-<pid>` (AtomicFile's `.tmp-`, reuse's `.link-`).
fn temp_pid(name: &str) -> Option<i64> {
    let (_, tail) = name.rsplit_once('-')?;
    let stem = name.strip_suffix(tail)?.strip_suffix('-')?;
    (name.starts_with('.') && (stem.ends_with(".tmp") || stem.ends_with(".link"))).then(|| tail.parse().ok())?
}

/// Remove what dead processes left in the backup store and the state dir, and say so: temporary
/// files of a write that never committed (`.<name>.tmp-<pid>`, `.<name>.link-<pid>` of a dead
/// pid), deep-verify scratch dirs (`.verify-*`) older than a day, daily snapshot dirs without a
/// manifest (no archive in them completed), and the remote cache. It runs
/// under the host lock, so no live slipway job is writing any of these. Never touches a tenant's
/// data dir, `replaced/` data, a rollout's snapshot dir, or a rollout copy beside a data dir
/// (those a finished run left are listed as kept).
fn sweep(ctx: &Ctx, dry_run: bool) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut remove = |path: &std::path::Path, why: &str| {
        let r = if dry_run { Ok(()) } else { crate::adapters::confined::remove_tree(path).map(|_| ()) };
        match r {
            Ok(()) => {
                out.push(format!("{} {} ({why})", if dry_run { "would remove" } else { "removed" }, path.display()))
            }
            Err(e) => out.push(format!("could not remove {} ({why}): {e}", path.display())),
        }
    };
    let walk = crate::layout::walk(&ctx.cfg.backup_root)?;
    for snap in &walk.incomplete {
        match snap.id.kind() {
            // No archive of it completed (the manifest is rewritten after each one).
            crate::layout::SnapshotKind::Daily => {
                remove(&snap.dir, "a daily snapshot dir without a manifest, left by a snapshot that died")
            }
            // Kept: a rollout's archive may be the only copy of the data its tenant had before a
            // version that recover finished forward; `rollback --run` would need it.
            crate::layout::SnapshotKind::Rollout => {}
        }
    }
    // Temporary files inside the complete snapshot dirs (and their tenants/ subdir).
    let day = std::time::Duration::from_secs(24 * 3600);
    let mut dirs: Vec<std::path::PathBuf> = walk.complete.iter().map(|s| s.dir.clone()).collect();
    dirs.extend(walk.complete.iter().map(|s| crate::layout::tenants_dir(&s.dir)));
    for dir in dirs {
        let Ok(rd) = std::fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            if let Some(pid) = temp_pid(&name) {
                // Any live process of that pid keeps it (a reused pid errs on keeping).
                if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                    remove(&path, "a temporary file of a write that never finished");
                }
            } else if name.starts_with(".verify-")
                && e.metadata().and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().is_ok_and(|a| a > day))
            {
                remove(&path, "a deep-verify scratch dir older than a day");
            }
        }
    }
    let cache = crate::layout::remote_cache(&ctx.cfg.state_dir);
    if std::fs::read_dir(&cache).is_ok_and(|mut rd| rd.next().is_some()) {
        remove(&cache, "what an earlier restore --remote downloaded");
    }
    out.extend(kept_copies(ctx)?.into_iter().map(|k| {
        let k = match k {
            Ok(k) => k,
            Err(why) => return why,
        };
        format!(
            "kept {} (the rollout copy of tenant {} from run {}, never archived: `slipway rollback --run {} --tenant {}` \
             puts it back, and refuses once it is gone; remove it by hand once that run will not be rolled back)",
            k.copy.display(),
            k.tenant,
            k.run,
            k.run,
            k.tenant
        )
    }));
    Ok(out)
}

/// How many of the newest runs the sweep reads for rollout copies still on disk.
const COPIES_LOOKBACK_RUNS: usize = 50;

/// A rollout copy that a finished run left beside a data dir.
pub(crate) struct KeptCopy {
    /// The copy: the tenant's data as it was before the run.
    pub copy: std::path::PathBuf,
    /// Its tenant.
    pub tenant: String,
    /// The run that made it.
    pub run: String,
}

/// Rollout copies that finished runs left beside data dirs (an archive of the copy that
/// failed, say): never removed here — one may be the only copy of a tenant's data from
/// before its rollout —, only listed, with what to do (by the sweep, and by `status`). A
/// finished run whose journal cannot be read is listed as such (its copies cannot be told),
/// never passed over, and stops neither the sweep nor `status`.
pub(crate) fn kept_copies(ctx: &Ctx) -> Result<Vec<std::result::Result<KeptCopy, String>>> {
    let mut out = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for run in ctx.store.runs(COPIES_LOOKBACK_RUNS)? {
        if run.job != "rollout" || run.finished_at.is_none() {
            continue;
        }
        let steps = ctx.store.steps(&run.id)?;
        let rows = match RolloutRow::parse_all(&run.id, &steps) {
            Ok(rows) => rows,
            Err(e) => {
                out.push(Err(format!(
                    "{e}; a rollout copy that run kept beside a data dir (a tenant's data from before it) cannot \
                     be listed: look in {} beside the data dirs",
                    crate::layout::rollout_copies_of(&run.id)
                )));
                continue;
            }
        };
        for r in rows {
            let RolloutDetail::Tenant(j) = r.detail else { continue };
            if let Some(copy) = j.copy.filter(|c| c.is_dir() && seen.insert(c.clone())) {
                out.push(Ok(KeptCopy { copy, tenant: j.tenant.to_string(), run: run.id.clone() }));
            }
        }
    }
    Ok(out)
}

/// Remove the one-shot hook containers (`[app.hooks]`, label `slipway.hook`) a killed rollout
/// of this run record left — one killed while its `on_failure` hook ran, after its tenant was
/// back, say (a hook killed at `pre_switch` or `post_switch` goes with its tenant's undo). Their
/// name carries their run's id (`<name>.pre-rollout-<run>.hook`); one of a run this record does
/// not know is another slipway's and is left alone.
pub async fn sweep_hooks(ctx: &Ctx, engine: &Engine, dry_run: bool) -> Result<Vec<String>> {
    let (containers, _) = engine.labelled("slipway.hook").await?;
    let mut out = Vec::new();
    for (c, _) in containers {
        let run = crate::naming::run_of_hook(&c);
        let Some(run) = run.filter(|r| *r != ctx.run_id().as_str()) else { continue };
        if ctx.store.run(run)?.is_none_or(|r| r.job != "rollout") {
            continue;
        }
        let r = if dry_run { Ok(()) } else { engine.remove(&c).await };
        out.push(match r {
            Ok(()) => format!(
                "{} container {c} (a hook's, left by rollout {run} that died)",
                if dry_run { "would remove" } else { "removed" }
            ),
            Err(e) => format!("could not remove container {c} (a hook's): {e}"),
        });
    }
    Ok(out)
}

/// Remove what this host's restore drills left: every container and network labelled
/// [`crate::naming::DRILL_LABEL`] with the id of a drill run in this run record (not this run),
/// and every scratch copy under the drill root, and say so. Under the host lock no other drill
/// of this host runs, so all of it is left over (a drill calls this first too). A drill label
/// naming a run this record does not know is another slipway's (another state dir on the same
/// engine) and is left alone.
pub async fn sweep_drills(ctx: &Ctx, engine: &Engine, dry_run: bool) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let (containers, networks) = engine.labelled(crate::naming::DRILL_LABEL).await?;
    let mut ours = std::collections::HashMap::new();
    let mut is_ours = |run: &str| -> Result<bool> {
        if run == ctx.run_id().as_str() {
            return Ok(false);
        }
        if let Some(known) = ours.get(run) {
            return Ok(*known);
        }
        let known = ctx.store.run(run)?.is_some_and(|r| r.job == "drill");
        ours.insert(run.to_string(), known);
        Ok(known)
    };
    let mut containers_ours = Vec::new();
    for (c, run) in containers {
        if is_ours(&run)? {
            containers_ours.push(c);
        }
    }
    let mut networks_ours = Vec::new();
    for (n, run) in networks {
        if is_ours(&run)? {
            networks_ours.push(n);
        }
    }
    let (containers, networks) = (containers_ours, networks_ours);
    let verb = if dry_run { "would remove" } else { "removed" };
    for c in containers {
        let r = if dry_run { Ok(()) } else { engine.remove_with_volumes(&c).await };
        out.push(match r {
            Ok(()) => format!("{verb} container {c} (a restore drill's, left by a drill that died)"),
            Err(e) => format!("could not remove container {c} (a restore drill's): {e}"),
        });
    }
    for n in networks {
        let r = if dry_run { Ok(()) } else { engine.remove_network(&n).await };
        out.push(match r {
            Ok(()) => format!("{verb} network {n} (a restore drill's, left by a drill that died)"),
            Err(e) => format!("could not remove network {n} (a restore drill's): {e}"),
        });
    }
    let root = crate::layout::drill_root(&ctx.cfg.backup_root);
    if let Ok(rd) = std::fs::read_dir(&root) {
        for e in rd.flatten() {
            let path = e.path();
            let r = if dry_run { Ok(()) } else { crate::adapters::confined::remove_tree(&path).map(|_| ()) };
            out.push(match r {
                Ok(()) => {
                    format!("{verb} {} (a restore drill's scratch copy, left by a drill that died)", path.display())
                }
                Err(e) => format!("could not remove {} (a restore drill's scratch copy): {e}", path.display()),
            });
        }
        if !dry_run {
            let _ = std::fs::remove_dir(&root);
        }
    }
    Ok(out)
}

/// A killed drill's tenants: nothing of theirs was touched; what the drill made is removed by
/// [`sweep_drills`].
fn recover_drill(run: &Run, steps: &[StepRow], dry_run: bool) -> Result<Vec<TenantAction>> {
    let mut out: Vec<TenantAction> = Vec::new();
    for s in steps {
        let step = crate::journal::drill_step(&run.id, s)?;
        let Some(t) = &s.tenant else { continue };
        let found = format!("drill step {step} {}", s.outcome.as_deref().unwrap_or("unfinished"));
        let action = format!(
            "{} its throw-away container, network and scratch copy (the live tenant was never touched)",
            if dry_run { "would remove" } else { "removed" }
        );
        match out.iter_mut().find(|a| a.tenant == *t) {
            Some(a) => a.found = found,
            None => out.push(TenantAction {
                tenant: t.clone(),
                found,
                plan: Planned::RemoveDrillLeftovers,
                action,
                ok: true,
            }),
        }
    }
    Ok(out)
}

async fn recover_rollout(
    ctx: &Ctx,
    engine: &Engine,
    prober: &Prober,
    run: &Run,
    steps: &[StepRow],
    dry_run: bool,
) -> Result<Vec<TenantAction>> {
    // Per tenant: its newest journal and which steps it reached. Every row is read typed first:
    // one recover cannot read is the error, before anything is touched.
    type Reached<'a> = Vec<(Journaled, &'a StepRow)>;
    let rows = RolloutRow::parse_all(&run.id, steps)?;
    let mut by_tenant: BTreeMap<String, (TenantJournal, Reached)> = BTreeMap::new();
    // Stack tenants (`[app.services]`) journal a StackJournal instead.
    let mut by_stack: BTreeMap<String, (StackJournal, Reached)> = BTreeMap::new();
    // Tenants whose rows are only failed steps' reasons: no journal to act on.
    let mut unreadable: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in rows {
        let reached = (r.step, r.row);
        match r.detail {
            RolloutDetail::Stack(sj) => {
                let e = by_stack.entry(r.tenant.to_string()).or_insert_with(|| (*sj.clone(), Vec::new()));
                e.0 = *sj;
                e.1.push(reached);
            }
            RolloutDetail::Tenant(j) => {
                let e = by_tenant.entry(r.tenant.to_string()).or_insert_with(|| (*j.clone(), Vec::new()));
                e.0 = *j;
                e.1.push(reached);
            }
            // A failed step's end: reached, with the journal the tenant's earlier rows hold.
            RolloutDetail::Failed(f) => {
                if let Some(e) = by_stack.get_mut(r.tenant) {
                    e.1.push(reached);
                } else if let Some(e) = by_tenant.get_mut(r.tenant) {
                    e.1.push(reached);
                } else {
                    unreadable.entry(r.tenant.to_string()).or_default().push(format!("{} failed: {}", r.step, f.error));
                }
            }
        }
    }
    // A failed row that came before its tenant's first journal row still counts as reached.
    unreadable.retain(|t, _| !by_tenant.contains_key(t) && !by_stack.contains_key(t));
    let mut out = Vec::new();
    for (tenant, (j, st)) in by_tenant {
        let ended_ok = |word: Journaled| st.iter().any(|(w, s)| *w == word && s.outcome.as_deref() == Some("ok"));
        let undoing = st.iter().any(|(w, _)| matches!(w, Journaled::Undo(_)));
        // Past its gate: healthy, and its post_switch hook (when it had one) ended ok too.
        let post_switch = st.iter().any(|(w, _)| *w == Journaled::Roll(Step::PostSwitch));
        let healthy_new = run.job == "rollout"
            && ended_ok(Journaled::Roll(Step::Health))
            && (!post_switch || ended_ok(Journaled::Roll(Step::PostSwitch)))
            && !undoing;
        let last = st.last().map(|(w, s)| format!("{w} ({})", s.outcome.as_deref().unwrap_or("unfinished")));
        let found = format!("last step {}", last.unwrap_or_default());
        if healthy_new {
            let mut action = "kept the new version (it had passed its health gate)".to_string();
            let mut ok = true;
            // Its rollout copy (the pre-rollout data) still there: the run's archive of it was
            // never finished. Make it now, then the copy goes; if that fails the copy stays.
            if let Some(copy) = j.copy.clone().filter(|c| c.is_dir()) {
                if dry_run {
                    action.push_str(&format!(
                        "; would archive the rollout copy {} and remove it (only remove it, if the run's archive of it \
                         is already recorded and verifies)",
                        copy.display()
                    ));
                } else {
                    let run_id: crate::types::RunId = run.id.parse().map_err(crate::error::Error::Other)?;
                    let snap = crate::layout::SnapshotId::rollout(&run_id);
                    let dir = snap.dir(&ctx.cfg.backup_root);
                    let mut manifest = crate::manifest::Manifest::read(&dir)?.unwrap_or_else(|| Manifest::new(&snap));
                    let mut j = j.clone();
                    if let Some(entry) = manifest.tenant(&tenant).cloned() {
                        // The run's archive was recorded before the crash: the copy was being
                        // removed, and may be half gone. It is never archived again (that could
                        // put a partial tree over the good archive); the rest of it goes once
                        // the recorded archive verifies, else it is kept and a person is needed.
                        let (done, keep_ok) = finish_removing_copy(&dir, entry, copy.clone()).await?;
                        action.push_str(&format!("; {done}"));
                        ok = keep_ok;
                    } else {
                        match crate::undo::archive_copy(ctx, &run_id, &mut manifest, &mut j).await {
                            Ok(a) => action.push_str(&format!("; archived its rollout copy to {}", a.display())),
                            Err(e) => {
                                ok = false;
                                action.push_str(&format!(
                                    "; archiving its rollout copy failed ({e}): the data from before the rollout stays in {}",
                                    copy.display()
                                ));
                            }
                        }
                    }
                }
            }
            if !j.keep_old && engine.exists(&j.pre_name).await? {
                action.push_str("; removed the prior container");
                if !dry_run {
                    engine.remove(&j.pre_name).await?;
                }
            }
            out.push(TenantAction { tenant, found, plan: Planned::KeepNew, action, ok });
            continue;
        }
        // Was the tenant touched at all? A journal with only a finished, successful undo is settled.
        let health_prior = Journaled::Undo(UndoStep::HealthPrior);
        let settled = ended_ok(health_prior) && st.last().is_some_and(|(w, _)| *w == health_prior);
        if settled {
            out.push(TenantAction {
                tenant,
                found,
                plan: Planned::AlreadyRestored,
                action: "already restored".into(),
                ok: true,
            });
            continue;
        }
        let new_version_ran = st.iter().any(|(w, _)| matches!(w, Journaled::Roll(s) if s.new_version_may_have_run()));
        let restore = new_version_ran || run.job == "rollback";
        let action = if restore {
            "restore data from the run's snapshot and bring back the prior container"
        } else {
            "bring back the prior container (its data was not touched)"
        };
        let plan = if restore { Planned::UndoWithData } else { Planned::Undo };
        if dry_run {
            out.push(TenantAction { tenant, found, plan, action: format!("would {action}"), ok: true });
            continue;
        }
        let r = undo_tenant(ctx, engine, prober, &j, restore).await?;
        out.push(TenantAction { tenant, found, plan, action: r.detail, ok: r.ok });
    }
    for (tenant, (j, st)) in by_stack {
        let ended_ok = |word: Journaled| st.iter().any(|(w, s)| *w == word && s.outcome.as_deref() == Some("ok"));
        let undoing = st.iter().any(|(w, _)| matches!(w, Journaled::Undo(_)));
        let last = st.last().map(|(w, s)| format!("{w} ({})", s.outcome.as_deref().unwrap_or("unfinished")));
        let found = format!("stack; last step {}", last.unwrap_or_default());
        if run.job == "rollout" && ended_ok(Journaled::Roll(Step::Health)) && !undoing {
            let run_id: crate::types::RunId = run.id.parse().map_err(crate::error::Error::Other)?;
            let (action, ok) = crate::rollout::stack::finish_stack(ctx, engine, &run_id, &j, dry_run).await?;
            out.push(TenantAction { tenant, found, plan: Planned::FinishStack, action, ok });
            continue;
        }
        let health_prior = Journaled::Undo(UndoStep::HealthPrior);
        if ended_ok(health_prior) && st.last().is_some_and(|(w, _)| *w == health_prior) {
            out.push(TenantAction {
                tenant,
                found,
                plan: Planned::AlreadyRestored,
                action: "already restored".into(),
                ok: true,
            });
            continue;
        }
        // A rollback's stack journal is of a stack whose new version ran: its data goes back too.
        let restore = run.job == "rollback"
            || st.iter().any(|(w, _)| matches!(w, Journaled::Roll(s) if s.new_version_may_have_run()));
        let plan = if restore { Planned::UndoStackWithData } else { Planned::UndoStack };
        if dry_run {
            let action = if restore {
                "would swap every data mount back and bring back every prior container of the stack"
            } else {
                "would bring back every prior container of the stack (its data was not touched)"
            };
            out.push(TenantAction { tenant, found, plan, action: action.into(), ok: true });
            continue;
        }
        let r = crate::stack_undo::undo_stack(ctx, engine, prober, &j, restore).await;
        out.push(TenantAction { tenant, found, plan, action: r.detail, ok: r.ok });
    }
    for (tenant, failed) in unreadable {
        out.push(TenantAction {
            tenant,
            found: format!("only failed steps, no journal of what the run changed ({})", failed.join("; ")),
            plan: Planned::PersonNeeded,
            action: "left as it is: a person is needed to check the tenant's container and data".into(),
            ok: false,
        });
    }
    with_waves(ctx, run, out)
}

/// A rollout's frozen waves (`[app.rollout]`) over what recover did: each tenant it finished
/// or undid named with its wave, and each tenant of the sets that the run never started
/// listed as untouched — the sets are exactly those of the run ledger, never made again.
fn with_waves(ctx: &Ctx, run: &Run, mut out: Vec<TenantAction>) -> Result<Vec<TenantAction>> {
    let waves = ctx.store.waves(&run.id)?;
    if waves.is_empty() {
        return Ok(out);
    }
    for a in &mut out {
        if let Some(w) = waves.iter().find(|w| w.tenant == a.tenant) {
            a.found = format!("{} (wave {}); {}", w.name, w.wave, a.found);
        }
    }
    let seen: std::collections::BTreeSet<String> = out.iter().map(|a| a.tenant.clone()).collect();
    for w in waves.iter().filter(|w| !seen.contains(&w.tenant)) {
        out.push(TenantAction {
            tenant: w.tenant.clone(),
            found: format!("{} (wave {}); no step journaled", w.name, w.wave),
            plan: Planned::Untouched,
            action: "not started by the run: untouched, on its prior version".into(),
            ok: true,
        });
    }
    Ok(out)
}

/// A rollout copy whose archive the run's manifest already records (the crash came while the
/// copy was being removed): re-hash the archive and its file list against the manifest; when
/// they match, remove what is left of the copy, else keep it and say a person is needed. The
/// copy is never archived again. Returns what was done and whether that is safe.
async fn finish_removing_copy(
    dir: &std::path::Path,
    entry: crate::manifest::ArchiveEntry,
    copy: std::path::PathBuf,
) -> Result<(String, bool)> {
    let (arch, list) = (dir.join(&entry.path), dir.join(&entry.file_list));
    let (a, l) = (arch.clone(), list.clone());
    let verified = crate::blocking::run("checking the run's archive", move || {
        crate::adapters::archive::sha256_file(&a).is_ok_and(|(h, n)| h == entry.sha256 && n == entry.size)
            && crate::adapters::archive::sha256_file(&l).is_ok_and(|(h, _)| h == entry.file_list_sha256)
    })
    .await?;
    if !verified {
        return Ok((
            format!(
                "the run's archive {} does not match its manifest, and the rollout copy {} may be partly removed \
                 (the crash came while it was being removed after the archive was recorded): both are kept, \
                 neither is trusted; a person is needed",
                arch.display(),
                copy.display()
            ),
            false,
        ));
    }
    let c = copy.clone();
    Ok(match crate::blocking::run("drop copy", move || crate::undo::drop_copy(&c)).await? {
        Ok(()) => (
            format!(
                "the run's archive {} was already written and verifies; removed the rest of its rollout copy {}",
                arch.display(),
                copy.display()
            ),
            true,
        ),
        Err(e) => (
            format!(
                "the run's archive {} verifies; removing the rest of its rollout copy {} failed: {e}",
                arch.display(),
                copy.display()
            ),
            false,
        ),
    })
}

/// The holds a run's journal leaves open, newest per container: a pause or stop slipway made
/// and never gave back. A container the job found stopped (or did not hold: `quiesce = "none"`)
/// is journaled with hold `none` and is no open hold: recover leaves it as it was found. A hold
/// is given back by the steps that end it ([`HeldStep::releases`]), and by the `released` row
/// recover journals into the run once it gave the hold back, so that the run is not taken up
/// again (a finished run that needs a person stays unresolved until a person resolves it).
fn open_holds(rows: &[HeldRow]) -> Vec<(&HeldContainer, &HeldRow)> {
    let mut out = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for s in rows.iter().rev() {
        // A row of a mount, a plan or a swap holds no container.
        let HeldDetail::Hold(h) = &s.detail else { continue };
        if !seen.insert(h.container.clone()) {
            continue;
        }
        if matches!(h.hold.as_str(), "pause" | "stop") && !s.step.releases(s.ended_ok) {
            out.push((h, s));
        }
    }
    out
}

/// Bring back exactly what a snapshot or restore held: a container it paused is unpaused, one it
/// stopped is started; one that was not running when the job found it (journaled hold `none`)
/// is left stopped, and a paused hold found stopped is left as it is (not started).
async fn recover_held(
    ctx: &Ctx,
    engine: &Engine,
    run: &Run,
    steps: &[StepRow],
    dry_run: bool,
) -> Result<Vec<TenantAction>> {
    let mut out = Vec::new();
    let rows = HeldRow::parse_all(&run.job, &run.id, steps)?;
    // A stack restore cut short: every mount it swapped goes back before its containers start.
    if run.job == "restore" {
        for (kept, dir) in crate::stack_tenant::restore_left_to_undo(&rows) {
            let tenant = steps.iter().find_map(|s| s.tenant.clone()).unwrap_or_default();
            let found = format!(
                "{} swapped by a stack restore cut short; its data from before is in {}",
                dir.display(),
                kept.display()
            );
            let (action, ok) = if dry_run {
                ("would be put back".to_string(), true)
            } else {
                match crate::adapters::confined::finish_swap(&dir)
                    .and_then(|_| crate::adapters::confined::exchange(&kept, &dir))
                {
                    Ok(()) => {
                        let d = crate::stack_tenant::MountSwapDetail { dir: dir.clone(), replaced: None, back: true };
                        ctx.journal_done(&run.id, Some(&tenant), RestoreStep::Restore, &d)?;
                        ("put back (the restored data is left in the kept dir)".to_string(), true)
                    }
                    Err(e) => (format!("could not be put back ({e}): a person is needed"), false),
                }
            };
            out.push(TenantAction { tenant, found, plan: Planned::PutBackMount, action, ok });
        }
    }
    for (h, s) in open_holds(&rows) {
        if !engine.exists(&h.container).await? {
            continue;
        }
        let st = engine.state(&h.container).await?;
        let found = format!(
            "{} ({}), held by {}, step {} {}",
            h.container,
            st.status,
            h.hold,
            s.step,
            s.outcome.as_deref().unwrap_or("unfinished")
        );
        let action = match h.hold.as_str() {
            "pause" if st.paused => {
                if !dry_run {
                    engine.unpause(&h.container).await?;
                }
                "unpaused"
            }
            "stop" if !st.running => {
                if !dry_run {
                    engine.start(&h.container).await?;
                }
                "started"
            }
            "pause" if !st.running => "left as found (not paused, not running: not started)",
            _ => "already running",
        };
        let plan = match action {
            "unpaused" => Planned::Unpause,
            "started" => Planned::Start,
            _ => Planned::LeaveAsFound,
        };
        let acted = plan != Planned::LeaveAsFound;
        let action = if dry_run && acted { format!("would be {action}") } else { action.to_string() };
        if !dry_run {
            let released = HeldContainer { container: h.container.clone(), hold: "none".into() };
            match s.step {
                HeldStep::Snapshot(_) => {
                    ctx.journal_done(&run.id, s.tenant.as_deref(), SnapshotStep::Released, &released)
                }
                HeldStep::Restore(_) => {
                    ctx.journal_done(&run.id, s.tenant.as_deref(), RestoreStep::Released, &released)
                }
            }?;
        }
        let tenant = s.tenant.clone().unwrap_or(h.container.clone());
        out.push(TenantAction { tenant, found, plan, action, ok: true });
    }
    Ok(out)
}

impl fmt::Display for RecoverReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in &self.swept {
            writeln!(f, "{line}")?;
        }
        if self.runs.is_empty() {
            return writeln!(f, "no unfinished runs; nothing to recover");
        }
        if self.dry_run {
            writeln!(f, "dry run, nothing was touched; `slipway recover` would carry out this plan:")?;
        }
        for r in &self.runs {
            writeln!(f, "run {} ({}) never finished:", r.run_id, r.job)?;
            for t in &r.tenants {
                writeln!(
                    f,
                    "  {}: {}; {}{}",
                    t.tenant,
                    t.found,
                    t.action,
                    if t.ok { "" } else { "  <- A PERSON IS NEEDED" }
                )?;
            }
        }
        Ok(())
    }
}
