//! Crash safety: a rollout killed (SIGKILL-like abort, or SIGTERM) at every step boundary is
//! finished or undone by `slipway recover`; a snapshot killed mid-archive leaves no archive
//! under its final name and the tenant unpaused; a restore killed before the swap leaves the
//! old data in place. The crash points exist only in builds with the `test-crash` feature;
//! the rollout's are derived from its steps (`Step::ALL`), so a new step is tested here as
//! soon as it exists, and every test checks that its point was really reached.

use slipway_jobs::step::{CrashPoint, Moment, Step, UndoStep};

use crate::support::reports::{Recover, Rollout, Runs, Snapshot};
use crate::support::{tree_hash, Out, Sandbox};

const CRASH: &str = "SLIPWAY_TEST_CRASH_AT";
const SIGNAL: &str = "SLIPWAY_TEST_SIGNAL_AT";

fn image_of(s: &Sandbox, container: &str) -> String {
    s.inspect(container)["Config"]["Image"].as_str().unwrap_or_default().to_string()
}

/// The process stopped at `point` and nowhere else: the point announced itself, and the exit
/// says how (killed by the abort, or 7 after a SIGTERM).
fn assert_stopped_at(out: &Out, point: &str, var: &str) {
    assert!(
        out.stderr.contains(&format!("slipway test point reached: {point}")),
        "{point}: the crash point was never reached (misspelled, or the step did not run): exit {}, {} {}",
        out.code,
        out.stdout,
        out.stderr
    );
    if var == CRASH {
        assert_eq!(out.code, -1, "{point}: the process should have died (stdout {})", out.stdout);
    } else {
        assert_eq!(out.code, 7, "{point}: SIGTERM should end the rollout as interrupted ({})", out.stdout);
    }
}

/// Every crash point of a rollout's steps, with the step and moment it sits at: each step's
/// before it acts and after its end is journaled, and those inside a step (the switch's, with
/// the prior container aside and the tenant's name free).
fn rollout_points() -> Vec<(Step, CrashPoint)> {
    // The steps of a tenant with `[app.database]` are killed in tests/database.rs.
    Step::ALL
        .into_iter()
        .filter(|s| !s.needs_database() && !s.needs_hook() && !s.needs_waves())
        .flat_map(|s| [Some(s.during()), s.halfway(), Some(s.after())].into_iter().flatten().map(move |p| (s, p)))
        .collect()
}

