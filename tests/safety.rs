//! Rollout safety in an operator's ordinary workflows (issue 11): a rollback a person made
//! sticks, a rollback touches only what its run created, stopped tenants stay stopped,
//! containers that cannot be mapped to a tenant never halt the fleet, and secrets carried in
//! labels or env never reach the run record, a JSON report or the metrics file.

use crate::support::reports::{Rollback, Rollout};
use crate::support::{tree_hash, Sandbox};

const FAST_HEALTH: &str = "health = { path = \"/api/health\", port = 8080, timeout_s = 4 }\n";

#[test]
fn reconcile_does_not_roll_a_rolled_back_digest_again_until_git_pins_another_or_retry() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let v2 = s.push_fixture_as("v2", "app");
    let v3 = s.push_fixture_as("cmd2", "app");
    let name = s.add_tenant("t1", &v1);
    s.write_fleet(&s.fleet_app(&v2, ""));
    let out = s.slipway(&["reconcile", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let run = out.report::<Rollout>().apps[0].run_id.clone().unwrap();
    // A person decides v2 is bad, though it passed its health gate.
    let rb = s.slipway(&["rollback", "--run", &run]);
    assert_eq!(rb.code, 0, "{} {}", rb.stdout, rb.stderr);
    assert_eq!(s.image_of(&name), v1);
    let id = s.inspect(&name)["Id"].clone();
    // The every-minute timer fires: the rolled-back digest is not rolled again.
    let again = s.slipway(&["reconcile", "--json"]);
    assert_eq!(again.code, 0, "{} {}", again.stdout, again.stderr);
    assert_eq!(again.report::<Rollout>().apps[0].action.as_deref(), Some("skipped_halted"), "{}", again.stdout);
    assert_eq!(s.inspect(&name)["Id"], id, "reconcile rolled a digest a person rolled back");
    assert_eq!(s.image_of(&name), v1);
    // status says why the tenant is behind, and asks a person to decide.
    let st = s.slipway(&["status", "--json"]);
    let st = st.json();
    let rejected = &st["report"]["apps"][0]["rejected"];
    assert_eq!(rejected["run_id"], run.as_str(), "{st}");
    assert!(rejected["why"].as_str().unwrap().starts_with("rolled back"), "{st}");
    assert!(st["report"]["attention"].as_array().unwrap().iter().any(|a| a.as_str().unwrap().contains("rejected")));
    // A person asks for a retry: it rolls.
    assert_eq!(s.slipway(&["reconcile", "--retry"]).code, 0);
    assert_eq!(s.image_of(&name), v2);
    // Git pins another digest: it rolls too.
    s.write_fleet(&s.fleet_app(&v3, ""));
    assert_eq!(s.slipway(&["reconcile"]).code, 0);
    assert_eq!(s.image_of(&name), v3);
}

#[test]
fn rollback_leaves_a_tenant_restored_at_the_halt_and_the_data_written_since() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let bad = s.push_fixture_as("unhealthy", "app");
    let name = s.add_tenant("t1", &v1);
    s.add_tenant("t2", &v1);
    s.write_data("t1", "db/records.txt", "before the rollout\n");
    s.write_fleet(&s.fleet_app(&bad, FAST_HEALTH));
    let out = s.slipway(&["rollout", "--json"]);
    assert_eq!(out.code, 3, "{} {}", out.stdout, out.stderr);
    let run = out.run_id();
    // Customers keep writing on the restored prior container.
    s.write_data("t1", "db/records.txt", "written after the halt\n");
    let hash = tree_hash(&s.data_dir("t1"));
    let id = s.inspect(&name)["Id"].clone();
    let rb = s.slipway(&["rollback", "--run", &run, "--tenant", "t1", "--json"]);
    assert_eq!(rb.code, 0, "{} {}", rb.stdout, rb.stderr);
    let report: Rollback = rb.report();
    let t = &report.tenants[0];
    assert_eq!(t.tenant, "t1");
    assert!(t.skipped.as_deref().unwrap_or_default().contains("prior container"), "{t:?}");
    assert_eq!(s.inspect(&name)["Id"], id, "rollback touched a tenant already restored");
    assert_eq!(tree_hash(&s.data_dir("t1")), hash, "rollback restored an old snapshot over newer data");
}

