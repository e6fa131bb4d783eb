"""Spend policy: projects, budgets and their utilisation, rate limits, prices and price overrides.

Amounts are USD as decimal strings in JSON (never floats: money adds up exactly). A scope is named by
its type and id (``team``/``<uuid>``); what applies to it is its own budget or rate limit if it has
one, else the default its team's access profile gives its scope type, which for a person, a service
account or a token depends on the team its tokens act for (so an answer lists one entry per team
where it differs, each naming its ``source``).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, Field, StringConstraints, computed_field, model_validator

from controlplane.schemas.common import (
    Input,
    Name,
    Output,
    Period,
    Posture,
    RateLimitSpec,
    RevocationStatus,
    ScopeType,
    Threshold,
    Usd,
)

ProjectStatus = Literal["open", "closed"]

#: A moment a budget window or a price can start at: timezone required, within a range every layer
#: (Python, PostgreSQL, the price table) can compute with.
Moment = Annotated[AwareDatetime, Field(ge=datetime(2000, 1, 1, tzinfo=UTC), lt=datetime(3000, 1, 1, tzinfo=UTC))]

#: A provider a request is priced for: a configured upstream's name (``openai``, ``anthropic``, ``azure-east``,
#: a vLLM server's; a catalog's ``*`` is no provider of its own).
PricedProvider = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$")]

#: An exact model name as the provider reports it (no pattern characters).
ModelName = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:/@-]+$")]

#: USD per million tokens (0 for a free, self-hosted model).
PerMillion = Annotated[Decimal, Field(ge=0, max_digits=14, decimal_places=6)]

Description = Annotated[str, StringConstraints(max_length=2000)]


# -- projects -------------------------------------------------------------------------------------


class ProjectCreate(Input):
    team_id: uuid.UUID
    name: Name
    description: Description | None = None


class ProjectUpdate(Input):
    _not_null = ("name",)

    name: Name | None = None
    description: Description | None = None


class ProjectPublic(Output):
    id: uuid.UUID
    team_id: uuid.UUID
    name: str
    description: str | None
    status: ProjectStatus
    created_at: datetime
    closed_at: datetime | None


class ProjectClosed(ProjectPublic):
    tokens_revoked: int = Field(description="Live tokens carrying the project, revoked by closing it (its usage "
                                            "records are kept).")
    revocation: RevocationStatus | None = Field(
        description="Whether every gateway replica already refuses them; null when none was revoked.")


# -- budgets --------------------------------------------------------------------------------------


class BudgetSet(Input):
    """A scope's own budget, in place of its profile's default: an amount per calendar month or day
    (UTC), or over a fixed window ``[window_start, window_end)`` (a profile's :class:`BudgetSpec`, plus
    the window)."""

    amount_usd: Usd
    period: Period = "month"
    window_start: Moment | None = Field(default=None, description="With period=window: when it starts.")
    window_end: Moment | None = Field(default=None, description="With period=window: when it ends (excluded).")
    posture: Posture = "alert_then_hard"
    thresholds: list[Threshold] = Field(default_factory=lambda: [50, 80, 100], max_length=10,
                                        description="Percentages of the amount at which an alert is raised.")

    @model_validator(mode="after")
    def _window(self) -> BudgetSet:
        self.thresholds = sorted(set(self.thresholds))
        windowed = self.window_start is not None or self.window_end is not None
        if self.period != "window":
            if windowed:
                raise ValueError("window_start and window_end go with period=window only")
        elif self.window_start is None or self.window_end is None:
            raise ValueError("period=window needs window_start and window_end")
        elif self.window_end <= self.window_start:
            raise ValueError("window_end must be after window_start")
        return self


class BudgetPublic(Output):
    id: uuid.UUID
    scope_type: ScopeType
    scope_id: uuid.UUID
    amount_usd: Decimal
    period: Period
    window_start: datetime | None
    window_end: datetime | None
    posture: Posture
    thresholds: list[int]
    created_at: datetime
    updated_at: datetime


Source = Annotated[str, Field(description="explicit (the scope's own), or profile:<name> (its team's default).")]
TeamIds = Annotated[list[uuid.UUID], Field(description="The teams whose tokens this applies to (for a person: "
                                                       "the teams they belong to).")]


class BudgetUtilisation(BaseModel):
    """One budget in effect for a scope, and how much of its current period is spent."""

    source: Source
    team_ids: TeamIds
    amount_usd: Decimal
    period: Period
    posture: Posture
    thresholds: list[int]
    period_start: datetime
    period_end: datetime = Field(description="When the period ends (excluded): the spend starts again from zero.")
    active: bool = Field(description="Now is within the period (false for a window not begun or past).")
    spent_usd: Decimal
    percent: Decimal = Field(description="Spent, in percent of the amount (two decimals).")
    remaining_usd: Decimal = Field(description="What is left, never below zero.")
    thresholds_reached: list[int]
    refused: bool = Field(description="The gateway refuses this scope's requests now: a hard posture at 100%.")


class Utilisation(BaseModel):
    scope_type: ScopeType
    scope_id: uuid.UUID
    scope_name: str = Field(description="The team's, project's or service account's name, the person's email, "
                                        "or the token's name.")
    budgets: list[BudgetUtilisation] = Field(description="Empty: no budget applies (nothing is refused).")


# -- rate limits ----------------------------------------------------------------------------------


class RateLimitSet(RateLimitSpec):
    """A scope's own rate limit, in place of its profile's default: the whole limit (an omitted rpm or
    tpm means none)."""


class RateLimitPublic(Output):
    id: uuid.UUID
    scope_type: ScopeType
    scope_id: uuid.UUID
    rpm: int | None
    tpm: int | None
    created_at: datetime
    updated_at: datetime


class EffectiveRateLimit(BaseModel):
    source: Source
    team_ids: TeamIds
    rpm: int | None = Field(description="Requests per minute; null: not limited.")
    tpm: int | None = Field(description="Tokens (input + output) per minute; null: not limited.")


class EffectiveRateLimits(BaseModel):
    scope_type: ScopeType
    scope_id: uuid.UUID
    scope_name: str
    limits: list[EffectiveRateLimit] = Field(description="Empty: no rate limit applies.")


# -- prices ---------------------------------------------------------------------------------------


class PriceOverrideCreate(Input):
    """An admin's price for a provider's model from ``effective_from`` on (a negotiated price, a
    self-hosted model at zero or a set rate), in place of the bundled price table."""

    provider: PricedProvider
    model: ModelName
    input_per_mtok: PerMillion
    cached_input_per_mtok: PerMillion | None = Field(default=None, description="Default: the input price.")
    output_per_mtok: PerMillion
    effective_from: Moment | None = Field(default=None, description="Default: now.")
    note: Description | None = None


class PriceOverridePublic(Output):
    id: uuid.UUID
    provider: str
    model: str
    input_per_mtok: Decimal
    cached_input_per_mtok: Decimal | None
    output_per_mtok: Decimal
    effective_from: datetime
    note: str | None
    created_by: str
    created_at: datetime

    @computed_field  # type: ignore[prop-decorator]
    @property
    def version(self) -> str:
        """The price version a request priced by this override records."""
        return f"override:{self.id}"


class PricePublic(BaseModel):
    """The price in effect now for one provider's model, per million tokens."""

    provider: str
    model: str
    source: Literal["bundled", "override", "unpriced"] = Field(
        description="bundled: the genai-prices table; override: an admin's price; unpriced: neither knows it "
                    "(its requests are recorded without a cost, never as zero).")
    input_per_mtok: Decimal | None
    cached_input_per_mtok: Decimal | None
    output_per_mtok: Decimal | None
    version: str | None = Field(description="What a request priced now records: genai-prices <version> or "
                                            "override:<id>.")
    effective_from: datetime | None = Field(description="For an override: when it took effect.")
    named_by: list[Literal["catalog", "spend", "override", "query"]] = Field(
        description="Why it is listed: a profile catalog names it, requests used it in the last 30 days, an "
                    "override prices it, or the query asked for it.")
