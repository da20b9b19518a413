"""The README's Helm section stays true: its values table names every value of the chart, and only those."""

from __future__ import annotations

import re
from typing import Any

import yaml

from .helm import CHART, REPO


def documented_keys() -> set[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Installing on a cluster (Helm)"):]
    section = section[:section.index("\n## ", 1)]
    keys: set[str] = set()
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        cell = line.split("|")[1]
        names = re.findall(r"`([^`]+)`", cell)
        base = names[0]
        keys.add(base)
        parent = base.rsplit(".", 1)[0]
        keys.update(parent + name if name.startswith(".") else name for name in names[1:])
    return keys


def value_paths(node: Any, prefix: str = "") -> set[str]:
    if isinstance(node, dict) and node:
        paths = {prefix} if prefix else set()
        for key, child in node.items():
            paths |= value_paths(child, f"{prefix}.{key}" if prefix else key)
        return paths
    return {prefix}


def test_values_table_covers_every_value() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    paths = value_paths(values)
    documented = documented_keys()
    assert documented, "no values table in the README's Helm section"
    stale = documented - paths
    assert not stale, f"the README documents values the chart does not have: {sorted(stale)}"
    leaves = {p for p in paths if not any(q.startswith(p + ".") for q in paths)}
    missing = {leaf for leaf in leaves if not any(leaf == d or leaf.startswith(d + ".") for d in documented)}
    assert not missing, f"values missing from the README's table: {sorted(missing)}"


def test_quick_start_commands_match_the_chart() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    for expected in ("helm install rbi-operator charts/rbi-operator", "get bts -w", "kubectl -n rbi apply -f",
                     "sandbox_image/Dockerfile", "operator_image/Dockerfile", "dashboards.enabled=true"):
        assert expected in text, expected
    sets = re.findall(r"--set ([\w.]+)=", text)
    values = value_paths(yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8")))
    assert sets and all(s in values for s in sets), [s for s in sets if s not in values]


def test_quick_start_strategy_is_valid() -> None:
    import jsonschema

    from rbi.spec import spec_from_document

    from .helm import CRD_SOURCE

    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Installing on a cluster (Helm)"):]
    example = section[section.index("<<'YAML'\n") + len("<<'YAML'\n"):section.index("\nYAML\n")]
    document = yaml.safe_load(example)
    # The CRD's structural schema (draft-4 style: boolean exclusiveMinimum); CEL rules are the API server's.
    crd = yaml.safe_load(CRD_SOURCE.read_text(encoding="utf-8"))
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == document["apiVersion"].split("/")[1]]
    jsonschema.Draft4Validator(version["schema"]["openAPIV3Schema"]).validate(document)
    # And rbi's own parser, which the operator runs on every resource.
    spec = spec_from_document(document, base=REPO)
    assert spec.name == "sma-cross" and "class SmaCross" in spec.code and spec.data_path is not None
