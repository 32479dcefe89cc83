//! A rollout's waves (`[app.rollout]`): the plan's tenants after the canary ordered by
//! `order_by` and cut into the configured waves, each a label expression and a count or a
//! percentage of the tenants left, the rest in a last wave. Pure logic over the plan and the
//! tenants' labels; the sets are frozen in the run ledger before the first tenant is touched.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::Serialize;

use super::PlanItem;
use crate::config::RolloutSpec;
use crate::types::TenantId;

/// One wave of a rollout.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Wave {
    /// 0: the canary's wave.
    pub index: usize,
    /// `canary`, `wave 1`, …, `rest`.
    pub name: String,
    /// What it selected (`*` for every tenant left).
    pub select: String,
    /// Its tenants, in the order they start.
    pub tenants: Vec<TenantId>,
    /// Tenants rolled at once.
    pub max_parallel: usize,
    /// Seconds each tenant soaks after its health gate.
    pub bake_s: u64,
    /// The share of its tenants that must end rolled for the run to go on past it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_healthy: Option<f64>,
    /// Seconds from its first start within which it must be done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress_deadline_s: Option<u64>,
}

impl Wave {
    /// `min_healthy` and `progress_deadline_s` of the wave named `name` (as [`cut`] names
    /// them) under `spec`: a resumed run's waves, read back by name, take them from here.
    pub fn limits_of(spec: &RolloutSpec, name: &str) -> (Option<f64>, Option<u64>) {
        if name == "rest" {
            return (spec.min_healthy, spec.progress_deadline_s);
        }
        let n = name.strip_prefix("wave ").and_then(|n| n.parse::<usize>().ok());
        match n.and_then(|n| spec.waves.get(n.wrapping_sub(1))) {
            Some(w) => (w.min_healthy, w.progress_deadline_s),
            None => (None, None),
        }
    }
}

/// Cut `items` (the plan, canary first) into waves and reorder `items` to follow them.
/// `labels` gives a tenant's labels; `max_parallel` (the run's `--max-parallel`) overrides
/// every wave's but the canary's. Without `[app.rollout]`: the canary, then the rest one at a
/// time, in the plan's order — the rollout as it was before waves.
pub fn cut(
    spec: &RolloutSpec,
    items: &mut Vec<PlanItem>,
    labels: &dyn Fn(&TenantId) -> BTreeMap<String, String>,
    max_parallel: Option<usize>,
) -> Vec<Wave> {
    let parallel = |n: usize| max_parallel.unwrap_or(n);
    let mut rest: Vec<PlanItem> = std::mem::take(items);
    let mut waves = Vec::new();
    let mut out = Vec::new();
    if rest.first().is_some_and(|i| i.canary) {
        let c = rest.remove(0);
        waves.push(Wave {
            index: 0,
            name: "canary".into(),
            select: c.tenant.to_string(),
            tenants: vec![c.tenant.clone()],
            max_parallel: 1,
            bake_s: 0,
            min_healthy: None,
            progress_deadline_s: None,
        });
        out.push(c);
    }
    if let Some(key) = &spec.order_by {
        // Stopped tenants stay last (they never gate); a stable sort keeps the plan's order
        // (by tenant id) between equal values.
        rest.sort_by(|a, b| {
            a.stopped.cmp(&b.stopped).then_with(|| by_label(key, &labels(&a.tenant), &labels(&b.tenant)))
        });
    }
    for (n, w) in spec.waves.iter().enumerate() {
        let matching: Vec<usize> =
            rest.iter().enumerate().filter(|(_, i)| w.select.matches(&labels(&i.tenant))).map(|(k, _)| k).collect();
        let take: Vec<usize> = matching.iter().copied().take(w.size.of(matching.len())).collect();
        if take.is_empty() {
            continue;
        }
        let mut taken = Vec::new();
        for k in take.iter().rev() {
            taken.push(rest.remove(*k));
        }
        taken.reverse();
        waves.push(Wave {
            index: waves.len(),
            name: format!("wave {}", n + 1),
            select: w.select.to_string(),
            tenants: taken.iter().map(|i| i.tenant.clone()).collect(),
            max_parallel: parallel(w.max_parallel),
            bake_s: w.bake_s,
            min_healthy: w.min_healthy,
            progress_deadline_s: w.progress_deadline_s,
        });
        out.extend(taken);
    }
    if !rest.is_empty() {
        waves.push(Wave {
            index: waves.len(),
            name: "rest".into(),
            select: "*".into(),
            tenants: rest.iter().map(|i| i.tenant.clone()).collect(),
            max_parallel: parallel(spec.max_parallel),
            bake_s: 0,
            min_healthy: spec.min_healthy,
            progress_deadline_s: spec.progress_deadline_s,
        });
        out.extend(rest);
    }
    *items = out;
    waves
}

