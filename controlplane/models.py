"""Database tables. Tokens hold a keyed hash and a display hint, never the secret.

Triggers created by the migrations NOTIFY ``keyward_changes`` whenever a row changes in a way that
can alter a gateway decision; the ORM does not need to know about them.

Over 450 lines because it is the one place every table is declared; splitting it would spread the
schema the migrations build.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    Numeric,
    String,
    Text,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    email: Mapped[str] = mapped_column(Text)
    display_name: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="active")
    external_id: Mapped[str | None] = mapped_column(Text)
    given_name: Mapped[str | None] = mapped_column(Text)
    family_name: Mapped[str | None] = mapped_column(Text)
    scim_connection_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("scim_connections.id"))
    #: The SCIM document as the IdP last wrote it (minus what has its own column).
    scim_attributes: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    #: employee, contractor, vendor or service; a contractor's ``end_date`` is an offboarding trigger.
    employment_type: Mapped[str] = mapped_column(String(16), default="employee")
    end_date: Mapped[date | None] = mapped_column(Date)
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class AccessProfile(Base):
    """What a team may use: a model catalog per provider (optionally per environment), the token
    environments it allows, token lifetimes, and the default budgets and rate limits of every scope
    under a team with this profile (keyed by scope type: team, project, user, service_account, token)."""

    __tablename__ = "access_profiles"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    catalog: Mapped[list[dict[str, Any]]] = mapped_column(JSONB)
    environments: Mapped[list[str]] = mapped_column(ARRAY(Text))
    default_token_days: Mapped[int] = mapped_column(Integer)
    max_token_days: Mapped[int] = mapped_column(Integer)
    dormant_disable_days: Mapped[int | None] = mapped_column(Integer)
    #: ``{scope type: {"amount_usd", "period", "posture", "thresholds"}}``.
    budget_defaults: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    #: ``{scope type: {"rpm", "tpm"}}``.
    rate_limit_defaults: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    #: How often its tokens must be rotated (days); opt-in: revoke them this long past it.
    rotation_days: Mapped[int | None] = mapped_column(Integer)
    rotation_disable_days: Mapped[int | None] = mapped_column(Integer)
    #: The endpoint families (:class:`authz.routes.Family` values) its teams' tokens may call.
    endpoints: Mapped[list[str]] = mapped_column(ARRAY(Text))
    #: The MCP tool catalog: ``[{"server": <MCP upstream>, "tools": <tool name or shell-style pattern>}]``.
    tools: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class Team(Base):
    __tablename__ = "teams"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    profile_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("access_profiles.id"))
    external_id: Mapped[str | None] = mapped_column(Text)
    scim_connection_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("scim_connections.id"))
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class Membership(Base):
    __tablename__ = "memberships"

    team_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("teams.id"), primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), primary_key=True)
    role: Mapped[str] = mapped_column(String(16), default="member")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ServiceAccount(Base):
    """A workload or agent identity, owned by a team, with a named business and technical owner."""

    __tablename__ = "service_accounts"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    team_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("teams.id"))
    business_owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    technical_owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    #: The project its tokens carry unless minted with another.
    project_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("projects.id"))
    security_owner_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    finance_owner_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    purpose: Mapped[str | None] = mapped_column(Text)
    #: The service or repository that runs with its tokens.
    workload: Mapped[str | None] = mapped_column(Text)
    #: Set when an owner departed: reassign by then, or its tokens are disabled.
    reassign_by: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    flagged_reason: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="active")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class ApiCredential(Base):
    """An admin-API bearer credential with a role; only its keyed hash is stored."""

    __tablename__ = "api_credentials"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(Text)
    role: Mapped[str] = mapped_column(String(16))
    team_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("teams.id"))
    user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    hint: Mapped[str] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    purpose: Mapped[str | None] = mapped_column(Text)
    #: The person answerable for it (register); a departed owner flags it for reassignment.
    owner_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    secret_location: Mapped[str | None] = mapped_column(String(32))
    reassign_by: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    flagged_reason: Mapped[str | None] = mapped_column(Text)


class Token(Base):
    __tablename__ = "tokens"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    hint: Mapped[str] = mapped_column(Text)
    name: Mapped[str] = mapped_column(Text)
    user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    service_account_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("service_accounts.id"))
    team_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("teams.id"))
    project_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("projects.id"))
    environment: Mapped[str] = mapped_column(String(16))
    scopes: Mapped[list[str]] = mapped_column(ARRAY(Text), default=list)
    models: Mapped[list[str]] = mapped_column(ARRAY(Text))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    created_by: Mapped[str] = mapped_column(Text)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_by: Mapped[str | None] = mapped_column(Text)
    revoke_reason: Mapped[str | None] = mapped_column(Text)
    rotated_from: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("tokens.id"))
    expired_recorded_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    purpose: Mapped[str | None] = mapped_column(Text)
    #: The service or repository the token serves.
    workload: Mapped[str | None] = mapped_column(Text)
    #: Where the secret is declared to live: vault, cloud_secret_manager, ci_secret_store,
    #: kubernetes_secret, password_manager, laptop, other.
    secret_location: Mapped[str | None] = mapped_column(String(32))
    #: For a personal token: who answers for it when its owner cannot.
    backup_owner_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    #: Its own narrowing of its profile's endpoint families; NULL: the profile's, whatever they become.
    endpoints: Mapped[list[str] | None] = mapped_column(ARRAY(Text))


class Event(Base):
    """One admin, SCIM, OIDC or token action, written in the transaction of the change it records."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    seq: Mapped[int] = mapped_column(BigInteger, unique=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(Text)
    mechanism: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(Text)
    target_type: Mapped[str] = mapped_column(Text)
    target_id: Mapped[str] = mapped_column(Text)
    before: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    prev_hash: Mapped[bytes] = mapped_column(LargeBinary)
    hash: Mapped[bytes] = mapped_column(LargeBinary)


