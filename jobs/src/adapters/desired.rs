//! Desired state from git: open or fetch the desired-state repo (a local path, `file://`,
//! `https://` or `ssh://` URL), resolve a branch or ref to a commit, and read `fleet.toml`
//! from that commit's tree — never from a work tree, so uncommitted edits are never deployed.
//! Remote repos are mirrored into `<state_dir>/desired.git` and fetched on every read.

use std::path::Path;

use git2::{FetchOptions, RemoteCallbacks, Repository};

use crate::config::{DesiredConfig, Fleet};
use crate::error::{Error, Result};

/// The fleet as pinned by one commit.
#[derive(Debug, Clone)]
pub struct DesiredState {
    /// Full commit id.
    pub commit: String,
    /// The parsed fleet.
    pub fleet: Fleet,
}

fn gerr(cfg: &DesiredConfig, what: &str, e: git2::Error) -> Error {
    Error::Git { repo: cfg.repo.clone(), git_ref: cfg.branch.clone(), op: what.to_string(), source: Some(e) }
}

fn is_url(repo: &str) -> bool {
    repo.contains("://") || (repo.contains('@') && repo.contains(':') && !repo.starts_with('/'))
}

/// Open the desired-state repo, fetching it first when it is a URL.
fn open(cfg: &DesiredConfig, state_dir: &Path) -> Result<(Repository, bool)> {
    if !is_url(&cfg.repo) {
        let repo = Repository::open(&cfg.repo).map_err(|e| gerr(cfg, "cannot open the repository", e))?;
        return Ok((repo, false));
    }
    let mirror = state_dir.join("desired.git");
    let repo = match Repository::open_bare(&mirror) {
        Ok(r) => r,
        Err(_) => {
            crate::fsutil::create_private_dir(state_dir).map_err(|e| Error::io(state_dir, e))?;
            Repository::init_bare(&mirror).map_err(|e| gerr(cfg, "cannot create the local mirror", e))?
        }
    };
    {
        let mut remote = repo.remote_anonymous(&cfg.repo).map_err(|e| gerr(cfg, "bad remote URL", e))?;
        let mut cb = RemoteCallbacks::new();
        cb.credentials(|url, user, allowed| {
            if allowed.contains(git2::CredentialType::SSH_KEY) {
                git2::Cred::ssh_key_from_agent(user.unwrap_or("git"))
            } else {
                git2::Config::open_default().and_then(|c| git2::Cred::credential_helper(&c, url, user))
            }
        });
        let mut fo = FetchOptions::new();
        fo.remote_callbacks(cb);
        remote
            .fetch(&["+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*"], Some(&mut fo), None)
            .map_err(|e| gerr(cfg, "fetch failed", e))?;
    }
    Ok((repo, true))
}

/// Read the fleet at `git_ref` (default: the configured branch).
pub fn read(cfg: &DesiredConfig, state_dir: &Path, git_ref: Option<&str>) -> Result<DesiredState> {
    let (repo, mirrored) = open(cfg, state_dir)?;
    let wanted = git_ref.unwrap_or(&cfg.branch);
    let mut candidates = Vec::new();
    if mirrored {
        candidates.push(format!("refs/remotes/origin/{wanted}"));
    } else {
        candidates.push(format!("refs/heads/{wanted}"));
    }
    candidates.push(wanted.to_string());
    let commit = candidates
        .iter()
        .find_map(|c| repo.revparse_single(c).ok().and_then(|o| o.peel_to_commit().ok()))
        .ok_or_else(|| {
            let op = format!("no branch, tag or commit \"{wanted}\"; check [desired] branch or --ref");
            Error::Git { repo: cfg.repo.clone(), git_ref: wanted.to_string(), op, source: None }
        })?;
    let id = commit.id().to_string();
    let tree = commit.tree().map_err(|e| gerr(cfg, "cannot read the commit's tree", e))?;
    let entry = tree.get_path(Path::new(&cfg.file)).map_err(|_| {
        Error::Config(format!(
            "{}: commit {} has no file \"{}\"; commit it or set [desired] file",
            cfg.repo,
            &id[..12],
            cfg.file
        ))
    })?;
    let blob = entry
        .to_object(&repo)
        .and_then(|o| o.peel_to_blob())
        .map_err(|e| gerr(cfg, &format!("cannot read {}", cfg.file), e))?;
    let text = std::str::from_utf8(blob.content())
        .map_err(|_| Error::Config(format!("{} at commit {}: {} is not UTF-8 text", cfg.repo, &id[..12], cfg.file)))?;
    let fleet = Fleet::parse(text, &format!("{} (commit {} of {})", cfg.file, &id[..12], cfg.repo))?;
    Ok(DesiredState { commit: id, fleet })
}
