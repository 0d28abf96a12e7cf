# shellcheck shell=bash
# Sourced by scripts/services.sh: the `redis` service (install_redis, start_redis,
# env_redis, redis_version). Only the benchmark's Redis-Lua yardstick uses it
# (`emporium-bench --redis`, default redis://127.0.0.1:6379); Emporium itself never
# does. On 127.0.0.1:6379 like MariaDB on 3306: an answering server there is used as is.

REDIS_PORT=6379

install_redis() {
    command -v redis-server >/dev/null || apt_install redis-server
}

start_redis() {
    if port_open 127.0.0.1 "$REDIS_PORT"; then
        log "redis already listening on 127.0.0.1:$REDIS_PORT (not started by this script)"
        return 0
    fi
    # No persistence: a yardstick for the benchmark, started empty every time.
    spawn redis "$REDIS_PORT" redis-server --bind 127.0.0.1 --port "$REDIS_PORT" \
        --save "" --appendonly no --daemonize no
}

# Nothing to export: the benchmark's --redis default is this address.
env_redis() {
    port_open 127.0.0.1 "$REDIS_PORT" || log "redis is not listening on 127.0.0.1:$REDIS_PORT"
}

redis_version() {
    redis-server --version | sed 's/ sha=.*//'
}
