#!/usr/bin/env bash
# Runs the fuzz targets of src/fuzz.rs (request parsers, forged tokens, the inventory and
# order state machines).
#
#   scripts/fuzz.sh smoke                 proptest engine, FUZZ_CASES per target (default
#                                         10000; about 6 s in a debug build). CI runs this.
#   scripts/fuzz.sh long [SECONDS] [TARGET]...
#                                         libFuzzer through cargo-fuzz, SECONDS per target
#                                         (default 300), every target unless named. The
#                                         corpus grows in fuzz/corpus/, crashes land in
#                                         fuzz/artifacts/ (both git-ignored).
#
# cargo-fuzz passes nightly-only flags to rustc; RUSTC_BOOTSTRAP=1 lets the stable
# toolchain accept them (no nightly can be installed here). `-s none`: no sanitizer —
# the targets are safe Rust, and the C dependencies (librdkafka, SQLite) would not be
# instrumented anyway; overflow checks and debug assertions stay on. The first build
# compiles the whole dependency graph again with coverage instrumentation, in its own
# target dir (FUZZ_TARGET_DIR, default fuzz/target).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOG_TAG=fuzz
export LOG_TAG
# shellcheck source-path=SCRIPTDIR source=lib/venv.sh
. "$ROOT/scripts/lib/venv.sh"
cd "$ROOT"
TARGETS=(request_parsers forged_token inventory_machine order_machine)

case "${1:-smoke}" in
    smoke)
        PROPTEST_CASES="${FUZZ_CASES:-10000}" cargo test --locked --test it fuzz::
        ;;
    long)
        seconds="${2:-300}"
        shift $(($# < 2 ? $# : 2))
        [ $# -gt 0 ] && TARGETS=("$@")
        "$ROOT/scripts/tools.sh" cargo-fuzz
        for t in "${TARGETS[@]}"; do
            mkdir -p "fuzz/corpus/$t"
            [ -d "fuzz/seeds/$t" ] && cp -n "fuzz/seeds/$t"/* "fuzz/corpus/$t"/ 2>/dev/null || true
            log "$t for ${seconds}s"
            RUSTC_BOOTSTRAP=1 "$VENV/bin/cargo-fuzz" run -s none --debug-assertions \
                --target-dir "${FUZZ_TARGET_DIR:-fuzz/target}" "$t" "fuzz/corpus/$t" \
                -- -max_total_time="$seconds" -max_len=4096 -print_final_stats=1
        done
        ;;
    *) die "usage: scripts/fuzz.sh smoke | long [SECONDS] [TARGET]..." ;;
esac
