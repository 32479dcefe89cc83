//! The command line: every job of DESIGN.md as a subcommand, with the global options.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use slipway_jobs::config::Selector;
use slipway_jobs::types::{RunId, TenantId};

/// GitOps-driven rollout and backup engine for Docker hosts that run one container per tenant.
///
/// Every command is a one-shot job (cron, systemd timer, git hook or by hand): it reads the
/// desired state from git, looks at what runs, does its work and records it in SQLite.
#[derive(Debug, Parser)]
#[command(name = "slipway", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    /// Host config file [default: $SLIPWAY_CONFIG, else /etc/slipway/config.toml]
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Print one JSON object on stdout instead of human output.
    #[arg(long, global = true)]
    pub json: bool,
    /// Print nothing on stdout unless something failed.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// Wait for the host lock (optionally at most SECONDS) instead of exiting with code 5.
    #[arg(long, global = true, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "0")]
    pub wait: Option<u64>,
    /// Write Prometheus metrics to this file after the job [default: [metrics] file].
    #[arg(long, global = true, value_name = "PATH")]
    pub metrics_file: Option<PathBuf>,
    /// age identity file that decrypts an encrypted off-site copy (restore --remote, verify
    /// --remote --deep, drill) [default: [remote] identity_file]. Read only when needed, never stored.
    #[arg(long, global = true, value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// What started this job, recorded with the run (manual, timer, cron, hook).
    #[arg(long, global = true, default_value = "manual", hide = true)]
    pub trigger: String,
    /// The job to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Readable lines.
    Human,
    /// One JSON object per line (journald, Loki).
    Json,
}

