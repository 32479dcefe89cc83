//! The daily snapshot of a stack tenant (`[app.services]`): one snapshot of every data mount
//! of the tenant (the union of its writers' `data` mounts, each host dir once), one archive per
//! mount (`tenants/<t>+<n>.tar.zst`), all listed in the tenant's one manifest entry.
//!
//! Invariants: only the writers are quiesced, together — paused (or stopped, per `quiesce`) in
//! reverse start order and resumed in start order; a service that does not write, and the
//! database container of `[app.database]`, are never held. Every hold is journaled (one step
//! per container, before it is taken), so `recover` unpauses or starts each container after a
//! crash. With staging (the default) each mount's staging copy (`staging/<t>+<n>`) is brought
//! up to date while the stack runs and the hold covers only the last delta of every mount; the
//! archives are made from the copies with the stack running again. A part that fails fails the
//! tenant's snapshot: the entry is recorded only once every part is complete.
//!
//! With SQLite files declared (`[app.database] kind = "sqlite"`, `service`), a mount that holds
//! one is archived live, after the hold, with the online copies in the files' place (their
//! `-wal`, `-shm` and `-journal` left out): the database is its consistent part, as for a
//! single container. A writer is held only when it mounts a mount that holds no declared file;
//! such a mount is taken exactly as without SQLite.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{archive_or_reuse, mirror_to, quiesce, resume, staging_fits, Staging, Taken};
use crate::adapters::archive;
use crate::adapters::docker::Engine;
use crate::adapters::mirror;
use crate::config::{App, Quiesce};
use crate::context::{crash_point, Ctx};
use crate::error::{Error, Result};
use crate::journal::{HeldContainer, MountDetail, SnapshotStep};
use crate::layout::{self, SnapshotKind};
use crate::manifest::{ArchiveEntry, MountArchive};
use crate::stack_tenant::{StackContainer, StackTenant};

/// The previous archive of mount `source` in the tenant's previous entry, if it still re-hashes
/// to what its manifest recorded (checked before anything is held).
async fn previous_part(
    prev: Option<&(PathBuf, ArchiveEntry)>,
    source: &str,
    tenant: &str,
) -> Option<(PathBuf, ArchiveEntry)> {
    let (dir, e) = prev?;
    let part = e.mounts.iter().find(|m| m.source == source)?.as_entry(Some(tenant));
    super::intact_previous(tenant, (dir.clone(), part)).await
}

/// A journal detail naming a mount: no container hold (recover reads none from it).
fn mount_detail(what: &str) -> MountDetail {
    MountDetail { mount: what.to_string() }
}

