//! Durable file writes. Everything slipway writes for others to read (archives, manifests,
//! metrics, configs) goes through [`atomic_write`] or [`AtomicFile`]: written under a temporary
//! name in the same directory, fsynced, renamed over the final name, and the directory fsynced.
//! A reader never sees a half-written file under its final name. Also the filesystem facts a
//! restore checks first (whether a dir is a mount point, the free bytes under a path) and those
//! `doctor` reports (the filesystem's type, whether it can clone files, a tree's size).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// A file being written under a temporary name next to its final path.
/// Dropped without [`AtomicFile::commit`], the temporary file is removed.
pub struct AtomicFile {
    file: Option<File>,
    tmp: PathBuf,
    dest: PathBuf,
}

impl AtomicFile {
    /// Create `<dir>/.<name>.tmp-<pid>` with `mode`, to become `dest` on commit.
    pub fn create(dest: &Path, mode: u32) -> io::Result<AtomicFile> {
        let dir = dest.parent().unwrap_or(Path::new("."));
        let name = dest.file_name().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("{} has no file name", dest.display()))
        })?;
        let tmp = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
        let file = OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
        Ok(AtomicFile { file: Some(file), tmp, dest: dest.to_path_buf() })
    }

    /// The open temporary file.
    pub fn file(&mut self) -> &mut File {
        // Invariant: `file` is Some until commit consumes self.
        self.file.as_mut().expect("AtomicFile used after commit")
    }

    /// The temporary path (for error messages).
    pub fn tmp_path(&self) -> &Path {
        &self.tmp
    }

    /// Rename to the final name without any fsync: for a file whose loss or truncation at a
    /// power cut its reader detects and recovers from by itself (the mirror's index has a
    /// trailer; without it the copy is made afresh).
    pub fn commit_unsynced(mut self) -> io::Result<()> {
        let file = self.file.take().expect("AtomicFile committed twice");
        drop(file);
        fs::rename(&self.tmp, &self.dest)
    }

    /// fsync the data, rename to the final name, fsync the directory.
    pub fn commit(mut self) -> io::Result<()> {
        let file = self.file.take().expect("AtomicFile committed twice");
        file.sync_all()?;
        drop(file);
        fs::rename(&self.tmp, &self.dest)?;
        sync_dir(self.dest.parent().unwrap_or(Path::new(".")))
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file().write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file().flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Write `data` to `dest` atomically with `mode`.
pub fn atomic_write(dest: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let mut f = AtomicFile::create(dest, mode)?;
    f.write_all(data)?;
    f.commit()
}

/// fsync a directory so that a rename or create inside it survives a power loss.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Create `dir` and its missing parents with mode 0700 (backup and state dirs).
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Whether `dir` is a mount point: on another device than its parent, or listed as one in
/// `/proc/self/mountinfo` (a bind mount of the same filesystem).
pub fn is_mount_point(dir: &Path) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let dir = fs::canonicalize(dir)?;
    let Some(parent) = dir.parent() else { return Ok(true) };
    if fs::metadata(&dir)?.dev() != fs::metadata(parent)?.dev() {
        return Ok(true);
    }
    Ok(mount_points().any(|m| m == dir))
}

/// The mount points `/proc/self/mountinfo` lists (unescaped); none when it cannot be read.
fn mount_points() -> impl Iterator<Item = PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let points: Vec<PathBuf> =
        info.lines().filter_map(|l| l.split(' ').nth(4)).map(|m| PathBuf::from(unescape_mountinfo(m))).collect();
    points.into_iter()
}

