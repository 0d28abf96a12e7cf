#!/usr/bin/env bash
# Fuzzes the LIVE API with schemathesis (PyPI) against the server's own /openapi.json, so
# every route the spec lists is covered, whoever added it, with no list kept here.
#
#   scripts/schemathesis.sh [EMPORIUM_BINARY]      default: target/debug/emporium
#
# Starts the server on a fresh temp data dir and a free port, seeds a product whose SKU is
# the one the spec uses as its example (so generated orders reserve real stock), then runs
# schemathesis twice: once with an admin token and once with a user token. Every check
# schemathesis has is on (no 5xx, responses match their schema, status codes and headers
# documented, schema-valid input accepted, invalid input rejected, ...). Exits non-zero on
# any finding; the reports land in $ST_REPORT_DIR.
#
# ST_MAX_EXAMPLES  test cases generated per operation and per phase (default 40)
# ST_SEED          fix the random seed to replay a run (printed by every run)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${1:-$ROOT/target/debug/emporium}"
MAX_EXAMPLES="${ST_MAX_EXAMPLES:-100}"
REPORT_DIR="${ST_REPORT_DIR:-$ROOT/target/schemathesis}"

LOG_TAG=schemathesis
export LOG_TAG
# shellcheck source-path=SCRIPTDIR source=lib/venv.sh
. "$ROOT/scripts/lib/venv.sh"
# Pinned: a new schemathesis release may add checks, which should be a change we make.
pip_ensure schemathesis "schemathesis==4.32.5"
[ -x "$BIN" ] || die "no server binary at $BIN (cargo build first)"

DATA="$(mktemp -d "${TMPDIR:-/tmp}/schemathesis.XXXXXX")"
SERVER_PID=""
cleanup() {
    if [ -n "$SERVER_PID" ]; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$DATA"
}
trap cleanup EXIT

export EMPORIUM__TELEMETRY__LOG_LEVEL=warn
# The per-user order limit would answer most generated orders 429 (documented, so not a
# finding) and leave the order path itself untested: off for this run only.
export EMPORIUM__LIMITS__ORDERS_PER_USER_PER_SEC=0
# The first stdout line names the address the server bound (port 0: a free one).
exec 3< <("$BIN" serve --listen 127.0.0.1:0 --data-dir "$DATA")
SERVER_PID=$!
read -r -t 60 line <&3 || die "the server did not start"
BASE="http://${line##*http://}"
log "server: $BASE (data dir $DATA)"
ready=""
for _ in $(seq 300); do
    if [ "$(curl -s -o /dev/null -w '%{http_code}' "$BASE/health/ready")" = 200 ]; then
        ready=1
        break
    fi
    sleep 0.1
done
[ -n "$ready" ] || die "the server did not become ready"

ADMIN="$("$BIN" token --sub st-admin --admin --data-dir "$DATA")"
USER="$("$BIN" token --sub st-user --data-dir "$DATA")"

# Seed every SKU the spec gives as an example, so examples and generated orders find stock.
mapfile -t skus < <(curl -sf "$BASE/openapi.json" -H "Authorization: Bearer $ADMIN" | "$VPY" -c '
import json, sys
spec = json.load(sys.stdin)
found = set()
def walk(node):
    if isinstance(node, dict):
        props = node.get("properties", {})
        sku = props.get("sku") if isinstance(props, dict) else None
        if isinstance(sku, dict) and isinstance(sku.get("example"), str):
            found.add(sku["example"])
        for value in node.values():
            walk(value)
    elif isinstance(node, list):
        for value in node:
            walk(value)
walk(spec)
print("\n".join(sorted(found)))
')
[ "${#skus[@]}" -gt 0 ] || skus=(SEED-1)
variants="$(printf '{"sku":"%s","stock":1000000},' "${skus[@]}")"
curl -sf -o /dev/null -X POST "$BASE/v1/products" -H "Authorization: Bearer $ADMIN" \
    -H 'Content-Type: application/json' \
    -d "{\"name\":\"schemathesis seed\",\"price\":{\"amount\":1000,\"currency\":\"KRW\"},\"variants\":[${variants%,}]}" \
    || die "seeding the product failed"
log "seeded SKUs: ${skus[*]}"

seed_args=()
[ -n "${ST_SEED:-}" ] && seed_args=(--seed "$ST_SEED")
mkdir -p "$REPORT_DIR"
# schemathesis keeps a crash cache in the working directory: keep it out of the tree.
cd "$REPORT_DIR"
status=0
for who in admin user; do
    token="$ADMIN"
    [ "$who" = user ] && token="$USER"
    log "pass as $who: $MAX_EXAMPLES cases per operation and phase, every check"
    "$VENV/bin/st" --config-file "$ROOT/scripts/schemathesis.toml" run "$BASE/openapi.json" \
        --header "Authorization: Bearer $token" \
        --checks all \
        --max-examples "$MAX_EXAMPLES" \
        --phases examples,coverage,fuzzing,stateful \
        --workers 1 \
        --request-timeout 15 \
        --generation-database none \
        --no-color \
        --report junit --report-junit-path "$REPORT_DIR/$who.xml" \
        "${seed_args[@]}" || status=1
done

# The server must have survived every case.
[ "$(curl -s -o /dev/null -w '%{http_code}' "$BASE/health/live")" = 200 ] || die "the server died during the run"
[ "$status" = 0 ] || die "schemathesis found problems (reports in $REPORT_DIR)"
log "no findings"
