//! The per-file list beside each archive (`<name>.files.json.zst`): zstd-compressed JSON
//! `{"root": entry, "entries": [entry…], "skipped": [name…]}`, written and read as a stream so
//! that a tree of a million files never has its list in memory whole. Lists written before
//! `root` (and `ctime`, `path_hex`, `target_hex`) existed still read.

use std::fs::File;
use std::io::{self, BufReader, Write};
use std::path::Path;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::{ioe, ArchiveError};

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
    /// Status change time, seconds (0 in lists written before it was recorded).
    #[serde(default)]
    pub ctime: i64,
    /// Status change time, nanoseconds part.
    #[serde(default)]
    pub ctime_nsec: u32,
    /// Hex sha256 of a regular file's content; of a file archived sparse (`holes`), its
    /// [`super::sparse::HoleHash`] (the sha256 of its non-zero 4 KiB blocks with their offsets,
    /// then its size), which is computed without reading its holes.
    pub sha256: Option<String>,
    /// Archived sparse (only its data segments stored): `sha256` is then a hole digest.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub holes: bool,
    /// Of a file archived sparse: the bytes of its data segments (what a restore writes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<u64>,
    /// Symlink target, or the first path of a hard-link group.
    pub target: Option<String>,
    /// The path's exact bytes, hex, when they are not UTF-8 (`path` is then lossy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_hex: Option<String>,
    /// The target's exact bytes, hex, when they are not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_hex: Option<String>,
}

/// Text for people and, when the bytes are not UTF-8, their exact hex.
pub(super) fn text_and_hex(b: &[u8]) -> (String, Option<String>) {
    match std::str::from_utf8(b) {
        Ok(t) => (t.to_string(), None),
        Err(_) => (String::from_utf8_lossy(b).into_owned(), Some(hex::encode(b))),
    }
}

/// The exact bytes of a name stored as text plus optional hex (a bad hex never matches a real
/// name: it decodes to nothing).
fn stored_bytes<'a>(text: &'a str, hex_bytes: &Option<String>) -> std::borrow::Cow<'a, [u8]> {
    match hex_bytes {
        None => std::borrow::Cow::Borrowed(text.as_bytes()),
        Some(h) => std::borrow::Cow::Owned(hex::decode(h).unwrap_or_default()),
    }
}

impl FileEntry {
    /// The entry's relative path, exactly as on disk.
    pub fn path_bytes(&self) -> std::borrow::Cow<'_, [u8]> {
        stored_bytes(&self.path, &self.path_hex)
    }

    /// The symlink target or hard-link source, exactly.
    pub fn target_bytes(&self) -> Option<std::borrow::Cow<'_, [u8]>> {
        self.target.as_ref().map(|t| stored_bytes(t, &self.target_hex))
    }

    pub(super) fn set_target(&mut self, b: &[u8]) {
        let (t, h) = text_and_hex(b);
        self.target = Some(t);
        self.target_hex = h;
    }
}

/// The per-file list of an archive.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileList {
    /// Entries in archive order.
    pub entries: Vec<FileEntry>,
    /// Special files (sockets, fifos, devices) not archived.
    #[serde(default)]
    pub skipped: Vec<String>,
    /// The archived dir itself (owner, mode, times); none in lists written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<FileEntry>,
}

/// Read an archive's per-file list.
///
/// Whole, in memory: for tools and tests. The jobs read lists as a stream ([`stream`]).
pub fn read_file_list(path: &Path) -> Result<FileList, ArchiveError> {
    let f = File::open(path).map_err(ioe(path))?;
    let json = zstd::decode_all(BufReader::new(f)).map_err(ioe(path))?;
    serde_json::from_slice(&json)
        .map_err(|e| ArchiveError::Corrupt { archive: path.to_path_buf(), what: format!("not a file list: {e}") })
}

/// Writes a file list entry by entry.
pub(super) struct ListWriter<W: Write> {
    out: W,
    first: bool,
    skipped: Vec<String>,
}

fn json_err(e: serde_json::Error) -> io::Error {
    io::Error::other(e)
}

impl<W: Write> ListWriter<W> {
    /// Start a list whose archived dir is `root`.
    pub fn new(mut out: W, root: &FileEntry) -> io::Result<ListWriter<W>> {
        out.write_all(b"{\"root\":")?;
        serde_json::to_writer(&mut out, root).map_err(json_err)?;
        out.write_all(b",\"entries\":[")?;
        Ok(ListWriter { out, first: true, skipped: Vec::new() })
    }