/// The jobs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Roll every tenant of an app to the digest pinned in git, canary first, one at a time.
    Rollout(RolloutArgs),
    /// Fetch the desired state and roll out any app whose pin differs (never retries a halted digest).
    Reconcile(ReconcileArgs),
    /// Undo a halted or finished rollout: prior container and snapshot back.
    Rollback(RollbackArgs),
    /// Archive every tenant's data (each mount of a stack) and the control plane into today's daily snapshot.
    Snapshot(SnapshotArgs),
    /// Bring one tenant's data back from a daily or rollout snapshot, local or remote.
    Restore(RestoreArgs),
    /// Prove a backup restores: restore tenants into scratch and health-check a throw-away copy.
    Drill(DrillArgs),
    /// Re-hash archives against their manifests; --deep also extracts and checks every file.
    Verify(VerifyArgs),
    /// Apply the retention policy to local and remote snapshots.
    Prune(DryRunArgs),
    /// Upload snapshots the remote lacks, verified by sha256.
    Sync(DryRunArgs),
    /// Finish or undo runs that a crash or kill left unfinished.
    Recover(DryRunArgs),
    /// What runs vs what is desired; exits 8 when a person is needed.
    Status,
    /// Run history from the run record.
    Runs(RunsArgs),
    /// Adopt a running host: propose fleet.toml and a host config from the containers that run.
    Init(InitArgs),
    /// Check what a first run needs: Docker, dirs, free space, desired repo, remote, timers.
    Doctor,
    /// Check the host config and the desired state without touching anything.
    Config {
        /// What to do.
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Print shell completions.
    Completions {
        /// Shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), or write one page per command into a directory.
    Man {
        /// Write slipway.1 and one slipway-COMMAND.1 per command into DIR instead of printing.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// `config` actions.
#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Load and validate the host config and fleet.toml at the branch head.
    Check,
    /// Print the systemd drop-in that lets slipway's units write this host's dirs (state, backups,
    /// every app's data dirs), computed from the config and fleet.toml; --write installs it.
    Sandbox {
        /// Write it to /etc/systemd/system/slipway-.service.d/50-write-paths.conf and reload systemd.
        #[arg(long)]
        write: bool,
    },
    /// Print the Traefik file-provider routes that hold customers' requests across a switch
    /// (README, "A switch no request fails on") for every tenant of an app with [app.proxy] that
    /// keeps a fixed address; --write FILE writes them where Traefik's file provider watches.
    HeldRoutes {
        /// Write them to FILE (atomically, 0644); its dir must exist.
        #[arg(long, value_name = "FILE")]
        write: Option<PathBuf>,
    },
}

/// `init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Write config.toml (mode 0600) and fleet.toml into DIR.
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub dir: PathBuf,
    /// Print the proposal and both files; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Overwrite config.toml and fleet.toml if they exist.
    #[arg(long)]
    pub force: bool,
    /// Only look at containers this selector matches: LABEL=VALUE, LABEL or name:PREFIX*.
    #[arg(long, value_name = "SELECT")]
    pub only: Option<Selector>,
}

/// `rollout resume RUN` / `rollout abort RUN`.
#[derive(Debug, Subcommand)]
pub enum RolloutAction {
    /// Go on with a rollout paused over its failure budget: its release, its frozen waves, the tenants it has not reached.
    Resume {
        /// The paused rollout run (see `slipway status` or `slipway runs`).
        #[arg(value_name = "RUN_ID")]
        run: RunId,
    },
    /// End a paused rollout: roll back every tenant it rolled, each with its data.
    Abort {
        /// The paused rollout run.
        #[arg(value_name = "RUN_ID")]
        run: RunId,
    },
}

/// `rollout`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct RolloutArgs {
    /// `resume RUN` or `abort RUN` of a paused rollout; without one, roll out.
    #[command(subcommand)]
    pub action: Option<RolloutAction>,
    /// Only this app.
    #[arg(long)]
    pub app: Option<String>,
    /// Desired state at this git ref (branch, tag or commit) instead of the configured branch.
    #[arg(long = "ref", value_name = "GIT_REF")]
    pub git_ref: Option<String>,
    /// Only this tenant (repeatable).
    #[arg(long = "tenant", value_name = "ID")]
    pub tenants: Vec<TenantId>,
    /// Print the plan and touch nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Keep the pre-rollout containers after a successful rollout.
    #[arg(long)]
    pub keep_old: bool,
    /// Deploy a commit that is not a descendant of the one last deployed (after a force-push).
    #[arg(long)]
    pub allow_rewind: bool,
    /// Roll at most N tenants of each wave at once (overrides `max_parallel` of
    /// `[app.rollout]` and its waves; the canary is always alone).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub max_parallel: Option<u16>,
    /// This run's failure budget: at most N tenants may fail (overrides `max_failed` of
    /// `[app.rollout]`; a `rollout resume` uses fleet.toml's).
    #[arg(long, value_name = "N")]
    pub max_failed: Option<u32>,
    /// This run's failure budget as a share of its tenants, 0 to 1 (overrides
    /// `max_failure_ratio`).
    #[arg(long, value_name = "R", value_parser = parse_ratio)]
    pub max_failure_ratio: Option<f64>,
    /// What this run does over its budget: halt, pause, rollback-wave or rollback-all
    /// (overrides `on_budget`).
    #[arg(long, value_name = "MODE", value_parser = parse_on_budget)]
    pub on_budget: Option<slipway_jobs::config::OnBudget>,
    /// This run's waves, from FILE: `[[waves]]` tables written as `[[app.rollout.waves]]` are
    /// (and optionally the last wave's max_parallel, min_healthy, progress_deadline_s, and
    /// order_by); they replace the app's for this run, and a resume keeps them.
    #[arg(long, value_name = "FILE")]
    pub waves: Option<std::path::PathBuf>,
}

/// An `on_budget` word, as fleet.toml takes it.
fn parse_on_budget(s: &str) -> Result<slipway_jobs::config::OnBudget, String> {
    slipway_jobs::config::OnBudget::ALL
        .into_iter()
        .find(|m| m.as_str() == s)
        .ok_or_else(|| format!("{s:?}: give halt, pause, rollback-wave or rollback-all"))
}

/// A failure ratio: a number from 0 to 1.
fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{s:?} is not a share of the tenants: give a number from 0 to 1, e.g. 0.05")),
    }
}

/// `reconcile`.
#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// Try a digest that halted a rollout again.
    #[arg(long)]
    pub retry: bool,
    /// Reconcile to this ref (the git hook passes the pushed commit).
    #[arg(long = "ref", value_name = "GIT_REF")]
    pub git_ref: Option<String>,
    /// Show what would happen and touch nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Deploy a commit that is not a descendant of the one last deployed (after a force-push).
    #[arg(long)]
    pub allow_rewind: bool,
}

