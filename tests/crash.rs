//! Crash safety: a rollout killed (SIGKILL-like abort, or SIGTERM) at every step boundary is
//! finished or undone by `slipway recover`; a snapshot killed mid-archive leaves no archive
//! under its final name and the tenant unpaused; a restore killed before the swap leaves the
//! old data in place. The crash points exist only in builds with the `test-crash` feature.

use crate::support::{tree_hash, Sandbox};

const POINTS: &[&str] = &[
    "after-stop",
    "during-snapshot",
    "after-snapshot",
    "after-rename",
    "after-create",
    "after-start",
    "during-health",
    "after-health",
];

fn image_of(s: &Sandbox, container: &str) -> String {
    s.inspect(container)["Config"]["Image"].as_str().unwrap_or_default().to_string()
}

/// Roll one tenant to the `writer` fixture (which changes the data dir when it starts), kill
/// slipway at `point` with `var`, then check what recover (or the run itself) leaves.
fn killed_at(point: &str, var: &str) {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let writer = s.push_fixture_as("writer", "app");
    let name = s.add_tenant("t1", &v1);
    s.write_data("t1", "db/records.txt", &"customer row\n".repeat(500));
    let before = tree_hash(&s.data_dir("t1"));
    s.write_fleet(&s.fleet_app(&writer, ""));

    let out = s.slipway_env(&["rollout", "--json"], &[(var, point)]);
    if var == "SLIPWAY_TEST_CRASH_AT" {
        assert_eq!(out.code, -1, "{point}: the process should have died (stdout {})", out.stdout);
        let rec = s.slipway(&["recover", "--json"]);
        assert_eq!(rec.code, 0, "{point}: recover failed: {} {}", rec.stdout, rec.stderr);
        assert_eq!(rec.json()["report"]["runs"].as_array().unwrap().len(), 1, "{point}: {}", rec.stdout);
        // Idempotent: a second recover finds nothing.
        let again = s.slipway(&["recover", "--json"]);
        assert_eq!(again.json()["report"]["runs"].as_array().unwrap().len(), 0, "{point}");
    } else {
        assert!(out.code == 7 || out.code == 0, "{point}: SIGTERM exit code {} ({})", out.code, out.stdout);
    }
    // Whatever happened: the tenant runs and is healthy under its own name ...
    let c = s.inspect(&name);
    assert_eq!(c["State"]["Running"], true, "{point}: tenant left stopped");
    let body = s.http_get(&format!("http://{}:8080/api/health", s.container_ip(&name)));
    let img = image_of(&s, &name);
    // ... and its data is byte-identical to before, unless the new version was healthy and kept.
    if img == writer {
        assert!(body.contains("writer"), "{point}: {body}");
        assert!(
            matches!(point, "after-health") || var != "SLIPWAY_TEST_CRASH_AT",
            "{point}: an unverified new version was kept"
        );
    } else {
        assert_eq!(img, v1, "{point}");
        assert_eq!(tree_hash(&s.data_dir("t1")), before, "{point}: data dir not restored");
    }
    // Nothing is left renamed aside, and the run record is closed.
    let leftovers = s.containers_named_like(".pre-rollout-");
    assert!(leftovers.is_empty(), "{point}: {leftovers:?}");
    let runs = s.slipway(&["runs", "--json"]).json();
    for r in runs["report"]["runs"].as_array().unwrap() {
        assert!(!r["finished_at"].is_null(), "{point}: run {} left unfinished", r["id"]);
    }
}

#[test]
fn a_rollout_killed_at_every_step_is_finished_or_undone_by_recover() {
    for p in POINTS {
        killed_at(p, "SLIPWAY_TEST_CRASH_AT");
    }
}

#[test]
fn a_rollout_sent_sigterm_at_every_step_leaves_no_tenant_stopped() {
    for p in POINTS {
        killed_at(p, "SLIPWAY_TEST_SIGNAL_AT");
    }
}

#[test]
fn a_snapshot_killed_mid_archive_leaves_no_archive_and_the_tenant_unpaused() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let name = s.add_tenant("t1", &v1);
    s.write_data("t1", "db/records.txt", "rows\n");
    s.write_fleet(&s.fleet_app(&v1, ""));
    let out = s.slipway_env(&["snapshot"], &[("SLIPWAY_TEST_CRASH_AT", "snapshot-quiesced")]);
    assert_eq!(out.code, -1);
    assert_eq!(s.inspect(&name)["State"]["Paused"], true, "the crash point is after the pause");
    let daily = s.backups().join("daily");
    let archives: Vec<_> = walk(&daily).into_iter().filter(|p| p.ends_with(".tar.zst")).collect();
    assert!(archives.is_empty(), "{archives:?}");
    let rec = s.slipway(&["recover"]);
    assert_eq!(rec.code, 0, "{} {}", rec.stdout, rec.stderr);
    assert_eq!(s.inspect(&name)["State"]["Paused"], false);
    assert_eq!(s.inspect(&name)["State"]["Running"], true);
}

#[test]
fn a_restore_killed_before_the_swap_leaves_the_old_data_in_place() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let name = s.add_tenant("t1", &v1);
    s.write_data("t1", "db/records.txt", "monday\n");
    s.write_fleet(&s.fleet_app(&v1, ""));
    assert_eq!(s.slipway(&["snapshot"]).code, 0);
    s.write_data("t1", "db/records.txt", "tuesday\n");
    let now = tree_hash(&s.data_dir("t1"));
    let out =
        s.slipway_env(&["restore", "--tenant", "t1", "--latest"], &[("SLIPWAY_TEST_CRASH_AT", "restore-before-swap")]);
    assert_eq!(out.code, -1);
    assert_eq!(tree_hash(&s.data_dir("t1")), now);
    assert_eq!(s.slipway(&["recover"]).code, 0);
    assert_eq!(s.inspect(&name)["State"]["Running"], true);
    assert_eq!(tree_hash(&s.data_dir("t1")), now);
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p.to_string_lossy().into_owned());
            }
        }
    }
    out
}
