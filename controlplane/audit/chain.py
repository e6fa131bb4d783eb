"""The hash chains that make the audit store tamper-evident.

Each audit table is one chain ordered by ``seq``. A record's hash is
``sha256(prev_hash || canonical(record))`` where the canonical form is compact JSON of the chain's
name and the record's fields in a fixed order, timestamps in UTC with microseconds, UUIDs as text,
amounts of money (decimals) as text with ten decimal places (the columns' scale).
Fields added after the first release (:data:`EXTENSIONS`) follow as one object of those that are set,
and only when one is: a row written before they existed hashes exactly as it always did.
The first record's predecessor is :data:`GENESIS`; after retention drops old partitions, the
predecessor of the first remaining record is the hash pinned by a ``retention`` checkpoint.

A chain alone proves order and integrity, not authorship: whoever can insert rows can compute
sha256. Every head is therefore signed as well (:mod:`controlplane.audit.signing`), with a key the
database never holds.

The same :func:`link` is used when records are written (ingest, events) and when they are
verified (``keyward audit verify``), so both sides agree by construction.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

GENESIS = b"\x00" * 32

EVENTS = "events"
REQUESTS = "request_records"
OUTCOMES = "request_outcomes"

FIELDS: dict[str, tuple[str, ...]] = {
    EVENTS: ("seq", "at", "actor", "mechanism", "action", "target_type", "target_id", "before", "after"),
    REQUESTS: ("seq", "at", "request_id", "source", "token_id", "user_id", "user_email", "team", "environment",
               "provider", "method", "route", "model", "decision", "status"),
    OUTCOMES: ("seq", "at", "request_id", "status", "upstream_status", "response_flags", "details", "duration_ms",
               "upstream_ms", "bytes_in", "bytes_out", "prompt_tokens", "completion_tokens"),
}

#: Fields hashed only when not null, after the fields above (see the module docstring).
EXTENSIONS: dict[str, tuple[str, ...]] = {
    EVENTS: (),
    REQUESTS: ("sanitized", "project_id", "project", "limit_scope"),
    OUTCOMES: ("sanitized", "decided", "cached_tokens", "cost_usd", "cost_input_usd", "cost_cached_usd",
               "cost_output_usd", "price_version", "usage_estimated"),
}

#: The scale of every money column (``numeric(20, 10)``): a decimal is hashed, and stored, at it.
MONEY_PLACES = Decimal("1e-10")

#: Keys for pg_advisory_xact_lock: one writer per chain at a time, across every control-plane replica.
LOCKS = {EVENTS: 0x4B57_0001, REQUESTS: 0x4B57_0002, OUTCOMES: 0x4B57_0003}


def money(value: Decimal) -> Decimal:
    """An amount at the money columns' scale: what the database will hold, and so what is hashed."""
    return value.quantize(MONEY_PLACES, rounding=ROUND_HALF_EVEN)


def plain(value: Any) -> Any:
    """A field's value in the canonical form."""
    if isinstance(value, Decimal):
        return format(money(value), "f")
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="microseconds")
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    return value


#: The canonical form's encoder, built once (``audit verify`` hashes millions of rows).
ENCODE = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode


def canonical(chain: str, record: Mapping[str, Any]) -> bytes:
    values: list[Any] = [chain, *(plain(record[field]) for field in FIELDS[chain])]
    extended = {field: plain(record[field]) for field in EXTENSIONS.get(chain, ()) if record.get(field) is not None}
    if extended:
        values.append(extended)
    return ENCODE(values).encode()


def link(chain: str, prev_hash: bytes, record: Mapping[str, Any]) -> bytes:
    return hashlib.sha256(bytes(prev_hash) + canonical(chain, record)).digest()
