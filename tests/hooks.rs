//! Lifecycle hooks (`[app.hooks]`): `pre_switch`, a one-shot container of the new image on the
//! tenant's data, run after its data is copied and before the switch; `post_switch` beside the
//! healthy new version; `on_failure` (the prior image) once a failed tenant is back. What an operator checks:
//! the migration ran with the tenant's data and env; a hook that fails, times out or asks to
//! skip leaves the tenant on its prior container with its data byte for byte as before (what
//! the hook wrote undone); a kill at the hook's step is undone by `recover`; no hook container
//! is ever left.

use crate::support::{tree_hash, Sandbox};

/// A fleet rolling to `image` with a `pre_switch` hook running `script` (busybox sh) with
/// `timeout_s`.
fn hooked(s: &Sandbox, image: &str, script: &str, timeout_s: u64) -> String {
    s.fleet_app(
        image,
        &format!(
            "[app.hooks.pre_switch]\nentrypoint = [\"/bin/busybox\", \"sh\", \"-c\"]\ncommand = [{}]\ntimeout_s = {timeout_s}\n",
            serde_json::to_string(script).unwrap()
        ),
    )
}

/// The hook containers of the tenant container `name` (they carry none of its labels; their
/// name starts with its own, and so with this sandbox's id).
fn hook_containers(name: &str) -> Vec<String> {
    let out = std::process::Command::new("docker").args(["ps", "-a", "--format", "{{.Names}}"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|n| n.starts_with(name) && n.ends_with(".hook"))
        .map(str::to_string)
        .collect()
}

#[test]
fn a_pre_switch_hook_runs_in_the_new_image_on_the_tenants_data_with_its_env_before_the_switch() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let v2 = s.push_fixture_as("v2", "app");
    let a = s.add_tenant("t1", &v1);
    let b = s.add_tenant("t2", &v1);
    s.write_data("t1", "rows.txt", "t1 rows\n");
    let script = "echo \"$SLIPWAY_HOOK $SLIPWAY_TENANT $SLIPWAY_OLD_DIGEST $SLIPWAY_NEW_DIGEST $SLIPWAY_WAVE \
                  $SLIPWAY_RUN_ID $TENANT\" > /data/migrated";
    s.write_fleet(&hooked(&s, &v2, script, 60));
    let out = s.slipway(&["rollout", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let digest = v2.split('@').nth(1).unwrap();
    let old = v1.split('@').nth(1).unwrap();
    let run = out.json()["report"]["apps"][0]["run_id"].as_str().unwrap().to_string();
    for (t, name, wave) in [("t1", &a, "canary"), ("t2", &b, "rest")] {
        assert_eq!(s.image_of(name), v2, "{t}");
        let m = std::fs::read_to_string(s.data_dir(t).join("migrated")).unwrap();
        // The tenant's own env (TENANT) is the container's; the hook's is added: the digest it
        // runs now, the one it goes to, and the run that records it.
        assert_eq!(m.trim(), format!("pre_switch {t} {old} {digest} {wave} {run} {t}"), "{t}");
    }
    assert_eq!(std::fs::read_to_string(s.data_dir("t1").join("rows.txt")).unwrap(), "t1 rows\n");
    let t = &out.json()["report"]["apps"][0]["tenants"][0];
    assert!(t["timings"]["pre_switch_ms"].as_u64().is_some(), "{t}");
    assert!(hook_containers(&a).is_empty() && hook_containers(&b).is_empty());
}

#[test]
fn a_hook_that_fails_times_out_or_skips_leaves_the_tenant_as_it_was_with_its_data() {
    for (case, script, timeout_s, code, outcome, words) in [
        (
            "fails",
            "echo broken > /data/rows.txt; echo 'migration 7 failed' >&2; exit 3",
            60,
            3,
            "restored",
            "exited 3: migration 7 failed",
        ),
        (
            "times out",
            "echo broken > /data/rows.txt; exec /bin/busybox sleep 60",
            2,
            3,
            "restored",
            "timed out after 2 s",
        ),
        ("skips", "echo broken > /data/rows.txt; exit 75", 60, 0, "skipped", "exited 75 (skip this tenant)"),
    ] {
        let s = Sandbox::new();
        let v1 = s.push_fixture_as("v1", "app");
        let v2 = s.push_fixture_as("v2", "app");
        let name = s.add_tenant("t1", &v1);
        s.write_data("t1", "rows.txt", "t1 rows\n");
        s.write_data("t1", "db/ledger", &"entry\n".repeat(1000));
        let before = tree_hash(&s.data_dir("t1"));
        let id = s.inspect(&name)["Id"].clone();
        s.write_fleet(&hooked(&s, &v2, script, timeout_s));
        let out = s.slipway(&["rollout", "--json"]);
        assert_eq!(out.code, code, "{case}: {} {}", out.stdout, out.stderr);
        let t = &out.json()["report"]["apps"][0]["tenants"][0];
        assert_eq!(t["outcome"], outcome, "{case}: {t}");
        assert!(t["detail"].as_str().unwrap_or_default().contains(words), "{case}: {t}");
        assert_eq!(s.inspect(&name)["Id"], id, "{case}: the prior container must be the one it had");
        assert_eq!(s.image_of(&name), v1, "{case}");
        assert_eq!(s.inspect(&name)["State"]["Running"], true, "{case}");
        assert_eq!(tree_hash(&s.data_dir("t1")), before, "{case}: what the hook wrote must be undone");
        assert!(hook_containers(&name).is_empty(), "{case}: {:?}", hook_containers(&name));
    }
}

#[test]
fn a_rollout_killed_at_its_hook_step_is_undone_by_recover_with_the_data_as_before() {
    use slipway_jobs::step::Step;
    for point in [Step::PreSwitch.during().to_string(), Step::PreSwitch.after().to_string()] {
        let s = Sandbox::new();
        let v1 = s.push_fixture_as("v1", "app");
        let v2 = s.push_fixture_as("v2", "app");
        let name = s.add_tenant("t1", &v1);
        s.write_data("t1", "rows.txt", "t1 rows\n");
        let before = tree_hash(&s.data_dir("t1"));
        s.write_fleet(&hooked(&s, &v2, "echo migrated > /data/rows.txt", 60));
        let out = s.slipway_env(&["rollout", "--json"], &[("SLIPWAY_TEST_CRASH_AT", point.as_str())]);
        assert!(out.stderr.contains(&format!("slipway test point reached: {point}")), "{point}: {}", out.stderr);
        assert_eq!(out.code, -1, "{point}");
        let rec = s.slipway(&["recover", "--json"]);
        assert_eq!(rec.code, 0, "{point}: {} {}", rec.stdout, rec.stderr);
        assert_eq!(s.image_of(&name), v1, "{point}");
        assert_eq!(s.inspect(&name)["State"]["Running"], true, "{point}");
        assert_eq!(tree_hash(&s.data_dir("t1")), before, "{point}: the hook's write must be undone");
        assert!(hook_containers(&name).is_empty(), "{point}: {:?}", hook_containers(&name));
    }
}

#[test]
fn bad_hooks_are_refused_naming_the_key_and_nothing_is_touched() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let v2 = s.push_fixture_as("v2", "app");
    let name = s.add_tenant("t1", &v1);
    s.write_fleet(&s.fleet_app(&v2, "[app.hooks.pre_switch]\ncommand = []\n"));
    let out = s.slipway(&["rollout"]);
    assert_eq!(out.code, 2, "{} {}", out.stdout, out.stderr);
    assert!(out.stderr.contains("hooks.pre_switch.command"), "{}", out.stderr);
    assert_eq!(s.image_of(&name), v1);
}

#[test]
fn a_failing_post_switch_hook_undoes_the_tenant_with_its_data_and_on_failure_is_told() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let writer = s.push_fixture_as("writer", "app");
    let name = s.add_tenant("t1", &v1);
    s.write_data("t1", "rows.txt", "t1 rows\n");
    let before = tree_hash(&s.data_dir("t1"));
    let id = s.inspect(&name)["Id"].clone();
    // The new version (writer) changes the data when it starts; the smoke test then fails.
    let hooks = "[app.hooks.post_switch]\nentrypoint = [\"/bin/busybox\", \"sh\", \"-c\"]\n\
                 command = [\"echo smoke > /data/smoke; echo 'smoke test: 500' >&2; exit 1\"]\n\
                 [app.hooks.on_failure]\nentrypoint = [\"/bin/busybox\", \"sh\", \"-c\"]\n\
                 command = [\"[ \\\"$SLIPWAY_HOOK\\\" = on_failure ] && [ \\\"$SLIPWAY_TENANT\\\" = t1 ] || exit 9\"]\n";
    s.write_fleet(&s.fleet_app(&writer, hooks));
    let out = s.slipway(&["rollout", "--json"]);
    assert_eq!(out.code, 3, "{} {}", out.stdout, out.stderr);
    let t = &out.json()["report"]["apps"][0]["tenants"][0];
    assert_eq!(t["outcome"], "restored", "{t}");
    let detail = t["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("post_switch hook exited 1: smoke test: 500"), "{detail}");
    assert!(detail.contains("on_failure hook ran"), "{detail}");
    assert_eq!(s.inspect(&name)["Id"], id, "the prior container must be the one it had");
    assert_eq!(s.image_of(&name), v1);
    assert_eq!(tree_hash(&s.data_dir("t1")), before, "the new version's and the hook's writes must be undone");
    assert!(hook_containers(&name).is_empty(), "{:?}", hook_containers(&name));
    // A post_switch that passes lets the rollout finish.
    let ok =
        "[app.hooks.post_switch]\nentrypoint = [\"/bin/busybox\", \"sh\", \"-c\"]\ncommand = [\"test -d /data\"]\n";
    s.write_fleet(&s.fleet_app(&writer, ok));
    let out = s.slipway(&["reconcile", "--retry", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert_eq!(s.image_of(&name), writer);
}

#[test]
fn a_rollout_killed_at_its_post_switch_hook_is_undone_by_recover_unless_the_hook_had_passed() {
    use slipway_jobs::step::Step;
    for point in [Step::PostSwitch.during().to_string(), Step::PostSwitch.after().to_string()] {
        let s = Sandbox::new();
        let v1 = s.push_fixture_as("v1", "app");
        let v2 = s.push_fixture_as("v2", "app");
        let name = s.add_tenant("t1", &v1);
        s.write_data("t1", "rows.txt", "t1 rows\n");
        let before = tree_hash(&s.data_dir("t1"));
        let hooks = "[app.hooks.post_switch]\nentrypoint = [\"/bin/busybox\", \"sh\", \"-c\"]\ncommand = [\"echo smoke > /data/smoke\"]\n";
        s.write_fleet(&s.fleet_app(&v2, hooks));
        let out = s.slipway_env(&["rollout", "--json"], &[("SLIPWAY_TEST_CRASH_AT", point.as_str())]);
        assert!(out.stderr.contains(&format!("slipway test point reached: {point}")), "{point}: {}", out.stderr);
        let rec = s.slipway(&["recover", "--json"]);
        assert_eq!(rec.code, 0, "{point}: {} {}", rec.stdout, rec.stderr);
        assert_eq!(s.inspect(&name)["State"]["Running"], true, "{point}");
        assert!(hook_containers(&name).is_empty(), "{point}: {:?}", hook_containers(&name));
        if point.starts_with("during") {
            // The smoke test never said yes: undone, the hook's write with it.
            assert_eq!(s.image_of(&name), v1, "{point}");
            assert_eq!(tree_hash(&s.data_dir("t1")), before, "{point}: the hook's write must be undone");
        } else {
            // It did: the new version is kept, as after its health gate.
            assert_eq!(s.image_of(&name), v2, "{point}");
            assert!(s.data_dir("t1").join("smoke").exists(), "{point}");
        }
    }
}

#[test]
fn recover_removes_a_hook_container_a_dead_rollout_left_and_never_another_slipways() {
    use crate::support::reports::Runs;
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let name = s.add_tenant("t1", &v1);
    // A rollout killed once its failed tenant was back (as one killed while its on_failure
    // hook ran would be) ...
    let bad = s.push_fixture_as("unhealthy", "app");
    s.write_fleet(&s.fleet_app(&bad, "health = { path = \"/api/health\", port = 8080, timeout_s = 3 }\n"));
    let out = s.slipway_env(&["rollout"], &[("SLIPWAY_TEST_CRASH_AT", "after-undo-health-prior")]);
    assert_eq!(out.code, -1, "{}", out.stderr);
    let runs = s.slipway(&["runs", "--json"]).report::<Runs>().runs;
    let run = runs.iter().find(|r| r.job == "rollout").unwrap().id.clone();
    // ... and the hook container it had left, beside one of a run this record does not know.
    let mine = format!("{name}.pre-rollout-{run}.hook");
    let foreign = format!("{name}.pre-rollout-20200101T000000Z-0000.hook");
    for c in [&mine, &foreign] {
        let made = std::process::Command::new("docker")
            .args(["create", "--name", c, "--label", "slipway.hook=x", &v1])
            .output()
            .unwrap();
        assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    }
    let rec = s.slipway(&["recover", "--json"]);
    assert_eq!(rec.code, 0, "{} {}", rec.stdout, rec.stderr);
    let left = hook_containers(&name);
    let _ = std::process::Command::new("docker").args(["rm", "-f", &foreign]).output();
    // Gone (by the tenant's undo, or by the sweep when the undo was over), the other kept.
    assert_eq!(left, vec![foreign.clone()], "{}", rec.stdout);
    assert_eq!(s.image_of(&name), v1);
}
