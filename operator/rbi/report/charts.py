"""The report's charts: one pure function per chart, each returning PNG bytes.

Only the object-oriented matplotlib API is used (a `Figure` with its own Agg canvas), never pyplot: no
global state, no display, safe to call from several threads at once. Every function raises `ValueError`
when it has nothing to draw; the page checks first and says what is missing instead.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter

from rbi.report.models import Curve, TrialPoint

__all__ = [
    "curve_has_times",
    "drawdown_chart",
    "equity_chart",
    "finite",
    "grid_cells",
    "heatmap_chart",
    "trials_chart",
]

_DPI = 110
_WIDE = (10.0, 4.2)
# Parent first, best child second: muted blue against a strong orange.
_SERIES_COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52")
_MAX_ANNOTATED_CELLS = 225


# --------------------------------------------------------------------------- helpers


def finite(value: Any) -> float | None:
    """`value` as a finite float, else None (bools are not numbers here)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _png(figure: Figure) -> bytes:
    FigureCanvasAgg(figure)  # attaches itself to the figure
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI)
    return buffer.getvalue()


def _new_figure(size: tuple[float, float] = _WIDE) -> tuple[Figure, Axes]:
    figure = Figure(figsize=size, layout="constrained")
    return figure, figure.add_subplot()


def _times(curve: Curve) -> np.ndarray | None:
    """The curve's first column as naive UTC datetime64, or None when it is not all timestamps."""
    raw = [row[0] if len(row) else None for row in curve]
    if not raw or not all(isinstance(v, str) for v in raw):
        return None
    try:
        parsed = pd.to_datetime(pd.Series(raw, dtype=object), utc=True, format="ISO8601")
    except (ValueError, TypeError, OverflowError):
        return None
    times: np.ndarray = parsed.dt.tz_convert(None).to_numpy()
    return times


def curve_has_times(curve: Curve) -> bool:
    return _times(curve) is not None


def _column(curve: Curve, index: int) -> np.ndarray:
    values = [finite(row[index]) if len(row) > index else None for row in curve]
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def _x_axes(curves: Sequence[Curve]) -> tuple[list[np.ndarray], str]:
    """One x array per curve and the kind they share: 'time', 'bar' or 'point'."""
    times = [_times(curve) for curve in curves]
    if all(t is not None for t in times):
        return [t for t in times if t is not None], "time"
    bars = [[finite(row[0]) if len(row) else None for row in curve] for curve in curves]
    if all(all(b is not None for b in curve) for curve in bars):
        return [np.array(curve, dtype=float) for curve in bars], "bar"
    return [np.arange(len(curve), dtype=float) for curve in curves], "point"


def _oos_x(oos_start: str | None, kind: str) -> Any:
    if oos_start is None:
        return None
    if kind == "time":
        try:
            stamp = pd.Timestamp(oos_start)
        except (ValueError, TypeError):
            return None
        if stamp.tzinfo is not None:
            stamp = stamp.tz_convert("UTC").tz_localize(None)
        return stamp.to_datetime64()
    if kind == "bar":
        return finite(oos_start)
    return None


def _mark_oos(ax: Axes, xs: Sequence[np.ndarray], oos_x: Any, *, label: bool) -> None:
    """Shade the out-of-sample period and draw its boundary, if it falls inside the data."""
    if oos_x is None:
        return
    lows = [x[0] for x in xs if len(x)]
    highs = [x[-1] for x in xs if len(x)]
    if not lows or not (min(lows) < oos_x <= max(highs)):
        return
    ax.axvspan(oos_x, max(highs), color="0.5", alpha=0.10, lw=0, label="out-of-sample" if label else None)
    ax.axvline(oos_x, color="0.35", ls="--", lw=1.0)
    # Above the axes, where no data is; the chart titles sit at the left edge, clear of it.
    ax.annotate("in-sample | out-of-sample", xy=(oos_x, 1.0), xycoords=("data", "axes fraction"),
                xytext=(0, 3), textcoords="offset points", ha="center", va="bottom", fontsize=8, color="0.3")


def _format_x(ax: Axes, kind: str) -> None:
    if kind == "time":
        locator = AutoDateLocator()  # type: ignore[no-untyped-call]
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]
    else:
        ax.set_xlabel("bar" if kind == "bar" else "curve point")


def _usable(series: Sequence[tuple[str, Curve]]) -> list[tuple[str, Curve]]:
    return [(label, curve) for label, curve in series if curve and len(curve) >= 2]


