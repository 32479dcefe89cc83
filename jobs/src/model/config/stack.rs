//! A tenant that is a stack of containers (`[app.stack]` and `[app.services.<name>]` in
//! `fleet.toml`): the containers a compose project (or Coolify) made for one customer, grouped
//! by a label, each the container of one named service with a digest pin of its own. The
//! single-container tenant is the simplest case and is not a stack: an app without
//! `[app.services]` parses exactly as before.
//!
//! Invariants kept here: every service has a pinned image, a unique start order (ties broken by
//! name, so the order is total and deterministic), absolute container paths for its data
//! mounts, and a name usable in container names; the app's HTTP health check names one of the
//! services.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::fleet::HealthSpec;
use crate::types::PinnedImage;

/// The label compose (v1 and v2) and Coolify put on every container of a project.
pub const COMPOSE_PROJECT: &str = "com.docker.compose.project";
/// The label naming the service a compose container belongs to.
pub const COMPOSE_SERVICE: &str = "com.docker.compose.service";
/// Compose v2's label listing the services a container's service depends on
/// (`db:service_started:false,cache:service_healthy:true`).
pub const COMPOSE_DEPENDS_ON: &str = "com.docker.compose.depends_on";

/// How an app's tenants are stacks: the grouping label and the services.
#[derive(Debug, Clone, Serialize)]
pub struct Stack {
    /// The label whose value groups containers into one tenant (default: the compose project).
    pub group: String,
    /// The label naming each container's service (default: `com.docker.compose.service`).
    pub service_label: String,
    /// Every service, in start order (`order`, then name).
    pub services: Vec<Service>,
}

/// One `[app.services.<name>]`.
#[derive(Debug, Clone, Serialize)]
pub struct Service {
    /// The service's name, as its label says it.
    pub name: String,
    /// The digest this service's container should run.
    pub image: PinnedImage,
    /// Whether it writes the tenant's data: its container is stopped with the others that do
    /// while a changed writer is switched, and its data mounts are copied and swapped back.
    pub writes: bool,
    /// Start order (lower first); stopped in reverse.
    pub order: i64,
    /// Container paths whose mounts (a bind dir or a named volume of the `local` driver) hold
    /// the tenant's data.
    pub data: Vec<String>,
    /// An HTTP check of this service's own, besides "running (and healthy, when its image has
    /// a HEALTHCHECK)".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthSpec>,
}

impl Stack {
    /// The service named `name`.
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    /// Every service's name, in start order, for messages.
    pub fn names(&self) -> String {
        self.services.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
    }

    /// The pins of every service, `name@digest` in start order: the stack's release, as the run
    /// record keeps it (one run per stack release).
    pub fn pin_key(&self) -> String {
        self.services.iter().map(|s| format!("{}@{}", s.name, s.image.digest())).collect::<Vec<_>>().join(",")
    }
}

/// `[app.stack]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStack {
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    service_label: Option<String>,
}

/// `[app.services.<name>]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    image: String,
    #[serde(default)]
    writes: bool,
    #[serde(default)]
    order: i64,
    #[serde(default)]
    data: Vec<String>,
    #[serde(default)]
    health: Option<HealthSpec>,
}

/// Validate `[app.stack]` and `[app.services]`; the error names the key and the value.
pub(super) fn validate(
    stack: Option<RawStack>,
    services: BTreeMap<String, RawService>,
    scratch: &[String],
) -> std::result::Result<Stack, String> {
    let stack = stack.unwrap_or_default();
    let label_ok = |k: &str| !k.is_empty() && !k.contains(['=', ' ', ',']);
    let group = stack.group.unwrap_or_else(|| COMPOSE_PROJECT.to_string());
    let service_label = stack.service_label.unwrap_or_else(|| COMPOSE_SERVICE.to_string());
    for (key, v) in [("stack.group", &group), ("stack.service_label", &service_label)] {
        if !label_ok(v) {
            return Err(format!("{key} \"{v}\" must be a label key, e.g. \"{COMPOSE_PROJECT}\""));
        }
    }
    if services.is_empty() {
        return Err("[app.services] is empty; declare one [app.services.<name>] per service of the stack".into());
    }
    let mut out = Vec::new();
    for (name, raw) in services {
        let key = format!("services.{name}");
        // It names a drill's containers (`<tenant>-<service>-…`): never a path, never an option.
        if name.is_empty()
            || name.len() > 63
            || !name.as_bytes()[0].is_ascii_alphanumeric()
            || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(format!(
                "{key}: the service name \"{name}\" must be letters, digits, '-', '_' or '.', start with a letter or \
                 digit and be at most 63 characters"
            ));
        }
        let image: PinnedImage = raw.image.parse().map_err(|e| format!("{key}.image: {e}"))?;
        if let Some(d) = raw.data.iter().find(|d| !d.starts_with('/')) {
            return Err(format!(
                "{key}.data: \"{d}\" must be an absolute path in the container where a data mount is, e.g. \"/data\""
            ));
        }
        if let Some(d) = raw.data.iter().find(|d| scratch.contains(d)) {
            return Err(format!("{key}.data: \"{d}\" is also in scratch_mounts; a mount holds data or it does not"));
        }
        if !raw.data.is_empty() && !raw.writes {
            return Err(format!(
                "{key}: it lists data mounts ({}) but writes = false; a service that mounts the tenant's data \
                 writable writes it: set writes = true (or mount it read-only and drop it from data)",
                raw.data.join(", ")
            ));
        }
        if let Some(h) = &raw.health {
            if !h.path.starts_with('/') || h.port == 0 || h.timeout_s == 0 {
                return Err(format!(
                    "{key}.health: path must start with '/', port and timeout_s must be greater than 0"
                ));
            }
            if h.service.is_some() {
                return Err(format!("{key}.health.service: a service's own check needs no service"));
            }
        }
        out.push(Service { name, image, writes: raw.writes, order: raw.order, data: raw.data, health: raw.health });
    }
    // BTreeMap order is by name: a stable sort by `order` keeps names in order among equals.
    out.sort_by_key(|s| s.order);
    Ok(Stack { group, service_label, services: out })
}

