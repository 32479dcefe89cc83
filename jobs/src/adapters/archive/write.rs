//! Writing archives: one pass over the tree, tar into multithreaded zstd, hashed as written,
//! the file list streamed beside it; and reusing an unchanged tenant's previous archive.
//! Reading and hashing the files, compressing, and hashing and writing the archive run on
//! their own threads, joined by bounded channels that pass buffers around.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use rustix::fs::Advice;
use sha2::{Digest, Sha256};

use super::list::{text_and_hex, ListWriter};
use super::sparse::{self, HoleHash};
use super::walk::{Item, Links, Node, Walker};
use super::{file_list_path, ioe, ArchiveError, ArchiveSummary, EntryKind, FileEntry, HashWriter};
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
        holes: false,
        data: None,
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

/// Buffers of file content in flight between the reader and the archiver (memory bound:
/// `CHUNKS * BUF`).
const CHUNKS: usize = 16;
/// Compressed bytes handed to the archive writer at a time, and how many such buffers exist.
pub(super) const OUT_CHUNK: usize = 1 << 20;
pub(super) const OUT_CHUNKS: usize = 4;
/// Start writing the archive back to disk every this many bytes, so that the fsync at the end
/// waits for the tail only, not for the whole archive.
const WRITEBACK: u64 = 8 << 20;

/// What the reader stage hands the archiver, in walk order.
enum Piece {
    /// A directory, symlink, hard link or special file: all there is to archive of it.
    Entry { rel: Vec<u8>, meta: fs::Metadata, what: What },
    /// A regular file: its content follows as `Chunk`s, then `FileEnd`.
    File { rel: Vec<u8>, meta: fs::Metadata },
    /// A regular file with holes, stored sparse: the bytes of its data segments (`offset,
    /// length`) follow as `Chunk`s, then `FileEnd` with its [`HoleHash`].
    Sparse { rel: Vec<u8>, meta: fs::Metadata, map: Vec<(u64, u64)> },
    /// The next bytes of the current file.
    Chunk(Vec<u8>),
    /// The sha256 of the file just sent, every byte of which was sent.
    FileEnd([u8; 32]),
    /// The walk or a read failed; nothing follows.
    Failed(ArchiveError),
}

/// What a [`Piece::Entry`] is.
enum What {
    Dir,
    Symlink(Vec<u8>),
    /// A hard link to the first path of its group, archived earlier.
    HardLink(Vec<u8>),
    /// A socket, fifo or device: listed as skipped, not archived.
    Other,
}

/// [`create`] at another zstd level: rollout snapshots are taken while the tenant is down and
/// kept only a few runs, so they trade ratio for speed (level 1).
///
/// Three stages, so that hashing never holds up compression: a reader thread walks the tree,
/// reads every file and hashes it; this thread frames the tar stream and feeds zstd's workers
/// (one per core); a writer thread hashes the compressed bytes, writes them and starts their
/// writeback as it goes. Buffers circulate between the stages, so memory stays bounded
/// (`CHUNKS` content buffers, `OUT_CHUNKS` output buffers, zstd's jobs).
pub fn create_with_level(src: &Path, dest: &Path, level: i32) -> Result<ArchiveSummary, ArchiveError> {
    create_inner(src, dest, level, &Substitutes::default(), false)
}

/// Files archived in place of what a tree holds at their names, and names left out: a tenant's
/// SQLite file goes into its archive as the copy SQLite's backup API made, without the live
/// file's `-wal`, `-shm` and `-journal` (which would pair the copy with a stale log).
#[derive(Debug, Default, Clone)]
pub struct Substitutes {
    /// Relative name ('/'-separated bytes) → the file whose bytes and metadata are archived
    /// under that name (slipway's own file, outside the tree). The tree must hold a regular file
    /// at each name, else the archive fails naming it.
    pub files: std::collections::BTreeMap<Vec<u8>, std::path::PathBuf>,
    /// Relative names left out of the archive.
    pub skip: std::collections::BTreeSet<Vec<u8>>,
}

