"""Shapes every document shares: input and output bases, pages, names, patterns, vocabularies."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Generic, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from authz.routes import Family

UserStatus = Literal["active", "suspended", "deprovisioned"]

Environment = Literal["dev", "staging", "prod", "ci"]

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]

ModelPattern = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:/@*?\[\]-]+$")]

T = TypeVar("T")

Reason = Annotated[str, StringConstraints(strip_whitespace=True, max_length=500)]

#: The largest value of a PostgreSQL integer column.
MAX_INT = 2**31 - 1


class Input(BaseModel):
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


class Output(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(description="Pass as ?cursor= to get the next page; null on the last page.")


#: The API a catalog entry applies to: each model API the gateway speaks (:class:`authz.upstreams.Api`, MCP
#: aside: tools have a catalog of their own), or ``*`` for all of them.
Provider = Literal["openai", "anthropic", "azure", "gemini", "bedrock", "mistral", "*"]

#: The name of a configured upstream (``KEYWARD_UPSTREAMS``, plus the built-in ``openai`` and ``anthropic``), by
#: :data:`authz.upstreams.NAME`'s rule, restated for pydantic's regex engine (``$`` ends the text there).
UpstreamName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$")]


def _unique(families: list[Family]) -> list[Family]:
    repeated = sorted({f.value for f in families if families.count(f) > 1})
    if repeated:
        raise ValueError(f"{', '.join(repeated)} given more than once")
    return families


#: A list of endpoint families (chat, embeddings, files, batches, tools, …), each at most once.
Families = Annotated[list[Family], Field(min_length=1, max_length=len(Family)), AfterValidator(_unique)]


def family_values(families: list[Family]) -> list[str]:
    """Families as stored: their names, in one order (so equal sets are equal lists, in rows and events)."""
    return sorted(f.value for f in families)

Role = Literal["admin", "auditor", "finance", "owner"]

MemberRole = Literal["member", "owner"]

#: What a budget or a rate limit attaches to, from the narrowest to the widest.
ScopeType = Literal["token", "user", "service_account", "project", "team"]
#: ``hard``: refuse at 100%. ``alert``: announce the thresholds, never refuse. ``alert_then_hard``:
#: announce the thresholds, refuse at 100%.
Posture = Literal["hard", "alert", "alert_then_hard"]
#: Budget periods: the calendar month or day (UTC), or a fixed window of an explicit budget.
Period = Literal["month", "day", "window"]
#: A positive amount of US dollars (up to 10 digits before the point, 4 after).
Usd = Annotated[Decimal, Field(gt=0, max_digits=14, decimal_places=4)]


class RevocationStatus(BaseModel):
    """Whether the gateway already refuses what was revoked: every live authz replica confirmed it."""

    applied: bool = Field(description="Every live authz replica applied it within the wait: from this response "
                                      "on, the gateway refuses. False: see unconfirmed.")
    confirmed: dict[str, datetime] = Field(description="Replica id -> when it applied the change.")
    unconfirmed: list[str] = Field(description="Replicas seen alive that did not confirm within the wait.")
    waited_ms: int


Threshold = Annotated[int, Field(gt=0, le=1000)]


class BudgetSpec(Input):
    """A budget without its scope: what a profile gives each scope of a type by default."""

    amount_usd: Usd
    period: Literal["month", "day"] = "month"
    posture: Posture = "alert_then_hard"
    thresholds: list[Threshold] = Field(default_factory=lambda: [50, 80, 100], max_length=10,
                                        description="Percentages of the amount at which an alert is raised.")

    @model_validator(mode="after")
    def _sorted(self) -> BudgetSpec:
        self.thresholds = sorted(set(self.thresholds))
        return self


class RateLimitSpec(Input):
    rpm: int | None = Field(default=None, gt=0, le=MAX_INT, description="Requests per minute.")
    tpm: int | None = Field(default=None, gt=0, le=2**62, description="Tokens (input + output) per minute.")

    @model_validator(mode="after")
    def _something(self) -> RateLimitSpec:
        if self.rpm is None and self.tpm is None:
            raise ValueError("set rpm, tpm or both")
        return self


class BudgetDefaults(Input):
    """A profile's default budget per scope type: every team with the profile, and every project,
    person, service account and token acting for such a team, gets one unless it has its own."""

    team: BudgetSpec | None = None
    project: BudgetSpec | None = None
    user: BudgetSpec | None = None
    service_account: BudgetSpec | None = None
    token: BudgetSpec | None = None


class RateLimitDefaults(Input):
    """A profile's default rate limits per scope type (see :class:`BudgetDefaults`)."""

    team: RateLimitSpec | None = None
    project: RateLimitSpec | None = None
    user: RateLimitSpec | None = None
    service_account: RateLimitSpec | None = None
    token: RateLimitSpec | None = None
