//! The host's scheduler, as `doctor` asks about it: whether this is a systemd host (the test
//! `sd_booted` makes: `/run/systemd/system` exists), and whether slipway's timers are enabled
//! (`systemctl is-enabled`); on other hosts, whether the cron.d file is installed. Read only.

use std::path::Path;
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
