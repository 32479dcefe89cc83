//! Undo of one tenant's rollout, shared by `rollout` (a failed step or a signal), `rollback`
//! (a person's decision) and `recover` (a killed run): bring the tenant back to its prior
//! container and data from its [`TenantJournal`] alone, whatever step it was caught in.
//!
//! Every action is idempotent and journaled as an [`UndoStep`], so `recover` can run this
//! again after a crash in the middle of it. Nothing here returns early with the tenant down: a
//! journal write that fails is noted and the undo goes on, an engine error ends it with an
//! [`UndoResult`] that says what was done and what was not (exit 4: a person is needed).
//!
//! Also the rollout copy's other ends, shared by `rollout` and `recover`: [`archive_copy`]
//! (the run's archive made from the copy once the tenant is healthy, then the copy removed)
//! and [`drop_copy`] (a copy the undo did not need: the data dir was never touched).
//! A copy is removed only once an archive of it is recorded, or while the data dir is still
//! the very data it copies.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::adapters::archive;
use crate::adapters::confined;
use crate::adapters::docker::{digest_of_ref, Engine, ENGINE_WAIT};
use crate::adapters::health::Prober;
use crate::context::Ctx;
use crate::error::{ArchiveError, Error, Result};
use crate::layout::{self, SnapshotId, SnapshotKind};
use crate::manifest::{ArchiveEntry, Manifest};
use crate::step::{DbJournal, TenantJournal, UndoStep};
use crate::types::RunId;

/// zstd level of rollout archives (taken while the tenant is down on the archive path: speed
/// over ratio; the same level off the critical path keeps one format for both paths).
pub const ROLLOUT_ZSTD_LEVEL: i32 = 1;

/// The result of undoing a tenant.
#[derive(Debug, Clone, Serialize)]
pub struct UndoResult {
    /// The prior container runs, healthy, on its data.
    pub ok: bool,
    /// What was done, or what state it was left in.
    pub detail: String,
    /// How long its parts took.
    pub timings: UndoTimings,
}

/// Milliseconds spent in the parts of an undo that a person waits for.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct UndoTimings {
    /// Putting the pre-rollout data back (a rename of the copy, or an archive extracted).
    pub restore_ms: u64,
    /// Starting the prior container and waiting for its health check.
    pub prior_ms: u64,
}

/// The undo's journal. A write that fails (state.db locked, its disk full) is recorded and the
/// undo goes on: bringing the tenant back matters more than writing down that it was, and
/// every undo action is idempotent, so a later `recover` replaying an older row is harmless.
pub(crate) struct UndoJournal<'a> {
    ctx: &'a Ctx,
    /// Journal writes that failed, for the result's detail.
    pub(crate) failed: Vec<String>,
}

