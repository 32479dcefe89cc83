//! The drill of a stack tenant (`[app.services]`): every part of its snapshot restored into a
//! scratch dir of its own (`drill/<run>/<tenant>+<n>`), then every service booted from the image
//! its container runs, with its operator settings, on the drill's `--internal` network (aliased
//! by its service name, so its peers find it) with the scratch copies mounted in place of the
//! tenant's data mounts, in start order, and every one gated (running, `healthy` where it has
//! a HEALTHCHECK, its HTTP checks on the drill network). The live stack is only inspected.
//! Everything made carries the drill's label; all of it is removed at the end, also on failure.
//!
//! With `[app.database]` the snapshot's dumps are re-hashed before anything starts and replayed,
//! then `check` answered, before any service that could use the database starts: into the
//! database service's own drill container right after it started (none of its writable mounts,
//! so the server's data dir is a fresh one; of the image the dump was taken with while the engine
//! has it), or, when the database runs outside the project,
//! into a scratch database made from its container ([`crate::naming::drill_stack_db`],
//! journaled) before the first service. With SQLite files and a `check`, each copy the
//! snapshot names is checked in its mount's scratch copy by the confined copier before any
//! service starts.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use super::{cancelled, strips_label, DrillJournal, DrillOptions, DrillOutcome, Stop, TenantDrill};
use crate::adapters::archive;
use crate::adapters::docker::{DrillData, DrillSpec, Engine};
use crate::adapters::health::Prober;
use crate::config::{App, DatabaseSpec};
use crate::context::{crash_point, test_pause, Ctx};
use crate::error::{Error, Result};
use crate::journal::DrillStep;
use crate::restore::{self, Fetched};
use crate::stack_tenant::StackTenant;

/// Drill one stack tenant, and always remove what it made.
pub(super) async fn drill_stack_tenant(
    ctx: &Ctx,
    engine: &Engine,
    prober: &Prober,
    opts: &DrillOptions,
    app: &App,
    st: &StackTenant,
) -> Result<TenantDrill> {
    let tenant = st.tenant.as_str();
    let network = crate::naming::drill(tenant, ctx.run_id());
    let names: Vec<String> =
        st.containers.iter().map(|c| crate::naming::drill(&format!("{tenant}-{}", c.service), ctx.run_id())).collect();
    let scratches: Vec<PathBuf> = (0..st.mounts.len())
        .map(|n| crate::layout::drill_scratch(&ctx.cfg.backup_root, ctx.run_id(), &crate::layout::mount_key(tenant, n)))
        .collect();
    let mut t = TenantDrill::new(tenant, app, names.join(", "));
    // The database's drill container: its service's, or a scratch one beside the services.
    let db_service = app.database.as_ref().and_then(|d| {
        let live = d.container_of(&st.tenant);
        st.containers.iter().position(|c| c.name == live)
    });
    t.db_container = app.database.as_ref().map(|_| match db_service {
        Some(i) => names[i].clone(),
        None => crate::naming::drill_stack_db(tenant, ctx.run_id()),
    });
    let journal = DrillJournal {
        drill_container: network.clone(),
        scratch: scratches.first().cloned().unwrap_or_default(),
        // Only a container the service loop does not make (and remove) itself.
        db_container: t.db_container.clone().filter(|_| db_service.is_none()),
    };
    let run = steps(ctx, engine, prober, opts, app, st, (&journal, &names, &scratches), db_service, &mut t).await;
    let s = ctx.begin(Some(tenant), DrillStep::Cleanup, &journal)?;
    for n in names.iter().chain(journal.db_container.iter()) {
        if let Err(e) = engine.remove_with_volumes(n).await {
            t.left.push(format!("container {n} ({e})"));
        }
    }
    crash_point("drill-stack-cleanup-halfway");
    if let Err(e) = engine.remove_network(&network).await {
        t.left.push(format!("network {network} ({e})"));
    }
    for sc in &scratches {
        if let Err(e) = super::remove_scratch(&ctx.cfg.backup_root, sc) {
            t.left.push(format!("{} ({e})", sc.display()));
        }
    }
    ctx.end(s, if t.left.is_empty() { "ok" } else { "failed" }, None::<&()>)?;
    t.conclude(run, |t| {
        let mut detail = format!(
            "restored {} entries ({} bytes) of {} mount(s) from {} in {} ms; {} service(s) healthy after {} ms",
            t.entries,
            t.data_bytes,
            st.mounts.len(),
            t.snapshot.as_deref().unwrap_or("?"),
            t.restore_ms.unwrap_or(0),
            st.containers.len(),
            t.healthy_ms.unwrap_or(0)
        );
        detail.push_str(&super::db_check_detail(app, t.db_check.as_deref()));
        detail
    });
    Ok(t)
}

