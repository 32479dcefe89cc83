//! The words and entries of the run record, as data: the outcome a run is finished with
//! ([`Outcome`]); the steps the backup jobs journal ([`SnapshotStep`], [`RestoreStep`],
//! [`DrillStep`]; the rollout's are `step::Step` and `step::UndoStep`), every one a
//! [`JournalStep`] — the only thing `Ctx::begin` journals, so no step is a word spelled by hand;
//! and the typed entries `recover` reads back from a snapshot's or restore's journal
//! ([`HeldRow`]). Shared model; the run guard (`context::RunGuard`) is the only writer of a
//! run's outcome.
//!
//! Invariants: an outcome word and a step word never change (`runs`, `status`, `reconcile`,
//! `recover` and state.db files of earlier versions read them); every [`ExitKind`] is an
//! outcome with its own word and code; a row `recover` reads whose word no step has, or whose
//! detail is none of the shapes its step writes, is an error naming the run, the tenant and the
//! row, never skipped.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, ExitKind, Result};
use crate::step::{Journaled, StackJournal, Step, TenantJournal, UndoStep, UnknownStep};

/// How a run ended, as the run record stores it (word and exit code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The run ended with the job's exit kind (its word: `success`, `failed`, `halted`, …).
    Exit(ExitKind),
    /// `trust` refused the desired-state commit before anything was pulled or changed (exit 2).
    Refused,
    /// A run that died (or left a tenant held) was finished by `recover`, every tenant it
    /// caught safe again (exit code 1: the run itself did not finish its work).
    Recovered,
}

impl Outcome {
    /// Every outcome a run can be finished with.
    pub fn all() -> impl Iterator<Item = Outcome> {
        ExitKind::ALL.into_iter().map(Outcome::Exit).chain([Outcome::Refused, Outcome::Recovered])
    }

    /// The word the run record stores.
    pub fn word(self) -> &'static str {
        match self {
            Outcome::Exit(k) => k.word(),
            Outcome::Refused => "refused",
            Outcome::Recovered => "recovered",
        }
    }

    /// The outcome the run record stores as `word`, if any (a word of another version: None).
    pub fn of_word(word: &str) -> Option<Outcome> {
        Outcome::all().find(|o| o.word() == word)
    }

    /// The exit code the run record stores.
    pub fn code(self) -> u8 {
        match self {
            Outcome::Exit(k) => k.code(),
            Outcome::Refused => ExitKind::Usage.code(),
            Outcome::Recovered => ExitKind::Failure.code(),
        }
    }
}

impl From<ExitKind> for Outcome {
    fn from(k: ExitKind) -> Outcome {
        Outcome::Exit(k)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}

/// A step a journal row names: what `Ctx::begin` takes, so the word comes from the step's own
/// enum, never from a string spelled at the call.
pub trait JournalStep: Copy {
    /// The word the journal stores.
    fn word(self) -> &'static str;
}

impl JournalStep for Step {
    fn word(self) -> &'static str {
        self.as_str()
    }
}

impl JournalStep for UndoStep {
    fn word(self) -> &'static str {
        self.as_str()
    }
}

impl JournalStep for Journaled {
    fn word(self) -> &'static str {
        self.as_str()
    }
}

