//! The `--json` output as typed values, for tests to read like a user's tool would.
//!
//! These are the parts of the public JSON contract the tests check, written down once: a
//! field renamed or retyped in a job's report fails here, by name, instead of turning some
//! `json["report"]["apps"][0]…` lookup into a silent `null`. Fields the tests do not read are
//! left out (serde ignores them), so a report may grow without touching the tests.

#![allow(dead_code)]

use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::path::PathBuf;

/// Every `--json` line: the envelope, and the job's report (or the error that ended it).
#[derive(Debug, Deserialize)]
pub struct Envelope<R> {
    /// Exit code 0.
    pub ok: bool,
    /// The job's name.
    pub job: String,
    /// The run record's id, when the job recorded one.
    pub run_id: Option<String>,
    /// The exit code the process returned.
    pub exit_code: u8,
    /// The outcome word.
    pub outcome: String,
    /// The report (absent when an error ended the job first).
    pub report: Option<R>,
    /// The error that ended the job before it produced a report.
    pub error: Option<String>,
}

/// Parse stdout as an envelope of `R`, panicking with the output when it does not fit.
pub fn parse<R: DeserializeOwned>(stdout: &str, stderr: &str) -> Envelope<R> {
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("stdout is not the expected JSON report ({e}): {stdout}\nstderr: {stderr}"))
}

impl<R> Envelope<R> {
    /// The report; panics when the job ended with an error instead.
    pub fn report(self) -> R {
        match self.report {
            Some(r) => r,
            None => panic!("no report; the job ended with error {:?}", self.error),
        }
    }
}

/// `rollout` / `reconcile`.
#[derive(Debug, Deserialize)]
pub struct Rollout {
    pub apps: Vec<RolloutApp>,
    /// The desired-state commit.
    #[serde(default)]
    pub commit: String,
    /// What admitted it (rollout only).
    pub trust: Option<Trust>,
}

/// One app of a rollout (reconcile adds `action`).
#[derive(Debug, Deserialize)]
pub struct RolloutApp {
    pub plan: Option<Plan>,
    #[serde(default)]
    pub tenants: Vec<TenantResult>,
    pub run_id: Option<String>,
    /// reconcile only: what it did with the app.
    pub action: Option<String>,
    /// The waves its tenants rolled in (`[app.rollout]`).
    #[serde(default)]
    pub waves: Vec<Wave>,
}

/// One wave of a rollout.
#[derive(Debug, Deserialize, PartialEq)]
pub struct Wave {
    pub index: usize,
    pub name: String,
    pub tenants: Vec<String>,
    pub max_parallel: usize,
    pub bake_s: u64,
}

/// What admitted a rollout's commit (`report.trust`).
#[derive(Debug, Deserialize)]
pub struct Trust {
    pub commit: String,
    pub signature: TrustSignature,
    pub images: Vec<AdmittedImage>,
}

/// The commit's signature as checked.
#[derive(Debug, Deserialize)]
pub struct TrustSignature {
    pub state: String,
    pub principal: Option<String>,
}

/// The allow-list rule that admitted an app's image.
#[derive(Debug, Deserialize)]
pub struct AdmittedImage {
    pub app: String,
    pub rule: String,
}

/// `rollback`.
#[derive(Debug, Deserialize)]
pub struct Rollback {
    pub tenants: Vec<RolledBack>,
}

/// One tenant of a rollback: undone, or skipped with the reason.
#[derive(Debug, Deserialize)]
pub struct RolledBack {
    pub tenant: String,
    pub skipped: Option<String>,
}

/// The plan of one app.
#[derive(Debug, Deserialize)]
pub struct Plan {
    pub items: Vec<PlanItem>,
    #[serde(default)]
    pub held: Vec<String>,
    #[serde(default)]
    pub up_to_date: Vec<String>,
}

/// One tenant to roll.
#[derive(Debug, Deserialize)]
pub struct PlanItem {
    pub tenant: String,
    pub canary: bool,
    /// How its pre-rollout data is kept.
    pub copy: Option<CopyPlan>,
}

/// A plan item's copy path: `pre_copy` (with `reflink`) or `archive_while_down` (with `why`).
#[derive(Debug, Deserialize)]
pub struct CopyPlan {
    pub path: String,
    pub reflink: Option<bool>,
    pub why: Option<String>,
}

/// One mirror pass of a tenant's data dir (a rollout's copy, a snapshot's staging copy).
#[derive(Debug, Deserialize)]
pub struct MirrorPass {
    pub method: String,
    pub files_copied: u64,
    pub bytes_copied: u64,
    pub removed: u64,
    pub unchanged: u64,
}

