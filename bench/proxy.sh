#!/usr/bin/env bash
# Downtime as customers see it, through the real Traefik (issue #29). In one run on one host,
# N tenants (default 5) per set, fixture v1 -> v2, a client sending RPS (default 50) requests a
# second to every tenant's host through the testenv's Traefik (Docker provider, the primary
# runbook's router labels) for the whole of each rollout:
#   plain  slipway rollout, tenants routed by the Docker provider's labels alone
#   shell  the runbook's steps with the docker CLI (stop -t 30, cp -a, rename, run, curl loop on
#          the container's address, rm), same labels, same proxy
#   hold   slipway rollout with the README's setup for a switch no request fails on: a fixed
#          address per tenant, its route in Traefik's file provider with the retry middleware
#   broken slipway rollout of a release that moved its web port (healthy at its own address,
#          unreachable through its router): caught at the canary by the proxy gate?
# Per set: failed requests per tenant switch and the proxy downtime (first -> last failed
# request) seen by the client; slipway's own watch figures beside them.
# Needs the test environment (scripts/testenv.sh up): registry, fixtures, Traefik.
# SLIPWAY_BIN=path uses that binary instead of building a release one.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${BENCH_TENANTS:-5}
RPS=${BENCH_RPS:-50}
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
MOVED=$SWTEST_FIXTURE_MOVED
work=$(mktemp -d /tmp/slipway-bench-proxy.XXXXXX)
net=swbench-proxy-$$
dyn=$SWTEST_TRAEFIK_DYNAMIC/bench-$$.yml
mkdir -p bench/out
cleanup() {
  rm -f "$dyn"
  docker ps -aq --filter "label=swbench=$$" | xargs -r docker rm -f >/dev/null 2>&1 || true
  docker network rm "$net" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
# A subnet of its own: the hold set's tenants keep fixed addresses in its lower half, the
# engine gives the others addresses from the upper half (--ip-range).
prefix=
for n in $(shuf -i 2-250 -n 40); do
  if docker network create --label "swbench=$$" --subnet "10.214.$n.0/24" --ip-range "10.214.$n.128/25" "$net" >/dev/null 2>&1; then
    prefix=10.214.$n; break
  fi
done
[ -n "$prefix" ] || { echo "no free 10.214.x.0/24 subnet" >&2; exit 1; }

host_of() { echo "${1#*-}.${1%%-*}.b$$.example"; } # sl-t1 -> t1.sl.b<pid>.example
run_tenant() { # name image [docker run options...]
  local name=$1 image=$2; shift 2
  docker run -d --name "$name" --network "$net" -l swbench=$$ -l "bench.set=${name%%-*}" \
    -e "TENANT=$name" -v "$work/data/$name:/data" --restart unless-stopped "$@" "$image" >/dev/null
}
labels() { # name: the primary runbook's router labels, routed by this testenv's Traefik
  echo -l "$SWTEST_TRAEFIK_LABEL" -l traefik.enable=true \
    -l "traefik.http.routers.$1.rule=Host(\`$(host_of "$1")\`)" -l "traefik.http.routers.$1.entrypoints=web" \
    -l "traefik.http.routers.$1.service=$1" -l "traefik.http.services.$1.loadbalancer.server.port=8080" \
    -l "traefik.docker.network=$net"
}

echo "setting up $N tenants per set (plain, shell, hold, broken)..." >&2
echo "http:" > "$work/dyn.yml"
routers="  routers:"; services="  services:"
for i in $(seq 1 "$N"); do
  for set in sl sh br hd; do
    mkdir -p "$work/data/$set-t$i/db"
    head -c 100000 /dev/urandom > "$work/data/$set-t$i/db/rows.bin"
  done
  for set in sl sh br; do
    # shellcheck disable=SC2046
    run_tenant "$set-t$i" "$V1" $(labels "$set-t$i")
  done
  ip=$prefix.$((10 + i))
  run_tenant "hd-t$i" "$V1" --ip "$ip" -e SWFIX_DRAIN=0.5 # a graceful app (README)
  routers+=$'\n'"    hd-t$i:"$'\n'"      rule: \"Host(\`$(host_of "hd-t$i")\`)\""$'\n'"      entryPoints: [web]"
  routers+=$'\n'"      service: hd-t$i"$'\n'"      middlewares: [hold-$$]"
  services+=$'\n'"    hd-t$i:"$'\n'"      loadBalancer:"$'\n'"        servers:"$'\n'"          - url: \"http://$ip:8080\""
done
{
  echo "http:"
  echo "$routers"
  echo "  middlewares:"
  echo "    hold-$$:"
  echo "      retry:"
  echo "        attempts: 30"
  echo "        initialInterval: 50ms"
  echo "$services"
} > "$dyn"

# The client: RPS requests a second per host, each on its own schedule (a slow answer does not
# delay the next), from start until the stop file appears and every host has answered again.
cat > "$work/client.py" <<'PY'
import http.client, json, os, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
entry, rps, stopfile, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
hosts = sys.argv[5:]
addr, port = entry.replace("http://", "").split(":")
res = {h: [] for h in hosts}
lock = threading.Lock()
t0 = time.monotonic()
def one(h, sent):
    try:
        c = http.client.HTTPConnection(addr, int(port), timeout=15)
        c.request("GET", "/api/version", headers={"Host": h})
        r = c.getresponse(); r.read(); ok = 200 <= r.status < 300; why = f"HTTP {r.status}"
    except Exception as e:
        ok, why = False, type(e).__name__
    with lock:
        res[h].append((sent, ok, None if ok else why))
pool = ThreadPoolExecutor(max_workers=64 * len(hosts))
tick, n, stop_at = 1.0 / rps, 0, None
open(out + ".ready", "w").close()
while True:
    now = time.monotonic() - t0
    if stop_at is None and os.path.exists(stopfile):
        stop_at = now
    if stop_at is not None:
        with lock:
            done = all(any(s >= stop_at and ok for s, ok, _ in res[h]) for h in hosts)
        if done or now > stop_at + 30:
            break
    for h in hosts:
        pool.submit(one, h, now)
    n += 1
    time.sleep(max(0.0, n * tick - (time.monotonic() - t0)))
pool.shutdown(wait=True)
json.dump(res, open(out, "w"))
PY
client() { # set out: start the client on the set's hosts, in the background
  local hosts=()
  for i in $(seq 1 "$N"); do hosts+=("$(host_of "$1-t$i")"); done
  rm -f "$work/stop-$1" "$2.ready"
  python3 "$work/client.py" "$SWTEST_TRAEFIK_URL" "$RPS" "$work/stop-$1" "$2" "${hosts[@]}" &
  client_pid=$!
  until [ -f "$2.ready" ]; do sleep 0.05; done
}
wait_routed() { # set version: every host of the set answers that version through Traefik
  for i in $(seq 1 "$N"); do
    for _ in $(seq 1 200); do
      [ "$(curl -s -m 2 -H "Host: $(host_of "$1-t$i")" "$SWTEST_TRAEFIK_URL/api/version")" = "$2" ] && continue 2
      sleep 0.1
    done
    echo "$1-t$i is not routed to $2 through Traefik" >&2; exit 1
  done
}
for set in sl sh hd br; do wait_routed "$set" v1; done

# --- slipway ---------------------------------------------------------------------------------
git init -q --bare "$work/fleet.git"
git clone -q "$work/fleet.git" "$work/fleet" 2>/dev/null
app() { # name set image [extra]
  cat <<TOML
[[app]]
name = "$1"
image = "$3"
select = "bench.set=$2"
tenant_from = "name:$2-{tenant}"
data_dir = "$work/data/$2-{tenant}"
health = { path = "/api/health", port = 8080, timeout_s = 60 }
stop_timeout_s = 30
[app.proxy]
entrypoint = "$SWTEST_TRAEFIK_URL"
host = "{tenant}.$2.b$$.example"
path = "/api/version"
timeout_s = 10
${4:-}
TOML
}
{ app plain sl "$V2"; app hold hd "$V2"; app broken br "$MOVED"; } > "$work/fleet/fleet.toml"
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
docker pull -q "$MOVED" >/dev/null
for pair in plain:sl hold:hd; do
  name=${pair%%:*}; set=${pair#*:}
  echo "slipway rollout of the $name set, the client at $RPS req/s per tenant..." >&2
  client "$set" "$work/client-$set.json"
  "$SLIPWAY" --config "$work/config.toml" rollout --app "$name" --json > "$work/slipway-$set.json"
  touch "$work/stop-$set"; wait "$client_pid"
done
echo "slipway rollout of a release that moved its web port..." >&2
for i in $(seq 1 "$N"); do docker inspect -f '{{.Id}}' "br-t$i"; done > "$work/broken-before.txt"
client br "$work/client-br.json"
rc=0; "$SLIPWAY" --config "$work/config.toml" rollout --app broken --json > "$work/slipway-br.json" || rc=$?
touch "$work/stop-br"; wait "$client_pid"
for i in $(seq 1 "$N"); do docker inspect -f '{{.Id}}' "br-t$i"; done > "$work/broken-after.txt"

# --- shell, the runbook's steps --------------------------------------------------------------
echo "the runbook's shell steps on the shell set..." >&2
client sh "$work/client-sh.json"
run_id=$(date -u +%Y%m%dT%H%M%SZ)
for i in $(seq 1 "$N"); do
  name=sh-t$i
  docker stop -t 30 "$name" >/dev/null
  mkdir -p "$work/shell-backups/$run_id"
  cp -a "$work/data/$name" "$work/shell-backups/$run_id/$name"
  docker rename "$name" "$name.pre-rollout-$run_id"
  # shellcheck disable=SC2046
  run_tenant "$name" "$V2" $(labels "$name")
  ip=$(docker inspect -f "{{(index .NetworkSettings.Networks \"$net\").IPAddress}}" "$name")
  until curl -fsS -m 2 "http://$ip:8080/api/health" >/dev/null 2>&1; do sleep 0.1; done
  docker rm "$name.pre-rollout-$run_id" >/dev/null
done
touch "$work/stop-sh"; wait "$client_pid"

python3 - "$work" "$N" "$RPS" "$rc" <<'PY' | tee bench/out/proxy.md
import json, statistics, sys
work, n, rps, rc = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
def client(set_):
    res = json.load(open(f"{work}/client-{set_}.json"))
    out = []
    for h, xs in sorted(res.items()):
        fails = sorted(s for s, ok, _ in xs if not ok)
        out.append((h, len(xs), len(fails), int((fails[-1] - fails[0]) * 1000) if fails else 0))
    return out
def slipway(set_):
    return json.load(open(f"{work}/slipway-{set_}.json"))["report"]["apps"][0]["tenants"]
med = statistics.median
rows = {s: client(s) for s in ("sl", "sh", "hd", "br")}
for s in ("sl", "hd"):
    assert all(t["outcome"] == "rolled" for t in slipway(s)), slipway(s)
print(f"Switching {n} tenants v1 -> v2 behind Traefik v3 (Docker provider, throttle 2 s), a client at "
      f"{rps} req/s per tenant through it, same host, same run\n")
print("| | failed requests per tenant switch (median, max) | proxy downtime per tenant (median, max) | container downtime (median) |")
print("|---|---:|---:|---:|")
def line(label, s, tenants=None):
    r = rows[s]
    f, d = [x[2] for x in r], [x[3] for x in r]
    cd = f"{med([t['downtime_ms'] for t in tenants]):.0f} ms" if tenants else "-"
    print(f"| {label} | {med(f):.0f}, {max(f)} | {med(d):.0f} ms, {max(d)} ms | {cd} |")
line("slipway with the held route (fixed address, file-provider route, retry middleware)", "hd", slipway("hd"))
line("slipway, Docker provider labels alone", "sl", slipway("sl"))
line("shell runbook, Docker provider labels alone", "sh")
ratio = med([x[3] for x in rows["sl"]]) / max(1, med([x[3] for x in rows["sh"]]))
print(f"\nproxy downtime, slipway without the held route / shell runbook (medians): {ratio:.2f} (goal <= 1.0)")
own = {s: [t.get("proxy") or {} for t in slipway(s)] for s in ("sl", "hd")}
print(f"slipway's own watch (50 req/s through the proxy) saw: held route {sum(p.get('failed', 0) for p in own['hd'])} "
      f"failed requests in all, labels alone median {med([p.get('failed', 0) for p in own['sl']]):.0f} failed and "
      f"{med([p.get('downtime_ms', 0) for p in own['sl']]):.0f} ms proxy downtime per tenant; the proxy routed each "
      f"new container {med([p.get('route_ms') or 0 for p in own['sl']]):.0f} ms (median) after it was healthy")
br = slipway("br")
before, after = open(f"{work}/broken-before.txt").read().split(), open(f"{work}/broken-after.txt").read().split()
touched = sum(1 for a, b in zip(before[1:], after[1:]) if a != b)
canary = br[0]
print(f"\nA release that moved its web port (healthy at its own address): exit code {rc}, canary "
      f"{canary['outcome']}, {touched} further tenant(s) touched, the canary's customers saw "
      f"{rows['br'][0][2]} failed requests over {rows['br'][0][3]} ms (gate deadline 10 s, then the undo)")
PY
