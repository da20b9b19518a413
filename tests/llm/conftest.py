"""Fixtures for the LLM tests: a scripted server and a clean environment."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rbi.llm.client import LLMClient

from .fake_openai import ScriptedOpenAI


@pytest.fixture(autouse=True)
def _no_openai_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's real key or endpoint must never be used by these tests.
    for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "RBI_MODEL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server() -> Iterator[ScriptedOpenAI]:
    with ScriptedOpenAI() as running:
        yield running


@pytest.fixture
def client(server: ScriptedOpenAI) -> LLMClient:
    return LLMClient(server.config())
