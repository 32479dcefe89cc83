//! Restore drills against a real Docker engine, registry and S3 server: a good snapshot passes,
//! one the app cannot start on fails naming the tenant, the live tenant stays byte-identical
//! on the same container, the throw-away container never joins the tenant's networks or
//! carries its routing labels (inspected while it runs), and nothing is left afterwards —
//! also after SIGTERM, and after a crash once `recover` ran.

use std::process::Command;

use crate::support::reports::{self, Drill, Recover, Runs, Status};
use crate::support::{sh, tree_hash, Out, Sandbox};

/// A tenant as an operator runs one behind a reverse proxy: besides the harness's Traefik rule
/// label, network alias and restart policy, a caddy label, a compose label, a published port,
/// and a label of the test's own (not a routing one), by which the drill's container is found.
fn routed_tenant(s: &Sandbox, tenant: &str, image: &str) -> String {
    let (mark, caddy) = (format!("drilltest={}", s.id()), format!("caddy={tenant}.example.test"));
    s.add_tenant_with(
        tenant,
        image,
        &[
            "--label",
            &mark,
            "--label",
            &caddy,
            "--label",
            "com.docker.compose.project=fleet",
            "--publish",
            "127.0.0.1::8080",
        ],
    )
}

/// Removes this test's drill containers and their networks if a failing test left them.
struct Leftovers<'a>(&'a Sandbox);

