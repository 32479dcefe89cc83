#!/usr/bin/env bash
# Checks the package `make deb` built as an operator would (issue 18); run by .ci/run.
#  1. contents and modes (dpkg-deb -c), conffiles, no unit enabled, no debug info in it
#  2. the same files in the same places as deploy/install.sh --destdir (one list, not two)
#  3. unpacked into a scratch root (dpkg -x): slipway --version / --help run, man pages and
#     bash/zsh/fish completions present, the binary stripped and at most 30 MB
#  4. lintian (Debian's, installed here if missing): no error
#  5. dpkg --root on a scratch root with the maintainer scripts run: install creates the state
#     dir and backup root 0700 and enables nothing; an upgrade while a job waits for the lock
#     keeps the job running on its binary, keeps the operator's config edits and timer choices;
#     remove and purge leave the run record and every backup byte-identical
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
debs=(target/debian/slipway_*_amd64.deb)
[ -f "${debs[0]}" ] && [ ${#debs[@]} = 1 ] || { echo "check-deb: expected one target/debian/slipway_*_amd64.deb; run make deb" >&2; exit 1; }
deb=$ROOT/${debs[0]}
MAX_BYTES=30000000
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
tmp=$(mktemp -d /tmp/slipway-check-deb.XXXXXX)
holder=""
cleanup() {
  [ -z "$holder" ] || kill "$holder" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "check-deb: FAIL: $*" >&2; exit 1; }
ok() { echo "check-deb: ok: $*"; }
TIMERS="reconcile snapshot sync prune verify drill"

# 1. contents and modes
dpkg-deb -c "$deb" | awk '{ print $1, $6 }' >"$tmp/contents"
has() { # mode path
  grep -qxF -- "$1 ./$2" "$tmp/contents" || fail "$deb has no $1 ./$2; dpkg-deb -c shows:
$(cat "$tmp/contents")"
}
! dpkg-deb -c "$deb" | awk '$2 != "root/root" && $2 != "0/0"' | grep . || fail "entries not owned by root"
has -rwxr-xr-x usr/bin/slipway
for t in $TIMERS; do
  has -rw-r--r-- "lib/systemd/system/slipway-$t.service"
  has -rw-r--r-- "lib/systemd/system/slipway-$t.timer"
done
has -rw------- etc/slipway/config.toml
for f in man/man1/slipway.1.gz man/man1/slipway-rollout.1.gz man/man1/slipway-restore.1.gz \
  bash-completion/completions/slipway zsh/vendor-completions/_slipway \
  fish/vendor_completions.d/slipway.fish doc/slipway/examples/cron.d/slipway \
  doc/slipway/examples/git/post-receive doc/slipway/README.md doc/slipway/copyright \
  doc/slipway/changelog.Debian.gz; do
  has -rw-r--r-- "usr/share/$f"
done
! grep -E '\./etc/(systemd|cron\.d)/|\./usr/lib/debug/' "$tmp/contents" || fail "the package enables a unit, installs a cron job or carries debug info"
ok "contents and modes ($(wc -l <"$tmp/contents") entries)"

dpkg-deb -e "$deb" "$tmp/control"
[ "$(cat "$tmp/control/conffiles")" = /etc/slipway/config.toml ] || fail "conffiles is not exactly /etc/slipway/config.toml: $(cat "$tmp/control/conffiles")"
ok "conffiles: /etc/slipway/config.toml"

# 3. unpacked: it runs, it is lean, it documents itself
x=$tmp/x
dpkg -x "$deb" "$x"
out=$("$x/usr/bin/slipway" --version)
[ "$out" = "slipway $version" ] || fail "slipway --version says '$out', want 'slipway $version'"
"$x/usr/bin/slipway" --help | grep -q reconcile || fail "slipway --help does not list reconcile"
bytes=$(stat -c %s "$x/usr/bin/slipway")
[ "$bytes" -le $MAX_BYTES ] || fail "/usr/bin/slipway is $bytes bytes, over $MAX_BYTES"
if readelf -S -W "$x/usr/bin/slipway" | grep -qE ' \.(debug_(info|line|str|abbrev)|symtab) '; then fail "/usr/bin/slipway is not stripped"; fi
zcat "$x/usr/share/man/man1/slipway.1.gz" | grep -q '^\.TH slipway 1' || fail "slipway.1.gz is not a man page"
zcat "$x/usr/share/man/man1/slipway-rollout.1.gz" | grep -q -- 'keep\\-old' || fail "slipway-rollout.1.gz does not document --keep-old"
bash -c ". '$x/usr/share/bash-completion/completions/slipway' && complete -p slipway" >/dev/null || fail "the bash completion does not register for slipway"
grep -q reconcile "$x/usr/share/zsh/vendor-completions/_slipway" || fail "zsh completion lacks reconcile"
grep -q reconcile "$x/usr/share/fish/vendor_completions.d/slipway.fish" || fail "fish completion lacks reconcile"
ok "slipway --version, --help, man pages, completions; binary stripped, $(awk -v b="$bytes" 'BEGIN { printf "%.1f MB", b / 1e6 }') (limit 30 MB)"

# 2. install.sh lays down the very same files, with the same modes
i=$tmp/i
bash deploy/install.sh --bin "$x/usr/bin/slipway" --destdir "$i" >/dev/null
files() { (cd "$1" && find . -type f -printf '%m %p\n' | sort); }
files "$x" | grep -vE ' \./usr/share/doc/slipway/(copyright|changelog\.Debian\.gz)$' >"$tmp/deb.files"
files "$i" >"$tmp/install.files"
diff -u "$tmp/deb.files" "$tmp/install.files" >"$tmp/files.diff" || fail "install.sh and the package install different files (- package, + install.sh):
$(cat "$tmp/files.diff")"
ok "install.sh --destdir installs the package's $(wc -l <"$tmp/deb.files") files with the same modes"

# 4. lintian
if ! command -v lintian >/dev/null; then
  echo "check-deb: installing lintian"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends lintian; } >"$tmp/apt.log" 2>&1 || { cat "$tmp/apt.log" >&2; fail "apt-get install lintian"; }
fi
lintian --fail-on error --allow-root "$deb" >"$tmp/lintian.txt" 2>&1 || { cat "$tmp/lintian.txt" >&2; fail "lintian reports errors"; }
ok "lintian: no errors ($(grep -c '^W:' "$tmp/lintian.txt" || true) warnings, $(grep -c '^I:' "$tmp/lintian.txt" || true) info)"
sed 's/^/  /' "$tmp/lintian.txt"

# 5. the maintainer scripts, run by dpkg on a scratch root
R=$tmp/root
mkdir -p "$R/var/lib/dpkg/updates" "$R/var/lib/dpkg/info"
: >"$R/var/lib/dpkg/status"
dpkg_() { dpkg --root="$R" --force-script-chrootless --force-depends --log=/dev/null "$@" >>"$tmp/dpkg.log" 2>&1 || { cat "$tmp/dpkg.log" >&2; fail "dpkg $*"; }; }
mode() { stat -c %a "$R$1"; }
dpkg_ -i "$deb"
for d in /etc/slipway /var/lib/slipway /data/backups; do
  [ "$(mode "$d")" = 700 ] || fail "after install $d is mode $(mode "$d"), want 700"
done
[ "$(mode /etc/slipway/config.toml)" = 600 ] || fail "config.toml is mode $(mode /etc/slipway/config.toml)"
[ ! -e "$R/etc/systemd" ] || fail "installing enabled a unit: $(find "$R/etc/systemd")"
ok "install: /etc/slipway, /var/lib/slipway, /data/backups 0700; config 0600; no unit enabled"

# The operator's host: an edited config (state and backups inside the scratch root), one
# timer enabled and the others left off.
cfg=$R/etc/slipway/config.toml
sed -i "s|^state_dir = .*|state_dir = \"$R/var/lib/slipway\"|; s|^backup_root = .*|backup_root = \"$R/data/backups\"|; s|^control_plane = .*|control_plane = []|" "$cfg"
echo "# edited by the operator" >>"$cfg"
cp "$cfg" "$tmp/config.edited"
mkdir -p "$R/etc/systemd/system/timers.target.wants"
ln -s /lib/systemd/system/slipway-reconcile.timer "$R/etc/systemd/system/timers.target.wants/slipway-reconcile.timer"

# Upgrade while a job of the old binary waits for the host lock (a timer's job mid-run):
# `recover` needs neither Docker nor the desired repo, and writes a real run record.
dpkg-deb -R "$deb" "$tmp/v2"
sed -i "s/^Version: .*/&+upgrade/" "$tmp/v2/DEBIAN/control"
dpkg-deb --root-owner-group -b "$tmp/v2" "$tmp/slipway-upgrade.deb" >/dev/null
flock -o "$R/var/lib/slipway/slipway.lock" sleep 60 &
holder=$!
for _ in $(seq 1 50); do [ -e "$R/var/lib/slipway/slipway.lock" ] && break; sleep 0.1; done
"$R/usr/bin/slipway" --config "$cfg" --quiet --wait=60 recover >"$tmp/job.out" 2>&1 &
job=$!
sleep 1
kill -0 "$job" 2>/dev/null || fail "the job exited before the upgrade: $(cat "$tmp/job.out")"
dpkg_ -i "$tmp/slipway-upgrade.deb"
readlink "/proc/$job/exe" | grep -q '(deleted)' || fail "the waiting job is not running the replaced binary"
kill "$holder"
holder=""
wait "$job" || fail "the job that ran across the upgrade failed: $(cat "$tmp/job.out")"
[ -s "$R/var/lib/slipway/state.db" ] || fail "the job wrote no run record"
cmp -s "$cfg" "$tmp/config.edited" || fail "the upgrade changed the operator's config.toml"
[ -L "$R/etc/systemd/system/timers.target.wants/slipway-reconcile.timer" ] || fail "the upgrade disabled slipway-reconcile.timer"
[ "$(ls "$R/etc/systemd/system/timers.target.wants")" = slipway-reconcile.timer ] || fail "the upgrade enabled a timer the operator left off: $(ls "$R/etc/systemd/system/timers.target.wants")"
ok "upgrade: a job waiting on the lock ran to the end on its binary; config edits and timer choices kept"

# Backups beside the run record, then remove and purge.
mkdir -p "$R/data/backups/daily/2026-12-01/tenants" "$R/data/backups/rollout/20261201T030000Z-7f3a"
for t in t1 t2; do head -c 100000 /dev/urandom >"$R/data/backups/daily/2026-12-01/tenants/$t.tar.zst"; done
echo '{"archives":[]}' >"$R/data/backups/daily/2026-12-01/MANIFEST.json"
head -c 5000 /dev/urandom >"$R/data/backups/rollout/20261201T030000Z-7f3a/t1.tar.zst"
data_sums() { (cd "$R" && find var/lib/slipway data/backups -type f -exec sha256sum {} + | sort); }
data_sums >"$tmp/data.before"
dpkg_ -r slipway
data_sums | diff -u "$tmp/data.before" - >/dev/null || fail "dpkg -r changed the run record or a backup"
[ -f "$cfg" ] || fail "dpkg -r removed the conffile (only purge may)"
dpkg_ -P slipway
data_sums | diff -u "$tmp/data.before" - >/dev/null || fail "dpkg -P changed the run record or a backup"
[ "$(mode /var/lib/slipway)" = 700 ] && [ "$(mode /data/backups)" = 700 ] || fail "purge changed the state or backup dir modes"
[ ! -e "$R/usr/bin/slipway" ] || fail "purge left /usr/bin/slipway"
ok "remove and purge: /var/lib/slipway and $(grep -c . "$tmp/data.before") backup and state files byte-identical"
echo "check-deb: $(basename "$deb") passed"
