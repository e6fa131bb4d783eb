"""OpenAI's API families, in the shapes the official API documents (so the ``openai`` SDK parses them):
chat completions, completions, responses, embeddings, moderations, images, audio, files, batches.

The same table serves every kind that speaks OpenAI's API, under its own path: the root and
``openai``/``openai-compatible``/``mistral`` at ``/v1``, ``gemini-openai`` at ``/v1beta/openai``, Azure
at ``/openai/v1`` and, for its deployment paths, ``/openai/deployments/{deployment}`` (where
``api-version`` is required and the answer's model is the deployment). A kind adds what its provider
adds: Azure its content-filter annotations (and a first stream chunk without choices), Mistral an id on
embeddings, the role in a stream's first chunk and usage in its last (its SDK requires them).

Usage is reported where the real API reports it: prompt 9 tokens, one completion token per word.

Batches and files live in the account's memory. A batch is settled by the first read after the one
that made it (retrieve, list): ``validating`` becomes ``completed`` (every line answered into an output
file) or ``failed`` (a line the API would refuse); ``cancel`` before that makes it ``cancelling``, and
the next read ``cancelled``. So a test sees every state without waiting.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from authz.upstreams import Kind

from .core import (
    PROMPT_TOKENS,
    Account,
    Call,
    Handler,
    Mock,
    Problem,
    StoredFile,
    limit,
    model,
    models,
    new_id,
    now,
    sse,
    words,
)

#: A 1x1 PNG: every generated or edited image.
PNG_B64 = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==")
#: An MPEG audio frame header and silence: every spoken answer.
_AUDIO = b"\xff\xfb\x90\x64" + bytes(413)
_AUDIO_TYPES = {"mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac", "flac": "audio/flac",
                "wav": "audio/wav", "pcm": "audio/pcm"}
_IMAGE_TOKENS = {"low": 272, "medium": 1056, "high": 4160}
_EDIT_IMAGE_TOKENS = 194
_MODERATION_CATEGORIES = ["harassment", "harassment/threatening", "hate", "hate/threatening", "illicit",
                          "illicit/violent", "self-harm", "self-harm/instructions", "self-harm/intent", "sexual",
                          "sexual/minors", "violence", "violence/graphic"]
_FILTERS = {name: {"filtered": False, "severity": "safe"} for name in ("hate", "self_harm", "sexual", "violence")}
_PURPOSES = {"assistants", "batch", "fine-tune", "vision", "user_data", "evals"}
_BATCH_ENDPOINTS = {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/moderations"}


def _usage(completion: int) -> dict[str, int]:
    return {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": completion, "total_tokens": PROMPT_TOKENS + completion}


def _model(call: Call, body: dict[str, Any], default: Any) -> Any:
    """The answer's model: the deployment on Azure's deployment paths, else the request's."""
    return call.request.path_params.get("deployment") or body.get("model", default)


# -- chat completions (and Mistral's FIM, which answers in the same shape) ---------------------------------


def chat_completion(kind: Kind | None, model_name: Any, said: list[str]) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "id": new_id("chatcmpl-", 12),
        "object": "chat.completion",
        "created": now(),
        "model": model_name,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "".join(said)}, "finish_reason": "stop"}
        ],
        "usage": _usage(len(said)),
    }
    if kind is Kind.AZURE:
        answer["prompt_filter_results"] = [{"prompt_index": 0, "content_filter_results": _FILTERS}]
        answer["choices"][0]["content_filter_results"] = _FILTERS
    return answer


def _azure_filter_chunk() -> tuple[None, dict[str, Any]]:
    # Azure opens a stream with the prompt's filter results: no choices, no usage, empty id and model.
    return (None, {"id": "", "object": "", "created": 0, "model": "", "choices": [],
                   "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": _FILTERS}]})


