#!/usr/bin/env bash
# Hostile-tenant bounds (issue #24 item 3). Four trees a tenant can make, each archived by
# slipway (jobs/examples/archive_bench create: the daily snapshot's archiver) and, in the same
# run, by `tar --sparse -cf - | zstd -T0 -3` (what a backup script would run):
#   sparse:  one file of 1 TiB apparent size holding 4 MiB of data
#   flat:    one directory of HOSTILE_ENTRIES (default 10 000 000) empty files
#   deep:    a tree 10 000 levels deep
#   fifo:    a fifo beside 1 MiB of data (a reader that opens it without O_NONBLOCK waits forever)
# Reports the time, peak RSS (GNU time) and outcome of each, as a table in bench/out/hostile.md.
# slipway's bound: memory <= 128 MiB, sparse files stored sparse, and a refusal that names the
# entry instead of a stall. tar gets 600 s per tree.
set -euo pipefail
cd "$(dirname "$0")/.."
ENTRIES=${HOSTILE_ENTRIES:-10000000}
for t in zstd /usr/bin/time; do
  command -v "$t" >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq zstd time >/dev/null; break; }
done
cargo build --release -q -p slipway-jobs --examples
AB=${CARGO_TARGET_DIR:-$PWD/target}/release/examples/archive_bench
work=$(mktemp -d /var/tmp/slipway-bench-hostile.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p bench/out
echo "making the hostile trees in $work (the flat one takes a while) ..." >&2
python3 - "$work" "$ENTRIES" <<'PY'
import os, sys
work, n = sys.argv[1], int(sys.argv[2])
for t in ("sparse", "flat", "deep", "fifo"):
    os.makedirs(os.path.join(work, t))
with open(os.path.join(work, "sparse", "disk.img"), "wb") as f:
    f.truncate(1 << 40)
    for i in range(4):
        f.seek(i * (1 << 38) + 12345)
        f.write(os.urandom(1 << 20))
flat = os.path.join(work, "flat", "d")
os.mkdir(flat)
fd = os.open(flat, os.O_DIRECTORY)
for i in range(n):
    os.close(os.open(f"{i:08d}", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
os.close(fd)
fd = os.open(os.path.join(work, "deep"), os.O_DIRECTORY)
for _ in range(10000):
    os.mkdir("d", dir_fd=fd)
    nfd = os.open("d", os.O_DIRECTORY, dir_fd=fd)
    os.close(fd)
    fd = nfd
os.close(fd)
os.mkfifo(os.path.join(work, "fifo", "pipe"))
with open(os.path.join(work, "fifo", "data"), "wb") as f:
    f.write(os.urandom(1 << 20))
PY
sync
run() { # name timeout command...: prints "seconds rss_kb outcome"
  local name=$1 limit=$2; shift 2
  local rc=0
  /usr/bin/time -f "%e %M" -o "$work/$name.time" timeout "$limit" "$@" >"$work/$name.out" 2>"$work/$name.err" || rc=$?
  local outcome=ok
  if [ "$rc" = 124 ]; then outcome="stalled: killed after ${limit} s"
  elif [ "$rc" != 0 ]; then outcome="refused: $(grep -v '^Command' "$work/$name.err" | tail -n 1 | cut -c1-110)"; fi
  # GNU time writes a "Command exited" line first when the command failed.
  echo "$(tail -n 1 "$work/$name.time") $outcome"
}
rows=()
for t in sparse flat deep fifo; do
  echo "archiving $t ..." >&2
  read -r s_sec s_rss s_out < <(run "sl-$t" 600 "$AB" create "$work/$t" "$work/out/$t.tar.zst")
  s_size=$(stat -c %s "$work/out/$t.tar.zst" 2>/dev/null || echo -)
  rm -f "$work/out/$t.tar.zst"
  read -r t_sec t_rss t_out < <(run "tar-$t" 600 sh -c "tar --sparse -C '$work/$t' -cf - . | zstd -T0 -3 -q -o '$work/tar-$t.tar.zst'")
  t_size=$(stat -c %s "$work/tar-$t.tar.zst" 2>/dev/null || echo -)
  rm -f "$work/tar-$t.tar.zst"
  rows+=("| $t | slipway | $s_sec s | $((s_rss / 1024)) MiB | $s_size | $s_out |")
  rows+=("| $t | tar --sparse \| zstd -T0 -3 | $t_sec s | $((t_rss / 1024)) MiB | $t_size | $t_out |")
done
{
  echo "Hostile trees: sparse = 1 TiB apparent with 4 MiB of data; flat = $ENTRIES entries in one directory; deep = 10 000 levels; fifo = a fifo beside 1 MiB. $(nproc) cores, same run."
  echo
  echo "| tree | archiver | time | peak RSS | archive bytes | outcome |"
  echo "|---|---|---:|---:|---:|---|"
  printf '%s\n' "${rows[@]}"
} | tee bench/out/hostile.md
