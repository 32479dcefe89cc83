//! The one error type jobs return, and the exit-code class each error maps to.
//! The CLI turns [`ExitKind`] into a process exit code in one place (`src/main.rs`).

use std::path::PathBuf;

use serde::Serialize;

/// How a job ended, as the process exit code documents it (README "Exit codes"). Its
/// [`ExitKind::word`] is the one outcome word of the `--json` envelope, the webhook, the run
/// record and `slipway runs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// 0: the job did what it was asked.
    Success,
    /// 1: the job failed (some tenant or archive named in the report).
    Failure,
    /// 2: bad command line, config or desired state; nothing was touched.
    Usage,
    /// 3: a rollout halted; the failing tenant was restored to its prior container and data.
    Halted,
    /// 4: an undo failed; a person is needed (the report names the tenant and its state).
    PersonNeeded,
    /// 5: another slipway job holds the host lock.
    LockBusy,
    /// 6: the remote store refused our credentials.
    RemoteAuth,
    /// 7: interrupted by SIGINT/SIGTERM/SIGHUP; the current tenant was finished or undone.
    Interrupted,
    /// 8: `status` found something that needs attention.
    Attention,
}

impl ExitKind {
    /// Every outcome, in exit-code order.
    pub const ALL: [ExitKind; 9] = [
        ExitKind::Success,
        ExitKind::Failure,
        ExitKind::Usage,
        ExitKind::Halted,
        ExitKind::PersonNeeded,
        ExitKind::LockBusy,
        ExitKind::RemoteAuth,
        ExitKind::Interrupted,
        ExitKind::Attention,
    ];

    /// The outcome word, the same in JSON, the webhook, metrics' sidecar and the run record.
    pub fn word(self) -> &'static str {
        match self {
            ExitKind::Success => "success",
            ExitKind::Failure => "failed",
            ExitKind::Usage => "usage",
            ExitKind::Halted => "halted",
            ExitKind::PersonNeeded => "person_needed",
            ExitKind::LockBusy => "lock_busy",
            ExitKind::RemoteAuth => "remote_auth",
            ExitKind::Interrupted => "interrupted",
            ExitKind::Attention => "attention",
        }
    }

    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            ExitKind::Success => 0,
            ExitKind::Failure => 1,
            ExitKind::Usage => 2,
            ExitKind::Halted => 3,
            ExitKind::PersonNeeded => 4,
            ExitKind::LockBusy => 5,
            ExitKind::RemoteAuth => 6,
            ExitKind::Interrupted => 7,
            ExitKind::Attention => 8,
        }
    }
}

impl Serialize for ExitKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.word())
    }
}

impl std::fmt::Display for ExitKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.word())
    }
}