async def chat_completions(call: Call) -> Response:
    body = call.json()
    kind = call.account.kind
    model_name = _model(call, body, "gpt-4o-mini")
    said = words(limit(body, "max_tokens", "max_completion_tokens"))
    if not body.get("stream"):
        return JSONResponse(chat_completion(kind, model_name, said))
    ident = new_id("chatcmpl-", 12)

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> tuple[None, dict[str, Any]]:
        return (None, {"id": ident, "object": "chat.completion.chunk", "created": now(), "model": model_name,
                       "choices": choices, **extra})

    def delta(content: dict[str, Any], finish: str | None = None) -> list[dict[str, Any]]:
        return [{"index": 0, "delta": content, "finish_reason": finish}]

    chunks: list[tuple[str | None, dict | str]] = [_azure_filter_chunk()] if kind is Kind.AZURE else []
    if kind is Kind.MISTRAL:
        chunks.append(chunk(delta({"role": "assistant", "content": ""})))
        chunks += [chunk(delta({"content": word})) for word in said]
        chunks.append(chunk(delta({"content": ""}, "stop"), usage=_usage(len(said))))
    else:
        chunks += [chunk(delta({"content": word})) for word in said]
        chunks.append(chunk(delta({}, "stop")))
        if (body.get("stream_options") or {}).get("include_usage"):
            chunks.append(chunk([], usage=_usage(len(said))))
    chunks.append((None, "[DONE]"))
    return StreamingResponse(sse(chunks, call.interval), media_type="text/event-stream")


# -- completions (legacy) ------------------------------------------------------------------------------------


def completion(kind: Kind | None, model_name: Any, said: list[str]) -> dict[str, Any]:
    choice: dict[str, Any] = {"text": "".join(said), "index": 0, "logprobs": None, "finish_reason": "stop"}
    if kind is Kind.AZURE:
        choice["content_filter_results"] = _FILTERS
    return {"id": new_id("cmpl-", 12), "object": "text_completion", "created": now(), "model": model_name,
            "choices": [choice], "usage": _usage(len(said))}


async def completions(call: Call) -> Response:
    body = call.json()
    kind = call.account.kind
    model_name = _model(call, body, "gpt-3.5-turbo-instruct")
    said = words(limit(body, "max_tokens"))
    if not body.get("stream"):
        return JSONResponse(completion(kind, model_name, said))
    ident = new_id("cmpl-", 12)

    def chunk(text: str, finish: str | None) -> tuple[None, dict[str, Any]]:
        return (None, {"id": ident, "object": "text_completion", "created": now(), "model": model_name,
                       "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]})

    chunks: list[tuple[str | None, dict | str]] = [_azure_filter_chunk()] if kind is Kind.AZURE else []
    chunks += [chunk(word, None) for word in said]
    chunks.append(chunk("", "stop"))
    if (body.get("stream_options") or {}).get("include_usage"):
        chunks.append((None, {"id": ident, "object": "text_completion", "created": now(), "model": model_name,
                              "choices": [], "usage": _usage(len(said))}))
    chunks.append((None, "[DONE]"))
    return StreamingResponse(sse(chunks, call.interval), media_type="text/event-stream")


# -- embeddings ----------------------------------------------------------------------------------------------


def embedding(kind: Kind | None, model_name: Any, body: dict[str, Any]) -> dict[str, Any]:
    inputs = body.get("input", "")
    inputs = inputs if isinstance(inputs, list) else [inputs]
    answer: dict[str, Any] = {
        "object": "list",
        "model": model_name,
        "data": [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]} for i in range(len(inputs))],
        "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)},
    }
    if kind is Kind.MISTRAL:
        answer = {"id": new_id("embd-", 24), **answer}
    return answer


async def embeddings(call: Call) -> Response:
    body = call.json()
    return JSONResponse(embedding(call.account.kind, _model(call, body, body.get("model")), body))


# -- responses -----------------------------------------------------------------------------------------------


def _response(body: dict[str, Any], model_name: Any, ident: str, item: dict[str, Any] | None,
              said: list[str] | None) -> dict[str, Any]:
    """A Response object: in progress (no item yet) or completed with ``item`` and its usage."""
    done = item is not None and said is not None
    usage = None
    if said is not None:
        usage = {"input_tokens": PROMPT_TOKENS, "input_tokens_details": {"cached_tokens": 0},
                 "output_tokens": len(said), "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": PROMPT_TOKENS + len(said)}
    return {
        "id": ident,
        "object": "response",
        "created_at": now(),
        "status": "completed" if done else "in_progress",
        "background": False,
        "completed_at": now() if done else None,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": model_name,
        "output": [item] if item is not None else [],
        "parallel_tool_calls": True,
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "store": body.get("store", True) is not False,
        "temperature": body.get("temperature", 1.0),
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": "auto",
        "tools": [],
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": usage,
        "user": None,
        "metadata": body.get("metadata") or {},
    }


