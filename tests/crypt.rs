//! Client-side encryption of the off-site copy (`[remote] encrypt`), against the real S3
//! server: what the bucket holds, restoring with the right and the wrong identity, and
//! rotating recipients. Keys are made in-test with the age crate (as `age-keygen` would).

use std::path::PathBuf;

use crate::support::reports::{Snapshot, Sync};
use crate::support::{noise, tree_hash, Sandbox};

/// An age identity file and its recipient line, written under the sandbox.
struct Key {
    identity: PathBuf,
    recipient: String,
}

fn key(s: &Sandbox, name: &str) -> Key {
    use age::secrecy::ExposeSecret;
    let id = age::x25519::Identity::generate();
    let identity = s.root().join(format!("{name}.age-identity"));
    std::fs::write(&identity, format!("# created: by the test\n{}\n", id.to_string().expose_secret())).unwrap();
    Key { identity, recipient: id.to_public().to_string() }
}

/// Write the recipients file the host config names.
fn recipients(s: &Sandbox, keys: &[&Key]) -> PathBuf {
    let p = s.root().join("age-recipients");
    let lines: Vec<String> = keys.iter().map(|k| format!("# operator\n{}\n", k.recipient)).collect();
    std::fs::write(&p, lines.concat()).unwrap();
    p
}

