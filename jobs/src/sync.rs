//! `sync`: upload every complete local snapshot the remote lacks, mirroring local keys under
//! the remote prefix (`daily/<day>/…`, `rollout/<run>/…`). An object counts as present only if
//! its size and its sha256 (object metadata written at upload) match the manifest; a snapshot
//! directory's `MANIFEST.json` goes up last, so a remote directory without it is incomplete by
//! definition. Verified uploads are remembered in the run record, tied to the remote (endpoint,
//! bucket and prefix: [`Remote::id`]), so a sync with nothing new costs one listing, and a sync
//! to another bucket or prefix uploads everything there. A snapshot — or one tenant's archive
//! of a day the remote keeps — that slipway's prune deleted from this remote (its own, shorter
//! retention) is not uploaded again; one missing for
//! any other reason (an emptied bucket, a lifecycle rule) is. Paths and keys come from
//! [`crate::layout`], the listing from [`crate::offsite`].

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Instant;

use futures_util::StreamExt;
use serde::Serialize;
use slipway_state::RemoteObject;

use crate::adapters::archive;
use crate::adapters::remote::{Remote, Stored};
use crate::context::Ctx;
use crate::error::{Error, ExitKind, Result};
use crate::layout::{self, SnapshotDir, SnapshotKind, CONTROL_PLANE};
use crate::manifest::Manifest;
use crate::offsite;

/// Options of `sync`.
#[derive(Debug, Clone, Default)]
pub struct SyncOptions {
    /// List what would be uploaded; upload nothing.
    pub dry_run: bool,
}

/// One file that was (or would be) uploaded, or failed.
#[derive(Debug, Clone, Serialize)]
pub struct FileSync {
    /// Key under the prefix (the same as the path under the backup root).
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// uploaded, would_upload, failed.
    pub action: String,
    /// The error, if failed.
    pub detail: Option<String>,
    /// sha256 of the object uploaded (the encrypted bytes, when encrypted).
    pub object_sha256: Option<String>,
    /// `age` when the upload was encrypted.
    pub encryption: Option<String>,
}

/// The result of `slipway sync`.
#[derive(Debug, Clone, Serialize)]
pub struct SyncReport {
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// Where (endpoint and bucket; never credentials).
    pub remote: String,
    /// Files already present and verified.
    pub present: usize,
    /// Files uploaded, would be uploaded, or failed.
    pub files: Vec<FileSync>,
    /// Whether uploads are encrypted (`[remote] encrypt`).
    pub encrypted: bool,
    /// Bytes uploaded (as sent: encrypted, when they are).
    pub uploaded_bytes: u64,
    /// Upload throughput in MB/s (uploaded bytes over the time spent uploading).
    pub mb_per_s: f64,
    /// Stale multipart uploads aborted.
    pub aborted_stale_uploads: usize,
    /// Snapshots (`daily/<day>`), and single archives of snapshots the remote keeps, that
    /// slipway's prune deleted from this remote after they were verified there (its
    /// retention): not uploaded again.
    pub retired: Vec<String>,
}

impl SyncReport {
    /// Failure when any file failed.
    pub fn exit_kind(&self) -> ExitKind {
        if self.files.iter().any(|f| f.action == "failed") {
            ExitKind::Failure
        } else {
            ExitKind::Success
        }
    }
}

/// A file of a local snapshot directory, as it must be on the remote.
#[derive(Debug, Clone)]
struct Wanted {
    key: String,
    path: PathBuf,
    sha256: String,
    size: u64,
}

