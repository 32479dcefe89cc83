//! A tenant's SQLite file copied online through SQLite's backup API, from the host side, while
//! the tenant runs — by a child process confined to that tenant's data dir.
//!
//! SQLite opens its files by path: the database, and beside it the `-wal`, `-shm` and
//! `-journal` it may read and *write*. In a tree the tenant controls, any of those may be a
//! symlink to a host file or to another tenant's (who may share its uid), or a fifo or a
//! device. So the copy never runs in slipway's own process:
//! - the parent opens the data dir through the confined layer (`O_NOFOLLOW`, dir fds), checks
//!   that the declared name is a regular file beneath it with no symlink on the way, and starts
//!   `/proc/self/exe` with [`CHILD_ARG`] (dispatched by the binary before any thread exists),
//!   the data dir as its stdin;
//! - the child, single-threaded, enters a mount namespace of its own (every mount private, so
//!   nothing propagates back), binds the data dir onto an empty dir of slipway's own with
//!   `nodev,nosuid,noexec`, `chroot`s into it, drops every supplementary group and takes the
//!   owner of the file (its own `lstat`, nothing followed) as uid and gid — staying root, but
//!   still inside the chroot, when the file is root's — and sets `PR_SET_NO_NEW_PRIVS`; from
//!   then on every path SQLite resolves, symlinks included, stays inside that tenant's data
//!   dir, and a device node there cannot be opened;
//! - it opens the file read-only, backs it up into an in-memory database (for a WAL database
//!   in one step: a reader never blocks a WAL writer; for a rollback-journal database in steps
//!   of [`STEP_PAGES`] pages, so writers wait at most one step, falling back to one step after
//!   [`MAX_RESTARTS`] restarts by writers), runs `PRAGMA integrity_check` on the copy and
//!   writes its bytes to stdout; its exit code says what failed, stderr why;
//! - the parent streams stdout into slipway's own file with its sha256, and accepts it only if
//!   the child exited 0, the copy is not empty and starts with SQLite's header. A copy that
//!   does not finish within [`COPY_TIMEOUT`] is killed and fails.
//!
//! Invariants: nothing here writes to the tenant's tree (the child opens the database
//! read-only; the `-shm` it shares with the app is written by SQLite as the file's owner);
//! the copy is held in memory by the child (the database's size).

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::adapters::confined::{self, Root};
use crate::error::{Error, Result};

/// The hidden first argument that makes the slipway binary the confined copier.
pub const CHILD_ARG: &str = "__sqlite-copy";
/// The copier's argument that makes it check a restored file with a query instead.
const CHECK_FLAG: &str = "--check";

/// Pages copied per backup step of a rollback-journal database.
pub const STEP_PAGES: i32 = 256;
/// Restarts (a writer committed between steps) before the rest is copied in one step.
pub const MAX_RESTARTS: u32 = 3;
/// How long a copy may take, all told.
pub const COPY_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// How long the child waits for a lock a writer holds (rollback-journal mode).
const BUSY_WAIT: Duration = Duration::from_secs(60);

/// The first 16 bytes of every SQLite database file.
const HEADER: &[u8; 16] = b"SQLite format 3\0";

/// The child's exit codes.
mod code {
    pub const USAGE: u8 = 64;
    pub const CONFINE: u8 = 70;
    pub const NOT_FILE: u8 = 71;
    pub const NOT_SQLITE: u8 = 72;
    pub const COPY: u8 = 73;
    pub const INTEGRITY: u8 = 74;
    pub const WRITE: u8 = 75;
    pub const CHECK: u8 = 76;
}

/// What a finished copy is.
#[derive(Debug, Clone)]
pub struct Copied {
    /// Hex sha256 of the copy's bytes.
    pub sha256: String,
    /// Its size.
    pub size: u64,
}

/// The version of SQLite this binary carries (the child's too: it is the same binary).
pub fn version() -> String {
    rusqlite::version().to_string()
}

