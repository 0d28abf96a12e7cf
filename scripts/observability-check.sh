#!/usr/bin/env bash
# Offline checks of the alert rules and the Grafana dashboard (no Prometheus or Grafana
# needed). Called by scripts/helm-check.sh (so by .ci/run); runs alone too:
#
#   scripts/observability-check.sh     (installs promtool and PyYAML if needed)
#
#  1. promtool check rules config/alerts.yml
#  2. promtool test rules config/alerts_test.yml (unit tests of every alert)
#  3. every alert of alerts.yml has a firing test case, a severity label, a summary and a
#     description
#  4. dashboards/emporium.json is a Grafana dashboard as the chart expects it: a
#     ${datasource} variable of type datasource (prometheus), every panel with a one-line
#     description and that datasource, unique ids, a grid no wider than 24
#  5. every dashboard query parses as PromQL (promtool check rules on a generated file of
#     recording rules, with Grafana's $variables replaced by plain values)
#  6. every emporium_* metric the dashboard and the rules query is one the server
#     registers in src/telemetry.rs (scripts/metric-names.py; a Rust test compares the same
#     list with a live scrape)
#  7. the chart's copies (helm/emporium/files/) match their sources
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOG_TAG=observability
export LOG_TAG
# shellcheck source-path=SCRIPTDIR source=lib/venv.sh
. "$ROOT/scripts/lib/venv.sh"

ALERTS="$ROOT/config/alerts.yml"
ALERTS_TEST="$ROOT/config/alerts_test.yml"
DASHBOARD="$ROOT/dashboards/emporium.json"
TELEMETRY="$ROOT/src/telemetry.rs"

"$ROOT/scripts/tools.sh" promtool
pip_ensure PyYAML
PY="$VPY"

OUT="$(mktemp -d "${TMPDIR:-/tmp}/observability-check.XXXXXX")"
trap 'rm -rf "$OUT"' EXIT

step() { printf '\n==> %s\n' "$*"; }

step "promtool check rules config/alerts.yml"
promtool check rules "$ALERTS"

step "promtool test rules config/alerts_test.yml"
promtool test rules "$ALERTS_TEST"

step "every alert is tested, labelled and annotated"
"$PY" - "$ALERTS" "$ALERTS_TEST" <<'PY'
import sys, yaml
rules = [r for g in yaml.safe_load(open(sys.argv[1]))["groups"] for r in g["rules"] if "alert" in r]
tests = yaml.safe_load(open(sys.argv[2]))["tests"]
firing = {t["alertname"] for g in tests for t in g.get("alert_rule_test") or [] if t.get("exp_alerts")}
problems = []
for r in rules:
    name = r["alert"]
    if name not in firing:
        problems.append(f"{name}: no test case where it fires")
    if r.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
        problems.append(f"{name}: severity label missing or not critical|warning|info")
    for key in ("summary", "description"):
        if not r.get("annotations", {}).get(key, "").strip():
            problems.append(f"{name}: annotation {key} missing")
for p in problems:
    print("FAIL:", p)
print(f"{len(rules)} alerts, {len(firing & {r['alert'] for r in rules})} with a firing test")
sys.exit(1 if problems else 0)
PY

step "dashboard structure (dashboards/emporium.json)"
"$PY" - "$DASHBOARD" "$OUT/dashboard-rules.yml" <<'PY'
import json, sys, yaml
board = json.load(open(sys.argv[1]))
problems = []
def need(cond, msg):
    if not cond:
        problems.append(msg)
need(board.get("title") and board.get("uid"), "title and uid")
need(38 <= board.get("schemaVersion", 0) <= 41, "schemaVersion near 39")
variables = {v["name"]: v for v in board.get("templating", {}).get("list", [])}
ds = variables.get("datasource", {})
need(ds.get("type") == "datasource" and ds.get("query") == "prometheus",
     "template variable `datasource` of type datasource, query prometheus")
ids, exprs, count = set(), [], 0
def walk(panels):
    global count
    for p in panels:
        pid, title = p.get("id"), p.get("title", "?")
        need(pid not in ids, f"panel id {pid} ({title}) is not unique")
        ids.add(pid)
        g = p.get("gridPos", {})
        need(g.get("x", 0) + g.get("w", 0) <= 24, f"{title}: gridPos wider than 24")
        if p.get("type") == "row":
            walk(p.get("panels") or [])
            continue
        count += 1
        d = p.get("description", "")
        need(d.strip() and "\n" not in d, f"{title}: needs a one-line description")
        need(p.get("datasource", {}).get("uid") == "${datasource}", f"{title}: datasource is not ${{datasource}}")
        need(p.get("targets"), f"{title}: no targets")
        for t in p.get("targets") or []:
            need(t.get("expr"), f"{title}: target {t.get('refId')} has no expr")
            exprs.append((title, t.get("expr", "")))
walk(board.get("panels", []))
for msg in problems:
    print("FAIL:", msg)
print(f"{count} panels, {len(exprs)} queries")
# Grafana's variables become plain values so that promtool can parse each query.
subst = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h", "$job": ".*"}
rules = []
for i, (title, e) in enumerate(exprs):
    for k, v in subst.items():
        e = e.replace(k, v)
    rules.append({"record": f"dashboard:query_{i}", "expr": e})
yaml.safe_dump({"groups": [{"name": "dashboard-queries", "rules": rules}]}, open(sys.argv[2], "w"), sort_keys=False)
sys.exit(1 if problems else 0)
PY

step "dashboard queries parse as PromQL"
promtool check rules "$OUT/dashboard-rules.yml"

step "queried metrics are registered in src/telemetry.rs"
"$PY" "$ROOT/scripts/metric-names.py" "$DASHBOARD" "$ALERTS" >"$OUT/used.txt"
grep -o '"emporium_[a-z0-9_]*"' "$TELEMETRY" | tr -d '"' | sort -u >"$OUT/registered.txt"
unknown="$(comm -23 "$OUT/used.txt" "$OUT/registered.txt")"
if [ -n "$unknown" ]; then
    echo "FAIL: queried but not registered in src/telemetry.rs:" >&2
    echo "$unknown" >&2
    exit 1
fi
echo "$(wc -l <"$OUT/used.txt") metric families queried, all registered"
unused="$(comm -13 "$OUT/used.txt" "$OUT/registered.txt")"
[ -z "$unused" ] || echo "note: registered but not on the dashboard or in a rule: $unused"

step "chart copies in sync"
"$ROOT/scripts/sync-chart-files.sh" --check

printf '\nobservability-check: all checks passed\n'
