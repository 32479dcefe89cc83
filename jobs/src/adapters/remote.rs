//! The remote store: DigitalOcean Spaces or any S3-compatible API, coded to the S3 API only,
//! through the AWS SDK (aws-sdk-s3): it signs every request (SigV4), retries (standard mode:
//! [`MAX_ATTEMPTS`] attempts, exponential backoff with jitter from [`INITIAL_BACKOFF`]), finds the
//! credentials ([`credentials`] says exactly where) and reads S3's answers. It is given one
//! HTTPS client, rustls with ring ([`https_client`]): no other TLS stack is built. Custom
//! endpoint, region, path-style or virtual-host addressing; request checksums only when an
//! operation requires them (S3-compatible stores, Spaces among them, have refused the SDK's
//! newer default checksum headers). Credentials are never logged or reported.
//!
//! Every object slipway uploads carries its sha256 as metadata (`x-amz-meta-sha256`); an
//! object counts as present only when its size and that sha256 match. Every body is sent from
//! a buffer with its length and its `Content-MD5`: a whole small file in one PUT, a large one
//! by multipart upload with bounded concurrency (parts in flight ≤ 10, Spaces' limit) and a part
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

pub mod credentials;
mod listing;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Region, RequestChecksumCalculation, ResponseChecksumValidation, SharedHttpClient,
    StalledStreamProtectionConfig,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use bytes::Bytes;
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
/// Attempts per request (the SDK's standard retry mode): on connection errors, timeouts, 5xx
/// answers, 429 and S3's throttling and transient codes (`SlowDown`, `RequestTimeout`,
/// `InternalError`, …). Every body is an in-memory buffer, so every request can be sent again.
pub const MAX_ATTEMPTS: u32 = 5;
/// The first retry waits up to this long; each later one up to twice the one before (at most
/// 20 s, the SDK's cap), scaled by a random factor so that clients do not retry in step.
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(200);
/// Connecting to the store.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Waiting for an answer to start, and for a body (sent or received) to move: a transfer that
/// moves no byte for this long fails.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// One attempt of a request, up to its answer (a download's body then streams for as long as
/// it takes, each read within [`READ_TIMEOUT`]).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(300);

/// A connected remote.
#[derive(Clone)]
pub struct Remote {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
    part_size: u64,
    concurrency: usize,
    place: String,
    /// Which remote this is: endpoint, bucket and prefix ([`Remote::id`]).
    id: String,
    /// Encrypt every upload to these (`[remote] encrypt`).
    seal: Option<std::sync::Arc<Recipients>>,
    /// Decrypt with this identity file (`--identity` or `[remote] identity_file`).
    identity_file: Option<std::path::PathBuf>,
    /// Called with a part's number once the store has it (tests pause there; see
    /// [`Remote::on_part_sent`]).
    part_sent: Option<PartHook>,
}

/// What [`Remote::on_part_sent`] calls: the number of the part just sent.
pub type PartHook = Arc<dyn Fn(u16) + Send + Sync>;

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

/// The upload id in a CreateMultipartUpload answer the SDK could not read. Servers built on
/// older gofakes3 (`rclone serve s3` among them, v1.75 included) name the root element
/// `InitiateMultipartUpload`, with no namespace, instead of the S3 API's
/// `InitiateMultipartUploadResult`, which the SDK rightly rejects; the upload id in it is still
/// the one to use, so a successful (200) answer with exactly one `<UploadId>` is read whatever
/// its root. (Fixed upstream in gofakes3 PR #96.)
fn upload_id_from_raw<E>(e: &SdkError<E, HttpResponse>) -> Option<String> {
    let raw = e.raw_response()?;
    if raw.status().as_u16() != 200 {
        return None;
    }
    upload_id_of(std::str::from_utf8(raw.body().bytes()?).ok()?)
}

