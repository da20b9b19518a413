"""The Helm chart: lint, render with default and with the main options, validate every manifest."""

from __future__ import annotations

import re
import tarfile
from pathlib import Path
from typing import Any

import kubernetes_validate
import kubernetes_validate.utils
import pytest
import yaml

from .helm import (
    CHART,
    CRD_SOURCE,
    KUBE_VERSION,
    NAMESPACE,
    RELEASE,
    REPO,
    Rendered,
    render,
    run_helm,
    template_args,
)

VALUES = Path(__file__).resolve().parent / "values"
SCENARIOS = {
    "defaults": None,
    "cluster-wide": VALUES / "cluster-wide.yaml",
    "namespaced": VALUES / "namespaced.yaml",
}
# Kinds of the prometheus-operator: no schema in kubernetes-validate, so they are checked structurally below.
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule"}
KEEP = "helm.sh/resource-policy"


@pytest.fixture(scope="module")
def rendered() -> dict[str, Rendered]:
    return {name: render(path) for name, path in SCENARIOS.items()}


def env_of(deployment: dict[str, Any]) -> dict[str, Any]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_helm_lint_strict(scenario: str) -> None:
    args = ["lint", str(CHART), "--strict", "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION]
    if SCENARIOS[scenario] is not None:
        args += ["--values", str(SCENARIOS[scenario])]
    proc = run_helm(*args)
    assert "0 chart(s) failed" in proc.stdout, proc.stdout


# The chart's kubeVersion floor, the kubectl/Helm layer's version, and the newest schemas at hand.
VALIDATE_VERSIONS = ["1.27.0", KUBE_VERSION, kubernetes_validate.utils.latest_version()]


@pytest.mark.parametrize("version", VALIDATE_VERSIONS)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_manifest_is_valid_kubernetes(rendered: dict[str, Rendered], scenario: str, version: str) -> None:
    docs = rendered[scenario].docs
    assert docs
    for doc in docs:
        name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        if doc["kind"] in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{scenario}: {name} is invalid for {version}: {exc.message} at {list(exc.path)}")
        labels = doc["metadata"].get("labels") or {}
        assert labels.get("app.kubernetes.io/part-of") == "rbi", name
        if doc["kind"] not in {"CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}:
            assert doc["metadata"].get("namespace"), f"{name} has no namespace"


def test_defaults_render_the_expected_objects(rendered: dict[str, Rendered]) -> None:
    kinds = sorted(d["kind"] for d in rendered["defaults"].docs)
    assert kinds == sorted([
        "CustomResourceDefinition", "ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding",
        "Deployment", "Service", "NetworkPolicy", "PersistentVolumeClaim",
    ])


def test_options_render_the_optional_objects(rendered: dict[str, Rendered]) -> None:
    wide = rendered["cluster-wide"]
    assert {d["kind"] for d in wide.docs} >= {"ServiceMonitor", "PrometheusRule", "ConfigMap", "ClusterRole"}
    assert not wide.of_kind("Role") and not wide.of_kind("PersistentVolumeClaim")  # PostgreSQL, existing claim
    names = sorted(d["metadata"]["name"] for d in wide.of_kind("PersistentVolumeClaim"))
    assert names == []
    claims = sorted(d["metadata"]["name"] for d in rendered["namespaced"].of_kind("PersistentVolumeClaim"))
    assert claims == ["rbi-datasets"]  # the store uses the existing claim


# --- the CRD: one source -------------------------------------------------------------------------------------


def test_chart_crd_file_is_crds_source() -> None:
    linked = CHART / "files" / "backteststrategies.rbi.dev.yaml"
    assert linked.read_bytes() == CRD_SOURCE.read_bytes()
    assert linked.is_symlink(), "the chart must link to crds/, not keep a copy that can drift"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_rendered_crd_equals_crds_source(rendered: dict[str, Rendered], scenario: str) -> None:
    source = yaml.safe_load(CRD_SOURCE.read_text(encoding="utf-8"))
    crd = rendered[scenario].one("CustomResourceDefinition")
    keep = (crd["metadata"].get("annotations") or {}).pop(KEEP, None)
    if not crd["metadata"].get("annotations"):
        crd["metadata"].pop("annotations", None)
    assert crd == source
    assert keep == ("keep" if scenario != "cluster-wide" else None)
    # Byte for byte too: the rendered text is the file plus the annotation lines.
    text = rendered[scenario].text
    marker = "# Source: rbi-operator/templates/crd.yaml\n"
    start = text.index(marker) + len(marker)
    end = text.find("\n---", start)
    body = text[start:end if end >= 0 else None]
    body = body.replace("  annotations:\n    helm.sh/resource-policy: keep\n", "")
    assert body.rstrip("\n") == CRD_SOURCE.read_text(encoding="utf-8").rstrip("\n")


def test_crd_can_be_left_out() -> None:
    assert not render(sets=["crd.install=false"]).of_kind("CustomResourceDefinition")


def test_packaged_chart_carries_the_crd_content(tmp_path: Path) -> None:
    run_helm("package", str(CHART), "--destination", str(tmp_path))
    (archive,) = tmp_path.glob("rbi-operator-*.tgz")
    with tarfile.open(archive) as tar:
        member = tar.getmember("rbi-operator/files/backteststrategies.rbi.dev.yaml")
        assert member.isfile(), "helm package must store the CRD's content, not a link"
        data = tar.extractfile(member)
        assert data is not None and data.read() == CRD_SOURCE.read_bytes()
    packaged = render(chart=archive)
    assert packaged.one("CustomResourceDefinition") == render().one("CustomResourceDefinition")


def test_upgrade_renders_the_crd_as_a_template() -> None:
    # Helm upgrades templates, never a chart's crds/ folder: the CRD must be among the templates.
    proc = run_helm(*template_args(), "--is-upgrade")
    assert "kind: CustomResourceDefinition" in proc.stdout
    assert not (CHART / "crds").exists()


# --- values.schema.json --------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["unknown=1", "sandbox.limitz.cpu=1", "metrics.prometheusRule.alerts.nope.enabled=true",
                                 "image.pullPolicy=Sometimes", "sandbox.maxActiveJobs=0",
                                 "sandbox.runtimeClassName=Not_A_Name"])
