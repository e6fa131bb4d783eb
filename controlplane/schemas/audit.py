"""The audit store as auditors read it: events, request records, a user's activity, usage."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, Field

from controlplane.schemas.common import Output
from controlplane.schemas.identities import UserPublic


class EventPublic(Output):
    seq: int
    at: datetime
    actor: str
    mechanism: str
    action: str
    target_type: str
    target_id: str
    before: dict | None
    after: dict | None


class RequestRecord(Output):
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
    decision: str = Field(description="What the client got: authz's decision, or envoy:<reason> when Envoy "
                                      "answered without one (authz too slow or unreachable).")
    authz_decision: str | None = Field(description="What authz decided (null when it never saw the request).")
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
    sanitized: bool = Field(description="A value the client sent was cut or had unstorable characters replaced.")
    project_id: uuid.UUID | None = None
    project: str | None = None
    limit_scope: str | None = Field(default=None, description="The budget or rate limit that refused the request: "
                                                              "budget|rate:<scope type>:<scope id>.")
    cached_tokens: int | None = None
    cost_usd: Decimal | None = Field(default=None, description="What the request cost (null: unpriced model, or no "
                                                               "outcome yet).")
    cost_input_usd: Decimal | None = None
    cost_cached_usd: Decimal | None = None
    cost_output_usd: Decimal | None = None
    price_version: str | None = Field(default=None, description="genai-prices <version>, override:<id> or unpriced.")
    usage_estimated: bool = Field(default=False, description="The provider reported no usage; the cost is estimated "
                                                             "from the bytes exchanged.")


class UserActivity(BaseModel):
    user: UserPublic
    last_request: RequestRecord | None
    last_allowed_request: RequestRecord | None
    disabled_at: datetime | None = Field(description="When the user was last suspended or deprovisioned.")
    disabled_by: EventPublic | None
    effective_at: datetime | None = Field(
        description="When every gateway replica had applied that (its revocation.confirmed event); disabled_at "
                    "when no confirmation was recorded.")
    allowed_after_disabled: int | None = Field(
        description="Requests allowed after effective_at; null when the user was never disabled."
    )
    allowed_after_disabled_examples: list[RequestRecord]


class UsageRow(BaseModel):
    key: str | None
    requests: int
    allowed: int
    prompt_tokens: int
    completion_tokens: int


class AuditPublicKey(BaseModel):
    algorithm: Literal["Ed25519"] = "Ed25519"
    public_key: str = Field(description="The raw 32-byte public key, url-safe base64: what "
                                        "`keyward audit verify --public-key` takes.")
