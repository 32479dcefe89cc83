//! Undo of a stack tenant's rollout (`[app.services]`), shared by `rollout` (a failed step or a
//! signal) and `recover` (a killed run): bring **every** changed service back to its prior
//! container and **every** data mount back to its pre-rollout copy, from the [`StackJournal`]
//! alone, whatever step it was caught in; then start every container the rollout stopped, in
//! start order, and gate on each.
//!
//! The order keeps the data safe: every new (and staged) container is removed and every
//! container of the stack that the rollout stopped is stopped again before any mount is
//! swapped back, and nothing is started before every mount is back. With `[app.database]` the
//! database is made the pre-switch dump again (the one it replaces kept) right after the new
//! containers go, with the single container's steps (`undo::undo_database`). Every action is idempotent
//! (a swap is recognised by the copy's inode, a rename done by the container's id) and
//! journaled as an [`UndoStep`], so `recover` can run this again after a crash in the middle
//! of it. It never returns early with an error: what fails is an [`UndoResult`] that says what
//! was done and what was not (exit 5: a person is needed).
//!
//! `rollback` of a finished run uses it too: what the run's cleanup and archive step removed is
//! made again first ([`UndoStep::RecreatePrior`]), while the stack still runs — each changed
//! service's prior container, aside, from its new container's settings on its prior image, and
//! each mount's pre-rollout copy, extracted from the run's archive (checked against the run's
//! manifest) beside the mount. The new ids and the copies' inodes are journaled before any swap,
//! so a replay recognises its own copy and never takes another dir for it.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use crate::adapters::archive;
use crate::adapters::confined;
use crate::adapters::docker::Engine;
use crate::adapters::health::Prober;
use crate::context::Ctx;
use crate::error::ArchiveError;
use crate::manifest::Manifest;
use crate::step::{StackJournal, UndoStep};
use crate::undo::{
    copy_state_at, drop_copy, image_to_recreate, patient, remove_empty_parents, swap_in_copy, undo_database, CopyState,
    UndoJournal, UndoResult,
};

/// How long each container of the stack gets to be running (and healthy, with a HEALTHCHECK)
/// when it has no HTTP check of its own.
pub const RUNNING_GATE: Duration = Duration::from_secs(60);

