//! slipway-state: the run record, a SQLite file (`<state_dir>/state.db`).
//!
//! One row per job run and one per step of a run, written **before** a step starts and
//! **after** it ends: the journal `recover` reads after a crash. Also the per-tenant results of
//! rollouts (downtime) and the snapshots slipway wrote. The schema is versioned by numbered
//! migrations (`PRAGMA user_version`), applied in one transaction each when the store opens.
//! WAL mode and a busy timeout let two processes write at once: the second waits.
//! Never stores secrets. All SQL of the project lives in this crate.

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Serialize;

/// Migrations, in order; the schema version is the number applied.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_init.sql"),
    include_str!("migrations/0002_remote_objects.sql"),
    include_str!("migrations/0003_remote_object_bytes.sql"),
    include_str!("migrations/0004_drills.sql"),
    include_str!("migrations/0005_remote_scope.sql"),
    include_str!("migrations/0006_proxy_downtime.sql"),
    include_str!("migrations/0007_drill_db_check.sql"),
    include_str!("migrations/0008_run_waves.sql"),
    include_str!("migrations/0009_run_pauses.sql"),
    include_str!("migrations/0010_wave_limits.sql"),
];

/// The remote of rows written before schema 5, which named none (adopted by
/// [`Store::adopt_unscoped_remote_records`]).
const UNSCOPED: &str = "";

/// How long a writer waits for another before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of the run-record store.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// SQLite failed.
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The database was written by a newer slipway.
    #[error("state.db has schema version {found}, newer than this slipway knows ({known}); upgrade slipway")]
    TooNew {
        /// Version in the file.
        found: i64,
        /// Highest version this build knows.
        known: i64,
    },
}

/// Result with [`StateError`].
pub type Result<T, E = StateError> = std::result::Result<T, E>;

/// The now, as stored (RFC 3339, UTC, millisecond precision).
pub fn now() -> String {
    jiff::Timestamp::now().round(jiff::Unit::Millisecond).unwrap_or(jiff::Timestamp::now()).to_string()
}

/// An open run record.
pub struct Store {
    conn: Connection,
}

/// A new run, as it starts.
#[derive(Debug, Clone, Default)]
pub struct NewRun<'a> {
    /// Run id (sorts by time).
    pub id: &'a str,
    /// Job name.
    pub job: &'a str,
    /// What started it.
    pub trigger: &'a str,
    /// App, for rollout-like jobs.
    pub app: Option<&'a str>,
    /// Desired-state commit.
    pub git_commit: Option<&'a str>,
    /// Pinned digest.
    pub digest: Option<&'a str>,
}

/// A run row.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// Run id.
    pub id: String,
    /// Job name.
    pub job: String,
    /// What started it.
    pub trigger: String,
    /// App.
    pub app: Option<String>,
    /// Desired-state commit.
    pub git_commit: Option<String>,
    /// Pinned digest.
    pub digest: Option<String>,
    /// Process id of the job.
    pub pid: i64,
    /// Start time.
    pub started_at: String,
    /// End time; none while running (or after a crash).
    pub finished_at: Option<String>,
    /// Outcome word.
    pub outcome: Option<String>,
    /// Process exit code.
    pub exit_code: Option<i64>,
    /// One-line summary.
    pub summary: Option<String>,
    /// When a halted run was settled.
    pub resolved_at: Option<String>,
    /// What settled it.
    pub resolved_by: Option<String>,
}

/// A step row.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// Step row id.
    pub id: i64,
    /// Its run.
    pub run_id: String,
    /// Tenant the step acts on.
    pub tenant: Option<String>,
    /// Step name.
    pub step: String,
    /// Start time.
    pub started_at: String,
    /// End time; none while running or when the process died in it.
    pub finished_at: Option<String>,
    /// ok, failed, skipped; none while running.
    pub outcome: Option<String>,
    /// JSON detail (undo information).
    pub detail: Option<String>,
}

/// One tenant's place in a rollout's waves, frozen before the first tenant is touched.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WaveRow {
    /// 0 is the canary's wave.
    pub wave: i64,
    /// Its place in the run's order.
    pub position: i64,
    /// Tenant.
    pub tenant: String,
    /// The wave's name (`canary`, `wave 1`, …, `rest`).
    pub name: String,
    /// Tenants of the wave rolled at once.
    pub max_parallel: i64,
    /// Seconds each of its tenants soaks after its health gate.
    pub bake_s: i64,
    /// The wave's `min_healthy` as frozen (0: none); None in a row of an earlier version.
    pub min_healthy: Option<f64>,
    /// The wave's `progress_deadline_s` as frozen (0: none); None in a row of an earlier version.
    pub progress_deadline_s: Option<i64>,
}

/// A rollout paused over its failure budget, open until resumed, aborted or timed out.
#[derive(Debug, Clone, Serialize)]
pub struct Pause {
    /// The paused rollout run.
    pub run_id: String,
    /// Its app.
    pub app: String,
    /// `budget` (over its failure budget) or `window` (its maintenance window closed).
    pub kind: String,
    /// When it paused.
    pub paused_at: String,
    /// Why (the budget it went over).
    pub reason: String,
    /// When it ended; none while open.
    pub ended_at: Option<String>,
    /// How it ended: `resumed`, `aborted`, `timed out`.
    pub ended_by: Option<String>,
}

/// The result of a rollout for one tenant.
#[derive(Debug, Clone, Serialize)]
pub struct TenantResult {
    /// Run id.
    pub run_id: String,
    /// Tenant.
    pub tenant: String,
    /// Digest before.
    pub from_digest: Option<String>,
    /// Digest rolled to.
    pub to_digest: Option<String>,
    /// Outcome word.
    pub outcome: String,
    /// Stop begun → healthy, in ms.
    pub downtime_ms: Option<i64>,
    /// Free text.
    pub detail: Option<String>,
    /// Behind a reverse proxy: the requests sent through it during the switch.
    pub proxy_requests: Option<i64>,
    /// Of which failed.
    pub proxy_failed: Option<i64>,
    /// First → last failed request, in ms.
    pub proxy_downtime_ms: Option<i64>,
}

