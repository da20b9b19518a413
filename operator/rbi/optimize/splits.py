"""In-sample / out-of-sample windows over the rows of one dataset.

A parameter search may only ever look at train windows; the test windows are
kept for judging what it found. All windows are half-open row ranges
``[start, end)`` into the dataset in time order, and every test window starts
at or after the end of its train window, so no test row is ever trained on.

Accepted shapes of ``spec.optimization.validation``::

    validation: {holdout: 0.3}                 # last 30% of rows out-of-sample, one fold
    validation:
      walkForward: {folds: 4, mode: anchored, testFraction: 0.2}
    # absent / null / {}                       -> {holdout: 0.3}

Walk-forward layout. The last ``T = round(testFraction * n)`` rows are the
out-of-sample region; it is cut into ``folds`` consecutive test windows of
(almost) equal size (sizes differ by at most one row), in time order, without
gaps or overlaps, together covering exactly those ``T`` rows. Let ``L = n - T``
be the rows before the out-of-sample region. For the fold whose test window
starts at row ``s``:

* ``anchored``: train is ``[0, s)``: it always starts at row 0 and grows by one
  test window per fold, so later folds train on earlier folds' test rows
  (never on their own).
* ``rolling``: train is ``[s - L, s)``: a fixed-length window of ``L`` rows that
  slides forward with the test windows, so old history is dropped.

``n = 1000, testFraction = 0.2, folds = 2`` gives tests ``[800, 900)`` and
``[900, 1000)``; anchored trains ``[0, 800)`` and ``[0, 900)``; rolling trains
``[0, 800)`` and ``[100, 900)``. A holdout is the one-fold case.

Sizes: every train window must keep at least `MIN_TRAIN_ROWS` rows after the
strategy's indicator warm-up (the first fold's train window starts at row 0,
so its warm-up rows cannot be borrowed from earlier data and would produce no
trades), and every test window must have at least `MIN_TEST_ROWS` rows. Test
windows are reported without warm-up; `Window.with_warmup` gives the extended
slice to run the strategy on. Because the first test window starts after at
least ``MIN_TRAIN_ROWS + warmup`` rows, that extension never hits row 0.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from rbi.errors import SpecError

__all__ = [
    "DEFAULT_TEST_FRACTION",
    "MAX_FOLDS",
    "MAX_TEST_FRACTION",
    "MIN_TEST_ROWS",
    "MIN_TRAIN_ROWS",
    "Fold",
    "Method",
    "Mode",
    "ValidationSpec",
    "Window",
    "make_folds",
    "parse_validation",
]

MIN_TRAIN_ROWS = 200
MIN_TEST_ROWS = 50
MAX_FOLDS = 20
# Above 90% out-of-sample the search would fit on a sliver of the data.
MAX_TEST_FRACTION = 0.9
DEFAULT_TEST_FRACTION = 0.3
DEFAULT_FOLDS = 4
WHERE = "spec.optimization.validation"

Method = Literal["holdout", "walkForward"]
Mode = Literal["anchored", "rolling"]
_MODES: tuple[Mode, ...] = ("anchored", "rolling")
_TOP_KEYS = ("holdout", "walkForward")
_WALK_FORWARD_KEYS = ("folds", "mode", "testFraction")


@dataclass(frozen=True, slots=True)
class Window:
    """Rows ``[start, end)`` of the dataset."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if not (_is_int(self.start) and _is_int(self.end)) or not 0 <= self.start <= self.end:
            raise ValueError(f"a window needs integers 0 <= start <= end, got [{self.start!r}, {self.end!r})")

    @property
    def length(self) -> int:
        return self.end - self.start

    def with_warmup(self, warmup: int) -> Window:
        """The same end, with the start moved back by up to `warmup` rows (never below row 0).

        Indicators need history before the first bar they are judged on; the
        caller runs the strategy on this longer slice.
        """
        if not _is_int(warmup) or warmup < 0:
            raise ValueError(f"warmup must be a non-negative integer, got {warmup!r}")
        return Window(max(0, self.start - warmup), self.end)

    def as_slice(self) -> slice:
        """For ``frame.iloc[window.as_slice()]``."""
        return slice(self.start, self.end)


