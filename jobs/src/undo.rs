//! Undo of one tenant's rollout, shared by `rollout` (a failed step or a signal), `rollback`
//! (a person's decision) and `recover` (a killed run): bring the tenant back to its prior
//! container and data from its [`TenantJournal`] alone, whatever step it was caught in.
//!
//! Every action is idempotent and journaled as an [`UndoStep`], so `recover` can run this
//! again after a crash in the middle of it. Nothing here returns early with the tenant down: a
//! journal write that fails is noted and the undo goes on, an engine error ends it with an
//! [`UndoResult`] that says what was done and what was not (exit 4: a person is needed).

use serde::Serialize;

use crate::adapters::archive;
use crate::adapters::docker::Engine;
use crate::adapters::health::Prober;
use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::step::{TenantJournal, UndoStep};

/// The result of undoing a tenant.
#[derive(Debug, Clone, Serialize)]
pub struct UndoResult {
    /// The prior container runs, healthy, on its data.
    pub ok: bool,
    /// What was done, or what state it was left in.
    pub detail: String,
}

/// The undo's journal. A write that fails (state.db locked, its disk full) is recorded and the
/// undo goes on: bringing the tenant back matters more than writing down that it was, and
/// every undo action is idempotent, so a later `recover` replaying an older row is harmless.
struct UndoJournal<'a> {
    ctx: &'a Ctx,
    /// Journal writes that failed, for the result's detail.
    failed: Vec<String>,
}

impl UndoJournal<'_> {
    /// Journal an undo step as begun (then its crash point).
    fn begin(&mut self, j: &TenantJournal, step: UndoStep) -> Option<i64> {
        let id = match self.ctx.begin(Some(j.tenant.as_str()), step.as_str(), j) {
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

/// The id of the container named `name`, asked up to three times a second apart: a
/// transient engine error must not end an undo with the tenant down.
async fn look(engine: &Engine, name: &str) -> Result<Option<String>> {
    let mut last = None;
    for attempt in 0..3 {
        if attempt > 0 {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
        match engine.id_of(name).await {
            Ok(id) => return Ok(id),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| Error::Other(format!("inspecting container {name}"))))
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
    Ok(UndoResult { ok: result.ok, detail: format!("{}{}", result.detail, journal.note()) })
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
        if let Some((id, s)) = step {
            journal.end(Some(id), s, "failed", Some(&serde_json::json!({"error": what})));
        }
        let state = if done.is_empty() {
            "nothing was undone".to_string()
        } else {
            format!("done so far: {}", done.join(", "))
        };
        UndoResult { ok: false, detail: format!("UNDO FAILED for tenant {tenant}: {what}; {state}") }
    };
    // A step's journal row, when it could be written, for `fail`.
    let row = |id: Option<i64>, s: UndoStep| id.map(|id| (id, s));

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

    // The container under the tenant's name, if it is not the prior one, is the new version.
    let new = current.filter(|id| *id != j.old_id);
    if let Some(id) = new.as_deref().filter(|_| old_by_id.is_none() && pre.is_none()) {
        // The prior container is gone (a finished run without --keep-old): rebuild it aside,
        // from the new one's settings on the prior image.
        let s = journal.begin(&j, UndoStep::RecreatePrior);
        let created = match engine.spec(id).await {
            Ok(spec) => match engine.create_from(&j.pre_name, &spec, &j.old_image).await {
                // The prior image may have been removed from the engine since (an image prune):
                // pull it back by its digest, then try once more.
                Err(e) => match j.old_image.parse::<crate::types::PinnedImage>() {
                    Ok(img) => match engine.pull(&img).await {
                        Ok(()) => engine.create_from(&j.pre_name, &spec, &j.old_image).await,
                        Err(pull) => Err(Error::Docker {
                            op: format!(
                                "recreating it from {} ({e}), and pulling that image back ({pull})",
                                j.old_image
                            ),
                            container: Some(j.pre_name.clone()),
                            source: None,
                        }),
                    },
                    Err(_) => Err(e),
                },
                ok => ok,
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
    if let Some(id) = new.as_deref() {
        let s = journal.begin(&j, UndoStep::RemoveNew);
        if let Err(e) = engine.stop(id, j.stop_timeout_s).await.and(engine.remove(id).await) {
            let what = format!("cannot remove the new container {}: {e}", j.name);
            return fail(journal, row(s, UndoStep::RemoveNew), what, &done);
        }
        journal.end_ok(s, UndoStep::RemoveNew);
        done.push("new container removed".to_string());
    }
    if restore_data {
        if let (Some(snap), Some(sha)) = (j.snapshot.clone(), j.sha256.clone()) {
            let s = journal.begin(&j, UndoStep::Restore);
            // Stop the prior container too if something started it: nothing may hold the data.
            if let Some(p) = pre.as_deref().or(old_by_id.as_deref()) {
                let _ = engine.stop(p, j.stop_timeout_s).await;
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
            let kept = old.map(|old| crate::fsutil::keep_replaced(&ctx.cfg.backup_root, &ctx.run_id, &j.tenant, &old));
            journal.end_ok(s, UndoStep::Restore);
            done.push(format!("data restored from {}", snap.display()));
            if let Some(k) = kept {
                done.push(format!("the data it replaced is kept in {}", k.display()));
            }
        }
    }
    if pre.is_some() {
        let s = journal.begin(&j, UndoStep::RenameBack);
        crate::context::test_pause("undo-before-rename-back");
        // Converge: a Docker call in flight when a run was killed (a create) can complete after
        // the look above and take the tenant's name. Whatever holds the name that is not the
        // prior container is the new version: remove it and try again, a few times.
        let mut last = None;
        for attempt in 0..3 {
            match engine.rename(&j.pre_name, &j.name).await {
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
            if let Err(e) = engine.set_restart(&j.name, restart).await {
                let what =
                    format!("cannot put back the restart policy {restart} of the prior container {}: {e}", j.name);
                return fail(journal, row(s, UndoStep::StartPrior), what, &done);
            }
            journal.end_ok(s, UndoStep::StartPrior);
        }
        return UndoResult { ok: true, detail: done.join(", ") };
    }
    let s = journal.begin(&j, UndoStep::StartPrior);
    // Its restart policy was set to `no` while it was aside; put it back whatever step the
    // rollout was caught in (setting it again is harmless).
    if let Some(restart) = j.restart.as_ref().filter(|r| r.restarts()) {
        if let Err(e) = engine.set_restart(&j.name, restart).await {
            let what = format!("cannot put back the restart policy {restart} of the prior container {}: {e}", j.name);
            return fail(journal, row(s, UndoStep::StartPrior), what, &done);
        }
    }
    if let Err(e) = engine.start(&j.name).await {
        let what = format!("cannot start the prior container {}: {e}", j.name);
        return fail(journal, row(s, UndoStep::StartPrior), what, &done);
    }
    journal.end_ok(s, UndoStep::StartPrior);
    let s = journal.begin(&j, UndoStep::HealthPrior);
    let why = match prober.gate(engine, &j.name, &j.health, None).await {
        Ok(Ok(_)) => None,
        Ok(Err(why)) => Some(why.to_string()),
        Err(e) => Some(e.to_string()),
    };
    match why {
        None => {
            journal.end_ok(s, UndoStep::HealthPrior);
            done.push("prior container running and healthy".to_string());
            UndoResult { ok: true, detail: done.join(", ") }
        }
        Some(why) => {
            let what = format!("the prior container {} is not healthy: {why}", j.name);
            fail(journal, row(s, UndoStep::HealthPrior), what, &done)
        }
    }
}
