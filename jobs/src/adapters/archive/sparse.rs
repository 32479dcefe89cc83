//! Sparse files, stored sparse: a tenant's file of 1 TiB apparent size and a few MiB of data
//! costs its data in the archive and in time, not a terabyte of zeros read, hashed and
//! compressed.
//!
//! - **Finding the data:** `SEEK_DATA`/`SEEK_HOLE` give the file's data segments, rounded out
//!   to [`BLOCK`]; a file with more than [`MAX_SEGMENTS`] of them has its map coarsened (pairs
//!   of neighbours merged, the hole between them stored as zeros), so the map of a hostile file
//!   of a million tiny extents stays small. A file with no hole, or on a filesystem that cannot tell,
//!   is archived as any other.
//! - **The format:** a PAX "GNU sparse 1.0" entry, what GNU tar writes with `--sparse
//!   --format=pax` and what GNU tar and bsdtar extract: `GNU.sparse.major=1`, `minor=0`,
//!   `name`, `realsize` in the PAX header; the entry's data starts with the map (the count,
//!   then offset and length of each segment, one decimal per line, padded to 512 bytes), then
//!   the segments' bytes. slipway's own reader checks the map (sorted, no overlap, inside the
//!   size, bounded count) before writing anything.
//! - **The digest:** the file list's sha256 of such a file (marked `holes`) is a
//!   [`HoleHash`]: the sha256 of each non-zero [`BLOCK`] with its offset before it, then the
//!   size. It depends on the content only (not on where the filesystem keeps holes), and is
//!   computed from the data alone, so checking a restored file reads its data, not its holes.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use rustix::fs::SeekFrom;
use rustix::io::Errno;
use sha2::{Digest, Sha256};

/// The grid of sparse maps and of the hole digest.
pub const BLOCK: u64 = 4096;
/// The most segments one file's map keeps (its text is then at most ~170 KiB).
pub const MAX_SEGMENTS: usize = 4096;
/// The most segments a map read from an archive may list (archives are untrusted input).
pub const MAX_READ_SEGMENTS: u64 = 1 << 20;

const ZEROS: [u8; BLOCK as usize] = [0; BLOCK as usize];

/// Whether a file of this metadata may have holes worth a look (fewer blocks allocated than
/// its size needs). Compressed filesystems also say so; [`data_map`] then finds no hole.
pub fn may_have_holes(m: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    m.len() >= 2 * BLOCK && m.blocks().saturating_mul(512) < m.len()
}

/// What a copy of a file of this metadata takes on disk: its size, or for a file with holes
/// the blocks it has (copies, archives and restores keep holes as holes).
pub fn on_disk(m: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    if may_have_holes(m) {
        m.blocks().saturating_mul(512)
    } else {
        m.len()
    }
}

