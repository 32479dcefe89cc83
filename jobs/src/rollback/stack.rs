//! `rollback` of a stack tenant's rollout (`[app.services]`): for each stack tenant the run
//! rolled (or only `--tenant`), every changed service back to its recorded image and settings
//! and every data mount back to its pre-rollout data, then every container the run stopped
//! started in start order and gated — [`undo_stack`] from the run's newest [`StackJournal`],
//! journaled under the rollback's own run so `recover` finishes it after a kill.
//!
//! Invariant (the single container's): a stack is touched only while its containers are the
//! very ones the run left — each changed service's container the one the run created, each
//! other container it stopped the one it stopped. A stack recreated by hand, rolled again, or
//! already brought back is skipped with the reason. Everything the undo needs (each mount's
//! archive re-hashed against the run's manifest, each prior image, with `[app.database]` the
//! pre-switch dumps re-hashed against the journal) is checked for every stack before any is
//! touched; the undo then keeps the database as it is and replays the pre-switch dump. What a mount holds when it is swapped back is kept under
//! `replaced/<rollback run>/<tenant>+<n>`, never deleted.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::{chosen, finish, RollbackOptions, RollbackReport, RollbackTenant};
use crate::adapters::archive;
use crate::adapters::docker::Engine;
use crate::adapters::health::Prober;
use crate::context::Ctx;
use crate::error::{Error, ExitKind, Result};
use crate::journal::{RolloutDetail, RolloutRow};
use crate::layout;
use crate::manifest::Manifest;
use crate::stack_undo::undo_stack;
use crate::step::StackJournal;
use crate::undo::{copy_state_at, image_to_recreate, CopyState};

/// Roll back run `run`'s stack tenants (its `rows` journal them); `paused`: the run is paused
/// over its failure budget (its pause ends when every stack came back).
pub(super) async fn rollback_stacks(
    ctx: &Ctx,
    opts: &RollbackOptions,
    run: &slipway_state::Run,
    rows: Vec<RolloutRow<'_>>,
    paused: bool,
) -> Result<RollbackReport> {
    // The newest journal of each stack tenant, in the order they were rolled.
    let mut journals: Vec<StackJournal> = Vec::new();
    for r in rows {
        let RolloutDetail::Stack(j) = r.detail else { continue };
        match journals.iter_mut().find(|x| x.tenant == j.tenant) {
            Some(e) => *e = *j,
            None => journals.push(*j),
        }
    }
    for t in &opts.tenants {
        if !journals.iter().any(|j| j.tenant == t.as_str()) {
            return Err(Error::Usage(format!("run {} did not touch tenant \"{t}\"", run.id)));
        }
    }
    let results: BTreeMap<String, String> =
        ctx.store.tenants(&run.id)?.into_iter().map(|t| (t.tenant, t.outcome)).collect();
    let outcome_of = |t: &str| results.get(t).map(String::as_str);
    let engine = Engine::connect(&ctx.cfg.docker).await?;
    let mut todo = Vec::new();
    let mut tenants = Vec::new();
    for j in chosen(journals, |j| &j.tenant, opts, |t| outcome_of(t) == Some("rolled")) {
        let retry_undo = outcome_of(&j.tenant) == Some("person_needed") || run.finished_at.is_none();
        match not_this_runs(&engine, &run.id, &j, retry_undo).await? {
            Some(why) => tenants.push(RollbackTenant::skipped(&j.tenant, why)),
            None => todo.push(j),
        }
    }
    // Everything each undo needs, for every stack, before any is touched.
    let mut blocked = Vec::new();
    let mut plans = Vec::new();
    for j in &todo {
        match plan(&engine, j).await? {
            Ok(p) => plans.push(p),
            Err(why) => blocked.push(format!("tenant {}: {why}", j.tenant)),
        }
    }
    if !blocked.is_empty() {
        return Err(Error::Other(format!(
            "rollback of run {} refused, nothing was touched: {}; to put a stack back anyway, restore its data from a \
             snapshot taken before that run (`slipway restore --tenant T --day D`) and pin the prior digests in \
             fleet.toml",
            run.id,
            blocked.join("; ")
        )));
    }
    if opts.dry_run {
        for (j, plan) in todo.iter().zip(plans) {
            tenants.push(RollbackTenant { tenant: j.tenant.clone(), result: None, skipped: None, plan });
        }
        return Ok(RollbackReport { rollout_run: run.id.clone(), dry_run: true, tenants, outcome: ExitKind::Success });
    }
    let record = ctx.start_run("rollback", run.app.as_deref(), run.git_commit.as_deref(), run.digest.as_deref())?;
    let prober = Prober::new()?;
    let mut outcome = ExitKind::Success;
    for (j, plan) in todo.into_iter().zip(plans) {
        let tenant = j.tenant.clone();
        let r = undo_stack(ctx, &engine, &prober, &for_rollback(ctx, j), true).await;
        if !r.ok {
            outcome = ExitKind::PersonNeeded;
        }
        tenants.push(RollbackTenant { tenant, result: Some(r), skipped: None, plan });
        if outcome != ExitKind::Success {
            break;
        }
    }
    finish(ctx, record, opts, (run.clone(), paused), tenants, outcome)
}

