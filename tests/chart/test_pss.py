"""The restricted Pod Security Standard: the checker itself, the chart's Deployment, the operator's Jobs."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import kubernetes_validate
import pytest

from .helm import KUBE_VERSION, render
from .pss import pod_template, violations

Pod = dict[str, Any]


def compliant_pod() -> Pod:
    return {
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{
            "name": "app", "image": "x",
            "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        }],
        "volumes": [{"name": "tmp", "emptyDir": {}}, {"name": "cfg", "configMap": {"name": "c"}}],
    }


def container(pod: Pod) -> dict[str, Any]:
    result: dict[str, Any] = pod["containers"][0]["securityContext"]
    return result


MUTATIONS: dict[str, Callable[[Pod], None]] = {
    "hostNetwork": lambda p: p.update(hostNetwork=True),
    "hostPID": lambda p: p.update(hostPID=True),
    "hostIPC": lambda p: p.update(hostIPC=True),
    "hostPath volume": lambda p: p["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
    "nfs volume": lambda p: p["volumes"].append({"name": "n", "nfs": {"server": "s", "path": "/"}}),
    "privileged": lambda p: container(p).update(privileged=True),
    "hostPort": lambda p: p["containers"][0].update(ports=[{"containerPort": 80, "hostPort": 80}]),
    "added capability": lambda p: container(p)["capabilities"].update(add=["SYS_ADMIN"]),
    "no drop ALL": lambda p: container(p)["capabilities"].update(drop=["NET_RAW"]),
    "privilege escalation unset": lambda p: container(p).pop("allowPrivilegeEscalation"),
    "privilege escalation": lambda p: container(p).update(allowPrivilegeEscalation=True),
    "runAsNonRoot unset": lambda p: p["securityContext"].pop("runAsNonRoot"),
    "container runAsNonRoot false": lambda p: container(p).update(runAsNonRoot=False),
    "root uid": lambda p: container(p).update(runAsUser=0),
    "pod root uid": lambda p: p["securityContext"].update(runAsUser=0),
    "seccomp unset": lambda p: p["securityContext"].pop("seccompProfile"),
    "seccomp unconfined": lambda p: container(p).update(seccompProfile={"type": "Unconfined"}),
    "procMount": lambda p: container(p).update(procMount="Unmasked"),
    "selinux type": lambda p: p["securityContext"].update(seLinuxOptions={"type": "spc_t"}),
    "selinux user": lambda p: container(p).update(seLinuxOptions={"user": "root"}),
    "apparmor": lambda p: container(p).update(appArmorProfile={"type": "Unconfined"}),
    "unsafe sysctl": lambda p: p["securityContext"].update(sysctls=[{"name": "kernel.msgmax", "value": "1"}]),
    "hostProcess": lambda p: p["securityContext"].update(windowsOptions={"hostProcess": True}),
    "init container": lambda p: p.update(initContainers=[{"name": "init", "image": "x"}]),
}


def test_checker_passes_a_compliant_pod() -> None:
    assert violations(compliant_pod()) == []
    # Settings on each container instead of the pod are just as good.
    pod = compliant_pod()
    pod["securityContext"] = {}
    container(pod).update(runAsNonRoot=True, seccompProfile={"type": "Localhost", "localhostProfile": "p.json"})
    assert violations(pod) == []
    container(pod)["capabilities"]["add"] = ["NET_BIND_SERVICE"]
    assert violations(pod) == []


@pytest.mark.parametrize("name", MUTATIONS)
def test_checker_catches(name: str) -> None:
    pod = copy.deepcopy(compliant_pod())
    MUTATIONS[name](pod)
    assert violations(pod), f"{name} was not caught"


def test_checker_catches_apparmor_annotation() -> None:
    annotations = {"container.apparmor.security.beta.kubernetes.io/app": "unconfined"}
    assert violations(compliant_pod(), annotations)


def hardened(spec: Mapping[str, Any]) -> None:
    """What rbi asks beyond the restricted profile: a read-only root and writable scratch only on /tmp."""
    for item in spec["containers"]:
        assert item["securityContext"]["readOnlyRootFilesystem"] is True, item["name"]
        mounts = {m["mountPath"]: m["name"] for m in item.get("volumeMounts") or []}
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]], "/tmp must be an emptyDir"


@pytest.mark.parametrize("values", [None, "cluster-wide", "namespaced"])
def test_chart_deployment_is_restricted(values: str | None) -> None:
    from .test_chart import SCENARIOS

    deployment = render(SCENARIOS[values or "defaults"]).one("Deployment")
    spec, annotations = pod_template(deployment)
    assert violations(spec, annotations) == []
    hardened(spec)


# --- the Jobs the operator creates (rbi.k8s.manifests, the pure builders its handlers call) -------------------


def operator_jobs() -> list[tuple[str, dict[str, Any]]]:
    manifests = pytest.importorskip("rbi.k8s.manifests", reason="the operator's Job builders are not there yet")
    from rbi.sandbox.limits import SandboxLimits

    owner = {"apiVersion": "rbi.dev/v1alpha1", "kind": "BacktestStrategy",
             "metadata": {"name": "sma-cross", "uid": "0f3c2a9e-1111-4222-8333-944455556666"}}
    plain = manifests.JobOptions(image="rbi-sandbox:0.1.0")
    full = manifests.JobOptions(image="rbi-sandbox:0.1.0", runtime_class="gvisor", dataset_pvc="market-data")
    common = {"namespace": "strategies", "strategy": "sma-cross", "configmap": "sma-cross-code", "owner": owner}
    return [
        ("run", manifests.build_job(name="sma-cross-run", limits=SandboxLimits(), options=plain, **common)),
        ("run, gVisor, dataset PVC", manifests.build_job(
            name="sma-cross-run-2", limits=SandboxLimits(memory_bytes=2**30, cpus=0.5), options=full, **common)),
        ("indexed trials", manifests.build_indexed_trial_job(
            name="sma-cross-trials-1", limits=SandboxLimits(), options=full, trials=40, iteration=1, **common)),
    ]


def test_operator_jobs_are_restricted_and_valid() -> None:
    jobs = operator_jobs()
    network_policy = render().one("NetworkPolicy")
    selector = network_policy["spec"]["podSelector"]["matchLabels"]
    for what, job in jobs:
        spec, annotations = pod_template(job)
        assert violations(spec, annotations) == [], what
        hardened(spec)
        assert spec["automountServiceAccountToken"] is False, what
        for item in spec["containers"]:
            assert item["resources"]["requests"] == item["resources"]["limits"], what
            assert set(item["resources"]["limits"]) == {"cpu", "memory", "ephemeral-storage"}, what
            assert item["command"][:3] == ["python", "-m", "rbi.runner"], what
            assert all(not e.get("valueFrom") for e in item.get("env") or []), f"{what}: no Secret may reach a Job"
        assert job["spec"]["backoffLimit"] == 0 and job["spec"]["activeDeadlineSeconds"] > 0, what
        # The chart's default-deny NetworkPolicy selects every sandbox pod.
        labels = job["spec"]["template"]["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in selector.items()), f"{what}: not selected by the NetworkPolicy"
        try:
            kubernetes_validate.validate(job, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{what}: invalid Job: {exc.message} at {list(exc.path)}")
    assert jobs[1][1]["spec"]["template"]["spec"]["runtimeClassName"] == "gvisor"
