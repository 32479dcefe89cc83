//! A stack tenant (`[app.services]`) as the backup jobs see it — `snapshot`, `restore` and the
//! rollout's plan: its containers in start order (the compose labels' `depends_on` where they
//! say, else the fleet's `order`), which of them write the data, and its data mounts (the union
//! of the writers' `data` mounts, each host dir once, in the services' start order).
//!
//! Invariants: a data mount is a real dir on this host — a bind of a dir or a named volume of
//! the `local` driver, never a symlink, a mount point, a tmpfs, an anonymous volume or another
//! driver's volume ([`data_mount`]); a tenant whose containers are not exactly the declared
//! services, one each, is refused with the tenant and the service named.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::adapters::docker::{StackMember, TenantMount};
use crate::config::stack::{depends_on, start_order, COMPOSE_DEPENDS_ON};
use crate::config::{App, HealthSpec, Stack};
use crate::types::TenantId;

/// One container of a stack tenant.
#[derive(Debug, Clone)]
pub struct StackContainer {
    /// Its service.
    pub service: String,
    /// The container's name.
    pub name: String,
    /// Whether the service writes the tenant's data (`writes = true`).
    pub writes: bool,
    /// Whether it was running when listed.
    pub running: bool,
    /// Its HTTP checks: the service's own, and the app's when `health.service` names it.
    pub checks: Vec<HealthSpec>,
}

/// One data mount of a stack tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataMount {
    /// As an operator names it (`volume "p_appdata" at /data`).
    pub what: String,
    /// What finds it again: a volume's name, a bind mount's host dir.
    pub source: String,
    /// Its dir on this host.
    pub dir: PathBuf,
}

/// A stack tenant: its containers in start order and its data mounts.
#[derive(Debug, Clone)]
pub struct StackTenant {
    /// The tenant.
    pub tenant: TenantId,
    /// Every container, in start order.
    pub containers: Vec<StackContainer>,
    /// The data mounts, each host dir once.
    pub mounts: Vec<DataMount>,
}

impl StackTenant {
    /// The writers, in start order.
    pub fn writers(&self) -> impl DoubleEndedIterator<Item = &StackContainer> {
        self.containers.iter().filter(|c| c.writes)
    }
}

/// The tenants of a stack app among `members` (every container the engine listed for it).
pub fn tenants_of(members: &[StackMember]) -> Vec<TenantId> {
    let mut out: Vec<TenantId> = members.iter().map(|m| m.container.tenant.clone()).collect();
    out.dedup();
    out
}

