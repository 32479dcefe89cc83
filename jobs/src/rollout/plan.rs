//! A rollout's plan, made before any tenant is touched: which tenants to roll and in what
//! order (canary first, stopped ones last, held ones left), how each one's pre-rollout data is
//! kept (a copy beside its data dir, or an archive while it is down), and every refusal that
//! must come before the first stop — a tenant whose state a snapshot would miss, one the
//! engine would delete at its stop (`docker run --rm`), a health probe that cannot be aimed,
//! a new image that adds a `VOLUME`. Pure logic over what the engine reported, except for
//! reading the data dirs.

use std::fmt;
use std::path::Path;

use serde::Serialize;

use crate::adapters::docker::{TenantContainer, TenantMount, Unmapped};
use crate::adapters::mirror;
use crate::config::App;
use crate::error::{Error, Result};
use crate::types::{Digest, TenantId};

/// Free space the filesystem of a copy must keep beyond what the copy takes: a tenant's data
/// grows while it runs.
const COPY_MARGIN_MIN: u64 = 64 << 20;

/// One tenant to roll.
#[derive(Debug, Clone, Serialize)]
pub struct PlanItem {
    /// Tenant.
    pub tenant: TenantId,
    /// Its container.
    pub container: String,
    /// Digest it runs now.
    pub from: Option<Digest>,
    /// Digest it will run.
    pub to: Digest,
    /// The canary goes first and gates the rest.
    pub canary: bool,
    /// Its container is not running (`include_stopped`): recreated on the new image and left
    /// stopped; never started, health-checked or the canary.
    #[serde(default)]
    pub stopped: bool,
    /// How its pre-rollout data is kept: a copy beside it made while it runs, or an archive
    /// made while it is down (decided per tenant once the plan is made).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copy: Option<CopyPlan>,
    /// A stack tenant (`[app.services]`): which services change, which containers stop, which
    /// mounts are copied; `container`, `from` and `to` are then its first changed service's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stack: Option<super::stack_plan::StackPlanItem>,
}

/// How a tenant's pre-rollout data is kept during its rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "path", rename_all = "snake_case")]
pub enum CopyPlan {
    /// Mirror the data dir beside it while the tenant runs, only the delta while it is down;
    /// archive the copy once the new version is healthy.
    PreCopy {
        /// The filesystem clones files (`FICLONE`): the copy shares the data's extents.
        reflink: bool,
        /// Bytes of the tenant's files.
        data_bytes: u64,
    },
    /// Archive the whole data dir while the tenant is down.
    ArchiveWhileDown {
        /// Why no copy beside the data dir.
        why: String,
    },
}

impl fmt::Display for CopyPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CopyPlan::PreCopy { reflink, data_bytes } => write!(
                f,
                "pre-copy while running ({}, {:.1} MB), delta while down",
                if *reflink { "reflink" } else { "copy" },
                *data_bytes as f64 / 1e6
            ),
            CopyPlan::ArchiveWhileDown { why } => write!(f, "archive while down: {why}"),
        }
    }
}

/// Decide how `data_dir`'s pre-rollout data is kept: a copy beside it when the app allows it,
/// the data dir is no mount point (a copy beside it must be on its filesystem, for the rename
/// back) and that filesystem has room for the copy (its data, unless reflinks share it, plus
/// a margin); else an archive while down. Reads the tree: blocking.
pub fn copy_plan(app: &App, data_dir: &Path) -> CopyPlan {
    let fallback = |why: String| CopyPlan::ArchiveWhileDown { why };
    if !app.pre_copy {
        return fallback("pre_copy = false in fleet.toml".into());
    }
    let Some(parent) = data_dir.parent() else { return fallback("the data dir has no parent dir".into()) };
    match crate::fsutil::is_mount_point(data_dir) {
        Ok(false) => {}
        Ok(true) => {
            return fallback(format!(
                "{} is a mount point: a copy beside it would be on another filesystem, which no rename can swap back",
                data_dir.display()
            ))
        }
        Err(e) => return fallback(format!("cannot tell whether {} is a mount point: {e}", data_dir.display())),
    }
    let data_bytes = match mirror::tree_bytes(data_dir) {
        Ok(n) => n,
        Err(e) => return fallback(format!("cannot size {}: {e}", data_dir.display())),
    };
    let reflink = mirror::supports_reflink(parent);
    let need = if reflink { 0 } else { data_bytes } + COPY_MARGIN_MIN.max(data_bytes / 10);
    match crate::fsutil::free_bytes(parent) {
        Ok(free) if free >= need => CopyPlan::PreCopy { reflink, data_bytes },
        Ok(free) => fallback(format!(
            "{:.1} MB free beside {}, the copy needs {:.1} MB ({}data + margin)",
            free as f64 / 1e6,
            data_dir.display(),
            need as f64 / 1e6,
            if reflink { "no reflink needs no " } else { "" }
        )),
        Err(e) => fallback(format!("cannot read the free space beside {}: {e}", data_dir.display())),
    }
}

