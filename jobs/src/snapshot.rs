//! `snapshot`: the daily archive of every tenant's data dir, one tenant at a time, into
//! `daily/<YYYY-MM-DD>/tenants/<tenant>.tar.zst`, and of the control-plane dirs into
//! `daily/<YYYY-MM-DD>/control-plane.tar.zst`.
//!
//! Invariants: a tenant is quiesced (paused by default) only while its tree is read, and is
//! unpaused right after — also on error, and by `recover` if the process dies (the hold is
//! journaled before it starts). With `[snapshot] staging` (the default) the tree read while
//! paused is only the last delta into the tenant's staging copy (`layout::staging_dir`), which
//! is brought up to date before the pause with the tenant running and archived after it; the
//! staging copy is never the only copy of anything, so a crash mid-pass leaves it merely stale
//! (the mirror's next pass makes it exact again), and the tenant's data dir is only ever read.
//! Every SQLite database in a control-plane dir is copied through SQLite's online backup API
//! and passes `PRAGMA integrity_check` before it is archived. The
//! day's `MANIFEST.json` lists exactly the archives that are complete; it is rewritten
//! atomically after each one. A tenant whose tree is unchanged since its previous snapshot
//! reuses that archive (hard link). One failing tenant does not stop the others. A stack
//! tenant (`[app.services]`) is taken by [`stack`]: every data mount, its writers held together.
//! A tenant whose SQLite files are declared (`[app.database] kind = "sqlite"`) is never held:
//! [`sqlite`] copies them online first, and its archive carries the copies in their place; a
//! stack tenant's writers are held only for its mounts that hold no declared file.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::adapters::archive;
use crate::adapters::desired;
use crate::adapters::docker::Engine;
use crate::adapters::mirror;
use crate::config::{App, Quiesce};
use crate::context::{crash_point, Ctx};
use crate::error::{Error, ExitKind, Result};
use crate::fsutil::create_private_dir;
use crate::journal::{HeldContainer, SnapshotStep};
use crate::layout::{self, SnapshotId, SnapshotKind, CONTROL_PLANE};
use crate::manifest::{ArchiveEntry, Manifest};
use crate::stack_tenant::StackTenant;
use crate::types::TenantId;

mod sqlite;
mod stack;

/// What a tenant of the day's work is: one container, or a stack (or why the stack cannot be
/// snapshotted as a unit: the tenant fails, loudly).
enum Target {
    Container(String),
    Stack(std::result::Result<StackTenant, String>),
}

/// Options of `snapshot`.
#[derive(Debug, Clone, Default)]
pub struct SnapshotOptions {
    /// Only these tenants (default: all).
    pub tenants: Vec<TenantId>,
    /// Also archive the control-plane dirs.
    pub control_plane: bool,
    /// Redo archives already complete today.
    pub force: bool,
    /// Show the plan, touch nothing.
    pub dry_run: bool,
}

/// What happened to one archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ArchiveOutcome {
    /// Compressed now.
    Archived,
    /// The tree was unchanged: the previous archive was linked.
    Reused,
    /// Already complete today.
    AlreadyDone,
    /// Would be archived (dry run).
    Planned,
    /// Failed; see detail.
    Failed,
    /// Failed, and the tenant could not be unpaused (or started) again: a person is needed.
    Frozen,
    /// Not taken: a signal stopped the job first (the tenant was left running, unpaused).
    Interrupted,
}

/// One archive of the run.
#[derive(Debug, Clone, Serialize)]
pub struct ArchiveReport {
    /// Tenant, or none for the control plane.
    pub tenant: Option<String>,
    /// Archive path.
    pub path: PathBuf,
    /// Outcome.
    pub outcome: ArchiveOutcome,
    /// Archive size.
    pub size: u64,
    /// Bytes of file content read.
    pub bytes_in: u64,
    /// Time spent.
    pub duration_ms: u64,
    /// How long the tenant was paused (or stopped) for it, in ms; 0 when it was not held.
    pub pause_ms: u64,
    /// How the tenant was held still (none for the control plane, or when nothing was read).
    pub staging: Option<Staging>,
    /// What the paused pass copied into the staging copy (staged archives only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta: Option<mirror::MirrorReport>,
    /// The pass made while the tenant ran (staged archives only): what it copied, and the files
    /// it compared with the source byte for byte (`[snapshot] check_copy_days`), with any copy
    /// found damaged (`mismatched`, also named in `note`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pre_pass: Option<mirror::MirrorReport>,
    /// Why the staging copy was not used, when it could not be.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Error, if failed.
    pub detail: Option<String>,
    /// The tenant's database dumps taken with the archive (`[app.database]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<crate::manifest::DatabaseDumps>,
    /// The tenant's SQLite files copied online and archived in place of the live ones
    /// (`[app.database] kind = "sqlite"`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sqlite: Vec<crate::manifest::SqliteCopy>,
}

/// The result of `slipway snapshot`.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotReport {
    /// The day.
    pub day: String,
    /// The day's directory.
    pub dir: PathBuf,
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// Per archive.
    pub archives: Vec<ArchiveReport>,
    /// Earlier days that could not be read (an unreadable `MANIFEST.json`): skipped, never
    /// reused from; `verify` fails naming them.
    pub skipped: Vec<String>,
    /// Staging copies of tenants that are in no app any more, removed (or, in a dry run, that
    /// would be), one line each; only a snapshot of every tenant (no `--tenant`) removes them.
    pub staging_removed: Vec<String>,
}

