"""Static facts about strategy code, and checks that reject the obvious escapes early.

These checks are defence in depth and a source of clear, early messages. They
are not the security boundary: Python cannot be sandboxed from inside itself,
so the OS sandbox must hold even when a check here is evaded. What they buy is
that a generated strategy which imports `subprocess` or writes files fails in
milliseconds with "line 12: import of 'subprocess' is not allowed", instead of
a confusing error from deep inside the sandbox.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from rbi.run_hooks import BACKTEST_OPTIONS

__all__ = [
    "ALLOWED_MODULES",
    "Violation",
    "backtest_options",
    "check_code",
    "detect_mode",
    "strategy_classes",
]

Mode = Literal["class", "script"]

# Top-level modules a backtest may import. Third-party ones are allowed even
# when they are not installed: the run then fails as an import_error that
# names the module, which is the more useful message.
ALLOWED_MODULES: frozenset[str] = frozenset(
    {
        # the trading stack
        "backtesting", "pandas", "numpy", "talib", "pandas_ta", "pandas_ta_classic", "ta", "scipy", "sklearn",
        # the standard library's pure-computation corner
        "math", "cmath", "statistics", "decimal", "fractions", "numbers", "random",
        "datetime", "time", "calendar", "zoneinfo",
        "typing", "typing_extensions", "dataclasses", "enum", "abc", "__future__",
        "collections", "itertools", "functools", "operator", "bisect", "heapq", "copy",
        "re", "string", "textwrap", "json", "csv", "warnings", "logging", "traceback", "pprint",
        # files and the interpreter, limited by the call rules below
        "os", "sys", "pathlib", "glob",
        # what generated scripts print and plot with; output is capped by the sandbox
        "matplotlib", "termcolor", "tqdm", "pytz", "dateutil",
    }
)  # fmt: skip

STRATEGY_BASES: frozenset[str] = frozenset({"Strategy", "SignalStrategy", "TrailingStrategy"})

# Builtins that run code, import, or wait for a human.
_BANNED_BUILTINS: dict[str, str] = {
    "exec": "runs arbitrary code",
    "eval": "runs arbitrary code",
    "compile": "builds code objects",
    "__import__": "imports around the allow-list",
    "breakpoint": "opens a debugger",
    "input": "waits for a human that is not there",
    "globals": "rewrites module state behind the checks",
}
# Attributes that lead from any object to the interpreter's internals.
_ESCAPE_ATTRIBUTES: frozenset[str] = frozenset(
    {
        "__subclasses__", "__globals__", "__builtins__", "__code__", "__getattribute__",
        "__bases__", "__base__", "__mro__", "__closure__", "__loader__", "__spec__",
        "__import__", "__reduce__", "__reduce_ex__", "__self__", "__func__",
        "f_globals", "f_locals", "f_builtins", "f_back", "gi_frame", "cr_frame", "ag_frame",
        "tb_frame", "co_code",
    }
)  # fmt: skip
# Library doors to native code or unpickling, reachable from allowed modules.
_RISKY_ATTRIBUTES: dict[str, str] = {
    "ctypeslib": "numpy.ctypeslib loads native code",
    "read_pickle": "unpickling runs code",
}
# os functions that run programs, signal processes, touch the environment or delete files.
_BANNED_OS: frozenset[str] = frozenset(
    {
        "system", "popen", "fork", "forkpty", "kill", "killpg", "setsid", "setuid", "setgid",
        "seteuid", "setegid", "setreuid", "setregid", "chroot", "remove", "removedirs", "unlink",
        "rmdir", "rename", "renames", "replace", "chmod", "fchmod", "lchmod", "chown", "fchown",
        "lchown", "truncate", "ftruncate", "link", "symlink", "mkfifo", "mknod", "putenv",
        "unsetenv", "environ", "environb", "getenv", "getenvb", "open", "write", "pipe", "dup",
        "dup2", "_exit", "abort", "nice", "register_at_fork", "memfd_create",
    }
)  # fmt: skip
_BANNED_OS_PREFIXES: tuple[str, ...] = ("exec", "spawn", "posix_spawn")
_BANNED_SYS: frozenset[str] = frozenset(
    {"modules", "settrace", "setprofile", "_getframe", "addaudithook", "meta_path", "path_hooks"}
)
# Methods that only pathlib.Path has and that delete or link (plain writes go to the capped scratch);
# `.replace` and `.rename` are left alone because every DataFrame has them too.
_PATH_WRITES: frozenset[str] = frozenset({"unlink", "rmdir", "symlink_to", "hardlink_to", "chmod"})
_MODE_TEXT = re.compile(r"^[rwaxbt+]{1,4}$")
_DUNDER = re.compile(r"^__\w+__$")


@dataclass(frozen=True, slots=True)
class Violation:
    line: int
    message: str
    rule: str


# --------------------------------------------------------------------------- helpers


def _parse(code: str) -> ast.Module | None:
    try:
        return ast.parse(code)
    except (SyntaxError, ValueError):
        return None


def _name_of(node: ast.expr) -> str | None:
    """'Strategy' for `Strategy` and `backtesting.Strategy`; None for anything else."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _top_level_nodes(body: list[ast.stmt]) -> Iterator[ast.AST]:
    """Every node that runs when the module runs, not counting function and class bodies."""
    for stmt in body:
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            # Decorators and defaults run at definition time.
            for decorator in stmt.decorator_list:
                yield from ast.walk(decorator)
            continue
        stack: list[ast.AST] = [stmt]
        while stack:
            node = stack.pop()
            yield node
            for child in ast.iter_child_nodes(node):
                if not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    stack.append(child)