# --------------------------------------------------------------------------- equity and drawdown


def equity_chart(series: Sequence[tuple[str, Curve]], *, oos_start: str | None = None) -> bytes:
    """Equity of each (label, curve) on shared axes, the out-of-sample period shaded."""
    usable = _usable(series)
    if not usable:
        raise ValueError("no equity curve with at least two points")
    xs, kind = _x_axes([curve for _, curve in usable])
    figure, ax = _new_figure()
    for i, ((label, curve), x) in enumerate(zip(usable, xs, strict=True)):
        ax.plot(x, _column(curve, 1), lw=1.4, color=_SERIES_COLOURS[i % len(_SERIES_COLOURS)], label=label)
    _mark_oos(ax, xs, _oos_x(oos_start, kind), label=True)
    ax.set_title("Equity", loc="left")
    ax.set_ylabel("equity")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:,.0f}"))
    ax.grid(True, alpha=0.3)
    _format_x(ax, kind)
    ax.legend(loc="upper left", fontsize=9, framealpha=0.9)
    return _png(figure)


def drawdown_chart(series: Sequence[tuple[str, Curve]], *, oos_start: str | None = None) -> bytes:
    """Underwater chart: the drawdown (%, zero or negative) of each (label, curve)."""
    usable = _usable(series)
    if not usable:
        raise ValueError("no equity curve with at least two points")
    xs, kind = _x_axes([curve for _, curve in usable])
    figure, ax = _new_figure((10.0, 3.4))
    for i, ((label, curve), x) in enumerate(zip(usable, xs, strict=True)):
        drawdown = -np.abs(_column(curve, 2))  # zero or negative whatever sign the caller used
        colour = _SERIES_COLOURS[i % len(_SERIES_COLOURS)]
        deepest = np.nanmin(drawdown) if np.isfinite(drawdown).any() else float("nan")
        ax.fill_between(x, drawdown, 0.0, color=colour, alpha=0.2, lw=0)
        ax.plot(x, drawdown, color=colour, lw=1.0, label=f"{label}: max {deepest:.1f}%")
    _mark_oos(ax, xs, _oos_x(oos_start, kind), label=False)
    ax.set_title("Drawdown (underwater)", loc="left")
    ax.set_ylabel("drawdown [%]")
    ax.grid(True, alpha=0.3)
    _format_x(ax, kind)
    ax.legend(loc="lower left", fontsize=9, framealpha=0.9)
    return _png(figure)


# --------------------------------------------------------------------------- trials


def trials_chart(trials: Sequence[TrialPoint], *, objective: str, maximize: bool) -> bytes:
    """The objective of every trial in run order, coloured by iteration, with the running best.

    Trials without a finite objective are drawn as small grey x marks along the bottom edge.
    """
    ordered = sorted(trials, key=lambda t: (t.iteration, t.trial_number))
    values = [finite(t.objective) for t in ordered]
    scored = [(i + 1, v, t.iteration) for i, (t, v) in enumerate(zip(ordered, values, strict=True)) if v is not None]
    if not scored:
        raise ValueError("no trial has a finite objective")
    failed = [i + 1 for i, v in enumerate(values) if v is None]
    figure, ax = _new_figure()
    x = np.array([s[0] for s in scored], dtype=float)
    y = np.array([s[1] for s in scored], dtype=float)
    iterations = sorted({t.iteration for t in ordered})
    if len(iterations) <= 10:
        palette = colormaps["tab10"]
        for k, iteration in enumerate(iterations):
            mask = np.array([s[2] == iteration for s in scored])
            if mask.any():
                ax.scatter(x[mask], y[mask], s=22, color=palette(k), alpha=0.85, label=f"iteration {iteration}",
                           zorder=3)
    else:
        colours = np.array([s[2] for s in scored], dtype=float)
        points = ax.scatter(x, y, s=22, c=colours, cmap="viridis", alpha=0.85, zorder=3)
        figure.colorbar(points, ax=ax, label="iteration")
    running = np.maximum.accumulate(y) if maximize else np.minimum.accumulate(y)
    ax.plot(x, running, drawstyle="steps-post", color="black", lw=1.5, label="running best", zorder=4)
    if failed:
        # Room below the lowest score for the row of x marks.
        low, high = ax.get_ylim()
        ax.set_ylim(low - 0.08 * (high - low), high)
        ax.scatter(failed, [0.02] * len(failed), transform=ax.get_xaxis_transform(), marker="x", s=14,
                   color="0.45", lw=1.0, label=f"failed / unscored ({len(failed)})", zorder=2, clip_on=False)
    ax.set_xlim(0.5, len(ordered) + 0.5)
    if len(ordered) <= 20:
        ax.set_xticks(range(1, len(ordered) + 1))
    ax.set_title(f"{objective} over trials ({'higher' if maximize else 'lower'} is better)")
    ax.set_xlabel("trial (run order)")
    ax.set_ylabel(objective)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, borderaxespad=0.0)
    return _png(figure)


