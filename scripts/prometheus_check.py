#!/usr/bin/env python3
"""Evaluates every panel query of a Grafana dashboard and every alert expression of a
Prometheus rules file through a live Prometheus' HTTP API (scripts/prometheus-check.sh
sets the scene: Emporium and its payment service scraped during a small sale).

    prometheus_check.py --prometheus URL --app URL --dashboard FILE --alerts FILE
                        --jobs JOB[,JOB] [--report FILE] [--deadline SECS]

1. Polls `up` until every job in --jobs has been scraped once and is up (no fixed sleep).
2. Polls the app until every order it took has finished (completed or cancelled), so the
   saga counters exist before the panels are asked.
3. Every panel target `expr` (rows' nested panels too) with Grafana's variables replaced
   ($job -> .*, $__rate_interval -> 1m, $__range / $__interval -> 5m / 1s) is queried
   (instant query). A query that does not parse fails at once; one that returns no series
   is asked again until it does or the deadline passes, then fails. The dashboard's
   template variable queries (label_values(metric, label)) must return values too.
4. Every alert and recording rule `expr` must parse (Prometheus answers status success);
   how many return data (i.e. would be firing or pending now) is printed, not required.
5. Every rule group must be loaded by Prometheus with health "ok" (rule_files).

Exit 0 when all hold; 1 otherwise. Standard library plus PyYAML.
"""

import argparse
import json
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import yaml

GRAFANA_VARS = [
    (re.compile(r"\$__rate_interval|\$\{__rate_interval\}"), "1m"),
    (re.compile(r"\$__range|\$\{__range\}"), "5m"),
    (re.compile(r"\$__interval|\$\{__interval\}"), "1s"),
    (re.compile(r"\$job|\$\{job\}"), ".*"),
]


def get(url, params=None):
    if params:
        url = f"{url}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:  # 400 = bad query: Prometheus explains in the body
        body = e.read().decode(errors="replace")
        try:
            return json.loads(body)
        except json.JSONDecodeError:
            return {"status": "error", "error": f"HTTP {e.code}: {body[:200]}"}


def query(prom, expr):
    return get(f"{prom}/api/v1/query", {"query": expr})


def grafana_to_promql(expr):
    for pattern, value in GRAFANA_VARS:
        expr = pattern.sub(value, expr)
    return expr


def panels(board):
    for p in board.get("panels", []):
        yield p
        yield from p.get("panels") or []


def series_count(answer):
    data = answer.get("data", {})
    result = data.get("result", [])
    return len(result) if data.get("resultType") in ("vector", "matrix") else 1


def wait_for_first_scrape(prom, jobs, deadline):
    while True:
        answer = query(prom, "up")
        up = {s["metric"].get("job"): s["value"][1] for s in answer.get("data", {}).get("result", [])}
        if all(up.get(j) == "1" for j in jobs):
            print(f"first scrape seen: {', '.join(f'{j} up' for j in jobs)}")
            return True
        if time.monotonic() > deadline:
            print(f"FAIL: targets not scraped up in time: {up}")
            return False
        time.sleep(0.2)