def _reachable_nodes(tree: ast.Module) -> list[ast.AST]:
    """Module-level code plus the bodies of module-level functions it calls, transitively."""
    functions = {
        stmt.name: stmt for stmt in tree.body if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef)
    }
    # Functions defined inside `if __name__ == "__main__":` or try blocks count too.
    for node in _top_level_nodes(tree.body):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            functions.setdefault(node.name, node)
    nodes = list(_top_level_nodes(tree.body))
    pending = [n.func.id for n in nodes if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    seen: set[str] = set()
    while pending:
        name = pending.pop()
        if name in seen or name not in functions:
            continue
        seen.add(name)
        for node in ast.walk(functions[name]):
            nodes.append(node)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                pending.append(node.func.id)
    return nodes


# --------------------------------------------------------------------------- facts


def strategy_classes(code: str) -> list[str]:
    """Names of the Strategy subclasses the code defines, in source order.

    A class counts when a base is Strategy, SignalStrategy or TrailingStrategy
    (bare or dotted, as in `backtesting.Strategy`), or another class in the same
    file that counts. Code that does not parse has none.
    """
    tree = _parse(code)
    if tree is None:
        return []
    classes = [node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)]
    found: set[str] = set()
    changed = True
    while changed:  # a base may be defined after its subclass in walk order
        changed = False
        for cls in classes:
            if cls.name in found:
                continue
            if any(_name_of(base) in STRATEGY_BASES or _name_of(base) in found for base in cls.bases):
                found.add(cls.name)
                changed = True
    ordered = sorted((cls for cls in classes if cls.name in found), key=lambda c: (c.lineno, c.col_offset))
    return list(dict.fromkeys(cls.name for cls in ordered))


def detect_mode(code: str) -> Mode:
    """'script' when running the module runs a backtest itself, else 'class'.

    A backtest runs when the module (its top level, its `__main__` block, or a
    function called from there) constructs `Backtest(` and calls `.run(` or
    `.optimize(` or prints. A Backtest built in a function nobody calls does
    not count when the file also defines a Strategy: the runner can drive that.
    """
    tree = _parse(code)
    if tree is None:
        # Unparsable code fails either way; guess from the text for the error report.
        builds = re.search(r"\bBacktest\s*\(", code) is not None
        runs = re.search(r"\.(?:run|optimize)\s*\(|\bprint\s*\(", code) is not None
        return "script" if builds and runs else "class"
    if _runs_backtest(_reachable_nodes(tree)):
        return "script"
    if strategy_classes(code):
        return "class"
    return "script" if _runs_backtest(list(ast.walk(tree))) else "class"


def _runs_backtest(nodes: list[ast.AST]) -> bool:
    calls = [node for node in nodes if isinstance(node, ast.Call)]
    builds = any(_name_of(call.func) == "Backtest" for call in calls)
    runs = any(
        (isinstance(call.func, ast.Attribute) and call.func.attr in ("run", "optimize"))
        or (isinstance(call.func, ast.Name) and call.func.id == "print")
        for call in calls
    )
    return builds and runs


