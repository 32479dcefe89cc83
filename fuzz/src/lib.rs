//! What the fuzz targets share: scratch dirs on a RAM disk, and a picture of a tree to tell
//! whether anything in it changed.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A fresh scratch dir: under `$SLIPWAY_FUZZ_TMP`, else `/dev/shm` (an extraction ends with a
/// `syncfs`, which costs nothing on tmpfs), else the system's temp dir. Removed when dropped.
pub fn scratch() -> tempfile::TempDir {
    let base = std::env::var_os("SLIPWAY_FUZZ_TMP")
        .map(PathBuf::from)
        .or_else(|| Some(PathBuf::from("/dev/shm")).filter(|p| p.is_dir()))
        .unwrap_or_else(std::env::temp_dir);
    tempfile::Builder::new().prefix("slipway-fuzz-").tempdir_in(&base).expect("a scratch dir")
}

/// One entry of a [`picture`]: its path under the root, kind, mode, owner, size, mtime, and its
/// content (a file) or target (a symlink).
pub type Shot = (PathBuf, &'static str, u32, (u32, u32), u64, i64, Vec<u8>);

/// Every entry under `root` (not following symlinks), sorted: two pictures differ when anything
/// under `root` was created, removed, written, moved or had its metadata changed.
pub fn picture(root: &Path) -> Vec<Shot> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for e in fs::read_dir(&dir).expect("read a pictured dir") {
            let p = e.expect("a dir entry").path();
            let m = fs::symlink_metadata(&p).expect("stat a pictured entry");
            let (kind, body) = if m.file_type().is_symlink() {
                ("symlink", fs::read_link(&p).expect("read a link").into_os_string().into_encoded_bytes())
            } else if m.is_dir() {
                todo.push(p.clone());
                ("dir", Vec::new())
            } else if m.is_file() {
                ("file", fs::read(&p).expect("read a pictured file"))
            } else {
                ("other", Vec::new())
            };
            let rel = p.strip_prefix(root).expect("under the root").to_path_buf();
            out.push((rel, kind, m.mode(), (m.uid(), m.gid()), m.len(), m.mtime(), body));
        }
    }
    out.sort();
    out
}

/// The names in `dir`, sorted.
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .expect("read a dir")
        .map(|e| e.expect("a dir entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Give every header of the tar stream in `data` the checksum it should have, walking it as a
/// tar reader does (a header, then its data rounded up to 512-byte blocks). Mutations that touch
/// a header would otherwise nearly always break its checksum, and the reader would refuse it
/// before any of slipway's checks saw the entry.
pub fn fix_tar_checksums(data: &mut [u8]) {
    let mut at = 0usize;
    while let Some(h) = at.checked_add(512).and_then(|end| data.get_mut(at..end)) {
        at += 512;
        if h.iter().all(|b| *b == 0) {
            continue;
        }
        let sum: u32 = h[..148].iter().chain(&[b' '; 8]).chain(&h[156..]).map(|b| u32::from(*b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        let size = if h[124] & 0x80 != 0 {
            // GNU base-256: the low 8 bytes are enough for any size that fits in memory.
            h[128..136].iter().fold(0u64, |n, b| n << 8 | u64::from(*b))
        } else {
            let field = &h[124..136];
            let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
            let text = std::str::from_utf8(&field[..end]).unwrap_or("").trim();
            u64::from_str_radix(text, 8).unwrap_or(0)
        };
        let blocks = usize::try_from(size.div_ceil(512)).unwrap_or(usize::MAX);
        at = at.saturating_add(blocks.saturating_mul(512));
    }
}
