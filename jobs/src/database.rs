//! A tenant's declared database (`[app.database]`) as the jobs see it: dumped into the tenant's
//! snapshot beside its archive (one manifest entry for both), checked against that entry, and
//! replayed by a restore (the globals first). Shared by `snapshot`, `restore` and `drill`.
//!
//! Invariants: dumps are written into a hidden temp dir of the snapshot dir and moved to
//! `layout::dumps_dir_of` only when every one of them finished cleanly, so a failed or killed
//! dump leaves nothing a manifest could name; a dump is named by its position, never by its
//! database's name; before a replay every dump the manifest names is re-hashed (the manifest
//! and the files are untrusted: they may come from a remote), and nothing is replayed unless
//! all of them match.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::adapters::archive;
use crate::adapters::docker::Engine;
use crate::adapters::postgres::{self, Postgres};
use crate::config::{DatabaseSpec, Databases};
use crate::error::{Error, Result};
use crate::layout;
use crate::manifest::{DatabaseDumps, DumpEntry};
use crate::step::DbJournal;
use crate::types::TenantId;

/// How long a database that was just started has to accept connections.
const READY_WAIT: Duration = Duration::from_secs(60);

/// The tenant's database, reached as the spec says.
fn connect<'a>(engine: &'a Engine, spec: &DatabaseSpec, tenant: &TenantId) -> Result<Postgres<'a>> {
    let password = spec.password_file.as_deref().map(postgres::read_password).transpose()?;
    Ok(Postgres::new(engine, &spec.container_of(tenant), &spec.user, password))
}

/// Dumps taken into a hidden temp dir, not yet in place: dropped, they are removed.
pub struct Pending {
    tmp: tempfile::TempDir,
    final_dir: PathBuf,
    /// What the manifest entry will say of them.
    pub dumps: DatabaseDumps,
}

impl Pending {
    /// Move the dumps into place beside the archive (replacing a dir an earlier run of today
    /// left): called once the archive is complete, right before the manifest names both.
    pub async fn place(self) -> Result<DatabaseDumps> {
        let (t, f) = (self.tmp.keep(), self.final_dir);
        crate::blocking::run("placing the database dumps", move || -> Result<()> {
            crate::adapters::confined::remove_tree(&f).map_err(|e| Error::io(&f, e))?;
            std::fs::rename(&t, &f).map_err(|e| Error::io(&f, e))?;
            crate::fsutil::sync_dir(f.parent().unwrap_or(&f)).map_err(|e| Error::io(&f, e))
        })
        .await??;
        Ok(self.dumps)
    }
}

/// Dump `tenant`'s database into a temp dir of `snap_dir`, for beside the archive
/// `archive_rel`: the globals, then every declared database (or every one the server has, for
/// `all`). Err names the tenant and what failed; then no dump of this run is left.
///
/// With the tenant's data dir (`data_dir`, a single container's), a database container that
/// writes inside it is refused before anything is dumped: the tenant's file archive would hold a
/// copy of a running server's files, and a restore or an undo would swap them back under it (its
/// dumps are its backup). The same inspection records the image the server runs, for a drill to
/// boot the one that wrote the dump.
pub async fn dump(
    engine: &Engine,
    spec: &DatabaseSpec,
    tenant: &TenantId,
    data_dir: Option<&Path>,
    snap_dir: &Path,
    archive_rel: &str,
) -> Result<Pending> {
    let pg = connect(engine, spec, tenant)?;
    let server = engine.spec(pg.container()).await.map_err(|e| {
        Error::Backup(format!("tenant {tenant}: the database dump failed, no snapshot taken: {}", e.detail()))
    })?;
    if let Some(dir) = data_dir {
        if let Some(p) = server.writable_host_paths().into_iter().find(|p| Path::new(p).starts_with(dir)) {
            return Err(Error::Backup(format!(
                "tenant {tenant}: the database container {} writes to {p}, inside the tenant's data dir {}: its \
                 files would be archived, and put back by a restore or an undo, under the running server; give the \
                 database a dir or volume of its own outside {} (its dumps are its backup), then run again; nothing \
                 was taken",
                pg.container(),
                dir.display(),
                dir.display()
            )));
        }
    }
    let mut pending = dump_with(&pg, &spec.databases, tenant, snap_dir, archive_rel).await?;
    pending.dumps.image = Some(server.image_id()).filter(|i| crate::manifest::is_image_id(i));
    Ok(pending)
}

