//! slipway-jobs: every job slipway runs, and the small adapters the jobs drive.
//!
//! Each job module (`rollout`, `snapshot`, …) exposes `XOptions`, a plan type where the job
//! changes anything, and `pub async fn x(…) -> Result<XReport>`. Reports are plain
//! `Serialize` structs with a `Display` for humans: the CLI prints one or the other.
//! Adapters (`desired`, `docker`, `archive`, `remote`, `health`, `lock`) wrap one external
//! system each, with domain types in and out. Library code never prints.
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod archive;
pub mod config;
pub mod context;
pub mod desired;
pub mod docker;
pub mod error;
pub mod fsutil;
pub mod health;
pub mod lock;
pub mod manifest;
pub mod metrics;
pub mod notify;
pub mod progress;
pub mod prune;
pub mod reconcile;
pub mod recover;
pub mod remote;
pub mod restore;
pub mod retention;
pub mod rollback;
pub mod rollout;
pub mod runs;
pub mod snapshot;
pub mod status;
pub mod sync;
pub mod types;
pub mod verify;

pub use error::{Error, ExitKind, Result};
