#!/usr/bin/env bash
# A SQLite tenant under write load (issue #27 item 3). One tenant (the v1 fixture) whose data
# dir holds a BENCH_SQLITE_MIB (default 256) MiB SQLite database in WAL mode, and a writer on
# the host as the app's uid (python3's sqlite3, synchronous=NORMAL) committing one ~1 KiB row
# every 5 ms and timing each commit (BEGIN IMMEDIATE to COMMIT). In one run, twice each,
# alternating:
#   idle     the writer alone (10 s)
#   slipway  `slipway snapshot` of the tenant with [app.database] kind = "sqlite" (the online
#            copy by the confined copier, integrity_check, the archive of the whole data dir)
#   tool     the operator's tool: sqlite3 app.db ".backup copy.db" (Debian's sqlite3: the copy
#            only), killed after BENCH_SQLITE_TIMEOUT (default 120) s
# Reports each window's wall time, the commits in it, their p50/p99/max latency, and the
# tenant's pauses (docker events) in bench/out/sqlite.md. Needs the test environment
# (scripts/testenv.sh up). BENCH_SLIPWAY=PATH measures that binary instead of a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v sqlite3 >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq sqlite3 >/dev/null; }
MIB=${BENCH_SQLITE_MIB:-256}
TOOL_TIMEOUT=${BENCH_SQLITE_TIMEOUT:-120}
APP_UID=1000
PY=/usr/bin/python3
[ -f .testenv/env ] || scripts/testenv.sh up >&2
# shellcheck disable=SC1091
. .testenv/env
if [ -z "${BENCH_SLIPWAY:-}" ]; then cargo build --release -q --bin slipway; fi
SLIPWAY=${BENCH_SLIPWAY:-${CARGO_TARGET_DIR:-$PWD/target}/release/slipway}
work=$(mktemp -d /var/tmp/slipway-bench-sqlite.XXXXXX)
chmod 711 "$work"
net=swbench-sqlite-$$
name=sqb-b1-$$
mkdir -p bench/out
writer_pid=
cleanup() {
  [ -n "$writer_pid" ] && { touch "$work/flags/stop"; wait "$writer_pid" 2>/dev/null || true; }
  docker ps -aq --filter "label=swbench=$$" | xargs -r docker rm -f >/dev/null 2>&1 || true
  docker network rm "$net" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
docker network create "$net" >/dev/null
mkdir -p "$work/data/b1" "$work/flags"
echo "a tenant file" >"$work/data/b1/readme.txt"
db="$work/data/b1/app.db"
echo "filling a ${MIB} MiB SQLite database ..." >&2
"$PY" - "$db" "$MIB" <<'PY'
import sqlite3, sys
db, mib = sys.argv[1], int(sys.argv[2])
c = sqlite3.connect(db)
c.execute("pragma journal_mode=wal")
c.execute("create table rows(id integer primary key, at real not null, v text not null)")
n = mib * 512  # two rows of ~1.8 KiB (900 random bytes as hex) per 4 KiB page
c.execute("with recursive g(x) as (select 1 union all select x + 1 from g where x < ?) "
          "insert into rows(at, v) select 0, hex(randomblob(900)) from g", (n,))
c.commit()
c.execute("pragma wal_checkpoint(truncate)")
PY
chown -R "$APP_UID:$APP_UID" "$work/data/b1" "$work/flags"
size=$(stat -c %s "$db")
docker run -d --name "$name" --network "$net" -l swbench=$$ -e TENANT=b1 -v "$work/data/b1:/data" \
  "$SWTEST_FIXTURE_V1" >/dev/null

git init -q --bare "$work/fleet.git"
git clone -q "$work/fleet.git" "$work/fleet" 2>/dev/null
cat > "$work/fleet/fleet.toml" <<TOML
[[app]]
name = "bench"
image = "$SWTEST_FIXTURE_V1"
select = "swbench=$$"
tenant_from = "name:sqb-{tenant}-$$"
data_dir = "$work/data/{tenant}"
health = { path = "/api/health", port = 8080 }
[app.database]
kind = "sqlite"
paths = ["app.db"]
TOML
git -C "$work/fleet" add fleet.toml
git -C "$work/fleet" -c user.name=bench -c user.email=bench@localhost commit -qm "bench"
git -C "$work/fleet" push -q origin HEAD:main
cat > "$work/host.toml" <<TOML
state_dir = "$work/state"
backup_root = "$work/backups"
[desired]
repo = "$work/fleet.git"
TOML
chmod 600 "$work/host.toml"

# The writer: one commit every 5 ms, each line "<unix time at commit> <latency ms>".
cat > "$work/writer.py" <<'PY'
import os, sqlite3, sys, time
db, out, stop = sys.argv[1], sys.argv[2], sys.argv[3]
c = sqlite3.connect(db, isolation_level=None, timeout=60)
c.execute("pragma journal_mode=wal")
c.execute("pragma synchronous=normal")
f = open(out, "w", buffering=1)
while not os.path.exists(stop):
    t0 = time.monotonic()
    c.execute("begin immediate")
    c.execute("insert into rows(at, v) values (?, hex(randomblob(512)))", (time.time(),))
    c.execute("commit")
    t1 = time.monotonic()
    f.write(f"{time.time():.6f} {(t1 - t0) * 1000:.3f}\n")
    time.sleep(0.005)
PY
setpriv --reuid "$APP_UID" --regid "$APP_UID" --clear-groups "$PY" "$work/writer.py" "$db" "$work/flags/lat" "$work/flags/stop" &
writer_pid=$!
sleep 2

now() { date +%s.%N; }
windows=()
idle() { local t0; t0=$(now); sleep 10; windows+=("idle $1 $t0 $(now) -"); }
for round in 1 2; do
  idle "$round"
  t0=$(now)
  "$SLIPWAY" --config "$work/host.toml" snapshot --force --json >"$work/slipway-$round.json"
  t1=$(now)
  pauses=$(docker events --since "$t0" --until "$(now)" --filter "container=$name" --filter event=pause --format x | wc -l)
  windows+=("slipway $round $t0 $t1 $pauses")
  sleep 2
  rm -f "$work/copy.db"
  t0=$(now)
  if timeout "$TOOL_TIMEOUT" sqlite3 "$db" ".backup $work/copy.db"; then t1=$(now); else t1=timeout; fi
  windows+=("tool $round $t0 ${t1/timeout/$(now)} $([ "$t1" = timeout ] && echo timeout || echo -)")
  sleep 2
done
touch "$work/flags/stop"
wait "$writer_pid" || true
writer_pid=

"$PY" - "$work/flags/lat" "$size" "${windows[@]}" <<'PY' | tee bench/out/sqlite.md
import os, sys, datetime
lat = [tuple(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
size = int(sys.argv[2])
def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))] if v else float("nan")
print(f"# A SQLite tenant under write load ({datetime.date.today()}, {os.cpu_count()} cores)")
print()
print(f"app.db: {size // 1048576} MiB, WAL mode; a writer commits one row every 5 ms (BEGIN IMMEDIATE .. COMMIT, "
      "synchronous=NORMAL). Latency of the commits that ended in each window.")
print()
print("| window | round | wall s | commits | p50 ms | p99 ms | max ms | tenant paused |")
print("|---|---|---|---|---|---|---|---|")
for w in sys.argv[3:]:
    what, rnd, t0, t1, extra = w.split()
    t0, t1 = float(t0), float(t1)
    v = [l for (t, l) in lat if t0 <= t <= t1]
    paused = {"slipway": f"{extra} times", "tool": "n/a", "idle": "n/a"}[what]
    wall = f"{t1 - t0:.2f}" + (" (killed: did not finish)" if extra == "timeout" else "")
    print(f"| {what} | {rnd} | {wall} | {len(v)} | {pct(v, 50):.2f} | {pct(v, 99):.2f} | {max(v) if v else float('nan'):.2f} | {paused} |")
PY
for round in 1 2; do
  "$PY" -c "import json,sys; a=json.load(open(sys.argv[1]))['report']['archives'][0]; print('slipway round', sys.argv[2], 'outcome', a['outcome'], 'pause_ms', a['pause_ms'], 'staging', a['staging'], 'copy bytes', a['sqlite'][0]['size'])" "$work/slipway-$round.json" "$round" | tee -a bench/out/sqlite.md
done
