//! `[app.database]` of `fleet.toml`: the database a tenant keeps besides its files, declared by
//! the operator and never guessed from an image name: Postgres in a container of its own per
//! tenant (`container = "pg-{tenant}"`), dumped live inside that container; or SQLite files in
//! the tenant's data dir (`paths = ["app.db"]`), copied online through SQLite's backup API.
//!
//! Invariants: every name that reaches a command line inside the container (database, user) is
//! validated here — letters, digits, '_', '-', '$', never starting with '-' — so it can never be
//! read as an option; the container template holds `{tenant}` exactly once; a SQLite path is
//! relative to the data dir, made of plain names (no `..`, `.`, empty component or NUL), and
//! is not itself a `-wal`, `-shm` or `-journal` file. A stack's SQLite files (`service` set)
//! are absolute container paths of that service, otherwise held to the same rules; that they
//! lie under one of the service's `data` paths is checked with the stack (`fleet`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::types::TenantId;

/// Which database engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DatabaseKind {
    /// Postgres: `pg_dump -Fc` per database and `pg_dumpall --globals-only`, run inside the
    /// database's container.
    Postgres,
}

impl DatabaseKind {
    /// The word of fleet.toml and the manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            DatabaseKind::Postgres => "postgres",
        }
    }
}

/// Which databases a tenant's server holds that are dumped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Databases {
    /// Every database the server lists that accepts connections, templates excepted.
    All,
    /// These, in this order.
    Named(Vec<String>),
}

/// `[app.database]`: where a tenant's database lives and how it is reached.
#[derive(Debug, Clone, Serialize)]
pub struct DatabaseSpec {
    /// The engine.
    pub kind: DatabaseKind,
    /// The name template (with `{tenant}`) of the container the database runs in.
    pub container: String,
    /// The databases dumped.
    pub databases: Databases,
    /// The database user the dump and the replay connect as.
    pub user: String,
    /// A file on this host holding that user's password (given to the tools as `PGPASSWORD`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// A query a drill runs on the replayed dump (in the first database dumped), through
    /// `psql -tA`; its answer is recorded, an error fails the drill.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
}

impl DatabaseSpec {
    /// The database container of `tenant`.
    pub fn container_of(&self, tenant: &TenantId) -> String {
        self.container.replace("{tenant}", tenant.as_str())
    }
}

/// `[app.database]` with `kind = "sqlite"`: the SQLite files of each tenant's data dir, or of
/// one service's data mounts for a stack tenant.
#[derive(Debug, Clone, Serialize)]
pub struct SqliteSpec {
    /// Each file, validated, '/'-separated: relative to the tenant's data dir, or (with
    /// `service`) an absolute path in that service's container, under one of its `data` paths.
    pub paths: Vec<String>,
    /// A stack's only: the service whose data mounts hold the files.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// A query a drill runs on each restored copy; its answer is recorded, an error fails the
    /// drill.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
}

impl SqliteSpec {
    /// Check a stack app's declaration (validated with `in_stack`, so `service` is set) against
    /// its services: `service` names a writer with data, and every path lies beneath one of its
    /// `data` paths. The error names the key and the value.
    pub(super) fn check_in_stack(&self, stack: &super::stack::Stack) -> std::result::Result<(), String> {
        let name = self.service.as_deref().unwrap_or_default();
        let Some(svc) = stack.service(name) else {
            return Err(format!(
                "database.service \"{name}\" is not a service of the stack (services: {})",
                stack.names()
            ));
        };
        if !svc.writes || svc.data.is_empty() {
            return Err(format!(
                "database.service \"{name}\" writes no data (it needs writes = true and data = […]); its SQLite files \
                 must be in one of its data mounts"
            ));
        }
        for p in &self.paths {
            if !svc.data.iter().any(|d| below(p, d).is_some()) {
                return Err(format!(
                    "database.paths: \"{p}\" is under none of services.{name}.data ({}); name a file inside one of \
                     the service's data mounts",
                    svc.data.join(", ")
                ));
            }
        }
        Ok(())
    }
}

/// The rest of the container path `path` beneath the container path `dir` (`db/app.db` of
/// `/data/db/app.db` beneath `/data`), if `path` lies strictly beneath it.
pub fn below<'a>(path: &'a str, dir: &str) -> Option<&'a str> {
    let rest = path.strip_prefix(dir.trim_end_matches('/'))?.strip_prefix('/')?;
    (!rest.is_empty()).then_some(rest)
}

