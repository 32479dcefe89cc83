//! TODO: restore
