//! Checks against a file list: is the tree unchanged (may yesterday's archive be reused), does
//! an archive extract to exactly what its list says (deep verify), and a digest of a whole tree.
//! Each walks the tree and reads the list as two streams in lockstep.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::extract::extract_checked;
use super::list::{stream, Flow, ListItem};
use super::sparse::hole_digest;
use super::walk::{Node, Walker};
use super::{ioe, sha256_file, ArchiveError, EntryKind, FileEntry};

/// Whether `m` still has the metadata recorded in `e`: inode, mode, owner, mtime and ctime (to
/// the nanosecond), and size for files. ctime cannot be set back by a user, so a rewrite whose
/// mtime was restored (`touch -r`, `cp -p`, `rsync -t`) is still seen.
fn same_meta(m: &fs::Metadata, e: &FileEntry) -> bool {
    m.ino() == e.ino
        && m.mtime() == e.mtime
        && m.mtime_nsec() as u32 == e.mtime_nsec
        && m.ctime() == e.ctime
        && m.ctime_nsec() as u32 == e.ctime_nsec
        && m.mode() & 0o7777 == e.mode
        && m.uid() == e.uid
        && m.gid() == e.gid
        && (e.kind != EntryKind::File || m.len() == e.size)
}

fn kind_matches(node: &Node, kind: EntryKind) -> bool {
    matches!(
        (node, kind),
        (Node::Dir, EntryKind::Dir)
            | (Node::Symlink(_), EntryKind::Symlink)
            | (Node::File(_), EntryKind::File | EntryKind::HardLink)
    )
}

/// The next walked entry that an archive would hold (special files are not archived).
fn next_archived(walk: &mut Walker) -> Result<Option<super::walk::Item>, ArchiveError> {
    loop {
        match walk.next_item()? {
            Some(i) if matches!(i.node, Node::Other) => continue,
            other => return Ok(other),
        }
    }
}

/// True when `src`'s tree is what the file list at `list_path` says (paths as bytes, kinds,
/// and [`same_meta`] for each entry and for the dir itself): the previous archive can be reused
/// instead of compressing again. A list without the dir's own entry (written by an older
/// slipway) never matches. Memory stays flat: tree and list are both read as streams.
pub fn tree_unchanged(src: &Path, list_path: &Path) -> Result<bool, ArchiveError> {
    let mut walk = Walker::open(src)?;
    let mut same = true;
    let mut saw_root = false;
    stream(list_path, |item| {
        let e = match item {
            ListItem::Root(r) => {
                saw_root = true;
                same = same_meta(walk.root_meta(), &r);
                return Ok(if same { Flow::Go } else { Flow::Stop });
            }
            ListItem::Entry(e) => e,
        };
        same = saw_root
            && match next_archived(&mut walk)? {
                Some(i) => kind_matches(&i.node, e.kind) && i.rel[..] == e.path_bytes()[..] && same_meta(&i.meta, &e),
                None => false,
            };
        Ok(if same { Flow::Go } else { Flow::Stop })
    })?;
    // The tree must hold nothing the list does not.
    Ok(same && saw_root && next_archived(&mut walk)?.is_none())
}

/// Extract `archive` into a scratch dir beside it (checking its sha256 on the way) and compare
/// every entry with the file list at `list_path`: same paths (as bytes), kinds, owners, modes
/// and mtimes, each regular file's size and sha256, each symlink's target, and the archived
/// dir's own metadata. Names the first mismatch.
pub fn deep_verify(archive: &Path, expected_sha256: &str, list_path: &Path) -> Result<(), ArchiveError> {
    let scratch_parent = archive.parent().unwrap_or(Path::new("."));
    let scratch =
        tempfile::Builder::new().prefix(".verify-").tempdir_in(scratch_parent).map_err(ioe(scratch_parent))?;
    let root = scratch.path().join("tree");
    fs::DirBuilder::new().mode(0o700).create(&root).map_err(ioe(&root))?;
    extract_checked(archive, expected_sha256, &root)?;
    matches_list(archive, &root, list_path)
}