/// Bring a stack tenant back: remove the new containers, swap every mount back when the new
/// version may have written (`restore_data`), rename every prior container back, put back
/// their restart policies, start every stopped container in start order and gate on each.
pub async fn undo_stack(
    ctx: &Ctx,
    engine: &Engine,
    prober: &Prober,
    j: &StackJournal,
    restore_data: bool,
) -> UndoResult {
    let mut j = j.clone();
    let mut done: Vec<String> = Vec::new();
    let mut journal_failed: Vec<String> = Vec::new();
    let tenant = j.tenant.clone();
    let begin = |step: UndoStep, j: &StackJournal, failed: &mut Vec<String>| {
        let id = ctx.begin(Some(&tenant), step, j).map_err(|e| failed.push(format!("{step} begun ({e})"))).ok();
        step.during().reach();
        id
    };
    let end = |id: Option<i64>, step: UndoStep, outcome: &str, failed: &mut Vec<String>| {
        if let Some(id) = id {
            if let Err(e) = ctx.end(id, outcome, None::<&()>) {
                failed.push(format!("{step} {outcome} ({e})"));
            }
        }
        if outcome == "ok" {
            step.after().reach();
        }
    };
    let result = |ok: bool, what: Option<String>, done: &[String], failed: &[String]| {
        let note = if failed.is_empty() {
            String::new()
        } else {
            format!("; state.db could not record: {}", failed.join(", "))
        };
        let state = if done.is_empty() { "nothing was undone".to_string() } else { done.join(", ") };
        let detail = match what {
            Some(w) => format!("UNDO FAILED for stack tenant {tenant}: {w}; done so far: {state}{note}"),
            None => format!("{state}{note}"),
        };
        UndoResult { ok, detail, timings: Default::default() }
    };

    // Nothing is touched unless every mount can be put back.
    if restore_data {
        let missing: Vec<String> = j
            .mounts
            .iter()
            .filter(|m| match m.copy_ino {
                Some(ino) => copy_state_at(&m.copy, ino, &m.data_dir, &j.tenant) == CopyState::Gone,
                None => !m.archive.as_deref().is_some_and(Path::is_file),
            })
            .map(|m| {
                format!(
                    "{} (its copy {} is gone or was never complete, and no archive of it)",
                    m.what,
                    m.copy.display()
                )
            })
            .collect();
        let missing: Vec<String> = missing.into_iter().chain(crate::undo::missing_dumps(j.db.as_ref())).collect();
        if !missing.is_empty() {
            let what = format!(
                "the data from before the rollout cannot be put back for {}; the stack was left as it is rather than \
                 start the prior versions on the data the new ones wrote",
                missing.join(", ")
            );
            return result(false, Some(what), &done, &journal_failed);
        }
    }

    // 0. What a finished run removed, made again while the stack runs (see the module doc).
    if let Err(what) = recreate_removed(ctx, engine, &mut j, restore_data, &mut done, &mut journal_failed).await {
        return result(false, Some(what), &done, &journal_failed);
    }

    // 1. Every new or staged container goes (never a prior one, recognised by its id).
    let s = begin(UndoStep::RemoveNew, &j, &mut journal_failed);
    for svc in &j.services {
        for name in [&svc.name, &svc.staged_name] {
            let id = match patient(engine, || engine.id_of(name)).await {
                Ok(id) => id,
                Err(e) => {
                    end(s, UndoStep::RemoveNew, "failed", &mut journal_failed);
                    return result(
                        false,
                        Some(format!("cannot tell whether {name} exists: {e}")),
                        &done,
                        &journal_failed,
                    );
                }
            };
            let Some(id) = id.filter(|id| *id != svc.old_id) else { continue };
            let removed = patient(engine, || async {
                engine.stop(&id, j.stop_timeout_s).await?;
                engine.remove(&id).await
            })
            .await;
            if let Err(e) = removed {
                end(s, UndoStep::RemoveNew, "failed", &mut journal_failed);
                let what = format!("cannot remove the new container of service {} ({name}): {e}", svc.service);
                return result(false, Some(what), &done, &journal_failed);
            }
            done.push(format!("new container of service {} removed", svc.service));
        }
    }
    end(s, UndoStep::RemoveNew, "ok", &mut journal_failed);

    // 1b. The database (`[app.database]`, when the new version ran), as a single container's
    //     undo does it and before any file: what the new version left dumped and kept, then the
    //     pre-switch dump replayed; every container of the stack that writes it stopped again
    //     first. A failure stops the undo here: no prior service starts on a migrated database.
    if let Some(db) = j.db.clone().filter(|d| restore_data && d.dumps.is_some()) {
        for m in j.members.iter().rev().filter(|m| m.name != db.container) {
            let _ = patient(engine, || engine.stop(&m.id, j.stop_timeout_s)).await;
        }
        // A changed database service's prior container is aside (not under its name): by its id.
        let at = j.services.iter().find(|s| s.name == db.container).map(|s| s.old_id.clone());
        let mut journal = UndoJournal::new(ctx);
        let failed = undo_database(&mut journal, engine, &tenant, &mut j, |j| j.db.as_mut(), at.as_deref(), &mut done)
            .await
            .err();
        if let Some((row, what)) = &failed {
            journal.end_failed(*row, what);
        }
        journal_failed.append(&mut journal.failed);
        if let Some((_, what)) = failed {
            return result(false, Some(what), &done, &journal_failed);
        }
    }

    // 2. Every mount back, with every container the rollout stopped stopped again (something
    //    may have started one): nothing may hold the data while it is swapped.
    if restore_data && !j.mounts.is_empty() {
        let s = begin(UndoStep::Restore, &j, &mut journal_failed);
        for m in j.members.iter().rev() {
            let _ = patient(engine, || engine.stop(&m.id, j.stop_timeout_s)).await;
        }
        for (i, m) in j.mounts.iter().enumerate() {
            let (c, ino, d) = (m.copy.clone(), m.copy_ino.unwrap_or_default(), m.data_dir.clone());
            let swapped = match crate::blocking::run("restore", move || swap_in_copy(&c, ino, &d)).await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match swapped {
                Ok(old) => {
                    let key = format!("{}+{i}", j.tenant);
                    if let Some(old) = old {
                        let kept = crate::fsutil::keep_replaced(&ctx.cfg.backup_root, ctx.run_id(), &key, &old);
                        done.push(format!(
                            "{} restored from its rollout copy; what it replaced is kept in {}",
                            m.what,
                            kept.display()
                        ));
                    } else {
                        done.push(format!("{} restored from its rollout copy", m.what));
                    }
                    let _ = std::fs::remove_file(crate::layout::mirror_index(&m.copy));
                    remove_empty_parents(&m.copy);
                }
                Err(e) => {
                    end(s, UndoStep::Restore, "failed", &mut journal_failed);
                    let what =
                        format!("swapping the rollout copy {} back into {} failed: {e}", m.copy.display(), m.what);
                    return result(false, Some(what), &done, &journal_failed);
                }
            }
        }
        end(s, UndoStep::Restore, "ok", &mut journal_failed);
    }

    // 3. Every prior container back under its name, its restart policy back.
    let s = begin(UndoStep::RenameBack, &j, &mut journal_failed);
    for svc in &j.services {
        let under_name = patient(engine, || engine.id_of(&svc.name)).await.ok().flatten();
        if under_name.as_deref() != Some(svc.old_id.as_str()) {
            if let Err(e) = patient(engine, || engine.rename_id(&svc.old_id, &svc.pre_name, &svc.name)).await {
                end(s, UndoStep::RenameBack, "failed", &mut journal_failed);
                let what = format!(
                    "cannot rename the prior container of service {} ({}) back to {}: {e}",
                    svc.service, svc.pre_name, svc.name
                );
                return result(false, Some(what), &done, &journal_failed);
            }
            done.push(format!("prior container of service {} renamed back", svc.service));
        }
        if svc.restart.restarts() {
            if let Err(e) = patient(engine, || engine.set_restart(&svc.old_id, &svc.restart)).await {
                end(s, UndoStep::RenameBack, "failed", &mut journal_failed);
                let what = format!("cannot put back the restart policy {} of {}: {e}", svc.restart, svc.name);
                return result(false, Some(what), &done, &journal_failed);
            }
        }
    }
    end(s, UndoStep::RenameBack, "ok", &mut journal_failed);

    // 4. Every container the rollout stopped, started again in start order.
    let s = begin(UndoStep::StartPrior, &j, &mut journal_failed);
    for m in &j.members {
        if let Err(e) = patient(engine, || engine.start(&m.id)).await {
            end(s, UndoStep::StartPrior, "failed", &mut journal_failed);
            let what = format!("cannot start {} (service {}): {e}", m.name, m.service);
            return result(false, Some(what), &done, &journal_failed);
        }
    }
    end(s, UndoStep::StartPrior, "ok", &mut journal_failed);

    // 5. Each running (healthy with a HEALTHCHECK) and answering its HTTP checks.
    let s = begin(UndoStep::HealthPrior, &j, &mut journal_failed);
    for m in &j.members {
        if let Err(why) = gate_member(engine, prober, &m.name, &m.checks, false).await {
            end(s, UndoStep::HealthPrior, "failed", &mut journal_failed);
            let what = format!("{} (service {}) is not healthy after the undo: {why}", m.name, m.service);
            return result(false, Some(what), &done, &journal_failed);
        }
    }
    end(s, UndoStep::HealthPrior, "ok", &mut journal_failed);
    done.push("every container of the stack running and healthy on its prior version".into());
    if !restore_data {
        for m in &j.mounts {
            if m.copy.exists() {
                let c = m.copy.clone();
                if matches!(crate::blocking::run("drop copy", move || drop_copy(&c)).await, Ok(Ok(()))) {
                    done.push(format!("the unneeded rollout copy of {} removed", m.what));
                }
            }
        }
    }
    result(true, None, &done, &journal_failed)
}