/// One tenant's rollout result.
#[derive(Debug, Deserialize)]
pub struct TenantResult {
    pub tenant: String,
    pub outcome: String,
    pub downtime_ms: Option<u64>,
    pub detail: Option<String>,
    pub timings: Timings,
    pub snapshot: Option<PathBuf>,
    pub pre_copy: Option<MirrorPass>,
    pub copy_delta: Option<MirrorPass>,
    pub proxy: Option<ProxyResult>,
}

/// What customers saw through the proxy during one tenant's switch.
#[derive(Debug, Deserialize)]
pub struct ProxyResult {
    pub host: String,
    pub requests: u64,
    pub failed: u64,
    pub downtime_ms: u64,
    pub errors: std::collections::BTreeMap<String, u64>,
    pub route_ms: Option<u64>,
}

/// Milliseconds per rollout step (the ones the tests check).
#[derive(Debug, Deserialize)]
pub struct Timings {
    pub stop_ms: u64,
}

/// `snapshot`.
#[derive(Debug, Deserialize)]
pub struct Snapshot {
    pub day: String,
    pub dir: PathBuf,
    pub archives: Vec<SnapshotArchive>,
    #[serde(default)]
    pub skipped: Vec<String>,
    #[serde(default)]
    pub staging_removed: Vec<String>,
}

/// One archive of a snapshot.
#[derive(Debug, Deserialize)]
pub struct SnapshotArchive {
    pub tenant: Option<String>,
    pub path: PathBuf,
    pub outcome: String,
    pub detail: Option<String>,
    pub duration_ms: u64,
    /// How long the tenant was paused for it.
    pub pause_ms: u64,
    /// `staged`, `off`, `short_of_space`, `not_held`, or none.
    pub staging: Option<String>,
    /// What the paused pass copied into the staging copy.
    pub delta: Option<MirrorPass>,
    /// Why the staging copy was not used.
    pub note: Option<String>,
    /// The SQLite files copied online and archived in place of the live ones.
    #[serde(default)]
    pub sqlite: Vec<SqliteCopy>,
}

/// One SQLite file of a snapshot, as its copy went into the archive.
#[derive(Debug, Deserialize)]
pub struct SqliteCopy {
    pub path: String,
    pub sha256: String,
    pub size: u64,
    pub sqlite_version: String,
    /// A stack tenant's: the data mount (its source) whose archive holds the copy at `path`.
    #[serde(default)]
    pub mount: Option<String>,
}

/// `sync`.
#[derive(Debug, Deserialize)]
pub struct Sync {
    pub files: Vec<SyncFile>,
    pub uploaded_bytes: u64,
    #[serde(default)]
    pub retired: Vec<String>,
    /// Multipart uploads of an earlier, interrupted run that this sync aborted.
    pub aborted_stale_uploads: usize,
}

/// One file a sync uploaded (or would, or failed).
#[derive(Debug, Deserialize)]
pub struct SyncFile {
    pub key: String,
    pub size: u64,
    pub action: String,
    /// `age` when the upload was encrypted.
    #[serde(default)]
    pub encryption: Option<String>,
}

/// `verify`.
#[derive(Debug, Deserialize)]
pub struct Verify {
    pub archives: Vec<Checked>,
    /// Snapshot dirs without a manifest.
    #[serde(default)]
    pub incomplete: Vec<PathBuf>,
}

/// One archive verified.
#[derive(Debug, Deserialize)]
pub struct Checked {
    pub archive: PathBuf,
    pub ok: bool,
    pub detail: Option<String>,
}

/// `prune`.
#[derive(Debug, Deserialize)]
pub struct Prune {
    pub items: Vec<PruneItem>,
    #[serde(default)]
    pub replaced: Vec<PruneReplaced>,
    /// Remote snapshots whose manifest could not be read: kept, named with the reason.
    #[serde(default)]
    pub remote_unreadable: Vec<String>,
}

/// The fate of one restore run's replaced data in a prune.
#[derive(Debug, Clone, Deserialize)]
pub struct PruneReplaced {
    pub run: String,
    pub dir: PathBuf,
    pub tenants: Vec<String>,
    pub keep: bool,
}

/// `slipway restore --json`.
#[derive(Debug, Clone, Deserialize)]
pub struct Restore {
    pub target: PathBuf,
    pub entries: u64,
    pub replaced: Option<PathBuf>,
    pub detail: String,
}

/// One snapshot's fate in a prune.
#[derive(Debug, Clone, Deserialize)]
pub struct PruneItem {
    pub location: String,
    pub kind: String,
    pub snapshot: String,
    pub tenant: Option<String>,
    pub keep: bool,
    pub reasons: Vec<String>,
}