/// The data segments `(offset, length)` of the first `len` bytes of `f`, on the [`BLOCK`] grid,
/// or `None` when the file has no hole (or the filesystem cannot say where they are).
pub fn data_map(f: &File, len: u64) -> io::Result<Option<Vec<(u64, u64)>>> {
    let mut segs: Vec<(u64, u64)> = Vec::new(); // (start, end)
    let mut off = 0u64;
    while off < len {
        let start = match rustix::fs::seek(f, SeekFrom::Data(off)) {
            Ok(d) => d,
            Err(Errno::NXIO) => break,
            Err(Errno::INVAL | Errno::OPNOTSUPP) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if start >= len {
            break;
        }
        let end = match rustix::fs::seek(f, SeekFrom::Hole(start)) {
            Ok(h) => h.min(len),
            Err(Errno::NXIO) => len,
            Err(e) => return Err(e.into()),
        };
        add(&mut segs, start, end.max(start + 1), len);
        if segs.len() > MAX_SEGMENTS {
            // Too many: each pair becomes one segment (the hole between them stored as zeros).
            segs = segs.chunks(2).map(|p| (p[0].0, p[p.len() - 1].1)).collect();
        }
        off = end.max(start + 1);
    }
    if segs.len() == 1 && segs[0] == (0, len) {
        return Ok(None);
    }
    Ok(Some(segs.into_iter().map(|(s, e)| (s, e - s)).collect()))
}

/// Add `[start, end)` rounded out to [`BLOCK`] (the end capped at `len`), merged with the last.
fn add(segs: &mut Vec<(u64, u64)>, start: u64, end: u64, len: u64) {
    let a = start / BLOCK * BLOCK;
    let b = end.div_ceil(BLOCK).saturating_mul(BLOCK).min(len);
    match segs.last_mut() {
        Some(last) if last.1 >= a => last.1 = last.1.max(b),
        _ => segs.push((a, b)),
    }
}

/// The text of a map as a PAX sparse 1.0 entry begins: padded to 512 bytes.
pub fn map_block(segs: &[(u64, u64)]) -> Vec<u8> {
    let mut out = format!("{}\n", segs.len()).into_bytes();
    for (o, l) in segs {
        out.extend_from_slice(format!("{o}\n{l}\n").as_bytes());
    }
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

/// A map read from the start of an entry's data: the segments, and the bytes it took
/// (padding included). Checked: sorted, not overlapping, inside `realsize`, and their lengths
/// plus the map equal `stored` (the entry's size).
pub fn read_map(r: &mut impl io::Read, realsize: u64, stored: u64) -> Result<Vec<(u64, u64)>, String> {
    let mut used = 0u64;
    let mut line = || -> Result<u64, String> {
        let mut digits = Vec::new();
        loop {
            let mut b = [0u8; 1];
            r.read_exact(&mut b).map_err(|e| format!("the sparse map ends early: {e}"))?;
            used += 1;
            match b[0] {
                b'\n' => break,
                b'0'..=b'9' if digits.len() < 20 => digits.push(b[0]),
                b'0'..=b'9' => return Err("the sparse map holds a too large number".into()),
                _ => return Err("the sparse map holds something other than decimal numbers".into()),
            }
        }
        std::str::from_utf8(&digits)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| "the sparse map holds an empty or too large number".to_string())
    };
    let count = line()?;
    if count > MAX_READ_SEGMENTS {
        return Err(format!("the sparse map lists {count} segments, more than the {MAX_READ_SEGMENTS} allowed"));
    }
    let mut segs = Vec::with_capacity(count as usize);
    let mut data = 0u64;
    let mut end = 0u64;
    for _ in 0..count {
        let (o, l) = (line()?, line()?);
        let e = o.checked_add(l).ok_or("a sparse segment ends past 2^64")?;
        if o < end || e > realsize {
            return Err(format!("sparse segment {o}+{l} overlaps another or ends past the size {realsize}"));
        }
        end = e;
        data = data.checked_add(l).ok_or("the sparse segments add up past 2^64")?;
        segs.push((o, l));
    }
    let pad = (512 - used % 512) % 512;
    let mut skip = vec![0u8; pad as usize];
    r.read_exact(&mut skip).map_err(|e| format!("the sparse map ends early: {e}"))?;
    if used + pad + data != stored {
        return Err(format!("the sparse map says {} bytes of data, the entry holds {}", data, stored - used - pad));
    }
    Ok(segs)
}

/// The digest of a file with holes (see the module's doc): fed its data at offsets on the
/// [`BLOCK`] grid, in order; blocks of zeros, fed or not, count alike.
pub struct HoleHash(Sha256);

impl HoleHash {
    /// An empty digest.
    pub fn new() -> HoleHash {
        HoleHash(Sha256::new())
    }

    /// The bytes at `offset` (a multiple of [`BLOCK`]); only the last may end off the grid.
    pub fn update_at(&mut self, offset: u64, bytes: &[u8]) {
        for (i, block) in bytes.chunks(BLOCK as usize).enumerate() {
            if block != &ZEROS[..block.len()] {
                self.0.update((offset + i as u64 * BLOCK).to_le_bytes());
                self.0.update(block);
            }
        }
    }

    /// The digest of a file of `size` bytes.
    pub fn finish(mut self, size: u64) -> [u8; 32] {
        self.0.update(size.to_le_bytes());
        self.0.finalize().into()
    }
}

impl Default for HoleHash {
    fn default() -> Self {
        HoleHash::new()
    }
}

/// The [`HoleHash`] of the first `len` bytes of `f`, reading only where it has data.
pub fn hole_digest(f: &File, len: u64) -> io::Result<[u8; 32]> {
    let mut h = HoleHash::new();
    let mut buf = vec![0u8; super::BUF];
    let mut done = 0u64; // everything before is hashed
    let mut off = 0u64;
    while off < len {
        let (start, end) = match rustix::fs::seek(f, SeekFrom::Data(off)) {
            Ok(d) if d >= len => break,
            Ok(d) => (d, rustix::fs::seek(f, SeekFrom::Hole(d)).map_or(len, |h| h.min(len))),
            Err(Errno::NXIO) => break,
            Err(Errno::INVAL | Errno::OPNOTSUPP) => (off, len),
            Err(e) => return Err(e.into()),
        };
        let mut at = (start / BLOCK * BLOCK).max(done);
        let stop = end.div_ceil(BLOCK).saturating_mul(BLOCK).min(len);
        while at < stop {
            let n = (stop - at).min(buf.len() as u64) as usize;
            f.read_exact_at(&mut buf[..n], at)?;
            h.update_at(at, &buf[..n]);
            at += n as u64;
        }
        done = done.max(stop);
        off = end.max(start + 1);
    }
    Ok(h.finish(len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn sparse(dir: &std::path::Path, name: &str, size: u64, data: &[(u64, &[u8])]) -> File {
        let p = dir.join(name);
        let f = File::create(&p).unwrap();
        f.set_len(size).unwrap();
        for (o, d) in data {
            f.write_all_at(d, *o).unwrap();
        }
        f.sync_all().unwrap();
        File::open(&p).unwrap()
    }

    #[test]
    fn the_hole_digest_depends_on_the_content_not_on_where_the_holes_are() {
        let d = tempfile::tempdir().unwrap();
        let size = 64 << 20;
        let a = sparse(d.path(), "a", size, &[(5 << 20, b"hello"), (40 << 20, &[7u8; 10000])]);
        // The same content, with a run of zeros written as data instead of a hole.
        let b = sparse(
            d.path(),
            "b",
            size,
            &[(4 << 20, &vec![0u8; 2 << 20]), (5 << 20, b"hello"), (40 << 20, &[7u8; 10000])],
        );
        let c = sparse(d.path(), "c", size, &[(5 << 20, b"hellp"), (40 << 20, &[7u8; 10000])]);
        let (ha, hb, hc) =
            (hole_digest(&a, size).unwrap(), hole_digest(&b, size).unwrap(), hole_digest(&c, size).unwrap());
        assert_eq!(ha, hb);
        assert_ne!(ha, hc);
        // The digest of the whole content read through, block by block, is the same.
        let mut all = HoleHash::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut at = 0;
        while at < size {
            a.read_exact_at(&mut buf, at).unwrap();
            all.update_at(at, &buf);
            at += buf.len() as u64;
        }
        assert_eq!(all.finish(size), ha);
    }

    #[test]
    fn a_map_finds_the_data_and_stays_small_for_a_file_of_many_extents() {
        let d = tempfile::tempdir().unwrap();
        let f = sparse(d.path(), "a", 1 << 40, &[(1 << 30, b"x"), ((1 << 40) - 3, b"end")]);
        let map = data_map(&f, 1 << 40).unwrap().expect("holes");
        assert_eq!(map.len(), 2, "{map:?}");
        assert!(map[0].0 <= 1 << 30 && map[0].0 + map[0].1 > 1 << 30);
        assert_eq!(map[1].0 + map[1].1, 1 << 40);
        // 10 000 extents, one byte each 1 MiB apart: the map is coarsened to the cap.
        let mut f2 =
            File::options().create(true).truncate(true).write(true).read(true).open(d.path().join("b")).unwrap();
        f2.set_len(10_000 << 20).unwrap();
        for i in 0..10_000u64 {
            f2.write_all_at(b"y", i << 20).unwrap();
        }
        f2.flush().unwrap();
        let map = data_map(&f2, 10_000 << 20).unwrap().expect("holes");
        assert!(map.len() <= MAX_SEGMENTS, "{}", map.len());
        let covered: u64 = map.iter().map(|s| s.1).sum();
        assert!(covered < 10_000 << 20, "the coarse map still leaves holes out");
        // Every byte written is inside a segment.
        for i in 0..10_000u64 {
            assert!(map.iter().any(|(o, l)| (*o..o + l).contains(&(i << 20))), "{i}");
        }
        // A file without holes has no map.
        std::fs::write(d.path().join("c"), vec![1u8; 3 * BLOCK as usize]).unwrap();
        let c = File::open(d.path().join("c")).unwrap();
        assert_eq!(data_map(&c, 3 * BLOCK).unwrap(), None);
    }

    #[test]
    fn a_map_reads_back_and_a_hostile_one_is_refused() {
        let segs = vec![(0, 4096), (1 << 30, 10)];
        let block = map_block(&segs);
        assert_eq!(block.len() % 512, 0);
        let stored = block.len() as u64 + 4106;
        assert_eq!(read_map(&mut &block[..], 1 << 31, stored).unwrap(), segs);
        for (bad, why) in [
            (b"2\n10\n5\n0\n5\n".to_vec(), "overlaps"),
            (b"1\n0\n99999999999999999999999\n".to_vec(), "too large"),
            (b"1\n-1\n5\n".to_vec(), "decimal"),
            (b"9999999999\n".to_vec(), "more than"),
            (b"1\n0\n".to_vec(), "ends early"),
        ] {
            let e = read_map(&mut &bad[..], 1 << 31, 512 + 5).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
        let e = read_map(&mut &block[..], 1 << 31, stored + 1).unwrap_err();
        assert!(e.contains("holds"), "{e}");
        let e = read_map(&mut &block[..], 1 << 29, stored).unwrap_err();
        assert!(e.contains("past the size"), "{e}");
    }
}
