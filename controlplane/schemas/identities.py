"""People, teams and their members, access profiles, service accounts."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Annotated, Literal

from pydantic import EmailStr, Field, StringConstraints, model_validator

from authz.routes import DEFAULT_FAMILIES
from controlplane.schemas.common import (
    BudgetDefaults,
    Environment,
    Families,
    Input,
    MemberRole,
    ModelPattern,
    Name,
    Output,
    Provider,
    RateLimitDefaults,
    RevocationStatus,
    UpstreamName,
    UserStatus,
)
from controlplane.schemas.register import EmploymentType, Purpose, Workload


class UserCreate(Input):
    email: EmailStr
    display_name: Name | None = None
    external_id: Annotated[str, StringConstraints(max_length=200)] | None = None
    employment_type: EmploymentType = "employee"
    end_date: date | None = Field(default=None, description="When their access ends (a contractor's last day): "
                                                            "the day after it, they are deprovisioned.")


class UserUpdate(Input):
    _not_null = ("status", "employment_type")

    display_name: Name | None = None
    status: UserStatus | None = None
    employment_type: EmploymentType | None = None
    end_date: date | None = Field(default=None, description="When their access ends; null: no end date.")


class UserPublic(Output):
    id: uuid.UUID
    email: str
    display_name: str | None
    status: UserStatus
    external_id: str | None
    employment_type: EmploymentType = "employee"
    end_date: date | None = None
    created_at: datetime
    updated_at: datetime


class CatalogEntry(Input):
    """Models a profile offers through one API. Stored as given, and without ``upstream`` when it has none,
    so entries that name no upstream keep the shape they always had."""

    provider: Provider = Field(description="The API clients call these models through (openai, anthropic, azure, "
                                           "gemini, bedrock, mistral); '*' for every one.")
    pattern: ModelPattern
    environments: list[Environment] | None = Field(
        default=None, description="Token environments that may use these models; null: all the profile allows."
    )
    upstream: UpstreamName | None = Field(
        default=None, exclude_if=lambda value: value is None,
        description="The configured upstream that serves these models (e.g. an Azure OpenAI resource behind the "
                    "OpenAI API); it must serve the entry's API (for '*', some model API). Null: the API's default "
                    "upstream.")


#: The most tool entries a profile holds (as many as catalog entries).
MAX_TOOL_ENTRIES = 500


class ToolEntry(Input):
    """MCP tools a profile offers on one server."""

    server: UpstreamName = Field(description="A configured upstream of kind mcp (reached at /mcp/<server>).")
    tools: ModelPattern = Field(description="A tool name, or a shell-style pattern of them (search_*, or * for "
                                            "every tool the server has, now and later).")


_ENDPOINTS_HELP = ("The endpoint families its teams' tokens may call: chat, responses, completions, embeddings, "
                   "moderations, images, audio, files, batches, models, count_tokens, tools. Files, batches and "
                   "tools (MCP servers) are granted by name only.")
_TOOLS_HELP = (f"The MCP tool catalog (at most {MAX_TOOL_ENTRIES} entries). It takes effect only with the 'tools' "
               "endpoint family: without it, tokens reach no MCP server whatever this lists.")


class ProfileCreate(Input):
    name: Name
    description: Annotated[str, StringConstraints(max_length=2000)] | None = None
    catalog: list[CatalogEntry] = Field(max_length=500)
    environments: list[Environment] = Field(min_length=1)
    default_token_days: int = Field(default=30, gt=0, le=3650)
    max_token_days: int = Field(default=90, gt=0, le=3650)
    dormant_disable_days: int | None = Field(
        default=None, gt=0, le=3650, description="Opt-in: revoke tokens unused this many days (never used: since mint)."
    )
    budget_defaults: BudgetDefaults = Field(default_factory=BudgetDefaults)
    rate_limit_defaults: RateLimitDefaults = Field(default_factory=RateLimitDefaults)
    rotation_days: int | None = Field(default=None, gt=0, le=3650,
                                      description="Rotate tokens this often: past it the register flags them.")
    rotation_disable_days: int | None = Field(
        default=None, gt=0, le=3650, description="Opt-in, with rotation_days: revoke tokens this many days past "
                                                 "their rotation due date.")
    endpoints: Families = Field(default_factory=lambda: sorted(DEFAULT_FAMILIES, key=lambda f: f.value),
                                description=_ENDPOINTS_HELP + " Default: every family that acts on one model.")
    tools: list[ToolEntry] = Field(default_factory=list, max_length=MAX_TOOL_ENTRIES, description=_TOOLS_HELP)

    @model_validator(mode="after")
    def _lifetimes(self) -> ProfileCreate:
        if self.default_token_days > self.max_token_days:
            raise ValueError("default_token_days cannot exceed max_token_days")
        return self


class ProfileUpdate(Input):
    _not_null = ("name", "catalog", "environments", "default_token_days", "max_token_days", "budget_defaults",
                 "rate_limit_defaults", "endpoints", "tools")

    name: Name | None = None
    description: Annotated[str, StringConstraints(max_length=2000)] | None = None
    catalog: list[CatalogEntry] | None = Field(default=None, max_length=500)
    environments: list[Environment] | None = Field(default=None, min_length=1)
    default_token_days: int | None = Field(default=None, gt=0, le=3650)
    max_token_days: int | None = Field(default=None, gt=0, le=3650)
    dormant_disable_days: int | None = Field(default=None, gt=0, le=3650)
    budget_defaults: BudgetDefaults | None = None
    rate_limit_defaults: RateLimitDefaults | None = None
    rotation_days: int | None = Field(default=None, gt=0, le=3650)
    rotation_disable_days: int | None = Field(default=None, gt=0, le=3650)
    endpoints: Families | None = Field(default=None, description=_ENDPOINTS_HELP + " Replaces the whole list.")
    tools: list[ToolEntry] | None = Field(default=None, max_length=MAX_TOOL_ENTRIES,
                                          description=_TOOLS_HELP + " Replaces the whole list.")


class ProfilePublic(Output):
    id: uuid.UUID
    name: str
    description: str | None
    catalog: list[dict]
    environments: list[str]
    default_token_days: int
    max_token_days: int
    dormant_disable_days: int | None
    budget_defaults: dict
    rate_limit_defaults: dict
    rotation_days: int | None = None
    rotation_disable_days: int | None = None
    endpoints: list[str] = Field(description="The endpoint families its teams' tokens may call.")
    tools: list[dict] = Field(description="The MCP tool catalog: {server, tools} entries; used only with the "
                                          "'tools' family.")
    created_at: datetime
    updated_at: datetime


class TeamCreate(Input):
    name: Name
    description: Annotated[str, StringConstraints(max_length=2000)] | None = None
    profile_id: uuid.UUID | None = None


class TeamUpdate(Input):
    _not_null = ("name",)

    name: Name | None = None
    description: Annotated[str, StringConstraints(max_length=2000)] | None = None
    profile_id: uuid.UUID | None = None


class TeamPublic(Output):
    id: uuid.UUID
    name: str
    description: str | None
    profile_id: uuid.UUID | None
    created_at: datetime
    updated_at: datetime


class MembershipSet(Input):
    role: MemberRole = "member"


class MembershipPublic(Output):
    team_id: uuid.UUID
    user_id: uuid.UUID
    role: MemberRole
    created_at: datetime


class ServiceAccountCreate(Input):
    name: Name
    description: Annotated[str, StringConstraints(max_length=2000)] | None = None
    team_id: uuid.UUID
    business_owner_id: uuid.UUID
    technical_owner_id: uuid.UUID
    project_id: uuid.UUID | None = Field(default=None, description="An open project of the team: the default "
                                                                   "project of the account's tokens.")
    security_owner_id: uuid.UUID | None = None
    finance_owner_id: uuid.UUID | None = None
    purpose: Purpose | None = None
    workload: Workload | None = Field(default=None, description="The service or repository that runs with it.")


class ServiceAccountUpdate(Input):
    _not_null = ("business_owner_id", "technical_owner_id", "status")

    description: Annotated[str, StringConstraints(max_length=2000)] | None = None
    business_owner_id: uuid.UUID | None = None
    technical_owner_id: uuid.UUID | None = None
    status: Literal["active", "disabled"] | None = None
    project_id: uuid.UUID | None = Field(default=None, description="The default project of the account's new "
                                                                   "tokens; null: none.")
    security_owner_id: uuid.UUID | None = None
    finance_owner_id: uuid.UUID | None = None
    purpose: Purpose | None = None
    workload: Workload | None = None


class ServiceAccountPublic(Output):
    id: uuid.UUID
    name: str
    description: str | None
    team_id: uuid.UUID
    business_owner_id: uuid.UUID
    technical_owner_id: uuid.UUID
    project_id: uuid.UUID | None
    status: Literal["active", "disabled"]
    security_owner_id: uuid.UUID | None = None
    finance_owner_id: uuid.UUID | None = None
    purpose: str | None = None
    workload: str | None = None
    reassign_by: datetime | None = Field(default=None, description="An owner departed: reassign it by then, or "
                                                                   "it is disabled.")
    flagged_reason: str | None = None
    created_at: datetime
    updated_at: datetime


class UserUpdated(UserPublic):
    revocation: RevocationStatus | None = Field(
        default=None, description="When the change suspended or deprovisioned the user: whether every gateway "
                                  "replica already refuses their tokens.")
