# shellcheck shell=bash
# Sourced by scripts/services.sh: the `search` test service (install_search, start_search, env_search).

bin_osmem() { echo "$(venv_site)/osmem_server/bin/osmem-server"; }

install_search() {
    pip_ensure osmem-server
    chmod +x "$(bin_osmem)"
}

start_search() {
    local port
    port="$(free_port)"
    # -no-stdin-watch: otherwise osmem exits when its stdin (here /dev/null) closes.
    spawn search "$port" "$(bin_osmem)" -addr "127.0.0.1:$port" -no-stdin-watch
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
