//! The plain data of a container that the journal keeps and the jobs compare: its restart
//! policy ([`Restart`]) and the settings an operator gave it ([`OperatorSettings`]). Shared
//! model: `adapters::docker` reads them off the engine, the rollout's journal
//! (`step::TenantJournal`) stores them, so they belong to neither (the model names no adapter).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// A container's restart policy, as `docker run --restart` names it (`no`, `always`,
/// `unless-stopped`, `on-failure` with its retry count).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Restart {
    /// The policy's name; empty means `no`.
    pub name: String,
    /// For `on-failure`: how many times to retry.
    pub max_retries: i64,
}

impl Restart {
    /// The policy that never restarts.
    pub fn never() -> Restart {
        Restart { name: "no".into(), max_retries: 0 }
    }

    /// Whether the engine restarts the container by itself under this policy (after a crash
    /// or a daemon restart).
    pub fn restarts(&self) -> bool {
        !matches!(self.name.as_str(), "" | "no")
    }
}

impl std::fmt::Display for Restart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.name.as_str() {
            "on-failure" if self.max_retries > 0 => write!(f, "on-failure:{}", self.max_retries),
            "" => f.write_str("no"),
            n => f.write_str(n),
        }
    }
}

/// Undo and check information kept in the journal about a container.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OperatorSettings {
    /// Container name.
    pub name: String,
    /// Labels the operator set (image labels removed), each value as `sha256:<hex>` of it:
    /// label values can be secrets (Traefik basic-auth labels carry password hashes), and this
    /// is journaled in state.db. Enough to tell a changed value, never the value itself.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Networks and their non-generated aliases.
    pub networks: std::collections::BTreeMap<String, BTreeSet<String>>,
    /// Mounts as `source:destination:rw|ro`.
    pub mounts: BTreeSet<String>,
    /// Env keys the operator set (image env removed).
    pub env_keys: BTreeSet<String>,
}

impl OperatorSettings {
    /// What a container staged from these settings (the engine's `create_staged`) must have before
    /// its switch: all of them, the tenant's aliases included, under the staging name.
    pub fn as_staged(&self, staged_name: &str) -> OperatorSettings {
        OperatorSettings { name: staged_name.to_string(), ..self.clone() }
    }

    /// Aliases `new` answers to that `self` (the old container) did not: a new container that
    /// would answer for another service's name.
    pub fn aliases_added_in(&self, new: &OperatorSettings) -> Vec<String> {
        let none = BTreeSet::new();
        new.networks
            .iter()
            .flat_map(|(net, aliases)| {
                let had = self.networks.get(net).unwrap_or(&none);
                aliases.difference(had).map(move |a| format!("alias {a} on network {net}"))
            })
            .collect()
    }

    /// What `self` (the old container) had that `new` lacks; empty when nothing was lost.
    pub fn lost_in(&self, new: &OperatorSettings) -> Vec<String> {
        let mut lost = Vec::new();
        if self.name != new.name {
            lost.push(format!("name {} became {}", self.name, new.name));
        }
        for (k, v) in &self.labels {
            if new.labels.get(k) != Some(v) {
                // The key only: the value may be a secret (and is only a hash here).
                lost.push(format!("label {k}"));
            }
        }
        for (net, aliases) in &self.networks {
            match new.networks.get(net) {
                None => lost.push(format!("network {net}")),
                Some(a) => lost.extend(aliases.difference(a).map(|x| format!("alias {x} on network {net}"))),
            }
        }
        lost.extend(self.mounts.difference(&new.mounts).map(|m| format!("mount {m}")));
        lost.extend(self.env_keys.difference(&new.env_keys).map(|k| format!("env {k}")));
        lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn a_staged_container_is_checked_for_the_tenants_aliases_exactly() {
        let settings = |aliases: &[&str]| OperatorSettings {
            name: "pulse-t1".into(),
            labels: BTreeMap::new(),
            networks: [("front".to_string(), aliases.iter().map(|a| a.to_string()).collect())].into(),
            mounts: BTreeSet::new(),
            env_keys: BTreeSet::new(),
        };
        let prior = settings(&["t1", "t1-api"]);
        let staged = prior.as_staged("pulse-t1.next-x");
        let on_engine = |aliases: &[&str]| OperatorSettings { name: "pulse-t1.next-x".into(), ..settings(aliases) };
        // (what the staged container has, lost, added)
        let cases: [(&[&str], &[&str], &[&str]); 4] = [
            (&["t1", "t1-api"], &[], &[]),
            (&[], &["alias t1 on network front", "alias t1-api on network front"], &[]),
            (&["t1"], &["alias t1-api on network front"], &[]),
            (&["t1", "t1-api", "db"], &[], &["alias db on network front"]),
        ];
        for (has, lost, added) in cases {
            assert_eq!(staged.lost_in(&on_engine(has)), lost, "{has:?}");
            assert_eq!(staged.aliases_added_in(&on_engine(has)), added, "{has:?}");
        }
    }
}
