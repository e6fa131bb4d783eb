"""Sending queued notifications: one round of the control plane's ``notifications`` duty.

A round locks the due deliveries (``FOR UPDATE … SKIP LOCKED``) and keeps them locked while it POSTs
them, all at once, each with its own timeout; then records each outcome and commits. So several
control-plane replicas never send one delivery twice: another replica's round skips the locked rows,
and by the time they are unlocked they are delivered or due later. If a replica dies mid-round its
transaction rolls back and the deliveries are sent again by the next round anywhere: delivery is at
least once, and a receiver that must not act twice dedupes on ``Keyward-Delivery`` (the delivery id).

A failed attempt (no answer within the timeout, or any status but 2xx; redirects are not followed) is
retried after :attr:`Policy.retry_seconds`, doubling up to :attr:`Policy.retry_max_seconds`; after
:attr:`Policy.max_attempts` the delivery is ``failed`` and the event ``notification.failed`` says so.

What is sent:

* **slack**: Slack's incoming-webhook JSON, ``{"text", "blocks"}``, written for people: the payload's
  ``summary`` (or a title for the kind), then its other fields.
* **webhook**: ``{"id", "kind", "created_at", "data"}`` (``data`` is the payload as queued), with the
  headers ``Keyward-Event``, ``Keyward-Delivery`` and ``Keyward-Signature``
  (:mod:`controlplane.core.signatures`).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.audit.events import Actor, record_event
from controlplane.core import signatures
from controlplane.models import NotificationChannel, NotificationDelivery
from controlplane.schemas.spend_reports import shown_url

ACTOR = Actor(name="system:notifications", mechanism="system")
USER_AGENT = "Keyward-Notifications/1"
#: Deliveries one round sends at most (all at once); the rest wait for the next round.
BATCH = 50
#: How much of a failing answer's body is kept in ``last_error``.
ERROR_BODY = 200
#: Titles for the kinds Keyward sends, when the payload has no ``summary``.
TITLES = {
    "notification.test": "Keyward test notification",
    "budget.threshold_reached": "Budget threshold reached",
}
#: The payload fields a Slack message lists for a kind Keyward sends (others: every field, up to ten).
FIELDS = {
    "budget.threshold_reached": ("scope_type", "scope_name", "threshold", "spent_usd", "amount_usd", "remaining_usd",
                                 "posture", "period_end"),
}
_PERIODS = {"month": "monthly", "day": "daily", "window": "fixed-window"}


@dataclass(frozen=True)
class Policy:
    """How hard a delivery is tried (the ``KEYWARD_NOTIFICATION_*`` settings)."""

    max_attempts: int = 8
    retry_seconds: float = 5
    retry_max_seconds: float = 600
    timeout_seconds: float = 5

    def backoff(self, attempts: int) -> float:
        """Seconds before the next attempt, after ``attempts`` failed ones."""
        return float(min(self.retry_seconds * 2 ** min(attempts - 1, 40), self.retry_max_seconds))


def _scalar(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(", ", ": "), default=str)


def _usd(value: Any) -> str:
    return f"${float(value):,.2f}"


def summary(kind: str, payload: dict[str, Any]) -> str | None:
    """The sentence a person reads: the payload's ``summary``, or one written from a budget alert."""
    if isinstance(payload.get("summary"), str) and payload["summary"]:
        return str(payload["summary"])
    if kind == "budget.threshold_reached":
        try:
            ends = payload["period_end"].replace("T", " ")[:16]
            sentence = (f"{payload['scope_type'].replace('_', ' ')} {payload['scope_name']} has reached "
                        f"{payload['threshold']}% of its {_PERIODS.get(payload['period'], payload['period'])} budget: "
                        f"{_usd(payload['spent_usd'])} of {_usd(payload['amount_usd'])} spent; the period ends "
                        f"{ends} UTC.")
        except (KeyError, TypeError, ValueError, AttributeError):
            return None
        return sentence + (" Its requests are refused until then." if payload.get("refused") else "")
    return None


