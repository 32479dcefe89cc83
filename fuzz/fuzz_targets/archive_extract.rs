//! The archive reader on hostile bytes: a `.tar.zst` from the remote or a damaged disk, restored
//! with `extract_into` (the bytes' real sha256 given, so the entry checks are what decides).
//!
//! Each input is read twice: as the archive file itself (the zstd decoder's input), and as the
//! tar stream inside one (its header checksums fixed and compressed here first, so that
//! mutations reach the tar reader and the entry checks instead of breaking the zstd frame or a
//! checksum). The first extracts into a new dir, the
//! second into an existing empty one (`restore --to` a mount point); an archive that extracts is
//! then deep-verified against a file list. Beside the target lies a sentinel tree.
//!
//! Must hold, whatever the bytes: no panic; nothing under the sentinel changes; nothing appears
//! beside the target; a failed extract leaves the target as it was (absent, or empty).
#![no_main]

use std::fs;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};
use slipway_fuzz::{fix_tar_checksums, names, picture, scratch};
use slipway_jobs::adapters::archive::{deep_verify, extract_into, file_list_path};

fn sha256(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// The sentinel: a file, a dir with a file, and a symlink, beside the target.
fn plant(sentinel: &Path) {
    fs::create_dir(sentinel).unwrap();
    fs::write(sentinel.join("keep"), b"untouched").unwrap();
    fs::create_dir(sentinel.join("sub")).unwrap();
    fs::write(sentinel.join("sub/keep"), b"untouched too").unwrap();
    std::os::unix::fs::symlink("keep", sentinel.join("link")).unwrap();
}

/// With `SLIPWAY_FUZZ_DEBUG` set, what each step returned (replaying one input).
fn debug<T: std::fmt::Debug, E: std::fmt::Display>(what: &str, r: &Result<T, E>) {
    if std::env::var_os("SLIPWAY_FUZZ_DEBUG").is_some() {
        match r {
            Ok(v) => eprintln!("{what}: ok: {v:?}"),
            Err(e) => eprintln!("{what}: {e}"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let tmp = scratch();
    let base = tmp.path();
    let (inbox, sentinel) = (base.join("in"), base.join("sentinel"));
    fs::create_dir(&inbox).unwrap();
    plant(&sentinel);
    let before = picture(&sentinel);

    // 1. The bytes as the archive file, into a dir that does not exist yet.
    let raw = inbox.join("raw.tar.zst");
    fs::write(&raw, data).unwrap();
    let new_dir = base.join("new");
    let r = extract_into(&raw, &sha256(data), &new_dir);
    debug("as the archive", &r);
    assert_eq!(r.is_ok(), new_dir.exists(), "{r:?}: the new dir exists exactly when the extract succeeded");

    // 2. The bytes as the tar stream of an archive, into an existing empty dir.
    let archive = inbox.join("tar.tar.zst");
    let mut stream = data.to_vec();
    fix_tar_checksums(&mut stream);
    let zst = zstd::encode_all(&stream[..], 1).unwrap();
    fs::write(&archive, &zst).unwrap();
    let empty_dir = base.join("empty");
    fs::create_dir(&empty_dir).unwrap();
    let r = extract_into(&archive, &sha256(&zst), &empty_dir);
    debug("as the tar stream", &r);
    if r.is_err() {
        assert_eq!(names(&empty_dir), Vec::<String>::new(), "{r:?}: a failed extract leaves the dir empty");
    } else {
        // Deep verify against a list naming nothing: extracts again, then walks and compares.
        let list = file_list_path(&archive);
        fs::write(&list, zstd::encode_all(&br#"{"entries":[],"skipped":[]}"#[..], 1).unwrap()).unwrap();
        debug("deep verify", &deep_verify(&archive, &sha256(&zst), &list));
        fs::remove_file(&list).unwrap();
    }

    assert_eq!(picture(&sentinel), before, "something under the sentinel changed");
    let want: &[&str] =
        if new_dir.exists() { &["empty", "in", "new", "sentinel"] } else { &["empty", "in", "sentinel"] };
    assert_eq!(names(base), want, "something appeared beside the target");
    assert_eq!(names(&inbox), ["raw.tar.zst", "tar.tar.zst"], "something appeared beside the archive");
});
