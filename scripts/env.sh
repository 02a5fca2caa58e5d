# Sourced by the scripts: one cargo target dir outside the clone, shared by every checkout,
# so RocksDB's C++ build (~13 min cold on 2 cores) is paid once per machine.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/quicstrap-target}"
export PATH="$HOME/.cargo/bin:$PATH"
