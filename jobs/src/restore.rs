//! `restore`: bring one tenant's data back from a daily or rollout snapshot. The archive's
//! sha256 is checked against its manifest before anything is touched; then the tenant's
//! container is stopped, the data dir swapped for the extracted snapshot (extracted beside it
//! first, so a failed restore leaves the old data in place), the container started and
//! health-checked. The data it replaces is never removed: it moves to
//! `<backup_root>/replaced/<run_id>/<tenant>`, and `--run <that run id>` puts it back. Before
//! anything is stopped or extracted, the file list is checked and the target filesystem's free
//! space compared with its total; a data dir that is a mount point is refused.
//! `--to DIR` extracts into a directory and touches no container.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::adapters::archive;
use crate::adapters::confined;
use crate::adapters::desired;
use crate::adapters::docker::Engine;
use crate::adapters::health::Prober;
use crate::config::HostConfig;
use crate::context::{crash_point, Ctx};
use crate::error::{Error, ExitKind, Result};
use crate::journal::{HeldContainer, ReplacedDetail, RestoreStep};
use crate::layout::{self, SnapshotId};
use crate::manifest::{ArchiveEntry, Manifest};
use crate::offsite;
use crate::types::{RunId, TenantId};

pub(crate) mod stack;

/// Which snapshot to restore from.
#[derive(Debug, Clone)]
pub enum Source {
    /// `daily/<day>/`.
    Day(String),
    /// `rollout/<run_id>/`.
    Run(RunId),
    /// The newest archive of the tenant, of any kind, by when it was taken.
    Latest,
}

/// Options of `restore`.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// The tenant.
    pub tenant: TenantId,
    /// Which snapshot.
    pub source: Source,
    /// Fetch the archive from the remote first.
    pub remote: bool,
    /// Extract into this dir instead of the tenant's data dir; touch no container.
    pub to: Option<PathBuf>,
    /// Say what would be restored; touch nothing.
    pub dry_run: bool,
}

/// The result of `slipway restore`.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    /// The tenant.
    pub tenant: String,
    /// The archive restored from.
    pub archive: PathBuf,
    /// Its verified sha256.
    pub sha256: String,
    /// Where the data went.
    pub target: PathBuf,
    /// The container stopped and started, if any.
    pub container: Option<String>,
    /// Entries restored.
    pub entries: u64,
    /// Where the data the restore replaced is kept (`<backup_root>/replaced/<run_id>/<tenant>`),
    /// if the data dir existed.
    pub replaced: Option<PathBuf>,
    /// Databases replayed from the snapshot's dumps (`[app.database]`).
    pub databases: usize,
    /// A stack tenant's mounts, each restored from its archive.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<stack::RestoredMount>,
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// How it ended.
    pub outcome: ExitKind,
    /// What happened.
    pub detail: String,
}

/// A located snapshot archive of a tenant.
#[derive(Debug, Clone)]
pub struct Located {
    /// The snapshot directory (`daily/<day>` or `rollout/<run>`), or its stand-in in the remote cache.
    pub dir: PathBuf,
    /// Its manifest entry for the tenant.
    pub entry: ArchiveEntry,
    /// The snapshot it belongs to.
    pub snapshot: SnapshotId,
}

/// A tenant's archive, found locally or fetched from the remote, whose sha256 matched its
/// manifest entry: what `restore` and `drill` go on from.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// Where it was found.
    pub loc: Located,
    /// The archive file.
    pub archive: PathBuf,
    /// Its sha256, as checked.
    pub sha256: String,
}

impl Source {
    /// The one snapshot this source names, or None for `--latest`; a `--day` that is not a day
    /// is a usage error.
    fn snapshot(&self) -> Result<Option<SnapshotId>> {
        match self {
            Source::Day(d) => SnapshotId::daily(d).map(Some).map_err(|e| Error::Usage(format!("--day {e}"))),
            Source::Run(r) => Ok(Some(SnapshotId::rollout(r))),
            Source::Latest => Ok(None),
        }
    }

