"""Judging a model's answer: the code in it, whether that code is a usable strategy, and what it looks like.

Answers arrive as prose around one or several fenced blocks, a bare module, JSON, an HTML error page, or
nothing useful at all; each gets a precise, classified AgentError.
"""

from __future__ import annotations

import ast

from rbi.agents.calls import AgentError
from rbi.errors import ExtractionError
from rbi.prepare.extract import describe_answer, extract_code
from rbi.prepare.inspect_code import check_code, detect_mode, strategy_classes

__all__ = ["class_attributes", "code_from_answer", "describe_answer", "squash"]


def squash(code: str) -> str:
    """The code without any whitespace: equal for two answers that differ only in layout."""
    return "".join(code.split())


def code_from_answer(answer: str, *, agent: str, class_name: str | None = None, checks: bool = True) -> str:
    """The strategy module in an answer; AgentError when there is none, it does not parse, has no
    Strategy subclass (or not `class_name`), is a whole script, or breaks the sandbox's static rules."""
    try:
        code = extract_code(answer)
    except ExtractionError as exc:
        raise AgentError("no_code", f"{agent} agent: the answer is not code ({exc}); it was "
                         f"{describe_answer(answer)}", agent=agent) from None
    try:
        ast.parse(code)
    except (SyntaxError, ValueError) as exc:
        where = f" at line {exc.lineno}" if isinstance(exc, SyntaxError) and exc.lineno else ""
        raise AgentError("invalid", f"{agent} agent: the code in the answer does not parse{where}: {exc}",
                         agent=agent) from None
    classes = strategy_classes(code)
    if not classes:
        raise AgentError("no_strategy", f"{agent} agent: the code defines no backtesting.Strategy subclass",
                         agent=agent)
    if class_name is not None and class_name not in classes:
        raise AgentError("no_strategy", f"{agent} agent: the code defines {', '.join(classes)}, not the "
                         f"strategy class {class_name}", agent=agent)
    if detect_mode(code) != "class":
        raise AgentError("invalid", f"{agent} agent: the code runs its own Backtest (script mode); the loop "
                         "needs class mode so that the optimizer can set parameters", agent=agent)
    if checks:
        violations = check_code(code)
        if violations:
            summary = "; ".join(f"line {v.line}: {v.message}" for v in violations[:5])
            raise AgentError("invalid", f"{agent} agent: the code breaks {len(violations)} sandbox rule(s): "
                             f"{summary}", agent=agent)
    return code if code.endswith("\n") else code + "\n"


def class_attributes(code: str, class_name: str) -> dict[str, object]:
    """The literal class attributes (the tunable parameters) of one class: {name: value}."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return {}
    found: dict[str, object] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            for item in node.body:
                targets: list[ast.expr] = []
                value: ast.expr | None = None
                if isinstance(item, ast.Assign):
                    targets, value = item.targets, item.value
                elif isinstance(item, ast.AnnAssign) and item.value is not None:
                    targets, value = [item.target], item.value
                for target in targets:
                    if isinstance(target, ast.Name) and value is not None and not target.id.startswith("_"):
                        try:
                            found[target.id] = ast.literal_eval(value)
                        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                            continue
    return found
