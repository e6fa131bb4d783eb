"""A signed-in user's own teams and tokens, for ``/me`` and ``/api/v1/me``.

Everything goes through :mod:`controlplane.tokens` (the same rule as the admin API: a token acts for
one team the user belongs to, within that team's profile) with actor ``oidc:<email>`` and mechanism
``oidc``. A user sees and revokes only tokens they own; anyone else's token is "not found".
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane import schemas
from controlplane import tokens as lifecycle
from controlplane.errors import NotFound
from controlplane.models import AccessProfile, Membership, Team, Token
from controlplane.oidc.signin import SignedIn


class MyTokenCreate(BaseModel):
    """A token for yourself: one of your teams (optional when you have exactly one), within its profile."""

    model_config = ConfigDict(extra="forbid")

    name: schemas.Name
    team_id: uuid.UUID | None = Field(default=None, description="One of your teams; optional if you have one.")
    environment: schemas.Environment = "dev"
    models: list[schemas.ModelPattern] = Field(default_factory=lambda: ["*"], min_length=1, max_length=200,
                                               description="Narrows the team profile's catalog; ['*'] keeps it.")
    expires_in_days: int | None = Field(default=None, gt=0, le=3650,
                                        description="Defaults to the profile's default lifetime; at most its maximum.")


class MyProfile(BaseModel):
    id: uuid.UUID
    name: str
    environments: list[str]
    default_token_days: int
    max_token_days: int


class MyTeam(BaseModel):
    id: uuid.UUID
    name: str
    role: str = Field(description="member or owner")
    profile: MyProfile | None


class Me(BaseModel):
    user: schemas.UserPublic
    role: str = Field(description="self, or the admin role (admin, auditor, finance) the IdP groups gave.")
    via: str = Field(description="web (the session cookie) or cli (a keyward login credential)")
    expires_at: datetime = Field(description="When this session or credential ends.")
    csrf_token: str | None = Field(
        description="For the session cookie: send it as X-CSRF-Token with every change. Null for a credential.")
    teams: list[MyTeam]


class MyTokenRevoke(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: schemas.Reason | None = None


TokenState = Annotated[str, Field(pattern="^(active|revoked|expired)$")]


async def my_teams(session: AsyncSession, user_id: uuid.UUID) -> list[MyTeam]:
    rows = (await session.execute(
        select(Team, Membership.role, AccessProfile)
        .join(Membership, Membership.team_id == Team.id)
        .outerjoin(AccessProfile, AccessProfile.id == Team.profile_id)
        .where(Membership.user_id == user_id)
        .order_by(Team.name)
    )).all()
    return [
        MyTeam(id=team.id, name=team.name, role=role,
               profile=MyProfile(id=profile.id, name=profile.name, environments=list(profile.environments),
                                 default_token_days=profile.default_token_days,
                                 max_token_days=profile.max_token_days) if profile is not None else None)
        for team, role, profile in rows
    ]


async def mint_mine(session: AsyncSession, signed: SignedIn, data: MyTokenCreate, hash_key: bytes
                    ) -> tuple[Token, str]:
    request = schemas.TokenCreate(user_id=signed.user_id, team_id=data.team_id, name=data.name,
                                  environment=data.environment, models=data.models,
                                  expires_in_days=data.expires_in_days)
    team_id = await lifecycle.resolve_team(session, request)
    return await lifecycle.mint(session, actor=signed.actor, data=request, team_id=team_id, hash_key=hash_key)


async def get_mine(session: AsyncSession, signed: SignedIn, token_id: uuid.UUID) -> Token:
    token = await session.get(Token, token_id)
    if token is None or token.user_id != signed.user_id:
        raise NotFound("token_not_found", f"You have no token with id {token_id}.")
    return token


async def revoke_mine(session: AsyncSession, signed: SignedIn, token_id: uuid.UUID, reason: str | None) -> Token:
    token = await get_mine(session, signed, token_id)
    return await lifecycle.revoke(session, actor=signed.actor, token_id=token.id, reason=reason or "revoked by owner")
