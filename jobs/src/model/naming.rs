//! The names slipway gives the containers it sets aside or makes for itself: during a rollout a
//! tenant's prior container is renamed `<name>.pre-rollout-<run_id>` until the new one is
//! healthy; a restore drill runs a throw-away container (and its own network) named
//! `slipway-drill-<run_id>-<tenant>`, labelled [`DRILL_LABEL`]`=<run_id>`. The rules are
//! spelled here once; the jobs build such names, and the Docker adapter uses
//! [`is_pre_rollout`] and [`is_drill`] to leave them out of an app's tenants.

use crate::types::RunId;

/// What a set-aside name carries between the container's name and the run id.
const PRE_ROLLOUT: &str = ".pre-rollout-";

/// The name run `run` gives the prior container `name` while it rolls the tenant.
pub fn pre_rollout(name: &str, run: &RunId) -> String {
    format!("{name}{PRE_ROLLOUT}{run}")
}

/// Whether `name` is a prior container a rollout set aside (never a tenant).
pub fn is_pre_rollout(name: &str) -> bool {
    name.contains(PRE_ROLLOUT)
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
        for tenant in ["pulse-t1", "pulse-pre-rollout", "pulse-t1.pre"] {
            assert!(!is_pre_rollout(tenant), "{tenant}");
            assert!(!is_drill(tenant), "{tenant}");
        }
        let drill = drill("t1", &run);
        assert_eq!(drill, "slipway-drill-20261122T030000Z-7f3a-t1");
        assert!(is_drill(&drill) && !is_pre_rollout(&drill));
    }
}
