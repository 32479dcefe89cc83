//! A tenant's SQLite files (`[app.database] kind = "sqlite"`) in its daily snapshot: each
//! copied online through SQLite's backup API by the confined copier
//! (`adapters::sqlite`), the tenant running and never paused, and archived in place of the live
//! file, whose `-wal`, `-shm` and `-journal` are left out (a restore must not pair the copy
//! with a stale log).
//!
//! Invariants: the copies live in a hidden temp dir of the day's tenants dir, removed when the
//! snapshot of the tenant ends (and, after a kill, by the next snapshot of that tenant); one
//! copy that fails fails the tenant's snapshot, naming the tenant and the file, before its
//! archive is begun: nothing of it is recorded.

use std::path::Path;

use crate::adapters::archive::Substitutes;
use crate::adapters::sqlite;
use crate::config::SqliteSpec;
use crate::error::{Error, Result};
use crate::manifest::SqliteCopy;
use crate::types::TenantId;

/// The prefix of a tenant's temp dir of copies.
fn prefix(tenant: &TenantId) -> String {
    format!(".sqlite-copy-{tenant}-")
}

/// A tenant's copies, ready to be archived in place of its live files.
pub(super) struct Copies {
    /// The temp dir holding them (removed on drop).
    _tmp: tempfile::TempDir,
    /// What the archive puts in place and leaves out.
    pub subs: Substitutes,
    /// What the manifest entry says of them.
    pub entries: Vec<SqliteCopy>,
}

/// Copy every file `spec` declares in `tenant`'s data dir `data_dir` into a temp dir of
/// `tenants_dir`.
pub(super) async fn take(spec: &SqliteSpec, tenant: &TenantId, data_dir: &Path, tenants_dir: &Path) -> Result<Copies> {
    let fail = |e: Error| Error::Backup(format!("tenant {tenant}: the SQLite copy failed, no snapshot taken: {e}"));
    crate::fsutil::create_private_dir(tenants_dir).map_err(|e| Error::io(tenants_dir, e))?;
    remove_stale(tenants_dir, &prefix(tenant));
    let tmp = tempfile::Builder::new()
        .prefix(&prefix(tenant))
        .tempdir_in(tenants_dir)
        .map_err(|e| Error::io(tenants_dir, e))?;
    let version = sqlite::version();
    let (mut subs, mut entries) = (Substitutes::default(), Vec::new());
    for (n, rel) in spec.paths.iter().enumerate() {
        let out = tmp.path().join(format!("{n}.db"));
        // An empty dir of slipway's own per copy: the copier binds the data dir onto it.
        let mount_point = tmp.path().join(format!("{n}.root"));
        std::fs::create_dir(&mount_point).map_err(|e| fail(Error::io(&mount_point, e)))?;
        let c = sqlite::copy(data_dir, rel, &out, &mount_point).await.map_err(fail)?;
        if n == 0 {
            crate::context::crash_point("snapshot-sqlite-copying");
        }
        subs.files.insert(rel.as_bytes().to_vec(), out);
        for side in ["-wal", "-shm", "-journal"] {
            subs.skip.insert(format!("{rel}{side}").into_bytes());
        }
        entries.push(SqliteCopy { path: rel.clone(), sha256: c.sha256, size: c.size, sqlite_version: version.clone() });
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