/// Copy the SQLite file `rel` (validated: relative, plain names) of the data dir `data_dir`
/// into `out` (a new file of slipway's own), through a confined child ([module docs](self));
/// `mount_point` is an empty dir of slipway's own the child binds the data dir onto. The copy
/// gets the live file's owner, mode and mtime. Err says what failed; then `out` may be partly
/// written (the caller's temp dir goes).
pub async fn copy(data_dir: &Path, rel: &str, out: &Path, mount_point: &Path) -> Result<Copied> {
    let fail = |why: String| Error::Other(format!("SQLite file {}: {why}", data_dir.join(rel).display()));
    let (mut child, live) = start(data_dir, rel, mount_point, None)?;
    let Some(mut stdout) = child.stdout.take() else {
        return Err(fail("the confined copier has no output".into()));
    };
    let mut stderr = child.stderr.take();
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .await
        .map_err(|e| Error::io(out, e))?;
    let work = async {
        let mut err = Vec::new();
        let errs = async {
            if let Some(e) = stderr.as_mut() {
                let _ = e.take(64 * 1024).read_to_end(&mut err).await;
            }
        };
        let copy = async {
            let (mut hash, mut size, mut head) = (Sha256::new(), 0u64, Vec::with_capacity(16));
            let mut buf = vec![0u8; 256 * 1024];
            let streamed = loop {
                let n = match stdout.read(&mut buf).await {
                    Ok(0) => break Ok(()),
                    Ok(n) => n,
                    Err(e) => break Err(fail(format!("reading the copy: {e}"))),
                };
                if head.len() < 16 {
                    head.extend_from_slice(&buf[..n.min(16 - head.len())]);
                }
                hash.update(&buf[..n]);
                size += n as u64;
                if let Err(e) = file.write_all(&buf[..n]).await {
                    break Err(Error::io(out, e));
                }
            };
            // Not read any more (a full disk, say): the copier must not wait on its pipe.
            if streamed.is_err() {
                let _ = child.start_kill();
            }
            streamed.map(|()| (hex::encode(hash.finalize()), size, head))
        };
        let (copied, ()) = tokio::join!(copy, errs);
        let status = child.wait().await.map_err(|e| fail(format!("waiting for the confined copier: {e}")))?;
        Ok::<_, Error>((copied, status, err))
    };
    let (copied, status, err) = match tokio::time::timeout(COPY_TIMEOUT, work).await {
        Ok(r) => r?,
        Err(_) => {
            let _ = child.kill().await;
            return Err(fail(format!("the copy did not finish in {} s; killed", COPY_TIMEOUT.as_secs())));
        }
    };
    // Our side's failure first (the copier was killed for it), else the copier's.
    let (sha256, size, head) = copied?;
    if !status.success() {
        return Err(fail(failure(status, &err)));
    }
    if size == 0 || head.as_slice() != HEADER {
        return Err(fail(format!("the copy ({size} bytes) is not a SQLite database; not archived")));
    }
    file.flush().await.map_err(|e| Error::io(out, e))?;
    let file = file.into_std().await;
    file.sync_all().map_err(|e| Error::io(out, e))?;
    confined::set_fd_attrs(&file, &confined::Attrs::of(&live)).map_err(|e| Error::io(out, e))?;
    Ok(Copied { sha256, size })
}

