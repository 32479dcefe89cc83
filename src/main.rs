//! slipway's CLI: parse arguments, load config, take the host lock, call one job, render its
//! report (human or `--json`), write metrics, notify on failure, and map the outcome to an
//! exit code. No Docker, git or archive logic lives here.

mod cli;
mod output;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{CommandFactory, Parser};
use slipway_jobs::adapters::{lock, metrics, notify};
use slipway_jobs::config::HostConfig;
use slipway_jobs::context::{Cancel, Ctx};
use slipway_jobs::error::{Error, ExitKind};
use slipway_jobs::types::RunId;
use slipway_jobs::{prune, reconcile, recover, restore, rollback, rollout, runs, snapshot, status, sync, verify};

use crate::cli::{Cli, Command, ConfigAction, RunsShow};
use crate::output::{Outcome, Printer};

fn main() -> ExitCode {
    let cli = Cli::parse();
    output::init_logging(cli.log_format);
    let printer = Printer::new(cli.json, cli.quiet);
    match &cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "slipway", &mut std::io::stdout());
            return ExitCode::SUCCESS;
        }
        Command::Man { dir } => {
            let written = match dir {
                Some(dir) => std::fs::create_dir_all(dir)
                    .and_then(|()| clap_mangen::generate_to(Cli::command(), dir))
                    .map_err(|e| format!("cannot write man pages into {}: {e}", dir.display())),
                None => clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()).map_err(|e| e.to_string()),
            };
            return match written {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            };
        }
        _ => {}
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let started = Instant::now();
    let job = cli.command.job();
    let kind = runtime.block_on(async {
        match run(&cli, &printer, started).await {
            Ok(o) => o.kind,
            Err(e) => {
                printer.error(job, &e, started);
                e.exit_kind()
            }
        }
    });
    ExitCode::from(kind.code())
}

/// Install SIGINT/SIGTERM/SIGHUP handlers that ask the job to stop at its next safe point.
/// SIGHUP is an operator's SSH session dropping: its default action would kill the job
/// mid-step and leave a tenant stopped.
fn watch_signals(cancel: Cancel) {
    use tokio::signal::unix::{signal, SignalKind};
    for kind in [SignalKind::interrupt(), SignalKind::terminate(), SignalKind::hangup()] {
        let cancel = cancel.clone();
        if let Ok(mut s) = signal(kind) {
            tokio::spawn(async move {
                while s.recv().await.is_some() {
                    tracing::warn!("signal received: finishing or undoing the current step, then stopping");
                    cancel.cancel();
                }
            });
        }
    }
}

async fn run(cli: &Cli, printer: &Printer, started: Instant) -> Result<Outcome, Error> {
    let path = HostConfig::locate(cli.config.as_deref());
    let cfg = HostConfig::load(&path)?;
    let job = cli.command.job();
    if let Command::Config { action: ConfigAction::Check } = &cli.command {
        let state = slipway_jobs::adapters::desired::read(&cfg.desired, &cfg.state_dir, None)?;
        let report = output::ConfigCheck::new(&path, &cfg, &state);
        return Ok(printer.report(job, None, started, ExitKind::Success, &report));
    }
    let cancel = Cancel::new();
    watch_signals(cancel.clone());
    let mut ctx = Ctx::open(cfg, &cli.trigger, cancel)?;
    ctx.progress = std::sync::Arc::new(output::CliProgress::new(cli.json));

    // Read-only work takes no lock and records no metrics.
    match &cli.command {
        Command::Runs(a) => {
            return Ok(match &a.show {
                Some(RunsShow::Show { run }) => {
                    printer.report(job, None, started, ExitKind::Success, &runs::show(&ctx, run)?)
                }
                None => printer.report(job, None, started, ExitKind::Success, &runs::list(&ctx, a.limit)?),
            });
        }
        Command::Status => {
            let r = status::status(&ctx).await?;
            return Ok(printer.report(job, None, started, r.exit_kind(), &r));
        }
        _ => {}
    }

    let _lock = if cli.command.dry_run() {
        None
    } else {
        // --wait (or --wait=0): wait as long as it takes; --wait=N: at most N seconds.
        let wait = cli.wait.map(|s| if s == 0 { Duration::MAX } else { Duration::from_secs(s) });
        Some(lock::acquire(&ctx.cfg.state_dir, job, &ctx.run_id, wait)?)
    };
    slipway_jobs::context::test_pause("after-lock");
    slipway_jobs::context::crash_point("after-lock");

    let result = dispatch(cli, printer, started, &mut ctx).await;
    let (kind, run_id, summary, extra) = match &result {
        Ok((o, extra)) => (o.kind, o.run_id.clone(), o.summary.clone(), extra.clone()),
        Err(e) => (e.exit_kind(), None, e.to_string(), Extra::default()),
    };
    if !cli.command.dry_run() {
        after_job(cli, &ctx, job, kind, run_id, &summary, extra, started).await;
    }
    result.map(|(o, _)| o)
}