    /// How a missing snapshot is named in an error: `on 2026-11-22`, `from run …`, `anywhere`.
    fn describe(&self) -> String {
        match self {
            Source::Day(d) => format!("on {d}"),
            Source::Run(r) => format!("from run {r}"),
            Source::Latest => "anywhere".into(),
        }
    }
}

/// The newest of `candidates` by when the tenant's archive was taken
/// ([`ArchiveEntry::taken`]); on a tie, the later snapshot id.
fn newest<T>(candidates: impl IntoIterator<Item = (SnapshotId, ArchiveEntry, T)>) -> Option<(ArchiveEntry, T)> {
    candidates
        .into_iter()
        .max_by(|(sa, a, _), (sb, b, _)| (a.taken(sa), sa).cmp(&(b.taken(sb), sb)))
        .map(|(_, e, t)| (e, t))
}

/// Find the tenant's archive in the local backup root; `--latest` is the archive taken last,
/// of any kind.
pub fn locate(backup_root: &Path, tenant: &TenantId, source: &Source) -> Result<Located> {
    let find = |dir: &Path| -> Result<Option<ArchiveEntry>> {
        Ok(Manifest::read(dir)?.and_then(|m| m.tenant(tenant.as_str()).cloned()))
    };
    let missing =
        || Error::Usage(format!("no complete snapshot of tenant {tenant} {}; see `slipway status`", source.describe()));
    if let Some(snap) = source.snapshot()? {
        let dir = snap.dir(backup_root);
        return find(&dir)?.map(|entry| Located { dir, entry, snapshot: snap }).ok_or_else(missing);
    }
    let mut found = Vec::new();
    for snap in layout::complete(backup_root)? {
        // One unreadable day does not hide every other one from --latest (verify names it).
        match find(&snap.dir) {
            Ok(Some(entry)) => found.push((snap.id.clone(), entry, (snap.dir, snap.id))),
            Ok(None) => {}
            Err(e) => tracing::warn!("{}: skipped: {e}", snap.id),
        }
    }
    newest(found).map(|(entry, (dir, snapshot))| Located { dir, entry, snapshot }).ok_or_else(missing)
}

