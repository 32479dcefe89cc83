//! `drill`: prove that a tenant's backup brings its app back, without touching the tenant.
//! For each chosen tenant, one at a time: fetch its archive (local, or from the remote through
//! the same download-and-verify path as `restore --remote`), check its sha256 and file list
//! against the manifest, extract it into a scratch dir under the backup root
//! ([`crate::layout::drill_scratch`]) with every entry checked and the tree compared with the
//! file list, then start a throw-away container of the tenant's *current* image with its
//! operator settings on that copy and health-check it as a rollout would. The result (time to
//! restore, time to healthy, bytes) goes into the run record; the container, its network and
//! the scratch dir are removed — also on failure and on SIGINT/SIGTERM.
//!
//! Invariants:
//! - The live tenant is never touched: its container is only inspected, never stopped, paused,
//!   renamed or reconnected, and its data dir is never read by the throw-away container.
//! - Nothing of a drill can receive the tenant's traffic: the throw-away container has a
//!   scratch name ([`crate::naming::drill`]), joins only an `--internal` network made for the
//!   drill with no alias of the tenant, publishes no port, never restarts, and carries no
//!   `traefik.*` label, no label of `[drill] strip_labels` and not the app's `select` label.
//!   Writable mounts other than the data dir are not carried (they hold live data).
//! - Everything a drill creates carries [`crate::naming::DRILL_LABEL`] with the drill's run id;
//!   under the host lock no other drill of this host runs, so whatever carries the id of one of
//!   this run record's drills is a leftover that the next drill or `recover` removes.
//!
//! The drill does not run `recover` first: it changes no tenant, so a rollout a crash left
//! unfinished is not its to settle (and a tenant that crash left stopped can still be drilled:
//! only its image and settings are used).
//!
//! A stack tenant (`[app.services]`) is drilled as a unit by [`stack`]: every mount's archive
//! into its own scratch dir, every service on the drill's network, each gated.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::adapters::archive;
use crate::adapters::desired;
use crate::adapters::docker::{DrillChanges, DrillData, DrillSpec, Engine, TenantContainer};
use crate::adapters::health::{Prober, Unhealthy};
use crate::config::{label_matches, App, DatabaseSpec, Selector};
use crate::context::{crash_point, test_pause, Cancel, Ctx};
use crate::error::{Error, ExitKind, Result};
use crate::journal::DrillStep;
use crate::manifest::DatabaseDumps;
use crate::restore::{self, Fetched, Source};
use crate::stack_tenant::StackTenant;
use crate::types::TenantId;

mod stack;

/// A tenant to drill: one container, or a stack (or why the stack cannot be drilled as a unit).
#[derive(Debug, Clone)]
enum Chosen {
    One(TenantContainer),
    Stack(TenantId, std::result::Result<StackTenant, String>),
}

impl Chosen {
    fn tenant(&self) -> &TenantId {
        match self {
            Chosen::One(c) => &c.tenant,
            Chosen::Stack(t, _) => t,
        }
    }
}

/// Options of `drill`.
#[derive(Debug, Clone)]
pub struct DrillOptions {
    /// The tenants to drill (with `all`: none).
    pub tenants: Vec<TenantId>,
    /// Every tenant of every app in fleet.toml.
    pub all: bool,
    /// Fetch the archives from the remote.
    pub remote: bool,
    /// Which snapshot: a day, or the tenant's newest.
    pub source: Source,
    /// Show the plan and touch nothing.
    pub dry_run: bool,
}

/// One tenant a drill will restore.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedDrill {
    /// Tenant id.
    pub tenant: String,
    /// Its app.
    pub app: String,
    /// Its live container (only inspected).
    pub container: String,
    /// The image the throw-away container runs: the one the tenant runs now.
    pub image: String,
    /// Its data dir, whose bind the throw-away container gets pointed at the scratch copy.
    pub data_dir: PathBuf,
}

/// What `drill` will do.
#[derive(Debug, Clone, Serialize)]
pub struct DrillPlan {
    /// Desired-state commit the tenants were found by.
    pub commit: String,
    /// Archives come from the remote.
    pub remote: bool,
    /// Which snapshot: `latest` or the day.
    pub source: String,
    /// The tenants, in the order they are drilled (one at a time).
    pub tenants: Vec<PlannedDrill>,
}

