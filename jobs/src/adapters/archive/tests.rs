//! Archive round trips, hostile archives and change detection, on real files.
use super::*;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Write `list` as a file list beside a scratch name; its path.
fn write_list(dir: &Path, list: &FileList) -> PathBuf {
    let p = dir.join(format!("edited-{}.files.json.zst", std::process::id()));
    fs::write(&p, zstd::encode_all(&serde_json::to_vec(list).unwrap()[..], 3).unwrap()).unwrap();
    p
}

/// A tree with every kind of entry the archive keeps.
fn rich_tree(root: &Path) {
    fs::create_dir_all(root.join("db/nested/deeper")).unwrap();
    fs::create_dir_all(root.join("empty-dir")).unwrap();
    fs::write(root.join("db/records.txt"), "customer rows\n".repeat(1000)).unwrap();
    fs::write(root.join("empty-file"), "").unwrap();
    let noise: Vec<u8> = (0..200_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    fs::write(root.join("db/nested/noise.bin"), noise).unwrap();
    symlink("../records.txt", root.join("db/nested/link-to-records")).unwrap();
    symlink("/etc/hostname", root.join("absolute-link")).unwrap();
    fs::hard_link(root.join("db/records.txt"), root.join("db/nested/deeper/hardlink")).unwrap();
    let long = "d".repeat(60);
    fs::create_dir_all(root.join(&long).join(&long)).unwrap();
    fs::write(root.join(&long).join(&long).join("a-file-with-a-long-path.txt"), "long").unwrap();
    fs::set_permissions(root.join("db/records.txt"), fs::Permissions::from_mode(0o751)).unwrap();
    fs::set_permissions(root.join("db/nested"), fs::Permissions::from_mode(0o2750)).unwrap();
    std::os::unix::fs::lchown(root.join("empty-file"), Some(1234), Some(5678)).unwrap();
    std::os::unix::fs::lchown(root.join("absolute-link"), Some(1234), Some(5678)).unwrap();
    let t = filetime::FileTime::from_unix_time(1_600_000_000, 0);
    filetime::set_file_times(root.join("empty-file"), t, t).unwrap();
    filetime::set_symlink_file_times(root.join("absolute-link"), t, t).unwrap();
    filetime::set_file_times(root.join("empty-dir"), t, t).unwrap();
}

#[test]
fn a_tree_with_every_kind_round_trips_byte_identical() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    rich_tree(&src);
    let archive = d.path().join("out/t1.tar.zst");
    let s = create(&src, &archive).unwrap();
    assert_eq!(sha256_file(&archive).unwrap(), (s.sha256.clone(), s.size));
    assert!(file_list_path(&archive).ends_with("t1.files.json.zst"));
    let list = read_file_list(&file_list_path(&archive)).unwrap();
    assert_eq!(list.entries.len() as u64, s.files);
    assert!(list.entries.iter().any(|e| e.kind == EntryKind::HardLink));
    assert_eq!(fs::metadata(&archive).unwrap().permissions().mode() & 0o777, 0o600);
    // Into an existing target (swap) and into a new one.
    let target = d.path().join("target");
    fs::create_dir_all(target.join("stale")).unwrap();
    fs::write(target.join("stale/file"), "old").unwrap();
    restore_swap(&archive, &s.sha256, &target).unwrap();
    assert_eq!(tree_digest(&target).unwrap(), tree_digest(&src).unwrap());
    let fresh = d.path().join("fresh");
    restore_swap(&archive, &s.sha256, &fresh).unwrap();
    assert_eq!(tree_digest(&fresh).unwrap(), tree_digest(&src).unwrap());
    // Into an existing, empty dir (as `restore --to` onto a mount point).
    let empty = d.path().join("empty");
    fs::create_dir(&empty).unwrap();
    extract_into(&archive, &s.sha256, &empty).unwrap();
    assert_eq!(tree_digest(&empty).unwrap(), tree_digest(&src).unwrap());
    deep_verify(&archive, &s.sha256, &file_list_path(&archive)).unwrap();
    // No temp dirs left beside the target.
    let names: Vec<String> =
        fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
}

