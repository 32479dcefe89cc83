//! The rollout's state machine as data: the steps a tenant goes through ([`Step`]), the steps
//! of undoing it ([`UndoStep`]), the word the journal stores for each, the journal detail
//! written with every step ([`TenantJournal`]), and the test-only crash points, which are
//! derived from the steps so that a new step cannot go without one.
//!
//! Invariants: the journal words never change (state.db files written by earlier versions must
//! keep parsing); a word the journal holds that no step has is an error naming the run and the
//! row, never a silent skip; no other module compares step words.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::config::HealthSpec;
use crate::container::{OperatorSettings, Restart};

/// One step of rolling a tenant to the pinned digest, in the order they run. A tenant goes
/// through one of two paths (see `rollout`): the pre-copy path (pre-copy, create, check, stop,
/// copy-delta, switch, start, health, soak, archive, cleanup) or, when a copy beside the data
/// dir is not possible, the archive-while-down path (create, check, stop, snapshot, switch,
/// start, health, soak, cleanup). Journals of earlier versions ran stop, snapshot, rename,
/// create (under the tenant's name), check, start, …, or create, check, stop, copy-delta,
/// rename, switch (then a reconnect with the aliases), start, …; their words parse to the same
/// steps ([`Step::EARLIER`] holds the one no rollout takes any more). Recovery never redoes a
/// step of those journals: it undoes from what the engine holds, or keeps a version that passed
/// its health gate (every switch was complete by then).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Step {
    /// Mirror the data dir to the rollout copy while the tenant still runs.
    PreCopy,
    /// Create the new container from the prior one's settings on the pinned image, under a
    /// staging name, with the tenant's aliases and restart policy — final, so that after the
    /// stop only renames are left (journals of earlier versions: without the aliases and with
    /// restart policy `no`, or under the tenant's name after the rename).
    Create,
    /// Check that the new container kept everything the operator set on the prior one.
    Check,
    /// Stop the prior container (its stop timeout, then SIGKILL).
    Stop,
    /// `[app.database]` only: dump every declared database into the run's snapshot, the app
    /// stopped (a stack's writers; never the database itself: a stack's changed database
    /// service is stopped after its dump) so no write follows the dump, and the new version
    /// not yet started.
    DbDump,
    /// Archive the data dir; the data is still only the prior version's.
    Snapshot,
    /// Bring the rollout copy up to date (only what changed since the pre-copy): the copy is
    /// then exactly the data before the rollout.
    CopyDelta,
    /// `[app.hooks] pre_switch` only: run the hook in a one-shot container of the new image
    /// on the tenant's data (a migration, say), the data before it copied or archived. From
    /// its begin the new version's code may have written the data, as from the start on.
    PreSwitch,
    /// Journals of earlier versions only: rename the prior container aside, freeing the
    /// tenant's name (now the first half of [`Step::Switch`]).
    Rename,
    /// Rename the prior container aside, then the staged one to the tenant's name: one step,
    /// as undo brings either half back from what the engine holds (journals of earlier
    /// versions: only the second rename, then the aliases and the restart policy).
    Switch,
    /// Start the new container: from here on it may write to the data dir.
    Start,
    /// Wait until the new container answers its health check.
    Health,
    /// `[app.hooks] post_switch` only: run the hook in a one-shot container of the new image
    /// beside the healthy new version; its failure undoes the tenant with its data.
    PostSwitch,
    /// The canary only (when tenants follow it): wait `canary_soak_s`, probe again.
    Soak,
    /// A wave's tenant only (`[[app.rollout.waves]] bake_s`): wait `bake_s`, probe again,
    /// before the next wave starts (journals of earlier versions named it `canary-soak`).
    Bake,
    /// Archive the rollout copy (compressed, hashed, in the run's manifest), then remove it.
    Archive,
    /// Remove the prior container (unless `--keep-old`).
    Cleanup,
}

impl Step {
    /// Every step, in the order a tenant goes through them.
    pub const ALL: [Step; 16] = [
        Step::PreCopy,
        Step::Create,
        Step::Check,
        Step::Stop,
        Step::DbDump,
        Step::Snapshot,
        Step::CopyDelta,
        Step::PreSwitch,
        Step::Switch,
        Step::Start,
        Step::Health,
        Step::PostSwitch,
        Step::Soak,
        Step::Bake,
        Step::Archive,
        Step::Cleanup,
    ];

    /// Steps only journals of earlier versions hold: their words still parse, no rollout takes
    /// them any more.
    pub const EARLIER: [Step; 1] = [Step::Rename];

