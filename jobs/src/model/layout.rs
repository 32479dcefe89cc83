//! The backup store's layout: every local path under `backup_root`, every remote key, and the
//! remote cache under `state_dir`, spelled here and nowhere else.
//!
//! ```text
//! <backup_root>/daily/YYYY-MM-DD/tenants/<tenant>.tar.zst   + <tenant>.files.json.zst
//! <backup_root>/daily/YYYY-MM-DD/tenants/<tenant>.db/<n>.pgdump   its database dumps ([app.database])
//! <backup_root>/daily/YYYY-MM-DD/control-plane.tar.zst      + control-plane.files.json.zst
//! <backup_root>/daily/YYYY-MM-DD/MANIFEST.json
//! <backup_root>/rollout/<run_id>/<tenant>.tar.zst           + <tenant>.files.json.zst
//! <backup_root>/rollout/<run_id>/<tenant>.db/<n>.pgdump   its pre-switch database dumps
//! <backup_root>/rollout/<run_id>/undo-kept/<tenant>.db/<n>.pgdump   the database as a failed
//!                                                            new version left it, dumped by undo
//! <backup_root>/rollout/<run_id>/MANIFEST.json
//! <backup_root>/replaced/<run_id>/<tenant>/                  the data a restore replaced, as it was
//! <backup_root>/staging/<tenant>/                            the daily snapshot's copy of the tenant's
//!                                                            data dir (and its mirror index beside it)
//! <backup_root>/drill/<run_id>/<tenant>/                     a drill's scratch copy, removed after it
//! <state_dir>/remote-cache/<kind>/<id>/…                     what `restore --remote` fetched
//! <state_dir>/remote-manifests/<kind>/<id>/MANIFEST.json     the plaintext of an encrypted manifest uploaded
//! <data dir's parent>/.slipway-rollout/<run_id>/<tenant>/     a rollout's copy of the data dir,
//!                                                            beside it on its filesystem, while
//!                                                            the run needs it
//! ```
//!
//! A snapshot directory is named by a [`SnapshotId`] (its kind and its day or run id). The
//! remote mirrors the same relative paths as keys under its prefix, and the run record names an
//! archive by the same relative path, so one function ([`SnapshotId::key`]) gives all three.
//!
//! Invariants: a snapshot directory is complete exactly when its `MANIFEST.json` exists (it is
//! written last, atomically); [`walk`] is the one walker of the store and lists only
//! directories whose name is a valid id of their kind (a day, a run id), never dot-names
//! (temporary files); a remote snapshot is complete exactly when its manifest key exists.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::types::RunId;

/// File name of the manifest inside a snapshot directory.
pub const MANIFEST: &str = "MANIFEST.json";
/// Name of the control-plane archive (without suffix), and its kind in the run record.
pub const CONTROL_PLANE: &str = "control-plane";
/// The subdirectory of a daily snapshot that holds the tenants' archives.
const TENANTS: &str = "tenants";
/// Suffix of an archive.
const ARCHIVE_SUFFIX: &str = ".tar.zst";
/// Suffix of the dir of a tenant's database dumps beside its archive.
const DUMPS_SUFFIX: &str = ".db";
/// The dir of a rollout run that holds what its undo dumped before replaying.
const UNDO_KEPT: &str = "undo-kept";
/// Suffix of one database dump.
const DUMP_SUFFIX: &str = ".pgdump";
/// Suffix of the per-file list beside an archive.
const FILE_LIST_SUFFIX: &str = ".files.json.zst";
/// The directory under the backup root that keeps the data each restore replaced.
const REPLACED: &str = "replaced";
/// The hidden dir beside the data dirs that holds a rollout's copies of them.
const ROLLOUT_COPIES: &str = ".slipway-rollout";
/// Suffix of a mirror's index file.
const MIRROR_INDEX_SUFFIX: &str = ".mirror-index";
/// The directory under the backup root that holds the daily snapshots' staging copies.
const STAGING: &str = "staging";
/// The directory under the backup root that holds the scratch copies of running drills.
const DRILL: &str = "drill";
/// The directory under `state_dir` that `restore --remote` downloads into.
const REMOTE_CACHE: &str = "remote-cache";
/// The directory under `state_dir` keeping the plaintext of each encrypted manifest uploaded.
const SEALED_MANIFESTS: &str = "remote-manifests";

