//! The names slipway gives the containers it sets aside or makes for itself: during a rollout a
//! tenant's prior container is renamed `<name>.pre-rollout-<run_id>` until the new one is
//! healthy, and the new one is created before the stop as `<name>.next-<run_id>` until the
//! switch; a restore drill runs a throw-away container (and its own network) named
//! `slipway-drill-<run_id>-<tenant>`, labelled [`DRILL_LABEL`]`=<run_id>`. The rules are
//! spelled here once; the jobs build such names, and the Docker adapter uses
//! [`is_set_aside`] and [`is_drill`] to leave them out of an app's tenants.

use crate::types::RunId;

/// What a set-aside name carries between the container's name and the run id.
const PRE_ROLLOUT: &str = ".pre-rollout-";
/// What a staged (created, not yet switched in) container's name carries.
const STAGED: &str = ".next-";

/// The name run `run` gives the prior container `name` while it rolls the tenant.
pub fn pre_rollout(name: &str, run: &RunId) -> String {
    format!("{name}{PRE_ROLLOUT}{run}")
}

/// Whether `name` is a prior container a rollout set aside (never a tenant).
pub fn is_pre_rollout(name: &str) -> bool {
    name.contains(PRE_ROLLOUT)
}

/// The name run `run` creates the new container of `name` under, before the stop.
pub fn staged(name: &str, run: &RunId) -> String {
    format!("{name}{STAGED}{run}")
}

/// Whether `name` is a container a rollout set aside or staged (never a tenant).
pub fn is_set_aside(name: &str) -> bool {
    is_pre_rollout(name) || name.rsplit_once(STAGED).is_some_and(|(_, run)| run.parse::<RunId>().is_ok())
}

/// The name of the one-shot container a rollout runs a tenant's hook in (`[app.hooks]`),
/// made from the prior container's set-aside name `pre_name` (so [`is_set_aside`] holds for
/// it, and `recover` can tell it from the journal).
pub fn hook(pre_name: &str) -> String {
    format!("{pre_name}.hook")
}

/// The run id in a hook container's name ([`hook`]), if it is one.
pub fn run_of_hook(name: &str) -> Option<&str> {
    name.rsplit_once(PRE_ROLLOUT).and_then(|(_, r)| r.strip_suffix(".hook"))
}

/// What every drill container and network name starts with.
const DRILL: &str = "slipway-drill-";

/// The label (value: the drill's run id) on every container and network a drill creates:
/// whatever carries it is a drill's, never a tenant's, and `recover` removes it.
pub const DRILL_LABEL: &str = "slipway.drill";
/// The label naming the tenant a drill container restores.
pub const DRILL_TENANT_LABEL: &str = "slipway.drill.tenant";

/// The name of the throw-away container (and of its network) drill run `run` makes for `tenant`.
pub fn drill(tenant: &str, run: &RunId) -> String {
    format!("{DRILL}{run}-{tenant}")
}

/// The name of the scratch database container (`[app.database]`) drill run `run` makes for
/// `tenant`, beside its throw-away app container on the same network.
pub fn drill_db(tenant: &str, run: &RunId) -> String {
    format!("{}-db", drill(tenant, run))
}

/// The name of the scratch database container drill run `run` makes for stack tenant `tenant`
/// whose database runs outside its project. `--db`, not `-db`: a service name starts with a
/// letter or digit, so no service's drill container (`<tenant>-<service>`) can be named so.
pub fn drill_stack_db(tenant: &str, run: &RunId) -> String {
    format!("{}--db", drill(tenant, run))
}

/// Whether `name` is a drill's throw-away container (never a tenant).
pub fn is_drill(name: &str) -> bool {
    name.starts_with(DRILL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_aside_name_is_recognised_and_a_tenant_name_is_not() {
        let run: RunId = "20261122T030000Z-7f3a".parse().unwrap();
        let aside = pre_rollout("pulse-t1", &run);
        assert_eq!(aside, "pulse-t1.pre-rollout-20261122T030000Z-7f3a");
        assert!(is_pre_rollout(&aside));
        for tenant in ["pulse-t1", "pulse-pre-rollout", "pulse-t1.pre", "pulse-t1.next-door"] {
            assert!(!is_pre_rollout(tenant), "{tenant}");
            assert!(!is_set_aside(tenant), "{tenant}");
            assert!(!is_drill(tenant), "{tenant}");
        }
        let staged = staged("pulse-t1", &run);
        assert_eq!(staged, "pulse-t1.next-20261122T030000Z-7f3a");
        assert!(is_set_aside(&staged) && is_set_aside(&aside) && !is_pre_rollout(&staged));
        let drill = drill("t1", &run);
        assert_eq!(drill, "slipway-drill-20261122T030000Z-7f3a-t1");
        assert!(is_drill(&drill) && !is_pre_rollout(&drill));
        // A stack's scratch database is no service's drill container, not even a service `db`'s.
        let db = drill_stack_db("t1", &run);
        assert!(is_drill(&db) && db != drill_db("t1", &run) && db != super::drill("t1-db", &run), "{db}");
        let hook = hook(&aside);
        assert!(is_set_aside(&hook), "a hook container is never a tenant");
        assert_eq!(run_of_hook(&hook), Some("20261122T030000Z-7f3a"));
        assert_eq!(run_of_hook(&aside), None);
    }
}
