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
//!   kept. Sockets, fifos and device nodes are not archived (counted as skipped).
//! - Extraction refuses absolute paths, `..`, writing through a symlink, hard links to
//!   anything outside or not yet extracted, and device nodes and fifos; it extracts into a
//!   sibling temporary dir, checks the archive's sha256, and only then swaps it in (an atomic
//!   `RENAME_EXCHANGE`), so a failed restore leaves the old data in place.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::fsutil::{create_private_dir, sync_dir, AtomicFile};

/// zstd level (the same as `zstd -3`, the default).
const LEVEL: i32 = 3;
/// zstd job size per worker (bounds memory; large enough to keep the ratio of `zstd -T0 -3`).
const JOB_SIZE: u32 = 4 << 20;
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

/// The kind of an archived entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Hard link to an earlier file.
    HardLink,
}

/// One entry of the per-file list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative, '/'-separated path.
    pub path: String,
    /// Kind.
    pub kind: EntryKind,
    /// Size in bytes (regular files).
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Numeric owner.
    pub uid: u32,
    /// Numeric group.
    pub gid: u32,
    /// Modification time, seconds.
    pub mtime: i64,
    /// Modification time, nanoseconds part (as read; archives keep whole seconds).
    pub mtime_nsec: u32,
    /// Inode number when archived.
    pub ino: u64,
    /// Hex sha256 of a regular file's content.
    pub sha256: Option<String>,
    /// Symlink target, or the first path of a hard-link group.
    pub target: Option<String>,
}

/// The per-file list of an archive.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileList {
    /// Entries in archive order.
    pub entries: Vec<FileEntry>,
    /// Special files (sockets, fifos, devices) not archived.
    #[serde(default)]
    pub skipped: Vec<String>,
}

/// Archive errors; each names the archive, path or entry.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Filesystem error on a path.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The archive bytes do not hash to what the manifest says.
    #[error(
        "{}: sha256 is {actual}, the manifest says {expected}; the archive is damaged, nothing was touched \
         (restore another --day or `restore --remote`)",
        archive.display()
    )]
    HashMismatch {
        /// The archive.
        archive: PathBuf,
        /// Expected hex sha256.
        expected: String,
        /// Actual hex sha256.
        actual: String,
    },
    /// An entry would escape the target or is of a refused kind.
    #[error("{}: refused entry \"{entry}\": {why}; nothing was restored", archive.display())]
    Refused {
        /// The archive.
        archive: PathBuf,
        /// The entry path as stored.
        entry: String,
        /// Why.
        why: String,
    },
    /// The archive is not a valid tar+zstd stream.
    #[error("{}: {what}", archive.display())]
    Corrupt {
        /// The archive.
        archive: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// A deep check found a file that differs from the list.
    #[error("{}: file \"{file}\": {what}", archive.display())]
    Mismatch {
        /// The archive.
        archive: PathBuf,
        /// The file.
        file: String,
        /// What differs.
        what: String,
    },
}

fn ioe(path: &Path) -> impl FnOnce(io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io { path: path.to_path_buf(), source }
}

/// A writer that hashes and counts what passes through.
struct HashWriter<W> {
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

/// The per-file list's path beside an archive: `t1.tar.zst` → `t1.files.json.zst`.
pub fn file_list_path(archive: &Path) -> PathBuf {
    let name = archive.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let stem = name.strip_suffix(".tar.zst").unwrap_or(&name);
    archive.with_file_name(format!("{stem}.files.json.zst"))
}

/// Stream-hash a file: (hex sha256, size).
pub fn sha256_file(path: &Path) -> Result<(String, u64), ArchiveError> {
    let f = File::open(path).map_err(ioe(path))?;
    let mut r = HashReader { inner: f, hash: Sha256::new(), len: 0 };
    io::copy(&mut r, &mut io::sink()).map_err(ioe(path))?;
    Ok((hex::encode(r.hash.finalize()), r.len))
}

/// Walk `dir` in a stable order (sorted by name, depth first), not following symlinks.
fn walk(dir: &Path, rel: &str, out: &mut Vec<(String, PathBuf, fs::Metadata)>) -> Result<(), ArchiveError> {
    let mut names: Vec<_> = fs::read_dir(dir)
        .map_err(ioe(dir))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(ioe(dir))?;
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let meta = fs::symlink_metadata(&path).map_err(ioe(&path))?;
        let r = if rel.is_empty() {
            name.to_string_lossy().into_owned()
        } else {
            format!("{rel}/{}", name.to_string_lossy())
        };
        let is_dir = meta.is_dir();
        out.push((r.clone(), path.clone(), meta));
        if is_dir {
            walk(&path, &r, out)?;
        }
    }
    Ok(())
}

