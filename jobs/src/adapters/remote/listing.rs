//! Listing the bucket under the prefix: its objects (ListObjectsV2, paginated here so that a
//! continuation token handed out twice is an error: the SDK's paginator quietly ends a listing
//! at a token repeated at once, and goes round a cycle forever) and the multipart uploads a
//! dead run left (ListMultipartUploads), of which only slipway's own are aborted.

use super::{ObjectInfo, Remote};
use crate::error::Result;

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
    /// Every object under `key_prefix` (relative), paginated. The answer is untrusted: an
    /// object without a key or with a negative size makes the listing unreadable.
    pub async fn list(&self, key_prefix: &str) -> Result<Vec<ObjectInfo>> {
        let what = "listing objects";
        let prefix = self.full(key_prefix);
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        let mut pages = Pages::default();
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&prefix)
                .set_continuation_token(token.clone())
                .send()
                .await
                .map_err(|e| self.err(what, e))?;
            for o in page.contents() {
                let Some(key) = o.key() else { return Err(self.unreadable(what, "an object without a key")) };
                let size = u64::try_from(o.size().unwrap_or(0))
                    .map_err(|_| self.unreadable(what, format!("{key}: a negative size")))?;
                out.push(ObjectInfo {
                    key: key.strip_prefix(&self.prefix).unwrap_or(key).to_string(),
                    size,
                    sha256: None,
                    encryption: None,
                    plain_sha256: None,
                    plain_size: None,
                });
            }
            match page.next_continuation_token() {
                Some(t) => token = Some(pages.next(t.to_string()).map_err(|e| self.unreadable(what, e))?),
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
        let listed = self.client.list_multipart_uploads().bucket(&self.bucket).prefix(root).send().await;
        let Ok(listed) = listed else { return 0 };
        let mut n = 0;
        for upload in listed.uploads() {
            let (Some(k), Some(id)) = (upload.key(), upload.upload_id()) else { continue };
            // Checked here too: a server that ignores the prefix must not have another host's
            // (or another tool's) uploads, in flight in the same bucket, aborted.
            if k.starts_with(root) {
                let r = self.client.abort_multipart_upload().bucket(&self.bucket).key(k).upload_id(id).send().await;
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