/// [`create`] of a tree that runs (its tenant not held) with `subs` put in place of the tree's
/// files at their names and its skipped names left out: an entry that vanished or changed type
/// between the directory read and its open (a rollback journal that comes and goes with each
/// transaction) is skipped, as the mirror's live pass does.
pub fn create_substituted(src: &Path, dest: &Path, subs: &Substitutes) -> Result<ArchiveSummary, ArchiveError> {
    create_inner(src, dest, LEVEL, subs, true)
}

fn create_inner(
    src: &Path,
    dest: &Path,
    level: i32,
    subs: &Substitutes,
    live: bool,
) -> Result<ArchiveSummary, ArchiveError> {
    if let Some(parent) = dest.parent() {
        create_private_dir(parent).map_err(ioe(parent))?;
    }
    let mut walk = if live { Walker::open_live(src)? } else { Walker::open(src)? };
    let root_meta = walk.root_meta().clone();
    let mut file = AtomicFile::create(dest, 0o600).map_err(ioe(dest))?;
    let list_path = file_list_path(dest);
    let mut lf = AtomicFile::create(&list_path, 0o600).map_err(ioe(&list_path))?;
    let out: &File = file.file();
    let (archived, written) = std::thread::scope(|s| {
        let (piece_tx, piece_rx) = sync_channel::<Piece>(4 * CHUNKS);
        let (chunk_tx, chunk_rx) = sync_channel::<Vec<u8>>(CHUNKS);
        for _ in 0..CHUNKS {
            let _ = chunk_tx.send(Vec::with_capacity(BUF));
        }
        let walk = &mut walk;
        s.spawn(move || read_tree(walk, subs, &piece_tx, &chunk_rx));
        let (out_tx, out_rx) = sync_channel::<Vec<u8>>(OUT_CHUNKS);
        let (spare_tx, spare_rx) = sync_channel::<Vec<u8>>(OUT_CHUNKS);
        for _ in 0..OUT_CHUNKS - 1 {
            let _ = spare_tx.send(Vec::with_capacity(OUT_CHUNK));
        }
        let writer = s.spawn(move || write_out(out, out_rx, spare_tx));
        let sink = ChanWriter { cur: Vec::with_capacity(OUT_CHUNK), tx: out_tx, spare: spare_rx };
        // Returning drops this stage's ends of the channels, so a reader or writer waiting on
        // them stops too, and the scope can join them.
        let stage = Stage { rx: piece_rx, chunks: chunk_tx, dest, list_path: &list_path };
        let archived = stage.run(sink, level, &root_meta, &mut lf);
        let written = writer.join().unwrap_or_else(|_| Err(io::Error::other("the archive writer panicked")));
        (archived, written)
    });
    // The writer's error is the cause when both failed (a full disk stops the archiver too).
    let (sha256, size) = written.map_err(ioe(dest))?;
    let (files, bytes_in, file_list_sha256) = archived?;
    // The list is committed first: an archive never exists under its final name without its list.
    lf.commit().map_err(ioe(&list_path))?;
    file.commit().map_err(ioe(dest))?;
    Ok(ArchiveSummary { sha256, size, files, bytes_in, file_list_sha256 })
}

/// The reader stage: walk, read and hash, in walk order. Stops quietly when the archiver hung
/// up (it reports its own error).
fn read_tree(walk: &mut Walker, subs: &Substitutes, tx: &SyncSender<Piece>, chunks: &Receiver<Vec<u8>>) {
    if let Err(e) = feed(walk, subs, tx, chunks) {
        let _ = tx.send(Piece::Failed(e));
    }
}