/// Roll two tenants to the `writer` fixture (which changes the data dir when it starts), stop
/// slipway at `point` of the canary t1 with `var`, then check what recover (or the run itself)
/// leaves. Two tenants, so that the canary goes through every step, the soak included.
fn killed_at(step: Step, point: CrashPoint, var: &str) {
    let moment = point.moment();
    let point_name = point.to_string();
    let point = point_name.as_str();
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let writer = s.push_fixture_as("writer", "app");
    let name = s.add_tenant("t1", &v1);
    let other = s.add_tenant("t2", &v1);
    s.write_data("t1", "db/records.txt", &"customer row\n".repeat(500));
    let before = tree_hash(&s.data_dir("t1"));
    // The snapshot step is the archive-while-down path's; every other step runs on the
    // pre-copy path (copy beside the data dir, archive after the health gate).
    let path = if step == Step::Snapshot { "pre_copy = false\n" } else { "" };
    s.write_fleet(&s.fleet_app(&writer, path));

    let out = s.slipway_env(&["rollout", "--json"], &[(var, point)]);
    assert_stopped_at(&out, point, var);
    if var == CRASH {
        let rec = s.slipway(&["recover", "--json"]);
        assert_eq!(rec.code, 0, "{point}: recover failed: {} {}", rec.stdout, rec.stderr);
        assert_eq!(rec.report::<Recover>().runs.len(), 1, "{point}: {}", rec.stdout);
        // Idempotent: a second recover finds nothing.
        let again = s.slipway(&["recover", "--json"]);
        assert_eq!(again.report::<Recover>().runs.len(), 0, "{point}");
    }
    // Whatever happened: the tenant runs and is healthy under its own name ...
    let c = s.inspect(&name);
    assert_eq!(c["State"]["Running"], true, "{point}: tenant left stopped");
    let body = s.http_get(&format!("http://{}:8080/api/health", s.container_ip(&name)));
    // ... on the new version exactly when that had passed its health gate, else on the prior
    // version with its data byte-identical to before.
    let verified = step > Step::Health || (step == Step::Health && moment == Moment::After);
    if verified {
        assert_eq!(image_of(&s, &name), writer, "{point}: a verified new version was not kept");
        assert!(body.contains("writer"), "{point}: {body}");
    } else {
        assert_eq!(image_of(&s, &name), v1, "{point}: an unverified new version was kept");
        assert_eq!(tree_hash(&s.data_dir("t1")), before, "{point}: data dir not restored");
    }
    // The tenant after the canary was not reached: still on v1, running.
    assert_eq!(image_of(&s, &other), v1, "{point}: t2 was touched");
    assert_eq!(s.inspect(&other)["State"]["Running"], true, "{point}: t2 left stopped");
    // Nothing is left renamed aside or staged, no rollout copy is left beside the data dirs,
    // and the run record is closed.
    let mut leftovers = s.containers_named_like(".pre-rollout-");
    leftovers.extend(s.containers_named_like(".next-"));
    assert!(leftovers.is_empty(), "{point}: {leftovers:?}");
    let copies = s.root().join("data/.slipway-rollout");
    assert!(!copies.exists(), "{point}: {:?} left", crate::support::files_under(&copies));
    // A verified new version's run has the archive of the pre-rollout data.
    if verified && step > Step::Soak {
        let run = s.slipway(&["runs", "--json"]).report::<Runs>().runs.into_iter().find(|r| r.job == "rollout");
        let archive = s.backups().join("rollout").join(run.map(|r| r.id).unwrap_or_default()).join("t1.tar.zst");
        assert!(archive.is_file(), "{point}: no rollout archive {}", archive.display());
    }
    for r in s.slipway(&["runs", "--json"]).report::<Runs>().runs {
        assert!(r.finished_at.is_some(), "{point}: run {} left unfinished", r.id);
    }
}

#[test]
fn a_rollout_killed_at_every_step_is_finished_or_undone_by_recover() {
    for (step, point) in rollout_points() {
        killed_at(step, point, CRASH);
    }
}

#[test]
fn a_rollout_sent_sigterm_at_every_step_leaves_no_tenant_stopped() {
    for (step, point) in rollout_points() {
        killed_at(step, point, SIGNAL);
    }
}

#[test]
fn a_rollout_sent_sighup_when_the_operators_session_drops_undoes_the_tenant_like_sigterm() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let writer = s.push_fixture_as("writer", "app");
    let name = s.add_tenant("t1", &v1);
    s.write_data("t1", "db/records.txt", &"customer row\n".repeat(500));
    let before = tree_hash(&s.data_dir("t1"));
    s.write_fleet(&s.fleet_app(&writer, ""));
    // After start: the new version has run on the data, so the undo must restore it too.
    let out = s.slipway_env(&["rollout", "--json"], &[(SIGNAL, "after-start:HUP")]);
    assert_stopped_at(&out, "after-start", SIGNAL);
    assert_eq!(out.report::<Rollout>().apps[0].tenants[0].outcome, "restored", "{}", out.stdout);
    assert_eq!(s.inspect(&name)["State"]["Running"], true, "tenant left stopped");
    assert_eq!(image_of(&s, &name), v1);
    assert_eq!(tree_hash(&s.data_dir("t1")), before, "data dir not restored");
    assert!(s.containers_named_like(".pre-rollout-").is_empty());
    let runs = s.slipway(&["runs", "--json"]).report::<Runs>().runs;
    let rollout = runs.iter().find(|r| r.job == "rollout");
    assert_eq!(rollout.and_then(|r| r.outcome.as_deref()), Some("interrupted"), "{runs:?}");
}

/// Where a test makes undo run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UndoCase {
    /// A rollout sent SIGTERM once its new version started: the prior container is renamed back.
    Interrupted,
    /// A rollback of a finished rollout: the prior container was removed and is recreated.
    Rollback,
}

impl UndoCase {
    /// Whether undo goes through `step` in this case.
    fn reaches(self, step: UndoStep) -> bool {
        !matches!(
            (self, step),
            (UndoCase::Interrupted, UndoStep::RecreatePrior) | (UndoCase::Rollback, UndoStep::RenameBack)
        )
    }
}

