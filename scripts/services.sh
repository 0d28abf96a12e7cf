#!/usr/bin/env bash
# Test servers for the backend integration tests (docs/test-services.md).
#
#   scripts/services.sh start  [kafka|mongo|search|mysql|redis|all]...   install if needed, start, wait
#   scripts/services.sh stop   [kafka|mongo|search|mysql|redis|all]...   stop what this script started
#   scripts/services.sh status [kafka|mongo|search|mysql|redis|all]...   exit 1 if one is not up
#   scripts/services.sh env    [kafka|mongo|search|mysql|redis|all]...   print shell exports for tests
#   scripts/services.sh versions [kafka|mongo|search|mysql|redis|all]... each server's own version
#   scripts/services.sh install [kafka|mongo|search]...            fetch and build, start nothing
#
#   eval "$(scripts/services.sh env)"   # then: cargo test ...
#
# kafka  = Apache Kafka 4.x (KRaft), jars from Maven Central (scripts/kafka/pom.xml); one
#          shared broker, plus scripts/kafka-broker.sh for brokers of a test's own
# mongo  = FerretDB v1 (MongoDB wire protocol) on SQLite, built from the Go module proxy
#          (scripts/ferretdb/)
# search = OpenSearch 2.19 with Korean Nori analysis, jars from Maven Central, on Java 17
#          (scripts/opensearch/)
# mysql  = MariaDB from Debian on 127.0.0.1:3306 (root, no password, database `test`);
#          installed and started here when the port is closed
# redis  = Redis from Debian on 127.0.0.1:6379, for the benchmark's Redis-Lua yardstick only
#
# Downloads stay outside the repo (~/.m2, the Go caches); what is built from them, the
# servers' data, pid, port and log live in .services/ (git-ignored). Each server gets a
# free port picked at start. Nothing is ever stopped by name: only the pids recorded here
# (and MariaDB only if this script started it). See docs/test-services.md.
set -euo pipefail

LOG_TAG=services # read by log() in lib/venv.sh
export LOG_TAG
# shellcheck source-path=SCRIPTDIR source=lib/venv.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/venv.sh"

ALL_SERVICES=(kafka mongo search mysql redis)
MYSQL_HOST=127.0.0.1
MYSQL_PORT=3306
WAIT_SECS="${SERVICES_WAIT_SECS:-60}"


# ---------------------------------------------------------------- helpers