/// The entry `item` of the walk as archived under `subs`: left out (`None`), or with a
/// substitute's file and metadata in place of its own. Err when a name to substitute is not a
/// regular file in the tree.
fn substituted(walk: &Walker, subs: &Substitutes, item: Item, used: &mut usize) -> Result<Option<Item>, ArchiveError> {
    if subs.skip.contains(&item.rel) {
        return Ok(None);
    }
    let Some(with) = subs.files.get(&item.rel) else { return Ok(Some(item)) };
    if !matches!(item.node, Node::File(_)) {
        let path = walk.path_of(&item.rel);
        let why = format!("{} is no longer a regular file; its copy is not archived in its place", path.display());
        return Err(ArchiveError::Io { path, source: io::Error::other(why) });
    }
    let f = File::open(with).map_err(ioe(with))?;
    let meta = f.metadata().map_err(ioe(with))?;
    *used += 1;
    Ok(Some(Item { rel: item.rel, meta, node: Node::File(f) }))
}

fn feed(
    walk: &mut Walker,
    subs: &Substitutes,
    tx: &SyncSender<Piece>,
    chunks: &Receiver<Vec<u8>>,
) -> Result<(), ArchiveError> {
    let mut links = Links::default();
    let mut used = 0;
    while let Some(item) = walk.next_item()? {
        let Some(Item { rel, meta, node }) = substituted(walk, subs, item, &mut used)? else { continue };
        let piece = match node {
            Node::Dir => Piece::Entry { rel, meta, what: What::Dir },
            Node::Symlink(target) => Piece::Entry { rel, meta, what: What::Symlink(target) },
            Node::Other => Piece::Entry { rel, meta, what: What::Other },
            Node::File(mut f) => {
                let first = if meta.nlink() > 1 { links.get(&(meta.dev(), meta.ino())).cloned() } else { None };
                if let Some(first) = first {
                    Piece::Entry { rel, meta, what: What::HardLink(first) }
                } else {
                    if meta.nlink() > 1 {
                        links.remember((meta.dev(), meta.ino()), rel.clone());
                    }
                    let path = walk.path_of(&rel);
                    if sparse::may_have_holes(&meta) {
                        if let Some(map) = sparse::data_map(&f, meta.len()).map_err(ioe(&path))? {
                            let Some(sha) = send_sparse(tx, chunks, Piece::Sparse { rel, meta, map }, &f, &path)?
                            else {
                                return Ok(());
                            };
                            if tx.send(Piece::FileEnd(sha)).is_err() {
                                return Ok(());
                            }
                            continue;
                        }
                    }
                    let mut left = meta.len();
                    if tx.send(Piece::File { rel, meta }).is_err() {
                        return Ok(());
                    }
                    let mut hash = Sha256::new();
                    while left > 0 {
                        let Ok(mut buf) = chunks.recv() else { return Ok(()) };
                        let want = left.min(BUF as u64);
                        // Recycled buffers keep their length: zeroed only where they grow.
                        buf.resize(want as usize, 0);
                        match f.read_exact(&mut buf) {
                            Ok(()) => {}
                            // A file that shrank while read is an error, not silently padded.
                            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                                let why = format!("{} shrank while it was being archived", path.display());
                                let source = io::Error::new(io::ErrorKind::UnexpectedEof, why);
                                return Err(ArchiveError::Io { path, source });
                            }
                            Err(e) => return Err(ioe(&path)(e)),
                        }
                        hash.update(&buf);
                        left -= want;
                        if tx.send(Piece::Chunk(buf)).is_err() {
                            return Ok(());
                        }
                    }
                    Piece::FileEnd(hash.finalize().into())
                }
            }
        };
        if tx.send(piece).is_err() {
            return Ok(());
        }
    }
    if used < subs.files.len() {
        let missing: Vec<String> = subs.files.keys().map(|k| walk.path_of(k).display().to_string()).collect();
        let path = walk.path_of(b"");
        let why = format!("not every file to archive from its copy was found in the tree: {}", missing.join(", "));
        return Err(ArchiveError::Io { path, source: io::Error::other(why) });
    }
    Ok(())
}

