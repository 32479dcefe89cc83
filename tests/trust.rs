//! GitOps trust against real git repos with real `ssh-keygen`-signed commits: only signed
//! commits by an allowed key, only allowed images, never an older history without a person.

use std::path::PathBuf;
use std::process::Command;

use crate::support::reports::Rollout;
use crate::support::{sh, Sandbox};

/// A throw-away ed25519 key; (private key path, `allowed_signers` line).
fn keypair(s: &Sandbox, name: &str) -> (PathBuf, String) {
    let key = s.root().join(name);
    sh(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"]).arg(&key));
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let mut words = public.split_whitespace();
    let line = format!("{name}@example.test namespaces=\"git\" {} {}\n", words.next().unwrap(), words.next().unwrap());
    (key, line)
}

fn require_signed(s: &Sandbox, signers: &str) -> PathBuf {
    let file = s.root().join("allowed_signers");
    std::fs::write(&file, signers).unwrap();
    let cfg = std::fs::read_to_string(s.config_path()).unwrap();
    let cfg = cfg.replace(
        "branch = \"main\"\n",
        &format!("branch = \"main\"\nrequire_signed = true\nallowed_signers = \"{}\"\n", file.display()),
    );
    std::fs::write(s.config_path(), cfg).unwrap();
    file
}

fn id_of(s: &Sandbox, name: &str) -> serde_json::Value {
    s.inspect(name)["Id"].clone()
}

#[test]
fn only_commits_signed_by_an_allowed_key_roll_and_the_signer_is_named() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let v2 = s.push_fixture_as("v2", "app");
    let name = s.add_tenant("t1", &v1);
    let (alice, alice_line) = keypair(&s, "alice");
    let (mallory, _) = keypair(&s, "mallory");
    require_signed(&s, &alice_line);
    let before = id_of(&s, &name);
    // Unsigned: refused, exit 2, nothing touched, and status says so.
    s.write_fleet(&s.fleet_app(&v2, ""));
    let out = s.slipway(&["rollout", "--json"]);
    assert_eq!(out.code, 2, "{} {}", out.stdout, out.stderr);
    assert!(out.stderr.contains("unsigned") && out.stderr.contains("require_signed"), "{}", out.stderr);
    assert_eq!(id_of(&s, &name), before);
    let st = s.slipway(&["status", "--json"]);
    assert!(st.stdout.contains("refused"), "{}", st.stdout);
    // Signed by a key the allowed-signers file does not list: refused, the key named.
    s.write_fleet_signed(&s.fleet_app(&v2, ""), &mallory);
    let out = s.slipway(&["reconcile"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("SHA256:") && out.stderr.contains("does not list"), "{}", out.stderr);
    assert_eq!(id_of(&s, &name), before);
    // Signed by alice: rolls, and the report names the signer.
    let commit = s.write_fleet_signed(&s.fleet_app(&v2, ""), &alice);
    let check = s.slipway(&["config", "check"]);
    assert!(check.stdout.contains("signed by alice@example.test"), "{}", check.stdout);
    let out = s.slipway(&["rollout", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let trust = out.report::<Rollout>().trust.unwrap();
    assert_eq!(trust.commit, commit);
    assert_eq!(trust.signature.state, "valid");
    assert_eq!(trust.signature.principal.as_deref(), Some("alice@example.test"));
    assert_eq!(s.image_of(&name), v2);
}

#[test]
fn a_tampered_signed_commit_is_refused() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let v2 = s.push_fixture_as("v2", "app");
    let name = s.add_tenant("t1", &v1);
    let (alice, line) = keypair(&s, "alice");
    require_signed(&s, &line);
    s.write_fleet_signed(&s.fleet_app(&v1, ""), &alice);
    // The same signed commit object with another pin in its tree: the signature no longer covers it.
    s.write_fleet_signed(&s.fleet_app(&v2, ""), &alice);
    let tree_v2 = s.fleet_git(&["rev-parse", "HEAD^{tree}"]);
    let raw = s.fleet_git(&["cat-file", "commit", "HEAD~1"]);
    let forged_text = raw
        .lines()
        .map(|l| if let Some(_t) = l.strip_prefix("tree ") { format!("tree {tree_v2}") } else { l.to_string() })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    let tmp = s.root().join("forged");
    std::fs::write(&tmp, forged_text).unwrap();
    let forged = s.fleet_git(&["hash-object", "-t", "commit", "-w", tmp.to_str().unwrap()]);
    s.fleet_git(&["push", "-q", "-f", s.root().join("fleet.git").to_str().unwrap(), &format!("{forged}:main")]);
    let before = id_of(&s, &name);
    let out = s.slipway(&["rollout"]);
    assert_eq!(out.code, 2, "{} {}", out.stdout, out.stderr);
    assert!(out.stderr.contains("bad signature"), "{}", out.stderr);
    assert_eq!(id_of(&s, &name), before);
    assert_eq!(s.image_of(&name), v1);
}

#[test]
fn an_image_outside_the_allow_list_is_refused_before_anything_is_pulled() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let foreign = s.push_fixture_as("v2", "elsewhere");
    let name = s.add_tenant("t1", &v1);
    let allowed = v1.split('@').next().unwrap().to_string();
    let cfg = std::fs::read_to_string(s.config_path()).unwrap();
    std::fs::write(
        s.config_path(),
        cfg.replace("branch = \"main\"\n", &format!("branch = \"main\"\nallowed_images = [\"{allowed}\"]\n")),
    )
    .unwrap();
    // The foreign image is not in the engine before the rollout, so a pull would show.
    let _ = Command::new("docker").args(["rmi", &foreign]).output();
    s.write_fleet(&s.fleet_app(&foreign, ""));
    let out = s.slipway(&["rollout"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("allowed_images") && out.stderr.contains("app app"), "{}", out.stderr);
    assert_eq!(s.image_of(&name), v1);
    let pulled = Command::new("docker").args(["image", "inspect", &foreign]).output().unwrap();
    assert!(!pulled.status.success(), "the refused image was pulled");
    // An allowed image rolls and the rule that admitted it is in the report.
    let v2 = s.push_fixture_as("v2", "app");
    s.write_fleet(&s.fleet_app(&v2, ""));
    let out = s.slipway(&["rollout", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.report::<Rollout>().trust.unwrap().images[0].rule, allowed);
}

#[test]
fn a_force_push_back_to_older_history_is_refused_until_a_person_allows_the_rewind() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let v2 = s.push_fixture_as("v2", "app");
    let name = s.add_tenant("t1", &v1);
    let old = s.write_fleet(&s.fleet_app(&v1, ""));
    s.write_fleet(&s.fleet_app(&v2, ""));
    assert_eq!(s.slipway(&["reconcile"]).code, 0);
    assert_eq!(s.image_of(&name), v2);
    // Someone force-pushes main back to the old pin.
    s.fleet_git(&["push", "-q", "-f", s.root().join("fleet.git").to_str().unwrap(), &format!("{old}:main")]);
    let out = s.slipway(&["reconcile"]);
    assert_eq!(out.code, 2, "{} {}", out.stdout, out.stderr);
    assert!(out.stderr.contains("not a descendant") && out.stderr.contains("--allow-rewind"), "{}", out.stderr);
    assert_eq!(s.image_of(&name), v2);
    let out = s.slipway(&["reconcile", "--allow-rewind"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(s.image_of(&name), v1);
    // A revert is a new commit on top: fine without any flag.
    s.write_fleet(&s.fleet_app(&v2, ""));
    assert_eq!(s.slipway(&["reconcile"]).code, 0);
    s.write_fleet(&s.fleet_app(&v1, ""));
    assert_eq!(s.slipway(&["reconcile"]).code, 0, "a revert commit must roll");
    assert_eq!(s.image_of(&name), v1);
}

/// Point the host config's `[desired]` at `repo`, with extra `[desired]` keys.
fn desired_at(s: &Sandbox, repo: &str, extra: &str) {
    let cfg = std::fs::read_to_string(s.config_path()).unwrap();
    let old = format!("repo = \"{}\"\n", s.root().join("fleet.git").display());
    assert!(cfg.contains(&old), "{cfg}");
    std::fs::write(s.config_path(), cfg.replace(&old, &format!("repo = \"{repo}\"\n{extra}"))).unwrap();
}

fn private(path: &std::path::Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[test]
fn the_desired_repo_is_fetched_over_http_with_a_token_that_appears_nowhere() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    s.add_tenant("t1", &v1);
    let commit = s.write_fleet(&s.fleet_app(&v1, ""));
    let token = "tok-SECRET-4711";
    let server = crate::support::gitserve::GitHttp::start(s.root(), "deploy", token);
    let creds = s.root().join("git-credentials");
    private(&creds, &format!("deploy:{token}\n"));
    desired_at(&s, &format!("{}/fleet.git", server.base), &format!("credentials_file = \"{}\"\n", creds.display()));
    let out = s.slipway(&["rollout", "--dry-run", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert_eq!(out.report::<Rollout>().commit, commit);
    // A wrong token: a clear error, and neither token is shown or recorded.
    private(&creds, "deploy:tok-WRONG-0815\n");
    let bad = s.slipway(&["rollout", "--dry-run", "--json"]);
    assert_ne!(bad.code, 0, "{}", bad.stdout);
    assert!(bad.stderr.contains("fetch failed") || bad.stderr.contains("authentication"), "{}", bad.stderr);
    // A credentials file others can read is refused.
    std::fs::write(&creds, format!("deploy:{token}\n")).unwrap();
    std::fs::set_permissions(&creds, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let open = s.slipway(&["rollout", "--dry-run"]);
    assert_eq!(open.code, 2, "{}", open.stderr);
    assert!(open.stderr.contains("chmod 600"), "{}", open.stderr);
    let db = std::fs::read(s.state().join("state.db")).unwrap_or_default();
    for (what, text) in [("stdout", out.stdout.as_bytes()), ("stderr", bad.stderr.as_bytes()), ("state.db", &db[..])] {
        for secret in [token, "tok-WRONG-0815"] {
            assert!(!text.windows(secret.len()).any(|w| w == secret.as_bytes()), "{secret} leaked into {what}");
        }
    }
}

#[test]
fn the_desired_repo_is_fetched_over_ssh_only_from_a_known_host_with_the_configured_key() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    s.add_tenant("t1", &v1);
    let commit = s.write_fleet(&s.fleet_app(&v1, ""));
    let server = crate::support::gitserve::GitSsh::start(&s.root().join("sshd"));
    let url = format!("ssh://root@127.0.0.1:{}{}", server.port, s.root().join("fleet.git").display());
    let keys = |known: &std::path::Path, key: &std::path::Path| {
        format!("ssh_key = \"{}\"\nknown_hosts = \"{}\"\n", key.display(), known.display())
    };
    desired_at(&s, &url, &keys(&server.known_hosts, &server.client_key));
    let out = s.slipway(&["rollout", "--dry-run", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert_eq!(out.report::<Rollout>().commit, commit);
    // A host whose key is not the one known: refused before any credential is offered.
    let other = s.root().join("other_known_hosts");
    let (_, line) = keypair(&s, "impostor");
    let key_part: Vec<&str> = line.split_whitespace().skip(2).collect();
    std::fs::write(&other, format!("[127.0.0.1]:{} {}\n", server.port, key_part.join(" "))).unwrap();
    let cfg = std::fs::read_to_string(s.config_path()).unwrap();
    std::fs::write(
        s.config_path(),
        cfg.replace(&server.known_hosts.display().to_string(), &other.display().to_string()),
    )
    .unwrap();
    let refused = s.slipway(&["rollout", "--dry-run"]);
    assert_ne!(refused.code, 0, "{}", refused.stdout);
    assert!(refused.stderr.contains("host key"), "{}", refused.stderr);
    // The right host, a key the server does not authorize: fails.
    std::fs::write(s.config_path(), cfg).unwrap();
    let (stranger, _) = keypair(&s, "stranger");
    let cfg = std::fs::read_to_string(s.config_path()).unwrap();
    std::fs::write(
        s.config_path(),
        cfg.replace(&server.client_key.display().to_string(), &stranger.display().to_string()),
    )
    .unwrap();
    let denied = s.slipway(&["rollout", "--dry-run"]);
    assert_ne!(denied.code, 0, "{}", denied.stdout);
}
