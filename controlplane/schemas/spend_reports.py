"""Where announcements go (notification channels, and each delivery to one), and the spend report.

A channel's signing secret is in :class:`NotificationChannelIssued` only, returned once when it is
made or rotated. A Slack channel's URL is its credential (whoever has it may post to the Slack
channel), so documents and events show it shortened to its origin and last four characters.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, Field, StringConstraints, ValidationInfo, field_validator

from controlplane.schemas.common import Input, Name, Output

ChannelKind = Literal["slack", "webhook"]
DeliveryStatus = Literal["pending", "delivered", "failed"]


def _http_url(value: str) -> str:
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in value):
        raise ValueError("must not contain spaces or control characters")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        raise ValueError(f"is not a URL: {exc}") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    return value


#: Where a channel's requests are POSTed.
ChannelUrl = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000),
                       AfterValidator(_http_url)]


def shown_url(kind: str, url: str) -> str:
    """The URL as documents show it: a webhook's in full (its requests are signed, the URL grants
    nothing), a Slack one as origin, ellipsis and last four characters (the URL is the credential)."""
    if kind != "slack":
        return url
    if "/…" in url:  # shown already
        return url
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}/…{url[-4:]}"


class NotificationChannelCreate(Input):
    name: Name
    kind: ChannelKind = Field(description="slack: Slack-compatible incoming webhook ({\"text\", \"blocks\"}); "
                                          "webhook: generic JSON, signed (Keyward-Signature).")
    url: ChannelUrl


class NotificationChannelUpdate(Input):
    _not_null: ClassVar[tuple[str, ...]] = ("name", "url", "enabled")

    name: Name | None = None
    url: ChannelUrl | None = None
    enabled: bool | None = Field(default=None, description="false pauses the channel: nothing new is queued for "
                                                            "it and its pending deliveries wait until it is enabled.")


class NotificationChannelPublic(Output):
    id: uuid.UUID
    name: str
    kind: ChannelKind
    url: str = Field(description="A Slack URL is shown shortened: it is the channel's credential.")
    enabled: bool
    created_at: datetime

    @field_validator("url")
    @classmethod
    def _shown(cls, value: str, info: ValidationInfo) -> str:
        return shown_url(str(info.data.get("kind")), value)


class NotificationChannelIssued(NotificationChannelPublic):
    signing_secret: str | None = Field(
        description="webhook channels: the HMAC-SHA256 key of Keyward-Signature. Shown once; null for Slack.")


class NotificationTestQueued(BaseModel):
    delivery_id: uuid.UUID
    channel_id: uuid.UUID


class NotificationDeliveryPublic(Output):
    id: uuid.UUID
    channel_id: uuid.UUID
    kind: str
    payload: dict[str, Any]
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime = Field(description="When a pending delivery is next attempted.")
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None


# -- spend ------------------------------------------------------------------------------------------

#: What spend can be grouped by.
SpendGroup = Literal["user", "service_account", "team", "project", "token", "model", "provider", "environment",
                     "day", "month"]
SpendSort = Literal["-cost_usd", "cost_usd", "-requests", "requests", "group"]


class SpendMeasures(BaseModel):
    requests: int
    input_tokens: int = Field(description="Input tokens, cached ones included.")
    cached_tokens: int = Field(description="Input tokens read from the provider's prompt cache.")
    output_tokens: int
    cost_usd: Decimal
    estimated_requests: int = Field(description="Requests whose usage the provider did not report: their cost "
                                                "is an estimate.")


class SpendRow(SpendMeasures):
    """One group. Only the keys grouped by are present (a null value is a real group: e.g. no project)."""

    day: date | None = None
    month: str | None = Field(default=None, description="YYYY-MM")
    team_id: uuid.UUID | None = None
    team_name: str | None = None
    project_id: uuid.UUID | None = None
    project_name: str | None = None
    user_id: uuid.UUID | None = None
    user_email: str | None = None
    service_account_id: uuid.UUID | None = None
    service_account_name: str | None = None
    token_id: uuid.UUID | None = None
    token_name: str | None = None
    model: str | None = None
    provider: str | None = None
    environment: str | None = None


class SpendTotal(SpendMeasures):
    groups: int = Field(description="How many groups the whole report has (every page).")


class SpendReport(BaseModel):
    start: date
    end: date = Field(description="Exclusive.")
    group_by: list[SpendGroup]
    items: list[SpendRow]
    total: SpendTotal = Field(description="The whole window and filters, every group.")
    next_cursor: str | None = Field(description="Pass as ?cursor= to get the next page; null on the last page.")
