#!/usr/bin/env bash
# Builds the server image from ./Dockerfile and walks docs/deployment.md's "The image" and
# "Docker Compose" sections against it, end to end: build, a 3-node `compose up`, the
# health check, `exec cairn admin nodes`, the curl tour (and node 3's metrics through node
# 1, as the console fetches them), `cairn debug zip` from the host, a rolling restart,
# `down` then `up` (the volumes keep the data), the node4 profile, `down -v`. Exits
# non-zero and says what failed on the first failure. Not in CI: the image's release build
# alone takes 10-20 min on 2 cores. scripts/check-deploy.sh (in CI) checks the same files
# offline.
#
# The engine is podman with podman-compose (Docker's CLI and file formats; no daemon), so it
# runs where no Docker engine does. On a machine that cannot pull images (only crates.io,
# PyPI, Debian and npm reachable), the two base images are stand-ins made here and tagged
# with the names the Dockerfile uses: debian:bookworm-slim from debootstrap (minbase), and
# rust:1-bookworm as that plus gcc, libc6-dev, ca-certificates (and this machine's own CAs,
# for an egress that intercepts TLS) and this machine's stable Rust toolchain. The script
# says when it does this. Everything after FROM is the real file.
#
# Usage: scripts/check-image.sh            (root; installs podman, runc, debootstrap, and
#                                           podman-compose pinned into target/image-check)
#        KEEP=1 scripts/check-image.sh     (leave the cluster up at the end)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work="$root/target/image-check"
mkdir -p "$work"
log="$work/log"
: >"$log"
t_start=$SECONDS

step() { printf '== %s\n' "$*"; }
fail() {
  printf 'FAIL: %s\n' "$*" >&2
  printf '(engine output in %s)\n' "$log" >&2
  exit 1
}

# --- tools ---------------------------------------------------------------------------------
need=()
command -v podman >/dev/null || need+=(podman)
command -v runc >/dev/null || need+=(runc)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || fail "needs ${need[*]} (run as root to install them)"
  step "installing ${need[*]}"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >>"$log" 2>&1
fi
venv="$work/venv"
pins="podman-compose==1.2.0 python-dotenv==1.2.4 PyYAML==6.0.3"
if [ "$(cat "$work/pins" 2>/dev/null)" != "$pins" ]; then
  step "installing $pins into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  # shellcheck disable=SC2086
  "$venv/bin/pip" install -q $pins >>"$log" 2>&1
  echo "$pins" >"$work/pins"
fi
compose() { "$venv/bin/podman-compose" -f deploy/compose.yaml "$@"; }

# The engine's settings for this run only (CONTAINERS_CONF; nothing system-wide changes).
# crun refuses a cgroup v1 host whose unified hierarchy is mounted empty ("hybrid"); and a
# container may not be given more open files or processes than the engine's own hard limits,
# which can be below this shell's (seen: nproc 96362 here, refused above 32768), so the
# process limit is found by trying (engine_conf after the base image exists).
conf="$work/containers.conf"
nofile=$(ulimit -Hn)
[ "$nofile" = unlimited ] && nofile=1048576
engine_conf() {
  {
    echo '[containers]'
    echo "default_ulimits = [\"nofile=$nofile:$nofile\", \"nproc=$1:$1\"]"
    echo '[engine]'
    [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ] || echo 'runtime = "runc"'
  } >"$conf"
}
export CONTAINERS_CONF="$conf"
engine_conf 4096
podman --version

# --- base images ---------------------------------------------------------------------------
# debian:bookworm-slim, made here when it cannot be pulled.
base_image() {
  local name=docker.io/library/debian:bookworm-slim
  podman image exists "$name" && return
  timeout 60 podman pull -q "$name" >>"$log" 2>&1 && return
  step "cannot pull $name: making a stand-in with debootstrap (minbase)"
  local dir="$work/rootfs-debian"
  rm -rf "$dir"
  debootstrap --variant=minbase bookworm "$dir" http://deb.debian.org/debian >>"$log" 2>&1 ||
    fail "debootstrap bookworm"
  tar -C "$dir" -cf - . | podman import --change 'CMD ["bash"]' - "$name" >>"$log"
}

