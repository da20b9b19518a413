"""spec.idea and LLM debugging in the cluster, through the same agents as `rbi loop`.

The agents run in the operator process (they call the LLM endpoint, never the strategy);
the code they write goes into a ConfigMap owned by the resource and then runs in a sandbox
Job like any other code. The API key stays in the operator's environment (from a Secret):
it is never written into a ConfigMap, a Job, or a status.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import kopf

from rbi.k8s import manifests as m
from rbi.operator import events, phases
from rbi.operator.kube import bts_path, configmap_path
from rbi.operator.state import OperatorState
from rbi.outcome import FailureClass, RunOutcome

logger = logging.getLogger(__name__)
DEBUGGABLE = frozenset({FailureClass.SYNTAX_ERROR, FailureClass.IMPORT_ERROR, FailureClass.VALIDATION_ERROR,
                        FailureClass.DATA_ERROR, FailureClass.RUNTIME_ERROR})


def _client(state: OperatorState) -> Any:
    from rbi.operator.runs import InvalidStrategy

    if state.llm_client_factory is not None:
        return state.llm_client_factory()
    from rbi.llm import LLMClient, LLMConfig

    config = LLMConfig.load()
    if config is None or not config.base_url:
        raise InvalidStrategy(FailureClass.SANDBOX_ERROR, "spec.idea needs an LLM endpoint: the operator has no "
                              "OPENAI_BASE_URL / OPENAI_API_KEY (set them from a Secret in the chart's values)",
                              reason="LLMNotConfigured")
    return LLMClient(config)


def _agents() -> Any:
    from rbi.operator.runs import InvalidStrategy

    try:
        import rbi.agents as agents
        from rbi.agents import debug_code, generate_strategy  # noqa: F401 - both must exist
    except ImportError as exc:
        raise InvalidStrategy(FailureClass.SANDBOX_ERROR, f"the LLM agents are not available in this operator "
                              f"build ({exc}); spec.idea cannot be served", reason="AgentsUnavailable") from None
    return agents


async def _save(state: OperatorState, body: Any, code: str, extra: dict[str, str]) -> None:
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    configmap = {"apiVersion": "v1", "kind": "ConfigMap",
                 "metadata": {"name": generated_name(name), "namespace": namespace,
                              "labels": {**m.MANAGED_BY, m.LABEL_STRATEGY: name[:63], m.LABEL_PURPOSE: "code"},
                              "ownerReferences": [m.owner_reference(body)]},
                 "data": {"strategy.py": code, **extra}}
    _, created = await state.kube.create(configmap_path(namespace), configmap)
    if not created:
        changes = {"data": {"strategy.py": code, **extra}}
        await state.kube.patch(configmap_path(namespace, generated_name(name)), changes)


def generated_name(name: str) -> str:
    from rbi.operator.runs import generated_configmap

    return generated_configmap(name)


async def generate(state: OperatorState, body: Any) -> str:
    """Write the strategy for spec.idea with the agents; kept in a ConfigMap, so a restart reuses it."""
    agents = _agents()
    client = _client(state)
    idea = str((body.get("spec") or {}).get("idea"))
    try:
        generated = await asyncio.to_thread(agents.generate_strategy, idea, client=client, store=state.store,
                                            name=body["metadata"]["name"])
    except Exception as exc:  # an LLM outage is infrastructure: kopf retries the handler later
        raise kopf.TemporaryError(f"the LLM agents failed to write the strategy: {exc}", delay=30) from exc
    code = str(generated.code)
    await _save(state, body, code, {"generated.json": json.dumps({
        "name": str(getattr(generated, "name", "")), "strategyClass": getattr(generated, "strategy_class", None),
        "params": getattr(generated, "params", None) or {}}, default=str)})
    events.post(state, body, reason="CodeGenerated", message=f"the agents wrote {len(code.splitlines())} lines of code")
    return code


def _attempts(state: OperatorState, body: Any) -> int:
    llm = (body.get("spec") or {}).get("llm") or {}
    if isinstance(llm.get("maxDebugAttempts"), int):
        return int(llm["maxDebugAttempts"])
    return state.settings.idea_debug_attempts if (body.get("spec") or {}).get("idea") is not None else 0


async def maybe_debug(state: OperatorState, body: Any, outcome: RunOutcome) -> bool:
    """Ask the debug agent for a fix and run again; False when debugging does not apply or is used up."""
    from rbi.operator import runs

    if outcome.error is None or outcome.error.type not in DEBUGGABLE:
        return False
    status = body.get("status") or {}
    attempt = int(status.get("attempt") or 0)
    if attempt >= _attempts(state, body):
        return False
    try:
        agents = _agents()
        client = _client(state)
    except runs.InvalidStrategy as exc:
        events.post(state, body, reason=exc.reason, message=str(exc), warning=True)
        return False
    await runs.patch_status(state, body, {"phase": phases.DEBUGGING, "reason": "Debugging",
                                          "message": f"debug attempt {attempt + 1}: {outcome.error.message[:300]}"})
    code, _ = await runs.resolve_code(state, body)
    previous = list(status.get("previousErrors") or [])[-5:]
    try:
        result = await asyncio.to_thread(agents.debug_code, code, outcome, client=client, attempt=attempt + 1,
                                         previous_errors=previous)
    except Exception as exc:
        events.post(state, body, reason="DebugFailed", message=f"the debug agent failed: {exc}", warning=True)
        await runs.patch_status(state, body, {"phase": phases.FAILED, "reason": "DebugFailed"})
        return True
    fixed = getattr(result, "code", None)
    if getattr(result, "gave_up", False) or not getattr(result, "changed", True) or not isinstance(
            fixed, str) or not fixed.strip() or fixed == code:
        why = str(getattr(result, "reason", "") or "the agent proposed no change")
        await runs.patch_status(state, body, {"phase": phases.FAILED, "reason": "DebugGaveUp",
                                              "message": f"no fix after {attempt + 1} attempt(s) ({why[:200]}): "
                                                         f"{outcome.error.message[:300]}"})
        return True
    await _save(state, body, fixed, {})
    events.post(state, body, reason="CodeDebugged",
                message=f"debug attempt {attempt + 1} changed the code; running again")
    await runs.patch_status(state, body, {"attempt": attempt + 1, "previousErrors": [
        *previous, f"{outcome.error.type}: {outcome.error.message[:200]}"]})
    fresh = await state.kube.get(bts_path(body["metadata"]["namespace"], body["metadata"]["name"]))
    if fresh is not None:
        await runs.submit(state, fresh)
    return True