class ScimConnection(Base):
    """One IdP pushing users and groups over SCIM; the actor of every change it makes."""

    __tablename__ = "scim_connections"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(Text, unique=True)
    idp: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ScimCredential(Base):
    """A SCIM bearer credential (kw_scim_…); several may be valid at once, so rotation overlaps."""

    __tablename__ = "scim_credentials"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    connection_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("scim_connections.id"))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    hint: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class SignIn(Base):
    """A browser session (``web``) or a ``keyward login`` credential (``cli``) of a user signed in with
    OpenID Connect, in the role their IdP groups gave them; or a one-time console sign-in link (``link``)
    and the session it opened, which belong to the bootstrap admin (no user). Only keyed hashes are stored."""

    __tablename__ = "sign_ins"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    kind: Mapped[str] = mapped_column(String(8))
    user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    nonce_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    subject: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AuthzReplica(Base):
    """A running authz process, kept fresh by its heartbeat (see migrations 0007 and 0008)."""

    __tablename__ = "authz_replicas"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    host: Mapped[str] = mapped_column(Text)
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    #: How long the replica answers from its cache after its last heartbeat (migration 0008).
    stale_after_seconds: Mapped[float] = mapped_column(Float)
    #: Postgres's clock when its current snapshot began.
    loaded_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Project(Base):
    """A unit of work a team pays for: tokens (and service accounts) carry one; spend rolls up to it."""

    __tablename__ = "projects"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    team_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("teams.id"))
    name: Mapped[str] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="open")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class PriceOverride(Base):
    """An admin's price for a provider's model from a date on, in place of the bundled price table."""

    __tablename__ = "price_overrides"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    provider: Mapped[str] = mapped_column(Text)
    model: Mapped[str] = mapped_column(Text)
    input_per_mtok: Mapped[Decimal] = mapped_column(Numeric(14, 6))
    cached_input_per_mtok: Mapped[Decimal | None] = mapped_column(Numeric(14, 6))
    output_per_mtok: Mapped[Decimal] = mapped_column(Numeric(14, 6))
    effective_from: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    note: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Budget(Base):
    """An amount per period for one scope, with its posture: ``hard`` (refuse at 100%), ``alert``
    (announce only) or ``alert_then_hard`` (announce at each threshold, refuse at 100%)."""

    __tablename__ = "budgets"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    scope_type: Mapped[str] = mapped_column(String(16))
    scope_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    amount_usd: Mapped[Decimal] = mapped_column(Numeric(14, 4))
    period: Mapped[str] = mapped_column(String(8), default="month")
    window_start: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    window_end: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    posture: Mapped[str] = mapped_column(String(16))
    thresholds: Mapped[list[int]] = mapped_column(ARRAY(Integer), default=lambda: [50, 80, 100])
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class RateLimit(Base):
    """Requests and tokens per minute for one scope, overriding its profile's default."""

    __tablename__ = "rate_limits"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    scope_type: Mapped[str] = mapped_column(String(16))
    scope_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    rpm: Mapped[int | None] = mapped_column(Integer)
    tpm: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class UsageCounter(Base):
    """Requests, tokens and cost of one scope in one day or minute, summed over every authz replica."""

    __tablename__ = "usage_counters"

    scope_type: Mapped[str] = mapped_column(String(16), primary_key=True)
    scope_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    bucket: Mapped[str] = mapped_column(String(8), primary_key=True)
    bucket_start: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_usd: Mapped[Decimal] = mapped_column(Numeric(20, 10), default=0)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SpendDaily(Base):
    """The audit store's costs per day and dimension, added to at ingest (for ``/spend``)."""

    __tablename__ = "spend_daily"
    __mapper_args__ = {"primary_key": ["day", "provider", "model", "environment", "team_id", "project_id",
                                       "user_id", "service_account_id", "token_id"]}

    day: Mapped[date] = mapped_column(Date)
    provider: Mapped[str | None] = mapped_column(Text)
    model: Mapped[str | None] = mapped_column(Text)
    environment: Mapped[str | None] = mapped_column(Text)
    team_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    project_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    user_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    service_account_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    token_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cached_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_usd: Mapped[Decimal] = mapped_column(Numeric(20, 10), default=0)
    estimated_requests: Mapped[int] = mapped_column(BigInteger, default=0)


