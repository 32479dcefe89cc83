//! Daily snapshots, restore and verify against real files and a real Docker engine.

use std::process::Command;

use crate::support::reports::{Prune, Recover, Restore, Snapshot, Verify};
use crate::support::{files_under, noise, sh, tree_hash, Sandbox};

fn snapshot_json(s: &Sandbox, args: &[&str]) -> Snapshot {
    let mut a = vec!["snapshot", "--json"];
    a.extend_from_slice(args);
    let out = s.slipway(&a);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    out.report()
}

#[test]
fn restore_of_a_tenant_brings_back_exactly_the_snapshot_tree_and_a_healthy_container() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let name = s.add_tenant("t1", &v1);
    s.write_data("t1", "db/records.txt", &"row\n".repeat(1000));
    s.write_data("t1", "uploads/a.bin", "binary-ish");
    s.write_fleet(&s.fleet_app(&v1, ""));
    let snap = snapshot_json(&s, &[]);
    assert_eq!(snap.archives[0].outcome, "archived");
    let day = snap.day;
    let at_snapshot = tree_hash(&s.data_dir("t1"));
    // The tenant goes on writing; then a person restores yesterday's data.
    s.write_data("t1", "db/records.txt", "overwritten by mistake\n");
    s.write_data("t1", "junk/new.txt", "created after the snapshot\n");
    let out = s.slipway(&["restore", "--tenant", "t1", "--day", &day, "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert_eq!(tree_hash(&s.data_dir("t1")), at_snapshot);
    assert_eq!(s.inspect(&name)["State"]["Running"], true);
    assert!(s.http_get(&format!("http://{}:8080/api/health", s.container_ip(&name))).contains("v1"));
    // --to extracts elsewhere and touches no container.
    let id = s.inspect(&name)["Id"].clone();
    let to = s.root().join("restored-copy");
    let out = s.slipway(&["restore", "--tenant", "t1", "--latest", "--to", to.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(tree_hash(&to), at_snapshot);
    assert_eq!(s.inspect(&name)["Id"], id);
}

#[test]
fn a_flipped_bit_is_caught_by_verify_and_refused_by_restore() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let name = s.add_tenant("t1", &v1);
    s.write_data("t1", "db/records.txt", &"row\n".repeat(5000));
    s.write_fleet(&s.fleet_app(&v1, ""));
    let snap = snapshot_json(&s, &[]);
    assert_eq!(s.slipway(&["verify", "--deep"]).code, 0);
    let archive = snap.archives[0].path.clone();
    let mut bytes = std::fs::read(&archive).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&archive, bytes).unwrap();
    let v = s.slipway(&["verify", "--json"]);
    assert_eq!(v.code, 1);
    assert!(v.stdout.contains("t1.tar.zst"), "{}", v.stdout);
    let before = tree_hash(&s.data_dir("t1"));
    let id = s.inspect(&name)["State"]["StartedAt"].clone();
    let r = s.slipway(&["restore", "--tenant", "t1", "--latest"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("sha256"), "{}", r.stderr);
    assert_eq!(tree_hash(&s.data_dir("t1")), before);
    assert_eq!(s.inspect(&name)["State"]["StartedAt"], id);
    assert_eq!(s.inspect(&name)["State"]["Running"], true);
}

#[test]
fn verify_fails_on_a_damaged_file_list_and_on_a_snapshot_dir_without_its_manifest() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    s.add_tenant("t1", &v1);
    s.write_data("t1", "db/records.txt", &"row\n".repeat(5000));
    s.write_fleet(&s.fleet_app(&v1, ""));
    let snap = snapshot_json(&s, &[]);
    let day = snap.day;
    assert_eq!(s.slipway(&["verify"]).code, 0);
    // The archive is intact; the file list beside it is not.
    let list = s.backups().join("daily").join(&day).join("tenants/t1.files.json.zst");
    let good = std::fs::read(&list).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x01;
    std::fs::write(&list, &bad).unwrap();
    let v = s.slipway(&["verify", "--json"]);
    assert_eq!(v.code, 1, "{}", v.stdout);
    let checked = &v.report::<Verify>().archives[0];
    assert!(!checked.ok);
    assert!(checked.detail.as_deref().unwrap_or_default().contains("t1.files.json.zst"), "{checked:?}");
    std::fs::write(&list, &good).unwrap();
    assert_eq!(s.slipway(&["verify"]).code, 0);
    // A day dir without MANIFEST.json (a snapshot that never finished) is named and fails verify.
    let unfinished = s.backups().join("daily/2000-01-01");
    std::fs::create_dir_all(unfinished.join("tenants")).unwrap();
    let v = s.slipway(&["verify", "--json"]);
    assert_eq!(v.code, 1, "{}", v.stdout);
    assert_eq!(v.report::<Verify>().incomplete, [unfinished]);
    let v = s.slipway(&["verify", "--day", "2000-01-01"]);
    assert_eq!(v.code, 1);
    assert!(v.stdout.contains("2000-01-01"), "{}", v.stdout);
}

#[test]
fn restore_latest_takes_the_newest_snapshot_even_after_prune_rewrote_an_older_manifest() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    s.add_tenant("t1", &v1);
    s.add_tenant("t2", &v1);
    s.write_data("t1", "db/records.txt", "old rows\n");
    s.write_data("t2", "db/records.txt", "t2 rows\n");
    s.write_fleet(&s.fleet_app(&v1, ""));
    let daily = s.backups().join("daily");
    // Day A holds both tenants, day C only t2, today both: t1 changed since A.
    let today = snapshot_json(&s, &[]).day;
    std::fs::rename(daily.join(&today), daily.join("2000-01-01")).unwrap();
    snapshot_json(&s, &["--tenant", "t2"]);
    std::fs::rename(daily.join(&today), daily.join("2000-01-02")).unwrap();
    s.write_data("t1", "db/records.txt", "new rows\n");
    let newest = tree_hash(&s.data_dir("t1"));
    snapshot_json(&s, &["--force"]);
    // keep_last = 2 keeps both of t1's snapshots and drops t2's oldest: prune rewrites day A.
    s.append_config("[retention]\nkeep_last = 2\n");
    let p = s.slipway(&["prune", "--json"]);
    assert_eq!(p.code, 0, "{} {}", p.stdout, p.stderr);
    let a: serde_json::Value =
        serde_json::from_slice(&std::fs::read(daily.join("2000-01-01/MANIFEST.json")).unwrap()).unwrap();
    let tenants: Vec<&str> = a["archives"].as_array().unwrap().iter().map(|e| e["tenant"].as_str().unwrap()).collect();
    assert_eq!(tenants, ["t1"], "prune should have rewritten day A without t2");
    let to = s.root().join("latest-t1");
    let r = s.slipway(&["restore", "--tenant", "t1", "--latest", "--to", to.to_str().unwrap(), "--json"]);
    assert_eq!(r.code, 0, "{} {}", r.stdout, r.stderr);
    assert_eq!(tree_hash(&to), newest, "restore --latest took another snapshot: {}", r.stdout);
}