/// Daily or rollout snapshot directory. The word ([`SnapshotKind::as_str`]) is the directory
/// under the backup root, the first part of a remote key, the manifest's `kind` and the
/// snapshot kind in the run record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotKind {
    /// `daily/<YYYY-MM-DD>/`
    Daily,
    /// `rollout/<run_id>/`
    Rollout,
}

impl SnapshotKind {
    /// Every kind, in the order the walker lists them.
    pub const ALL: [SnapshotKind; 2] = [SnapshotKind::Daily, SnapshotKind::Rollout];

    /// The kind's word: `daily` or `rollout`.
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotKind::Daily => "daily",
            SnapshotKind::Rollout => "rollout",
        }
    }

    /// The remote key prefix every object of this kind's snapshots starts with (`daily/`):
    /// with [`SnapshotKind::ALL`], the only keys slipway writes under `remote.prefix`.
    pub fn key_root(self) -> String {
        format!("{}/", self.as_str())
    }

    /// The directory of this kind's snapshots under the backup root.
    pub fn dir(self, backup_root: &Path) -> PathBuf {
        backup_root.join(self.as_str())
    }
}

impl FromStr for SnapshotKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        SnapshotKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("snapshot kind \"{s}\" is unknown; expected daily or rollout"))
    }
}

impl fmt::Display for SnapshotKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One snapshot directory, locally (`<backup_root>/<kind>/<id>`) and on the remote
/// (`<kind>/<id>/…` under the prefix). Its id is checked when built: a day `YYYY-MM-DD` for a
/// daily snapshot, a run id for a rollout snapshot — so it is always a single safe path part.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SnapshotId {
    kind: SnapshotKind,
    id: String,
}

/// Whether `s` is a day `YYYY-MM-DD` that exists in the calendar.
fn is_day(s: &str) -> bool {
    s.len() == 10 && jiff::civil::Date::strptime("%Y-%m-%d", s).is_ok()
}

impl SnapshotId {
    /// A snapshot of `kind` named `id`; refused unless `id` is a day (daily) or a run id (rollout).
    pub fn new(kind: SnapshotKind, id: &str) -> std::result::Result<SnapshotId, String> {
        match kind {
            SnapshotKind::Daily if is_day(id) => Ok(SnapshotId { kind, id: id.to_string() }),
            SnapshotKind::Daily => Err(format!("\"{id}\" is not a day; use YYYY-MM-DD")),
            SnapshotKind::Rollout => Ok(SnapshotId::rollout(&id.parse::<RunId>()?)),
        }
    }

    /// The daily snapshot of `day` (`YYYY-MM-DD`).
    pub fn daily(day: &str) -> std::result::Result<SnapshotId, String> {
        SnapshotId::new(SnapshotKind::Daily, day)
    }

    /// The rollout snapshot of run `run`.
    pub fn rollout(run: &RunId) -> SnapshotId {
        SnapshotId { kind: SnapshotKind::Rollout, id: run.to_string() }
    }

    /// Daily or rollout.
    pub fn kind(&self) -> SnapshotKind {
        self.kind
    }

    /// The day or the run id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// When the snapshot was taken, from its name: midnight UTC of the day, or the run's start.
    pub fn time(&self) -> Option<jiff::Timestamp> {
        match self.kind {
            SnapshotKind::Daily => format!("{}T00:00:00Z", self.id).parse().ok(),
            SnapshotKind::Rollout => jiff::civil::DateTime::strptime("%Y%m%dT%H%M%SZ", self.id.get(..16)?)
                .ok()?
                .to_zoned(jiff::tz::TimeZone::UTC)
                .ok()
                .map(|z| z.timestamp()),
        }
    }

    /// The directory relative to the backup root, which is also the remote key prefix:
    /// `daily/2026-11-22`, `rollout/20261122T030000Z-7f3a`.
    pub fn rel(&self) -> String {
        format!("{}/{}", self.kind.as_str(), self.id)
    }

    /// The local directory under `backup_root`.
    pub fn dir(&self, backup_root: &Path) -> PathBuf {
        self.kind.dir(backup_root).join(&self.id)
    }