impl Drop for Leftovers<'_> {
    fn drop(&mut self) {
        let label = format!("label=drilltest={}", self.0.id());
        let names = Command::new("docker")
            .args(["ps", "-aq", "--filter", &label, "--filter", "label=slipway.drill"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for id in names.split_whitespace() {
            let nets = Command::new("docker")
                .args(["inspect", "--format", "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}", id])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            let _ = Command::new("docker").args(["rm", "-f", "-v", id]).output();
            for n in nets.split_whitespace().filter(|n| n.starts_with("slipway-drill-")) {
                let _ = Command::new("docker").args(["network", "rm", n]).output();
            }
        }
    }
}

/// What the drill run `run` left: containers and networks labelled with it, and the scratch
/// dirs under the backup root.
fn left_by(s: &Sandbox, run: &str) -> Vec<String> {
    let label = format!("label=slipway.drill={run}");
    let mut left: Vec<String> =
        sh(Command::new("docker").args(["ps", "-a", "--filter", &label, "--format", "{{.Names}}"]))
            .lines()
            .map(|n| format!("container {n}"))
            .collect();
    left.extend(
        sh(Command::new("docker").args(["network", "ls", "--filter", &label, "--format", "{{.Name}}"]))
            .lines()
            .map(|n| format!("network {n}")),
    );
    let drill_root = s.backups().join("drill");
    if drill_root.exists() {
        left.push(format!("dir {}", drill_root.display()));
    }
    left
}

/// The live tenant as an operator would compare it: container id, restart count, networks,
/// labels, and its data tree byte for byte.
fn live(s: &Sandbox, name: &str, tenant: &str) -> (serde_json::Value, String) {
    let c = s.inspect(name);
    let what = serde_json::json!({
        "id": c["Id"],
        "running": c["State"]["Running"],
        "started": c["State"]["StartedAt"],
        "restarts": c["RestartCount"],
        "networks": c["NetworkSettings"]["Networks"].as_object().map(|n| n.keys().cloned().collect::<Vec<_>>()),
        "labels": c["Config"]["Labels"],
    });
    (what, tree_hash(&s.data_dir(tenant)))
}

/// The newest drill run's id.
fn newest_drill_run(s: &Sandbox) -> String {
    let runs: Runs = s.slipway(&["runs", "--json"]).report();
    runs.runs.into_iter().find(|r| r.job == "drill").map(|r| r.id).expect("a drill run in the run record")
}

#[test]
fn a_drill_of_a_good_snapshot_passes_without_touching_the_live_tenant_or_its_traffic() {
    let s = Sandbox::new();
    let _guard = Leftovers(&s);
    let v1 = s.push_fixture_as("v1", "app");
    let name = routed_tenant(&s, "t1", &v1);
    s.write_data("t1", "db/records.txt", &"row\n".repeat(2000));
    s.write_data("t1", "uploads/a.bin", "binary-ish");
    s.write_fleet(&s.fleet_app(&v1, ""));
    assert_eq!(s.slipway(&["snapshot"]).code, 0);
    let before = live(&s, &name, "t1");
    let metrics = s.root().join("slipway.prom");

    // The drill holds its container up 3 s after the health check passed; look at it meanwhile.
    let child = s.spawn(
        &["drill", "--tenant", "t1", "--json", "--metrics-file", metrics.to_str().unwrap()],
        &[("SLIPWAY_TEST_PAUSE_AT", "drill-healthy:3000")],
    );
    let mark = format!("label=drilltest={}", s.id());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let drill_name = loop {
        let running = sh(Command::new("docker").args([
            "ps",
            "--filter",
            &mark,
            "--filter",
            "label=slipway.drill",
            "--format",
            "{{.Names}}",
        ]));
        if let Some(n) = running.lines().next() {
            break n.to_string();
        }
        assert!(std::time::Instant::now() < deadline, "no drill container came up");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_ne!(drill_name, name);
    let c = s.inspect(&drill_name);
    let nets = c["NetworkSettings"]["Networks"].as_object().unwrap();
    assert_eq!(nets.keys().collect::<Vec<_>>(), [&drill_name], "it joins only the drill's own network");
    let aliases = nets[&drill_name]["Aliases"].as_array().cloned().unwrap_or_default();
    assert!(!aliases.iter().any(|a| a == "t1" || a == &serde_json::json!(name)), "{aliases:?}");
    let net: serde_json::Value =
        serde_json::from_str(&sh(Command::new("docker").args(["network", "inspect", &drill_name]))).unwrap();
    assert_eq!(net[0]["Internal"], true, "the drill network has no route off the host");
    let labels = c["Config"]["Labels"].as_object().unwrap();
    for k in labels.keys() {
        assert!(
            !k.starts_with("traefik.") && !k.starts_with("caddy") && !k.starts_with("com.docker.compose."),
            "routing label {k} on the drill container: {labels:?}"
        );
    }
    assert!(!labels.contains_key("slipway.test"), "the app's select label makes it look like a tenant");
    assert_eq!(labels["drilltest"], s.id(), "the operator's other labels are carried");
    let env = c["Config"]["Env"].as_array().unwrap();
    assert!(env.iter().any(|e| e == "TENANT=t1"), "the operator's env is carried: {env:?}");
    let ports = &c["HostConfig"]["PortBindings"];
    assert!(ports.is_null() || ports.as_object().is_some_and(|p| p.is_empty()), "published: {ports}");
    assert_eq!(c["HostConfig"]["RestartPolicy"]["Name"], "no");
    let data = c["Mounts"].as_array().unwrap().iter().find(|m| m["Destination"] == "/data").unwrap().clone();
    let source = std::path::PathBuf::from(data["Source"].as_str().unwrap());
    assert!(source.starts_with(s.backups().join("drill")), "the data mount is the scratch copy: {source:?}");
    assert_eq!(tree_hash(&source), before.1, "the scratch copy is the snapshot");
    // The tenant's network holds the tenant alone: nothing of the drill joined it.
    let ours: serde_json::Value =
        serde_json::from_str(&sh(Command::new("docker").args(["network", "inspect", s.network()]))).unwrap();
    let on: Vec<&str> =
        ours[0]["Containers"].as_object().unwrap().values().map(|v| v["Name"].as_str().unwrap()).collect();
    assert_eq!(on, [name.as_str()]);

    let out = child.wait_with_output().unwrap();
    let out = Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let run = out.run_id();
    let report: Drill = reports::parse::<Drill>(&out.stdout, &out.stderr).report();
    let t = &report.tenants[0];
    assert_eq!((t.tenant.as_str(), t.outcome.as_str(), t.container.as_str()), ("t1", "passed", drill_name.as_str()));
    assert!(t.restore_ms.is_some() && t.healthy_ms.is_some(), "{t:?}");
    assert!(t.data_bytes >= 8010 && t.archive_bytes > 0 && t.entries >= 4, "{t:?}");
    assert_eq!(t.snapshot.as_deref().map(|s| s.starts_with("daily/")), Some(true));
    let changes = t.changes.as_ref().unwrap();
    for k in ["caddy", "com.docker.compose.project", "slipway.test", "traefik.http.routers.app.rule"] {
        assert!(changes.labels_stripped.iter().any(|l| l == k), "{k} not reported stripped: {changes:?}");
    }
    assert_eq!(changes.networks_left, [s.network()]);
    assert_eq!(changes.ports_unpublished, ["8080/tcp"]);
    assert_eq!(changes.restart_replaced, "unless-stopped");

    assert_eq!(live(&s, &name, "t1"), before, "the live tenant changed");
    assert_eq!(left_by(&s, &run), Vec::<String>::new());
    // What reads the run record: status and the metrics file.
    let st = s.slipway(&["status", "--json"]);
    assert_eq!(st.code, 0, "{}", st.stdout);
    assert!(st.report::<Status>().apps[0].tenants[0].last_drill.is_some(), "{}", st.stdout);
    let prom = std::fs::read_to_string(&metrics).unwrap();
    for series in
        ["slipway_drill_last_success_timestamp_seconds{tenant=\"t1\"}", "slipway_drill_duration_seconds{tenant=\"t1\"}"]
    {
        assert!(prom.contains(series), "no {series} in\n{prom}");
    }
    // A last successful drill older than [drill] max_age_days is flagged.
    let db = rusqlite::Connection::open(s.state().join("state.db")).unwrap();
    db.execute("UPDATE drills SET finished_at = '2000-01-01T00:00:00Z'", []).unwrap();
    let st = s.slipway(&["status", "--json"]);
    assert_eq!(st.code, 8, "{}", st.stdout);
    let attention = st.report::<Status>().attention;
    assert!(attention.iter().any(|a| a.contains("tenant t1") && a.contains("limit 35 days")), "{attention:?}");
}

#[test]
fn a_snapshot_the_app_cannot_start_on_fails_the_drill_naming_the_tenant_and_leaves_nothing() {
    let s = Sandbox::new();
    let _guard = Leftovers(&s);
    let v1 = s.push_fixture_as("v1", "app");
    routed_tenant(&s, "t1", &v1);
    let bad = routed_tenant(&s, "t2", &v1);
    s.write_data("t1", "db/records.txt", "good rows\n");
    s.write_data("t2", "db/records.txt", "rows\n");
    s.write_fleet(&s.fleet_app(&v1, ""));
    // t2's snapshot holds data its app refuses to start on; the live t2 then goes on fine.
    s.write_data("t2", "db/corrupt", "a torn page\n");
    assert_eq!(s.slipway(&["snapshot"]).code, 0);
    std::fs::remove_file(s.data_dir("t2").join("db/corrupt")).unwrap();
    let before = live(&s, &bad, "t2");

    let out = s.slipway(&["drill", "--all", "--json"]);
    assert_eq!(out.code, 1, "{} {}", out.stdout, out.stderr);
    let run = out.run_id();
    let report: Drill = out.report();
    let outcomes: Vec<(&str, &str)> = report.tenants.iter().map(|t| (t.tenant.as_str(), t.outcome.as_str())).collect();
    assert_eq!(outcomes, [("t1", "passed"), ("t2", "failed")]);
    assert!(report.tenants[1].detail.contains("exited with code 4"), "{}", report.tenants[1].detail);
    assert_eq!(left_by(&s, &run), Vec::<String>::new());
    // The human output names the failing tenant too.
    let human = s.slipway(&["drill", "--tenant", "t2"]);
    assert_eq!(human.code, 1);
    assert!(human.stdout.contains("drill tenant t2 (app app): FAILED"), "{}", human.stdout);
    assert_eq!(left_by(&s, &newest_drill_run(&s)), Vec::<String>::new());
    assert_eq!(live(&s, &bad, "t2"), before, "the live tenant changed");
    // status says which tenant's backup does not restore.
    let st = s.slipway(&["status", "--json"]);
    assert_eq!(st.code, 8, "{}", st.stdout);
    let attention = st.report::<Status>().attention;
    assert!(attention.iter().any(|a| a.contains("tenant t2") && a.contains("restore drill")), "{attention:?}");
    assert!(!attention.iter().any(|a| a.contains("tenant t1")), "{attention:?}");
}

#[test]
fn a_drill_stopped_by_sigterm_or_killed_leaves_nothing_once_recover_ran() {
    let s = Sandbox::new();
    let _guard = Leftovers(&s);
    let v1 = s.push_fixture_as("v1", "app");
    let name = routed_tenant(&s, "t1", &v1);
    s.write_data("t1", "db/records.txt", "rows\n");
    s.write_fleet(&s.fleet_app(&v1, ""));
    assert_eq!(s.slipway(&["snapshot"]).code, 0);
    let before = live(&s, &name, "t1");

    // SIGTERM once the copy's container runs: the drill removes what it made, exit 7.
    let out = s.slipway_env(&["drill", "--tenant", "t1", "--json"], &[("SLIPWAY_TEST_SIGNAL_AT", "drill-after-start")]);
    assert_eq!(out.code, 7, "{} {}", out.stdout, out.stderr);
    assert!(out.stderr.contains("slipway test point reached: drill-after-start"), "{}", out.stderr);
    let report: Drill = out.report();
    assert_eq!(report.tenants[0].outcome, "interrupted");
    assert_eq!(left_by(&s, &out.run_id()), Vec::<String>::new());

    // Killed at the same point: what it made stays until recover sweeps it.
    let out = s.slipway_env(&["drill", "--tenant", "t1"], &[("SLIPWAY_TEST_CRASH_AT", "drill-after-start")]);
    assert_eq!(out.code, -1, "{}", out.stderr);
    let run = newest_drill_run(&s);
    let left = left_by(&s, &run);
    assert_eq!(left.len(), 3, "the crash test needs a container, a network and a scratch dir left: {left:?}");
    let rec = s.slipway(&["recover", "--json"]);
    assert_eq!(rec.code, 0, "{} {}", rec.stdout, rec.stderr);
    let rec: Recover = rec.report();
    assert!(rec.swept.iter().any(|l| l.contains("container slipway-drill-")), "{:?}", rec.swept);
    assert_eq!(left_by(&s, &run), Vec::<String>::new());
    let runs: Runs = s.slipway(&["runs", "--json"]).report();
    let killed = runs.runs.iter().find(|r| r.id == run).unwrap();
    assert_eq!(killed.outcome.as_deref(), Some("recovered"));
    assert_eq!(live(&s, &name, "t1"), before, "the live tenant changed");
}

#[test]
fn a_drill_from_the_remote_restores_the_off_site_copy_when_the_local_one_is_gone() {
    let s = Sandbox::new();
    let _guard = Leftovers(&s);
    let v1 = s.push_fixture_as("v1", "app");
    let name = routed_tenant(&s, "t1", &v1);
    s.write_data("t1", "db/records.txt", &"off-site row\n".repeat(500));
    s.write_fleet(&s.fleet_app(&v1, ""));
    // Bad input first: nothing is drilled or recorded.
    let unknown = s.slipway(&["drill", "--tenant", "nope", "--json"]);
    assert_eq!(unknown.code, 2, "{}", unknown.stdout);
    assert!(unknown.stdout.contains("tenant nope"), "{}", unknown.stdout);
    assert_eq!(s.slipway(&["drill"]).code, 2, "neither --tenant nor --all");
    let no_remote = s.slipway(&["drill", "--all", "--remote"]);
    assert_eq!(no_remote.code, 2);
    assert!(no_remote.stderr.contains("[remote]"), "{}", no_remote.stderr);

    // --dry-run shows the plan and touches nothing (no run recorded, no container made).
    let plan = s.slipway(&["drill", "--all", "--dry-run", "--json"]);
    assert_eq!(plan.code, 0, "{} {}", plan.stdout, plan.stderr);
    let plan: Drill = plan.report();
    assert!(plan.tenants.is_empty() && plan.plan.tenants.len() == 1, "{plan:?}");
    let runs: Runs = s.slipway(&["runs", "--json"]).report();
    assert!(!runs.runs.iter().any(|r| r.job == "drill"), "{runs:?}");

    assert_eq!(s.slipway(&["snapshot"]).code, 0);
    s.use_shared_remote("");
    assert_eq!(s.slipway(&["sync"]).code, 0);
    std::fs::remove_dir_all(s.backups().join("daily")).unwrap();
    let before = live(&s, &name, "t1");

    let local = s.slipway(&["drill", "--all", "--json"]);
    assert_eq!(local.code, 1, "{}", local.stdout);
    let report: Drill = local.report();
    assert!(report.tenants[0].detail.contains("no complete snapshot of tenant t1"), "{}", report.tenants[0].detail);

    let out = s.slipway(&["drill", "--all", "--remote", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let report: Drill = out.report();
    assert!(report.plan.remote);
    let t = &report.tenants[0];
    assert_eq!(t.outcome, "passed", "{}", t.detail);
    let fetched = t.archive.clone().unwrap();
    assert!(fetched.starts_with(s.state().join("remote-cache")), "{fetched:?}");
    assert!(!fetched.exists(), "the downloaded archive is removed after the drill");
    assert_eq!(left_by(&s, &out.run_id()), Vec::<String>::new());
    assert_eq!(live(&s, &name, "t1"), before, "the live tenant changed");
}