impl<'a> UndoJournal<'a> {
    /// The journal of an undo run under `ctx`'s run.
    pub(crate) fn new(ctx: &'a Ctx) -> UndoJournal<'a> {
        UndoJournal { ctx, failed: Vec::new() }
    }

    /// Journal an undo step as begun (then its crash point).
    fn begin(&mut self, j: &TenantJournal, step: UndoStep) -> Option<i64> {
        self.begin_with(&j.tenant, j, step)
    }

    /// Journal an undo step of `tenant` as begun with `detail` (any tenant's journal: a single
    /// container's or a stack's), then its crash point.
    fn begin_with(&mut self, tenant: &str, detail: &impl Serialize, step: UndoStep) -> Option<i64> {
        let id = match self.ctx.begin(Some(tenant), step, detail) {
            Ok(id) => Some(id),
            Err(e) => {
                self.failed(step, "begun", &e);
                None
            }
        };
        step.during().reach();
        id
    }

    /// Journal an undo step as ended with `outcome` and `detail`.
    fn end(&mut self, id: Option<i64>, step: UndoStep, outcome: &str, detail: Option<&impl Serialize>) {
        if let Some(id) = id {
            if let Err(e) = self.ctx.end(id, outcome, detail) {
                self.failed(step, outcome, &e);
            }
        }
    }

    /// Journal the undo step of `row` as failed with `what`.
    pub(crate) fn end_failed(&mut self, row: Option<(i64, UndoStep)>, what: &str) {
        if let Some((id, s)) = row {
            self.end(Some(id), s, "failed", Some(&serde_json::json!({"error": what})));
        }
    }

    /// Journal an undo step as ended well (then its crash point).
    fn end_ok(&mut self, id: Option<i64>, step: UndoStep) {
        self.end(id, step, "ok", None::<&()>);
        step.after().reach();
    }

    fn failed(&mut self, step: UndoStep, what: &str, e: &Error) {
        tracing::warn!("the journal could not record {step} as {what}: {e}; the undo goes on");
        self.failed.push(format!("{step} {what} ({e})"));
    }

    /// What to add to the result's detail.
    fn note(&self) -> String {
        if self.failed.is_empty() {
            String::new()
        } else {
            format!("; state.db could not record: {}", self.failed.join(", "))
        }
    }
}

/// An engine call of an undo, waiting out an engine that does not answer (dockerd restarting:
/// its socket gone for seconds) for up to [`ENGINE_WAIT`], then made again; an engine that
/// answers with an error is not waited for. An undo given up after a few seconds would leave
/// the tenant down.
pub(crate) async fn patient<T, F, Fut>(engine: &Engine, mut call: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let deadline = std::time::Instant::now() + ENGINE_WAIT;
    loop {
        match call().await {
            Err(e) if e.engine_unreachable() && std::time::Instant::now() < deadline => {
                tracing::warn!("{e}; the undo waits for the Docker engine (up to {} s)", ENGINE_WAIT.as_secs());
                engine.wait_ready(deadline.saturating_duration_since(std::time::Instant::now())).await;
            }
            r => return r,
        }
    }
}

/// The id of the container named `name`, waiting out an engine restart.
async fn look(engine: &Engine, name: &str) -> Result<Option<String>> {
    patient(engine, || engine.id_of(name)).await
}

/// Bring a tenant back to its prior container and data, whatever step it was caught in:
/// recreate the prior container aside from the prior image when it is gone, remove a new
/// container, restore the snapshot when the new version may have written to the data
/// (`restore_data`), rename the prior container back, put its restart policy back, start it
/// and health-check it.
///
/// The prior container exists again before the new one is removed, so a crash anywhere in
/// here leaves `recover` a prior container to bring back (the recreated one's id is journaled
/// with the steps after it).
pub async fn undo_tenant(
    ctx: &Ctx,
    engine: &Engine,
    prober: &Prober,
    j: &TenantJournal,
    restore_data: bool,
) -> Result<UndoResult> {
    let mut journal = UndoJournal { ctx, failed: Vec::new() };
    let result = undo(&mut journal, engine, prober, j, restore_data).await;
    Ok(UndoResult { ok: result.ok, detail: format!("{}{}", result.detail, journal.note()), timings: result.timings })
}

/// [`undo_tenant`]'s work. It never returns early with an error: whatever fails is an
/// [`UndoResult`] that says what was done and what was not.
async fn undo(
    journal: &mut UndoJournal<'_>,
    engine: &Engine,
    prober: &Prober,
    j: &TenantJournal,
    restore_data: bool,
) -> UndoResult {
    let mut j = j.clone();
    let mut done: Vec<String> = Vec::new();
    let tenant = j.tenant.clone();
    let fail = |journal: &mut UndoJournal<'_>, step: Option<(i64, UndoStep)>, what: String, done: &[String]| {
        journal.end_failed(step, &what);
        let state = if done.is_empty() {
            "nothing was undone".to_string()
        } else {
            format!("done so far: {}", done.join(", "))
        };
        UndoResult {
            ok: false,
            detail: format!("UNDO FAILED for tenant {tenant}: {what}; {state}"),
            timings: UndoTimings::default(),
        }
    };
    // A step's journal row, when it could be written, for `fail`.
    let row = |id: Option<i64>, s: UndoStep| id.map(|id| (id, s));
    // A hook's one-shot container a killed run left (`[app.hooks]`) runs the new version's
    // code on the tenant's data: it goes before anything is put back (nothing when none).
    if let Err(e) = engine.remove(&crate::naming::hook(&j.pre_name)).await {
        tracing::warn!("tenant {tenant}: a hook container may be left: {e}");
    }

    let looked = async {
        let current = look(engine, &j.name).await?;
        let pre = look(engine, &j.pre_name).await?;
        let old_by_id = if j.old_id.is_empty() { None } else { look(engine, &j.old_id).await? };
        Ok::<_, Error>((current, pre, old_by_id))
    };
    let (current, mut pre, old_by_id) = match looked.await {
        Ok(l) => l,
        Err(e) => return fail(journal, None, format!("cannot tell which containers exist: {e}"), &done),
    };
    // Nothing is touched unless the data can be put back: removing the new version and
    // starting the prior one on the data the new one wrote would pass for a restore.
    if let Some(why) = restore_data.then(|| missing_data(&j)).flatten() {
        let what = format!(
            "the data from before the rollout cannot be put back: {why}; the tenant was left as it is rather than \
             start the prior version on the data the new one wrote"
        );
        return fail(journal, None, what, &done);
    }
    // A container under the set-aside name that is not the prior one slipway set aside (by
    // the journaled id), while that one still exists, is not slipway's to rename back or
    // start. (With the journaled one gone, a container under this run's set-aside name is the
    // one an earlier undo recreated and was killed before it could journal its id.)
    if let Some(p) = pre.as_deref().filter(|p| !j.old_id.is_empty() && *p != j.old_id && old_by_id.is_some()) {
        let what = format!(
            "container {} is {}, not the prior container {} that slipway set aside; it was left alone",
            j.pre_name,
            short(p),
            short(&j.old_id)
        );
        return fail(journal, None, what, &done);
    }

