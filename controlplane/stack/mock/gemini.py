"""Google's Gemini API (``generativelanguage``), native: the model is in the path, the key in
``x-goog-api-key``, and versions ``v1`` and ``v1beta`` answer alike.

``:streamGenerateContent`` answers Server-Sent Events with ``?alt=sse`` (what ``google-genai`` asks
for) and a JSON array without. Every answer carries ``usageMetadata`` as the real API does, stream
chunks included (cumulative, so the last one holds the totals): prompt 9 tokens, one candidate token
per word, and ``cachedContentTokenCount`` when the request names a ``cachedContent``.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse, Response, StreamingResponse

from .core import PROMPT_TOKENS, Call, Handler, Problem, limit, new_id, sse, words

_VERSIONS = ("v1", "v1beta")
#: Of a request's 9 prompt tokens, how many a named cache served.
CACHED_TOKENS = 4
_MODELS = ["gemini-2.5-flash", "gemini-2.5-pro", "gemini-embedding-001"]


def _version(call: Call) -> None:
    if call.request.path_params["version"] not in _VERSIONS:
        raise Problem(404, f"Version {call.request.path_params['version']} is not supported.")


def _usage(body: dict[str, Any], candidates: int) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "promptTokenCount": PROMPT_TOKENS,
        "candidatesTokenCount": candidates,
        "totalTokenCount": PROMPT_TOKENS + candidates,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": PROMPT_TOKENS}],
    }
    if body.get("cachedContent"):
        usage["cachedContentTokenCount"] = CACHED_TOKENS
        usage["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": CACHED_TOKENS}]
    return usage


def _said(body: dict[str, Any]) -> list[str]:
    if not isinstance(body.get("contents"), list) or not body["contents"]:
        raise Problem(400, "* GenerateContentRequest.contents: contents is not specified")
    config = body.get("generationConfig")
    return words(limit(config if isinstance(config, dict) else {}, "maxOutputTokens"))


def _answer(body: dict[str, Any], model_name: str, ident: str, text: str, candidates: int,
            finished: bool) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
    if finished:
        candidate["finishReason"] = "STOP"
    return {"candidates": [candidate], "usageMetadata": _usage(body, candidates), "modelVersion": model_name,
            "responseId": ident}


async def _generate(call: Call, model_name: str, stream: bool) -> Response:
    body = call.json()
    said = _said(body)
    ident = new_id("", 22)
    if not stream:
        return JSONResponse(_answer(body, model_name, ident, "".join(said), len(said), True))
    chunks = [_answer(body, model_name, ident, word, index + 1, index == len(said) - 1)
              for index, word in enumerate(said)] or [_answer(body, model_name, ident, "", 0, True)]
    if call.request.query_params.get("alt") != "sse":
        return JSONResponse(chunks)
    events: list[tuple[str | None, dict | str]] = [(None, chunk) for chunk in chunks]
    return StreamingResponse(sse(events, call.interval, crlf=True), media_type="text/event-stream")


async def _count(call: Call) -> Response:
    body = call.json()
    request = body.get("generateContentRequest")
    request = request if isinstance(request, dict) else body
    if not isinstance(request.get("contents"), list):
        raise Problem(400, "* CountTokensRequest.contents: contents is not specified")
    answer: dict[str, Any] = {"totalTokens": PROMPT_TOKENS,
                              "promptTokensDetails": [{"modality": "TEXT", "tokenCount": PROMPT_TOKENS}]}
    if request.get("cachedContent"):
        answer["cachedContentTokenCount"] = CACHED_TOKENS
    return JSONResponse(answer)


_VALUES = {"values": [0.1, 0.2, 0.3]}


async def _embed(call: Call) -> Response:
    body = call.json()
    if not isinstance(body.get("content"), dict):
        raise Problem(400, "* EmbedContentRequest.content: content is not specified")
    return JSONResponse({"embedding": _VALUES})


async def _embed_batch(call: Call) -> Response:
    body = call.json()
    requests = body.get("requests")
    if not isinstance(requests, list) or not requests:
        raise Problem(400, "* BatchEmbedContentsRequest.requests: requests is not specified")
    return JSONResponse({"embeddings": [_VALUES for _ in requests]})


def _model(name: str) -> dict[str, Any]:
    embeds = "embedding" in name
    return {
        "name": f"models/{name}",
        "version": "001",
        "displayName": name,
        "description": f"{name} (mock)",
        "inputTokenLimit": 2048 if embeds else 1048576,
        "outputTokenLimit": 1 if embeds else 65536,
        "supportedGenerationMethods": ["embedContent", "countTokens"] if embeds
        else ["generateContent", "countTokens", "createCachedContent", "batchGenerateContent"],
    }


async def list_models(call: Call) -> Response:
    _version(call)
    query = call.request.query_params
    try:
        start = int(query.get("pageToken") or 0)
        size = max(1, min(1000, int(query.get("pageSize") or 50)))
    except ValueError:
        raise Problem(400, "Invalid page token or size.") from None
    page = _MODELS[start:start + size]
    answer: dict[str, Any] = {"models": [_model(name) for name in page]}
    if start + size < len(_MODELS):
        answer["nextPageToken"] = str(start + size)
    return JSONResponse(answer)


async def model_action(call: Call) -> Response:
    """``GET models/{model}``, or ``POST models/{model}:{method}``."""
    _version(call)
    name, _, method = call.request.path_params["target"].partition(":")
    if call.request.method == "GET":
        if method:
            raise Problem(404, f"Method {method} cannot be read.")
        return JSONResponse(_model(name))
    if method == "generateContent":
        return await _generate(call, name, stream=False)
    if method == "streamGenerateContent":
        return await _generate(call, name, stream=True)
    if method == "countTokens":
        return await _count(call)
    if method == "embedContent":
        return await _embed(call)
    if method == "batchEmbedContents":
        return await _embed_batch(call)
    raise Problem(404, f"Method models.{method or '(none)'} is not found for this API version.")


TABLE: list[tuple[str, Handler, list[str]]] = [
    ("/{version}/models", list_models, ["GET"]),
    ("/{version}/models/{target}", model_action, ["GET", "POST"]),
]
