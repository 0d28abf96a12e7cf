#!/usr/bin/env bash
# Offline checks of the Helm chart (there is no cluster here): lint, render, validate every
# rendered manifest against the Kubernetes 1.33 schemas, check and unit-test the alert
# rules with promtool (scripts/observability-check.sh, which also checks the dashboard),
# make sure the single-replica guard holds, and assert the rendered values
# (scripts/helm_assert.py). Exits non-zero on the first failing step.
#
#   scripts/helm-check.sh            (installs helm, kubernetes-validate, promtool if needed)
#
# Scenarios rendered:
#   default     values.yaml: embedded mode, chart-generated JWT secret
#   production  values-production.yaml: external backends via existingSecret, migration
#               Job, Ingress, ServiceMonitor, PrometheusRule, dashboard, the payment
#               service Deployment (payment.mode=kafka) with its PDB and PodMonitor
#   full        every feature with the chart-managed Secret (URLs and JWT given as values)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CHART="$ROOT/helm/emporium"
KUBE_VERSION=1.33.0
RELEASE=emporium
NS=emporium-check

"$ROOT/scripts/tools.sh" helm kubernetes-validate promtool
HELM="$ROOT/.services/bin/helm"
KV="$ROOT/.services/venv/bin/kubernetes-validate"
PY="$ROOT/.services/venv/bin/python"

OUT="$(mktemp -d "${TMPDIR:-/tmp}/helm-check.XXXXXX")"
trap 'rm -rf "$OUT"' EXIT

step() { printf '\n==> %s\n' "$*"; }

# Keep in step with FULL_JWT / FULL_MYSQL_URL / FULL_PAYMENT_STORE_URL in helm_assert.py.
FULL_SET=(
    --set auth.jwtSecret=full-scenario-jwt-secret-0123456789abcdef
    --set mysql.enabled=true --set mysql.url=mysql://emporium:s3cret-pw@mysql.test:3306/shop
    --set kafka.enabled=true --set kafka.brokers=kafka-0.test:9092
    --set mongodb.enabled=true --set mongodb.url=mongodb://u:p@mongo.test:27017/catalog
    --set elasticsearch.enabled=true --set elasticsearch.url=http://u:p@es.test:9200
    --set telemetry.otlpEndpoint=http://otel.test:4317
    --set migrations.mode=job
    --set ingress.enabled=true
    --set metrics.serviceMonitor.enabled=true --set metrics.prometheusRule.enabled=true
    --set dashboard.enabled=true
    --set payment.mode=kafka
    --set paymentService.storeUrl=mysql://payments:pay-s3cret@mysql.test:3306/payments
)


step "chart files in sync with their sources"
"$ROOT/scripts/sync-chart-files.sh" --check

step "alert rules (promtool check + unit tests) and dashboard"
# The rules the PrometheusRule carries are unit-tested here (config/alerts_test.yml);
# see the script for the dashboard checks.
"$ROOT/scripts/observability-check.sh"

# Three replicas in cluster mode on MySQL (docs/cluster.md).
CLUSTER_SET=(
    --set auth.jwtSecret=cluster-scenario-jwt-secret-0123456789abcdef
    --set mysql.enabled=true --set mysql.url=mysql://emporium:s3cret-pw@mysql.test:3306/shop
    --set replicaCount=3 --set cluster.enabled=true
)

