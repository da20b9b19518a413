"""Spec parsing: the YAML shape of the BacktestStrategy resource, and precise errors for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from rbi.errors import SpecError
from rbi.quantity import QuantityError, parse_bytes, parse_cpu
from rbi.sandbox.limits import DEFAULT_MEMORY, SandboxLimits
from rbi.spec import load_spec, name_from_path, spec_from_document


@pytest.mark.parametrize(("text", "expected"), [
    ("2Gi", 2 * 2**30), ("512Mi", 512 * 2**20), ("100M", 100 * 10**6), ("1k", 1000), ("1.5Gi", 3 * 2**29),
    (1024, 1024), ("1e3", 1000),
])
def test_parse_bytes(text: str | int, expected: int) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize(("text", "expected"), [("500m", 0.5), ("1", 1.0), ("2", 2.0), (0.25, 0.25)])
def test_parse_cpu(text: str | float, expected: float) -> None:
    assert parse_cpu(text) == pytest.approx(expected)


@pytest.mark.parametrize("bad", ["two gigs", "1Xi", "", "-1Gi", True])
def test_bad_quantities(bad: object) -> None:
    with pytest.raises(QuantityError):
        parse_bytes(bad)  # type: ignore[arg-type]


def _doc(**spec: object) -> dict[str, object]:
    return {"apiVersion": "rbi.dev/v1alpha1", "kind": "BacktestStrategy", "metadata": {"name": "demo"},
            "spec": {"code": "x = 1", **spec}}


def test_limits_from_spec_and_flag_override() -> None:
    spec = spec_from_document(_doc(limits={"cpu": "500m", "memory": "1Gi", "disk": "50M", "timeoutSeconds": 60}),
                              base=Path("."))
    assert spec.limits.cpus == 0.5
    assert spec.limits.memory_bytes == 2**30
    assert spec.limits.disk_bytes == 50 * 10**6
    assert spec.limits.timeout_seconds == 60
    overridden = spec.limits.override(memory="256Mi", timeout=5)
    assert overridden.memory_bytes == 256 * 2**20 and overridden.timeout_seconds == 5
    assert overridden.cpus == 0.5


def test_defaults_follow_the_plan() -> None:
    limits = SandboxLimits()
    assert (limits.memory_bytes, limits.cpus, limits.disk_bytes, limits.timeout_seconds) == (
        DEFAULT_MEMORY, 1.0, 100 * 10**6, 300.0)


def test_backtest_options_are_mapped_to_backtesting_keywords() -> None:
    spec = spec_from_document(_doc(backtest={"cash": 50_000, "tradeOnClose": True, "exclusiveOrders": True}),
                              base=Path("."))
    assert spec.backtest == {"cash": 50_000, "trade_on_close": True, "exclusive_orders": True}


@pytest.mark.parametrize(("document", "fragment"), [
    ({"kind": "Pod"}, "apiVersion"),
    ({**_doc(), "metadata": {"name": "Bad_Name"}}, "DNS-1123"),
    (_doc(codeFrom={"file": "x.py"}), "exactly one of code, codeFrom, idea"),
    ({**_doc(), "spec": {}}, "exactly one of"),
    ({**_doc(), "spec": {"idea": "buy low"}}, "LLM agents"),
    (_doc(limits={"memory": "lots"}), "spec.limits"),
    (_doc(limits={"timeoutSeconds": 0}), "timeoutSeconds"),
    (_doc(backtest={"leverage": 3}), "spec.backtest.leverage"),
    (_doc(backtest={"cash": -5}), "cash must be a positive"),
    (_doc(mode="turbo"), "spec.mode"),
    (_doc(surprise=1), "unknown field"),
])
def test_malformed_specs_get_precise_errors(document: dict[str, object], fragment: str) -> None:
    with pytest.raises(SpecError, match=fragment.replace(".", r"\.").replace("(", r"\(")):
        spec_from_document(document, base=Path("."))


def test_code_from_file_is_relative_to_the_yaml(tmp_path: Path) -> None:
    (tmp_path / "strategy.py").write_text("print('hi')\n")
    (tmp_path / "s.yaml").write_text(
        "apiVersion: rbi.dev/v1alpha1\nkind: BacktestStrategy\nmetadata: {name: s}\n"
        "spec:\n  codeFrom: {file: strategy.py}\n  data: {path: data.csv}\n")
    spec = load_spec(tmp_path / "s.yaml")
    assert spec.code == "print('hi')\n"
    assert spec.data_path == tmp_path / "data.csv"


def test_missing_code_file_and_bad_yaml(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text(
        "apiVersion: rbi.dev/v1alpha1\nkind: BacktestStrategy\nmetadata: {name: s}\nspec:\n  codeFrom: nope.py\n")
    with pytest.raises(SpecError, match="not found"):
        load_spec(tmp_path / "s.yaml")
    (tmp_path / "broken.yaml").write_text("spec: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(tmp_path / "broken.yaml")
    with pytest.raises(SpecError, match="file not found"):
        load_spec(tmp_path / "absent.py")


def test_python_files_and_llm_answers_become_specs(tmp_path: Path) -> None:
    path = tmp_path / "My Strategy_v2.py"
    path.write_text("x = 1\n")
    spec = load_spec(path)
    assert spec.source == "python" and spec.code == "x = 1\n"
    assert name_from_path(path) == "my-strategy-v2"
    answer = tmp_path / "answer.md"
    answer.write_text("Here you go\n```python\nx = 1\n```\n")
    assert load_spec(answer).source == "llm_answer"