/// How one tenant's drill ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DrillOutcome {
    /// Restored, verified, and the app answered its health check on the copy.
    Passed,
    /// Something failed: the archive, the copy, or the app on it (`detail` says which).
    Failed,
    /// SIGINT/SIGTERM arrived; everything it had made was removed.
    Interrupted,
}

impl DrillOutcome {
    /// The word the run record keeps.
    pub fn word(self) -> &'static str {
        match self {
            DrillOutcome::Passed => "success",
            DrillOutcome::Failed => "failed",
            DrillOutcome::Interrupted => "interrupted",
        }
    }
}

/// One tenant's drill.
#[derive(Debug, Clone, Serialize)]
pub struct TenantDrill {
    /// Tenant id.
    pub tenant: String,
    /// Its app.
    pub app: String,
    /// How it ended.
    pub outcome: DrillOutcome,
    /// The snapshot drilled from (`daily/<day>`, `rollout/<run_id>`).
    pub snapshot: Option<String>,
    /// The archive, as found or downloaded.
    pub archive: Option<PathBuf>,
    /// Its sha256, as verified.
    pub sha256: Option<String>,
    /// Archive size in bytes.
    pub archive_bytes: u64,
    /// Bytes of the files restored.
    pub data_bytes: u64,
    /// Entries restored.
    pub entries: u64,
    /// Fetch, verify, extract and compare with the file list, in ms.
    pub restore_ms: Option<u64>,
    /// Container start to its first 2xx health answer, in ms.
    pub healthy_ms: Option<u64>,
    /// The throw-away container (and its network's) name.
    pub container: String,
    /// How the throw-away container differed from the tenant's (once created).
    pub changes: Option<DrillChanges>,
    /// What happened, or what failed.
    pub detail: String,
    /// What could not be removed afterwards (the next drill or `slipway recover` removes it).
    pub left: Vec<String>,
    /// With `[app.database]`: the scratch database container the dumps were replayed into.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub db_container: Option<String>,
    /// With `[app.database]`: the answer of its `check` query on the replayed dump ("" when
    /// no check is declared), once the replay and the check passed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub db_check: Option<String>,
}

impl TenantDrill {
    /// A tenant's drill before its steps: passed until one says otherwise.
    fn new(tenant: &str, app: &App, container: String) -> Self {
        TenantDrill {
            tenant: tenant.to_string(),
            app: app.name.clone(),
            outcome: DrillOutcome::Passed,
            snapshot: None,
            archive: None,
            sha256: None,
            archive_bytes: 0,
            data_bytes: 0,
            entries: 0,
            restore_ms: None,
            healthy_ms: None,
            container,
            changes: None,
            detail: String::new(),
            left: Vec::new(),
            db_container: None,
            db_check: None,
        }
    }

    /// How its steps ended into its outcome and detail (`passed` words a drill whose steps
    /// all passed), then what could not be removed afterwards.
    fn conclude(&mut self, run: Result<std::result::Result<(), Stop>>, passed: impl FnOnce(&Self) -> String) {
        match run {
            Ok(Ok(())) => self.detail = passed(self),
            Ok(Err(Stop::Failed(why))) => {
                self.outcome = DrillOutcome::Failed;
                self.detail = why;
            }
            Ok(Err(Stop::Interrupted(at))) => {
                self.outcome = DrillOutcome::Interrupted;
                self.detail = format!("interrupted {at}; everything the drill made was removed");
            }
            Err(e) => {
                self.outcome = DrillOutcome::Failed;
                self.detail = e.to_string();
            }
        }
        if !self.left.is_empty() {
            self.detail.push_str(&format!(
                "; could not remove {} (the next drill or `slipway recover` removes it)",
                self.left.join(", ")
            ));
        }
    }
}

/// The result of `slipway drill`.
#[derive(Debug, Clone, Serialize)]
pub struct DrillReport {
    /// What it set out to do.
    pub plan: DrillPlan,
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// Per tenant, in order.
    pub tenants: Vec<TenantDrill>,
    /// Leftovers of earlier drills removed first.
    pub swept: Vec<String>,
    /// How it ended.
    pub outcome: ExitKind,
}

impl DrillReport {
    /// Interrupted, else failure when any tenant failed, else success.
    pub fn exit_kind(&self) -> ExitKind {
        self.outcome
    }

