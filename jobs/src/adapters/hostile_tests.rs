//! Property tests: a hostile tenant mutates its tree at random between slipway's passes, and
//! slipway's tree operations (the mirror — the staging and the rollout copy —, the archive, the
//! checked extract of a restore or a drill, the restore swap that removes the old tree) must
//! never reach outside it and must copy exactly what the archive format keeps.
//!
//! Mutations: files with setuid/setgid/sticky bits, dirs, symlinks to a sentinel tree outside
//! (absolute, relative, to `/`), a dir swapped for a symlink or a file and back, hard links
//! across dirs, renames, deletions, fifos, sockets, sparse files, other owners and times, names
//! with newlines and bytes that are not UTF-8. Invariants after every step: the sentinel tree
//! is byte-identical; the copy, and the tree extracted from the archive, equal the source
//! (`tree_digest`); nothing panics or fails.
//!
//! The run is seeded and reproducible: `SLIPWAY_PROPTEST_CASES` (default 24) cases from
//! `SLIPWAY_PROPTEST_SEED` (default fixed). To run longer:
//! `SLIPWAY_PROPTEST_CASES=2000 SLIPWAY_PROPTEST_SEED=$RANDOM cargo test -p slipway-jobs hostile`.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

use super::archive;
use super::confined;
use super::mirror::mirror;

/// Names the tenant picks from: few, so that paths collide with what earlier passes saw.
const NAMES: &[&[u8]] = &[b"x", b"victim", b"etc", b"d", b"with\nnewline", b"\xff\xfe-not-utf8", b"s p"];

#[derive(Debug, Clone)]
enum Mutation {
    File {
        rel: Vec<u8>,
        len: usize,
        mode: u32,
    },
    Dir {
        rel: Vec<u8>,
        mode: u32,
    },
    /// A symlink (whatever was there removed first) to a target of the sentinel's or `/`.
    Symlink {
        rel: Vec<u8>,
        target: usize,
    },
    /// Whatever is there becomes a file.
    SwapForFile {
        rel: Vec<u8>,
    },
    HardLink {
        from: Vec<u8>,
        to: Vec<u8>,
    },
    Rename {
        from: Vec<u8>,
        to: Vec<u8>,
    },
    Delete {
        rel: Vec<u8>,
    },
    Fifo {
        rel: Vec<u8>,
    },
    Socket {
        rel: Vec<u8>,
    },
    Sparse {
        rel: Vec<u8>,
    },
    Owner {
        rel: Vec<u8>,
        uid: u32,
        gid: u32,
    },
    Mtime {
        rel: Vec<u8>,
        secs: i64,
    },
}

fn rel() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(0..NAMES.len(), 1..4)
        .prop_map(|v| v.iter().map(|i| NAMES[*i]).collect::<Vec<_>>().join(&b'/'))
}

fn mode() -> impl Strategy<Value = u32> {
    prop::sample::select(vec![0o644, 0o600, 0o4755, 0o2750, 0o1777, 0o6711, 0o000])
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (rel(), 0..5000usize, mode()).prop_map(|(rel, len, mode)| Mutation::File { rel, len, mode }),
        3 => (rel(), mode()).prop_map(|(rel, mode)| Mutation::Dir { rel, mode: mode | 0o700 }),
        3 => (rel(), 0..5usize).prop_map(|(rel, target)| Mutation::Symlink { rel, target }),
        1 => rel().prop_map(|rel| Mutation::SwapForFile { rel }),
        2 => (rel(), rel()).prop_map(|(from, to)| Mutation::HardLink { from, to }),
        2 => (rel(), rel()).prop_map(|(from, to)| Mutation::Rename { from, to }),
        2 => rel().prop_map(|rel| Mutation::Delete { rel }),
        1 => rel().prop_map(|rel| Mutation::Fifo { rel }),
        1 => rel().prop_map(|rel| Mutation::Socket { rel }),
        1 => rel().prop_map(|rel| Mutation::Sparse { rel }),
        1 => (rel(), 0..3u32, 0..3u32).prop_map(|(rel, u, g)| Mutation::Owner { rel, uid: u * 1000, gid: g * 1000 }),
        1 => (rel(), 0..2_000_000_000i64).prop_map(|(rel, secs)| Mutation::Mtime { rel, secs }),
    ]
}

/// The tenant's own view: `rel` under `src` when every dir above it is a real dir (a tenant in
/// its container cannot write through a symlink to the host either), creating missing ones.
fn place(src: &Path, rel: &[u8]) -> Option<PathBuf> {
    let parts: Vec<&[u8]> = rel.split(|c| *c == b'/').collect();
    let mut p = src.to_path_buf();
    for d in &parts[..parts.len() - 1] {
        p.push(std::ffi::OsStr::from_bytes(d));
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return None,
            Err(_) => fs::create_dir(&p).ok()?,
        }
    }
    p.push(std::ffi::OsStr::from_bytes(parts[parts.len() - 1]));
    Some(p)
}