/// An object verified on the remote: the archive (file list, manifest) it holds and, when
/// the object is not those bytes themselves (encrypted), the object's own sha256 and size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RemoteObject {
    /// sha256 of the content (the manifest's; after decryption when encrypted).
    pub sha256: String,
    /// Size of the content.
    pub size: u64,
    /// sha256 of the object as stored; None when not known (an encrypted object uploaded in
    /// several parts and found on the remote, not uploaded by this host).
    pub object_sha256: Option<String>,
    /// Size of the object as stored (the listing's).
    pub object_size: u64,
    /// How the object is encrypted (`age`), None when it is the content itself.
    pub encryption: Option<String>,
}

impl RemoteObject {
    /// An object that is the content's own bytes.
    pub fn plain(sha256: &str, size: u64) -> RemoteObject {
        RemoteObject {
            sha256: sha256.to_string(),
            size,
            object_sha256: Some(sha256.to_string()),
            object_size: size,
            encryption: None,
        }
    }
}

/// A snapshot archive slipway wrote.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotRow {
    /// Path relative to the backup root.
    pub path: String,
    /// daily, rollout, control-plane.
    pub kind: String,
    /// The day or run id.
    pub snap: String,
    /// Tenant, if any.
    pub tenant: Option<String>,
    /// Run that wrote it.
    pub run_id: Option<String>,
    /// sha256 of the archive.
    pub sha256: String,
    /// Archive size in bytes.
    pub size: i64,
    /// Entries.
    pub files: i64,
    /// When written.
    pub created_at: String,
    /// When verified on the remote.
    pub remote_verified_at: Option<String>,
    /// The remote (endpoint, bucket and prefix) it was verified on.
    pub remote_verified_to: Option<String>,
    /// When that remote's retention (slipway's prune) deleted it there.
    pub remote_retired_at: Option<String>,
}

/// One tenant's restore drill, as the run record keeps it.
#[derive(Debug, Clone, Serialize)]
pub struct DrillRow {
    /// The drill run.
    pub run_id: String,
    /// Tenant drilled.
    pub tenant: String,
    /// The snapshot drilled from (`daily/<day>`, `rollout/<run_id>`), if one was found.
    pub snapshot: Option<String>,
    /// Whether the archive came from the remote.
    pub remote: bool,
    /// The archive's verified sha256.
    pub sha256: Option<String>,
    /// Archive size in bytes.
    pub archive_bytes: Option<i64>,
    /// Bytes of the files restored.
    pub data_bytes: Option<i64>,
    /// Entries restored.
    pub entries: Option<i64>,
    /// Fetch, verify and extract, in ms.
    pub restore_ms: Option<i64>,
    /// Container start to healthy, in ms.
    pub healthy_ms: Option<i64>,
    /// success, failed, interrupted.
    pub outcome: String,
    /// What happened.
    pub detail: Option<String>,
    /// When it ended.
    pub finished_at: String,
    /// With `[app.database]`: the check query's answer on the replayed dump ("" when no check
    /// is declared); None without a database.
    pub db_check: Option<String>,
}

/// A tenant's newest snapshot of one kind, and when its newest remote copy was verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewestSnapshot {
    /// The tenant.
    pub tenant: String,
    /// `created_at` of its newest snapshot.
    pub created_at: String,
    /// `remote_verified_at` of its newest snapshot verified on a remote, if any.
    pub synced_at: Option<String>,
}

impl Store {
    /// Open (creating if needed) and migrate the store at `path`.
    pub fn open(path: &Path) -> Result<Store> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // Switching a fresh file to WAL takes an exclusive lock, and SQLite answers BUSY there
        // without waiting on the busy timeout: two jobs starting at once must retry, not fail.
        let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
        loop {
            match conn.pragma_update(None, "journal_mode", "WAL") {
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::DatabaseBusy && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                r => break r?,
            }
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let mut store = Store { conn };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&mut self) -> Result<()> {
        let known = MIGRATIONS.len() as i64;
        loop {
            // IMMEDIATE: two processes opening a fresh file at once must not both migrate.
            let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            if version > known {
                return Err(StateError::TooNew { found: version, known });
            }
            if version == known {
                return Ok(());
            }
            tx.execute_batch(MIGRATIONS[version as usize])?;
            tx.pragma_update(None, "user_version", version + 1)?;
            tx.commit()?;
        }
    }

    /// The schema version in the file.
    pub fn schema_version(&self) -> Result<i64> {
        Ok(self.conn.query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    /// Record a run as started.
    pub fn start_run(&self, r: &NewRun<'_>) -> Result<()> {
        self.conn.execute(
            "INSERT INTO runs (id, job, trigger, app, git_commit, digest, pid, started_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![r.id, r.job, r.trigger, r.app, r.git_commit, r.digest, std::process::id(), now()],
        )?;
        Ok(())
    }

    /// Fill in the desired-state commit and digest once known.
    pub fn set_run_target(
        &self,
        id: &str,
        app: Option<&str>,
        git_commit: Option<&str>,
        digest: Option<&str>,
    ) -> Result<()> {
        self.conn.execute(
            "UPDATE runs SET app = COALESCE(?2, app), git_commit = COALESCE(?3, git_commit), digest = COALESCE(?4, digest) WHERE id = ?1",
            params![id, app, git_commit, digest],
        )?;
        Ok(())
    }

    /// Record a run as finished.
    pub fn finish_run(&self, id: &str, outcome: &str, exit_code: i64, summary: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE runs SET finished_at = ?2, outcome = ?3, exit_code = ?4, summary = ?5 WHERE id = ?1",
            params![id, now(), outcome, exit_code, summary],
        )?;
        Ok(())
    }

    /// Open run `id` again to go on with it (`rollout resume`): unfinished, by this process.
    pub fn reopen_run(&self, id: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE runs SET finished_at = NULL, outcome = NULL, exit_code = NULL, summary = NULL, pid = ?2
             WHERE id = ?1",
            params![id, std::process::id()],
        )?;
        Ok(())
    }

