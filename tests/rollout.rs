//! Rollout, reconcile and rollback against a real Docker engine, registry and git repo.
//! Each test reads like the runbook's checklist: set up tenants, act, check what an operator
//! would check (exit code, digests, labels, data dir tree hash).

use crate::support::reports::{Rollout, RunShow};
use crate::support::{tree_hash, Env, Sandbox};

/// Three tenants on v1 with some data in each.
fn three_tenants(s: &Sandbox, image: &str) -> Vec<String> {
    ["t1", "t2", "t3"]
        .iter()
        .map(|t| {
            s.write_data(t, "db/records.txt", &format!("{t} customer rows\n").repeat(100));
            s.add_tenant(t, image)
        })
        .collect()
}

#[test]
fn dry_run_prints_the_plan_and_touches_nothing() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let v2 = s.push_fixture_as("v2", "app");
    let names = three_tenants(&s, &v1);
    s.write_fleet(&s.fleet_app(&v2, ""));
    let before: Vec<String> = names.iter().map(|n| s.inspect(n)["Id"].as_str().unwrap().to_string()).collect();
    let out = s.slipway(&["rollout", "--dry-run", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let report: Rollout = out.report();
    let plan = &report.apps[0].plan.as_ref().unwrap().items;
    assert_eq!(plan.len(), 3);
    assert!(plan[0].canary);
    for (n, id) in names.iter().zip(before) {
        assert_eq!(s.inspect(n)["Id"].as_str().unwrap(), id, "container {n} was replaced by a dry run");
        assert_eq!(s.image_of(n), v1);
    }
    assert!(!s.backups().join("rollout").exists(), "a dry run wrote snapshots");
}

#[test]
fn full_rollout_of_three_tenants_keeps_operator_settings_and_drops_image_defaults() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let v2 = s.push_fixture_as("v2", "app");
    let names = three_tenants(&s, &v1);
    let olds: Vec<serde_json::Value> = names.iter().map(|n| s.inspect(n)).collect();
    s.write_fleet(&s.fleet_app(&v2, ""));
    let out = s.slipway(&["rollout", "--json"]);
    assert_eq!(out.code, 0, "stdout {} stderr {}", out.stdout, out.stderr);
    let run_id = out.run_id();
    let report: Rollout = out.report();
    let tenants = &report.apps[0].tenants;
    assert_eq!(tenants.len(), 3);
    for t in tenants {
        assert_eq!(t.outcome, "rolled", "{t:?}");
        assert!(t.downtime_ms.unwrap() > 0);
    }
    for (n, old) in names.iter().zip(&olds) {
        let new = s.inspect(n);
        assert_eq!(s.image_of(n), v2);
        assert_eq!(new["State"]["Running"], true);
        // What the operator set is carried over ...
        for key in ["traefik.http.routers.app.rule", "app.managed", "slipway.test"] {
            assert_eq!(new["Config"]["Labels"][key], old["Config"]["Labels"][key], "label {key}");
        }
        let env: Vec<&str> = new["Config"]["Env"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert!(env.iter().any(|e| e.starts_with("TENANT=")), "{env:?}");
        // ... and the old image's defaults are not: the new image's own apply.
        assert!(env.contains(&"SWFIX_VERSION=v2"), "{env:?}");
        assert_eq!(new["Config"]["Labels"]["fixture.version"], "v2");
        assert_eq!(new["HostConfig"]["RestartPolicy"], old["HostConfig"]["RestartPolicy"]);
        assert_eq!(new["HostConfig"]["Memory"], old["HostConfig"]["Memory"]);
        assert_eq!(new["HostConfig"]["Binds"].as_array().unwrap().len(), 1);
        let aliases = &new["NetworkSettings"]["Networks"][s.network()]["Aliases"];
        assert!(
            aliases
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a.as_str() == Some(n.trim_start_matches(&format!("{}-", s.id())))),
            "{aliases}"
        );
        let body = s.http_get(&format!("http://{}:8080/api/health", s.container_ip(n)));
        assert!(body.contains("v2"), "{body}");
        assert!(!s.container_exists(&format!("{n}.pre-rollout-{run_id}")));
    }
    // Every tenant's data was snapshotted before it was touched.
    let run_dir = s.backups().join("rollout").join(&run_id);
    for t in ["t1", "t2", "t3"] {
        assert!(run_dir.join(format!("{t}.tar.zst")).is_file());
    }
    assert!(run_dir.join("MANIFEST.json").is_file());
    // A second rollout has nothing to do.
    let again = s.slipway(&["rollout", "--json"]);
    assert_eq!(again.code, 0);
    assert_eq!(again.report::<Rollout>().apps[0].plan.as_ref().unwrap().items.len(), 0);
}

