"""In-cluster optimisation: the operator steps the same state machine as `rbi optimize`, with Jobs.

Against the API emulator with the test kubelet (real sandbox runs on the bundled data): the guards
and both gates in the status, a deployable-labelled child, the same answer as the laptop for the
same seed, a restart in the middle of every stage without a duplicate Job, version or trial, an LLM
round against the scripted OpenAI server, and walk-forward that re-optimises each fold.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.llm.fake_openai import Reply, ScriptedOpenAI
from tests.optimize.test_llm_refinement import CHURN, GOOD_ANSWER

from k8s_operator.conftest import REPO, Cluster, Operators
from k8s_operator.kubelet import Kubelet

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]
SMA = (REPO / "examples" / "strategies" / "sma_cross.py").read_text()
# fast=2/slow=3 churns on noise and pays commission every few bars: the grid's other corner wins clearly.
OPTIMIZATION = {"objective": "return_pct", "method": "grid", "maxTrials": 4, "maxIterations": 1, "minImprovement": 0.0,
                "space": {"fast": [2, 10], "slow": [3, 100]}, "validation": {"holdout": 0.3}, "seed": 1,
                "guards": {"minDeflatedSharpe": 0.0, "promotionAlpha": 0.2}}
PARENT = {"fast": 2, "slow": 3}


def strategy(name: str, code: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "rbi.dev/v1alpha1", "kind": "BacktestStrategy", "metadata": {"name": name},
            "spec": {"code": code, "mode": "class", "data": {"dataset": "BTC-USD-15m"}, **spec}}


async def _some(value: Any) -> Any:
    return value


def _done(cluster: Cluster, name: str) -> Callable[[], Any]:
    async def check() -> dict[str, Any] | None:
        body = await cluster.get(name)
        opt = ((body or {}).get("status") or {}).get("optimization") or {}
        return body if opt.get("state") == "done" else None
    return check


def machine(body: dict[str, Any]) -> dict[str, Any]:
    state: dict[str, Any] = json.loads(body["status"]["optimization"]["machine"])
    return state


def _no_duplicates(kubelet: Kubelet, store: Any, name: str, *, folds: int = 1) -> None:
    assert set(kubelet.jobs_started.values()) == {1}, kubelet.jobs_started  # no Job ran twice
    # Each fold has a study of its own, so one parameter set may be tried once per fold in an iteration.
    keys = Counter((t.iteration, json.dumps(t.params, sort_keys=True)) for t in store.trials(name))
    assert max(keys.values(), default=0) <= folds, f"a trial was run or recorded twice: {keys}"
    versions = [(v.code_hash, json.dumps(v.params, sort_keys=True)) for v in store.versions(name)]
    assert len(versions) == len(set(versions)), "a version was registered twice"
    edges = [(e.parent_version, e.child_version) for e in store.lineage(name)]
    assert len(edges) == len(set(edges)), "a lineage step was recorded twice"


async def test_the_gates_a_deployable_child_and_the_laptops_answer(cluster: Cluster, operators: Operators,
                                                                  kubelet: Kubelet, tmp_path: Path) -> None:
    state = await operators.start()
    parent = await cluster.apply(strategy("opt", SMA, params=PARENT, optimization=OPTIMIZATION))
    body = await cluster.wait_for("the loop to end", _done(cluster, "opt"), timeout=240)
    opt = body["status"]["optimization"]
    saved = machine(body)
    assert saved["parent_guards"]["lookahead_suspected"] is False, saved["parent_guards"]
    (iteration,) = saved["iterations"]
    assert iteration["promoted"], iteration["reason"]
    gates = iteration["guards"]
    assert gates["promotion_test"]["passed"] and "stationary bootstrap" in gates["promotion_test"]["method"]
    assert gates["lookahead_suspected"] is False
    assert iteration["deployable"] is True and opt["deployable"] is True  # minDeflatedSharpe 0: any DSR passes
    assert opt["bestChild"] == "opt-v2" and opt["improvement"] > 0

    child = await cluster.wait_phase("opt-v2", {"Succeeded", "NoTrades"}, timeout=60)
    [owner] = child["metadata"]["ownerReferences"]
    assert owner["uid"] == parent["metadata"]["uid"] and owner["controller"]
    labels = child["metadata"]["labels"]
    assert labels["rbi.dev/lineage-root"] == "opt" and labels["rbi.dev/version"] == "2"
    assert labels["rbi.dev/deployable"] == "true"
    condition = next(c for c in child["status"]["conditions"] if c["type"] == "Deployable")
    assert condition["status"] == "True" and "deflated Sharpe" in condition["message"]
    [step] = state.store.lineage("opt")
    assert (step.parent_version, step.child_version) == (1, 2)
    assert step.details is not None and step.details["deployable"] is True
    assert len(state.store.trials("opt")) == 4
    _no_duplicates(kubelet, state.store, "opt")
    trial_jobs = [j for j in await cluster.jobs() if j["metadata"]["labels"]["rbi.dev/purpose"] == "trials"]
    assert len(trial_jobs) == 1 and trial_jobs[0]["spec"]["completionMode"] == "Indexed"

    # The laptop, same code, data, settings and seed: the same trials in the same order, the same child.
    from rbi.engine import LocalExecutor, prepare
    from rbi.optimize.loop import Optimizer
    from rbi.optimize.settings import parse_settings
    from rbi.prepare.data import load_ohlcv
    from rbi.spec import StrategySpec
    from rbi.store import ResultStore

    local = ResultStore(f"sqlite:///{tmp_path / 'laptop.db'}")
    local.migrate()
    run = prepare(StrategySpec(name="opt", code=SMA, mode="class", params=dict(PARENT)))
    frame = load_ohlcv(run.data_file)
    with LocalExecutor(workers=2) as executor:
        result = Optimizer(run, parse_settings(OPTIMIZATION), executor=executor, store=local, n_rows=len(frame),
                           index_times=[], frame=frame).optimize()
    assert [t.params for t in local.trials("opt")] == [t.params for t in state.store.trials("opt")]
    assert result.children == [2] and result.best.params == child["spec"]["params"]
    assert result.best.oos_score == pytest.approx(opt["bestScore"], rel=1e-6)
    assert result.iterations[0].guards["promotion_test"]["p_value"] == pytest.approx(
        gates["promotion_test"]["p_value"])

    await cluster.call("DELETE", "/apis/rbi.dev/v1alpha1/namespaces/rbi-test/backteststrategies/opt")

    async def gone() -> bool:
        names = {b["metadata"]["name"] for b in await cluster.items(
            "/apis/rbi.dev/v1alpha1/namespaces/rbi-test/backteststrategies")}
        maps = await cluster.items("/api/v1/namespaces/rbi-test/configmaps")
        return not names and not await cluster.jobs() and not maps

    await cluster.wait_for("the parent, its Jobs, ConfigMaps and child to be gone", gone, timeout=30)


# The batches of this optimisation, in order: 1 the parent measured, 2 its look-ahead check, 3 the trials,
# 4 the candidate validated, 5 its look-ahead check.
STAGES = {"baseline": 1, "baseline_lookahead": 2, "trials": 3, "validate": 4, "lookahead": 5}


@pytest.mark.parametrize("stage", list(STAGES))
async def test_a_restart_in_the_middle_of_each_stage(stage: str, cluster: Cluster, operators: Operators,
                                                      kubelet: Kubelet) -> None:
    batch = STAGES[stage]
    kubelet.hold_job = lambda name: f"-i{batch}" in name and not name.startswith("opt-v")
    kubelet.hold_selected.clear()
    first = await operators.start()
    await cluster.apply(strategy("opt", SMA, params=PARENT, optimization=OPTIMIZATION))
    await cluster.wait_for(f"the {stage} pods to run", lambda: _some(kubelet.held_pods or None), timeout=180)
    body = await cluster.get("opt")
    assert body is not None and body["status"]["optimization"]["state"] == stage
    await operators.stop(first)
    kubelet.hold_selected.set()  # the stage's Jobs finish while no operator runs

    async def stage_done() -> bool:
        jobs = [j for j in await cluster.jobs() if f"-i{batch}" in j["metadata"]["name"]]
        return bool(jobs) and all(j.get("status", {}).get("conditions") for j in jobs)

    await cluster.wait_for("the stage's Jobs to finish", stage_done)
    second = await operators.start()
    body = await cluster.wait_for("the loop to end", _done(cluster, "opt"), timeout=240)
    opt = {k: v for k, v in body["status"]["optimization"].items() if k != "machine"}
    assert opt.get("bestChild") == "opt-v2", json.dumps(opt)
    await cluster.wait_phase("opt-v2", {"Succeeded", "NoTrades"})
    _no_duplicates(kubelet, second.store, "opt")
    assert len(second.store.trials("opt")) == 4 and len(second.store.lineage("opt")) == 1


async def test_an_llm_round_and_walk_forward_in_the_cluster(cluster: Cluster, operators: Operators,
                                                           kubelet: Kubelet) -> None:
    from rbi.llm import LLMClient

    settings = {"objective": "return_pct", "method": "grid", "space": {"fast": [10, 20]}, "maxTrials": 2,
                "maxIterations": 3, "minImprovement": 0.05, "seed": 2, "guards": {"minDeflatedSharpe": 0.0},
                "validation": {"walkForward": {"folds": 2, "mode": "rolling", "testFraction": 0.3}}}
    with ScriptedOpenAI(Reply.text(GOOD_ANSWER), Reply.garbage_body(), Reply.garbage_body()) as server:
        state = await operators.start()
        state.llm_client_factory = lambda: LLMClient(server.config())
        await cluster.apply(strategy("churn", CHURN, optimization=settings))
        body = await cluster.wait_for("the loop to end", _done(cluster, "churn"), timeout=300)
        prompts = server.prompts
    saved = machine(body)
    methods = [i["method"] for i in saved["iterations"]]
    assert methods[0] == "grid" and "llm_code" in methods, methods
    assert "class Churn" in prompts[0]
    [llm] = [i for i in saved["iterations"] if i["method"] == "llm_code" and i["promoted"]]
    assert llm["improvement"] > 0.05 and llm["guards"]["promotion_test"]["passed"]
    # Walk-forward: two folds, each with its own windows and figures.
    for report in saved["iterations"]:
        if report["folds"]:
            assert [f["fold"] for f in report["folds"]] == [0, 1]
            assert report["folds"][0]["test"][1] == report["folds"][1]["test"][0]
            assert all("out_of_sample" in f for f in report["folds"])
    grid = saved["iterations"][0]
    assert grid["trials"] == 4  # two trials in each fold's own study
    [edge] = [e for e in state.store.lineage("churn") if e.optimization_type == "llm_code"]
    assert edge.changes_made.startswith("--- a/strategy.py")
    child = await cluster.wait_phase(f"churn-v{edge.child_version}", {"Succeeded", "NoTrades"})
    assert "crossover" in child["spec"]["code"]
    _no_duplicates(kubelet, state.store, "churn", folds=2)
