//! The host lock: one slipway job at a time per host, an exclusive `flock` on
//! `<state_dir>/slipway.lock`. The holder writes who it is (job, run id, pid, since) into the
//! file so a second job can say who holds it. The kernel drops the lock when the holding
//! process dies, however it dies, so a killed job never blocks anyone.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::types::RunId;

/// Who holds the lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockHolder {
    /// Job name.
    pub job: String,
    /// Run id.
    pub run_id: String,
    /// Process id.
    pub pid: u32,
    /// Since when (RFC 3339).
    pub since: String,
}

/// A held host lock; released when dropped (or when the process exits).
#[derive(Debug)]
pub struct HostLock {
    file: File,
    path: PathBuf,
}

/// The lock file of a state dir.
pub fn lock_path(state_dir: &Path) -> PathBuf {
    state_dir.join("slipway.lock")
}

/// Who holds the lock now, if anyone does.
pub fn holder(state_dir: &Path) -> Option<LockHolder> {
    let path = lock_path(state_dir);
    let file = File::open(&path).ok()?;
    match file.try_lock() {
        // Nobody holds it (we took it for an instant; dropping the file releases it).
        Ok(()) => None,
        Err(_) => read_holder(&path),
    }
}

fn read_holder(path: &Path) -> Option<LockHolder> {
    let mut s = String::new();
    File::open(path).ok()?.read_to_string(&mut s).ok()?;
    serde_json::from_str(&s).ok()
}

fn busy_message(path: &Path) -> String {
    match read_holder(path) {
        Some(h) => format!(
            "another slipway job holds the host lock: job {}, run {}, pid {}, since {}; try again later or pass --wait",
            h.job, h.run_id, h.pid, h.since
        ),
        None => format!("another slipway job holds the host lock {}; try again later or pass --wait", path.display()),
    }
}

/// Take the host lock for `job`. With `wait` None, a held lock is an immediate
/// [`Error::LockBusy`]; with `Some(d)`, wait up to `d` (`Duration::MAX`: forever).
pub fn acquire(state_dir: &Path, job: &str, run_id: &RunId, wait: Option<Duration>) -> Result<HostLock> {
    crate::fsutil::create_private_dir(state_dir).map_err(|e| Error::io(state_dir, e))?;
    let path = lock_path(state_dir);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    let deadline = wait.map(|w| Instant::now().checked_add(w));
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(TryLockError::WouldBlock) => {
                let expired = match deadline {
                    None => true,
                    Some(None) => false,
                    Some(Some(d)) => Instant::now() >= d,
                };
                if expired {
                    return Err(Error::LockBusy(busy_message(&path)));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(TryLockError::Error(e)) => return Err(Error::io(&path, e)),
        }
    }
    let me = LockHolder {
        job: job.to_string(),
        run_id: run_id.to_string(),
        pid: std::process::id(),
        since: jiff::Timestamp::now().to_string(),
    };
    let json = serde_json::to_vec(&me).map_err(|e| Error::Other(e.to_string()))?;
    (|| -> std::io::Result<()> {
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        file.write_all(&json)?;
        file.sync_data()
    })()
    .map_err(|e| Error::io(&path, e))?;
    Ok(HostLock { file, path })
}

impl HostLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for HostLock {
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
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
        assert!(matches!(e, Error::LockBusy(_)));
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
