#!/usr/bin/env bash
# Runs the demo on a fresh machine: setup, release build, `quicstrap demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
. scripts/env.sh
# The demo's peers use the development PKI, which only `dev-pki` builds carry.
cargo run --release --locked --features dev-pki --bin quicstrap -- demo "$@"
