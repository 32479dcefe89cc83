//! `runs` and `runs show`: the run history from the run record.

use std::fmt;

use serde::Serialize;
use slipway_state::{Pause, Run, Step, TenantResult, WaveRow};

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
    /// The waves a rollout froze before its first tenant, in order (empty for other jobs).
    pub waves: Vec<WaveRow>,
    /// Its pauses (over its budget, or its maintenance window closed), oldest first.
    pub pauses: Vec<Pause>,
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
    Ok(RunDetail {
        tenants: ctx.store.tenants(id)?,
        waves: ctx.store.waves(id)?,
        pauses: ctx.store.pauses_of(id)?,
        steps: ctx.store.steps(id)?,
        run,
    })
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
        // The frozen waves, one line each: its name, limits and tenants in order.
        let mut waves: Vec<(i64, &str, i64, i64, Vec<&str>)> = Vec::new();
        for w in &self.waves {
            match waves.last_mut() {
                Some(last) if last.0 == w.wave => last.4.push(&w.tenant),
                _ => waves.push((w.wave, &w.name, w.max_parallel, w.bake_s, vec![&w.tenant])),
            }
        }
        for (n, name, parallel, bake, tenants) in &waves {
            writeln!(f, "  wave {n} ({name}, max_parallel {parallel}, bake {bake} s): {}", tenants.join(" "))?;
        }
        for p in &self.pauses {
            match (&p.ended_at, &p.ended_by) {
                (Some(at), by) => writeln!(
                    f,
                    "  paused   {} ({}: {}), ended {at} ({})",
                    p.paused_at,
                    p.kind,
                    p.reason,
                    by.as_deref().unwrap_or("?")
                )?,
                (None, _) => writeln!(
                    f,
                    "  PAUSED   since {} ({}: {}): `slipway rollout resume {}` or `slipway rollout abort {}`",
                    p.paused_at, p.kind, p.reason, p.run_id, p.run_id
                )?,
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
