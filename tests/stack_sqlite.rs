//! A stack tenant's SQLite files (#27 item 3, "or per service of a stack tenant"):
//! `[app.database] kind = "sqlite"` with `service` and absolute container `paths` under that
//! service's data mounts. Each file is copied online by the same confined copier as a single
//! container's, the mount that holds it archived live with the copy in the file's place; the
//! writers are not held for that mount, while a mount that holds no declared file keeps its
//! hold. The fixture images carry no SQLite, so the app's writer is a process on the host
//! writing into the app's named volume (as root: Docker's root dir is closed to other uids).

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use crate::sqlite::{
    archived_names, make_db, seal, sha256_file, snapshot_under_writes, sql, SnapshotUnderWrites, Writer,
};
use crate::stack::{compose_tenant, images, stack_fleet, Compose, Images};
use crate::stack_backup::{entry_of, now_s, paused_since};
use crate::support::reports::Snapshot;
use crate::support::Sandbox;

/// `docker-compose up -d` a two-service tenant: app (its data in the named volume `appdata`)
/// and worker (no data).
fn app_and_worker(s: &Sandbox, tenant: &str, img: &Images) -> Compose {
    let project = format!("{}{tenant}", s.id()).to_lowercase();
    let file = s.root().join(format!("{tenant}.compose.yml"));
    let id = s.id();
    let yaml = format!(
        r#"version: "3.7"
services:
  app:
    image: {app}
    labels: {{ slipway.test: "{id}" }}
    volumes: [ "appdata:/data" ]
    restart: unless-stopped
  worker:
    image: {worker}
    labels: {{ slipway.test: "{id}" }}
    restart: unless-stopped
volumes:
  appdata: {{ labels: {{ slipway.test: "{id}" }} }}
networks:
  default: {{ labels: {{ slipway.test: "{id}" }} }}
"#,
        app = img.app,
        worker = img.worker,
    );
    std::fs::write(&file, yaml).unwrap();
    let c = Compose { project, file };
    c.run(&["up", "-d"]);
    c
}

/// The fleet.toml of [`app_and_worker`] with `database` (an `[app.database]` table).
fn app_and_worker_fleet(s: &Sandbox, img: &Images, database: &str) -> String {
    format!(
        "[[app]]\nname = \"agent\"\nselect = \"slipway.test={id}\"\nstop_timeout_s = 2\n\
         health = {{ path = \"/api/health\", port = 8080, timeout_s = 15, service = \"app\" }}\n\
         [app.services.app]\nimage = \"{app}\"\nwrites = true\norder = 1\ndata = [\"/data\"]\n\
         [app.services.worker]\nimage = \"{worker}\"\norder = 2\n{database}",
        id = s.id(),
        app = img.app,
        worker = img.worker,
    )
}

/// `[app.database]` declaring the SQLite files `paths` of service `service`.
fn sqlite_of(service: &str, paths: &str, extra: &str) -> String {
    format!("[app.database]\nkind = \"sqlite\"\nservice = \"{service}\"\npaths = {paths}\n{extra}")
}

/// Whether a manifest of the daily snapshots names `tenant`.
fn recorded(s: &Sandbox, tenant: &str) -> bool {
    let Ok(days) = std::fs::read_dir(s.backups().join("daily")) else { return false };
    days.flatten().any(|d| entry_of(&d.path(), tenant).is_some())
}

