//! Off-site sync and retention against real S3 servers (`rclone serve s3`).

use std::path::Path;

use crate::support::reports::{Prune, Snapshot, Sync, Verify};
use crate::support::{files_under, noise, tree_hash, S3Server, Sandbox};

/// One tenant with data and today's snapshot taken.
pub(crate) fn with_snapshot(s: &Sandbox, data: &[u8]) -> String {
    let v1 = s.push_fixture_as("v1", "app");
    s.add_tenant("t1", &v1);
    std::fs::create_dir_all(s.data_dir("t1")).unwrap();
    std::fs::write(s.data_dir("t1").join("blob.bin"), data).unwrap();
    s.write_fleet(&s.fleet_app(&v1, ""));
    let out = s.slipway(&["snapshot", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    out.report::<Snapshot>().day
}

#[test]
fn sync_then_sync_again_uploads_nothing_and_a_changed_archive_goes_up_again() {
    let s = Sandbox::new();
    let day = with_snapshot(&s, &noise(200_000, 1));
    let env = crate::support::Env::get();
    let bucket = s.use_shared_remote("");
    let dry = s.slipway(&["sync", "--dry-run", "--json"]);
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert_eq!(dry.report::<Sync>().files.len(), 3);
    assert!(
        s.remote_objects(&env.s3_endpoint, &env.s3_access_key, &env.s3_secret_key, &bucket).is_empty(),
        "a dry run uploaded"
    );
    let first = s.slipway(&["sync", "--json"]);
    assert_eq!(first.code, 0, "{} {}", first.stdout, first.stderr);
    let objects = s.remote_objects(&env.s3_endpoint, &env.s3_access_key, &env.s3_secret_key, &bucket);
    let keys: Vec<&str> = objects.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            format!("daily/{day}/MANIFEST.json"),
            format!("daily/{day}/tenants/t1.files.json.zst"),
            format!("daily/{day}/tenants/t1.tar.zst")
        ]
    );
    let again = s.slipway(&["sync", "--json"]);
    let again_report: Sync = again.report();
    assert_eq!(again_report.files.len(), 0, "{}", again.stdout);
    assert_eq!(again_report.uploaded_bytes, 0);
    // The tenant changes and today's snapshot is redone: the new archive goes up again.
    std::fs::write(s.data_dir("t1").join("blob.bin"), noise(100_000, 2)).unwrap();
    assert_eq!(s.slipway(&["snapshot", "--force"]).code, 0);
    let third = s.slipway(&["sync", "--json"]);
    let up: Vec<String> = third.report::<Sync>().files.into_iter().map(|f| f.key).collect();
    assert!(up.contains(&format!("daily/{day}/tenants/t1.tar.zst")), "{up:?}");
    assert!(up.last().unwrap().ends_with("MANIFEST.json"), "the manifest must go up last: {up:?}");
    // Restore from the remote on a host that lost its local backups.
    let want = crate::support::tree_hash(&s.data_dir("t1"));
    std::fs::remove_dir_all(s.backups().join("daily")).unwrap();
    std::fs::write(s.data_dir("t1").join("blob.bin"), "lost").unwrap();
    let r = s.slipway(&["restore", "--tenant", "t1", "--latest", "--remote", "--json"]);
    assert_eq!(r.code, 0, "{} {}", r.stdout, r.stderr);
    assert_eq!(crate::support::tree_hash(&s.data_dir("t1")), want);
    let v = s.slipway(&["verify", "--remote", "--deep", "--json"]);
    assert_eq!(v.code, 0, "{}", v.stdout);
}

/// Spawn `slipway sync` with `SLIPWAY_TEST_PAUSE_AT=<point>:<ms>`, wait until it says it
/// reached the point (it sleeps there), and kill `server` meanwhile: the server dies at a known
/// point of the sync, never after a guessed sleep. Returns the sync's exit code.
fn kill_server_at(s: &Sandbox, server: &mut S3Server, point: &str) -> Option<i32> {
    let (child, reached, reader) = s.spawn_held_at(&["sync", "--json"], point, 4000);
    server.kill();
    let out = child.wait_with_output().unwrap();
    let stderr = reader.join().unwrap();
    assert!(reached, "the sync never reached {point}: {stderr}");
    assert_ne!(out.status.code(), Some(0), "the sync should have failed: {}", String::from_utf8_lossy(&out.stdout));
    out.status.code()
}

