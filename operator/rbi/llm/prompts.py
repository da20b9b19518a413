"""Prompt templates, versioned and shipped as package data.

Each prompt is a file `prompts/<name>.md`:

    version: 3
    <system message>
    ---
    <user message template with $placeholders>

The first line gives the version (an integer, bumped whenever the wording
changes, so stored results can say which prompt produced them). The first
line that is exactly `---` separates the system message from the user
template; later `---` lines belong to the user template. Placeholders follow
`string.Template`: `$name` or `${name}`, and `$$` for a literal dollar sign.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from functools import cache
from importlib import resources

from rbi.errors import RbiError

__all__ = ["Prompt", "PromptError", "load_prompt"]

_VERSION = re.compile(r"^version:\s*(\d+)\s*$")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_SEPARATOR = "---"


class PromptError(RbiError):
    """A prompt template is missing, malformed, or rendered without a value it needs."""


@dataclass(frozen=True, slots=True)
class Prompt:
    name: str
    version: int
    system: str
    user_template: str

    @property
    def placeholders(self) -> frozenset[str]:
        """The names the user template needs."""
        return frozenset(string.Template(self.user_template).get_identifiers())

    def render(self, **values: object) -> str:
        """The user message with every placeholder filled; PromptError names any that is missing."""
        missing = sorted(self.placeholders - values.keys())
        if missing:
            given = ", ".join(sorted(values)) or "none"
            raise PromptError(
                f"prompt {self.name!r} (version {self.version}) needs a value for "
                f"{', '.join('$' + m for m in missing)} (given: {given})"
            )
        try:
            return string.Template(self.user_template).substitute({k: str(v) for k, v in values.items()})
        except ValueError as exc:  # a stray '$' in the template itself
            raise PromptError(f"prompt {self.name!r} (version {self.version}) is malformed: {exc}") from None


def parse_prompt(name: str, text: str) -> Prompt:
    """A Prompt from the text of a template file."""
    lines = text.splitlines()
    header = _VERSION.match(lines[0].strip()) if lines else None
    if header is None:
        first = repr(lines[0]) if lines else "nothing"
        raise PromptError(f"prompt {name!r}: the first line must be 'version: N', found {first}")
    body = lines[1:]
    try:
        split = next(i for i, line in enumerate(body) if line.strip() == _SEPARATOR)
    except StopIteration:
        raise PromptError(
            f"prompt {name!r}: no '{_SEPARATOR}' line separates the system message from the user template"
        ) from None
    system = "\n".join(body[:split]).strip()
    user = "\n".join(body[split + 1 :]).strip() + "\n"
    if not system or not user.strip():
        raise PromptError(f"prompt {name!r}: the system message and the user template must both be non-empty")
    prompt = Prompt(name=name, version=int(header[1]), system=system, user_template=user)
    try:
        string.Template(user).get_identifiers()
        if not string.Template(user).is_valid():
            raise ValueError("a '$' that starts no placeholder (write '$$' for a dollar sign)")
    except ValueError as exc:
        raise PromptError(f"prompt {name!r}: {exc}") from None
    return prompt


@cache
def load_prompt(name: str) -> Prompt:
    """The packaged prompt `prompts/<name>.md`."""
    if not _NAME.match(name):
        raise PromptError(f"invalid prompt name {name!r} (lowercase letters, digits and '_')")
    resource = resources.files("rbi.llm").joinpath("prompts", f"{name}.md")
    if not resource.is_file():
        available = sorted(
            entry.name.removesuffix(".md")
            for entry in resources.files("rbi.llm").joinpath("prompts").iterdir()
            if entry.name.endswith(".md")
        )
        raise PromptError(f"no prompt named {name!r} (available: {', '.join(available) or 'none'})")
    return parse_prompt(name, resource.read_text(encoding="utf-8"))