    /// Every step a journal may name: [`Step::ALL`] and [`Step::EARLIER`].
    fn known() -> impl Iterator<Item = Step> {
        Step::ALL.into_iter().chain(Step::EARLIER)
    }

    /// The word the journal stores for this step.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::PreCopy => "pre-copy",
            Step::Create => "create",
            Step::Check => "check",
            Step::Stop => "stop",
            Step::DbDump => "db-dump",
            Step::Snapshot => "snapshot",
            Step::CopyDelta => "copy-delta",
            Step::PreSwitch => "pre-switch",
            Step::Rename => "rename",
            Step::Switch => "switch",
            Step::Start => "start",
            Step::Health => "health",
            Step::PostSwitch => "post-switch",
            Step::Soak => "canary-soak",
            Step::Bake => "bake",
            Step::Archive => "archive",
            Step::Cleanup => "cleanup",
        }
    }

    /// Whether only a tenant whose app declares `[app.database]` goes through this step (the
    /// crash tests of tenants without one leave it to `tests/database.rs` and, for stacks,
    /// `tests/stack_database.rs`).
    pub fn needs_database(self) -> bool {
        self == Step::DbDump
    }

    /// Whether only a tenant whose app declares `[app.hooks] pre_switch` goes through this step
    /// (its crash tests are in `tests/hooks.rs`).
    pub fn needs_hook(self) -> bool {
        matches!(self, Step::PreSwitch | Step::PostSwitch)
    }

    /// Whether only a tenant of a wave with `bake_s` goes through this step (its crash tests
    /// are in `tests/waves.rs`).
    pub fn needs_waves(self) -> bool {
        self == Step::Bake
    }

    /// Whether the new version may have run on the data dir once this step has begun: undoing
    /// from here restores the data from the snapshot.
    pub fn new_version_may_have_run(self) -> bool {
        self >= Step::Start || self == Step::PreSwitch
    }

    /// Whether the new version has passed its health gate before this step begins: a signal
    /// from here on finishes the tenant on the new version instead of undoing it.
    pub fn after_health_gate(self) -> bool {
        self > Step::PostSwitch
    }

    /// Whether the end of this step and the begin of `next` are journaled in one write (one
    /// commit, one fsync, both rows or neither): only while the tenant is down (from its stop
    /// to its health gate), where every commit is downtime, and never across the start: its
    /// begin stays a row of its own, written after the switch's end, so that a crash before it
    /// leaves a journal that says the new version never ran (and undo has no data to put back).
    pub fn journals_with(self, next: Step) -> bool {
        // The pre_switch hook's rows stand alone: it runs the new version's code (its begin
        // must be on disk before), and it takes as long as the hook does.
        let down = |s: Step| (Step::Stop..=Step::Health).contains(&s) && s != Step::PreSwitch && s != Step::PostSwitch;
        down(self) && down(next) && self < next && self.new_version_may_have_run() == next.new_version_may_have_run()
    }

    /// Whether a failure of this step undoes the tenant. A failed cleanup leaves the healthy
    /// new version in place: an old container left behind is only untidy; a failed archive
    /// keeps the rollout copy (the pre-rollout data) where it is, named in the report.
    pub fn failure_undoes(self) -> bool {
        !matches!(self, Step::Cleanup | Step::Archive)
    }

    /// The crash point just after this step was journaled as begun, before it acts.
    pub fn during(self) -> CrashPoint {
        CrashPoint { step: self.as_str(), moment: Moment::During }
    }

    /// The crash point just after this step was journaled as ended.
    pub fn after(self) -> CrashPoint {
        CrashPoint { step: self.as_str(), moment: Moment::After }
    }

    /// The crash points inside this step, between two engine calls that each leave a state of
    /// their own: the switch's, with the prior container renamed aside and the tenant's name
    /// free.
    pub fn halfway(self) -> Option<CrashPoint> {
        (self == Step::Switch).then_some(CrashPoint { step: self.as_str(), moment: Moment::Halfway })
    }
}