/// What a job reports for the metrics file beyond its outcome.
#[derive(Debug, Clone, Default)]
struct Extra {
    archived_bytes: Option<u64>,
    uploaded_bytes: Option<u64>,
    rolled: Option<u64>,
    halted: Option<u64>,
}

fn rollout_counts(apps: &[&rollout::AppReport]) -> Extra {
    let count = |o| apps.iter().flat_map(|a| &a.tenants).filter(|t| t.outcome == o).count() as u64;
    Extra {
        rolled: Some(count(rollout::TenantOutcome::Rolled)),
        halted: Some(count(rollout::TenantOutcome::Restored) + count(rollout::TenantOutcome::PersonNeeded)),
        ..Default::default()
    }
}

async fn dispatch(cli: &Cli, printer: &Printer, started: Instant, ctx: &mut Ctx) -> Result<(Outcome, Extra), Error> {
    let job = cli.command.job();
    // Jobs that change containers first finish or undo what a killed run left behind.
    let changes_containers = matches!(
        cli.command,
        Command::Rollout(_) | Command::Reconcile(_) | Command::Rollback(_) | Command::Restore(_) | Command::Snapshot(_)
    );
    if changes_containers && !cli.command.dry_run() {
        let r = recover::recover(ctx, &recover::RecoverOptions { dry_run: false }).await?;
        if !r.runs.is_empty() {
            tracing::warn!("recovered {} unfinished run(s) before {job}: {}", r.runs.len(), r.to_string().trim_end());
            if r.exit_kind() != ExitKind::Success {
                let o = printer.report("recover", Some(ctx.run_id.to_string()), started, r.exit_kind(), &r);
                return Ok((o, Extra::default()));
            }
            // The recover run used this id; the job gets its own.
            ctx.run_id = RunId::new();
        }
    }
    let id = Some(ctx.run_id.to_string());
    Ok(match &cli.command {
        Command::Rollout(a) => {
            let opts = rollout::RolloutOptions {
                app: a.app.clone(),
                git_ref: a.git_ref.clone(),
                tenants: a.tenants.clone(),
                dry_run: a.dry_run,
                keep_old: a.keep_old,
                allow_rewind: a.allow_rewind,
            };
            let r = rollout::rollout(ctx, &opts).await?;
            let id = r.apps.iter().rev().find_map(|a| a.run_id.as_ref()).map(|r| r.to_string());
            let extra = rollout_counts(&r.apps.iter().collect::<Vec<_>>());
            (printer.report(job, id, started, r.exit_kind(), &r), extra)
        }
        Command::Reconcile(a) => {
            let opts = reconcile::ReconcileOptions {
                retry: a.retry,
                git_ref: a.git_ref.clone(),
                dry_run: a.dry_run,
                allow_rewind: a.allow_rewind,
            };
            let r = reconcile::reconcile(ctx, &opts).await?;
            let apps: Vec<&rollout::AppReport> = r
                .apps
                .iter()
                .filter_map(|a| match a {
                    reconcile::AppAction::RolledOut(r) => Some(r.as_ref()),
                    _ => None,
                })
                .collect();
            let extra = if apps.is_empty() { Extra::default() } else { rollout_counts(&apps) };
            let id = apps.iter().rev().find_map(|a| a.run_id.as_ref()).map(|r| r.to_string());
            (printer.report(job, id, started, r.exit_kind(), &r), extra)
        }
        Command::Rollback(a) => {
            let opts = rollback::RollbackOptions { run: a.run.clone(), tenants: a.tenants.clone(), dry_run: a.dry_run };
            let r = rollback::rollback(ctx, &opts).await?;
            (printer.report(job, id, started, r.outcome, &r), Extra::default())
        }
        Command::Recover(a) => {
            let r = recover::recover(ctx, &recover::RecoverOptions { dry_run: a.dry_run }).await?;
            (printer.report(job, id, started, r.exit_kind(), &r), Extra::default())
        }
        Command::Snapshot(a) => {
            let opts = snapshot::SnapshotOptions {
                tenants: a.tenants.clone(),
                control_plane: a.control_plane,
                force: a.force,
                dry_run: a.dry_run,
            };
            let r = snapshot::snapshot(ctx, &opts).await?;
            let extra = Extra { archived_bytes: Some(r.archived_bytes()), ..Default::default() };
            (printer.report(job, id, started, r.exit_kind(), &r), extra)
        }
        Command::Restore(a) => {
            let source = match (&a.day, &a.run) {
                (Some(d), _) => restore::Source::Day(d.clone()),
                (_, Some(r)) => restore::Source::Run(r.clone()),
                _ if a.latest => restore::Source::Latest,
                _ => {
                    return Err(Error::Usage("restore needs one of --day YYYY-MM-DD, --run RUN_ID or --latest".into()))
                }
            };
            let opts = restore::RestoreOptions {
                tenant: a.tenant.clone(),
                source,
                remote: a.remote,
                to: a.to.clone(),
                dry_run: a.dry_run,
            };
            let r = restore::restore(ctx, &opts).await?;
            (printer.report(job, id, started, r.outcome, &r), Extra::default())
        }
        Command::Verify(a) => {
            let opts = verify::VerifyOptions { day: a.day.clone(), deep: a.deep, remote: a.remote };
            let r = if a.remote {
                verify::verify_remote(&ctx.cfg, &opts).await?
            } else {
                verify::verify(&ctx.cfg.backup_root, &opts).await?
            };
            (printer.report(job, None, started, r.exit_kind(), &r), Extra::default())
        }
        Command::Sync(a) => {
            let r = sync::sync(ctx, &sync::SyncOptions { dry_run: a.dry_run }).await?;
            let extra = Extra { uploaded_bytes: Some(r.uploaded_bytes), ..Default::default() };
            (printer.report(job, id, started, r.exit_kind(), &r), extra)
        }
        Command::Prune(a) => {
            let r = prune::prune(ctx, &prune::PruneOptions { dry_run: a.dry_run }).await?;
            (printer.report(job, id, started, r.exit_kind(), &r), Extra::default())
        }
        Command::Runs(_)
        | Command::Status
        | Command::Config { .. }
        | Command::Completions { .. }
        | Command::Man { .. } => {
            unreachable!("handled before the lock")
        }
    })
}