/// [`dump`] through `pg`, of `databases`.
async fn dump_with(
    pg: &Postgres<'_>,
    databases: &Databases,
    tenant: &TenantId,
    snap_dir: &Path,
    archive_rel: &str,
) -> Result<Pending> {
    let fail = |e: Error| {
        Error::Backup(format!("tenant {tenant}: the database dump failed, no snapshot taken: {}", e.detail()))
    };
    let final_dir = snap_dir.join(layout::dumps_dir_of(archive_rel));
    let parent = final_dir.parent().unwrap_or(snap_dir).to_path_buf();
    crate::fsutil::create_private_dir(&parent).map_err(|e| Error::io(&parent, e))?;
    let tmp = tempfile::Builder::new().prefix(".dumping-").tempdir_in(&parent).map_err(|e| Error::io(&parent, e))?;
    let (server_version, tool_version) = pg.versions().await.map_err(fail)?;
    let names = match databases {
        Databases::Named(v) => v.clone(),
        Databases::All => {
            let listed = pg.databases().await.map_err(fail)?;
            // What the server lists is input too: a name slipway would not accept is refused.
            if let Some(bad) = listed.iter().find(|d| !crate::config::is_db_name(d)) {
                return Err(fail(Error::Backup(format!(
                    "the server lists a database named {bad:?}, which slipway does not dump by \"all\"; name the \
                     databases in [app.database] databases"
                ))));
            }
            listed
        }
    };
    let mut dumps = Vec::new();
    for (n, db) in std::iter::once(None).chain(names.iter().map(|d| Some(d.as_str()))).enumerate() {
        let rel = layout::dump_of(archive_rel, n);
        let file = tmp.path().join(Path::new(&rel).file_name().unwrap_or_default());
        let d = pg.dump(db, &file).await.map_err(fail)?;
        if n == 1 {
            crate::context::crash_point("snapshot-dumping");
        }
        dumps.push(DumpEntry { database: db.map(str::to_string), path: rel, sha256: d.sha256, size: d.size });
    }
    let dumps = DatabaseDumps {
        kind: crate::config::DatabaseKind::Postgres.as_str().to_string(),
        container: pg.container().to_string(),
        server_version,
        tool_version,
        image: None,
        dumps,
    };
    Ok(Pending { tmp, final_dir, dumps })
}

/// Every dump `dumps` names under `dir`, each re-hashed against its entry; Err (naming the
/// tenant and the file) on the first that is missing, outside `dir` or different.
pub async fn verified(dir: &Path, tenant: &TenantId, dumps: &DatabaseDumps) -> Result<Vec<(Option<String>, PathBuf)>> {
    let mut out = Vec::new();
    for d in &dumps.dumps {
        let path = layout::under(dir, &d.path, &format!("tenant {tenant}'s database dump"))?;
        let p = path.clone();
        let got = crate::blocking::run("hashing a database dump", move || archive::sha256_file(&p)).await?;
        match got {
            Ok((h, n)) if h == d.sha256 && n == d.size => out.push((d.database.clone(), path)),
            Ok((h, n)) => {
                return Err(Error::Backup(format!(
                    "tenant {tenant}: the database dump {} is {n} bytes with sha256 {h}, its manifest says {} bytes \
                     with sha256 {}; nothing was touched",
                    path.display(),
                    d.size,
                    d.sha256
                )))
            }
            Err(e) => {
                return Err(Error::Backup(format!(
                    "tenant {tenant}: the database dump {} cannot be read: {e}; nothing was touched",
                    path.display()
                )))
            }
        }
    }
    Ok(out)
}