def slack_message(kind: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Slack incoming-webhook JSON for people: a sentence, then the payload's fields."""
    title = TITLES.get(kind, kind)
    sentence = summary(kind, payload)
    text = f"{title}: {sentence}" if sentence else title
    shown = FIELDS.get(kind) or [name for name in payload if name != "summary"]
    fields = [{"type": "mrkdwn", "text": f"*{name.replace('_', ' ')}*\n{_scalar(payload[name])[:1900]}"}
              for name in shown if payload.get(name) is not None][:10]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": title[:150]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": text[:3000]}},
    ]
    if fields:
        blocks.append({"type": "section", "fields": fields})
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": f"Keyward · `{kind}`"}]})
    return {"text": text, "blocks": blocks}


def webhook_body(delivery: NotificationDelivery) -> bytes:
    """The generic JSON document, exactly the bytes that are signed and sent."""
    return json.dumps({"id": str(delivery.id), "kind": delivery.kind, "created_at": delivery.created_at.isoformat(),
                       "data": delivery.payload}, separators=(",", ":")).encode()


def request_for(delivery: NotificationDelivery, channel: NotificationChannel) -> tuple[bytes, dict[str, str]]:
    """The body and headers of one attempt (a webhook's signature is made now, for this attempt)."""
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    if channel.kind == "slack":
        return json.dumps(slack_message(delivery.kind, delivery.payload)).encode(), headers
    body = webhook_body(delivery)
    assert channel.signing_secret is not None  # the table's check: a webhook channel has one
    headers |= {"Keyward-Event": delivery.kind, "Keyward-Delivery": str(delivery.id),
                signatures.HEADER: signatures.sign(channel.signing_secret, body)}
    return body, headers


async def _attempt(client: httpx.AsyncClient, delivery: NotificationDelivery, channel: NotificationChannel,
                   within: float) -> str | None:
    """None when the receiver took it (2xx) within ``within`` seconds (all of it: a receiver that
    answers byte by byte does not hold a round up), else why not."""
    body, headers = request_for(delivery, channel)
    try:
        async with asyncio.timeout(within), client.stream("POST", channel.url, content=body,
                                                           headers=headers) as response:
            if response.is_success:
                return None
            head = b""
            async for chunk in response.aiter_bytes():
                head += chunk
                if len(head) >= ERROR_BODY:
                    break
            error = f"HTTP {response.status_code}: {head[:ERROR_BODY].decode(errors='replace')}".strip()
    except TimeoutError:
        error = f"no answer within {within:g} s"
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    # An error message may quote the URL, and a Slack URL is a credential.
    return error.replace(channel.url, shown_url(channel.kind, channel.url))[:500]


async def deliver_due(session: AsyncSession, *, policy: Policy,
                      transport: httpx.AsyncBaseTransport | None = None) -> int:
    """Send the due deliveries of enabled channels (at most :data:`BATCH`) and record how each went, in
    the caller's transaction, which holds their row locks until it commits. How many were attempted."""
    rows = (await session.execute(
        select(NotificationDelivery, NotificationChannel)
        .join(NotificationChannel, NotificationChannel.id == NotificationDelivery.channel_id)
        .where(NotificationDelivery.status == "pending", NotificationDelivery.next_attempt_at <= func.now(),
               NotificationChannel.enabled)
        .order_by(NotificationDelivery.next_attempt_at, NotificationDelivery.id)
        .limit(BATCH)
        .with_for_update(of=NotificationDelivery, skip_locked=True))).all()
    if not rows:
        return 0
    async with httpx.AsyncClient(timeout=policy.timeout_seconds, follow_redirects=False,
                                 transport=transport) as client:
        errors = await asyncio.gather(*(_attempt(client, delivery, channel, policy.timeout_seconds)
                                        for delivery, channel in rows))
    now: datetime = (await session.execute(select(func.clock_timestamp()))).scalar_one()
    for (delivery, channel), error in zip(rows, errors, strict=True):
        delivery.attempts += 1
        delivery.last_error = error
        if error is None:
            delivery.status, delivery.delivered_at = "delivered", now
        elif delivery.attempts >= policy.max_attempts:
            delivery.status = "failed"
            await record_event(session, actor=ACTOR, action="notification.failed", target_type="notification_delivery",
                               target_id=str(delivery.id),
                               after={"channel_id": str(channel.id), "channel": channel.name, "kind": delivery.kind,
                                      "attempts": delivery.attempts, "last_error": error})
        else:
            delivery.next_attempt_at = now + timedelta(seconds=policy.backoff(delivery.attempts))
    await session.flush()
    return len(rows)
