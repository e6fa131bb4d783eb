"""Effective access: what the gateway would let each token do now (``/access``)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field


class Grant(BaseModel):
    """A token that can reach what was asked, and the models that answer the question."""

    token_id: uuid.UUID
    token_name: str
    owner_type: Literal["user", "service_account"]
    owner_id: uuid.UUID | None
    owner: str = Field(description="The person's email, or service-account:<name>.")
    team: str | None
    team_id: uuid.UUID | None
    project_id: uuid.UUID | None
    environment: str
    expires_at: datetime | None
    models: dict[str, list[str]] = Field(description="Provider -> the models the gateway lets it call now.")


class ProviderReach(BaseModel):
    tokens: int
    identities: int = Field(description="People and service accounts with at least one such token.")


class AccessSummary(BaseModel):
    tokens_stored_live: int = Field(description="Tokens not revoked.")
    tokens_usable: int = Field(description="Of those, the ones the gateway lets call at least one model now.")
    tokens_refused: dict[str, int] = Field(description="Of those, refused whatever they ask, by the gateway's "
                                                       "reason (token_expired, not_a_member, owner_disabled, …).")
    by_provider: dict[str, ProviderReach]


class Reach(BaseModel):
    summary: AccessSummary
    items: list[Grant]
    next_cursor: str | None


class TokenAccess(BaseModel):
    """One token as the gateway sees it now."""

    token_id: uuid.UUID
    token_name: str
    team: str | None
    environment: str
    stored: Literal["active", "expired"] = Field(description="What the token's own row says (revoked ones are "
                                                           "not listed).")
    effective: str = Field(description="usable, or the gateway's machine code for refusing it.")
    reason: str | None = Field(description="The gateway's words for that refusal.")
    models: dict[str, list[str]]
    blocked: dict[str, str] = Field(description="Provider -> why every model of it is refused (a spent budget).")


class IdentityAccess(BaseModel):
    identity_type: Literal["user", "service_account"]
    identity_id: uuid.UUID
    name: str
    tokens: list[TokenAccess]


class Refusal(BaseModel):
    """A token stored as live that the gateway refuses: the trap an auditor falls into without this list."""

    token: TokenAccess
    owner: str
    owner_type: Literal["user", "service_account"]
    owner_id: uuid.UUID | None


class RefusedPage(BaseModel):
    """Tokens stored as live that the gateway refuses, one page of them."""

    total: int = Field(description="How many there are in all (for this caller).")
    items: list[Refusal]
    next_cursor: str | None
