//! Running slipway the way operators do: the host lock, the git push hook, status exit codes,
//! the metrics file, webhook notifications, install and the systemd units.

use std::process::Command;

use crate::support::reports::{Runs, Status};
use crate::support::{Sandbox, Webhook};

#[test]
fn two_jobs_started_at_once_one_runs_and_the_other_exits_with_the_lock_code() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    s.add_tenant("t1", &v1);
    s.write_fleet(&s.fleet_app(&v1, ""));
    let a = s.spawn(&["snapshot"], &[("SLIPWAY_TEST_PAUSE_AT", "after-lock:3000")]);
    let b = s.spawn(&["snapshot"], &[("SLIPWAY_TEST_PAUSE_AT", "after-lock:3000")]);
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let mut codes = [a.status.code().unwrap(), b.status.code().unwrap()];
    codes.sort();
    assert_eq!(codes, [0, 5], "{}\n{}", String::from_utf8_lossy(&a.stderr), String::from_utf8_lossy(&b.stderr));
    let loser = if a.status.code() == Some(5) { &a } else { &b };
    let msg = String::from_utf8_lossy(&loser.stderr);
    assert!(msg.contains("holds the host lock") && msg.contains("job snapshot") && msg.contains("pid"), "{msg}");
    // --wait queues behind the holder instead.
    let c = s.spawn(&["snapshot", "--force"], &[("SLIPWAY_TEST_PAUSE_AT", "after-lock:1500")]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let waited = s.slipway(&["--wait=30", "verify"]);
    assert_eq!(waited.code, 0, "{}", waited.stderr);
    assert!(c.wait_with_output().unwrap().status.success());
}

#[test]
fn the_lock_names_the_rollout_run_that_slipway_runs_shows() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let v2 = s.push_fixture_as("v2", "app");
    s.add_tenant("t1", &v1);
    s.write_fleet(&s.fleet_app(&v2, ""));
    let roll = s.spawn(&["--json", "rollout"], &[("SLIPWAY_TEST_PAUSE_AT", "after-lock:2000")]);
    std::thread::sleep(std::time::Duration::from_millis(700));
    let busy = s.slipway(&["snapshot"]);
    assert_eq!(busy.code, 5, "{}", busy.stderr);
    let roll = roll.wait_with_output().unwrap();
    assert!(roll.status.success(), "{}", String::from_utf8_lossy(&roll.stderr));
    let envelope: serde_json::Value = serde_json::from_slice(&roll.stdout).unwrap();
    let run_id = envelope["run_id"].as_str().unwrap().to_string();
    assert!(busy.stderr.contains(&format!("job rollout, run {run_id}, pid")), "{}", busy.stderr);
    let runs = s.slipway(&["--json", "runs"]);
    let listed = runs.report::<Runs>().runs;
    assert!(
        listed.iter().any(|r| r.id == run_id && r.job == "rollout" && r.outcome.as_deref() == Some("success")),
        "{listed:?}"
    );
}

#[test]
fn the_lock_of_a_sigkilled_job_is_taken_over() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    s.add_tenant("t1", &v1);
    s.write_fleet(&s.fleet_app(&v1, ""));
    let dead = s.slipway_env(&["snapshot"], &[("SLIPWAY_TEST_CRASH_AT", "after-lock")]);
    assert_eq!(dead.code, -1, "the job should have died holding the lock");
    let next = s.slipway(&["snapshot"]);
    assert_eq!(next.code, 0, "{}", next.stderr);
}