#[test]
fn tree_unchanged_sees_any_change_and_reuse_links_the_same_archive() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    rich_tree(&src);
    let a1 = d.path().join("day1/t1.tar.zst");
    let s = create(&src, &a1).unwrap();
    assert!(tree_unchanged(&src, &file_list_path(&a1)).unwrap());
    let a2 = d.path().join("day2/t1.tar.zst");
    reuse(&a1, &a2).unwrap();
    assert_eq!(sha256_file(&a2).unwrap().0, s.sha256);
    assert_eq!(fs::metadata(&a1).unwrap().ino(), fs::metadata(&a2).unwrap().ino());
    assert!(file_list_path(&a2).is_file());
    fs::write(src.join("db/records.txt"), "changed").unwrap();
    assert!(!tree_unchanged(&src, &file_list_path(&a1)).unwrap());
}

#[test]
fn a_same_size_rewrite_with_its_mtime_put_back_is_a_change() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let f = src.join("db.bin");
    fs::write(&f, "version one").unwrap();
    let archive = d.path().join("t1.tar.zst");
    create(&src, &archive).unwrap();
    let list = read_file_list(&file_list_path(&archive)).unwrap();
    assert!(tree_unchanged(&src, &file_list_path(&archive)).unwrap());
    // `touch -r` / `cp -p` / `rsync -t`: same size, same inode, mtime restored. Only ctime moved.
    let before = fs::metadata(&f).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    fs::OpenOptions::new().write(true).open(&f).unwrap().write_all(b"version two").unwrap();
    filetime::set_file_mtime(&f, filetime::FileTime::from_last_modification_time(&before)).unwrap();
    let after = fs::metadata(&f).unwrap();
    assert_eq!(
        (after.len(), after.ino(), after.mtime(), after.mtime_nsec()),
        (before.len(), before.ino(), before.mtime(), before.mtime_nsec())
    );
    assert!(
        !tree_unchanged(&src, &file_list_path(&archive)).unwrap(),
        "a rewrite with mtime put back must not reuse the archive"
    );
    // A list written before ctime and the root were recorded never matches: archive afresh.
    let mut old = list.clone();
    old.root = None;
    assert!(!tree_unchanged(&src, &write_list(d.path(), &old)).unwrap());
}

#[test]
fn the_archived_dirs_own_owner_mode_and_mtime_come_back() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), "a").unwrap();
    // An app running as uid 1000 owns its data dir.
    std::os::unix::fs::lchown(&src, Some(1000), Some(1000)).unwrap();
    fs::set_permissions(&src, fs::Permissions::from_mode(0o750)).unwrap();
    let t = filetime::FileTime::from_unix_time(1_700_000_000, 0);
    filetime::set_file_times(&src, t, t).unwrap();
    let archive = d.path().join("t1.tar.zst");
    let s = create(&src, &archive).unwrap();
    let list = read_file_list(&file_list_path(&archive)).unwrap();
    assert_eq!(list.root.as_ref().map(|r| (r.uid, r.mode)), Some((1000, 0o750)));
    let want = |p: &Path| {
        let m = fs::metadata(p).unwrap();
        (m.uid(), m.gid(), m.mode() & 0o7777, m.mtime())
    };
    // Over an existing dir owned by someone else, into a new dir, and with --to.
    let existing = d.path().join("existing");
    fs::create_dir_all(&existing).unwrap();
    fs::set_permissions(&existing, fs::Permissions::from_mode(0o700)).unwrap();
    restore_swap(&archive, &s.sha256, &existing).unwrap();
    assert_eq!(want(&existing), (1000, 1000, 0o750, 1_700_000_000));
    let fresh = d.path().join("fresh");
    restore_swap(&archive, &s.sha256, &fresh).unwrap();
    assert_eq!(want(&fresh), (1000, 1000, 0o750, 1_700_000_000));
    let to = d.path().join("to");
    extract_into(&archive, &s.sha256, &to).unwrap();
    assert_eq!(want(&to), (1000, 1000, 0o750, 1_700_000_000));
    assert_eq!(tree_digest(&to).unwrap(), tree_digest(&src).unwrap());
    // The listing agrees, and a changed root mode is a change.
    deep_verify(&archive, &s.sha256, &file_list_path(&archive)).unwrap();
    assert!(tree_unchanged(&src, &file_list_path(&archive)).unwrap());
    fs::set_permissions(&src, fs::Permissions::from_mode(0o755)).unwrap();
    assert!(!tree_unchanged(&src, &file_list_path(&archive)).unwrap());
}

