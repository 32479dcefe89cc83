//! Maintenance windows (`[[app.rollout.windows]]`): when a tenant may be rolled. Each window
//! selects tenants by a label expression, opens at the times of a cron expression (five
//! fields: minute hour day-of-month month day-of-week) in its time zone and stays open for
//! `duration_s`. A tenant may be rolled at a moment when no `deny` window that selects it is
//! open and, if any `allow` window selects it, one of those is open: deny wins.
//!
//! Pure: the moment is given; the rollout asks at its plan and at each wave boundary.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::rollout::LabelExpr;

/// Whether a window lets tenants roll or keeps them from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WindowKind {
    /// The selected tenants roll only while one of their allow windows is open.
    Allow,
    /// The selected tenants never roll while it is open.
    Deny,
}

/// One `[[app.rollout.windows]]`, validated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WindowSpec {
    /// Allow or deny.
    pub kind: WindowKind,
    /// Which tenants it governs.
    pub select: LabelExpr,
    /// When it opens: a five-field cron expression.
    pub start: String,
    /// How long it stays open, in seconds.
    pub duration_s: u64,
    /// The time zone `start` is read in (IANA name).
    pub tz: String,
}

/// `[[app.rollout.windows]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWindow {
    kind: Option<String>,
    select: Option<String>,
    start: Option<String>,
    duration_s: Option<u64>,
    tz: Option<String>,
}

impl RawWindow {
    pub(crate) fn validate(self, at: &str) -> Result<WindowSpec, String> {
        let kind = match self.kind.as_deref() {
            Some("allow") => WindowKind::Allow,
            Some("deny") => WindowKind::Deny,
            Some(o) => return Err(format!("{at}.kind = \"{o}\": give \"allow\" or \"deny\"")),
            None => return Err(format!("{at}.kind is missing: give \"allow\" or \"deny\"")),
        };
        let select =
            LabelExpr::parse(self.select.as_deref().unwrap_or("*")).map_err(|e| format!("{at}.select: {e}"))?;
        let start = self.start.ok_or_else(|| {
            format!("{at}.start is missing: give a cron expression, e.g. \"0 2 * * sat\" (Saturdays at 02:00)")
        })?;
        if start.split_whitespace().count() != 5 {
            return Err(format!(
                "{at}.start = \"{start}\": give five cron fields (minute hour day-of-month month day-of-week), e.g. \
                 \"0 2 * * sat\""
            ));
        }
        start.parse::<croner::Cron>().map_err(|e| format!("{at}.start = \"{start}\": {e}"))?;
        let duration_s = match self.duration_s {
            None | Some(0) => {
                return Err(format!("{at}.duration_s: give how many seconds the window stays open, e.g. 14400 (4 h)"))
            }
            Some(d) => d,
        };
        let tz = self.tz.unwrap_or_else(|| "UTC".into());
        jiff::tz::TimeZone::get(&tz).map_err(|e| {
            format!("{at}.tz = \"{tz}\": not a time zone this host knows ({e}); e.g. \"Europe/Berlin\"")
        })?;
        Ok(WindowSpec { kind, select, start, duration_s, tz })
    }
}

impl WindowSpec {
    /// Whether it is open at `now`: its last start at or before `now` is less than
    /// `duration_s` ago.
    pub fn open_at(&self, now: jiff::Timestamp) -> bool {
        self.last_start(now).is_some_and(|s| now.duration_since(s.timestamp()).as_secs() < self.duration_s as i64)
    }

    fn zoned(&self, now: jiff::Timestamp) -> Option<jiff::Zoned> {
        jiff::tz::TimeZone::get(&self.tz).ok().map(|tz| now.to_zoned(tz))
    }

    /// Its last start at or before `now` (in its zone).
    fn last_start(&self, now: jiff::Timestamp) -> Option<jiff::Zoned> {
        let cron: croner::Cron = self.start.parse().ok()?;
        cron.find_previous_occurrence(&self.zoned(now)?, true).ok()
    }

    /// Its next start after `now`, for messages.
    fn next_start(&self, now: jiff::Timestamp) -> Option<jiff::Zoned> {
        let cron: croner::Cron = self.start.parse().ok()?;
        cron.find_next_occurrence(&self.zoned(now)?, false).ok()
    }

    fn describe(&self) -> String {
        format!("{} window \"{}\" ({}, {} s, {})", self.kind.word(), self.start, self.tz, self.duration_s, self.select)
    }
}

impl WindowKind {
    fn word(self) -> &'static str {
        match self {
            WindowKind::Allow => "allow",
            WindowKind::Deny => "deny",
        }
    }
}