    fn outcome_of(tenants: &[TenantDrill]) -> ExitKind {
        if tenants.iter().any(|t| t.outcome == DrillOutcome::Interrupted) {
            ExitKind::Interrupted
        } else if tenants.iter().any(|t| t.outcome == DrillOutcome::Failed || !t.left.is_empty()) {
            ExitKind::Failure
        } else {
            ExitKind::Success
        }
    }

    fn summary(&self) -> String {
        let failed: Vec<&str> =
            self.tenants.iter().filter(|t| t.outcome != DrillOutcome::Passed).map(|t| t.tenant.as_str()).collect();
        if failed.is_empty() {
            format!("{} tenant(s) restored and healthy", self.tenants.len())
        } else {
            let why: Vec<String> = self
                .tenants
                .iter()
                .filter(|t| t.outcome != DrillOutcome::Passed)
                .map(|t| format!("tenant {}: {}", t.tenant, t.detail))
                .collect();
            format!("drill {} for tenant(s) {}: {}", self.outcome.word(), failed.join(", "), why.join("; "))
        }
    }
}

/// What the journal keeps of a tenant's drill: everything it may have made, so `recover`
/// can remove it after a crash.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrillJournal {
    /// The throw-away container's name (also its network's).
    pub drill_container: String,
    /// The scratch dir.
    pub scratch: PathBuf,
    /// The scratch database container (`[app.database]`).
    #[serde(default)]
    pub db_container: Option<String>,
}

/// Whether a label of the tenant must not reach the drill's container: every `traefik.*`
/// label, any key `strip_labels` names, and the app's `select` label when it selects by label
/// (the drill's container is never one of the app's tenants).
pub fn strips_label(key: &str, strip_labels: &[String], app: &App) -> bool {
    let select = matches!(&app.select, Selector::Label { key: k, .. } if k == key);
    key.starts_with("traefik.") || select || strip_labels.iter().any(|p| label_matches(p, key))
}

/// The tenants to drill, with their app and container, in order; an unknown tenant is a
/// usage error.
async fn choose(engine: &Engine, apps: &[App], opts: &DrillOptions) -> Result<Vec<(App, Chosen)>> {
    if opts.all != opts.tenants.is_empty() {
        return Err(Error::Usage("drill needs --tenant T (repeatable) or --all, not both".into()));
    }
    let mut found = Vec::new();
    for app in apps {
        // A stack app's tenants are drilled as a unit, every service on the restored mounts.
        if let Some(st) = &app.stack {
            let (members, _) = engine.stack_members(app, st).await?;
            for t in crate::stack_tenant::tenants_of(&members) {
                let resolved = crate::stack_tenant::resolve(app, st, &t, &members);
                found.push((app.clone(), Chosen::Stack(t, resolved)));
            }
            continue;
        }
        for c in engine.tenants(app).await? {
            found.push((app.clone(), Chosen::One(c)));
        }
    }
    if opts.all {
        return Ok(found);
    }
    let mut out = Vec::new();
    for t in &opts.tenants {
        match found.iter().find(|(_, c)| c.tenant() == t) {
            Some(x) if !out.iter().any(|(_, c): &(App, Chosen)| c.tenant() == t) => out.push(x.clone()),
            Some(_) => {}
            None => {
                return Err(Error::Usage(format!(
                    "tenant {t} has no container in any app of fleet.toml; `slipway status` lists the tenants"
                )))
            }
        }
    }
    Ok(out)
}

