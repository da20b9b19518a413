"""`spec.optimization` → OptimizationSettings: objectives, search space, constraints, budget.

Pure parsing with precise SpecErrors, so a malformed block fails before any trial runs.
"""

from __future__ import annotations

import itertools
import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rbi.errors import SpecError

METHODS = ("grid", "random", "tpe", "cmaes", "nsga2")
# The default batch of samplers that ignore results: the engine's largest batch for one child, times two workers.
UNGUIDED_BATCH = 128
_KNOWN_KEYS = {"objective", "objectives", "method", "space", "constraints", "maxTrials", "maxIterations",
               "minImprovement", "validation", "seed", "target", "guards", "warmupBars", "batchSize"}
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq, "!=": operator.ne,
}
_CONSTRAINT = re.compile(r"^\s*([a-z_][a-z0-9_]*)\s*(>=|<=|==|!=|>|<)\s*(-?[0-9.eE+-]+)\s*$")


@dataclass(frozen=True, slots=True)
class Objective:
    stat: str
    maximize: bool = True

    @property
    def direction(self) -> str:
        return "maximize" if self.maximize else "minimize"


@dataclass(frozen=True, slots=True)
class Parameter:
    name: str
    kind: str  # int | float | categorical
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def grid_values(self) -> list[Any]:
        if self.kind == "categorical":
            return list(self.choices)
        assert self.low is not None and self.high is not None
        if self.step is None:
            raise SpecError(f"spec.optimization.space.{self.name}: grid search needs a step for float ranges")
        count = math.floor((self.high - self.low) / self.step + 1e-9) + 1
        values = [self.low + i * self.step for i in range(count)]
        return [round(v) for v in values] if self.kind == "int" else [round(v, 12) for v in values]


@dataclass(frozen=True, slots=True)
class Constraint:
    stat: str
    op: str
    value: float

    def holds(self, stats: Mapping[str, Any]) -> bool:
        actual = stats.get(self.stat)
        if not isinstance(actual, int | float) or isinstance(actual, bool) or math.isnan(actual):
            return False
        return _OPS[self.op](float(actual), self.value)

    def __str__(self) -> str:
        return f"{self.stat} {self.op} {self.value:g}"


@dataclass(frozen=True, slots=True)
class Guards:
    min_deflated_sharpe: float = 0.95  # the deployable gate
    lookahead_check: bool = True  # part of the promotion gate
    promotion_alpha: float = 0.05  # the promotion gate's significance level, before the correction for trials


@dataclass(frozen=True, slots=True)
class OptimizationSettings:
    objectives: tuple[Objective, ...]
    space: tuple[Parameter, ...]
    method: str = "tpe"
    constraints: tuple[Constraint, ...] = ()
    max_trials: int = 50
    max_iterations: int = 10
    min_improvement: float = 0.05
    validation: Mapping[str, Any] | None = None
    seed: int | None = None
    target: float | None = None
    guards: Guards = field(default_factory=Guards)
    warmup_bars: int = 200
    # Trials asked of the study at once. Part of the search's definition: the same seed and batch size ask
    # the same trials, whether a batch runs on the laptop's warm workers or as one Indexed Job.
    batch_size: int = 8

    @property
    def primary(self) -> Objective:
        return self.objectives[0]

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    def grid_size(self) -> int:
        return math.prod(len(p.grid_values()) for p in self.space)

    def grid(self) -> list[dict[str, Any]]:
        names = [p.name for p in self.space]
        axes = itertools.product(*(p.grid_values() for p in self.space))
        return [dict(zip(names, combo, strict=True)) for combo in axes]


def _objective(raw: Any, where: str) -> Objective:
    if isinstance(raw, str):
        if raw.startswith("-"):
            return Objective(raw[1:], maximize=False)
        return Objective(raw)
    if isinstance(raw, Mapping) and isinstance(raw.get("name"), str):
        direction = raw.get("direction", "maximize")
        if direction not in ("maximize", "minimize"):
            raise SpecError(f"{where}.direction must be maximize or minimize, got {direction!r}")
        return Objective(raw["name"], maximize=direction == "maximize")
    raise SpecError(f"{where} must be a statistic name (e.g. sharpe_ratio) or {{name, direction}}, got {raw!r}")