/// Download a tenant's archive (and the manifest naming it) into the remote cache under the
/// state dir for `restore --remote`; the archive's sha256 is checked on the way.
pub async fn fetch_remote(cfg: &HostConfig, tenant: &TenantId, source: &Source) -> Result<Located> {
    let remote = offsite::connect(cfg).await?;
    let candidates: Vec<SnapshotId> = match source.snapshot()? {
        Some(snap) => vec![snap],
        None => {
            // Every complete remote snapshot of every kind: which holds the tenant's newest
            // archive is only known once each manifest has been read.
            let scratch = tempfile::Builder::new()
                .prefix("slipway-latest-")
                .tempdir()
                .map_err(|e| Error::io(std::env::temp_dir(), e))?;
            let mut found = Vec::new();
            for snap in offsite::list(&remote).await?.snapshots {
                let m = offsite::fetch_manifest(&remote, &snap, &snap.dir(scratch.path())).await?;
                if let Some(entry) = m.as_ref().and_then(|m| m.tenant(tenant.as_str())) {
                    found.push((snap.clone(), entry.clone(), snap));
                }
            }
            newest(found).map(|(_, snap)| snap).into_iter().collect()
        }
    };
    for snap in candidates {
        let dir = snap.cache_dir(&cfg.state_dir);
        if remote.head(&snap.manifest_key()).await?.is_none() {
            continue;
        }
        // A failed fetch (a wrong identity, a damaged object) leaves no cache dir it made behind.
        let made = !dir.exists();
        let fetched = async {
            let Some(m) = offsite::fetch_manifest(&remote, &snap, &dir).await? else { return Ok(None) };
            let Some(entry) = m.tenant(tenant.as_str()).cloned() else { return Ok(None) };
            let need = offsite::download_bytes(&remote, &snap, &entry).await?;
            offsite::check_room(&dir, need, &format!("the archive of tenant {tenant} from {snap}"))?;
            let key = snap.key(&entry.path);
            remote.download(&key, &layout::under(&dir, &entry.path, &key)?, Some(&entry.sha256)).await?;
            // The file list too: the restore's preflight reads it.
            let list_key = snap.key(&entry.file_list);
            let list = layout::under(&dir, &entry.file_list, &list_key)?;
            remote.download(&list_key, &list, Some(&entry.file_list_sha256)).await?;
            // And the database dumps beside it, each checked against its entry on the way.
            for d in entry.database.iter().flat_map(|d| &d.dumps) {
                let key = snap.key(&d.path);
                let path = layout::under(&dir, &d.path, &key)?;
                if let Some(parent) = path.parent() {
                    crate::fsutil::create_private_dir(parent).map_err(|e| Error::io(parent, e))?;
                }
                remote.download(&key, &path, Some(&d.sha256)).await?;
            }
            // And a stack tenant's other mounts, each archive and its file list checked.
            for p in entry.other_parts() {
                for (rel, sha) in [(&p.path, &p.sha256), (&p.file_list, &p.file_list_sha256)] {
                    let key = snap.key(rel);
                    remote.download(&key, &layout::under(&dir, rel, &key)?, Some(sha)).await?;
                }
            }
            Ok::<_, Error>(Some(entry))
        }
        .await;
        match fetched {
            Ok(Some(entry)) => return Ok(Located { dir, entry, snapshot: snap }),
            Ok(None) => continue,
            Err(e) => {
                if made {
                    let _ = confined::remove_tree(&dir);
                }
                return Err(e);
            }
        }
    }
    Err(Error::Usage(format!("no complete remote snapshot of tenant {tenant} at {}", remote.place())))
}

/// The tenant's archive that `source` names, from the backup root or (`remote`) downloaded
/// into the remote cache, with its sha256 checked against its manifest entry before anything
/// is touched: the one way `restore` and `drill` get an archive.
pub async fn fetch_verified(cfg: &HostConfig, tenant: &TenantId, source: &Source, remote: bool) -> Result<Fetched> {
    let loc = if remote { fetch_remote(cfg, tenant, source).await? } else { locate(&cfg.backup_root, tenant, source)? };
    let archive_path = loc.dir.join(&loc.entry.path);
    let (a, want) = (archive_path.clone(), loc.entry.sha256.clone());
    let (got, _) = crate::blocking::run("hash", move || archive::sha256_file(&a)).await??;
    if got != want {
        return Err(Error::Archive(archive::ArchiveError::HashMismatch {
            archive: archive_path,
            expected: want,
            actual: got,
        }));
    }
    Ok(Fetched { loc, archive: archive_path, sha256: got })
}

/// Room a restore needs beyond the file contents, per entry (a block for its inode, dir entry
/// and last partial block).
const PER_ENTRY_BYTES: u64 = 4096;

