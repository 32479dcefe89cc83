//! TODO: prune
