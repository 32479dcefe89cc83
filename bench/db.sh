#!/usr/bin/env bash
# Database dump throughput (issue #27). One Postgres (the pg fixture) with a BENCH_DB_MIB
# (default 1024) MiB database `app` (one table of random-ish text rows), and its tenant, in one
# run on one host:
#   script   the operator's script: docker exec pg_dump -Fc > file && sha256sum file
#   slipway  slipway snapshot of that tenant with [app.database] (the dump in the container
#            through the exec API, streamed, hashed and fsynced; plus the tenant's small files)
# Each twice, alternating; reports the database size, each run's seconds and MiB/s (of the
# database size) in bench/out/db.md. Needs the test environment (scripts/testenv.sh up).
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
net=swbench-db-$$
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
cat > "$work/fleet/fleet.toml" <<TOML
[[app]]
name = "bench"
image = "$SWTEST_FIXTURE_V1"
select = "swbench=$$"
tenant_from = "name:pgb-{tenant}-$$"
data_dir = "$work/data/{tenant}"
health = { path = "/api/health", port = 8080 }
[app.database]
kind = "postgres"
container = "pgb-db-{tenant}-$$"
databases = ["app"]
user = "postgres"
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

secs() { python3 -c "import sys; print(f'{float(sys.argv[1]):.2f}')" "$1"; }
results=()
for round in 1 2; do
  sync
  t0=$(date +%s.%N)
  docker exec "$pg" pg_dump -Fc -U postgres -d app >"$work/script.dump" && sha256sum "$work/script.dump" >/dev/null
  sync -f "$work/script.dump"
  t1=$(date +%s.%N)
  results+=("script $round $(python3 -c "print($t1 - $t0)") $(stat -c %s "$work/script.dump")")
  rm -f "$work/script.dump"
  sync
  t0=$(date +%s.%N)
  "$SLIPWAY" --config "$work/host.toml" snapshot --force --json >"$work/slipway.json"
  t1=$(date +%s.%N)
  dump=$(python3 -c "import json,sys; r=json.load(open(sys.argv[1]))['report']['archives'][0]; print(r['database']['dumps'][1]['size'])" "$work/slipway.json")
  results+=("slipway $round $(python3 -c "print($t1 - $t0)") $dump")
done
{
  echo "# Database dump throughput ($(date -u +%Y-%m-%d), $(nproc) cores)"
  echo
  echo "Database \`app\`: $((size / 1048576)) MiB (pg_database_size). MiB/s of that size."
  echo
  echo "| run | round | seconds | dump bytes | MiB/s |"
  echo "|---|---|---|---|---|"
  for r in "${results[@]}"; do
    set -- $r
    echo "| $1 | $2 | $(secs "$3") | $4 | $(python3 -c "print(f'{$size / 1048576 / $3:.1f}')") |"
  done
} | tee bench/out/db.md
