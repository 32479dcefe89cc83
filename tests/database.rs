//! Database-consistent backups (#27), against a real Postgres: the `pg` fixture (Debian's
//! postgresql-15 in a busybox rootfs) in a container of its own per tenant, and the `pgapp`
//! fixture as the tenant, writing ledger rows continuously (each transaction one row and one
//! bump of `tally.rows`, so a consistent database has as many rows as its tally says).

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::reports::Runs;
use crate::support::{sh, tree_hash, Env, Sandbox, Webhook};

/// A tenant's database container, removed (with its volumes) when dropped. It carries its own
/// label, not the sandbox's, so the app never takes it for a tenant.
struct Pg {
    name: String,
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", "-v", &self.name]).output();
    }
}

impl Pg {
    /// Start `<id>-pg-<tenant>` on the sandbox's network (alias `pg-<tenant>`) with a database
    /// `app`, and wait until it answers.
    fn start(s: &Sandbox, tenant: &str) -> Pg {
        Pg::start_from(s, tenant, Env::get().fixture("pg"))
    }

    /// [`Pg::start`] of `image`.
    fn start_from(s: &Sandbox, tenant: &str, image: &str) -> Pg {
        Pg::start_with(s, tenant, image, &[])
    }

    /// [`Pg::start_from`] with more `docker run` arguments.
    fn start_with(s: &Sandbox, tenant: &str, image: &str, extra: &[&str]) -> Pg {
        let name = format!("{}-pg-{tenant}", s.id());
        let pg = Pg { name: name.clone() };
        sh(Command::new("docker")
            .args([
                "run",
                "-d",
                "--name",
                &name,
                "--network",
                s.network(),
                "--network-alias",
                &format!("pg-{tenant}"),
                "--label",
                &format!("slipway.test.db={}", s.id()),
            ])
            .args(extra)
            .arg(image));
        let deadline = Instant::now() + Duration::from_secs(60);
        while pg.try_sql("postgres", "select 1").is_none() {
            assert!(Instant::now() < deadline, "the pg fixture did not come up");
            std::thread::sleep(Duration::from_millis(200));
        }
        pg.sql("postgres", "create database app");
        pg
    }

    fn try_sql(&self, db: &str, sql: &str) -> Option<String> {
        let o = Command::new("docker")
            .args(["exec", &self.name, "psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-U", "postgres"])
            .args(["-d", db, "-c", sql])
            .output()
            .ok()?;
        o.status.success().then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
    }

    /// Run `sql` as postgres in `db`; its output, trimmed.
    fn sql(&self, db: &str, sql: &str) -> String {
        self.try_sql(db, sql).unwrap_or_else(|| panic!("psql failed in {db}: {sql}"))
    }