/// Why a tenant with `labels` may not be rolled at `now`, or `None` when it may.
pub fn closed_for(windows: &[WindowSpec], labels: &BTreeMap<String, String>, now: jiff::Timestamp) -> Option<String> {
    let mine: Vec<&WindowSpec> = windows.iter().filter(|w| w.select.matches(labels)).collect();
    if let Some(d) = mine.iter().find(|w| w.kind == WindowKind::Deny && w.open_at(now)) {
        return Some(format!("its {} is open", d.describe()));
    }
    let allows: Vec<&&WindowSpec> = mine.iter().filter(|w| w.kind == WindowKind::Allow).collect();
    if allows.is_empty() || allows.iter().any(|w| w.open_at(now)) {
        return None;
    }
    let next = allows
        .iter()
        .filter_map(|w| w.next_start(now))
        .min_by_key(|z| z.timestamp())
        .map(|z| format!("; the next opens at {}", z.strftime("%Y-%m-%d %H:%M %Z")))
        .unwrap_or_default();
    Some(format!(
        "outside its allow window(s) ({}){next}",
        allows.iter().map(|w| w.describe()).collect::<Vec<_>>().join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(kind: &str, select: &str, start: &str, duration_s: u64, tz: &str) -> WindowSpec {
        RawWindow {
            kind: Some(kind.into()),
            select: Some(select.into()),
            start: Some(start.into()),
            duration_s: Some(duration_s),
            tz: Some(tz.into()),
        }
        .validate("rollout.windows[0]")
        .unwrap()
    }

    fn at(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn a_window_is_open_from_each_start_for_its_duration_in_its_time_zone() {
        // Saturdays 02:00 for four hours, Berlin time (UTC+1 in December).
        let sat = w("allow", "*", "0 2 * * sat", 4 * 3600, "Europe/Berlin");
        assert!(!sat.open_at(at("2026-12-05T00:59:00Z")));
        assert!(sat.open_at(at("2026-12-05T01:00:00Z")));
        assert!(sat.open_at(at("2026-12-05T04:59:59Z")));
        assert!(!sat.open_at(at("2026-12-05T05:00:00Z")));
        assert!(!sat.open_at(at("2026-12-06T02:00:00Z")), "Sunday");
    }

    #[test]
    fn deny_wins_and_allow_windows_only_hold_the_tenants_they_select() {
        let windows = vec![
            w("allow", "tier=enterprise", "0 2 * * sat", 4 * 3600, "UTC"),
            w("deny", "*", "0 9 * * mon-fri", 8 * 3600, "UTC"),
        ];
        let ent = labels(&[("tier", "enterprise")]);
        let free = labels(&[("tier", "free")]);
        // Saturday 03:00: enterprise may roll, and free (no allow window selects it).
        assert_eq!(closed_for(&windows, &ent, at("2026-12-05T03:00:00Z")), None);
        assert_eq!(closed_for(&windows, &free, at("2026-12-05T03:00:00Z")), None);
        // Friday 10:00: the deny window holds everyone.
        let why = closed_for(&windows, &free, at("2026-12-04T10:00:00Z")).unwrap();
        assert!(why.contains("deny window"), "{why}");
        // Friday 20:00: free rolls; enterprise waits for Saturday 02:00.
        assert_eq!(closed_for(&windows, &free, at("2026-12-04T20:00:00Z")), None);
        let why = closed_for(&windows, &ent, at("2026-12-04T20:00:00Z")).unwrap();
        assert!(why.contains("outside its allow window") && why.contains("2026-12-05 02:00"), "{why}");
    }

    #[test]
    fn bad_windows_are_named_with_their_key() {
        let raw = |kind: Option<&str>, start: Option<&str>, d: Option<u64>, tz: Option<&str>| RawWindow {
            kind: kind.map(Into::into),
            select: None,
            start: start.map(Into::into),
            duration_s: d,
            tz: tz.map(Into::into),
        };
        for (r, want) in [
            (raw(None, Some("0 2 * * *"), Some(60), None), "kind is missing"),
            (raw(Some("maybe"), Some("0 2 * * *"), Some(60), None), "kind = \"maybe\""),
            (raw(Some("allow"), None, Some(60), None), "start is missing"),
            (raw(Some("allow"), Some("0 2 * *"), Some(60), None), "five cron fields"),
            (raw(Some("allow"), Some("0 25 * * *"), Some(60), None), "start = \"0 25 * * *\""),
            (raw(Some("allow"), Some("0 2 * * *"), Some(0), None), "duration_s"),
            (raw(Some("allow"), Some("0 2 * * *"), Some(60), Some("Mars/Olympus")), "tz = \"Mars/Olympus\""),
        ] {
            let e = r.validate("rollout.windows[0]").unwrap_err();
            assert!(e.contains("rollout.windows[0]") && e.contains(want), "{e}");
        }
    }
}
