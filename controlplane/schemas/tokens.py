"""Personal access tokens: mint, narrow, rotate, revoke; and a signed-in user's own view."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, computed_field, model_validator

from controlplane.schemas.common import (
    Environment,
    Families,
    Input,
    ModelPattern,
    Name,
    Output,
    Reason,
    RevocationStatus,
)
from controlplane.schemas.identities import UserPublic
from controlplane.schemas.register import Purpose, SecretLocation, Workload


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
    endpoints: Families | None = Field(
        default=None, description="Narrows the team profile's endpoint families (each must be one the profile "
                                  "allows); null: the profile's, as they are now and as they change.")
    scopes: list[Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_.:-]{0,63}$")]] = Field(
        default_factory=list, max_length=50
    )
    expires_in_days: int | None = Field(
        default=None, gt=0, description="Defaults to the profile's default lifetime; at most its maximum."
    )
    purpose: Purpose | None = None
    workload: Workload | None = Field(default=None, description="The service or repository the token serves.")
    secret_location: SecretLocation | None = Field(default=None, description="Where the secret will live.")
    backup_owner_id: uuid.UUID | None = Field(
        default=None, description="A personal token's backup owner: an active user other than its owner.")

    @model_validator(mode="after")
    def _one_owner(self) -> TokenCreate:
        if (self.user_id is None) == (self.service_account_id is None):
            raise ValueError("give exactly one of user_id and service_account_id")
        return self


class TokenNarrow(Input):
    """Narrow a live token without re-issuing it. Widening needs a new token."""

    # Null endpoints would mean "the profile's, whatever they become": a widening, not a narrowing.
    _not_null = ("endpoints",)

    models: list[ModelPattern] | None = Field(default=None, min_length=1, max_length=200)
    endpoints: Families | None = Field(
        default=None, description="A narrower list of endpoint families: each must be one the token may call now.")
    expires_at: AwareDatetime | None = None


class TokenUpdate(TokenNarrow):
    """Narrow a live token (``models``, ``endpoints``, ``expires_at``) and/or set its register fields; null
    clears a register field."""

    purpose: Purpose | None = None
    workload: Workload | None = None
    secret_location: SecretLocation | None = None
    backup_owner_id: uuid.UUID | None = Field(
        default=None, description="Personal tokens only: an active user other than the owner.")


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
    endpoints: list[str] | None = Field(default=None, description="Its own narrowing of the profile's endpoint "
                                                                  "families; null: the profile's.")
    scopes: list[str]
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None
    revoked_by: str | None
    revoke_reason: str | None
    rotated_from: uuid.UUID | None
    purpose: str | None = None
    workload: str | None = None
    secret_location: str | None = None
    backup_owner_id: uuid.UUID | None = None
    effective_status: str | None = Field(
        default=None, description="What the gateway would do with it now: usable, or its machine code for refusing "
                                  "it (token_revoked, token_expired, not_a_member, owner_disabled, budget_exceeded, "
                                  "…), beside the stored state above. In lists and on GET /tokens/{id}.")

    @computed_field(  # type: ignore[prop-decorator]
        description="What the token's own row says: revoked, expired, or active. An active token may still be "
                    "refused by the gateway: see effective_status.")
    @property
    def status(self) -> Literal["active", "revoked", "expired"]:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= datetime.now(UTC):
            return "expired"
        return "active"


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
    endpoints: Families | None = Field(default=None, description="Narrows the team profile's endpoint families "
                                                                 "(e.g. ['chat', 'embeddings']); null keeps them.")
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
