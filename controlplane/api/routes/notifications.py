"""Notification channels (where budget alerts go) and the deliveries made to them.

A webhook channel's signing secret is shown once, in the answer that creates or rotates it. Admins
change channels; admins and auditors read them and see what went out.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, status

from controlplane import errors, schemas
from controlplane.api.deps import Admin, Auditor, Cursor, Limit, SessionDep
from controlplane.models import NotificationChannel
from controlplane.services import notifications

router = APIRouter(tags=["notifications"], responses=errors.responses(401, 403, 422))


def _issued(channel: NotificationChannel, secret: str | None) -> dict[str, Any]:
    return {**schemas.NotificationChannelPublic.model_validate(channel).model_dump(), "signing_secret": secret}


@router.post("/notification-channels", status_code=status.HTTP_201_CREATED,
             response_model=schemas.NotificationChannelIssued, responses=errors.responses(409, body=True))
async def create_channel(data: schemas.NotificationChannelCreate, session: SessionDep, caller: Admin) -> dict:
    """Add a channel, enabled. A webhook channel's signing secret is in this answer, and only here."""
    channel, secret = await notifications.create_channel(session, actor=caller.actor, data=data)
    return _issued(channel, secret)


@router.get("/notification-channels", response_model=schemas.Page[schemas.NotificationChannelPublic])
async def list_channels(session: SessionDep, _caller: Auditor, enabled: bool | None = None, limit: Limit = 100,
                        cursor: Cursor = None) -> dict:
    return await notifications.list_channels(session, enabled=enabled, cursor=cursor, limit=limit)


@router.get("/notification-channels/{channel_id}", response_model=schemas.NotificationChannelPublic,
            responses=errors.responses(404))
async def get_channel(channel_id: uuid.UUID, session: SessionDep, _caller: Auditor) -> NotificationChannel:
    return await notifications.get_channel(session, channel_id=channel_id)


@router.patch("/notification-channels/{channel_id}", response_model=schemas.NotificationChannelPublic,
              responses=errors.responses(404, 409, body=True))
async def update_channel(channel_id: uuid.UUID, data: schemas.NotificationChannelUpdate, session: SessionDep,
                         caller: Admin) -> NotificationChannel:
    """Rename, re-point, pause (``enabled: false``: its pending deliveries wait) or resume a channel."""
    return await notifications.update_channel(session, actor=caller.actor, channel_id=channel_id, data=data)


@router.post("/notification-channels/{channel_id}/rotate-secret", response_model=schemas.NotificationChannelIssued,
             responses=errors.responses(404, 409))
async def rotate_secret(channel_id: uuid.UUID, session: SessionDep, caller: Admin) -> dict:
    """A new signing secret for a webhook channel, shown once; every request from now on is signed with it."""
    channel, secret = await notifications.rotate_secret(session, actor=caller.actor, channel_id=channel_id)
    return _issued(channel, secret)


@router.delete("/notification-channels/{channel_id}", response_model=schemas.NotificationChannelPublic,
               responses=errors.responses(404))
async def remove_channel(channel_id: uuid.UUID, session: SessionDep, caller: Admin) -> NotificationChannel:
    """Remove a channel from service: it is disabled and its pending deliveries are given up. Its record
    stays, with every delivery made to it (an audit trail of what went where)."""
    return await notifications.remove_channel(session, actor=caller.actor, channel_id=channel_id)


@router.post("/notification-channels/{channel_id}/test", status_code=status.HTTP_202_ACCEPTED,
             response_model=schemas.NotificationTestQueued, responses=errors.responses(404, 409))
async def test_channel(channel_id: uuid.UUID, session: SessionDep, caller: Admin) -> dict:
    """Queue a ``notification.test`` delivery to this channel; follow it in ``/notification-deliveries``."""
    delivery = await notifications.test_channel(session, actor=caller.actor, channel_id=channel_id)
    return {"delivery_id": delivery.id, "channel_id": delivery.channel_id}


@router.get("/notification-deliveries", response_model=schemas.Page[schemas.NotificationDeliveryPublic])
async def list_deliveries(
    session: SessionDep,
    _caller: Auditor,
    status_filter: Annotated[schemas.DeliveryStatus | None, Query(alias="status")] = None,
    channel_id: uuid.UUID | None = None,
    kind: Annotated[str | None, Query(max_length=100)] = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> dict:
    """What went out (and what is pending or failed), newest first."""
    return await notifications.list_deliveries(session, status=status_filter, channel_id=channel_id, kind=kind,
                                               cursor=cursor, limit=limit)