/// The run's journal made the rollback's: a mount whose rollout copy was archived (and
/// removed) gets its copy back from the archive at a path of this rollback run's own, its
/// inode not known yet ([`undo_stack`] extracts it and journals the inode before any swap).
fn for_rollback(ctx: &Ctx, mut j: StackJournal) -> StackJournal {
    for (i, m) in j.mounts.iter_mut().enumerate().filter(|(_, m)| m.archive.is_some()) {
        let key = format!("{}+{i}", j.tenant);
        if let Some(copy) = layout::rollout_copy(&m.data_dir, ctx.run_id(), &key) {
            m.copy = copy;
            m.copy_ino = None;
        }
    }
    j
}

/// What the rollback of stack `j` will do, one line per changed service and per mount; Err
/// says why it could not finish (checked before anything is touched): a mount whose
/// pre-rollout data is neither in its copy nor in an archive that re-hashes to the run's
/// manifest, or a prior container gone whose image can be neither found nor pulled by digest.
async fn plan(engine: &Engine, j: &StackJournal) -> Result<std::result::Result<Vec<String>, String>> {
    let mut lines = Vec::new();
    for s in &j.services {
        let prior = engine.id_of(&s.pre_name).await?.is_some() || engine.id_of(&s.old_id).await?.is_some();
        let how = if prior {
            "its prior container renamed back".to_string()
        } else {
            match image_to_recreate(
                engine,
                &s.old_image,
                s.old_image_id.as_deref(),
                s.old_digest.as_deref(),
                &s.pre_name,
            )
            .await
            {
                Ok(image) => format!("its prior container recreated from {image} with its settings"),
                Err(e) => {
                    return Ok(Err(format!(
                        "service {}: its prior container is gone and cannot be recreated: {e}",
                        s.service
                    )))
                }
            }
        };
        lines.push(format!("service {}: {} back to {} ({how})", s.service, s.new_image, s.old_image));
    }
    for (i, m) in j.mounts.iter().enumerate() {
        let key = format!("{}+{i}", j.tenant);
        let Some(a) = m.archive.clone() else {
            match m.copy_ino.map(|ino| copy_state_at(&m.copy, ino, &m.data_dir, &j.tenant)) {
                Some(CopyState::Ready) => {
                    lines.push(format!("{}: back from its rollout copy {} (a rename)", m.what, m.copy.display()));
                    continue;
                }
                _ => {
                    return Ok(Err(format!(
                        "{}: its rollout copy {} is gone and the run made no archive of it",
                        m.what,
                        m.copy.display()
                    )))
                }
            }
        };
        if let Some(why) = damaged(&a, &key).await? {
            return Ok(Err(format!("{}: {why}", m.what)));
        }
        lines.push(format!("{}: back from {} (what it holds now is kept)", m.what, a.display()));
    }
    // `[app.database]`: the run's pre-switch dumps there and re-hashing to its journal.
    if let Some((db, dumps)) = j.db.as_ref().and_then(|d| d.dumps.as_ref().map(|x| (d, x))) {
        let tenant: crate::types::TenantId = match j.tenant.parse() {
            Ok(t) => t,
            Err(e) => return Ok(Err(format!("the journal's tenant {:?} is not a tenant id: {e}", j.tenant))),
        };
        if let Some(why) = crate::undo::missing_dumps(j.db.as_ref()) {
            return Ok(Err(why));
        }
        if let Err(e) = crate::database::verified(&db.run_dir, &tenant, dumps).await {
            return Ok(Err(e.detail()));
        }
        lines.push(format!(
            "database in {}: dumped as it is now (kept), then made the run's pre-switch dump again",
            db.container
        ));
    }
    let stopped: Vec<&str> = j.members.iter().map(|m| m.service.as_str()).collect();
    lines.push(format!("stops {}, then starts them in this order and gates each", stopped.join(", ")));
    Ok(Ok(lines))
}

