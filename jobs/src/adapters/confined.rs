//! The confined filesystem layer: every operation slipway does on a tenant's tree (the staging
//! copy, the rollout copy, a restore's or a drill's scratch, the data a restore replaced) goes
//! through a [`Root`] — an open directory handle — with names *relative* to it.
//!
//! A tenant controls every byte of its data dir and runs while slipway (as root) walks, copies
//! and removes it: any path slipway resolves by name under a tenant root may have had one of its
//! directories swapped for a symlink a moment ago. So here:
//! - a relative name is resolved with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//!   RESOLVE_NO_MAGICLINKS)` where the kernel has it (Linux ≥ 5.6), else one component at a
//!   time with `O_NOFOLLOW | O_DIRECTORY`: a symlink anywhere on the way is an error (`ELOOP`),
//!   never followed, and `..` or an absolute name is refused before any syscall;
//! - an operation on the last component acts on the entry itself (`unlinkat`, `mkdirat`,
//!   `symlinkat`, `linkat` without `AT_SYMLINK_FOLLOW`, `fchownat(AT_SYMLINK_NOFOLLOW)`), and
//!   owner, mode and times of a file or dir are set through an fd opened with `O_NOFOLLOW`;
//! - [`Root::remove_all`] never follows a symlink: it removes the link, and walks a dir by fds,
//!   holding one at a time (a 10 000-deep tree needs no 10 000 fds), checking by device and
//!   inode that each `..` it climbs back is the dir it came down from;
//! - the root itself is opened with `O_NOFOLLOW`: a data dir that is a symlink is not a root.
//!
//! Nothing else in slipway opens a path under a tenant root (`architecture_tests` in `lib.rs`
//! reads the other modules for the path-based calls that this layer replaces).

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};

use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags, ResolveFlags, Timespec, Timestamps};
use rustix::io::Errno;

/// An open directory that names are resolved beneath, never out of.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

/// Owner, mode (the low 12 bits: setuid, setgid and sticky are kept) and times to give an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attrs {
    /// Numeric owner.
    pub uid: u32,
    /// Numeric group.
    pub gid: u32,
    /// Permission bits with setuid/setgid/sticky.
    pub mode: u32,
    /// Access time (seconds, nanoseconds).
    pub atime: (i64, i64),
    /// Modification time (seconds, nanoseconds).
    pub mtime: (i64, i64),
}

impl Attrs {
    /// The attributes of an entry as `meta` describes it.
    pub fn of(meta: &fs::Metadata) -> Attrs {
        Attrs {
            uid: meta.uid(),
            gid: meta.gid(),
            mode: meta.mode() & 0o7777,
            atime: (meta.atime(), meta.atime_nsec()),
            mtime: (meta.mtime(), meta.mtime_nsec()),
        }
    }

    fn times(&self) -> Timestamps {
        let ts = |(s, n): (i64, i64)| Timespec { tv_sec: s, tv_nsec: n as _ };
        Timestamps { last_access: ts(self.atime), last_modification: ts(self.mtime) }
    }
}

/// 0: not probed yet, 1: `openat2` works, 2: it does not (old kernel, a seccomp filter).
static OPENAT2: AtomicU8 = AtomicU8::new(0);

#[cfg(test)]
thread_local! {
    /// Tests run the kernel's older paths on a kernel that has the newer ones (this thread
    /// only): [`with_fallback`] turns off `openat2`, [`without_exchange`] `RENAME_EXCHANGE`.
    static FORCE_FALLBACK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static NO_EXCHANGE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Run `f` with `flag` set on this thread.
#[cfg(test)]
fn with_flag<T>(flag: &'static std::thread::LocalKey<std::cell::Cell<bool>>, f: impl FnOnce() -> T) -> T {
    flag.with(|c| c.set(true));
    let out = f();
    flag.with(|c| c.set(false));
    out
}

/// Run `f` with the per-component resolution instead of `openat2` (this thread only).
#[cfg(test)]
pub(crate) fn with_fallback<T>(f: impl FnOnce() -> T) -> T {
    with_flag(&FORCE_FALLBACK, f)
}

/// Swaps on this thread act as on a filesystem without `RENAME_EXCHANGE`.
#[cfg(test)]
pub(crate) fn without_exchange<T>(f: impl FnOnce() -> T) -> T {
    with_flag(&NO_EXCHANGE, f)
}

fn use_openat2(probe: BorrowedFd<'_>) -> bool {
    #[cfg(test)]
    if FORCE_FALLBACK.with(|c| c.get()) {
        return false;
    }
    match OPENAT2.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            let r =
                rustix::fs::openat2(probe, ".", OFlags::PATH | OFlags::CLOEXEC, Mode::empty(), ResolveFlags::BENEATH);
            // ENOSYS: no such syscall; EPERM: a seccomp filter that refuses what it does not know.
            let works = !matches!(r, Err(Errno::NOSYS) | Err(Errno::PERM));
            OPENAT2.store(if works { 1 } else { 2 }, Ordering::Relaxed);
            works
        }
    }
}

