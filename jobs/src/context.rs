//! What every job run shares: the host config, the run record, the run's id, how it was
//! triggered, the host lock, and the flag a SIGINT/SIGTERM sets.
//!
//! The run record has one owner, this module. Run ids are made here and only here
//! (`RunId::new` is called nowhere else, a test checks): one when the context opens (the id the
//! runner takes the lock with), and a fresh one by [`Ctx::next_run_id`] when a process starts a
//! second run record (recover before a job, one rollout run per app). A run is started only by
//! [`Ctx::start_run`] (or [`Ctx::reopen_run`], a paused rollout going on), which names its job
//! and id as the lock's holder and hands back a [`RunGuard`]; the guard is the only way to
//! finish a run, with an [`Outcome`] — never a word spelled by hand. A guard dropped unfinished
//! (the job returned an error, or panicked) leaves its run unfinished in the record, on purpose:
//! its journal is what `recover` needs to give back what the run held, and the next job that
//! changes containers runs `recover` first (a run marked finished here would hide it). `recover`
//! finishes the runs of dead processes through [`RunGuard::finish_dead_run`].
//!
//! Also the journal helpers (a step row is written before the step starts and after it ends);
//! the test-only crash points are re-exported from [`crate::testpoint`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::Serialize;
use slipway_state::{NewRun, Store};

use crate::adapters::lock::HostLock;
use crate::config::HostConfig;
use crate::error::{Error, Result};
use crate::journal::{JournalStep, Outcome};
use crate::types::RunId;

use crate::testpoint::journal_refused;
/// The test-only points, for the jobs (they live in the model: see [`crate::testpoint`]).
pub use crate::testpoint::{crash_point, test_pause, test_refuses, window_now};

/// Set when the process got SIGINT or SIGTERM: jobs finish or undo the current step and stop.
#[derive(Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// A flag nobody has set.
    pub fn new() -> Cancel {
        Cancel::default()
    }
    /// Ask the job to stop at the next safe point.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    /// Whether a stop was asked for.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// The shared inputs of a job run.
pub struct Ctx {
    /// Host config.
    pub cfg: HostConfig,
    /// The run record.
    pub store: Store,
    /// This run's id: read with [`Ctx::run_id`], made only by [`Ctx::next_run_id`] and
    /// [`Ctx::reopen_run`].
    run_id: RunId,
    /// manual, timer, hook, reconcile, …
    pub trigger: String,
    /// SIGINT/SIGTERM flag.
    pub cancel: Cancel,
    /// Where long work reports progress (bars on a terminal, log lines otherwise).
    pub progress: Arc<dyn crate::progress::Progress>,
    /// The host lock, while the runner holds it.
    lock: Option<HostLock>,
    /// Whether a run record was started under `run_id`.
    run_started: AtomicBool,
}

impl Ctx {
    /// Open the run record in the state dir (created 0700 if missing).
    pub fn open(cfg: HostConfig, trigger: &str, cancel: Cancel) -> Result<Ctx> {
        crate::fsutil::create_private_dir(&cfg.state_dir).map_err(|e| Error::io(&cfg.state_dir, e))?;
        let store = Store::open(&cfg.state_dir.join("state.db"))?;
        Ok(Ctx {
            cfg,
            store,
            run_id: RunId::new(),
            trigger: trigger.to_string(),
            cancel,
            progress: Arc::new(crate::progress::NoProgress),
            lock: None,
            run_started: AtomicBool::new(false),
        })
    }

    /// Keep the host lock for the rest of the run (released when the context drops).
    pub fn hold_lock(&mut self, lock: HostLock) {
        self.lock = Some(lock);
    }

    /// This run's id (the run record's, once [`Ctx::start_run`] started it).
    pub fn run_id(&self) -> &RunId {
        &self.run_id
    }

    /// The host lock, while held.
    pub fn lock(&self) -> Option<&HostLock> {
        self.lock.as_ref()
    }

    /// The id for the next run record: `run_id` while no run record uses it, else a fresh one.
    pub fn next_run_id(&mut self) -> &RunId {
        if self.run_started.swap(false, Ordering::SeqCst) {
            self.run_id = RunId::new();
        }
        &self.run_id
    }

    /// Record this run as started, and name it as the lock's holder. The guard it returns is
    /// how the run is finished.
    pub fn start_run(
        &self,
        job: &str,
        app: Option<&str>,
        commit: Option<&str>,
        digest: Option<&str>,
    ) -> Result<RunGuard> {
        self.store.start_run(&NewRun {
            id: self.run_id.as_str(),
            job,
            trigger: &self.trigger,
            app,
            git_commit: commit,
            digest,
        })?;
        self.run_started.store(true, Ordering::SeqCst);
        self.publish(job);
        Ok(RunGuard { id: self.run_id.clone(), finished: false })
    }

