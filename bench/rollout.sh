#!/usr/bin/env bash
# Rollout benchmark (issue: rollout performance). Rolls N tenants (default 10) with DATA_MB
# (default 100) MB of data each from fixture v1 to v2, twice in the same run on the same host:
#  - slipway rollout
#  - a plain shell rollout doing the runbook's steps with the docker CLI:
#    stop -t 30, `cp -a` snapshot, rename, run, curl loop, rm old.
# Reports per-tenant downtime (median, max), total wall time, and slipway's own overhead
# (downtime minus docker stop/create/start and the app's time to healthy).
# Needs the test environment (scripts/testenv.sh up) for the registry and fixtures.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${BENCH_TENANTS:-10}
DATA_MB=${BENCH_DATA_MB:-100}
[ -f .testenv/env ] || scripts/testenv.sh up >&2
# shellcheck disable=SC1091
. .testenv/env
cargo build --release -q
SLIPWAY=$PWD/target/release/slipway
V1=$SWTEST_FIXTURE_V1
V2=$SWTEST_FIXTURE_V2
work=$(mktemp -d /tmp/slipway-bench-rollout.XXXXXX)
net=swbench-$$
mkdir -p bench/out
cleanup() {
  docker ps -aq --filter "label=swbench=$$" | xargs -r docker rm -f >/dev/null 2>&1 || true
  docker network rm "$net" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
docker network create "$net" >/dev/null

make_data() { # dir
  mkdir -p "$1/db" "$1/blobs"
  head -c $((DATA_MB / 2 * 1024 * 1024)) /dev/urandom > "$1/blobs/random.bin"
  python3 -c "import sys; line=b'tenant row: customer data that compresses well, 0123456789\n'; n=int(sys.argv[1]); sys.stdout.buffer.write((line*(n//len(line)+1))[:n])" $((DATA_MB / 2 * 1024 * 1024)) > "$1/db/rows.txt"
}

run_tenant() { # name datadir image
  docker run -d --name "$1" --network "$net" --network-alias "${1}-alias" -l swbench=$$ -l "bench.set=${1%%-*}" \
    -l "traefik.http.routers.$1.rule=Host(\`$1.example\`)" -e "TENANT=$1" -v "$2:/data" \
    --restart unless-stopped "$3" >/dev/null
}

echo "setting up $N tenants x $DATA_MB MB for each tool..." >&2
for i in $(seq 1 "$N"); do
  for set in sl sh; do
    make_data "$work/data/$set-t$i"
    run_tenant "$set-t$i" "$work/data/$set-t$i" "$V1"
  done
done

# --- slipway -----------------------------------------------------------------------------
git init -q --bare "$work/fleet.git"
git clone -q "$work/fleet.git" "$work/fleet" 2>/dev/null
cat > "$work/fleet/fleet.toml" <<TOML
[[app]]
name = "bench"
image = "$V2"
select = "bench.set=sl"
tenant_from = "name:sl-{tenant}"
data_dir = "$work/data/sl-{tenant}"
health = { path = "/api/health", port = 8080, timeout_s = 60 }
stop_timeout_s = 30
TOML
git -C "$work/fleet" add fleet.toml
git -C "$work/fleet" -c user.name=bench -c user.email=bench@localhost commit -qm "pin v2"
git -C "$work/fleet" push -q origin HEAD:main
cat > "$work/config.toml" <<TOML
state_dir = "$work/state"
backup_root = "$work/backups"
[desired]
repo = "$work/fleet.git"
TOML
chmod 600 "$work/config.toml"
docker pull -q "$V2" >/dev/null
t0=$(date +%s%N)
"$SLIPWAY" --config "$work/config.toml" rollout --json > "$work/slipway.json"
sl_total_ms=$(( ($(date +%s%N) - t0) / 1000000 ))

# --- shell, the runbook's steps --------------------------------------------------------------
: > "$work/shell.txt"
t0=$(date +%s%N)
run_id=$(date -u +%Y%m%dT%H%M%SZ)
for i in $(seq 1 "$N"); do
  name=sh-t$i
  ts=$(date +%s%N)
  docker stop -t 30 "$name" >/dev/null
  mkdir -p "$work/shell-backups/$run_id"
  cp -a "$work/data/$name" "$work/shell-backups/$run_id/$name"
  docker rename "$name" "$name.pre-rollout-$run_id"
  run_tenant "$name" "$work/data/$name" "$V2"
  ip=$(docker inspect -f "{{(index .NetworkSettings.Networks \"$net\").IPAddress}}" "$name")
  until curl -fsS -m 2 "http://$ip:8080/api/health" >/dev/null 2>&1; do sleep 0.1; done
  echo $(( ($(date +%s%N) - ts) / 1000000 )) >> "$work/shell.txt"
  docker rm "$name.pre-rollout-$run_id" >/dev/null
done
sh_total_ms=$(( ($(date +%s%N) - t0) / 1000000 ))

python3 - "$work/slipway.json" "$work/shell.txt" "$sl_total_ms" "$sh_total_ms" "$N" "$DATA_MB" <<'PY' | tee bench/out/rollout.md
import json, statistics, sys
rep = json.load(open(sys.argv[1]))
tenants = rep["report"]["apps"][0]["tenants"]
assert all(t["outcome"] == "rolled" for t in tenants), tenants
sl = [t["downtime_ms"] for t in tenants]
sh = [int(x) for x in open(sys.argv[2]).read().split()]
over = []
for t in tenants:
    g = t["timings"]
    over.append(t["downtime_ms"] - g["stop_ms"] - g["create_ms"] - g["start_ms"] - g["health_ms"])
snap = [t["timings"]["snapshot_ms"] for t in tenants]
n, mb = sys.argv[5], sys.argv[6]
print(f"Rollout of {n} tenants x {mb} MB, fixture v1 -> v2, same host, same run\n")
print("| | slipway | shell (runbook steps, cp -a) | ratio slipway/shell |")
print("|---|---:|---:|---:|")
med = lambda xs: statistics.median(xs)
print(f"| downtime per tenant, median | {med(sl):.0f} ms | {med(sh):.0f} ms | {med(sl)/med(sh):.2f} |")
print(f"| downtime per tenant, max | {max(sl)} ms | {max(sh)} ms | {max(sl)/max(sh):.2f} |")
print(f"| total wall time | {int(sys.argv[3])/1000:.1f} s | {int(sys.argv[4])/1000:.1f} s | {int(sys.argv[3])/int(sys.argv[4]):.2f} |")
print(f"\nslipway's own overhead per tenant (downtime - docker stop/create/start - app time to healthy): "
      f"median {med(over):.0f} ms, max {max(over)} ms (target < 300 ms); of which snapshot (tar+zstd+sha256 of {mb} MB): "
      f"median {med(snap):.0f} ms")
PY
