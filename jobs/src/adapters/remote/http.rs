//! Sending the remote's S3 requests and reading S3's answers. Each attempt is signed anew by
//! rusty-s3 (a presigned URL: SigV4 in the query string, the payload `UNSIGNED-PAYLOAD`) and
//! sent by reqwest over rustls. A presigned URL carries its signature in `X-Amz-Signature`, so
//! no URL is ever logged or put in an error: transport errors are described without theirs.
//!
//! Retries are those of the AWS SDK's standard mode, which slipway used before: up to
//! [`MAX_ATTEMPTS`] attempts, exponential backoff from [`INITIAL_BACKOFF`] with full jitter,
//! on transport errors (refused or reset connections, timeouts), 5xx answers, 429 and S3's
//! throttling and transient error codes (`SlowDown`, `RequestTimeout`, `InternalError`, …).
//! Every body is an in-memory buffer, so every request can be sent again as it was.

use std::time::Duration;

use crate::error::Error;

/// How long a signed URL stays valid: each attempt signs its own, just before it is sent.
pub const SIGN_TTL: Duration = Duration::from_secs(3600);
/// Attempts per request (the SDK's standard mode, as slipway configured it).
pub const MAX_ATTEMPTS: u32 = 5;
/// The first retry waits up to this long; each later one up to twice the one before.
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(200);
/// No wait between attempts is longer than this.
const MAX_BACKOFF: Duration = Duration::from_secs(20);
/// One attempt of a request that is not a download, answer included.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(300);

/// The HTTP client of the remote: rustls with ring, connect and read timeouts.
pub fn client() -> Result<reqwest::Client, Error> {
    reqwest::Client::builder()
        // A redirect would carry a presigned URL to another host, whose signature cannot
        // match there: S3's answer (301 PermanentRedirect, a wrong region) is the error.
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| Error::Other(format!("remote: building the HTTP client: {}", describe(e))))
}

/// How a request failed, for [`super::Remote`] to name in an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The store answered with an error: its status, and its S3 error code and message.
    Status {
        /// The HTTP status (200 for an error document in a successful answer).
        status: u16,
        /// S3's `<Code>`, when the answer has one.
        code: Option<String>,
        /// S3's `<Message>`, when the answer has one.
        message: Option<String>,
    },
    /// No answer (connection, timeout, a body cut short), or one slipway cannot read.
    Transport(String),
}

impl Failure {
    /// Whether sending the same request again may succeed (the SDK's standard mode).
    fn transient(&self) -> bool {
        match self {
            Failure::Transport(_) => true,
            Failure::Status { status, code, .. } => {
                matches!(status, 429 | 500 | 502 | 503 | 504)
                    || matches!(
                        code.as_deref(),
                        Some(
                            "SlowDown"
                                | "Throttling"
                                | "ThrottlingException"
                                | "RequestThrottled"
                                | "RequestThrottledException"
                                | "TooManyRequestsException"
                                | "RequestLimitExceeded"
                                | "BandwidthLimitExceeded"
                                | "PriorRequestNotComplete"
                                | "RequestTimeout"
                                | "RequestTimeoutException"
                                | "InternalError"
                        )
                    )
            }
        }
    }
}

/// Send the request `build` makes (signed anew for each attempt) until it succeeds, fails for
/// good or has had [`MAX_ATTEMPTS`] attempts. Returns the successful answer, body unread.
pub async fn send(build: impl Fn() -> reqwest::RequestBuilder) -> Result<reqwest::Response, Failure> {
    retrying(|| async {
        match build().send().await {
            Ok(r) if r.status().is_success() => Ok(r),
            Ok(r) => Err(failure(r).await),
            Err(e) => Err(Failure::Transport(describe(e))),
        }
    })
    .await
}

