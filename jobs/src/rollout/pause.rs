//! A rollout paused over its failure budget (`[app.rollout] on_budget`): recorded in state.db
//! (so it outlives the process and a reboot), gone on with by `rollout resume RUN` — the same
//! release, the same frozen waves, the tenants the run has not reached — or ended by `rollout
//! abort RUN` (a rollback of everything the run changed). No rollout or reconcile of the app
//! starts while it is open; the first one after its `pause_timeout_s` aborts it, so no run is
//! left half done for ever. `rollback-wave` and `rollback-all` roll back part or all of the
//! run right away.

use std::collections::{BTreeMap, BTreeSet};

use slipway_state::Pause;

use super::{rollout_app, AppReport, Resume, RolloutOptions, RolloutReport, TenantOutcome, Wave};
use crate::adapters::desired;
use crate::adapters::docker::Engine;
use crate::config::{App, OnBudget};
use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::rollback::{self, RollbackOptions};
use crate::types::{RunId, TenantId};

/// Why a new rollout of the app does not start: its paused run, and what to do.
pub(crate) fn blocked(p: &Pause) -> String {
    format!(
        "app {}: run {} is paused since {} ({}); nothing was touched. `slipway rollout resume {}` goes on with its \
         waves, `slipway rollout abort {}` rolls back what it changed",
        p.app, p.run_id, p.paused_at, p.reason, p.run_id, p.run_id
    )
}

/// The app's open pause, after aborting those past their `pause_timeout_s`.
pub(crate) async fn open_after_timeouts(ctx: &mut Ctx, app: &App) -> Result<Option<Pause>> {
    let open: Vec<Pause> = ctx.store.open_pauses()?.into_iter().filter(|p| p.app == app.name).collect();
    let now = jiff::Timestamp::now();
    let mut left = None;
    for p in open {
        // A window's pause ends when the window opens (reconcile resumes it), not by a timeout.
        if p.kind == "window" {
            left.get_or_insert(p);
            continue;
        }
        let since = p.paused_at.parse::<jiff::Timestamp>().map(|t| now.duration_since(t).as_secs()).unwrap_or(0);
        if since < app.rollout.pause_timeout_s as i64 {
            left.get_or_insert(p);
            continue;
        }
        tracing::warn!(
            "app {}: run {} paused {since}s ago, past pause_timeout_s = {}: aborting it (rolling back what it changed)",
            app.name,
            p.run_id,
            app.rollout.pause_timeout_s
        );
        let run: RunId = p.run_id.parse().map_err(|e| Error::Other(format!("paused run {}: {e}", p.run_id)))?;
        ctx.next_run_id();
        let r =
            rollback::rollback(ctx, &RollbackOptions { run, tenants: Vec::new(), dry_run: false, abort: true }).await?;
        if r.outcome != crate::error::ExitKind::Success {
            return Err(Error::Other(format!(
                "app {}: run {} was past its pause_timeout_s, and aborting it did not finish ({}); see `slipway runs show`",
                app.name,
                p.run_id,
                r.outcome.word()
            )));
        }
        ctx.store.end_pause(&p.run_id, "timed out")?;
    }
    Ok(left)
}

/// What `on_budget = "rollback-wave" | "rollback-all"` asks once the run is over its budget:
/// the tenants of that wave that rolled (the run stays paused), or every tenant it rolled.
pub(crate) async fn budget_rollback(ctx: &mut Ctx, app: &App, report: &mut AppReport) -> Result<()> {
    let (Some(w), Some(run)) = (report.over_in, report.run_id.clone()) else { return Ok(()) };
    let tenants: Vec<TenantId> = match app.rollout.on_budget {
        OnBudget::RollbackAll => Vec::new(),
        OnBudget::RollbackWave => {
            let wave: BTreeSet<&TenantId> =
                report.waves.iter().filter(|x| x.index == w).flat_map(|x| &x.tenants).collect();
            let rolled: Vec<TenantId> = report
                .tenants
                .iter()
                .filter(|t| t.outcome == TenantOutcome::Rolled && wave.contains(&t.tenant))
                .map(|t| t.tenant.clone())
                .collect();
            if rolled.is_empty() {
                return Ok(());
            }
            rolled
        }
        OnBudget::Halt | OnBudget::Pause => return Ok(()),
    };
    ctx.next_run_id();
    let r = rollback::rollback(ctx, &RollbackOptions { run, tenants, dry_run: false, abort: false }).await?;
    report.outcome = crate::rollout::worst([report.outcome, r.outcome].into_iter());
    report.summary = format!(
        "{}; on_budget = \"{}\": {}",
        report.summary,
        app.rollout.on_budget.as_str(),
        r.to_string().lines().skip(1).map(str::trim).collect::<Vec<_>>().join("; ")
    );
    report.budget_rollback = Some(r);
    Ok(())
}