/// Errors a job can end with before it produces a report.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration file or desired-state file is wrong: names the file, key and fix.
    #[error("{0}")]
    Config(String),
    /// Command-line input names something that does not exist (tenant, run, day).
    #[error("{0}")]
    Usage(String),
    /// The host lock is held by another job: the lock file and, once it has published itself,
    /// who holds it.
    #[error("{}", busy_text(lock, holder.as_deref()))]
    LockBusy {
        /// The lock file.
        lock: PathBuf,
        /// The holder (job, run id, pid, since).
        holder: Option<Box<crate::types::LockHolder>>,
    },
    /// The remote refused the credentials.
    #[error(
        "remote: {place} refused the credentials ({code}) while {op}; check remote.credentials_file or the AWS_* \
         environment"
    )]
    RemoteAuth {
        /// The remote's endpoint and bucket (never credentials).
        place: String,
        /// What slipway was doing.
        op: String,
        /// The store's error code, or the HTTP status.
        code: String,
    },
    /// The Docker engine failed or answered something slipway refuses: what slipway was doing,
    /// to which container, and the engine's error kept whole.
    #[error("docker: {op}{}", source.as_ref().map_or(String::new(), |e| format!(": {e}")))]
    Docker {
        /// What slipway was doing, in words ("stopping container pulse-t1").
        op: String,
        /// The container it was doing it to, if one.
        container: Option<String>,
        /// The engine's error, if the engine answered with one.
        source: Option<bollard::errors::Error>,
    },
    /// The desired-state repo could not be read: which repo and ref, what slipway was doing,
    /// and git's error when there is one.
    #[error("git: {repo} ({git_ref}): {op}{}", source.as_ref().map_or(String::new(), |e| format!(": {}", e.message())))]
    Git {
        /// The repo as configured.
        repo: String,
        /// The branch or ref asked for.
        git_ref: String,
        /// What slipway was doing, or what is wrong.
        op: String,
        /// git's error.
        source: Option<git2::Error>,
    },
    /// The remote store failed: where, what slipway was doing, and what the store said.
    #[error("remote: {place}: {op}: {detail}")]
    Remote {
        /// The remote's endpoint and bucket (never credentials).
        place: String,
        /// What slipway was doing ("uploading daily/…").
        op: String,
        /// The store's error code and message, or what was wrong with its answer.
        detail: String,
    },
    /// An archive is wrong or could not be written or read: the archive adapter's error, kept
    /// whole (a hash mismatch still says which archive, what was expected and what was found).
    #[error("archive: {0}")]
    Archive(#[from] ArchiveError),
    /// A backup that is not one archive went wrong (a manifest, the control-plane database, a
    /// downloaded copy): says which and how.
    #[error("archive: {0}")]
    Backup(String),
    /// A filesystem operation failed on a path.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The run record failed.
    #[error("state: {0}")]
    State(#[from] slipway_state::StateError),
    /// A blocking task (archiving, hashing, extracting) panicked or was cancelled.
    #[error("{what} task failed: {source}")]
    Task {
        /// The work, as the job names it.
        what: &'static str,
        /// Why it did not finish.
        source: tokio::task::JoinError,
    },
    /// Something slipway writes could not be encoded as JSON (a journal detail, the manifest,
    /// the lock holder, the metrics sidecar).
    #[error("cannot encode {what} as JSON: {source}")]
    Json {
        /// What was being encoded.
        what: &'static str,
        /// serde_json's error.
        source: serde_json::Error,
    },
    /// A tenant a job paused or stopped could not be brought back: a person is needed, and
    /// `recover` (or `status`) finds it from the journal.
    #[error(
        "container {container} is still {state} after {attempts} attempts to bring it back: {why}; \
         run `slipway recover` (it retries), or `docker unpause`/`docker start` it by hand"
    )]
    Frozen {
        /// The container.
        container: String,
        /// paused or stopped.
        state: &'static str,
        /// How many times it was tried.
        attempts: u32,
        /// The engine's last answer.
        why: String,
    },
    /// A signal (SIGTERM, SIGINT, SIGHUP) stopped the job at a safe point before this work:
    /// nothing of it was done, and what was touched was put back.
    #[error("not done: {0}, interrupted by a signal")]
    Interrupted(String),
    /// Anything else, with context.
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// The error's words for wrapping in another [`Error::Backup`]: a `Backup`'s own text without
    /// its `archive: ` prefix (else the wrapped message says "archive:" twice), any other whole.
    pub fn detail(&self) -> String {
        match self {
            Error::Backup(s) => s.clone(),
            e => e.to_string(),
        }
    }

    /// The exit class for this error.
    pub fn exit_kind(&self) -> ExitKind {
        match self {
            Error::Config(_) | Error::Usage(_) => ExitKind::Usage,
            Error::LockBusy { .. } => ExitKind::LockBusy,
            Error::RemoteAuth { .. } => ExitKind::RemoteAuth,
            Error::Frozen { .. } => ExitKind::PersonNeeded,
            Error::Interrupted(_) => ExitKind::Interrupted,
            _ => ExitKind::Failure,
        }
    }

    /// Whether the Docker engine did not answer at all (its socket gone or refusing, a
    /// timeout) rather than answer with an error: what an engine restart looks like, worth
    /// waiting out where giving up would leave a tenant down.
    pub fn engine_unreachable(&self) -> bool {
        use bollard::errors::Error as B;
        matches!(
            self,
            Error::Docker {
                source: Some(
                    B::RequestTimeoutError
                        | B::IOError { .. }
                        | B::HyperResponseError { .. }
                        | B::HyperLegacyError { .. }
                        | B::SocketNotFoundError(_)
                ),
                ..
            }
        )
    }

    /// An `Io` error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io { path: path.into(), source }
    }
}

fn busy_text(lock: &std::path::Path, holder: Option<&crate::types::LockHolder>) -> String {
    match holder {
        Some(h) => format!("another slipway job holds the host lock: {h}; try again later or pass --wait"),
        None => format!("another slipway job holds the host lock {}; try again later or pass --wait", lock.display()),
    }
}

