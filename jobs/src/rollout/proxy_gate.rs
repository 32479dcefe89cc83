//! The rollout's hook into the reverse proxy (`[app.proxy]`, [`crate::adapters::proxy`]): a
//! watch through the proxy from just before a tenant's stop until the proxy answers again (after
//! the switch, or after the undo), and the route gate after the container's health gate and
//! after the canary's soak. A tenant whose app has no `[app.proxy]` goes through none of this.

use std::time::Duration;

use crate::adapters::proxy::{Proxy, Watch};

use super::{ms, StepResult, TenantRoll};

/// How long the route is re-checked after the canary's soak.
const AFTER_SOAK: Duration = Duration::from_secs(5);
/// How long an interrupted rollout's watch waits for the proxy to answer again.
const INTERRUPTED_SETTLE: Duration = Duration::from_secs(3);

/// The proxy watch of one tenant's switch, while it runs.
pub(super) struct ProxyWatch {
    proxy: Proxy,
    watch: Watch,
}

impl TenantRoll<'_> {
    fn proxy(&self) -> Option<std::result::Result<Proxy, String>> {
        let app = self.run.app;
        let spec = app.proxy.as_ref()?;
        Some(Proxy::new(spec, &app.health, &self.item.tenant).map_err(|e| e.to_string()))
    }

    /// Just before the stop: the watch begins (what customers see from here on is the switch's).
    /// A tenant that was not running has no customers to watch (and stays stopped).
    pub(super) fn start_watch(&mut self) {
        if self.item.stopped {
            return;
        }
        match self.proxy() {
            Some(Ok(proxy)) => {
                let watch = proxy.watch();
                self.proxy_watch = Some(ProxyWatch { proxy, watch });
            }
            Some(Err(e)) => self.notes.push(format!("no proxy watch: {e}")),
            None => {}
        }
    }

    /// When the tenant is done (rolled, or undone): the watch goes on until the proxy answers
    /// again (at most the proxy timeout), then its figures go into the report.
    pub(super) async fn finish_watch(&mut self) {
        let Some(w) = self.proxy_watch.take() else { return };
        let mut settle =
            self.run.app.proxy.as_ref().map_or(Duration::from_secs(30), |p| Duration::from_secs(p.timeout_s));
        // Interrupted: the figures so far, without holding up the exit.
        if self.run.ctx.cancel.is_cancelled() {
            settle = settle.min(INTERRUPTED_SETTLE);
        }
        let mut report = w.watch.finish(settle).await;
        report.route_ms = self.route.map(ms);
        self.proxy_report = Some(report);
    }

    /// After the container's own gate: the proxy must route the tenant's host to the new
    /// container within `proxy.timeout_s` (or `timeout`), else the release fails like an
    /// unhealthy one.
    pub(super) async fn route_gate(&mut self, timeout: Option<Duration>) -> StepResult {
        let Some(spec) = self.run.app.proxy.as_ref() else { return Ok(()) };
        let proxy = match &self.proxy_watch {
            Some(w) => w.proxy.clone(),
            None => match self.proxy() {
                Some(Ok(p)) => p,
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            },
        };
        let health = &self.run.app.health;
        let direct = match self.run.engine.ip(&self.j.name, health.network.as_deref()).await {
            Ok(Ok(ip)) => {
                let host = match ip {
                    std::net::IpAddr::V6(v6) => format!("[{v6}]"),
                    std::net::IpAddr::V4(v4) => v4.to_string(),
                };
                Some(format!("http://{host}:{}{}", health.port, spec.path.as_deref().unwrap_or(&health.path)))
            }
            _ => None,
        };
        let cancel = &self.run.ctx.cancel;
        let timeout = timeout.unwrap_or(Duration::from_secs(spec.timeout_s));
        let took = proxy.routes_to(direct.as_deref(), timeout, || cancel.is_cancelled()).await?;
        if self.route.is_none() {
            self.route = Some(took);
        }
        Ok(())
    }

    /// After the canary's soak: still routed to it through the proxy.
    pub(super) async fn route_after_soak(&mut self) -> StepResult {
        self.route_gate(Some(AFTER_SOAK)).await
    }
}
