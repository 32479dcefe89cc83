//! Rollouts at fleet scale (`[app.rollout]`): many tiny tenants rolled in waves after the
//! canary, several at once, in `order_by` order, with a failure budget. Each test checks what an
//! operator would: exit codes, which version each tenant runs, its prior container back, its
//! data byte for byte, the waves frozen in state.db, and from the journal's step times that no
//! wave ever had more tenants in flight than its `max_parallel`.

use std::collections::BTreeMap;

use slipway_jobs::step::Step;

use crate::support::reports::{Recover, Rollout, Wave};
use crate::support::{tree_hash, Sandbox};

/// `n` tenants t00.. on `image`, each with some data and the labels `value=<(7 k) mod n>` (an
/// order unlike the ids') and `tier=free|paid`. Returns (tenant, container) pairs.
fn fleet(s: &Sandbox, n: usize, image: &str) -> Vec<(String, String)> {
    (0..n)
        .map(|k| {
            let t = format!("t{k:02}");
            s.write_data(&t, "db/records.txt", &format!("{t} customer rows\n").repeat(50));
            let value = format!("value={}", (7 * k) % n);
            let tier = format!("tier={}", if k.is_multiple_of(2) { "free" } else { "paid" });
            let name = s.add_tenant_with(&t, image, &["--label", &value, "--label", &tier]);
            (t, name)
        })
        .collect()
}

/// A sandbox of `n` tenants on v1 (see [`fleet`]), `refuser` (if any) with data v2 refuses:
/// the sandbox, v1, v2, the tenants and each one's data hash before anything ran.
#[allow(clippy::type_complexity)]
fn on_v1(
    n: usize,
    refuser: Option<&str>,
) -> (Sandbox, String, String, Vec<(String, String)>, BTreeMap<String, String>) {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let v2 = s.push_fixture_as("v2", "app");
    let tenants = fleet(&s, n, &v1);
    if let Some(t) = refuser {
        s.write_data(t, "refuse-v2", "this tenant's data does not work with v2\n");
    }
    let hashes = tenants.iter().map(|(t, _)| (t.clone(), tree_hash(&s.data_dir(t)))).collect();
    (s, v1, v2, tenants, hashes)
}

fn value_of(s: &Sandbox, container: &str) -> i64 {
    s.inspect(container)["Config"]["Labels"]["value"].as_str().unwrap().parse().unwrap()
}

/// Milliseconds since the epoch of a stored RFC 3339 UTC time (`2026-12-05T21:20:01.12Z`).
fn millis(t: &str) -> i64 {
    let (date, time) = t.trim_end_matches('Z').split_once('T').unwrap();
    let d: Vec<i64> = date.split('-').map(|x| x.parse().unwrap()).collect();
    // Days since 1970-01-01 (civil-from-days inverse, Howard Hinnant's algorithm).
    let (y, m) = if d[1] <= 2 { (d[0] - 1, d[1] + 9) } else { (d[0], d[1] - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let days = era * 146097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719468;
    let hms: Vec<f64> = time.split(':').map(|x| x.parse().unwrap()).collect();
    days * 86_400_000 + ((hms[0] * 3600.0 + hms[1] * 60.0 + hms[2]) * 1000.0).round() as i64
}

/// Per tenant of run `run_id`: (first step begun, last step ended), from the journal.
fn spans(s: &Sandbox, run_id: &str) -> BTreeMap<String, (i64, i64)> {
    let db = rusqlite::Connection::open(s.state().join("state.db")).unwrap();
    let mut st = db
        .prepare("SELECT tenant, started_at, COALESCE(finished_at, started_at) FROM steps WHERE run_id = ?1 AND tenant IS NOT NULL")
        .unwrap();
    let rows = st
        .query_map([run_id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)))
        .unwrap();
    let mut out: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for row in rows {
        let (t, a, b) = row.unwrap();
        let (a, b) = (millis(&a), millis(&b));
        let e = out.entry(t).or_insert((a, b));
        e.0 = e.0.min(a);
        e.1 = e.1.max(b);
    }
    out
}

/// The most of `tenants` ever in flight at once (an end at the same millisecond as a start
/// frees its place first).
fn most_at_once(spans: &BTreeMap<String, (i64, i64)>, tenants: &[String]) -> usize {
    let mut events: Vec<(i64, i32)> = Vec::new();
    for t in tenants {
        let (a, b) = spans[t];
        events.push((a, 1));
        events.push((b, -1));
    }
    events.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, d) in events {
        now += d;
        most = most.max(now);
    }
    most as usize
}

/// The waves state.db froze for run `run_id`, as (wave, name, tenants, max_parallel).
fn frozen_waves(s: &Sandbox, run_id: &str) -> Vec<(i64, String, Vec<String>, i64)> {
    let db = rusqlite::Connection::open(s.state().join("state.db")).unwrap();
    let mut st = db
        .prepare("SELECT wave, name, tenant, max_parallel FROM run_waves WHERE run_id = ?1 ORDER BY wave, position")
        .unwrap();
    let rows = st
        .query_map([run_id], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get(3)?)))
        .unwrap();
    let mut out: Vec<(i64, String, Vec<String>, i64)> = Vec::new();
    for row in rows {
        let (w, name, t, p) = row.unwrap();
        match out.last_mut() {
            Some(last) if last.0 == w => last.2.push(t),
            _ => out.push((w, name, vec![t], p)),
        }
    }
    out
}

fn as_frozen(waves: &[Wave]) -> Vec<(i64, String, Vec<String>, i64)> {
    waves.iter().map(|w| (w.index as i64, w.name.clone(), w.tenants.clone(), w.max_parallel as i64)).collect()
}

const WAVES: &str = "[app.rollout]\norder_by = \"value\"\nmax_parallel = 8\n\
                     [[app.rollout.waves]]\npercent = 10\nmax_parallel = 4\n";

