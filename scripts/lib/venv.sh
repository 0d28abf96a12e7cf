# shellcheck shell=bash
# Sourced by scripts/services.sh and scripts/tools.sh: one Python virtualenv for every
# test server and CI tool that comes from PyPI, kept out of git in .services/venv.
# A fresh machine has none of it, so everything here is idempotent and cheap to re-run.

EMPORIUM_ROOT="${EMPORIUM_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
SVC_DIR="$EMPORIUM_ROOT/.services"
VENV="$SVC_DIR/venv"
VPY="$VENV/bin/python"

log() { printf '[%s] %s\n' "${LOG_TAG:-emporium}" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

ensure_venv() {
    mkdir -p "$SVC_DIR"
    if [ ! -x "$VPY" ] || ! "$VPY" -c 'import sys' 2>/dev/null; then
        log "creating virtualenv $VENV"
        rm -rf "$VENV"
        python3 -m venv "$VENV" || die "python3 -m venv failed"
    fi
}

# pip_ensure DIST [REQUIREMENT]: install REQUIREMENT (default DIST) unless the
# distribution DIST is already installed in the venv.
pip_ensure() {
    local dist="$1" req="${2:-$1}"
    ensure_venv
    if "$VPY" -m pip show -q "$dist" >/dev/null 2>&1; then
        return 0
    fi
    log "pip install $req"
    "$VPY" -m pip install -q --disable-pip-version-check "$req" >&2 || die "pip install $req failed"
}

# site-packages directory of the venv (where some wheels keep their native binaries).
venv_site() {
    "$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'
}

# as_root CMD...: apt and service start need root; use sudo when not root.
as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        die "need root for: $*"; fi
}

# apt_install PKG...: install Debian packages, running `apt-get update` first only when the
# package is unknown to the local lists (a fresh machine may have stale or empty lists).
apt_install() {
    local p need_update=0
    for p in "$@"; do
        # Captured first: `apt-cache | grep -q` under pipefail fails when grep exits early.
        local pol
        pol="$(apt-cache policy "$p" 2>/dev/null || true)"
        case "$pol" in *"Candidate: (none)"* | "") need_update=1 ;; esac
    done
    if [ "$need_update" = 1 ]; then
        log "apt-get update"
        as_root apt-get update -qq >&2 || die "apt-get update failed"
    fi
    log "apt-get install $*"
    # DEBIAN_FRONTEND: never prompt (CI has no stdin). No recommends: we want the tool,
    # not e.g. prometheus-node-exporter and friends.
    # Its chatter goes to .services/apt.log; shown only when it fails.
    mkdir -p "$SVC_DIR"
    if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" \
        >"$SVC_DIR/apt.log" 2>&1; then
        tail -n 30 "$SVC_DIR/apt.log" >&2
        die "apt-get install $* failed (full output: $SVC_DIR/apt.log)"
    fi
}
