//! Failure notifications: a JSON POST to `notify.webhook` when a job fails or a rollout halts,
//! with a Slack-compatible `text` line and structured fields. A failing webhook never fails the
//! job: it is logged (with the URL cut to its host, since webhook paths often carry secrets).

use std::time::Duration;

use serde::Serialize;

/// What is sent.
#[derive(Debug, Clone, Serialize)]
pub struct Notification {
    /// Slack-compatible one-line summary.
    pub text: String,
    /// Job name.
    pub job: String,
    /// Run id, if any.
    pub run_id: Option<String>,
    /// Outcome word (failure, halted, person_needed, …).
    pub outcome: String,
    /// Process exit code.
    pub exit_code: u8,
    /// The job's summary or error.
    pub summary: String,
    /// Host name.
    pub host: String,
}

impl Notification {
    /// Build a notification; `text` is derived.
    pub fn new(job: &str, run_id: Option<String>, outcome: &str, exit_code: u8, summary: &str) -> Notification {
        let host =
            std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
        Notification {
            text: format!("slipway {job} on {host}: {outcome} (exit {exit_code}): {summary}"),
            job: job.to_string(),
            run_id,
            outcome: outcome.to_string(),
            exit_code,
            summary: summary.to_string(),
            host,
        }
    }
}

/// The URL with everything after the host removed, for logs.
pub fn redact(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => format!("{}://{}/…", u.scheme(), u.host_str().unwrap_or("?")),
        Err(_) => "(invalid webhook URL)".to_string(),
    }
}

/// POST the notification; never fails, returns whether it was delivered (2xx).
pub async fn send(webhook: &str, n: &Notification) -> bool {
    let client = match reqwest::Client::builder().timeout(Duration::from_secs(10)).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("webhook {}: cannot build an HTTP client: {e}", redact(webhook));
            return false;
        }
    };
    match client.post(webhook).json(n).send().await {
        Ok(r) if r.status().is_success() => true,
        Ok(r) => {
            tracing::warn!(
                "webhook {} answered HTTP {}; the job's outcome is unchanged",
                redact(webhook),
                r.status().as_u16()
            );
            false
        }
        Err(e) => {
            let why = if e.is_connect() {
                "connection failed".to_string()
            } else if e.is_timeout() {
                "timed out".into()
            } else {
                "request failed".into()
            };
            tracing::warn!("webhook {}: {why}; the job's outcome is unchanged", redact(webhook));
            false
        }
    }
}

#[cfg(test)]
mod tests {
    //! Delivery to a live receiver is tested end to end (tests/ops.rs, with the one test
    //! webhook receiver of tests/support); here: what a dead one and a URL in a log look like.
    use super::*;

    #[tokio::test]
    async fn a_dead_webhook_is_only_logged_and_its_url_is_redacted() {
        let n = Notification::new("rollout", Some("20261122T030000Z-0001".into()), "halted", 3, "canary t1 failed");
        // Nobody listens here: not delivered, no error, no panic.
        let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        assert!(!send(&format!("http://{dead}/x"), &n).await);
        assert_eq!(redact("https://hooks.example.com/services/T000/B000/XXXX"), "https://hooks.example.com/…");
    }
}