fn base_entry(path: &str, kind: EntryKind, m: &fs::Metadata) -> FileEntry {
    FileEntry {
        path: path.to_string(),
        kind,
        size: 0,
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        mtime: m.mtime(),
        mtime_nsec: m.mtime_nsec() as u32,
        ino: m.ino(),
        sha256: None,
        target: None,
    }
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
    let mut items = Vec::new();
    walk(src, "", &mut items)?;

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

    let mut list = FileList::default();
    let mut links: HashMap<(u64, u64), String> = HashMap::new();
    let mut bytes_in = 0u64;
    for (rel, path, m) in items {
        let ft = m.file_type();
        if ft.is_dir() {
            let e = base_entry(&rel, EntryKind::Dir, &m);
            let mut h = header(tar::EntryType::Directory, &e);
            tar.append_data(&mut h, format!("{rel}/"), io::empty()).map_err(ioe(dest))?;
            list.entries.push(e);
        } else if ft.is_symlink() {
            let target = fs::read_link(&path).map_err(ioe(&path))?;
            let mut e = base_entry(&rel, EntryKind::Symlink, &m);
            e.target = Some(target.to_string_lossy().into_owned());
            let mut h = header(tar::EntryType::Symlink, &e);
            tar.append_link(&mut h, &rel, &target).map_err(ioe(dest))?;
            list.entries.push(e);
        } else if ft.is_file() {
            if m.nlink() > 1 {
                if let Some(first) = links.get(&(m.dev(), m.ino())) {
                    let mut e = base_entry(&rel, EntryKind::HardLink, &m);
                    e.target = Some(first.clone());
                    let mut h = header(tar::EntryType::Link, &e);
                    tar.append_link(&mut h, &rel, first).map_err(ioe(dest))?;
                    list.entries.push(e);
                    continue;
                }
                links.insert((m.dev(), m.ino()), rel.clone());
            }
            let mut e = base_entry(&rel, EntryKind::File, &m);
            e.size = m.len();
            let h = header(tar::EntryType::Regular, &e);
            let f = File::open(&path).map_err(ioe(&path))?;
            let mut r = HashReader { inner: f.take(e.size), hash: Sha256::new(), len: 0 };
            let mut h = h;
            // A file that shrank while read is an error, not silently padded.
            // Large reads: io::copy uses a BufReader's own buffer instead of 8 KiB at a time.
            let exact = ReadExact { inner: &mut r, left: e.size, path: &path };
            tar.append_data(&mut h, &rel, io::BufReader::with_capacity(BUF, exact)).map_err(ioe(&path))?;
            e.sha256 = Some(hex::encode(r.hash.finalize()));
            bytes_in += e.size;
            list.entries.push(e);
        } else {
            list.skipped.push(rel);
        }
    }
    let enc = tar.into_inner().map_err(ioe(dest))?;
    let HashWriter { inner, hash, len } = enc.finish().map_err(ioe(dest))?;
    inner.into_inner().map_err(|e| ArchiveError::Io { path: dest.to_path_buf(), source: e.into_error() })?;
    let (sha256, size) = (hex::encode(hash.finalize()), len);

    // The list goes first: an archive never exists under its final name without its list.
    // It is streamed (JSON into zstd into the file), never held whole in memory.
    let list_path = file_list_path(dest);
    let file_list_sha256 = {
        let mut lf = AtomicFile::create(&list_path, 0o600).map_err(ioe(&list_path))?;
        let hw = HashWriter { inner: BufWriter::new(lf.file()), hash: Sha256::new(), len: 0 };
        let mut z = zstd::Encoder::new(hw, LEVEL).map_err(ioe(&list_path))?;
        serde_json::to_writer(&mut z, &list)
            .map_err(|e| ArchiveError::Io { path: list_path.clone(), source: e.into() })?;
        let HashWriter { inner, hash, .. } = z.finish().map_err(ioe(&list_path))?;
        inner.into_inner().map_err(|e| ArchiveError::Io { path: list_path.clone(), source: e.into_error() })?;
        lf.commit().map_err(ioe(&list_path))?;
        hex::encode(hash.finalize())
    };
    file.commit().map_err(ioe(dest))?;
    Ok(ArchiveSummary { sha256, size, files: list.entries.len() as u64, bytes_in, file_list_sha256 })
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

/// Read an archive's per-file list.
pub fn read_file_list(path: &Path) -> Result<FileList, ArchiveError> {
    let f = File::open(path).map_err(ioe(path))?;
    let json = zstd::decode_all(BufReader::new(f)).map_err(ioe(path))?;
    serde_json::from_slice(&json)
        .map_err(|e| ArchiveError::Corrupt { archive: path.to_path_buf(), what: format!("not a file list: {e}") })
}

/// True when `src`'s tree (paths, kinds, sizes, mtimes, inodes, modes) is what `list` says: the
/// previous archive can be reused instead of compressing again.
pub fn tree_unchanged(src: &Path, list: &FileList) -> Result<bool, ArchiveError> {
    let mut items = Vec::new();
    walk(src, "", &mut items)?;
    let items: Vec<_> =
        items.into_iter().filter(|(_, _, m)| m.is_dir() || m.is_file() || m.file_type().is_symlink()).collect();
    if items.len() != list.entries.len() {
        return Ok(false);
    }
    for ((rel, _, m), e) in items.iter().zip(&list.entries) {
        let kind_ok = match e.kind {
            EntryKind::Dir => m.is_dir(),
            EntryKind::Symlink => m.file_type().is_symlink(),
            EntryKind::File | EntryKind::HardLink => m.is_file(),
        };
        let same = kind_ok
            && *rel == e.path
            && m.ino() == e.ino
            && m.mtime() == e.mtime
            && m.mtime_nsec() as u32 == e.mtime_nsec
            && m.mode() & 0o7777 == e.mode
            && m.uid() == e.uid
            && m.gid() == e.gid
            && (e.kind != EntryKind::File || m.len() == e.size);
        if !same {
            return Ok(false);
        }
    }
    Ok(true)
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

/// A checked relative path of an entry: no root, no `..`, not empty.
fn safe_rel(archive: &Path, raw: &Path) -> Result<PathBuf, ArchiveError> {
    let refuse = |why: &str| ArchiveError::Refused {
        archive: archive.to_path_buf(),
        entry: raw.display().to_string(),
        why: why.to_string(),
    };
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => return Err(refuse("it contains `..`")),
            Component::RootDir | Component::Prefix(_) => return Err(refuse("it is an absolute path")),
        }
    }
    if out.as_os_str().is_empty() {
        return Err(refuse("it has an empty path"));
    }
    Ok(out)
}

