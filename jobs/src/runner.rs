//! The job protocol: how every job runs, in one place. The CLI builds a [`Job`] and calls
//! [`run`]; the runner opens the run record, takes the host lock (never for read-only jobs or
//! `--dry-run`), first finishes or undoes what a killed run left behind for the jobs that change
//! containers, calls the job, and after it writes the metrics file and sends the failure
//! notification from the typed report. It returns a [`Finished`] for the CLI to print.
//!
//! Invariants: the run id the lock names is the id `slipway runs` shows for the run in progress
//! (see [`Ctx::start_run`]); a run is finished only through its `context::RunGuard`, with one
//! outcome word per exit code ([`crate::journal::Outcome`]); neither metrics
//! nor the webhook can change a job's outcome.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::adapters::{lock, metrics, notify};
use crate::config::{HostConfig, NotifyLevel};
use crate::context::{Cancel, Ctx};
use crate::error::{Error, ExitKind, Result};
use crate::{drill, prune, reconcile, recover, restore, rollback, rollout, runs, snapshot, status, sync, verify};

/// One invocation of a job, with its options.
#[derive(Debug, Clone)]
pub enum Job {
    /// `rollout`.
    Rollout(rollout::RolloutOptions),
    /// `reconcile`.
    Reconcile(reconcile::ReconcileOptions),
    /// `rollback`.
    Rollback(rollback::RollbackOptions),
    /// `recover`.
    Recover(recover::RecoverOptions),
    /// `snapshot`.
    Snapshot(snapshot::SnapshotOptions),
    /// `restore`.
    Restore(restore::RestoreOptions),
    /// `drill`.
    Drill(drill::DrillOptions),
    /// `verify` (local, or `--remote`).
    Verify(verify::VerifyOptions),
    /// `sync`.
    Sync(sync::SyncOptions),
    /// `prune`.
    Prune(prune::PruneOptions),
    /// `status`.
    Status,
    /// `runs`: the newest `limit` runs.
    Runs {
        /// How many.
        limit: usize,
    },
    /// `runs show RUN`.
    RunShow {
        /// The run id as typed.
        run: String,
    },
}

impl Job {
    /// The job name recorded and reported.
    pub fn name(&self) -> &'static str {
        match self {
            Job::Rollout(_) => "rollout",
            Job::Reconcile(_) => "reconcile",
            Job::Rollback(_) => "rollback",
            Job::Recover(_) => "recover",
            Job::Snapshot(_) => "snapshot",
            Job::Restore(_) => "restore",
            Job::Drill(_) => "drill",
            Job::Verify(_) => "verify",
            Job::Sync(_) => "sync",
            Job::Prune(_) => "prune",
            Job::Status => "status",
            Job::Runs { .. } | Job::RunShow { .. } => "runs",
        }
    }

    /// Whether this invocation only shows what it would do.
    pub fn dry_run(&self) -> bool {
        match self {
            Job::Rollout(o) => o.dry_run,
            Job::Reconcile(o) => o.dry_run,
            Job::Rollback(o) => o.dry_run,
            Job::Recover(o) => o.dry_run,
            Job::Snapshot(o) => o.dry_run,
            Job::Restore(o) => o.dry_run,
            Job::Drill(o) => o.dry_run,
            Job::Sync(o) => o.dry_run,
            Job::Prune(o) => o.dry_run,
            Job::Verify(_) | Job::Status | Job::Runs { .. } | Job::RunShow { .. } => false,
        }
    }

    /// Read-only jobs take no lock, record no metrics and notify nobody.
    fn read_only(&self) -> bool {
        matches!(self, Job::Status | Job::Runs { .. } | Job::RunShow { .. })
    }

    /// Jobs that change containers first finish or undo what a killed run left behind. `drill`
    /// does not: it changes no tenant (and removes an earlier drill's leftovers itself).
    fn recovers_first(&self) -> bool {
        matches!(self, Job::Rollout(_) | Job::Reconcile(_) | Job::Rollback(_) | Job::Restore(_) | Job::Snapshot(_))
            && !self.dry_run()
    }
}

