//! What every job run shares: the host config, the run record, the run's id, how it was
//! triggered, the host lock, and the flag a SIGINT/SIGTERM sets. Run ids are made here and only
//! here: one when the context opens (the id the runner takes the lock with), and a fresh one by
//! [`Ctx::next_run_id`] when a process starts a second run record (recover before a job, one
//! rollout run per app). Starting a run record names its job and id as the lock's holder. Also the journal helpers (a step row is
//! written before the step starts and after it ends); the test-only crash points are re-exported
//! from [`crate::testpoint`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::Serialize;
use slipway_state::{NewRun, Store};

use crate::adapters::lock::HostLock;
use crate::config::HostConfig;
use crate::error::{Error, ExitKind, Result};
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
    /// This run's id.
    pub run_id: RunId,
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

    /// Record this run as started, and name it as the lock's holder.
    pub fn start_run(&self, job: &str, app: Option<&str>, commit: Option<&str>, digest: Option<&str>) -> Result<()> {
        self.store.start_run(&NewRun {
            id: self.run_id.as_str(),
            job,
            trigger: &self.trigger,
            app,
            git_commit: commit,
            digest,
        })?;
        self.run_started.store(true, Ordering::SeqCst);
        if let Some(lock) = &self.lock {
            if let Err(e) = lock.publish(job, &self.run_id) {
                tracing::warn!("cannot name run {} as the lock's holder: {e}", self.run_id);
            }
        }
        Ok(())
    }

    /// Record this run as finished with `kind`'s outcome word and exit code.
    pub fn finish_run(&self, kind: ExitKind, summary: &str) -> Result<()> {
        Ok(self.store.finish_run(self.run_id.as_str(), kind.word(), kind.code() as i64, summary)?)
    }

    /// Journal a step as begun with its undo detail.
    pub fn begin(&self, tenant: Option<&str>, step: &str, detail: &impl Serialize) -> Result<i64> {
        journal_refused()?;
        let d =
            serde_json::to_string(detail).map_err(|source| Error::Json { what: "a journal step's detail", source })?;
        Ok(self.store.begin_step(self.run_id.as_str(), tenant, step, &d)?)
    }

    /// Journal step `ended` as ended well and `next` as begun, in one write, both with `detail`
    /// (nothing happens between them, so it is the same). Returns the begun row's id.
    pub fn end_and_begin(&self, ended: i64, tenant: Option<&str>, next: &str, detail: &impl Serialize) -> Result<i64> {
        journal_refused()?;
        let d =
            serde_json::to_string(detail).map_err(|source| Error::Json { what: "a journal step's detail", source })?;
        Ok(self.store.end_step_and_begin(ended, "ok", Some(&d), self.run_id.as_str(), tenant, next, &d)?)
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
