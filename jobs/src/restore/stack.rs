//! `restore` of a stack tenant (`[app.services]`) from its snapshot's one manifest entry, one
//! archive per data mount ([`crate::manifest::MountArchive`]).
//!
//! Invariants: every part is re-hashed, and its file list checked with the room it needs,
//! before anything is touched; each part is found its mount by the mount's source (a volume's
//! name, a bind's host dir), and a snapshot whose mounts are not exactly the tenant's is
//! refused. Then the writers (and any service mounting a data mount read-only) are stopped
//! (reverse start order), every mount swapped for its
//! extracted part (extracted beside it first; what it replaced kept under
//! `replaced/<run>/<t>+<n>`), the writers started in start order and every started container
//! gated (running, `healthy` where it has a HEALTHCHECK, its HTTP checks). With
//! `[app.database]` the snapshot's dumps are re-hashed before anything is touched and replayed
//! (each database in one transaction) once every mount is swapped, before the start. If a swap,
//! the replay or the gate fails, every mount swapped so far is swapped back and the stack
//! started as it was.
//! `--to DIR` extracts each part into `DIR/<n>` and touches no container.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{preflight, Fetched, Located, RestoreOptions, RestoreReport};
use crate::adapters::archive;
use crate::adapters::confined;
use crate::adapters::docker::Engine;
use crate::adapters::health::Prober;
use crate::config::App;
use crate::context::{crash_point, Ctx};
use crate::error::{Error, ExitKind, Result};
use crate::journal::{HeldContainer, HeldDetail, HeldRow, HeldStep, ReplayDetail, RestoreStep, UndoDetail};
use crate::layout;
use crate::manifest::MountArchive;
use crate::stack_tenant::{MountSwapDetail, RestorePlanDetail, StackContainer, StackTenant};

/// One mount a stack restore put back.
#[derive(Debug, Clone, Serialize)]
pub struct RestoredMount {
    /// The mount as the snapshot names it.
    pub mount: String,
    /// Where its data went (the mount's dir, or `DIR/<n>` with `--to`).
    pub target: PathBuf,
    /// Entries restored.
    pub entries: u64,
    /// Where the data it replaced is kept.
    pub replaced: Option<PathBuf>,
}

/// The stack app and tenant `tenant` is, as it runs now; None when no stack app has it.
pub(super) async fn find(
    ctx: &Ctx,
    engine: &Engine,
    tenant: &crate::types::TenantId,
) -> Result<Option<(String, App, std::result::Result<StackTenant, String>)>> {
    let state = crate::adapters::desired::read(&ctx.cfg.desired, &ctx.cfg.state_dir, None)?;
    for app in &state.fleet.apps {
        let Some(stack) = &app.stack else { continue };
        let (members, _) = engine.stack_members(app, stack).await?;
        if members.iter().any(|m| &m.container.tenant == tenant) {
            let st = crate::stack_tenant::resolve(app, stack, tenant, &members);
            return Ok(Some((state.commit, app.clone(), st)));
        }
    }
    Ok(None)
}

/// Every part of a stack entry, each re-hashed against the manifest (the first was, by
/// [`super::fetch_verified`]), with its file list and room checked for `target_of(n)`.
pub(crate) async fn verified_parts(
    f: &Fetched,
    target_of: impl Fn(usize) -> PathBuf,
) -> Result<Vec<(MountArchive, PathBuf)>> {
    let loc = &f.loc;
    let mut out = Vec::new();
    for (n, p) in loc.entry.mounts.iter().enumerate() {
        let path = layout::under(&loc.dir, &p.path, &"a mount's archive")?;
        if p.path != loc.entry.path {
            let (a, want) = (path.clone(), p.sha256.clone());
            let (got, _) = crate::blocking::run("hash", move || archive::sha256_file(&a)).await??;
            if got != want {
                return Err(Error::Archive(archive::ArchiveError::HashMismatch {
                    archive: path,
                    expected: want,
                    actual: got,
                }));
            }
        }
        let part = Located {
            dir: loc.dir.clone(),
            entry: p.as_entry(loc.entry.tenant.as_deref()),
            snapshot: loc.snapshot.clone(),
        };
        preflight(&part, &target_of(n)).await?;
        out.push((p.clone(), path));
    }
    Ok(out)
}

