"""The two kinds of audit line, built from what authz and Envoy know. Metadata only, never content.

Invariants:

* a line is storable whatever the client sent: every text the client chose (the request id, the
  method, the route, the model, Envoy's response details) goes through :func:`storable`, which
  replaces what PostgreSQL text cannot hold (NUL; lone surrogates, which are not UTF-8) and what is
  not UTF-8 with U+FFFD and cuts the rest to the ingest schema's limits, so one hostile value can
  never make the control plane refuse the line, or the lines behind it;
* a line whose text had to be changed says so with ``"sanitized": true``; a line that needed
  nothing has no such key, so it is byte for byte what it was before the key existed;
* ``request_id`` is never empty (a fresh id stands in) and never longer than 128 characters.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from datetime import UTC, datetime
from typing import Any

from authz.pipeline import Decision
from authz.request import GatewayRequest

#: The ingest schema's limit for free text; client-chosen values are cut to it, never rejected whole.
_TEXT = 512
#: The ingest schema's limit for a request id.
_REQUEST_ID = 128
#: What a PostgreSQL text column cannot hold: NUL, and surrogates, which have no UTF-8 encoding.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_REPLACEMENT = "\ufffd"
SANITIZED = "sanitized"


def storable(value: str | bytes | None, limit: int = _TEXT) -> tuple[str | None, bool]:
    """``value`` as the audit store can keep it, and whether that changed anything.

    Bytes are read as UTF-8 (what is not UTF-8 becomes U+FFFD); NUL and lone surrogates become
    U+FFFD; the result is cut to ``limit`` characters.

    >>> storable("gpt-4o-mini\\x00x") == ("gpt-4o-mini\\ufffdx", True)
    True
    >>> storable(b"req-\\xff") == ("req-\\ufffd", True)
    True
    >>> storable("gpt-4o-mini")
    ('gpt-4o-mini', False)
    """
    if value is None:
        return None, False
    changed = False
    if isinstance(value, bytes):
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            text, changed = value.decode("utf-8", "replace"), True
    else:
        text = value
    # The common case, ASCII without NUL, costs two C-speed scans and no regex.
    if not text.isascii() or "\x00" in text:
        text, replaced = _UNSTORABLE.subn(_REPLACEMENT, text)
        changed = changed or replaced > 0
    if len(text) > limit:
        text, changed = text[:limit], True
    return text, changed


def _request_id(value: str | bytes | None) -> tuple[str, bool]:
    request_id, changed = storable(value, _REQUEST_ID)
    if not request_id:
        # The store keys requests by id; a line without one could not be joined or deduplicated.
        return str(uuid.uuid4()), True
    return request_id, changed


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat(timespec="microseconds")


def seconds_of(at: str) -> float:
    """A line's ``at`` (ISO 8601) in seconds since the epoch; 0 for what is not a time."""
    try:
        return datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def decision_line(decision: Decision, request: GatewayRequest, at: float, status: int | None) -> dict[str, Any]:
    record = decision.record
    request_id, changed_id = _request_id(request.request_id)
    method, changed_method = storable(request.method)
    route, changed_route = storable(request.path.split("?", 1)[0])
    model, changed_model = storable(decision.model or None)
    line = {
        "kind": "decision",
        "at": _iso(at),
        "request_id": request_id,
        "token_id": record.token_id if record else None,
        "user_id": record.user_id if record else None,
        "user_email": record.user_email if record else None,
        "team": record.team if record else None,
        "environment": record.environment if record else None,
        # The upstream the request went to (``azure-east`` for a routed OpenAI call), else the API it named.
        "provider": decision.upstream or (decision.api.value if decision.api else None),
        "method": method,
        "route": route,
        "model": model,
        "decision": decision.outcome.value,
        "status": status,
    }
    if record is not None and record.project_id is not None:
        line["project_id"], line["project"] = record.project_id, record.project
    if decision.hit is not None:
        line["limit_scope"] = f"{decision.hit.kind}:{decision.hit.scope[0]}:{decision.hit.scope[1]}"
    if changed_id or changed_method or changed_route or changed_model:
        line[SANITIZED] = True
    return line


def _int(value: Any) -> int | None:
    """A number Envoy wrote (``null``, or ``"-"`` for an unset duration), as an int the schema takes."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value) if value >= 0 else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value not in ("", "-") else None


def outcome_line(document: dict[str, Any], raw: bytes, source: str) -> dict[str, Any]:
    """The outcome line of one line of Envoy's audit log (``envoy/gateway.yaml``, ``audit_log_format``).

    A request Envoy answered before it had an id (a malformed request: 400, 431) gets one derived from
    the line itself and ``source`` (this replica), so reading the same line again gives the same id and
    the store keeps it once."""
    request_id, changed_id = storable(_text(document.get("request_id")), _REQUEST_ID)
    if not request_id:
        request_id = "envoy-" + hashlib.sha256(source.encode() + b"\n" + raw).hexdigest()[:32]
    status = _int(document.get("status")) or 0
    details, changed_details = storable(_text(document.get("details")))
    flags, changed_flags = storable(_text(document.get("flags")))
    method, changed_method = storable(_text(document.get("method")))
    route, changed_route = storable((_text(document.get("route")) or "").split("?", 1)[0] or None)
    at = document.get("at")
    line = {
        "kind": "outcome",
        "at": at if isinstance(at, str) and at else _iso(0),
        "request_id": request_id,
        "status": status,
        # Only what the provider said counts as its status; Envoy's own replies have none.
        "upstream_status": status if details == "via_upstream" and status >= 100 else None,
        "response_flags": flags,
        "details": details,
        "duration_ms": _int(document.get("duration_ms")),
        "upstream_ms": _int(document.get("upstream_ms")),
        "bytes_in": _int(document.get("bytes_in")),
        "bytes_out": _int(document.get("bytes_out")),
        "prompt_tokens": _int(document.get("prompt_tokens")),
        "completion_tokens": _int(document.get("completion_tokens")),
        # Envoy acted on an authz decision exactly when ext_authz left its metadata on the request.
        "decided": isinstance(document.get("decision"), str),
        "authz_decision": storable(_text(document.get("decision")), 64)[0],
        "method": method,
        "route": route,
    }
    if changed_id or changed_flags or changed_details or changed_method or changed_route:
        line[SANITIZED] = True
    return line