/// Send a sparse file's piece, then the bytes of its data segments; returns its hole digest,
/// or `None` when the archiver hung up.
fn send_sparse(
    tx: &SyncSender<Piece>,
    chunks: &Receiver<Vec<u8>>,
    piece: Piece,
    f: &File,
    path: &Path,
) -> Result<Option<[u8; 32]>, ArchiveError> {
    use std::os::unix::fs::FileExt;
    let Piece::Sparse { map, meta, .. } = &piece else { return Err(broken(path)) };
    let (map, size) = (map.clone(), meta.len());
    if tx.send(piece).is_err() {
        return Ok(None);
    }
    let mut hash = HoleHash::new();
    for (off, len) in map {
        let mut at = off;
        while at < off + len {
            let Ok(mut buf) = chunks.recv() else { return Ok(None) };
            buf.resize((off + len - at).min(BUF as u64) as usize, 0);
            match f.read_exact_at(&mut buf, at) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    let why = format!("{} shrank while it was being archived", path.display());
                    let source = io::Error::new(io::ErrorKind::UnexpectedEof, why);
                    return Err(ArchiveError::Io { path: path.to_path_buf(), source });
                }
                Err(e) => return Err(ioe(path)(e)),
            }
            hash.update_at(at, &buf);
            at += buf.len() as u64;
            if tx.send(Piece::Chunk(buf)).is_err() {
                return Ok(None);
            }
        }
    }
    Ok(Some(hash.finish(size)))
}

/// The middle stage: tar framing into multithreaded zstd, and the file list beside it.
struct Stage<'a> {
    rx: Receiver<Piece>,
    /// Content buffers go back to the reader through this.
    chunks: SyncSender<Vec<u8>>,
    dest: &'a Path,
    list_path: &'a Path,
}