/// Run `drill`.
pub async fn drill(ctx: &Ctx, opts: &DrillOptions) -> Result<DrillReport> {
    match &opts.source {
        Source::Run(_) => return Err(Error::Usage("drill takes --day YYYY-MM-DD or --latest".into())),
        Source::Day(d) => {
            crate::layout::SnapshotId::daily(d).map_err(|e| Error::Usage(format!("--day {e}")))?;
        }
        Source::Latest => {}
    }
    if opts.remote {
        crate::offsite::remote_config(&ctx.cfg)?;
    }
    let state = desired::read(&ctx.cfg.desired, &ctx.cfg.state_dir, None)?;
    let engine = Engine::connect(&ctx.cfg.docker).await?;
    let chosen = choose(&engine, &state.fleet.apps, opts).await?;
    let plan = DrillPlan {
        commit: state.commit.clone(),
        remote: opts.remote,
        source: match &opts.source {
            Source::Day(d) => d.clone(),
            _ => "latest".into(),
        },
        tenants: chosen
            .iter()
            .map(|(app, c)| match c {
                Chosen::One(c) => PlannedDrill {
                    tenant: c.tenant.to_string(),
                    app: app.name.clone(),
                    container: c.name.clone(),
                    image: c.image_ref.clone(),
                    data_dir: app.data_dir_of(&c.tenant),
                },
                Chosen::Stack(t, st) => PlannedDrill {
                    tenant: t.to_string(),
                    app: app.name.clone(),
                    container: st.as_ref().map_or_else(Clone::clone, |st| {
                        st.containers.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")
                    }),
                    image: st.as_ref().map_or_else(
                        |_| String::new(),
                        |st| st.containers.iter().map(|c| c.image.as_str()).collect::<Vec<_>>().join(", "),
                    ),
                    data_dir: st
                        .as_ref()
                        .ok()
                        .and_then(|st| st.mounts.first())
                        .map(|m| m.dir.clone())
                        .unwrap_or_default(),
                },
            })
            .collect(),
    };
    let mut report =
        DrillReport { plan, dry_run: opts.dry_run, tenants: Vec::new(), swept: Vec::new(), outcome: ExitKind::Success };
    if opts.dry_run {
        return Ok(report);
    }
    let record = ctx.start_run("drill", None, Some(&state.commit), None)?;
    // Under the host lock no other drill runs: whatever an earlier one left goes first.
    report.swept = crate::recover::sweep_drills(ctx, &engine, false)
        .await
        .unwrap_or_else(|e| vec![format!("could not look for an earlier drill's leftovers: {e}")]);
    let prober = Prober::new()?;
    for (app, c) in &chosen {
        if ctx.cancel.is_cancelled() {
            break;
        }
        let t = match c {
            Chosen::One(c) => drill_tenant(ctx, &engine, &prober, opts, app, c).await?,
            Chosen::Stack(_, Ok(st)) => stack::drill_stack_tenant(ctx, &engine, &prober, opts, app, st).await?,
            Chosen::Stack(t, Err(why)) => stack::refused(app, t, why),
        };
        ctx.store.record_drill(&slipway_state::DrillRow {
            run_id: ctx.run_id().to_string(),
            tenant: t.tenant.clone(),
            snapshot: t.snapshot.clone(),
            remote: opts.remote,
            sha256: t.sha256.clone(),
            archive_bytes: Some(t.archive_bytes as i64),
            data_bytes: Some(t.data_bytes as i64),
            entries: Some(t.entries as i64),
            restore_ms: t.restore_ms.map(|m| m as i64),
            healthy_ms: t.healthy_ms.map(|m| m as i64),
            outcome: t.outcome.word().into(),
            detail: Some(t.detail.clone()),
            finished_at: slipway_state::now(),
            db_check: t.db_check.clone(),
        })?;
        report.tenants.push(t);
    }
    report.outcome = if ctx.cancel.is_cancelled() && report.tenants.len() < chosen.len() {
        ExitKind::Interrupted
    } else {
        DrillReport::outcome_of(&report.tenants)
    };
    record.finish(ctx, report.outcome, &report.summary())?;
    Ok(report)
}

/// Resolves once SIGINT/SIGTERM was received.
async fn cancelled(cancel: &Cancel) {
    while !cancel.is_cancelled() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a step of one tenant's drill ended with, short of an engine or run-record error.
enum Stop {
    Failed(String),
    Interrupted(&'static str),
}

/// Drill one tenant, and always remove what it made.
async fn drill_tenant(
    ctx: &Ctx,
    engine: &Engine,
    prober: &Prober,
    opts: &DrillOptions,
    app: &App,
    c: &TenantContainer,
) -> Result<TenantDrill> {
    let tenant = c.tenant.as_str();
    let name = crate::naming::drill(tenant, ctx.run_id());
    let scratch = crate::layout::drill_scratch(&ctx.cfg.backup_root, ctx.run_id(), tenant);
    let mut t = TenantDrill::new(tenant, app, name.clone());
    t.db_container = app.database.as_ref().map(|_| crate::naming::drill_db(tenant, ctx.run_id()));
    let journal =
        DrillJournal { drill_container: name.clone(), scratch: scratch.clone(), db_container: t.db_container.clone() };
    let run = steps(ctx, engine, prober, opts, app, c, &journal, &mut t).await;
    // Whatever happened, nothing of the drill stays (nor a downloaded copy of the archive).
    let s = ctx.begin(Some(tenant), DrillStep::Cleanup, &journal)?;
    t.left = cleanup(ctx, engine, &journal).await;
    if let (true, Some(a)) = (opts.remote, &t.archive) {
        for f in [a.clone(), crate::layout::file_list_path(a)] {
            if let Err(e) = std::fs::remove_file(&f) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    t.left.push(format!("{} ({e})", f.display()));
                }
            }
        }
    }
    ctx.end(s, if t.left.is_empty() { "ok" } else { "failed" }, None::<&()>)?;
    t.conclude(run, |t| {
        let mut detail = format!(
            "restored {} entries ({} bytes) from {} in {} ms; healthy after {} ms",
            t.entries,
            t.data_bytes,
            t.snapshot.as_deref().unwrap_or("?"),
            t.restore_ms.unwrap_or(0),
            t.healthy_ms.unwrap_or(0)
        );
        detail.push_str(&db_check_detail(app, t.db_check.as_deref()));
        detail
    });
    Ok(t)
}

