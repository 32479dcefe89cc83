//! TODO: archive
