//! `rollback`: the runbook's manual rollback as one command, for a halted or finished rollout
//! run: for each tenant the run rolled (or only `--tenant`), remove the new container, restore
//! the run's snapshot, bring back the prior container (renamed back, or recreated from the
//! prior image when it was removed), start it and health-check it. Journaled like a rollout.
//!
//! Invariant: a tenant is touched only while its container is the very one the run created
//! (the id journaled at its create step). A tenant restored at the halt, rolled again by a
//! later run, or recreated by hand since is skipped with the reason: undoing it would throw
//! away a newer decision, or restore an old snapshot over data written since.
//!
//! A stack tenant's run (`[app.services]`) is rolled back by `rollback/stack.rs` under the same
//! invariant, every changed service and every data mount at once.

use std::fmt;

use serde::Serialize;

use crate::adapters::docker::Engine;
use crate::adapters::health::Prober;
use crate::context::{Ctx, RunGuard};
use crate::error::{Error, ExitKind, Result};
use crate::journal::{RolloutDetail, RolloutRow};
use crate::step::{Journaled, TenantJournal};
use crate::types::{RunId, TenantId};
use crate::undo::{check_data, prior_image, undo_tenant, UndoResult};

mod stack;

/// Options of `rollback`.
#[derive(Debug, Clone)]
pub struct RollbackOptions {
    /// The rollout run to undo.
    pub run: RunId,
    /// Only these tenants.
    pub tenants: Vec<TenantId>,
    /// Show what would be undone, change nothing.
    pub dry_run: bool,
    /// `rollout abort RUN`: the run must be paused over its failure budget; its pause ends.
    pub abort: bool,
}

/// Per tenant.
#[derive(Debug, Clone, Serialize)]
pub struct RollbackTenant {
    /// Tenant.
    pub tenant: String,
    /// The undo's result (none in a dry run, or when skipped).
    pub result: Option<UndoResult>,
    /// Why it was not touched: its current container is not the one the run created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// A stack tenant: what goes back (each changed service, each mount), for `--dry-run`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub plan: Vec<String>,
}

/// The result of `slipway rollback`.
#[derive(Debug, Clone, Serialize)]
pub struct RollbackReport {
    /// The rollout run undone.
    pub rollout_run: String,
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// Per tenant.
    pub tenants: Vec<RollbackTenant>,
    /// How it ended.
    pub outcome: ExitKind,
}