/// Before anything is extracted: the file list must be the one the manifest recorded, and the
/// filesystem the files will land on (`on`: the target, else its nearest existing ancestor) must
/// have room for every file in it. Read as a stream, so a huge list costs no memory.
pub async fn preflight(loc: &Located, target: &Path) -> Result<()> {
    let list = loc.dir.join(&loc.entry.file_list);
    let (want, mut on) = (loc.entry.file_list_sha256.clone(), target.to_path_buf());
    while !on.exists() {
        match on.parent() {
            Some(p) => on = p.to_path_buf(),
            None => break,
        }
    }
    let l = list.clone();
    let ((sha, _), (bytes, entries)) = crate::blocking::run("restore preflight", move || {
        Ok::<_, Error>((archive::sha256_file(&l)?, archive::totals(&l)?))
    })
    .await??;
    if sha != want {
        return Err(Error::Backup(format!(
            "{}: sha256 is {sha}, the manifest says {want}; the file list is damaged, nothing was touched \
             (try another --day or `restore --remote`)",
            list.display()
        )));
    }
    let need = bytes.saturating_add(entries.saturating_mul(PER_ENTRY_BYTES));
    let free = crate::fsutil::free_bytes(&on).map_err(|e| Error::io(&on, e))?;
    if free < need {
        return Err(Error::Backup(format!(
            "{}: the restore needs about {need} bytes ({bytes} bytes in {entries} entries) but only {free} are free \
             there; nothing was touched. Free space on that filesystem or restore with --to onto a larger one",
            on.display()
        )));
    }
    Ok(())
}

/// Start the tenant's container again (journaled) and health-check it; Err says why not.
async fn start_and_check(
    ctx: &Ctx,
    engine: &Engine,
    app: &crate::config::App,
    name: &str,
    tenant: &TenantId,
    held: &HeldContainer,
) -> Result<std::result::Result<std::time::Duration, String>> {
    let s = ctx.begin(Some(tenant.as_str()), RestoreStep::Start, held)?;
    let started = engine.start(name).await;
    ctx.end(s, if started.is_ok() { "ok" } else { "failed" }, None::<&()>)?;
    Ok(match started {
        Ok(()) => Prober::new()?.gate(engine, name, &app.health, None).await?.map_err(|u| u.to_string()),
        Err(e) => Err(e.to_string()),
    })
}

/// The desired-state commit, and the app and container of `tenant` in it if it has one.
async fn tenant_container(
    ctx: &Ctx,
    engine: &Engine,
    tenant: &TenantId,
) -> Result<(String, Option<(crate::config::App, crate::adapters::docker::TenantContainer)>)> {
    let state = desired::read(&ctx.cfg.desired, &ctx.cfg.state_dir, None)?;
    for app in state.fleet.apps.iter().filter(|a| a.stack.is_none()) {
        if let Some(c) = engine.tenants(app).await?.into_iter().find(|c| c.tenant == *tenant) {
            return Ok((state.commit, Some((app.clone(), c))));
        }
    }
    Ok((state.commit, None))
}

/// `--to`'s dir: made if new (private), refused when it holds anything.
fn fresh_target(to: &Path) -> Result<()> {
    if to.exists() && std::fs::read_dir(to).map_err(|e| Error::io(to, e))?.next().is_some() {
        return Err(Error::Usage(format!(
            "--to {}: the directory is not empty; give a new or empty one",
            to.display()
        )));
    }
    crate::fsutil::create_private_dir(to).map_err(|e| Error::io(to, e))
}