/// Make undo run on t1 (its data changed by the `writer` version), kill slipway at `point` of
/// the undo, run recover: t1 must be back on its prior image, running, with its data as before.
fn undo_killed_at(case: UndoCase, point: CrashPoint) {
    let point_name = point.to_string();
    let point = point_name.as_str();
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let writer = s.push_fixture_as("writer", "app");
    let name = s.add_tenant("t1", &v1);
    s.write_data("t1", "db/records.txt", &"customer row\n".repeat(500));
    let before = tree_hash(&s.data_dir("t1"));
    s.write_fleet(&s.fleet_app(&writer, ""));

    let out = match case {
        UndoCase::Interrupted => s.slipway_env(&["rollout", "--json"], &[(SIGNAL, "after-start"), (CRASH, point)]),
        UndoCase::Rollback => {
            let rolled = s.slipway(&["rollout", "--json"]);
            assert_eq!(rolled.code, 0, "{point}: {}", rolled.stdout);
            assert_eq!(image_of(&s, &name), writer);
            let run = rolled.report::<Rollout>().apps[0].run_id.clone().unwrap();
            s.slipway_env(&["rollback", "--run", &run, "--json"], &[(CRASH, point)])
        }
    };
    assert_stopped_at(&out, point, CRASH);
    let rec = s.slipway(&["recover", "--json"]);
    assert_eq!(rec.code, 0, "{case:?} {point}: recover failed: {} {}", rec.stdout, rec.stderr);
    let again = s.slipway(&["recover", "--json"]);
    assert_eq!(again.report::<Recover>().runs.len(), 0, "{case:?} {point}");

    assert_eq!(s.inspect(&name)["State"]["Running"], true, "{case:?} {point}: tenant left stopped");
    assert_eq!(image_of(&s, &name), v1, "{case:?} {point}: not back on the prior image");
    let body = s.http_get(&format!("http://{}:8080/api/health", s.container_ip(&name)));
    assert!(!body.contains("writer"), "{case:?} {point}: {body}");
    assert_eq!(tree_hash(&s.data_dir("t1")), before, "{case:?} {point}: data dir not restored");
    let leftovers = s.containers_named_like(".pre-rollout-");
    assert!(leftovers.is_empty(), "{case:?} {point}: {leftovers:?}");
}

#[test]
fn an_undo_killed_at_every_undo_step_is_finished_by_recover() {
    // The undo steps of a tenant with `[app.database]` are killed in tests/database.rs.
    for step in UndoStep::ALL.into_iter().filter(|u| !u.needs_database()) {
        let cases: Vec<UndoCase> =
            [UndoCase::Interrupted, UndoCase::Rollback].into_iter().filter(|c| c.reaches(step)).collect();
        assert!(!cases.is_empty(), "no test reaches undo step {step}");
        for case in cases {
            for point in [step.during(), step.after()] {
                undo_killed_at(case, point);
            }
        }
    }
}