# --------------------------------------------------------------------------- heatmap


def _sort_key(value: Any) -> tuple[int, float, str]:
    number = finite(value)
    return (0, number, "") if number is not None else (1, 0.0, str(value))


def _label(value: Any) -> str:
    number = finite(value)
    if number is not None and number.is_integer() and not isinstance(value, float):
        return str(int(number))
    return f"{number:g}" if number is not None else str(value)


def grid_cells(
    trials: Sequence[TrialPoint], x_param: str, y_param: str, *, maximize: bool
) -> dict[tuple[Any, Any], float]:
    """Best finite objective per (x value, y value) over the trials that carry both parameters."""
    cells: dict[tuple[Any, Any], float] = {}
    for trial in trials:
        value = finite(trial.objective)
        params: Mapping[str, Any] = trial.params
        if value is None or x_param not in params or y_param not in params:
            continue
        key = (_hashable(params[x_param]), _hashable(params[y_param]))
        old = cells.get(key)
        if old is None or (value > old if maximize else value < old):
            cells[key] = value
    return cells


def _hashable(value: Any) -> Any:
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value


def heatmap_chart(
    trials: Sequence[TrialPoint], x_param: str, y_param: str, *, objective: str, maximize: bool
) -> bytes:
    """The objective pivoted over two parameters; cells without a scored trial stay blank, best cell outlined."""
    cells = grid_cells(trials, x_param, y_param, maximize=maximize)
    if not cells:
        raise ValueError(f"no scored trial carries both {x_param!r} and {y_param!r}")
    xs = sorted({k[0] for k in cells}, key=_sort_key)
    ys = sorted({k[1] for k in cells}, key=_sort_key)
    matrix = np.full((len(ys), len(xs)), np.nan)
    for (xv, yv), value in cells.items():
        matrix[ys.index(yv), xs.index(xv)] = value
    best_key = (max if maximize else min)(cells, key=lambda k: cells[k])

    width = min(11.0, max(5.5, 1.0 + 0.75 * len(xs)))
    height = min(9.0, max(3.8, 1.2 + 0.5 * len(ys)))
    figure, ax = _new_figure((width, height))
    cmap = colormaps["viridis" if maximize else "viridis_r"].with_extremes(bad=(1.0, 1.0, 1.0, 0.0))
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap=cmap, origin="lower", aspect="auto",
                      interpolation="nearest")
    figure.colorbar(image, ax=ax, label=f"{objective} ({'higher' if maximize else 'lower'} is better)")
    ax.set_xticks(range(len(xs)), [_label(v) for v in xs], rotation=45 if len(xs) > 12 else 0)
    ax.set_yticks(range(len(ys)), [_label(v) for v in ys])
    ax.set_xlabel(x_param)
    ax.set_ylabel(y_param)
    ax.set_facecolor("white")
    bx, by = xs.index(best_key[0]), ys.index(best_key[1])
    low, high = float(np.nanmin(matrix)), float(np.nanmax(matrix))
    if matrix.size <= _MAX_ANNOTATED_CELLS:
        for row in range(len(ys)):
            for col in range(len(xs)):
                value = matrix[row, col]
                if not np.isfinite(value):
                    continue
                shade = (value - low) / (high - low) if high > low else 0.5
                # viridis runs dark to bright; the reversed map bright to dark.
                dark_cell = shade < 0.55 if maximize else shade > 0.45
                best = (row, col) == (by, bx)
                ax.text(col, row, f"{value:.3g}", ha="center", va="center", fontsize=9 if best else 8,
                        fontweight="bold" if best else "normal", color="white" if dark_cell else "black")
    ax.add_patch(Rectangle((bx - 0.5, by - 0.5), 1, 1, fill=False, edgecolor="#d62728", lw=2.5))
    ax.set_title(f"best {objective} = {cells[best_key]:.3g} at {x_param}={_label(best_key[0])}, "
                 f"{y_param}={_label(best_key[1])}", fontsize=10)
    return _png(figure)