/// One step of undoing a tenant's rollout, in the order they run (each only when needed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum UndoStep {
    /// Recreate the prior container aside, from the prior image (it was removed); for a stack
    /// (`rollback` of a finished run), every such prior container and each mount's copy from
    /// before the rollout, extracted from the run's archive.
    RecreatePrior,
    /// Stop and remove the new container.
    RemoveNew,
    /// `[app.database]` only: dump the database as the new version left it into the run's
    /// dir, kept (never replayed over without this copy).
    DbKeep,
    /// `[app.database]` only: replay the pre-switch dump into a scratch database in one
    /// transaction, then swap it in by two renames (one transaction); the database it
    /// replaced is kept under another name.
    DbReplay,
    /// Restore the data dir: swap the rollout copy back in (a rename), or extract the run's
    /// snapshot archive.
    Restore,
    /// Rename the prior container back to the tenant's name.
    RenameBack,
    /// Start the prior container.
    StartPrior,
    /// Wait until the prior container answers its health check.
    HealthPrior,
}

impl UndoStep {
    /// Every undo step, in the order they run.
    pub const ALL: [UndoStep; 8] = [
        UndoStep::RecreatePrior,
        UndoStep::RemoveNew,
        UndoStep::DbKeep,
        UndoStep::DbReplay,
        UndoStep::Restore,
        UndoStep::RenameBack,
        UndoStep::StartPrior,
        UndoStep::HealthPrior,
    ];

    /// The word the journal stores for this undo step.
    pub fn as_str(self) -> &'static str {
        match self {
            UndoStep::RemoveNew => "undo-remove-new",
            UndoStep::DbKeep => "undo-db-keep",
            UndoStep::DbReplay => "undo-db-replay",
            UndoStep::Restore => "undo-restore",
            UndoStep::RecreatePrior => "undo-recreate-prior",
            UndoStep::RenameBack => "undo-rename-back",
            UndoStep::StartPrior => "undo-start-prior",
            UndoStep::HealthPrior => "undo-health-prior",
        }
    }

    /// Whether only a tenant whose app declares `[app.database]` goes through this step.
    pub fn needs_database(self) -> bool {
        matches!(self, UndoStep::DbKeep | UndoStep::DbReplay)
    }

    /// The crash point just after this undo step was journaled as begun, before it acts.
    pub fn during(self) -> CrashPoint {
        CrashPoint { step: self.as_str(), moment: Moment::During }
    }

    /// The crash point just after this undo step was journaled as ended.
    pub fn after(self) -> CrashPoint {
        CrashPoint { step: self.as_str(), moment: Moment::After }
    }
}

/// A step word found in the journal of a rollout or rollback run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Journaled {
    /// A step of rolling a tenant.
    Roll(Step),
    /// A step of undoing one.
    Undo(UndoStep),
}

impl Journaled {
    /// The word the journal stores.
    pub fn as_str(self) -> &'static str {
        match self {
            Journaled::Roll(s) => s.as_str(),
            Journaled::Undo(u) => u.as_str(),
        }
    }

    /// Every word a rollout or rollback journal may hold.
    fn known() -> impl Iterator<Item = Journaled> {
        Step::known().map(Journaled::Roll).chain(UndoStep::ALL.into_iter().map(Journaled::Undo))
    }
}

impl fmt::Display for Journaled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A step word that no step of the job has ([`Step`], [`UndoStep`], or a backup job's step in
/// `journal`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown step \"{word}\" (known: {known})")]
pub struct UnknownStep {
    /// The word found.
    pub word: String,
    /// The words that would have been understood.
    pub known: String,
}

impl UnknownStep {
    fn new(word: &str, known: impl Iterator<Item = &'static str>) -> UnknownStep {
        UnknownStep { word: word.to_string(), known: known.collect::<Vec<_>>().join(", ") }
    }
}

impl FromStr for Step {
    type Err = UnknownStep;
    fn from_str(word: &str) -> std::result::Result<Step, UnknownStep> {
        Step::known()
            .find(|s| s.as_str() == word)
            .ok_or_else(|| UnknownStep::new(word, Step::known().map(Step::as_str)))
    }
}

impl FromStr for UndoStep {
    type Err = UnknownStep;
    fn from_str(word: &str) -> std::result::Result<UndoStep, UnknownStep> {
        UndoStep::ALL
            .into_iter()
            .find(|s| s.as_str() == word)
            .ok_or_else(|| UnknownStep::new(word, UndoStep::ALL.into_iter().map(UndoStep::as_str)))
    }
}

impl FromStr for Journaled {
    type Err = UnknownStep;
    fn from_str(word: &str) -> std::result::Result<Journaled, UnknownStep> {
        Journaled::known()
            .find(|s| s.as_str() == word)
            .ok_or_else(|| UnknownStep::new(word, Journaled::known().map(Journaled::as_str)))
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for UndoStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where in a step a crash point sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moment {
    /// Journaled as begun, not yet acted.
    During,
    /// Journaled as ended.
    After,
    /// Journaled as begun, partly acted ([`Step::halfway`]).
    Halfway,
}

/// A test-only crash point of a journaled step: `during-<step word>` or `after-<step word>`,
/// the value `SLIPWAY_TEST_CRASH_AT` / `SLIPWAY_TEST_SIGNAL_AT` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashPoint {
    step: &'static str,
    moment: Moment,
}

impl CrashPoint {
    /// The moment of the step it sits at.
    pub fn moment(&self) -> Moment {
        self.moment
    }

    /// Die here (or signal ourselves) when a test asks for this point; nothing without the
    /// `test-crash` feature.
    #[inline]
    pub fn reach(self) {
        #[cfg(feature = "test-crash")]
        crate::testpoint::crash_point(&self.to_string());
    }
}

impl fmt::Display for CrashPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let moment = match self.moment {
            Moment::During => "during",
            Moment::After => "after",
            Moment::Halfway => "halfway",
        };
        write!(f, "{moment}-{}", self.step)
    }
}