#[test]
fn a_sync_killed_with_the_s3_server_mid_multipart_is_completed_by_the_next_run() {
    let s = Sandbox::new();
    with_snapshot(&s, &noise(40 << 20, 3));
    let mut server = S3Server::start();
    let bucket = s.use_remote(&server.endpoint(), &server.key, &server.secret, "part_size_mb = 5\nconcurrency = 2\n");
    // Two of the archive's eight parts are sent when the server dies.
    kill_server_at(&s, &mut server, "upload-part-2");
    server.restart();
    // Nothing half-uploaded counts as present.
    let objects = s.remote_objects(&server.endpoint(), &server.key, &server.secret, &bucket);
    assert!(!objects.iter().any(|(k, _)| k.ends_with("MANIFEST.json") || k.ends_with(".tar.zst")), "{objects:?}");
    let next = s.slipway(&["sync", "--json"]);
    assert_eq!(next.code, 0, "{} {}", next.stdout, next.stderr);
    let local: Vec<(String, u64)> = files_under(&s.backups().join("daily"))
        .into_iter()
        .map(|p| {
            (p.strip_prefix(s.backups()).unwrap().to_string_lossy().into_owned(), std::fs::metadata(&p).unwrap().len())
        })
        .collect();
    let remote = s.remote_objects(&server.endpoint(), &server.key, &server.secret, &bucket);
    assert_eq!(remote, local);
    // Every sha256 matches: verify --remote --deep downloads and re-hashes each archive.
    let v = s.slipway(&["verify", "--remote", "--deep", "--json"]);
    assert_eq!(v.code, 0, "{}", v.stdout);
    assert!(v.report::<Verify>().archives[0].ok, "{}", v.stdout);
}

#[test]
fn verify_remote_deep_judges_an_archive_whose_metadata_the_server_lost_by_its_bytes() {
    let s = Sandbox::new();
    with_snapshot(&s, &noise(300_000, 8));
    let mut server = S3Server::start();
    s.use_remote(&server.endpoint(), &server.key, &server.secret, "");
    // The archive and its file list are up when the server dies, before the manifest is sent;
    // `rclone serve s3` keeps object metadata in memory, so after the restart they have no
    // sha256 metadata. The next sync finds them in its record of verified uploads.
    kill_server_at(&s, &mut server, "sync-before-manifest");
    server.restart();
    let next = s.slipway(&["sync", "--json"]);
    assert_eq!(next.code, 0, "{} {}", next.stdout, next.stderr);
    let up: Vec<String> = next.report::<Sync>().files.into_iter().map(|f| f.key).collect();
    assert!(up.iter().all(|k| k.ends_with("MANIFEST.json")), "{up:?}");
    // Without --deep only metadata can be checked, and there is none: a mismatch that says so.
    let shallow = s.slipway(&["verify", "--remote", "--json"]);
    assert_eq!(shallow.code, 1, "{}", shallow.stdout);
    // --deep re-hashes the bytes: they are the manifest's, so the archive is good.
    let v = s.slipway(&["verify", "--remote", "--deep", "--json"]);
    assert_eq!(v.code, 0, "{}", v.stdout);
    assert!(v.report::<Verify>().archives.iter().all(|a| a.ok), "{}", v.stdout);
}

