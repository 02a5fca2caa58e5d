#!/usr/bin/env bash
# Runs every check on a fresh machine: setup, formatting, lints, then the test suite
# (unit + integration over real QUIC sockets, real RocksDB, real certificates) in release mode,
# the same build the demo and benchmarks use.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
. scripts/env.sh
cargo fmt --all -- --check
cargo clippy --release --locked --workspace --all-targets -- -D warnings
cargo test --release --locked --workspace --all-targets
cargo test --release --locked --workspace --doc