#[test]
fn names_that_are_not_utf8_round_trip_byte_for_byte_and_never_collide() {
    use std::ffi::OsStr;
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    fs::create_dir_all(&src).unwrap();
    // Two Latin-1 names whose lossy UTF-8 renderings are the same ("caf\u{fffd}").
    let a = OsStr::from_bytes(b"caf\xe9");
    let b = OsStr::from_bytes(b"caf\xe8");
    fs::write(src.join(a), "first").unwrap();
    fs::write(src.join(b), "second").unwrap();
    let long_dir = [b"dir-\xff-".to_vec(), vec![b'x'; 120]].concat();
    fs::create_dir_all(src.join(OsStr::from_bytes(&long_dir))).unwrap();
    fs::write(src.join(OsStr::from_bytes(&long_dir)).join(OsStr::from_bytes(b"f\xfe")), "deep").unwrap();
    symlink(OsStr::from_bytes(b"caf\xe9"), src.join("link")).unwrap();
    let archive = d.path().join("t1.tar.zst");
    let s = create(&src, &archive).unwrap();
    let list = read_file_list(&file_list_path(&archive)).unwrap();
    let exact: Vec<Vec<u8>> = list.entries.iter().map(|e| e.path_bytes().into_owned()).collect();
    assert!(exact.contains(&b"caf\xe9".to_vec()) && exact.contains(&b"caf\xe8".to_vec()), "{exact:?}");
    assert!(tree_unchanged(&src, &file_list_path(&archive)).unwrap());
    deep_verify(&archive, &s.sha256, &file_list_path(&archive)).unwrap();
    let out = d.path().join("out");
    restore_swap(&archive, &s.sha256, &out).unwrap();
    assert_eq!(fs::read_to_string(out.join(a)).unwrap(), "first");
    assert_eq!(fs::read_to_string(out.join(b)).unwrap(), "second");
    assert_eq!(fs::read_link(out.join("link")).unwrap().as_os_str().as_bytes(), b"caf\xe9");
    assert_eq!(tree_digest(&out).unwrap(), tree_digest(&src).unwrap());
    // The digest tells the two names apart.
    fs::rename(out.join(a), out.join(OsStr::from_bytes(b"caf\xea"))).unwrap();
    assert_ne!(tree_digest(&out).unwrap(), tree_digest(&src).unwrap());
}

#[test]
fn a_deep_verify_names_a_file_whose_mode_or_owner_differs_from_the_list() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    rich_tree(&src);
    let archive = d.path().join("t1.tar.zst");
    let s = create(&src, &archive).unwrap();
    let mut list = read_file_list(&file_list_path(&archive)).unwrap();
    let i = list.entries.iter().position(|e| e.path == "db/records.txt").unwrap();
    list.entries[i].mode = 0o644;
    let err = deep_verify(&archive, &s.sha256, &write_list(d.path(), &list)).unwrap_err().to_string();
    assert!(err.contains("db/records.txt") && err.contains("mode"), "{err}");
    list.entries[i].mode = 0o751;
    list.entries[i].uid = 4242;
    assert!(deep_verify(&archive, &s.sha256, &write_list(d.path(), &list)).is_err());
}

#[test]
fn a_flipped_bit_is_refused_and_the_old_data_stays() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    rich_tree(&src);
    let archive = d.path().join("t1.tar.zst");
    let s = create(&src, &archive).unwrap();
    let mut bytes = fs::read(&archive).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x10;
    fs::write(&archive, &bytes).unwrap();
    assert_ne!(sha256_file(&archive).unwrap().0, s.sha256);
    let target = d.path().join("target");
    fs::create_dir_all(&target).unwrap();
    fs::write(target.join("keep"), "old data").unwrap();
    let before = tree_digest(&target).unwrap();
    assert!(restore_swap(&archive, &s.sha256, &target).is_err());
    assert_eq!(tree_digest(&target).unwrap(), before);
}