def wait_for_orders_finished(app, prom, deadline):
    """The saga's counters appear once orders finish; wait on Prometheus seeing them."""
    while True:
        answer = query(prom, 'sum(emporium_orders_finished_total{job="emporium"})')
        created = query(prom, 'sum(emporium_orders_created_total{job="emporium"})')
        fin = answer.get("data", {}).get("result", [])
        cre = created.get("data", {}).get("result", [])
        if fin and cre and float(fin[0]["value"][1]) >= float(cre[0]["value"][1]) > 0:
            print(f"orders created {cre[0]['value'][1]}, finished {fin[0]['value'][1]} (scraped)")
            return True
        if time.monotonic() > deadline:
            print(f"FAIL: orders never all finished in Prometheus: created={cre} finished={fin} (app {app})")
            return False
        time.sleep(0.2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prometheus", required=True)
    ap.add_argument("--app", required=True)
    ap.add_argument("--dashboard", required=True)
    ap.add_argument("--alerts", required=True)
    ap.add_argument("--jobs", required=True)
    ap.add_argument("--report")
    ap.add_argument("--deadline", type=float, default=90.0)
    args = ap.parse_args()
    prom = args.prometheus.rstrip("/")
    deadline = time.monotonic() + args.deadline
    failures = []

    if not wait_for_first_scrape(prom, args.jobs.split(","), deadline):
        return 1
    if not wait_for_orders_finished(args.app, prom, deadline):
        return 1

    board = json.load(open(args.dashboard, encoding="utf-8"))
    targets = []
    for p in panels(board):
        for t in p.get("targets") or []:
            if t.get("expr"):
                targets.append((p.get("title", "?"), t.get("refId", "?"), t["expr"]))
    pending = {i: grafana_to_promql(e) for i, (_, _, e) in enumerate(targets)}
    results = {}
    # Ask again only what returned nothing: counters appear with their first event,
    # rates need two samples of it.
    while pending:
        for i, expr in list(pending.items()):
            answer = query(prom, expr)
            if answer.get("status") != "success":
                results[i] = ("error", answer.get("error", answer))
                del pending[i]
            elif series_count(answer) > 0:
                results[i] = ("data", series_count(answer))
                del pending[i]
        if pending and time.monotonic() > deadline:
            for i in pending:
                results[i] = ("empty", 0)
            break
        if pending:
            time.sleep(0.5)
    panel_data = 0
    for i, (title, ref, expr) in enumerate(targets):
        kind, detail = results[i]
        if kind == "data":
            panel_data += 1
            print(f"ok    panel {title!r} {ref}: {detail} series")
        elif kind == "error":
            failures.append(f"panel {title!r} {ref} does not parse: {detail}")
            print(f"FAIL  panel {title!r} {ref}: {detail}\n      {expr}")
        else:
            failures.append(f"panel {title!r} {ref} returned no series")
            print(f"FAIL  panel {title!r} {ref}: no series\n      {grafana_to_promql(expr)}")

    variables = 0
    for v in board.get("templating", {}).get("list", []):
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = re.fullmatch(r"\s*label_values\(\s*([^,]+?)\s*,\s*(\w+)\s*\)\s*", q or "")
        if not m:
            continue
        answer = get(f"{prom}/api/v1/label/{m.group(2)}/values", {"match[]": m.group(1)})
        values = answer.get("data") or []
        variables += 1
        if values:
            print(f"ok    variable ${v['name']}: {values}")
        else:
            failures.append(f"variable ${v['name']} ({q}) has no values")
            print(f"FAIL  variable ${v['name']}: no values for {q}")

    rules = [r for g in yaml.safe_load(open(args.alerts, encoding="utf-8"))["groups"] for r in g["rules"]]
    with_data = 0
    for r in rules:
        name = r.get("alert") or r.get("record")
        answer = query(prom, r["expr"])
        if answer.get("status") != "success":
            failures.append(f"rule {name} does not parse: {answer.get('error')}")
            print(f"FAIL  rule {name}: {answer.get('error')}")
            continue
        n = series_count(answer)
        with_data += n > 0
        print(f"ok    rule {name}: parses, {n} series now")

    loaded = get(f"{prom}/api/v1/rules").get("data", {}).get("groups", [])
    loaded_rules = sum(len(g.get("rules", [])) for g in loaded)
    bad = [f"{g['name']}/{r.get('name')}: {r.get('lastError')}" for g in loaded for r in g.get("rules", [])
           if r.get("health") not in ("ok", "unknown")]
    if loaded_rules != len(rules) or bad:
        failures.append(f"Prometheus loaded {loaded_rules} of {len(rules)} rules; unhealthy: {bad}")
    print(f"rules loaded by Prometheus: {loaded_rules} of {len(rules)}, unhealthy: {len(bad)}")

    summary = {
        "panel_queries": len(targets),
        "panel_queries_with_data": panel_data,
        "template_variables_checked": variables,
        "alert_expressions": len(rules),
        "alert_expressions_parsed": len(rules) - sum(f.startswith("rule ") for f in failures),
        "alert_expressions_with_data": with_data,
        "rules_loaded": loaded_rules,
        "failures": failures,
    }
    print(
        f"prometheus-check: {panel_data}/{len(targets)} panel queries returned data; "
        f"{summary['alert_expressions_parsed']}/{len(rules)} alert expressions parse, "
        f"{with_data} of them return data now (would be firing or pending)"
    )
    if args.report:
        with open(args.report, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
    for f in failures:
        print("FAIL:", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
