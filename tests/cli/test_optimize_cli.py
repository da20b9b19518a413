"""`rbi optimize`, `rbi lineage` and `rbi report` as a user runs them."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import yaml
from tests.cli.test_cli import rbi
from tests.conftest import EXAMPLES


def test_optimize_lineage_and_report(tmp_path: Path) -> None:
    db = tmp_path / "rbi.db"
    document = yaml.safe_load((EXAMPLES / "sma_cross.yaml").read_text())
    document["spec"]["codeFrom"]["file"] = str(EXAMPLES / "sma_cross.py")
    document["spec"]["data"]["path"] = str((EXAMPLES.parent / "data" / "BTC-USD-15m.csv.gz").resolve())
    document["spec"]["optimization"].update({
        "method": "grid", "space": {"fast": [10, 30], "slow": [100, 200]}, "maxIterations": 2,
        "minImprovement": 0.0, "guards": {"minDeflatedSharpe": 0.0}})
    spec_path = tmp_path / "sma.yaml"
    spec_path.write_text(yaml.safe_dump(document))
    report = tmp_path / "report.html"

    result = rbi("optimize", str(spec_path), "--json", "--workers", "2", "--report", str(report), db=db,
                 timeout=600)
    assert result.returncode == 0, result.stderr
    payload = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("{")))
    assert {"best", "iterations", "trials", "trials_per_second", "children"} <= payload.keys()
    assert {"params", "in_sample", "out_of_sample"} <= payload["best"].keys()
    assert payload["trials"] == sum(i["trials"] for i in payload["iterations"]) > 0
    assert payload["trials_per_second"] > 0
    assert all({"method", "trials", "promoted"} <= i.keys() for i in payload["iterations"])

    tree = rbi("lineage", "sma-cross", db=db)
    assert tree.returncode == 0 and "v1" in tree.stdout
    for child in payload["children"]:
        assert f"v{child}" in tree.stdout

    html = report.read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) >= 2
    assert all(base64.b64decode(image).startswith(b"\x89PNG") for image in images)
    assert "sma-cross" in html

    again = tmp_path / "again.html"
    rebuilt = rbi("report", "sma-cross", "--spec", str(spec_path), "--out", str(again), db=db, timeout=300)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert len(re.findall(r"data:image/png;base64,", again.read_text())) == len(images)


def test_optimize_refuses_scripts(tmp_path: Path) -> None:
    result = rbi("optimize", str(EXAMPLES / "rsi_script.py"), db=tmp_path / "rbi.db")
    assert result.returncode == 2
    assert "class mode" in result.stderr or "spec.optimization" in result.stderr
