//! slipway-jobs: every job slipway runs, and the small adapters the jobs drive.
//!
//! [`runner`] runs every job under one protocol (lock, recover first, run record, metrics,
//! notifications). Each job module (`rollout`, `snapshot`, …) exposes `XOptions`, a plan type where the job
//! changes anything, and `pub async fn x(…) -> Result<XReport>`. Reports are plain
//! `Serialize` structs with a `Display` for humans: the CLI prints one or the other.
//! Adapters (`desired`, `docker`, `archive`, `remote`, `health`, `lock`) wrap one external
//! system each, with domain types in and out. Library code never prints.
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod adapters;
pub mod blocking;
pub mod config;
pub mod context;
pub mod error;
pub mod fsutil;
pub mod manifest;
pub mod progress;
pub mod prune;
pub mod reconcile;
pub mod recover;
pub mod restore;
pub mod retention;
pub mod rollback;
pub mod rollout;
pub mod runner;
pub mod runs;
pub mod snapshot;
pub mod status;
pub mod sync;
pub mod types;
pub mod verify;

pub use error::{Error, ExitKind, Result};

#[cfg(test)]
mod architecture_tests {
    //! The rooms' rules, read from the sources: adapters know nothing of jobs.

    use std::path::Path;

    /// The job modules: adapters may not name any of them.
    const JOBS: &[&str] = &[
        "prune",
        "reconcile",
        "recover",
        "restore",
        "rollback",
        "rollout",
        "runs",
        "snapshot",
        "status",
        "sync",
        "verify",
        "retention",
        "context",
        "runner",
    ];

    #[test]
    fn adapters_use_no_job_module() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/adapters");
        let mut offences = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            for job in JOBS {
                if text.contains(&format!("crate::{job}::")) || text.contains(&format!("crate::{job};")) {
                    offences.push(format!("{} uses crate::{job}", path.display()));
                }
            }
        }
        assert!(offences.is_empty(), "adapters must not depend on jobs: {offences:?}");
    }

    #[test]
    fn blocking_work_goes_through_the_one_helper() {
        let mut offences = Vec::new();
        let mut dirs = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("src")];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else if !path.ends_with("blocking.rs") && !path.ends_with("lib.rs") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    if text.contains("spawn_blocking(") {
                        offences.push(path.display().to_string());
                    }
                }
            }
        }
        assert!(offences.is_empty(), "use crate::blocking::run instead of spawn_blocking in {offences:?}");
    }
}
