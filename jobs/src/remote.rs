//! TODO: remote
