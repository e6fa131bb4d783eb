"""``/register``: the credential register, every credential with its owners, purpose, scope, use,
rotation, offboarding triggers, open exceptions and last review (:mod:`controlplane.services.register`).

Admins and auditors read every row; a team owner reads its own team's (the team filter is forced to
it; asking for another team is a 403 ``team_forbidden``). ``format=csv`` or ``jsonl`` gives every
matching row as a download; ``json`` one page.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from controlplane import errors, schemas
from controlplane.api.deps import Cursor, Limit, Reader, SessionDep
from controlplane.audit import exports
from controlplane.services import register
from controlplane.services.rows import offset_cursor, offset_of

router = APIRouter(tags=["register"], responses=errors.responses(401, 403, 422))
_CURSOR = "register"
_TEXT = {"schema": {"type": "string"}}
EXPORTS: dict[int | str, dict[str, Any]] = {
    200: {"description": "json: one page; csv / jsonl: every matching row.",
          "content": {media: _TEXT for media in exports.MEDIA_TYPES.values()}}
}


@router.get("/register", response_model=schemas.RegisterPage, responses=errors.responses(403) | EXPORTS)
async def credential_register(
    session: SessionDep,
    caller: Reader,
    team_id: uuid.UUID | None = None,
    environment: schemas.Environment | None = None,
    owner_id: Annotated[uuid.UUID | None, Query(description="Rows this person answers for: their tokens, the "
                                                            "service accounts they own (any role) and their "
                                                            "tokens, the admin credentials they own.")] = None,
    kind: Annotated[list[schemas.RegisterKind] | None, Query(description="personal, service, admin, scim; "
                                                                         "repeatable. Default: all.")] = None,
    orphaned: Annotated[bool, Query(description="Only rows whose owner departed or is unknown.")] = False,
    overdue: Annotated[bool, Query(description="Only rows overdue: rotation, never used after 7 days, dormant "
                                               "30 days.")] = False,
    broader: Annotated[bool, Query(description="Only rows that can reach models they did not call in 30 days "
                                               "(having called at least one).")] = False,
    limit: Limit = 100,
    cursor: Cursor = None,
    format: Annotated[Literal["json", "csv", "jsonl"],
                      Query(description="json: one page; csv / jsonl: every matching row")] = "json",
) -> Any:
    """Every credential that can make a gateway request or change Keyward, one row each: owner (backup
    owner, or a service account's four owners), purpose, workload, environment, project, what the
    gateway would let it reach now, declared secret location, created and last used, requests in 7 and
    30 days and the models called, rotation cadence and due date, expiry, offboarding triggers, flags,
    open exceptions, last review decision."""
    if team_id is not None:
        caller.require_visible(team_id)
    filters: dict[str, Any] = {"team_id": caller.within_team or team_id, "environment": environment,
                               "owner_id": owner_id, "kinds": kind, "orphaned": orphaned, "overdue": overdue,
                               "broader": broader}
    if format != "json":
        rows = await register.register_rows(session, **filters)
        return StreamingResponse(iter(register.export(rows, format)), media_type=exports.MEDIA_TYPES[format],
                                 headers={"content-disposition": f'attachment; filename="register.{format}"'})
    offset = offset_of(cursor, _CURSOR)
    items, total = await register.register_page(session, offset=offset, limit=limit, **filters)
    return {"items": items, "total": total,
            "next_cursor": offset_cursor(offset + limit, _CURSOR) if total > offset + limit else None}