fn clear(p: &Path) {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => {
            // Through the tenant's own eyes: a dir whose own modes forbid nothing to root.
            let _ = fs::remove_dir_all(p);
        }
        Ok(_) => {
            let _ = fs::remove_file(p);
        }
        Err(_) => {}
    }
}

fn apply(src: &Path, host: &Path, m: &Mutation) {
    let targets = [
        host.to_path_buf(),
        host.join("etc/passwd"),
        PathBuf::from("../../host"),
        PathBuf::from("/"),
        PathBuf::from("."),
    ];
    match m {
        Mutation::File { rel, len, mode } => {
            if let Some(p) = place(src, rel) {
                clear(&p);
                let body: Vec<u8> = (0..*len).map(|i| (i * 31 % 251) as u8).collect();
                if fs::write(&p, body).is_ok() {
                    let _ = fs::set_permissions(&p, fs::Permissions::from_mode(*mode));
                }
            }
        }
        Mutation::Dir { rel, mode } => {
            if let Some(p) = place(src, rel) {
                if !fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
                    clear(&p);
                    if fs::create_dir(&p).is_ok() {
                        let _ = fs::set_permissions(&p, fs::Permissions::from_mode(*mode));
                    }
                }
            }
        }
        Mutation::Symlink { rel, target } => {
            if let Some(p) = place(src, rel) {
                clear(&p);
                let _ = std::os::unix::fs::symlink(&targets[*target], &p);
            }
        }
        Mutation::SwapForFile { rel } => {
            if let Some(p) = place(src, rel) {
                clear(&p);
                let _ = fs::write(&p, b"was something else");
            }
        }
        Mutation::HardLink { from, to } => {
            if let (Some(a), Some(b)) = (place(src, from), place(src, to)) {
                if fs::symlink_metadata(&a).is_ok_and(|m| m.is_file()) && fs::symlink_metadata(&b).is_err() {
                    let _ = fs::hard_link(&a, &b);
                }
            }
        }
        Mutation::Rename { from, to } => {
            if let (Some(a), Some(b)) = (place(src, from), place(src, to)) {
                if !b.starts_with(&a) && fs::symlink_metadata(&a).is_ok() {
                    clear(&b);
                    let _ = fs::rename(&a, &b);
                }
            }
        }
        Mutation::Delete { rel } => {
            if let Some(p) = place(src, rel) {
                clear(&p);
            }
        }
        Mutation::Fifo { rel } => {
            if let Some(p) = place(src, rel) {
                clear(&p);
                let _ = rustix::fs::mknodat(rustix::fs::CWD, &p, rustix::fs::FileType::Fifo, 0o644.into(), 0);
            }
        }
        Mutation::Socket { rel } => {
            if let Some(p) = place(src, rel) {
                clear(&p);
                // The socket file stays after the listener is dropped.
                let _ = std::os::unix::net::UnixListener::bind(&p);
            }
        }
        Mutation::Sparse { rel } => {
            if let Some(p) = place(src, rel) {
                clear(&p);
                if let Ok(f) = fs::File::create(&p) {
                    let _ = f.set_len(4 << 20);
                    let _ = std::os::unix::fs::FileExt::write_at(&f, b"middle", 2 << 20);
                }
            }
        }
        Mutation::Owner { rel, uid, gid } => {
            if let Some(p) = place(src, rel) {
                let _ = std::os::unix::fs::lchown(&p, Some(*uid), Some(*gid));
            }
        }
        Mutation::Mtime { rel, secs } => {
            if let Some(p) = place(src, rel) {
                let t = filetime::FileTime::from_unix_time(*secs, 0);
                let _ = filetime::set_symlink_file_times(&p, t, t);
            }
        }
    }
}

/// A sentinel tree outside every tenant root, holding the names the tenant uses.
fn sentinel(root: &Path) -> PathBuf {
    let host = root.join("host");
    for n in NAMES {
        let d = host.join(std::ffi::OsStr::from_bytes(n));
        fs::create_dir_all(d.join("victim")).unwrap();
        fs::write(d.join("victim/x"), b"host data").unwrap();
        fs::write(d.join("etc"), b"host file").unwrap();
    }
    fs::create_dir_all(host.join("etc")).unwrap();
    fs::write(host.join("etc/passwd"), b"root:x:0:0").unwrap();
    host
}

fn digest(p: &Path) -> String {
    archive::tree_digest(p).unwrap_or_else(|e| panic!("digest of {}: {e}", p.display()))
}

