"""LLMClient and prompts against a scripted server, through the real openai client."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from rbi.llm import prompts as prompts_module
from rbi.llm.client import LLMClient, LLMConfig, LLMError
from rbi.llm.prompts import PromptError, load_prompt, parse_prompt

from .fake_openai import Reply, ScriptedOpenAI

SECRET = "sk-live-DO-NOT-LEAK-0123456789abcdef"


def _call(client: LLMClient) -> str:
    return client.complete(system="You are terse.", user="Say hi.", agent="test").text


# --------------------------------------------------------------------------- success and accounting


def test_good_completion_counts_tokens(server: ScriptedOpenAI, client: LLMClient) -> None:
    server.enqueue(
        Reply.text("hello", prompt_tokens=11, completion_tokens=3),
        Reply.text("again", prompt_tokens=5, completion_tokens=2),
    )
    first = client.complete(system="You are terse.", user="Say hi.", agent="research")
    assert first.text == "hello"
    assert (first.prompt_tokens, first.completion_tokens, first.attempts) == (11, 3, 1)
    assert first.model == "scripted-model"
    assert first.seconds >= 0
    client.complete(system="s", user="u", agent="optimize")
    assert client.total_prompt_tokens == 16
    assert client.total_completion_tokens == 5
    assert client.calls == {"research": 1, "optimize": 1}
    body = server.requests[0].body
    assert body["model"] == "scripted-model"
    assert body["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Say hi."},
    ]
    assert body["temperature"] == 0.2 and body["max_tokens"] == 4000
    assert server.requests[0].headers["authorization"] == "Bearer sk-test-scripted"


# --------------------------------------------------------------------------- retries


def test_rate_limited_twice_then_success(server: ScriptedOpenAI, client: LLMClient) -> None:
    server.enqueue(Reply.rate_limited(), Reply.rate_limited(), Reply.text("ok"))
    started = time.monotonic()
    completion = client.complete(system="s", user="u", agent="test")
    assert completion.text == "ok"
    assert completion.attempts == 3
    assert len(server.requests) == 3
    assert client.backoffs == [0.0, 0.0]  # Retry-After: 0 honoured
    assert time.monotonic() - started < 5


def test_backoff_grows_exponentially_without_retry_after(server: ScriptedOpenAI) -> None:
    waits: list[float] = []
    client = LLMClient(server.config(backoff_seconds=0.01), sleep=waits.append)
    server.enqueue(
        Reply.rate_limited(retry_after=None), Reply.server_error(503), Reply.server_error(), Reply.text("ok")
    )
    assert client.complete(system="s", user="u", agent="test").attempts == 4
    assert len(waits) == 3
    for attempt, wait in enumerate(waits, start=1):
        base = 0.01 * 2 ** (attempt - 1)
        assert base <= wait <= base + 0.01
    assert client.backoffs == waits


def test_retry_after_is_capped(server: ScriptedOpenAI) -> None:
    waits: list[float] = []
    client = LLMClient(server.config(max_backoff_seconds=0.05), sleep=waits.append)
    server.enqueue(Reply.rate_limited(retry_after=3600), Reply.text("ok"))
    assert _call(client) == "ok"
    assert waits == [0.05]


def test_server_error_then_success(server: ScriptedOpenAI, client: LLMClient) -> None:
    server.enqueue(Reply.server_error(), Reply.text("recovered"))
    completion = client.complete(system="s", user="u", agent="test")
    assert (completion.text, completion.attempts) == ("recovered", 2)
    assert len(client.backoffs) == 1


def test_gives_up_after_max_retries(server: ScriptedOpenAI) -> None:
    client = LLMClient(server.config(max_retries=2))
    server.enqueue(*[Reply.rate_limited() for _ in range(5)])
    with pytest.raises(LLMError) as caught:
        _call(client)
    assert caught.value.kind == "rate_limited"
    assert caught.value.attempts == 3
    assert "gave up after 3 attempts" in str(caught.value)
    assert len(server.requests) == 3


def test_exhausted_script_says_so(server: ScriptedOpenAI) -> None:
    client = LLMClient(server.config(max_retries=0))
    with pytest.raises(LLMError) as caught:
        _call(client)
    assert caught.value.status == 500
    assert "no scripted reply left for request #1" in str(caught.value)


# --------------------------------------------------------------------------- failures that are not retried


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failure_is_not_retried(server: ScriptedOpenAI, status: int) -> None:
    client = LLMClient(server.config(api_key=SECRET))
    server.enqueue(Reply.unauthorized(status), Reply.text("never reached"))
    with pytest.raises(LLMError) as caught:
        _call(client)
    assert caught.value.kind == "auth"
    assert caught.value.status == status
    assert f"HTTP {status}" in str(caught.value) and "OPENAI_API_KEY" in str(caught.value)
    assert len(server.requests) == 1
    assert client.backoffs == []


def test_not_found_names_model_and_base_url(server: ScriptedOpenAI, client: LLMClient) -> None:
    server.enqueue(Reply(status=404, content="The model `nope` does not exist"))
    with pytest.raises(LLMError) as caught:
        _call(client)
    assert caught.value.kind == "bad_response"
    assert "does not exist" in str(caught.value) and "RBI_MODEL='scripted-model'" in str(caught.value)
    assert len(server.requests) == 1


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_dead_endpoint_is_unreachable_quickly() -> None:
    config = LLMConfig(
        base_url=f"http://127.0.0.1:{_free_port()}/v1", api_key=SECRET, model="m", backoff_seconds=0.01, timeout=5
    )
    client = LLMClient(config)
    started = time.monotonic()
    with pytest.raises(LLMError) as caught:
        _call(client)
    assert time.monotonic() - started < 5
    assert caught.value.kind == "unreachable"
    assert caught.value.attempts == 5  # connection errors are retried
    assert "cannot connect to the LLM server at http://127.0.0.1:" in str(caught.value)
    assert SECRET not in str(caught.value)


def test_timeout(server: ScriptedOpenAI) -> None:
    client = LLMClient(server.config(timeout=0.2, max_retries=1))
    server.enqueue(Reply.text("late", delay=1.0), Reply.text("late", delay=1.0))
    with pytest.raises(LLMError) as caught:
        _call(client)
    assert caught.value.kind == "timeout"
    assert "within 0.2 s" in str(caught.value)
    assert caught.value.attempts == 2


def test_empty_content(server: ScriptedOpenAI, client: LLMClient) -> None:
    server.enqueue(Reply.empty())
    with pytest.raises(LLMError) as caught:
        _call(client)
    assert caught.value.kind == "empty"
    assert "empty answer" in str(caught.value)
    assert len(server.requests) == 1


def test_null_content_cut_by_length_hints_max_tokens(server: ScriptedOpenAI, client: LLMClient) -> None:
    server.enqueue(Reply(content=None, finish_reason="length"))
    with pytest.raises(LLMError) as caught:
        _call(client)
    assert caught.value.kind == "empty"
    assert "finish_reason='length'" in str(caught.value) and "max_tokens=4000" in str(caught.value)


def test_garbage_body(server: ScriptedOpenAI, client: LLMClient) -> None:
    server.enqueue(Reply.garbage_body())
    with pytest.raises(LLMError) as caught:
        _call(client)
    assert caught.value.kind == "bad_response"
    assert "not JSON (text/html)" in str(caught.value) and "502 Bad Gateway" in str(caught.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"id": "x", "object": "chat.completion"}, "no choices"),
        ([1, 2, 3], "not a chat completion object"),
        ({"choices": [{"index": 0}]}, "a choice without a message"),
    ],
)
def test_wrong_json_shape(server: ScriptedOpenAI, client: LLMClient, value: object, expected: str) -> None:
    server.enqueue(Reply.json(value))
    with pytest.raises(LLMError) as caught:
        _call(client)
    assert caught.value.kind == "bad_response"
    assert expected in str(caught.value)


def test_api_key_never_in_error_messages(server: ScriptedOpenAI) -> None:
    client = LLMClient(server.config(api_key=SECRET, max_retries=0))
    echoing = [
        Reply.unauthorized(),
        Reply(status=401, content=f"Incorrect API key provided: {SECRET}"),
        Reply(status=400, content=f"bad request from {SECRET}"),
        Reply.server_error(message=f"crashed while serving {SECRET}"),
        Reply.rate_limited(),
        Reply(status=200, body=f"<html>{SECRET}</html>", content_type="text/html"),
        Reply.empty(),
    ]
    server.enqueue(*echoing)
    messages = []
    for _ in echoing:
        with pytest.raises(LLMError) as caught:
            _call(client)
        messages.append(str(caught.value))
    assert len(server.requests) == len(echoing)
    assert all(SECRET not in m for m in messages), messages
    assert any("***" in m for m in messages)


# --------------------------------------------------------------------------- configuration


def test_from_env_none_when_nothing_set() -> None:
    assert LLMConfig.from_env({}) is None
    assert LLMConfig.from_env({"RBI_MODEL": "llama3", "OPENAI_API_KEY": "  "}) is None


def test_from_env_base_url_only_uses_placeholder_key() -> None:
    config = LLMConfig.from_env({"OPENAI_BASE_URL": "http://localhost:11434/v1"})
    assert config is not None
    assert config.base_url == "http://localhost:11434/v1"
    assert config.api_key == "not-needed"
    assert config.model == "gpt-4o-mini"


def test_from_env_key_and_model() -> None:
    config = LLMConfig.from_env({"OPENAI_API_KEY": SECRET, "RBI_MODEL": "qwen2.5-coder"})
    assert config is not None
    assert (config.base_url, config.api_key, config.model) == (None, SECRET, "qwen2.5-coder")


def test_from_env_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:8000/v1")
    monkeypatch.setenv("RBI_MODEL", "local")
    config = LLMConfig.from_env()
    assert config is not None and config.model == "local"


def test_auth_error_repr_has_no_key(server: ScriptedOpenAI) -> None:
    # The key lives in the config (the SDK needs it); what must not carry it is what users see.
    server.enqueue(Reply.unauthorized())
    with pytest.raises(LLMError) as caught:
        _call(LLMClient(server.config(api_key=SECRET)))
    assert SECRET not in repr(caught.value) and SECRET not in str(caught.value)


# --------------------------------------------------------------------------- prompts


def test_load_packaged_prompt() -> None:
    prompt = load_prompt("refine_strategy")
    assert prompt.name == "refine_strategy"
    assert prompt.version >= 1
    assert "backtesting.py" in prompt.system
    assert {"code", "stats", "trade_summary", "tried", "objective", "direction", "class_name"} <= prompt.placeholders
    assert "$" not in prompt.system.replace("$$", "")


def test_prompt_file_ships_inside_the_package() -> None:
    path = Path(prompts_module.__file__).parent / "prompts" / "refine_strategy.md"
    assert path.is_file()
    assert path.read_text().splitlines()[0].startswith("version: ")


def test_render_and_missing_placeholder() -> None:
    prompt = parse_prompt("t", "version: 7\nYou help.\n---\nGoal: $goal, cost $$5, ${code}\n---\nmore\n")
    assert prompt.version == 7 and prompt.system == "You help."
    assert prompt.render(goal="profit", code="x = 1") == "Goal: profit, cost $5, x = 1\n---\nmore\n"
    assert prompt.render(goal="$code", code="y") == "Goal: $code, cost $5, y\n---\nmore\n"  # values are not re-expanded
    with pytest.raises(PromptError, match=r"'t' \(version 7\) needs a value for \$code \(given: goal\)"):
        prompt.render(goal="profit")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("You help.\n---\nu\n", "first line must be 'version: N'"),
        ("version: 1\nYou help.\nno separator\n", "no '---' line"),
        ("version: 1\nYou help.\n---\ncosts $5\n", r"'\$' that starts no placeholder"),
        ("version: 1\n---\nu\n", "must both be non-empty"),
    ],
)
def test_malformed_templates(text: str, message: str) -> None:
    with pytest.raises(PromptError, match=message):
        parse_prompt("bad", text)


def test_unknown_prompt_lists_available() -> None:
    with pytest.raises(PromptError, match=r"no prompt named 'nope' .*refine_strategy"):
        load_prompt("nope")