/// `order_by`: numbers numerically, else as text; a tenant without the label comes first.
fn by_label(key: &str, a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> Ordering {
    match (a.get(key), b.get(key)) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(x), Some(y)) => match (x.trim().parse::<f64>(), y.trim().parse::<f64>()) {
            (Ok(p), Ok(q)) => p.partial_cmp(&q).unwrap_or(Ordering::Equal),
            _ => x.cmp(y),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{LabelExpr, WaveSize, WaveSpec};

    const D: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn item(t: &str, canary: bool) -> PlanItem {
        PlanItem {
            tenant: t.parse().unwrap(),
            container: format!("app-{t}"),
            from: None,
            to: D.parse().unwrap(),
            canary,
            stopped: false,
            copy: None,
            stack: None,
        }
    }

    /// t00..t39, t00 the canary; tier=free for even ones; value = 100 - n.
    fn fleet() -> (Vec<PlanItem>, impl Fn(&TenantId) -> BTreeMap<String, String>) {
        let items = (0..40).map(|n| item(&format!("t{n:02}"), n == 0)).collect();
        let labels = |t: &TenantId| {
            let n: usize = t.as_str()[1..].parse().unwrap();
            let mut l = BTreeMap::new();
            l.insert("tier".to_string(), if n.is_multiple_of(2) { "free" } else { "paid" }.to_string());
            l.insert("value".to_string(), (100 - n).to_string());
            l
        };
        (items, labels)
    }

    fn names(w: &Wave) -> Vec<&str> {
        w.tenants.iter().map(|t| t.as_str()).collect()
    }

    #[test]
    fn without_a_rollout_table_it_is_the_canary_then_the_rest_one_at_a_time_in_plan_order() {
        let (mut items, labels) = fleet();
        let before: Vec<TenantId> = items.iter().map(|i| i.tenant.clone()).collect();
        let waves = cut(&RolloutSpec::default(), &mut items, &labels, None);
        assert_eq!(waves.len(), 2);
        assert_eq!((names(&waves[0]), waves[0].max_parallel), (vec!["t00"], 1));
        assert_eq!((waves[1].name.as_str(), waves[1].tenants.len(), waves[1].max_parallel), ("rest", 39, 1));
        assert_eq!(items.iter().map(|i| i.tenant.clone()).collect::<Vec<_>>(), before);
    }

    #[test]
    fn waves_take_their_share_of_what_is_left_in_order_by_order_and_the_plan_follows_them() {
        let (mut items, labels) = fleet();
        let spec = RolloutSpec {
            order_by: Some("value".into()),
            max_parallel: 8,
            waves: vec![
                WaveSpec {
                    select: LabelExpr::parse("tier=free").unwrap(),
                    size: WaveSize::Percent(10.0),
                    max_parallel: 4,
                    bake_s: 2,
                    min_healthy: None,
                    progress_deadline_s: None,
                },
                WaveSpec {
                    select: LabelExpr::default(),
                    size: WaveSize::Count(3),
                    max_parallel: 2,
                    bake_s: 0,
                    min_healthy: None,
                    progress_deadline_s: None,
                },
            ],
            ..RolloutSpec::default()
        };
        let waves = cut(&spec, &mut items, &labels, None);
        // value = 100 - n ascending: the highest n first, so the high-value t01 is last.
        assert_eq!(names(&waves[1]), vec!["t38", "t36"], "10% of 19 free tenants left, rounded up");
        assert_eq!((waves[1].max_parallel, waves[1].bake_s), (4, 2));
        assert_eq!(names(&waves[2]), vec!["t39", "t37", "t35"]);
        assert_eq!(waves[3].tenants.len(), 40 - 1 - 2 - 3);
        assert_eq!(waves[3].tenants.last().unwrap().as_str(), "t01");
        assert_eq!(waves[3].max_parallel, 8);
        let order: Vec<&str> = items.iter().map(|i| i.tenant.as_str()).collect();
        let from_waves: Vec<&str> = waves.iter().flat_map(|w| w.tenants.iter().map(|t| t.as_str())).collect();
        assert_eq!(order, from_waves);
        // --max-parallel overrides every wave but the canary's.
        let (mut items, labels) = fleet();
        let waves = cut(&spec, &mut items, &labels, Some(1));
        assert!(waves.iter().all(|w| w.max_parallel == 1));
    }

    #[test]
    fn order_by_compares_numbers_as_numbers_and_puts_tenants_without_the_label_first() {
        let l = |v: Option<&str>| v.map(|v| [("value".to_string(), v.to_string())].into()).unwrap_or_default();
        assert_eq!(by_label("value", &l(Some("9")), &l(Some("10"))), Ordering::Less);
        assert_eq!(by_label("value", &l(Some("b")), &l(Some("a"))), Ordering::Greater);
        assert_eq!(by_label("value", &l(None), &l(Some("1"))), Ordering::Less);
    }
}
