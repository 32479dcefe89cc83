//! `reconcile`: fetch the desired state; for each app whose pin differs from what runs, run
//! `rollout` — unless that exact (app, digest) already halted a rollout, failed, was killed
//! and recovered, or a person rolled its rollout back ([`rejection`]). Then nothing changes
//! until git pins another digest or a person passes `--retry`: a timer firing every minute must
//! never turn one bad release into a restart loop.

use std::fmt;

use serde::Serialize;

use crate::adapters::desired;
use crate::adapters::docker::Engine;
use crate::context::Ctx;
use crate::error::{Error, ExitKind, Result};
use crate::journal::Outcome;
use crate::rollout::{self, worst, AppReport, RolloutOptions};

/// Options of `reconcile`.
#[derive(Debug, Clone, Default)]
pub struct ReconcileOptions {
    /// Try a digest again even though it halted a rollout.
    pub retry: bool,
    /// Reconcile to this ref (the git hook passes the pushed commit).
    pub git_ref: Option<String>,
    /// Show what would happen, change nothing.
    pub dry_run: bool,
    /// Deploy a commit that does not descend from the one last deployed (a person's decision).
    pub allow_rewind: bool,
}

/// What reconcile decided for one app.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum AppAction {
    /// Every tenant runs the pin (or is held).
    UpToDate {
        /// App.
        app: String,
    },
    /// The pin halted an earlier rollout, or its rollout was rolled back; not retried.
    SkippedHalted {
        /// App.
        app: String,
        /// The digest.
        digest: String,
        /// The run it halted in (or the rollout that was rolled back).
        run_id: String,
        /// Why it is not retried: `halted`, `person_needed` or `rolled back by run …`.
        why: String,
    },
    /// A rollout of the app is paused over its failure budget: nothing starts beside it.
    Paused {
        /// App.
        app: String,
        /// The paused run.
        run_id: String,
        /// Since when.
        since: String,
        /// Why it paused.
        reason: String,
    },
    /// A rollout ran (or would run, in a dry run).
    RolledOut(Box<AppReport>),
}

/// The result of `slipway reconcile`.
#[derive(Debug, Clone, Serialize)]
pub struct ReconcileReport {
    /// Desired-state commit.
    pub commit: String,
    /// Per app.
    pub apps: Vec<AppAction>,
}

impl ReconcileReport {
    /// The worst outcome of the rollouts it ran.
    pub fn exit_kind(&self) -> ExitKind {
        worst(self.apps.iter().map(|a| match a {
            AppAction::RolledOut(r) => r.outcome,
            _ => ExitKind::Success,
        }))
    }
}

/// Why reconcile will not roll (app, digest) again by itself.
#[derive(Debug, Clone, Serialize)]
pub struct Rejection {
    /// The rollout run that halted, or that a person rolled back.
    pub run_id: String,
    /// `halted`, `person_needed`, `failed`, `recovered`, or `rolled back by run …`.
    pub why: String,
}

/// Whether the newest rollout of `digest` for `app` halted, needed a person, failed, was
/// killed and recovered, or was rolled back by a person: then the digest is rejected until git
/// pins another or `reconcile --retry`. A failed or killed run counts too: a release that
/// crashes slipway (or the host) must not be stopped, snapshotted and failed every minute.
pub fn rejection(ctx: &Ctx, app: &str, digest: &str) -> Result<Option<Rejection>> {
    let Some(run) = ctx.store.last_run_for("rollout", app, digest)? else {
        return Ok(None);
    };
    let outcome = run.outcome.as_deref().and_then(Outcome::of_word);
    let why = match (outcome, run.resolved_by.as_deref()) {
        (
            Some(
                o @ (Outcome::Exit(ExitKind::Halted | ExitKind::PersonNeeded | ExitKind::Failure) | Outcome::Recovered),
            ),
            _,
        ) => o.word().to_string(),
        // A rollback settles a halted run too; of a finished run it is a person's verdict on
        // the release, and the every-minute timer must not roll it right back out.
        (_, Some(by)) if by.starts_with("rollback ") => format!("rolled back by run {}", &by["rollback ".len()..]),
        _ => return Ok(None),
    };
    Ok(Some(Rejection { run_id: run.id, why }))
}

