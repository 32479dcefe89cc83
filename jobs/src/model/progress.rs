//! Progress reporting from jobs to whoever shows it. Jobs call [`Progress`]; the CLI shows
//! bars on a terminal and log lines otherwise. Library code never prints.

/// Receives progress events of long work (archiving, uploading, pulling).
pub trait Progress: Send + Sync {
    /// A phase starts, with its total in bytes or items if known.
    fn start(&self, _what: &str, _total: Option<u64>) {}
    /// `n` more units done.
    fn advance(&self, _n: u64) {}
    /// The phase is over.
    fn finish(&self) {}
}

/// Shows nothing.
pub struct NoProgress;
impl Progress for NoProgress {}
