//! `verify`: re-hash every archive of every complete snapshot directory (or one day) against
//! its `MANIFEST.json`; `--deep` also extracts each into a scratch dir and checks every file's
//! hash against the archive's file list. Any mismatch names the archive (and file) and makes
//! the job fail. `--remote` checks the remote copies (see `sync`).

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::adapters::archive;
use crate::error::{Error, ExitKind, Result};
use crate::manifest::Manifest;

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
pub fn snapshot_dirs(backup_root: &Path, day: Option<&str>) -> Result<Vec<PathBuf>> {
    if let Some(d) = day {
        let dir = backup_root.join("daily").join(d);
        if !dir.is_dir() {
            return Err(Error::Usage(format!("no daily snapshot for {d} in {}", backup_root.display())));
        }
        return Ok(vec![dir]);
    }
    let mut out = Vec::new();
    for kind in ["daily", "rollout"] {
        let Ok(rd) = std::fs::read_dir(backup_root.join(kind)) else {
            continue;
        };
        let mut dirs: Vec<PathBuf> = rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
        dirs.sort();
        out.extend(dirs);
    }
    Ok(out)
}

/// Check one archive against its manifest entry (and its file list when `deep`).
pub fn check_archive(dir: &Path, e: &crate::manifest::ArchiveEntry, deep: bool) -> Checked {
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
    crate::blocking::run("verify", move || {
        let mut archives = Vec::new();
        let mut incomplete = Vec::new();
        for dir in dirs {
            match Manifest::read(&dir)? {
                None => incomplete.push(dir),
                Some(m) => archives.extend(m.archives.iter().map(|e| check_archive(&dir, e, deep))),
            }
        }
        Ok(VerifyReport { archives, incomplete, deep })
    })
    .await?
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bad: Vec<&Checked> = self.archives.iter().filter(|a| !a.ok).collect();
        for a in &bad {
            writeln!(f, "MISMATCH {}: {}", a.archive.display(), a.detail.as_deref().unwrap_or(""))?;
        }
        for d in &self.incomplete {
            writeln!(f, "incomplete (no MANIFEST.json): {}", d.display())?;
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
