//! The remote as it is, not as the run record remembers it (issue #25): a sync never shrinks
//! what a remote day manifest names, a sync to an emptied or another bucket uploads again,
//! prune deletes a local copy only when its remote objects are listed, and one bad remote
//! manifest or another tool's multipart upload does not derail a job.

use crate::offsite::{kept_days, recent_days, s3_client, sha256_hex, start_upload, uploads_in_progress, with_snapshot};
use crate::support::reports::{Prune, Sync, Verify};
use crate::support::{noise, tree_hash, Env, Sandbox};

/// The manifest of `day`, read from the local snapshot dir.
fn local_manifest(s: &Sandbox, day: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(s.backups().join("daily").join(day).join("MANIFEST.json")).unwrap()).unwrap()
}

/// The tenants a manifest lists.
fn tenants(m: &serde_json::Value) -> Vec<String> {
    let mut t: Vec<String> =
        m["archives"].as_array().unwrap().iter().filter_map(|a| a["tenant"].as_str().map(str::to_string)).collect();
    t.sort();
    t
}

/// Drop `tenant` from the local snapshot of `day` (manifest and files), as if it had not been
/// snapshotted that day.
fn drop_tenant(s: &Sandbox, day: &str, tenant: &str) {
    let dir = s.backups().join("daily").join(day);
    let mut m = local_manifest(s, day);
    m["archives"].as_array_mut().unwrap().retain(|a| a["tenant"].as_str() != Some(tenant));
    std::fs::write(dir.join("MANIFEST.json"), serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    for f in [format!("tenants/{tenant}.tar.zst"), format!("tenants/{tenant}.files.json.zst")] {
        std::fs::remove_file(dir.join(f)).unwrap();
    }
}

/// The days the remote holds any object of, under the sandbox prefix of the shared S3 server.
fn remote_days(s: &Sandbox, bucket: &str) -> Vec<String> {
    let env = Env::get();
    let days: std::collections::BTreeSet<String> = s
        .remote_objects(&env.s3_endpoint, &env.s3_access_key, &env.s3_secret_key, bucket)
        .into_iter()
        .map(|(k, _)| k.split('/').nth(1).unwrap().to_string())
        .collect();
    days.into_iter().collect()
}

#[test]
fn a_sync_after_a_local_prune_never_drops_a_tenant_day_the_remote_still_holds() {
    let s = Sandbox::new();
    // t1 was not snapshotted on the last two days: locally its two days are its newest two,
    // while t2's two oldest go.
    let days = two_tenants_over_days(&s, 4);
    let t2_data = tree_hash(&s.data_dir("t2"));
    s.append_config("[retention]\nkeep_daily = 2\n");
    let bucket = s.use_shared_remote("[remote.retention]\nkeep_daily = 7\n");
    assert_eq!(s.slipway(&["sync"]).code, 0);
    let out = s.slipway(&["prune", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert_eq!(tenants(&local_manifest(&s, &days[0])), ["t1"], "the local prune should have dropped t2 there");
    // The local day manifest now names t1 only; the remote still holds t2 of that day.
    let again = s.slipway(&["sync", "--json"]);
    assert_eq!(again.code, 0, "{} {}", again.stdout, again.stderr);
    for d in &days[..2] {
        let remote: serde_json::Value =
            serde_json::from_slice(&s.remote_object_bytes(&bucket, &format!("daily/{d}/MANIFEST.json"))).unwrap();
        assert_eq!(tenants(&remote), ["t1", "t2"], "{d}: the remote manifest lost a tenant it holds");
    }
    // The merged manifest is what the remote has now: a sync with nothing new sends nothing.
    let third = s.slipway(&["sync", "--json"]);
    assert_eq!(third.report::<Sync>().uploaded_bytes, 0, "{}", third.stdout);
    // The remote's retention sees t2's days there again (it alone decides when they go).
    let plan = s.slipway(&["prune", "--dry-run", "--json"]).report::<Prune>();
    assert!(
        plan.items.iter().any(|i| i.location == "remote" && i.snapshot == days[0] && i.tenant.as_deref() == Some("t2")),
        "{:?}",
        plan.items
    );
    let to = s.root().join("t2-from-remote");
    let r = s.slipway(&["restore", "--tenant", "t2", "--day", &days[0], "--remote", "--to", to.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{} {}", r.stdout, r.stderr);
    assert_eq!(tree_hash(&to), t2_data);
    let v = s.slipway(&["verify", "--remote", "--json"]);
    assert_eq!(v.code, 0, "{}", v.stdout);
    let checked: Vec<String> =
        v.report::<Verify>().archives.iter().map(|a| a.archive.to_string_lossy().into_owned()).collect();
    assert!(checked.contains(&format!("daily/{}/tenants/t2.tar.zst", days[0])), "{checked:?}");
}

/// Two tenants with today's snapshot, made into `n` days; t1 is not in the last two. Returns
/// the days.
fn two_tenants_over_days(s: &Sandbox, n: i64) -> Vec<String> {
    let v1 = s.push_fixture_as("v1", "app");
    for t in ["t1", "t2"] {
        s.add_tenant(t, &v1);
        std::fs::write(s.data_dir(t).join("blob.bin"), noise(30_000, if t == "t1" { 11 } else { 12 })).unwrap();
    }
    s.write_fleet(&s.fleet_app(&v1, ""));
    let snap = s.slipway(&["snapshot", "--json"]);
    assert_eq!(snap.code, 0, "{} {}", snap.stdout, snap.stderr);
    let today = snap.report::<crate::support::reports::Snapshot>().day;
    let days = recent_days(s, &today, n);
    for d in &days[days.len() - 2..] {
        drop_tenant(s, d, "t1");
    }
    days
}

#[test]
fn a_tenant_day_the_remote_retention_pruned_from_a_day_it_keeps_is_not_uploaded_again() {
    let s = Sandbox::new();
    let days = two_tenants_over_days(&s, 4);
    // Locally everything stays; on the remote t2's two oldest days go while t1 keeps them.
    s.append_config("[retention]\nkeep_daily = 7\n");
    let bucket = s.use_shared_remote("[remote.retention]\nkeep_daily = 2\n");
    assert_eq!(s.slipway(&["sync"]).code, 0);
    let out = s.slipway(&["prune", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let remote_tenants = |d: &str| {
        tenants(&serde_json::from_slice(&s.remote_object_bytes(&bucket, &format!("daily/{d}/MANIFEST.json"))).unwrap())
    };
    assert_eq!(remote_tenants(&days[0]), ["t1"], "the remote prune should have dropped t2 there");
    let again = s.slipway(&["sync", "--json"]);
    assert_eq!(again.code, 0, "{} {}", again.stdout, again.stderr);
    assert_eq!(again.report::<Sync>().uploaded_bytes, 0, "{}", again.stdout);
    for d in &days[..2] {
        assert_eq!(remote_tenants(d), ["t1"], "{d}");
    }
    assert_eq!(s.slipway(&["verify", "--remote"]).code, 0);
}

#[test]
fn a_sync_to_an_emptied_bucket_or_another_prefix_uploads_everything_again() {
    let s = Sandbox::new();
    with_snapshot(&s, &noise(50_000, 13));
    let want = tree_hash(&s.data_dir("t1"));
    let bucket = s.use_shared_remote("");
    assert_eq!(s.slipway(&["sync"]).code, 0);
    s.empty_remote(&bucket, "slipway/host-1");
    let out = s.slipway(&["sync", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let report: Sync = out.report();
    assert!(report.retired.is_empty(), "an emptied bucket is not the remote's retention: {}", out.stdout);
    assert_eq!(report.files.iter().filter(|f| f.action == "uploaded").count(), 3, "{}", out.stdout);
    let env = Env::get();
    assert_eq!(s.remote_objects(&env.s3_endpoint, &env.s3_access_key, &env.s3_secret_key, &bucket).len(), 3);
    // Another prefix is another remote: everything goes up there too, and restores from there.
    s.set_remote_prefix("slipway/host-2");
    let moved = s.slipway(&["sync", "--json"]);
    assert_eq!(moved.code, 0, "{} {}", moved.stdout, moved.stderr);
    assert_eq!(moved.report::<Sync>().files.iter().filter(|f| f.action == "uploaded").count(), 3, "{}", moved.stdout);
    std::fs::remove_dir_all(s.backups().join("daily")).unwrap();
    let to = s.root().join("from-host-2");
    let r = s.slipway(&["restore", "--tenant", "t1", "--latest", "--remote", "--to", to.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{} {}", r.stdout, r.stderr);
    assert_eq!(tree_hash(&to), want);
}

#[test]
fn prune_keeps_a_local_copy_whose_remote_objects_were_deleted_after_the_sync() {
    let s = Sandbox::new();
    let today = with_snapshot(&s, &noise(20_000, 14));
    let days = recent_days(&s, &today, 3);
    s.append_config("[retention]\nkeep_daily = 1\n");
    let bucket = s.use_shared_remote("[remote.retention]\nkeep_daily = 7\n");
    assert_eq!(s.slipway(&["sync"]).code, 0);
    // A lifecycle rule (or a person) deleted objects after the sync; the manifests still name them.
    let gone =
        [format!("daily/{}/tenants/t1.tar.zst", days[0]), format!("daily/{}/tenants/t1.files.json.zst", days[1])];
    for key in &gone {
        s.delete_remote_object(&bucket, key);
    }
    let out = s.slipway(&["prune", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert_eq!(kept_days(&s.backups().join("daily")), days, "{}", out.stdout);
    let items = out.report::<Prune>().items;
    for (day, key) in days.iter().zip(&gone) {
        let item = items.iter().find(|i| i.location == "local" && i.snapshot == *day).unwrap();
        assert!(item.keep && item.reasons.iter().any(|r| r.contains(key.as_str())), "{day}: {:?}", item.reasons);
    }
    assert_eq!(s.slipway(&["verify"]).code, 0, "the kept local copies must still verify");
}

#[test]
fn one_unreadable_remote_manifest_is_named_and_kept_and_the_rest_is_still_pruned() {
    let s = Sandbox::new();
    let today = with_snapshot(&s, &noise(20_000, 15));
    let days = recent_days(&s, &today, 3);
    s.append_config("[retention]\nkeep_daily = 1\n");
    let bucket = s.use_shared_remote("[remote.retention]\nkeep_daily = 1\n");
    assert_eq!(s.slipway(&["sync"]).code, 0);
    let bad_key = format!("daily/{}/MANIFEST.json", days[1]);
    let garbage = b"{ this is not a manifest";
    s.put_remote_object(&bucket, &bad_key, garbage, &sha256_hex(garbage));
    let out = s.slipway(&["prune", "--json"]);
    assert_eq!(out.code, 1, "an unreadable remote manifest must fail the job: {} {}", out.stdout, out.stderr);
    let report: Prune = out.report();
    assert!(report.remote_unreadable.iter().any(|w| w.contains(&bad_key)), "{}", out.stdout);
    // The day that cannot be read is kept on both sides; the oldest one went on both.
    assert_eq!(kept_days(&s.backups().join("daily")), days[1..], "{}", out.stdout);
    assert_eq!(remote_days(&s, &bucket), days[1..], "{}", out.stdout);
    assert_eq!(s.remote_object_bytes(&bucket, &bad_key), garbage, "what could not be read was changed");
}

#[test]
fn with_an_empty_prefix_sync_aborts_only_its_own_stale_multipart_uploads() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s = Sandbox::new();
    with_snapshot(&s, b"data");
    let bucket = s.use_shared_remote("");
    s.set_remote_prefix("");
    let client = s3_client();
    // A slipway upload a dead run left, and another tool's upload in flight in the same bucket.
    let left = "daily/2026-01-01/tenants/t9.tar.zst";
    let other = "other-tool/nightly.tar";
    for key in [left, other] {
        rt.block_on(start_upload(&client, &bucket, key));
    }
    let out = s.slipway(&["sync", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert_eq!(rt.block_on(uploads_in_progress(&client, &bucket)), [other], "{}", out.stdout);
    assert_eq!(out.report::<Sync>().aborted_stale_uploads, 1, "{}", out.stdout);
}

/// The bytes a download of day `day`'s t1 archive and file list needs (plain objects).
fn t1_download_bytes(s: &Sandbox, day: &str) -> u64 {
    let dir = s.backups().join("daily").join(day).join("tenants");
    ["t1.tar.zst", "t1.files.json.zst"].iter().map(|f| std::fs::metadata(dir.join(f)).unwrap().len()).sum()
}

#[test]
fn restore_remote_and_verify_remote_deep_check_free_space_before_downloading() {
    let s = Sandbox::new();
    let day = with_snapshot(&s, &noise(3 << 20, 16));
    s.use_shared_remote("");
    assert_eq!(s.slipway(&["sync"]).code, 0);
    let need = t1_download_bytes(&s, &day).to_string();
    let data_before = tree_hash(&s.data_dir("t1"));
    // restore --remote downloads into the remote cache under the state dir: 1 MB there.
    let cache = s.state().join("remote-cache");
    let small = s.mount_tmpfs(&cache, "1m");
    let out = s.slipway(&["restore", "--tenant", "t1", "--latest", "--remote", "--json"]);
    let said = format!("{}{}", out.stdout, out.stderr);
    assert_ne!(out.code, 0, "{said}");
    assert!(said.contains(&cache.display().to_string()) && said.contains(&need), "no dir or bytes named: {said}");
    assert!(crate::support::files_under(&cache).is_empty(), "something was downloaded");
    assert_eq!(tree_hash(&s.data_dir("t1")), data_before);
    drop(small);
    // verify --remote --deep downloads into the temp dir.
    let tmp = s.root().join("small-tmp");
    let _small_tmp = s.mount_tmpfs(&tmp, "1m");
    let child = s.spawn(&["verify", "--remote", "--deep", "--json"], &[("TMPDIR", tmp.to_str().unwrap())]);
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_ne!(out.status.code(), Some(0), "{said}");
    assert!(said.contains(&tmp.display().to_string()) && said.contains(&need), "no dir or bytes named: {said}");
    assert!(crate::support::files_under(&tmp).is_empty(), "something was left behind");
}