/// The answers of `query` on each SQLite file of `files` (a restored tree and the file's path
/// beneath it), joined by "; " ("<path>: <answer>" when there are several files).
async fn sqlite_check<'a>(files: impl Iterator<Item = (&'a Path, &'a String)>, query: &str) -> Result<String> {
    let mut answers = Vec::new();
    for (scratch, rel) in files {
        let parent = scratch.parent().unwrap_or(scratch);
        // An empty dir of slipway's own: the copier binds the scratch tree onto it.
        let mount_point =
            tempfile::Builder::new().prefix(".sqlite-check-").tempdir_in(parent).map_err(|e| Error::io(parent, e))?;
        let answer = crate::adapters::sqlite::check(scratch, rel, mount_point.path(), query).await?;
        answers.push((rel.clone(), answer));
    }
    Ok(match answers.as_slice() {
        [(_, one)] => one.clone(),
        many => many.iter().map(|(p, a)| format!("{p}: {a}")).collect::<Vec<_>>().join("; "),
    })
}

/// The drill's steps for one tenant, journaled; Ok(Err) is the tenant's failure or an
/// interruption, Err an engine or run-record error (also the tenant's failure).
#[allow(clippy::too_many_arguments)]
async fn steps(
    ctx: &Ctx,
    engine: &Engine,
    prober: &Prober,
    opts: &DrillOptions,
    app: &App,
    c: &TenantContainer,
    journal: &DrillJournal,
    t: &mut TenantDrill,
) -> Result<std::result::Result<(), Stop>> {
    let tenant = c.tenant.as_str();
    let started = Instant::now();

    // Fetch and verify: the same path as `restore` (and `restore --remote`).
    let s = ctx.begin(Some(tenant), DrillStep::Fetch, journal)?;
    let fetched = restore::fetch_verified(&ctx.cfg, &c.tenant, &opts.source, opts.remote).await;
    ctx.end(s, if fetched.is_ok() { "ok" } else { "failed" }, None::<&()>)?;
    let Fetched { loc, archive: archive_path, sha256 } = match fetched {
        Ok(f) => f,
        Err(e) => return Ok(Err(Stop::Failed(format!("no verified archive: {e}")))),
    };
    t.snapshot = Some(loc.snapshot.to_string());
    t.archive = Some(archive_path.clone());
    t.sha256 = Some(sha256.clone());
    t.archive_bytes = loc.entry.size;
    if ctx.cancel.is_cancelled() {
        return Ok(Err(Stop::Interrupted("after fetching the archive")));
    }

    // Extract into the scratch dir, every entry checked, then compare with the file list.
    let s = ctx.begin(Some(tenant), DrillStep::Extract, journal)?;
    if let Err(e) = restore::preflight(&loc, &journal.scratch).await {
        ctx.end(s, "failed", None::<&()>)?;
        return Ok(Err(Stop::Failed(e.to_string())));
    }
    let parent = journal.scratch.parent().unwrap_or(&journal.scratch).to_path_buf();
    crate::fsutil::create_private_dir(&parent).map_err(|e| Error::io(&parent, e))?;
    let (a, h, d, list) =
        (archive_path.clone(), sha256.clone(), journal.scratch.clone(), loc.dir.join(&loc.entry.file_list));
    let extracted = crate::blocking::run("drill extract", move || {
        let entries = archive::extract_into(&a, &h, &d)?;
        archive::matches_list(&a, &d, &list)?;
        let (bytes, _) = archive::totals(&list)?;
        Ok::<_, archive::ArchiveError>((entries, bytes))
    })
    .await?;
    ctx.end(s, if extracted.is_ok() { "ok" } else { "failed" }, None::<&()>)?;
    match extracted {
        Ok((entries, bytes)) => (t.entries, t.data_bytes) = (entries, bytes),
        Err(e) => return Ok(Err(Stop::Failed(format!("the archive does not restore: {e}")))),
    }
    t.restore_ms = Some(started.elapsed().as_millis() as u64);
    crash_point("drill-after-extract");
    if ctx.cancel.is_cancelled() {
        return Ok(Err(Stop::Interrupted("after extracting the archive")));
    }

    // SQLite files with a `check` (`[app.database] kind = "sqlite"`): each restored copy
    // checked (integrity, then the query) by the same confined copier a snapshot uses.
    if let Some(q) = app.sqlite.as_ref().and_then(|sq| sq.check.as_deref()) {
        let files = app.sqlite.iter().flat_map(|sq| &sq.paths).map(|rel| (journal.scratch.as_path(), rel));
        match sqlite_check(files, q).await {
            Ok(answer) => t.db_check = Some(answer),
            Err(e) => return Ok(Err(Stop::Failed(format!("tenant {tenant}: {e}")))),
        }
    }

    // The throw-away container on its own internal network.
    let s = ctx.begin(Some(tenant), DrillStep::Start, journal)?;
    let labels: BTreeMap<String, String> = [
        (crate::naming::DRILL_LABEL.to_string(), ctx.run_id().to_string()),
        (crate::naming::DRILL_TENANT_LABEL.to_string(), tenant.to_string()),
    ]
    .into_iter()
    .collect();
    let spec = engine.spec(&c.name).await?;
    engine.create_internal_network(&journal.drill_container, &labels).await?;
    // The database first (`[app.database]`), so the app boots against it: a scratch one from
    // the same image as the tenant's, on the drill's network, the dump replayed and checked.
    if let (Some(dbspec), Some(db_name)) = (&app.database, &journal.db_container) {
        let failed = |why: String| Ok(Err(Stop::Failed(why)));
        let (dumps, files) = match verified_dumps(&loc, &c.tenant, app).await {
            Ok(d) => d,
            Err(why) => {
                ctx.end(s, "failed", None::<&()>)?;
                return failed(why);
            }
        };
        create_scratch_db(engine, dbspec, &c.tenant, dumps, db_name, &journal.drill_container, &labels).await?;
        match crate::database::drill(engine, dbspec, &c.tenant, db_name, &files).await {
            Ok(answer) => t.db_check = Some(answer),
            Err(e) => {
                ctx.end(s, "failed", None::<&()>)?;
                return failed(e.to_string());
            }
        }
        crash_point("drill-after-database");
    }
    let strip_labels = ctx.cfg.drill.strip_labels.clone();
    let strip = move |k: &str| strips_label(k, &strip_labels, app);
    let data_dir = app.data_dir_of(&c.tenant);
    let data_volume = app.data_volume_of(&c.tenant);
    let drill = DrillSpec {
        name: &journal.drill_container,
        network: &journal.drill_container,
        alias: None,
        data: vec![DrillData { data_dir: &data_dir, data_volume: data_volume.as_deref(), scratch: &journal.scratch }],
        labels,
        strip: &strip,
    };
    match engine.create_drill(&spec, &drill).await? {
        Ok(changes) => t.changes = Some(changes),
        Err(why) => {
            ctx.end(s, "failed", None::<&()>)?;
            return Ok(Err(Stop::Failed(why)));
        }
    }
    let started_at = Instant::now();
    let up = engine.start(&journal.drill_container).await;
    ctx.end(s, if up.is_ok() { "ok" } else { "failed" }, None::<&()>)?;
    if let Err(e) = up {
        return Ok(Err(Stop::Failed(format!("the app's container did not start on the restored copy: {e}"))));
    }
    crash_point("drill-after-start");

    // Health, as a rollout checks it, on the drill network's address.
    let s = ctx.begin(Some(tenant), DrillStep::Health, journal)?;
    let mut health = app.health.clone();
    health.network = Some(journal.drill_container.clone());
    let gate = tokio::select! {
        g = prober.gate(engine, &journal.drill_container, &health, None) => Some(g?),
        () = cancelled(&ctx.cancel) => None,
    };
    ctx.end(s, if matches!(gate, Some(Ok(_))) { "ok" } else { "failed" }, None::<&()>)?;
    match gate {
        None => Ok(Err(Stop::Interrupted("while the app's health was checked"))),
        Some(Err(u)) => Ok(Err(Stop::Failed(unhealthy(&u, &health, t.snapshot.as_deref())))),
        Some(Ok(_)) => {
            t.healthy_ms = Some(started_at.elapsed().as_millis() as u64);
            test_pause("drill-healthy");
            crash_point("drill-healthy");
            Ok(Ok(()))
        }
    }
}

