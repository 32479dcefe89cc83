//! The remote store: DigitalOcean Spaces or any S3-compatible API, through aws-sdk-s3, coded to
//! the S3 API only. Custom endpoint, region, path-style option; request checksums only when an
//! operation requires them (S3-compatible stores, Spaces among them, have rejected the SDK's
//! newer default checksum headers). Credentials come from the standard AWS chain or a
//! credentials file named in the host config and are never logged or reported.
//!
//! Every object slipway uploads carries its sha256 as metadata (`x-amz-meta-sha256`); an
//! object counts as present only when its size and that sha256 match. Large files go up by
//! multipart upload with bounded concurrency (parts in flight ≤ 10, Spaces' limit) and a part
//! size that fits any file in 10 000 parts; a failed multipart upload is aborted, so an
//! interrupted transfer is never visible as an object. Downloads are hashed on the way and
//! renamed into place only when the sha256 matches.
//!
//! With `[remote] encrypt`, every upload is encrypted with age to the configured recipients
//! while it streams ([`crate::crypt::seal_file`] cuts the ciphertext into the parts sent): the
//! bucket never sees plaintext. Such an object is marked `x-amz-meta-slipway-enc: age` and
//! carries its plaintext's sha256 and size (`slipway-plain-sha256`, `slipway-plain-size`: what
//! the manifest names, so presence is decided without decrypting and recipients can change
//! without re-encrypting anything), and its own sha256 in `x-amz-meta-sha256` when it goes up
//! in one request (the object's bytes are known only once all are sent; a multipart object's
//! sha256 is returned for the run record instead). A download of a marked object is decrypted
//! as it streams with the identity file, and both sha256s are checked: the object's against
//! what was recorded, the plaintext's against the manifest. An unmarked object (uploaded before
//! encryption was turned on) is read as it is.

use std::path::Path;
use std::time::Duration;

use aws_sdk_s3::config::{BehaviorVersion, Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use futures_util::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::RemoteConfig;
use crate::crypt::{self, Recipients, UnsealError};
use crate::error::{Error, Result};

/// Metadata key holding an object's sha256 (hex).
pub const SHA256_META: &str = "sha256";
/// Metadata key marking an encrypted object, and how it is encrypted.
pub const ENC_META: &str = "slipway-enc";
/// The one encryption slipway writes.
pub const ENC_AGE: &str = "age";
/// Metadata key of an encrypted object: its plaintext's sha256 (the manifest's).
pub const PLAIN_SHA256_META: &str = "slipway-plain-sha256";
/// Metadata key of an encrypted object: its plaintext's size.
pub const PLAIN_SIZE_META: &str = "slipway-plain-size";
const MIB: u64 = 1024 * 1024;
/// S3's limit on parts per upload.
const MAX_PARTS: u64 = 10_000;

/// A connected remote.
#[derive(Clone)]
pub struct Remote {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
    part_size: u64,
    concurrency: usize,
    place: String,
    /// Encrypt every upload to these (`[remote] encrypt`).
    seal: Option<std::sync::Arc<Recipients>>,
    /// Decrypt with this identity file (`--identity` or `[remote] identity_file`).
    identity_file: Option<std::path::PathBuf>,
}

/// An object on the remote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Key relative to the prefix.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// sha256 from metadata (HEAD only): the object's own.
    pub sha256: Option<String>,
    /// How the object is encrypted (`age`), from metadata (HEAD only); None: it is the content.
    pub encryption: Option<String>,
    /// An encrypted object's plaintext sha256 (HEAD only).
    pub plain_sha256: Option<String>,
    /// An encrypted object's plaintext size (HEAD only).
    pub plain_size: Option<u64>,
}

impl ObjectInfo {
    /// The sha256 of what the object holds, as a manifest names it: the plaintext's for an
    /// encrypted object, else the object's own (HEAD only).
    pub fn content_sha256(&self) -> Option<&str> {
        if self.encryption.is_some() {
            self.plain_sha256.as_deref()
        } else {
            self.sha256.as_deref()
        }
    }

