//! `verify`: re-hash every archive of every complete snapshot directory (or one day), and the
//! file list beside it, against its `MANIFEST.json`; `--deep` also extracts each into a scratch
//! dir and checks every file's content hash, mode, owner and mtime against the file list. Any
//! mismatch names the archive (and file) and makes the job fail; so does a snapshot dir
//! without a manifest, which nothing can be checked against or restored from. `--remote`
//! checks the remote copies: each archive's size and sha256 metadata, its file list's sha256
//! metadata, and each database dump's size and sha256 metadata, against the remote manifest
//! (with `--deep`, a downloaded copy file by file, and each dump downloaded and re-hashed).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::adapters::archive;
use crate::config::HostConfig;
use crate::error::{Error, ExitKind, Result};
use crate::layout::{self, SnapshotDir, SnapshotId, MANIFEST};
use crate::manifest::{ArchiveEntry, Manifest};
use crate::offsite;

/// Options of `verify`.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Only this day.
    pub day: Option<String>,
    /// Extract and check every file too.
    pub deep: bool,
    /// Check the remote copies.
    pub remote: bool,
}

/// One archive checked.
#[derive(Debug, Clone, Serialize)]
pub struct Checked {
    /// Archive path.
    pub archive: PathBuf,
    /// Whether it matched.
    pub ok: bool,
    /// The mismatch.
    pub detail: Option<String>,
}

/// The result of `slipway verify`.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// Per archive.
    pub archives: Vec<Checked>,
    /// Snapshot dirs without a manifest (incomplete; nothing to check against): a failure.
    pub incomplete: Vec<PathBuf>,
    /// Whether files were checked too.
    pub deep: bool,
}

impl VerifyReport {
    /// Failure on any mismatch, and on any snapshot dir without a manifest (nothing in it can
    /// be trusted or restored).
    pub fn exit_kind(&self) -> ExitKind {
        if self.archives.iter().all(|a| a.ok) && self.incomplete.is_empty() {
            ExitKind::Success
        } else {
            ExitKind::Failure
        }
    }
}

/// The snapshot dirs to check: `daily/<day>` for one day, else every daily and rollout dir.
pub fn snapshot_dirs(backup_root: &Path, day: Option<&str>) -> Result<Vec<SnapshotDir>> {
    if let Some(d) = day {
        let id = SnapshotId::daily(d).map_err(|e| Error::Usage(format!("--day {e}")))?;
        let dir = id.dir(backup_root);
        if !dir.is_dir() {
            return Err(Error::Usage(format!("no daily snapshot for {d} in {}", backup_root.display())));
        }
        return Ok(vec![SnapshotDir { id, dir }]);
    }
    let walk = layout::walk(backup_root)?;
    let mut dirs: Vec<SnapshotDir> = walk.complete.into_iter().chain(walk.incomplete).collect();
    dirs.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(dirs)
}

/// Check one archive against its manifest entry (and its file list when `deep`).
pub fn check_archive(dir: &Path, e: &ArchiveEntry, deep: bool) -> Checked {
    let path = dir.join(&e.path);
    let detail = (|| -> std::result::Result<(), String> {
        let (sha, size) = archive::sha256_file(&path).map_err(|x| x.to_string())?;
        if size != e.size {
            return Err(format!("size is {size}, the manifest says {}", e.size));
        }
        if sha != e.sha256 {
            return Err(format!("sha256 is {sha}, the manifest says {}", e.sha256));
        }
        // The file list is what --deep and the next snapshot's reuse trust: it is checked too.
        let list_path = dir.join(&e.file_list);
        let (list_sha, _) = archive::sha256_file(&list_path).map_err(|x| x.to_string())?;
        if list_sha != e.file_list_sha256 {
            return Err(format!(
                "file list {}: sha256 is {list_sha}, the manifest says {}",
                list_path.display(),
                e.file_list_sha256
            ));
        }
        // The tenant's database dumps of the same entry: a snapshot is good only with them.
        for d in e.database.iter().flat_map(|d| &d.dumps) {
            let dump = crate::layout::under(dir, &d.path, &"a database dump").map_err(|x| x.to_string())?;
            let (sha, size) = archive::sha256_file(&dump).map_err(|x| format!("{}: {x}", dump.display()))?;
            if (sha.as_str(), size) != (d.sha256.as_str(), d.size) {
                return Err(format!(
                    "database dump {}: {size} bytes with sha256 {sha}, the manifest says {} bytes with sha256 {}",
                    dump.display(),
                    d.size,
                    d.sha256
                ));
            }
        }
        if deep {
            archive::deep_verify(&path, &e.sha256, &list_path).map_err(|x| x.to_string())?;
        }
        // A stack tenant's other mounts, each its own archive of the same snapshot.
        for part in e.other_parts() {
            let c = check_archive(dir, &part.as_entry(e.tenant.as_deref()), deep);
            if let Some(why) = c.detail {
                return Err(format!("{} ({}): {why}", c.archive.display(), part.mount));
            }
        }
        Ok(())
    })()
    .err();
    Checked { archive: path, ok: detail.is_none(), detail }
}

