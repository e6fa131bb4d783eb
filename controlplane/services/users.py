"""People: create, list, update. Suspending a user stops their tokens at the gateway (authz hears the
NOTIFY); deprovisioning also revokes every token they own and flags what they own for reassignment
(:func:`controlplane.services.offboarding.user_departed`), in the same transaction. A person's
``employment_type`` and ``end_date`` are register fields: the day after ``end_date`` the offboarding
duty deprovisions them."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane import schemas
from controlplane.audit.events import Actor, record_event
from controlplane.errors import Code, Conflict
from controlplane.models import User
from controlplane.services import lifecycle, offboarding
from controlplane.services.rows import flush_unique, get_or_404, paginate, public, sort_key

#: The event recorded for a change of status.
_STATUS_ACTIONS = {"active": "user.activated", "suspended": "user.suspended", "deprovisioned": "user.deprovisioned"}


async def get_user(session: AsyncSession, *, user_id: uuid.UUID) -> User:
    return await get_or_404(session, User, user_id, code=Code.USER_NOT_FOUND, label="user")


async def list_users(
    session: AsyncSession, *, status: str | None, email: str | None, q: str | None, sort: str, cursor: str | None,
    limit: int,
) -> dict[str, Any]:
    query = select(User)
    if status:
        query = query.where(User.status == status)
    if email:
        query = query.where(func.lower(User.email) == email.lower())
    if q:
        needle = q.lower()
        query = query.where(func.lower(User.email).contains(needle, autoescape=True)
                            | func.lower(func.coalesce(User.display_name, "")).contains(needle, autoescape=True))
    column, descending = sort_key(sort, {"created_at": User.created_at, "email": func.lower(User.email)})
    return await paginate(session, query, sort=column, id_col=User.id, cursor=cursor, limit=limit,
                          descending=descending)


async def create_user(session: AsyncSession, *, actor: Actor, data: schemas.UserCreate) -> User:
    exists = await session.scalar(select(User.id).where(func.lower(User.email) == data.email.lower()))
    message = f"A user with email {data.email} already exists."
    if exists is not None:
        raise Conflict(Code.USER_EXISTS, message)
    user = User(id=uuid.uuid4(), email=data.email, display_name=data.display_name, external_id=data.external_id,
                employment_type=data.employment_type, end_date=data.end_date)
    session.add(user)
    await flush_unique(session, Code.USER_EXISTS, message)
    await session.refresh(user)
    await record_event(session, actor=actor, action="user.created", target_type="user", target_id=str(user.id),
                       after=public(schemas.UserPublic, user))
    return user


async def update_user(session: AsyncSession, *, actor: Actor, user_id: uuid.UUID, data: schemas.UserUpdate) -> User:
    user = await get_user(session, user_id=user_id)
    before = public(schemas.UserPublic, user)
    changes = data.model_dump(exclude_unset=True, exclude_none=True)
    if "end_date" in data.model_fields_set:  # null clears it
        changes["end_date"] = data.end_date
    if not changes:
        return user
    for field, value in changes.items():
        setattr(user, field, value)
    await session.flush()
    if changes.get("status") == "deprovisioned":
        await offboarding.user_departed(session, actor=actor, user_id=user.id, reason="owner deprovisioned")
    await session.refresh(user)
    await record_event(session, actor=actor, action=_STATUS_ACTIONS.get(changes.get("status", ""), "user.updated"),
                       target_type="user", target_id=str(user.id), before=before,
                       after=public(schemas.UserPublic, user))
    return user


async def revoke_tokens(session: AsyncSession, *, actor: Actor, user_id: uuid.UUID, reason: str | None) -> int:
    """Revoke every live token the user owns, in one transaction."""
    await get_user(session, user_id=user_id)
    return await lifecycle.revoke_where(session, actor=actor, user_id=user_id,
                                        reason=reason or "all of the user's tokens")
