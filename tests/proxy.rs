//! Rollouts behind the real Traefik the test environment runs (Traefik v3, Docker provider,
//! `scripts/testenv.sh`): tenants carry the router labels of the primary runbook (a `Host` rule,
//! the service port, the network), and what is checked is what a customer gets through the
//! proxy — which version answers for their host right after the rollout, and how many of their
//! requests failed during the switch.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::reports::{Doctor, Rollout};
use crate::support::{sh, tree_hash, Sandbox};

/// This testenv's Traefik: its web entrypoint, the label its Docker provider routes by, the
/// directory its file provider watches.
struct Traefik {
    url: String,
    label: String,
    dynamic: std::path::PathBuf,
}

fn traefik() -> Traefik {
    let var = |n: &str| std::env::var(n).unwrap_or_else(|_| panic!("{n} is not set: run `scripts/testenv.sh up`"));
    Traefik {
        url: var("SWTEST_TRAEFIK_URL"),
        label: var("SWTEST_TRAEFIK_LABEL"),
        dynamic: var("SWTEST_TRAEFIK_DYNAMIC").into(),
    }
}

/// The tenant's host (unique per sandbox: several tests share the one Traefik).
fn host(s: &Sandbox, tenant: &str) -> String {
    format!("{tenant}.{}.example.test", s.id())
}

/// The runbook's router labels for `tenant`, on `network`, routed by this testenv's Traefik.
fn router_labels(s: &Sandbox, tenant: &str, network: &str) -> Vec<String> {
    let (t, name) = (traefik(), format!("{}-{tenant}", s.id()));
    [
        t.label,
        "traefik.enable=true".to_string(),
        format!("traefik.http.routers.{name}.rule=Host(`{}`)", host(s, tenant)),
        format!("traefik.http.routers.{name}.entrypoints=web"),
        format!("traefik.http.routers.{name}.service={name}"),
        format!("traefik.http.services.{name}.loadbalancer.server.port=8080"),
        format!("traefik.docker.network={network}"),
    ]
    .into_iter()
    .flat_map(|l| ["--label".to_string(), l])
    .collect()
}

/// A tenant on `image` with some data, routed by Traefik through the runbook's labels.
fn routed_tenant(s: &Sandbox, tenant: &str, image: &str) -> String {
    s.write_data(tenant, "db/records.txt", &format!("{tenant} customer rows\n").repeat(100));
    let labels = router_labels(s, tenant, s.network());
    let extra: Vec<&str> = labels.iter().map(String::as_str).collect();
    s.add_tenant_with(tenant, image, &extra)
}

/// One request through the proxy, as a customer makes it: (status, body). Asked again (at most
/// twice) only when the proxy gave no HTTP answer at all (a loaded test machine): any answer,
/// a 404 or a 502 included, is returned as it came.
fn through_proxy(s: &Sandbox, tenant: &str, path: &str) -> (u16, String) {
    let mut last = (0, String::new());
    for _ in 0..3 {
        let out = Command::new("curl")
            .args(["-sS", "-m", "10", "-o", "-", "-w", "\n%{http_code}", "-H"])
            .arg(format!("Host: {}", host(s, tenant)))
            .arg(format!("{}{path}", traefik().url))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        last = (code.trim().parse().unwrap_or(0), body.trim().to_string());
        if last.0 != 0 {
            return last;
        }
        eprintln!("no answer from Traefik for {}: {}", host(s, tenant), String::from_utf8_lossy(&out.stderr));
    }
    last
}