/// Everything needed to finish or undo a tenant's rollout, journaled with every step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TenantJournal {
    /// App.
    pub app: String,
    /// Tenant.
    pub tenant: String,
    /// Container name.
    pub name: String,
    /// Name the prior container is renamed to.
    pub pre_name: String,
    /// Id of the prior container.
    pub old_id: String,
    /// Image reference of the prior container.
    pub old_image: String,
    /// Digest of the prior container.
    pub old_digest: Option<String>,
    /// The id of the prior container's image (`sha256:…`): what undo recreates it from, so a
    /// tag moved or pruned since never gives the tenant another version. None in journals of
    /// earlier versions (undo then uses `old_image`).
    #[serde(default)]
    pub old_image_id: Option<String>,
    /// Image reference rolled to.
    pub new_image: String,
    /// Id of the new container, once created.
    pub new_id: Option<String>,
    /// The tenant's data dir.
    pub data_dir: PathBuf,
    /// The snapshot archive, once written.
    pub snapshot: Option<PathBuf>,
    /// Its sha256.
    pub sha256: Option<String>,
    /// Stop timeout.
    pub stop_timeout_s: u64,
    /// Health probe.
    pub health: HealthSpec,
    /// Keep the prior container after success.
    pub keep_old: bool,
    /// The prior container's operator settings (to check the new one against).
    pub settings: OperatorSettings,
    /// The prior container's restart policy: set to `no` while it is renamed aside, put back
    /// by undo. None in journals of versions that did not change it.
    #[serde(default)]
    pub restart: Option<Restart>,
    /// Whether the prior container was running before the rollout: undo starts it again only
    /// then (a suspended tenant stays stopped). True in journals of earlier versions.
    #[serde(default = "was_running_default")]
    pub was_running: bool,
    /// The rollout copy of the data dir (pre-copy path), beside it on its filesystem. None in
    /// journals of the archive-while-down path and of earlier versions.
    #[serde(default)]
    pub copy: Option<PathBuf>,
    /// The copy's inode once it is exactly the pre-rollout data (after copy-delta): undo swaps
    /// it in only while the data dir is not already that inode, so a swap is never undone by
    /// running undo again.
    #[serde(default)]
    pub copy_ino: Option<u64>,
    /// The staging name the new container was created under before the stop. None in journals
    /// of earlier versions (they created it under `name`).
    #[serde(default)]
    pub staged_name: Option<String>,
    /// The tenant's database (`[app.database]`): how it is reached and its dumps. None for a
    /// tenant without one, and in journals of earlier versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db: Option<DbJournal>,
}

/// A tenant's database in a rollout's journal: enough for `undo` (and `recover`, with the
/// journal alone) to dump it and replay the pre-switch dump.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DbJournal {
    /// The database's container (the template of `[app.database]` with the tenant put in).
    pub container: String,
    /// The user the dump and the replay connect as.
    pub user: String,
    /// The password file, if any.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// The run's snapshot dir (`rollout/<run>`) the dumps lie in.
    pub run_dir: PathBuf,
    /// The pre-switch dumps, once taken (paths relative to `run_dir`).
    #[serde(default)]
    pub dumps: Option<crate::manifest::DatabaseDumps>,
    /// The dumps of the database as the new version left it, once an undo took them.
    #[serde(default)]
    pub kept: Option<crate::manifest::DatabaseDumps>,
}

