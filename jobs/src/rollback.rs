//! `rollback`: the runbook's manual rollback as one command, for a halted or finished rollout
//! run: for each tenant the run rolled (or only `--tenant`), remove the new container, restore
//! the run's snapshot, bring back the prior container (renamed back, or recreated from the
//! prior image when it was removed), start it and health-check it. Journaled like a rollout.

use std::fmt;

use serde::Serialize;

use crate::adapters::docker::Engine;
use crate::adapters::health::Prober;
use crate::context::Ctx;
use crate::error::{Error, ExitKind, Result};
use crate::step::{Journaled, TenantJournal};
use crate::types::{RunId, TenantId};
use crate::undo::{undo_tenant, UndoResult};

/// Options of `rollback`.
#[derive(Debug, Clone)]
pub struct RollbackOptions {
    /// The rollout run to undo.
    pub run: RunId,
    /// Only these tenants.
    pub tenants: Vec<TenantId>,
    /// Show what would be undone, change nothing.
    pub dry_run: bool,
}

/// Per tenant.
#[derive(Debug, Clone, Serialize)]
pub struct RollbackTenant {
    /// Tenant.
    pub tenant: String,
    /// The undo's result (none in a dry run).
    pub result: Option<UndoResult>,
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
    // The newest journal of each tenant the run touched, in the order they were rolled.
    let mut journals: Vec<(TenantJournal, bool)> = Vec::new();
    for step in ctx.store.steps(&run.id)? {
        let Some(j) = step.detail.as_deref().and_then(|d| serde_json::from_str::<TenantJournal>(d).ok()) else {
            continue;
        };
        let word = Journaled::of_row(&run.id, &step)?;
        let started = matches!(word, Journaled::Roll(s) if s.new_version_may_have_run());
        match journals.iter_mut().find(|(x, _)| x.tenant == j.tenant) {
            Some(e) => {
                e.1 |= started;
                e.0 = j;
            }
            None => journals.push((j, started)),
        }
    }
    let rolled: Vec<String> =
        ctx.store.tenants(&run.id)?.into_iter().filter(|t| t.outcome == "rolled").map(|t| t.tenant).collect();
    for t in &opts.tenants {
        if !journals.iter().any(|(j, _)| j.tenant == t.as_str()) {
            return Err(Error::Usage(format!("run {} did not touch tenant \"{t}\"", run.id)));
        }
    }
    let chosen: Vec<(TenantJournal, bool)> = journals
        .into_iter()
        .filter(|(j, _)| {
            if opts.tenants.is_empty() {
                rolled.contains(&j.tenant)
            } else {
                opts.tenants.iter().any(|t| t.as_str() == j.tenant)
            }
        })
        .collect();
    if opts.dry_run {
        let tenants = chosen.iter().map(|(j, _)| RollbackTenant { tenant: j.tenant.clone(), result: None }).collect();
        return Ok(RollbackReport { rollout_run: run.id, dry_run: true, tenants, outcome: ExitKind::Success });
    }
    ctx.start_run("rollback", run.app.as_deref(), run.git_commit.as_deref(), run.digest.as_deref())?;
    let engine = Engine::connect(&ctx.cfg.docker).await?;
    let prober = Prober::new()?;
    let mut tenants = Vec::new();
    let mut outcome = ExitKind::Success;
    for (j, started) in chosen {
        let r = undo_tenant(ctx, &engine, &prober, &j, started).await?;
        if !r.ok {
            outcome = ExitKind::PersonNeeded;
        }
        tenants.push(RollbackTenant { tenant: j.tenant.clone(), result: Some(r) });
        if outcome != ExitKind::Success {
            break;
        }
    }
    let summary = format!("rolled back {} tenant(s) of run {}", tenants.len(), run.id);
    ctx.finish_run(outcome, &summary)?;
    if outcome == ExitKind::Success {
        ctx.store.resolve_run(&run.id, &format!("rollback {}", ctx.run_id))?;
    }
    Ok(RollbackReport { rollout_run: run.id, dry_run: false, tenants, outcome })
}

impl fmt::Display for RollbackReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.dry_run { "would roll back" } else { "rolled back" };
        writeln!(f, "rollback of run {}:", self.rollout_run)?;
        for t in &self.tenants {
            match &t.result {
                None => writeln!(f, "  {} {verb}", t.tenant)?,
                Some(r) => writeln!(f, "  {}: {}", t.tenant, r.detail)?,
            }
        }
        if self.tenants.is_empty() {
            writeln!(f, "  no tenant was rolled by this run; nothing to do")?;
        }
        Ok(())
    }
}