/// Fill in each plan item's [`CopyPlan`] (reads the data dirs, off the async runtime).
pub(super) async fn decide_copies(app: &App, plan: &mut RolloutPlan) -> Result<()> {
    for item in &mut plan.items {
        let (a, d) = (app.clone(), app.data_dir_of(&item.tenant));
        item.copy = Some(crate::blocking::run("copy plan", move || copy_plan(&a, &d)).await?);
    }
    Ok(())
}

/// The plan for one app.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutPlan {
    /// App name.
    pub app: String,
    /// The pinned image.
    pub image: String,
    /// Desired-state commit.
    pub commit: String,
    /// Tenants to roll, in order (canary first).
    pub items: Vec<PlanItem>,
    /// Tenants left alone because of `hold`.
    pub held: Vec<TenantId>,
    /// Tenants already on the pinned digest.
    pub up_to_date: Vec<TenantId>,
    /// Behind (stopped): not running, so left alone (set `include_stopped = true` to recreate
    /// them on the new image without starting them).
    pub stopped: Vec<TenantId>,
    /// Containers skipped because they cannot be mapped to a tenant or lack a data dir.
    pub skipped: Vec<Unmapped>,
    /// Tenants behind but outside their maintenance window now (`[[app.rollout.windows]]`),
    /// each with why: left for a later run.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub outside_window: Vec<OutsideWindow>,
}

/// A tenant a maintenance window keeps from this run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct OutsideWindow {
    /// The tenant.
    pub tenant: TenantId,
    /// Which window, and when the next opens.
    pub why: String,
}

