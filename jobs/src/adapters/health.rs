//! The health gate: `GET http://<container IP on its network>:<port><path>` until a 2xx
//! answer, within a deadline, failing fast when the container exits or restarts (a crashing
//! app must not cost the whole timeout). Probes are plain HTTP to the container's own address;
//! nothing is published on the host. The address is the one on `health.network`, else on the
//! container's only network. Redirects are not followed: a 302 to a login page is not healthy.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::adapters::docker::Engine;
use crate::config::HealthSpec;
use crate::error::{Error, Result};

/// How often a gate probes while the app is likely still starting: each poll is one engine
/// inspect and one connect, and the tenant is down until one answers, so the first probe goes
/// out right after the start and the next ones close behind.
const FAST_POLL: Duration = Duration::from_millis(20);
/// How long a gate polls at [`FAST_POLL`] before it backs off.
const FAST_FOR: Duration = Duration::from_secs(2);
/// The slowest a gate polls (an app that takes long to start).
const SLOW_POLL: Duration = Duration::from_millis(250);

/// Why a container did not pass its health gate.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub enum Unhealthy {
    /// It stopped running (exit code).
    Exited(i64),
    /// The engine restarted it.
    Restarted,
    /// No 2xx answer within the timeout; the last answer or error.
    TimedOut(String),
}

impl std::fmt::Display for Unhealthy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unhealthy::Exited(c) => write!(f, "the container exited with code {c}"),
            Unhealthy::Restarted => write!(f, "the container restarted"),
            Unhealthy::TimedOut(last) => {
                write!(f, "no 2xx answer before the timeout (last: {last})")
            }
        }
    }
}

/// An HTTP client for probes.
#[derive(Clone)]
pub struct Prober {
    client: reqwest::Client,
}

impl Prober {
    /// A client with short per-request timeouts and no proxy (probes go to container IPs).
    pub fn new() -> Result<Prober> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_millis(1000))
            .timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| Error::Other(format!("cannot build the HTTP client for health probes: {e}")))?;
        Ok(Prober { client })
    }

    /// One probe of `url`: Ok(()) on 2xx, else what came back.
    pub async fn probe(&self, url: &str) -> std::result::Result<(), String> {
        match self.client.get(url).send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("HTTP {}", r.status().as_u16())),
            Err(e) => Err(if e.is_connect() {
                "connection refused".to_string()
            } else if e.is_timeout() {
                "timed out".to_string()
            } else {
                e.to_string()
            }),
        }
    }

    /// Wait until `container` answers its health check, with `timeout` (default: the spec's).
    /// Ok(Ok(elapsed)) when healthy; Ok(Err(reason)) when not; Err on engine errors.
    pub async fn gate(
        &self,
        engine: &Engine,
        container: &str,
        spec: &HealthSpec,
        timeout: Option<Duration>,
    ) -> Result<std::result::Result<Duration, Unhealthy>> {
        self.gate_since(engine, container, spec, timeout, None).await
    }

    /// [`Prober::gate`], counting restarts from `restarts_before` (the engine's restart count
    /// when the container was started, 0 for a new one) instead of from now: a container that
    /// crashed and was restarted by its policy before the first probe, or during a soak, is
    /// not healthy.
    pub async fn gate_since(
        &self,
        engine: &Engine,
        container: &str,
        spec: &HealthSpec,
        timeout: Option<Duration>,
        restarts_before: Option<i64>,
    ) -> Result<std::result::Result<Duration, Unhealthy>> {
        let start = Instant::now();
        let deadline = start + timeout.unwrap_or(Duration::from_secs(spec.timeout_s));
        let initial = match restarts_before {
            Some(n) => n,
            None => engine.state(container).await?.restart_count,
        };
        let mut last: String;
        let mut pause = FAST_POLL;
        loop {
            let (st, ip) = engine.state_and_ip(container, spec.network.as_deref()).await?;
            if st.restart_count > initial || st.restarting {
                return Ok(Err(Unhealthy::Restarted));
            }
            if !st.running && !st.paused && st.status != "created" {
                return Ok(Err(Unhealthy::Exited(st.exit_code)));
            }
            match ip {
                Ok(ip) => {
                    let host = match ip {
                        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
                        std::net::IpAddr::V4(v4) => v4.to_string(),
                    };
                    let url = format!("http://{host}:{}{}", spec.port, spec.path);
                    match self.probe(&url).await {
                        Ok(()) => return Ok(Ok(start.elapsed())),
                        Err(e) => last = e,
                    }
                }
                Err(why) => last = why,
            }
            if Instant::now() >= deadline {
                return Ok(Err(Unhealthy::TimedOut(last)));
            }
            tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
            if start.elapsed() >= FAST_FOR {
                pause = (pause * 2).min(SLOW_POLL);
            }
        }
    }
}
