"""Overfitting guards: is an optimised strategy better, or only luckier?

* The deflated Sharpe ratio (Bailey & López de Prado, 2014) asks whether the
  best of N tried parameter sets has a Sharpe ratio above what the best of N
  *worthless* ones would show by chance.
* The look-ahead check asks whether a strategy's past trades change when the
  future changes; an honest strategy's cannot.
* `improvement` turns two objective values into a sign-correct relative gain.

Everything here is pure (no I/O, no global state) and returns plain numbers or
frozen dataclasses; nothing returns NaN.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import stats as sps

# The probe itself lives in rbi.optimize.probe (numpy and pandas only): the runner builds it inside the
# sandbox, where scipy cannot be imported.
from rbi.optimize.probe import LookaheadProbe, lookahead_probe, probe_decision_row

__all__ = [
    "EULER_GAMMA",
    "DeflatedSharpe",
    "LookaheadProbe",
    "LookaheadReport",
    "ReturnDifference",
    "annualize_sharpe",
    "deflated_sharpe_ratio",
    "expected_max_sharpe",
    "improvement",
    "lookahead_probe",
    "lookahead_suspected",
    "probabilistic_sharpe_ratio",
    "probe_decision_row",
    "return_difference_test",
    "return_moments",
    "returns_from_equity",
    "sharpe_ratio_per_period",
]

EULER_GAMMA = 0.5772156649015329
_NORMAL = NormalDist()
FloatArray = npt.NDArray[np.float64]


# --------------------------------------------------------------------------- returns and moments


def _finite(values: Sequence[float] | npt.ArrayLike, what: str) -> FloatArray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional, got shape {array.shape}")
    return array[np.isfinite(array)]


def returns_from_equity(equity: Sequence[float] | npt.ArrayLike) -> FloatArray:
    """Simple per-bar returns ``equity[t] / equity[t-1] - 1``, non-finite ones dropped.

    A NaN equity point drops the two returns that touch it (there is no honest
    value for them); a step from zero equity (a blown account) gives an
    infinite return and is dropped as well.
    """
    values = np.asarray(equity, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"equity must be one-dimensional, got shape {values.shape}")
    if values.size < 2:
        return np.empty(0, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        returns = values[1:] / values[:-1] - 1.0
    return returns[np.isfinite(returns)]


def _degenerate_spread(std: float, mean: float) -> bool:
    # Float noise in a flat equity curve leaves a std of ~1e-17, not 0; treating that as
    # real variance would turn rounding error into an enormous Sharpe ratio.
    return not math.isfinite(std) or std <= 1e-14 + 1e-9 * abs(mean)


def sharpe_ratio_per_period(returns: Sequence[float] | npt.ArrayLike) -> float:
    """Mean over sample standard deviation (ddof=1) of the finite returns, not annualised.

    0.0 when it is undefined: fewer than two returns, or returns that do not vary.
    """
    r = _finite(returns, "returns")
    if r.size < 2:
        return 0.0
    mean, std = float(r.mean()), float(r.std(ddof=1))
    if _degenerate_spread(std, mean):
        return 0.0
    return mean / std


def annualize_sharpe(per_period: float, periods_per_year: float) -> float:
    """Scale a per-period Sharpe ratio by ``sqrt(periods_per_year)`` (i.i.d. returns)."""
    if not periods_per_year > 0:
        raise ValueError(f"periods_per_year must be positive, got {periods_per_year!r}")
    return per_period * math.sqrt(periods_per_year)


def return_moments(returns: Sequence[float] | npt.ArrayLike) -> tuple[float, float]:
    """(skewness, non-excess kurtosis) of the finite returns; (0.0, 3.0), the normal's, when undefined.

    Population (biased) moments, as in Bailey & López de Prado's own code.
    """
    r = _finite(returns, "returns")
    if r.size < 3 or _degenerate_spread(float(r.std()), float(r.mean())):
        return 0.0, 3.0
    skew = float(sps.skew(r, bias=True))
    kurt = float(sps.kurtosis(r, fisher=False, bias=True))
    if not (math.isfinite(skew) and math.isfinite(kurt)):
        return 0.0, 3.0
    return skew, kurt


# --------------------------------------------------------------------------- PSR / DSR


def probabilistic_sharpe_ratio(observed_sr: float, benchmark_sr: float, n_obs: int,
                               skew: float, kurtosis: float) -> float:
    """P(true Sharpe > benchmark) given an observed per-period Sharpe (Bailey & López de Prado, 2012).

        PSR = Φ( (SR − SR*) · sqrt(n − 1) / sqrt(1 − γ₃·SR + (γ₄ − 1)/4 · SR²) )

    `kurtosis` is the non-excess kurtosis γ₄ (3 for normal returns); `observed_sr`
    and `benchmark_sr` are in the same per-period units as the `n_obs` returns.
    """
    for name, value in (("observed_sr", observed_sr), ("benchmark_sr", benchmark_sr), ("skew", skew),
                        ("kurtosis", kurtosis)):
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value!r}")
    if isinstance(n_obs, bool) or not isinstance(n_obs, int | np.integer) or n_obs < 2:
        raise ValueError(f"n_obs must be an integer >= 2, got {n_obs!r}")
    difference = (observed_sr - benchmark_sr) * math.sqrt(int(n_obs) - 1)
    variance = 1.0 - skew * observed_sr + (kurtosis - 1.0) / 4.0 * observed_sr**2
    if variance <= 0.0:
        # Only reachable with moments no real sample has (kurtosis < 1 + skew²): the
        # estimate has no spread, so the answer is certain either way.
        return 1.0 if difference > 0 else 0.0 if difference < 0 else 0.5
    return min(1.0, max(0.0, _NORMAL.cdf(difference / math.sqrt(variance))))


def expected_max_sharpe(trial_sharpes_variance: float, n_trials: int) -> float:
    """Expected maximum of `n_trials` independent Sharpe ratios whose true value is 0.

        E[max] ≈ sqrt(V) · ((1 − γ) Φ⁻¹(1 − 1/N) + γ Φ⁻¹(1 − 1/(N·e)))

    with γ the Euler–Mascheroni constant and V the variance of the trials'
    Sharpe ratios (Bailey & López de Prado, 2014). 0.0 for fewer than two
    trials (the best of one is that one, expected 0) or zero variance.
    """
    if not math.isfinite(trial_sharpes_variance) or trial_sharpes_variance < 0:
        raise ValueError(f"trial_sharpes_variance must be finite and >= 0, got {trial_sharpes_variance!r}")
    if isinstance(n_trials, bool) or not isinstance(n_trials, int | np.integer) or n_trials < 0:
        raise ValueError(f"n_trials must be a non-negative integer, got {n_trials!r}")
    if n_trials < 2 or trial_sharpes_variance == 0:
        return 0.0
    n = float(n_trials)
    z = (1 - EULER_GAMMA) * _NORMAL.inv_cdf(1 - 1 / n) + EULER_GAMMA * _NORMAL.inv_cdf(1 - 1 / (n * math.e))
    return math.sqrt(trial_sharpes_variance) * z


@dataclass(frozen=True, slots=True)
class DeflatedSharpe:
    """The deflated Sharpe ratio of one candidate; all Sharpe figures per period."""

    dsr: float  # probability in [0, 1] that the true Sharpe beats the best-of-N-by-luck benchmark
    sharpe: float
    benchmark_sharpe: float
    n_trials: int
    n_obs: int
    skew: float
    kurtosis: float  # non-excess

    def passed(self, threshold: float = 0.95) -> bool:
        return self.dsr >= threshold


def deflated_sharpe_ratio(returns: Sequence[float] | npt.ArrayLike, trial_sharpes: Sequence[float]) -> DeflatedSharpe:
    """PSR of the candidate's per-bar `returns` against the best Sharpe that luck alone gives N trials.

    `trial_sharpes` are the Sharpe ratios of every parameter set tried (the
    candidate's own included), in the same per-period units as
    `sharpe_ratio_per_period(returns)`. N is their count, including non-finite
    entries (a failed trial was still a try); their variance (ddof=1) uses the
    finite ones only.

    Degenerate inputs give a definite answer instead of NaN: fewer than 3
    returns, or returns that do not vary, give ``dsr == 0.0``; fewer than two
    usable trials give a benchmark of 0, i.e. the plain PSR against zero.
    """
    r = _finite(returns, "returns")
    trials = np.asarray(list(trial_sharpes), dtype=np.float64).ravel()
    finite_trials = trials[np.isfinite(trials)]
    variance = float(finite_trials.var(ddof=1)) if finite_trials.size >= 2 else 0.0
    benchmark = expected_max_sharpe(variance, int(trials.size))
    sharpe = sharpe_ratio_per_period(r)
    skew, kurt = return_moments(r)
    flat = r.size < 2 or _degenerate_spread(float(r.std(ddof=1)), float(r.mean()))
    dsr = 0.0 if r.size < 3 or flat else probabilistic_sharpe_ratio(sharpe, benchmark, int(r.size), skew, kurt)
    return DeflatedSharpe(dsr=dsr, sharpe=sharpe, benchmark_sharpe=benchmark, n_trials=int(trials.size),
                          n_obs=int(r.size), skew=skew, kurtosis=kurt)


# --------------------------------------------------------------------------- look-ahead

_TRADE_KEYS = ("entry_time", "exit_time", "size", "entry_price")


@dataclass(frozen=True, slots=True)
class LookaheadReport:
    suspected: bool
    compared: int  # distinct trades examined: matched pairs plus trades found in one run only
    mismatches: int
    first_mismatch: dict[str, Any] | None  # {"problem", "full", "truncated"}
    reason: str


def _time_key(value: Any) -> tuple[int, float]:
    """An orderable form of a trade time: bar numbers stay numbers, anything else becomes a UTC instant."""
    if isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool):
        return (0, float(value))
    try:
        stamp = pd.Timestamp(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"cannot read {value!r} as a trade time: {exc}") from None
    if stamp is pd.NaT:
        raise ValueError(f"trade time {value!r} is not a time")
    if stamp.tzinfo is not None:
        stamp = stamp.tz_convert("UTC").tz_localize(None)
    return (1, float(stamp.value))


def _before(value: Any, cut: tuple[int, float]) -> bool:
    if value is None:
        return False  # still open: it did not complete before the cut
    key = _time_key(value)
    if key[0] != cut[0]:
        raise ValueError("cut_time and the trade times must both be bar numbers or both be timestamps, "
                         f"got {value!r}")
    return key[1] < cut[1]


def _completed_before(trades: Sequence[Mapping[str, Any]], cut: tuple[int, float],
                      which: str) -> list[Mapping[str, Any]]:
    kept = []
    for number, trade in enumerate(trades):
        missing = [k for k in _TRADE_KEYS if k not in trade]
        if missing:
            raise ValueError(f"{which} trade #{number} lacks {missing}; each trade needs {list(_TRADE_KEYS)}")
        if _before(trade["entry_time"], cut) and _before(trade["exit_time"], cut):
            kept.append(trade)
    return kept


def _same_number(a: Any, b: Any) -> bool:
    try:
        x, y = float(a), float(b)
    except (TypeError, ValueError):
        return bool(a == b)
    return x == y or math.isclose(x, y, rel_tol=1e-9, abs_tol=0.0)


def lookahead_suspected(full_trades: Sequence[Mapping[str, Any]], truncated_trades: Sequence[Mapping[str, Any]],
                        cut_time: Any) -> LookaheadReport:
    """Prefix consistency: trades completed before `cut_time` must not depend on what comes after it.

    The caller runs the same strategy, same parameters, on the full data and
    on data that agrees with it only up to some point (the first rows kept,
    the rest removed, or `lookahead_probe`'s altered copy). Every trade that
    entered *and* exited strictly before `cut_time` must then appear in both
    runs with the same entry time, exit time, size and entry price (prices to
    1e-9 relative). Trades are matched on ``(entry_time, exit_time)`` exactly
    as given (ISO strings or bar numbers, the same form in both lists); only
    the before-the-cut test parses times.

    Why this catches leaks: an honest decision at bar t uses bars <= t, so
    every fill up to the cut is a function of bars before the cut, and those
    are identical in both runs. ``df.Close.shift(-k)``, a centred rolling
    window, a signal normalised by the whole series' mean or max, or
    ``bfill()`` from the future all make an early decision depend on rows that
    differ between the runs, and a trade before the cut changes.

    What it cannot catch:

    * A leak that never changes a *completed* trade before the cut. Most
      importantly, a strategy that reads exactly one bar ahead
      (``shift(-1)``) while its orders fill at the next bar's open (the
      backtesting.py default): the decision taken on the last kept bar is
      the only one that sees a missing future, and it would fill on a bar that
      the truncated run does not have. Plain truncation is blind to that
      leak, always; `lookahead_probe` alters the bar after the decision
      instead of removing it and catches it.
    * Leaks too small to change any decision, leaks through data other than
      the OHLCV frame, and non-determinism, which looks like a leak (a
      strategy that draws unseeded random numbers is reported as suspected;
      its results are not reproducible either).

    Pick `cut_time` so that honest runs agree on every trade before it: for
    truncated data, the time of the *last kept* row (a trade closed on that bar
    may be an artefact of ``finalize_trades``); with ``trade_on_close=True``
    and ``finalize_trades=True``, one bar earlier still, because the final
    close is then booked on the bar before the last. `lookahead_probe` returns
    the right cut for its data.
    """
    cut = _time_key(cut_time)
    full = _completed_before(full_trades, cut, "full-run")
    truncated = _completed_before(truncated_trades, cut, "truncated-run")
    # Multisets keyed on the times as given: hedging may open two trades on one bar.
    groups: dict[tuple[Any, Any], tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]] = {}
    for side, trades in ((0, full), (1, truncated)):
        for trade in trades:
            groups.setdefault((trade["entry_time"], trade["exit_time"]), ([], []))[side].append(trade)
    compared = mismatches = 0
    problems: list[tuple[tuple[int, float], dict[str, Any]]] = []
    for (entry, _exit), (in_full, in_truncated) in groups.items():
        unmatched = list(in_truncated)
        for trade in in_full:
            compared += 1
            twin = next((t for t in unmatched if _same_number(t["size"], trade["size"])
                         and _same_number(t["entry_price"], trade["entry_price"])), None)
            if twin is not None:
                unmatched.remove(twin)
                continue
            mismatches += 1
            other = unmatched[0] if unmatched else None
            problem = ("missing from the truncated run" if other is None else
                       "different size or entry price in the truncated run")
            if other is not None:
                unmatched.remove(other)
            problems.append((_time_key(entry), {"problem": problem, "full": dict(trade),
                                                "truncated": None if other is None else dict(other)}))
        for trade in unmatched:
            compared += 1
            mismatches += 1
            problems.append((_time_key(entry), {"problem": "missing from the full run", "full": None,
                                                "truncated": dict(trade)}))
    if mismatches:
        first = min(problems, key=lambda item: item[0])[1]
        shown = first["full"] or first["truncated"] or {}
        reason = (f"{mismatches} of {compared} trade(s) completed before {cut_time} differ between the full and "
                  f"the truncated run (first: trade entered {shown.get('entry_time')}, exited "
                  f"{shown.get('exit_time')}: {first['problem']}); past decisions depend on later bars, "
                  "so look-ahead is suspected")
        return LookaheadReport(suspected=True, compared=compared, mismatches=mismatches, first_mismatch=first,
                               reason=reason)
    if compared == 0:
        reason = f"no trade completed before {cut_time} in either run; nothing to compare"
    else:
        reason = (f"all {compared} trade(s) completed before {cut_time} are identical in both runs; no look-ahead "
                  "detected at this cut (which does not prove there is none)")
    return LookaheadReport(suspected=False, compared=compared, mismatches=0, first_mismatch=None, reason=reason)


# --------------------------------------------------------------------------- improvement


def improvement(parent: float | None, child: float | None, *, maximize: bool) -> float | None:
    """Relative gain of `child` over `parent`; positive means better in the objective's direction.

    ``(child - parent) / |parent|`` when maximising, ``(parent - child) / |parent|``
    when minimising. With no parent, or a parent of 0, a ratio means nothing,
    so the plain difference from 0 is returned. None when `child` is None or
    either value is not finite (NaN or an infinite profit factor has no
    meaningful gain).
    """
    if child is None or not math.isfinite(child):
        return None
    if parent is None:
        parent = 0.0
    if not math.isfinite(parent):
        return None
    delta = child - parent if maximize else parent - child
    return delta if parent == 0 else delta / abs(parent)


# --------------------------------------------------------------------------- the promotion test

PROMOTION_TEST = ("stationary bootstrap (Politis & Romano 1994) of the mean out-of-sample return difference "
                  "(child − parent), paired on the same checkpoints, one-sided, Šidák-corrected for the distinct "
                  "trials tried")


@dataclass(frozen=True, slots=True)
class ReturnDifference:
    """Does the child earn more than its parent out of sample, by more than chance and the trials explain?"""

    observed: float  # mean per-period return of the child minus the parent's, on the same out-of-sample periods
    p_value: float  # one-sided, H0: the difference is <= 0
    alpha: float  # the level asked for
    alpha_adjusted: float  # 1 − (1 − alpha)^(1/N): what the p-value must reach after N trials
    n_trials: int
    n_obs: int
    resamples: int
    block: int  # mean block length of the stationary bootstrap
    method: str = PROMOTION_TEST

    @property
    def passed(self) -> bool:
        return self.observed > 0 and self.p_value <= self.alpha_adjusted

    def to_json(self) -> dict[str, Any]:
        return {"observed": self.observed, "p_value": self.p_value, "alpha": self.alpha,
                "alpha_adjusted": self.alpha_adjusted, "n_trials": self.n_trials, "n_obs": self.n_obs,
                "resamples": self.resamples, "block": self.block, "method": self.method, "passed": self.passed}


def return_difference_test(child: Sequence[float] | npt.ArrayLike, parent: Sequence[float] | npt.ArrayLike, *,
                           n_trials: int, alpha: float = 0.05, seed: int = 0, resamples: int = 2000,
                           block: int | None = None) -> ReturnDifference:
    """Stationary-bootstrap p-value of mean(child − parent) on paired per-period returns.

    Both series are the returns of the same out-of-sample periods, so their difference is
    resampled in blocks, which keeps the returns' autocorrelation. The mean difference, not a
    Sharpe-ratio difference: a parent that loses a little on every bar (a fee churner) has a
    huge, unstable Sharpe ratio, and a child that simply stops losing must still be able to win.
    The p-value is that of the centred bootstrap distribution; the level is Šidák-corrected for
    `n_trials`, the distinct parameter sets (and code proposals) tried: a candidate picked from
    many must clear a higher bar. Seeded, so every driver gets the same answer.
    """
    a = np.asarray(child, dtype=np.float64)
    b = np.asarray(parent, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"child and parent returns must be paired one-dimensional series, got {a.shape} and {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    n = int(a.size)
    trials = max(1, int(n_trials))
    adjusted = 1.0 - (1.0 - alpha) ** (1.0 / trials)
    length = block or max(1, round(n ** (1 / 3)))
    if n < 3:
        return ReturnDifference(0.0, 1.0, alpha, adjusted, trials, n, 0, length)
    difference = a - b
    observed = float(difference.mean())
    rng = np.random.default_rng(seed)
    exceed = 0
    positions = np.arange(n)
    done = 0
    chunk = max(1, min(resamples, 2_000_000 // n))
    while done < resamples:
        rows = min(chunk, resamples - done)
        new_block = rng.random((rows, n)) < 1.0 / length
        new_block[:, 0] = True
        starts = rng.integers(0, n, size=(rows, n))
        block_start = np.maximum.accumulate(np.where(new_block, positions, 0), axis=1)
        index = (np.take_along_axis(starts, block_start, axis=1) + positions - block_start) % n
        diff = difference[index].mean(axis=1)
        # Centred: how often a resample moves as far above the observed difference as that is above 0.
        exceed += int(np.count_nonzero(diff - observed >= observed))
        done += rows
    p_value = (1 + exceed) / (resamples + 1)
    return ReturnDifference(float(observed), float(p_value), alpha, adjusted, trials, n, resamples, length)
