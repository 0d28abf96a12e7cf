#!/usr/bin/env bash
# Starts a fresh server on the embedded default, sells a few units (one payment declined),
# then renders its /dashboard in headless Chromium through scripts/dashboard-check.sh and
# requires the order panels to show the sale. Used by .ci/run; the screenshot lands in OUT.
#
#   scripts/dashboard-smoke.sh EMPORIUM_BINARY OUT_DIR
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$1"
OUT="$2"
DATA="$(mktemp -d "${TMPDIR:-/tmp}/dashboard-smoke.XXXXXX")"
SERVER_PID=""
cleanup() {
    [ -n "$SERVER_PID" ] && kill -TERM "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
    rm -rf "$DATA"
}
trap cleanup EXIT

export EMPORIUM__TELEMETRY__LOG_LEVEL=warn
# The first stdout line names the address the server bound.
exec 3< <("$BIN" serve --listen 127.0.0.1:0 --data-dir "$DATA")
SERVER_PID=$!
read -r -t 30 line <&3
BASE="http://${line##*http://}"
echo "server: $BASE"
for _ in $(seq 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$BASE/health/ready")" = 200 ] && break
    sleep 0.1
done

ADMIN="$("$BIN" token --sub admin --admin --data-dir "$DATA")"
USER="$("$BIN" token --sub shopper --data-dir "$DATA")"
curl -sf -X POST "$BASE/v1/products" -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' \
    -d '{"name":"대시보드 운동화","price":{"amount":1000,"currency":"KRW"},"variants":[{"sku":"DASH-1","stock":5}]}' >/dev/null
for token in test_ok test_ok test_decline test_ok test_ok test_ok test_ok; do
    curl -s -o /dev/null -X POST "$BASE/v1/orders" -H "Authorization: Bearer $USER" \
        -H 'Content-Type: application/json' \
        -d "{\"items\":[{\"sku\":\"DASH-1\",\"qty\":1}],\"payment\":{\"token\":\"$token\"}}"
done

"$ROOT/scripts/dashboard-check.sh" "$BASE" "$OUT" "Orders completed (total)" "Orders cancelled (total)"
