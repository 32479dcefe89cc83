//! The tree walk every archive operation shares: depth first, names sorted bytewise, one open
//! directory per level and the names of one directory at a time in memory (never the whole
//! tree), so memory stays flat with the file count.
//!
//! Every entry is opened relative to its parent's directory fd with `O_NOFOLLOW`: a path that
//! is swapped for a symlink mid-walk (a live tenant with `quiesce = none`, a control-plane dir)
//! is never followed; the walk fails naming it instead. The metadata of a file or directory is
//! the `fstat` of the very fd that is then read, so what is recorded is what was read.
//!
//! A live walk ([`Walker::open_live`], the mirror's pre-copy of a running tenant) skips an entry
//! that vanished or changed its type between the directory read and the open, instead of
//! failing: the next pass sees it as it is then.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags};
use rustix::io::Errno;

use super::{ioe, ArchiveError};

/// What a walked entry is, with what is needed to read it.
pub(crate) enum Node {
    /// A directory (its children follow it in the walk).
    Dir,
    /// A regular file, open for reading.
    File(File),
    /// A symlink and its target's bytes.
    Symlink(Vec<u8>),
    /// A socket, fifo or device node: not archived.
    Other,
}

/// One entry of the walk.
pub(crate) struct Item {
    /// Relative name, '/'-separated bytes.
    pub rel: Vec<u8>,
    /// Its metadata (of the entry itself, never of a symlink's target).
    pub meta: fs::Metadata,
    /// What it is.
    pub node: Node,
}

struct Level {
    dir: OwnedFd,
    rel: Vec<u8>,
    names: std::vec::IntoIter<(Vec<u8>, FileType)>,
    /// What its names cost (of the walk's [`NAMES_BUDGET`]).
    cost: usize,
}

/// A walk of the tree under one directory.
pub(crate) struct Walker {
    root: PathBuf,
    root_meta: fs::Metadata,
    stack: Vec<Level>,
    /// Skip entries that vanish or change type mid-walk (a tree that is being written).
    live: bool,
    /// The memory the names of the open levels take, all together.
    held: usize,
}

fn errno(path: &Path) -> impl FnOnce(Errno) -> ArchiveError + '_ {
    move |e| ArchiveError::Io { path: path.to_path_buf(), source: e.into() }
}

fn changed(path: &Path, what: &str) -> ArchiveError {
    ArchiveError::Io {
        path: path.to_path_buf(),
        source: io::Error::other(format!("{what} while it was being read; not followed, try again")),
    }
}

/// The most memory the names held by one walk may take (the walk sorts a directory's names, so
/// it holds them all, for each directory it is inside): about 900 000 entries of 8-byte names.
/// A tenant's directory with more, or a deep tree of large directories, is refused, naming it,
/// instead of taking the host's memory (a snapshot's peak stays bounded).
pub const NAMES_BUDGET: usize = 48 << 20;
/// The longest relative path walked, in bytes: `PATH_MAX` less its NUL. A longer one (a tree
/// thousands of levels deep) could be archived but never restored by name, by slipway or by
/// tar; it is refused, naming it. It also bounds the depth, so the open directories (one per
/// level) and the paths held stay bounded.
pub const PATH_LIMIT: usize = 4095;
/// What one name costs in memory besides its bytes (the `Vec`, its type, the allocator).
const NAME_OVERHEAD: usize = 48;

/// The sorted names (and types, as the directory reports them) of an open directory, and what
/// they cost, within `budget` bytes.
fn names_within(dir: &OwnedFd, path: &Path, budget: usize) -> Result<Named, ArchiveError> {
    let mut out = Vec::new();
    let mut bytes = 0usize;
    for entry in rustix::fs::Dir::read_from(dir).map_err(errno(path))? {
        let entry = entry.map_err(errno(path))?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        bytes += name.len() + NAME_OVERHEAD;
        if bytes > budget {
            return Err(ArchiveError::Io {
                path: path.to_path_buf(),
                source: io::Error::other(format!(
                    "more than {} entries in one directory (with the directories it is in, {} MiB of \
                     names at least); slipway refuses to walk it rather than exhaust the host's memory: \
                     split it into subdirectories",
                    out.len(),
                    budget >> 20
                )),
            });
        }
        out.push((name.to_vec(), entry.file_type()));
    }
    out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    Ok((out, bytes))
}

type Named = (Vec<(Vec<u8>, FileType)>, usize);

impl Walker {
    /// Start a walk of `root` (which must be a directory).
    pub fn open(root: &Path) -> Result<Walker, ArchiveError> {
        // The root itself is not followed either: a data dir swapped for a symlink is refused.
        let f = File::from(OwnedFd::from(crate::adapters::confined::Root::open(root).map_err(ioe(root))?));
        let root_meta = f.metadata().map_err(ioe(root))?;
        let dir = OwnedFd::from(f);
        let (names, cost) = names_within(&dir, root, NAMES_BUDGET)?;
        Ok(Walker {
            root: root.to_path_buf(),
            root_meta,
            stack: vec![Level { dir, rel: Vec::new(), names: names.into_iter(), cost }],
            live: false,
            held: cost,
        })
    }

