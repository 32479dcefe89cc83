//! A hostile tenant against the real binary (issue 24): it controls every byte of its data dir
//! and changes it between slipway's runs. Nothing slipway does as root may reach outside it.

use std::os::unix::fs::symlink;
use std::process::Command;

use crate::support::reports::Snapshot;
use crate::support::{tree_hash, Sandbox};

fn snapshot(s: &Sandbox) -> Snapshot {
    let out = s.slipway(&["snapshot", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    out.report()
}

/// Make today's snapshot an earlier day's, so the next snapshot is a new day's.
fn age_snapshot(s: &Sandbox, day: &str, to: &str) {
    let daily = s.backups().join("daily");
    std::fs::rename(daily.join(day), daily.join(to)).unwrap();
}

#[test]
fn a_dir_swapped_for_a_symlink_to_the_data_root_between_two_snapshots_erases_no_tenant() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    s.add_tenant("t1", &v1);
    s.add_tenant("t2", &v1);
    // t1 builds a tree whose names match the other tenants' and the host's.
    s.write_data("t1", "x/t2/db/rows", "t1's decoy");
    s.write_data("t1", "x/victim/passwd", "t1's decoy");
    s.write_data("t2", "db/rows", "t2's customer rows");
    let host = s.root().join("host");
    std::fs::create_dir_all(host.join("victim")).unwrap();
    std::fs::write(host.join("victim/passwd"), "root:x:0:0").unwrap();
    s.write_fleet(&s.fleet_app(&v1, ""));
    let first = snapshot(&s);
    age_snapshot(&s, &first.day, "2000-01-01");
    let (t2_before, host_before) = (tree_hash(&s.data_dir("t2")), tree_hash(&host));

    // Between two daily snapshots t1 swaps `x` for a symlink to the dir of every data dir.
    std::fs::remove_dir_all(s.data_dir("t1").join("x")).unwrap();
    symlink(s.data_dir("t1").parent().unwrap(), s.data_dir("t1").join("x")).unwrap();
    let second = snapshot(&s);
    assert_eq!(tree_hash(&s.data_dir("t2")), t2_before, "t2's live data was changed by t1's snapshot");
    assert!(second.archives.iter().all(|a| a.outcome != "failed"), "{second:?}");
    age_snapshot(&s, &second.day, "2000-01-02");

    // And to a host dir.
    std::fs::remove_file(s.data_dir("t1").join("x")).unwrap();
    symlink(&host, s.data_dir("t1").join("x")).unwrap();
    snapshot(&s);
    assert_eq!(tree_hash(&host), host_before, "a host dir was changed by t1's snapshot");
    assert_eq!(tree_hash(&s.data_dir("t2")), t2_before);
    // The archive keeps the symlink as a symlink: restoring it gives t1 its tree back.
    let out = s.slipway(&["verify", "--deep"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
}

#[test]
fn a_data_dir_swapped_for_a_symlink_is_refused_by_the_snapshot_and_nothing_outside_is_read() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    s.add_tenant("t1", &v1);
    s.add_tenant("t2", &v1);
    s.write_data("t1", "a", "t1");
    s.write_data("t2", "b", "t2 data");
    s.write_fleet(&s.fleet_app(&v1, ""));
    // Whoever can write the dir of data dirs replaces t1's data dir by a symlink to t2's.
    let t1 = s.data_dir("t1");
    std::fs::remove_dir_all(&t1).unwrap();
    symlink(s.data_dir("t2"), &t1).unwrap();
    let out = s.slipway(&["snapshot", "--json"]);
    assert_ne!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let snap: Snapshot = out.report();
    let t1_row = snap.archives.iter().find(|a| a.tenant.as_deref() == Some("t1")).unwrap();
    assert_eq!(t1_row.outcome, "failed", "{snap:?}");
    assert!(out.stdout.contains("symlink") || out.stderr.contains("symlink"), "{} {}", out.stdout, out.stderr);
    // t2 is archived as itself, once.
    let t2_row = snap.archives.iter().find(|a| a.tenant.as_deref() == Some("t2")).unwrap();
    assert_eq!(t2_row.outcome, "archived", "{snap:?}");
}

#[test]
fn config_sandbox_lets_the_units_write_exactly_the_dirs_this_host_uses() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    s.write_fleet(&s.fleet_app(&v1, ""));
    // Printed only: --write would install the drop-in on this machine's systemd.
    let out = s.slipway(&["config", "sandbox", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let r = &out.json()["report"];
    let paths: Vec<std::path::PathBuf> =
        r["write_paths"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().into()).collect();
    let data_root = s.data_dir("t1").parent().unwrap().to_path_buf();
    for need in [s.state(), s.backups(), data_root] {
        assert!(paths.iter().any(|p| need.starts_with(p)), "{} not writable in {paths:?}", need.display());
    }
    assert_eq!(r["written"], false);
    assert!(r["text"].as_str().unwrap().contains("ReadWritePaths="), "{r}");
}

#[test]
fn a_mount_inside_a_data_dir_is_never_archived_emptied_or_swapped_and_the_plans_name_it() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let v2 = s.push_fixture_as("v2", "app");
    let name = s.add_tenant("t1", &v1);
    s.write_data("t1", "db/rows", "rows\n");
    let cache = s.data_dir("t1").join("cache");
    let _mount = s.mount_tmpfs(&cache, "4m");
    std::fs::write(cache.join("other-fs"), "mounted by the host").unwrap();
    s.write_fleet(&s.fleet_app(&v1, ""));
    let out = s.slipway(&["snapshot", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let snap: Snapshot = out.report();
    let list = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("zstd -dc {} | tar -t", snap.archives[0].path.display()))
        .output()
        .unwrap();
    let names = String::from_utf8_lossy(&list.stdout);
    assert!(names.contains("db/rows") && !names.contains("other-fs"), "{names}");
    // A restore refuses before it stops anything; a rollout's plan names the mount.
    let started = s.inspect(&name)["State"]["StartedAt"].clone();
    let out = s.slipway(&["restore", "--tenant", "t1", "--day", &snap.day, "--json"]);
    assert_eq!(out.code, 2, "{} {}", out.stdout, out.stderr);
    assert!(out.stdout.contains("mount point inside"), "{}", out.stdout);
    s.write_fleet(&s.fleet_app(&v2, ""));
    let out = s.slipway(&["rollout", "--json"]);
    assert_ne!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert!(out.stdout.contains("mount point inside"), "{}", out.stdout);
    assert_eq!(s.inspect(&name)["State"]["StartedAt"], started, "the tenant was stopped");
    assert_eq!(s.image_of(&name), v1);
    assert_eq!(std::fs::read_to_string(cache.join("other-fs")).unwrap(), "mounted by the host");
}

#[test]
fn on_a_filesystem_without_rename_exchange_a_failed_release_still_swaps_the_copy_back() {
    // SLIPWAY_TEST_NO_EXCHANGE (test builds only) makes every swap take the journaled three
    // renames, as on OpenZFS before 2.2, NFS or CIFS.
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let bad = s.push_fixture_as("unhealthy", "app");
    let name = s.add_tenant("t1", &v1);
    s.write_data("t1", "db/records.txt", &"customer row\n".repeat(1000));
    let data = s.data_dir("t1");
    let before = tree_hash(&data);
    s.write_fleet(&s.fleet_app(&bad, "health = { path = \"/api/health\", port = 8080, timeout_s = 3 }\n"));
    let out = s.slipway_env(&["rollout", "--json"], &[("SLIPWAY_TEST_NO_EXCHANGE", "1")]);
    assert_eq!(out.code, 3, "{} {}", out.stdout, out.stderr);
    let run = out.run_id();
    assert_eq!(tree_hash(&data), before);
    assert_eq!(s.image_of(&name), v1);
    assert_eq!(s.inspect(&name)["State"]["Running"], true);
    let kept = s.backups().join("replaced").join(&run).join("t1");
    assert!(crate::support::files_under(&kept).iter().any(|p| p.to_string_lossy().contains("written-by-unhealthy")));
    // No journal or aside dir is left beside the data dirs.
    let left: Vec<String> = std::fs::read_dir(data.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("slipway-swap"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // A restore takes the same swap.
    let snap = s.slipway(&["snapshot", "--json"]);
    assert_eq!(snap.code, 0, "{}", snap.stderr);
    s.write_data("t1", "db/records.txt", "overwritten\n");
    let out = s.slipway_env(&["restore", "--tenant", "t1", "--latest", "--json"], &[("SLIPWAY_TEST_NO_EXCHANGE", "1")]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert_eq!(tree_hash(&data), before);
}

/// Issue #24 item 3, against the real binary: one tenant holds a 1 TiB sparse file, another a
/// tree 10 000 levels deep, a third a fifo beside its data. The daily snapshot stores the
/// sparse file sparse (its archive is its data, and so is its restore), refuses the deep tree
/// naming it, and archives every other tenant as if nothing were there.
#[test]
fn a_terabyte_sparse_file_a_10000_deep_tree_and_a_fifo_neither_stall_nor_starve_the_snapshot() {
    use std::os::unix::fs::{FileExt, MetadataExt};
    const TIB: u64 = 1 << 40;
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    for t in ["t1", "t2", "t3"] {
        s.add_tenant(t, &v1);
    }
    s.write_data("t1", "rows", "t1's rows");
    let f = std::fs::File::create(s.data_dir("t1").join("disk.img")).unwrap();
    f.set_len(TIB).unwrap();
    f.write_all_at(b"the middle of a terabyte", TIB / 2).unwrap();
    drop(f);
    let deep = Command::new("python3")
        .arg("-c")
        .arg("import os,sys\nos.chdir(sys.argv[1])\nfor _ in range(10000):\n    os.mkdir('d'); os.chdir('d')\nopen('leaf','w').write('x')")
        .arg(s.data_dir("t2"))
        .status()
        .unwrap();
    assert!(deep.success());
    s.write_data("t3", "db/rows", "t3's customer rows");
    let fifo = s.data_dir("t3").join("pipe");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    s.write_fleet(&s.fleet_app(&v1, ""));
    let t3_before = tree_hash(&s.data_dir("t3"));

    let started = std::time::Instant::now();
    let out = s.slipway(&["snapshot", "--json"]);
    let took = started.elapsed();
    assert_ne!(out.code, 0, "t2's snapshot failed, so the run is not a success: {} {}", out.stdout, out.stderr);
    let snap: Snapshot = out.report();
    let row = |t: &str| snap.archives.iter().find(|a| a.tenant.as_deref() == Some(t)).unwrap();
    assert_eq!(row("t1").outcome, "archived", "{snap:?}");
    assert_eq!(row("t3").outcome, "archived", "{snap:?}");
    assert_eq!(row("t2").outcome, "failed", "{snap:?}");
    let why = row("t2").detail.clone().unwrap_or_default();
    assert!(why.contains("PATH_MAX") && why.contains(&s.data_dir("t2").display().to_string()), "{why}");
    let t1_archive = std::fs::metadata(snap.dir.join(&row("t1").path)).unwrap().len();
    assert!(t1_archive < 1 << 20, "t1's archive of a sparse TiB is {t1_archive} bytes");
    assert!(took < std::time::Duration::from_secs(120), "the snapshot took {took:?}");
    assert_eq!(tree_hash(&s.data_dir("t3")), t3_before);

    // t1 is restored as it was: a terabyte of apparent size, its data, no terabyte of disk.
    std::fs::remove_file(s.data_dir("t1").join("disk.img")).unwrap();
    let out = s.slipway(&["restore", "--tenant", "t1", "--latest"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let back = std::fs::File::open(s.data_dir("t1").join("disk.img")).unwrap();
    let m = back.metadata().unwrap();
    assert_eq!(m.len(), TIB);
    assert!(m.blocks() * 512 < 8 << 20, "the restored file takes {} bytes of disk", m.blocks() * 512);
    let mut got = [0u8; 24];
    back.read_exact_at(&mut got, TIB / 2).unwrap();
    assert_eq!(&got, b"the middle of a terabyte");
    assert_eq!(std::fs::read_to_string(s.data_dir("t1").join("rows")).unwrap(), "t1's rows");
}