#[test]
fn a_second_snapshot_the_same_day_redoes_nothing_and_an_unchanged_tenant_reuses_its_archive() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    s.add_tenant("t1", &v1);
    s.add_tenant("t2", &v1);
    s.write_data("t1", "a.txt", "one");
    s.write_data("t2", "b.txt", "two");
    s.write_fleet(&s.fleet_app(&v1, ""));
    let first = snapshot_json(&s, &[]);
    let again = snapshot_json(&s, &[]);
    for a in &again.archives {
        assert_eq!(a.outcome, "already_done", "{a:?}");
    }
    // Make today's snapshot yesterday's, change t2 only, snapshot again.
    let day = &first.day;
    let daily = s.backups().join("daily");
    std::fs::rename(daily.join(day), daily.join("2000-01-01")).unwrap();
    s.write_data("t2", "b.txt", "two, changed");
    let third = snapshot_json(&s, &[]);
    let by: std::collections::HashMap<String, String> =
        third.archives.into_iter().map(|a| (a.tenant.unwrap(), a.outcome)).collect();
    assert_eq!(by["t1"], "reused");
    assert_eq!(by["t2"], "archived");
    use std::os::unix::fs::MetadataExt;
    let old = std::fs::metadata(daily.join("2000-01-01/tenants/t1.tar.zst")).unwrap();
    let new = std::fs::metadata(daily.join(day).join("tenants/t1.tar.zst")).unwrap();
    assert_eq!(old.ino(), new.ino(), "an unchanged tenant's archive should be a hard link");
    assert_eq!(s.slipway(&["verify", "--deep"]).code, 0);
}

#[test]
fn disk_full_during_a_snapshot_leaves_no_archive_and_the_tenant_running_unpaused() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let name = s.add_tenant("t1", &v1);
    // Incompressible data larger than the backup filesystem.
    let noise = noise(3 << 20, 0x9e3779b97f4a7c15);
    std::fs::create_dir_all(s.data_dir("t1")).unwrap();
    std::fs::write(s.data_dir("t1").join("noise.bin"), &noise).unwrap();
    s.write_fleet(&s.fleet_app(&v1, ""));
    let _tmpfs = s.mount_tmpfs(&s.backups(), "1m");
    let out = s.slipway(&["snapshot", "--json"]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    let report: Snapshot = out.report();
    assert_eq!(report.archives[0].outcome, "failed");
    let st = &s.inspect(&name)["State"];
    assert_eq!((st["Running"].as_bool(), st["Paused"].as_bool()), (Some(true), Some(false)));
    let final_name = s.backups().join("daily").join(&report.day).join("tenants/t1.tar.zst");
    assert!(!final_name.exists());
}

