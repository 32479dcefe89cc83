//! A stack tenant's database in a rollout (#27): a compose project per tenant (made with the
//! real `docker-compose` CLI) of three services — `app` (the `pgapp` fixture, writing ledger
//! rows into the project's Postgres and keeping files in its named volume), `worker` (no data)
//! and `postgres` (the `pg` fixture, its data in a named volume of its own) — with
//! `[app.database]` naming the project's `postgres` container. The new app version is `pgmig`,
//! whose migration rewrites the database and then fails (or, with `PGMIG_THEN=serve` in the
//! app's env, goes on healthy).

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::stack::{docker, looks, tree, Compose};
use crate::support::Sandbox;

/// The registry images of these tests: the app's two versions, the worker, the database.
struct Images {
    app: String,
    mig: String,
    worker: String,
    pg: String,
}

fn images(s: &Sandbox) -> Images {
    Images {
        app: s.push_fixture_as("pgapp", "app"),
        mig: s.push_fixture_as("pgmig", "app"),
        worker: s.push_fixture_as("v1", "worker"),
        pg: s.push_fixture_as("pg", "pg"),
    }
}

/// `docker-compose up -d` tenant `tenant`: its Postgres first (with a database `app` holding 100
/// `customers`), then the app and the worker; `app_env` is added to the app's environment.
fn compose_tenant(s: &Sandbox, tenant: &str, img: &Images, app_env: &str) -> Compose {
    let project = format!("{}{tenant}", s.id()).to_lowercase();
    let file = s.root().join(format!("{tenant}.compose.yml"));
    let id = s.id();
    let yaml = format!(
        r#"version: "3.7"
services:
  postgres:
    image: {pg}
    labels: {{ slipway.test: "{id}" }}
    volumes: [ "pgdata:/var/lib/postgresql/data" ]
    restart: unless-stopped
  app:
    image: {app}
    labels: {{ slipway.test: "{id}" }}
    environment: {{ PGHOST: postgres{app_env} }}
    volumes: [ "appdata:/data" ]
    restart: unless-stopped
    depends_on: [ postgres ]
  worker:
    image: {worker}
    labels: {{ slipway.test: "{id}" }}
    restart: unless-stopped
volumes:
  pgdata: {{ labels: {{ slipway.test: "{id}" }} }}
  appdata: {{ labels: {{ slipway.test: "{id}" }} }}
networks:
  default: {{ labels: {{ slipway.test: "{id}" }} }}
"#,
        pg = img.pg,
        app = img.app,
        worker = img.worker,
    );
    std::fs::write(&file, yaml).unwrap();
    let c = Compose { project, file };
    c.run(&["up", "-d", "postgres"]);
    let pg = c.container("postgres");
    let deadline = Instant::now() + Duration::from_secs(60);
    while try_sql(&pg, "postgres", "select 1").is_none() {
        assert!(Instant::now() < deadline, "the pg fixture did not come up");
        std::thread::sleep(Duration::from_millis(200));
    }
    sql(&pg, "postgres", "create database app");
    sql(&pg, "app", "create table customers (id int primary key, name text not null)");
    sql(&pg, "app", "insert into customers select g, 'customer ' || g from generate_series(1, 100) g");
    c.run(&["up", "-d"]);
    c
}