/// Restore stack tenant `opts.tenant` from `f`, whose entry lists its mounts.
pub(super) async fn restore_stack(
    ctx: &Ctx,
    opts: &RestoreOptions,
    f: Fetched,
    mut report: RestoreReport,
) -> Result<RestoreReport> {
    if let Some(to) = &opts.to {
        let parts = verified_parts(&f, |n| to.join(n.to_string())).await?;
        report.target = to.clone();
        if opts.dry_run {
            report.detail = format!("would extract {} mount archive(s) into {}/<n>", parts.len(), to.display());
            return Ok(report);
        }
        super::fresh_target(to)?;
        for (n, (p, path)) in parts.into_iter().enumerate() {
            let (a, h, d) = (path, p.sha256.clone(), to.join(n.to_string()));
            let entries = crate::blocking::run("extract", move || archive::extract_into(&a, &h, &d)).await??;
            report.entries += entries;
            report.mounts.push(RestoredMount {
                mount: p.mount,
                target: to.join(n.to_string()),
                entries,
                replaced: None,
            });
        }
        report.detail = format!(
            "extracted {} entries of {} mount(s) into {}: {}",
            report.entries,
            report.mounts.len(),
            to.display(),
            report
                .mounts
                .iter()
                .map(|m| format!("{} ← {}", m.target.display(), m.mount))
                .collect::<Vec<_>>()
                .join(", ")
        );
        return Ok(report);
    }
    let engine = Engine::connect(&ctx.cfg.docker).await?;
    let Some((commit, app, st)) = find(ctx, &engine, &opts.tenant).await? else {
        return Err(Error::Usage(format!(
            "tenant {}: its snapshot is a stack's (one archive per mount) but no stack app of fleet.toml has the \
             tenant now; use --to DIR to extract its mounts elsewhere",
            opts.tenant
        )));
    };
    let st = st.map_err(|why| Error::Usage(format!("app {} (a stack): {why}; nothing was touched", app.name)))?;
    // The database dumps of the snapshot, each re-hashed, before anything is touched; a
    // snapshot with dumps is never restored as files alone.
    let replay = match (&f.loc.entry.database, &app.database) {
        (Some(d), Some(spec)) => Some((spec.clone(), crate::database::verified(&f.loc.dir, &opts.tenant, d).await?)),
        (Some(_), None) => {
            return Err(Error::Usage(format!(
                "tenant {}: the snapshot holds database dumps but app \"{}\" declares no [app.database] to replay \
                 them into; nothing was touched. Declare it in fleet.toml, or restore the files alone with --to DIR",
                opts.tenant, app.name
            )))
        }
        (None, _) => None,
    };
    // Each part to its mount, by the mount's source; exactly the tenant's mounts.
    let mut dirs = Vec::new();
    for p in &f.loc.entry.mounts {
        match st.mounts.iter().find(|m| m.source == p.source) {
            Some(m) => dirs.push(m.dir.clone()),
            None => {
                return Err(Error::Usage(format!(
                    "tenant {}: the snapshot has {} but the tenant has no such data mount now (its mounts: {}); \
                     nothing was touched. Restore it with --to DIR",
                    opts.tenant,
                    p.mount,
                    st.mounts.iter().map(|m| m.what.as_str()).collect::<Vec<_>>().join(", ")
                )))
            }
        }
    }
    if let Some(m) = st.mounts.iter().find(|m| !dirs.contains(&m.dir)) {
        return Err(Error::Usage(format!(
            "tenant {}: its data mount {} is in no archive of the snapshot (taken before the mount was added?); \
             nothing was touched. Restore with --to DIR and move the files in",
            opts.tenant, m.what
        )));
    }
    for d in &dirs {
        if crate::fsutil::is_mount_point(d).map_err(|e| Error::io(d, e))? {
            return Err(Error::Usage(format!(
                "tenant {}: data mount {} is a mount point, which restore cannot swap; nothing was touched",
                opts.tenant,
                d.display()
            )));
        }
    }
    let parts =
        verified_parts(&f, |n| dirs[n].parent().map(Path::to_path_buf).unwrap_or_else(|| dirs[n].clone())).await?;
    let swaps = parts
        .into_iter()
        .zip(dirs)
        .map(|((p, path), dir)| Swap { mount: p.mount, from: NewData::Archive { path, sha256: p.sha256 }, dir })
        .collect();
    swap_mounts(ctx, opts, &engine, &app, &commit, &st, (swaps, replay), report).await
}