#[test]
fn a_rollout_journal_row_recover_cannot_read_stops_it_before_any_tenant_is_touched() {
    // Killed with the canary stopped; then its newest journal row is changed by hand (or by
    // another version). recover must refuse the whole run, naming the row, not skip the row
    // and act on what is left of the journal.
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let v2 = s.push_fixture_as("v2", "app");
    let name = s.add_tenant("t1", &v1);
    s.write_data("t1", "db/records.txt", &"customer row\n".repeat(50));
    let before = tree_hash(&s.data_dir("t1"));
    s.write_fleet(&s.fleet_app(&v2, ""));
    let out = s.slipway_env(&["rollout", "--json"], &[(CRASH, "after-stop")]);
    assert_stopped_at(&out, "after-stop", CRASH);
    let id = s.inspect(&name)["Id"].clone();
    assert_eq!(s.inspect(&name)["State"]["Running"], false);
    let db = rusqlite::Connection::open(s.state().join("state.db")).unwrap();
    let (row, detail): (i64, String) = db
        .query_row("SELECT id, detail FROM steps WHERE tenant = 't1' ORDER BY id DESC LIMIT 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    db.execute("UPDATE steps SET detail = '{\"stopped\":true}' WHERE id = ?1", [row]).unwrap();

    for args in [&["recover", "--dry-run"][..], &["recover"][..]] {
        let rec = s.slipway(args);
        assert_ne!(rec.code, 0, "{args:?}: {} {}", rec.stdout, rec.stderr);
        let said = format!("{}{}", rec.stdout, rec.stderr);
        assert!(
            said.contains(&format!("step row {row}")) && said.contains("tenant t1") && said.contains("does not parse"),
            "{args:?}: {said}"
        );
    }
    // Nothing was done on what was left of the journal: the tenant is as the kill left it.
    assert_eq!(s.inspect(&name)["Id"], id);
    assert_eq!(s.inspect(&name)["State"]["Running"], false);
    // Once the row reads again, recover puts the prior version back on its data.
    db.execute("UPDATE steps SET detail = ?2 WHERE id = ?1", rusqlite::params![row, detail]).unwrap();
    let rec = s.slipway(&["recover", "--json"]);
    assert_eq!(rec.code, 0, "{} {}", rec.stdout, rec.stderr);
    assert_eq!(s.inspect(&name)["State"]["Running"], true);
    assert_eq!(image_of(&s, &name), v1);
    assert_eq!(tree_hash(&s.data_dir("t1")), before);
    // A finished run's unreadable row stops neither status nor the sweep: both name it.
    db.execute("UPDATE steps SET detail = '{\"stopped\":true}' WHERE id = ?1", [row]).unwrap();
    let st = s.slipway(&["status"]);
    assert!(st.stdout.contains(&format!("step row {row}")) && st.stdout.contains(".slipway-rollout"), "{}", st.stdout);
    let rec = s.slipway(&["recover", "--json"]);
    assert_eq!(rec.code, 0, "{} {}", rec.stdout, rec.stderr);
    assert!(rec.stdout.contains(&format!("step row {row}")), "{}", rec.stdout);
}

#[test]
fn a_misspelled_crash_point_is_reported_as_never_reached() {
    // The guard the tests above rely on: a point no step has lets the rollout finish, and
    // `assert_stopped_at` says so instead of passing.
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let v2 = s.push_fixture_as("v2", "app");
    s.add_tenant("t1", &v1);
    s.write_fleet(&s.fleet_app(&v2, ""));
    let out = s.slipway_env(&["rollout", "--json"], &[(CRASH, "after-snapshott")]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let caught = std::panic::catch_unwind(|| assert_stopped_at(&out, "after-snapshott", CRASH));
    assert!(caught.is_err(), "a crash point that was never reached must fail the test");
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
fn a_snapshot_killed_around_its_paused_delta_is_recovered_and_the_next_one_archives_the_data_exactly() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let name = s.add_tenant("t1", &v1);
    s.write_data("t1", "db/records.txt", &"rows\n".repeat(1000));
    s.write_fleet(&s.fleet_app(&v1, ""));
    let staging = s.backups().join("staging/t1");
    // Before the pause (the copy made while running), and after the unpause (before the archive).
    for point in ["snapshot-staged", "snapshot-resumed"] {
        s.write_data("t1", &format!("db/{point}.txt"), "written before the crash");
        let before = tree_hash(&s.data_dir("t1"));
        let out = s.slipway_env(&["snapshot", "--force"], &[("SLIPWAY_TEST_CRASH_AT", point)]);
        assert_stopped_at(&out, point, CRASH);
        let rec = s.slipway(&["recover"]);
        assert_eq!(rec.code, 0, "{} {}", rec.stdout, rec.stderr);
        let st = &s.inspect(&name)["State"];
        assert_eq!((st["Running"].as_bool(), st["Paused"].as_bool()), (Some(true), Some(false)), "{point}");
        // recover touched neither the data dir nor the staging copy (a complete pass's copy).
        assert_eq!(tree_hash(&s.data_dir("t1")), before, "{point}");
        assert_eq!(tree_hash(&staging), before, "{point}");
        // The tenant writes on; the next snapshot's archive is exactly the data.
        s.write_data("t1", "db/after.txt", point);
        let now = tree_hash(&s.data_dir("t1"));
        let out = s.slipway(&["snapshot", "--force", "--json"]);
        assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
        let to = s.root().join(format!("restored-{point}"));
        let r = s.slipway(&["restore", "--tenant", "t1", "--latest", "--to", to.to_str().unwrap()]);
        assert_eq!(r.code, 0, "{} {}", r.stdout, r.stderr);
        assert_eq!(tree_hash(&to), now, "{point}");
    }
}

/// systemd stopping the snapshot unit (SIGTERM) before, during and after a tenant's pause: the
/// job ends at once with exit 7, every tenant running and unpaused without `recover`, nothing
/// half-written listed in the day's manifest; the next snapshot archives the data exactly.
#[test]
fn a_snapshot_sent_sigterm_around_its_pause_leaves_every_tenant_running_and_archives_nothing_half_done() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let names = [s.add_tenant("t1", &v1), s.add_tenant("t2", &v1)];
    for t in ["t1", "t2"] {
        s.write_data(t, "db/records.txt", &"rows\n".repeat(1000));
    }
    s.write_fleet(&s.fleet_app(&v1, ""));
    for point in ["snapshot-staged", "snapshot-quiesced", "snapshot-resumed"] {
        s.write_data("t1", &format!("db/{point}.txt"), "written before the signal");
        let out = s.slipway_env(&["snapshot", "--force", "--json"], &[(SIGNAL, point)]);
        assert_stopped_at(&out, point, SIGNAL);
        let report: Snapshot = out.report();
        assert_eq!(report.archives.len(), 2, "{}", out.stdout);
        for a in &report.archives {
            assert_eq!(a.outcome, "interrupted", "{point}: {a:?}");
        }
        // Only a pause that had begun when the signal came was taken.
        let paused: Vec<u64> = report.archives.iter().map(|a| a.pause_ms).collect();
        if point == "snapshot-staged" {
            assert_eq!(paused, [0, 0], "{point}: no tenant may be paused after the signal");
        }
        for name in &names {
            let st = &s.inspect(name)["State"];
            assert_eq!((st["Running"].as_bool(), st["Paused"].as_bool()), (Some(true), Some(false)), "{point} {name}");
        }
        let manifest = std::fs::read_to_string(report.dir.join("MANIFEST.json")).unwrap_or_default();
        assert!(!manifest.contains("tenants/t"), "{point}: nothing of this run may be listed: {manifest}");
    }
    // The next run archives every tenant, and a restore is exactly the data.
    let before = tree_hash(&s.data_dir("t1"));
    let out = s.slipway(&["snapshot", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let to = s.root().join("restored");
    let r = s.slipway(&["restore", "--tenant", "t1", "--latest", "--to", to.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{} {}", r.stdout, r.stderr);
    assert_eq!(tree_hash(&to), before);
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

#[test]
fn recover_converges_when_a_create_in_flight_at_the_kill_takes_the_tenants_name_late() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let v2 = s.push_fixture_as("v2", "app");
    let name = s.add_tenant("t1", &v1);
    s.write_data("t1", "db/records.txt", "customer rows\n");
    let (id, data) = (s.inspect(&name)["Id"].clone(), tree_hash(&s.data_dir("t1")));
    s.write_fleet(&s.fleet_app(&v2, ""));
    // Killed with the prior container renamed aside and the tenant's name free ...
    let out = s.slipway_env(&["rollout", "--json"], &[(CRASH, "halfway-switch")]);
    assert_stopped_at(&out, "halfway-switch", CRASH);
    // ... and the create it had sent completes while recover is already at work.
    // Created once recover says it is held at the point (not after a guessed sleep: on a
    // loaded host it may take longer than any fixed time to get there).
    let (recover, reached, reader) = s.spawn_held_at(&["recover", "--json"], "undo-before-rename-back", 3000);
    crate::support::sh(std::process::Command::new("docker").args([
        "create",
        "--name",
        &name,
        "--label",
        &format!("slipway.test={}", s.id()),
        &v2,
    ]));
    let rec = recover.wait_with_output().unwrap();
    let stderr = reader.join().unwrap();
    assert!(reached, "recover never reached undo-before-rename-back: {stderr}");
    assert_eq!(rec.status.code(), Some(0), "{} {stderr}", String::from_utf8_lossy(&rec.stdout));
    let c = s.inspect(&name);
    assert_eq!(c["Id"], id, "the prior container must hold the tenant's name again");
    assert_eq!(c["State"]["Running"], true);
    assert_eq!(tree_hash(&s.data_dir("t1")), data);
    assert!(s.containers_named_like(".pre-rollout-").is_empty());
}