    // The container under the tenant's name, if it is not the prior one, is the new version;
    // so is one still under its staging name (created before the stop, never switched in).
    let new = current.filter(|id| *id != j.old_id);
    let staged = match j.staged_name.as_deref() {
        Some(n) => match look(engine, n).await {
            Ok(id) => id.filter(|id| *id != j.old_id && Some(id) != new.as_ref()),
            Err(e) => return fail(journal, None, format!("cannot tell whether {n} exists: {e}"), &done),
        },
        None => None,
    };
    if let Some(id) = new.as_deref().filter(|_| old_by_id.is_none() && pre.is_none()) {
        // The prior container is gone (a finished run without --keep-old): rebuild it aside,
        // from the new one's settings on the prior image.
        let s = journal.begin(&j, UndoStep::RecreatePrior);
        let created = match patient(engine, || engine.spec(id)).await {
            Ok(spec) => match patient(engine, || prior_image(engine, &j)).await {
                Ok(image) => patient(engine, || engine.create_from(&j.pre_name, &spec, &image)).await,
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        match created {
            Ok(prior) => {
                j.old_id = prior.clone();
                pre = Some(prior);
            }
            Err(e) => {
                let what = format!("cannot recreate the prior container from {}: {e}", j.old_image);
                return fail(journal, row(s, UndoStep::RecreatePrior), what, &done);
            }
        }
        // The recreated container's id goes into the journal with this step's end.
        journal.end(s, UndoStep::RecreatePrior, "ok", Some(&j));
        UndoStep::RecreatePrior.after().reach();
        done.push(format!("prior container recreated from {}", j.old_image));
    }
    let to_remove: Vec<String> = new.iter().chain(staged.iter()).cloned().collect();
    if !to_remove.is_empty() {
        let s = journal.begin(&j, UndoStep::RemoveNew);
        for id in &to_remove {
            let removed = patient(engine, || async {
                engine.stop(id, j.stop_timeout_s).await?;
                engine.remove(id).await
            })
            .await;
            if let Err(e) = removed {
                let what = format!("cannot remove the new container {}: {e}", j.name);
                return fail(journal, row(s, UndoStep::RemoveNew), what, &done);
            }
        }
        journal.end_ok(s, UndoStep::RemoveNew);
        done.push("new container removed".to_string());
    }
    // The database (`[app.database]`) before the files: with the new version gone, dump what it
    // left (kept), then make the database exactly the pre-switch dump. A failure here stops
    // the undo with nothing more changed: the prior version is never started on a database
    // the new one migrated.
    if restore_data && j.db.as_ref().is_some_and(|d| d.dumps.is_some()) {
        if let Some(p) = pre.as_deref().or(old_by_id.as_deref()) {
            let _ = patient(engine, || engine.stop(p, j.stop_timeout_s)).await;
        }
        let tenant = j.tenant.clone();
        if let Err((step, what)) =
            undo_database(journal, engine, &tenant, &mut j, |j| j.db.as_mut(), None, &mut done).await
        {
            return fail(journal, step, what, &done);
        }
    }
    let mut timings = UndoTimings::default();
    let restore_began = std::time::Instant::now();
    let copy_in_place = restore_data && copy_state(&j) != CopyState::Gone;
    if copy_in_place {
        // The pre-rollout copy beside the data dir: swapped back in with one rename.
        let s = journal.begin(&j, UndoStep::Restore);
        if let Some(p) = pre.as_deref().or(old_by_id.as_deref()) {
            let _ = patient(engine, || engine.stop(p, j.stop_timeout_s)).await;
        }
        let (copy, ino, d) = (j.copy.clone().unwrap_or_default(), j.copy_ino.unwrap_or_default(), j.data_dir.clone());
        let c = copy.clone();
        let swapped = match crate::blocking::run("restore", move || swap_in_copy(&c, ino, &d)).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let old = match swapped {
            Ok(old) => old,
            Err(e) => {
                let what =
                    format!("swapping the rollout copy {} into {} failed: {e}", copy.display(), j.data_dir.display());
                return fail(journal, row(s, UndoStep::Restore), what, &done);
            }
        };
        let ctx = journal.ctx;
        let kept = old.map(|old| crate::fsutil::keep_replaced(&ctx.cfg.backup_root, ctx.run_id(), &j.tenant, &old));
        let _ = std::fs::remove_file(layout::mirror_index(&copy));
        remove_empty_parents(&copy);
        journal.end_ok(s, UndoStep::Restore);
        done.push(format!("data restored from the rollout copy {} (a rename)", copy.display()));
        if let Some(k) = kept {
            done.push(format!("the data it replaced is kept in {}", k.display()));
        }
    }
    if restore_data && !copy_in_place {
        if let (Some(snap), Some(sha)) = (j.snapshot.clone(), j.sha256.clone()) {
            let s = journal.begin(&j, UndoStep::Restore);
            // Stop the prior container too if something started it: nothing may hold the data.
            if let Some(p) = pre.as_deref().or(old_by_id.as_deref()) {
                let _ = patient(engine, || engine.stop(p, j.stop_timeout_s)).await;
            }
            let (a, d) = (snap.clone(), j.data_dir.clone());
            let r = crate::blocking::run("restore", move || archive::restore_swap_keep(&a, &sha, &d)).await;
            let old = match r {
                Ok(Ok((_, old))) => old,
                Ok(Err(e)) => {
                    let what = format!("restoring {} from {} failed: {e}", j.data_dir.display(), snap.display());
                    return fail(journal, row(s, UndoStep::Restore), what, &done);
                }
                Err(e) => {
                    let what = format!("restoring {} from {} failed: {e}", j.data_dir.display(), snap.display());
                    return fail(journal, row(s, UndoStep::Restore), what, &done);
                }
            };
            // What the new version wrote is never deleted: it is kept under replaced/<run>/,
            // listed here (and so in the run record), and retired by prune like a rollout run.
            let ctx = journal.ctx;
            let kept = old.map(|old| crate::fsutil::keep_replaced(&ctx.cfg.backup_root, ctx.run_id(), &j.tenant, &old));
            journal.end_ok(s, UndoStep::Restore);
            done.push(format!("data restored from {}", snap.display()));
            if let Some(k) = kept {
                done.push(format!("the data it replaced is kept in {}", k.display()));
            }
        }
    }
    if restore_data {
        timings.restore_ms = restore_began.elapsed().as_millis() as u64;
    }
    if pre.is_some() {
        let s = journal.begin(&j, UndoStep::RenameBack);
        crate::context::test_pause("undo-before-rename-back");
        // Converge: a Docker call in flight when a run was killed (a create) can complete after
        // the look above and take the tenant's name. Whatever holds the name that is not the
        // prior container is the new version: remove it and try again, a few times.
        let mut last = None;
        for attempt in 0..3 {
            match patient(engine, || engine.rename(&j.pre_name, &j.name)).await {
                Ok(()) => {
                    last = None;
                    break;
                }
                Err(e) => {
                    // The prior container, by id: as found aside above, or as journaled.
                    let is_prior = |id: &str| pre.as_deref() == Some(id) || j.old_id == id;
                    let holder = engine.id_of(&j.name).await.ok().flatten();
                    match holder {
                        // The rename did happen (its answer was lost): the prior holds the name.
                        Some(h) if is_prior(&h) => {
                            last = None;
                            break;
                        }
                        Some(h) => {
                            tracing::warn!(
                                "tenant {}: {} appeared under the tenant's name while undoing; removing it (attempt {})",
                                j.tenant,
                                &h[..12.min(h.len())],
                                attempt + 1
                            );
                            let _ = engine.stop(&h, j.stop_timeout_s).await;
                            let _ = engine.remove(&h).await;
                            done.push(format!("a late-created container {} removed", &h[..12.min(h.len())]));
                        }
                        _ => tokio::time::sleep(std::time::Duration::from_millis(500)).await,
                    }
                    last = Some(e);
                }
            }
        }
        if let Some(e) = last {
            let what = format!("cannot rename {} back to {}: {e}", j.pre_name, j.name);
            return fail(journal, row(s, UndoStep::RenameBack), what, &done);
        }
        journal.end_ok(s, UndoStep::RenameBack);
        done.push("prior container renamed back".to_string());
    }
    if !j.was_running {
        // It was stopped before the rollout (a suspended tenant, say): it stays stopped.
        done.push("prior container back, left stopped as it was before the rollout".to_string());
        if let Some(restart) = j.restart.as_ref().filter(|r| r.restarts()) {
            let s = journal.begin(&j, UndoStep::StartPrior);
            if let Err(e) = patient(engine, || engine.set_restart(&j.name, restart)).await {
                let what =
                    format!("cannot put back the restart policy {restart} of the prior container {}: {e}", j.name);
                return fail(journal, row(s, UndoStep::StartPrior), what, &done);
            }
            journal.end_ok(s, UndoStep::StartPrior);
        }
        if let Err(e) = drop_unneeded_copy(&j, restore_data, &mut done).await {
            done.push(format!("the unneeded rollout copy could not be removed ({e}); remove it by hand"));
        }
        return UndoResult { ok: true, detail: done.join(", "), timings };
    }
    let prior_began = std::time::Instant::now();
    let s = journal.begin(&j, UndoStep::StartPrior);
    // The prior container by its id (found aside, or by the journaled id): whatever else may
    // hold the tenant's name by now, only the prior one is ever started here, never a
    // container found by name. A new container (staged with the tenant's final restart
    // policy) was removed above.
    let Some(prior) = pre.clone().or(old_by_id.clone()) else {
        let what = format!(
            "the prior container of {} is gone ({} exists neither under {} nor by its id) and could not be \
             recreated: no new container was left to take its settings from",
            j.name,
            short(&j.old_id),
            j.pre_name
        );
        return fail(journal, row(s, UndoStep::StartPrior), what, &done);
    };
    // Its restart policy was set to `no` while it was aside; put it back whatever step the
    // rollout was caught in (setting it again is harmless).
    if let Some(restart) = j.restart.as_ref().filter(|r| r.restarts()) {
        if let Err(e) = patient(engine, || engine.set_restart(&prior, restart)).await {
            let what = format!("cannot put back the restart policy {restart} of the prior container {}: {e}", j.name);
            return fail(journal, row(s, UndoStep::StartPrior), what, &done);
        }
    }
    // Something other than slipway may have started it while slipway had it stopped (a
    // systemd unit running `docker start -a`, compose, Portainer): it is not started again, and
    // the report says so.
    match patient(engine, || engine.state(&prior)).await {
        Ok(st) if st.running || st.restarting || st.paused => done.push(
            "the prior container was already running: something other than slipway started it while slipway had \
             it stopped (a systemd unit running `docker start -a`, compose, Portainer?); slipway did not start it \
             again"
                .to_string(),
        ),
        _ => {
            if let Err(e) = patient(engine, || engine.start(&prior)).await {
                let what = format!("cannot start the prior container {}: {e}", j.name);
                return fail(journal, row(s, UndoStep::StartPrior), what, &done);
            }
        }
    }
    journal.end_ok(s, UndoStep::StartPrior);
    let s = journal.begin(&j, UndoStep::HealthPrior);
    let why = match patient(engine, || prober.gate(engine, &j.name, &j.health, None)).await {
        Ok(Ok(_)) => None,
        Ok(Err(why)) => Some(why.to_string()),
        Err(e) => Some(e.to_string()),
    };
    match why {
        None => {
            journal.end_ok(s, UndoStep::HealthPrior);
            done.push("prior container running and healthy".to_string());
            timings.prior_ms = prior_began.elapsed().as_millis() as u64;
            if let Err(e) = drop_unneeded_copy(&j, restore_data, &mut done).await {
                done.push(format!("the unneeded rollout copy could not be removed ({e}); remove it by hand"));
            }
            UndoResult { ok: true, detail: done.join(", "), timings }
        }
        Some(why) => {
            let what = format!("the prior container {} is not healthy: {why}", j.name);
            fail(journal, row(s, UndoStep::HealthPrior), what, &done)
        }
    }
}

/// Where the database steps of an undo stopped: the failed step's journal row (when it was
/// written) and what failed.
pub(crate) type DbUndoFailed = (Option<(i64, UndoStep)>, String);

/// The database steps of an undo (`[app.database]`, the journal holding the pre-switch dumps),
/// shared by a single container's undo and a stack's: run once the new version is removed and
/// nothing that writes to the database runs, before the files are put back and before anything
/// of the prior version starts. First the database as the new version left it is dumped and
/// kept ([`UndoStep::DbKeep`]; once: the kept dumps go into the journal `j` with the step's
/// end, so a second undo never dumps again over them), then the database is made exactly the
/// pre-switch dump ([`UndoStep::DbReplay`]). `db_of` finds the [`DbJournal`] in `j`; `at`
/// names the container to reach the database in when it is not the journaled one (a stack's
/// database service whose prior container is aside, by its id). Err: nothing more may be
/// done (the caller ends the failed row and reports `done` so far).
pub(crate) async fn undo_database<J: Serialize>(
    journal: &mut UndoJournal<'_>,
    engine: &Engine,
    tenant: &str,
    j: &mut J,
    db_of: fn(&mut J) -> Option<&mut DbJournal>,
    at: Option<&str>,
    done: &mut Vec<String>,
) -> std::result::Result<(), DbUndoFailed> {
    let Some(db) = db_of(j).map(|d| d.clone()) else { return Ok(()) };
    let tenant_id: crate::types::TenantId =
        tenant.parse().map_err(|e| (None, format!("the journal's tenant {tenant:?} is not a tenant id: {e}")))?;
    let mut reach = db.clone();
    if let Some(c) = at {
        reach.container = c.to_string();
    }
    let kept_dir = |d: &crate::manifest::DatabaseDumps| {
        d.dumps.first().and_then(|e| Path::new(&e.path).parent()).map(|p| db.run_dir.join(p))
    };
    let row = |id: Option<i64>, s: UndoStep| id.map(|id| (id, s));
    if db.kept.is_none() {
        let s = journal.begin_with(tenant, &*j, UndoStep::DbKeep);
        match crate::database::keep_as_left(engine, &reach, &tenant_id).await {
            Ok(kept) => {
                if let Some(k) = kept_dir(&kept) {
                    done.push(format!("the database as the new version left it is kept in {}", k.display()));
                }
                if let Some(d) = db_of(j) {
                    d.kept = Some(kept);
                }
            }
            Err(e) => {
                let what = format!(
                    "the database as the new version left it could not be dumped ({e}); it was not replayed over"
                );
                return Err((row(s, UndoStep::DbKeep), what));
            }
        }
        journal.end(s, UndoStep::DbKeep, "ok", Some(&*j));
        UndoStep::DbKeep.after().reach();
    } else if let Some(k) = db.kept.as_ref().and_then(kept_dir) {
        done.push(format!("the database as the new version left it is kept in {}", k.display()));
    }
    let s = journal.begin_with(tenant, &*j, UndoStep::DbReplay);
    match crate::database::replay_pre_switch(engine, &reach, &tenant_id).await {
        Ok(replaced) => {
            journal.end_ok(s, UndoStep::DbReplay);
            done.push(format!(
                "database replayed from the pre-switch dump (the database it replaced is kept as {})",
                replaced.join(", ")
            ));
            Ok(())
        }
        Err(e) => {
            let what = format!("{e}; the prior container was not started, everything is kept");
            Err((row(s, UndoStep::DbReplay), what))
        }
    }
}

/// Why the pre-switch database dumps a journal names cannot be replayed, if one is gone.
pub(crate) fn missing_dumps(db: Option<&DbJournal>) -> Option<String> {
    let (db, dumps) = db.and_then(|d| d.dumps.as_ref().map(|x| (d, x)))?;
    let gone = dumps.dumps.iter().map(|e| db.run_dir.join(&e.path)).find(|p| !p.is_file())?;
    Some(format!("the run's pre-switch database dump {} is gone (pruned, or deleted)", gone.display()))
}

/// The first 12 hex digits of a container or image id.
fn short(id: &str) -> String {
    id.trim_start_matches("sha256:").chars().take(12).collect()
}

/// The image to recreate the prior container from: exactly the image it ran (by the
/// journaled image id), under its original reference while that still names it, else its
/// `repo@digest` (pulled back when the engine lost it), else the bare id. Journals of earlier
/// versions hold only the reference: it is used, pulled back by its digest when it is gone.
pub async fn prior_image(engine: &Engine, j: &TenantJournal) -> Result<String> {
    image_to_recreate(engine, &j.old_image, j.old_image_id.as_deref(), j.old_digest.as_deref(), &j.pre_name).await
}

/// [`prior_image`] from its parts (a stack service's journal has them too): the image
/// `reference` a container ran, its image id and digest when journaled; `aside` names the
/// container in the error.
pub async fn image_to_recreate(
    engine: &Engine,
    reference: &str,
    image_id: Option<&str>,
    digest: Option<&str>,
    aside: &str,
) -> Result<String> {
    if let Some(id) = image_id.filter(|id| !id.is_empty()) {
        let digest = digest.map(str::to_string).or_else(|| digest_of_ref(reference).map(|d| d.to_string()));
        return engine.image_ref_for(reference, id, digest.as_deref()).await;
    }
    if engine.image_id(reference).await?.is_some() {
        return Ok(reference.to_string());
    }
    let img = reference.parse::<crate::types::PinnedImage>().map_err(|_| Error::Docker {
        op: format!("the image {reference} is gone from the engine and has no digest to pull it back by"),
        container: Some(aside.to_string()),
        source: None,
    })?;
    engine.pull(&img).await?;
    Ok(reference.to_string())
}

/// Why the tenant's data from before the rollout cannot be put back, if it cannot: the
/// rollout copy is gone (or was never complete) and the run's archive is not there either.
/// Only what is on disk is looked at (no hashing): the undo of a failed rollout must not wait.
pub fn missing_data(j: &TenantJournal) -> Option<String> {
    if let Some(why) = missing_dumps(j.db.as_ref()) {
        return Some(why);
    }
    if copy_state(j) != CopyState::Gone {
        return None;
    }
    match (&j.snapshot, &j.copy) {
        (Some(a), _) if a.is_file() && j.sha256.is_some() => None,
        (Some(a), _) => Some(format!("the run's archive of its data, {}, is gone (pruned, or deleted)", a.display())),
        (None, Some(c)) => Some(format!(
            "the rollout copy {} is gone (removed by hand?) and no archive of it was ever made",
            c.display()
        )),
        (None, None) => Some("the run journaled no snapshot of its data".to_string()),
    }
}

/// [`missing_data`], and the archive re-hashed against the journal and the run's manifest:
/// what `rollback` checks of every tenant before it touches any. Hashing runs off the async
/// runtime.
pub async fn check_data(j: &TenantJournal) -> Result<Option<String>> {
    if let Some(why) = missing_data(j) {
        return Ok(Some(why));
    }
    let (Some(archive_path), Some(want), CopyState::Gone) = (j.snapshot.clone(), j.sha256.clone(), copy_state(j))
    else {
        return Ok(None);
    };
    let in_manifest = match archive_path.parent().map(Manifest::read) {
        Some(Ok(Some(m))) => m.tenant(&j.tenant).map(|e| e.sha256.clone()),
        Some(Err(e)) => {
            return Ok(Some(format!("the run's manifest beside {} cannot be read: {e}", archive_path.display())))
        }
        _ => None,
    };
    if in_manifest.as_deref() != Some(want.as_str()) {
        return Ok(Some(format!(
            "the run's manifest beside {} does not list it with sha256 {want} (it says {})",
            archive_path.display(),
            in_manifest.as_deref().unwrap_or("nothing")
        )));
    }
    let a = archive_path.clone();
    let (got, _) = crate::blocking::run("hash", move || archive::sha256_file(&a)).await??;
    Ok((got != want).then(|| {
        format!(
            "the run's archive of its data, {}, is damaged: its sha256 is {got}, the run's manifest says {want}",
            archive_path.display()
        )
    }))
}

/// Where a journal's rollout copy stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CopyState {
    /// No copy, or it is gone (archived and removed, or never made).
    Gone,
    /// The copy lies beside the data dir, complete (its inode journaled after copy-delta).
    Ready,
    /// The data dir is the copy: a swap already happened.
    Swapped,
}

fn copy_state(j: &TenantJournal) -> CopyState {
    let (Some(copy), Some(ino)) = (j.copy.as_deref(), j.copy_ino) else { return CopyState::Gone };
    // Archived: the copy was removed once its archive was recorded, and its inode number may
    // have been given to another dir since; only the archive speaks for that data now.
    if j.snapshot.is_some() {
        return CopyState::Gone;
    }
    copy_state_at(copy, ino, &j.data_dir, &j.tenant)
}

/// Where the complete copy `copy` (inode `ino`) of `data_dir` stands (a stack's mount, or a
/// tenant's data dir whose copy was not archived yet).
pub(crate) fn copy_state_at(copy: &Path, ino: u64, data_dir: &Path, tenant: &str) -> CopyState {
    // A swap without RENAME_EXCHANGE that a crash cut short is finished before anything looks.
    if let Err(e) = confined::finish_swap(data_dir) {
        tracing::warn!("tenant {tenant}: {e}");
    }
    let ino_of = |p: &Path| std::fs::symlink_metadata(p).ok().filter(|m| m.is_dir()).map(|m| m.ino());
    if ino_of(data_dir) == Some(ino) {
        CopyState::Swapped
    } else if ino_of(copy) == Some(ino) {
        CopyState::Ready
    } else {
        CopyState::Gone
    }
}

/// Swap the complete copy `copy` (inode `ino`) into `data_dir` with `RENAME_EXCHANGE`: one
/// rename, both on one filesystem. Returns where the data it replaced now is (the copy's old
/// path), if anything is there. Run again after the swap (a crash before it was journaled), it
/// sees the data dir is already the copy and does nothing more.
pub(crate) fn swap_in_copy(
    copy: &Path,
    ino: u64,
    data_dir: &Path,
) -> std::result::Result<Option<PathBuf>, ArchiveError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |e: std::io::Error| ArchiveError::Io { path: p, source: e }
    };
    confined::finish_swap(data_dir).map_err(io(data_dir))?;
    let now = std::fs::symlink_metadata(data_dir).map_err(io(data_dir))?;
    if now.ino() == ino {
        return Ok(copy.exists().then(|| copy.to_path_buf()));
    }
    let c = std::fs::symlink_metadata(copy).map_err(io(copy))?;
    if !c.is_dir() || c.ino() != ino {
        return Err(ArchiveError::Io {
            path: copy.to_path_buf(),
            source: std::io::Error::other("is not the copy this rollout made (its inode differs); nothing was swapped"),
        });
    }
    confined::exchange(copy, data_dir).map_err(io(data_dir))?;
    Ok(Some(copy.to_path_buf()))
}