/// What `[app.database]` declares.
#[derive(Debug, Clone)]
pub enum Declared {
    /// A Postgres server, dumped inside its container.
    Postgres(DatabaseSpec),
    /// SQLite files in the data dir, copied online.
    Sqlite(SqliteSpec),
}

/// The longest SQLite path accepted (bytes).
const MAX_SQLITE_PATH: usize = 1024;

/// Why `p` is not a SQLite path slipway accepts in `paths`, if it is not: relative to the data
/// dir, or (`in_stack`) an absolute path in a stack service's container.
fn bad_sqlite_path(p: &str, in_stack: bool) -> Option<&'static str> {
    if p.is_empty() {
        return Some("is empty");
    }
    let p = match p.strip_prefix('/') {
        Some(_) if !in_stack => return Some("is absolute; give it relative to the tenant's data dir, e.g. \"app.db\""),
        None if in_stack => {
            return Some(
                "is relative; a stack's SQLite file is its absolute path in the service's container, under one of \
                 its data paths, e.g. \"/data/app.db\"",
            )
        }
        Some(rest) => rest,
        None => p,
    };
    if p.len() > MAX_SQLITE_PATH || p.contains('\0') || p.chars().any(char::is_control) {
        return Some("must be at most 1024 bytes without NUL or control characters");
    }
    if p.split('/').any(|c| c == "..") {
        return Some("contains \"..\": it must name a file inside the tenant's data dir");
    }
    if p.split('/').any(|c| c.is_empty() || c == ".") {
        return Some("has an empty or \".\" component; write it as plain names joined by '/', e.g. \"db/app.db\"");
    }
    if ["-wal", "-shm", "-journal"].iter().any(|s| p.ends_with(s)) {
        return Some("is a SQLite side file; name the database file itself (its -wal, -shm and -journal go with it)");
    }
    None
}

/// `[app.database]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDatabase {
    kind: String,
    #[serde(default)]
    container: Option<String>,
    #[serde(default)]
    databases: Option<RawDatabases>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    password_file: Option<String>,
    #[serde(default)]
    check: Option<String>,
    /// SQLite's paths inside the data dir (a stack's: in its service's container).
    #[serde(default)]
    paths: Option<Vec<String>>,
    /// A stack's SQLite files: the service whose data mounts hold them.
    #[serde(default)]
    service: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawDatabases {
    One(String),
    Many(Vec<String>),
}

/// The longest `check` query accepted.
const MAX_CHECK: usize = 4096;

/// Whether `s` is a name slipway passes to a database tool: 1–63 bytes of letters, digits, '_',
/// '-' or '$', not starting with '-' (never read as an option).
pub fn is_db_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'$')
}

impl RawDatabase {
    /// Validate `[app.database]` of an app that is a stack (`in_stack`) or a single container.
    pub(crate) fn validate(self, in_stack: bool) -> std::result::Result<Declared, String> {
        match self.kind.as_str() {
            "postgres" => self.validate_postgres().map(Declared::Postgres),
            "sqlite" => self.validate_sqlite(in_stack).map(Declared::Sqlite),
            k => Err(format!("database.kind \"{k}\" must be \"postgres\" or \"sqlite\"")),
        }
    }

