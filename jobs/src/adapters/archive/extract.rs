//! Extracting archives with every entry checked: no absolute paths, no `..`, nothing written
//! through a symlink, no hard link to outside, no device nodes or fifos; into a sibling temporary
//! dir, swapped in only once the archive's sha256 matched.

use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use super::sparse::read_map;
use super::{ioe, ArchiveError, HashReader, BUF};
use crate::adapters::confined::{self, Attrs, Root};
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

/// Refuse when any existing ancestor of `rel` inside `root` is a symlink or not a dir, and
/// create the missing ones. (The confined layer would refuse to write through a symlink anyway;
/// this names the entry and why.)
fn no_symlink_ancestor(archive: &Path, root: &Root, rel: &[u8], raw: &str) -> Result<(), ArchiveError> {
    let refuse =
        |why: &str| ArchiveError::Refused { archive: archive.to_path_buf(), entry: raw.to_string(), why: why.into() };
    let mut end = 0;
    while let Some(i) = rel[end..].iter().position(|c| *c == b'/') {
        end += i;
        let dir = &rel[..end];
        match root.metadata(dir).map_err(ioe(&root.display(dir)))? {
            Some(m) if m.file_type().is_symlink() => return Err(refuse("it would be written through a symlink")),
            Some(m) if !m.is_dir() => return Err(refuse("a parent path is not a directory")),
            Some(_) => {}
            None => root.mkdir(dir, 0o700).map_err(ioe(&root.display(dir)))?,
        }
        end += 1;
    }
    Ok(())
}

/// The owner, mode and mtime of an entry's header (atime is set to the mtime: archives keep no
/// atime). A uid or gid that is not a 32-bit id, or is `u32::MAX` (-1, which `chown` reads as
/// "leave unchanged"), is refused: cut to 32 bits it would name another owner (root, for
/// 2^32), and -1 made the restore panic (found by the fuzz target `archive_extract`).
fn header_attrs(archive: &Path, entry: &str, h: &tar::Header) -> Result<Attrs, ArchiveError> {
    let corrupt = |e: io::Error| ArchiveError::Corrupt { archive: archive.to_path_buf(), what: e.to_string() };
    let id = |v: u64, what: &str| {
        u32::try_from(v).ok().filter(|v| *v != u32::MAX).ok_or_else(|| ArchiveError::Refused {
            archive: archive.to_path_buf(),
            entry: entry.to_string(),
            why: format!("its {what} {v} is not a valid id"),
        })
    };
    let (uid, gid) = (id(h.uid().map_err(corrupt)?, "uid")?, id(h.gid().map_err(corrupt)?, "gid")?);
    let t = (h.mtime().map_err(corrupt)? as i64, 0);
    Ok(Attrs { uid, gid, mode: h.mode().map_err(corrupt)? & 0o7777, atime: t, mtime: t })
}

