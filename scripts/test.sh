#!/usr/bin/env bash
# Runs every check on a fresh machine: setup, formatting, lints, then the test suite
# (unit + integration over real QUIC sockets, real RocksDB, real certificates, a real Kafka
# broker) in release mode, the same build the demo and benchmarks use.
#
# Every step runs even when an earlier one failed, and every test binary runs even when
# another failed (--no-fail-fast), so one run shows everything that is wrong; a summary of
# all failures closes the output, and the exit status is non-zero if anything failed.
set -uo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh || exit 1
. scripts/env.sh

log="$(mktemp -t quicstrap-test.XXXXXX)"
trap 'rm -f "$log"' EXIT
failed=()
# step NAME CMD...: runs CMD with its output shown and kept for the summary.
step() {
  local name="$1"
  shift
  echo "==> $name" | tee -a "$log"
  if ! "$@" 2>&1 | tee -a "$log"; then
    failed+=("$name")
  fi
}

step "cargo fmt --check" cargo fmt --all -- --check
step "cargo clippy" cargo clippy --release --locked --workspace --all-targets -- -D warnings
# A real Apache Kafka (KRaft, 127.0.0.1) for the ingestion tests; stopped however this ends.
trap './scripts/kafka.sh stop >/dev/null; rm -f "$log"' EXIT
step "kafka start" ./scripts/kafka.sh start
export QUICSTRAP_KAFKA="127.0.0.1:${QUICSTRAP_KAFKA_PORT:-19092}"
export QUICSTRAP_KAFKA_TLS="127.0.0.1:${QUICSTRAP_KAFKA_TLS_PORT:-$(( ${QUICSTRAP_KAFKA_PORT:-19092} + 2 ))}"
step "cargo test" cargo test --release --locked --workspace --all-targets --no-fail-fast
step "cargo test --doc" cargo test --release --locked --workspace --doc --no-fail-fast
# The embedder's guide as code, run against the broker above and a dnsmasq it starts.
step "example node" cargo run --release --locked --example node

echo
echo "==> summary"
# libtest's per-binary totals, added up.
awk '/^test result: /{
       for (i = 1; i <= NF; i++) {
         if ($(i+1) ~ /^passed/) p += $i
         if ($(i+1) ~ /^failed/) f += $i
         if ($(i+1) ~ /^ignored/) s += $i
       }
     }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
if [ ${#failed[@]} -eq 0 ]; then
  echo "all steps passed"
  exit 0
fi
echo "failed steps:"
printf '  %s\n' "${failed[@]}"
# Which tests, and which binaries (cargo's --no-fail-fast list).
grep -E '^test .* \.\.\. FAILED$' "$log" | sort -u | sed 's/^/  /'
sed -n '/^error: [0-9]* targets\? failed:/,/^[^ ]/p' "$log" | grep -E '^ ' | sed 's/^ */  binary: /'
exit 1
