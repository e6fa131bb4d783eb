"""Who may call the admin API and SCIM: admin-API credentials, SCIM connections and their credentials."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from controlplane.schemas.common import Input, Name, Output, Role
from controlplane.schemas.register import Purpose, SecretLocation


class CredentialCreate(Input):
    name: Name
    role: Role
    team_id: uuid.UUID | None = Field(default=None, description="Required for (and only for) the owner role.")
    expires_in_days: int | None = Field(default=None, gt=0, le=3650)
    purpose: Purpose | None = None
    owner_id: uuid.UUID | None = Field(default=None, description="The person answerable for it (an active user).")
    secret_location: SecretLocation | None = None

    @model_validator(mode="after")
    def _owner_team(self) -> CredentialCreate:
        if (self.role == "owner") != (self.team_id is not None):
            raise ValueError("team_id is required for the owner role and not allowed for the others")
        return self


class CredentialPublic(Output):
    id: uuid.UUID
    name: str
    role: Role
    team_id: uuid.UUID | None
    hint: str
    created_by: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None
    purpose: str | None = None
    owner_id: uuid.UUID | None = None
    secret_location: str | None = None
    reassign_by: datetime | None = Field(default=None, description="Its owner departed: reassign it by then, or "
                                                                   "it is revoked.")
    flagged_reason: str | None = None


class CredentialUpdate(Input):
    """A credential's register fields; null clears one. A new owner clears a reassignment flag."""

    purpose: Purpose | None = None
    owner_id: uuid.UUID | None = None
    secret_location: SecretLocation | None = None


class CredentialIssued(CredentialPublic):
    token: str = Field(description="The admin-API credential. Shown once.")


class WhoAmI(BaseModel):
    actor: str
    role: Role
    team_id: uuid.UUID | None
    break_glass: bool


class ScimConnectionCreate(Input):
    name: Name
    idp: Literal["okta", "entra", "google", "other"]


class ScimConnectionPublic(Output):
    id: uuid.UUID
    name: str
    idp: str
    created_at: datetime


class ScimCredentialPublic(Output):
    id: uuid.UUID
    connection_id: uuid.UUID
    hint: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class ScimCredentialIssued(ScimCredentialPublic):
    token: str = Field(description="The SCIM bearer credential. Shown once.")


class ScimConnectionIssued(BaseModel):
    connection: ScimConnectionPublic
    credential: ScimCredentialIssued


class ScimHandover(Input):
    """Users and teams (groups) an admin hands over to a SCIM connection, which from then on manages
    them: it sees them, and may change, deactivate or delete them."""

    user_ids: list[uuid.UUID] = Field(default_factory=list, max_length=1000)
    team_ids: list[uuid.UUID] = Field(default_factory=list, max_length=1000)


class ScimHandedOver(BaseModel):
    users: int
    teams: int