/// Compute the plan: tenants whose digest differs from the pin, minus `hold`, minus stopped
/// tenants (unless `include_stopped`; then they go last), minus tenants without a data dir,
/// canary first (never a stopped one). `unmapped` containers are carried into `skipped`.
pub fn plan(
    app: &App,
    commit: &str,
    tenants: &[TenantContainer],
    unmapped: Vec<Unmapped>,
    only: &[TenantId],
) -> Result<RolloutPlan> {
    for t in only {
        if !tenants.iter().any(|c| &c.tenant == t) {
            let known: Vec<&str> = tenants.iter().map(|c| c.tenant.as_str()).collect();
            return Err(Error::Usage(format!(
                "app {}: no tenant \"{t}\" (tenants: {})",
                app.name,
                if known.is_empty() { "none".to_string() } else { known.join(", ") }
            )));
        }
    }
    let pinned = app.image.digest();
    // The health probe must know which address to use before any tenant is stopped.
    let unprobeable: Vec<String> = tenants
        .iter()
        .filter(|c| only.is_empty() || only.contains(&c.tenant))
        .filter(|c| c.digest.as_ref() != Some(pinned) && !app.hold.contains(&c.tenant) && c.is_running())
        .filter_map(|c| c.probe_network_problem(app.health.network.as_deref()))
        .collect();
    if !unprobeable.is_empty() {
        return Err(Error::Config(format!(
            "fleet.toml: app \"{}\": the health probe cannot be aimed, so nothing was touched: {}",
            app.name,
            unprobeable.join("; ")
        )));
    }
    // A container started with `docker run --rm` is deleted by the engine at its stop: a
    // failed release would leave the tenant with no container at all.
    let auto_removed: Vec<String> = tenants
        .iter()
        .filter(|c| only.is_empty() || only.contains(&c.tenant))
        .filter(|c| c.digest.as_ref() != Some(pinned) && !app.hold.contains(&c.tenant) && c.auto_remove)
        .map(|c| {
            format!(
                "tenant {} (container {}) was started with `docker run --rm`: Docker deletes it the moment it \
                 stops, so a failed release could not bring it back; recreate it without --rm (with a restart \
                 policy, e.g. --restart unless-stopped), then roll out",
                c.tenant, c.name
            )
        })
        .collect();
    if !auto_removed.is_empty() {
        return Err(Error::Config(format!("app \"{}\": nothing was touched: {}", app.name, auto_removed.join("; "))));
    }
    // Everything a tenant keeps must be in its data dir, or the snapshot taken after the stop
    // would miss it: checked for every tenant before the first is stopped.
    let unsafe_data: Vec<String> = tenants
        .iter()
        .filter(|c| only.is_empty() || only.contains(&c.tenant))
        .filter(|c| c.digest.as_ref() != Some(pinned) && !app.hold.contains(&c.tenant))
        .filter(|c| c.is_running() || app.include_stopped)
        .flat_map(|c| data_problems(&app.data_dir_of(&c.tenant), c, &app.scratch_mounts))
        .collect();
    if !unsafe_data.is_empty() {
        return Err(Error::Config(format!(
            "app \"{}\": a rollout snapshot would not hold all of a tenant's state, so nothing was touched: {}",
            app.name,
            unsafe_data.join("; ")
        )));
    }
    let mut items = Vec::new();
    let mut held = Vec::new();
    let mut up_to_date = Vec::new();
    let mut stopped = Vec::new();
    let mut skipped = unmapped;
    for c in tenants {
        if !only.is_empty() && !only.contains(&c.tenant) {
            continue;
        }
        let data_dir = app.data_dir_of(&c.tenant);
        if c.digest.as_ref() == Some(pinned) {
            up_to_date.push(c.tenant.clone());
        } else if app.hold.contains(&c.tenant) {
            held.push(c.tenant.clone());
        } else if !c.is_running() && !app.include_stopped {
            stopped.push(c.tenant.clone());
        } else if !data_dir.is_dir() {
            skipped.push(Unmapped {
                container: c.name.clone(),
                tenant: Some(c.tenant.to_string()),
                reason: format!(
                    "its data dir {} (data_dir \"{}\") is not a directory; nothing of it can be snapshotted, so it \
                     is not touched: fix data_dir or create the dir",
                    data_dir.display(),
                    app.data_dir
                ),
            });
        } else {
            items.push(PlanItem {
                tenant: c.tenant.clone(),
                container: c.name.clone(),
                from: c.digest.clone(),
                to: pinned.clone(),
                canary: false,
                stopped: !c.is_running(),
                copy: None,
                stack: None,
            });
        }
    }
    // Stopped tenants go last: they cannot prove the new version healthy, so never gate.
    items.sort_by_key(|i| i.stopped);
    // Tenants arrive sorted; the configured canary (if it is in the plan) goes first.
    let canary_pos =
        app.canary.as_ref().and_then(|c| items.iter().position(|i| &i.tenant == c && !i.stopped)).unwrap_or(0);
    if items.first().is_some_and(|i| !i.stopped) {
        let c = items.remove(canary_pos);
        items.insert(0, c);
        items[0].canary = true;
    }
    Ok(RolloutPlan {
        app: app.name.clone(),
        image: app.image.to_string(),
        commit: commit.to_string(),
        items,
        held,
        up_to_date,
        stopped,
        skipped,
        outside_window: Vec::new(),
    })
}

