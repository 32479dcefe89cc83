//! `[app.rollout]` of `fleet.toml`: how an app's tenants are rolled after the canary — in
//! which order (`order_by` a label), in which waves (`[[app.rollout.waves]]`: a label
//! expression, a count or a percentage of the tenants left, `max_parallel`, `bake_s`), and how
//! many failed tenants the run takes before it halts (`max_failed`, `max_failure_ratio`), and
//! how long a tenant may be down (`downtime_budget_ms`), and what a run over its budget does
//! (`on_budget`: pause, resumable, by default). Without the table: canary, then one
//! tenant at a time, halting at the first failure — as before waves existed.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// One `key=value` or `key!=value` term of a label expression.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LabelTerm {
    /// Label key.
    pub key: String,
    /// Wanted value.
    pub value: String,
    /// `!=`: the label is absent or has another value.
    pub negated: bool,
}

/// A label expression: terms joined by `,`, all of which must hold (`tier=free,region!=eu`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct LabelExpr(pub Vec<LabelTerm>);

impl LabelExpr {
    /// Parse `tier=free`, `plan!=enterprise`, `a=b,c!=d`; `*` (or empty) selects every tenant.
    pub fn parse(s: &str) -> std::result::Result<LabelExpr, String> {
        let s = s.trim();
        if s.is_empty() || s == "*" {
            return Ok(LabelExpr::default());
        }
        let mut terms = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            let (key, value, negated) = match part.split_once("!=") {
                Some((k, v)) => (k, v, true),
                None => match part.split_once('=') {
                    Some((k, v)) => (k, v, false),
                    None => {
                        return Err(format!(
                            "\"{part}\" is not a label term: write key=value or key!=value, joined by ',' \
                             (e.g. \"tier=free,plan!=enterprise\"), or \"*\" for every tenant"
                        ))
                    }
                },
            };
            let (key, value) = (key.trim(), value.trim());
            if key.is_empty() || key.contains('=') || value.contains('=') {
                return Err(format!("\"{part}\": a label term is key=value or key!=value with a non-empty key"));
            }
            terms.push(LabelTerm { key: key.into(), value: value.into(), negated });
        }
        Ok(LabelExpr(terms))
    }

    /// Whether a tenant with `labels` is selected.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|t| (labels.get(&t.key) == Some(&t.value)) != t.negated)
    }
}

impl fmt::Display for LabelExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("*");
        }
        let terms: Vec<String> =
            self.0.iter().map(|t| format!("{}{}{}", t.key, if t.negated { "!=" } else { "=" }, t.value)).collect();
        f.write_str(&terms.join(","))
    }
}

/// How many of the tenants a wave's selector matches it takes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WaveSize {
    /// Every one.
    All,
    /// At most this many.
    Count(usize),
    /// This percentage of them, rounded up (at least one when any match).
    Percent(f64),
}

impl WaveSize {
    /// How many of `n` matching tenants the wave takes.
    pub fn of(self, n: usize) -> usize {
        match self {
            WaveSize::All => n,
            WaveSize::Count(c) => c.min(n),
            WaveSize::Percent(p) => ((n as f64 * p / 100.0).ceil() as usize).min(n),
        }
    }
}

/// One `[[app.rollout.waves]]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WaveSpec {
    /// Which of the tenants left it takes from.
    pub select: LabelExpr,
    /// How many of them.
    pub size: WaveSize,
    /// Tenants of the wave rolled at once.
    pub max_parallel: usize,
    /// Seconds each tenant of the wave soaks after its health gate (checked again, undone
    /// with its data if it failed) before the next wave starts.
    pub bake_s: u64,
    /// The share (0..1] of the wave's tenants that must end on the new version for the run to
    /// go on past it; below it the run is over its budget (`on_budget`).
    pub min_healthy: Option<f64>,
    /// Seconds from the wave's first start within which it must be done; past them no further
    /// tenant of it starts and the run is over its budget (`on_budget`).
    pub progress_deadline_s: Option<u64>,
}

/// What a run does once its failed tenants go over the budget (each failed tenant is rolled
/// back with its data whatever this says).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnBudget {
    /// Stop; the tenants not reached stay on the prior version (an app without
    /// `[app.rollout]`: the rollout as it always was).
    Halt,
    /// Stop and keep the run resumable (`rollout resume RUN`, `rollout abort RUN`), its waves
    /// frozen; the default with `[app.rollout]`.
    Pause,
    /// Roll back the tenants of the wave in progress that rolled, then pause.
    RollbackWave,
    /// Roll back every tenant the run rolled; nothing is left to resume.
    RollbackAll,
}

