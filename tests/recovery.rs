//! What `recover` and `restore` leave after the field's awkward moments (issue #25): a crash
//! while a rollout copy is being removed after its archive was written, a snapshot killed while
//! a tenant was stopped, a restore that needed a person, `restore --run` of a halted rollout.
//! Each test asserts what an operator checks: the data byte for byte, the archives verifying,
//! the container's state, the exit codes and what `status` shows.

use crate::support::reports::{Recover, Restore, Status};
use crate::support::{tree_hash, Sandbox};

const CRASH: &str = "SLIPWAY_TEST_CRASH_AT";

fn state(s: &Sandbox, name: &str) -> (bool, bool) {
    let st = &s.inspect(name)["State"];
    (st["Running"].as_bool().unwrap_or(false), st["Paused"].as_bool().unwrap_or(false))
}

/// The only entry of `dir` (a run's dir under `rollout/` or `.slipway-rollout/`).
fn only_entry(dir: &std::path::Path) -> String {
    let names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names.len(), 1, "{}: {names:?}", dir.display());
    names[0].clone()
}

/// Killed after the run's archive of the rollout copy was written and recorded, while the copy
/// was being removed (the test removes part of it, as the killed removal had): `recover` must
/// not archive the half-removed copy over the good archive. The archive stays byte-identical and
/// verifying, the rest of the copy is removed, and a restore of the run is the pre-rollout data.
#[test]
fn a_crash_while_the_rollout_copy_is_removed_never_lets_recover_archive_it_over_the_good_archive() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let v2 = s.push_fixture_as("v2", "app");
    let name = s.add_tenant("t1", &v1);
    for i in 0..20 {
        s.write_data("t1", &format!("db/part-{i:02}.txt"), &format!("customer rows {i}\n").repeat(200));
    }
    let before = tree_hash(&s.data_dir("t1"));
    s.write_fleet(&s.fleet_app(&v2, ""));
    let out = s.slipway_env(&["rollout"], &[(CRASH, "rollout-copy-removing")]);
    assert!(out.stderr.contains("slipway test point reached: rollout-copy-removing"), "{}", out.stderr);
    assert_eq!(out.code, -1, "{}", out.stdout);
    let run = only_entry(&s.backups().join("rollout"));
    let archive = s.backups().join(format!("rollout/{run}/t1.tar.zst"));
    let good = std::fs::read(&archive).expect("the run's archive was written before the crash");
    assert_eq!(s.slipway(&["verify"]).code, 0, "the archive verifies before recover");
    // What the killed removal had done: half the copy gone.
    let copy = s.root().join(format!("data/.slipway-rollout/{run}/t1"));
    for i in 0..10 {
        std::fs::remove_file(copy.join(format!("db/part-{i:02}.txt"))).unwrap();
    }

    let rec = s.slipway(&["recover"]);
    assert_eq!(rec.code, 0, "{} {}", rec.stdout, rec.stderr);
    assert!(std::fs::read(&archive).unwrap() == good, "recover rewrote the run's archive: {}", rec.stdout);
    let v = s.slipway(&["verify", "--deep"]);
    assert_eq!(v.code, 0, "{} {}", v.stdout, v.stderr);
    assert!(!copy.exists(), "the rest of the half-removed copy goes: {}", rec.stdout);
    assert_eq!(state(&s, &name), (true, false));
    let to = s.root().join("restored");
    let r = s.slipway(&["restore", "--tenant", "t1", "--run", &run, "--to", to.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{} {}", r.stdout, r.stderr);
    assert_eq!(tree_hash(&to), before, "the run's archive is the data from before the rollout");
}

/// A snapshot killed while it archived a tenant that was not running (stopped by hand before
/// the snapshot): `recover` leaves it stopped, as it found it. A tenant slipway itself stopped
/// (`quiesce = "stop"`) and that was killed while stopped is started again.
#[test]
fn recover_after_a_killed_snapshot_leaves_a_tenant_stopped_before_it_stopped_and_starts_one_it_stopped() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let name = s.add_tenant("t1", &v1);
    s.write_data("t1", "db/records.txt", &"rows\n".repeat(100));
    s.write_fleet(&s.fleet_app(&v1, "quiesce = \"stop\"\n"));
    crate::support::sh(std::process::Command::new("docker").args(["stop", "-t", "5", &name]));
    assert_eq!(state(&s, &name), (false, false));
    let out = s.slipway_env(&["snapshot"], &[(CRASH, "snapshot-quiesced")]);
    assert_eq!(out.code, -1, "{} {}", out.stdout, out.stderr);
    let rec = s.slipway(&["recover"]);
    assert_eq!(rec.code, 0, "{} {}", rec.stdout, rec.stderr);
    assert_eq!(state(&s, &name), (false, false), "a tenant stopped before the snapshot stays stopped: {}", rec.stdout);

    // Running, stopped by the snapshot itself (quiesce = "stop"), killed while stopped.
    crate::support::sh(std::process::Command::new("docker").args(["start", &name]));
    let out = s.slipway_env(&["snapshot", "--force"], &[(CRASH, "snapshot-quiesced")]);
    assert_eq!(out.code, -1, "{} {}", out.stdout, out.stderr);
    assert_eq!(state(&s, &name), (false, false), "the crash point is after the stop");
    let rec = s.slipway(&["recover"]);
    assert_eq!(rec.code, 0, "{} {}", rec.stdout, rec.stderr);
    assert_eq!(state(&s, &name), (true, false), "a tenant slipway stopped is started: {}", rec.stdout);
}

