//! Backups of a stack tenant (issue #26 item 3): the daily snapshot of every data mount of a
//! compose-made three-service tenant (app and sidecar each write a named volume; the worker
//! writes nothing), its writers held together and nothing else; restore of every mount with
//! every container back; a restore whose gate fails puts every mount back; a kill while the
//! writers are paused; symlinks in or instead of a volume; a damaged part.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::stack::{compose_tenant, docker, images, looks, stack_fleet, tree, Compose};
use crate::support::reports::{Snapshot, Verify};
use crate::support::Sandbox;

/// A background writer inside the sidecar (`docker exec -d`): appends a numbered line to
/// /data/log every 20 ms, `n` times. It is frozen with the container by a pause and dies with
/// it when the container stops.
fn sidecar_writes(c: &Compose, n: u32) {
    let script =
        format!("i=0; while [ $i -lt {n} ]; do echo $i >> /data/log; i=$((i+1)); /bin/busybox usleep 20000; done");
    docker(&["exec", "-d", &c.container("side"), "/bin/busybox", "sh", "-c", &script]);
}

/// The containers of `names` that the engine paused between `since` and now (docker events).
pub(crate) fn paused_since(since: f64, names: &[String]) -> Vec<String> {
    let until = now_s() + 1.0;
    let out = docker(&[
        "events",
        "--since",
        &format!("{since:.6}"),
        "--until",
        &format!("{until:.6}"),
        "--filter",
        "event=pause",
        "--format",
        "{{.Actor.Attributes.name}}",
    ]);
    let mut v: Vec<String> = out.lines().filter(|n| names.iter().any(|x| x == n)).map(str::to_string).collect();
    v.sort();
    v.dedup();
    v
}

/// Now, in seconds since the epoch, to the microsecond (docker events takes fractions).
pub(crate) fn now_s() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

/// The host dirs of the tenant's two volumes: (appdata, sidedata).
fn vols(c: &Compose) -> (PathBuf, PathBuf) {
    (c.volume_dir("appdata"), c.volume_dir("sidedata"))
}

/// Today's manifest entry of `tenant` (None when the manifest lists it not, or is missing).
pub(crate) fn entry_of(day_dir: &Path, tenant: &str) -> Option<serde_json::Value> {
    let m = std::fs::read(day_dir.join("MANIFEST.json")).ok()?;
    let m: serde_json::Value = serde_json::from_slice(&m).unwrap();
    m["archives"].as_array()?.iter().find(|a| a["tenant"] == tenant).cloned()
}

