#!/usr/bin/env bash
# Runs the whole test suite: unit tests, and end-to-end tests on real `cairn` processes.
# Uses cargo-nextest when installed (faster, parallel), plain `cargo test` otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
# The fault-injection tests cut the network with iptables inside a private network
# namespace, and mount a FUSE filesystem under the nodes to cut their power (both need
# root; without it they fail and say so); the clock test runs a node under libfaketime; the
# load-balancer test runs a real HAProxy and talks HTTP through it with curl; the console
# test drives a headless Chromium.
missing=()
command -v iptables >/dev/null 2>&1 || missing+=(iptables)
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
command -v curl >/dev/null 2>&1 || missing+=(curl)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] || missing+=(faketime)
if [ ${#missing[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing ${missing[*]} for the fault tests"
  # A fresh machine has no package lists yet.
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
fi
if [ ! -e /dev/fuse ] && [ "$(id -u)" = 0 ]; then
  modprobe fuse 2>/dev/null || true
fi
if cargo nextest --version >/dev/null 2>&1; then
  exec cargo nextest run --workspace --no-fail-fast "$@"
else
  exec cargo test --workspace --no-fail-fast "$@"
fi