def test_schema_rejects_unknown_keys_and_bad_values(bad: str) -> None:
    proc = run_helm(*template_args(sets=[bad]), check=False)
    assert proc.returncode != 0, f"--set {bad} was accepted"
    assert "schema" in proc.stderr or "values don't meet" in proc.stderr, proc.stderr


def test_every_value_is_in_the_schema() -> None:
    schema = yaml.safe_load((CHART / "values.schema.json").read_text(encoding="utf-8"))
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))

    def walk(node: Any, sub: dict[str, Any], path: str) -> None:
        if isinstance(node, dict) and sub.get("type") == "object" and "properties" in sub:
            assert sub.get("additionalProperties") is False, f"{path or 'values'} accepts unknown keys"
            assert set(node) == set(sub["properties"]), f"{path}: values and schema differ"
            for key, child in node.items():
                walk(child, sub["properties"][key], f"{path}.{key}".lstrip("."))

    walk(values, schema, "")


# --- the Deployment ------------------------------------------------------------------------------------------


def test_deployment_defaults(rendered: dict[str, Rendered]) -> None:
    deployment = rendered["defaults"].one("Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["rbi", "operator"]
    assert container["args"] == ["--namespace", NAMESPACE, "--liveness-port", "8080"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 9090, "health": 8080}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert volumes[mounts["/var/lib/rbi"]]["persistentVolumeClaim"]["claimName"] == f"{RELEASE}-store"
    env = env_of(deployment)
    assert env["RBI_DB_URL"] == "sqlite:////var/lib/rbi/results.db"
    assert env["RBI_HOME"] == "/var/lib/rbi" and env["RBI_METRICS_PORT"] == "9090"
    assert env["RBI_SANDBOX_IMAGE"] == "rbi-sandbox:0.1.0" and env["RBI_MAX_ACTIVE_JOBS"] == "4"
    assert env["RBI_JOB_TTL_SECONDS"] == "3600"
    assert "RBI_RUNTIME_CLASS" not in env and "RBI_DATASET_PVC" not in env and "OPENAI_API_KEY" not in env
    assert container["image"] == "rbi-operator:0.1.0"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    service = rendered["defaults"].one("Service")
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}]
    template_labels = spec["template"]["metadata"]["labels"]
    assert all(template_labels.get(k) == v for k, v in service["spec"]["selector"].items())


