#!/usr/bin/env bash
# Rollout benchmark (issues: rollout performance; downtime independent of data size). In one
# run on one host:
#  1. N tenants (default 10) x DATA_MB (default 100) MB, fixture v1 -> v2, twice:
#     - slipway rollout
#     - a plain shell rollout doing the runbook's steps with the docker CLI:
#       stop -t 30, `cp -a` snapshot, rename, run, curl loop, rm old.
#     Per-tenant downtime (median, max), total wall time, and slipway's own overhead
#     (downtime minus docker stop/start and the app's time to healthy).
#  2. Downtime against data size: a SMALL_MB (10) and a BIG_MB (1024) tenant rolled
#     v1 -> v2 -> v1 -> v2 (three rollouts each; medians).
#  3. The failure path: the BIG_MB tenant rolled to a version that fails its health gate, once
#     on the pre-copy path (the copy swapped back by a rename) and once with pre_copy = false
#     (the archive extracted): the time to put the data back, and the prior's start + health.
#  4. A stack tenant (issue #26): a compose project (Debian's docker-compose) of three
#     services — app (DATA_MB in its named volume), worker (no data), side (a small named
#     volume) — rolled with a new app and a new worker digest (v1 -> v2 -> v1 -> v2):
#     - slipway rollout (every writer stopped, both volumes copied, switched, gated)
#     - the operator's script on a twin project: edit the images in the compose file, then
#       `docker-compose up -d` (the images pulled before); downtime from compose's first kill
#       of an old container (docker events) until the new app answers its health check.
#     Reported beside section 1's single-container downtime of the same run.
# Needs the test environment (scripts/testenv.sh up) for the registry and fixtures.
# SLIPWAY_BIN=path uses that binary instead of building a release one. BENCH_SKIP_SIZES=1
# skips sections 2 and 3 (the 1 GiB tenant).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${BENCH_TENANTS:-10}
DATA_MB=${BENCH_DATA_MB:-100}
SMALL_MB=${BENCH_SMALL_MB:-10}
BIG_MB=${BENCH_BIG_MB:-1024}
[ -f .testenv/env ] || scripts/testenv.sh up >&2
# shellcheck disable=SC1091
. .testenv/env
if [ -n "${SLIPWAY_BIN:-}" ]; then
  SLIPWAY=$SLIPWAY_BIN
else
  cargo build --release -q
  SLIPWAY=${CARGO_TARGET_DIR:-$PWD/target}/release/slipway
