//! TODO: desired
