//! The test-only points a `test-crash` build stops, pauses, signals or fails at
//! (`SLIPWAY_TEST_CRASH_AT`, `SLIPWAY_TEST_SIGNAL_AT`, `SLIPWAY_TEST_PAUSE_AT`,
//! `SLIPWAY_TEST_JOURNAL_FAILS_FROM`, `SLIPWAY_TEST_REFUSE`, `SLIPWAY_TEST_WINDOW_SHIFT_S`).
//! Shared model, so that the rollout's steps (`step`) reach their crash points without the job
//! context; `context` re-exports them for the jobs. Without the feature each compiles to
//! nothing.

#[cfg(feature = "test-crash")]
use std::sync::atomic::{AtomicBool, Ordering};

#[cfg(feature = "test-crash")]
use crate::error::Error;
use crate::error::Result;

/// Set once the point `SLIPWAY_TEST_JOURNAL_FAILS_FROM` names is reached: from then on every
/// journal write fails, as on a state.db that is locked or whose disk is full.
#[cfg(feature = "test-crash")]
static JOURNAL_REFUSES: AtomicBool = AtomicBool::new(false);

/// A test-only fault: with the `test-crash` feature, the journal writes after the crash point
/// `SLIPWAY_TEST_JOURNAL_FAILS_FROM` names fail.
pub(crate) fn journal_refused() -> Result<()> {
    #[cfg(feature = "test-crash")]
    if JOURNAL_REFUSES.load(Ordering::SeqCst) {
        return Err(Error::Other(
            "state.db: database is locked (injected by SLIPWAY_TEST_JOURNAL_FAILS_FROM)".to_string(),
        ));
    }
    Ok(())
}

/// A test-only refusal: with the `test-crash` feature and `SLIPWAY_TEST_REFUSE=<what>`, the
/// engine call named `what` (e.g. `unpause`) is treated as failed, as a broken engine would.
pub fn test_refuses(what: &str) -> bool {
    #[cfg(feature = "test-crash")]
    return std::env::var("SLIPWAY_TEST_REFUSE").is_ok_and(|v| v.split(',').any(|w| w == what));
    #[cfg(not(feature = "test-crash"))]
    {
        let _ = what;
        false
    }
}

/// A test-only pause: with the `test-crash` feature and `SLIPWAY_TEST_PAUSE_AT=<point>:<ms>`,
/// sleep there (to hold the host lock long enough for a concurrency test, or to let a test stop
/// the S3 server at a known point of an upload). It first writes `slipway test point reached:
/// <point>` to stderr, so a test can act while the job is held there rather than guess when.
/// The sleep blocks the thread: the job's task, and every request it would send, waits.
pub fn test_pause(point: &str) {
    #[cfg(feature = "test-crash")]
    if let Ok(v) = std::env::var("SLIPWAY_TEST_PAUSE_AT") {
        if let Some(ms) = v.strip_prefix(point).and_then(|r| r.strip_prefix(':')).and_then(|m| m.parse().ok()) {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "slipway test point reached: {point}");
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
    }
    #[cfg(not(feature = "test-crash"))]
    let _ = point;
}

/// The moment maintenance windows are judged at. A test build shifts it by
/// `SLIPWAY_TEST_WINDOW_SHIFT_S` seconds once the rollout's first wave is done, so a window
/// can close at a wave boundary without a test waiting for the clock.
pub fn window_now(after_first_wave: bool) -> jiff::Timestamp {
    let now = jiff::Timestamp::now();
    #[cfg(feature = "test-crash")]
    if after_first_wave {
        if let Some(s) = std::env::var("SLIPWAY_TEST_WINDOW_SHIFT_S").ok().and_then(|v| v.parse::<i64>().ok()) {
            return now.checked_add(jiff::SignedDuration::from_secs(s)).unwrap_or(now);
        }
    }
    let _ = after_first_wave;
    now
}

/// A test-only crash point: with the `test-crash` feature, the process dies here (no
/// destructors, no journal update, like SIGKILL) when `SLIPWAY_TEST_CRASH_AT` names `point`;
/// with `SLIPWAY_TEST_SIGNAL_AT` naming it (`<point>` or `<point>:<SIGNAL>`, e.g.
/// `after-stop:HUP`), the process sends itself that signal (default TERM) and goes on.
/// With `SLIPWAY_TEST_JOURNAL_FAILS_FROM` naming it, every later journal write fails.
/// Either way it first writes `slipway test point reached: <point>` to stderr, so a test can
/// tell a point that was reached from one that was misspelled or never reached.
/// Without the feature it compiles to nothing.
#[inline]
pub fn crash_point(point: &str) {
    #[cfg(feature = "test-crash")]
    {
        use std::io::Write;
        let reached = || {
            let _ = writeln!(std::io::stderr(), "slipway test point reached: {point}");
        };
        if std::env::var("SLIPWAY_TEST_JOURNAL_FAILS_FROM").is_ok_and(|p| p == point) {
            reached();
            JOURNAL_REFUSES.store(true, Ordering::SeqCst);
        }
        if std::env::var("SLIPWAY_TEST_CRASH_AT").is_ok_and(|p| p == point) {
            reached();
            std::process::abort();
        }
        let signal_at = std::env::var("SLIPWAY_TEST_SIGNAL_AT").unwrap_or_default();
        let (at, signal) = signal_at.split_once(':').unwrap_or((&signal_at, "TERM"));
        if at == point {
            reached();
            let _ = std::process::Command::new("kill")
                .args([&format!("-{signal}"), &std::process::id().to_string()])
                .status();
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
    #[cfg(not(feature = "test-crash"))]
    let _ = point;
}
