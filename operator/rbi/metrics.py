"""Every Prometheus metric that rbi exports, defined once.

The operator serves these on its metrics port; the Grafana dashboards and the
alert rules in the Helm chart may only use names defined here (a test checks).
Labels are bounded enums (outcome, failure class, agent, kind): per-strategy
figures go to the results store, never into label values.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# One registry for rbi, so tests can read it without the process-wide default's
# interpreter collectors, and the operator can serve exactly this set.
REGISTRY = CollectorRegistry(auto_describe=True)

_DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
_WAIT_BUCKETS = (0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)
_IMPROVEMENT_BUCKETS = (-1, -0.5, -0.1, 0, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5)

# --- runs (engine, local executor and Kubernetes Jobs alike) ----------------------------------
RUNS = Counter(
    "rbi_runs",
    "Backtest runs finished, by status (succeeded, no_trades, failed) and failure class ('none' when not failed).",
    ["executor", "status", "failure_class"],
    registry=REGISTRY,
)
RUN_DURATION = Histogram(
    "rbi_run_duration_seconds",
    "Wall-clock time of one run, from start to parsed result.",
    ["executor"],
    buckets=_DURATION_BUCKETS,
    registry=REGISTRY,
)

# --- the operator's queue and Jobs --------------------------------------------------------------
QUEUE_WAIT = Histogram(
    "rbi_queue_wait_seconds",
    "Time a run waited in the operator's queue before its Job was created.",
    buckets=_WAIT_BUCKETS,
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge("rbi_queue_depth", "Runs waiting for a free Job slot.", registry=REGISTRY)
ACTIVE_JOBS = Gauge("rbi_active_jobs", "Backtest Jobs created and not yet finished.", registry=REGISTRY)
JOBS_CREATED = Counter("rbi_jobs_created", "Kubernetes Jobs created by the operator.", registry=REGISTRY)
HANDLER_ERRORS = Counter(
    "rbi_handler_errors",
    "Operator handler errors, by handler and kind (temporary, permanent, unexpected).",
    ["handler", "kind"],
    registry=REGISTRY,
)
RESOURCES = Gauge(
    "rbi_strategies",
    "BacktestStrategy resources known to the operator, by phase.",
    ["phase"],
    registry=REGISTRY,
)

# --- optimisation -------------------------------------------------------------------------------
OPTIMIZATION_TRIALS = Counter(
    "rbi_optimization_trials", "Optimisation trials run, by source (params, llm_code).", ["source"], registry=REGISTRY
)
OPTIMIZATION_ITERATIONS = Counter(
    "rbi_optimization_iterations",
    "Optimisation iterations finished, by result (promoted, rejected).",
    ["result"],
    registry=REGISTRY,
)
OPTIMIZATION_IMPROVEMENT = Histogram(
    "rbi_optimization_improvement_ratio",
    "Relative improvement of the objective per promoted child over its parent.",
    buckets=_IMPROVEMENT_BUCKETS,
    registry=REGISTRY,
)

# --- LLM agents ---------------------------------------------------------------------------------
LLM_CALLS = Counter(
    "rbi_llm_calls",
    "LLM calls, by agent (research, backtest, package, debug, refine) and outcome (ok, error, rate_limited, garbage).",
    ["agent", "outcome"],
    registry=REGISTRY,
)
LLM_TOKENS = Counter(
    "rbi_llm_tokens", "LLM tokens used, by agent and kind (prompt, completion).", ["agent", "kind"], registry=REGISTRY
)
LLM_COST = Counter("rbi_llm_cost_dollars", "Estimated LLM cost in US dollars, by agent.", ["agent"], registry=REGISTRY)

# --- the hands-free loop ------------------------------------------------------------------------
IDEAS = Counter(
    "rbi_ideas", "Ideas that finished the loop, by result (succeeded, failed, skipped).", ["result"], registry=REGISTRY
)


def metric_names() -> set[str]:
    """Every sample name this registry can expose (counters get `_total`, histograms `_bucket` …)."""
    names: set[str] = set()
    # The public API lists only series that have samples; labelled metrics have none until first use.
    for collector, collector_names in list(REGISTRY._collector_to_names.items()):
        names.update(collector_names)
        # prometheus_client never exposes `_sum` for a histogram whose buckets go below zero.
        if isinstance(collector, Histogram) and collector._upper_bounds[0] < 0:
            names.discard(f"{collector._name}_sum")
    return names


def record_run(*, executor: str, status: str, failure_class: str | None, seconds: float) -> None:
    RUNS.labels(executor=executor, status=status, failure_class=failure_class or "none").inc()
    RUN_DURATION.labels(executor=executor).observe(max(0.0, seconds))


def record_llm_call(
    *, agent: str, outcome: str, prompt_tokens: int = 0, completion_tokens: int = 0, cost: float = 0.0
) -> None:
    LLM_CALLS.labels(agent=agent, outcome=outcome).inc()
    if prompt_tokens:
        LLM_TOKENS.labels(agent=agent, kind="prompt").inc(prompt_tokens)
    if completion_tokens:
        LLM_TOKENS.labels(agent=agent, kind="completion").inc(completion_tokens)
    if cost > 0:
        LLM_COST.labels(agent=agent).inc(cost)


def serve(port: int, addr: str = "0.0.0.0") -> None:
    """Serve /metrics from a background thread."""
    start_http_server(port, addr=addr, registry=REGISTRY)
