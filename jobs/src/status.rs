//! `status`: per app and tenant, what runs against what is desired — container state, running
//! digest vs pinned, health now, last snapshot and sync age, last rollout outcome — and the
//! list of things that need a person (unhealthy tenant, snapshot older than 26 h, a halted
//! rollout not yet resolved, a run killed mid-way, a restore drill that failed or whose last
//! success is older than `[drill] max_age_days` — read from the run record). `status` exits 8 when that list is not
//! empty, so cron, Gatus or any monitor can alert on it. A stack tenant (`[app.services]`) is
//! one row like a single container, with a row per service under it (state, digest against
//! that service's pin, healthy by its HEALTHCHECK and HTTP checks); a stack tenant snapshot and
//! restore would refuse is listed as needing a person, with the reason.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::adapters::desired;
use crate::adapters::docker::Engine;
use crate::adapters::health::Prober;
use crate::context::Ctx;
use crate::error::{ExitKind, Result};
use crate::layout::SnapshotKind;

/// A snapshot older than this needs a person.
pub const MAX_SNAPSHOT_AGE_S: i64 = 26 * 3600;

/// One tenant.
#[derive(Debug, Clone, Serialize)]
pub struct TenantStatus {
    /// Tenant id.
    pub tenant: String,
    /// Container name.
    pub container: String,
    /// running, exited, paused, …
    pub state: String,
    /// Digest it runs.
    pub digest: Option<String>,
    /// Runs the pinned digest.
    pub up_to_date: bool,
    /// Listed in `hold`.
    pub held: bool,
    /// `behind (stopped)`: not on the pin because it is not running, and rollout leaves
    /// stopped tenants alone unless `include_stopped = true`.
    pub behind: Option<String>,
    /// Answered its health check just now.
    pub healthy: bool,
    /// Why not, if not.
    pub health_detail: Option<String>,
    /// When its newest snapshot was taken.
    pub last_snapshot: Option<String>,
    /// Age of that snapshot in seconds.
    pub snapshot_age_s: Option<i64>,
    /// Age of its newest snapshot verified on the remote, in seconds.
    pub sync_age_s: Option<i64>,
    /// When its last successful restore drill ended.
    pub last_drill: Option<String>,
    /// Age of that drill in seconds.
    pub drill_age_s: Option<i64>,
    /// With `[app.database]`: when its last successful drill that replayed the database ended,
    /// and the answer of its check query then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_db_drill: Option<DbDrill>,
    /// A stack tenant's services, in start order (then `container` is its health service's,
    /// `state` says which service is not running, `up_to_date` and `healthy` are all of them).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceStatus>,
}

/// One service of a stack tenant.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceStatus {
    /// Service name.
    pub service: String,
    /// Its container.
    pub container: String,
    /// running, exited, paused, …
    pub state: String,
    /// Digest it runs.
    pub digest: Option<String>,
    /// Runs the service's pin.
    pub up_to_date: bool,
    /// Running, healthy by its image's HEALTHCHECK (when it has one) and answering its HTTP
    /// checks just now.
    pub healthy: bool,
    /// Why not, if not.
    pub health_detail: Option<String>,
}

/// A tenant's last good database drill.
#[derive(Debug, Clone, Serialize)]
pub struct DbDrill {
    /// When it ended.
    pub at: String,
    /// The check query's answer ("" when no check is declared).
    pub check: String,
}

/// One app.
#[derive(Debug, Clone, Serialize)]
pub struct AppStatus {
    /// App name.
    pub app: String,
    /// Pinned image.
    pub pinned: String,
    /// Last rollout run of the app: (run id, outcome).
    pub last_rollout: Option<(String, String)>,
    /// Why `reconcile` will not roll the pinned digest (it halted, or was rolled back).
    pub rejected: Option<crate::reconcile::Rejection>,
    /// Tenants.
    pub tenants: Vec<TenantStatus>,
}

/// The result of `slipway status`.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// Desired-state commit.
    pub commit: String,
    /// Per app.
    pub apps: Vec<AppStatus>,
    /// What needs a person, one line each.
    pub attention: Vec<String>,
}

impl StatusReport {
    /// Attention when anything needs a person.
    pub fn exit_kind(&self) -> ExitKind {
        if self.attention.is_empty() {
            ExitKind::Success
        } else {
            ExitKind::Attention
        }
    }
}

fn age_s(ts: &str) -> Option<i64> {
    let t: jiff::Timestamp = ts.parse().ok()?;
    Some(jiff::Timestamp::now().as_second() - t.as_second())
}

