"""unused_imports: imports outside the allow-list that the code never uses."""

from __future__ import annotations

import ast

from rbi.agents.fixers._source import Fix, _apply, _Edit, _parents, _parse, _Source
from rbi.prepare.inspect_code import ALLOWED_MODULES

# --------------------------------------------------------------------------- unused_imports


def _used_names(tree: ast.Module) -> set[str]:
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}


def fix_unused_imports(code: str) -> tuple[str, list[Fix]]:
    """Drop imports of modules outside ALLOWED_MODULES whose names the code never uses."""
    tree = _parse(code)
    if tree is None:
        return code, []
    source = _Source(code)
    parents = _parents(tree)
    used = _used_names(tree)
    edits: list[_Edit] = []
    fixes: list[Fix] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
            bound = [a.asname or a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
            bound = [a.asname or a.name for a in node.names]
        else:
            continue
        if all(m.split(".")[0] in ALLOWED_MODULES for m in modules):
            continue
        if any(m.split(".")[0] in ALLOWED_MODULES for m in modules) or any(b in used or b == "*" for b in bound):
            continue
        start, end = source.span(node)
        line_text = source.lines[node.lineno - 1]
        whole_line = line_text.strip() == code[start:end].strip() and node.lineno == node.end_lineno
        parent = parents.get(node)
        body = getattr(parent, "body", None)
        alone = isinstance(body, list) and len(body) == 1 and not isinstance(parent, ast.Module)
        if alone or not whole_line:
            edits.append(_Edit(start, end, "pass"))
        else:
            edits.append(_Edit(source.line_start(node.lineno), source.line_start(node.lineno + 1), ""))
        fixes.append(Fix("unused_imports", node.lineno,
                         f"removed unused import of {', '.join(modules)} (not available in the sandbox)"))
    return _apply(code, edits), fixes


