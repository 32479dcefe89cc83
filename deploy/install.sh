#!/usr/bin/env bash
# Install slipway on a host. Idempotent; --dry-run prints what it would do.
#   deploy/install.sh [--dry-run] [--bin PATH] [--destdir DIR] [--backup-root DIR]
# --destdir installs under another root (packaging, tests); timers are then not enabled.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dry=0
bin=""
destdir=""
backup_root=/data/backups
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry=1 ;;
    --bin) bin=$2; shift ;;
    --destdir) destdir=$2; shift ;;
    --backup-root) backup_root=$2; shift ;;
    -h|--help) sed -n '2,5p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
if [ -z "$bin" ]; then
  for c in "$here/../target/release/slipway" "$(command -v slipway 2>/dev/null || true)"; do
    [ -n "$c" ] && [ -x "$c" ] && bin=$c && break
  done
fi
[ -n "$bin" ] && [ -x "$bin" ] || { echo "install.sh: no slipway binary; build it (cargo build --release) or pass --bin PATH" >&2; exit 2; }

run() { if [ $dry = 1 ]; then echo "would: $*"; else "$@"; fi; }
say() { echo "install: $*"; }

D=$destdir
run install -d -m 0755 "$D/usr/local/bin"
if ! cmp -s "$bin" "$D/usr/local/bin/slipway" 2>/dev/null; then
  say "binary -> $D/usr/local/bin/slipway"
  run install -m 0755 "$bin" "$D/usr/local/bin/slipway"
fi
for d in /etc/slipway /var/lib/slipway "$backup_root"; do
  run install -d -m 0700 "$D$d"
done
if [ ! -e "$D/etc/slipway/config.toml" ]; then
  say "example config -> $D/etc/slipway/config.toml (edit [desired] repo before the first run)"
  run install -m 0600 "$here/config.example.toml" "$D/etc/slipway/config.toml"
else
  say "keeping the existing $D/etc/slipway/config.toml"
fi
if [ -n "$D" ] || [ -d /run/systemd/system ]; then
  run install -d -m 0755 "$D/etc/systemd/system"
  for u in "$here"/systemd/*.service "$here"/systemd/*.timer; do
    run install -m 0644 "$u" "$D/etc/systemd/system/$(basename "$u")"
  done
  if [ -z "$D" ]; then
    run systemctl daemon-reload
    run systemctl enable --now slipway-reconcile.timer slipway-snapshot.timer slipway-sync.timer slipway-prune.timer slipway-verify.timer
  fi
fi
if [ -n "$D" ] || [ ! -d /run/systemd/system ]; then
  run install -d -m 0755 "$D/etc/cron.d"
  run install -m 0644 "$here/cron.d/slipway" "$D/etc/cron.d/slipway"
fi
say "done"