/// The size of a file stored sparse (PAX "GNU sparse 1.0", what slipway writes), from its PAX
/// header; `None` for a file stored whole. Another sparse format is refused, not misread.
fn sparse_size<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Option<u64>, String> {
    let Some(pax) = entry.pax_extensions().map_err(|e| e.to_string())? else { return Ok(None) };
    let (mut major, mut minor, mut size, mut other) = (None, None, None, false);
    for ext in pax {
        let ext = ext.map_err(|e| e.to_string())?;
        let value = || ext.value().ok().map(str::to_string);
        match ext.key_bytes() {
            b"GNU.sparse.major" => major = value(),
            b"GNU.sparse.minor" => minor = value(),
            b"GNU.sparse.realsize" => size = value().and_then(|v| v.parse::<u64>().ok()),
            b"GNU.sparse.name" => {}
            k if k.starts_with(b"GNU.sparse.") => other = true,
            _ => {}
        }
    }
    match (major.as_deref(), minor.as_deref(), size) {
        (None, None, None) if !other => Ok(None),
        (Some("1"), Some("0"), Some(size)) => Ok(Some(size)),
        _ => Err("a sparse file in a format other than PAX GNU sparse 1.0 (with its realsize)".into()),
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
    // Every entry is written beneath a handle on `dir`: nothing resolves through a symlink
    // (an earlier entry may have planted one) or out of it.
    let root = Root::open(dir).map_err(ioe(dir))?;
    let f = File::open(archive).map_err(ioe(archive))?;
    let hr = HashReader { inner: f, hash: Sha256::new(), len: 0 };
    let dec = zstd::Decoder::with_buffer(BufReader::with_capacity(BUF, hr)).map_err(ioe(archive))?;
    let mut tar = tar::Archive::new(dec);
    let corrupt = |e: io::Error| ArchiveError::Corrupt { archive: archive.to_path_buf(), what: e.to_string() };
    // The dirs whose entries may still come (the current entry's ancestors, in a depth-first
    // archive as slipway writes), with the owner, mode and mtime to give them once they are
    // complete: applied as the archive leaves each, so memory follows the depth, not the number
    // of dirs. In an archive of another order a dir may get an entry after it was finished;
    // root writes it all the same, and the check against the file list names its mtime.
    let mut dirs: Vec<(Vec<u8>, Attrs)> = Vec::new();
    let leave = |dirs: &mut Vec<(Vec<u8>, Attrs)>, next: &[u8]| -> Result<(), ArchiveError> {
        while let Some((d, _)) = dirs.last() {
            if next.len() > d.len() && next.starts_with(d) && next[d.len()] == b'/' {
                break;
            }
            let (d, a) = dirs.pop().expect("a last dir");
            root.set_attrs(&d, &a).map_err(ioe(&root.display(&d)))?;
        }
        Ok(())
    };
    let mut own: Option<Attrs> = None;
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
            if own.is_some() {
                return Err(ArchiveError::Refused {
                    archive: archive.to_path_buf(),
                    entry: raw_s,
                    why: "a second entry for the archived dir itself".into(),
                });
            }
            own = Some(header_attrs(archive, &raw_s, entry.header())?);
            continue;
        }
        let rel = safe_rel(archive, &raw)?;
        let rel = rel.as_os_str().as_bytes();
        leave(&mut dirs, rel)?;
        no_symlink_ancestor(archive, &root, rel, &raw_s)?;
        let target = root.display(rel);
        let a = header_attrs(archive, &raw_s, entry.header())?;
        let kind = entry.header().entry_type();
        let refuse =
            |why: &str| ArchiveError::Refused { archive: archive.to_path_buf(), entry: raw_s.clone(), why: why.into() };
        match kind {
            tar::EntryType::Directory => {
                match root.metadata(rel).map_err(ioe(&target))? {
                    Some(m) if m.is_dir() => {}
                    Some(_) => return Err(refuse("a directory entry collides with an existing file")),
                    None => root.mkdir(rel, 0o700).map_err(ioe(&target))?,
                }
                dirs.push((rel.to_vec(), a));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                // A new file only: never follows or replaces an existing path (a planted symlink).
                let out = root.create_file(rel, 0o600).map_err(|e| {
                    if e.kind() == io::ErrorKind::AlreadyExists {
                        refuse("the path already exists (duplicate entry or symlink)")
                    } else {
                        ArchiveError::Io { path: target.clone(), source: e }
                    }
                })?;
                // A file stored sparse: its map first, then the bytes of its data segments.
                let (segs, size) = match sparse_size(&mut entry).map_err(|w| refuse(&w))? {
                    Some(realsize) => {
                        let stored = entry.size();
                        (read_map(&mut entry, realsize, stored).map_err(|w| refuse(&w))?, realsize)
                    }
                    None => (vec![(0, entry.size())], entry.size()),
                };
                // Blocks of zeros are left as holes: a sparse file comes back sparse, and a file
                // of zeros costs no disk.
                for (off, len) in segs {
                    let mut at = off;
                    while at < off + len {
                        let want = (off + len - at).min(buf.len() as u64) as usize;
                        entry.read_exact(&mut buf[..want]).map_err(corrupt)?;
                        if buf[..want].iter().any(|b| *b != 0) {
                            std::os::unix::fs::FileExt::write_all_at(&out, &buf[..want], at).map_err(ioe(&target))?;
                        }
                        at += want as u64;
                    }
                }
                out.set_len(size).map_err(ioe(&target))?;
                confined::set_fd_attrs(&out, &a).map_err(ioe(&target))?;
            }
            tar::EntryType::Symlink => {
                let link = entry.link_name().map_err(corrupt)?.ok_or_else(|| refuse("a symlink without a target"))?;
                root.symlink(link.as_os_str().as_bytes(), rel).map_err(|e| {
                    if e.kind() == io::ErrorKind::AlreadyExists {
                        refuse("the path already exists (duplicate entry)")
                    } else {
                        ArchiveError::Io { path: target.clone(), source: e }
                    }
                })?;
                root.set_symlink_attrs(rel, &a).map_err(ioe(&target))?;
            }
            tar::EntryType::Link => {
                let link = entry.link_name().map_err(corrupt)?.ok_or_else(|| refuse("a hard link without a target"))?;
                let src_rel = safe_rel(archive, &link).map_err(|_| refuse("a hard link to outside the target"))?;
                let src_rel = src_rel.as_os_str().as_bytes();
                no_symlink_ancestor(archive, &root, src_rel, &raw_s)?;
                match root.metadata(src_rel) {
                    Ok(Some(m)) if m.is_file() => {}
                    _ => return Err(refuse("a hard link to a file not in the archive")),
                }
                root.hard_link(src_rel, rel).map_err(ioe(&target))?;
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
    // The dirs still open, deepest first, then the dir itself: their modes may forbid writing,
    // and children touch mtimes.
    leave(&mut dirs, b"")?;
    if let Some(a) = own {
        dirs.push((Vec::new(), a));
    }
    for (d, a) in dirs {
        root.set_attrs(&d, &a).map_err(ioe(&root.display(&d)))?;
    }
    rustix::fs::syncfs(root.fd()).map_err(|e| ArchiveError::Io { path: dir.to_path_buf(), source: e.into() })?;
    Ok(Extracted { entries: count, root: own.is_some() })
}

/// A fresh temporary dir beside `target` (same filesystem, so it can be swapped in).
fn sibling_tmp(target: &Path, what: &str) -> Result<PathBuf, ArchiveError> {
    let parent = target.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(ioe(parent))?;
    let name = target.file_name().unwrap_or_default().to_string_lossy();
    let tmp = parent.join(format!(".{name}.{what}-{}", std::process::id()));
    confined::remove_tree(&tmp).map_err(ioe(&tmp))?;
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
        confined::remove_tree(&old).map_err(ioe(&old))?;
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
    // A swap of `target` that a crash cut short is finished before it is looked at.
    confined::finish_swap(target).map_err(ioe(target))?;
    let tmp = sibling_tmp(target, "restore")?;
    let done = match extract_checked(archive, expected_sha256, &tmp) {
        Ok(x) => x,
        Err(e) => {
            let _ = confined::remove_tree(&tmp);
            return Err(e);
        }
    };
    let parent = target.parent().unwrap_or(Path::new("."));
    match fs::symlink_metadata(target) {
        Ok(old) if old.is_dir() => {
            if !done.root {
                let owner = Some((old.uid(), old.gid()));
                let _ = Root::open(&tmp).and_then(|r| r.set_owner_mode(b"", owner, old.mode() & 0o7777));
            }
            confined::exchange(&tmp, target).map_err(|e| {
                // Nothing extracted is left behind.
                let _ = confined::remove_tree(&tmp);
                ArchiveError::Io { path: target.to_path_buf(), source: e }
            })?;
            // `tmp` now holds the old data: the caller decides its fate.
            sync_dir(parent).map_err(ioe(parent))?;
            return Ok((done.entries, Some(tmp)));
        }
        Ok(_) => {
            let _ = confined::remove_tree(&tmp);
            return Err(ArchiveError::Io {
                path: target.to_path_buf(),
                source: io::Error::other("exists and is not a directory"),
            });
        }
        Err(_) => {
            if !done.root {
                let _ = Root::open(&tmp).and_then(|r| r.set_owner_mode(b"", None, 0o755));
            }
            confined::rename_new(&tmp, target).map_err(|e| {
                let _ = confined::remove_tree(&tmp);
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
            confined::rename_new(&tmp, dir).map_err(|e| {
                let _ = confined::remove_tree(&tmp);
                ArchiveError::Io { path: dir.to_path_buf(), source: e }
            })?;
            Ok(x.entries)
        }
        Err(e) => {
            let _ = confined::remove_tree(&tmp);
            Err(e)
        }
    }
}

/// [`extract_into`] an existing, empty `dir`: extract into `dir/.slipway-extract-<pid>`, move
/// each entry up (never replacing one), then give `dir` the archived dir's owner, mode and mtime.
/// On error everything in `dir` is removed again: it was empty.
fn extract_inside(archive: &Path, expected_sha256: &str, dir: &Path) -> Result<u64, ArchiveError> {
    let root = Root::open(dir).map_err(ioe(dir))?;
    if fs::read_dir(dir).map_err(ioe(dir))?.next().is_some() {
        return Err(ArchiveError::Io { path: dir.to_path_buf(), source: io::Error::other("is not empty") });
    }
    let tmp_name = format!(".slipway-extract-{}", std::process::id()).into_bytes();
    let tmp = root.display(&tmp_name);
    let r = (|| {
        root.mkdir(&tmp_name, 0o700).map_err(ioe(&tmp))?;
        let x = extract_checked(archive, expected_sha256, &tmp)?;
        // The archived dir's own metadata, read before moving entries out changes its mtime.
        let own = root.metadata(&tmp_name).map_err(ioe(&tmp))?.ok_or_else(|| ArchiveError::Io {
            path: tmp.clone(),
            source: io::Error::other("vanished during the extract"),
        })?;
        for e in fs::read_dir(&tmp).map_err(ioe(&tmp))? {
            let name = e.map_err(ioe(&tmp))?.file_name();
            let name = name.as_bytes();
            let from = [&tmp_name[..], b"/", name].concat();
            let m = root.metadata(&from).map_err(ioe(&tmp))?;
            root.rename(&from, name, false).map_err(ioe(&root.display(name)))?;
            // Moving a dir rewrites its `..` entry, which moves its mtime on some filesystems.
            if let Some(m) = m.filter(|m| m.is_dir()) {
                root.set_attrs(name, &Attrs::of(&m)).map_err(ioe(&root.display(name)))?;
            }
        }
        root.remove_all(&tmp_name).map_err(ioe(&tmp))?;
        if x.root {
            root.set_attrs(b"", &Attrs::of(&own)).map_err(ioe(dir))?;
        }
        root.sync(b"").map_err(ioe(dir))?;
        Ok(x.entries)
    })();
    if r.is_err() {
        // It was empty: nothing extracted stays.
        let _ = root.remove_all(b"");
    }
    r
}
