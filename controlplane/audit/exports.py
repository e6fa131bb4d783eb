"""Exports of audit queries for an auditor: CSV or JSON lines, streamed from a server-side cursor, so
their size is bounded by the window asked for, not by memory."""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import text

from controlplane.core.db import get_sessionmaker

Format = Literal["csv", "jsonl"]
MEDIA_TYPES: dict[str, str] = {"csv": "text/csv", "jsonl": "application/x-ndjson"}
#: CSV rows are sent in chunks of about this many characters.
_CHUNK = 65536


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


async def _chunks(query: str, params: dict[str, Any], columns: Sequence[str], fmt: Format
                  ) -> AsyncGenerator[str, None]:
    async with get_sessionmaker()() as session, session.begin():
        result = await session.stream(text(query), params)
        if fmt == "csv":
            buffer = io.StringIO()
            writer = csv.writer(buffer)
            writer.writerow(columns)
            async for row in result.mappings():
                writer.writerow([json.dumps(v) if isinstance(v, dict) else _jsonable(v) for v in
                                 (row[c] for c in columns)])
                if buffer.tell() > _CHUNK:
                    yield buffer.getvalue()
                    buffer.seek(0)
                    buffer.truncate()
            yield buffer.getvalue()
        else:
            async for row in result.mappings():
                yield json.dumps({c: _jsonable(row[c]) for c in columns}) + "\n"


async def stream(query: str, params: dict[str, Any], columns: Sequence[str], fmt: Format) -> AsyncIterator[str]:
    """The export's text, chunk by chunk. The query runs before this returns: a value the database
    refuses is then an error the caller can answer (a 422), not a 200 whose stream breaks off."""
    chunks = _chunks(query, params, columns, fmt)
    first = await anext(chunks, "")

    async def primed() -> AsyncIterator[str]:
        try:
            yield first
            async for chunk in chunks:
                yield chunk
        finally:  # a client that goes away mid-export: end the query and its transaction now
            await chunks.aclose()

    return primed()
