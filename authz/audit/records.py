"""The two kinds of audit line, built from what authz and Envoy know. Metadata only, never content."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from envoy.data.accesslog.v3.accesslog_pb2 import HTTPAccessLogEntry, HTTPRequestProperties

from authz.pipeline import Decision
from authz.request import GatewayRequest

EXT_AUTHZ_NAMESPACE = "envoy.filters.http.ext_authz"
USAGE_NAMESPACE = "keyward.usage"
#: The ingest schema's limit for free text; client-chosen values are cut to it, never rejected whole.
_TEXT = 512
#: Envoy's request method enum by number, looked up once (a number this build does not know is None).
_METHODS = {value.number: value.name for value in
            HTTPRequestProperties.DESCRIPTOR.fields_by_name["request_method"].enum_type.values}


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat(timespec="microseconds")


def decision_line(decision: Decision, request: GatewayRequest, at: float, status: int | None) -> dict[str, Any]:
    record = decision.record
    return {
        "kind": "decision",
        "at": _iso(at),
        "request_id": request.request_id,
        "token_id": record.token_id if record else None,
        "user_id": record.user_id if record else None,
        "user_email": record.user_email if record else None,
        "team": record.team if record else None,
        "environment": record.environment if record else None,
        "provider": decision.api.value if decision.api else None,
        "method": request.method,
        "route": request.path.split("?", 1)[0][:_TEXT],
        "model": decision.model[:_TEXT] if decision.model else None,
        "decision": decision.outcome.value,
        "status": status,
    }


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
    return {
        "kind": "outcome",
        "at": _iso(common.start_time.seconds + common.start_time.nanos / 1e9),
        "request_id": entry.request.request_id,
        "status": status,
        "upstream_status": status if reached_upstream and status >= 100 else None,
        "response_flags": _flags(entry),
        "details": entry.response.response_code_details[:_TEXT] or None,
        "duration_ms": _ms(common.duration) if common.HasField("duration") else _ms(
            common.time_to_last_downstream_tx_byte),
        "upstream_ms": last_rx - first_tx if first_tx is not None and last_rx is not None else None,
        "bytes_in": entry.request.request_body_bytes,
        "bytes_out": entry.response.response_body_bytes,
        "prompt_tokens": _number(usage, "prompt_tokens"),
        "completion_tokens": _number(usage, "completion_tokens"),
        "decided": decided,
        "method": _METHODS.get(entry.request.request_method),
        "route": (entry.request.original_path or entry.request.path).split("?", 1)[0][:_TEXT],
    }