#[test]
fn canary_failure_restores_data_byte_identical_and_halts_with_code_3() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let bad = s.push_fixture_as("unhealthy", "app");
    let names = three_tenants(&s, &v1);
    let before: Vec<(serde_json::Value, String)> =
        names.iter().zip(["t1", "t2", "t3"]).map(|(n, t)| (s.inspect(n), tree_hash(&s.data_dir(t)))).collect();
    s.write_fleet(&s.fleet_app(&bad, "health = { path = \"/api/health\", port = 8080, timeout_s = 4 }\n"));
    let out = s.slipway(&["rollout", "--json"]);
    assert_eq!(out.code, 3, "stdout {} stderr {}", out.stdout, out.stderr);
    let run_id = out.run_id();
    let report: Rollout = out.report();
    let tenants = &report.apps[0].tenants;
    assert_eq!(tenants[0].tenant, "t1");
    assert_eq!(tenants[0].outcome, "restored");
    assert_eq!(tenants[1].outcome, "not_reached");
    for ((n, t), (old, hash)) in names.iter().zip(["t1", "t2", "t3"]).zip(&before) {
        let now = s.inspect(n);
        assert_eq!(now["Id"], old["Id"], "{n}: the prior container must be back, not a copy");
        assert_eq!(s.image_of(n), v1);
        assert_eq!(now["State"]["Running"], true);
        assert_eq!(now["Config"]["Labels"], old["Config"]["Labels"]);
        assert_eq!(now["Config"]["Env"], old["Config"]["Env"]);
        assert_eq!(now["Mounts"], old["Mounts"]);
        assert_eq!(
            now["NetworkSettings"]["Networks"][s.network()]["Aliases"],
            old["NetworkSettings"]["Networks"][s.network()]["Aliases"]
        );
        assert_eq!(&tree_hash(&s.data_dir(t)), hash, "{t}: data dir differs from before the rollout");
    }
    assert!(s.http_get(&format!("http://{}:8080/api/health", s.container_ip(&names[0]))).contains("v1"));
    // The run record says what happened.
    let shown = s.slipway(&["runs", "show", &run_id, "--json"]);
    assert_eq!(shown.report::<RunShow>().run.outcome.as_deref(), Some("halted"), "{}", shown.stdout);
}

#[test]
fn an_image_that_exits_at_once_halts_fast_and_restores_the_canary() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let crash = s.push_fixture_as("crash", "app");
    let names = three_tenants(&s, &v1);
    s.write_fleet(&s.fleet_app(&crash, "health = { path = \"/api/health\", port = 8080, timeout_s = 60 }\n"));
    let started = std::time::Instant::now();
    let out = s.slipway(&["rollout", "--json"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(started.elapsed().as_secs() < 45, "an exiting container must fail fast, not wait out the 60 s timeout");
    let detail = out.report::<Rollout>().apps[0].tenants[0].detail.clone().unwrap();
    assert!(detail.contains("exited") || detail.contains("restarted"), "{detail}");
    for n in &names {
        assert_eq!(s.image_of(n), v1);
        assert_eq!(s.inspect(n)["State"]["Running"], true);
    }
}

#[test]
fn a_slow_image_rolls_within_its_timeout_and_halts_beyond_it() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let slow = s.push_fixture_as("slow", "app");
    let names: Vec<String> = ["t1"].iter().map(|t| s.add_tenant(t, &v1)).collect();
    // The slow fixture turns healthy after SWFIX_DELAY seconds (default 8).
    s.write_fleet(&s.fleet_app(&slow, "health = { path = \"/api/health\", port = 8080, timeout_s = 3 }\n"));
    let out = s.slipway(&["rollout", "--json"]);
    assert_eq!(out.code, 3, "beyond the timeout: {}", out.stdout);
    assert_eq!(s.image_of(&names[0]), v1);
    s.write_fleet(&s.fleet_app(&slow, "health = { path = \"/api/health\", port = 8080, timeout_s = 30 }\n"));
    let out = s.slipway(&["rollout", "--json"]);
    assert_eq!(out.code, 0, "within the timeout: {} {}", out.stdout, out.stderr);
    assert_eq!(s.image_of(&names[0]), slow);
}

#[test]
fn a_tag_only_image_is_refused_naming_the_fix_and_nothing_is_touched() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let name = s.add_tenant("t1", &v1);
    let repo = v1.split('@').next().unwrap().to_string();
    s.write_fleet(&s.fleet_app(&format!("{repo}:latest"), ""));
    let out = s.slipway(&["rollout"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("not pinned by digest") && out.stderr.contains("fleet.toml"), "{}", out.stderr);
    assert_eq!(s.image_of(&name), v1);
    assert_eq!(s.inspect(&name)["State"]["Running"], true);
}

#[test]
fn a_digest_the_registry_does_not_have_is_refused_with_nothing_touched() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let name = s.add_tenant("t1", &v1);
    let id = s.inspect(&name)["Id"].clone();
    let repo = v1.split('@').next().unwrap().to_string();
    s.write_fleet(&s.fleet_app(&format!("{repo}@sha256:{}", "0".repeat(64)), ""));
    let out = s.slipway(&["rollout", "--json"]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    let error = out.envelope::<Rollout>().error.unwrap_or_default();
    assert!(error.contains("nothing was changed"), "{}", out.stdout);
    assert_eq!(s.inspect(&name)["Id"], id);
    assert_eq!(s.inspect(&name)["State"]["Running"], true);
    assert!(!s.backups().join("rollout").exists());
}

