//! Adopting a host of stacks (issue #26 item 4) and hostile stack paths: `init` proposes
//! `[app.stack]` and `[app.services]` from compose projects, `doctor` checks and `status`
//! reports stack tenants; odd or lying compose labels and volumes holding links, fifos and
//! devices never make slipway read or write outside a tenant's own mounts.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::stack::{docker, images, Compose, Images};
use crate::support::reports::{Doctor, Init, Snapshot};
use crate::support::{files_under, tree_hash, Sandbox};

/// `docker-compose up -d` a tenant like `stack::compose_tenant`'s, its app exposing 8080 (so
/// init can propose the health port) and depending on the sidecar.
fn compose_exposed(s: &Sandbox, tenant: &str, img: &Images) -> Compose {
    let project = format!("{}{tenant}", s.id()).to_lowercase();
    let file = s.root().join(format!("{tenant}.adopt.yml"));
    let id = s.id();
    let yaml = format!(
        r#"version: "3.7"
services:
  app:
    image: {app}
    labels: {{ slipway.test: "{id}" }}
    volumes: [ "appdata:/data" ]
    expose: [ "8080" ]
    restart: unless-stopped
    depends_on: [ side ]
  worker:
    image: {worker}
    labels: {{ slipway.test: "{id}" }}
    restart: unless-stopped
  side:
    image: {side}
    labels: {{ slipway.test: "{id}" }}
    volumes: [ "sidedata:/data" ]
    restart: unless-stopped
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

/// Named volumes made by a test, removed (with the containers using them) at the end.
struct Vols(Vec<String>);
impl Drop for Vols {
    fn drop(&mut self) {
        for v in &self.0 {
            let users = Command::new("docker")
                .args(["ps", "-aq", "--filter", &format!("volume={v}")])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            for id in users.split_whitespace() {
                let _ = Command::new("docker").args(["rm", "-f", id]).output();
            }
            let _ = Command::new("docker").args(["volume", "rm", "-f", v]).output();
        }
    }
}

/// A stack made through the API with compose's labels (as Coolify and other tools make them):
/// `project`'s services, each `(service label, image, volume at /data)`; the containers get
/// plain names of the test's own, whatever the labels say.
fn api_stack(s: &Sandbox, n: usize, project: &str, services: &[(&str, &str, Option<&str>)]) -> Vec<String> {
    let mut names = Vec::new();
    for (i, (svc, image, vol)) in services.iter().enumerate() {
        let name = format!("{}-p{n}-s{i}", s.id());
        let mut args: Vec<String> =
            ["run", "-d", "--name", &name, "--network", s.network()].iter().map(|x| x.to_string()).collect();
        for l in [
            format!("slipway.test={}", s.id()),
            format!("com.docker.compose.project={project}"),
            format!("com.docker.compose.service={svc}"),
        ] {
            args.extend(["--label".to_string(), l]);
        }
        if let Some(v) = vol {
            args.extend(["--volume".to_string(), format!("{v}:/data")]);
        }
        args.push(image.to_string());
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        docker(&a);
        names.push(name);
    }
    names
}

fn volume_dir(name: &str) -> PathBuf {
    PathBuf::from(docker(&["volume", "inspect", "-f", "{{.Mountpoint}}", name]))
}

fn init(s: &Sandbox) -> Init {
    let dir = s.root().join(format!("init-{}", files_under(s.root()).len()));
    let out = s.slipway(&[
        "init",
        "--dir",
        dir.to_str().unwrap(),
        "--only",
        &format!("slipway.test={}", s.id()),
        "--dry-run",
        "--json",
    ]);
    assert!(out.code == 0 || out.code == 1, "{}\n{}", out.stdout, out.stderr);
    out.report()
}

fn reason_of(r: &Init, container: &str) -> String {
    r.skipped
        .iter()
        .find(|x| x.container == container)
        .unwrap_or_else(|| panic!("{container} not skipped: {:?}", r.skipped))
        .reason
        .clone()
}

/// A file name under `root` that none of the odd names may have made.
fn made_by(root: &Path, needles: &[&str]) -> Vec<PathBuf> {
    files_under(root).into_iter().filter(|p| needles.iter().any(|n| p.to_string_lossy().contains(n))).collect()
}

#[test]
fn odd_compose_project_and_service_names_are_adopted_when_valid_and_refused_by_name_otherwise() {
    let s = Sandbox::new();
    let img = images(&s);
    let id = s.id().to_lowercase();
    let good = format!("1st.{id}_x-y");
    let long = format!("{id}{}", "a".repeat(80));
    let bad = [
        format!("../../{id}-escape"),
        format!("-rf{id}"),
        format!(".{id}hidden"),
        long.clone(),
        format!("--config={id}"),
    ];
    let mut vols = Vols(Vec::new());
    let mut all = Vec::new();
    let good_vol = format!("{id}-good-data");
    vols.0.push(good_vol.clone());
    let good_names = api_stack(&s, 0, &good, &[("app", &img.app, Some(&good_vol)), ("worker", &img.worker, None)]);
    std::fs::write(volume_dir(&good_vol).join("rows"), "good rows\n").unwrap();
    for (i, p) in bad.iter().enumerate() {
        let v = format!("{id}-bad{i}-data");
        vols.0.push(v.clone());
        all.push((p.clone(), api_stack(&s, i + 1, p, &[("app", &img.app, Some(&v)), ("worker", &img.worker, None)])));
    }
    // A valid project whose service labels look like a path and an option.
    let svc_vol = format!("{id}-svc-data");
    vols.0.push(svc_vol.clone());
    let odd_svc = format!("{id}svc");
    let svc_names = api_stack(&s, 9, &odd_svc, &[("../../x", &img.app, Some(&svc_vol)), ("-v", &img.worker, None)]);

    let r = init(&s);
    let app = r
        .apps
        .iter()
        .find(|a| a.tenants.iter().any(|t| t.tenant == good))
        .unwrap_or_else(|| panic!("the project {good} was not proposed: {:?} skipped {:?}", r.apps, r.skipped));
    assert_eq!(app.tenants.len(), 1, "{:?}", app.tenants);
    for (p, names) in &all {
        for n in names {
            let why = reason_of(&r, n);
            assert!(why.contains("tenant id") && why.contains(&format!("{p:?}")), "{p}: {why}");
        }
    }
    for n in &svc_names {
        let why = reason_of(&r, n);
        assert!(why.contains("service") && (why.contains("\"../../x\"") || why.contains("\"-v\"")), "{why}");
    }
    // What init proposes loads, and the valid odd tenant is snapshotted under its own name.
    s.write_fleet(&r.fleet.text);
    let check = s.slipway(&["config", "check"]);
    assert_eq!(check.code, 0, "{}\n{}\n{}", check.stdout, check.stderr, r.fleet.text);
    let out = s.slipway(&["snapshot", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let snap: Snapshot = out.report();
    let a = snap.archives.iter().find(|a| a.tenant.as_deref() == Some(good.as_str())).unwrap();
    assert_eq!(a.outcome, "archived", "{a:?}");
    assert!(snap.archives.iter().all(|a| a.tenant.as_deref() == Some(good.as_str())), "{snap:?}");
    assert!(good_names.iter().all(|n| s.inspect(n)["State"]["Running"] == true));
    // No odd name became a path anywhere: not in the backups, not beside them.
    let many_a = "a".repeat(20);
    let odd = ["escape", "hidden", "-rf", "--config", &many_a, "../"];
    assert!(made_by(s.root(), &odd).is_empty(), "{:?}", made_by(s.root(), &odd));
    for p in &bad {
        let out = s.slipway(&["restore", "--latest", "--tenant", p]);
        assert_eq!(out.code, 2, "{p}: {} {}", out.stdout, out.stderr);
    }
    assert!(made_by(s.root(), &odd).is_empty(), "{:?}", made_by(s.root(), &odd));
    drop(vols);
}

#[test]
fn a_container_claiming_another_tenants_compose_project_is_never_taken_for_it() {
    let s = Sandbox::new();
    let img = images(&s);
    let (t1, t2) = (compose_exposed(&s, "t1", &img), compose_exposed(&s, "t2", &img));
    // A host dir with a secret, bind-mounted into a container that claims to be t1's sidecar.
    let host = s.root().join("host-secret");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("secret.txt"), "host secret, never archived\n").unwrap();
    let host_before = tree_hash(&host);
    let impostor = format!("{}-impostor", s.id());
    docker(&[
        "run",
        "-d",
        "--name",
        &impostor,
        "--label",
        &format!("slipway.test={}", s.id()),
        "--label",
        &format!("com.docker.compose.project={}", t1.project),
        "--label",
        "com.docker.compose.service=side",
        "--volume",
        &format!("{}:/data", host.display()),
        &img.side,
    ]);
    let started = s.inspect(&impostor)["State"]["StartedAt"].clone();

    // init proposes t2 alone and names the impostor beside t1's own sidecar.
    let r = init(&s);
    assert_eq!(r.apps.len(), 1, "{:?} skipped {:?}", r.apps, r.skipped);
    let tenants: Vec<&str> = r.apps[0].tenants.iter().map(|t| t.tenant.as_str()).collect();
    assert_eq!(tenants, [t2.project.as_str()]);
    let why = reason_of(&r, &impostor);
    assert!(why.contains(&t1.container("side")) && why.contains("several containers"), "{why}");

    // With the fleet as proposed, its select widened to both projects: t1 is refused naming
    // both, t2 is archived, the secret nowhere.
    let select = format!("select = \"slipway.test={}\"", s.id());
    let text: Vec<String> =
        r.fleet.text.lines().map(|l| if l.starts_with("select = ") { select.clone() } else { l.to_string() }).collect();
    s.write_fleet(&(text.join("\n") + "\n"));
    let out = s.slipway(&["snapshot", "--json"]);
    assert_eq!(out.code, 1, "{} {}", out.stdout, out.stderr);
    let snap: Snapshot = out.report();
    let row = |t: &str| snap.archives.iter().find(|a| a.tenant.as_deref() == Some(t));
    let t1_row = row(&t1.project).unwrap_or_else(|| panic!("{snap:?}"));
    assert_eq!(t1_row.outcome, "failed");
    assert!(t1_row.detail.as_deref().unwrap_or_default().contains(&impostor), "{t1_row:?}");
    assert_eq!(row(&t2.project).unwrap().outcome, "archived");
    for f in files_under(&s.backups()).iter().filter(|f| f.is_file()) {
        let b = std::fs::read(f).unwrap();
        assert!(!String::from_utf8_lossy(&b).contains("host secret"), "{} holds the host's file", f.display());
    }
    let roll = s.slipway(&["rollout", "--dry-run", "--json"]);
    assert_eq!(roll.code, 2, "{} {}", roll.stdout, roll.stderr);
    assert!(roll.stderr.contains(&impostor), "{}", roll.stderr);
    // doctor names it too; the impostor and the host dir were only looked at.
    let d = s.slipway(&["doctor", "--json"]);
    let doc: Doctor = d.report();
    let line = doc.checks.iter().find(|c| c.check == "stack" && c.detail.contains(&impostor));
    assert!(line.is_some_and(|l| l.level == "fail"), "{:?}", doc.checks);
    assert_eq!(s.inspect(&impostor)["State"]["StartedAt"], started);
    assert_eq!(tree_hash(&host), host_before);
}

#[test]
fn a_volume_holding_a_hard_link_into_another_tenant_a_fifo_and_a_device_is_backed_up_without_touching_them() {
    let s = Sandbox::new();
    let img = images(&s);
    let (t1, t2) = (compose_exposed(&s, "t1", &img), compose_exposed(&s, "t2", &img));
    let (v1, v2) = (t1.volume_dir("appdata"), t2.volume_dir("appdata"));
    std::fs::write(v2.join("secret"), "t2's customer rows\n").unwrap();
    // t1's volume: a hard link to t2's file (the same filesystem), a fifo, a device node.
    std::fs::hard_link(v2.join("secret"), v1.join("h")).unwrap();
    let ok = |c: &mut Command| assert!(c.status().unwrap().success(), "{c:?}");
    ok(Command::new("mkfifo").arg(v1.join("fifo")));
    ok(Command::new("mknod").arg(v1.join("mem")).args(["c", "1", "1"]));
    let t2_before = tree_hash(&v2);
    let r = init(&s);
    assert_eq!(r.apps.len(), 1, "{:?}", r.skipped);
    s.write_fleet(&r.fleet.text);
    let out = s.slipway(&["snapshot", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);

    // The restore writes t1's mount only: t2's file keeps its bytes whatever t1 does next.
    let out = s.slipway(&["restore", "--latest", "--tenant", &t1.project]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert_eq!(std::fs::read_to_string(v1.join("h")).unwrap(), "t2's customer rows\n");
    std::fs::write(v1.join("h"), "t1 writes its own copy\n").unwrap();
    assert_eq!(tree_hash(&v2), t2_before, "t1's restore left a link into t2's volume");
    for special in ["fifo", "mem"] {
        assert!(std::fs::symlink_metadata(v1.join(special)).is_err(), "{special} was restored");
    }
    let out = s.slipway(&["drill", "--tenant", &t1.project, "--latest", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert_eq!(tree_hash(&v2), t2_before);
}

#[test]
fn a_volume_whose_data_dir_is_a_symlink_is_refused_by_init_doctor_restore_and_drill_and_never_followed() {
    let s = Sandbox::new();
    let img = images(&s);
    let (t1, t2) = (compose_exposed(&s, "t1", &img), compose_exposed(&s, "t2", &img));
    let r = init(&s);
    assert_eq!(r.apps.len(), 1, "{:?}", r.skipped);
    s.write_fleet(&r.fleet.text);
    let snap = s.slipway(&["snapshot"]);
    assert_eq!(snap.code, 0, "{} {}", snap.stdout, snap.stderr);
    // t1's sidecar volume's `_data` swapped for a symlink to a host dir.
    let host = s.root().join("host-dir");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("passwd"), "root:x:0:0\n").unwrap();
    let host_before = tree_hash(&host);
    let side = t1.volume_dir("sidedata");
    let real = side.with_file_name("_data.real");
    std::fs::rename(&side, &real).unwrap();
    std::os::unix::fs::symlink(&host, &side).unwrap();
    struct Back(PathBuf, PathBuf);
    impl Drop for Back {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
            let _ = std::fs::rename(&self.1, &self.0);
        }
    }
    let _back = Back(side.clone(), real);

    let r = init(&s);
    let why = reason_of(&r, &t1.container("side"));
    assert!(why.contains("symlink") && why.contains("sidedata"), "{why}");
    let tenants: Vec<&str> = r.apps.iter().flat_map(|a| a.tenants.iter().map(|t| t.tenant.as_str())).collect();
    assert_eq!(tenants, [t2.project.as_str()]);
    let d = s.slipway(&["doctor", "--json"]);
    let doc: Doctor = d.report();
    let line = doc.checks.iter().find(|c| c.check == "stack" && c.detail.contains(&t1.project));
    assert!(line.is_some_and(|l| l.level == "fail" && l.detail.contains("symlink")), "{:?}", doc.checks);
    // Nor a restore or a drill of t1: refused naming the symlink, nothing written through it.
    let out = s.slipway(&["restore", "--latest", "--tenant", &t1.project]);
    assert_eq!(out.code, 2, "{} {}", out.stdout, out.stderr);
    assert!(format!("{}{}", out.stdout, out.stderr).contains("symlink"), "{} {}", out.stdout, out.stderr);
    let out = s.slipway(&["drill", "--tenant", &t1.project, "--latest"]);
    assert_ne!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert!(format!("{}{}", out.stdout, out.stderr).contains("symlink"), "{} {}", out.stdout, out.stderr);
    assert!(s.containers_named_like("drill").is_empty(), "{:?}", s.containers_named_like("drill"));
    assert_eq!(tree_hash(&host), host_before, "init, doctor, restore or drill wrote through the symlink");
}

#[test]
fn a_host_of_compose_projects_is_adopted_by_init_then_checked_snapshotted_planned_and_reported() {
    let s = Sandbox::new();
    let img = images(&s);
    let (t1, t2) = (compose_exposed(&s, "t1", &img), compose_exposed(&s, "t2", &img));
    std::fs::write(t1.volume_dir("appdata").join("rows"), "t1 rows\n").unwrap();
    let started: Vec<_> =
        ["app", "side", "worker"].map(|x| s.inspect(&t1.container(x))["State"]["StartedAt"].clone()).to_vec();

    let r = init(&s);
    assert_eq!(r.apps.len(), 1, "{:?} skipped {:?}", r.apps, r.skipped);
    let text = &r.fleet.text;
    for want in [
        "[app.stack]",
        "group = \"com.docker.compose.project\"",
        "[app.services.app]",
        "[app.services.side]",
        "[app.services.worker]",
        &format!("image = \"{}\"", img.app),
        &format!("image = \"{}\"", img.worker),
        "data = [\"/data\"]",
        "service = \"app\"",
        "port = 8080",
    ] {
        assert!(text.contains(want), "missing {want} in:\n{text}");
    }
    let tenants: Vec<&str> = r.apps[0].tenants.iter().map(|t| t.tenant.as_str()).collect();
    assert_eq!(tenants, [t1.project.as_str(), t2.project.as_str()]);
    let fleet = slipway_jobs::config::Fleet::parse(text, "fleet.toml").unwrap();
    let stack = fleet.apps[0].stack.clone().unwrap();
    let writers: Vec<(&str, bool)> = stack.services.iter().map(|s| (s.name.as_str(), s.writes)).collect();
    assert_eq!(writers, [("app", true), ("side", true), ("worker", false)]);

    // As proposed, with no edit: config check, the plan, a snapshot, doctor, status.
    s.write_fleet(text);
    let check = s.slipway(&["config", "check"]);
    assert_eq!(check.code, 0, "{}\n{}", check.stdout, check.stderr);
    let plan = s.slipway(&["rollout", "--dry-run", "--json"]);
    assert_eq!(plan.code, 0, "{} {}", plan.stdout, plan.stderr);
    let out = s.slipway(&["snapshot", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let snap: Snapshot = out.report();
    assert_eq!(snap.archives.iter().filter(|a| a.outcome == "archived").count(), 2, "{snap:?}");
    let d = s.slipway(&["doctor", "--json"]);
    let doc: Doctor = d.report();
    let line = doc.checks.iter().find(|c| c.check == "stack").unwrap_or_else(|| panic!("{:?}", doc.checks));
    assert_eq!(line.level, "ok", "{line:?}");
    // The free space is weighed against the stack tenants' mounts (t1's holds the most).
    let space = doc.checks.iter().find(|c| c.check == "free_space").unwrap();
    assert!(space.detail.contains(&format!("the largest tenant, {} of app", t1.project)), "{space:?}");
    let st = s.slipway(&["status", "--json"]);
    let j = st.json();
    let ts = j["report"]["apps"][0]["tenants"].as_array().unwrap_or_else(|| panic!("{}", st.stdout)).clone();
    assert_eq!(ts.len(), 2, "{}", st.stdout);
    for t in &ts {
        assert_eq!(t["up_to_date"], true, "{t}");
        assert!(t["snapshot_age_s"].as_i64().is_some_and(|a| a < 600), "{t}");
        let mut svcs: Vec<(&str, &str, bool)> = t["services"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| (x["service"].as_str().unwrap(), x["state"].as_str().unwrap(), x["up_to_date"] == true))
            .collect();
        svcs.sort();
        assert_eq!(svcs, [("app", "running", true), ("side", "running", true), ("worker", "running", true)], "{t}");
    }
    assert!(!j["report"]["attention"].to_string().contains("a stack ([app.services]); status does not"), "{j}");
    let now: Vec<_> =
        ["app", "side", "worker"].map(|x| s.inspect(&t1.container(x))["State"]["StartedAt"].clone()).to_vec();
    assert_eq!(now, started, "init, doctor or status restarted a container");
}
