//! Adapters: each wraps one external system in the few operations the jobs need, with domain
//! types in and out (a `Digest`, a `TenantId`, a path), never raw API structs. An adapter
//! knows nothing of jobs: it may use the shared model (`types`, `error`, `config`, `fsutil`,
//! `manifest`, `progress`) and other adapters, never a job module (`rollout`, `snapshot`, …).
//! The rule is checked by `architecture_tests` in `lib.rs`.

pub mod archive;
pub mod confined;
pub mod desired;
pub mod docker;
pub mod health;
pub mod lock;
pub mod metrics;
pub mod mirror;
pub mod notify;
pub mod postgres;
pub mod proxy;
pub mod remote;
pub mod sqlite;
pub mod systemd;

#[cfg(test)]
mod hostile_tests;