impl SnapshotReport {
    /// Failure when any archive failed.
    pub fn exit_kind(&self) -> ExitKind {
        if self.archives.iter().any(|a| a.outcome == ArchiveOutcome::Frozen) {
            ExitKind::PersonNeeded
        } else if self.archives.iter().any(|a| a.outcome == ArchiveOutcome::Failed) {
            ExitKind::Failure
        } else if self.archives.iter().any(|a| a.outcome == ArchiveOutcome::Interrupted) {
            ExitKind::Interrupted
        } else {
            ExitKind::Success
        }
    }
    /// Bytes written by this run.
    pub fn archived_bytes(&self) -> u64 {
        self.archives.iter().filter(|a| a.outcome == ArchiveOutcome::Archived).map(|a| a.size).sum()
    }
}

/// Today's day name (UTC).
pub fn today() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%d").to_string()
}

/// Run `snapshot`.
pub async fn snapshot(ctx: &Ctx, opts: &SnapshotOptions) -> Result<SnapshotReport> {
    let state = desired::read(&ctx.cfg.desired, &ctx.cfg.state_dir, None)?;
    let engine = Engine::connect(&ctx.cfg.docker).await?;
    // Every tenant of every app, checked against --tenant before anything is touched.
    let mut work: Vec<(&App, TenantId, Target)> = Vec::new();
    for app in &state.fleet.apps {
        if let Some(st) = &app.stack {
            let (members, _) = engine.stack_members(app, st).await?;
            for t in crate::stack_tenant::tenants_of(&members) {
                let resolved = crate::stack_tenant::resolve(app, st, &t, &members);
                work.push((app, t, Target::Stack(resolved)));
            }
            continue;
        }
        for c in engine.tenants(app).await? {
            work.push((app, c.tenant, Target::Container(c.name)));
        }
    }
    for t in &opts.tenants {
        if !work.iter().any(|(_, w, _)| w == t) {
            return Err(Error::Usage(format!("no tenant \"{t}\" in any app of fleet.toml; see `slipway status`")));
        }
    }
    // The staging copies in use: a tenant's, or each mount's of a stack tenant (but a mount
    // holding declared SQLite files, which is archived live).
    let known: std::collections::BTreeSet<String> = work
        .iter()
        .flat_map(|(app, t, target)| match target {
            Target::Container(_) => vec![t.to_string()],
            Target::Stack(Ok(st)) => {
                let live = app.sqlite.as_ref().map(|sq| sqlite::mounts_holding(sq, st)).unwrap_or_default();
                (0..st.mounts.len()).filter(|n| !live.contains(n)).map(|n| layout::mount_key(t.as_str(), n)).collect()
            }
            Target::Stack(Err(_)) => Vec::new(),
        })
        .collect();
    if !opts.tenants.is_empty() {
        work.retain(|(_, t, _)| opts.tenants.contains(t));
    }
    let day = today();
    let snap = SnapshotId::daily(&day).map_err(|e| Error::Other(format!("today's snapshot: {e}")))?;
    let dir = snap.dir(&ctx.cfg.backup_root);
    let mut manifest = Manifest::read(&dir)?.unwrap_or_else(|| Manifest::new(&snap));
    let (previous, skipped) = previous_manifests(&ctx.cfg.backup_root, &snap)?;
    for why in &skipped {
        tracing::warn!("{why}");
    }
    let mut archives = Vec::new();
    let record = if opts.dry_run { None } else { Some(ctx.start_run("snapshot", None, Some(&state.commit), None)?) };
    if record.is_some() {
        create_private_dir(&layout::tenants_dir(&dir)).map_err(|e| Error::io(&dir, e))?;
    }
    for (app, tenant, target) in &work {
        // A stack tenant's entry is named by its first mount's archive.
        let rel = match target {
            Target::Container(_) => layout::tenant_archive(SnapshotKind::Daily, tenant.as_str()),
            Target::Stack(_) => layout::mount_archive(SnapshotKind::Daily, tenant.as_str(), 0),
        };
        let dest = dir.join(&rel);
        let mut rep = ArchiveReport::planned(Some(tenant.as_str()), dest.clone());
        if let Target::Stack(Err(why)) = target {
            rep.outcome = ArchiveOutcome::Failed;
            rep.detail = Some(format!("app {} (a stack): {why}; nothing was paused or archived", app.name));
            archives.push(rep);
            continue;
        }
        if already_done(&manifest, &rel, &dest, opts.force) {
            rep.outcome = ArchiveOutcome::AlreadyDone;
            archives.push(rep);
            continue;
        }
        if opts.dry_run {
            archives.push(rep);
            continue;
        }
        // SIGTERM (systemd stopping the unit), SIGINT or SIGHUP: no tenant is held after it;
        // those not yet taken are left for the next run (today's manifest lists the others).
        if ctx.cancel.is_cancelled() {
            rep.outcome = ArchiveOutcome::Interrupted;
            rep.detail = Some("not taken: interrupted by a signal".into());
            archives.push(rep);
            continue;
        }
        let t = Instant::now();
        ctx.progress.start(&format!("snapshot {tenant}"), None);
        // `--force` never reuses: it archives every tenant afresh.
        let prev = if opts.force {
            None
        } else {
            previous.iter().find_map(|(d, m)| m.tenant(tenant.as_str()).map(|e| (d.clone(), e.clone())))
        };
        // The database first, with the app running: a dump or a SQLite copy that fails never
        // pauses the tenant, and its files are not archived without it.
        let dumped = match (&app.database, &app.sqlite) {
            (Some(spec), _) => {
                let data_dir = app.stack.is_none().then(|| app.data_dir_of(tenant));
                crate::database::dump(&engine, spec, tenant, data_dir.as_deref(), &dir, &rel)
                    .await
                    .map(|p| (Some(p), None))
            }
            (None, Some(spec)) => {
                let tenants_dir = layout::tenants_dir(&dir);
                match target {
                    Target::Stack(Ok(st)) => sqlite::take_stack(spec, st, &tenants_dir).await,
                    _ => sqlite::take(spec, tenant, &app.data_dir_of(tenant), &tenants_dir).await,
                }
                .map(|c| (None, Some(c)))
            }
            (None, None) => Ok((None, None)),
        };
        crash_point("snapshot-dumped");
        let taken = match dumped {
            Ok((pending, copies)) => match match target {
                Target::Container(container) => {
                    snapshot_tenant(ctx, &engine, app, tenant, container, &dest, prev, copies.as_ref()).await
                }
                Target::Stack(Ok(st)) => {
                    stack::snapshot_stack(ctx, &engine, app, st, &dir, prev, copies.as_ref()).await
                }
                Target::Stack(Err(why)) => Err(Error::Other(why.clone())),
            } {
                Ok(mut taken) => {
                    taken.entry.sqlite = copies.map(|c| c.entries.clone()).unwrap_or_default();
                    match pending {
                        Some(p) => p.place().await.map(|d| {
                            taken.entry.database = Some(d);
                            taken
                        }),
                        None => Ok(taken),
                    }
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        match taken {
            Ok(taken) => {
                rep.database = taken.entry.database.clone();
                rep.sqlite = taken.entry.sqlite.clone();
                rep.outcome = if taken.reused { ArchiveOutcome::Reused } else { ArchiveOutcome::Archived };
                rep.size = taken.size;
                rep.bytes_in = taken.bytes_in;
                rep.pause_ms = taken.pause.as_millis() as u64;
                rep.staging = Some(taken.staging);
                rep.delta = taken.delta;
                rep.pre_pass = taken.checked;
                rep.note = taken.note;
                commit_entry(
                    ctx,
                    &mut manifest,
                    &snap,
                    &dir,
                    ArchiveEntry { path: rel.clone(), tenant: Some(tenant.to_string()), ..taken.entry },
                )?;
            }
            Err(e) => {
                rep.outcome = match e {
                    Error::Frozen { .. } => ArchiveOutcome::Frozen,
                    Error::Interrupted(_) => ArchiveOutcome::Interrupted,
                    _ => ArchiveOutcome::Failed,
                };
                rep.detail = Some(e.to_string());
            }
        }
        rep.duration_ms = t.elapsed().as_millis() as u64;
        ctx.progress.finish();
        archives.push(rep);
    }
    if opts.control_plane && !ctx.cfg.control_plane.is_empty() {
        let rel = layout::control_plane_archive();
        let dest = dir.join(&rel);
        let mut rep = ArchiveReport::planned(None, dest.clone());
        if already_done(&manifest, &rel, &dest, opts.force) {
            rep.outcome = ArchiveOutcome::AlreadyDone;
        } else if !opts.dry_run && ctx.cancel.is_cancelled() {
            rep.outcome = ArchiveOutcome::Interrupted;
            rep.detail = Some("not taken: interrupted by a signal".into());
        } else if !opts.dry_run {
            let t = Instant::now();
            let (dirs, d2, dest2) = (ctx.cfg.control_plane.clone(), dir.clone(), dest.clone());
            let r =
                crate::blocking::run("the control-plane archive", move || snapshot_control_plane(&dirs, &d2, &dest2))
                    .await?;
            match r {
                Ok(s) => {
                    rep.outcome = ArchiveOutcome::Archived;
                    rep.size = s.size;
                    rep.bytes_in = s.bytes_in;
                    commit_entry(ctx, &mut manifest, &snap, &dir, entry_of(&rel, None, &s))?;
                }
                Err(e) => {
                    rep.outcome = ArchiveOutcome::Failed;
                    rep.detail = Some(e.to_string());
                }
            }
            rep.duration_ms = t.elapsed().as_millis() as u64;
        }
        archives.push(rep);
    }
    let staging_removed = if opts.tenants.is_empty() {
        let (root, dry_run) = (ctx.cfg.backup_root.clone(), opts.dry_run);
        crate::blocking::run("removing staging copies", move || remove_stale_staging(&root, &known, dry_run)).await?
    } else {
        Vec::new()
    };
    let report = SnapshotReport { day, dir, dry_run: opts.dry_run, archives, skipped, staging_removed };
    if !opts.dry_run {
        let failed: Vec<String> = report
            .archives
            .iter()
            .filter(|a| a.outcome == ArchiveOutcome::Failed)
            .map(|a| a.tenant.clone().unwrap_or_else(|| CONTROL_PLANE.into()))
            .collect();
        let interrupted = report.archives.iter().filter(|a| a.outcome == ArchiveOutcome::Interrupted).count();
        let summary = if failed.is_empty() && interrupted > 0 {
            format!("interrupted by a signal: {interrupted} archive(s) not taken for {}", report.day)
        } else if failed.is_empty() {
            format!("{} archive(s) complete for {}", report.archives.len(), report.day)
        } else {
            format!("FAILED: {}", failed.join(", "))
        };
        let kind = report.exit_kind();
        if let Some(record) = record {
            record.finish(ctx, kind, &summary)?;
        }
    }
    Ok(report)
}

impl ArchiveReport {
    /// "; paused 120 ms for the last delta (3 files) of the staging copy" and the like.
    fn held(&self) -> String {
        match self.staging {
            Some(Staging::Staged) => {
                let copied = self.delta.as_ref().map_or(0, |d| d.files_copied);
                format!("; paused {} ms for the last delta ({copied} files) of the staging copy", self.pause_ms)
            }
            Some(Staging::Off) => format!("; paused {} ms while read (staging off)", self.pause_ms),
            Some(Staging::ShortOfSpace) => {
                format!("; paused {} ms while read (too little space for the staging copy)", self.pause_ms)
            }
            Some(Staging::NotHeld) | None => String::new(),
        }
    }

    fn planned(tenant: Option<&str>, path: PathBuf) -> ArchiveReport {
        ArchiveReport {
            tenant: tenant.map(str::to_string),
            path,
            outcome: ArchiveOutcome::Planned,
            size: 0,
            bytes_in: 0,
            duration_ms: 0,
            pause_ms: 0,
            staging: None,
            delta: None,
            pre_pass: None,
            note: None,
            detail: None,
            database: None,
            sqlite: Vec::new(),
        }
    }
}

/// Whether `rel` is complete today (listed in the manifest and present) and not forced again.
fn already_done(manifest: &Manifest, rel: &str, dest: &Path, force: bool) -> bool {
    !force && manifest.archives.iter().any(|a| a.path == rel) && dest.exists()
}

/// List a finished archive in the day's manifest (rewritten atomically) and the run record.
fn commit_entry(ctx: &Ctx, manifest: &mut Manifest, snap: &SnapshotId, dir: &Path, entry: ArchiveEntry) -> Result<()> {
    let rel = entry.path.clone();
    let tenant = entry.tenant.clone();
    manifest.upsert(entry);
    manifest.write(dir)?;
    let kind = if tenant.is_some() { SnapshotKind::Daily.as_str() } else { CONTROL_PLANE };
    match manifest.archives.iter().find(|a| a.path == rel) {
        Some(e) => ctx.record_archive(&snap.key(&rel), kind, snap.id(), e),
        None => Ok(()),
    }
}

fn entry_of(rel: &str, tenant: Option<&str>, s: &archive::ArchiveSummary) -> ArchiveEntry {
    ArchiveEntry {
        path: rel.to_string(),
        tenant: tenant.map(str::to_string),
        sha256: s.sha256.clone(),
        size: s.size,
        files: s.files,
        file_list: layout::file_list_of(rel),
        file_list_sha256: s.file_list_sha256.clone(),
        created: None,
        database: None,
        mounts: Vec::new(),
        sqlite: Vec::new(),
    }
}

/// An earlier day's dir and its manifest.
type Previous = (PathBuf, Manifest);

/// The complete daily snapshots among the 7 days before `today` that have a directory, newest
/// first, and what was wrong with each such day whose manifest could not be read (skipped: one
/// bad day never stops today's backups).
fn previous_manifests(backup_root: &Path, today: &SnapshotId) -> Result<(Vec<Previous>, Vec<String>)> {
    let walk = layout::walk(backup_root)?;
    let mut days: Vec<layout::SnapshotDir> = walk
        .complete
        .into_iter()
        .chain(walk.incomplete)
        .filter(|s| s.id.kind() == SnapshotKind::Daily && s.id < *today)
        .collect();
    days.sort_unstable_by(|a, b| b.id.cmp(&a.id));
    let (mut out, mut skipped) = (Vec::new(), Vec::new());
    // The 7 newest days, complete or not: only a complete one is reused from.
    for d in days.into_iter().take(7) {
        match Manifest::read(&d.dir) {
            Ok(Some(m)) => out.push((d.dir, m)),
            Ok(None) => {}
            Err(e) => skipped.push(format!(
                "{}: skipped, nothing is reused from it: {e}; run `slipway verify` and restore that day from the remote \
                 or remove it",
                d.id
            )),
        }
    }
    Ok((out, skipped))
}

/// Bring a quiesced tenant back (unpause, or start after a stop), retrying with a backoff; if
/// the engine still refuses, [`Error::Frozen`]: the job exits 4, its run stays unresolved, and
/// `recover` unpauses the container from the journal later.
async fn resume(engine: &Engine, container: &str, hold: Option<&str>) -> Result<()> {
    const ATTEMPTS: u32 = 4;
    let Some(hold) = hold else { return Ok(()) };
    let mut why = String::new();
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
        }
        let st = match engine.state(container).await {
            Ok(st) => st,
            Err(e) => {
                why = e.to_string();
                continue;
            }
        };
        let (held, call) = match hold {
            "pause" => (st.paused, "unpause"),
            _ => (!st.running, "start"),
        };
        if !held {
            return Ok(());
        }
        let r = if crate::context::test_refuses(call) {
            Err(Error::Other(format!("the engine refused to {call} (test)")))
        } else if call == "unpause" {
            engine.unpause(container).await
        } else {
            engine.start(container).await
        };
        match r {
            Ok(()) => return Ok(()),
            Err(e) => why = e.to_string(),
        }
    }
    let state = if hold == "pause" { "paused" } else { "stopped" };
    Err(Error::Frozen { container: container.to_string(), state, attempts: ATTEMPTS, why })
}

/// How a tenant's archive was made, as far as holding it still goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Staging {
    /// From the staging copy: brought up to date while the tenant ran, paused for the last
    /// delta only, archived with the tenant running again.
    Staged,
    /// `[snapshot] staging = false`: paused while its tree was read.
    Off,
    /// Too little free space for the staging copy: paused while its tree was read (see `note`).
    ShortOfSpace,
    /// Not paused at all (`quiesce = "none"`, or the container was not running): read directly.
    NotHeld,
}

