//! The reverse proxy in front of the tenants (Traefik with the Docker provider, on the primary
//! platform), as the tenants' customers reach it: `GET <entrypoint><path>` with the tenant's
//! `Host` header. Two uses, both plain HTTP from the host, nothing configured on the proxy:
//!
//! - the route gate ([`Proxy::routes_to`]): after a new container passed its health gate at
//!   its own address, wait until the proxy answers 2xx for the tenant's host — and, when the
//!   container's own answer is stable, with the container's own body, so an answer from a stale
//!   backend is not taken for the new one. A release whose routing is broken (a label typo, a
//!   changed port) never gets there and fails like an unhealthy one;
//! - the watch ([`Proxy::watch`]): a client sending [`WATCH_RPS`] requests a second through the
//!   proxy during a tenant's switch, each on its own schedule (a slow answer does not delay the
//!   next request), which reports what customers saw: how many failed, first → last failure.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::{HealthSpec, ProxySpec};
use crate::error::{Error, Result};
use crate::types::TenantId;

/// Requests a second a watch sends through the proxy (a busy customer's client).
pub const WATCH_RPS: u64 = 50;
/// How long one watched request may take: a proxy that holds and retries a request while the
/// new container starts answers late but answers; only then is it a failure.
const WATCH_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How often the route gate asks the proxy.
const GATE_POLL: Duration = Duration::from_millis(50);
/// The most of a body the gate compares (health answers are small).
const BODY_LIMIT: usize = 64 * 1024;

/// One tenant's host at the proxy.
#[derive(Clone)]
pub struct Proxy {
    client: reqwest::Client,
    url: String,
    host: String,
}

/// What customers saw through the proxy during a tenant's switch, and how long the proxy took
/// to route to the new container.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProxyReport {
    /// The tenant's Host header.
    pub host: String,
    /// Requests the watch sent ([`WATCH_RPS`] a second, from just before the stop until the
    /// proxy answered again after the switch or the undo).
    pub requests: u64,
    /// Of which not answered 2xx (what customers saw fail).
    pub failed: u64,
    /// Proxy downtime: from the first failed request to the last one (by when each was sent);
    /// 0 when none or one failed.
    pub downtime_ms: u64,
    /// The slowest answer (a proxy that holds requests answers late instead of failing them).
    pub slowest_ms: u64,
    /// Failed requests by what came back (`HTTP 404`, `HTTP 502`, `timed out`, …).
    pub errors: BTreeMap<String, u64>,
    /// The container's health gate passed → the proxy routed the tenant's host to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_ms: Option<u64>,
}