/// Start the confined copier on the file `rel` of the dir `dir` (with `check`: the drill's
/// check of a restored file instead of a copy); returns it and the file's metadata as the
/// parent saw it.
fn start(
    dir: &Path,
    rel: &str,
    mount_point: &Path,
    check: Option<&str>,
) -> Result<(tokio::process::Child, std::fs::Metadata)> {
    let fail = |why: String| Error::Other(format!("SQLite file {}: {why}", dir.join(rel).display()));
    let root = Root::open(dir).map_err(|e| fail(format!("cannot open the data dir: {e}")))?;
    // The parent's own look, nothing followed: a symlink, fifo or device is refused here; one
    // swapped in after this is the chroot's to contain.
    let live = match root.metadata(rel.as_bytes()) {
        Ok(Some(m)) if m.is_file() => m,
        Ok(Some(m)) => {
            return Err(fail(format!("is not a regular file ({}); declare the database file itself", kind(&m))))
        }
        Ok(None) => return Err(fail("does not exist".into())),
        Err(e) => return Err(fail(format!("cannot be reached without following a symlink: {e}"))),
    };
    let mut cmd = tokio::process::Command::new("/proc/self/exe");
    cmd.arg(CHILD_ARG).arg(rel).arg(mount_point).env_clear();
    if let Some(q) = check {
        cmd.arg(CHECK_FLAG).arg(q);
    }
    // The tests hold the copier between its checks and SQLite's open, to swap names meanwhile.
    // (Its stderr then goes straight to slipway's, where the tests see the point reached.)
    #[cfg(feature = "test-crash")]
    let held = std::env::var("SLIPWAY_TEST_PAUSE_AT").ok();
    #[cfg(not(feature = "test-crash"))]
    let held: Option<String> = None;
    let stderr_to = if held.is_some() { Stdio::inherit() } else { Stdio::piped() };
    if let Some(v) = held {
        cmd.env("SLIPWAY_TEST_PAUSE_AT", v);
    }
    let child = cmd
        .stdin(Stdio::from(OwnedFd::from(root)))
        .stdout(Stdio::piped())
        .stderr(stderr_to)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(format!("cannot start the confined copier: {e}")))?;
    Ok((child, live))
}

/// What a failed copier's exit status and stderr say.
fn failure(status: std::process::ExitStatus, err: &[u8]) -> String {
    let said = String::from_utf8_lossy(err).trim().to_string();
    let what = match status.code().map(|c| c as u8) {
        Some(code::CONFINE) => "the copier could not confine itself to the data dir",
        Some(code::NOT_FILE) => "is not a regular file",
        Some(code::NOT_SQLITE) => "is not a SQLite database",
        Some(code::COPY) => "the online backup failed",
        Some(code::INTEGRITY) => "failed PRAGMA integrity_check",
        Some(code::WRITE) => "the copy could not be handed over",
        Some(code::CHECK) => "the check query failed",
        Some(_) => "the copier failed",
        None => "the copier was killed by a signal",
    };
    format!("{what} ({status}): {said}")
}

/// The longest answer of a check query kept.
const MAX_ANSWER: u64 = 64 * 1024;

/// A drill's check of the restored SQLite file `rel` of the scratch dir `dir`, by the same
/// confined copier (the restored tree is the tenant's bytes: as untrusted as its data dir):
/// `PRAGMA integrity_check` must say "ok", then `query` runs read-only; returns its first row,
/// columns joined by '|' ("" when it returns no row). Err says which failed.
pub async fn check(dir: &Path, rel: &str, mount_point: &Path, query: &str) -> Result<String> {
    let fail = |why: String| Error::Other(format!("SQLite file {}: {why}", dir.join(rel).display()));
    let (mut child, _) = start(dir, rel, mount_point, Some(query))?;
    let (Some(stdout), stderr) = (child.stdout.take(), child.stderr.take()) else {
        return Err(fail("the confined copier has no output".into()));
    };
    let work = async {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut limited = stdout.take(MAX_ANSWER);
        let read_out = limited.read_to_end(&mut out);
        let read_err = async {
            if let Some(e) = stderr {
                let _ = e.take(MAX_ANSWER).read_to_end(&mut err).await;
            }
        };
        let (r, ()) = tokio::join!(read_out, read_err);
        r.map_err(|e| fail(format!("reading the answer: {e}")))?;
        let status = child.wait().await.map_err(|e| fail(format!("waiting for the confined copier: {e}")))?;
        Ok::<_, Error>((out, err, status))
    };
    let (out, err, status) = match tokio::time::timeout(COPY_TIMEOUT, work).await {
        Ok(r) => r?,
        Err(_) => return Err(fail(format!("the check did not finish in {} s; killed", COPY_TIMEOUT.as_secs()))),
    };
    if !status.success() {
        return Err(fail(failure(status, &err)));
    }
    Ok(String::from_utf8_lossy(&out).trim_end().to_string())
}