/// What [`snapshot_tenant`] did.
struct Taken {
    entry: ArchiveEntry,
    /// Bytes of every archive of it (a stack tenant's parts together).
    size: u64,
    reused: bool,
    bytes_in: u64,
    /// How long the tenant was paused or stopped.
    pause: Duration,
    staging: Staging,
    /// What the paused pass brought into the staging copy.
    delta: Option<mirror::MirrorReport>,
    note: Option<String>,
    /// The pass made while the tenant ran, with the files it compared with the source.
    checked: Option<mirror::MirrorReport>,
}

/// Reuse the previous archive when `src` is still exactly what its file list recorded, else
/// archive `src` afresh into `dest`; true when reused.
fn archive_or_reuse(
    src: &Path,
    dest: &Path,
    prev: Option<&(PathBuf, ArchiveEntry)>,
) -> Result<(archive::ArchiveSummary, bool)> {
    if let Some((prev_dir, e)) = prev {
        let list_path = prev_dir.join(&e.file_list);
        // An unreadable list or a walk that fails here: archive afresh (which reports it).
        if archive::tree_unchanged(src, &list_path).unwrap_or(false) {
            archive::reuse(&prev_dir.join(&e.path), dest)?;
            let s = archive::ArchiveSummary {
                sha256: e.sha256.clone(),
                size: e.size,
                files: e.files,
                bytes_in: 0,
                file_list_sha256: e.file_list_sha256.clone(),
            };
            return Ok((s, true));
        }
    }
    Ok((archive::create(src, dest)?, false))
}