#[test]
fn reconcile_does_not_retry_a_halted_digest_until_git_pins_another_or_retry() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let bad = s.push_fixture_as("unhealthy", "app");
    let v2 = s.push_fixture_as("v2", "app");
    let name = s.add_tenant("t1", &v1);
    s.write_fleet(&s.fleet_app(&bad, "health = { path = \"/api/health\", port = 8080, timeout_s = 3 }\n"));
    assert_eq!(s.slipway(&["reconcile"]).code, 3);
    let id = s.inspect(&name)["Id"].clone();
    // The timer fires again: nothing is touched.
    let again = s.slipway(&["reconcile", "--json"]);
    assert_eq!(again.code, 0, "{}", again.stdout);
    assert_eq!(again.report::<Rollout>().apps[0].action.as_deref(), Some("skipped_halted"));
    assert_eq!(s.inspect(&name)["Id"], id, "reconcile restarted a tenant for a digest that already halted");
    // A person asks for a retry: it runs (and halts) again.
    assert_eq!(s.slipway(&["reconcile", "--retry"]).code, 3);
    // Git pins another digest: it rolls.
    s.write_fleet(&s.fleet_app(&v2, ""));
    assert_eq!(s.slipway(&["reconcile"]).code, 0);
    assert_eq!(s.image_of(&name), v2);
}

#[test]
fn rollback_of_a_finished_run_brings_back_the_prior_image_and_data() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let writer = s.push_fixture_as("writer", "app");
    let name = s.add_tenant("t1", &v1);
    s.write_data("t1", "db/records.txt", "precious\n");
    let hash = tree_hash(&s.data_dir("t1"));
    s.write_fleet(&s.fleet_app(&writer, ""));
    let out = s.slipway(&["rollout", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let run = out.run_id();
    assert_ne!(tree_hash(&s.data_dir("t1")), hash, "the writer fixture should have changed the data");
    let rb = s.slipway(&["rollback", "--run", &run, "--json"]);
    assert_eq!(rb.code, 0, "{} {}", rb.stdout, rb.stderr);
    assert_eq!(s.image_of(&name), v1);
    assert_eq!(s.inspect(&name)["State"]["Running"], true);
    assert_eq!(tree_hash(&s.data_dir("t1")), hash);
    assert_eq!(s.inspect(&name)["Config"]["Labels"]["fixture.version"], "v1");
}

#[test]
fn a_changed_default_cmd_in_the_new_image_is_honoured() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let cmd2 = s.push_fixture_as("cmd2", "app");
    let name = s.add_tenant("t1", &v1);
    let new_image_cmd = s.image_inspect(&cmd2)["Config"]["Cmd"].clone();
    assert_ne!(s.inspect(&name)["Config"]["Cmd"], new_image_cmd);
    s.write_fleet(&s.fleet_app(&cmd2, ""));
    assert_eq!(s.slipway(&["rollout"]).code, 0);
    assert_eq!(s.inspect(&name)["Config"]["Cmd"], new_image_cmd);
}