fn unhealthy(u: &Unhealthy, health: &crate::config::HealthSpec, snapshot: Option<&str>) -> String {
    format!(
        "the app did not come up healthy on the data restored from {}: {u} (probe GET :{}{}, timeout {} s)",
        snapshot.unwrap_or("the snapshot"),
        health.port,
        health.path,
        health.timeout_s
    )
}

/// Remove a tenant drill's container (with its anonymous volumes), network and scratch dir;
/// returns what could not be removed.
async fn cleanup(ctx: &Ctx, engine: &Engine, j: &DrillJournal) -> Vec<String> {
    let mut left = Vec::new();
    for c in std::iter::once(&j.drill_container).chain(j.db_container.iter()) {
        if let Err(e) = engine.remove_with_volumes(c).await {
            left.push(format!("container {c} ({e})"));
        }
    }
    if let Err(e) = engine.remove_network(&j.drill_container).await {
        left.push(format!("network {} ({e})", j.drill_container));
    }
    if let Err(e) = remove_scratch(&ctx.cfg.backup_root, &j.scratch) {
        left.push(format!("{} ({e})", j.scratch.display()));
    }
    left
}

/// Remove a scratch dir, and its run's dir and the drill root once they are empty.
pub fn remove_scratch(backup_root: &Path, scratch: &Path) -> std::io::Result<()> {
    crate::adapters::confined::remove_tree(scratch)?;
    let root = crate::layout::drill_root(backup_root);
    let mut dir = scratch.parent();
    while let Some(d) = dir.filter(|d| d.starts_with(&root)) {
        // Only while empty: another tenant's scratch copy of the same run is never removed here.
        if std::fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
    Ok(())
}

impl fmt::Display for DrillReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in &self.swept {
            writeln!(f, "{line}")?;
        }
        let from = if self.plan.remote { "the remote" } else { "the local backups" };
        if self.dry_run {
            writeln!(
                f,
                "would drill {} tenant(s) from {from}, snapshot {}:",
                self.plan.tenants.len(),
                self.plan.source
            )?;
            for p in &self.plan.tenants {
                writeln!(
                    f,
                    "  {} (app {}): restore into a scratch dir, run {} with {}'s settings on an internal network",
                    p.tenant, p.app, p.image, p.container
                )?;
            }
            return Ok(());
        }
        for t in &self.tenants {
            let word = match t.outcome {
                DrillOutcome::Passed => "passed",
                DrillOutcome::Failed => "FAILED",
                DrillOutcome::Interrupted => "interrupted",
            };
            writeln!(f, "drill tenant {} (app {}): {word}", t.tenant, t.app)?;
            writeln!(f, "  {}", t.detail)?;
        }
        let skipped = self.plan.tenants.len().saturating_sub(self.tenants.len());
        if skipped > 0 {
            writeln!(f, "{skipped} tenant(s) not drilled (interrupted)")?;
        }
        writeln!(f, "{}", self.summary())
    }
}

