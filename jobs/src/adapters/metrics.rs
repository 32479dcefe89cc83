//! Prometheus metrics for node_exporter's textfile collector, rewritten atomically after every
//! job. The file holds the series of every job: each job updates its own and keeps the others
//! (kept in a JSON sidecar `<file>.json`, so the text file is always regenerated whole).
//!
//! Series (all gauges):
//! - `slipway_last_run_timestamp_seconds{job}`: when the job last ended
//! - `slipway_last_run_success{job}`: 1 if it succeeded, else 0
//! - `slipway_last_run_exit_code{job}`: its exit code
//! - `slipway_last_run_duration_seconds{job}`: how long it took
//! - `slipway_archived_bytes{job}`: bytes of archives written by its last run
//! - `slipway_uploaded_bytes{job}`: bytes uploaded by its last run
//! - `slipway_rollout_tenants_rolled`, `slipway_rollout_tenants_halted`: the last rollout's counts
//! - `slipway_snapshot_age_seconds{tenant}`: age of each tenant's newest daily snapshot
//! - `slipway_snapshot_last_success_timestamp_seconds{tenant}`: when it was taken
//! - `slipway_drill_last_success_timestamp_seconds{tenant}`: when the tenant's last successful
//!   restore drill ended
//! - `slipway_drill_duration_seconds{tenant}`: how long that drill took from fetching the
//!   archive to the app answering healthy (the restore time you can expect)
//! - `slipway_rollout_downtime_seconds{tenant}`: the tenant's last switch, stop → new
//!   container healthy (container downtime)
//! - `slipway_rollout_proxy_downtime_seconds{tenant}`, `slipway_rollout_proxy_failed_requests{tenant}`:
//!   the same switch as customers saw it through the proxy (`[app.proxy]`): first → last failed
//!   request, and how many failed
//! - `slipway_rollout_paused_since_timestamp_seconds{app,run,kind}`: a rollout paused (over its
//!   budget, or its maintenance window closed) and waiting for `rollout resume` or `abort`, and
//!   since when; the series is there only while the pause is open (so
//!   `count(slipway_rollout_paused_since_timestamp_seconds) > 0` alerts on any, and
//!   `time() - … > 86400` on one left a day)

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What one job reports.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JobMetrics {
    /// Job name.
    pub job: String,
    /// Exit code.
    pub exit_code: u8,
    /// When it ended (unix seconds).
    pub ended: i64,
    /// Duration in seconds.
    pub duration_s: f64,
    /// Bytes archived.
    pub archived_bytes: Option<u64>,
    /// Bytes uploaded.
    pub uploaded_bytes: Option<u64>,
    /// Tenants rolled (rollout/reconcile).
    pub rolled: Option<u64>,
    /// Tenants halted (rollout/reconcile).
    pub halted: Option<u64>,
    /// Newest daily snapshot per tenant (unix seconds).
    pub snapshots: BTreeMap<String, i64>,
    /// Newest successful restore drill per tenant.
    #[serde(default)]
    pub drills: BTreeMap<String, DrillMetric>,
    /// The tenants switched by this run (rollout/reconcile).
    #[serde(default)]
    pub switches: BTreeMap<String, SwitchMetric>,
    /// The open rollout pauses when the job ended (read from the run record by every job, so a
    /// pause ended by any job leaves the file at its next write); `None` keeps the file's.
    #[serde(default)]
    pub pauses: Option<Vec<PauseMetric>>,
}

/// An open pause of a rollout run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PauseMetric {
    /// The app.
    pub app: String,
    /// The paused run.
    pub run: String,
    /// `budget` or `window`.
    pub kind: String,
    /// When it paused (unix seconds).
    pub since: i64,
}

/// A tenant's last switch to another version, as the container and its customers saw it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SwitchMetric {
    /// Stop → new container healthy, in seconds.
    pub downtime_s: f64,
    /// Through the proxy: first → last failed request, in seconds (`[app.proxy]` only).
    pub proxy_downtime_s: Option<f64>,
    /// Through the proxy: requests that failed.
    pub proxy_failed: Option<u64>,
}

/// A tenant's newest successful restore drill.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct DrillMetric {
    /// When it ended (unix seconds).
    pub at: i64,
    /// Fetch to healthy, in seconds.
    pub duration_s: f64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    jobs: BTreeMap<String, JobMetrics>,
    snapshots: BTreeMap<String, i64>,
    #[serde(default)]
    drills: BTreeMap<String, DrillMetric>,
    #[serde(default)]
    switches: BTreeMap<String, SwitchMetric>,
    #[serde(default)]
    pauses: Vec<PauseMetric>,
    rolled: Option<u64>,
    halted: Option<u64>,
}

fn sidecar(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".json");
    PathBuf::from(p)
}

