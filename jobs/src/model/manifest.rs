//! `MANIFEST.json` of a snapshot directory (`daily/<day>/` or `rollout/<run_id>/`): every
//! archive in it with its sha256, size and file count. Written last and atomically: a
//! directory without it is incomplete by definition (being written, or crashed).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::layout::{manifest_path, SnapshotId, SnapshotKind};

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
    /// When the archive was taken (RFC 3339), stamped as it enters the manifest; absent in
    /// manifests written before slipway stamped entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// The tenant's database dumps taken with these files (`[app.database]`): one snapshot,
    /// one entry. Absent for a tenant without a declared database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseDumps>,
    /// A stack tenant's data mounts (`[app.services]`), one archive each, in the tenant's
    /// mount order: one snapshot, one entry. The first is the entry's own archive (`path` and
    /// the fields beside it describe it too, so a reader that knows one archive per entry
    /// still hashes, syncs and prunes it); every other is a part of the same snapshot. Empty
    /// for a single-container tenant.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<MountArchive>,
    /// The SQLite files (`[app.database] kind = "sqlite"`) copied online through SQLite's
    /// backup API and archived in the archive at their own path, in place of the live file
    /// (whose `-wal`, `-shm` and `-journal` were left out). Empty without them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sqlite: Vec<SqliteCopy>,
}

/// One SQLite file of a tenant, as its copy went into the archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SqliteCopy {
    /// Its path relative to the data dir (and in the archive); a stack tenant's: relative to
    /// its data mount (and in that mount's archive).
    pub path: String,
    /// A stack tenant's only: the data mount holding it, as [`MountArchive::source`] names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<String>,
    /// sha256 of the copy's bytes.
    pub sha256: String,
    /// The copy's size in bytes.
    pub size: u64,
    /// The version of SQLite that made the copy (and checked it with `PRAGMA integrity_check`).
    pub sqlite_version: String,
}

/// The archive of one data mount of a stack tenant's snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountArchive {
    /// The mount as an operator names it (`volume "p_appdata" at /data`), for messages.
    pub mount: String,
    /// What restore finds the mount by: a volume's name, a bind mount's host dir.
    pub source: String,
    /// Path relative to the snapshot directory (`tenants/t1+1.tar.zst`).
    pub path: String,
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

impl MountArchive {
    /// This mount's archive as an entry of its own (the tenant's), to hash, reuse or extract it
    /// the way a single archive is.
    pub fn as_entry(&self, tenant: Option<&str>) -> ArchiveEntry {
        ArchiveEntry {
            path: self.path.clone(),
            tenant: tenant.map(str::to_string),
            sha256: self.sha256.clone(),
            size: self.size,
            files: self.files,
            file_list: self.file_list.clone(),
            file_list_sha256: self.file_list_sha256.clone(),
            created: None,
            database: None,
            mounts: Vec::new(),
            sqlite: Vec::new(),
        }
    }
}

/// The database dumps of one tenant's snapshot, beside its archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseDumps {
    /// The engine (`postgres`).
    pub kind: String,
    /// The container the dumps were taken in.
    pub container: String,
    /// The server's version (`SHOW server_version`).
    pub server_version: String,
    /// The dump tool's version (`pg_dump --version`), the server's own: it ran in its container.
    pub tool_version: String,
    /// The id (`sha256:…`) of the image the database container ran when dumped: a drill boots
    /// its scratch database from it, so the dump is proven by the server that wrote it (absent
    /// in manifests of earlier versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Every dump, the globals (roles, tablespaces) first.
    pub dumps: Vec<DumpEntry>,
}

/// One dump file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DumpEntry {
    /// The database, or none for the globals (`pg_dumpall --globals-only`, plain SQL).
    pub database: Option<String>,
    /// Path relative to the snapshot directory (`tenants/t1.db/1.pgdump`): never derived from
    /// the database's name.
    pub path: String,
    /// sha256 of the dump bytes.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// Whether `s` is an image id as the engine gives it (`sha256:` and 64 lowercase hex digits):
