"""``/audit``: ingest from the data plane, and the questions auditors ask.

Every list can be exported for an auditor with ``format=csv`` or ``format=jsonl``: the export is
streamed from a server-side cursor (:mod:`controlplane.audit.exports`), so its size is bounded by the
window, not by memory. Exports of requests and events carry each row's ``seq``, ``prev_hash`` and
``hash``, and with ``signed=true`` a signed trailer, so ``keyward audit verify-export`` checks them offline.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from authz.config import asyncpg_dsn
from controlplane import errors, schemas
from controlplane.api.deps import Auditor, Cursor, IngestCaller, Limit, SessionDep, SettingsDep
from controlplane.audit import chain, exports, queries, signing
from controlplane.audit import verify as verify_module
from controlplane.audit.ingest import INGEST_REQUEST_BODY, Ingestor, IngestResult, parse_body
from controlplane.errors import Code, Unreadable
from controlplane.services import users
from controlplane.services.rows import decode_cursor, encode_cursor

router = APIRouter(prefix="/audit", tags=["audit"], responses=errors.responses(401, 422))
_ingestor = Ingestor()

Format = Annotated[Literal["json", "csv", "jsonl"], Query(description="json: one page; csv / jsonl: a streamed export")]
#: The exports' media types, next to the JSON page FastAPI documents from the response model.
_TEXT = {"schema": {"type": "string"}}
EXPORTS: dict[int | str, dict[str, Any]] = {
    200: {"description": "json: one page; csv / jsonl: the whole window, streamed.",
          "content": {media: _TEXT for media in exports.MEDIA_TYPES.values()}}
}


Signed = Annotated[bool, Query(description="csv / jsonl: end the export with a signed trailer (row count, digest "
                                            "of the rows' hashes, the chain's signed head) for verify-export.")]


async def _export(query: str, params: dict[str, Any], columns: Any, fmt: exports.Format,
                  name: str, chained: exports.Chained | None = None) -> StreamingResponse:
    return StreamingResponse(await exports.stream(query, params, columns, fmt, chained=chained),
                             media_type=exports.MEDIA_TYPES[fmt],
                             headers={"content-disposition": f'attachment; filename="{name}.{fmt}"'})


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
            raise Unreadable(Code.BODY_UNREADABLE, "There was an error parsing the body: it is not UTF-8 text.") \
                from None
        # Located as FastAPI locates body errors ("body", then the path into the document).
        raise RequestValidationError([error | {"loc": ("body", *error["loc"])}
                                      for error in exc.errors(include_url=False)]) from None
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    return await _ingestor.ingest(raw.driver_connection, batch)


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
    signed: Signed = False,
) -> Any:
    """Every request in a window, oldest first, with its decision and outcome (status, latency, usage)."""
    start, end = queries.window(start, end, default=timedelta(days=1))
    filters = queries.RequestFilter(start=start, end=end, user_id=user_id, user_email=user, team=team,
                                    token_id=token_id, model=model, decision=decision, status=status,
                                    provider=provider)
    if format != "json":
        query, params = filters.sql(limit=None, chained=True)
        stated = {"start": start, "end": end, "user_id": user_id, "user": user, "team": team, "token_id": token_id,
                  "model": model, "decision": decision, "status": status, "provider": provider}
        return await _export(query, params, queries.REQUEST_CHAIN_COLUMNS, format, "requests",
                             exports.Chained(chain.REQUESTS, signed, stated))
    items, following = await queries.request_page(session, filters, cursor=decode_cursor(cursor) if cursor else None,
                                                   limit=limit)
    return {"items": items, "next_cursor": encode_cursor(*following) if following else None}


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
    signed: Signed = False,
) -> Any:
    """Admin, SCIM, OIDC and token actions in chain order, each with actor, mechanism and timestamp."""
    filters = queries.EventFilter(target_type=target_type, target_id=target_id, action=action, actor=actor,
                                  start=start, end=end)
    if format != "json":
        query, params = filters.sql()
        stated = {"target_type": target_type, "target_id": target_id, "action": action, "actor": actor,
                  "start": start, "end": end}
        return await _export(query, params, queries.EVENT_CHAIN_COLUMNS, format, "events",
                             exports.Chained(chain.EVENTS, signed, stated))
    return await queries.event_page(session, filters, cursor=cursor, limit=limit)


@router.get("/users/{user_id}/activity", response_model=schemas.UserActivity,
            responses=errors.responses(403, 404))
async def user_activity(user_id: uuid.UUID, session: SessionDep, _caller: Auditor) -> dict:
    """When did this user last make a request, and was anything of theirs allowed after they were
    disabled? For a correctly revoked user the count is zero, and the answer names the evidence."""
    user = await users.get_user(session, user_id=user_id)
    return {"user": user, **await queries.user_activity(session, user_id)}


@router.get("/verify", response_model=schemas.AuditVerification, responses=errors.responses(403))
async def verify(
    _caller: Auditor,
    settings: SettingsDep,
    full: Annotated[bool, Query(description="Re-hash every row of every chain from its start (one pass over "
                                            "every row) instead of the rows after the newest verified marker.")]
    = False,
) -> dict[str, Any]:
    """Verify every hash chain and check its signatures: by default incrementally, from the newest signed
    verification marker (the row it ends at must still have its hash; every row after it is re-hashed);
    ``full=true`` re-hashes every row. The answer says which, from which marker, the rows hashed and the
    time taken, the first broken record if any, the last full verification, and each chain's last signed
    head (seq, hash, signature: check it against ``GET /audit/public-key``). One verification at a time
    per control-plane process."""
    return await verify_module.verify_store(asyncpg_dsn(settings.database_url), signer=signing.current(),
                                            full=full)


@router.get("/public-key", response_model=schemas.AuditPublicKey, responses=errors.responses(403))
async def public_key(_caller: Auditor) -> schemas.AuditPublicKey:
    """The key that verifies every signed chain head: give it to whoever verifies an export or the store."""
    return schemas.AuditPublicKey(public_key=signing.current().public_key)