/// Why a rollout of tenant `c` could lose state its snapshot misses, checked at plan time
/// (before any tenant is stopped): its data dir must be a directory of its own — not a symlink
/// (the snapshot and a restore act on the dir itself, never through a link), not a mount point
/// (a restore swaps the dir by a rename) — that the container bind-mounts, and no other
/// writable mount may hold state: a named volume, an anonymous one (an image's `VOLUME`, `-v
/// /path`) or a bind outside the data dir is refused unless it is read-only. A tmpfs, and a
/// bind of a socket or a device, hold nothing to snapshot; nor does a mount at one of the
/// app's `scratch_mounts`, by the operator's word. A data dir that does not exist is not a
/// problem here: the plan skips that tenant.
fn data_problems(data_dir: &Path, c: &TenantContainer, scratch: &[String]) -> Vec<String> {
    let who = |why: String| format!("tenant {} (container {}): {why}", c.tenant, c.name);
    match std::fs::symlink_metadata(data_dir) {
        Ok(m) if m.file_type().is_symlink() => {
            let to = std::fs::read_link(data_dir).map_or_else(|_| "?".to_string(), |t| t.display().to_string());
            return vec![who(format!(
                "its data dir {} is a symlink (to {to}); slipway snapshots and restores the dir itself, never \
                 through a link: set data_dir to the real path",
                data_dir.display()
            ))];
        }
        Ok(m) if m.is_dir() => {}
        _ => return Vec::new(),
    }
    match crate::fsutil::is_mount_point(data_dir) {
        Ok(false) => {}
        Ok(true) => {
            return vec![who(format!(
                "its data dir {} is a mount point; a restore replaces the data dir by a rename, which a mount \
                 point cannot take: make data_dir a directory inside that filesystem (e.g. {}/data) and \
                 bind-mount that",
                data_dir.display(),
                data_dir.display()
            ))]
        }
        Err(e) => {
            return vec![who(format!("cannot tell whether its data dir {} is a mount point: {e}", data_dir.display()))]
        }
    }
    if let Some(m) = crate::fsutil::mounts_under(data_dir).ok().and_then(|v| v.into_iter().next()) {
        return vec![who(format!(
            "{} is a mount point inside its data dir {}: a snapshot does not copy another filesystem, and a \
             restore could neither bring it back nor swap the dir around it; mount it beside the data dir \
             (another bind mount of the container) instead",
            m.display(),
            data_dir.display()
        ))];
    }
    let real = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let data_real = real(data_dir);
    // The data dir is mounted by a bind of it (or of a dir inside it), or it is the mountpoint
    // of a named volume of the `local` driver (`data_volume`: a dir on this host).
    let in_data_dir = |m: &TenantMount| {
        let src = Path::new(&m.source);
        let host = Path::new(&m.host_path);
        match m.kind.as_str() {
            "bind" => src.starts_with(data_dir) || real(src).starts_with(&data_real),
            "volume" => {
                !m.is_anonymous_volume()
                    && m.driver == "local"
                    && !m.host_path.is_empty()
                    && (host == data_dir || real(host) == data_real)
            }
            _ => false,
        }
    };
    // A socket or a device holds nothing a snapshot could take (docker.sock, /dev/fuse).
    let holds_no_state = |m: &TenantMount| {
        use std::os::unix::fs::FileTypeExt;
        m.kind == "bind"
            && std::fs::metadata(&m.source).is_ok_and(|md| {
                let t = md.file_type();
                t.is_socket() || t.is_char_device() || t.is_block_device() || t.is_fifo()
            })
    };
    let mut problems = Vec::new();
    // A volume whose data lives elsewhere (another driver: NFS, a cloud disk) is no dir here.
    for m in c.mounts.iter().filter(|m| m.kind == "volume" && m.writable && m.driver != "local" && !m.driver.is_empty())
    {
        if scratch.iter().any(|s| Path::new(s) == Path::new(&m.destination)) {
            continue;
        }
        problems.push(who(format!(
            "its {} uses the volume driver \"{}\", whose data is not a dir on this host that slipway could copy, \
             snapshot or swap back: move the data to a volume of the local driver (or a bind mount), or, if it \
             holds no customer data, list {} in the app's scratch_mounts",
            m.describe(),
            m.driver,
            m.destination
        )));
    }
    if !problems.is_empty() {
        return problems;
    }
    if !c.mounts.iter().any(in_data_dir) {
        let mounts: Vec<String> = c.mounts.iter().map(TenantMount::describe).collect();
        problems.push(who(format!(
            "the container does not mount its data dir {} (its mounts: {}), so a snapshot of that dir would \
             hold none of its state: bind-mount {} into the container, or fix data_dir (or data_volume: the \
             name of a local volume the container mounts)",
            data_dir.display(),
            if mounts.is_empty() { "none".to_string() } else { mounts.join(", ") },
            data_dir.display()
        )));
    }
    for m in &c.mounts {
        let by_word = scratch.iter().any(|s| Path::new(s) == Path::new(&m.destination));
        if !m.writable
            || !matches!(m.kind.as_str(), "bind" | "volume")
            || by_word
            || in_data_dir(m)
            || holds_no_state(m)
        {
            continue;
        }
        let fix = if m.is_anonymous_volume() {
            format!(
                "bind-mount a dir under {} at {} instead, or, if it holds no customer data (a cache), list it \
                 in the app's scratch_mounts",
                data_dir.display(),
                m.destination
            )
        } else {
            format!(
                "mount it read-only, or move its data under {} and bind-mount it from there, or, if it holds no \
                 customer data (a cache), list {} in the app's scratch_mounts",
                data_dir.display(),
                m.destination
            )
        };
        problems.push(who(format!(
            "its {} is writable and outside its data dir {}, so a rollout snapshot would miss what it holds: {fix}",
            m.describe(),
            data_dir.display()
        )));
    }
    problems
}