    /// Record rollout run `run_id` of `app` as paused, of `kind` (`budget`, `window`). A resumed
    /// run keeps its pause open until it ends (so a crash in the middle leaves it paused);
    /// pausing again ends that one as `resumed` in the same transaction, never leaving the run
    /// without a pause or with two.
    pub fn pause_run(&self, run_id: &str, app: &str, kind: &str, reason: &str) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        let at = now();
        tx.execute(
            "UPDATE run_pauses SET ended_at = ?2, ended_by = 'resumed' WHERE run_id = ?1 AND ended_at IS NULL",
            params![run_id, at],
        )?;
        tx.execute(
            "INSERT INTO run_pauses (run_id, app, kind, paused_at, reason) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![run_id, app, kind, at, reason],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// End run `run_id`'s open pause (if any) as `by` (`resumed`, `aborted`, `timed out`).
    pub fn end_pause(&self, run_id: &str, by: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE run_pauses SET ended_at = ?2, ended_by = ?3 WHERE run_id = ?1 AND ended_at IS NULL",
            params![run_id, now(), by],
        )?;
        Ok(())
    }

    /// Every open pause, oldest first.
    pub fn open_pauses(&self) -> Result<Vec<Pause>> {
        self.pauses_where("ended_at IS NULL", [])
    }

    /// Every pause of run `run_id`, open or ended, oldest first.
    pub fn pauses_of(&self, run_id: &str) -> Result<Vec<Pause>> {
        self.pauses_where("run_id = ?1", [run_id])
    }