#[test]
fn forty_tenants_roll_in_waves_in_order_by_order_never_more_at_once_than_max_parallel() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let v2 = s.push_fixture_as("v2", "app");
    let tenants = fleet(&s, 40, &v1);
    let hashes: Vec<String> = tenants.iter().map(|(t, _)| tree_hash(&s.data_dir(t))).collect();
    s.write_fleet(&s.fleet_app(&v2, WAVES));

    // The plan shows the waves before anything is touched.
    let dry = s.slipway(&["rollout", "--dry-run", "--json"]);
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    let planned = dry.report::<Rollout>().apps.remove(0).waves;
    // --max-parallel overrides every wave's but the canary's, for one run.
    let once = s.slipway(&["rollout", "--dry-run", "--json", "--max-parallel", "2"]).report::<Rollout>().apps.remove(0);
    let widths: Vec<usize> = once.waves.iter().map(|w| w.max_parallel).collect();
    assert_eq!(widths, vec![1, 2, 2]);
    assert_eq!(s.slipway(&["rollout", "--dry-run", "--max-parallel", "0"]).code, 2);

    let out = s.slipway(&["rollout", "--json"]);
    assert_eq!(out.code, 0, "stdout {} stderr {}", out.stdout, out.stderr);
    let run_id = out.run_id();
    let app = out.report::<Rollout>().apps.remove(0);
    assert_eq!(app.waves, planned, "the run rolled other waves than its plan showed");
    let w = &app.waves;
    // Canary alone; 10 % of the 39 left (4) four at a time; the 35 others eight at a time.
    assert_eq!(w.len(), 3, "{w:?}");
    assert_eq!((w[0].name.as_str(), w[0].tenants.clone(), w[0].max_parallel), ("canary", vec!["t00".to_string()], 1));
    assert_eq!((w[1].tenants.len(), w[1].max_parallel), (4, 4), "{w:?}");
    assert_eq!((w[2].name.as_str(), w[2].tenants.len(), w[2].max_parallel), ("rest", 35, 8), "{w:?}");
    // After the canary, in order_by order: ascending `value`, the whole run through.
    let name_of: BTreeMap<&str, &str> = tenants.iter().map(|(t, n)| (t.as_str(), n.as_str())).collect();
    let values: Vec<i64> = w[1..].iter().flat_map(|w| &w.tenants).map(|t| value_of(&s, name_of[t.as_str()])).collect();
    assert!(values.windows(2).all(|p| p[0] <= p[1]), "not in order_by order: {values:?}");
    // The sets were frozen in the run ledger, as rolled.
    assert_eq!(frozen_waves(&s, &run_id), as_frozen(w));

    for (k, (t, name)) in tenants.iter().enumerate() {
        let r = app.tenants.iter().find(|r| &r.tenant == t).unwrap();
        assert_eq!(r.outcome, "rolled", "{t}: {r:?}");
        assert_eq!(s.image_of(name), v2, "{t}");
        assert_eq!(tree_hash(&s.data_dir(t)), hashes[k], "{t}: v2 writes nothing, the data must be as it was");
    }
    // No wave had more in flight than its max_parallel, the waves did not overlap, and the
    // big wave did roll several at once.
    let spans = spans(&s, &run_id);
    assert_eq!(spans.len(), 40);
    let wave1_most = most_at_once(&spans, &w[1].tenants);
    assert!((1..=4).contains(&wave1_most), "{wave1_most} tenants of wave 1 at once (max_parallel 4)");
    let rest_most = most_at_once(&spans, &w[2].tenants);
    assert!((2..=8).contains(&rest_most), "{rest_most} tenants of the rest wave at once (max_parallel 8)");
    for pair in w.windows(2) {
        let end = pair[0].tenants.iter().map(|t| spans[t].1).max().unwrap();
        let start = pair[1].tenants.iter().map(|t| spans[t].0).min().unwrap();
        assert!(start >= end, "{} started before {} ended", pair[1].name, pair[0].name);
    }
}

#[test]
fn a_tenant_failing_within_the_budget_is_rolled_back_with_its_data_and_the_others_go_on() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let v2 = s.push_fixture_as("v2", "app");
    let tenants = fleet(&s, 10, &v1);
    // t05's data makes v2 (only) refuse to start.
    s.write_data("t05", "refuse-v2", "this tenant's data does not work with v2\n");
    let before_hash = tree_hash(&s.data_dir("t05"));
    let before = s.inspect(&tenants[5].1);
    s.write_fleet(&s.fleet_app(&v2, "[app.rollout]\nmax_parallel = 4\nmax_failed = 1\n"));

    let out = s.slipway(&["rollout", "--json"]);
    // Within the budget the run goes on; a failed tenant still fails the run (exit 1).
    assert_eq!(out.code, 1, "stdout {} stderr {}", out.stdout, out.stderr);
    let app = out.report::<Rollout>().apps.remove(0);
    for (t, name) in &tenants {
        let r = app.tenants.iter().find(|r| &r.tenant == t).unwrap();
        if t == "t05" {
            assert_eq!(r.outcome, "restored", "{r:?}");
            let now = s.inspect(name);
            assert_eq!(now["Id"], before["Id"], "the prior container must be back, not a copy");
            assert_eq!(now["State"]["Running"], true);
            assert_eq!(now["Config"]["Labels"], before["Config"]["Labels"]);
            assert_eq!(s.image_of(name), v1);
            assert_eq!(tree_hash(&s.data_dir(t)), before_hash, "t05's data must be byte-identical");
        } else {
            assert_eq!(r.outcome, "rolled", "{t}: {r:?}");
            assert_eq!(s.image_of(name), v2, "{t}");
        }
    }
    assert!(s.containers_named_like("pre-rollout").is_empty() && s.containers_named_like("staged").is_empty());
    let runs = s.slipway(&["runs", "--json"]);
    assert!(runs.stdout.contains("failed within the failure budget"), "{}", runs.stdout);
}

#[test]
fn a_runs_own_budget_overrides_fleet_tomls_for_that_run_only() {
    let (s, v1, v2, tenants, hashes) = on_v1(5, Some("t03"));
    // fleet.toml allows no failure (and would pause); this run allows one.
    s.write_fleet(&s.fleet_app(&v2, "[app.rollout]\nmax_failed = 0\n"));
    // A bad value is refused naming the flag, before anything is touched.
    for bad in [&["--max-failure-ratio", "1.5"][..], &["--on-budget", "wait"][..]] {
        let mut args = vec!["rollout"];
        args.extend_from_slice(bad);
        let out = s.slipway(&args);
        assert_eq!(out.code, 2, "{bad:?}: {} {}", out.stdout, out.stderr);
        assert!(out.stderr.contains(bad[0]), "{bad:?}: {}", out.stderr);
    }
    assert!(tenants.iter().all(|(_, n)| s.image_of(n) == v1), "a refused run touched a tenant");
    let out = s.slipway(&["rollout", "--max-failed", "1", "--json"]);
    // Within this run's budget: t03 is rolled back with its data, the others go on (exit 1).
    assert_eq!(out.code, 1, "stdout {} stderr {}", out.stdout, out.stderr);
    assert_ne!(out.json()["report"]["apps"][0]["paused"], true, "{}", out.stdout);
    for (t, name) in &tenants {
        let want = if t == "t03" { &v1 } else { &v2 };
        assert_eq!(&s.image_of(name), want, "{t}");
        assert_eq!(&tree_hash(&s.data_dir(t)), &hashes[t], "{t}: data changed");
    }
    assert!(!s.slipway(&["status"]).stdout.contains("PAUSED"));
}