# rust:1-bookworm, made here when it cannot be pulled: the official image's layout
# (RUSTUP_HOME, CARGO_HOME, cargo on PATH) with this machine's stable toolchain.
rust_image() {
  local name=docker.io/library/rust:1-bookworm
  podman image exists "$name" && return
  timeout 60 podman pull -q "$name" >>"$log" 2>&1 && return
  local tc
  tc=$(rustup toolchain list 2>/dev/null | awk '/^stable/ {print $1; exit}')
  tc="$HOME/.rustup/toolchains/${tc:-stable-x86_64-unknown-linux-gnu}"
  [ -x "$tc/bin/cargo" ] || fail "cannot pull $name and no stable toolchain in $tc"
  step "cannot pull $name: making a stand-in from debian:bookworm-slim and $("$tc/bin/rustc" --version)"
  local ctx="$work/rust-image"
  rm -rf "$ctx"
  mkdir -p "$ctx"
  cp -a "$tc" "$ctx/toolchain"
  # The build stage fetches crates over HTTPS; where this machine's egress presents its own
  # CA (installed in /usr/local/share/ca-certificates), the stand-in trusts it too.
  mkdir -p "$ctx/ca"
  cp /usr/local/share/ca-certificates/*.crt "$ctx/ca/" 2>/dev/null || true
  cat >"$ctx/Containerfile" <<'EOF'
FROM docker.io/library/debian:bookworm-slim
RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
      --no-install-recommends gcc libc6-dev ca-certificates git \
    && rm -rf /var/lib/apt/lists/*
COPY ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates
COPY toolchain /usr/local/rustup/toolchains/stable
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:/usr/local/rustup/toolchains/stable/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
EOF
  podman build -q --network host -t "$name" "$ctx" >>"$log" 2>&1 || fail "building the $name stand-in"
  rm -rf "$ctx"
}

base_image
nproc=$(ulimit -Hu)
[ "$nproc" = unlimited ] && nproc=4194304
while :; do
  engine_conf "$nproc"
  podman run --rm docker.io/library/debian:bookworm-slim true >>"$log" 2>&1 && break
  [ "$nproc" -gt 4096 ] || fail "the engine cannot start a container"
  nproc=$((nproc / 2))
done
echo "containers get nofile $nofile, nproc $nproc"
rust_image

# --- the image (docs/deployment.md, "The image") -------------------------------------------
step "podman build -t cairn:dev .   (the release build takes a while)"
t0=$SECONDS
podman build -t cairn:dev . >>"$log" 2>&1 || fail "podman build -t cairn:dev ."
build_s=$((SECONDS - t0))
size=$(podman image inspect cairn:dev --format '{{.Size}}')
user=$(podman image inspect cairn:dev --format '{{.Config.User}}')
[ "$user" = 10001:10001 ] || fail "the image runs as '$user', not 10001:10001"
podman run --rm cairn:dev --version >>"$log" 2>&1 || fail "the image cannot run cairn --version"
echo "built in ${build_s}s; image $((size / 1000000)) MB; user $user"

# --- Compose (docs/deployment.md, "Docker Compose: 3 nodes on one host") -------------------
project=cairn
container() { echo "${project}_$1_1"; }
cleanup() {
  if [ "${KEEP:-0}" != 1 ]; then
    compose --profile node4 down -v >>"$log" 2>&1 || true
  fi
}
trap cleanup EXIT
compose --profile node4 down -v >>"$log" 2>&1 || true

# The HEALTHCHECK, run the way the engine runs it. (podman schedules health checks with
# systemd timers; without systemd it runs them only when asked, as here.)
healthy() { podman healthcheck run "$(container "$1")" >/dev/null 2>&1; }
wait_healthy() {
  local svc
  for svc in "$@"; do
    for _ in $(seq 120); do
      healthy "$svc" && continue 2
      sleep 1
    done
    podman logs --tail 30 "$(container "$svc")" >&2 || true
    fail "$svc is not healthy after 120 s"
  done
}
# GET/PUT through a published port, failing with the answer.
http() {
  local out
  out=$(curl -sS --max-time 10 -w '\n%{http_code}' "$@") || fail "curl $*"
  local code=${out##*$'\n'}
  [ "${code:0:1}" = 2 ] || fail "curl $* answered $code: ${out%$'\n'*}"
  printf '%s' "${out%$'\n'*}"
}
live_nodes() {
  compose exec -T cairn-1 cairn admin nodes 2>>"$log" | grep -cw yes || true
}
wait_live() {
  for _ in $(seq 60); do
    [ "$(live_nodes)" -ge "$1" ] && return
    sleep 1
  done
  compose exec -T cairn-1 cairn admin nodes >&2 || true
  fail "cairn admin nodes does not show $1 live nodes after 60 s"
}

step "compose up -d --build"
t0=$SECONDS
compose up -d --build >>"$log" 2>&1 || fail "compose up -d --build"
wait_healthy cairn-1 cairn-2 cairn-3
echo "3 nodes healthy $((SECONDS - t0))s after up"
step "compose exec cairn-1 cairn admin nodes"
wait_live 3
nodes=$(compose exec -T cairn-1 cairn admin nodes)
echo "$nodes"
# Each node's HTTP port is advertised by its name (it binds 0.0.0.0), so the console and
# `cairn debug zip` reach the right node.
for n in 1 2 3; do
  grep -q "cairn-$n:8001" <<<"$nodes" || fail "node $n does not advertise its HTTP port as cairn-$n:8001"
done

step "the curl tour"
http -X POST http://127.0.0.1:8001/v1/tables -d '{"name":"demo","replication":3}' >/dev/null
http -X PUT --data-binary world http://127.0.0.1:8002/v1/tables/demo/keys/hello >/dev/null
got=$(http http://127.0.0.1:8003/v1/tables/demo/keys/hello)
[ "$got" = world ] || fail "GET hello through node 3 answered '$got', not 'world'"
echo "hello = $got"
# The console on node 1 charts node 3 through node 1 (the browser cannot resolve cairn-3).
http http://127.0.0.1:8001/v1/admin/nodes/3/metrics | grep -q 'cairn_metadata_leader{node="3"}' ||
  fail "node 1 does not serve node 3's metrics (the console's charts)"

step "cairn debug zip from the host, through node 1's published port"
# The host cannot resolve cairn-N, so everything comes through node 1 (--via). The image's
# own cairn (its entrypoint) runs on the host's network, as root to write into $work, to
# stand for a cairn installed on the host.
podman run --rm --network host --user 0 -v "$work:/out" cairn:dev \
  --endpoints 127.0.0.1:7001 debug zip --via 127.0.0.1:8001 /out/debug.zip >>"$log" 2>&1 ||
  fail "cairn debug zip --via 127.0.0.1:8001 failed"
manifest=$(python3 -c 'import sys, zipfile; print(zipfile.ZipFile(sys.argv[1]).read("cairn-debug/MANIFEST.txt").decode())' "$work/debug.zip") ||
  fail "$work/debug.zip has no MANIFEST.txt"
for n in 1 2 3; do
  grep -E "^  node $n .*logs.txt \(through" <<<"$manifest" >/dev/null ||
    fail "debug zip did not collect node $n through node 1: $manifest"
done
echo "debug zip: every node's health, metrics and logs through node 1"

step "rolling restart: compose restart cairn-3"
compose restart cairn-3 >>"$log" 2>&1 || fail "compose restart cairn-3"
wait_healthy cairn-3
got=$(http http://127.0.0.1:8003/v1/tables/demo/keys/hello)
[ "$got" = world ] || fail "after the restart node 3 answered '$got'"

step "down, then up -d: the volumes keep the cluster"
compose down >>"$log" 2>&1 || fail "compose down"
compose up -d >>"$log" 2>&1 || fail "compose up -d after down"
wait_healthy cairn-1 cairn-2 cairn-3
got=$(http http://127.0.0.1:8001/v1/tables/demo/keys/hello)
[ "$got" = world ] || fail "after down and up node 1 answered '$got'"
echo "hello = $got after down and up"

step "a fourth node: compose --profile node4 up -d cairn-4"
compose --profile node4 up -d cairn-4 >>"$log" 2>&1 || fail "compose --profile node4 up -d cairn-4"
wait_healthy cairn-4
wait_live 4
compose exec -T cairn-1 cairn admin nodes

if [ "${KEEP:-0}" = 1 ]; then
  echo "KEEP=1: the cluster stays up; stop it with: $venv/bin/podman-compose -f deploy/compose.yaml --profile node4 down -v"
else
  step "compose down -v"
fi
echo "OK: image built in ${build_s}s, every step of the Compose section passed ($((SECONDS - t_start))s in all)"
