//! The one way jobs run synchronous work (archiving, hashing, extracting) off the async
//! runtime: [`run`] is `spawn_blocking` whose failure to finish (a panic, or the runtime
//! shutting down) becomes [`Error::Task`] naming the work, never a bare string.

use crate::error::{Error, Result};

/// Run `f` on the blocking pool; `what` names the work in the error ("snapshot", "restore").
pub async fn run<T, F>(what: &'static str, f: F) -> Result<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(|source| Error::Task { what, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_value_comes_back_and_a_panic_becomes_a_task_error_naming_the_work() {
        assert_eq!(run("sum", || 2 + 2).await.unwrap(), 4);
        let e = run("hash", || -> u8 { panic!("boom") }).await.unwrap_err();
        assert!(matches!(&e, Error::Task { what: "hash", source } if source.is_panic()), "{e:?}");
        assert!(e.to_string().starts_with("hash task failed: "), "{e}");
        assert_eq!(e.exit_kind(), crate::error::ExitKind::Failure);
    }
}
