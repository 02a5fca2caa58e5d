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
# New inputs go to a scratch corpus; the committed seed corpus stays as it is.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
CARGO_TARGET_DIR="$CARGO_TARGET_DIR/fuzz" cargo +nightly fuzz run frame_decoder \
  "$work" corpus/frame_decoder -- -max_total_time="$secs" -max_len=4096 2>&1 | grep -E '^(#|Done|==|SUMMARY)' | tail -n 5