/// Result with the jobs' [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Archive errors; each names the archive, path or entry.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Filesystem error on a path.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The archive bytes do not hash to what the manifest says.
    #[error(
        "{}: sha256 is {actual}, the manifest says {expected}; the archive is damaged, nothing was touched \
         (restore another --day or `restore --remote`)",
        archive.display()
    )]
    HashMismatch {
        /// The archive.
        archive: PathBuf,
        /// Expected hex sha256.
        expected: String,
        /// Actual hex sha256.
        actual: String,
    },
    /// An entry would escape the target or is of a refused kind.
    #[error("{}: refused entry \"{entry}\": {why}; nothing was restored", archive.display())]
    Refused {
        /// The archive.
        archive: PathBuf,
        /// The entry path as stored.
        entry: String,
        /// Why.
        why: String,
    },
    /// The archive is not a valid tar+zstd stream.
    #[error("{}: {what}", archive.display())]
    Corrupt {
        /// The archive.
        archive: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// A deep check found a file that differs from the list.
    #[error("{}: file \"{file}\": {what}", archive.display())]
    Mismatch {
        /// The archive.
        archive: PathBuf,
        /// The file.
        file: String,
        /// What differs.
        what: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_has_its_own_word_and_code_and_json_uses_the_word() {
        let words: std::collections::BTreeSet<_> = ExitKind::ALL.iter().map(|k| k.word()).collect();
        let codes: std::collections::BTreeSet<_> = ExitKind::ALL.iter().map(|k| k.code()).collect();
        assert_eq!((words.len(), codes.len()), (ExitKind::ALL.len(), ExitKind::ALL.len()));
        for k in ExitKind::ALL {
            assert_eq!(serde_json::to_value(k).unwrap(), k.word());
        }
        // The run record's words, which reconcile and `runs` read back.
        assert_eq!(ExitKind::Failure.word(), "failed");
        assert_eq!(ExitKind::Halted.word(), "halted");
        assert_eq!(ExitKind::PersonNeeded.word(), "person_needed");
    }

    #[test]
    fn an_archive_hash_mismatch_reaches_the_job_whole_and_keeps_exit_code_1() {
        fn job() -> Result<()> {
            Err(ArchiveError::HashMismatch {
                archive: "/b/t1.tar.zst".into(),
                expected: "aa".into(),
                actual: "bb".into(),
            })?
        }
        let e = job().unwrap_err();
        assert!(
            matches!(&e, Error::Archive(ArchiveError::HashMismatch { expected, actual, .. }) if expected == "aa" && actual == "bb"),
            "{e:?}"
        );
        assert!(e.to_string().starts_with("archive: /b/t1.tar.zst: sha256 is bb, the manifest says aa"), "{e}");
        assert_eq!(e.exit_kind(), ExitKind::Failure);
    }

    #[test]
    fn a_docker_error_names_the_container_and_keeps_the_engines_error() {
        use std::error::Error as _;
        let engine =
            bollard::errors::Error::DockerResponseServerError { status_code: 404, message: "no such container".into() };
        let e = Error::Docker {
            op: "stopping container pulse-t1".into(),
            container: Some("pulse-t1".into()),
            source: Some(engine),
        };
        assert!(e.to_string().starts_with("docker: stopping container pulse-t1: "), "{e}");
        assert!(e.to_string().contains("no such container"), "{e}");
        assert!(e.source().is_some());
        assert_eq!(e.exit_kind(), ExitKind::Failure);
        let refused =
            Error::Docker { op: "pulled x but the engine reports digest none".into(), container: None, source: None };
        assert_eq!(refused.to_string(), "docker: pulled x but the engine reports digest none");
    }

    #[test]
    fn git_and_remote_errors_name_repo_ref_and_place_and_keep_their_exit_codes() {
        let git = Error::Git {
            repo: "/srv/git/fleet.git".into(),
            git_ref: "v9".into(),
            op: "no branch, tag or commit \"v9\"; check [desired] branch or --ref".into(),
            source: None,
        };
        assert_eq!(
            git.to_string(),
            "git: /srv/git/fleet.git (v9): no branch, tag or commit \"v9\"; check [desired] branch or --ref"
        );
        let auth =
            Error::RemoteAuth { place: "s3://b".into(), op: "listing".into(), code: "InvalidAccessKeyId".into() };
        assert!(auth.to_string().contains("s3://b refused the credentials (InvalidAccessKeyId) while listing"));
        assert_eq!(auth.exit_kind(), ExitKind::RemoteAuth);
        let remote = Error::Remote { place: "s3://b".into(), op: "uploading k".into(), detail: "SlowDown".into() };
        assert_eq!(
            (remote.to_string().as_str(), remote.exit_kind()),
            ("remote: s3://b: uploading k: SlowDown", ExitKind::Failure)
        );
    }

    #[test]
    fn a_backup_error_wrapped_in_another_says_archive_once() {
        let inner = Error::Backup("pg_dump: the dump is empty".into());
        let outer = Error::Backup(format!("tenant t1: the database dump failed: {}", inner.detail()));
        assert_eq!(outer.to_string(), "archive: tenant t1: the database dump failed: pg_dump: the dump is empty");
        let io = Error::Usage("no such tenant".into());
        assert_eq!(io.detail(), io.to_string());
    }
}