/// Build a tar.zst from raw headers, the way an attacker would.
fn hostile(path: &Path, entries: &[(tar::EntryType, &str, Option<&str>, &[u8])]) -> String {
    let mut b = tar::Builder::new(Vec::new());
    for (kind, name, link, data) in entries {
        let mut h = tar::Header::new_old();
        h.set_entry_type(*kind);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(data.len() as u64);
        // Write the name bytes directly: the safe setters refuse `..` and absolute paths.
        let raw = h.as_old_mut();
        raw.name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(l) = link {
            raw.linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    let tar = b.into_inner().unwrap();
    let z = zstd::encode_all(&tar[..], 3).unwrap();
    fs::write(path, &z).unwrap();
    hex::encode(Sha256::digest(&z))
}

#[test]
fn each_kind_of_hostile_entry_is_refused_and_nothing_is_written_outside() {
    use tar::EntryType::*;
    let d = tempfile::tempdir().unwrap();
    let outside = d.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    let out = outside.display().to_string();
    /// (kind, name, link target, data) of one raw entry.
    type Raw = (tar::EntryType, String, Option<String>, &'static [u8]);
    let cases: Vec<(&str, Vec<Raw>)> = vec![
        ("absolute", vec![(Regular, format!("{out}/pwned"), None, b"x")]),
        ("dotdot", vec![(Regular, "../outside/pwned".into(), None, b"x")]),
        (
            "through symlink",
            vec![(Symlink, "esc".into(), Some(out.clone()), b""), (Regular, "esc/pwned".into(), None, b"x")],
        ),
        ("hard link outside", vec![(Link, "h".into(), Some("../outside/victim".into()), b"")]),
        ("device", vec![(Char, "dev".into(), None, b"")]),
        ("fifo", vec![(Fifo, "fifo".into(), None, b"")]),
    ];
    fs::write(outside.join("victim"), "v").unwrap();
    for (what, entries) in cases {
        let archive = d.path().join(format!("{}.tar.zst", what.replace(' ', "-")));
        let e: Vec<(tar::EntryType, &str, Option<&str>, &[u8])> =
            entries.iter().map(|(k, n, l, b)| (*k, n.as_str(), l.as_deref(), *b)).collect();
        let sha = hostile(&archive, &e);
        let target = d.path().join("target");
        fs::create_dir_all(&target).unwrap();
        fs::write(target.join("keep"), "old").unwrap();
        let before = tree_digest(&target).unwrap();
        let err = restore_swap(&archive, &sha, &target).unwrap_err();
        assert!(matches!(err, ArchiveError::Refused { .. }), "{what}: {err}");
        assert_eq!(tree_digest(&target).unwrap(), before, "{what}: target changed");
        let outside_names: Vec<_> = fs::read_dir(&outside).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(outside_names.len(), 1, "{what}: wrote outside: {outside_names:?}");
        let leftovers: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{what}: temp dir left behind");
    }
}

#[test]
fn a_path_swapped_for_a_symlink_mid_walk_is_never_followed() {
    let d = tempfile::tempdir().unwrap();
    let outside = d.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("secret"), "not the tenant's").unwrap();
    let src = d.path().join("src");
    fs::create_dir_all(src.join("a-dir")).unwrap();
    fs::write(src.join("a-dir/inner"), "x").unwrap();
    fs::write(src.join("z-file"), "tenant data").unwrap();
    // The walk has listed the top directory; then a directory becomes a symlink.
    let mut walk = super::walk::Walker::open(&src).unwrap();
    fs::remove_dir_all(src.join("a-dir")).unwrap();
    symlink(&outside, src.join("a-dir")).unwrap();
    let err = walk.next_item().err().expect("a swapped directory must not be walked into").to_string();
    assert!(err.contains("a-dir") && err.contains("symlink"), "{err}");
    // The same for a file: it is not read through the link.
    fs::remove_file(src.join("a-dir")).unwrap();
    fs::create_dir_all(src.join("a-dir")).unwrap();
    let mut walk = super::walk::Walker::open(&src).unwrap();
    fs::remove_file(src.join("z-file")).unwrap();
    symlink(outside.join("secret"), src.join("z-file")).unwrap();
    let mut seen = Vec::new();
    let err = loop {
        match walk.next_item() {
            Ok(Some(i)) => seen.push(String::from_utf8_lossy(&i.rel).into_owned()),
            Ok(None) => panic!("the swapped file was walked: {seen:?}"),
            Err(e) => break e.to_string(),
        }
    };
    assert!(err.contains("z-file") && err.contains("symlink"), "{err}");
    assert!(!seen.iter().any(|p| p.contains("secret")), "{seen:?}");
}

#[test]
fn memory_use_does_not_depend_on_holding_the_list_a_big_flat_dir_round_trips() {
    // 5 000 files in one dir and a deep chain: the streamed list and walk agree with the tree.
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    fs::create_dir_all(src.join("flat")).unwrap();
    for i in 0..5_000 {
        fs::write(src.join(format!("flat/f{i:05}")), i.to_string()).unwrap();
    }
    let mut deep = src.join("deep");
    for i in 0..60 {
        deep = deep.join(format!("level{i}"));
    }
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("bottom"), "b").unwrap();
    let archive = d.path().join("t1.tar.zst");
    let s = create(&src, &archive).unwrap();
    assert_eq!(s.files, 5_000 + 1 + 1 + 60 + 1);
    assert!(tree_unchanged(&src, &file_list_path(&archive)).unwrap());
    deep_verify(&archive, &s.sha256, &file_list_path(&archive)).unwrap();
    fs::write(src.join("flat/f04999"), "changed").unwrap();
    assert!(!tree_unchanged(&src, &file_list_path(&archive)).unwrap());
    // A file added after the last listed entry is a change too.
    fs::write(src.join("zzz-new"), "n").unwrap();
    let s2 = create(&src, &archive).unwrap();
    fs::write(src.join("zzz-newer"), "n").unwrap();
    assert!(!tree_unchanged(&src, &file_list_path(&archive)).unwrap());
    assert_eq!(s2.files, s.files + 1);
}

#[test]
fn deep_verify_catches_a_file_list_that_disagrees_on_mode_owner_or_mtime() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    rich_tree(&src);
    let archive = d.path().join("t1.tar.zst");
    let s = create(&src, &archive).unwrap();
    let list = read_file_list(&file_list_path(&archive)).unwrap();
    deep_verify(&archive, &s.sha256, &file_list_path(&archive)).unwrap();
    type Change = fn(&mut FileEntry);
    let changes: [(&str, &str, Change); 6] = [
        ("db/records.txt", "mode", |e| e.mode = 0o644),
        ("db/nested", "mode", |e| e.mode = 0o750),
        ("empty-file", "owner", |e| e.uid = 0),
        ("absolute-link", "owner", |e| e.gid = 1),
        ("empty-file", "mtime", |e| e.mtime += 1),
        ("empty-dir", "mtime", |e| e.mtime = 1_500_000_000),
    ];
    for (path, what, change) in changes {
        let mut wrong = list.clone();
        change(wrong.entries.iter_mut().find(|e| e.path == path).unwrap());
        let err = deep_verify(&archive, &s.sha256, &write_list(d.path(), &wrong)).unwrap_err().to_string();
        assert!(err.contains(path) && err.contains(what), "{path} {what}: {err}");
    }
}