/// Wait (up to 20 s) until the proxy answers `want` for the tenant's host: Traefik's Docker
/// provider sees containers come and go after its own throttle.
fn wait_routed(s: &Sandbox, tenant: &str, path: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = through_proxy(s, tenant, path);
        if got == (200, want.to_string()) {
            return;
        }
        assert!(Instant::now() < deadline, "Traefik never answered {want:?} for {}: last {got:?}", host(s, tenant));
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `[app.proxy]` pointing at this testenv's Traefik.
fn proxy_table(s: &Sandbox, extra: &str) -> String {
    format!("[app.proxy]\nentrypoint = \"{}\"\nhost = \"{{tenant}}.{}.example.test\"\n{extra}", traefik().url, s.id())
}

#[test]
fn rolled_means_the_proxy_already_routes_every_customer_to_the_new_version() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let v2 = s.push_fixture_as("v2", "app");
    for t in ["t1", "t2"] {
        routed_tenant(&s, t, &v1);
        wait_routed(&s, t, "/api/version", "v1");
    }
    s.write_fleet(&s.fleet_app(&v2, &format!("canary_soak_s = 1\n{}", proxy_table(&s, ""))));
    // doctor: the proxy routes both; neither keeps a fixed address, so a switch will fail
    // requests, and doctor says so and what to do.
    let doctor: Doctor = s.slipway(&["doctor", "--json"]).report();
    assert_eq!(doctor.line("proxy").level, "ok", "{:?}", doctor.line("proxy"));
    let hold = doctor.line("proxy_hold");
    assert_eq!(hold.level, "warn", "{hold:?}");
    assert!(hold.detail.contains("t1, t2") && hold.fix.as_deref().unwrap_or("").contains("README"), "{hold:?}");
    let metrics = s.root().join("slipway.prom");
    let out = s.slipway(&["rollout", "--json", "--metrics-file", metrics.to_str().unwrap()]);
    assert_eq!(out.code, 0, "stdout {} stderr {}", out.stdout, out.stderr);
    // Right after slipway said "rolled", with no retry: a customer of every tenant gets v2
    // through Traefik (its Docker provider's throttle is not the customer's problem).
    for t in ["t1", "t2"] {
        assert_eq!(through_proxy(&s, t, "/api/version"), (200, "v2".to_string()), "tenant {t}");
    }
    let report: Rollout = out.report();
    for t in &report.apps[0].tenants {
        assert_eq!(t.outcome, "rolled", "{t:?}");
        let p = t.proxy.as_ref().unwrap_or_else(|| panic!("no proxy figures for {}", t.tenant));
        assert_eq!(p.host, host(&s, &t.tenant));
        assert!(p.requests > 10, "the watch sent {} requests", p.requests);
        assert_eq!(p.failed, p.errors.values().sum::<u64>(), "{p:?}");
        assert!(p.route_ms.is_some(), "{p:?}");
        // A stop-first switch behind the Docker provider alone fails requests: the router
        // goes with the stopped container and comes back only after the provider's throttle.
        assert!(p.failed > 0 && p.downtime_ms > 0, "{p:?}");
    }
    // What reads the run record and the metrics file says the same.
    let human = s.slipway(&["runs", "show", &out.run_id()]);
    assert_eq!(human.code, 0, "{}", human.stderr);
    let t1 = report.apps[0].tenants[0].proxy.as_ref().unwrap();
    let line = format!("{} of {} requests failed, proxy downtime {} ms", t1.failed, t1.requests, t1.downtime_ms);
    assert!(human.stdout.contains(&line), "{line:?} not in {}", human.stdout);
    let prom = std::fs::read_to_string(&metrics).unwrap();
    let series = format!("slipway_rollout_proxy_failed_requests{{tenant=\"t1\"}} {}", t1.failed);
    assert!(prom.contains(&series), "{series:?} not in {prom}");
    assert!(prom.contains("slipway_rollout_downtime_seconds{tenant=\"t2\"}"), "{prom}");
}

