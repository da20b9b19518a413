"""Pure builders of every manifest the operator creates: plain dicts in, plain dicts out.

No I/O and no clients here, so each builder is tested by value and validated against the
Kubernetes OpenAPI schemas offline. The kopf handlers only call these and send the result.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rbi.runner import BUNDLED_PREFIX, CODE_PATH
from rbi.sandbox.limits import SandboxLimits

GROUP = "rbi.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "BacktestStrategy"
PLURAL = "backteststrategies"

LABEL_SANDBOX = "rbi.dev/sandbox"
LABEL_STRATEGY = "rbi.dev/strategy"
LABEL_PURPOSE = "rbi.dev/purpose"  # run | trials | validate
LABEL_ITERATION = "rbi.dev/iteration"
LABEL_ROOT = "rbi.dev/lineage-root"
LABEL_VERSION = "rbi.dev/version"
LABEL_PARENT = "rbi.dev/parent"
# The deployable gate (deflated Sharpe ratio >= minDeflatedSharpe) on a promoted version's resource.
LABEL_DEPLOYABLE = "rbi.dev/deployable"
ANNOTATION_RUN_KEY = "rbi.dev/run-key"
MANAGED_BY = {"app.kubernetes.io/managed-by": "rbi-operator"}
SANDBOX_LABELS = {LABEL_SANDBOX: "true", "app.kubernetes.io/name": "rbi-sandbox", **MANAGED_BY}

CONTAINER = "runner"
SANDBOX_UID = 65532
CODE_DIR = "/sandbox"
DATA_DIR = "/data"
SCRATCH_DIR = "/tmp"
TERMINATION_LOG = "/dev/termination-log"
# Time for the image to start and the interpreter to import pandas before the strategy's own timeout runs.
DEADLINE_SLACK_SECONDS = 60
# Above the strategy's own limits: the interpreter, pandas and the scratch CSV copy.
MIN_JOB_MEMORY = 256 * 2**20
GPU_RESOURCE = "nvidia.com/gpu"
_DNS_LABEL = re.compile(r"[^a-z0-9-]+")


@dataclass(frozen=True, slots=True)
class JobOptions:
    """Cluster-wide choices for every sandbox Job, from the operator's settings."""

    image: str = "ghcr.io/rbi-dev/rbi-sandbox:latest"
    image_pull_policy: str = "IfNotPresent"
    runtime_class: str | None = None
    dataset_pvc: str | None = None
    ttl_seconds: int = 3600
    trial_parallelism: int = 4
    # Where GPU Jobs may run (chart values gpu.nodeSelector / gpu.tolerations); only Jobs that ask for a GPU get them.
    gpu_node_selector: Mapping[str, str] = field(default_factory=dict)
    gpu_tolerations: tuple[Mapping[str, Any], ...] = ()


def short_hash(*parts: object, length: int = 8) -> str:
    digest = hashlib.sha256("\x00".join(str(p) for p in parts).encode()).hexdigest()
    return digest[:length]


def dns_name(*parts: str, limit: int = 63) -> str:
    """A DNS-1123 label from parts, cut to `limit` with a hash suffix so distinct inputs stay distinct."""
    joined = _DNS_LABEL.sub("-", "-".join(p for p in parts if p).lower()).strip("-") or "x"
    if len(joined) <= limit:
        return joined
    suffix = short_hash(joined, length=6)
    return f"{joined[: limit - 7].rstrip('-')}-{suffix}"


def run_job_name(strategy: str, uid: str, generation: int) -> str:
    """The one Job for this generation of this resource: a restart finds it instead of making another."""
    return dns_name(strategy[:44], short_hash(uid, generation), limit=53)


def trial_job_name(strategy: str, uid: str, iteration: int, stage: str) -> str:
    return dns_name(strategy[:36], f"i{iteration}{stage[0]}", short_hash(uid, iteration, stage), limit=53)


def child_name(root: str, version: int) -> str:
    """The deterministic name of a promoted version: <root>-v<version>."""
    suffix = f"-v{version}"
    return f"{root[: 63 - len(suffix)].rstrip('-')}{suffix}"