/// what a manifest names is used only then, never as a reference the engine could pull.
pub fn is_image_id(s: &str) -> bool {
    s.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

impl ArchiveEntry {
    /// Every file of this entry, relative to its snapshot dir: the archive, its file list and
    /// the database dumps.
    pub fn objects(&self) -> impl Iterator<Item = &String> {
        [&self.path, &self.file_list]
            .into_iter()
            .chain(self.database.iter().flat_map(|d| d.dumps.iter().map(|x| &x.path)))
            .chain(self.other_parts().flat_map(|m| [&m.path, &m.file_list]))
    }

    /// The archives of a stack tenant's mounts besides the entry's own (`path`): every one is
    /// hashed, synced, fetched and pruned with it.
    pub fn other_parts(&self) -> impl Iterator<Item = &MountArchive> {
        self.mounts.iter().filter(move |m| m.path != self.path)
    }

    /// When the archive was taken: its stamp, else (older manifests) the time its snapshot's
    /// name gives. Never the manifest's own time, which every rewrite (prune) moves.
    pub fn taken(&self, snap: &SnapshotId) -> Option<jiff::Timestamp> {
        self.created.as_deref().and_then(|c| c.parse().ok()).or_else(|| snap.time())
    }
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
    /// When last written (RFC 3339): moves with every rewrite, so it says nothing of when
    /// the archives in it were taken (see [`ArchiveEntry::taken`]).
    pub created: String,
    /// Archives, sorted by path.
    pub archives: Vec<ArchiveEntry>,
}

impl Manifest {
    /// An empty manifest for a snapshot directory.
    pub fn new(snap: &SnapshotId) -> Manifest {
        Manifest {
            version: 1,
            kind: snap.kind(),
            id: snap.id().to_string(),
            created: jiff::Timestamp::now().to_string(),
            archives: Vec::new(),
        }
    }

    /// Read the directory's manifest; Ok(None) when the directory has none (incomplete).
    pub fn read(dir: &Path) -> Result<Option<Manifest>> {
        let p = manifest_path(dir);
        match std::fs::read(&p) {
            Ok(b) => {
                let m: Manifest = serde_json::from_slice(&b)
                    .map_err(|e| Error::Backup(format!("{}: not a valid manifest: {e}", p.display())))?;
                m.check_paths(&p.display())?;
                Ok(Some(m))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(p, e)),
        }
    }

    /// Refuse a manifest naming a path that would leave its snapshot dir (absolute, `..`): the
    /// same checks as archive entries ([`crate::layout::checked_rel`]). `what` names the manifest.
    pub fn check_paths(&self, what: &dyn std::fmt::Display) -> Result<()> {
        for a in &self.archives {
            for rel in a.objects() {
                crate::layout::under(Path::new("."), rel, what)?;
            }
            for d in a.database.iter().flat_map(|d| &d.dumps) {
                if let Some(db) = d.database.as_deref().filter(|db| !crate::config::is_db_name(db)) {
                    return Err(Error::Backup(format!(
                        "{what}: refused database name {db:?} of tenant {}: not a name slipway accepts",
                        a.tenant.as_deref().unwrap_or("?")
                    )));
                }
            }
        }
        Ok(())
    }

    /// Add or replace the entry for `path`, stamped now unless it carries its own time.
    pub fn upsert(&mut self, mut entry: ArchiveEntry) {
        entry.created.get_or_insert_with(|| jiff::Timestamp::now().to_string());
        self.archives.retain(|a| a.path != entry.path);
        self.archives.push(entry);
        self.archives.sort_by(|a, b| a.path.cmp(&b.path));
    }

    /// Write the directory's manifest atomically (mode 0600).
    pub fn write(&mut self, dir: &Path) -> Result<()> {
        self.created = jiff::Timestamp::now().to_string();
        self.write_as_is(dir)
    }

    /// Write the manifest into `dir` atomically (mode 0600) as it is, its time unchanged: the
    /// same manifest written twice is the same bytes (a merged manifest a sync compares with
    /// the remote's by sha256).
    pub fn write_as_is(&self, dir: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(|source| Error::Json { what: "the manifest", source })?;
        let p = manifest_path(dir);
        crate::fsutil::atomic_write(&p, &json, 0o600).map_err(|e| Error::io(p, e))
    }

    /// This manifest (the local one) with the entries of `remote` — the remote's manifest of
    /// the same snapshot — that it lacks and whose objects the remote still holds
    /// (`still_held`): what the remote manifest must name, never less than the remote holds.
    /// A local prune shrinks the local manifest; the remote's own retention, not a sync,
    /// decides what leaves the remote. An entry both name is this manifest's (a snapshot taken
    /// again replaces the remote's archive).
    pub fn merged_with(&self, remote: &Manifest, still_held: impl Fn(&ArchiveEntry) -> bool) -> Manifest {
        let mut m = self.clone();
        for r in &remote.archives {
            if !m.archives.iter().any(|a| a.path == r.path) && still_held(r) {
                m.archives.push(r.clone());
            }
        }
        m.archives.sort_by(|a, b| a.path.cmp(&b.path));
        m
    }

    /// The entry of a tenant.
    pub fn tenant(&self, tenant: &str) -> Option<&ArchiveEntry> {
        self.archives.iter().find(|a| a.tenant.as_deref() == Some(tenant))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_image_id_is_taken_from_a_manifest_never_a_reference() {
        let id = format!("sha256:{}", "ab12".repeat(16));
        assert!(is_image_id(&id));
        for bad in [
            "postgres:16",
            "registry.example/pg@sha256:".to_string().as_str(),
            &id.to_uppercase(),
            &id[..70],
            &format!("{id}0"),
            &format!("evil.example/{id}"),
            "",
        ] {
            assert!(!is_image_id(bad), "{bad}");
        }
    }

    fn entry(path: &str) -> ArchiveEntry {
        ArchiveEntry {
            path: path.into(),
            tenant: Some("t1".into()),
            sha256: "00".into(),
            size: 1,
            files: 1,
            file_list: "l".into(),
            file_list_sha256: "00".into(),
            created: None,
            database: None,
            mounts: Vec::new(),
            sqlite: Vec::new(),
        }
    }

    #[test]
    fn a_stack_entry_names_every_mount_archive_once_and_a_part_outside_its_dir_is_refused() {
        let part = |n: usize| MountArchive {
            mount: format!("volume \"v{n}\" at /data"),
            source: format!("v{n}"),
            path: format!("tenants/t1+{n}.tar.zst"),
            sha256: "00".into(),
            size: 1,
            files: 1,
            file_list: format!("tenants/t1+{n}.files.json.zst"),
            file_list_sha256: "00".into(),
        };
        let e = ArchiveEntry { mounts: vec![part(0), part(1)], ..entry("tenants/t1+0.tar.zst") };
        let objects: Vec<&String> = e.objects().collect();
        assert_eq!(objects, ["tenants/t1+0.tar.zst", "l", "tenants/t1+1.tar.zst", "tenants/t1+1.files.json.zst"]);
        let d = tempfile::tempdir().unwrap();
        let snap = SnapshotId::daily("2026-11-22").unwrap();
        let mut m = Manifest::new(&snap);
        let bad = MountArchive { path: "../../owned".into(), ..part(1) };
        m.upsert(ArchiveEntry { mounts: vec![part(0), bad], ..entry("tenants/t1+0.tar.zst") });
        m.write(d.path()).unwrap();
        let err = Manifest::read(d.path()).unwrap_err().to_string();
        assert!(err.contains("refused path"), "{err}");
    }

    #[test]
    fn an_entry_is_stamped_once_and_its_time_survives_a_rewrite_of_the_manifest() {
        let d = tempfile::tempdir().unwrap();
        let snap = SnapshotId::daily("2026-11-22").unwrap();
        let mut m = Manifest::new(&snap);
        m.upsert(entry("a"));
        let stamped = m.archives[0].created.clone().expect("upsert stamps the entry");
        m.write(d.path()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let mut again = Manifest::read(d.path()).unwrap().unwrap();
        again.write(d.path()).unwrap();
        let read = Manifest::read(d.path()).unwrap().unwrap();
        assert_ne!(read.created, m.created, "a rewrite moves the manifest's time");
        assert_eq!(read.archives[0].created.as_deref(), Some(stamped.as_str()));
        assert_eq!(read.archives[0].taken(&snap), stamped.parse().ok());
    }

    #[test]
    fn a_merge_keeps_the_remote_entries_still_held_and_takes_the_local_one_where_both_have_it() {
        let snap = SnapshotId::daily("2026-11-22").unwrap();
        let mut local = Manifest::new(&snap);
        local.upsert(ArchiveEntry { sha256: "new".into(), ..entry("tenants/t1.tar.zst") });
        let mut remote = Manifest::new(&snap);
        for e in [entry("tenants/t1.tar.zst"), entry("tenants/t2.tar.zst"), entry("tenants/t3.tar.zst")] {
            remote.upsert(e);
        }
        // t3's objects are gone from the remote: it is not named again.
        let merged = local.merged_with(&remote, |a| a.path != "tenants/t3.tar.zst");
        let paths: Vec<&str> = merged.archives.iter().map(|a| a.path.as_str()).collect();
        assert_eq!(paths, ["tenants/t1.tar.zst", "tenants/t2.tar.zst"]);
        assert_eq!(merged.archives[0].sha256, "new");
        assert_eq!(merged.created, local.created);
        // Written as it is, twice: the same bytes.
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        merged.write_as_is(a.path()).unwrap();
        merged.write_as_is(b.path()).unwrap();
        assert_eq!(std::fs::read(manifest_path(a.path())).unwrap(), std::fs::read(manifest_path(b.path())).unwrap());
    }

    #[test]
    fn a_manifest_naming_a_path_outside_its_dir_is_refused_when_read() {
        let d = tempfile::tempdir().unwrap();
        let snap = SnapshotId::daily("2026-11-22").unwrap();
        for (path, list) in [("/tmp/x/owned", "l"), ("tenants/t1.tar.zst", "../../owned")] {
            let mut m = Manifest::new(&snap);
            m.upsert(ArchiveEntry { file_list: list.into(), ..entry(path) });
            m.write(d.path()).unwrap();
            let e = Manifest::read(d.path()).unwrap_err().to_string();
            assert!(e.contains("MANIFEST.json") && e.contains("refused path"), "{e}");
        }
    }

    #[test]
    fn an_entry_of_an_older_manifest_is_as_old_as_its_snapshot_name() {
        let day = SnapshotId::daily("2026-11-22").unwrap();
        assert_eq!(entry("a").taken(&day).unwrap().to_string(), "2026-11-22T00:00:00Z");
        let old: ArchiveEntry = serde_json::from_str(
            r#"{"path":"a","tenant":"t1","sha256":"00","size":1,"files":1,"file_list":"l","file_list_sha256":"00"}"#,
        )
        .unwrap();
        assert_eq!(old.created, None);
    }
}
