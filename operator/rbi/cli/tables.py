"""One rendering policy for every table the CLI prints.

A `FitTable` is a rich renderable that picks its form when it is rendered, against the width it is given
(the terminal's, COLUMNS, or a panel's inside), so the same object serves a plain print and a live view:

1. the table at its natural width, when that fits;
2. in an interactive terminal, the same table without the columns the command marked droppable (highest
   `drop` first, named in a caption), long-text columns wrapped between words, never inside one;
3. otherwise (still too narrow, or no terminal: a CI log, a pipe, a file) each row folded into a block of
   "label  value" lines under a heading, so every value is printed whole.

Cells are plain strings (never parsed as markup: error messages and parameters hold brackets) or `Text`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from rich import box
from rich.console import Console, ConsoleOptions, JustifyMethod, RenderResult
from rich.measure import Measurement
from rich.padding import Padding
from rich.segment import Segment
from rich.table import Table
from rich.text import Text

__all__ = ["EMPTY", "Column", "FitTable", "interactive"]

EMPTY = "—"
# A wrapped column narrower than this reads as a stack of single words: the failure this module exists to avoid.
WRAP_MIN = 20
_PROBE_WIDTH = 100_000
FOLD_INDENT = 2
FOLD_SEPARATOR = " · "


@dataclass(frozen=True, slots=True)
class Column:
    header: str
    justify: JustifyMethod = "left"
    drop: int = 0  # 0: always shown; in a narrow terminal the highest numbers go first
    wrap: bool = False  # long text: may wrap between words to fit
    key: bool = False  # names the row when rows are folded into blocks
    style: str | None = None
    heading: str = "{}"  # how a key cell reads in a folded row's heading, e.g. "iteration {}"


def interactive(console: Console) -> bool:
    """A person watching a terminal. CI runners often force colour (FORCE_COLOR), which makes rich believe it
    writes to a terminal; their logs still cannot redraw, so CI counts as not interactive."""
    return console.is_interactive and not os.environ.get("CI")


def _lines(text: Text) -> list[str]:
    return text.plain.split("\n") or [""]


def _natural(text: Text) -> int:
    return max(Text(line).cell_len for line in _lines(text))


def _longest_word(text: Text) -> int:
    return max((Text(word).cell_len for word in text.plain.split()), default=0)


def _frame(*, title: str | None, caption: str | None, show_header: bool) -> Table:
    """Every CLI table looks alike: a rule under the header, two spaces between columns, no outer edge."""
    return Table(title=title, title_justify="left", title_style="bold", caption=caption, caption_justify="left",
                 caption_style="dim", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True,
                 show_header=show_header, expand=False)


class FitTable:
    """A table that fits the width it is rendered at, or folds; see the module docstring."""

    def __init__(self, columns: Sequence[Column], *, title: str | None = None, show_header: bool = True) -> None:
        self.columns = list(columns)
        self.title = title
        self.show_header = show_header
        self.rows: list[list[Text]] = []

    def add_row(self, *cells: str | Text | None) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"{len(cells)} cells for {len(self.columns)} columns")
        self.rows.append([c if isinstance(c, Text) else Text(EMPTY if c is None else c) for c in cells])

    # --- measuring ---------------------------------------------------------------------------------------

    def _bounds(self, index: int) -> tuple[int, int]:
        """(narrowest, natural) width of a column: its words and header never break."""
        column = self.columns[index]
        cells = [Text(column.header)] + [row[index] for row in self.rows]
        natural = max(_natural(c) for c in cells)
        if not column.wrap:
            return natural, natural
        words = max(_longest_word(c) for c in cells)
        return max(words, Text(column.header).cell_len, min(natural, WRAP_MIN)), natural

    def _table(self, indices: Sequence[int], widths: Sequence[int], *, caption: str | None = None) -> Table:
        table = _frame(title=self.title, caption=caption, show_header=self.show_header)
        for index, width in zip(indices, widths, strict=True):
            column = self.columns[index]
            table.add_column(column.header, justify=column.justify, style=column.style, width=width,
                             no_wrap=not column.wrap, overflow="fold")
        for row in self.rows:
            table.add_row(*(row[i] for i in indices))
        return table

    @staticmethod
    def _chrome(console: Console, options: ConsoleOptions, table: Table, widths: Sequence[int]) -> int:
        """Borders and padding: what the table adds to its columns, measured by rendering it."""
        lines = console.render_lines(table, options.update_width(_PROBE_WIDTH), pad=False)
        return max((Segment.get_line_length(line) for line in lines), default=0) - sum(widths)

    def _fit(self, console: Console, options: ConsoleOptions, indices: Sequence[int],
             caption: str | None) -> Table | None:
        bounds = [self._bounds(i) for i in indices]
        natural = [hi for _, hi in bounds]
        probe = _frame(title=None, caption=None, show_header=True)
        for width in natural:
            probe.add_column("", width=width, no_wrap=True)
        chrome = self._chrome(console, options, probe, natural)
        spare = options.max_width - chrome - sum(lo for lo, _ in bounds)
        if spare < 0:
            return None
        widths = [lo for lo, _ in bounds]
        # The room left goes to the wrapped columns, one cell at a time to the one whose longest cell would take
        # the most lines: their heights even out instead of one column staying a narrow strip.
        while spare > 0:
            short = [(hi / w, n) for n, (w, (_, hi)) in enumerate(zip(widths, bounds, strict=True)) if hi > w]
            if not short:
                break
            widths[max(short)[1]] += 1
            spare -= 1
        return self._table(indices, widths, caption=caption)

    def _layouts(self) -> Iterator[tuple[list[int], str | None]]:
        """All columns first, then without each droppable group in turn (highest `drop` first)."""
        indices = list(range(len(self.columns)))
        yield indices, None
        for level in sorted({c.drop for c in self.columns if c.drop > 0}, reverse=True):
            indices = [i for i in indices if self.columns[i].drop < level]
            hidden = [c.header for c in self.columns if c.drop >= level]
            yield indices, f"hidden at this width: {', '.join(hidden)}"

    # --- rendering ---------------------------------------------------------------------------------------

    def fitted(self, console: Console, options: ConsoleOptions) -> Table | None:
        """The table form this width allows, or None where the rows must fold."""
        for number, (indices, caption) in enumerate(self._layouts()):
            if number > 0 and not interactive(console):
                return None  # a log keeps every value: fold rather than hide columns
            table = self._fit(console, options, indices, caption)
            if table is not None:
                return table
        return None

    def _heading(self, index: int, cell: Text) -> Text:
        before, _, after = self.columns[index].heading.partition("{}")
        return Text.assemble(before, cell, after)

    def folded(self, width: int) -> Iterator[Text | Table | Padding]:
        """Each row as a heading (its key cells) and its other cells as "label: value" pairs packed into lines
        of `width`; long text (a wrapped column) gets a line of its own. Empty cells are left out."""
        keys = [i for i, c in enumerate(self.columns) if c.key] or [0]
        room = max(1, width - FOLD_INDENT)
        if self.title:
            yield Text(self.title, style="bold")
        if not self.show_header:  # a key/value listing: its rows are already "key: value" lines
            for row in self.rows:
                values = [row[i] for i in range(len(self.columns)) if i not in keys]
                name = Text("  ").join(self._heading(i, row[i]) for i in keys)
                yield Text.assemble(name, ": ", Text(FOLD_SEPARATOR).join(values))
            return
        for row in self.rows:
            yield Text("")
            # The key cells side by side, the last one wrapping under itself (a hanging indent).
            heading = Table.grid(padding=(0, 2))
            for position, _ in enumerate(keys):
                heading.add_column(style="bold", no_wrap=position < len(keys) - 1, overflow="fold")
            heading.add_row(*(self._heading(i, row[i]) for i in keys))
            yield heading
            line = Text()
            for index, column in enumerate(self.columns):
                cell = row[index]
                if index in keys or cell.plain in ("", EMPTY):
                    continue
                pair = Text.assemble((f"{column.header}: ", "dim"), cell)
                if line and (column.wrap or line.cell_len + len(FOLD_SEPARATOR) + pair.cell_len > room):
                    yield Padding(line, (0, 0, 0, FOLD_INDENT))
                    line = Text()
                if line:
                    line.append(FOLD_SEPARATOR, style="dim")
                line.append_text(pair)
                if column.wrap:
                    yield Padding(line, (0, 0, 0, FOLD_INDENT))
                    line = Text()
            if line:
                yield Padding(line, (0, 0, 0, FOLD_INDENT))

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        table = self.fitted(console, options)
        if table is not None:
            yield table
        else:
            yield from self.folded(options.max_width)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        table = self.fitted(console, options)
        if table is None:
            return Measurement(options.max_width, options.max_width)
        return Measurement.get(console, options, table)