/// A step enum with a fixed word per step: the enum, `ALL`, its word, parsing (an unknown word
/// is an [`UnknownStep`] naming the known ones), `Display` and [`JournalStep`].
macro_rules! journal_steps {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident => $w:literal,)+ }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vm])* $v,)+
        }

        impl $name {
            /// Every step, in the order the job takes them.
            pub const ALL: &'static [$name] = &[$($name::$v,)+];

            /// The word the journal stores for this step.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$v => $w,)+
                }
            }
        }

        impl JournalStep for $name {
            fn word(self) -> &'static str {
                self.as_str()
            }
        }

        impl FromStr for $name {
            type Err = UnknownStep;
            fn from_str(word: &str) -> std::result::Result<$name, UnknownStep> {
                $name::ALL.iter().copied().find(|s| s.as_str() == word).ok_or_else(|| UnknownStep {
                    word: word.to_string(),
                    known: $name::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
                })
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

journal_steps!(
    /// A step of a daily snapshot's journal (a tenant, or a stack's writers and mounts).
    SnapshotStep {
        /// Bring the tenant's staging copy up to date while it runs (hold `none`), or a stack
        /// mount's (its mount named).
        Stage => "stage",
        /// The tenant quiesced for the last, delta-only mirror pass; ended `ok` once it runs again.
        StageDelta => "stage-delta",
        /// Archive the tenant (quiesced, without staging; ended `ok` once it runs again) or its
        /// staging copy (running), or one of a stack's mounts (its mount named).
        Archive => "archive",
        /// Written by `recover` once it gave back the hold the run left open.
        Released => "released",
    }
);

journal_steps!(
    /// A step of a restore's journal (a tenant, or a stack tenant's mounts).
    RestoreStep {
        /// A stack restore's first step: every mount it will swap.
        Mounts => "mounts",
        /// Stop the tenant (or one of a stack's writers).
        Stop => "stop",
        /// Swap the restored data in (a stack: one mount's swap, or its swap back).
        Restore => "restore",
        /// Replay the tenant's database dumps (`[app.database]`).
        Replay => "replay",
        /// Start the tenant again and check its health.
        Start => "start",
        /// A stack restore putting every mount it swapped back (a swap or the gate failed).
        UndoRestore => "undo-restore",
        /// Written by `recover` once it gave back the hold the run left open.
        Released => "released",
    }
);

journal_steps!(
    /// A step of a restore drill's journal (the live tenant is never touched).
    DrillStep {
        /// Remove an earlier drill's leftovers of this tenant.
        Cleanup => "cleanup",
        /// Fetch (or find) the archive.
        Fetch => "fetch",
        /// Extract it into a scratch dir.
        Extract => "extract",
        /// Start a throw-away container on it.
        Start => "start",
        /// Health-check the throw-away container.
        Health => "health",
    }
);

/// A container a job paused or stopped while it worked on it (snapshot quiesce, restore):
/// what `recover` gives back.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HeldContainer {
    /// Container name.
    pub container: String,
    /// `pause` or `stop`, or `none` (found not running, or not held: left as it was).
    pub hold: String,
}

/// The detail of a stack snapshot's mount step: which mount, for people.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MountDetail {
    /// What the mount is: `volume "x" at /data`.
    pub mount: String,
}

/// The detail of a stack restore's [`RestoreStep::Mounts`]: every mount it will swap — what
/// `recover` needs to tell a finished restore from a partial one.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RestorePlanDetail {
    /// Every mount dir the restore swaps.
    pub stack_mounts: Vec<PathBuf>,
}

/// The detail of a stack restore's [`RestoreStep::Restore`], begun and ended.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MountSwapDetail {
    /// The mount's dir.
    pub dir: PathBuf,
    /// Where the data it replaced is kept (set when the swap is done).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced: Option<PathBuf>,
    /// This step swapped the kept data back into the dir (an undo).
    #[serde(default)]
    pub back: bool,
}

/// The end detail of a tenant's [`RestoreStep::Restore`]: where the data it replaced is kept,
/// and (`restore --run`) the kept data it put back.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ReplacedDetail {
    /// Where the data it replaced is kept.
    #[serde(default)]
    pub replaced: Option<PathBuf>,
    /// The kept data put back (`restore --run`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<PathBuf>,
}

/// The detail of a stack restore's [`RestoreStep::Replay`]: the database's container.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReplayDetail {
    /// The database's container.
    pub database: String,
}

/// The detail of a stack restore's [`RestoreStep::UndoRestore`]: why it puts the mounts back.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UndoDetail {
    /// Why.
    #[serde(default)]
    pub why: Option<String>,
}

/// The step of a row of a snapshot's or a restore's journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeldStep {
    /// A snapshot's.
    Snapshot(SnapshotStep),
    /// A restore's.
    Restore(RestoreStep),
}