/// Run `verify` on the local backup root.
pub async fn verify(backup_root: &Path, opts: &VerifyOptions) -> Result<VerifyReport> {
    let dirs = snapshot_dirs(backup_root, opts.day.as_deref())?;
    let deep = opts.deep;
    crate::blocking::run("verify", move || {
        let mut archives = Vec::new();
        let mut incomplete = Vec::new();
        for SnapshotDir { dir, .. } in dirs {
            match Manifest::read(&dir) {
                Ok(None) => incomplete.push(dir),
                Ok(Some(m)) => archives.extend(m.archives.iter().map(|e| check_archive(&dir, e, deep))),
                // An unreadable manifest fails the job, naming it; the other days are still checked.
                Err(e) => archives.push(Checked {
                    archive: layout::manifest_path(&dir),
                    ok: false,
                    detail: Some(e.to_string()),
                }),
            }
        }
        Ok(VerifyReport { archives, incomplete, deep })
    })
    .await?
}

/// `verify --remote`: each remote archive's size and sha256 metadata against its remote
/// manifest; `--deep` downloads each archive and checks every file.
///
/// An archive whose sha256 metadata is missing (a server that lost it, as `rclone serve s3`
/// does when it restarts; a copy made by a tool that drops metadata) cannot be judged without
/// its bytes: a plain `--remote` reports it as a mismatch saying so, while `--deep` judges it
/// by the bytes it downloads and re-hashes — good exactly when they hash to the manifest's
/// sha256 and every file checks out. Metadata that is present and names another sha256 is a
/// mismatch either way: the object was replaced after it was uploaded.
pub async fn verify_remote(cfg: &HostConfig, opts: &VerifyOptions) -> Result<VerifyReport> {
    let remote = offsite::connect(cfg).await?;
    let listing = offsite::list(&remote).await?;
    let sizes: HashMap<&str, u64> = listing.sizes.iter().map(|(k, s)| (k.as_str(), *s)).collect();
    let mut snapshots = listing.snapshots.clone();
    if let Some(d) = &opts.day {
        let want = SnapshotId::daily(d).map_err(|e| Error::Usage(format!("--day {e}")))?;
        snapshots.retain(|s| *s == want);
        if snapshots.is_empty() {
            return Err(Error::Usage(format!("no complete remote snapshot for {d} at {}", remote.place())));
        }
    }
    let scratch =
        tempfile::Builder::new().prefix("slipway-verify-").tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let mut archives = Vec::new();
    for snap in snapshots {
        let dir = snap.dir(scratch.path());
        let m = match offsite::read_manifest(&remote, cfg, &snap, &dir).await {
            Ok(Some(m)) => m,
            Ok(None) => continue,
            Err(e @ (Error::RemoteAuth { .. } | Error::Config(_))) => return Err(e),
            // A manifest that cannot be trusted fails the job, naming it; the others are still checked.
            Err(e) => {
                archives.push(Checked {
                    archive: PathBuf::from(snap.manifest_key()),
                    ok: false,
                    detail: Some(e.to_string()),
                });
                continue;
            }
        };
        // A stack tenant's mounts are checked each as an archive of its own.
        let entries: Vec<crate::manifest::ArchiveEntry> = m
            .archives
            .iter()
            .flat_map(|a| std::iter::once(a.clone()).chain(a.other_parts().map(|p| p.as_entry(a.tenant.as_deref()))))
            .collect();
        for a in &entries {
            let key = snap.key(&a.path);
            let head = remote.head(&key).await?;
            let mut detail = metadata_mismatch(head.as_ref(), sizes.get(key.as_str()), a.size, &a.sha256, opts.deep);
            match head {
                _ if detail.is_some() => {}
                Some(_) if opts.deep => {
                    // Too little room to download into is the host's problem, not the archive's:
                    // the job fails naming the dir and the bytes, before anything is downloaded.
                    let need = offsite::download_bytes(&remote, &snap, a).await?;
                    offsite::check_room(&dir, need, &key)?;
                    let r = async {
                        let local = layout::under(&dir, &a.path, &key)?;
                        let list_path = layout::under(&dir, &a.file_list, &key)?;
                        remote.download(&key, &local, Some(&a.sha256)).await?;
                        remote.download(&snap.key(&a.file_list), &list_path, Some(&a.file_list_sha256)).await?;
                        let (l, p, s, lp) = (local.clone(), a.sha256.clone(), list_path.clone(), list_path.clone());
                        crate::blocking::run("deep verify", move || archive::deep_verify(&l, &p, &s)).await??;
                        let _ = std::fs::remove_file(&local);
                        let _ = std::fs::remove_file(lp);
                        Ok::<_, Error>(())
                    }
                    .await;
                    match r {
                        // No identity, or the wrong one: exit 2, not a mismatch.
                        Err(e @ Error::Config(_)) => return Err(e),
                        r => detail = r.err().map(|e| e.to_string()),
                    }
                }
                Some(_) => {
                    let list_key = snap.key(&a.file_list);
                    match remote.head(&list_key).await? {
                        None => detail = Some(format!("file list {list_key} is missing on the remote")),
                        Some(h) if h.content_sha256() != Some(a.file_list_sha256.as_str()) => {
                            detail = Some(format!(
                                "file list {list_key}: sha256 metadata is {:?}, the manifest says {}",
                                h.content_sha256(),
                                a.file_list_sha256
                            ))
                        }
                        Some(_) => {}
                    }
                }
                None => {}
            }
            archives.push(Checked { archive: PathBuf::from(&key), ok: detail.is_none(), detail });
        }
        // The tenants' database dumps: a remote snapshot is good only with them (a restore
        // --remote replays them), so each is checked like an archive; --deep downloads and
        // re-hashes it.
        for d in m.archives.iter().flat_map(|a| a.database.iter().flat_map(|db| &db.dumps)) {
            let key = snap.key(&d.path);
            let head = remote.head(&key).await?;
            let mut detail = metadata_mismatch(head.as_ref(), sizes.get(key.as_str()), d.size, &d.sha256, opts.deep);
            if detail.is_none() && opts.deep {
                offsite::check_room(&dir, d.size, &key)?;
                let r = async {
                    let local = layout::under(&dir, &d.path, &key)?;
                    remote.download(&key, &local, Some(&d.sha256)).await?;
                    let _ = std::fs::remove_file(&local);
                    Ok::<_, Error>(())
                }
                .await;
                match r {
                    Err(e @ Error::Config(_)) => return Err(e),
                    r => detail = r.err().map(|e| e.to_string()),
                }
            }
            archives.push(Checked { archive: PathBuf::from(&key), ok: detail.is_none(), detail });
        }
    }
    Ok(VerifyReport { archives, incomplete: Vec::new(), deep: opts.deep })
}

