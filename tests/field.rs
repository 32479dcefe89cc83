//! What operators met in the field (issue 25): a rollback whose pre-rollout data is gone, a
//! tenant started with `docker run --rm`, a prior image tag moved since the rollout, a tenant
//! that vanishes before its turn, a new image that adds a `VOLUME`, and a prior container that
//! something else starts again while slipway has it stopped. Each test checks what an operator
//! checks: the tenant's container (id, running, image, labels), its data byte for byte, the
//! exit code.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::reports::Rollout;
use crate::support::{tree_hash, Env, Sandbox};

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().unwrap();
    assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// What an operator looks at to tell a tenant was not touched: its container's id, whether
/// it runs, its image and its data.
#[derive(Debug, PartialEq)]
struct Seen {
    id: String,
    running: bool,
    image: String,
    data: String,
}

fn seen(s: &Sandbox, name: &str, tenant: &str) -> Seen {
    let i = s.inspect(name);
    Seen {
        id: i["Id"].as_str().unwrap().to_string(),
        running: i["State"]["Running"] == true,
        image: i["Image"].as_str().unwrap().to_string(),
        data: tree_hash(&s.data_dir(tenant)),
    }
}

/// A finished rollout of tenant t1 from v1 to the writer fixture (which changes its data);
/// returns (container name, run id).
fn rolled_to_writer(s: &Sandbox) -> (String, String) {
    let v1 = s.push_fixture_as("v1", "app");
    let writer = s.push_fixture_as("writer", "app");
    let name = s.add_tenant("t1", &v1);
    s.write_data("t1", "db/records.txt", "precious\n");
    s.write_fleet(&s.fleet_app(&writer, ""));
    let out = s.slipway(&["rollout", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    (name, out.run_id())
}

/// The rollback refusal: exit 1, an error naming the tenant and saying nothing was touched,
/// and the tenant exactly as it was.
fn assert_rollback_refused(s: &Sandbox, name: &str, run: &str, before: &Seen, words: &[&str]) {
    let rb = s.slipway(&["rollback", "--run", run, "--json"]);
    assert_eq!(rb.code, 1, "{} {}", rb.stdout, rb.stderr);
    let env = rb.envelope::<serde::de::IgnoredAny>();
    let error = env.error.unwrap_or_default();
    for w in ["tenant t1", "nothing was touched"].iter().chain(words) {
        assert!(error.contains(w), "the refusal does not say {w:?}: {error}");
    }
    assert_eq!(&seen(s, name, "t1"), before, "a refused rollback touched the tenant");
    assert!(s.containers_named_like(".pre-rollout-").is_empty(), "a refused rollback recreated the prior container");
}

#[test]
fn rollback_of_a_run_whose_archive_is_damaged_or_pruned_is_refused_and_touches_nothing() {
    let s = Sandbox::new();
    let (name, run) = rolled_to_writer(&s);
    let before = seen(&s, &name, "t1");
    let archive = s.backups().join("rollout").join(&run).join("t1.tar.zst");
    assert!(archive.is_file(), "the run archived the copy at {}", archive.display());
    // Damaged: one byte changed; its sha256 no longer matches the run's manifest.
    let mut bytes = std::fs::read(&archive).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&archive, &bytes).unwrap();
    assert_rollback_refused(&s, &name, &run, &before, &["sha256"]);
    // Pruned: the run's snapshot dir is gone.
    std::fs::remove_dir_all(s.backups().join("rollout").join(&run)).unwrap();
    assert_rollback_refused(&s, &name, &run, &before, &[&archive.display().to_string()]);
}

/// The archive of the rollout copy failed, so the copy was kept; the operator removed it by
/// hand, as `status` says to once it is not needed. A rollback has no pre-rollout data left:
/// starting the old version on the new version's data and calling that a success is what it
/// must never do.
#[test]
fn rollback_after_the_kept_copy_was_removed_by_hand_is_refused_and_touches_nothing() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let writer = s.push_fixture_as("writer", "app");
    let name = s.add_tenant("t1", &v1);
    std::fs::write(s.data_dir("t1").join("noise.bin"), crate::support::noise(3 << 20, 0x9e3779b97f4a7c15)).unwrap();
    s.write_fleet(&s.fleet_app(&writer, ""));
    let run = {
        let _tmpfs = s.mount_tmpfs(&s.backups(), "1m");
        let out = s.slipway(&["rollout", "--json"]);
        assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
        let detail = out.report::<Rollout>().apps[0].tenants[0].detail.clone().unwrap_or_default();
        assert!(detail.contains("archive of the rollout copy failed"), "{detail}");
        out.run_id()
    };
    let copies = s.root().join("data/.slipway-rollout");
    std::fs::remove_dir_all(&copies).unwrap();
    let before = seen(&s, &name, "t1");
    assert_rollback_refused(&s, &name, &run, &before, &["copy"]);
}

