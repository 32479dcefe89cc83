//! The remote copy of the backup store as the jobs share it (`sync`, `restore --remote`,
//! `verify --remote`, `prune`): connecting from the host config, the one listing of the
//! remote's objects and complete snapshots, and fetching a snapshot's manifest. Keys come from
//! [`crate::layout`]; the S3 calls from [`crate::adapters::remote`].
//!
//! Invariant: a remote snapshot is complete exactly when its manifest key is listed (sync
//! uploads it last), so [`Listing::snapshots`] holds only complete ones.

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

/// List the remote once: every object and every complete snapshot.
pub async fn list(remote: &Remote) -> Result<Listing> {
    let objects = remote.list("").await?;
    let mut snapshots: Vec<SnapshotId> = objects.iter().filter_map(|o| SnapshotId::from_manifest_key(&o.key)).collect();
    snapshots.sort();
    Ok(Listing { sizes: objects.into_iter().map(|o| (o.key, o.size)).collect(), snapshots })
}

/// Download `snap`'s manifest into `dir` (its local stand-in) and read it.
pub async fn fetch_manifest(remote: &Remote, snap: &SnapshotId, dir: &Path) -> Result<Option<Manifest>> {
    remote.download(&snap.manifest_key(), &layout::manifest_path(dir), None).await?;
    Manifest::read(dir)
}