/// The one `<UploadId>` of an XML answer, when there is exactly one and it is not blank.
fn upload_id_of(text: &str) -> Option<String> {
    let (_, rest) = text.split_once("<UploadId>")?;
    let (id, rest) = rest.split_once("</UploadId>")?;
    let id = id.trim();
    (!rest.contains("<UploadId>") && !id.is_empty() && !id.contains(['<', '&'])).then(|| id.to_string())
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

/// S3's limit on keys per DeleteObjects request.
const DELETE_BATCH: usize = 1000;

/// The HTTPS client the SDK uses, for the store and for the credential providers that make
/// requests: rustls with ring, the one TLS stack of the binary. It trusts the system's CA store
/// (`SSL_CERT_FILE` included: an S3 server with a private CA) and Mozilla's roots (a host
/// without a CA bundle, a minimal container, still reaches an `https://` endpoint), as reqwest
/// does for the health probes.
pub fn https_client() -> SharedHttpClient {
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider, TlsContext, TrustStore};
    // The SDK refuses (a debug assertion) to enable a system store that holds no certificate.
    static NATIVE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let native = *NATIVE.get_or_init(|| !rustls_native_certs::load_native_certs().certs.is_empty());
    let mut store = TrustStore::empty().with_native_roots(native);
    for cert in webpki_root_certs::TLS_SERVER_ROOT_CERTS {
        store.add_pem_certificate(pem(cert));
    }
    let tls = TlsContext::builder().with_trust_store(store).build().unwrap_or_default();
    aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .tls_context(tls)
        .build_https()
}