def test_deployment_with_options(rendered: dict[str, Rendered]) -> None:
    deployment = rendered["cluster-wide"].one("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["--all-namespaces", "--liveness-port", "8080", "--verbose"]
    assert container["image"].endswith("@sha256:" + "0123456789abcdef" * 4)
    env = env_of(deployment)
    assert env["RBI_DB_URL"] == {"secretKeyRef": {"name": "rbi-postgres", "key": "database-url"}}
    assert env["OPENAI_API_KEY"] == {"secretKeyRef": {"name": "rbi-llm", "key": "api-key"}}
    assert env["OPENAI_BASE_URL"] == {"secretKeyRef": {"name": "rbi-llm", "key": "base-url", "optional": True}}
    assert env["RBI_MODEL"] == "gpt-4.1-mini"
    assert env["RBI_RUNTIME_CLASS"] == "gvisor" and env["RBI_DATASET_PVC"] == "market-data"
    assert env["RBI_SANDBOX_IMAGE"] == "registry.example.com/rbi/rbi-sandbox:0.1.0-test"
    assert env["RBI_MAX_ACTIVE_JOBS"] == "16" and env["RBI_EXTRA"] == "1"
    assert env["RBI_IMAGE_PULL_POLICY"] == "Always" and env["RBI_TRIAL_PARALLELISM"] == "8"
    # PostgreSQL: no store volume, RBI_HOME is scratch.
    home = next(v for v in pod["volumes"] if v["name"] == "home")
    assert "emptyDir" in home
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]

    ns = rendered["namespaced"].one("Deployment")
    (container,) = ns["spec"]["template"]["spec"]["containers"]
    assert container["args"][:2] == ["--namespace", "strategies"]
    env = env_of(ns)
    assert env["OPENAI_API_KEY"] == {"secretKeyRef": {"name": "llm-endpoint", "key": "token"}}
    assert env["OPENAI_BASE_URL"]["secretKeyRef"]["key"] == "url"
    assert env["RBI_DATASET_PVC"] == "rbi-datasets" and env["RBI_RUNTIME_CLASS"] == "kata"
    home = next(v for v in ns["spec"]["template"]["spec"]["volumes"] if v["name"] == "home")
    assert home["persistentVolumeClaim"]["claimName"] == "rbi-results"


def test_every_setting_the_chart_passes_is_read_by_the_operator(rendered: dict[str, Rendered]) -> None:
    # An environment variable nothing reads would be a value that silently does nothing.
    source = "\n".join(p.read_text(encoding="utf-8") for p in (REPO / "operator" / "rbi").rglob("*.py"))
    names = set()
    for scenario in SCENARIOS:
        names |= set(env_of(rendered[scenario].one("Deployment")))
    names.discard("RBI_EXTRA")  # operator.extraEnv in the test values
    unread = {name for name in names if not re.search(rf"[\"']{name}[\"']", source)}
    assert not unread, f"the Deployment sets {sorted(unread)}, which no module under operator/rbi reads"


def test_llm_secret_never_reaches_sandbox_settings(rendered: dict[str, Rendered]) -> None:
    # The operator gets the key; the settings it passes on to Jobs are plain values, none from a Secret.
    env = env_of(rendered["cluster-wide"].one("Deployment"))
    for name, value in env.items():
        if name.startswith("RBI_SANDBOX") or name in {"RBI_RUNTIME_CLASS", "RBI_DATASET_PVC", "RBI_IMAGE_PULL_POLICY"}:
            assert isinstance(value, str), name