/// An S3 client of the shared S3 server (path-style, the test credentials): the AWS SDK with
/// slipway's one HTTPS client.
pub(crate) fn s3_client() -> aws_sdk_s3::Client {
    use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, RequestChecksumCalculation};
    let env = crate::support::Env::get();
    let conf = aws_sdk_s3::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .http_client(slipway_jobs::adapters::remote::https_client())
        .region(Region::new(env.s3_region.clone()))
        .endpoint_url(&env.s3_endpoint)
        .force_path_style(true)
        .credentials_provider(Credentials::new(&env.s3_access_key, &env.s3_secret_key, None, None, "test"))
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// Start a multipart upload of `key` in `bucket` of the shared S3 server (what a run killed
/// mid-upload leaves, or another writer's upload in flight). Servers built on older gofakes3
/// (rclone) name the answer's root wrongly, which the SDK refuses to read: the upload is
/// started all the same, and a 200 answer is all this needs.
pub(crate) async fn start_upload(client: &aws_sdk_s3::Client, bucket: &str, key: &str) {
    match client.create_multipart_upload().bucket(bucket).key(key).send().await {
        Ok(_) => {}
        Err(e) => {
            let status = e.raw_response().map(|r| r.status().as_u16());
            assert_eq!(status, Some(200), "{}", aws_sdk_s3::error::DisplayErrorContext(&e));
        }
    }
}

/// The keys of the multipart uploads in progress in `bucket` of the shared S3 server.
pub(crate) async fn uploads_in_progress(client: &aws_sdk_s3::Client, bucket: &str) -> Vec<String> {
    let out = client.list_multipart_uploads().bucket(bucket).send().await.unwrap();
    let mut keys: Vec<String> = out.uploads().iter().filter_map(|u| u.key()).map(str::to_string).collect();
    keys.sort();
    keys
}

#[test]
fn a_multipart_upload_left_by_a_dead_run_is_aborted_by_the_next_sync_and_another_hosts_is_not() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s = Sandbox::new();
    with_snapshot(&s, b"data");
    let bucket = s.use_shared_remote("");
    let client = s3_client();
    // What a run killed mid-upload leaves (its parts are never an object), and an upload of
    // another host writing to the same bucket under its own prefix.
    let left = "slipway/host-1/daily/2026-01-01/tenants/t9.tar.zst";
    let other = "slipway/host-10/daily/2026-01-01/tenants/t9.tar.zst";
    for key in [left, other] {
        rt.block_on(start_upload(&client, &bucket, key));
    }
    assert_eq!(rt.block_on(uploads_in_progress(&client, &bucket)), [left, other]);
    let out = s.slipway(&["sync", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert_eq!(out.report::<Sync>().aborted_stale_uploads, 1, "{}", out.stdout);
    assert_eq!(rt.block_on(uploads_in_progress(&client, &bucket)), [other]);
}

#[test]
fn an_archive_damaged_after_the_snapshot_is_never_uploaded_or_recorded_as_verified() {
    // Both upload paths: one small object, and a multipart upload (5 MB parts).
    for (size, extra) in [(200_000usize, ""), (12 << 20, "part_size_mb = 5\nconcurrency = 2\n")] {
        let s = Sandbox::new();
        let day = with_snapshot(&s, &noise(size, 9));
        let env = crate::support::Env::get();
        let bucket = s.use_shared_remote(extra);
        let archive = s.backups().join("daily").join(&day).join("tenants/t1.tar.zst");
        let mut bytes = std::fs::read(&archive).unwrap();
        let at = bytes.len() - 100;
        bytes[at] ^= 0x01;
        std::fs::write(&archive, bytes).unwrap();
        let out = s.slipway(&["sync", "--json"]);
        assert_ne!(out.code, 0, "{size}: a damaged archive was synced: {}", out.stdout);
        assert!(
            out.stdout.contains("t1.tar.zst") || out.stderr.contains("t1.tar.zst"),
            "{} {}",
            out.stdout,
            out.stderr
        );
        let objects = s.remote_objects(&env.s3_endpoint, &env.s3_access_key, &env.s3_secret_key, &bucket);
        let keys: Vec<&str> = objects.iter().map(|(k, _)| k.as_str()).collect();
        assert!(!keys.iter().any(|k| k.ends_with("t1.tar.zst") || k.ends_with("MANIFEST.json")), "{size}: {keys:?}");
        // Nothing was recorded as verified: the next sync tries (and refuses) again.
        let again = s.slipway(&["sync", "--json"]);
        assert_ne!(again.code, 0, "{size}: {}", again.stdout);
    }
}

#[test]
fn wrong_credentials_get_a_clear_error_and_exit_code_6_and_no_secret_is_shown() {
    let s = Sandbox::new();
    with_snapshot(&s, b"data");
    let env = crate::support::Env::get();
    s.use_shared_remote("");
    let creds = s.root().join("s3.credentials");
    std::fs::write(
        &creds,
        format!("[default]\naws_access_key_id = {}\naws_secret_access_key = not-the-secret-XYZZY\n", env.s3_access_key),
    )
    .unwrap();
    let out = s.slipway(&["sync", "--json"]);
    assert_eq!(out.code, 6, "{} {}", out.stdout, out.stderr);
    assert!(out.stderr.contains("credentials"), "{}", out.stderr);
    for text in [&out.stdout, &out.stderr] {
        assert!(!text.contains("not-the-secret-XYZZY"), "the secret leaked: {text}");
    }
}

#[test]
fn without_a_credentials_file_the_keys_come_from_the_environment_or_a_shared_profile_or_exit_2() {
    let s = Sandbox::new();
    with_snapshot(&s, b"data");
    let env = crate::support::Env::get();
    s.use_shared_remote("");
    let text = std::fs::read_to_string(s.config_path()).unwrap();
    let text: String = text.lines().filter(|l| !l.starts_with("credentials_file")).map(|l| format!("{l}\n")).collect();
    std::fs::write(s.config_path(), text).unwrap();
    // A home without ~/.aws, and no instance metadata service to wait for.
    let home = s.root().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let home = home.to_str().unwrap();
    let base = [("HOME", home), ("AWS_EC2_METADATA_DISABLED", "true")];
    fn with<'a>(base: &[(&'a str, &'a str)], extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        base.iter().chain(extra).copied().collect()
    }
    // 1. AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.
    let keys =
        [("AWS_ACCESS_KEY_ID", env.s3_access_key.as_str()), ("AWS_SECRET_ACCESS_KEY", env.s3_secret_key.as_str())];
    let out = s.slipway_env(&["sync", "--json"], &with(&base, &keys));
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    // 2. The profile AWS_PROFILE of AWS_SHARED_CREDENTIALS_FILE ([default] there holds wrong keys).
    let shared = s.root().join("shared-credentials");
    std::fs::write(
        &shared,
        format!(
            "[default]\naws_access_key_id = nobody\naws_secret_access_key = wrong\n[ops]\naws_access_key_id = {}\n\
             aws_secret_access_key = {}\n",
            env.s3_access_key, env.s3_secret_key
        ),
    )
    .unwrap();
    let profile = [("AWS_SHARED_CREDENTIALS_FILE", shared.to_str().unwrap()), ("AWS_PROFILE", "ops")];
    let out = s.slipway_env(&["verify", "--remote", "--json"], &with(&base, &profile));
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    // 3. None at all: a config error before any request, naming the ways to give them.
    let out = s.slipway_env(&["sync"], &with(&base, &[]));
    assert_eq!(out.code, 2, "{} {}", out.stdout, out.stderr);
    assert!(out.stderr.contains("no credentials") && out.stderr.contains("credentials_file"), "{}", out.stderr);
}

