"""Notification channels and the deliveries queued for them.

An announcement (a budget threshold reached, a test) is queued with :func:`enqueue` in the
transaction of whatever caused it: one ``notification_deliveries`` row per enabled channel. The
queue is the outbox: if the cause rolls back, nothing is announced; if it commits, the delivery duty
(:mod:`controlplane.services.delivery`) sends it, retrying, even across a control-plane restart.

A channel is never deleted: its deliveries refer to it, and what was sent where stays readable (the
application's database role has no DELETE on either table). Removing a channel disables it and gives
up its pending deliveries; disabling it (``enabled: false``) only pauses it: nothing new is queued for
it, and what is pending waits until it is enabled again.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane import schemas
from controlplane.audit.events import Actor, record_event
from controlplane.errors import Code, Conflict
from controlplane.models import NotificationChannel, NotificationDelivery
from controlplane.services.rows import flush_unique, get_or_404, paginate, public

#: The prefix of a webhook channel's signing secret, so a leaked one is recognisable.
SECRET_PREFIX = "kw_whsec_"  # noqa: S105 - a prefix, not a secret
#: Why the pending deliveries of a removed channel were given up.
REMOVED = "channel removed before delivery"
TARGET = "notification_channel"


def new_secret() -> str:
    """A fresh signing secret: 256 random bits."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


async def enqueue(session: AsyncSession, *, kind: str, payload: dict[str, Any]) -> int:
    """Queue ``payload`` (JSON) as a ``kind`` announcement to every enabled channel, in the caller's
    transaction, due now; how many deliveries were queued (0 when no channel is configured).

    A ``summary`` string in ``payload``, if any, is the sentence a Slack channel shows."""
    channels = (await session.scalars(select(NotificationChannel.id).where(NotificationChannel.enabled))).all()
    now = datetime.now(UTC)
    for channel_id in channels:
        session.add(NotificationDelivery(channel_id=channel_id, kind=kind, payload=payload, status="pending",
                                         attempts=0, next_attempt_at=now))
    await session.flush()
    return len(channels)


# -- channels -------------------------------------------------------------------------------------


async def get_channel(session: AsyncSession, *, channel_id: uuid.UUID) -> NotificationChannel:
    return await get_or_404(session, NotificationChannel, channel_id, code=Code.NOTIFICATION_CHANNEL_NOT_FOUND,
                            label="notification channel")


async def list_channels(session: AsyncSession, *, enabled: bool | None, cursor: str | None,
                        limit: int) -> dict[str, Any]:
    query = select(NotificationChannel)
    if enabled is not None:
        query = query.where(NotificationChannel.enabled == enabled)
    return await paginate(session, query, sort=NotificationChannel.created_at, id_col=NotificationChannel.id,
                          cursor=cursor, limit=limit)


async def _name_free(session: AsyncSession, name: str, *, other_than: uuid.UUID | None = None) -> None:
    query = select(NotificationChannel.id).where(func.lower(NotificationChannel.name) == name.lower())
    if other_than is not None:
        query = query.where(NotificationChannel.id != other_than)
    if await session.scalar(query):
        raise Conflict(Code.NOTIFICATION_CHANNEL_EXISTS, f"A notification channel named {name} exists.")


def _exists(name: str) -> tuple[Code, str]:
    return Code.NOTIFICATION_CHANNEL_EXISTS, f"A notification channel named {name} exists."


async def create_channel(session: AsyncSession, *, actor: Actor,
                         data: schemas.NotificationChannelCreate) -> tuple[NotificationChannel, str | None]:
    """A channel, enabled; a webhook channel with its signing secret, which is returned (once) and
    never recorded in the event."""
    await _name_free(session, data.name)
    secret = new_secret() if data.kind == "webhook" else None
    channel = NotificationChannel(id=uuid.uuid4(), name=data.name, kind=data.kind, url=data.url,
                                  signing_secret=secret, enabled=True)
    session.add(channel)
    await flush_unique(session, *_exists(data.name))
    await session.refresh(channel)
    await record_event(session, actor=actor, action=f"{TARGET}.created", target_type=TARGET,
                       target_id=str(channel.id), after=public(schemas.NotificationChannelPublic, channel))
    return channel, secret