/// Run `status`.
pub async fn status(ctx: &Ctx) -> Result<StatusReport> {
    let state = desired::read(&ctx.cfg.desired, &ctx.cfg.state_dir, None)?;
    let engine = Engine::connect(&ctx.cfg.docker).await?;
    let prober = Prober::new()?;
    let mut attention = Vec::new();
    // Newest snapshot and newest synced snapshot per tenant. Daily snapshots are the backups; a
    // rollout snapshot is not a substitute for one.
    let mut newest: HashMap<String, String> = HashMap::new();
    let mut synced: HashMap<String, String> = HashMap::new();
    for s in ctx.store.newest_snapshots(SnapshotKind::Daily.as_str())? {
        if let Some(v) = s.synced_at {
            synced.insert(s.tenant.clone(), v);
        }
        newest.insert(s.tenant, s.created_at);
    }
    // Restore drills: each tenant's newest successful one, and its newest of any outcome.
    let drilled: HashMap<String, String> =
        ctx.store.last_drills(true)?.into_iter().map(|d| (d.tenant, d.finished_at)).collect();
    let last_drill: HashMap<String, slipway_state::DrillRow> =
        ctx.store.last_drills(false)?.into_iter().map(|d| (d.tenant.clone(), d)).collect();
    let max_drill_age_s = ctx.cfg.drill.max_age_days as i64 * 86_400;
    let db_drilled: HashMap<String, DbDrill> = ctx
        .store
        .last_db_drills()?
        .into_iter()
        .map(|d| (d.tenant, DbDrill { at: d.finished_at, check: d.db_check.unwrap_or_default() }))
        .collect();
    let unresolved: Vec<String> = ctx.store.unresolved_halts()?.into_iter().map(|r| r.id).collect();
    let backups = Backups {
        newest: &newest,
        synced: &synced,
        drilled: &drilled,
        last_drill: &last_drill,
        db_drilled: &db_drilled,
        max_drill_age_s,
        max_days: ctx.cfg.drill.max_age_days,
    };
    let mut apps = Vec::new();
    for app in &state.fleet.apps {
        let tenants = match &app.stack {
            Some(stack) => stack_tenants(&engine, &prober, app, stack, &backups, &mut attention).await?,
            None => single_tenants(&engine, &prober, app, &backups, &mut attention).await?,
        };
        let last_rollout = ctx
            .store
            .runs(200)?
            .into_iter()
            .find(|r| r.job == "rollout" && r.app.as_deref() == Some(app.name.as_str()))
            .map(|r| (r.id, r.outcome.unwrap_or_else(|| "unfinished".into())));
        // A stack's release is the pins of all its services, as its runs record it.
        let pinned = app.stack.as_ref().map_or_else(|| app.image.digest().to_string(), |s| s.pin_key());
        let behind = tenants.iter().any(|t| !t.up_to_date && !t.held);
        let rejected = if behind { crate::reconcile::rejection(ctx, &app.name, &pinned)? } else { None };
        if let Some(r) = rejected.as_ref().filter(|r| !unresolved.contains(&r.run_id)) {
            // An unresolved halt is listed below already.
            attention.push(format!(
                "app {}: the pinned {pinned} is rejected: run {} was {}; pin another digest in git, or `slipway reconcile --retry`",
                app.name, r.run_id, r.why
            ));
        }
        let shown = if app.stack.is_some() { pinned.clone() } else { app.image.to_string() };
        apps.push(AppStatus { app: app.name.clone(), pinned: shown, last_rollout, rejected, tenants });
    }
    // A paused rollout: the decision a person owes it, and when it is taken for them (whatever
    // its run's outcome word: halted, or recovered after a crash as it paused).
    let pauses = ctx.store.open_pauses()?;
    for p in &pauses {
        // A resumed run keeps its pause open until it ends: while it runs (or once killed) the
        // decision is not a person's yet.
        if ctx.store.run(&p.run_id)?.is_some_and(|r| r.finished_at.is_none()) {
            attention.push(format!(
                "run {} (rollout of app {}) is paused but has not ended: it runs now (resumed), or it was killed, and \
                 then `slipway recover` finishes what it left and leaves it paused",
                p.run_id, p.app
            ));
            continue;
        }
        // A window's pause waits for its window, however long; a budget's is aborted after
        // the app's pause_timeout_s.
        let then = if p.kind == "window" {
            "the first reconcile once its maintenance window opens goes on with it (no timeout aborts it)"
        } else {
            "past the app's pause_timeout_s the next rollout or reconcile aborts it"
        };
        attention.push(format!(
            "run {} (rollout of app {}) is PAUSED since {} ({}): `slipway rollout resume {}` goes on with its \
             waves, `slipway rollout abort {}` rolls back what it changed; {then}",
            p.run_id, p.app, p.paused_at, p.reason, p.run_id, p.run_id
        ));
    }
    for r in ctx.store.unresolved_halts()? {
        if pauses.iter().any(|p| p.run_id == r.id) {
            continue;
        }
        if r.job == "restore" {
            attention.push(format!(
                "run {} (restore of app {}) is {} and not resolved: see `slipway runs show {}`; a successful \
                 `slipway restore` of its tenant (`--run {}` puts back the data it replaced) resolves it",
                r.id,
                r.app.as_deref().unwrap_or("-"),
                r.outcome.as_deref().unwrap_or("?"),
                r.id,
                r.id
            ));
            continue;
        }
        attention.push(format!(
            "run {} ({} of app {}) is {} and not resolved: see `slipway runs show {}`, then `slipway rollback --run {}` or fix and `reconcile --retry`",
            r.id,
            r.job,
            r.app.as_deref().unwrap_or("-"),
            r.outcome.as_deref().unwrap_or("?"),
            r.id,
            r.id
        ));
    }
    // The newest daily snapshot or sync did not succeed: a backup not taken (or not off site)
    // is said the morning after, not only once the newest good one is over 26 h old.
    for job in ["snapshot", "sync"] {
        let Some(r) = ctx.store.last_run_of(job)? else { continue };
        let Some(word) = r.outcome.as_deref() else { continue };
        if word == crate::error::ExitKind::Success.word() {
            continue;
        }
        attention.push(format!(
            "run {} (the last {job}) ended {word}: {}; the next {job} tries again, see `slipway runs show {}`",
            r.id,
            r.summary.as_deref().unwrap_or("-").lines().next().unwrap_or("-"),
            r.id
        ));
    }
    // The newest rollout decision was a refusal of the desired state (trust rules).
    if let Some(r) = ctx
        .store
        .last_run_of("rollout")?
        .filter(|r| r.outcome.as_deref() == Some(crate::journal::Outcome::Refused.word()))
    {
        attention.push(format!(
            "run {}: the desired state was refused: {}",
            r.id,
            r.summary.as_deref().unwrap_or("see `slipway runs show`")
        ));
    }
    // A finished rollout left a tenant's pre-rollout data beside its data dir, unarchived (the
    // archive of the copy failed): that run has no snapshot of it, and the copy holds disk.
    for k in crate::recover::kept_copies(ctx)? {
        let k = match k {
            Ok(k) => k,
            Err(why) => {
                attention.push(why);
                continue;
            }
        };
        attention.push(format!(
            "tenant {}: run {} could not archive its rollout copy {} (the tenant's data from before that run, kept \
             as the only copy of it); see `slipway runs show {}`, free space on the backup disk, and remove the copy \
             by hand once a newer snapshot is enough (`rollback --run` of that tenant needs it and refuses without it)",
            k.tenant,
            k.run,
            k.copy.display(),
            k.run
        ));
    }
    for r in ctx.store.unfinished_runs()? {
        if r.id != ctx.run_id().as_str() {
            attention.push(format!("run {} ({}) never finished; run `slipway recover`", r.id, r.job));
        }
    }
    Ok(StatusReport { commit: state.commit, apps, attention })
}