#[test]
fn files_across_buffer_boundaries_round_trip_and_the_list_holds_each_files_own_sha256() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    fs::create_dir_all(src.join("many")).unwrap();
    let bytes = |n: usize, seed: u32| -> Vec<u8> {
        (0..n as u32).map(|i| (i.wrapping_add(seed).wrapping_mul(2654435761) >> 11) as u8).collect()
    };
    // Exactly one read buffer, one byte past it, several and a tail, tar's 512-byte blocks.
    for (name, n) in [("one-buffer", BUF), ("one-past", BUF + 1), ("several", 3 * BUF + 17), ("block", 512)] {
        fs::write(src.join(name), bytes(n, n as u32)).unwrap();
    }
    fs::write(src.join("empty"), b"").unwrap();
    // Incompressible, and larger than all the output buffers together: they are recycled.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let noise: Vec<u8> = (0..12 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect();
    fs::write(src.join("noise.bin"), noise).unwrap();
    // More small files than buffers in flight between the stages.
    for i in 0..200u32 {
        fs::write(src.join(format!("many/f{i:03}")), bytes(100 + i as usize * 37, i)).unwrap();
    }
    let archive = d.path().join("out/t1.tar.zst");
    let s = create(&src, &archive).unwrap();
    assert_eq!(sha256_file(&archive).unwrap(), (s.sha256.clone(), s.size));
    let list = read_file_list(&file_list_path(&archive)).unwrap();
    let mut files = 0;
    for e in list.entries.iter().filter(|e| e.kind == EntryKind::File) {
        let (want, size) = sha256_file(&src.join(&e.path)).unwrap();
        assert_eq!((e.sha256.as_deref(), e.size), (Some(want.as_str()), size), "{}", e.path);
        files += 1;
    }
    assert_eq!(files, 206);
    assert_eq!(s.bytes_in, list.entries.iter().map(|e| e.size).sum::<u64>());
    let target = d.path().join("target");
    restore_swap(&archive, &s.sha256, &target).unwrap();
    assert_eq!(tree_digest(&target).unwrap(), tree_digest(&src).unwrap());
    // Plain tar reads it too: the stream is standard tar, whatever wrote the content.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("zstd -dc '{}' | tar -tf - | wc -l", archive.display()))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "208", "{out:?}");
    assert!(
        s.size > (super::write::OUT_CHUNKS * super::write::OUT_CHUNK) as u64,
        "the output buffers were not all recycled: {s:?}"
    );
}