class BudgetAlert(Base):
    """A threshold of one budget period that has been reached and announced (once)."""

    __tablename__ = "budget_alerts"

    scope_type: Mapped[str] = mapped_column(String(16), primary_key=True)
    scope_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    period_start: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    threshold: Mapped[int] = mapped_column(Integer, primary_key=True)
    amount_usd: Mapped[Decimal] = mapped_column(Numeric(14, 4))
    spent_usd: Mapped[Decimal] = mapped_column(Numeric(20, 10))
    reached_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class NotificationChannel(Base):
    """Where announcements go: a Slack-compatible incoming webhook, or a generic JSON webhook whose
    requests are signed (HMAC-SHA256) with ``signing_secret``."""

    __tablename__ = "notification_channels"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(16))
    url: Mapped[str] = mapped_column(Text)
    signing_secret: Mapped[str | None] = mapped_column(Text)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class NotificationDelivery(Base):
    """One announcement to one channel, retried until delivered or given up."""

    __tablename__ = "notification_deliveries"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    channel_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("notification_channels.id"))
    kind: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AccessException(Base):
    """Keep a credential despite a failing condition: approved by someone other than who asked, and
    only until it expires."""

    __tablename__ = "access_exceptions"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    subject_type: Mapped[str] = mapped_column(String(24))
    subject_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    condition: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    requested_by: Mapped[str] = mapped_column(Text)
    approved_by: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    review_item_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("access_review_items.id"))


class AccessReview(Base):
    __tablename__ = "access_reviews"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(Text)
    scope: Mapped[dict[str, Any]] = mapped_column(JSONB)
    status: Mapped[str] = mapped_column(String(16), default="open")
    opened_by: Mapped[str] = mapped_column(Text)
    opened_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    due_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    closed_by: Mapped[str | None] = mapped_column(Text)
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    report: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    report_sha256: Mapped[str | None] = mapped_column(String(64))
    schedule_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("access_review_schedules.id"))
    #: What opened it when no person did: a schedule, or an event (owner change, scope widening, …).
    trigger: Mapped[str | None] = mapped_column(Text)


class AccessReviewItem(Base):
    """One register row, frozen when its review opened, and what its reviewer decided."""

    __tablename__ = "access_review_items"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    review_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("access_reviews.id"))
    subject_type: Mapped[str] = mapped_column(String(24))
    subject_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    snapshot: Mapped[dict[str, Any]] = mapped_column(JSONB)
    reviewer: Mapped[str | None] = mapped_column(Text)
    decision: Mapped[str | None] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    decided_by: Mapped[str | None] = mapped_column(Text)
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    exception_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("access_exceptions.id"))
    reopened_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AccessReviewSchedule(Base):
    __tablename__ = "access_review_schedules"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(Text)
    scope: Mapped[dict[str, Any]] = mapped_column(JSONB)
    cadence: Mapped[str] = mapped_column(String(16))
    due_days: Mapped[int] = mapped_column(Integer, default=14)
    next_run_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class BreakGlassReads(Base):
    """The bootstrap token's reads in one hour, summarised into one event rather than one per read."""

    __tablename__ = "break_glass_reads"

    hour: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    reads: Mapped[int] = mapped_column(BigInteger, default=0)
    first_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    #: Path -> reads of it in the hour.
    paths: Mapped[dict[str, int]] = mapped_column(JSONB, default=dict)
    summarised_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AuditVerification(Base):
    """One verification of an audit chain: "verified up to ``to_seq``, whose hash is ``to_hash``", signed
    with the audit signing key (:mod:`controlplane.audit.verify`). Append-only."""

    __tablename__ = "audit_verifications"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    chain: Mapped[str] = mapped_column(Text)
    #: full (every row from the chain's start) or incremental (the rows after the marker ``base_id``).
    kind: Mapped[str] = mapped_column(String(16))
    base_id: Mapped[int | None] = mapped_column(BigInteger)
    from_seq: Mapped[int] = mapped_column(BigInteger)
    to_seq: Mapped[int] = mapped_column(BigInteger)
    to_hash: Mapped[bytes] = mapped_column(LargeBinary)
    rows: Mapped[int] = mapped_column(BigInteger)
    ok: Mapped[bool] = mapped_column(Boolean)
    findings: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, default=list)
    verified_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    duration_ms: Mapped[int] = mapped_column(Integer)
    signature: Mapped[bytes] = mapped_column(LargeBinary)
