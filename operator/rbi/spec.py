"""The strategy description: the same shape as the BacktestStrategy resource.

`rbi run` accepts that YAML, a Python file, or a raw LLM answer; all three end
up as one `StrategySpec`, so the engine has a single input type.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml

from rbi.errors import SpecError
from rbi.quantity import QuantityError
from rbi.sandbox.limits import SandboxLimits

API_VERSION = "rbi.dev/v1alpha1"
KIND = "BacktestStrategy"
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_MODES = ("auto", "class", "script")
# camelCase in YAML (Kubernetes style) → backtesting.py's keyword arguments.
_BACKTEST_KEYS = {
    "cash": "cash", "commission": "commission", "spread": "spread", "margin": "margin",
    "tradeOnClose": "trade_on_close", "hedging": "hedging", "exclusiveOrders": "exclusive_orders",
    "finalizeTrades": "finalize_trades",
}
_SPEC_KEYS = {"code", "codeFrom", "idea", "mode", "strategyClass", "data", "params", "backtest", "limits",
              "optimization", "staticChecks", "llm"}


@dataclass(frozen=True, slots=True)
class StrategySpec:
    name: str
    code: str
    mode: str = "auto"
    strategy_class: str | None = None
    data_path: Path | None = None
    params: dict[str, Any] = field(default_factory=dict)
    backtest: dict[str, Any] = field(default_factory=dict)
    limits: SandboxLimits = field(default_factory=SandboxLimits)
    static_checks: bool = True
    source: str = "yaml"
    optimization: dict[str, Any] | None = None
    # GPUs for a cluster Job (spec.limits.gpu → nvidia.com/gpu); the local sandbox has none to give.
    gpu: int = 0


def name_from_path(path: Path) -> str:
    """A DNS-1123 name (what Kubernetes requires) derived from a file name."""
    stem = path.name.split(".")[0].lower()
    cleaned = re.sub(r"[^a-z0-9-]+", "-", stem).strip("-")
    return cleaned[:63] or "strategy"


def _require_mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SpecError(f"{where} must be a mapping, got {type(value).__name__}")
    return value


def _backtest_options(raw: dict[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for key, value in raw.items():
        target = _BACKTEST_KEYS.get(key) or (key if key in _BACKTEST_KEYS.values() else None)
        if target is None:
            raise SpecError(f"spec.backtest.{key} is not a known option; known: {sorted(_BACKTEST_KEYS)}")
        options[target] = value
    cash = options.get("cash")
    if cash is not None and (not isinstance(cash, int | float) or isinstance(cash, bool) or cash <= 0):
        raise SpecError(f"spec.backtest.cash must be a positive number, got {cash!r}")
    return options


def _read_code(spec: dict[str, Any], base: Path) -> str:
    sources = [key for key in ("code", "codeFrom", "idea") if spec.get(key) is not None]
    if len(sources) != 1:
        raise SpecError(f"spec must set exactly one of code, codeFrom, idea (found: {sources or 'none'})")
    if sources[0] == "idea":
        raise SpecError("spec.idea needs the LLM agents (`rbi loop`); `rbi run` needs code or codeFrom")
    if sources[0] == "code":
        if not isinstance(spec["code"], str) or not spec["code"].strip():
            raise SpecError("spec.code must be a non-empty string")
        return str(spec["code"])
    ref = spec["codeFrom"]
    file_ref = ref if isinstance(ref, str) else _require_mapping(ref, "spec.codeFrom").get("file")
    if not file_ref:
        if isinstance(ref, dict) and "configMapKeyRef" in ref:
            raise SpecError("spec.codeFrom.configMapKeyRef is resolved by the operator on a cluster; "
                            "locally use codeFrom: {file: path}")
        raise SpecError("spec.codeFrom must be a path or {file: path}")
    path = (base / str(file_ref)).resolve()
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"spec.codeFrom.file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read spec.codeFrom.file {path}: {exc}") from None


def _data_path(raw: Any, base: Path) -> Path | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        return (base / raw).resolve()
    mapping = _require_mapping(raw, "spec.data")
    if mapping.get("path"):
        return (base / str(mapping["path"])).resolve()
    if mapping.get("dataset"):
        from rbi.datasets import bundled_dataset

        return bundled_dataset(str(mapping["dataset"]))
    raise SpecError("spec.data must be a path or {path: ...} or {dataset: NAME}")


def spec_from_document(document: Any, *, base: Path) -> StrategySpec:
    """Validate a parsed BacktestStrategy document; every problem is a precise SpecError."""
    doc = _require_mapping(document, "the document")
    if doc.get("apiVersion") != API_VERSION or doc.get("kind") != KIND:
        raise SpecError(f"expected apiVersion: {API_VERSION} and kind: {KIND}, got "
                        f"{doc.get('apiVersion')!r} / {doc.get('kind')!r}")
    metadata = _require_mapping(doc.get("metadata"), "metadata")
    name = metadata.get("name")
    if not isinstance(name, str) or not _NAME.match(name) or len(name) > 63:
        raise SpecError(f"metadata.name must be a DNS-1123 label (lowercase letters, digits, '-'), got {name!r}")
    spec = _require_mapping(doc.get("spec"), "spec")
    unknown = set(spec) - _SPEC_KEYS
    if unknown:
        raise SpecError(f"unknown field(s) in spec: {sorted(unknown)}; known: {sorted(_SPEC_KEYS)}")
    mode = spec.get("mode", "auto")
    if mode not in _MODES:
        raise SpecError(f"spec.mode must be one of {_MODES}, got {mode!r}")
    params = _require_mapping(spec.get("params"), "spec.params")
    try:
        limits = SandboxLimits.from_spec(_require_mapping(spec.get("limits"), "spec.limits"))
    except (QuantityError, ValueError) as exc:
        raise SpecError(f"spec.limits: {exc}") from None
    gpu = _require_mapping(spec.get("limits"), "spec.limits").get("gpu", 0)
    if isinstance(gpu, bool) or not isinstance(gpu, int) or not 0 <= gpu <= 16:
        raise SpecError(f"spec.limits.gpu must be a whole number of GPUs from 0 to 16, got {gpu!r}")
    return StrategySpec(
        name=name,
        code=_read_code(spec, base),
        mode=mode,
        strategy_class=spec.get("strategyClass"),
        data_path=_data_path(spec.get("data"), base),
        params=dict(params),
        backtest=_backtest_options(_require_mapping(spec.get("backtest"), "spec.backtest")),
        limits=limits,
        static_checks=bool(spec.get("staticChecks", True)),
        optimization=_require_mapping(spec.get("optimization"), "spec.optimization") or None,
        gpu=gpu,
    )


STDIN = Path("-")


def _as_resource(text: str) -> dict[str, Any] | None:
    """The document when `text` is a BacktestStrategy resource, whatever the file is called."""
    if "BacktestStrategy" not in text:
        return None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    return document if isinstance(document, dict) and document.get("kind") == "BacktestStrategy" else None


def load_spec(path: Path, *, stdin: TextIO | None = None) -> StrategySpec:
    """Load a YAML resource, Python code, or an LLM answer (prose and fenced code); `-` reads standard input.

    The suffix only says which YAML files to parse strictly: the content decides the rest, because
    pipelines save whole answers as `.py` and code as `.txt` (rbi.engine extracts what is not code).
    """
    if path == STDIN:
        text = (stdin or sys.stdin).read()
        resource = _as_resource(text)
        if resource is not None:
            return spec_from_document(resource, base=Path.cwd())
        return StrategySpec(name="stdin", code=text, source="stdin")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read {path}: {exc}") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            documents = [d for d in yaml.safe_load_all(text) if d is not None]
        except yaml.YAMLError as exc:
            raise SpecError(f"{path} is not valid YAML: {exc}") from None
        if len(documents) != 1:
            raise SpecError(f"{path} must hold exactly one BacktestStrategy document, found {len(documents)}")
        return spec_from_document(documents[0], base=path.parent)
    resource = _as_resource(text)
    if resource is not None:
        return spec_from_document(resource, base=path.parent)
    source = "python" if path.suffix.lower() == ".py" else "llm_answer"
    return StrategySpec(name=name_from_path(path), code=text, source=source)