#[test]
fn a_runs_own_waves_file_replaces_fleet_tomls_waves_and_a_resume_keeps_its_limits() {
    let (s, v1, v2, tenants, hashes) = on_v1(6, Some("t01"));
    // fleet.toml: half the fleet three at a time, budget 5 (a failure alone does not pause).
    s.write_fleet(
        &s.fleet_app(&v2, "[app.rollout]\nmax_failed = 5\n[[app.rollout.waves]]\npercent = 50\nmax_parallel = 3\n"),
    );
    let file = s.root().join("waves.toml");
    let path = file.to_str().unwrap();
    // A bad file is refused naming it and the key, before anything is touched.
    for (bad, key) in [
        ("[[waves]]\ncount = 2\nparalel = 2\n", "paralel"),
        ("[[waves]]\npercent = 0\n", "waves[0].percent = 0"),
        ("[[waves]]\nselect = \"tier\"\n", "waves[0].select"),
        ("max_failed = 1\n", "max_failed"),
    ] {
        std::fs::write(&file, bad).unwrap();
        let out = s.slipway(&["rollout", "--waves", path]);
        assert_eq!(out.code, 2, "{bad}: {} {}", out.stdout, out.stderr);
        assert!(out.stderr.contains(path) && out.stderr.contains(key), "{bad}: {}", out.stderr);
    }
    let missing = s.slipway(&["rollout", "--waves", "/nonexistent/waves.toml"]);
    assert_eq!(missing.code, 2, "{}", missing.stderr);
    assert!(missing.stderr.contains("/nonexistent/waves.toml"), "{}", missing.stderr);
    assert!(tenants.iter().all(|(_, n)| s.image_of(n) == v1), "a refused run touched a tenant");

    // This run: by value, then two paid tenants (t01 and t03 by value) two at a time, all of
    // which must end healthy; then the rest one at a time.
    std::fs::write(
        &file,
        "order_by = \"value\"\n[[waves]]\nselect = \"tier=paid\"\ncount = 2\nmax_parallel = 2\nmin_healthy = 1.0\n",
    )
    .unwrap();
    let dry = s.slipway(&["rollout", "--waves", path, "--dry-run", "--json"]);
    assert_eq!(dry.code, 0, "{} {}", dry.stdout, dry.stderr);
    let planned: Vec<(String, Vec<String>, usize)> =
        dry.report::<Rollout>().apps.remove(0).waves.into_iter().map(|w| (w.name, w.tenants, w.max_parallel)).collect();
    let names = |v: &[&str]| v.iter().map(|t| t.to_string()).collect::<Vec<_>>();
    assert_eq!(planned.len(), 3, "{planned:?}");
    assert_eq!(
        (planned[0].1.clone(), planned[1].1.clone(), planned[1].2),
        (names(&["t00"]), names(&["t01", "t03"]), 2)
    );
    assert_eq!((planned[2].1.clone(), planned[2].2), (names(&["t02", "t04", "t05"]), 1));

    // t01 refuses v2: within the budget, but its wave is under min_healthy: the run pauses.
    let out = s.slipway(&["rollout", "--waves", path, "--json"]);
    assert_eq!(out.code, 3, "{} {}", out.stdout, out.stderr);
    assert_eq!(out.json()["report"]["apps"][0]["paused"], true, "{}", out.stdout);
    let run = out.json()["report"]["apps"][0]["run_id"].as_str().unwrap().to_string();
    // The file's limits are frozen with the sets.
    let db = rusqlite::Connection::open(s.state().join("state.db")).unwrap();
    let limits: Vec<(String, f64)> = db
        .prepare("SELECT tenant, min_healthy FROM run_waves WHERE run_id = ?1 ORDER BY position")
        .unwrap()
        .query_map([&run], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(limits.iter().filter(|(_, m)| *m == 1.0).count(), 2, "{limits:?}");
    for (t, name) in &tenants {
        assert_eq!(&tree_hash(&s.data_dir(t)), &hashes[t], "{t}: data changed");
        let want = if ["t00", "t03"].contains(&t.as_str()) { &v2 } else { &v1 };
        assert_eq!(&s.image_of(name), want, "{t}");
    }
    // The file is gone by the morning: the resume goes on with the frozen waves.
    std::fs::remove_file(&file).unwrap();
    let res = s.slipway(&["rollout", "resume", &run, "--json"]);
    assert_ne!(res.code, 3, "{} {}", res.stdout, res.stderr);
    assert_ne!(res.json()["report"]["apps"][0]["paused"], true, "{}", res.stdout);
    for (t, name) in &tenants {
        let want = if t == "t01" { &v1 } else { &v2 };
        assert_eq!(&s.image_of(name), want, "{t}");
        assert_eq!(s.inspect(name)["State"]["Running"], true, "{t}");
    }
    assert_eq!(tree_hash(&s.data_dir("t01")), hashes["t01"]);
}

#[test]
fn over_the_budget_the_run_halts_with_3_and_the_tenants_not_started_stay_on_the_prior_version() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let v2 = s.push_fixture_as("v2", "app");
    let tenants = fleet(&s, 12, &v1);
    // Two failures, one allowed; the failing two start first after the canary.
    for t in ["t01", "t02"] {
        s.write_data(t, "refuse-v2", "not with v2\n");
    }
    let hashes: BTreeMap<String, String> =
        tenants.iter().map(|(t, _)| (t.clone(), tree_hash(&s.data_dir(t)))).collect();
    let ids: BTreeMap<String, serde_json::Value> =
        tenants.iter().map(|(t, n)| (t.clone(), s.inspect(n)["Id"].clone())).collect();
    // The first wave after the canary: t01, t02 and t03, two at a time. The first failure is
    // within the budget, so t03 starts in its slot; the second is over it, so no tenant after
    // t03 starts (a wave of three makes that count the same in every run: in one wave of all
    // eleven, t03 could finish and t04 start before t02's failure came).
    s.write_fleet(&s.fleet_app(
        &v2,
        "[app.rollout]\nmax_failed = 1\n[[app.rollout.waves]]\ncount = 3\nmax_parallel = 2\n\
         [[app.rollout.waves]]\nmax_parallel = 2\n",
    ));

    let out = s.slipway(&["rollout", "--json"]);
    assert_eq!(out.code, 3, "stdout {} stderr {}", out.stdout, out.stderr);
    let app = out.report::<Rollout>().apps.remove(0);
    let mut untouched = 0;
    for (t, name) in &tenants {
        let r = app.tenants.iter().find(|r| &r.tenant == t).unwrap();
        match r.outcome.as_str() {
            "restored" => {
                assert!(t == "t01" || t == "t02", "{t} failed: {r:?}");
                assert_eq!(s.inspect(name)["Id"], ids[t], "{t}: the prior container must be back");
                assert_eq!(s.image_of(name), v1);
            }
            "rolled" => assert_eq!(s.image_of(name), v2, "{t}"),
            "not_reached" => {
                untouched += 1;
                assert_eq!(s.inspect(name)["Id"], ids[t], "{t} was not reached but its container changed");
                assert_eq!(s.image_of(name), v1, "{t}");
            }
            o => panic!("{t}: {o}"),
        }
        assert_eq!(s.inspect(name)["State"]["Running"], true, "{t}");
        assert_eq!(&tree_hash(&s.data_dir(t)), &hashes[t], "{t}: v1 and v2 write nothing; the data must be as it was");
    }
    assert_eq!(app.tenants.iter().filter(|r| r.outcome == "restored").count(), 2);
    // After the failure over the budget nothing started: the canary and the first wave only.
    assert_eq!(untouched, 12 - 1 - 3, "{untouched} untouched");
    assert!(s.slipway(&["runs", "--json"]).stdout.contains("over the failure budget"));
}