    /// A file of the snapshot (`rel` as its manifest names it) relative to the backup root:
    /// its remote key and its path in the run record (`daily/2026-11-22/tenants/t1.tar.zst`).
    pub fn key(&self, rel: &str) -> String {
        format!("{}/{rel}", self.rel())
    }

    /// The prefix every remote key of this snapshot starts with (`rollout/<run>/`).
    pub fn key_prefix(&self) -> String {
        self.key("")
    }

    /// The remote key of the snapshot's manifest.
    pub fn manifest_key(&self) -> String {
        self.key(MANIFEST)
    }

    /// The snapshot whose manifest `key` is, if it is one (`daily/<day>/MANIFEST.json`).
    pub fn from_manifest_key(key: &str) -> Option<SnapshotId> {
        let (kind, rest) = key.split_once('/')?;
        let id = rest.strip_suffix(MANIFEST)?.strip_suffix('/')?;
        SnapshotId::new(kind.parse().ok()?, id).ok()
    }

    /// Where the plaintext of this snapshot's encrypted remote manifest is kept under the state
    /// dir, so jobs that only list (prune, verify) read it without the identity.
    pub fn sealed_manifest_dir(&self, state_dir: &Path) -> PathBuf {
        state_dir.join(SEALED_MANIFESTS).join(self.kind.as_str()).join(&self.id)
    }

    /// Where `restore --remote` puts this snapshot's files under the state dir.
    pub fn cache_dir(&self, state_dir: &Path) -> PathBuf {
        remote_cache(state_dir).join(self.kind.as_str()).join(&self.id)
    }
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.rel())
    }
}

/// The manifest of a snapshot directory.
pub fn manifest_path(dir: &Path) -> PathBuf {
    dir.join(MANIFEST)
}

/// A tenant's archive inside a snapshot directory: `tenants/<t>.tar.zst` (daily) or
/// `<t>.tar.zst` (rollout).
pub fn tenant_archive(kind: SnapshotKind, tenant: &str) -> String {
    match kind {
        SnapshotKind::Daily => format!("{TENANTS}/{tenant}{ARCHIVE_SUFFIX}"),
        SnapshotKind::Rollout => format!("{tenant}{ARCHIVE_SUFFIX}"),
    }
}

/// The name a stack tenant's `n`th data mount goes by in the backup store (its archive, its
/// staging copy, what a restore replaced of it): `<tenant>+<n>`. A tenant id has no `+`.
pub fn mount_key(tenant: &str, n: usize) -> String {
    format!("{tenant}+{n}")
}

/// The archive of a stack tenant's `n`th data mount inside a snapshot directory:
/// `tenants/<t>+<n>.tar.zst` (daily) or `<t>+<n>.tar.zst` (rollout).
pub fn mount_archive(kind: SnapshotKind, tenant: &str, n: usize) -> String {
    tenant_archive(kind, &mount_key(tenant, n))
}

/// The dir of a tenant's database dumps beside its archive, relative to the snapshot dir:
/// `tenants/t1.tar.zst` → `tenants/t1.db`. Outside the archive, so no file of the tenant's data
/// tree can ever be taken for a dump.
pub fn dumps_dir_of(archive_rel: &str) -> String {
    let stem = archive_rel.strip_suffix(ARCHIVE_SUFFIX).unwrap_or(archive_rel);
    format!("{stem}{DUMPS_SUFFIX}")
}

/// Where an undo keeps the dumps of a tenant's database as the failed new version left it,
/// inside the rollout's run dir, as the archive-relative name [`dumps_dir_of`] takes:
/// `undo-kept/<tenant>.tar.zst` → `undo-kept/<tenant>.db` (a dir no tenant's own files share).
pub fn undo_kept_dumps_base(tenant: &str) -> String {
    format!("{UNDO_KEPT}/{tenant}{ARCHIVE_SUFFIX}")
}

/// The `n`th dump of a tenant (0: the globals), relative to the snapshot dir: named by its
/// position, never by the database's name.
pub fn dump_of(archive_rel: &str, n: usize) -> String {
    format!("{}/{n}{DUMP_SUFFIX}", dumps_dir_of(archive_rel))
}

/// The control-plane archive inside a daily snapshot directory.
pub fn control_plane_archive() -> String {
    format!("{CONTROL_PLANE}{ARCHIVE_SUFFIX}")
}

