//! TODO: docker