#[test]
fn a_tenant_that_ignores_sigterm_is_stopped_after_its_stop_timeout() {
    let s = Sandbox::new();
    let noterm = s.push_fixture_as("noterm", "app");
    let v2 = s.push_fixture_as("v2", "app");
    let name = s.add_tenant("t1", &noterm);
    s.write_fleet(&s.fleet_app(&v2, "stop_timeout_s = 2\n").replace("stop_timeout_s = 5\n", ""));
    let out = s.slipway(&["rollout", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let report: Rollout = out.report();
    let t = &report.apps[0].tenants[0];
    assert!(t.timings.stop_ms >= 2000, "{t:?}");
    assert_eq!(s.image_of(&name), v2);
}

#[test]
fn held_tenants_and_the_configured_canary_shape_the_plan() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let v2 = s.push_fixture_as("v2", "app");
    three_tenants(&s, &v1);
    s.write_fleet(&s.fleet_app(&v2, "canary = \"t2\"\nhold = [\"t3\"]\n"));
    let out = s.slipway(&["rollout", "--dry-run", "--json"]);
    let report: Rollout = out.report();
    let order: Vec<&str> = report.apps[0].plan.as_ref().unwrap().items.iter().map(|i| i.tenant.as_str()).collect();
    assert_eq!(order, ["t2", "t1"]);
    let _ = Env::get();
}

#[test]
fn keep_old_keeps_the_prior_container_and_rollback_renames_it_back() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let v2 = s.push_fixture_as("v2", "app");
    let name = s.add_tenant("t1", &v1);
    let old_id = s.inspect(&name)["Id"].clone();
    s.write_fleet(&s.fleet_app(&v2, ""));
    let out = s.slipway(&["rollout", "--keep-old", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let run = out.run_id();
    let pre = format!("{name}.pre-rollout-{run}");
    assert_eq!(s.inspect(&pre)["Id"], old_id, "the prior container is kept under its pre-rollout name");
    assert_eq!(s.inspect(&pre)["State"]["Running"], false);
    assert_eq!(s.slipway(&["rollback", "--run", &run]).code, 0);
    assert_eq!(s.inspect(&name)["Id"], old_id, "rollback brings back the very same prior container");
    assert_eq!(s.image_of(&name), v1);
    assert!(!s.container_exists(&pre));
}

#[test]
fn the_prior_container_aside_cannot_restart_by_itself_and_gets_its_restart_policy_back() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let v2 = s.push_fixture_as("v2", "app");
    let name = s.add_tenant("t1", &v1);
    let policy = |c: &str| s.inspect(c)["HostConfig"]["RestartPolicy"]["Name"].as_str().unwrap_or_default().to_string();
    assert_eq!(policy(&name), "unless-stopped");
    s.write_fleet(&s.fleet_app(&v2, ""));

    // Kept aside after a finished run: a daemon restart must not start it beside the new one.
    let out = s.slipway(&["rollout", "--keep-old", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let run = out.run_id();
    let pre = format!("{name}.pre-rollout-{run}");
    assert_eq!(policy(&pre), "no", "the prior container aside keeps a restart policy");
    assert_eq!(policy(&name), "unless-stopped", "the new container has the tenant's policy");
    // Rollback brings it back with its own policy.
    assert_eq!(s.slipway(&["rollback", "--run", &run]).code, 0);
    assert_eq!(s.image_of(&name), v1);
    assert_eq!(policy(&name), "unless-stopped", "rollback did not put the restart policy back");

    // Killed while the prior container is aside: recover puts the policy back too.
    let out = s.slipway_env(&["rollout", "--json"], &[("SLIPWAY_TEST_CRASH_AT", "halfway-switch")]);
    assert_eq!(out.code, -1, "{}", out.stderr);
    let aside = s.containers_named_like(".pre-rollout-");
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(policy(&aside[0]), "no");
    assert_eq!(s.slipway(&["recover"]).code, 0);
    assert_eq!(s.image_of(&name), v1);
    assert_eq!(s.inspect(&name)["State"]["Running"], true);
    assert_eq!(policy(&name), "unless-stopped", "recover did not put the restart policy back");
}

#[test]
fn a_canary_that_fails_its_soak_gets_its_prior_container_back_and_is_recorded_as_restored() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let writer = s.push_fixture_as("writer", "app");
    let names = [s.add_tenant("t1", &v1), s.add_tenant("t2", &v1)];
    s.write_data("t1", "db/records.txt", &"customer row\n".repeat(100));
    let before = tree_hash(&s.data_dir("t1"));
    let old_id = s.inspect(&names[0])["Id"].clone();
    s.write_fleet(&s.fleet_app(&writer, "canary_soak_s = 6\n"));
    let child = s.spawn(&["rollout", "--json"], &[]);
    // Once the canary's new version answers (its health gate passes), break it mid-soak.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        assert!(std::time::Instant::now() < deadline, "the canary never came up on the new version");
        let c = s.try_inspect(&names[0]);
        let ip = c
            .as_ref()
            .filter(|c| c["Config"]["Image"] == writer.as_str())
            .and_then(|c| c["NetworkSettings"]["Networks"][s.network()]["IPAddress"].as_str().map(str::to_string));
        let healthy = ip.is_some_and(|ip| {
            let url = format!("http://{ip}:8080/api/health");
            std::process::Command::new("curl").args(["-fsS", "-m", "1", &url]).output().unwrap().status.success()
        });
        if healthy {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // Margin for the gate's own probe to pass too; the soak lasts 6 s from there.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let rm = std::process::Command::new("docker")
        .args(["exec", &names[0], "/bin/busybox", "rm", "/www/api/health"])
        .output()
        .unwrap();
    assert!(rm.status.success(), "docker exec: {:?}", rm);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout} {}", String::from_utf8_lossy(&out.stderr));

    let r: Rollout = crate::support::reports::parse(&stdout, "").report();
    let tenants = &r.apps[0].tenants;
    assert_eq!(tenants[0].outcome, "restored", "{stdout}");
    assert!(tenants[0].detail.as_deref().unwrap_or_default().contains("soak"), "{stdout}");
    assert_eq!(tenants[1].outcome, "not_reached");
    // The very same prior container is back (it was still aside during the soak), on its data.
    let now = s.inspect(&names[0]);
    assert_eq!(now["Id"], old_id, "the prior container must be back, not a copy");
    assert_eq!(now["State"]["Running"], true);
    assert_eq!(tree_hash(&s.data_dir("t1")), before, "data dir not restored");
    assert!(s.containers_named_like(".pre-rollout-").is_empty());
    assert_eq!(s.image_of(&names[1]), v1, "t2 was touched");
    // The run record agrees with the report: the canary was restored, not rolled.
    let shown = s.slipway(&["runs", "show", r.apps[0].run_id.as_deref().unwrap(), "--json"]);
    let shown = shown.json();
    assert_eq!(shown["report"]["run"]["outcome"], "halted");
    assert_eq!(shown["report"]["tenants"][0]["outcome"], "restored", "{shown}");
}

#[test]
fn what_a_failed_version_wrote_during_its_health_gate_is_kept_not_deleted() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let bad = s.push_fixture_as("unhealthy", "app");
    s.add_tenant("t1", &v1);
    s.write_data("t1", "db/records.txt", "customer rows\n");
    let before = tree_hash(&s.data_dir("t1"));
    // The unhealthy fixture writes into /data at start, then fails its health check.
    s.write_fleet(&s.fleet_app(&bad, "health = { path = \"/api/health\", port = 8080, timeout_s = 3 }\n"));
    let out = s.slipway(&["rollout", "--json"]);
    assert_eq!(out.code, 3, "{} {}", out.stdout, out.stderr);
    assert_eq!(tree_hash(&s.data_dir("t1")), before, "the data dir must be the pre-rollout data");
    let run = out.run_id();
    let kept = s.backups().join("replaced").join(&run).join("t1");
    let written: Vec<_> = crate::support::files_under(&kept)
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("written-by-unhealthy")))
        .collect();
    assert_eq!(written.len(), 1, "the new version's write is not kept in {}", kept.display());
    let detail = out.report::<Rollout>().apps[0].tenants[0].detail.clone().unwrap_or_default();
    assert!(detail.contains(&*kept.display().to_string()), "the report does not say where: {detail}");
    let shown = s.slipway(&["runs", "show", &run, "--json"]);
    assert!(shown.stdout.contains(&*kept.display().to_string()), "the run record does not list it: {}", shown.stdout);
}