def _number(raw: Any, where: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise SpecError(f"{where} must be a number, got {raw!r}")
    return float(raw)


def _parameter(name: str, raw: Any) -> Parameter:
    where = f"spec.optimization.space.{name}"
    if isinstance(raw, list):
        raw = {"type": "categorical", "choices": raw}
    if not isinstance(raw, Mapping):
        raise SpecError(f"{where} must be {{type, low, high, step}} or a list of choices")
    kind = raw.get("type", "int" if all(isinstance(raw.get(k), int) for k in ("low", "high")) else "float")
    if kind == "categorical":
        choices = raw.get("choices")
        if not isinstance(choices, list) or not choices:
            raise SpecError(f"{where}.choices must be a non-empty list")
        return Parameter(name, "categorical", choices=tuple(choices))
    if kind not in ("int", "float"):
        raise SpecError(f"{where}.type must be int, float or categorical, got {kind!r}")
    low, high = _number(raw.get("low"), f"{where}.low"), _number(raw.get("high"), f"{where}.high")
    if low > high:
        raise SpecError(f"{where}: low ({low:g}) is above high ({high:g})")
    step = raw.get("step")
    step_value = _number(step, f"{where}.step") if step is not None else (1.0 if kind == "int" else None)
    if step_value is not None and step_value <= 0:
        raise SpecError(f"{where}.step must be positive")
    log = bool(raw.get("log", False))
    if log and low <= 0:
        raise SpecError(f"{where}: a log scale needs low > 0")
    return Parameter(name, kind, low=low, high=high, step=step_value, log=log)


def _constraint(raw: Any, index: int) -> Constraint:
    where = f"spec.optimization.constraints[{index}]"
    if isinstance(raw, str):
        match = _CONSTRAINT.match(raw)
        if not match:
            raise SpecError(f"{where}: expected 'stat OP number' (e.g. 'num_trades >= 10'), got {raw!r}")
        stat, op, value = match.groups()
        return Constraint(stat, op, float(value))
    if isinstance(raw, Mapping):
        stat = raw.get("stat")
        if not isinstance(stat, str):
            raise SpecError(f"{where}.stat must be a statistic name")
        if "min" in raw:
            return Constraint(stat, ">=", _number(raw["min"], f"{where}.min"))
        if "max" in raw:
            return Constraint(stat, "<=", _number(raw["max"], f"{where}.max"))
    raise SpecError(f"{where}: expected 'stat OP number' or {{stat, min}} / {{stat, max}}")


def _alpha(raw: Any) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not 0 < raw < 1:
        raise SpecError(f"spec.optimization.guards.promotionAlpha must be a level in (0, 1), got {raw!r}")
    return float(raw)


def _positive_int(raw: Any, where: str, default: int, *, upper: int) -> int:
    if raw is None:
        return default
    if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= upper:
        raise SpecError(f"{where} must be a whole number from 1 to {upper}, got {raw!r}")
    return raw


def parse_settings(raw: Mapping[str, Any] | None, *,
                   overrides: Mapping[str, Any] | None = None) -> OptimizationSettings:
    """Read spec.optimization; `overrides` are CLI flags in the same camelCase keys."""
    merged: dict[str, Any] = dict(raw or {})
    merged.update({k: v for k, v in (overrides or {}).items() if v is not None})
    unknown = set(merged) - _KNOWN_KEYS
    if unknown:
        raise SpecError(f"unknown field(s) in spec.optimization: {sorted(unknown)}; known: {sorted(_KNOWN_KEYS)}")
    objective_raw = merged.get("objectives", merged.get("objective", "sharpe_ratio"))
    raw_list = objective_raw if isinstance(objective_raw, list) else [objective_raw]
    objectives = tuple(_objective(o, f"spec.optimization.objective[{i}]") for i, o in enumerate(raw_list))
    if not objectives:
        raise SpecError("spec.optimization.objective must name at least one statistic")
    space_raw = merged.get("space")
    if not isinstance(space_raw, Mapping) or not space_raw:
        raise SpecError("spec.optimization.space must map parameter names to ranges, e.g. "
                        "{fast: {type: int, low: 5, high: 50, step: 5}}")
    space = tuple(_parameter(str(name), value) for name, value in space_raw.items())
    method = merged.get("method", "nsga2" if len(objectives) > 1 else "tpe")
    if method not in METHODS:
        raise SpecError(f"spec.optimization.method must be one of {METHODS}, got {method!r}")
    if method == "cmaes" and len(objectives) > 1:
        raise SpecError("spec.optimization.method cmaes optimises one objective; use nsga2 for several")
    if method == "cmaes" and any(p.kind == "categorical" for p in space):
        raise SpecError("spec.optimization.method cmaes needs numeric parameters; use tpe for categorical ones")
    constraints_raw = merged.get("constraints") or []
    if not isinstance(constraints_raw, list):
        raise SpecError("spec.optimization.constraints must be a list")
    min_improvement = merged.get("minImprovement", 0.05)
    if isinstance(min_improvement, bool) or not isinstance(min_improvement, int | float) or min_improvement < 0:
        raise SpecError(f"spec.optimization.minImprovement must be a non-negative fraction, got {min_improvement!r}")
    guards_raw = merged.get("guards") or {}
    if not isinstance(guards_raw, Mapping):
        raise SpecError("spec.optimization.guards must be a mapping")
    seed = merged.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise SpecError(f"spec.optimization.seed must be a whole number, got {seed!r}")
    target = merged.get("target")
    settings = OptimizationSettings(
        objectives=objectives,
        space=space,
        method=method,
        constraints=tuple(_constraint(c, i) for i, c in enumerate(constraints_raw)),
        max_trials=_positive_int(merged.get("maxTrials"), "spec.optimization.maxTrials", 50, upper=100_000),
        max_iterations=_positive_int(merged.get("maxIterations"), "spec.optimization.maxIterations", 10, upper=1000),
        min_improvement=float(min_improvement),
        validation=merged.get("validation"),
        seed=seed,
        target=_number(target, "spec.optimization.target") if target is not None else None,
        guards=Guards(
            min_deflated_sharpe=float(guards_raw.get("minDeflatedSharpe", 0.95)),
            lookahead_check=bool(guards_raw.get("lookahead", True)),
            promotion_alpha=_alpha(guards_raw.get("promotionAlpha", 0.05)),
        ),
        # Grid and random search do not learn from results, so a batch can be as large as a sandboxed child
        # takes (indicators are reused across a child's trials); the model-based samplers ask 8 at a time.
        batch_size=_positive_int(merged.get("batchSize"), "spec.optimization.batchSize",
                                 UNGUIDED_BATCH if method in ("grid", "random") else 8, upper=10_000),
        warmup_bars=_positive_int(merged.get("warmupBars"), "spec.optimization.warmupBars", 200, upper=100_000),
    )
    if method == "grid":
        settings.grid()  # fails early on float ranges without a step
    return settings
