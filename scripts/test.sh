#!/usr/bin/env bash
# Runs the whole test suite: unit tests, and end-to-end tests on real `cairn` processes.
# Uses cargo-nextest when installed (faster, parallel), plain `cargo test` otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
if cargo nextest --version >/dev/null 2>&1; then
  exec cargo nextest run --workspace --no-fail-fast "$@"
else
  exec cargo test --workspace --no-fail-fast "$@"
fi
