//! TODO: runs