#[test]
fn a_stack_tenants_sqlite_file_written_all_along_is_copied_without_pausing_the_stack_and_restored_consistent() {
    let s = Sandbox::new();
    let img = images(&s);
    let t1 = app_and_worker(&s, "t1", &img);
    let vol = t1.volume_dir("appdata");
    std::fs::create_dir_all(vol.join("db")).unwrap();
    std::fs::write(vol.join("notes.txt"), "files beside the database\n").unwrap();
    let db = vol.join("db/app.db");
    s.write_fleet(&app_and_worker_fleet(
        &s,
        &img,
        &sqlite_of("app", "[\"/data/db/app.db\"]", "check = \"select count(*) from rows\"\n"),
    ));
    let names = vec![t1.container("app"), t1.container("worker")];
    let writer = Writer::start_as(&s, &db, "wal", 0);
    let SnapshotUnderWrites { out, since, before, after } = snapshot_under_writes(&s, &db);
    // Its only database is SQLite: no container of the stack was paused.
    assert!(paused_since(since, &names).is_empty(), "{:?}", paused_since(since, &names));
    let snap: Snapshot = out.report();
    let row = snap.archives.iter().find(|a| a.tenant.as_deref() == Some(&t1.project)).unwrap();
    assert_eq!(
        (row.outcome.as_str(), row.pause_ms, row.staging.as_deref()),
        ("archived", 0, Some("not_held")),
        "{row:?}"
    );
    assert_eq!(row.sqlite.len(), 1, "{row:?}");
    let copy = &row.sqlite[0];
    assert_eq!(copy.path, "db/app.db", "{copy:?}");
    assert_eq!(copy.mount.as_deref(), Some(format!("{}_appdata", t1.project).as_str()), "{copy:?}");
    // The manifest entry lists it; the mount's archive carries the copy, not the live WAL.
    let e = entry_of(&snap.dir, &t1.project).expect("no manifest entry");
    assert_eq!(e["sqlite"][0]["path"], "db/app.db", "{e}");
    let part = snap.dir.join(e["mounts"][0]["path"].as_str().unwrap());
    let archived = archived_names(&part);
    assert!(archived.iter().any(|n| n == "db/app.db"), "{archived:?}");
    assert!(!archived.iter().any(|n| n.ends_with("-wal") || n.ends_with("-shm")), "{archived:?}");
    drop(writer);

    // The copy is consistent: integrity ok, as many rows as its tally, between before and after.
    let to = s.root().join("restored");
    let r = s.slipway(&["restore", "--tenant", &t1.project, "--latest", "--to", to.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{} {}", r.stdout, r.stderr);
    let restored = to.join("0/db/app.db");
    assert_eq!(sql(&restored, "pragma integrity_check"), "ok");
    let rows = sql(&restored, "select count(*) from rows").parse::<u64>().unwrap();
    assert_eq!(sql(&restored, "select n from tally"), rows.to_string(), "a torn copy");
    assert!(before <= rows && rows <= after, "{rows} rows, not between {before} and {after}");
    assert_eq!(sha256_file(&restored), (copy.sha256.clone(), copy.size), "the manifest's hash is the copy's");
    assert_eq!(std::fs::read_to_string(to.join("0/notes.txt")).unwrap(), "files beside the database\n");

    // A restore in place gives the stack its database back, as the snapshot had it.
    for side in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{side}", db.display()));
    }
    let r = s.slipway(&["restore", "--tenant", &t1.project, "--latest", "--json"]);
    assert_eq!(r.code, 0, "{} {}", r.stdout, r.stderr);
    let live = t1.volume_dir("appdata").join("db/app.db");
    assert_eq!(sql(&live, "pragma integrity_check"), "ok");
    assert_eq!(sql(&live, "select count(*) from rows"), rows.to_string());
    for n in &names {
        assert_eq!(s.inspect(n)["State"]["Running"], true, "{n}");
    }

    // A drill checks the restored copy with the query, the live database untouched.
    sql(&live, "delete from rows");
    let out = s.slipway(&["drill", "--tenant", &t1.project, "--latest", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let t = &out.json()["report"]["tenants"][0];
    assert_eq!(t["outcome"], "passed", "{t}");
    assert_eq!(t["db_check"], rows.to_string(), "{t}");
    assert_eq!(sql(&live, "select count(*) from rows"), "0", "the drill touched the live database");
}

#[test]
fn a_stack_mount_without_a_declared_sqlite_file_keeps_its_writers_hold_while_the_sqlite_mounts_writer_is_not_held() {
    let s = Sandbox::new();
    let img = images(&s);
    let t1 = compose_tenant(&s, "t1", &img);
    // The app's own data, as an app running as its uid keeps it (its reader makes the WAL's
    // -shm beside the database as that uid).
    let vol = t1.volume_dir("appdata");
    std::os::unix::fs::lchown(&vol, Some(1000), Some(1000)).unwrap();
    let db = vol.join("app.db");
    make_db(&db, "t1 own");
    let database = sqlite_of("app", "[\"/data/app.db\"]", "");
    s.write_fleet(&format!("{}{database}", stack_fleet(&s, &img.app, &img.worker, &img.side, "")));
    let names: Vec<String> = ["app", "side", "worker"].map(|x| t1.container(x)).to_vec();
    let since = now_s();
    let out = s.slipway(&["snapshot", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    // The sidecar's volume holds no declared file: the sidecar is held as before; the app,
    // whose only data mount holds the SQLite file, is not.
    assert_eq!(paused_since(since, &names), [t1.container("side")]);
    let snap: Snapshot = out.report();
    let row = snap.archives.iter().find(|a| a.tenant.as_deref() == Some(&t1.project)).unwrap();
    assert_eq!((row.outcome.as_str(), row.staging.as_deref()), ("archived", Some("staged")), "{row:?}");
    assert_eq!(row.sqlite.len(), 1, "{row:?}");
    let e = entry_of(&snap.dir, &t1.project).unwrap();
    let app_part = e["mounts"].as_array().unwrap().iter().find(|m| m["source"] == format!("{}_appdata", t1.project));
    let names = archived_names(&snap.dir.join(app_part.unwrap()["path"].as_str().unwrap()));
    assert!(names.iter().any(|n| n == "app.db"), "{names:?}");
    let to = s.root().join("restored");
    let r = s.slipway(&["restore", "--tenant", &t1.project, "--latest", "--to", to.to_str().unwrap(), "--json"]);
    assert_eq!(r.code, 0, "{} {}", r.stdout, r.stderr);
    let m = r.json()["report"]["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mount"].as_str().unwrap().contains("_appdata"))
        .cloned()
        .unwrap();
    assert_eq!(sql(&PathBuf::from(m["target"].as_str().unwrap()).join("app.db"), "select v from m"), "t1 own");
}

#[test]
fn a_stack_tenants_sqlite_file_missing_not_sqlite_or_a_symlink_to_a_host_file_fails_its_snapshot_naming_it() {
    let s = Sandbox::new();
    let img = images(&s);
    let t1 = compose_tenant(&s, "t1", &img);
    let vol = t1.volume_dir("appdata");
    let database = sqlite_of("app", "[\"/data/app.db\"]", "");
    s.write_fleet(&format!("{}{database}", stack_fleet(&s, &img.app, &img.worker, &img.side, "")));
    let host = s.root().join("host");
    std::fs::create_dir_all(&host).unwrap();
    let secret = host.join("secret.db");
    make_db(&secret, "the host secret");
    let before = seal(&secret);
    let names: Vec<String> = ["app", "side", "worker"].map(|x| t1.container(x)).to_vec();
    let a = vol.join("app.db");
    type Make<'a> = Box<dyn Fn() + 'a>;
    let cases: Vec<(&str, Make)> = vec![
        ("missing", Box::new(|| {})),
        ("not SQLite", Box::new(|| std::fs::write(&a, "just text, no database\n").unwrap())),
        ("an absolute symlink to a host database", Box::new(|| symlink(&secret, &a).unwrap())),
        ("a relative symlink out of the volume", Box::new(|| symlink(relative_to(&vol, &secret), &a).unwrap())),
    ];
    for (what, make) in cases {
        let _ = std::fs::remove_file(&a);
        make();
        let since = now_s();
        let out = s.slipway(&["snapshot", "--json"]);
        assert_eq!(out.code, 1, "{what}: {} {}", out.stdout, out.stderr);
        let snap: Snapshot = out.report();
        let row = snap.archives.iter().find(|a| a.tenant.as_deref() == Some(&t1.project)).unwrap();
        assert_eq!(row.outcome, "failed", "{what}: {row:?}");
        let detail = row.detail.clone().unwrap_or_default();
        assert!(detail.contains(&format!("tenant {}", t1.project)) && detail.contains("app.db"), "{what}: {detail}");
        assert!(!recorded(&s, &t1.project), "{what}: a failed copy was recorded as a backup");
        assert!(paused_since(since, &names).is_empty(), "{what}: a writer was paused for a failed copy");
        assert_eq!(seal(&secret), before, "{what}: the host database was read or written");
    }
    for n in &names {
        assert_eq!(s.inspect(n)["State"]["Running"], true, "{n}");
    }
}

/// `to` as a relative path from the dir `from` (`../../…`).
fn relative_to(from: &Path, to: &Path) -> PathBuf {
    let up = from.components().count() - 1;
    let mut p = PathBuf::new();
    for _ in 0..up {
        p.push("..");
    }
    p.join(to.strip_prefix("/").unwrap())
}

#[test]
fn a_stack_sqlite_declaration_outside_its_services_data_or_of_no_writer_is_refused_naming_the_key_and_value() {
    let s = Sandbox::new();
    let img = images(&s);
    let t1 = compose_tenant(&s, "t1", &img);
    let cases: &[(&str, &[&str])] = &[
        (&sqlite_of("app", "[\"app.db\"]", ""), &["database.paths", "\"app.db\"", "absolute"]),
        (&sqlite_of("app", "[\"/srv/app.db\"]", ""), &["database.paths", "/srv/app.db", "services.app.data"]),
        (&sqlite_of("app", "[\"/data/../etc/app.db\"]", ""), &["database.paths", "/data/../etc/app.db", ".."]),
        (&sqlite_of("app", "[\"/data\"]", ""), &["database.paths", "\"/data\"", "services.app.data"]),
        (&sqlite_of("worker", "[\"/data/app.db\"]", ""), &["database.service", "worker", "writes"]),
        (&sqlite_of("nope", "[\"/data/app.db\"]", ""), &["database.service", "nope", "services"]),
        ("[app.database]\nkind = \"sqlite\"\npaths = [\"/data/app.db\"]\n", &["database.service", "missing"]),
    ];
    let worker_started = s.inspect(&t1.container("worker"))["State"]["StartedAt"].clone();
    for (database, want) in cases {
        s.write_fleet(&format!("{}{database}", stack_fleet(&s, &img.app, &img.worker, &img.side, "")));
        let out = s.slipway(&["snapshot"]);
        assert_eq!(out.code, 2, "{database}: {} {}", out.stdout, out.stderr);
        let said = format!("{}{}", out.stdout, out.stderr);
        for w in ["fleet.toml", "app \"agent\""].iter().chain(want.iter()) {
            assert!(said.contains(w), "{database}: {w} not in: {said}");
        }
        assert!(!s.backups().join("daily").exists(), "{database}: a refused snapshot wrote into the backup store");
    }
    assert_eq!(s.inspect(&t1.container("worker"))["State"]["StartedAt"], worker_started);
}

/// Killed right after a stack tenant's first SQLite copy (the copy loop's kill point): nothing
/// of the tenant is recorded or archived, no container of the stack was paused, and the next
/// snapshot takes it whole, the killed run's copies gone.
#[test]
fn a_stack_snapshot_killed_after_a_sqlite_copy_records_nothing_and_the_next_one_takes_it_whole() {
    let s = Sandbox::new();
    let img = images(&s);
    let t1 = app_and_worker(&s, "t1", &img);
    let vol = t1.volume_dir("appdata");
    // The app's uid owns its database and the dir it keeps its -wal and -shm in.
    std::os::unix::fs::chown(&vol, Some(1000), Some(1000)).unwrap();
    make_db(&vol.join("app.db"), "t1 own");
    s.write_fleet(&app_and_worker_fleet(&s, &img, &sqlite_of("app", "[\"/data/app.db\"]", "")));
    let names = vec![t1.container("app"), t1.container("worker")];
    let since = now_s();
    let out = s.slipway_env(&["snapshot"], &[("SLIPWAY_TEST_CRASH_AT", "snapshot-sqlite-copying")]);
    assert!(
        out.stderr.contains("slipway test point reached: snapshot-sqlite-copying"),
        "{} {}",
        out.stdout,
        out.stderr
    );
    assert_ne!(out.code, 0);
    assert!(!recorded(&s, &t1.project), "a killed copy is no backup");
    let archives: Vec<_> = crate::support::files_under(&s.backups())
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".tar.zst"))
        .collect();
    assert!(archives.is_empty(), "{archives:?}");
    assert!(paused_since(since, &names).is_empty(), "{:?}", paused_since(since, &names));
    for n in &names {
        assert_eq!(s.inspect(n)["State"]["Running"], true, "{n}");
    }
    let rec = s.slipway(&["recover", "--json"]);
    assert_eq!(rec.code, 0, "{} {}", rec.stdout, rec.stderr);
    let out = s.slipway(&["snapshot", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert!(recorded(&s, &t1.project));
    let left: Vec<_> = crate::support::files_under(&s.backups().join("daily"))
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".sqlite-copy-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