/// Replay `tenant`'s verified dumps into `container` (the tenant's own database container), for
/// a restore: the container is started if it is not running, the server waited for, then the
/// globals replayed (roles and tablespaces: one the server has is not created again, its
/// `ALTER ROLE` lines still apply; any other failing statement fails the replay before any
/// database is touched), then each database in one transaction.
pub async fn replay(
    engine: &Engine,
    spec: &DatabaseSpec,
    tenant: &TenantId,
    container: &str,
    dumps: &[(Option<String>, PathBuf)],
) -> Result<usize> {
    let password = spec.password_file.as_deref().map(postgres::read_password).transpose()?;
    let pg = Postgres::new(engine, container, &spec.user, password);
    let fail = |e: Error| Error::Backup(format!("tenant {tenant}: the database replay failed: {}", e.detail()));
    engine.start(container).await.map_err(fail)?;
    pg.wait_ready(READY_WAIT).await.map_err(fail)?;
    for (db, path) in dumps {
        if db.is_none() {
            pg.replay_globals(path).await.map_err(|e| {
                Error::Backup(format!(
                    "tenant {tenant}: the replay of the globals (roles, tablespaces) failed, no database was \
                     replayed: {}",
                    e.detail()
                ))
            })?;
        }
    }
    replay_databases(&pg, tenant, dumps).await
}

/// Each database of `dumps` (the globals aside) replayed into `pg` in one transaction.
async fn replay_databases(pg: &Postgres<'_>, tenant: &TenantId, dumps: &[(Option<String>, PathBuf)]) -> Result<usize> {
    let fail = |e: Error| Error::Backup(format!("tenant {tenant}: the database replay failed: {}", e.detail()));
    let mut n = 0;
    for (db, path) in dumps {
        if let Some(db) = db {
            pg.replay(db, path).await.map_err(fail)?;
            n += 1;
        }
    }
    Ok(n)
}

/// The longest check answer kept (the rest is cut, marked with `…`).
const MAX_ANSWER: usize = 200;

/// A drill's database: the tenant's verified dumps replayed into the drill's scratch database
/// container `container` (started, waited for): the globals first (the roles the dumps' objects
/// are owned by), then each database in one transaction; then the app's `check` query, run in
/// the first database. Returns the check's answer ("" without a check). Err names the tenant
/// and whether the replay or the check failed.
pub async fn drill(
    engine: &Engine,
    spec: &DatabaseSpec,
    tenant: &TenantId,
    container: &str,
    dumps: &[(Option<String>, PathBuf)],
) -> Result<String> {
    let password = spec.password_file.as_deref().map(postgres::read_password).transpose()?;
    let pg = Postgres::new(engine, container, &spec.user, password);
    let fail = |e: Error| Error::Backup(format!("tenant {tenant}: the drill's database replay failed: {}", e.detail()));
    engine.start(container).await.map_err(fail)?;
    pg.wait_ready(READY_WAIT).await.map_err(fail)?;
    for (db, path) in dumps {
        if db.is_none() {
            pg.run_script("postgres", path).await.map_err(fail)?;
        }
    }
    replay_databases(&pg, tenant, dumps).await?;
    let Some(check) = &spec.check else { return Ok(String::new()) };
    let Some(first) = dumps.iter().find_map(|(d, _)| d.as_deref()) else {
        return Err(Error::Backup(format!("tenant {tenant}: the snapshot holds no database dump to run the check in")));
    };
    let answer = pg.answer(first, check).await.map_err(|e| {
        Error::Backup(format!(
            "tenant {tenant}: the check query {check:?} failed on the replayed database \"{first}\": {e}"
        ))
    })?;
    Ok(match answer.char_indices().nth(MAX_ANSWER) {
        Some((i, _)) => format!("{}…", &answer[..i]),
        None => answer,
    })
}

/// The tenant's database as a rollout journaled it.
fn connect_journaled<'a>(engine: &'a Engine, dj: &DbJournal) -> Result<Postgres<'a>> {
    let password = dj.password_file.as_deref().map(postgres::read_password).transpose()?;
    Ok(Postgres::new(engine, &dj.container, &dj.user, password))
}

