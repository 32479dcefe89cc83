//! `prune`: apply the retention policy ([`crate::retention`], restic `forget` semantics) per
//! tenant to daily snapshots, and `keep_rollout_runs` to rollout runs — locally with
//! `[retention]` and, when a remote is configured, on the remote with `[remote.retention]`
//! (default: the same policy). Never deleted: the newest complete snapshot of each tenant; the
//! snapshots of a halted rollout not yet resolved; incomplete directories (being written, or
//! left by a crash); and, when a remote is configured, any local archive not verified off-site:
//! its day's remote `MANIFEST.json` (fetched, sha256-checked) must list it with the same sha256,
//! its upload must have been verified on this remote (endpoint, bucket and prefix), and the
//! listing must show it and its file list with the sizes uploaded — unless this prune deleted
//! it from this remote before (the remote's own retention; then only the local policy decides,
//! and `sync` does not upload it again). A day's manifest is rewritten before archives it no longer lists are
//! deleted, so a manifest never names a missing archive. `--dry-run` lists what would go and,
//! for each survivor, which rule kept it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::Path;

use jiff::Timestamp;
use serde::Serialize;

use crate::adapters::confined;
use crate::adapters::remote::Remote;
use crate::config::Retention;
use crate::context::Ctx;
use crate::error::{Error, ExitKind, Result};
use crate::layout::{self, SnapshotId, SnapshotKind, CONTROL_PLANE};
use crate::manifest::{ArchiveEntry, Manifest};
use crate::offsite;
use crate::retention::{self, Policy, SnapshotRef};

/// Options of `prune`.
#[derive(Debug, Clone, Default)]
pub struct PruneOptions {
    /// List what would go; delete nothing.
    pub dry_run: bool,
}

/// One snapshot's fate.
#[derive(Debug, Clone, Serialize)]
pub struct PruneItem {
    /// local or remote.
    pub location: String,
    /// daily or rollout.
    pub kind: SnapshotKind,
    /// The day or run id.
    pub snapshot: String,
    /// The tenant (daily), or none for a whole rollout run.
    pub tenant: Option<String>,
    /// Kept?
    pub keep: bool,
    /// Which rules kept it.
    pub reasons: Vec<String>,
}

/// The result of `slipway prune`.
#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// Every snapshot considered.
    pub items: Vec<PruneItem>,
    /// The data restores replaced (`replaced/<run_id>/`), kept like rollout runs: the newest
    /// `keep_rollout_runs`.
    pub replaced: Vec<ReplacedItem>,
    /// Local snapshots whose manifest could not be read: left alone.
    pub unreadable: Vec<String>,
    /// Remote snapshots whose manifest could not be read (malformed, changed after upload,
    /// naming paths outside its dir), each with why: left alone on the remote, their local
    /// copies kept; the job fails naming them once the rest is pruned.
    pub remote_unreadable: Vec<String>,
    /// Files (local) and objects (remote) deleted.
    pub deleted: usize,
}

/// The fate of the data one restore run replaced.
#[derive(Debug, Clone, Serialize)]
pub struct ReplacedItem {
    /// The restore run.
    pub run: String,
    /// Its dir, `<backup_root>/replaced/<run_id>`.
    pub dir: std::path::PathBuf,
    /// The tenants whose data it keeps.
    pub tenants: Vec<String>,
    /// Kept?
    pub keep: bool,
}

/// Keep the newest `keep_runs` restore runs' replaced data, like rollout runs.
fn plan_replaced(found: Vec<layout::ReplacedDir>, keep_runs: u32) -> Vec<ReplacedItem> {
    let n = found.len();
    found
        .into_iter()
        .enumerate()
        .map(|(i, r)| ReplacedItem {
            run: r.run.to_string(),
            dir: r.run_dir,
            tenants: r.tenants,
            keep: n - i <= keep_runs as usize,
        })
        .collect()
}

impl PruneReport {
    /// Failure when a remote manifest could not be read (a person must look at it), else
    /// success once the plan is applied (errors end the job before).
    pub fn exit_kind(&self) -> ExitKind {
        exit_kind(&self.remote_unreadable)
    }
}