fn refused(rel: &[u8], why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("{:?}: {why}", String::from_utf8_lossy(rel)))
}

/// The components of a relative name; `..`, `.`, empty components and absolute names refused.
fn components(rel: &[u8]) -> io::Result<Vec<&[u8]>> {
    if rel.is_empty() {
        return Ok(Vec::new());
    }
    if rel.starts_with(b"/") {
        return Err(refused(rel, "an absolute name where a name inside the tree was expected"));
    }
    let parts: Vec<&[u8]> = rel.split(|c| *c == b'/').collect();
    if parts.iter().any(|p| p.is_empty() || *p == b"." || *p == b"..") {
        return Err(refused(rel, "not a plain name inside the tree (an empty, '.' or '..' component)"));
    }
    Ok(parts)
}

/// The parent dir of a name, open, and the name's last component.
struct Place<'a> {
    dir: Dirfd<'a>,
    name: &'a OsStr,
}

enum Dirfd<'a> {
    Borrowed(BorrowedFd<'a>),
    Owned(OwnedFd),
}

impl Dirfd<'_> {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Dirfd::Borrowed(b) => *b,
            Dirfd::Owned(o) => o.as_fd(),
        }
    }
}

const DIR_FLAGS: OFlags = OFlags::RDONLY.union(OFlags::DIRECTORY).union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC);

