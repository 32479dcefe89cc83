//! A tenant's Postgres, reached only through the engine's exec API inside its own container (no
//! TTY, so the bytes are the tool's own): the tools that run are the server's, never a host
//! `pg_dump` of another version. It dumps (`pg_dump -Fc` per database, `pg_dumpall
//! --globals-only`) streamed into a file while hashed, and replays (`pg_restore --clean
//! --if-exists --single-transaction --exit-on-error`, the dump fed on stdin).
//!
//! Invariants: a dump is good only when its exec finished (not still running when its stream
//! ended), exited 0, and wrote a non-empty file that starts as its format does; anything else
//! is an error naming the container, the database, the exit code and the tool's last words.
//! Names on the command lines were validated by `config::database` (none can be an option),
//! and the password goes in the exec's environment, never on a command line.

use std::path::Path;
use std::time::Duration;

use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use futures_util::StreamExt;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use crate::adapters::docker::Engine;
use crate::error::{Error, Result};

/// How much of a tool's stderr an error quotes (its end).
const STDERR_KEEP: usize = 2048;
/// The most stdout kept from a query (`psql`): a version, a list of names.
const QUERY_KEEP: usize = 1 << 20;
/// The custom format's first bytes.
const CUSTOM_MAGIC: &[u8] = b"PGDMP";

/// One tenant's Postgres: the container it runs in and the user slipway connects as.
pub struct Postgres<'a> {
    engine: &'a Engine,
    container: String,
    user: String,
    password: Option<String>,
}

/// A dump written to a file: its sha256 and size.
#[derive(Debug, Clone)]
pub struct Dumped {
    /// sha256 of the bytes written.
    pub sha256: String,
    /// Bytes written.
    pub size: u64,
}

/// How an exec ended.
struct Ended {
    code: Option<i64>,
    running: bool,
    /// The output stream broke before its end: what came through is not all there was.
    cut: bool,
    stderr: String,
}

impl Ended {
    /// Ok when the tool finished with exit 0; else why not, with its last words.
    fn check(&self, what: &str) -> std::result::Result<(), String> {
        let said = if self.stderr.trim().is_empty() { String::new() } else { format!(": {}", self.stderr.trim()) };
        if self.running {
            return Err(format!("{what}: its output ended while it still ran (the stream was cut){said}"));
        }
        if self.cut {
            return Err(format!("{what}: its output stream broke before its end{said}"));
        }
        match self.code {
            Some(0) => Ok(()),
            Some(c) if c > 128 => Err(format!("{what} was killed (exit code {c}, signal {}){said}", c - 128)),
            Some(c) => Err(format!("{what} failed with exit code {c}{said}")),
            None => Err(format!("{what}: the engine reported no exit code{said}")),
        }
    }
}

/// Where an exec's stdout goes.
enum Out {
    /// Kept (up to [`QUERY_KEEP`]).
    Keep(Vec<u8>),
    /// Sent to the dump writer.
    Send(tokio::sync::mpsc::Sender<bytes::Bytes>),
}