def _message(ident: str, text: str, status: str) -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
    if status != "completed":
        content = []
    return {"type": "message", "id": ident, "status": status, "role": "assistant", "content": content}


def response(body: dict[str, Any], model_name: Any) -> dict[str, Any]:
    said = words(limit(body, "max_output_tokens"))
    return _response(body, model_name, new_id("resp_", 32), _message(new_id("msg_", 32), "".join(said), "completed"),
                     said)


async def create_response(call: Call) -> Response:
    body = call.json()
    model_name = _model(call, body, "gpt-4o-mini")
    said = words(limit(body, "max_output_tokens"))
    ident, item_id, text = new_id("resp_", 32), new_id("msg_", 32), "".join(said)
    finished = _response(body, model_name, ident, _message(item_id, text, "completed"), said)
    if finished["store"]:
        call.account.responses[ident] = finished
    if not body.get("stream"):
        return JSONResponse(finished)
    started = _response(body, model_name, ident, None, None)
    part: dict[str, Any] = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    at = {"item_id": item_id, "output_index": 0, "content_index": 0}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": started},
        {"type": "response.in_progress", "response": started},
        {"type": "response.output_item.added", "output_index": 0, "item": _message(item_id, "", "in_progress")},
        {"type": "response.content_part.added", **at, "part": part},
        *({"type": "response.output_text.delta", **at, "delta": word, "logprobs": []} for word in said),
        {"type": "response.output_text.done", **at, "text": text, "logprobs": []},
        {"type": "response.content_part.done", **at, "part": {**part, "text": text}},
        {"type": "response.output_item.done", "output_index": 0, "item": finished["output"][0]},
        {"type": "response.completed", "response": finished},
    ]
    framed: list[tuple[str | None, dict | str]] = [
        (event["type"], {**event, "sequence_number": number}) for number, event in enumerate(events)
    ]
    return StreamingResponse(sse(framed, call.interval), media_type="text/event-stream")


async def response_item(call: Call) -> Response:
    ident = call.request.path_params["id"]
    stored = call.account.responses.get(ident)
    if stored is None:
        raise Problem(404, f"Response with id '{ident}' not found.", param="response_id")
    if call.request.method == "DELETE":
        del call.account.responses[ident]
        return JSONResponse({"id": ident, "object": "response", "deleted": True})
    return JSONResponse(stored)


# -- moderations ---------------------------------------------------------------------------------------------


def moderation(model_name: Any, body: dict[str, Any]) -> dict[str, Any]:
    given = body.get("input", "")
    # A list of strings is several inputs; a list of text/image parts is one.
    count = len(given) if isinstance(given, list) and all(isinstance(i, str) for i in given) else 1
    result = {
        "flagged": False,
        "categories": dict.fromkeys(_MODERATION_CATEGORIES, False),
        "category_scores": dict.fromkeys(_MODERATION_CATEGORIES, 0.0001),
        "category_applied_input_types": {c: ["text"] for c in _MODERATION_CATEGORIES},
    }
    return {"id": new_id("modr-", 24), "model": model_name, "results": [result] * max(count, 1)}


async def moderations(call: Call) -> Response:
    body = call.json()
    return JSONResponse(moderation(_model(call, body, "omni-moderation-latest"), body))


# -- images --------------------------------------------------------------------------------------------------


def _count(value: object) -> int:
    try:
        count = int(value) if isinstance(value, str | int) else 1
    except ValueError:
        raise Problem(400, "n must be an integer.", param="n") from None
    if not 1 <= count <= 10:
        raise Problem(400, "n must be between 1 and 10.", param="n")
    return count