impl Root {
    /// Open the directory `path` as a root. The last component must not be a symlink (the
    /// dirs above it are the host's, named in its config).
    pub fn open(path: &Path) -> io::Result<Root> {
        let fd = rustix::fs::open(path, DIR_FLAGS, Mode::empty()).map_err(|e| match e {
            Errno::LOOP | Errno::NOTDIR if fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) => {
                io::Error::other("it is a symlink; slipway never follows one to a tenant's tree")
            }
            e => e.into(),
        })?;
        Ok(Root { fd, path: path.to_path_buf() })
    }

    /// Open a dir of the host's own — one the host config names, or one slipway made there
    /// (the backup store, the dir holding the data dirs) — as a root: symlinks the host set up
    /// on its path are followed; nothing beneath it is.
    pub fn open_host(path: &Path) -> io::Result<Root> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        Ok(Root { fd: rustix::fs::open(path, flags, Mode::empty())?, path: path.to_path_buf() })
    }

    /// Create the host dir `path` (mode 0700, missing parents too) if it is missing, and open
    /// it as a root ([`Root::open_host`]).
    pub fn create_private(path: &Path) -> io::Result<Root> {
        crate::fsutil::create_private_dir(path)?;
        Root::open_host(path)
    }

    /// The path this root was opened as (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of a name under this root (for messages).
    pub fn display(&self, rel: &[u8]) -> PathBuf {
        if rel.is_empty() {
            self.path.clone()
        } else {
            self.path.join(OsStr::from_bytes(rel))
        }
    }

    /// The root's directory fd.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Open a name beneath the root: no symlink on the way or at the end followed, nothing
    /// outside reached.
    fn open_beneath(&self, rel: &[u8], flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
        let parts = components(rel)?;
        let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        if parts.is_empty() {
            return Ok(rustix::fs::openat(&self.fd, ".", flags, mode)?);
        }
        if use_openat2(self.fd.as_fd()) {
            let how = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
            return Ok(rustix::fs::openat2(&self.fd, OsStr::from_bytes(rel), flags, mode, how)?);
        }
        let (last, dirs) = parts.split_last().unwrap_or_else(|| unreachable!());
        let mut dir: Option<OwnedFd> = None;
        for d in dirs {
            let at = dir.as_ref().map_or(self.fd.as_fd(), |f| f.as_fd());
            dir = Some(rustix::fs::openat(at, OsStr::from_bytes(d), DIR_FLAGS, Mode::empty())?);
        }
        let at = dir.as_ref().map_or(self.fd.as_fd(), |f| f.as_fd());
        Ok(rustix::fs::openat(at, OsStr::from_bytes(last), flags, mode)?)
    }

    /// The open parent of `rel` and its last component (`rel` must not be empty).
    fn place<'a>(&'a self, rel: &'a [u8]) -> io::Result<Place<'a>> {
        let parts = components(rel)?;
        let Some(last) = parts.last() else { return Err(refused(rel, "the root itself where an entry was expected")) };
        let name = OsStr::from_bytes(last);
        let parent = &rel[..rel.len() - last.len()];
        let parent = parent.strip_suffix(b"/").unwrap_or(parent);
        let dir = if parent.is_empty() {
            Dirfd::Borrowed(self.fd.as_fd())
        } else {
            Dirfd::Owned(self.open_beneath(parent, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())?)
        };
        Ok(Place { dir, name })
    }

    /// Open a directory beneath the root as a root of its own.
    pub fn open_dir(&self, rel: &[u8]) -> io::Result<Root> {
        let fd = self.open_beneath(rel, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())?;
        Ok(Root { fd, path: self.display(rel) })
    }

    /// The metadata of the entry itself (a symlink's own, never its target's); `None` if
    /// nothing is there.
    pub fn metadata(&self, rel: &[u8]) -> io::Result<Option<fs::Metadata>> {
        match self.open_beneath(rel, OFlags::PATH, Mode::empty()) {
            Ok(fd) => Ok(Some(File::from(fd).metadata()?)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Open a regular file for reading (a fifo or device is refused, never opened for real).
    pub fn open_file(&self, rel: &[u8]) -> io::Result<File> {
        let fd = self.open_beneath(rel, OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY, Mode::empty())?;
        let f = File::from(fd);
        if !f.metadata()?.is_file() {
            return Err(io::Error::other("not a regular file"));
        }
        Ok(f)
    }

    /// Create a new regular file (never an existing one, never through a symlink), for writing.
    pub fn create_file(&self, rel: &[u8], mode: u32) -> io::Result<File> {
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL;
        Ok(File::from(self.open_beneath(rel, flags, Mode::from_raw_mode(mode))?))
    }

    /// Create a directory.
    pub fn mkdir(&self, rel: &[u8], mode: u32) -> io::Result<()> {
        let p = self.place(rel)?;
        Ok(rustix::fs::mkdirat(p.dir.fd(), p.name, Mode::from_raw_mode(mode))?)
    }

    /// Create a symlink at `rel` pointing at `target` (which is data, never resolved here).
    pub fn symlink(&self, target: &[u8], rel: &[u8]) -> io::Result<()> {
        let p = self.place(rel)?;
        Ok(rustix::fs::symlinkat(OsStr::from_bytes(target), p.dir.fd(), p.name)?)
    }

    /// Hard-link the entry `from` (itself, a symlink is not followed) as `to`.
    pub fn hard_link(&self, from: &[u8], to: &[u8]) -> io::Result<()> {
        let (a, b) = (self.place(from)?, self.place(to)?);
        Ok(rustix::fs::linkat(a.dir.fd(), a.name, b.dir.fd(), b.name, AtFlags::empty())?)
    }

    /// The target of the symlink at `rel`.
    pub fn read_link(&self, rel: &[u8]) -> io::Result<Vec<u8>> {
        let p = self.place(rel)?;
        Ok(rustix::fs::readlinkat(p.dir.fd(), p.name, Vec::new())?.into_bytes())
    }

    /// Rename `from` to `to`, both beneath this root; with `exchange`, swap the two atomically
    /// (`RENAME_EXCHANGE`).
    pub fn rename(&self, from: &[u8], to: &[u8], exchange: bool) -> io::Result<()> {
        let (a, b) = (self.place(from)?, self.place(to)?);
        let flags = if exchange { RenameFlags::EXCHANGE } else { RenameFlags::NOREPLACE };
        Ok(rustix::fs::renameat_with(a.dir.fd(), a.name, b.dir.fd(), b.name, flags)?)
    }

    /// Give the file or dir at `rel` (never a symlink's target) owner, mode and times. Owner
    /// first: a chown clears the setuid/setgid bits the mode then sets.
    pub fn set_attrs(&self, rel: &[u8], a: &Attrs) -> io::Result<()> {
        let fd = self.open_beneath(rel, OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY, Mode::empty())?;
        set_fd_attrs(&fd, a)
    }

    /// Give the file or dir at `rel` owner and mode (its times as they are); `None` keeps one.
    pub fn set_owner_mode(&self, rel: &[u8], owner: Option<(u32, u32)>, mode: u32) -> io::Result<()> {
        let fd = self.open_beneath(rel, OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY, Mode::empty())?;
        if let Some((uid, gid)) = owner {
            rustix::fs::fchown(&fd, Some(rustix::fs::Uid::from_raw(uid)), Some(rustix::fs::Gid::from_raw(gid)))?;
        }
        Ok(rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))?)
    }

    /// Give the symlink at `rel` itself owner and times (a symlink has no mode of its own).
    pub fn set_symlink_attrs(&self, rel: &[u8], a: &Attrs) -> io::Result<()> {
        let p = self.place(rel)?;
        let (uid, gid) = (rustix::fs::Uid::from_raw(a.uid), rustix::fs::Gid::from_raw(a.gid));
        rustix::fs::chownat(p.dir.fd(), p.name, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW)?;
        Ok(rustix::fs::utimensat(p.dir.fd(), p.name, &a.times(), AtFlags::SYMLINK_NOFOLLOW)?)
    }

    /// fsync the dir (or file) at `rel` (`rel` empty: the root).
    pub fn sync(&self, rel: &[u8]) -> io::Result<()> {
        let fd = self.open_beneath(rel, OFlags::RDONLY | OFlags::NONBLOCK, Mode::empty())?;
        Ok(rustix::fs::fsync(&fd)?)
    }

    /// Remove whatever is at `rel` — a file, a symlink (the link itself) or a dir with all it
    /// holds — without following any symlink; whether something was there. `rel` empty: the
    /// root's contents (the root itself stays).
    pub fn remove_all(&self, rel: &[u8]) -> io::Result<bool> {
        if rel.is_empty() {
            self.no_mount_under(rel)?;
            let fd = rustix::fs::openat(&self.fd, ".", DIR_FLAGS, Mode::empty())?;
            empty_dir(fd)?;
            return Ok(true);
        }
        let p = match self.place(rel) {
            Ok(p) => p,
            // Its parent is gone: so is it.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        let st = match rustix::fs::statat(p.dir.fd(), p.name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory {
            if is_mount_root(p.dir.fd(), p.name) {
                return Err(mounted(p.name));
            }
            self.no_mount_under(rel)?;
            let fd = rustix::fs::openat(p.dir.fd(), p.name, DIR_FLAGS, Mode::empty())?;
            empty_dir(fd)?;
            unlink(p.dir.fd(), p.name, true)?;
        } else {
            unlink(p.dir.fd(), p.name, false)?;
        }
        Ok(true)
    }
}