/// What one snapshot dir must have on the remote: archives and file lists, then the manifest.
fn wanted(snap: &SnapshotDir) -> Result<Vec<Wanted>> {
    let (id, dir) = (&snap.id, &snap.dir);
    let Some(m) = Manifest::read(dir)? else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for a in &m.archives {
        out.push(Wanted { key: id.key(&a.path), path: dir.join(&a.path), sha256: a.sha256.clone(), size: a.size });
        let lp = dir.join(&a.file_list);
        let size = std::fs::metadata(&lp).map_err(|e| Error::io(&lp, e))?.len();
        out.push(Wanted { key: id.key(&a.file_list), path: lp, sha256: a.file_list_sha256.clone(), size });
        // The database dumps of the same entry: off-site with their files, or not at all.
        for d in a.database.iter().flat_map(|d| &d.dumps) {
            let path = layout::under(dir, &d.path, &id.key(&d.path))?;
            out.push(Wanted { key: id.key(&d.path), path, sha256: d.sha256.clone(), size: d.size });
        }
        // A stack tenant's other mounts: each archive and its file list, with the entry.
        for p in a.other_parts() {
            let path = layout::under(dir, &p.path, &id.key(&p.path))?;
            out.push(Wanted { key: id.key(&p.path), path, sha256: p.sha256.clone(), size: p.size });
            let lp = layout::under(dir, &p.file_list, &id.key(&p.file_list))?;
            let size = std::fs::metadata(&lp).map_err(|e| Error::io(&lp, e))?.len();
            out.push(Wanted { key: id.key(&p.file_list), path: lp, sha256: p.file_list_sha256.clone(), size });
        }
    }
    let mp = layout::manifest_path(dir);
    let (sha256, size) = archive::sha256_file(&mp)?;
    out.push(Wanted { key: id.manifest_key(), path: mp, sha256, size });
    Ok(out)
}

/// Whether every archive of `snap`, as it is now (same sha256), was deleted from this remote
/// by its retention (slipway's prune) after it had been verified there.
fn retired(snap: &SnapshotDir, retired_here: &HashMap<String, String>) -> bool {
    match Manifest::read(&snap.dir) {
        Ok(Some(m)) if !m.archives.is_empty() => {
            m.archives.iter().all(|a| retired_here.get(&snap.id.key(&a.path)) == Some(&a.sha256))
        }
        _ => false,
    }
}

/// The manifest to upload for `snap` (`local`: its own): merged with the remote's manifest of
/// the snapshot when the remote has one, so that it keeps naming every archive the remote still
/// holds (both the archive and its file list listed) that the local copy no longer has — a
/// local prune shrinks the local manifest, never the remote's; the remote's retention decides
/// there, and the archives it deleted (`dropped`) are not named again. Written under `scratch`
/// when it differs from the local file. A remote manifest that cannot be read is an error:
/// overwriting it could drop what it names.
async fn manifest_to_send(
    ctx: &Ctx,
    remote: &Remote,
    listed: &HashMap<String, u64>,
    (snap, dropped): (&SnapshotDir, &[crate::manifest::ArchiveEntry]),
    local: Wanted,
    scratch: &std::path::Path,
) -> Result<Wanted> {
    if !listed.contains_key(&local.key) {
        return Ok(local);
    }
    let Some(theirs) =
        offsite::read_manifest(remote, &ctx.cfg, &snap.id, &snap.id.dir(&scratch.join("remote"))).await?
    else {
        return Ok(local);
    };
    let Some(ours) = Manifest::read(&snap.dir)? else { return Ok(local) };
    let held = |a: &crate::manifest::ArchiveEntry| a.objects().all(|rel| listed.contains_key(&snap.id.key(rel)));
    let mut kept = ours.clone();
    kept.archives.retain(|a| !dropped.contains(a));
    let mut merged = kept.merged_with(&theirs, held);
    if merged.archives == ours.archives {
        return Ok(local);
    }
    // The remote's already names exactly these: it is sent as it is (the same bytes, so it
    // counts as present), not restamped with the local manifest's time.
    if merged.archives == theirs.archives {
        merged = theirs;
    }
    let dir = snap.id.dir(&scratch.join("merged"));
    crate::fsutil::create_private_dir(&dir).map_err(|e| Error::io(&dir, e))?;
    merged.write_as_is(&dir)?;
    let path = layout::manifest_path(&dir);
    let (sha256, size) = archive::sha256_file(&path)?;
    Ok(Wanted { key: local.key, path, sha256, size })
}

/// The archives of `snap`, as they are now (same sha256), that this remote's retention deleted
/// after they were verified there and that it does not hold again.
fn retired_archives(
    snap: &SnapshotDir,
    retired_here: &HashMap<String, String>,
    listed: &HashMap<String, u64>,
) -> Vec<crate::manifest::ArchiveEntry> {
    let Ok(Some(m)) = Manifest::read(&snap.dir) else { return Vec::new() };
    m.archives
        .into_iter()
        .filter(|a| {
            let key = snap.id.key(&a.path);
            retired_here.get(&key) == Some(&a.sha256) && !listed.contains_key(&key)
        })
        .collect()
}

