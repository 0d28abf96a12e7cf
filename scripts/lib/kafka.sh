# shellcheck shell=bash
# Sourced by scripts/services.sh: the `kafka` test service (install_kafka, start_kafka,
# env_kafka, kafka_version). Uses the helpers of services.sh (spawn, free_port, live_pid,
# recorded_port, stop_pid, logfile, log) and SVC_DIR/EMPORIUM_ROOT of lib/venv.sh.
#
# kafka = a real Apache Kafka broker (KRaft, one node that is broker and controller), run
# from the jars of org.apache.kafka:kafka_2.13 that Maven resolves from Maven Central
# (scripts/kafka/pom.xml) into .services/kafka-libs. scripts/kafka-broker.sh starts one
# node in the foreground; tests that need brokers of their own (a 3-node cluster, a broker
# to kill -9) run that script too: `env kafka` exports its path and the jars' directory.
# The shared broker's log is kept in .services/kafka-data across restarts.

KAFKA_POM="$EMPORIUM_ROOT/scripts/kafka/pom.xml"
KAFKA_BROKER_SH="$EMPORIUM_ROOT/scripts/kafka-broker.sh"
KAFKA_LIBS_DIR="$SVC_DIR/kafka-libs"
KAFKA_DATA_DIR="$SVC_DIR/kafka-data"
KAFKA_MAVEN_DEP_PLUGIN=org.apache.maven.plugins:maven-dependency-plugin:3.8.1

# Version pinned in the POM (the jars installed are that version once install_kafka ran).
kafka_pom_version() {
    sed -n 's:.*<kafka\.version>\(.*\)</kafka\.version>.*:\1:p' "$KAFKA_POM"
}

# What .services/kafka-libs/.installed must say for the jars to be current: the Kafka
# version and a checksum of the POM (a changed POM, e.g. another log4j, reinstalls).
kafka_install_key() {
    echo "kafka=$(kafka_pom_version) pom=$(md5sum <"$KAFKA_POM" | cut -c1-32)"
}

kafka_installed() {
    [ -f "$KAFKA_LIBS_DIR/.installed" ] && [ "$(cat "$KAFKA_LIBS_DIR/.installed")" = "$(kafka_install_key)" ]
}

install_kafka() {
    if kafka_installed; then return 0; fi
    command -v java >/dev/null || apt_install openjdk-17-jre-headless
    command -v mvn >/dev/null || apt_install maven
    local key tmp mlog
    key="$(kafka_install_key)"
    tmp="$KAFKA_LIBS_DIR.tmp"
    mlog="$SVC_DIR/kafka-install.log"
    mkdir -p "$SVC_DIR"
    rm -rf "$tmp"
    log "resolving Apache Kafka $(kafka_pom_version) from Maven Central into $KAFKA_LIBS_DIR (mvn, ~45 MB)"
    # Only the dependency plugin runs: nothing is built. ~/.m2 is Maven's usual cache.
    if ! mvn -B -q -Dstyle.color=never -f "$KAFKA_POM" \
        "$KAFKA_MAVEN_DEP_PLUGIN:copy-dependencies" \
        -DincludeScope=runtime -DoutputDirectory="$tmp" >"$mlog" 2>&1; then
        tail -n 30 "$mlog" >&2
        rm -rf "$tmp"
        die "mvn could not resolve the Kafka jars (full output: $mlog)"
    fi
    compgen -G "$tmp/kafka_2.13-*.jar" >/dev/null || die "no kafka_2.13 jar after mvn (see $mlog)"
    echo "$key" >"$tmp/.installed"
    rm -rf "$KAFKA_LIBS_DIR"
    mv "$tmp" "$KAFKA_LIBS_DIR"
    log "Kafka jars in $KAFKA_LIBS_DIR ($key)"
}

