#!/usr/bin/env bash
# Runs the demo on a fresh machine: setup, release build, `quicstrap demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
. scripts/env.sh
cargo run --release --locked --bin quicstrap -- demo "$@"