/// Run `rollback`.
pub async fn rollback(ctx: &Ctx, opts: &RollbackOptions) -> Result<RollbackReport> {
    let run = ctx
        .store
        .run(opts.run.as_str())?
        .ok_or_else(|| Error::Usage(format!("no run {} in the run record; see `slipway runs`", opts.run)))?;
    if run.job != "rollout" {
        return Err(Error::Usage(format!("run {} is a {} run, not a rollout", run.id, run.job)));
    }
    let paused = ctx.store.open_pauses()?.into_iter().any(|p| p.run_id == run.id);
    if opts.abort && !paused {
        return Err(Error::Usage(format!(
            "run {} is not paused, so there is nothing to abort; `slipway rollback --run {}` undoes a halted or \
             finished rollout",
            run.id, run.id
        )));
    }
    // A stack tenant's rollout (`[app.services]`, one app per run: every tenant is a stack).
    // Every row read typed first: one this version cannot read is the error, nothing touched.
    let steps = ctx.store.steps(&run.id)?;
    let rows = RolloutRow::parse_all(&run.id, &steps)?;
    if RolloutRow::any_stack(&rows) {
        return stack::rollback_stacks(ctx, opts, &run, rows, paused).await;
    }
    // The newest journal of each tenant the run touched, in the order they were rolled (a
    // failed step's end holds why, not a journal: its tenant's other rows hold that).
    let mut journals: Vec<(TenantJournal, bool)> = Vec::new();
    for r in rows {
        let RolloutDetail::Tenant(j) = r.detail else { continue };
        let started = matches!(r.step, Journaled::Roll(s) if s.new_version_may_have_run());
        match journals.iter_mut().find(|(x, _)| x.tenant == j.tenant) {
            Some(e) => {
                e.1 |= started;
                e.0 = *j;
            }
            None => journals.push((*j, started)),
        }
    }
    let results = ctx.store.tenants(&run.id)?;
    let rolled: Vec<String> = results.iter().filter(|t| t.outcome == "rolled").map(|t| t.tenant.clone()).collect();
    // Tenants whose undo failed in the run: a rollback is how a person finishes it.
    let unfinished: Vec<String> =
        results.iter().filter(|t| t.outcome == "person_needed").map(|t| t.tenant.clone()).collect();
    for t in &opts.tenants {
        if !journals.iter().any(|(j, _)| j.tenant == t.as_str()) {
            return Err(Error::Usage(format!("run {} did not touch tenant \"{t}\"", run.id)));
        }
    }
    let chosen = chosen(journals, |(j, _)| &j.tenant, opts, |t| rolled.iter().any(|r| r == t));
    let engine = Engine::connect(&ctx.cfg.docker).await?;
    let mut todo = Vec::new();
    let mut tenants = Vec::new();
    for (j, started) in chosen {
        let retry_undo = unfinished.contains(&j.tenant) || run.finished_at.is_none();
        match not_this_runs(&engine, &run.id, &j, retry_undo).await? {
            Some(why) => tenants.push(RollbackTenant::skipped(&j.tenant, why)),
            None => todo.push((j, started)),
        }
    }
    // Everything each undo needs is checked before any tenant is touched: an undo that finds its
    // archive or prior image missing halfway would leave the tenant down, or (with its data
    // gone) start the prior version on the new version's data and call it restored.
    let mut blocked = Vec::new();
    for (j, started) in &todo {
        if let Some(why) = undo_blocker(&engine, j, *started).await? {
            blocked.push(format!("tenant {}: {why}", j.tenant));
        }
    }
    if !blocked.is_empty() {
        return Err(Error::Other(format!(
            "rollback of run {} refused, nothing was touched: {}; to put a tenant back anyway, restore its data \
             from a snapshot taken before that run (`slipway restore --tenant T --day D`)",
            run.id,
            blocked.join("; ")
        )));
    }
    if opts.dry_run {
        tenants.extend(todo.iter().map(|(j, _)| RollbackTenant {
            tenant: j.tenant.clone(),
            result: None,
            skipped: None,
            plan: Vec::new(),
        }));
        return Ok(RollbackReport { rollout_run: run.id, dry_run: true, tenants, outcome: ExitKind::Success });
    }
    let record = ctx.start_run("rollback", run.app.as_deref(), run.git_commit.as_deref(), run.digest.as_deref())?;
    let prober = Prober::new()?;
    let mut outcome = ExitKind::Success;
    for (j, started) in todo {
        let r = undo_tenant(ctx, &engine, &prober, &j, started).await?;
        if !r.ok {
            outcome = ExitKind::PersonNeeded;
        }
        tenants.push(RollbackTenant { tenant: j.tenant.clone(), result: Some(r), skipped: None, plan: Vec::new() });
        if outcome != ExitKind::Success {
            break;
        }
    }
    finish(ctx, record, opts, (run, paused), tenants, outcome)
}

/// The journals `rollback` undoes: of the tenants in `opts.tenants`, else of those the run
/// `rolled`.
fn chosen<J>(
    journals: Vec<J>,
    tenant: impl Fn(&J) -> &str,
    opts: &RollbackOptions,
    rolled: impl Fn(&str) -> bool,
) -> Vec<J> {
    journals
        .into_iter()
        .filter(|j| {
            if opts.tenants.is_empty() {
                rolled(tenant(j))
            } else {
                opts.tenants.iter().any(|t| t.as_str() == tenant(j))
            }
        })
        .collect()
}

impl RollbackTenant {
    /// A tenant rollback leaves alone, and why.
    fn skipped(tenant: &str, why: String) -> RollbackTenant {
        RollbackTenant { tenant: tenant.to_string(), result: None, skipped: Some(why), plan: Vec::new() }
    }
}