/// What a passed drill's detail adds for its database check (`answer`): the SQLite files
/// checked, or the dump replayed, and what `check` answered; nothing without a check.
pub(super) fn db_check_detail(app: &App, answer: Option<&str>) -> String {
    let Some(answer) = answer else { return String::new() };
    let what = if app.sqlite.is_some() { "SQLite files checked" } else { "database replayed" };
    format!("; {what}, check answered {answer:?}")
}

/// The dumps `tenant`'s snapshot `loc` names (its app declares `[app.database]`), as its
/// manifest entry records them and each re-hashed; Err: why the drill fails, the tenant named
/// (no dumps in the snapshot, one missing or different).
pub(super) async fn verified_dumps<'a>(
    loc: &'a restore::Located,
    tenant: &TenantId,
    app: &App,
) -> std::result::Result<(&'a DatabaseDumps, Vec<(Option<String>, PathBuf)>), String> {
    let Some(dumps) = &loc.entry.database else {
        return Err(format!(
            "tenant {tenant}: app \"{}\" declares [app.database] but the snapshot {} holds no database dump (taken \
             before it was declared?); run `slipway snapshot` and drill again",
            app.name, loc.snapshot
        ));
    };
    let files = crate::database::verified(&loc.dir, tenant, dumps).await.map_err(|e| e.to_string())?;
    Ok((dumps, files))
}

