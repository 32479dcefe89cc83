//! TODO: recover
