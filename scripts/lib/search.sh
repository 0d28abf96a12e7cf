# shellcheck shell=bash
# Sourced by scripts/services.sh: the `search` test service (install_search, start_search,
# env_search, search_version). Uses the helpers of services.sh (spawn, free_port, live_pid,
# recorded_port, stop_pid, log) and SVC_DIR / EMPORIUM_ROOT of lib/venv.sh.
#
# A real OpenSearch 2.19 node (single-node cluster on 127.0.0.1) with Korean analysis:
# the jars come from Maven Central (scripts/opensearch/pom.xml, resolved by Maven into
# ~/.m2 and copied to .services/opensearch-libs), the node is started by
# scripts/opensearch/src/emporium/search/EmporiumSearchNode.java with its plugins on the
# classpath (Netty HTTP/transport, analysis-common, and EmporiumNoriPlugin: nori_tokenizer,
# nori_part_of_speech, nori_readingform, nori_number and the nori analyzer on Lucene's Nori,
# because OpenSearch's analysis-nori plugin is not on Maven Central). Needs Java 17+
# (`java`, `javac`) and Maven (`mvn`). Like the other test servers it starts empty: its
# data directory is wiped on every start.
#
# Environment: SEARCH_JAVA_OPTS  JVM options (default: -Xms512m -Xmx512m)
#              SEARCH_JAVA_HOME  a JDK to run it with instead of `java`/`javac` on PATH

SEARCH_SRC="$EMPORIUM_ROOT/scripts/opensearch"
SEARCH_LIBS="$SVC_DIR/opensearch-libs"
SEARCH_CLASSES="$SVC_DIR/opensearch-classes"
SEARCH_HOME="$SVC_DIR/opensearch-home"
SEARCH_DATA="$SVC_DIR/opensearch-data"
SEARCH_MAIN=emporium.search.EmporiumSearchNode
SEARCH_DEPENDENCY_PLUGIN=org.apache.maven.plugins:maven-dependency-plugin:3.8.1

search_java() { echo "${SEARCH_JAVA_HOME:+$SEARCH_JAVA_HOME/bin/}$1"; }

# Content hash of the files a step depends on: a step re-runs only when it changes.
search_stamp() { cat "$@" | sha256sum | cut -d' ' -f1; }

install_search() {
    mkdir -p "$SVC_DIR"
    if ! command -v "$(search_java javac)" >/dev/null; then apt_install openjdk-17-jdk-headless; fi
    if ! command -v mvn >/dev/null; then apt_install maven; fi

    # 1. The jars: only when the pom changed since the last complete copy.
    local pom="$SEARCH_SRC/pom.xml" want
    want="$(search_stamp "$pom")"
    if [ "$(cat "$SEARCH_LIBS/.complete" 2>/dev/null)" != "$want" ]; then
        log "resolving OpenSearch jars from Maven Central (scripts/opensearch/pom.xml) into $SEARCH_LIBS"
        rm -rf "$SEARCH_LIBS" "$SEARCH_LIBS.tmp" "$SEARCH_CLASSES"
        # Maven's output goes to a file (even -B -q prints colour codes); shown on failure.
        if ! mvn -B -q -f "$pom" "$SEARCH_DEPENDENCY_PLUGIN:copy-dependencies" \
            -DincludeScope=runtime -DoutputDirectory="$SEARCH_LIBS.tmp" >"$SVC_DIR/opensearch-mvn.log" 2>&1; then
            sed 's/\x1b\[[0-9;]*m//g' "$SVC_DIR/opensearch-mvn.log" | tail -n 30 >&2
            die "mvn could not resolve the OpenSearch jars (scripts/opensearch/pom.xml); see $SVC_DIR/opensearch-mvn.log"
        fi
        mv "$SEARCH_LIBS.tmp" "$SEARCH_LIBS"
        echo "$want" >"$SEARCH_LIBS/.complete"
    fi

    # 2. The node and the Nori plugin: compiled only when a source (or the jars) changed.
    local sources=()
    mapfile -t sources < <(find "$SEARCH_SRC/src" -name '*.java' | sort)
    want="$(search_stamp "$pom" "${sources[@]}")"
    if [ "$(cat "$SEARCH_CLASSES/.complete" 2>/dev/null)" != "$want" ]; then
        log "compiling scripts/opensearch/src into $SEARCH_CLASSES"
        rm -rf "$SEARCH_CLASSES" "$SEARCH_CLASSES.tmp"
        "$(search_java javac)" -encoding UTF-8 -nowarn -cp "$SEARCH_LIBS/*" -d "$SEARCH_CLASSES.tmp" "${sources[@]}" >&2 \
            || die "javac failed on scripts/opensearch/src"
        mv "$SEARCH_CLASSES.tmp" "$SEARCH_CLASSES"
        echo "$want" >"$SEARCH_CLASSES/.complete"
    fi
}