/// Why the new image's `VOLUME`s (`volumes`) would give tenant `c` state its snapshot misses:
/// one at a path the prior container mounts nothing at becomes a fresh anonymous volume in the
/// new container, which the new version writes and no snapshot or undo sees. A path the prior
/// container mounts (its data dir, a volume carried by name) is covered; so is one the app
/// names in `scratch_mounts` (a cache, by the operator's word).
pub(super) fn new_volume_problems(c: &TenantContainer, volumes: &[String], scratch: &[String]) -> Vec<String> {
    volumes
        .iter()
        .filter(|v| !c.mounts.iter().any(|m| Path::new(&m.destination) == Path::new(v)))
        .filter(|v| !scratch.iter().any(|s| Path::new(s) == Path::new(v)))
        .map(|v| {
            format!(
                "tenant {} (container {}): the new image declares VOLUME {v}, which the prior container does \
                 not mount, so the new version would write to a fresh anonymous volume there that no snapshot \
                 holds: recreate the container with a dir under its data dir bind-mounted at {v}, or, if it \
                 holds no customer data (a cache), list {v} in the app's scratch_mounts",
                c.tenant, c.name
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(kind: &str, source: &str, destination: &str, writable: bool) -> TenantMount {
        let (host_path, driver) = match kind {
            "bind" => (source.to_string(), String::new()),
            "volume" => (format!("/var/lib/docker/volumes/{source}/_data"), "local".to_string()),
            _ => (String::new(), String::new()),
        };
        TenantMount {
            kind: kind.into(),
            source: source.into(),
            destination: destination.into(),
            writable,
            host_path,
            driver,
        }
    }

    fn tenant(mounts: Vec<TenantMount>) -> TenantContainer {
        TenantContainer {
            tenant: "t1".parse().unwrap(),
            name: "pulse-t1".into(),
            id: "abc".into(),
            image_ref: "reg/pulse:v1".into(),
            digest: None,
            state: "running".into(),
            networks: vec!["front".into()],
            network_mode: "front".into(),
            mounts,
            auto_remove: false,
            labels: Default::default(),
        }
    }

    #[test]
    fn only_state_inside_the_data_dir_or_read_only_passes_the_plan() {
        let root = tempfile::tempdir().unwrap();
        let data = root.path().join("t1");
        std::fs::create_dir_all(data.join("uploads")).unwrap();
        let d = data.display().to_string();
        let anon = "a".repeat(64);
        let bound = mount("bind", &d, "/data", true);
        // (extra mount, the words its problem must contain; none when it passes)
        let cases: Vec<(TenantMount, Option<&[&str]>)> = vec![
            (mount("bind", &format!("{d}/uploads"), "/uploads", true), None),
            (mount("volume", "assets", "/assets", false), None),
            (mount("volume", &anon, "/cache", false), None),
            (mount("tmpfs", "", "/tmp", true), None),
            (mount("volume", "uploads", "/uploads", true), Some(&["volume \"uploads\" at /uploads", "read-only"])),
            (mount("volume", &anon, "/cache", true), Some(&["anonymous volume aaaaaaaaaaaa at /cache", "bind-mount"])),
            (mount("bind", "/srv/shared", "/shared", true), Some(&["bind mount /srv/shared at /shared", "read-only"])),
        ];
        for (extra, want) in cases {
            let problems = data_problems(&data, &tenant(vec![bound.clone(), extra.clone()]), &[]);
            match want {
                None => assert!(problems.is_empty(), "{extra:?}: {problems:?}"),
                Some(words) => {
                    assert_eq!(problems.len(), 1, "{extra:?}: {problems:?}");
                    for w in words {
                        assert!(problems[0].contains(w) && problems[0].contains("tenant t1"), "{w}: {problems:?}");
                    }
                    // The operator's word that it holds no customer data lets it pass.
                    let scratch = [extra.destination.clone()];
                    let by_word = data_problems(&data, &tenant(vec![bound.clone(), extra.clone()]), &scratch);
                    assert!(by_word.is_empty(), "{extra:?}: {by_word:?}");
                }
            }
        }
    }

    #[test]
    fn a_data_dir_not_mounted_a_symlink_or_missing_is_found_at_plan_time() {
        let root = tempfile::tempdir().unwrap();
        let data = root.path().join("t1");
        std::fs::create_dir_all(&data).unwrap();
        let elsewhere = mount("bind", "/srv/other", "/data", false);
        let p = data_problems(&data, &tenant(vec![elsewhere]), &[]);
        assert!(p.len() == 1 && p[0].contains("does not mount its data dir"), "{p:?}");
        let link = root.path().join("t2");
        std::os::unix::fs::symlink(&data, &link).unwrap();
        let p = data_problems(&link, &tenant(vec![mount("bind", &link.display().to_string(), "/data", true)]), &[]);
        assert!(p.len() == 1 && p[0].contains("symlink"), "{p:?}");
        // A missing data dir is the plan's to skip (with its reason), not a refusal.
        assert!(data_problems(&root.path().join("t3"), &tenant(Vec::new()), &[]).is_empty());
    }

    /// Issue #26 item 1: a data dir that is the mountpoint of the tenant's named volume (local
    /// driver) passes; the same volume from another driver, or another local volume than the
    /// one at the data dir, is refused naming it.
    #[test]
    fn a_named_local_volume_at_the_data_dir_passes_and_another_driver_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let data = root.path().join("volumes/cf-t1_data/_data");
        std::fs::create_dir_all(&data).unwrap();
        let mut vol = mount("volume", "cf-t1_data", "/data", true);
        vol.host_path = data.display().to_string();
        assert!(data_problems(&data, &tenant(vec![vol.clone()]), &[]).is_empty());
        let mut nfs = vol.clone();
        nfs.driver = "rexray/ebs".into();
        let p = data_problems(&data, &tenant(vec![nfs]), &[]);
        assert!(p.len() == 1 && p[0].contains("rexray/ebs") && p[0].contains("cf-t1_data"), "{p:?}");
        let mut other = vol.clone();
        other.host_path = root.path().join("volumes/cf-t2_data/_data").display().to_string();
        let p = data_problems(&data, &tenant(vec![other]), &[]);
        assert!(p[0].contains("does not mount its data dir"), "{p:?}");
    }
}