#[test]
fn rollback_of_an_older_run_leaves_a_tenant_a_later_run_rolled() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let v2 = s.push_fixture_as("v2", "app");
    let v3 = s.push_fixture_as("cmd2", "app");
    let name = s.add_tenant("t1", &v1);
    s.write_fleet(&s.fleet_app(&v2, ""));
    let first = s.slipway(&["rollout", "--json"]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    let first = first.run_id();
    s.write_fleet(&s.fleet_app(&v3, ""));
    assert_eq!(s.slipway(&["rollout"]).code, 0);
    let id = s.inspect(&name)["Id"].clone();
    let rb = s.slipway(&["rollback", "--run", &first, "--json"]);
    assert_eq!(rb.code, 0, "{} {}", rb.stdout, rb.stderr);
    let report: Rollback = rb.report();
    let t = &report.tenants[0];
    assert!(t.skipped.as_deref().unwrap_or_default().contains("later run"), "{t:?}");
    assert_eq!(s.inspect(&name)["Id"], id, "rollback of an older run replaced a later run's container");
    assert_eq!(s.image_of(&name), v3);
}

#[test]
fn label_and_env_secrets_reach_no_run_record_json_report_or_metrics_file() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let v2 = s.push_fixture_as("v2", "app");
    let bad = s.push_fixture_as("unhealthy", "app");
    let secrets = ["SECRETHASH", "SECRETVALUE"];
    s.add_tenant_with(
        "t1",
        &v1,
        &[
            "--label",
            "traefik.http.middlewares.auth.basicauth.users=admin:$apr1$SECRETHASH",
            "--env",
            "DB_PASSWORD=SECRETVALUE",
        ],
    );
    let metrics = s.root().join("slipway.prom");
    let m = metrics.to_str().unwrap();
    let mut outputs = Vec::new();
    s.write_fleet(&s.fleet_app(&v2, ""));
    let ok = s.slipway(&["rollout", "--json", "--metrics-file", m]);
    assert_eq!(ok.code, 0, "{} {}", ok.stdout, ok.stderr);
    let run = ok.run_id();
    outputs.push(ok.stdout);
    s.write_fleet(&s.fleet_app(&bad, FAST_HEALTH));
    let halted = s.slipway(&["rollout", "--json", "--metrics-file", m]);
    assert_eq!(halted.code, 3, "{} {}", halted.stdout, halted.stderr);
    let halted_run = halted.run_id();
    outputs.push(halted.stdout);
    for args in [
        vec!["runs", "--json"],
        vec!["runs", "show", &run, "--json"],
        vec!["runs", "show", &halted_run, "--json"],
        vec!["status", "--json", "--metrics-file", m],
    ] {
        outputs.push(s.slipway(&args).stdout);
    }
    // The operator's label made it onto the new container: the check compared it.
    let labels = &s.inspect(&format!("{}-t1", s.id()))["Config"]["Labels"];
    assert!(labels["traefik.http.middlewares.auth.basicauth.users"].as_str().unwrap().contains("SECRETHASH"));
    let mut files = vec![("metrics file".to_string(), std::fs::read(&metrics).unwrap())];
    for entry in std::fs::read_dir(s.state()).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            files.push((p.display().to_string(), std::fs::read(&p).unwrap()));
        }
    }
    for (i, o) in outputs.iter().enumerate() {
        files.push((format!("json output #{i}"), o.as_bytes().to_vec()));
    }
    assert!(files.iter().any(|(n, _)| n.ends_with("state.db")));
    for (what, bytes) in &files {
        for secret in secrets {
            let found = bytes.windows(secret.len()).any(|w| w == secret.as_bytes());
            assert!(!found, "{secret} found in {what}");
        }
    }
}