#[test]
fn a_sparse_file_comes_back_sparse_and_identical_from_an_archive() {
    use std::os::unix::fs::FileExt;
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let f = std::fs::File::create(src.join("sparse")).unwrap();
    f.set_len(256 << 20).unwrap();
    f.write_all_at(b"a few bytes", 100 << 20).unwrap();
    drop(f);
    let arch = d.path().join("a.tar.zst");
    let sum = create(&src, &arch).unwrap();
    let out = d.path().join("out");
    extract_into(&arch, &sum.sha256, &out).unwrap();
    let m = std::fs::metadata(out.join("sparse")).unwrap();
    assert_eq!(m.len(), 256 << 20);
    assert!(m.blocks() * 512 < 1 << 20, "restored taking {} bytes of disk", m.blocks() * 512);
    assert_eq!(tree_digest(&out).unwrap(), tree_digest(&src).unwrap());
}

/// Found by the fuzz target `archive_extract`: a header owner of `u32::MAX` (-1 to `chown`)
/// made the restore panic, and one past 32 bits was cut to another owner (2^32 to root).
#[test]
fn a_header_owner_that_is_not_a_valid_id_is_refused_not_a_panic_or_cut() {
    let d = tempfile::tempdir().unwrap();
    let cases: [(&str, tar::EntryType, u64, u64); 6] = [
        ("./", tar::EntryType::Directory, u64::from(u32::MAX), 0),
        ("dir/", tar::EntryType::Directory, 0, u64::from(u32::MAX)),
        ("file", tar::EntryType::Regular, u64::from(u32::MAX), 0),
        ("link", tar::EntryType::Symlink, 0, u64::from(u32::MAX)),
        ("file", tar::EntryType::Regular, 1 << 32, 0),
        ("dir/", tar::EntryType::Directory, 0, (1 << 32) + 1000),
    ];
    for (name, kind, uid, gid) in cases {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_path(name).unwrap();
        h.set_mode(0o644);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(0);
        h.set_size(if kind == tar::EntryType::Regular { 1 } else { 0 });
        if kind == tar::EntryType::Symlink {
            h.set_link_name("file").unwrap();
        }
        h.set_cksum();
        b.append(&h, if kind == tar::EntryType::Regular { &b"x"[..] } else { &b""[..] }).unwrap();
        let z = zstd::encode_all(&b.into_inner().unwrap()[..], 3).unwrap();
        let archive = d.path().join("owner.tar.zst");
        fs::write(&archive, &z).unwrap();
        let sha = hex::encode(Sha256::digest(&z));
        let target = d.path().join("target");
        fs::create_dir_all(&target).unwrap();
        fs::write(target.join("keep"), "old").unwrap();
        let before = tree_digest(&target).unwrap();
        let err = restore_swap(&archive, &sha, &target).unwrap_err();
        let what = format!("{name} {kind:?} {uid}:{gid}");
        assert!(matches!(err, ArchiveError::Refused { .. }), "{what}: {err}");
        assert!(err.to_string().contains("is not a valid id"), "{what}: {err}");
        assert_eq!(tree_digest(&target).unwrap(), before, "{what}: target changed");
        let into = d.path().join("into");
        assert!(extract_into(&archive, &sha, &into).is_err() && !into.exists(), "{what}");
    }
}

