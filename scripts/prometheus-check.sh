#!/usr/bin/env bash
# Dashboards and alerts proven against a real Prometheus (Debian's `prometheus` 2.x), not
# only by name: start an Apache Kafka broker, Emporium with payment.mode = kafka and the payment
# service (`emporium payment-service`), a Prometheus scraping both every second with
# config/alerts.yml loaded; run a small flash sale with one declined payment; then
# evaluate every panel query of dashboards/emporium.json and every alert expression of
# config/alerts.yml through Prometheus' HTTP API (scripts/prometheus_check.py). Fails when a
# panel query returns no series, an expression does not parse, or a rule group does not
# load; prints how many returned data. Called by .ci/run; runs alone too:
#
#   scripts/prometheus-check.sh target/debug/emporium [OUT_DIR]
#
# No fixed sleeps: every wait polls (broker port, /health/ready, the first scrape of
# both targets, each panel until it has data or a deadline passes).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
OUT="${2:-$ROOT/target/prometheus-check}"
LOG_TAG=prometheus-check
export LOG_TAG
# shellcheck source-path=SCRIPTDIR source=lib/venv.sh
. "$ROOT/scripts/lib/venv.sh"

"$ROOT/scripts/tools.sh" prometheus
pip_ensure PyYAML
eval "$("$ROOT/scripts/services.sh" env kafka 2>/dev/null || true)"
if [ -z "${EMPORIUM_TEST_KAFKA_BROKER:-}" ]; then
    "$ROOT/scripts/services.sh" install kafka >&2
    eval "$("$ROOT/scripts/services.sh" env kafka)"
fi

mkdir -p "$OUT"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/prometheus-check.XXXXXX")"
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { # wait_http URL WHAT PID: poll until URL answers 200, fail if PID exits
    local i
    for ((i = 0; i < 600; i++)); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "$1")" = 200 ] && return 0
        kill -0 "$3" 2>/dev/null || { echo "$2 exited; see $OUT" >&2; return 1; }
        sleep 0.1
    done
    echo "$2 not ready at $1 within 60 s; see $OUT" >&2
    return 1
}

KAFKA_PORT="$(free_port)"
KAFKA_CPORT="$(free_port)"
bash "$EMPORIUM_TEST_KAFKA_BROKER" "$WORK/kafka" 1 "$KAFKA_PORT" "$KAFKA_CPORT" "1@127.0.0.1:$KAFKA_CPORT" \
    >"$OUT/kafka.log" 2>&1 &
PIDS+=($!)
# A JVM on a loaded 2-core machine: up to two minutes.
for ((i = 0; i < 1200; i++)); do (exec 3<>"/dev/tcp/127.0.0.1/$KAFKA_PORT") 2>/dev/null && break; sleep 0.1; done

export EMPORIUM__BUS__KIND=kafka EMPORIUM__BUS__BROKERS="127.0.0.1:$KAFKA_PORT" EMPORIUM__BUS__PARTITIONS=2
export EMPORIUM__PAYMENT__MODE=kafka EMPORIUM__CONSUMER__LAG_INTERVAL_MS=500
export EMPORIUM__TELEMETRY__LOG_LEVEL=warn EMPORIUM__OUTBOX__POLL_INTERVAL_MS=20

APP_PORT="$(free_port)"
mkdir -p "$WORK/app" "$WORK/payments" "$WORK/tsdb"
"$BIN" serve --listen "127.0.0.1:$APP_PORT" --data-dir "$WORK/app" >"$OUT/emporium.log" 2>&1 &
APP_PID=$!
PIDS+=("$APP_PID")
PAY_PORT="$(free_port)"
EMPORIUM__PAYMENT_SERVICE__LISTEN="127.0.0.1:$PAY_PORT" \
    "$BIN" payment-service --data-dir "$WORK/payments" >"$OUT/payment-service.log" 2>&1 &
PAY_PID=$!
PIDS+=("$PAY_PID")
BASE="http://127.0.0.1:$APP_PORT"
wait_http "$BASE/health/ready" emporium "$APP_PID"
wait_http "http://127.0.0.1:$PAY_PORT/health/ready" "payment service" "$PAY_PID"

PROM_PORT="$(free_port)"
cat >"$WORK/prometheus.yml" <<YML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $ROOT/config/alerts.yml
scrape_configs:
  - job_name: emporium
    static_configs: [{targets: ["127.0.0.1:$APP_PORT"]}]
  - job_name: emporium-payment
    static_configs: [{targets: ["127.0.0.1:$PAY_PORT"]}]
YML
cp "$WORK/prometheus.yml" "$OUT/prometheus.yml"
prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/tsdb" \
    --web.listen-address="127.0.0.1:$PROM_PORT" >"$OUT/prometheus.log" 2>&1 &
PROM_PID=$!
PIDS+=("$PROM_PID")
PROM="http://127.0.0.1:$PROM_PORT"
wait_http "$PROM/-/ready" prometheus "$PROM_PID"
echo "emporium $BASE, payment service :$PAY_PORT, broker :$KAFKA_PORT, prometheus $PROM"

# The sale: 12 units, 30 buyers at once (most sold out), one declined payment, one
# cancel; orders finish through Kafka (order_created -> payment service -> emporium.payments).
ADMIN="$("$BIN" token --sub admin --admin --data-dir "$WORK/app")"
curl -sf -X POST "$BASE/v1/products" -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' \
    -d '{"name":"Prometheus check sneaker","price":{"amount":1000,"currency":"KRW"},"variants":[{"sku":"PROM-1","stock":12}]}' >/dev/null
order() { # order USER TOKEN: prints the status code
    curl -s -o /dev/null -w '%{http_code}\n' -X POST "$BASE/v1/orders" \
        -H "Authorization: Bearer $("$BIN" token --sub "$1" --data-dir "$WORK/app")" \
        -H 'Content-Type: application/json' \
        -d "{\"items\":[{\"sku\":\"PROM-1\",\"qty\":1}],\"payment\":{\"token\":\"$2\"}}"
}
order decliner test_decline >"$WORK/codes"
for n in $(seq 30); do order "buyer-$n" test_ok >>"$WORK/codes" & done
wait_jobs() { local j; for j in $(jobs -p); do case " ${PIDS[*]} " in *" $j "*) ;; *) wait "$j" || true ;; esac; done; }
wait_jobs
echo "orders answered: $(sort "$WORK/codes" | uniq -c | tr '\n' ' ')"

"$VPY" "$ROOT/scripts/prometheus_check.py" --prometheus "$PROM" --app "$BASE" \
    --dashboard "$ROOT/dashboards/emporium.json" --alerts "$ROOT/config/alerts.yml" \
    --jobs emporium,emporium-payment --report "$OUT/report.json"