/// The mount points strictly inside `dir` (from `/proc/self/mountinfo`): what a snapshot of
/// `dir` does not copy and a restore could not swap.
pub fn mounts_under(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let dir = fs::canonicalize(dir)?;
    let mut out: Vec<PathBuf> = mount_points().filter(|m| m.starts_with(&dir) && *m != dir).collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// mountinfo writes a space, tab, newline and backslash in a path as `\ooo` octal.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Bytes free to an unprivileged writer on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> io::Result<u64> {
    let st = rustix::fs::statvfs(path)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// The size of the filesystem holding `path`, in bytes.
pub fn total_bytes(path: &Path) -> io::Result<u64> {
    let st = rustix::fs::statvfs(path)?;
    Ok(st.f_blocks.saturating_mul(st.f_frsize))
}

/// The type of the filesystem holding `path`, by name (`ext4`, `xfs`, `btrfs`, …), or its
/// magic number in hex when slipway does not know it.
pub fn fs_type_name(path: &Path) -> io::Result<String> {
    let st = rustix::fs::statfs(path)?;
    #[allow(clippy::unnecessary_cast)]
    let magic = st.f_type as u64 & 0xffff_ffff;
    let name = match magic {
        0xEF53 => "ext4",
        0x5846_5342 => "xfs",
        0x9123_683E => "btrfs",
        0x2FC1_2FC1 => "zfs",
        0xCA45_1A4E => "bcachefs",
        0xF2F5_2010 => "f2fs",
        0x0102_1994 => "tmpfs",
        0x8584_58F6 => "ramfs",
        0x794C_7630 => "overlay",
        0x6969 => "nfs",
        0xFF53_4D42 => "cifs",
        0xFE53_4D42 => "smb2",
        0x6573_5546 => "fuse",
        0x00C3_6400 => "ceph",
        0x0102_1997 => "9p",
        0x5265_4973 => "reiserfs",
        0x4d44 => "vfat",
        0x7371_7368 => "squashfs",
        other => return Ok(format!("unknown (0x{other:x})")),
    };
    Ok(name.to_string())
}

/// Whether the filesystem holding `dir` clones files (FICLONE, as `cp --reflink` does): tried
/// on a pair of temporary files in `dir`, removed after.
pub fn supports_reflink(dir: &Path) -> io::Result<bool> {
    let mut src = tempfile::Builder::new().prefix(".slipway-reflink-").tempfile_in(dir)?;
    src.write_all(&[0u8; 4096])?;
    src.as_file().sync_all()?;
    let dst = tempfile::Builder::new().prefix(".slipway-reflink-").tempfile_in(dir)?;
    Ok(rustix::fs::ioctl_ficlone(dst.as_file(), src.as_file()).is_ok())
}

/// The bytes of every regular file under `dir` (symlinks not followed), as an archive of it
/// would read them.
pub fn tree_size(dir: &Path) -> io::Result<u64> {
    let mut total = 0u64;
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in fs::read_dir(&d)? {
            let e = e?;
            let meta = e.path().symlink_metadata()?;
            if meta.is_dir() {
                dirs.push(e.path());
            } else if meta.is_file() {
                total = total.saturating_add(meta.len());
            }
        }
    }
    Ok(total)
}

/// Move the old data a restore swapped out (`old`, beside the data dir) to
/// `<backup_root>/replaced/<run_id>/<tenant>`, where prune keeps it with the rollout runs. When
/// that is another filesystem (a rename cannot move it) it stays where it is, and that is the
/// path returned: it is never deleted.
pub fn keep_replaced(backup_root: &Path, run: &crate::types::RunId, tenant: &str, old: &Path) -> PathBuf {
    let dest = crate::layout::replaced_dir(backup_root, run, tenant);
    let moved = dest
        .parent()
        .map_or(Ok(()), create_private_dir)
        .and_then(|()| std::fs::rename(old, &dest))
        .and_then(|()| dest.parent().map_or(Ok(()), sync_dir));
    match moved {
        Ok(()) => dest,
        Err(e) => {
            tracing::warn!(
                "tenant {tenant}: the data it replaced stays in {} (moving it to {} failed: {e})",
                old.display(),
                dest.display()
            );
            old.to_path_buf()
        }
    }
}

/// Raise this process's soft limit on open files to its hard limit (as Go's runtime does): a
/// walk holds one directory open per level of a tenant's tree, and the mirror and the checks
/// walk two trees at once. The soft limit is often 1024 (systemd's default) while the hard one
/// is far higher. Best effort: on failure the limit stays as it was.
pub fn raise_open_files_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current < lim.maximum {
        lim.current = lim.maximum;
        let _ = setrlimit(Resource::Nofile, lim);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.json");
        atomic_write(&p, b"one", 0o600).unwrap();
        atomic_write(&p, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn doctor_facts_name_the_filesystem_and_sum_a_tree_and_leave_nothing_behind() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("a/b")).unwrap();
        fs::write(d.path().join("a/one"), [1u8; 1000]).unwrap();
        fs::write(d.path().join("a/b/two"), [2u8; 24]).unwrap();
        std::os::unix::fs::symlink("/etc", d.path().join("a/link")).unwrap();
        assert_eq!(tree_size(d.path()).unwrap(), 1024);
        let name = fs_type_name(d.path()).unwrap();
        assert!(!name.is_empty(), "{name}");
        let _ = supports_reflink(d.path()).unwrap();
        let left: Vec<_> = fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, ["a"]);
    }

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape_mountinfo("/data/my\\040tenants\\011x\\134y"), "/data/my tenants\tx\\y");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert!(mount_points().any(|m| m == Path::new("/")), "/ is always mounted");
    }

    #[test]
    fn dropped_atomic_file_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a");
        {
            let mut f = AtomicFile::create(&p, 0o600).unwrap();
            f.write_all(b"half").unwrap();
        }
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 0);
    }
}
