//! `[app.hooks]` of `fleet.toml`: commands a rollout runs for each tenant in a one-shot
//! container with the tenant's mounts, env and networks: `pre_switch` (the new image), run once
//! the tenant is stopped and its data copied (its snapshot taken) and before the new version is
//! switched in — the place for numbered migrations; `post_switch` (the new image), once the new
//! version passed its health gate — a smoke test, a cache warm-up; `on_failure` (the prior
//! image), once a failed tenant was put back — a cleanup, a page. A migration that ran is
//! undone with the tenant's data when the tenant is undone.
//!
//! The exit codes, one table for `pre_switch` and `post_switch`: 0 the tenant goes on; 75
//! (`EX_TEMPFAIL`) skip this tenant: it is put back as it was (data, prior container) and does
//! not count as failed; anything else, a signal or the timeout fails the tenant, which is undone
//! with its data. `on_failure`'s exit is only reported: the tenant is already back.

use serde::{Deserialize, Serialize};

/// The exit code by which a hook skips its tenant.
pub const HOOK_SKIP: i64 = 75;

/// One hook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HookSpec {
    /// The command (the container's `Cmd`; the image's entrypoint runs it unless
    /// `entrypoint` is given).
    pub command: Vec<String>,
    /// An entrypoint instead of the image's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// Seconds it may run; then it is killed and the tenant fails.
    pub timeout_s: u64,
}

/// `[app.hooks]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Hooks {
    /// Before the switch, the tenant stopped and its data copied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pre_switch: Option<HookSpec>,
    /// After the new version's health gate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub post_switch: Option<HookSpec>,
    /// After a failed tenant was put back (the prior image).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<HookSpec>,
}

/// The default `timeout_s`: five minutes.
pub const DEFAULT_HOOK_TIMEOUT_S: u64 = 300;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHooks {
    pre_switch: Option<RawHook>,
    post_switch: Option<RawHook>,
    on_failure: Option<RawHook>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHook {
    command: Option<Vec<String>>,
    entrypoint: Option<Vec<String>>,
    timeout_s: Option<u64>,
}

impl RawHooks {
    pub(crate) fn validate(self) -> Result<Hooks, String> {
        let hook = |key: &str, h: Option<RawHook>| -> Result<Option<HookSpec>, String> {
            let Some(h) = h else { return Ok(None) };
            let command = h.command.filter(|c| !c.is_empty() && !c[0].trim().is_empty()).ok_or_else(|| {
                format!("hooks.{key}.command: give the command as a list, e.g. command = [\"/app/migrate\", \"up\"]")
            })?;
            if h.entrypoint.as_ref().is_some_and(|e| e.is_empty()) {
                return Err(format!("hooks.{key}.entrypoint = []: leave it out to keep the image's entrypoint"));
            }
            let timeout_s = match h.timeout_s {
                Some(0) => return Err(format!("hooks.{key}.timeout_s = 0: give the seconds it may run, e.g. 300")),
                t => t.unwrap_or(DEFAULT_HOOK_TIMEOUT_S),
            };
            Ok(Some(HookSpec { command, entrypoint: h.entrypoint, timeout_s }))
        };
        Ok(Hooks {
            pre_switch: hook("pre_switch", self.pre_switch)?,
            post_switch: hook("post_switch", self.post_switch)?,
            on_failure: hook("on_failure", self.on_failure)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hook_needs_a_command_and_a_timeout_above_zero() {
        let parse = |t: &str| toml::from_str::<RawHooks>(t).map_err(|e| e.to_string()).and_then(|r| r.validate());
        let h = parse("[pre_switch]\ncommand = [\"/app/migrate\", \"up\"]\n").unwrap();
        assert_eq!(h.pre_switch.as_ref().map(|p| (p.command.len(), p.timeout_s)), Some((2, DEFAULT_HOOK_TIMEOUT_S)));
        for (text, want) in [
            ("[pre_switch]\ncommand = []", "hooks.pre_switch.command"),
            ("[pre_switch]\ntimeout_s = 5", "hooks.pre_switch.command"),
            ("[pre_switch]\ncommand = [\"x\"]\ntimeout_s = 0", "timeout_s = 0"),
            ("[pre_switch]\ncommand = [\"x\"]\nentrypoint = []", "entrypoint = []"),
            ("[post_switch]\ncommand = []", "hooks.post_switch.command"),
            ("[on_failure]\ncommand = [\"x\"]\ntimeout_s = 0", "hooks.on_failure.timeout_s"),
            ("[pre_swich]\ncommand = [\"x\"]", "pre_swich"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
        assert_eq!(parse("").unwrap(), Hooks::default());
    }
}
