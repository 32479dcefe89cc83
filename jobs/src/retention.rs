//! TODO: retention