impl OnBudget {
    /// Every mode.
    pub const ALL: [OnBudget; 4] = [OnBudget::Halt, OnBudget::Pause, OnBudget::RollbackWave, OnBudget::RollbackAll];

    /// The word of fleet.toml.
    pub fn as_str(self) -> &'static str {
        match self {
            OnBudget::Halt => "halt",
            OnBudget::Pause => "pause",
            OnBudget::RollbackWave => "rollback-wave",
            OnBudget::RollbackAll => "rollback-all",
        }
    }
}

/// A paused run's default time before the next rollout or reconcile aborts it: three days, so
/// a pause on a Friday night is still there on Monday morning.
pub const DEFAULT_PAUSE_TIMEOUT_S: u64 = 3 * 24 * 3600;

/// `[app.rollout]`: waves and failure budgets. The default is the rollout as it always was.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RolloutSpec {
    /// Tenants rolled at once after the configured waves (the rest of the fleet); default 1.
    pub max_parallel: usize,
    /// Order the tenants after the canary by this label's value (numbers numerically, else
    /// as text; tenants without it first), so "high-value last" is `order_by = "value"`.
    pub order_by: Option<String>,
    /// Failed tenants (each one rolled back with its data) the run goes on after; one more
    /// halts it. Default 0 (with no `max_failure_ratio`): the first failure halts.
    pub max_failed: Option<usize>,
    /// The share of the run's tenants (0..1) that may fail before it halts.
    pub max_failure_ratio: Option<f64>,
    /// Stop → the new version through its health gate, at most this many milliseconds: a
    /// tenant slower than that is failed and rolled back with its data, healthy or not.
    pub downtime_budget_ms: Option<u64>,
    /// The waves after the canary, in order; the tenants none takes form a last wave.
    pub waves: Vec<WaveSpec>,
    /// What the run does over its failure budget.
    pub on_budget: OnBudget,
    /// Seconds a paused run waits for `rollout resume` or `rollout abort`; then the next
    /// rollout or reconcile of the app aborts it (rolls back what it changed).
    pub pause_timeout_s: u64,
    /// Maintenance windows: when which tenants may be rolled.
    pub windows: Vec<super::window::WindowSpec>,
    /// `min_healthy` of the last wave (the tenants no wave took).
    pub min_healthy: Option<f64>,
    /// `progress_deadline_s` of the last wave.
    pub progress_deadline_s: Option<u64>,
}

impl Default for RolloutSpec {
    fn default() -> Self {
        RolloutSpec {
            max_parallel: 1,
            order_by: None,
            max_failed: None,
            max_failure_ratio: None,
            downtime_budget_ms: None,
            waves: Vec::new(),
            on_budget: OnBudget::Halt,
            pause_timeout_s: DEFAULT_PAUSE_TIMEOUT_S,
            windows: Vec::new(),
            min_healthy: None,
            progress_deadline_s: None,
        }
    }
}