#[test]
fn secrets_appear_in_no_output_record_or_metrics() {
    let s = Sandbox::new();
    with_snapshot(&s, b"data");
    let env = crate::support::Env::get();
    s.use_shared_remote("");
    let metrics = s.root().join("slipway.prom");
    let mut seen = String::new();
    for args in [
        vec!["sync", "--json"],
        vec!["sync"],
        vec!["prune", "--dry-run"],
        vec!["verify", "--remote"],
        vec!["status", "--json"],
    ] {
        let mut a = args.clone();
        a.extend(["--metrics-file", metrics.to_str().unwrap()]);
        let out = s.slipway(&a);
        seen.push_str(&out.stdout);
        seen.push_str(&out.stderr);
    }
    seen.push_str(&String::from_utf8_lossy(&std::fs::read(s.state().join("state.db")).unwrap()));
    if let Ok(m) = std::fs::read_to_string(&metrics) {
        seen.push_str(&m);
    }
    assert!(!seen.contains(&env.s3_secret_key), "the S3 secret key leaked");
}

/// Dates 2026-07-26 .. 2026-11-22: 120 days.
fn days() -> Vec<String> {
    let start: jiff::civil::Date = "2026-07-26".parse().unwrap();
    (0..120).map(|i| start.checked_add(jiff::Span::new().days(i)).unwrap().to_string()).collect()
}

