//! Desired state from git: open or fetch the desired-state repo (a local path, `file://`,
//! `https://` or `ssh://` URL), resolve a branch or ref to a commit, and read `fleet.toml`
//! from that commit's tree — never from a work tree, so uncommitted edits are never deployed.
//! Remote repos are mirrored into `<state_dir>/desired.git` and fetched on every read.
//!
//! When `[desired] allowed_signers` is set, the commit's SSH signature (git's `gpgsig` header,
//! an `-----BEGIN SSH SIGNATURE-----` block in namespace `git`, as `git commit -S` with
//! `gpg.format=ssh` writes it) is verified in-process against that OpenSSH allowed-signers
//! file; the result travels with the state. Whether an unsigned commit may be deployed is the
//! jobs' decision (`trust`), not this adapter's.

use std::path::Path;

use git2::{FetchOptions, Oid, RemoteCallbacks, Repository};
use serde::Serialize;

use crate::config::{DesiredConfig, Fleet};
use crate::error::{Error, Result};

/// The fleet as pinned by one commit.
#[derive(Debug, Clone)]
pub struct DesiredState {
    /// Full commit id.
    pub commit: String,
    /// The parsed fleet.
    pub fleet: Fleet,
    /// The commit's signature, as checked against `[desired] allowed_signers`.
    pub signature: Signature,
}

/// What the commit's signature says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Signature {
    /// No `allowed_signers` configured: not checked.
    NotChecked,
    /// The commit carries no signature.
    Unsigned,
    /// A valid SSH signature by a listed key.
    Valid {
        /// The principal(s) the allowed-signers file names for the key.
        principal: String,
        /// The key's SHA256 fingerprint.
        fingerprint: String,
    },
    /// Signed, but not acceptably: unknown key, bad signature, wrong namespace or format.
    Invalid {
        /// Why, naming the key where there is one.
        why: String,
    },
}

impl std::fmt::Display for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Signature::NotChecked => f.write_str("not checked (no [desired] allowed_signers)"),
            Signature::Unsigned => f.write_str("unsigned"),
            Signature::Valid { principal, fingerprint } => write!(f, "signed by {principal} ({fingerprint})"),
            Signature::Invalid { why } => write!(f, "not validly signed: {why}"),
        }
    }
}

/// One usable line of an allowed-signers file.
struct AllowedSigner {
    principals: String,
    key: ssh_key::PublicKey,
}

const KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// Parse an OpenSSH allowed-signers file: `principals [options] keytype base64 [comment]`.
/// Lines whose `namespaces=` leave out `git` are skipped; `cert-authority` and validity
/// windows (`valid-after`, `valid-before`) are not supported, so such lines are refused by
/// name rather than half-honoured.
fn allowed_signers(path: &Path) -> Result<Vec<AllowedSigner>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::Config(format!(
            "{}: cannot read the allowed-signers file ([desired] allowed_signers): {e}",
            path.display()
        ))
    })?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: &str| Error::Config(format!("{}:{}: {why}", path.display(), n + 1));
        let mut words = line.split_whitespace();
        let principals = words.next().unwrap_or_default().to_string();
        let mut next = words.next().ok_or_else(|| bad("no key after the principals"))?;
        if !KEY_TYPES.contains(&next) {
            let options = next.to_ascii_lowercase();
            if options.contains("cert-authority") || options.contains("valid-after") || options.contains("valid-before")
            {
                return Err(bad(
                    "cert-authority and valid-after/valid-before are not supported by slipway; list plain keys",
                ));
            }
            if let Some(ns) = options.split("namespaces=\"").nth(1) {
                let ns = ns.split('"').next().unwrap_or_default();
                if !ns.split(',').any(|n| n.trim() == "git") {
                    continue;
                }
            }
            next = words.next().ok_or_else(|| bad("no key after the options"))?;
        }
        let b64 = words.next().ok_or_else(|| bad("the key has no base64 part"))?;
        let key = ssh_key::PublicKey::from_openssh(&format!("{next} {b64}"))
            .map_err(|e| bad(&format!("not an OpenSSH public key: {e}")))?;
        out.push(AllowedSigner { principals, key });
    }
    Ok(out)
}

/// Check `commit`'s SSH signature against the allowed-signers file.
fn check_signature(repo: &Repository, commit: Oid, signers_file: &Path) -> Result<Signature> {
    let signers = allowed_signers(signers_file)?;
    let (sig, data) = match repo.extract_signature(&commit, Some("gpgsig")) {
        Ok(x) => x,
        Err(e) if e.code() == git2::ErrorCode::NotFound => return Ok(Signature::Unsigned),
        Err(e) => return Ok(Signature::Invalid { why: format!("cannot read the signature: {}", e.message()) }),
    };
    let invalid = |why: String| Ok(Signature::Invalid { why });
    let Ok(text) = std::str::from_utf8(&sig) else { return invalid("the signature is not text".into()) };
    if !text.trim_start().starts_with("-----BEGIN SSH SIGNATURE-----") {
        return invalid("not an SSH signature (OpenPGP signatures are not supported; sign with gpg.format=ssh)".into());
    }
    let sshsig = match ssh_key::SshSig::from_pem(text.trim()) {
        Ok(s) => s,
        Err(e) => return invalid(format!("malformed SSH signature: {e}")),
    };
    let fingerprint = ssh_key::PublicKey::from(sshsig.public_key().clone()).fingerprint(ssh_key::HashAlg::Sha256);
    if sshsig.namespace() != "git" {
        return invalid(format!("signature namespace is \"{}\", not \"git\"", sshsig.namespace()));
    }
    let Some(signer) = signers.iter().find(|s| s.key.key_data() == sshsig.public_key()) else {
        return invalid(format!("signed by key {fingerprint}, which {} does not list", signers_file.display()));
    };
    match signer.key.verify("git", &data, &sshsig) {
        Ok(()) => Ok(Signature::Valid { principal: signer.principals.clone(), fingerprint: fingerprint.to_string() }),
        Err(_) => {
            invalid(format!("bad signature by key {fingerprint} ({}): the commit was altered", signer.principals))
        }
    }
}

/// Whether `commit` is `ancestor` or descends from it, in the desired-state repo as last read
/// (no fetch). An `ancestor` the repo does not know is not an ancestor.
pub fn descends_from(cfg: &DesiredConfig, state_dir: &Path, ancestor: &str, commit: &str) -> Result<bool> {
    let repo = if is_url(&cfg.repo) {
        Repository::open_bare(state_dir.join("desired.git"))
            .map_err(|e| gerr(cfg, "cannot open the local mirror", e))?
    } else {
        Repository::open(&cfg.repo).map_err(|e| gerr(cfg, "cannot open the repository", e))?
    };
    let (Ok(a), Ok(c)) = (Oid::from_str(ancestor), Oid::from_str(commit)) else { return Ok(false) };
    if a == c {
        return Ok(true);
    }
    if repo.find_commit(a).is_err() {
        return Ok(false);
    }
    repo.graph_descendant_of(c, a).map_err(|e| gerr(cfg, "cannot compare commits", e))
}

fn gerr(cfg: &DesiredConfig, what: &str, e: git2::Error) -> Error {
    Error::Git(format!("{} ({}): {what}: {}", cfg.repo, cfg.branch, e.message()))
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
            Error::Git(format!("{}: no branch, tag or commit \"{wanted}\"; check [desired] branch or --ref", cfg.repo))
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
    let signature = match &cfg.allowed_signers {
        Some(file) => check_signature(&repo, commit.id(), file)?,
        None => Signature::NotChecked,
    };
    Ok(DesiredState { commit: id, fleet, signature })
}
