//! Archives: a directory streamed into tar+zstd in one pass, hashed as it goes, and extracted
//! back with every entry checked. Shared by rollout snapshots, daily snapshots, restore and
//! verify.
//!
//! Invariants:
//! - One pass, bounded memory: files are read through a fixed buffer; compression is zstd
//!   level 3 on all cores; the archive's sha256 is computed on the bytes as they are written.
//! - Beside every `<name>.tar.zst` lies `<name>.files.json.zst`, the per-file list (path, kind,
//!   size, mode, owner, mtime, inode, sha256 of content), written first; both go through
//!   [`AtomicFile`] (temporary name, fsync, rename, directory fsync), mode 0600.
//! - Modes, numeric uid/gid, mtimes (whole seconds), symlinks, hard links and empty dirs are
//!   kept, and so are the owner, mode and mtime of the archived dir itself (a `./` entry, and
//!   `root` in the file list). Sockets, fifos and device nodes are not archived (counted as
//!   skipped).
//! - A file with holes is stored sparse (its data only, as a PAX "GNU sparse 1.0" entry) and
//!   listed with a hole digest instead of the sha256 of its apparent bytes ([`sparse`]).
//! - Names are bytes: a file name that is not UTF-8 is archived and restored byte for byte; the
//!   file list carries it lossily in `path` for people and exactly in `path_hex`.
//! - An unchanged tree (for reusing yesterday's archive) is judged as restic does: path, kind,
//!   size, inode, mode, owner, mtime *and ctime*, so a same-size rewrite whose mtime was put
//!   back (`touch -r`, `cp -p`, `rsync -t`) still counts as a change.
//! - Extraction refuses absolute paths, `..`, writing through a symlink, hard links to
//!   anything outside or not yet extracted, and device nodes and fifos; it extracts into a
//!   sibling temporary dir, checks the archive's sha256, and only then swaps it in (an atomic
//!   `RENAME_EXCHANGE`), so a failed restore leaves the old data in place.

//!
//! The rooms: [`walk`] (the tree, read through directory fds with `O_NOFOLLOW`), [`list`] (the
//! per-file list, written and read as a stream), `write` (create, reuse), `extract` (restore,
//! with the safety checks), `check` (unchanged?, deep verify, tree digest) and [`sparse`] (the
//! data map, its format and the hole digest).

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

mod check;
mod extract;
pub mod list;
pub(crate) mod sparse;
pub(crate) mod walk;
mod write;

pub use check::{deep_verify, matches_list, tree_bytes, tree_digest, tree_unchanged};
pub use extract::{extract_into, restore_swap, restore_swap_keep};
pub use list::{read_file_list, totals, EntryKind, FileEntry, FileList};
pub use write::{create, create_substituted, create_with_level, reuse, Substitutes};

/// Where an archive's file list lies (the store's layout decides).
pub use crate::layout::file_list_path;

/// zstd level (the same as `zstd -3`, the default).
const LEVEL: i32 = 3;
/// zstd job size per worker (bounds memory; large enough to keep the ratio of `zstd -T0 -3`).
const JOB_SIZE: u32 = 2 << 20;
/// Read and write buffer size.
const BUF: usize = 256 * 1024;

/// What [`create`] wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveSummary {
    /// Hex sha256 of the archive bytes.
    pub sha256: String,
    /// Archive size in bytes.
    pub size: u64,
    /// Entries of all kinds.
    pub files: u64,
    /// Sum of regular file sizes read.
    pub bytes_in: u64,
    /// Hex sha256 of the per-file list file.
    pub file_list_sha256: String,
}

/// Archive errors (defined with the other errors, so that `error` needs no adapter).
pub use crate::error::ArchiveError;

fn ioe(path: &Path) -> impl FnOnce(io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io { path: path.to_path_buf(), source }
}

/// A writer that hashes and counts what passes through.
pub(crate) struct HashWriter<W> {
    inner: W,
    hash: Sha256,
    len: u64,
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes and counts what passes through.
struct HashReader<R> {
    inner: R,
    hash: Sha256,
    len: u64,
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// Stream-hash a file: (hex sha256, size).
pub fn sha256_file(path: &Path) -> Result<(String, u64), ArchiveError> {
    let f = File::open(path).map_err(ioe(path))?;
    let mut r = HashReader { inner: f, hash: Sha256::new(), len: 0 };
    io::copy(&mut r, &mut io::sink()).map_err(ioe(path))?;
    Ok((hex::encode(r.hash.finalize()), r.len))
}

#[cfg(test)]
mod tests;