/// What a non-regular entry is, for messages.
fn kind(m: &std::fs::Metadata) -> &'static str {
    let t = m.file_type();
    if t.is_symlink() {
        "a symlink"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a fifo"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a file"
    }
}

/// An error of the child: its exit code and what to say on stderr.
struct Fail(u8, String);

fn confine_err(what: &str) -> impl FnOnce(rustix::io::Errno) -> Fail + '_ {
    move |e| Fail(code::CONFINE, format!("{what}: {e}"))
}

/// The confined copier: the binary's entry point for [`CHILD_ARG`] (`args` are the ones after
/// it: the file's relative name and the mount point). Runs before any other thread exists.
/// Returns the exit code; the copy goes to stdout, the reason of a failure to stderr.
pub fn child_main(args: &[OsString]) -> u8 {
    let (rel, mount_point, query) = match args {
        [rel, mp] => (rel.to_string_lossy().into_owned(), PathBuf::from(mp), None),
        [rel, mp, flag, q] if flag == CHECK_FLAG => {
            (rel.to_string_lossy().into_owned(), PathBuf::from(mp), Some(q.to_string_lossy().into_owned()))
        }
        _ => {
            return report(Fail(
                code::USAGE,
                "usage: slipway __sqlite-copy <file> <mount point> [--check <query>]".into(),
            ))
        }
    };
    let done = confine(&mount_point).and_then(|()| match &query {
        None => copy_out(&rel),
        Some(q) => check_out(&rel, q),
    });
    match done {
        Ok(()) => 0,
        Err(f) => report(f),
    }
}

fn report(f: Fail) -> u8 {
    let _ = writeln!(io::stderr(), "{}", f.1);
    f.0
}

/// Enter the data dir (stdin) as the root of a private mount namespace, `nodev,nosuid,noexec`.
fn confine(mount_point: &Path) -> std::result::Result<(), Fail> {
    use rustix::mount::{MountFlags, MountPropagationFlags};
    // The cwd follows into the new namespace (its copy of the mount): the bind's source.
    rustix::process::fchdir(io::stdin()).map_err(confine_err("entering the data dir"))?;
    // SAFETY: this process is single-threaded (the binary dispatches here before starting any
    // thread), and only the mount namespace is unshared, never the fd table.
    #[allow(unsafe_code)]
    let unshared = unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS) };
    unshared.map_err(confine_err("a private mount namespace"))?;
    rustix::mount::mount_change("/", MountPropagationFlags::PRIVATE | MountPropagationFlags::REC)
        .map_err(confine_err("making every mount private"))?;
    rustix::mount::mount_bind(".", mount_point).map_err(confine_err("binding the data dir"))?;
    let flags = MountFlags::BIND | MountFlags::NODEV | MountFlags::NOSUID | MountFlags::NOEXEC;
    rustix::mount::mount_remount(mount_point, flags, "").map_err(confine_err("remounting nodev,nosuid,noexec"))?;
    rustix::process::chdir(mount_point).map_err(confine_err("entering the bound data dir"))?;
    rustix::process::chroot(".").map_err(confine_err("chroot"))?;
    rustix::process::chdir("/").map_err(confine_err("chdir /"))?;
    // Stdin is the data dir as the old namespace sees it: an fd out of the chroot. Replaced by
    // the new root, so no fd outside it is left.
    let new_root =
        rustix::fs::open("/", rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY, rustix::fs::Mode::empty())
            .map_err(confine_err("opening the new root"))?;
    rustix::stdio::dup2_stdin(&new_root).map_err(confine_err("replacing stdin"))?;
    Ok(())
}

