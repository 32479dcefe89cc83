#!/usr/bin/env bash
# Waves benchmark (issue #28: rollouts at fleet scale). N tiny tenants (default 200: the
# busybox fixture, a few KB of data each) rolled by slipway twice in one run on one host:
#   1. v1 -> v2 one tenant at a time (`--max-parallel 1`: the default rollout)
#   2. v2 -> v1 with `--max-parallel 8` (canary alone, then eight at a time)
# and, same run, the operator's script (docker stop, rm, run, curl until healthy) on the same
# tenants one at a time and eight at a time: how much faster the engine itself goes.
# Reports the wall time of each, their ratio (issue target <= 1/5), and per-tenant downtime
# (median, p95, max) and slipway's own part of it (downtime minus docker stop, start and the
# app's time to healthy) with and without parallelism, as a table in bench/out/waves.md.
# Needs the test environment (scripts/testenv.sh up) for the registry and fixtures.
# SLIPWAY_BIN=path uses that binary instead of building a release one. Not part of `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${BENCH_TENANTS:-200}
PAR=${BENCH_PARALLEL:-8}
[ -f .testenv/env ] || scripts/testenv.sh up >&2
# shellcheck disable=SC1091
. .testenv/env
if [ -n "${SLIPWAY_BIN:-}" ]; then
  SLIPWAY=$SLIPWAY_BIN
else
  cargo build --release -q -p slipway
  SLIPWAY=${CARGO_TARGET_DIR:-$PWD/target}/release/slipway
fi
V1=$SWTEST_FIXTURE_V1
V2=$SWTEST_FIXTURE_V2
work=$(mktemp -d /tmp/slipway-bench-waves.XXXXXX)
net=swwaves-$$
mkdir -p bench/out
cleanup() {
  docker ps -aq --filter "label=swwaves=$$" | xargs -r docker rm -f >/dev/null 2>&1 || true
  docker network rm "$net" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
docker network create "$net" >/dev/null
docker pull -q "$V1" >/dev/null
docker pull -q "$V2" >/dev/null

echo "starting $N tiny tenants..." >&2
for i in $(seq -w 1 "$N"); do
  mkdir -p "$work/data/t$i/db"
  printf 'tenant t%s rows\n' "$i" > "$work/data/t$i/db/rows.txt"
  docker run -d --name "wv-t$i" --network "$net" -l swwaves=$$ -l "value=$i" -e "TENANT=t$i" \
    -v "$work/data/t$i:/data" --restart unless-stopped --memory 32m "$V1" >/dev/null
done

git init -q --bare "$work/fleet.git"
git clone -q "$work/fleet.git" "$work/fleet" 2>/dev/null
pin() { # image message
  cat > "$work/fleet/fleet.toml" <<TOML
[[app]]
name = "waves"
image = "$1"
select = "swwaves=$$"
tenant_from = "name:wv-{tenant}"
data_dir = "$work/data/{tenant}"
health = { path = "/api/health", port = 8080, timeout_s = 60 }
stop_timeout_s = 10
[app.rollout]
order_by = "value"
TOML
  git -C "$work/fleet" add fleet.toml
  git -C "$work/fleet" -c user.name=bench -c user.email=bench@localhost commit -qm "$2"
  git -C "$work/fleet" push -q origin HEAD:main
}
cat > "$work/config.toml" <<TOML
state_dir = "$work/state"
backup_root = "$work/backups"
[desired]
repo = "$work/fleet.git"
TOML
chmod 600 "$work/config.toml"

roll() { # image max_parallel out
  pin "$1" "pin $1"
  local t0; t0=$(date +%s%N)
  "$SLIPWAY" --config "$work/config.toml" rollout --max-parallel "$2" --json > "$3"
  echo $(( ($(date +%s%N) - t0) / 1000000 ))
}
echo "rolling $N tenants one at a time..." >&2
serial_ms=$(roll "$V2" 1 "$work/serial.json")
echo "rolling them back, $PAR at a time..." >&2
par_ms=$(roll "$V1" "$PAR" "$work/parallel.json")

# The operator's script on the same tenants, same run: per tenant `docker stop`, `docker rm`,
# `docker run` of the new image with the same settings, then curl until healthy — one at a time
# (xargs -P 1), then back with xargs -P $PAR. It keeps no copy, no journal, no undo: what it
# shows is how far the engine itself goes faster with parallelism on this host.
cat > "$work/swap.sh" <<SH
#!/usr/bin/env bash
set -e
i=\$1; img=\$2
docker stop -t 10 "wv-t\$i" >/dev/null
docker rm "wv-t\$i" >/dev/null
docker run -d --name "wv-t\$i" --network "$net" -l swwaves=$$ -l "value=\$i" -e "TENANT=t\$i" \
  -v "$work/data/t\$i:/data" --restart unless-stopped --memory 32m "\$img" >/dev/null
ip=\$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "wv-t\$i")
until curl -fs -o /dev/null "http://\$ip:8080/api/health"; do sleep 0.05; done
SH
chmod +x "$work/swap.sh"
script() { # image parallel
  local t0; t0=$(date +%s%N)
  seq -w 1 "$N" | xargs -P "$2" -I{} "$work/swap.sh" {} "$1"
  echo $(( ($(date +%s%N) - t0) / 1000000 ))
}
echo "the operator's script: one at a time..." >&2
script_serial_ms=$(script "$V2" 1)
echo "the operator's script: $PAR at a time..." >&2
script_par_ms=$(script "$V1" "$PAR")

