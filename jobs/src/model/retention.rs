//! The retention policy, with restic `forget` semantics exactly, because operators know them:
//! snapshots sorted newest first; for each rule (`keep_last`, `keep_daily`, `keep_weekly`,
//! `keep_monthly`, `keep_yearly`) the newest snapshot of each calendar bucket (UTC day,
//! ISO week Monday–Sunday, month, year) is kept until the rule's count of buckets *that have a
//! snapshot* is used up; a rule that cannot be filled also keeps the oldest snapshot; rules
//! are OR-ed; `keep_within` keeps everything newer than the newest snapshot minus the
//! duration. An empty policy is refused (restic would keep everything; a prune job that
//! deletes nothing is a configuration mistake to say out loud).

use jiff::{Timestamp, ToSpan, Zoned};
use serde::Serialize;

use crate::config::Retention;

/// A validated policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// keep_last.
    pub last: u32,
    /// keep_daily.
    pub daily: u32,
    /// keep_weekly.
    pub weekly: u32,
    /// keep_monthly.
    pub monthly: u32,
    /// keep_yearly.
    pub yearly: u32,
    /// keep_within as (years, months, days, hours).
    pub within: Option<(i64, i64, i64, i64)>,
    /// The text of keep_within, for reasons.
    pub within_text: Option<String>,
}

/// Parse a restic duration: `1y2m3d4h` (any subset, in that order).
pub fn parse_within(s: &str) -> Result<(i64, i64, i64, i64), String> {
    let (mut y, mut m, mut d, mut h) = (0, 0, 0, 0);
    let mut num = String::new();
    let mut any = false;
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: i64 = num.parse().map_err(|_| format!("keep_within \"{s}\": a number must come before '{c}'"))?;
        num.clear();
        any = true;
        match c {
            'y' => y = n,
            'm' => m = n,
            'd' => d = n,
            'h' => h = n,
            'w' => d += 7 * n,
            _ => {
                return Err(format!(
                    "keep_within \"{s}\": unknown unit '{c}'; use y, m, w, d, h (e.g. \"30d\", \"1y6m\")"
                ))
            }
        }
    }
    if !num.is_empty() || !any {
        return Err(format!("keep_within \"{s}\": every number needs a unit; use y, m, w, d, h (e.g. \"30d\")"));
    }
    Ok((y, m, d, h))
}

impl Policy {
    /// Validate the configured rules (the rollout-run rule is applied separately).
    pub fn from_config(r: &Retention) -> Result<Policy, String> {
        let within = r.keep_within.as_deref().map(parse_within).transpose()?;
        let p = Policy {
            last: r.keep_last.unwrap_or(0),
            daily: r.keep_daily.unwrap_or(0),
            weekly: r.keep_weekly.unwrap_or(0),
            monthly: r.keep_monthly.unwrap_or(0),
            yearly: r.keep_yearly.unwrap_or(0),
            within,
            within_text: r.keep_within.clone(),
        };
        if p.last + p.daily + p.weekly + p.monthly + p.yearly == 0 && p.within.is_none() {
            return Err("the retention policy is empty: it would keep every snapshot forever; set at least one of \
                        keep_last, keep_daily, keep_weekly, keep_monthly, keep_yearly, keep_within"
                .into());
        }
        Ok(p)
    }
}

/// One snapshot as the policy sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotRef {
    /// An id (path or day) to report.
    pub id: String,
    /// When it was taken.
    pub time: Timestamp,
}

/// The decision for one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// The snapshot.
    pub id: String,
    /// When it was taken.
    pub time: Timestamp,
    /// Kept?
    pub keep: bool,
    /// Why it is kept (rule names), empty when it goes.
    pub reasons: Vec<String>,
}

fn buckets(t: Timestamp) -> [i64; 4] {
    let z: Zoned = t.to_zoned(jiff::tz::TimeZone::UTC);
    let d = z.date();
    let iso = d.iso_week_date();
    [
        d.year() as i64 * 10000 + d.month() as i64 * 100 + d.day() as i64,
        iso.year() as i64 * 100 + iso.week() as i64,
        d.year() as i64 * 100 + d.month() as i64,
        d.year() as i64,
    ]
}