/// The databases (globals aside) a rollout's pre-switch dumps hold, in order.
fn dumped_names(dj: &DbJournal) -> Vec<String> {
    dj.dumps.iter().flat_map(|d| &d.dumps).filter_map(|d| d.database.clone()).collect()
}

/// Undo of a rollout, before the replay: dump the tenant's database as the failed new version
/// left it into the run's dir (`layout::undo_kept_dumps_base`), so that what the replay
/// replaces is kept as a checked dump too. The database container is started if it is not
/// running. Returns what the dumps are (paths relative to the run dir).
pub async fn keep_as_left(engine: &Engine, dj: &DbJournal, tenant: &TenantId) -> Result<DatabaseDumps> {
    let pg = connect_journaled(engine, dj)?;
    engine.start(&dj.container).await?;
    pg.wait_ready(READY_WAIT).await?;
    let names = Databases::Named(dumped_names(dj));
    let pending = dump_with(&pg, &names, tenant, &dj.run_dir, &layout::undo_kept_dumps_base(tenant.as_str())).await?;
    pending.place().await
}

/// The names an undo of run dir `run_dir` gives database `db`'s scratch copy (the replay's
/// target) and the database it replaces (kept): slipway's own, derived from the run id so that
/// a second undo of the same run finds them, at most 63 bytes.
pub fn undo_names(run_dir: &Path, db: &str, n: usize) -> (String, String) {
    let run = run_dir.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let tag: String = run.chars().filter(char::is_ascii_alphanumeric).collect::<String>().to_ascii_lowercase();
    let tag = &tag[tag.len().saturating_sub(24)..];
    let scratch = format!("slipway_undo_{tag}_{n}");
    let head: String = db.chars().take(63 - 8 - tag.len()).collect();
    (scratch, format!("{head}_undone_{tag}"))
}

/// Undo of a rollout: make every database of the pre-switch dumps exactly what they hold,
/// each re-hashed against the journal first (nothing replayed unless all match), replayed into
/// a scratch database in one transaction and swapped in by renames
/// ([`Postgres::replay_swapped`]); the database each replaced is kept under its `_undone_`
/// name. Returns those names. Err names the tenant; then a database whose swap had not
/// committed is as it was.
pub async fn replay_pre_switch(engine: &Engine, dj: &DbJournal, tenant: &TenantId) -> Result<Vec<String>> {
    let fail = |e: Error| {
        Error::Backup(format!("tenant {tenant}: the replay of the pre-switch database dump failed: {}", e.detail()))
    };
    let Some(dumps) = &dj.dumps else { return Ok(Vec::new()) };
    let files = verified(&dj.run_dir, tenant, dumps).await.map_err(fail)?;
    let pg = connect_journaled(engine, dj).map_err(fail)?;
    engine.start(&dj.container).await.map_err(fail)?;
    pg.wait_ready(READY_WAIT).await.map_err(fail)?;
    let mut kept = Vec::new();
    for (n, (db, path)) in files.iter().enumerate() {
        let Some(db) = db else { continue };
        let (scratch, replaced) = undo_names(&dj.run_dir, db, n);
        pg.replay_swapped(db, path, &scratch, &replaced).await.map_err(fail)?;
        kept.push(replaced);
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_undo_names_are_the_runs_own_and_fit_postgres() {
        let run = Path::new("/b/rollout/20261205T211300Z-ab12");
        let (scratch, replaced) = undo_names(run, "app", 1);
        assert_eq!(scratch, "slipway_undo_20261205t211300zab12_1");
        assert_eq!(replaced, "app_undone_20261205t211300zab12");
        let long = "d".repeat(63);
        let (s, r) = undo_names(run, &long, 1);
        assert!(s.len() <= 63 && r.len() <= 63 && crate::config::is_db_name(&r), "{s} {r}");
        assert_eq!(undo_names(run, "app", 1), (scratch, replaced), "the same run gives the same names");
    }
}