/// Run `reconcile`.
pub async fn reconcile(ctx: &mut Ctx, opts: &ReconcileOptions) -> Result<ReconcileReport> {
    let state = desired::read(&ctx.cfg.desired, &ctx.cfg.state_dir, opts.git_ref.as_deref())?;
    let engine = Engine::connect(&ctx.cfg.docker).await?;
    let mut apps = Vec::new();
    for app in &state.fleet.apps {
        // A paused run of the app is resumed or aborted by a person (or by its pause_timeout),
        // never rolled past.
        let paused = if opts.dry_run {
            ctx.store.open_pauses()?.into_iter().find(|p| p.app == app.name)
        } else {
            rollout::open_after_timeouts(ctx, app).await?
        };
        // A run its maintenance window paused goes on once the window opens (the resume
        // leaves it paused, touching nothing, while every tenant it has left is still outside).
        if let Some(p) = paused.as_ref().filter(|p| p.kind == "window" && !opts.dry_run) {
            let run: crate::types::RunId =
                p.run_id.parse().map_err(|e| Error::Other(format!("paused run {}: {e}", p.run_id)))?;
            let ro = RolloutOptions { resume: Some(run), ..Default::default() };
            let report = rollout::rollout(ctx, &ro).await?;
            let stop = report.exit_kind() != ExitKind::Success;
            apps.extend(report.apps.into_iter().map(|a| AppAction::RolledOut(Box::new(a))));
            if stop {
                break;
            }
            continue;
        }
        if let Some(p) = paused {
            apps.push(AppAction::Paused {
                app: app.name.clone(),
                run_id: p.run_id,
                since: p.paused_at,
                reason: p.reason,
            });
            continue;
        }
        let (plan, digest) = match &app.stack {
            None => {
                let (tenants, unmapped) = engine.tenants_and_unmapped(app).await?;
                (rollout::plan(app, &state.commit, &tenants, unmapped, &[])?, app.image.digest().to_string())
            }
            Some(st) => {
                let (members, unmapped) = engine.stack_members(app, st).await?;
                (rollout::stack_plan::plan_stack(app, st, &state.commit, &members, unmapped, &[])?, st.pin_key())
            }
        };
        if plan.items.is_empty() {
            apps.push(AppAction::UpToDate { app: app.name.clone() });
            continue;
        }
        if !opts.retry {
            if let Some(r) = rejection(ctx, &app.name, &digest)? {
                apps.push(AppAction::SkippedHalted { app: app.name.clone(), digest, run_id: r.run_id, why: r.why });
                continue;
            }
        }
        let ro = RolloutOptions {
            app: Some(app.name.clone()),
            git_ref: Some(state.commit.clone()),
            dry_run: opts.dry_run,
            allow_rewind: opts.allow_rewind,
            ..Default::default()
        };
        let report = rollout::rollout(ctx, &ro).await?;
        let stop = report.exit_kind() != ExitKind::Success;
        apps.extend(report.apps.into_iter().map(|a| AppAction::RolledOut(Box::new(a))));
        if stop {
            break;
        }
    }
    Ok(ReconcileReport { commit: state.commit, apps })
}

impl fmt::Display for ReconcileReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "desired state at commit {}", &self.commit[..12.min(self.commit.len())])?;
        for a in &self.apps {
            match a {
                AppAction::UpToDate { app } => writeln!(f, "app {app}: up to date")?,
                AppAction::SkippedHalted { app, digest, run_id, why } => writeln!(
                    f,
                    "app {app}: {digest} not rolled out: run {run_id} {why}; not retried until git pins another digest or `slipway reconcile --retry`"
                )?,
                AppAction::Paused { app, run_id, since, reason } => writeln!(
                    f,
                    "app {app}: run {run_id} is paused since {since} ({reason}); nothing started beside it: `slipway \
                     rollout resume {run_id}` or `slipway rollout abort {run_id}`"
                )?,
                AppAction::RolledOut(r) => {
                    let one = rollout::RolloutReport { dry_run: false, commit: self.commit.clone(), apps: vec![(**r).clone()],
                        trust: None,
                    };
                    write!(f, "{one}")?;
                }
            }
        }
        Ok(())
    }
}
