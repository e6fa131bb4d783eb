"""Access reviews, their items and schedules, and exceptions (``/reviews``, ``/review-schedules``,
``/exceptions``).

An item's ``snapshot`` is the credential-register row frozen when the item was made: what the reviewer
judged, whatever the credential became since. A decision's ``reason`` is required, always.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, Field, StringConstraints, model_validator

from controlplane.schemas.common import Environment, Input, ModelPattern, Name, Output
from controlplane.schemas.register import EmploymentType, RegisterKind, SubjectType

Decision = Literal["keep", "narrow", "rotate", "reassign", "disable", "delete", "escalate"]
Cadence = Literal["weekly", "monthly", "quarterly", "yearly"]
ExceptionStatus = Literal["pending", "approved", "rejected", "expired", "withdrawn"]
#: A short machine string naming the failing condition kept despite: owners_not_distinct, rotation_overdue, …
Condition = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100,
                                             pattern=r"^[a-z0-9_,:.-]+$")]
RequiredReason = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=1000)]
OwnerRole = Literal["business", "technical", "security", "finance"]


class ReviewScope(Input):
    """Which register rows a review covers; every field narrows (none: every credential)."""

    kinds: list[RegisterKind] | None = Field(default=None, min_length=1, max_length=4,
                                             description="The register's kinds: personal (people's tokens), "
                                                         "service (service accounts and their tokens), admin "
                                                         "(admin-API credentials), scim.")
    team_id: uuid.UUID | None = None
    environment: Environment | None = None
    employment_types: list[EmploymentType] | None = Field(
        default=None, min_length=1, max_length=4,
        description="Only credentials owned by people of these kinds (contractor, vendor: third-party access).")
    production_only: bool = Field(default=False, description="Only prod tokens, service accounts with prod tokens, "
                                                             "and admin and SCIM credentials (they change production).")


class ReviewCreate(Input):
    name: Name
    scope: ReviewScope = Field(default_factory=ReviewScope)
    due_at: AwareDatetime


class ExceptionRequest(Input):
    subject_type: SubjectType
    subject_id: uuid.UUID
    condition: Condition
    reason: RequiredReason
    expires_at: AwareDatetime = Field(description="Required: every exception expires (at most "
                                                  "KEYWARD_EXCEPTION_MAX_DAYS ahead, 365 by default).")


class ExceptionDecision(Input):
    note: Annotated[str, StringConstraints(strip_whitespace=True, max_length=1000)] | None = None


class ExceptionPublic(Output):
    id: uuid.UUID
    subject_type: SubjectType
    subject_id: uuid.UUID
    condition: str
    reason: str
    requested_by: str
    approved_by: str | None = Field(description="Who approved or rejected it: never the requester.")
    status: ExceptionStatus
    expires_at: datetime
    created_at: datetime
    decided_at: datetime | None
    review_item_id: uuid.UUID | None


class ItemDecide(Input):
    """One decision on one item. ``keep`` of an item whose snapshot has flags needs ``exception_expires_at``:
    it files an exception, and the item counts as decided once someone else approves it."""

    decision: Decision
    reason: RequiredReason
    models: list[ModelPattern] | None = Field(default=None, min_length=1, max_length=200,
                                              description="narrow: the models to keep (default: the suggestion, "
                                                          "the models actually used in 30 days).")
    grace_hours: float = Field(default=24, ge=0, le=24 * 30, description="rotate: how long the old secret works.")
    new_owner_id: uuid.UUID | None = Field(default=None, description="reassign: the new owner (a user).")
    owner_roles: list[OwnerRole] | None = Field(
        default=None, min_length=1, max_length=4,
        description="reassign of a service account: which owners to replace (default: the departed ones, "
                    "else the technical owner).")
    exception_expires_at: AwareDatetime | None = Field(default=None,
                                                       description="keep despite flags: when the exception ends.")
    condition: Condition | None = Field(default=None, description="keep despite flags: the condition the "
                                                                  "exception names (default: the flags, joined).")

    @model_validator(mode="after")
    def _needs(self) -> ItemDecide:
        if self.decision == "reassign" and self.new_owner_id is None:
            raise ValueError("reassign needs new_owner_id")
        return self


class ReviewItemPublic(Output):
    id: uuid.UUID
    review_id: uuid.UUID
    subject_type: SubjectType
    subject_id: uuid.UUID
    snapshot: dict[str, Any] = Field(description="The register row frozen when the item was made.")
    reviewer: str | None
    decision: Decision | None
    reason: str | None
    decided_by: str | None
    decided_at: datetime | None
    result: dict[str, Any] | None = Field(description="What carrying the decision out changed.")
    exception_id: uuid.UUID | None
    reopened_at: datetime | None
    state: Literal["open", "decided", "escalated", "awaiting_exception"] = "open"
    suggested_models: list[str] | None = Field(default=None, description="For narrow: the models actually used "
                                                                         "in 30 days (from the snapshot).")


class ReviewProgress(BaseModel):
    items: int
    decided: int
    open: int
    escalated: int
    awaiting_exception: int


class ReviewPublic(Output):
    id: uuid.UUID
    name: str
    scope: dict[str, Any]
    status: Literal["open", "closed"]
    opened_by: str
    opened_at: datetime
    due_at: datetime
    closed_by: str | None
    closed_at: datetime | None
    report_sha256: str | None
    schedule_id: uuid.UUID | None
    trigger: str | None
    progress: ReviewProgress | None = None


class ReviewDetail(ReviewPublic):
    items: list[ReviewItemPublic]


class ItemDecided(BaseModel):
    item: ReviewItemPublic
    secrets: list[dict[str, str]] | None = Field(
        default=None, description="rotate: each successor token's id and secret, shown once, here only.")


class ReviewReport(BaseModel):
    review_id: uuid.UUID
    report: dict[str, Any]
    sha256: str = Field(description="sha256 of the report as canonical JSON (sorted keys, no whitespace), as "
                                    "recorded in the review.closed event.")


class ScheduleCreate(Input):
    name: Name
    scope: ReviewScope = Field(default_factory=ReviewScope)
    cadence: Cadence
    due_days: int = Field(default=14, gt=0, le=365, description="Each review is due this many days after it opens.")
    first_run_at: AwareDatetime | None = Field(default=None, description="When the first review opens "
                                                                         "(default: now).")


class ScheduleUpdate(Input):
    """Pause or resume a schedule, or change its cadence, due days or next run."""

    _not_null = ("enabled", "cadence", "due_days", "next_run_at")

    enabled: bool | None = None
    cadence: Cadence | None = None
    due_days: int | None = Field(default=None, gt=0, le=365)
    next_run_at: AwareDatetime | None = None


class SchedulePublic(Output):
    id: uuid.UUID
    name: str
    scope: dict[str, Any]
    cadence: Cadence
    due_days: int
    next_run_at: datetime
    enabled: bool
    created_at: datetime