/// Everything needed to finish or undo a stack tenant's rollout (`[app.services]`), journaled
/// with every step in place of a [`TenantJournal`] (the two never parse as each other: each has
/// fields the other lacks). The steps are the same [`Step`]s, each acting on every service
/// that changes and every data mount at once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StackJournal {
    /// App.
    pub app: String,
    /// Tenant.
    pub tenant: String,
    /// The services whose pin changes, in start order.
    pub services: Vec<ServiceJournal>,
    /// Every container the rollout stops (the changed services and, when one of them writes
    /// the data, every writer of it), in start order: stopped in reverse, started in order.
    pub members: Vec<MemberJournal>,
    /// The tenant's data mounts, each copied beside itself before the stop.
    pub mounts: Vec<MountJournal>,
    /// Stop timeout.
    pub stop_timeout_s: u64,
    /// Keep the prior containers after success.
    pub keep_old: bool,
    /// The tenant's database (`[app.database]`): how it is reached and its dumps, as a single
    /// container's journal holds them. None for a stack without one, and in journals of
    /// earlier versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db: Option<DbJournal>,
}

/// One changed service of a stack tenant: its prior container and the new one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceJournal {
    /// Service name.
    pub service: String,
    /// Container name (kept by the new container: compose and Coolify find it by its labels).
    pub name: String,
    /// Name the prior container is renamed to.
    pub pre_name: String,
    /// The staging name of the new container.
    pub staged_name: String,
    /// Id of the prior container.
    pub old_id: String,
    /// Image reference of the prior container.
    pub old_image: String,
    /// Digest it ran.
    pub old_digest: Option<String>,
    /// The id of the prior container's image: what `rollback` recreates it from once the run
    /// removed it (a tag moved since never gives the service another version). None in
    /// journals of earlier versions (`old_image` is used then).
    #[serde(default)]
    pub old_image_id: Option<String>,
    /// Image reference rolled to.
    pub new_image: String,
    /// Id of the new container, once created.
    pub new_id: Option<String>,
    /// The prior container's operator settings (to check the new one against).
    pub settings: OperatorSettings,
    /// The prior container's restart policy: `no` while it is aside, put back by undo.
    pub restart: Restart,
}

/// A container a stack rollout stops and starts again.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberJournal {
    /// Service name.
    pub service: String,
    /// Container name.
    pub name: String,
    /// Id of the container as it was before the rollout (the prior one, for a changed service).
    pub id: String,
    /// Whether its service changes (its container is replaced).
    pub changed: bool,
    /// HTTP checks it must answer (its own, the app's), besides running and healthy.
    pub checks: Vec<HealthSpec>,
}

/// One data mount of a stack tenant and its rollout copy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MountJournal {
    /// What it is, for people: `volume "x" at /data`.
    pub what: String,
    /// Its dir on this host (a bind's source, a local volume's mountpoint).
    pub data_dir: PathBuf,
    /// The copy beside it.
    pub copy: PathBuf,
    /// The copy's inode once it is exactly the pre-rollout data (after copy-delta).
    #[serde(default)]
    pub copy_ino: Option<u64>,
    /// The run's archive of the copy, once made (after the health gate).
    #[serde(default)]
    pub archive: Option<PathBuf>,
}