/// What the run record says of every tenant's backups, and the limits that need a person.
struct Backups<'a> {
    newest: &'a HashMap<String, String>,
    synced: &'a HashMap<String, String>,
    drilled: &'a HashMap<String, String>,
    last_drill: &'a HashMap<String, slipway_state::DrillRow>,
    db_drilled: &'a HashMap<String, DbDrill>,
    max_drill_age_s: i64,
    max_days: u64,
}

impl Backups<'_> {
    /// A tenant's row with its snapshot, sync and drill ages (the rest to fill in), and what
    /// about them needs a person.
    fn row(&self, app: &str, t: &str, attention: &mut Vec<String>) -> TenantStatus {
        let last_snapshot = self.newest.get(t).cloned();
        let snapshot_age_s = last_snapshot.as_deref().and_then(age_s);
        match snapshot_age_s {
            None => attention.push(format!("app {app} tenant {t}: no snapshot yet; run `slipway snapshot`")),
            Some(a) if a > MAX_SNAPSHOT_AGE_S => {
                attention.push(format!("app {app} tenant {t}: newest snapshot is {} h old (limit 26 h)", a / 3600))
            }
            _ => {}
        }
        let drill_age_s = self.drilled.get(t).and_then(|d| age_s(d));
        match (self.last_drill.get(t), drill_age_s) {
            // An interrupted drill says nothing about the backup; a failed one does.
            (Some(d), _) if d.outcome == "failed" => attention.push(format!(
                "app {app} tenant {t}: the last restore drill ({}) {}: {}; see `slipway runs show {}`",
                d.run_id,
                d.outcome,
                d.detail.as_deref().unwrap_or("-"),
                d.run_id
            )),
            (_, Some(a)) if self.max_drill_age_s > 0 && a > self.max_drill_age_s => attention.push(format!(
                "app {app} tenant {t}: the last successful restore drill is {} days old (limit {} days); \
                 run `slipway drill --tenant {t}`",
                a / 86_400,
                self.max_days
            )),
            _ => {}
        }
        TenantStatus {
            tenant: t.to_string(),
            container: String::new(),
            state: String::new(),
            digest: None,
            up_to_date: false,
            held: false,
            behind: None,
            healthy: false,
            health_detail: None,
            last_snapshot,
            snapshot_age_s,
            sync_age_s: self.synced.get(t).and_then(|s| age_s(s)),
            last_drill: self.drilled.get(t).cloned(),
            drill_age_s,
            last_db_drill: self.db_drilled.get(t).cloned(),
            services: Vec::new(),
        }
    }
}

