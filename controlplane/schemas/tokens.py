"""Personal access tokens: mint, narrow, rotate, revoke; and a signed-in user's own view."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from controlplane.schemas.common import Environment, Input, ModelPattern, Name, Output, Reason, RevocationStatus
from controlplane.schemas.identities import UserPublic


class TokenCreate(Input):
    """A token acts for one team and gets that team's access profile; ``models`` can only narrow it."""

    user_id: uuid.UUID | None = Field(default=None, description="The owner, if a person (exactly one owner).")
    service_account_id: uuid.UUID | None = Field(default=None, description="The owner, if a workload.")
    team_id: uuid.UUID | None = Field(
        default=None, description="The team the token acts for; defaults to the owner's only team."
    )
    project_id: uuid.UUID | None = Field(
        default=None, description="An open project of the token's team, which its spend rolls up to; a service "
                                  "account's token defaults to the account's project."
    )
    name: Name
    environment: Environment = "dev"
    models: list[ModelPattern] = Field(
        default_factory=lambda: ["*"],
        min_length=1,
        max_length=200,
        description="Narrows the team profile's catalog (names or shell-style patterns); ['*'] keeps all of it.",
    )
    scopes: list[Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_.:-]{0,63}$")]] = Field(
        default_factory=list, max_length=50
    )
    expires_in_days: int | None = Field(
        default=None, gt=0, description="Defaults to the profile's default lifetime; at most its maximum."
    )

    @model_validator(mode="after")
    def _one_owner(self) -> TokenCreate:
        if (self.user_id is None) == (self.service_account_id is None):
            raise ValueError("give exactly one of user_id and service_account_id")
        return self


class TokenNarrow(Input):
    """Narrow a live token without re-issuing it. Widening needs a new token."""

    models: list[ModelPattern] | None = Field(default=None, min_length=1, max_length=200)
    expires_at: AwareDatetime | None = None


class TokenRotate(Input):
    grace_hours: float = Field(
        default=24, ge=0, le=24 * 30, description="How long the old token keeps working after the new one exists."
    )
    name: Name | None = None


class BulkRevoke(Input):
    reason: Reason | None = None


class BulkRevoked(BaseModel):
    revoked: int
    revocation: RevocationStatus


class TokenRevoke(Input):
    reason: Reason | None = None


class TokenPublic(Output):
    id: uuid.UUID
    name: str
    hint: str = Field(description="The token's prefix and last four characters; the secret is never shown again.")
    user_id: uuid.UUID | None
    service_account_id: uuid.UUID | None
    team_id: uuid.UUID | None
    project_id: uuid.UUID | None
    environment: Environment
    models: list[str]
    scopes: list[str]
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None
    revoked_by: str | None
    revoke_reason: str | None
    rotated_from: uuid.UUID | None


class TokenIssued(TokenPublic):
    token: str = Field(description="The secret. Shown once: store it now, Keyward keeps only a hash.")


class TokenRevoked(TokenPublic):
    revocation: RevocationStatus


class TokenRotated(BaseModel):
    new: TokenIssued
    old: TokenPublic


class MyTokenCreate(BaseModel):
    """A token for yourself: one of your teams (optional when you have exactly one), within its profile."""

    model_config = ConfigDict(extra="forbid")

    name: Name
    team_id: uuid.UUID | None = Field(default=None, description="One of your teams; optional if you have one.")
    project_id: uuid.UUID | None = Field(default=None, description="An open project of that team.")
    environment: Environment = "dev"
    models: list[ModelPattern] = Field(default_factory=lambda: ["*"], min_length=1, max_length=200,
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
    user: UserPublic
    role: str = Field(description="self, or the admin role (admin, auditor, finance) the IdP groups gave.")
    via: str = Field(description="web (the session cookie) or cli (a keyward login credential)")
    expires_at: datetime = Field(description="When this session or credential ends.")
    csrf_token: str | None = Field(
        description="For the session cookie: send it as X-CSRF-Token with every change. Null for a credential.")
    teams: list[MyTeam]


class MyTokenRevoke(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Reason | None = None