    fn pauses_where<P: rusqlite::Params>(&self, cond: &str, p: P) -> Result<Vec<Pause>> {
        let mut st = self.conn.prepare(&format!(
            "SELECT run_id, app, kind, paused_at, reason, ended_at, ended_by FROM run_pauses WHERE {cond} ORDER BY id"
        ))?;
        let rows = st.query_map(p, |r| {
            Ok(Pause {
                run_id: r.get(0)?,
                app: r.get(1)?,
                kind: r.get(2)?,
                paused_at: r.get(3)?,
                reason: r.get(4)?,
                ended_at: r.get(5)?,
                ended_by: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Mark a halted or crashed run as settled by something later (a rollback, recover).
    pub fn resolve_run(&self, id: &str, by: &str) -> Result<()> {
        self.conn
            .execute("UPDATE runs SET resolved_at = ?2, resolved_by = ?3 WHERE id = ?1", params![id, now(), by])?;
        Ok(())
    }

    /// Journal a step as begun; returns its row id.
    pub fn begin_step(&self, run_id: &str, tenant: Option<&str>, step: &str, detail: &str) -> Result<i64> {
        insert_step(&self.conn, run_id, tenant, step, &now(), detail)
    }

    /// Journal a step as ended; `detail` replaces the begun detail when given.
    pub fn end_step(&self, step_id: i64, outcome: &str, detail: Option<&str>) -> Result<()> {
        finish_step(&self.conn, step_id, &now(), outcome, detail)
    }

    /// Journal a step as ended and the next one as begun, in one transaction: one commit (one
    /// fsync) instead of two, where nothing is done between the two writes. A crash leaves both
    /// rows or neither. Returns the begun row's id.
    #[allow(clippy::too_many_arguments)]
    pub fn end_step_and_begin(
        &self,
        step_id: i64,
        outcome: &str,
        end_detail: Option<&str>,
        run_id: &str,
        tenant: Option<&str>,
        next: &str,
        next_detail: &str,
    ) -> Result<i64> {
        let tx = self.conn.unchecked_transaction()?;
        let at = now();
        finish_step(&tx, step_id, &at, outcome, end_detail)?;
        let id = insert_step(&tx, run_id, tenant, next, &at, next_detail)?;
        tx.commit()?;
        Ok(id)
    }

    /// Record (or replace) one tenant's rollout result.
    pub fn record_tenant(&self, t: &TenantResult) -> Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO run_tenants (run_id, tenant, from_digest, to_digest, outcome, downtime_ms, detail,
                                              proxy_requests, proxy_failed, proxy_downtime_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                t.run_id,
                t.tenant,
                t.from_digest,
                t.to_digest,
                t.outcome,
                t.downtime_ms,
                t.detail,
                t.proxy_requests,
                t.proxy_failed,
                t.proxy_downtime_ms
            ],
        )?;
        Ok(())
    }

    /// Freeze run `run_id`'s waves: every row in one transaction, before its first switch.
    pub fn record_waves(&self, run_id: &str, rows: &[WaveRow]) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        {
            let mut st = tx.prepare(
                "INSERT INTO run_waves
                    (run_id, wave, position, tenant, name, max_parallel, bake_s, min_healthy, progress_deadline_s)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            for r in rows {
                st.execute(params![
                    run_id,
                    r.wave,
                    r.position,
                    r.tenant,
                    r.name,
                    r.max_parallel,
                    r.bake_s,
                    r.min_healthy,
                    r.progress_deadline_s
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Run `run_id`'s frozen waves, in wave and position order (none for a run before schema 8).
    pub fn waves(&self, run_id: &str) -> Result<Vec<WaveRow>> {
        let mut st = self.conn.prepare(
            "SELECT wave, position, tenant, name, max_parallel, bake_s, min_healthy, progress_deadline_s
             FROM run_waves WHERE run_id = ?1 ORDER BY wave, position",
        )?;
        let rows = st.query_map([run_id], |r| {
            Ok(WaveRow {
                wave: r.get(0)?,
                position: r.get(1)?,
                tenant: r.get(2)?,
                name: r.get(3)?,
                max_parallel: r.get(4)?,
                bake_s: r.get(5)?,
                min_healthy: r.get(6)?,
                progress_deadline_s: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The newest runs first, at most `limit`.
    pub fn runs(&self, limit: usize) -> Result<Vec<Run>> {
        let mut st = self.conn.prepare(&format!("SELECT {RUN_COLS} FROM runs ORDER BY id DESC LIMIT ?1"))?;
        let rows = st.query_map([limit as i64], run_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// One run.
    pub fn run(&self, id: &str) -> Result<Option<Run>> {
        Ok(self.conn.query_row(&format!("SELECT {RUN_COLS} FROM runs WHERE id = ?1"), [id], run_from_row).optional()?)
    }

    /// Runs that never finished (the process died), oldest first.
    pub fn unfinished_runs(&self) -> Result<Vec<Run>> {
        let mut st =
            self.conn.prepare(&format!("SELECT {RUN_COLS} FROM runs WHERE finished_at IS NULL ORDER BY id"))?;
        let rows = st.query_map([], run_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The newest finished run of `job` for (app, digest), if any.
    pub fn last_run_for(&self, job: &str, app: &str, digest: &str) -> Result<Option<Run>> {
        Ok(self
            .conn
            .query_row(
                &format!(
                    "SELECT {RUN_COLS} FROM runs WHERE job = ?1 AND app = ?2 AND digest = ?3
                     AND finished_at IS NOT NULL ORDER BY id DESC LIMIT 1"
                ),
                params![job, app, digest],
                run_from_row,
            )
            .optional()?)
    }

    /// The desired-state commit of `app`'s newest successful rollout: what it last deployed.
    pub fn last_deployed_commit(&self, app: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row(
                "SELECT git_commit FROM runs WHERE job = 'rollout' AND app = ?1 AND outcome = 'success'
                 AND git_commit IS NOT NULL ORDER BY id DESC LIMIT 1",
                [app],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// The newest finished run of `job` (any app).
    pub fn last_run_of(&self, job: &str) -> Result<Option<Run>> {
        Ok(self
            .conn
            .query_row(
                &format!(
                    "SELECT {RUN_COLS} FROM runs WHERE job = ?1 AND finished_at IS NOT NULL ORDER BY id DESC LIMIT 1"
                ),
                [job],
                run_from_row,
            )
            .optional()?)
    }

    /// Halted runs not yet settled by a rollback or recover.
    pub fn unresolved_halts(&self) -> Result<Vec<Run>> {
        let mut st = self.conn.prepare(&format!(
            "SELECT {RUN_COLS} FROM runs WHERE outcome IN ('halted', 'person_needed') AND resolved_at IS NULL ORDER BY id"
        ))?;
        let rows = st.query_map([], run_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The steps of a run, in order.
    pub fn steps(&self, run_id: &str) -> Result<Vec<Step>> {
        let mut st = self.conn.prepare(
            "SELECT id, run_id, tenant, step, started_at, finished_at, outcome, detail FROM steps WHERE run_id = ?1 ORDER BY id",
        )?;
        let rows = st.query_map([run_id], |r| {
            Ok(Step {
                id: r.get(0)?,
                run_id: r.get(1)?,
                tenant: r.get(2)?,
                step: r.get(3)?,
                started_at: r.get(4)?,
                finished_at: r.get(5)?,
                outcome: r.get(6)?,
                detail: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Per-tenant results of a run.
    pub fn tenants(&self, run_id: &str) -> Result<Vec<TenantResult>> {
        let mut st = self.conn.prepare(
            "SELECT run_id, tenant, from_digest, to_digest, outcome, downtime_ms, detail,
                    proxy_requests, proxy_failed, proxy_downtime_ms
             FROM run_tenants WHERE run_id = ?1 ORDER BY rowid",
        )?;
        let rows = st.query_map([run_id], |r| {
            Ok(TenantResult {
                run_id: r.get(0)?,
                tenant: r.get(1)?,
                from_digest: r.get(2)?,
                to_digest: r.get(3)?,
                outcome: r.get(4)?,
                downtime_ms: r.get(5)?,
                detail: r.get(6)?,
                proxy_requests: r.get(7)?,
                proxy_failed: r.get(8)?,
                proxy_downtime_ms: r.get(9)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Record (or replace) a snapshot archive.
    pub fn record_snapshot(&self, s: &SnapshotRow) -> Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO snapshots (path, kind, snap, tenant, run_id, sha256, size, files, created_at,
                 remote_verified_at, remote_verified_to, remote_retired_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                s.path,
                s.kind,
                s.snap,
                s.tenant,
                s.run_id,
                s.sha256,
                s.size,
                s.files,
                s.created_at,
                s.remote_verified_at,
                s.remote_verified_to,
                s.remote_retired_at
            ],
        )?;
        Ok(())
    }

    /// Mark a snapshot as uploaded and verified on `remote` (and not retired there).
    pub fn mark_remote_verified(&self, path: &str, remote: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE snapshots SET remote_verified_at = ?2, remote_verified_to = ?3, remote_retired_at = NULL
             WHERE path = ?1",
            params![path, now(), remote],
        )?;
        Ok(())
    }

    /// Mark a snapshot verified on `remote` as deleted there by that remote's retention.
    pub fn mark_remote_retired(&self, path: &str, remote: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE snapshots SET remote_retired_at = ?2 WHERE path = ?1 AND remote_verified_to = ?3",
            params![path, now(), remote],
        )?;
        Ok(())
    }

    /// Adopt the remote records written before they named their remote (schema 4 and older) as
    /// `remote`'s: a host had one remote then, the one its config names now. A key `remote`
    /// already has a row for keeps that row. Returns how many rows were adopted.
    pub fn adopt_unscoped_remote_records(&self, remote: &str) -> Result<usize> {
        let tx = self.conn.unchecked_transaction()?;
        let mut n =
            tx.execute("UPDATE OR IGNORE remote_objects SET remote = ?1 WHERE remote = ?2", [remote, UNSCOPED])?;
        tx.execute("DELETE FROM remote_objects WHERE remote = ?1", [UNSCOPED])?;
        n += tx.execute(
            "UPDATE snapshots SET remote_verified_to = ?1 WHERE remote_verified_to = ?2",
            [remote, UNSCOPED],
        )?;
        tx.commit()?;
        Ok(n)
    }

    /// Remember an object as uploaded to `remote` and verified (size and sha256 metadata checked).
    pub fn record_remote_object(&self, remote: &str, key: &str, o: &RemoteObject) -> Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO remote_objects
                 (remote, key, sha256, size, verified_at, object_sha256, object_size, encryption)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![remote, key, o.sha256, o.size as i64, now(), o.object_sha256, o.object_size as i64, o.encryption],
        )?;
        Ok(())
    }

    /// Every object known to be verified on `remote`, by key.
    pub fn remote_objects(&self, remote: &str) -> Result<std::collections::HashMap<String, RemoteObject>> {
        let mut st = self.conn.prepare(
            "SELECT key, sha256, size, object_sha256, object_size, encryption FROM remote_objects WHERE remote = ?1",
        )?;
        let rows = st.query_map([remote], |r| {
            let (sha256, size) = (r.get::<_, String>(1)?, r.get::<_, i64>(2)? as u64);
            let encryption: Option<String> = r.get(5)?;
            // Rows of schema 2, and unencrypted uploads: the object is the archive's bytes.
            let plain = encryption.is_none();
            Ok((
                r.get::<_, String>(0)?,
                RemoteObject {
                    object_sha256: r.get::<_, Option<String>>(3)?.or_else(|| plain.then(|| sha256.clone())),
                    object_size: r.get::<_, Option<i64>>(4)?.map_or(size, |s| s as u64),
                    encryption,
                    sha256,
                    size,
                },
            ))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Forget an object of `remote` (deleted or found missing).
    pub fn forget_remote_object(&self, remote: &str, key: &str) -> Result<()> {
        self.conn.execute("DELETE FROM remote_objects WHERE remote = ?1 AND key = ?2", [remote, key])?;
        Ok(())
    }

    /// Forget a snapshot (pruned).
    pub fn forget_snapshot(&self, path: &str) -> Result<()> {
        self.conn.execute("DELETE FROM snapshots WHERE path = ?1", [path])?;
        Ok(())
    }

    /// Per tenant with snapshots of `kind`: the creation time of its newest, and the
    /// `remote_verified_at` of its newest one verified on a remote (what `status` shows). Reads
    /// the `(tenant, created_at)` index from the newest end, a few rows per tenant, so its cost
    /// follows the number of tenants, not the years of archives the record holds.
    pub fn newest_snapshots(&self, kind: &str) -> Result<Vec<NewestSnapshot>> {
        let mut st = self.conn.prepare(
            "SELECT t.tenant,
                 (SELECT created_at FROM snapshots WHERE tenant = t.tenant AND kind = ?1
                  ORDER BY created_at DESC LIMIT 1),
                 (SELECT remote_verified_at FROM snapshots WHERE tenant = t.tenant AND kind = ?1
                  AND remote_verified_at IS NOT NULL ORDER BY created_at DESC LIMIT 1)
             FROM (SELECT DISTINCT tenant FROM snapshots WHERE tenant IS NOT NULL) t ORDER BY t.tenant",
        )?;
        let rows = st.query_map([kind], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?, r.get::<_, Option<String>>(2)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (tenant, created_at, synced_at) = row?;
            if let Some(created_at) = created_at {
                out.push(NewestSnapshot { tenant, created_at, synced_at });
            }
        }
        Ok(out)
    }

    /// All snapshots, oldest first.
    pub fn snapshots(&self) -> Result<Vec<SnapshotRow>> {
        let mut st = self.conn.prepare(
            "SELECT path, kind, snap, tenant, run_id, sha256, size, files, created_at, remote_verified_at,
                 remote_verified_to, remote_retired_at
             FROM snapshots ORDER BY created_at, path",
        )?;
        let rows = st.query_map([], |r| {
            Ok(SnapshotRow {
                path: r.get(0)?,
                kind: r.get(1)?,
                snap: r.get(2)?,
                tenant: r.get(3)?,
                run_id: r.get(4)?,
                sha256: r.get(5)?,
                size: r.get(6)?,
                files: r.get(7)?,
                created_at: r.get(8)?,
                remote_verified_at: r.get(9)?,
                remote_verified_to: r.get(10)?,
                remote_retired_at: r.get(11)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

impl Store {
    /// Record (or replace) one tenant's drill result.
    pub fn record_drill(&self, d: &DrillRow) -> Result<()> {
        self.conn.execute(
            &format!("INSERT OR REPLACE INTO drills ({DRILL_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"),
            params![
                d.run_id,
                d.tenant,
                d.snapshot,
                d.remote,
                d.sha256,
                d.archive_bytes,
                d.data_bytes,
                d.entries,
                d.restore_ms,
                d.healthy_ms,
                d.outcome,
                d.detail,
                d.finished_at,
                d.db_check
            ],
        )?;
        Ok(())
    }

    /// Each tenant's newest drill (`only_successful`: its newest successful one), by tenant.
    pub fn last_drills(&self, only_successful: bool) -> Result<Vec<DrillRow>> {
        let filter = if only_successful { "AND outcome = 'success'" } else { "" };
        self.last_drills_where(filter)
    }

    /// Each tenant's newest successful drill that replayed its database (`[app.database]`), by
    /// tenant.
    pub fn last_db_drills(&self) -> Result<Vec<DrillRow>> {
        self.last_drills_where("AND outcome = 'success' AND db_check IS NOT NULL")
    }

    fn last_drills_where(&self, filter: &str) -> Result<Vec<DrillRow>> {
        // One index walk per tenant from its newest drill (the `(tenant, finished_at)` index),
        // not a scan of every drill ever recorded for each row.
        let mut st = self.conn.prepare(&format!(
            "SELECT {DRILL_COLS} FROM drills WHERE rowid IN (SELECT (SELECT rowid FROM drills \
             WHERE tenant = t.tenant {filter} ORDER BY finished_at DESC LIMIT 1) FROM (SELECT DISTINCT tenant FROM \
             drills) t) ORDER BY tenant"
        ))?;
        let rows = st.query_map([], |r| {
            Ok(DrillRow {
                run_id: r.get(0)?,
                tenant: r.get(1)?,
                snapshot: r.get(2)?,
                remote: r.get(3)?,
                sha256: r.get(4)?,
                archive_bytes: r.get(5)?,
                data_bytes: r.get(6)?,
                entries: r.get(7)?,
                restore_ms: r.get(8)?,
                healthy_ms: r.get(9)?,
                outcome: r.get(10)?,
                detail: r.get(11)?,
                finished_at: r.get(12)?,
                db_check: r.get(13)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

const DRILL_COLS: &str = "run_id, tenant, snapshot, remote, sha256, archive_bytes, data_bytes, entries, restore_ms, \
                          healthy_ms, outcome, detail, finished_at, db_check";

const RUN_COLS: &str =
    "id, job, trigger, app, git_commit, digest, pid, started_at, finished_at, outcome, exit_code, summary, resolved_at, resolved_by";

fn run_from_row(r: &Row<'_>) -> rusqlite::Result<Run> {
    Ok(Run {
        id: r.get(0)?,
        job: r.get(1)?,
        trigger: r.get(2)?,
        app: r.get(3)?,
        git_commit: r.get(4)?,
        digest: r.get(5)?,
        pid: r.get(6)?,
        started_at: r.get(7)?,
        finished_at: r.get(8)?,
        outcome: r.get(9)?,
        exit_code: r.get(10)?,
        summary: r.get(11)?,
        resolved_at: r.get(12)?,
        resolved_by: r.get(13)?,
    })
}

/// The row of a step journaled as begun at `at`; its id.
fn insert_step(
    conn: &Connection,
    run_id: &str,
    tenant: Option<&str>,
    step: &str,
    at: &str,
    detail: &str,
) -> Result<i64> {
    conn.execute(
        "INSERT INTO steps (run_id, tenant, step, started_at, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![run_id, tenant, step, at, detail],
    )?;
    Ok(conn.last_insert_rowid())
}

/// Step `step_id` journaled as ended at `at`; `detail` replaces the begun detail when given.
fn finish_step(conn: &Connection, step_id: i64, at: &str, outcome: &str, detail: Option<&str>) -> Result<()> {
    conn.execute(
        "UPDATE steps SET finished_at = ?2, outcome = ?3, detail = COALESCE(?4, detail) WHERE id = ?1",
        params![step_id, at, outcome, detail],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<'a>(id: &'a str, job: &'a str) -> NewRun<'a> {
        NewRun { id, job, trigger: "manual", app: Some("pulse"), git_commit: Some("abc"), digest: Some("sha256:d1") }
    }

    #[test]
    fn a_pause_stays_open_until_ended_and_a_reopened_run_is_unfinished_again() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("state.db")).unwrap();
        s.start_run(&run("R1", "rollout")).unwrap();
        s.finish_run("R1", "halted", 3, "over the failure budget").unwrap();
        s.pause_run("R1", "app", "budget", "2 failed, 1 allowed").unwrap();
        let open = s.open_pauses().unwrap();
        assert_eq!((open.len(), open[0].run_id.as_str(), open[0].app.as_str()), (1, "R1", "app"));
        s.reopen_run("R1").unwrap();
        assert!(s.unfinished_runs().unwrap().iter().any(|r| r.id == "R1"));
        s.end_pause("R1", "resumed").unwrap();
        assert!(s.open_pauses().unwrap().is_empty());
        // Ending it again changes nothing (no open pause).
        s.end_pause("R1", "aborted").unwrap();
        assert!(s.open_pauses().unwrap().is_empty());
    }

    #[test]
    fn a_runs_waves_are_frozen_and_read_back_in_order() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("state.db")).unwrap();
        s.start_run(&run("20261122T030000Z-0002", "rollout")).unwrap();
        let row = |wave, position, tenant: &str, name: &str, max_parallel| WaveRow {
            wave,
            position,
            tenant: tenant.into(),
            name: name.into(),
            max_parallel,
            bake_s: 0,
            min_healthy: Some(0.9),
            progress_deadline_s: Some(0),
        };
        let rows = vec![row(0, 0, "t1", "canary", 1), row(1, 1, "t3", "wave 1", 4), row(1, 2, "t2", "wave 1", 4)];
        s.record_waves("20261122T030000Z-0002", &rows).unwrap();
        assert_eq!(s.waves("20261122T030000Z-0002").unwrap(), rows);
        assert!(s.waves("20261122T030000Z-0001").unwrap().is_empty());
        // A tenant is in one wave of a run only.
        assert!(s.record_waves("20261122T030000Z-0002", &[row(2, 3, "t1", "rest", 1)]).is_err());
    }

    #[test]
    fn migrates_from_empty_and_reopens_at_the_same_version() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.db");
        let s = Store::open(&p).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
        s.start_run(&run("20261122T030000Z-0001", "rollout")).unwrap();
        drop(s);
        let s = Store::open(&p).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
        assert_eq!(s.runs(10).unwrap().len(), 1);
        let mode: String = s.conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn a_schema_4_record_of_verified_uploads_is_adopted_by_the_first_remote_and_no_other() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.db");
        {
            let c = Connection::open(&p).unwrap();
            for m in &MIGRATIONS[..4] {
                c.execute_batch(m).unwrap();
            }
            c.pragma_update(None, "user_version", 4).unwrap();
            c.execute(
                "INSERT INTO remote_objects (key, sha256, size, verified_at) VALUES ('daily/d/t1.tar.zst', 'aa', 3, 'x')",
                [],
            )
            .unwrap();
            c.execute(
                "INSERT INTO snapshots (path, kind, snap, sha256, size, files, created_at, remote_verified_at)
                 VALUES ('daily/d/t1.tar.zst', 'daily', 'd', 'aa', 3, 1, 'x', 'y')",
                [],
            )
            .unwrap();
        }
        let s = Store::open(&p).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
        let (first, other) = ("http://s3 b slipway/h1", "http://s3 b2 slipway/h1");
        assert_eq!(s.adopt_unscoped_remote_records(first).unwrap(), 2);
        assert_eq!(s.remote_objects(first).unwrap()["daily/d/t1.tar.zst"], RemoteObject::plain("aa", 3));
        assert!(s.remote_objects(other).unwrap().is_empty());
        // Adopted once: a later remote finds nothing to adopt.
        assert_eq!(s.adopt_unscoped_remote_records(other).unwrap(), 0);
        let row = &s.snapshots().unwrap()[0];
        assert_eq!(row.remote_verified_to.as_deref(), Some(first));
        // Retired only on the remote it was verified on.
        s.mark_remote_retired("daily/d/t1.tar.zst", other).unwrap();
        assert!(s.snapshots().unwrap()[0].remote_retired_at.is_none());
        s.mark_remote_retired("daily/d/t1.tar.zst", first).unwrap();
        assert!(s.snapshots().unwrap()[0].remote_retired_at.is_some());
        s.mark_remote_verified("daily/d/t1.tar.zst", other).unwrap();
        let row = &s.snapshots().unwrap()[0];
        assert_eq!((row.remote_verified_to.as_deref(), row.remote_retired_at.as_deref()), (Some(other), None));
    }

    #[test]
    fn each_tenants_newest_drill_and_newest_successful_drill_are_found() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("state.db")).unwrap();
        let drill = |run: &str, tenant: &str, outcome: &str, at: &str| {
            let db_check = (tenant == "t1").then(|| "100".to_string());
            s.start_run(&NewRun { id: run, job: "drill", trigger: "timer", ..Default::default() }).ok();
            s.record_drill(&DrillRow {
                run_id: run.into(),
                tenant: tenant.into(),
                snapshot: Some("daily/2026-11-22".into()),
                remote: false,
                sha256: None,
                archive_bytes: Some(10),
                data_bytes: Some(20),
                entries: Some(3),
                restore_ms: Some(5),
                healthy_ms: Some(7),
                outcome: outcome.into(),
                detail: None,
                finished_at: at.into(),
                db_check,
            })
            .unwrap();
        };
        drill("20261101T070000Z-0001", "t1", "success", "2026-11-01T07:00:00Z");
        drill("20261101T070000Z-0001", "t2", "success", "2026-11-01T07:01:00Z");
        drill("20261201T070000Z-0002", "t1", "failed", "2026-12-01T07:00:00Z");
        let last: Vec<(String, String)> =
            s.last_drills(false).unwrap().into_iter().map(|r| (r.tenant, r.outcome)).collect();
        assert_eq!(last, [("t1".into(), "failed".into()), ("t2".into(), "success".into())]);
        let ok: Vec<(String, String)> =
            s.last_drills(true).unwrap().into_iter().map(|r| (r.tenant, r.finished_at)).collect();
        assert_eq!(ok, [("t1".into(), "2026-11-01T07:00:00Z".into()), ("t2".into(), "2026-11-01T07:01:00Z".into())]);
        // The newest good drill that replayed a database: t1's, with its check's answer.
        let db: Vec<(String, Option<String>)> =
            s.last_db_drills().unwrap().into_iter().map(|r| (r.tenant, r.db_check)).collect();
        assert_eq!(db, [("t1".into(), Some("100".into()))]);
    }

    /// `newest_snapshots` answers what status used to compute from every snapshot row: per
    /// tenant, the newest of the kind asked and the verification time of the newest verified
    /// one — rollout snapshots, other tenants' rows and unverified newer ones notwithstanding.
    #[test]
    fn each_tenants_newest_snapshot_and_newest_synced_one_are_found_from_the_index() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("state.db")).unwrap();
        let row = |path: &str, kind: &str, tenant: Option<&str>, created: &str, verified: Option<&str>| SnapshotRow {
            path: path.into(),
            kind: kind.into(),
            snap: "x".into(),
            tenant: tenant.map(Into::into),
            run_id: None,
            sha256: "00".into(),
            size: 1,
            files: 1,
            created_at: created.into(),
            remote_verified_at: verified.map(Into::into),
            remote_verified_to: verified.map(|_| "r".into()),
            remote_retired_at: None,
        };
        for r in [
            row("a1", "daily", Some("a"), "2026-01-01T03:00:00Z", Some("2026-01-01T04:00:00Z")),
            row("a2", "daily", Some("a"), "2026-01-02T03:00:00Z", Some("2026-01-02T04:00:00Z")),
            row("a3", "daily", Some("a"), "2026-01-03T03:00:00Z", None),
            row("a4", "rollout", Some("a"), "2026-01-04T03:00:00Z", Some("2026-01-04T04:00:00Z")),
            row("b1", "rollout", Some("b"), "2026-01-01T03:00:00Z", None),
            row("c1", "daily", Some("c"), "2026-01-01T03:00:00Z", None),
            row("cp", "daily", None, "2026-01-05T03:00:00Z", Some("2026-01-05T04:00:00Z")),
        ] {
            s.record_snapshot(&r).unwrap();
        }
        let got = s.newest_snapshots("daily").unwrap();
        let want = vec![
            NewestSnapshot {
                tenant: "a".into(),
                created_at: "2026-01-03T03:00:00Z".into(),
                synced_at: Some("2026-01-02T04:00:00Z".into()),
            },
            NewestSnapshot { tenant: "c".into(), created_at: "2026-01-01T03:00:00Z".into(), synced_at: None },
        ];
        assert_eq!(got, want);
        // The answer the full scan gives, computed the way status did before.
        let mut newest = std::collections::BTreeMap::new();
        let mut synced = std::collections::BTreeMap::new();
        for r in s.snapshots().unwrap().into_iter().filter(|r| r.kind == "daily") {
            let Some(t) = r.tenant.clone() else { continue };
            if newest.get(&t).is_none_or(|c: &String| r.created_at > *c) {
                newest.insert(t.clone(), r.created_at.clone());
            }
            if let Some(v) = &r.remote_verified_at {
                if synced.get(&t).is_none_or(|c: &(String, String)| r.created_at > c.0) {
                    synced.insert(t, (r.created_at.clone(), v.clone()));
                }
            }
        }
        let scanned: Vec<NewestSnapshot> = newest
            .into_iter()
            .map(|(t, c)| NewestSnapshot { synced_at: synced.get(&t).map(|v| v.1.clone()), tenant: t, created_at: c })
            .collect();
        assert_eq!(got, scanned);
    }

    #[test]
    fn a_step_ended_with_the_next_begun_is_one_write_of_both_rows() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("state.db")).unwrap();
        let id = "20261122T030000Z-0001";
        s.start_run(&run(id, "rollout")).unwrap();
        let stop = s.begin_step(id, Some("t1"), "stop", "{\"n\":1}").unwrap();
        let next =
            s.end_step_and_begin(stop, "ok", Some("{\"n\":2}"), id, Some("t1"), "copy-delta", "{\"n\":3}").unwrap();
        let rows = s.steps(id).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].outcome.as_deref(), rows[0].detail.as_deref()), (Some("ok"), Some("{\"n\":2}")));
        assert_eq!((rows[1].id, rows[1].step.as_str(), rows[1].outcome.as_deref()), (next, "copy-delta", None));
        // Refused as a whole: the end is not written without the begin.
        s.conn
            .execute_batch("CREATE TRIGGER no_more BEFORE INSERT ON steps BEGIN SELECT RAISE(ABORT, 'full'); END;")
            .unwrap();
        assert!(s.end_step_and_begin(next, "ok", None, id, Some("t1"), "switch", "{}").is_err());
        assert_eq!(s.steps(id).unwrap()[1].outcome, None);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.db");
        Connection::open(&p).unwrap().pragma_update(None, "user_version", 99).unwrap();
        assert!(matches!(Store::open(&p), Err(StateError::TooNew { found: 99, .. })));
    }

    #[test]
    fn runs_and_steps_journal_before_and_after() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("state.db")).unwrap();
        let id = "20261122T030000Z-0001";
        s.start_run(&run(id, "rollout")).unwrap();
        let st = s.begin_step(id, Some("t1"), "stop", "{\"container\":\"c1\"}").unwrap();
        assert_eq!(s.unfinished_runs().unwrap().len(), 1);
        assert_eq!(s.steps(id).unwrap()[0].finished_at, None);
        s.end_step(st, "ok", None).unwrap();
        s.record_tenant(&TenantResult {
            run_id: id.into(),
            tenant: "t1".into(),
            from_digest: None,
            to_digest: Some("sha256:d1".into()),
            outcome: "halted".into(),
            downtime_ms: Some(1200),
            detail: None,
            proxy_requests: Some(250),
            proxy_failed: Some(0),
            proxy_downtime_ms: Some(0),
        })
        .unwrap();
        s.finish_run(id, "halted", 3, "canary t1 failed").unwrap();
        assert!(s.unfinished_runs().unwrap().is_empty());
        let step = &s.steps(id).unwrap()[0];
        assert_eq!((step.outcome.as_deref(), step.detail.as_deref()), (Some("ok"), Some("{\"container\":\"c1\"}")));
        assert_eq!(
            s.last_run_for("rollout", "pulse", "sha256:d1").unwrap().unwrap().outcome.as_deref(),
            Some("halted")
        );
        assert_eq!(s.unresolved_halts().unwrap().len(), 1);
        s.resolve_run(id, "rollback 20261122T040000Z-0002").unwrap();
        assert!(s.unresolved_halts().unwrap().is_empty());
        assert_eq!(s.tenants(id).unwrap()[0].downtime_ms, Some(1200));
        assert_eq!(s.tenants(id).unwrap()[0].proxy_requests, Some(250));
    }

    #[test]
    fn many_processes_opening_a_fresh_file_at_once_all_get_it() {
        for _ in 0..20 {
            let d = tempfile::tempdir().unwrap();
            let p = d.path().join("state.db");
            let handles: Vec<_> = (0..6)
                .map(|_| {
                    let p = p.clone();
                    std::thread::spawn(move || Store::open(&p).map(|s| s.schema_version().unwrap()))
                })
                .collect();
            for h in handles {
                assert_eq!(h.join().unwrap().unwrap(), MIGRATIONS.len() as i64);
            }
        }
    }

    #[test]
    fn two_writers_at_once_wait_rather_than_fail() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.db");
        Store::open(&p).unwrap();
        let handles: Vec<_> = (0..2)
            .map(|w| {
                let p = p.clone();
                std::thread::spawn(move || {
                    let s = Store::open(&p).unwrap();
                    for i in 0..200 {
                        let id = format!("20261122T03{w:02}{:02}Z-{i:04}", i % 60);
                        s.start_run(&run(&id, "snapshot")).unwrap();
                        let st = s.begin_step(&id, None, "archive", "{}").unwrap();
                        s.end_step(st, "ok", None).unwrap();
                    }
                })
            })
            .collect();
        // A third connection holds a write lock for a while: the writers must wait, not fail.
        let mut blocker = Connection::open(&p).unwrap();
        let tx = blocker.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        tx.commit().unwrap();
        for h in handles {
            h.join().unwrap();
        }
        let s = Store::open(&p).unwrap();
        let n: i64 = s.conn.query_row("SELECT COUNT(*) FROM steps", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 400);
    }
}