impl Root {
    /// Refuse, before removing anything, a tree with a mount below it (the mount table names
    /// them; the walk's own check at each dir stays, for one mounted meanwhile).
    fn no_mount_under(&self, rel: &[u8]) -> io::Result<()> {
        match crate::fsutil::mounts_under(&self.display(rel)) {
            Ok(m) if !m.is_empty() => Err(mounted(m[0].as_os_str())),
            _ => Ok(()),
        }
    }
}

/// Remove the tree at `path` — a dir with all it holds, a file or a symlink (the link itself)
/// — without following any symlink in it; whether something was there. Its parent is opened
/// as the root (the dirs above a tenant tree are the host's).
pub fn remove_tree(path: &Path) -> io::Result<bool> {
    match host_parent(path) {
        Ok((r, name)) => r.remove_all(&name),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// The host dir holding `path` (opened as [`Root::open_host`]) and `path`'s name in it.
fn host_parent(path: &Path) -> io::Result<(Root, Vec<u8>)> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: no parent dir or no name", path.display()),
        ));
    };
    let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
    Ok((Root::open_host(parent)?, name.as_bytes().to_vec()))
}

/// Exchange the dirs `a` and `b` (on one filesystem) with `RENAME_EXCHANGE`, by name in their
/// parents (neither followed if it is a symlink), and make both renames durable.
///
/// A filesystem without `RENAME_EXCHANGE` (OpenZFS before 2.2, NFS, CIFS) gets a journaled
/// swap of three renames instead: a journal beside `b` names both dirs by inode, `b` goes to
/// an aside name, `a` to `b`, the aside to `a`. A crash between them leaves the journal, and
/// [`finish_swap`] (which every caller runs before it looks at `b`) completes the swap. Refused
/// while a journal of an earlier swap of `b` is there: finish that first.
pub fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    let ((pa, na), (pb, nb)) = (host_parent(a)?, host_parent(b)?);
    if pb.metadata(&journal_name(&nb))?.is_some() {
        return Err(io::Error::other(format!(
            "an interrupted swap of {} is pending (its journal is beside it); it must be finished first",
            b.display()
        )));
    }
    let plain = if no_exchange() {
        Err(Errno::INVAL)
    } else {
        rustix::fs::renameat_with(
            pa.fd(),
            OsStr::from_bytes(&na),
            pb.fd(),
            OsStr::from_bytes(&nb),
            RenameFlags::EXCHANGE,
        )
    };
    match plain {
        Ok(()) => {}
        // The filesystem has no RENAME_EXCHANGE.
        Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => journaled_swap(&pa, &na, &pb, &nb, usize::MAX)?,
        Err(e) => return Err(e.into()),
    }
    rustix::fs::fsync(pa.fd())?;
    Ok(rustix::fs::fsync(pb.fd())?)
}

/// Whether `RENAME_EXCHANGE` works in `dir` (two scratch dirs swapped and removed): without
/// it, swaps there take the journaled three renames.
pub fn supports_exchange(dir: &Path) -> io::Result<bool> {
    let r = Root::open_host(dir)?;
    let (x, y) =
        (format!(".slipway-xprobe-{}-a", std::process::id()), format!(".slipway-xprobe-{}-b", std::process::id()));
    r.mkdir(x.as_bytes(), 0o700)?;
    let made = r.mkdir(y.as_bytes(), 0o700);
    let ok = made.is_ok() && r.rename(x.as_bytes(), y.as_bytes(), true).is_ok();
    let _ = r.remove_all(x.as_bytes());
    let _ = r.remove_all(y.as_bytes());
    made.map(|()| ok)
}

fn journal_name(nb: &[u8]) -> Vec<u8> {
    [b".", nb, b".slipway-swap"].concat()
}