    /// A walk of a tree that may change while it is read (a running tenant): an entry that
    /// vanished, or whose type changed, between the directory read and its open is skipped.
    pub fn open_live(root: &Path) -> Result<Walker, ArchiveError> {
        Ok(Walker { live: true, ..Walker::open(root)? })
    }

    /// The metadata of the walked directory itself.
    pub fn root_meta(&self) -> &fs::Metadata {
        &self.root_meta
    }

    /// The full path of a relative name, for messages.
    pub fn path_of(&self, rel: &[u8]) -> PathBuf {
        self.root.join(OsStr::from_bytes(rel))
    }

    /// The next entry, depth first; `None` at the end.
    pub fn next_item(&mut self) -> Result<Option<Item>, ArchiveError> {
        loop {
            let Some(top) = self.stack.last_mut() else { return Ok(None) };
            let Some((name, ft)) = top.names.next() else {
                self.held -= top.cost;
                self.stack.pop();
                continue;
            };
            let mut rel = top.rel.clone();
            if !rel.is_empty() {
                rel.push(b'/');
            }
            rel.extend_from_slice(&name);
            if rel.len() > PATH_LIMIT {
                let shown = String::from_utf8_lossy(&rel[..200]).into_owned();
                return Err(ArchiveError::Io {
                    path: self.root.join(format!("{shown}…")),
                    source: io::Error::other(format!(
                        "a path of {} bytes or more, longer than the {PATH_LIMIT} bytes (PATH_MAX) any tool \
                         can restore by name; slipway refuses to archive or copy it: flatten or shorten the tree",
                        rel.len()
                    )),
                });
            }
            let path = self.root.join(OsStr::from_bytes(&rel));
            if ft == FileType::Directory
                && crate::adapters::confined::is_mount_root(top.dir.as_fd(), OsStr::from_bytes(&name))
            {
                // Another filesystem mounted inside the tree: not the tree's data. Reported
                // like a socket (not archived, not copied, listed as skipped), never descended.
                tracing::warn!("{}: a mount point inside the tree; not archived or copied", path.display());
                let fd = rustix::fs::openat(
                    &top.dir,
                    OsStr::from_bytes(&name),
                    OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(errno(&path))?;
                let meta = File::from(fd).metadata().map_err(ioe(&path))?;
                return Ok(Some(Item { rel, meta, node: Node::Other }));
            }
            let (meta, node, sub) = match open_child(&top.dir, &name, ft, &path) {
                Ok(o) => o,
                Err(_) if self.live && vanished_or_retyped(&top.dir, &name, ft) => continue,
                Err(e) => return Err(e),
            };
            if let Some(dir) = sub {
                let (names, cost) = names_within(&dir, &path, NAMES_BUDGET.saturating_sub(self.held))?;
                self.held += cost;
                self.stack.push(Level { dir, rel: rel.clone(), names: names.into_iter(), cost });
            }
            return Ok(Some(Item { rel, meta, node }));
        }
    }
}

/// Whether `name` in `dir` is gone, or is no longer of the type the directory reported.
fn vanished_or_retyped(dir: &OwnedFd, name: &[u8], ft: FileType) -> bool {
    match rustix::fs::statat(dir, OsStr::from_bytes(name), rustix::fs::AtFlags::SYMLINK_NOFOLLOW) {
        Err(Errno::NOENT) => true,
        Ok(st) => ft != FileType::Unknown && FileType::from_raw_mode(st.st_mode) != ft,
        Err(_) => false,
    }
}

type Opened = (fs::Metadata, Node, Option<OwnedFd>);

/// Open one entry of `dir` without following a symlink, by the type the directory reported
/// (or, when it reported none, by what an `O_PATH` open finds).
fn open_child(dir: &OwnedFd, name: &[u8], ft: FileType, path: &Path) -> Result<Opened, ArchiveError> {
    let name = OsStr::from_bytes(name);
    let want_dir = ft == FileType::Directory;
    if want_dir || ft == FileType::RegularFile {
        let mut flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
        if want_dir {
            flags |= OFlags::DIRECTORY;
        }
        let fd = match rustix::fs::openat(dir, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::LOOP) => return Err(changed(path, "it became a symlink")),
            Err(Errno::NOTDIR) if want_dir => {
                let now = rustix::fs::statat(dir, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
                    .map(|st| FileType::from_raw_mode(st.st_mode));
                let what = if now == Ok(FileType::Symlink) { "it became a symlink" } else { "its type changed" };
                return Err(changed(path, what));
            }
            Err(e) => return Err(errno(path)(e)),
        };
        let f = File::from(fd);
        let meta = f.metadata().map_err(ioe(path))?;
        return if want_dir && meta.is_dir() {
            Ok((meta, Node::Dir, Some(OwnedFd::from(f))))
        } else if !want_dir && meta.is_file() {
            Ok((meta, Node::File(f), None))
        } else {
            Err(changed(path, "its type changed"))
        };
    }
    // Symlinks, special files and names of unknown type: look without opening what it is.
    let fd = rustix::fs::openat(dir, name, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
        .map_err(errno(path))?;
    let f = File::from(fd);
    let meta = f.metadata().map_err(ioe(path))?;
    let t = meta.file_type();
    if t.is_symlink() {
        // An empty path reads the link the O_PATH fd refers to: the same one just looked at.
        let target = rustix::fs::readlinkat(&f, "", Vec::new()).map_err(errno(path))?;
        Ok((meta, Node::Symlink(target.into_bytes()), None))
    } else if t.is_dir() && ft == FileType::Unknown {
        open_child(dir, name.as_bytes(), FileType::Directory, path)
    } else if t.is_file() && ft == FileType::Unknown {
        open_child(dir, name.as_bytes(), FileType::RegularFile, path)
    } else if t.is_dir() || t.is_file() {
        Err(changed(path, "its type changed"))
    } else {
        Ok((meta, Node::Other, None))
    }
}

/// The most memory the first names of hard-linked files may take in one pass (an archive, a
/// copy): about 400 000 hard-linked files. Past it, a further hard-linked file is kept as a file
/// of its own (its data is still all there; only the link is not), so a tenant of millions of
/// hard links cannot take the host's memory.
pub const LINKS_BUDGET: usize = 32 << 20;

/// The first name of each hard-linked file seen, by (device, inode), within [`LINKS_BUDGET`].
#[derive(Default)]
pub(crate) struct Links {
    map: std::collections::HashMap<(u64, u64), Vec<u8>>,
    bytes: usize,
}

impl Links {
    /// The first name recorded for this file.
    pub fn get(&self, key: &(u64, u64)) -> Option<&Vec<u8>> {
        self.map.get(key)
    }

    /// Record `rel` as the first name of `key` (unless one is recorded, or the budget is spent).
    pub fn remember(&mut self, key: (u64, u64), rel: Vec<u8>) {
        let cost = rel.len() + 64;
        if self.bytes + cost <= LINKS_BUDGET && !self.map.contains_key(&key) {
            self.bytes += cost;
            self.map.insert(key, rel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_with_more_names_than_the_budget_is_refused_naming_it() {
        let d = tempfile::tempdir().unwrap();
        for i in 0..2000 {
            std::fs::write(d.path().join(format!("f{i:05}")), b"").unwrap();
        }
        let fd = rustix::fs::open(d.path(), OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        assert_eq!(names_within(&fd, d.path(), 1 << 20).unwrap().0.len(), 2000);
        let e = names_within(&fd, d.path(), 50_000).unwrap_err().to_string();
        assert!(e.contains(&d.path().display().to_string()) && e.contains("entries in one directory"), "{e}");
    }

    /// A fifo where the directory said a file was (a tenant swaps one in between the read and
    /// the open): opened without blocking, and refused as a changed type, never read.
    #[test]
    fn a_fifo_where_a_file_was_is_refused_without_blocking() {
        let d = tempfile::tempdir().unwrap();
        rustix::fs::mknodat(rustix::fs::CWD, d.path().join("f"), FileType::Fifo, Mode::from_raw_mode(0o644), 0)
            .unwrap();
        let fd = rustix::fs::open(d.path(), OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        let t = std::time::Instant::now();
        let e = open_child(&fd, b"f", FileType::RegularFile, &d.path().join("f")).err().expect("refused");
        assert!(e.to_string().contains("its type changed"), "{e}");
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
        // Walked as what it is, it is listed and skipped.
        let mut w = Walker::open(d.path()).unwrap();
        assert!(matches!(w.next_item().unwrap().unwrap().node, Node::Other));
    }

    /// Millions of hard-linked files cost at most `LINKS_BUDGET` of names: past it a file is
    /// kept as a file of its own, and a name recorded is never replaced.
    #[test]
    fn hard_link_names_stay_within_their_budget() {
        let mut l = Links::default();
        let name = vec![b'n'; 200];
        let fits = LINKS_BUDGET / (name.len() + 64);
        for i in 0..fits as u64 + 1000 {
            l.remember((1, i), name.clone());
        }
        assert!(l.get(&(1, 0)).is_some() && l.get(&(1, fits as u64 - 1)).is_some());
        assert!(l.get(&(1, fits as u64 + 10)).is_none());
        assert!(l.bytes <= LINKS_BUDGET);
        l.remember((1, 0), b"other".to_vec());
        assert_eq!(l.get(&(1, 0)), Some(&name));
    }
}
