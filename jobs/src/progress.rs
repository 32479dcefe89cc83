//! TODO: progress