/// Files uploaded at once (each multipart with its own parts in flight).
const FILES_IN_FLIGHT: usize = 2;

/// Whether `w` is on the remote with its size and sha256: the listing, then our record of a
/// verified upload (the content's sha256 and size, and the object's size as listed), else the
/// object's metadata (HEAD), recorded when it matches. An encrypted object holds `w` when its
/// plaintext's sha256 and size are `w`'s: which recipients it was encrypted to does not matter,
/// so changing them re-encrypts nothing already uploaded; an object uploaded unencrypted
/// before encryption was turned on still counts.
async fn is_present(
    ctx: &Ctx,
    remote: &Remote,
    listed: &HashMap<String, u64>,
    known: &mut HashMap<String, RemoteObject>,
    w: &Wanted,
    dry_run: bool,
) -> Result<bool> {
    // An encrypted object is larger than its plaintext, never smaller.
    let Some(&listed_size) = listed.get(&w.key).filter(|s| **s >= w.size) else {
        // Recorded as uploaded and not there (an emptied bucket, a lifecycle rule): the record
        // goes, so nothing counts on it, and the file goes up again.
        if !dry_run && known.remove(&w.key).is_some() {
            ctx.store.forget_remote_object(remote.id(), &w.key)?;
        }
        return Ok(false);
    };
    if known.get(&w.key).is_some_and(|o| o.sha256 == w.sha256 && o.size == w.size && o.object_size == listed_size) {
        return Ok(true);
    }
    match remote.head(&w.key).await? {
        Some(h) if h.size == listed_size && h.holds(&w.sha256, w.size) => {
            if !dry_run {
                let rec = h.record(&w.sha256, w.size);
                ctx.store.record_remote_object(remote.id(), &w.key, &rec)?;
                known.insert(w.key.clone(), rec);
            }
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Upload, then HEAD: only an object whose size and metadata match what was sent counts (an
/// encrypted multipart object has no sha256 of its own in metadata: its bytes were known only
/// once sent; the run record keeps it).
async fn upload_verified(remote: &Remote, w: &Wanted) -> Result<Stored> {
    let stored = remote.upload(&w.path, &w.key, &w.sha256, w.size).await?;
    match remote.head(&w.key).await? {
        Some(h)
            if h.size == stored.size
                && h.holds(&w.sha256, w.size)
                && h.encryption == stored.encryption
                && (h.sha256.as_deref() == Some(stored.sha256.as_str())
                    || (h.sha256.is_none() && stored.encryption.is_some())) =>
        {
            Ok(stored)
        }
        other => Err(Error::Remote {
            place: remote.place().to_string(),
            op: format!("checking {} after upload", w.key),
            detail: format!(
                "size {:?} and sha256 {:?}, expected {} and {}",
                other.as_ref().map(|h| h.size),
                other.as_ref().and_then(|h| h.content_sha256().map(str::to_string)),
                stored.size,
                w.sha256
            ),
        }),
    }
}

/// Run `sync`.
pub async fn sync(ctx: &Ctx, opts: &SyncOptions) -> Result<SyncReport> {
    let remote = offsite::connect(&ctx.cfg).await?;
    // A test stops the S3 server while the sync is held after a part (`upload-part-<n>`).
    #[cfg(feature = "test-crash")]
    let remote = remote.on_part_sent(std::sync::Arc::new(|n| crate::context::test_pause(&format!("upload-part-{n}"))));
    let mut report = SyncReport {
        dry_run: opts.dry_run,
        remote: remote.place().to_string(),
        present: 0,
        files: Vec::new(),
        encrypted: remote.encrypts(),
        uploaded_bytes: 0,
        mb_per_s: 0.0,
        aborted_stale_uploads: 0,
        retired: Vec::new(),
    };
    let listed = offsite::list(&remote).await?.sizes;
    let scratch =
        tempfile::Builder::new().prefix("slipway-sync-").tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
    ctx.store.adopt_unscoped_remote_records(remote.id())?;
    let mut known = ctx.store.remote_objects(remote.id())?;
    let record = if opts.dry_run { None } else { Some(ctx.start_run("sync", None, None, None)?) };
    if record.is_some() {
        report.aborted_stale_uploads = remote.abort_stale_uploads().await;
    }
    // Archives this remote's retention deleted after they were verified there, with the sha256
    // they had.
    let rows = ctx.store.snapshots()?;
    let recorded: HashMap<String, String> = rows.iter().map(|r| (r.path.clone(), r.sha256.clone())).collect();
    let retired_here: HashMap<String, String> = rows
        .into_iter()
        .filter(|r| r.remote_retired_at.is_some() && r.remote_verified_to.as_deref() == Some(remote.id()))
        .map(|r| (r.path, r.sha256))
        .collect();
    let mut upload_time = std::time::Duration::ZERO;
    for snap in layout::complete(&ctx.cfg.backup_root)? {
        let manifest_key = snap.id.manifest_key();
        // One unreadable day fails the job, naming it; every other day is still synced.
        let files = match wanted(&snap) {
            Ok(f) => f,
            Err(e) => {
                report.files.push(FileSync {
                    key: manifest_key,
                    size: 0,
                    action: "failed".into(),
                    detail: Some(format!("{e}; nothing of {} was uploaded", snap.id)),
                    object_sha256: None,
                    encryption: None,
                });
                continue;
            }
        };
        let mut dir_ok = true;
        // Archives and file lists first (a few at a time), the manifest only once they are all there.
        // A whole snapshot the remote had, verified, and no longer has was pruned by the remote's
        // retention (a shorter policy than the local one): uploading it again would only have the
        // next prune delete it again.
        if !listed.contains_key(&manifest_key) && retired(&snap, &retired_here) {
            report.retired.push(snap.id.to_string());
            continue;
        }
        // Single archives the remote's retention deleted from a snapshot it keeps (a tenant whose
        // day went while other tenants' stay): not sent again, nor named in the manifest sent.
        let dropped = if listed.contains_key(&manifest_key) {
            retired_archives(&snap, &retired_here, &listed)
        } else {
            Vec::new()
        };
        let skip: Vec<String> =
            dropped.iter().flat_map(|a| a.objects().map(|rel| snap.id.key(rel)).collect::<Vec<_>>()).collect();
        report.retired.extend(dropped.iter().map(|a| snap.id.key(&a.path)));
        let files: Vec<Wanted> = files.into_iter().filter(|w| !skip.contains(&w.key)).collect();
        let (manifest, files): (Vec<Wanted>, Vec<Wanted>) = files.into_iter().partition(|w| w.key == manifest_key);
        for (is_manifest, batch) in [(false, files), (true, manifest)] {
            if !dir_ok {
                break;
            }
            let mut merged = Vec::new();
            for w in batch {
                if !is_manifest {
                    merged.push(w);
                    continue;
                }
                match manifest_to_send(ctx, &remote, &listed, (&snap, &dropped), w, scratch.path()).await {
                    Ok(w) => merged.push(w),
                    Err(e @ Error::RemoteAuth { .. }) => return Err(e),
                    Err(e) => {
                        dir_ok = false;
                        report.files.push(FileSync {
                            key: manifest_key.clone(),
                            size: 0,
                            action: "failed".into(),
                            detail: Some(format!(
                                "{e}; the remote manifest was left as it is: it may name archives the local copy no \
                                 longer has, and a sync never drops those"
                            )),
                            object_sha256: None,
                            encryption: None,
                        });
                    }
                }
            }
            let batch = merged;
            let mut need = Vec::new();
            for w in batch {
                if is_present(ctx, &remote, &listed, &mut known, &w, opts.dry_run).await? {
                    report.present += 1;
                } else if opts.dry_run {
                    report.files.push(FileSync {
                        key: w.key,
                        size: w.size,
                        action: "would_upload".into(),
                        detail: None,
                        object_sha256: None,
                        encryption: None,
                    });
                } else {
                    need.push(w);
                }
            }
            if need.is_empty() {
                continue;
            }
            if need.iter().any(|w| w.key == manifest_key) {
                crate::context::test_pause("sync-before-manifest");
            }
            let t = Instant::now();
            ctx.progress.start(&format!("upload {}", snap.id), Some(need.iter().map(|w| w.size).sum()));
            let results: Vec<(Wanted, Result<Stored>)> = futures_util::stream::iter(need)
                .map(|w| {
                    let remote = &remote;
                    async move {
                        let r = upload_verified(remote, &w).await;
                        ctx.progress.advance(w.size);
                        (w, r)
                    }
                })
                .buffer_unordered(FILES_IN_FLIGHT)
                .collect()
                .await;
            ctx.progress.finish();
            upload_time += t.elapsed();
            for (w, r) in results {
                match r {
                    Ok(stored) => {
                        if w.key == manifest_key && stored.encryption.is_some() {
                            offsite::keep_manifest(&ctx.cfg.state_dir, &snap.id, &w.path)?;
                        }
                        ctx.store.record_remote_object(remote.id(), &w.key, &stored.record(&w.sha256, w.size))?;
                        report.uploaded_bytes += stored.size;
                        report.files.push(FileSync {
                            key: w.key,
                            size: w.size,
                            action: "uploaded".into(),
                            detail: None,
                            object_sha256: Some(stored.sha256),
                            encryption: stored.encryption,
                        });
                    }
                    Err(e @ Error::RemoteAuth { .. }) => return Err(e),
                    Err(e) => {
                        dir_ok = false;
                        ctx.store.forget_remote_object(remote.id(), &w.key)?;
                        report.files.push(FileSync {
                            key: w.key,
                            size: w.size,
                            action: "failed".into(),
                            detail: Some(e.to_string()),
                            object_sha256: None,
                            encryption: None,
                        });
                    }
                }
            }
        }
        if dir_ok && !opts.dry_run {
            if let Some(m) = Manifest::read(&snap.dir)? {
                for a in m.archives.iter().filter(|a| !dropped.contains(a)) {
                    let key = snap.id.key(&a.path);
                    // An archive the run record does not know as it is (copied in, restored from
                    // another host) is recorded now, so its verified upload is remembered.
                    if recorded.get(&key).is_none_or(|sha| *sha != a.sha256) {
                        let kind = match (snap.id.kind(), &a.tenant) {
                            (SnapshotKind::Daily, None) => CONTROL_PLANE,
                            (k, _) => k.as_str(),
                        };
                        ctx.record_archive(&key, kind, snap.id.id(), a)?;
                    }
                    ctx.store.mark_remote_verified(&key, remote.id())?;
                }
            }
        }
    }
    if upload_time.as_secs_f64() > 0.0 {
        report.mb_per_s = report.uploaded_bytes as f64 / 1e6 / upload_time.as_secs_f64();
    }
    if !opts.dry_run {
        let kind = report.exit_kind();
        let failed = report.files.iter().filter(|f| f.action == "failed").count();
        let summary = format!(
            "{} uploaded ({} bytes), {} present, {failed} failed",
            report.files.len() - failed,
            report.uploaded_bytes,
            report.present
        );
        if let Some(record) = record {
            record.finish(ctx, kind, &summary)?;
        }
    }
    Ok(report)
}

impl fmt::Display for SyncReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "sync to {}{}{}",
            self.remote,
            if self.encrypted { ", encrypted (age)" } else { "" },
            if self.dry_run { " (dry run)" } else { "" }
        )?;
        for x in &self.files {
            match &x.detail {
                Some(d) => writeln!(f, "  {:<13} {} ({} bytes): {d}", x.action, x.key, x.size)?,
                None => writeln!(f, "  {:<13} {} ({} bytes)", x.action, x.key, x.size)?,
            }
        }
        if !self.retired.is_empty() {
            writeln!(f, "  not uploaded again (pruned by the remote's retention): {}", self.retired.join(", "))?;
        }
        writeln!(
            f,
            "{} file(s) already present; {} bytes uploaded{}",
            self.present,
            self.uploaded_bytes,
            if self.uploaded_bytes > 0 { format!(" at {:.0} MB/s", self.mb_per_s) } else { String::new() }
        )
    }
}
