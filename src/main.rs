//! slipway's CLI: parse arguments, load config, take the host lock, call one job, render its
//! report (human or `--json`), write metrics, notify on failure, and map the outcome to an
//! exit code. No Docker, git or archive logic lives here.

mod cli;
mod output;

use std::process::ExitCode;
use std::time::Instant;

use clap::{CommandFactory, Parser};
use slipway_jobs::config::HostConfig;
use slipway_jobs::context::{Cancel, Ctx};
use slipway_jobs::error::{Error, ExitKind};
use slipway_jobs::{reconcile, recover, restore, rollback, rollout, runs, snapshot, verify};

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
        Command::Man => {
            return match clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()) {
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
    let (kind, run_id) = runtime.block_on(async {
        match run(&cli, &printer, started).await {
            Ok(o) => (o.kind, o.run_id),
            Err(e) => {
                printer.error(job, &e, started);
                (e.exit_kind(), None)
            }
        }
    });
    tracing::debug!(job, run_id, code = kind.code(), "done");
    ExitCode::from(kind.code())
}

/// Install SIGINT/SIGTERM handlers that ask the job to stop at its next safe point.
fn watch_signals(cancel: Cancel) {
    use tokio::signal::unix::{signal, SignalKind};
    for kind in [SignalKind::interrupt(), SignalKind::terminate()] {
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
        let state = slipway_jobs::desired::read(&cfg.desired, &cfg.state_dir, None)?;
        let report = output::ConfigCheck::new(&path, &cfg, &state);
        return Ok(printer.report(job, None, started, ExitKind::Success, &report));
    }
    let cancel = Cancel::new();
    watch_signals(cancel.clone());
    let mut ctx = Ctx::open(cfg, &cli.trigger, cancel)?;

    // Read-only jobs take no lock.
    match &cli.command {
        Command::Runs(a) => {
            return Ok(match &a.show {
                Some(RunsShow::Show { run }) => {
                    let r = runs::show(&ctx, run)?;
                    printer.report(job, None, started, ExitKind::Success, &r)
                }
                None => {
                    let r = runs::list(&ctx, a.limit)?;
                    printer.report(job, None, started, ExitKind::Success, &r)
                }
            });
        }
        Command::Recover(a) if a.dry_run => {
            let r = recover::recover(&ctx, &recover::RecoverOptions { dry_run: true }).await?;
            return Ok(printer.report(job, None, started, r.exit_kind(), &r));
        }
        _ => {}
    }

    // Jobs that change containers first finish or undo what a killed run left behind.
    let changes_containers = matches!(
        cli.command,
        Command::Rollout(_) | Command::Reconcile(_) | Command::Rollback(_) | Command::Restore(_) | Command::Snapshot(_)
    );
    let dry = cli.command.dry_run();
    if changes_containers && !dry {
        let r = recover::recover(&ctx, &recover::RecoverOptions { dry_run: false }).await?;
        if !r.runs.is_empty() {
            tracing::warn!("recovered {} unfinished run(s) before {job}: {}", r.runs.len(), r.to_string().trim_end());
            if r.exit_kind() != ExitKind::Success {
                return Ok(printer.report("recover", Some(ctx.run_id.to_string()), started, r.exit_kind(), &r));
            }
            // The recover run used this id; the job gets its own.
            ctx.run_id = slipway_jobs::types::RunId::new();
        }
    }

    let outcome = match &cli.command {
        Command::Rollout(a) => {
            let opts = rollout::RolloutOptions {
                app: a.app.clone(),
                git_ref: a.git_ref.clone(),
                tenants: a.tenants.clone(),
                dry_run: a.dry_run,
                keep_old: a.keep_old,
            };
            let r = rollout::rollout(&mut ctx, &opts).await?;
            let id = r.apps.iter().rev().find_map(|a| a.run_id.as_ref()).map(|r| r.to_string());
            printer.report(job, id, started, r.exit_kind(), &r)
        }
        Command::Reconcile(a) => {
            let opts = reconcile::ReconcileOptions { retry: a.retry, git_ref: a.git_ref.clone(), dry_run: a.dry_run };
            let r = reconcile::reconcile(&mut ctx, &opts).await?;
            printer.report(job, None, started, r.exit_kind(), &r)
        }
        Command::Rollback(a) => {
            let opts = rollback::RollbackOptions { run: a.run.clone(), tenants: a.tenants.clone(), dry_run: a.dry_run };
            let r = rollback::rollback(&ctx, &opts).await?;
            printer.report(job, Some(ctx.run_id.to_string()), started, r.outcome, &r)
        }
        Command::Recover(_) => {
            let r = recover::recover(&ctx, &recover::RecoverOptions { dry_run: false }).await?;
            printer.report(job, Some(ctx.run_id.to_string()), started, r.exit_kind(), &r)
        }
        Command::Snapshot(a) => {
            let opts = snapshot::SnapshotOptions {
                tenants: a.tenants.clone(),
                control_plane: a.control_plane,
                force: a.force,
                dry_run: a.dry_run,
            };
            let r = snapshot::snapshot(&ctx, &opts).await?;
            printer.report(job, Some(ctx.run_id.to_string()), started, r.exit_kind(), &r)
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
            let r = restore::restore(&ctx, &opts).await?;
            printer.report(job, Some(ctx.run_id.to_string()), started, r.outcome, &r)
        }
        Command::Verify(a) => {
            let opts = verify::VerifyOptions { day: a.day.clone(), deep: a.deep, remote: a.remote };
            let r = verify::verify(&ctx.cfg.backup_root, &opts).await?;
            printer.report(job, None, started, r.exit_kind(), &r)
        }
        Command::Status => {
            let r = slipway_jobs::status::status(&ctx).await?;
            printer.report(job, None, started, r.exit_kind(), &r)
        }
        _ => return Err(Error::Usage(format!("`slipway {job}` is not available in this build yet"))),
    };
    Ok(outcome)
}
