"""Pull the Python code out of a raw LLM answer.

Answers come as bare code, as prose around one fenced block, or as several
blocks: the strategy, an install command, sample output, a usage snippet, or a
module split into fragments (imports here, the class there). `extract_code`
picks what a person would copy into a file, and only raises when there is no
code at all. A block that is plainly meant as Python but does not parse is
still returned, so the run reports a syntax error with a line number instead
of a vague "no code".
"""

from __future__ import annotations

import ast
import builtins
import json
import re
import textwrap
from dataclasses import dataclass

from rbi.errors import ExtractionError

__all__ = ["describe_answer", "extract_code", "input_line"]

_PYTHON_TAGS = frozenset({"python", "py", "python3", "py3", "ipython", "ipython3", "pycon"})
_NON_PYTHON_TAGS = frozenset(
    {
        "bash", "sh", "shell", "zsh", "console", "shell-session", "powershell", "ps", "cmd", "bat",
        "text", "txt", "plaintext", "output", "out", "log", "json", "yaml", "yml", "toml", "ini",
        "csv", "tsv", "sql", "markdown", "md", "html", "xml", "diff", "javascript", "js",
    }
)  # fmt: skip
_SHELL_LINE = re.compile(
    r"^\s*(?:\$ |> |!|%)?\s*(?:pip3?|python3?\s+-m\s+pip|conda|uv|poetry|apt(?:-get)?|brew|sudo|"
    r"cd|export|source|mkdir|wget|curl|git|docker|python3?\s+\S+\.py)\b"
)
_FENCE_OPEN = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*\{?(?P<tag>[\w+.#-]*)\}?.*$")
_MODULE_START = re.compile(r"^(?:import \w|from [\w.]+ import |class \w|def \w|@\w|#!)")
_MAX_TRAILING_PROSE = 40
_WORD = re.compile(r"[A-Za-z][A-Za-z'’-]*")
_STRATEGY_TEXT = re.compile(r"^\s*class\s+\w+\s*\([^)]*Strategy|\bBacktest\s*\(", re.MULTILINE)
_MAGIC_LINE = re.compile(r"^\s*[!%]")
_STRATEGY_BASES = frozenset({"Strategy", "SignalStrategy", "TrailingStrategy"})
_BUILTINS = frozenset(dir(builtins)) | {"__name__", "__file__", "__doc__", "__builtins__"}


@dataclass(frozen=True, slots=True)
class _Block:
    tag: str
    code: str
    closed: bool = True


def _fenced_blocks(text: str) -> list[_Block]:
    """Every fenced block in order; a fence left open at the end runs to the end."""
    blocks: list[_Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opening = _FENCE_OPEN.match(lines[i])
        if opening is None:
            i += 1
            continue
        fence = opening["fence"]
        closing = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        body: list[str] = []
        i += 1
        while i < len(lines) and not closing.match(lines[i]):
            body.append(lines[i])
            i += 1
        closed = i < len(lines)
        i += 1  # past the closing fence (or the end)
        tag = re.sub(r"[^a-z0-9+#-]", "", opening["tag"].lower())
        blocks.append(_Block(tag=tag, code=textwrap.dedent("\n".join(body)).strip("\n") + "\n", closed=closed))
    return blocks


def _parse(code: str) -> ast.Module | None:
    try:
        return ast.parse(code)
    except (SyntaxError, ValueError):  # ValueError: null bytes
        return None


def _looks_like_code(tree: ast.Module) -> bool:
    """A parse that is more than a stray word or number ('Sorry', '571')."""
    for node in ast.walk(tree):
        if isinstance(
            node,
            ast.Import
            | ast.ImportFrom
            | ast.FunctionDef
            | ast.AsyncFunctionDef
            | ast.ClassDef
            | ast.Assign
            | ast.AugAssign
            | ast.AnnAssign
            | ast.Call
            | ast.For
            | ast.While
            | ast.If
            | ast.With,
        ):
            return True
    return False


def _is_shell(code: str) -> bool:
    lines = [line for line in code.splitlines() if line.strip() and not line.strip().startswith("#")]
    return bool(lines) and all(_SHELL_LINE.match(line) for line in lines)


def _without_magics(code: str) -> str:
    """Comment out notebook lines (`!pip install ...`, `%matplotlib`), keeping line numbers."""
    return "\n".join("# " + line if _MAGIC_LINE.match(line) else line for line in code.splitlines()) + "\n"


def _base_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _has_strategy(tree: ast.Module) -> bool:
    """Defines a Strategy subclass (directly or through a local base) or calls Backtest(."""
    local: set[str] = set()
    classes = [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]
    changed = True
    while changed:
        changed = False
        for cls in classes:
            bases = {_base_name(b) for b in cls.bases}
            if cls.name not in local and bases & (_STRATEGY_BASES | local):
                local.add(cls.name)
                changed = True
    if local:
        return True
    return any(isinstance(n, ast.Call) and _base_name(n.func) == "Backtest" for n in ast.walk(tree))


def _free_names(tree: ast.Module) -> set[str]:
    """Names read but never bound anywhere in the block (scope-blind, which is enough here)."""
    bound: set[str] = set()
    loaded: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                if alias.name == "*":
                    return set()  # a star import could bind anything
                bound.add((alias.asname or alias.name).split(".")[0])
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
        elif isinstance(node, ast.Global | ast.Nonlocal):
            bound.update(node.names)
    return loaded - bound - _BUILTINS


@dataclass(frozen=True, slots=True)
class _Candidate:
    code: str
    tree: ast.Module | None  # None: meant as Python, but it does not parse

    @property
    def strategy(self) -> bool:
        return self.tree is not None and _has_strategy(self.tree)

    @property
    def self_contained(self) -> bool:
        return self.tree is not None and not _free_names(self.tree)


def _candidate(block: _Block) -> _Candidate | None:
    """The block as Python code, or None for shell commands, output and other languages."""
    if block.tag in _NON_PYTHON_TAGS or not block.code.strip() or _is_shell(block.code):
        return None
    tree = _parse(block.code)
    code = block.code
    if tree is None:
        cleaned = _without_magics(block.code)
        tree = _parse(cleaned)
        if tree is not None:
            code = cleaned
    if tree is not None and _looks_like_code(tree):
        return _Candidate(code=code, tree=tree)
    if tree is None and block.tag in _PYTHON_TAGS:
        return _Candidate(code=block.code, tree=None)
    # An untagged block that is not code: sample output, a stats table, prose.
    return None


def _choose(candidates: list[_Candidate]) -> str:
    if len(candidates) == 1:
        return candidates[0].code
    complete = [c for c in candidates if c.strategy and c.self_contained]
    if complete:
        # Answers that show several full versions put the final one last; the blocks after it that
        # only use what it defines ("and to run it: ...") belong to it: they carry the file's own run.
        chosen = complete[-1]
        return _with_continuations(chosen, candidates[candidates.index(chosen) + 1:])
    joined = "\n".join(c.code.rstrip("\n") + "\n" for c in candidates)
    tree = _parse(joined)
    if tree is not None and _has_strategy(tree):
        # Fragments: imports in one block, the class in the next, the run in a third.
        return joined
    strategies = [c for c in candidates if c.strategy]
    if strategies:
        # Fewest unresolved names wins; min() keeps the first of equals, and the
        # list is reversed so that a tie goes to the later block, as above.
        return min(reversed(strategies), key=_unresolved_count).code
    if tree is not None:
        return joined
    # Nothing mentions a strategy and the pieces do not fit together: hand back
    # the biggest piece so that the checks downstream can say what is missing.
    parsed = [c for c in candidates if c.tree is not None]
    return max(parsed or candidates, key=lambda c: len(c.code)).code


def _defined_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return names


def _with_continuations(chosen: _Candidate, later: list[_Candidate]) -> str:
    """The chosen module plus the later blocks that build on it without redefining its strategy."""
    assert chosen.tree is not None
    code = chosen.code
    defined = _defined_names(chosen.tree)
    strategies = {n.name for n in ast.walk(chosen.tree) if isinstance(n, ast.ClassDef)}
    for block in later:
        if block.tree is None:
            continue
        free = _free_names(block.tree)
        redefines = {n.name for n in ast.walk(block.tree) if isinstance(n, ast.ClassDef)} & strategies
        if not free or redefines or not free <= defined:
            continue
        joined = code.rstrip("\n") + "\n\n" + block.code
        if _parse(joined) is None:
            continue
        code = joined
        defined |= _defined_names(block.tree)
    return code


def _unresolved_count(candidate: _Candidate) -> int:
    return len(_free_names(candidate.tree)) if candidate.tree is not None else 0


def _without_stray_tag(code: str) -> str:
    """Blank a first line that is only the fence's language tag ('python' left over
    from a stripped fence): it parses, but fails at run time as a NameError."""
    lines = code.split("\n")
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is None or lines[first].strip().lower() not in _PYTHON_TAGS:
        return code
    lines[first] = ""
    return "\n".join(lines)


def _is_prose(line: str) -> bool:
    """A sentence, a bullet or a numbered note: words that do not parse as a statement."""
    if not line.strip() or line[:1].isspace():
        return False
    return len(_WORD.findall(line)) >= 3 and _parse(line) is None


def _unfenced_code(text: str) -> str | None:
    """Code pasted without fences, maybe with a line of prose before and after it.

    Starts at the first line that opens like a module (an import, a class, a
    def). Trailing lines are dropped only while they read as prose: a module
    whose last lines are code but do not parse was cut off, and it is handed
    back whole so the run fails as a syntax error at that line, instead of
    running a strategy with its end missing. Only accepted when the code holds
    a strategy, so ordinary prose never turns into "code".
    """
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if _MODULE_START.match(line)), None)
    if start is None:
        return None
    end = len(lines)
    floor = max(start, len(lines) - _MAX_TRAILING_PROSE)
    while end > floor:
        code = "\n".join(lines[start:end]).rstrip() + "\n"
        tree = _parse(code)
        if tree is not None:
            return code if _has_strategy(tree) else None
        last = end - 1
        while last > start and not lines[last].strip():
            last -= 1
        if not _is_prose(lines[last]):
            break
        end = last
    code = "\n".join(lines[start:end]).rstrip() + "\n"
    return code if _STRATEGY_TEXT.search(code) else None


def _cut_off_line(code: str) -> int | None:
    """Where an unclosed block was cut off mid-module (max tokens), or None when it reads as complete.

    A block that does not parse was cut mid-statement. One that parses but ends in a bare name or
    attribute (`self.posit`) was cut mid-word, and one that imports Backtest but never builds one was cut
    before its run section (often inside `next()`): running either would report figures of half a
    strategy. A block that parses and reads as whole only lost its closing fence.
    """
    try:
        tree = ast.parse(code)
    except SyntaxError as exc:
        return exc.lineno or len(code.splitlines())
    except ValueError:
        return None
    final = tree.body[-1] if tree.body else None
    while final is not None and isinstance(final, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef
                                           | ast.If | ast.For | ast.While | ast.With | ast.Try):
        body = final.orelse if isinstance(final, ast.If | ast.For | ast.While | ast.Try) and final.orelse \
            else final.body
        final = body[-1] if body else None
    if isinstance(final, ast.Expr) and isinstance(final.value, ast.Name | ast.Attribute):
        return final.lineno
    if _imports_backtest_without_running_it(tree):
        # Cut between statements: the module imported Backtest for a run section it never got to.
        return len(code.rstrip("\n").splitlines())
    return None


def _imports_backtest_without_running_it(tree: ast.Module) -> bool:
    imported = any(isinstance(node, ast.ImportFrom) and any(alias.name == "Backtest" for alias in node.names)
                   for node in ast.walk(tree))
    called = any(isinstance(node, ast.Call) and _base_name(node.func) == "Backtest" for node in ast.walk(tree))
    return imported and not called


def extract_code(text: str) -> str:
    """The Python source in an LLM answer; the text itself when it already is Python.

    Raises ExtractionError when the answer is empty or holds no Python code.
    """
    if not text or not text.strip():
        raise ExtractionError("the answer is empty: there is no code to extract")
    whole = _parse(text)
    if whole is not None and _looks_like_code(whole):
        return _without_stray_tag(text)
    blocks = _fenced_blocks(text)
    if not blocks:
        unfenced = _unfenced_code(text)
        if unfenced is not None:
            return unfenced
        raise ExtractionError(
            "no Python code found: the answer is prose without a fenced code block (```python ... ```)"
        )
    candidates = [c for c in (_candidate(b) for b in blocks) if c is not None]
    if not candidates:
        raise ExtractionError(
            f"no Python code found: the answer's {len(blocks)} fenced block(s) hold "
            "shell commands, output or another language, not Python"
        )
    last = blocks[-1]
    if not last.closed and _candidate(last) is not None:
        cut = _cut_off_line(last.code)
        if cut is not None:
            lines = last.code.rstrip("\n").splitlines()
            shown = lines[cut - 1].strip()[:60] if 0 < cut <= len(lines) else ""
            where = input_line(text, last.code, cut)
            raise ExtractionError(
                f"line {cut}: the answer was cut off inside its code block (no closing fence), at {shown!r}"
                + (f" (line {where} of the input)" if where and where != cut else "")
                + "; the code is incomplete and needs a model to finish it",
                line=cut,
            )
    return _choose(candidates)


def input_line(text: str, code: str, line: int) -> int | None:
    """Line `line` of the extracted `code` as a line of the input `text` it came from, when it came whole.

    Errors name lines of the code that runs (the version stored); a person looks at the file they gave,
    where prose and fences sit above the code. None when the code was pieced together from fragments.
    """
    code_lines = [row.strip() for row in code.splitlines()]
    text_lines = [row.strip() for row in text.splitlines()]
    if not 0 < line <= len(code_lines):
        return None
    wanted = code_lines[:line]
    for start in range(len(text_lines) - line + 1):
        if text_lines[start:start + line] == wanted:
            return start + line
    return None


def describe_answer(answer: str, *, wanted: str = "code") -> str:
    """What an answer without usable code looks like, in a few words, for an error message."""
    text = answer.strip()
    shown = " ".join(text.split())
    shown = repr(shown if len(shown) <= 160 else shown[:160] + "...")
    if not text:
        return "empty"
    if text.startswith(("{", "[")):
        try:
            json.loads(text)
        except ValueError:
            pass
        else:
            return f"JSON, not {wanted}: {shown}"
    if re.match(r"(?is)^(?:<!doctype html|<html|<\?xml|<head|<body)", text):
        return f"an HTML/XML page (an error page from a proxy?): {shown}"
    return f"{len(text.split())} words of prose: {shown}"