/// Issue #24 item 3: a tenant's file of 1 TiB apparent size and a few KiB of data is stored
/// sparse (its data alone, read, hashed and compressed), checked by its data alone, restored
/// sparse and identical; and GNU tar reads the archive as the same file.
#[test]
fn a_terabyte_sparse_file_is_stored_checked_and_restored_by_its_data_alone() {
    use std::os::unix::fs::FileExt;
    const TIB: u64 = 1 << 40;
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    fs::create_dir(&src).unwrap();
    // Under a path too long for a tar header's name fields.
    let deep = ["v".repeat(60), "w".repeat(60), "x".repeat(60), "y".repeat(60), "z".repeat(60)].join("/");
    fs::create_dir_all(src.join(&deep)).unwrap();
    let img = format!("{deep}/disk.img");
    let f = fs::File::create(src.join(&img)).unwrap();
    f.set_len(TIB).unwrap();
    let writes: [(u64, &[u8]); 4] =
        [(0, b"head"), (123_456_789, &[9u8; 70_000]), (TIB / 2 + 5, b"middle"), (TIB - 3, b"end")];
    for (o, b) in writes {
        f.write_all_at(b, o).unwrap();
    }
    drop(f);
    fs::write(src.join("plain"), b"beside it").unwrap();
    let arch = d.path().join("a.tar.zst");
    let sum = create(&src, &arch).unwrap();
    assert!(sum.size < 1 << 20, "the archive of a sparse TiB takes {} bytes", sum.size);
    assert!(sum.bytes_in < 1 << 20, "read {} bytes of a sparse TiB", sum.bytes_in);
    let list = read_file_list(&file_list_path(&arch)).unwrap();
    let e = list.entries.iter().find(|e| e.path == img).unwrap();
    assert!(e.holes && e.size == TIB, "{e:?}");
    assert!(!list.entries.iter().find(|e| e.path == "plain").unwrap().holes);
    deep_verify(&arch, &sum.sha256, &file_list_path(&arch)).unwrap();

    let out = d.path().join("out");
    extract_into(&arch, &sum.sha256, &out).unwrap();
    let m = fs::metadata(out.join(&img)).unwrap();
    assert_eq!(m.len(), TIB);
    assert!(m.blocks() * 512 < 4 << 20, "restored taking {} bytes of disk", m.blocks() * 512);
    let back = fs::File::open(out.join(&img)).unwrap();
    for (o, b) in writes {
        let mut got = vec![0u8; b.len() + 2];
        let n = back.read_at(&mut got, o.saturating_sub(1)).unwrap();
        let mut want = vec![0u8; b.len() + 2];
        want[usize::from(o > 0)..][..b.len()].copy_from_slice(b);
        assert_eq!(&got[..n], &want[..n], "at {o}");
    }
    assert_eq!(tree_digest(&out).unwrap(), tree_digest(&src).unwrap());

    // GNU tar extracts the same file from it (PAX GNU sparse 1.0), sparse too.
    let gnu = d.path().join("gnu");
    fs::create_dir(&gnu).unwrap();
    let st = std::process::Command::new("tar").args(["--zstd", "-xf"]).arg(&arch).arg("-C").arg(&gnu).status().unwrap();
    assert!(st.success());
    let g = fs::metadata(gnu.join(&img)).unwrap();
    assert_eq!(g.len(), TIB);
    let gf = fs::File::open(gnu.join(&img)).unwrap();
    assert_eq!(sparse::hole_digest(&gf, TIB).unwrap(), sparse::hole_digest(&back, TIB).unwrap());
}