/// A prune's exit: failure when any remote manifest could not be read.
fn exit_kind(remote_unreadable: &[String]) -> ExitKind {
    if remote_unreadable.is_empty() {
        ExitKind::Success
    } else {
        ExitKind::Failure
    }
}

/// A snapshot set: daily manifests by day and rollout manifests by run id.
#[derive(Default)]
struct Inventory {
    daily: BTreeMap<SnapshotId, Manifest>,
    rollout: BTreeMap<SnapshotId, Manifest>,
}

impl Inventory {
    /// File a complete snapshot's manifest under its kind.
    fn insert(&mut self, snap: SnapshotId, m: Manifest) {
        match snap.kind() {
            SnapshotKind::Daily => self.daily.insert(snap, m),
            SnapshotKind::Rollout => self.rollout.insert(snap, m),
        };
    }
}

/// The name a manifest entry goes by in the plan: its tenant, or the control plane.
fn owner(a: &ArchiveEntry) -> &str {
    a.tenant.as_deref().unwrap_or(CONTROL_PLANE)
}

/// Decide per tenant (daily) and per run (rollout).
fn plan(
    location: &str,
    inv: &Inventory,
    policy: &Policy,
    keep_runs: u32,
    halted: &HashSet<String>,
    unsynced: &dyn Fn(&str) -> Option<String>,
) -> Vec<PruneItem> {
    let mut items = Vec::new();
    let mut by_tenant: BTreeMap<String, Vec<SnapshotRef>> = BTreeMap::new();
    let days: HashMap<&str, &SnapshotId> = inv.daily.keys().map(|s| (s.id(), s)).collect();
    for (day, m) in &inv.daily {
        let Some(t) = day.time() else { continue };
        for a in &m.archives {
            by_tenant.entry(owner(a).to_string()).or_default().push(SnapshotRef { id: day.id().to_string(), time: t });
        }
    }
    let now = Timestamp::now();
    for (tenant, list) in by_tenant {
        for (i, d) in retention::apply(policy, &list, now).into_iter().enumerate() {
            let mut reasons = d.reasons;
            if i == 0 && reasons.is_empty() {
                reasons.push("newest".into());
            }
            let day = days[d.id.as_str()];
            let rel = inv.daily[day]
                .archives
                .iter()
                .find(|a| owner(a) == tenant)
                .map(|a| day.key(&a.path))
                .unwrap_or_default();
            if let Some(why) = unsynced(&rel) {
                reasons.push(why);
            }
            items.push(PruneItem {
                location: location.into(),
                kind: SnapshotKind::Daily,
                snapshot: d.id,
                tenant: Some(tenant.clone()),
                keep: !reasons.is_empty(),
                reasons,
            });
        }
    }
    for (i, (run, m)) in inv.rollout.iter().rev().enumerate() {
        let mut reasons = Vec::new();
        if (i as u32) < keep_runs {
            reasons.push("rollout_runs".to_string());
        }
        if halted.contains(run.id()) {
            reasons.push("halted rollout not yet resolved".into());
        }
        if let Some(why) = m.archives.iter().find_map(|a| unsynced(&run.key(&a.path))) {
            reasons.push(why);
        }
        if run.time().is_none() {
            reasons.push("unrecognised run id".into());
        }
        items.push(PruneItem {
            location: location.into(),
            kind: SnapshotKind::Rollout,
            snapshot: run.id().to_string(),
            tenant: None,
            keep: !reasons.is_empty(),
            reasons,
        });
    }
    items
}

/// The local snapshots, and what was wrong with each whose manifest could not be read (left
/// alone: prune never deletes what it cannot read; `verify` fails naming it).
fn local_inventory(root: &Path) -> Result<(Inventory, Vec<String>)> {
    let mut inv = Inventory::default();
    let mut unreadable = Vec::new();
    // Only complete snapshots: an incomplete one (being written, or crashed) is never touched.
    for snap in layout::complete(root)? {
        match Manifest::read(&snap.dir) {
            Ok(Some(m)) => inv.insert(snap.id, m),
            Ok(None) => {}
            Err(e) => unreadable.push(format!("{}: kept, not pruned: {e}", snap.id)),
        }
    }
    Ok((inv, unreadable))
}