def owner_reference(owner: Mapping[str, Any], *, controller: bool = True) -> dict[str, Any]:
    meta = owner["metadata"]
    return {"apiVersion": owner.get("apiVersion", API_VERSION), "kind": owner.get("kind", KIND),
            "name": meta["name"], "uid": meta["uid"], "controller": controller, "blockOwnerDeletion": True}


def quantity_bytes(value: int) -> str:
    for suffix, size in (("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if value >= size and value % size == 0:
            return f"{value // size}{suffix}"
    return str(value)


def quantity_cpu(cpus: float) -> str:
    millis = max(1, math.ceil(cpus * 1000))
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def container_data_path(data: Mapping[str, Any] | None, options: JobOptions) -> str:
    """Where the pod reads the dataset: a file of the dataset PVC, or a sample bundled in the image.

    A path is looked up by its file name: `../data/BTC-USD-15m.csv.gz` written for a laptop
    becomes /data/BTC-USD-15m.csv.gz on the volume, or the bundled sample of that name.
    """
    data = data or {}
    if data.get("dataset"):
        return f"{BUNDLED_PREFIX}{data['dataset']}"
    path = str(data.get("path") or "")
    filename = path.rstrip("/").rsplit("/", 1)[-1]
    if options.dataset_pvc and filename:
        return f"{DATA_DIR}/{filename}"
    if filename:
        return f"{BUNDLED_PREFIX}{filename.split('.')[0]}"
    return f"{BUNDLED_PREFIX}BTC-USD-15m"


def run_request(*, mode: str, params: Mapping[str, Any], backtest: Mapping[str, Any], strategy_class: str | None,
                data_path: str, data_fraction: Sequence[float] | None = None) -> dict[str, Any]:
    """The runner's request file (rbi.runner.RunRequest), as it is read inside the pod."""
    request: dict[str, Any] = {
        "mode": mode, "code_path": CODE_PATH, "params": dict(params), "backtest": dict(backtest),
        "strategy_class": strategy_class, "data_path": data_path, "raw_data_path": data_path,
        "include_series": False, "data_range": None,
    }
    if data_fraction is not None:
        request["data_fraction"] = [float(data_fraction[0]), float(data_fraction[1])]
    return request


def _labels(strategy: str, purpose: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    return {**SANDBOX_LABELS, LABEL_STRATEGY: strategy[:63], LABEL_PURPOSE: purpose, **(extra or {})}


def build_code_configmap(*, name: str, namespace: str, strategy: str, code: str, request: Mapping[str, Any],
                         owner: Mapping[str, Any] | None, trials: Mapping[str, Any] | None = None,
                         purpose: str = "run") -> dict[str, Any]:
    """The code and the run request, mounted read-only into the pod. Never holds a secret."""
    data = {"strategy.py": code, "request.json": json.dumps(request, sort_keys=True)}
    if trials is not None:
        data["trials.json"] = json.dumps(trials, sort_keys=True)
    meta: dict[str, Any] = {"name": name, "namespace": namespace,
                            "labels": {**MANAGED_BY, LABEL_STRATEGY: strategy[:63], LABEL_PURPOSE: purpose}}
    if owner is not None:
        meta["ownerReferences"] = [owner_reference(owner)]
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data, "immutable": True}


def _resources(limits: SandboxLimits, gpu: int = 0) -> dict[str, dict[str, str]]:
    memory = max(limits.memory_bytes, MIN_JOB_MEMORY)
    # Scratch holds the strategy's files and a plain-CSV copy of a compressed dataset (about 6 MB).
    disk = limits.disk_bytes + 64 * 2**20
    values = {"cpu": quantity_cpu(limits.cpus), "memory": quantity_bytes(memory), "ephemeral-storage": str(disk)}
    if gpu:
        # Extended resources cannot be overcommitted: requests must equal limits for them anyway.
        values[GPU_RESOURCE] = str(gpu)
    return {"requests": dict(values), "limits": dict(values)}


def _pod_security() -> dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": SANDBOX_UID, "runAsGroup": SANDBOX_UID, "fsGroup": SANDBOX_UID,
            "seccompProfile": {"type": "RuntimeDefault"}}


def _container_security() -> dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": SANDBOX_UID, "runAsGroup": SANDBOX_UID,
            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "privileged": False,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}


