//! TODO: rollback