/// `t` plus years, months and days with Go's `time.AddDate` normalisation, as restic uses it:
/// a day past the end of the month rolls over (31 March minus one month is 3 March).
fn go_add_date(t: Timestamp, years: i64, months: i64, days: i64) -> Timestamp {
    let z = t.to_zoned(jiff::tz::TimeZone::UTC);
    let total = (z.year() as i64 + years) * 12 + (z.month() as i64 - 1) + months;
    let (year, month) = (total.div_euclid(12), total.rem_euclid(12) + 1);
    let Ok(first) = jiff::civil::Date::new(year as i16, month as i8, 1) else { return t };
    let Ok(date) = first.checked_add((z.day() as i64 - 1 + days).days()) else { return t };
    date.to_datetime(z.time()).to_zoned(jiff::tz::TimeZone::UTC).map_or(t, |z| z.timestamp())
}

/// Apply the policy to one tenant's snapshots; decisions come newest first.
pub fn apply(p: &Policy, list: &[SnapshotRef], now: Timestamp) -> Vec<Decision> {
    let mut list: Vec<&SnapshotRef> = list.iter().collect();
    list.sort_by_key(|s| std::cmp::Reverse(s.time));
    if list.is_empty() {
        return Vec::new();
    }
    // restic measures keep_within back from the newest snapshot that is not in the future.
    let latest = list.iter().map(|s| s.time).filter(|t| *t < now).max();
    let within_from = p.within.map(|(y, m, d, h)| match latest {
        Some(l) => go_add_date(l, -y, -m, -d) - h.hours(),
        // No snapshot before now: like restic (which then measures from year 1), keep them all.
        None => Timestamp::MIN,
    });
    // (count left, last bucket value, reason)
    let mut rules: [(u32, i64, &str); 5] = [
        (p.last, -1, "last"),
        (p.daily, -1, "daily"),
        (p.weekly, -1, "weekly"),
        (p.monthly, -1, "monthly"),
        (p.yearly, -1, "yearly"),
    ];
    let n = list.len();
    let mut out = Vec::with_capacity(n);
    for (nr, cur) in list.into_iter().enumerate() {
        let mut reasons = Vec::new();
        if let Some(from) = within_from {
            if cur.time > from {
                reasons.push(format!("within {}", p.within_text.as_deref().unwrap_or("")));
            }
        }
        let b = buckets(cur.time);
        for (i, rule) in rules.iter_mut().enumerate() {
            if rule.0 > 0 {
                let val = if i == 0 { nr as i64 } else { b[i - 1] };
                // Like restic: also keep the oldest snapshot while the rule has counts left.
                if val != rule.1 || nr == n - 1 {
                    rule.1 = val;
                    rule.0 -= 1;
                    reasons.push(rule.2.to_string());
                }
            }
        }
        out.push(Decision { id: cur.id.clone(), time: cur.time, keep: !reasons.is_empty(), reasons });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(s: &str) -> Timestamp {
        format!("{s}T03:00:00Z").parse().unwrap()
    }

    fn policy(f: impl FnOnce(&mut Retention)) -> Policy {
        let mut r = Retention { keep_daily: None, keep_rollout_runs: None, ..Retention::default() };
        f(&mut r);
        Policy::from_config(&r).unwrap()
    }

    /// 120 consecutive daily snapshots, 2026-07-26 (a Sunday) .. 2026-11-22 (a Sunday).
    fn history() -> Vec<SnapshotRef> {
        let start: jiff::civil::Date = "2026-07-26".parse().unwrap();
        (0..120)
            .map(|i| {
                let d = start.checked_add(i.days()).unwrap();
                SnapshotRef { id: d.to_string(), time: day(&d.to_string()) }
            })
            .collect()
    }

    fn kept(p: &Policy) -> Vec<String> {
        let now = day("2026-11-23");
        let mut k: Vec<String> = apply(p, &history(), now).into_iter().filter(|d| d.keep).map(|d| d.id).collect();
        k.sort();
        k
    }

    #[test]
    fn keep_within_counts_months_back_the_way_go_and_restic_do() {
        let t: Timestamp = "2026-03-31T03:00:00Z".parse().unwrap();
        assert_eq!(go_add_date(t, 0, -1, 0), "2026-03-03T03:00:00Z".parse::<Timestamp>().unwrap());
        assert_eq!(go_add_date(t, -1, 0, -30), "2025-03-01T03:00:00Z".parse::<Timestamp>().unwrap());
        // Every snapshot in the future (a wrong clock): keep_within keeps them all.
        let p = policy(|r| r.keep_within = Some("1d".into()));
        let d = apply(&p, &history(), day("2000-01-01"));
        assert!(d.iter().all(|d| d.keep));
    }

    #[test]
    fn an_empty_policy_is_refused() {
        let r = Retention { keep_daily: None, keep_rollout_runs: Some(5), ..Retention::default() };
        assert!(Policy::from_config(&r).unwrap_err().contains("empty"));
    }

    #[test]
    fn keep_daily_7_keeps_the_last_seven_days() {
        let p = policy(|r| r.keep_daily = Some(7));
        assert_eq!(
            kept(&p),
            ["2026-11-16", "2026-11-17", "2026-11-18", "2026-11-19", "2026-11-20", "2026-11-21", "2026-11-22"]
        );
    }

    #[test]
    fn the_120_day_history_keeps_exactly_the_table() {
        // keep_daily 7, keep_weekly 4, keep_monthly 3: newest per day for 7 days, newest per ISO
        // week for 4 weeks (Sundays), newest per month for 3 months (month ends).
        let p = policy(|r| {
            r.keep_daily = Some(7);
            r.keep_weekly = Some(4);
            r.keep_monthly = Some(3);
        });
        let expected = [
            "2026-09-30", // monthly: September
            "2026-10-31", // monthly: October
            "2026-11-01", // weekly: ISO week 44 (Mon 10-26 .. Sun 11-01)
            "2026-11-08", // weekly: week 45
            "2026-11-15", // weekly: week 46
            "2026-11-16",
            "2026-11-17",
            "2026-11-18",
            "2026-11-19",
            "2026-11-20",
            "2026-11-21",
            "2026-11-22", // daily, weekly (week 47), monthly (November)
        ];
        assert_eq!(kept(&p), expected);
    }

    #[test]
    fn a_rule_that_cannot_be_filled_keeps_the_oldest() {
        // 120 days hold 5 months; keep_monthly 12 keeps each month's newest and the oldest snapshot.
        let p = policy(|r| r.keep_monthly = Some(12));
        assert_eq!(kept(&p), ["2026-07-26", "2026-07-31", "2026-08-31", "2026-09-30", "2026-10-31", "2026-11-22"]);
        let p = policy(|r| r.keep_yearly = Some(3));
        assert_eq!(kept(&p), ["2026-07-26", "2026-11-22"]);
    }

    #[test]
    fn keep_last_and_keep_within_are_ored_with_reasons() {
        let p = policy(|r| {
            r.keep_last = Some(2);
            r.keep_within = Some("5d".into());
        });
        let d = apply(&p, &history(), day("2026-11-23"));
        let kept: Vec<(&str, &Vec<String>)> =
            d.iter().filter(|d| d.keep).map(|d| (d.id.as_str(), &d.reasons)).collect();
        assert_eq!(kept.len(), 5, "{kept:?}");
        assert_eq!(kept[0].1, &vec!["within 5d".to_string(), "last".to_string()]);
        assert_eq!(kept[4].0, "2026-11-18");
        assert!(parse_within("1y6m").is_ok() && parse_within("30").is_err() && parse_within("3x").is_err());
    }
}
