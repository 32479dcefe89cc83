//! The remote's credentials: an access key, its secret and an optional session token, found
//! in this order (the first source that names an access key is the one used, whole):
//!
//! 1. `[remote] credentials_file`: an AWS shared-credentials file, profile `default`. When it is
//!    set it is the only source: a missing file or profile is a config error, never a silent
//!    fall-through to other keys.
//! 2. The environment: `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`, with `AWS_SESSION_TOKEN`
//!    when set.
//! 3. The profile `AWS_PROFILE` (else `default`) of the shared-credentials file
//!    `AWS_SHARED_CREDENTIALS_FILE` (else `~/.aws/credentials`).
//!
//! A profile is read for `aws_access_key_id`, `aws_secret_access_key` and `aws_session_token`
//! only: `credential_process`, `role_arn`/`source_profile`, SSO, web identity and the instance
//! metadata service are not supported, nor is `~/.aws/config`. The secret is never put in a
//! message: errors name the file, the profile or the variable, nothing they hold.

use std::path::{Path, PathBuf};

use rusty_s3::Credentials;

use crate::error::{Error, Result};

/// The credentials for a remote whose config names `file` (or none), from the chain above;
/// `var` reads the environment (a parameter so the order can be tested).
pub fn load(file: Option<&Path>, var: impl Fn(&str) -> Option<String>) -> Result<Credentials> {
    let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
    if let Some(file) = file {
        let text = std::fs::read_to_string(file).map_err(|e| {
            Error::Config(format!(
                "remote.credentials_file {}: {e}; it must be an AWS shared-credentials file",
                file.display()
            ))
        })?;
        return from_profile(&text, "default").ok_or_else(|| {
            Error::Config(format!(
                "remote.credentials_file {}: no profile [default] with aws_access_key_id and \
                 aws_secret_access_key",
                file.display()
            ))
        });
    }
    if let (Some(key), Some(secret)) = (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
        return Ok(credentials(key, secret, var("AWS_SESSION_TOKEN")));
    }
    let profile = var("AWS_PROFILE").unwrap_or_else(|| "default".into());
    let shared = var("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|h| Path::new(&h).join(".aws").join("credentials")));
    if let Some(path) = &shared {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                if let Some(c) = from_profile(&text, &profile) {
                    return Ok(c);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::Config(format!("{}: {e}", path.display()))),
        }
    }
    Err(Error::Config(format!(
        "remote: no credentials: set remote.credentials_file, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, \
         or put profile [{profile}] in {}",
        shared.map_or_else(|| "~/.aws/credentials".to_string(), |p| p.display().to_string())
    )))
}

fn credentials(key: String, secret: String, token: Option<String>) -> Credentials {
    match token {
        Some(t) => Credentials::new_with_token(key, secret, t),
        None => Credentials::new(key, secret),
    }
}

/// The keys of `[profile]` in an INI text: `key = value` lines, `#` and `;` comment lines,
/// names compared without case (as the AWS tools do), values trimmed and taken whole.
fn from_profile(text: &str, profile: &str) -> Option<Credentials> {
    let (mut key, mut secret, mut token) = (None, None, None);
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = name.trim() == profile;
            continue;
        }
        let Some((k, v)) = line.split_once('=') else { continue };
        if !inside || v.trim().is_empty() {
            continue;
        }
        let v = Some(v.trim().to_string());
        match k.trim().to_ascii_lowercase().as_str() {
            "aws_access_key_id" => key = v,
            "aws_secret_access_key" => secret = v,
            "aws_session_token" => token = v,
            _ => {}
        }
    }
    Some(credentials(key?, secret?, token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn the_configured_file_wins_over_the_environment_and_is_read_for_its_default_profile() {
        let d = tempfile::tempdir().unwrap();
        let f = write(
            d.path(),
            "creds",
            "# keys\n[other]\naws_access_key_id = O\naws_secret_access_key = o\n\n[ default ]\n\
             AWS_Access_Key_Id=FILEKEY\n  aws_secret_access_key = file/secret+=\n",
        );
        let c = load(Some(&f), env(&[("AWS_ACCESS_KEY_ID", "E"), ("AWS_SECRET_ACCESS_KEY", "e")])).unwrap();
        assert_eq!((c.key(), c.secret(), c.token()), ("FILEKEY", "file/secret+=", None));
    }

    #[test]
    fn a_configured_file_without_the_profile_or_missing_is_a_config_error_without_fallback() {
        let d = tempfile::tempdir().unwrap();
        let f = write(d.path(), "creds", "[other]\naws_access_key_id = O\naws_secret_access_key = SECRETXYZ\n");
        let vars = [("AWS_ACCESS_KEY_ID", "E"), ("AWS_SECRET_ACCESS_KEY", "e")];
        for file in [f.clone(), d.path().join("missing")] {
            let e = load(Some(&file), env(&vars)).unwrap_err();
            assert!(matches!(&e, Error::Config(m) if m.contains(&file.display().to_string())), "{e}");
            assert!(!e.to_string().contains("SECRETXYZ"), "{e}");
        }
    }

    #[test]
    fn the_environment_comes_before_the_shared_file_and_carries_a_session_token() {
        let d = tempfile::tempdir().unwrap();
        let shared = write(d.path(), "shared", "[default]\naws_access_key_id = S\naws_secret_access_key = s\n");
        let shared = shared.to_str().unwrap();
        let c = load(
            None,
            env(&[
                ("AWS_ACCESS_KEY_ID", "E"),
                ("AWS_SECRET_ACCESS_KEY", "e"),
                ("AWS_SESSION_TOKEN", "T"),
                ("AWS_SHARED_CREDENTIALS_FILE", shared),
            ]),
        )
        .unwrap();
        assert_eq!((c.key(), c.secret(), c.token()), ("E", "e", Some("T")));
        // Only a key without its secret: the environment is skipped.
        let c = load(None, env(&[("AWS_ACCESS_KEY_ID", "E"), ("AWS_SHARED_CREDENTIALS_FILE", shared)])).unwrap();
        assert_eq!(c.key(), "S");
    }

    #[test]
    fn the_shared_file_is_read_for_aws_profile_else_default_and_found_under_home() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join(".aws")).unwrap();
        write(
            &d.path().join(".aws"),
            "credentials",
            "[default]\naws_access_key_id = D\naws_secret_access_key = d\n[ops]\naws_access_key_id = P\n\
             aws_secret_access_key = p\naws_session_token = PT\n",
        );
        let home = d.path().to_str().unwrap();
        let c = load(None, env(&[("HOME", home)])).unwrap();
        assert_eq!(c.key(), "D");
        let c = load(None, env(&[("HOME", home), ("AWS_PROFILE", "ops")])).unwrap();
        assert_eq!((c.key(), c.token()), ("P", Some("PT")));
        let e = load(None, env(&[("HOME", home), ("AWS_PROFILE", "nope")])).unwrap_err();
        assert!(matches!(&e, Error::Config(m) if m.contains("[nope]") && m.contains(".aws/credentials")), "{e}");
    }
}
