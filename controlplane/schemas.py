"""Request and response bodies of the admin API.

Create / Update / Public are separate classes on purpose: no response model has a field for a
token hash, and only :class:`TokenIssued` (returned once, at mint time) carries the secret.
Every input model forbids unknown fields, so a typo is a 422 and not a silently ignored setting.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, EmailStr, Field, StringConstraints

UserStatus = Literal["active", "suspended", "deprovisioned"]
Environment = Literal["dev", "staging", "prod", "ci"]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
ModelPattern = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:/@*?\[\]-]+$")]
T = TypeVar("T")
Reason = Annotated[str, StringConstraints(strip_whitespace=True, max_length=500)]


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Output(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class UserCreate(_Input):
    email: EmailStr
    display_name: Name | None = None
    external_id: Annotated[str, StringConstraints(max_length=200)] | None = None


class UserUpdate(_Input):
    display_name: Name | None = None
    status: UserStatus | None = None


class UserPublic(_Output):
    id: uuid.UUID
    email: str
    display_name: str | None
    status: UserStatus
    external_id: str | None
    created_at: datetime
    updated_at: datetime


class TokenCreate(_Input):
    user_id: uuid.UUID
    name: Name
    environment: Environment = "dev"
    models: list[ModelPattern] = Field(
        default_factory=lambda: ["*"],
        min_length=1,
        max_length=200,
        description="Model names or shell-style patterns the token may call; ['*'] allows every model.",
    )
    scopes: list[Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_.:-]{0,63}$")]] = Field(
        default_factory=list, max_length=50
    )
    team: Name | None = None
    expires_in_days: int | None = Field(default=None, gt=0, description="Defaults to the server's default lifetime.")


class TokenRevoke(_Input):
    reason: Reason | None = None


class TokenPublic(_Output):
    id: uuid.UUID
    name: str
    hint: str = Field(description="The token's prefix and last four characters; the secret is never shown again.")
    user_id: uuid.UUID
    team: str | None
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


class EventPublic(_Output):
    seq: int
    at: datetime
    actor: str
    mechanism: str
    action: str
    target_type: str
    target_id: str
    before: dict | None
    after: dict | None


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(description="Pass as ?cursor= to get the next page; null on the last page.")


class RequestRecord(_Output):
    """One gateway request: who, when, what, the decision, and what happened next."""

    seq: int
    at: datetime
    request_id: str
    source: Literal["authz", "envoy"]
    token_id: uuid.UUID | None
    user_id: uuid.UUID | None
    user_email: str | None
    team: str | None
    environment: str | None
    provider: str | None
    method: str | None
    route: str | None
    model: str | None
    decision: str
    status: int | None
    upstream_status: int | None
    response_flags: str | None
    details: str | None = Field(description="Envoy's reason for the response (via_upstream, ext_authz_denied, …).")
    duration_ms: int | None
    upstream_ms: int | None
    bytes_in: int | None
    bytes_out: int | None
    prompt_tokens: int | None
    completion_tokens: int | None


class UserActivity(BaseModel):
    user: UserPublic
    last_request: RequestRecord | None
    last_allowed_request: RequestRecord | None
    disabled_at: datetime | None = Field(description="When the user was last suspended or deprovisioned.")
    disabled_by: EventPublic | None
    allowed_after_disabled: int | None = Field(
        description="Requests allowed after disabled_at; null when the user was never disabled."
    )
    allowed_after_disabled_examples: list[RequestRecord]