impl Stage<'_> {
    /// The next piece of the current file; a reader that stopped is an error.
    fn next(&self) -> Result<Piece, ArchiveError> {
        match self.rx.recv() {
            Ok(Piece::Failed(err)) => Err(err),
            Ok(p) => Ok(p),
            Err(_) => Err(broken(self.dest)),
        }
    }

    /// Returns (entries, content bytes, sha256 of the list file).
    fn run(
        self,
        sink: ChanWriter,
        level: i32,
        root_meta: &fs::Metadata,
        lf: &mut AtomicFile,
    ) -> Result<(u64, u64, String), ArchiveError> {
        let (dest, list_path) = (self.dest, self.list_path);
        let mut enc = zstd::Encoder::new(sink, level).map_err(ioe(dest))?;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
        enc.multithread(threads).map_err(ioe(dest))?;
        enc.set_parameter(zstd::zstd_safe::CParameter::JobSize(JOB_SIZE)).map_err(ioe(dest))?;
        let mut tar = tar::Builder::new(enc);
        tar.mode(tar::HeaderMode::Complete);

        // The per-file list is streamed beside the archive (JSON into zstd into its own
        // temporary file) as entries are archived: never held whole in memory.
        let lhw = HashWriter { inner: BufWriter::new(lf.file()), hash: Sha256::new(), len: 0 };
        let lz = zstd::Encoder::new(lhw, LEVEL).map_err(ioe(list_path))?;

        // The dir itself first, as `./`: its owner, mode and mtime are restored too.
        let root = base_entry(b"", EntryKind::Dir, root_meta);
        tar.append_data(&mut header(tar::EntryType::Directory, &root), "./", io::empty()).map_err(ioe(dest))?;
        let mut list = ListWriter::new(lz, &root).map_err(ioe(list_path))?;
        let (mut bytes_in, mut files) = (0u64, 0u64);
        // The reader hangs up after the last piece.
        while let Ok(piece) = self.rx.recv() {
            let e = match piece {
                Piece::Entry { rel, meta, what: What::Dir } => {
                    let e = base_entry(&rel, EntryKind::Dir, &meta);
                    let mut with_slash = rel;
                    with_slash.push(b'/');
                    let mut h = header(tar::EntryType::Directory, &e);
                    tar.append_data(&mut h, os_path(&with_slash), io::empty()).map_err(ioe(dest))?;
                    e
                }
                Piece::Entry { rel, meta, what: What::Symlink(target) } => {
                    let mut e = base_entry(&rel, EntryKind::Symlink, &meta);
                    e.set_target(&target);
                    let mut h = header(tar::EntryType::Symlink, &e);
                    // A symlink's target is data, kept byte for byte: tar's `set_link_name`
                    // normalises it as a path ("/" became "//", "a/" lost its slash). A target
                    // too long for the header goes into a GNU long-link entry, which tar writes
                    // as the bytes given.
                    if h.set_link_name_literal(&target).is_ok() {
                        tar.append_data(&mut h, os_path(&rel), io::empty()).map_err(ioe(dest))?;
                    } else {
                        tar.append_link(&mut h, os_path(&rel), os_path(&target)).map_err(ioe(dest))?;
                    }
                    e
                }
                Piece::Entry { rel, meta, what: What::HardLink(first) } => {
                    let mut e = base_entry(&rel, EntryKind::HardLink, &meta);
                    e.set_target(&first);
                    let mut h = header(tar::EntryType::Link, &e);
                    tar.append_link(&mut h, os_path(&rel), os_path(&first)).map_err(ioe(dest))?;
                    e
                }
                Piece::Entry { rel, what: What::Other, .. } => {
                    list.skip(String::from_utf8_lossy(&rel).into_owned());
                    continue;
                }
                Piece::File { rel, meta } => {
                    let mut e = base_entry(&rel, EntryKind::File, &meta);
                    e.size = meta.len();
                    let mut h = header(tar::EntryType::Regular, &e);
                    // The header alone (after a long-name entry when needed): tar pads only what
                    // it copied, and it copied nothing. The content goes straight from the
                    // reader's buffers into zstd, then the padding to the next 512-byte block.
                    tar.append_data(&mut h, os_path(&rel), io::empty()).map_err(ioe(dest))?;
                    let z = tar.get_mut();
                    let mut left = e.size;
                    while left > 0 {
                        let Piece::Chunk(buf) = self.next()? else { return Err(broken(dest)) };
                        z.write_all(&buf).map_err(ioe(dest))?;
                        left = left.saturating_sub(buf.len() as u64);
                        let _ = self.chunks.send(buf);
                    }
                    let pad = (512 - e.size % 512) % 512;
                    z.write_all(&[0u8; 512][..pad as usize]).map_err(ioe(dest))?;
                    let Piece::FileEnd(sha) = self.next()? else { return Err(broken(dest)) };
                    e.sha256 = Some(hex::encode(sha));
                    bytes_in += e.size;
                    e
                }
                Piece::Sparse { rel, meta, map } => {
                    let mut e = base_entry(&rel, EntryKind::File, &meta);
                    e.size = meta.len();
                    e.holes = true;
                    e.data = Some(map.iter().map(|s| s.1).sum());
                    // A PAX "GNU sparse 1.0" entry (see `sparse`): the map, then the data.
                    let block = sparse::map_block(&map);
                    let data: u64 = map.iter().map(|s| s.1).sum();
                    let stored = block.len() as u64 + data;
                    let size = e.size.to_string();
                    // The name is the header's (a long one in a GNU long-name entry), not a PAX
                    // record: tar-rs cannot read a record whose value holds a newline.
                    let pax: [(&str, &[u8]); 3] = [
                        ("GNU.sparse.major", b"1"),
                        ("GNU.sparse.minor", b"0"),
                        ("GNU.sparse.realsize", size.as_bytes()),
                    ];
                    tar.append_pax_extensions(pax).map_err(ioe(dest))?;
                    // A POSIX header: GNU tar reads PAX sparse only after one.
                    let mut h = tar::Header::new_ustar();
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(e.mode);
                    h.set_uid(e.uid as u64);
                    h.set_gid(e.gid as u64);
                    h.set_mtime(e.mtime.max(0) as u64);
                    h.set_size(stored);
                    tar.append_data(&mut h, os_path(&rel), io::empty()).map_err(ioe(dest))?;
                    let z = tar.get_mut();
                    z.write_all(&block).map_err(ioe(dest))?;
                    let mut left = data;
                    while left > 0 {
                        let Piece::Chunk(buf) = self.next()? else { return Err(broken(dest)) };
                        z.write_all(&buf).map_err(ioe(dest))?;
                        left = left.saturating_sub(buf.len() as u64);
                        let _ = self.chunks.send(buf);
                    }
                    let pad = (512 - stored % 512) % 512;
                    z.write_all(&[0u8; 512][..pad as usize]).map_err(ioe(dest))?;
                    let Piece::FileEnd(sha) = self.next()? else { return Err(broken(dest)) };
                    e.sha256 = Some(hex::encode(sha));
                    bytes_in += data;
                    e
                }
                Piece::Failed(err) => return Err(err),
                Piece::Chunk(_) | Piece::FileEnd(_) => return Err(broken(dest)),
            };
            list.push(&e).map_err(ioe(list_path))?;
            files += 1;
        }
        let enc = tar.into_inner().map_err(ioe(dest))?;
        enc.finish().and_then(ChanWriter::close).map_err(ioe(dest))?;

        let HashWriter { inner, hash, .. } = list.finish().and_then(|z| z.finish()).map_err(ioe(list_path))?;
        inner.into_inner().map_err(|e| ArchiveError::Io { path: list_path.to_path_buf(), source: e.into_error() })?;
        Ok((files, bytes_in, hex::encode(hash.finalize())))
    }
}

