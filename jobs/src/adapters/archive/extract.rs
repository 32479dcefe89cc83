//! Extracting archives with every entry checked: no absolute paths, no `..`, nothing written
//! through a symlink, no hard link to outside, no device nodes or fifos; into a sibling temporary
//! dir, swapped in only once the archive's sha256 matched.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use super::{ioe, ArchiveError, HashReader, BUF};
use crate::fsutil::sync_dir;

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

/// What [`extract_checked`] did.
pub(super) struct Extracted {
    /// Entries extracted (the dir's own `./` entry not counted).
    pub entries: u64,
    /// Whether the archive carried the dir's own owner, mode and mtime (and they were applied).
    pub root: bool,
}

/// Extract every entry of `archive` into the existing, empty `dir`, checking each; verify the
/// archive bytes hash to `expected`.
pub(super) fn extract_checked(archive: &Path, expected: &str, dir: &Path) -> Result<Extracted, ArchiveError> {
    let f = File::open(archive).map_err(ioe(archive))?;
    let hr = HashReader { inner: f, hash: Sha256::new(), len: 0 };
    let dec = zstd::Decoder::with_buffer(BufReader::with_capacity(BUF, hr)).map_err(ioe(archive))?;
    let mut tar = tar::Archive::new(dec);
    let corrupt = |e: io::Error| ArchiveError::Corrupt { archive: archive.to_path_buf(), what: e.to_string() };
    let mut dirs: Vec<(PathBuf, u32, u64, u64, u64)> = Vec::new();
    let mut root: Option<(u32, u64, u64, u64)> = None;
    let mut count = 0u64;
    let mut buf = vec![0u8; BUF];
    for entry in tar.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        let raw = entry.path().map_err(corrupt)?.into_owned();
        let raw_s = raw.display().to_string();
        if entry.header().entry_type() == tar::EntryType::Directory
            && raw.components().all(|c| c == Component::CurDir)
            && !raw.as_os_str().is_empty()
        {
            // `./`: the dir itself. Applied last, like every directory's metadata.
            let h = entry.header();
            if root.is_some() {
                return Err(ArchiveError::Refused {
                    archive: archive.to_path_buf(),
                    entry: raw_s,
                    why: "a second entry for the archived dir itself".into(),
                });
            }
            root = Some((
                h.mode().map_err(corrupt)? & 0o7777,
                h.uid().map_err(corrupt)?,
                h.gid().map_err(corrupt)?,
                h.mtime().map_err(corrupt)?,
            ));
            continue;
        }
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
    if let Some((mode, uid, gid, mtime)) = root {
        dirs.push((dir.to_path_buf(), mode, uid, gid, mtime));
    }
    for (d, mode, uid, gid, mtime) in dirs {
        std::os::unix::fs::lchown(&d, Some(uid as u32), Some(gid as u32)).map_err(ioe(&d))?;
        fs::set_permissions(&d, fs::Permissions::from_mode(mode)).map_err(ioe(&d))?;
        set_times(&d, mtime, false).map_err(ioe(&d))?;
    }
    let rootf = File::open(dir).map_err(ioe(dir))?;
    rustix::fs::syncfs(&rootf).map_err(|e| ArchiveError::Io { path: dir.to_path_buf(), source: e.into() })?;
    Ok(Extracted { entries: count, root: root.is_some() })
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
/// removed. The new root dir gets the archived dir's owner, mode and mtime (archives made
/// before those were kept: the old dir's owner and mode). The data it replaced is removed; see
/// [`restore_swap_keep`] to keep it.
pub fn restore_swap(archive: &Path, expected_sha256: &str, target: &Path) -> Result<u64, ArchiveError> {
    let (n, old) = restore_swap_keep(archive, expected_sha256, target)?;
    if let Some(old) = old {
        fs::remove_dir_all(&old).map_err(ioe(&old))?;
    }
    Ok(n)
}

/// [`restore_swap`], keeping what it replaced: returns the entries restored and, when `target`
/// existed, the sibling dir that now holds its old data (the caller moves it somewhere kept).
pub fn restore_swap_keep(
    archive: &Path,
    expected_sha256: &str,
    target: &Path,
) -> Result<(u64, Option<PathBuf>), ArchiveError> {
    let tmp = sibling_tmp(target, "restore")?;
    let done = match extract_checked(archive, expected_sha256, &tmp) {
        Ok(x) => x,
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    let parent = target.parent().unwrap_or(Path::new("."));
    match fs::symlink_metadata(target) {
        Ok(old) if old.is_dir() => {
            if !done.root {
                let _ = std::os::unix::fs::lchown(&tmp, Some(old.uid()), Some(old.gid()));
                let _ = fs::set_permissions(&tmp, fs::Permissions::from_mode(old.mode() & 0o7777));
            }
            let pfd = File::open(parent).map_err(ioe(parent))?;
            rustix::fs::renameat_with(
                &pfd,
                tmp.file_name().unwrap_or_default(),
                &pfd,
                target.file_name().unwrap_or_default(),
                rustix::fs::RenameFlags::EXCHANGE,
            )
            .map_err(|e| {
                // Nothing extracted is left behind.
                let _ = fs::remove_dir_all(&tmp);
                ArchiveError::Io { path: target.to_path_buf(), source: e.into() }
            })?;
            // `tmp` now holds the old data: the caller decides its fate.
            sync_dir(parent).map_err(ioe(parent))?;
            return Ok((done.entries, Some(tmp)));
        }
        Ok(_) => {
            let _ = fs::remove_dir_all(&tmp);
            return Err(ArchiveError::Io {
                path: target.to_path_buf(),
                source: io::Error::other("exists and is not a directory"),
            });
        }
        Err(_) => {
            if !done.root {
                let _ = fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755));
            }
            fs::rename(&tmp, target).map_err(|e| {
                let _ = fs::remove_dir_all(&tmp);
                ArchiveError::Io { path: target.to_path_buf(), source: e }
            })?;
        }
    }
    sync_dir(parent).map_err(ioe(parent))?;
    Ok((done.entries, None))
}