/// Turn today's snapshot into a 120-day history of the same tenant.
fn history(s: &Sandbox, today: &str) {
    let daily = s.backups().join("daily");
    let template = s.root().join("template");
    std::fs::rename(daily.join(today), &template).unwrap();
    for d in days() {
        let dir = daily.join(&d);
        std::fs::create_dir_all(dir.join("tenants")).unwrap();
        for f in ["tenants/t1.tar.zst", "tenants/t1.files.json.zst"] {
            std::fs::copy(template.join(f), dir.join(f)).unwrap();
        }
        let m = std::fs::read_to_string(template.join("MANIFEST.json")).unwrap().replace(today, &d);
        std::fs::write(dir.join("MANIFEST.json"), m).unwrap();
    }
}

pub(crate) fn kept_days(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

const TABLE: [&str; 12] = [
    "2026-09-30",
    "2026-10-31",
    "2026-11-01",
    "2026-11-08",
    "2026-11-15",
    "2026-11-16",
    "2026-11-17",
    "2026-11-18",
    "2026-11-19",
    "2026-11-20",
    "2026-11-21",
    "2026-11-22",
];

#[test]
fn prune_keeps_exactly_the_policy_table_over_120_days_locally_and_remotely() {
    let s = Sandbox::new();
    let today = with_snapshot(&s, b"tenant data");
    history(&s, &today);
    s.append_config("[retention]\nkeep_daily = 7\nkeep_weekly = 4\nkeep_monthly = 3\n");
    // Dry run: lists, deletes nothing.
    let dry = s.slipway(&["prune", "--dry-run", "--json"]);
    assert_eq!(dry.code, 0, "{} {}", dry.stdout, dry.stderr);
    let items = dry.report::<Prune>().items;
    let mut kept: Vec<String> = items.iter().filter(|i| i.keep).map(|i| i.snapshot.clone()).collect();
    kept.sort();
    assert_eq!(kept, TABLE);
    assert!(items.iter().filter(|i| i.keep).all(|i| !i.reasons.is_empty()), "a kept snapshot names no rule");
    assert_eq!(kept_days(&s.backups().join("daily")).len(), 120, "a dry run deleted something");
    // With a remote: unsynced snapshots are protected until synced; the remote has its own policy.
    s.use_shared_remote("[remote.retention]\nkeep_daily = 3\n");
    let protected = s.slipway(&["prune", "--dry-run", "--json"]);
    let all_kept = protected.report::<Prune>().items.iter().filter(|i| i.location == "local").all(|i| i.keep);
    assert!(all_kept, "local snapshots not yet synced must be kept");
    assert_eq!(s.slipway(&["sync"]).code, 0);
    let out = s.slipway(&["prune", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert_eq!(kept_days(&s.backups().join("daily")), TABLE);
    let env = crate::support::Env::get();
    let bucket = std::fs::read_to_string(s.config_path())
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("bucket = \"").map(|b| b.trim_end_matches('"').to_string()))
        .unwrap();
    let remote_days: std::collections::BTreeSet<String> = s
        .remote_objects(&env.s3_endpoint, &env.s3_access_key, &env.s3_secret_key, &bucket)
        .into_iter()
        .map(|(k, _)| k.split('/').nth(1).unwrap().to_string())
        .collect();
    assert_eq!(remote_days.into_iter().collect::<Vec<_>>(), ["2026-11-20", "2026-11-21", "2026-11-22"]);
    assert_eq!(s.slipway(&["verify"]).code, 0, "what is left locally must still verify");
}

#[test]
fn restore_remote_latest_takes_a_rollout_snapshot_newer_than_the_newest_daily() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let v2 = s.push_fixture_as("v2", "app");
    s.add_tenant("t1", &v1);
    s.write_data("t1", "db/records.txt", "rows of the daily snapshot\n");
    s.write_fleet(&s.fleet_app(&v1, ""));
    assert_eq!(s.slipway(&["snapshot"]).code, 0);
    // Later the tenant has more data, and a rollout snapshots it before moving it to v2.
    s.write_data("t1", "db/records.txt", "rows written after the daily snapshot\n");
    let at_rollout = tree_hash(&s.data_dir("t1"));
    s.write_fleet(&s.fleet_app(&v2, ""));
    let r = s.slipway(&["rollout", "--json"]);
    assert_eq!(r.code, 0, "{} {}", r.stdout, r.stderr);
    s.use_shared_remote("");
    let sync = s.slipway(&["sync", "--json"]);
    assert_eq!(sync.code, 0, "{} {}", sync.stdout, sync.stderr);
    let to = s.root().join("from-remote");
    let out = s.slipway(&["restore", "--tenant", "t1", "--latest", "--remote", "--to", to.to_str().unwrap(), "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert_eq!(tree_hash(&to), at_rollout, "restore --remote --latest took another snapshot: {}", out.stdout);
}

/// The hex sha256 of `bytes`.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[test]
fn a_planted_remote_manifest_naming_paths_outside_is_refused_by_restore_verify_and_prune() {
    let s = Sandbox::new();
    let day = with_snapshot(&s, &noise(50_000, 4));
    let bucket = s.use_shared_remote("");
    assert_eq!(s.slipway(&["sync"]).code, 0);
    let data_before = tree_hash(&s.data_dir("t1"));
    let manifest_key = format!("daily/{day}/MANIFEST.json");
    let original = std::fs::read(s.backups().join(&manifest_key)).unwrap();
    let outside = s.root().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let owned = outside.join("owned");
    // From the remote cache (<state>/remote-cache/daily/<day>/) up to the sandbox root and out.
    let climb = "../../../../outside/owned".to_string();
    for (field, value) in [("path", owned.to_str().unwrap().to_string()), ("file_list", climb)] {
        let mut m: serde_json::Value = serde_json::from_slice(&original).unwrap();
        m["archives"][0][field] = serde_json::Value::String(value.clone());
        let planted = serde_json::to_vec_pretty(&m).unwrap();
        // Whoever can write the bucket can also write a matching sha256: the paths are checked anyway.
        s.put_remote_object(&bucket, &manifest_key, &planted, &sha256_hex(&planted));
        for args in [
            vec!["restore", "--tenant", "t1", "--day", day.as_str(), "--remote", "--json"],
            vec!["verify", "--remote", "--deep", "--json"],
            vec!["prune", "--json"],
        ] {
            let out = s.slipway(&args);
            assert_ne!(out.code, 0, "{args:?} accepted {field} = {value}: {}", out.stdout);
            let said = format!("{}{}", out.stdout, out.stderr);
            assert!(said.contains("refused path") && said.contains("MANIFEST.json"), "{args:?}: {said}");
            assert!(std::fs::read_dir(&outside).unwrap().next().is_none(), "{args:?} wrote outside: {value}");
        }
    }
    // A manifest changed after upload (its sha256 metadata is the uploaded one) is not used.
    let mut m: serde_json::Value = serde_json::from_slice(&original).unwrap();
    m["archives"][0]["sha256"] = serde_json::Value::String("00".repeat(32));
    let changed = serde_json::to_vec_pretty(&m).unwrap();
    s.put_remote_object(&bucket, &manifest_key, &changed, &sha256_hex(&original));
    let out = s.slipway(&["restore", "--tenant", "t1", "--day", &day, "--remote", "--json"]);
    assert_ne!(out.code, 0, "{}", out.stdout);
    assert!(format!("{}{}", out.stdout, out.stderr).contains("changed after it was uploaded"), "{}", out.stdout);
    // Nothing was touched: the tenant's data and the local snapshot are as they were.
    assert_eq!(tree_hash(&s.data_dir("t1")), data_before);
    assert_eq!(std::fs::read(s.backups().join(&manifest_key)).unwrap(), original);
}

/// Turn today's snapshot of t1 into the `n` days before and including `today`.
pub(crate) fn recent_days(s: &Sandbox, today: &str, n: i64) -> Vec<String> {
    let date: jiff::civil::Date = today.parse().unwrap();
    let daily = s.backups().join("daily");
    let days: Vec<String> =
        (0..n).rev().map(|i| date.checked_sub(jiff::Span::new().days(i)).unwrap().to_string()).collect();
    for d in days.iter().filter(|d| *d != today) {
        let dir = daily.join(d);
        crate::support::sh(std::process::Command::new("cp").arg("-a").arg(daily.join(today)).arg(&dir));
        let m = std::fs::read_to_string(dir.join("MANIFEST.json")).unwrap().replace(today, d);
        std::fs::write(dir.join("MANIFEST.json"), m).unwrap();
    }
    days
}

#[test]
fn a_day_whose_remote_manifest_is_gone_keeps_its_local_copy() {
    let s = Sandbox::new();
    let today = with_snapshot(&s, &noise(20_000, 5));
    let days = recent_days(&s, &today, 3);
    s.append_config("[retention]\nkeep_daily = 1\n");
    let bucket = s.use_shared_remote("[remote.retention]\nkeep_daily = 7\n");
    assert_eq!(s.slipway(&["sync"]).code, 0);
    // The oldest day's archive is on the remote and was verified, but its MANIFEST.json is not
    // there any more: the remote copy cannot be restored from, so the local one must stay.
    let env = crate::support::Env::get();
    let st = std::process::Command::new("rclone")
        .env("RCLONE_CONFIG", "/dev/null")
        .env("RCLONE_S3_PROVIDER", "Other")
        .env("RCLONE_S3_ENDPOINT", &env.s3_endpoint)
        .env("RCLONE_S3_ACCESS_KEY_ID", &env.s3_access_key)
        .env("RCLONE_S3_SECRET_ACCESS_KEY", &env.s3_secret_key)
        .env("RCLONE_S3_FORCE_PATH_STYLE", "true")
        .args(["deletefile", &format!(":s3:{bucket}/slipway/host-1/daily/{}/MANIFEST.json", days[0])])
        .status()
        .unwrap();
    assert!(st.success());
    let out = s.slipway(&["prune", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let kept = kept_days(&s.backups().join("daily"));
    assert_eq!(kept, [days[0].clone(), days[2].clone()], "{}", out.stdout);
    let item =
        out.report::<Prune>().items.into_iter().find(|i| i.location == "local" && i.snapshot == days[0]).unwrap();
    assert!(item.reasons.iter().any(|r| r == "not yet synced"), "{:?}", item.reasons);
}

#[test]
fn a_remote_policy_shorter_than_the_local_one_never_causes_re_uploads() {
    let s = Sandbox::new();
    let today = with_snapshot(&s, &noise(20_000, 6));
    let days = recent_days(&s, &today, 8);
    s.append_config("[retention]\nkeep_daily = 6\n");
    let bucket = s.use_shared_remote("[remote.retention]\nkeep_daily = 2\n");
    assert_eq!(s.slipway(&["sync"]).code, 0);
    let out = s.slipway(&["prune", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert_eq!(kept_days(&s.backups().join("daily")), days[2..]);
    let env = crate::support::Env::get();
    let remote_days: std::collections::BTreeSet<String> = s
        .remote_objects(&env.s3_endpoint, &env.s3_access_key, &env.s3_secret_key, &bucket)
        .into_iter()
        .map(|(k, _)| k.split('/').nth(1).unwrap().to_string())
        .collect();
    assert_eq!(remote_days.into_iter().collect::<Vec<_>>(), days[6..]);
    // The days the remote pruned stay local, and the next sync does not send them again.
    let again = s.slipway(&["sync", "--json"]);
    assert_eq!(again.code, 0, "{}", again.stdout);
    let report: Sync = again.report();
    assert_eq!(report.uploaded_bytes, 0, "{}", again.stdout);
    assert_eq!(report.retired, days[2..6].iter().map(|d| format!("daily/{d}")).collect::<Vec<_>>());
    // And prune still lets the local policy decide about them.
    let out = s.slipway(&["prune", "--dry-run", "--json"]);
    let local_kept = out.report::<Prune>().items.iter().filter(|i| i.location == "local" && i.keep).count();
    assert_eq!(local_kept, 6, "{}", out.stdout);
    assert_eq!(s.slipway(&["verify", "--remote"]).code, 0);
}
