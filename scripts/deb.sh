#!/usr/bin/env bash
# make deb: target/debian/slipway_<version>_amd64.deb from one release build.
#   1. cargo-deb at the pinned version (installed with `cargo install --locked` if absent)
#   2. scripts/dist.sh: the stripped binary, its debug file, man pages and completions
#   3. cargo deb --no-build: the files Cargo.toml's [package.metadata.deb] assets list, the
#      maintainer scripts of deploy/debian/, /etc/slipway/config.toml as a conffile
# Prints the binary and package sizes. scripts/check-deb.sh checks the result.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO_DEB_VERSION=3.8.0
mkdir -p target

# objcopy (dist.sh strips the binary) and dpkg-shlibdeps (cargo-deb's $auto Depends).
missing=()
command -v objcopy >/dev/null || missing+=(binutils)
command -v dpkg-shlibdeps >/dev/null || missing+=(dpkg-dev)
if [ ${#missing[@]} -gt 0 ]; then
  echo "deb: installing ${missing[*]} (Debian; log: target/apt.log)"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}"; } >target/apt.log 2>&1 ||
    { tail -n 20 target/apt.log >&2; echo "deb: apt-get install failed; the whole log is target/apt.log" >&2; exit 1; }
fi

if [ "$(cargo deb --version 2>/dev/null)" != "cargo-deb $CARGO_DEB_VERSION" ]; then
  log=target/cargo-deb-install.log
  echo "deb: installing cargo-deb $CARGO_DEB_VERSION (log: $log)"
  # Its own temp target dir: never mixed into the project's build.
  if ! env -u CARGO_TARGET_DIR cargo install --locked "cargo-deb@$CARGO_DEB_VERSION" >"$log" 2>&1; then
    tail -n 20 "$log" >&2
    echo "deb: cargo install cargo-deb@$CARGO_DEB_VERSION failed; the whole log is $log" >&2
    exit 1
  fi
fi

scripts/dist.sh

log=target/cargo-deb.log
rm -rf target/debian
echo "deb: cargo deb --no-build (log: $log)"
if ! cargo deb --no-build --no-strip --output target/debian/ >"$log" 2>&1; then
  cat "$log" >&2
  echo "deb: cargo deb failed; the log is $log" >&2
  exit 1
fi
deb=$(ls target/debian/slipway_*_amd64.deb)
bin_bytes=$(stat -c %s target/dist/slipway)
deb_bytes=$(stat -c %s "$deb")
awk -v d="$deb" -v b="$bin_bytes" -v p="$deb_bytes" \
  'BEGIN { printf "deb: %s: package %.1f MB, /usr/bin/slipway %.1f MB\n", d, p / 1e6, b / 1e6 }'