/// The prior version was an image built on the host (never pushed, so no digest to pull it
/// back by), and an image prune removed it after the rollout: a rollback could not recreate
/// the prior container, so it refuses before touching the tenant.
#[test]
fn rollback_whose_prior_image_is_gone_and_cannot_be_pulled_is_refused_and_touches_nothing() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let writer = s.push_fixture_as("writer", "app");
    let cid = docker(&["create", &v1]);
    let local = format!("{}-local:v1", s.id().to_lowercase());
    docker(&["commit", "--change", &format!("LABEL built.on.host={}", s.id()), &cid, &local]);
    docker(&["rm", &cid]);
    let name = s.add_tenant("t1", &local);
    s.write_data("t1", "db/records.txt", "precious\n");
    s.write_fleet(&s.fleet_app(&writer, ""));
    let out = s.slipway(&["rollout", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let run = out.run_id();
    docker(&["rmi", &local]);
    let before = seen(&s, &name, "t1");
    assert_rollback_refused(&s, &name, &run, &before, &["prior container is gone"]);
}

#[test]
fn a_tenant_started_with_docker_run_rm_is_refused_at_plan_time_with_the_fix_and_left_running() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let v2 = s.push_fixture_as("v2", "app");
    // As `docker run --rm` starts it (Docker refuses --rm with a restart policy).
    let name = format!("{}-t1", s.id());
    s.write_data("t1", "db/records.txt", "rows\n");
    docker(&[
        "run",
        "-d",
        "--rm",
        "--name",
        &name,
        "--network",
        s.network(),
        "--label",
        &format!("slipway.test={}", s.id()),
        "--volume",
        &format!("{}:/data", s.data_dir("t1").display()),
        &v1,
    ]);
    let before = seen(&s, &name, "t1");
    s.write_fleet(&s.fleet_app(&v2, ""));
    let out = s.slipway(&["rollout", "--json"]);
    assert_eq!(out.code, 2, "{} {}", out.stdout, out.stderr);
    let error = out.envelope::<serde::de::IgnoredAny>().error.unwrap_or_default();
    assert!(
        error.contains(&name) && error.contains("--rm"),
        "the refusal does not name the container and --rm: {error}"
    );
    assert_eq!(seen(&s, &name, "t1"), before, "a refused plan touched the tenant");
    assert!(!s.backups().join("rollout").exists(), "a refused plan took a snapshot");
}

