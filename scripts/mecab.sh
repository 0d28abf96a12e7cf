#!/usr/bin/env bash
# Korean morphological analysis for the embedded search index (issue 19): MeCab and a
# compiled mecab-ko-dic, installed by the project, never at build time. The server loads
# them at run time (dlopen), so nothing here is needed to build or to run without them.
#
#   scripts/mecab.sh install   Debian's libmecab2 (only if missing) and PyPI's
#                              python-mecab-ko-dic==2.1.1.post2 (Apache-2.0; the compiled
#                              dictionary, 816,283 entries) unpacked into
#                              .services/mecab-ko-dic; then prints the env lines
#   scripts/mecab.sh env       print `export EMPORIUM_TEST_MECAB_DICDIR=...` (the search
#                              suite's mecab variants use it) for eval
#
# The server uses it with `EMPORIUM__SEARCH__MECAB_DICDIR=<dir>` (search.mecab_dicdir).
set -euo pipefail

LOG_TAG=mecab
export LOG_TAG
# shellcheck source-path=SCRIPTDIR source=lib/venv.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/venv.sh"

DIC_REQ="python-mecab-ko-dic==2.1.1.post2"
DIC_DIR="$SVC_DIR/mecab-ko-dic"

env_lines() { echo "export EMPORIUM_TEST_MECAB_DICDIR=$DIC_DIR"; }

install() {
    # Captured first: `ldconfig | grep -q` under pipefail fails when grep exits early.
    local libs
    libs="$(ldconfig -p)"
    case "$libs" in *libmecab.so.2*) ;; *) apt_install libmecab2 ;; esac
    if [ ! -f "$DIC_DIR/sys.dic" ]; then
        ensure_venv
        local dl
        dl="$(mktemp -d)"
        log "downloading $DIC_REQ"
        "$VPY" -m pip download -q --disable-pip-version-check --no-deps -d "$dl" "$DIC_REQ" >&2 ||
            die "pip download $DIC_REQ failed"
        rm -rf "$DIC_DIR.tmp"
        mkdir -p "$DIC_DIR.tmp"
        # The wheel is a zip: only its dictionary/ folder is needed.
        "$VPY" - "$dl"/*.whl "$DIC_DIR.tmp" <<'PY'
import sys, zipfile, os
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    for n in z.namelist():
        if n.startswith("mecab_ko_dic/dictionary/") and not n.endswith("/"):
            with open(os.path.join(out, os.path.basename(n)), "wb") as f:
                f.write(z.read(n))
PY
        rm -rf "$dl" "$DIC_DIR"
        mv "$DIC_DIR.tmp" "$DIC_DIR"
        log "mecab-ko-dic in $DIC_DIR"
    else
        log "mecab-ko-dic present in $DIC_DIR"
    fi
    env_lines
}

case "${1:-}" in
    install) install ;;
    env) env_lines ;;
    *) die "usage: scripts/mecab.sh install|env" ;;
esac