/// The tenants of a single-container app: state, digest against the pin, health now.
async fn single_tenants(
    engine: &Engine,
    prober: &Prober,
    app: &crate::config::App,
    backups: &Backups<'_>,
    attention: &mut Vec<String>,
) -> Result<Vec<TenantStatus>> {
    let mut out = Vec::new();
    for c in engine.tenants(app).await? {
        let t = c.tenant.to_string();
        let health = if c.state == "running" {
            prober.gate(engine, &c.name, &app.health, Some(Duration::from_secs(3))).await?.map_err(|u| u.to_string())
        } else {
            Err(format!("container is {}", c.state))
        };
        if let Err(why) = &health {
            attention.push(format!("app {} tenant {t}: unhealthy: {why}", app.name));
        }
        let up_to_date = c.digest.as_ref() == Some(app.image.digest());
        let mut row = backups.row(&app.name, &t, attention);
        row.behind = (!up_to_date && !c.is_running()).then(|| "behind (stopped)".to_string());
        row.up_to_date = up_to_date;
        row.held = app.hold.contains(&c.tenant);
        row.healthy = health.is_ok();
        row.health_detail = health.err();
        row.digest = c.digest.map(|d| d.to_string());
        row.state = c.state;
        row.container = c.name;
        out.push(row);
    }
    Ok(out)
}