    /// The size of what the object holds, as a manifest names it.
    pub fn content_size(&self) -> Option<u64> {
        if self.encryption.is_some() {
            self.plain_size
        } else {
            Some(self.size)
        }
    }

    /// Whether the object holds `sha256`/`size` (a manifest's), encrypted or not.
    pub fn holds(&self, sha256: &str, size: u64) -> bool {
        self.content_sha256() == Some(sha256) && self.content_size() == Some(size)
    }

    /// The run record's entry for this object holding `sha256`/`size`.
    pub fn record(&self, sha256: &str, size: u64) -> slipway_state::RemoteObject {
        slipway_state::RemoteObject {
            sha256: sha256.to_string(),
            size,
            object_sha256: self.sha256.clone(),
            object_size: self.size,
            encryption: self.encryption.clone(),
        }
    }
}

/// The object an upload stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// sha256 of the bytes sent (the object's).
    pub sha256: String,
    /// Bytes sent.
    pub size: u64,
    /// `age` when encrypted.
    pub encryption: Option<String>,
}

impl Stored {
    /// The run record's entry for this object holding `sha256`/`size`.
    pub fn record(&self, sha256: &str, size: u64) -> slipway_state::RemoteObject {
        slipway_state::RemoteObject {
            sha256: sha256.to_string(),
            size,
            object_sha256: Some(self.sha256.clone()),
            object_size: self.size,
            encryption: self.encryption.clone(),
        }
    }
}

/// The upload id in a CreateMultipartUpload answer the SDK could not parse. Servers built on
/// older gofakes3 (`rclone serve s3` among them) name the root element `InitiateMultipartUpload`
/// instead of the S3 API's `InitiateMultipartUploadResult`, which the SDK rightly rejects; the
/// upload id in it is still the one to use. Only a 200 answer with exactly one `<UploadId>` is
/// accepted. (Fixed upstream in gofakes3 PR #96.)
fn upload_id_from_raw<E>(e: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> Option<String> {
    let raw = e.raw_response()?;
    if raw.status().as_u16() != 200 {
        return None;
    }
    let text = std::str::from_utf8(raw.body().bytes()?).ok()?;
    let (_, rest) = text.split_once("<UploadId>")?;
    let (id, rest) = rest.split_once("</UploadId>")?;
    (!rest.contains("<UploadId>") && !id.is_empty()).then(|| id.trim().to_string())
}

/// The `Content-MD5` header of a body: base64 of its MD5, checked by every S3 server.
fn content_md5(bytes: &[u8]) -> String {
    use base64::Engine as _;
    use md5::Digest as _;
    base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(bytes))
}

fn is_auth(code: Option<&str>, status: u16) -> bool {
    matches!(
        code,
        Some(
            "InvalidAccessKeyId"
                | "SignatureDoesNotMatch"
                | "AccessDenied"
                | "InvalidToken"
                | "ExpiredToken"
                | "AuthorizationHeaderMalformed"
        )
    ) || status == 401
        || status == 403
}

/// The HTTPS client the SDK uses: rustls with ring, the one TLS stack of the binary.
pub fn https_client() -> aws_sdk_s3::config::SharedHttpClient {
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    aws_smithy_http_client::Builder::new().tls_provider(Provider::Rustls(CryptoMode::Ring)).build_https()
}