impl HeldStep {
    /// Whether this step, ended `ok`, gave back the hold it journaled: a snapshot's `archive`
    /// and `stage-delta` unpause (or start) the tenant before they end, a restore's `start`
    /// starts it (its `stop` and `restore` end `ok` with the tenant still stopped); a
    /// `released` row gave it back whatever its outcome.
    pub fn releases(self, ended_ok: bool) -> bool {
        match self {
            HeldStep::Snapshot(SnapshotStep::Released) | HeldStep::Restore(RestoreStep::Released) => true,
            HeldStep::Snapshot(SnapshotStep::Archive | SnapshotStep::StageDelta)
            | HeldStep::Restore(RestoreStep::Start) => ended_ok,
            _ => false,
        }
    }
}

impl fmt::Display for HeldStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeldStep::Snapshot(s) => s.fmt(f),
            HeldStep::Restore(s) => s.fmt(f),
        }
    }
}

/// What the detail of a row of a snapshot's or a restore's journal holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeldDetail {
    /// A container held (or found not running: hold `none`).
    Hold(HeldContainer),
    /// A stack snapshot's mount.
    Mount(MountDetail),
    /// A stack restore's plan.
    Plan(RestorePlanDetail),
    /// A stack restore's swap of one mount (or its swap back).
    Swap(MountSwapDetail),
    /// A tenant's restore, ended: where the data it replaced is kept.
    Replaced(ReplacedDetail),
    /// A stack restore's database replay.
    Replay(ReplayDetail),
    /// A stack restore putting its mounts back.
    Undo(UndoDetail),
}

/// One row of a snapshot's or a restore's journal, typed: what `recover` (and `restore --run`)
/// reads.
#[derive(Debug, Clone)]
pub struct HeldRow {
    /// The row's id.
    pub id: i64,
    /// Its tenant.
    pub tenant: Option<String>,
    /// Its step.
    pub step: HeldStep,
    /// Whether it ended `ok` (not: unfinished, or failed).
    pub ended_ok: bool,
    /// Its outcome as stored (`ok`, `failed`), none while unfinished.
    pub outcome: Option<String>,
    /// Its detail.
    pub detail: HeldDetail,
}

/// `text` as the first of `shapes` it parses as, else None.
/// One shape a detail may have: its parser.
type Shape<'a> = &'a dyn Fn(&str) -> Option<HeldDetail>;

