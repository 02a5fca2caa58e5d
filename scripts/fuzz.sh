#!/usr/bin/env bash
# Fuzzes the frame decoder for a fixed budget (default 60 s) with cargo-fuzz (nightly).
# Not part of CI. Usage: scripts/fuzz.sh [seconds]
# Findings land in fuzz/artifacts/frame_decoder/; each crash becomes a regression test in
# proto/src/codec.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
secs="${1:-60}"
cd fuzz
CARGO_TARGET_DIR="$CARGO_TARGET_DIR/fuzz" cargo +nightly fuzz run frame_decoder \
  corpus/frame_decoder -- -max_total_time="$secs" -max_len=4096 2>&1 | tail -n 25
