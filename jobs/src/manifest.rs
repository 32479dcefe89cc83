//! `MANIFEST.json` of a snapshot directory (`daily/<day>/` or `rollout/<run_id>/`): every
//! archive in it with its sha256, size and file count. Written last and atomically: a
//! directory without it is incomplete by definition (being written, or crashed).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// File name of the manifest inside a snapshot directory.
pub const MANIFEST: &str = "MANIFEST.json";

/// Daily or rollout snapshot directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotKind {
    /// `daily/<YYYY-MM-DD>/`
    Daily,
    /// `rollout/<run_id>/`
    Rollout,
}

/// One archive in a snapshot directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveEntry {
    /// Path relative to the snapshot directory (`tenants/t1.tar.zst`, `t1.tar.zst`).
    pub path: String,
    /// Tenant, none for the control plane.
    pub tenant: Option<String>,
    /// sha256 of the archive bytes.
    pub sha256: String,
    /// Archive size in bytes.
    pub size: u64,
    /// Entries in the archive.
    pub files: u64,
    /// The per-file list beside it.
    pub file_list: String,
    /// sha256 of the per-file list.
    pub file_list_sha256: String,
}

/// The manifest of one snapshot directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version.
    pub version: u32,
    /// Daily or rollout.
    pub kind: SnapshotKind,
    /// The day or the run id.
    pub id: String,
    /// When written (RFC 3339).
    pub created: String,
    /// Archives, sorted by path.
    pub archives: Vec<ArchiveEntry>,
}

impl Manifest {
    /// An empty manifest for a snapshot directory.
    pub fn new(kind: SnapshotKind, id: &str) -> Manifest {
        Manifest {
            version: 1,
            kind,
            id: id.to_string(),
            created: jiff::Timestamp::now().to_string(),
            archives: Vec::new(),
        }
    }

    /// Read `<dir>/MANIFEST.json`; Ok(None) when the directory has none (incomplete).
    pub fn read(dir: &Path) -> Result<Option<Manifest>> {
        let p = dir.join(MANIFEST);
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| Error::Backup(format!("{}: not a valid manifest: {e}", p.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(p, e)),
        }
    }

    /// Add or replace the entry for `path`.
    pub fn upsert(&mut self, entry: ArchiveEntry) {
        self.archives.retain(|a| a.path != entry.path);
        self.archives.push(entry);
        self.archives.sort_by(|a, b| a.path.cmp(&b.path));
    }

    /// Write `<dir>/MANIFEST.json` atomically (mode 0600).
    pub fn write(&mut self, dir: &Path) -> Result<()> {
        self.created = jiff::Timestamp::now().to_string();
        let json = serde_json::to_vec_pretty(self).map_err(|source| Error::Json { what: "the manifest", source })?;
        let p = dir.join(MANIFEST);
        crate::fsutil::atomic_write(&p, &json, 0o600).map_err(|e| Error::io(p, e))
    }

    /// The entry of a tenant.
    pub fn tenant(&self, tenant: &str) -> Option<&ArchiveEntry> {
        self.archives.iter().find(|a| a.tenant.as_deref() == Some(tenant))
    }
}
