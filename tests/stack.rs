//! A tenant that is a stack of containers (issue #26 item 2): compose projects made with the
//! real `docker-compose` CLI (a project per tenant, named volumes, depends_on), and a stack made
//! with `docker run` and Coolify-style labels. slipway itself never runs compose: it reads the
//! labels and talks to the engine. Each stack here is app (its data in one named volume, the
//! app's HTTP check) + worker (no data) + a sidecar that writes its own named volume (once, at
//! its first start, so a restart changes nothing and "byte-identical" is a real check).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::reports::{Recover, Rollout, Runs};
use crate::support::{tree_hash, Sandbox};

pub(crate) fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().unwrap();
    assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A compose project of one test: `docker-compose -p <project> -f <file>`, taken down with its
/// volumes and network at the end (before the sandbox goes).
pub(crate) struct Compose {
    pub(crate) project: String,
    pub(crate) file: PathBuf,
}

impl Compose {
    pub(crate) fn run(&self, args: &[&str]) -> String {
        let out = Command::new("docker-compose")
            .args(["--no-ansi", "-p", &self.project, "-f"])
            .arg(&self.file)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "docker-compose {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The container ids `docker-compose ps` lists for the project, sorted.
    pub(crate) fn ps(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.run(&["ps", "-q"]).lines().map(str::to_string).collect();
        ids.sort();
        ids
    }

    /// The container of `service` (compose v1 names it `<project>_<service>_1`).
    pub(crate) fn container(&self, service: &str) -> String {
        format!("{}_{service}_1", self.project)
    }

    /// The host dir of the project's named volume `name`.
    pub(crate) fn volume_dir(&self, name: &str) -> PathBuf {
        PathBuf::from(docker(&["volume", "inspect", "-f", "{{.Mountpoint}}", &format!("{}_{name}", self.project)]))
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        // Set-aside or staged containers carry the project's labels too: down removes them.
        let _ = Command::new("docker-compose")
            .args(["--no-ansi", "-p", &self.project, "-f"])
            .arg(&self.file)
            .args(["down", "-v", "--remove-orphans", "-t", "1"])
            .output();
    }
}

/// The images of a stack test: each service its own registry repo.
pub(crate) struct Images {
    pub(crate) app: String,
    pub(crate) worker: String,
    pub(crate) side: String,
}

pub(crate) fn images(s: &Sandbox) -> Images {
    Images {
        app: s.push_fixture_as("v1", "app"),
        worker: s.push_fixture_as("v1", "worker"),
        side: s.push_fixture_as("v1", "side"),
    }
}

/// `docker-compose up -d` a three-service tenant `tenant` (project `<sandbox id><tenant>`).
pub(crate) fn compose_tenant(s: &Sandbox, tenant: &str, img: &Images) -> Compose {
    compose_tenant_with(s, tenant, img, "", "")
}

/// [`compose_tenant`] with `extra` appended to the services (another service, say), and `worker_extra` to the worker's definition (a healthcheck, say).
pub(crate) fn compose_tenant_with(s: &Sandbox, tenant: &str, img: &Images, extra: &str, worker_extra: &str) -> Compose {
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
    depends_on: [ side ]
  worker:
    image: {worker}
    labels: {{ slipway.test: "{id}" }}
    restart: unless-stopped
{worker_extra}
  side:
    image: {side}
    labels: {{ slipway.test: "{id}" }}
    volumes: [ "sidedata:/data" ]
    restart: unless-stopped
    entrypoint: [ "/bin/busybox", "sh", "-c", "test -f /data/seed || echo seeded > /data/seed; exec /bin/busybox sh /entry.sh" ]
{extra}
volumes:
  appdata: {{ labels: {{ slipway.test: "{id}" }} }}
  sidedata: {{ labels: {{ slipway.test: "{id}" }} }}
networks:
  default: {{ labels: {{ slipway.test: "{id}" }} }}
"#,
        app = img.app,
        worker = img.worker,
        side = img.side,
    );
    std::fs::write(&file, yaml).unwrap();
    let c = Compose { project, file };
    c.run(&["up", "-d"]);
    c
}

