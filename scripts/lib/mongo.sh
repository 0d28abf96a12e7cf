# shellcheck shell=bash
# Sourced by scripts/services.sh: the `mongo` test service (install_mongo, start_mongo,
# env_mongo, mongo_version).
#
# FerretDB v1 (a real MongoDB wire-protocol server, Apache-2.0) on its SQLite backend,
# embedded in the small Go program scripts/ferretdb/ (see its main.go for why not
# `go install .../cmd/ferretdb`). Built with the local Go toolchain from the Go module
# proxy into .services/ferretdb/ferretdb (git-ignored); rebuilt only when its sources
# (go.mod, go.sum, main.go) or the Go version change. Module and build caches are Go's
# own (~/go/pkg/mod, ~/.cache/go-build), outside the checkout.
#
# Every start gets a fresh data directory (.services/ferretdb-data): like the in-memory
# servers before it, a restarted mongo is empty.
#
#   FERRETDB_LOG_LEVEL       debug|info|warn|error for .services/mongo.log (default warn:
#                            failed commands are logged with their reply)
#   FERRETDB_SQLITE_OPTIONS  query added to the SQLite URI (default _pragma=synchronous(off))
#
# Known FerretDB v1.24.2 gaps the catalog must live with (checked with pymongo):
# no multi-document transactions, no pipeline updates, and createIndexes with two or
# more already-existing indexes in one call drops the connection (a server panic);
# queries are filtered in FerretDB, not by SQLite indexes, except {_id: <string>}.

FERRETDB_SRC="$EMPORIUM_ROOT/scripts/ferretdb"
FERRETDB_BIN="$SVC_DIR/ferretdb/ferretdb"
FERRETDB_STAMP="$SVC_DIR/ferretdb/build.stamp"
FERRETDB_DATA="$SVC_DIR/ferretdb-data"

# What the binary is built from: the module files and the Go version (a toolchain upgrade rebuilds).
ferretdb_build_id() {
    {
        go version
        cat "$FERRETDB_SRC/go.mod" "$FERRETDB_SRC/go.sum" "$FERRETDB_SRC/main.go"
    } | sha256sum | cut -d' ' -f1
}

install_mongo() {
    command -v go >/dev/null || die "mongo (FerretDB) needs the Go toolchain (go >= 1.24) on PATH"
    local id
    id="$(ferretdb_build_id)"
    if [ -x "$FERRETDB_BIN" ] && [ -s "$FERRETDB_STAMP" ] && [ "$(cat "$FERRETDB_STAMP")" = "$id" ]; then
        return 0
    fi
    mkdir -p "$(dirname "$FERRETDB_BIN")"
    log "building FerretDB from scripts/ferretdb into $FERRETDB_BIN (with empty Go caches: ~2 min of downloads and compiling)"
    local started=$SECONDS
    # -mod=readonly: go.sum is committed and must not change. CGO_ENABLED=0: the SQLite
    # driver (modernc.org/sqlite) is pure Go, so no C compiler is needed. -buildvcs=false:
    # the binary does not depend on the state of this checkout's git.
    if ! (cd "$FERRETDB_SRC" && CGO_ENABLED=0 GOFLAGS=-mod=readonly \
        go build -buildvcs=false -trimpath -o "$FERRETDB_BIN.tmp" . >&2); then
        rm -f "$FERRETDB_BIN.tmp"
        die "go build of scripts/ferretdb failed"
    fi
    mv -f "$FERRETDB_BIN.tmp" "$FERRETDB_BIN"
    echo "$id" >"$FERRETDB_STAMP"
    log "built $("$FERRETDB_BIN" -version) in $((SECONDS - started)) s"
}

start_mongo() {
    local port pid
    port="$(free_port)"
    rm -rf "$FERRETDB_DATA"
    mkdir -p "$FERRETDB_DATA"
    spawn mongo "$port" "$FERRETDB_BIN" -listen-addr "127.0.0.1:$port" -data-dir "$FERRETDB_DATA" \
        -log-level "${FERRETDB_LOG_LEVEL:-warn}" || return 1
    # FerretDB opens its backend before it binds the port, so an open port already means
    # ready; still ask the way a driver would (hello, ping) before telling anyone.
    if ! "$FERRETDB_BIN" -probe "127.0.0.1:$port" -timeout "${WAIT_SECS}s" >/dev/null; then
        pid="$(live_pid mongo)"
        log "mongo (pid ${pid:-gone}) does not answer hello/ping on 127.0.0.1:$port; last lines of $(logfile mongo):"
        tail -n 20 "$(logfile mongo)" >&2 || true
        stop_pid mongo
        return 1
    fi
}

env_mongo() {
    local port
    port="$(recorded_port mongo)"
    if [ -z "$(live_pid mongo)" ] || [ -z "$port" ]; then
        log "mongo is not running (scripts/services.sh start mongo); EMPORIUM_TEST_MONGO_URL is not set"
        return 0
    fi
    echo "export EMPORIUM_TEST_MONGO_URL=mongodb://127.0.0.1:$port"
}

# For CI logs: what the built binary is (FerretDB module version, SQLite library, Go)
# and, when it runs, what the server answers (buildInfo: FerretDB version, the MongoDB
# version it claims; the backend's version once a database was opened) and its backend.
mongo_version() {
    local port
    if [ ! -x "$FERRETDB_BIN" ]; then
        echo "FerretDB not built (scripts/services.sh install mongo)"
        return 0
    fi
    "$FERRETDB_BIN" -version
    port="$(recorded_port mongo)"
    if [ -n "$(live_pid mongo)" ] && [ -n "$port" ]; then
        echo "running on 127.0.0.1:$port: $("$FERRETDB_BIN" -probe "127.0.0.1:$port" -timeout 10s)"
        echo "started as: $(head -n 1 "$(logfile mongo)")"
    fi
}