/// Snapshot every data mount of stack tenant `st` into today's dir `day_dir`.
pub(super) async fn snapshot_stack(
    ctx: &Ctx,
    engine: &Engine,
    app: &App,
    st: &StackTenant,
    day_dir: &Path,
    prev: Option<(PathBuf, ArchiveEntry)>,
    copies: Option<&super::sqlite::Copies>,
) -> Result<Taken> {
    let tenant = st.tenant.as_str();
    let t = Some(tenant);
    for m in &st.mounts {
        if !m.dir.is_dir() {
            return Err(Error::Usage(format!(
                "tenant {tenant}: data mount {} ({}) is no dir on this host",
                m.what,
                m.dir.display()
            )));
        }
    }
    // A mount holding a declared SQLite file is archived live with the copies in place of the
    // files (never from a previous archive); every other mount is taken as it always was.
    let live: Vec<bool> = (0..st.mounts.len()).map(|n| copies.is_some_and(|c| c.holds(n))).collect();
    let mut prevs = Vec::new();
    for (m, live) in st.mounts.iter().zip(&live) {
        prevs.push(if *live { None } else { previous_part(prev.as_ref(), &m.source, tenant).await });
    }
    // The writers, never the database container: its dumps were taken with it running; and
    // only those that mount a mount still held (one that holds no declared SQLite file).
    let db = app.database.as_ref().map(|d| d.container_of(&st.tenant));
    let writers: Vec<&StackContainer> = st
        .writers()
        .filter(|c| Some(&c.name) != db.as_ref())
        .filter(|c| c.data.is_empty() || c.data.iter().any(|n| !live.get(*n).copied().unwrap_or(false)))
        .collect();
    let held_mounts: Vec<usize> = (0..st.mounts.len()).filter(|n| !live[*n]).collect();
    let hold_word = match app.quiesce {
        Quiesce::Pause => Some("pause"),
        Quiesce::Stop => Some("stop"),
        _ => None,
    };
    let any_held = hold_word.is_some() && writers.iter().any(|c| c.running);
    let stages: Vec<PathBuf> = (0..st.mounts.len())
        .map(|n| layout::staging_dir(&ctx.cfg.backup_root, &layout::mount_key(tenant, n)))
        .collect();
    let (staging, mut note) = if !any_held {
        (Staging::NotHeld, None)
    } else if !ctx.cfg.snapshot.staging {
        (Staging::Off, None)
    } else {
        let mut short = None;
        for &n in &held_mounts {
            let (m, s) = (&st.mounts[n], &stages[n]);
            let (d, s, root) = (m.dir.clone(), s.clone(), ctx.cfg.backup_root.clone());
            if let Err(why) =
                crate::blocking::run("sizing the staging copy", move || staging_fits(&d, &s, &root)).await?
            {
                tracing::warn!("tenant {tenant}: {}: {why}", m.what);
                short = Some(format!("{}: {why}", m.what));
                break;
            }
        }
        match short {
            None => (Staging::Staged, None),
            Some(why) => (Staging::ShortOfSpace, Some(why)),
        }
    };
    let staged = staging == Staging::Staged;
    if staged {
        let check = mirror::CopyCheck {
            period: ctx.cfg.snapshot.check_copy_days,
            turn: jiff::Timestamp::now().as_second().max(0) as u64 / 86_400,
            budget: ctx.cfg.snapshot.check_copy_mib.saturating_mul(1 << 20),
        };
        for &n in &held_mounts {
            let (m, stage) = (&st.mounts[n], &stages[n]);
            let step = ctx.begin(t, SnapshotStep::Stage, &mount_detail(&m.what))?;
            let pre = mirror_to(&m.dir, stage, check).await;
            ctx.end(step, if pre.is_ok() { "ok" } else { "failed" }, None::<&()>)?;
            let pre = pre?;
            if !pre.mismatched.is_empty() {
                let why = format!(
                    "the staging copy of {} differed from the unchanged source in {} file(s), copied again: {}",
                    m.what,
                    pre.mismatched.len(),
                    pre.mismatched.join(", ")
                );
                tracing::warn!("tenant {tenant}: {why}");
                note = Some(why);
            }
        }
        crash_point("snapshot-staged");
    }
    if any_held && ctx.cancel.is_cancelled() {
        return Err(Error::Interrupted(format!("tenant {tenant} not paused")));
    }

    // Hold the writers together, in reverse start order, each journaled before it is held.
    let step_name = if staged { SnapshotStep::StageDelta } else { SnapshotStep::Archive };
    let dests: Vec<PathBuf> =
        (0..st.mounts.len()).map(|n| day_dir.join(layout::mount_archive(SnapshotKind::Daily, tenant, n))).collect();
    let mut held: Vec<(&StackContainer, Option<&str>, i64)> = Vec::new();
    let paused_at = Instant::now();
    let mut failed: Option<Error> = None;
    for c in writers.iter().rev() {
        let hold = if c.running { hold_word } else { None };
        let h = HeldContainer { container: c.name.clone(), hold: hold.unwrap_or("none").to_string() };
        let step = match ctx.begin(t, step_name, &h) {
            Ok(s) => s,
            Err(e) => {
                failed = Some(e);
                break;
            }
        };
        held.push((c, hold, step));
        if let Err(e) = quiesce(engine, app, &c.name, hold).await {
            failed = Some(e);
            break;
        }
    }
    // While held: the last delta of every mount into its copy, or (no staging) every archive.
    let mut deltas: Vec<mirror::MirrorReport> = Vec::new();
    let mut parts: Vec<Option<(archive::ArchiveSummary, bool)>> = vec![None; st.mounts.len()];
    if failed.is_none() {
        crash_point("snapshot-quiesced");
        for &n in &held_mounts {
            let m = &st.mounts[n];
            let r = if staged {
                mirror_to(&m.dir, &stages[n], mirror::CopyCheck::NONE).await.map(|d| deltas.push(d))
            } else {
                let (src, d, p) = (m.dir.clone(), dests[n].clone(), prevs[n].clone());
                crate::blocking::run("archive", move || archive_or_reuse(&src, &d, p.as_ref()))
                    .await
                    .and_then(|r| r)
                    .map(|s| parts[n] = Some(s))
            };
            if let Err(e) = r {
                failed = Some(Error::Other(format!("{}: {e}", m.what)));
                break;
            }
        }
        crate::context::test_pause("snapshot-delta");
    }
    // Resume in start order, whatever happened; each hold's step ends as its container does.
    let mut frozen: Option<Error> = None;
    for (c, hold, step) in held.iter().rev() {
        let r = resume(engine, &c.name, *hold).await;
        let ok = r.is_ok() && failed.is_none();
        if let Err(e) = r {
            frozen.get_or_insert(e);
        }
        ctx.end(*step, if ok { "ok" } else { "failed" }, None::<&()>)?;
    }
    let pause = if any_held { paused_at.elapsed() } else { Duration::ZERO };
    if let Some(e) = frozen {
        return Err(e);
    }
    if let Some(e) = failed {
        return Err(e);
    }
    crash_point("snapshot-resumed");

    if staged {
        if ctx.cancel.is_cancelled() {
            return Err(Error::Interrupted(format!("tenant {tenant}'s archives (it was paused and runs again)")));
        }
        for &n in &held_mounts {
            let m = &st.mounts[n];
            let step = ctx.begin(t, SnapshotStep::Archive, &mount_detail(&m.what))?;
            let (src, d, p) = (stages[n].clone(), dests[n].clone(), prevs[n].clone());
            let r =
                crate::blocking::run("archive", move || archive_or_reuse(&src, &d, p.as_ref())).await.and_then(|r| r);
            ctx.end(step, if r.is_ok() { "ok" } else { "failed" }, None::<&()>)?;
            parts[n] = Some(r.map_err(|e| Error::Other(format!("{}: {e}", m.what)))?);
        }
    }
    // The mounts holding SQLite files, read as their writers write them (never held), with the
    // copies in the files' place.
    if let Some(c) = copies {
        for n in (0..st.mounts.len()).filter(|n| live[*n]) {
            if ctx.cancel.is_cancelled() {
                return Err(Error::Interrupted(format!("tenant {tenant}'s archives")));
            }
            let m = &st.mounts[n];
            let step = ctx.begin(t, SnapshotStep::Archive, &mount_detail(&m.what))?;
            let (src, d, subs) = (m.dir.clone(), dests[n].clone(), c.subs[n].clone());
            let r = crate::blocking::run("archive", move || archive::create_substituted(&src, &d, &subs))
                .await
                .and_then(|r| r.map_err(Error::from));
            ctx.end(step, if r.is_ok() { "ok" } else { "failed" }, None::<&()>)?;
            parts[n] = Some((r.map_err(|e| Error::Other(format!("{}: {e}", m.what)))?, false));
        }
    }
    let Some(parts) = parts.into_iter().collect::<Option<Vec<_>>>() else {
        return Err(Error::Other(format!("tenant {tenant}: a data mount was not archived")));
    };
    let mounts: Vec<MountArchive> = st
        .mounts
        .iter()
        .zip(&parts)
        .enumerate()
        .map(|(n, (m, (s, _)))| {
            let rel = layout::mount_archive(SnapshotKind::Daily, tenant, n);
            MountArchive {
                mount: m.what.clone(),
                source: m.source.clone(),
                file_list: layout::file_list_of(&rel),
                path: rel,
                sha256: s.sha256.clone(),
                size: s.size,
                files: s.files,
                file_list_sha256: s.file_list_sha256.clone(),
            }
        })
        .collect();
    let Some(first) = mounts.first() else {
        return Err(Error::Other(format!("tenant {tenant}: no data mount to archive")));
    };
    let entry = ArchiveEntry { mounts: mounts.clone(), ..first.as_entry(Some(tenant)) };
    let delta = (!deltas.is_empty()).then(|| {
        let mut d = deltas[0].clone();
        for x in &deltas[1..] {
            d.files_copied += x.files_copied;
            d.bytes_copied += x.bytes_copied;
            d.removed += x.removed;
            d.unchanged += x.unchanged;
        }
        d
    });
    Ok(Taken {
        reused: parts.iter().all(|(_, r)| *r),
        bytes_in: parts.iter().map(|(s, _)| s.bytes_in).sum(),
        size: mounts.iter().map(|m| m.size).sum(),
        entry,
        pause,
        staging,
        delta,
        note,
        checked: None,
    })
}
