//! `slipway rollback --run RUN` of a stack tenant's rollout (issue #26): compose-made tenants
//! (tests/stack.rs's helpers) rolled to a new app that writes into its volume and a new worker,
//! the run finished (prior containers removed, each volume's copy archived), then rolled back:
//! both volumes byte-identical to before the rollout, every container on its prior image with
//! its compose labels, project network and aliases, `docker-compose ps` listing the project as
//! before. A stack recreated by hand since is skipped; a rollback killed at each of its steps is
//! finished by `recover`.

use crate::stack::{compose_tenant, images, looks, nothing_left_after_recover, stack_fleet, tree, Compose};
use crate::support::reports::{Recover, Rollback, Rollout};
use crate::support::Sandbox;

/// What an operator compares of a stack's container after a rollback: image, compose labels,
/// networks with aliases, running (not the id: the run removed the prior containers, so they
/// are recreated).
type Looks = (String, std::collections::BTreeMap<String, String>, Vec<String>, bool);

fn stack_looks(s: &Sandbox, c: &Compose) -> Vec<Looks> {
    ["app", "side", "worker"]
        .map(|svc| {
            let (_, image, labels, nets, running) = looks(s, &c.container(svc));
            (image, labels, nets, running)
        })
        .to_vec()
}

fn vols(c: &Compose) -> (String, String) {
    (tree(&c.volume_dir("appdata")), tree(&c.volume_dir("sidedata")))
}

