#!/usr/bin/env bash
# A node's lifecycle, rerun in one command; writes the lifecycle section of CHAOS.md:
#   - fetch and recover as PID 1 of a PID namespace, stopped by SIGKILL and by SIGTERM
#     mid-transfer, then rerun (tests/it/lifecycle.rs, tests/it/recover.rs);
#   - an outage of 25 s past a 10 s idle timeout, and one of 3 minutes under the default
#     timeouts, each ridden out by one fetch (tests/it/chaos.rs; the second is minutes long
#     and ignored by the test suite);
#   - a 40 MB partition over a 16 Mbit/s link with a 10 s rate window (the old wall-clock
#     deadline's case), in one attempt.
# Each N times (as root: the emulated link needs namespaces).
# Usage: scripts/chaos-lifecycle.sh [runs=3]
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
. scripts/env.sh
runs="${1:-3}"
log=/var/tmp/quicstrap-chaos-lifecycle.log
: >"$log"
cargo build --release --locked --tests >/dev/null
trap './scripts/kafka.sh stop >/dev/null' EXIT
./scripts/kafka.sh start
export QUICSTRAP_KAFKA="127.0.0.1:${QUICSTRAP_KAFKA_PORT:-19092}"
export QUICSTRAP_KAFKA_TLS="127.0.0.1:${QUICSTRAP_KAFKA_TLS_PORT:-$(( ${QUICSTRAP_KAFKA_PORT:-19092} + 2 ))}"
for i in $(seq 1 "$runs"); do
  echo "chaos-lifecycle: run $i of $runs" >&2
  if cargo test --release --locked --test it -- --nocapture --test-threads 1 --include-ignored \
      lifecycle:: recover::a_recovery_as_pid_1 chaos::an_outage_ chaos::a_40_mb_partition \
      >>"$log" 2>&1; then :; else
    echo "chaos-lifecycle: run $i had failures (see the table)" >&2
  fi
done
section="$(mktemp)"
{
  echo "<!-- lifecycle -->"
  echo "## A node's lifecycle"
  echo
  echo "Made by \`scripts/chaos-lifecycle.sh $runs\` on $(date -u +%Y-%m-%d), $(nproc) cores,"
  echo "$(uname -sr). \`pid1_*\` and \`recover_pid1_*\`: \`fetch\` or \`recover\` as PID 1 of its"
  echo "own PID namespace, stopped mid-transfer, then rerun; each rerun resumed at least 90 % of"
  echo "what had arrived (asserted), and time to recover is the rerun's. \`outage_*\`: the link"
  echo "dark for 25 s past a 10 s idle timeout, or for 3 minutes under the default timeouts; one"
  echo "fetch rides it out, and time to recover runs from the link's return (the pause before"
  echo "the next attempt is at most 30 s). \`slow_path_16mbit_window_10s\`: 40 MB over 16 Mbit/s"
  echo "(about 20 s) with a 10 s rate window, in one attempt; time to recover is the whole fetch."
  echo
  python3 scripts/chaos_table.py <"$log"
  echo
  echo "Raw output: \`$log\`."
  echo "<!-- /lifecycle -->"
} >"$section"
# Replace the section (or append it) in CHAOS.md.
python3 - "$section" <<'PY'
import pathlib, re, sys
new = pathlib.Path(sys.argv[1]).read_text()
md = pathlib.Path("CHAOS.md")
text = md.read_text() if md.exists() else "# Chaos and security report\n"
pat = re.compile(r"<!-- lifecycle -->.*?<!-- /lifecycle -->\n?", re.S)
text = pat.sub(lambda _: new, text) if pat.search(text) else text.rstrip("\n") + "\n\n" + new
md.write_text(text)
PY
rm -f "$section"
sed -n '/^<!-- lifecycle -->$/,/^<!-- \/lifecycle -->$/p' CHAOS.md
