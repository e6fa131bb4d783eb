"""A signed-in user's own teams and tokens, for ``/me`` and ``/api/v1/me``.

Everything goes through :mod:`controlplane.services.lifecycle` (the same rule as the admin API: a
token acts for one team the user belongs to, within that team's profile) with the signed-in actor
(``oidc:<email>``, mechanism ``oidc``). A user sees and revokes only tokens they own; anyone else's
token is "not found".
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane import schemas
from controlplane.audit.events import Actor
from controlplane.errors import Code, NotFound
from controlplane.models import AccessProfile, Membership, Team, Token
from controlplane.services import lifecycle


async def my_teams(session: AsyncSession, user_id: uuid.UUID) -> list[schemas.MyTeam]:
    rows = (await session.execute(
        select(Team, Membership.role, AccessProfile)
        .join(Membership, Membership.team_id == Team.id)
        .outerjoin(AccessProfile, AccessProfile.id == Team.profile_id)
        .where(Membership.user_id == user_id)
        .order_by(Team.name)
    )).all()
    return [
        schemas.MyTeam(id=team.id, name=team.name, role=role,
                       profile=schemas.MyProfile(id=profile.id, name=profile.name,
                                                 environments=list(profile.environments),
                                                 default_token_days=profile.default_token_days,
                                                 max_token_days=profile.max_token_days)
                       if profile is not None else None)
        for team, role, profile in rows
    ]


async def my_tokens(session: AsyncSession, user_id: uuid.UUID, *, state: str | None, cursor: str | None,
                    limit: int) -> dict[str, Any]:
    """The user's tokens, newest first."""
    return await lifecycle.page(session, lifecycle.list_query(user_id=user_id, state=state), sort="-created_at",
                                cursor=cursor, limit=limit)


async def recent_tokens(session: AsyncSession, user_id: uuid.UUID, *, limit: int = 200
                        ) -> tuple[list[Token], dict[uuid.UUID, str]]:
    """The user's latest tokens, newest first, and the names of the teams they act for."""
    tokens = list((await session.scalars(
        lifecycle.list_query(user_id=user_id).order_by(Token.created_at.desc()).limit(limit))).all())
    team_ids = {token.team_id for token in tokens if token.team_id}
    names = dict((await session.execute(select(Team.id, Team.name).where(Team.id.in_(team_ids)))).tuples().all()) \
        if team_ids else {}
    return tokens, names


async def mint_mine(session: AsyncSession, *, user_id: uuid.UUID, actor: Actor, data: schemas.MyTokenCreate,
                    hash_key: bytes) -> tuple[Token, str]:
    request = schemas.TokenCreate(user_id=user_id, team_id=data.team_id, project_id=data.project_id, name=data.name,
                                  environment=data.environment, models=data.models, endpoints=data.endpoints,
                                  expires_in_days=data.expires_in_days)
    team_id = await lifecycle.resolve_team(session, request)
    return await lifecycle.mint(session, actor=actor, data=request, team_id=team_id, hash_key=hash_key)


async def get_mine(session: AsyncSession, *, user_id: uuid.UUID, token_id: uuid.UUID) -> Token:
    token = await session.get(Token, token_id)
    if token is None or token.user_id != user_id:
        raise NotFound(Code.TOKEN_NOT_FOUND, f"You have no token with id {token_id}.")
    return token


async def revoke_mine(session: AsyncSession, *, user_id: uuid.UUID, actor: Actor, token_id: uuid.UUID,
                      reason: str | None) -> Token:
    token = await get_mine(session, user_id=user_id, token_id=token_id)
    return await lifecycle.revoke(session, actor=actor, token_id=token.id, reason=reason or "revoked by owner")