/// `runs`.
#[derive(Debug, Deserialize)]
pub struct Runs {
    pub runs: Vec<Run>,
}

/// One run record.
#[derive(Debug, Deserialize)]
pub struct Run {
    pub id: String,
    pub job: String,
    pub trigger: String,
    pub outcome: Option<String>,
    pub finished_at: Option<String>,
}

/// `runs show`.
#[derive(Debug, Deserialize)]
pub struct RunShow {
    pub run: Run,
}

/// `recover`.
#[derive(Debug, Deserialize)]
pub struct Recover {
    pub runs: Vec<serde_json::Value>,
    /// What it swept, one line each.
    #[serde(default)]
    pub swept: Vec<String>,
}

/// `status`.
#[derive(Debug, Deserialize)]
pub struct Status {
    pub attention: Vec<String>,
    #[serde(default)]
    pub apps: Vec<StatusApp>,
}

/// One app of `status`.
#[derive(Debug, Deserialize)]
pub struct StatusApp {
    pub tenants: Vec<StatusTenant>,
}

/// One tenant of `status`.
#[derive(Debug, Deserialize)]
pub struct StatusTenant {
    pub tenant: String,
    /// When its last successful restore drill ended.
    pub last_drill: Option<String>,
}

/// `slipway drill --json`.
#[derive(Debug, Deserialize)]
pub struct Drill {
    pub plan: DrillPlan,
    pub tenants: Vec<DrillTenant>,
    pub swept: Vec<String>,
}

/// What a drill set out to do.
#[derive(Debug, Deserialize)]
pub struct DrillPlan {
    pub remote: bool,
    pub tenants: Vec<serde_json::Value>,
}

/// One tenant's drill.
#[derive(Debug, Deserialize)]
pub struct DrillTenant {
    pub tenant: String,
    /// passed, failed, interrupted.
    pub outcome: String,
    pub snapshot: Option<String>,
    pub archive: Option<PathBuf>,
    pub archive_bytes: u64,
    pub data_bytes: u64,
    pub entries: u64,
    pub restore_ms: Option<u64>,
    pub healthy_ms: Option<u64>,
    /// The throw-away container's (and its network's) name.
    pub container: String,
    pub changes: Option<DrillChanges>,
    pub detail: String,
    pub left: Vec<String>,
}

/// How a drill's container differed from the tenant's.
#[derive(Debug, Deserialize)]
pub struct DrillChanges {
    pub labels_stripped: Vec<String>,
    pub networks_left: Vec<String>,
    pub mounts_left: Vec<String>,
    pub ports_unpublished: Vec<String>,
    pub restart_replaced: String,
}

/// `init`.
#[derive(Debug, Deserialize)]
pub struct Init {
    pub containers: usize,
    pub apps: Vec<InitApp>,
    pub skipped: Vec<InitSkipped>,
    pub config: InitFile,
    pub fleet: InitFile,
    pub next: Vec<String>,
}

/// One proposed app.
#[derive(Debug, Deserialize)]
pub struct InitApp {
    pub name: String,
    pub repository: String,
    pub image: String,
    pub select: String,
    pub tenant_from: String,
    pub data_dir: String,
    pub health_port: u16,
    pub health_path: String,
    pub health_checked: bool,
    pub tenants: Vec<InitTenant>,
}

/// One tenant of a proposed app.
#[derive(Debug, Deserialize)]
pub struct InitTenant {
    pub tenant: String,
    pub container: String,
}

/// A container init left out.
#[derive(Debug, Deserialize)]
pub struct InitSkipped {
    pub container: String,
    pub reason: String,
}

/// A file init wrote (or would write).
#[derive(Debug, Deserialize)]
pub struct InitFile {
    pub path: PathBuf,
    pub written: bool,
    pub text: String,
}

/// `doctor`.
#[derive(Debug, Deserialize)]
pub struct Doctor {
    pub checks: Vec<DoctorCheck>,
    pub dirs: Vec<DoctorDir>,
}

/// One line of doctor.
#[derive(Debug, Deserialize)]
pub struct DoctorCheck {
    pub check: String,
    pub level: String,
    pub detail: String,
    pub fix: Option<String>,
}

/// A directory as doctor found it.
#[derive(Debug, Deserialize)]
pub struct DoctorDir {
    pub key: String,
    pub writable: bool,
    pub filesystem: Option<String>,
    pub reflinks: Option<bool>,
}

impl Doctor {
    /// The line of one check (panics when there is none).
    pub fn line(&self, check: &str) -> &DoctorCheck {
        self.checks.iter().find(|c| c.check == check).unwrap_or_else(|| panic!("no {check} line in {:?}", self.checks))
    }
}