def _images(model_name: Any, count: int, quality: Any, image_tokens: int) -> dict[str, Any]:
    answer: dict[str, Any] = {"created": now(), "data": [{"b64_json": PNG_B64} for _ in range(count)]}
    if isinstance(model_name, str) and model_name.startswith("dall-e"):
        # DALL·E reports no usage.
        return answer
    output = _IMAGE_TOKENS.get(quality if isinstance(quality, str) else "", _IMAGE_TOKENS["medium"]) * count
    answer.update(
        background="opaque",
        output_format="png",
        quality=quality if quality in _IMAGE_TOKENS else "medium",
        size="1024x1024",
        usage={"input_tokens": PROMPT_TOKENS + image_tokens, "output_tokens": output,
               "total_tokens": PROMPT_TOKENS + image_tokens + output,
               "input_tokens_details": {"text_tokens": PROMPT_TOKENS, "image_tokens": image_tokens}},
    )
    return answer


async def image_generations(call: Call) -> Response:
    body = call.json()
    if not isinstance(body.get("prompt"), str) or not body["prompt"]:
        raise Problem(400, "Missing required parameter: 'prompt'.", param="prompt", code="missing_required_parameter")
    return JSONResponse(_images(_model(call, body, "dall-e-2"), _count(body.get("n", 1)), body.get("quality"), 0))


async def image_edits(call: Call) -> Response:
    form = await call.form()
    images = form.files.get("image", []) + form.files.get("image[]", [])
    if not images:
        raise Problem(400, "Missing required parameter: 'image'.", param="image", code="missing_required_parameter")
    if not form.text("prompt"):
        raise Problem(400, "Missing required parameter: 'prompt'.", param="prompt", code="missing_required_parameter")
    model_name = call.request.path_params.get("deployment") or form.text("model", "dall-e-2")
    count = _count(form.text("n", "1"))
    return JSONResponse(_images(model_name, count, form.text("quality"), _EDIT_IMAGE_TOKENS * len(images)))


# -- audio ---------------------------------------------------------------------------------------------------


def _audio_usage(model_name: str, output: int) -> dict[str, Any]:
    if model_name.startswith("whisper"):
        # Whisper bills by the second, and says so.
        return {"type": "duration", "seconds": 1}
    return {"type": "tokens", "input_tokens": PROMPT_TOKENS,
            "input_token_details": {"text_tokens": 0, "audio_tokens": PROMPT_TOKENS},
            "output_tokens": output, "total_tokens": PROMPT_TOKENS + output}


async def _heard(call: Call) -> Response:
    form = await call.form()
    if not form.files.get("file"):
        raise Problem(400, "Missing required parameter: 'file'.", param="file", code="missing_required_parameter")
    model_name = call.request.path_params.get("deployment") or form.text("model")
    if not model_name:
        raise Problem(400, "Missing required parameter: 'model'.", param="model", code="missing_required_parameter")
    said = words(None)
    text = "".join(said)
    usage = _audio_usage(model_name, len(said))
    if form.text("stream") == "true" and not model_name.startswith("whisper"):
        events: list[tuple[str | None, dict | str]] = [
            (None, {"type": "transcript.text.delta", "delta": word, "logprobs": []}) for word in said
        ]
        events.append((None, {"type": "transcript.text.done", "text": text, "logprobs": [], "usage": usage}))
        return StreamingResponse(sse(events, call.interval), media_type="text/event-stream")
    answer_format = form.text("response_format", "json")
    if answer_format in ("text", "srt", "vtt"):
        return Response(text + "\n", media_type="text/plain")
    if answer_format == "verbose_json":
        return JSONResponse({"task": "transcribe", "language": "english", "duration": 1.0, "text": text,
                             "segments": [], "usage": usage})
    return JSONResponse({"text": text, "usage": usage})


async def transcriptions(call: Call) -> Response:
    return await _heard(call)


async def translations(call: Call) -> Response:
    return await _heard(call)


async def speech(call: Call) -> Response:
    body = call.json()
    if not isinstance(body.get("input"), str) or not body["input"]:
        raise Problem(400, "Missing required parameter: 'input'.", param="input", code="missing_required_parameter")
    if body.get("stream_format") == "sse":
        audio = base64.b64encode(_AUDIO).decode()
        usage = {"input_tokens": PROMPT_TOKENS, "output_tokens": len(words(None)),
                 "total_tokens": PROMPT_TOKENS + len(words(None))}
        events: list[tuple[str | None, dict | str]] = [
            (None, {"type": "speech.audio.delta", "audio": audio}),
            (None, {"type": "speech.audio.done", "usage": usage}),
        ]
        return StreamingResponse(sse(events, call.interval), media_type="text/event-stream")
    kind = body.get("response_format", "mp3")
    return Response(_AUDIO, media_type=_AUDIO_TYPES.get(kind, "audio/mpeg"))