/// The dir a daily snapshot's tenant archives go in.
pub fn tenants_dir(day_dir: &Path) -> PathBuf {
    day_dir.join(TENANTS)
}

/// The per-file list's path beside an archive: `t1.tar.zst` → `t1.files.json.zst`.
pub fn file_list_path(archive: &Path) -> PathBuf {
    let name = archive.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let stem = name.strip_suffix(ARCHIVE_SUFFIX).unwrap_or(&name);
    archive.with_file_name(format!("{stem}{FILE_LIST_SUFFIX}"))
}

/// The per-file list of an archive, as a manifest names it (relative to the snapshot dir).
pub fn file_list_of(archive_rel: &str) -> String {
    file_list_path(Path::new(archive_rel)).to_string_lossy().into_owned()
}

/// The index a mirror keeps beside its copy `dst` (what each entry of the source looked like at
/// the last pass): `<parent>/.<name>.mirror-index`.
pub fn mirror_index(dst: &Path) -> PathBuf {
    let name = dst.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dst.with_file_name(format!(".{name}{MIRROR_INDEX_SUFFIX}"))
}

/// Where run `run` keeps its copy of `tenant`'s data dir `data_dir`: beside it, on its
/// filesystem (so that undo can swap it back with a rename):
/// `<parent>/.slipway-rollout/<run_id>/<tenant>`. None for a data dir without a parent.
pub fn rollout_copy(data_dir: &Path, run: &RunId, tenant: &str) -> Option<PathBuf> {
    let parent = data_dir.parent().filter(|p| !p.as_os_str().is_empty())?;
    Some(parent.join(ROLLOUT_COPIES).join(run.as_str()).join(tenant))
}

/// Where run `run` keeps its copies, beside the data dirs, as people read it:
/// `.slipway-rollout/<run_id>` (one such dir beside each data dir's parent).
pub fn rollout_copies_of(run: &str) -> String {
    format!("{ROLLOUT_COPIES}/{run}")
}

/// The remote cache under the state dir.
pub fn remote_cache(state_dir: &Path) -> PathBuf {
    state_dir.join(REMOTE_CACHE)
}

/// A relative path read from a manifest or the remote (an archive's `path`, its `file_list`, a
/// listed object key), checked as archive entries are: '/'-separated normal parts only — not
/// absolute, no `..`, no `.`, no empty part, no NUL — so that joined to a dir it stays under it.
/// The error says what is wrong with it.
pub fn checked_rel(rel: &str) -> std::result::Result<&str, String> {
    if rel.is_empty() {
        return Err("it is empty".into());
    }
    if rel.starts_with('/') {
        return Err("it is an absolute path".into());
    }
    if rel.contains('\0') {
        return Err("it contains a NUL byte".into());
    }
    for part in rel.split('/') {
        match part {
            "" => return Err("it has an empty part (`//` or a trailing `/`)".into()),
            "." => return Err("it contains `.`".into()),
            ".." => return Err("it contains `..`".into()),
            _ => {}
        }
    }
    Ok(rel)
}

/// `dir` joined with `rel` from a manifest or the remote, once [`checked_rel`] passed: the one way
/// such a path becomes a local path, so it never lands outside `dir`. `what` names the source
/// (a manifest, a remote key) in the error.
pub fn under(dir: &Path, rel: &str, what: &dyn fmt::Display) -> Result<PathBuf> {
    match checked_rel(rel) {
        Ok(r) => Ok(dir.join(r)),
        Err(why) => Err(Error::Backup(format!(
            "{what}: refused path \"{rel}\": {why}; it would leave {}. The snapshot was damaged or \
             tampered with: nothing was written; restore from another snapshot or copy",
            dir.display()
        ))),
    }
}

/// Where restore run `run` keeps the tenant's data it replaced: `replaced/<run_id>/<tenant>`.
pub fn replaced_dir(backup_root: &Path, run: &RunId, tenant: &str) -> PathBuf {
    backup_root.join(REPLACED).join(run.as_str()).join(tenant)
}