/// Step 0 of [`undo_stack`] ([`UndoStep::RecreatePrior`], only when something is gone): each
/// changed service whose prior container exists neither aside nor by its id is created again
/// aside (`pre_name`) from its new container's settings on its prior image; a container found
/// aside whose journaled prior is gone is the one an earlier, killed pass created, and is taken
/// as the prior. With `restore_data`, each mount whose copy is gone (archived and removed) gets
/// it back: the run's archive (its sha256 from the run's manifest, checked while extracting)
/// extracted at `copy`, whose inode is then journaled. A dir already at `copy` without a
/// journaled inode is an extraction cut short (no swap happens before the inode is journaled)
/// and is removed first. Err says why the undo must stop, with nothing of the stack touched.
async fn recreate_removed(
    ctx: &Ctx,
    engine: &Engine,
    j: &mut StackJournal,
    restore_data: bool,
    done: &mut Vec<String>,
    journal_failed: &mut Vec<String>,
) -> std::result::Result<(), String> {
    let mut gone = Vec::new();
    for (k, svc) in j.services.iter().enumerate() {
        let looked = async {
            let aside = patient(engine, || engine.id_of(&svc.pre_name)).await?;
            let by_id = patient(engine, || engine.id_of(&svc.old_id)).await?;
            Ok::<_, crate::error::Error>((aside, by_id))
        };
        match looked.await {
            Ok((_, Some(_))) => {}
            Ok((Some(aside), None)) => gone.push((k, Some(aside))),
            Ok((None, None)) => gone.push((k, None)),
            Err(e) => {
                return Err(format!("cannot tell whether the prior container of service {} exists: {e}", svc.service))
            }
        }
    }
    let extract: Vec<usize> = if restore_data {
        j.mounts
            .iter()
            .enumerate()
            .filter(|(_, m)| m.copy_ino.is_none() && m.archive.is_some())
            .map(|(i, _)| i)
            .collect()
    } else {
        Vec::new()
    };
    if gone.is_empty() && extract.is_empty() {
        return Ok(());
    }
    let step = UndoStep::RecreatePrior;
    let row = match ctx.begin(Some(&j.tenant), step, &*j) {
        Ok(id) => Some(id),
        Err(e) => {
            journal_failed.push(format!("{step} begun ({e})"));
            None
        }
    };
    step.during().reach();
    let failed = |what: String| {
        if let Some(id) = row {
            let _ = ctx.end(id, "failed", Some(&serde_json::json!({ "error": what })));
        }
        what
    };
    for (k, aside) in gone {
        let svc = &j.services[k];
        let prior = match aside {
            Some(id) => id,
            None => {
                let new =
                    patient(engine, || engine.id_of(&svc.name)).await.ok().flatten().filter(|id| *id != svc.old_id);
                let Some(new) = new else {
                    return Err(failed(format!(
                        "the prior container of service {} is gone and no new container {} is left to take its \
                         settings from",
                        svc.service, svc.name
                    )));
                };
                let created = async {
                    let spec = patient(engine, || engine.spec(&new)).await?;
                    let image = patient(engine, || {
                        image_to_recreate(
                            engine,
                            &svc.old_image,
                            svc.old_image_id.as_deref(),
                            svc.old_digest.as_deref(),
                            &svc.pre_name,
                        )
                    })
                    .await?;
                    patient(engine, || engine.create_from(&svc.pre_name, &spec, &image)).await
                };
                match created.await {
                    Ok(id) => {
                        done.push(format!(
                            "prior container of service {} recreated from {}",
                            svc.service, svc.old_image
                        ));
                        id
                    }
                    Err(e) => {
                        return Err(failed(format!(
                            "cannot recreate the prior container of service {} from {}: {e}",
                            svc.service, svc.old_image
                        )))
                    }
                }
            }
        };
        let was = std::mem::replace(&mut j.services[k].old_id, prior.clone());
        for m in j.members.iter_mut().filter(|m| m.id == was) {
            m.id = prior.clone();
        }
    }
    for i in extract {
        let key = format!("{}+{i}", j.tenant);
        let m = &j.mounts[i];
        let archive_path = m.archive.clone().unwrap_or_default();
        let sha = match archive_path.parent().map(Manifest::read) {
            Some(Ok(Some(man))) => man.tenant(&key).map(|e| e.sha256.clone()),
            _ => None,
        };
        let Some(sha) = sha else {
            return Err(failed(format!(
                "the run's manifest beside {} does not list {key}: the archive of {} cannot be checked, so it was \
                 not used",
                archive_path.display(),
                m.what
            )));
        };
        let (a, copy) = (archive_path.clone(), m.copy.clone());
        let made = crate::blocking::run("extract", move || {
            let io = |p: &Path| {
                let p = p.to_path_buf();
                move |e: std::io::Error| ArchiveError::Io { path: p, source: e }
            };
            confined::remove_tree(&copy).map_err(io(&copy))?;
            if let Some(parent) = copy.parent() {
                crate::fsutil::create_private_dir(parent).map_err(io(parent))?;
            }
            archive::extract_into(&a, &sha, &copy)?;
            Ok::<_, ArchiveError>(std::fs::symlink_metadata(&copy).map_err(io(&copy))?.ino())
        })
        .await;
        match made {
            Ok(Ok(ino)) => {
                done.push(format!(
                    "the copy of {} from before the rollout extracted from {}",
                    m.what,
                    archive_path.display()
                ));
                j.mounts[i].copy_ino = Some(ino);
            }
            Ok(Err(e)) => {
                return Err(failed(format!("extracting {} for {} failed: {e}", archive_path.display(), m.what)))
            }
            Err(e) => return Err(failed(format!("extracting {} for {} failed: {e}", archive_path.display(), m.what))),
        }
    }
    // The new ids and the copies' inodes go into the journal with this step's end: without them
    // written, a replay could not tell its copy from another dir, so nothing is swapped.
    let written = match row {
        Some(id) => ctx.end(id, "ok", Some(&*j)).map_err(|e| e.to_string()),
        None => Err("its begin was not recorded".to_string()),
    };
    if let Err(e) = written {
        if j.mounts.iter().any(|m| m.archive.is_some() && m.copy_ino.is_some()) && restore_data {
            return Err(format!(
                "state.db could not record the extracted copies ({e}); nothing was swapped, the copies stay beside \
                 the mounts"
            ));
        }
        journal_failed.push(format!("{step} ok ({e})"));
    }
    step.after().reach();
    Ok(())
}