impl<'a> Postgres<'a> {
    /// The database in `container`, connected to as `user` (with `password`, when it has one).
    pub fn new(engine: &'a Engine, container: &str, user: &str, password: Option<String>) -> Postgres<'a> {
        Postgres { engine, container: container.to_string(), user: user.to_string(), password }
    }

    /// The container's name.
    pub fn container(&self) -> &str {
        &self.container
    }

    fn derr(&self, op: &str, e: bollard::errors::Error) -> Error {
        Error::Docker { op: op.to_string(), container: Some(self.container.clone()), source: Some(e) }
    }

    /// Run `cmd` in the container; stdout to `out`, stdin from `stdin`.
    async fn exec(&self, cmd: &[&str], stdin: Option<&Path>, mut out: Out) -> Result<(Ended, Vec<u8>)> {
        let docker = self.engine.client();
        let mut env = vec!["PGCONNECT_TIMEOUT=10".to_string()];
        if let Some(p) = &self.password {
            env.push(format!("PGPASSWORD={p}"));
        }
        let op = format!("running {} in the database container {}", cmd[0], self.container);
        let created = docker
            .create_exec(
                &self.container,
                CreateExecOptions {
                    attach_stdin: Some(stdin.is_some()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    tty: Some(false),
                    env: Some(env),
                    cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| self.derr(&op, e))?;
        let started = docker
            .start_exec(&created.id, Some(StartExecOptions { detach: false, tty: false, output_capacity: None }))
            .await
            .map_err(|e| self.derr(&op, e))?;
        let StartExecResults::Attached { mut output, mut input } = started else {
            return Err(Error::Docker { op: format!("{op}: the engine detached it"), container: None, source: None });
        };
        let feed = async {
            if let Some(path) = stdin {
                let mut f = tokio::fs::File::open(path).await.map_err(|e| Error::io(path, e))?;
                tokio::io::copy(&mut f, &mut input).await.map_err(|e| Error::io(path, e))?;
            }
            // End of input: the tool sees EOF on its stdin.
            let _ = input.shutdown().await;
            Ok::<_, Error>(())
        };
        let mut stderr = Vec::new();
        let read = async {
            let mut cut = None;
            while let Some(item) = output.next().await {
                match item {
                    Ok(bollard::container::LogOutput::StdOut { message }) => match &mut out {
                        Out::Keep(v) => {
                            let room = QUERY_KEEP.saturating_sub(v.len());
                            v.extend_from_slice(&message[..message.len().min(room)]);
                        }
                        Out::Send(tx) => {
                            // The writer gave up (its own error says why): stop reading.
                            if tx.send(message).await.is_err() {
                                break;
                            }
                        }
                    },
                    Ok(bollard::container::LogOutput::StdErr { message }) => {
                        stderr.extend_from_slice(&message);
                        if stderr.len() > 4 * STDERR_KEEP {
                            stderr.drain(..stderr.len() - STDERR_KEEP);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        cut = Some(e);
                        break;
                    }
                }
            }
            cut
        };
        let (fed, cut) = tokio::join!(feed, read);
        fed?;
        let kept = match out {
            Out::Keep(v) => v,
            Out::Send(tx) => {
                drop(tx);
                Vec::new()
            }
        };
        // The engine records the exit code a moment after the stream ends.
        let mut inspected = docker.inspect_exec(&created.id).await.map_err(|e| self.derr(&op, e))?;
        for _ in 0..50 {
            if inspected.running != Some(true) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            inspected = docker.inspect_exec(&created.id).await.map_err(|e| self.derr(&op, e))?;
        }
        let mut said = String::from_utf8_lossy(&stderr[stderr.len().saturating_sub(STDERR_KEEP)..]).into_owned();
        if let Some(e) = &cut {
            said.push_str(&format!(" (the output stream broke: {e})"));
        }
        let ended = Ended {
            code: inspected.exit_code,
            running: inspected.running == Some(true),
            cut: cut.is_some(),
            stderr: said,
        };
        Ok((ended, kept))
    }

    /// A query's single-column answer, one row per line.
    async fn query(&self, db: &str, sql: &str) -> Result<Vec<String>> {
        let (ended, out) = self
            .exec(&["psql", "-X", "-A", "-t", "-q", "-U", &self.user, "-d", db, "-c", sql], None, Out::Keep(Vec::new()))
            .await?;
        ended.check(&format!("psql in {}", self.container)).map_err(Error::Backup)?;
        Ok(String::from_utf8_lossy(&out).lines().map(str::to_string).filter(|l| !l.is_empty()).collect())
    }

    /// Wait until the server accepts connections, up to `budget`.
    pub async fn wait_ready(&self, budget: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + budget;
        loop {
            let r = self.query("postgres", "select 1").await;
            match r {
                Ok(_) => return Ok(()),
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(Error::Backup(format!(
                        "the database in {} did not accept connections within {} s: {e}",
                        self.container,
                        budget.as_secs()
                    )))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
            }
        }
    }

    /// The server's version and the dump tool's, both as they run in the container.
    pub async fn versions(&self) -> Result<(String, String)> {
        let server = self.query("postgres", "show server_version").await?.into_iter().next().unwrap_or_default();
        let (ended, out) = self.exec(&["pg_dump", "--version"], None, Out::Keep(Vec::new())).await?;
        ended.check(&format!("pg_dump --version in {}", self.container)).map_err(Error::Backup)?;
        Ok((server, String::from_utf8_lossy(&out).trim().to_string()))
    }

    /// Every database that accepts connections, templates excepted, by name.
    pub async fn databases(&self) -> Result<Vec<String>> {
        self.query("postgres", "select datname from pg_database where datallowconn and not datistemplate order by 1")
            .await
    }

    /// Whether database `db` exists.
    pub async fn exists(&self, db: &str) -> Result<bool> {
        let sql = format!("select 1 from pg_database where datname = '{}'", db.replace('\'', "''"));
        Ok(!self.query("postgres", &sql).await?.is_empty())
    }

    /// Create database `db` (for a replay into a server that lost it).
    pub async fn create(&self, db: &str) -> Result<()> {
        let sql = format!("create database \"{}\"", db.replace('"', "\"\""));
        self.query("postgres", &sql).await.map(|_| ())
    }

    /// `pg_dump -Fc` of `db` (or, with None, `pg_dumpall --globals-only`) into `dest` (created
    /// new, fsynced), hashed as it is written. Err when the tool did not finish cleanly or the
    /// dump is empty or not in its format.
    pub async fn dump(&self, db: Option<&str>, dest: &Path) -> Result<Dumped> {
        let what = match db {
            Some(d) => format!("pg_dump of database \"{d}\" in {}", self.container),
            None => format!("pg_dumpall --globals-only in {}", self.container),
        };
        let cmd: Vec<&str> = match db {
            Some(d) => vec!["pg_dump", "-Fc", "-U", &self.user, "-d", d],
            None => vec!["pg_dumpall", "--globals-only", "-U", &self.user],
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(64);
        let path = dest.to_path_buf();
        let writer = crate::blocking::run("writing a database dump", move || -> Result<(Dumped, Vec<u8>)> {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| Error::io(&path, e))?;
            let (mut h, mut size, mut head) = (Sha256::new(), 0u64, Vec::new());
            while let Some(chunk) = rx.blocking_recv() {
                if head.len() < CUSTOM_MAGIC.len() {
                    head.extend_from_slice(&chunk[..chunk.len().min(CUSTOM_MAGIC.len() - head.len())]);
                }
                h.update(&chunk);
                size += chunk.len() as u64;
                f.write_all(&chunk).map_err(|e| Error::io(&path, e))?;
            }
            f.sync_all().map_err(|e| Error::io(&path, e))?;
            Ok((Dumped { sha256: hex::encode(h.finalize()), size }, head))
        });
        let (ran, written) = tokio::join!(self.exec(&cmd, None, Out::Send(tx)), writer);
        let (ended, _) = ran?;
        let (dumped, head) = written??;
        ended.check(&what).map_err(Error::Backup)?;
        if dumped.size == 0 {
            return Err(Error::Backup(format!("{what}: the dump is empty")));
        }
        if db.is_some() && head != CUSTOM_MAGIC {
            return Err(Error::Backup(format!("{what}: the dump does not start as a custom-format dump does")));
        }
        Ok(dumped)
    }

    /// Replay the custom-format dump `src` into `db` in one transaction: all of it, or (on any
    /// error) nothing. The database is created first if the server lacks it.
    pub async fn replay(&self, db: &str, src: &Path) -> Result<()> {
        if !self.exists(db).await? {
            self.create(db).await?;
        }
        let cmd = [
            "pg_restore",
            "--clean",
            "--if-exists",
            "--single-transaction",
            "--exit-on-error",
            "-U",
            &self.user,
            "-d",
            db,
        ];
        let (ended, _) = self.exec(&cmd, Some(src), Out::Keep(Vec::new())).await?;
        ended.check(&format!("pg_restore of database \"{db}\" in {}", self.container)).map_err(Error::Backup)
    }
}

/// A database name as an SQL identifier, quoted.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A value as an SQL string literal.
fn literal(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

impl Postgres<'_> {
    /// Replay the custom-format dump `src` so that database `db` becomes exactly what the dump
    /// holds, nothing the server had since left in it: the dump is replayed in one transaction
    /// into the new database `scratch` (made like `db`: owner, encoding, collation), and only
    /// once that committed are the two swapped by two renames in one transaction: `db` becomes
    /// `replaced` (kept, never dropped here) and `scratch` becomes `db`. Run again after a
    /// crash it does nothing more once `replaced` exists (the swap committed), and otherwise
    /// starts over from a fresh `scratch` (slipway's own name). Err leaves `db` as it was.
    pub async fn replay_swapped(&self, db: &str, src: &Path, scratch: &str, replaced: &str) -> Result<()> {
        // The replayed database carries this comment from before the swap: a `replaced` that
        // exists while `db` lacks it was not made by this swap, and nothing is assumed done.
        let marker = format!("slipway: replayed into {scratch}, swapped in for {db} (kept as {replaced})");
        if self.exists(replaced).await? {
            let sql = format!(
                "select shobj_description(oid, 'pg_database') from pg_database where datname = {}",
                literal(db)
            );
            if self.query("postgres", &sql).await?.first() == Some(&marker) {
                return Ok(());
            }
            return Err(Error::Backup(format!(
                "a database named {replaced} exists already in {} and {db} is not the one an earlier replay swapped in; \
                 nothing was replayed: rename or drop {replaced} once it is known what it holds",
                self.container
            )));
        }
        if self.exists(scratch).await? {
            self.query("postgres", &format!("drop database {}", ident(scratch))).await?;
        }
        let like = format!(
            "select pg_get_userbyid(datdba) || '|' || pg_encoding_to_char(encoding) || '|' || datcollate || '|' || \
             datctype from pg_database where datname = {}",
            literal(db)
        );
        let create = match self
            .query("postgres", &like)
            .await?
            .first()
            .map(|r| r.split('|').map(str::to_string).collect::<Vec<_>>())
        {
            Some(v) if v.len() == 4 => format!(
                "create database {} template template0 owner {} encoding {} lc_collate {} lc_ctype {}",
                ident(scratch),
                ident(&v[0]),
                literal(&v[1]),
                literal(&v[2]),
                literal(&v[3])
            ),
            _ => format!("create database {} template template0", ident(scratch)),
        };
        self.query("postgres", &create).await?;
        let cmd = ["pg_restore", "--single-transaction", "--exit-on-error", "-U", &self.user, "-d", scratch];
        let (ended, _) = self.exec(&cmd, Some(src), Out::Keep(Vec::new())).await?;
        ended
            .check(&format!("pg_restore of database \"{db}\" (into {scratch}) in {}", self.container))
            .map_err(Error::Backup)?;
        self.query("postgres", &format!("comment on database {} is {}", ident(scratch), literal(&marker))).await?;
        let swap = if self.exists(db).await? {
            format!(
                "alter database {} rename to {}; alter database {} rename to {}",
                ident(db),
                ident(replaced),
                ident(scratch),
                ident(db)
            )
        } else {
            format!("alter database {} rename to {}", ident(scratch), ident(db))
        };
        self.query("postgres", &swap).await.map(|_| ())
    }
}

impl Postgres<'_> {
    /// Run the plain SQL script `src` (a `pg_dumpall --globals-only` dump) in `db`, on a
    /// drill's scratch server: statements that fail (a role the image's initdb made already)
    /// are skipped, as psql does without `ON_ERROR_STOP`; Err only when psql itself failed.
    pub async fn run_script(&self, db: &str, src: &Path) -> Result<()> {
        let cmd = ["psql", "-X", "-q", "-U", &self.user, "-d", db];
        let (ended, _) = self.exec(&cmd, Some(src), Out::Keep(Vec::new())).await?;
        ended.check(&format!("psql (the globals) in {}", self.container)).map_err(Error::Backup)
    }

    /// Replay the plain SQL script `src` (a `pg_dumpall --globals-only` dump) into the server,
    /// for a restore: a `CREATE ROLE` of a role the server has (and a `CREATE TABLESPACE` of a
    /// tablespace it has) is left out — the `ALTER ROLE` lines after it still apply — and any
    /// other statement that fails stops psql (`ON_ERROR_STOP`): Err with its words. Returns how
    /// many statements were left out.
    pub async fn replay_globals(&self, src: &Path) -> Result<usize> {
        let roles = self.query("postgres", "select rolname from pg_roles").await?;
        let spaces = self.query("postgres", "select spcname from pg_tablespace").await?;
        let (src, tmp) = (src.to_path_buf(), std::env::temp_dir());
        let (file, skipped) = crate::blocking::run("reading the globals dump", move || -> Result<_> {
            let text = std::fs::read_to_string(&src).map_err(|e| Error::io(&src, e))?;
            let (script, skipped) = without_existing(&text, &roles, &spaces);
            // The script holds the roles' password hashes: a private temp file (0600), gone on drop.
            let mut f = tempfile::Builder::new()
                .prefix(".slipway-globals-")
                .tempfile_in(&tmp)
                .map_err(|e| Error::io(&tmp, e))?;
            std::io::Write::write_all(&mut f, script.as_bytes()).map_err(|e| Error::io(f.path(), e))?;
            Ok((f, skipped))
        })
        .await??;
        let cmd = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-U", &self.user, "-d", "postgres"];
        let (ended, _) = self.exec(&cmd, Some(file.path()), Out::Keep(Vec::new())).await?;
        ended.check(&format!("psql (the globals) in {}", self.container)).map_err(Error::Backup)?;
        Ok(skipped)
    }

    /// The answer of `sql` in `db` (`psql -tA`), its lines joined by a space; Err (with psql's
    /// last words) when the query fails.
    pub async fn answer(&self, db: &str, sql: &str) -> Result<String> {
        Ok(self.query(db, sql).await?.join(" "))
    }
}

/// A `pg_dumpall --globals-only` script without the lines that create a role in `roles` or a
/// tablespace in `spaces` (what the server has), and how many it left out. Only lines are taken
/// out, never written: a line is left out only when it is exactly `CREATE ROLE <name>;` or
/// starts `CREATE TABLESPACE <name> ` with a name (plain, or double-quoted as pg_dumpall quotes
/// it) that is there; anything else stays and runs.
fn without_existing(script: &str, roles: &[String], spaces: &[String]) -> (String, usize) {
    let mut out = String::with_capacity(script.len());
    let mut skipped = 0;
    for line in script.split_inclusive('\n') {
        let l = line.trim_end_matches(['\n', '\r']);
        let exists = if let Some(rest) = l.strip_prefix("CREATE ROLE ") {
            matches!(split_ident(rest), Some((name, ";")) if roles.contains(&name))
        } else if let Some(rest) = l.strip_prefix("CREATE TABLESPACE ") {
            matches!(split_ident(rest), Some((name, after)) if after.starts_with(' ') && spaces.contains(&name))
        } else {
            false
        };
        if exists {
            skipped += 1;
        } else {
            out.push_str(line);
        }
    }
    (out, skipped)
}

/// The SQL identifier `s` starts with (plain: lowercase letters, digits, `_`, `$`, not
/// starting with a digit; or double-quoted with `""` for a quote) and what follows it.
fn split_ident(s: &str) -> Option<(String, &str)> {
    if let Some(quoted) = s.strip_prefix('"') {
        let mut name = String::new();
        let mut chars = quoted.char_indices();
        while let Some((i, c)) = chars.next() {
            if c != '"' {
                name.push(c);
                continue;
            }
            match quoted[i + 1..].chars().next() {
                Some('"') => {
                    name.push('"');
                    chars.next();
                }
                _ => return (!name.is_empty()).then(|| (name, &quoted[i + 1..])),
            }
        }
        return None;
    }
    let end =
        s.find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$')).unwrap_or(s.len());
    let name = &s[..end];
    (!name.is_empty() && !name.starts_with(|c: char| c.is_ascii_digit())).then(|| (name.to_string(), &s[end..]))
}

/// Read the password file of `[app.database]`: its first line.
pub fn read_password(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    Ok(text.lines().next().unwrap_or_default().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ended(code: Option<i64>, running: bool, cut: bool) -> Ended {
        Ended { code, running, cut, stderr: "last words".into() }
    }

    #[test]
    fn the_globals_replay_leaves_out_only_the_creation_of_what_the_server_has() {
        let roles: Vec<String> = ["postgres", "app", "we\"ird one"].map(String::from).to_vec();
        let spaces: Vec<String> = vec!["pg_default".into(), "fast".into()];
        let script = "SET client_encoding = 'UTF8';\n\
            CREATE ROLE postgres;\n\
            ALTER ROLE postgres WITH SUPERUSER;\n\
            CREATE ROLE reporter;\n\
            ALTER ROLE reporter WITH LOGIN;\n\
            CREATE ROLE \"we\"\"ird one\";\n\
            CREATE ROLE \"app\";\n\
            CREATE ROLE app; DROP ROLE reporter;\n\
            CREATE ROLE \"app\"\"; DROP ROLE x; --\";\n\
            create role app;\n\
            CREATE TABLESPACE fast OWNER postgres LOCATION '/ts';\n\
            CREATE TABLESPACE slow OWNER postgres LOCATION '/ts2';\n\
            GRANT app TO reporter;\n";
        let (out, skipped) = without_existing(script, &roles, &spaces);
        assert_eq!(skipped, 4, "{out}");
        let want = "SET client_encoding = 'UTF8';\n\
            ALTER ROLE postgres WITH SUPERUSER;\n\
            CREATE ROLE reporter;\n\
            ALTER ROLE reporter WITH LOGIN;\n\
            CREATE ROLE app; DROP ROLE reporter;\n\
            CREATE ROLE \"app\"\"; DROP ROLE x; --\";\n\
            create role app;\n\
            CREATE TABLESPACE slow OWNER postgres LOCATION '/ts2';\n\
            GRANT app TO reporter;\n";
        assert_eq!(out, want);
        // Nothing there: the script runs as it is.
        assert_eq!(without_existing(script, &[], &[]), (script.to_string(), 0));
        assert_eq!(split_ident("\"a\"\"b\" rest"), Some(("a\"b".to_string(), " rest")));
        assert_eq!(split_ident("\"unterminated"), None);
        assert_eq!(split_ident("9lives;"), None);
    }

    #[test]
    fn only_a_finished_uncut_exit_0_is_a_good_end() {
        assert!(ended(Some(0), false, false).check("pg_dump").is_ok());
        for (e, want) in [
            (ended(Some(1), false, false), "exit code 1: last words"),
            (ended(Some(137), false, false), "killed (exit code 137, signal 9)"),
            (ended(Some(0), true, false), "still ran"),
            (ended(Some(0), false, true), "broke before its end"),
            (ended(None, false, false), "no exit code"),
        ] {
            let why = e.check("pg_dump").unwrap_err();
            assert!(why.starts_with("pg_dump") && why.contains(want), "{why}");
        }
    }
}