fn docker(args: &[&str]) {
    let out = std::process::Command::new("docker").args(args).output().unwrap();
    assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_stopped_tenant_is_left_behind_stopped_in_the_plan_the_report_and_status() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let v2 = s.push_fixture_as("v2", "app");
    let running = s.add_tenant("t1", &v1);
    let suspended = s.add_tenant("t2", &v1);
    docker(&["stop", "-t", "1", &suspended]);
    let id = s.inspect(&suspended)["Id"].clone();
    s.write_fleet(&s.fleet_app(&v2, ""));
    let plan = s.slipway(&["rollout", "--dry-run", "--json"]).json();
    assert_eq!(plan["report"]["apps"][0]["plan"]["stopped"][0], "t2", "{plan}");
    let out = s.slipway(&["rollout", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let r = out.json();
    let app = &r["report"]["apps"][0];
    assert_eq!(app["plan"]["stopped"][0], "t2", "{r}");
    assert_eq!(app["tenants"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(app["tenants"][0]["tenant"], "t1");
    assert_eq!(s.image_of(&running), v2);
    // The suspended customer is neither started nor replaced.
    let now = s.inspect(&suspended);
    assert_eq!(now["Id"], id);
    assert_eq!(now["State"]["Running"], false, "rollout started a stopped tenant");
    assert_eq!(s.image_of(&suspended), v1);
    let human = s.slipway(&["rollout", "--dry-run"]);
    assert!(human.stdout.contains("behind (stopped): t2"), "{}", human.stdout);
    let st = s.slipway(&["status", "--json"]).json();
    let t2 = st["report"]["apps"][0]["tenants"].as_array().unwrap().iter().find(|t| t["tenant"] == "t2").cloned();
    assert_eq!(t2.unwrap()["behind"], "behind (stopped)", "{st}");
    // reconcile neither starts it nor treats it as a failure.
    assert_eq!(s.slipway(&["reconcile"]).code, 0);
    assert_eq!(s.inspect(&suspended)["State"]["Running"], false);
}

#[test]
fn include_stopped_recreates_a_stopped_tenant_on_the_new_image_without_starting_it() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let v2 = s.push_fixture_as("v2", "app");
    // The stopped tenant sorts first: it must not become the canary either.
    let suspended = s.add_tenant("a-suspended", &v1);
    let running = s.add_tenant("t1", &v1);
    docker(&["stop", "-t", "1", &suspended]);
    s.write_fleet(&s.fleet_app(&v2, "include_stopped = true\n"));
    let out = s.slipway(&["rollout", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let r = out.json();
    let items = &r["report"]["apps"][0]["plan"]["items"];
    assert_eq!(items[0]["tenant"], "t1", "{r}");
    assert_eq!(items[0]["canary"], true);
    assert_eq!(items[1]["canary"], false);
    for t in r["report"]["apps"][0]["tenants"].as_array().unwrap() {
        assert_eq!(t["outcome"], "rolled", "{t}");
    }
    assert_eq!(s.image_of(&running), v2);
    assert_eq!(s.image_of(&suspended), v2);
    assert_eq!(s.inspect(&suspended)["State"]["Running"], false, "rollout started a stopped tenant");
    assert!(s.containers_named_like(".pre-rollout-").is_empty());
}

#[test]
fn containers_that_map_to_no_tenant_are_skipped_and_reported_never_halting_the_fleet() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let v2 = s.push_fixture_as("v2", "app");
    let good = s.add_tenant("t1", &v1);
    // A tenant id longer than 63 characters, a name the pattern does not match, no data dir.
    let long = s.add_tenant(&"x".repeat(70), &v1);
    let stray = format!("stray-{}", s.id());
    docker(&["run", "-d", "--name", &stray, "--label", &format!("slipway.test={}", s.id()), &v1]);
    let no_data = s.add_tenant("t3", &v1);
    std::fs::remove_dir_all(s.data_dir("t3")).unwrap();
    s.write_fleet(&s.fleet_app(&v2, ""));
    let plan = s.slipway(&["rollout", "--dry-run"]);
    assert_eq!(plan.code, 0, "{} {}", plan.stdout, plan.stderr);
    for name in [&long, &stray, &no_data] {
        assert!(plan.stdout.contains(&format!("skipped container {name}")), "{}", plan.stdout);
    }
    let out = s.slipway(&["rollout", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let r = out.json();
    let skipped: Vec<&str> = r["report"]["apps"][0]["plan"]["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["container"].as_str().unwrap())
        .collect();
    assert_eq!(skipped.len(), 3, "{r}");
    for name in [&long, &stray, &no_data] {
        assert!(skipped.contains(&name.as_str()), "{name} not reported: {r}");
        assert_eq!(s.image_of(name), v1, "{name} was touched");
    }
    assert_eq!(r["report"]["apps"][0]["tenants"][0]["outcome"], "rolled", "{r}");
    assert_eq!(s.image_of(&good), v2);
}

/// A second Docker network for one test, disconnected and removed at the end.
struct Network(String);

impl Drop for Network {
    fn drop(&mut self) {
        let out = std::process::Command::new("docker")
            .args(["network", "inspect", "-f", "{{range .Containers}}{{.Name}} {{end}}", &self.0])
            .output();
        if let Ok(out) = out {
            for c in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = std::process::Command::new("docker").args(["network", "disconnect", "-f", &self.0, c]).output();
            }
        }
        let _ = std::process::Command::new("docker").args(["network", "rm", &self.0]).output();
    }
}

#[test]
fn a_tenant_on_several_networks_is_refused_at_plan_time_until_health_network_names_one() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let v2 = s.push_fixture_as("v2", "app");
    let name = s.add_tenant("t1", &v1);
    let second = Network(format!("{}-second", s.id()));
    docker(&["network", "create", &second.0]);
    docker(&["network", "connect", &second.0, &name]);
    let id = s.inspect(&name)["Id"].clone();
    s.write_fleet(&s.fleet_app(&v2, ""));
    let out = s.slipway(&["rollout"]);
    assert_eq!(out.code, 2, "{} {}", out.stdout, out.stderr);
    assert!(out.stderr.contains(&second.0) && out.stderr.contains(s.network()), "{}", out.stderr);
    assert!(out.stderr.contains("health.network"), "{}", out.stderr);
    assert_eq!(s.inspect(&name)["Id"], id, "a refused plan touched the tenant");
    assert_eq!(s.inspect(&name)["State"]["Running"], true);
    let health =
        format!("health = {{ path = \"/api/health\", port = 8080, timeout_s = 20, network = \"{}\" }}\n", s.network());
    s.write_fleet(&s.fleet_app(&v2, &health));
    let out = s.slipway(&["rollout"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert_eq!(s.image_of(&name), v2);
}

#[test]
fn a_redirect_is_not_healthy() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let name = s.add_tenant("t1", &v1);
    // busybox httpd answers /api with a 302 to /api/, which serves this page.
    docker(&["exec", &name, "/bin/busybox", "sh", "-c", "echo login > /www/api/index.html"]);
    s.write_fleet(&s.fleet_app(&v1, "health = { path = \"/api\", port = 8080, timeout_s = 3 }\n"));
    let st = s.slipway(&["status", "--json"]).json();
    let t = &st["report"]["apps"][0]["tenants"][0];
    assert_eq!(t["healthy"], false, "{st}");
    assert!(t["health_detail"].as_str().unwrap_or_default().contains("HTTP 302"), "{st}");
}

#[test]
fn reconcile_backs_off_a_digest_whose_rollout_was_killed_and_recovered() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let v2 = s.push_fixture_as("v2", "app");
    let name = s.add_tenant("t1", &v1);
    s.write_fleet(&s.fleet_app(&v2, ""));
    // The release kills slipway mid-rollout (say, an OOM while the tenant is stopped).
    let out = s.slipway_env(&["reconcile"], &[("SLIPWAY_TEST_CRASH_AT", "during-start")]);
    assert_eq!(out.code, -1, "{} {}", out.stdout, out.stderr);
    let rec = s.slipway(&["recover"]);
    assert_eq!(rec.code, 0, "{} {}", rec.stdout, rec.stderr);
    assert_eq!(s.image_of(&name), v1);
    let id = s.inspect(&name)["Id"].clone();
    // The timer fires again: the tenant is not stopped for the same digest again.
    let again = s.slipway(&["reconcile", "--json"]);
    assert_eq!(again.code, 0, "{} {}", again.stdout, again.stderr);
    assert_eq!(again.report::<Rollout>().apps[0].action.as_deref(), Some("skipped_halted"), "{}", again.stdout);
    assert_eq!(s.inspect(&name)["Id"], id, "reconcile retried a digest whose rollout was killed");
    let st = s.slipway(&["status", "--json"]).json();
    assert_eq!(st["report"]["apps"][0]["rejected"]["why"], "recovered", "{st}");
    // A person decides it was the host, not the release.
    assert_eq!(s.slipway(&["reconcile", "--retry"]).code, 0);
    assert_eq!(s.image_of(&name), v2);
}