impl Proxy {
    /// The proxy as `tenant`'s customers reach it.
    pub fn new(spec: &ProxySpec, health: &HealthSpec, tenant: &TenantId) -> Result<Proxy> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| Error::Other(format!("cannot build the HTTP client for the proxy: {e}")))?;
        Ok(Proxy { client, url: spec.url(health), host: spec.host_of(tenant) })
    }

    /// The tenant's Host header.
    pub fn host(&self) -> &str {
        &self.host
    }

    async fn get(&self, url: &str, host: Option<&str>, timeout: Duration) -> std::result::Result<Vec<u8>, String> {
        let mut req = self.client.get(url).timeout(timeout);
        if let Some(h) = host {
            req = req.header(reqwest::header::HOST, h);
        }
        let describe = |e: reqwest::Error| {
            if e.is_timeout() {
                "timed out".to_string()
            } else if e.is_connect() {
                "connection refused".to_string()
            } else {
                e.to_string()
            }
        };
        let mut r = req.send().await.map_err(describe)?;
        if !r.status().is_success() {
            return Err(format!("HTTP {}", r.status().as_u16()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = r.chunk().await.map_err(describe)? {
            body.extend_from_slice(&chunk[..chunk.len().min(BODY_LIMIT - body.len())]);
            if body.len() >= BODY_LIMIT {
                break;
            }
        }
        Ok(body)
    }

    /// One request for the tenant's host, now: Ok on 2xx, else what came back.
    pub async fn answers(&self) -> std::result::Result<(), String> {
        self.get(&self.url, Some(&self.host), Duration::from_secs(5)).await.map(|_| ())
    }

    /// Wait until the proxy answers 2xx for the tenant's host, within `timeout`. `direct` is
    /// the same path at the new container's own address: when it answers the same body twice,
    /// the proxy's answer must be that body (an answer from another backend is not the route
    /// to the new container); an app whose answer changes every time is taken on its 2xx.
    /// `cancelled` stops the wait early. Ok(elapsed), or Err(why) naming the proxy, the host
    /// and the last answer.
    pub async fn routes_to(
        &self,
        direct: Option<&str>,
        timeout: Duration,
        cancelled: impl Fn() -> bool,
    ) -> std::result::Result<Duration, String> {
        let start = Instant::now();
        let expect = match direct {
            Some(url) => {
                let (a, b) = (
                    self.get(url, None, Duration::from_secs(3)).await,
                    self.get(url, None, Duration::from_secs(3)).await,
                );
                match (a, b) {
                    (Ok(a), Ok(b)) if a == b => Some(a),
                    _ => None,
                }
            }
            None => None,
        };
        let mut last;
        loop {
            match self.get(&self.url, Some(&self.host), Duration::from_secs(3)).await {
                Ok(body) => match &expect {
                    Some(want) if *want != body => {
                        last = format!(
                            "2xx, but with another body than the new container's own answer (\"{}\" instead of \"{}\"): \
                             a stale or other backend",
                            snippet(&body),
                            snippet(want)
                        );
                    }
                    _ => return Ok(start.elapsed()),
                },
                Err(e) => last = e,
            }
            if cancelled() {
                return Err(format!("interrupted by a signal while waiting for the proxy to route {}", self.host));
            }
            if start.elapsed() >= timeout {
                return Err(format!(
                    "the proxy at {} did not route Host {} to the new container within {} s (last answer: {last}); \
                     check the router labels (rule, service port, network) the new version runs with",
                    self.url,
                    self.host,
                    timeout.as_secs()
                ));
            }
            tokio::time::sleep(GATE_POLL).await;
        }
    }

    /// Start a watch: [`WATCH_RPS`] requests a second through the proxy until
    /// [`Watch::finish`].
    pub fn watch(&self) -> Watch {
        let (stop_tx, stop_rx) = watch::channel(None::<Duration>);
        let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
        let started = Instant::now();
        let task = tokio::spawn(run_watch(self.clone(), stop_rx, samples.clone(), started));
        Watch { stop: stop_tx, task, samples, host: self.host.clone() }
    }
}

impl std::fmt::Display for ProxyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "proxy {}: {} of {} requests failed", self.host, self.failed, self.requests)?;
        if self.failed > 0 {
            let why: Vec<String> = self.errors.iter().map(|(e, n)| format!("{e} x{n}")).collect();
            write!(f, " ({}), proxy downtime {} ms", why.join(", "), self.downtime_ms)?;
        }
        write!(f, ", slowest answer {} ms", self.slowest_ms)?;
        if let Some(r) = self.route_ms {
            write!(f, ", routed {r} ms after healthy")?;
        }
        Ok(())
    }
}

fn snippet(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(&body[..body.len().min(60)]);
    s.trim().replace('\n', " ")
}

/// One watched request.
#[derive(Debug, Clone)]
struct Sample {
    /// When it was sent, since the watch began.
    sent: Duration,
    took: Duration,
    /// Why it failed, if it did.
    error: Option<String>,
}

/// A running watch of a tenant's host (see [`Proxy::watch`]).
pub struct Watch {
    /// Set to the longest the watch may go on waiting for the proxy to answer again.
    stop: watch::Sender<Option<Duration>>,
    task: tokio::task::JoinHandle<()>,
    samples: Arc<Mutex<Vec<Sample>>>,
    host: String,
}

