//! slipway-state: the run record. TODO: filled in by the foundation work.

/// Errors of the run-record store.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// SQLite failed.
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
}