def _pod_failure_policy() -> dict[str, Any]:
    return {"rules": [
        # The strategy failed (or was killed at a limit): final, never retried.
        {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "NotIn", "values": [0]}},
        # Preemption or a node drain before the container ran: not the strategy's fault, so it may rerun.
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
    ]}


def build_job(*, name: str, namespace: str, strategy: str, configmap: str, limits: SandboxLimits,
              options: JobOptions, owner: Mapping[str, Any] | None, purpose: str = "run",
              completions: int = 1, extra_labels: Mapping[str, str] | None = None,
              run_key: str | None = None, gpu: int = 0, trials_file: bool | None = None) -> dict[str, Any]:
    """The sandbox Job: one pod (or `completions` indexed shards) running `python -m rbi.runner`."""
    labels = _labels(strategy, purpose, extra_labels)
    command = ["python", "-m", "rbi.runner", "--request", f"{CODE_DIR}/request.json",
               "--termination-log", TERMINATION_LOG, "--print-result", "--scratch", SCRATCH_DIR]
    # A batch of trials reads trials.json; one optimizer run that is not a trial (purpose validate) does not.
    if purpose != "run" if trials_file is None else trials_file:
        command += ["--trials", f"{CODE_DIR}/trials.json"]
    volumes: list[dict[str, Any]] = [
        {"name": "code", "configMap": {"name": configmap, "defaultMode": 0o444}},
        {"name": "scratch", "emptyDir": {"sizeLimit": str(limits.disk_bytes + 64 * 2**20)}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "code", "mountPath": CODE_DIR, "readOnly": True},
        {"name": "scratch", "mountPath": SCRATCH_DIR},
    ]
    if options.dataset_pvc:
        volumes.append({"name": "data", "persistentVolumeClaim": {"claimName": options.dataset_pvc, "readOnly": True}})
        mounts.append({"name": "data", "mountPath": DATA_DIR, "readOnly": True})
    env = [{"name": key, "value": value} for key, value in (
        ("HOME", SCRATCH_DIR), ("TMPDIR", SCRATCH_DIR), ("MPLCONFIGDIR", SCRATCH_DIR), ("PYTHONDONTWRITEBYTECODE", "1"),
        ("OMP_NUM_THREADS", "1"), ("OPENBLAS_NUM_THREADS", "1"), ("MKL_NUM_THREADS", "1"), ("TQDM_DISABLE", "1"))]
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": _pod_security(),
        "terminationGracePeriodSeconds": 5,
        "containers": [{
            "name": CONTAINER,
            "image": options.image,
            "imagePullPolicy": options.image_pull_policy,
            "command": command,
            "env": env,
            "resources": _resources(limits, gpu),
            "securityContext": _container_security(),
            "volumeMounts": mounts,
            "terminationMessagePath": TERMINATION_LOG,
            "terminationMessagePolicy": "FallbackToLogsOnError",
        }],
        "volumes": volumes,
    }
    if options.runtime_class:
        pod_spec["runtimeClassName"] = options.runtime_class
    if gpu:
        if options.gpu_node_selector:
            pod_spec["nodeSelector"] = dict(options.gpu_node_selector)
        if options.gpu_tolerations:
            pod_spec["tolerations"] = [dict(t) for t in options.gpu_tolerations]
    spec: dict[str, Any] = {
        "backoffLimit": 0,
        "activeDeadlineSeconds": math.ceil(limits.timeout_seconds) + DEADLINE_SLACK_SECONDS,
        "ttlSecondsAfterFinished": options.ttl_seconds,
        "podFailurePolicy": _pod_failure_policy(),
        "template": {"metadata": {"labels": labels}, "spec": pod_spec},
    }
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels}
    if run_key:
        meta["annotations"] = {ANNOTATION_RUN_KEY: run_key}
    if owner is not None:
        meta["ownerReferences"] = [owner_reference(owner)]
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": spec}