# -- files ---------------------------------------------------------------------------------------------------


def _page(items: list[dict[str, Any]], request: Request, default_limit: int) -> dict[str, Any]:
    """A cursor page of ``items`` (newest first unless ``order=asc``), as ``after`` and ``limit`` ask."""
    query = request.query_params
    if query.get("order") != "asc":
        items = items[::-1]
    after = query.get("after")
    if after:
        ids = [item["id"] for item in items]
        items = items[ids.index(after) + 1:] if after in ids else []
    try:
        size = int(query.get("limit", default_limit))
    except ValueError:
        raise Problem(400, "limit must be an integer.", param="limit") from None
    page = items[:max(size, 1)]
    return {"object": "list", "data": page, "has_more": len(items) > len(page),
            "first_id": page[0]["id"] if page else None, "last_id": page[-1]["id"] if page else None}


def _stored(account: Account, ident: str) -> StoredFile:
    stored = account.files.get(ident)
    if stored is None:
        raise Problem(404, f"No such File object: {ident}", param="id")
    return stored


def keep_file(account: Account, filename: str, content: bytes, purpose: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"id": new_id("file-", 22), "object": "file", "bytes": len(content), "created_at": now(),
            "filename": filename, "purpose": purpose, "status": "processed", "status_details": None,
            "expires_at": None}
    account.files[meta["id"]] = StoredFile(meta, content)
    return meta


async def files(call: Call) -> Response:
    if call.request.method == "GET":
        purpose = call.request.query_params.get("purpose")
        listed = [f.meta for f in call.account.files.values() if purpose in (None, f.meta["purpose"])]
        return JSONResponse(_page(listed, call.request, 10000))
    form = await call.form()
    uploaded = form.files.get("file")
    if not uploaded:
        raise Problem(400, "Missing required parameter: 'file'.", param="file", code="missing_required_parameter")
    purpose = form.text("purpose")
    if purpose not in _PURPOSES:
        raise Problem(400, f"'{purpose}' is not one of {sorted(_PURPOSES)} - 'purpose'", param="purpose")
    filename, content, _ = uploaded[0]
    return JSONResponse(keep_file(call.account, filename or "upload", content, purpose))


async def file(call: Call) -> Response:
    ident = call.request.path_params["id"]
    stored = _stored(call.account, ident)
    if call.request.method == "DELETE":
        del call.account.files[ident]
        return JSONResponse({"id": ident, "object": "file", "deleted": True})
    return JSONResponse(stored.meta)


async def file_content(call: Call) -> Response:
    return Response(_stored(call.account, call.request.path_params["id"]).content,
                    media_type="application/octet-stream")


# -- batches -------------------------------------------------------------------------------------------------


def _endpoint(url: object) -> str | None:
    """A batch endpoint as ``/v1/…`` (Azure names them without the version)."""
    if not isinstance(url, str):
        return None
    path = url if url.startswith("/v1/") else "/v1" + url
    return path if path in _BATCH_ENDPOINTS else None


def _answer(kind: Kind | None, endpoint: str, body: dict[str, Any]) -> tuple[dict[str, Any], int, int]:
    """What ``endpoint`` answers ``body`` (never a stream), with its input and output tokens."""
    model_name = body.get("model")
    if endpoint == "/v1/chat/completions":
        said = words(limit(body, "max_tokens", "max_completion_tokens"))
        return chat_completion(kind, model_name, said), PROMPT_TOKENS, len(said)
    if endpoint == "/v1/completions":
        said = words(limit(body, "max_tokens"))
        return completion(kind, model_name, said), PROMPT_TOKENS, len(said)
    if endpoint == "/v1/responses":
        answer = response(body, model_name)
        return answer, answer["usage"]["input_tokens"], answer["usage"]["output_tokens"]
    if endpoint == "/v1/embeddings":
        answer = embedding(kind, model_name, body)
        return answer, answer["usage"]["prompt_tokens"], 0
    return moderation(model_name, body), 0, 0