impl RolloutSpec {
    /// Why a stack's tenants cannot roll as this spec says, if so: they roll one at a time,
    /// without a bake, for now (fleet.toml's `[app.rollout]` and a run's `--waves` alike).
    pub fn stack_refusal(&self) -> Option<&'static str> {
        (self.max_parallel > 1 || self.waves.iter().any(|w| w.max_parallel > 1 || w.bake_s > 0)).then_some(
            "a stack's tenants roll one at a time for now (max_parallel and bake_s are not available for a stack yet)",
        )
    }

    /// Whether `failed` failures out of `total` tenants are more than the budget allows.
    pub fn over_budget(&self, failed: usize, total: usize) -> bool {
        if failed == 0 {
            return false;
        }
        let by_count = self.max_failed.is_some_and(|m| failed > m);
        let by_ratio = self.max_failure_ratio.is_some_and(|r| total == 0 || failed as f64 / total as f64 > r);
        match (self.max_failed, self.max_failure_ratio) {
            (None, None) => true,
            _ => by_count || by_ratio,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRollout {
    max_parallel: Option<usize>,
    order_by: Option<String>,
    max_failed: Option<usize>,
    max_failure_ratio: Option<f64>,
    downtime_budget_ms: Option<u64>,
    #[serde(default)]
    waves: Vec<RawWave>,
    on_budget: Option<OnBudget>,
    pause_timeout_s: Option<u64>,
    #[serde(default)]
    windows: Vec<super::window::RawWindow>,
    min_healthy: Option<f64>,
    progress_deadline_s: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWave {
    select: Option<String>,
    count: Option<usize>,
    percent: Option<f64>,
    max_parallel: Option<usize>,
    #[serde(default)]
    bake_s: u64,
    min_healthy: Option<f64>,
    progress_deadline_s: Option<u64>,
}

impl RawRollout {
    pub(crate) fn validate(self) -> std::result::Result<RolloutSpec, String> {
        let parallel = |key: &str, n: Option<usize>| match n {
            None => Ok(1),
            Some(0) => Err(format!("{key} = 0: at least one tenant must roll at a time; give 1 or more")),
            Some(n) => Ok(n),
        };
        let max_parallel = parallel("rollout.max_parallel", self.max_parallel)?;
        if let Some(k) = self.order_by.as_deref().filter(|k| k.trim().is_empty() || k.contains('=')) {
            return Err(format!("rollout.order_by = \"{k}\": give a label key, e.g. order_by = \"value\""));
        }
        if let Some(r) = self.max_failure_ratio.filter(|r| !(0.0..=1.0).contains(r) || r.is_nan()) {
            return Err(format!(
                "rollout.max_failure_ratio = {r}: give a share between 0 and 1 (0.1 = one tenant in ten may fail)"
            ));
        }
        if self.downtime_budget_ms == Some(0) {
            return Err("rollout.downtime_budget_ms = 0: no tenant can switch without any downtime; give the \
                        milliseconds a tenant may be down (stop → healthy), e.g. 5000"
                .into());
        }
        if self.pause_timeout_s == Some(0) {
            return Err("rollout.pause_timeout_s = 0: a pause would end before anyone could resume it; give the \
                        seconds a paused run waits for `rollout resume` or `abort`, e.g. 86400"
                .into());
        }
        let healthy = |key: &str, v: Option<f64>| match v {
            Some(m) if !(m > 0.0 && m <= 1.0) => {
                Err(format!("{key} = {m}: give a share above 0 and at most 1 (0.9 = nine tenants in ten)"))
            }
            _ => Ok(v),
        };
        let deadline = |key: &str, v: Option<u64>| match v {
            Some(0) => Err(format!("{key} = 0: give the seconds a wave may take, e.g. 1800")),
            _ => Ok(v),
        };
        let min_healthy = healthy("rollout.min_healthy", self.min_healthy)?;
        let progress_deadline_s = deadline("rollout.progress_deadline_s", self.progress_deadline_s)?;
        let mut waves = Vec::new();
        for (i, w) in self.waves.into_iter().enumerate() {
            let at = format!("rollout.waves[{i}]");
            let select =
                LabelExpr::parse(w.select.as_deref().unwrap_or("*")).map_err(|e| format!("{at}.select: {e}"))?;
            let size = match (w.count, w.percent) {
                (Some(_), Some(_)) => return Err(format!("{at}: give count or percent, not both")),
                (Some(0), None) => return Err(format!("{at}.count = 0: a wave takes at least one tenant")),
                (Some(c), None) => WaveSize::Count(c),
                (None, Some(p)) if !(p > 0.0 && p <= 100.0) => {
                    return Err(format!("{at}.percent = {p}: give a percentage above 0 and at most 100"))
                }
                (None, Some(p)) => WaveSize::Percent(p),
                (None, None) => WaveSize::All,
            };
            let max_parallel = parallel(&format!("{at}.max_parallel"), w.max_parallel)?;
            waves.push(WaveSpec {
                select,
                size,
                max_parallel,
                bake_s: w.bake_s,
                min_healthy: healthy(&format!("{at}.min_healthy"), w.min_healthy)?,
                progress_deadline_s: deadline(&format!("{at}.progress_deadline_s"), w.progress_deadline_s)?,
            });
        }
        Ok(RolloutSpec {
            max_parallel,
            order_by: self.order_by,
            max_failed: self.max_failed,
            max_failure_ratio: self.max_failure_ratio,
            downtime_budget_ms: self.downtime_budget_ms,
            waves,
            // With the table, a run over its budget pauses unless it says otherwise.
            on_budget: self.on_budget.unwrap_or(OnBudget::Pause),
            pause_timeout_s: self.pause_timeout_s.unwrap_or(DEFAULT_PAUSE_TIMEOUT_S),
            windows: self
                .windows
                .into_iter()
                .enumerate()
                .map(|(i, w)| w.validate(&format!("rollout.windows[{i}]")))
                .collect::<std::result::Result<_, _>>()?,
            min_healthy,
            progress_deadline_s,
        })
    }
}

/// A run's own waves (`rollout --waves FILE`): the wave keys of `[app.rollout]`, replacing the
/// app's for that run (its budget, windows and pause timeout stay fleet.toml's).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WavesOverride {
    /// The waves after the canary (none: the canary, then the rest as one last wave).
    pub waves: Vec<WaveSpec>,
    /// `max_parallel` of the last wave, when the file gives it.
    pub max_parallel: Option<usize>,
    /// `order_by`, when the file gives it.
    pub order_by: Option<String>,
    /// `min_healthy` of the last wave, when the file gives it.
    pub min_healthy: Option<f64>,
    /// `progress_deadline_s` of the last wave, when the file gives it.
    pub progress_deadline_s: Option<u64>,
}

/// The keys a `--waves` file may hold.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWavesFile {
    #[serde(default)]
    waves: Vec<RawWave>,
    max_parallel: Option<usize>,
    order_by: Option<String>,
    min_healthy: Option<f64>,
    progress_deadline_s: Option<u64>,
}

impl WavesOverride {
    /// Read `text`, a `--waves` file: `[[waves]]` tables written as `[[app.rollout.waves]]`
    /// are, and optionally the last wave's `max_parallel`, `min_healthy`,
    /// `progress_deadline_s` and `order_by`. Err names the key and the value; every value is
    /// checked as fleet.toml's is.
    pub fn parse(text: &str) -> std::result::Result<WavesOverride, String> {
        let raw: RawWavesFile = toml::from_str(text).map_err(|e| {
            format!(
                "{}; the file holds [[waves]] tables (select, count or percent, max_parallel, bake_s, min_healthy, \
                 progress_deadline_s) and optionally max_parallel, min_healthy, progress_deadline_s and order_by",
                e.to_string().trim_end()
            )
        })?;
        let given = (raw.max_parallel, raw.order_by.clone(), raw.min_healthy, raw.progress_deadline_s);
        let spec = RawRollout {
            max_parallel: raw.max_parallel,
            order_by: raw.order_by,
            min_healthy: raw.min_healthy,
            progress_deadline_s: raw.progress_deadline_s,
            waves: raw.waves,
            ..RawRollout::default()
        }
        .validate()
        .map_err(|e| e.strip_prefix("rollout.").map(str::to_string).unwrap_or(e))?;
        Ok(WavesOverride {
            waves: spec.waves,
            max_parallel: given.0.map(|_| spec.max_parallel),
            order_by: given.1,
            min_healthy: given.2,
            progress_deadline_s: given.3,
        })
    }

    /// `spec` with these waves.
    pub fn apply(&self, spec: &mut RolloutSpec) {
        spec.waves = self.waves.clone();
        spec.max_parallel = self.max_parallel.unwrap_or(spec.max_parallel);
        spec.order_by = self.order_by.clone().or(spec.order_by.take());
        spec.min_healthy = self.min_healthy.or(spec.min_healthy);
        spec.progress_deadline_s = self.progress_deadline_s.or(spec.progress_deadline_s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn label_expressions_select_by_equal_and_not_equal_all_terms_holding() {
        let e = LabelExpr::parse("tier=free, plan!=enterprise").unwrap();
        assert!(e.matches(&labels(&[("tier", "free")])));
        assert!(e.matches(&labels(&[("tier", "free"), ("plan", "pro")])));
        assert!(!e.matches(&labels(&[("tier", "free"), ("plan", "enterprise")])));
        assert!(!e.matches(&labels(&[("tier", "paid")])));
        assert_eq!(e.to_string(), "tier=free,plan!=enterprise");
        assert!(LabelExpr::parse("*").unwrap().matches(&labels(&[])));
        for bad in ["tier", "=free", "a==b", "tier=free,"] {
            assert!(LabelExpr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_wave_takes_its_count_or_its_percentage_rounded_up() {
        assert_eq!(WaveSize::Percent(10.0).of(39), 4);
        assert_eq!(WaveSize::Percent(10.0).of(1), 1);
        assert_eq!(WaveSize::Percent(10.0).of(0), 0);
        assert_eq!(WaveSize::Count(5).of(3), 3);
        assert_eq!(WaveSize::All.of(7), 7);
    }

    #[test]
    fn the_default_budget_halts_at_the_first_failure_and_a_budget_allows_its_count_or_ratio() {
        let d = RolloutSpec::default();
        assert!(!d.over_budget(0, 10) && d.over_budget(1, 10));
        let by_count = RolloutSpec { max_failed: Some(2), ..RolloutSpec::default() };
        assert!(!by_count.over_budget(2, 10) && by_count.over_budget(3, 10));
        let by_ratio = RolloutSpec { max_failure_ratio: Some(0.1), ..RolloutSpec::default() };
        assert!(!by_ratio.over_budget(4, 40) && by_ratio.over_budget(5, 40));
    }

    #[test]
    fn fleet_toml_takes_the_table_and_refuses_parallel_stacks_naming_the_table() {
        const D: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
        let app = |extra: &str| {
            format!(
                "[[app]]\nname = \"pulse\"\nimage = \"reg/pulse@{D}\"\nselect = \"pulse.managed=true\"\n\
                 tenant_from = \"name:pulse-{{tenant}}\"\ndata_dir = \"/data/{{tenant}}\"\n\
                 health = {{ path = \"/h\", port = 8080 }}\n{extra}"
            )
        };
        let text = app("[app.rollout]\norder_by = \"value\"\nmax_failed = 2\n\
                        [[app.rollout.waves]]\nselect = \"tier=free\"\npercent = 10\nmax_parallel = 4\nbake_s = 60\n");
        let f = crate::config::Fleet::parse(&text, "fleet.toml").unwrap();
        let r = &f.apps[0].rollout;
        assert_eq!((r.order_by.as_deref(), r.max_failed, r.max_parallel), (Some("value"), Some(2), 1));
        assert_eq!((r.waves[0].size, r.waves[0].max_parallel, r.waves[0].bake_s), (WaveSize::Percent(10.0), 4, 60));
        assert_eq!(crate::config::Fleet::parse(&app(""), "f").unwrap().apps[0].rollout, RolloutSpec::default());
        let e = crate::config::Fleet::parse(&app("[app.rollout]\nmax_paralel = 2\n"), "fleet.toml").unwrap_err();
        assert!(e.to_string().contains("max_paralel") && e.to_string().contains("fleet.toml"), "{e}");
        let stack = format!(
            "[[app]]\nname = \"agent\"\nselect = \"cf.app=agent\"\n\
             health = {{ path = \"/h\", port = 8080, service = \"app\" }}\n\
             [app.rollout]\nmax_parallel = 4\n\
             [app.services.app]\nimage = \"reg/app@{D}\"\nwrites = true\ndata = [\"/data\"]\n"
        );
        let e = crate::config::Fleet::parse(&stack, "fleet.toml").unwrap_err().to_string();
        assert!(e.contains("[app.rollout]") && e.contains("one at a time"), "{e}");
        // A key a stack's rollout would not keep is refused, not silently ignored.
        let budget = stack.replace("max_parallel = 4", "downtime_budget_ms = 500");
        let e = crate::config::Fleet::parse(&budget, "fleet.toml").unwrap_err().to_string();
        assert!(e.contains("downtime_budget_ms") && e.contains("fleet.toml"), "{e}");
        let sqlite = stack
            .replace("[app.rollout]\nmax_parallel = 4\n", "[app.database]\nkind = \"sqlite\"\npaths = [\"app.db\"]\n");
        let e = crate::config::Fleet::parse(&sqlite, "fleet.toml").unwrap_err().to_string();
        assert!(e.contains("database.service is missing") && e.contains("fleet.toml"), "{e}");
        // A stack's SQLite files: its service's, by their absolute paths under its data.
        let sqlite = sqlite.replace("paths = [\"app.db\"]", "service = \"app\"\npaths = [\"/data/app.db\"]");
        let f = crate::config::Fleet::parse(&sqlite, "fleet.toml").unwrap();
        let sq = f.apps[0].sqlite.as_ref().unwrap();
        assert_eq!((sq.service.as_deref(), sq.paths.as_slice()), (Some("app"), &["/data/app.db".to_string()][..]));
    }

    #[test]
    fn bad_values_are_named_with_their_key() {
        let parse = |t: &str| toml::from_str::<RawRollout>(t).map_err(|e| e.to_string()).and_then(|r| r.validate());
        for (text, want) in [
            ("max_parallel = 0", "rollout.max_parallel = 0"),
            ("max_failure_ratio = 1.5", "rollout.max_failure_ratio = 1.5"),
            ("[[waves]]\ncount = 2\npercent = 5", "rollout.waves[0]: give count or percent"),
            ("[[waves]]\npercent = 0", "rollout.waves[0].percent = 0"),
            ("[[waves]]\nselect = \"tier\"", "rollout.waves[0].select"),
            ("downtime_budget_ms = 0", "downtime_budget_ms = 0"),
            ("pause_timeout_s = 0", "pause_timeout_s = 0"),
            ("min_healthy = 1.5", "rollout.min_healthy = 1.5"),
            ("[[waves]]\nmin_healthy = 0", "rollout.waves[0].min_healthy = 0"),
            ("[[waves]]\nprogress_deadline_s = 0", "rollout.waves[0].progress_deadline_s = 0"),
            ("on_budget = \"wait\"", "on_budget"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
        // An empty table is the default but for the budget: a run over it pauses.
        assert_eq!(parse("").unwrap(), RolloutSpec { on_budget: OnBudget::Pause, ..RolloutSpec::default() });
        assert_eq!(parse("on_budget = \"rollback-wave\"").unwrap().on_budget, OnBudget::RollbackWave);
    }

    #[test]
    fn a_waves_file_replaces_the_waves_keeps_the_budget_and_is_checked_as_fleet_toml_is() {
        let w = WavesOverride::parse(
            "order_by = \"value\"\nmax_parallel = 6\n[[waves]]\nselect = \"tier=free\"\npercent = 10\nmax_parallel = 4\nbake_s = 60\n",
        )
        .unwrap();
        assert_eq!(w.waves.len(), 1);
        assert_eq!((w.waves[0].size, w.waves[0].max_parallel, w.waves[0].bake_s), (WaveSize::Percent(10.0), 4, 60));
        let mut spec = RolloutSpec {
            max_failed: Some(2),
            on_budget: OnBudget::Pause,
            waves: vec![w.waves[0].clone(), w.waves[0].clone()],
            min_healthy: Some(0.5),
            ..RolloutSpec::default()
        };
        w.apply(&mut spec);
        assert_eq!(spec.waves, w.waves);
        assert_eq!((spec.max_parallel, spec.order_by.as_deref()), (6, Some("value")));
        // What the file does not give stays the app's: its budget, its last wave's limits.
        assert_eq!((spec.max_failed, spec.on_budget, spec.min_healthy), (Some(2), OnBudget::Pause, Some(0.5)));
        // No waves at all: the canary, then the rest.
        assert!(WavesOverride::parse("").unwrap().waves.is_empty());
        // Bad values and keys are refused naming them, as fleet.toml's are.
        for (text, want) in [
            ("[[waves]]\ncount = 0\n", "waves[0].count = 0"),
            ("[[waves]]\ncount = 1\npercent = 5\n", "waves[0]: give count or percent"),
            ("max_parallel = 0\n", "max_parallel = 0"),
            ("[[waves]]\nmin_healthy = 2.0\n", "waves[0].min_healthy = 2"),
            ("on_budget = \"pause\"\n", "on_budget"),
            ("[waves]\n", "waves"),
        ] {
            let e = WavesOverride::parse(text).unwrap_err();
            assert!(e.contains(want) && !e.starts_with("rollout."), "{text}: {e}");
        }
        // A stack takes waves one at a time, without a bake.
        let for_stack = |w: &WavesOverride| {
            let mut spec = RolloutSpec::default();
            w.apply(&mut spec);
            spec.stack_refusal()
        };
        assert!(for_stack(&w).is_some());
        assert!(for_stack(&WavesOverride::parse("[[waves]]\ncount = 2\n").unwrap()).is_none());
    }
}
