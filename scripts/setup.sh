#!/usr/bin/env bash
# Installs what building and testing quicstrap needs on a fresh Debian/Ubuntu machine:
# libclang for RocksDB's bindings, a C/C++ toolchain, OpenSSL headers (librdkafka's TLS to brokers),
# Java and Maven for the test Kafka broker,
# curl (the HTTPS baseline is tested with it), iproute2 (namespaces of the link emulator) and
# dnsmasq (the DNS server the SRV discovery tests ask); python3 (scripts/chaos.sh tabulates with it).
# Idempotent: does nothing that is already done.
set -euo pipefail

need=()
for pkg in libclang-dev clang g++ make pkg-config openssl libssl-dev zlib1g-dev curl iproute2 dnsmasq-base python3; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
# The test broker is Apache Kafka, run from its Maven Central jars: Java 17+ and Maven.
command -v java >/dev/null 2>&1 || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || need+=(maven)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "setup: installing ${need[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "setup: cargo not found; install Rust from your distribution or rustup" >&2
    exit 1
  fi
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true