#[test]
fn rollback_recreates_the_prior_container_from_its_image_id_when_its_tag_has_moved() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let v2 = s.push_fixture_as("v2", "app");
    // The operator ran the tenant from a tag, as most hosts do.
    let tag = format!("{}:v1", v1.split('@').next().unwrap());
    let name = s.add_tenant("t1", &tag);
    let v1_id = s.inspect(&name)["Image"].as_str().unwrap().to_string();
    s.write_data("t1", "db/records.txt", "precious\n");
    let data = tree_hash(&s.data_dir("t1"));
    s.write_fleet(&s.fleet_app(&v2, ""));
    let out = s.slipway(&["rollout", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let run = out.run_id();
    // The tag moves on to the new version (a CI retag, `docker tag`).
    docker(&["tag", &v2, &tag]);
    assert_ne!(s.image_inspect(&tag)["Id"].as_str().unwrap(), v1_id);
    let rb = s.slipway(&["rollback", "--run", &run, "--json"]);
    assert_eq!(rb.code, 0, "{} {}", rb.stdout, rb.stderr);
    let now = s.inspect(&name);
    assert_eq!(now["Image"].as_str().unwrap(), v1_id, "recreated from the moved tag, not the prior image");
    assert_eq!(now["Config"]["Labels"]["fixture.version"], "v1");
    assert_eq!(now["Config"]["Labels"]["app.managed"], "true");
    assert_eq!(now["State"]["Running"], true);
    assert_eq!(tree_hash(&s.data_dir("t1")), data);
}

/// Wait until `f` holds (panics after 60 s).
fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(Instant::now() < until, "{what} did not happen");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_tenant_removed_before_its_turn_is_skipped_and_named_and_the_run_goes_on() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let v2 = s.push_fixture_as("v2", "app");
    let t1 = s.add_tenant("t1", &v1);
    let t2 = s.add_tenant("t2", &v1);
    let t3 = s.add_tenant("t3", &v1);
    s.write_fleet(&s.fleet_app(&v2, ""));
    // While the canary t1 is staged (its prior still serving), t2 is deleted by hand.
    let child = s.spawn(&["rollout", "--json"], &[("SLIPWAY_TEST_PAUSE_AT", "before-stop:3000")]);
    wait_until("t1's staged container", || !s.containers_named_like(".next-").is_empty());
    docker(&["rm", "-f", &t2]);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    let report: Rollout = crate::support::reports::parse::<Rollout>(&stdout, "").report();
    let by = |t: &str| report.apps[0].tenants.iter().find(|x| x.tenant == t).unwrap();
    assert_eq!(by("t1").outcome, "rolled");
    assert_eq!(by("t2").outcome, "skipped", "{stdout}");
    assert!(by("t2").detail.as_deref().unwrap_or_default().contains(&t2), "{stdout}");
    assert_eq!(by("t3").outcome, "rolled", "{stdout}");
    assert_eq!(s.image_of(&t1), v2);
    assert_eq!(s.image_of(&t3), v2);
    // Exit 0: the run did not halt, so its digest is not rejected.
}

#[test]
fn a_new_image_that_adds_a_volume_is_refused_before_any_tenant_is_touched() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let v2 = s.push_fixture_as("v2", "app");
    // v2 with a VOLUME the prior image did not have, pushed to the test's repo.
    let cid = docker(&["create", &v2]);
    let repo = v2.split('@').next().unwrap().to_string();
    let tag = format!("{repo}:vol");
    docker(&["commit", "--change", "VOLUME [\"/cache\"]", &cid, &tag]);
    docker(&["rm", &cid]);
    let push = docker(&["push", &tag]);
    let digest = push.split_whitespace().find(|w| w.starts_with("sha256:") && w.len() == 71).unwrap().to_string();
    let vol = format!("{repo}@{digest}");
    let name = s.add_tenant("t1", &v1);
    let before = seen(&s, &name, "t1");
    s.write_fleet(&s.fleet_app(&vol, ""));
    let out = s.slipway(&["rollout", "--json"]);
    assert_eq!(out.code, 2, "{} {}", out.stdout, out.stderr);
    let error = out.envelope::<serde::de::IgnoredAny>().error.unwrap_or_default();
    assert!(error.contains("/cache") && error.contains("VOLUME"), "{error}");
    assert_eq!(seen(&s, &name, "t1"), before);
    assert!(s.containers_named_like(".next-").is_empty(), "a refused plan created a container");
    let _ = Command::new("docker").args(["rmi", &tag]).output();
    let _ = Env::get();
}