/// Why the run's archive `a` of mount `key` cannot be trusted, if it cannot: gone, not listed
/// in the run's manifest, or not re-hashing to it. Hashing runs off the async runtime.
async fn damaged(a: &std::path::Path, key: &str) -> Result<Option<String>> {
    if !a.is_file() {
        return Ok(Some(format!("the run's archive {} is gone (pruned, or deleted)", a.display())));
    }
    let want = match a.parent().map(Manifest::read) {
        Some(Ok(Some(m))) => m.tenant(key).map(|e| e.sha256.clone()),
        Some(Err(e)) => return Ok(Some(format!("the run's manifest beside {} cannot be read: {e}", a.display()))),
        _ => None,
    };
    let Some(want) = want else {
        return Ok(Some(format!("the run's manifest beside {} does not list {key}", a.display())));
    };
    let p: PathBuf = a.to_path_buf();
    let (got, _) = crate::blocking::run("hash", move || archive::sha256_file(&p)).await??;
    Ok((got != want).then(|| {
        format!("the run's archive {} is damaged: its sha256 is {got}, the run's manifest says {want}", a.display())
    }))
}

/// Why rollback must leave stack `j` alone, if it must: a changed service's container now is
/// not the one run `run` created, or another container the run stopped is not the one it
/// stopped. With `retry_undo` (the run's own undo failed, or the run never finished) a stack
/// part-way back is undone again.
async fn not_this_runs(engine: &Engine, run: &str, j: &StackJournal, retry_undo: bool) -> Result<Option<String>> {
    if retry_undo {
        return Ok(None);
    }
    let short = |id: &str| id.chars().take(12).collect::<String>();
    for s in &j.services {
        let Some(new_id) = s.new_id.as_deref() else {
            return Ok(Some(format!(
                "run {run} never created a new container for service {}; nothing of the run to undo",
                s.service
            )));
        };
        let now = engine.id_of(&s.name).await?;
        // A container on the service's prior image that is not the run's: brought back before.
        let on_prior = match (&now, s.old_image_id.as_deref()) {
            (Some(id), Some(img)) if id != new_id => engine.spec(id).await.is_ok_and(|x| x.image_id() == img),
            _ => false,
        };
        let why = match now {
            Some(id) if id == new_id => continue,
            Some(id) if id == s.old_id => format!(
                "container {} (service {}) is already its prior container {} (restored when the run halted, or \
                 rolled back before)",
                s.name,
                s.service,
                short(&id)
            ),
            Some(id) if on_prior => format!(
                "container {} (service {}) is {}, on its prior image already, not {} that run {run} created \
                 (rolled back before, or recreated by hand)",
                s.name,
                s.service,
                short(&id),
                short(new_id)
            ),
            Some(id) => format!(
                "container {} (service {}) is {}, not {} that run {run} created: it was rolled again by a later run \
                 or recreated since; roll back that run instead, or restore by hand",
                s.name,
                s.service,
                short(&id),
                short(new_id)
            ),
            None => format!("no container {} (service {}) exists; run {run}'s container is gone", s.name, s.service),
        };
        return Ok(Some(why));
    }
    for m in j.members.iter().filter(|m| !m.changed) {
        match engine.id_of(&m.name).await? {
            Some(id) if id == m.id => {}
            now => {
                return Ok(Some(format!(
                    "container {} (service {}) is {}, not {} that run {run} stopped and started: the stack was \
                 recreated since (docker compose up?); roll it back by hand",
                    m.name,
                    m.service,
                    now.as_deref().map_or("gone".to_string(), short),
                    short(&m.id)
                )))
            }
        }
    }
    Ok(None)
}
