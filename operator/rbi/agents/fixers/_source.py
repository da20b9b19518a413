"""The shared pieces of the fixers: Fix, FixResult and span-based source editing."""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Fix:
    fixer: str
    line: int | None
    description: str


@dataclass(frozen=True, slots=True)
class FixResult:
    code: str
    fixes: tuple[Fix, ...]
    # The code before the fixers ran; None when unknown (then any Fix counts as a change).
    original: str | None = field(default=None, repr=False, compare=False)

    @property
    def changed(self) -> bool:
        """True when the code was rewritten (a Fix may also be a note that changed nothing)."""
        return self.code != self.original if self.original is not None else bool(self.fixes)


Fixer = Callable[[str], tuple[str, list[Fix]]]




# --------------------------------------------------------------------------- source editing


@dataclass(frozen=True, slots=True)
class _Edit:
    start: int
    end: int
    text: str


class _Source:
    """Maps ast positions (1-based lines, UTF-8 byte columns) to offsets in the str."""

    def __init__(self, code: str) -> None:
        self.code = code
        self.lines = code.splitlines(keepends=True)
        self.starts: list[int] = []
        total = 0
        for line in self.lines:
            self.starts.append(total)
            total += len(line)
        self.starts.append(total)

    def offset(self, lineno: int, col: int) -> int:
        if lineno > len(self.lines):
            return len(self.code)
        line = self.lines[lineno - 1]
        return self.starts[lineno - 1] + len(line.encode("utf-8")[:col].decode("utf-8", errors="ignore"))

    def span(self, node: ast.AST) -> tuple[int, int]:
        start = self.offset(node.lineno, node.col_offset)  # type: ignore[attr-defined]
        end = self.offset(node.end_lineno, node.end_col_offset)  # type: ignore[attr-defined]
        return start, end

    def text(self, node: ast.AST) -> str:
        start, end = self.span(node)
        return self.code[start:end]

    def replace(self, node: ast.AST, text: str) -> _Edit:
        start, end = self.span(node)
        return _Edit(start, end, text)

    def line_start(self, lineno: int) -> int:
        return self.starts[min(lineno, len(self.lines) + 1) - 1] if lineno >= 1 else 0

    def indent(self, lineno: int) -> str:
        line = self.lines[lineno - 1]
        return line[: len(line) - len(line.lstrip(" \t"))]

    def comment(self, lineno: int) -> str:
        line = self.lines[lineno - 1] if 0 < lineno <= len(self.lines) else ""
        index = line.find("#")
        return line[index:].lower() if index >= 0 else ""


def _apply(code: str, edits: Iterable[_Edit]) -> str:
    """Apply non-overlapping edits; of overlapping ones the smallest (innermost) wins."""
    chosen: list[_Edit] = []
    for edit in sorted(edits, key=lambda e: (e.end - e.start, e.start)):
        if all(edit.end <= c.start or edit.start >= c.end for c in chosen):
            chosen.append(edit)
    for edit in sorted(chosen, key=lambda e: e.start, reverse=True):
        code = code[: edit.start] + edit.text + code[edit.end:]
    return code


def _parse(code: str) -> ast.Module | None:
    try:
        return ast.parse(code)
    except SyntaxError:
        return None


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def _insert_helper(code: str, marker: str, helper: str) -> str:
    """Insert `helper` once, after the module docstring and the leading imports."""
    if marker in code:
        return code
    tree = _parse(code)
    if tree is None:
        return code
    source = _Source(code)
    after = 0
    for index, stmt in enumerate(tree.body):
        is_doc = index == 0 and isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) \
            and isinstance(stmt.value.value, str)
        if is_doc or isinstance(stmt, ast.Import | ast.ImportFrom):
            after = stmt.end_lineno or stmt.lineno
        else:
            break
    position = source.line_start(after + 1) if after else 0
    prefix = code[:position]
    if prefix and not prefix.endswith("\n"):
        prefix += "\n"
    lead = "\n\n" if prefix else ""
    return prefix + lead + helper.rstrip("\n") + "\n\n\n" + code[position:].lstrip("\n")


def _by_line(fixes: list[Fix]) -> list[Fix]:
    return sorted(fixes, key=lambda f: (f.line is None, f.line or 0))


def _iterate(code: str, step: Callable[[str], tuple[list[_Edit], list[Fix]]], passes: int = 8) -> tuple[str, list[Fix]]:
    """Run an edit step until it finds nothing more (nested matches need several passes)."""
    fixes: list[Fix] = []
    for _ in range(passes):
        edits, found = step(code)
        if not edits:
            fixes.extend(f for f in _by_line(found) if f not in fixes)
            break
        new = _apply(code, edits)
        fixes.extend(f for f in _by_line(found) if f not in fixes)
        if new == code:
            break
        code = new
    return code, fixes


def _number(node: ast.expr) -> float | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        inner = _number(node.operand)
        if inner is not None:
            return -inner if isinstance(node.op, ast.USub) else inner
    return None


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


