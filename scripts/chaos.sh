#!/usr/bin/env bash
# The chaos and security suite, rerun in one command; writes CHAOS.md.
#   - chaos scenarios on the emulated link (tests/it/chaos.rs, as root), the lock and flood
#     scenarios (tests/it/ownership.rs, tests/it/admission.rs), each run N times;
#   - the hostile-peer, security and failure-path suites (tests/it/hostile.rs, security.rs,
#     failures.rs, baseline.rs), N times;
#   - every fuzz target for F seconds (scripts/fuzz.sh).
# The lifecycle and bounds sections of CHAOS.md are scripts/chaos-rows.sh's; this keeps them.
# Usage: scripts/chaos.sh [runs=3] [fuzz-seconds-per-target=60]
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
. scripts/env.sh
runs="${1:-3}"
fuzz_secs="${2:-60}"
# The raw output stays for inspection (CHAOS.md says where).
log=/var/tmp/quicstrap-chaos.log
: >"$log"
cargo build --release --locked --tests >/dev/null
# The broker-outage scenarios stop and restart a real Kafka; the others need one up.
kafka_up
suites_ok=0
for i in $(seq 1 "$runs"); do
  echo "chaos: run $i of $runs" >&2
  # One scenario at a time: they measure time to recover.
  for t in chaos migration kafka_broker ownership admission; do
    if cargo test --release --locked --test it -- --nocapture --test-threads 1 "$t::" >>"$log" 2>&1; then :; else
      echo "chaos: run $i: $t had failures (see the table)" >&2
    fi
  done
  # The Kafka faults that need no broker restart: a retention gap, a bad record, Kafka down
  # with peers up.
  if cargo test --release --locked --test it -- --nocapture --test-threads 1 \
      kafka::a_retention_gap kafka::a_partition_behind_retention kafka::bad_records \
      kafka::with_kafka_down >>"$log" 2>&1; then :; else
    echo "chaos: run $i: kafka had failures (see the table)" >&2
  fi
  if cargo test --release --locked --test it -- hostile:: security:: failures:: baseline:: \
      >>"$log" 2>&1; then suites_ok=$((suites_ok + 1)); fi
done
fuzz=$(./scripts/fuzz.sh "$fuzz_secs" 2>/dev/null | grep '^FUZZ' || true)
{
  echo "# Chaos and security report"
  echo
  echo "Made by \`scripts/chaos.sh $runs $fuzz_secs\` on $(date -u +%Y-%m-%d), $(nproc) cores,"
  echo "$(uname -sr). Every scenario asserts: the partition is complete and equal to the source,"
  echo "or cleanly absent with a typed error; no temp dir left but what resume keeps (with its"
  echo "journal); the serving peer still serves."
  echo "\"bytes lost\" counts bytes of a completed partition that differ from the source (it must"
  echo "be 0). \"bytes re-sent\" counts, for scenarios that interrupt a transfer, the bytes that"
  echo "crossed the link twice: with resume, at most the unvalidated tails of the files in flight,"
  echo "or a whole attempt's bytes where it had to start afresh (another peer, a restarted peer)."
  echo "\"time to recover\" is the median, from the fault's end (or start, for faults that"
  echo "end a transfer) to the fetch's outcome."
  echo
  python3 scripts/chaos_table.py <"$log"
  echo
  echo "Raw output of the run: \`/var/tmp/quicstrap-chaos.log\`."
  echo
  # The sections of scripts/chaos-rows.sh are kept as they were.
  for kept in lifecycle bounds; do
    sed -n "/^<!-- $kept -->\$/,/^<!-- \/$kept -->\$/p" CHAOS.md 2>/dev/null || true
    echo
  done
  echo
  echo "A scenario missing from the table, or with fewer runs than the others, failed an"
  echo "assertion before reporting (see \`cargo test --release --test it -- --nocapture chaos::\`)."
  echo
  echo "Hostile peers, handshake security and failure paths (\`tests/it/hostile.rs\`,"
  echo "\`security.rs\`, \`failures.rs\`, \`baseline.rs\`): $suites_ok of $runs runs fully green."
  echo
  echo "| fuzz target | executions | seconds | crashes |"
  echo "|---|---|---|---|"
  echo "$fuzz" | awk '{ split($3,r,"="); split($4,s,"="); split($5,c,"=");
    if ($2 != "") printf "| %s | %s | %s | %s |\n", $2, r[2], s[2], c[2] }'
} > CHAOS.md.new
mv CHAOS.md.new CHAOS.md
cat CHAOS.md
