#!/usr/bin/env bash
# Install slipway on a host without dpkg (with dpkg, install the package: `make deb`).
# Idempotent; --dry-run prints what it would do.
#   deploy/install.sh [--dry-run] [--bin PATH] [--destdir DIR] [--backup-root DIR] [--no-enable]
# It installs the same files in the same places as the Debian package: the one list is
# [package.metadata.deb] assets in Cargo.toml. The binary is target/dist/slipway (the lean one
# `make dist` writes) unless --bin names another; man pages and completions are generated from
# the binary installed. Then it runs the package's postinst (state dir and backup root, 0700)
# and, on a real host, turns the jobs on: systemd timers enabled, or /etc/cron.d/slipway
# without systemd. --destdir installs under another root (tests) and, like --no-enable,
# turns nothing on.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
dry=0
bin=""
destdir=""
backup_root=""
enable=1
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry=1 ;;
    --bin) bin=$2; shift ;;
    --destdir) destdir=$2; enable=0; shift ;;
    --backup-root) backup_root=$2; shift ;;
    --no-enable) enable=0 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
[ -n "$bin" ] || bin=$root/target/dist/slipway
[ -x "$bin" ] || { echo "install.sh: no slipway binary at $bin; run 'make dist' (or pass --bin PATH)" >&2; exit 2; }

run() { if [ $dry = 1 ]; then echo "would: $*"; else "$@"; fi; }
say() { echo "install: $*"; }
D=$destdir
TIMERS="slipway-reconcile.timer slipway-snapshot.timer slipway-sync.timer slipway-prune.timer slipway-verify.timer slipway-drill.timer"

# The assets list: one ["source", "destination", "mode"] per line of the array. A line in the
# array that is not in that form is an error, so the list can never be read half.
assets() {
  awk '/^\[package\.metadata\.deb\]$/ { m = 1; next } /^\[/ { m = 0 }
       m && /^assets = \[$/ { a = 1; next } a && /^\]$/ { a = 0 } a' "$root/Cargo.toml" |
    while IFS= read -r line; do
      [[ $line =~ ^[[:space:]]*(#|$) ]] && continue
      if [[ $line =~ ^[[:space:]]*\[\"([^\"]+)\",\ \"([^\"]+)\",\ \"([0-7]{3,4})\"\],?$ ]]; then
        echo "${BASH_REMATCH[1]} ${BASH_REMATCH[2]} ${BASH_REMATCH[3]}"
      else
        echo "install.sh: Cargo.toml [package.metadata.deb] assets: cannot read line: $line" >&2
        echo "!"
      fi
    done
}
list=$(assets)
if [ -z "$list" ] || grep -qx '!' <<<"$list"; then
  echo "install.sh: Cargo.toml's [package.metadata.deb] assets must list one [\"src\", \"dest\", \"mode\"] per line" >&2
  exit 2
fi

# Man pages and completions of the binary being installed.
gen=$(mktemp -d)
trap 'rm -rf "$gen"' EXIT
"$root/scripts/dist.sh" --docs "$bin" "$gen"

# Hosts that ran an earlier install.sh have the binary in /usr/local/bin and the units in
# /etc/systemd/system, where they would shadow /lib/systemd/system. Such a unit is removed when
# it is ours as shipped (now, or then with /usr/local/bin/slipway); one the operator edited is
# kept, with a warning.
legacy_units=()
reenable=()
for u in "$here"/systemd/*.service "$here"/systemd/*.timer; do
  old=$D/etc/systemd/system/$(basename "$u")
  [ -f "$old" ] || continue
  if cmp -s "$u" "$old" || sed 's|^ExecStart=/usr/bin/slipway |ExecStart=/usr/local/bin/slipway |' "$u" | cmp -s - "$old"; then
    legacy_units+=("$old")
  else
    echo "install.sh: warning: $old differs from what slipway ships and overrides /lib/systemd/system/$(basename "$u"); move your changes to a drop-in ($old.d/*.conf)" >&2
  fi
done
if [ ${#legacy_units[@]} -gt 0 ]; then
  say "removing the units an earlier install.sh put in /etc/systemd/system"
  if [ -z "$D" ] && [ -d /run/systemd/system ]; then
    # Their enable links point at the files removed here: disable, and enable the same timers
    # again once the new units are in place.
    for t in $TIMERS; do
      if systemctl -q is-enabled "$t" 2>/dev/null; then reenable+=("$t"); fi
    done
    # shellcheck disable=SC2086
    run systemctl disable $TIMERS >/dev/null 2>&1 || true
  fi
  run rm -f "${legacy_units[@]}"
fi
if [ -f "$D/usr/local/bin/slipway" ]; then
  say "removing the earlier $D/usr/local/bin/slipway (now /usr/bin/slipway)"
  run rm -f "$D/usr/local/bin/slipway"
fi

while read -r src dest mode; do
  case "$src" in
    target/dist/slipway) srcs=("$bin") ;;
    target/dist/*) srcs=("$gen"/${src#target/dist/}) ;;
    *) srcs=("$root"/$src) ;;
  esac
  for s in "${srcs[@]}"; do
    [ -f "$s" ] || { echo "install.sh: $src (for /$dest) does not exist" >&2; exit 1; }
    t=$D/$dest
    case "$dest" in */) t=$t$(basename "$s") ;; esac
    case "$dest" in usr/share/man/*) # compressed, as Debian policy and the package have them
      mkdir -p "$gen/gz"
      gzip -9nc "$s" >"$gen/gz/$(basename "$s").gz"
      s=$gen/gz/$(basename "$s").gz
      t=$t.gz ;;
    esac
    run install -d -m 0755 "$(dirname "$t")"
    if [ "$dest" = etc/slipway/config.toml ] && [ -e "$t" ]; then
      say "keeping the existing $t"
      continue
    fi
    if ! cmp -s "$s" "$t" 2>/dev/null || [ "$(stat -c %a "$t" 2>/dev/null)" != "${mode#0}" ]; then
      say "$(basename "$s") -> $t"
      run install -m "0$mode" "$s" "$t"
    fi
  done
done <<<"$list"

# The package's postinst: /etc/slipway, the state dir and the backup root, 0700.
if [ $dry = 1 ]; then
  echo "would: deploy/debian/postinst configure (state dir and backup root, mode 0700)"
else
  DPKG_ROOT=$D SLIPWAY_BACKUP_ROOT=${backup_root:-${SLIPWAY_BACKUP_ROOT:-}} sh "$here/debian/postinst" configure >/dev/null
fi

if [ $enable = 0 ] && [ ${#reenable[@]} -gt 0 ]; then
  run systemctl daemon-reload
  run systemctl enable "${reenable[@]}"
fi
if [ $enable = 1 ]; then
  if [ -d /run/systemd/system ]; then
    # The units may write only the dirs of this host's config: a drop-in computed from it (and
    # fleet.toml). Without a usable config yet, `slipway doctor` says to run it later.
    if "$bin" config sandbox >/dev/null 2>&1; then
      run "$bin" config sandbox --write >/dev/null
      say "wrote /etc/systemd/system/slipway-.service.d/50-write-paths.conf (the dirs the config names)"
    else
      say "no loadable config yet: once /etc/slipway/config.toml is set, run 'sudo slipway config sandbox --write'"
    fi
    run systemctl daemon-reload
    # shellcheck disable=SC2086
    run systemctl enable --now $TIMERS
  else
    run install -d -m 0755 /etc/cron.d
    run install -m 0644 "$here/cron.d/slipway" /etc/cron.d/slipway
  fi
fi
say "done"
