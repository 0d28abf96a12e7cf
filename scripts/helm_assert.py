#!/usr/bin/env python3
"""Assertions on the manifests `helm template` renders from helm/emporium.

Run by scripts/helm-check.sh with the venv's Python (needs PyYAML, which
kubernetes-validate brings along).

    helm_assert.py split RENDERED.yaml OUTDIR
        Writes OUTDIR/k8s.yaml (core Kubernetes kinds, for kubernetes-validate),
        OUTDIR/crd.yaml (prometheus-operator kinds, which have no schema there) and
        OUTDIR/rules-<name>.yml (each PrometheusRule's spec, for `promtool check rules`).

    helm_assert.py check SCENARIO=RENDERED.yaml ...
        SCENARIO is one of: default, production, full (see helm-check.sh). Prints one line
        per check and a closing "N passed, N failed"; exits 1 on any failure.
"""

import base64
import json
import os
import sys
import traceback

import yaml

CRD_GROUPS = ("monitoring.coreos.com/",)
JWT_ENV = "EMPORIUM__AUTH__JWT_SECRET"
BACKEND_ENV = (
    "EMPORIUM__STORE__URL",
    "EMPORIUM__BUS__BROKERS",
    "EMPORIUM__CATALOG__URL",
    "EMPORIUM__SEARCH__URL",
)
STANDARD_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
)
# Must match what helm-check.sh passes for the "full" scenario.
FULL_JWT = "full-scenario-jwt-secret-0123456789abcdef"
FULL_MYSQL_URL = "mysql://emporium:s3cret-pw@mysql.test:3306/shop"
FULL_PAYMENT_STORE_URL = "mysql://payments:pay-s3cret@mysql.test:3306/payments"


