"""Exports of audit queries for an auditor: CSV or JSON lines, streamed from a server-side cursor, so
their size is bounded by the window asked for, not by memory."""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy import text

from controlplane.core.db import get_sessionmaker

Format = Literal["csv", "jsonl"]
MEDIA_TYPES: dict[str, str] = {"csv": "text/csv", "jsonl": "application/x-ndjson"}
#: Rows are sent in chunks of about this many characters.
_CHUNK = 65536
#: Rows fetched from the server-side cursor at a time: one await per batch, not per row.
_ROWS = 1000


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, uuid.UUID | Decimal):
        return str(value)  # an amount keeps every digit, as the JSON API gives it
    return value


async def _chunks(query: str, params: dict[str, Any], columns: Sequence[str], fmt: Format,
                  settings: Mapping[str, str]) -> AsyncGenerator[str, None]:
    async with get_sessionmaker()() as session, session.begin():
        for name, value in settings.items():  # for this transaction only
            await session.execute(text("SELECT set_config(:name, :value, true)"), {"name": name, "value": value})
        result = await session.stream(text(query), params)
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        if fmt == "csv":
            writer.writerow(columns)
        async for rows in result.mappings().partitions(_ROWS):
            if fmt == "csv":
                writer.writerows([json.dumps(v) if isinstance(v, dict) else _jsonable(v) for v in
                                  (row[c] for c in columns)] for row in rows)
            else:
                buffer.writelines(json.dumps({c: _jsonable(row[c]) for c in columns}) + "\n" for row in rows)
            if buffer.tell() > _CHUNK:  # one write per chunk, not per row
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
        yield buffer.getvalue()


async def stream(query: str, params: dict[str, Any], columns: Sequence[str], fmt: Format, *,
                 settings: Mapping[str, str] | None = None) -> AsyncIterator[str]:
    """The export's text, chunk by chunk. The query runs before this returns: a value the database
    refuses is then an error the caller can answer (a 422), not a 200 whose stream breaks off.
    ``settings``: PostgreSQL settings for the export's transaction (e.g. a larger ``work_mem``)."""
    chunks = _chunks(query, params, columns, fmt, settings or {})
    first = await anext(chunks, "")

    async def primed() -> AsyncIterator[str]:
        try:
            yield first
            async for chunk in chunks:
                yield chunk
        finally:  # a client that goes away mid-export: end the query and its transaction now
            await chunks.aclose()

    return primed()