impl Watch {
    /// Stop the watch once a request sent from now on is answered 2xx (so a proxy still
    /// failing after the switch or the undo is counted until it answers), at most `settle`
    /// from now; then report.
    pub async fn finish(self, settle: Duration) -> ProxyReport {
        let _ = self.stop.send(Some(settle));
        let _ = self.task.await;
        let samples = self.samples.lock().map(|s| s.clone()).unwrap_or_default();
        summarize(&self.host, &samples)
    }
}

async fn run_watch(
    proxy: Proxy,
    mut stop: watch::Receiver<Option<Duration>>,
    samples: Arc<Mutex<Vec<Sample>>>,
    started: Instant,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / WATCH_RPS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut inflight = tokio::task::JoinSet::new();
    // (when the finish was asked, how long it may wait)
    let mut stopping: Option<(Duration, Duration)> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = stop.changed() => {
                if changed.is_err() {
                    break;
                }
            }
        }
        if stopping.is_none() {
            if let Some(settle) = *stop.borrow() {
                stopping = Some((started.elapsed(), settle));
            }
        }
        if let Some((asked, settle)) = stopping {
            let answered =
                samples.lock().map(|s| s.iter().any(|x| x.sent >= asked && x.error.is_none())).unwrap_or(true);
            if answered || started.elapsed() >= asked + settle {
                break;
            }
        }
        let (p, samples) = (proxy.clone(), samples.clone());
        inflight.spawn(async move {
            let sent = started.elapsed();
            let r = p.get(&p.url, Some(&p.host), WATCH_REQUEST_TIMEOUT).await;
            let took = started.elapsed().saturating_sub(sent);
            if let Ok(mut s) = samples.lock() {
                s.push(Sample { sent, took, error: r.err() });
            }
        });
    }
    while inflight.join_next().await.is_some() {}
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

fn summarize(host: &str, samples: &[Sample]) -> ProxyReport {
    let mut failed: Vec<&Sample> = samples.iter().filter(|s| s.error.is_some()).collect();
    failed.sort_by_key(|s| s.sent);
    let mut errors = BTreeMap::new();
    for s in &failed {
        *errors.entry(s.error.clone().unwrap_or_default()).or_insert(0) += 1;
    }
    let downtime = match (failed.first(), failed.last()) {
        (Some(a), Some(b)) => b.sent.saturating_sub(a.sent),
        _ => Duration::ZERO,
    };
    ProxyReport {
        host: host.to_string(),
        requests: samples.len() as u64,
        failed: failed.len() as u64,
        downtime_ms: ms(downtime),
        slowest_ms: samples.iter().map(|s| ms(s.took)).max().unwrap_or(0),
        errors,
        route_ms: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(sent_ms: u64, error: Option<&str>) -> Sample {
        Sample {
            sent: Duration::from_millis(sent_ms),
            took: Duration::from_millis(3),
            error: error.map(str::to_string),
        }
    }

    #[test]
    fn proxy_downtime_runs_from_the_first_failed_request_to_the_last() {
        let s = [
            sample(0, None),
            sample(20, Some("HTTP 502")),
            sample(40, Some("HTTP 404")),
            sample(60, None),
            sample(80, Some("HTTP 404")),
            sample(100, None),
        ];
        let r = summarize("t.example.test", &s);
        assert_eq!((r.requests, r.failed, r.downtime_ms), (6, 3, 60));
        assert_eq!(r.errors.get("HTTP 404"), Some(&2));
        assert_eq!(r.errors.get("HTTP 502"), Some(&1));
        let clean = summarize("t.example.test", &[sample(0, None), sample(20, None)]);
        assert_eq!((clean.failed, clean.downtime_ms), (0, 0));
        assert_eq!(summarize("t", &[sample(5, Some("timed out"))]).downtime_ms, 0);
    }
}
