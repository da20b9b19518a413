"""LLM agents (research → backtest → package → debug) and the deterministic fixers they start with.

The public API: `generate_strategy(idea, client=...)` for new code, `debug_code(code, outcome, ...)`
for a failed or zero-trade run. Neither needs an executor, so the operator and the loop share them.
"""

from rbi.agents.calls import AgentError, CallRecord
from rbi.agents.debug import DebugResult, debug_code, error_signature
from rbi.agents.pipeline import GeneratedStrategy, generate_strategy
from rbi.agents.research import ParameterSpec, ResearchSpec, idea_key

__all__ = [
    "AgentError",
    "CallRecord",
    "DebugResult",
    "GeneratedStrategy",
    "ParameterSpec",
    "ResearchSpec",
    "debug_code",
    "error_signature",
    "generate_strategy",
    "idea_key",
]
