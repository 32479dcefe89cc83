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
    Error::Git { repo: redact(&cfg.repo), git_ref: cfg.branch.clone(), op: what.to_string(), source: Some(e) }
}

/// A URL (or a message holding one) without any `user:password@` part (a token may be the user).
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        out.push_str(&rest[..i + 3]);
        rest = &rest[i + 3..];
        let end = rest.find(['/', ' ', '"', '\'']).unwrap_or(rest.len());
        if let Some(at) = rest[..end].rfind('@') {
            out.push_str("***@");
            rest = &rest[at + 1..];
        }
    }
    out.push_str(rest);
    out
}

/// Host and port of an `ssh://user@host:port/path` or scp-like `user@host:path` URL.
fn ssh_host_port(url: &str) -> Option<(String, u16)> {
    let (authority, default_scp) = match url.strip_prefix("ssh://") {
        Some(r) => (r.split('/').next()?, false),
        None => (url.split(':').next()?, true),
    };
    let host_port = authority.rsplit('@').next()?;
    if default_scp {
        return Some((host_port.to_string(), 22));
    }
    if let Some(rest) = host_port.strip_prefix('[') {
        let (h, p) = rest.split_once(']')?;
        return Some((h.to_string(), p.strip_prefix(':').and_then(|p| p.parse().ok()).unwrap_or(22)));
    }
    match host_port.rsplit_once(':') {
        Some((h, p)) => Some((h.to_string(), p.parse().ok()?)),
        None => Some((host_port.to_string(), 22)),
    }
}

/// The host keys `known_hosts` lists for (host, port): `host` or `[host]:port` entries
/// (hashed `|1|` entries and markers such as `@revoked` lines are not matched).
fn known_host_keys(file: &Path, host: &str, port: u16) -> Result<Vec<Vec<u8>>> {
    use base64::Engine as _;
    let text = std::fs::read_to_string(file).map_err(|e| {
        Error::Config(format!("{}: cannot read the known_hosts file ([desired] known_hosts): {e}", file.display()))
    })?;
    let want = if port == 22 { host.to_string() } else { format!("[{host}]:{port}") };
    let mut keys = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('@')) {
        let mut w = line.split_whitespace();
        let (Some(hosts), Some(_kind), Some(b64)) = (w.next(), w.next(), w.next()) else { continue };
        if hosts.split(',').any(|h| h == want) {
            if let Ok(k) = base64::engine::general_purpose::STANDARD.decode(b64) {
                keys.push(k);
            }
        }
    }
    Ok(keys)
}

/// `user:token` (or a bare token, user `x-access-token`) from a credentials file of mode 0600.
fn read_token(file: &Path) -> Result<(String, String)> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(file).map_err(|e| {
        Error::Config(format!(
            "{}: cannot read the git credentials file ([desired] credentials_file): {e}",
            file.display()
        ))
    })?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(Error::Config(format!(
            "{}: the git credentials file must not be readable by others (chmod 600 {})",
            file.display(),
            file.display()
        )));
    }
    let text = std::fs::read_to_string(file).map_err(|e| Error::io(file, e))?;
    let line = text.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#')).unwrap_or_default();
    if line.is_empty() {
        return Err(Error::Config(format!(
            "{}: the git credentials file is empty; put `user:token` in it",
            file.display()
        )));
    }
    Ok(match line.split_once(':') {
        Some((u, t)) => (u.to_string(), t.to_string()),
        None => ("x-access-token".to_string(), line.to_string()),
    })
}

/// Callbacks for fetching: credentials from the host config (a token file for https, a key
/// file or the agent for ssh), each offered once (a wrong one fails instead of looping), and
/// an ssh host key checked against known_hosts.
/// The reason a host key was refused, kept for the error (libgit2 replaces the callback's own).
type Refusal = std::sync::Arc<std::sync::Mutex<Option<String>>>;

