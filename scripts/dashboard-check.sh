#!/usr/bin/env bash
# Renders the server's own live dashboard page (GET /dashboard) in headless Chromium and
# checks what a person would see: panels are drawn from /metrics and at least one of them
# shows a non-zero value. Stores the DOM and a screenshot for the CI artifacts.
#
#   scripts/dashboard-check.sh BASE_URL OUT_DIR [PANEL_TITLE...]
#   e.g. scripts/dashboard-check.sh http://127.0.0.1:40203 target/dashboard-check \
#            "Orders completed (total)"
#
# BASE_URL  a running server (`emporium serve`); /dashboard and /metrics must be readable
#           without a token (server.public_introspection = true, the default)
# OUT_DIR   created if missing; receives dashboard.html (DOM after the page's scripts ran),
#           dashboard.png (1400x900 screenshot) and chromium-*.log
# PANEL_TITLE optional: these panels (data-panel value) must exist and be non-zero too
#
# The page polls /metrics every 2 s and computes rates between two polls;
# --virtual-time-budget=5000 lets it poll (at least) twice before the DOM is dumped.
# On an idle server only the page's own polls move a panel ("HTTP requests /s"): place a
# few orders first and name their panels to check more than that.
# Chromium comes from `scripts/tools.sh chromium`. Exit 0 when every check passes, 1 when
# one fails, 2 on a usage error.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if [ $# -lt 2 ] || [ "${1:-}" = -h ] || [ "${1:-}" = --help ]; then
    sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
fi
BASE="${1%/}"
OUT="$2"
shift 2
REQUIRED=("$@")
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"

fail() { echo "dashboard-check: FAIL: $*" >&2; exit 1; }
step() { printf '\n==> %s\n' "$*"; }

"$ROOT/scripts/tools.sh" chromium

step "server answers /dashboard and /metrics"
for path in /dashboard /metrics; do
    code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 "$BASE$path" || true)"
    [ "$code" = 200 ] || fail "GET $BASE$path answered ${code:-nothing} (want 200; server running? public_introspection on?)"
    echo "GET $path: 200"
done

PROFILES=()
cleanup() {
    local p
    for p in "${PROFILES[@]}"; do rm -rf "$p"; done
}
trap cleanup EXIT

# chromium LOG ARGS...: one headless run with a fresh profile (flags per TEST-SERVICES.md).
# `timeout` because a headless browser that hangs must not hang CI.
chromium_run() {
    local log="$1" profile
    shift
    profile="$(mktemp -d "${TMPDIR:-/tmp}/dashboard-check-profile.XXXXXX")"
    PROFILES+=("$profile")
    timeout 120 chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
        --disable-background-networking --disable-component-update --disable-sync \
        --user-data-dir="$profile" "$@" 2>"$log"
}

step "render /dashboard (DOM after the page polled /metrics)"
chromium_run "$OUT/chromium-dom.log" --virtual-time-budget=5000 --dump-dom "$BASE/dashboard" \
    >"$OUT/dashboard.html" || fail "chromium --dump-dom failed (see $OUT/chromium-dom.log)"
echo "DOM: $(wc -c <"$OUT/dashboard.html") bytes in $OUT/dashboard.html"

step "panels drawn, at least one non-zero"
python3 - "$OUT/dashboard.html" "${REQUIRED[@]}" <<'PY'
import sys
from html.parser import HTMLParser


class Panels(HTMLParser):
    """Collects each [data-panel] element's title and the text of its .value element."""

    def __init__(self):
        super().__init__()
        self.panels, self.current, self.in_value, self.in_status = [], None, False, False
        self.status = ""

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "data-panel" in a:
            self.current = {"title": a["data-panel"], "value": ""}
            self.panels.append(self.current)
        if self.current is not None and "value" in (a.get("class") or "").split():
            self.in_value = True
        if a.get("id") == "status":
            self.in_status = True

    def handle_endtag(self, tag):
        if tag == "div":
            self.in_value = self.in_status = False

    def handle_data(self, data):
        if self.in_value and self.current is not None:
            self.current["value"] += data.strip()
        if self.in_status:
            self.status += data.strip()


p = Panels()
p.feed(open(sys.argv[1], encoding="utf-8").read())
print(f"status line: {p.status!r}")
problems = []
if not p.panels:
    problems.append("no element with a data-panel attribute: the page's script did not draw any panel")
if "cannot read" in p.status or "loading" in p.status:
    problems.append(f"the page did not read /metrics: status {p.status!r}")
nonzero = []
for panel in p.panels:
    try:
        v = float(panel["value"])
    except ValueError:
        problems.append(f"panel {panel['title']!r} shows a non-number: {panel['value']!r}")
        continue
    if v != v or v in (float("inf"), float("-inf")):
        problems.append(f"panel {panel['title']!r} shows {panel['value']}")
    elif v != 0:
        nonzero.append(panel["title"])
    print(f"  {panel['title']:<32} {panel['value']}")
if p.panels and not nonzero:
    problems.append("every panel shows 0")
titles = {panel["title"] for panel in p.panels}
for want in sys.argv[2:]:
    if want not in titles:
        problems.append(f"required panel {want!r} is not on the page")
    elif want not in nonzero:
        problems.append(f"required panel {want!r} shows 0")
print(f"{len(p.panels)} panels, {len(nonzero)} non-zero")
for msg in problems:
    print("FAIL:", msg, file=sys.stderr)
sys.exit(1 if problems else 0)
PY

step "screenshot"
rm -f "$OUT/dashboard.png"
chromium_run "$OUT/chromium-screenshot.log" --virtual-time-budget=5000 \
    --screenshot="$OUT/dashboard.png" --window-size=1400,900 "$BASE/dashboard" >/dev/null \
    || fail "chromium --screenshot failed (see $OUT/chromium-screenshot.log)"
[ -s "$OUT/dashboard.png" ] || fail "no screenshot written"
[ "$(head -c 8 "$OUT/dashboard.png" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] \
    || fail "$OUT/dashboard.png is not a PNG"
echo "screenshot: $OUT/dashboard.png ($(wc -c <"$OUT/dashboard.png") bytes)"

printf '\ndashboard-check: all checks passed\n'