/// Run `restore`.
pub async fn restore(ctx: &Ctx, opts: &RestoreOptions) -> Result<RestoreReport> {
    // `--run` of an earlier restore: put back the data that restore replaced. `--run` of a
    // rollout is that run's snapshot — the data from before it —, never what its failed version
    // wrote (which an undo keeps under the same `replaced/<run>/`).
    let mut replaced_by_rollout = None;
    if let (Source::Run(r), false) = (&opts.source, opts.remote) {
        if let Some(kept) = stack::replaced_by(ctx, r, &opts.tenant)? {
            return stack::put_back_replaced(ctx, opts, kept).await;
        }
        let kept = layout::replaced_dir(&ctx.cfg.backup_root, r, opts.tenant.as_str());
        if kept.is_dir() {
            let job = ctx.store.run(r.as_str())?.map(|run| run.job);
            let has_snapshot = SnapshotId::rollout(r).dir(&ctx.cfg.backup_root).is_dir();
            match job.as_deref() {
                Some("restore") => return restore_replaced(ctx, opts, &kept).await,
                // A run this state dir does not know: what it replaced, unless it is a rollout's.
                None if !has_snapshot => return restore_replaced(ctx, opts, &kept).await,
                _ => replaced_by_rollout = Some(kept),
            }
        }
    }
    // Verified before anything is touched.
    let fetched = fetch_verified(&ctx.cfg, &opts.tenant, &opts.source, opts.remote).await;
    let fetched = match (fetched, replaced_by_rollout) {
        (Err(Error::Usage(why)), Some(kept)) => {
            return Err(Error::Usage(format!(
                "{why}: that run archived no data of tenant {} (its undo swapped its copy from before the run back into the \
                 data dir, so the tenant had its data from before the run again right after the halt); what the \
                 failed version wrote is kept in {} — copy it with `cp -a` if it is needed",
                opts.tenant,
                kept.display()
            )))
        }
        (r, _) => r?,
    };
    let mut report = RestoreReport::begun(opts, fetched.archive.clone(), fetched.sha256.clone());
    // A stack tenant's snapshot: one archive per mount, restored together.
    if !fetched.loc.entry.mounts.is_empty() {
        return stack::restore_stack(ctx, opts, fetched, report).await;
    }
    let Fetched { loc, archive: archive_path, sha256: got } = fetched;
    if let Some(to) = &opts.to {
        report.target = to.clone();
        preflight(&loc, to).await?;
        if opts.dry_run {
            report.detail = format!("would extract into {}", to.display());
            return Ok(report);
        }
        fresh_target(to)?;
        let (a, h, d) = (archive_path, got, to.clone());
        report.entries = crate::blocking::run("extract", move || archive::extract_into(&a, &h, &d)).await??;
        report.detail = format!("extracted {} entries into {}", report.entries, to.display());
        return Ok(report);
    }

    // Into the tenant's data dir, with its container stopped.
    let engine = Engine::connect(&ctx.cfg.docker).await?;
    let (commit, found) = tenant_container(ctx, &engine, &opts.tenant).await?;
    let Some((app, container)) = found else {
        return Err(Error::Usage(format!(
            "tenant {} has no container in any app of fleet.toml; use --to DIR to extract its data elsewhere",
            opts.tenant
        )));
    };
    let data_dir = app.data_dir_of(&opts.tenant);
    report.target = data_dir.clone();
    report.container = Some(container.name.clone());
    // A mount point cannot be swapped by rename: refused before anything is touched.
    if data_dir.exists() && crate::fsutil::is_mount_point(&data_dir).map_err(|e| Error::io(&data_dir, e))? {
        return Err(Error::Usage(format!(
            "tenant {}: data dir {} is a mount point, which restore cannot swap; nothing was touched. \
             Restore with --to into a new dir on that filesystem, then stop the tenant and move the files in",
            opts.tenant,
            data_dir.display()
        )));
    }
    // Nor can a dir with another filesystem mounted inside: the mount would go with the old tree.
    if let Some(m) = data_dir
        .exists()
        .then(|| crate::fsutil::mounts_under(&data_dir).unwrap_or_default())
        .and_then(|v| v.into_iter().next())
    {
        return Err(Error::Usage(format!(
            "tenant {}: {} is a mount point inside its data dir {}, which restore cannot swap around; nothing \
             was touched. Unmount it (or restore with --to into a new dir), then restore again",
            opts.tenant,
            m.display(),
            data_dir.display()
        )));
    }
    // The database dumps of the snapshot, each re-hashed, before anything is touched; a
    // snapshot with dumps is never restored as files alone.
    let dumps = match (&loc.entry.database, &app.database) {
        (Some(d), Some(_)) => Some(crate::database::verified(&loc.dir, &opts.tenant, d).await?),
        (Some(_), None) => {
            return Err(Error::Usage(format!(
                "tenant {}: the snapshot holds database dumps but app \"{}\" declares no [app.database] to replay them \
                 into; nothing was touched. Declare it in fleet.toml, or restore the files alone with --to DIR",
                opts.tenant, app.name
            )))
        }
        (None, _) => None,
    };
    // The new tree is extracted beside the data dir, and the old one is kept: room for all of it.
    preflight(&loc, data_dir.parent().unwrap_or(&data_dir)).await?;
    if opts.dry_run {
        report.detail = format!(
            "would stop {}, restore {} into {}, start it",
            container.name,
            archive_path.display(),
            data_dir.display()
        );
        return Ok(report);
    }
    let record = ctx.start_run("restore", Some(&app.name), Some(&commit), None)?;
    // A tenant that was not running (suspended, stopped by hand) gets its data back and stays
    // stopped: a restore never starts what it did not stop (hold `none`: recover leaves it so).
    let was_running = container.state != "exited" && container.state != "created" && container.state != "dead";
    let held =
        HeldContainer { container: container.name.clone(), hold: if was_running { "stop" } else { "none" }.into() };
    if was_running {
        let s = ctx.begin(Some(opts.tenant.as_str()), RestoreStep::Stop, &held)?;
        engine.stop(&container.name, app.stop_timeout_s).await?;
        ctx.end(s, "ok", None::<&()>)?;
    }
    crash_point("restore-before-swap");
    let s = ctx.begin(Some(opts.tenant.as_str()), RestoreStep::Restore, &held)?;
    let (a, h, d) = (archive_path.clone(), got.clone(), data_dir.clone());
    let swapped = crate::blocking::run("restore", move || archive::restore_swap_keep(&a, &h, &d)).await?;
    // The data it replaced is kept, never removed: a wrong --day must not be the end of it.
    let restored = match swapped {
        Ok((n, old)) => {
            report.replaced = old.map(|old| {
                crate::fsutil::keep_replaced(&ctx.cfg.backup_root, ctx.run_id(), opts.tenant.as_str(), &old)
            });
            Ok(n)
        }
        Err(e) => Err(e),
    };
    ctx.end(
        s,
        if restored.is_ok() { "ok" } else { "failed" },
        Some(&ReplacedDetail { replaced: report.replaced.clone(), from: None }),
    )?;
    // The files are back: the database is started if it is not running, and its dumps replayed
    // (each database in one transaction). A failed replay leaves the database as it was, and
    // the files go back to what they were too: the tenant is left as the restore found it.
    let mut replay_failed = None;
    if let (Ok(_), Some(dumps), Some(spec)) = (&restored, &dumps, &app.database) {
        let db_container = spec.container_of(&opts.tenant);
        let s = ctx.begin(Some(opts.tenant.as_str()), RestoreStep::Replay, &held)?;
        let replayed = crate::database::replay(&engine, spec, &opts.tenant, &db_container, dumps).await;
        ctx.end(s, if replayed.is_ok() { "ok" } else { "failed" }, None::<&()>)?;
        match replayed {
            Ok(n) => report.databases = n,
            Err(e) => {
                let back = match &report.replaced {
                    Some(kept) => confined::finish_swap(&data_dir)
                        .and_then(|_| confined::exchange(kept, &data_dir))
                        .map_err(|x| Error::io(&data_dir, x)),
                    None => Ok(()),
                };
                replay_failed = Some((e, back));
            }
        }
    }
    let health = if was_running {
        start_and_check(ctx, &engine, &app, &container.name, &opts.tenant, &held).await?
    } else {
        Ok(std::time::Duration::ZERO)
    };
    if let Some((e, back)) = replay_failed {
        report.outcome = ExitKind::Failure;
        report.detail = match (&back, &health) {
            (Ok(()), Ok(_)) => format!(
                "{e}; the database is as it was (the replay ran in one transaction) and the files it had are back \
                 in {}; {} {} on them",
                data_dir.display(),
                container.name,
                if was_running { "runs" } else { "stays stopped" }
            ),
            (Err(x), _) => {
                report.outcome = ExitKind::PersonNeeded;
                format!("{e}; and the files could not be put back ({x}): a person is needed")
            }
            (_, Err(h)) => {
                report.outcome = ExitKind::PersonNeeded;
                format!(
                    "{e}; the files it had are back, but {} is not healthy: {h}; a person is needed",
                    container.name
                )
            }
        };
        if back.is_ok() {
            // The swap back left the restored files where the replaced ones were kept.
            report.replaced = None;
        }
        record.finish(ctx, report.outcome, &report.detail)?;
        return Ok(report);
    }
    match (&restored, &health) {
        (Ok(n), Ok(_)) if !was_running => {
            report.entries = *n;
            report.detail = format!(
                "restored {n} entries into {}; {} was not running ({}) and is left stopped",
                data_dir.display(),
                container.name,
                container.state
            );
        }
        (Ok(n), Ok(_)) => {
            report.entries = *n;
            report.detail =
                format!("restored {n} entries into {}; {} is running and healthy", data_dir.display(), container.name);
            if report.databases > 0 {
                report.detail.push_str(&format!("; {} database(s) replayed", report.databases));
            }
        }
        (Err(e), Ok(_)) => {
            report.outcome = ExitKind::Failure;
            report.detail = format!(
                "restore failed, the old data is still in place and {} {} on it: {e}",
                container.name,
                if was_running { "runs" } else { "stays stopped" }
            );
        }
        (_, Err(e)) => {
            report.outcome = ExitKind::PersonNeeded;
            report.detail = format!("{} is not healthy after the restore: {e}; a person is needed", container.name);
        }
    }
    if let Some(r) = &report.replaced {
        report.detail.push_str(&format!("; the data it replaced is kept in {}", r.display()));
    }
    record.finish(ctx, report.outcome, &report.detail)?;
    resolve_earlier(ctx, &opts.tenant, report.outcome)?;
    Ok(report)
}