/// The staging copy of a tenant's data dir that the daily snapshot brings up to date while the
/// tenant runs and archives from: `staging/<tenant>`. It is a copy, never the only one: the
/// tenant's data dir is the original, so a damaged staging copy is only ever brought up to date
/// again, and nothing else (recover, prune, sync) touches it.
pub fn staging_dir(backup_root: &Path, tenant: &str) -> PathBuf {
    staging_root(backup_root).join(tenant)
}

/// The dir holding every tenant's staging copy (and their mirror indexes): `staging/`.
pub fn staging_root(backup_root: &Path) -> PathBuf {
    backup_root.join(STAGING)
}

/// Where drills extract their scratch copies: `<backup_root>/drill`. Anything in it outside a
/// running drill is a leftover (`recover` removes it).
pub fn drill_root(backup_root: &Path) -> PathBuf {
    backup_root.join(DRILL)
}

/// The scratch copy drill run `run` restores `tenant` into: `drill/<run_id>/<tenant>`.
pub fn drill_scratch(backup_root: &Path, run: &RunId, tenant: &str) -> PathBuf {
    drill_root(backup_root).join(run.as_str()).join(tenant)
}

/// The data a restore replaced, found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplacedDir {
    /// The restore run that replaced it.
    pub run: RunId,
    /// Its run's dir, `replaced/<run_id>`.
    pub run_dir: PathBuf,
    /// The tenants whose data it keeps, sorted.
    pub tenants: Vec<String>,
}

/// Every `replaced/<run_id>/` dir, oldest run first; names that are not run ids (or start with a
/// dot) are not slipway's and are skipped.
pub fn replaced(backup_root: &Path) -> Result<Vec<ReplacedDir>> {
    let root = backup_root.join(REPLACED);
    let rd = match std::fs::read_dir(&root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(&root, e)),
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(&root, e))?;
        let Some(run) = entry.file_name().to_str().and_then(|n| n.parse::<RunId>().ok()) else { continue };
        let run_dir = entry.path();
        if !run_dir.is_dir() {
            continue;
        }
        let mut tenants: Vec<String> = std::fs::read_dir(&run_dir)
            .map_err(|e| Error::io(&run_dir, e))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .collect();
        tenants.sort();
        out.push(ReplacedDir { run, run_dir, tenants });
    }
    out.sort_by(|a, b| a.run.as_str().cmp(b.run.as_str()));
    Ok(out)
}

/// A snapshot directory found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotDir {
    /// Its kind and id.
    pub id: SnapshotId,
    /// Its path.
    pub dir: PathBuf,
}

/// What [`walk`] found under the backup root, each list sorted by kind, then id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Walk {
    /// Directories with a `MANIFEST.json`.
    pub complete: Vec<SnapshotDir>,
    /// Directories without one: being written, or left by a crash.
    pub incomplete: Vec<SnapshotDir>,
}

/// The one walker of the backup store: every snapshot directory of every kind. Entries that
/// are not a directory, whose name starts with a dot, or whose name is not an id of their kind
/// (a day, a run id) are not snapshots and are skipped. A missing kind directory is empty.
pub fn walk(backup_root: &Path) -> Result<Walk> {
    let mut out = Walk::default();
    for kind in SnapshotKind::ALL {
        let root = kind.dir(backup_root);
        let rd = match std::fs::read_dir(&root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(&root, e)),
        };
        let mut found = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|e| Error::io(&root, e))?;
            let Ok(name) = entry.file_name().into_string() else { continue };
            let Ok(id) = SnapshotId::new(kind, &name) else { continue };
            let dir = entry.path();
            if dir.is_dir() {
                found.push(SnapshotDir { id, dir });
            }
        }
        found.sort_by(|a, b| a.id.cmp(&b.id));
        for d in found {
            if manifest_path(&d.dir).is_file() {
                out.complete.push(d);
            } else {
                out.incomplete.push(d);
            }
        }
    }
    Ok(out)
}