fn aside_name(nb: &[u8]) -> Vec<u8> {
    [b".", nb, b".slipway-swap-aside"].concat()
}

const JOURNAL_MAGIC: &str = "slipway-swap 1";

fn no_exchange() -> bool {
    #[cfg(test)]
    if NO_EXCHANGE.with(|c| c.get()) {
        return true;
    }
    // The end-to-end tests run the journaled swap on filesystems that have the exchange.
    cfg!(feature = "test-crash") && std::env::var_os("SLIPWAY_TEST_NO_EXCHANGE").is_some()
}

/// The three renames of a swap without `RENAME_EXCHANGE`, journaled beside `b`; `steps` cuts
/// it short after that many (a crash, for tests).
fn journaled_swap(pa: &Root, na: &[u8], pb: &Root, nb: &[u8], steps: usize) -> io::Result<()> {
    let ino = |r: &Root, n: &[u8]| -> io::Result<u64> {
        r.metadata(n)?.map(|m| m.ino()).ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    };
    let (ia, ib) = (ino(pa, na)?, ino(pb, nb)?);
    let text =
        format!("{JOURNAL_MAGIC}\n{}\n{}\n{ia} {ib}\n", hex::encode(pa.path().as_os_str().as_bytes()), hex::encode(na));
    let journal = pb.display(&journal_name(nb));
    crate::fsutil::atomic_write(&journal, text.as_bytes(), 0o600)?;
    let aside = aside_name(nb);
    let renames: [(&Root, &[u8], &Root, &[u8]); 3] = [(pb, nb, pb, &aside), (pa, na, pb, nb), (pb, &aside, pa, na)];
    for (i, (r1, n1, r2, n2)) in renames.into_iter().enumerate() {
        if i == steps {
            return Ok(());
        }
        rename_between(r1, n1, r2, n2)?;
    }
    if steps == 3 {
        // Cut short before the journal goes.
        return Ok(());
    }
    rustix::fs::unlinkat(pb.fd(), OsStr::from_bytes(&journal_name(nb)), AtFlags::empty())?;
    Ok(rustix::fs::fsync(pb.fd())?)
}

fn rename_between(r1: &Root, n1: &[u8], r2: &Root, n2: &[u8]) -> io::Result<()> {
    rustix::fs::renameat_with(r1.fd(), OsStr::from_bytes(n1), r2.fd(), OsStr::from_bytes(n2), RenameFlags::NOREPLACE)?;
    rustix::fs::fsync(r1.fd())?;
    Ok(rustix::fs::fsync(r2.fd())?)
}

/// Complete a journaled swap of `b` that a crash cut short (see [`exchange`]); whether there
/// was one. What each rename did is told by the inodes the journal recorded, so it is safe to
/// run any number of times.
pub fn finish_swap(b: &Path) -> io::Result<bool> {
    let (pb, nb) = host_parent(b)?;
    let jname = journal_name(&nb);
    let journal = pb.display(&jname);
    let text = match fs::read_to_string(&journal) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let bad =
        || io::Error::other(format!("{}: not a swap journal slipway wrote; left for a person", journal.display()));
    let mut lines = text.lines();
    if lines.next() != Some(JOURNAL_MAGIC) {
        return Err(bad());
    }
    let pa_path = lines.next().and_then(|h| hex::decode(h).ok()).ok_or_else(bad)?;
    let na = lines.next().and_then(|h| hex::decode(h).ok()).ok_or_else(bad)?;
    let inos: Vec<u64> = lines.next().unwrap_or_default().split(' ').filter_map(|n| n.parse().ok()).collect();
    let [ia, ib] = inos[..] else { return Err(bad()) };
    let pa = Root::open_host(Path::new(OsStr::from_bytes(&pa_path)))?;
    let aside = aside_name(&nb);
    let ino = |r: &Root, n: &[u8]| r.metadata(n).map(|m| m.map(|m| m.ino()));
    let (at_b, at_aside) = (ino(&pb, &nb)?, ino(&pb, &aside)?);
    if at_aside == Some(ib) {
        if at_b.is_none() && ino(&pa, &na)? == Some(ia) {
            // b moved aside; a not yet in its place.
            rename_between(&pa, &na, &pb, &nb)?;
        }
        if ino(&pb, &nb)? == Some(ia) && ino(&pa, &na)?.is_none() {
            rename_between(&pb, &aside, &pa, &na)?;
        }
    } else if at_b == Some(ib) && at_aside.is_none() && ino(&pa, &na)? == Some(ia) {
        // Journaled, nothing renamed yet: the swap was decided, so it is made.
        return journaled_swap_resume(&pa, &na, &pb, &nb).map(|()| true);
    }
    if !(ino(&pb, &nb)? == Some(ia) && ino(&pa, &na)? == Some(ib)) {
        return Err(io::Error::other(format!(
            "{}: the dirs it names are not where an interrupted swap leaves them; left for a person",
            journal.display()
        )));
    }
    rustix::fs::unlinkat(pb.fd(), OsStr::from_bytes(&jname), AtFlags::empty())?;
    rustix::fs::fsync(pb.fd())?;
    Ok(true)
}