def _constant(node: ast.expr) -> object:
    """The value of a literal, or of simple arithmetic on literals (`0.1 / 100`); raises ValueError otherwise."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Sub | ast.Mult | ast.Div):
        left, right = _constant(node.left), _constant(node.right)
        if not isinstance(left, int | float) or not isinstance(right, int | float) or isinstance(left, bool):
            raise ValueError("not numeric")
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Sub):
            return left - right
        if isinstance(node.op, ast.Mult):
            return left * right
        return left / right
    return ast.literal_eval(node)


def backtest_options(code: str) -> dict[str, object]:
    """The literal options of the last `Backtest(...)` the code builds: a hybrid's own cash and commission.

    When the runner drives a hybrid's Strategy class (class mode, the optimizer), the figures must be
    those of the file's own backtest, so its `cash=100_000, commission=.001` carry over. Only
    literals count: a value computed at run time is left to the runner's defaults.
    """
    tree = _parse(code)
    if tree is None:
        return {}
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and _name_of(n.func) == "Backtest"]
    if not calls:
        return {}
    last = max(calls, key=lambda n: (n.lineno, n.col_offset))
    options: dict[str, object] = {}
    for keyword in last.keywords:
        if keyword.arg not in BACKTEST_OPTIONS:
            continue
        try:
            options[keyword.arg] = _constant(keyword.value)
        except (ValueError, TypeError, SyntaxError, ZeroDivisionError):
            continue
    return options


# --------------------------------------------------------------------------- checks


class _Checker(ast.NodeVisitor):
    def __init__(self, tree: ast.Module) -> None:
        self.violations: list[Violation] = []
        self.os_names: set[str] = set()
        self.sys_names: set[str] = set()
        # A user's own `def input(...)` is not the builtin.
        self.rebound = {
            node.name
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        } | {
            node.id
            for node in ast.walk(tree)
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store)
        }

    def flag(self, node: ast.AST, rule: str, message: str) -> None:
        line = getattr(node, "lineno", 1)
        self.violations.append(Violation(line=line, message=f"line {line}: {message}", rule=rule))

    # imports -------------------------------------------------------------

    def _check_module(self, node: ast.AST, module: str) -> bool:
        top = module.split(".")[0]
        if top in ALLOWED_MODULES:
            return True
        allowed = ", ".join(sorted(ALLOWED_MODULES - {"__future__"}))
        self.flag(node, "import", f"import of '{top}' is not allowed (backtests may import: {allowed})")
        return False

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if not self._check_module(node, alias.name):
                continue
            top = alias.name.split(".")[0]
            bound = alias.asname or top
            if alias.name == "os" or (alias.asname is None and top == "os"):
                self.os_names.add(bound)
            if alias.name == "sys":
                self.sys_names.add(bound)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            self.flag(node, "import", "relative imports are not allowed: a strategy is a single module")
            return
        module = node.module or ""
        if not self._check_module(node, module):
            return
        for alias in node.names:
            if module == "os" and (alias.name == "*" or self._banned_os(alias.name)):
                self.flag(node, "os", f"'from os import {alias.name}' is not allowed (os.path only)")
            if module == "sys" and alias.name in ("*", *_BANNED_SYS):
                self.flag(node, "sys", f"'from sys import {alias.name}' is not allowed")

    # names and attributes ------------------------------------------------

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            if node.id in _BANNED_BUILTINS and node.id not in self.rebound:
                self.flag(node, "builtin", f"use of '{node.id}' is not allowed ({_BANNED_BUILTINS[node.id]})")
            elif node.id == "__builtins__":
                self.flag(node, "dunder", "access to '__builtins__' is not allowed")
        self.generic_visit(node)

    def _banned_os(self, attr: str) -> bool:
        return attr in _BANNED_OS or attr.startswith(_BANNED_OS_PREFIXES)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr in _ESCAPE_ATTRIBUTES:
            self.flag(node, "dunder", f"access to '.{node.attr}' is not allowed (interpreter internals)")
        elif node.attr in _RISKY_ATTRIBUTES:
            self.flag(node, "pickle", f".{node.attr} is not allowed ({_RISKY_ATTRIBUTES[node.attr]})")
        base = node.value
        if isinstance(base, ast.Name) and base.id in self.os_names and self._banned_os(node.attr):
            self.flag(node, "os", f"os.{node.attr} is not allowed (backtests may use os.path only)")
        if isinstance(base, ast.Name) and base.id in self.sys_names:
            if node.attr == "modules":
                # Reads too: sys.modules["subprocess"] reaches a module without importing it.
                self.flag(node, "sys", "access to sys.modules is not allowed (it reaches unlisted modules)")
            elif node.attr in _BANNED_SYS:
                self.flag(node, "sys", f"sys.{node.attr} is not allowed")
            elif isinstance(node.ctx, ast.Store | ast.Del):
                self.flag(node, "sys", f"assigning sys.{node.attr} is not allowed (sys is read-only)")
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        # `getattr(obj, "__globals__")`, `attrgetter("__subclasses__")`, ...
        if isinstance(node.value, str) and node.value in _ESCAPE_ATTRIBUTES and _DUNDER.match(node.value):
            self.flag(node, "dunder", f"the string '{node.value}' names interpreter internals")

    # calls ---------------------------------------------------------------

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Name):
            if func.id in ("getattr", "setattr", "delattr", "hasattr"):
                self._check_reflection(node, func.id)
            elif func.id == "open" and "open" not in self.rebound:
                self._check_open(node, node.args[1:2])
        elif isinstance(func, ast.Attribute):
            if func.attr in _PATH_WRITES:
                self.flag(
                    node, "file-write", f".{func.attr}() is not allowed (backtests may only read files)"
                )
            elif func.attr == "open" and not (
                isinstance(func.value, ast.Name) and func.value.id in self.os_names
            ):
                # Path.open(mode); other .open(path) methods take no mode first.
                first = node.args[0:1]
                looks_like_mode = (
                    bool(first)
                    and isinstance(first[0], ast.Constant)
                    and isinstance(first[0].value, str)
                    and _MODE_TEXT.match(first[0].value) is not None
                )
                self._check_open(node, first if looks_like_mode else [])
        for keyword in node.keywords:
            if (
                keyword.arg == "allow_pickle"
                and isinstance(keyword.value, ast.Constant)
                and keyword.value.value is True
            ):
                self.flag(node, "pickle", "allow_pickle=True is not allowed (unpickling runs code)")
        self.generic_visit(node)

    def _check_reflection(self, node: ast.Call, name: str) -> None:
        if len(node.args) < 2:
            return
        target, attribute = node.args[0], node.args[1]
        if not (isinstance(attribute, ast.Constant) and isinstance(attribute.value, str)):
            return
        text = attribute.value
        if _DUNDER.match(text):
            self.flag(node, "dunder", f"{name}() with '{text}' is not allowed (interpreter internals)")
        elif isinstance(target, ast.Name) and target.id in self.os_names and self._banned_os(text):
            self.flag(node, "os", f"{name}(os, '{text}') is not allowed (backtests may use os.path only)")
        elif (
            isinstance(target, ast.Name)
            and target.id in self.sys_names
            and (name in ("setattr", "delattr") or text in _BANNED_SYS)
        ):
            self.flag(node, "sys", f"{name}(sys, '{text}') is not allowed")

    def _check_open(self, node: ast.Call, positional_mode: list[ast.expr]) -> None:
        mode_node = next((k.value for k in node.keywords if k.arg == "mode"), None)
        if mode_node is None and positional_mode:
            mode_node = positional_mode[0]
        if mode_node is None:
            return
        if isinstance(mode_node, ast.Constant) and isinstance(mode_node.value, str):
            # Writing is left to the sandbox: scripts save stats and plots, and every write lands in the
            # size-capped scratch (rbi.run_hooks mirrors paths that are not writable there). Refusing
            # `open(p, "w")` while `df.to_csv(p)` passes only failed real scripts, it protected nothing.
            return
        self.flag(
            node, "file-write", "open() with a computed mode is not allowed (use a literal 'r' or 'rb')"
        )

    # writes through namespaces ------------------------------------------

    def visit_Subscript(self, node: ast.Subscript) -> None:
        if isinstance(node.ctx, ast.Store | ast.Del) and _is_namespace_call(node.value):
            self.flag(node, "builtin", "writing to vars()/locals() is not allowed")
        self.generic_visit(node)


def _is_namespace_call(node: ast.expr) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in ("vars", "locals", "globals")
    )


def _syntax_violation(exc: SyntaxError | ValueError) -> Violation:
    if isinstance(exc, SyntaxError):
        line = exc.lineno or 1
        detail = exc.msg
    else:
        line, detail = 1, str(exc)
    return Violation(line=line, message=f"line {line}: syntax error: {detail}", rule="syntax")


def check_code(code: str) -> list[Violation]:
    """Every rule the code breaks, in line order; [] when it passes.

    A syntax error is the single violation with rule 'syntax', so callers can
    classify the run as syntax_error rather than validation_error.
    """
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError) as exc:
        return [_syntax_violation(exc)]
    checker = _Checker(tree)
    checker.visit(tree)
    unique = dict.fromkeys(checker.violations)
    return sorted(unique, key=lambda v: (v.line, v.rule, v.message))
