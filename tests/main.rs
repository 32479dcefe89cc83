//! slipway's end-to-end tests: the real binary against a real Docker engine, registry, git
//! repos, SQLite files and S3 server, all started by `make test` (scripts/testenv.sh), which
//! exports their addresses as `SWTEST_*` variables. One test binary, one harness
//! (`support`), as `just` and ripgrep do.

#![allow(clippy::unwrap_used)]

mod support;

mod adopt;
mod backup;
mod crash;
mod crypt;
mod database;
mod drill;
mod field;
mod foundation;
mod hooks;
mod hostile;
mod offsite;
mod ops;
mod proxy;
mod recovery;
mod remote_truth;
mod rollout;
mod safety;
mod sqlite;
mod stack;
mod stack_adopt;
mod stack_backup;
mod stack_database;
mod stack_rollback;
mod stack_sqlite;
mod systemd;
mod trust;
mod undo_errors;
mod volumes;
mod waves;
