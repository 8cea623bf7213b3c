#!/usr/bin/env bash
# Runs the whole test suite: unit tests, and end-to-end tests on real `cairn` processes.
# Uses cargo-nextest when installed (faster, parallel), plain `cargo test` otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
# The fault-injection tests cut the network with iptables inside a private network
# namespace (they need root; without it they fail and say so).
if ! command -v iptables >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing iptables for the network fault tests"
  # A fresh machine has no package lists yet.
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q iptables >/dev/null
fi
if cargo nextest --version >/dev/null 2>&1; then
  exec cargo nextest run --workspace --no-fail-fast "$@"
else
  exec cargo test --workspace --no-fail-fast "$@"
fi