/// [`send`], then read the whole answer as text. An error document in a successful answer
/// (S3 can answer `200 OK` to a CompleteMultipartUpload that failed) is a failure, retried
/// like any other.
pub async fn send_text(build: impl Fn() -> reqwest::RequestBuilder) -> Result<String, Failure> {
    retrying(|| async {
        let r = match build().send().await {
            Ok(r) if r.status().is_success() => r,
            Ok(r) => return Err(failure(r).await),
            Err(e) => return Err(Failure::Transport(describe(e))),
        };
        let status = r.status().as_u16();
        let text = r.text().await.map_err(|e| Failure::Transport(describe(e)))?;
        if root_is_error(&text) {
            return Err(Failure::Status { status, code: tag(&text, "Code"), message: tag(&text, "Message") });
        }
        Ok(text)
    })
    .await
}

async fn retrying<T, F, Fut>(attempt: F) -> Result<T, Failure>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, Failure>>,
{
    let mut n = 1;
    loop {
        match attempt().await {
            Ok(t) => return Ok(t),
            Err(f) if n < MAX_ATTEMPTS && f.transient() => {
                let wait = backoff(n);
                tracing::debug!(attempt = n, ?f, ?wait, "remote: transient failure, retrying");
                tokio::time::sleep(wait).await;
                n += 1;
            }
            Err(f) => return Err(f),
        }
    }
}

/// The wait after attempt `n` (from 1): up to `INITIAL_BACKOFF · 2^(n-1)`, at most
/// `MAX_BACKOFF`, scaled by a random factor in [0, 1) so that clients do not retry in step.
pub fn backoff(n: u32) -> Duration {
    let cap = INITIAL_BACKOFF.saturating_mul(1 << n.saturating_sub(1).min(16)).min(MAX_BACKOFF);
    cap.mul_f64(fastrand::f64())
}

async fn failure(r: reqwest::Response) -> Failure {
    let status = r.status().as_u16();
    // The body of an error is S3's XML (absent for HEAD); anything else is only its status.
    let text = r.text().await.unwrap_or_default();
    Failure::Status { status, code: tag(&text, "Code"), message: tag(&text, "Message") }
}

/// A transport error in words, without the URL reqwest would name (its query is a signature),
/// with its causes: "error sending request: client error (Connect): tcp connect error: …".
pub fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
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

/// Whether an XML answer's root element is `<Error>` (an S3 error document).
fn root_is_error(text: &str) -> bool {
    let mut rest = text.trim_start();
    // The XML declaration, comments and processing instructions before the root.
    while let Some(r) = rest.strip_prefix("<?").or_else(|| rest.strip_prefix("<!--")) {
        let end = if rest.starts_with("<?") { "?>" } else { "-->" };
        let Some((_, after)) = r.split_once(end) else { return false };
        rest = after.trim_start();
    }
    rest.starts_with("<Error>") || rest.starts_with("<Error ")
}

/// The text of the first `<name>` element of an XML answer, unescaped.
pub fn tag(text: &str, name: &str) -> Option<String> {
    tags(text, name).next()
}

/// The texts of every `<name>` element of an XML answer, in order, unescaped. Enough for
/// S3's flat answers (`<Code>`, `<Key>`, `<UploadId>`), whatever their namespace declarations.
pub fn tags<'t>(text: &'t str, name: &str) -> impl Iterator<Item = String> + 't {
    elements(text, name).map(unescape)
}

/// The content of every `<name>` element of an XML answer, in order, as it is (for elements
/// that hold others, like the `<Upload>`s of ListMultipartUploads).
pub fn elements<'t>(text: &'t str, name: &str) -> impl Iterator<Item = &'t str> + 't {
    let (open, close) = (format!("<{name}>"), format!("</{name}>"));
    let mut rest = text;
    std::iter::from_fn(move || {
        let (_, after) = rest.split_once(open.as_str())?;
        let (inner, after) = after.split_once(close.as_str())?;
        rest = after;
        Some(inner)
    })
}

