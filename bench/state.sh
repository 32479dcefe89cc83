#!/usr/bin/env bash
# Run-record benchmark (issue 28, figures): how long `slipway status` and `slipway runs` take on
# a state.db that has lived a long time — BENCH_STATE_RUNS runs (default 10 000: rollouts of
# BENCH_STATE_TENANTS tenants (default 200) with their per-tenant results and steps, daily
# snapshots, syncs, prunes, drills) and a year of daily archives per tenant. Target: each
# under 200 ms. Next to it, the same questions asked of the same file with the sqlite3 CLI
# (what an operator would otherwise type). Medians of BENCH_STATE_REPEAT (default 15) runs of
# the release binary, in bench/out/state.md. Needs no Docker container: the fleet's app selects
# none, so status is the run record's work alone.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${BENCH_STATE_RUNS:-10000}
TENANTS=${BENCH_STATE_TENANTS:-200}
REPEAT=${BENCH_STATE_REPEAT:-15}
command -v sqlite3 >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq sqlite3 >/dev/null; }
# BENCH_SLIPWAY=PATH measures that binary instead of a fresh release build.
if [ -z "${BENCH_SLIPWAY:-}" ]; then cargo build --release -q --bin slipway; fi
SLIPWAY=${BENCH_SLIPWAY:-${CARGO_TARGET_DIR:-$PWD/target}/release/slipway}
work=$(mktemp -d /var/tmp/slipway-bench-state.XXXXXX)
mkdir -p bench/out
trap '[ -n "${BENCH_STATE_KEEP:-}" ] || rm -rf "$work"' EXIT

git init -q --bare "$work/fleet.git"
git clone -q "$work/fleet.git" "$work/fleet" 2>/dev/null
cat > "$work/fleet/fleet.toml" <<TOML
[[app]]
name = "bench"
image = "127.0.0.1:5000/bench@sha256:$(printf 'a%.0s' $(seq 64))"
select = "swbench-state=$$"
tenant_from = "label:swbench.tenant"
data_dir = "$work/data/{tenant}"
health = { path = "/api/health", port = 8080 }
TOML
git -C "$work/fleet" add fleet.toml
git -C "$work/fleet" -c user.name=bench -c user.email=bench@localhost commit -qm "bench"
git -C "$work/fleet" push -q origin HEAD:main
cat > "$work/config.toml" <<TOML
state_dir = "$work/state"
backup_root = "$work/backups"
[desired]
repo = "$work/fleet.git"
TOML
chmod 600 "$work/config.toml"
mkdir -p "$work/data" "$work/backups"