/// The mounts stack restore run `run` swapped for `tenant` and where what each held is kept
/// (pairs of mount dir and kept dir, from its journal), when `run` is a stack restore of that
/// tenant; None for any other run. Err when that restore put every mount back itself (nothing
/// of it to put back).
pub(super) fn replaced_by(
    ctx: &Ctx,
    run: &crate::types::RunId,
    tenant: &crate::types::TenantId,
) -> Result<Option<Vec<(PathBuf, PathBuf)>>> {
    let Some(r) = ctx.store.run(run.as_str())? else { return Ok(None) };
    if r.job != "restore" {
        return Ok(None);
    }
    let mut planned = false;
    let mut swapped: Vec<(PathBuf, PathBuf)> = Vec::new();
    let rows = HeldRow::parse_all(&r.job, &r.id, &ctx.store.steps(&r.id)?)?;
    for s in rows.into_iter().filter(|s| s.tenant.as_deref() == Some(tenant.as_str())) {
        match (s.step, s.detail) {
            (HeldStep::Restore(RestoreStep::Mounts), _) => planned = true,
            (HeldStep::Restore(RestoreStep::UndoRestore), _) => {
                return Err(Error::Usage(format!(
                    "restore run {run} of tenant {tenant} put every mount back itself (a swap or its gate failed): \
                     the tenant has its data from before that run, there is nothing of it to put back"
                )))
            }
            (HeldStep::Restore(RestoreStep::Restore), HeldDetail::Swap(d)) if s.ended_ok => match d.replaced {
                Some(kept) if !d.back => swapped.push((d.dir, kept)),
                _ => swapped.retain(|(dir, _)| *dir != d.dir),
            },
            _ => {}
        }
    }
    Ok(planned.then_some(swapped))
}

/// `restore --run RUN` of a stack tenant: every mount the earlier stack restore `RUN` swapped
/// gets back what it held (`kept`: mount dir, kept dir), the writers stopped and started as a
/// stack restore does, what each mount holds now kept in turn under this run. Refused, nothing
/// touched, when a kept dir is gone or its mount is no longer the tenant's.
pub(super) async fn put_back_replaced(
    ctx: &Ctx,
    opts: &RestoreOptions,
    kept: Vec<(PathBuf, PathBuf)>,
) -> Result<RestoreReport> {
    let run = match &opts.source {
        super::Source::Run(r) => r.to_string(),
        _ => String::new(),
    };
    if opts.to.is_some() {
        return Err(Error::Usage(format!(
            "--to: what restore run {run} replaced is kept as plain dirs ({}); copy them with `cp -a` instead",
            kept.iter().map(|(_, k)| k.display().to_string()).collect::<Vec<_>>().join(", ")
        )));
    }
    let engine = Engine::connect(&ctx.cfg.docker).await?;
    let Some((commit, app, st)) = find(ctx, &engine, &opts.tenant).await? else {
        return Err(Error::Usage(format!(
            "tenant {}: no stack app of fleet.toml has the tenant now; what restore run {run} replaced is in {}",
            opts.tenant,
            kept.iter().map(|(_, k)| k.display().to_string()).collect::<Vec<_>>().join(", ")
        )));
    };
    let st = st.map_err(|why| Error::Usage(format!("app {} (a stack): {why}; nothing was touched", app.name)))?;
    if kept.is_empty() {
        return Err(Error::Usage(format!(
            "restore run {run} swapped no mount of tenant {}: there is nothing of it to put back",
            opts.tenant
        )));
    }
    let mut swaps = Vec::new();
    for (dir, k) in kept {
        let Some(m) = st.mounts.iter().find(|m| m.dir == dir) else {
            return Err(Error::Usage(format!(
                "tenant {}: restore run {run} swapped {}, which is no data mount of the tenant now (its mounts: {}); \
                 nothing was touched. What it replaced is in {}: copy it by hand",
                opts.tenant,
                dir.display(),
                st.mounts.iter().map(|m| m.what.as_str()).collect::<Vec<_>>().join(", "),
                k.display()
            )));
        };
        if !k.is_dir() {
            return Err(Error::Usage(format!(
                "tenant {}: what restore run {run} replaced in {} was kept in {}, which is gone; nothing was touched",
                opts.tenant,
                m.what,
                k.display()
            )));
        }
        if crate::fsutil::is_mount_point(&dir).map_err(|e| Error::io(&dir, e))? {
            return Err(Error::Usage(format!(
                "tenant {}: data mount {} is a mount point, which restore cannot swap; nothing was touched",
                opts.tenant,
                dir.display()
            )));
        }
        swaps.push(Swap { mount: m.what.clone(), from: NewData::Kept(k), dir });
    }
    let report = RestoreReport::begun(opts, PathBuf::new(), String::new());
    swap_mounts(ctx, opts, &engine, &app, &commit, &st, (swaps, None), report).await
}

