"""Reading the ideas file: lines, paragraphs, separators, comments, duplicates and bad files."""

from __future__ import annotations

from pathlib import Path

import pytest

from rbi.errors import SpecError
from rbi.loop import parse_ideas, read_ideas


def test_one_idea_per_line_with_comments_markers_and_duplicates() -> None:
    ideas = parse_ideas("# my ideas\n- Buy the dip\n\n2. Sell the rip\n* buy   the DIP\n- Fade gaps\n")
    assert [i.text for i in ideas] == ["Buy the dip", "Sell the rip", "Fade gaps"]
    assert [i.line for i in ideas] == [2, 4, 6]
    assert len({i.key for i in ideas}) == 3


def test_paragraphs_of_longer_descriptions() -> None:
    text = ("Mean reversion on RSI.\nBuy below 30, sell above 70,\nwith a stop-loss.\n\n"
            "Breakout of the 20-bar high.\n\nA third, one-line idea.\n")
    ideas = parse_ideas(text)
    assert [i.text.splitlines()[0] for i in ideas] == ["Mean reversion on RSI.", "Breakout of the 20-bar high.",
                                                       "A third, one-line idea."]
    assert ideas[0].title.startswith("Mean reversion on RSI. Buy below 30") and len(ideas[0].title) == 60
    # Forced readings.
    assert len(parse_ideas(text, fmt="lines")) == 5
    assert len(parse_ideas("a\nb\n", fmt="paragraphs")) == 1


def test_explicit_separators_keep_blank_lines_inside_an_idea() -> None:
    ideas = parse_ideas("First idea\n\nstill the first\n---\nSecond idea\n----\n")
    assert [i.text for i in ideas] == ["First idea\n\nstill the first", "Second idea"]


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="ideas file not found"):
        read_ideas(tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n")
    with pytest.raises(SpecError, match="holds no ideas"):
        read_ideas(empty)
    with pytest.raises(SpecError, match="too long"):
        parse_ideas("x" * 9000)
    with pytest.raises(SpecError, match="unknown ideas format"):
        parse_ideas("x", fmt="csv")  # type: ignore[arg-type]


def test_the_bundled_examples_parse() -> None:
    ideas = read_ideas(Path(__file__).resolve().parents[2] / "examples" / "ideas.txt")
    assert len(ideas) == 5 and all(len(i.text) > 20 for i in ideas)
