#!/usr/bin/env bash
# Archive benchmark (issue: backups performance). A synthetic tenant tree of BENCH_SIZE_MB
# (default 1024): one third compressible text, one third incompressible bytes, one third in
# 20 000 small files. In the same run, on the same tree:
#   slipway archive create / restore_swap / unchanged re-snapshot (jobs/examples/archive_bench)
#   tar -cf - | zstd -T0 -3  and  zstd -dc | tar -x
#   restic backup / restore (Debian's restic)
# Reports MB/s, compression ratio and peak RSS (GNU time), as a table in bench/out/archive.md.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MB=${BENCH_SIZE_MB:-1024}
for t in zstd restic /usr/bin/time; do
  command -v "$t" >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq zstd restic time >/dev/null; break; }
done
# One release build of the workspace, binary and examples: the same artifacts as bench/pause.sh.
cargo build --release -q --workspace --bins --examples
AB=${CARGO_TARGET_DIR:-$PWD/target}/release/examples/archive_bench
work=$(mktemp -d /var/tmp/slipway-bench-archive.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p bench/out "$work/src/text" "$work/src/blobs" "$work/src/small"
third=$((SIZE_MB * 1024 * 1024 / 3))
echo "generating a ${SIZE_MB} MB tree in $work/src ..." >&2
python3 - "$work/src" "$third" <<'PY'
import os, random, sys
root, third = sys.argv[1], int(sys.argv[2])
rnd = random.Random(42)
words = [ "".join(rnd.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randint(3, 10))) for _ in range(5000) ]
# compressible text: log-like lines
with open(os.path.join(root, "text", "events.log"), "w") as f:
    n = 0
    i = 0
    while n < third:
        line = f"2026-11-22T03:{i % 60:02d}:{(i * 7) % 60:02d}Z tenant=t1 event={rnd.choice(words)} user={rnd.choice(words)} value={rnd.randint(0, 99999)} msg={' '.join(rnd.choice(words) for _ in range(8))}\n"
        f.write(line); n += len(line); i += 1
# incompressible bytes, in 64 MiB files
left, k = third, 0
while left > 0:
    n = min(left, 64 << 20)
    with open(os.path.join(root, "blobs", f"blob{k}.bin"), "wb") as f:
        f.write(os.urandom(n))
    left -= n; k += 1
# 20 000 small files (half text, half random) in 200 dirs
per = max(1, third // 20000)
for j in range(20000):
    d = os.path.join(root, "small", f"d{j % 200:03d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{j:05d}"), "wb") as f:
        f.write(os.urandom(per) if j % 2 else (" ".join(rnd.choice(words) for _ in range(per // 6 + 1))).encode()[:per])
PY
sync
total=$(du -sb "$work/src" | cut -f1)
mb() { python3 -c "print(f'{$1/1e6:.0f}')"; }
measure() { # name, command...: prints "seconds maxrss_kb"
  local name=$1; shift
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  /usr/bin/time -f "%e %M" -o "$work/$name.time" "$@" > "$work/$name.out" 2>"$work/$name.err" || { cat "$work/$name.err" >&2; exit 1; }
  cat "$work/$name.time"
}
row() { # label seconds rss_kb archive_bytes
  python3 - "$@" "$total" <<'PY'
import sys
label, secs, rss, size, total = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
ratio = f"{total/int(size):.2f}" if size not in ("-", "0") else "-"
print(f"| {label} | {secs:.2f} s | {total/1e6/secs:.0f} MB/s | {ratio} | {rss/1024:.0f} MiB |")
PY
}
echo "archiving ..." >&2
read -r s_sec s_rss < <(measure slipway-create "$AB" create "$work/src" "$work/sl/day1/t1.tar.zst")
s_size=$(stat -c %s "$work/sl/day1/t1.tar.zst"); s_sha=$(cut -d' ' -f1 "$work/slipway-create.out")
read -r t_sec t_rss < <(measure tar-create sh -c "tar -C '$work/src' -cf - . | zstd -T0 -3 -q -o '$work/pipe.tar.zst'")
t_size=$(stat -c %s "$work/pipe.tar.zst")
export RESTIC_PASSWORD=bench RESTIC_REPOSITORY=$work/restic RESTIC_CACHE_DIR=$work/restic-cache
restic init -q >/dev/null
read -r r_sec r_rss < <(measure restic-backup restic backup -q "$work/src")
r_size=$(du -sb "$work/restic" | cut -f1)
echo "restoring ..." >&2
read -r sr_sec sr_rss < <(measure slipway-restore "$AB" restore "$work/sl/day1/t1.tar.zst" "$s_sha" "$work/restore-sl")
read -r tr_sec tr_rss < <(measure tar-restore sh -c "mkdir -p '$work/restore-tar' && zstd -dc '$work/pipe.tar.zst' | tar -x -C '$work/restore-tar'")
read -r ts_sec ts_rss < <(measure tar-restore-sync sh -c "mkdir -p '$work/restore-tar2' && zstd -dc '$work/pipe.tar.zst' | tar -x -C '$work/restore-tar2' && sync")
read -r rr_sec rr_rss < <(measure restic-restore restic restore -q latest --target "$work/restore-restic")
diff -r "$work/src" "$work/restore-sl" >/dev/null || { echo "slipway restore differs from the source!" >&2; exit 1; }
echo "unchanged re-snapshot ..." >&2
read -r u_sec u_rss < <(measure slipway-resnap "$AB" resnapshot "$work/src" "$work/sl/day1/t1.tar.zst" "$work/sl/day2/t1.tar.zst")
grep -q reused "$work/slipway-resnap.out" || { echo "unchanged tree was not reused" >&2; exit 1; }
read -r ru_sec ru_rss < <(measure restic-backup2 restic backup -q "$work/src")
{
  echo "Archive benchmark: $(mb "$total") MB tenant tree (text, random bytes, 20 000 small files), $(nproc) cores, same run"
  echo
  echo "| snapshot | time | throughput | ratio | peak RSS |"
  echo "|---|---:|---:|---:|---:|"
  row "slipway (tar+zstd-3 MT, sha256, file list)" "$s_sec" "$s_rss" "$s_size"
  row "tar -cf - \| zstd -T0 -3" "$t_sec" "$t_rss" "$t_size"
  row "restic 0.14 backup" "$r_sec" "$r_rss" "$r_size"
  echo
  echo "| restore | time | throughput | | peak RSS |"
  echo "|---|---:|---:|---:|---:|"
  row "slipway restore (checked, swapped in, synced)" "$sr_sec" "$sr_rss" "-"
  row "zstd -dc \| tar -x" "$tr_sec" "$tr_rss" "-"
  row "zstd -dc \| tar -x && sync (durable, like slipway)" "$ts_sec" "$ts_rss" "-"
  row "restic 0.14 restore" "$rr_sec" "$rr_rss" "-"
  echo
  python3 -c "print(f'Unchanged re-snapshot: slipway {$u_sec:.2f} s ({$s_sec/max($u_sec,0.01):.0f}x faster than its first snapshot; target 20x); restic re-backup {$ru_sec:.2f} s.')"
} | tee bench/out/archive.md