#[test]
fn a_git_push_to_the_bare_repo_with_the_hook_installed_triggers_reconcile() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let v2 = s.push_fixture_as("v2", "app");
    let name = s.add_tenant("t1", &v1);
    s.write_fleet(&s.fleet_app(&v1, ""));
    let hook = s.root().join("fleet.git/hooks/post-receive");
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/git/post-receive"), &hook).unwrap();
    // The hook's environment, as an operator would set it for the repo's owner.
    let work = s.root().join("fleet");
    std::fs::write(work.join("fleet.toml"), s.fleet_app(&v2, "")).unwrap();
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(&work)
            .args(["-c", "user.name=t", "-c", "user.email=t@localhost"])
            .args(args)
            .env("SLIPWAY_BIN", env!("CARGO_BIN_EXE_slipway"))
            .env("SLIPWAY_CONFIG", s.config_path())
            .env("SLIPWAY_HOOK_LOG", s.root().join("hook.log"))
            .output()
            .unwrap()
    };
    git(&["commit", "-qam", "release v2"]);
    let t = std::time::Instant::now();
    let push = git(&["push", "-q", s.root().join("fleet.git").to_str().unwrap(), "HEAD:main"]);
    assert!(push.status.success(), "{}", String::from_utf8_lossy(&push.stderr));
    assert!(t.elapsed().as_secs() < 5, "the push waited for the rollout");
    assert!(String::from_utf8_lossy(&push.stderr).contains("reconcile"), "{}", String::from_utf8_lossy(&push.stderr));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        // While the rollout is between rename and create, the name is briefly free.
        if let Some(c) = s.try_inspect(&name) {
            if c["Config"]["Image"].as_str() == Some(v2.as_str()) && c["State"]["Running"] == true {
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "reconcile did not roll t1: {}",
            std::fs::read_to_string(s.root().join("hook.log")).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    // The run record is closed once the health gate has passed: wait for it too.
    loop {
        let runs = s.slipway(&["runs", "--json"]);
        let done =
            runs.report::<Runs>().runs.iter().any(|r| r.trigger == "hook" && r.outcome.as_deref() == Some("success"));
        if done {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no successful hook-triggered run: {}", runs.stdout);
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

#[test]
fn status_exits_8_for_each_condition_that_needs_a_person_and_0_when_all_is_well() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let bad = s.push_fixture_as("unhealthy", "app");
    let name = s.add_tenant("t1", &v1);
    s.write_fleet(&s.fleet_app(&v1, ""));
    let st = s.slipway(&["status", "--json"]);
    assert_eq!(st.code, 8, "no snapshot yet: {}", st.stdout);
    assert!(st.report::<Status>().attention[0].contains("no snapshot"), "{}", st.stdout);
    assert_eq!(s.slipway(&["snapshot"]).code, 0);
    assert_eq!(s.slipway(&["status"]).code, 0, "all is well");
    // An unhealthy tenant.
    Command::new("docker").args(["pause", &name]).output().unwrap();
    let st = s.slipway(&["status", "--json"]);
    assert_eq!(st.code, 8);
    Command::new("docker").args(["unpause", &name]).output().unwrap();
    assert_eq!(s.slipway(&["status"]).code, 0);
    // A snapshot older than 26 hours.
    let db = rusqlite::Connection::open(s.state().join("state.db")).unwrap();
    db.execute("UPDATE snapshots SET created_at = '2000-01-01T00:00:00Z'", []).unwrap();
    let st = s.slipway(&["status", "--json"]);
    assert_eq!(st.code, 8);
    assert!(st.stdout.contains("limit 26 h"), "{}", st.stdout);
    assert_eq!(s.slipway(&["snapshot", "--force"]).code, 0);
    assert_eq!(s.slipway(&["status"]).code, 0);
    // A halted rollout.
    s.write_fleet(&s.fleet_app(&bad, "health = { path = \"/api/health\", port = 8080, timeout_s = 3 }\n"));
    assert_eq!(s.slipway(&["rollout"]).code, 3);
    let st = s.slipway(&["status", "--json"]);
    assert_eq!(st.code, 8);
    assert!(st.stdout.contains("halted"), "{}", st.stdout);
}

#[test]
fn a_halt_is_posted_to_the_webhook_and_a_dead_webhook_does_not_change_the_outcome() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let bad = s.push_fixture_as("unhealthy", "app");
    s.add_tenant("t1", &v1);
    let hook = Webhook::listen("/hooks/T000/secret");
    let url = hook.url.clone();
    s.append_config(&format!("[notify]\nwebhook = \"{url}\"\n"));
    s.write_fleet(&s.fleet_app(&bad, "health = { path = \"/api/health\", port = 8080, timeout_s = 3 }\n"));
    assert_eq!(s.slipway(&["rollout"]).code, 3);
    let body: serde_json::Value = serde_json::from_str(&hook.body()).unwrap();
    assert_eq!(body["job"], "rollout");
    assert_eq!(body["outcome"], "halted");
    assert_eq!(body["exit_code"], 3);
    assert!(body["text"].as_str().unwrap().contains("HALTED"), "{body}");
    // Nobody listens on the webhook now: the job's exit code is the same.
    let cfg = std::fs::read_to_string(s.config_path()).unwrap();
    std::fs::write(s.config_path(), cfg.replace(&url, &Webhook::dead_url())).unwrap();
    let out = s.slipway(&["reconcile", "--retry"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
}

#[test]
fn the_metrics_file_parses_as_prometheus_text_with_the_documented_series() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let v2 = s.push_fixture_as("v2", "app");
    s.add_tenant("t1", &v1);
    s.write_fleet(&s.fleet_app(&v2, ""));
    let m = s.root().join("textfile/slipway.prom");
    std::fs::create_dir_all(m.parent().unwrap()).unwrap();
    let mf = m.to_str().unwrap();
    assert_eq!(s.slipway(&["--metrics-file", mf, "snapshot"]).code, 0);
    assert_eq!(s.slipway(&["--metrics-file", mf, "rollout"]).code, 0);
    let text = std::fs::read_to_string(&m).unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    let has = |name: &str, label: Option<(&str, &str)>| {
        scrape.samples.iter().any(|x| x.metric == name && label.is_none_or(|(k, v)| x.labels.get(k) == Some(v)))
    };
    for job in ["snapshot", "rollout"] {
        for series in [
            "slipway_last_run_timestamp_seconds",
            "slipway_last_run_success",
            "slipway_last_run_exit_code",
            "slipway_last_run_duration_seconds",
        ] {
            assert!(has(series, Some(("job", job))), "{series}{{job={job}}} missing:\n{text}");
        }
    }
    assert!(has("slipway_archived_bytes", Some(("job", "snapshot"))));
    assert!(has("slipway_rollout_tenants_rolled", None) && has("slipway_rollout_tenants_halted", None));
    assert!(has("slipway_snapshot_age_seconds", Some(("tenant", "t1"))));
    assert!(has("slipway_snapshot_last_success_timestamp_seconds", Some(("tenant", "t1"))));
}

#[test]
fn install_is_idempotent_and_lays_out_dirs_with_the_right_modes() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        let out = Command::new("bash")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/install.sh"))
            .args(["--bin", env!("CARGO_BIN_EXE_slipway"), "--destdir"])
            .arg(root.path())
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let dry = run(&["--dry-run"]);
    assert!(dry.contains("would:"));
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0, "--dry-run wrote something");
    run(&[]);
    std::fs::write(root.path().join("etc/slipway/config.toml"), "# edited by the operator\n").unwrap();
    run(&[]);
    assert_eq!(
        std::fs::read_to_string(root.path().join("etc/slipway/config.toml")).unwrap(),
        "# edited by the operator\n"
    );
    let mode = |p: &str| std::fs::metadata(root.path().join(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("etc/slipway"), 0o700);
    assert_eq!(mode("var/lib/slipway"), 0o700);
    assert_eq!(mode("data/backups"), 0o700);
    assert_eq!(mode("usr/bin/slipway"), 0o755);
    assert_eq!(mode("etc/slipway/config.toml"), 0o600);
    assert_eq!(mode("lib/systemd/system/slipway-reconcile.timer"), 0o644);
    assert!(root.path().join("usr/share/man/man1/slipway-rollout.1.gz").is_file());
    assert!(root.path().join("usr/share/bash-completion/completions/slipway").is_file());
    assert!(root.path().join("usr/share/doc/slipway/examples/cron.d/slipway").is_file());
    // Like the package, --destdir turns nothing on: no timer enabled, no cron job.
    assert!(!root.path().join("etc/systemd").exists());
    assert!(!root.path().join("etc/cron.d").exists());
}

#[test]
fn install_moves_a_host_off_an_earlier_install_but_keeps_units_the_operator_edited() {
    let root = tempfile::tempdir().unwrap();
    let etc_units = root.path().join("etc/systemd/system");
    std::fs::create_dir_all(&etc_units).unwrap();
    std::fs::create_dir_all(root.path().join("usr/local/bin")).unwrap();
    std::fs::write(root.path().join("usr/local/bin/slipway"), "#!/bin/sh\n").unwrap();
    // What the earlier install.sh left: every unit in /etc/systemd/system, naming /usr/local/bin.
    for e in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/systemd")).unwrap() {
        let e = e.unwrap();
        let text = std::fs::read_to_string(e.path()).unwrap().replace("/usr/bin/slipway ", "/usr/local/bin/slipway ");
        std::fs::write(etc_units.join(e.file_name()), text).unwrap();
    }
    let edited = etc_units.join("slipway-sync.timer");
    let mut text = std::fs::read_to_string(&edited).unwrap();
    text.push_str("# moved to 02:00 by the operator\n");
    std::fs::write(&edited, &text).unwrap();

    let out = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/install.sh"))
        .args(["--bin", env!("CARGO_BIN_EXE_slipway"), "--destdir"])
        .arg(root.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!root.path().join("usr/local/bin/slipway").exists(), "the old binary would shadow /usr/bin/slipway");
    let left: Vec<_> = std::fs::read_dir(&etc_units).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, ["slipway-sync.timer"], "only the edited unit stays in /etc/systemd/system");
    assert_eq!(std::fs::read_to_string(&edited).unwrap(), text);
    assert!(stderr.contains("slipway-sync.timer differs"), "{stderr}");
    assert!(root.path().join("lib/systemd/system/slipway-reconcile.service").is_file());
}

