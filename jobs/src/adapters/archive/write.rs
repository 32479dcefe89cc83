//! Writing archives: one pass over the tree, tar into multithreaded zstd, hashed as written,
//! the file list streamed beside it; and reusing an unchanged tenant's previous archive.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::list::{text_and_hex, ListWriter};
use super::walk::{Item, Node, Walker};
use super::{file_list_path, ioe, ArchiveError, ArchiveSummary, EntryKind, FileEntry, HashReader, HashWriter};
use super::{BUF, JOB_SIZE, LEVEL};
use crate::fsutil::{create_private_dir, sync_dir, AtomicFile};

fn base_entry(path: &[u8], kind: EntryKind, m: &fs::Metadata) -> FileEntry {
    let (path, path_hex) = text_and_hex(path);
    FileEntry {
        path,
        path_hex,
        kind,
        size: 0,
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        mtime: m.mtime(),
        mtime_nsec: m.mtime_nsec() as u32,
        ino: m.ino(),
        ctime: m.ctime(),
        ctime_nsec: m.ctime_nsec() as u32,
        sha256: None,
        target: None,
        target_hex: None,
    }
}

/// A relative name as a path for the tar writer.
fn os_path(rel: &[u8]) -> &Path {
    Path::new(std::ffi::OsStr::from_bytes(rel))
}

fn header(kind: tar::EntryType, e: &FileEntry) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(e.mode);
    h.set_uid(e.uid as u64);
    h.set_gid(e.gid as u64);
    h.set_mtime(e.mtime.max(0) as u64);
    h.set_size(if kind == tar::EntryType::Regular { e.size } else { 0 });
    h
}

/// Archive `src` into `dest` and its per-file list into [`file_list_path`]`(dest)`, at zstd
/// level 3 (the daily snapshots).
pub fn create(src: &Path, dest: &Path) -> Result<ArchiveSummary, ArchiveError> {
    create_with_level(src, dest, LEVEL)
}

