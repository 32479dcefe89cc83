//! Listing the bucket under the prefix: its objects (ListObjectsV2, paginated, a token
//! handed out twice refused) and the multipart uploads a dead run left (ListMultipartUploads),
//! of which only slipway's own are aborted.

use super::http::{self, ATTEMPT_TIMEOUT, SIGN_TTL};
use super::{ObjectInfo, Remote};
use crate::error::Result;
use rusty_s3::actions::ListObjectsV2;

/// The continuation tokens one listing was handed. A server that hands back a token it gave
/// before — the one it was just given, or one from pages ago (a cycle) — would have the listing
/// go round forever: [`Pages::next`] refuses it.
#[derive(Debug, Default)]
struct Pages {
    seen: std::collections::HashSet<String>,
}

impl Pages {
    /// The token to ask for the next page with, or why the listing cannot go on.
    fn next(&mut self, token: String) -> std::result::Result<String, String> {
        if self.seen.insert(token.clone()) {
            return Ok(token);
        }
        Err(format!(
            "after {} page(s) the server handed back continuation token \"{token}\", which it had handed out \
             before: the listing would never end (a bug of the S3 server; nothing was changed)",
            self.seen.len() + 1
        ))
    }
}

impl Remote {
    /// Every object under `key_prefix` (relative), paginated.
    pub async fn list(&self, key_prefix: &str) -> Result<Vec<ObjectInfo>> {
        let what = "listing objects";
        let prefix = self.full(key_prefix);
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        let mut pages = Pages::default();
        loop {
            let text = http::send_text(|| {
                let mut a = ListObjectsV2::new(self.bucket(), self.creds());
                a.with_prefix(prefix.as_str());
                if let Some(t) = &token {
                    a.with_continuation_token(t.as_str());
                }
                self.request(&a, Some(ATTEMPT_TIMEOUT))
            })
            .await
            .map_err(|f| self.err(what, f))?;
            let page = ListObjectsV2::parse_response(&text).map_err(|e| self.unreadable(what, e))?;
            for o in page.contents {
                out.push(ObjectInfo {
                    key: o.key.strip_prefix(&self.prefix).unwrap_or(&o.key).to_string(),
                    size: o.size.unwrap_or(0),
                    sha256: None,
                    encryption: None,
                    plain_sha256: None,
                    plain_size: None,
                });
            }
            match page.next_continuation_token {
                Some(t) => token = Some(pages.next(t).map_err(|e| self.unreadable(what, e))?),
                None => return Ok(out),
            }
        }
    }

    /// Abort multipart uploads left by an interrupted run (best effort: not every
    /// S3-compatible server lists them; the first 1 000 listed are aborted, the rest next
    /// time). Returns how many were aborted.
    ///
    /// Only uploads of keys slipway itself writes are touched: under the prefix, and there under
    /// its own key layout (`daily/`, `rollout/`), listed one layout root at a time. With an
    /// empty `remote.prefix` the bucket may hold other hosts' and other tools' uploads in
    /// flight: those are never aborted.
    pub async fn abort_stale_uploads(&self) -> usize {
        let mut n = 0;
        for kind in crate::layout::SnapshotKind::ALL {
            let root = format!("{}{}", self.prefix, kind.key_root());
            n += self.abort_stale_uploads_under(&root).await;
        }
        n
    }

    /// [`Remote::abort_stale_uploads`] for the keys that start with `root` (prefix included).
    async fn abort_stale_uploads_under(&self, root: &str) -> usize {
        let listed = http::send_text(|| {
            // rusty-s3 has no ListMultipartUploads: its signer presigns the URL all the same.
            let (bucket, creds) = (self.bucket(), &self.s3.1);
            let query = [("prefix", root), ("uploads", "1")];
            let url = rusty_s3::signing::sign(
                &jiff::Timestamp::now(),
                rusty_s3::Method::Get,
                bucket.base_url().clone(),
                creds.key(),
                creds.secret(),
                creds.token(),
                bucket.region(),
                SIGN_TTL.as_secs(),
                query.into_iter(),
                std::iter::empty(),
            );
            self.http.get(url).timeout(ATTEMPT_TIMEOUT)
        })
        .await;
        let Ok(text) = listed else { return 0 };
        let mut n = 0;
        for upload in http::elements(&text, "Upload") {
            let (Some(k), Some(id)) = (http::tag(upload, "Key"), http::tag(upload, "UploadId")) else { continue };
            // Checked here too: a server that ignores the prefix must not have another host's
            // (or another tool's) uploads, in flight in the same bucket, aborted.
            if k.starts_with(root) {
                let r = http::send(|| {
                    self.request(&self.bucket().abort_multipart_upload(self.creds(), &k, &id), Some(ATTEMPT_TIMEOUT))
                })
                .await;
                if r.is_ok() {
                    n += 1;
                }
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_refuses_a_continuation_token_handed_out_before_however_many_pages_ago() {
        let mut pages = Pages::default();
        assert_eq!(pages.next("a".into()), Ok("a".into()));
        assert_eq!(pages.next("b".into()), Ok("b".into()));
        assert_eq!(pages.next("c".into()), Ok("c".into()));
        // A cycle (a → b → c → a) is refused as surely as the token just given (c → c).
        let cycled = pages.next("a".into()).unwrap_err();
        assert!(cycled.contains("\"a\"") && cycled.contains("never end"), "{cycled}");
        let mut again = Pages::default();
        assert!(again.next("x".into()).is_ok());
        assert!(again.next("x".into()).is_err());
    }
}
