//! The shipped units, run by real systemd (issue 24): nothing here emulates a directive.
//!
//! Each test boots a container whose PID 1 is Debian's own systemd (the image
//! `scripts/testenv.sh up` makes with debootstrap, `$SWTEST_SYSTEMD_IMAGE`), with the host's
//! Docker socket, the host's network (so health probes reach the tenants' bridge addresses, as
//! on a real host) and the sandbox's dirs — config, state, backup root, data dirs, the git repo —
//! bind-mounted at the same paths, so the bind mounts of the tenants the host's engine runs line
//! up. The sandbox lives under the target dir, not `/tmp` (the units have `PrivateTmp=yes`), and
//! not under `/var/lib/slipway` or `/data` (the units' built-in write paths): only the drop-in
//! `slipway config sandbox --write` computes from the config lets the jobs write there.
//!
//! slipway is installed into it the way an operator installs it, by `deploy/install.sh --bin
//! <binary under test> --no-enable` (the units from deploy/systemd into /lib/systemd/system,
//! the binary to /usr/bin/slipway, the postinst), then `slipway config sandbox --write` and
//! `systemctl daemon-reload`. No timer is enabled: each job runs when the test says
//! `systemctl start slipway-<job>.service`, exactly what a timer does, under every hardening
//! line of the unit (`ProtectSystem=strict`, `PrivateTmp`, `NoNewPrivileges`,
//! `RestrictNamespaces`, `MemoryDenyWriteExecute`, `SystemCallArchitectures`, …).
//!
//! **Restore is an operator command, not a unit.** It runs through `systemd-run --wait --pipe`
//! with every `[Service]` line of the shipped `slipway-snapshot.service` (but `Type` and
//! `ExecStart`) and the drop-in's write paths as `-p` properties: the daily job's sandbox, so a
//! restore run under systemd is shown to be allowed everything it needs (setuid bits included).
//!
//! The container runs with every capability this machine can grant rather than `--privileged`:
//! a VM whose bounding set lacks one (a Firecracker guest lacks `CAP_SYS_RESOURCE`) cannot start
//! a privileged container. It is stopped the way systemd wants (`SIGRTMIN+3`) and removed on
//! `Drop`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::support::reports::{Restore, Runs};
use crate::support::{sh, tree_hash, Sandbox};

/// Linux capability names by number (linux/capability.h), for `--cap-drop` of those this
/// machine lacks.
const CAPS: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// The capabilities this process's bounding set lacks (dockerd runs as root beside it, so it
/// cannot grant them either).
fn missing_caps() -> Vec<&'static str> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let bnd = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .expect("CapBnd in /proc/self/status");
    CAPS.iter().enumerate().filter(|(i, _)| bnd & (1 << i) == 0).map(|(_, c)| *c).collect()
}

/// Where the systemd tests' sandboxes live: under the target dir, a dir the units may write
/// only by the drop-in; `/var/lib/slipway-e2e` when the target dir is in `/tmp` or `/var/tmp`,
/// which the units (`PrivateTmp=yes`) replace by their own.
fn sandbox_parent() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("systemd-e2e");
    if dir.starts_with("/tmp") || dir.starts_with("/var/tmp") {
        return PathBuf::from("/var/lib/slipway-e2e");
    }
    dir
}

/// The source tree (deploy/install.sh and what it installs).
fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// How one run of a unit ended, as systemd logged it.
#[derive(Debug)]
struct UnitRun {
    /// `success`, `exit-code`, `timeout`, …
    result: String,
    /// The main process's exit status.
    status: i32,
}

/// systemd's catalogue ids (`journalctl --list-catalog`) of what PID 1 logs when a unit's run
/// ends: deactivated successfully, failed with a result, and a process's exit status (logged
/// for a failure; a success exits 0 or one of its `SuccessExitStatus=`).
const UNIT_SUCCESS: &str = "7ad2d189f7e94e70a38c781354912448";
const UNIT_FAILURE_RESULT: &str = "d9b373ed55a64feb8242e02dbe79a49c";
const UNIT_PROCESS_EXIT: &str = "98e322203f7a4ed290d09fe03c09fe15";

/// A booted systemd container with slipway installed; stopped and removed on `Drop`.
struct SystemdHost {
    name: String,
}

