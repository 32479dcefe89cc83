#!/usr/bin/env bash
# Many-files benchmark (issue 12 item 15: memory flat with file count). A tenant tree of
# BENCH_FILES small files (default 1 000 000; 1 000 per dir, 64-512 bytes each). In the same
# run, on the same tree: slipway's archive engine (the code `slipway snapshot`, `verify --deep`
# and `restore` call, via jobs/examples/archive_bench) next to `tar -cf - | zstd -T0 -3` and
# `zstd -dc | tar -x`. Reports time and peak RSS (GNU time) in bench/out/files.md.
# Target: peak RSS <= 128 MiB for snapshot and verify at 1 000 000 files.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${BENCH_FILES:-1000000}
for t in zstd /usr/bin/time; do
  command -v "$t" >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq zstd time >/dev/null; break; }
done
cargo build --release -q --example archive_bench -p slipway-jobs
AB=$PWD/target/release/examples/archive_bench
mkdir -p bench/out
work=$(mktemp -d /var/tmp/slipway-bench-files.XXXXXX)
trap 'rm -rf "$work"' EXIT
echo "generating $N files in $work/src ..." >&2
python3 - "$work/src" "$N" <<'PY'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
rnd = random.Random(7)
for i in range(n):
    d = os.path.join(root, f"d{i // 1000:04d}")
    if i % 1000 == 0:
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"record-{i:07d}.json"), "wb") as f:
        f.write((f'{{"id":{i},"v":"' + "x" * rnd.randint(40, 480) + '"}\n').encode())
PY
sync
total=$(du -sb "$work/src" | cut -f1)
measure() { # name, command...: prints "seconds maxrss_kb"
  local name=$1; shift
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  /usr/bin/time -f "%e %M" -o "$work/$name.time" "$@" > "$work/$name.out" 2>"$work/$name.err" || { cat "$work/$name.err" >&2; exit 1; }
  cat "$work/$name.time"
}
row() { # label seconds rss_kb
  python3 -c "import sys; l,s,r=sys.argv[1],float(sys.argv[2]),int(sys.argv[3]); print(f'| {l} | {s:.1f} s | {$N/s:,.0f} files/s | {r/1024:.0f} MiB |')" "$@"
}
echo "snapshot ..." >&2
read -r s_sec s_rss < <(measure create "$AB" create "$work/src" "$work/sl/t1.tar.zst")
s_sha=$(cut -d' ' -f1 "$work/create.out")
read -r t_sec t_rss < <(measure tar sh -c "tar -C '$work/src' -cf - . | zstd -T0 -3 -q -o '$work/pipe.tar.zst'")
echo "verify --deep ..." >&2
read -r v_sec v_rss < <(measure verify "$AB" verify "$work/sl/t1.tar.zst" "$s_sha")
echo "unchanged check ..." >&2
read -r u_sec u_rss < <(measure resnap "$AB" resnapshot "$work/src" "$work/sl/t1.tar.zst" "$work/sl2/t1.tar.zst")
grep -q reused "$work/resnap.out" || { echo "unchanged tree was not reused" >&2; exit 1; }
echo "restore ..." >&2
read -r r_sec r_rss < <(measure restore "$AB" restore "$work/sl/t1.tar.zst" "$s_sha" "$work/restore-sl")
read -r tr_sec tr_rss < <(measure untar sh -c "mkdir -p '$work/restore-tar' && zstd -dc '$work/pipe.tar.zst' | tar -x -C '$work/restore-tar' && sync")
{
  echo "Many-files benchmark: $N files, $((total / 1000000)) MB, $(nproc) cores, same run"
  echo
  echo "| operation | time | rate | peak RSS |"
  echo "|---|---:|---:|---:|"
  row "slipway snapshot (archive + sha256 + file list)" "$s_sec" "$s_rss"
  row "tar -cf - \| zstd -T0 -3" "$t_sec" "$t_rss"
  row "slipway verify --deep (extract, re-hash, compare list)" "$v_sec" "$v_rss"
  row "slipway unchanged check (walk vs list) + reuse" "$u_sec" "$u_rss"
  row "slipway restore (checked, swapped in, synced)" "$r_sec" "$r_rss"
  row "zstd -dc \| tar -x && sync" "$tr_sec" "$tr_rss"
  echo
  python3 -c "print(f'snapshot time ratio slipway/tar+zstd: {$s_sec/$t_sec:.2f}; peak RSS: snapshot {$s_rss/1024:.0f} MiB, verify {$v_rss/1024:.0f} MiB (target <= 128 MiB)')"
} | tee bench/out/files.md
