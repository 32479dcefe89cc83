//! Adopting a running host: `slipway init` proposes fleet.toml and a host config from the
//! containers that run (never changing one), `slipway doctor` says what a first run still
//! needs, and the whole path from running tenants to a snapshot and a rollout works with only
//! the edits the README asks for.

use std::path::Path;
use std::process::Command;

use crate::support::reports::{Doctor, Init};
use crate::support::{files_under, sh, slipway_with_config, Env, Sandbox};

fn docker(args: &[&str]) -> String {
    sh(Command::new("docker").args(args))
}

/// Each container's id and start time: what would change if init touched one.
fn fingerprint(names: &[String]) -> Vec<String> {
    names
        .iter()
        .map(|n| docker(&["inspect", "--format", "{{.Id}} {{.State.StartedAt}} {{.State.Status}}", n]))
        .collect()
}

#[test]
fn init_proposes_both_apps_of_a_host_lists_its_strays_and_touches_no_container() {
    let s = Sandbox::new();
    let id = s.id().to_string();
    let shop = s.push_fixture_as("v1", "shop");
    let blog = s.push_fixture_as("v1", "blog");
    let cache = s.push_fixture_as("v1", "cache");
    let shop_label = format!("app.name=shop-{id}");
    let mut names = Vec::new();
    // The shop: a label of its own; the blog: only its names tell its containers apart.
    for t in ["t1", "t2"] {
        names.push(s.add_tenant_with(&format!("shop-{t}"), &shop, &["--label", &shop_label, "--expose", "8080"]));
        s.write_data(&format!("shop-{t}"), "db/records.txt", &format!("shop {t}\n"));
    }
    for t in ["b1", "b2"] {
        names.push(s.add_tenant_with(&format!("blog-{t}"), &blog, &["--expose", "8080"]));
    }
    // Strays: a one-off, a shop container without a data bind, and an app built on this host
    // (a tag no registry has, so no digest to pin).
    names.push(s.add_tenant("cache", &cache));
    let debug = format!("{id}-shop-debug");
    let label = format!("slipway.test={id}");
    docker(&["run", "-d", "--name", &debug, "--label", &label, "--network", s.network(), &shop]);
    names.push(debug.clone());
    let local = format!("localbuild/{id}-cron:dev");
    docker(&["tag", Env::get().fixture("v1"), &local]);
    for t in ["a", "b"] {
        names.push(s.add_tenant(&format!("cron-{t}"), &local));
    }
    let before = fingerprint(&names);

    let dir = s.root().join("adopt");
    let dry = s.slipway(&["init", "--dir", dir.to_str().unwrap(), "--only", &label, "--dry-run", "--json"]);
    assert_eq!(dry.code, 0, "{}\n{}", dry.stdout, dry.stderr);
    assert!(!dir.exists(), "--dry-run wrote {}", dir.display());

    let out = s.slipway(&["init", "--dir", dir.to_str().unwrap(), "--only", &label, "--json"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let r: Init = out.report();
    assert_eq!(r.containers, 8);
    assert_eq!(r.apps.len(), 2, "{:?}", r.apps);

    let shop_app = r.apps.iter().find(|a| a.repository.ends_with(&format!("/{id}-shop"))).unwrap();
    assert_eq!(shop_app.select, shop_label);
    assert_eq!(shop_app.tenant_from, format!("name:{id}-shop-{{tenant}}"));
    assert_eq!(shop_app.data_dir, format!("{}/shop-{{tenant}}", s.root().join("data").display()));
    assert_eq!(shop_app.image, shop, "the digest the tenants run");
    assert_eq!(
        (shop_app.health_port, shop_app.health_path.as_str(), shop_app.health_checked),
        (8080, "/api/health", true)
    );
    let tenants: Vec<(&str, &str)> =
        shop_app.tenants.iter().map(|t| (t.tenant.as_str(), t.container.as_str())).collect();
    assert_eq!(tenants, [("t1", names[0].as_str()), ("t2", names[1].as_str())]);

    let blog_app = r.apps.iter().find(|a| a.repository.ends_with(&format!("/{id}-blog"))).unwrap();
    assert_eq!(blog_app.select, format!("name:{id}-blog-*"));
    assert_eq!(blog_app.tenant_from, format!("name:{id}-blog-{{tenant}}"));
    assert_eq!(blog_app.image, blog);

    let reason = |c: &str| {
        r.skipped
            .iter()
            .find(|x| x.container == c)
            .unwrap_or_else(|| panic!("{c} not skipped: {:?}", r.skipped))
            .reason
            .clone()
    };
    assert!(reason(&format!("{id}-cache")).contains("one-off"));
    assert!(reason(&debug).contains("no bind mount"));
    for t in ["a", "b"] {
        let why = reason(&format!("{id}-cron-{t}"));
        assert!(why.contains("no registry digest") && why.contains("push it to a registry"), "{why}");
    }
    assert_eq!(r.skipped.len(), 4, "{:?}", r.skipped);

    // The files: the host config 0600, both as `config check` loads them.
    use std::os::unix::fs::PermissionsExt;
    assert!(r.config.written && r.fleet.written);
    assert_eq!(std::fs::metadata(&r.config.path).unwrap().permissions().mode() & 0o777, 0o600);
    let fleet = std::fs::read_to_string(&r.fleet.path).unwrap();
    assert_eq!(fleet, r.fleet.text);
    let parsed = slipway_jobs::config::Fleet::parse(&fleet, "fleet.toml").unwrap();
    assert_eq!(parsed.apps.len(), 2);
    slipway_jobs::config::HostConfig::load(&r.config.path).unwrap();
    assert_eq!(r.next.len(), 3, "{:?}", r.next);

    // Never over what is there, unless forced.
    std::fs::write(&r.fleet.path, "# mine\n").unwrap();
    let again = s.slipway(&["init", "--dir", dir.to_str().unwrap(), "--only", &label]);
    assert_eq!(again.code, 2, "{}\n{}", again.stdout, again.stderr);
    assert!(
        again.stderr.contains("fleet.toml exists") || again.stderr.contains("config.toml exists"),
        "{}",
        again.stderr
    );
    assert_eq!(std::fs::read_to_string(&r.fleet.path).unwrap(), "# mine\n");
    let forced = s.slipway(&["init", "--dir", dir.to_str().unwrap(), "--only", &label, "--force"]);
    assert_eq!(forced.code, 0, "{}\n{}", forced.stdout, forced.stderr);
    assert_eq!(std::fs::read_to_string(&r.fleet.path).unwrap(), r.fleet.text);

    assert_eq!(fingerprint(&names), before, "init changed a container");
}

/// Make the sandbox's dirs what install.sh makes them: 0700.
fn private(dirs: &[&Path]) {
    use std::os::unix::fs::PermissionsExt;
    for d in dirs {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
}

#[test]
fn doctor_on_a_healthy_host_has_no_fail_line_and_says_which_filesystem() {
    let s = Sandbox::new();
    let v1 = Env::get().fixture("v1");
    s.add_tenant("t1", v1);
    s.write_data("t1", "db/records.txt", "one\n");
    s.write_fleet(&s.fleet_app(v1, ""));
    s.use_shared_remote("");
    private(&[&s.state(), &s.backups()]);

    let out = s.slipway(&["doctor", "--json"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let r: Doctor = out.report();
    for check in ["config", "docker", "state_dir", "backup_root", "free_space", "desired", "remote"] {
        let l = r.line(check);
        assert_eq!(l.level, "ok", "{check}: {} (fix: {:?})", l.detail, l.fix);
    }
    // This machine runs no systemd: the timers line warns, and says what to do.
    let timers = r.line("timers");
    assert_ne!(timers.level, "fail", "{}", timers.detail);
    assert!(timers.level == "ok" || timers.fix.is_some(), "{timers:?}");
    assert!(r.checks.iter().all(|c| c.level != "fail"), "{:?}", r.checks);
    for d in &r.dirs {
        assert!(d.writable, "{}", d.key);
        assert!(d.filesystem.as_deref().is_some_and(|f| !f.is_empty()), "{:?}", d.filesystem);
        assert!(d.reflinks.is_some(), "{}: reflink support not determined", d.key);
    }
    // Its probes leave nothing behind.
    assert_eq!(files_under(&s.backups()), Vec::<std::path::PathBuf>::new());
}

#[test]
fn doctor_fails_naming_an_unreachable_desired_repo_and_remote() {
    let s = Sandbox::new();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let endpoint = format!("http://{dead}");
    s.append_config(&format!(
        "[remote]\nendpoint = \"{endpoint}\"\nbucket = \"b-{}\"\npath_style = true\n",
        s.id().to_lowercase()
    ));
    let missing = s.root().join("no-such-repo.git");
    let out = s.slipway_env(
        &["doctor", "--json"],
        &[
            ("SLIPWAY_DESIRED_REPO", missing.to_str().unwrap()),
            ("AWS_ACCESS_KEY_ID", "x"),
            ("AWS_SECRET_ACCESS_KEY", "y"),
        ],
    );
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    let r: Doctor = out.report();
    let desired = r.line("desired");
    assert_eq!(desired.level, "fail");
    assert!(desired.detail.contains(missing.to_str().unwrap()) && desired.fix.is_some(), "{desired:?}");
    let remote = r.line("remote");
    assert_eq!(remote.level, "fail");
    assert!(remote.detail.contains(&endpoint) && remote.fix.is_some(), "{remote:?}");
    assert_eq!(r.line("docker").level, "ok");
}

#[test]
fn an_existing_host_is_adopted_by_init_then_snapshotted_and_rolled() {
    let s = Sandbox::new();
    let id = s.id().to_string();
    let v1 = s.push_fixture_as("v1", "pulse");
    let label = format!("app.name=pulse-{id}");
    let mut names = Vec::new();
    for t in ["t1", "t2"] {
        names.push(s.add_tenant_with(&format!("pulse-{t}"), &v1, &["--label", &label, "--expose", "8080"]));
        s.write_data(&format!("pulse-{t}"), "db/records.txt", &format!("records of {t}\n"));
    }

    // 1. slipway init, as the README says.
    let dir = s.root().join("etc-slipway");
    let out = s.slipway(&["init", "--dir", dir.to_str().unwrap(), "--only", &format!("slipway.test={id}"), "--json"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let r: Init = out.report();
    assert_eq!(r.apps.len(), 1, "{:?} skipped {:?}", r.apps, r.skipped);
    let config = r.config.path.clone();

    // 2. The operator's edits to the host config: the repo path and the dirs, nothing else.
    let repo = s.root().join("adopted.git");
    let text = std::fs::read_to_string(&config).unwrap();
    let edited: Vec<String> = text
        .lines()
        .map(|l| {
            if l.starts_with("state_dir =") {
                format!("state_dir = \"{}\"", s.state().display())
            } else if l.starts_with("backup_root =") {
                format!("backup_root = \"{}\"", s.backups().display())
            } else if l.starts_with("repo =") {
                format!("repo = \"{}\"", repo.display())
            } else {
                l.to_string()
            }
        })
        .collect();
    std::fs::write(&config, edited.join("\n") + "\n").unwrap();

    // 3. The first command init printed: create the desired-state repo and push fleet.toml.
    let work = s.root().join("operator");
    std::fs::create_dir_all(&work).unwrap();
    let create = r.next[0].replace(slipway_jobs::init::REPO_PLACEHOLDER, repo.to_str().unwrap());
    sh(Command::new("sh")
        .args(["-c", &create])
        .current_dir(&work)
        .env("GIT_AUTHOR_NAME", "op")
        .env("GIT_AUTHOR_EMAIL", "op@localhost")
        .env("GIT_COMMITTER_NAME", "op")
        .env("GIT_COMMITTER_EMAIL", "op@localhost"));

    // 4. config check, 5. snapshot.
    let check = slipway_with_config(&config, &["config", "check"]);
    assert_eq!(check.code, 0, "{}\n{}", check.stdout, check.stderr);
    let snap = slipway_with_config(&config, &["snapshot", "--json"]);
    assert_eq!(snap.code, 0, "{}\n{}", snap.stdout, snap.stderr);
    let archives: Vec<String> = files_under(&s.backups())
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .filter(|n| n.ends_with(".tar.zst"))
        .collect();
    assert_eq!(archives, ["t1.tar.zst", "t2.tar.zst"], "{}", snap.stdout);

    // 6. A release: a new digest pushed and pinned in git; rollout rolls both tenants to it.
    let v2 = s.push_fixture_as("v2", "pulse");
    let clone = work.join("fleet");
    let fleet = std::fs::read_to_string(clone.join("fleet.toml")).unwrap().replace(&v1, &v2);
    std::fs::write(clone.join("fleet.toml"), fleet).unwrap();
    let git = |args: &[&str]| {
        sh(Command::new("git")
            .arg("-C")
            .arg(&clone)
            .args(["-c", "user.name=op", "-c", "user.email=op@localhost"])
            .args(args))
    };
    git(&["commit", "-qam", "release v2"]);
    git(&["push", "-q", "origin", "HEAD:main"]);
    let roll = slipway_with_config(&config, &["rollout", "--json"]);
    assert_eq!(roll.code, 0, "{}\n{}", roll.stdout, roll.stderr);
    for (t, name) in ["t1", "t2"].iter().zip(&names) {
        assert_eq!(s.image_of(name), v2, "{name}");
        let health = s.http_get(&format!("http://{}:8080/api/health", s.container_ip(name)));
        assert!(health.starts_with("v2"), "{health}");
        let data = std::fs::read_to_string(s.data_dir(&format!("pulse-{t}")).join("db/records.txt")).unwrap();
        assert_eq!(data, format!("records of {t}\n"));
    }
}

#[test]
fn a_name_prefix_select_takes_only_the_containers_whose_name_starts_with_it() {
    let s = Sandbox::new();
    let v1 = Env::get().fixture("v1");
    for t in ["t1", "t2"] {
        s.add_tenant(t, v1);
        s.write_data(t, "db/records.txt", t);
    }
    // The same labels, another name: a label select would take it, the name select does not.
    let other = format!("{}x-other", s.id());
    docker(&["run", "-d", "--name", &other, "--label", &format!("slipway.test={}", s.id()), v1]);
    let by_label = format!("select = \"slipway.test={}\"", s.id());
    let fleet = s.fleet_app(v1, "").replace(&by_label, &format!("select = \"name:{}-*\"", s.id()));
    assert!(fleet.contains("select = \"name:"), "{fleet}");
    s.write_fleet(&fleet);
    let out = s.slipway(&["snapshot", "--json"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let r: crate::support::reports::Snapshot = out.report();
    let tenants: Vec<&str> = r.archives.iter().filter_map(|a| a.tenant.as_deref()).collect();
    assert_eq!(tenants, ["t1", "t2"]);
    assert!(!out.stderr.contains(&other), "{}", out.stderr);
}
