#!/usr/bin/env bash
# One real Apache Kafka broker (KRaft, combined broker+controller) in the FOREGROUND.
#
#   scripts/kafka-broker.sh DATA_DIR NODE_ID PORT CONTROLLER_PORT VOTERS [key=value ...]
#
#   DATA_DIR         its own directory: server.properties and the log (DATA_DIR/log) live here
#   NODE_ID          node.id (1, 2, 3, ...), one of the ids in VOTERS
#   PORT             client listener, PLAINTEXT://127.0.0.1:PORT (also what is advertised)
#   CONTROLLER_PORT  KRaft controller listener, CONTROLLER://127.0.0.1:CONTROLLER_PORT
#   VOTERS           controller.quorum.voters, e.g. 1@127.0.0.1:9093 or
#                    1@127.0.0.1:9093,2@127.0.0.1:9095,3@127.0.0.1:9097 (same for every node)
#   key=value        extra broker settings, written last (they override the defaults below)
#
# Environment:
#   KAFKA_LIBS        the broker's jars (default: <repo>/.services/kafka-libs, which
#                     `scripts/services.sh install kafka` fills from Maven Central)
#   KAFKA_CLUSTER_ID  cluster id used when DATA_DIR is formatted for the first time; default:
#                     derived from VOTERS, so the nodes of one cluster agree without talking
#   KAFKA_HEAP_OPTS   default -Xms64m -Xmx384m
#   KAFKA_JVM_OPTS    more JVM options, appended
#   KAFKA_LOG_LEVEL   root log level (default WARN; start/stop lines are logged at INFO)
#
# The storage is formatted only when DATA_DIR/log has no meta.properties yet, so a broker
# killed with SIGKILL and started again with the same arguments comes back with its log.
# The last step execs java: the pid of this script is the broker's, and stopping that pid
# (TERM for a controlled shutdown, KILL for a crash) stops the broker.
set -euo pipefail

if [ "$#" -lt 5 ]; then
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
fi
DATA_DIR="$1" NODE_ID="$2" PORT="$3" CPORT="$4" VOTERS="$5"
shift 5

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KAFKA_LIBS="${KAFKA_LIBS:-$HERE/../.services/kafka-libs}"
if ! compgen -G "$KAFKA_LIBS/kafka_2.13-*.jar" >/dev/null; then
    echo "kafka-broker.sh: no Kafka jars in $KAFKA_LIBS (run: scripts/services.sh install kafka)" >&2
    exit 1
fi

mkdir -p "$DATA_DIR/log"
DATA_DIR="$(cd "$DATA_DIR" && pwd)"
PROPS="$DATA_DIR/server.properties"

# Replication follows the size of the quorum: one node gets 1 everywhere; three or more get
# RF 3 and min.insync.replicas 2 (acks=all survives one node down).
n_voters=$(($(tr -cd ',' <<<"$VOTERS" | wc -c) + 1))
if [ "$n_voters" -ge 3 ]; then rf=3 isr=2; elif [ "$n_voters" = 2 ]; then rf=2 isr=1; else rf=1 isr=1; fi

defaults() {
    echo "process.roles=broker,controller"
    echo "node.id=$NODE_ID"
    echo "controller.quorum.voters=$VOTERS"
    echo "listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CPORT"
    echo "advertised.listeners=PLAINTEXT://127.0.0.1:$PORT"
    echo "controller.listener.names=CONTROLLER"
    echo "inter.broker.listener.name=PLAINTEXT"
    echo "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
    echo "log.dirs=$DATA_DIR/log"
    echo "num.partitions=1"
    echo "default.replication.factor=$rf"
    echo "min.insync.replicas=$isr"
    echo "offsets.topic.num.partitions=1"
    echo "offsets.topic.replication.factor=$rf"
    echo "transaction.state.log.num.partitions=1"
    echo "transaction.state.log.replication.factor=$rf"
    echo "transaction.state.log.min.isr=$isr"
    echo "share.coordinator.state.topic.num.partitions=1"
    echo "share.coordinator.state.topic.replication.factor=$rf"
    echo "share.coordinator.state.topic.min.isr=$isr"
    echo "group.initial.rebalance.delay.ms=0"
    # A node that died is fenced (and its partitions get a new leader) after 3 s, not 9 s.
    echo "broker.heartbeat.interval.ms=500"
    echo "broker.session.timeout.ms=3000"
    # Few threads: test machines have two cores and several servers.
    echo "num.network.threads=2"
    echo "num.io.threads=2"
    echo "num.recovery.threads.per.data.dir=1"
    echo "background.threads=2"
}

# The defaults without the keys given as extra arguments, then the extra arguments.
{
    echo "# Written by scripts/kafka-broker.sh at every start; edits here are lost."
    defaults | awk -v keys="$(for kv in "$@"; do printf '%s ' "${kv%%=*}"; done)" '
        BEGIN { n = split(keys, k, " "); for (i = 1; i <= n; i++) skip[k[i]] = 1 }
        !(substr($0, 1, index($0, "=") - 1) in skip)'
    for kv in "$@"; do printf '%s\n' "$kv"; done
} >"$PROPS.tmp"
mv "$PROPS.tmp" "$PROPS"

CP="$KAFKA_LIBS/*"
JAVA="${JAVA_HOME:+$JAVA_HOME/bin/}java"
# Start-up is what tests wait for: C1 only, the serial collector and a small heap start
# fastest on two cores and are plenty for test traffic.
# shellcheck disable=SC2206 # the *_OPTS variables are word lists on purpose
JVM=(${KAFKA_HEAP_OPTS:--Xms64m -Xmx384m}
    -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xshare:auto -XX:-UsePerfData
    -Djava.awt.headless=true
    "-Dlog4j2.configurationFile=$HERE/kafka/log4j2.properties"
    "-Dkafka.root.log.level=${KAFKA_LOG_LEVEL:-WARN}"
    ${KAFKA_JVM_OPTS:-})

if [ ! -s "$DATA_DIR/log/meta.properties" ]; then
    cluster_id="${KAFKA_CLUSTER_ID:-}"
    if [ -z "$cluster_id" ]; then
        # 16 bytes of md5(VOTERS) in URL-safe base64 without padding: Kafka's Uuid format.
        hex="$(printf '%s' "$VOTERS" | md5sum | cut -c1-32)"
        # shellcheck disable=SC2059,SC2001 # the format is the point: \xNN escapes
        cluster_id="$(printf "$(sed 's/../\\x&/g' <<<"$hex")" | base64 | tr '+/' '-_' | tr -d '=\n')"
    fi
    echo "kafka-broker.sh: formatting $DATA_DIR/log (cluster id $cluster_id, node $NODE_ID)"
    # `--cluster-id=…` in one word: an id may start with `-` (base64url of a hash), which
    # the tool's argument parser would take for an option if it came as its own word.
    "$JAVA" "${JVM[@]}" -cp "$CP" kafka.tools.StorageTool format \
        "--cluster-id=$cluster_id" -c "$PROPS" --ignore-formatted
fi

exec "$JAVA" "${JVM[@]}" -cp "$CP" kafka.Kafka "$PROPS"