/// Pause or stop a tenant for a snapshot; if that fails, bring it back before returning the
/// error (a call that failed or timed out may still have paused it).
async fn quiesce(engine: &Engine, app: &App, container: &str, hold: Option<&str>) -> Result<()> {
    let quiesced = match hold {
        Some("pause") => engine.pause(container).await,
        Some("stop") => engine.stop(container, app.stop_timeout_s).await,
        _ => Ok(()),
    };
    if let Err(e) = quiesced {
        resume(engine, container, hold).await?;
        return Err(e);
    }
    Ok(())
}

/// What the staging copy and the archive must leave free on the backup filesystem — often the
/// tenants' own (the backup root beside the data dirs): 5% of its size, at most 1 GiB, so that a
/// snapshot never fills the disk the tenants write to.
const STAGING_RESERVE_FRACTION: u64 = 20;
/// The cap of [`STAGING_RESERVE_FRACTION`]'s reserve.
const STAGING_RESERVE_MAX: u64 = 1 << 30;

/// The free space the staging copy must leave on a filesystem of `total` bytes.
fn staging_reserve(total: u64) -> u64 {
    (total / STAGING_RESERVE_FRACTION).min(STAGING_RESERVE_MAX)
}

/// Whether the backup disk can take the staging copy of `data_dir` (what it lacks of it) and
/// then the archive (at most the data's size), and still keep its reserve
/// ([`staging_reserve`]) free: `Err(why)` when it cannot.
fn staging_fits(data_dir: &Path, stage: &Path, backup_root: &Path) -> std::result::Result<(), String> {
    let data = archive::tree_bytes(data_dir).map_err(|e| format!("could not size the data dir: {e}"))?;
    let staged = archive::tree_bytes(stage).unwrap_or(0);
    let need = data.saturating_sub(staged).saturating_add(data);
    let free = crate::fsutil::free_bytes(backup_root).map_err(|e| format!("{}: {e}", backup_root.display()))?;
    let total = crate::fsutil::total_bytes(backup_root).map_err(|e| format!("{}: {e}", backup_root.display()))?;
    let reserve = staging_reserve(total);
    if free < need.saturating_add(reserve) {
        return Err(format!(
            "{} has {free} bytes free, short of the {need} the staging copy ({} of {data} bytes to copy) and the \
             archive need plus the {reserve} bytes kept free (5% of the filesystem, at most 1 GiB); paused while \
             archiving instead",
            backup_root.display(),
            data.saturating_sub(staged)
        ));
    }
    Ok(())
}