python3 - "$work/serial.json" "$work/parallel.json" "$serial_ms" "$par_ms" "$N" "$PAR" "$(nproc)" \
  "$script_serial_ms" "$script_par_ms" <<'PY' | tee bench/out/waves.md
import json, statistics, sys
def load(p):
    ts = json.load(open(p))["report"]["apps"][0]["tenants"]
    assert all(t["outcome"] == "rolled" for t in ts), [t for t in ts if t["outcome"] != "rolled"][:3]
    return ts
serial, par = load(sys.argv[1]), load(sys.argv[2])
s_ms, p_ms, n, k, cores = int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6], sys.argv[7]
def p95(xs):
    xs = sorted(xs); return xs[min(len(xs) - 1, int(round(0.95 * (len(xs) - 1))))]
def own(t):
    g = t["timings"]; return t["downtime_ms"] - g["stop_ms"] - g["start_ms"] - g["health_ms"]
med = statistics.median
print(f"{n} tiny tenants (busybox fixture, a few KB of data each), one host with {cores} cores, same run\n")
print(f"| | one at a time | max_parallel {k} | ratio |")
print("|---|---:|---:|---:|")
print(f"| total wall time | {s_ms/1000:.1f} s | {p_ms/1000:.1f} s | {p_ms/s_ms:.2f} (target <= 0.20) |")
ss_ms, sp_ms = int(sys.argv[8]), int(sys.argv[9])
print(f"| the operator's script (stop, rm, run, curl), same tenants | {ss_ms/1000:.1f} s | {sp_ms/1000:.1f} s | "
      f"{sp_ms/ss_ms:.2f} |")
print(f"| slipway against the script | {s_ms/ss_ms:.2f} | {p_ms/sp_ms:.2f} | |")
for label, f in (("downtime per tenant, median", lambda ts: med([t['downtime_ms'] for t in ts])),
                 ("downtime per tenant, p95", lambda ts: p95([t['downtime_ms'] for t in ts])),
                 ("downtime per tenant, max", lambda ts: max(t['downtime_ms'] for t in ts)),
                 ("slipway's own part of it, median", lambda ts: med([own(t) for t in ts])),
                 ("slipway's own part of it, p95", lambda ts: p95([own(t) for t in ts])),
                 ("  of which the delta copy, median", lambda ts: med([t['timings']['copy_delta_ms'] for t in ts])),
                 ("  of which the two renames (engine calls), median",
                  lambda ts: med([t['timings']['rename_ms'] + t['timings']['switch_ms'] for t in ts])),
                 ("  of which the rest (journal writes, waiting to be polled), median",
                  lambda ts: med([own(t) - t['timings']['copy_delta_ms'] - t['timings']['rename_ms']
                                  - t['timings']['switch_ms'] for t in ts])),
                 ("docker stop, median", lambda ts: med([t['timings']['stop_ms'] for t in ts])),
                 ("docker start, median", lambda ts: med([t['timings']['start_ms'] for t in ts])),
                 ("start -> healthy, median", lambda ts: med([t['timings']['health_ms'] for t in ts]))):
    a, b = f(serial), f(par)
    print(f"| {label} | {a:.0f} ms | {b:.0f} ms | {b/a if a else float('nan'):.2f} |")
PY