/// Take the owner of `/<rel>` (inside the chroot, nothing followed), check it and its side
/// files, back it up into memory, check the copy, write it to stdout.
fn copy_out(rel: &str) -> std::result::Result<(), Fail> {
    let path = become_owner(rel)?;
    // Between the last check and SQLite's own open by path: what a tenant's swap can race.
    test_hold("sqlite-checked");
    let copy = backup(&path).map_err(|e| Fail(code::COPY, format!("{rel}: {e}")))?;
    integrity(&copy, rel)?;
    let bytes = copy.serialize(rusqlite::MAIN_DB).map_err(|e| Fail(code::WRITE, format!("{rel}: serialize: {e}")))?;
    let mut out = io::stdout().lock();
    out.write_all(&bytes).and_then(|()| out.flush()).map_err(|e| Fail(code::WRITE, format!("{rel}: {e}")))?;
    Ok(())
}

/// `PRAGMA integrity_check` of `db` must say "ok".
fn integrity(db: &rusqlite::Connection, rel: &str) -> std::result::Result<(), Fail> {
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(|e| Fail(code::INTEGRITY, format!("{rel}: integrity_check: {e}")))?;
    if check != "ok" {
        return Err(Fail(code::INTEGRITY, format!("{rel}: integrity_check says: {check}")));
    }
    Ok(())
}

/// A drill's check of the restored `/<rel>`: integrity, then `query` read-only; its first row
/// to stdout, columns joined by '|'.
fn check_out(rel: &str, query: &str) -> std::result::Result<(), Fail> {
    use rusqlite::OpenFlags;
    let path = become_owner(rel)?;
    let db = rusqlite::Connection::open_with_flags(
        &path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| Fail(code::COPY, format!("{rel}: {e}")))?;
    let q = |e: rusqlite::Error| Fail(code::CHECK, format!("{rel}: {query:?}: {e}"));
    db.pragma_update(None, "temp_store", "memory").map_err(q)?;
    integrity(&db, rel)?;
    let mut stmt = db.prepare(query).map_err(q)?;
    let n = stmt.column_count();
    let mut rows = stmt.query([]).map_err(q)?;
    let mut answer = Vec::new();
    if let Some(row) = rows.next().map_err(q)? {
        for i in 0..n {
            use rusqlite::types::ValueRef;
            answer.push(match row.get_ref(i).map_err(q)? {
                ValueRef::Null => "NULL".to_string(),
                ValueRef::Integer(v) => v.to_string(),
                ValueRef::Real(v) => v.to_string(),
                ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
                ValueRef::Blob(b) => format!("<{} bytes>", b.len()),
            });
        }
    }
    let mut out = io::stdout().lock();
    writeln!(out, "{}", answer.join("|")).map_err(|e| Fail(code::WRITE, format!("{rel}: {e}")))
}