def load(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def is_crd_kind(doc):
    return doc.get("apiVersion", "").startswith(CRD_GROUPS)


# ---------------------------------------------------------------- split


def split(rendered, outdir):
    os.makedirs(outdir, exist_ok=True)
    docs = load(rendered)
    core = [d for d in docs if not is_crd_kind(d)]
    crds = [d for d in docs if is_crd_kind(d)]
    with open(os.path.join(outdir, "k8s.yaml"), "w", encoding="utf-8") as f:
        yaml.safe_dump_all(core, f, sort_keys=False)
    with open(os.path.join(outdir, "crd.yaml"), "w", encoding="utf-8") as f:
        yaml.safe_dump_all(crds, f, sort_keys=False)
    for d in crds:
        print(
            f"skip k8s schema: {d['kind']}/{d['metadata']['name']} ({d['apiVersion']}) is a "
            "prometheus-operator CRD with no schema in kubernetes-validate; "
            "checked by helm_assert.py" + (" and promtool" if d["kind"] == "PrometheusRule" else "")
        )
        if d["kind"] == "PrometheusRule":
            path = os.path.join(outdir, f"rules-{d['metadata']['name']}.yml")
            with open(path, "w", encoding="utf-8") as f:
                yaml.safe_dump(d["spec"], f, sort_keys=False)
    print(f"{len(core)} core manifests, {len(crds)} CRD manifests")


# ---------------------------------------------------------------- helpers for checks


def by_kind(docs, kind):
    return [d for d in docs if d.get("kind") == kind]


def one(docs, kind):
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected exactly one {kind}, found {len(found)}"
    return found[0]


def server_container(docs):
    sts = one(docs, "StatefulSet")
    containers = sts["spec"]["template"]["spec"]["containers"]
    found = [c for c in containers if c["name"] == "emporium"]
    assert found, "StatefulSet has no container named emporium"
    return found[0]


def env_map(container):
    return {e["name"]: e for e in container.get("env", [])}


def chart_secret(docs):
    """The chart-managed (non-hook) Secret, or None."""
    for d in by_kind(docs, "Secret"):
        if "helm.sh/hook" not in (d["metadata"].get("annotations") or {}):
            return d
    return None


def decoded(secret, key):
    return base64.b64decode(secret["data"][key]).decode()


def configmap_text(docs):
    """Everything any ConfigMap carries, as one string."""
    parts = []
    for cm in by_kind(docs, "ConfigMap"):
        parts.append(json.dumps(cm.get("data") or {}))
        parts.append(json.dumps(cm.get("binaryData") or {}))
        parts.append(json.dumps(cm["metadata"]))
    return "\n".join(parts)


def non_secret_text(docs):
    return "\n".join(json.dumps(d) for d in docs if d.get("kind") != "Secret")


def pod_labels(docs):
    return one(docs, "StatefulSet")["spec"]["template"]["metadata"]["labels"]


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


# ---------------------------------------------------------------- checks (all scenarios)


def check_replicas_one(docs, scenario):
    sts = one(docs, "StatefulSet")
    if scenario != "cluster":
        assert sts["spec"]["replicas"] == 1, f"replicas = {sts['spec']['replicas']}"
    # The only Deployment allowed is the payment service: a Deployment running the server
    # would run two owners of every SKU during a rollout.
    for d in by_kind(docs, "Deployment"):
        for c in d["spec"]["template"]["spec"]["containers"]:
            assert c.get("args", [""])[0] == "payment-service", f"Deployment {d['metadata']['name']} runs {c.get('args')}"


def check_probes(docs, _):
    c = server_container(docs)
    assert c["readinessProbe"]["httpGet"]["path"] == "/health/ready", c["readinessProbe"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/health/live", c["livenessProbe"]
    assert c["startupProbe"]["httpGet"]["path"] in ("/health/live", "/health/ready")
    for p in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[p]["httpGet"]["port"] == "http", f"{p} port"


def check_security_context(docs, _):
    pod = one(docs, "StatefulSet")["spec"]["template"]["spec"]
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True
    assert psc["runAsUser"] == 10001
    assert psc["seccompProfile"]["type"] == "RuntimeDefault"
    sc = server_container(docs)["securityContext"]
    assert sc["runAsNonRoot"] is True, "runAsNonRoot"
    assert sc["readOnlyRootFilesystem"] is True, "readOnlyRootFilesystem"
    assert sc["allowPrivilegeEscalation"] is False, "allowPrivilegeEscalation"
    assert sc["capabilities"]["drop"] == ["ALL"], "capabilities.drop"
    assert pod["automountServiceAccountToken"] is False


def check_tmp_and_data_volumes(docs, _):
    sts = one(docs, "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in server_container(docs)["volumeMounts"]}
    vols = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in vols[mounts["/tmp"]], "/tmp must be an emptyDir (read-only root fs)"
    claims = [t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates", [])]
    assert mounts["/var/lib/emporium"] in claims, "data dir must come from volumeClaimTemplates"


def check_config_mount(docs, _):
    c = server_container(docs)
    assert c["args"] == ["serve", "--config", "/etc/emporium/production.toml"], c["args"]
    env = env_map(c)
    assert env["EMPORIUM_ENV"]["value"] == "production"
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    pod = one(docs, "StatefulSet")["spec"]["template"]["spec"]
    vol = {v["name"]: v for v in pod["volumes"]}[mounts["/etc/emporium"]]
    cm_name = vol["configMap"]["name"]
    cms = {cm["metadata"]["name"]: cm for cm in by_kind(docs, "ConfigMap")}
    assert "production.toml" in cms[cm_name]["data"], "ConfigMap lacks production.toml"
    assert 'data_dir = "/var/lib/emporium"' in cms[cm_name]["data"]["production.toml"]


def check_jwt_from_secret_key_ref(docs, scenario):
    env = env_map(server_container(docs))
    jwt = env[JWT_ENV]
    assert "value" not in jwt, "JWT secret must not be an inline env value"
    ref = jwt["valueFrom"]["secretKeyRef"]
    secret = chart_secret(docs)
    if scenario == "production":
        assert secret is None, "no chart Secret expected with existingSecret"
        assert ref["name"] == "emporium-backends", ref
    else:
        assert secret is not None, "chart Secret missing"
        assert ref["name"] == secret["metadata"]["name"], ref
        assert ref["key"] in secret["data"], f"Secret lacks key {ref['key']}"


def check_jwt_not_in_configmaps(docs, scenario):
    secret = chart_secret(docs)
    if scenario == "full":
        jwt = FULL_JWT
        assert decoded(secret, "jwt-secret") == jwt
    elif secret is not None:
        jwt = decoded(secret, "jwt-secret")
        assert len(jwt) >= 32, "generated JWT secret too short"
    else:
        return  # production: the key lives only in the existing Secret
    assert jwt not in configmap_text(docs), "JWT secret found in a ConfigMap"
    assert jwt not in non_secret_text(docs), "JWT secret found outside a Secret"


def check_standard_labels(docs, _):
    for d in docs:
        labels = d["metadata"].get("labels") or {}
        missing = [k for k in STANDARD_LABELS if k not in labels]
        assert not missing, f"{d['kind']}/{d['metadata']['name']} lacks {missing}"


def check_services_select_pod(docs, _):
    labels = pod_labels(docs)
    sts = one(docs, "StatefulSet")
    assert selects(sts["spec"]["selector"]["matchLabels"], labels)
    services = {s["metadata"]["name"]: s for s in by_kind(docs, "Service")}
    assert len(services) == 2, list(services)
    headless = services[sts["spec"]["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None", "StatefulSet serviceName must be headless"
    for s in services.values():
        assert selects(s["spec"]["selector"], labels), f"Service {s['metadata']['name']}"
        assert s["spec"]["ports"][0]["targetPort"] == "http"
    pdbs = [p for p in by_kind(docs, "PodDisruptionBudget") if selects(p["spec"]["selector"]["matchLabels"], labels)]
    assert len(pdbs) == 1, f"{len(pdbs)} PodDisruptionBudgets select the server pod"


def check_grace_period(docs, _):
    pod = one(docs, "StatefulSet")["spec"]["template"]["spec"]
    grace = int(env_map(server_container(docs))["EMPORIUM__SERVER__SHUTDOWN_GRACE_SECS"]["value"])
    assert pod["terminationGracePeriodSeconds"] == 30, pod["terminationGracePeriodSeconds"]
    assert pod["terminationGracePeriodSeconds"] > grace


def check_migration_job_pod_not_selected(docs, _):
    sts_sel = one(docs, "StatefulSet")["spec"]["selector"]["matchLabels"]
    for job in by_kind(docs, "Job"):
        labels = job["spec"]["template"]["metadata"]["labels"]
        assert not selects(sts_sel, labels), "migration pod would match the server selector"


# ---------------------------------------------------------------- scenario-specific checks


def check_default_is_embedded(docs, _):
    env = env_map(server_container(docs))
    for name in BACKEND_ENV:
        assert name not in env, f"{name} set in the embedded default"
    for kind in ("Job", "Ingress", "ServiceMonitor", "PrometheusRule", "Deployment", "PodMonitor"):
        assert not by_kind(docs, kind), f"{kind} rendered by default"
    assert "EMPORIUM__PAYMENT__MODE" not in env, "the default charges in-process (payment.mode local)"


def check_backends_from_secret(docs, scenario):
    env = env_map(server_container(docs))
    secret = chart_secret(docs)
    # Production values and the "full" scenario enable every external backend.
    names = BACKEND_ENV
    for name in names:
        assert name in env, f"{name} missing"
        assert "value" not in env[name], f"{name} must come from the Secret"
        ref = env[name]["valueFrom"]["secretKeyRef"]
        if scenario == "production":
            assert ref["name"] == "emporium-backends"
        else:
            assert ref["name"] == secret["metadata"]["name"]
            assert ref["key"] in secret["data"], f"Secret lacks {ref['key']}"
    assert env["EMPORIUM__BUS__KIND"]["value"] == "kafka"
    assert env["EMPORIUM__TELEMETRY__OTLP_ENDPOINT"]["value"].startswith("http")
    if scenario == "full":
        assert FULL_MYSQL_URL not in non_secret_text(docs), "MySQL URL leaked outside a Secret"


def check_migration_job(docs, scenario):
    job = one(docs, "Job")
    ann = job["metadata"]["annotations"]
    assert ann["helm.sh/hook"] == "pre-install,pre-upgrade"
    c = job["spec"]["template"]["spec"]["containers"][0]
    assert c["args"] == ["migrate"], c["args"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    ref = env_map(c)["EMPORIUM__STORE__URL"]["valueFrom"]["secretKeyRef"]
    env = env_map(server_container(docs))
    assert env["EMPORIUM__STORE__MIGRATE_ON_START"]["value"] == "false"
    if scenario == "full":
        # The hook Secret must exist before the Job (hooks run before release resources).
        hook_secrets = [
            s for s in by_kind(docs, "Secret")
            if "helm.sh/hook" in (s["metadata"].get("annotations") or {})
        ]
        assert [s["metadata"]["name"] for s in hook_secrets] == [ref["name"]], ref
        weight = int(hook_secrets[0]["metadata"]["annotations"]["helm.sh/hook-weight"])
        assert weight < int(ann["helm.sh/hook-weight"]), "hook Secret must come before the Job"
        assert decoded(hook_secrets[0], ref["key"]) == FULL_MYSQL_URL
    else:
        assert ref["name"] == "emporium-backends"


def check_monitoring(docs, _):
    sm = one(docs, "ServiceMonitor")
    ep = sm["spec"]["endpoints"][0]
    assert ep["path"] == "/metrics" and ep["port"] == "http", ep
    sel = sm["spec"]["selector"]
    matched = [
        s for s in by_kind(docs, "Service")
        if selects(sel["matchLabels"], s["metadata"]["labels"])
        and all(
            e["operator"] != "DoesNotExist" or e["key"] not in s["metadata"]["labels"]
            for e in sel.get("matchExpressions", [])
        )
    ]
    assert len(matched) == 1, f"ServiceMonitor must select exactly one Service, got {len(matched)}"
    assert any(p["name"] == "http" for p in matched[0]["spec"]["ports"])
    rule = one(docs, "PrometheusRule")
    groups = rule["spec"]["groups"]
    assert groups and all(g["rules"] for g in groups), "PrometheusRule has no rules"
    dash = [cm for cm in by_kind(docs, "ConfigMap") if cm["metadata"]["labels"].get("grafana_dashboard") == "1"]
    assert len(dash) == 1, "one dashboard ConfigMap labelled grafana_dashboard: \"1\""
    (content,) = dash[0]["data"].values()
    board = json.loads(content)
    assert board.get("title") and isinstance(board.get("panels"), list)


def check_payment_service(docs, scenario):
    """payment.mode=kafka: the payment service Deployment with probes, resources, its PDB,
    the server's security context, its secrets from the Secret, and a PodMonitor."""
    dep = one(docs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["args"] == ["payment-service", "--config", "/etc/emporium/production.toml"], c["args"]
    assert dep["spec"]["replicas"] >= 2, "one replica would stop charging during every drain"
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    env = env_map(c)
    port = next(p for p in c["ports"] if p["name"] == "http")["containerPort"]
    assert env["EMPORIUM__PAYMENT_SERVICE__LISTEN"]["value"] == f"0.0.0.0:{port}", "probes and listener disagree"
    assert c["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": "http"}, c["readinessProbe"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/health/live", "port": "http"}, c["livenessProbe"]
    assert c["startupProbe"]["httpGet"]["port"] == "http"
    res = c["resources"]
    assert res["requests"]["cpu"] and res["requests"]["memory"] and res["limits"]["memory"], res
    # The same security context as the server, pod and container.
    sts_pod = one(docs, "StatefulSet")["spec"]["template"]["spec"]
    assert pod["securityContext"] == sts_pod["securityContext"], "pod securityContext differs from the server's"
    assert c["securityContext"] == server_container(docs)["securityContext"], "container securityContext differs"
    assert pod["automountServiceAccountToken"] is False
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in vols[mounts["/tmp"]], "/tmp must be an emptyDir (read-only root fs)"
    # Secrets only by reference; the server waits for the outcomes (payment.mode kafka).
    secret = chart_secret(docs)
    for name in ("EMPORIUM__PAYMENT_SERVICE__STORE_URL", "EMPORIUM__BUS__BROKERS"):
        assert "value" not in env[name], f"{name} must come from the Secret"
        ref = env[name]["valueFrom"]["secretKeyRef"]
        if scenario == "production":
            assert ref["name"] == "emporium-backends", ref
        else:
            assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["data"], ref
    if scenario == "full":
        assert decoded(secret, "payment-store-url") == FULL_PAYMENT_STORE_URL
        assert FULL_PAYMENT_STORE_URL not in non_secret_text(docs), "payment store URL leaked outside a Secret"
    assert env["EMPORIUM__BUS__KIND"]["value"] == "kafka"
    assert env_map(server_container(docs))["EMPORIUM__PAYMENT__MODE"]["value"] == "kafka"
    # Its own selector: no server Service, PDB or StatefulSet picks its pods, and back.
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert selects(dep["spec"]["selector"]["matchLabels"], labels)
    assert not selects(one(docs, "StatefulSet")["spec"]["selector"]["matchLabels"], labels)
    assert not selects(dep["spec"]["selector"]["matchLabels"], pod_labels(docs))
    for svc in by_kind(docs, "Service"):
        assert not selects(svc["spec"]["selector"], labels), f"Service {svc['metadata']['name']} selects payment pods"
    pdbs = [p for p in by_kind(docs, "PodDisruptionBudget") if selects(p["spec"]["selector"]["matchLabels"], labels)]
    assert len(pdbs) == 1, f"{len(pdbs)} PodDisruptionBudgets select the payment pods"
    assert pdbs[0]["spec"].get("maxUnavailable") == 1 or "minAvailable" in pdbs[0]["spec"], pdbs[0]["spec"]
    pm = one(docs, "PodMonitor")
    assert selects(pm["spec"]["selector"]["matchLabels"], labels), "PodMonitor misses the payment pods"
    assert pm["spec"]["podMetricsEndpoints"][0] == {**pm["spec"]["podMetricsEndpoints"][0], "port": "http", "path": "/metrics"}


def check_ingress(docs, _):
    ing = one(docs, "Ingress")
    svc_names = {s["metadata"]["name"] for s in by_kind(docs, "Service")}
    for rule in ing["spec"]["rules"]:
        for p in rule["http"]["paths"]:
            assert p["backend"]["service"]["name"] in svc_names
            assert p["backend"]["service"]["port"]["name"] == "http"


COMMON = [
    check_replicas_one,
    check_probes,
    check_security_context,
    check_tmp_and_data_volumes,
    check_config_mount,
    check_jwt_from_secret_key_ref,
    check_jwt_not_in_configmaps,
    check_standard_labels,
    check_services_select_pod,
    check_grace_period,
    check_migration_job_pod_not_selected,
]
def check_cluster_mode(docs, _):
    """Three replicas, each a member named after its pod and advertised at its headless
    DNS name; readiness (ownership) gates traffic; a PDB limits voluntary disruption."""
    sts = one(docs, "StatefulSet")
    assert sts["spec"]["replicas"] == 3
    c = sts["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in c["env"]}
    assert env["EMPORIUM__CLUSTER__ENABLED"]["value"] == "true"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["EMPORIUM__CLUSTER__NODE_ID"]["value"] == "$(POD_NAME)"
    headless = [s for s in by_kind(docs, "Service") if s["spec"].get("clusterIP") == "None"]
    assert len(headless) == 1 and headless[0]["spec"]["publishNotReadyAddresses"] is True
    url = env["EMPORIUM__CLUSTER__ADVERTISE_URL"]["value"]
    assert url.startswith(f"http://$(POD_NAME).{headless[0]['metadata']['name']}."), url
    assert sts["spec"]["serviceName"] == headless[0]["metadata"]["name"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"].get("maxUnavailable") == 1


SCENARIOS = {
    "default": COMMON + [check_default_is_embedded],
    "production": COMMON
    + [check_backends_from_secret, check_migration_job, check_monitoring, check_ingress, check_payment_service],
    "full": COMMON
    + [check_backends_from_secret, check_migration_job, check_monitoring, check_ingress, check_payment_service],
    "cluster": COMMON + [check_cluster_mode],
}


def check(args):
    passed = failed = 0
    for arg in args:
        scenario, _, path = arg.partition("=")
        if scenario not in SCENARIOS or not path:
            sys.exit(f"bad argument {arg!r}: expected one of {list(SCENARIOS)}=FILE")
        docs = load(path)
        for fn in SCENARIOS[scenario]:
            name = f"{scenario}::{fn.__name__}"
            try:
                fn(docs, scenario)
            except Exception as e:  # noqa: BLE001 - report every failure, keep going
                failed += 1
                detail = str(e) or traceback.format_exc(limit=1).strip().splitlines()[-1]
                print(f"FAIL {name}: {type(e).__name__}: {detail}")
            else:
                passed += 1
                print(f"ok   {name}")
    print(f"helm_assert: {passed} passed, {failed} failed")
    return 1 if failed else 0


def main(argv):
    if len(argv) >= 2 and argv[1] == "split" and len(argv) == 4:
        split(argv[2], argv[3])
        return 0
    if len(argv) >= 3 and argv[1] == "check":
        return check(argv[2:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