/// The renames of a journaled swap whose journal is written and nothing renamed yet.
fn journaled_swap_resume(pa: &Root, na: &[u8], pb: &Root, nb: &[u8]) -> io::Result<()> {
    rustix::fs::unlinkat(pb.fd(), OsStr::from_bytes(&journal_name(nb)), AtFlags::empty())?;
    journaled_swap(pa, na, pb, nb, usize::MAX)
}

/// Rename `from` to `to` (which must not exist), by name in their host parents.
pub fn rename_new(from: &Path, to: &Path) -> io::Result<()> {
    let ((pa, na), (pb, nb)) = (host_parent(from)?, host_parent(to)?);
    rustix::fs::renameat_with(
        pa.fd(),
        OsStr::from_bytes(&na),
        pb.fd(),
        OsStr::from_bytes(&nb),
        RenameFlags::NOREPLACE,
    )?;
    rustix::fs::fsync(pa.fd())?;
    Ok(rustix::fs::fsync(pb.fd())?)
}

impl From<Root> for OwnedFd {
    fn from(r: Root) -> OwnedFd {
        r.fd
    }
}

/// Give the open file or dir `fd` owner, mode and times.
pub fn set_fd_attrs(fd: impl AsFd, a: &Attrs) -> io::Result<()> {
    let (uid, gid) = (rustix::fs::Uid::from_raw(a.uid), rustix::fs::Gid::from_raw(a.gid));
    rustix::fs::fchown(&fd, Some(uid), Some(gid))?;
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(a.mode))?;
    Ok(rustix::fs::futimens(&fd, &a.times())?)
}

/// Whether the dir `name` in `dir` is the root of a mount (`STATX_ATTR_MOUNT_ROOT`, Linux 5.8:
/// bind mounts of the same filesystem too; before that, a device other than its parent's).
pub fn is_mount_root(dir: BorrowedFd<'_>, name: &OsStr) -> bool {
    use rustix::fs::{StatxAttributes, StatxFlags};
    match rustix::fs::statx(dir, name, AtFlags::SYMLINK_NOFOLLOW, StatxFlags::BASIC_STATS) {
        Ok(st) if st.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT) => {
            st.stx_attributes.contains(StatxAttributes::MOUNT_ROOT)
        }
        Ok(st) => rustix::fs::fstat(dir).is_ok_and(|p| (st.stx_dev_major, st.stx_dev_minor) != dev_parts(p.st_dev)),
        Err(_) => false,
    }
}

fn dev_parts(dev: u64) -> (u32, u32) {
    (rustix::fs::major(dev), rustix::fs::minor(dev))
}

fn mounted(what: &OsStr) -> io::Error {
    io::Error::other(format!(
        "{} is a mount point inside the tree: slipway never empties or removes what is mounted there; \
         unmount it first",
        what.to_string_lossy()
    ))
}

fn unlink(dir: BorrowedFd<'_>, name: &OsStr, is_dir: bool) -> io::Result<()> {
    let flags = if is_dir { AtFlags::REMOVEDIR } else { AtFlags::empty() };
    match rustix::fs::unlinkat(dir, name, flags) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The first subdirectory of `dir` after removing every other entry in it; `None` when it
/// is empty.
fn clear_files(dir: &OwnedFd) -> io::Result<Option<Vec<u8>>> {
    // Read the names first: removing while a stream is open may skip entries.
    let mut names = Vec::new();
    for e in rustix::fs::Dir::read_from(dir)? {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push((n.to_vec(), e.file_type()));
        }
    }
    let mut sub = None;
    for (name, ft) in names {
        let os = OsStr::from_bytes(&name);
        let is_dir = match ft {
            rustix::fs::FileType::Directory => true,
            rustix::fs::FileType::Unknown => match rustix::fs::statat(dir, os, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory,
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(e.into()),
            },
            _ => false,
        };
        if is_dir {
            if sub.is_none() {
                sub = Some(name);
            }
        } else {
            unlink(dir.as_fd(), os, false)?;
        }
    }
    Ok(sub)
}