fn first_shape(text: &str, shapes: &[Shape<'_>]) -> Option<HeldDetail> {
    shapes.iter().find_map(|parse| parse(text))
}

fn shape<T: DeserializeOwned>(wrap: fn(T) -> HeldDetail) -> impl Fn(&str) -> Option<HeldDetail> {
    move |text| serde_json::from_str::<T>(text).ok().map(wrap)
}

impl HeldRow {
    /// Read `row` of run `run` of `job` (`snapshot` or `restore`): its word must be a step of
    /// that job, and its detail one of the shapes that step writes. Err names the run, the
    /// tenant and the row.
    pub fn parse(job: &str, run: &str, row: &slipway_state::Step) -> Result<HeldRow> {
        let tenant = row.tenant.as_deref().unwrap_or("-");
        let bad = |what: String| {
            Error::Other(format!(
                "state.db: run {run} ({job}), tenant {tenant}, step row {}: {what}; this journal was written by another \
                 slipway version or changed by hand: run that version's `slipway recover`, or give back what the run \
                 held and finish run {run} by hand",
                row.id
            ))
        };
        let step = match job {
            "snapshot" => HeldStep::Snapshot(row.step.parse().map_err(|e: UnknownStep| bad(e.to_string()))?),
            "restore" => HeldStep::Restore(row.step.parse().map_err(|e: UnknownStep| bad(e.to_string()))?),
            other => return Err(bad(format!("a {other} run's journal holds no container recover gives back"))),
        };
        let text = row.detail.as_deref().unwrap_or_default();
        let hold = shape(HeldDetail::Hold);
        let mount = shape(HeldDetail::Mount);
        let plan = shape(HeldDetail::Plan);
        let swap = shape(HeldDetail::Swap);
        let replaced = shape(HeldDetail::Replaced);
        let replay = shape(HeldDetail::Replay);
        let undo = shape(HeldDetail::Undo);
        let parsed = match step {
            HeldStep::Snapshot(SnapshotStep::Stage | SnapshotStep::Archive) => first_shape(text, &[&hold, &mount]),
            HeldStep::Snapshot(SnapshotStep::StageDelta | SnapshotStep::Released)
            | HeldStep::Restore(RestoreStep::Stop | RestoreStep::Start | RestoreStep::Released) => {
                first_shape(text, &[&hold])
            }
            HeldStep::Restore(RestoreStep::Mounts) => first_shape(text, &[&plan]),
            HeldStep::Restore(RestoreStep::Restore) => first_shape(text, &[&hold, &swap, &replaced]),
            HeldStep::Restore(RestoreStep::Replay) => first_shape(text, &[&hold, &replay]),
            HeldStep::Restore(RestoreStep::UndoRestore) => first_shape(text, &[&undo]),
        };
        let detail = parsed.ok_or_else(|| bad(format!("the detail of step \"{step}\" does not parse: {text:?}")))?;
        Ok(HeldRow {
            id: row.id,
            tenant: row.tenant.clone(),
            step,
            ended_ok: row.outcome.as_deref() == Some("ok"),
            outcome: row.outcome.clone(),
            detail,
        })
    }

    /// Every row of run `run` of `job`, typed (the first that does not parse is the error).
    pub fn parse_all(job: &str, run: &str, rows: &[slipway_state::Step]) -> Result<Vec<HeldRow>> {
        rows.iter().map(|r| HeldRow::parse(job, run, r)).collect()
    }
}

/// The detail of a rollout's (or a rollback's) journal row: the tenant's journal as the step
/// began or ended with it, or why a step failed.
#[derive(Debug, Clone)]
pub enum RolloutDetail {
    /// A single container's journal.
    Tenant(Box<TenantJournal>),
    /// A stack tenant's journal (`[app.services]`).
    Stack(Box<StackJournal>),
    /// A step ended failed with why in place of its journal (an undo step's end).
    Failed(FailedDetail),
}

/// The end detail of a failed undo step: why it failed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FailedDetail {
    /// Why.
    pub error: String,
}

/// One row of a rollout's or a rollback's journal, typed: what `recover` and `rollback` read. A
/// row of no tenant, a word no rollout or undo step has, or a detail of no shape these steps
/// write is an error naming the run, the tenant and the row, never skipped.
#[derive(Debug, Clone)]
pub struct RolloutRow<'a> {
    /// The row as stored.
    pub row: &'a slipway_state::Step,
    /// Its tenant.
    pub tenant: &'a str,
    /// Its step.
    pub step: Journaled,
    /// Its detail.
    pub detail: RolloutDetail,
}