/// A snapshot's verified database dumps and the `[app.database]` to replay them into.
type Replay = (crate::config::DatabaseSpec, Vec<(Option<String>, PathBuf)>);

/// What a mount is swapped for: a snapshot's part (extracted beside the mount first), or the
/// data an earlier restore replaced (a dir on the mount's filesystem, exchanged in one rename).
enum NewData {
    Archive { path: PathBuf, sha256: String },
    Kept(PathBuf),
}

/// One mount of a stack restore: named `mount` for people, its dir, and what goes in.
struct Swap {
    mount: String,
    from: NewData,
    dir: PathBuf,
}

/// Stop the writers of stack tenant `st`, swap every mount of `swaps` (what each replaced
/// kept), replay the snapshot's database dumps (`replay`: the database started if it is not
/// running, each database in one transaction), start and gate them; on a failed swap, replay or
/// gate every mount swapped goes back and the stack starts as it was (a failed replay left the
/// database as it was). Journaled for `recover` (the stack restore's words; a replay begun and
/// not ended means the mounts go back).
#[allow(clippy::too_many_arguments)]
async fn swap_mounts(
    ctx: &Ctx,
    opts: &RestoreOptions,
    engine: &Engine,
    app: &App,
    commit: &str,
    st: &StackTenant,
    (swaps, replay): (Vec<Swap>, Option<Replay>),
    mut report: RestoreReport,
) -> Result<RestoreReport> {
    let dirs: Vec<PathBuf> = swaps.iter().map(|s| s.dir.clone()).collect();
    // The writers, and any other service that mounts a data mount (read-only): a running
    // container keeps the dir it was started on, so each must start again on the swapped one.
    let writers: Vec<&StackContainer> = st.containers.iter().filter(|c| c.writes || !c.data.is_empty()).collect();
    report.target = dirs.first().cloned().unwrap_or_default();
    report.container = Some(writers.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", "));
    if opts.dry_run {
        report.detail = format!(
            "would stop {}, restore {} mount(s) ({}), start them in start order and gate each",
            report.container.as_deref().unwrap_or_default(),
            swaps.len(),
            swaps.iter().map(|p| p.mount.as_str()).collect::<Vec<_>>().join(", ")
        );
        return Ok(report);
    }
    let record = ctx.start_run("restore", Some(&app.name), Some(commit), None)?;
    let t = Some(opts.tenant.as_str());
    // Every mount it will swap, first: `recover` tells a finished restore from a partial one.
    let s = ctx.begin(t, RestoreStep::Mounts, &RestorePlanDetail { stack_mounts: dirs.clone() })?;
    ctx.end(s, "ok", None::<&()>)?;
    // The writers stop together, in reverse start order; one not running stays stopped.
    let holds: Vec<HeldContainer> = writers
        .iter()
        .map(|c| HeldContainer { container: c.name.clone(), hold: if c.running { "stop" } else { "none" }.into() })
        .collect();
    let mut stopped = Vec::new();
    let mut failure: Option<String> = None;
    for (c, h) in writers.iter().zip(&holds).rev() {
        let s = ctx.begin(t, RestoreStep::Stop, h)?;
        let r = if c.running { engine.stop(&c.name, app.stop_timeout_s).await } else { Ok(()) };
        ctx.end(s, if r.is_ok() { "ok" } else { "failed" }, None::<&()>)?;
        stopped.push(h);
        if let Err(e) = r {
            failure = Some(format!("{} could not be stopped: {e}", c.name));
            break;
        }
    }
    crash_point("restore-before-swap");
    // Every mount swapped for its part; what it replaced kept.
    let mut swapped: Vec<(PathBuf, PathBuf)> = Vec::new();
    if failure.is_none() {
        for (n, sw) in swaps.iter().enumerate() {
            let dir = &sw.dir;
            if n > 0 {
                crash_point("restore-stack-swapped-one");
            }
            let mut detail = MountSwapDetail { dir: dir.clone(), ..MountSwapDetail::default() };
            let s = ctx.begin(t, RestoreStep::Restore, &detail)?;
            let d = dir.clone();
            let r = match &sw.from {
                NewData::Archive { path, sha256 } => {
                    let (a, h) = (path.clone(), sha256.clone());
                    crate::blocking::run("restore", move || archive::restore_swap_keep(&a, &h, &d)).await?
                }
                NewData::Kept(k) => {
                    // The kept dir and the mount exchanged: `k` then holds what was in place.
                    let k = k.clone();
                    crate::blocking::run("restore", move || {
                        confined::finish_swap(&d)
                            .and_then(|_| confined::exchange(&k, &d))
                            .map(|()| (0, Some(k)))
                            .map_err(|e| archive::ArchiveError::Io { path: d.clone(), source: e })
                    })
                    .await?
                }
            };
            let kept = match &r {
                Ok((_, Some(old))) => Some(crate::fsutil::keep_replaced(
                    &ctx.cfg.backup_root,
                    ctx.run_id(),
                    &layout::mount_key(opts.tenant.as_str(), n),
                    old,
                )),
                _ => None,
            };
            detail.replaced = kept.clone();
            ctx.end(s, if r.is_ok() { "ok" } else { "failed" }, Some(&detail))?;
            match r {
                Ok((entries, _)) => {
                    report.entries += entries;
                    if let Some(k) = &kept {
                        swapped.push((k.clone(), dir.clone()));
                    }
                    report.mounts.push(RestoredMount {
                        mount: sw.mount.clone(),
                        target: dir.clone(),
                        entries,
                        replaced: kept,
                    });
                }
                Err(e) => {
                    failure = Some(format!("{}: {e}", sw.mount));
                    break;
                }
            }
        }
    }
    if let (None, Some((spec, dumps))) = (&failure, &replay) {
        let s = ctx.begin(t, RestoreStep::Replay, &ReplayDetail { database: spec.container_of(&opts.tenant) })?;
        crash_point("restore-stack-replaying");
        let r = crate::database::replay(engine, spec, &opts.tenant, &spec.container_of(&opts.tenant), dumps).await;
        ctx.end(s, if r.is_ok() { "ok" } else { "failed" }, None::<&()>)?;
        match r {
            Ok(n) => report.databases = n,
            Err(e) => failure = Some(format!("{e}; the database is as it was (the replay ran in one transaction)")),
        }
    }
    let prober = Prober::new()?;
    let mut undo_journaled = false;
    if failure.is_none() {
        match start_and_gate(ctx, engine, &prober, &opts.tenant, &writers, &holds).await? {
            Ok(()) => {
                let what = match swaps.first().map(|s| &s.from) {
                    Some(NewData::Kept(_)) => "put back what an earlier restore replaced into".to_string(),
                    _ => format!("restored {} entries into", report.entries),
                };
                report.detail = format!(
                    "{what} {} mount(s) ({}); {} running and healthy",
                    report.mounts.len(),
                    report.mounts.iter().map(|m| m.mount.as_str()).collect::<Vec<_>>().join(", "),
                    report.container.as_deref().unwrap_or_default()
                );
                if report.databases > 0 {
                    report.detail.push_str(&format!("; {} database(s) replayed", report.databases));
                }
                let kept: Vec<String> =
                    report.mounts.iter().filter_map(|m| m.replaced.as_ref()).map(|p| p.display().to_string()).collect();
                if !kept.is_empty() {
                    report.detail.push_str(&format!("; the data it replaced is kept in {}", kept.join(", ")));
                }
                report.replaced = report.mounts.first().and_then(|m| m.replaced.clone());
                record.finish(ctx, report.outcome, &report.detail)?;
                return Ok(report);
            }
            Err(why) => {
                failure = Some(format!("the stack failed its gate on the restored data: {why}"));
                let s = ctx.begin(t, RestoreStep::UndoRestore, &UndoDetail { why: failure.clone() })?;
                ctx.end(s, "ok", None::<&()>)?;
                undo_journaled = true;
                // Stopped again before its mounts go back.
                for (c, h) in writers.iter().zip(&holds).rev().filter(|(_, h)| h.hold == "stop") {
                    let s = ctx.begin(t, RestoreStep::Stop, h)?;
                    let r = engine.stop(&c.name, app.stop_timeout_s).await;
                    ctx.end(s, if r.is_ok() { "ok" } else { "failed" }, None::<&()>)?;
                }
            }
        }
    }
    // Every mount swapped so far goes back; the stack starts as it was.
    let why = failure.unwrap_or_default();
    if !undo_journaled {
        let s = ctx.begin(t, RestoreStep::UndoRestore, &UndoDetail { why: Some(why.clone()) })?;
        ctx.end(s, "ok", None::<&()>)?;
    }
    let mut back_err = Vec::new();
    for (kept, dir) in swapped.iter().rev() {
        let s =
            ctx.begin(t, RestoreStep::Restore, &MountSwapDetail { dir: dir.clone(), replaced: None, back: true })?;
        let r = confined::finish_swap(dir).and_then(|_| confined::exchange(kept, dir));
        ctx.end(s, if r.is_ok() { "ok" } else { "failed" }, None::<&()>)?;
        if let Err(e) = r {
            back_err.push(format!("{} could not be put back from {} ({e})", dir.display(), kept.display()));
        }
    }
    let gate = start_and_gate(ctx, engine, &prober, &opts.tenant, &writers, &holds).await?;
    report.replaced = None;
    for m in &mut report.mounts {
        // The swap back left the restored files where the replaced ones were kept.
        m.replaced = None;
    }
    (report.outcome, report.detail) = match (back_err.is_empty(), gate) {
        (true, Ok(())) => (
            ExitKind::Failure,
            format!("{why}; every mount has its data from before the restore again and the stack runs on it as it was"),
        ),
        (false, _) => (ExitKind::PersonNeeded, format!("{why}; and {}: a person is needed", back_err.join("; "))),
        (true, Err(g)) => (
            ExitKind::PersonNeeded,
            format!(
                "{why}; every mount is back as it was, but the stack is not healthy on it: {g}; a person is needed"
            ),
        ),
    };
    record.finish(ctx, report.outcome, &report.detail)?;
    Ok(report)
}

