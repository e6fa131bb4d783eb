"""Rate limits: admins set and remove a scope's own limit; finance, auditors and team owners (their
own team's scopes) read them and the limits in effect."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Response, status

from controlplane import errors, schemas
from controlplane.api.deps import Admin, AnyCaller, Cursor, Limit, SessionDep
from controlplane.api.routes.budgets import PolicySort, require_scope_visible
from controlplane.models import RateLimit
from controlplane.services import rate_limits, scopes

router = APIRouter(prefix="/rate-limits", tags=["rate limits"], responses=errors.responses(401, 403, 422))


@router.get("", response_model=schemas.Page[schemas.RateLimitPublic])
async def list_rate_limits(
    session: SessionDep,
    caller: AnyCaller,
    limit: Limit = 100,
    cursor: Cursor = None,
    scope_type: schemas.ScopeType | None = None,
    scope_id: uuid.UUID | None = None,
    sort: PolicySort = "created_at",
) -> dict:
    """The scopes' own rate limits; the defaults are in the access profiles (``rate_limit_defaults``)."""
    return await rate_limits.list_rate_limits(session, within_team=caller.within_team, scope_type=scope_type,
                                              scope_id=scope_id, sort=sort, cursor=cursor, limit=limit)


@router.put("/{scope_type}/{scope_id}", response_model=schemas.RateLimitPublic,
            responses=errors.responses(404, body=True))
async def set_rate_limit(scope_type: schemas.ScopeType, scope_id: uuid.UUID, data: schemas.RateLimitSet,
                         session: SessionDep, caller: Admin) -> RateLimit:
    """Give a scope its own rate limit in place of its profile's default, or replace the one it has.
    The gateway applies it at once."""
    return await rate_limits.set_rate_limit(session, actor=caller.actor, scope_type=scope_type, scope_id=scope_id,
                                            data=data)


@router.get("/{scope_type}/{scope_id}", response_model=schemas.RateLimitPublic, responses=errors.responses(404))
async def get_rate_limit(scope_type: schemas.ScopeType, scope_id: uuid.UUID, session: SessionDep,
                         caller: AnyCaller) -> RateLimit:
    """The scope's own rate limit (404 when it has none: see ``/effective`` for what applies)."""
    require_scope_visible(caller, await scopes.get(session, scope_type=scope_type, scope_id=scope_id))
    return await rate_limits.get_rate_limit(session, scope_type=scope_type, scope_id=scope_id)


@router.delete("/{scope_type}/{scope_id}", status_code=status.HTTP_204_NO_CONTENT,
               responses=errors.responses(404))
async def remove_rate_limit(scope_type: schemas.ScopeType, scope_id: uuid.UUID, session: SessionDep,
                            caller: Admin) -> Response:
    """Remove a scope's own rate limit: its profile's default, if any, applies again."""
    await rate_limits.remove_rate_limit(session, actor=caller.actor, scope_type=scope_type, scope_id=scope_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{scope_type}/{scope_id}/effective", response_model=schemas.EffectiveRateLimits,
            responses=errors.responses(404))
async def effective_rate_limits(scope_type: schemas.ScopeType, scope_id: uuid.UUID, session: SessionDep,
                                caller: AnyCaller) -> dict:
    """The rate limits in effect for the scope: its own, or its profile default per team where that differs."""
    require_scope_visible(caller, await scopes.get(session, scope_type=scope_type, scope_id=scope_id))
    return await rate_limits.effective(session, scope_type=scope_type, scope_id=scope_id,
                                       within_team=caller.within_team)