port_open() { # port_open HOST PORT
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

free_port() {
    # Ask the kernel for a free ephemeral port. A tiny race (someone else takes it before
    # the server binds) is possible; start() then fails loudly and can simply be re-run.
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

pidfile()  { echo "$SVC_DIR/$1.pid"; }
portfile() { echo "$SVC_DIR/$1.port"; }
logfile()  { echo "$SVC_DIR/$1.log"; }

# pid recorded for NAME if that process is still alive, else empty.
live_pid() {
    local f pid
    f="$(pidfile "$1")"
    [ -s "$f" ] || return 0
    pid="$(cat "$f")"
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then echo "$pid"; fi
}

recorded_port() {
    local f
    f="$(portfile "$1")"
    if [ -s "$f" ]; then cat "$f"; fi
}

wait_port() { # wait_port NAME PORT PID
    local name="$1" port="$2" pid="$3" i
    for ((i = 0; i < WAIT_SECS * 10; i++)); do
        if port_open 127.0.0.1 "$port"; then return 0; fi
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
            log "$name exited before listening; last lines of $(logfile "$name"):"
            tail -n 20 "$(logfile "$name")" >&2 || true
            return 1
        fi
        sleep 0.1
    done
    log "$name did not answer on 127.0.0.1:$port within ${WAIT_SECS}s; see $(logfile "$name")"
    return 1
}

# spawn NAME PORT CMD...: start CMD detached in its own session, record pid and port.
spawn() {
    local name="$1" port="$2"
    shift 2
    local pf
    pf="$(pidfile "$name")"
    rm -f "$pf"
    # setsid: own session/process group, so the server survives the calling shell and can
    # be stopped as a group by its recorded pid. The inner shell writes its own pid and
    # then execs the server, so the recorded pid is the server's.
    # shellcheck disable=SC2016 # $$ and $@ belong to the inner shell
    setsid bash -c 'echo $$ > "$0"; exec "$@"' "$pf" "$@" \
        </dev/null >"$(logfile "$name")" 2>&1 9>&- &   # 9>&-: do not inherit the lock
    local i
    for ((i = 0; i < 50; i++)); do [ -s "$pf" ] && break; sleep 0.1; done
    echo "$port" >"$(portfile "$name")"
    local pid
    pid="$(cat "$pf" 2>/dev/null || true)"
    if ! wait_port "$name" "$port" "$pid"; then
        stop_pid "$name"
        return 1
    fi
    log "$name up on 127.0.0.1:$port (pid $pid, log $(logfile "$name"))"
}

stop_pid() { # stop the recorded process group of NAME: TERM, then KILL after 10 s
    local name="$1" pid i
    pid="$(live_pid "$name")"
    if [ -n "$pid" ]; then
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            log "$name (pid $pid) ignored SIGTERM; sending SIGKILL"
            kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
        fi
        log "$name stopped (pid $pid)"
    fi
    rm -f "$(pidfile "$name")" "$(portfile "$name")"
}

# ---------------------------------------------------------------- per service

# The per-service functions (install_NAME, start_NAME, env_NAME) live in lib/NAME.sh.
# shellcheck source-path=SCRIPTDIR source=lib/kafka.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/kafka.sh"
# shellcheck source-path=SCRIPTDIR source=lib/mongo.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/mongo.sh"
# shellcheck source-path=SCRIPTDIR source=lib/search.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/search.sh"
# shellcheck source-path=SCRIPTDIR source=lib/redis.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/redis.sh"

# MariaDB is a system service, not ours: use it when 3306 answers; start it only if closed.
start_mysql() {
    if port_open "$MYSQL_HOST" "$MYSQL_PORT"; then
        log "mysql already listening on $MYSQL_HOST:$MYSQL_PORT (not started by this script)"
        return 0
    fi
    if [ ! -x /usr/sbin/mariadbd ]; then
        apt_install mariadb-server mariadb-client
    fi
    # A mariadbd that runs but does not listen yet (still starting, recovering) must not get
    # a twin fighting over the datadir lock. (With --pidfile, start-stop-daemon would only
    # look for the process of our pidfile, so ask about the executable separately.)
    if start-stop-daemon --status --exec /usr/sbin/mariadbd; then
        log "mariadbd is running but $MYSQL_HOST:$MYSQL_PORT is closed; waiting for it"
        wait_port mysql "$MYSQL_PORT" "" || return 1
        return 0
    fi
    # The socket/pid directory lives on a tmpfs on most machines and vanishes on reboot.
    as_root install -d -o mysql -g mysql /run/mysqld
    log "starting MariaDB (/usr/sbin/mariadbd, user from /etc/mysql config)"
    # --user: mariadbd refuses to run as root, and Debian's config names no user for the
    # server. Errors go to the datadir's log (the mysql user cannot write under .services).
    # skip-name-resolve: a TCP client is root@127.0.0.1, not root@localhost (unix_socket).
    # max_connections: the cluster suites run several nodes, each with its own pools.
    as_root start-stop-daemon --start --oknodo --background \
        --make-pidfile --pidfile "$(pidfile mysql)" \
        --exec /usr/sbin/mariadbd -- --user=mysql --bind-address=127.0.0.1 --skip-name-resolve \
        --max-connections=1000 --log-error=/var/lib/mysql/emporium-error.log 9>&-
    # Remember that we started it, so `stop` may stop it (and only then).
    touch "$SVC_DIR/mysql.started-by-us"
    wait_port mysql "$MYSQL_PORT" "" || return 1
    ensure_mysql_root_tcp
    log "mysql up on $MYSQL_HOST:$MYSQL_PORT"
}

# On a freshly installed Debian MariaDB, root exists only as root@localhost (unix_socket),
# and with skip-name-resolve (Debian's my.cnf here) a TCP client is '127.0.0.1', not
# 'localhost'. The tests connect over TCP as root with no password
# (mysql://root@127.0.0.1:3306), as the pre-started server allows: on a server this script
# started, add that account (test machines only!) and the `test` database.
ensure_mysql_root_tcp() {
    command -v mariadb >/dev/null || return 0
    if mariadb --protocol=tcp -h "$MYSQL_HOST" -P "$MYSQL_PORT" -uroot -e 'SELECT 1' >/dev/null 2>&1; then
        return 0
    fi
    log "adding passwordless root@127.0.0.1 on the test MariaDB (over the unix socket)"
    as_root mariadb -uroot -e "CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY '';
        GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;
        CREATE DATABASE IF NOT EXISTS test;" \
        || log "could not add root@127.0.0.1; tests may fail to log in"
    mariadb --protocol=tcp -h "$MYSQL_HOST" -P "$MYSQL_PORT" -uroot -e 'SELECT 1' >/dev/null 2>&1 \
        || log "TCP login as root still fails; see the MariaDB error log"
}

stop_mysql() {
    if [ -f "$SVC_DIR/mysql.started-by-us" ]; then
        as_root start-stop-daemon --stop --oknodo --pidfile "$(pidfile mysql)" \
            --retry TERM/30/KILL/5 >&2 || true
        rm -f "$SVC_DIR/mysql.started-by-us" "$(pidfile mysql)"
        log "mysql stopped"
    else
        log "mysql was not started by this script; leaving it running"
    fi
}

# ---------------------------------------------------------------- commands

start_one() {
    local name="$1" pid port
    mkdir -p "$SVC_DIR"
    if [ "$name" = mysql ]; then start_mysql; return; fi
    pid="$(live_pid "$name")"
    port="$(recorded_port "$name")"
    if [ -n "$pid" ] && [ -n "$port" ] && port_open 127.0.0.1 "$port"; then
        log "$name already running on 127.0.0.1:$port (pid $pid)"
        return 0
    fi
    stop_pid "$name" # a stale or half-dead one
    "install_$name"
    "start_$name"
}

status_one() {
    local name="$1" pid port
    if [ "$name" = mysql ]; then
        if port_open "$MYSQL_HOST" "$MYSQL_PORT"; then
            echo "mysql   up    $MYSQL_HOST:$MYSQL_PORT$([ -f "$SVC_DIR/mysql.started-by-us" ] && echo ' (started by services.sh)')"
            return 0
        fi
        echo "mysql   down  $MYSQL_HOST:$MYSQL_PORT"
        return 1
    fi
    pid="$(live_pid "$name")"
    port="$(recorded_port "$name")"
    if [ -n "$pid" ] && [ -n "$port" ] && port_open 127.0.0.1 "$port"; then
        printf '%-7s up    127.0.0.1:%s (pid %s)\n' "$name" "$port" "$pid"
        return 0
    fi
    printf '%-7s down\n' "$name"
    return 1
}

env_one() {
    local name="$1" port
    if [ "$name" = mysql ]; then
        if port_open "$MYSQL_HOST" "$MYSQL_PORT"; then
            echo "export EMPORIUM_TEST_MYSQL_URL=mysql://root@$MYSQL_HOST:$MYSQL_PORT"
        else
            log "mysql is not listening; EMPORIUM_TEST_MYSQL_URL not set"
        fi
        return 0
    fi
    "env_$name"
}

# version_one NAME: the server's own version, as it reports it (printed by .ci/run).
version_one() {
    local name="$1"
    if [ "$name" = mysql ]; then
        printf 'mysql   %s\n' "$(mariadb --protocol=tcp -h "$MYSQL_HOST" -P "$MYSQL_PORT" -uroot -N \
            -e 'SELECT VERSION()' 2>/dev/null || echo 'not reachable')"
        return 0
    fi
    printf '%-7s %s\n' "$name" "$("${name}_version" 2>/dev/null || echo 'not running')"
}

usage() {
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

main() {
    local cmd="${1:-}"
    [ -n "$cmd" ] || usage
    shift
    local names=() n
    for n in "${@:-all}"; do
        case "$n" in
            all) names+=("${ALL_SERVICES[@]}") ;;
            kafka | mongo | search | mysql | redis) names+=("$n") ;;
            *) log "unknown service: $n"; usage ;;
        esac
    done
    local rc=0
    if [ "$cmd" = start ] || [ "$cmd" = stop ] || [ "$cmd" = install ]; then
        # Two callers starting at once (parallel CI steps, two terminals) would both see
        # "not running" and start twins: serialize start/stop per checkout.
        mkdir -p "$SVC_DIR"
        exec 9>"$SVC_DIR/.lock"
        flock -w 300 9 || die "could not lock $SVC_DIR/.lock"
    fi
    case "$cmd" in
        start)  for n in "${names[@]}"; do start_one "$n" || rc=1; done ;;
        stop)   for n in "${names[@]}"; do
                    if [ "$n" = mysql ]; then stop_mysql; else stop_pid "$n"; fi
                done ;;
        status) for n in "${names[@]}"; do status_one "$n" || rc=1; done ;;
        env)    for n in "${names[@]}"; do env_one "$n"; done ;;
        versions) for n in "${names[@]}"; do version_one "$n"; done ;;
        install) for n in "${names[@]}"; do [ "$n" = mysql ] || "install_$n"; done ;;
        *) usage ;;
    esac
    return "$rc"
}

main "$@"