#[test]
fn every_systemd_unit_passes_systemd_analyze_verify() {
    let out =
        Command::new("bash").arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/check-units.sh")).output().unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_man_page_and_completions_are_generated_from_the_cli() {
    let man = Command::new(env!("CARGO_BIN_EXE_slipway")).arg("man").output().unwrap();
    assert!(man.status.success() && String::from_utf8_lossy(&man.stdout).contains(".TH slipway"));
    let comp = Command::new(env!("CARGO_BIN_EXE_slipway")).args(["completions", "bash"]).output().unwrap();
    assert!(comp.status.success() && String::from_utf8_lossy(&comp.stdout).contains("reconcile"));
}

#[test]
fn every_notification_url_gets_one_message_per_run_with_a_line_per_tenant_and_no_secret() {
    use crate::support::receivers::{Recorder, Smtp};
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let bad = s.push_fixture_as("unhealthy", "app");
    s.add_tenant("t1", &v1);
    s.add_tenant("t2", &v1);
    let http = Recorder::start();
    let smtp = Smtp::start();
    let a = &http.addr;
    let secrets = ["secretsecret", "hunter2222", "slacksecret1", "discordsecret9"];
    let urls = [
        format!("json+http://{a}/hooks/T000/{}", secrets[0]),
        format!("ntfy://bob:{}@{a}/alerts?scheme=http", secrets[1]),
        format!("slack+http://{a}/services/T1/B1/{}", secrets[2]),
        format!("discord+http://{a}/api/webhooks/1/{}", secrets[3]),
        format!(
            "smtp://127.0.0.1:{}/?from=slipway@example.com&to=ops@example.com,oncall@example.com&encryption=None",
            smtp.port
        ),
    ];
    let list = urls.iter().map(|u| format!("\"{u}\"")).collect::<Vec<_>>().join(", ");
    s.append_config(&format!("[notify]\nlevel = \"all\"\nurls = [{list}]\n"));
    s.write_fleet(&s.fleet_app(&bad, "health = { path = \"/api/health\", port = 8080, timeout_s = 3 }\n"));
    let out = s.slipway(&["rollout", "--json"]);
    assert_eq!(out.code, 3, "{} {}", out.stdout, out.stderr);

    // One message per target, each in its service's format, each naming the tenant and what
    // happened to it.
    let json = http.wait_for("/hooks/", 1);
    assert_eq!(json.len(), 1, "{json:?}");
    let body: serde_json::Value = serde_json::from_str(&json[0].body).unwrap();
    assert_eq!(
        (body["job"].as_str(), body["outcome"].as_str(), body["exit_code"].as_u64()),
        (Some("rollout"), Some("halted"), Some(3))
    );
    let t1 = body["tenants"].as_array().unwrap().iter().find(|t| t["tenant"] == "t1").cloned();
    assert_eq!(t1.as_ref().map(|t| t["outcome"].clone()), Some("restored".into()), "{body}");
    let ntfy = http.wait_for("/alerts", 1);
    assert_eq!(ntfy.len(), 1);
    assert!(ntfy[0].header("title").unwrap_or_default().contains("slipway rollout"), "{:?}", ntfy[0]);
    assert_eq!(ntfy[0].header("priority"), Some("high"));
    assert!(
        ntfy[0].header("authorization").is_some_and(|h| h.starts_with("Basic ")),
        "ntfy's user and password go as basic auth"
    );
    let table_line =
        |text: &str| text.lines().any(|l| l.split_whitespace().take(2).collect::<Vec<_>>() == ["t1", "restored"]);
    assert!(table_line(&ntfy[0].body), "{}", ntfy[0].body);
    let slack = http.wait_for("/services/", 1);
    let text: serde_json::Value = serde_json::from_str(&slack[0].body).unwrap();
    assert!(table_line(text["text"].as_str().unwrap()), "{text}");
    let discord = http.wait_for("/api/webhooks/", 1);
    let content: serde_json::Value = serde_json::from_str(&discord[0].body).unwrap();
    assert!(table_line(content["content"].as_str().unwrap()), "{content}");
    let mail = smtp.messages(1);
    assert_eq!(mail.len(), 1, "{mail:?}");
    assert!(mail[0].contains("Subject: slipway rollout on") && mail[0].contains("halted"), "{}", mail[0]);
    assert!(mail[0].contains("oncall@example.com") && table_line(&mail[0]), "{}", mail[0]);
    // No message carries a token or a password of any target.
    for r in http.all() {
        for secret in secrets {
            assert!(!r.body.contains(secret), "{secret} in a message to {}: {}", r.path, r.body);
        }
    }
    for secret in secrets {
        assert!(!mail[0].contains(secret), "{secret} in the e-mail");
    }

    // level = "all": a run that went well is one message too; "failures": it is none.
    assert_eq!(s.slipway(&["snapshot"]).code, 0);
    let json = http.wait_for("/hooks/", 2);
    assert_eq!(json.len(), 2);
    let body: serde_json::Value = serde_json::from_str(&json[1].body).unwrap();
    assert_eq!(body["job"], "snapshot");
    assert_eq!(body["exit_code"], 0);
    assert_eq!(smtp.messages(2).len(), 2);
    let cfg = std::fs::read_to_string(s.config_path()).unwrap();
    std::fs::write(s.config_path(), cfg.replace("level = \"all\"", "level = \"failures\"")).unwrap();
    assert_eq!(s.slipway(&["snapshot", "--force"]).code, 0);
    // The job has sent (or given up) before it exits: nothing more came.
    assert_eq!(http.all().len(), 8, "{:?}", http.all().iter().map(|r| &r.path).collect::<Vec<_>>());
    assert_eq!(smtp.messages(0).len(), 2);
}

#[test]
fn a_notification_url_slipway_cannot_send_to_is_refused_naming_the_entry_not_its_secret() {
    let s = Sandbox::new();
    s.append_config(
        "[notify]\nurls = [\"https://example.com/ok\", \"telegram://123:tok3n-secret@telegram?chats=1\"]\n",
    );
    let out = s.slipway(&["config", "check"]);
    assert_eq!(out.code, 2, "{} {}", out.stdout, out.stderr);
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(all.contains("notify.urls[1]") && all.contains("telegram"), "{all}");
    assert!(!all.contains("tok3n-secret"), "the refusal must not print the URL's secret: {all}");
}
