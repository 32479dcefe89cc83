//! The remote copy of the backup store as the jobs share it (`sync`, `restore --remote`,
//! `verify --remote`, `prune`): connecting from the host config, the one listing of the
//! remote's objects and complete snapshots, and fetching a snapshot's manifest. Keys come from
//! [`crate::layout`]; the S3 calls from [`crate::adapters::remote`].
//!
//! Invariant: a remote snapshot is complete exactly when its manifest key is listed (sync
//! uploads it last), so [`Listing::snapshots`] holds only complete ones.
//!
//! Encrypted manifests: the jobs that must read every remote manifest on a timer (`prune`,
//! `verify --remote`) run without the identity, which stays off the host. When slipway uploads
//! an encrypted manifest it keeps its plaintext under the state dir ([`keep_manifest`]);
//! [`read_manifest`] uses that copy (or the snapshot dir's own manifest) when its sha256 is the
//! plaintext sha256 recorded with the object, and decrypts only when neither is.

use std::collections::HashMap;
use std::path::Path;

use crate::adapters::remote::Remote;
use crate::config::{HostConfig, RemoteConfig};
use crate::error::{Error, Result};
use crate::layout::{self, SnapshotId};
use crate::manifest::Manifest;

/// The host config's `[remote]`, or an error saying how to add one.
pub fn remote_config(cfg: &HostConfig) -> Result<&RemoteConfig> {
    cfg.remote.as_ref().ok_or_else(|| {
        Error::Config(
            "no [remote] in the host config; add endpoint, bucket and prefix (see deploy/config.example.toml)".into(),
        )
    })
}

/// Connect to the remote the host config names.
pub async fn connect(cfg: &HostConfig) -> Result<Remote> {
    Remote::connect(remote_config(cfg)?).await
}

/// One listing of everything under the remote prefix.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// Every object's size, by key.
    pub sizes: HashMap<String, u64>,
    /// The complete snapshots (those whose manifest is listed), sorted by kind, then id.
    pub snapshots: Vec<SnapshotId>,
}

/// A listed key, refused unless it is a safe relative path ([`layout::checked_rel`]): the
/// remote is untrusted input, and a key with `..` or a leading `/` could name a path outside
/// the dir it is downloaded into, or another object than the one meant.
fn checked_key<'a>(remote: &Remote, key: &'a str) -> Result<&'a str> {
    layout::checked_rel(key).map_err(|why| Error::Remote {
        place: remote.place().to_string(),
        op: format!("listing object key \"{key}\""),
        detail: format!(
            "refused: {why}. slipway never writes such a key; remove the object from the bucket (or move it \
             out of the prefix) and run again"
        ),
    })
}

/// List the remote once: every object and every complete snapshot. A key that is not a safe
/// relative path is an error naming it.
pub async fn list(remote: &Remote) -> Result<Listing> {
    let objects = remote.list("").await?;
    for o in &objects {
        checked_key(remote, &o.key)?;
    }
    let mut snapshots: Vec<SnapshotId> = objects.iter().filter_map(|o| SnapshotId::from_manifest_key(&o.key)).collect();
    snapshots.sort();
    Ok(Listing { sizes: objects.into_iter().map(|o| (o.key, o.size)).collect(), snapshots })
}

/// Download `snap`'s manifest into `dir` (its local stand-in) and read it; None when the remote
/// has none. Before it is used it must hash to the sha256 recorded as its metadata at upload,
/// name `snap` itself, and name only paths inside its dir ([`Manifest::read`]).
pub async fn fetch_manifest(remote: &Remote, snap: &SnapshotId, dir: &Path) -> Result<Option<Manifest>> {
    let key = snap.manifest_key();
    let Some(head) = remote.head(&key).await? else { return Ok(None) };
    // An encrypted manifest is checked by its plaintext's sha256 (and its own, in download).
    let Some(sha) = head.content_sha256().map(str::to_string) else {
        return Err(Error::Remote {
            place: remote.place().to_string(),
            op: format!("checking {key}"),
            detail: "it has no sha256 metadata, so it cannot be checked; slipway uploads every manifest with one. \
                     Run `slipway sync` from the host that owns these backups to upload it again"
                .into(),
        });
    };
    remote.download(&key, &layout::manifest_path(dir), Some(&sha)).await.map_err(|e| match e {
        Error::Backup(m) => Error::Backup(format!(
            "{m} (its sha256 metadata at upload): the remote manifest changed after it was uploaded; \
             nothing was read from it. Run `slipway sync` to upload it again"
        )),
        e => e,
    })?;
    let m = Manifest::read(dir).map_err(|e| Error::Backup(format!("{}: {key}: {e}", remote.place())))?;
    if let Some(m) = &m {
        if m.kind != snap.kind() || m.id != snap.id() {
            return Err(Error::Backup(format!(
                "{}: {key} names snapshot {}/{}, not {snap}; the remote manifest was moved or tampered with, \
                 nothing was read from it",
                remote.place(),
                m.kind,
                m.id
            )));
        }
    }
    Ok(m)
}

