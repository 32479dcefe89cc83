//! The host lock: one slipway job at a time per host, an exclusive `flock` on
//! `<state_dir>/slipway.lock`. The kernel drops the lock when the holding process dies,
//! however it dies, so a killed job never blocks anyone.
//!
//! Who holds it (job, run id, pid, since) lives beside it in `<state_dir>/slipway.holder`,
//! published whole (temp file, fsync, rename) while the flock is held and removed before the
//! flock is released. A job that finds the lock taken therefore reads either nothing yet (the
//! winner is between its flock and its rename) or a complete holder: it never reads a
//! half-written one. "Nothing yet" and a holder left behind by a SIGKILLed process (whose pid
//! is gone) both mean the winner is about to publish, so the loser looks again for a moment
//! before it answers.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::types::RunId;

/// How long a loser keeps looking for the holder of a lock that is taken but not yet named.
const PUBLISH_GRACE: Duration = Duration::from_secs(2);

pub use crate::types::LockHolder;

/// A held host lock; released when dropped (or when the process exits).
#[derive(Debug)]
pub struct HostLock {
    file: File,
    path: PathBuf,
    holder_path: PathBuf,
    since: String,
}

/// The lock file of a state dir.
pub fn lock_path(state_dir: &Path) -> PathBuf {
    state_dir.join("slipway.lock")
}

/// The file naming the lock's holder.
pub fn holder_path(state_dir: &Path) -> PathBuf {
    state_dir.join("slipway.holder")
}

