"""Exports of audit queries for an auditor: CSV or JSON lines, streamed from a server-side cursor, so
their size is bounded by the window asked for, not by memory.

An export of a hash chain (``chain=``: events, request records) is verifiable offline
(``keyward audit verify-export``, :mod:`controlplane.audit.verify`): each row carries ``seq``,
``prev_hash`` and ``hash`` (hex) and every field the hash covers, in a form that reads back exactly.
Its CSV therefore quotes every value and leaves only a null unquoted and empty, so a null and an
empty text differ, as they do in the hash. With ``signed``, a last line (the *trailer*) states the
number of rows, a digest of their hashes in file order, the chain's last signed head and an Ed25519
signature over all of it: a row removed, added or moved is then detected even in a filtered export,
where gaps in ``seq`` are expected. JSON lines: ``{"keyward_export": {...}}``; CSV:
``# keyward_export {...}``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy import text

from controlplane.audit import signing
from controlplane.core.db import get_sessionmaker

Format = Literal["csv", "jsonl"]
MEDIA_TYPES: dict[str, str] = {"csv": "text/csv", "jsonl": "application/x-ndjson"}
#: Rows are sent in chunks of about this many characters.
_CHUNK = 65536
#: Rows fetched from the server-side cursor at a time: one await per batch, not per row.
_ROWS = 1000
#: The trailer's key (JSON lines) and prefix (CSV).
TRAILER = "keyward_export"


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, uuid.UUID | Decimal):
        return str(value)  # an amount keeps every digit, as the JSON API gives it
    if isinstance(value, bytes | memoryview):
        return bytes(value).hex()  # a chain's hash and prev_hash
    return value


def _exact_cell(value: Any) -> str:
    """A CSV cell that reads back as written: null is empty and unquoted, anything else is quoted."""
    if value is None:
        return ""
    if isinstance(value, dict | list):
        value = json.dumps(value)
    return '"' + str(_jsonable(value)).replace('"', '""') + '"'


async def _head(session: Any, chain_name: str) -> dict[str, Any] | None:
    """The chain's last signed head, as a trailer states it."""
    row = (await session.execute(text(
        "SELECT seq, hash, signature FROM audit_checkpoints WHERE chain = :chain AND kind = 'signed' "
        "ORDER BY seq DESC LIMIT 1"), {"chain": chain_name})).first()
    if row is None:
        return None
    return {"seq": row[0], "hash": bytes(row[1]).hex(), "signature": bytes(row[2]).hex()}


def trailer(chain_name: str, *, rows: int, first_seq: int | None, last_seq: int | None, digest: str,
            head: dict[str, Any] | None, filters: Mapping[str, Any]) -> dict[str, Any]:
    """The trailer's document, signed with the control plane's audit key."""
    document: dict[str, Any] = {
        "chain": chain_name, "rows": rows, "first_seq": first_seq, "last_seq": last_seq,
        "digest": digest, "exported_at": datetime.now(UTC).isoformat(timespec="microseconds"),
        "filters": {k: _jsonable(v) for k, v in filters.items() if v is not None}, "head": head,
    }
    return document | {"signature": signing.current().sign_export(document).hex()}


@dataclass(frozen=True, slots=True)
class Chained:
    """An export of one hash chain (see the module docstring): its name, whether to sign a trailer,
    and the filters the trailer states."""

    chain: str
    signed: bool = False
    filters: Mapping[str, Any] = field(default_factory=dict)


async def _chunks(query: str, params: dict[str, Any], columns: Sequence[str], fmt: Format,
                  settings: Mapping[str, str], chained: Chained | None) -> AsyncGenerator[str, None]:
    async with get_sessionmaker()() as session, session.begin():
        for name, value in settings.items():  # for this transaction only
            await session.execute(text("SELECT set_config(:name, :value, true)"), {"name": name, "value": value})
        head = await _head(session, chained.chain) if chained and chained.signed else None
        result = await session.stream(text(query), params)
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        digest, count, first_seq, last_seq = hashlib.sha256(), 0, None, None
        if fmt == "csv":
            writer.writerow(columns)
        async for rows in result.mappings().partitions(_ROWS):
            if chained is not None:
                for row in rows:
                    digest.update(bytes(row["hash"]))
                first_seq = rows[0]["seq"] if first_seq is None else first_seq
                count, last_seq = count + len(rows), rows[-1]["seq"]
            if fmt == "csv" and chained is not None:
                buffer.writelines(",".join(_exact_cell(row[c]) for c in columns) + "\r\n" for row in rows)
            elif fmt == "csv":
                writer.writerows([json.dumps(v) if isinstance(v, dict) else _jsonable(v) for v in
                                  (row[c] for c in columns)] for row in rows)
            else:
                buffer.writelines(json.dumps({c: _jsonable(row[c]) for c in columns}) + "\n" for row in rows)
            if buffer.tell() > _CHUNK:  # one write per chunk, not per row
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
        if chained is not None and chained.signed:
            document = trailer(chained.chain, rows=count, first_seq=first_seq, last_seq=last_seq,
                               digest=digest.hexdigest(), head=head, filters=chained.filters)
            line = json.dumps(document, separators=(",", ":"))
            buffer.write(f"# {TRAILER} {line}\r\n" if fmt == "csv" else json.dumps({TRAILER: document}) + "\n")
        yield buffer.getvalue()


async def stream(query: str, params: dict[str, Any], columns: Sequence[str], fmt: Format, *,
                 settings: Mapping[str, str] | None = None, chained: Chained | None = None) -> AsyncIterator[str]:
    """The export's text, chunk by chunk. The query runs before this returns: a value the database
    refuses is then an error the caller can answer (a 422), not a 200 whose stream breaks off.
    ``settings``: PostgreSQL settings for the export's transaction (e.g. a larger ``work_mem``).
    ``chained``: the rows are a hash chain's, verifiable offline (see the module docstring)."""
    chunks = _chunks(query, params, columns, fmt, settings or {}, chained)
    first = await anext(chunks, "")

    async def primed() -> AsyncIterator[str]:
        try:
            yield first
            async for chunk in chunks:
                yield chunk
        finally:  # a client that goes away mid-export: end the query and its transaction now
            await chunks.aclose()

    return primed()