/// Merge `m` into the metrics file at `path` and rewrite it atomically.
pub fn record(path: &Path, m: &JobMetrics) -> Result<()> {
    let side = sidecar(path);
    let mut state: State = std::fs::read(&side).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    state.jobs.insert(m.job.clone(), m.clone());
    state.snapshots.extend(m.snapshots.iter().map(|(k, v)| (k.clone(), *v)));
    state.drills.extend(m.drills.iter().map(|(k, v)| (k.clone(), *v)));
    state.switches.extend(m.switches.iter().map(|(k, v)| (k.clone(), *v)));
    if let Some(p) = &m.pauses {
        state.pauses.clone_from(p);
    }
    if m.rolled.is_some() || m.halted.is_some() {
        state.rolled = m.rolled;
        state.halted = m.halted;
    }
    let text = render(&state, jiff::Timestamp::now().as_second());
    let json = serde_json::to_vec(&state).map_err(|source| Error::Json { what: "the metrics sidecar", source })?;
    crate::fsutil::atomic_write(&side, &json, 0o644).map_err(|e| Error::io(&side, e))?;
    crate::fsutil::atomic_write(path, text.as_bytes(), 0o644).map_err(|e| Error::io(path, e))
}

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn render(s: &State, now: i64) -> String {
    let mut o = String::new();
    let mut gauge = |name: &str, help: &str, rows: Vec<(String, String)>| {
        if rows.is_empty() {
            return;
        }
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (labels, v) in rows {
            let _ = writeln!(o, "{name}{labels} {v}");
        }
    };
    let per_job = |f: &dyn Fn(&JobMetrics) -> Option<String>| -> Vec<(String, String)> {
        s.jobs.values().filter_map(|j| f(j).map(|v| (format!("{{job=\"{}\"}}", esc(&j.job)), v))).collect()
    };
    gauge(
        "slipway_last_run_timestamp_seconds",
        "When the job last ended (unix time).",
        per_job(&|j| Some(j.ended.to_string())),
    );
    gauge(
        "slipway_last_run_success",
        "1 if the job's last run succeeded, else 0.",
        per_job(&|j| Some(u8::from(j.exit_code == 0).to_string())),
    );
    gauge(
        "slipway_last_run_exit_code",
        "Exit code of the job's last run.",
        per_job(&|j| Some(j.exit_code.to_string())),
    );
    gauge(
        "slipway_last_run_duration_seconds",
        "Duration of the job's last run.",
        per_job(&|j| Some(format!("{:.3}", j.duration_s))),
    );
    gauge(
        "slipway_archived_bytes",
        "Bytes of archives written by the job's last run.",
        per_job(&|j| j.archived_bytes.map(|v| v.to_string())),
    );
    gauge(
        "slipway_uploaded_bytes",
        "Bytes uploaded by the job's last run.",
        per_job(&|j| j.uploaded_bytes.map(|v| v.to_string())),
    );
    gauge(
        "slipway_rollout_tenants_rolled",
        "Tenants rolled by the last rollout.",
        s.rolled.map(|v| (String::new(), v.to_string())).into_iter().collect(),
    );
    gauge(
        "slipway_rollout_tenants_halted",
        "Tenants halted (and restored) by the last rollout.",
        s.halted.map(|v| (String::new(), v.to_string())).into_iter().collect(),
    );
    let snaps = |f: &dyn Fn(i64) -> i64| -> Vec<(String, String)> {
        s.snapshots.iter().map(|(t, ts)| (format!("{{tenant=\"{}\"}}", esc(t)), f(*ts).to_string())).collect()
    };
    gauge("slipway_snapshot_age_seconds", "Age of the tenant's newest daily snapshot.", snaps(&|ts| now - ts));
    gauge(
        "slipway_snapshot_last_success_timestamp_seconds",
        "When the tenant's newest daily snapshot was taken (unix time).",
        snaps(&|ts| ts),
    );
    let drills = |f: &dyn Fn(&DrillMetric) -> String| -> Vec<(String, String)> {
        s.drills.iter().map(|(t, d)| (format!("{{tenant=\"{}\"}}", esc(t)), f(d))).collect()
    };
    gauge(
        "slipway_drill_last_success_timestamp_seconds",
        "When the tenant's last successful restore drill ended (unix time).",
        drills(&|d| d.at.to_string()),
    );
    gauge(
        "slipway_drill_duration_seconds",
        "How long the tenant's last successful restore drill took, from fetching the archive to healthy.",
        drills(&|d| format!("{:.3}", d.duration_s)),
    );
    let switches = |f: &dyn Fn(&SwitchMetric) -> Option<String>| -> Vec<(String, String)> {
        s.switches.iter().filter_map(|(t, m)| f(m).map(|v| (format!("{{tenant=\"{}\"}}", esc(t)), v))).collect()
    };
    gauge(
        "slipway_rollout_downtime_seconds",
        "The tenant's last switch by rollout: stop to new container healthy.",
        switches(&|m| Some(format!("{:.3}", m.downtime_s))),
    );
    gauge(
        "slipway_rollout_proxy_downtime_seconds",
        "The tenant's last switch through the proxy: first to last failed request.",
        switches(&|m| m.proxy_downtime_s.map(|v| format!("{v:.3}"))),
    );
    gauge(
        "slipway_rollout_proxy_failed_requests",
        "Requests through the proxy that failed during the tenant's last switch.",
        switches(&|m| m.proxy_failed.map(|v| v.to_string())),
    );
    gauge(
        "slipway_rollout_paused_since_timestamp_seconds",
        "A rollout run paused (over its budget, or its window closed) until `rollout resume` or `abort`: since when.",
        s.pauses
            .iter()
            .map(|p| {
                (
                    format!("{{app=\"{}\",run=\"{}\",kind=\"{}\"}}", esc(&p.app), esc(&p.run), esc(&p.kind)),
                    p.since.to_string(),
                )
            })
            .collect(),
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_parses_as_prometheus_text_and_keeps_every_jobs_series() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("slipway.prom");
        let mut snap = JobMetrics {
            job: "snapshot".into(),
            exit_code: 0,
            ended: 1_700_000_000,
            duration_s: 12.5,
            archived_bytes: Some(4096),
            ..Default::default()
        };
        snap.snapshots.insert("t1".into(), 1_699_999_000);
        snap.drills.insert("t1".into(), DrillMetric { at: 1_699_000_000, duration_s: 4.25 });
        record(&p, &snap).unwrap();
        let mut roll = JobMetrics {
            job: "rollout".into(),
            exit_code: 3,
            ended: 1_700_000_100,
            duration_s: 2.0,
            rolled: Some(0),
            halted: Some(1),
            ..Default::default()
        };
        let switch = SwitchMetric { downtime_s: 0.5, proxy_downtime_s: Some(2.25), proxy_failed: Some(112) };
        roll.switches.insert("t1".into(), switch);
        roll.switches.insert("t2".into(), SwitchMetric { downtime_s: 0.4, ..Default::default() });
        record(&p, &roll).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        let lines = text.lines().map(|l| Ok(l.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
        let get = |name: &str, label: Option<(&str, &str)>| {
            scrape
                .samples
                .iter()
                .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
                .map(|s| match s.value {
                    prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
                    _ => f64::NAN,
                })
                .unwrap_or_else(|| panic!("no {name} {label:?} in\n{text}"))
        };
        assert_eq!(get("slipway_last_run_success", Some(("job", "snapshot"))), 1.0);
        assert_eq!(get("slipway_last_run_success", Some(("job", "rollout"))), 0.0);
        assert_eq!(get("slipway_last_run_exit_code", Some(("job", "rollout"))), 3.0);
        assert_eq!(get("slipway_last_run_timestamp_seconds", Some(("job", "snapshot"))), 1_700_000_000.0);
        assert_eq!(get("slipway_last_run_duration_seconds", Some(("job", "snapshot"))), 12.5);
        assert_eq!(get("slipway_archived_bytes", Some(("job", "snapshot"))), 4096.0);
        assert_eq!(get("slipway_rollout_tenants_halted", None), 1.0);
        assert_eq!(get("slipway_rollout_tenants_rolled", None), 0.0);
        assert_eq!(get("slipway_snapshot_last_success_timestamp_seconds", Some(("tenant", "t1"))), 1_699_999_000.0);
        assert!(get("slipway_snapshot_age_seconds", Some(("tenant", "t1"))) > 0.0);
        assert_eq!(get("slipway_drill_last_success_timestamp_seconds", Some(("tenant", "t1"))), 1_699_000_000.0);
        assert_eq!(get("slipway_drill_duration_seconds", Some(("tenant", "t1"))), 4.25);
        assert_eq!(get("slipway_rollout_downtime_seconds", Some(("tenant", "t2"))), 0.4);
        assert_eq!(get("slipway_rollout_proxy_downtime_seconds", Some(("tenant", "t1"))), 2.25);
        assert_eq!(get("slipway_rollout_proxy_failed_requests", Some(("tenant", "t1"))), 112.0);
        assert!(!text.contains("slipway_rollout_proxy_failed_requests{tenant=\"t2\"}"), "no proxy, no proxy series");
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o644);
    }
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn an_open_pause_is_a_series_until_a_job_finds_it_ended_and_a_job_that_cannot_tell_keeps_it() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("slipway.prom");
        let pause = PauseMetric {
            app: "web".into(),
            run: "20261206T050103Z-ea6f".into(),
            kind: "budget".into(),
            since: 1_700_000_000,
        };
        let job = |name: &str, pauses| JobMetrics { job: name.into(), pauses, ..Default::default() };
        record(&p, &job("rollout", Some(vec![pause]))).unwrap();
        let series = "slipway_rollout_paused_since_timestamp_seconds{app=\"web\",run=\"20261206T050103Z-ea6f\",kind=\"budget\"} 1700000000";
        assert!(std::fs::read_to_string(&p).unwrap().contains(series));
        // A job that could not read the run record says nothing of pauses: the series stays.
        record(&p, &job("snapshot", None)).unwrap();
        assert!(std::fs::read_to_string(&p).unwrap().contains(series));
        // The next job that read none open (resumed, aborted, timed out): gone.
        record(&p, &job("reconcile", Some(vec![]))).unwrap();
        assert!(!std::fs::read_to_string(&p).unwrap().contains("slipway_rollout_paused"));
    }
}