/// A previous archive, if it is still exactly what its manifest recorded: its file list and
/// its bytes are re-hashed now, before the tenant is paused, so a damaged or missing archive is
/// never linked into today (a fresh archive is made instead).
async fn intact_previous(tenant: &str, (dir, e): (PathBuf, ArchiveEntry)) -> Option<(PathBuf, ArchiveEntry)> {
    let (list, arch) = (dir.join(&e.file_list), dir.join(&e.path));
    let (fl, es) = (e.file_list_sha256.clone(), (e.sha256.clone(), e.size));
    let intact = crate::blocking::run("checking the previous archive", move || {
        archive::sha256_file(&list).is_ok_and(|(h, _)| h == fl)
            && archive::sha256_file(&arch).is_ok_and(|(h, n)| (h, n) == es)
    })
    .await
    .unwrap_or(false);
    if !intact {
        tracing::warn!(
            "tenant {tenant}: the previous archive {} does not match its manifest; archiving afresh",
            dir.join(&e.path).display()
        );
    }
    intact.then_some((dir, e))
}

/// Archive one tenant under its app's quiesce mode — never held when its SQLite files were
/// copied online (`copies`): those are archived in their live files' place.
#[allow(clippy::too_many_arguments)]
async fn snapshot_tenant(
    ctx: &Ctx,
    engine: &Engine,
    app: &App,
    tenant: &TenantId,
    container: &str,
    dest: &Path,
    prev: Option<(PathBuf, ArchiveEntry)>,
    copies: Option<&sqlite::Copies>,
) -> Result<Taken> {
    let data_dir = app.data_dir_of(tenant);
    if !data_dir.is_dir() {
        return Err(Error::Usage(format!("tenant {tenant}: data dir {} does not exist", data_dir.display())));
    }
    let running = engine.state(container).await.map(|s| s.running).unwrap_or(false);
    let hold = match app.quiesce {
        _ if copies.is_some() => None,
        Quiesce::Pause if running => Some("pause"),
        Quiesce::Stop if running => Some("stop"),
        _ => None,
    };
    // A previous archive is reused only if it is still exactly what its manifest recorded: its
    // file list and its bytes are re-hashed now, before the tenant is paused, so a damaged or
    // missing archive is never linked into today (a fresh archive is made instead).
    let prev = match prev {
        // Its SQLite files are copies made now: never the previous archive's.
        Some(_) if copies.is_some() => None,
        Some(p) => intact_previous(tenant.as_str(), p).await,
        None => None,
    };
    let stage = layout::staging_dir(&ctx.cfg.backup_root, tenant.as_str());
    let (staging, note) = match hold {
        None => (Staging::NotHeld, None),
        Some(_) if !ctx.cfg.snapshot.staging => (Staging::Off, None),
        Some(_) => {
            let (d, s, root) = (data_dir.clone(), stage.clone(), ctx.cfg.backup_root.clone());
            match crate::blocking::run("sizing the staging copy", move || staging_fits(&d, &s, &root)).await? {
                Ok(()) => (Staging::Staged, None),
                Err(why) => {
                    tracing::warn!("tenant {tenant}: {why}");
                    (Staging::ShortOfSpace, Some(why))
                }
            }
        }
    };
    if let (Staging::Staged, Some(hold)) = (staging, hold) {
        return snapshot_staged(ctx, engine, app, tenant, container, hold, (&data_dir, &stage), dest, prev).await;
    }
    if hold.is_some() && ctx.cancel.is_cancelled() {
        return Err(Error::Interrupted(format!("tenant {tenant} not paused")));
    }
    let held = HeldContainer { container: container.to_string(), hold: hold.unwrap_or("none").to_string() };
    let step = ctx.begin(Some(tenant.as_str()), SnapshotStep::Archive, &held)?;
    let paused_at = Instant::now();
    if let Err(e) = quiesce(engine, app, container, hold).await {
        ctx.end(step, "failed", None::<&()>)?;
        return Err(e);
    }
    crash_point("snapshot-quiesced");
    let (src, d, subs) = (data_dir.clone(), dest.to_path_buf(), copies.and_then(|c| c.subs.first().cloned()));
    let work = crate::blocking::run("archive", move || match subs {
        Some(subs) => Ok((archive::create_substituted(&src, &d, &subs)?, false)),
        None => archive_or_reuse(&src, &d, prev.as_ref()),
    })
    .await;
    // Unquiesce right away, whatever happened.
    let resumed = resume(engine, container, hold).await;
    let pause = if hold.is_some() { paused_at.elapsed() } else { Duration::ZERO };
    let result = work.and_then(|r| r);
    ctx.end(step, if result.is_ok() && resumed.is_ok() { "ok" } else { "failed" }, None::<&()>)?;
    resumed?;
    let (s, reused) = result?;
    let rel = layout::tenant_archive(SnapshotKind::Daily, tenant.as_str());
    let entry = entry_of(&rel, Some(tenant.as_str()), &s);
    Ok(Taken {
        size: entry.size,
        entry,
        reused,
        bytes_in: s.bytes_in,
        pause,
        staging,
        delta: None,
        note,
        checked: None,
    })
}

