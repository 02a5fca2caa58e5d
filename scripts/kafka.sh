#!/usr/bin/env bash
# Runs a real single-node Apache Kafka broker (KRaft, broker+controller in one JVM) on 127.0.0.1
# for integration tests. Listeners: PLAINTEXT on $QUICSTRAP_KAFKA_PORT (default 19092, also the
# inter-broker listener), CONTROLLER on PORT+1, and SSL (TLS, no client certificates) on
# $QUICSTRAP_KAFKA_TLS_PORT (default PORT+2) serving certs-dev/server.crt (SAN localhost,
# 127.0.0.1; trust certs-dev/ca.crt). The server key+cert are copied into a PEM keystore in
# $QUICSTRAP_KAFKA_HOME at every start/resume; nothing is written into the clone.
#   scripts/kafka.sh start   fetch jars if needed (Maven Central via mvn), format a fresh data dir,
#                            start in the background, wait until ready
#   scripts/kafka.sh resume  start again on the data of the last run (a broker coming back)
#   scripts/kafka.sh stop    SIGTERM, SIGKILL after a bounded wait; exit 0 if not running
#   scripts/kafka.sh status  exit 0 if running
# Everything lives outside the clone in $QUICSTRAP_KAFKA_HOME (libs/ cache, data/, logs/,
# server.properties, server.pem).
set -euo pipefail

KAFKA_VERSION=4.2.0
HOME_DIR="${QUICSTRAP_KAFKA_HOME:-/var/tmp/quicstrap-kafka}"
PORT="${QUICSTRAP_KAFKA_PORT:-19092}"
CONTROLLER_PORT="${QUICSTRAP_KAFKA_CONTROLLER_PORT:-$((PORT + 1))}"
TLS_PORT="${QUICSTRAP_KAFKA_TLS_PORT:-$((PORT + 2))}"
CERTS="$(cd "$(dirname "$0")/.." && pwd)/certs-dev"
LIBS="$HOME_DIR/libs" DATA="$HOME_DIR/data" LOGS="$HOME_DIR/logs" PIDFILE="$HOME_DIR/kafka.pid"
KEYSTORE="$HOME_DIR/server.pem"
LISTENERS="PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT,SSL://127.0.0.1:$TLS_PORT"
WAIT_SECS=90

die() { echo "kafka.sh: $*" >&2; exit 1; }

