# shellcheck shell=bash
# Sourced by scripts/services.sh: the `mongo` test service (install_mongo, start_mongo, env_mongo).

# NX-27017 storage: "--db memory" is the mode checked in TEST-SERVICES.md.
NX_27017_ARGS="${NX_27017_ARGS:---db memory}"

install_mongo() { pip_ensure nx-27017; }

start_mongo() {
    local port
    port="$(free_port)"
    # shellcheck disable=SC2086 # NX_27017_ARGS is a word list on purpose
    spawn mongo "$port" "$VENV/bin/nx-27017" $NX_27017_ARGS --host 127.0.0.1 -p "$port" \
        --log-file "$SVC_DIR/mongo-server.log" --pid-file "$SVC_DIR/mongo-server.pid"
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