/// Fail unless the filesystem `dir` is on (its nearest existing ancestor's, when it is not made
/// yet) has `need` bytes free for downloading `what`: the error names the dir and the bytes
/// before anything is downloaded, rather than a full disk partway through a large archive.
pub fn check_room(dir: &Path, need: u64, what: &str) -> Result<()> {
    let on = dir.ancestors().find(|p| p.exists()).unwrap_or(dir);
    let free = crate::fsutil::free_bytes(on).map_err(|e| Error::io(on, e))?;
    if free < need {
        return Err(Error::Backup(format!(
            "{}: downloading {what} needs {need} bytes but only {free} are free there; nothing was downloaded. \
             Free space on that filesystem (or point TMPDIR, or the state dir, at a larger one)",
            dir.display()
        )));
    }
    Ok(())
}

/// The bytes downloading `archive` of `snap` and its file list writes: the archive as its
/// manifest names it (a download is decrypted as it is written) and the file list's object as
/// listed (an encrypted one is larger than what it holds: an upper bound).
pub async fn download_bytes(
    remote: &Remote,
    snap: &SnapshotId,
    archive: &crate::manifest::ArchiveEntry,
) -> Result<u64> {
    let mut need = archive.size;
    for p in std::iter::once(&archive.file_list).chain(archive.other_parts().map(|p| &p.file_list)) {
        need = need.saturating_add(remote.head(&snap.key(p)).await?.map_or(0, |h| h.size));
    }
    Ok(need.saturating_add(archive.other_parts().map(|p| p.size).sum::<u64>()))
}

/// Keep the plaintext of the encrypted manifest just uploaded for `snap` (see the module doc).
pub fn keep_manifest(state_dir: &Path, snap: &SnapshotId, manifest_file: &Path) -> Result<()> {
    let dir = snap.sealed_manifest_dir(state_dir);
    crate::fsutil::create_private_dir(&dir).map_err(|e| Error::io(&dir, e))?;
    let bytes = std::fs::read(manifest_file).map_err(|e| Error::io(manifest_file, e))?;
    let p = layout::manifest_path(&dir);
    crate::fsutil::atomic_write(&p, &bytes, 0o600).map_err(|e| Error::io(p, e))
}

/// Forget the kept plaintext of `snap`'s manifest (the remote one was deleted).
pub fn forget_manifest(state_dir: &Path, snap: &SnapshotId) {
    let _ = crate::adapters::confined::remove_tree(&snap.sealed_manifest_dir(state_dir));
}

/// Read `snap`'s remote manifest for a job that has no identity to spare: an unencrypted one
/// is fetched ([`fetch_manifest`]); an encrypted one is read from a local file known to be its
/// plaintext — the copy kept at upload, or the snapshot dir's own manifest — when that file
/// hashes to the plaintext sha256 recorded with the object; else it is decrypted, which needs
/// the identity (an error saying so without one).
pub async fn read_manifest(
    remote: &Remote,
    cfg: &HostConfig,
    snap: &SnapshotId,
    dir: &Path,
) -> Result<Option<Manifest>> {
    let key = snap.manifest_key();
    let Some(head) = remote.head(&key).await? else { return Ok(None) };
    if head.encryption.is_none() || remote.has_identity() {
        return fetch_manifest(remote, snap, dir).await;
    }
    for known in [snap.sealed_manifest_dir(&cfg.state_dir), snap.dir(&cfg.backup_root)] {
        let p = layout::manifest_path(&known);
        let Ok((sha, size)) = crate::adapters::archive::sha256_file(&p) else { continue };
        if head.holds(&sha, size) {
            let m = Manifest::read(&known)?;
            if let Some(m) = &m {
                if m.kind != snap.kind() || m.id != snap.id() {
                    continue;
                }
            }
            return Ok(m);
        }
    }
    Err(Error::Config(format!(
        "{}: {key} is encrypted and this host keeps no copy of it (it was uploaded from another host, or before \
         this one kept copies); pass --identity FILE (or set [remote] identity_file) so it can be read",
        remote.place()
    )))
}