#[allow(clippy::too_many_arguments)]
async fn steps(
    ctx: &Ctx,
    engine: &Engine,
    prober: &Prober,
    opts: &DrillOptions,
    app: &App,
    st: &StackTenant,
    (detail, names, scratches): (&DrillJournal, &[String], &[PathBuf]),
    db_service: Option<usize>,
    t: &mut TenantDrill,
) -> Result<std::result::Result<(), Stop>> {
    let tenant = st.tenant.as_str();
    let network = detail.drill_container.as_str();
    let started = Instant::now();
    let s = ctx.begin(Some(tenant), DrillStep::Fetch, detail)?;
    let fetched = restore::fetch_verified(&ctx.cfg, &st.tenant, &opts.source, opts.remote).await;
    ctx.end(s, if fetched.is_ok() { "ok" } else { "failed" }, None::<&()>)?;
    let f: Fetched = match fetched {
        Ok(f) => f,
        Err(e) => return Ok(Err(Stop::Failed(format!("no verified archive: {e}")))),
    };
    t.snapshot = Some(f.loc.snapshot.to_string());
    t.archive = Some(f.archive.clone());
    t.sha256 = Some(f.sha256.clone());
    t.archive_bytes = f.loc.entry.mounts.iter().map(|m| m.size).sum::<u64>().max(f.loc.entry.size);
    if f.loc.entry.mounts.is_empty() {
        return Ok(Err(Stop::Failed(format!(
            "the snapshot {} holds one archive, not one per mount of a stack: it was taken before the tenant was a \
             stack",
            f.loc.snapshot
        ))));
    }
    // Each part to the tenant's mount it was taken of.
    let mut slot = Vec::new();
    for p in &f.loc.entry.mounts {
        match st.mounts.iter().position(|m| m.source == p.source) {
            Some(i) => slot.push(i),
            None => {
                return Ok(Err(Stop::Failed(format!(
                    "the snapshot has {}, which the tenant does not mount now",
                    p.mount
                ))))
            }
        }
    }
    let s = ctx.begin(Some(tenant), DrillStep::Extract, detail)?;
    let parts = match restore::stack::verified_parts(&f, |n| scratches[slot[n]].clone()).await {
        Ok(p) => p,
        Err(e) => {
            ctx.end(s, "failed", None::<&()>)?;
            return Ok(Err(Stop::Failed(e.to_string())));
        }
    };
    for (n, (p, path)) in parts.into_iter().enumerate() {
        let d = scratches[slot[n]].clone();
        let parent = d.parent().unwrap_or(&d).to_path_buf();
        crate::fsutil::create_private_dir(&parent).map_err(|e| Error::io(&parent, e))?;
        let list = f.loc.dir.join(&p.file_list);
        let sha = p.sha256.clone();
        let extracted = crate::blocking::run("drill extract", move || {
            let entries = archive::extract_into(&path, &sha, &d)?;
            archive::matches_list(&path, &d, &list)?;
            let (bytes, _) = archive::totals(&list)?;
            Ok::<_, archive::ArchiveError>((entries, bytes))
        })
        .await?;
        match extracted {
            Ok((entries, bytes)) => {
                t.entries += entries;
                t.data_bytes += bytes;
            }
            Err(e) => {
                ctx.end(s, "failed", None::<&()>)?;
                return Ok(Err(Stop::Failed(format!("{} does not restore: {e}", p.mount))));
            }
        }
    }
    ctx.end(s, "ok", None::<&()>)?;
    t.restore_ms = Some(started.elapsed().as_millis() as u64);
    crash_point("drill-after-extract");
    if ctx.cancel.is_cancelled() {
        return Ok(Err(Stop::Interrupted("after extracting the archives")));
    }
    // SQLite files with a `check`: each copy the snapshot names, in its mount's restored copy,
    // checked (integrity, then the query) by the confined copier before any service starts.
    if let Some(q) = app.sqlite.as_ref().and_then(|sq| sq.check.as_deref()) {
        let copies = &f.loc.entry.sqlite;
        if copies.is_empty() {
            return Ok(Err(Stop::Failed(format!(
                "tenant {tenant}: the snapshot {} holds no SQLite copy to check: it was taken before \
                 [app.database] kind = \"sqlite\" was declared",
                f.loc.snapshot
            ))));
        }
        let mut files = Vec::new();
        for c in copies {
            match st.mounts.iter().position(|m| c.mount.as_deref() == Some(m.source.as_str())) {
                Some(i) => files.push((scratches[i].as_path(), &c.path)),
                None => {
                    return Ok(Err(Stop::Failed(format!(
                        "tenant {tenant}: the snapshot's SQLite copy {} is of a mount the tenant does not mount now",
                        c.path
                    ))))
                }
            }
        }
        match super::sqlite_check(files.into_iter(), q).await {
            Ok(answer) => t.db_check = Some(answer),
            Err(e) => return Ok(Err(Stop::Failed(format!("tenant {tenant}: {e}")))),
        }
    }
    // `[app.database]`: the dumps the snapshot names, every one re-hashed before anything starts.
    let db = match &app.database {
        None => None,
        Some(spec) => match super::verified_dumps(&f.loc, &st.tenant, app).await {
            Ok((dumps, files)) => Some((spec, dumps, files)),
            Err(why) => return Ok(Err(Stop::Failed(why))),
        },
    };

    // Every service on the drill's internal network, in start order, on the copies.
    let s = ctx.begin(Some(tenant), DrillStep::Start, detail)?;
    let labels: BTreeMap<String, String> = [
        (crate::naming::DRILL_LABEL.to_string(), ctx.run_id().to_string()),
        (crate::naming::DRILL_TENANT_LABEL.to_string(), tenant.to_string()),
    ]
    .into_iter()
    .collect();
    engine.create_internal_network(network, &labels).await?;
    // A database outside the project: a scratch one from its container, answering on the drill
    // network to its name and aliases, replayed before any service starts.
    if let (Some((spec, dumps, files)), Some(db_name), None) = (&db, &detail.db_container, db_service) {
        super::create_scratch_db(engine, spec, &st.tenant, dumps, db_name, network, &labels).await?;
        if let Err(why) = replay_db(engine, spec, st, db_name, files, t).await {
            ctx.end(s, "failed", None::<&()>)?;
            return Ok(Err(Stop::Failed(why)));
        }
    }
    let strip_labels = ctx.cfg.drill.strip_labels.clone();
    let strip = move |k: &str| strips_label(k, &strip_labels, app);
    let started_at = Instant::now();
    for (n, (c, name)) in st.containers.iter().zip(names).enumerate() {
        if n == 1 {
            crash_point("drill-stack-started-one");
        }
        let mut spec = engine.spec(&c.name).await?;
        // The database's own service boots from the image its dump was taken with, so a server
        // upgraded since does not prove an old dump.
        if let (Some((_, dumps, _)), Some(i)) = (&db, db_service) {
            if i == n {
                if let Some(image) = super::dump_image(engine, &st.tenant, dumps, &spec.image_id()).await? {
                    spec = spec.on_image(&image);
                }
            }
        }
        let volumes: Vec<Option<String>> = c
            .data
            .iter()
            .map(|&i| {
                let m = &st.mounts[i];
                (!m.source.starts_with('/')).then(|| m.source.clone())
            })
            .collect();
        let data: Vec<DrillData> = c
            .data
            .iter()
            .zip(&volumes)
            .map(|(&i, v)| DrillData { data_dir: &st.mounts[i].dir, data_volume: v.as_deref(), scratch: &scratches[i] })
            .collect();
        let drill = DrillSpec { name, network, alias: Some(&c.service), data, labels: labels.clone(), strip: &strip };
        match engine.create_drill(&spec, &drill).await? {
            Ok(changes) => {
                t.changes.get_or_insert(changes);
            }
            Err(why) => {
                ctx.end(s, "failed", None::<&()>)?;
                return Ok(Err(Stop::Failed(format!("service {}: {why}", c.service))));
            }
        }
        if let Err(e) = engine.start(name).await {
            ctx.end(s, "failed", None::<&()>)?;
            return Ok(Err(Stop::Failed(format!("service {} did not start on the restored copies: {e}", c.service))));
        }
        // The database's own service: replayed into its fresh server before a later service
        // (its clients) starts.
        if let (Some((spec, _, files)), Some(i)) = (&db, db_service) {
            if i == n {
                if let Err(why) = replay_db(engine, spec, st, name, files, t).await {
                    ctx.end(s, "failed", None::<&()>)?;
                    return Ok(Err(Stop::Failed(why)));
                }
            }
        }
    }
    ctx.end(s, "ok", None::<&()>)?;
    crash_point("drill-after-start");

    // Every service gated, its HTTP checks on the drill network's address.
    let s = ctx.begin(Some(tenant), DrillStep::Health, detail)?;
    for (c, name) in st.containers.iter().zip(names) {
        let checks: Vec<crate::config::HealthSpec> = c
            .checks
            .iter()
            .map(|h| crate::config::HealthSpec { network: Some(network.to_string()), ..h.clone() })
            .collect();
        let gate = tokio::select! {
            g = crate::stack_undo::gate_member(engine, prober, name, &checks, true) => Some(g),
            () = cancelled(&ctx.cancel) => None,
        };
        match gate {
            None => {
                ctx.end(s, "failed", None::<&()>)?;
                return Ok(Err(Stop::Interrupted("while the services' health was checked")));
            }
            Some(Err(why)) => {
                ctx.end(s, "failed", None::<&()>)?;
                return Ok(Err(Stop::Failed(format!(
                    "service {} did not come up healthy on the data restored from {}: {why}",
                    c.service,
                    t.snapshot.as_deref().unwrap_or("the snapshot")
                ))));
            }
            Some(Ok(())) => {}
        }
    }
    ctx.end(s, "ok", None::<&()>)?;
    t.healthy_ms = Some(started_at.elapsed().as_millis() as u64);
    test_pause("drill-healthy");
    crash_point("drill-healthy");
    Ok(Ok(()))
}

/// Replay the verified dumps `files` into the drill's database container `container` and
/// answer `check` there ([`crate::database::drill`]), the answer kept in `t.db_check`; Err is
/// why the drill fails, the tenant named.
async fn replay_db(
    engine: &Engine,
    spec: &DatabaseSpec,
    st: &StackTenant,
    container: &str,
    files: &[(Option<String>, PathBuf)],
    t: &mut TenantDrill,
) -> std::result::Result<(), String> {
    let answer = crate::database::drill(engine, spec, &st.tenant, container, files).await.map_err(|e| e.to_string())?;
    t.db_check = Some(answer);
    crash_point("drill-after-database");
    Ok(())
}

/// The drill of a stack tenant that cannot be drilled as a unit (its containers are not its
/// declared services, a data mount is no dir): failed, nothing made.
pub(super) fn refused(app: &App, tenant: &crate::types::TenantId, why: &str) -> TenantDrill {
    let mut t = TenantDrill::new(tenant.as_str(), app, String::new());
    t.outcome = DrillOutcome::Failed;
    t.detail = format!("app {} (a stack): {why}; nothing was started", app.name);
    t
}