# kafka_ready PORT: exit 0 once the broker on 127.0.0.1:PORT serves requests: it answers
# ApiVersions and then a Metadata request listing at least one broker. (The port is bound
# long before that: a KRaft broker accepts connections only once it is unfenced, but the
# kernel completes TCP handshakes on a bound socket, so an open port proves nothing.)
kafka_ready() {
    python3 - "$1" <<'PY'
import socket, struct, sys

def call(sock, key, version, corr, body=b""):
    client = b"emporium-services"
    msg = struct.pack(">hhih", key, version, corr, len(client)) + client + body
    sock.sendall(struct.pack(">i", len(msg)) + msg)
    def read(n):
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise EOFError("connection closed")
            buf += chunk
        return buf
    (size,) = struct.unpack(">i", read(4))
    resp = read(size)
    if struct.unpack(">i", resp[:4])[0] != corr:
        raise ValueError("correlation id mismatch")
    return resp[4:]

try:
    sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2)
    sock.settimeout(2)
    # ApiVersions v0: error code, then [api_key, min, max].
    resp = call(sock, 18, 0, 1)
    err, count = struct.unpack(">hi", resp[:6])
    if err != 0:
        sys.exit(1)
    versions = {}
    for i in range(count):
        key, lo, hi = struct.unpack(">hhh", resp[6 + 6 * i:12 + 6 * i])
        versions[key] = (lo, hi)
    # Metadata in a non-flexible version (4..8): all topics, no auto-creation.
    lo, hi = versions[3]
    version = max(lo, 4)
    if version > min(hi, 8):
        sys.exit(1)
    body = struct.pack(">ib", -1, 0) + (b"\0\0" if version >= 8 else b"")
    resp = call(sock, 3, version, 2, body)
    (brokers,) = struct.unpack(">i", resp[4:8])  # after throttle_time_ms
    sys.exit(0 if brokers >= 1 else 1)
except Exception:
    sys.exit(1)
PY
}

start_kafka() {
    local port cport pid i version
    port="$(free_port)"
    cport="$(free_port)"
    while [ "$cport" = "$port" ]; do cport="$(free_port)"; done
    # A log written by another Kafka version (the POM moved) is dropped, not upgraded.
    version="$(kafka_pom_version)"
    if [ -d "$KAFKA_DATA_DIR" ] && [ "$(cat "$KAFKA_DATA_DIR/.kafka-version" 2>/dev/null)" != "$version" ]; then
        log "dropping $KAFKA_DATA_DIR (written by another Kafka version)"
        rm -rf "$KAFKA_DATA_DIR"
    fi
    mkdir -p "$KAFKA_DATA_DIR"
    echo "$version" >"$KAFKA_DATA_DIR/.kafka-version"
    # env execs the script, which execs java: the pid spawn records is the broker's.
    spawn kafka "$port" env KAFKA_LIBS="$KAFKA_LIBS_DIR" "$KAFKA_BROKER_SH" \
        "$KAFKA_DATA_DIR" 1 "$port" "$cport" "1@127.0.0.1:$cport" || return 1
    pid="$(live_pid kafka)"
    for ((i = 0; i < WAIT_SECS * 5; i++)); do
        if kafka_ready "$port"; then
            log "kafka $version serves requests on 127.0.0.1:$port"
            return 0
        fi
        if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
            log "kafka exited while starting; last lines of $(logfile kafka):"
            tail -n 20 "$(logfile kafka)" >&2 || true
            stop_pid kafka
            return 1
        fi
        sleep 0.2
    done
    log "kafka on 127.0.0.1:$port did not serve requests within ${WAIT_SECS}s; see $(logfile kafka)"
    stop_pid kafka
    return 1
}

env_kafka() {
    # The broker script and its jars are enough for the suites that start brokers of their own.
    if kafka_installed; then
        printf 'export EMPORIUM_TEST_KAFKA_BROKER=%q\n' "$KAFKA_BROKER_SH"
        printf 'export KAFKA_LIBS=%q\n' "$KAFKA_LIBS_DIR"
    else
        log "Kafka jars not installed (scripts/services.sh install kafka); EMPORIUM_TEST_KAFKA_BROKER is not set"
    fi
    local port
    port="$(recorded_port kafka)"
    if [ -z "$(live_pid kafka)" ] || [ -z "$port" ]; then
        log "kafka is not running (scripts/services.sh start kafka); EMPORIUM_TEST_KAFKA is not set"
        return 0
    fi
    echo "export EMPORIUM_TEST_KAFKA=127.0.0.1:$port"
}

# kafka_version: the version the installed broker reports (kafka.Kafka --version), else
# the one the POM pins. Needs only lib/venv.sh and this file, so CI can print it with
#   bash -c '. scripts/lib/venv.sh && . scripts/lib/kafka.sh && kafka_version'
kafka_version() {
    local v=""
    if compgen -G "$KAFKA_LIBS_DIR/kafka_2.13-*.jar" >/dev/null; then
        v="$(java -Xshare:auto -XX:TieredStopAtLevel=1 -XX:+UseSerialGC \
            "-Dlog4j2.configurationFile=$EMPORIUM_ROOT/scripts/kafka/log4j2.properties" \
            -cp "$KAFKA_LIBS_DIR/*" kafka.Kafka --version 2>/dev/null | head -n 1)" || v=""
    fi
    if [ -n "$v" ]; then
        echo "Apache Kafka $v"
    else
        echo "Apache Kafka $(kafka_pom_version) (pinned in scripts/kafka/pom.xml; not installed)"
    fi
}
