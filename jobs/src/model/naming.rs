//! The names slipway gives the containers it sets aside: during a rollout a tenant's prior
//! container is renamed `<name>.pre-rollout-<run_id>` until the new one is healthy, and the
//! new one is created before the stop as `<name>.next-<run_id>` until the switch. The rules
//! are spelled here once; rollout builds such names, and the Docker adapter uses
//! [`is_set_aside`] to leave them out of an app's tenants.

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
        }
        let staged = staged("pulse-t1", &run);
        assert_eq!(staged, "pulse-t1.next-20261122T030000Z-7f3a");
        assert!(is_set_aside(&staged) && is_set_aside(&aside) && !is_pre_rollout(&staged));
    }
}
