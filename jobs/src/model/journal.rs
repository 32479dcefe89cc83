//! The words of the run record: the outcome a run is finished with ([`Outcome`]). Shared
//! model; the run guard (`context::RunGuard`) is the only writer of a run's outcome, and it
//! takes one of these, never a word spelled by hand.
//!
//! Invariants: an outcome word never changes (`runs`, `status`, `reconcile` and state.db files
//! of earlier versions read them); every [`ExitKind`] is an outcome with its own word and code.

use std::fmt;

use crate::error::ExitKind;

/// How a run ended, as the run record stores it (word and exit code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The run ended with the job's exit kind (its word: `success`, `failed`, `halted`, …).
    Exit(ExitKind),
    /// `trust` refused the desired-state commit before anything was pulled or changed (exit 2).
    Refused,
    /// A run that died (or left a tenant held) was finished by `recover`, every tenant it
    /// caught safe again (exit code 1: the run itself did not finish its work).
    Recovered,
}

impl Outcome {
    /// Every outcome a run can be finished with.
    pub fn all() -> impl Iterator<Item = Outcome> {
        ExitKind::ALL.into_iter().map(Outcome::Exit).chain([Outcome::Refused, Outcome::Recovered])
    }

    /// The word the run record stores.
    pub fn word(self) -> &'static str {
        match self {
            Outcome::Exit(k) => k.word(),
            Outcome::Refused => "refused",
            Outcome::Recovered => "recovered",
        }
    }

    /// The exit code the run record stores.
    pub fn code(self) -> u8 {
        match self {
            Outcome::Exit(k) => k.code(),
            Outcome::Refused => ExitKind::Usage.code(),
            Outcome::Recovered => ExitKind::Failure.code(),
        }
    }
}

impl From<ExitKind> for Outcome {
    fn from(k: ExitKind) -> Outcome {
        Outcome::Exit(k)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_words_are_fixed_and_distinct() {
        let words: Vec<&str> = Outcome::all().map(Outcome::word).collect();
        assert_eq!(
            words,
            [
                "success",
                "failed",
                "usage",
                "halted",
                "person_needed",
                "lock_busy",
                "remote_auth",
                "interrupted",
                "attention",
                "refused",
                "recovered"
            ]
        );
        assert_eq!((Outcome::Refused.code(), Outcome::Recovered.code()), (2, 1));
        assert_eq!(Outcome::from(ExitKind::Halted).code(), 3);
    }
}
