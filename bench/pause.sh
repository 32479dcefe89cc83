#!/usr/bin/env bash
# Daily-snapshot pause benchmark (issue 13, item 5). Two tenants with the same BENCH_PAUSE_MB
# (default 1024) MB tree (a third compressible text, a third random bytes, a third in 20 000
# small files: bench/archive.sh's tree), each snapshotted on day 1; then 1% of the files of
# both are rewritten and both are snapshotted again, in the same run:
#   staged: `[snapshot] staging = true` (the default): paused for the last delta of its
#           staging copy, archived from the copy while it runs
#   old:    `[snapshot] staging = false`: paused while its archive is written (before issue 13)
# Reports the day-2 pause per tenant (`pause_ms` of `slipway snapshot --json`: docker pause to
# unpause, as the tenant sees it) in bench/out/pause.md. Page cache dropped before each snapshot.
# Needs the test environment (scripts/testenv.sh up) for the fixture image.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x /usr/bin/time ] || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null; }
MB=${BENCH_PAUSE_MB:-1024}
[ -f .testenv/env ] || scripts/testenv.sh up >&2
# shellcheck disable=SC1091
. .testenv/env
# BENCH_SLIPWAY=PATH measures that binary instead of a fresh release build.
if [ -z "${BENCH_SLIPWAY:-}" ]; then cargo build --release -q --workspace --bins --examples; fi
SLIPWAY=${BENCH_SLIPWAY:-${CARGO_TARGET_DIR:-$PWD/target}/release/slipway}
work=$(mktemp -d /var/tmp/slipway-bench-pause.XXXXXX)
net=swbench-pause-$$
mkdir -p bench/out
cleanup() {
  docker ps -aq --filter "label=swbench=$$" | xargs -r docker rm -f >/dev/null 2>&1 || true
  docker network rm "$net" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
docker network create "$net" >/dev/null

echo "generating a ${MB} MB tree ..." >&2
mkdir -p "$work/data/staged/text" "$work/data/staged/blobs" "$work/data/staged/small"
sed -n '/^python3 - "\$work\/src" "\$third" <<.PY.$/,/^PY$/p' bench/archive.sh | sed '1d;$d' > "$work/gen.py"
python3 "$work/gen.py" "$work/data/staged" $((MB * 1024 * 1024 / 3))
cp -a "$work/data/staged" "$work/data/old"
for t in staged old; do
  docker run -d --name "pz-$t-$$" --network "$net" -l swbench=$$ -e "TENANT=$t" -v "$work/data/$t:/data" \
    "$SWTEST_FIXTURE_V1" >/dev/null
done

git init -q --bare "$work/fleet.git"
git clone -q "$work/fleet.git" "$work/fleet" 2>/dev/null
cat > "$work/fleet/fleet.toml" <<TOML
[[app]]
name = "bench"
image = "$SWTEST_FIXTURE_V1"
select = "swbench=$$"
tenant_from = "name:pz-{tenant}-$$"
data_dir = "$work/data/{tenant}"
health = { path = "/api/health", port = 8080 }
quiesce = "pause"
TOML
git -C "$work/fleet" add fleet.toml
git -C "$work/fleet" -c user.name=bench -c user.email=bench@localhost commit -qm "bench"
git -C "$work/fleet" push -q origin HEAD:main
for t in staged old; do
  staging=true; [ "$t" = old ] && staging=false
  cat > "$work/$t.toml" <<TOML
state_dir = "$work/state-$t"
backup_root = "$work/backups-$t"
[desired]
repo = "$work/fleet.git"
[snapshot]
staging = $staging
TOML
  chmod 600 "$work/$t.toml"
done

snap() { # tenant day-label
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  /usr/bin/time -f "%M" -o "$work/$1-$2.rss" "$SLIPWAY" --config "$work/$1.toml" snapshot --tenant "$1" --json > "$work/$1-$2.json"
}
echo "day 1: first snapshots ..." >&2
for t in staged old; do
  snap "$t" day1
  today=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['report']['day'])" "$work/$t-day1.json")
  mv "$work/backups-$t/daily/$today" "$work/backups-$t/daily/2000-01-01"
done
echo "rewriting 1% of the files of both trees ..." >&2
python3 - "$work/data/staged" "$work/data/old" <<'PY'
import os, sys
files = sorted(os.path.relpath(os.path.join(d, f), sys.argv[1])
               for d, _, fs in os.walk(sys.argv[1]) for f in fs)
# Every 100th file in sorted order, from the 50th: 200 of the small files (the 64 MiB blobs sort
# first, the text log last). A changed file is copied whole, so a changed large file would
# add its own copy time to the pause.
changed = files[50::100]
for root in sys.argv[1:]:
    for rel in changed:
        p = os.path.join(root, rel)
        size = os.path.getsize(p)
        # New bytes, same size, in place (as a database page write would).
        with open(p, "r+b") as f:
            data = os.urandom(min(size, 4096))
            f.write(data)
print(f"{len(changed)} of {len(files)} files rewritten", file=sys.stderr)
PY
echo "day 2: snapshots of the changed trees ..." >&2
for t in staged old; do snap "$t" day2; done

python3 - "$work" "$MB" <<'PY' | tee bench/out/pause.md
import json, sys
work, mb = sys.argv[1], sys.argv[2]
def arch(t, day):
    r = json.load(open(f"{work}/{t}-{day}.json"))
    assert r["ok"], r
    return r["report"]["archives"][0]
s, o = arch("staged", "day2"), arch("old", "day2")
assert s["staging"] == "staged" and s["outcome"] == "archived", s
assert o["staging"] == "off" and o["outcome"] == "archived", o
d = s["delta"]
print(f"Daily snapshot pause: a {mb} MB tenant (text, random bytes, 20 000 small files), 1% of its files rewritten "
      f"since the day before, same run\n")
def rss(t, day):
    return int(open(f"{work}/{t}-{day}.rss").read().split()[-1]) / 1024
print("| | pause (tenant frozen) | snapshot total | peak RSS day 1 (full copy + archive) | peak RSS day 2 |")
print("|---|---:|---:|---:|---:|")
print(f"| staged (copy brought up to date while running, paused for the delta) | {s['pause_ms']} ms | {s['duration_ms']/1000:.1f} s | {rss('staged','day1'):.0f} MiB | {rss('staged','day2'):.0f} MiB |")
print(f"| old (paused while archived, `staging = false`) | {o['pause_ms']} ms | {o['duration_ms']/1000:.1f} s | {rss('old','day1'):.0f} MiB | {rss('old','day2'):.0f} MiB |")
print(f"\nPause staged / old: {s['pause_ms']/max(o['pause_ms'],1):.3f} (target: staged < 500 ms). The paused pass "
      f"copied {d['files_copied']} files ({d['bytes_copied']/1e6:.1f} MB, {d['method']}), {d['unchanged']} unchanged; "
      f"day 1 (first copy while running): staged pause {arch('staged','day1')['pause_ms']} ms, "
      f"old {arch('old','day1')['pause_ms']} ms.")
PY