/// XML's five named entities and numeric character references.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let Some(end) = after.find(';') else {
            out.push_str(&rest[i..]);
            return out;
        };
        let entity = &after[..end];
        let ch = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .map(|h| u32::from_str_radix(h, 16))
                .or_else(|| entity.strip_prefix('#').map(str::parse))
                .and_then(Result::ok)
                .and_then(char::from_u32),
        };
        match ch {
            Some(c) => {
                out.push(c);
                rest = &after[end + 1..];
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_code_and_message_of_an_error_document_are_read_and_unescaped() {
        let doc = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>NoSuchKey</Code>\
                   <Message>The key &quot;a&amp;b&quot; &#x41;&#66; is &lt;gone&gt; &bogus;</Message></Error>";
        assert!(root_is_error(doc));
        assert_eq!(tag(doc, "Code").as_deref(), Some("NoSuchKey"));
        assert_eq!(tag(doc, "Message").as_deref(), Some("The key \"a&b\" AB is <gone> &bogus;"));
        assert_eq!(tag(doc, "Resource"), None);
    }

    #[test]
    fn only_an_error_root_is_an_error_document() {
        let nested = "<?xml version=\"1.0\"?><DeleteResult xmlns=\"x\"><Error><Key>k</Key></Error></DeleteResult>";
        assert!(!root_is_error(nested));
        assert!(root_is_error("  <!-- c --><Error xmlns=\"x\"><Code>InternalError</Code></Error>"));
        assert!(!root_is_error("<ErrorLike/>"));
        assert!(!root_is_error(""));
    }

    #[test]
    fn every_element_of_a_name_is_listed_in_order() {
        let doc = "<ListMultipartUploadsResult><Upload><Key>a/1</Key><UploadId>x</UploadId></Upload>\
                   <Upload><Key>a&amp;2</Key><UploadId>y</UploadId></Upload></ListMultipartUploadsResult>";
        assert_eq!(tags(doc, "Key").collect::<Vec<_>>(), ["a/1", "a&2"]);
        assert_eq!(tags(doc, "UploadId").collect::<Vec<_>>(), ["x", "y"]);
        let uploads: Vec<&str> = elements(doc, "Upload").collect();
        assert_eq!(uploads, ["<Key>a/1</Key><UploadId>x</UploadId>", "<Key>a&amp;2</Key><UploadId>y</UploadId>"]);
        assert_eq!(tag(uploads[1], "Key").as_deref(), Some("a&2"));
    }

    #[test]
    fn server_errors_throttling_and_transport_errors_are_retried_and_the_rest_are_not() {
        let st = |status, code: Option<&str>| Failure::Status { status, code: code.map(Into::into), message: None };
        for f in [
            st(500, Some("InternalError")),
            st(503, Some("SlowDown")),
            st(429, None),
            st(400, Some("RequestTimeout")),
            st(200, Some("InternalError")),
            Failure::Transport("connection reset".into()),
        ] {
            assert!(f.transient(), "{f:?}");
        }
        for f in [st(403, Some("SignatureDoesNotMatch")), st(404, Some("NoSuchKey")), st(400, Some("BadDigest"))] {
            assert!(!f.transient(), "{f:?}");
        }
    }

    #[tokio::test]
    async fn a_refused_connection_is_tried_max_attempts_times_and_reported_without_the_signed_url() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = format!("http://127.0.0.1:{port}/bucket/key?X-Amz-Signature=c0ffee5ecret");
        let (client, tries) = (client().unwrap(), std::sync::atomic::AtomicU32::new(0));
        let f = send(|| {
            tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            client.get(url.as_str())
        })
        .await
        .unwrap_err();
        assert_eq!(tries.into_inner(), MAX_ATTEMPTS);
        let Failure::Transport(text) = f else { panic!("{f:?}") };
        assert!(!text.contains("c0ffee5ecret") && !text.contains("127.0.0.1"), "{text}");
        assert!(text.contains("onnect"), "{text}");
    }

    #[test]
    fn the_backoff_grows_exponentially_with_jitter_and_is_capped() {
        for n in 1..=12 {
            let cap = INITIAL_BACKOFF.saturating_mul(1 << (n - 1)).min(MAX_BACKOFF);
            for _ in 0..50 {
                assert!(backoff(n) < cap.max(Duration::from_nanos(1)), "attempt {n}");
            }
        }
        assert!((0..200).map(|_| backoff(3)).any(|d| d > Duration::from_millis(400)));
    }
}
