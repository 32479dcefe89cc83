#!/usr/bin/env bash
# `systemd-analyze verify` on every unit in deploy/systemd, with ExecStart pointed at a real
# executable (the units name /usr/bin/slipway, which need not exist on a build machine).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v systemd-analyze >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
stub=$tmp/slipway
printf '#!/bin/sh\nexit 0\n' > "$stub"
chmod +x "$stub"
for u in deploy/systemd/*.service deploy/systemd/*.timer; do
  sed "s|/usr/bin/slipway|$stub|" "$u" > "$tmp/$(basename "$u")"
done
cd "$tmp"
# verify exits 0 on settings it ignores; any line it prints is a problem, so fail on output.
out=$(SYSTEMD_UNIT_PATH="$tmp:" systemd-analyze verify --man=no ./*.service ./*.timer 2>&1) || { echo "$out"; exit 1; }
if [ -n "$out" ]; then echo "$out"; exit 1; fi
echo "systemd-analyze verify: $(ls ./*.service ./*.timer | wc -l) units ok"
