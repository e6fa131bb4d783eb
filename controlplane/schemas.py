"""Request and response bodies of the admin API.

Create / Update / Public are separate classes on purpose: no response model has a field for a
token hash, and only :class:`TokenIssued` (returned once, at mint time) carries the secret.
Every input model forbids unknown fields, so a typo is a 422 and not a silently ignored setting.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Generic, Literal, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, EmailStr, Field, StringConstraints, model_validator

UserStatus = Literal["active", "suspended", "deprovisioned"]
Environment = Literal["dev", "staging", "prod", "ci"]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
ModelPattern = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:/@*?\[\]-]+$")]
T = TypeVar("T")
Reason = Annotated[str, StringConstraints(strip_whitespace=True, max_length=500)]
#: The largest value of a PostgreSQL integer column.
MAX_INT = 2**31 - 1


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: Update fields that may be left out but not set to null (the column cannot be empty).
    _not_null: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="before")
    @classmethod
    def _explicit_nulls(cls, data: Any) -> Any:
        if isinstance(data, dict):
            nulls = [name for name in cls._not_null if name in data and data[name] is None]
            if nulls:
                raise ValueError(f"{', '.join(nulls)} may be left out but not set to null")
        return data


class _Output(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class UserCreate(_Input):
    email: EmailStr
    display_name: Name | None = None
    external_id: Annotated[str, StringConstraints(max_length=200)] | None = None


class UserUpdate(_Input):
    _not_null = ("status",)

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
    """A token acts for one team and gets that team's access profile; ``models`` can only narrow it."""

    user_id: uuid.UUID | None = Field(default=None, description="The owner, if a person (exactly one owner).")
    service_account_id: uuid.UUID | None = Field(default=None, description="The owner, if a workload.")
    team_id: uuid.UUID | None = Field(
        default=None, description="The team the token acts for; defaults to the owner's only team."
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


class TokenNarrow(_Input):
    """Narrow a live token without re-issuing it. Widening needs a new token."""

    models: list[ModelPattern] | None = Field(default=None, min_length=1, max_length=200)
    expires_at: AwareDatetime | None = None


class TokenRotate(_Input):
    grace_hours: float = Field(
        default=24, ge=0, le=24 * 30, description="How long the old token keeps working after the new one exists."
    )
    name: Name | None = None


class BulkRevoke(_Input):
    reason: Reason | None = None


class BulkRevoked(BaseModel):
    revoked: int


class TokenRevoke(_Input):
    reason: Reason | None = None


class TokenPublic(_Output):
    id: uuid.UUID
    name: str
    hint: str = Field(description="The token's prefix and last four characters; the secret is never shown again.")
    user_id: uuid.UUID | None
    service_account_id: uuid.UUID | None
    team_id: uuid.UUID | None
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


class TokenRotated(BaseModel):
    new: TokenIssued
    old: TokenPublic


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


Provider = Literal["openai", "anthropic", "*"]


class CatalogEntry(_Input):
    provider: Provider = Field(description="'*' for every provider.")
    pattern: ModelPattern
    environments: list[Environment] | None = Field(
        default=None, description="Token environments that may use these models; null: all the profile allows."
    )


class ProfileCreate(_Input):
    name: Name
    description: Annotated[str, StringConstraints(max_length=2000)] | None = None
    catalog: list[CatalogEntry] = Field(max_length=500)
    environments: list[Environment] = Field(min_length=1)
    default_token_days: int = Field(default=30, gt=0, le=3650)
    max_token_days: int = Field(default=90, gt=0, le=3650)
    dormant_disable_days: int | None = Field(
        default=None, gt=0, le=3650, description="Opt-in: revoke tokens unused this many days (never used: since mint)."
    )
    rate_limit_rpm: int | None = Field(default=None, gt=0, le=MAX_INT)
    monthly_budget_usd: Decimal | None = Field(default=None, gt=0, max_digits=12, decimal_places=2)

    @model_validator(mode="after")
    def _lifetimes(self) -> ProfileCreate:
        if self.default_token_days > self.max_token_days:
            raise ValueError("default_token_days cannot exceed max_token_days")
        return self


class ProfileUpdate(_Input):
    _not_null = ("name", "catalog", "environments", "default_token_days", "max_token_days")

    name: Name | None = None
    description: Annotated[str, StringConstraints(max_length=2000)] | None = None
    catalog: list[CatalogEntry] | None = Field(default=None, max_length=500)
    environments: list[Environment] | None = Field(default=None, min_length=1)
    default_token_days: int | None = Field(default=None, gt=0, le=3650)
    max_token_days: int | None = Field(default=None, gt=0, le=3650)
    dormant_disable_days: int | None = Field(default=None, gt=0, le=3650)
    rate_limit_rpm: int | None = Field(default=None, gt=0, le=MAX_INT)
    monthly_budget_usd: Decimal | None = Field(default=None, gt=0, max_digits=12, decimal_places=2)


class ProfilePublic(_Output):
    id: uuid.UUID
    name: str
    description: str | None
    catalog: list[dict]
    environments: list[str]
    default_token_days: int
    max_token_days: int
    dormant_disable_days: int | None
    rate_limit_rpm: int | None
    monthly_budget_usd: Decimal | None
    created_at: datetime
    updated_at: datetime


class TeamCreate(_Input):
    name: Name
    description: Annotated[str, StringConstraints(max_length=2000)] | None = None
    profile_id: uuid.UUID | None = None


class TeamUpdate(_Input):
    _not_null = ("name",)

    name: Name | None = None
    description: Annotated[str, StringConstraints(max_length=2000)] | None = None
    profile_id: uuid.UUID | None = None


class TeamPublic(_Output):
    id: uuid.UUID
    name: str
    description: str | None
    profile_id: uuid.UUID | None
    created_at: datetime
    updated_at: datetime


MemberRole = Literal["member", "owner"]


class MembershipSet(_Input):
    role: MemberRole = "member"


class MembershipPublic(_Output):
    team_id: uuid.UUID
    user_id: uuid.UUID
    role: MemberRole
    created_at: datetime


class ServiceAccountCreate(_Input):
    name: Name
    description: Annotated[str, StringConstraints(max_length=2000)] | None = None
    team_id: uuid.UUID
    business_owner_id: uuid.UUID
    technical_owner_id: uuid.UUID


class ServiceAccountUpdate(_Input):
    _not_null = ("business_owner_id", "technical_owner_id", "status")

    description: Annotated[str, StringConstraints(max_length=2000)] | None = None
    business_owner_id: uuid.UUID | None = None
    technical_owner_id: uuid.UUID | None = None
    status: Literal["active", "disabled"] | None = None


class ServiceAccountPublic(_Output):
    id: uuid.UUID
    name: str
    description: str | None
    team_id: uuid.UUID
    business_owner_id: uuid.UUID
    technical_owner_id: uuid.UUID
    status: Literal["active", "disabled"]
    created_at: datetime
    updated_at: datetime


Role = Literal["admin", "auditor", "finance", "owner"]


class CredentialCreate(_Input):
    name: Name
    role: Role
    team_id: uuid.UUID | None = Field(default=None, description="Required for (and only for) the owner role.")
    expires_in_days: int | None = Field(default=None, gt=0, le=3650)

    @model_validator(mode="after")
    def _owner_team(self) -> CredentialCreate:
        if (self.role == "owner") != (self.team_id is not None):
            raise ValueError("team_id is required for the owner role and not allowed for the others")
        return self


class CredentialPublic(_Output):
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


class CredentialIssued(CredentialPublic):
    token: str = Field(description="The admin-API credential. Shown once.")


class WhoAmI(BaseModel):
    actor: str
    role: Role
    team_id: uuid.UUID | None
    break_glass: bool


class UsageRow(BaseModel):
    key: str | None
    requests: int
    allowed: int
    prompt_tokens: int
    completion_tokens: int


class ScimConnectionCreate(_Input):
    name: Name
    idp: Literal["okta", "entra", "google", "other"]


class ScimConnectionPublic(_Output):
    id: uuid.UUID
    name: str
    idp: str
    created_at: datetime


class ScimCredentialPublic(_Output):
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


# -- a signed-in user's own ----------------------------------------------------------------------


class MyTokenCreate(BaseModel):
    """A token for yourself: one of your teams (optional when you have exactly one), within its profile."""

    model_config = ConfigDict(extra="forbid")

    name: Name
    team_id: uuid.UUID | None = Field(default=None, description="One of your teams; optional if you have one.")
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