#[test]
fn a_control_plane_sqlite_db_with_a_concurrent_writer_is_backed_up_whole_and_intact() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    s.add_tenant("t1", &v1);
    let cp = s.root().join("control-plane");
    std::fs::create_dir_all(&cp).unwrap();
    std::fs::write(cp.join("settings.json"), "{}").unwrap();
    let db = cp.join("platform.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.execute_batch("CREATE TABLE events (id INTEGER PRIMARY KEY, body TEXT NOT NULL)").unwrap();
    for i in 0..2000 {
        conn.execute("INSERT INTO events (body) VALUES (?1)", [format!("event {i} {}", "x".repeat(200))]).unwrap();
    }
    drop(conn);
    s.set_config("control_plane", &format!("[\"{}\"]", cp.display()));
    s.write_fleet(&s.fleet_app(&v1, ""));
    // A writer keeps committing while the snapshot runs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (db, stop) = (db.clone(), stop.clone());
        std::thread::spawn(move || {
            let c = rusqlite::Connection::open(&db).unwrap();
            c.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                c.execute("INSERT INTO events (body) VALUES ('live')", []).unwrap();
                n += 1;
            }
            n
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(200));
    let snap = snapshot_json(&s, &["--control-plane"]);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(writer.join().unwrap() > 0);
    let cp_archive = snap.archives.iter().find(|a| a.tenant.is_none()).unwrap().path.display().to_string();
    let out = s.root().join("cp-extract");
    std::fs::create_dir_all(&out).unwrap();
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!("zstd -dc '{cp_archive}' | tar -x -C '{}'", out.display()))
        .status()
        .unwrap();
    assert!(st.success());
    let copy = files_under(&out)
        .into_iter()
        .find(|p| p.ends_with("platform.db"))
        .expect("platform.db in the control-plane archive");
    let c = rusqlite::Connection::open(&copy).unwrap();
    let check: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
    let n: i64 = c.query_row("SELECT COUNT(*) FROM events WHERE body LIKE 'event %'", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 2000, "every row committed before the snapshot must be in it");
    assert!(files_under(&out).iter().any(|p| p.ends_with("settings.json")));
}

#[test]
fn a_same_size_rewrite_whose_mtime_was_put_back_is_archived_not_reused() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    s.add_tenant("t1", &v1);
    s.write_data("t1", "db/ledger.txt", "balance: 100\n");
    s.write_fleet(&s.fleet_app(&v1, ""));
    let first = snapshot_json(&s, &[]);
    let daily = s.backups().join("daily");
    std::fs::rename(daily.join(&first.day), daily.join("2000-01-01")).unwrap();
    // The way `cp -p` or `rsync -t` leave a file: new bytes, same size, the old mtime.
    let f = s.data_dir("t1").join("db/ledger.txt");
    let stamp = s.root().join("stamp");
    sh(Command::new("touch").arg("-r").arg(&f).arg(&stamp));
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&f, "balance: 999\n").unwrap();
    sh(Command::new("touch").arg("-r").arg(&stamp).arg(&f));
    let second = snapshot_json(&s, &[]);
    assert_eq!(second.archives[0].outcome, "archived", "{:?}", second.archives);
    let to = s.root().join("check");
    let out = s.slipway(&["restore", "--tenant", "t1", "--day", &second.day, "--to", to.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(std::fs::read_to_string(to.join("db/ledger.txt")).unwrap(), "balance: 999\n");
}

#[test]
fn a_damaged_previous_archive_is_never_reused_and_force_always_archives_afresh() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    s.add_tenant("t1", &v1);
    s.write_data("t1", "db/records.txt", &"row\n".repeat(2000));
    s.write_fleet(&s.fleet_app(&v1, ""));
    let first = snapshot_json(&s, &[]);
    let daily = s.backups().join("daily");
    std::fs::rename(daily.join(&first.day), daily.join("2000-01-01")).unwrap();
    // Yesterday's archive rots on disk; the tenant itself is unchanged.
    let old = daily.join("2000-01-01/tenants/t1.tar.zst");
    let mut bytes = std::fs::read(&old).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&old, bytes).unwrap();
    let second = snapshot_json(&s, &[]);
    assert_eq!(second.archives[0].outcome, "archived", "a damaged archive was linked into today");
    let today = daily.join(&second.day).join("tenants/t1.tar.zst");
    use std::os::unix::fs::MetadataExt;
    assert_ne!(std::fs::metadata(&today).unwrap().ino(), std::fs::metadata(&old).unwrap().ino());
    let v = s.slipway(&["verify", "--deep", "--json"]);
    // Today's copy is good; yesterday's damage is still reported.
    assert_eq!(v.code, 1, "{}", v.stdout);
    let checked = v.report::<Verify>().archives;
    let bad: Vec<_> = checked.iter().filter(|c| !c.ok).map(|c| c.archive.clone()).collect();
    assert_eq!(bad, [old], "{checked:?}");
    // With an intact previous archive, `--force` still archives afresh.
    std::fs::remove_dir_all(daily.join("2000-01-01")).unwrap();
    std::fs::rename(daily.join(&second.day), daily.join("2000-01-02")).unwrap();
    let third = snapshot_json(&s, &["--force"]);
    assert_eq!(third.archives[0].outcome, "archived");
    let fourth_day = daily.join(&third.day);
    std::fs::rename(&fourth_day, daily.join("2000-01-03")).unwrap();
    assert_eq!(snapshot_json(&s, &[]).archives[0].outcome, "reused", "an intact unchanged archive is reused");
}