fn try_sql(container: &str, db: &str, sql: &str) -> Option<String> {
    let o = Command::new("docker")
        .args(["exec", container, "psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-U", "postgres"])
        .args(["-d", db, "-c", sql])
        .output()
        .ok()?;
    o.status.success().then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

fn sql(container: &str, db: &str, sql: &str) -> String {
    try_sql(container, db, sql).unwrap_or_else(|| panic!("psql failed in {db}: {sql}"))
}

/// The ledger's row count once it has at least `n` rows (the app writes them).
fn rows_at_least(pg: &str, n: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let c: u64 = try_sql(pg, "app", "select count(*) from ledger").and_then(|c| c.parse().ok()).unwrap_or(0);
        if c >= n {
            return c;
        }
        assert!(Instant::now() < deadline, "the app did not reach {n} ledger rows (at {c})");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What an operator compares of the database: its schema and a hash of the `customers` rows
/// (no app writes them).
fn db_state(pg: &str) -> (String, String) {
    let schema = docker(&["exec", pg, "pg_dump", "--schema-only", "-U", "postgres", "-d", "app"]);
    // pg_dump guards its output with a random `\restrict` key per dump.
    let schema = schema
        .lines()
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .collect::<Vec<_>>()
        .join("\n");
    let rows =
        sql(pg, "app", "select count(*) || ':' || md5(string_agg(id || '=' || name, ',' order by id)) from customers");
    (schema, rows)
}

/// The ledger is consistent: as many rows as the tally, numbered without a gap.
fn consistent(pg: &str) -> bool {
    sql(
        pg,
        "app",
        "select (select count(*) from ledger) = (select rows from tally where id = 1) \
           and (select count(*) from ledger) = (select coalesce(max(n), 0) from ledger)",
    ) == "t"
}

/// The stack app of these tests with `[app.database]` on each project's `postgres` container;
/// `extra_pg` is added to the postgres service's table.
fn fleet(s: &Sandbox, img: &Images, app: &str, extra_pg: &str) -> String {
    fleet_pg(s, img, &img.pg, app, extra_pg)
}

/// [`fleet`] with the postgres service pinned to `pg`.
fn fleet_pg(s: &Sandbox, img: &Images, pg: &str, app: &str, extra_pg: &str) -> String {
    format!(
        "[[app]]\nname = \"shop\"\nselect = \"slipway.test={id}\"\nstop_timeout_s = 2\n\
         health = {{ path = \"/api/health\", port = 8080, timeout_s = 15, service = \"app\" }}\n\
         [app.services.postgres]\nimage = \"{pg}\"\norder = 0\n{extra_pg}\
         [app.services.app]\nimage = \"{app}\"\nwrites = true\norder = 2\ndata = [\"/data\"]\n\
         [app.services.worker]\nimage = \"{worker}\"\norder = 3\n\
         [app.database]\nkind = \"postgres\"\ncontainer = \"{{tenant}}_postgres_1\"\ndatabases = [\"app\"]\n\
         user = \"postgres\"\n",
        id = s.id(),
        worker = img.worker,
    )
}

type Looks = (String, String, BTreeMap<String, String>, Vec<String>, bool);

/// One tenant t1 as these tests set it up, before the rollout.
struct Case {
    // Dropped first: compose down removes the project's containers, volumes and network before
    // the sandbox goes.
    c: Compose,
    s: Sandbox,
    img: Images,
    pg: String,
    looks: Vec<Looks>,
    pg_started: String,
    db_before: (String, String),
    files_before: String,
    ps_before: Vec<String>,
}

const SERVICES: [&str; 3] = ["postgres", "app", "worker"];

fn case(app_env: &str) -> Case {
    let s = Sandbox::new();
    let img = images(&s);
    let c = compose_tenant(&s, "t1", &img, app_env);
    let pg = c.container("postgres");
    rows_at_least(&pg, 20);
    std::fs::write(c.volume_dir("appdata").join("upload.txt"), "a file of the tenant\n").unwrap();
    let looks: Vec<Looks> = SERVICES.map(|x| looks(&s, &c.container(x))).to_vec();
    let pg_started = s.inspect(&pg)["State"]["StartedAt"].as_str().unwrap().to_string();
    let (db_before, files_before, ps_before) = (db_state(&pg), tree(&c.volume_dir("appdata")), c.ps());
    Case { c, s, img, pg, looks, pg_started, db_before, files_before, ps_before }
}

impl Case {
    fn tenant(&self) -> &str {
        &self.c.project
    }

    /// The stack is back as before the rollout: every container the same one (id, image,
    /// compose labels, networks) and running, the database never stopped, its schema and rows as
    /// at the stop and its ledger consistent (the prior app writes again), the files
    /// byte-identical, `docker-compose ps` as before, nothing set aside left.
    fn assert_back(&self, what: &str) {
        self.assert_back_with(what, true);
    }

    /// [`Case::assert_back`]; `pg_never_stopped`: the database container kept running
    /// throughout (not so when its own service changed).
    fn assert_back_with(&self, what: &str, pg_never_stopped: bool) {
        let now: Vec<Looks> = SERVICES.map(|x| looks(&self.s, &self.c.container(x))).to_vec();
        assert_eq!(now, self.looks, "{what}: a container is not as before");
        let started = self.s.inspect(&self.pg)["State"]["StartedAt"].as_str().unwrap().to_string();
        if pg_never_stopped {
            assert_eq!(started, self.pg_started, "{what}: the database container was restarted");
        }
        let db = db_state(&self.pg);
        assert_eq!(db.1, self.db_before.1, "{what}: customers differ");
        assert!(db.0 == self.db_before.0, "{what}: the schema differs:\n{}\n---\n{}", self.db_before.0, db.0);
        rows_at_least(&self.pg, 1);
        assert!(consistent(&self.pg), "{what}: the ledger is not consistent");
        assert_eq!(tree(&self.c.volume_dir("appdata")), self.files_before, "{what}: the files differ");
        assert_eq!(self.c.ps(), self.ps_before, "{what}: docker-compose ps differs");
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
        let dump = self.run_dir().join(format!("undo-kept/{}.db/1.pgdump", self.tenant()));
        assert!(dump.is_file(), "{what}: no kept dump {}", dump.display());
        let f = std::fs::File::open(&dump).unwrap();
        let o = Command::new("docker").args(["exec", "-i", &self.pg, "pg_restore", "-l"]).stdin(f).output().unwrap();
        assert!(String::from_utf8_lossy(&o.stdout).contains("v2_only"), "{what}: the kept dump lacks v2_only");
        let kept = sql(&self.pg, "postgres", "select count(*) from pg_database where datname like 'app\\_undone\\_%'");
        assert_eq!(kept, "1", "{what}: the replaced database is not kept");
    }
}

#[test]
fn a_stack_whose_new_app_version_migrates_then_fails_is_undone_with_its_database_as_before() {
    let c = case("");
    c.s.write_fleet(&fleet(&c.s, &c.img, &c.img.mig, ""));
    let out = c.s.slipway(&["rollout", "--json"]);
    assert_eq!(out.code, 3, "{} {}", out.stdout, out.stderr);
    let t = &out.json()["report"]["apps"][0]["tenants"][0];
    assert_eq!(t["outcome"], "restored", "{t}");
    let detail = t["detail"].as_str().unwrap_or_default();
    assert!(detail.contains(&format!("undo-kept/{}.db", c.tenant())) && detail.contains("pre-switch dump"), "{detail}");
    assert!(t["timings"]["db_dump_ms"].as_u64().is_some_and(|ms| ms > 0), "{t}");
    c.assert_back("undo");
    c.assert_kept("undo");
    // The pre-switch dump is in the run's dir, as a single container's.
    assert!(c.run_dir().join(format!("{}.db/1.pgdump", c.tenant())).is_file());
    let rec = c.s.slipway(&["recover", "--json"]);
    assert_eq!(rec.code, 0, "{}", rec.stdout);
    c.assert_back("recover after the undo");
}

/// Every test point of the rollout's database step and of its undo's (whether it is the undo's).
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
fn a_stack_rollout_killed_at_its_database_steps_is_finished_by_recover_with_the_database_as_before() {
    for (point, undoing) in database_points() {
        let c = case("");
        c.s.write_fleet(&fleet(&c.s, &c.img, &c.img.mig, ""));
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
        c.assert_back(&format!("{point}, recovered twice"));
    }
}

#[test]
fn a_good_stack_rollout_keeps_the_migrated_database_and_names_its_dump_in_the_runs_manifest() {
    let c = case(", PGMIG_THEN: serve");
    // Hostile first: the database service declaring its files as data (they would be copied and
    // swapped back under the running server) is refused, naming it; nothing is touched.
    c.s.write_fleet(&fleet(&c.s, &c.img, &c.img.mig, "writes = true\ndata = [\"/var/lib/postgresql/data\"]\n"));
    let out = c.s.slipway(&["rollout"]);
    assert_eq!(out.code, 2, "{} {}", out.stdout, out.stderr);
    assert!(out.stderr.contains("services.postgres.data") && out.stderr.contains("[app.database]"), "{}", out.stderr);
    c.assert_back("refused");

    c.s.write_fleet(&fleet(&c.s, &c.img, &c.img.mig, ""));
    let out = c.s.slipway(&["rollout", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert_eq!(out.json()["report"]["apps"][0]["tenants"][0]["outcome"], "rolled", "{}", out.stdout);
    let app = c.c.container("app");
    assert_eq!(c.s.inspect(&app)["Config"]["Image"].as_str(), Some(c.img.mig.as_str()));
    // The migrated database stays, served by the same, never stopped, database container.
    assert_eq!(sql(&c.pg, "app", "select count(*) from v2_only"), "2");
    assert_eq!(sql(&c.pg, "app", "select count(*) from customers"), "50");
    let started = c.s.inspect(&c.pg)["State"]["StartedAt"].as_str().unwrap().to_string();
    assert_eq!(started, c.pg_started, "the database container was restarted");
    assert_eq!(c.s.inspect(&c.pg)["Id"].as_str(), Some(c.looks[0].0.as_str()));
    // The pre-switch dump is named with the run's archive of the first mount.
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(c.run_dir().join("MANIFEST.json")).unwrap()).unwrap();
    let e = m["archives"].as_array().unwrap().iter().find(|e| e["database"].is_object()).cloned().unwrap_or_default();
    assert_eq!(e["tenant"], format!("{}+0", c.tenant()), "{m}");
    assert_eq!(e["database"]["dumps"].as_array().map(Vec::len), Some(2), "{m}");
    assert_eq!(e["database"]["dumps"][1]["path"], format!("{}.db/1.pgdump", c.tenant()));
    let dump = c.run_dir().join(format!("{}.db/1.pgdump", c.tenant()));
    let f = std::fs::File::open(&dump).unwrap();
    let o = Command::new("docker").args(["exec", "-i", &c.pg, "pg_restore", "-l"]).stdin(f).output().unwrap();
    let listed = String::from_utf8_lossy(&o.stdout);
    assert!(listed.contains("customers") && !listed.contains("v2_only"), "the dump is not the pre-switch one");

    // A person's decision afterwards: `rollback --run` of the finished run replays the
    // pre-switch dump too (the migrated database kept), the prior app back on it.
    let run = out.run_id();
    let rb = c.s.slipway(&["rollback", "--run", &run, "--json"]);
    assert_eq!(rb.code, 0, "{} {}", rb.stdout, rb.stderr);
    assert_eq!(c.s.inspect(&app)["Config"]["Image"].as_str(), Some(c.img.app.as_str()));
    let db = db_state(&c.pg);
    assert_eq!(db.1, c.db_before.1, "customers differ after the rollback");
    assert!(db.0 == c.db_before.0, "the schema differs after the rollback:\n{}\n---\n{}", c.db_before.0, db.0);
    rows_at_least(&c.pg, 1);
    assert!(consistent(&c.pg), "the ledger is not consistent after the rollback");
    c.assert_kept("rollback");
    assert_eq!(tree(&c.c.volume_dir("appdata")), c.files_before, "the files differ after the rollback");
}

/// Another build of the database image (a new Postgres build: the pg fixture with one more
/// label), pushed: its `repo@sha256:` reference.
fn pg_build2(img: &Images) -> String {
    let repo = img.pg.split('@').next().unwrap().to_string();
    let made = docker(&["create", &img.pg]);
    docker(&["commit", "--change", "LABEL fixture.build=2", &made, &format!("{repo}:build2")]);
    docker(&["rm", &made]);
    let pushed = docker(&["push", &format!("{repo}:build2")]);
    let digest = pushed.split_whitespace().find(|w| w.starts_with("sha256:") && w.len() == 71).unwrap();
    format!("{repo}@{digest}")
}

#[test]
fn a_stack_whose_database_service_changes_too_is_dumped_before_its_stop_and_undone_in_its_prior_container() {
    let c = case("");
    // Another image of the database (a new Postgres build): the pg fixture with one more label.
    let pg2 = pg_build2(&c.img);
    assert_ne!(pg2, c.img.pg);
    c.s.write_fleet(&fleet_pg(&c.s, &c.img, &pg2, &c.img.mig, ""));
    let out = c.s.slipway(&["rollout", "--json"]);
    assert_eq!(out.code, 3, "{} {}", out.stdout, out.stderr);
    let t = &out.json()["report"]["apps"][0]["tenants"][0];
    assert_eq!(t["outcome"], "restored", "{t}");
    // Dumped by the prior server before its stop, the migration undone in the prior container
    // (renamed back, the same one), the migrated database kept.
    c.assert_back_with("undo", false);
    c.assert_kept("undo");
    let rec = c.s.slipway(&["recover", "--json"]);
    assert_eq!(rec.code, 0, "{}", rec.stdout);
}

#[test]
fn a_stack_restore_replays_the_globals_so_a_role_dropped_since_is_back() {
    let c = case("");
    c.s.write_fleet(&fleet(&c.s, &c.img, &c.img.app, ""));
    sql(&c.pg, "postgres", "create role reporter login");
    sql(&c.pg, "app", "grant select on customers to reporter");
    let out = c.s.slipway(&["snapshot", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    sql(&c.pg, "app", "revoke select on customers from reporter");
    sql(&c.pg, "postgres", "drop role reporter");
    let out = c.s.slipway(&["restore", "--tenant", c.tenant(), "--latest", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert_eq!(out.json()["report"]["databases"], 1, "{}", out.stdout);
    assert_eq!(sql(&c.pg, "app", "select has_table_privilege('reporter', 'customers', 'select')"), "t");
    // Into a server that has every role: no error.
    let out = c.s.slipway(&["restore", "--tenant", c.tenant(), "--latest", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
}

#[test]
fn a_stack_whose_database_dump_fails_is_left_untouched_before_the_switch() {
    let c = case("");
    // A user the server does not have: the dump fails, with the writers already stopped.
    let fleet = fleet(&c.s, &c.img, &c.img.mig, "").replace("user = \"postgres\"", "user = \"nobody\"");
    c.s.write_fleet(&fleet);
    let out = c.s.slipway(&["rollout", "--json"]);
    assert_eq!(out.code, 3, "{} {}", out.stdout, out.stderr);
    let t = &out.json()["report"]["apps"][0]["tenants"][0];
    assert_eq!(t["outcome"], "restored", "{t}");
    let detail = t["detail"].as_str().unwrap_or_default();
    assert!(detail.contains(&format!("tenant {}", c.tenant())) && detail.contains("dump failed"), "{detail}");
    // Every container the same one, running; the database never migrated; no dump left named.
    c.assert_back("failed dump");
    assert_eq!(sql(&c.pg, "app", "select count(*) from pg_tables where tablename = 'v2_only'"), "0");
    let runs = std::fs::read_dir(c.s.backups().join("rollout")).into_iter().flatten().flatten();
    let named: Vec<_> = runs.map(|e| e.path().join(format!("{}.db", c.tenant()))).filter(|p| p.exists()).collect();
    assert!(named.is_empty(), "a failed dump left {named:?}");
}

/// The rows of `table` in the database dump of the one daily snapshot, read from the dump
/// itself (pg_restore's data section, through the `pg_restore` of container `pg`, which reads
/// the dump from stdin and connects to no server).
fn dumped_rows(s: &Sandbox, pg: &str, table: &str) -> u64 {
    let days: Vec<_> = std::fs::read_dir(s.backups().join("daily")).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(days.len(), 1, "{days:?}");
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(days[0].join("MANIFEST.json")).unwrap()).unwrap();
    let e = m["archives"].as_array().unwrap().iter().find(|e| e["database"].is_object()).cloned().unwrap_or_default();
    let dump = days[0].join(e["database"]["dumps"][1]["path"].as_str().unwrap_or_else(|| panic!("no dump in {m}")));
    let f = std::fs::File::open(&dump).unwrap();
    let o = Command::new("docker")
        .args(["exec", "-i", pg, "pg_restore", "--data-only", "--table", table, "-f", "-"])
        .stdin(f)
        .output()
        .unwrap();
    assert!(o.status.success(), "pg_restore: {}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    let copy = format!("COPY public.{table} ");
    let rows = text.lines().skip_while(|l| !l.starts_with(&copy)).skip(1).take_while(|l| *l != "\\.");
    rows.count() as u64
}

/// What drill run `run` left: containers and networks labelled with it, and the scratch root.
fn drill_left(s: &Sandbox, run: &str) -> Vec<String> {
    let label = format!("label=slipway.drill={run}");
    let mut left: Vec<String> = docker(&["ps", "-a", "--filter", &label, "--format", "{{.Names}}"])
        .lines()
        .map(|n| format!("container {n}"))
        .collect();
    left.extend(
        docker(&["network", "ls", "--filter", &label, "--format", "{{.Name}}"]).lines().map(|n| format!("network {n}")),
    );
    let root = s.backups().join("drill");
    if root.exists() {
        left.push(format!("dir {}", root.display()));
    }
    left
}

/// A stack drill proves the database too: the snapshot's dump is replayed into the database
/// service's own drill container (a fresh server: none of its writable mounts) before the app's
/// starts, and `check` answers there exactly what the dump holds. A check that errors fails the
/// drill naming the tenant; either way the live stack and its database are only looked at and
/// nothing of the drill is left, its volumes included.
#[test]
fn a_stack_drill_replays_the_dump_into_its_database_service_and_a_failing_check_fails_it_naming_the_tenant() {
    let c = case("");
    let with_check = |check: &str| format!("{}check = \"{check}\"\n", fleet(&c.s, &c.img, &c.img.app, ""));
    c.s.write_fleet(&with_check("select * from no_such_table"));
    let rows_before = rows_at_least(&c.pg, 1);
    let out = c.s.slipway(&["snapshot", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let rows_after = rows_at_least(&c.pg, 1);
    let dumped = dumped_rows(&c.s, &c.pg, "ledger");
    assert!(rows_before <= dumped && dumped <= rows_after, "{rows_before} <= {dumped} <= {rows_after}");

    // Hostile first: a check that errors on the replayed dump fails the drill (exit 1), naming
    // the tenant and the query; everything the drill made is gone.
    let out = c.s.slipway(&["drill", "--tenant", c.tenant(), "--json"]);
    assert_eq!(out.code, 1, "{} {}", out.stdout, out.stderr);
    let t = &out.json()["report"]["tenants"][0];
    assert_eq!(t["outcome"], "failed", "{t}");
    let detail = t["detail"].as_str().unwrap_or_default();
    assert!(detail.contains(&format!("tenant {}", c.tenant())) && detail.contains("no_such_table"), "{detail}");
    assert!(t.get("db_check").is_none_or(|a| a.is_null()), "{t}");
    assert_eq!(drill_left(&c.s, &out.run_id()), Vec::<String>::new());
    c.assert_back("the failed drill");
    let status = c.s.slipway(&["status", "--json"]).json();
    let st = &status["report"]["apps"][0]["tenants"][0];
    assert!(st.get("last_db_drill").is_none_or(|d| d.is_null()), "{st}");

    // A check that answers: held once every service is healthy, the drill's database is its
    // service's own container, on a fresh data dir, and the app's replayed ledger is there.
    c.s.write_fleet(&with_check("select count(*) from ledger"));
    let args = ["drill", "--tenant", c.tenant(), "--json"];
    let (child, reached, stderr) = c.s.spawn_held_at(&args, "drill-healthy", 10_000);
    assert!(reached, "the drill did not reach its health gate");
    let tenant_label = format!("label=slipway.drill.tenant={}", c.tenant());
    let running = docker(&["ps", "--filter", &tenant_label, "--format", "{{.Names}}"]);
    let drilled: Vec<&str> = running.lines().collect();
    assert_eq!(drilled.len(), 3, "{drilled:?}");
    let db = drilled.iter().find(|n| n.ends_with("-postgres")).unwrap_or_else(|| panic!("{drilled:?}")).to_string();
    let live_volumes: Vec<String> = c.s.inspect(&c.pg)["Mounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["Name"].as_str().map(str::to_string))
        .collect();
    let mut volumes = Vec::new();
    for n in &drilled {
        for m in c.s.inspect(n)["Mounts"].as_array().cloned().unwrap_or_default() {
            if let Some(v) = m["Name"].as_str() {
                assert!(!live_volumes.iter().any(|l| l == v), "{n} mounts the live database's volume {v}");
                volumes.push(v.to_string());
            }
        }
    }
    let child = child.wait_with_output().unwrap();
    let out = crate::support::Out {
        code: child.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&child.stdout).into_owned(),
        stderr: stderr.join().unwrap_or_default(),
    };
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let t = &out.json()["report"]["tenants"][0];
    assert_eq!(t["outcome"], "passed", "{t}");
    assert_eq!(t["db_check"], dumped.to_string(), "the check must answer the dump's rows: {t}");
    assert_eq!(t["db_container"], db.as_str(), "{t}");
    assert_eq!(drill_left(&c.s, &out.run_id()), Vec::<String>::new());
    let kept: Vec<&String> = volumes
        .iter()
        .filter(|v| Command::new("docker").args(["volume", "inspect", v]).output().unwrap().status.success())
        .collect();
    assert!(kept.is_empty(), "the drill left volumes {kept:?}");
    c.assert_back("the drill");
    let status = c.s.slipway(&["status", "--json"]).json();
    let st = &status["report"]["apps"][0]["tenants"][0];
    assert_eq!(st["last_db_drill"]["check"], dumped.to_string(), "{st}");
    assert!(st["last_db_drill"]["at"].is_string(), "{st}");
}

/// A stack whose Postgres service was upgraded since the snapshot: the drill boots that
/// service's drill container from the image the dump was taken with (the manifest's image id),
/// not the one it runs now, and the live stack keeps its new image.
#[test]
fn a_stack_drill_boots_its_database_service_from_the_image_the_dump_was_taken_with() {
    let c = case("");
    c.s.write_fleet(&format!("{}check = \"select count(*) from ledger\"\n", fleet(&c.s, &c.img, &c.img.app, "")));
    let out = c.s.slipway(&["snapshot", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let dumped_with = c.s.inspect(&c.pg)["Image"].as_str().unwrap().to_string();
    // Another build of the database, rolled out to the stack after the snapshot.
    let pg2 = pg_build2(&c.img);
    c.s.write_fleet(&format!(
        "{}check = \"select count(*) from ledger\"\n",
        fleet_pg(&c.s, &c.img, &pg2, &c.img.app, "")
    ));
    let out = c.s.slipway(&["rollout", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let now_runs = c.s.inspect(&c.pg)["Image"].as_str().unwrap().to_string();
    assert_ne!(now_runs, dumped_with, "the test needs another image id");

    // Killed right after the replay and the check: the database service's drill container is
    // there to inspect.
    let out = c.s.slipway_env(&["drill", "--tenant", c.tenant()], &[("SLIPWAY_TEST_CRASH_AT", "drill-after-database")]);
    assert_eq!(out.code, -1, "{} {}", out.stdout, out.stderr);
    let tenant_label = format!("label=slipway.drill.tenant={}", c.tenant());
    let made = docker(&["ps", "-a", "--filter", &tenant_label, "--format", "{{.Names}}"]);
    let db = made.lines().find(|n| n.ends_with("-postgres")).unwrap_or_else(|| panic!("{made}")).to_string();
    assert_eq!(c.s.inspect(&db)["Image"].as_str(), Some(dumped_with.as_str()), "the drill's database image");
    assert_eq!(c.s.slipway(&["recover"]).code, 0);
    // A whole drill passes on it; the live database runs the new build.
    let out = c.s.slipway(&["drill", "--tenant", c.tenant(), "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert_eq!(out.json()["report"]["tenants"][0]["outcome"], "passed", "{}", out.stdout);
    assert_eq!(drill_left(&c.s, &out.run_id()), Vec::<String>::new());
    assert_eq!(c.s.inspect(&c.pg)["Image"].as_str(), Some(now_runs.as_str()));
}