#[test]
fn killed_in_the_middle_of_a_parallel_wave_recover_leaves_every_tenant_on_one_version_with_its_data() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let v2 = s.push_fixture_as("v2", "app");
    let tenants = fleet(&s, 12, &v1);
    let hashes: Vec<String> = tenants.iter().map(|(t, _)| tree_hash(&s.data_dir(t))).collect();
    s.write_fleet(&s.fleet_app(&v2, "[app.rollout]\nmax_parallel = 4\n"));
    let planned = s.slipway(&["rollout", "--dry-run", "--json"]).report::<Rollout>().apps.remove(0).waves;

    // Killed (abort, as SIGKILL) when the first tenant of the parallel wave is done and
    // others of it are in flight.
    let out = s.slipway_env(&["rollout", "--json"], &[("SLIPWAY_TEST_CRASH_AT", "wave-tenant-done")]);
    assert!(out.stderr.contains("slipway test point reached: wave-tenant-done"), "{}", out.stderr);
    assert_eq!(out.code, -1, "the process should have died: {}", out.stdout);
    let db = rusqlite::Connection::open(s.state().join("state.db")).unwrap();
    let run_id: String =
        db.query_row("SELECT id FROM runs WHERE job = 'rollout' AND finished_at IS NULL", [], |r| r.get(0)).unwrap();
    assert_eq!(frozen_waves(&s, &run_id), as_frozen(&planned), "the ledger holds other sets than the plan");

    let rec = s.slipway(&["recover", "--json"]);
    assert_eq!(rec.code, 0, "{} {}", rec.stdout, rec.stderr);
    let report = rec.report::<Recover>();
    assert_eq!(report.runs.len(), 1);
    // Recover went over exactly the frozen sets: every tenant of them, named with its wave.
    let acted = report.runs[0]["tenants"].as_array().unwrap();
    let mut seen: Vec<String> = acted.iter().map(|a| a["tenant"].as_str().unwrap().to_string()).collect();
    seen.sort();
    assert_eq!(seen, tenants.iter().map(|(t, _)| t.clone()).collect::<Vec<_>>(), "{}", rec.stdout);
    assert!(acted.iter().all(|a| a["found"].as_str().unwrap().contains("(wave ") && a["ok"] == true), "{}", rec.stdout);
    assert_eq!(s.slipway(&["recover", "--json"]).report::<Recover>().runs.len(), 0, "recover is not idempotent");

    let mut on_v2 = 0;
    for (k, (t, name)) in tenants.iter().enumerate() {
        // Exactly one container of the tenant, running its one version, healthy.
        let id = s.id().to_string();
        let mine: Vec<String> = s
            .containers_named_like(&format!("{id}-{t}"))
            .into_iter()
            .filter(|n| n.starts_with(name.as_str()))
            .collect();
        assert_eq!(mine, vec![name.clone()], "{t}: left over containers");
        let c = s.inspect(name);
        assert_eq!(c["State"]["Running"], true, "{t}");
        let image = s.image_of(name);
        assert!(image == v1 || image == v2, "{t}: {image}");
        on_v2 += usize::from(image == v2);
        let body = s.http_get(&format!("http://{}:8080/api/health", s.container_ip(name)));
        assert!(body.contains(if image == v2 { "v2" } else { "v1" }), "{t}: {body}");
        assert_eq!(tree_hash(&s.data_dir(t)), hashes[k], "{t}: data changed");
    }
    // The canary and the first done tenant of the wave at least.
    assert!(on_v2 >= 2, "{on_v2} on v2");
    // No rollout copy left beside a data dir.
    let leftovers: Vec<_> = std::fs::read_dir(s.root().join("data"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn killed_at_a_wave_start_or_in_a_waves_bake_recover_leaves_every_tenant_on_one_version_with_its_data() {
    // The wave's boundary and inside the bake, and every point of the steps only a wave's
    // tenant takes (its bake's begin and end), derived from the steps.
    let mut points = vec!["wave-start".to_string(), "wave-bake".to_string()];
    for st in Step::ALL.into_iter().filter(|s| s.needs_waves()) {
        points.extend([st.during().to_string(), st.after().to_string()]);
    }
    assert!(points.len() > 2, "no step of a wave's tenant: {points:?}");
    for point in &points {
        let point = point.as_str();
        let (s, v1, v2, tenants, hashes) = on_v1(5, None);
        let ids: BTreeMap<String, serde_json::Value> =
            tenants.iter().map(|(t, n)| (t.clone(), s.inspect(n)["Id"].clone())).collect();
        s.write_fleet(&s.fleet_app(
            &v2,
            "[app.rollout]\n[[app.rollout.waves]]\ncount = 1\n[[app.rollout.waves]]\nmax_parallel = 2\nbake_s = 2\n",
        ));
        let out = s.slipway_env(&["rollout", "--json"], &[("SLIPWAY_TEST_CRASH_AT", point)]);
        assert!(out.stderr.contains(&format!("slipway test point reached: {point}")), "{point}: {}", out.stderr);
        assert_eq!(out.code, -1, "{point}: the process should have died: {}", out.stdout);
        let rec = s.slipway(&["recover", "--json"]);
        assert_eq!(rec.code, 0, "{point}: {} {}", rec.stdout, rec.stderr);
        assert_eq!(s.slipway(&["recover", "--json"]).report::<Recover>().runs.len(), 0, "{point}: recover again");
        let mut on_v2 = 0;
        for (t, name) in &tenants {
            let mine: Vec<String> = s
                .containers_named_like(&format!("{}-{t}", s.id()))
                .into_iter()
                .filter(|n| n.starts_with(name.as_str()))
                .collect();
            assert_eq!(mine, vec![name.clone()], "{point}: {t}: left over containers");
            assert_eq!(s.inspect(name)["State"]["Running"], true, "{point}: {t}");
            let image = s.image_of(name);
            assert!(image == v1 || image == v2, "{point}: {t}: {image}");
            if image == v2 {
                on_v2 += 1;
            } else {
                assert_eq!(s.inspect(name)["Id"], ids[t], "{point}: {t} on its prior version is its own container");
            }
            assert_eq!(&tree_hash(&s.data_dir(t)), &hashes[t], "{point}: {t}: data changed");
        }
        match point {
            // Killed before the second wave started: only the canary's wave rolled.
            "wave-start" => assert_eq!(on_v2, 1, "{point}"),
            // Killed in (or at the end of) a tenant's bake, in the last wave: the canary, the
            // first wave's tenant, the one that passed its gate and reached the point, and at
            // most the other one of the wave in flight.
            _ => assert!((3..=4).contains(&on_v2), "{point}: {on_v2} on v2"),
        }
        assert!(!s.slipway(&["status"]).stdout.contains("PAUSED"), "{point}: a crash is no pause");
        // The digest is not retried by itself after a crash; a person's --retry rolls the rest.
        let again = s.slipway(&["reconcile", "--retry", "--json"]);
        assert_eq!(again.code, 0, "{point}: {} {}", again.stdout, again.stderr);
        for (t, name) in &tenants {
            assert_eq!(s.image_of(name), v2, "{point}: {t}");
            assert_eq!(&tree_hash(&s.data_dir(t)), &hashes[t], "{point}: {t}: data changed");
        }
    }
}

#[test]
fn a_tenant_over_its_downtime_budget_is_rolled_back_even_though_it_turns_healthy() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    // Healthy only 4 s after it starts.
    let slow = s.push_fixture_as("slow", "app");
    let name = s.add_tenant_with("t1", &v1, &["--env", "SWFIX_DELAY=4"]);
    s.write_data("t1", "db/records.txt", "rows\n");
    let (before, hash) = (s.inspect(&name), tree_hash(&s.data_dir("t1")));
    s.write_fleet(&s.fleet_app(&slow, "[app.rollout]\ndowntime_budget_ms = 1500\n"));
    let out = s.slipway(&["rollout", "--json"]);
    assert_eq!(out.code, 3, "stdout {} stderr {}", out.stdout, out.stderr);
    let r = &out.report::<Rollout>().apps[0].tenants[0];
    assert_eq!(r.outcome, "restored");
    assert!(r.detail.as_deref().unwrap_or("").contains("downtime budget of 1500 ms"), "{r:?}");
    assert_eq!(s.inspect(&name)["Id"], before["Id"]);
    assert_eq!(s.image_of(&name), v1);
    assert_eq!(tree_hash(&s.data_dir("t1")), hash);
}

#[test]
fn a_bad_rollout_table_is_refused_naming_the_key_and_nothing_is_touched() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let v2 = s.push_fixture_as("v2", "app");
    let name = s.add_tenant("t1", &v1);
    for (extra, want) in [
        ("[app.rollout]\nmax_parallel = 0\n", "rollout.max_parallel = 0"),
        ("[[app.rollout.waves]]\nselect = \"tier\"\n", "rollout.waves[0].select"),
        ("[[app.rollout.waves]]\ncount = 1\npercent = 10\n", "give count or percent, not both"),
    ] {
        s.write_fleet(&s.fleet_app(&v2, extra));
        let out = s.slipway(&["rollout"]);
        assert_eq!(out.code, 2, "{extra}: {} {}", out.stdout, out.stderr);
        assert!(out.stderr.contains(want) && out.stderr.contains("fleet.toml"), "{extra}: {}", out.stderr);
        assert_eq!(s.image_of(&name), v1);
    }
}