#[test]
fn a_tenant_the_snapshot_cannot_unpause_exits_4_and_recover_unpauses_it_later() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let name = s.add_tenant("t1", &v1);
    s.add_tenant("t2", &v1);
    s.write_data("t1", "a.txt", "one");
    s.write_data("t2", "b.txt", "two");
    s.write_fleet(&s.fleet_app(&v1, ""));
    // The engine refuses every unpause (as a wedged daemon would).
    let out = s.slipway_env(&["snapshot", "--json"], &[("SLIPWAY_TEST_REFUSE", "unpause")]);
    assert_eq!(out.code, 4, "{} {}", out.stdout, out.stderr);
    let report: Snapshot = out.report();
    assert!(report.archives.iter().all(|a| a.outcome == "frozen"), "{:?}", report.archives);
    assert_eq!(s.inspect(&name)["State"]["Paused"], true, "the test needs the tenant left paused");
    // status finds it; recover brings it back; then all is well.
    let st = s.slipway(&["status", "--json"]);
    assert_eq!(st.code, 8, "{}", st.stdout);
    assert!(st.stdout.contains("person_needed"), "{}", st.stdout);
    let rec = s.slipway(&["recover", "--json"]);
    assert_eq!(rec.code, 0, "{} {}", rec.stdout, rec.stderr);
    assert_eq!(s.inspect(&name)["State"]["Paused"], false);
    assert_eq!(s.inspect(&name)["State"]["Running"], true);
    assert_eq!(s.slipway(&["snapshot"]).code, 0);
    let st = s.slipway(&["status"]);
    assert_eq!(st.code, 0, "{}", st.stdout);
}