impl<'a> RolloutRow<'a> {
    /// Read `row` of run `run` (a `rollout` or `rollback` run).
    pub fn parse(run: &str, row: &'a slipway_state::Step) -> Result<RolloutRow<'a>> {
        let bad = |what: String| {
            Error::Other(format!(
                "state.db: run {run}, tenant {}, step row {}: {what}; this journal was written by another slipway \
                 version or changed by hand: run that version's `slipway recover`, or finish run {run} by hand",
                row.tenant.as_deref().unwrap_or("-"),
                row.id
            ))
        };
        let step: Journaled = row.step.parse().map_err(|e: UnknownStep| bad(e.to_string()))?;
        let tenant = row.tenant.as_deref().ok_or_else(|| bad(format!("step \"{step}\" names no tenant")))?;
        let text = row.detail.as_deref().unwrap_or_default();
        // No shape parses as another (each has fields the others lack); the common one first.
        let detail = if let Ok(j) = serde_json::from_str::<TenantJournal>(text) {
            RolloutDetail::Tenant(Box::new(j))
        } else if let Ok(j) = serde_json::from_str::<StackJournal>(text) {
            RolloutDetail::Stack(Box::new(j))
        } else if let Ok(f) = serde_json::from_str::<FailedDetail>(text) {
            RolloutDetail::Failed(f)
        } else {
            return Err(bad(format!("the detail of step \"{step}\" does not parse: {text:?}")));
        };
        let of = match &detail {
            RolloutDetail::Tenant(j) => Some(j.tenant.as_str()),
            RolloutDetail::Stack(j) => Some(j.tenant.as_str()),
            RolloutDetail::Failed(_) => None,
        };
        if let Some(of) = of.filter(|of| *of != tenant) {
            return Err(bad(format!("the detail of step \"{step}\" is tenant {of}'s journal")));
        }
        Ok(RolloutRow { row, tenant, step, detail })
    }

    /// Every row of run `run`, typed (the first that does not parse is the error).
    pub fn parse_all(run: &str, rows: &'a [slipway_state::Step]) -> Result<Vec<RolloutRow<'a>>> {
        rows.iter().map(|r| RolloutRow::parse(run, r)).collect()
    }

    /// Whether the run record's rows are of stack tenants (a run rolls one app: all or none).
    pub fn any_stack(rows: &[RolloutRow<'_>]) -> bool {
        rows.iter().any(|r| matches!(r.detail, RolloutDetail::Stack(_)))
    }
}

/// Read the word of row `row` of drill run `run` as a [`DrillStep`]; Err names the run, the
/// tenant and the row.
pub fn drill_step(run: &str, row: &slipway_state::Step) -> Result<DrillStep> {
    row.step.parse().map_err(|e: UnknownStep| {
        Error::Other(format!(
            "state.db: run {run} (drill), tenant {}, step row {}: {e}; this journal was written by another slipway \
             version: run that version's `slipway recover`, or finish run {run} by hand",
            row.tenant.as_deref().unwrap_or("-"),
            row.id
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_words_are_fixed_and_distinct() {
        let words: Vec<&str> = Outcome::all().map(Outcome::word).collect();
        assert_eq!(
            words,
            [
                "success",
                "failed",
                "usage",
                "halted",
                "person_needed",
                "lock_busy",
                "remote_auth",
                "interrupted",
                "attention",
                "refused",
                "recovered"
            ]
        );
        assert_eq!((Outcome::Refused.code(), Outcome::Recovered.code()), (2, 1));
        assert_eq!(Outcome::from(ExitKind::Halted).code(), 3);
        assert!(Outcome::all().all(|o| Outcome::of_word(o.word()) == Some(o)));
        assert_eq!(Outcome::of_word("resumed"), None);
    }

    fn row(step: &str, outcome: Option<&str>, detail: &str) -> slipway_state::Step {
        slipway_state::Step {
            id: 42,
            run_id: "20261122T030000Z-7f3a".into(),
            tenant: Some("t1".into()),
            step: step.into(),
            started_at: String::new(),
            finished_at: None,
            outcome: outcome.map(str::to_string),
            detail: Some(detail.into()),
        }
    }

    #[test]
    fn the_backup_jobs_step_words_are_those_earlier_versions_wrote() {
        // Written by every slipway so far; changing one breaks recover on existing hosts.
        let words = |all: Vec<&'static str>| all.join(" ");
        assert_eq!(words(SnapshotStep::ALL.iter().map(|s| s.as_str()).collect()), "stage stage-delta archive released");
        assert_eq!(
            words(RestoreStep::ALL.iter().map(|s| s.as_str()).collect()),
            "mounts stop restore replay start undo-restore released"
        );
        assert_eq!(words(DrillStep::ALL.iter().map(|s| s.as_str()).collect()), "cleanup fetch extract start health");
        for s in SnapshotStep::ALL {
            assert_eq!(s.as_str().parse::<SnapshotStep>(), Ok(*s));
        }
        for s in RestoreStep::ALL {
            assert_eq!(s.as_str().parse::<RestoreStep>(), Ok(*s));
        }
    }

    #[test]
    fn every_detail_the_backup_jobs_write_reads_back_typed() {
        let hold = r#"{"container":"pulse-t1","hold":"pause"}"#;
        let cases: [(&str, &str, &str, HeldDetail); 9] = [
            (
                "snapshot",
                "stage-delta",
                hold,
                HeldDetail::Hold(HeldContainer { container: "pulse-t1".into(), hold: "pause".into() }),
            ),
            (
                "snapshot",
                "archive",
                r#"{"mount":"volume \"x\" at /data"}"#,
                HeldDetail::Mount(MountDetail { mount: "volume \"x\" at /data".into() }),
            ),
            (
                "restore",
                "mounts",
                r#"{"stack_mounts":["/v/a"]}"#,
                HeldDetail::Plan(RestorePlanDetail { stack_mounts: vec!["/v/a".into()] }),
            ),
            (
                "restore",
                "restore",
                r#"{"dir":"/v/a","replaced":"/k/a"}"#,
                HeldDetail::Swap(MountSwapDetail { dir: "/v/a".into(), replaced: Some("/k/a".into()), back: false }),
            ),
            ("restore", "restore", r#"{"replaced":null}"#, HeldDetail::Replaced(ReplacedDetail::default())),
            (
                "restore",
                "restore",
                r#"{"from":"/k","replaced":"/r"}"#,
                HeldDetail::Replaced(ReplacedDetail { replaced: Some("/r".into()), from: Some("/k".into()) }),
            ),
            (
                "restore",
                "replay",
                r#"{"database":"pg-t1"}"#,
                HeldDetail::Replay(ReplayDetail { database: "pg-t1".into() }),
            ),
            ("restore", "undo-restore", r#"{"why":null}"#, HeldDetail::Undo(UndoDetail { why: None })),
            (
                "restore",
                "released",
                r#"{"container":"pulse-t1","hold":"none"}"#,
                HeldDetail::Hold(HeldContainer { container: "pulse-t1".into(), hold: "none".into() }),
            ),
        ];
        for (job, step, detail, want) in cases {
            let r = HeldRow::parse(job, "r1", &row(step, Some("ok"), detail)).unwrap();
            assert_eq!(r.detail, want, "{job} {step} {detail}");
            assert_eq!(r.step.to_string(), step);
        }
        // What each step gives back when it ends well.
        let releases = |job: &str, step: &str, ok: bool| {
            HeldRow::parse(job, "r", &row(step, None, hold)).unwrap().step.releases(ok)
        };
        assert!(releases("snapshot", "archive", true) && releases("snapshot", "stage-delta", true));
        assert!(!releases("snapshot", "archive", false) && !releases("restore", "stop", true));
        assert!(releases("restore", "start", true) && releases("restore", "released", false));
    }

    #[test]
    fn an_unknown_step_word_is_an_error_naming_the_run_the_tenant_and_the_row() {
        let e = HeldRow::parse("snapshot", "20261122T030000Z-7f3a", &row("stage-deltaa", None, "{}")).unwrap_err();
        let msg = e.to_string();
        for want in [
            "run 20261122T030000Z-7f3a (snapshot)",
            "tenant t1",
            "step row 42",
            "\"stage-deltaa\"",
            "stage, stage-delta",
        ] {
            assert!(msg.contains(want), "{want} not in: {msg}");
        }
        // A word of another job is no word of this one.
        assert!(HeldRow::parse("restore", "r", &row("stage", None, r#"{"container":"c","hold":"none"}"#)).is_err());
        assert!(HeldRow::parse("sync", "r", &row("archive", None, "{}")).is_err());
        let e = drill_step("20261122T030000Z-7f3a", &row("boot", None, "{}")).unwrap_err().to_string();
        assert!(
            e.contains("run 20261122T030000Z-7f3a (drill), tenant t1, step row 42") && e.contains("\"boot\""),
            "{e}"
        );
        assert_eq!(drill_step("r", &row("extract", None, "{}")).unwrap(), DrillStep::Extract);
    }

    #[test]
    fn a_detail_that_does_not_parse_is_an_error_naming_the_run_the_tenant_and_the_row() {
        for (job, step, detail) in [
            ("restore", "stop", r#"{"container":"pulse-t1"}"#),
            ("restore", "stop", "not json"),
            ("snapshot", "stage-delta", r#"{"mount":"x"}"#),
            ("restore", "mounts", r#"{"stack_mounts":"/v/a"}"#),
            ("restore", "restore", r#"{"replaced":"/k","extra":1}"#),
            ("restore", "undo-restore", r#"{"why":null,"back":true}"#),
        ] {
            let e =
                HeldRow::parse(job, "20261122T030000Z-7f3a", &row(step, Some("ok"), detail)).unwrap_err().to_string();
            assert!(
                e.contains("run 20261122T030000Z-7f3a")
                    && e.contains("tenant t1")
                    && e.contains("step row 42")
                    && e.contains(&format!("the detail of step \"{step}\" does not parse")),
                "{job} {step} {detail}: {e}"
            );
        }
    }

    const TENANT_JOURNAL: &str = r#"{"app":"pulse","tenant":"t1","name":"pulse-t1","pre_name":"pulse-t1.pre-rollout-x",
        "old_id":"abc","old_image":"reg/pulse@sha256:00","old_digest":null,"new_image":"reg/pulse@sha256:11",
        "new_id":null,"data_dir":"/data/t1","snapshot":null,"sha256":null,
        "stop_timeout_s":30,"health":{"path":"/api/health","port":8080},"keep_old":false,
        "settings":{"name":"pulse-t1","labels":{},"networks":{},"mounts":[],"env_keys":[]}}"#;
    const STACK_JOURNAL: &str =
        r#"{"app":"shop","tenant":"t1","services":[],"members":[],"mounts":[],"stop_timeout_s":10,"keep_old":false}"#;

    #[test]
    fn every_detail_a_rollout_or_rollback_writes_reads_back_typed() {
        let rows = [
            row("switch", Some("ok"), TENANT_JOURNAL),
            row("undo-restore", Some("failed"), r#"{"error":"the archive is gone"}"#),
            row("stop", None, STACK_JOURNAL),
        ];
        let typed = RolloutRow::parse_all("r1", &rows).unwrap();
        assert!(matches!(&typed[0].detail, RolloutDetail::Tenant(j) if j.name == "pulse-t1"));
        assert_eq!(typed[0].step, Journaled::Roll(Step::Switch));
        assert!(matches!(&typed[1].detail, RolloutDetail::Failed(f) if f.error == "the archive is gone"));
        assert_eq!(typed[1].step, Journaled::Undo(UndoStep::Restore));
        assert!(matches!(&typed[2].detail, RolloutDetail::Stack(j) if j.app == "shop"));
        assert!(RolloutRow::any_stack(&typed));
        assert!(!RolloutRow::any_stack(&typed[..2]));
    }

    #[test]
    fn a_rollout_row_recover_cannot_read_is_an_error_naming_the_run_the_tenant_and_the_row() {
        let other_tenant = TENANT_JOURNAL.replace(r#""tenant":"t1""#, r#""tenant":"t2""#);
        let mut no_tenant = row("switch", None, TENANT_JOURNAL);
        no_tenant.tenant = None;
        for (r, want) in [
            (row("switchh", None, TENANT_JOURNAL), "unknown step \"switchh\""),
            (row("switch", None, r#"{"app":"pulse","tenant":"t1"}"#), "the detail of step \"switch\" does not parse"),
            (row("switch", None, "not json"), "does not parse"),
            (row("undo-restore", Some("failed"), r#"{"error":"x","extra":1}"#), "does not parse"),
            (row("switch", None, &other_tenant), "is tenant t2's journal"),
            (no_tenant, "names no tenant"),
        ] {
            let e = RolloutRow::parse("20261122T030000Z-7f3a", &r).unwrap_err().to_string();
            assert!(
                e.contains("run 20261122T030000Z-7f3a") && e.contains("step row 42") && e.contains(want),
                "{want}: {e}"
            );
        }
        // One bad row makes the whole journal unreadable: nothing is acted on.
        let rows = [row("switch", Some("ok"), TENANT_JOURNAL), row("switch", None, "{}")];
        assert!(RolloutRow::parse_all("r1", &rows).is_err());
    }
}
