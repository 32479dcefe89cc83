//! GitOps trust: whether a desired-state commit may be deployed at all, decided before a
//! rollout plans, pulls or touches anything. Three rules, all from the host config (never from
//! git, which is what they guard):
//! - `[desired] allowed_images`: every pinned image's repository is on the list (exact, or
//!   under a `prefix/*`), registry names normalised (`docker.io/library/x` = `x`).
//! - `[desired] require_signed`: the commit carries a valid SSH signature by a key in
//!   `allowed_signers` (checked by the desired adapter).
//! - No rewind: the commit is the one each app last deployed or descends from it, so a
//!   force-push back to an old, vulnerable pin is refused unless a person passes
//!   `--allow-rewind`. A revert commit is a descendant, so it is fine.
//!
//! A refusal is an [`Error::Config`] (exit 2) naming the app, image, commit or signer and the
//! host-config key, and is recorded as a `refused` run, which `status` shows.

use serde::Serialize;

use crate::adapters::desired::{self, DesiredState, Signature};
use crate::context::Ctx;
use crate::error::{Error, Result};

/// Why one app's image was admitted.
#[derive(Debug, Clone, Serialize)]
pub struct AdmittedImage {
    /// App.
    pub app: String,
    /// The pinned image.
    pub image: String,
    /// The `allowed_images` entry that admitted it, or `any` when no list is set.
    pub rule: String,
}

/// What admitted a desired-state commit.
#[derive(Debug, Clone, Serialize)]
pub struct Admission {
    /// The commit.
    pub commit: String,
    /// Its signature, as checked.
    pub signature: Signature,
    /// Per app, the rule that admitted its image.
    pub images: Vec<AdmittedImage>,
}

/// A repository name as the engine resolves it: `docker.io/library/x`, `index.docker.io/x`
/// and `x` are one repository.
pub fn normalise_repo(repo: &str) -> String {
    let repo = repo.trim().to_ascii_lowercase();
    let (host, rest) = match repo.split_once('/') {
        Some((h, r)) if h.contains('.') || h.contains(':') || h == "localhost" => (h.to_string(), r.to_string()),
        _ => ("docker.io".to_string(), repo.clone()),
    };
    let host = if host == "index.docker.io" || host == "registry-1.docker.io" { "docker.io".to_string() } else { host };
    let rest = if host == "docker.io" && !rest.contains('/') { format!("library/{rest}") } else { rest };
    format!("{host}/{rest}")
}

/// The `allowed_images` entry that admits `repo`, if any.
pub fn admitting_rule<'a>(allowed: &'a [String], repo: &str) -> Option<&'a str> {
    let want = normalise_repo(repo);
    allowed.iter().map(String::as_str).find(|rule| match rule.strip_suffix("/*") {
        Some(prefix) => {
            let p = normalise_repo(&format!("{prefix}/x"));
            want.starts_with(p.strip_suffix('x').unwrap_or(&p))
        }
        None => normalise_repo(rule) == want,
    })
}

fn refuse(ctx: &Ctx, state: &DesiredState, app: Option<&str>, why: String) -> Error {
    // The refusal is a run of its own in the record, so `runs` and `status` show it.
    ctx.record_refused("rollout", app, &state.commit, &why);
    Error::Config(why)
}

/// Admit `state` for deployment by `ctx`'s host config, or refuse it (see the module docs).
/// `apps` are the apps about to be rolled (all of the fleet when empty).
pub fn admit(ctx: &Ctx, state: &DesiredState, apps: &[&str], allow_rewind: bool) -> Result<Admission> {
    let cfg = &ctx.cfg.desired;
    let short = &state.commit[..state.commit.len().min(12)];
    if cfg.require_signed && !matches!(state.signature, Signature::Valid { .. }) {
        let why = format!(
            "refused: commit {short} of {} is {}; [desired] require_signed = true in the host config deploys only \
             commits signed by a key in {}; nothing was pulled or changed",
            cfg.repo,
            state.signature,
            cfg.allowed_signers.as_ref().map_or("allowed_signers".into(), |p| p.display().to_string()),
        );
        return Err(refuse(ctx, state, None, why));
    }
    let mut images = Vec::new();
    for app in state.fleet.apps.iter().filter(|a| apps.is_empty() || apps.contains(&a.name.as_str())) {
        let pins: Vec<&crate::types::PinnedImage> = match &app.stack {
            None => vec![&app.image],
            Some(st) => st.services.iter().map(|s| &s.image).collect(),
        };
        let mut rule = String::new();
        for image in pins {
            let repo = image.repo();
            rule = match &cfg.allowed_images {
                None => "any".to_string(),
                Some(list) => match admitting_rule(list, repo) {
                    Some(r) => r.to_string(),
                    None => {
                        let why = format!(
                            "refused: app {} pins image {}, whose repository {} is not in [desired] allowed_images of \
                             the host config ({}); add it there or pin an allowed image; nothing was pulled or changed",
                            app.name,
                            image.reference(),
                            normalise_repo(repo),
                            list.join(", ")
                        );
                        return Err(refuse(ctx, state, Some(&app.name), why));
                    }
                },
            };
        }
        if !allow_rewind {
            if let Some(last) = ctx.store.last_deployed_commit(&app.name)? {
                if !desired::descends_from(cfg, &ctx.cfg.state_dir, &last, &state.commit)? {
                    let why = format!(
                        "refused: commit {short} is not a descendant of {}, which app {} last deployed (a force-push \
                         back in history?); revert with a new commit, or a person can pass --allow-rewind; nothing \
                         was pulled or changed",
                        &last[..last.len().min(12)],
                        app.name
                    );
                    return Err(refuse(ctx, state, Some(&app.name), why));
                }
            }
        }
        images.push(AdmittedImage { app: app.name.clone(), image: app.image.reference(), rule });
    }
    Ok(Admission { commit: state.commit.clone(), signature: state.signature.clone(), images })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_names_are_normalised_and_prefix_rules_match_below_them() {
        assert_eq!(normalise_repo("nginx"), "docker.io/library/nginx");
        assert_eq!(normalise_repo("docker.io/library/nginx"), "docker.io/library/nginx");
        assert_eq!(normalise_repo("index.docker.io/library/nginx"), "docker.io/library/nginx");
        assert_eq!(normalise_repo("example/pulse"), "docker.io/example/pulse");
        assert_eq!(normalise_repo("127.0.0.1:5000/app"), "127.0.0.1:5000/app");
        let allowed =
            vec!["ghcr.io/example/pulse".to_string(), "registry.example.com/team/*".to_string(), "nginx".into()];
        assert_eq!(admitting_rule(&allowed, "ghcr.io/example/pulse"), Some("ghcr.io/example/pulse"));
        assert_eq!(admitting_rule(&allowed, "ghcr.io/example/pulse-evil"), None);
        assert_eq!(admitting_rule(&allowed, "registry.example.com/team/a/b"), Some("registry.example.com/team/*"));
        assert_eq!(admitting_rule(&allowed, "registry.example.com/teamevil/a"), None);
        assert_eq!(admitting_rule(&allowed, "docker.io/library/nginx"), Some("nginx"));
        assert_eq!(admitting_rule(&allowed, "ghcr.io/other/pulse"), None);
    }
}