/// How the runner runs a job, beyond the job's own options.
pub struct RunnerOptions {
    /// What started the job (manual, timer, cron, hook).
    pub trigger: String,
    /// Wait for the host lock: None, fail at once; `Duration::MAX`, as long as it takes.
    pub wait: Option<Duration>,
    /// Metrics file, overriding `[metrics] file`.
    pub metrics_file: Option<PathBuf>,
    /// Where long work reports progress.
    pub progress: Arc<dyn crate::progress::Progress>,
    /// Set by SIGINT/SIGTERM.
    pub cancel: Cancel,
}

/// The typed report of any job.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Report {
    /// `rollout`.
    Rollout(rollout::RolloutReport),
    /// `reconcile`.
    Reconcile(reconcile::ReconcileReport),
    /// `rollback`.
    Rollback(rollback::RollbackReport),
    /// `recover`, alone or before another job.
    Recover(recover::RecoverReport),
    /// `snapshot`.
    Snapshot(snapshot::SnapshotReport),
    /// `restore`.
    Restore(restore::RestoreReport),
    /// `drill`.
    Drill(drill::DrillReport),
    /// `verify`.
    Verify(verify::VerifyReport),
    /// `sync`.
    Sync(sync::SyncReport),
    /// `prune`.
    Prune(prune::PruneReport),
    /// `status`.
    Status(status::StatusReport),
    /// `runs`.
    Runs(runs::RunsReport),
    /// `runs show`.
    RunShow(runs::RunDetail),
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Report::Rollout(r) => r.fmt(f),
            Report::Reconcile(r) => r.fmt(f),
            Report::Rollback(r) => r.fmt(f),
            Report::Recover(r) => r.fmt(f),
            Report::Snapshot(r) => r.fmt(f),
            Report::Restore(r) => r.fmt(f),
            Report::Drill(r) => r.fmt(f),
            Report::Verify(r) => r.fmt(f),
            Report::Sync(r) => r.fmt(f),
            Report::Prune(r) => r.fmt(f),
            Report::Status(r) => r.fmt(f),
            Report::Runs(r) => r.fmt(f),
            Report::RunShow(r) => r.fmt(f),
        }
    }
}

impl Report {
    /// How the job ended, read from its report.
    pub fn exit_kind(&self) -> ExitKind {
        match self {
            Report::Rollout(r) => r.exit_kind(),
            Report::Reconcile(r) => r.exit_kind(),
            Report::Rollback(r) => r.outcome,
            Report::Recover(r) => r.exit_kind(),
            Report::Snapshot(r) => r.exit_kind(),
            Report::Restore(r) => r.outcome,
            Report::Drill(r) => r.exit_kind(),
            Report::Verify(r) => r.exit_kind(),
            Report::Sync(r) => r.exit_kind(),
            Report::Prune(r) => r.exit_kind(),
            Report::Status(r) => r.exit_kind(),
            Report::Runs(_) | Report::RunShow(_) => ExitKind::Success,
        }
    }