/// The tenants of a stack app: each service's state, digest against its pin and health now.
async fn stack_tenants(
    engine: &Engine,
    prober: &Prober,
    app: &crate::config::App,
    stack: &crate::config::Stack,
    backups: &Backups<'_>,
    attention: &mut Vec<String>,
) -> Result<Vec<TenantStatus>> {
    let (members, unmapped) = engine.stack_members(app, stack).await?;
    for u in unmapped {
        attention.push(format!("app {}: container {} is no tenant's: {}", app.name, u.container, u.reason));
    }
    let mut out = Vec::new();
    for tenant in crate::stack_tenant::tenants_of(&members) {
        let t = tenant.to_string();
        let mut row = backups.row(&app.name, &t, attention);
        row.held = app.hold.contains(&tenant);
        let st = match crate::stack_tenant::resolve(app, stack, &tenant, &members) {
            Ok(st) => st,
            Err(why) => {
                attention.push(format!("app {}: {why}", app.name));
                row.state = "refused".into();
                row.health_detail = Some(why);
                out.push(row);
                continue;
            }
        };
        for c in &st.containers {
            let Some(m) = members.iter().find(|m| m.container.tenant == tenant && m.service == c.service) else {
                continue;
            };
            let digest = m.container.digest.clone();
            let pin = stack.service(&c.service).map(|s| s.image.digest());
            let mut health: std::result::Result<(), String> = if m.container.state != "running" {
                Err(format!("container is {}", m.container.state))
            } else {
                match engine.state(&m.container.id).await?.health.as_str() {
                    "" | "healthy" => Ok(()),
                    h => Err(format!("its HEALTHCHECK says {h}")),
                }
            };
            for spec in c.checks.iter() {
                if health.is_ok() {
                    health = prober
                        .gate(engine, &m.container.name, spec, Some(Duration::from_secs(3)))
                        .await?
                        .map(|_| ())
                        .map_err(|u| u.to_string());
                }
            }
            if let Err(why) = &health {
                attention.push(format!("app {} tenant {t}: service {}: unhealthy: {why}", app.name, c.service));
            }
            row.services.push(ServiceStatus {
                service: c.service.clone(),
                container: c.name.clone(),
                state: m.container.state.clone(),
                up_to_date: digest.is_some() && digest.as_ref() == pin,
                digest: digest.map(|d| d.to_string()),
                healthy: health.is_ok(),
                health_detail: health.err(),
            });
        }
        let front = app.health.service.as_deref();
        row.container = row
            .services
            .iter()
            .find(|s| Some(s.service.as_str()) == front)
            .or(row.services.first())
            .map(|s| s.container.clone())
            .unwrap_or_default();
        row.state = match row.services.iter().find(|s| s.state != "running") {
            Some(s) => format!("{} ({})", s.state, s.service),
            None => "running".into(),
        };
        row.up_to_date = row.services.iter().all(|s| s.up_to_date);
        row.healthy = row.services.iter().all(|s| s.healthy);
        let sick: Vec<String> = row
            .services
            .iter()
            .filter_map(|s| s.health_detail.as_ref().map(|d| format!("{}: {d}", s.service)))
            .collect();
        row.health_detail = (!sick.is_empty()).then(|| sick.join("; "));
        let stopped = row.services.iter().any(|s| !s.up_to_date && s.state != "running");
        row.behind = (!row.up_to_date && stopped).then(|| "behind (stopped)".to_string());
        out.push(row);
    }
    Ok(out)
}

impl fmt::Display for StatusReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let age = |s: Option<i64>| s.map_or("-".to_string(), |s| format!("{}h{:02}m", s / 3600, (s % 3600) / 60));
        for a in &self.apps {
            writeln!(f, "app {} pinned {}", a.app, a.pinned)?;
            if let Some((id, o)) = &a.last_rollout {
                writeln!(f, "  last rollout {id}: {o}")?;
            }
            if let Some(r) = &a.rejected {
                writeln!(f, "  pinned digest rejected: run {} {}; reconcile will not roll it", r.run_id, r.why)?;
            }
            writeln!(
                f,
                "  {:<22} {:<9} {:<14} {:<9} {:<9} {:<9} DRILLED",
                "TENANT", "STATE", "DIGEST", "HEALTH", "SNAPSHOT", "SYNCED"
            )?;
            for t in &a.tenants {
                let digest = t.digest.as_deref().map_or("-".to_string(), |d| {
                    let short = d.get(7..19).unwrap_or(d);
                    format!("{short}{}", if t.up_to_date { "" } else { "*" })
                });
                let days = |s: Option<i64>| s.map_or("never".to_string(), |s| format!("{}d", s / 86_400));
                writeln!(
                    f,
                    "  {:<22} {:<9} {:<14} {:<9} {:<9} {:<9} {}{}",
                    t.tenant,
                    t.state,
                    digest,
                    if t.healthy { "ok" } else { "FAILING" },
                    age(t.snapshot_age_s),
                    age(t.sync_age_s),
                    days(t.drill_age_s),
                    t.behind.as_deref().map_or(String::new(), |b| format!("  {b}"))
                )?;
                for v in &t.services {
                    let digest = v.digest.as_deref().map_or("-".to_string(), |d| {
                        let short = d.get(7..19).unwrap_or(d);
                        format!("{short}{}", if v.up_to_date { "" } else { "*" })
                    });
                    writeln!(
                        f,
                        "    {:<20} {:<9} {:<14} {}",
                        v.service,
                        v.state,
                        digest,
                        if v.healthy { "ok" } else { "FAILING" }
                    )?;
                }
                if let Some(d) = &t.last_db_drill {
                    writeln!(f, "    database drilled {}: check answered {:?}", d.at, d.check)?;
                }
            }
        }
        if self.attention.is_empty() {
            writeln!(f, "all good")?;
        } else {
            writeln!(f, "needs attention:")?;
            for a in &self.attention {
                writeln!(f, "  - {a}")?;
            }
        }
        Ok(())
    }
}
