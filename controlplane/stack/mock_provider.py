"""A stand-in for the OpenAI and Anthropic HTTP APIs, for tests and demos. The project's one fake.

It answers the endpoints the gateway serves, streaming included (Server-Sent Events, one chunk
every ``MOCK_STREAM_INTERVAL`` seconds, so a client can see that chunks arrive one by one), and it
insists on the provider key Envoy must inject: a request without the right key gets the provider's
own 401, which is how the tests see injection work. It records every request it receives (path,
headers, body) and serves the log at ``GET /__mock__/requests`` so tests can prove what did and
did not reach the provider.

Requests carrying an ``anthropic-version`` header are answered in Anthropic's shapes, others in
OpenAI's, because both APIs share paths such as ``/v1/models``.

It logs in Keyward's schema as ``mock-provider`` (:mod:`controlplane.logging`): uvicorn's lines, and
never a request's headers, so never the provider key Envoy injected.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from controlplane.logging import configure as configure_logging

MODELS = ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "claude-haiku-4-5", "claude-opus-4-6"]
_WORDS = ["Hello", " from", " the", " mock", " provider", "."]


def _words(body: dict) -> list[str]:
    """The answer: one token per word, as many as the request's output limit allows."""
    limit = body.get("max_tokens", body.get("max_completion_tokens"))
    return _WORDS[:limit] if isinstance(limit, int) and limit >= 0 else _WORDS


class Recorder:
    def __init__(self) -> None:
        self.requests: list[dict] = []

    async def record(self, request: Request) -> bytes:
        body = await request.body()
        self.requests.append(
            {
                "method": request.method,
                "path": request.url.path,
                "query": request.url.query,
                "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.headers.raw],
                "body": body.decode("utf-8", "replace"),
                "at": time.time(),
            }
        )
        return body


def _is_anthropic(request: Request) -> bool:
    return "anthropic-version" in request.headers


class MockSettings(BaseSettings):
    """The mock's own settings (``MOCK_*``), which the stack runner sets: the provider keys Envoy must
    inject, and the pace of streams."""

    model_config = SettingsConfigDict(env_prefix="MOCK_", extra="ignore")

    openai_key: str = Field(default="", description="Empty: every OpenAI request is refused.")
    anthropic_key: str = Field(default="", description="Empty: every Anthropic request is refused.")
    stream_interval: float = Field(default=0.1, ge=0)
    log_level: str = "info"


