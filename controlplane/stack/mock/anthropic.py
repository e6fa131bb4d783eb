"""Anthropic's API: messages (streaming included), count_tokens and message batches, in its own shapes.

Usage: input 9 tokens, one output token per word. A message batch is settled by the first read after
the one that made it (retrieve, list, results): ``in_progress`` becomes ``ended`` with every request
answered (or ``errored`` when its params lack what the API requires); ``cancel`` before that makes it
``canceling``, and the next read ends it with every request ``canceled``. Its ``results_url`` is
absolute, as the real API's is, on the host the request named.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.responses import JSONResponse, Response, StreamingResponse

from .core import PROMPT_TOKENS, Call, Handler, Problem, limit, model, models, new_id, sse, words


def message(model_name: Any, said: list[str]) -> dict[str, Any]:
    return {
        "id": new_id("msg_", 12),
        "type": "message",
        "role": "assistant",
        "model": model_name,
        "content": [{"type": "text", "text": "".join(said)}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": PROMPT_TOKENS, "output_tokens": len(said)},
    }


def stream_events(model_name: Any, said: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """A message's stream: (event name, data) from ``message_start`` to ``message_stop``."""
    events: list[tuple[str, dict[str, Any]]] = [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": new_id("msg_", 12),
                    "type": "message",
                    "role": "assistant",
                    "model": model_name,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": PROMPT_TOKENS, "output_tokens": 1},
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
        for word in said
    ]
    events += [
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": len(said)},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    return events


async def messages(call: Call) -> Response:
    body = call.json()
    model_name = body.get("model", "claude-haiku-4-5")
    said = words(limit(body, "max_tokens", "max_completion_tokens"))
    if body.get("stream"):
        events: list[tuple[str | None, dict | str]] = list(stream_events(model_name, said))
        return StreamingResponse(sse(events, call.interval), media_type="text/event-stream")
    return JSONResponse(message(model_name, said))


async def count_tokens(call: Call) -> Response:
    return JSONResponse({"input_tokens": PROMPT_TOKENS})


# -- message batches -----------------------------------------------------------------------------------------


def _rfc3339(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _missing(params: dict[str, Any]) -> str | None:
    for name, kind in (("model", str), ("max_tokens", int), ("messages", list)):
        if not isinstance(params.get(name), kind):
            return f"{name}: Field required"
    return None


def _settle(call: Call, entry: dict[str, Any]) -> dict[str, Any]:
    batch = entry["batch"]
    if batch["processing_status"] == "ended":
        return batch
    results: list[dict[str, Any]] = []
    counts = dict.fromkeys(("processing", "succeeded", "errored", "canceled", "expired"), 0)
    for custom_id, params in entry["requests"]:
        if batch["processing_status"] == "canceling":
            result: dict[str, Any] = {"type": "canceled"}
        elif (missing := _missing(params)) is not None:
            result = {"type": "errored", "error": {"type": "error", "error": {"type": "invalid_request_error",
                                                                             "message": missing}}}
        else:
            said = words(limit(params, "max_tokens"))
            result = {"type": "succeeded", "message": message(params["model"], said)}
        counts[result["type"]] += 1
        results.append({"custom_id": custom_id, "result": result})
    entry["results"] = results
    origin = str(call.request.base_url).rstrip("/")
    batch.update(processing_status="ended", request_counts=counts, ended_at=_rfc3339(datetime.now(UTC)),
                 results_url=f"{origin}{call.account.prefix}/v1/messages/batches/{batch['id']}/results")
    return batch


def _entry(call: Call) -> dict[str, Any]:
    ident = call.request.path_params["id"]
    entry = call.account.message_batches.get(ident)
    if entry is None:
        raise Problem(404, f"Message batch {ident} not found.")
    return entry


async def message_batches(call: Call) -> Response:
    account = call.account
    if call.request.method == "GET":
        listed = [_settle(call, entry) for entry in account.message_batches.values()][::-1]
        after = call.request.query_params.get("after_id")
        if after:
            ids = [batch["id"] for batch in listed]
            listed = listed[ids.index(after) + 1:] if after in ids else []
        try:
            size = max(1, min(1000, int(call.request.query_params.get("limit", "20"))))
        except ValueError:
            raise Problem(400, "limit: Input should be a valid integer") from None
        page = listed[:size]
        return JSONResponse({"data": page, "has_more": len(listed) > size,
                             "first_id": page[0]["id"] if page else None, "last_id": page[-1]["id"] if page else None})
    body = call.json()
    given = body.get("requests")
    if not isinstance(given, list) or not given:
        raise Problem(400, "requests: Field required (a non-empty list)")
    requests: list[tuple[str, dict[str, Any]]] = []
    for index, item in enumerate(given):
        if (not isinstance(item, dict) or not isinstance(item.get("custom_id"), str)
                or not isinstance(item.get("params"), dict)):
            raise Problem(400, f"requests.{index}: custom_id and params are required")
        if item["custom_id"] in {custom_id for custom_id, _ in requests}:
            raise Problem(400, f"requests.{index}.custom_id: {item['custom_id']!r} is used twice")
        requests.append((item["custom_id"], item["params"]))
    created = datetime.now(UTC)
    batch: dict[str, Any] = {
        "id": new_id("msgbatch_", 24), "type": "message_batch", "processing_status": "in_progress",
        "request_counts": {"processing": len(requests), "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0},
        "ended_at": None, "created_at": _rfc3339(created), "expires_at": _rfc3339(created + timedelta(days=1)),
        "archived_at": None, "cancel_initiated_at": None, "results_url": None,
    }
    account.message_batches[batch["id"]] = {"batch": batch, "requests": requests, "results": None}
    return JSONResponse(batch)


async def message_batch(call: Call) -> Response:
    entry = _entry(call)
    batch = _settle(call, entry)
    if call.request.method == "DELETE":
        del call.account.message_batches[batch["id"]]
        return JSONResponse({"id": batch["id"], "type": "message_batch_deleted"})
    return JSONResponse(batch)


async def message_batch_results(call: Call) -> Response:
    entry = _entry(call)
    _settle(call, entry)
    lines = "".join(json.dumps(result) + "\n" for result in entry["results"])
    return Response(lines, media_type="application/binary")


async def cancel_message_batch(call: Call) -> Response:
    batch = _entry(call)["batch"]
    if batch["processing_status"] == "ended":
        raise Problem(400, f"Message batch {batch['id']} has ended and cannot be canceled.")
    batch.update(processing_status="canceling", cancel_initiated_at=batch["cancel_initiated_at"]
                 or _rfc3339(datetime.now(UTC)))
    return JSONResponse(batch)


#: Anthropic's families relative to ``/v1`` (the root serves ``/v1/models`` for both its APIs).
TABLE: list[tuple[str, Handler, list[str]]] = [
    ("/messages", messages, ["POST"]),
    ("/messages/count_tokens", count_tokens, ["POST"]),
    ("/messages/batches", message_batches, ["GET", "POST"]),
    ("/messages/batches/{id}", message_batch, ["GET", "DELETE"]),
    ("/messages/batches/{id}/results", message_batch_results, ["GET"]),
    ("/messages/batches/{id}/cancel", cancel_message_batch, ["POST"]),
]


def _versioned(handler: Handler) -> Handler:
    """``handler`` behind the ``anthropic-version`` header, which the real API requires."""

    async def versioned(call: Call) -> Response:
        if "anthropic-version" not in call.request.headers:
            raise Problem(400, "anthropic-version: header is required")
        return await handler(call)

    versioned.__name__ = handler.__name__
    return versioned


#: A named Anthropic upstream: the families and the models, all behind ``anthropic-version``.
NAMED_TABLE: list[tuple[str, Handler, list[str]]] = [
    (path, _versioned(handler), methods)
    for path, handler, methods in [*TABLE, ("/models", models, ["GET"]), ("/models/{name:path}", model, ["GET"])]
]