/// What the remote holds: its listing, the snapshots whose manifest could be read, and each
/// one whose manifest could not (with why). One bad manifest never stops the prune: that
/// snapshot is left alone (never delete what cannot be read) and the rest is pruned. Wrong
/// credentials, or an encrypted manifest with no identity to read it, still end the job.
struct RemoteView {
    sizes: HashMap<String, u64>,
    inv: Inventory,
    unreadable: BTreeMap<SnapshotId, String>,
}

async fn remote_inventory(remote: &Remote, cfg: &crate::config::HostConfig, scratch: &Path) -> Result<RemoteView> {
    let listing = offsite::list(remote).await?;
    let mut view = RemoteView { sizes: listing.sizes, inv: Inventory::default(), unreadable: BTreeMap::new() };
    for snap in listing.snapshots {
        match offsite::read_manifest(remote, cfg, &snap, &snap.dir(scratch)).await {
            Ok(Some(m)) => view.inv.insert(snap, m),
            Ok(None) => {}
            Err(e @ (Error::RemoteAuth { .. } | Error::Config(_))) => return Err(e),
            Err(e) => {
                let why = format!("{}: kept, not pruned, and its local copy kept: {e}", snap.manifest_key());
                view.unreadable.insert(snap, why);
            }
        }
    }
    Ok(view)
}

