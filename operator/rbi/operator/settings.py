"""The operator's settings: flags of `rbi operator`, each with an environment variable."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rbi.k8s.manifests import JobOptions

DEFAULT_IMAGE = "ghcr.io/rbi-dev/rbi-sandbox:latest"


def _json(env: Mapping[str, str], key: str, default: Any) -> Any:
    """A JSON value from the environment (the chart renders gpu.nodeSelector / gpu.tolerations with toJson)."""
    raw = env.get(key)
    if not raw:
        return default
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"{key} must be JSON: {exc}") from None
    if not isinstance(value, type(default)):
        raise ValueError(f"{key} must be a JSON {type(default).__name__}, got {type(value).__name__}")
    return value


def _int(env: Mapping[str, str], key: str, default: int) -> int:
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{key} must be a whole number, got {raw!r}") from None


@dataclass(frozen=True, slots=True)
class OperatorSettings:
    namespaces: tuple[str, ...] = ()
    all_namespaces: bool = False
    metrics_port: int | None = 9090
    liveness_port: int | None = 8080
    max_active_jobs: int = 10
    db_url: str | None = None
    job: JobOptions = field(default_factory=JobOptions)
    # Where `codeFrom.file` is looked up (the operator cannot read the laptop that ran kubectl).
    code_dirs: tuple[Path, ...] = ()
    # Create the default-deny NetworkPolicy in each namespace (the chart may own it instead).
    network_policy: bool = True
    # LLM debug attempts for generated code when a strategy does not set spec.llm.maxDebugAttempts.
    idea_debug_attempts: int = 2

    def __post_init__(self) -> None:
        if self.max_active_jobs < 1:
            raise ValueError(f"max active Jobs must be at least 1, got {self.max_active_jobs}")
        if self.all_namespaces and self.namespaces:
            raise ValueError("--namespace and --all-namespaces exclude each other")

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ, **overrides: object) -> OperatorSettings:
        """Environment first, then explicit overrides (CLI flags) where they are not None."""
        job = JobOptions(
            image=env.get("RBI_SANDBOX_IMAGE") or DEFAULT_IMAGE,
            image_pull_policy=env.get("RBI_IMAGE_PULL_POLICY") or "IfNotPresent",
            runtime_class=env.get("RBI_RUNTIME_CLASS") or None,
            dataset_pvc=env.get("RBI_DATASET_PVC") or None,
            ttl_seconds=_int(env, "RBI_JOB_TTL_SECONDS", 3600),
            trial_parallelism=_int(env, "RBI_TRIAL_PARALLELISM", 4),
            gpu_node_selector=_json(env, "RBI_GPU_NODE_SELECTOR", {}),
            gpu_tolerations=tuple(_json(env, "RBI_GPU_TOLERATIONS", [])),
        )
        job_overrides = {k: overrides.pop(k) for k in list(overrides) if k in JobOptions.__dataclass_fields__}
        job = JobOptions(**{**{f: getattr(job, f) for f in JobOptions.__dataclass_fields__},
                            **{k: v for k, v in job_overrides.items() if v is not None}})  # type: ignore[arg-type]
        code_dirs = tuple(Path(p) for p in (env.get("RBI_CODE_DIRS") or "").split(os.pathsep) if p)
        values: dict[str, object] = {
            "metrics_port": _int(env, "RBI_METRICS_PORT", 9090),
            "liveness_port": _int(env, "RBI_LIVENESS_PORT", 8080),
            "max_active_jobs": _int(env, "RBI_MAX_ACTIVE_JOBS", 10),
            "db_url": env.get("RBI_DB_URL") or None,
            "job": job,
            "code_dirs": code_dirs or (Path.cwd(),),
            "network_policy": (env.get("RBI_CREATE_NETWORK_POLICY") or "true").lower() not in ("false", "0", "no"),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]
