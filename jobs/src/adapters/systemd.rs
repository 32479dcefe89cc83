//! The host's scheduler, as `doctor` asks about it: whether this is a systemd host (the test
//! `sd_booted` makes: `/run/systemd/system` exists), and whether slipway's timers are enabled
//! (`systemctl is-enabled`); on other hosts, whether the cron.d file is installed. Read only.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The timers `deploy/install.sh` enables (deploy/systemd/*.timer).
pub const TIMERS: &[&str] = &[
    "slipway-reconcile.timer",
    "slipway-snapshot.timer",
    "slipway-sync.timer",
    "slipway-prune.timer",
    "slipway-verify.timer",
    "slipway-drill.timer",
];

/// Where `deploy/install.sh` puts the schedule on a host without systemd.
pub const CRON_FILE: &str = "/etc/cron.d/slipway";

/// Whether systemd runs this host.
pub fn is_systemd_host() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// `systemctl is-enabled UNIT`'s word for each unit (`enabled`, `disabled`, `not-found`, …;
/// `unknown: <why>` when systemctl cannot be run).
pub fn enabled_states(units: &[&str]) -> Vec<(String, String)> {
    units
        .iter()
        .map(|u| {
            let word = match Command::new("systemctl").args(["is-enabled", u]).output() {
                Ok(o) => {
                    let out = String::from_utf8_lossy(&o.stdout).trim().to_string();
                    if out.is_empty() {
                        let err = String::from_utf8_lossy(&o.stderr);
                        if err.contains("not found") || err.contains("No such file") {
                            "not-found".to_string()
                        } else {
                            format!("unknown: {}", err.trim())
                        }
                    } else {
                        out
                    }
                }
                Err(e) => format!("unknown: cannot run systemctl: {e}"),
            };
            (u.to_string(), word)
        })
        .collect()
}

/// The services the timers start (deploy/systemd/*.service).
pub const SERVICES: &[&str] = &[
    "slipway-reconcile.service",
    "slipway-snapshot.service",
    "slipway-sync.service",
    "slipway-prune.service",
    "slipway-verify.service",
    "slipway-drill.service",
];

/// The drop-in that gives every slipway unit this host's write paths. A prefix drop-in
/// (`slipway-.service.d/`, systemd 246 and newer) applies to every `slipway-*.service`.
pub const DROPIN: &str = "/etc/systemd/system/slipway-.service.d/50-write-paths.conf";

/// The drop-in's text: one `ReadWritePaths=` line with every path (quoted, so a space is kept;
/// `-`: a path the host lacks is skipped rather than failing the unit).
pub fn render_dropin(paths: &[PathBuf]) -> String {
    let list: Vec<String> = paths.iter().map(|p| format!("\"-{}\"", p.display())).collect();
    format!(
        "# Written by `slipway config sandbox --write` from the host config and fleet.toml: the dirs\n\
         # slipway's jobs write (state, backups, the tenants' data dirs and the copies beside them).\n\
         # Run it again after a data_dir or backup_root changes; `slipway doctor` checks this file.\n\
         [Service]\nReadWritePaths={}\n",
        list.join(" ")
    )
}

/// A unit's sandbox as systemd has loaded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitSandbox {
    /// Whether systemd knows the unit.
    pub loaded: bool,
    /// Its `ReadWritePaths`, with drop-ins applied.
    pub write_paths: Vec<PathBuf>,
    /// Whether `RestrictSUIDSGID=yes` is in effect (a restore of a setuid file would fail).
    pub restricts_suid: bool,
}

/// Parse `systemctl show -p LoadState -p ReadWritePaths -p RestrictSUIDSGID` output.
pub fn parse_show(out: &str) -> UnitSandbox {
    let mut u = UnitSandbox { loaded: false, write_paths: Vec::new(), restricts_suid: false };
    for line in out.lines() {
        match line.split_once('=') {
            Some(("LoadState", v)) => u.loaded = v == "loaded",
            Some(("RestrictSUIDSGID", v)) => u.restricts_suid = v == "yes",
            Some(("ReadWritePaths", v)) => u.write_paths.extend(
                v.split_whitespace().map(|p| PathBuf::from(p.trim_matches('"').trim_start_matches(['-', '+']))),
            ),
            _ => {}
        }
    }
    u
}

/// The sandbox of `unit` as systemd has it loaded, or why it could not be asked.
pub fn unit_sandbox(unit: &str) -> Result<UnitSandbox, String> {
    let o = Command::new("systemctl")
        .args(["show", "-p", "LoadState", "-p", "ReadWritePaths", "-p", "RestrictSUIDSGID", unit])
        .output()
        .map_err(|e| format!("cannot run systemctl: {e}"))?;
    if !o.status.success() {
        return Err(String::from_utf8_lossy(&o.stderr).trim().to_string());
    }
    Ok(parse_show(&String::from_utf8_lossy(&o.stdout)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemctl_show_is_read_with_drop_ins_and_ignore_prefixes() {
        let u =
            parse_show("LoadState=loaded\nReadWritePaths=-/var/lib/slipway -/data /srv/tenants\nRestrictSUIDSGID=no\n");
        assert!(u.loaded && !u.restricts_suid);
        assert_eq!(u.write_paths, [PathBuf::from("/var/lib/slipway"), "/data".into(), "/srv/tenants".into()]);
        assert!(parse_show("LoadState=not-found\nRestrictSUIDSGID=yes\n").restricts_suid);
        let text = render_dropin(&["/srv/my tenants".into(), "/var/lib/slipway".into()]);
        assert!(text.contains("ReadWritePaths=\"-/srv/my tenants\" \"-/var/lib/slipway\"\n"), "{text}");
    }

    #[test]
    fn the_shipped_units_restrict_no_setuid_bits_and_need_no_data_dir_to_exist() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd");
        for u in SERVICES {
            let text = std::fs::read_to_string(dir.join(u)).unwrap();
            assert!(!text.contains("RestrictSUIDSGID=yes"), "{u}: setuid/setgid bits are tenants' data to restore");
            for line in text.lines().filter(|l| l.starts_with("ReadWritePaths=")) {
                for p in line["ReadWritePaths=".len()..].split_whitespace() {
                    assert!(p.starts_with('-'), "{u}: {p} must be optional (a host without it must still run the job)");
                }
            }
        }
    }
}
