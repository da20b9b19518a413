"""Per-agent settings, the config file, cost accounting and the rbi_llm_* metrics of LLMClient."""

from __future__ import annotations

from pathlib import Path

import pytest

from rbi import metrics
from rbi.llm.client import LLMClient, LLMConfig, LLMError
from rbi.llm.settings import LLMConfigError, Price, cost_of

from .fake_openai import Reply, ScriptedOpenAI


def sample(name: str, labels: dict[str, str]) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "llm.yaml"
    path.write_text(text)
    return path


def test_the_config_file_sets_models_per_agent(tmp_path: Path, server: ScriptedOpenAI) -> None:
    path = write(tmp_path, "model: base-model\ntemperature: 0.3\nmax_tokens: 1500\nmax_retries: 1\n"
                           "agents:\n  research: {model: gpt-4o, temperature: 0.7}\n"
                           "  debug: {temperature: 0.0, max_tokens: 900}\n"
                           "prices:\n  base-model: {prompt: 1.0, completion: 2.0}\n")
    config = LLMConfig.load(path=path, env={"OPENAI_BASE_URL": server.base_url})
    assert config is not None and config.model == "base-model" and config.max_retries == 1
    assert config.api_key == "not-needed"  # a local server needs no key
    client = LLMClient(config)
    server.enqueue(*(Reply.text("ok", prompt_tokens=1000, completion_tokens=500) for _ in range(3)))
    research = client.complete(system="s", user="u", agent="research")
    client.complete(system="s", user="u", agent="debug")
    client.complete(system="s", user="u", agent="backtest")
    bodies = [r.body for r in server.requests]
    assert [(b["model"], b["temperature"], b["max_tokens"]) for b in bodies] == [
        ("gpt-4o", 0.7, 1500), ("base-model", 0.0, 900), ("base-model", 0.3, 1500)]
    # gpt-4o: $2.50 / $10 per 1M tokens (built in); base-model: the file's prices.
    assert research.cost == pytest.approx((1000 * 2.5 + 500 * 10) / 1e6)
    assert client.total_cost == pytest.approx(research.cost + 2 * (1000 * 1 + 500 * 2) / 1e6)
    assert client.unpriced_calls == 0


def test_the_environment_wins_over_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "model: from-file\nbase_url: http://file.example/v1\n")
    env = {"RBI_MODEL": "from-env", "OPENAI_API_KEY": "sk-env", "RBI_LLM_CONFIG": str(path)}
    config = LLMConfig.load(env=env)
    assert config is not None
    assert (config.model, config.base_url, config.api_key) == ("from-env", "http://file.example/v1", "sk-env")
    assert LLMConfig.load(env={"RBI_LLM_CONFIG": str(write(tmp_path, "model: x\n"))}) is None  # no endpoint


@pytest.mark.parametrize(("text", "message"), [
    ("api_key: sk-123\n", "api_key does not belong in a file"),
    ("modle: gpt-4o\n", "unknown key(s) ['modle']"),
    ("agents:\n  writer: {model: x}\n", "unknown agent(s) ['writer']"),
    ("agents:\n  debug: {temperature: hot}\n", "agents.debug.temperature must be a number"),
    ("max_tokens: 0\n", "max_tokens must be at least 1"),
    ("prices:\n  m: {prompt: 1}\n", "prices.m must be {prompt: $/1M, completion: $/1M}"),
    ("model: [unclosed\n", "is not valid YAML"),
    ("- a list\n", "must be a mapping"),
])
def test_malformed_config_files_get_precise_messages(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(LLMConfigError) as caught:
        LLMConfig.load(path=write(tmp_path, text), env={"OPENAI_API_KEY": "sk-x"})
    assert message in str(caught.value)
    with pytest.raises(LLMConfigError, match="cannot read"):
        LLMConfig.load(path=tmp_path / "missing.yaml", env={})


def test_cost_of_known_dated_and_unknown_models() -> None:
    assert cost_of("gpt-4o-mini", 1_000_000, 0, {}) == pytest.approx(0.15)
    assert cost_of("gpt-4o-mini-2024-07-18", 0, 1_000_000, {}) == pytest.approx(0.60)
    assert cost_of("llama3:8b", 100, 100, {}) is None
    assert cost_of("llama3:8b", 100, 100, {"llama3:8b": Price(0, 0)}) == 0


def test_calls_are_counted_by_agent_and_outcome(server: ScriptedOpenAI) -> None:
    client = LLMClient(server.config(max_retries=0, model="gpt-4o-mini"))
    before = {outcome: sample("rbi_llm_calls_total", {"agent": "research", "outcome": outcome})
              for outcome in ("ok", "garbage", "rate_limited", "error")}
    tokens_before = sample("rbi_llm_tokens_total", {"agent": "research", "kind": "prompt"})
    cost_before = sample("rbi_llm_cost_dollars_total", {"agent": "research"})
    refine_before = sample("rbi_llm_calls_total", {"agent": "refine", "outcome": "ok"})
    server.enqueue(Reply.text("fine", prompt_tokens=40, completion_tokens=10), Reply.text("not what I asked"),
                   Reply.rate_limited(), Reply.unauthorized(), Reply.garbage_body(), Reply.text("refined"))
    client.complete(system="s", user="u", agent="research")
    judged = client.complete(system="s", user="u", agent="research", settle=False)
    client.settle(judged, "garbage")
    for _ in range(3):
        with pytest.raises(LLMError):
            client.complete(system="s", user="u", agent="research")
    client.complete(system="s", user="u", agent="optimize")  # the optimizer's refinement agent

    def delta(outcome: str) -> float:
        return sample("rbi_llm_calls_total", {"agent": "research", "outcome": outcome}) - before[outcome]

    assert (delta("ok"), delta("garbage"), delta("rate_limited"), delta("error")) == (1, 2, 1, 1)
    assert sample("rbi_llm_tokens_total", {"agent": "research", "kind": "prompt"}) - tokens_before >= 40
    assert sample("rbi_llm_cost_dollars_total", {"agent": "research"}) > cost_before
    assert sample("rbi_llm_calls_total", {"agent": "refine", "outcome": "ok"}) == refine_before + 1