pid() { # prints the broker pid if it is running
  local p
  p=$(cat "$PIDFILE" 2>/dev/null) || return 1
  grep -qs kafka.Kafka "/proc/$p/cmdline" && echo "$p"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

fetch() { # copies kafka_2.13 + runtime deps + a log4j2 slf4j binding into $LIBS, once
  [[ -f "$LIBS/.complete-$KAFKA_VERSION" ]] && return
  echo "fetching Kafka $KAFKA_VERSION jars from Maven Central into $LIBS ..."
  local tmp; tmp=$(mktemp -d)
  cat >"$tmp/pom.xml" <<EOF
<project><modelVersion>4.0.0</modelVersion>
  <groupId>local</groupId><artifactId>kafka-fetch</artifactId><version>0</version>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>2.25.3</version></dependency>
  </dependencies>
</project>
EOF
  (cd "$tmp" && mvn -B dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp/libs" >"$tmp/mvn.log" 2>&1) \
    || { tail -n 30 "$tmp/mvn.log" >&2; rm -rf "$tmp"; die "mvn fetch failed"; }
  rm -rf "$LIBS" && mkdir -p "$HOME_DIR" && mv "$tmp/libs" "$LIBS" && rm -rf "$tmp"
  touch "$LIBS/.complete-$KAFKA_VERSION"
}

write_keystore() { # the PEM keystore of the SSL listener: PKCS#8 key + certificate, from certs-dev
  local f
  for f in server.key server.crt; do [[ -r "$CERTS/$f" ]] || die "missing $CERTS/$f"; done
  # Unencrypted key, so no ssl.key.password: Kafka only decrypts when a key password is set.
  (umask 077 && cat "$CERTS/server.key" "$CERTS/server.crt" >"$KEYSTORE.tmp") && mv "$KEYSTORE.tmp" "$KEYSTORE"
}

write_config() {
  cat >"$HOME_DIR/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CONTROLLER_PORT
listeners=$LISTENERS
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT,SSL://127.0.0.1:$TLS_PORT
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SSL:SSL
inter.broker.listener.name=PLAINTEXT
ssl.keystore.type=PEM
ssl.keystore.location=$KEYSTORE
ssl.client.auth=none
log.dirs=$DATA
num.partitions=1
auto.create.topics.enable=true
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
min.insync.replicas=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.hours=-1
log.retention.bytes=-1
EOF
  cat >"$HOME_DIR/log4j2.properties" <<EOF
appender.file.type=File
appender.file.name=file
appender.file.fileName=$LOGS/server.log
appender.file.layout.type=PatternLayout
appender.file.layout.pattern=[%d] %p %m (%c)%n
rootLogger.level=INFO
rootLogger.appenderRef.file.ref=file
EOF
}

fail() {
  echo "kafka.sh: $*; last lines of $LOGS/server.log, then its first errors:" >&2
  tail -n 30 "$LOGS/server.log" "$LOGS/stdout.log" >&2 2>/dev/null || true
  grep -sE -A1 'ERROR|FATAL' "$LOGS/server.log" | head -n 6 >&2 || true
  stop >/dev/null; exit 1
}

alive() { # the process exists and is not a zombie; unlike pid(), true before nohup execs java
  local _pid _comm state
  read -r _pid _comm state _ 2>/dev/null <"/proc/$1/stat" && [[ $state != Z ]]
}

launch() { # launch JAVA...: start the broker, wait until it serves; 1 if it exited meanwhile
  : >"$LOGS/server.log"
  nohup "$@" kafka.Kafka "$HOME_DIR/server.properties" >"$LOGS/stdout.log" 2>&1 </dev/null &
  local p=$!
  echo "$p" >"$PIDFILE"
  until port_open "$PORT" && port_open "$TLS_PORT" && grep -qs 'Kafka Server started' "$LOGS/server.log"; do
    alive "$p" || { wait "$p" 2>/dev/null; return 1; }
    (( SECONDS - t0 < WAIT_SECS )) || fail "broker not ready after ${WAIT_SECS}s"
    sleep 0.5
  done
}

start() { # start [keep]: "keep" restarts on the existing data (a broker coming back)
  if p=$(pid); then echo "kafka already running on 127.0.0.1:$PORT (pid $p)"; return; fi
  local keep=${1:-}
  for p in "$PORT" "$CONTROLLER_PORT" "$TLS_PORT"; do
    port_open "$p" && die "127.0.0.1:$p is already in use by another process"
  done
  fetch
  local t0=$SECONDS java=(java -Xms256m -Xmx512m -Dlog4j2.configurationFile="$HOME_DIR/log4j2.properties" -cp "$LIBS/*")
  if [[ "$keep" == keep && -f "$DATA/meta.properties" ]]; then
    mkdir -p "$LOGS" && : >"$LOGS/server.log"
    write_keystore # certs-dev may have been remade since the first start
    # A home from before the SSL listener (or with other ports): the config is a function of the
    # ports and paths only (the cluster id is in data/meta.properties), so write it again.
    grep -qsxF "listeners=$LISTENERS" "$HOME_DIR/server.properties" \
      && grep -qsxF "ssl.keystore.location=$KEYSTORE" "$HOME_DIR/server.properties" \
      || { echo "kafka.sh: rewriting $HOME_DIR/server.properties for resume"; write_config; }
  else
    rm -rf "$DATA" "$LOGS" && mkdir -p "$DATA" "$LOGS"
    write_keystore
    write_config
    # A random base64url id; never one starting with '-', which the tool's argument parser
    # takes for an option (1 start in 64 failed with "expected one argument").
    local cluster_id=-
    while [ "${cluster_id#-}" != "$cluster_id" ]; do
      cluster_id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | cut -c1-22)
    done
    "${java[@]}" kafka.tools.StorageTool format -t "$cluster_id" -c "$HOME_DIR/server.properties" >"$LOGS/format.log" 2>&1 \
      || { cat "$LOGS/format.log" >&2; die "storage format failed"; }
  fi
  local try
  for try in 1 2; do
    launch "${java[@]}" && break
    # Exited with nothing in its log (seen once on a loaded host): one more go on the same data.
    [[ $try == 1 ]] || fail "broker exited during startup"
    echo "kafka.sh: broker exited during startup; last lines of its logs, then one retry:" >&2
    tail -n 5 "$LOGS/server.log" "$LOGS/stdout.log" >&2 2>/dev/null || true
  done
  echo "kafka ready on 127.0.0.1:$PORT (tls 127.0.0.1:$TLS_PORT) (pid $(cat "$PIDFILE"), $((SECONDS - t0))s)"
}

stop() {
  local p t0=$SECONDS
  p=$(pid) || { echo "kafka not running"; rm -f "$PIDFILE"; return 0; }
  kill "$p"
  while pid >/dev/null; do # not kill -0: that also succeeds on a zombie
    (( SECONDS - t0 < 30 )) || { echo "kafka did not stop in 30s, killing"; kill -9 "$p"; t0=$SECONDS; }
    sleep 0.5
  done
  rm -f "$PIDFILE"
  echo "kafka stopped"
}

case "${1:-}" in
  start) start ;;
  resume) start keep ;;
  stop) stop ;;
  status) if p=$(pid); then echo "kafka running on 127.0.0.1:$PORT (tls 127.0.0.1:$TLS_PORT) (pid $p)"; else echo "kafka not running"; exit 1; fi ;;
  *) die "usage: $0 start|resume|stop|status" ;;
esac