/// A restore whose tenant is not healthy afterwards ends `person_needed` (exit 4); `recover`
/// (run first by every minute's reconcile) must not mark it recovered: `status` keeps naming it
/// (exit 8) until a person resolves it — here by a successful restore of that tenant.
#[test]
fn a_restore_that_needs_a_person_stays_in_status_after_recover_until_a_person_restores_the_tenant() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let name = s.add_tenant("t1", &v1);
    s.write_data("t1", "db/records.txt", "good rows\n");
    s.write_fleet(&s.fleet_app(&v1, ""));
    // A snapshot of data the app refuses to start on.
    s.write_data("t1", "db/corrupt", "x");
    assert_eq!(s.slipway(&["snapshot"]).code, 0);
    std::fs::remove_file(s.data_dir("t1").join("db/corrupt")).unwrap();
    let good = tree_hash(&s.data_dir("t1"));
    let out = s.slipway(&["restore", "--tenant", "t1", "--latest", "--json"]);
    assert_eq!(out.code, 4, "{} {}", out.stdout, out.stderr);
    let bad_run = out.run_id();

    for _ in 0..2 {
        let rec = s.slipway(&["recover"]);
        assert_eq!(rec.code, 0, "{} {}", rec.stdout, rec.stderr);
    }
    let st = s.slipway(&["status", "--json"]);
    assert_eq!(st.code, 8, "{} {}", st.stdout, st.stderr);
    let status: Status = st.report();
    assert!(status.attention.iter().any(|a| a.contains(&bad_run)), "{:?}", status.attention);

    // The person puts back the data the restore replaced: the tenant runs healthy, resolved.
    let out = s.slipway(&["restore", "--tenant", "t1", "--run", &bad_run, "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert_eq!(tree_hash(&s.data_dir("t1")), good);
    assert_eq!(state(&s, &name), (true, false));
    let st = s.slipway(&["status", "--json"]);
    let status: Status = st.report();
    assert!(!status.attention.iter().any(|a| a.contains(&bad_run)), "{:?}", status.attention);
}

/// `restore --run R` of a rollout that halted restores the run's snapshot — the tenant's data
/// from before the rollout — not what the failed version wrote (kept under `replaced/R/`).
#[test]
fn restore_run_of_a_halted_rollout_restores_the_pre_rollout_snapshot_not_what_the_failed_version_wrote() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let bad = s.push_fixture_as("unhealthy", "app");
    let name = s.add_tenant("t1", &v1);
    s.write_data("t1", "db/records.txt", &"customer row\n".repeat(100));
    let before = tree_hash(&s.data_dir("t1"));
    s.write_fleet(&s.fleet_app(&bad, "pre_copy = false\n"));
    let out = s.slipway(&["rollout", "--json"]);
    assert_eq!(out.code, 3, "{} {}", out.stdout, out.stderr);
    let run = out.run_id();
    let replaced = s.backups().join(format!("replaced/{run}/t1"));
    assert!(replaced.is_dir(), "the failed version's tree is kept");
    assert_ne!(tree_hash(&replaced), before);
    // The tenant, back on v1, writes on; the operator wants the data from before the rollout.
    s.write_data("t1", "db/records.txt", "written after the halt\n");
    let out = s.slipway(&["restore", "--tenant", "t1", "--run", &run, "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let r: Restore = out.report();
    assert_eq!(tree_hash(&s.data_dir("t1")), before, "{}", r.detail);
    assert!(
        out.json()["report"]["archive"].as_str().is_some_and(|a| a.ends_with(&format!("rollout/{run}/t1.tar.zst"))),
        "{}",
        out.stdout
    );
    assert_eq!(state(&s, &name), (true, false));
}

/// Every container of the sandbox: name, id, and whether it runs.
fn containers(s: &Sandbox) -> Vec<(String, String, bool)> {
    let mut out: Vec<(String, String, bool)> = s
        .containers_named_like("")
        .into_iter()
        .map(|n| {
            let c = s.inspect(&n);
            (n, c["Id"].as_str().unwrap().to_string(), c["State"]["Running"].as_bool().unwrap_or(false))
        })
        .collect();
    out.sort();
    out
}

/// A rollout killed as it was about to start the new version (its data may be the new
/// version's from here, so undo puts the snapshot back): `recover --dry-run --json` prints the
/// plan — the run, the tenant, an undo with its data — and touches nothing: every container
/// keeps its id and state, the data its tree, the run stays unfinished. Then `recover` carries
/// out that same plan: the prior container back under the tenant's name, running, on the data
/// from before the rollout.
#[test]
fn recover_dry_run_prints_the_plan_and_touches_nothing_then_recover_carries_it_out() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let v2 = s.push_fixture_as("v2", "app");
    let name = s.add_tenant("t1", &v1);
    s.write_data("t1", "db/records.txt", &"customer rows\n".repeat(500));
    let before = tree_hash(&s.data_dir("t1"));
    let prior_id = s.inspect(&name)["Id"].as_str().unwrap().to_string();
    s.write_fleet(&s.fleet_app(&v2, ""));
    s.slipway_killed_at(&["rollout"], "during-start");
    let held = containers(&s);
    assert!(held.iter().any(|(_, id, _)| *id == prior_id), "the prior container is still there, aside: {held:?}");

    let dry = s.slipway(&["recover", "--dry-run", "--json"]);
    assert_eq!(dry.code, 0, "{} {}", dry.stdout, dry.stderr);
    let plan = dry.report::<Recover>();
    assert_eq!(plan.runs.len(), 1, "{}", dry.stdout);
    let run = &plan.runs[0];
    assert_eq!(run["job"], "rollout", "{run}");
    let tenants = run["tenants"].as_array().unwrap();
    assert_eq!(tenants.len(), 1, "{run}");
    assert_eq!(tenants[0]["tenant"], "t1", "{run}");
    assert_eq!(tenants[0]["plan"], "undo-with-data", "{run}");
    assert!(tenants[0]["action"].as_str().unwrap().starts_with("would "), "{run}");
    // Nothing was touched: the same containers in the same state, the same data, the run unfinished.
    assert_eq!(containers(&s), held, "recover --dry-run changed a container");
    assert_eq!(tree_hash(&s.data_dir("t1")), before, "recover --dry-run changed the data");
    let human = s.slipway(&["recover", "--dry-run"]);
    assert_eq!(human.code, 0, "{} {}", human.stdout, human.stderr);
    assert!(human.stdout.contains("nothing was touched") && human.stdout.contains("t1:"), "{}", human.stdout);
    assert_eq!(containers(&s), held, "recover --dry-run changed a container");

    let rec = s.slipway(&["recover", "--json"]);
    assert_eq!(rec.code, 0, "{} {}", rec.stdout, rec.stderr);
    let done = rec.report::<Recover>();
    assert_eq!(done.runs.len(), 1, "{}", rec.stdout);
    assert_eq!(done.runs[0]["run_id"], run["run_id"]);
    assert_eq!(
        done.runs[0]["tenants"][0]["plan"], "undo-with-data",
        "the real run carries out the plan: {}",
        rec.stdout
    );
    assert_eq!(done.runs[0]["tenants"][0]["ok"], true, "{}", rec.stdout);
    let c = s.inspect(&name);
    assert_eq!(c["Id"].as_str(), Some(prior_id.as_str()), "the prior container is back under the tenant's name");
    assert_eq!(c["State"]["Running"].as_bool(), Some(true));
    assert_eq!(tree_hash(&s.data_dir("t1")), before, "the data from before the rollout");
    // Planned and done: a second dry run finds nothing.
    let again = s.slipway(&["recover", "--dry-run", "--json"]).report::<Recover>();
    assert!(again.runs.is_empty(), "{:?}", again.runs);
}
