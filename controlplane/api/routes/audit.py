"""``/api/v1/audit``: ingest from the data plane, and the questions auditors ask.

Every list can be exported for an auditor with ``format=csv`` or ``format=jsonl``: the export is
streamed from a server-side cursor, so its size is bounded by the window, not by memory.
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from sqlalchemy import text

from controlplane import errors, schemas, services
from controlplane.api.deps import Auditor, Cursor, IngestCaller, Limit, SessionDep
from controlplane.audit.ingest import INGEST_REQUEST_BODY, Ingestor, IngestResult, parse_body
from controlplane.audit.queries import REQUEST_COLUMNS, USER_ACTIVITY, RequestFilter
from controlplane.core.db import get_sessionmaker
from controlplane.errors import Invalid
from controlplane.services import decode_cursor, encode_cursor

router = APIRouter(prefix="/audit", tags=["audit"], responses=errors.responses(401, 422))
_ingestor = Ingestor()

Format = Annotated[Literal["json", "csv", "jsonl"], Query(description="json: one page; csv / jsonl: a streamed export")]
#: The exports' media types, next to the JSON page FastAPI documents from the response model.
_TEXT = {"schema": {"type": "string"}}
EXPORTS: dict[int | str, dict[str, Any]] = {
    200: {"description": "json: one page; csv / jsonl: the whole window, streamed.",
          "content": {"text/csv": _TEXT, "application/x-ndjson": _TEXT}}
}
EVENT_COLUMNS = ("seq", "at", "actor", "mechanism", "action", "target_type", "target_id", "before", "after")


@router.post("/ingest", response_model=IngestResult, responses=errors.responses(body=True),
             openapi_extra=INGEST_REQUEST_BODY)
async def ingest(request: Request, session: SessionDep, _caller: IngestCaller) -> IngestResult:
    """Store request records shipped by the data plane. Idempotent: a resent line is skipped."""
    # The body is validated by pydantic straight from its bytes (an ``IngestBatch`` parameter would
    # have FastAPI build Python objects for the whole JSON document first, then validate those).
    body = await request.body()
    try:
        batch = parse_body(body)
    except ValidationError as exc:
        try:
            body.decode()
        except UnicodeDecodeError:
            # What FastAPI answers for a body it cannot decode (documented as 400).
            raise HTTPException(400, "There was an error parsing the body") from None
        # Located as FastAPI locates body errors ("body", then the path into the document).
        raise RequestValidationError([error | {"loc": ("body", *error["loc"])}
                                      for error in exc.errors(include_url=False)]) from None
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    return await _ingestor.ingest(raw.driver_connection, batch)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


async def _export(query: str, params: dict[str, Any], columns: Sequence[str], fmt: str,
                  name: str) -> StreamingResponse:
    async def rows() -> AsyncGenerator[str, None]:
        async with get_sessionmaker()() as session, session.begin():
            result = await session.stream(text(query), params)
            if fmt == "csv":
                buffer = io.StringIO()
                writer = csv.writer(buffer)
                writer.writerow(columns)
                async for row in result.mappings():
                    writer.writerow([json.dumps(v) if isinstance(v, dict) else _jsonable(v) for v in
                                     (row[c] for c in columns)])
                    if buffer.tell() > 65536:
                        yield buffer.getvalue()
                        buffer.seek(0)
                        buffer.truncate()
                yield buffer.getvalue()
            else:
                async for row in result.mappings():
                    yield json.dumps({c: _jsonable(row[c]) for c in columns}) + "\n"

    # Run the query before the response starts: a value the database refuses is then a 422 (see
    # controlplane.errors), not a 200 whose stream breaks off.
    chunks = rows()
    first = await anext(chunks, "")

    async def primed() -> AsyncIterator[str]:
        try:
            yield first
            async for chunk in chunks:
                yield chunk
        finally:  # a client that goes away mid-export: end the query and its transaction now
            await chunks.aclose()

    media = "text/csv" if fmt == "csv" else "application/x-ndjson"
    return StreamingResponse(primed(), media_type=media,
                             headers={"content-disposition": f'attachment; filename="{name}.{fmt}"'})


def _window(start: datetime | None, end: datetime | None) -> tuple[datetime, datetime]:
    end = end or datetime.now(UTC)
    try:
        start = start or end - timedelta(days=1)
    except OverflowError:  # an end within a day of 0001-01-01
        start = datetime.min.replace(tzinfo=UTC)
    if start.tzinfo is None or end.tzinfo is None:
        raise Invalid("timezone_required", "start and end must carry a timezone (e.g. 2026-11-22T04:13:00Z).")
    if start >= end:
        raise Invalid("window_empty", "start must be before end.")
    return start, end


@router.get("/requests", response_model=schemas.Page[schemas.RequestRecord], responses=errors.responses(403) | EXPORTS)
async def list_requests(
    session: SessionDep,
    _caller: Auditor,
    start: Annotated[datetime | None, Query(description="Window start (default: end - 24 h).")] = None,
    end: Annotated[datetime | None, Query(description="Window end, exclusive (default: now).")] = None,
    user_id: uuid.UUID | None = None,
    user: Annotated[str | None, Query(max_length=320, description="User email, case-insensitive.")] = None,
    team: Annotated[str | None, Query(max_length=200)] = None,
    token_id: uuid.UUID | None = None,
    model: Annotated[str | None, Query(max_length=200)] = None,
    decision: Annotated[str | None, Query(max_length=64)] = None,
    status: Annotated[int | None, Query(ge=0, le=599)] = None,
    provider: Annotated[str | None, Query(max_length=40)] = None,
    limit: Limit = 100,
    cursor: Cursor = None,
    format: Format = "json",
) -> Any:
    """Every request in a window, oldest first, with its decision and outcome (status, latency, usage)."""
    start, end = _window(start, end)
    filters = RequestFilter(start=start, end=end, user_id=user_id, user_email=user, team=team, token_id=token_id,
                            model=model, decision=decision, status=status, provider=provider)
    if format != "json":
        query, params = filters.sql(limit=None)
        return await _export(query, params, REQUEST_COLUMNS, format, "requests")
    if cursor:
        at, seq = decode_cursor(cursor)
        try:
            filters.after = (at, int(seq))
        except ValueError as exc:
            raise Invalid("cursor_invalid", "The cursor is not one this API issued.") from exc
    query, params = filters.sql(limit=limit + 1)
    rows = (await session.execute(text(query), params)).mappings().all()
    next_cursor = encode_cursor(rows[limit - 1]["at"], rows[limit - 1]["seq"]) if len(rows) > limit else None
    return {"items": [dict(r) for r in rows[:limit]], "next_cursor": next_cursor}


@router.get("/events", response_model=schemas.Page[schemas.EventPublic], responses=errors.responses(403) | EXPORTS)
async def list_events(
    session: SessionDep,
    _caller: Auditor,
    target_type: Annotated[str | None, Query(max_length=40)] = None,
    target_id: Annotated[str | None, Query(max_length=100)] = None,
    action: Annotated[str | None, Query(max_length=60)] = None,
    actor: Annotated[str | None, Query(max_length=200)] = None,
    start: datetime | None = None,
    end: datetime | None = None,
    limit: Limit = 100,
    cursor: Cursor = None,
    format: Format = "json",
) -> Any:
    """Admin, SCIM, OIDC and token actions in chain order, each with actor, mechanism and timestamp."""
    clauses: list[str] = ["true"]
    params: dict[str, Any] = {}
    for column, value in (("target_type", target_type), ("target_id", target_id), ("action", action),
                          ("actor", actor)):
        if value is not None:
            clauses.append(f"{column} = :{column}")
            params[column] = value
    if start is not None:
        clauses.append("at >= :start")
        params["start"] = start
    if end is not None:
        clauses.append("at < :end")
        params["end"] = end
    if cursor:
        try:
            after = int(cursor)
        except ValueError as exc:
            raise Invalid("cursor_invalid", "The cursor is not one this API issued.") from exc
        clauses.append("seq > :after")
        params["after"] = after
    query = "SELECT * FROM events WHERE " + " AND ".join(clauses) + " ORDER BY seq"  # noqa: S608 - fixed columns
    if format != "json":
        return await _export(query, params, EVENT_COLUMNS, format, "events")
    rows = (await session.execute(text(query + " LIMIT :limit"), params | {"limit": limit + 1})).mappings().all()
    next_cursor = str(rows[limit - 1]["seq"]) if len(rows) > limit else None
    return {"items": [dict(r) for r in rows[:limit]], "next_cursor": next_cursor}


@router.get("/users/{user_id}/activity", response_model=schemas.UserActivity,
            responses=errors.responses(403, 404))
async def user_activity(user_id: uuid.UUID, session: SessionDep, _caller: Auditor) -> dict:
    """When did this user last make a request, and was anything of theirs allowed after they were
    disabled? For a correctly revoked user the count is zero, and the answer names the evidence."""
    user = await services.get_user(session, user_id=user_id)
    params: dict[str, Any] = {"user_id": user_id}

    async def one(name: str, extra: dict[str, Any] | None = None) -> dict | None:
        row = (await session.execute(text(USER_ACTIVITY[name]), params | (extra or {}))).mappings().first()
        return dict(row) if row else None

    disabled = await one("disabled_event", {"user_id_text": str(user_id)})
    answer: dict[str, Any] = {
        "user": user,
        "last_request": await one("last_request"),
        "last_allowed_request": await one("last_allowed"),
        "disabled_at": disabled["at"] if disabled else None,
        "disabled_by": disabled,
        "allowed_after_disabled": None,
        "allowed_after_disabled_examples": [],
    }
    if disabled:
        since = {"since": disabled["at"]}
        answer["allowed_after_disabled"] = (
            await session.execute(text(USER_ACTIVITY["count_allowed_after"]), params | since)
        ).scalar_one()
        rows = (await session.execute(text(USER_ACTIVITY["allowed_after"]), params | since)).mappings().all()
        answer["allowed_after_disabled_examples"] = [dict(r) for r in rows]
    return answer