/// [`create`] at another zstd level: rollout snapshots are taken while the tenant is down and
/// kept only a few runs, so they trade ratio for speed (level 1).
pub fn create_with_level(src: &Path, dest: &Path, level: i32) -> Result<ArchiveSummary, ArchiveError> {
    if let Some(parent) = dest.parent() {
        create_private_dir(parent).map_err(ioe(parent))?;
    }
    let mut walk = Walker::open(src)?;

    let mut file = AtomicFile::create(dest, 0o600).map_err(ioe(dest))?;
    let hw = HashWriter { inner: BufWriter::with_capacity(BUF, file.file()), hash: Sha256::new(), len: 0 };
    let mut enc = zstd::Encoder::new(hw, level).map_err(ioe(dest))?;
    // One more worker than cores: the calling thread spends much of its time reading files and
    // hashing, so the cores stay busy compressing. Smaller jobs bound the workers' buffers.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32 + 1;
    enc.multithread(threads).map_err(ioe(dest))?;
    enc.set_parameter(zstd::zstd_safe::CParameter::JobSize(JOB_SIZE)).map_err(ioe(dest))?;
    let mut tar = tar::Builder::new(enc);
    tar.mode(tar::HeaderMode::Complete);

    // The per-file list is streamed beside the archive (JSON into zstd into its own temporary
    // file) as entries are archived: never held whole in memory.
    let list_path = file_list_path(dest);
    let mut lf = AtomicFile::create(&list_path, 0o600).map_err(ioe(&list_path))?;
    let lhw = HashWriter { inner: BufWriter::new(lf.file()), hash: Sha256::new(), len: 0 };
    let lz = zstd::Encoder::new(lhw, LEVEL).map_err(ioe(&list_path))?;

    // The dir itself first, as `./`: its owner, mode and mtime are restored too.
    let root = base_entry(b"", EntryKind::Dir, walk.root_meta());
    tar.append_data(&mut header(tar::EntryType::Directory, &root), "./", io::empty()).map_err(ioe(dest))?;
    let mut list = ListWriter::new(lz, &root).map_err(ioe(&list_path))?;
    let mut links: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    let (mut bytes_in, mut files) = (0u64, 0u64);
    while let Some(Item { rel, meta: m, node }) = walk.next_item()? {
        let e = match node {
            Node::Dir => {
                let e = base_entry(&rel, EntryKind::Dir, &m);
                let mut with_slash = rel.clone();
                with_slash.push(b'/');
                let mut h = header(tar::EntryType::Directory, &e);
                tar.append_data(&mut h, os_path(&with_slash), io::empty()).map_err(ioe(dest))?;
                e
            }
            Node::Symlink(target) => {
                let mut e = base_entry(&rel, EntryKind::Symlink, &m);
                e.set_target(&target);
                let mut h = header(tar::EntryType::Symlink, &e);
                tar.append_link(&mut h, os_path(&rel), os_path(&target)).map_err(ioe(dest))?;
                e
            }
            Node::File(f) => {
                let first = if m.nlink() > 1 { links.get(&(m.dev(), m.ino())).cloned() } else { None };
                if let Some(first) = first {
                    let mut e = base_entry(&rel, EntryKind::HardLink, &m);
                    e.set_target(&first);
                    let mut h = header(tar::EntryType::Link, &e);
                    tar.append_link(&mut h, os_path(&rel), os_path(&first)).map_err(ioe(dest))?;
                    e
                } else {
                    if m.nlink() > 1 {
                        links.insert((m.dev(), m.ino()), rel.clone());
                    }
                    let path = walk.path_of(&rel);
                    let mut e = base_entry(&rel, EntryKind::File, &m);
                    e.size = m.len();
                    let mut h = header(tar::EntryType::Regular, &e);
                    let mut r = HashReader { inner: f.take(e.size), hash: Sha256::new(), len: 0 };
                    // A file that shrank while read is an error, not silently padded.
                    // Large reads: io::copy uses a BufReader's own buffer instead of 8 KiB at a time.
                    let exact = ReadExact { inner: &mut r, left: e.size, path: &path };
                    tar.append_data(&mut h, os_path(&rel), io::BufReader::with_capacity(BUF, exact))
                        .map_err(ioe(&path))?;
                    e.sha256 = Some(hex::encode(r.hash.finalize()));
                    bytes_in += e.size;
                    e
                }
            }
            Node::Other => {
                list.skip(String::from_utf8_lossy(&rel).into_owned());
                continue;
            }
        };
        list.push(&e).map_err(ioe(&list_path))?;
        files += 1;
    }
    let enc = tar.into_inner().map_err(ioe(dest))?;
    let HashWriter { inner, hash, len } = enc.finish().map_err(ioe(dest))?;
    inner.into_inner().map_err(|e| ArchiveError::Io { path: dest.to_path_buf(), source: e.into_error() })?;
    let (sha256, size) = (hex::encode(hash.finalize()), len);

    let HashWriter { inner, hash, .. } = list.finish().and_then(|z| z.finish()).map_err(ioe(&list_path))?;
    inner.into_inner().map_err(|e| ArchiveError::Io { path: list_path.clone(), source: e.into_error() })?;
    let file_list_sha256 = hex::encode(hash.finalize());
    // The list is committed first: an archive never exists under its final name without its list.
    lf.commit().map_err(ioe(&list_path))?;
    file.commit().map_err(ioe(dest))?;
    Ok(ArchiveSummary { sha256, size, files, bytes_in, file_list_sha256 })
}

/// Feeds exactly `left` bytes of a file to tar, failing if the file is shorter (it changed
/// while being archived) instead of letting tar pad it.
struct ReadExact<'a, R> {
    inner: &'a mut R,
    left: u64,
    path: &'a Path,
}

impl<R: Read> Read for ReadExact<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = out.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut out[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} shrank while it was being archived", self.path.display()),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Hard-link (or copy) a previous archive and its file list to a new destination, atomically.
pub fn reuse(prev_archive: &Path, dest: &Path) -> Result<(), ArchiveError> {
    if let Some(parent) = dest.parent() {
        create_private_dir(parent).map_err(ioe(parent))?;
    }
    for (from, to) in
        [(file_list_path(prev_archive), file_list_path(dest)), (prev_archive.to_path_buf(), dest.to_path_buf())]
    {
        let tmp = to.with_file_name(format!(
            ".{}.link-{}",
            to.file_name().unwrap_or_default().to_string_lossy(),
            std::process::id()
        ));
        let _ = fs::remove_file(&tmp);
        if fs::hard_link(&from, &tmp).is_err() {
            fs::copy(&from, &tmp).map_err(ioe(&from))?;
            File::open(&tmp).and_then(|f| f.sync_all()).map_err(ioe(&tmp))?;
        }
        fs::rename(&tmp, &to).map_err(ioe(&to))?;
    }
    if let Some(parent) = dest.parent() {
        sync_dir(parent).map_err(ioe(parent))?;
    }
    Ok(())
}