/// Bring the staging copy of `data_dir` up to date (reflinked where the filesystem can).
async fn mirror_to(data_dir: &Path, stage: &Path, check: mirror::CopyCheck) -> Result<mirror::MirrorReport> {
    let (src, dst) = (data_dir.to_path_buf(), stage.to_path_buf());
    if let Some(parent) = dst.parent() {
        create_private_dir(parent).map_err(|e| Error::io(parent, e))?;
    }
    Ok(crate::blocking::run("staging copy", move || mirror::mirror_checked(&src, &dst, check)).await??)
}

/// The staged snapshot of a held tenant: the copy is brought up to date while the tenant runs,
/// the tenant is paused (or stopped) for the last delta only — journaled, so `recover` brings
/// it back after a crash — and the archive is made from the copy (or yesterday's is reused when
/// the copy did not change since it was archived) with the tenant running again.
#[allow(clippy::too_many_arguments)]
async fn snapshot_staged(
    ctx: &Ctx,
    engine: &Engine,
    app: &App,
    tenant: &TenantId,
    container: &str,
    hold: &str,
    (data_dir, stage): (&Path, &Path),
    dest: &Path,
    prev: Option<(PathBuf, ArchiveEntry)>,
) -> Result<Taken> {
    let t = Some(tenant.as_str());
    let running = HeldContainer { container: container.to_string(), hold: "none".into() };
    let step = ctx.begin(t, SnapshotStep::Stage, &running)?;
    let check = mirror::CopyCheck {
        period: ctx.cfg.snapshot.check_copy_days,
        turn: jiff::Timestamp::now().as_second().max(0) as u64 / 86_400,
        budget: ctx.cfg.snapshot.check_copy_mib.saturating_mul(1 << 20),
    };
    let pre = mirror_to(data_dir, stage, check).await;
    // No detail at the end: the journaled hold stays what `recover` reads.
    ctx.end(step, if pre.is_ok() { "ok" } else { "failed" }, None::<&()>)?;
    let pre = pre?;
    // The copy differed from a source that had not changed: damaged behind the mirror's back
    // (recopied now, so this archive is right; the archives before it may not be).
    let note = (!pre.mismatched.is_empty()).then(|| {
        let why = format!(
            "the staging copy differed from the unchanged source in {} file(s), copied again: {}",
            pre.mismatched.len(),
            pre.mismatched.join(", ")
        );
        tracing::warn!("tenant {tenant}: {why}");
        why
    });
    crash_point("snapshot-staged");
    // A signal while the copy was made: the tenant is not paused at all.
    if ctx.cancel.is_cancelled() {
        return Err(Error::Interrupted(format!("tenant {tenant} not paused (its staging copy is made)")));
    }

    let held = HeldContainer { container: container.to_string(), hold: hold.to_string() };
    let step = ctx.begin(t, SnapshotStep::StageDelta, &held)?;
    let paused_at = Instant::now();
    if let Err(e) = quiesce(engine, app, container, Some(hold)).await {
        ctx.end(step, "failed", None::<&()>)?;
        return Err(e);
    }
    crash_point("snapshot-quiesced");
    let delta = mirror_to(data_dir, stage, mirror::CopyCheck::NONE).await;
    crate::context::test_pause("snapshot-delta");
    // Unquiesce right away, whatever happened.
    let resumed = resume(engine, container, Some(hold)).await;
    let pause = paused_at.elapsed();
    ctx.end(step, if delta.is_ok() && resumed.is_ok() { "ok" } else { "failed" }, None::<&()>)?;
    resumed?;
    let delta = delta?;
    crash_point("snapshot-resumed");
    // A signal during the pause: the tenant runs again; the archive of the staging copy (the
    // long part) is left to the next run, which finds the copy up to date but for what changed.
    if ctx.cancel.is_cancelled() {
        return Err(Error::Interrupted(format!("tenant {tenant}'s archive (it was paused and runs again)")));
    }

    // The copy is the tree as it was at the pause; the tenant runs on meanwhile.
    let step = ctx.begin(t, SnapshotStep::Archive, &running)?;
    let (src, d) = (stage.to_path_buf(), dest.to_path_buf());
    let work = crate::blocking::run("archive", move || archive_or_reuse(&src, &d, prev.as_ref())).await;
    let result = work.and_then(|r| r);
    ctx.end(step, if result.is_ok() { "ok" } else { "failed" }, None::<&()>)?;
    let (s, reused) = result?;
    let rel = layout::tenant_archive(SnapshotKind::Daily, tenant.as_str());
    let entry = entry_of(&rel, Some(tenant.as_str()), &s);
    Ok(Taken {
        size: entry.size,
        entry,
        reused,
        bytes_in: s.bytes_in,
        pause,
        staging: Staging::Staged,
        delta: Some(delta),
        note,
        checked: Some(pre),
    })
}