/// The stack app of these tests: services app (writes /data, the app's HTTP check), worker
/// (no data), side (writes /data); tenants are compose projects.
pub(crate) fn stack_fleet(s: &Sandbox, app: &str, worker: &str, side: &str, extra: &str) -> String {
    format!(
        "[[app]]\nname = \"agent\"\nselect = \"slipway.test={id}\"\nstop_timeout_s = 2\n\
         health = {{ path = \"/api/health\", port = 8080, timeout_s = 15, service = \"app\" }}\n{extra}\n\
         [app.services.side]\nimage = \"{side}\"\nwrites = true\norder = 1\ndata = [\"/data\"]\n\
         [app.services.app]\nimage = \"{app}\"\nwrites = true\norder = 2\ndata = [\"/data\"]\n\
         [app.services.worker]\nimage = \"{worker}\"\norder = 3\n",
        id = s.id()
    )
}

/// What an operator checks of a container: id, image, compose labels, networks with aliases,
/// running.
pub(crate) fn looks(s: &Sandbox, name: &str) -> (String, String, BTreeMap<String, String>, Vec<String>, bool) {
    let i = s.inspect(name);
    let labels: BTreeMap<String, String> = i["Config"]["Labels"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| {
            k.starts_with("com.docker.compose.") || k.starts_with("slipway.test") || k.starts_with("coolify.")
        })
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
        .collect();
    let mut nets: Vec<String> = i["NetworkSettings"]["Networks"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(n, ep)| {
            let mut aliases: Vec<String> = ep["Aliases"]
                .as_array()
                .map(|a| a.iter().filter_map(|x| x.as_str()).filter(|x| x.len() != 12).map(str::to_string).collect())
                .unwrap_or_default();
            aliases.sort();
            format!("{n}: {}", aliases.join(","))
        })
        .collect();
    nets.sort();
    (
        i["Id"].as_str().unwrap().to_string(),
        i["Config"]["Image"].as_str().unwrap().to_string(),
        labels,
        nets,
        i["State"]["Running"] == true,
    )
}

/// A compose container's IP on its project's network.
pub(crate) fn compose_ip(s: &Sandbox, c: &Compose, name: &str) -> String {
    let net = format!("{}_default", c.project);
    s.inspect(name)["NetworkSettings"]["Networks"][&net]["IPAddress"].as_str().unwrap().to_string()
}

pub(crate) fn tree(dir: &Path) -> String {
    tree_hash(dir)
}