/// Remove everything in the open dir `top`, depth first, one dir fd open at a time: down into a
/// subdir by name with `O_NOFOLLOW`, back up by `..`, checked to be the dir we came from.
fn empty_dir(top: OwnedFd) -> io::Result<()> {
    let id = |fd: &OwnedFd| rustix::fs::fstat(fd).map(|st| (st.st_dev, st.st_ino));
    // (dev, ino) of each dir above the current one, and the current one's name in it.
    let mut up: Vec<((u64, u64), Vec<u8>)> = Vec::new();
    let mut cur = top;
    loop {
        match clear_files(&cur)? {
            Some(name) => {
                if is_mount_root(cur.as_fd(), OsStr::from_bytes(&name)) {
                    return Err(mounted(OsStr::from_bytes(&name)));
                }
                let child = rustix::fs::openat(&cur, OsStr::from_bytes(&name), DIR_FLAGS, Mode::empty())?;
                up.push((id(&cur)?, name));
                cur = child;
            }
            None => {
                let Some((parent_id, name)) = up.pop() else { return Ok(()) };
                let parent = rustix::fs::openat(&cur, "..", DIR_FLAGS, Mode::empty())?;
                if id(&parent)? != parent_id {
                    return Err(io::Error::other(
                        "a directory was moved while it was being removed; stopped rather than follow it",
                    ));
                }
                unlink(parent.as_fd(), OsStr::from_bytes(&name), true)?;
                cur = parent;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    /// A host dir outside every root, that nothing may touch.
    fn sentinel(d: &Path) -> PathBuf {
        let s = d.join("host");
        fs::create_dir_all(s.join("etc")).unwrap();
        fs::write(s.join("etc/passwd"), "root:x:0:0").unwrap();
        s
    }

    fn both(f: impl Fn()) {
        f();
        with_fallback(&f);
    }

    #[test]
    fn a_symlink_anywhere_on_the_way_is_never_followed_by_any_operation() {
        both(|| {
            let d = tempfile::tempdir().unwrap();
            let host = sentinel(d.path());
            let t = d.path().join("tenant");
            fs::create_dir_all(t.join("real")).unwrap();
            symlink(&host, t.join("x")).unwrap();
            symlink(host.join("etc/passwd"), t.join("f")).unwrap();
            let r = Root::open(&t).unwrap();
            // Through the link: every operation refuses.
            assert!(r.remove_all(b"x/etc").is_err());
            assert!(r.remove_all(b"x/etc/passwd").is_err());
            assert!(r.create_file(b"x/new", 0o600).is_err());
            assert!(r.mkdir(b"x/newdir", 0o700).is_err());
            assert!(r.symlink(b"/", b"x/l").is_err());
            assert!(r.hard_link(b"x/etc/passwd", b"real/stolen").is_err());
            assert!(r.open_file(b"x/etc/passwd").is_err());
            assert!(r.open_file(b"f").is_err());
            assert!(r.metadata(b"x/etc").is_err());
            assert!(r.open_dir(b"x").is_err());
            assert!(r.rename(b"x/etc", b"real/etc", false).is_err());
            let a = Attrs { uid: 1, gid: 1, mode: 0o777, atime: (0, 0), mtime: (0, 0) };
            assert!(r.set_attrs(b"f", &a).is_err());
            assert!(r.set_attrs(b"x/etc", &a).is_err());
            // `..` and absolute names are refused before any syscall.
            assert!(r.remove_all(b"../host").is_err());
            assert!(r.remove_all(b"real/../../host").is_err());
            assert!(r.create_file(b"/tmp/x", 0o600).is_err());
            // The link itself is removed, never what it points at.
            assert!(r.remove_all(b"x").unwrap());
            assert!(r.remove_all(b"f").unwrap());
            assert_eq!(fs::read(host.join("etc/passwd")).unwrap(), b"root:x:0:0");
            assert!(!r.remove_all(b"x").unwrap());
        });
    }

    #[test]
    fn remove_all_empties_a_deep_tree_with_symlinks_to_outside_and_leaves_outside_alone() {
        both(|| {
            let d = tempfile::tempdir().unwrap();
            let host = sentinel(d.path());
            let t = d.path().join("t");
            fs::create_dir_all(t.join("0")).unwrap();
            // Deeper than PATH_MAX allows to name, and than the 1024 fds a process holds by default.
            let mut fd = rustix::fs::open(&t, DIR_FLAGS, Mode::empty()).unwrap();
            for _ in 0..3_000 {
                rustix::fs::mkdirat(&fd, "d", Mode::from_raw_mode(0o700)).unwrap();
                fd = rustix::fs::openat(&fd, "d", DIR_FLAGS, Mode::empty()).unwrap();
            }
            drop(File::from(
                rustix::fs::openat(&fd, "leaf", OFlags::CREATE | OFlags::WRONLY, Mode::from_raw_mode(0o600)).unwrap(),
            ));
            rustix::fs::symlinkat(&host, &fd, "up").unwrap();
            symlink(&host, t.join("0/top-link")).unwrap();
            fs::write(t.join("file"), "f").unwrap();
            let r = Root::open(d.path()).unwrap();
            assert!(r.remove_all(b"t").unwrap());
            assert!(!t.exists());
            assert_eq!(fs::read(host.join("etc/passwd")).unwrap(), b"root:x:0:0");
        });
    }

    #[test]
    fn what_is_mounted_inside_a_tree_is_never_emptied() {
        let d = tempfile::tempdir().unwrap();
        let m = d.path().join("t/db/mnt");
        fs::create_dir_all(&m).unwrap();
        let ok = std::process::Command::new("mount").args(["-t", "tmpfs", "tmpfs"]).arg(&m).status().unwrap();
        assert!(ok.success(), "the tests run as root and mount a tmpfs");
        fs::write(m.join("precious"), "on another filesystem").unwrap();
        fs::write(d.path().join("t/db/file"), "x").unwrap();
        let r = Root::open(d.path()).unwrap();
        let e = r.remove_all(b"t").unwrap_err();
        let e2 = r.remove_all(b"t/db/mnt").unwrap_err();
        let kept = fs::read(m.join("precious"));
        // Refused before anything is removed: not half a tree gone and then an error.
        let beside = fs::read(d.path().join("t/db/file"));
        let _ = std::process::Command::new("umount").arg(&m).status();
        assert!(e.to_string().contains("mount point") && e.to_string().contains("t/db/mnt"), "{e}");
        assert!(e2.to_string().contains("mount point"), "{e2}");
        assert_eq!(kept.unwrap(), b"on another filesystem");
        assert_eq!(beside.unwrap(), b"x", "the removal began before it met the mount");
    }

    /// Two dirs to swap, each with a file naming it.
    fn pair(d: &Path) -> (PathBuf, PathBuf) {
        let (a, b) = (d.join("copies/t1"), d.join("data/t1"));
        fs::create_dir_all(&a).unwrap();
        fs::create_dir_all(&b).unwrap();
        fs::write(a.join("f"), "pre-rollout").unwrap();
        fs::write(b.join("f"), "written by the failed version").unwrap();
        (a, b)
    }

    fn swapped(a: &Path, b: &Path) -> bool {
        fs::read_to_string(b.join("f")).unwrap() == "pre-rollout"
            && fs::read_to_string(a.join("f")).unwrap() == "written by the failed version"
    }

    #[test]
    fn without_rename_exchange_the_swap_takes_three_journaled_renames_and_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = pair(d.path());
        without_exchange(|| exchange(&a, &b)).unwrap();
        assert!(swapped(&a, &b));
        assert_eq!(fs::read_dir(b.parent().unwrap()).unwrap().count(), 1, "journal or aside left behind");
        assert!(!finish_swap(&b).unwrap());
        assert!(supports_exchange(d.path()).unwrap(), "this filesystem has RENAME_EXCHANGE");
    }

    #[test]
    fn a_journaled_swap_cut_short_after_any_rename_is_finished_by_the_next_look() {
        for steps in 0..=3 {
            let d = tempfile::tempdir().unwrap();
            let (a, b) = pair(d.path());
            let ((pa, na), (pb, nb)) = (host_parent(&a).unwrap(), host_parent(&b).unwrap());
            journaled_swap(&pa, &na, &pb, &nb, steps).unwrap();
            // A second swap is refused while the first is pending.
            assert!(exchange(&a, &b).is_err(), "after {steps} renames");
            assert!(finish_swap(&b).unwrap(), "after {steps} renames");
            assert!(swapped(&a, &b), "after {steps} renames");
            assert_eq!(fs::read_dir(b.parent().unwrap()).unwrap().count(), 1, "after {steps} renames");
            assert!(!finish_swap(&b).unwrap());
        }
    }

    #[test]
    fn a_root_that_is_a_symlink_is_not_opened() {
        let d = tempfile::tempdir().unwrap();
        let host = sentinel(d.path());
        symlink(&host, d.path().join("data")).unwrap();
        let e = Root::open(&d.path().join("data")).unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
    }

    #[test]
    fn attributes_with_setuid_setgid_and_sticky_bits_are_set_on_the_entry_itself() {
        both(|| {
            let d = tempfile::tempdir().unwrap();
            let r = Root::open(d.path()).unwrap();
            r.mkdir(b"d", 0o700).unwrap();
            drop(r.create_file(b"d/f", 0o600).unwrap());
            r.symlink(b"f", b"d/l").unwrap();
            let a = Attrs { uid: 1234, gid: 5678, mode: 0o6755, atime: (1, 2), mtime: (1_600_000_000, 7) };
            r.set_attrs(b"d/f", &a).unwrap();
            r.set_attrs(b"d", &Attrs { mode: 0o3770, ..a }).unwrap();
            r.set_symlink_attrs(b"d/l", &a).unwrap();
            let m = fs::metadata(d.path().join("d/f")).unwrap();
            assert_eq!((m.uid(), m.gid(), m.permissions().mode() & 0o7777), (1234, 5678, 0o6755));
            assert_eq!((m.mtime(), m.mtime_nsec()), (1_600_000_000, 7));
            assert_eq!(fs::metadata(d.path().join("d")).unwrap().permissions().mode() & 0o7777, 0o3770);
            let l = fs::symlink_metadata(d.path().join("d/l")).unwrap();
            assert_eq!((l.uid(), l.mtime()), (1234, 1_600_000_000));
            assert_eq!(r.read_link(b"d/l").unwrap(), b"f");
        });
    }
}