#[test]
fn rollback_pulls_the_prior_image_back_when_the_engine_no_longer_has_it() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let v2 = s.push_fixture_as("v2", "app");
    let name = s.add_tenant("t1", &v1);
    s.write_fleet(&s.fleet_app(&v2, ""));
    let out = s.slipway(&["rollout", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let run = out.run_id();
    // An image prune removed the prior version's image reference from the engine.
    crate::support::sh(std::process::Command::new("docker").args(["rmi", &v1]));
    let gone = std::process::Command::new("docker").args(["image", "inspect", &v1]).output().unwrap();
    assert!(!gone.status.success(), "the test needs the prior image gone from the engine");
    let rb = s.slipway(&["rollback", "--run", &run, "--json"]);
    assert_eq!(rb.code, 0, "{} {}", rb.stdout, rb.stderr);
    assert_eq!(s.image_of(&name), v1);
    assert_eq!(s.inspect(&name)["State"]["Running"], true);
}

#[test]
fn a_canary_restarted_by_its_policy_during_the_soak_is_not_healthy() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let v2 = s.push_fixture_as("v2", "app");
    let names = [s.add_tenant("t1", &v1), s.add_tenant("t2", &v1)];
    let old_id = s.inspect(&names[0])["Id"].clone();
    s.write_fleet(&s.fleet_app(&v2, "canary_soak_s = 6\n"));
    let child = s.spawn(&["rollout", "--json"], &[]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while s.try_inspect(&names[0]).is_none_or(|c| c["Config"]["Image"] != v2.as_str() || c["State"]["Running"] != true)
    {
        assert!(std::time::Instant::now() < deadline, "the canary never came up on the new version");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::thread::sleep(std::time::Duration::from_secs(2));
    // Its process exits mid-soak; the restart policy (carried from the prior container) brings
    // it back at once, healthy again by the time the soak ends — but it did crash.
    let kill =
        std::process::Command::new("docker").args(["exec", &names[0], "/bin/busybox", "kill", "1"]).output().unwrap();
    assert!(kill.status.success(), "docker exec: {kill:?}");
    let restarted = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while s.try_inspect(&names[0]).is_none_or(|c| c["RestartCount"].as_i64().unwrap_or(0) == 0) {
        assert!(std::time::Instant::now() < restarted, "the engine did not restart the canary");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    let r: Rollout = crate::support::reports::parse(&stdout, "").report();
    assert_eq!(r.apps[0].tenants[0].outcome, "restored", "{stdout}");
    assert!(r.apps[0].tenants[0].detail.as_deref().unwrap_or_default().contains("restarted"), "{stdout}");
    assert_eq!(s.inspect(&names[0])["Id"], old_id, "the prior container must be back");
}

/// Wait until `path` exists (a point of a background run reached), at most a minute.
fn wait_for(path: &std::path::Path) {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !path.exists() {
        assert!(std::time::Instant::now() < until, "{} never appeared", path.display());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The one run dir of rollout copies beside the sandbox's data dirs, once it exists.
fn copies_of_the_run(s: &Sandbox) -> std::path::PathBuf {
    let root = s.root().join("data/.slipway-rollout");
    wait_for(&root);
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some(run) = std::fs::read_dir(&root).unwrap().flatten().next() {
            return run.path();
        }
        assert!(std::time::Instant::now() < until, "no run dir in {}", root.display());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn the_copy_made_while_the_tenant_runs_is_exactly_its_data_at_the_stop() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let v2 = s.push_fixture_as("v2", "app");
    let name = s.add_tenant("t1", &v1);
    let data = s.data_dir("t1");
    s.write_data("t1", "db/records.txt", &"customer row\n".repeat(5000));
    s.write_data("t1", "db/old-name", "renamed while running");
    s.write_data("t1", "gone/file", "deleted while running");
    s.write_data("t1", "same-size", "version one");
    s.write_data("t1", "becomes-a-link", "a file, then a symlink");
    s.write_fleet(&s.fleet_app(&v2, ""));
    let child = s.spawn(
        &["rollout", "--json"],
        &[("SLIPWAY_TEST_PAUSE_AT", "after-pre-copy:3000"), ("SLIPWAY_TEST_CRASH_AT", "after-copy-delta")],
    );
    // The pre-copy is done once its index lies beside the copy; the tenant still runs.
    let run_dir = copies_of_the_run(&s);
    wait_for(&run_dir.join(".t1.mirror-index"));
    assert_eq!(s.inspect(&name)["State"]["Running"], true);
    // Every kind of change a running tenant makes, after the pre-copy and before the stop.
    std::fs::remove_dir_all(data.join("gone")).unwrap();
    std::fs::rename(data.join("db/old-name"), data.join("db/new-name")).unwrap();
    std::fs::set_permissions(data.join("db/records.txt"), std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    std::os::unix::fs::chown(data.join("db/records.txt"), Some(1000), Some(1000)).unwrap();
    let same = data.join("same-size");
    let mtime = std::fs::metadata(&same).unwrap().modified().unwrap();
    std::fs::write(&same, "version two").unwrap();
    std::fs::File::options().write(true).open(&same).unwrap().set_modified(mtime).unwrap();
    std::fs::remove_file(data.join("becomes-a-link")).unwrap();
    std::os::unix::fs::symlink("db/records.txt", data.join("becomes-a-link")).unwrap();
    std::fs::write(data.join("added"), "written while running").unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("slipway test point reached: after-copy-delta"), "{stderr}");
    // At the stop, after the delta: the copy is the data dir, byte for byte.
    let at_stop = tree_hash(&data);
    assert_eq!(tree_hash(&run_dir.join("t1")), at_stop, "the copy differs from the data dir at the stop");
    // recover brings the prior container back on that data, and the copy goes.
    let rec = s.slipway(&["recover", "--json"]);
    assert_eq!(rec.code, 0, "{} {}", rec.stdout, rec.stderr);
    assert_eq!(s.image_of(&name), v1);
    assert_eq!(s.inspect(&name)["State"]["Running"], true);
    assert_eq!(tree_hash(&data), at_stop);
    assert!(!run_dir.exists(), "the unneeded copy {} stays", run_dir.display());
}

#[test]
fn a_rollout_copies_while_running_archives_after_the_health_gate_and_leaves_no_copy() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let v2 = s.push_fixture_as("v2", "app");
    let names = three_tenants(&s, &v1);
    let before = tree_hash(&s.data_dir("t1"));
    s.write_fleet(&s.fleet_app(&v2, ""));
    let dry = s.slipway(&["rollout", "--dry-run", "--json"]);
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    let plan = dry.report::<Rollout>().apps.remove(0).plan.unwrap();
    for i in &plan.items {
        let c = i.copy.as_ref().unwrap();
        assert_eq!(c.path, "pre_copy", "{}: {c:?}", i.tenant);
        assert!(c.reflink.is_some());
    }
    let human = s.slipway(&["rollout", "--dry-run"]);
    assert!(human.stdout.contains("pre-copy while running"), "{}", human.stdout);

    let out = s.slipway(&["rollout", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let run = out.run_id();
    for t in &out.report::<Rollout>().apps[0].tenants {
        assert_eq!(t.outcome, "rolled");
        let pre = t.pre_copy.as_ref().expect("a pre-copy pass");
        assert!(pre.files_copied >= 1, "{pre:?}");
        let delta = t.copy_delta.as_ref().expect("a delta pass");
        // Nothing changed while v1 ran: the delta copies nothing.
        assert_eq!((delta.files_copied, delta.removed), (0, 0), "{}: {delta:?}", t.tenant);
        assert!(t.snapshot.as_ref().is_some_and(|p| p.is_file()), "{}: no archive {:?}", t.tenant, t.snapshot);
    }
    for n in &names {
        assert_eq!(s.image_of(n), v2);
        assert_eq!(s.inspect(n)["State"]["Running"], true);
    }
    // The archive of the copy is the pre-rollout data, and the copies are gone.
    let archive = s.backups().join("rollout").join(&run).join("t1.tar.zst");
    assert!(archive.is_file() && s.backups().join("rollout").join(&run).join("MANIFEST.json").is_file());
    assert!(!s.root().join("data/.slipway-rollout").join(&run).exists());
    let verify = s.slipway(&["verify", "--json"]);
    assert_eq!(verify.code, 0, "{} {}", verify.stdout, verify.stderr);
    let rb = s.slipway(&["rollback", "--run", &run, "--tenant", "t1", "--json"]);
    assert_eq!(rb.code, 0, "{} {}", rb.stdout, rb.stderr);
    assert_eq!(tree_hash(&s.data_dir("t1")), before);
}

#[test]
fn a_failed_health_gate_swaps_the_pre_rollout_copy_back_and_keeps_what_it_replaced() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let bad = s.push_fixture_as("unhealthy", "app");
    let name = s.add_tenant("t1", &v1);
    s.write_data("t1", "db/records.txt", &"customer row\n".repeat(1000));
    let data = s.data_dir("t1");
    let before = tree_hash(&data);
    s.write_fleet(&s.fleet_app(&bad, "health = { path = \"/api/health\", port = 8080, timeout_s = 3 }\n"));
    let out = s.slipway(&["rollout", "--json"]);
    assert_eq!(out.code, 3, "{} {}", out.stdout, out.stderr);
    let run = out.run_id();
    let t = &out.report::<Rollout>().apps[0].tenants[0];
    assert_eq!(t.outcome, "restored");
    let detail = t.detail.clone().unwrap_or_default();
    assert!(detail.contains("from the rollout copy") && detail.contains("(a rename)"), "{detail}");
    // No archive was extracted: none was even made on this path before the health gate.
    assert!(!s.backups().join("rollout").join(&run).join("t1.tar.zst").exists());
    assert_eq!(tree_hash(&data), before);
    assert_eq!(s.image_of(&name), v1);
    // What the failed version wrote is kept, the copy dir is gone.
    let kept = s.backups().join("replaced").join(&run).join("t1");
    assert!(crate::support::files_under(&kept).iter().any(|p| p.to_string_lossy().contains("written-by-unhealthy")));
    assert!(!s.root().join("data/.slipway-rollout").join(&run).exists());
}

#[test]
fn pre_copy_false_takes_the_archive_while_down_path_and_the_plan_says_so() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let v2 = s.push_fixture_as("v2", "app");
    s.add_tenant("t1", &v1);
    s.write_data("t1", "db/records.txt", "rows\n");
    s.write_fleet(&s.fleet_app(&v2, "pre_copy = false\n"));
    let dry = s.slipway(&["rollout", "--dry-run", "--json"]);
    let plan = dry.report::<Rollout>().apps.remove(0).plan.unwrap();
    let c = plan.items[0].copy.as_ref().map(|c| (c.path.clone(), c.why.clone()));
    assert_eq!(c.as_ref().map(|c| c.0.as_str()), Some("archive_while_down"), "{}", dry.stdout);
    assert!(c.and_then(|c| c.1).is_some_and(|w| w.contains("pre_copy = false")));
    let out = s.slipway(&["rollout", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let t = &out.report::<Rollout>().apps[0].tenants[0];
    assert!(t.pre_copy.is_none() && t.copy_delta.is_none(), "{}", out.stdout);
    assert!(t.snapshot.as_ref().is_some_and(|p| p.is_file()));
    assert!(!s.root().join("data/.slipway-rollout").exists());
}

/// What `name` resolves to from a throw-away container on the sandbox's network (busybox
/// `nslookup` against Docker's embedded DNS), one list per name; empty when it does not resolve.
fn resolve(s: &Sandbox, image: &str, names: &[&str]) -> Vec<Vec<String>> {
    let script = r#"for n in "$@"; do echo "== $n"; /bin/busybox nslookup "$n" 127.0.0.11 || true; done"#;
    let label = format!("slipway.test={}", s.id());
    let mut args = vec!["run", "--rm", "--network", s.network(), "--label", &label, "--entrypoint", "/bin/busybox"];
    args.extend([image, "sh", "-c", script, "resolve"]);
    args.extend(names);
    let out = std::process::Command::new("docker").args(&args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut found: Vec<Vec<String>> = Vec::new();
    let mut in_answer = false;
    for line in text.lines() {
        if line.starts_with("== ") {
            found.push(Vec::new());
            in_answer = false;
        } else if line.starts_with("Name:") {
            in_answer = true;
        } else if let Some(addr) = line.strip_prefix("Address:").filter(|_| in_answer) {
            let ip = addr.split_whitespace().next().unwrap_or_default().to_string();
            if let Some(last) = found.last_mut().filter(|l| !l.contains(&ip)) {
                last.push(ip);
            }
        }
    }
    assert_eq!(found.len(), names.len(), "{text}");
    found
}

#[test]
fn the_new_container_is_staged_with_its_final_aliases_and_policy_yet_answers_to_nothing_until_it_starts() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let v2 = s.push_fixture_as("v2", "app");
    let name = s.add_tenant("t1", &v1);
    let old = s.inspect(&name);
    let old_ip = s.container_ip(&name);
    let aliases = old["NetworkSettings"]["Networks"][s.network()]["Aliases"].clone();
    s.write_fleet(&s.fleet_app(&v2, ""));
    let child = s.spawn(&["rollout", "--json"], &[("SLIPWAY_TEST_PAUSE_AT", "before-stop:8000")]);
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let staged = loop {
        if let Some(n) = s.containers_named_like(".next-").into_iter().next() {
            break n;
        }
        assert!(std::time::Instant::now() < until, "no staged container appeared");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    std::thread::sleep(std::time::Duration::from_millis(500));
    // Staged, not running, with what it will have as the tenant: its aliases and its restart
    // policy; the prior container still serves under the tenant's name.
    let st = s.inspect(&staged);
    assert_eq!(st["State"]["Running"], false);
    assert_eq!(st["HostConfig"]["RestartPolicy"], old["HostConfig"]["RestartPolicy"]);
    assert_eq!(st["HostConfig"]["RestartPolicy"]["Name"], "unless-stopped");
    let st_aliases = st["NetworkSettings"]["Networks"][s.network()]["Aliases"].to_string();
    // The engine's own alias (the short id) is the prior container's, not the tenant's.
    let short = &old["Id"].as_str().unwrap()[..12];
    let wanted: Vec<String> =
        aliases.as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()).filter(|a| a != short).collect();
    assert!(wanted.contains(&"t1".to_string()), "the sandbox gives tenants an alias: {aliases}");
    for a in &wanted {
        assert!(st_aliases.contains(&format!("\"{a}\"")), "staged without alias {a}: {st_aliases}");
    }
    assert_eq!(s.inspect(&name)["Id"], old["Id"]);
    assert_eq!(s.inspect(&name)["State"]["Running"], true);
    // Docker's DNS answers only for running containers: the alias is the prior one's alone,
    // the staging name is nobody's.
    let seen = resolve(&s, &v1, &["t1", &name, &staged]);
    assert_eq!(seen[0], std::slice::from_ref(&old_ip), "alias t1 while staged");
    assert_eq!(seen[1], std::slice::from_ref(&old_ip), "the tenant's name while staged");
    assert!(seen[2].is_empty(), "the staging name resolves: {:?}", seen[2]);
    let still = s.inspect(&name);
    assert!(still["Id"] == old["Id"] && still["State"]["Running"] == true, "the pause ended before the lookups");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    // After the switch: the staged container is the tenant, unchanged since its check, and
    // the tenant's alias and name lead to it alone.
    let now = s.inspect(&name);
    assert_eq!(now["Id"], st["Id"]);
    assert_eq!(now["HostConfig"]["RestartPolicy"], old["HostConfig"]["RestartPolicy"]);
    let now_aliases = now["NetworkSettings"]["Networks"][s.network()]["Aliases"].to_string();
    for a in &wanted {
        assert!(now_aliases.contains(&format!("\"{a}\"")), "alias {a} missing: {now_aliases}");
    }
    let new_ip = s.container_ip(&name);
    let seen = resolve(&s, &v1, &["t1", &name]);
    assert_eq!(seen, [[new_ip.clone()], [new_ip]], "after the rollout");
    assert!(s.containers_named_like(".next-").is_empty());
}

#[test]
fn recover_lists_a_rollout_copy_a_finished_run_left_and_never_removes_it() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let v2 = s.push_fixture_as("v2", "app");
    s.add_tenant("t1", &v1);
    s.write_data("t1", "db/records.txt", "rows\n");
    s.write_fleet(&s.fleet_app(&v2, ""));
    let out = s.slipway(&["rollout", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let run = out.run_id();
    // As if the archive of the copy had failed: the copy is still where the run journaled it.
    let copy = s.root().join("data/.slipway-rollout").join(&run).join("t1");
    std::fs::create_dir_all(&copy).unwrap();
    std::fs::write(copy.join("records.txt"), "the data from before the rollout").unwrap();
    let rec = s.slipway(&["recover", "--json"]);
    assert_eq!(rec.code, 0, "{} {}", rec.stdout, rec.stderr);
    let swept = rec.report::<crate::support::reports::Recover>().swept;
    assert!(
        swept.iter().any(|l| l.starts_with("kept") && l.contains(&*copy.display().to_string()) && l.contains(&run)),
        "{swept:?}"
    );
    assert!(copy.join("records.txt").is_file(), "recover removed a rollout copy");
}

/// The archive of the rollout copy fails (the backup disk is full) after the new version
/// passed its gate: the tenant stays on it, the copy — its data from before the rollout, which
/// no archive holds — stays beside the data dir exactly as it was, and `status` names it until
/// someone deals with it.
#[test]
fn a_rollout_copy_whose_archive_failed_is_kept_exactly_and_status_names_it() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let v2 = s.push_fixture_as("v2", "app");
    let name = s.add_tenant("t1", &v1);
    // Incompressible data larger than the backup filesystem.
    let noise = crate::support::noise(3 << 20, 0x2545f4914f6cdd1d);
    std::fs::create_dir_all(s.data_dir("t1")).unwrap();
    std::fs::write(s.data_dir("t1").join("noise.bin"), &noise).unwrap();
    let before = tree_hash(&s.data_dir("t1"));
    s.write_fleet(&s.fleet_app(&v2, ""));
    let _tmpfs = s.mount_tmpfs(&s.backups(), "1m");
    let out = s.slipway(&["rollout", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let run = out.run_id();
    let report: Rollout = out.report();
    let t = &report.apps[0].tenants[0];
    assert_eq!(t.outcome, "rolled", "{}", out.stdout);
    let detail = t.detail.clone().unwrap_or_default();
    assert!(detail.contains("archive of the rollout copy failed"), "{detail}");
    assert_eq!(s.inspect(&name)["Config"]["Image"].as_str(), Some(v2.as_str()));
    // The copy is where the report says, byte for byte the data from before the rollout.
    let copies = s.data_dir("t1").parent().unwrap().join(".slipway-rollout");
    let copy = std::fs::read_dir(&copies).unwrap().next().unwrap().unwrap().path().join("t1");
    assert!(detail.contains(&copy.display().to_string()), "{detail}");
    assert_eq!(tree_hash(&copy), before);
    let st = s.slipway(&["status", "--json"]);
    let status: crate::support::reports::Status = st.report();
    let named: Vec<&String> = status.attention.iter().filter(|a| a.contains(&copy.display().to_string())).collect();
    assert_eq!(named.len(), 1, "{:?}", status.attention);
    assert!(named[0].contains("tenant t1") && named[0].contains(&run), "{}", named[0]);
}
