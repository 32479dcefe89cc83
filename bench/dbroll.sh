#!/usr/bin/env bash
# The downtime a rollout's pre-switch database dump adds (issue #27 item 4). One Postgres (the
# pg fixture) with a BENCH_DB_MIB (default 1024) MiB database `app` and its tenant (fixture v1),
# rolled v1 -> v2 -> v1 -> v2: with [app.database] (the dump taken while the app is down, the
# db-dump step) and without it, alternating. Reports each rollout's downtime (stop begun ->
# healthy) and db_dump_ms in bench/out/dbroll.md. Needs the test environment.
# BENCH_SLIPWAY=PATH measures that binary instead of a fresh release build.
set -euo pipefail
cd "$(dirname "$0")/.."
MIB=${BENCH_DB_MIB:-1024}
[ -f .testenv/env ] || scripts/testenv.sh up >&2
# shellcheck disable=SC1091
. .testenv/env
if [ -z "${BENCH_SLIPWAY:-}" ]; then cargo build --release -q --bin slipway; fi
SLIPWAY=${BENCH_SLIPWAY:-${CARGO_TARGET_DIR:-$PWD/target}/release/slipway}
work=$(mktemp -d /var/tmp/slipway-bench-db.XXXXXX)
net=swbench-dbr-$$
mkdir -p bench/out
cleanup() {
  docker ps -aq --filter "label=swbench=$$" | xargs -r docker rm -f -v >/dev/null 2>&1 || true
  docker ps -aq --filter "label=swbench-db=$$" | xargs -r docker rm -f -v >/dev/null 2>&1 || true
  docker network rm "$net" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
docker network create "$net" >/dev/null
pg=pgb-db-b1-$$
# Its own label: the app's selector must not take the database for a tenant.
docker run -d --name "$pg" --network "$net" -l swbench-db=$$ "$SWTEST_FIXTURE_PG" >/dev/null
psql() { docker exec "$pg" psql -X -q -A -t -v ON_ERROR_STOP=1 -U postgres "$@"; }
for _ in $(seq 1 100); do psql -c 'select 1' >/dev/null 2>&1 && break; sleep 0.2; done
psql -c 'create database app' >/dev/null
echo "filling a ${MIB} MiB database ..." >&2
# Rows of 1 KiB: one md5 repeated (very compressible: the dump is about 1/40 of the database,
# so both sides measure pg_dump reading and compressing, not the bytes written).
psql -d app -c "create table t (id bigint primary key, body text not null)" >/dev/null
psql -d app -c "insert into t select g, repeat(md5(g::text), 32) from generate_series(1, $((MIB * 1024 * 9 / 10))) g" >/dev/null
psql -d app -c "vacuum analyze t" >/dev/null
size=$(psql -d app -c "select pg_database_size('app')")
mkdir -p "$work/data/b1"
echo "a tenant file" >"$work/data/b1/readme.txt"
docker run -d --name "pgb-b1-$$" --network "$net" -l swbench=$$ -v "$work/data/b1:/data" "$SWTEST_FIXTURE_V1" >/dev/null

git init -q --bare "$work/fleet.git"
git clone -q "$work/fleet.git" "$work/fleet" 2>/dev/null
fleet() { # image, with-db (1/0)
  {
    cat <<TOML
[[app]]
name = "bench"
image = "$1"
select = "swbench=$$"
tenant_from = "name:pgb-{tenant}-$$"
data_dir = "$work/data/{tenant}"
health = { path = "/api/health", port = 8080 }
TOML
    if [ "$2" = 1 ]; then
      printf '[app.database]\nkind = "postgres"\ncontainer = "pgb-db-{tenant}-%s"\ndatabases = ["app"]\nuser = "postgres"\n' "$$"
    fi
  } >"$work/fleet/fleet.toml"
  git -C "$work/fleet" add fleet.toml
  git -C "$work/fleet" -c user.name=bench -c user.email=bench@localhost commit -qm "bench $1 $2"
  git -C "$work/fleet" push -q origin HEAD:main
}
cat > "$work/host.toml" <<TOML
state_dir = "$work/state"
backup_root = "$work/backups"
[desired]
repo = "$work/fleet.git"
TOML
chmod 600 "$work/host.toml"

results=()
round=0
for img in "$SWTEST_FIXTURE_V2" "$SWTEST_FIXTURE_V1" "$SWTEST_FIXTURE_V2" "$SWTEST_FIXTURE_V1"; do
  round=$((round + 1))
  db=$((round % 2))
  fleet "$img" "$db"
  "$SLIPWAY" --config "$work/host.toml" rollout --json >"$work/r.json"
  results+=("$(python3 -c "
import json, sys
t = json.load(open(sys.argv[1]))['report']['apps'][0]['tenants'][0]
print(sys.argv[2], t['outcome'], t['downtime_ms'], t['timings'].get('db_dump_ms', 0))" "$work/r.json" "$db")")
done
# The operator's own dump of the same database, for scale: what pg_dump alone takes here now.
t0=$(date +%s.%N)
docker exec "$pg" pg_dump -Fc -U postgres -d app >"$work/script.dump" && sha256sum "$work/script.dump" >/dev/null
t1=$(date +%s.%N)
script_ms=$(python3 -c "print(int(($t1 - $t0) * 1000))")
rm -f "$work/script.dump"
{
  echo "# Rollout downtime with and without the pre-switch database dump ($(date -u +%Y-%m-%d), $(nproc) cores)"
  echo
  echo "Database \`app\`: $((size / 1048576)) MiB (pg_database_size); the tenant's files are tiny."
  echo "\`docker exec pg_dump -Fc > file && sha256sum file\` of it, in the same run: $script_ms ms."
  echo
  echo "| [app.database] | outcome | downtime ms | of which db-dump ms |"
  echo "|---|---|---|---|"
  for r in "${results[@]}"; do
    set -- $r
    echo "| $([ "$1" = 1 ] && echo yes || echo no) | $2 | $3 | $4 |"
  done
} | tee bench/out/dbroll.md