#[test]
fn a_release_that_breaks_routing_is_caught_at_the_canary_and_undone_through_the_proxy() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    // Healthy at its own address (its health endpoint stayed on :8080), but its pages moved
    // to :8081, where the tenants' router labels do not point.
    let moved = s.push_fixture_as("moved", "app");
    let names: Vec<String> = ["t1", "t2", "t3"].iter().map(|t| routed_tenant(&s, t, &v1)).collect();
    for t in ["t1", "t2", "t3"] {
        wait_routed(&s, t, "/api/version", "v1");
    }
    let before: Vec<serde_json::Value> = names.iter().map(|n| s.inspect(n)).collect();
    let hash = tree_hash(&s.data_dir("t1"));
    s.write_fleet(&s.fleet_app(&moved, &proxy_table(&s, "path = \"/api/version\"\ntimeout_s = 5\n")));
    let out = s.slipway(&["rollout", "--json"]);
    assert_eq!(out.code, 3, "a release the proxy cannot route halts the run: {} {}", out.stdout, out.stderr);
    let report: Rollout = out.report();
    let tenants = &report.apps[0].tenants;
    assert_eq!(tenants[0].outcome, "restored", "{:?}", tenants[0]);
    let detail = tenants[0].detail.as_deref().unwrap_or("");
    assert!(detail.contains(&host(&s, "t1")) && detail.contains("HTTP 404"), "{detail}");
    assert!(tenants[1..].iter().all(|t| t.outcome == "not_reached"), "{tenants:?}");
    // The canary: its prior container back under its name with its labels, its data as it was,
    // and customers routed to it again.
    assert_eq!(s.image_of(&names[0]), v1);
    assert_eq!(s.inspect(&names[0])["Config"]["Labels"], before[0]["Config"]["Labels"]);
    assert_eq!(tree_hash(&s.data_dir("t1")), hash);
    wait_routed(&s, "t1", "/api/version", "v1");
    // The others: never touched.
    for (n, b) in names.iter().zip(&before).skip(1) {
        assert_eq!(s.inspect(n)["Id"], b["Id"], "{n} was replaced");
    }
    let p = tenants[0].proxy.as_ref().expect("the canary's proxy figures");
    assert!(p.failed > 0, "customers did see the broken release: {p:?}");
}

/// A network with a subnet of its own (a fixed address per tenant needs one), removed on drop.
struct SubnetNetwork {
    name: String,
    prefix: String,
}

impl SubnetNetwork {
    fn new(s: &Sandbox) -> SubnetNetwork {
        let name = format!("{}-fixed", s.id());
        // Another test or engineer may hold a subnet: try the next.
        let seed =
            std::process::id() as usize + s.id().len() * 7919 + (Instant::now().elapsed().subsec_nanos() as usize);
        for i in 0..64 {
            let n = (seed + i * 37) % 250 + 2;
            let prefix = format!("10.213.{n}");
            let ok = Command::new("docker")
                .args(["network", "create", "--label", &format!("slipway.test={}", s.id())])
                .args(["--subnet", &format!("{prefix}.0/24"), &name])
                .output()
                .unwrap()
                .status
                .success();
            if ok {
                return SubnetNetwork { name, prefix };
            }
        }
        panic!("no free 10.213.x.0/24 subnet for {name}");
    }
}

impl Drop for SubnetNetwork {
    fn drop(&mut self) {
        let ids = Command::new("docker")
            .args(["network", "inspect", "-f", "{{range $k, $v := .Containers}}{{$k}} {{end}}", &self.name])
            .output();
        if let Ok(o) = ids {
            for id in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                let _ = Command::new("docker").args(["rm", "-f", id]).output();
            }
        }
        let _ = Command::new("docker").args(["network", "rm", &self.name]).output();
    }
}

