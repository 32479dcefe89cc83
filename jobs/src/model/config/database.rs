//! `[app.database]` of `fleet.toml`: the database a tenant keeps besides its files, declared by
//! the operator and never guessed from an image name. Today: Postgres in a container of its
//! own per tenant (`container = "pg-{tenant}"`), dumped live inside that container.
//!
//! Invariants: every name that reaches a command line inside the container (database, user) is
//! validated here — letters, digits, '_', '-', '$', never starting with '-' — so it can never be
//! read as an option; the container template holds `{tenant}` exactly once.

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
    /// SQLite's paths inside the data dir (parsed so the refusal names the kind, not the key).
    #[serde(default)]
    #[allow(dead_code)]
    paths: Option<Vec<String>>,
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
    pub(crate) fn validate(self) -> std::result::Result<DatabaseSpec, String> {
        let kind = match self.kind.as_str() {
            "postgres" => DatabaseKind::Postgres,
            "sqlite" => {
                return Err("database.kind \"sqlite\" is not supported yet (only \"postgres\" is); remove \
                            [app.database] to archive the SQLite files with the data dir as before"
                    .into())
            }
            k => return Err(format!("database.kind \"{k}\" must be \"postgres\"")),
        };
        if self.paths.is_some() {
            return Err("database.paths is for kind \"sqlite\", which is not supported yet".into());
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
        let check = match self.check {
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
        };
        Ok(DatabaseSpec { kind, container, databases, user, password_file, check })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> std::result::Result<DatabaseSpec, String> {
        let raw: RawDatabase = toml::from_str(body).map_err(|e| e.message().to_string())?;
        raw.validate()
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
            (format!("kind = \"sqlite\"\n{ok}"), &["database.kind", "sqlite", "not supported yet"]),
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