def _run(account: Account, batch: dict[str, Any]) -> None:
    """Answer every line of a validating batch into an output file, or fail it on the first bad line."""
    stored = account.files.get(str(batch["input_file_id"]))
    if stored is None:
        batch.update(status="failed", failed_at=now(), errors={"object": "list", "data": [
            {"code": "file_not_found", "message": "The input file was deleted.", "param": None, "line": None}]})
        return
    lines = [line for line in stored.content.decode("utf-8", "replace").splitlines() if line.strip()]
    seen: set[str] = set()
    requests: list[tuple[str, dict[str, Any]]] = []
    for number, line in enumerate(lines, 1):
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        problem = None
        if not isinstance(entry, dict):
            problem = ("invalid_json_line", "This line is not parseable as valid JSON.")
        elif not isinstance(entry.get("custom_id"), str):
            problem = ("missing_required_parameter", "Each line needs a custom_id.")
        elif entry["custom_id"] in seen:
            problem = ("duplicate_custom_id", f"The custom_id {entry['custom_id']!r} is used twice in the file.")
        elif entry.get("method") != "POST" or _endpoint(entry.get("url")) != batch["endpoint"]:
            problem = ("mismatched_endpoint", f"The line's method and url must be POST {batch['endpoint']}.")
        elif not isinstance(entry.get("body"), dict):
            problem = ("invalid_request", "The line's body must be a JSON object.")
        if problem is not None:
            batch.update(status="failed", failed_at=now(), errors={
                "object": "list", "data": [{"code": problem[0], "message": problem[1], "param": None, "line": number}]})
            return
        assert isinstance(entry, dict)
        seen.add(entry["custom_id"])
        requests.append((entry["custom_id"], entry["body"]))
    output, spent_in, spent_out = [], 0, 0
    for custom_id, body in requests:
        answer, tokens_in, tokens_out = _answer(account.kind, batch["endpoint"], body)
        spent_in, spent_out = spent_in + tokens_in, spent_out + tokens_out
        output.append(json.dumps({"id": new_id("batch_req_", 32), "custom_id": custom_id, "error": None,
                                  "response": {"status_code": 200, "request_id": new_id("", 32), "body": answer}}))
    made = keep_file(account, f"{batch['id']}_output.jsonl", ("\n".join(output) + "\n").encode(), "batch_output")
    at = now()
    batch.update(status="completed", in_progress_at=at, finalizing_at=at, completed_at=at, output_file_id=made["id"],
                 request_counts={"total": len(requests), "completed": len(requests), "failed": 0},
                 usage={"input_tokens": spent_in, "input_tokens_details": {"cached_tokens": 0},
                        "output_tokens": spent_out, "output_tokens_details": {"reasoning_tokens": 0},
                        "total_tokens": spent_in + spent_out})


def _settle(account: Account, batch: dict[str, Any]) -> dict[str, Any]:
    if batch["status"] == "validating":
        _run(account, batch)
    elif batch["status"] == "cancelling":
        batch.update(status="cancelled", cancelled_at=now())
    return batch


async def batches(call: Call) -> Response:
    account = call.account
    if call.request.method == "GET":
        listed = [_settle(account, batch) for batch in account.batches.values()]
        return JSONResponse(_page(listed, call.request, 20))
    body = call.json()
    endpoint = _endpoint(body.get("endpoint"))
    if endpoint is None:
        raise Problem(400, f"endpoint must be one of {sorted(_BATCH_ENDPOINTS)}.", param="endpoint")
    if body.get("completion_window") != "24h":
        raise Problem(400, "completion_window must be '24h'.", param="completion_window")
    input_file = _stored(account, str(body.get("input_file_id")))
    if input_file.meta["purpose"] != "batch":
        raise Problem(400, "The input file must have purpose 'batch'.", param="input_file_id")
    at = now()
    batch: dict[str, Any] = {
        "id": new_id("batch_", 24), "object": "batch", "endpoint": endpoint, "model": None, "errors": None,
        "input_file_id": input_file.meta["id"], "completion_window": "24h", "status": "validating",
        "output_file_id": None, "error_file_id": None, "created_at": at, "in_progress_at": None,
        "expires_at": at + 86400, "finalizing_at": None, "completed_at": None, "failed_at": None, "expired_at": None,
        "cancelling_at": None, "cancelled_at": None, "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "metadata": body.get("metadata"), "usage": None,
    }
    account.batches[batch["id"]] = batch
    return JSONResponse(batch)


