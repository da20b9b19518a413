"""The package agent: make generated code use what the sandbox has.

The deterministic rewrites of `rbi.agents.fixers.package` come first (missing
backtesting.lib helpers, pandas 3 frequency aliases, unused imports outside the allow-list). Only the
problems they leave are shown to the model, and its answer must keep the class and its parameters.
"""

from __future__ import annotations

import ast
import importlib.util
from dataclasses import dataclass, field
from functools import cache

from rbi.agents.answers import class_attributes, code_from_answer
from rbi.agents.calls import AgentError, CallRecord, ask
from rbi.agents.fixers import Fix
from rbi.agents.fixers import package as deterministic_package
from rbi.llm.client import LLMClient
from rbi.prepare.inspect_code import check_code, strategy_classes

__all__ = ["PROMPT", "PackageResult", "package_code", "remaining_problems"]

PROMPT = "package_code"
AGENT = "package"


@dataclass(frozen=True, slots=True)
class PackageResult:
    code: str
    fixes: tuple[Fix, ...] = ()
    problems: tuple[str, ...] = ()  # left after the deterministic rewrites (and the model, if asked)
    records: list[CallRecord] = field(default_factory=list)

    @property
    def used_model(self) -> bool:
        return bool(self.records)


@cache
def _installed(module: str) -> bool:
    from rbi.compat import pandas_ta

    try:
        return importlib.util.find_spec(module) is not None or pandas_ta.serves(module)
    except (ImportError, ValueError):
        return False


@cache
def _lib_names() -> frozenset[str]:
    try:
        import backtesting.lib as lib
    except ImportError:  # pragma: no cover - backtesting is a dependency
        return frozenset()
    return frozenset(dir(lib))


def remaining_problems(code: str) -> list[str]:
    """What would stop this code in the sandbox, found without running it."""
    problems = [f"line {v.line}: {v.message}" for v in check_code(code)]
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return problems
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                if not _installed(top):
                    problems.append(f"line {node.lineno}: `import {alias.name}`: {top} is not installed in the sandbox")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            top = node.module.split(".")[0]
            if not _installed(top):
                problems.append(f"line {node.lineno}: `from {node.module} import ...`: {top} is not installed "
                                "in the sandbox")
            elif node.module == "backtesting.lib":
                missing = [a.name for a in node.names if a.name != "*" and a.name not in _lib_names()]
                if missing:
                    problems.append(f"line {node.lineno}: backtesting.lib has no {', '.join(missing)} "
                                    "in backtesting 0.6")
    return list(dict.fromkeys(problems))


def _judge(answer: str, *, old_code: str) -> str:
    classes = strategy_classes(old_code)
    class_name = classes[-1] if classes else None
    code = code_from_answer(answer, agent=AGENT, class_name=class_name)
    if class_name is not None and class_attributes(code, class_name) != class_attributes(old_code, class_name):
        raise AgentError("invalid", f"{AGENT} agent: the answer changed the parameters (class attributes) of "
                         f"{class_name}, which packaging must not do", agent=AGENT)
    left = remaining_problems(code)
    if left:
        raise AgentError("invalid", f"{AGENT} agent: the answer still has problems: {'; '.join(left[:3])}",
                         agent=AGENT)
    return code


def package_code(code: str, *, client: LLMClient | None, attempt: int = 1) -> PackageResult:
    """Deterministic rewrites, then the model for whatever they left (when a client is given)."""
    rewritten = deterministic_package(code)
    if rewritten.changed and len(check_code(rewritten.code)) <= len(check_code(code)):
        code = rewritten.code
    problems = remaining_problems(code)
    if not problems or client is None:
        return PackageResult(code=code, fixes=rewritten.fixes, problems=tuple(problems))
    fixed, record = ask(client, agent=AGENT, prompt_name=PROMPT, attempt=attempt,
                        values={"problems": "\n".join(f"- {p}" for p in problems), "code": code.rstrip("\n")},
                        judge=lambda answer: _judge(answer, old_code=code))
    return PackageResult(code=fixed, fixes=rewritten.fixes, problems=(), records=[record])