/// A systemd unit running `docker start -a <tenant>` (or compose, or Portainer) starts the prior
/// container again right after slipway stopped it. Switching then would run the new version
/// beside it on the same data dir; slipway must notice, leave the prior one serving, and say so.
#[test]
fn a_prior_container_started_again_by_something_else_is_never_given_a_second_writer() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let v2 = s.push_fixture_as("v2", "app");
    let name = s.add_tenant("t1", &v1);
    let old_id = s.inspect(&name)["Id"].as_str().unwrap().to_string();
    s.write_data("t1", "db/records.txt", "rows\n");
    s.write_fleet(&s.fleet_app(&v2, ""));
    let child = s.spawn(&["rollout", "--json", "--keep-old"], &[("SLIPWAY_TEST_PAUSE_AT", "before-switch:3000")]);
    wait_until("the stop of t1", || {
        !s.containers_named_like(".next-").is_empty() && s.inspect(&name)["State"]["Running"] == false
    });
    docker(&["start", &name]);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(3), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    let report: Rollout = crate::support::reports::parse::<Rollout>(&stdout, "").report();
    let detail = report.apps[0].tenants[0].detail.clone().unwrap_or_default();
    assert!(detail.contains("started"), "{detail}");
    let now = s.inspect(&name);
    assert_eq!(now["Id"].as_str().unwrap(), old_id);
    assert_eq!(now["State"]["Running"], true);
    assert_eq!(s.image_of(&name), v1);
    let running = docker(&["ps", "-q", "--filter", &format!("label=slipway.test={}", s.id())]);
    assert_eq!(running.lines().count(), 1, "more than one container of the tenant runs: {running}");
}

/// The engine restarts for a few seconds (a dockerd upgrade, `systemctl restart docker`)
/// while a failed canary is being undone: slipway waits for it (up to its stated budget) and
/// brings the tenant back, rather than give up after a few seconds with the tenant down.
#[test]
fn an_engine_restart_of_a_few_seconds_during_an_undo_is_waited_out_and_the_tenant_brought_back() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let v2 = s.push_fixture_as("v2", "app");
    let name = s.add_tenant("t1", &v1);
    let old_id = s.inspect(&name)["Id"].as_str().unwrap().to_string();
    s.write_data("t1", "db/records.txt", "rows\n");
    let data = tree_hash(&s.data_dir("t1"));
    let proxy = crate::support::EngineProxy::start(&s.root().join("engine.sock"));
    s.append_config(&format!("[docker]\nhost = \"{}\"\n", proxy.host()));
    s.write_fleet(&s.fleet_app(&v2, ""));
    let child = s.spawn(&["rollout", "--json"], &[("SLIPWAY_TEST_PAUSE_AT", "before-switch:1000")]);
    wait_until("the stop of t1", || {
        !s.containers_named_like(".next-").is_empty() && s.inspect(&name)["State"]["Running"] == false
    });
    // The engine goes away for 6 s while the tenant is down.
    proxy.down();
    std::thread::sleep(Duration::from_secs(6));
    proxy.up();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(3), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    let now = s.inspect(&name);
    assert_eq!(now["Id"].as_str().unwrap(), old_id);
    assert_eq!(now["State"]["Running"], true);
    assert_eq!(s.image_of(&name), v1);
    assert_eq!(tree_hash(&s.data_dir("t1")), data);
    assert!(s.containers_named_like(".next-").is_empty());
}

/// A rollout killed with its tenant stopped, and the engine still restarting when `recover`
/// runs (as after a host reboot): recover waits for it and brings the tenant back.
#[test]
fn recover_waits_for_an_engine_that_is_restarting_and_brings_the_tenant_back() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let v2 = s.push_fixture_as("v2", "app");
    let name = s.add_tenant("t1", &v1);
    let old_id = s.inspect(&name)["Id"].as_str().unwrap().to_string();
    let proxy = crate::support::EngineProxy::start(&s.root().join("engine.sock"));
    s.append_config(&format!("[docker]\nhost = \"{}\"\n", proxy.host()));
    s.write_fleet(&s.fleet_app(&v2, ""));
    let out = s.slipway_env(&["rollout"], &[("SLIPWAY_TEST_CRASH_AT", "after-stop")]);
    assert!(out.stderr.contains("slipway test point reached: after-stop"), "{}", out.stderr);
    assert_eq!(s.inspect(&name)["State"]["Running"], false);
    proxy.down();
    let child = s.spawn(&["recover", "--json"], &[]);
    std::thread::sleep(Duration::from_secs(5));
    proxy.up();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    let now = s.inspect(&name);
    assert_eq!(now["Id"].as_str().unwrap(), old_id);
    assert_eq!(now["State"]["Running"], true);
}