/// Gate one container of a stack: running — and `healthy` when its image (or its compose
/// file) gives it a HEALTHCHECK — then answering each HTTP check. `new`: a container created by
/// this rollout, whose every restart counts; another one's restarts count from the gate on (it
/// may have restarted before, and a start of a running container resets nothing). Err says
/// why not.
pub async fn gate_member(
    engine: &Engine,
    prober: &Prober,
    name: &str,
    checks: &[crate::config::HealthSpec],
    new: bool,
) -> std::result::Result<(), String> {
    let deadline = std::time::Instant::now() + RUNNING_GATE;
    loop {
        let st = engine.state(name).await.map_err(|e| e.to_string())?;
        if st.restarting || (!st.running && !st.paused && st.status != "created") {
            return Err(format!("it is {} (exit code {})", st.status, st.exit_code));
        }
        match st.health.as_str() {
            "" | "healthy" if st.running => break,
            "unhealthy" => return Err("its HEALTHCHECK says unhealthy".into()),
            _ => {}
        }
        if std::time::Instant::now() >= deadline {
            return Err(format!("not running and healthy within {} s (health: {})", RUNNING_GATE.as_secs(), st.health));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for spec in checks {
        match prober.gate_since(engine, name, spec, None, new.then_some(0)).await {
            Ok(Ok(_)) => {}
            Ok(Err(why)) => return Err(format!("{} on port {}: {why}", spec.path, spec.port)),
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(())
}