/// The services a compose v2 `depends_on` label names (`db:service_started:false,…`).
pub fn depends_on(label: &str) -> Vec<String> {
    label
        .split(',')
        .filter_map(|d| d.split(':').next())
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(str::to_string)
        .collect()
}

/// Order `names` so that every service starts after those it depends on (`deps`, from the
/// compose labels), keeping the fleet's start order otherwise; a dependency outside `names` is
/// ignored, and a cycle falls back to the fleet order for what is left.
pub fn start_order(names: &[String], deps: &BTreeMap<String, Vec<String>>) -> Vec<String> {
    let mut left: Vec<String> = names.to_vec();
    let mut out = Vec::new();
    while !left.is_empty() {
        let ready =
            left.iter().position(|n| deps.get(n).is_none_or(|ds| ds.iter().all(|d| !left.contains(d) || d == n)));
        let i = ready.unwrap_or(0);
        out.push(left.remove(i));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Fleet;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    /// A stack app: app (writes /data, the app's HTTP check) and worker (no data).
    fn stack_app(extra: &str) -> String {
        format!(
            "[[app]]\nname = \"agent\"\nselect = \"cf.app=agent\"\n\
             health = {{ path = \"/api/health\", port = 8080, service = \"app\" }}\n{extra}\n\
             [app.services.worker]\nimage = \"reg/worker@{D2}\"\norder = 2\n\
             [app.services.app]\nimage = \"reg/app@{D1}\"\nwrites = true\norder = 1\ndata = [\"/data\"]\n"
        )
    }

    #[test]
    fn a_stack_app_parses_with_compose_defaults_in_start_order() {
        let f = Fleet::parse(&stack_app(""), "fleet.toml").unwrap();
        let a = &f.apps[0];
        let s = a.stack.as_ref().unwrap();
        assert_eq!((s.group.as_str(), s.service_label.as_str()), (COMPOSE_PROJECT, COMPOSE_SERVICE));
        assert_eq!(s.names(), "app, worker");
        assert_eq!(a.tenant_from.to_string(), format!("label:{COMPOSE_PROJECT}"));
        assert_eq!(a.image.digest().to_string(), D1, "the first service's pin");
        assert!(s.services[0].writes && !s.services[1].writes);
        assert_eq!(s.pin_key(), format!("app@{D1},worker@{D2}"));
        // The single-container app is untouched by the stack keys.
        assert!(Fleet::parse(include_str!("../../../../deploy/fleet.example.toml"), "f").unwrap().apps[0]
            .stack
            .is_none());
    }

    #[test]
    fn each_bad_stack_input_is_refused_naming_the_key_and_value() {
        let cases: Vec<(String, &[&str])> = vec![
            (
                stack_app("").replace("service = \"app\"", "service = \"web\""),
                &["health.service", "\"web\"", "app, worker"],
            ),
            (stack_app("").replace(", service = \"app\"", ""), &["health.service is missing"]),
            (stack_app(&format!("image = \"reg/x@{D1}\"")), &["a stack pins an image per service"]),
            (stack_app("data_dir = \"/d/{tenant}\""), &["data_dir", "services' mounts"]),
            (stack_app("").replace("data = [\"/data\"]", "data = [\"data\"]"), &["services.app.data", "\"data\""]),
            (stack_app("").replace("writes = true\n", ""), &["services.app", "writes = false"]),
            (stack_app("").replace("reg/worker@", "reg/worker:latest#"), &["services.worker.image"]),
            (stack_app("[app.stack]\ngroup = \"a b\""), &["stack.group", "a b"]),
            (
                stack_app("").replace("[app.services.worker]", "[app.services.\"..\"]"),
                &["services..", "\"..\"", "start with"],
            ),
            (stack_app("").replace("[app.services.worker]", "[app.services.-v]"), &["\"-v\"", "start with"]),
            (stack_app("scratch_mounts = [\"/data\"]"), &["services.app.data", "scratch_mounts"]),
            (stack_app("").replace("order = 2", "oder = 2"), &["`oder`"]),
            (stack_app("pre_copy = false"), &["pre_copy = false"]),
            (stack_app("[app.proxy]\nentrypoint = \"http://127.0.0.1:80\"\nhost = \"{tenant}.x\""), &["[app.proxy]"]),
        ];
        for (text, needles) in cases {
            let e = Fleet::parse(&text, "fleet.toml").unwrap_err().to_string();
            assert!(e.starts_with("fleet.toml: app \"agent\""), "{e}");
            for n in needles {
                assert!(e.contains(n), "missing {n:?} in: {e}");
            }
        }
    }

    #[test]
    fn depends_on_labels_reorder_the_fleet_order_and_a_cycle_keeps_it() {
        let names: Vec<String> = ["app", "worker", "db"].map(String::from).to_vec();
        let mut deps = BTreeMap::new();
        deps.insert("app".to_string(), depends_on("db:service_started:false,worker:service_healthy:true"));
        assert_eq!(start_order(&names, &deps), ["worker", "db", "app"]);
        assert_eq!(start_order(&names, &BTreeMap::new()), names);
        deps.insert("db".to_string(), vec!["app".to_string()]);
        assert_eq!(start_order(&names, &deps), ["worker", "app", "db"]);
    }
}