async def update_channel(session: AsyncSession, *, actor: Actor, channel_id: uuid.UUID,
                         data: schemas.NotificationChannelUpdate) -> NotificationChannel:
    channel = await get_channel(session, channel_id=channel_id)
    before, url = public(schemas.NotificationChannelPublic, channel), channel.url
    changes = data.model_dump(exclude_unset=True)
    if "name" in changes:
        await _name_free(session, changes["name"], other_than=channel.id)
    for field, value in changes.items():
        setattr(channel, field, value)
    await flush_unique(session, *_exists(channel.name))
    after = public(schemas.NotificationChannelPublic, channel)
    if after != before or channel.url != url:  # a new Slack URL can look the same once shortened
        await record_event(session, actor=actor, action=f"{TARGET}.changed", target_type=TARGET,
                           target_id=str(channel.id), before=before, after=after)
    return channel


async def rotate_secret(session: AsyncSession, *, actor: Actor,
                        channel_id: uuid.UUID) -> tuple[NotificationChannel, str]:
    """A new signing secret for a webhook channel, in force for every request sent from now on (the old
    one signs nothing more); returned once. A Slack channel has none: its URL is its secret (PATCH it)."""
    channel = await get_channel(session, channel_id=channel_id)
    if channel.kind != "webhook":
        raise Conflict(Code.NOTIFICATION_CHANNEL_UNSIGNED,
                       "Only a webhook channel has a signing secret; a Slack channel's URL is its credential.")
    secret = new_secret()
    channel.signing_secret = secret
    await session.flush()
    await record_event(session, actor=actor, action=f"{TARGET}.secret_rotated", target_type=TARGET,
                       target_id=str(channel.id), after={"name": channel.name,
                                                          "rotated_at": datetime.now(UTC).isoformat()})
    return channel, secret


async def remove_channel(session: AsyncSession, *, actor: Actor, channel_id: uuid.UUID) -> NotificationChannel:
    """Disable the channel for good and give up its pending deliveries (``failed``, with the reason).
    The row stays: its deliveries refer to it. An admin may still enable it again."""
    channel = await get_channel(session, channel_id=channel_id)
    before = public(schemas.NotificationChannelPublic, channel)
    channel.enabled = False
    abandoned = (await session.execute(
        update(NotificationDelivery)
        .where(NotificationDelivery.channel_id == channel.id, NotificationDelivery.status == "pending")
        .values(status="failed", last_error=REMOVED)
        .returning(NotificationDelivery.id))).scalars().all()
    await session.flush()
    await record_event(session, actor=actor, action=f"{TARGET}.removed", target_type=TARGET,
                       target_id=str(channel.id), before=before,
                       after={**public(schemas.NotificationChannelPublic, channel),
                              "abandoned_deliveries": len(abandoned)})
    return channel


async def test_channel(session: AsyncSession, *, actor: Actor, channel_id: uuid.UUID) -> NotificationDelivery:
    """Queue a ``notification.test`` delivery to this channel alone, due now."""
    channel = await get_channel(session, channel_id=channel_id)
    if not channel.enabled:
        raise Conflict(Code.NOTIFICATION_CHANNEL_DISABLED, f"Notification channel {channel.name} is disabled; "
                       "enable it first.")
    delivery = NotificationDelivery(
        id=uuid.uuid4(), channel_id=channel.id, kind="notification.test", status="pending", attempts=0,
        next_attempt_at=datetime.now(UTC),
        payload={"summary": f"Test notification from Keyward to channel {channel.name}, sent by {actor.name}.",
                 "channel": channel.name, "requested_by": actor.name})
    session.add(delivery)
    await session.flush()
    await record_event(session, actor=actor, action=f"{TARGET}.tested", target_type=TARGET,
                       target_id=str(channel.id), after={"delivery_id": str(delivery.id)})
    return delivery


# -- deliveries -----------------------------------------------------------------------------------


async def list_deliveries(session: AsyncSession, *, status: str | None, channel_id: uuid.UUID | None,
                          kind: str | None, cursor: str | None, limit: int) -> dict[str, Any]:
    """Deliveries, newest first."""
    query = select(NotificationDelivery)
    for column, value in ((NotificationDelivery.status, status), (NotificationDelivery.channel_id, channel_id),
                          (NotificationDelivery.kind, kind)):
        if value is not None:
            query = query.where(column == value)
    return await paginate(session, query, sort=NotificationDelivery.created_at, id_col=NotificationDelivery.id,
                          cursor=cursor, limit=limit, descending=True)
