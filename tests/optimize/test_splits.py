"""In-sample / out-of-sample windows: shapes accepted, nonsense rejected, invariants over many sizes."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest

from rbi.errors import SpecError
from rbi.optimize.splits import (
    MIN_TEST_ROWS,
    MIN_TRAIN_ROWS,
    Fold,
    Mode,
    ValidationSpec,
    Window,
    make_folds,
    parse_validation,
)

# --------------------------------------------------------------------------- parsing


def test_default_is_a_30_percent_holdout() -> None:
    empty: dict[str, Any] = {}
    for raw in (None, empty):
        spec = parse_validation(raw)
        assert (spec.method, spec.test_fraction, spec.folds) == ("holdout", 0.3, 1)
    (fold,) = make_folds(1000, parse_validation(None))
    assert fold == Fold(train=Window(0, 700), test=Window(700, 1000))


def test_holdout_shape() -> None:
    spec = parse_validation({"holdout": 0.25})
    assert spec == ValidationSpec(method="holdout", test_fraction=0.25, folds=1)
    (fold,) = make_folds(2000, spec)
    assert (fold.train, fold.test) == (Window(0, 1500), Window(1500, 2000))


def test_walk_forward_shape_and_defaults() -> None:
    spec = parse_validation({"walkForward": {"folds": 4, "mode": "rolling", "testFraction": 0.2}})
    assert spec == ValidationSpec(method="walkForward", test_fraction=0.2, folds=4, mode="rolling")
    assert parse_validation({"walkForward": {}}) == ValidationSpec(
        method="walkForward", test_fraction=0.3, folds=4, mode="anchored")
    assert parse_validation({"walkForward": None}).folds == 4


def test_documented_example() -> None:
    spec = ValidationSpec(method="walkForward", test_fraction=0.2, folds=2, mode="anchored")
    assert [(f.train, f.test) for f in make_folds(1000, spec)] == [
        (Window(0, 800), Window(800, 900)), (Window(0, 900), Window(900, 1000))]
    rolling = ValidationSpec(method="walkForward", test_fraction=0.2, folds=2, mode="rolling")
    assert [(f.train, f.test) for f in make_folds(1000, rolling)] == [
        (Window(0, 800), Window(800, 900)), (Window(100, 900), Window(900, 1000))]


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("holdout", "must be a mapping"),
        ({"holdout": 0}, "validation.holdout must be a fraction in (0, 0.9]"),
        ({"holdout": 0.95}, "validation.holdout must be a fraction"),
        ({"holdout": -0.1}, "validation.holdout"),
        ({"holdout": True}, "validation.holdout"),
        ({"holdout": "30%"}, "validation.holdout"),
        ({"holdout": math.nan}, "validation.holdout"),
        ({"holdout": 0.3, "walkForward": {}}, "exactly one of holdout, walkForward"),
        ({"holdOut": 0.3}, "unknown field(s) in spec.optimization.validation: ['holdOut']"),
        ({"walkForward": {"folds": 0}}, "walkForward.folds must be an integer from 1 to 20, got 0"),
        ({"walkForward": {"folds": 21}}, "walkForward.folds must be an integer from 1 to 20, got 21"),
        ({"walkForward": {"folds": 2.5}}, "walkForward.folds"),
        ({"walkForward": {"folds": True}}, "walkForward.folds"),
        ({"walkForward": {"mode": "expanding"}}, "walkForward.mode must be one of ['anchored', 'rolling']"),
        ({"walkForward": {"testFraction": 0}}, "walkForward.testFraction must be a fraction"),
        ({"walkForward": {"testFraction": 1.0}}, "walkForward.testFraction must be a fraction"),
        ({"walkForward": {"folds": 3, "gap": 5}}, "unknown field(s) in spec.optimization.validation.walkForward"),
        ({"walkForward": [4]}, "walkForward must be a mapping"),
    ],
)
def test_nonsense_is_rejected_naming_the_field(raw: Any, fragment: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_validation(raw)
    assert fragment in str(caught.value)


def test_boundary_fractions_are_accepted() -> None:
    assert parse_validation({"holdout": 0.9}).test_fraction == 0.9
    assert parse_validation({"walkForward": {"folds": 20, "testFraction": 0.9}}).folds == 20
    assert parse_validation({"walkForward": {"folds": 1}}).folds == 1


def test_spec_built_in_code_is_checked_too() -> None:
    with pytest.raises(SpecError, match="folds"):
        ValidationSpec(method="walkForward", folds=0)
    with pytest.raises(SpecError, match="exactly one fold"):
        ValidationSpec(method="holdout", folds=3)


# --------------------------------------------------------------------------- sizes


def test_too_few_test_rows_says_so_with_numbers() -> None:
    spec = parse_validation({"walkForward": {"folds": 5, "testFraction": 0.2}})
    with pytest.raises(SpecError) as caught:
        make_folds(1000, spec)  # 200 out-of-sample rows / 5 folds = 40 < 50
    message = str(caught.value)
    assert "spec.optimization.validation.walkForward" in message
    assert "1000 rows" in message and "200 rows" in message and "40 rows" in message and "at least 50" in message
    assert len(make_folds(1250, spec)) == 5  # 250 / 5 = 50: exactly enough


def test_too_few_train_rows_says_so_with_numbers() -> None:
    with pytest.raises(SpecError) as caught:
        make_folds(250, parse_validation({"holdout": 0.3}))  # train 175 < 200
    message = str(caught.value)
    assert "validation.holdout" in message and "175 rows" in message and "at least 200" in message


def test_warmup_counts_against_the_train_window() -> None:
    spec = parse_validation({"holdout": 0.3})
    assert make_folds(1000, spec, warmup=500)[0].train == Window(0, 700)
    with pytest.raises(SpecError) as caught:
        make_folds(1000, spec, warmup=501)  # 700 - 501 = 199 usable rows
    message = str(caught.value)
    assert "501 warm-up rows" in message and "leaves 199" in message and "at least 200" in message


def test_invalid_arguments_are_programming_errors() -> None:
    spec = ValidationSpec()
    with pytest.raises(ValueError, match="n_rows"):
        make_folds(-1, spec)
    with pytest.raises(ValueError, match="warmup"):
        make_folds(1000, spec, warmup=-1)
    with pytest.raises(ValueError, match="start <= end"):
        Window(5, 4)
    with pytest.raises(ValueError, match="starts before"):
        Fold(train=Window(0, 100), test=Window(99, 200))


# --------------------------------------------------------------------------- invariants


def _specs() -> list[ValidationSpec]:
    specs = [ValidationSpec(method="holdout", test_fraction=f) for f in (0.05, 0.1, 0.3, 0.5, 0.9)]
    modes: tuple[Mode, ...] = ("anchored", "rolling")
    for folds, mode, fraction in itertools.product((1, 2, 3, 4, 7, 20), modes, (0.1, 0.2, 0.3, 0.5, 0.9)):
        specs.append(ValidationSpec(method="walkForward", test_fraction=fraction, folds=folds, mode=mode))
    return specs


SIZES = (0, 1, 249, 285, 300, 999, 1000, 1001, 1237, 4999, 10_007, 31_066, 100_003)
WARMUPS = (0, 37, 200)


def _check(folds: list[Fold], n_rows: int, spec: ValidationSpec, warmup: int) -> None:
    assert len(folds) == spec.folds
    total_test = math.floor(spec.test_fraction * n_rows + 0.5)
    first_test = n_rows - total_test
    # Tests: consecutive, in time order, no gaps or overlaps, covering exactly the last total_test rows.
    assert folds[0].test.start == first_test and folds[-1].test.end == n_rows
    for before, after in itertools.pairwise(folds):
        assert before.test.end == after.test.start
    sizes = [f.test.length for f in folds]
    assert sum(sizes) == total_test and max(sizes) - min(sizes) <= 1 and min(sizes) >= MIN_TEST_ROWS
    for fold in folds:
        train, test = fold.train, fold.test
        assert 0 <= train.start < train.end <= test.start < test.end <= n_rows
        # No test row of this fold is trained on: the ranges are disjoint.
        assert max(train.start, test.start) >= min(train.end, test.end)
        assert train.length - warmup >= MIN_TRAIN_ROWS
        if spec.mode == "anchored":
            assert train.start == 0 and train.end == test.start
        else:
            assert train.length == first_test and train.end == test.start
        # The extended test slice always gets the full warm-up and stays in bounds.
        extended = test.with_warmup(warmup)
        assert extended.end == test.end and extended.start == test.start - warmup >= 0
    if spec.mode == "anchored":
        assert [f.train.length for f in folds] == sorted({f.train.length for f in folds})
    else:
        starts = [f.train.start for f in folds]
        assert starts == sorted(set(starts)) and starts[0] == 0


def test_every_combination_is_ordered_disjoint_in_bounds_and_sized() -> None:
    built = rejected = 0
    for n_rows, spec, warmup in itertools.product(SIZES, _specs(), WARMUPS):
        total_test = math.floor(spec.test_fraction * n_rows + 0.5)
        feasible = total_test // spec.folds >= MIN_TEST_ROWS and n_rows - total_test - warmup >= MIN_TRAIN_ROWS
        if not feasible:
            with pytest.raises(SpecError, match="at least"):
                make_folds(n_rows, spec, warmup=warmup)
            rejected += 1
            continue
        _check(make_folds(n_rows, spec, warmup=warmup), n_rows, spec, warmup)
        built += 1
    # Both branches must really have been exercised.
    assert built > 300 and rejected > 300


def test_one_fold_walk_forward_is_a_holdout() -> None:
    modes: tuple[Mode, ...] = ("anchored", "rolling")
    for mode in modes:
        wf = ValidationSpec(method="walkForward", test_fraction=0.3, folds=1, mode=mode)
        assert make_folds(5000, wf) == make_folds(5000, ValidationSpec(test_fraction=0.3))


def test_with_warmup_stops_at_row_zero() -> None:
    assert Window(100, 200).with_warmup(30) == Window(70, 200)
    assert Window(100, 200).with_warmup(500) == Window(0, 200)
    assert Window(100, 200).with_warmup(0) == Window(100, 200)
    assert Window(3, 9).as_slice() == slice(3, 9)
    with pytest.raises(ValueError):
        Window(0, 10).with_warmup(-1)