/// One compose tenant rolled to the writer app (it writes into its volume at start) and a new
/// worker; the run finished. Returns the tenant, the run id, and what the stack and its
/// volumes looked like before.
fn rolled(s: &Sandbox) -> (Compose, String, Vec<Looks>, (String, String), usize) {
    let img = images(s);
    let t1 = compose_tenant(s, "t1", &img);
    std::fs::create_dir_all(t1.volume_dir("appdata").join("db")).unwrap();
    std::fs::write(t1.volume_dir("appdata").join("db/records.txt"), "customer row\n".repeat(300)).unwrap();
    let writer = s.push_fixture_as("writer", "app");
    let worker2 = s.push_fixture_as("v2", "worker");
    let before = (stack_looks(s, &t1), vols(&t1), t1.ps().len());
    s.write_fleet(&stack_fleet(s, &writer, &worker2, &img.side, ""));
    let out = s.slipway(&["rollout", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let report: Rollout = out.report();
    assert_eq!(report.apps[0].tenants[0].outcome, "rolled", "{}", out.stdout);
    assert_ne!(vols(&t1).0, before.1 .0, "the writer app wrote nothing: the test would prove nothing");
    assert!(s.containers_named_like(".pre-rollout-").is_empty(), "the run kept its prior containers");
    let run = report.apps[0].run_id.clone().unwrap();
    (t1, run, before.0, before.1, before.2)
}

#[test]
fn a_finished_stack_rollout_rolled_back_has_both_volumes_and_every_container_as_before() {
    let s = Sandbox::new();
    let (t1, run, looks_before, vols_before, ps_len) = rolled(&s);
    let side_id = s.inspect(&t1.container("side"))["Id"].clone();
    let after_rollout = vols(&t1);

    // The dry run names each changed service and each volume, and touches nothing.
    let dry = s.slipway(&["rollback", "--run", &run, "--dry-run"]);
    assert_eq!(dry.code, 0, "{} {}", dry.stdout, dry.stderr);
    for w in ["service app", "service worker", "appdata", "sidedata", "recreated from"] {
        assert!(dry.stdout.contains(w), "missing {w:?} in {}", dry.stdout);
    }
    assert_eq!(vols(&t1), after_rollout, "the dry run changed a volume");
    assert_ne!(stack_looks(&s, &t1), looks_before, "the dry run rolled back");

    let out = s.slipway(&["rollback", "--run", &run, "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let rb: Rollback = out.report();
    assert_eq!(rb.tenants.len(), 1, "{}", out.stdout);
    assert_eq!(rb.tenants[0].skipped, None, "{}", out.stdout);
    // Both volumes byte-identical to before the rollout; every container back on its prior
    // image with its compose labels, project network and aliases, running.
    assert_eq!(vols(&t1), vols_before, "a volume is not as it was before the rollout");
    assert_eq!(stack_looks(&s, &t1), looks_before, "the stack is not back as it was");
    // The unchanged sidecar is the very same container (stopped while its volume went back).
    assert_eq!(s.inspect(&t1.container("side"))["Id"], side_id);
    let app_ip = crate::stack::compose_ip(&s, &t1, &t1.container("app"));
    assert!(s.http_get(&format!("http://{app_ip}:8080/api/health")).contains("v1"));
    // docker-compose lists the project's three containers, the ones that run now.
    let ps = t1.ps();
    assert_eq!(ps.len(), ps_len, "{ps:?}");
    for svc in ["app", "side", "worker"] {
        let id = s.inspect(&t1.container(svc))["Id"].as_str().unwrap().to_string();
        assert!(ps.contains(&id), "{svc} {id} not in docker-compose ps {ps:?}");
    }
    // What the new version wrote is kept, not deleted.
    assert!(out.stdout.contains("kept in"), "{}", out.stdout);
    let mut leftovers = s.containers_named_like(".pre-rollout-");
    leftovers.extend(s.containers_named_like(".next-"));
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // Kept under the backup root's replaced/ dir, or beside the volume's dir when the backup
    // root is another filesystem: the writer's file is there.
    let beside = t1.volume_dir("appdata").parent().unwrap().join(".slipway-rollout");
    let kept = [s.backups().join("replaced"), beside].iter().any(|d| holds_writers_file(d));
    assert!(kept, "what the new app wrote is not kept: {}", out.stdout);
    // Rolled back once: a second rollback finds the prior containers and skips the stack.
    let again = s.slipway(&["rollback", "--run", &run, "--tenant", &t1.project, "--json"]);
    assert_eq!(again.code, 0, "{} {}", again.stdout, again.stderr);
    let skipped = again.report::<Rollback>().tenants[0].skipped.clone().unwrap_or_default();
    assert!(skipped.contains("prior image already"), "{skipped}");
    assert_eq!(vols(&t1), vols_before);
}

/// Whether a file the writer fixture writes lies anywhere under `dir`.
fn holds_writers_file(dir: &std::path::Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else { return false };
    entries.flatten().any(|e| {
        let p = e.path();
        e.file_name().to_string_lossy().starts_with("written-by-writer") || (p.is_dir() && holds_writers_file(&p))
    })
}

#[test]
fn a_stack_recreated_by_hand_since_the_rollout_is_skipped_by_rollback_and_not_touched() {
    let s = Sandbox::new();
    let (t1, run, _, _, _) = rolled(&s);
    // The operator's `docker-compose up -d --force-recreate` since: new containers (the compose
    // file's images), not the run's.
    t1.run(&["up", "-d", "--force-recreate"]);
    let ids: Vec<_> = ["app", "side", "worker"].map(|svc| s.inspect(&t1.container(svc))["Id"].clone()).to_vec();
    let data = vols(&t1);
    let out = s.slipway(&["rollback", "--run", &run, "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let rb: Rollback = out.report();
    let why = rb.tenants[0].skipped.clone().unwrap_or_default();
    assert!(why.contains("not") && why.contains(&run), "{why}");
    let now: Vec<_> = ["app", "side", "worker"].map(|svc| s.inspect(&t1.container(svc))["Id"].clone()).to_vec();
    assert_eq!(now, ids, "a stack recreated by hand was touched");
    assert_eq!(vols(&t1), data, "a volume of a skipped stack changed");
}

/// Kill the rollback at `point`, then `recover`: the rollback is finished from its journal.
fn rollback_killed_at(point: &str) {
    let s = Sandbox::new();
    let (t1, run, looks_before, vols_before, _) = rolled(&s);
    s.slipway_killed_at(&["rollback", "--run", &run, "--json"], point);
    let rec = s.slipway(&["recover", "--json"]);
    assert_eq!(rec.code, 0, "{point}: {} {}", rec.stdout, rec.stderr);
    assert_eq!(rec.report::<Recover>().runs.len(), 1, "{point}: {}", rec.stdout);
    assert_eq!(s.slipway(&["recover", "--json"]).report::<Recover>().runs.len(), 0, "{point}");
    assert_eq!(vols(&t1), vols_before, "{point}: a volume was not put back");
    assert_eq!(stack_looks(&s, &t1), looks_before, "{point}: the stack is not back as it was");
    nothing_left_after_recover(&s, point);
}

#[test]
fn a_stack_rollback_killed_at_each_of_its_steps_is_finished_by_recover() {
    use slipway_jobs::step::UndoStep;
    let mut points: Vec<String> =
        UndoStep::ALL.into_iter().filter(|u| !u.needs_database()).map(|u| u.during().to_string()).collect();
    // Once the prior containers are recreated and the copies extracted (journaled), and once
    // every volume is swapped back.
    points.push(UndoStep::RecreatePrior.after().to_string());
    points.push(UndoStep::Restore.after().to_string());
    for p in points {
        rollback_killed_at(&p);
    }
}

/// A hostile new version, before the rollback: its volume's tree turned into symlinks that
/// point out of the volume (at a host dir with a canary file). The rollback exchanges whole
/// dirs and keeps what it replaces by renames: it follows none of them, the host dir is left
/// as it was, and the volume is byte-identical to before the rollout.
#[test]
fn a_rollback_never_follows_the_symlinks_a_hostile_new_version_left_in_its_volume() {
    let s = Sandbox::new();
    let (t1, run, looks_before, vols_before, _) = rolled(&s);
    let host = s.root().join("host-dir");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("canary"), "host file").unwrap();
    let host_before = tree(&host);
    let app_vol = t1.volume_dir("appdata");
    std::fs::remove_dir_all(app_vol.join("db")).unwrap();
    std::os::unix::fs::symlink(&host, app_vol.join("db")).unwrap();
    std::os::unix::fs::symlink(host.join("canary"), app_vol.join("records.txt")).unwrap();
    std::os::unix::fs::symlink("/", app_vol.join("root")).unwrap();

    let out = s.slipway(&["rollback", "--run", &run, "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert_eq!(tree(&host), host_before, "the rollback wrote through a tenant's symlink");
    assert_eq!(std::fs::read_to_string(host.join("canary")).unwrap(), "host file");
    assert_eq!(vols(&t1), vols_before, "a volume is not as it was before the rollout");
    assert_eq!(stack_looks(&s, &t1), looks_before);
}