/// Run `prune`.
pub async fn prune(ctx: &Ctx, opts: &PruneOptions) -> Result<PruneReport> {
    let policy = |r: &Retention, key: &str| Policy::from_config(r).map_err(|e| Error::Config(format!("[{key}]: {e}")));
    let local_policy = policy(&ctx.cfg.retention, "retention")?;
    let halted: HashSet<String> = ctx.store.unresolved_halts()?.into_iter().map(|r| r.id).collect();
    let remote_cfg = ctx.cfg.remote.clone();
    let remote_policy = match &remote_cfg {
        Some(r) => Some(policy(r.retention.as_ref().unwrap_or(&ctx.cfg.retention), "remote.retention")?),
        None => None,
    };
    let (local, unreadable) = local_inventory(&ctx.cfg.backup_root)?;
    for why in &unreadable {
        tracing::warn!("{why}");
    }
    let keep_runs = ctx.cfg.retention.keep_rollout_runs.unwrap_or(5);
    let remote = match &remote_cfg {
        Some(r) => Some(Remote::connect(r).await?),
        None => None,
    };
    // What was verified, and retired, on this remote: records of another bucket or prefix
    // say nothing of this one.
    let remote_id = remote.as_ref().map(|r| r.id().to_string()).unwrap_or_default();
    if remote.is_some() {
        ctx.store.adopt_unscoped_remote_records(&remote_id)?;
    }
    let verified: HashMap<String, slipway_state::RemoteObject> =
        if remote.is_some() { ctx.store.remote_objects(&remote_id)? } else { HashMap::new() };
    let scratch =
        tempfile::Builder::new().prefix("slipway-prune-").tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let view = match &remote {
        Some(r) => Some(remote_inventory(r, &ctx.cfg, scratch.path()).await?),
        None => None,
    };
    let remote_unreadable: Vec<String> = view.iter().flat_map(|v| v.unreadable.values().cloned()).collect();
    for why in &remote_unreadable {
        tracing::warn!("{why}");
    }
    let listed: HashMap<String, u64> = view.as_ref().map(|v| v.sizes.clone()).unwrap_or_default();
    let unreadable_remote: HashSet<String> =
        view.iter().flat_map(|v| v.unreadable.keys().map(SnapshotId::rel)).collect();
    let remote_inv = view.map(|v| v.inv);
    let remote_keep_runs =
        remote_cfg.as_ref().and_then(|r| r.retention.as_ref()).and_then(|r| r.keep_rollout_runs).unwrap_or(keep_runs);
    let sha_of: HashMap<String, String> = local
        .daily
        .iter()
        .chain(&local.rollout)
        .flat_map(|(s, m)| m.archives.iter().map(move |a| (s.key(&a.path), a.sha256.clone())))
        .collect();
    // A local archive counts as off-site when the remote's own, verified manifest lists it with
    // the same sha256 and its upload was verified; or when the remote's retention deleted it
    // there (recorded) and (over the remote's snapshots and the local ones) forgets it anyway.
    let on_remote: HashSet<String> = remote_inv
        .iter()
        .flat_map(|inv| inv.daily.iter().chain(&inv.rollout))
        .flat_map(|(s, m)| m.archives.iter().map(move |a| (s.key(&a.path), a.sha256.clone())))
        .filter(|(k, sha)| sha_of.get(k) == Some(sha))
        .map(|(k, _)| k)
        .collect();
    let retired_here: HashMap<String, String> = ctx
        .store
        .snapshots()?
        .into_iter()
        .filter(|r| r.remote_retired_at.is_some() && r.remote_verified_to.as_deref() == Some(remote_id.as_str()))
        .map(|r| (r.path, r.sha256))
        .collect();
    let remote_forgets: HashSet<String> = match (&remote_inv, &remote_policy) {
        (Some(inv), Some(p)) => {
            let mut union = Inventory::default();
            for (snap, m) in inv.daily.iter().chain(&inv.rollout).chain(local.daily.iter().chain(&local.rollout)) {
                let known = union.daily.contains_key(snap) || union.rollout.contains_key(snap);
                if !known {
                    union.insert(snap.clone(), m.clone());
                }
            }
            let forgotten = plan("remote", &union, p, remote_keep_runs, &halted, &|_| None);
            let gone = |kind: SnapshotKind, id: &str, who: Option<&str>| {
                forgotten.iter().any(|i| i.kind == kind && i.snapshot == id && i.tenant.as_deref() == who && !i.keep)
            };
            local
                .daily
                .iter()
                .flat_map(|(s, m)| {
                    m.archives.iter().filter(|a| gone(s.kind(), s.id(), Some(owner(a)))).map(|a| s.key(&a.path))
                })
                .chain(
                    local
                        .rollout
                        .iter()
                        .filter(|(s, _)| gone(s.kind(), s.id(), None))
                        .flat_map(|(s, m)| m.archives.iter().map(|a| s.key(&a.path))),
                )
                .collect()
        }
        _ => HashSet::new(),
    };
    // The local copy of the file list beside each archive, by archive key.
    let list_of: HashMap<String, String> = local
        .daily
        .iter()
        .chain(&local.rollout)
        .flat_map(|(s, m)| m.archives.iter().map(move |a| (s.key(&a.path), s.key(&a.file_list))))
        .collect();
    // Why a local archive is not (yet) off-site, or None when it is. An archive a remote
    // manifest lists must also be there as an object, as large as its verified upload, and
    // so must its file list: a lifecycle rule (or a person) may have deleted objects since
    // the sync, and the manifest alone would not say so. A listing is enough to tell.
    let not_offsite = |rel: &str| -> Option<String> {
        remote_cfg.as_ref()?;
        let synced = "not yet synced".to_string();
        let Some(sha) = sha_of.get(rel) else { return Some(synced) };
        if unreadable_remote.iter().any(|snap| rel.starts_with(&format!("{snap}/"))) {
            return Some("its remote manifest cannot be read".into());
        }
        if verified.get(rel).is_some_and(|v| v.sha256 == *sha) && on_remote.contains(rel) {
            let keys = [Some(rel), list_of.get(rel).map(String::as_str)];
            for key in keys {
                let Some(key) = key else { return Some(synced) };
                let Some(v) = verified.get(key) else { return Some(synced) };
                match listed.get(key) {
                    Some(&size) if size == v.object_size => {}
                    Some(&size) => {
                        return Some(format!(
                            "off-site copy damaged: {key} is {size} bytes on the remote, {} were uploaded",
                            v.object_size
                        ))
                    }
                    None => return Some(format!("off-site copy missing: {key} is not on the remote")),
                }
            }
            return None;
        }
        if retired_here.get(rel) == Some(sha) && remote_forgets.contains(rel) {
            return None;
        }
        Some(synced)
    };
    let mut items = plan("local", &local, &local_policy, keep_runs, &halted, &not_offsite);
    if let (Some(inv), Some(p)) = (&remote_inv, &remote_policy) {
        items.extend(plan("remote", inv, p, remote_keep_runs, &halted, &|_| None));
    }
    let replaced = plan_replaced(layout::replaced(&ctx.cfg.backup_root)?, keep_runs);
    let mut deleted = 0;
    if !opts.dry_run {
        let record = ctx.start_run("prune", None, None, None)?;
        deleted += apply_local(ctx, &local, &items)?;
        for r in replaced.iter().filter(|r| !r.keep) {
            confined::remove_tree(&r.dir).map_err(|e| Error::io(&r.dir, e))?;
            deleted += 1;
        }
        if let (Some(r), Some(inv)) = (&remote, &remote_inv) {
            deleted += apply_remote(ctx, r, inv, &items, scratch.path()).await?;
        }
        let gone = items.iter().filter(|i| !i.keep).count();
        let bad = remote_unreadable.len();
        let summary =
            format!("{gone} snapshot(s) pruned, {deleted} file(s) deleted, {bad} remote manifest(s) unreadable");
        record.finish(ctx, exit_kind(&remote_unreadable), &summary)?;
    }
    Ok(PruneReport { dry_run: opts.dry_run, items, replaced, unreadable, remote_unreadable, deleted })
}

