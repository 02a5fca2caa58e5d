#!/usr/bin/env bash
# One section of CHAOS.md, rerun in one command: the section's scenarios, each N times (as
# root: the emulated link needs namespaces, the disk scenarios mount a tmpfs).
#   lifecycle — a node's lifecycle:
#     - fetch and recover as PID 1 of a PID namespace, stopped by SIGKILL and by SIGTERM
#       mid-transfer, then rerun (tests/it/lifecycle.rs, tests/it/recover.rs);
#     - an outage of 25 s past a 10 s idle timeout, and one of 3 minutes under the default
#       timeouts, each ridden out by one fetch (tests/it/chaos.rs; the second is minutes long
#       and ignored by the test suite);
#     - a 40 MB partition over a 16 Mbit/s link with a 10 s rate window, in one attempt.
#   bounds — what a hostile or broken peer, a full disk or a stale snapshot costs:
#     - hostile servers over real QUIC (tests/it/hostile.rs): a 7 MiB digest, a 10 MB
#       manifest, 100 001 files, 25 000 long names, 400 file streams at once;
#     - a disk too small for the partition, and one filled by another writer mid-transfer
#       (tests/it/disk.rs);
#     - peers whose snapshots the log cannot continue (tests/it/kafka.rs);
#     - a server asked for 100 000 missing partitions, a client over its share of users,
#       idle connections (tests/it/bounds.rs).
#   digests — a corrupted byte under protocol version 3 (digests sent after each file):
#     - a server whose digest trailer lies, contradicts the manifest or is missing
#       (tests/it/hostile.rs);
#     - an SST file flipped on disk under its cached digest (tests/it/failures.rs).
# Usage: scripts/chaos-rows.sh lifecycle|bounds|digests [runs=3]
set -euo pipefail
cd "$(dirname "$0")/.."
section="${1:?usage: scripts/chaos-rows.sh lifecycle|bounds|digests [runs=3]}"
runs="${2:-3}"
case "$section" in
  lifecycle)
    title="A node's lifecycle"
    filters=(lifecycle:: recover::a_recovery_as_pid_1 chaos::an_outage_ chaos::a_40_mb_partition)
    about="\`pid1_*\` and \`recover_pid1_*\`: \`fetch\` or \`recover\` as PID 1 of its
own PID namespace, stopped mid-transfer, then rerun; each rerun resumed at least 90 % of
what had arrived (asserted), and time to recover is the rerun's. \`outage_*\`: the link
dark for 25 s past a 10 s idle timeout, or for 3 minutes under the default timeouts; one
fetch rides it out, and time to recover runs from the link's return (the pause before
the next attempt is at most 30 s). \`slow_path_16mbit_window_10s\`: 40 MB over 16 Mbit/s
(about 20 s) with a 10 s rate window, in one attempt; time to recover is the whole fetch."
    ;;
  bounds)
    title="Hostile peers, full disks, stale snapshots"
    filters=(hostile::a_digest_longer hostile::a_manifest_over hostile::a_large_manifest
      hostile::a_flood_of_file_streams disk:: kafka::a_snapshot_the_log_cannot_continue bounds::)
    about="\`hostile_*\`: a server over real QUIC sends the pattern first, a good one holds the
partition; the fetcher (receive budget 32 MiB) must end at the good one with its peak RSS
within the budget plus 64 MiB and its journal within 1 MiB plus the file list (asserted);
time to recover is the whole fetch. \`disk_too_small\`: a 40 MB partition onto a 64 MiB
tmpfs fails \`insufficient_space\` before the first byte, the disk's other data unchanged;
time is to the failure. \`disk_filled_mid_transfer\`: another writer fills the disk at 8 MB
received; the fetch fails \`insufficient_space\` keeping what arrived, and time to recover
runs from space freed to the partition in place (resumed). \`stale_peers_then_a_good_one\`,
\`only_stale_peers\`: snapshots below the log's first offset or past its end are refused
before commit; with only those, the log rebuilds the partition. \`missing_partitions_*\`: a
server's RSS after 100 000 requests for distinct missing partitions (asserted within 2 MB).
\`client_over_its_share\`: one client at its share of snapshot users is answered Busy over
QUIC and HTTPS while other clients are served. \`idle_connection_closed\`: a connection
carrying no transfer is closed by the server, one carrying a longer transfer is not."
    ;;
  digests)
    title="A corrupted byte under digest-while-sending"
    filters=(hostile::a_wrong_digest_trailer hostile::a_trailer_that_contradicts
      failures::a_file_changed_under_its_cached_digest)
    about="Since protocol version 3 a server sends each digest it does not know yet after the
file, computed in the read that sent it. \`v3_wrong_trailer\`: a server over real QUIC sends a
file with no digest in the manifest and a trailer one bit off: \`checksum_mismatch\`, nothing
committed, no temp dir, no open handle. \`v3_trailer_contradicts_or_missing\`: bytes that
match their trailer but not the manifest's digest, then a stream without a trailer: both
\`protocol_violation\`, nothing left. \`cached_digest_file_flipped\`: one bit of an SST file
flipped on the server's disk with its modification time restored, under the digest cached
from the first fetch: the next snapshot lists the cached digest, the client's digest of the
bytes sent differs, \`checksum_mismatch\`. Time to recover is to the refusal."
    ;;
  *)
    echo "unknown section $section (lifecycle, bounds or digests)" >&2
    exit 2
    ;;
esac
./scripts/setup.sh
. scripts/env.sh
log="/var/tmp/quicstrap-chaos-$section.log"
: >"$log"
cargo build --release --locked --tests >/dev/null
kafka_up
for i in $(seq 1 "$runs"); do
  echo "chaos-rows $section: run $i of $runs" >&2
  if cargo test --release --locked --test it -- --nocapture --test-threads 1 --include-ignored \
      "${filters[@]}" >>"$log" 2>&1; then :; else
    echo "chaos-rows $section: run $i had failures (see the table)" >&2
  fi
done
text="$(mktemp)"
{
  echo "<!-- $section -->"
  echo "## $title"
  echo
  echo "Made by \`scripts/chaos-rows.sh $section $runs\` on $(date -u +%Y-%m-%d), $(nproc) cores,"
  echo "$(uname -sr). $about"
  echo
  python3 scripts/chaos_table.py <"$log"
  echo
  echo "Raw output: \`$log\`."
  echo "<!-- /$section -->"
} >"$text"
# Replace the section (or append it) in CHAOS.md.
python3 - "$section" "$text" <<'PY'
import pathlib, re, sys
name, new = sys.argv[1], pathlib.Path(sys.argv[2]).read_text()
md = pathlib.Path("CHAOS.md")
text = md.read_text() if md.exists() else "# Chaos and security report\n"
pat = re.compile(rf"<!-- {name} -->.*?<!-- /{name} -->\n?", re.S)
text = pat.sub(lambda _: new, text) if pat.search(text) else text.rstrip("\n") + "\n\n" + new
md.write_text(text)
PY
rm -f "$text"
sed -n "/^<!-- $section -->\$/,/^<!-- \/$section -->\$/p" CHAOS.md
