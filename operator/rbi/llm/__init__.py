"""The LLM layer: an OpenAI-compatible client and versioned prompt templates."""

from __future__ import annotations

from rbi.llm.client import Completion, LLMClient, LLMConfig, LLMError
from rbi.llm.prompts import Prompt, PromptError, load_prompt

__all__ = ["Completion", "LLMClient", "LLMConfig", "LLMError", "Prompt", "PromptError", "load_prompt"]