/// A DER certificate as PEM, the form the SDK's trust store takes.
fn pem(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Whether `bucket` can be a host name label of virtual-host addressing (else it needs
/// `path_style`): lower-case letters, digits, `-` and `.`, not at either end.
fn host_label(bucket: &str) -> bool {
    !bucket.is_empty()
        && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !bucket.starts_with(['-', '.'])
        && !bucket.ends_with(['-', '.'])
}

/// The endpoint of `cfg` as a URL, checked: http(s) with a host, and addressing that can work
/// (virtual-host style needs a bucket that is a host name label and an endpoint that is a name).
fn endpoint_url(cfg: &RemoteConfig) -> Result<String> {
    // No endpoint: AWS S3 itself, the region's endpoint.
    let endpoint = cfg.endpoint.clone().unwrap_or_else(|| format!("https://s3.{}.amazonaws.com", cfg.region));
    let url: reqwest::Url = endpoint.parse().map_err(|e| {
        Error::Config(format!("remote.endpoint \"{endpoint}\": {e}; e.g. \"https://nyc3.digitaloceanspaces.com\""))
    })?;
    let host = url.host_str();
    let ip = host.is_some_and(|h| h.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>().is_ok());
    if !matches!(url.scheme(), "http" | "https")
        || host.is_none()
        || (!cfg.path_style && (ip || !host_label(&cfg.bucket)))
    {
        return Err(Error::Config(format!(
            "remote: bucket \"{}\" at endpoint \"{endpoint}\": the endpoint must be an http(s) URL, and a bucket name \
             that is not a host name label or an endpoint that is an IP address needs remote.path_style = true",
            cfg.bucket
        )));
    }
    Ok(endpoint)
}

impl Remote {
    /// Build a client for `cfg` and find its credentials (no request is made to the store).
    pub async fn connect(cfg: &RemoteConfig) -> Result<Remote> {
        let endpoint = endpoint_url(cfg)?;
        let http = https_client();
        let creds = credentials::provider(cfg.credentials_file.as_deref(), &cfg.region, http.clone()).await?;
        let retry = RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS).with_initial_backoff(INITIAL_BACKOFF);
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .operation_attempt_timeout(ATTEMPT_TIMEOUT)
            .build();
        let mut conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .http_client(http)
            .region(Region::new(cfg.region.clone()))
            .force_path_style(cfg.path_style)
            .credentials_provider(creds)
            .retry_config(retry)
            .timeout_config(timeouts)
            .stalled_stream_protection(StalledStreamProtectionConfig::enabled().grace_period(READ_TIMEOUT).build())
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        // No endpoint: AWS S3 itself, whose endpoint the SDK's rules find for the region.
        if let Some(e) = &cfg.endpoint {
            conf = conf.endpoint_url(e);
        }
        let conf = conf.build();
        let seal = match &cfg.encrypt {
            Some(e) => Some(Arc::new(crypt::read_recipients(&e.recipients_file, "remote.encrypt.recipients_file")?)),
            None => None,
        };
        let prefix = cfg.prefix.trim_matches('/').to_string();
        let id = format!("{} bucket {} prefix {prefix}", endpoint.trim_end_matches('/'), cfg.bucket);
        Ok(Remote {
            id,
            client: aws_sdk_s3::Client::from_conf(conf),
            bucket: cfg.bucket.clone(),
            prefix: if prefix.is_empty() { prefix } else { format!("{prefix}/") },
            part_size: cfg.part_size_mb.unwrap_or(16).max(5) * MIB,
            concurrency: cfg.concurrency.unwrap_or(4).clamp(1, 10),
            place: format!("{} bucket {}", cfg.endpoint.as_deref().unwrap_or("AWS S3"), cfg.bucket),
            seal,
            identity_file: cfg.identity_file.clone(),
            part_sent: None,
        })
    }

    /// Have `hook` called with each part's number once the store has that part of a multipart
    /// upload: the point a test pauses at to stop the store mid-upload (the `test-crash`
    /// builds of `sync` set it; nothing else does).
    pub fn on_part_sent(mut self, hook: PartHook) -> Remote {
        self.part_sent = Some(hook);
        self
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

    /// Which remote this is — endpoint, bucket and prefix — as the run record ties verified
    /// uploads to it: another bucket or prefix is another remote, whose objects were never
    /// verified.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// A request that failed, as slipway reports it: refused credentials are `RemoteAuth`
    /// (exit 6), anything else names S3's code and message, the HTTP status, or the transport
    /// error (which never holds a credential: requests carry their signature in a header).
    fn err<E>(&self, what: &str, e: SdkError<E, HttpResponse>) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let status = e.raw_response().map_or(0, |r| r.status().as_u16());
        let code = e.code().map(str::to_string);
        let message = e.message().map(str::to_string);
        let fallback = || causes(&e);
        self.failure(what, status, code, message, fallback)
    }

    /// [`Remote::err`] from its parts; `fallback` describes a failure with no status.
    fn failure(
        &self,
        what: &str,
        status: u16,
        code: Option<String>,
        message: Option<String>,
        fallback: impl FnOnce() -> String,
    ) -> Error {
        if is_auth(code.as_deref(), status) {
            return Error::RemoteAuth {
                place: self.place.clone(),
                op: what.to_string(),
                code: code.unwrap_or_else(|| format!("HTTP {status}")),
            };
        }
        let detail = match (code, message) {
            (Some(c), Some(m)) => format!("{c}: {m}"),
            (Some(c), None) => c,
            (None, _) if status != 0 => format!("HTTP {status}"),
            (None, _) => fallback(),
        };
        Error::Remote { place: self.place.clone(), op: what.to_string(), detail }
    }

    /// An answer slipway could not read.
    fn unreadable(&self, what: &str, e: impl std::fmt::Display) -> Error {
        Error::Remote { place: self.place.clone(), op: what.to_string(), detail: format!("unreadable answer: {e}") }
    }

    /// HEAD one object: its size and sha256 metadata, or None when absent.
    pub async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        let h = match self.client.head_object().bucket(&self.bucket).key(self.full(key)).send().await {
            Ok(h) => h,
            Err(e) if status_of(&e) == Some(404) => return Ok(None),
            Err(e) => return Err(self.err(&format!("checking {key}"), e)),
        };
        let meta = |k: &str| h.metadata().and_then(|m| m.get(k)).cloned();
        Ok(Some(ObjectInfo {
            key: key.to_string(),
            size: h.content_length().and_then(|n| u64::try_from(n).ok()).unwrap_or(0),
            sha256: meta(SHA256_META),
            encryption: meta(ENC_META),
            plain_sha256: meta(PLAIN_SHA256_META),
            plain_size: meta(PLAIN_SIZE_META).and_then(|s| s.parse().ok()),
        }))
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
        let meta = [(SHA256_META, sha256.to_string())];
        let mut f = tokio::fs::File::open(local).await.map_err(|e| Error::io(local, e))?;
        if size <= self.part_size {
            let mut buf = Vec::with_capacity(size as usize);
            f.read_to_end(&mut buf).await.map_err(|e| Error::io(local, e))?;
            let got = hex::encode(Sha256::digest(&buf));
            if got != sha256 || buf.len() as u64 != size {
                return Err(damaged(&got));
            }
            return self.put(key, &full, &meta, Bytes::from(buf)).await;
        }
        let part_size = self.part_size.max(size.div_ceil(MAX_PARTS));
        let upload_id = self.create_upload(key, &full, &meta).await?;
        let parts = size.div_ceil(part_size);
        let hasher = std::sync::Mutex::new(Sha256::new());
        let file = tokio::sync::Mutex::new(f);
        // Parts are read (and hashed) strictly in order, one at a time; their uploads overlap.
        let result: Result<Vec<Part>> = futures_util::stream::iter(1..=parts)
            .then(|n| {
                let (file, hasher) = (&file, &hasher);
                async move {
                    let len = part_size.min(size - (n - 1) * part_size);
                    let mut buf = vec![0u8; len as usize];
                    file.lock().await.read_exact(&mut buf).await.map_err(|e| Error::io(local, e))?;
                    hasher.lock().map_err(|_| Error::Other("upload hasher poisoned".into()))?.update(&buf);
                    Ok::<_, Error>((n as u16, Bytes::from(buf)))
                }
            })
            .map_ok(|(n, buf)| self.upload_part(&full, key, &upload_id, n, buf))
            .try_buffer_unordered(self.concurrency)
            .try_collect()
            .await;
        let parts = match result {
            Ok(p) => p,
            Err(e) => {
                self.abort(&full, &upload_id).await;
                return Err(e);
            }
        };
        let got =
            hex::encode(hasher.into_inner().map_err(|_| Error::Other("upload hasher poisoned".into()))?.finalize());
        if got != sha256 {
            self.abort(&full, &upload_id).await;
            return Err(damaged(&got));
        }
        if let Err(e) = self.complete(key, &full, &upload_id, parts).await {
            self.abort(&full, &upload_id).await;
            return Err(e);
        }
        Ok(())
    }

    /// PUT `body` as the object `full` (for `key`) with `meta`, its length and `Content-MD5`.
    async fn put(&self, key: &str, full: &str, meta: &[(&str, String)], body: Bytes) -> Result<()> {
        let mut put = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(full)
            .content_length(len_i64(body.len()))
            .content_md5(content_md5(&body));
        for (k, v) in meta {
            put = put.metadata(*k, v);
        }
        put.body(ByteStream::from(body)).send().await.map(drop).map_err(|e| self.err(&format!("uploading {key}"), e))
    }

    /// Start a multipart upload of `full` (for `key`) with `meta`: its upload id.
    async fn create_upload(&self, key: &str, full: &str, meta: &[(&str, String)]) -> Result<String> {
        let what = format!("starting the upload of {key}");
        let mut create = self.client.create_multipart_upload().bucket(&self.bucket).key(full);
        for (k, v) in meta {
            create = create.metadata(*k, v);
        }
        match create.send().await {
            Ok(c) => c
                .upload_id()
                .map(str::trim)
                .filter(|id| !id.is_empty())
                .map(str::to_string)
                .ok_or_else(|| self.unreadable(&what, "no upload id")),
            Err(e) => upload_id_from_raw(&e).ok_or_else(|| self.err(&what, e)),
        }
    }

    /// Abort multipart upload `upload_id` of `full`, best effort: a failure leaves an upload
    /// that no listing shows as an object, and `sync` aborts it next time.
    async fn abort(&self, full: &str, upload_id: &str) {
        let r = self.client.abort_multipart_upload().bucket(&self.bucket).key(full).upload_id(upload_id).send().await;
        if let Err(e) = r {
            let failure = causes(&e);
            tracing::warn!(place = %self.place, key = full, %failure, "remote: aborting a multipart upload failed");
        }
    }

    /// Complete multipart upload `upload_id` of `full` (the object for `key`) from its parts,
    /// in part order: the one completion both the plain and the encrypted upload end with. S3
    /// can answer a completion that failed with an error document and status 200: the SDK
    /// reads it as the failure it is.
    async fn complete(&self, key: &str, full: &str, upload_id: &str, mut parts: Vec<Part>) -> Result<()> {
        let what = format!("completing the upload of {key}");
        parts.sort_by_key(|p| p.0);
        if parts.iter().enumerate().any(|(i, p)| usize::from(p.0) != i + 1) {
            return Err(Error::Other(format!("{what}: the parts are not numbered 1 to {}", parts.len())));
        }
        let parts: Vec<CompletedPart> = parts
            .into_iter()
            .map(|(n, etag)| CompletedPart::builder().part_number(i32::from(n)).e_tag(etag).build())
            .collect();
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(full)
            .upload_id(upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
            .send()
            .await
            .map(drop)
            .map_err(|e| self.err(&what, e))
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
            Parts(Vec<Part>, String, u64),
        }
        let consume = async {
            let Some(first) = rx.recv().await else { return Ok(Sent::Nothing) };
            let Some(second) = rx.recv().await else { return Ok(Sent::One(first)) };
            let id = self.create_upload(key, &full, &meta).await?;
            *upload_id.lock().map_err(|_| Error::Other("upload id poisoned".into()))? = Some(id.clone());
            let rest = futures_util::stream::unfold(rx, |mut rx| async { rx.recv().await.map(|p| (p, rx)) });
            let (mut hash, mut sent) = (Sha256::new(), 0u64);
            let numbered = futures_util::stream::iter([first, second]).chain(rest).enumerate().map(|(i, buf)| {
                hash.update(&buf);
                sent += buf.len() as u64;
                // More than 10 000 parts cannot be (the part size is chosen so): S3 refuses the number.
                (u16::try_from(i + 1).unwrap_or(u16::MAX), Bytes::from(buf))
            });
            let parts: Vec<Part> = numbered
                .map(|(n, buf)| self.upload_part(&full, key, &id, n, buf))
                .buffer_unordered(self.concurrency)
                .try_collect()
                .await?;
            Ok::<_, Error>(Sent::Parts(parts, hex::encode(hash.finalize()), sent))
        };
        let (produced, sent) = tokio::join!(produce, consume);
        let abort = || async {
            if let Ok(Some(id)) = upload_id.lock().map(|g| g.clone()) {
                self.abort(&full, &id).await;
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
                let mut all = vec![(SHA256_META, object_sha.clone())];
                all.extend(meta.iter().cloned());
                self.put(key, &full, &all, Bytes::from(buf)).await?;
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

    /// Send part `n` of a multipart upload with its `Content-MD5`: its number and ETag.
    async fn upload_part(&self, full: &str, key: &str, upload_id: &str, n: u16, buf: Bytes) -> Result<Part> {
        let what = format!("uploading part {n} of {key}");
        let r = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(full)
            .upload_id(upload_id)
            .part_number(i32::from(n))
            .content_length(len_i64(buf.len()))
            .content_md5(content_md5(&buf))
            .body(ByteStream::from(buf))
            .send()
            .await
            .map_err(|e| self.err(&what, e))?;
        let etag = r.e_tag().filter(|t| !t.is_empty()).ok_or_else(|| self.unreadable(&what, "no ETag"))?.to_string();
        if let Some(hook) = &self.part_sent {
            hook(n);
        }
        Ok((n, etag))
    }

    /// Download `key` to `dest`, hashing it; renamed into place only if the sha256 matches.
    ///
    /// An encrypted object (marked `slipway-enc: age`) is decrypted as it streams with the
    /// identity file; its own sha256 is checked against its metadata when it has one, and the
    /// plaintext's against `expected_sha256`. No identity, or one the object was not encrypted
    /// to, is a config error (exit 2) raised before anything is written. Returns the sha256 of
    /// what was written.
    pub async fn download(&self, key: &str, dest: &Path, expected_sha256: Option<&str>) -> Result<String> {
        // No limit on the whole answer: the body streams for as long as it takes, each read
        // within the read timeout. A body cut short is not retried (it was partly written):
        // the download fails and the next run starts it again.
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
        let mut body = got.body;
        if let Some(parent) = dest.parent() {
            crate::fsutil::create_private_dir(parent).map_err(|e| Error::io(parent, e))?;
        }
        let tmp = dest.with_file_name(format!(
            ".{}.download-{}",
            dest.file_name().unwrap_or_default().to_string_lossy(),
            std::process::id()
        ));
        let mut f = tokio::fs::File::create(&tmp).await.map_err(|e| Error::io(&tmp, e))?;
        let mut hash = Sha256::new();
        let res: Result<()> = async {
            while let Some(chunk) = next_chunk(&mut body).await.map_err(|detail| Error::Remote {
                place: self.place.clone(),
                op: format!("downloading {key}"),
                detail,
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
                match next_chunk(&mut body).await {
                    Ok(Some(chunk)) => {
                        hash.update(&chunk);
                        if tx.send(Ok(chunk.to_vec())).await.is_err() {
                            // The decryption stopped (a wrong identity, damage): its error says why.
                            return Ok(None);
                        }
                    }
                    Ok(None) => return Ok(Some(hex::encode(hash.finalize()))),
                    Err(detail) => {
                        let _ = tx.send(Err(std::io::Error::other(detail.clone()))).await;
                        return Err(Error::Remote { place: place.clone(), op: format!("downloading {key}"), detail });
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

    /// Delete objects (relative keys): DeleteObjects, up to 1 000 keys a request, each request
    /// with the `Content-MD5` S3 requires. A key that was already gone counts as deleted (as
    /// S3 answers); any key the store could not delete fails the call, naming it. A store that
    /// does not implement DeleteObjects (501) has its keys deleted one at a time.
    pub async fn delete(&self, keys: &[String]) -> Result<()> {
        for batch in keys.chunks(DELETE_BATCH) {
            let what = match batch {
                [one] => format!("deleting {one}"),
                _ => format!("deleting {} objects ({} …)", batch.len(), batch[0]),
            };
            let ids = batch
                .iter()
                .map(|k| ObjectIdentifier::builder().key(self.full(k)).build())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| Error::Other(format!("{what}: {e}")))?;
            // Quiet: the answer lists only the keys that could not be deleted.
            let delete = Delete::builder()
                .set_objects(Some(ids))
                .quiet(true)
                .build()
                .map_err(|e| Error::Other(format!("{what}: {e}")))?;
            let sent = self
                .client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .customize()
                // The SDK adds its own CRC32 checksum; stores that predate it want Content-MD5.
                .mutate_request(|req| {
                    if let Some(md5) = req.body().bytes().map(content_md5) {
                        req.headers_mut().insert("content-md5", md5);
                    }
                })
                .send()
                .await;
            let out = match sent {
                Ok(out) => out,
                Err(e) if status_of(&e) == Some(501) => {
                    for k in batch {
                        self.delete_one(k).await?;
                    }
                    continue;
                }
                Err(e) => return Err(self.err(&what, e)),
            };
            if let Some(e) = out.errors().first() {
                let full = e.key().unwrap_or_default();
                let key = full.strip_prefix(&self.prefix).unwrap_or(full);
                let what = format!("deleting {key} ({} of {} keys not deleted)", out.errors().len(), batch.len());
                let (code, message) = (e.code().map(str::to_string), e.message().map(str::to_string));
                return Err(self.failure(&what, 200, code, message, String::new));
            }
        }
        Ok(())
    }

    async fn delete_one(&self, key: &str) -> Result<()> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.full(key))
            .send()
            .await
            .map(drop)
            .map_err(|e| self.err(&format!("deleting {key}"), e))
    }

    /// HEAD the bucket: it exists and the credentials may use it.
    pub async fn head_bucket(&self) -> Result<()> {
        match self.client.head_bucket().bucket(&self.bucket).send().await {
            Ok(_) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Err(Error::Remote {
                place: self.place.clone(),
                op: "checking the bucket".into(),
                detail: "no such bucket; create it (or fix remote.bucket)".into(),
            }),
            Err(e) => Err(self.err("checking the bucket", e)),
        }
    }

    /// Create the bucket if it does not exist (tests, first use).
    pub async fn ensure_bucket(&self) -> Result<()> {
        if self.head_bucket().await.is_ok() {
            return Ok(());
        }
        match self.client.create_bucket().bucket(&self.bucket).send().await {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.code(), Some("BucketAlreadyOwnedByYou" | "BucketAlreadyExists")) => Ok(()),
            Err(e) => Err(self.err("creating the bucket", e)),
        }
    }
}

/// A part sent: its number and the ETag the store gave it.
type Part = (u16, String);

/// The HTTP status of a failed request's answer, when there was one.
fn status_of<E>(e: &SdkError<E, HttpResponse>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

/// An error and its causes in words ("dispatch failure: io error: …: Connection refused"), the
/// way slipway reports a transport failure: no URL, header or body of the request is in them.
pub(crate) fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// A body's length as the SDK takes it (a buffer is never near `i64::MAX`).
fn len_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// One read of a download's body within [`READ_TIMEOUT`]: the next chunk, or None at its end.
async fn next_chunk(body: &mut ByteStream) -> std::result::Result<Option<Bytes>, String> {
    match tokio::time::timeout(READ_TIMEOUT, body.try_next()).await {
        Ok(r) => r.map_err(|e| causes(&e)),
        Err(_) => Err(format!("no data for {} s", READ_TIMEOUT.as_secs())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upload_id_of_an_answer_with_the_wrong_root_is_read_when_it_is_the_only_one() {
        let rclone = "<?xml version=\"1.0\"?>\n<InitiateMultipartUpload><Bucket>b</Bucket><Key>k</Key>\
                      <UploadId> abc123 </UploadId></InitiateMultipartUpload>";
        assert_eq!(upload_id_of(rclone).as_deref(), Some("abc123"));
        assert_eq!(upload_id_of("<X><UploadId>a</UploadId><UploadId>b</UploadId></X>"), None);
        assert_eq!(upload_id_of("<X><UploadId> </UploadId></X>"), None);
        assert_eq!(upload_id_of("<Error><Code>InternalError</Code></Error>"), None);
    }

    #[test]
    fn virtual_host_addressing_needs_a_host_label_bucket_and_a_named_endpoint() {
        let cfg = |endpoint: &str, bucket: &str, path_style: bool| {
            let mut c: RemoteConfig = toml::from_str(&format!("bucket = \"{bucket}\"")).unwrap();
            c.endpoint = Some(endpoint.into());
            c.path_style = path_style;
            c
        };
        assert!(endpoint_url(&cfg("https://nyc3.digitaloceanspaces.com", "my-backups.x", false)).is_ok());
        for (e, b) in [("http://127.0.0.1:9000", "b1"), ("https://s3.example.com", "Under_Score")] {
            assert!(matches!(endpoint_url(&cfg(e, b, false)), Err(Error::Config(_))), "{e} {b}");
            assert!(endpoint_url(&cfg(e, b, true)).is_ok(), "{e} {b}");
        }
        assert!(matches!(endpoint_url(&cfg("ftp://h", "b", true)), Err(Error::Config(_))));
        assert!(matches!(endpoint_url(&cfg("not a url", "b", true)), Err(Error::Config(_))));
    }

    /// A remote of an S3 "server" at `endpoint`, with a credentials file whose secret is
    /// `secret`.
    async fn remote_at(endpoint: &str, secret: &str, dir: &Path) -> Remote {
        let creds = dir.join("creds");
        std::fs::write(&creds, format!("[default]\naws_access_key_id = AKIDTEST\naws_secret_access_key = {secret}\n"))
            .unwrap();
        let mut cfg: RemoteConfig = toml::from_str("bucket = \"b\"\npath_style = true").unwrap();
        cfg.endpoint = Some(endpoint.into());
        cfg.credentials_file = Some(creds);
        Remote::connect(&cfg).await.unwrap()
    }

    #[tokio::test]
    async fn a_dropped_connection_is_tried_max_attempts_times_and_reported_without_the_secret() {
        // A "server" that accepts each connection and closes it at once, counting them.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let count = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let seen = count.clone();
        std::thread::spawn(move || {
            for c in listener.incoming() {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                drop(c);
            }
        });
        let d = tempfile::tempdir().unwrap();
        let remote = remote_at(&format!("http://127.0.0.1:{port}"), "c0ffee5ecret", d.path()).await;
        let e = remote.head("daily/k").await.unwrap_err();
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), MAX_ATTEMPTS);
        let text = e.to_string();
        assert!(matches!(e, Error::Remote { .. }), "{text}");
        assert!(!text.contains("c0ffee5ecret") && !text.contains("AKIDTEST"), "{text}");
    }

    #[tokio::test]
    async fn refused_credentials_are_remote_auth_and_a_server_error_names_its_code() {
        // Answers every request with the status and S3 error document of the next entry.
        let answers = [("403 Forbidden", "SignatureDoesNotMatch"), ("400 Bad Request", "BadDigest")];
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            for (status, code) in answers {
                let (mut c, _) = listener.accept().await.unwrap();
                let mut buf = vec![0u8; 65536];
                let _ = c.read(&mut buf).await;
                let body = format!("<?xml version=\"1.0\"?><Error><Code>{code}</Code><Message>m</Message></Error>");
                let answer = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = c.write_all(answer.as_bytes()).await;
            }
        });
        let d = tempfile::tempdir().unwrap();
        let remote = remote_at(&format!("http://127.0.0.1:{port}"), "c0ffee5ecret", d.path()).await;
        let e = remote.list("daily/").await.unwrap_err();
        assert!(matches!(&e, Error::RemoteAuth { code, .. } if code == "SignatureDoesNotMatch"), "{e}");
        let e = remote.list("daily/").await.unwrap_err();
        assert!(matches!(&e, Error::Remote { detail, .. } if detail == "BadDigest: m"), "{e}");
    }
}
