"""Teams and their members. A team's profile is what its tokens may do; removing a member or
changing the profile changes every token of the team at once (authz hears the NOTIFY)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane import schemas
from controlplane.audit.events import Actor, record_event
from controlplane.errors import Code, Conflict, NotFound
from controlplane.models import Membership, Team, User
from controlplane.services import lifecycle, reviews
from controlplane.services.profiles import get_profile
from controlplane.services.rows import flush_unique, get_or_404, insert_recorded, paginate, public, sort_key


async def get_team(session: AsyncSession, *, team_id: uuid.UUID) -> Team:
    return await get_or_404(session, Team, team_id, code=Code.TEAM_NOT_FOUND, label="team")


async def list_teams(
    session: AsyncSession, *, within_team: uuid.UUID | None, name: str | None, profile_id: uuid.UUID | None,
    sort: str, cursor: str | None, limit: int,
) -> dict[str, Any]:
    query = select(Team)
    if within_team is not None:
        query = query.where(Team.id == within_team)
    if name:
        query = query.where(func.lower(Team.name) == name.lower())
    if profile_id:
        query = query.where(Team.profile_id == profile_id)
    column, descending = sort_key(sort, {"created_at": Team.created_at, "name": func.lower(Team.name)})
    return await paginate(session, query, sort=column, id_col=Team.id, cursor=cursor, limit=limit,
                          descending=descending)


def _exists(name: str) -> tuple[Code, str]:
    return Code.TEAM_EXISTS, f"A team named {name} exists."


async def create_team(session: AsyncSession, *, actor: Actor, data: schemas.TeamCreate) -> Team:
    if data.profile_id is not None:
        await get_profile(session, profile_id=data.profile_id)
    if await session.scalar(select(Team.id).where(func.lower(Team.name) == data.name.lower())):
        raise Conflict(*_exists(data.name))
    team: Team = await insert_recorded(
        session, Team(id=uuid.uuid4(), **data.model_dump()), actor=actor, action="team.created",
        target_type="team", published=schemas.TeamPublic, conflict=_exists(data.name))
    return team


async def update_team(session: AsyncSession, *, actor: Actor, team_id: uuid.UUID, data: schemas.TeamUpdate) -> Team:
    team = await get_team(session, team_id=team_id)
    before = public(schemas.TeamPublic, team)
    before_profile = team.profile_id
    changes = data.model_dump(exclude_unset=True)
    if changes.get("profile_id") is not None:
        await get_profile(session, profile_id=changes["profile_id"])
    for field, value in changes.items():
        setattr(team, field, value)
    await flush_unique(session, *_exists(team.name))
    await session.refresh(team)
    action = "policy.changed" if "profile_id" in changes else "team.updated"
    await record_event(session, actor=actor, action=action, target_type="team", target_id=str(team.id),
                       before=before, after=public(schemas.TeamPublic, team))
    await reviews.on_team_profile_change(session, actor=actor, team=team, before_profile_id=before_profile)
    return team


async def list_members(session: AsyncSession, *, team_id: uuid.UUID, role: str | None, cursor: str | None,
                       limit: int) -> dict[str, Any]:
    await get_team(session, team_id=team_id)
    query = select(Membership).where(Membership.team_id == team_id)
    if role:
        query = query.where(Membership.role == role)
    return await paginate(session, query, sort=Membership.created_at, id_col=Membership.user_id, cursor=cursor,
                          limit=limit)


async def set_member(session: AsyncSession, *, actor: Actor, team_id: uuid.UUID, user_id: uuid.UUID,
                     role: str) -> Membership:
    """Add a user to the team, or change their role. Idempotent."""
    await get_team(session, team_id=team_id)
    await get_or_404(session, User, user_id, code=Code.USER_NOT_FOUND, label="user")
    membership = await session.get(Membership, (team_id, user_id))
    before = public(schemas.MembershipPublic, membership) if membership else None
    if membership is None:
        membership = Membership(team_id=team_id, user_id=user_id, role=role)
        session.add(membership)
    elif membership.role == role:
        return membership
    else:
        membership.role = role
    await session.flush()
    await session.refresh(membership)
    await record_event(session, actor=actor, action="team.member_set", target_type="team", target_id=str(team_id),
                       before=before, after=public(schemas.MembershipPublic, membership))
    return membership


async def remove_member(session: AsyncSession, *, actor: Actor, team_id: uuid.UUID, user_id: uuid.UUID) -> None:
    """Removing a member narrows their tokens for that team at once (authz sees the NOTIFY)."""
    membership = await session.get(Membership, (team_id, user_id))
    if membership is None:
        raise NotFound(Code.MEMBERSHIP_NOT_FOUND, f"User {user_id} is not a member of team {team_id}.")
    before = public(schemas.MembershipPublic, membership)
    await session.execute(delete(Membership).where(Membership.team_id == team_id, Membership.user_id == user_id))
    await record_event(session, actor=actor, action="team.member_removed", target_type="team",
                       target_id=str(team_id), before=before)


async def revoke_tokens(session: AsyncSession, *, actor: Actor, team_id: uuid.UUID, reason: str | None) -> int:
    """Revoke every live token that acts for the team, and no one else's."""
    await get_team(session, team_id=team_id)
    return await lifecycle.revoke_where(session, actor=actor, team_id=team_id,
                                        reason=reason or "all of the team's tokens")


async def member_counts(session: AsyncSession, *, team_ids: list[uuid.UUID]) -> dict[uuid.UUID, int]:
    """How many members each of ``team_ids`` has (one grouped count)."""
    if not team_ids:
        return {}
    rows = await session.execute(select(Membership.team_id, func.count())
                                 .where(Membership.team_id.in_(team_ids)).group_by(Membership.team_id))
    return {team_id: int(count) for team_id, count in rows.all()}