/// Start the writers this restore stopped, in start order (journaled), then gate every one it
/// started; Err says which failed and why.
async fn start_and_gate(
    ctx: &Ctx,
    engine: &Engine,
    prober: &Prober,
    tenant: &crate::types::TenantId,
    writers: &[&StackContainer],
    holds: &[HeldContainer],
) -> Result<std::result::Result<(), String>> {
    let mut problems = Vec::new();
    for (c, h) in writers.iter().zip(holds).filter(|(_, h)| h.hold == "stop") {
        let s = ctx.begin(Some(tenant.as_str()), RestoreStep::Start, h)?;
        let r = engine.start(&c.name).await;
        ctx.end(s, if r.is_ok() { "ok" } else { "failed" }, None::<&()>)?;
        if let Err(e) = r {
            problems.push(format!("{} (service {}) did not start: {e}", c.name, c.service));
        }
    }
    if !problems.is_empty() {
        return Ok(Err(problems.join("; ")));
    }
    for (c, _) in writers.iter().zip(holds).filter(|(_, h)| h.hold == "stop") {
        if let Err(why) = crate::stack_undo::gate_member(engine, prober, &c.name, &c.checks, false).await {
            return Ok(Err(format!("{} (service {}): {why}", c.name, c.service)));
        }
    }
    Ok(Ok(()))
}
