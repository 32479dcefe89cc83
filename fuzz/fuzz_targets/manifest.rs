//! The manifest reader on hostile bytes: a day's `MANIFEST.json`, as downloaded from the remote
//! (`offsite::fetch_manifest`) or found on a damaged disk, read by `Manifest::read` as sync,
//! prune, verify and restore do.
//!
//! Must hold: no panic; every path a manifest that was read names stays inside its snapshot dir
//! (`layout::under`); a manifest that was read, written back as it is, reads back the same.
#![no_main]

use std::fs;
use std::path::Component;

use libfuzzer_sys::fuzz_target;
use slipway_fuzz::scratch;
use slipway_jobs::layout::{self, SnapshotId};
use slipway_jobs::manifest::Manifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(key) = std::str::from_utf8(data) {
        // A remote key names a snapshot by its manifest's key.
        if let Some(snap) = SnapshotId::from_manifest_key(key) {
            let _ = snap.time();
        }
    }
    let tmp = scratch();
    let dir = tmp.path().join("daily");
    fs::create_dir(&dir).unwrap();
    fs::write(layout::manifest_path(&dir), data).unwrap();
    let Ok(Some(m)) = Manifest::read(&dir) else { return };
    let day = SnapshotId::daily("2026-11-22").unwrap();
    if let Ok(snap) = SnapshotId::new(m.kind, &m.id) {
        let _ = (snap.time(), snap.manifest_key());
    }
    for a in &m.archives {
        let _ = a.taken(&day);
        for rel in [&a.path, &a.file_list] {
            let p = layout::under(&dir, rel, &"the manifest").expect("Manifest::read checked every path");
            let inside = p.strip_prefix(&dir).expect("under the snapshot dir");
            assert!(
                inside.components().all(|c| matches!(c, Component::Normal(_))),
                "{rel:?} leaves the snapshot dir as {}",
                p.display()
            );
        }
        if let Some(t) = &a.tenant {
            assert!(m.tenant(t).is_some());
        }
    }
    let again = tmp.path().join("again");
    fs::create_dir(&again).unwrap();
    m.write_as_is(&again).unwrap();
    assert_eq!(Manifest::read(&again).unwrap().as_ref(), Some(&m), "written back, it reads differently");
    let _ = m.merged_with(&m, |_| true);
});
