# Sourced by the scripts: one cargo target dir outside the clone, shared by every checkout,
# so RocksDB's C++ build (~13 min cold on 2 cores) is paid once per machine.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/quicstrap-target}"
export PATH="$HOME/.cargo/bin:$PATH"

# kafka_up: starts the tests' Kafka broker on 127.0.0.1 (stopped when the calling script
# exits) and exports its addresses for the tests.
kafka_up() {
  trap './scripts/kafka.sh stop >/dev/null' EXIT
  ./scripts/kafka.sh start || return 1
  export QUICSTRAP_KAFKA="127.0.0.1:${QUICSTRAP_KAFKA_PORT:-19092}"
  export QUICSTRAP_KAFKA_TLS="127.0.0.1:${QUICSTRAP_KAFKA_TLS_PORT:-$(( ${QUICSTRAP_KAFKA_PORT:-19092} + 2 ))}"
}