    /// Open the finished run `id` again, by this process, and go on with it under its own id
    /// (`rollout resume`: one run, one journal, one rollback).
    pub fn reopen_run(&mut self, job: &str, id: &RunId) -> Result<RunGuard> {
        self.store.reopen_run(id.as_str())?;
        self.run_id = id.clone();
        self.run_started.store(true, Ordering::SeqCst);
        self.publish(job);
        Ok(RunGuard { id: id.clone(), finished: false })
    }

    /// Record a run that `trust` refused, under an id of its own, started and finished at once
    /// with outcome `refused` (so `runs` and `status` show it). A failure to record it is only
    /// logged: the refusal stands either way.
    pub fn record_refused(&self, job: &str, app: Option<&str>, commit: &str, why: &str) {
        let id = RunId::new();
        let recorded = self
            .store
            .start_run(&NewRun {
                id: id.as_str(),
                job,
                trigger: &self.trigger,
                app,
                git_commit: Some(commit),
                digest: None,
            })
            .map_err(Error::from)
            .and_then(|()| RunGuard { id, finished: false }.finish(self, Outcome::Refused, why));
        if let Err(e) = recorded {
            tracing::warn!("could not record the refused run: {e}");
        }
    }

    /// Name `job` and this run as the lock's holder (a warning when that fails: the lock is
    /// held either way).
    pub fn publish(&self, job: &str) {
        if let Some(lock) = &self.lock {
            if let Err(e) = lock.publish(job, &self.run_id) {
                tracing::warn!("cannot name run {} as the lock's holder: {e}", self.run_id);
            }
        }
    }

    /// Journal a step as begun with its undo detail.
    pub fn begin(&self, tenant: Option<&str>, step: impl JournalStep, detail: &impl Serialize) -> Result<i64> {
        journal_refused()?;
        let d =
            serde_json::to_string(detail).map_err(|source| Error::Json { what: "a journal step's detail", source })?;
        Ok(self.store.begin_step(self.run_id.as_str(), tenant, step.word(), &d)?)
    }

    /// `recover` only: journal `step` as done (begun and ended `ok`) in the journal of `run`, a
    /// run of a dead process whose hold or swap recover gave back, so that the run is not taken
    /// up again.
    pub fn journal_done(
        &self,
        run: &str,
        tenant: Option<&str>,
        step: impl JournalStep,
        detail: &impl Serialize,
    ) -> Result<()> {
        journal_refused()?;
        let d =
            serde_json::to_string(detail).map_err(|source| Error::Json { what: "a journal step's detail", source })?;
        let id = self.store.begin_step(run, tenant, step.word(), &d)?;
        Ok(self.store.end_step(id, "ok", None)?)
    }

    /// Journal step `ended` as ended well and `next` as begun, in one write, both with `detail`
    /// (nothing happens between them, so it is the same). Returns the begun row's id.
    pub fn end_and_begin(
        &self,
        ended: i64,
        tenant: Option<&str>,
        next: impl JournalStep,
        detail: &impl Serialize,
    ) -> Result<i64> {
        journal_refused()?;
        let d =
            serde_json::to_string(detail).map_err(|source| Error::Json { what: "a journal step's detail", source })?;
        Ok(self.store.end_step_and_begin(ended, "ok", Some(&d), self.run_id.as_str(), tenant, next.word(), &d)?)
    }

    /// Record an archive this run wrote in the run record (`rel` is relative to the backup root;
    /// `kind` daily, rollout or control-plane; `snap` the day or run id).
    pub fn record_archive(&self, rel: &str, kind: &str, snap: &str, e: &crate::manifest::ArchiveEntry) -> Result<()> {
        self.store.record_snapshot(&slipway_state::SnapshotRow {
            path: rel.to_string(),
            kind: kind.to_string(),
            snap: snap.to_string(),
            tenant: e.tenant.clone(),
            run_id: Some(self.run_id.to_string()),
            sha256: e.sha256.clone(),
            size: e.size as i64,
            files: e.files as i64,
            created_at: slipway_state::now(),
            remote_verified_at: None,
            remote_verified_to: None,
            remote_retired_at: None,
        })?;
        Ok(())
    }

    /// Journal a step as ended.
    pub fn end(&self, step: i64, outcome: &str, detail: Option<&impl Serialize>) -> Result<()> {
        journal_refused()?;
        let d = detail.map(|d| serde_json::to_string(d).unwrap_or_default());
        Ok(self.store.end_step(step, outcome, d.as_deref())?)
    }
}