/// Remove the run's dir of copies (and the copies' dir) beside the data dirs once empty.
pub(crate) fn remove_empty_parents(copy: &Path) {
    let mut dir = copy.parent();
    for _ in 0..2 {
        match dir {
            Some(d) if std::fs::remove_dir(d).is_ok() => dir = d.parent(),
            _ => break,
        }
    }
}

/// After an undo that did not restore data: the rollout copy is a copy of data that was never
/// touched, so it goes (only while the data dir is not itself the copy).
async fn drop_unneeded_copy(j: &TenantJournal, restore_data: bool, done: &mut Vec<String>) -> Result<()> {
    if restore_data || copy_state(j) == CopyState::Swapped {
        return Ok(());
    }
    if let Some(copy) = j.copy.clone().filter(|c| c.exists()) {
        let c = copy.clone();
        match crate::blocking::run("drop copy", move || drop_copy(&c)).await? {
            Ok(()) => done.push(format!("the unneeded rollout copy {} removed", copy.display())),
            Err(e) => tracing::warn!("tenant {}: the rollout copy {} stays: {e}", j.tenant, copy.display()),
        }
    }
    Ok(())
}

/// Remove a rollout copy, its mirror index, and the dirs above it once empty.
pub fn drop_copy(copy: &Path) -> std::result::Result<(), ArchiveError> {
    confined::remove_tree(copy).map_err(|e| ArchiveError::Io { path: copy.to_path_buf(), source: e })?;
    let _ = std::fs::remove_file(layout::mirror_index(copy));
    remove_empty_parents(copy);
    Ok(())
}