    /// Add the next entry.
    pub fn push(&mut self, e: &FileEntry) -> io::Result<()> {
        if !self.first {
            self.out.write_all(b",")?;
        }
        self.first = false;
        serde_json::to_writer(&mut self.out, e).map_err(json_err)
    }

    /// Note a special file that was not archived.
    pub fn skip(&mut self, name: String) {
        self.skipped.push(name);
    }

    /// End the list; the writer back.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(b"],\"skipped\":")?;
        serde_json::to_writer(&mut self.out, &self.skipped).map_err(json_err)?;
        self.out.write_all(b"}")?;
        Ok(self.out)
    }
}

/// One item of a list read as a stream.
pub(super) enum ListItem {
    /// The archived dir itself.
    Root(FileEntry),
    /// The next entry.
    Entry(FileEntry),
}

/// Whether to go on reading.
#[derive(PartialEq, Eq)]
pub(super) enum Flow {
    /// Next item, please.
    Go,
    /// Enough: stop reading (not an error).
    Stop,
}

type Callback<'a> = dyn FnMut(ListItem) -> Result<Flow, ArchiveError> + 'a;

struct Sink<'a, 'b> {
    f: &'a mut Callback<'b>,
    failed: Option<ArchiveError>,
    stopped: bool,
}

impl Sink<'_, '_> {
    fn give<E: de::Error>(&mut self, item: ListItem) -> Result<(), E> {
        match (self.f)(item) {
            Ok(Flow::Go) => Ok(()),
            Ok(Flow::Stop) => {
                self.stopped = true;
                Err(E::custom("stopped"))
            }
            Err(e) => {
                self.failed = Some(e);
                Err(E::custom("stopped"))
            }
        }
    }
}

struct ListVisitor<'s, 'a, 'b>(&'s mut Sink<'a, 'b>);

impl<'de> Visitor<'de> for ListVisitor<'_, '_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a file list object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "root" => {
                    if let Some(r) = map.next_value::<Option<FileEntry>>()? {
                        self.0.give(ListItem::Root(r))?;
                    }
                }
                "entries" => map.next_value_seed(EntriesSeed(&mut *self.0))?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

struct EntriesSeed<'s, 'a, 'b>(&'s mut Sink<'a, 'b>);

impl<'de> DeserializeSeed<'de> for EntriesSeed<'_, '_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for EntriesSeed<'_, '_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a list of entries")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(e) = seq.next_element::<FileEntry>()? {
            self.0.give(ListItem::Entry(e))?;
        }
        Ok(())
    }
}

/// Read the list at `path` item by item (the root first in lists slipway writes), calling `f`
/// for each until it says [`Flow::Stop`] or fails. A list that is not valid is
/// [`ArchiveError::Corrupt`], naming the file.
pub(super) fn stream(
    path: &Path,
    mut f: impl FnMut(ListItem) -> Result<Flow, ArchiveError>,
) -> Result<(), ArchiveError> {
    let file = File::open(path).map_err(ioe(path))?;
    let dec = zstd::Decoder::new(file).map_err(ioe(path))?;
    let mut de = serde_json::Deserializer::from_reader(BufReader::with_capacity(64 * 1024, dec));
    let mut sink = Sink { f: &mut f, failed: None, stopped: false };
    let r = de::Deserializer::deserialize_map(&mut de, ListVisitor(&mut sink));
    if let Some(e) = sink.failed {
        return Err(e);
    }
    if sink.stopped {
        return Ok(());
    }
    r.and_then(|()| de.end())
        .map_err(|e| ArchiveError::Corrupt { archive: path.to_path_buf(), what: format!("not a file list: {e}") })
}

/// What a restore of the list's archive needs on disk, read as a stream (a million-file list
/// is never held whole): the bytes of every regular file (of a sparse one, its data) and the
/// number of entries.
pub fn totals(path: &Path) -> Result<(u64, u64), ArchiveError> {
    let (mut bytes, mut entries) = (0u64, 0u64);
    stream(path, |item| {
        if let ListItem::Entry(e) = item {
            entries += 1;
            if e.kind == EntryKind::File {
                bytes = bytes.saturating_add(if e.holes { e.data.unwrap_or(e.size) } else { e.size });
            }
        }
        Ok(Flow::Go)
    })?;
    Ok((bytes, entries))
}
