//! SQLite tenants (#27 item 3): `[app.database] kind = "sqlite"`. Each declared file is copied
//! through SQLite's online backup API by a copier confined to the tenant's data dir (chroot in
//! a private mount namespace, the file owner's uid), while the tenant runs and is never paused;
//! the copy is archived in place of the live file, its `-wal`, `-shm` and `-journal` left out.
//! The hostile tests first: the tenant controls every name SQLite opens by path.

use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::reports::Snapshot;
use crate::support::{sh, Sandbox};

/// The fleet.toml lines of a SQLite tenant whose database is `paths`.
fn sqlite_app(paths: &str) -> String {
    format!("[app.database]\nkind = \"sqlite\"\npaths = {paths}\n")
}

/// The uid and gid the tenant's app writes as (not root, as in most images).
const APP_UID: u32 = 1000;

/// Run `sql` on the SQLite file `db` with Debian's `sqlite3` (as root: a reader of the test's).
pub(crate) fn sql(db: &Path, sql: &str) -> String {
    sh(Command::new("sqlite3").args(["-cmd", ".timeout 10000"]).arg(db).arg(sql)).trim().to_string()
}

/// A tenant's own SQLite database at `db` holding `marker`, in WAL mode, owned by the app.
pub(crate) fn make_db(db: &Path, marker: &str) {
    sql(db, &format!("pragma journal_mode=wal; create table m(v text); insert into m values ('{marker}');"));
    chown_app(db);
}

fn chown_app(p: &Path) {
    std::os::unix::fs::lchown(p, Some(APP_UID), Some(APP_UID)).unwrap();
}

/// (hex sha256, size) of a file.
pub(crate) fn sha256_file(p: &Path) -> (String, u64) {
    use sha2::Digest;
    let bytes = std::fs::read(p).unwrap();
    (hex::encode(sha2::Sha256::digest(&bytes)), bytes.len() as u64)
}

/// A file's bytes and mtime (what a leak or a write would change).
pub(crate) fn seal(p: &Path) -> (Vec<u8>, i64, i64) {
    let m = std::fs::symlink_metadata(p).unwrap();
    (std::fs::read(p).unwrap(), m.mtime(), m.mtime_nsec())
}

/// The names in the tar.zst `archive`.
pub(crate) fn archived_names(archive: &Path) -> Vec<String> {
    let out = sh(Command::new("sh").arg("-c").arg(format!("zstd -dc '{}' | tar -t", archive.display())));
    out.lines().map(|l| l.trim_start_matches("./").to_string()).collect()
}

/// Whether today's manifest lists `tenant`.
fn manifest_names(s: &Sandbox, tenant: &str) -> bool {
    let daily = s.backups().join("daily");
    let Ok(days) = std::fs::read_dir(&daily) else { return false };
    days.flatten().any(|d| {
        std::fs::read_to_string(d.path().join("MANIFEST.json")).is_ok_and(|m| {
            m.contains(&format!("\"tenant\": \"{tenant}\"")) || m.contains(&format!("\"tenant\":\"{tenant}\""))
        })
    })
}

/// The containers named `name` the engine paused between `since` and now.
fn paused_since(since: f64, name: &str) -> Vec<String> {
    let until = now_s() + 1.0;
    let out = sh(Command::new("docker").args([
        "events",
        "--since",
        &format!("{since:.6}"),
        "--until",
        &format!("{until:.6}"),
        "--filter",
        "event=pause",
        "--format",
        "{{.Actor.Attributes.name}}",
    ]));
    out.lines().filter(|n| *n == name).map(str::to_string).collect()
}

fn now_s() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

/// A writer on the host, as the app's uid: python3's sqlite3 committing, in WAL mode, one row
/// and one bump of `tally.n` per transaction into `db`, until dropped. A consistent copy has
/// as many rows as its tally says.
pub(crate) struct Writer {
    child: Child,
    stop: PathBuf,
}