def test_kept_pvcs(rendered: dict[str, Rendered]) -> None:
    (store,) = rendered["defaults"].of_kind("PersistentVolumeClaim")
    assert store["metadata"]["annotations"][KEEP] == "keep"
    assert store["spec"]["accessModes"] == ["ReadWriteOnce"]
    (data,) = rendered["namespaced"].of_kind("PersistentVolumeClaim")
    assert data["spec"]["storageClassName"] == "nfs" and data["spec"]["resources"]["requests"]["storage"] == "20Gi"
    assert data["spec"]["accessModes"] == ["ReadWriteMany"]
    no_keep = render(sets=["store.persistence.keep=false"]).one("PersistentVolumeClaim")
    assert KEEP not in (no_keep["metadata"].get("annotations") or {})


# --- RBAC ----------------------------------------------------------------------------------------------------

APPLICATION = {
    ("rbi.dev", "backteststrategies"): {"get", "list", "watch", "create", "patch", "delete"},
    ("rbi.dev", "backteststrategies/status"): {"get", "patch", "update"},
    ("batch", "jobs"): {"get", "list", "watch", "create", "delete"},
    ("", "pods"): {"get", "list", "watch"},
    ("", "pods/log"): {"get"},
    ("", "configmaps"): {"get", "list", "create", "patch", "delete"},
    ("networking.k8s.io", "networkpolicies"): {"get", "create", "patch"},
    ("", "events"): {"create"},
    ("events.k8s.io", "events"): {"create"},
}
FRAMEWORK_CLUSTER = {
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"},
    ("", "namespaces"): {"list", "watch"},
}


def grants(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
        assert not rule.get("resourceNames") and not rule.get("nonResourceURLs")
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def test_rbac_one_namespace(rendered: dict[str, Rendered]) -> None:
    ns = rendered["namespaced"]
    role = ns.one("Role")
    assert role["metadata"]["namespace"] == "strategies"
    assert grants(role["rules"]) == APPLICATION
    binding = ns.one("RoleBinding")
    assert binding["metadata"]["namespace"] == "strategies"
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "rbi"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "rbi", "namespace": NAMESPACE}]
    # The only cluster-wide grant in one-namespace mode: reading CRDs, for kopf.
    crds = {("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"}}
    assert grants(ns.one("ClusterRole")["rules"]) == crds
    assert ns.one("ClusterRoleBinding")["roleRef"]["name"] == ns.one("ClusterRole")["metadata"]["name"]


def test_rbac_all_namespaces(rendered: dict[str, Rendered]) -> None:
    wide = rendered["cluster-wide"]
    assert grants(wide.one("ClusterRole")["rules"]) == APPLICATION | FRAMEWORK_CLUSTER
    binding = wide.one("ClusterRoleBinding")
    assert binding["roleRef"]["kind"] == "ClusterRole"
    assert binding["subjects"][0]["namespace"] == NAMESPACE


def test_every_rbac_rule_says_framework_or_application() -> None:
    source = (CHART / "templates" / "rbac.yaml").read_text(encoding="utf-8").splitlines()
    rules = [i for i, line in enumerate(source) if line.strip().startswith("- apiGroups:")]
    assert len(rules) >= 12
    for index in rules:
        start = index  # the first line of the comment block just above the rule
        while start > 0 and source[start - 1].strip().startswith("#"):
            start -= 1
        comment = source[start].strip() if start < index else ""
        assert re.match(r"# (framework|application)( \+ (framework|application))?: \S", comment), (
            f"rbac.yaml line {index + 1}: the rule needs a '# framework: …' or '# application: …' comment")


# --- NetworkPolicy, prometheus-operator objects, dashboards ConfigMaps -----------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_sandbox_network_policy_denies_all(rendered: dict[str, Rendered], scenario: str) -> None:
    policies = rendered[scenario].of_kind("NetworkPolicy")
    expected = {"namespaced": {NAMESPACE, "strategies"}}.get(scenario, {NAMESPACE})
    assert {p["metadata"]["namespace"] for p in policies} == expected
    for policy in policies:
        spec = policy["spec"]
        assert spec["podSelector"] == {"matchLabels": {"rbi.dev/sandbox": "true"}}
        assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
        assert not spec.get("ingress") and not spec.get("egress")