def build_indexed_trial_job(*, name: str, namespace: str, strategy: str, configmap: str, limits: SandboxLimits,
                            options: JobOptions, owner: Mapping[str, Any] | None, trials: int, iteration: int,
                            stage: str = "trials", gpu: int = 0) -> dict[str, Any]:
    """One Job for a batch of trials: an Indexed Job whose shard k runs trials k, k+shards, …"""
    shards = trial_shards(trials, options)
    job = build_job(name=name, namespace=namespace, strategy=strategy, configmap=configmap, limits=limits,
                    options=options, owner=owner, purpose=stage, completions=shards,
                    extra_labels={LABEL_ITERATION: str(iteration)}, gpu=gpu)
    # Each shard runs its trials one after another inside the pod: its deadline covers all of them.
    per_shard = math.ceil(trials / shards)
    job["spec"].update({"completionMode": "Indexed", "completions": shards, "parallelism": shards,
                        "activeDeadlineSeconds": math.ceil(limits.timeout_seconds * per_shard)
                        + DEADLINE_SLACK_SECONDS})
    return job


def trial_shards(trials: int, options: JobOptions) -> int:
    return max(1, min(trials, options.trial_parallelism))


def build_trials_document(*, trials: Sequence[tuple[int, Mapping[str, Any]]], shards: int, keep: Sequence[str],
                          data_fraction: Sequence[float] | None) -> dict[str, Any]:
    return {"trials": [[index, dict(params)] for index, params in trials], "shards": shards, "keep": list(keep),
            "dataFraction": list(data_fraction) if data_fraction is not None else None}


def build_network_policy(*, namespace: str, name: str = "rbi-sandbox-deny-all") -> dict[str, Any]:
    """Default deny, in and out, for every sandbox pod: strategy code gets no network at all."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(MANAGED_BY)},
        "spec": {"podSelector": {"matchLabels": {LABEL_SANDBOX: "true"}}, "policyTypes": ["Ingress", "Egress"],
                 "ingress": [], "egress": []},
    }


def build_child_strategy(*, parent: Mapping[str, Any], root: str, version: int, code: str,
                         params: Mapping[str, Any], changes: str, deployable: bool | None = None) -> dict[str, Any]:
    """A promoted version as its own BacktestStrategy, owned by its parent, labelled with its lineage.

    The child carries the code inline and no optimisation block: the parent's loop continues
    from it, and the child only runs once on the whole dataset to show its figures.
    """
    parent_meta = parent["metadata"]
    spec = {k: v for k, v in dict(parent.get("spec") or {}).items()
            if k not in ("code", "codeFrom", "idea", "optimization", "params")}
    spec["code"] = code
    spec["params"] = dict(params)
    labels = {LABEL_ROOT: root[:63], LABEL_VERSION: str(version), LABEL_PARENT: parent_meta["name"][:63],
              **MANAGED_BY}
    if deployable is not None:
        labels[LABEL_DEPLOYABLE] = "true" if deployable else "false"
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": child_name(root, version),
            "namespace": parent_meta["namespace"],
            "labels": labels,
            "annotations": {"rbi.dev/changes": changes[:1000]},
            "ownerReferences": [owner_reference(parent)],
        },
        "spec": spec,
    }


def build_event(*, involved: Mapping[str, Any], reason: str, message: str, warning: bool = False,
                component: str = "rbi-operator", now: str) -> dict[str, Any]:
    """A core/v1 Event on a resource: what `kubectl describe` lists under Events."""
    meta = involved["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name'][:40]}.", "namespace": meta["namespace"]},
        "involvedObject": {"apiVersion": involved.get("apiVersion", API_VERSION), "kind": involved.get("kind", KIND),
                           "name": meta["name"], "namespace": meta["namespace"], "uid": meta.get("uid", "")},
        "reason": reason[:128],
        "message": message[:1024],
        "type": "Warning" if warning else "Normal",
        "source": {"component": component},
        "reportingComponent": component,
        "reportingInstance": component,
        "action": reason[:128],
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
