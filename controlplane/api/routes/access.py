"""``/access``: what the gateway would let each token do now, and who can reach what.

Answered by the gateway's own decision code (:mod:`controlplane.services.access`). Admins and
auditors see every team; a team owner sees its own team's tokens only.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query

from controlplane import errors, schemas
from controlplane.api.deps import Cursor, Limit, Reader, SessionDep
from controlplane.services import access, service_accounts, users
from controlplane.services.rows import offset_cursor, offset_of

router = APIRouter(prefix="/access", tags=["access"], responses=errors.responses(401, 403, 422))
_CURSOR = "access"


@router.get("", response_model=schemas.Reach)
async def who_can_reach(
    session: SessionDep,
    caller: Reader,
    provider: Annotated[schemas.Provider | None, Query(description="openai or anthropic; all when left out.")] = None,
    model: Annotated[str | None, Query(max_length=200, description="A model name or a pattern (gpt-4o*).")] = None,
    environment: schemas.Environment | None = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> dict[str, Any]:
    """Who can reach this provider (model, environment) now: people and service accounts, with the token
    that grants it and the models it may call; and, over every live token, the counts an auditor asks
    for first."""
    team = caller.within_team
    where, params = ("t.team_id = $1::uuid", [str(team)]) if team is not None else ("", [])
    verdicts, _ = await access.judged(session, where=where, params=params)
    found = access.grants(verdicts, provider=None if provider == "*" else provider, model=model,
                          environment=environment)
    page = _page(found, limit, cursor)
    page["items"] = [access.grant_row(verdict, models) for verdict, models in page["items"]]
    return {"summary": access.summary(verdicts), **page}


@router.get("/users/{user_id}", response_model=schemas.IdentityAccess, responses=errors.responses(404))
async def user_access(user_id: uuid.UUID, session: SessionDep, caller: Reader) -> dict[str, Any]:
    """What one person can reach now, token by token, as the gateway would decide."""
    user = await users.get_user(session, user_id=user_id)
    tokens = await access.of_identity(session, identity_type="user", identity_id=user_id,
                                      team_id=caller.within_team)
    return {"identity_type": "user", "identity_id": user.id, "name": user.email, "tokens": tokens}


@router.get("/service-accounts/{account_id}", response_model=schemas.IdentityAccess,
            responses=errors.responses(404))
async def service_account_access(account_id: uuid.UUID, session: SessionDep, caller: Reader) -> dict[str, Any]:
    """What one service account can reach now, token by token."""
    account = await service_accounts.get_service_account(session, account_id=account_id)
    caller.require_visible(account.team_id)
    tokens = await access.of_identity(session, identity_type="service_account", identity_id=account_id)
    return {"identity_type": "service_account", "identity_id": account.id, "name": account.name, "tokens": tokens}


@router.get("/refused", response_model=schemas.RefusedPage)
async def refused(session: SessionDep, caller: Reader, limit: Limit = 100, cursor: Cursor = None) -> dict[str, Any]:
    """Tokens whose row says active (not revoked, not expired) that the gateway refuses, with its reason:
    an owner who left the team, a suspended owner, a team without a profile, a spent budget."""
    found, now = await access.refused(session, team_id=caller.within_team)
    page = _page(found, limit, cursor)
    page["items"] = [access.refusal_row(verdict, now) for verdict in page["items"]]
    return {"total": len(found), **page}


def _page(rows: list[Any], limit: int, cursor: str | None) -> dict[str, Any]:
    offset = offset_of(cursor, _CURSOR)
    return {"items": rows[offset:offset + limit],
            "next_cursor": offset_cursor(offset + limit, _CURSOR) if len(rows) > offset + limit else None}