/// Who holds the lock now, if anyone does.
pub fn holder(state_dir: &Path) -> Option<LockHolder> {
    let file = File::open(lock_path(state_dir)).ok()?;
    let t = Instant::now();
    loop {
        match file.try_lock() {
            // Nobody holds it (we took it for an instant; dropping the file releases it).
            Ok(()) => return None,
            Err(_) => {
                if let Some(h) = read_holder(&holder_path(state_dir)) {
                    return Some(h);
                }
                if t.elapsed() >= PUBLISH_GRACE {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// The published holder, if it is complete and names a live process.
fn read_holder(path: &Path) -> Option<LockHolder> {
    let h: LockHolder = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    pid_alive(h.pid).then_some(h)
}

/// Whether `pid` is a live process (true where /proc cannot tell).
fn pid_alive(pid: u32) -> bool {
    !Path::new("/proc/self").exists() || Path::new(&format!("/proc/{pid}")).exists()
}

fn busy(path: &Path, holder: Option<LockHolder>) -> Error {
    Error::LockBusy { lock: path.to_path_buf(), holder: holder.map(Box::new) }
}

/// Take the host lock for `job` and publish its holder. With `wait` None, a held lock is an
/// immediate [`Error::LockBusy`] naming the holder; with `Some(d)`, wait up to `d`
/// (`Duration::MAX`: forever).
pub fn acquire(state_dir: &Path, job: &str, run_id: &RunId, wait: Option<Duration>) -> Result<HostLock> {
    crate::fsutil::create_private_dir(state_dir).map_err(|e| Error::io(state_dir, e))?;
    let path = lock_path(state_dir);
    let holder_path = holder_path(state_dir);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    let started = Instant::now();
    let deadline = wait.map(|w| started.checked_add(w));
    // When we first saw the lock taken without a live holder named.
    let mut unnamed_since: Option<Instant> = None;
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(TryLockError::WouldBlock) => {
                let named = read_holder(&holder_path);
                let expired = match deadline {
                    None => true,
                    Some(None) => false,
                    Some(Some(d)) => Instant::now() >= d,
                };
                if named.is_none() {
                    // The winner is between its flock and publishing its holder: look again soon.
                    let since = *unnamed_since.get_or_insert_with(Instant::now);
                    if since.elapsed() < PUBLISH_GRACE {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                } else {
                    unnamed_since = None;
                }
                if expired {
                    return Err(busy(&path, named));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(TryLockError::Error(e)) => return Err(Error::io(&path, e)),
        }
    }
    let lock = HostLock { file, path, holder_path, since: jiff::Timestamp::now().to_string() };
    lock.publish(job, run_id)?;
    Ok(lock)
}

impl HostLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Name `job` and `run_id` as the holder, replacing the published holder whole (a job that
    /// starts a run record under a new id says so, so the holder matches `slipway runs`).
    pub fn publish(&self, job: &str, run_id: &RunId) -> Result<()> {
        let me = LockHolder {
            job: job.to_string(),
            run_id: run_id.to_string(),
            pid: std::process::id(),
            since: self.since.clone(),
        };
        let json = serde_json::to_vec(&me).map_err(|source| Error::Json { what: "the lock holder", source })?;
        crate::fsutil::atomic_write(&self.holder_path, &json, 0o600).map_err(|e| Error::io(&self.holder_path, e))
    }
}

impl Drop for HostLock {
    fn drop(&mut self) {
        // Unpublish before unlocking: a holder file never outlives its lock but by a SIGKILL.
        let _ = std::fs::remove_file(&self.holder_path);
        let _ = self.file.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_acquire_is_busy_and_names_the_holder() {
        let d = tempfile::tempdir().unwrap();
        let run = RunId::new();
        let held = acquire(d.path(), "snapshot", &run, None).unwrap();
        // flock is per open file description: a second open in the same process conflicts too.
        let e = acquire(d.path(), "reconcile", &RunId::new(), None).unwrap_err();
        assert!(matches!(&e, Error::LockBusy { holder: Some(h), .. } if h.run_id == run.as_str()), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains("job snapshot") && msg.contains(run.as_str()) && msg.contains(&std::process::id().to_string()),
            "{msg}"
        );
        assert_eq!(holder(d.path()).unwrap().job, "snapshot");
        drop(held);
        assert!(holder(d.path()).is_none());
        acquire(d.path(), "reconcile", &RunId::new(), None).unwrap();
    }

    #[test]
    fn every_loser_of_a_race_names_a_complete_holder() {
        let d = tempfile::tempdir().unwrap();
        const N: usize = 8;
        for round in 0..15 {
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(N));
            let threads: Vec<_> = (0..N)
                .map(|i| {
                    let (dir, barrier) = (d.path().to_path_buf(), barrier.clone());
                    std::thread::spawn(move || {
                        let (job, run) = (format!("job{round}x{i}"), RunId::new());
                        barrier.wait();
                        match acquire(&dir, &job, &run, None) {
                            Ok(held) => {
                                std::thread::sleep(Duration::from_millis(30));
                                drop(held);
                                Ok((job, run.to_string()))
                            }
                            Err(e) => Err(e.to_string()),
                        }
                    })
                })
                .collect();
            let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
            let winners: Vec<&(String, String)> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
            assert!(!winners.is_empty(), "round {round}: nobody took the lock: {results:?}");
            for msg in results.iter().filter_map(|r| r.as_ref().err()) {
                let pid = format!("pid {}", std::process::id());
                assert!(
                    winners.iter().any(|(job, run)| msg.contains(&format!("job {job}, run {run}, {pid}, since "))),
                    "round {round}: the loser did not name a winner whole: {msg}; winners {winners:?}"
                );
            }
        }
    }

    #[test]
    fn a_republished_holder_names_the_new_run() {
        let d = tempfile::tempdir().unwrap();
        let held = acquire(d.path(), "rollout", &RunId::new(), None).unwrap();
        let next = RunId::new();
        held.publish("recover", &next).unwrap();
        let h = holder(d.path()).unwrap();
        assert_eq!((h.job.as_str(), h.run_id.as_str()), ("recover", next.as_str()));
        drop(held);
        assert!(!holder_path(d.path()).exists(), "the holder must go with the lock");
    }

    #[test]
    fn wait_takes_the_lock_once_it_is_released() {
        let d = tempfile::tempdir().unwrap();
        let held = acquire(d.path(), "sync", &RunId::new(), None).unwrap();
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            drop(held);
        });
        let t = Instant::now();
        acquire(d.path(), "prune", &RunId::new(), Some(Duration::from_secs(10))).unwrap();
        assert!(t.elapsed() >= Duration::from_millis(400));
        releaser.join().unwrap();
        let _held = acquire(d.path(), "x", &RunId::new(), None);
        assert!(acquire(d.path(), "y", &RunId::new(), Some(Duration::from_millis(300))).is_err());
    }

    #[test]
    fn the_lock_of_a_killed_process_is_taken_over() {
        let d = tempfile::tempdir().unwrap();
        let path = lock_path(d.path());
        std::fs::write(&path, "").unwrap();
        // flock(1) -o holds the lock in its own process only; we SIGKILL that process.
        let mut child = std::process::Command::new("flock").arg("-o").arg(&path).args(["sleep", "30"]).spawn().unwrap();
        let t = Instant::now();
        while File::open(&path).unwrap().try_lock().is_ok() {
            assert!(t.elapsed() < Duration::from_secs(5), "flock never took the lock");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(acquire(d.path(), "a", &RunId::new(), None).is_err(), "the child should hold the lock");
        child.kill().unwrap();
        child.wait().unwrap();
        acquire(d.path(), "b", &RunId::new(), Some(Duration::from_secs(5))).unwrap();
    }
}