/// The run's archive of a tenant, made from its rollout copy once the new version is healthy
/// (off the critical path): written and hashed into `rollout/<run>/`, put in the run's
/// `manifest` (rewritten) and the run record; only then is the copy removed. Sets the journal's
/// `snapshot` and `sha256`. On error the copy stays.
pub async fn archive_copy(ctx: &Ctx, run: &RunId, manifest: &mut Manifest, j: &mut TenantJournal) -> Result<PathBuf> {
    let Some(copy) = j.copy.clone() else {
        return Err(Error::Other(format!("tenant {}: no rollout copy to archive", j.tenant)));
    };
    let run_dir = SnapshotId::rollout(run).dir(&ctx.cfg.backup_root);
    let archive_path = run_dir.join(layout::tenant_archive(SnapshotKind::Rollout, &j.tenant));
    let (src, dest) = (copy.clone(), archive_path.clone());
    let summary =
        crate::blocking::run("archive", move || archive::create_with_level(&src, &dest, ROLLOUT_ZSTD_LEVEL)).await??;
    let db = j.db.as_ref().and_then(|d| d.dumps.clone());
    record_rollout_archive(ctx, run, &run_dir, manifest, &j.tenant, &archive_path, &summary, db)?;
    j.snapshot = Some(archive_path.clone());
    j.sha256 = Some(summary.sha256.clone());
    // The archive is recorded: from here the copy is only being removed.
    crate::context::crash_point("rollout-copy-removing");
    let c = copy.clone();
    crate::blocking::run("drop copy", move || drop_copy(&c)).await??;
    Ok(archive_path)
}