#[test]
fn a_waves_bake_soaks_each_of_its_tenants_and_the_next_wave_waits_for_it() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let v2 = s.push_fixture_as("v2", "app");
    let tenants = fleet(&s, 5, &v1);
    s.write_fleet(&s.fleet_app(&v2, "[[app.rollout.waves]]\nselect = \"tier=free\"\nmax_parallel = 2\nbake_s = 2\n"));
    let out = s.slipway(&["rollout", "--json"]);
    assert_eq!(out.code, 0, "stdout {} stderr {}", out.stdout, out.stderr);
    let run_id = out.run_id();
    let app = out.report::<Rollout>().apps.remove(0);
    // t00 the canary; the free tier left (t02, t04) baked, two at a time; then t01, t03.
    let sets: Vec<Vec<String>> = app.waves.iter().map(|w| w.tenants.clone()).collect();
    assert_eq!(sets, vec![vec!["t00"], vec!["t02", "t04"], vec!["t01", "t03"]]);
    for (_, name) in &tenants {
        assert_eq!(s.image_of(name), v2);
    }
    let db = rusqlite::Connection::open(s.state().join("state.db")).unwrap();
    let soaks = |t: &str| -> Vec<(String, String)> {
        let mut st = db
            .prepare("SELECT started_at, finished_at FROM steps WHERE run_id = ?1 AND tenant = ?2 AND step = 'bake'")
            .unwrap();
        st.query_map([&run_id, t], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(|r| r.unwrap()).collect()
    };
    for t in ["t02", "t04"] {
        let soak = soaks(t);
        assert_eq!(soak.len(), 1, "{t}: {soak:?}");
        let took = millis(&soak[0].1) - millis(&soak[0].0);
        assert!(took >= 2000, "{t} soaked {took} ms, bake_s = 2");
    }
    assert!(soaks("t01").is_empty() && soaks("t03").is_empty(), "the last wave has no bake");
    let spans = spans(&s, &run_id);
    let baked_end = ["t02", "t04"].iter().map(|t| spans[*t].1).max().unwrap();
    assert!(["t01", "t03"].iter().all(|t| spans[*t].0 >= baked_end), "the next wave started during the bake");
}

/// Waves after the canary: t01 alone (it fails, over a budget of none, so the run pauses
/// before the next wave), then the rest two at a time. t01 alone makes the pause land at the
/// same point in every run: beside a parallel tenant the failure could come after every other
/// tenant had already rolled, leaving a resume nothing to do.
const ONE_THEN_TWO: &str = "[[app.rollout.waves]]\ncount = 1\n[[app.rollout.waves]]\nmax_parallel = 2\n";

/// A paused case: `n` tenants on v1, the fleet pinning v2 with `[app.rollout]` + `extra`, and
/// t01 refusing v2 (its data says so): one failure, none allowed, so the run pauses after its
/// own wave. Returns the sandbox, v1, v2, the tenants, their data hashes and container ids, and
/// the paused run's id.
#[allow(clippy::type_complexity)]
fn paused(
    n: usize,
    extra: &str,
) -> (
    Sandbox,
    String,
    String,
    Vec<(String, String)>,
    BTreeMap<String, String>,
    BTreeMap<String, serde_json::Value>,
    String,
) {
    let (s, v1, v2, tenants, hashes) = on_v1(n, Some("t01"));
    // Each tenant's container id and labels before the run.
    let ids: BTreeMap<String, serde_json::Value> = tenants
        .iter()
        .map(|(t, n)| {
            let c = s.inspect(n);
            (t.clone(), serde_json::json!({ "id": c["Id"], "labels": c["Config"]["Labels"] }))
        })
        .collect();
    s.write_fleet(&s.fleet_app(&v2, &format!("[app.rollout]\nmax_failed = 0\n{extra}{ONE_THEN_TWO}")));
    let metrics = s.root().join("slipway.prom");
    let out = s.slipway(&["rollout", "--json", "--metrics-file", metrics.to_str().unwrap()]);
    assert_eq!(out.code, 3, "stdout {} stderr {}", out.stdout, out.stderr);
    let run = out.json()["report"]["apps"][0]["run_id"].as_str().unwrap().to_string();
    // The pause is in the metrics file, for an alert on a run left paused.
    let prom = std::fs::read_to_string(&metrics).unwrap();
    let series = format!("slipway_rollout_paused_since_timestamp_seconds{{app=\"app\",run=\"{run}\",kind=\"budget\"}}");
    assert!(prom.contains(&series), "no {series} in\n{prom}");
    (s, v1, v2, tenants, hashes, ids, run)
}