@dataclass(frozen=True, slots=True)
class Fold:
    train: Window
    test: Window

    def __post_init__(self) -> None:
        # The one property every caller relies on; cheap enough to enforce always.
        if self.test.start < self.train.end:
            raise ValueError(f"test window [{self.test.start}, {self.test.end}) starts before the end of "
                             f"train window [{self.train.start}, {self.train.end})")


@dataclass(frozen=True, slots=True)
class ValidationSpec:
    """A validated ``validation`` block. A holdout is ``method='holdout', folds=1``."""

    method: Method = "holdout"
    test_fraction: float = DEFAULT_TEST_FRACTION
    folds: int = 1
    mode: Mode = "anchored"
    # Other markets to measure the parent and each candidate on, whole, beside the holdout (cross-market check).
    datasets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Checked here too, so a spec built in code is held to the same rules as YAML.
        if self.method not in _TOP_KEYS:
            raise SpecError(f"{WHERE}: method must be one of {list(_TOP_KEYS)}, got {self.method!r}")
        _check_fraction(self.test_fraction, self._field("testFraction"))
        _check_folds(self.folds, self._field("folds"))
        if self.mode not in _MODES:
            raise SpecError(f"{self._field('mode')} must be one of {list(_MODES)}, got {self.mode!r}")
        if self.method == "holdout" and self.folds != 1:
            raise SpecError(f"{WHERE}.holdout has exactly one fold, got folds={self.folds}")

    def _field(self, name: str) -> str:
        return f"{WHERE}.holdout" if self.method == "holdout" else f"{WHERE}.walkForward.{name}"

    def describe(self) -> str:
        if self.method == "holdout":
            return f"holdout {self.test_fraction:g}"
        return f"walkForward {self.mode}, {self.folds} fold(s), testFraction {self.test_fraction:g}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_fraction(value: Any, where: str) -> float:
    if not _is_number(value) or not math.isfinite(value) or not 0 < value <= MAX_TEST_FRACTION:
        raise SpecError(f"{where} must be a fraction in (0, {MAX_TEST_FRACTION}] (the share of rows held out), "
                        f"got {value!r}")
    return float(value)


def _check_folds(value: Any, where: str) -> int:
    if not _is_int(value) or not 1 <= value <= MAX_FOLDS:
        raise SpecError(f"{where} must be an integer from 1 to {MAX_FOLDS}, got {value!r}")
    return int(value)


def parse_validation(raw: Mapping[str, Any] | None) -> ValidationSpec:
    """Validate ``spec.optimization.validation``; absent or empty means ``{holdout: 0.3}``.

    Walk-forward defaults: ``folds: 4``, ``mode: anchored``, ``testFraction: 0.3``.
    """
    if raw is None:
        return ValidationSpec()
    if not isinstance(raw, Mapping):
        raise SpecError(f"{WHERE} must be a mapping such as {{holdout: 0.3}} or "
                        f"{{walkForward: {{folds: 4, mode: anchored, testFraction: 0.3}}}}, got {type(raw).__name__}")
    unknown = sorted(str(k) for k in raw if k not in (*_TOP_KEYS, "datasets"))
    if unknown:
        raise SpecError(f"unknown field(s) in {WHERE}: {unknown}; known: {[*_TOP_KEYS, 'datasets']}")
    datasets = _check_datasets(raw.get("datasets"))
    present = [k for k in _TOP_KEYS if k in raw]
    if len(present) > 1:
        raise SpecError(f"{WHERE} must set exactly one of holdout, walkForward (found both)")
    if not present:
        return ValidationSpec(datasets=datasets)
    if present[0] == "holdout":
        return ValidationSpec(method="holdout", test_fraction=_check_fraction(raw["holdout"], f"{WHERE}.holdout"),
                              datasets=datasets)
    block = raw["walkForward"]
    where = f"{WHERE}.walkForward"
    if block is None:
        block = {}
    if not isinstance(block, Mapping):
        raise SpecError(f"{where} must be a mapping such as {{folds: 4, mode: anchored, testFraction: 0.3}}, "
                        f"got {type(block).__name__}")
    unknown = sorted(str(k) for k in block if k not in _WALK_FORWARD_KEYS)
    if unknown:
        raise SpecError(f"unknown field(s) in {where}: {unknown}; known: {list(_WALK_FORWARD_KEYS)}")
    mode = block.get("mode", "anchored")
    if mode not in _MODES:
        raise SpecError(f"{where}.mode must be one of {list(_MODES)}, got {mode!r}")
    return ValidationSpec(
        method="walkForward",
        test_fraction=_check_fraction(block.get("testFraction", DEFAULT_TEST_FRACTION), f"{where}.testFraction"),
        folds=_check_folds(block.get("folds", DEFAULT_FOLDS), f"{where}.folds"),
        mode=mode,
        datasets=datasets,
    )