impl Remote {
    /// Build a client for `cfg` (no request is made).
    pub async fn connect(cfg: &RemoteConfig) -> Result<Remote> {
        let retry = aws_sdk_s3::config::retry::RetryConfig::standard()
            .with_max_attempts(5)
            .with_initial_backoff(Duration::from_millis(200));
        let timeouts = aws_sdk_s3::config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .operation_attempt_timeout(Duration::from_secs(300))
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(https_client())
            .region(Region::new(cfg.region.clone()))
            .retry_config(retry)
            .timeout_config(timeouts);
        if let Some(file) = &cfg.credentials_file {
            std::fs::metadata(file).map_err(|e| {
                Error::Config(format!(
                    "remote.credentials_file {}: {e}; it must be an AWS shared-credentials file",
                    file.display()
                ))
            })?;
            let files = aws_runtime::env_config::file::EnvConfigFiles::builder()
                .with_file(aws_runtime::env_config::file::EnvConfigFileKind::Credentials, file)
                .build();
            // The provider builds clients of its own (IMDS, for profiles that chain to it): they
            // get the one HTTPS client too, else the SDK panics for want of a default one.
            let provider_config =
                aws_config::provider_config::ProviderConfig::default().with_http_client(https_client());
            let provider = aws_config::profile::ProfileFileCredentialsProvider::builder()
                .configure(&provider_config)
                .profile_files(files)
                .profile_name("default")
                .build();
            loader = loader.credentials_provider(provider);
        }
        let shared = loader.load().await;
        let mut b = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(cfg.path_style)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let Some(e) = &cfg.endpoint {
            b = b.endpoint_url(e);
        }
        let seal = match &cfg.encrypt {
            Some(e) => {
                Some(std::sync::Arc::new(crypt::read_recipients(&e.recipients_file, "remote.encrypt.recipients_file")?))
            }
            None => None,
        };
        let prefix = cfg.prefix.trim_matches('/').to_string();
        Ok(Remote {
            client: aws_sdk_s3::Client::from_conf(b.build()),
            bucket: cfg.bucket.clone(),
            prefix: if prefix.is_empty() { prefix } else { format!("{prefix}/") },
            part_size: cfg.part_size_mb.unwrap_or(16).max(5) * MIB,
            concurrency: cfg.concurrency.unwrap_or(4).clamp(1, 10),
            place: format!("{} bucket {}", cfg.endpoint.as_deref().unwrap_or("AWS S3"), cfg.bucket),
            seal,
            identity_file: cfg.identity_file.clone(),
        })
    }

    /// Whether uploads are encrypted (`[remote] encrypt`).
    pub fn encrypts(&self) -> bool {
        self.seal.is_some()
    }

    /// Whether an identity file was given to decrypt with.
    pub fn has_identity(&self) -> bool {
        self.identity_file.is_some()
    }

    /// Where the remote is, for messages (never credentials).
    pub fn place(&self) -> &str {
        &self.place
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn err<E>(&self, what: &str, e: SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let status = e.raw_response().map_or(0, |r| r.status().as_u16());
        let code = e.code().map(str::to_string);
        if is_auth(code.as_deref(), status) {
            return Error::RemoteAuth {
                place: self.place.clone(),
                op: what.to_string(),
                code: code.unwrap_or_else(|| format!("HTTP {status}")),
            };
        }
        let detail = match (code, e.message()) {
            (Some(c), Some(m)) => format!("{c}: {m}"),
            (Some(c), None) => c,
            _ => format!("{}", aws_smithy_types::error::display::DisplayErrorContext(&e)),
        };
        Error::Remote { place: self.place.clone(), op: what.to_string(), detail }
    }

    /// Every object under `key_prefix` (relative), paginated.
    pub async fn list(&self, key_prefix: &str) -> Result<Vec<ObjectInfo>> {
        let mut out = Vec::new();
        let mut pages =
            self.client.list_objects_v2().bucket(&self.bucket).prefix(self.full(key_prefix)).into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.err("listing objects", e))?;
            for o in page.contents() {
                let Some(k) = o.key() else { continue };
                out.push(ObjectInfo {
                    key: k.strip_prefix(&self.prefix).unwrap_or(k).to_string(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                    sha256: None,
                    encryption: None,
                    plain_sha256: None,
                    plain_size: None,
                });
            }
        }
        Ok(out)
    }