def _key_error(request: Request, settings: MockSettings) -> Response | None:
    if _is_anthropic(request):
        if settings.anthropic_key and request.headers.get("x-api-key") == settings.anthropic_key:
            return None
        return JSONResponse(
            {"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}},
            status_code=401,
        )
    if settings.openai_key and request.headers.get("authorization") == f"Bearer {settings.openai_key}":
        return None
    return JSONResponse(
        {
            "error": {
                "message": "Incorrect API key provided.",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_api_key",
            }
        },
        status_code=401,
    )


def _sse(events: list[tuple[str | None, dict | str]], interval: float) -> AsyncIterator[bytes]:
    async def stream() -> AsyncIterator[bytes]:
        for index, (event, data) in enumerate(events):
            if index:
                await asyncio.sleep(interval)
            payload = data if isinstance(data, str) else json.dumps(data)
            head = f"event: {event}\n" if event else ""
            yield f"{head}data: {payload}\n\n".encode()

    return stream()


def create_app() -> Starlette:
    recorder = Recorder()
    settings = MockSettings()
    configure_logging(settings.log_level, process="mock-provider")
    interval = settings.stream_interval

    async def chat_completions(request: Request) -> Response:
        body = json.loads(await recorder.record(request) or b"{}")
        if (denied := _key_error(request, settings)) is not None:
            return denied
        model = body.get("model", "gpt-4o-mini")
        ident = f"chatcmpl-{uuid.uuid4().hex[:12]}"
        words = _words(body)
        usage = {"prompt_tokens": 9, "completion_tokens": len(words), "total_tokens": 9 + len(words)}
        if body.get("stream"):
            chunks: list[tuple[str | None, dict | str]] = [
                (
                    None,
                    {
                        "id": ident,
                        "object": "chat.completion.chunk",
                        "created": int(time.time()),
                        "model": model,
                        "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}],
                    },
                )
                for word in words
            ]
            final: dict = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            }
            chunks.append((None, final))
            if (body.get("stream_options") or {}).get("include_usage"):
                chunks.append(
                    (
                        None,
                        {
                            "id": ident,
                            "object": "chat.completion.chunk",
                            "created": int(time.time()),
                            "model": model,
                            "choices": [],
                            "usage": usage,
                        },
                    )
                )
            chunks.append((None, "[DONE]"))
            return StreamingResponse(_sse(chunks, interval), media_type="text/event-stream")
        return JSONResponse(
            {
                "id": ident,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "".join(words)}, "finish_reason": "stop"}
                ],
                "usage": usage,
            }
        )

    async def embeddings(request: Request) -> Response:
        body = json.loads(await recorder.record(request) or b"{}")
        if (denied := _key_error(request, settings)) is not None:
            return denied
        inputs = body.get("input", "")
        inputs = inputs if isinstance(inputs, list) else [inputs]
        return JSONResponse(
            {
                "object": "list",
                "model": body.get("model"),
                "data": [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]} for i in range(len(inputs))],
                "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)},
            }
        )

    async def models(request: Request) -> Response:
        await recorder.record(request)
        if (denied := _key_error(request, settings)) is not None:
            return denied
        if _is_anthropic(request):
            data = [
                {"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"}
                for m in MODELS
                if m.startswith("claude")
            ]
            return JSONResponse({"data": data, "has_more": False, "first_id": data[0]["id"], "last_id": data[-1]["id"]})
        return JSONResponse(
            {
                "object": "list",
                "data": [{"id": m, "object": "model", "created": 1700000000, "owned_by": "mock"} for m in MODELS],
            }
        )

    async def model(request: Request) -> Response:
        await recorder.record(request)
        if (denied := _key_error(request, settings)) is not None:
            return denied
        name = request.path_params["name"]
        if _is_anthropic(request):
            return JSONResponse(
                {"type": "model", "id": name, "display_name": name, "created_at": "2025-01-01T00:00:00Z"}
            )
        return JSONResponse({"id": name, "object": "model", "created": 1700000000, "owned_by": "mock"})

    async def messages(request: Request) -> Response:
        body = json.loads(await recorder.record(request) or b"{}")
        if (denied := _key_error(request, settings)) is not None:
            return denied
        model_name = body.get("model", "claude-haiku-4-5")
        ident = f"msg_{uuid.uuid4().hex[:12]}"
        words = _words(body)
        if body.get("stream"):
            events: list[tuple[str | None, dict | str]] = [
                (
                    "message_start",
                    {
                        "type": "message_start",
                        "message": {
                            "id": ident,
                            "type": "message",
                            "role": "assistant",
                            "model": model_name,
                            "content": [],
                            "stop_reason": None,
                            "stop_sequence": None,
                            "usage": {"input_tokens": 9, "output_tokens": 1},
                        },
                    },
                ),
                (
                    "content_block_start",
                    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                ),
            ]
            events += [
                (
                    "content_block_delta",
                    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": word}},
                )
                for word in words
            ]
            events += [
                ("content_block_stop", {"type": "content_block_stop", "index": 0}),
                (
                    "message_delta",
                    {
                        "type": "message_delta",
                        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                        "usage": {"output_tokens": len(words)},
                    },
                ),
                ("message_stop", {"type": "message_stop"}),
            ]
            return StreamingResponse(_sse(events, interval), media_type="text/event-stream")
        return JSONResponse(
            {
                "id": ident,
                "type": "message",
                "role": "assistant",
                "model": model_name,
                "content": [{"type": "text", "text": "".join(words)}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": 9, "output_tokens": len(words)},
            }
        )

    async def count_tokens(request: Request) -> Response:
        await recorder.record(request)
        if (denied := _key_error(request, settings)) is not None:
            return denied
        return JSONResponse({"input_tokens": 9})

    async def recorded(request: Request) -> Response:
        if request.method == "DELETE":
            recorder.requests.clear()
            return Response(status_code=204)
        return JSONResponse(recorder.requests)

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/models/{name:path}", model, methods=["GET"]),
            Route("/v1/messages", messages, methods=["POST"]),
            Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
            Route("/__mock__/requests", recorded, methods=["GET", "DELETE"]),
        ]
    )