#[test]
fn a_restore_from_the_wrong_day_keeps_the_newer_data_it_replaced_until_prune_retires_it() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    s.add_tenant("t1", &v1);
    s.write_data("t1", "db/records.txt", "old rows\n");
    s.write_fleet(&s.fleet_app(&v1, ""));
    let day = snapshot_json(&s, &[]).day;
    // A day of new work, then a person restores the wrong day.
    s.write_data("t1", "db/records.txt", "a whole day of new rows\n");
    s.write_data("t1", "uploads/new.bin", "uploaded after the snapshot");
    let newer = tree_hash(&s.data_dir("t1"));
    let out = s.slipway(&["restore", "--tenant", "t1", "--day", &day, "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let run = out.run_id();
    let r: Restore = out.report();
    let kept = r.replaced.expect("the restore says where the data it replaced is");
    assert_eq!(kept, s.backups().join("replaced").join(&run).join("t1"));
    assert_eq!(tree_hash(&kept), newer, "the replaced data is kept byte for byte");
    assert!(r.detail.contains(kept.to_str().unwrap()), "{}", r.detail);
    // The run record names it too.
    let shown = s.slipway(&["runs", "show", &run, "--json"]);
    assert!(shown.stdout.contains(kept.to_str().unwrap()), "{}", shown.stdout);
    // Run ids order by the second they start in (within one second their order is arbitrary),
    // and retention below keeps the newest: let the second restore start in a later second.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    // `restore --run <that restore's run>` puts it back, keeping what it replaces in turn.
    let back = s.slipway(&["restore", "--tenant", "t1", "--run", &run, "--json"]);
    assert_eq!(back.code, 0, "{} {}", back.stdout, back.stderr);
    assert_eq!(tree_hash(&s.data_dir("t1")), newer, "the newer data is back");
    let back_run = back.run_id();
    let again = back.report::<Restore>().replaced.unwrap();
    assert_eq!(again, s.backups().join("replaced").join(&back_run).join("t1"));
    assert!(!kept.exists());
    let day_tree = tree_hash(&again);
    // Retention keeps the newest restore runs' data like rollout runs, and retires older ones.
    s.set_config("retention", "{ keep_daily = 7, keep_rollout_runs = 1 }");
    let dry = s.slipway(&["prune", "--dry-run", "--json"]).report::<Prune>();
    let plan: Vec<(&str, bool)> = dry.replaced.iter().map(|r| (r.run.as_str(), r.keep)).collect();
    assert_eq!(plan, [(run.as_str(), false), (back_run.as_str(), true)]);
    assert_eq!(s.slipway(&["prune"]).code, 0);
    assert!(!s.backups().join("replaced").join(&run).exists());
    assert_eq!(tree_hash(&again), day_tree, "prune kept the newest replaced data intact");
}

#[test]
fn an_unreadable_old_manifest_and_a_damaged_old_archive_are_skipped_and_every_tenant_is_still_snapshotted() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    for t in ["t1", "t2"] {
        s.add_tenant(t, &v1);
        s.write_data(t, "db/records.txt", &format!("{t} rows\n"));
    }
    s.write_fleet(&s.fleet_app(&v1, ""));
    let today = snapshot_json(&s, &[]).day;
    // Turn today's snapshot into two earlier days, then damage them: the day before yesterday's
    // t1 archive gets a flipped byte, yesterday's MANIFEST.json is garbage.
    let date: jiff::civil::Date = today.parse().unwrap();
    let day = |n: i64| date.checked_sub(jiff::Span::new().days(n)).unwrap().to_string();
    let daily = s.backups().join("daily");
    for n in [1, 2] {
        let dir = daily.join(day(n));
        sh(Command::new("cp").arg("-a").arg(daily.join(&today)).arg(&dir));
        let m = std::fs::read_to_string(dir.join("MANIFEST.json")).unwrap().replace(&today, &day(n));
        std::fs::write(dir.join("MANIFEST.json"), m).unwrap();
    }
    std::fs::remove_dir_all(daily.join(&today)).unwrap();
    std::fs::write(daily.join(day(1)).join("MANIFEST.json"), b"{\"version\": 1, \"trunc").unwrap();
    let old_t1 = daily.join(day(2)).join("tenants/t1.tar.zst");
    let mut bytes = std::fs::read(&old_t1).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&old_t1, bytes).unwrap();
    let snap = snapshot_json(&s, &[]);
    let outcome = |t: &str| snap.archives.iter().find(|a| a.tenant.as_deref() == Some(t)).unwrap().outcome.clone();
    assert_eq!(outcome("t1"), "archived", "a damaged old archive is never reused");
    assert_eq!(outcome("t2"), "reused", "the intact old archive still is");
    assert!(snap.skipped.iter().any(|w| w.contains(&day(1)) && w.contains("MANIFEST.json")), "{:?}", snap.skipped);
    // Today is restorable; verify fails naming both bad things and still checks the rest.
    let v = s.slipway(&["verify", "--json"]);
    assert_eq!(v.code, 1, "{}", v.stdout);
    let report: Verify = v.report();
    let bad: Vec<String> = report.archives.iter().filter(|a| !a.ok).map(|a| a.archive.display().to_string()).collect();
    assert_eq!(bad.len(), 2, "{bad:?}");
    assert!(bad.iter().any(|b| b.ends_with(&format!("{}/MANIFEST.json", day(1)))), "{bad:?}");
    assert!(bad.iter().any(|b| b.ends_with(&format!("{}/tenants/t1.tar.zst", day(2)))), "{bad:?}");
    assert!(report.archives.iter().filter(|a| a.ok).count() >= 3, "{}", v.stdout);
    // Prune leaves the unreadable day alone rather than guessing.
    assert_eq!(s.slipway(&["prune"]).code, 0);
    assert!(daily.join(day(1)).join("MANIFEST.json").exists());
}

/// Names in `dir` that a failed extraction could have left behind (`.<name>.extract-…`,
/// `.<name>.restore-…`, `.slipway-extract-…`).
fn leftovers(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".extract-") || n.contains(".restore-") || n.starts_with(".slipway-"))
        .collect()
}

