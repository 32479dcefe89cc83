//! An error after a tenant is stopped is undone in the same process (issue 11, item 8): a
//! journal write that fails (state.db locked, its disk full) never ends a rollout with the
//! tenant down. The fault is real from the process's point of view: with the `test-crash`
//! feature, `SLIPWAY_TEST_JOURNAL_FAILS_FROM=<crash point>` makes every journal write after
//! that point fail, the rollout's and its undo's alike.

use crate::support::reports::Rollout;
use crate::support::{tree_hash, Sandbox};

/// Roll t1 (v1, some data) to `to` with the journal failing from `point`; check that it ends
/// halted (exit 3) with t1 restored: the same container, running, healthy on v1, data as it
/// was. Returns the tenant's report detail.
fn journal_fails_from(point: &str, to: &str) -> String {
    let s = Sandbox::new();
    let v1 = s.push_fixture_as("v1", "app");
    let to = s.push_fixture_as(to, "app");
    s.write_data("t1", "db/records.txt", &"customer rows\n".repeat(100));
    let name = s.add_tenant("t1", &v1);
    let id = s.inspect(&name)["Id"].clone();
    let hash = tree_hash(&s.data_dir("t1"));
    s.write_fleet(&s.fleet_app(&to, ""));
    let out = s.slipway_env(&["rollout", "--json"], &[("SLIPWAY_TEST_JOURNAL_FAILS_FROM", point)]);
    assert!(out.stderr.contains(&format!("slipway test point reached: {point}")), "{}", out.stderr);
    assert_eq!(out.code, 3, "{} {}", out.stdout, out.stderr);
    let report: Rollout = out.report();
    let t = &report.apps[0].tenants[0];
    assert_eq!(t.outcome, "restored", "{t:?}");
    let now = s.inspect(&name);
    assert_eq!(now["Id"], id, "the tenant is not on its prior container");
    assert_eq!(now["State"]["Running"], true, "the tenant was left down");
    assert_eq!(s.image_of(&name), v1);
    let body = s.http_get(&format!("http://{}:8080/api/health", s.container_ip(&name)));
    assert!(body.contains("v1"), "{body}");
    assert_eq!(tree_hash(&s.data_dir("t1")), hash, "the data is not as it was before the rollout");
    assert!(s.containers_named_like(".pre-rollout-").is_empty(), "{:?}", s.containers_named_like(""));
    t.detail.clone().unwrap_or_default()
}

#[test]
fn a_journal_write_failing_after_the_stop_brings_the_tenant_back_in_the_same_process() {
    let detail = journal_fails_from("after-stop", "v2");
    assert!(detail.contains("state.db"), "{detail}");
}

#[test]
fn a_journal_write_failing_after_the_new_version_started_restores_its_data_and_the_prior_container() {
    // The writer fixture writes into the data dir as it starts: the undo must restore it.
    let detail = journal_fails_from("after-start", "writer");
    assert!(detail.contains("state.db") && detail.contains("data restored"), "{detail}");
}