/// Metrics and notifications after a job; neither can change the job's outcome.
#[allow(clippy::too_many_arguments)]
async fn after_job(
    cli: &Cli,
    ctx: &Ctx,
    job: &str,
    kind: ExitKind,
    run_id: Option<String>,
    summary: &str,
    extra: Extra,
    started: Instant,
) {
    if let Some(path) = cli.metrics_file.as_ref().or(ctx.cfg.metrics.file.as_ref()) {
        let mut snapshots = BTreeMap::new();
        if let Ok(rows) = ctx.store.snapshots() {
            for s in rows.into_iter().filter(|s| s.kind == "daily") {
                let (Some(t), Ok(ts)) = (s.tenant, s.created_at.parse::<jiff::Timestamp>()) else { continue };
                let e = snapshots.entry(t).or_insert(0);
                *e = (*e).max(ts.as_second());
            }
        }
        let m = metrics::JobMetrics {
            job: job.to_string(),
            exit_code: kind.code(),
            ended: jiff::Timestamp::now().as_second(),
            duration_s: started.elapsed().as_secs_f64(),
            archived_bytes: extra.archived_bytes,
            uploaded_bytes: extra.uploaded_bytes,
            rolled: extra.rolled,
            halted: extra.halted,
            snapshots,
        };
        if let Err(e) = metrics::record(path, &m) {
            tracing::warn!("cannot write the metrics file: {e}");
        }
    }
    let notify_on = matches!(
        kind,
        ExitKind::Failure
            | ExitKind::Usage
            | ExitKind::Halted
            | ExitKind::PersonNeeded
            | ExitKind::RemoteAuth
            | ExitKind::Interrupted
    );
    if let (true, Some(hook)) = (notify_on, &ctx.cfg.notify.webhook) {
        let outcome = serde_json::to_value(kind).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        let n = notify::Notification::new(job, run_id, &outcome, kind.code(), summary);
        notify::send(hook, &n).await;
    }
}