/// A Traefik dynamic-config file (file provider), removed on drop.
struct DynamicRoute(std::path::PathBuf);
impl Drop for DynamicRoute {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn a_stop_first_switch_behind_a_held_route_fails_no_customer_request() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let v2 = s.push_fixture_as("v2", "app");
    let net = SubnetNetwork::new(&s);
    let ip = format!("{}.10", net.prefix);
    // The setup of the README: the tenant keeps one address across versions, and the route to
    // it lives in Traefik's file provider (it does not go away with the stopped container),
    // with the retry middleware holding requests while the new version starts.
    s.write_data("t1", "db/records.txt", "t1 customer rows\n");
    let name = format!("{}-t1", s.id());
    let (label, vol) = (format!("slipway.test={}", s.id()), format!("{}:/data", s.data_dir("t1").display()));
    sh(Command::new("docker").args(["run", "-d", "--name", &name, "--network", &net.name, "--ip", &ip]).args([
        "--label",
        &label,
        "--volume",
        &vol,
        "--restart",
        "unless-stopped",
        // A graceful app: on SIGTERM it stops accepting and finishes what it accepted (no
        // proxy can replay a request the app took and dropped).
        "--env",
        "SWFIX_DRAIN=0.5",
        &v1,
    ]));
    // The route is what `slipway config held-routes` generates from fleet.toml and the engine.
    s.write_fleet(&s.fleet_app(&v1, &proxy_table(&s, "")));
    let file = traefik().dynamic.join(format!("{}.yml", s.id()));
    let route = DynamicRoute(file.clone());
    let out = s.slipway(&["config", "held-routes", "--write", file.to_str().unwrap(), "--json"]);
    assert_eq!(out.code, 0, "stdout {} stderr {}", out.stdout, out.stderr);
    let generated = std::fs::read_to_string(&file).unwrap();
    assert!(generated.contains(&format!("Host(`{}`)", host(&s, "t1"))), "{generated}");
    assert!(generated.contains(&format!("url: \"http://{ip}:8080\"")), "{generated}");
    assert!(generated.contains("retry:"), "{generated}");
    wait_routed(&s, "t1", "/api/version", "v1");
    s.write_fleet(&s.fleet_app(&v2, &proxy_table(&s, "")));
    let doctor: Doctor = s.slipway(&["doctor", "--json"]).report();
    for check in ["proxy", "proxy_hold"] {
        assert_eq!(doctor.line(check).level, "ok", "{:?}", doctor.line(check));
    }
    let out = s.slipway(&["rollout", "--json"]);
    assert_eq!(out.code, 0, "stdout {} stderr {}", out.stdout, out.stderr);
    let report: Rollout = out.report();
    let t = &report.apps[0].tenants[0];
    assert_eq!(t.outcome, "rolled");
    assert!(t.downtime_ms.unwrap() > 0, "the container was down: {t:?}");
    let p = t.proxy.as_ref().unwrap();
    assert!(p.requests > 10, "{p:?}");
    // At most one: a connection the kernel queued on the app's listener in the instant the
    // draining app closed it is reset after Traefik sent the request, a 502 its retry cannot
    // replay (the fixture's httpd closes its listener on SIGTERM, as a graceful server does).
    // Seen once in a loaded full suite; anything more is a hold that does not hold.
    assert!(p.failed <= 1, "customer requests failed during the switch: {p:?}");
    assert!(p.errors.keys().all(|e| e == "HTTP 502"), "{p:?}");
    // The new version under the tenant's name, at the same address.
    assert_eq!(s.image_of(&name), v2);
    assert_eq!(s.inspect(&name)["NetworkSettings"]["Networks"][&net.name]["IPAddress"], ip.as_str());
    assert_eq!(through_proxy(&s, "t1", "/api/version"), (200, "v2".to_string()));
    drop(route);
}

