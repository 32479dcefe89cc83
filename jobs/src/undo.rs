//! Undo of one tenant's rollout, shared by `rollout` (a failed step or a signal), `rollback`
//! (a person's decision) and `recover` (a killed run): bring the tenant back to its prior
//! container and data from its [`TenantJournal`] alone, whatever step it was caught in.
//!
//! Every action is idempotent and journaled as an [`UndoStep`], so `recover` can run this
//! again after a crash in the middle of it.

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

/// Journal an undo step as begun (then its crash point).
fn begin(ctx: &Ctx, j: &TenantJournal, step: UndoStep) -> Result<i64> {
    let id = ctx.begin(Some(j.tenant.as_str()), step.as_str(), j)?;
    step.during().reach();
    Ok(id)
}

/// Journal an undo step as ended well (then its crash point).
fn end_ok(ctx: &Ctx, id: i64, step: UndoStep) -> Result<()> {
    ctx.end(id, "ok", None::<&()>)?;
    step.after().reach();
    Ok(())
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
    let mut j = j.clone();
    let mut done = Vec::new();
    let current = engine.id_of(&j.name).await?;
    let mut pre = engine.id_of(&j.pre_name).await?;
    let old_by_id = if j.old_id.is_empty() { None } else { engine.id_of(&j.old_id).await? };
    let fail = |step: i64, what: String, done: &[String]| -> Result<UndoResult> {
        ctx.end(step, "failed", Some(&serde_json::json!({"error": what})))?;
        let state = if done.is_empty() {
            "nothing was undone".to_string()
        } else {
            format!("done so far: {}", done.join(", "))
        };
        Ok(UndoResult { ok: false, detail: format!("UNDO FAILED for tenant {}: {what}; {state}", j.tenant) })
    };

    // The container under the tenant's name, if it is not the prior one, is the new version.
    let new = current.filter(|id| *id != j.old_id);
    if let Some(id) = new.as_deref().filter(|_| old_by_id.is_none() && pre.is_none()) {
        // The prior container is gone (a finished run without --keep-old): rebuild it aside,
        // from the new one's settings on the prior image.
        let s = begin(ctx, &j, UndoStep::RecreatePrior)?;
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
                return fail(s, format!("cannot recreate the prior container from {}: {e}", j.old_image), &done);
            }
        }
        ctx.end(s, "ok", Some(&j))?;
        UndoStep::RecreatePrior.after().reach();
        done.push(format!("prior container recreated from {}", j.old_image));
    }
    if let Some(id) = new.as_deref() {
        let s = begin(ctx, &j, UndoStep::RemoveNew)?;
        if let Err(e) = engine.stop(id, j.stop_timeout_s).await.and(engine.remove(id).await) {
            return fail(s, format!("cannot remove the new container {}: {e}", j.name), &done);
        }
        end_ok(ctx, s, UndoStep::RemoveNew)?;
        done.push("new container removed".to_string());
    }
    if restore_data {
        if let (Some(snap), Some(sha)) = (j.snapshot.clone(), j.sha256.clone()) {
            let s = begin(ctx, &j, UndoStep::Restore)?;
            // Stop the prior container too if something started it: nothing may hold the data.
            if let Some(p) = pre.as_deref().or(old_by_id.as_deref()) {
                let _ = engine.stop(p, j.stop_timeout_s).await;
            }
            let (a, d) = (snap.clone(), j.data_dir.clone());
            let r = crate::blocking::run("restore", move || archive::restore_swap_keep(&a, &sha, &d)).await?;
            let old = match r {
                Ok((_, old)) => old,
                Err(e) => {
                    return fail(
                        s,
                        format!("restoring {} from {} failed: {e}", j.data_dir.display(), snap.display()),
                        &done,
                    )
                }
            };
            // What the new version wrote is never deleted: it is kept under replaced/<run>/,
            // listed here (and so in the run record), and retired by prune like a rollout run.
            let kept = old.map(|old| crate::fsutil::keep_replaced(&ctx.cfg.backup_root, &ctx.run_id, &j.tenant, &old));
            end_ok(ctx, s, UndoStep::Restore)?;
            done.push(format!("data restored from {}", snap.display()));
            if let Some(k) = kept {
                done.push(format!("the data it replaced is kept in {}", k.display()));
            }
        }
    }
    if pre.is_some() {
        let s = begin(ctx, &j, UndoStep::RenameBack)?;
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
            return fail(s, format!("cannot rename {} back to {}: {e}", j.pre_name, j.name), &done);
        }
        end_ok(ctx, s, UndoStep::RenameBack)?;
        done.push("prior container renamed back".to_string());
    }
    if !j.was_running {
        // It was stopped before the rollout (a suspended tenant, say): it stays stopped.
        done.push("prior container back, left stopped as it was before the rollout".to_string());
        if let Some(restart) = j.restart.as_ref().filter(|r| r.restarts()) {
            let s = begin(ctx, &j, UndoStep::StartPrior)?;
            if let Err(e) = engine.set_restart(&j.name, restart).await {
                return fail(
                    s,
                    format!("cannot put back the restart policy {restart} of the prior container {}: {e}", j.name),
                    &done,
                );
            }
            end_ok(ctx, s, UndoStep::StartPrior)?;
        }
        return Ok(UndoResult { ok: true, detail: done.join(", ") });
    }
    let s = begin(ctx, &j, UndoStep::StartPrior)?;
    // Its restart policy was set to `no` while it was aside; put it back whatever step the
    // rollout was caught in (setting it again is harmless).
    if let Some(restart) = j.restart.as_ref().filter(|r| r.restarts()) {
        if let Err(e) = engine.set_restart(&j.name, restart).await {
            return fail(
                s,
                format!("cannot put back the restart policy {restart} of the prior container {}: {e}", j.name),
                &done,
            );
        }
    }
    if let Err(e) = engine.start(&j.name).await {
        return fail(s, format!("cannot start the prior container {}: {e}", j.name), &done);
    }
    end_ok(ctx, s, UndoStep::StartPrior)?;
    let s = begin(ctx, &j, UndoStep::HealthPrior)?;
    match prober.gate(engine, &j.name, &j.health, None).await? {
        Ok(_) => {
            end_ok(ctx, s, UndoStep::HealthPrior)?;
            done.push("prior container running and healthy".to_string());
            Ok(UndoResult { ok: true, detail: done.join(", ") })
        }
        Err(why) => fail(s, format!("the prior container {} is not healthy: {why}", j.name), &done),
    }
}