fi
V1=$SWTEST_FIXTURE_V1
V2=$SWTEST_FIXTURE_V2
BAD=$SWTEST_FIXTURE_UNHEALTHY
work=$(mktemp -d /tmp/slipway-bench-rollout.XXXXXX)
net=swbench-$$
mkdir -p bench/out
cleanup() {
  for set in sl sh; do
    [ -f "$work/stack-$set.yml" ] && docker-compose --no-ansi -p "swbstack$$$set" -f "$work/stack-$set.yml" \
      down -v -t 1 >/dev/null 2>&1
  done
  docker ps -aq --filter "label=swbench=$$" | xargs -r docker rm -f >/dev/null 2>&1 || true
  docker network rm "$net" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
docker network create "$net" >/dev/null

make_data() { # dir [MB]
  local mb=${2:-$DATA_MB}
  mkdir -p "$1/db" "$1/blobs"
  head -c $((mb * 1024 * 1024 / 2)) /dev/urandom > "$1/blobs/random.bin"
  python3 -c "import sys; line=b'tenant row: customer data that compresses well, 0123456789\n'; n=int(sys.argv[1]); sys.stdout.buffer.write((line*(n//len(line)+1))[:n])" $((mb * 1024 * 1024 / 2)) > "$1/db/rows.txt"
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
echo "setting up a $SMALL_MB MB and a $BIG_MB MB tenant..." >&2
make_data "$work/data/sz-small" "$SMALL_MB"
make_data "$work/data/sz-big" "$BIG_MB"
run_tenant sz-small "$work/data/sz-small" "$V1"
run_tenant sz-big "$work/data/sz-big" "$V1"

# --- slipway -----------------------------------------------------------------------------
git init -q --bare "$work/fleet.git"
git clone -q "$work/fleet.git" "$work/fleet" 2>/dev/null
pin() { # size-app image, size-app extra keys, message
  cat > "$work/fleet/fleet.toml" <<TOML
[[app]]
name = "bench"
image = "$V2"
select = "bench.set=sl"
tenant_from = "name:sl-{tenant}"
data_dir = "$work/data/sl-{tenant}"
health = { path = "/api/health", port = 8080, timeout_s = 60 }
stop_timeout_s = 30

[[app]]
name = "size"
image = "$1"
select = "bench.set=sz"
tenant_from = "name:sz-{tenant}"
data_dir = "$work/data/sz-{tenant}"
health = { path = "/api/health", port = 8080, timeout_s = 3 }
stop_timeout_s = 30
$2
TOML
  git -C "$work/fleet" add fleet.toml
  git -C "$work/fleet" -c user.name=bench -c user.email=bench@localhost commit -qm "$3"
  git -C "$work/fleet" push -q origin HEAD:main
}
pin "$V2" "" "pin v2"
cat > "$work/config.toml" <<TOML
state_dir = "$work/state"
backup_root = "$work/backups"
[desired]
repo = "$work/fleet.git"
TOML
chmod 600 "$work/config.toml"
docker pull -q "$V2" >/dev/null
t0=$(date +%s%N)
"$SLIPWAY" --config "$work/config.toml" rollout --app bench --json > "$work/slipway.json"
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

# --- a stack tenant: slipway vs the operator's docker-compose -------------------------------
stack_yml() { # set app-image worker-image
  cat > "$work/stack-$1.yml" <<YML
version: "3.7"
services:
  app:
    image: $2
    labels: { swbench: "$$", swbench.stack: "$1" }
    volumes: [ "appdata:/data" ]
    restart: unless-stopped
    depends_on: [ side ]
  worker:
    image: $3
    labels: { swbench: "$$", swbench.stack: "$1" }
    restart: unless-stopped
  side:
    image: $V1
    labels: { swbench: "$$", swbench.stack: "$1" }
    volumes: [ "sidedata:/data" ]
    restart: unless-stopped
volumes:
  appdata: {}
  sidedata: {}
YML
}
compose() { # set args...
  local set=$1
  shift
  docker-compose --no-ansi -p "swbstack$$$set" -f "$work/stack-$set.yml" "$@"
}
pin_stack() { # image of app and worker
  cat > "$work/fleet/fleet.toml" <<TOML
[[app]]
name = "stack"
select = "swbench.stack=sl"
stop_timeout_s = 30
health = { path = "/api/health", port = 8080, timeout_s = 60, service = "app" }
[app.services.side]
image = "$V1"
writes = true
order = 1
data = ["/data"]
[app.services.app]
image = "$1"
writes = true
order = 2
data = ["/data"]
[app.services.worker]
image = "$1"
order = 3
TOML
  git -C "$work/fleet" add fleet.toml
  git -C "$work/fleet" -c user.name=bench -c user.email=bench@localhost commit -qm "stack: app and worker $1"
  git -C "$work/fleet" push -q origin HEAD:main
}
echo "setting up a three-service compose tenant ($DATA_MB MB and 1 MB named volumes) for each tool..." >&2
for set in sl sh; do
  stack_yml "$set" "$V1" "$V1"
  compose "$set" up -d >/dev/null 2>&1
  make_data "$(docker volume inspect -f '{{.Mountpoint}}' "swbstack$$${set}_appdata")"
  make_data "$(docker volume inspect -f '{{.Mountpoint}}' "swbstack$$${set}_sidedata")" 1
done
: > "$work/stack-sh.txt"
round=0
for img in "$V2" "$V1" "$V2"; do
  round=$((round + 1))
  want=$([ "$img" = "$V2" ] && echo "v2 ok" || echo "v1 ok")
  pin_stack "$img"
  "$SLIPWAY" --config "$work/config.toml" rollout --app stack --json > "$work/stack-$round.json"
  # The operator's script: the new images pulled first, then the compose file edited and up -d.
  stack_yml sh "$img" "$img"
  compose sh pull -q >/dev/null 2>&1
  old="$(docker inspect -f '{{.Id}}' "swbstack$$sh_app_1") $(docker inspect -f '{{.Id}}' "swbstack$$sh_worker_1")"
  since=$(date +%s)
  t0=$(date +%s%N)
  compose sh up -d >/dev/null 2>&1
  until ip=$(docker inspect -f "{{(index .NetworkSettings.Networks \"swbstack$$sh_default\").IPAddress}}" \
      "swbstack$$sh_app_1" 2>/dev/null) && [ -n "$ip" ] && curl -fsS -m 1 "http://$ip:8080/api/health" 2>/dev/null \
      | grep -q "$want"; do
    sleep 0.02
  done
  t1=$(date +%s%N)
  sleep 1
  filters=()
  for id in $old; do filters+=(--filter "container=$id"); done
  first_kill=$(docker events --since "$since" --until "$(date +%s)" "${filters[@]}" --filter event=kill \
    --format '{{.TimeNano}}' | sort -n | head -1)
  echo $(( (t1 - ${first_kill:-$t0}) / 1000000 )) >> "$work/stack-sh.txt"
done

# --- downtime against data size, and the failure path ----------------------------------------
python3 - "$work/slipway.json" "$work/shell.txt" "$work/stack-1.json,$work/stack-2.json,$work/stack-3.json" \
    "$work/stack-sh.txt" "$DATA_MB" <<'PY' | tee bench/out/rollout-stack.md
import json, statistics, sys
med = statistics.median
single = [t["downtime_ms"] for t in json.load(open(sys.argv[1]))["report"]["apps"][0]["tenants"]]
shell = [int(x) for x in open(sys.argv[2]).read().split()]
stack, steps = [], []
for f in sys.argv[3].split(","):
    t = json.load(open(f))["report"]["apps"][0]["tenants"][0]
    assert t["outcome"] == "rolled", t
    stack.append(t["downtime_ms"])
    steps.append(t["timings"])
compose = [int(x) for x in open(sys.argv[4]).read().split()]
print(f"Downtime of a stack tenant beside a single-container one, same run ({sys.argv[5]} MB of data each):\n")
print("| tenant | slipway | the operator's way | slipway / operator |")
print("|---|---:|---:|---:|")
print(f"| single container, median of {len(single)} | {med(single):.0f} ms | {med(shell):.0f} ms (runbook shell steps, `cp -a`) | {med(single)/med(shell):.2f} |")
print(f"| stack: app + worker + side, 2 named volumes, app and worker digests changed, median of {len(stack)} | {med(stack):.0f} ms | {med(compose):.0f} ms (`docker-compose up -d`, no copy) | {med(stack)/med(compose):.2f} |")
print(f"\nstack rollouts: slipway {stack} ms, docker-compose {compose} ms")
part = lambda k: med([g[k] for g in steps])
print(f"slipway's stack downtime, median per step: stop of the 3 containers {part('stop_ms'):.0f} ms, copy delta of "
      f"both volumes {part('copy_delta_ms'):.0f} ms, switch of 2 services {part('switch_ms'):.0f} ms, start of 3 "
      f"{part('start_ms'):.0f} ms, health gate of 3 {part('health_ms'):.0f} ms (pre-copy while running "
      f"{part('pre_copy_ms'):.0f} ms, archive after healthy {part('archive_ms'):.0f} ms)")
PY
[ "${BENCH_SKIP_SIZES:-0}" = 1 ] && exit 0
echo "rolling the $SMALL_MB MB and $BIG_MB MB tenants three times..." >&2
round=0
for img in "$V2" "$V1" "$V2"; do
  round=$((round + 1))
  [ "$round" = 1 ] || pin "$img" "" "size round $round"
  "$SLIPWAY" --config "$work/config.toml" rollout --app size --json > "$work/size-$round.json"
done
echo "failing the $BIG_MB MB tenant's health gate: pre-copy path, then archive path..." >&2
pin "$BAD" "" "pin a version that fails its health gate"
"$SLIPWAY" --config "$work/config.toml" rollout --app size --tenant big --json > "$work/fail-copy.json" || true
pin "$BAD" "pre_copy = false" "the same, archiving while down"
"$SLIPWAY" --config "$work/config.toml" rollout --app size --tenant big --json > "$work/fail-archive.json" || true

python3 - "$work/slipway.json" "$work/shell.txt" "$sl_total_ms" "$sh_total_ms" "$N" "$DATA_MB" \
  "$work/size-1.json,$work/size-2.json,$work/size-3.json" "$work/fail-copy.json" "$work/fail-archive.json" "$SMALL_MB" "$BIG_MB" <<'PY' | tee bench/out/rollout.md
import json, statistics, sys
rep = json.load(open(sys.argv[1]))
tenants = rep["report"]["apps"][0]["tenants"]
assert all(t["outcome"] == "rolled" for t in tenants), tenants
sl = [t["downtime_ms"] for t in tenants]
sh = [int(x) for x in open(sys.argv[2]).read().split()]
over, delta, switch = [], [], []
for t in tenants:
    g = t["timings"]
    over.append(t["downtime_ms"] - g["stop_ms"] - g["start_ms"] - g["health_ms"])
    delta.append(g["copy_delta_ms"] or g["snapshot_ms"])
    switch.append(g["rename_ms"] + g["switch_ms"])
n, mb = sys.argv[5], sys.argv[6]
med = lambda xs: statistics.median(xs)
method = (tenants[0].get("pre_copy") or {}).get("method", "archive while down")
print(f"Rollout of {n} tenants x {mb} MB, fixture v1 -> v2, same host, same run (copy method: {method})\n")
print("| | slipway | shell (runbook steps, cp -a) | ratio slipway/shell |")
print("|---|---:|---:|---:|")
print(f"| downtime per tenant, median | {med(sl):.0f} ms | {med(sh):.0f} ms | {med(sl)/med(sh):.2f} (target <= 0.6) |")
print(f"| downtime per tenant, max | {max(sl)} ms | {max(sh)} ms | {max(sl)/max(sh):.2f} |")
print(f"| total wall time | {int(sys.argv[3])/1000:.1f} s | {int(sys.argv[4])/1000:.1f} s | {int(sys.argv[3])/int(sys.argv[4]):.2f} |")
rest = [o - d - w for o, d, w in zip(over, delta, switch)]
print(f"\nslipway's own overhead per tenant (downtime - docker stop/start - app time to healthy): "
      f"median {med(over):.0f} ms, max {max(over)} ms (target < 50 ms); of which the copy's delta pass "
      f"median {med(delta):.0f} ms, the switch (the prior's rename aside, the staged one's rename in) "
      f"median {med(switch):.0f} ms, the rest (journal writes, engine inspects, glue) median {med(rest):.0f} ms")

rounds = [{t["tenant"]: t for t in json.load(open(f))["report"]["apps"][0]["tenants"]} for f in sys.argv[7].split(",")]
for r in rounds:
    assert all(t["outcome"] == "rolled" for t in r.values()), r
s_mb, b_mb = sys.argv[10], sys.argv[11]
def own(t):
    g = t["timings"]
    return t["downtime_ms"] - g["stop_ms"] - g["start_ms"] - g["health_ms"]
print(f"\nDowntime against data size (slipway, same run, median of {len(rounds)} rollouts each):\n")
print("| tenant | downtime | slipway's own part of it | copy delta while down | pre-copy while running | archive after healthy |")
print("|---|---:|---:|---:|---:|---:|")
down = {}
for label, key in ((f"{s_mb} MB", "small"), (f"{b_mb} MB", "big")):
    ts = [r[key] for r in rounds]
    m = lambda f: med([f(t) for t in ts])
    down[key] = m(lambda t: t["downtime_ms"])
    own_ms = m(own)
    print(f"| {label} | {down[key]:.0f} ms | {own_ms:.0f} ms | {m(lambda t: t['timings']['copy_delta_ms']):.0f} ms "
          f"| {m(lambda t: t['timings']['pre_copy_ms']):.0f} ms | {m(lambda t: t['timings']['archive_ms']):.0f} ms |")
print(f"\n{b_mb} MB / {s_mb} MB median downtime: {down['big'] / down['small']:.2f} (target <= 1.2)")

print(f"\nFailure path: the {b_mb} MB tenant's new version fails its health gate (timeout 3 s):\n")
print("| path | data put back | prior start + health | undo total |")
print("|---|---:|---:|---:|")
for label, f in (("pre-copy (the copy swapped back, one rename)", sys.argv[8]),
                 ("archive while down (pre_copy = false: extract)", sys.argv[9])):
    t = json.load(open(f))["report"]["apps"][0]["tenants"][0]
    assert t["outcome"] == "restored", t
    g = t["timings"]
    print(f"| {label} | {g['undo_restore_ms']} ms | {g['undo_prior_ms']} ms | {g['undo_ms']} ms |")
PY
