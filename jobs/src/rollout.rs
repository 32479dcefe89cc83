//! TODO: rollout