/// The stages disagreed about what comes next, or the reader died: never a property of the tree.
fn broken(dest: &Path) -> ArchiveError {
    ArchiveError::Io { path: dest.to_path_buf(), source: io::Error::other("the archive's reader stopped unexpectedly") }
}

/// zstd's output, handed to the writer stage in `OUT_CHUNK` buffers.
struct ChanWriter {
    cur: Vec<u8>,
    tx: SyncSender<Vec<u8>>,
    spare: Receiver<Vec<u8>>,
}

fn writer_gone() -> io::Error {
    io::Error::other("the archive writer stopped")
}

impl ChanWriter {
    fn send(&mut self) -> io::Result<()> {
        let mut next = self.spare.recv().map_err(|_| writer_gone())?;
        // A recycled buffer comes back holding what it carried last time.
        next.clear();
        let full = std::mem::replace(&mut self.cur, next);
        self.tx.send(full).map_err(|_| writer_gone())
    }

    /// Hand over what is left; the writer ends once this (its only sender) is gone.
    fn close(mut self) -> io::Result<()> {
        if !self.cur.is_empty() {
            let last = std::mem::take(&mut self.cur);
            self.tx.send(last).map_err(|_| writer_gone())?;
        }
        Ok(())
    }
}

impl Write for ChanWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(OUT_CHUNK - self.cur.len());
        self.cur.extend_from_slice(&buf[..n]);
        if self.cur.len() == OUT_CHUNK {
            self.send()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The writer stage: hash and write the compressed bytes, starting their writeback every
/// `WRITEBACK` bytes (`POSIX_FADV_DONTNEED` starts it without waiting for it, and drops pages
/// already on disk: the archive does not crowd the tenants' data out of the page cache).
/// Returns (hex sha256, size) once the archiver has hung up.
fn write_out(mut out: &File, rx: Receiver<Vec<u8>>, spare: SyncSender<Vec<u8>>) -> io::Result<(String, u64)> {
    let (mut hash, mut len, mut started) = (Sha256::new(), 0u64, 0u64);
    for buf in rx {
        hash.update(&buf);
        out.write_all(&buf)?;
        len += buf.len() as u64;
        if len - started >= WRITEBACK {
            // Advice only: if it fails, the fsync at commit does all the work, as before.
            let _ = rustix::fs::fadvise(out, started, std::num::NonZeroU64::new(len - started), Advice::DontNeed);
            started = len;
        }
        let _ = spare.send(buf);
    }
    Ok((hex::encode(hash.finalize()), len))
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
