#!/usr/bin/env bash
# Helm can only read files inside the chart, so the chart keeps copies of files that live
# elsewhere in the repository. This script copies them in (default) or, with --check,
# fails when a copy differs from its source (for CI: run it, then commit the copies).
#
#   scripts/sync-chart-files.sh           copy sources into helm/emporium/files/
#   scripts/sync-chart-files.sh --check   exit 1 if any copy is out of date
#
# source (repo)               copy (chart)                          required
# config/production.toml   -> helm/emporium/files/production.toml   yes
# config/alerts.yml        -> helm/emporium/files/alerts.yml        only if the source exists
# dashboards/emporium.json -> helm/emporium/files/dashboard.json    only if the source exists
# (Until the optional sources exist, the chart keeps its placeholder copies.)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FILES="$ROOT/helm/emporium/files"

PAIRS=(
    "config/production.toml:production.toml:required"
    "config/alerts.yml:alerts.yml:optional"
    "dashboards/emporium.json:dashboard.json:optional"
)

mode=sync
case "${1:-}" in
    "") ;;
    --check) mode=check ;;
    -h | --help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

mkdir -p "$FILES"
rc=0
for pair in "${PAIRS[@]}"; do
    IFS=: read -r src dst need <<<"$pair"
    if [ ! -f "$ROOT/$src" ]; then
        if [ "$need" = required ]; then
            echo "missing required source $src" >&2
            rc=1
        else
            echo "skip  $src (does not exist; chart keeps files/$dst)"
        fi
        continue
    fi
    if cmp -s "$ROOT/$src" "$FILES/$dst"; then
        echo "ok    files/$dst == $src"
    elif [ "$mode" = check ]; then
        echo "DIFF  files/$dst differs from $src (run scripts/sync-chart-files.sh):" >&2
        diff -u "$FILES/$dst" "$ROOT/$src" >&2 || true
        rc=1
    else
        cp "$ROOT/$src" "$FILES/$dst"
        echo "copy  $src -> helm/emporium/files/$dst"
    fi
done
exit "$rc"
