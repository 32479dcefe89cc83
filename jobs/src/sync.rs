//! TODO: sync