/// A known text the bytes in the bucket must never show, in a file's content and its name.
fn marker() -> String {
    format!("PLAINTEXT-MARKER-{}", hex::encode(noise(24, 77)))
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Whether `bytes`, or their zstd decompression, show `marker` (archives and file lists are zstd).
fn shows(bytes: &[u8], marker: &str) -> bool {
    contains(bytes, marker) || zstd::decode_all(bytes).is_ok_and(|plain| contains(&plain, marker))
}

fn sha(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Every object under the sandbox prefix with the sha256 of its bytes as stored.
fn stored(s: &Sandbox, bucket: &str) -> Vec<(String, String)> {
    let env = crate::support::Env::get();
    s.remote_objects(&env.s3_endpoint, &env.s3_access_key, &env.s3_secret_key, bucket)
        .into_iter()
        .map(|(k, _)| {
            let b = s.remote_object_bytes(bucket, &k);
            (k, sha(&b))
        })
        .collect()
}

/// Move today's snapshot dir to `day` (its manifest renamed with it), as if taken then.
fn as_of(s: &Sandbox, today: &str, day: &str) {
    let daily = s.backups().join("daily");
    std::fs::rename(daily.join(today), daily.join(day)).unwrap();
    let m = std::fs::read_to_string(daily.join(day).join("MANIFEST.json")).unwrap().replace(today, day);
    std::fs::write(daily.join(day).join("MANIFEST.json"), m).unwrap();
}

fn days_before(today: &str, n: i64) -> String {
    let d: jiff::civil::Date = today.parse().unwrap();
    d.checked_sub(jiff::Span::new().days(n)).unwrap().to_string()
}

fn snapshot(s: &Sandbox) -> String {
    let out = s.slipway(&["snapshot", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    out.report::<Snapshot>().day
}

/// Whether the remote cache holds nothing of `day`.
fn nothing_cached(s: &Sandbox, day: &str) -> bool {
    let cache = s.state().join("remote-cache");
    crate::support::files_under(&cache).is_empty() && !cache.join("daily").join(day).exists()
}

#[test]
fn the_bucket_sees_no_plaintext_and_only_the_right_identity_restores_the_tenant_byte_identical() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let tenant = format!("{}-t1", s.id());
    s.add_tenant("t1", &v1);
    let marker = marker();
    s.write_data("t1", &format!("db/{marker}.txt"), &format!("{marker}\n").repeat(3));
    // Large enough for a multipart upload of the archive (5 MB parts); list and manifest go in one PUT.
    std::fs::write(s.data_dir("t1").join("blob.bin"), noise(12 << 20, 11)).unwrap();
    s.write_fleet(&s.fleet_app(&v1, ""));
    let day = snapshot(&s);
    let right = key(&s, "right");
    let wrong = key(&s, "wrong");
    let rf = recipients(&s, &[&right]);
    let bucket = s.use_shared_remote(&format!(
        "part_size_mb = 5\nconcurrency = 2\nencrypt = {{ recipients_file = \"{}\" }}\n",
        rf.display()
    ));
    let out = s.slipway(&["sync", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let report: Sync = out.report();
    assert_eq!(report.files.len(), 3, "{}", out.stdout);
    assert!(report.files.iter().all(|f| f.encryption.as_deref() == Some("age")), "{}", out.stdout);

    // The local copies show the marker (the check below would catch plaintext) …
    let local = s.backups().join("daily").join(&day);
    assert!(shows(&std::fs::read(local.join("tenants/t1.tar.zst")).unwrap(), &marker));
    assert!(shows(&std::fs::read(local.join("tenants/t1.files.json.zst")).unwrap(), &marker));
    assert!(contains(&std::fs::read(local.join("MANIFEST.json")).unwrap(), "tenants/t1.tar.zst"));
    // … the bucket's never: every object is an age file that shows neither the marker nor a path.
    for k in ["tenants/t1.tar.zst", "tenants/t1.files.json.zst", "MANIFEST.json"] {
        let bytes = s.remote_object_bytes(&bucket, &format!("daily/{day}/{k}"));
        assert!(bytes.starts_with(b"age-encryption.org/v1\n"), "{k} is not an age file");
        assert!(!shows(&bytes, &marker), "{k} shows the plaintext marker");
        assert!(!contains(&bytes, "tenants/t1.tar.zst") && !contains(&bytes, "\"sha256\""), "{k} shows the manifest");
    }
    // A sync with nothing new uploads nothing (encrypted objects are recognised as present).
    let again = s.slipway(&["sync", "--json"]);
    assert_eq!(again.report::<Sync>().uploaded_bytes, 0, "{}", again.stdout);
    assert_eq!(s.slipway(&["verify", "--remote", "--json"]).code, 0, "verify --remote needs no identity");

    // The host lost its local backups and the tenant's data went bad.
    let want = tree_hash(&s.data_dir("t1"));
    std::fs::remove_dir_all(s.backups().join("daily")).unwrap();
    s.write_data("t1", "db/state.txt", "damaged\n");
    let damaged = tree_hash(&s.data_dir("t1"));
    let id_before = s.inspect(&tenant)["Id"].clone();
    let restore = ["restore", "--tenant", "t1", "--day", day.as_str(), "--remote", "--json"];
    // No identity, then the wrong one: exit 2, the tenant untouched, nothing left in the cache.
    for extra in [vec![], vec!["--identity", wrong.identity.to_str().unwrap()]] {
        let args: Vec<&str> = restore.iter().copied().chain(extra.iter().copied()).collect();
        let out = s.slipway(&args);
        assert_eq!(out.code, 2, "{args:?}: {} {}", out.stdout, out.stderr);
        let said = format!("{}{}", out.stdout, out.stderr);
        assert!(said.contains("--identity") && said.contains("MANIFEST.json"), "{said}");
        assert_eq!(tree_hash(&s.data_dir("t1")), damaged, "{args:?} touched the tenant's data");
        assert_eq!(s.inspect(&tenant)["Id"], id_before, "{args:?} touched the container");
        assert!(nothing_cached(&s, &day), "{args:?} left files in the remote cache");
        let deep =
            s.slipway(&["verify", "--remote", "--deep", "--json"].into_iter().chain(extra.clone()).collect::<Vec<_>>());
        assert_eq!(deep.code, 2, "verify --deep {extra:?}: {}", deep.stdout);
    }
    let out = s.slipway(&[&restore[..], &["--identity", right.identity.to_str().unwrap()]].concat());
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert_eq!(tree_hash(&s.data_dir("t1")), want, "the restored data is not byte-identical");
    let deep = s.slipway(&["verify", "--remote", "--deep", "--identity", right.identity.to_str().unwrap()]);
    assert_eq!(deep.code, 0, "{} {}", deep.stdout, deep.stderr);
}

#[test]
fn rotating_recipients_re_encrypts_nothing_uploaded_and_new_uploads_open_only_with_the_new_identity() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    s.add_tenant("t1", &v1);
    s.write_fleet(&s.fleet_app(&v1, ""));
    let (old, new) = (key(&s, "old"), key(&s, "new"));
    let bucket = s.use_shared_remote("");
    // Two days ago: synced before encryption was turned on (plaintext objects).
    s.write_data("t1", "db/records.txt", &format!("v1 {}\n", hex::encode(noise(4000, 1))));
    let today = snapshot(&s);
    let v1_tree = tree_hash(&s.data_dir("t1"));
    let (two_ago, yesterday) = (days_before(&today, 2), days_before(&today, 1));
    as_of(&s, &today, &two_ago);
    assert_eq!(s.slipway(&["sync"]).code, 0);
    let plain = stored(&s, &bucket);
    assert_eq!(plain.len(), 3);
    // Yesterday: encrypted to the old key.
    let rf = recipients(&s, &[&old]);
    s.append_config(&format!("encrypt = {{ recipients_file = \"{}\" }}\n", rf.display()));
    s.write_data("t1", "db/records.txt", &format!("v2 {}\n", hex::encode(noise(4000, 2))));
    assert_eq!(snapshot(&s), today);
    let v2_tree = tree_hash(&s.data_dir("t1"));
    as_of(&s, &today, &yesterday);
    let out = s.slipway(&["sync", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let up: Vec<String> = out.report::<Sync>().files.into_iter().map(|f| f.key).collect();
    assert!(up.iter().all(|k| k.starts_with(&format!("daily/{yesterday}/"))), "re-uploaded: {up:?}");
    let after_old = stored(&s, &bucket);
    // Today: the recipients are rotated to the new key only.
    recipients(&s, &[&new]);
    s.write_data("t1", "db/records.txt", &format!("v3 {}\n", hex::encode(noise(4000, 3))));
    assert_eq!(snapshot(&s), today);
    let v3_tree = tree_hash(&s.data_dir("t1"));
    let out = s.slipway(&["sync", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let up: Vec<String> = out.report::<Sync>().files.into_iter().map(|f| f.key).collect();
    assert_eq!(up.len(), 3, "{up:?}");
    assert!(up.iter().all(|k| k.starts_with(&format!("daily/{today}/"))), "re-uploaded: {up:?}");
    // What was uploaded before is byte for byte what it was (nothing re-encrypted).
    let now = stored(&s, &bucket);
    for (k, sha) in &after_old {
        assert_eq!(now.iter().find(|(n, _)| n == k).map(|(_, s)| s), Some(sha), "{k} changed");
    }
    for (k, sha) in &plain {
        assert_eq!(after_old.iter().find(|(n, _)| n == k).map(|(_, s)| s), Some(sha), "{k} changed");
    }
    // Restores from the remote: today's opens only with the new key; yesterday's still with the
    // old one; the plaintext day needs no key at all.
    let restore = |day: &str, to: &str, id: Option<&Key>| {
        let to = s.root().join(to);
        let mut args = vec!["restore", "--tenant", "t1", "--day", day, "--remote", "--to", to.to_str().unwrap()];
        if let Some(k) = id {
            args.extend(["--identity", k.identity.to_str().unwrap()]);
        }
        (s.slipway(&args), to)
    };
    let (out, to) = restore(&today, "today-old-key", Some(&old));
    assert_eq!(out.code, 2, "today's archive opened with the old key: {} {}", out.stdout, out.stderr);
    assert!(!to.exists(), "a failed restore created {}", to.display());
    let (out, to) = restore(&today, "today", Some(&new));
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert_eq!(tree_hash(&to), v3_tree);
    let (out, to) = restore(&yesterday, "yesterday", Some(&old));
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert_eq!(tree_hash(&to), v2_tree);
    let (out, _) = restore(&yesterday, "yesterday-new-key", Some(&new));
    assert_eq!(out.code, 2, "{} {}", out.stdout, out.stderr);
    let (out, to) = restore(&two_ago, "two-ago", None);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert_eq!(tree_hash(&to), v1_tree);
}

#[test]
fn a_recipients_file_with_a_bad_line_is_refused_at_config_load_naming_file_line_and_value() {
    let s = Sandbox::new();
    let good = key(&s, "good");
    let rf = s.root().join("age-recipients");
    std::fs::write(&rf, format!("# ops\n{}\nage1notakey\n", good.recipient)).unwrap();
    s.use_shared_remote(&format!("encrypt = {{ recipients_file = \"{}\" }}\n", rf.display()));
    for args in [vec!["config", "check"], vec!["sync"]] {
        let out = s.slipway(&args);
        assert_eq!(out.code, 2, "{args:?}: {}", out.stdout);
        assert!(
            out.stderr.contains(rf.to_str().unwrap())
                && out.stderr.contains("line 3")
                && out.stderr.contains("age1notakey"),
            "{}",
            out.stderr
        );
    }
}
