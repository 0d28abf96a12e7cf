#!/usr/bin/env python3
"""Prints every distinct `emporium_*` metric family name that dashboards and alert rules use.

    scripts/metric-names.py dashboards/emporium.json config/alerts.yml

One name per line, sorted. Only the queries are read, not the prose: in a Grafana
dashboard (*.json) every `expr` of a panel target and every template variable query /
definition; in a Prometheus rules file (*.yml, *.yaml) every rule's `expr`. Quoted
strings inside a query (label values such as job=~".*emporium.*") are skipped.
Histogram series are reduced to their family (`_bucket`, `_sum`, `_count` stripped), so
the output compares directly with the `# TYPE` names of a live /metrics scrape: a Rust
test can fail when a dashboard or alert queries a metric the server does not export.

Exit status: 0, or 2 on a usage error or an unreadable file. Needs only the standard
library (PyYAML is used for rules files when installed; otherwise a small reader that
understands the `expr:` forms a rules file uses: plain, quoted, and `|` / `>` blocks).
"""

import json
import re
import sys

NAME = re.compile(r"(?<![A-Za-z0-9_:])emporium_[A-Za-z0-9_]*[A-Za-z0-9]")
QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def family(name):
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def names_in_query(query):
    return {family(m.group(0)) for m in NAME.finditer(QUOTED.sub('""', query))}


def dashboard_queries(board):
    """Every target expr and variable query of a Grafana dashboard, rows' nested panels too."""
    out = []

    def panels(items):
        for p in items or []:
            for t in p.get("targets") or []:
                if isinstance(t.get("expr"), str):
                    out.append(t["expr"])
            panels(p.get("panels"))

    panels(board.get("panels"))
    for var in (board.get("templating") or {}).get("list") or []:
        if var.get("type") != "query":
            continue
        q = var.get("query")
        if isinstance(q, dict):
            q = q.get("query")
        for text in (q, var.get("definition")):
            if isinstance(text, str):
                out.append(text)
    return out


def rules_exprs_yaml(text):
    import yaml  # noqa: PLC0415 (optional dependency)

    doc = yaml.safe_load(text) or {}
    return [str(r["expr"]) for g in doc.get("groups") or [] for r in g.get("rules") or [] if "expr" in r]


def rules_exprs_plain(text):
    """`expr:` values without PyYAML: `expr: x`, `expr: "x"`, and block scalars."""
    out = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)(?:-\s+)?expr:\s*(.*?)\s*$", lines[i])
        i += 1
        if not m:
            continue
        indent, value = len(m.group(1)), m.group(2)
        if value[:1] in ("|", ">"):
            block = []
            while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
                block.append(lines[i])
                i += 1
            out.append("\n".join(block))
        else:
            out.append(value.strip("'\""))
    return out


def rules_exprs(text):
    try:
        return rules_exprs_yaml(text)
    except ImportError:
        return rules_exprs_plain(text)


def main(argv):
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    names = set()
    for path in argv[1:]:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            print(f"metric-names: {e}", file=sys.stderr)
            return 2
        if path.endswith(".json"):
            queries = dashboard_queries(json.loads(text))
        else:
            queries = rules_exprs(text)
        for q in queries:
            names |= names_in_query(q)
    for name in sorted(names):
        print(name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
