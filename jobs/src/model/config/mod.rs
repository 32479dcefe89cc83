//! The two configuration files, each validated completely when loaded: unknown keys, tag-only
//! images, bad tenant ids and impossible values are errors that name the file, the key and the
//! fix. [`host`]: the host config (TOML on the host, never in git, every key overridable by a
//! `SLIPWAY_…` environment variable). [`fleet`]: `fleet.toml`, the desired state read from git.
//! Defaults live in these two files and nowhere else; `deploy/config.example.toml` documents them.

pub mod database;
pub mod fleet;
pub mod hooks;
pub mod host;
pub mod notify;
pub mod rollout;
pub mod stack;
pub mod window;

pub use database::*;
pub use fleet::*;
pub use hooks::{HookSpec, Hooks, HOOK_SKIP};
pub use host::*;
pub use notify::{Format, NotifyLevel, SmtpTls, Target};
pub use rollout::{LabelExpr, OnBudget, RolloutSpec, WaveSize, WaveSpec};
pub use stack::{Service, Stack};
pub use window::{closed_for, WindowKind, WindowSpec};

/// The known word `word` is most likely a typo of, if one is close enough (by edit distance).
pub fn closest<'a>(word: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(2);
    known
        .into_iter()
        .map(|k| (strsim::damerau_levenshtein(&word.to_lowercase(), &k.to_lowercase()), k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// serde's "unknown field `x`, expected one of `a`, `b`" as slipway says it: the key, the
/// closest known key, else the known keys. None when `msg` is about something else.
pub(crate) fn unknown_key(msg: &str, table: Option<&str>) -> Option<String> {
    let rest = &msg[msg.find("unknown field `")? + "unknown field `".len()..];
    let key = &rest[..rest.find('`')?];
    let known: Vec<&str> = rest[key.len() + 1..].split('`').skip(1).step_by(2).collect();
    let full = |k: &str| table.map_or_else(|| k.to_string(), |t| format!("{t}.{k}"));
    Some(match closest(key, known.iter().copied()) {
        Some(k) => format!("unknown key `{}`; did you mean `{}`?", full(key), full(k)),
        None if known.is_empty() => format!("unknown key `{}`; this table takes no keys", full(key)),
        None => format!("unknown key `{}`; known keys: {}", full(key), known.join(", ")),
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::error::Result;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn host(text: &str, env: &[(&str, &str)]) -> Result<HostConfig> {
        HostConfig::parse(text, "config.toml", env.iter().map(|(a, b)| (a.to_string(), b.to_string())))
    }

    fn app(extra: &str) -> String {
        format!(
            "[[app]]\nname = \"pulse\"\nimage = \"reg/pulse@sha256:{HEX}\"\nselect = \"pulse.managed=true\"\n\
             tenant_from = \"name:pulse-{{tenant}}\"\ndata_dir = \"/data/tenants/{{tenant}}\"\n\
             health = {{ path = \"/api/health\", port = 8080 }}\n{extra}"
        )
    }

    #[test]
    fn the_deploy_examples_parse() {
        host(include_str!("../../../../deploy/config.example.toml"), &[]).unwrap();
        Fleet::parse(include_str!("../../../../deploy/fleet.example.toml"), "fleet.example.toml").unwrap();
    }

    #[test]
    fn minimal_host_config_gets_the_documented_defaults() {
        let c = host("[desired]\nrepo = \"/srv/git/fleet.git\"\n", &[]).unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/slipway"));
        assert_eq!(c.backup_root, PathBuf::from("/data/backups"));
        assert_eq!(c.desired.branch, "main");
        assert_eq!(c.retention.keep_daily, Some(7));
        assert_eq!(c.retention.keep_rollout_runs, Some(5));
        assert!(c.remote.is_none());
        assert!(c.snapshot.staging, "daily snapshots pause only for the delta unless turned off");
        let off = host("[desired]\nrepo = \"/r\"\n[snapshot]\nstaging = false\n", &[]).unwrap();
        assert!(!off.snapshot.staging);
        let env = host("[desired]\nrepo = \"/r\"\n", &[("SLIPWAY_SNAPSHOT_STAGING", "false")]).unwrap();
        assert!(!env.snapshot.staging);
    }

    #[test]
    fn drill_keys_have_documented_defaults_env_overrides_and_checked_patterns() {
        let c = host("[desired]\nrepo = \"/r\"\n", &[]).unwrap();
        assert_eq!(c.drill.max_age_days, 35);
        assert_eq!(c.drill.strip_labels, ["caddy*", "com.docker.compose.*"]);
        let c = host(
            "[desired]\nrepo = \"/r\"\n[drill]\nstrip_labels = [\"x.route\"]\n",
            &[("SLIPWAY_DRILL_MAX_AGE_DAYS", "7")],
        )
        .unwrap();
        assert_eq!((c.drill.max_age_days, c.drill.strip_labels), (7, vec!["x.route".to_string()]));
        let c = host("[desired]\nrepo = \"/r\"\n", &[("SLIPWAY_DRILL_STRIP_LABELS", "a.*, b")]).unwrap();
        assert_eq!(c.drill.strip_labels, ["a.*", "b"]);
        for bad in ["\"*\"", "\"\"", "\"a b\""] {
            let e = host(&format!("[desired]\nrepo = \"/r\"\n[drill]\nstrip_labels = [{bad}]\n"), &[])
                .unwrap_err()
                .to_string();
            assert!(e.contains("drill.strip_labels"), "{bad}: {e}");
        }
        let e = host("[desired]\nrepo = \"/r\"\n[drill]\nmax_age_day = 3\n", &[]).unwrap_err().to_string();
        assert!(e.contains("did you mean `drill.max_age_days`?"), "{e}");
    }

    #[test]
    fn label_patterns_match_whole_keys_with_star_for_any_run() {
        for (pattern, key, want) in [
            ("caddy*", "caddy", true),
            ("caddy*", "caddy.reverse_proxy", true),
            ("caddy*", "xcaddy", false),
            ("com.docker.compose.*", "com.docker.compose.project", true),
            ("com.docker.compose.*", "com.docker.compose", false),
            ("*.rule", "traefik.http.routers.a.rule", true),
            ("a*b*c", "a-x-b-y-c", true),
            ("a*b*c", "a-c-b", false),
            ("exact", "exact", true),
            ("exact", "exact.not", false),
        ] {
            assert_eq!(label_matches(pattern, key), want, "{pattern} vs {key}");
        }
    }

    #[test]
    fn environment_overrides_keys_and_unknown_variables_are_errors() {
        let c = host(
            "[desired]\nrepo = \"/r\"\n",
            &[
                ("SLIPWAY_BACKUP_ROOT", "/b"),
                ("SLIPWAY_REMOTE_BUCKET", "bk"),
                ("SLIPWAY_REMOTE_PATH_STYLE", "true"),
                ("SLIPWAY_CONFIG", "/ignored"),
            ],
        )
        .unwrap();
        assert_eq!(c.backup_root, PathBuf::from("/b"));
        let r = c.remote.unwrap();
        assert_eq!((r.bucket.as_str(), r.path_style), ("bk", true));
        let e = host("[desired]\nrepo = \"/r\"\n", &[("SLIPWAY_BACKUP_RUT", "/b")]).unwrap_err().to_string();
        assert!(e.contains("SLIPWAY_BACKUP_RUT") && e.contains("did you mean SLIPWAY_BACKUP_ROOT?"), "{e}");
    }

    #[test]
    fn a_misspelled_variable_or_key_names_the_closest_known_one() {
        let env_cases = [
            ("SLIPWAY_REMOTE_BUKET", "SLIPWAY_REMOTE_BUCKET"),
            ("SLIPWAY_CONIFG", "SLIPWAY_CONFIG"),
            ("SLIPWAY_RETENTION_KEEP_DAYLY", "SLIPWAY_RETENTION_KEEP_DAILY"),
            ("SLIPWAY_TEST_PAUSE", "SLIPWAY_TEST_PAUSE_AT"),
        ];
        for (typo, meant) in env_cases {
            let e = host("[desired]\nrepo = \"/r\"\n", &[(typo, "x")]).unwrap_err().to_string();
            assert!(e.contains(typo) && e.contains(&format!("did you mean {meant}?")), "{typo} -> {e}");
        }
        // Nothing close: no guess, the list instead.
        let e = host("[desired]\nrepo = \"/r\"\n", &[("SLIPWAY_ZZZ", "x")]).unwrap_err().to_string();
        assert!(!e.contains("did you mean") && e.contains("SLIPWAY_BACKUP_ROOT"), "{e}");

        let key_cases = [
            ("backup_rot = \"/x\"\n[desired]\nrepo = \"/r\"\n", "line 1", "`backup_rot`", "`backup_root`"),
            (
                "[desired]\nrepo = \"/r\"\n[retention]\nkepp_daily = 3\n",
                "line 4",
                "`retention.kepp_daily`",
                "`retention.keep_daily`",
            ),
            ("[desired]\nrepo = \"/r\"\nbranh = \"x\"\n", "line 3", "`desired.branh`", "`desired.branch`"),
        ];
        for (text, line, key, meant) in key_cases {
            let e = host(text, &[]).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("config.toml: {line}: unknown key {key}; did you mean {meant}?")),
                "{text:?} -> {e}"
            );
        }
        // The same typo where env supplies a required key: still caught, still a guess.
        let e = host("[retention]\nkeep_dayly = 3\n", &[("SLIPWAY_DESIRED_REPO", "/r")]).unwrap_err().to_string();
        assert!(e.contains("`retention.keep_dayly`") && e.contains("did you mean `retention.keep_daily`?"), "{e}");

        for (text, key, meant) in [
            (app("helth_path = 1\n"), "`helth_path`", None),
            (app("stop_timout_s = 5\n"), "`stop_timout_s`", Some("`stop_timeout_s`")),
            (app("").replace("port = 8080", "prot = 8080"), "`prot`", Some("`port`")),
            ("apps = 1\n".to_string(), "`apps`", Some("`app`")),
        ] {
            let e = Fleet::parse(&text, "fleet.toml").unwrap_err().to_string();
            assert!(e.starts_with("fleet.toml: ") && e.contains(&format!("unknown key {key}")), "{e}");
            if let Some(m) = meant {
                assert!(e.contains(&format!("did you mean {m}?")), "{e}");
            }
        }
    }

    #[test]
    fn bad_host_configs_name_the_file_and_key() {
        let cases: &[(&str, &str)] = &[
            ("[desired]\nrepo = \"/r\"\nbackup_rot = \"/x\"\n", "backup_rot"),
            ("backup_root = \"/x\"\n", "desired"),
            ("[desired]\nrepo = \"/r\"\n[remote]\nbucket = \"b\"\nconcurrency = 11\n", "remote.concurrency"),
            ("[desired]\nrepo = \"/r\"\nstate_dir = \"rel\"\n", "state_dir"),
            ("[desired\nrepo=", "config.toml"),
        ];
        for (text, needle) in cases {
            let e = host(text, &[]).unwrap_err().to_string();
            assert!(e.contains("config.toml") && e.contains(needle), "{text:?} -> {e}");
        }
    }

    #[test]
    fn a_valid_fleet_parses_with_defaults() {
        let f = Fleet::parse(&app("hold = [\"t-2\"]\n"), "fleet.toml").unwrap();
        let a = &f.apps[0];
        assert_eq!(a.stop_timeout_s, 30);
        assert_eq!(a.health.timeout_s, 60);
        assert_eq!(a.quiesce, Quiesce::Pause);
        assert_eq!(a.hold[0].as_str(), "t-2");
        let labels = Default::default();
        assert_eq!(a.tenant_from.tenant_of("pulse-t-1", &labels).as_deref(), Some("t-1"));
        assert_eq!(a.tenant_from.tenant_of("other", &labels), None);
        assert_eq!(a.data_dir_of(&"t-1".parse().unwrap()), PathBuf::from("/data/tenants/t-1"));
    }

    #[test]
    fn the_proxy_gate_is_opt_in_and_its_host_is_per_tenant() {
        assert!(Fleet::parse(&app(""), "fleet.toml").unwrap().apps[0].proxy.is_none());
        let text = app("[app.proxy]\nentrypoint = \"http://127.0.0.1:8000/\"\nhost = \"{tenant}.cloud.example.com\"\n");
        let f = Fleet::parse(&text, "fleet.toml").unwrap();
        let p = f.apps[0].proxy.as_ref().unwrap();
        assert_eq!(p.timeout_s, 30);
        assert_eq!(p.host_of(&"t-1".parse().unwrap()), "t-1.cloud.example.com");
        assert_eq!(p.url(&f.apps[0].health), "http://127.0.0.1:8000/api/health");
    }

    #[test]
    fn select_is_a_label_filter_or_a_name_prefix() {
        let cases: &[(&str, Result<Selector, &str>)] = &[
            ("pulse.managed=true", Ok(Selector::Label { key: "pulse.managed".into(), value: Some("true".into()) })),
            ("pulse.managed", Ok(Selector::Label { key: "pulse.managed".into(), value: None })),
            ("name:pulse-*", Ok(Selector::Name { prefix: "pulse-".into() })),
            ("name:pulse-", Err("trailing '*'")),
            ("name:*", Err("trailing '*'")),
            ("name:pu*lse-*", Err("trailing '*'")),
            ("=x", Err("name:<prefix>*")),
        ];
        for (text, want) in cases {
            let got = text.parse::<Selector>();
            match (want, &got) {
                (Ok(w), Ok(g)) => {
                    assert_eq!(g, w, "{text}");
                    assert_eq!(g.to_string(), *text, "round trip");
                }
                (Err(needle), Err(e)) => assert!(e.contains(needle) && e.contains(text), "{text}: {e}"),
                _ => panic!("{text}: {got:?}"),
            }
        }
        let by_name: Selector = "name:pulse-*".parse().unwrap();
        assert!(by_name.name_matches("pulse-t1") && !by_name.name_matches("other-pulse-t1"));
        assert_eq!(by_name.label_filter(), None);
        let f = Fleet::parse(&app("").replace("pulse.managed=true", "name:pulse-*"), "fleet.toml").unwrap();
        assert_eq!(f.apps[0].select, by_name);
    }

    #[test]
    fn each_bad_fleet_input_gets_a_message_naming_file_app_and_key() {
        let tag = app("").replace(&format!("reg/pulse@sha256:{HEX}"), "reg/pulse:latest");
        let cases: Vec<(String, &[&str])> = vec![
            (tag, &["fleet.toml", "app \"pulse\"", "not pinned by digest", "reg/pulse@sha256:"]),
            (app("").replace(HEX, "abc"), &["app \"pulse\"", "sha256"]),
            (app("canary = \"../etc\"\n"), &["app \"pulse\"", "canary", "../etc"]),
            (app("hold = [\"a b\"]\n"), &["hold", "a b"]),
            (app("colour = 1\n"), &["app \"pulse\"", "colour"]),
            (app("").replace("name:pulse-{tenant}", "pulse"), &["tenant_from"]),
            (app("").replace("/data/tenants/{tenant}", "data"), &["data_dir"]),
            (format!("{}\n{}", app(""), app("")), &["used twice"]),
            ("apps = 1\n".into(), &["unknown key `apps`"]),
            ("[[app]\nname=".into(), &["fleet.toml"]),
            (
                app("proxy = { entrypoint = \"127.0.0.1:80\", host = \"{tenant}.x\" }\n"),
                &["proxy.entrypoint", "127.0.0.1:80", "http://"],
            ),
            (
                app("proxy = { entrypoint = \"http://127.0.0.1:80/api\", host = \"{tenant}.x\" }\n"),
                &["proxy.entrypoint", "no path"],
            ),
            (
                app("proxy = { entrypoint = \"http://127.0.0.1:80\", host = \"pulse.x\" }\n"),
                &["proxy.host", "pulse.x", "{tenant}"],
            ),
            (
                app("proxy = { entrypoint = \"http://127.0.0.1:80\", host = \"{tenant}.x\", path = \"h\" }\n"),
                &["proxy.path"],
            ),
            (
                app("proxy = { entrypoint = \"http://127.0.0.1:80\", host = \"{tenant}.x\", timeout_s = 0 }\n"),
                &["proxy.timeout_s"],
            ),
            (app("proxy = { entrypoint = \"http://127.0.0.1:80\", hots = \"{tenant}.x\" }\n"), &["`hots`", "`host`"]),
            (
                app("database = { kind = \"sqlite\", paths = [\"../t2/app.db\"] }\n"),
                &["fleet.toml", "app \"pulse\"", "database.paths", "\"../t2/app.db\"", ".."],
            ),
            (
                app("database = { kind = \"postgres\", container = \"pg\", databases = \"all\", user = \"u\" }\n"),
                &["fleet.toml", "app \"pulse\"", "database.container", "\"pg\""],
            ),
            (
                app("database = { kind = \"postgres\", containr = \"pg-{tenant}\" }\n"),
                &["fleet.toml", "app \"pulse\"", "containr"],
            ),
        ];
        for (text, needles) in cases {
            let e = Fleet::parse(&text, "fleet.toml").unwrap_err().to_string();
            for n in needles {
                assert!(e.contains(n), "missing {n:?} in: {e}");
            }
        }
    }
}
