#!/usr/bin/env bash
# Fuzzes every decoder for a fixed budget per target (default 60 s) with cargo-fuzz (nightly):
#   frame_decoder — the wire protocol's frames, headers and version peek (quicstrap-proto);
#   transfer_machines — the client and server transfer state machines, with arbitrary events;
#   netem_input   — the link emulator's parsers of user input and its link model.
# Not part of CI. Usage: scripts/fuzz.sh [seconds-per-target]
# Prints one line per target: `FUZZ <target> runs=<n> secs=<s> crashes=<n>`.
# Findings land in fuzz/artifacts/<target>/; each crash becomes a regression test
# (proto/src/codec.rs for the protocol, netem/src/model.rs or units.rs for the emulator).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
secs="${1:-60}"
cd fuzz
for target in frame_decoder transfer_machines netem_input; do
  # New inputs go to a scratch corpus; the committed seed corpus stays as it is.
  work=$(mktemp -d)
  seeds=()
  [ -d "corpus/$target" ] && seeds=("corpus/$target")
  log=$(mktemp)
  set +e
  CARGO_TARGET_DIR="$CARGO_TARGET_DIR/fuzz" cargo +nightly fuzz run "$target" \
    "$work" "${seeds[@]}" -- -max_total_time="$secs" -max_len=4096 >"$log" 2>&1
  rc=$?
  set -e
  runs=$(grep -oE '^Done [0-9]+ runs' "$log" | grep -oE '[0-9]+' | tail -n 1)
  crashes=$(ls "artifacts/$target" 2>/dev/null | grep -c '^crash-' || true)
  echo "FUZZ $target runs=${runs:-0} secs=$secs crashes=$crashes exit=$rc"
  [ "$rc" -eq 0 ] || tail -n 20 "$log"
  rm -rf "$work" "$log"
done