def _check_datasets(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(n, str) and n.strip() for n in raw) or len(raw) > 10:
        raise SpecError(f"{WHERE}.datasets must be a list of up to 10 dataset names "
                        f"(e.g. [GOOG, EURUSD, BTCUSD] from backtesting.test, or a bundled dataset), got {raw!r}")
    return tuple(dict.fromkeys(n.strip() for n in raw))


def _round_half_up(value: float) -> int:
    # Python's round() rounds half to even; a window size should not depend on that.
    return math.floor(value + 0.5)


def make_folds(n_rows: int, spec: ValidationSpec, *, warmup: int = 0) -> list[Fold]:
    """The folds for a dataset of `n_rows` rows, in time order (see the module docstring).

    Raises SpecError, with the numbers, when a train window would keep fewer
    than `MIN_TRAIN_ROWS` rows after `warmup` or a test window would have fewer
    than `MIN_TEST_ROWS` rows.
    """
    if not _is_int(n_rows) or n_rows < 0:
        raise ValueError(f"n_rows must be a non-negative integer, got {n_rows!r}")
    if not _is_int(warmup) or warmup < 0:
        raise ValueError(f"warmup must be a non-negative integer, got {warmup!r}")
    k = spec.folds
    total_test = _round_half_up(spec.test_fraction * n_rows)
    first_test = n_rows - total_test
    where = spec._field("testFraction") if spec.method == "holdout" else f"{WHERE}.walkForward"
    setting = spec.describe()
    smallest_test = total_test // k
    if smallest_test < MIN_TEST_ROWS:
        per = "the test window has" if k == 1 else f"the smallest of {k} test windows has"
        raise SpecError(f"{where}: {n_rows} rows with {setting} hold out {total_test} rows, so {per} "
                        f"{smallest_test} rows; each test window needs at least {MIN_TEST_ROWS} "
                        f"(use more data, a larger fraction or fewer folds)")
    # Anchored fold 0 and every rolling fold train on exactly `first_test` rows; the
    # first of them starts at row 0 and so loses `warmup` rows to indicator warm-up.
    usable = first_test - warmup
    if usable < MIN_TRAIN_ROWS:
        spent = f", minus {warmup} warm-up rows, leaves {usable}" if warmup else ""
        raise SpecError(f"{where}: {n_rows} rows with {setting} leave {first_test} rows for the "
                        f"{'first ' if k > 1 else ''}train window{spent}; each train window needs at least "
                        f"{MIN_TRAIN_ROWS} rows after warm-up (use more data or a smaller fraction)")
    bounds = [first_test + (i * total_test) // k for i in range(k + 1)]
    folds: list[Fold] = []
    for start, end in itertools.pairwise(bounds):
        train_start = 0 if spec.mode == "anchored" else start - first_test
        folds.append(Fold(train=Window(train_start, start), test=Window(start, end)))
    return folds