for sc in default production full cluster; do
    case "$sc" in
        default) args=() ;;
        production) args=(-f "$CHART/values-production.yaml") ;;
        full) args=("${FULL_SET[@]}") ;;
        cluster) args=("${CLUSTER_SET[@]}") ;;
    esac

    step "helm lint ($sc)"
    "$HELM" lint "$CHART" --strict --kube-version "$KUBE_VERSION" "${args[@]}"

    step "helm template ($sc)"
    "$HELM" template "$RELEASE" "$CHART" --namespace "$NS" --kube-version "$KUBE_VERSION" \
        "${args[@]}" >"$OUT/$sc.yaml"
    echo "rendered $(grep -c '^kind:' "$OUT/$sc.yaml") manifests into $OUT/$sc.yaml"

    step "kubernetes-validate --strict -k $KUBE_VERSION ($sc)"
    # CRD kinds (ServiceMonitor, PrometheusRule) have no schema in kubernetes-validate, which
    # would only WARN and pass them; split them off so that a WARN about a core kind (a
    # typo in apiVersion or kind) can be treated as the failure it is.
    "$PY" "$ROOT/scripts/helm_assert.py" split "$OUT/$sc.yaml" "$OUT/$sc"
    "$KV" --strict -k "$KUBE_VERSION" "$OUT/$sc/k8s.yaml" 2>&1 | tee "$OUT/$sc.kv.log"
    if grep -q "WARN\|ERROR" "$OUT/$sc.kv.log"; then
        echo "kubernetes-validate reported warnings or errors for core manifests ($sc)" >&2
        exit 1
    fi

    for rules in "$OUT/$sc"/rules-*.yml; do
        [ -e "$rules" ] || continue
        step "promtool check rules (PrometheusRule of $sc)"
        promtool check rules "$rules"
    done
done

step "promtool check rules helm/emporium/files/alerts.yml"
promtool check rules "$CHART/files/alerts.yml"

step "helm install --dry-run=client (default)"
# (helm install has no --kube-version; client mode uses Helm's built-in default version.)
"$HELM" install "$RELEASE" "$CHART" --dry-run=client --namespace "$NS" >"$OUT/dry-run.txt"
grep -q "ONE REPLICA ON PURPOSE" "$OUT/dry-run.txt" || { echo "NOTES.txt not rendered" >&2; exit 1; }
echo "dry-run ok (NOTES.txt rendered)"

step "helm package"
"$HELM" package "$CHART" --destination "$OUT/pkg" >/dev/null
ls "$OUT/pkg"

# must_fail NAME EXPECTED_TEXT HELM_TEMPLATE_ARGS...: the render must fail with the text.
must_fail() {
    local name="$1" expect="$2"
    shift 2
    if "$HELM" template "$RELEASE" "$CHART" --kube-version "$KUBE_VERSION" "$@" \
        >"$OUT/fail.out" 2>"$OUT/fail.err"; then
        echo "FAIL: '$name' rendered but must be refused" >&2
        exit 1
    fi
    if ! grep -q -- "$expect" "$OUT/fail.err"; then
        echo "FAIL: '$name' failed without the expected message '$expect':" >&2
        cat "$OUT/fail.err" >&2
        exit 1
    fi
    echo "ok: $name is refused: $(grep -o -m1 -- "$expect.\{0,60\}" "$OUT/fail.err")"
}

step "refused values"
must_fail "replicaCount=2 without cluster mode" "needs cluster.enabled=true" --set replicaCount=2
must_fail "cluster mode on the embedded SQLite store" "cluster.enabled=true needs mysql.enabled=true" \
    --set replicaCount=3 --set cluster.enabled=true
must_fail "grace period not above shutdown drain" "terminationGracePeriodSeconds" \
    --set terminationGracePeriodSeconds=20
must_fail "mysql enabled without url or existingSecret" "mysql.enabled is true" \
    --set mysql.enabled=true
must_fail "migration Job on the embedded SQLite store" "migrations.mode=job needs" \
    --set migrations.mode=job
must_fail "unknown top-level value (typo)" "replicaCont" --set replicaCont=1
must_fail "writable root filesystem" "readOnlyRootFilesystem" \
    --set securityContext.readOnlyRootFilesystem=false
must_fail "payment service without Kafka" "payment.mode=kafka needs kafka.enabled" \
    --set payment.mode=kafka --set paymentService.storeUrl=mysql://p@m:3306/p
must_fail "payment service without its own store" "payment.mode=kafka needs paymentService.storeUrl" \
    --set payment.mode=kafka --set kafka.enabled=true --set kafka.brokers=k:9092
must_fail "unknown payment mode" "mode" --set payment.mode=remote

step "helm_assert.py"
"$PY" "$ROOT/scripts/helm_assert.py" check \
    "default=$OUT/default.yaml" "production=$OUT/production.yaml" "full=$OUT/full.yaml" \
    "cluster=$OUT/cluster.yaml"

printf '\nhelm-check: all checks passed\n'
