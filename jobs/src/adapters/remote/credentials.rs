//! The remote's credentials, found by the AWS SDK's own providers (aws-config):
//!
//! 1. `[remote] credentials_file`: an AWS shared-credentials file, profile `default`, read by
//!    the SDK's profile provider. When it is set it is the only source: a missing file or
//!    profile is a config error, never a silent fall-through to other keys.
//! 2. Else the SDK's default chain: the environment (`AWS_ACCESS_KEY_ID` and
//!    `AWS_SECRET_ACCESS_KEY`, with `AWS_SESSION_TOKEN` when set), then the profile
//!    `AWS_PROFILE` (else `default`) of the shared files (`AWS_SHARED_CREDENTIALS_FILE`, else
//!    `~/.aws/credentials`, and `AWS_CONFIG_FILE`, else `~/.aws/config`; assumed roles by
//!    `role_arn`/`source_profile` included), web identity, the ECS container endpoint and the
//!    EC2 instance metadata service.
//!
//! The credentials are resolved once when the remote is connected, so that none found is a
//! config error (exit 2) before any request, and the SDK caches (and refreshes) them after.
//! The secret is never put in a message: errors name the file, the profile or the variables,
//! never what they hold (the SDK's credentials print themselves redacted).

use std::path::Path;

use aws_config::provider_config::ProviderConfig;
use aws_runtime::env_config::file::{EnvConfigFileKind, EnvConfigFiles};
use aws_sdk_s3::config::{ProvideCredentials, Region, SharedCredentialsProvider, SharedHttpClient};

use crate::error::{Error, Result};

/// The credentials provider for a remote whose config names `file` (or none), in `region`
/// (for the providers that ask STS), resolved once to check that it finds credentials.
/// `http`: the one HTTPS client, for the providers that make requests of their own (STS,
/// container and instance metadata).
pub async fn provider(file: Option<&Path>, region: &str, http: SharedHttpClient) -> Result<SharedCredentialsProvider> {
    let conf = ProviderConfig::default().with_http_client(http);
    let region = Region::new(region.to_string());
    let Some(file) = file else {
        let chain = aws_config::default_provider::credentials::DefaultCredentialsChain::builder()
            .configure(conf)
            .region(region)
            .build()
            .await;
        return check(SharedCredentialsProvider::new(chain), || {
            "remote: no credentials: set remote.credentials_file, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or \
             put a profile (AWS_PROFILE, else [default]) in ~/.aws/credentials (or AWS_SHARED_CREDENTIALS_FILE)"
                .to_string()
        })
        .await;
    };
    // The SDK reads a missing file as an empty one: say which file is missing (or unreadable).
    std::fs::File::open(file).map_err(|e| {
        Error::Config(format!(
            "remote.credentials_file {}: {e}; it must be an AWS shared-credentials file",
            file.display()
        ))
    })?;
    let files = EnvConfigFiles::builder().with_file(EnvConfigFileKind::Credentials, file).build();
    let profile = aws_config::profile::ProfileFileCredentialsProvider::builder()
        .configure(&conf.with_region(Some(region)))
        .profile_files(files)
        .profile_name("default")
        .build();
    check(SharedCredentialsProvider::new(profile), || {
        format!(
            "remote.credentials_file {}: no usable profile [default] (aws_access_key_id and aws_secret_access_key)",
            file.display()
        )
    })
    .await
}

/// `provider` if it finds credentials now; else a config error, `what` first.
async fn check(provider: SharedCredentialsProvider, what: impl Fn() -> String) -> Result<SharedCredentialsProvider> {
    match provider.provide_credentials().await {
        Ok(_) => Ok(provider),
        Err(aws_credential_types::provider::error::CredentialsError::CredentialsNotLoaded(_)) => {
            Err(Error::Config(what()))
        }
        // The SDK's errors name sources and files, never a key or secret.
        Err(e) => Err(Error::Config(format!("{} (the last source tried: {})", what(), super::causes(&e)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn http() -> SharedHttpClient {
        super::super::https_client()
    }

    #[tokio::test]
    async fn the_configured_file_is_read_for_its_default_profile() {
        let d = tempfile::tempdir().unwrap();
        let f = write(
            d.path(),
            "creds",
            "# keys\n[other]\naws_access_key_id = O\naws_secret_access_key = o\n\n[default]\n\
             aws_access_key_id=FILEKEY\naws_secret_access_key = file/secret+=\naws_session_token = T\n",
        );
        let p = provider(Some(&f), "us-east-1", http()).await.unwrap();
        let c = p.provide_credentials().await.unwrap();
        assert_eq!(
            (c.access_key_id(), c.secret_access_key(), c.session_token()),
            ("FILEKEY", "file/secret+=", Some("T"))
        );
        assert!(!format!("{c:?}").contains("file/secret+="), "{c:?}");
    }

    #[tokio::test]
    async fn a_configured_file_without_the_profile_or_missing_is_a_config_error_without_the_secret() {
        let d = tempfile::tempdir().unwrap();
        let f = write(d.path(), "creds", "[other]\naws_access_key_id = O\naws_secret_access_key = SECRETXYZ\n");
        for file in [f.clone(), d.path().join("missing")] {
            let e = provider(Some(&file), "us-east-1", http()).await.expect_err("an error");
            assert!(matches!(&e, Error::Config(m) if m.contains(&file.display().to_string())), "{e}");
            assert!(!e.to_string().contains("SECRETXYZ"), "{e}");
        }
    }
}
