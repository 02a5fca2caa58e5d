#!/usr/bin/env bash
# Runs every check on a fresh machine: setup, formatting, lints, then the test suite
# (unit + integration over real QUIC sockets, real RocksDB, real certificates, a real Kafka
# broker) in release mode,
# the same build the demo and benchmarks use.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
. scripts/env.sh
cargo fmt --all -- --check
cargo clippy --release --locked --workspace --all-targets -- -D warnings
# A real Apache Kafka (KRaft, 127.0.0.1) for the ingestion tests; stopped however this ends.
trap './scripts/kafka.sh stop >/dev/null' EXIT
./scripts/kafka.sh start
export QUICSTRAP_KAFKA="127.0.0.1:${QUICSTRAP_KAFKA_PORT:-19092}"
cargo test --release --locked --workspace --all-targets
cargo test --release --locked --workspace --doc
