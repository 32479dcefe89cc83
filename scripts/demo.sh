#!/usr/bin/env bash
# make demo: slipway's main job on a throw-away local sandbox.
#  1. brings up what it needs (Docker engine, local registry, fixture images: scripts/testenv.sh)
#  2. makes a desired-state git repo and three tenants running v1, each with some data
#  3. pushes a commit pinning v2 and runs `slipway reconcile`: canary first, one at a time
#  4. pushes a commit pinning a broken image: the canary fails its health check, its data and
#     prior container come back, the rollout halts (exit code 3); reconcile does not retry it
#  5. takes the daily snapshot, damages a tenant's file, restores it byte-identical, and runs
#     a restore drill (a throw-away copy of a tenant started from its snapshot, health-checked)
#  6. shows `slipway runs` and `slipway status`
# and removes everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
started_env=0
[ -f .testenv/env ] || started_env=1
mkdir -p .demo
# The build (CPU) runs while the environment comes up (downloads, apt, pip, the registry):
# the same build as `make test`'s (dev profile, features test-crash), so make test reuses it.
echo "demo: building slipway in the background (cargo build --workspace --features test-crash; log: .demo/build.log)"
cargo build --workspace --features test-crash --locked >.demo/build.log 2>&1 &
build=$!
if ! scripts/testenv.sh up; then
  kill "$build" 2>/dev/null || true
  exit 1
fi
# shellcheck disable=SC1091
. .testenv/env
echo "demo: waiting for the build"
if ! wait "$build"; then
  tail -n 30 .demo/build.log >&2
  echo "demo: the build failed; the whole log is .demo/build.log" >&2
  [ "$started_env" = 0 ] || scripts/testenv.sh down
  exit 1
fi
SLIPWAY=${CARGO_TARGET_DIR:-$ROOT/target}/debug/slipway
demo=$(mktemp -d /tmp/slipway-demo.XXXXXX)
id=demo$$
net=$id-net
cleanup() {
  docker ps -aq --filter "label=slipway.demo=$id" | xargs -r docker rm -f >/dev/null 2>&1 || true
  docker network rm "$net" >/dev/null 2>&1 || true
  rm -rf "$demo"
  if [ "$started_env" = 1 ]; then scripts/testenv.sh down; fi
}
trap cleanup EXIT

bold "three tenants on v1, a desired-state repo"
docker network create "$net" >/dev/null
for t in t1 t2 t3; do
  mkdir -p "$demo/data/$t/db"
  seq 1 2000 | sed "s/^/$t: customer row /" > "$demo/data/$t/db/records.txt"
  docker run -d --name "$id-$t" --network "$net" --network-alias "$t" \
    -l "slipway.demo=$id" -l "traefik.http.routers.$t.rule=Host(\`$t.example.test\`)" \
    -e "TENANT=$t" -v "$demo/data/$t:/data" --restart unless-stopped "$SWTEST_FIXTURE_V1" >/dev/null
  echo "  $id-$t running $SWTEST_FIXTURE_V1"
done
git init -q --bare -b main "$demo/fleet.git"
git init -q -b main "$demo/fleet"
pin() { # image, message
  cat > "$demo/fleet/fleet.toml" <<TOML
[[app]]
name = "demo"
image = "$1"
select = "slipway.demo=$id"
tenant_from = "name:$id-{tenant}"
data_dir = "$demo/data/{tenant}"
health = { path = "/api/health", port = 8080, timeout_s = 5 }
stop_timeout_s = 10
TOML
  git -C "$demo/fleet" add fleet.toml
  git -C "$demo/fleet" -c user.name=demo -c user.email=demo@localhost commit -qm "$2"
  git -C "$demo/fleet" push -q "$demo/fleet.git" HEAD:main
  echo "  pushed: $2"
}
cat > "$demo/config.toml" <<TOML
state_dir = "$demo/state"
backup_root = "$demo/backups"

[desired]
repo = "$demo/fleet.git"
branch = "main"
TOML
chmod 600 "$demo/config.toml"
sw() { echo "\$ slipway $*"; "$SLIPWAY" --config "$demo/config.toml" "$@"; }
pin "$SWTEST_FIXTURE_V1" "pin v1"
sw config check

bold "release v2: push a commit, reconcile rolls the tenants one at a time, canary first"
pin "$SWTEST_FIXTURE_V2" "release v2"
sw rollout --dry-run
sw reconcile

bold "release a broken image: the canary fails its health check and is restored"
hash_before=$(cd "$demo/data/t1" && find . -type f -exec sha256sum {} + | sort | sha256sum)
pin "$SWTEST_FIXTURE_UNHEALTHY" "release broken"
set +e
sw reconcile
code=$?
set -e
echo "  exit code $code (3 = rollout halted and restored)"
hash_after=$(cd "$demo/data/t1" && find . -type f -exec sha256sum {} + | sort | sha256sum)
[ "$hash_before" = "$hash_after" ] && echo "  t1's data dir is byte-identical to before the broken release"
echo "  the timer fires again; the halted digest is not retried:"
sw reconcile

bold "the daily backup: snapshot, a damaged file, restore, a drill"
sw snapshot
t2_before=$(cd "$demo/data/t2" && find . -type f -exec sha256sum {} + | sort | sha256sum)
echo "corrupted by a bad migration" > "$demo/data/t2/db/records.txt"
echo "  t2's db/records.txt damaged"
sw restore --tenant t2 --latest
t2_after=$(cd "$demo/data/t2" && find . -type f -exec sha256sum {} + | sort | sha256sum)
[ "$t2_before" = "$t2_after" ] && echo "  t2's data dir is byte-identical to the snapshot, and t2 runs again"
sw drill --tenant t3

bold "the run record"
sw runs
bold "status (exit 8: the halted release needs a person)"
sw status || true
