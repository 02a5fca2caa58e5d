#!/usr/bin/env bash
# Time to fetch a ~1 GB partition (1 M records of 1000 B) over loopback, MD5: from a cold
# snapshot (every digest computed), from new snapshots of the same unchanged SST files (their
# digests from the cache), after a server restart, and with the cache deleted.
# Usage: scripts/bench-digest-cache.sh (needs the development certificates in certs-dev/)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
cargo build --release --locked --bin quicstrap >/dev/null
Q="$CARGO_TARGET_DIR/release/quicstrap"
W=/var/tmp/measure-cache
rm -rf $W; mkdir -p $W
$Q seed --data-dir $W/a --store big --records 1000000 >/dev/null
du -sh $W/a
serve() {
  $Q serve --data-dir $W/a --listen 127.0.0.1:7878 --allow client.quicstrap.test \
    --cert certs-dev/server.crt --key certs-dev/server.key --ca certs-dev/ca.crt \
    --snapshot-dir $W/snaps --snapshot-ttl-secs 1 --write-limit 0 >/dev/null 2>&1 &
  echo $!
}
fetch() {
  rm -rf $W/b
  local t0=$(date +%s.%N)
  $Q fetch --data-dir $W/b --store big --version 1 --partition 0 --peer 127.0.0.1:7878 \
    --cert certs-dev/client.crt --key certs-dev/client.key --ca certs-dev/ca.crt \
    --read-limit 0 --json > $W/report.json 2>/dev/null
  local t1=$(date +%s.%N)
  python3 -c "import json;r=json.load(open('$W/report.json'));print('$1', 'wall %.2f s' % ($t1-$t0), 'fetch %.2f s' % r.get('seconds', r.get('transfer',{}).get('seconds',0)), 'bytes', r.get('bytes', r.get('transfer',{}).get('bytes')))"
}
pid=$(serve); sleep 2
fetch "cold snapshot      "
for i in 1 2 3; do sleep 2; fetch "new snapshot, cache"; done
kill -TERM $pid; wait $pid 2>/dev/null || true
pid=$(serve); sleep 2
fetch "after restart      "
kill -TERM $pid; wait $pid 2>/dev/null || true
rm -rf $W/snaps; pid=$(serve); sleep 2
fetch "cache deleted      "
kill -TERM $pid; wait $pid 2>/dev/null || true
rm -rf $W
