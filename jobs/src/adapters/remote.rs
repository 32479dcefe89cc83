//! The remote store: DigitalOcean Spaces or any S3-compatible API, coded to the S3 API only.
//! Requests are signed by rusty-s3 (SigV4 presigned URLs, `UNSIGNED-PAYLOAD`) and sent by
//! reqwest (rustls with ring); [`http`] sends them, with timeouts and the AWS SDK's standard
//! retries, and reads S3's error documents. Custom endpoint, region, path-style or
//! virtual-host addressing. Credentials come from `[remote] credentials_file`, else the
//! `AWS_*` environment, else the shared AWS credentials file ([`credentials`] says exactly
//! how) and are never logged or reported; neither is a signed URL, whose query is a signature.
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
pub mod http;
mod listing;

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use rusty_s3::actions::{CreateMultipartUpload, ObjectIdentifier};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use self::http::{Failure, ATTEMPT_TIMEOUT, SIGN_TTL};
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
    http: reqwest::Client,
    /// The bucket's URLs and the credentials that sign requests to it.
    s3: Arc<(Bucket, Credentials)>,
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

/// The upload id of a CreateMultipartUpload answer. Servers built on older gofakes3 (`rclone
/// serve s3` among them, v1.75 included) name the root element `InitiateMultipartUpload`, with
/// no namespace, instead of the S3 API's `InitiateMultipartUploadResult`, which rusty-s3 rightly
/// rejects; the upload id in it is still the one to use, so a successful answer with exactly
/// one `<UploadId>` is read whatever its root. (Fixed upstream in gofakes3 PR #96.)
fn upload_id_of(text: &str) -> Option<String> {
    if let Ok(r) = CreateMultipartUpload::parse_response(text) {
        return Some(r.upload_id().to_string());
    }
    let mut ids = http::tags(text, "UploadId");
    match (ids.next(), ids.next()) {
        (Some(id), None) if !id.trim().is_empty() => Some(id.trim().to_string()),
        _ => None,
    }
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

impl Remote {
    /// Build a client for `cfg` and find its credentials (no request is made).
    pub async fn connect(cfg: &RemoteConfig) -> Result<Remote> {
        let creds = credentials::load(cfg.credentials_file.as_deref(), |name| std::env::var(name).ok())?;
        // No endpoint: AWS S3 itself, the region's endpoint.
        let endpoint = cfg.endpoint.clone().unwrap_or_else(|| format!("https://s3.{}.amazonaws.com", cfg.region));
        let url: reqwest::Url = endpoint.parse().map_err(|e| {
            Error::Config(format!("remote.endpoint \"{endpoint}\": {e}; e.g. \"https://nyc3.digitaloceanspaces.com\""))
        })?;
        let style = if cfg.path_style { UrlStyle::Path } else { UrlStyle::VirtualHost };
        let bucket = Bucket::new(url, style, cfg.bucket.clone(), cfg.region.clone()).map_err(|e| {
            Error::Config(format!(
                "remote: bucket \"{}\" at endpoint \"{endpoint}\": {e:?}; the endpoint must be an http(s) URL, and \
                 a bucket name that is not a host name label or an endpoint that is an IP address needs \
                 remote.path_style = true",
                cfg.bucket
            ))
        })?;
        let seal = match &cfg.encrypt {
            Some(e) => Some(Arc::new(crypt::read_recipients(&e.recipients_file, "remote.encrypt.recipients_file")?)),
            None => None,
        };
        let prefix = cfg.prefix.trim_matches('/').to_string();
        let id = format!("{} bucket {} prefix {prefix}", endpoint.trim_end_matches('/'), cfg.bucket);
        Ok(Remote {
            id,
            http: http::client()?,
            s3: Arc::new((bucket, creds)),
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

    fn bucket(&self) -> &Bucket {
        &self.s3.0
    }

    fn creds(&self) -> Option<&Credentials> {
        Some(&self.s3.1)
    }

    /// The request for `action`, signed now (the caller adds the headers the action signed, and
    /// the body). `timeout`: the attempt's limit, answer included (none for a download, whose
    /// body streams for as long as it takes; the client's read timeout still applies).
    fn request<'a>(&self, action: &impl S3Action<'a>, timeout: Option<std::time::Duration>) -> reqwest::RequestBuilder {
        let method = match action_method(action) {
            rusty_s3::Method::Head => reqwest::Method::HEAD,
            rusty_s3::Method::Get => reqwest::Method::GET,
            rusty_s3::Method::Post => reqwest::Method::POST,
            rusty_s3::Method::Put => reqwest::Method::PUT,
            rusty_s3::Method::Delete => reqwest::Method::DELETE,
        };
        let mut r = self.http.request(method, action.sign(SIGN_TTL));
        if let Some(t) = timeout {
            r = r.timeout(t);
        }
        r
    }

    fn err(&self, what: &str, f: Failure) -> Error {
        match f {
            Failure::Status { status, code, message } => {
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
                    (None, _) => format!("HTTP {status}"),
                };
                Error::Remote { place: self.place.clone(), op: what.to_string(), detail }
            }
            Failure::Transport(detail) => Error::Remote { place: self.place.clone(), op: what.to_string(), detail },
        }
    }

    /// An answer slipway could not read.
    fn unreadable(&self, what: &str, e: impl std::fmt::Display) -> Error {
        Error::Remote { place: self.place.clone(), op: what.to_string(), detail: format!("unreadable answer: {e}") }
    }

    /// HEAD one object: its size and sha256 metadata, or None when absent.
    pub async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        let full = self.full(key);
        let sent =
            http::send(|| self.request(&self.bucket().head_object(self.creds(), &full), Some(ATTEMPT_TIMEOUT))).await;
        let h = match sent {
            Ok(h) => h,
            Err(Failure::Status { status: 404, .. }) => return Ok(None),
            Err(f) => return Err(self.err(&format!("checking {key}"), f)),
        };
        let meta = |k: &str| metadata(h.headers(), k);
        Ok(Some(ObjectInfo {
            key: key.to_string(),
            size: header(h.headers(), reqwest::header::CONTENT_LENGTH.as_str())
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
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
        let md5 = content_md5(&body);
        http::send(|| {
            let mut a = self.bucket().put_object(self.creds(), full);
            let mut r = self.request(with_meta(&mut a, meta), Some(ATTEMPT_TIMEOUT));
            for (k, v) in meta {
                r = r.header(format!("x-amz-meta-{k}"), v.as_str());
            }
            r.header("content-md5", md5.as_str()).body(body.clone())
        })
        .await
        .map(drop)
        .map_err(|f| self.err(&format!("uploading {key}"), f))
    }

    /// Start a multipart upload of `full` (for `key`) with `meta`: its upload id.
    async fn create_upload(&self, key: &str, full: &str, meta: &[(&str, String)]) -> Result<String> {
        let what = format!("starting the upload of {key}");
        let text = http::send_text(|| {
            let mut a = self.bucket().create_multipart_upload(self.creds(), full);
            let mut r = self.request(with_meta(&mut a, meta), Some(ATTEMPT_TIMEOUT));
            for (k, v) in meta {
                r = r.header(format!("x-amz-meta-{k}"), v.as_str());
            }
            r
        })
        .await
        .map_err(|f| self.err(&what, f))?;
        upload_id_of(&text).ok_or_else(|| self.unreadable(&what, "no upload id"))
    }

    /// Abort multipart upload `upload_id` of `full`, best effort: a failure leaves an upload
    /// that no listing shows as an object, and `sync` aborts it next time.
    async fn abort(&self, full: &str, upload_id: &str) {
        let r = http::send(|| {
            self.request(&self.bucket().abort_multipart_upload(self.creds(), full, upload_id), Some(ATTEMPT_TIMEOUT))
        })
        .await;
        if let Err(f) = r {
            tracing::warn!(place = %self.place, key = full, failure = ?f, "remote: aborting a multipart upload failed");
        }
    }

    /// Complete multipart upload `upload_id` of `full` (the object for `key`) from its parts,
    /// in part order: the one completion both the plain and the encrypted upload end with.
    async fn complete(&self, key: &str, full: &str, upload_id: &str, mut parts: Vec<Part>) -> Result<()> {
        let what = format!("completing the upload of {key}");
        parts.sort_by_key(|p| p.0);
        if parts.iter().enumerate().any(|(i, p)| usize::from(p.0) != i + 1) {
            return Err(Error::Other(format!("{what}: the parts are not numbered 1 to {}", parts.len())));
        }
        // S3 answers a completion that failed with an error document, status 200 or not:
        // send_text reads the answer and makes it a failure.
        http::send_text(|| {
            let a = self.bucket().complete_multipart_upload(
                self.creds(),
                full,
                upload_id,
                parts.iter().map(|p| p.1.as_str()),
            );
            let r = self.request(&a, Some(ATTEMPT_TIMEOUT));
            r.body(a.body())
        })
        .await
        .map(drop)
        .map_err(|f| self.err(&what, f))
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
        let md5 = content_md5(&buf);
        let r = http::send(|| {
            let a = self.bucket().upload_part(self.creds(), full, n, upload_id);
            self.request(&a, Some(ATTEMPT_TIMEOUT)).header("content-md5", md5.as_str()).body(buf.clone())
        })
        .await
        .map_err(|f| self.err(&format!("uploading part {n} of {key}"), f))?;
        let etag = header(r.headers(), reqwest::header::ETAG.as_str())
            .ok_or_else(|| self.unreadable(&format!("uploading part {n} of {key}"), "no ETag"))?;
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
        let full = self.full(key);
        // No limit on the whole answer: the body streams for as long as it takes, each read
        // within the client's read timeout. A body cut short is not retried (it was partly
        // written): the download fails and the next run starts it again.
        let mut got = http::send(|| self.request(&self.bucket().get_object(self.creds(), &full), None))
            .await
            .map_err(|f| self.err(&format!("downloading {key}"), f))?;
        let meta = |k: &str| metadata(got.headers(), k);
        if let Some(enc) = meta(ENC_META) {
            let object_sha = meta(SHA256_META);
            return self.download_sealed(key, dest, expected_sha256, &enc, object_sha.as_deref(), got).await;
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
        let mut hash = Sha256::new();
        let res: Result<()> = async {
            while let Some(chunk) = got.chunk().await.map_err(|e| Error::Remote {
                place: self.place.clone(),
                op: format!("downloading {key}"),
                detail: http::describe(e),
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
        mut body: reqwest::Response,
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
                match body.chunk().await {
                    Ok(Some(chunk)) => {
                        hash.update(&chunk);
                        if tx.send(Ok(chunk.to_vec())).await.is_err() {
                            // The decryption stopped (a wrong identity, damage): its error says why.
                            return Ok(None);
                        }
                    }
                    Ok(None) => return Ok(Some(hex::encode(hash.finalize()))),
                    Err(e) => {
                        let detail = http::describe(e);
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
            let ids: Vec<ObjectIdentifier> = batch.iter().map(|k| ObjectIdentifier::new(self.full(k))).collect();
            let sent = http::send_text(|| {
                let mut a = self.bucket().delete_objects(self.creds(), ids.iter());
                // Quiet: the answer lists only the keys that could not be deleted.
                a.set_quiet(true);
                let r = self.request(&a, Some(ATTEMPT_TIMEOUT));
                let (body, md5) = a.body_with_md5();
                r.header("content-md5", md5).body(body)
            })
            .await;
            let text = match sent {
                Ok(t) => t,
                Err(Failure::Status { status: 501, .. }) => {
                    for k in batch {
                        self.delete_one(k).await?;
                    }
                    continue;
                }
                Err(f) => return Err(self.err(&what, f)),
            };
            // The keys not deleted, one `<Error>` each, read with the scanner rather than
            // rusty-s3's parser: servers differ in the namespace of `<DeleteResult>` (rclone's
            // declares none), and only these elements matter.
            let errors: Vec<&str> = http::elements(&text, "Error").collect();
            if let Some(e) = errors.first() {
                let full = http::tag(e, "Key").unwrap_or_default();
                let key = full.strip_prefix(&self.prefix).unwrap_or(&full);
                let failure =
                    Failure::Status { status: 200, code: http::tag(e, "Code"), message: http::tag(e, "Message") };
                let what = format!("deleting {key} ({} of {} keys not deleted)", errors.len(), batch.len());
                return Err(self.err(&what, failure));
            }
        }
        Ok(())
    }

    async fn delete_one(&self, key: &str) -> Result<()> {
        let full = self.full(key);
        http::send(|| self.request(&self.bucket().delete_object(self.creds(), &full), Some(ATTEMPT_TIMEOUT)))
            .await
            .map(drop)
            .map_err(|f| self.err(&format!("deleting {key}"), f))
    }

    /// HEAD the bucket: it exists and the credentials may use it.
    pub async fn head_bucket(&self) -> Result<()> {
        match http::send(|| self.request(&self.bucket().head_bucket(self.creds()), Some(ATTEMPT_TIMEOUT))).await {
            Ok(_) => Ok(()),
            Err(Failure::Status { status: 404, .. }) => Err(Error::Remote {
                place: self.place.clone(),
                op: "checking the bucket".into(),
                detail: "no such bucket; create it (or fix remote.bucket)".into(),
            }),
            Err(f) => Err(self.err("checking the bucket", f)),
        }
    }

    /// Create the bucket if it does not exist (tests, first use).
    pub async fn ensure_bucket(&self) -> Result<()> {
        if self.head_bucket().await.is_ok() {
            return Ok(());
        }
        let creds = &self.s3.1;
        let created = http::send(|| {
            let a = self.bucket().create_bucket(creds);
            self.request(&a, Some(ATTEMPT_TIMEOUT)).body(a.body())
        })
        .await;
        match created {
            Ok(_) => Ok(()),
            Err(Failure::Status { code: Some(c), .. })
                if c == "BucketAlreadyOwnedByYou" || c == "BucketAlreadyExists" =>
            {
                Ok(())
            }
            Err(f) => Err(self.err("creating the bucket", f)),
        }
    }
}

/// A part sent: its number and the ETag the store gave it.
type Part = (u16, String);

/// The method an action is signed for.
fn action_method<'a, A: S3Action<'a>>(_: &A) -> rusty_s3::Method {
    A::METHOD
}

/// Sign the `x-amz-meta-*` headers of `meta` with `action` (S3 refuses unsigned `x-amz-*`
/// headers); the request must send them too, with the same values.
fn with_meta<'a, 'b, A: S3Action<'a>>(action: &'b mut A, meta: &[(&str, String)]) -> &'b A {
    for (k, v) in meta {
        action.headers_mut().insert(format!("x-amz-meta-{k}"), v.clone());
    }
    action
}

/// A header of an answer, when it is text.
fn header(headers: &reqwest::header::HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// The `x-amz-meta-<key>` metadata of an answer.
fn metadata(headers: &reqwest::header::HeaderMap, key: &str) -> Option<String> {
    header(headers, &format!("x-amz-meta-{key}"))
}
