"""The ideas file: one idea per line, or longer descriptions.

- Lines starting with `#` are comments; blank lines separate paragraphs.
- A line that is exactly `---` separates ideas explicitly: then each section is one idea, however long.
- Otherwise, when blank lines separate several paragraphs and some paragraph spans several lines, each
  paragraph is one idea (a file of descriptions); else each line is one idea. A block of list items
  (`-`, `*`, `1.`) is a list, one idea per item. `fmt` forces either reading.
- A leading list marker (`-`, `*`, `1.`) is dropped. The same idea twice counts once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rbi.agents.research import idea_key
from rbi.errors import SpecError

__all__ = ["Idea", "parse_ideas", "read_ideas"]

IdeasFormat = Literal["auto", "lines", "paragraphs"]
_MARKER = re.compile(r"^\s*(?:[-*+•]|\d+[.)])\s+")
_SEPARATOR = re.compile(r"^\s*-{3,}\s*$")
MAX_IDEA_CHARS = 8000


@dataclass(frozen=True, slots=True)
class Idea:
    key: str
    text: str
    line: int  # where it starts in the file, for messages

    @property
    def title(self) -> str:
        first = " ".join(self.text.split())
        return first if len(first) <= 60 else first[:57] + "..."


def _clean(lines: list[str]) -> str:
    return "\n".join(_MARKER.sub("", line, count=1) if i == 0 else line for i, line in enumerate(lines)).strip()


def parse_ideas(text: str, *, fmt: IdeasFormat = "auto", source: str = "ideas") -> list[Idea]:
    """The ideas in a file's text, in order, without duplicates."""
    if fmt not in ("auto", "lines", "paragraphs"):
        raise SpecError(f"unknown ideas format {fmt!r}; use auto, lines or paragraphs")
    raw = text.splitlines()
    numbered = [(n, line.rstrip()) for n, line in enumerate(raw, start=1) if not line.lstrip().startswith("#")]
    blocks: list[tuple[int, list[str]]] = []
    explicit = any(_SEPARATOR.match(line) for _, line in numbered)
    current: list[str] = []
    start = 0

    def flush() -> None:
        nonlocal current
        if any(line.strip() for line in current):
            blocks.append((start, [line for line in current if line.strip()] if not explicit else current))
        current = []

    for number, line in numbered:
        if (explicit and _SEPARATOR.match(line)) or (not explicit and not line.strip()):
            flush()
            continue
        if not current:
            start = number
        current.append(line)
    flush()
    # Paragraph mode needs evidence: several blank-line separated blocks, one of them spanning lines.
    # (A block whose every line is a list item is a list of ideas, not a paragraph.)
    paragraphs = len(blocks) > 1 and any(len(lines) > 1 and not all(_MARKER.match(line) for line in lines)
                                         for _, lines in blocks)
    per_line = fmt == "lines" or (fmt == "auto" and not explicit and not paragraphs)
    ideas: list[Idea] = []
    seen: set[str] = set()
    for first_line, lines in blocks:
        items = [(first_line + i, [line]) for i, line in enumerate(lines)] if per_line else [(first_line, lines)]
        for number, chunk in items:
            text_ = _clean(chunk)
            if not text_:
                continue
            if len(text_) > MAX_IDEA_CHARS:
                raise SpecError(f"{source}:{number}: an idea of {len(text_)} characters is too long "
                                f"(at most {MAX_IDEA_CHARS})")
            key = idea_key(text_)
            if key not in seen:
                seen.add(key)
                ideas.append(Idea(key=key, text=text_, line=number))
    return ideas


def read_ideas(path: Path, *, fmt: IdeasFormat = "auto") -> list[Idea]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"ideas file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read the ideas file {path}: {exc}") from None
    ideas = parse_ideas(text, fmt=fmt, source=str(path))
    if not ideas:
        raise SpecError(f"{path} holds no ideas (one per line, or paragraphs separated by blank lines)")
    return ideas