    /// HEAD one object: its size and sha256 metadata, or None when absent.
    pub async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        match self.client.head_object().bucket(&self.bucket).key(self.full(key)).send().await {
            Ok(h) => {
                let meta = |k: &str| h.metadata().and_then(|m| m.get(k)).cloned();
                Ok(Some(ObjectInfo {
                    key: key.to_string(),
                    size: h.content_length().unwrap_or(0).max(0) as u64,
                    sha256: meta(SHA256_META),
                    encryption: meta(ENC_META),
                    plain_sha256: meta(PLAIN_SHA256_META),
                    plain_size: meta(PLAIN_SIZE_META).and_then(|s| s.parse().ok()),
                }))
            }
            Err(SdkError::ServiceError(s)) if s.err().is_not_found() => Ok(None),
            Err(e) => Err(self.err(&format!("checking {key}"), e)),
        }
    }

    /// Upload a local file with its sha256 as metadata; multipart when larger than a part.
    ///
    /// The bytes sent are the bytes hashed: the file is read once, in order, each part (or the
    /// whole small file) is hashed into the sha256 and carries its own `Content-MD5` (so the
    /// server refuses a part damaged in transit), and the upload is completed only when the
    /// sha256 of everything sent is `sha256`, the manifest's. A local archive damaged after the
    /// snapshot is therefore never uploaded as good: the upload is aborted, nothing is left
    /// under the key, and the error names the file.
    ///
    /// With `[remote] encrypt` the object is the file encrypted with age as it streams
    /// ([`Remote::upload_sealed`]). Returns the object stored.
    pub async fn upload(&self, local: &Path, key: &str, sha256: &str, size: u64) -> Result<Stored> {
        match &self.seal {
            Some(r) => self.upload_sealed(local, key, sha256, size, r.clone()).await,
            None => {
                self.upload_plain(local, key, sha256, size).await?;
                Ok(Stored { sha256: sha256.to_string(), size, encryption: None })
            }
        }
    }

    async fn upload_plain(&self, local: &Path, key: &str, sha256: &str, size: u64) -> Result<()> {
        let full = self.full(key);
        let damaged = |got: &str| {
            Error::Backup(format!(
                "{}: sha256 of the bytes read for upload is {got}, the manifest says {sha256}; the local archive \
                 is damaged and was not uploaded (run `slipway verify`, then snapshot again)",
                local.display()
            ))
        };
        let mut f = tokio::fs::File::open(local).await.map_err(|e| Error::io(local, e))?;
        if size <= self.part_size {
            let mut buf = Vec::with_capacity(size as usize);
            f.read_to_end(&mut buf).await.map_err(|e| Error::io(local, e))?;
            let got = hex::encode(Sha256::digest(&buf));
            if got != sha256 || buf.len() as u64 != size {
                return Err(damaged(&got));
            }
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(&full)
                .metadata(SHA256_META, sha256)
                .content_length(size as i64)
                .content_md5(content_md5(&buf))
                .body(ByteStream::from(buf))
                .send()
                .await
                .map_err(|e| self.err(&format!("uploading {key}"), e))?;
            return Ok(());
        }
        let part_size = self.part_size.max(size.div_ceil(MAX_PARTS));
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&full)
            .metadata(SHA256_META, sha256)
            .send()
            .await;
        let upload_id = match created {
            Ok(c) => c.upload_id().unwrap_or_default().to_string(),
            Err(e) => upload_id_from_raw(&e).ok_or_else(|| self.err(&format!("starting the upload of {key}"), e))?,
        };
        let abort = || async {
            let _ =
                self.client.abort_multipart_upload().bucket(&self.bucket).key(&full).upload_id(&upload_id).send().await;
        };
        let parts = size.div_ceil(part_size);
        let hasher = std::sync::Mutex::new(Sha256::new());
        let file = tokio::sync::Mutex::new(f);
        // Parts are read (and hashed) strictly in order, one at a time; their uploads overlap.
        let result: Result<Vec<CompletedPart>> = futures_util::stream::iter(1..=parts)
            .then(|n| {
                let (file, hasher) = (&file, &hasher);
                async move {
                    let len = part_size.min(size - (n - 1) * part_size);
                    let mut buf = vec![0u8; len as usize];
                    file.lock().await.read_exact(&mut buf).await.map_err(|e| Error::io(local, e))?;
                    hasher.lock().map_err(|_| Error::Other("upload hasher poisoned".into()))?.update(&buf);
                    Ok::<_, Error>((n, buf))
                }
            })
            .map_ok(|(n, buf)| {
                let (client, bucket, full, upload_id) =
                    (self.client.clone(), self.bucket.clone(), full.clone(), upload_id.clone());
                async move {
                    let len = buf.len();
                    let r = client
                        .upload_part()
                        .bucket(bucket)
                        .key(full)
                        .upload_id(upload_id)
                        .part_number(n as i32)
                        .content_length(len as i64)
                        .content_md5(content_md5(&buf))
                        .body(ByteStream::from(buf))
                        .send()
                        .await
                        .map_err(|e| self.err(&format!("uploading part {n} of {key}"), e))?;
                    Ok(CompletedPart::builder().part_number(n as i32).set_e_tag(r.e_tag().map(str::to_string)).build())
                }
            })
            .try_buffer_unordered(self.concurrency)
            .try_collect()
            .await;
        let parts = match result {
            Ok(p) => p,
            Err(e) => {
                abort().await;
                return Err(e);
            }
        };
        let got =
            hex::encode(hasher.into_inner().map_err(|_| Error::Other("upload hasher poisoned".into()))?.finalize());
        if got != sha256 {
            abort().await;
            return Err(damaged(&got));
        }
        if let Err(e) = self.complete(key, &full, &upload_id, parts).await {
            abort().await;
            return Err(e);
        }
        Ok(())
    }

    /// Complete multipart upload `upload_id` of `full` (the object for `key`) from its parts,
    /// in part order: the one completion both the plain and the encrypted upload end with.
    async fn complete(&self, key: &str, full: &str, upload_id: &str, mut parts: Vec<CompletedPart>) -> Result<()> {
        parts.sort_by_key(|p| p.part_number());
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(full)
            .upload_id(upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.err(&format!("completing the upload of {key}"), e))
    }

    /// The upload of an encrypted object. A blocking task reads the file once, hashing the
    /// plaintext, and encrypts it into parts of the part size, handed over one at a time; this
    /// side hashes the ciphertext in order and sends the parts, each with its own
    /// `Content-MD5`, several in flight. An object of one part goes up in one PUT with its own
    /// sha256 as metadata. The upload is completed only when the plaintext read hashes to
    /// `sha256` (the manifest's); otherwise it is aborted and nothing is left under the key.
    async fn upload_sealed(
        &self,
        local: &Path,
        key: &str,
        sha256: &str,
        size: u64,
        recipients: std::sync::Arc<Recipients>,
    ) -> Result<Stored> {
        let full = self.full(key);
        let sealed_size = size + crypt::overhead(size) + 4096;
        let part_size = self.part_size.max(sealed_size.div_ceil(MAX_PARTS)) as usize;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(1);
        let path = local.to_path_buf();
        let produce = crate::blocking::run("encrypt", move || crypt::seal_file(&path, &recipients, part_size, tx));
        let meta = [
            (ENC_META, ENC_AGE.to_string()),
            (PLAIN_SHA256_META, sha256.to_string()),
            (PLAIN_SIZE_META, size.to_string()),
        ];
        let upload_id = std::sync::Mutex::new(None::<String>);
        // What was sent: one whole object to PUT, or the parts of a multipart upload.
        enum Sent {
            Nothing,
            One(Vec<u8>),
            Parts(Vec<CompletedPart>, String, u64),
        }
        let consume = async {
            let Some(first) = rx.recv().await else { return Ok(Sent::Nothing) };
            let Some(second) = rx.recv().await else { return Ok(Sent::One(first)) };
            let mut create = self.client.create_multipart_upload().bucket(&self.bucket).key(&full);
            for (k, v) in &meta {
                create = create.metadata(*k, v);
            }
            let id = match create.send().await {
                Ok(c) => c.upload_id().unwrap_or_default().to_string(),
                Err(e) => {
                    upload_id_from_raw(&e).ok_or_else(|| self.err(&format!("starting the upload of {key}"), e))?
                }
            };
            *upload_id.lock().map_err(|_| Error::Other("upload id poisoned".into()))? = Some(id.clone());
            let rest = futures_util::stream::unfold(rx, |mut rx| async { rx.recv().await.map(|p| (p, rx)) });
            let (mut hash, mut sent) = (Sha256::new(), 0u64);
            let numbered = futures_util::stream::iter([first, second]).chain(rest).enumerate().map(|(i, buf)| {
                hash.update(&buf);
                sent += buf.len() as u64;
                (i as i32 + 1, buf)
            });
            let parts: Vec<CompletedPart> = numbered
                .map(|(n, buf)| self.upload_part(&full, key, &id, n, buf))
                .buffer_unordered(self.concurrency)
                .try_collect()
                .await?;
            Ok::<_, Error>(Sent::Parts(parts, hex::encode(hash.finalize()), sent))
        };
        let (produced, sent) = tokio::join!(produce, consume);
        let abort = || async {
            if let Ok(Some(id)) = upload_id.lock().map(|g| g.clone()) {
                let _ = self.client.abort_multipart_upload().bucket(&self.bucket).key(&full).upload_id(id).send().await;
            }
        };
        // A failed send stops the encryption too (its channel closes): the send's error is the cause.
        let sent = match sent {
            Ok(s) => s,
            Err(e) => {
                abort().await;
                return Err(e);
            }
        };
        let plain = match produced.and_then(|r| r) {
            Ok(p) => p,
            Err(e) => {
                abort().await;
                return Err(e);
            }
        };
        if plain.0 != sha256 || plain.1 != size {
            abort().await;
            return Err(Error::Backup(format!(
                "{}: sha256 of the bytes read for upload is {} ({} bytes), the manifest says {sha256} ({size} bytes); \
                 the local archive is damaged and was not uploaded (run `slipway verify`, then snapshot again)",
                local.display(),
                plain.0,
                plain.1
            )));
        }
        match sent {
            Sent::Nothing => Err(Error::Other(format!("{}: encrypting for upload produced nothing", local.display()))),
            Sent::One(buf) => {
                let object_sha = hex::encode(Sha256::digest(&buf));
                let len = buf.len() as u64;
                let mut put = self
                    .client
                    .put_object()
                    .bucket(&self.bucket)
                    .key(&full)
                    .metadata(SHA256_META, &object_sha)
                    .content_length(len as i64)
                    .content_md5(content_md5(&buf));
                for (k, v) in &meta {
                    put = put.metadata(*k, v);
                }
                put.body(ByteStream::from(buf)).send().await.map_err(|e| self.err(&format!("uploading {key}"), e))?;
                Ok(Stored { sha256: object_sha, size: len, encryption: Some(ENC_AGE.into()) })
            }
            Sent::Parts(parts, object_sha, len) => {
                let id = upload_id.lock().ok().and_then(|g| g.clone()).unwrap_or_default();
                if let Err(e) = self.complete(key, &full, &id, parts).await {
                    abort().await;
                    return Err(e);
                }
                Ok(Stored { sha256: object_sha, size: len, encryption: Some(ENC_AGE.into()) })
            }
        }
    }

    /// Send part `n` of a multipart upload with its `Content-MD5`.
    async fn upload_part(&self, full: &str, key: &str, upload_id: &str, n: i32, buf: Vec<u8>) -> Result<CompletedPart> {
        let len = buf.len();
        let r = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(full)
            .upload_id(upload_id)
            .part_number(n)
            .content_length(len as i64)
            .content_md5(content_md5(&buf))
            .body(ByteStream::from(buf))
            .send()
            .await
            .map_err(|e| self.err(&format!("uploading part {n} of {key}"), e))?;
        Ok(CompletedPart::builder().part_number(n).set_e_tag(r.e_tag().map(str::to_string)).build())
    }

    /// Abort multipart uploads left by an interrupted run (best effort: not every
    /// S3-compatible server lists them). Returns how many were aborted.
    pub async fn abort_stale_uploads(&self) -> usize {
        let Ok(list) = self.client.list_multipart_uploads().bucket(&self.bucket).prefix(&self.prefix).send().await
        else {
            return 0;
        };
        let mut n = 0;
        for u in list.uploads() {
            if let (Some(k), Some(id)) = (u.key(), u.upload_id()) {
                if self.client.abort_multipart_upload().bucket(&self.bucket).key(k).upload_id(id).send().await.is_ok() {
                    n += 1;
                }
            }
        }
        n
    }

    /// Download `key` to `dest`, hashing it; renamed into place only if the sha256 matches.
    ///
    /// An encrypted object (marked `slipway-enc: age`) is decrypted as it streams with the
    /// identity file; its own sha256 is checked against its metadata when it has one, and the
    /// plaintext's against `expected_sha256`. No identity, or one the object was not encrypted
    /// to, is a config error (exit 2) raised before anything is written. Returns the sha256 of
    /// what was written.
    pub async fn download(&self, key: &str, dest: &Path, expected_sha256: Option<&str>) -> Result<String> {
        let got = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full(key))
            .send()
            .await
            .map_err(|e| self.err(&format!("downloading {key}"), e))?;
        let meta = |k: &str| got.metadata().and_then(|m| m.get(k)).cloned();
        if let Some(enc) = meta(ENC_META) {
            let object_sha = meta(SHA256_META);
            return self.download_sealed(key, dest, expected_sha256, &enc, object_sha.as_deref(), got.body).await;
        }
        if let Some(parent) = dest.parent() {
            crate::fsutil::create_private_dir(parent).map_err(|e| Error::io(parent, e))?;
        }
        let tmp = dest.with_file_name(format!(
            ".{}.download-{}",
            dest.file_name().unwrap_or_default().to_string_lossy(),
            std::process::id()
        ));
        let mut f = tokio::fs::File::create(&tmp).await.map_err(|e| Error::io(&tmp, e))?;
        let mut body = got.body;
        let mut hash = Sha256::new();
        let res: Result<()> = async {
            while let Some(chunk) = body.try_next().await.map_err(|e| Error::Remote {
                place: self.place.clone(),
                op: format!("downloading {key}"),
                detail: e.to_string(),
            })? {
                hash.update(&chunk);
                f.write_all(&chunk).await.map_err(|e| Error::io(&tmp, e))?;
            }
            f.sync_all().await.map_err(|e| Error::io(&tmp, e))
        }
        .await;
        let actual = hex::encode(hash.finalize());
        if let Err(e) = res {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
        if let Some(want) = expected_sha256 {
            if actual != want {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(Error::Backup(format!(
                    "{}: {key}: sha256 is {actual}, the manifest says {want}",
                    self.place
                )));
            }
        }
        tokio::fs::rename(&tmp, dest).await.map_err(|e| Error::io(dest, e))?;
        Ok(actual)
    }

    /// The download of an encrypted object: the body is hashed here as it arrives and handed
    /// to a blocking task that decrypts it into a temp file beside `dest` (created only once
    /// the identity opened the header), hashing the plaintext.
    async fn download_sealed(
        &self,
        key: &str,
        dest: &Path,
        expected_sha256: Option<&str>,
        enc: &str,
        object_sha: Option<&str>,
        mut body: ByteStream,
    ) -> Result<String> {
        if enc != ENC_AGE {
            return Err(Error::Backup(format!(
                "{}: {key} is encrypted with \"{enc}\", which this slipway does not know (only age)",
                self.place
            )));
        }
        let Some(file) = &self.identity_file else {
            return Err(Error::Config(format!(
                "{}: {key} is encrypted (age) and no identity was given; pass --identity FILE (or set [remote] \
                 identity_file) naming the age identity whose public key was in remote.encrypt.recipients_file when \
                 it was uploaded. Nothing was written",
                self.place
            )));
        };
        let identity = crypt::read_identity(file)?;
        let tmp = dest.with_file_name(format!(
            ".{}.download-{}",
            dest.file_name().unwrap_or_default().to_string_lossy(),
            std::process::id()
        ));
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Vec<u8>>>(8);
        let t = tmp.clone();
        let open = crate::blocking::run("decrypt", move || crypt::unseal_to_file(rx, &identity, &t));
        // The pump owns the sender: when the body ends, the channel closes and the decryption
        // sees the end of its input (a sender kept alive here would leave it waiting forever).
        let place = &self.place;
        let pump = async move {
            let mut hash = Sha256::new();
            loop {
                match body.try_next().await {
                    Ok(Some(chunk)) => {
                        hash.update(&chunk);
                        if tx.send(Ok(chunk.to_vec())).await.is_err() {
                            // The decryption stopped (a wrong identity, damage): its error says why.
                            return Ok(None);
                        }
                    }
                    Ok(None) => return Ok(Some(hex::encode(hash.finalize()))),
                    Err(e) => {
                        let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                        return Err(Error::Remote {
                            place: place.clone(),
                            op: format!("downloading {key}"),
                            detail: e.to_string(),
                        });
                    }
                }
            }
        };
        let (opened, pumped) = tokio::join!(open, pump);
        let fail = |e: Error| {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        };
        let got_object_sha = match pumped {
            Ok(s) => s,
            Err(e) => return fail(e),
        };
        let (plain_sha, _) = match opened? {
            Ok(p) => p,
            Err(UnsealError::WrongIdentity) => {
                return fail(Error::Config(format!(
                    "{}: {key} was not encrypted to identity file {}: none of its keys is one of the object's \
                     recipients. Pass --identity FILE with the identity whose public key was in \
                     remote.encrypt.recipients_file when it was uploaded. Nothing was written",
                    self.place,
                    file.display()
                )))
            }
            Err(UnsealError::Damaged(why)) => {
                return fail(Error::Backup(format!(
                    "{}: {key}: cannot be decrypted: {why}; the object is damaged or was replaced, nothing was \
                     written",
                    self.place
                )))
            }
            Err(UnsealError::Local(e)) => return fail(e),
        };
        if let (Some(want), Some(got)) = (object_sha, got_object_sha.as_deref()) {
            if want != got {
                return fail(Error::Backup(format!(
                    "{}: {key}: the object's sha256 is {got}, its metadata says {want}; it changed after upload, \
                     nothing was written",
                    self.place
                )));
            }
        }
        if let Some(want) = expected_sha256 {
            if plain_sha != want {
                return fail(Error::Backup(format!(
                    "{}: {key}: sha256 after decryption is {plain_sha}, the manifest says {want}",
                    self.place
                )));
            }
        }
        tokio::fs::rename(&tmp, dest).await.map_err(|e| Error::io(dest, e))?;
        Ok(plain_sha)
    }

    /// Delete objects (relative keys).
    pub async fn delete(&self, keys: &[String]) -> Result<()> {
        for k in keys {
            self.client
                .delete_object()
                .bucket(&self.bucket)
                .key(self.full(k))
                .send()
                .await
                .map_err(|e| self.err(&format!("deleting {k}"), e))?;
        }
        Ok(())
    }

    /// HEAD the bucket: it exists and the credentials may use it.
    pub async fn head_bucket(&self) -> Result<()> {
        match self.client.head_bucket().bucket(&self.bucket).send().await {
            Ok(_) => Ok(()),
            Err(SdkError::ServiceError(s)) if s.err().is_not_found() => Err(Error::Remote {
                place: self.place.clone(),
                op: "checking the bucket".into(),
                detail: "no such bucket; create it (or fix remote.bucket)".into(),
            }),
            Err(e) => Err(self.err("checking the bucket", e)),
        }
    }

    /// Create the bucket if it does not exist (tests, first use).
    pub async fn ensure_bucket(&self) -> Result<()> {
        if self.client.head_bucket().bucket(&self.bucket).send().await.is_ok() {
            return Ok(());
        }
        match self.client.create_bucket().bucket(&self.bucket).send().await {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.code(), Some("BucketAlreadyOwnedByYou" | "BucketAlreadyExists")) => Ok(()),
            Err(e) => Err(self.err("creating the bucket", e)),
        }
    }
}