#[test]
fn held_routes_route_each_fixed_address_and_name_the_tenants_left_out() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let net = SubnetNetwork::new(&s);
    let ip = format!("{}.20", net.prefix);
    let (name, label) = (format!("{}-t1", s.id()), format!("slipway.test={}", s.id()));
    sh(Command::new("docker").args([
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        &net.name,
        "--ip",
        &ip,
        "--label",
        &label,
        &v1,
    ]));
    // The engine picks t2's address: a held route to it could point at another container later.
    s.add_tenant("t2", &v1);
    s.write_fleet(&s.fleet_app(&v1, &proxy_table(&s, "")));
    let file = s.root().join("routes").join("held.yml");
    // A --write into a dir that does not exist writes nothing and says which.
    let out = s.slipway(&["config", "held-routes", "--write", file.to_str().unwrap()]);
    assert_eq!(out.code, 2, "stdout {} stderr {}", out.stdout, out.stderr);
    assert!(out.stderr.contains("is not a directory"), "{}", out.stderr);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let out = s.slipway(&["config", "held-routes", "--write", file.to_str().unwrap(), "--json"]);
    assert_eq!(out.code, 0, "stdout {} stderr {}", out.stdout, out.stderr);
    let report: serde_json::Value = out.report();
    let routes = report["routes"].as_array().unwrap();
    assert_eq!(routes.len(), 1, "{report}");
    assert_eq!(routes[0]["tenant"], "t1");
    assert_eq!(routes[0]["url"], format!("http://{ip}:8080"));
    let unheld = report["unheld"].as_array().unwrap();
    assert_eq!(unheld.len(), 1, "{report}");
    assert_eq!(unheld[0]["tenant"], "t2");
    assert!(unheld[0]["reason"].as_str().unwrap().contains("no fixed address"), "{report}");
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(text, report["text"].as_str().unwrap());
    assert!(text.contains(&host(&s, "t1")) && !text.contains(&host(&s, "t2")), "{text}");
}

#[test]
fn doctor_fails_naming_a_tenant_the_proxy_does_not_route() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    routed_tenant(&s, "t1", &v1);
    // No router labels: Traefik does not know this tenant.
    s.add_tenant("t2", &v1);
    wait_routed(&s, "t1", "/api/health", "v1 ok");
    s.write_fleet(&s.fleet_app(&v1, &proxy_table(&s, "")));
    let out = s.slipway(&["doctor", "--json"]);
    assert_ne!(out.code, 0, "{}", out.stdout);
    let doctor: Doctor = out.report();
    let proxy = doctor.line("proxy");
    assert_eq!(proxy.level, "fail", "{proxy:?}");
    assert!(proxy.detail.contains(&host(&s, "t2")) && proxy.detail.contains("HTTP 404"), "{proxy:?}");
    assert!(!proxy.detail.contains(&host(&s, "t1")), "t1 is routed: {proxy:?}");
}

#[test]
fn a_stopped_tenant_behind_the_proxy_is_recreated_without_waiting_for_customers_it_has_not() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let v2 = s.push_fixture_as("v2", "app");
    routed_tenant(&s, "t1", &v1);
    let stopped = routed_tenant(&s, "t2", &v1);
    sh(Command::new("docker").args(["stop", "-t", "5", &stopped]));
    wait_routed(&s, "t1", "/api/version", "v1");
    s.write_fleet(&s.fleet_app(&v2, &format!("include_stopped = true\n{}", proxy_table(&s, "timeout_s = 30\n"))));
    let began = Instant::now();
    let out = s.slipway(&["rollout", "--json"]);
    assert_eq!(out.code, 0, "stdout {} stderr {}", out.stdout, out.stderr);
    // The stopped tenant has no route to wait for: no 30 s spent waiting on the proxy for it.
    assert!(began.elapsed() < Duration::from_secs(20), "took {:?}", began.elapsed());
    let report: Rollout = out.report();
    let t2 = report.apps[0].tenants.iter().find(|t| t.tenant == "t2").unwrap();
    assert_eq!(t2.outcome, "rolled", "{t2:?}");
    assert!(t2.proxy.is_none(), "{t2:?}");
    assert_eq!(s.image_of(&stopped), v2);
    assert_eq!(s.inspect(&stopped)["State"]["Running"], false, "a stopped tenant stays stopped");
    // (Right-after routing is the first test's subject; here the running tenant only has to
    // end up on v2 through the proxy.)
    wait_routed(&s, "t1", "/api/version", "v2");
}