    /// The report's last lines, for notifications.
    pub fn summary(&self) -> String {
        let text = self.to_string();
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(3)..].join(" / ")
    }

    /// A line per tenant the report names, for notifications: every object of the report (at
    /// any depth) with a `tenant` and an `outcome`, its detail from `detail`, `error` or
    /// `skipped`. Read from the report's JSON so that every job's report gives its tenants,
    /// whatever its shape.
    pub fn tenant_lines(&self) -> Vec<notify::TenantLine> {
        fn walk(v: &serde_json::Value, out: &mut Vec<notify::TenantLine>) {
            match v {
                serde_json::Value::Object(m) => {
                    let word = |k: &str| match m.get(k) {
                        Some(serde_json::Value::String(s)) => Some(s.clone()),
                        Some(serde_json::Value::Object(o)) => o.keys().next().cloned(),
                        _ => None,
                    };
                    if let (Some(tenant), Some(outcome)) = (word("tenant"), word("outcome")) {
                        let detail = ["detail", "error", "skipped"].into_iter().find_map(word);
                        out.push(notify::TenantLine { tenant, outcome, detail });
                        return;
                    }
                    m.values().for_each(|x| walk(x, out));
                }
                serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
                _ => {}
            }
        }
        let mut out = Vec::new();
        if let Ok(v) = serde_json::to_value(self) {
            walk(&v, &mut out);
        }
        out
    }

    /// The rollout reports inside (rollout, or the apps reconcile rolled out).
    fn rollouts(&self) -> Vec<&rollout::AppReport> {
        match self {
            Report::Rollout(r) => r.apps.iter().collect(),
            Report::Reconcile(r) => r
                .apps
                .iter()
                .filter_map(|a| match a {
                    reconcile::AppAction::RolledOut(r) => Some(r.as_ref()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The run id to report: a rollout's is its last app's run; verify and the read-only jobs
    /// record no run; every other job's is the context's.
    fn run_id(&self, ctx: &Ctx) -> Option<String> {
        match self {
            Report::Rollout(_) | Report::Reconcile(_) => {
                self.rollouts().iter().rev().find_map(|a| a.run_id.as_ref()).map(|r| r.to_string())
            }
            Report::Verify(_) | Report::Status(_) | Report::Runs(_) | Report::RunShow(_) => None,
            _ => Some(ctx.run_id().to_string()),
        }
    }

    /// What the metrics file gets beyond the outcome.
    fn counts(&self) -> Counts {
        match self {
            Report::Snapshot(r) => Counts { archived_bytes: Some(r.archived_bytes()), ..Counts::default() },
            Report::Sync(r) => Counts { uploaded_bytes: Some(r.uploaded_bytes), ..Counts::default() },
            Report::Rollout(_) | Report::Reconcile(_) => {
                let apps = self.rollouts();
                if apps.is_empty() && matches!(self, Report::Reconcile(_)) {
                    return Counts::default();
                }
                let count = |o| apps.iter().flat_map(|a| &a.tenants).filter(|t| t.outcome == o).count() as u64;
                let switches = apps
                    .iter()
                    .flat_map(|a| &a.tenants)
                    .filter_map(|t| {
                        let m = metrics::SwitchMetric {
                            downtime_s: t.downtime_ms? as f64 / 1000.0,
                            proxy_downtime_s: t.proxy.as_ref().map(|p| p.downtime_ms as f64 / 1000.0),
                            proxy_failed: t.proxy.as_ref().map(|p| p.failed),
                        };
                        Some((t.tenant.to_string(), m))
                    })
                    .collect();
                Counts {
                    switches,
                    rolled: Some(count(rollout::TenantOutcome::Rolled)),
                    halted: Some(count(rollout::TenantOutcome::Restored) + count(rollout::TenantOutcome::PersonNeeded)),
                    ..Counts::default()
                }
            }
            _ => Counts::default(),
        }
    }
}

/// What a job reports for the metrics file beyond its outcome.
#[derive(Debug, Clone, Default)]
struct Counts {
    archived_bytes: Option<u64>,
    uploaded_bytes: Option<u64>,
    rolled: Option<u64>,
    halted: Option<u64>,
    switches: std::collections::BTreeMap<String, metrics::SwitchMetric>,
}

/// A job that ended, with a report or the error that ended it before it had one.
#[derive(Debug)]
pub struct Finished {
    /// The job reported (`recover` when recovering first needed a person and the job never ran).
    pub job: &'static str,
    /// The run the job recorded, if any.
    pub run_id: Option<String>,
    /// How it ended.
    pub outcome: ExitKind,
    /// The report, or the error.
    pub result: Result<Report>,
}

/// Whether an outcome sends the failure notification.
pub fn notifies(kind: ExitKind) -> bool {
    matches!(
        kind,
        ExitKind::Failure
            | ExitKind::Usage
            | ExitKind::Halted
            | ExitKind::PersonNeeded
            | ExitKind::RemoteAuth
            | ExitKind::Interrupted
    )
}

/// Run `job` under the job protocol (module doc).
pub async fn run(cfg: HostConfig, job: Job, opts: RunnerOptions) -> Finished {
    let started = Instant::now();
    let name = job.name();
    let mut ctx = match Ctx::open(cfg, &opts.trigger, opts.cancel.clone()) {
        Ok(c) => c,
        Err(e) => return Finished { job: name, run_id: None, outcome: e.exit_kind(), result: Err(e) },
    };
    ctx.progress = opts.progress.clone();
    if job.read_only() {
        let result = call(&mut ctx, &job).await;
        let outcome = result.as_ref().map_or_else(Error::exit_kind, Report::exit_kind);
        return Finished { job: name, run_id: None, outcome, result };
    }
    let (reported, result) = locked(&mut ctx, &job, &opts).await;
    let (outcome, run_id, summary) = match &result {
        Ok(r) => (r.exit_kind(), r.run_id(&ctx), r.summary()),
        Err(e) => (e.exit_kind(), None, e.to_string()),
    };
    if !job.dry_run() {
        let counts = result.as_ref().map(Report::counts).unwrap_or_default();
        let tenants = result.as_ref().map(Report::tenant_lines).unwrap_or_default();
        after_job(&ctx, &opts, reported, outcome, run_id.clone(), &summary, counts, tenants, started).await;
    }
    Finished { job: reported, run_id, outcome, result }
}

/// Take the lock, recover first where the job needs it, run the job. Returns the job name to
/// report with the result.
async fn locked(ctx: &mut Ctx, job: &Job, opts: &RunnerOptions) -> (&'static str, Result<Report>) {
    if !job.dry_run() {
        match lock::acquire(&ctx.cfg.state_dir, job.name(), ctx.run_id(), opts.wait) {
            Ok(l) => ctx.hold_lock(l),
            Err(e) => return (job.name(), Err(e)),
        }
    }
    crate::context::test_pause("after-lock");
    crate::context::crash_point("after-lock");
    if job.recovers_first() {
        match recover::recover(ctx, &recover::RecoverOptions { dry_run: false }).await {
            Err(e) => return (job.name(), Err(e)),
            Ok(r) if !r.runs.is_empty() => {
                tracing::warn!(
                    "recovered {} unfinished run(s) before {}: {}",
                    r.runs.len(),
                    job.name(),
                    r.to_string().trim_end()
                );
                if r.exit_kind() != ExitKind::Success {
                    return ("recover", Ok(Report::Recover(r)));
                }
                // The recover run used this id; the job gets its own.
                ctx.next_run_id();
                ctx.publish(job.name());
            }
            Ok(_) => {}
        }
    }
    (job.name(), call(ctx, job).await)
}

async fn call(ctx: &mut Ctx, job: &Job) -> Result<Report> {
    Ok(match job {
        Job::Rollout(o) => Report::Rollout(rollout::rollout(ctx, o).await?),
        Job::Reconcile(o) => Report::Reconcile(reconcile::reconcile(ctx, o).await?),
        Job::Rollback(o) => Report::Rollback(rollback::rollback(ctx, o).await?),
        Job::Recover(o) => Report::Recover(recover::recover(ctx, o).await?),
        Job::Snapshot(o) => Report::Snapshot(snapshot::snapshot(ctx, o).await?),
        Job::Restore(o) => Report::Restore(restore::restore(ctx, o).await?),
        Job::Drill(o) => Report::Drill(drill::drill(ctx, o).await?),
        Job::Verify(o) if o.remote => Report::Verify(verify::verify_remote(&ctx.cfg, o).await?),
        Job::Verify(o) => Report::Verify(verify::verify(&ctx.cfg.backup_root, o).await?),
        Job::Sync(o) => Report::Sync(sync::sync(ctx, o).await?),
        Job::Prune(o) => Report::Prune(prune::prune(ctx, o).await?),
        Job::Status => Report::Status(status::status(ctx).await?),
        Job::Runs { limit } => Report::Runs(runs::list(ctx, *limit)?),
        Job::RunShow { run } => Report::RunShow(runs::show(ctx, run)?),
    })
}

/// The newest daily snapshot of every tenant in the run record (unix seconds).
fn newest_daily_snapshots(ctx: &Ctx) -> BTreeMap<String, i64> {
    let mut newest = BTreeMap::new();
    if let Ok(rows) = ctx.store.snapshots() {
        for s in rows.into_iter().filter(|s| s.kind == crate::layout::SnapshotKind::Daily.as_str()) {
            let (Some(t), Ok(ts)) = (s.tenant, s.created_at.parse::<jiff::Timestamp>()) else { continue };
            let e = newest.entry(t).or_insert(0);
            *e = (*e).max(ts.as_second());
        }
    }
    newest
}

/// Every tenant's newest successful drill in the run record: (unix seconds it ended, seconds
/// from fetch to healthy).
fn newest_drills(ctx: &Ctx) -> BTreeMap<String, metrics::DrillMetric> {
    let mut out = BTreeMap::new();
    if let Ok(rows) = ctx.store.last_drills(true) {
        for d in rows {
            let Ok(ts) = d.finished_at.parse::<jiff::Timestamp>() else { continue };
            let ms = d.restore_ms.unwrap_or(0) + d.healthy_ms.unwrap_or(0);
            out.insert(d.tenant, metrics::DrillMetric { at: ts.as_second(), duration_s: ms as f64 / 1000.0 });
        }
    }
    out
}

/// The host's own secrets, for no message to carry one even if an error quoted it: the
/// remote's secret key and session token (its credentials file's, else the environment's) and
/// the desired repo's token. Values under 8 characters are left out (redacting them would
/// mangle the message and hide nothing).
fn host_secrets(cfg: &crate::config::HostConfig) -> Vec<String> {
    let mut out = Vec::new();
    let remote_file = cfg.remote.as_ref().and_then(|r| r.credentials_file.as_deref());
    if let Some(text) = remote_file.and_then(|f| std::fs::read_to_string(f).ok()) {
        for line in text.lines() {
            if let Some((k, v)) = line.split_once('=') {
                if matches!(k.trim(), "aws_secret_access_key" | "aws_session_token") {
                    out.push(v.trim().to_string());
                }
            }
        }
    }
    for var in ["AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"] {
        out.extend(std::env::var(var).ok());
    }
    if let Some(text) = cfg.desired.credentials_file.as_deref().and_then(|f| std::fs::read_to_string(f).ok()) {
        let token = text.lines().next().unwrap_or("").trim();
        out.push(token.rsplit_once(':').map_or(token, |(_, t)| t).to_string());
    }
    out.retain(|s| s.len() >= 8);
    out
}

/// The open rollout pauses in the run record; `None` (the file keeps its own) if it cannot be read.
fn open_pauses(ctx: &Ctx) -> Option<Vec<metrics::PauseMetric>> {
    let rows = ctx.store.open_pauses().ok()?;
    Some(
        rows.into_iter()
            .map(|p| metrics::PauseMetric {
                since: p.paused_at.parse::<jiff::Timestamp>().map_or(0, |t| t.as_second()),
                app: p.app,
                run: p.run_id,
                kind: p.kind,
            })
            .collect(),
    )
}

/// Metrics and notifications after a job; neither can change the job's outcome.
#[allow(clippy::too_many_arguments)]
async fn after_job(
    ctx: &Ctx,
    opts: &RunnerOptions,
    job: &str,
    kind: ExitKind,
    run_id: Option<String>,
    summary: &str,
    counts: Counts,
    tenants: Vec<notify::TenantLine>,
    started: Instant,
) {
    if let Some(path) = opts.metrics_file.as_ref().or(ctx.cfg.metrics.file.as_ref()) {
        let m = metrics::JobMetrics {
            job: job.to_string(),
            exit_code: kind.code(),
            ended: jiff::Timestamp::now().as_second(),
            duration_s: started.elapsed().as_secs_f64(),
            archived_bytes: counts.archived_bytes,
            uploaded_bytes: counts.uploaded_bytes,
            rolled: counts.rolled,
            halted: counts.halted,
            snapshots: newest_daily_snapshots(ctx),
            drills: newest_drills(ctx),
            switches: counts.switches,
            pauses: open_pauses(ctx),
        };
        if let Err(e) = metrics::record(path, &m) {
            tracing::warn!("cannot write the metrics file: {e}");
        }
    }
    let wanted = match ctx.cfg.notify.level {
        NotifyLevel::Failures => notifies(kind),
        // Every run: a job that recorded one, whatever its outcome (never a busy lock: no run).
        NotifyLevel::All => notifies(kind) || (kind == ExitKind::Success && run_id.is_some()),
    };
    let targets = ctx.cfg.notify.targets();
    if wanted && !targets.is_empty() {
        let mut secrets: Vec<String> = targets.iter().flat_map(|t| t.secrets()).collect();
        secrets.extend(host_secrets(&ctx.cfg));
        let n = notify::Notification::new(job, run_id, kind.word(), kind.code(), summary)
            .with_tenants(tenants)
            .scrubbed(&secrets);
        // One message per run to each target, all at once: a slow one delays no other.
        futures_util::future::join_all(targets.iter().map(|t| notify::send(t, &n))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_jobs_that_change_containers_recover_first_and_never_under_dry_run() {
        let snap = |dry_run| {
            Job::Snapshot(snapshot::SnapshotOptions { tenants: vec![], control_plane: false, force: false, dry_run })
        };
        assert!(snap(false).recovers_first());
        assert!(!snap(true).recovers_first());
        assert!(!Job::Sync(sync::SyncOptions { dry_run: false }).recovers_first());
        assert!(!Job::Prune(prune::PruneOptions { dry_run: false }).recovers_first());
        assert!(!Job::Recover(recover::RecoverOptions { dry_run: false }).recovers_first());
        assert!(Job::Status.read_only() && !snap(false).read_only());
    }

    #[test]
    fn the_remotes_secret_key_and_the_repos_token_are_scrubbed_from_every_message() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("s3.credentials");
        std::fs::write(
            &creds,
            "[default]\naws_access_key_id = AKIDEXAMPLE\naws_secret_access_key = wJalrXUtnFEMI/K7MDENG+bPxRfiCY\n",
        )
        .unwrap();
        let token = dir.path().join("git.token");
        std::fs::write(&token, "deploy:ghp_0123456789abcdefTOKEN\n").unwrap();
        let text = format!(
            "state_dir = \"{0}/state\"\nbackup_root = \"{0}/backups\"\n[desired]\nrepo = \"https://git.example.com/fleet.git\"\n\
             credentials_file = \"{1}\"\n[remote]\nendpoint = \"http://127.0.0.1:9\"\nbucket = \"b\"\ncredentials_file = \"{2}\"\n",
            dir.path().display(),
            token.display(),
            creds.display()
        );
        let cfg = crate::config::HostConfig::parse(&text, "config.toml", std::iter::empty()).unwrap();
        let secrets = host_secrets(&cfg);
        let n = notify::Notification::new(
            "sync",
            None,
            "failed",
            1,
            "upload refused for wJalrXUtnFEMI/K7MDENG+bPxRfiCY; git said ghp_0123456789abcdefTOKEN",
        )
        .scrubbed(&secrets);
        let body = n.body();
        assert!(!body.contains("wJalrXUtnFEMI") && !body.contains("ghp_0123"), "{body}");
        assert!(body.contains("upload refused for [redacted]"), "{body}");
    }

    #[test]
    fn failures_halts_and_interruptions_notify_and_success_and_a_busy_lock_do_not() {
        let notified: Vec<&str> = ExitKind::ALL.into_iter().filter(|k| notifies(*k)).map(ExitKind::word).collect();
        assert_eq!(notified, ["failed", "usage", "halted", "person_needed", "remote_auth", "interrupted"]);
    }
}
