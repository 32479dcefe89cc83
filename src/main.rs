//! slipway's CLI: parse arguments, load the host config, hand the job to the runner
//! (`slipway_jobs::runner`: lock, recover first, run record, metrics, notifications), render its
//! report (human or `--json`) and map the outcome to an exit code. No job rules live here.

mod cli;
mod output;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{CommandFactory, Parser};
use slipway_jobs::config::HostConfig;
use slipway_jobs::context::Cancel;
use slipway_jobs::error::{Error, ExitKind};
use slipway_jobs::runner::{self, Job, RunnerOptions};
use slipway_jobs::{
    doctor, drill, init, prune, reconcile, recover, restore, rollback, rollout, snapshot, sync, verify,
};

use crate::cli::{Cli, Command, ConfigAction, RunsShow};
use crate::output::Printer;

fn main() -> ExitCode {
    // The confined SQLite copier (slipway_jobs::adapters::sqlite), started by a snapshot: it
    // must run before any thread exists (it unshares its mount namespace and changes its uid),
    // so it is dispatched here, before clap, logging and the runtime.
    let mut args = std::env::args_os().skip(1);
    if args.next().is_some_and(|a| a == slipway_jobs::adapters::sqlite::CHILD_ARG) {
        return ExitCode::from(slipway_jobs::adapters::sqlite::child_main(&args.collect::<Vec<_>>()));
    }
    let cli = Cli::parse();
    output::init_logging(cli.log_format);
    slipway_jobs::fsutil::raise_open_files_limit();
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
            Ok(kind) => kind,
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

async fn run(cli: &Cli, printer: &Printer, started: Instant) -> Result<ExitKind, Error> {
    if let Command::Init(a) = &cli.command {
        // The one command that needs no host config: it writes one.
        let opts = init::InitOptions { dir: a.dir.clone(), dry_run: a.dry_run, force: a.force, only: a.only.clone() };
        let report = init::init(&opts).await?;
        let kind = report.exit_kind();
        printer.report("init", None, started, kind, &report);
        return Ok(kind);
    }
    let path = HostConfig::locate(cli.config.as_deref());
    let mut cfg = HostConfig::load(&path)?;
    if let Some(file) = &cli.identity {
        cfg.use_identity(file)?;
    }
    if let Command::Config { action: ConfigAction::Sandbox { write } } = &cli.command {
        // Not a job either: it reads the config and fleet.toml and writes one systemd drop-in.
        let report = doctor::sandbox(&cfg, *write).await?;
        printer.report("config", None, started, ExitKind::Success, &report);
        return Ok(ExitKind::Success);
    }
    if let Command::Config { action: ConfigAction::HeldRoutes { write } } = &cli.command {
        // Not a job either: it reads fleet.toml and the engine and writes at most one file.
        let report = slipway_jobs::held_routes::held_routes(&cfg, write.as_deref()).await?;
        printer.report("config", None, started, ExitKind::Success, &report);
        return Ok(ExitKind::Success);
    }
    if let Command::Doctor = &cli.command {
        // Not a job: no lock, no run record, so it can run beside any job.
        let report = doctor::doctor(&cfg, &path).await?;
        let kind = report.exit_kind();
        printer.report("doctor", None, started, kind, &report);
        return Ok(kind);
    }
    let job = match job(&cli.command)? {
        Some(job) => job,
        None => {
            // `config check`: the only command that is not a job.
            let state = slipway_jobs::adapters::desired::read(&cfg.desired, &cfg.state_dir, None)?;
            let report = output::ConfigCheck::new(&path, &cfg, &state);
            printer.report("config", None, started, ExitKind::Success, &report);
            return Ok(ExitKind::Success);
        }
    };
    let cancel = Cancel::new();
    watch_signals(cancel.clone());
    let opts = RunnerOptions {
        trigger: cli.trigger.clone(),
        // --wait (or --wait=0): wait as long as it takes; --wait=N: at most N seconds.
        wait: cli.wait.map(|s| if s == 0 { Duration::MAX } else { Duration::from_secs(s) }),
        metrics_file: cli.metrics_file.clone(),
        progress: std::sync::Arc::new(output::CliProgress::new(cli.json)),
        cancel,
    };
    let done = runner::run(cfg, job, opts).await;
    match &done.result {
        Ok(report) => printer.report(done.job, done.run_id.clone(), started, done.outcome, report),
        Err(e) => printer.error(done.job, e, started),
    }
    Ok(done.outcome)
}

/// The job a command runs with its options; None for `config check`.
fn job(command: &Command) -> Result<Option<Job>, Error> {
    Ok(Some(match command {
        Command::Rollout(a) => match &a.action {
            Some(cli::RolloutAction::Abort { run }) => Job::Rollback(rollback::RollbackOptions {
                run: run.clone(),
                tenants: Vec::new(),
                dry_run: false,
                abort: true,
            }),
            Some(cli::RolloutAction::Resume { run }) => Job::Rollout(rollout::RolloutOptions {
                resume: Some(run.clone()),
                keep_old: a.keep_old,
                ..Default::default()
            }),
            None => Job::Rollout(rollout::RolloutOptions {
                app: a.app.clone(),
                git_ref: a.git_ref.clone(),
                tenants: a.tenants.clone(),
                dry_run: a.dry_run,
                keep_old: a.keep_old,
                allow_rewind: a.allow_rewind,
                max_parallel: a.max_parallel.map(usize::from),
                budget: rollout::BudgetOverride {
                    max_failed: a.max_failed.map(|n| n as usize),
                    max_failure_ratio: a.max_failure_ratio,
                    on_budget: a.on_budget,
                },
                waves: a.waves.clone(),
                resume: None,
            }),
        },
        Command::Reconcile(a) => Job::Reconcile(reconcile::ReconcileOptions {
            retry: a.retry,
            git_ref: a.git_ref.clone(),
            dry_run: a.dry_run,
            allow_rewind: a.allow_rewind,
        }),
        Command::Rollback(a) => Job::Rollback(rollback::RollbackOptions {
            run: a.run.clone(),
            tenants: a.tenants.clone(),
            dry_run: a.dry_run,
            abort: false,
        }),
        Command::Recover(a) => Job::Recover(recover::RecoverOptions { dry_run: a.dry_run }),
        Command::Snapshot(a) => Job::Snapshot(snapshot::SnapshotOptions {
            tenants: a.tenants.clone(),
            control_plane: a.control_plane,
            force: a.force,
            dry_run: a.dry_run,
        }),
        Command::Restore(a) => {
            let source = match (&a.day, &a.run) {
                (Some(d), _) => restore::Source::Day(d.clone()),
                (_, Some(r)) => restore::Source::Run(r.clone()),
                _ if a.latest => restore::Source::Latest,
                _ => {
                    return Err(Error::Usage("restore needs one of --day YYYY-MM-DD, --run RUN_ID or --latest".into()))
                }
            };
            Job::Restore(restore::RestoreOptions {
                tenant: a.tenant.clone(),
                source,
                remote: a.remote,
                to: a.to.clone(),
                dry_run: a.dry_run,
            })
        }
        Command::Drill(a) => Job::Drill(drill::DrillOptions {
            tenants: a.tenants.clone(),
            all: a.all,
            remote: a.remote,
            source: match &a.day {
                Some(d) => restore::Source::Day(d.clone()),
                None => restore::Source::Latest,
            },
            dry_run: a.dry_run,
        }),
        Command::Verify(a) => Job::Verify(verify::VerifyOptions { day: a.day.clone(), deep: a.deep, remote: a.remote }),
        Command::Sync(a) => Job::Sync(sync::SyncOptions { dry_run: a.dry_run }),
        Command::Prune(a) => Job::Prune(prune::PruneOptions { dry_run: a.dry_run }),
        Command::Status => Job::Status,
        Command::Runs(a) => match &a.show {
            Some(RunsShow::Show { run }) => Job::RunShow { run: run.clone() },
            None => Job::Runs { limit: a.limit },
        },
        Command::Config { action: ConfigAction::Check } => return Ok(None),
        Command::Completions { .. }
        | Command::Man { .. }
        | Command::Init(_)
        | Command::Doctor
        | Command::Config { action: ConfigAction::Sandbox { .. } | ConfigAction::HeldRoutes { .. } } => {
            return Err(Error::Usage(format!("{} is not a job", command.job())));
        }
    }))
}