/// `rollout resume RUN`: the paused run's release (fleet.toml at its commit), its frozen
/// waves, minus the tenants it already rolled or failed; under its own run id.
pub(crate) async fn resume(ctx: &mut Ctx, opts: &RolloutOptions, id: &RunId) -> Result<RolloutReport> {
    let run = ctx
        .store
        .run(id.as_str())?
        .ok_or_else(|| Error::Usage(format!("no run {id} in the run record; see `slipway runs`")))?;
    let open = ctx.store.open_pauses()?;
    let Some(pause) = open.iter().find(|p| p.run_id == run.id) else {
        return Err(Error::Usage(format!(
            "run {id} is not paused (see `slipway runs show {id}`); only a rollout paused over its failure budget is \
             resumed; nothing was touched"
        )));
    };
    let commit = run.git_commit.clone().ok_or_else(|| Error::Other(format!("run {id} names no commit")))?;
    let state = desired::read(&ctx.cfg.desired, &ctx.cfg.state_dir, Some(&commit))?;
    let app = state.fleet.app(&pause.app)?;
    if opts.dry_run {
        return Err(Error::Usage("rollout resume takes no --dry-run; `slipway runs show RUN` shows its waves".into()));
    }
    crate::trust::admit(ctx, &state, &[app.name.as_str()], true)?;
    let engine = Engine::connect(&ctx.cfg.docker).await?;
    // Which tenants it is still to roll: every tenant of its frozen waves that is not on the
    // release and did not fail in it (a failed tenant stays on its prior version).
    let results = ctx.store.tenants(&run.id)?;
    let failed: BTreeSet<String> = results
        .iter()
        .filter(|t| t.outcome == "restored" || t.outcome == "person_needed")
        .map(|t| t.tenant.clone())
        .collect();
    let rows = ctx.store.waves(&run.id)?;
    let (tenants, members, mut plan) = match &app.stack {
        None => {
            let (tenants, unmapped) = engine.tenants_and_unmapped(app).await?;
            let mut plan = super::plan(app, &state.commit, &tenants, unmapped, &[])?;
            super::decide_copies(app, &mut plan).await?;
            (tenants, Vec::new(), plan)
        }
        Some(st) => {
            let (members, unmapped) = engine.stack_members(app, st).await?;
            let plan = super::stack_plan::plan_stack(app, st, &state.commit, &members, unmapped, &[])?;
            super::stack_plan::check_copies(app, &plan, &members).await?;
            (Vec::new(), members, plan)
        }
    };
    let digest = match &app.stack {
        None => app.image.digest().to_string(),
        Some(s) => s.pin_key(),
    };
    if run.digest.as_deref() != Some(digest.as_str()) {
        return Err(Error::Usage(format!(
            "run {id} rolled {} but fleet.toml at its commit pins {digest}; nothing was touched",
            run.digest.as_deref().unwrap_or("?")
        )));
    }
    // Its waves as frozen, each with the tenants it still has to roll.
    let mut waves: BTreeMap<i64, Wave> = BTreeMap::new();
    for r in &rows {
        let Ok(t) = r.tenant.parse::<TenantId>() else { continue };
        if failed.contains(&r.tenant) || !plan.items.iter().any(|i| i.tenant == t) {
            continue;
        }
        waves
            .entry(r.wave)
            .or_insert_with(|| Wave {
                index: r.wave as usize,
                name: r.name.clone(),
                select: "as frozen".into(),
                tenants: Vec::new(),
                max_parallel: r.max_parallel.max(1) as usize,
                bake_s: r.bake_s.max(0) as u64,
                // The limits frozen with the sets; a row of an earlier version has none, and
                // takes fleet.toml's.
                min_healthy: match r.min_healthy {
                    Some(m) => Some(m).filter(|m| *m > 0.0),
                    None => Wave::limits_of(&app.rollout, &r.name).0,
                },
                progress_deadline_s: match r.progress_deadline_s {
                    Some(d) => Some(d.max(0) as u64).filter(|d| *d > 0),
                    None => Wave::limits_of(&app.rollout, &r.name).1,
                },
            })
            .tenants
            .push(t);
    }
    let waves: Vec<Wave> = waves.into_values().collect();
    let order: Vec<&TenantId> = waves.iter().flat_map(|w| &w.tenants).collect();
    let mut items = std::mem::take(&mut plan.items);
    plan.items = order
        .iter()
        .filter_map(|t| items.iter().position(|i| &i.tenant == *t).map(|k| items.swap_remove(k)))
        .map(|mut i| {
            i.canary = false;
            i
        })
        .collect();
    // Tenants the plan has but the run never froze (new since) wait for a later rollout. Those
    // outside their maintenance window wait for it; with none inside, the run stays paused.
    super::hold_outside_windows(app, &mut plan, (&tenants, &members));
    if plan.items.is_empty() {
        let summary = format!(
            "app {}: run {id} stays paused: {}",
            app.name,
            match plan.outside_window.first() {
                Some(o) =>
                    format!("every tenant it has left is outside its maintenance window ({}: {})", o.tenant, o.why),
                None => "it has no tenant left to roll; `slipway rollout abort` ends it".to_string(),
            }
        );
        let report = AppReport {
            plan,
            run_id: Some(id.clone()),
            waves: Vec::new(),
            tenants: Vec::new(),
            outcome: crate::error::ExitKind::Success,
            summary,
            paused: true,
            budget_rollback: None,
            over_in: None,
        };
        return Ok(RolloutReport { dry_run: false, commit: state.commit, apps: vec![report], trust: None });
    }
    let waves: Vec<Wave> = waves
        .into_iter()
        .map(|mut w| {
            w.tenants.retain(|t| plan.items.iter().any(|i| &i.tenant == t));
            w
        })
        .filter(|w| !w.tenants.is_empty())
        .collect();
    let report = rollout_app(
        ctx,
        &engine,
        app,
        (plan, waves),
        &tenants,
        &members,
        opts.keep_old,
        Some(Resume { run: id.clone(), failed: failed.len(), frozen: rows.len() }),
    )
    .await?;
    let mut report = report;
    budget_rollback(ctx, app, &mut report).await?;
    Ok(RolloutReport { dry_run: false, commit: state.commit, apps: vec![report], trust: None })
}
