//! What every job run shares: the host config, the run record, the run's id, how it was
//! triggered, and the flag a SIGINT/SIGTERM sets. Also the journal helpers (a step row is
//! written before the step starts and after it ends) and the test-only crash points.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::Serialize;
use slipway_state::{NewRun, Store};

use crate::config::HostConfig;
use crate::error::{Error, Result};
use crate::types::RunId;

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
        })
    }

    /// Record this run as started.
    pub fn start_run(&self, job: &str, app: Option<&str>, commit: Option<&str>, digest: Option<&str>) -> Result<()> {
        self.store.start_run(&NewRun {
            id: self.run_id.as_str(),
            job,
            trigger: &self.trigger,
            app,
            git_commit: commit,
            digest,
        })?;
        Ok(())
    }

    /// Journal a step as begun with its undo detail.
    pub fn begin(&self, tenant: Option<&str>, step: &str, detail: &impl Serialize) -> Result<i64> {
        let d = serde_json::to_string(detail).map_err(|e| Error::Other(e.to_string()))?;
        Ok(self.store.begin_step(self.run_id.as_str(), tenant, step, &d)?)
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
        })?;
        Ok(())
    }

    /// Journal a step as ended.
    pub fn end(&self, step: i64, outcome: &str, detail: Option<&impl Serialize>) -> Result<()> {
        let d = detail.map(|d| serde_json::to_string(d).unwrap_or_default());
        Ok(self.store.end_step(step, outcome, d.as_deref())?)
    }
}

/// A test-only pause: with the `test-crash` feature and `SLIPWAY_TEST_PAUSE_AT=<point>:<ms>`,
/// sleep there (to hold the host lock long enough for a concurrency test).
pub fn test_pause(point: &str) {
    #[cfg(feature = "test-crash")]
    if let Ok(v) = std::env::var("SLIPWAY_TEST_PAUSE_AT") {
        if let Some(ms) = v.strip_prefix(point).and_then(|r| r.strip_prefix(':')).and_then(|m| m.parse().ok()) {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
    }
    #[cfg(not(feature = "test-crash"))]
    let _ = point;
}

/// A test-only crash point: with the `test-crash` feature, the process dies here (no
/// destructors, no journal update, like SIGKILL) when `SLIPWAY_TEST_CRASH_AT` names `point`;
/// with `SLIPWAY_TEST_SIGNAL_AT` naming it (`<point>` or `<point>:<SIGNAL>`, e.g.
/// `after-stop:HUP`), the process sends itself that signal (default TERM) and goes on.
/// Either way it first writes `slipway test point reached: <point>` to stderr, so a test can
/// tell a point that was reached from one that was misspelled or never reached.
/// Without the feature it compiles to nothing.
#[inline]
pub fn crash_point(point: &str) {
    #[cfg(feature = "test-crash")]
    {
        use std::io::Write;
        let reached = || {
            let _ = writeln!(std::io::stderr(), "slipway test point reached: {point}");
        };
        if std::env::var("SLIPWAY_TEST_CRASH_AT").is_ok_and(|p| p == point) {
            reached();
            std::process::abort();
        }
        let signal_at = std::env::var("SLIPWAY_TEST_SIGNAL_AT").unwrap_or_default();
        let (at, signal) = signal_at.split_once(':').unwrap_or((&signal_at, "TERM"));
        if at == point {
            reached();
            let _ = std::process::Command::new("kill")
                .args([&format!("-{signal}"), &std::process::id().to_string()])
                .status();
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
    #[cfg(not(feature = "test-crash"))]
    let _ = point;
}