impl SystemdHost {
    /// Boot the container for `s`, wait until systemd says the system is up, install slipway.
    fn boot(s: &Sandbox) -> SystemdHost {
        let image = std::env::var("SWTEST_SYSTEMD_IMAGE").unwrap_or_else(|_| {
            panic!("SWTEST_SYSTEMD_IMAGE is not set: run `scripts/testenv.sh up` (it makes the systemd image) and source .testenv/env")
        });
        // Neither the app's label nor its name pattern: the container is no tenant of the sandbox.
        // The label's key is the harness's, so `testenv.sh down` removes one a killed test left.
        let name = format!("slipway-systemd-{}", s.id());
        let root = s.root().to_str().unwrap().to_string();
        let (label, same) = (format!("slipway.test={}-systemd", s.id()), format!("{root}:{root}"));
        let (bin, src) = (
            format!("{}:/usr/lib/slipway-under-test/slipway:ro", env!("CARGO_BIN_EXE_slipway")),
            format!("{0}:{0}:ro", repo().display()),
        );
        let mut args = vec![
            "run",
            "-d",
            "--name",
            &name,
            "--label",
            &label,
            "--stop-signal",
            "SIGRTMIN+3",
            "--cap-add",
            "ALL",
            "--security-opt",
            "seccomp=unconfined",
            "--security-opt",
            "apparmor=unconfined",
            "--device-cgroup-rule",
            "a *:* rwm",
            "--cgroupns",
            "host",
            "--volume",
            "/sys/fs/cgroup:/sys/fs/cgroup:rw",
            "--tmpfs",
            "/run",
            "--tmpfs",
            "/run/lock",
            "--network",
            "host",
            "--volume",
            "/var/run/docker.sock:/run/docker.sock",
            "--volume",
            &same,
            "--volume",
            &bin,
            "--volume",
            &src,
        ];
        let missing = missing_caps();
        for c in &missing {
            args.extend(["--cap-drop", c]);
        }
        args.push(&image);
        // The guard first: a `docker run` that fails can leave a created container behind.
        let host = SystemdHost { name: name.clone() };
        sh(Command::new("docker").args(&args));
        host.wait_until_up();
        host.install(s);
        host
    }

