//! `runs` and `runs show`: the run history from the run record.

use std::fmt;

use serde::Serialize;
use slipway_state::{Run, Step, TenantResult};

use crate::context::Ctx;
use crate::error::{Error, Result};

/// The newest runs.
#[derive(Debug, Clone, Serialize)]
pub struct RunsReport {
    /// Newest first.
    pub runs: Vec<Run>,
}

/// One run in full.
#[derive(Debug, Clone, Serialize)]
pub struct RunDetail {
    /// The run.
    pub run: Run,
    /// Per-tenant results (rollouts).
    pub tenants: Vec<TenantResult>,
    /// Every journaled step.
    pub steps: Vec<Step>,
}

/// List the newest `limit` runs.
pub fn list(ctx: &Ctx, limit: usize) -> Result<RunsReport> {
    Ok(RunsReport { runs: ctx.store.runs(limit)? })
}

/// Show one run.
pub fn show(ctx: &Ctx, id: &str) -> Result<RunDetail> {
    let run =
        ctx.store.run(id)?.ok_or_else(|| Error::Usage(format!("no run {id} in the run record; see `slipway runs`")))?;
    Ok(RunDetail { tenants: ctx.store.tenants(id)?, steps: ctx.store.steps(id)?, run })
}

fn outcome(r: &Run) -> &str {
    r.outcome.as_deref().unwrap_or(if r.finished_at.is_none() { "unfinished" } else { "?" })
}

impl fmt::Display for RunsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:<22} {:<10} {:<10} {:<14} SUMMARY", "RUN", "JOB", "TRIGGER", "OUTCOME")?;
        for r in &self.runs {
            writeln!(
                f,
                "{:<22} {:<10} {:<10} {:<14} {}",
                r.id,
                r.job,
                r.trigger,
                outcome(r),
                r.summary.as_deref().unwrap_or("")
            )?;
        }
        Ok(())
    }
}

impl fmt::Display for RunDetail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.run;
        writeln!(f, "run {} ({} by {}, pid {})", r.id, r.job, r.trigger, r.pid)?;
        writeln!(f, "  started  {}", r.started_at)?;
        writeln!(f, "  finished {}", r.finished_at.as_deref().unwrap_or("-"))?;
        writeln!(f, "  outcome  {} (exit {})", outcome(r), r.exit_code.map_or("-".into(), |c| c.to_string()))?;
        if let Some(app) = &r.app {
            writeln!(f, "  app      {app} @ {}", r.digest.as_deref().unwrap_or("-"))?;
        }
        if let Some(c) = &r.git_commit {
            writeln!(f, "  commit   {c}")?;
        }
        if let Some(s) = &r.summary {
            writeln!(f, "  summary  {s}")?;
        }
        if let Some(by) = &r.resolved_by {
            writeln!(f, "  resolved {by}")?;
        }
        for t in &self.tenants {
            let down = t.downtime_ms.map_or("-".to_string(), |d| format!("{d} ms"));
            writeln!(f, "  tenant {:<20} {:<14} downtime {down}", t.tenant, t.outcome)?;
            if let (Some(n), Some(failed), Some(d)) = (t.proxy_requests, t.proxy_failed, t.proxy_downtime_ms) {
                writeln!(f, "    through the proxy: {failed} of {n} requests failed, proxy downtime {d} ms")?;
            }
        }
        writeln!(f, "  steps:")?;
        for s in &self.steps {
            writeln!(
                f,
                "    {:<24} {:<22} {:<8} {}",
                s.started_at,
                format!("{} {}", s.tenant.as_deref().unwrap_or(""), s.step),
                s.outcome.as_deref().unwrap_or("running"),
                s.finished_at.as_deref().unwrap_or("")
            )?;
        }
        Ok(())
    }
}