/// Check `/<rel>` (inside the chroot, nothing followed) and its side files, become its owner
/// and check its header; returns its path for SQLite.
fn become_owner(rel: &str) -> std::result::Result<String, Fail> {
    let path = format!("/{rel}");
    let meta = std::fs::symlink_metadata(&path).map_err(|e| Fail(code::NOT_FILE, format!("{rel}: {e}")))?;
    if !meta.is_file() {
        return Err(Fail(code::NOT_FILE, format!("{rel} is {}, not a regular file", kind(&meta))));
    }
    // A side file SQLite would open that is not a regular file: refused before SQLite opens it.
    for side in ["-wal", "-shm", "-journal"] {
        let p = format!("{path}{side}");
        if let Ok(m) = std::fs::symlink_metadata(&p) {
            if !m.is_file() {
                return Err(Fail(code::NOT_FILE, format!("{rel}{side} is {}, not a regular file", kind(&m))));
            }
        }
    }
    let (uid, gid) = (meta.uid(), meta.gid());
    rustix::thread::set_thread_groups(&[]).map_err(confine_err("dropping the supplementary groups"))?;
    if uid != 0 || gid != 0 {
        let (u, g) = (rustix::process::Uid::from_raw(uid), rustix::process::Gid::from_raw(gid));
        rustix::thread::set_thread_res_gid(g, g, g).map_err(confine_err("setgid to the file's group"))?;
        rustix::thread::set_thread_res_uid(u, u, u).map_err(confine_err("setuid to the file's owner"))?;
    }
    rustix::thread::set_no_new_privs(true).map_err(confine_err("PR_SET_NO_NEW_PRIVS"))?;
    // The header, read without blocking (a fifo swapped in now never holds the copier).
    let mut head = [0u8; 16];
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(&path)
        .and_then(|mut f| {
            if !f.metadata()?.is_file() {
                return Err(io::Error::other("not a regular file"));
            }
            f.read_exact(&mut head)
        });
    match opened {
        Ok(()) if &head == HEADER => {}
        Ok(()) => return Err(Fail(code::NOT_SQLITE, format!("{rel} does not start with SQLite's header"))),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            return Err(Fail(code::NOT_SQLITE, format!("{rel} is shorter than SQLite's header")))
        }
        Err(e) => return Err(Fail(code::NOT_FILE, format!("{rel}: {e}"))),
    }
    Ok(path)
}

/// Tests only (feature `test-crash`): with `SLIPWAY_TEST_PAUSE_AT=<point>:<ms>`, say the point
/// is reached and sleep, as `context::test_pause` does for the jobs (an adapter uses no job
/// module, so the copier has its own).
fn test_hold(point: &str) {
    #[cfg(feature = "test-crash")]
    if let Ok(v) = std::env::var("SLIPWAY_TEST_PAUSE_AT") {
        if let Some(ms) = v.strip_prefix(point).and_then(|r| r.strip_prefix(':')).and_then(|m| m.parse().ok()) {
            let _ = writeln!(io::stderr(), "slipway test point reached: {point}");
            std::thread::sleep(Duration::from_millis(ms));
        }
    }
    let _ = point;
}

/// The online backup of `path` into an in-memory database.
fn backup(path: &str) -> rusqlite::Result<rusqlite::Connection> {
    use rusqlite::backup::StepResult;
    use rusqlite::OpenFlags;
    let from = rusqlite::Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    from.busy_timeout(BUSY_WAIT)?;
    // Temp files (a large sort of integrity_check) would go into the chroot: the tenant's tree.
    from.pragma_update(None, "temp_store", "memory")?;
    let wal = from.query_row("PRAGMA journal_mode", [], |r| r.get::<_, String>(0))?.eq_ignore_ascii_case("wal");
    let mut to = rusqlite::Connection::open_in_memory()?;
    to.pragma_update(None, "temp_store", "memory")?;
    {
        let b = rusqlite::backup::Backup::new(&from, &mut to)?;
        let mut pages = if wal { -1 } else { STEP_PAGES };
        let (mut restarts, mut left) = (0, i32::MAX);
        let deadline = Instant::now() + BUSY_WAIT;
        loop {
            match b.step(pages)? {
                StepResult::Done => break,
                StepResult::More => {
                    let now = b.progress().remaining;
                    if now > left {
                        restarts += 1;
                        if restarts >= MAX_RESTARTS {
                            pages = -1;
                        }
                    }
                    left = now;
                    std::thread::sleep(Duration::from_millis(2));
                }
                _ if Instant::now() > deadline => {
                    return Err(rusqlite::Error::SqliteFailure(
                        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                        Some(format!("the database stayed locked for {} s", BUSY_WAIT.as_secs())),
                    ))
                }
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
    Ok(to)
}