/// Refuse when any existing ancestor of `rel` inside `root` is a symlink (writing through it
/// could land outside the target).
fn no_symlink_ancestor(archive: &Path, root: &Path, rel: &Path, raw: &str) -> Result<(), ArchiveError> {
    let mut p = root.to_path_buf();
    let comps: Vec<_> = rel.components().collect();
    for c in &comps[..comps.len().saturating_sub(1)] {
        p.push(c);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(ArchiveError::Refused {
                    archive: archive.to_path_buf(),
                    entry: raw.to_string(),
                    why: "it would be written through a symlink".into(),
                })
            }
            Ok(m) if !m.is_dir() => {
                return Err(ArchiveError::Refused {
                    archive: archive.to_path_buf(),
                    entry: raw.to_string(),
                    why: "a parent path is not a directory".into(),
                })
            }
            Ok(_) => {}
            Err(_) => {
                fs::DirBuilder::new().mode(0o700).create(&p).map_err(ioe(&p))?;
            }
        }
    }
    Ok(())
}

fn set_times(path: &Path, mtime: u64, symlink: bool) -> io::Result<()> {
    let t = filetime::FileTime::from_unix_time(mtime as i64, 0);
    if symlink {
        filetime::set_symlink_file_times(path, t, t)
    } else {
        filetime::set_file_times(path, t, t)
    }
}