/// Forgotten archives of one manifest: (archive path, file list path) of the tenants going.
fn going<'a>(m: &'a Manifest, snap: &SnapshotId, location: &str, items: &[PruneItem]) -> Vec<&'a ArchiveEntry> {
    m.archives
        .iter()
        .filter(|a| {
            items.iter().any(|i| {
                i.location == location
                    && i.kind == snap.kind()
                    && i.snapshot == snap.id()
                    && i.tenant.as_deref() == Some(owner(a))
                    && !i.keep
            })
        })
        .collect()
}

fn apply_local(ctx: &Ctx, inv: &Inventory, items: &[PruneItem]) -> Result<usize> {
    let root = &ctx.cfg.backup_root;
    let mut n = 0;
    let rm = |p: &Path| match std::fs::remove_file(p) {
        Ok(()) => Ok(1),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(Error::io(p, e)),
    };
    for (day, m) in &inv.daily {
        let gone = going(m, day, "local", items);
        if gone.is_empty() {
            continue;
        }
        let dir = day.dir(root);
        let mut kept = m.clone();
        kept.archives.retain(|a| !gone.iter().any(|g| g.path == a.path));
        if kept.archives.is_empty() {
            // Manifest first: the day turns incomplete before any archive goes.
            n += rm(&layout::manifest_path(&dir))?;
        } else {
            kept.write(&dir)?;
        }
        for a in gone {
            for rel in a.objects() {
                n += rm(&dir.join(rel))?;
            }
            if a.database.is_some() {
                // The dumps' own dir beside the archive, emptied just now.
                let _ = std::fs::remove_dir(dir.join(layout::dumps_dir_of(&a.path)));
            }
            ctx.store.forget_snapshot(&day.key(&a.path))?;
        }
        if kept.archives.is_empty() {
            confined::remove_tree(&dir).map_err(|e| Error::io(&dir, e))?;
        }
    }
    for (run, m) in &inv.rollout {
        if !items
            .iter()
            .any(|i| i.location == "local" && i.kind == SnapshotKind::Rollout && i.snapshot == run.id() && !i.keep)
        {
            continue;
        }
        let dir = run.dir(root);
        n += rm(&layout::manifest_path(&dir))?;
        for a in &m.archives {
            ctx.store.forget_snapshot(&run.key(&a.path))?;
        }
        confined::remove_tree(&dir).map_err(|e| Error::io(&dir, e))?;
        n += 1;
    }
    Ok(n)
}