/// A restore of `tenant` that succeeded resolves the earlier restores of it that ended needing
/// a person: the person acted, and the tenant runs healthy on the data put in place now.
fn resolve_earlier(ctx: &Ctx, tenant: &TenantId, outcome: ExitKind) -> Result<()> {
    if outcome != ExitKind::Success {
        return Ok(());
    }
    for r in ctx.store.unresolved_halts()? {
        if r.job == "restore"
            && r.id != ctx.run_id().as_str()
            && ctx.store.steps(&r.id)?.iter().any(|s| s.tenant.as_deref() == Some(tenant.as_str()))
        {
            ctx.store.resolve_run(&r.id, &format!("restore {}", ctx.run_id()))?;
        }
    }
    Ok(())
}

/// Put back the data an earlier restore replaced (`kept`, `replaced/<run>/<tenant>`): the tenant
/// is stopped, `kept` and the data dir are exchanged in one rename (so the data it replaces is
/// kept in turn, under this run), and the tenant started and health-checked.
async fn restore_replaced(ctx: &Ctx, opts: &RestoreOptions, kept: &Path) -> Result<RestoreReport> {
    if opts.to.is_some() {
        return Err(Error::Usage(format!(
            "--to: the data an earlier restore replaced is a plain dir, {}; copy it with `cp -a` instead",
            kept.display()
        )));
    }
    let engine = Engine::connect(&ctx.cfg.docker).await?;
    let (commit, found) = tenant_container(ctx, &engine, &opts.tenant).await?;
    let Some((app, container)) = found else {
        return Err(Error::Usage(format!(
            "tenant {} has no container in any app of fleet.toml; copy {} by hand",
            opts.tenant,
            kept.display()
        )));
    };
    let data_dir = app.data_dir_of(&opts.tenant);
    let mut report = RestoreReport {
        target: data_dir.clone(),
        container: Some(container.name.clone()),
        ..RestoreReport::begun(opts, kept.to_path_buf(), String::new())
    };
    if !data_dir.is_dir() || crate::fsutil::is_mount_point(&data_dir).map_err(|e| Error::io(&data_dir, e))? {
        return Err(Error::Usage(format!(
            "tenant {}: data dir {} is missing or a mount point, so it cannot be exchanged with {}; \
             nothing was touched. Stop the tenant and copy the files in by hand",
            opts.tenant,
            data_dir.display(),
            kept.display()
        )));
    }
    if opts.dry_run {
        report.detail =
            format!("would stop {}, put {} back into {}, start it", container.name, kept.display(), data_dir.display());
        return Ok(report);
    }
    let record = ctx.start_run("restore", Some(&app.name), Some(&commit), None)?;
    let held = HeldContainer { container: container.name.clone(), hold: "stop".into() };
    let s = ctx.begin(Some(opts.tenant.as_str()), RestoreStep::Stop, &held)?;
    engine.stop(&container.name, app.stop_timeout_s).await?;
    ctx.end(s, "ok", None::<&()>)?;
    let s = ctx.begin(Some(opts.tenant.as_str()), RestoreStep::Restore, &held)?;
    let exchanged = confined::finish_swap(&data_dir)
        .and_then(|_| confined::exchange(kept, &data_dir))
        .map_err(|e| Error::io(&data_dir, e));
    if exchanged.is_ok() {
        // `kept` now holds the data that was in place: kept in turn, under this run.
        report.replaced =
            Some(crate::fsutil::keep_replaced(&ctx.cfg.backup_root, ctx.run_id(), opts.tenant.as_str(), kept));
    }
    ctx.end(
        s,
        if exchanged.is_ok() { "ok" } else { "failed" },
        Some(&ReplacedDetail { replaced: report.replaced.clone(), from: Some(kept.to_path_buf()) }),
    )?;
    let health = start_and_check(ctx, &engine, &app, &container.name, &opts.tenant, &held).await?;
    match (&exchanged, &health) {
        (Ok(()), Ok(_)) => {
            report.detail = format!(
                "put the data an earlier restore replaced back into {}; {} is running and healthy",
                data_dir.display(),
                container.name
            )
        }
        (Err(e), Ok(_)) => {
            report.outcome = ExitKind::Failure;
            report.detail = format!("{e}; nothing was moved and {} runs on its data as it was", container.name);
        }
        (_, Err(e)) => {
            report.outcome = ExitKind::PersonNeeded;
            report.detail = format!("{} is not healthy after the restore: {e}; a person is needed", container.name);
        }
    }
    if let Some(r) = &report.replaced {
        report.detail.push_str(&format!("; the data it replaced is kept in {}", r.display()));
    }
    record.finish(ctx, report.outcome, &report.detail)?;
    resolve_earlier(ctx, &opts.tenant, report.outcome)?;
    Ok(report)
}

impl RestoreReport {
    /// The report of a restore of `opts.tenant` from `archive` (its `sha256`), before it acts.
    fn begun(opts: &RestoreOptions, archive: PathBuf, sha256: String) -> RestoreReport {
        RestoreReport {
            tenant: opts.tenant.to_string(),
            archive,
            sha256,
            target: PathBuf::new(),
            container: None,
            entries: 0,
            replaced: None,
            databases: 0,
            mounts: Vec::new(),
            dry_run: opts.dry_run,
            outcome: ExitKind::Success,
            detail: String::new(),
        }
    }
}

impl fmt::Display for RestoreReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "restore tenant {} from {} (sha256 {} verified)",
            self.tenant,
            self.archive.display(),
            &self.sha256[..12.min(self.sha256.len())]
        )?;
        for m in &self.mounts {
            writeln!(f, "  {} → {} ({} entries)", m.mount, m.target.display(), m.entries)?;
        }
        writeln!(f, "  {}", self.detail)
    }
}