/// A run record started and not yet finished: the only way to finish a run (module doc). Made
/// by [`Ctx::start_run`] or [`Ctx::reopen_run`].
#[must_use = "a run is finished through its guard; dropped, it is left unfinished for recover"]
#[derive(Debug)]
pub struct RunGuard {
    id: RunId,
    finished: bool,
}

impl RunGuard {
    /// The run's id.
    pub fn id(&self) -> &RunId {
        &self.id
    }

    /// Record the run as finished with `outcome`'s word and exit code.
    pub fn finish(mut self, ctx: &Ctx, outcome: impl Into<Outcome>, summary: &str) -> Result<()> {
        let o = outcome.into();
        ctx.store.finish_run(self.id.as_str(), o.word(), o.code() as i64, summary)?;
        self.finished = true;
        Ok(())
    }

    /// `recover` only: finish `dead`, a run whose process died (or that left a tenant held),
    /// as `recovered` when every tenant it caught is safe again — then marked resolved by this
    /// run —, else as `person_needed`.
    pub fn finish_dead_run(&self, ctx: &Ctx, dead: &str, safe: bool, summary: &str) -> Result<()> {
        let o = if safe { Outcome::Recovered } else { Outcome::Exit(crate::error::ExitKind::PersonNeeded) };
        ctx.store.finish_run(dead, o.word(), o.code() as i64, summary)?;
        if safe {
            ctx.store.resolve_run(dead, &format!("recover {}", self.id))?;
        }
        Ok(())
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        if !self.finished {
            tracing::warn!(
                "run {} ended without an outcome (an error or a panic cut it short): it stays unfinished in the run \
                 record, and the next `slipway recover` finishes it from its journal",
                self.id
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ExitKind;

    fn ctx(dir: &std::path::Path) -> Ctx {
        let text = format!(
            "state_dir = \"{0}/state\"\nbackup_root = \"{0}/backups\"\n[desired]\nrepo = \"/g\"\n",
            dir.display()
        );
        let cfg = HostConfig::parse(&text, "config.toml", Vec::new()).unwrap();
        Ctx::open(cfg, "manual", Cancel::new()).unwrap()
    }

    #[test]
    fn a_run_is_finished_by_its_guard_with_the_outcomes_word_and_code() {
        let d = tempfile::tempdir().unwrap();
        let mut ctx = ctx(d.path());
        let first = ctx.run_id.clone();
        let run = ctx.start_run("rollout", Some("pulse"), None, None).unwrap();
        assert_eq!(run.id(), &first);
        run.finish(&ctx, ExitKind::Halted, "t1 restored").unwrap();
        let row = ctx.store.run(first.as_str()).unwrap().unwrap();
        assert_eq!((row.outcome.as_deref(), row.exit_code), (Some("halted"), Some(3)));
        // The id of a second run record is a fresh one.
        assert_ne!(ctx.next_run_id(), &first);
    }

    #[test]
    fn a_guard_dropped_unfinished_leaves_its_run_for_recover() {
        let d = tempfile::tempdir().unwrap();
        let ctx = ctx(d.path());
        {
            let _run = ctx.start_run("snapshot", None, None, None).unwrap();
            // An error returns here: the guard is dropped, the run not finished.
        }
        let unfinished = ctx.store.unfinished_runs().unwrap();
        assert_eq!(unfinished.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), [ctx.run_id.as_str()]);
        assert_eq!(unfinished[0].outcome, None);
    }

    #[test]
    fn a_refusal_is_a_run_of_its_own_and_recover_finishes_a_dead_run_through_its_guard() {
        let d = tempfile::tempdir().unwrap();
        let mut ctx = ctx(d.path());
        ctx.record_refused("rollout", Some("pulse"), "abc123", "refused: not signed");
        let refused = ctx.store.runs(10).unwrap();
        assert_eq!(refused.len(), 1);
        assert_ne!(refused[0].id, ctx.run_id.as_str(), "a refusal does not take the job's run id");
        assert_eq!((refused[0].outcome.as_deref(), refused[0].exit_code), (Some("refused"), Some(2)));

        let dead = ctx.start_run("rollout", Some("pulse"), None, None).unwrap();
        let dead_id = dead.id().to_string();
        drop(dead);
        ctx.next_run_id();
        let recover = ctx.start_run("recover", None, None, None).unwrap();
        recover.finish_dead_run(&ctx, &dead_id, true, "killed mid-run; recovered").unwrap();
        let row = ctx.store.run(&dead_id).unwrap().unwrap();
        assert_eq!((row.outcome.as_deref(), row.exit_code), (Some("recovered"), Some(1)));
        assert_eq!(row.resolved_by, Some(format!("recover {}", recover.id())));
        recover.finish(&ctx, ExitKind::Success, "recovered 1 unfinished run(s)").unwrap();
        assert!(ctx.store.unfinished_runs().unwrap().is_empty());
    }
}
