//! `config held-routes`: the Traefik file-provider routes of "A switch no request fails on"
//! (README), computed from fleet.toml and the engine. For every app with `[app.proxy]`, each
//! tenant that keeps a fixed address gets a router for its host (the proxy's host template), a
//! service at that address and the app's port, and a retry middleware that holds a request
//! while the switch restarts the tenant. A tenant without a fixed address is left out, named,
//! with the reason (doctor's `proxy_hold` says the same). Nothing but the named file is written.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::adapters::{desired, docker::Engine};
use crate::config::{App, HostConfig};
use crate::error::{Error, Result};

/// Retry attempts of the hold middleware: with Traefik's exponential backoff from 50 ms, about
/// 100 s of holding — longer than any start, so the app's own start time bounds the wait.
const ATTEMPTS: u32 = 30;

/// One tenant's held route.
#[derive(Debug, Clone, Serialize)]
pub struct HeldRoute {
    /// The app.
    pub app: String,
    /// The tenant.
    pub tenant: String,
    /// The Host header routed.
    pub host: String,
    /// `http://ADDRESS:PORT`, the tenant's fixed address.
    pub url: String,
}

/// A tenant the file routes nothing to, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Unheld {
    /// The app.
    pub app: String,
    /// The tenant.
    pub tenant: String,
    /// Why it has no held route.
    pub reason: String,
}

/// What `config held-routes` computed, and where it wrote it.
#[derive(Debug, Clone, Serialize)]
pub struct HeldRoutesReport {
    /// The routes in the file.
    pub routes: Vec<HeldRoute>,
    /// The tenants left out.
    pub unheld: Vec<Unheld>,
    /// The file's text (Traefik dynamic configuration, YAML).
    pub text: String,
    /// The file written, if `--write` was given.
    pub written: Option<PathBuf>,
}

impl fmt::Display for HeldRoutesReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.written {
            Some(p) => writeln!(f, "wrote {} ({} route(s)):", p.display(), self.routes.len())?,
            None => writeln!(f, "{} route(s) (not written; --write FILE writes them):", self.routes.len())?,
        }
        f.write_str(&self.text)?;
        for u in &self.unheld {
            writeln!(f, "not held: app {} tenant {}: {}", u.app, u.tenant, u.reason)?;
        }
        Ok(())
    }
}

/// The routes for this host's fleet.toml (at the branch head) and running engine; with `write`,
/// written atomically (0644) to that file, whose dir must exist (Traefik's watched dir).
pub async fn held_routes(cfg: &HostConfig, write: Option<&Path>) -> Result<HeldRoutesReport> {
    if let Some(file) = write {
        let dir = file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if !dir.is_dir() {
            return Err(Error::Usage(format!(
                "--write {}: {} is not a directory; give a file in the dir Traefik's file provider watches",
                file.display(),
                dir.display()
            )));
        }
    }
    let (d, s) = (cfg.desired.clone(), cfg.state_dir.clone());
    let state = crate::blocking::run("reading the desired state", move || desired::read(&d, &s, None)).await??;
    let apps: Vec<&App> = state.fleet.apps.iter().filter(|a| a.proxy.is_some()).collect();
    if apps.is_empty() {
        return Err(Error::Usage(
            "no app in fleet.toml has [app.proxy]: held routes are for apps reached through the proxy; \
             add [app.proxy] (README, \"Downtime where customers feel it\")"
                .into(),
        ));
    }
    let engine = Engine::connect(&cfg.docker).await?;
    let (mut routes, mut unheld) = (Vec::new(), Vec::new());
    for app in apps {
        let spec = app.proxy.as_ref().expect("filtered on proxy");
        for t in engine.tenants(app).await? {
            let mut leave =
                |reason: String| unheld.push(Unheld { app: app.name.clone(), tenant: t.tenant.to_string(), reason });
            let addrs = match engine.spec(&t.name).await {
                Ok(s) => s.fixed_addresses(),
                Err(e) => {
                    leave(format!("cannot inspect container {}: {e}", t.name));
                    continue;
                }
            };
            let chosen: Vec<&(String, String)> = match &app.health.network {
                Some(n) => addrs.iter().filter(|(net, _)| net == n).collect(),
                None => addrs.iter().collect(),
            };
            let addr = match chosen.as_slice() {
                [(_, a)] => a,
                [] => {
                    leave(format!(
                        "container {} has no fixed address{} (give it one: `docker run --ip` on a network with a subnet)",
                        t.name,
                        app.health.network.as_ref().map_or(String::new(), |n| format!(" on network {n}"))
                    ));
                    continue;
                }
                _ => {
                    leave(format!(
                        "container {} has fixed addresses on several networks; set health.network to the one the proxy \
                         reaches",
                        t.name
                    ));
                    continue;
                }
            };
            let ip = if addr.contains(':') { format!("[{addr}]") } else { addr.clone() };
            routes.push(HeldRoute {
                app: app.name.clone(),
                tenant: t.tenant.to_string(),
                host: spec.host_of(&t.tenant),
                url: format!("http://{ip}:{}", app.health.port),
            });
        }
    }
    routes.sort_by(|a, b| (&a.app, &a.tenant).cmp(&(&b.app, &b.tenant)));
    let text = render(&routes);
    if let Some(file) = write {
        crate::fsutil::atomic_write(file, text.as_bytes(), 0o644).map_err(|e| Error::io(file, e))?;
    }
    Ok(HeldRoutesReport { routes, unheld, text, written: write.map(Path::to_path_buf) })
}

