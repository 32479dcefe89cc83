//! The per-file list reader on hostile bytes (`<name>.files.json.zst` from the remote or a
//! damaged disk): the whole reader (`read_file_list`) and the streaming one the jobs use
//! (`totals`).
//!
//! Each input is read twice: as the list file itself (the zstd decoder's input), and as the
//! JSON inside one (compressed here first, so that mutations reach the JSON parser).
//!
//! Must hold: no panic; when both readers take a list, they agree on its totals.
#![no_main]

use std::fs;

use libfuzzer_sys::fuzz_target;
use slipway_fuzz::scratch;
use slipway_jobs::adapters::archive::{read_file_list, totals, EntryKind};

fuzz_target!(|data: &[u8]| {
    let tmp = scratch();
    let raw = tmp.path().join("raw.files.json.zst");
    fs::write(&raw, data).unwrap();
    let json = tmp.path().join("json.files.json.zst");
    fs::write(&json, zstd::encode_all(data, 1).unwrap()).unwrap();
    for p in [&raw, &json] {
        let whole = read_file_list(p);
        let streamed = totals(p);
        if let (Ok(list), Ok(streamed)) = (&whole, &streamed) {
            let bytes =
                list.entries.iter().filter(|e| e.kind == EntryKind::File).fold(0u64, |n, e| n.saturating_add(e.size));
            assert_eq!((bytes, list.entries.len() as u64), *streamed, "the two readers disagree");
            for e in list.entries.iter().chain(&list.root) {
                let _ = e.path_bytes();
                let _ = e.target_bytes();
            }
        }
    }
});