/// End a rollback that ran: the run record finished with `outcome`, and the rollout run marked
/// resolved by it when every tenant came back (its pause ended, when it was `paused`).
fn finish(
    ctx: &Ctx,
    record: RunGuard,
    opts: &RollbackOptions,
    (run, paused): (slipway_state::Run, bool),
    tenants: Vec<RollbackTenant>,
    outcome: ExitKind,
) -> Result<RollbackReport> {
    let undone = tenants.iter().filter(|t| t.result.is_some()).count();
    let skipped = tenants.len() - undone;
    let summary = format!("rolled back {undone} tenant(s) of run {}, skipped {skipped}", run.id);
    record.finish(ctx, outcome, &summary)?;
    if outcome == ExitKind::Success {
        ctx.store.resolve_run(&run.id, &format!("rollback {}", ctx.run_id()))?;
        // Undone whole, a paused run has nothing left to resume.
        if paused && opts.tenants.is_empty() {
            ctx.store.end_pause(&run.id, if opts.abort { "aborted" } else { "rolled back" })?;
        }
    }
    Ok(RollbackReport { rollout_run: run.id, dry_run: false, tenants, outcome })
}

/// Why undoing tenant `j` could not finish, checked before anything is touched: its data from
/// before the run (when the new version ran on it: `started`) is not there whole — the rollout
/// copy gone and the archive gone, or not matching the run's manifest —; or its prior container
/// is gone and its image neither on the engine nor pullable by digest; or the container under
/// the set-aside name is not the prior one.
async fn undo_blocker(engine: &Engine, j: &TenantJournal, started: bool) -> Result<Option<String>> {
    if started {
        if let Some(why) = check_data(j).await? {
            return Ok(Some(why));
        }
    }
    let short = |id: &str| id.chars().take(12).collect::<String>();
    let pre = engine.id_of(&j.pre_name).await?;
    let by_id = if j.old_id.is_empty() { None } else { engine.id_of(&j.old_id).await? };
    if let Some(p) = pre.as_deref().filter(|p| !j.old_id.is_empty() && *p != j.old_id && by_id.is_some()) {
        return Ok(Some(format!(
            "container {} is {}, not the prior container {} the run set aside",
            j.pre_name,
            short(p),
            short(&j.old_id)
        )));
    }
    if pre.is_none() && by_id.is_none() {
        if let Err(e) = prior_image(engine, j).await {
            return Ok(Some(format!("its prior container is gone and cannot be recreated: {e}")));
        }
    }
    Ok(None)
}

/// Why rollback must leave this tenant alone, if it must: its container now is not the one
/// run `run` created for it (journaled id, whose image is the run's digest). With
/// `retry_undo` (the run's own undo of this tenant failed, or the run never finished) a tenant
/// part-way back to its prior container is undone again.
async fn not_this_runs(engine: &Engine, run: &str, j: &TenantJournal, retry_undo: bool) -> Result<Option<String>> {
    if retry_undo {
        return Ok(None);
    }
    let Some(new_id) = j.new_id.as_deref() else {
        return Ok(Some(format!("run {run} never created a new container for it; nothing of the run to undo")));
    };
    let short = |id: &str| id.chars().take(12).collect::<String>();
    Ok(match engine.id_of(&j.name).await? {
        Some(id) if id == new_id => None,
        Some(id) if id == j.old_id => Some(format!(
            "container {} is already its prior container {} (restored when the run halted, or rolled back before)",
            j.name,
            short(&id)
        )),
        Some(id) => Some(format!(
            "container {} is {}, not {} that run {run} created: it was rolled again by a later run or recreated \
             since; roll back that run instead, or restore by hand",
            j.name,
            short(&id),
            short(new_id)
        )),
        None => Some(format!("no container {} exists; run {run}'s container is gone; see `slipway status`", j.name)),
    })
}

impl fmt::Display for RollbackReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.dry_run { "would roll back" } else { "rolled back" };
        writeln!(f, "rollback of run {}:", self.rollout_run)?;
        for t in &self.tenants {
            match &t.result {
                None if t.skipped.is_some() => {
                    writeln!(f, "  {}: skipped: {}", t.tenant, t.skipped.as_deref().unwrap_or_default())?
                }
                None => writeln!(f, "  {} {verb}", t.tenant)?,
                Some(r) => writeln!(f, "  {}: {}", t.tenant, r.detail)?,
            }
            if t.result.is_none() && t.skipped.is_none() {
                for line in &t.plan {
                    writeln!(f, "    {line}")?;
                }
            }
        }
        if self.tenants.is_empty() {
            writeln!(f, "  no tenant was rolled by this run; nothing to do")?;
        }
        Ok(())
    }
}
