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

import re
import uuid
from datetime import UTC, datetime
from typing import Any

from envoy.data.accesslog.v3.accesslog_pb2 import HTTPAccessLogEntry, HTTPRequestProperties

from authz.pipeline import Decision
from authz.request import GatewayRequest

EXT_AUTHZ_NAMESPACE = "envoy.filters.http.ext_authz"
USAGE_NAMESPACE = "keyward.usage"
#: The ingest schema's limit for free text; client-chosen values are cut to it, never rejected whole.
_TEXT = 512
#: The ingest schema's limit for a request id.
_REQUEST_ID = 128
#: Envoy's request method enum by number, looked up once (a number this build does not know is None).
_METHODS = {value.number: value.name for value in
            HTTPRequestProperties.DESCRIPTOR.fields_by_name["request_method"].enum_type.values}
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
        "provider": decision.api.value if decision.api else None,
        "method": method,
        "route": route,
        "model": model,
        "decision": decision.outcome.value,
        "status": status,
    }
    if changed_id or changed_method or changed_route or changed_model:
        line[SANITIZED] = True
    return line


def _ms(duration: Any) -> int | None:
    if duration is None or not duration.ByteSize():
        return None
    return duration.seconds * 1000 + duration.nanos // 1_000_000


def _flags(entry: HTTPAccessLogEntry) -> str | None:
    flags = entry.common_properties.response_flags
    # Most flags are booleans; "unauthorized by the external service" (UAEX) is a nested message.
    names = [field.name for field, value in flags.ListFields() if value is True or hasattr(value, "ByteSize")]
    return ",".join(names) or None


def _number(fields: Any, key: str) -> int | None:
    value = fields.get(key)
    return int(value.number_value) if value is not None and value.HasField("number_value") else None


def outcome_line(entry: HTTPAccessLogEntry) -> dict[str, Any]:
    common = entry.common_properties
    metadata = common.metadata.filter_metadata
    usage = metadata[USAGE_NAMESPACE].fields if USAGE_NAMESPACE in metadata else {}
    decided = EXT_AUTHZ_NAMESPACE in metadata and "decision" in metadata[EXT_AUTHZ_NAMESPACE].fields
    status = entry.response.response_code.value
    reached_upstream = common.HasField("time_to_first_upstream_rx_byte")
    first_tx, last_rx = _ms(common.time_to_first_upstream_tx_byte), _ms(common.time_to_last_upstream_rx_byte)
    request_id, changed_id = _request_id(entry.request.request_id)
    flags, changed_flags = storable(_flags(entry))
    details, changed_details = storable(entry.response.response_code_details or None)
    method, changed_method = storable(_METHODS.get(entry.request.request_method))
    route, changed_route = storable((entry.request.original_path or entry.request.path).split("?", 1)[0])
    line = {
        "kind": "outcome",
        "at": _iso(common.start_time.seconds + common.start_time.nanos / 1e9),
        "request_id": request_id,
        "status": status,
        "upstream_status": status if reached_upstream and status >= 100 else None,
        "response_flags": flags,
        "details": details,
        "duration_ms": _ms(common.duration) if common.HasField("duration") else _ms(
            common.time_to_last_downstream_tx_byte),
        "upstream_ms": last_rx - first_tx if first_tx is not None and last_rx is not None else None,
        "bytes_in": entry.request.request_body_bytes,
        "bytes_out": entry.response.response_body_bytes,
        "prompt_tokens": _number(usage, "prompt_tokens"),
        "completion_tokens": _number(usage, "completion_tokens"),
        "decided": decided,
        "method": method,
        "route": route,
    }
    if changed_id or changed_flags or changed_details or changed_method or changed_route:
        line[SANITIZED] = True
    return line