    fn validate_sqlite(self, in_stack: bool) -> std::result::Result<SqliteSpec, String> {
        for (key, set) in [
            ("container", self.container.is_some()),
            ("databases", self.databases.is_some()),
            ("user", self.user.is_some()),
            ("password_file", self.password_file.is_some()),
        ] {
            if set {
                return Err(format!(
                    "database.{key} is for kind \"postgres\"; a SQLite database is named by its file in paths"
                ));
            }
        }
        let Some(paths) = self.paths else {
            return Err("database.paths is missing: the SQLite files, relative to the tenant's data dir, e.g. \
                        paths = [\"app.db\"] (a stack's: absolute paths in the service's container)"
                .into());
        };
        if paths.is_empty() {
            return Err("database.paths is an empty list: name at least one SQLite file, e.g. [\"app.db\"]".into());
        }
        match &self.service {
            None if in_stack => {
                return Err("database.service is missing: a stack's SQLite files are named by the service whose \
                            data mounts hold them (service = \"app\") and their absolute paths in its container \
                            (paths = [\"/data/app.db\"])"
                    .into())
            }
            Some(_) if !in_stack => {
                return Err("database.service names a service of a stack; this app has no [app.services] (a single \
                            container's SQLite paths are relative to its data dir)"
                    .into())
            }
            _ => {}
        }
        for p in &paths {
            if let Some(why) = bad_sqlite_path(p, in_stack) {
                return Err(format!("database.paths: \"{p}\" {why}"));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(twice) = paths.iter().find(|p| !seen.insert(p.as_str())) {
            return Err(format!("database.paths names \"{twice}\" twice"));
        }
        let check = check_query(self.check)?;
        Ok(SqliteSpec { paths, service: self.service, check })
    }

    fn validate_postgres(self) -> std::result::Result<DatabaseSpec, String> {
        let kind = DatabaseKind::Postgres;
        if self.paths.is_some() {
            return Err("database.paths is for kind \"sqlite\"; a Postgres database is named in databases".into());
        }
        if self.service.is_some() {
            return Err("database.service is for kind \"sqlite\"; a Postgres database is named by its container".into());
        }
        let Some(container) = self.container else {
            return Err("database.container is missing: the name of the container the database runs in, with \
                        {tenant}, e.g. \"pg-{tenant}\""
                .into());
        };
        let container_ok = container.matches("{tenant}").count() == 1
            && container.replace("{tenant}", "t").bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
            && container.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric() || b == b'{');
        if !container_ok {
            return Err(format!(
                "database.container \"{container}\" must be a container name with {{tenant}} exactly once (letters, \
                 digits, '_', '.', '-'), e.g. \"pg-{{tenant}}\""
            ));
        }
        let databases = match self.databases {
            None => {
                return Err("database.databases is missing: a list of database names, or \"all\"".into());
            }
            Some(RawDatabases::One(s)) if s == "all" => Databases::All,
            Some(RawDatabases::One(s)) => {
                return Err(format!("database.databases \"{s}\" must be \"all\" or a list, e.g. [\"{s}\"]"));
            }
            Some(RawDatabases::Many(v)) => {
                if v.is_empty() {
                    return Err("database.databases is an empty list: name at least one database, or \"all\"".into());
                }
                if let Some(bad) = v.iter().find(|d| !is_db_name(d)) {
                    return Err(format!(
                        "database.databases: \"{bad}\" is not a database name slipway accepts (1-63 letters, digits, \
                         '_', '-', '$', not starting with '-')"
                    ));
                }
                let mut seen = std::collections::BTreeSet::new();
                if let Some(twice) = v.iter().find(|d| !seen.insert(d.as_str())) {
                    return Err(format!("database.databases names \"{twice}\" twice"));
                }
                Databases::Named(v)
            }
        };
        let Some(user) = self.user else {
            return Err("database.user is missing: the database user the dump connects as, e.g. \"postgres\"".into());
        };
        if !is_db_name(&user) {
            return Err(format!(
                "database.user \"{user}\" is not a user name slipway accepts (1-63 letters, digits, '_', '-', '$', \
                 not starting with '-')"
            ));
        }
        let password_file = match self.password_file {
            Some(p) if !p.starts_with('/') => {
                return Err(format!("database.password_file \"{p}\" must be an absolute path on this host"));
            }
            p => p.map(PathBuf::from),
        };
        let check = check_query(self.check)?;
        Ok(DatabaseSpec { kind, container, databases, user, password_file, check })
    }
}

/// The `check` query, validated.
fn check_query(check: Option<String>) -> std::result::Result<Option<String>, String> {
    Ok(match check {
        Some(q) if q.trim().is_empty() => {
            return Err("database.check is empty: a query whose answer proves the data, e.g. \"select count(*) \
                        from users\", or remove the key"
                .into())
        }
        Some(q) if q.len() > MAX_CHECK || q.contains('\0') => {
            return Err(format!(
                "database.check {:?} must be one query of at most {MAX_CHECK} bytes without NUL",
                q.chars().take(40).collect::<String>()
            ))
        }
        Some(q) if q.trim_start().starts_with('\\') => {
            return Err(format!(
                "database.check \"{q}\" is a psql meta-command; give an SQL query, e.g. \"select count(*) from users\""
            ))
        }
        q => q,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn declared(body: &str) -> std::result::Result<Declared, String> {
        let raw: RawDatabase = toml::from_str(body).map_err(|e| e.message().to_string())?;
        raw.validate(body.contains("service ="))
    }

    fn parse(body: &str) -> std::result::Result<DatabaseSpec, String> {
        match declared(body)? {
            Declared::Postgres(d) => Ok(d),
            Declared::Sqlite(s) => Err(format!("a sqlite declaration: {s:?}")),
        }
    }

    fn sqlite(body: &str) -> std::result::Result<SqliteSpec, String> {
        match declared(&format!("kind = \"sqlite\"\n{body}"))? {
            Declared::Sqlite(s) => Ok(s),
            Declared::Postgres(d) => Err(format!("a postgres declaration: {d:?}")),
        }
    }

    #[test]
    fn a_sqlite_database_is_declared_by_its_files_in_the_data_dir() {
        let s = sqlite("paths = [\"app.db\", \"db/audit.sqlite3\"]\n").unwrap();
        assert_eq!(s.paths, vec!["app.db".to_string(), "db/audit.sqlite3".to_string()]);
        assert_eq!(s.check, None);
        let checked = sqlite("paths = [\"app.db\"]\ncheck = \"select count(*) from notes\"\n").unwrap();
        assert_eq!(checked.check.as_deref(), Some("select count(*) from notes"));
    }

    #[test]
    fn each_bad_sqlite_path_is_refused_naming_the_key_and_the_value() {
        let cases: &[(&str, &[&str])] = &[
            ("paths = [\"../other/app.db\"]", &["database.paths", "../other/app.db", ".."]),
            ("paths = [\"db/../../etc/shadow\"]", &["database.paths", "db/../../etc/shadow", ".."]),
            ("paths = [\"/data/app.db\"]", &["database.paths", "/data/app.db", "absolute"]),
            ("paths = [\"\"]", &["database.paths", "empty"]),
            ("paths = [\"db//app.db\"]", &["database.paths", "db//app.db", "empty"]),
            ("paths = [\"./app.db\"]", &["database.paths", "./app.db", "\".\""]),
            ("paths = [\"db/\"]", &["database.paths", "db/", "empty"]),
            ("paths = [\"app.db-wal\"]", &["database.paths", "app.db-wal", "side file"]),
            ("paths = [\"app\\u0000.db\"]", &["database.paths", "NUL"]),
            ("paths = []", &["database.paths", "empty list"]),
            ("paths = [\"a.db\", \"a.db\"]", &["database.paths", "twice"]),
            ("", &["database.paths", "missing"]),
            ("paths = [\"a.db\"]\ncontainer = \"pg-{tenant}\"", &["database.container", "postgres"]),
            ("paths = [\"a.db\"]\nuser = \"app\"", &["database.user", "postgres"]),
            ("paths = [\"a.db\"]\ncheck = \" \"", &["database.check", "empty"]),
        ];
        for (body, want) in cases {
            let e = sqlite(&format!("{body}\n")).unwrap_err();
            for w in *want {
                assert!(e.contains(w), "{body}: {e} lacks {w}");
            }
        }
    }

    #[test]
    fn a_stacks_sqlite_file_is_an_absolute_container_path_of_its_service_and_a_relative_one_is_refused() {
        let s = sqlite("service = \"app\"\npaths = [\"/data/db/app.db\"]\n").unwrap();
        assert_eq!((s.service.as_deref(), s.paths.as_slice()), (Some("app"), &["/data/db/app.db".to_string()][..]));
        let cases: &[(&str, &[&str])] = &[
            ("paths = [\"app.db\"]", &["database.paths", "\"app.db\"", "relative"]),
            ("paths = [\"/data/../etc/shadow\"]", &["database.paths", "/data/../etc/shadow", ".."]),
            ("paths = [\"/data//app.db\"]", &["database.paths", "/data//app.db", "empty"]),
            ("paths = [\"/\"]", &["database.paths", "empty"]),
            ("paths = [\"/data/app.db-wal\"]", &["database.paths", "side file"]),
        ];
        for (body, want) in cases {
            let e = sqlite(&format!("service = \"app\"\n{body}\n")).unwrap_err();
            for w in *want {
                assert!(e.contains(w), "{body}: {e} lacks {w}");
            }
        }
        let pg = "kind = \"postgres\"\ncontainer = \"pg-{tenant}\"\ndatabases = [\"app\"]\nuser = \"app\"\n";
        let e = declared(&format!("{pg}service = \"app\"\n")).unwrap_err();
        assert!(e.contains("database.service") && e.contains("sqlite"), "{e}");
        let raw = |b: &str| toml::from_str::<RawDatabase>(&format!("kind = \"sqlite\"\n{b}")).unwrap();
        let e = raw("paths = [\"/data/app.db\"]\n").validate(true).unwrap_err();
        assert!(e.contains("database.service is missing"), "{e}");
        let e = raw("service = \"app\"\npaths = [\"/data/app.db\"]\n").validate(false).unwrap_err();
        assert!(e.contains("database.service") && e.contains("no [app.services]"), "{e}");
    }

    #[test]
    fn a_container_path_is_beneath_a_dir_only_component_by_component() {
        for (path, dir, want) in [
            ("/data/app.db", "/data", Some("app.db")),
            ("/data/db/app.db", "/data/", Some("db/app.db")),
            ("/database/app.db", "/data", None),
            ("/data", "/data", None),
            ("/data/", "/data", None),
            ("/app.db", "/", Some("app.db")),
        ] {
            assert_eq!(below(path, dir), want, "{path} beneath {dir}");
        }
    }

    #[test]
    fn a_postgres_database_is_declared_with_its_container_databases_and_user() {
        let d = parse(
            "kind = \"postgres\"\ncontainer = \"pg-{tenant}\"\ndatabases = [\"app\", \"audit\"]\nuser = \"app\"\n",
        )
        .unwrap();
        assert_eq!(d.kind, DatabaseKind::Postgres);
        assert_eq!(d.databases, Databases::Named(vec!["app".into(), "audit".into()]));
        assert_eq!(d.container_of(&"t1".parse().unwrap()), "pg-t1");
        let all = parse(
            "kind = \"postgres\"\ncontainer = \"{tenant}-db\"\ndatabases = \"all\"\nuser = \"postgres\"\n\
             password_file = \"/etc/slipway/pg.pass\"\n",
        )
        .unwrap();
        assert_eq!(all.databases, Databases::All);
        assert_eq!(all.password_file, Some(PathBuf::from("/etc/slipway/pg.pass")));
        let checked = parse(
            "kind = \"postgres\"\ncontainer = \"pg-{tenant}\"\ndatabases = [\"app\"]\nuser = \"app\"\n\
             check = \"select count(*) from users\"\n",
        )
        .unwrap();
        assert_eq!(checked.check.as_deref(), Some("select count(*) from users"));
    }

    #[test]
    fn each_bad_database_value_is_refused_naming_the_key_and_the_value() {
        let ok = "container = \"pg-{tenant}\"\ndatabases = [\"app\"]\nuser = \"app\"\n";
        let cases: &[(String, &[&str])] = &[
            (format!("kind = \"sqlite\"\n{ok}"), &["database.container", "is for kind \"postgres\""]),
            (format!("{ok}paths = [\"app.db\"]\n"), &["database.paths", "sqlite"]),
            (format!("kind = \"mysql\"\n{ok}"), &["database.kind", "mysql"]),
            (ok.replace("pg-{tenant}", "pg"), &["database.container", "\"pg\"", "{tenant}"]),
            (ok.replace("pg-{tenant}", "pg {tenant}"), &["database.container", "pg {tenant}"]),
            (ok.replace("pg-{tenant}", "{tenant}-{tenant}"), &["database.container", "exactly once"]),
            (ok.replace("[\"app\"]", "\"app\""), &["database.databases", "\"app\"", "\"all\""]),
            (ok.replace("[\"app\"]", "[]"), &["database.databases", "empty"]),
            (ok.replace("[\"app\"]", "[\"--file=/x\"]"), &["database.databases", "--file=/x"]),
            (ok.replace("[\"app\"]", "[\"a b\"]"), &["database.databases", "a b"]),
            (ok.replace("[\"app\"]", "[\"app\", \"app\"]"), &["database.databases", "twice"]),
            (ok.replace("\"app\"\n", "\"-U\"\n"), &["database.user", "-U"]),
            (ok.replace("user = \"app\"\n", ""), &["database.user", "missing"]),
            (format!("{ok}password_file = \"pg.pass\"\n"), &["database.password_file", "pg.pass", "absolute"]),
            (format!("{ok}check = \" \"\n"), &["database.check", "empty"]),
            (format!("{ok}check = \"\\\\! rm -rf /\"\n"), &["database.check", "meta-command"]),
            (format!("{ok}check = \"{}\"\n", "x".repeat(5000)), &["database.check", "4096"]),
        ];
        for (body, want) in cases {
            let e = parse(&format!("kind = \"postgres\"\n{body}").replacen("kind = \"postgres\"\nkind", "kind", 1))
                .unwrap_err();
            for w in *want {
                assert!(e.contains(w), "{body}: {e} lacks {w}");
            }
        }
    }
}