# The binary makes the schema (every migration), then the history is written into it.
"$SLIPWAY" --config "$work/config.toml" runs --json >/dev/null
echo "filling state.db: $RUNS runs, $TENANTS tenants ..." >&2
python3 - "$work/state/state.db" "$RUNS" "$TENANTS" <<'PY'
import datetime, json, random, sqlite3, sys
db, runs, tenants = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rnd = random.Random(7)
c = sqlite3.connect(db)
t0 = datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc)
names = [f"t{i:03d}" for i in range(tenants)]
digest = lambda n: "sha256:%064x" % n
jobs = ["snapshot"] * 5 + ["sync"] * 2 + ["prune", "verify", "rollout", "drill"]
runs_rows, steps, tenant_rows, drills, waves, pauses = [], [], [], [], [], []
for i in range(runs):
    at = t0 + datetime.timedelta(minutes=53 * i)
    rid = at.strftime("%Y%m%dT%H%M%SZ") + "-%04x" % rnd.getrandbits(16)
    job = jobs[i % len(jobs)]
    stamp = at.isoformat().replace("+00:00", "Z")
    outcome = "halted" if job == "rollout" and i % 97 == 0 else "success"
    runs_rows.append((rid, job, "timer", "bench" if job == "rollout" else None, "c%039d" % i,
                      digest(i) if job == "rollout" else None, 1, stamp, stamp, outcome,
                      3 if outcome == "halted" else 0, f"{job} done", stamp if outcome == "halted" else None))
    if job == "rollout":
        # Waves as [app.rollout] freezes them: the canary, 10 % four at a time, the rest eight.
        for pos, t in enumerate(names):
            w, wname, par = (0, "canary", 1) if pos == 0 else ((1, "wave 1", 4) if pos <= len(names) // 10 else (2, "rest", 8))
            waves.append((rid, w, pos, t, wname, par, 0))
        # A halted rollout paused over its budget and resumed; the newest one still paused.
        if outcome == "halted":
            pauses.append((rid, "bench", "budget", stamp, "1 tenant(s) failed, over the failure budget", stamp, "resumed"))
        for t in names:
            tenant_rows.append((rid, t, digest(i - 11), digest(i), "success", 500 + rnd.randrange(200), None))
            # Each row holds the tenant's journal as the rollout writes it (recover, rollback and
            # the kept-copies scan of status read every one, typed).
            journal = json.dumps({
                "app": "bench", "tenant": t, "name": f"bench-{t}", "pre_name": f"bench-{t}.pre-rollout-{rid}",
                "old_id": "%064x" % (i * 1000 + 1), "old_image": "reg/bench@" + digest(i - 11),
                "old_digest": digest(i - 11), "old_image_id": "sha256:%064x" % (i - 11),
                "new_image": "reg/bench@" + digest(i), "new_id": "%064x" % (i * 1000 + 2),
                "data_dir": f"/srv/bench/{t}", "snapshot": None, "sha256": "%064x" % i,
                "copy": f"/srv/.slipway-rollout/{rid}/{t}", "copy_ino": 1234567, "staged_name": f"bench-{t}.next-{rid}",
                "stop_timeout_s": 30, "health": {"path": "/api/health", "port": 8080},
                "keep_old": False, "was_running": True,
                "settings": {"name": f"bench-{t}", "labels": {"swbench.tenant": t, "value": str(i % 100)},
                             "networks": {"bench": [t]}, "mounts": [], "env_keys": ["TENANT"]}})
            for s in ("stop", "snapshot", "create", "start", "health"):
                steps.append((rid, t, s, stamp, stamp, "ok", journal))
    elif job == "snapshot":
        for t in names:
            steps.append((rid, t, "snapshot", stamp, stamp, "ok", "{}"))
    elif job == "drill":
        for t in names[:20]:
            drills.append((rid, t, "daily/" + at.strftime("%Y-%m-%d"), 0, "%064x" % i, 1000, 2000, 30, 400, 300, "success", None, stamp))
c.executemany("INSERT INTO runs (id, job, trigger, app, git_commit, digest, pid, started_at, finished_at, outcome, exit_code, summary, resolved_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", runs_rows)
c.executemany("INSERT INTO steps (run_id, tenant, step, started_at, finished_at, outcome, detail) VALUES (?,?,?,?,?,?,?)", steps)
c.executemany("INSERT INTO run_tenants (run_id, tenant, from_digest, to_digest, outcome, downtime_ms, detail) VALUES (?,?,?,?,?,?,?)", tenant_rows)
c.executemany("INSERT INTO drills (run_id, tenant, snapshot, remote, sha256, archive_bytes, data_bytes, entries, restore_ms, healthy_ms, outcome, detail, finished_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", drills)
if pauses:  # the newest still open: status shows it, runs show prints it
    pauses[-1] = pauses[-1][:5] + (None, None)
c.executemany("INSERT INTO run_waves (run_id, wave, position, tenant, name, max_parallel, bake_s) VALUES (?,?,?,?,?,?,?)", waves)
c.executemany("INSERT INTO run_pauses (run_id, app, kind, paused_at, reason, ended_at, ended_by) VALUES (?,?,?,?,?,?,?)", pauses)
snaps = []
for d in range(365):
    day = (t0 + datetime.timedelta(days=d)).strftime("%Y-%m-%d")
    for t in names:
        snaps.append((f"daily/{day}/tenants/{t}.tar.zst", "daily", day, t, None, "%064x" % d, 4096, 12, day + "T03:00:00Z", day + "T04:00:00Z", ""))
c.executemany("INSERT INTO snapshots (path, kind, snap, tenant, run_id, sha256, size, files, created_at, remote_verified_at, remote_verified_to) VALUES (?,?,?,?,?,?,?,?,?,?,?)", snaps)
c.commit()
print(f"runs {len(runs_rows)}, steps {len(steps)}, run_tenants {len(tenant_rows)}, run_waves {len(waves)}, pauses {len(pauses)}, snapshots {len(snaps)}, drills {len(drills)}", file=sys.stderr)
PY
ls -l "$work/state/state.db" >&2

median_ms() { # command...: median wall time of REPEAT runs, in ms
  python3 - "$REPEAT" "$@" <<'PY'
import statistics, subprocess, sys, time
n, cmd = int(sys.argv[1]), sys.argv[2:]
ts = []
for _ in range(n):
    t = time.perf_counter()
    p = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ts.append((time.perf_counter() - t) * 1000)
    if p.returncode not in (0, 8):  # 8: status has something needing attention (the halted runs)
        sys.exit(f"{cmd} exited {p.returncode}: {p.stderr.decode()[-400:]}")
print(f"{statistics.median(ts):.0f}")
PY
}
db="$work/state/state.db"
# Every rollout row must read back as the journal it is: a bench whose rows status cannot read
# would time the error path, not the scan.
if "$SLIPWAY" --config "$work/config.toml" status 2>&1 | grep -q "does not parse"; then
  echo "state.sh: status cannot read the seeded journal rows; fix the seed" >&2
  exit 1
fi
status_ms=$(median_ms "$SLIPWAY" --config "$work/config.toml" status --json)
runs_ms=$(median_ms "$SLIPWAY" --config "$work/config.toml" runs --json)
sq_status_ms=$(median_ms sqlite3 "$db" "SELECT tenant, max(created_at) FROM snapshots GROUP BY tenant; SELECT id FROM runs WHERE outcome IN ('halted','person_needed') AND resolved_at IS NULL; SELECT id FROM runs WHERE finished_at IS NULL; SELECT * FROM run_pauses WHERE ended_at IS NULL;")
sq_runs_ms=$(median_ms sqlite3 "$db" "SELECT * FROM runs ORDER BY id DESC LIMIT 20;")
# The paused rollout (the newest halted one): its whole record, waves and pause included.
paused=$(sqlite3 "$db" "SELECT run_id FROM run_pauses WHERE ended_at IS NULL ORDER BY id DESC LIMIT 1;")
show_ms=$(median_ms "$SLIPWAY" --config "$work/config.toml" runs show "$paused" --json)
sq_show_ms=$(median_ms sqlite3 "$db" "SELECT * FROM runs WHERE id = '$paused'; SELECT * FROM run_tenants WHERE run_id = '$paused'; SELECT * FROM run_waves WHERE run_id = '$paused' ORDER BY wave, position; SELECT * FROM run_pauses WHERE run_id = '$paused'; SELECT * FROM steps WHERE run_id = '$paused' ORDER BY id;")
{
  echo "| command ($RUNS runs, $TENANTS tenants, $(du -m "$db" | cut -f1) MB state.db) | slipway | sqlite3 CLI, same questions | target |"
  echo "|---|---:|---:|---:|"
  echo "| \`status\` | ${status_ms} ms | ${sq_status_ms} ms | < 200 ms |"
  echo "| \`runs\` | ${runs_ms} ms | ${sq_runs_ms} ms | < 200 ms |"
  echo "| \`runs show\` of a paused rollout ($TENANTS tenants' waves and steps) | ${show_ms} ms | ${sq_show_ms} ms | < 200 ms |"
} | tee bench/out/state.md
