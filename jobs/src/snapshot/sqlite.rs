//! A tenant's SQLite files (`[app.database] kind = "sqlite"`) in its daily snapshot: each
//! copied online through SQLite's backup API by the confined copier
//! (`adapters::sqlite`), the tenant running and never paused, and archived in place of the live
//! file, whose `-wal`, `-shm` and `-journal` are left out (a restore must not pair the copy
//! with a stale log).
//!
//! A stack tenant's files (`service` set) are copied the same way, each from the data mount
//! that holds it, the copier confined to that mount's dir; each mount's archive carries its own.
//!
//! Invariants: the copies live in a hidden temp dir of the day's tenants dir, removed when the
//! snapshot of the tenant ends (and, after a kill, by the next snapshot of that tenant); one
//! copy that fails fails the tenant's snapshot, naming the tenant and the file, before its
//! archive is begun: nothing of it is recorded.

use std::path::{Path, PathBuf};

use crate::adapters::archive::Substitutes;
use crate::adapters::sqlite;
use crate::config::SqliteSpec;
use crate::error::{Error, Result};
use crate::manifest::SqliteCopy;
use crate::stack_tenant::StackTenant;
use crate::types::TenantId;

/// The prefix of a tenant's temp dir of copies.
fn prefix(tenant: &TenantId) -> String {
    format!(".sqlite-copy-{tenant}-")
}

/// A tenant's copies, ready to be archived in place of its live files.
pub(super) struct Copies {
    /// The temp dir holding them (removed on drop).
    _tmp: tempfile::TempDir,
    /// What each archive puts in place and leaves out: the single container's data dir's (one),
    /// or each data mount's of a stack tenant, in its mount order (empty for a mount that holds
    /// no declared file).
    pub subs: Vec<Substitutes>,
    /// What the manifest entry says of them.
    pub entries: Vec<SqliteCopy>,
}

impl Copies {
    /// Whether the tree of archive `n` holds a declared file (and is archived live, unheld).
    pub fn holds(&self, n: usize) -> bool {
        self.subs.get(n).is_some_and(|s| !s.files.is_empty())
    }
}

/// One declared file: the dir the copier is confined to, the file's path beneath it, how the
/// operator names it, and which archive (and mount) it goes into.
struct File {
    dir: PathBuf,
    rel: String,
    named: String,
    archive: usize,
    mount: Option<String>,
}

/// Copy every file `spec` declares in `tenant`'s data dir `data_dir` into a temp dir of
/// `tenants_dir`.
pub(super) async fn take(spec: &SqliteSpec, tenant: &TenantId, data_dir: &Path, tenants_dir: &Path) -> Result<Copies> {
    let files = spec
        .paths
        .iter()
        .map(|rel| File { dir: data_dir.to_path_buf(), rel: rel.clone(), named: rel.clone(), archive: 0, mount: None })
        .collect();
    take_files(tenant, files, 1, tenants_dir).await
}

/// Copy every file `spec` declares in service `spec.service` of stack tenant `st`, each from
/// the data mount holding it (the copier confined to that mount's dir), into a temp dir of
/// `tenants_dir`. A file in no data mount of the service fails it, naming the file.
pub(super) async fn take_stack(spec: &SqliteSpec, st: &StackTenant, tenants_dir: &Path) -> Result<Copies> {
    let tenant = &st.tenant;
    let service = spec.service.as_deref().unwrap_or_default();
    let mut files = Vec::new();
    for path in &spec.paths {
        let (n, rel) = st.locate(service, path).map_err(|why| {
            Error::Backup(format!("tenant {tenant}: the SQLite copy failed, no snapshot taken: {why}"))
        })?;
        let m = &st.mounts[n];
        files.push(File {
            dir: m.dir.clone(),
            rel,
            named: format!("{path} of service {service}"),
            archive: n,
            mount: Some(m.source.clone()),
        });
    }
    take_files(tenant, files, st.mounts.len(), tenants_dir).await
}

/// The data mounts of stack tenant `st` that hold a file `spec` declares: archived live, never
/// staged (their staging copies, from before the files were declared, are stale).
pub(super) fn mounts_holding(spec: &SqliteSpec, st: &StackTenant) -> std::collections::BTreeSet<usize> {
    let service = spec.service.as_deref().unwrap_or_default();
    spec.paths.iter().filter_map(|p| st.locate(service, p).ok()).map(|(n, _)| n).collect()
}

/// Copy `files` into a temp dir of `tenants_dir`, the substitutes of `archives` archives.
async fn take_files(tenant: &TenantId, files: Vec<File>, archives: usize, tenants_dir: &Path) -> Result<Copies> {
    let fail = |e: Error| Error::Backup(format!("tenant {tenant}: the SQLite copy failed, no snapshot taken: {e}"));
    crate::fsutil::create_private_dir(tenants_dir).map_err(|e| Error::io(tenants_dir, e))?;
    remove_stale(tenants_dir, &prefix(tenant));
    let tmp = tempfile::Builder::new()
        .prefix(&prefix(tenant))
        .tempdir_in(tenants_dir)
        .map_err(|e| Error::io(tenants_dir, e))?;
    let version = sqlite::version();
    let (mut subs, mut entries) = (vec![Substitutes::default(); archives], Vec::new());
    for (n, f) in files.into_iter().enumerate() {
        let out = tmp.path().join(format!("{n}.db"));
        // An empty dir of slipway's own per copy: the copier binds the data dir onto it.
        let mount_point = tmp.path().join(format!("{n}.root"));
        std::fs::create_dir(&mount_point).map_err(|e| fail(Error::io(&mount_point, e)))?;
        let c = sqlite::copy(&f.dir, &f.rel, &out, &mount_point)
            .await
            .map_err(|e| fail(if f.mount.is_some() { Error::Other(format!("{}: {e}", f.named)) } else { e }))?;
        if n == 0 {
            crate::context::crash_point("snapshot-sqlite-copying");
        }
        let Some(sub) = subs.get_mut(f.archive) else {
            return Err(fail(Error::Other(format!("{}: no archive {} to put it in", f.named, f.archive))));
        };
        sub.files.insert(f.rel.as_bytes().to_vec(), out);
        for side in ["-wal", "-shm", "-journal"] {
            sub.skip.insert(format!("{}{side}", f.rel).into_bytes());
        }
        entries.push(SqliteCopy {
            path: f.rel,
            mount: f.mount,
            sha256: c.sha256,
            size: c.size,
            sqlite_version: version.clone(),
        });
    }
    Ok(Copies { _tmp: tmp, subs, entries })
}

/// Remove the temp dirs of copies a killed snapshot of this tenant left in `tenants_dir`.
fn remove_stale(tenants_dir: &Path, prefix: &str) {
    let Ok(rd) = std::fs::read_dir(tenants_dir) else { return };
    for e in rd.flatten() {
        if e.file_name().to_string_lossy().starts_with(prefix) {
            let _ = crate::adapters::confined::remove_tree(&e.path());
        }
    }
}
