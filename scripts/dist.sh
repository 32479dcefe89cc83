#!/usr/bin/env bash
# The lean release binary and the files generated from it, in target/dist/ — the sources that
# Cargo.toml's [package.metadata.deb] assets name, read by `make deb` and deploy/install.sh:
#   target/dist/slipway          stripped, at most 30 MB, with a .gnu_debuglink to slipway.debug
#   target/dist/slipway.debug    its symbols and line tables (gdb, addr2line; not packaged)
#   target/dist/man/*.1          slipway.1 and one page per command (slipway man --dir)
#   target/dist/completions/     slipway.bash, _slipway (zsh), slipway.fish
# Usage: scripts/dist.sh                 one release build (cargo build --release), then all of it
#        scripts/dist.sh --docs BIN DIR  only the man pages and completions of BIN, into DIR
set -euo pipefail
cd "$(dirname "$0")/.."
MAX_BYTES=30000000

docs() { # bin, out
  rm -rf "$2/man" "$2/completions"
  mkdir -p "$2/man" "$2/completions"
  "$1" man --dir "$2/man"
  "$1" completions bash >"$2/completions/slipway.bash"
  "$1" completions zsh >"$2/completions/_slipway"
  "$1" completions fish >"$2/completions/slipway.fish"
}

mb() { awk -v b="$(stat -c %s "$1")" 'BEGIN { printf "%.1f MB", b / 1e6 }'; }

if [ "${1:-}" = --docs ]; then
  [ $# = 3 ] || { echo "usage: $0 --docs BIN DIR" >&2; exit 2; }
  docs "$2" "$3"
  exit 0
fi

log=target/dist.log
mkdir -p target/dist
echo "dist: cargo build --release (log: $log)"
if ! cargo build --release --locked >"$log" 2>&1; then
  tail -n 30 "$log" >&2
  echo "dist: the release build failed; the whole log is $log" >&2
  exit 1
fi
built=${CARGO_TARGET_DIR:-target}/release/slipway
out=target/dist
# The debug file keeps symbols and line tables; the shipped binary keeps neither and names the
# debug file (.gnu_debuglink) so gdb and backtraces find it when it is put beside the binary
# or under /usr/lib/debug.
objcopy --only-keep-debug --compress-debug-sections=zlib "$built" "$out/slipway.debug.tmp"
mv "$out/slipway.debug.tmp" "$out/slipway.debug"
objcopy --strip-all --add-gnu-debuglink="$out/slipway.debug" "$built" "$out/slipway.tmp"
mv "$out/slipway.tmp" "$out/slipway"
docs "$out/slipway" "$out"
size=$(stat -c %s "$out/slipway")
echo "dist: $out/slipway $(mb "$out/slipway") (built: $(mb "$built"); debug file $out/slipway.debug $(mb "$out/slipway.debug"))"
if [ "$size" -gt "$MAX_BYTES" ]; then
  echo "dist: $out/slipway is $size bytes, over the $MAX_BYTES-byte limit (issue 18); strip it further or drop a dependency" >&2
  exit 1
fi