/// Whether the tree at `root`, extracted from `archive`, is exactly what the file list at
/// `list_path` says: the comparison of [`deep_verify`], for a tree already extracted (a
/// restore drill's scratch copy, before anything runs on it). Names the first mismatch.
pub fn matches_list(archive: &Path, root: &Path, list_path: &Path) -> Result<(), ArchiveError> {
    let mismatch = |file: &str, what: String| ArchiveError::Mismatch {
        archive: archive.to_path_buf(),
        file: file.to_string(),
        what,
    };
    // What a restore would set, as extracted from the archive's headers: mode (a symlink's own
    // mode cannot be set on Linux), owner, and mtime (whole seconds, none before 1970).
    let meta_differs = |m: &fs::Metadata, e: &FileEntry| -> Option<String> {
        let mode = m.mode() & 0o7777;
        if !m.file_type().is_symlink() && mode != e.mode {
            return Some(format!("mode is {mode:04o}, the list says {:04o}", e.mode));
        }
        if (m.uid(), m.gid()) != (e.uid, e.gid) {
            return Some(format!("owner is {}:{}, the list says {}:{}", m.uid(), m.gid(), e.uid, e.gid));
        }
        (m.mtime() != e.mtime.max(0)).then(|| format!("mtime is {}, the list says {}", m.mtime(), e.mtime))
    };
    let mut walk = Walker::open(root)?;
    let mut listed = 0u64;
    stream(list_path, |item| {
        let e = match item {
            ListItem::Root(r) => {
                return match meta_differs(walk.root_meta(), &r) {
                    Some(what) => Err(mismatch(".", what)),
                    None => Ok(Flow::Go),
                }
            }
            ListItem::Entry(e) => e,
        };
        listed += 1;
        let Some(i) = next_archived(&mut walk)? else {
            return Err(mismatch(&e.path, "in the list but not in the archive".into()));
        };
        if i.rel[..] != e.path_bytes()[..] {
            return Err(mismatch(&e.path, format!("extracted as \"{}\"", String::from_utf8_lossy(&i.rel))));
        }
        if let Some(what) = meta_differs(&i.meta, &e) {
            return Err(mismatch(&e.path, what));
        }
        match (&i.node, e.kind) {
            (Node::File(_), EntryKind::File | EntryKind::HardLink) => {
                if let Some(want) = &e.sha256 {
                    let path = walk.path_of(&i.rel);
                    let (got, size) = match &i.node {
                        // Stored sparse: its hole digest, read from its data only.
                        Node::File(f) if e.holes => {
                            (hex::encode(hole_digest(f, i.meta.len()).map_err(ioe(&path))?), i.meta.len())
                        }
                        _ => sha256_file(&path)?,
                    };
                    if size != e.size || got != *want {
                        return Err(mismatch(&e.path, format!("content differs (sha256 {got}, list says {want})")));
                    }
                }
            }
            (Node::Dir, EntryKind::Dir) => {}
            (Node::Symlink(t), EntryKind::Symlink) => {
                if Some(&t[..]) != e.target_bytes().as_deref() {
                    return Err(mismatch(&e.path, "symlink target differs".into()));
                }
            }
            _ => return Err(mismatch(&e.path, "kind differs".into())),
        }
        Ok(Flow::Go)
    })?;
    if let Some(extra) = next_archived(&mut walk)? {
        let name = String::from_utf8_lossy(&extra.rel).into_owned();
        return Err(mismatch(&name, format!("extracted, but the list ends after {listed} entries")));
    }
    Ok(())
}

/// The bytes of the regular files under `dir`, each hard-linked file once and a sparse one by
/// its data: what a copy of the tree needs on disk, give or take its directories. A missing `dir` holds nothing. The tree
/// may be live (a running tenant's, sized before its staging copy): an entry that vanishes
/// between the directory read and its open is skipped, not an error.
pub fn tree_bytes(dir: &Path) -> Result<u64, ArchiveError> {
    if !dir.exists() {
        return Ok(0);
    }
    let mut walk = Walker::open_live(dir)?;
    let mut seen = std::collections::HashSet::new();
    let mut total = 0u64;
    while let Some(i) = walk.next_item()? {
        let m = &i.meta;
        if matches!(i.node, Node::File(_)) && (m.nlink() < 2 || seen.insert((m.dev(), m.ino()))) {
            total = total.saturating_add(super::sparse::on_disk(m));
        }
    }
    Ok(total)
}

/// A digest over a whole tree: the dir's own mode, owner and mtime, then each entry's path
/// (bytes), mode, owner, mtime (seconds), content (its hole digest), symlink target and
/// hard-link grouping —
/// what an archive keeps (sockets, fifos and device nodes are left out).
/// Tests compare data dirs byte for byte with it.
pub fn tree_digest(dir: &Path) -> Result<String, ArchiveError> {
    let mut walk = Walker::open(dir)?;
    let mut h = Sha256::new();
    let r = walk.root_meta();
    h.update(format!(".\0{:o}\0{}\0{}\0{}\n", r.mode(), r.uid(), r.gid(), r.mtime()).as_bytes());
    let mut groups: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    while let Some(i) = walk.next_item()? {
        if matches!(i.node, Node::Other) {
            // Sockets, fifos and devices: neither archived nor copied, so not compared.
            continue;
        }
        let m = &i.meta;
        h.update(&i.rel);
        h.update(format!("\0{:o}\0{}\0{}\0{}\0", m.mode(), m.uid(), m.gid(), m.mtime()).as_bytes());
        match &i.node {
            Node::Symlink(t) => {
                h.update(b"L");
                h.update(t);
            }
            Node::File(f) => {
                if m.nlink() > 1 {
                    let first = groups.entry((m.dev(), m.ino())).or_insert_with(|| i.rel.clone());
                    h.update(b"H");
                    h.update(&first[..]);
                    h.update(b"\0");
                }
                // The hole digest: the same for the same content wherever the holes are, and
                // a tenant's 1 TiB sparse file is read for its data only.
                let d = hole_digest(f, m.len()).map_err(ioe(&walk.path_of(&i.rel)))?;
                h.update(hex::encode(d).as_bytes());
            }
            Node::Dir | Node::Other => {}
        }
        h.update(b"\n");
    }
    Ok(hex::encode(h.finalize()))
}