/// What differs between two trees, for the failure message (`find`'s view, seconds only).
fn listing(p: &Path) -> String {
    let out = std::process::Command::new("find")
        .arg(".")
        .args(["-not", "-type", "p", "-not", "-type", "s", "-printf", "%p %M %U %G %TY%Tm%Td%TH%TM%TS %s %l\\n"])
        .current_dir(p)
        .output()
        .unwrap();
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect();
    lines.sort();
    lines.join("\n")
}

/// One case: rounds of mutations, each followed by every tree operation.
fn case(rounds: &[Vec<Mutation>], fallback: bool) -> Result<(), TestCaseError> {
    let run = || -> Result<(), TestCaseError> {
        let d = tempfile::tempdir().unwrap();
        let host = sentinel(d.path());
        let before = digest(&host);
        let (src, copy) = (d.path().join("tenants/t1"), d.path().join("staging/t1"));
        fs::create_dir_all(&src).unwrap();
        for (i, round) in rounds.iter().enumerate() {
            for m in round {
                apply(&src, &host, m);
            }
            let r = mirror(&src, &copy);
            prop_assert!(r.is_ok(), "round {i}: mirror failed: {:?}", r.err());
            prop_assert_eq!(digest(&host), before.clone(), "round {}: the sentinel changed after the mirror", i);
            prop_assert_eq!(digest(&copy), digest(&src), "round {}: the copy differs from the source", i);

            // The archive of the copy, restored over a second copy that holds the tenant's
            // symlinks (the restore removes the tree it replaced) and extracted into scratch.
            let arch = d.path().join(format!("backups/{i}.tar.zst"));
            let sum =
                archive::create(&copy, &arch).map_err(|e| TestCaseError::fail(format!("round {i}: archive: {e}")))?;
            let target = d.path().join(format!("tenants/restore-{i}"));
            mirror(&src, &target).map_err(|e| TestCaseError::fail(format!("round {i}: mirror: {e}")))?;
            archive::restore_swap(&arch, &sum.sha256, &target)
                .map_err(|e| TestCaseError::fail(format!("round {i}: restore: {e}")))?;
            prop_assert_eq!(
                digest(&target),
                digest(&src),
                "round {}: the restored tree differs:\n{}\n--- source:\n{}",
                i,
                listing(&target),
                listing(&src)
            );
            let scratch = d.path().join(format!("drill/{i}"));
            archive::extract_into(&arch, &sum.sha256, &scratch)
                .map_err(|e| TestCaseError::fail(format!("round {i}: extract: {e}")))?;
            prop_assert_eq!(digest(&scratch), digest(&src), "round {}: the extracted tree differs", i);
            confined::remove_tree(&scratch).unwrap();
            confined::remove_tree(&target).unwrap();
            prop_assert_eq!(digest(&host), before.clone(), "round {}: the sentinel changed", i);
        }
        Ok(())
    };
    if fallback {
        confined::with_fallback(run)
    } else {
        run()
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[test]
fn hostile_mutations_between_passes_never_reach_outside_and_every_copy_equals_the_source() {
    let cases = env_u64("SLIPWAY_PROPTEST_CASES", 24) as u32;
    let seed = env_u64("SLIPWAY_PROPTEST_SEED", 0x0511_73A7);
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let config = Config { cases, failure_persistence: None, ..Config::default() };
    let mut runner = TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &bytes));
    let strategy = (prop::collection::vec(prop::collection::vec(mutation(), 1..12), 1..5), any::<bool>());
    let r = runner.run(&strategy, |(rounds, fallback)| case(&rounds, fallback));
    if let Err(e) = r {
        panic!("{e}\n(seed {seed}: SLIPWAY_PROPTEST_SEED={seed} reproduces it)");
    }
}

#[test]
fn the_dir_swapped_for_a_symlink_to_the_data_root_between_two_snapshots_erases_no_tenant() {
    // The case the review found, fixed as a sequence: a tree under `x`, one pass, then `x` a
    // symlink to the dir holding every tenant's data.
    let d = tempfile::tempdir().unwrap();
    let tenants = d.path().join("tenants");
    let (src, other) = (tenants.join("t1"), tenants.join("t2"));
    fs::create_dir_all(src.join("x/t2/db")).unwrap();
    fs::write(src.join("x/t2/db/rows"), b"t1's rows").unwrap();
    fs::create_dir_all(other.join("db")).unwrap();
    fs::write(other.join("db/rows"), b"t2's customer rows").unwrap();
    let before = digest(&other);
    let copy = d.path().join("staging/t1");
    mirror(&src, &copy).unwrap();
    fs::remove_dir_all(src.join("x")).unwrap();
    std::os::unix::fs::symlink(&tenants, src.join("x")).unwrap();
    for fallback in [false, true] {
        let r = if fallback { confined::with_fallback(|| mirror(&src, &copy)) } else { mirror(&src, &copy) };
        r.unwrap();
        assert_eq!(digest(&other), before, "tenant t2's data changed");
        assert_eq!(digest(&copy), digest(&src));
    }
}