/// What a remote object's head says against the manifest's `size` and `sha256`: `None` when it
/// matches, or when only its bytes can tell (no sha256 metadata) and `deep` will download them.
fn metadata_mismatch(
    head: Option<&crate::adapters::remote::ObjectInfo>,
    listed: Option<&u64>,
    size: u64,
    sha256: &str,
    deep: bool,
) -> Option<String> {
    let Some(h) = head else { return Some("missing on the remote".to_string()) };
    // An encrypted object is checked by its plaintext's size and sha256 (metadata); --deep
    // decrypts it and hashes both.
    if h.content_size() != Some(size) || listed != Some(&h.size) {
        return Some(format!("size is {:?}, the manifest says {size}", h.content_size()));
    }
    match h.content_sha256() {
        Some(sha) if sha != sha256 => {
            Some(format!("sha256 metadata is {:?}, the manifest says {sha256}", h.content_sha256()))
        }
        None if !deep => Some(format!(
            "it has no sha256 metadata, so only its bytes can tell; the manifest says {sha256} (run `slipway \
             verify --remote --deep` to download and re-hash it)"
        )),
        _ => None,
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bad: Vec<&Checked> = self.archives.iter().filter(|a| !a.ok).collect();
        for a in &bad {
            writeln!(f, "MISMATCH {}: {}", a.archive.display(), a.detail.as_deref().unwrap_or(""))?;
        }
        for d in &self.incomplete {
            writeln!(
                f,
                "INCOMPLETE {}: no {MANIFEST}, so nothing in it can be checked or restored \
                 (a snapshot that did not finish; check it and remove it, or snapshot again)",
                d.display()
            )?;
        }
        writeln!(
            f,
            "{} archive(s) checked{}, {} mismatch(es), {} incomplete snapshot dir(s)",
            self.archives.len(),
            if self.deep { " file by file" } else { "" },
            bad.len(),
            self.incomplete.len()
        )
    }
}
