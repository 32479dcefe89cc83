//! Where a tenant keeps its state (issue 11, item 5): everything it writes must be in its data
//! dir, the one thing a rollout snapshots. A writable mount outside it, a data dir the
//! container does not mount, a data dir that is a symlink or a mount point are refused at plan
//! time (exit 2, nothing touched); a read-only volume, and a volume at a path the app names
//! in `scratch_mounts`, go to the new container by name (an anonymous one too).

use std::process::Command;

use crate::support::reports::Rollout;
use crate::support::{tree_hash, Out, Sandbox};

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().unwrap();
    assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A Docker volume of one test, removed (with the containers using it) at the end.
struct Volume(String);

impl Drop for Volume {
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

/// The name of the volume mounted at `destination` in `container`.
fn volume_at(s: &Sandbox, container: &str, destination: &str) -> Option<String> {
    let inspect = s.inspect(container);
    inspect["Mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["Destination"] == destination && m["Type"] == "volume")
        .map(|m| m["Name"].as_str().unwrap().to_string())
}

/// The refusal every test here expects: exit 2, the tenant's container untouched and running,
/// no snapshot taken; returns stderr.
fn assert_refused_untouched(s: &Sandbox, out: &Out, name: &str, id: &serde_json::Value) -> String {
    assert_eq!(out.code, 2, "{} {}", out.stdout, out.stderr);
    let now = s.inspect(name);
    assert_eq!(now["Id"], *id, "a refused plan touched the tenant");
    assert_eq!(now["State"]["Running"], true, "a refused plan stopped the tenant");
    assert!(!s.backups().join("rollout").exists(), "a refused plan took a snapshot");
    out.stderr.clone()
}

#[test]
fn a_tenant_with_an_extra_writable_volume_is_refused_at_plan_time_and_left_running() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let v2 = s.push_fixture_as("v2", "app");
    let vol = Volume(format!("{}-uploads", s.id()));
    docker(&["volume", "create", &vol.0]);
    let name = s.add_tenant_with("t1", &v1, &["--volume", &format!("{}:/uploads", vol.0)]);
    let other = s.add_tenant("t2", &v1);
    let (id, other_id) = (s.inspect(&name)["Id"].clone(), s.inspect(&other)["Id"].clone());
    s.write_fleet(&s.fleet_app(&v2, ""));
    let out = s.slipway(&["rollout"]);
    let err = assert_refused_untouched(&s, &out, &name, &id);
    assert!(err.contains("tenant t1") && err.contains(&vol.0) && err.contains("/uploads"), "{err}");
    assert!(err.contains("read-only") && err.contains(&s.data_dir("t1").display().to_string()), "{err}");
    // Nothing of the app was touched, not even the tenant without the volume.
    assert_eq!(s.inspect(&other)["Id"], other_id);
    // Mounted read-only, it holds nothing the tenant writes: the rollout goes ahead.
    docker(&["rm", "-f", &name]);
    let name = s.add_tenant_with("t1", &v1, &["--volume", &format!("{}:/uploads:ro", vol.0)]);
    let out = s.slipway(&["rollout"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert_eq!(s.image_of(&name), v2);
    assert_eq!(volume_at(&s, &name, "/uploads").as_deref(), Some(vol.0.as_str()));
}

#[test]
fn a_writable_anonymous_volume_is_refused_at_plan_time() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let v2 = s.push_fixture_as("v2", "app");
    let name = s.add_tenant_with("t1", &v1, &["--volume", "/cache"]);
    let vol = Volume(volume_at(&s, &name, "/cache").unwrap());
    let id = s.inspect(&name)["Id"].clone();
    s.write_fleet(&s.fleet_app(&v2, ""));
    let out = s.slipway(&["rollout"]);
    let err = assert_refused_untouched(&s, &out, &name, &id);
    assert!(err.contains("tenant t1") && err.contains("anonymous volume") && err.contains("/cache"), "{err}");
    assert!(err.contains(&vol.0[..12]), "{err}");
}

#[test]
fn a_read_only_volume_and_a_scratch_anonymous_volume_are_carried_to_the_new_container_by_name() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let v2 = s.push_fixture_as("v2", "app");
    let named = Volume(format!("{}-assets", s.id()));
    docker(&["volume", "create", &named.0]);
    // Docker refuses a read-only anonymous volume; a cache the operator declares scratch is
    // the anonymous volume a tenant may have.
    let name = s.add_tenant_with("t1", &v1, &["--volume", &format!("{}:/assets:ro", named.0), "--volume", "/cache"]);
    let anon = Volume(volume_at(&s, &name, "/cache").unwrap());
    for v in [&named.0, &anon.0] {
        let mount = format!("{v}:/v");
        docker(&["run", "--rm", "-v", &mount, "--entrypoint", "/bin/busybox", &v1, "sh", "-c", "echo kept > /v/f"]);
    }
    let id = s.inspect(&name)["Id"].clone();
    s.write_fleet(&s.fleet_app(&v2, "scratch_mounts = [\"/cache\"]\n"));
    let out = s.slipway(&["rollout", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let report: Rollout = out.report();
    assert_eq!(report.apps[0].tenants[0].outcome, "rolled", "{:?}", report.apps[0].tenants[0]);
    assert_ne!(s.inspect(&name)["Id"], id);
    assert_eq!(s.image_of(&name), v2);
    // The same volumes, by name, at the same places, as writable as before.
    assert_eq!(volume_at(&s, &name, "/assets").as_deref(), Some(named.0.as_str()));
    assert_eq!(
        volume_at(&s, &name, "/cache").as_deref(),
        Some(anon.0.as_str()),
        "the anonymous volume was not carried"
    );
    for (dest, rw) in [("/assets", false), ("/cache", true)] {
        let m = s.inspect(&name)["Mounts"].as_array().unwrap().iter().find(|m| m["Destination"] == dest).cloned();
        assert_eq!(m.unwrap()["RW"], rw, "{dest}");
        let file = format!("{dest}/f");
        assert_eq!(docker(&["exec", &name, "/bin/busybox", "cat", &file]), "kept");
    }
}

#[test]
fn a_tenant_whose_container_does_not_mount_its_data_dir_is_refused_at_plan_time() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let v2 = s.push_fixture_as("v2", "app");
    let name = s.add_tenant("t1", &v1);
    let id = s.inspect(&name)["Id"].clone();
    // data_dir names another dir than the one the container mounts.
    let elsewhere = s.root().join("elsewhere");
    std::fs::create_dir_all(elsewhere.join("t1")).unwrap();
    let data = s.root().join("data").display().to_string();
    s.write_fleet(&s.fleet_app(&v2, "").replace(&data, &elsewhere.display().to_string()));
    let out = s.slipway(&["rollout"]);
    let err = assert_refused_untouched(&s, &out, &name, &id);
    assert!(err.contains("tenant t1") && err.contains("does not mount its data dir"), "{err}");
    assert!(err.contains(&elsewhere.join("t1").display().to_string()), "{err}");
}

#[test]
fn a_data_dir_that_is_a_symlink_is_refused_at_plan_time() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let v2 = s.push_fixture_as("v2", "app");
    s.write_data("t1", "db/records.txt", "rows\n");
    let name = s.add_tenant("t1", &v1);
    let id = s.inspect(&name)["Id"].clone();
    // The operator moved the data and left a link behind.
    let real = s.root().join("real-t1");
    std::fs::rename(s.data_dir("t1"), &real).unwrap();
    std::os::unix::fs::symlink(&real, s.data_dir("t1")).unwrap();
    let hash = tree_hash(&real);
    s.write_fleet(&s.fleet_app(&v2, ""));
    let out = s.slipway(&["rollout"]);
    let err = assert_refused_untouched(&s, &out, &name, &id);
    assert!(err.contains("tenant t1") && err.contains("symlink") && err.contains("real-t1"), "{err}");
    assert_eq!(tree_hash(&real), hash);
}

#[test]
fn a_data_dir_that_is_a_mount_point_is_refused_at_plan_time_not_on_the_failure_path() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let bad = s.push_fixture_as("unhealthy", "app");
    let data = s.data_dir("t1");
    let _mount = s.mount_tmpfs(&data, "8m");
    s.write_data("t1", "db/records.txt", "rows\n");
    let name = s.add_tenant("t1", &v1);
    let id = s.inspect(&name)["Id"].clone();
    // A release that fails its health gate would need the data restored: found out now.
    s.write_fleet(&s.fleet_app(&bad, "health = { path = \"/api/health\", port = 8080, timeout_s = 4 }\n"));
    let out = s.slipway(&["rollout"]);
    let err = assert_refused_untouched(&s, &out, &name, &id);
    assert!(err.contains("tenant t1") && err.contains("mount point"), "{err}");
}