/// Extract every entry of `archive` into the existing, empty `dir`, checking each; verify the
/// archive bytes hash to `expected`. Returns the number of entries.
fn extract_checked(archive: &Path, expected: &str, dir: &Path) -> Result<u64, ArchiveError> {
    let f = File::open(archive).map_err(ioe(archive))?;
    let hr = HashReader { inner: f, hash: Sha256::new(), len: 0 };
    let dec = zstd::Decoder::with_buffer(BufReader::with_capacity(BUF, hr)).map_err(ioe(archive))?;
    let mut tar = tar::Archive::new(dec);
    let corrupt = |e: io::Error| ArchiveError::Corrupt { archive: archive.to_path_buf(), what: e.to_string() };
    let mut dirs: Vec<(PathBuf, u32, u64, u64, u64)> = Vec::new();
    let mut count = 0u64;
    let mut buf = vec![0u8; BUF];
    for entry in tar.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        let raw = entry.path().map_err(corrupt)?.into_owned();
        let raw_s = raw.display().to_string();
        let rel = safe_rel(archive, &raw)?;
        no_symlink_ancestor(archive, dir, &rel, &raw_s)?;
        let target = dir.join(&rel);
        let h = entry.header();
        let (mode, uid, gid, mtime) = (
            h.mode().map_err(corrupt)? & 0o7777,
            h.uid().map_err(corrupt)?,
            h.gid().map_err(corrupt)?,
            h.mtime().map_err(corrupt)?,
        );
        let kind = h.entry_type();
        let refuse =
            |why: &str| ArchiveError::Refused { archive: archive.to_path_buf(), entry: raw_s.clone(), why: why.into() };
        match kind {
            tar::EntryType::Directory => {
                match fs::symlink_metadata(&target) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => return Err(refuse("a directory entry collides with an existing file")),
                    Err(_) => fs::DirBuilder::new().mode(0o700).create(&target).map_err(ioe(&target))?,
                }
                dirs.push((target, mode, uid, gid, mtime));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                // create_new: never follows or replaces an existing path (a planted symlink).
                let mut out = fs::OpenOptions::new().write(true).create_new(true).open(&target).map_err(|e| {
                    if e.kind() == io::ErrorKind::AlreadyExists {
                        refuse("the path already exists (duplicate entry or symlink)")
                    } else {
                        ArchiveError::Io { path: target.clone(), source: e }
                    }
                })?;
                loop {
                    let n = entry.read(&mut buf).map_err(corrupt)?;
                    if n == 0 {
                        break;
                    }
                    out.write_all(&buf[..n]).map_err(ioe(&target))?;
                }
                std::os::unix::fs::fchown(&out, Some(uid as u32), Some(gid as u32)).map_err(ioe(&target))?;
                out.set_permissions(fs::Permissions::from_mode(mode)).map_err(ioe(&target))?;
                let t = UNIX_EPOCH + Duration::from_secs(mtime);
                out.set_times(fs::FileTimes::new().set_modified(t).set_accessed(t)).map_err(ioe(&target))?;
            }
            tar::EntryType::Symlink => {
                let link = entry.link_name().map_err(corrupt)?.ok_or_else(|| refuse("a symlink without a target"))?;
                std::os::unix::fs::symlink(&link, &target).map_err(ioe(&target))?;
                std::os::unix::fs::lchown(&target, Some(uid as u32), Some(gid as u32)).map_err(ioe(&target))?;
                set_times(&target, mtime, true).map_err(ioe(&target))?;
            }
            tar::EntryType::Link => {
                let link = entry.link_name().map_err(corrupt)?.ok_or_else(|| refuse("a hard link without a target"))?;
                let src_rel = safe_rel(archive, &link).map_err(|_| refuse("a hard link to outside the target"))?;
                let src = dir.join(&src_rel);
                no_symlink_ancestor(archive, dir, &src_rel, &raw_s)?;
                match fs::symlink_metadata(&src) {
                    Ok(m) if m.is_file() => {}
                    _ => return Err(refuse("a hard link to a file not in the archive")),
                }
                fs::hard_link(&src, &target).map_err(ioe(&target))?;
            }
            tar::EntryType::Char | tar::EntryType::Block => return Err(refuse("device nodes are not restored")),
            tar::EntryType::Fifo => return Err(refuse("fifos are not restored")),
            tar::EntryType::XGlobalHeader
            | tar::EntryType::XHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink => continue,
            other => return Err(refuse(&format!("entry type {other:?} is not supported"))),
        }
        count += 1;
    }
    // Read to the very end so the hash covers every byte of the file.
    let mut dec = tar.into_inner();
    io::copy(&mut dec, &mut io::sink()).map_err(corrupt)?;
    let mut rest = dec.finish();
    io::copy(&mut rest, &mut io::sink()).map_err(ioe(archive))?;
    let hr = rest.into_inner();
    let actual = hex::encode(hr.hash.finalize());
    if actual != expected {
        return Err(ArchiveError::HashMismatch {
            archive: archive.to_path_buf(),
            expected: expected.to_string(),
            actual,
        });
    }
    // Directories last, deepest first: their modes may forbid writing, and children touch mtimes.
    dirs.sort_by_key(|d| std::cmp::Reverse(d.0.components().count()));
    for (d, mode, uid, gid, mtime) in dirs {
        std::os::unix::fs::lchown(&d, Some(uid as u32), Some(gid as u32)).map_err(ioe(&d))?;
        fs::set_permissions(&d, fs::Permissions::from_mode(mode)).map_err(ioe(&d))?;
        set_times(&d, mtime, false).map_err(ioe(&d))?;
    }
    let root = File::open(dir).map_err(ioe(dir))?;
    rustix::fs::syncfs(&root).map_err(|e| ArchiveError::Io { path: dir.to_path_buf(), source: e.into() })?;
    Ok(count)
}

