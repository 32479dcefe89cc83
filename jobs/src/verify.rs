//! `verify`: re-hash every archive of every complete snapshot directory (or one day) against
//! its `MANIFEST.json`; `--deep` also extracts each into a scratch dir and checks every file's
//! hash against the archive's file list. Any mismatch names the archive (and file) and makes
//! the job fail. `--remote` checks the remote copies: each archive's size and sha256 metadata
//! against the remote manifest (and, with `--deep`, every file of a downloaded copy).

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
    /// Snapshot dirs without a manifest (incomplete; nothing to check against).
    pub incomplete: Vec<PathBuf>,
    /// Whether files were checked too.
    pub deep: bool,
}

impl VerifyReport {
    /// Failure on any mismatch.
    pub fn exit_kind(&self) -> ExitKind {
        if self.archives.iter().all(|a| a.ok) {
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
        if deep {
            let list = archive::read_file_list(&dir.join(&e.file_list)).map_err(|x| x.to_string())?;
            archive::deep_verify(&path, &e.sha256, &list).map_err(|x| x.to_string())?;
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
    tokio::task::spawn_blocking(move || {
        let mut archives = Vec::new();
        let mut incomplete = Vec::new();
        for SnapshotDir { dir, .. } in dirs {
            match Manifest::read(&dir)? {
                None => incomplete.push(dir),
                Some(m) => archives.extend(m.archives.iter().map(|e| check_archive(&dir, e, deep))),
            }
        }
        Ok(VerifyReport { archives, incomplete, deep })
    })
    .await
    .map_err(|e| Error::Other(format!("verify task failed: {e}")))?
}

/// `verify --remote`: each remote archive's size and sha256 metadata against its remote
/// manifest; `--deep` downloads each archive and checks every file.
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
        let Some(m) = offsite::fetch_manifest(&remote, &snap, &dir).await? else { continue };
        for a in &m.archives {
            let key = snap.key(&a.path);
            let mut detail = None;
            match remote.head(&key).await? {
                None => detail = Some("missing on the remote".to_string()),
                Some(h) if h.size != a.size || sizes.get(key.as_str()) != Some(&a.size) => {
                    detail = Some(format!("size is {}, the manifest says {}", h.size, a.size))
                }
                Some(h) if h.sha256.as_deref() != Some(a.sha256.as_str()) => {
                    detail = Some(format!("sha256 metadata is {:?}, the manifest says {}", h.sha256, a.sha256))
                }
                Some(_) if opts.deep => {
                    let local = dir.join(&a.path);
                    let list_path = dir.join(&a.file_list);
                    let r = async {
                        remote.download(&key, &local, Some(&a.sha256)).await?;
                        remote.download(&snap.key(&a.file_list), &list_path, Some(&a.file_list_sha256)).await?;
                        let (l, p, s, lp) =
                            (local.clone(), a.sha256.clone(), archive::read_file_list(&list_path)?, list_path.clone());
                        tokio::task::spawn_blocking(move || archive::deep_verify(&l, &p, &s))
                            .await
                            .map_err(|e| Error::Other(e.to_string()))??;
                        let _ = std::fs::remove_file(&local);
                        let _ = std::fs::remove_file(lp);
                        Ok::<_, Error>(())
                    }
                    .await;
                    detail = r.err().map(|e| e.to_string());
                }
                Some(_) => {}
            }
            archives.push(Checked { archive: PathBuf::from(&key), ok: detail.is_none(), detail });
        }
    }
    Ok(VerifyReport { archives, incomplete: Vec::new(), deep: opts.deep })
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bad: Vec<&Checked> = self.archives.iter().filter(|a| !a.ok).collect();
        for a in &bad {
            writeln!(f, "MISMATCH {}: {}", a.archive.display(), a.detail.as_deref().unwrap_or(""))?;
        }
        for d in &self.incomplete {
            writeln!(f, "incomplete (no {MANIFEST}): {}", d.display())?;
        }
        writeln!(
            f,
            "{} archive(s) checked{}, {} mismatch(es)",
            self.archives.len(),
            if self.deep { " file by file" } else { "" },
            bad.len()
        )
    }
}