/// `rollback`.
#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The rollout run to undo (see `slipway runs`).
    #[arg(long, value_name = "RUN_ID")]
    pub run: RunId,
    /// Only this tenant (repeatable).
    #[arg(long = "tenant", value_name = "ID")]
    pub tenants: Vec<TenantId>,
    /// Show what would be undone and touch nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `snapshot`.
#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// Only this tenant (repeatable).
    #[arg(long = "tenant", value_name = "ID")]
    pub tenants: Vec<TenantId>,
    /// Also archive the control-plane dirs.
    #[arg(long)]
    pub control_plane: bool,
    /// Redo archives already complete today.
    #[arg(long)]
    pub force: bool,
    /// Show the plan and touch nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The tenant to restore.
    #[arg(long, value_name = "ID")]
    pub tenant: TenantId,
    /// From the daily snapshot of this day (YYYY-MM-DD).
    #[arg(long, value_name = "YYYY-MM-DD", group = "source")]
    pub day: Option<String>,
    /// From the snapshot taken by this rollout run.
    #[arg(long, value_name = "RUN_ID", group = "source")]
    pub run: Option<RunId>,
    /// From the newest snapshot of the tenant.
    #[arg(long, group = "source")]
    pub latest: bool,
    /// Download the archive from the remote first.
    #[arg(long)]
    pub remote: bool,
    /// Restore into this directory instead (a stack tenant: each mount into DIR/<n>); touch no container.
    #[arg(long, value_name = "DIR")]
    pub to: Option<PathBuf>,
    /// Show what would be restored and touch nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `drill`: restore each chosen tenant's snapshot into a scratch dir and start a throw-away
/// container of its current image on it, on an internal network of its own with no routing
/// labels, no published ports and no alias of the tenant; health-check it, record the times,
/// remove it all. The live tenant is never touched.
#[derive(Debug, Args)]
pub struct DrillArgs {
    /// Drill this tenant (repeatable).
    #[arg(long = "tenant", value_name = "ID", required_unless_present = "all", conflicts_with = "all")]
    pub tenants: Vec<TenantId>,
    /// Drill every tenant of every app, one at a time.
    #[arg(long)]
    pub all: bool,
    /// Fetch the archives from the remote (as `restore --remote` does).
    #[arg(long)]
    pub remote: bool,
    /// From the daily snapshot of this day (YYYY-MM-DD).
    #[arg(long, value_name = "YYYY-MM-DD", conflicts_with = "latest")]
    pub day: Option<String>,
    /// From each tenant's newest snapshot (the default).
    #[arg(long)]
    pub latest: bool,
    /// Show which tenants would be drilled and touch nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Only this day (YYYY-MM-DD).
    #[arg(long, value_name = "YYYY-MM-DD")]
    pub day: Option<String>,
    /// Also extract into a scratch dir and check every file's hash.
    #[arg(long)]
    pub deep: bool,
    /// Verify the remote copies instead of the local ones.
    #[arg(long)]
    pub remote: bool,
}

/// Jobs whose only option is `--dry-run`.
#[derive(Debug, Args)]
pub struct DryRunArgs {
    /// Show what would be done and touch nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `runs`.
#[derive(Debug, Args)]
pub struct RunsArgs {
    /// Show one run.
    #[command(subcommand)]
    pub show: Option<RunsShow>,
    /// How many runs to list.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
}

/// `runs show`.
#[derive(Debug, Subcommand)]
pub enum RunsShow {
    /// Every step of one run.
    Show {
        /// Run id.
        run: String,
    },
}

impl Command {
    /// The job name recorded and reported.
    pub fn job(&self) -> &'static str {
        match self {
            Command::Rollout(_) => "rollout",
            Command::Reconcile(_) => "reconcile",
            Command::Rollback(_) => "rollback",
            Command::Snapshot(_) => "snapshot",
            Command::Restore(_) => "restore",
            Command::Drill(_) => "drill",
            Command::Verify(_) => "verify",
            Command::Prune(_) => "prune",
            Command::Sync(_) => "sync",
            Command::Recover(_) => "recover",
            Command::Status => "status",
            Command::Init(_) => "init",
            Command::Doctor => "doctor",
            Command::Runs(_) => "runs",
            Command::Config { .. } => "config",
            Command::Completions { .. } => "completions",
            Command::Man { .. } => "man",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_definition_is_valid() {
        Cli::command().debug_assert();
    }
}
