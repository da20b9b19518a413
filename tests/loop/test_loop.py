"""`IdeaLoop` end to end: the real openai client against a scripted server, real sandbox runs, real SQL."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import func, select, table
from tests.llm.fake_openai import Reply, RoutedOpenAI, ScriptedOpenAI

from rbi import metrics
from rbi.engine import LocalExecutor
from rbi.llm import LLMClient
from rbi.loop import IdeaLoop, IdeaState, LoopSettings, parse_ideas
from rbi.sandbox.pool import worker_environment
from rbi.store import ResultStore

from .answers import QUICK_OPTIMIZATION, fenced, research_answer, strategy_code


def count(store: ResultStore, name: str) -> int:
    with store.engine.connect() as connection:
        return int(connection.scalar(select(func.count()).select_from(table(name))) or 0)


def calls_metric(agent: str, outcome: str) -> float:
    return metrics.REGISTRY.get_sample_value("rbi_llm_calls_total", {"agent": agent, "outcome": outcome}) or 0.0


def settings(data: Path | None, **changes: object) -> LoopSettings:
    base = LoopSettings(concurrency=1, data=data, optimization=dict(QUICK_OPTIMIZATION))
    return replace(base, **changes)  # type: ignore[arg-type]


def loop(server: ScriptedOpenAI, store: ResultStore, executor: LocalExecutor, loop_settings: LoopSettings,
         **config: object) -> IdeaLoop:
    client = LLMClient(server.config(**config))
    return IdeaLoop(store=store, client=client, executor=executor, settings=loop_settings)


def test_good_path_end_to_end_on_the_bundled_data(store: ResultStore, executor: LocalExecutor,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-live-NEVER-IN-THE-SANDBOX-123456")
    ideas = parse_ideas("Buy when the 10-bar SMA crosses above the 40-bar SMA; sell on the opposite cross.\n")
    code = strategy_code("SmaCrossTrend")
    ok_before = calls_metric("research", "ok")
    with ScriptedOpenAI(Reply.text(research_answer("sma-cross-trend")), Reply.text(fenced(code))) as server:
        summary = loop(server, store, executor, settings(None), model="gpt-4o-mini").run(ideas)
        requests = server.requests

    assert len(requests) == 2
    (state,) = summary.ideas
    assert state.status == "succeeded", state
    assert summary.to_json()["succeeded"] == 1 and not summary.failures_by_class
    assert state.baseline is not None and state.best is not None
    # Tokens and cost are accounted per call and in the summary (gpt-4o-mini has a list price).
    assert summary.prompt_tokens > 0 and summary.completion_tokens > 0 and summary.cost > 0
    calls = store.llm_calls(strategy_name="sma-cross-trend")
    assert [(c.agent, c.prompt_name, c.outcome, c.version) for c in calls] == [
        ("research", "research_idea", "ok", 1), ("backtest", "backtest_code", "ok", 1)]
    assert all(c.model == "gpt-4o-mini" and c.prompt_version >= 1 and c.cost and c.cost > 0 for c in calls)
    assert calls_metric("research", "ok") == ok_before + 1
    (v1, *_rest) = store.versions("sma-cross-trend")
    assert v1.source == "llm" and v1.params == {"fast": 10, "slow": 40}
    assert v1.latest_run is not None and v1.latest_run.status == "succeeded" and v1.latest_run.num_trades
    idea = store.get_idea(ideas[0].key)
    assert idea is not None and idea.status == "succeeded" and idea.stage == "done"
    assert idea.best is not None and idea.best["objective"] == "sharpe_ratio"
    # The key went to the server as a bearer token, never into a request body, and never to a sandbox:
    # workers start with a fixed allow-list of variables (tests/sandbox checks it from inside a run).
    assert all("NEVER-IN-THE-SANDBOX" not in r.text for r in requests)
    assert requests[0].headers["authorization"] == "Bearer sk-test-scripted"
    assert not any("NEVER-IN-THE-SANDBOX" in value for value in worker_environment().values())


# --------------------------------------------------------------------------- debugging


def test_failure_fixed_by_a_deterministic_fixer_costs_no_model_call(store: ResultStore, executor: LocalExecutor,
                                                                    small_data: Path) -> None:
    ideas = parse_ideas("Trade SMA crossovers with 1.5 units per order\n")
    broken = strategy_code("BigSize", size="1.5")  # neither a fraction nor whole units: AssertionError
    with ScriptedOpenAI(Reply.text(research_answer("big-size")), Reply.text(fenced(broken))) as server:
        summary = loop(server, store, executor, settings(small_data, optimize=False)).run(ideas)
        assert len(server.requests) == 2  # research and backtest only: the fixer needed no model

    (state,) = summary.ideas
    assert state.status == "succeeded", state
    v1, v2 = store.versions("big-size")
    assert v1.latest_run is not None and v1.latest_run.error_type == "runtime_error"
    assert "size" in (v1.latest_run.error_message or "")
    assert v2.source == "debug_fixer" and v2.parent_version == 1
    assert v2.latest_run is not None and v2.latest_run.status == "succeeded"
    (edge,) = store.lineage("big-size")
    assert edge.optimization_type == "debug" and edge.details is not None and edge.details["via"] == "fixer"
    assert edge.details["fixes"][0]["fixer"] == "position_size"
    # The research and backtest calls are the lineage of v1, which the fixer's v2 descends from.
    assert {c.version for c in store.llm_calls(strategy_name="big-size")} == {1}


NAME_ERROR = "        threshold = undefined_threshold * 2\n"


def test_failure_fixed_by_the_model_on_the_second_attempt(store: ResultStore, executor: LocalExecutor,
                                                          small_data: Path) -> None:
    ideas = parse_ideas("SMA crossover with a threshold\n")
    broken = strategy_code("Threshold", next_extra=NAME_ERROR)
    fixed = strategy_code("Threshold")
    garbage_before = calls_metric("debug", "garbage")
    replies = [Reply.text(research_answer("threshold")), Reply.text(fenced(broken)),
               Reply.text("You should define the threshold before using it, I think."),  # attempt 1: no code
               Reply.text("Fix: removed the undefined name.\n\n```python\n" + fixed + "```")]
    with ScriptedOpenAI(*replies) as server:
        summary = loop(server, store, executor, settings(small_data, optimize=False)).run(ideas)
        prompts = server.prompts

    (state,) = summary.ideas
    assert state.status == "succeeded", state
    assert state.attempts == 2
    # The debug prompt: class, message, traceback lines and the code around the failing line.
    debug_prompt = prompts[2]
    assert "runtime_error" in debug_prompt and "NameError" in debug_prompt and "undefined_threshold" in debug_prompt
    assert "strategy.py" in debug_prompt  # traceback frame of the strategy itself
    assert ">" in debug_prompt and "| " in debug_prompt and "threshold = undefined_threshold" in debug_prompt
    debug_calls = [c for c in store.llm_calls(strategy_name="threshold") if c.agent == "debug"]
    assert [(c.attempt, c.outcome) for c in debug_calls] == [(1, "garbage"), (2, "ok")]
    assert debug_calls[0].error_kind == "no_code"
    assert all(c.version == 2 for c in debug_calls)  # the calls that produced v2
    assert calls_metric("debug", "garbage") == garbage_before + 1
    _v1, v2 = store.versions("threshold")
    assert v2.source == "debug_llm" and v2.code == fixed
    (edge,) = store.lineage("threshold")
    assert edge.details is not None and edge.details["via"] == "model"
    assert edge.details["model"] == "scripted-model" and edge.details["prompt_version"] >= 1


def test_a_model_that_keeps_returning_the_same_broken_code_is_stopped_early(
        store: ResultStore, executor: LocalExecutor, small_data: Path) -> None:
    ideas = parse_ideas("First broken idea\nSecond broken idea\n")
    broken_a = strategy_code("BrokenA", next_extra=NAME_ERROR)
    again_a = broken_a.replace("class BrokenA", "# the threshold scales the signal\nclass BrokenA")
    broken_b = strategy_code("BrokenB", next_extra=NAME_ERROR)
    replies = [Reply.text(research_answer("broken-a")), Reply.text(fenced(broken_a)),
               Reply.text(fenced(again_a, "Fix: documented the threshold.")),  # same error comes back
               Reply.text(research_answer("broken-b")), Reply.text(fenced(broken_b)),
               Reply.text(fenced(broken_b, "Fix: nothing needed."))]  # the very same code
    with ScriptedOpenAI(*replies) as server:
        summary = loop(server, store, executor, settings(small_data, max_debug_attempts=5)).run(ideas)
        assert server.pending == 0 and len(server.requests) == len(replies), summary.to_json()

    first, second = summary.ideas
    assert (first.status, first.failure_class) == ("failed", "runtime_error")
    assert "same error came back" in first.message
    assert (second.status, second.failure_class) == ("failed", "runtime_error")
    assert "already tried" in second.message
    assert summary.failures_by_class == {"runtime_error": 2}
    # One model attempt each despite max_debug_attempts=5; both runs of A are kept.
    assert len(store.versions("broken-a")) == 2 and len(store.versions("broken-b")) == 1
    stored = store.get_idea(ideas[0].key)
    assert stored is not None and stored.status == "failed" and stored.failure_class == "runtime_error"


# --------------------------------------------------------------------------- a misbehaving server


def test_rate_limits_are_retried_and_exhausted_ones_leave_the_idea_pending(
        store: ResultStore, executor: LocalExecutor, small_data: Path) -> None:
    ideas = parse_ideas("Rate limited but patient\nRate limited for too long\n")
    replies = [Reply.rate_limited(), Reply.rate_limited(), Reply.text(research_answer("patient")),
               Reply.text(fenced(strategy_code("Patient"))),
               Reply.rate_limited(), Reply.rate_limited(), Reply.rate_limited()]
    limited_before = calls_metric("research", "rate_limited")
    with ScriptedOpenAI(*replies) as server:
        summary = loop(server, store, executor, settings(small_data, optimize=False), max_retries=2).run(ideas)
        assert server.pending == 0

    patient, impatient = summary.ideas
    assert patient.status == "succeeded"
    assert (impatient.status, impatient.failure_class) == ("pending", "llm_rate_limited")
    assert "rate limiting" in impatient.message and "HTTP 429" in impatient.message
    assert calls_metric("research", "rate_limited") == limited_before + 1
    (call,) = store.llm_calls(idea_key=ideas[1].key)
    assert (call.agent, call.outcome, call.error_kind) == ("research", "rate_limited", "rate_limited")
    assert summary.failures_by_class == {"llm_rate_limited": 1}

    # Pending is not processed: the next run asks again, and skips the idea that succeeded.
    with ScriptedOpenAI(Reply.text(research_answer("impatient")),
                        Reply.text(fenced(strategy_code("Impatient")))) as server:
        again = loop(server, store, executor, settings(small_data, optimize=False)).run(ideas)
    assert [s.status for s in again.ideas] == ["succeeded", "succeeded"]
    assert again.ideas[0].skipped and not again.ideas[1].skipped


def test_garbage_answers_get_classified_messages(store: ResultStore, executor: LocalExecutor,
                                                 small_data: Path) -> None:
    ideas = parse_ideas("Idea answered with prose\nIdea answered with JSON code\nIdea behind a proxy\n"
                        "Idea answered with nothing\n")
    replies = [
        Reply.text("Momentum strategies are interesting. Let me know more."),
        Reply.text("I would need more details about your market."),
        Reply.text(research_answer("json-code")),
        Reply.text('{"code": "print(1)"}'),
        Reply.text("```python\ndef signal(x):\n    return x > 1\n```"),
        Reply.garbage_body(),
        Reply.empty(),
    ]
    with ScriptedOpenAI(*replies) as server:
        summary = loop(server, store, executor, settings(small_data), max_retries=0).run(ideas)
        assert server.pending == 0

    prose, json_code, proxy, empty = summary.ideas
    assert (prose.status, prose.failure_class) == ("failed", "not_json")
    assert "no JSON specification" in prose.message and "words of prose" in prose.message
    assert (json_code.status, json_code.failure_class) == ("failed", "no_strategy")
    assert "no backtesting.Strategy subclass" in json_code.message
    assert (proxy.status, proxy.failure_class) == ("pending", "llm_bad_response")
    assert "not JSON" in proxy.message and "text/html" in proxy.message
    assert (empty.status, empty.failure_class) == ("failed", "llm_empty")
    assert "empty answer" in empty.message
    outcomes = [(c.agent, c.outcome, c.error_kind) for c in store.llm_calls(idea_key=ideas[1].key)]
    assert outcomes == [("research", "ok", None), ("backtest", "garbage", "no_code"),
                        ("backtest", "garbage", "no_strategy")]
    assert summary.failures_by_class == {"not_json": 1, "no_strategy": 1, "llm_bad_response": 1, "llm_empty": 1}


def test_a_dead_endpoint_stops_the_loop_and_loses_nothing(store: ResultStore, executor: LocalExecutor,
                                                          small_data: Path) -> None:
    ideas = parse_ideas("An idea\nAnother idea\n")
    with ScriptedOpenAI() as server:
        dead = server.config(max_retries=0)
    client = LLMClient(dead)  # the server is gone: connection refused
    summary = IdeaLoop(store=store, client=client, executor=executor,
                       settings=settings(small_data, concurrency=1)).run(ideas)
    assert summary.aborted is not None and "cannot connect" in summary.aborted
    first, second = summary.ideas
    assert (first.status, first.failure_class) == ("pending", "llm_unreachable")
    assert second.status == "pending" and second.failure_class is None  # never started
    stored = store.get_idea(ideas[0].key)
    assert stored is not None and stored.status == "pending" and stored.failure_class == "llm_unreachable"


# --------------------------------------------------------------------------- interruption


def test_an_interrupted_loop_resumes_without_duplicating_work(store: ResultStore, executor: LocalExecutor,
                                                              small_data: Path) -> None:
    ideas = parse_ideas("# three ideas\nFirst idea\nSecond idea\nThird idea\n")
    assert len(ideas) == 3

    def interrupt(state: IdeaState) -> None:
        if state.key == ideas[1].key and state.stage == "backtest":
            raise KeyboardInterrupt

    first_replies = [Reply.text(research_answer("first")), Reply.text(fenced(strategy_code("First"))),
                     Reply.text(research_answer("second"))]
    with ScriptedOpenAI(*first_replies) as server:
        client = LLMClient(server.config())
        first_run = IdeaLoop(store=store, client=client, executor=executor, settings=settings(small_data),
                             on_stage=interrupt).run(ideas)
        assert server.pending == 0
    assert first_run.interrupted
    assert [s.status for s in first_run.ideas] == ["succeeded", "running", "pending"]
    idea_two = store.get_idea(ideas[1].key)
    assert idea_two is not None and idea_two.status == "running" and idea_two.research is not None
    assert idea_two.code is None
    before = {table_name: count(store, table_name) for table_name in
              ("strategy_versions", "backtest_results", "llm_calls", "optimization_history")}
    first_versions = store.versions("first")
    first_runs = len(store.list_runs(name="first", limit=1000))

    # The rerun: the first idea is skipped, the second resumes at its backtest stage (no second
    # research call), the third runs from the start. Any extra request would find no scripted reply.
    second_replies = [Reply.text(fenced(strategy_code("Second"))), Reply.text(research_answer("third")),
                      Reply.text(fenced(strategy_code("Third")))]
    with ScriptedOpenAI(*second_replies) as server:
        second_run = loop(server, store, executor, settings(small_data)).run(ideas)
        assert server.pending == 0 and len(server.requests) == 3
        assert "Write the strategy `second`" in server.prompts[0]
    assert not second_run.interrupted
    assert [s.status for s in second_run.ideas] == ["succeeded"] * 3
    assert second_run.ideas[0].skipped and not second_run.ideas[1].skipped
    assert store.versions("first") == first_versions
    assert len(store.list_runs(name="first", limit=1000)) == first_runs
    assert len(store.llm_calls(idea_key=ideas[0].key)) == 2
    assert [c.agent for c in store.llm_calls(idea_key=ideas[1].key)] == ["research", "backtest"]
    assert count(store, "llm_calls") == before["llm_calls"] + 3
    assert count(store, "strategy_versions") > before["strategy_versions"]


def test_max_ideas_stops_after_that_many_and_the_rest_follow_later(store: ResultStore, executor: LocalExecutor,
                                                                   small_data: Path) -> None:
    ideas = parse_ideas("Alpha idea\nBeta idea\n")
    with ScriptedOpenAI(Reply.text(research_answer("alpha")), Reply.text(fenced(strategy_code("Alpha")))) as server:
        partial = loop(server, store, executor, settings(small_data, optimize=False, max_ideas=1)).run(ideas)
    assert [s.status for s in partial.ideas] == ["succeeded", "pending"]
    with ScriptedOpenAI(Reply.text(research_answer("beta")), Reply.text(fenced(strategy_code("Beta")))) as server:
        rest = loop(server, store, executor, settings(small_data, optimize=False)).run(ideas)
        assert server.pending == 0
    assert [s.status for s in rest.ideas] == ["succeeded", "succeeded"] and rest.ideas[0].skipped


# --------------------------------------------------------------------------- bounded concurrency


def test_ideas_run_concurrently_up_to_the_bound(store: ResultStore, executor: LocalExecutor,
                                                small_data: Path) -> None:
    ideas = parse_ideas("Alpha concurrent idea\nBeta concurrent idea\nGamma concurrent idea\n")
    routes: list[tuple[str, Reply]] = []
    for word in ("Alpha", "Beta", "Gamma"):
        name = f"{word.lower()}-c"
        routes += [(f"{word} concurrent idea", Reply(content=research_answer(name), delay=0.4)),
                   (f"Write the strategy `{name}`", Reply.text(fenced(strategy_code(f"{word}C"))))]
    in_flight: set[str] = set()
    most = 0

    def track(states: list[IdeaState]) -> None:
        nonlocal most
        running = {s.key for s in states if s.status == "running"}
        in_flight.clear()
        in_flight.update(running)
        most = max(most, len(running))

    with RoutedOpenAI(routes) as server:
        client = LLMClient(server.config())
        summary = IdeaLoop(store=store, client=client, executor=executor, on_update=track,
                           settings=settings(small_data, concurrency=2)).run(ideas)
        assert not server.routes
        first_two = [r.user_message for r in server.requests[:2]]
    assert [s.status for s in summary.ideas] == ["succeeded"] * 3, summary.to_json()
    assert most == 2  # two ideas at once, never three
    assert all("concurrent idea" in prompt for prompt in first_two)  # both research calls went out together
    assert {c.strategy_name for c in store.llm_calls()} == {"alpha-c", "beta-c", "gamma-c"}


def test_an_interruption_between_backtest_and_package_keeps_the_models_code(
        store: ResultStore, executor: LocalExecutor, small_data: Path) -> None:
    ideas = parse_ideas("Interrupted while packaging\n")

    def interrupt(state: IdeaState) -> None:
        if state.stage == "package":
            raise KeyboardInterrupt

    with ScriptedOpenAI(Reply.text(research_answer("packaging")),
                        Reply.text(fenced(strategy_code("Packaging")))) as server:
        first = IdeaLoop(store=store, client=LLMClient(server.config()), executor=executor, on_stage=interrupt,
                         settings=settings(small_data, optimize=False)).run(ideas)
    assert first.interrupted and first.ideas[0].status == "running"
    with ScriptedOpenAI() as server:  # nothing scripted: any request fails the idea
        second = loop(server, store, executor, settings(small_data, optimize=False)).run(ideas)
        assert server.requests == []
    assert second.ideas[0].status == "succeeded"
    assert [c.agent for c in store.llm_calls(idea_key=ideas[0].key)] == ["research", "backtest"]