#[test]
fn restore_checks_free_space_before_extracting_leaves_nothing_behind_and_restores_onto_a_mount() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    s.add_tenant("t1", &v1);
    std::fs::create_dir_all(s.data_dir("t1")).unwrap();
    std::fs::write(s.data_dir("t1").join("noise.bin"), noise(3 << 20, 11)).unwrap();
    s.write_data("t1", "db/records.txt", "rows\n");
    s.write_fleet(&s.fleet_app(&v1, ""));
    snapshot_json(&s, &[]);
    let want = tree_hash(&s.data_dir("t1"));
    // Too small for the 3 MiB tree: refused up front, and the mount is as empty as it was.
    let small = s.root().join("small");
    let _small = s.mount_tmpfs(&small, "1m");
    let out = s.slipway(&["restore", "--tenant", "t1", "--latest", "--to", small.to_str().unwrap(), "--json"]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(out.stdout.contains("free"), "{}", out.stdout);
    assert!(std::fs::read_dir(&small).unwrap().next().is_none(), "something was extracted onto the small mount");
    assert!(leftovers(s.root()).is_empty(), "{:?}", leftovers(s.root()));
    // A mount with room: --to restores onto it.
    let big = s.root().join("big");
    let _big = s.mount_tmpfs(&big, "16m");
    let out = s.slipway(&["restore", "--tenant", "t1", "--latest", "--to", big.to_str().unwrap(), "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert_eq!(tree_hash(&big), want);
    assert!(leftovers(&big).is_empty() && leftovers(s.root()).is_empty());
}

#[test]
fn a_data_dir_that_is_a_mount_point_is_refused_before_anything_is_extracted_or_stopped() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let _mount = s.mount_tmpfs(&s.data_dir("t1"), "16m");
    let name = s.add_tenant("t1", &v1);
    s.write_data("t1", "db/records.txt", "rows of the snapshot\n");
    s.write_fleet(&s.fleet_app(&v1, ""));
    let day = snapshot_json(&s, &[]).day;
    s.write_data("t1", "db/records.txt", "newer rows\n");
    let now = tree_hash(&s.data_dir("t1"));
    let started = s.inspect(&name)["State"]["StartedAt"].clone();
    let out = s.slipway(&["restore", "--tenant", "t1", "--day", &day, "--json"]);
    assert_eq!(out.code, 2, "{}", out.stdout);
    assert!(out.stdout.contains("mount point"), "{}", out.stdout);
    assert_eq!(tree_hash(&s.data_dir("t1")), now);
    assert_eq!(s.inspect(&name)["State"]["StartedAt"], started, "the tenant was stopped");
    assert!(leftovers(s.data_dir("t1").parent().unwrap()).is_empty());
}

#[test]
fn recover_sweeps_what_dead_processes_left_and_says_so_but_never_tenant_data() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    s.add_tenant("t1", &v1);
    s.write_data("t1", "db/records.txt", "rows\n");
    s.write_fleet(&s.fleet_app(&v1, ""));
    let day = snapshot_json(&s, &[]).day;
    let data = tree_hash(&s.data_dir("t1"));
    let tenants = s.backups().join("daily").join(&day).join("tenants");
    let dead_tmp = tenants.join(".t1.tar.zst.tmp-999999999");
    let live_tmp = tenants.join(format!(".t1.tar.zst.tmp-{}", std::process::id()));
    std::fs::write(&dead_tmp, "half an archive").unwrap();
    std::fs::write(&live_tmp, "being written").unwrap();
    let unfinished = s.backups().join("daily/2000-01-01");
    std::fs::create_dir_all(unfinished.join("tenants")).unwrap();
    std::fs::write(unfinished.join("tenants/t1.tar.zst"), "partial").unwrap();
    let old_scratch = s.backups().join("daily").join(&day).join(".verify-abc123");
    std::fs::create_dir_all(old_scratch.join("tree")).unwrap();
    sh(Command::new("touch").args(["-d", "3 days ago"]).arg(&old_scratch));
    let cache = s.state().join("remote-cache/daily/2000-01-01");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::write(cache.join("t1.tar.zst"), "downloaded").unwrap();
    let dry = s.slipway(&["recover", "--dry-run", "--json"]);
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert!(dead_tmp.exists() && unfinished.exists(), "a dry run removed something");
    let out = s.slipway(&["recover", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let swept = format!("{:?}", out.report::<Recover>().swept);
    for gone in [&dead_tmp, &unfinished, &old_scratch, &s.state().join("remote-cache")] {
        assert!(!gone.exists(), "{} was not swept: {swept}", gone.display());
        assert!(swept.contains(&*gone.display().to_string()), "{} not reported: {swept}", gone.display());
    }
    assert!(live_tmp.exists(), "a live process's temporary file was removed");
    assert_eq!(tree_hash(&s.data_dir("t1")), data);
    assert_eq!(s.slipway(&["verify", "--deep"]).code, 0, "the complete snapshot must be untouched");
}

/// A tenant that never stops writing: appends, new files, deletions and renames, in a loop
/// inside its container (so `docker pause` freezes it too).
const WRITER: &str = "i=0; mkdir -p /data/live; while :; do i=$((i+1)); echo \"line $i\" >> /data/live/log; \
     echo $i > /data/live/n.tmp; mv /data/live/n.tmp /data/live/n; mkdir -p /data/live/d$((i%7)); \
     echo $i > /data/live/d$((i%7))/f$i; rm -f /data/live/d$((i%7))/f$((i-70)); usleep 2000; done";

#[test]
fn a_tenant_written_during_its_snapshot_is_paused_only_for_the_delta_and_restores_as_it_was_at_the_pause() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let name = s.add_tenant("t1", &v1);
    for i in 0..300 {
        s.write_data("t1", &format!("db/part{}/rows{i}.txt", i % 10), &format!("row {i}\n").repeat(300));
    }
    s.write_fleet(&s.fleet_app(&v1, ""));
    sh(Command::new("docker").args(["exec", "-d", &name, "/bin/busybox", "sh", "-c", WRITER]));
    let live = s.data_dir("t1").join("live/n");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !live.exists() {
        assert!(std::time::Instant::now() < deadline, "the writer never started");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // Held at the pause for 6 s (after the last delta): long enough to read the frozen tree on a
    // loaded machine.
    let child = s.spawn(&["snapshot", "--json"], &[("SLIPWAY_TEST_PAUSE_AT", "snapshot-delta:6000")]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while s.inspect(&name)["State"]["Paused"] != true {
        assert!(std::time::Instant::now() < deadline, "the tenant was never paused");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let at_pause = tree_hash(&s.data_dir("t1"));
    let n_at_pause = std::fs::read_to_string(&live).unwrap();
    assert_eq!(s.inspect(&name)["State"]["Paused"], true, "the tree must be read within the pause");
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout} {stderr}");
    let snap: Snapshot = crate::support::reports::parse(&stdout, &stderr).report();
    let a = &snap.archives[0];
    assert_eq!((a.outcome.as_str(), a.staging.as_deref()), ("archived", Some("staged")), "{a:?}");
    // The pause is reported: here it holds the test's 6 s, and the archive was written after it.
    assert!(a.pause_ms >= 6000 && a.pause_ms < a.duration_ms, "{a:?}");
    assert!(a.delta.is_some(), "{a:?}");
    assert_eq!(s.inspect(&name)["State"]["Paused"], false);
    // The tenant wrote on after the pause; the archive holds the tree as it was at the pause.
    // (Its counter is watched, not the whole tree: a digest of a tree being written races
    // with the writer's renames and removals.)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::fs::read_to_string(&live).unwrap() == n_at_pause {
        assert!(std::time::Instant::now() < deadline, "the writer stopped: the test proves nothing");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let to = s.root().join("restored");
    let r = s.slipway(&["restore", "--tenant", "t1", "--latest", "--to", to.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{} {}", r.stdout, r.stderr);
    assert_eq!(tree_hash(&to), at_pause);
    assert_eq!(s.slipway(&["verify", "--deep"]).code, 0);
}

#[test]
fn with_staging_off_or_too_little_space_for_the_copy_the_tenant_is_paused_while_archived_and_the_report_says_so() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let name = s.add_tenant("t1", &v1);
    std::fs::create_dir_all(s.data_dir("t1")).unwrap();
    std::fs::write(s.data_dir("t1").join("noise.bin"), noise(3 << 20, 0x2545f4914f6cdd1d)).unwrap();
    s.write_fleet(&s.fleet_app(&v1, ""));
    let staging = s.backups().join("staging/t1");
    let out = s.slipway_env(&["snapshot", "--json"], &[("SLIPWAY_SNAPSHOT_STAGING", "false")]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let a = &out.report::<Snapshot>().archives[0];
    assert_eq!((a.outcome.as_str(), a.staging.as_deref()), ("archived", Some("off")), "{a:?}");
    assert!(a.pause_ms > 0, "{a:?}");
    assert!(!staging.exists(), "staging = false keeps no copy");
    // 3 MiB of incompressible data on a 5 MiB backup disk: room for its archive, not for a
    // copy and the archive.
    let _tmpfs = s.mount_tmpfs(&s.backups(), "5m");
    let at = tree_hash(&s.data_dir("t1"));
    let snap = snapshot_json(&s, &[]);
    let a = &snap.archives[0];
    assert_eq!((a.outcome.as_str(), a.staging.as_deref()), ("archived", Some("short_of_space")), "{a:?}");
    assert!(a.note.as_deref().unwrap_or_default().contains("free"), "{a:?}");
    assert!(!staging.exists(), "no partial copy was started");
    let st = &s.inspect(&name)["State"];
    assert_eq!((st["Running"].as_bool(), st["Paused"].as_bool()), (Some(true), Some(false)));
    let to = s.root().join("restored");
    let r = s.slipway(&["restore", "--tenant", "t1", "--latest", "--to", to.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{} {}", r.stdout, r.stderr);
    assert_eq!(tree_hash(&to), at);
}

/// The staging copy and the archive must leave a reserve free on the backup filesystem (5% of
/// it, at most 1 GiB): a copy that would leave less is not made — the tenant is paused while its
/// tree is archived instead — and the report says why.
#[test]
fn staging_leaves_a_reserve_free_on_the_backup_filesystem() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let name = s.add_tenant("t1", &v1);
    // 3.9 MiB of incompressible data on an 8 MiB backup disk: a copy and the archive fit
    // (7.8 MiB), but would leave less than its 5% (0.4 MiB) free.
    std::fs::write(s.data_dir("t1").join("noise.bin"), noise(3990 * 1024, 0x9e3779b97f4a7c15)).unwrap();
    s.write_fleet(&s.fleet_app(&v1, ""));
    let _tmpfs = s.mount_tmpfs(&s.backups(), "8m");
    let at = tree_hash(&s.data_dir("t1"));
    let snap = snapshot_json(&s, &[]);
    let a = &snap.archives[0];
    assert_eq!((a.outcome.as_str(), a.staging.as_deref()), ("archived", Some("short_of_space")), "{a:?}");
    assert!(a.note.as_deref().unwrap_or_default().contains("kept free"), "{a:?}");
    assert!(!s.backups().join("staging/t1").exists(), "no copy was started");
    let st = &s.inspect(&name)["State"];
    assert_eq!((st["Running"].as_bool(), st["Paused"].as_bool()), (Some(true), Some(false)));
    let to = s.root().join("restored");
    let r = s.slipway(&["restore", "--tenant", "t1", "--latest", "--to", to.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{} {}", r.stdout, r.stderr);
    assert_eq!(tree_hash(&to), at);
}

/// The staging copy of a tenant that is in no app any more (its container removed) is removed
/// by the next snapshot of every tenant, which says so; the others' copies stay.
#[test]
fn a_snapshot_removes_the_staging_copy_of_a_tenant_that_no_longer_exists_and_says_so() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    s.add_tenant("t1", &v1);
    let gone = s.add_tenant("t2", &v1);
    for t in ["t1", "t2"] {
        s.write_data(t, "db/records.txt", &"rows\n".repeat(100));
    }
    s.write_fleet(&s.fleet_app(&v1, ""));
    snapshot_json(&s, &[]);
    let staging = s.backups().join("staging");
    assert!(staging.join("t1").is_dir() && staging.join("t2").is_dir());
    sh(Command::new("docker").args(["rm", "-f", &gone]));
    // Only a snapshot of every tenant removes copies.
    let one = snapshot_json(&s, &["--tenant", "t1", "--force"]);
    assert!(one.staging_removed.is_empty() && staging.join("t2").is_dir(), "{:?}", one.staging_removed);
    let snap = snapshot_json(&s, &["--force"]);
    assert!(!staging.join("t2").exists(), "{:?}", snap.staging_removed);
    assert!(snap.staging_removed.iter().any(|l| l.contains("tenant t2")), "{:?}", snap.staging_removed);
    let left: Vec<String> =
        std::fs::read_dir(&staging).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(left.iter().all(|n| n == "t1" || n.starts_with(".t1")), "{left:?}");
    assert_eq!(snap.archives.len(), 1);
}

/// A byte of the staging copy damaged behind the mirror's back (its metadata put back, as bit
/// rot leaves it; the source unchanged) is found by the byte-for-byte check of the pass made
/// while the tenant runs, copied again and reported: the archive is the data, not the damage.
#[test]
fn a_damaged_staging_copy_is_found_copied_again_and_reported_and_never_enters_the_archive() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    s.add_tenant("t1", &v1);
    s.write_data("t1", "db/records.txt", &"customer row\n".repeat(1000));
    s.write_fleet(&s.fleet_app(&v1, ""));
    // Older than the mirror's racy window: its next pass trusts the copy by metadata alone.
    std::thread::sleep(std::time::Duration::from_secs(3));
    snapshot_json(&s, &[]);
    let copy = s.backups().join("staging/t1/db/records.txt");
    let mtime = std::fs::metadata(&copy).unwrap().modified().unwrap();
    let mut bytes = std::fs::read(&copy).unwrap();
    bytes[4000] ^= 0x20;
    std::fs::write(&copy, &bytes).unwrap();
    std::fs::File::options().write(true).open(&copy).unwrap().set_modified(mtime).unwrap();
    let data = tree_hash(&s.data_dir("t1"));

    // Every file checked every day, so that this one is.
    let out = s.slipway_env(&["snapshot", "--force", "--json"], &[("SLIPWAY_SNAPSHOT_CHECK_COPY_DAYS", "1")]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let v = s.slipway(&["verify", "--deep"]);
    assert_eq!(v.code, 0, "{} {}", v.stdout, v.stderr);
    let to = s.root().join("restored");
    let r = s.slipway(&["restore", "--tenant", "t1", "--latest", "--to", to.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{} {}", r.stdout, r.stderr);
    assert_eq!(tree_hash(&to), data, "the archive holds the data, not the damaged copy");
    let a = &out.json()["report"]["archives"][0];
    assert_eq!(a["pre_pass"]["mismatched"], serde_json::json!(["db/records.txt"]), "{a}");
    assert!(a["note"].as_str().is_some_and(|n| n.contains("db/records.txt")), "{a}");
}

#[test]
fn restore_of_a_stopped_tenant_brings_its_data_back_and_leaves_it_stopped() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let name = s.add_tenant("t1", &v1);
    s.write_data("t1", "db/records.txt", "rows of the snapshot\n");
    s.write_fleet(&s.fleet_app(&v1, ""));
    let day = snapshot_json(&s, &[]).day;
    let at_snapshot = tree_hash(&s.data_dir("t1"));
    // The operator suspended the tenant, and its data was damaged meanwhile.
    sh(Command::new("docker").args(["stop", &name]));
    s.write_data("t1", "db/records.txt", "damaged\n");
    let out = s.slipway(&["restore", "--tenant", "t1", "--day", &day, "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert_eq!(tree_hash(&s.data_dir("t1")), at_snapshot);
    assert_eq!(s.inspect(&name)["State"]["Running"], false, "a restore started a tenant it did not stop");
    assert!(out.report::<Restore>().detail.contains("left stopped"), "{}", out.stdout);
    // Started by its operator, it runs on the restored data.
    sh(Command::new("docker").args(["start", &name]));
    assert!(s.http_get(&format!("http://{}:8080/api/health", s.container_ip(&name))).contains("v1"));
}