    /// The ledger's row count once it has at least `n` rows.
    fn rows_at_least(&self, n: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let c: u64 = self.try_sql("app", "select count(*) from ledger").and_then(|c| c.parse().ok()).unwrap_or(0);
            if c >= n {
                return c;
            }
            assert!(Instant::now() < deadline, "the writer did not reach {n} rows (at {c})");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the ledger is consistent in one statement (one snapshot of the server): as many
    /// rows as the tally, numbered 1..=count with no gap, every payload the one of its n.
    fn consistent(&self) -> bool {
        self.sql(
            "app",
            "select (select count(*) from ledger) = (select rows from tally where id = 1) \
               and (select count(*) from ledger) = (select coalesce(max(n), 0) from ledger) \
               and not exists (select 1 from ledger where payload <> repeat(md5(n::text), 8))",
        ) == "t"
    }
}

/// The fleet app for the `pgapp` tenants of `s`, with `[app.database]` naming their Pg.
fn db_fleet(s: &Sandbox, image: &str, user: &str) -> String {
    db_fleet_with(s, image, user, "")
}

/// [`db_fleet`] with `extra` keys of `[app]` (before its `[app.database]`).
fn db_fleet_with(s: &Sandbox, image: &str, user: &str, extra: &str) -> String {
    s.fleet_app(
        image,
        &format!(
            "{extra}[app.database]\nkind = \"postgres\"\ncontainer = \"{}-pg-{{tenant}}\"\ndatabases = [\"app\"]\nuser = \"{user}\"\n",
            s.id()
        ),
    )
}

/// A `pgapp` tenant writing into `pg-<tenant>`.
fn add_writer(s: &Sandbox, tenant: &str) -> (String, String) {
    let image = Env::get().fixture("pgapp").to_string();
    let name = s.add_tenant_with(tenant, &image, &["--env", &format!("PGHOST=pg-{tenant}")]);
    (name, image)
}

fn manifest_names_tenant(s: &Sandbox, day: &str, tenant: &str) -> bool {
    let p = s.backups().join("daily").join(day).join("MANIFEST.json");
    std::fs::read_to_string(p)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .is_some_and(|m| m["archives"].as_array().is_some_and(|a| a.iter().any(|e| e["tenant"] == tenant)))
}

fn today() -> String {
    sh(Command::new("date").args(["-u", "+%Y-%m-%d"])).trim().to_string()
}

#[test]
fn a_tenant_writing_rows_during_the_snapshot_restores_to_a_consistent_database_as_at_the_dump() {
    let s = Sandbox::new();
    let pg = Pg::start(&s, "t1");
    let (name, image) = add_writer(&s, "t1");
    s.write_data("t1", "uploads/a.txt", "a file of the tenant\n");
    // Hostile: files at the names slipway uses for dumps, inside the tenant's own tree. They are
    // the tenant's files, archived and restored as such, never taken for (or replayed as) a dump.
    s.write_data("t1", "t1.db/1.pgdump", "PGDMP not a dump: drop everything\n");
    s.write_data("t1", ".slipway-db/app.dump", "PGDMP fake\n");
    s.write_fleet(&db_fleet(&s, &image, "postgres"));
    let before = pg.rows_at_least(300);
    pg.sql("app", "create table marker (what text); insert into marker values ('before')");

    let out = s.slipway(&["snapshot", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let report = &out.json()["report"];
    let archive = &report["archives"][0];
    assert_eq!(archive["outcome"], "archived", "{archive}");
    let db = &archive["database"];
    assert_eq!(db["kind"], "postgres");
    assert!(db["server_version"].as_str().unwrap().starts_with("15."), "{db}");
    assert!(db["tool_version"].as_str().unwrap().contains("pg_dump (PostgreSQL) 15."), "{db}");
    let dumps = db["dumps"].as_array().unwrap();
    assert_eq!(dumps.len(), 2, "the globals and database app: {db}");
    assert_eq!(dumps[0]["database"], serde_json::Value::Null);
    assert_eq!(dumps[1]["database"], "app");
    // One manifest entry for the files and the dumps.
    let day = report["day"].as_str().unwrap();
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(s.backups().join("daily").join(day).join("MANIFEST.json")).unwrap(),
    )
    .unwrap();
    let entries: Vec<&serde_json::Value> =
        manifest["archives"].as_array().unwrap().iter().filter(|e| e["tenant"] == "t1").collect();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["database"]["dumps"], db["dumps"]);
    let files_at_snapshot = tree_hash(&s.data_dir("t1"));
    // verify re-hashes the dumps with the archive.
    let v = s.slipway(&["verify", "--json"]);
    assert_eq!(v.code, 0, "{} {}", v.stdout, v.stderr);

    // After the snapshot: more rows, a marker, a file; then the restore.
    let after = pg.rows_at_least(before + 200);
    pg.sql("app", "insert into marker values ('after')");
    s.write_data("t1", "uploads/late.txt", "written after the snapshot\n");
    let out = s.slipway(&["restore", "--tenant", "t1", "--day", day, "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert_eq!(out.json()["report"]["databases"], 1, "{}", out.stdout);
    // The database is as at the dump: the marker of before, not the one of after; every row
    // committed before the snapshot, none torn, the tally agreeing.
    assert_eq!(pg.sql("app", "select string_agg(what, ',') from marker"), "before");
    assert!(pg.consistent(), "the restored ledger is inconsistent");
    let restored: u64 = pg.sql("app", &format!("select count(*) from ledger where n <= {before}")).parse().unwrap();
    assert_eq!(restored, before, "every row committed before the snapshot is back");
    assert!(after > before);
    // The files too, hostile names included, byte for byte; the app runs and writes again.
    assert_eq!(tree_hash(&s.data_dir("t1")), files_at_snapshot);
    assert_eq!(s.inspect(&name)["State"]["Running"], true);
    let resumed = pg.sql("app", "select count(*) from ledger").parse::<u64>().unwrap();
    pg.rows_at_least(resumed + 50);
    assert!(pg.consistent());
}

#[test]
fn a_pg_dump_refused_a_table_fails_the_snapshot_naming_the_tenant_and_counts_nothing() {
    let s = Sandbox::new();
    let pg = Pg::start(&s, "t1");
    // The dump user owns the app's database but may not read one table in it.
    pg.sql("postgres", "create role dumper login; alter database app owner to dumper");
    pg.sql("app", "create table secret (x int); revoke all on secret from public");
    let (name, image) = add_writer(&s, "t1");
    s.write_fleet(&db_fleet(&s, &image, "dumper"));
    pg.rows_at_least(10);
    let hook = Webhook::listen("/hooks/backups");
    s.append_config(&format!("[notify]\nwebhook = \"{}\"\n", hook.url));
    let metrics = s.root().join("slipway.prom");

    let out = s.slipway(&["snapshot", "--json", "--metrics-file", metrics.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{} {}", out.stdout, out.stderr);
    // Loud where an operator looks: the webhook, the metrics file and status all say so.
    let body: serde_json::Value = serde_json::from_str(&hook.body()).unwrap();
    assert_eq!(
        (body["job"].as_str(), body["outcome"].as_str(), body["exit_code"].as_i64()),
        (Some("snapshot"), Some("failed"), Some(1)),
        "{body}"
    );
    assert!(body["text"].as_str().unwrap().contains("t1"), "{body}");
    let prom = std::fs::read_to_string(&metrics).unwrap();
    assert!(prom.contains("slipway_last_run_success{job=\"snapshot\"} 0"), "{prom}");
    assert!(!prom.contains("slipway_snapshot_last_success_timestamp_seconds{tenant=\"t1\"}"), "{prom}");
    let status = s.slipway(&["status"]);
    assert_eq!(status.code, 8, "{}", status.stdout);
    assert!(
        status.stdout.contains("(the last snapshot) ended failed") && status.stdout.contains("FAILED: t1"),
        "{}",
        status.stdout
    );
    let env = out.json();
    assert_eq!(env["outcome"], "failed");
    let archive = &env["report"]["archives"][0];
    assert_eq!(archive["outcome"], "failed");
    let detail = archive["detail"].as_str().unwrap();
    assert!(
        detail.contains("tenant t1") && detail.contains("permission denied") && detail.contains("exit code 1"),
        "{detail}"
    );
    // Nothing reported as good: no manifest entry, no dumps, no files archive in the record.
    let day = today();
    assert!(!manifest_names_tenant(&s, &day, "t1"));
    let tenants = s.backups().join("daily").join(&day).join("tenants");
    let left: Vec<_> =
        std::fs::read_dir(&tenants).map(|r| r.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "left in {}: {left:?}", tenants.display());
    // The app was never paused or stopped for it.
    assert_eq!(s.inspect(&name)["State"]["Running"], true);
}

#[test]
fn a_database_that_writes_inside_the_tenants_data_dir_is_refused_naming_the_path_and_nothing_is_taken() {
    let s = Sandbox::new();
    let spill = s.data_dir("t1").join("pg-spill");
    std::fs::create_dir_all(&spill).unwrap();
    let bind = format!("{}:/var/lib/pg-spill", spill.display());
    let pg = Pg::start_with(&s, "t1", Env::get().fixture("pg"), &["-v", &bind]);
    let (name, image) = add_writer(&s, "t1");
    s.write_fleet(&db_fleet(&s, &image, "postgres"));
    pg.rows_at_least(10);
    let out = s.slipway(&["snapshot", "--json"]);
    assert_eq!(out.code, 1, "{} {}", out.stdout, out.stderr);
    let detail = out.json()["report"]["archives"][0]["detail"].as_str().unwrap().to_string();
    assert!(
        detail.contains("tenant t1") && detail.contains("pg-spill") && detail.contains("inside the tenant's data dir"),
        "{detail}"
    );
    assert!(!manifest_names_tenant(&s, &today(), "t1"));
    assert_eq!(s.inspect(&name)["State"]["Running"], true);
    // A rollout is refused the same way before its switch: the prior container back, untouched.
    let id = s.inspect(&name)["Id"].clone();
    s.write_fleet(&db_fleet(&s, Env::get().fixture("pgmig"), "postgres"));
    let out = s.slipway(&["rollout", "--json"]);
    assert_eq!(out.code, 3, "{} {}", out.stdout, out.stderr);
    assert!(out.stdout.contains("inside the tenant's data dir"), "{}", out.stdout);
    assert_eq!(s.inspect(&name)["Id"], id);
    assert_eq!(s.inspect(&name)["State"]["Running"], true);
    assert!(pg.consistent());
}

/// A pg_dump that "succeeds" without a dump — exit 0 and no bytes, or exit 0 and bytes that are
/// no custom-format dump (a wrapper script, a broken build): the failure the backup tools'
/// trackers are full of, a dump that failed while the backup reported success.
#[test]
fn a_pg_dump_that_exits_0_with_an_empty_or_foreign_dump_fails_the_snapshot_and_counts_nothing() {
    for (case, body, words) in [
        ("empty", "exit 0", "the dump is empty"),
        ("foreign", "echo pg_dump finished; exit 0", "does not start as a custom-format dump does"),
    ] {
        let s = Sandbox::new();
        let pg = Pg::start(&s, "t1");
        let (name, image) = add_writer(&s, "t1");
        s.write_fleet(&db_fleet(&s, &image, "postgres"));
        pg.rows_at_least(10);
        // The wrapper answers `-V` as the real one did (pg_dumpall checks its sibling's version).
        let script = format!(
            "cd /usr/lib/postgresql/15/bin && v=\"$(./pg_dump -V)\" && mv pg_dump pg_dump.real && \
             printf '#!/bin/busybox sh\\ncase \"$1\" in --version|-V) echo \"%s\"; exit 0;; esac\\n{body}\\n' \
             \"$v\" > pg_dump && chmod 755 pg_dump"
        );
        sh(Command::new("docker").args(["exec", "-u", "0", &pg.name, "/bin/busybox", "sh", "-c", &script]));
        let out = s.slipway(&["snapshot", "--json"]);
        assert_eq!(out.code, 1, "{case}: {} {}", out.stdout, out.stderr);
        let detail = out.json()["report"]["archives"][0]["detail"].as_str().unwrap_or_default().to_string();
        assert!(detail.contains("tenant t1") && detail.contains(words), "{case}: {detail}");
        assert!(!manifest_names_tenant(&s, &today(), "t1"), "{case}: counted as a backup");
        let tenants = s.backups().join("daily").join(today()).join("tenants");
        let left: Vec<_> =
            std::fs::read_dir(&tenants).map(|r| r.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
        assert!(left.is_empty(), "{case}: left in {}: {left:?}", tenants.display());
        assert_eq!(s.inspect(&name)["State"]["Running"], true, "{case}");
        drop(pg);
    }
}

#[test]
fn a_pg_dump_killed_mid_dump_fails_the_snapshot_and_counts_nothing() {
    let s = Sandbox::new();
    let pg = Pg::start(&s, "t1");
    let (_name, image) = add_writer(&s, "t1");
    s.write_fleet(&db_fleet(&s, &image, "postgres"));
    pg.rows_at_least(10);
    // A session holding the ledger locked keeps pg_dump waiting for its lock: running, known.
    sh(Command::new("docker").args([
        "exec",
        "-d",
        &pg.name,
        "psql",
        "-U",
        "postgres",
        "-d",
        "app",
        "-c",
        "begin; lock table ledger in access exclusive mode; select pg_sleep(300);",
    ]));
    let child = s.spawn(&["snapshot", "--json"], &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while pg.sql("postgres", "select count(*) from pg_stat_activity where application_name = 'pg_dump'") == "0" {
        assert!(Instant::now() < deadline, "pg_dump never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    sh(Command::new("docker").args(["exec", &pg.name, "/bin/busybox", "killall", "-9", "pg_dump"]));
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout} {stderr}");
    let env: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let detail = env["report"]["archives"][0]["detail"].as_str().unwrap().to_string();
    assert!(detail.contains("tenant t1") && detail.contains("killed") && detail.contains("signal 9"), "{detail}");
    assert!(!manifest_names_tenant(&s, &today(), "t1"));
    let tenants = s.backups().join("daily").join(today()).join("tenants");
    let left: Vec<_> =
        std::fs::read_dir(&tenants).map(|r| r.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "left in {}: {left:?}", tenants.display());
}

#[test]
fn a_failed_replay_leaves_the_database_and_the_files_as_they_were_and_names_the_tenant() {
    let s = Sandbox::new();
    let pg = Pg::start(&s, "t1");
    let (name, image) = add_writer(&s, "t1");
    s.write_data("t1", "uploads/a.txt", "as at the snapshot\n");
    s.write_fleet(&db_fleet(&s, &image, "postgres"));
    pg.rows_at_least(50);
    let out = s.slipway(&["snapshot", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    // After it: a view on the ledger that the dump does not know, so `--clean` cannot drop the
    // table and the replay fails half-way.
    pg.sql("app", "create view ledger_view as select n from ledger");
    pg.sql("app", "create table marker (what text); insert into marker values ('after')");
    s.write_data("t1", "uploads/late.txt", "written after the snapshot\n");
    let files_before = tree_hash(&s.data_dir("t1"));

    let out = s.slipway(&["restore", "--tenant", "t1", "--latest", "--json"]);
    assert_eq!(out.code, 1, "{} {}", out.stdout, out.stderr);
    let detail = out.json()["report"]["detail"].as_str().unwrap().to_string();
    assert!(
        detail.contains("tenant t1") && detail.contains("replay failed") && detail.contains("as it was"),
        "{detail}"
    );
    // The database is as it was (one transaction), the files it had are back, the app runs.
    assert_eq!(pg.sql("app", "select string_agg(what, ',') from marker"), "after");
    assert_eq!(pg.sql("app", "select count(*) from pg_views where viewname = 'ledger_view'"), "1");
    assert_eq!(tree_hash(&s.data_dir("t1")), files_before);
    assert_eq!(s.inspect(&name)["State"]["Running"], true);
    assert!(pg.consistent());
    // A dump damaged on disk: verify names it, and a restore refuses before touching anything.
    let dump = std::fs::read_dir(s.backups().join("daily").join(today()).join("tenants").join("t1.db"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n == "1.pgdump"))
        .unwrap();
    let mut bytes = std::fs::read(&dump).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&dump, bytes).unwrap();
    let v = s.slipway(&["verify", "--json"]);
    assert_ne!(v.code, 0, "{}", v.stdout);
    assert!(v.stdout.contains("database dump"), "{}", v.stdout);
    let id = s.inspect(&name)["Id"].clone();
    let out = s.slipway(&["restore", "--tenant", "t1", "--latest", "--json"]);
    assert_ne!(out.code, 0, "{}", out.stdout);
    assert!(out.stdout.contains("tenant t1") && out.stdout.contains("nothing was touched"), "{}", out.stdout);
    assert_eq!(s.inspect(&name)["Id"], id);
    assert_eq!(s.inspect(&name)["State"]["Running"], true);
}

#[test]
fn a_snapshot_killed_at_the_dump_step_counts_nothing_and_the_next_one_is_whole() {
    let s = Sandbox::new();
    let pg = Pg::start(&s, "t1");
    let (_name, image) = add_writer(&s, "t1");
    s.write_fleet(&db_fleet(&s, &image, "postgres"));
    pg.rows_at_least(10);
    let out = s.slipway_env(&["snapshot"], &[("SLIPWAY_TEST_CRASH_AT", "snapshot-dumping")]);
    assert!(out.stderr.contains("slipway test point reached: snapshot-dumping"), "{}", out.stderr);
    assert_ne!(out.code, 0);
    assert!(!manifest_names_tenant(&s, &today(), "t1"), "a killed dump is no backup");
    // The next run takes both, whole, in one entry.
    let out = s.slipway(&["snapshot", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert!(manifest_names_tenant(&s, &today(), "t1"));
    assert_eq!(out.json()["report"]["archives"][0]["database"]["dumps"].as_array().map(Vec::len), Some(2));
}

#[test]
fn the_dumps_go_off_site_with_their_files_and_a_remote_restore_replays_them() {
    let s = Sandbox::new();
    let pg = Pg::start(&s, "t1");
    let (name, image) = add_writer(&s, "t1");
    s.write_fleet(&db_fleet(&s, &image, "postgres"));
    let bucket = s.use_shared_remote("");
    pg.rows_at_least(50);
    pg.sql("app", "create table marker (what text); insert into marker values ('before')");
    let out = s.slipway(&["snapshot", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let dumps = out.json()["report"]["archives"][0]["database"]["dumps"].clone();
    let out = s.slipway(&["sync", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    // Every dump is on the remote beside the archive; the local copies go, the remote stays.
    let day = today();
    for d in dumps.as_array().unwrap() {
        let rel = d["path"].as_str().unwrap();
        let key = format!("daily/{day}/{rel}");
        assert!(!s.remote_object_bytes(&bucket, &key).is_empty(), "{key} is not on the remote");
    }
    std::fs::remove_dir_all(s.backups().join("daily")).unwrap();
    pg.sql("app", "insert into marker values ('after')");
    let out = s.slipway(&["restore", "--tenant", "t1", "--latest", "--remote", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert_eq!(pg.sql("app", "select string_agg(what, ',') from marker"), "before");
    assert!(pg.consistent());
    assert_eq!(s.inspect(&name)["State"]["Running"], true);

    // verify --remote checks the dumps as it checks the archives: each is listed, and a dump
    // gone from the remote, or one whose bytes were replaced under its old metadata, fails it
    // naming the dump's key (plain --remote sees the first, --deep the second).
    let v = s.slipway(&["verify", "--remote", "--deep", "--json"]);
    assert_eq!(v.code, 0, "{} {}", v.stdout, v.stderr);
    let checked = v.json()["report"]["archives"].clone();
    let keys: Vec<String> =
        dumps.as_array().unwrap().iter().map(|d| format!("daily/{day}/{}", d["path"].as_str().unwrap())).collect();
    for key in &keys {
        let c = checked.as_array().unwrap().iter().find(|c| c["archive"].as_str().unwrap().ends_with(key.as_str()));
        assert_eq!(c.map(|c| c["ok"].clone()), Some(serde_json::Value::Bool(true)), "{key} not checked: {checked}");
    }
    let (gone, rotted) = (&keys[0], &keys[1]);
    let d_rotted = &dumps[1];
    let mut bytes = s.remote_object_bytes(&bucket, rotted);
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    s.put_remote_object(&bucket, rotted, &bytes, d_rotted["sha256"].as_str().unwrap());
    s.delete_remote_object(&bucket, gone);
    let bad = |v: &crate::support::Out, key: &str| {
        v.json()["report"]["archives"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["archive"].as_str().unwrap().ends_with(key) && c["ok"] == false)
    };
    let v = s.slipway(&["verify", "--remote", "--json"]);
    assert_eq!(v.code, 1, "{} {}", v.stdout, v.stderr);
    assert!(bad(&v, gone) && !bad(&v, rotted), "plain --remote: the missing dump only: {}", v.stdout);
    let v = s.slipway(&["verify", "--remote", "--deep", "--json"]);
    assert_eq!(v.code, 1, "{} {}", v.stdout, v.stderr);
    assert!(bad(&v, gone) && bad(&v, rotted), "--deep: both dumps: {}", v.stdout);
}

#[test]
fn dumps_are_encrypted_off_site_pruned_with_their_archive_and_replayed_from_the_encrypted_copy() {
    use age::secrecy::ExposeSecret;
    let s = Sandbox::new();
    let pg = Pg::start(&s, "t1");
    let (_name, image) = add_writer(&s, "t1");
    s.write_fleet(&db_fleet(&s, &image, "postgres"));
    let id = age::x25519::Identity::generate();
    let identity = s.root().join("restore.age-identity");
    std::fs::write(&identity, format!("{}\n", id.to_string().expose_secret())).unwrap();
    let rf = s.root().join("age-recipients");
    std::fs::write(&rf, format!("{}\n", id.to_public())).unwrap();
    let bucket = s.use_shared_remote(&format!("encrypt = {{ recipients_file = \"{}\" }}\n", rf.display()));
    pg.rows_at_least(20);
    pg.sql("app", "create table marker (what text); insert into marker values ('old day')");
    // An older day (its dir and manifest renamed), then today's.
    let out = s.slipway(&["snapshot", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let day = today();
    let old = "2000-01-01";
    let daily = s.backups().join("daily");
    std::fs::rename(daily.join(&day), daily.join(old)).unwrap();
    let m = std::fs::read_to_string(daily.join(old).join("MANIFEST.json")).unwrap().replace(&day, old);
    std::fs::write(daily.join(old).join("MANIFEST.json"), m).unwrap();
    pg.sql("app", "update marker set what = 'today'");
    let out = s.slipway(&["snapshot", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let dumps: Vec<String> = out.json()["report"]["archives"][0]["database"]["dumps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["path"].as_str().unwrap().to_string())
        .collect();
    assert!(dumps.len() >= 2, "the globals and the database: {dumps:?}");
    let out = s.slipway(&["sync", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    // The bucket holds each day's dumps as age files: no pg_dump header, no row in clear.
    for d in [old, day.as_str()] {
        for rel in &dumps {
            let bytes = s.remote_object_bytes(&bucket, &format!("daily/{d}/{rel}"));
            assert!(bytes.starts_with(b"age-encryption.org/v1\n"), "daily/{d}/{rel} is not an age file");
            assert!(!bytes.windows(5).any(|w| w == b"PGDMP"), "daily/{d}/{rel} shows the dump's header");
        }
    }
    // Retention keeps today only: the old day's dumps go with its archive, here and there.
    s.append_config("[retention]\nkeep_last = 1\n");
    let out = s.slipway(&["prune", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let env = Env::get();
    let left: Vec<String> = s
        .remote_objects(&env.s3_endpoint, &env.s3_access_key, &env.s3_secret_key, &bucket)
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert!(!left.iter().any(|k| k.contains(old)), "the remote kept the old day: {left:?}");
    assert!(!daily.join(old).exists(), "the old day is still here");
    for rel in &dumps {
        assert!(daily.join(&day).join(rel).is_file(), "prune took today's {rel}");
        assert!(left.iter().any(|k| k.ends_with(&format!("daily/{day}/{rel}"))), "prune took today's {rel} off site");
    }
    // Lost host: from the encrypted copy, with the identity, the database comes back as dumped.
    std::fs::remove_dir_all(&daily).unwrap();
    pg.sql("app", "update marker set what = 'after'");
    let id_arg = identity.to_str().unwrap();
    let out = s.slipway(&["restore", "--tenant", "t1", "--latest", "--remote", "--identity", id_arg, "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert_eq!(pg.sql("app", "select what from marker"), "today");
    assert!(pg.consistent());
}

/// What an operator compares of a tenant's database before and after an undo: its schema
/// (`pg_dump --schema-only`) and a hash of the `customers` rows (no app writes them).
fn db_state(pg: &Pg) -> (String, String) {
    let schema =
        sh(Command::new("docker").args(["exec", &pg.name, "pg_dump", "--schema-only", "-U", "postgres", "-d", "app"]));
    // pg_dump guards its output with a random `\restrict` key per dump.
    let schema = schema
        .lines()
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .collect::<Vec<_>>()
        .join("\n");
    let rows =
        pg.sql("app", "select count(*) || ':' || md5(string_agg(id || '=' || name, ',' order by id)) from customers");
    (schema, rows)
}

/// A `pgapp` tenant t1 on its Pg with a `customers` table of 100 rows and some files, and the
/// fleet rolling it to `pgmig` (whose migration rewrites the database, then fails).
struct MigCase {
    // Dropped in this order: the database container leaves the sandbox's network before the
    // sandbox removes it.
    pg: Pg,
    s: Sandbox,
    name: String,
    image: String,
    labels: serde_json::Value,
    db_before: (String, String),
    files_before: String,
}

fn mig_case(extra: &str) -> MigCase {
    let s = Sandbox::new();
    let pg = Pg::start(&s, "t1");
    let (name, image) = add_writer(&s, "t1");
    pg.rows_at_least(20);
    pg.sql("app", "create table customers (id int primary key, name text not null)");
    pg.sql("app", "insert into customers select g, 'customer ' || g from generate_series(1, 100) g");
    s.write_data("t1", "uploads/a.txt", "before the rollout\n");
    let db_before = db_state(&pg);
    let files_before = tree_hash(&s.data_dir("t1"));
    let labels = s.inspect(&name)["Config"]["Labels"].clone();
    let mig = Env::get().fixture("pgmig").to_string();
    s.write_fleet(&db_fleet_with(&s, &mig, "postgres", extra));
    MigCase { s, pg, name, image, labels, db_before, files_before }
}

impl MigCase {
    /// The tenant is back as before the rollout: the prior container (its image, its labels)
    /// running, its files byte-identical, the database's schema and rows as at the stop, and the
    /// ledger consistent (the prior app writes again).
    fn assert_back(&self, what: &str) {
        let c = self.s.inspect(&self.name);
        assert_eq!(c["State"]["Running"], true, "{what}: the prior container is not running");
        assert_eq!(c["Config"]["Image"].as_str(), Some(self.image.as_str()), "{what}: not the prior image");
        assert_eq!(c["Config"]["Labels"], self.labels, "{what}: labels differ");
        assert_eq!(tree_hash(&self.s.data_dir("t1")), self.files_before, "{what}: files differ");
        let now = db_state(&self.pg);
        assert_eq!(now.1, self.db_before.1, "{what}: customers differ");
        assert!(now.0 == self.db_before.0, "{what}: the schema differs:\n{}\n---\n{}", self.db_before.0, now.0);
        assert!(self.pg.consistent(), "{what}: the ledger is not consistent");
        let leftovers = self.s.containers_named_like(".pre-rollout-");
        assert!(leftovers.is_empty(), "{what}: {leftovers:?}");
    }

    /// The rollout run's dir.
    fn run_dir(&self) -> std::path::PathBuf {
        let runs = std::fs::read_dir(self.s.backups().join("rollout")).unwrap().flatten().map(|e| e.path());
        let dirs: Vec<_> = runs.filter(|p| p.is_dir()).collect();
        assert_eq!(dirs.len(), 1, "{dirs:?}");
        dirs[0].clone()
    }

    /// The database as the failed version left it was kept: a dump in the run's dir that holds
    /// the table only it made, and the replaced database under its `_undone_` name.
    fn assert_kept(&self, what: &str) {
        self.assert_kept_dump(what);
        let kept = self.pg.sql("postgres", "select count(*) from pg_database where datname like 'app\\_undone\\_%'");
        assert_eq!(kept, "1", "{what}: the replaced database is not kept");
    }

    /// The kept dump of the database as the failed version left it holds the table only it made.
    fn assert_kept_dump(&self, what: &str) {
        let dump = self.run_dir().join("undo-kept/t1.db/1.pgdump");
        assert!(dump.is_file(), "{what}: no kept dump {}", dump.display());
        let f = std::fs::File::open(&dump).unwrap();
        let o =
            Command::new("docker").args(["exec", "-i", &self.pg.name, "pg_restore", "-l"]).stdin(f).output().unwrap();
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("v2_only"),
            "{what}: the kept dump lacks the new version's table"
        );
    }
}

#[test]
fn a_failed_migration_in_a_rollout_is_undone_with_the_database_as_before_and_the_migrated_one_kept() {
    // The archive-while-down path: the run's manifest names the archive and the dump in one
    // entry before the switch.
    let c = mig_case("pre_copy = false\n");
    let out = c.s.slipway(&["rollout", "--json"]);
    assert_eq!(out.code, 3, "{} {}", out.stdout, out.stderr);
    let t = &out.json()["report"]["apps"][0]["tenants"][0];
    assert_eq!(t["outcome"], "restored", "{t}");
    let detail = t["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("undo-kept/t1.db") && detail.contains("pre-switch dump"), "{detail}");
    assert!(t["timings"]["db_dump_ms"].as_u64().is_some_and(|ms| ms > 0), "{t}");
    c.assert_back("undo");
    c.assert_kept("undo");
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(c.run_dir().join("MANIFEST.json")).unwrap()).unwrap();
    let e = &m["archives"][0];
    assert_eq!(e["tenant"], "t1");
    assert_eq!(e["database"]["dumps"].as_array().map(Vec::len), Some(2), "{m}");
    assert_eq!(e["database"]["dumps"][1]["path"], "t1.db/1.pgdump");
    assert_eq!(e["database"]["dumps"][1]["sha256"].as_str().map(str::len), Some(64));
    // Nothing is left for recover.
    let rec = c.s.slipway(&["recover", "--json"]);
    assert_eq!(rec.code, 0, "{}", rec.stdout);
}

#[test]
fn a_rollout_whose_database_dump_fails_leaves_the_tenant_untouched_before_the_switch() {
    let s = Sandbox::new();
    let pg = Pg::start(&s, "t1");
    let (name, image) = add_writer(&s, "t1");
    pg.rows_at_least(10);
    let id = s.inspect(&name)["Id"].clone();
    let mig = Env::get().fixture("pgmig").to_string();
    // A user the server does not have: the dump fails.
    s.write_fleet(&db_fleet(&s, &mig, "nobody"));
    let out = s.slipway(&["rollout", "--json"]);
    assert_eq!(out.code, 3, "{} {}", out.stdout, out.stderr);
    let t = &out.json()["report"]["apps"][0]["tenants"][0];
    let detail = t["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("tenant t1") && detail.contains("dump failed"), "{detail}");
    assert_eq!(t["outcome"], "restored");
    assert_eq!(s.inspect(&name)["Id"], id, "the prior container is the same one");
    assert_eq!(s.inspect(&name)["Config"]["Image"].as_str(), Some(image.as_str()));
    assert_eq!(s.inspect(&name)["State"]["Running"], true);
    assert_eq!(pg.sql("app", "select count(*) from pg_tables where tablename = 'v2_only'"), "0");
    assert!(pg.consistent());
}

/// Every test point of a rollout's database steps and of its undo's (whether it is the undo's).
fn database_points() -> Vec<(String, bool)> {
    use slipway_jobs::step::{Step, UndoStep};
    let mut points: Vec<(String, bool)> = Vec::new();
    for st in Step::ALL.into_iter().filter(|s| s.needs_database()) {
        points.extend([(st.during().to_string(), false), (st.after().to_string(), false)]);
    }
    for u in UndoStep::ALL.into_iter().filter(|u| u.needs_database()) {
        points.extend([(u.during().to_string(), true), (u.after().to_string(), true)]);
    }
    assert_eq!(points.len(), 6);
    points
}

#[test]
fn a_rollout_killed_at_its_database_steps_is_finished_by_recover_with_the_database_as_before() {
    for (point, undoing) in database_points() {
        let c = mig_case("");
        let out = c.s.slipway_env(&["rollout", "--json"], &[("SLIPWAY_TEST_CRASH_AT", point.as_str())]);
        assert!(
            out.stderr.contains(&format!("slipway test point reached: {point}")),
            "{point}: {} {}",
            out.stdout,
            out.stderr
        );
        assert_eq!(out.code, -1, "{point}: {}", out.stdout);
        let rec = c.s.slipway(&["recover", "--json"]);
        assert_eq!(rec.code, 0, "{point}: {} {}", rec.stdout, rec.stderr);
        c.assert_back(&point);
        if undoing {
            c.assert_kept(&point);
        }
        let again = c.s.slipway(&["recover", "--json"]);
        assert_eq!(again.code, 0, "{point}");
    }
}

/// systemd stopping the unit (SIGTERM) at each database step of a rollout and of its undo: the
/// run itself leaves the tenant up on its prior version (no `recover` needed for that), and
/// `recover` afterwards finds the database and the files exactly as before the rollout.
#[test]
fn a_rollout_sent_sigterm_at_its_database_steps_leaves_the_tenant_up_with_the_database_as_before() {
    for (point, undoing) in database_points() {
        let c = mig_case("");
        let out = c.s.slipway_env(&["rollout", "--json"], &[("SLIPWAY_TEST_SIGNAL_AT", point.as_str())]);
        assert!(
            out.stderr.contains(&format!("slipway test point reached: {point}")),
            "{point}: {} {}",
            out.stdout,
            out.stderr
        );
        assert!(out.code > 0, "{point}: the run must end by itself, failed or interrupted: {}", out.stdout);
        // Before any recover: the prior container serves again.
        let live = c.s.inspect(&c.name);
        assert_eq!(live["State"]["Running"], true, "{point}: the tenant is down after the run: {}", out.stdout);
        assert_eq!(live["Config"]["Image"].as_str(), Some(c.image.as_str()), "{point}: {}", out.stdout);
        let rec = c.s.slipway(&["recover", "--json"]);
        assert_eq!(rec.code, 0, "{point}: {} {}", rec.stdout, rec.stderr);
        c.assert_back(&point);
        if undoing {
            c.assert_kept(&point);
        }
    }
}

/// The containers drill run `run` made (they carry its label), by name.
fn drill_containers(run: &str) -> Vec<String> {
    sh(Command::new("docker").args([
        "ps",
        "-a",
        "--filter",
        &format!("label=slipway.drill={run}"),
        "--format",
        "{{.Names}}",
    ]))
    .lines()
    .map(str::to_string)
    .collect()
}

/// Containers (any label) whose name contains `part`.
fn containers_like(part: &str) -> Vec<String> {
    sh(Command::new("docker").args(["ps", "-a", "--format", "{{.Names}}"]))
        .lines()
        .filter(|n| n.contains(part))
        .map(str::to_string)
        .collect()
}

#[test]
fn a_drill_replays_the_dump_into_a_scratch_database_records_its_check_and_a_failing_check_fails_it() {
    let s = Sandbox::new();
    let pg = Pg::start(&s, "t1");
    let (name, image) = add_writer(&s, "t1");
    pg.rows_at_least(20);
    pg.sql("app", "create table customers (id int primary key, name text not null)");
    pg.sql("app", "insert into customers select g, 'customer ' || g from generate_series(1, 100) g");
    let fleet = |check: &str| format!("{}check = \"{check}\"\n", db_fleet(&s, &image, "postgres"));
    s.write_fleet(&fleet("select count(*) from customers"));
    let out = s.slipway(&["snapshot", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    // After the snapshot the live database changes: the check must answer from the dump.
    pg.sql("app", "delete from customers where id > 10");
    let id = s.inspect(&name)["Id"].clone();

    let out = s.slipway(&["drill", "--tenant", "t1", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let t = &out.json()["report"]["tenants"][0];
    assert_eq!(t["outcome"], "passed", "{t}");
    assert_eq!(t["db_check"], "100", "{t}");
    let db_container = t["db_container"].as_str().unwrap().to_string();
    assert!(containers_like(&db_container).is_empty(), "the scratch database was not removed");
    // The live tenant and its database were only looked at.
    assert_eq!(s.inspect(&name)["Id"], id);
    assert_eq!(s.inspect(&name)["State"]["Running"], true);
    assert_eq!(pg.sql("app", "select count(*) from customers"), "10");
    assert!(pg.consistent());
    let status = s.slipway(&["status", "--json"]).json();
    let st = &status["report"]["apps"][0]["tenants"][0];
    assert_eq!(st["last_db_drill"]["check"], "100", "{st}");
    let good_at = st["last_db_drill"]["at"].clone();
    assert!(good_at.is_string(), "{st}");

    // A check that errors fails the drill, naming the tenant; status keeps the last good one.
    s.write_fleet(&fleet("select count(*) from no_such_table"));
    let out = s.slipway(&["drill", "--tenant", "t1", "--json"]);
    assert_eq!(out.code, 1, "{} {}", out.stdout, out.stderr);
    let t = &out.json()["report"]["tenants"][0];
    assert_eq!(t["outcome"], "failed", "{t}");
    let detail = t["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("tenant t1") && detail.contains("check query") && detail.contains("no_such_table"),
        "{detail}"
    );
    assert!(t.get("db_check").is_none_or(|c| c.is_null()), "{t}");
    assert!(containers_like(t["db_container"].as_str().unwrap()).is_empty());
    let status = s.slipway(&["status", "--json"]).json();
    let st = &status["report"]["apps"][0]["tenants"][0];
    assert_eq!(st["last_db_drill"]["at"], good_at, "{st}");
    assert_eq!(st["last_db_drill"]["check"], "100", "{st}");
    assert!(status["report"]["attention"].to_string().contains("restore drill"), "{status}");

    // Killed right after the replay and the check: the scratch database stays (it carries the
    // drill's label) until `recover` removes it; the live tenant and database were only read.
    s.write_fleet(&fleet("select count(*) from customers"));
    let out = s.slipway_env(&["drill", "--tenant", "t1"], &[("SLIPWAY_TEST_CRASH_AT", "drill-after-database")]);
    assert_eq!(out.code, -1, "{}", out.stderr);
    let runs: Runs = s.slipway(&["runs", "--json"]).report();
    let run = runs.runs.into_iter().find(|r| r.job == "drill").map(|r| r.id).expect("the killed drill's run");
    let made_by = drill_containers;
    assert!(made_by(&run).iter().any(|n| n.ends_with("-db")), "the kill left no scratch database: {:?}", made_by(&run));
    let rec = s.slipway(&["recover", "--json"]);
    assert_eq!(rec.code, 0, "{} {}", rec.stdout, rec.stderr);
    assert_eq!(made_by(&run), Vec::<String>::new(), "recover left the drill's containers");
    assert_eq!(s.inspect(&name)["Id"], id);
    assert_eq!(s.inspect(&name)["State"]["Running"], true);
    assert_eq!(pg.sql("app", "select count(*) from customers"), "10");
}

/// An image id built `FROM` the pg fixture with one label more: the same server, another image
/// (as a database upgraded since would be); removed when dropped.
struct Upgraded(String);

impl Drop for Upgraded {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rmi", "-f", &self.0]).output();
    }
}

#[test]
fn a_drill_boots_its_scratch_database_from_the_image_the_dump_was_taken_with_not_the_one_running_now() {
    let s = Sandbox::new();
    let pg = Pg::start(&s, "t1");
    let (name, image) = add_writer(&s, "t1");
    pg.rows_at_least(20);
    s.write_fleet(&format!("{}check = \"select count(*) > 0 from ledger\"\n", db_fleet(&s, &image, "postgres")));
    let out = s.slipway(&["snapshot", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let dumped_with = s.inspect(&pg.name)["Image"].as_str().unwrap().to_string();
    // The database container is recreated from another image since the snapshot.
    let tag = format!("slipway-test/pg-upgraded:{}", s.id());
    let mut build = Command::new("docker")
        .args(["build", "-q", "-t", &tag, "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        build.stdin.as_mut().unwrap(),
        format!("FROM {}\nLABEL slipway.test.upgraded={}\n", Env::get().fixture("pg"), s.id()).as_bytes(),
    )
    .unwrap();
    drop(build.stdin.take());
    let built = build.wait_with_output().unwrap();
    assert!(built.status.success(), "docker build: {}", String::from_utf8_lossy(&built.stdout));
    let upgraded = Upgraded(tag.clone());
    drop(pg);
    let pg = Pg::start_from(&s, "t1", &upgraded.0);
    let now_runs = s.inspect(&pg.name)["Image"].as_str().unwrap().to_string();
    assert_ne!(now_runs, dumped_with, "the test needs another image id");

    // Killed right after the replay and the check: the scratch database is there to inspect.
    let out = s.slipway_env(&["drill", "--tenant", "t1"], &[("SLIPWAY_TEST_CRASH_AT", "drill-after-database")]);
    assert_eq!(out.code, -1, "{}", out.stderr);
    let runs: Runs = s.slipway(&["runs", "--json"]).report();
    let run = runs.runs.into_iter().find(|r| r.job == "drill").map(|r| r.id).expect("the killed drill's run");
    let scratch = drill_containers(&run).into_iter().find(|n| n.ends_with("-db")).expect("no scratch database");
    assert_eq!(s.inspect(&scratch)["Image"].as_str(), Some(dumped_with.as_str()), "the scratch database's image");
    assert_eq!(s.slipway(&["recover"]).code, 0);
    // A whole drill passes on it, and the live database container is the one running now.
    let out = s.slipway(&["drill", "--tenant", "t1", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert_eq!(out.json()["report"]["tenants"][0]["db_check"], "t", "{}", out.stdout);
    assert_eq!(s.inspect(&pg.name)["Image"].as_str(), Some(now_runs.as_str()));
    assert!(s.inspect(&name)["Id"].is_string());
    drop(pg);
}

#[test]
fn an_undo_whose_replay_fails_halts_naming_the_tenant_and_keeps_everything() {
    // Another client stays connected to the database: the replay into the scratch database
    // commits, but the swap's rename is refused (one transaction: nothing renamed).
    let c = mig_case("");
    let sleeper = format!("{}-sleeper", c.pg.name);
    sh(Command::new("docker")
        .args(["exec", "-d", &c.pg.name, "psql", "-U", "postgres", "-d", "app", "-c"])
        .arg(format!("select pg_sleep(600) /* {sleeper} */")));
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.pg.sql(
        "postgres",
        "select count(*) from pg_stat_activity where query like '%pg_sleep(600)%' and pid <> pg_backend_pid()",
    ) != "1"
    {
        assert!(Instant::now() < deadline, "the sleeping client did not connect");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = c.s.slipway(&["rollout", "--json"]);
    assert_eq!(out.code, 4, "{} {}", out.stdout, out.stderr);
    let t = &out.json()["report"]["apps"][0]["tenants"][0];
    assert_eq!(t["outcome"], "person_needed", "{t}");
    let detail = t["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("tenant t1") && detail.contains("replay") && detail.contains("everything is kept"),
        "{detail}"
    );
    // Nothing was replayed over the migrated database, and the prior version was not started
    // on it: it waits, set aside, for a person.
    assert_eq!(c.pg.sql("app", "select count(*) from v2_only"), "2");
    assert_eq!(c.pg.sql("app", "select count(*) from customers"), "50");
    let aside = c.s.containers_named_like(".pre-rollout-");
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(c.s.inspect(&aside[0])["State"]["Running"], false);
    // Both dumps are there: the pre-switch one and the migrated one.
    assert!(c.run_dir().join("t1.db/1.pgdump").is_file());
    c.assert_kept_dump("replay failed");
    // Once the client is gone, a person finishes the undo with `rollback`: the database as before.
    c.pg.sql("postgres", "select pg_terminate_backend(pid) from pg_stat_activity where query like '%pg_sleep(600)%' and pid <> pg_backend_pid()");
    let run = out.json()["run_id"].as_str().unwrap().to_string();
    let rb = c.s.slipway(&["rollback", "--run", &run, "--tenant", "t1", "--json"]);
    assert_eq!(rb.code, 0, "{} {}", rb.stdout, rb.stderr);
    c.assert_back("rollback after a failed replay");
    c.assert_kept("rollback after a failed replay");
}

/// `docker exec` as root in the database container, through busybox (its only tools).
fn in_pg(pg: &Pg, args: &[&str]) {
    sh(Command::new("docker").args(["exec", &pg.name, "/bin/busybox"]).args(args));
}

#[test]
fn a_restore_replays_the_globals_so_a_role_dropped_since_is_back_and_roles_that_exist_are_no_error() {
    let s = Sandbox::new();
    let pg = Pg::start(&s, "t1");
    let (name, image) = add_writer(&s, "t1");
    s.write_data("t1", "uploads/a.txt", "as at the snapshot\n");
    s.write_fleet(&db_fleet(&s, &image, "postgres"));
    pg.rows_at_least(20);
    pg.sql("postgres", "create role reporter login connection limit 7");
    pg.sql("postgres", "create role auditor nologin");
    pg.sql("app", "create table customers (id int primary key, name text not null)");
    pg.sql("app", "insert into customers values (1, 'one'); grant select on customers to reporter");
    in_pg(&pg, &["mkdir", "-p", "/var/lib/postgresql/ts"]);
    in_pg(&pg, &["chown", "postgres:postgres", "/var/lib/postgresql/ts"]);
    pg.sql("postgres", "create tablespace ts location '/var/lib/postgresql/ts'");
    let out = s.slipway(&["snapshot", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);

    // Into the server the snapshot came from: every role and the tablespace are there.
    let out = s.slipway(&["restore", "--tenant", "t1", "--latest", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert_eq!(out.json()["report"]["databases"], 1, "{}", out.stdout);

    // A role dropped since (its grant revoked first) and a role changed since: the dump of the
    // database needs the first (a grant to it), the second gets the snapshot's attributes back.
    pg.sql("app", "revoke select on customers from reporter");
    pg.sql("postgres", "drop role reporter");
    pg.sql("postgres", "alter role auditor login");
    let out = s.slipway(&["restore", "--tenant", "t1", "--latest", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert_eq!(
        pg.sql("postgres", "select rolcanlogin || ':' || rolconnlimit from pg_roles where rolname = 'reporter'"),
        "true:7"
    );
    assert_eq!(pg.sql("app", "select has_table_privilege('reporter', 'customers', 'select')"), "t");
    assert_eq!(pg.sql("postgres", "select rolcanlogin from pg_roles where rolname = 'auditor'"), "f");
    assert_eq!(s.inspect(&name)["State"]["Running"], true);

    // Any other error in the globals (the tablespace's dir is gone, as on a fresh server): the
    // restore fails naming the tenant, no database replayed, the files it had back.
    pg.sql("postgres", "drop tablespace ts");
    in_pg(&pg, &["rm", "-rf", "/var/lib/postgresql/ts"]);
    pg.sql("app", "create table marker (what text); insert into marker values ('after')");
    s.write_data("t1", "uploads/late.txt", "written after the snapshot\n");
    let files_before = tree_hash(&s.data_dir("t1"));
    let out = s.slipway(&["restore", "--tenant", "t1", "--latest", "--json"]);
    assert_eq!(out.code, 1, "{} {}", out.stdout, out.stderr);
    let detail = out.json()["report"]["detail"].as_str().unwrap().to_string();
    assert!(detail.contains("tenant t1") && detail.contains("globals") && detail.contains("ts"), "{detail}");
    assert_eq!(pg.sql("app", "select string_agg(what, ',') from marker"), "after");
    assert_eq!(tree_hash(&s.data_dir("t1")), files_before);
    assert_eq!(s.inspect(&name)["State"]["Running"], true);
    assert!(pg.consistent());
}