fn was_running_default() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_step_word_parses_back_to_its_step() {
        for s in Step::known() {
            assert_eq!(s.as_str().parse::<Step>(), Ok(s));
            assert_eq!(s.as_str().parse::<Journaled>(), Ok(Journaled::Roll(s)));
        }
        for u in UndoStep::ALL {
            assert_eq!(u.as_str().parse::<UndoStep>(), Ok(u));
            assert_eq!(u.as_str().parse::<Journaled>(), Ok(Journaled::Undo(u)));
        }
    }

    #[test]
    fn the_journal_words_of_earlier_versions_still_parse() {
        // Written by every slipway so far; changing one breaks recover on existing hosts.
        let words = [
            "stop",
            "snapshot",
            "rename",
            "create",
            "check",
            "start",
            "health",
            "canary-soak",
            "bake",
            "cleanup",
            "undo-remove-new",
            "undo-restore",
            "undo-recreate-prior",
            "undo-rename-back",
            "undo-start-prior",
            "undo-health-prior",
            "pre-copy",
            "copy-delta",
            "pre-switch",
            "post-switch",
            "switch",
            "archive",
            "db-dump",
            "undo-db-keep",
            "undo-db-replay",
        ];
        for w in words {
            assert_eq!(w.parse::<Journaled>().map(|j| j.as_str()), Ok(w));
        }
        assert_eq!(Journaled::known().count(), words.len(), "a new step needs its word listed here");
    }

    #[test]
    fn an_unknown_word_is_an_error_that_names_it_and_the_known_words() {
        let e = "snapshott".parse::<Journaled>().unwrap_err();
        assert_eq!(e.word, "snapshott");
        let msg = e.to_string();
        assert!(msg.contains("\"snapshott\"") && msg.contains("stop, db-dump, snapshot"), "{msg}");
        assert!("undo-stop".parse::<UndoStep>().is_err());
        assert!("undo-remove-new".parse::<Step>().is_err());
    }

    #[test]
    fn steps_are_ordered_and_their_rules_follow_the_order() {
        assert!(Step::ALL.windows(2).all(|w| w[0] < w[1]));
        let may_have_run: Vec<Step> = Step::ALL.into_iter().filter(|s| s.new_version_may_have_run()).collect();
        assert_eq!(
            may_have_run,
            [
                Step::PreSwitch,
                Step::Start,
                Step::Health,
                Step::PostSwitch,
                Step::Soak,
                Step::Bake,
                Step::Archive,
                Step::Cleanup
            ]
        );
        let after_gate: Vec<Step> = Step::ALL.into_iter().filter(|s| s.after_health_gate()).collect();
        assert_eq!(after_gate, [Step::Soak, Step::Bake, Step::Archive, Step::Cleanup]);
        // Everything before the stop happens while the prior version still serves.
        assert!(Step::PreCopy < Step::Stop && Step::Create < Step::Stop && Step::Check < Step::Stop);
        // A step only earlier journals hold sits where those versions ran it: before the start.
        assert!(Step::EARLIER.iter().all(|s| !Step::ALL.contains(s) && !s.new_version_may_have_run()));
    }

    #[test]
    fn only_the_steps_while_down_share_a_journal_write_and_never_into_the_start() {
        let shared: Vec<(Step, Step)> = Step::ALL
            .into_iter()
            .flat_map(|a| Step::ALL.into_iter().map(move |b| (a, b)))
            .filter(|(a, b)| a.journals_with(*b))
            .collect();
        let want = [
            (Step::Stop, Step::DbDump),
            (Step::Stop, Step::Snapshot),
            (Step::Stop, Step::CopyDelta),
            (Step::Stop, Step::Switch),
            (Step::DbDump, Step::Snapshot),
            (Step::DbDump, Step::CopyDelta),
            (Step::DbDump, Step::Switch),
            (Step::Snapshot, Step::CopyDelta),
            (Step::Snapshot, Step::Switch),
            (Step::CopyDelta, Step::Switch),
            (Step::Start, Step::Health),
        ];
        assert_eq!(shared, want);
    }

    #[test]
    fn a_journal_detail_of_an_earlier_version_still_parses() {
        // As written before the pre-copy path existed: no copy, no staging name.
        let old = r#"{"app":"pulse","tenant":"t1","name":"pulse-t1","pre_name":"pulse-t1.pre-rollout-x",
            "old_id":"abc","old_image":"reg/pulse@sha256:00","old_digest":null,"new_image":"reg/pulse@sha256:11",
            "new_id":null,"data_dir":"/data/t1","snapshot":"/b/rollout/x/t1.tar.zst","sha256":"ff",
            "stop_timeout_s":30,"health":{"path":"/api/health","port":8080},"keep_old":false,
            "settings":{"name":"pulse-t1","labels":{},"networks":{},"mounts":[],"env_keys":[]}}"#;
        let j: TenantJournal = serde_json::from_str(old).unwrap();
        assert_eq!((j.copy, j.copy_ino, j.staged_name, j.old_image_id), (None, None, None, None));
        assert!(j.db.is_none());
        assert!(j.was_running);
    }

    #[test]
    fn crash_points_are_named_after_the_journal_words() {
        assert_eq!(Step::Snapshot.during().to_string(), "during-snapshot");
        assert_eq!(Step::Health.after().to_string(), "after-health");
        assert_eq!(Step::Soak.after().to_string(), "after-canary-soak");
        assert_eq!(UndoStep::RenameBack.during().to_string(), "during-undo-rename-back");
        assert_eq!(Step::Switch.halfway().map(|p| p.to_string()).as_deref(), Some("halfway-switch"));
    }
}