    /// `systemctl is-system-running` says `running` (or `degraded`: a unit of the image's own
    /// failed, which is not ours to judge), within 60 s.
    fn wait_until_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.exec(&["systemctl", "is-system-running"]);
            let word = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if word == "running" || word == "degraded" {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "systemd in {} did not come up: is-system-running says {word:?}; {}",
                self.name,
                self.text(&["systemctl", "list-jobs", "--no-pager"])
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// slipway as an operator installs it: the host config in /etc/slipway, deploy/install.sh,
    /// the drop-in with this host's write paths, daemon-reload.
    fn install(&self, s: &Sandbox) {
        let config = s.config_path();
        self.ok(&["install", "-d", "-m", "0700", "/etc/slipway"]);
        self.ok(&["install", "-m", "0600", config.to_str().unwrap(), "/etc/slipway/config.toml"]);
        let script = repo().join("deploy/install.sh");
        self.ok(&[script.to_str().unwrap(), "--bin", "/usr/lib/slipway-under-test/slipway", "--no-enable"]);
        self.ok(&["slipway", "config", "sandbox", "--write"]);
        self.ok(&["systemctl", "daemon-reload"]);
    }

    /// Run a command in the container.
    fn exec(&self, args: &[&str]) -> Output {
        Command::new("docker").arg("exec").arg(&self.name).args(args).output().unwrap()
    }

    /// Run a command in the container; its stdout, panicking with its output if it fails.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.exec(args);
        assert!(
            out.status.success(),
            "in {}: {args:?} failed ({}): {}\n{}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A command's stdout and stderr, whatever its exit status (for failure messages).
    fn text(&self, args: &[&str]) -> String {
        let out = self.exec(args);
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    }

    /// The journal's cursor now: runs that end after it are found with [`SystemdHost::ended`].
    fn cursor(&self) -> String {
        let out = self.ok(&["journalctl", "-n", "1", "-o", "json", "--no-pager"]);
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        v["__CURSOR"].as_str().unwrap().to_string()
    }

    /// `systemctl start UNIT`, as its timer starts it; returns how that run ended. (A unit that
    /// succeeded is unloaded soon after, and `systemctl show` of an unloaded unit reads as a
    /// success: the journal is where systemd keeps what happened.)
    fn start(&self, unit: &str) -> UnitRun {
        let since = self.cursor();
        self.exec(&["timeout", "300", "systemctl", "start", unit]);
        self.ended(unit, &since)
    }

    /// How the first run of `unit` that ended after `since` ended, waiting for it at most 300 s
    /// (a unit systemd starts by itself, an `OnSuccess=`, say).
    fn ended(&self, unit: &str, since: &str) -> UnitRun {
        let deadline = Instant::now() + Duration::from_secs(300);
        let (after, match_unit) = (format!("--after-cursor={since}"), format!("UNIT={unit}"));
        loop {
            let out = self.ok(&["journalctl", "-o", "json", "--no-pager", &after, &match_unit, "_PID=1"]);
            let entries: Vec<serde_json::Value> = out.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
            let field = |e: &serde_json::Value, k: &str| e[k].as_str().unwrap_or_default().to_string();
            let end = entries.iter().find(|e| {
                let id = field(e, "MESSAGE_ID");
                id == UNIT_SUCCESS || id == UNIT_FAILURE_RESULT
            });
            if let Some(end) = end {
                let invocation = field(end, "INVOCATION_ID");
                let status = entries
                    .iter()
                    .find(|e| field(e, "MESSAGE_ID") == UNIT_PROCESS_EXIT && field(e, "INVOCATION_ID") == invocation)
                    .and_then(|e| field(e, "EXIT_STATUS").parse().ok())
                    .unwrap_or(0);
                let result =
                    if field(end, "MESSAGE_ID") == UNIT_SUCCESS { "success".into() } else { field(end, "UNIT_RESULT") };
                return UnitRun { result, status };
            }
            assert!(Instant::now() < deadline, "{unit} did not run to its end within 300 s\n{}", self.journal(unit));
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The unit's journal (for failure messages).
    fn journal(&self, unit: &str) -> String {
        self.text(&["journalctl", "--no-pager", "-o", "cat", "-n", "80", "-u", unit])
    }

    /// Assert a unit's run succeeded, showing its journal if not.
    fn assert_success(&self, unit: &str, st: &UnitRun) {
        assert!(
            st.result == "success" && st.status == 0,
            "{unit}: {st:?}\n{}\n{}",
            self.journal(unit),
            self.text(&["systemctl", "status", "--no-pager", unit])
        );
    }

    /// `systemd-run --wait --pipe` of `slipway ARGS` under the shipped snapshot unit's
    /// `[Service]` settings (but `Type` and `ExecStart`) and the drop-in's write paths: how an
    /// operator command runs in the units' sandbox. Its exit code and stdout.
    fn run_sandboxed(&self, args: &[&str]) -> (i32, String, String) {
        let unit = std::fs::read_to_string(repo().join("deploy/systemd/slipway-snapshot.service")).unwrap();
        let dropin = self.ok(&["cat", "/etc/systemd/system/slipway-.service.d/50-write-paths.conf"]);
        let mut props = service_settings(&unit);
        props.extend(service_settings(&dropin));
        assert!(props.iter().any(|p| p.starts_with("ProtectSystem=strict")), "{props:?}");
        let mut cmd: Vec<String> =
            ["systemd-run", "--wait", "--pipe", "--quiet", "--collect"].map(String::from).to_vec();
        for p in &props {
            cmd.push("-p".into());
            cmd.push(p.clone());
        }
        cmd.push("/usr/bin/slipway".into());
        cmd.extend(args.iter().map(|a| a.to_string()));
        let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
        let out = self.exec(&cmd);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for SystemdHost {
    fn drop(&mut self) {
        // SIGRTMIN+3: systemd shuts down and removes the cgroups it made under the host's.
        let _ = Command::new("docker").args(["stop", "-t", "30", &self.name]).output();
        let _ = Command::new("docker").args(["rm", "-f", "-v", &self.name]).output();
    }
}

/// The `Key=Value` lines of a unit file's `[Service]` section but `Type` and `ExecStart`.
fn service_settings(unit: &str) -> Vec<String> {
    let mut in_service = false;
    let mut out = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            in_service = line == "[Service]";
            continue;
        }
        if !in_service || line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some((key, _)) = line.split_once('=') {
            if key != "Type" && key != "ExecStart" {
                out.push(line.to_string());
            }
        }
    }
    out
}

/// The run record's newest run of `job` started with trigger `trigger`: (id, outcome).
fn newest_run(s: &Sandbox, job: &str, trigger: &str) -> (String, String) {
    let runs: Runs = s.slipway(&["runs", "--json"]).report();
    let r = runs
        .runs
        .into_iter()
        .find(|r| r.job == job && r.trigger == trigger)
        .unwrap_or_else(|| panic!("no {job} run by {trigger} in the run record"));
    (r.id, r.outcome.unwrap_or_default())
}

/// A tenant tree with what the shipped units once refused (issue 24): a setgid dir, a setuid
/// file, a file owned by another user.
fn tenant_tree(s: &Sandbox, tenant: &str) {
    s.write_data(tenant, "db/records.txt", &"row\n".repeat(2000));
    s.write_data(tenant, "shared/uploads/a.bin", "binary-ish");
    s.write_data(tenant, "bin/helper", "#!/bin/sh\n");
    let d = s.data_dir(tenant);
    std::fs::set_permissions(d.join("shared"), std::fs::Permissions::from_mode(0o2775)).unwrap();
    std::fs::set_permissions(d.join("bin/helper"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::os::unix::fs::chown(d.join("shared/uploads/a.bin"), Some(1000), Some(1000)).unwrap();
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

#[test]
fn under_systemd_the_daily_units_stage_sync_and_drill_and_a_sandboxed_restore_brings_back_every_byte() {
    let s = Sandbox::new_in(&sandbox_parent());
    let v1 = s.push_fixture_as("v1", "app");
    let name = s.add_tenant("t1", &v1);
    tenant_tree(&s, "t1");
    s.write_fleet(&s.fleet_app(&v1, ""));
    let bucket = s.use_shared_remote("");
    let host = SystemdHost::boot(&s);
    // doctor, on this systemd host, finds the units as systemd loaded them fit this config.
    let doctor = host.exec(&["slipway", "doctor", "--json"]);
    let doctor: serde_json::Value = serde_json::from_slice(&doctor.stdout).unwrap();
    let sandbox = doctor["report"]["checks"].as_array().unwrap().iter().find(|c| c["check"] == "sandbox");
    assert_eq!(sandbox.map(|c| &c["level"]), Some(&serde_json::json!("ok")), "{doctor}");

    // The daily snapshot, as its timer starts it; its OnSuccess= starts the sync.
    let at_snapshot = tree_hash(&s.data_dir("t1"));
    let before_snapshot = host.cursor();
    let st = host.start("slipway-snapshot.service");
    host.assert_success("slipway-snapshot.service", &st);
    let (snap_run, outcome) = newest_run(&s, "snapshot", "timer");
    assert_eq!(outcome, "success", "{snap_run}");
    // Staged: the copy beside the archive is the tenant's tree, setuid and setgid bits and all.
    let staging = s.backups().join("staging/t1");
    assert_eq!(tree_hash(&staging), at_snapshot, "the staging copy differs from the data dir");
    let day = std::fs::read_dir(s.backups().join("daily")).unwrap().next().unwrap().unwrap().file_name();
    let day = day.to_str().unwrap().to_string();
    assert!(s.backups().join("daily").join(&day).join("tenants/t1.tar.zst").is_file());
    let sync = host.ended("slipway-sync.service", &before_snapshot);
    host.assert_success("slipway-sync.service", &sync);
    assert_eq!(newest_run(&s, "sync", "timer").1, "success");
    let remote = s.remote_objects(
        &crate::support::Env::get().s3_endpoint,
        &crate::support::Env::get().s3_access_key,
        &crate::support::Env::get().s3_secret_key,
        &bucket,
    );
    assert!(remote.iter().any(|(k, _)| k.ends_with("tenants/t1.tar.zst")), "{remote:?}");

    // The monthly drill: a throw-away container on the restored copy passes its health check.
    let before = s.inspect(&name);
    let st = host.start("slipway-drill.service");
    host.assert_success("slipway-drill.service", &st);
    let (drill_run, outcome) = newest_run(&s, "drill", "timer");
    assert_eq!(outcome, "success", "{drill_run}");
    let left = sh(Command::new("docker").args([
        "ps",
        "-a",
        "--filter",
        &format!("label=slipway.drill={drill_run}"),
        "--format",
        "{{.Names}}",
    ]));
    assert!(left.is_empty(), "the drill left {left}");
    assert!(!s.backups().join("drill").exists(), "the drill left its scratch dir");
    assert_eq!(s.inspect(&name)["Id"], before["Id"]);
    assert_eq!(tree_hash(&s.data_dir("t1")), at_snapshot, "the drill changed the live tenant");

    // The weekly verify and the daily prune, the other two timers' jobs (neither records a run
    // when it changed nothing).
    for unit in ["slipway-verify.service", "slipway-prune.service"] {
        let st = host.start(unit);
        host.assert_success(unit, &st);
    }

    // A person damages the data; the restore, in the units' sandbox, brings back every byte.
    s.write_data("t1", "db/records.txt", "overwritten by mistake\n");
    std::fs::remove_dir_all(s.data_dir("t1").join("shared")).unwrap();
    std::fs::set_permissions(s.data_dir("t1").join("bin/helper"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (code, stdout, stderr) = host.run_sandboxed(&["restore", "--tenant", "t1", "--day", &day, "--json"]);
    assert_eq!(code, 0, "restore in the units' sandbox: {stdout} {stderr}");
    let envelope = crate::support::reports::parse::<Restore>(&stdout, &stderr);
    assert!(envelope.report().entries > 0);
    assert_eq!(tree_hash(&s.data_dir("t1")), at_snapshot, "the restored tree differs from the snapshot's");
    assert_eq!(mode(&s.data_dir("t1").join("shared")), 0o2775);
    assert_eq!(mode(&s.data_dir("t1").join("bin/helper")), 0o4755);
    let now = s.inspect(&name);
    assert_eq!(now["State"]["Running"], true);
    assert!(s.http_get(&format!("http://{}:8080/api/health", s.container_ip(&name))).contains("v1"));
    assert_eq!(newest_run(&s, "restore", "manual").1, "success");
}

#[test]
fn under_systemd_a_broken_release_fails_the_reconcile_unit_with_code_3_and_the_undo_brings_back_the_prior_tenant() {
    let s = Sandbox::new_in(&sandbox_parent());
    let v1 = s.push_fixture_as("v1", "app");
    let bad = s.push_fixture_as("unhealthy", "app");
    let name = s.add_tenant("t1", &v1);
    tenant_tree(&s, "t1");
    s.write_fleet(&s.fleet_app(&v1, ""));
    let host = SystemdHost::boot(&s);
    let (before, data) = (s.inspect(&name), tree_hash(&s.data_dir("t1")));

    // git pins a release whose health check never passes; the minute timer starts reconcile.
    s.write_fleet(&s.fleet_app(&bad, "health = { path = \"/api/health\", port = 8080, timeout_s = 4 }\n"));
    let st = host.start("slipway-reconcile.service");
    assert_eq!(
        (st.result.as_str(), st.status),
        ("exit-code", 3),
        "the unit should fail with exit 3 (halted, restored): {st:?}\n{}",
        host.journal("slipway-reconcile.service")
    );
    // The undo: the prior container itself is back, running v1 on the same data, byte for byte.
    let now = s.inspect(&name);
    assert_eq!(now["Id"], before["Id"], "the prior container must be back, not a copy");
    assert_eq!(s.image_of(&name), v1);
    assert_eq!(now["State"]["Running"], true);
    assert_eq!(now["Mounts"], before["Mounts"]);
    assert_eq!(tree_hash(&s.data_dir("t1")), data, "the undo did not bring back the data byte for byte");
    assert_eq!(mode(&s.data_dir("t1").join("shared")), 0o2775);
    assert_eq!(mode(&s.data_dir("t1").join("bin/helper")), 0o4755);
    assert!(s.http_get(&format!("http://{}:8080/api/health", s.container_ip(&name))).contains("v1"));
    let runs: Runs = s.slipway(&["runs", "--json"]).report();
    assert!(
        runs.runs.iter().any(|r| r.trigger == "timer" && r.outcome.as_deref() == Some("halted")),
        "no halted run by the timer: {runs:?}"
    );

    // The next minute's run does not try the halted digest again.
    let again = host.start("slipway-reconcile.service");
    host.assert_success("slipway-reconcile.service", &again);
    assert_eq!(s.inspect(&name)["Id"], before["Id"]);
}