fn callbacks(cfg: &DesiredConfig, refusal: Refusal) -> Result<RemoteCallbacks<'static>> {
    let token = cfg.credentials_file.as_deref().map(read_token).transpose()?;
    let ssh_key = cfg.ssh_key.clone();
    let mut tried = 0u32;
    let mut cb = RemoteCallbacks::new();
    cb.credentials(move |url, user, allowed| {
        tried += 1;
        if tried > 3 {
            return Err(git2::Error::from_str("authentication failed with the configured credentials"));
        }
        if allowed.contains(git2::CredentialType::SSH_KEY) {
            let user = user.unwrap_or("git");
            match &ssh_key {
                Some(k) => git2::Cred::ssh_key(user, None, k, None),
                None => git2::Cred::ssh_key_from_agent(user),
            }
        } else if allowed.contains(git2::CredentialType::USERNAME) {
            git2::Cred::username(user.unwrap_or("git"))
        } else if let (true, Some((u, t))) = (allowed.contains(git2::CredentialType::USER_PASS_PLAINTEXT), &token) {
            git2::Cred::userpass_plaintext(u, t)
        } else {
            git2::Config::open_default().and_then(|c| git2::Cred::credential_helper(&c, url, user))
        }
    });
    if let Some((host, port)) = ssh_host_port(&cfg.repo).filter(|_| !cfg.repo.starts_with("http")) {
        let file = cfg.known_hosts.clone().unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".ssh/known_hosts")
        });
        let keys = known_host_keys(&file, &host, port).unwrap_or_default();
        cb.certificate_check(move |cert, _| {
            let Some(hk) = cert.as_hostkey() else { return Ok(git2::CertificateCheckStatus::CertificatePassthrough) };
            // The raw key where libgit2 gives it, else its SHA-256 (what every version gives).
            let known = match (hk.hostkey(), hk.hash_sha256()) {
                (Some(raw), _) => keys.iter().any(|k| k[..] == *raw),
                (None, Some(hash)) => {
                    use sha2::Digest as _;
                    keys.iter().any(|k| sha2::Sha256::digest(k)[..] == hash[..])
                }
                (None, None) => false,
            };
            if known {
                return Ok(git2::CertificateCheckStatus::CertificateOk);
            }
            let why = format!(
                "the host key of {host}:{port} is not in {} (or it changed); check it and add it, e.g. \
                     `ssh-keyscan -p {port} {host} >> {}`",
                file.display(),
                file.display()
            );
            if let Ok(mut r) = refusal.lock() {
                *r = Some(why.clone());
            }
            Err(git2::Error::from_str(&why))
        });
    }
    Ok(cb)
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
        let refusal = Refusal::default();
        let mut fo = FetchOptions::new();
        fo.remote_callbacks(callbacks(cfg, refusal.clone())?);
        remote
            .fetch(&["+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*"], Some(&mut fo), None)
            .map_err(|e| match refusal.lock().ok().and_then(|r| r.clone()) {
                Some(why) => Error::Config(format!("{}: refused: {why}", redact(&cfg.repo))),
                None => gerr(cfg, "fetch failed", e),
            })?;
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
    let signature = match &cfg.allowed_signers {
        Some(file) => check_signature(&repo, commit.id(), file)?,
        None => Signature::NotChecked,
    };
    Ok(DesiredState { commit: id, fleet, signature })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_are_redacted_and_ssh_hosts_parsed() {
        assert_eq!(redact("https://deploy:s3cret@git.example.com/fleet.git"), "https://***@git.example.com/fleet.git");
        assert_eq!(redact("fetch https://t0ken@h/x failed"), "fetch https://***@h/x failed");
        assert_eq!(redact("/srv/fleet.git"), "/srv/fleet.git");
        assert_eq!(ssh_host_port("ssh://git@127.0.0.1:2222/srv/fleet.git"), Some(("127.0.0.1".into(), 2222)));
        assert_eq!(ssh_host_port("ssh://git@example.com/fleet.git"), Some(("example.com".into(), 22)));
        assert_eq!(ssh_host_port("git@example.com:org/fleet.git"), Some(("example.com".into(), 22)));
    }
}