/// Put a tenant's rollout archive (with its pre-switch database dumps, if any: one entry) in
/// run `run`'s manifest (written) and the run record.
#[allow(clippy::too_many_arguments)]
pub fn record_rollout_archive(
    ctx: &Ctx,
    run: &RunId,
    run_dir: &Path,
    manifest: &mut Manifest,
    tenant: &str,
    archive_path: &Path,
    s: &archive::ArchiveSummary,
    database: Option<crate::manifest::DatabaseDumps>,
) -> Result<()> {
    let file_list = layout::file_list_path(archive_path);
    let rel = |p: &Path| p.strip_prefix(run_dir).unwrap_or(p).to_string_lossy().into_owned();
    let entry = ArchiveEntry {
        path: rel(archive_path),
        tenant: Some(tenant.to_string()),
        sha256: s.sha256.clone(),
        size: s.size,
        files: s.files,
        file_list: rel(&file_list),
        file_list_sha256: s.file_list_sha256.clone(),
        created: None,
        database,
        mounts: Vec::new(),
        sqlite: Vec::new(),
    };
    manifest.upsert(entry.clone());
    manifest.write(run_dir)?;
    let snap = SnapshotId::rollout(run);
    ctx.record_archive(&snap.key(&entry.path), SnapshotKind::Rollout.as_str(), snap.id(), &entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swapping_the_copy_in_twice_swaps_it_once_and_says_where_the_replaced_data_is() {
        let d = tempfile::tempdir().unwrap();
        let (data, copy) = (d.path().join("t1"), d.path().join(".copies/run/t1"));
        std::fs::create_dir_all(&data).unwrap();
        std::fs::create_dir_all(&copy).unwrap();
        std::fs::write(data.join("f"), "written by the failed version").unwrap();
        std::fs::write(copy.join("f"), "pre-rollout").unwrap();
        let ino = std::fs::metadata(&copy).unwrap().ino();
        for _ in 0..2 {
            let old = swap_in_copy(&copy, ino, &data).unwrap();
            assert_eq!(old.as_deref(), Some(copy.as_path()));
            assert_eq!(std::fs::read_to_string(data.join("f")).unwrap(), "pre-rollout");
            assert_eq!(std::fs::read_to_string(copy.join("f")).unwrap(), "written by the failed version");
        }
        // A dir at the copy's path that is not the copy made is never swapped in.
        let other = d.path().join("other");
        std::fs::create_dir(&other).unwrap();
        // Not its own inode, whatever number the filesystem gave it (`ino + 1` could be it).
        let not_it = std::fs::metadata(&other).unwrap().ino() + 1;
        assert!(swap_in_copy(&other, not_it, &data).is_err());
        assert_eq!(std::fs::read_to_string(data.join("f")).unwrap(), "pre-rollout");
    }
}