/// A fresh temporary dir beside `target` (same filesystem, so it can be swapped in).
fn sibling_tmp(target: &Path, what: &str) -> Result<PathBuf, ArchiveError> {
    let parent = target.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(ioe(parent))?;
    let name = target.file_name().unwrap_or_default().to_string_lossy();
    let tmp = parent.join(format!(".{name}.{what}-{}", std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(ioe(&tmp))?;
    }
    fs::DirBuilder::new().mode(0o700).create(&tmp).map_err(ioe(&tmp))?;
    Ok(tmp)
}

/// Restore `archive` in place of `target`: extract into a sibling temp dir with every check,
/// verify the sha256, then swap it in. On any error `target` is untouched and the temp dir
/// removed. The new root dir keeps the old one's owner and mode.
pub fn restore_swap(archive: &Path, expected_sha256: &str, target: &Path) -> Result<u64, ArchiveError> {
    let tmp = sibling_tmp(target, "restore")?;
    let n = match extract_checked(archive, expected_sha256, &tmp) {
        Ok(n) => n,
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    let parent = target.parent().unwrap_or(Path::new("."));
    match fs::symlink_metadata(target) {
        Ok(old) if old.is_dir() => {
            let _ = std::os::unix::fs::lchown(&tmp, Some(old.uid()), Some(old.gid()));
            let _ = fs::set_permissions(&tmp, fs::Permissions::from_mode(old.mode() & 0o7777));
            let pfd = File::open(parent).map_err(ioe(parent))?;
            rustix::fs::renameat_with(
                &pfd,
                tmp.file_name().unwrap_or_default(),
                &pfd,
                target.file_name().unwrap_or_default(),
                rustix::fs::RenameFlags::EXCHANGE,
            )
            .map_err(|e| ArchiveError::Io { path: target.to_path_buf(), source: e.into() })?;
            // `tmp` now holds the old data.
            fs::remove_dir_all(&tmp).map_err(ioe(&tmp))?;
        }
        Ok(_) => {
            let _ = fs::remove_dir_all(&tmp);
            return Err(ArchiveError::Io {
                path: target.to_path_buf(),
                source: io::Error::other("exists and is not a directory"),
            });
        }
        Err(_) => {
            let _ = fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755));
            fs::rename(&tmp, target).map_err(ioe(target))?;
        }
    }
    sync_dir(parent).map_err(ioe(parent))?;
    Ok(n)
}