/// A router, service and middleware name for `host`: unique per host (two routers for one host
/// would conflict in Traefik anyway), of the characters Traefik's names allow.
fn name_of(host: &str) -> String {
    format!("slipway-{}", host.replace(['.', ':'], "-"))
}

/// The Traefik dynamic configuration (YAML) of `routes`. Every value comes from a validated
/// host template, tenant id and container address, and is quoted besides.
pub fn render(routes: &[HeldRoute]) -> String {
    let mut out = String::from(
        "# Written by `slipway config held-routes`: Traefik file-provider routes that outlive a tenant's\n\
         # container, so a switch holds customers' requests instead of failing them (README, \"A switch no\n\
         # request fails on\"). Remove the Docker provider's router for these hosts. Do not edit by hand:\n\
         # run the command again after adding tenants.\n",
    );
    if routes.is_empty() {
        out.push_str("http: {}\n");
        return out;
    }
    out.push_str("http:\n  routers:\n");
    for r in routes {
        let n = name_of(&r.host);
        out.push_str(&format!(
            "    {n}:\n      rule: \"Host(`{}`)\"\n      service: {n}\n      middlewares: [\"{n}-hold\"]\n",
            r.host
        ));
    }
    out.push_str("  middlewares:\n");
    for r in routes {
        out.push_str(&format!(
            "    {}-hold:\n      retry:\n        attempts: {ATTEMPTS}\n        initialInterval: 50ms\n",
            name_of(&r.host)
        ));
    }
    out.push_str("  services:\n");
    for r in routes {
        out.push_str(&format!(
            "    {}:\n      loadBalancer:\n        servers:\n          - url: \"{}\"\n",
            name_of(&r.host),
            r.url
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_route_gets_its_own_router_service_and_hold_named_after_its_host() {
        let routes = vec![
            HeldRoute {
                app: "pulse".into(),
                tenant: "t-abc".into(),
                host: "t-abc.cloud.example.com".into(),
                url: "http://10.20.0.11:8080".into(),
            },
            HeldRoute {
                app: "pulse".into(),
                tenant: "t-def".into(),
                host: "t-def.cloud.example.com:8000".into(),
                url: "http://[fd00::11]:8080".into(),
            },
        ];
        let text = render(&routes);
        assert!(text.contains(
            "    slipway-t-abc-cloud-example-com:\n      rule: \"Host(`t-abc.cloud.example.com`)\"\n      \
             service: slipway-t-abc-cloud-example-com\n      middlewares: [\"slipway-t-abc-cloud-example-com-hold\"]\n"
        ));
        assert!(text.contains("    slipway-t-def-cloud-example-com-8000-hold:\n      retry:\n        attempts: 30\n"));
        assert!(text.contains("          - url: \"http://[fd00::11]:8080\"\n"));
        assert_eq!(text.matches("loadBalancer").count(), 2);
        assert!(render(&[]).ends_with("http: {}\n"));
    }
}