/// `tenant` of stack app `app` as it runs now, or why it cannot be backed up as a unit (the
/// tenant, the container, the service or the mount named, and the fix).
pub fn resolve(
    app: &App,
    stack: &Stack,
    tenant: &TenantId,
    members: &[StackMember],
) -> std::result::Result<StackTenant, String> {
    let mine: Vec<&StackMember> = members.iter().filter(|m| &m.container.tenant == tenant).collect();
    let mut found: BTreeMap<&str, &StackMember> = BTreeMap::new();
    for m in &mine {
        if stack.service(&m.service).is_none() {
            return Err(format!(
                "tenant {tenant}: container {} is service \"{}\", which fleet.toml does not declare (services: {}); \
                 declare [app.services.{}] or narrow select",
                m.container.name,
                m.service,
                stack.names(),
                m.service
            ));
        }
        if let Some(other) = found.insert(&m.service, m) {
            return Err(format!(
                "tenant {tenant}: service \"{}\" has several containers ({}, {}); slipway backs up one container per \
                 service",
                m.service, other.container.name, m.container.name
            ));
        }
    }
    let missing: Vec<&str> =
        stack.services.iter().map(|s| s.name.as_str()).filter(|s| !found.contains_key(s)).collect();
    if !missing.is_empty() {
        return Err(format!(
            "tenant {tenant}: no container of service {}; every service in [app.services] must run in each tenant",
            missing.join(", ")
        ));
    }
    let fleet_order: Vec<String> = stack.services.iter().map(|s| s.name.clone()).collect();
    let mut deps = BTreeMap::new();
    for s in &fleet_order {
        if let Some(l) = found[s.as_str()].labels.get(COMPOSE_DEPENDS_ON) {
            deps.insert(s.clone(), depends_on(l));
        }
    }
    let mut containers = Vec::new();
    let mut mounts: Vec<DataMount> = Vec::new();
    for name in start_order(&fleet_order, &deps) {
        let (Some(svc), Some(m)) = (stack.service(&name), found.get(name.as_str())) else { continue };
        let c = &m.container;
        let mut checks: Vec<HealthSpec> = svc.health.iter().cloned().collect();
        if app.health.service.as_deref() == Some(name.as_str()) {
            checks.push(app.health.clone());
        }
        if svc.writes {
            for d in &svc.data {
                let Some(mt) = c.mounts.iter().find(|x| Path::new(&x.destination) == Path::new(d)) else {
                    return Err(format!(
                        "tenant {tenant}: service {name} (container {}): services.{name}.data lists {d}, but the \
                         container mounts nothing there",
                        c.name
                    ));
                };
                let dir = data_mount(mt)
                    .map_err(|why| format!("tenant {tenant}: service {name} (container {}): {why}", c.name))?;
                if !mounts.iter().any(|f| f.dir == dir) {
                    let source = if mt.kind == "volume" { mt.source.clone() } else { dir.display().to_string() };
                    mounts.push(DataMount { what: mt.describe(), source, dir });
                }
            }
        }
        containers.push(StackContainer {
            service: name.clone(),
            name: c.name.clone(),
            writes: svc.writes,
            running: c.is_running(),
            checks,
        });
    }
    if mounts.is_empty() {
        return Err(format!("tenant {tenant}: no service writes data (no `data` of a `writes = true` service)"));
    }
    Ok(StackTenant { tenant: tenant.clone(), containers, mounts })
}

/// The host dir of a declared data mount, or why it cannot be one: a bind of a real dir (not a
/// symlink, not a mount point: the copy beside it is swapped back by a rename) or a named
/// volume of the `local` driver; never a tmpfs, an anonymous volume or another driver's volume.
pub fn data_mount(m: &TenantMount) -> std::result::Result<PathBuf, String> {
    let dir = match m.kind.as_str() {
        "bind" => PathBuf::from(&m.source),
        "volume" if m.driver != "local" && !m.driver.is_empty() => {
            return Err(format!(
                "its {} uses the volume driver \"{}\", whose data is not a dir on this host that slipway could copy \
                 or swap back: move the data to a volume of the local driver (or a bind mount)",
                m.describe(),
                m.driver
            ))
        }
        "volume" if m.is_anonymous_volume() => {
            return Err(format!(
                "its {} is an anonymous volume: give it a name (a named volume in the compose file) so it is \
                 re-attached by name",
                m.describe()
            ))
        }
        "volume" if !m.host_path.is_empty() => PathBuf::from(&m.host_path),
        "tmpfs" => {
            return Err(format!(
                "its data mount at {} is a tmpfs, which holds nothing across a restart: drop it from data (list it \
                 in scratch_mounts)",
                m.destination
            ))
        }
        _ => return Err(format!("its {} is no bind dir or local volume the engine gives a dir for", m.describe())),
    };
    if !m.writable {
        return Err(format!(
            "its data mount {} is read-only: a service that only reads data is not a writer",
            m.describe()
        ));
    }
    match std::fs::symlink_metadata(&dir) {
        Ok(md) if md.file_type().is_symlink() => {
            return Err(format!("its data mount {} is a symlink on the host; mount the real dir", m.describe()))
        }
        Ok(md) if md.is_dir() => {}
        _ => {
            return Err(format!("its data mount {} is not a directory on this host ({})", m.describe(), dir.display()))
        }
    }
    if crate::fsutil::is_mount_point(&dir).unwrap_or(true) {
        return Err(format!(
            "its data mount {} ({}) is a mount point: the copy beside it could not be swapped back by a rename",
            m.describe(),
            dir.display()
        ));
    }
    Ok(dir)
}
