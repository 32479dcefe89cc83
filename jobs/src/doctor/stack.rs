//! `doctor`'s checks of stack apps (`[app.services]`): every tenant's containers found, one per
//! declared service ([`crate::stack_tenant::resolve`], the same rule snapshot and restore
//! apply); every data mount a real dir of a supported kind (a bind dir or a `local` volume, not
//! a symlink, not a mount point); every volume's dir inside the engine's volume dir with no
//! symlink on the way; and the dirs the units must write for them (beside each mount: its
//! rollout copy). Read only: it lists containers and `lstat`s paths, nothing else.

use std::path::{Path, PathBuf};

use super::{line, Check, Level};
use crate::adapters::docker::Engine;
use crate::config::{App, Fleet, Stack};
use crate::stack_tenant::{resolve, tenants_of, StackTenant};

/// What the stack checks found.
#[derive(Debug, Default)]
pub(super) struct StackFacts {
    /// One line per stack app (and one per tenant or mount that fails).
    pub checks: Vec<Check>,
    /// Every stack tenant with its mounts' dirs: (app, tenant, dirs).
    pub tenants: Vec<(String, String, Vec<PathBuf>)>,
    /// The dirs the units must write for the stacks' mounts.
    pub write_dirs: Vec<PathBuf>,
}

/// Check every stack app of `fleet` against the engine.
pub(super) async fn stack_checks(engine: &Engine, fleet: &Fleet) -> StackFacts {
    let mut facts = StackFacts::default();
    let apps: Vec<(&App, &Stack)> = fleet.apps.iter().filter_map(|a| a.stack.as_ref().map(|s| (a, s))).collect();
    if apps.is_empty() {
        return facts;
    }
    let volumes = match engine.volumes_dir().await {
        Ok(v) => v,
        Err(e) => {
            facts.checks.push(line(
                "stack",
                Level::Warn,
                format!("cannot ask the engine for its volume dir: {e}"),
                None,
            ));
            PathBuf::from(crate::config::VOLUMES_DIR)
        }
    };
    for (app, stack) in apps {
        let (members, unmapped) = match engine.stack_members(app, stack).await {
            Ok(m) => m,
            Err(e) => {
                facts.checks.push(line(
                    "stack",
                    Level::Fail,
                    format!("app {}: cannot list its containers: {e}", app.name),
                    None,
                ));
                continue;
            }
        };
        for u in &unmapped {
            facts.checks.push(line(
                "stack",
                Level::Warn,
                format!("app {}: container {} is no tenant's: {}", app.name, u.container, u.reason),
                Some("relabel or remove it, or narrow select; no job touches it".into()),
            ));
        }
        let tenants = tenants_of(&members);
        let (mut good, mut mounts) = (0usize, 0usize);
        for t in &tenants {
            let problem = match resolve(app, stack, t, &members) {
                Err(why) => Some(why),
                Ok(st) => {
                    let why = volume_problems(&st, &volumes);
                    let dirs: Vec<PathBuf> = st.mounts.iter().map(|m| m.dir.clone()).collect();
                    facts.write_dirs.extend(st.mounts.iter().filter_map(|m| write_dir(&m.dir, &volumes)));
                    facts.tenants.push((app.name.clone(), t.to_string(), dirs));
                    mounts += st.mounts.len();
                    why
                }
            };
            match problem {
                None => good += 1,
                Some(why) => facts.checks.push(line(
                    "stack",
                    Level::Fail,
                    format!("app {}: {why}", app.name),
                    Some(
                        "fix the stack or fleet.toml as said: snapshot, restore and rollout refuse this tenant until \
                         then"
                            .into(),
                    ),
                )),
            }
        }
        if good == tenants.len() {
            facts.checks.push(line(
                "stack",
                Level::Ok,
                format!(
                    "app {}: {} stack tenant(s), each with one container per service ({}); {mounts} data mount(s), \
                     each a real dir (bind or local volume, volumes inside {})",
                    app.name,
                    tenants.len(),
                    stack.names(),
                    volumes.display()
                ),
                None,
            ));
        }
    }
    facts.write_dirs.sort();
    facts.write_dirs.dedup();
    facts
}

/// A volume's dir outside the engine's volume dir, or a symlink on the way to it: by name.
fn volume_problems(st: &StackTenant, volumes: &Path) -> Option<String> {
    let mut out = Vec::new();
    for m in st.mounts.iter().filter(|m| !m.source.starts_with('/')) {
        let Ok(rel) = m.dir.strip_prefix(volumes) else {
            out.push(format!(
                "tenant {}: its {} is at {}, outside the engine's volume dir {}: a volume slipway copies and swaps \
                 must be the engine's own",
                st.tenant,
                m.what,
                m.dir.display(),
                volumes.display()
            ));
            continue;
        };
        let mut p = volumes.to_path_buf();
        for part in rel.components() {
            p.push(part);
            if std::fs::symlink_metadata(&p).is_ok_and(|md| md.file_type().is_symlink()) {
                out.push(format!(
                    "tenant {}: its {}: {} is a symlink; slipway never follows one: make it the real dir",
                    st.tenant,
                    m.what,
                    p.display()
                ));
                break;
            }
        }
    }
    (!out.is_empty()).then(|| out.join("; "))
}

/// Where a mount's rollout copy goes, for the units' write paths: the engine's volume dir for
/// a volume, the dir holding a bind dir.
fn write_dir(dir: &Path, volumes: &Path) -> Option<PathBuf> {
    if dir.starts_with(volumes) {
        Some(volumes.to_path_buf())
    } else {
        dir.parent().filter(|p| !p.as_os_str().is_empty()).map(Path::to_path_buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack_tenant::DataMount;

    #[test]
    fn a_volume_outside_the_engines_dir_or_behind_a_symlink_is_named_and_a_bind_is_not_checked_so() {
        let root = tempfile::tempdir().unwrap();
        let volumes = root.path().join("volumes");
        std::fs::create_dir_all(volumes.join("p_ok/_data")).unwrap();
        std::fs::create_dir_all(root.path().join("elsewhere/_data")).unwrap();
        std::os::unix::fs::symlink(root.path().join("elsewhere"), volumes.join("p_link")).unwrap();
        let mount =
            |source: &str, dir: PathBuf| DataMount { what: format!("volume \"{source}\""), source: source.into(), dir };
        let st = |mounts: Vec<DataMount>| StackTenant { tenant: "t1".parse().unwrap(), containers: vec![], mounts };
        assert_eq!(volume_problems(&st(vec![mount("p_ok", volumes.join("p_ok/_data"))]), &volumes), None);
        let why = volume_problems(&st(vec![mount("p_link", volumes.join("p_link/_data"))]), &volumes).unwrap();
        assert!(why.contains("p_link") && why.contains("symlink"), "{why}");
        let why = volume_problems(&st(vec![mount("p_out", root.path().join("elsewhere/_data"))]), &volumes).unwrap();
        assert!(why.contains("outside the engine's volume dir"), "{why}");
        let bind = DataMount { what: "bind".into(), source: "/srv/x".into(), dir: "/srv/x".into() };
        assert_eq!(volume_problems(&st(vec![bind]), &volumes), None);
        assert_eq!(write_dir(&volumes.join("p_ok/_data"), &volumes), Some(volumes.clone()));
        assert_eq!(write_dir(Path::new("/srv/t1/data"), &volumes), Some(PathBuf::from("/srv/t1")));
    }
}