/// Create the drill's scratch database `name` on `network` from `tenant`'s database container
/// ([`Engine::create_drill_db`]), of the image the dump was taken with, by the image id its
/// manifest entry records, while the engine still has it (a database upgraded since is not what
/// proves the dump); else of the image the database runs now, said in the log. What the manifest
/// names is used only as an image id, never as a reference the engine could pull.
pub(super) async fn create_scratch_db(
    engine: &Engine,
    spec: &DatabaseSpec,
    tenant: &TenantId,
    dumps: &DatabaseDumps,
    name: &str,
    network: &str,
    labels: &BTreeMap<String, String>,
) -> Result<()> {
    let live = engine.spec(&spec.container_of(tenant)).await?;
    let image = dump_image(engine, tenant, dumps, &live.image_id()).await?;
    engine.create_drill_db(&live, image.as_deref(), name, network, labels.clone()).await
}

/// The image a drill boots the database from to replay `dumps`: the one they were taken with
/// (their manifest entry's image id, used only if it is one, and only while the engine has
/// it), else None: the image the database runs now (`now`), said in the log.
pub(super) async fn dump_image(
    engine: &Engine,
    tenant: &TenantId,
    dumps: &DatabaseDumps,
    now: &str,
) -> Result<Option<String>> {
    Ok(match dumps.image.as_deref().filter(|i| crate::manifest::is_image_id(i)) {
        Some(i) if engine.image_id(i).await?.is_some() => Some(i.to_string()),
        Some(i) => {
            tracing::warn!(
                "tenant {tenant}: the image the dump was taken with ({i}) is no longer on this engine; the drill's \
                 database runs the database container's image now ({now})"
            );
            None
        }
        None => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_labels_and_the_select_label_are_stripped_and_the_apps_own_are_kept() {
        let fleet = crate::config::Fleet::parse(
            "[[app]]\nname = \"pulse\"\nimage = \"reg/pulse@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\"\n\
             select = \"pulse.managed=true\"\ntenant_from = \"label:pulse.tenant\"\ndata_dir = \"/data/{tenant}\"\n\
             health = { path = \"/h\", port = 80 }\n",
            "fleet.toml",
        )
        .unwrap();
        let app = &fleet.apps[0];
        let list = crate::config::default_strip_labels();
        for k in [
            "traefik.enable",
            "traefik.http.routers.t1.rule",
            "caddy",
            "caddy.reverse_proxy",
            "com.docker.compose.service",
            "pulse.managed",
        ] {
            assert!(strips_label(k, &list, app), "{k} must be stripped");
        }
        for k in ["pulse.tenant", "org.opencontainers.image.version", "traefik", "app.caddy"] {
            assert!(!strips_label(k, &list, app), "{k} must be kept");
        }
        assert!(strips_label("x.route", &["x.*".into()], app));
    }

    #[test]
    fn a_scratch_dir_goes_with_its_empty_parents_and_never_another_tenants_copy() {
        let d = tempfile::tempdir().unwrap();
        let run: crate::types::RunId = "20261122T030000Z-7f3a".parse().unwrap();
        let (a, b) =
            (crate::layout::drill_scratch(d.path(), &run, "t1"), crate::layout::drill_scratch(d.path(), &run, "t2"));
        for s in [&a, &b] {
            std::fs::create_dir_all(s.join("db")).unwrap();
            std::fs::write(s.join("db/x"), b"x").unwrap();
        }
        remove_scratch(d.path(), &a).unwrap();
        assert!(!a.exists() && b.join("db/x").exists());
        remove_scratch(d.path(), &b).unwrap();
        assert!(!crate::layout::drill_root(d.path()).exists());
        assert!(d.path().exists());
        remove_scratch(d.path(), &b).unwrap();
    }
}
