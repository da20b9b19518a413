"""A scripted OpenAI-compatible server on loopback, for tests that use the real `openai` client.

Usage::

    from tests.llm.fake_openai import Reply, ScriptedOpenAI

    with ScriptedOpenAI(Reply.rate_limited(), Reply(content="Change: ...\\n```python\\n...\\n```")) as server:
        config = LLMConfig(base_url=server.base_url, api_key="sk-test", model="fake-model", backoff_seconds=0.01)
        answer = LLMClient(config).complete(system="...", user="...", agent="test")
        assert server.requests[-1].user_message.startswith("...")

API
---
`ScriptedOpenAI(*replies)`
    A context manager. On entry it starts `http.server.ThreadingHTTPServer` on
    127.0.0.1 with a random free port, in a daemon thread; on exit it stops.
    `.base_url` is "http://127.0.0.1:PORT/v1" (pass it as `base_url`).
    `.enqueue(*replies)` adds replies to the end of the queue (also while running).
    `.pending` is the number of replies not yet served.
    `.config(**overrides)` is an `rbi.llm.LLMConfig` pointing at the server
    with a test key ("sk-test-scripted"), model "scripted-model", a 0.01 s
    backoff and a 5 s timeout; keyword arguments override any field.

    Each POST to /v1/chat/completions takes the next reply from the queue, in
    order. When the queue is empty the server answers HTTP 500 with the error
    message "ScriptedOpenAI: no scripted reply left for request #N", so a test
    that makes more calls than it scripted fails loudly. Any other path
    answers 404 (and is recorded too).

    `.requests` lists every request as a `RecordedRequest`, in arrival order:
    `.path`, `.headers` (a dict, lower-case names), `.raw` (the body bytes),
    `.body` (the parsed JSON, or None), `.messages` (the chat messages),
    `.system_message`, `.user_message`, and `.text` (the body as text, for
    "never contains" checks). `.prompts` is `[r.user_message for r in requests]`.

`Reply(status=200, content="...", headers={}, delay=0.0, ...)`
    One scripted answer. With status 200 the server sends a proper
    `chat.completion` JSON object whose first choice holds `content` (None
    sends `"content": null`), with `finish_reason` and a `usage` block:
    `prompt_tokens` / `completion_tokens` default to a rough count of
    characters / 4 in the request and in the content. With another status it
    sends an OpenAI-style error object `{"error": {"message": content, ...}}`.
    `body` (bytes or str) replaces the whole body verbatim, and
    `content_type` sets its Content-Type. `delay` seconds pass before the
    answer (for timeout tests). `model` is the model name echoed back
    (default: the requested one).

    Shortcuts:
    - `Reply.text(content)`: a 200 answer with that content.
    - `Reply.rate_limited(retry_after=0)`: 429 with a Retry-After header (None: no header).
    - `Reply.server_error(status=500, message=...)`: a 5xx error object.
    - `Reply.unauthorized(status=401)`: an invalid-API-key error.
    - `Reply.garbage_body()`: 200 with an HTML page (not JSON).
    - `Reply.empty()`: 200 with empty content.
    - `Reply.json(obj, status=200)`: any JSON value as the body.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from rbi.llm.client import LLMConfig

__all__ = ["RecordedRequest", "Reply", "RoutedOpenAI", "ScriptedOpenAI"]

_COMPLETIONS_PATH = "/v1/chat/completions"


@dataclass(frozen=True)
class Reply:
    status: int = 200
    content: str | None = ""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    body: bytes | str | None = None
    content_type: str = "application/json"
    finish_reason: str = "stop"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    model: str | None = None

    @classmethod
    def text(cls, content: str, **kwargs: Any) -> Reply:
        return cls(content=content, **kwargs)

    @classmethod
    def rate_limited(cls, retry_after: float | None = 0) -> Reply:
        headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
        return cls(status=429, content="Rate limit reached for requests", headers=headers)

    @classmethod
    def server_error(cls, status: int = 500, message: str = "The server had an error processing your request") -> Reply:
        return cls(status=status, content=message)

    @classmethod
    def unauthorized(cls, status: int = 401) -> Reply:
        return cls(status=status, content="Incorrect API key provided")

    @classmethod
    def garbage_body(cls) -> Reply:
        page = "<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"
        return cls(status=200, body=page, content_type="text/html")

    @classmethod
    def empty(cls) -> Reply:
        return cls(status=200, content="")

    @classmethod
    def json(cls, value: Any, status: int = 200) -> Reply:
        return cls(status=status, body=json.dumps(value))


@dataclass(frozen=True)
class RecordedRequest:
    path: str
    headers: dict[str, str]
    raw: bytes

    @property
    def text(self) -> str:
        return self.raw.decode("utf-8", errors="replace")

    @property
    def body(self) -> Any:
        try:
            return json.loads(self.raw)
        except ValueError:
            return None

    @property
    def messages(self) -> list[dict[str, Any]]:
        body = self.body
        messages = body.get("messages") if isinstance(body, dict) else None
        return messages if isinstance(messages, list) else []

    def _message(self, role: str) -> str:
        return "\n".join(str(m.get("content", "")) for m in self.messages if m.get("role") == role)

    @property
    def system_message(self) -> str:
        return self._message("system")

    @property
    def user_message(self) -> str:
        return self._message("user")


class ScriptedOpenAI:
    def __init__(self, *replies: Reply) -> None:
        self._queue: deque[Reply] = deque(replies)
        self._lock = threading.Lock()
        self.requests: list[RecordedRequest] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> ScriptedOpenAI:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        server.daemon_threads = True
        server.block_on_close = False  # a reply still sleeping (delay) must not hold up the test
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.02}, name="scripted-openai", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    # ------------------------------------------------------------------ API

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("ScriptedOpenAI is not running: use it as a context manager")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def enqueue(self, *replies: Reply) -> None:
        with self._lock:
            self._queue.extend(replies)

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    def config(self, **overrides: Any) -> LLMConfig:
        values: dict[str, Any] = {
            "base_url": self.base_url,
            "api_key": "sk-test-scripted",
            "model": "scripted-model",
            "backoff_seconds": 0.01,
            "timeout": 5.0,
        }
        values.update(overrides)
        return LLMConfig(**values)

    @property
    def prompts(self) -> list[str]:
        return [r.user_message for r in self.requests]

    # ------------------------------------------------------------------ serving

    def _record_and_pop(self, request: RecordedRequest) -> tuple[int, Reply | None]:
        with self._lock:
            self.requests.append(request)
            number = len(self.requests)
            return number, (self._queue.popleft() if self._queue else None)


def _error_body(message: str, status: int) -> bytes:
    kind = {401: "invalid_request_error", 403: "invalid_request_error", 429: "rate_limit_exceeded"}.get(
        status, "server_error"
    )
    code = {401: "invalid_api_key", 429: "rate_limit_exceeded"}.get(status)
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()


def _completion_body(reply: Reply, request: Any, number: int) -> bytes:
    model = reply.model or (request.get("model") if isinstance(request, dict) else None) or "scripted-model"
    prompt_chars = sum(len(str(m.get("content", ""))) for m in (request or {}).get("messages", []))
    content = reply.content
    body = {
        "id": f"chatcmpl-scripted-{number}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "logprobs": None,
                "finish_reason": reply.finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": reply.prompt_tokens if reply.prompt_tokens is not None else max(1, prompt_chars // 4),
            "completion_tokens": (
                reply.completion_tokens if reply.completion_tokens is not None else len(content or "") // 4
            ),
        },
    }
    usage = body["usage"]
    assert isinstance(usage, dict)
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return json.dumps(body).encode()


def _handler_for(owner: ScriptedOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output clean

        def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self._answer(b"")

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self._answer(self.rfile.read(length) if length else b"")

        def _answer(self, raw: bytes) -> None:
            recorded = RecordedRequest(path=self.path, headers={k.lower(): v for k, v in self.headers.items()}, raw=raw)
            if self.command != "POST" or self.path.split("?")[0] != _COMPLETIONS_PATH:
                with owner._lock:
                    owner.requests.append(recorded)
                message = f"ScriptedOpenAI serves only POST {_COMPLETIONS_PATH}, not {self.command} {self.path}"
                self._send(404, _error_body(message, 404), "application/json")
                return
            number, reply = owner._record_and_pop(recorded)
            if reply is None:
                message = f"ScriptedOpenAI: no scripted reply left for request #{number}"
                self._send(500, _error_body(message, 500), "application/json")
                return
            if reply.delay:
                time.sleep(reply.delay)
            try:
                if reply.body is not None:
                    body = reply.body.encode() if isinstance(reply.body, str) else reply.body
                elif reply.status == 200:
                    body = _completion_body(reply, recorded.body, number)
                else:
                    body = _error_body(reply.content or f"HTTP {reply.status}", reply.status)
                self._send(reply.status, body, reply.content_type, reply.headers)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a timeout test); nothing to answer

    return Handler


class RoutedOpenAI(ScriptedOpenAI):
    """Answers by content, not order: the first route whose marker is in the request's user message.

    For concurrent callers (the loop's ideas in parallel), whose arrival order is not fixed.
    """

    def __init__(self, routes: list[tuple[str, Reply]]) -> None:
        super().__init__()
        self.routes = list(routes)

    def _record_and_pop(self, request: RecordedRequest) -> tuple[int, Reply | None]:
        with self._lock:
            self.requests.append(request)
            for index, (marker, reply) in enumerate(self.routes):
                if marker in request.user_message:
                    del self.routes[index]
                    return len(self.requests), reply
            return len(self.requests), None