/// Extract into `dir` (new or empty) with the same checks and hash verification, for
/// `restore --to`. On error `dir` is left as it was (and nothing extracted is left behind).
/// An existing `dir` is extracted into from inside (a temporary dir in it whose entries then
/// move up), so `dir` may be a mount point, which no rename can replace.
pub fn extract_into(archive: &Path, expected_sha256: &str, dir: &Path) -> Result<u64, ArchiveError> {
    if dir.is_dir() {
        return extract_inside(archive, expected_sha256, dir);
    }
    let tmp = sibling_tmp(dir, "extract")?;
    match extract_checked(archive, expected_sha256, &tmp) {
        Ok(x) => {
            fs::rename(&tmp, dir).map_err(|e| {
                let _ = fs::remove_dir_all(&tmp);
                ArchiveError::Io { path: dir.to_path_buf(), source: e }
            })?;
            Ok(x.entries)
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

/// [`extract_into`] an existing, empty `dir`: extract into `dir/.slipway-extract-<pid>`, move
/// each entry up (never replacing one), then give `dir` the archived dir's owner, mode and mtime.
/// On error everything in `dir` is removed again: it was empty.
fn extract_inside(archive: &Path, expected_sha256: &str, dir: &Path) -> Result<u64, ArchiveError> {
    if fs::read_dir(dir).map_err(ioe(dir))?.next().is_some() {
        return Err(ArchiveError::Io { path: dir.to_path_buf(), source: io::Error::other("is not empty") });
    }
    let tmp = dir.join(format!(".slipway-extract-{}", std::process::id()));
    let r = (|| {
        fs::DirBuilder::new().mode(0o700).create(&tmp).map_err(ioe(&tmp))?;
        let x = extract_checked(archive, expected_sha256, &tmp)?;
        // The archived dir's own metadata, read before moving entries out changes its mtime.
        let root = fs::symlink_metadata(&tmp).map_err(ioe(&tmp))?;
        let (tfd, dfd) = (File::open(&tmp).map_err(ioe(&tmp))?, File::open(dir).map_err(ioe(dir))?);
        for e in fs::read_dir(&tmp).map_err(ioe(&tmp))? {
            let name = e.map_err(ioe(&tmp))?.file_name();
            let m = fs::symlink_metadata(tmp.join(&name)).map_err(ioe(&tmp))?;
            rustix::fs::renameat_with(&tfd, &name, &dfd, &name, rustix::fs::RenameFlags::NOREPLACE)
                .map_err(|e| ArchiveError::Io { path: dir.join(&name), source: e.into() })?;
            // Moving a dir rewrites its `..` entry, which moves its mtime on some filesystems.
            if m.is_dir() {
                let moved = dir.join(&name);
                set_times(&moved, m.mtime().max(0) as u64, false).map_err(ioe(&moved))?;
            }
        }
        fs::remove_dir(&tmp).map_err(ioe(&tmp))?;
        if x.root {
            std::os::unix::fs::lchown(dir, Some(root.uid()), Some(root.gid())).map_err(ioe(dir))?;
            fs::set_permissions(dir, fs::Permissions::from_mode(root.mode() & 0o7777)).map_err(ioe(dir))?;
            set_times(dir, root.mtime().max(0) as u64, false).map_err(ioe(dir))?;
        }
        sync_dir(dir).map_err(ioe(dir))?;
        Ok(x.entries)
    })();
    if r.is_err() {
        if let Ok(rd) = fs::read_dir(dir) {
            for e in rd.flatten() {
                let p = e.path();
                let _ = if p.is_dir() && !p.is_symlink() { fs::remove_dir_all(&p) } else { fs::remove_file(&p) };
            }
        }
    }
    r
}
