#!/usr/bin/env bash
# scripts/fuzz.sh [SECONDS] — `make fuzz`: build the fuzz targets in fuzz/ (issue #24) and run
# each for SECONDS (default 15), starting from the seeds fuzz/make_seeds.py writes into
# fuzz/seeds/<target>/ (git-ignored) and the corpus
# earlier runs grew in fuzz/corpus/<target>/ (git-ignored).
#
#   archive_extract  a .tar.zst from the remote or a damaged disk, extracted with every check
#   file_list        an archive's per-file list (.files.json.zst), read whole and as a stream
#   manifest         a snapshot's MANIFEST.json, as sync, prune, verify and restore read it
#
# Fails when a target panics or breaks one of its assertions, naming the input that did it
# (fuzz/artifacts/<target>/crash-…); `cargo fuzz run <target> <that file>` replays it.
#
# cargo-fuzz (pinned) is installed when missing. libFuzzer needs a nightly compiler: a nightly
# toolchain is used when rustup has one, else the stable one with RUSTC_BOOTSTRAP=1 (CI has only
# stable). The fuzz crate is a workspace of its own with its own lock file and target dir
# (fuzz/target, or $FUZZ_TARGET_DIR): the main workspace's builds never see it.
#
# Environment: FUZZ_TOOLCHAIN (nightly or stable, to choose), FUZZ_TARGETS (names, space-separated; default all), FUZZ_SANITIZER (default none:
# the code the targets reach has no unsafe (slipway's one unsafe call, the SQLite copier's unshare, is not among it), and the C of zstd is not instrumented either way; `address` builds
# and runs about twice as slow), FUZZ_TARGET_DIR, SLIPWAY_FUZZ_TMP (the targets' scratch dirs;
# default /dev/shm).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
secs=${1:-15}
[[ $secs =~ ^[0-9]+$ ]] || { echo "usage: scripts/fuzz.sh [SECONDS]" >&2; exit 2; }
CARGO_FUZZ_VERSION=0.13.2
targets=(${FUZZ_TARGETS:-archive_extract file_list manifest})
sanitizer=${FUZZ_SANITIZER:-none}
target_dir=${FUZZ_TARGET_DIR:-$root/fuzz/target}
# The main workspace's target dir is not the fuzz crate's.
unset CARGO_TARGET_DIR

if [[ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]]; then
  echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --quiet
fi

toolchain=${FUZZ_TOOLCHAIN:-}
if [[ -z $toolchain ]]; then
  toolchain=stable
  if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then toolchain=nightly; fi
fi
if [[ $toolchain == nightly ]]; then
  fuzz=(cargo +nightly fuzz)
  echo "fuzz: with the nightly toolchain"
else
  export RUSTC_BOOTSTRAP=1
  fuzz=(cargo fuzz)
  echo "fuzz: with the stable toolchain (RUSTC_BOOTSTRAP=1)"
fi
# 16 codegen units (cargo fuzz's default is 1): the build takes about half as long on two cores.
opts=(--sanitizer "$sanitizer" --codegen-units 16 --target-dir "$target_dir")

# The seeds (small archives, file lists, manifests) are generated, never committed.
command -v zstd >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq zstd >/dev/null; }
python3 "$root/fuzz/make_seeds.py"

mkdir -p "$root/target"
log=$root/target/fuzz-build.log
: >"$log"
echo "fuzz: building ${targets[*]} (log: target/fuzz-build.log)"
start=$(date +%s)
for t in "${targets[@]}"; do
  "${fuzz[@]}" build "${opts[@]}" "$t" >>"$log" 2>&1 || {
    tail -n 30 "$log"
    echo "fuzz: the build of $t failed; the whole log is target/fuzz-build.log"
    exit 1
  }
done
echo "fuzz: built in $(($(date +%s) - start)) s"

failed=()
for t in "${targets[@]}"; do
  corpus=$root/fuzz/corpus/$t
  mkdir -p "$corpus"
  start=$(date +%s)
  out=$root/target/fuzz-$t.log
  # New inputs go to the first dir (the corpus); the seeds are only read.
  if "${fuzz[@]}" run "${opts[@]}" "$t" "$corpus" "$root/fuzz/seeds/$t" -- \
    -max_total_time="$secs" -timeout=20 -rss_limit_mb=4096 -print_final_stats=1 >"$out" 2>&1; then
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out" | tail -n 1)
    echo "fuzz: $t: ${execs:-?} inputs in $(($(date +%s) - start)) s, no crash (corpus: fuzz/corpus/$t)"
  else
    # The panic (libFuzzer also prints the whole input as a byte list: that stays in the log).
    grep -m 1 -A 4 'panicked at' "$out" || tail -n 20 "$out" | cut -c 1-300
    echo "fuzz: $t FAILED (log: target/fuzz-$t.log): the input is $(grep -o "$root/fuzz/artifacts/$t/[^ ]*" "$out" | tail -n 1 || echo "named in target/fuzz-$t.log")"
    failed+=("$t")
  fi
done
if ((${#failed[@]})); then
  echo "fuzz: failed: ${failed[*]}"
  exit 1
fi