# search_http PORT PATH [METHOD BODY]: one request to http://127.0.0.1:PORT/PATH (GET, or
# METHOD with a JSON BODY); prints the answer, fails on no answer or a non-2xx status.
search_http() {
    python3 - "$@" <<'EOF'
import sys, urllib.request
port, path = sys.argv[1], sys.argv[2]
method = sys.argv[3] if len(sys.argv) > 3 else "GET"
body = sys.argv[4].encode() if len(sys.argv) > 4 else None
req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method,
                             headers={"Content-Type": "application/json"})
try:
    with urllib.request.urlopen(req, timeout=90) as r:
        sys.stdout.write(r.read().decode())
except Exception as e:
    sys.stderr.write(f"{method} {path}: {e}\n")
    sys.exit(1)
EOF
}

start_search() {
    local port health
    port="$(free_port)"
    rm -rf "$SEARCH_DATA"
    mkdir -p "$SEARCH_HOME/tmp"
    # The JVM options a packaged OpenSearch sets in config/jvm.options that matter here;
    # a small fixed heap for a test node. `spawn` execs java: its pid is the recorded one.
    # shellcheck disable=SC2086 # SEARCH_JAVA_OPTS is a list of options
    spawn search "$port" "$(search_java java)" \
        ${SEARCH_JAVA_OPTS:--Xms512m -Xmx512m} \
        -XX:+UseG1GC -XX:-OmitStackTraceInFastThrow \
        -Dfile.encoding=UTF-8 -Djava.locale.providers=SPI,COMPAT \
        -Djava.io.tmpdir="$SEARCH_HOME/tmp" -Djna.nosys=true \
        -Dio.netty.noUnsafe=true -Dio.netty.noKeySetOptimization=true \
        -Dio.netty.recycler.maxCapacityPerThread=0 \
        -Dlog4j.shutdownHookEnabled=false -Dlog4j2.disable.jmx=true -Dlog4j2.formatMsgNoLookups=true \
        -cp "$SEARCH_CLASSES:$SEARCH_LIBS/*" "$SEARCH_MAIN" \
        --http-port "$port" --data "$SEARCH_DATA" --home "$SEARCH_HOME" \
        --config "$SEARCH_SRC/config" || return 1
    # An open port is not a ready node: wait until the cluster state is recovered.
    if ! health="$(search_http "$port" '/_cluster/health?wait_for_status=yellow&timeout=60s')" \
        || ! grep -q '"status":"\(green\|yellow\)"' <<<"$health" \
        || grep -q '"timed_out":true' <<<"$health"; then
        log "search on 127.0.0.1:$port did not become healthy: ${health:-no answer}; last lines of $(logfile search):"
        tail -n 20 "$(logfile search)" >&2 || true
        stop_pid search
        return 1
    fi
    # One node: a replica could never be assigned, and every index would stay yellow.
    # Indices that set no number_of_replicas get none (this is read from the cluster's
    # settings when an index is created; as a node setting it is ignored).
    search_http "$port" /_cluster/settings PUT '{"persistent":{"cluster.default_number_of_replicas":0}}' >/dev/null \
        || log "could not set cluster.default_number_of_replicas=0; new indices will stay yellow"
    log "search healthy: $(search_version)"
}

env_search() {
    local port
    port="$(recorded_port search)"
    if [ -z "$(live_pid search)" ] || [ -z "$port" ]; then
        log "search is not running (scripts/services.sh start search); EMPORIUM_TEST_ES_URL is not set"
        return 0
    fi
    echo "export EMPORIUM_TEST_ES_URL=http://127.0.0.1:$port"
}

# The engine's version, e.g. "OpenSearch 2.19.6 (Lucene 9.12.3, ...)": asked of the running
# node when there is one, else of the installed jars.
search_version() {
    local port pid body
    port="$(recorded_port search)"
    pid="$(live_pid search)"
    if [ -n "$pid" ] && [ -n "$port" ] && body="$(search_http "$port" /)"; then
        python3 -c 'import json, sys
v = json.load(sys.stdin)["version"]
print("OpenSearch %s (Lucene %s, Korean analysis from lucene-analysis-nori %s)"
      % (v["number"], v["lucene_version"], v["lucene_version"]))' <<<"$body"
        return
    fi
    if [ ! -s "$SEARCH_CLASSES/.complete" ]; then
        log "search is not installed (scripts/services.sh install search)"
        return 1
    fi
    "$(search_java java)" -cp "$SEARCH_CLASSES:$SEARCH_LIBS/*" "$SEARCH_MAIN" --version
}