#[test]
fn over_the_budget_the_run_pauses_nothing_rolls_past_it_and_resume_goes_on_with_the_same_waves() {
    let (s, v1, v2, tenants, hashes, ids, run) = paused(8, "");
    let frozen = frozen_waves(&s, &run);
    // The run's record shows its frozen waves and its open pause.
    let shown = s.slipway(&["runs", "show", &run]);
    assert_eq!(shown.code, 0, "{}", shown.stderr);
    for (n, name, members, parallel) in &frozen {
        let line = format!("wave {n} ({name}, max_parallel {parallel}, bake 0 s): {}", members.join(" "));
        assert!(shown.stdout.contains(&line), "no `{line}` in\n{}", shown.stdout);
    }
    assert!(shown.stdout.contains("PAUSED   since") && shown.stdout.contains("budget:"), "{}", shown.stdout);
    let status = s.slipway(&["status"]);
    assert_eq!(status.code, 8, "a pause needs a person's decision: {}", status.stdout);
    assert!(status.stdout.contains(&format!("run {run}")) && status.stdout.contains("PAUSED"), "{}", status.stdout);
    // Nothing rolls past a paused run: reconcile leaves the app, rollout refuses, each in a
    // new process (the pause is in state.db, not in the process that paused).
    let rec = s.slipway(&["reconcile", "--json"]);
    assert_eq!(rec.code, 0, "{} {}", rec.stdout, rec.stderr);
    assert_eq!(rec.json()["report"]["apps"][0]["action"], "paused", "{}", rec.stdout);
    let again = s.slipway(&["rollout"]);
    assert_eq!(again.code, 2, "{} {}", again.stdout, again.stderr);
    assert!(again.stderr.contains("is paused") && again.stderr.contains("rollout resume"), "{}", again.stderr);
    let not_reached: Vec<String> = tenants
        .iter()
        .filter(|(_, name)| s.image_of(name) == v1)
        .map(|(t, _)| t.clone())
        .filter(|t| t != "t01")
        .collect();
    assert!(!not_reached.is_empty(), "the pause must leave tenants to resume");

    let metrics = s.root().join("slipway.prom");
    let out = s.slipway(&["rollout", "resume", &run, "--json", "--metrics-file", metrics.to_str().unwrap()]);
    let prom = std::fs::read_to_string(&metrics).unwrap();
    assert!(!prom.contains("slipway_rollout_paused"), "a resumed run is no longer paused:\n{prom}");
    // The run goes on under its own id; its one failure (t01) still fails it, within nothing more.
    assert_eq!(out.code, 1, "stdout {} stderr {}", out.stdout, out.stderr);
    assert_eq!(out.json()["report"]["apps"][0]["run_id"], run.as_str());
    assert_eq!(frozen_waves(&s, &run), frozen, "resume must use the waves frozen by the run");
    for (t, name) in &tenants {
        assert_eq!(s.inspect(name)["State"]["Running"], true, "{t}");
        assert_eq!(&tree_hash(&s.data_dir(t)), &hashes[t], "{t}: data changed");
        if t == "t01" {
            assert_eq!(s.image_of(name), v1, "the failed tenant stays on its prior version");
            assert_eq!(s.inspect(name)["Id"], ids[t]["id"], "t01's prior container must be the one it had");
        } else {
            assert_eq!(s.image_of(name), v2, "{t} was not rolled by the resume");
        }
    }
    let resumed: Vec<String> = out.json()["report"]["apps"][0]["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["tenant"].as_str().unwrap().to_string())
        .collect();
    let mut want = not_reached.clone();
    want.sort();
    let mut got = resumed.clone();
    got.sort();
    assert_eq!(got, want, "resume rolls exactly the tenants the run had not reached");
    let status = s.slipway(&["status"]);
    assert!(!status.stdout.contains("PAUSED"), "{}", status.stdout);
    let again = s.slipway(&["rollout", "resume", &run]);
    assert_eq!(again.code, 2, "a run resumed is no longer paused: {}", again.stderr);
    let shown = s.slipway(&["runs", "show", &run, "--json"]).json();
    let pauses = shown["report"]["pauses"].as_array().unwrap().clone();
    assert_eq!(pauses.len(), 1, "{shown}");
    assert_eq!((pauses[0]["kind"].as_str(), pauses[0]["ended_by"].as_str()), (Some("budget"), Some("resumed")));
    assert_eq!(shown["report"]["waves"].as_array().unwrap().len(), tenants.len(), "{shown}");
}

#[test]
fn a_paused_run_aborted_or_past_its_timeout_rolls_back_every_tenant_it_rolled_with_its_data() {
    for how in ["abort", "timeout"] {
        let extra = if how == "timeout" { "pause_timeout_s = 1\n" } else { "" };
        let (s, v1, _v2, tenants, hashes, ids, run) = paused(6, extra);
        // What the run rolled comes back recreated from its prior image (the run removed the old
        // containers once the new ones were healthy), with the labels it had.
        let rolled: Vec<String> =
            tenants.iter().filter(|(_, name)| s.image_of(name) != v1).map(|(t, _)| t.clone()).collect();
        assert!(!rolled.is_empty(), "{how}: the canary at least rolled");
        let out = if how == "abort" {
            s.slipway(&["rollout", "abort", &run, "--json"])
        } else {
            std::thread::sleep(std::time::Duration::from_millis(2100));
            s.slipway(&["reconcile", "--json"])
        };
        assert_eq!(out.code, 0, "{how}: stdout {} stderr {}", out.stdout, out.stderr);
        for (t, name) in &tenants {
            assert_eq!(s.image_of(name), v1, "{how}: {t} is not back on the prior version");
            assert_eq!(s.inspect(name)["Config"]["Labels"], ids[t]["labels"], "{how}: {t}'s labels");
            if !rolled.contains(t) {
                assert_eq!(s.inspect(name)["Id"], ids[t]["id"], "{how}: {t} was not rolled, its container is the same");
            }
            assert_eq!(s.inspect(name)["State"]["Running"], true, "{how}: {t}");
            assert_eq!(&tree_hash(&s.data_dir(t)), &hashes[t], "{how}: {t}: data changed");
        }
        let status = s.slipway(&["status"]);
        assert!(!status.stdout.contains("PAUSED"), "{how}: {}", status.stdout);
        let resume = s.slipway(&["rollout", "resume", &run]);
        assert_eq!(resume.code, 2, "{how}: an aborted run is not resumed: {}", resume.stderr);
    }
}

#[test]
fn over_the_budget_rollback_wave_undoes_that_waves_tenants_and_rollback_all_undoes_the_run() {
    for mode in ["rollback-wave", "rollback-all"] {
        let (s, v1, v2, tenants, hashes) = on_v1(7, Some("t01"));
        let ids: BTreeMap<String, serde_json::Value> =
            tenants.iter().map(|(t, n)| (t.clone(), s.inspect(n)["Config"]["Labels"].clone())).collect();
        s.write_fleet(
            &s.fleet_app(&v2, &format!("[app.rollout]\nmax_failed = 0\non_budget = \"{mode}\"\n{ONE_THEN_TWO}")),
        );
        let out = s.slipway(&["rollout", "--json"]);
        assert_eq!(out.code, 3, "{mode}: {} {}", out.stdout, out.stderr);
        let run = out.json()["report"]["apps"][0]["run_id"].as_str().unwrap().to_string();
        let waves = frozen_waves(&s, &run);
        let failed_in = waves.iter().position(|w| w.2.iter().any(|t| t == "t01")).expect("t01 in a wave");
        assert!(failed_in > 0, "{mode}: t01 must fail after the first wave: {waves:?}");
        let earlier: Vec<&String> = waves[..failed_in].iter().flat_map(|w| &w.2).collect();
        for (t, name) in &tenants {
            // rollback-wave keeps the waves before the failing one; rollback-all keeps nothing.
            let want = if mode == "rollback-wave" && earlier.contains(&t) { &v2 } else { &v1 };
            assert_eq!(&s.image_of(name), want, "{mode}: {t}");
            assert_eq!(s.inspect(name)["State"]["Running"], true, "{mode}: {t}");
            if want == &v1 {
                // Back on (or never off) the prior version: the labels it had.
                assert_eq!(s.inspect(name)["Config"]["Labels"], ids[t], "{mode}: {t}'s labels");
            }
            assert_eq!(&tree_hash(&s.data_dir(t)), &hashes[t], "{mode}: {t}: data changed");
        }
        // rollback-wave leaves the run paused (resume or abort decides the rest); rollback-all
        // leaves nothing to decide.
        let status = s.slipway(&["status"]);
        assert_eq!(status.stdout.contains("PAUSED"), mode == "rollback-wave", "{mode}: {}", status.stdout);
        if mode == "rollback-wave" {
            let out = s.slipway(&["rollout", "abort", &run, "--json"]);
            assert_eq!(out.code, 0, "{mode}: {} {}", out.stdout, out.stderr);
            for (t, name) in &tenants {
                assert_eq!(s.image_of(name), v1, "{mode}: abort left {t} on the release");
                assert_eq!(&tree_hash(&s.data_dir(t)), &hashes[t], "{mode}: {t}: data changed");
            }
            assert!(!s.slipway(&["status"]).stdout.contains("PAUSED"), "{mode}");
        }
    }
}

#[test]
fn a_rollout_killed_as_it_pauses_is_still_paused_after_recover_and_resumes() {
    let (s, v1, v2, tenants, hashes) = on_v1(6, Some("t01"));
    s.write_fleet(&s.fleet_app(&v2, &format!("[app.rollout]\nmax_failed = 0\n{ONE_THEN_TWO}")));
    let out = s.slipway_env(&["rollout", "--json"], &[("SLIPWAY_TEST_CRASH_AT", "rollout-paused")]);
    assert!(out.stderr.contains("slipway test point reached: rollout-paused"), "{} {}", out.stdout, out.stderr);
    assert_eq!(out.code, -1, "{}", out.stdout);
    let rec = s.slipway(&["recover", "--json"]);
    assert_eq!(rec.code, 0, "{} {}", rec.stdout, rec.stderr);
    // Every tenant on one version, running, its data as it was; the run still paused.
    for (t, name) in &tenants {
        assert_eq!(s.inspect(name)["State"]["Running"], true, "{t}");
        assert_eq!(&tree_hash(&s.data_dir(t)), &hashes[t], "{t}");
    }
    let status = s.slipway(&["status"]);
    assert!(status.stdout.contains("PAUSED"), "{}", status.stdout);
    let line = status.stdout.lines().find(|l| l.contains("PAUSED")).unwrap();
    let run = line.split("run ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap().to_string();
    let out = s.slipway(&["rollout", "resume", &run, "--json"]);
    assert_eq!(out.code, 1, "{} {}", out.stdout, out.stderr);
    for (t, name) in &tenants {
        let want = if t == "t01" { &v1 } else { &v2 };
        assert_eq!(&s.image_of(name), want, "{t}");
    }
}

#[test]
fn a_resume_killed_in_its_wave_is_still_paused_after_recover_and_a_second_resume_finishes_the_frozen_waves() {
    let (s, v1, v2, tenants, hashes, _ids, run) = paused(8, "");
    let frozen = frozen_waves(&s, &run);
    // Killed (abort, as SIGKILL) when a tenant of the resumed parallel wave is done and
    // another is in flight.
    let out = s.slipway_env(&["rollout", "resume", &run, "--json"], &[("SLIPWAY_TEST_CRASH_AT", "wave-tenant-done")]);
    assert!(out.stderr.contains("slipway test point reached: wave-tenant-done"), "{} {}", out.stdout, out.stderr);
    assert_eq!(out.code, -1, "{}", out.stdout);
    // Before recover: no resume is offered of a run that has not ended.
    let status = s.slipway(&["status"]);
    assert!(status.stdout.contains("is paused but has not ended"), "{}", status.stdout);
    let rec = s.slipway(&["recover", "--json"]);
    assert_eq!(rec.code, 0, "{} {}", rec.stdout, rec.stderr);
    for (t, name) in &tenants {
        assert_eq!(s.inspect(name)["State"]["Running"], true, "{t}");
        let image = s.image_of(name);
        assert!(image == v1 || image == v2, "{t}: {image}");
        assert_eq!(&tree_hash(&s.data_dir(t)), &hashes[t], "{t}: data changed");
    }
    // Still paused: nothing else rolls past it, and a second resume goes on with its waves.
    let status = s.slipway(&["status"]);
    assert!(status.stdout.contains(&format!("run {run}")) && status.stdout.contains("PAUSED"), "{}", status.stdout);
    let again = s.slipway(&["rollout"]);
    assert_eq!(again.code, 2, "{} {}", again.stdout, again.stderr);
    let out = s.slipway(&["rollout", "resume", &run, "--json"]);
    assert_eq!(out.code, 1, "t01's failure still fails the run: {} {}", out.stdout, out.stderr);
    assert_eq!(out.json()["report"]["apps"][0]["run_id"], run.as_str());
    assert_eq!(frozen_waves(&s, &run), frozen, "the second resume must use the waves frozen by the run");
    for (t, name) in &tenants {
        let want = if t == "t01" { &v1 } else { &v2 };
        assert_eq!(&s.image_of(name), want, "{t}");
        assert_eq!(s.inspect(name)["State"]["Running"], true, "{t}");
        assert_eq!(&tree_hash(&s.data_dir(t)), &hashes[t], "{t}: data changed");
    }
    assert!(!s.slipway(&["status"]).stdout.contains("PAUSED"));
    assert_eq!(s.slipway(&["rollout", "resume", &run]).code, 2, "a finished resume leaves nothing paused");
}

/// A cron start (UTC) `offset_s` from now, to the minute: `"M H * * *"`.
fn daily_at(offset_s: i64) -> String {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64 + offset_s;
    let day = t.rem_euclid(86_400);
    format!("{} {} * * *", (day % 3600) / 60, day / 3600)
}

#[test]
fn tenants_outside_their_maintenance_window_are_not_rolled_and_a_deny_window_holds_everyone() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let v2 = s.push_fixture_as("v2", "app");
    let tenants = fleet(&s, 4, &v1);
    // The paid tier may roll only in a window twelve hours away; the free tier any time.
    let paid_later = format!(
        "[app.rollout]\n[[app.rollout.windows]]\nkind = \"allow\"\nselect = \"tier=paid\"\nstart = \"{}\"\nduration_s = 60\n",
        daily_at(12 * 3600)
    );
    // Everyone held: a deny window open all day.
    let deny = format!(
        "{paid_later}[[app.rollout.windows]]\nkind = \"deny\"\nstart = \"{}\"\nduration_s = 86400\ntz = \"Europe/Berlin\"\n",
        daily_at(-60)
    );
    s.write_fleet(&s.fleet_app(&v2, &deny));
    let out = s.slipway(&["reconcile", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("outside its maintenance window") && out.stdout.contains("deny window"),
        "{}",
        out.stdout
    );
    for (t, name) in &tenants {
        assert_eq!(s.image_of(name), v1, "{t} was rolled in a deny window");
    }
    s.write_fleet(&s.fleet_app(&v2, &paid_later));
    let out = s.slipway(&["reconcile", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    for (t, name) in &tenants {
        let paid = s.inspect(name)["Config"]["Labels"]["tier"] == "paid";
        assert_eq!(&s.image_of(name), if paid { &v1 } else { &v2 }, "{t}");
    }
    let held = &out.json()["report"]["apps"][0]["plan"]["outside_window"];
    assert_eq!(held.as_array().map(Vec::len), Some(2), "{held}");
    assert!(held[0]["why"].as_str().unwrap().contains("the next opens at"), "{held}");
}

#[test]
fn a_window_that_closes_pauses_the_run_at_the_wave_boundary_and_reconcile_resumes_it_when_it_opens() {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let v2 = s.push_fixture_as("v2", "app");
    let tenants = fleet(&s, 5, &v1);
    let hashes: BTreeMap<String, String> =
        tenants.iter().map(|(t, _)| (t.clone(), tree_hash(&s.data_dir(t)))).collect();
    // Open since a minute ago for an hour; the test build's clock moves two hours on after the
    // canary's wave, so the window has closed at the next wave boundary.
    let window = format!(
        "[app.rollout]\nmax_parallel = 2\n[[app.rollout.windows]]\nkind = \"allow\"\nstart = \"{}\"\nduration_s = 3600\n",
        daily_at(-60)
    );
    s.write_fleet(&s.fleet_app(&v2, &window));
    let out = s.slipway_env(&["rollout", "--json"], &[("SLIPWAY_TEST_WINDOW_SHIFT_S", "7200")]);
    assert_eq!(out.code, 0, "a window closing is no failure: {} {}", out.stdout, out.stderr);
    let app = &out.json()["report"]["apps"][0];
    assert_eq!(app["paused"], true, "{app}");
    let run = app["run_id"].as_str().unwrap().to_string();
    let rolled: Vec<&str> = app["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["outcome"] == "rolled")
        .map(|t| t["tenant"].as_str().unwrap())
        .collect();
    assert_eq!(rolled.len(), 1, "only the canary's wave rolled: {app}");
    let status = s.slipway(&["status"]);
    assert!(
        status.stdout.contains("PAUSED") && status.stdout.contains("maintenance window closed"),
        "{}",
        status.stdout
    );
    // It waits for its window, and status says so: no pause_timeout aborts a window's pause.
    assert!(
        status.stdout.contains("once its maintenance window opens") && !status.stdout.contains("pause_timeout_s"),
        "{}",
        status.stdout
    );
    // The window is open (no shift): reconcile goes on with the same run.
    let out = s.slipway(&["reconcile", "--json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert_eq!(out.json()["report"]["apps"][0]["run_id"], run.as_str(), "{}", out.stdout);
    for (t, name) in &tenants {
        assert_eq!(s.image_of(name), v2, "{t}");
        assert_eq!(&tree_hash(&s.data_dir(t)), &hashes[t], "{t}");
    }
    assert!(!s.slipway(&["status"]).stdout.contains("PAUSED"));
}

#[test]
fn after_a_resume_max_failure_ratio_is_of_the_whole_runs_tenants_not_of_those_left() {
    // Ten tenants, a share of 0.1 allowed: one failure in ten is within it. The window closes
    // after the canary's wave; the resume has nine left, and one of them (t05) fails: 1/10 is
    // within the budget, 1/9 would not be.
    let (s, v1, v2, tenants, hashes) = on_v1(10, Some("t05"));
    let window = format!(
        "[app.rollout]\nmax_failure_ratio = 0.1\nmax_parallel = 2\n[[app.rollout.windows]]\nkind = \"allow\"\n\
         start = \"{}\"\nduration_s = 3600\n",
        daily_at(-60)
    );
    s.write_fleet(&s.fleet_app(&v2, &window));
    let out = s.slipway_env(&["rollout", "--json"], &[("SLIPWAY_TEST_WINDOW_SHIFT_S", "7200")]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert_eq!(out.json()["report"]["apps"][0]["paused"], true, "{}", out.stdout);
    let out = s.slipway(&["reconcile", "--json"]);
    // Within the budget: the run goes on past t05 (rolled back with its data) and ends failed.
    assert_eq!(out.code, 1, "{} {}", out.stdout, out.stderr);
    for (t, name) in &tenants {
        let want = if t == "t05" { &v1 } else { &v2 };
        assert_eq!(&s.image_of(name), want, "{t}");
        assert_eq!(&tree_hash(&s.data_dir(t)), &hashes[t], "{t}: data changed");
    }
    assert!(!s.slipway(&["status"]).stdout.contains("PAUSED"));
}

#[test]
fn a_wave_under_its_min_healthy_or_past_its_progress_deadline_pauses_the_run_before_the_next_wave() {
    for (case, extra, words) in [
        // Failures within the run's budget (5), but the wave wants every tenant healthy.
        (
            "min_healthy",
            "max_failed = 5\n[[app.rollout.waves]]\ncount = 3\nmin_healthy = 1.0\n",
            "under its min_healthy = 1",
        ),
        // Each tenant of the wave bakes 2 s: past 1 s the wave starts no one more.
        (
            "progress_deadline_s",
            "[[app.rollout.waves]]\ncount = 3\nbake_s = 2\nprogress_deadline_s = 1\n",
            "did not finish within its progress_deadline_s = 1",
        ),
    ] {
        let s = Sandbox::new();
        let v1 = s.push_fixture_as("v1", "app");
        let v2 = s.push_fixture_as("v2", "app");
        let tenants = fleet(&s, 6, &v1);
        if case == "min_healthy" {
            s.write_data("t01", "refuse-v2", "not with v2\n");
        }
        let hashes: BTreeMap<String, String> =
            tenants.iter().map(|(t, _)| (t.clone(), tree_hash(&s.data_dir(t)))).collect();
        s.write_fleet(&s.fleet_app(&v2, &format!("[app.rollout]\n{extra}")));
        let out = s.slipway(&["rollout", "--json"]);
        assert_eq!(out.code, 3, "{case}: {} {}", out.stdout, out.stderr);
        let app = out.report::<Rollout>().apps.remove(0);
        let json = out.json();
        let report = &json["report"]["apps"][0];
        assert_eq!(report["paused"], true, "{case}: {report}");
        assert!(out.stdout.contains(words), "{case}: {}", out.stdout);
        // The last wave never started: its tenants are untouched, on v1 with their data.
        let rest = &app.waves.last().unwrap().tenants;
        for t in rest {
            let r = app.tenants.iter().find(|r| &r.tenant == t).unwrap();
            assert_eq!(r.outcome, "not_reached", "{case}: {t}");
        }
        for (t, name) in &tenants {
            assert_eq!(s.inspect(name)["State"]["Running"], true, "{case}: {t}");
            assert_eq!(&tree_hash(&s.data_dir(t)), &hashes[t], "{case}: {t}");
            if rest.contains(t) {
                assert_eq!(s.image_of(name), v1, "{case}: {t}");
            }
        }
    }
}