const WRITER: &str = r#"
import os, sqlite3, sys, time
db, stop, ready, mode = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
c = sqlite3.connect(db, isolation_level=None, timeout=30)
c.execute("pragma journal_mode=" + mode)
c.execute("create table if not exists rows(id integer primary key, v text not null)")
c.execute("create table if not exists tally(n integer not null)")
if c.execute("select count(*) from tally").fetchone()[0] == 0:
    c.execute("insert into tally values (0)")
open(ready, "w").close()
while not os.path.exists(stop):
    c.execute("begin immediate")
    c.execute("insert into rows(v) values (hex(randomblob(200)))")
    c.execute("update tally set n = n + 1")
    c.execute("commit")
    time.sleep(0.002)
"#;

impl Writer {
    /// `mode`: the journal mode, "wal" or "delete" (a rollback journal that comes and goes).
    fn start(s: &Sandbox, db: &Path, mode: &str) -> Writer {
        Writer::start_as(s, db, mode, APP_UID)
    }

    /// [`Writer::start`] as `uid` (root, say, for a volume under Docker's root dir, which the
    /// app's uid cannot reach from the host).
    pub(crate) fn start_as(s: &Sandbox, db: &Path, mode: &str, uid: u32) -> Writer {
        let flags = s.root().join("writer");
        std::fs::create_dir_all(&flags).unwrap();
        chown_app(&flags);
        let (stop, ready) = (flags.join("stop"), flags.join("ready"));
        let child = Command::new("setpriv")
            .args(["--reuid", &uid.to_string(), "--regid", &uid.to_string(), "--clear-groups"])
            .args(["/usr/bin/python3", "-c", WRITER])
            .arg(db)
            .args([&stop, &ready])
            .arg(mode)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let w = Writer { child, stop };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready.exists() {
            assert!(Instant::now() < deadline, "the writer did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        w
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.stop, "");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A sandbox with tenant t1 (its data dir the app's) running the v1 fixture.
fn tenant(paths: &str) -> (Sandbox, String) {
    tenant_with(paths, "")
}

/// [`tenant`] with `extra` lines in `[app.database]`.
fn tenant_with(paths: &str, extra: &str) -> (Sandbox, String) {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let name = s.add_tenant("t1", &v1);
    chown_app(&s.data_dir("t1"));
    // The app's uid reaches its data dir (and the writer's flags beside the sandbox's root).
    use std::os::unix::fs::PermissionsExt;
    for d in [s.root().to_path_buf(), s.root().join("data")] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    s.write_fleet(&s.fleet_app(&v1, &format!("{}{extra}", sqlite_app(paths))));
    (s, name)
}

/// How a case makes the tenant's file.
type Make<'a> = Box<dyn Fn() + 'a>;

#[test]
fn a_sqlite_file_that_is_a_symlink_fifo_or_device_or_has_symlinked_side_files_fails_and_leaks_or_writes_nothing() {
    let (s, _name) = tenant("[\"a.db\"]");
    let host = s.root().join("host");
    std::fs::create_dir_all(&host).unwrap();
    let secret = host.join("secret.db");
    make_db(&secret, "the host secret");
    std::fs::write(host.join("passwd"), "root:x:0:0:host\n").unwrap();
    std::fs::write(host.join("shm"), "the host's shm victim\n").unwrap();
    let sealed = || [seal(&secret), seal(&host.join("passwd")), seal(&host.join("shm"))];
    let before = sealed();
    let a = s.data_dir("t1").join("a.db");
    let clear = |a: &Path| {
        for side in ["", "-wal", "-shm", "-journal"] {
            let _ = std::fs::remove_file(format!("{}{side}", a.display()));
        }
    };
    let cases: Vec<(&str, Make)> = vec![
        ("an absolute symlink to a host database", Box::new(|| symlink(&secret, &a).unwrap())),
        ("a ../.. symlink to a host database", Box::new(|| symlink("../../host/secret.db", &a).unwrap())),
        (
            "-wal and -shm symlinks to host files",
            Box::new(|| {
                make_db(&a, "t1 own");
                symlink(host.join("passwd"), format!("{}-wal", a.display())).unwrap();
                symlink("../../host/shm", format!("{}-shm", a.display())).unwrap();
            }),
        ),
        (
            "a -journal symlink to a host file",
            Box::new(|| {
                sql(&a, "create table m(v text); insert into m values ('t1, rollback journal');");
                chown_app(&a);
                symlink(host.join("passwd"), format!("{}-journal", a.display())).unwrap();
            }),
        ),
        ("missing", Box::new(|| {})),
        (
            "a fifo",
            Box::new(|| {
                sh(Command::new("mkfifo").arg(&a));
            }),
        ),
        (
            "a device node",
            Box::new(|| {
                sh(Command::new("mknod").arg(&a).args(["c", "1", "3"]));
            }),
        ),
    ];
    for (what, make) in cases {
        clear(&a);
        make();
        let t = Instant::now();
        let out = s.slipway(&["snapshot", "--json"]);
        assert_eq!(out.code, 1, "{what}: {} {}", out.stdout, out.stderr);
        assert!(t.elapsed() < Duration::from_secs(60), "{what}: the snapshot hung");
        let snap: Snapshot = out.report();
        let row = &snap.archives[0];
        assert_eq!(row.outcome, "failed", "{what}: {row:?}");
        let detail = row.detail.clone().unwrap_or_default();
        assert!(detail.contains("tenant t1") && detail.contains("a.db"), "{what}: {detail}");
        assert!(!manifest_names(&s, "t1"), "{what}: a failed copy was recorded as a backup");
        assert_eq!(sealed(), before, "{what}: a host file was read into or written by the snapshot");
    }
}

#[test]
fn names_swapped_for_symlinks_while_the_copier_runs_stay_inside_the_tenant_and_host_files_are_untouched() {
    let (s, _name) = tenant("[\"a.db\"]");
    let host = s.root().join("host");
    std::fs::create_dir_all(&host).unwrap();
    let secret = host.join("secret.db");
    make_db(&secret, "the host secret");
    std::fs::write(host.join("passwd"), "root:x:0:0:host\n").unwrap();
    std::fs::write(host.join("shm"), "the host's shm victim\n").unwrap();
    // The host's files and the names in its dir (SQLite creates a database's -wal and -shm
    // beside the file it resolved: a copier outside the chroot would add them here).
    let sealed = || {
        let mut names: Vec<_> = std::fs::read_dir(&host).unwrap().flatten().map(|e| e.file_name()).collect();
        names.sort();
        (names, [seal(&secret), seal(&host.join("passwd")), seal(&host.join("shm"))])
    };
    let before = sealed();
    let a = s.data_dir("t1").join("a.db");
    let side = |x: &str| PathBuf::from(format!("{}{x}", a.display()));
    // After the copier's own checks, before SQLite opens anything: the side files, then the
    // database itself, become symlinks out of the data dir (absolute and ../..).
    for round in ["side files", "database"] {
        for x in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(side(x));
        }
        make_db(&a, "t1 own");
        // Root's file: the copier stays root, and only its confinement keeps it in the tenant.
        std::os::unix::fs::lchown(&a, Some(0), Some(0)).unwrap();
        let (child, reached, stderr) = s.spawn_held_at(&["snapshot", "--force", "--json"], "sqlite-checked", 4000);
        assert!(reached, "{round}: the copier never reached its checked point");
        if round == "side files" {
            symlink(host.join("passwd"), side("-wal")).unwrap();
            std::fs::remove_file(side("-shm")).ok();
            symlink("../../host/shm", side("-shm")).unwrap();
        } else {
            std::fs::remove_file(&a).unwrap();
            symlink("../../host/secret.db", &a).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let said = stderr.join().unwrap();
        assert_eq!(sealed(), before, "{round}: a host file was read or written: {stdout} {said}");
        let snap: Snapshot = crate::support::reports::parse(&stdout, &said).report();
        let row = &snap.archives[0];
        // Either the copy failed, or what it archived is the tenant's own.
        if row.outcome == "archived" {
            let to = s.root().join(format!("restored-{}", round.replace(' ', "-")));
            let r = s.slipway(&["restore", "--tenant", "t1", "--latest", "--to", to.to_str().unwrap()]);
            assert_eq!(r.code, 0, "{} {}", r.stdout, r.stderr);
            assert_eq!(sql(&to.join("a.db"), "select v from m"), "t1 own", "{round}");
        } else {
            assert_eq!(row.outcome, "failed", "{round}: {row:?}");
        }
    }
}

#[test]
fn a_sqlite_path_with_dotdot_in_fleet_toml_is_refused_naming_app_key_and_value_and_touches_nothing() {
    let (s, name) = tenant("[\"../t2/app.db\"]");
    let out = s.slipway(&["snapshot"]);
    assert_eq!(out.code, 2, "{} {}", out.stdout, out.stderr);
    let said = format!("{}{}", out.stdout, out.stderr);
    for w in ["fleet.toml", "app \"app\"", "database.paths", "../t2/app.db"] {
        assert!(said.contains(w), "{w} not in: {said}");
    }
    assert!(!s.backups().join("daily").exists(), "a refused snapshot wrote into the backup store");
    assert_eq!(s.inspect(&name)["State"]["Running"], true);
}

#[test]
fn a_sqlite_tenant_under_constant_writes_is_copied_without_a_pause_and_restores_to_a_consistent_database() {
    under_writes("wal");
}

#[test]
fn a_rollback_journal_sqlite_tenant_under_constant_writes_is_copied_without_a_pause_and_restores_consistent() {
    under_writes("delete");
}

/// A snapshot taken while a writer commits to `db`: its output, when it began, and the rows
/// before and after it (checked: it succeeded, and the writer wrote during it).
pub(crate) struct SnapshotUnderWrites {
    pub out: crate::support::Out,
    pub since: f64,
    pub before: u64,
    pub after: u64,
}

/// `slipway snapshot --json` once the writer of `db` has been writing for half a second.
pub(crate) fn snapshot_under_writes(s: &Sandbox, db: &Path) -> SnapshotUnderWrites {
    std::thread::sleep(Duration::from_millis(500));
    let count = || sql(db, "select count(*) from rows").parse::<u64>().unwrap();
    let since = now_s();
    let before = count();
    let out = s.slipway(&["snapshot", "--json"]);
    let after = count();
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert!(after > before, "the writer did not write during the snapshot ({before} rows)");
    SnapshotUnderWrites { out, since, before, after }
}

/// A tenant whose writer commits constantly in journal mode `mode`, snapshotted and restored.
fn under_writes(mode: &str) {
    let (s, name) = tenant("[\"db/app.db\"]");
    let dir = s.data_dir("t1").join("db");
    std::fs::create_dir_all(&dir).unwrap();
    chown_app(&dir);
    s.write_data("t1", "notes.txt", "files beside the database\n");
    let db = dir.join("app.db");
    let writer = Writer::start(&s, &db, mode);
    let SnapshotUnderWrites { out, since, before, after } = snapshot_under_writes(&s, &db);
    assert!(paused_since(since, &name).is_empty(), "the SQLite tenant was paused");
    let snap: Snapshot = out.report();
    let row = &snap.archives[0];
    assert_eq!((row.pause_ms, row.staging.as_deref()), (0, Some("not_held")), "{row:?}");
    assert_eq!(row.sqlite.len(), 1, "{row:?}");
    assert_eq!(row.sqlite[0].path, "db/app.db");
    assert!(!row.sqlite[0].sqlite_version.is_empty());
    // The copy is in the archive at the file's own path; the live WAL and shm are not.
    let names = archived_names(&row.path);
    assert!(names.iter().any(|n| n == "db/app.db"), "{names:?}");
    assert!(!names.iter().any(|n| n.ends_with("-wal") || n.ends_with("-shm")), "{names:?}");
    // The copier wrote nothing as root into the tenant's tree (the app could not open it).
    for p in crate::support::files_under(&s.data_dir("t1")) {
        let m = std::fs::symlink_metadata(&p).unwrap();
        assert!(p.ends_with("notes.txt") || m.uid() == APP_UID, "{} is owned by uid {}", p.display(), m.uid());
    }
    drop(writer);
    // Restore needs nothing new: the copy is a plain file of the archive, consistent.
    let to = s.root().join("restored");
    let r = s.slipway(&["restore", "--tenant", "t1", "--latest", "--to", to.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{} {}", r.stdout, r.stderr);
    let copy = to.join("db/app.db");
    assert_eq!(sql(&copy, "pragma integrity_check"), "ok");
    let rows = sql(&copy, "select count(*) from rows").parse::<u64>().unwrap();
    assert_eq!(sql(&copy, "select n from tally"), rows.to_string(), "a torn copy");
    assert!(before <= rows && rows <= after, "{rows} rows, not between {before} and {after}");
    let (hash, size) = sha256_file(&copy);
    assert_eq!((hash, size), (row.sqlite[0].sha256.clone(), row.sqlite[0].size), "the manifest's hash is the copy's");
    assert_eq!(std::fs::read_to_string(to.join("notes.txt")).unwrap(), "files beside the database\n");
}

#[test]
fn a_snapshot_killed_after_a_sqlite_copy_records_nothing_and_the_next_one_takes_it_whole() {
    let (s, _name) = tenant("[\"app.db\"]");
    let db = s.data_dir("t1").join("app.db");
    make_db(&db, "t1 own");
    let out = s.slipway_env(&["snapshot"], &[("SLIPWAY_TEST_CRASH_AT", "snapshot-sqlite-copying")]);
    assert!(out.stderr.contains("slipway test point reached: snapshot-sqlite-copying"), "{}", out.stderr);
    assert_ne!(out.code, 0);
    assert!(!manifest_names(&s, "t1"), "a killed copy is no backup");
    let archives: Vec<_> = crate::support::files_under(&s.backups())
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".tar.zst"))
        .collect();
    assert!(archives.is_empty(), "{archives:?}");
    let out = s.slipway(&["snapshot", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert!(manifest_names(&s, "t1"));
    // The killed run's copies are gone: only the archive and its list are left.
    let left: Vec<_> = crate::support::files_under(&s.backups().join("daily"))
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".sqlite-copy-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_drill_checks_the_restored_sqlite_copy_with_the_query_and_a_failing_query_fails_it_naming_the_tenant() {
    let (s, name) = tenant_with("[\"app.db\"]", "check = \"select count(*) from m\"\n");
    let db = s.data_dir("t1").join("app.db");
    make_db(&db, "one");
    sql(&db, "insert into m values ('two'); insert into m values ('three');");
    let out = s.slipway(&["snapshot", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    // The live database changes after the snapshot: the check answers from the restored copy.
    sql(&db, "delete from m");
    let out = s.slipway(&["drill", "--tenant", "t1", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let t = &out.json()["report"]["tenants"][0];
    assert_eq!(t["outcome"], "passed", "{t}");
    assert_eq!(t["db_check"], "3", "{t}");
    assert_eq!(sql(&db, "select count(*) from m"), "0", "the drill touched the live database");
    let status = s.slipway(&["status", "--json"]).json();
    assert_eq!(status["report"]["apps"][0]["tenants"][0]["last_db_drill"]["check"], "3", "{status}");
    assert_eq!(s.inspect(&name)["State"]["Running"], true);

    // A query that errors fails the drill, naming the tenant and the query.
    let fleet = std::fs::read_to_string(s.root().join("fleet/fleet.toml")).unwrap();
    s.write_fleet(&fleet.replace("select count(*) from m", "select count(*) from no_such_table"));
    let out = s.slipway(&["drill", "--tenant", "t1", "--json"]);
    assert_eq!(out.code, 1, "{} {}", out.stdout, out.stderr);
    let t = &out.json()["report"]["tenants"][0];
    assert_eq!(t["outcome"], "failed", "{t}");
    let detail = t["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("tenant t1") && detail.contains("no_such_table"), "{detail}");
}