/// Extract into `dir` (new or empty) with the same checks and hash verification, for
/// `restore --to`. On error `dir` is left as it was.
pub fn extract_into(archive: &Path, expected_sha256: &str, dir: &Path) -> Result<u64, ArchiveError> {
    let tmp = sibling_tmp(dir, "extract")?;
    match extract_checked(archive, expected_sha256, &tmp) {
        Ok(n) => {
            let _ = fs::remove_dir(dir);
            fs::rename(&tmp, dir).map_err(ioe(dir))?;
            Ok(n)
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

/// Extract into a scratch dir and check every entry against the file list: same paths and
/// kinds, each regular file's size and sha256. Names the first mismatch.
pub fn deep_verify(archive: &Path, expected_sha256: &str, list: &FileList) -> Result<(), ArchiveError> {
    let scratch_parent = archive.parent().unwrap_or(Path::new("."));
    let scratch =
        tempfile::Builder::new().prefix(".verify-").tempdir_in(scratch_parent).map_err(ioe(scratch_parent))?;
    let root = scratch.path().join("tree");
    fs::DirBuilder::new().mode(0o700).create(&root).map_err(ioe(&root))?;
    extract_checked(archive, expected_sha256, &root)?;
    let mismatch = |file: &str, what: String| ArchiveError::Mismatch {
        archive: archive.to_path_buf(),
        file: file.to_string(),
        what,
    };
    let mut found = Vec::new();
    walk(&root, "", &mut found)?;
    if found.len() != list.entries.len() {
        return Err(mismatch("*", format!("{} entries extracted, the list has {}", found.len(), list.entries.len())));
    }
    for ((rel, path, m), e) in found.iter().zip(&list.entries) {
        if *rel != e.path {
            return Err(mismatch(&e.path, format!("extracted as \"{rel}\"")));
        }
        match e.kind {
            EntryKind::File | EntryKind::HardLink if m.is_file() => {
                if let Some(want) = &e.sha256 {
                    let (got, size) = sha256_file(path)?;
                    if size != e.size || got != *want {
                        return Err(mismatch(&e.path, format!("content differs (sha256 {got}, list says {want})")));
                    }
                }
            }
            EntryKind::Dir if m.is_dir() => {}
            EntryKind::Symlink if m.file_type().is_symlink() => {
                let t = fs::read_link(path).map_err(ioe(path))?;
                if Some(t.to_string_lossy().as_ref()) != e.target.as_deref() {
                    return Err(mismatch(&e.path, "symlink target differs".into()));
                }
            }
            _ => return Err(mismatch(&e.path, "kind differs".into())),
        }
    }
    Ok(())
}

/// A digest over a whole tree: paths, kinds, modes, owners, mtimes (seconds), contents,
/// symlink targets and hard-link grouping. Tests compare data dirs byte for byte with it.
pub fn tree_digest(dir: &Path) -> Result<String, ArchiveError> {
    let mut items = Vec::new();
    walk(dir, "", &mut items)?;
    let mut h = Sha256::new();
    let mut groups: HashMap<(u64, u64), String> = HashMap::new();
    for (rel, path, m) in items {
        h.update(format!("{rel}\0{:o}\0{}\0{}\0{}\0", m.mode(), m.uid(), m.gid(), m.mtime()).as_bytes());
        if m.file_type().is_symlink() {
            h.update(b"L");
            h.update(fs::read_link(&path).map_err(ioe(&path))?.to_string_lossy().as_bytes());
        } else if m.is_file() {
            if m.nlink() > 1 {
                let first = groups.entry((m.dev(), m.ino())).or_insert_with(|| rel.clone());
                h.update(format!("H{first}\0").as_bytes());
            }
            let (sha, _) = sha256_file(&path)?;
            h.update(sha.as_bytes());
        }
        h.update(b"\n");
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

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
        deep_verify(&archive, &s.sha256, &list).unwrap();
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
        let list = read_file_list(&file_list_path(&a1)).unwrap();
        assert!(tree_unchanged(&src, &list).unwrap());
        let a2 = d.path().join("day2/t1.tar.zst");
        reuse(&a1, &a2).unwrap();
        assert_eq!(sha256_file(&a2).unwrap().0, s.sha256);
        assert_eq!(fs::metadata(&a1).unwrap().ino(), fs::metadata(&a2).unwrap().ino());
        assert!(file_list_path(&a2).is_file());
        fs::write(src.join("db/records.txt"), "changed").unwrap();
        assert!(!tree_unchanged(&src, &list).unwrap());
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
}
