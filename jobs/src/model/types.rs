//! Validated newtypes for the values every job passes around: an image pinned by digest,
//! a tenant id, a run id. Each is checked once, when parsed, and cannot be built wrong after.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A sha256 content digest, `sha256:` followed by 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl Digest {
    /// The digest as `sha256:<hex>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The first 12 hex digits, for human output.
    pub fn short(&self) -> &str {
        &self.0[7..19]
    }
}

impl FromStr for Digest {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let hex = s
            .strip_prefix("sha256:")
            .ok_or_else(|| format!("\"{s}\" is not a sha256 digest; expected \"sha256:<64 hex digits>\""))?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
            return Err(format!("\"{s}\" is not a sha256 digest; expected \"sha256:\" and 64 lowercase hex digits"));
        }
        Ok(Digest(s.to_string()))
    }
}

impl TryFrom<String> for Digest {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}
impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.0
    }
}
impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An image reference pinned by digest: `repo@sha256:<hex>` (a tag before the `@` is allowed
/// and ignored by the engine; the digest is what runs).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PinnedImage {
    repo: String,
    digest: Digest,
}

impl PinnedImage {
    /// Repository part, without tag or digest (`ghcr.io/example/pulse`).
    pub fn repo(&self) -> &str {
        &self.repo
    }
    /// The pinned digest.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }
    /// The reference the engine is given: `repo@sha256:…`.
    pub fn reference(&self) -> String {
        format!("{}@{}", self.repo, self.digest)
    }
}

impl FromStr for PinnedImage {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let Some((name, digest)) = s.split_once('@') else {
            let repo = s.rsplit_once(':').filter(|(_, t)| !t.contains('/')).map_or(s, |(r, _)| r);
            return Err(format!("image \"{s}\" is not pinned by digest; use \"{repo}@sha256:<64 hex digits>\""));
        };
        let digest: Digest = digest.parse().map_err(|e| format!("image \"{s}\": {e}"))?;
        // Drop a tag before the digest: `repo:tag@sha256:…` runs the digest, not the tag.
        let repo = match name.rsplit_once(':') {
            Some((r, tag)) if !tag.contains('/') => r,
            _ => name,
        };
        if repo.is_empty() || repo.contains(char::is_whitespace) {
            return Err(format!("image \"{s}\" has no repository name before the '@'"));
        }
        Ok(PinnedImage { repo: repo.to_string(), digest })
    }
}
impl TryFrom<String> for PinnedImage {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}
impl From<PinnedImage> for String {
    fn from(p: PinnedImage) -> String {
        p.reference()
    }
}
impl fmt::Display for PinnedImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.repo, self.digest)
    }
}

/// A tenant id: `[A-Za-z0-9][A-Za-z0-9_.-]{0,62}`. Safe as a file name and a container-name part.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantId(String);

impl TenantId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl FromStr for TenantId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
        if ok {
            Ok(TenantId(s.to_string()))
        } else {
            Err(format!("tenant id \"{s}\" is invalid; it must match [A-Za-z0-9][A-Za-z0-9_.-]{{0,62}}"))
        }
    }
}
impl TryFrom<String> for TenantId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}
impl From<TenantId> for String {
    fn from(t: TenantId) -> String {
        t.0
    }
}
impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A run id that sorts by time: `20261122T030000Z-7f3a` (UTC start time, 4 random hex).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RunId(String);

impl RunId {
    /// A fresh id for a run starting now. Only the run record's owner (`context`) makes one
    /// (an architecture test checks): a run id is made by starting a run.
    pub(crate) fn new() -> RunId {
        let now = jiff::Timestamp::now();
        let stamp = now.strftime("%Y%m%dT%H%M%SZ").to_string();
        let mut buf = [0u8; 2];
        // Randomness only needs to separate two runs started in the same second.
        let nanos = now.subsec_nanosecond() as u32 ^ std::process::id().rotate_left(16);
        buf[0] = (nanos >> 8) as u8 ^ (nanos >> 24) as u8;
        buf[1] = nanos as u8 ^ (nanos >> 16) as u8;
        RunId(format!("{stamp}-{}", hex::encode(buf)))
    }
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl FromStr for RunId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let b = s.as_bytes();
        let ok = b.len() == 21
            && b[..8].iter().all(u8::is_ascii_digit)
            && b[8] == b'T'
            && b[9..15].iter().all(u8::is_ascii_digit)
            && b[15] == b'Z'
            && b[16] == b'-'
            && b[17..].iter().all(|c| c.is_ascii_hexdigit());
        if ok {
            Ok(RunId(s.to_string()))
        } else {
            Err(format!("run id \"{s}\" is invalid; expected the form 20261122T030000Z-7f3a (see `slipway runs`)"))
        }
    }
}
impl TryFrom<String> for RunId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}
impl From<RunId> for String {
    fn from(r: RunId) -> String {
        r.0
    }
}
impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who holds the lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockHolder {
    /// Job name.
    pub job: String,
    /// Run id.
    pub run_id: String,
    /// Process id.
    pub pid: u32,
    /// Since when (RFC 3339).
    pub since: String,
}

impl std::fmt::Display for LockHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "job {}, run {}, pid {}, since {}", self.job, self.run_id, self.pid, self.since)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn pinned_image_accepts_digest_and_drops_tag() {
        let p: PinnedImage = format!("ghcr.io/x/pulse:1.2@sha256:{HEX}").parse().unwrap();
        assert_eq!(p.repo(), "ghcr.io/x/pulse");
        let p: PinnedImage = format!("127.0.0.1:5000/pulse@sha256:{HEX}").parse().unwrap();
        assert_eq!(p.repo(), "127.0.0.1:5000/pulse");
    }

    #[test]
    fn tag_only_image_is_refused_with_a_fix() {
        let e = "ghcr.io/x/pulse:latest".parse::<PinnedImage>().unwrap_err();
        assert!(e.contains("not pinned by digest"), "{e}");
        assert!(e.contains("ghcr.io/x/pulse@sha256:"), "{e}");
    }

    #[test]
    fn bad_digests_are_refused() {
        for bad in ["sha256:abc", "md5:x", &format!("sha256:{}", HEX.to_uppercase())] {
            assert!(bad.parse::<Digest>().is_err(), "{bad}");
        }
    }

    #[test]
    fn tenant_ids_follow_the_pattern() {
        for good in ["a", "t-ABCDEFGHJK", "x_y.z-1", &"a".repeat(63)] {
            assert!(good.parse::<TenantId>().is_ok(), "{good}");
        }
        for bad in ["", "-a", ".a", "a/b", "a b", "../x", &"a".repeat(64)] {
            assert!(bad.parse::<TenantId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn run_ids_round_trip_and_sort_by_time() {
        let a = RunId::new();
        assert_eq!(a.as_str().parse::<RunId>().unwrap(), a);
        assert!("20261122T030000Z-7f3a".parse::<RunId>().unwrap() < "20261122T030001Z-0000".parse().unwrap());
    }
}