/// Remove the staging copy (and its mirror index) of every tenant not in `known` — the tenants
/// of every app of fleet.toml with a container now — and say so. A tenant that comes back only
/// costs a full copy at its next snapshot: a staging copy is never the only copy of anything.
fn remove_stale_staging(backup_root: &Path, known: &std::collections::BTreeSet<String>, dry_run: bool) -> Vec<String> {
    let root = layout::staging_root(backup_root);
    let Ok(rd) = std::fs::read_dir(&root) else { return Vec::new() };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // Mirror indexes are hidden files beside the copies; they go with their copy.
        if name.starts_with('.') || known.contains(&name) {
            continue;
        }
        let path = e.path();
        if dry_run {
            out.push(format!("would remove {} (the staging copy of tenant {name}, in no app now)", path.display()));
            continue;
        }
        let _ = std::fs::remove_file(layout::mirror_index(&path));
        out.push(match crate::adapters::confined::remove_tree(&path) {
            Ok(_) => format!("removed {} (the staging copy of tenant {name}, in no app now)", path.display()),
            Err(e) => {
                format!("could not remove {} (the staging copy of tenant {name}, in no app now): {e}", path.display())
            }
        });
    }
    out
}

/// Stage the control-plane dirs (SQLite databases through the online backup API, checked with
/// `PRAGMA integrity_check`; other files copied) and archive the staging dir.
fn snapshot_control_plane(dirs: &[PathBuf], day_dir: &Path, dest: &Path) -> Result<archive::ArchiveSummary> {
    let staging = tempfile::Builder::new()
        .prefix(".control-plane-staging-")
        .tempdir_in(day_dir)
        .map_err(|e| Error::io(day_dir, e))?;
    for d in dirs {
        let name = d.to_string_lossy().trim_start_matches('/').replace('/', "_");
        stage_dir(d, &staging.path().join(name))?;
    }
    Ok(archive::create(staging.path(), dest)?)
}