/// A sparse file whose data was changed after the archive no longer matches the list; an
/// archive whose sparse map lies about its data is refused before anything is written.
#[test]
fn a_changed_sparse_file_and_a_lying_sparse_map_are_caught() {
    use std::os::unix::fs::FileExt;
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    fs::create_dir(&src).unwrap();
    let f = fs::File::create(src.join("s")).unwrap();
    f.set_len(1 << 30).unwrap();
    f.write_all_at(b"data", 1 << 29).unwrap();
    drop(f);
    let arch = d.path().join("a.tar.zst");
    let sum = create(&src, &arch).unwrap();
    let out = d.path().join("out");
    extract_into(&arch, &sum.sha256, &out).unwrap();
    matches_list(&arch, &out, &file_list_path(&arch)).unwrap();
    let mtime = filetime::FileTime::from_last_modification_time(&fs::metadata(out.join("s")).unwrap());
    fs::OpenOptions::new().write(true).open(out.join("s")).unwrap().write_all_at(b"x", 3 << 20).unwrap();
    filetime::set_file_mtime(out.join("s"), mtime).unwrap();
    let e = matches_list(&arch, &out, &file_list_path(&arch)).unwrap_err().to_string();
    assert!(e.contains("content differs"), "{e}");

    // A map listing more data than the entry holds.
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([
        ("GNU.sparse.major", &b"1"[..]),
        ("GNU.sparse.minor", b"0"),
        ("GNU.sparse.realsize", b"1000000"),
    ])
    .unwrap();
    let mut body = sparse::map_block(&[(0, 4096), (8192, 4096)]);
    body.extend_from_slice(&[1u8; 4096]);
    let mut h = tar::Header::new_gnu();
    h.set_size(body.len() as u64);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, "liar", &body[..]).unwrap();
    let raw = zstd::encode_all(&b.into_inner().unwrap()[..], 3).unwrap();
    let bad = d.path().join("bad.tar.zst");
    fs::write(&bad, &raw).unwrap();
    let sha = hex::encode(Sha256::digest(&raw));
    let e = extract_into(&bad, &sha, &d.path().join("o2")).unwrap_err().to_string();
    assert!(e.contains("liar") && e.contains("sparse map"), "{e}");
}

/// Issue #24 item 3: a tree deeper than any path a tool can restore is refused naming it
/// (not walked with one open directory per level until the host runs out). The staging copy
/// walks with the same walker (`mirror`'s tests).
#[test]
fn a_tree_deeper_than_path_max_is_refused_naming_it() {
    use rustix::fs::{mkdirat, openat, Mode, OFlags};
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    fs::create_dir(&src).unwrap();
    let mut dir = rustix::fs::open(&src, OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty()).unwrap();
    for _ in 0..10_000 {
        mkdirat(&dir, "d", Mode::from_raw_mode(0o755)).unwrap();
        dir = openat(&dir, "d", OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty()).unwrap();
    }
    let e = create(&src, &d.path().join("a.tar.zst")).unwrap_err().to_string();
    assert!(e.contains("PATH_MAX") && e.contains(&src.display().to_string()), "{e}");
}

#[test]
fn a_substituted_file_is_archived_in_place_of_the_trees_and_skipped_names_are_left_out() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    fs::create_dir_all(src.join("db")).unwrap();
    fs::write(src.join("db/app.db"), "the live bytes").unwrap();
    fs::write(src.join("db/app.db-wal"), "a live log").unwrap();
    fs::write(src.join("notes"), "notes").unwrap();
    let copy = d.path().join("copy.db");
    fs::write(&copy, "the consistent copy").unwrap();
    let mut subs = Substitutes::default();
    subs.files.insert(b"db/app.db".to_vec(), copy.clone());
    subs.skip.insert(b"db/app.db-wal".to_vec());
    let archive = d.path().join("out/t1.tar.zst");
    let s = create_substituted(&src, &archive, &subs).unwrap();
    let to = d.path().join("to");
    extract_into(&archive, &s.sha256, &to).unwrap();
    assert_eq!(fs::read_to_string(to.join("db/app.db")).unwrap(), "the consistent copy");
    assert!(!to.join("db/app.db-wal").exists());
    assert_eq!(fs::read_to_string(to.join("notes")).unwrap(), "notes");
    // A name to substitute that the tree does not hold as a regular file fails the archive.
    fs::remove_file(src.join("db/app.db")).unwrap();
    symlink("/etc/hostname", src.join("db/app.db")).unwrap();
    let e = create_substituted(&src, &d.path().join("out/t2.tar.zst"), &subs).unwrap_err();
    assert!(e.to_string().contains("no longer a regular file"), "{e}");
    fs::remove_file(src.join("db/app.db")).unwrap();
    let e = create_substituted(&src, &d.path().join("out/t3.tar.zst"), &subs).unwrap_err();
    assert!(e.to_string().contains("not every file"), "{e}");
}
