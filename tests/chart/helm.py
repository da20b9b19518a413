"""Find the helm binary and render the chart. Tests skip without helm locally; in CI (CI set) they fail."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "rbi-operator"
CRD_SOURCE = REPO / "crds" / "backteststrategies.rbi.dev.yaml"
# Where scripts/ci-helm.sh unpacks it: .tools/helm/<npm package version>/helm/helm
CACHED_HELM = sorted((REPO / ".tools" / "helm").glob("*/helm/helm"))
RELEASE = "rbi-operator"
NAMESPACE = "rbi"
KUBE_VERSION = "1.33.0"


def find_helm() -> str | None:
    for candidate in (os.environ.get("RBI_HELM"), *map(str, CACHED_HELM[-1:]), shutil.which("helm")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def require(tool: str, path: str | None, how: str) -> str:
    """The tool's path; skip locally when it is missing, but fail in CI, where .ci/run installs it."""
    if path:
        return path
    message = f"{tool} not found: {how}"
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI must run this test)")
    pytest.skip(message)


def helm_path() -> str:
    return require("helm", find_helm(), "run scripts/ci-helm.sh or set RBI_HELM")


@dataclass(frozen=True)
class Rendered:
    text: str
    docs: list[dict[str, Any]]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d.get("kind") == kind]

    def one(self, kind: str) -> dict[str, Any]:
        found = self.of_kind(kind)
        assert len(found) == 1, f"expected one {kind}, got {len(found)}"
        return found[0]


def run_helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([helm_path(), *args], capture_output=True, text=True, timeout=120, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def template_args(values_file: Path | None = None, sets: list[str] | None = None, chart: Path = CHART) -> list[str]:
    args = ["template", RELEASE, str(chart), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION]
    if values_file is not None:
        args += ["--values", str(values_file)]
    for item in sets or []:
        args += ["--set", item]
    return args


def render(values_file: Path | None = None, sets: list[str] | None = None, chart: Path = CHART) -> Rendered:
    proc = run_helm(*template_args(values_file, sets, chart))
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    return Rendered(proc.stdout, docs)