/// Where the engine keeps a local volume's data on this host.
fn mountpoint(volume: &str) -> std::path::PathBuf {
    docker(&["volume", "inspect", "--format", "{{.Mountpoint}}", volume]).into()
}

/// Issue #26 item 1: tenants whose data is a named volume of the local driver (as compose and
/// Coolify make them), declared by `data_volume`: rolled with the volume re-attached by name, a
/// broken release undone with the volume's data byte-identical, snapshotted through the staging
/// copy, restored and drilled — the drill on a scratch copy, never on the live volume.
#[test]
fn tenants_whose_data_is_a_named_volume_are_rolled_undone_snapshotted_restored_and_drilled() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let v2 = s.push_fixture_as("v2", "app");
    let bad = s.push_fixture_as("unhealthy", "app");
    let vols: Vec<Volume> = ["t1", "t2"].iter().map(|t| Volume(format!("{}-{t}_data", s.id()))).collect();
    let mut names = Vec::new();
    for (t, v) in ["t1", "t2"].iter().zip(&vols) {
        docker(&["volume", "create", &v.0]);
        let dir = mountpoint(&v.0);
        std::fs::create_dir_all(dir.join("db")).unwrap();
        std::fs::write(dir.join("db/rows"), format!("{t}'s customer rows\n").repeat(500)).unwrap();
        names.push(s.add_tenant_on(t, &v1, &v.0, &[]));
    }
    let fleet = |image: &str, extra: &str| {
        let bind = format!("data_dir = \"{}/{{tenant}}\"\n", s.root().join("data").display());
        let app = s.fleet_app(image, extra);
        assert!(app.contains(&bind));
        app.replace(&bind, &format!("data_volume = \"{}-{{tenant}}_data\"\n", s.id()))
    };
    let hashes = || vols.iter().map(|v| tree_hash(&mountpoint(&v.0))).collect::<Vec<_>>();

    // `init` proposes the app with its data in the volumes.
    let dir = s.root().join("etc-slipway");
    let only = format!("slipway.test={}", s.id());
    let out = s.slipway(&["init", "--dir", dir.to_str().unwrap(), "--only", &only, "--dry-run", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let init: crate::support::reports::Init = out.report();
    assert_eq!(init.apps.len(), 1, "{:?}", init.skipped);
    let want = format!("data_volume = \"{}-{{tenant}}_data\"", s.id());
    assert!(init.fleet.text.contains(&want), "{}", init.fleet.text);

    // A release: both tenants on v2, each on its own volume, by name, with its data.
    let before = hashes();
    s.write_fleet(&fleet(&v2, ""));
    let out = s.slipway(&["rollout", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    for (n, v) in names.iter().zip(&vols) {
        assert_eq!(s.image_of(n), v2);
        assert_eq!(volume_at(&s, n, "/data").as_deref(), Some(v.0.as_str()));
    }
    assert_eq!(hashes(), before);

    // A broken release halts at the canary: its volume holds the pre-rollout data again, what
    // the failed version wrote is kept aside, and the container is back on v2 with its volume.
    s.write_fleet(&fleet(&bad, "health = { path = \"/api/health\", port = 8080, timeout_s = 3 }\n"));
    let out = s.slipway(&["rollout", "--json"]);
    assert_eq!(out.code, 3, "{} {}", out.stdout, out.stderr);
    assert_eq!(hashes(), before, "a volume does not hold its pre-rollout data after the undo");
    for (n, v) in names.iter().zip(&vols) {
        assert_eq!(s.image_of(n), v2);
        assert_eq!(volume_at(&s, n, "/data").as_deref(), Some(v.0.as_str()));
        assert_eq!(s.inspect(n)["State"]["Running"], true);
    }

    // The daily snapshot, a damaged file, a restore.
    s.write_fleet(&fleet(&v2, ""));
    let out = s.slipway(&["snapshot", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let t1 = mountpoint(&vols[0].0);
    std::fs::write(t1.join("db/rows"), "damaged").unwrap();
    let out = s.slipway(&["restore", "--tenant", "t1", "--latest"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert_eq!(hashes(), before, "the restored volume differs from the snapshot");
    assert_eq!(volume_at(&s, &names[0], "/data").as_deref(), Some(vols[0].0.as_str()));
    assert_eq!(docker(&["exec", &names[0], "/bin/busybox", "head", "-c", "16", "/data/db/rows"]), "t1's customer ro");

    // A drill runs the tenant's image on a scratch copy; the live volume is not touched.
    let out = s.slipway(&["drill", "--tenant", "t1", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert_eq!(hashes(), before, "the drill touched a live volume");
}