#[test]
fn a_new_worker_digest_rolls_only_the_worker_canary_first_and_compose_still_lists_the_project() {
    let s = Sandbox::new();
    let img = images(&s);
    let (t1, t2) = (compose_tenant(&s, "t1", &img), compose_tenant(&s, "t2", &img));
    let worker2 = s.push_fixture_as("v2", "worker");
    let before: Vec<_> =
        [&t1, &t2].iter().flat_map(|c| ["app", "side", "worker"].map(|svc| looks(&s, &c.container(svc)))).collect();
    let (ps1, ps2) = (t1.ps(), t2.ps());
    let data1 = (tree(&t1.volume_dir("appdata")), tree(&t1.volume_dir("sidedata")));
    s.write_fleet(&stack_fleet(
        &s,
        &img.app,
        &worker2,
        &img.side,
        &format!("canary = \"{}\"\ncanary_soak_s = 1", t2.project),
    ));

    let out = s.slipway(&["rollout", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let report: Rollout = out.report();
    let tenants: Vec<(&str, &str)> =
        report.apps[0].tenants.iter().map(|t| (t.tenant.as_str(), t.outcome.as_str())).collect();
    // The configured canary first, then the other; both rolled.
    assert_eq!(tenants, [(t2.project.as_str(), "rolled"), (t1.project.as_str(), "rolled")], "{}", out.stdout);
    for (n, c) in [&t1, &t2].iter().enumerate() {
        for (k, svc) in ["app", "side", "worker"].iter().enumerate() {
            let (id, image, labels, nets, running) = looks(&s, &c.container(svc));
            let (bid, bimage, blabels, bnets, _) = &before[n * 3 + k];
            assert!(running, "{svc} of {} not running", c.project);
            // The worker alone was recreated, on its new pin; app and sidecar never stopped.
            if *svc == "worker" {
                assert_ne!(&id, bid, "the worker was not recreated");
                assert_eq!(image, worker2);
            } else {
                assert_eq!(&id, bid, "{svc} of {} was touched", c.project);
                assert_eq!(&image, bimage);
                let started = s.inspect(&c.container(svc))["State"]["StartedAt"].clone();
                assert_eq!(started, s.inspect(bid)["State"]["StartedAt"]);
            }
            // Its compose labels and project network (with the service's alias) are kept.
            assert_eq!(&labels, blabels, "{svc}");
            assert_eq!(&nets, bnets, "{svc}");
        }
    }
    // docker-compose still lists each project: the same containers but the worker's new one.
    for (c, ps) in [(&t1, &ps1), (&t2, &ps2)] {
        let now = c.ps();
        assert_eq!(now.len(), ps.len(), "{now:?}");
        assert!(now.contains(&s.inspect(&c.container("worker"))["Id"].as_str().unwrap().to_string()));
    }
    // The worker writes no data: nothing was stopped or copied.
    assert_eq!((tree(&t1.volume_dir("appdata")), tree(&t1.volume_dir("sidedata"))), data1);
    assert!(s.containers_named_like(".pre-rollout-").is_empty());
    // A second rollout finds every service on its pin.
    let again = s.slipway(&["rollout", "--json"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(again.report::<Rollout>().apps[0].tenants.is_empty(), "{}", again.stdout);
    // Rolled back (the canary alone): its worker is recreated on its prior image with its
    // labels and network; the other tenant keeps the new worker.
    let run = report.apps[0].run_id.clone().unwrap();
    let rb = s.slipway(&["rollback", "--run", &run, "--tenant", &t2.project]);
    assert_eq!(rb.code, 0, "{} {}", rb.stdout, rb.stderr);
    let (_, image, labels, nets, running) = looks(&s, &t2.container("worker"));
    let (_, bimage, blabels, bnets, _) = &before[3 + 2];
    assert_eq!((&image, &labels, &nets, running), (bimage, blabels, bnets, true));
    assert_eq!(image_now(&s, &t1.container("worker")), worker2);
    assert_eq!(t2.ps().len(), ps2.len());
}

fn image_now(s: &Sandbox, name: &str) -> String {
    s.inspect(name)["Config"]["Image"].as_str().unwrap().to_string()
}

/// The unhealthy fixture writes into /data before it fails its check.
#[test]
fn a_broken_app_digest_halts_at_the_canary_with_both_volumes_byte_identical_and_every_container_back() {
    let s = Sandbox::new();
    let img = images(&s);
    let (t1, t2) = (compose_tenant(&s, "t1", &img), compose_tenant(&s, "t2", &img));
    let broken = s.push_fixture_as("unhealthy", "app");
    let worker2 = s.push_fixture_as("v2", "worker");
    std::fs::create_dir_all(t1.volume_dir("appdata").join("db")).unwrap();
    std::fs::write(t1.volume_dir("appdata").join("db/records.txt"), "customer row\n".repeat(500)).unwrap();
    let looks_before: Vec<_> =
        [&t1, &t2].iter().flat_map(|c| ["app", "side", "worker"].map(|svc| looks(&s, &c.container(svc)))).collect();
    let (ps1, ps2) = (t1.ps(), t2.ps());
    let vols = |c: &Compose| (tree(&c.volume_dir("appdata")), tree(&c.volume_dir("sidedata")));
    let (v1, v2) = (vols(&t1), vols(&t2));
    // Both app and worker change: every writer stops, both volumes are copied.
    s.write_fleet(&stack_fleet(&s, &broken, &worker2, &img.side, ""));

    // The dry run names each changed service, what stops and which volumes are copied.
    let dry = s.slipway(&["rollout", "--dry-run"]);
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    for w in ["service app", "service worker", "stops: side, app, worker", "appdata", "sidedata"] {
        assert!(dry.stdout.contains(w), "missing {w:?} in {}", dry.stdout);
    }
    let out = s.slipway(&["rollout", "--json"]);
    assert_eq!(out.code, 3, "{} {}", out.stdout, out.stderr);
    let report: Rollout = out.report();
    let t = &report.apps[0].tenants;
    assert_eq!((t[0].tenant.as_str(), t[0].outcome.as_str()), (t1.project.as_str(), "restored"), "{}", out.stdout);
    assert_eq!(t[1].outcome, "not_reached");
    // Both volumes byte-identical, though the broken app wrote into its own.
    assert_eq!(vols(&t1), v1, "a volume of the canary was not put back");
    assert_eq!(vols(&t2), v2, "the tenant after the canary was touched");
    // Every container back: the same containers (ids), images, compose labels, project
    // network and aliases, running.
    for (n, c) in [&t1, &t2].iter().enumerate() {
        for (k, svc) in ["app", "side", "worker"].iter().enumerate() {
            assert_eq!(looks(&s, &c.container(svc)), looks_before[n * 3 + k], "{svc} of {}", c.project);
        }
    }
    let app_ip = compose_ip(&s, &t1, &t1.container("app"));
    assert!(s.http_get(&format!("http://{app_ip}:8080/api/health")).contains("v1"));
    assert_eq!((t1.ps(), t2.ps()), (ps1, ps2), "docker-compose ps lists another project than before");
    let mut leftovers = s.containers_named_like(".pre-rollout-");
    leftovers.extend(s.containers_named_like(".next-"));
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // What the broken version wrote is never deleted: swapped out, it is kept (beside the
    // volume's dir when the backup root is another filesystem) and the report says where.
    let detail = t[0].detail.clone().unwrap_or_default();
    assert!(detail.contains("kept in"), "{detail}");
    let side_copies = t2.volume_dir("sidedata").parent().unwrap().join(".slipway-rollout");
    assert!(!side_copies.exists(), "the tenant after the canary got a copy: {}", side_copies.display());
}

#[test]
fn a_stack_the_fleet_does_not_describe_is_refused_at_plan_time_naming_the_service_and_touched_nothing() {
    let s = Sandbox::new();
    let img = images(&s);
    let cache = format!(
        "  cache:\n    image: {}\n    labels: {{ slipway.test: \"{}\" }}\n    volumes: [ {{ type: tmpfs, target: /scratch }} ]\n",
        img.worker,
        s.id()
    );
    let t1 = compose_tenant_with(&s, "t1", &img, &cache, "");
    let worker2 = s.push_fixture_as("v2", "worker");
    let ids = t1.ps();
    let fleet = stack_fleet(&s, &img.app, &worker2, &img.side, "");
    let refused = |fleet: &str, words: &[&str]| {
        s.write_fleet(fleet);
        let out = s.slipway(&["rollout"]);
        assert_eq!(out.code, 2, "{} {}", out.stdout, out.stderr);
        for w in words {
            assert!(out.stderr.contains(w), "missing {w:?} in {}", out.stderr);
        }
        assert!(out.stderr.contains("nothing was touched"), "{}", out.stderr);
        assert_eq!(t1.ps(), ids, "a refused plan changed the project");
        assert_eq!(image_now(&s, &t1.container("worker")), img.worker);
    };
    // A container of a service fleet.toml does not declare.
    refused(&fleet, &["service \"cache\"", "[app.services.cache]", &t1.project]);
    // Declared, its tmpfs is neither data nor scratch.
    let with_cache = format!("{fleet}[app.services.cache]\nimage = \"{}\"\norder = 4\n", img.worker);
    refused(&with_cache, &["service cache", "tmpfs mount at /scratch", "scratch_mounts"]);
    // With the tmpfs declared scratch: a declared service the tenant lacks.
    let ok = format!(
        "{}[app.services.cache]\nimage = \"{}\"\norder = 4\n",
        stack_fleet(&s, &img.app, &worker2, &img.side, "scratch_mounts = [\"/scratch\"]"),
        img.worker
    );
    let with_db = format!("{ok}[app.services.db]\nimage = \"{}\"\norder = 0\n", img.worker);
    refused(&with_db, &["no container of service db", &t1.project]);
    // A service that mounts the data writable but says it writes none.
    refused(
        &ok.replace("writes = true\norder = 1\ndata = [\"/data\"]", "order = 1"),
        &["service side", "writes = false"],
    );
    // Without db, the same stack rolls.
    s.write_fleet(&ok);
    let out = s.slipway(&["rollout", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert_eq!(image_now(&s, &t1.container("worker")), worker2);
}

#[test]
fn a_stack_made_with_docker_run_and_coolify_labels_rolls_its_app_with_its_data_kept() {
    let s = Sandbox::new();
    let img = images(&s);
    let app2 = s.push_fixture_as("v2", "app");
    let tenant = format!("{}c1", s.id()).to_lowercase();
    let vol = format!("{tenant}-data");
    docker(&["volume", "create", "--label", &format!("slipway.test={}", s.id()), &vol]);
    /// Removed at the end with the containers using it (dropped before the sandbox is).
    struct Vol(String);
    impl Drop for Vol {
        fn drop(&mut self) {
            let users = Command::new("docker")
                .args(["ps", "-aq", "--filter", &format!("volume={}", self.0)])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            for id in users.split_whitespace() {
                let _ = Command::new("docker").args(["rm", "-f", id]).output();
            }
            let _ = Command::new("docker").args(["volume", "rm", "-f", &self.0]).output();
        }
    }
    let _vol = Vol(vol.clone());
    let run = |svc: &str, image: &str, mount: Option<&str>| {
        let name = format!("{tenant}-{svc}");
        let mut args: Vec<String> = ["run", "-d", "--name", &name, "--network", s.network(), "--network-alias", svc]
            .iter()
            .map(|x| x.to_string())
            .collect();
        for l in [
            format!("slipway.test={}", s.id()),
            "coolify.managed=true".to_string(),
            format!("coolify.resourceName={tenant}"),
            format!("coolify.service={svc}"),
        ] {
            args.extend(["--label".to_string(), l]);
        }
        if let Some(m) = mount {
            args.extend(["--volume".to_string(), m.to_string()]);
        }
        args.extend(["--restart".to_string(), "unless-stopped".to_string(), image.to_string()]);
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        docker(&a);
        name
    };
    let app = run("app", &img.app, Some(&format!("{vol}:/data")));
    let worker = run("worker", &img.worker, None);
    let dir = PathBuf::from(docker(&["volume", "inspect", "-f", "{{.Mountpoint}}", &vol]));
    std::fs::write(dir.join("records.txt"), "customer row\n".repeat(100)).unwrap();
    let worker_id = s.inspect(&worker)["Id"].clone();
    let fleet = format!(
        "[[app]]\nname = \"cool\"\nselect = \"coolify.managed=true\"\ntenant_from = \"label:coolify.resourceName\"\n\
         stop_timeout_s = 2\nhealth = {{ path = \"/api/health\", port = 8080, timeout_s = 15, service = \"app\" }}\n\
         [app.stack]\ngroup = \"coolify.resourceName\"\nservice_label = \"coolify.service\"\n\
         [app.services.app]\nimage = \"{app2}\"\nwrites = true\ndata = [\"/data\"]\n\
         [app.services.worker]\nimage = \"{}\"\norder = 1\n",
        img.worker
    )
    .replace("select = \"coolify.managed=true\"", &format!("select = \"slipway.test={}\"", s.id()));
    s.write_fleet(&fleet);
    let out = s.slipway(&["rollout", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert_eq!(out.report::<Rollout>().apps[0].tenants[0].outcome, "rolled", "{}", out.stdout);
    assert_eq!(image_now(&s, &app), app2);
    let labels = &s.inspect(&app)["Config"]["Labels"];
    assert_eq!(labels["coolify.resourceName"], tenant.as_str());
    assert_eq!(labels["coolify.service"], "app");
    assert_eq!(s.inspect(&worker)["Id"], worker_id, "the unchanged worker was touched");
    assert_eq!(std::fs::read_to_string(dir.join("records.txt")).unwrap(), "customer row\n".repeat(100));
    let ip = s.container_ip(&app);
    assert!(s.http_get(&format!("http://{ip}:8080/api/health")).contains("v2"));
    // The run kept the pre-rollout data: one archive per mount in the run's snapshot.
    let runs = s.slipway(&["runs", "--json"]).report::<Runs>().runs;
    let run_id = runs.iter().find(|r| r.job == "rollout").map(|r| r.id.clone()).unwrap();
    let archive = s.backups().join("rollout").join(&run_id).join(format!("{tenant}+0.tar.zst"));
    assert!(archive.is_file(), "{}", archive.display());
}

/// Kill slipway at `point` of the canary stack (app changed to the unhealthy fixture, which
/// writes into its volume; worker changed too), then `recover`: every container back, both
/// volumes byte-identical, compose lists the project as before, nothing left aside.
fn stack_killed_at(point: &str) {
    let s = Sandbox::new();
    let img = images(&s);
    let t1 = compose_tenant(&s, "t1", &img);
    let writer = s.push_fixture_as("writer", "app");
    let worker2 = s.push_fixture_as("v2", "worker");
    let vols = |c: &Compose| (tree(&c.volume_dir("appdata")), tree(&c.volume_dir("sidedata")));
    let before = vols(&t1);
    let looks_before: Vec<_> = ["app", "side", "worker"].map(|svc| looks(&s, &t1.container(svc))).to_vec();
    let ps = t1.ps();
    s.write_fleet(&stack_fleet(&s, &writer, &worker2, &img.side, ""));
    let out = s.slipway_env(&["rollout", "--json"], &[("SLIPWAY_TEST_CRASH_AT", point)]);
    assert!(
        out.stderr.contains(&format!("slipway test point reached: {point}")),
        "{point}: {} {}",
        out.stdout,
        out.stderr
    );
    assert_eq!(out.code, -1, "{point}: {}", out.stdout);
    let rec = s.slipway(&["recover", "--json"]);
    assert_eq!(rec.code, 0, "{point}: {} {}", rec.stdout, rec.stderr);
    assert_eq!(rec.report::<Recover>().runs.len(), 1, "{point}: {}", rec.stdout);
    let again = s.slipway(&["recover", "--json"]);
    assert_eq!(again.report::<Recover>().runs.len(), 0, "{point}");
    let after_gate =
        point == "after-health" || point.ends_with("cleanup") || point.ends_with("archive") || point.ends_with("soak");
    if after_gate {
        assert_eq!(image_now(&s, &t1.container("app")), writer, "{point}: a verified stack was not kept");
        assert_eq!(image_now(&s, &t1.container("worker")), worker2, "{point}");
    } else {
        assert_eq!(vols(&t1), before, "{point}: a volume was not put back");
        let now: Vec<_> = ["app", "side", "worker"].map(|svc| looks(&s, &t1.container(svc))).to_vec();
        assert_eq!(now, looks_before, "{point}: the stack is not back as it was");
        assert_eq!(t1.ps(), ps, "{point}: docker-compose ps lists another project");
    }
    for svc in ["app", "side", "worker"] {
        assert_eq!(s.inspect(&t1.container(svc))["State"]["Running"], true, "{point}: {svc} left stopped");
    }
    nothing_left_after_recover(&s, point);
}

/// After a kill at `point` and `recover`: no set-aside or staged container left, every run
/// finished.
pub(crate) fn nothing_left_after_recover(s: &Sandbox, point: &str) {
    let mut leftovers = s.containers_named_like(".pre-rollout-");
    leftovers.extend(s.containers_named_like(".next-"));
    assert!(leftovers.is_empty(), "{point}: {leftovers:?}");
    for r in s.slipway(&["runs", "--json"]).report::<Runs>().runs {
        assert!(r.finished_at.is_some(), "{point}: run {} left unfinished", r.id);
    }
}

#[test]
fn a_stack_rollout_killed_at_its_steps_is_undone_or_finished_by_recover() {
    use slipway_jobs::step::Step;
    // Every step a stack takes (one tenant: no soak; the copy path: no snapshot), before it
    // acts, halfway through the switch, and just after the health gate passed.
    let mut points: Vec<String> = Vec::new();
    for st in Step::ALL.into_iter().filter(|s| {
        !matches!(s, Step::Snapshot | Step::Soak) && !s.needs_database() && !s.needs_hook() && !s.needs_waves()
    }) {
        points.push(st.during().to_string());
        if let Some(h) = st.halfway() {
            points.push(h.to_string());
        }
    }
    points.push(Step::Health.after().to_string());
    for p in points {
        stack_killed_at(&p);
    }
}

/// SIGTERM once the new app has started (it wrote into its volume), then a kill at each step of
/// the stack's undo, then `recover`: the undo is finished from its journal, every container
/// back, both volumes byte-identical.
fn stack_undo_killed_at(point: &str) {
    let s = Sandbox::new();
    let img = images(&s);
    let t1 = compose_tenant(&s, "t1", &img);
    let writer = s.push_fixture_as("writer", "app");
    let vols = |c: &Compose| (tree(&c.volume_dir("appdata")), tree(&c.volume_dir("sidedata")));
    let before = vols(&t1);
    let looks_before: Vec<_> = ["app", "side", "worker"].map(|svc| looks(&s, &t1.container(svc))).to_vec();
    s.write_fleet(&stack_fleet(&s, &writer, &img.worker, &img.side, ""));
    let env = [("SLIPWAY_TEST_SIGNAL_AT", "after-start"), ("SLIPWAY_TEST_CRASH_AT", point)];
    let out = s.slipway_env(&["rollout", "--json"], &env);
    assert!(
        out.stderr.contains(&format!("slipway test point reached: {point}")),
        "{point}: {} {}",
        out.stdout,
        out.stderr
    );
    let rec = s.slipway(&["recover", "--json"]);
    assert_eq!(rec.code, 0, "{point}: {} {}", rec.stdout, rec.stderr);
    assert_eq!(rec.report::<Recover>().runs.len(), 1, "{point}: {}", rec.stdout);
    assert_eq!(vols(&t1), before, "{point}: a volume was not put back");
    let now: Vec<_> = ["app", "side", "worker"].map(|svc| looks(&s, &t1.container(svc))).to_vec();
    assert_eq!(now, looks_before, "{point}: the stack is not back as it was");
}

#[test]
fn a_stack_undo_killed_at_each_of_its_steps_is_finished_by_recover() {
    use slipway_jobs::step::UndoStep;
    // A stack's undo never recreates a prior container: it is renamed back.
    for u in UndoStep::ALL.into_iter().filter(|u| *u != UndoStep::RecreatePrior && !u.needs_database()) {
        stack_undo_killed_at(&u.during().to_string());
    }
}

#[test]
fn a_stack_rollout_sent_sigterm_after_its_start_is_undone_and_the_run_says_interrupted() {
    let s = Sandbox::new();
    let img = images(&s);
    let t1 = compose_tenant(&s, "t1", &img);
    let writer = s.push_fixture_as("writer", "app");
    let vols = |c: &Compose| (tree(&c.volume_dir("appdata")), tree(&c.volume_dir("sidedata")));
    let before = vols(&t1);
    let looks_before: Vec<_> = ["app", "side", "worker"].map(|svc| looks(&s, &t1.container(svc))).to_vec();
    s.write_fleet(&stack_fleet(&s, &writer, &img.worker, &img.side, ""));
    let out = s.slipway_env(&["rollout", "--json"], &[("SLIPWAY_TEST_SIGNAL_AT", "after-start")]);
    assert_eq!(out.code, 7, "{} {}", out.stdout, out.stderr);
    assert_eq!(out.report::<Rollout>().apps[0].tenants[0].outcome, "restored", "{}", out.stdout);
    assert_eq!(vols(&t1), before);
    let now: Vec<_> = ["app", "side", "worker"].map(|svc| looks(&s, &t1.container(svc))).to_vec();
    assert_eq!(now, looks_before);
    let runs = s.slipway(&["runs", "--json"]).report::<Runs>().runs;
    let rollout = runs.iter().find(|r| r.job == "rollout");
    assert_eq!(rollout.and_then(|r| r.outcome.as_deref()), Some("interrupted"), "{runs:?}");
}

/// On a host with a stack app beside a single-container app, `snapshot` takes both: the single
/// container's archive and the stack tenant's, one archive per volume in one manifest entry;
/// `status` names the stack app (whose health it does not report yet) instead of failing.
#[test]
fn snapshot_on_a_host_with_a_stack_app_takes_the_single_container_and_the_stack_tenant() {
    let s = Sandbox::new();
    let img = images(&s);
    let t1 = compose_tenant(&s, "t1", &img);
    let single = s.push_fixture_as("v1", "single");
    s.add_tenant("solo", &single);
    s.write_data("solo", "db/records.txt", "row\n");
    // The single-container app selects only its own container (the sandbox label alone would
    // select the stack's too).
    let solo = s
        .fleet_app(&single, "")
        .replace(&format!("select = \"slipway.test={}\"", s.id()), "select = \"app.managed=true\"");
    let stack = stack_fleet(&s, &img.app, &img.worker, &img.side, "");
    s.write_fleet(&format!("{solo}\n{stack}"));
    let out = s.slipway(&["snapshot", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let report: crate::support::reports::Snapshot = out.report();
    let of = |t: &str| report.archives.iter().find(|a| a.tenant.as_deref() == Some(t)).unwrap();
    assert_eq!(of("solo").outcome, "archived");
    assert_eq!(of(&t1.project).outcome, "archived", "{:?}", of(&t1.project));
    for n in 0..2 {
        assert!(report.dir.join(format!("tenants/{}+{n}.tar.zst", t1.project)).is_file());
    }
    // status reports both: the stack tenant with its snapshot and a row per service.
    let st = s.slipway(&["status", "--json"]);
    let j = st.json();
    let tenants: Vec<&serde_json::Value> =
        j["report"]["apps"].as_array().unwrap().iter().flat_map(|a| a["tenants"].as_array().unwrap()).collect();
    let of = |t: &str| *tenants.iter().find(|x| x["tenant"] == t).unwrap_or_else(|| panic!("{t}: {}", st.stdout));
    assert!(of(&t1.project)["snapshot_age_s"].is_i64(), "{}", st.stdout);
    assert_eq!(of(&t1.project)["services"].as_array().map(Vec::len), Some(3), "{}", st.stdout);
    assert!(of("solo")["snapshot_age_s"].is_i64() && of("solo").get("services").is_none(), "{}", st.stdout);
}

/// A compose healthcheck (the operator's, carried to the new container) gates the rollout: a
/// worker whose new version never turns `healthy` halts the run with the worker back, and one
/// that does is rolled; `reconcile` rolls a stack and does not retry a halted set of pins.
#[test]
fn a_compose_healthcheck_gates_a_changed_service_and_reconcile_does_not_retry_a_halted_stack() {
    let s = Sandbox::new();
    let img = images(&s);
    let check = "    healthcheck:\n      test: [ \"CMD\", \"/bin/busybox\", \"wget\", \"-q\", \"-O\", \"/dev/null\", \"http://127.0.0.1:8080/api/health\" ]\n      interval: 1s\n      timeout: 2s\n      retries: 2\n";
    let t1 = compose_tenant_with(&s, "t1", &img, "", check);
    let worker = t1.container("worker");
    let before = looks(&s, &worker);
    // The unhealthy fixture runs but answers 404: its HEALTHCHECK turns unhealthy.
    let sick = s.push_fixture_as("unhealthy", "worker");
    s.write_fleet(&stack_fleet(&s, &img.app, &sick, &img.side, ""));
    let out = s.slipway(&["reconcile", "--json"]);
    assert_eq!(out.code, 3, "{} {}", out.stdout, out.stderr);
    assert!(out.stdout.contains("HEALTHCHECK says unhealthy"), "{}", out.stdout);
    assert_eq!(looks(&s, &worker), before, "the worker is not back as it was");
    // The halted pins are not retried by the every-minute reconcile.
    let again = s.slipway(&["reconcile", "--json"]);
    assert_eq!(again.code, 0, "{} {}", again.stdout, again.stderr);
    assert!(again.stdout.contains("\"skipped_halted\""), "{}", again.stdout);
    assert_eq!(looks(&s, &worker).0, before.0, "a halted stack release was retried");
    // A healthy new worker passes the same check and is rolled.
    let well = s.push_fixture_as("v2", "worker");
    s.write_fleet(&stack_fleet(&s, &img.app, &well, &img.side, ""));
    let out = s.slipway(&["reconcile", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert_eq!(image_now(&s, &worker), well);
    assert_eq!(s.inspect(&worker)["State"]["Health"]["Status"], "healthy");
    assert_eq!(s.inspect(&worker)["Config"]["Healthcheck"]["Interval"], 1_000_000_000u64);
}

/// A signal once the canary stack passed its health gate (during its soak) finishes it on the
/// new version, as for a single container; the tenant after it is not reached.
#[test]
fn a_stack_canary_sent_sigterm_during_its_soak_is_kept_on_the_new_version() {
    let s = Sandbox::new();
    let img = images(&s);
    let (t1, t2) = (compose_tenant(&s, "t1", &img), compose_tenant(&s, "t2", &img));
    let app2 = s.push_fixture_as("v2", "app");
    s.write_fleet(&stack_fleet(&s, &app2, &img.worker, &img.side, "canary_soak_s = 2"));
    let out = s.slipway_env(&["rollout", "--json"], &[("SLIPWAY_TEST_SIGNAL_AT", "during-canary-soak")]);
    assert_eq!(out.code, 7, "{} {}", out.stdout, out.stderr);
    let report: Rollout = out.report();
    let t = &report.apps[0].tenants;
    assert_eq!((t[0].outcome.as_str(), t[1].outcome.as_str()), ("rolled", "not_reached"), "{}", out.stdout);
    assert_eq!(image_now(&s, &t1.container("app")), app2);
    assert_eq!(image_now(&s, &t2.container("app")), img.app);
    assert!(s.containers_named_like(".pre-rollout-").is_empty());
}
