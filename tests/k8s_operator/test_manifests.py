"""Every manifest the builders produce, validated against the Kubernetes 1.30 schemas offline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from rbi.k8s import manifests as m
from rbi.sandbox.limits import SandboxLimits

K8S = "1.30.0"
REPO = Path(__file__).resolve().parents[2]
CRD = yaml.safe_load((REPO / "crds" / "backteststrategies.rbi.dev.yaml").read_text())
OWNER = {"apiVersion": m.API_VERSION, "kind": m.KIND,
         "metadata": {"name": "sma-cross", "namespace": "research", "uid": "1b4e28ba-2fa1-11d2-883f-0016d3cca427"},
         "spec": {"code": "x = 1", "params": {"fast": 20}, "optimization": {"space": {"fast": [1, 2]}},
                  "limits": {"memory": "1Gi"}}}
LIMITS = SandboxLimits(memory_bytes=2 * 2**30, cpus=1.5, disk_bytes=100 * 10**6, timeout_seconds=300)


def validate(manifest: dict[str, Any]) -> None:
    kubernetes_validate.validate(manifest, K8S, strict=True)


def validate_cr(document: dict[str, Any]) -> None:
    schema = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    jsonschema.Draft4Validator(schema).validate(document)


@pytest.mark.parametrize("options", [
    m.JobOptions(),
    m.JobOptions(runtime_class="gvisor", dataset_pvc="datasets", ttl_seconds=60, image="registry/rbi:1"),
])
def test_run_job_is_valid_and_locked_down(options: m.JobOptions) -> None:
    job = m.build_job(name="sma-cross-1a2b3c4d", namespace="research", strategy="sma-cross", configmap="cm",
                      limits=LIMITS, options=options, owner=OWNER, run_key="k")
    validate(job)
    spec = job["spec"]
    pod = spec["template"]["spec"]
    [container] = pod["containers"]
    assert spec["backoffLimit"] == 0 and spec["activeDeadlineSeconds"] == 300 + m.DEADLINE_SLACK_SECONDS
    assert spec["ttlSecondsAfterFinished"] == options.ttl_seconds and spec["podFailurePolicy"]["rules"]
    assert container["resources"]["requests"] == container["resources"]["limits"]
    assert set(container["resources"]["limits"]) == {"cpu", "memory", "ephemeral-storage"}
    assert container["resources"]["limits"]["cpu"] == "1500m" and container["resources"]["limits"]["memory"] == "2Gi"
    assert pod["automountServiceAccountToken"] is False and pod["restartPolicy"] == "Never"
    assert pod.get("runtimeClassName") == options.runtime_class
    security = container["securityContext"]
    assert security["runAsNonRoot"] and security["runAsUser"] == 65532 and security["readOnlyRootFilesystem"]
    assert security["allowPrivilegeEscalation"] is False and security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    labels = spec["template"]["metadata"]["labels"]
    assert labels["rbi.dev/sandbox"] == "true" and labels["app.kubernetes.io/name"] == "rbi-sandbox"
    assert labels["app.kubernetes.io/managed-by"] == "rbi-operator"
    mounts = {v["mountPath"]: v for v in container["volumeMounts"]}
    assert mounts["/sandbox"]["readOnly"] and "/tmp" in mounts
    assert ("/data" in mounts) == bool(options.dataset_pvc)
    assert container["command"][:3] == ["python", "-m", "rbi.runner"]
    assert "--termination-log" in container["command"]
    assert not any("KEY" in e["name"] or "TOKEN" in e["name"] for e in container["env"])
    assert job["metadata"]["ownerReferences"][0]["uid"] == OWNER["metadata"]["uid"]


def test_indexed_trial_job_shards() -> None:
    options = m.JobOptions(trial_parallelism=4)
    job = m.build_indexed_trial_job(name="t", namespace="research", strategy="sma-cross", configmap="t", limits=LIMITS,
                                    options=options, owner=OWNER, trials=10, iteration=3)
    validate(job)
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 4
    assert job["spec"]["activeDeadlineSeconds"] == 3 * 300 + m.DEADLINE_SLACK_SECONDS  # ceil(10 / 4) trials a shard
    assert "--trials" in job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert job["metadata"]["labels"][m.LABEL_ITERATION] == "3"


def test_configmap_network_policy_and_event_are_valid() -> None:
    trials = m.build_trials_document(trials=[(0, {"fast": 5}), (1, {"fast": 10})], shards=2, keep=["sharpe_ratio"],
                                     data_fraction=(0.0, 0.7))
    request = m.run_request(mode="class", params={"fast": 5}, backtest={"cash": 10_000}, strategy_class=None,
                            data_path="bundled:BTC-USD-15m")
    configmap = m.build_code_configmap(name="c", namespace="research", strategy="sma-cross", code="x = 1",
                                       request=request, owner=OWNER, trials=trials, purpose="trials")
    validate(configmap)
    assert json.loads(configmap["data"]["trials.json"])["shards"] == 2 and configmap["immutable"] is True
    policy = m.build_network_policy(namespace="research")
    validate(policy)
    assert policy["spec"]["podSelector"] == {"matchLabels": {"rbi.dev/sandbox": "true"}}
    assert policy["spec"]["ingress"] == [] and policy["spec"]["egress"] == []
    validate(m.build_event(involved=OWNER, reason="JobCreated", message="Job x created", now="2026-01-01T00:00:00Z"))


def test_child_strategy_matches_the_crd_and_names_its_lineage() -> None:
    child = m.build_child_strategy(parent=OWNER, root="sma-cross", version=3, code="x = 2", params={"fast": 5},
                                   changes='{"fast": [20, 5]}')
    validate_cr(child)
    assert child["metadata"]["name"] == "sma-cross-v3"
    assert child["metadata"]["labels"] == {
        "rbi.dev/lineage-root": "sma-cross", "rbi.dev/version": "3", "rbi.dev/parent": "sma-cross",
        "app.kubernetes.io/managed-by": "rbi-operator"}
    assert "optimization" not in child["spec"] and child["spec"]["code"] == "x = 2"
    assert child["metadata"]["ownerReferences"][0]["controller"] is True
    assert m.child_name("a" * 63, 1000).endswith("-v1000") and len(m.child_name("a" * 63, 1000)) == 63


def test_the_crd_is_valid_and_accepts_the_example() -> None:
    validate(CRD)
    example = yaml.safe_load((REPO / "examples" / "strategies" / "sma_cross.yaml").read_text())
    validate_cr(example)
    columns = [c["name"] for c in CRD["spec"]["versions"][0]["additionalPrinterColumns"] if not c.get("priority")]
    assert columns == ["Phase", "Return %", "Sharpe", "Max DD %", "Trades", "Version", "Parent", "Age"]
    with pytest.raises(jsonschema.ValidationError):
        validate_cr({**example, "spec": {**example["spec"], "mode": "notebook"}})
    with pytest.raises(jsonschema.ValidationError):
        validate_cr({**example, "spec": {**example["spec"], "limits": {"timeoutSeconds": 100_000}}})


def test_names_are_dns_labels_and_deterministic() -> None:
    name = m.run_job_name("x" * 63, "uid", 1)
    assert len(name) <= 53 and name == m.run_job_name("x" * 63, "uid", 1) != m.run_job_name("x" * 63, "uid", 2)
    assert m.container_data_path({"path": "../data/BTC-USD-15m.csv.gz"}, m.JobOptions()) == "bundled:BTC-USD-15m"
    assert m.container_data_path({"path": "/Users/me/x.csv"}, m.JobOptions(dataset_pvc="d")) == "/data/x.csv"


def test_a_gpu_job_asks_for_nvidia_gpus_where_the_chart_says() -> None:
    from rbi.spec import spec_from_document

    gpu_options = m.JobOptions(gpu_node_selector={"nvidia.com/gpu.present": "true"},
                          gpu_tolerations=({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},))
    spec = spec_from_document({"apiVersion": "rbi.dev/v1alpha1", "kind": "BacktestStrategy",
                               "metadata": {"name": "g"}, "spec": {"code": "x = 1", "limits": {"gpu": 2}}},
                              base=Path("."))
    assert spec.gpu == 2
    job = m.build_job(name="g-1", namespace="ns", strategy="g", configmap="g-1", limits=SandboxLimits(),
                      options=gpu_options, owner=None, gpu=spec.gpu)
    validate(job)
    pod = job["spec"]["template"]["spec"]
    resources = pod["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == "2" == resources["requests"]["nvidia.com/gpu"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    # A Job without a GPU is scheduled as before: no GPU limit, no node selector, no tolerations.
    plain = m.build_job(name="p-1", namespace="ns", strategy="p", configmap="p-1", limits=SandboxLimits(),
                        options=gpu_options, owner=None)
    assert "nvidia.com/gpu" not in plain["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert "nodeSelector" not in plain["spec"]["template"]["spec"]
    trial = m.build_indexed_trial_job(name="g-2", namespace="ns", strategy="g", configmap="g-2",
                                      limits=SandboxLimits(), options=gpu_options, owner=None, trials=3, iteration=1,
                                      gpu=1)
    validate(trial)
    assert trial["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


@pytest.mark.parametrize("gpu", [-1, 17, 1.5, "2"])
def test_the_crd_and_the_spec_refuse_a_bad_gpu_count(gpu: Any) -> None:
    from rbi.errors import SpecError
    from rbi.spec import spec_from_document

    document = {"apiVersion": "rbi.dev/v1alpha1", "kind": "BacktestStrategy", "metadata": {"name": "g"},
                "spec": {"code": "x = 1", "limits": {"gpu": gpu}}}
    with pytest.raises(jsonschema.ValidationError):
        validate_cr(document)
    with pytest.raises(SpecError, match=r"spec\.limits\.gpu"):
        spec_from_document(document, base=Path("."))