/// The complete snapshot directories under the backup root, sorted by kind, then id.
pub fn complete(backup_root: &Path) -> Result<Vec<SnapshotDir>> {
    Ok(walk(backup_root)?.complete)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: &str = "20261122T030000Z-7f3a";

    #[test]
    fn kinds_use_the_words_of_the_run_record_and_json() {
        for k in SnapshotKind::ALL {
            assert_eq!(k.as_str().parse::<SnapshotKind>().unwrap(), k);
            assert_eq!(serde_json::to_string(&k).unwrap(), format!("\"{}\"", k.as_str()));
        }
        assert_eq!(SnapshotKind::Daily.as_str(), "daily");
        assert_eq!(SnapshotKind::Rollout.as_str(), "rollout");
        assert!("weekly".parse::<SnapshotKind>().is_err());
    }

    #[test]
    fn paths_and_keys_are_the_documented_ones() {
        let root = Path::new("/data/backups");
        let day = SnapshotId::daily("2026-11-22").unwrap();
        assert_eq!(day.dir(root), Path::new("/data/backups/daily/2026-11-22"));
        assert_eq!(day.key(&tenant_archive(SnapshotKind::Daily, "t1")), "daily/2026-11-22/tenants/t1.tar.zst");
        assert_eq!(day.manifest_key(), "daily/2026-11-22/MANIFEST.json");
        assert_eq!(day.key(&control_plane_archive()), "daily/2026-11-22/control-plane.tar.zst");
        let run = SnapshotId::rollout(&RUN.parse().unwrap());
        assert_eq!(run.dir(root), Path::new("/data/backups/rollout").join(RUN));
        assert_eq!(run.key(&tenant_archive(SnapshotKind::Rollout, "t1")), format!("rollout/{RUN}/t1.tar.zst"));
        assert_eq!(run.key_prefix(), format!("rollout/{RUN}/"));
        assert_eq!(file_list_of("tenants/t1.tar.zst"), "tenants/t1.files.json.zst");
        assert_eq!(dump_of("tenants/t1.tar.zst", 2), "tenants/t1.db/2.pgdump");
        assert_eq!(dumps_dir_of("t1.tar.zst"), "t1.db");
        assert_eq!(dumps_dir_of(&undo_kept_dumps_base("t1")), "undo-kept/t1.db");
        assert_eq!(file_list_path(Path::new("/x/t1.tar.zst")), Path::new("/x/t1.files.json.zst"));
        assert_eq!(tenants_dir(&day.dir(root)), Path::new("/data/backups/daily/2026-11-22/tenants"));
        assert_eq!(staging_dir(root, "t1"), Path::new("/data/backups/staging/t1"));
        assert_eq!(
            drill_scratch(root, &RUN.parse().unwrap(), "t1"),
            Path::new("/data/backups/drill").join(RUN).join("t1")
        );
        assert_eq!(
            run.cache_dir(Path::new("/var/lib/slipway")),
            Path::new("/var/lib/slipway/remote-cache/rollout").join(RUN)
        );
    }

    #[test]
    fn a_stack_tenants_mount_archives_are_numbered_beside_its_name() {
        assert_eq!(mount_archive(SnapshotKind::Daily, "t1", 1), "tenants/t1+1.tar.zst");
        assert_eq!(mount_archive(SnapshotKind::Rollout, "t1", 0), "t1+0.tar.zst");
        assert_eq!(file_list_of(&mount_archive(SnapshotKind::Daily, "t1", 2)), "tenants/t1+2.files.json.zst");
        assert_eq!(staging_dir(Path::new("/b"), &mount_key("t1", 0)), Path::new("/b/staging/t1+0"));
    }

    #[test]
    fn a_rollout_copy_lies_beside_the_data_dir_and_its_index_beside_the_copy() {
        let run: RunId = RUN.parse().unwrap();
        let copy = rollout_copy(Path::new("/data/tenants/t1"), &run, "t1").unwrap();
        assert_eq!(copy, Path::new("/data/tenants/.slipway-rollout").join(RUN).join("t1"));
        assert_eq!(mirror_index(&copy), Path::new("/data/tenants/.slipway-rollout").join(RUN).join(".t1.mirror-index"));
        assert_eq!(rollout_copy(Path::new("/"), &run, "t1"), None);
    }

    #[test]
    fn a_manifest_key_round_trips_and_other_keys_are_not_manifests() {
        for id in [SnapshotId::daily("2026-11-22").unwrap(), SnapshotId::rollout(&RUN.parse().unwrap())] {
            assert_eq!(SnapshotId::from_manifest_key(&id.manifest_key()), Some(id.clone()));
            assert_eq!(SnapshotId::new(id.kind(), id.id()).unwrap(), id);
        }
        for key in [
            "daily/2026-11-22/tenants/t1.tar.zst",
            "daily/2026-11-22/x/MANIFEST.json",
            "daily/2026-13-01/MANIFEST.json",
            "daily/../MANIFEST.json",
            "weekly/2026-11-22/MANIFEST.json",
            "rollout/not-a-run/MANIFEST.json",
            "MANIFEST.json",
            "daily/2026-11-22MANIFEST.json",
        ] {
            assert_eq!(SnapshotId::from_manifest_key(key), None, "{key}");
        }
    }

    #[test]
    fn ids_are_days_or_run_ids_and_nothing_else() {
        for bad in ["", ".", "..", "2026-11-22/..", "2026-1-2", "2026-02-30", "../2026-11-22", ".2026-11-22"] {
            assert!(SnapshotId::daily(bad).is_err(), "{bad}");
        }
        assert!(SnapshotId::new(SnapshotKind::Rollout, "2026-11-22").is_err());
        assert!(SnapshotId::new(SnapshotKind::Rollout, RUN).is_ok());
    }

    #[test]
    fn snapshot_time_comes_from_the_name() {
        let day = SnapshotId::daily("2026-11-22").unwrap();
        assert_eq!(day.time().unwrap().to_string(), "2026-11-22T00:00:00Z");
        let run = SnapshotId::rollout(&RUN.parse().unwrap());
        assert_eq!(run.time().unwrap().to_string(), "2026-11-22T03:00:00Z");
        // A run id that parses but names no real time has none.
        let odd = SnapshotId::rollout(&"20261399T030000Z-0000".parse().unwrap());
        assert_eq!(odd.time(), None);
    }

    #[test]
    fn the_walker_lists_complete_dirs_by_kind_and_skips_incomplete_and_foreign_ones() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        let mk = |rel: &str, manifest: bool| {
            let p = root.join(rel);
            std::fs::create_dir_all(&p).unwrap();
            if manifest {
                std::fs::write(p.join(MANIFEST), b"{}").unwrap();
            }
        };
        mk("daily/2026-11-22", true);
        mk("daily/2026-11-21", true);
        mk("daily/2026-11-23", false); // being written
        mk("daily/notes", true); // not a day
        mk("daily/.2026-11-20", true); // a temporary name
        mk(&format!("rollout/{RUN}"), true);
        mk("rollout/2026-11-22", true); // not a run id
        std::fs::write(root.join("daily/2026-11-24"), b"a file, not a dir").unwrap();
        let w = walk(root).unwrap();
        let names = |v: &[SnapshotDir]| v.iter().map(|s| s.id.to_string()).collect::<Vec<_>>();
        assert_eq!(names(&w.complete), ["daily/2026-11-21", "daily/2026-11-22", &format!("rollout/{RUN}")]);
        assert_eq!(names(&w.incomplete), ["daily/2026-11-23"]);
        assert_eq!(w.complete[0].dir, root.join("daily/2026-11-21"));
        assert_eq!(complete(root).unwrap(), w.complete);
    }

    #[test]
    fn paths_from_a_manifest_or_the_remote_stay_under_their_dir() {
        for ok in ["tenants/t1.tar.zst", "t1.files.json.zst", "daily/2026-11-22/MANIFEST.json", "a..b/c.d"] {
            assert_eq!(checked_rel(ok), Ok(ok), "{ok}");
            assert_eq!(under(Path::new("/c"), ok, &"m").unwrap(), Path::new("/c").join(ok));
        }
        for bad in [
            "",
            "/tmp/x/owned",
            "../owned",
            "tenants/../../owned",
            "tenants/..",
            "./t1.tar.zst",
            "tenants//t1.tar.zst",
            "tenants/",
            "a\0b",
        ] {
            assert!(checked_rel(bad).is_err(), "{bad:?}");
            let e = under(Path::new("/c"), bad, &"daily/2026-11-22/MANIFEST.json").unwrap_err().to_string();
            assert!(e.contains("daily/2026-11-22/MANIFEST.json") && e.contains("refused path"), "{e}");
        }
    }

    #[test]
    fn an_empty_backup_root_has_no_snapshots() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(walk(d.path()).unwrap(), Walk::default());
        assert_eq!(walk(&d.path().join("missing")).unwrap(), Walk::default());
    }
}
