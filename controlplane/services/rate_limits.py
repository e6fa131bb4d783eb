"""Rate limits: requests and tokens per minute for a scope.

A scope's limit is its own row in ``rate_limits`` if it has one, else its team's profile default for
its scope type (:mod:`controlplane.services.scopes`): the rule authz enforces, in memory, on every
Check. A change reaches authz at once (the ``rate_limits`` trigger).
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import and_, delete, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane import schemas
from controlplane.audit.events import Actor, record_event
from controlplane.errors import Code, NotFound
from controlplane.models import RateLimit
from controlplane.services import scopes
from controlplane.services.rows import public


def _of(scope_type: str, scope_id: uuid.UUID) -> Any:
    return and_(RateLimit.scope_type == scope_type, RateLimit.scope_id == scope_id)


def _missing(scope_type: str, scope_id: uuid.UUID) -> NotFound:
    return NotFound(Code.RATE_LIMIT_NOT_FOUND, f"The {scope_type} {scope_id} has no rate limit of its own.")


async def get_rate_limit(session: AsyncSession, *, scope_type: str, scope_id: uuid.UUID) -> RateLimit:
    """A scope's own rate limit, or a 404 (its profile default, if any, is what :func:`effective` shows)."""
    row = await session.scalar(select(RateLimit).where(_of(scope_type, scope_id)))
    if row is None:
        raise _missing(scope_type, scope_id)
    return row


async def list_rate_limits(
    session: AsyncSession, *, within_team: uuid.UUID | None, scope_type: str | None, scope_id: uuid.UUID | None,
    sort: str, cursor: str | None, limit: int,
) -> dict[str, Any]:
    """The scopes' own rate limits (not the profile defaults)."""
    return await scopes.list_own(session, RateLimit, within_team=within_team, scope_type=scope_type,
                                 scope_id=scope_id, sort=sort, cursor=cursor, limit=limit)


async def set_rate_limit(session: AsyncSession, *, actor: Actor, scope_type: str, scope_id: uuid.UUID,
                         data: schemas.RateLimitSet) -> RateLimit:
    """Give a scope its own rate limit, or replace the one it has: all of it (an omitted rpm or tpm
    is no limit on that measure, not the old value)."""
    await scopes.get(session, scope_type=scope_type, scope_id=scope_id)
    current = await session.scalar(select(RateLimit).where(_of(scope_type, scope_id)).with_for_update())
    before = public(schemas.RateLimitPublic, current) if current is not None else None
    fields = {"rpm": data.rpm, "tpm": data.tpm}
    upsert = insert(RateLimit).values(id=uuid.uuid4(), scope_type=scope_type, scope_id=scope_id, **fields)
    upsert = upsert.on_conflict_do_update(index_elements=[RateLimit.scope_type, RateLimit.scope_id],
                                          set_={**fields, "updated_at": func.now()})
    limit = (await session.scalars(upsert.returning(RateLimit),
                                   execution_options={"populate_existing": True})).one()
    await record_event(session, actor=actor, action="rate_limit.set", target_type=scope_type,
                       target_id=str(scope_id), before=before, after=public(schemas.RateLimitPublic, limit))
    return limit


async def remove_rate_limit(session: AsyncSession, *, actor: Actor, scope_type: str, scope_id: uuid.UUID) -> None:
    """Remove a scope's own rate limit: its profile's default (if any) applies again."""
    current = await session.scalar(select(RateLimit).where(_of(scope_type, scope_id)).with_for_update())
    if current is None:
        raise _missing(scope_type, scope_id)
    before = public(schemas.RateLimitPublic, current)
    await session.execute(delete(RateLimit).where(RateLimit.id == current.id))
    await record_event(session, actor=actor, action="rate_limit.removed", target_type=scope_type,
                       target_id=str(scope_id), before=before)


def _explicit(row: RateLimit) -> schemas.RateLimitSet:
    return schemas.RateLimitSet(rpm=row.rpm, tpm=row.tpm)


async def effective(session: AsyncSession, *, scope_type: str, scope_id: uuid.UUID,
                    within_team: uuid.UUID | None = None) -> dict[str, Any]:
    """The rate limits in effect for a scope: its own, or its profile default per team where that
    differs. ``within_team``: only what applies to that team's tokens (a team owner's view)."""
    scope = await scopes.get(session, scope_type=scope_type, scope_id=scope_id)
    row = await session.scalar(select(RateLimit).where(_of(scope_type, scope_id)))
    entries = scopes.effective(scope, _explicit(row) if row is not None else None, "rate_limit_defaults",
                               schemas.RateLimitSet.model_validate)
    limits = [{"source": e.source, "team_ids": e.team_ids, "rpm": e.spec.rpm, "tpm": e.spec.tpm}
              for e in scopes.within(entries, within_team)]
    return {"scope_type": scope.type, "scope_id": scope.id, "scope_name": scope.name, "limits": limits}