def _batch(call: Call) -> dict[str, Any]:
    ident = call.request.path_params["id"]
    batch = call.account.batches.get(ident)
    if batch is None:
        raise Problem(404, f"No batch found with id '{ident}'.", param="batch_id")
    return batch


async def batch_item(call: Call) -> Response:
    return JSONResponse(_settle(call.account, _batch(call)))


async def cancel_batch(call: Call) -> Response:
    batch = _batch(call)
    if batch["status"] not in ("validating", "in_progress", "cancelling"):
        raise Problem(409, f"Cannot cancel a batch with status '{batch['status']}'.")
    if batch["status"] != "cancelling":
        batch.update(status="cancelling", cancelling_at=now())
    return JSONResponse(batch)


# -- the route tables ----------------------------------------------------------------------------------------

#: Every family, relative to the API's base (``/v1`` at OpenAI).
TABLE: list[tuple[str, Handler, list[str]]] = [
    ("/chat/completions", chat_completions, ["POST"]),
    ("/completions", completions, ["POST"]),
    ("/embeddings", embeddings, ["POST"]),
    ("/responses", create_response, ["POST"]),
    ("/responses/{id}", response_item, ["GET", "DELETE"]),
    ("/moderations", moderations, ["POST"]),
    ("/images/generations", image_generations, ["POST"]),
    ("/images/edits", image_edits, ["POST"]),
    ("/audio/transcriptions", transcriptions, ["POST"]),
    ("/audio/translations", translations, ["POST"]),
    ("/audio/speech", speech, ["POST"]),
    ("/files", files, ["GET", "POST"]),
    ("/files/{id}", file, ["GET", "DELETE"]),
    ("/files/{id}/content", file_content, ["GET"]),
    ("/batches", batches, ["GET", "POST"]),
    ("/batches/{id}", batch_item, ["GET"]),
    ("/batches/{id}/cancel", cancel_batch, ["POST"]),
    ("/models", models, ["GET"]),
    ("/models/{name:path}", model, ["GET"]),
]

#: Mistral's own: fill-in-the-middle, answered like a chat completion.
MISTRAL_TABLE: list[tuple[str, Handler, list[str]]] = [("/fim/completions", chat_completions, ["POST"])]

#: What Azure serves under ``/openai/deployments/{deployment}`` (the families its SDK sends there).
_AZURE_DEPLOYMENT_TABLE: list[tuple[str, Handler, list[str]]] = [
    (path, handler, methods) for path, handler, methods in TABLE
    if path in ("/chat/completions", "/completions", "/embeddings", "/images/generations", "/images/edits",
                "/audio/transcriptions", "/audio/translations", "/audio/speech")
]


def _versioned(handler: Handler) -> Handler:
    """``handler`` behind Azure's ``api-version`` query parameter, which its dated API requires."""

    async def versioned(call: Call) -> Response:
        if not call.request.query_params.get("api-version"):
            raise Problem(400, "The api-version query parameter (?api-version=) is required for all requests.",
                          code="MissingApiVersionParameter")
        return await handler(call)

    versioned.__name__ = handler.__name__
    return versioned


def azure_routes(mock: Mock, account: Account) -> list[Route]:
    """Azure OpenAI: the v1 API, the deployment paths, and the dated API's other families."""
    dated = [(path, _versioned(handler), methods) for path, handler, methods in TABLE
             if (path, handler, methods) not in _AZURE_DEPLOYMENT_TABLE]
    return (mock.routes(account, "/openai/v1", TABLE)
            + mock.routes(account, "/openai/deployments/{deployment}",
                          [(path, _versioned(handler), methods) for path, handler, methods in _AZURE_DEPLOYMENT_TABLE])
            + mock.routes(account, "/openai", dated))