/// `restore --to DIR`: each mount's data in `DIR/<n>`; (the dir holding the app's volume, the
/// sidecar's) by the mount each names.
fn extracted(s: &Sandbox, tenant: &str, extra: &[&str]) -> (PathBuf, PathBuf) {
    let to = s.root().join(format!("to-{}", now_s_nanos()));
    let mut args = vec!["restore", "--latest", "--tenant", tenant, "--to", to.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    let out = s.slipway(&args);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let mounts = out.json()["report"]["mounts"].as_array().cloned().unwrap_or_default();
    assert_eq!(mounts.len(), 2, "{}", out.stdout);
    let find = |vol: &str| {
        let m = mounts.iter().find(|m| m["mount"].as_str().unwrap().contains(vol)).unwrap();
        PathBuf::from(m["target"].as_str().unwrap())
    };
    (find("_appdata"), find("_sidedata"))
}

fn now_s_nanos() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

#[test]
fn a_stack_tenant_snapshotted_while_its_sidecar_writes_is_restored_byte_identical_with_every_container_back() {
    let s = Sandbox::new();
    let img = images(&s);
    let t1 = compose_tenant(&s, "t1", &img);
    let (app_vol, side_vol) = vols(&t1);
    std::fs::create_dir_all(app_vol.join("db")).unwrap();
    std::fs::write(app_vol.join("db/records.txt"), "customer row\n".repeat(2000)).unwrap();
    s.write_fleet(&stack_fleet(&s, &img.app, &img.worker, &img.side, ""));
    let bucket = s.use_shared_remote("");
    let worker_started = s.inspect(&t1.container("worker"))["State"]["StartedAt"].clone();
    let names: Vec<String> = ["app", "side", "worker"].map(|x| t1.container(x)).to_vec();

    // The sidecar writes all along the snapshot.
    sidecar_writes(&t1, 500);
    let since = now_s();
    let out = s.slipway(&["snapshot", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let report: Snapshot = out.report();
    let a = report.archives.iter().find(|a| a.tenant.as_deref() == Some(&t1.project)).unwrap();
    assert_eq!((a.outcome.as_str(), a.staging.as_deref()), ("archived", Some("staged")), "{a:?}");
    // Only the writers were paused, together; the worker never was, nor restarted.
    assert_eq!(paused_since(since, &names), [t1.container("app"), t1.container("side")]);
    assert_eq!(s.inspect(&t1.container("worker"))["State"]["StartedAt"], worker_started);
    for n in &names {
        assert_eq!(s.inspect(n)["State"]["Paused"], false, "{n} left paused");
    }
    // One manifest entry, one archive per volume.
    let e = entry_of(&report.dir, &t1.project).expect("no manifest entry for the stack tenant");
    let parts: Vec<&str> = e["mounts"].as_array().unwrap().iter().map(|m| m["path"].as_str().unwrap()).collect();
    assert_eq!(parts, [format!("tenants/{}+0.tar.zst", t1.project), format!("tenants/{}+1.tar.zst", t1.project)]);
    let verify = s.slipway(&["verify", "--json"]);
    assert_eq!(verify.code, 0, "{} {}", verify.stdout, verify.stderr);

    // What the snapshot holds: the sidecar's log mid-write, whole lines in order.
    let (snap_app, snap_side) = extracted(&s, &t1.project, &[]);
    let log = std::fs::read_to_string(snap_side.join("log")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert!(!lines.is_empty(), "the snapshot did not catch the sidecar writing");
    assert!(lines.iter().enumerate().all(|(i, l)| *l == i.to_string()), "torn log: {log}");
    let (h_app, h_side) = (tree(&snap_app), tree(&snap_side));

    // Off-site, every part: sync, then a remote restore without the local day.
    let sync = s.slipway(&["sync", "--json"]);
    assert_eq!(sync.code, 0, "{} {}", sync.stdout, sync.stderr);
    let keys: Vec<String> = sync.json()["report"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["key"].as_str().unwrap().to_string())
        .collect();
    for n in 0..2 {
        for suffix in ["tar.zst", "files.json.zst"] {
            let k = format!("tenants/{}+{n}.{suffix}", t1.project);
            assert!(keys.iter().any(|x| x.ends_with(&k)), "{k} not synced: {keys:?}");
        }
    }
    let _ = bucket;
    let (r_app, r_side) = extracted(&s, &t1.project, &["--remote"]);
    assert_eq!((tree(&r_app), tree(&r_side)), (h_app.clone(), h_side.clone()));

    // Damage both volumes, then restore in place.
    std::fs::remove_file(app_vol.join("db/records.txt")).unwrap();
    std::fs::write(side_vol.join("log"), "damaged\n").unwrap();
    std::fs::write(app_vol.join("junk"), "junk").unwrap();
    let before: Vec<_> = ["app", "side", "worker"].map(|x| looks(&s, &t1.container(x))).to_vec();
    let ps = t1.ps();
    let out = s.slipway(&["restore", "--latest", "--tenant", &t1.project, "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    // Both volumes byte-identical to the snapshot.
    assert_eq!((tree(&app_vol), tree(&side_vol)), (h_app, h_side));
    // Every container back: the same ones, labels, networks and compose project, running.
    let now: Vec<_> = ["app", "side", "worker"].map(|x| looks(&s, &t1.container(x))).to_vec();
    assert_eq!(now, before);
    assert_eq!(t1.ps(), ps, "docker-compose ps lists another project");
    assert_eq!(s.inspect(&t1.container("worker"))["State"]["StartedAt"], worker_started, "the worker was stopped");
    // What each mount had is kept, never deleted.
    for m in out.json()["report"]["mounts"].as_array().unwrap() {
        let kept = PathBuf::from(m["replaced"].as_str().expect("replaced data not kept"));
        assert!(kept.is_dir(), "{}", kept.display());
    }

    // A damaged part: verify names it, restore refuses it and touches nothing.
    let part = report.dir.join(format!("tenants/{}+1.tar.zst", t1.project));
    let mut bytes = std::fs::read(&part).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&part, bytes).unwrap();
    let v = s.slipway(&["verify", "--json"]);
    assert_eq!(v.code, 1, "{} {}", v.stdout, v.stderr);
    let bad: Verify = v.report();
    assert!(
        bad.archives.iter().any(|c| !c.ok && c.detail.as_deref().unwrap_or_default().contains("+1.tar.zst")),
        "{}",
        v.stdout
    );
    std::fs::write(app_vol.join("after"), "kept").unwrap();
    let vols_now = (tree(&app_vol), tree(&side_vol));
    let r = s.slipway(&["restore", "--latest", "--tenant", &t1.project]);
    assert_eq!(r.code, 1, "{} {}", r.stdout, r.stderr);
    assert!(r.stderr.contains("sha256"), "{}", r.stderr);
    assert_eq!((tree(&app_vol), tree(&side_vol)), vols_now, "a refused restore touched a volume");
}

#[test]
fn a_stack_restore_whose_app_fails_its_gate_puts_every_mount_back_and_the_stack_runs_as_it_was() {
    let s = Sandbox::new();
    let img = images(&s);
    let t1 = compose_tenant(&s, "t1", &img);
    let (app_vol, side_vol) = vols(&t1);
    // A database the app cannot open: it refuses to start on it (the fixture exits 4).
    std::fs::create_dir_all(app_vol.join("db")).unwrap();
    std::fs::write(app_vol.join("db/corrupt"), "x").unwrap();
    s.write_fleet(&stack_fleet(&s, &img.app, &img.worker, &img.side, ""));
    let out = s.slipway(&["snapshot", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    std::fs::remove_file(app_vol.join("db/corrupt")).unwrap();
    std::fs::write(app_vol.join("db/records.txt"), "newer rows\n").unwrap();
    std::fs::write(side_vol.join("newer"), "newer").unwrap();
    let data = (tree(&app_vol), tree(&side_vol));
    let before: Vec<_> = ["app", "side", "worker"].map(|x| looks(&s, &t1.container(x))).to_vec();

    let out = s.slipway(&["restore", "--latest", "--tenant", &t1.project, "--json"]);
    assert_eq!(out.code, 1, "{} {}", out.stdout, out.stderr);
    let detail = out.json()["report"]["detail"].as_str().unwrap_or_default().to_string();
    assert!(detail.contains("gate") && detail.contains("again"), "{detail}");
    // Every mount back as it was, every container back and running on it.
    assert_eq!((tree(&app_vol), tree(&side_vol)), data, "a mount was not put back");
    let now: Vec<_> = ["app", "side", "worker"].map(|x| looks(&s, &t1.container(x))).to_vec();
    assert_eq!(now, before);
    let ip = crate::stack::compose_ip(&s, &t1, &t1.container("app"));
    assert!(s.http_get(&format!("http://{ip}:8080/api/health")).contains("ok"));
}

#[test]
fn a_stack_snapshot_killed_while_its_writers_are_paused_is_recovered_with_every_container_running_and_nothing_counted_good(
) {
    let s = Sandbox::new();
    let img = images(&s);
    let t1 = compose_tenant(&s, "t1", &img);
    s.write_fleet(&stack_fleet(&s, &img.app, &img.worker, &img.side, ""));
    let out = s.slipway_env(&["snapshot", "--json"], &[("SLIPWAY_TEST_CRASH_AT", "snapshot-quiesced")]);
    assert_eq!(out.code, -1, "{} {}", out.stdout, out.stderr);
    assert!(out.stderr.contains("slipway test point reached: snapshot-quiesced"), "{}", out.stderr);
    // Killed with both writers paused, the worker not.
    for (svc, paused) in [("app", true), ("side", true), ("worker", false)] {
        assert_eq!(s.inspect(&t1.container(svc))["State"]["Paused"], paused, "{svc}");
    }
    let day = s.backups().join("daily").join(jiff_today());
    assert!(entry_of(&day, &t1.project).is_none(), "a killed snapshot was counted good");
    let rec = s.slipway(&["recover", "--json"]);
    assert_eq!(rec.code, 0, "{} {}", rec.stdout, rec.stderr);
    for svc in ["app", "side", "worker"] {
        let st = &s.inspect(&t1.container(svc))["State"];
        assert_eq!((st["Running"].clone(), st["Paused"].clone()), (true.into(), false.into()), "{svc}");
    }
    assert!(entry_of(&day, &t1.project).is_none(), "recover counted a killed snapshot good");
    let r = s.slipway(&["restore", "--latest", "--tenant", &t1.project, "--dry-run"]);
    assert_eq!(r.code, 2, "{} {}", r.stdout, r.stderr);
    assert!(r.stderr.contains("no complete snapshot"), "{}", r.stderr);
    // The next snapshot takes it.
    let out = s.slipway(&["snapshot", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert!(entry_of(&day, &t1.project).is_some());
}

fn jiff_today() -> String {
    let out = Command::new("date").args(["-u", "+%Y-%m-%d"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_symlink_in_a_stack_volume_or_instead_of_it_is_never_followed_out_of_the_mount() {
    let s = Sandbox::new();
    let img = images(&s);
    let t1 = compose_tenant(&s, "t1", &img);
    let (app_vol, side_vol) = vols(&t1);
    // A host dir outside every mount, and a volume holding symlinks that point into it.
    let host = s.root().join("host-secret");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("secret.txt"), "host secret, never archived\n").unwrap();
    std::os::unix::fs::symlink(&host, app_vol.join("escape")).unwrap();
    std::os::unix::fs::symlink(host.join("secret.txt"), app_vol.join("secret-link")).unwrap();
    let host_before = tree(&host);
    s.write_fleet(&stack_fleet(&s, &img.app, &img.worker, &img.side, ""));
    let out = s.slipway(&["snapshot", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    // The snapshot holds the links as links, and nothing of what they point at.
    let (snap_app, _) = extracted(&s, &t1.project, &[]);
    assert_eq!(std::fs::read_link(snap_app.join("escape")).unwrap(), host);
    assert!(std::fs::symlink_metadata(snap_app.join("escape")).unwrap().file_type().is_symlink());
    let day = s.backups().join("daily").join(jiff_today());
    let walk = crate::support::files_under(&day);
    for f in walk.iter().filter(|f| f.is_file()) {
        let b = std::fs::read(f).unwrap();
        assert!(!String::from_utf8_lossy(&b).contains("host secret"), "{} holds the host's file", f.display());
    }
    // A restore writes through no link either.
    std::fs::remove_file(app_vol.join("escape")).unwrap();
    std::fs::create_dir(app_vol.join("escape")).unwrap();
    let r = s.slipway(&["restore", "--latest", "--tenant", &t1.project]);
    assert_eq!(r.code, 0, "{} {}", r.stdout, r.stderr);
    assert!(std::fs::symlink_metadata(app_vol.join("escape")).unwrap().file_type().is_symlink());
    assert_eq!(tree(&host), host_before, "the host dir was written");

    // The sidecar's volume dir swapped for a symlink to the host dir: refused, nothing read,
    // nobody paused.
    let real = side_vol.with_file_name("_data.real");
    std::fs::rename(&side_vol, &real).unwrap();
    std::os::unix::fs::symlink(&host, &side_vol).unwrap();
    let since = now_s();
    let out = s.slipway(&["snapshot", "--force", "--json"]);
    std::fs::remove_file(&side_vol).unwrap();
    std::fs::rename(&real, &side_vol).unwrap();
    assert_eq!(out.code, 1, "{} {}", out.stdout, out.stderr);
    let report: Snapshot = out.report();
    let a = report.archives.iter().find(|a| a.tenant.as_deref() == Some(&t1.project)).unwrap();
    assert_eq!(a.outcome, "failed");
    assert!(a.detail.as_deref().unwrap_or_default().contains("symlink"), "{a:?}");
    let names: Vec<String> = ["app", "side", "worker"].map(|x| t1.container(x)).to_vec();
    assert!(paused_since(since, &names).is_empty(), "a refused snapshot paused a container");
    assert_eq!(tree(&host), host_before);
    let staged = s.backups().join("staging");
    for f in crate::support::files_under(&staged) {
        assert!(!f.ends_with("secret.txt"), "the host dir was copied: {}", f.display());
    }
}

/// A stack restore killed before its first swap and between two swaps, then `recover`: every
/// mount has its data from before the restore, every container runs as before.
#[test]
fn a_stack_restore_killed_between_its_swaps_is_undone_by_recover_with_every_mount_back() {
    let s = Sandbox::new();
    let img = images(&s);
    let t1 = compose_tenant(&s, "t1", &img);
    let (app_vol, side_vol) = vols(&t1);
    s.write_fleet(&stack_fleet(&s, &img.app, &img.worker, &img.side, ""));
    let out = s.slipway(&["snapshot", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    for point in ["restore-before-swap", "restore-stack-swapped-one"] {
        std::fs::write(app_vol.join("newer"), point).unwrap();
        std::fs::write(side_vol.join("newer"), point).unwrap();
        let data = (tree(&app_vol), tree(&side_vol));
        let before: Vec<_> = ["app", "side", "worker"].map(|x| looks(&s, &t1.container(x))).to_vec();
        let out = s.slipway_env(&["restore", "--latest", "--tenant", &t1.project], &[("SLIPWAY_TEST_CRASH_AT", point)]);
        assert!(out.stderr.contains(&format!("slipway test point reached: {point}")), "{point}: {}", out.stderr);
        assert_eq!(out.code, -1, "{point}");
        let rec = s.slipway(&["recover", "--json"]);
        assert_eq!(rec.code, 0, "{point}: {} {}", rec.stdout, rec.stderr);
        assert_eq!((tree(&app_vol), tree(&side_vol)), data, "{point}: a mount was not put back");
        let now: Vec<_> = ["app", "side", "worker"].map(|x| looks(&s, &t1.container(x))).to_vec();
        assert_eq!(now, before, "{point}: the stack is not back as it was");
        let again = s.slipway(&["recover", "--json"]);
        assert_eq!(again.report::<crate::support::reports::Recover>().runs.len(), 0, "{point}");
    }
}

/// Nothing of the drill of `tenant` is left: no drill container or network, no scratch dir.
fn drill_leftovers(s: &Sandbox, tenant: &str) -> Vec<String> {
    let mut left: Vec<String> =
        s.containers_named_like("slipway-drill-").into_iter().filter(|n| n.contains(tenant)).collect();
    let nets = docker(&["network", "ls", "--filter", "label=slipway.drill", "--format", "{{.Name}}"]);
    left.extend(nets.lines().filter(|n| n.contains(tenant)).map(str::to_string));
    let root = s.backups().join("drill");
    if root.exists() {
        left.push(root.display().to_string());
    }
    left
}

/// A drill boots every service of the stack on the restored copies of its volumes, never on the
/// live ones: a snapshot the app cannot start on fails the drill though the live data is fine,
/// and a good snapshot passes though the live data is one the app would not start on. The live
/// stack is never stopped or paused, and nothing of the drill is left.
#[test]
fn a_stack_drill_boots_every_service_on_the_restored_volumes_and_leaves_nothing() {
    let s = Sandbox::new();
    let img = images(&s);
    let t1 = compose_tenant(&s, "t1", &img);
    let (app_vol, _) = vols(&t1);
    std::fs::create_dir_all(app_vol.join("db")).unwrap();
    s.write_fleet(&stack_fleet(&s, &img.app, &img.worker, &img.side, ""));
    let started: Vec<_> =
        ["app", "side", "worker"].map(|x| s.inspect(&t1.container(x))["State"]["StartedAt"].clone()).to_vec();
    let names: Vec<String> = ["app", "side", "worker"].map(|x| t1.container(x)).to_vec();

    // A snapshot the app refuses to start on; the live data is fine.
    std::fs::write(app_vol.join("db/corrupt"), "x").unwrap();
    assert_eq!(s.slipway(&["snapshot"]).code, 0);
    std::fs::remove_file(app_vol.join("db/corrupt")).unwrap();
    let out = s.slipway(&["drill", "--tenant", &t1.project, "--latest", "--json"]);
    assert_eq!(out.code, 1, "{} {}", out.stdout, out.stderr);
    let r: crate::support::reports::Drill = out.report();
    assert_eq!(r.tenants[0].outcome, "failed", "{}", out.stdout);
    assert!(r.tenants[0].detail.contains("service app"), "{}", r.tenants[0].detail);
    assert!(drill_leftovers(&s, &t1.project).is_empty(), "{:?}", drill_leftovers(&s, &t1.project));

    // A good snapshot; the live data now one the app would not start on.
    assert_eq!(s.slipway(&["snapshot", "--force"]).code, 0);
    std::fs::write(app_vol.join("db/corrupt"), "x").unwrap();
    let since = now_s();
    let out = s.slipway(&["drill", "--all", "--latest", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let r: crate::support::reports::Drill = out.report();
    let t = r.tenants.iter().find(|t| t.tenant == t1.project).unwrap();
    assert_eq!(t.outcome, "passed", "{}", t.detail);
    assert!(t.healthy_ms.is_some() && t.entries > 0, "{t:?}");
    assert!(drill_leftovers(&s, &t1.project).is_empty(), "{:?}", drill_leftovers(&s, &t1.project));
    // The live stack was only looked at.
    let now: Vec<_> =
        ["app", "side", "worker"].map(|x| s.inspect(&t1.container(x))["State"]["StartedAt"].clone()).to_vec();
    assert_eq!(now, started);
    assert!(paused_since(since, &names).is_empty());
    std::fs::remove_file(app_vol.join("db/corrupt")).unwrap();
}

/// A service that does not write but reads a data volume (mounted read-only) is never paused by
/// a snapshot, and a restore starts it again on the restored volume: a running container keeps
/// the dir it was started on.
#[test]
fn a_reader_of_a_stack_volume_is_never_paused_and_sees_the_restored_data_after_a_restore() {
    let s = Sandbox::new();
    let img = images(&s);
    let reader = "    volumes: [ \"appdata:/shared:ro\" ]\n";
    let t1 = crate::stack::compose_tenant_with(&s, "t1", &img, "", reader);
    let (app_vol, _) = vols(&t1);
    std::fs::write(app_vol.join("records.txt"), "as snapshotted\n").unwrap();
    s.write_fleet(&stack_fleet(&s, &img.app, &img.worker, &img.side, ""));
    let names: Vec<String> = ["app", "side", "worker"].map(|x| t1.container(x)).to_vec();
    let since = now_s();
    let out = s.slipway(&["snapshot", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert_eq!(paused_since(since, &names), [t1.container("app"), t1.container("side")]);
    std::fs::write(app_vol.join("records.txt"), "changed after\n").unwrap();
    let worker = t1.container("worker");
    let read = || docker(&["exec", &worker, "/bin/busybox", "cat", "/shared/records.txt"]);
    assert_eq!(read(), "changed after");
    let out = s.slipway(&["restore", "--latest", "--tenant", &t1.project]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert_eq!(read(), "as snapshotted", "the reader still sees the replaced data");
    assert_eq!(s.inspect(&worker)["State"]["Running"], true);
}

/// The next day's snapshot of an unchanged stack reuses every mount's archive; prune removes
/// an old day's parts with its entry and keeps the new day whole (verify, restore).
#[test]
fn an_unchanged_stack_reuses_each_mount_archive_and_prune_takes_every_part_of_an_old_day() {
    let s = Sandbox::new();
    let img = images(&s);
    let t1 = compose_tenant(&s, "t1", &img);
    let (app_vol, side_vol) = vols(&t1);
    std::fs::write(app_vol.join("records.txt"), "rows\n").unwrap();
    s.write_fleet(&stack_fleet(&s, &img.app, &img.worker, &img.side, ""));
    let first: Snapshot = s.slipway(&["snapshot", "--json"]).report();
    let daily = s.backups().join("daily");
    let old = daily.join("2000-01-01");
    std::fs::rename(daily.join(&first.day), &old).unwrap();
    let out = s.slipway(&["snapshot", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let second: Snapshot = out.report();
    let a = second.archives.iter().find(|a| a.tenant.as_deref() == Some(&t1.project)).unwrap();
    assert_eq!(a.outcome, "reused", "{a:?}");
    let data = (tree(&app_vol), tree(&side_vol));
    s.append_config("[retention]\nkeep_last = 1\n");
    let p = s.slipway(&["prune", "--json"]);
    assert_eq!(p.code, 0, "{} {}", p.stdout, p.stderr);
    for n in 0..2 {
        let part = format!("tenants/{}+{n}.tar.zst", t1.project);
        assert!(!old.join(&part).exists(), "prune left {part} of the old day");
        assert!(second.dir.join(&part).is_file(), "prune took {part} of the kept day");
    }
    assert_eq!(s.slipway(&["verify"]).code, 0);
    let (r_app, r_side) = extracted(&s, &t1.project, &[]);
    assert_eq!((tree(&r_app), tree(&r_side)), data);
}

/// A stack tenant snapshotted, then written to ("newer"), then restored from the snapshot:
/// the tenant, the restore's run id, the volumes' trees as restored and as they were newer.
fn restored_over_newer(s: &Sandbox) -> (Compose, String, (String, String), (String, String)) {
    let img = images(s);
    let t1 = compose_tenant(s, "t1", &img);
    let (app_vol, side_vol) = vols(&t1);
    std::fs::create_dir_all(app_vol.join("db")).unwrap();
    std::fs::write(app_vol.join("db/records.txt"), "customer row\n".repeat(200)).unwrap();
    s.write_fleet(&stack_fleet(s, &img.app, &img.worker, &img.side, ""));
    let out = s.slipway(&["snapshot", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let snap = (tree(&app_vol), tree(&side_vol));
    std::fs::write(app_vol.join("db/records.txt"), "rows written after the snapshot\n").unwrap();
    std::fs::write(side_vol.join("newer"), "newer").unwrap();
    let newer = (tree(&app_vol), tree(&side_vol));
    let out = s.slipway(&["restore", "--latest", "--tenant", &t1.project, "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert_eq!((tree(&app_vol), tree(&side_vol)), snap);
    let run = out.json()["run_id"].as_str().unwrap().to_string();
    (t1, run, snap, newer)
}

#[test]
fn restore_run_of_a_stack_restore_puts_back_what_every_mount_held_with_the_writers_stopped_and_started() {
    let s = Sandbox::new();
    let (t1, run, snap, newer) = restored_over_newer(&s);
    let (app_vol, side_vol) = vols(&t1);
    let before: Vec<_> = ["app", "side", "worker"].map(|x| looks(&s, &t1.container(x))).to_vec();
    let worker_started = s.inspect(&t1.container("worker"))["State"]["StartedAt"].clone();
    let dry = s.slipway(&["restore", "--run", &run, "--tenant", &t1.project, "--dry-run"]);
    assert_eq!(dry.code, 0, "{} {}", dry.stdout, dry.stderr);
    assert!(dry.stdout.contains("would stop"), "{}", dry.stdout);
    assert_eq!((tree(&app_vol), tree(&side_vol)), snap, "the dry run touched a volume");

    let out = s.slipway(&["restore", "--run", &run, "--tenant", &t1.project, "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    // Every mount has what it held before that restore again, byte for byte.
    assert_eq!((tree(&app_vol), tree(&side_vol)), newer, "a mount did not get its data back");
    // The same containers, running; the worker (no data) never stopped.
    let now: Vec<_> = ["app", "side", "worker"].map(|x| looks(&s, &t1.container(x))).to_vec();
    assert_eq!(now, before);
    assert_eq!(s.inspect(&t1.container("worker"))["State"]["StartedAt"], worker_started, "the worker was stopped");
    // What each mount held (the snapshot's data) is kept in turn.
    let mounts = out.json()["report"]["mounts"].as_array().cloned().unwrap_or_default();
    assert_eq!(mounts.len(), 2, "{}", out.stdout);
    let kept: Vec<String> =
        mounts.iter().map(|m| tree(Path::new(m["replaced"].as_str().expect("replaced data not kept")))).collect();
    assert!(kept.contains(&snap.0) && kept.contains(&snap.1), "{}", out.stdout);
}

#[test]
fn restore_run_of_a_stack_restore_killed_between_its_swaps_is_undone_by_recover() {
    let s = Sandbox::new();
    let (t1, run, snap, _) = restored_over_newer(&s);
    let (app_vol, side_vol) = vols(&t1);
    let before: Vec<_> = ["app", "side", "worker"].map(|x| looks(&s, &t1.container(x))).to_vec();
    let point = "restore-stack-swapped-one";
    s.slipway_killed_at(&["restore", "--run", &run, "--tenant", &t1.project], point);
    let rec = s.slipway(&["recover", "--json"]);
    assert_eq!(rec.code, 0, "{} {}", rec.stdout, rec.stderr);
    assert_eq!((tree(&app_vol), tree(&side_vol)), snap, "a mount was not put back by recover");
    let now: Vec<_> = ["app", "side", "worker"].map(|x| looks(&s, &t1.container(x))).to_vec();
    assert_eq!(now, before, "the stack is not back as it was");
}

/// A stack drill killed at each of its steps — its scratch copies extracted, one service of
/// the drill started, all started, all healthy, halfway through its cleanup — leaves its
/// containers, network and scratch dirs to `recover`, which removes them all; the live stack
/// is only looked at (the same containers, never restarted, its volumes as they were).
#[test]
fn a_stack_drill_killed_at_each_of_its_steps_leaves_nothing_after_recover_and_the_live_stack_untouched() {
    let s = Sandbox::new();
    let img = images(&s);
    let t1 = compose_tenant(&s, "t1", &img);
    let (app_vol, side_vol) = vols(&t1);
    std::fs::create_dir_all(app_vol.join("db")).unwrap();
    std::fs::write(app_vol.join("db/records.txt"), "customer row\n".repeat(100)).unwrap();
    s.write_fleet(&stack_fleet(&s, &img.app, &img.worker, &img.side, ""));
    assert_eq!(s.slipway(&["snapshot"]).code, 0);
    let live = || {
        let c: Vec<_> = ["app", "side", "worker"]
            .map(|x| {
                let i = s.inspect(&t1.container(x));
                (i["Id"].clone(), i["State"]["StartedAt"].clone(), i["State"]["Running"].clone())
            })
            .to_vec();
        (c, tree(&app_vol), tree(&side_vol))
    };
    let before = live();
    for point in [
        "drill-after-extract",
        "drill-stack-started-one",
        "drill-after-start",
        "drill-healthy",
        "drill-stack-cleanup-halfway",
    ] {
        s.slipway_killed_at(&["drill", "--tenant", &t1.project, "--latest"], point);
        assert!(!drill_leftovers(&s, &t1.project).is_empty(), "{point}: the kill left nothing to recover");
        let rec = s.slipway(&["recover", "--json"]);
        assert_eq!(rec.code, 0, "{point}: {} {}", rec.stdout, rec.stderr);
        assert!(drill_leftovers(&s, &t1.project).is_empty(), "{point}: {:?}", drill_leftovers(&s, &t1.project));
        assert_eq!(live(), before, "{point}: the live stack changed");
    }
    let runs = s.slipway(&["runs", "--json"]).report::<crate::support::reports::Runs>().runs;
    let drills: Vec<_> = runs.iter().filter(|r| r.job == "drill").map(|r| r.outcome.clone()).collect();
    assert_eq!(drills, vec![Some("recovered".to_string()); 5], "{runs:?}");
}

/// A Postgres of a stack tenant (`[app.database]`), outside its compose project, as operators
/// often run it: the pg fixture, a database `app` with a table of customer rows.
struct StackPg(String);

impl Drop for StackPg {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", "-v", &self.0]).output();
    }
}

impl StackPg {
    /// The pg fixture as `<sandbox>-pg-<project>`, serving a database `app` (no table yet).
    fn start(s: &Sandbox, project: &str) -> StackPg {
        let pg = StackPg(format!("{}-pg-{project}", s.id()));
        let label = format!("slipway.test.db={}", s.id());
        docker(&["run", "-d", "--name", &pg.0, "--label", &label, crate::support::Env::get().fixture("pg")]);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while Command::new("docker")
            .args(["exec", &pg.0, "psql", "-U", "postgres", "-c", "select 1"])
            .output()
            .map_or(true, |o| !o.status.success())
        {
            assert!(std::time::Instant::now() < deadline, "the pg fixture did not come up");
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        docker(&["exec", &pg.0, "psql", "-U", "postgres", "-c", "create database app"]);
        pg
    }

    /// The `[app.database]` table naming these containers.
    fn fleet(s: &Sandbox) -> String {
        format!(
            "[app.database]\nkind = \"postgres\"\ncontainer = \"{}-pg-{{tenant}}\"\ndatabases = [\"app\"]\nuser = \"postgres\"\n",
            s.id()
        )
    }

    fn sql(&self, sql: &str) -> Option<String> {
        let o = Command::new("docker")
            .args(["exec", &self.0, "psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-U", "postgres"])
            .args(["-d", "app", "-c", sql])
            .output()
            .ok()?;
        o.status.success().then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
    }
}

#[test]
fn a_stack_snapshot_with_database_dumps_is_restored_with_its_database_replayed_and_every_volume_back() {
    let s = Sandbox::new();
    let img = images(&s);
    let t1 = compose_tenant(&s, "t1", &img);
    let (app_vol, side_vol) = vols(&t1);
    let pg = StackPg::start(&s, &t1.project);
    pg.sql("create table customers (id int primary key, name text); insert into customers select g, 'customer ' || g from generate_series(1, 500) g").unwrap();
    std::fs::create_dir_all(app_vol.join("db")).unwrap();
    std::fs::write(app_vol.join("db/records.txt"), "customer row\n".repeat(100)).unwrap();
    s.write_fleet(&stack_fleet(&s, &img.app, &img.worker, &img.side, &StackPg::fleet(&s)));
    let out = s.slipway(&["snapshot", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let snap = (tree(&app_vol), tree(&side_vol));
    let rows = || pg.sql("select count(*) || ':' || md5(string_agg(name, ',' order by id)) from customers").unwrap();
    let rows_then = rows();
    // After the snapshot: rows deleted, files changed.
    pg.sql("delete from customers where id > 100; insert into customers values (9999, 'newer')").unwrap();
    std::fs::write(app_vol.join("db/records.txt"), "newer\n").unwrap();
    std::fs::write(side_vol.join("newer"), "newer").unwrap();
    assert_ne!(rows(), rows_then);
    let before: Vec<_> = ["app", "side", "worker"].map(|x| looks(&s, &t1.container(x))).to_vec();

    let out = s.slipway(&["restore", "--latest", "--tenant", &t1.project, "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert_eq!(out.json()["report"]["databases"], 1, "{}", out.stdout);
    // The database as the snapshot took it, every volume byte-identical, every container back.
    assert_eq!(rows(), rows_then, "the database was not replayed");
    assert_eq!((tree(&app_vol), tree(&side_vol)), snap);
    let now: Vec<_> = ["app", "side", "worker"].map(|x| looks(&s, &t1.container(x))).to_vec();
    assert_eq!(now, before);

    // Killed inside the replay: recover puts every mount back to match the database, which the
    // replay (one transaction) left as it was.
    pg.sql("insert into customers values (10000, 'after the restore')").unwrap();
    std::fs::write(side_vol.join("after"), "after").unwrap();
    let (data, rows_now) = ((tree(&app_vol), tree(&side_vol)), rows());
    s.slipway_killed_at(&["restore", "--latest", "--tenant", &t1.project], "restore-stack-replaying");
    let rec = s.slipway(&["recover", "--json"]);
    assert_eq!(rec.code, 0, "{} {}", rec.stdout, rec.stderr);
    assert_eq!((tree(&app_vol), tree(&side_vol)), data, "a mount was not put back after the killed replay");
    assert_eq!(rows(), rows_now);
    let now: Vec<_> = ["app", "side", "worker"].map(|x| looks(&s, &t1.container(x))).to_vec();
    assert_eq!(now, before);
}

/// A stack whose database runs outside its project: the drill replays the dump into a scratch
/// database made from that container (on the drill's network only) before the first service
/// starts, and answers `check` from the dump, not from the live database; the scratch database
/// goes with the drill, and one a killed drill left goes with `recover`.
#[test]
fn a_stack_drill_replays_a_database_outside_the_project_into_a_scratch_one_that_goes_with_it() {
    let s = Sandbox::new();
    let img = images(&s);
    let t1 = compose_tenant(&s, "t1", &img);
    let pg = StackPg::start(&s, &t1.project);
    pg.sql("create table customers (id int primary key); insert into customers select generate_series(1, 500)")
        .unwrap();
    let with_check = format!("{}check = \"select count(*) from customers\"\n", StackPg::fleet(&s));
    s.write_fleet(&stack_fleet(&s, &img.app, &img.worker, &img.side, &with_check));
    let out = s.slipway(&["snapshot", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    // After the snapshot the live database changes: the check must answer from the dump.
    pg.sql("delete from customers where id > 10").unwrap();
    let live = || {
        let c: Vec<_> = ["app", "side", "worker"].map(|x| looks(&s, &t1.container(x))).to_vec();
        (c, s.inspect(&pg.0)["Id"].clone(), s.inspect(&pg.0)["State"]["StartedAt"].clone())
    };
    let before = live();

    let out = s.slipway(&["drill", "--tenant", &t1.project, "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let t = &out.json()["report"]["tenants"][0];
    assert_eq!(t["outcome"], "passed", "{t}");
    assert_eq!(t["db_check"], "500", "{t}");
    let scratch = t["db_container"].as_str().unwrap_or_default().to_string();
    assert!(scratch.starts_with("slipway-drill-") && scratch.ends_with("--db"), "{t}");
    assert!(!s.container_exists(&scratch), "the scratch database was not removed");
    assert!(drill_leftovers(&s, &t1.project).is_empty(), "{:?}", drill_leftovers(&s, &t1.project));
    assert_eq!(live(), before, "the live stack or its database container changed");
    assert_eq!(pg.sql("select count(*) from customers").as_deref(), Some("10"));

    // Killed right after the replay: the scratch database carries the drill's label, and
    // `recover` removes it with the rest.
    s.slipway_killed_at(&["drill", "--tenant", &t1.project], "drill-after-database");
    let runs = s.slipway(&["runs", "--json"]).report::<crate::support::reports::Runs>().runs;
    let run = runs.into_iter().find(|r| r.job == "drill").map(|r| r.id).expect("the killed drill's run");
    let label = format!("label=slipway.drill={run}");
    let made = || docker(&["ps", "-a", "--filter", &label, "--format", "{{.Names}}"]);
    assert!(made().lines().any(|n| n.ends_with("--db")), "the kill left no scratch database: {}", made());
    let rec = s.slipway(&["recover", "--json"]);
    assert_eq!(rec.code, 0, "{} {}", rec.stdout, rec.stderr);
    assert_eq!(made(), "", "recover left the drill's containers");
    assert!(drill_leftovers(&s, &t1.project).is_empty(), "{:?}", drill_leftovers(&s, &t1.project));
    assert_eq!(live(), before, "the live stack or its database container changed");
    assert_eq!(pg.sql("select count(*) from customers").as_deref(), Some("10"));
}