fn is_sqlite(p: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 16];
    std::fs::File::open(p).and_then(|mut f| f.read_exact(&mut head)).is_ok() && &head == b"SQLite format 3\0"
}

fn stage_dir(src: &Path, dst: &Path) -> Result<()> {
    create_private_dir(dst).map_err(|e| Error::io(dst, e))?;
    let rd = std::fs::read_dir(src).map_err(|e| Error::io(src, e))?;
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(src, e))?;
        let p = entry.path();
        let to = dst.join(entry.file_name());
        let ft = entry.file_type().map_err(|e| Error::io(&p, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if ft.is_dir() {
            stage_dir(&p, &to)?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&p).map_err(|e| Error::io(&p, e))?;
            std::os::unix::fs::symlink(target, &to).map_err(|e| Error::io(&to, e))?;
        } else if name.ends_with("-wal") || name.ends_with("-shm") || name.ends_with("-journal") {
            // Part of a live SQLite database: its committed content is in the backup copy.
            continue;
        } else if ft.is_file() && is_sqlite(&p) {
            backup_sqlite(&p, &to)?;
        } else if ft.is_file() {
            std::fs::copy(&p, &to).map_err(|e| Error::io(&p, e))?;
        }
    }
    Ok(())
}

/// Copy a live SQLite database consistently with the online backup API, then check it.
fn backup_sqlite(src: &Path, dst: &Path) -> Result<()> {
    let e = |what: &str, err: rusqlite::Error| Error::Backup(format!("{}: {what}: {err}", src.display()));
    let from = rusqlite::Connection::open_with_flags(src, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|x| e("cannot open", x))?;
    from.busy_timeout(Duration::from_secs(30)).map_err(|x| e("busy timeout", x))?;
    let mut to = rusqlite::Connection::open(dst).map_err(|x| e("cannot create the copy", x))?;
    {
        let backup = rusqlite::backup::Backup::new(&from, &mut to).map_err(|x| e("backup", x))?;
        // All pages in one step: one read transaction, so the copy is one consistent state.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match backup.step(-1).map_err(|x| e("backup step", x))? {
                rusqlite::backup::StepResult::Done => break,
                _ if Instant::now() > deadline => {
                    return Err(Error::Backup(format!("{}: database stayed locked for 60 s", src.display())))
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
    let check: String =
        to.query_row("PRAGMA integrity_check", [], |r| r.get(0)).map_err(|x| e("integrity_check", x))?;
    if check != "ok" {
        return Err(Error::Backup(format!("{}: the backup copy failed integrity_check: {check}", src.display())));
    }
    // The copy is archived as one file, not a WAL pair.
    to.pragma_update(None, "journal_mode", "DELETE").map_err(|x| e("journal mode", x))?;
    Ok(())
}

impl fmt::Display for SnapshotReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "snapshot {} -> {}{}", self.day, self.dir.display(), if self.dry_run { " (dry run)" } else { "" })?;
        for a in &self.archives {
            let who = a.tenant.as_deref().unwrap_or(CONTROL_PLANE);
            let what = match a.outcome {
                ArchiveOutcome::Archived => {
                    format!("archived {} bytes in {} ms{}", a.size, a.duration_ms, a.held())
                }
                ArchiveOutcome::Reused => format!("unchanged, previous archive reused{}", a.held()),
                ArchiveOutcome::AlreadyDone => "already complete today".into(),
                ArchiveOutcome::Planned => "would archive".into(),
                ArchiveOutcome::Failed => format!("FAILED: {}", a.detail.as_deref().unwrap_or("")),
                ArchiveOutcome::Frozen => format!("FAILED, TENANT LEFT FROZEN: {}", a.detail.as_deref().unwrap_or("")),
                ArchiveOutcome::Interrupted => "not taken: interrupted by a signal (running, not paused)".into(),
            };
            writeln!(f, "  {who:<24} {what}")?;
        }
        for why in &self.skipped {
            writeln!(f, "  WARNING {why}")?;
        }
        for line in &self.staging_removed {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}