async fn apply_remote(
    ctx: &Ctx,
    remote: &Remote,
    inv: &Inventory,
    items: &[PruneItem],
    scratch: &Path,
) -> Result<usize> {
    let mut n = 0;
    for (day, m) in &inv.daily {
        let gone = going(m, day, "remote", items);
        if gone.is_empty() {
            continue;
        }
        let mut kept = m.clone();
        kept.archives.retain(|a| !gone.iter().any(|g| g.path == a.path));
        let mkey = day.manifest_key();
        if kept.archives.is_empty() {
            remote.delete(std::slice::from_ref(&mkey)).await?;
            ctx.store.forget_remote_object(remote.id(), &mkey)?;
            offsite::forget_manifest(&ctx.cfg.state_dir, day);
        } else {
            let dir = day.dir(&scratch.join("rewrite"));
            crate::fsutil::create_private_dir(&dir).map_err(|e| Error::io(&dir, e))?;
            kept.write(&dir)?;
            let mp = layout::manifest_path(&dir);
            let (sha, size) = crate::adapters::archive::sha256_file(&mp)?;
            let stored = remote.upload(&mp, &mkey, &sha, size).await?;
            if stored.encryption.is_some() {
                offsite::keep_manifest(&ctx.cfg.state_dir, day, &mp)?;
            }
            ctx.store.record_remote_object(remote.id(), &mkey, &stored.record(&sha, size))?;
        }
        n += 1;
        for a in gone {
            let keys: Vec<String> = a.objects().map(|rel| day.key(rel)).collect();
            remote.delete(&keys).await?;
            for k in &keys {
                ctx.store.forget_remote_object(remote.id(), k)?;
            }
            // Deleted by this remote's retention: sync does not upload it here again.
            ctx.store.mark_remote_retired(&keys[0], remote.id())?;
            n += keys.len();
        }
    }
    for run in inv.rollout.keys() {
        if !items
            .iter()
            .any(|i| i.location == "remote" && i.kind == SnapshotKind::Rollout && i.snapshot == run.id() && !i.keep)
        {
            continue;
        }
        let mkey = run.manifest_key();
        remote.delete(std::slice::from_ref(&mkey)).await?;
        offsite::forget_manifest(&ctx.cfg.state_dir, run);
        let keys: Vec<String> = remote.list(&run.key_prefix()).await?.into_iter().map(|o| o.key).collect();
        remote.delete(&keys).await?;
        for k in keys.iter().chain(std::iter::once(&mkey)) {
            ctx.store.forget_remote_object(remote.id(), k)?;
            ctx.store.mark_remote_retired(k, remote.id())?;
        }
        n += keys.len() + 1;
    }
    Ok(n)
}

impl fmt::Display for PruneReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.dry_run { "would forget" } else { "forgot" };
        for i in &self.items {
            let who = i.tenant.as_deref().map_or(String::new(), |t| format!(" {t}"));
            if i.keep {
                writeln!(f, "  {:<6} keep   {} {}{who}  ({})", i.location, i.kind, i.snapshot, i.reasons.join(", "))?;
            } else {
                writeln!(f, "  {:<6} {verb} {} {}{who}", i.location, i.kind, i.snapshot)?;
            }
        }
        for r in &self.replaced {
            let what = if r.keep { "keep  " } else { verb };
            writeln!(f, "  local  {what} replaced {} ({})", r.run, r.tenants.join(", "))?;
        }
        for why in &self.unreadable {
            writeln!(f, "  WARNING {why}")?;
        }
        for why in &self.remote_unreadable {
            writeln!(f, "  UNREADABLE {why}")?;
        }
        let gone = self.items.iter().filter(|i| !i.keep).count();
        writeln!(f, "{gone} snapshot(s) {verb}, {} kept; {} file(s) deleted", self.items.len() - gone, self.deleted)
    }
}