def test_network_policy_can_be_turned_off() -> None:
    assert not render(sets=["sandbox.networkPolicy.enabled=false"]).of_kind("NetworkPolicy")


def test_service_monitor_structure(rendered: dict[str, Rendered]) -> None:
    monitor = rendered["cluster-wide"].one("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    service = rendered["cluster-wide"].one("Service")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert all(service["metadata"]["labels"].get(k) == v for k, v in selector.items())
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"] == "metrics"
    assert endpoint["path"] == "/metrics"
    assert re.fullmatch(r"\d+[smh]", endpoint["interval"])


def test_service_monitor_needs_the_service() -> None:
    proc = run_helm(*template_args(sets=["metrics.serviceMonitor.enabled=true", "metrics.service.enabled=false"]),
                    check=False)
    assert proc.returncode != 0 and "metrics.service.enabled" in proc.stderr


def test_prometheus_rule_structure(rendered: dict[str, Rendered]) -> None:
    rule = rendered["cluster-wide"].one("PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(rule["spec"]) == {"groups"}
    (group,) = rule["spec"]["groups"]
    alerts = {r["alert"]: r for r in group["rules"]}
    assert set(alerts) == {"RbiRunFailureRateHigh", "RbiSandboxErrors", "RbiQueueStuck", "RbiOperatorDown",
                           "RbiHandlerErrors", "RbiLlmErrorRateHigh"}
    for name, alert in alerts.items():
        assert set(alert) <= {"alert", "expr", "for", "labels", "annotations"}, name
        assert alert["labels"]["severity"] in {"info", "warning", "critical"}
        assert alert["annotations"]["summary"] and alert["annotations"]["description"]
        assert f'job="{RELEASE}-metrics"' in alert["expr"] and f'namespace="{NAMESPACE}"' in alert["expr"]
    # Switches and thresholds: llmErrors off, failureRate tuned.
    (group,) = rendered["namespaced"].one("PrometheusRule")["spec"]["groups"]
    alerts = {r["alert"]: r for r in group["rules"]}
    assert "RbiLlmErrorRateHigh" not in alerts
    assert alerts["RbiRunFailureRateHigh"]["for"] == "30m" and "> 0.8" in alerts["RbiRunFailureRateHigh"]["expr"]
    assert "[1h]" in alerts["RbiRunFailureRateHigh"]["expr"]
    assert 'up{kubernetes_namespace="rbi", app="rbi-operator"}' in alerts["RbiOperatorDown"]["expr"]
    assert all('job="' not in rule["expr"] for rule in alerts.values())


def test_dashboard_configmaps(rendered: dict[str, Rendered]) -> None:
    maps = rendered["cluster-wide"].of_kind("ConfigMap")
    assert len(maps) == 3
    for cm in maps:
        assert cm["metadata"]["labels"]["grafana_dashboard_rbi"] == "yes"
        assert cm["metadata"]["namespace"] == "monitoring"
        assert cm["metadata"]["annotations"] == {"grafana_folder": "rbi"}
        ((filename, text),) = cm["data"].items()
        assert text.strip() == (CHART / "dashboards" / filename).read_text(encoding="utf-8").strip()
    assert not rendered["defaults"].of_kind("ConfigMap")


def test_notes_say_what_to_run_next() -> None:
    proc = run_helm("install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client",
                    "--values", str(VALUES / "cluster-wide.yaml"))
    notes = proc.stdout[proc.stdout.index("NOTES:"):]
    for expected in ("rollout status deployment/rbi-operator", "get bts -w", "apply -f",
                     "port-forward svc/rbi-operator-metrics", "PostgreSQL", "grafana_dashboard_rbi=yes"):
        assert expected in notes, expected
