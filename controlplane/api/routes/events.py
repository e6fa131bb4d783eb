from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import select

from controlplane import schemas, services
from controlplane.api.deps import AdminActor, Cursor, Limit, SessionDep
from controlplane.models import Event

router = APIRouter(prefix="/events", tags=["events"])


@router.get("", response_model=schemas.Page[schemas.EventPublic])
async def list_events(
    session: SessionDep,
    _actor: AdminActor,
    limit: Limit = 100,
    cursor: Cursor = None,
    target_type: Annotated[str | None, Query(max_length=40)] = None,
    target_id: Annotated[str | None, Query(max_length=100)] = None,
    action: Annotated[str | None, Query(max_length=60)] = None,
) -> dict:
    """Admin and token actions, oldest first, each with actor, mechanism and timestamp."""
    query = select(Event)
    if target_type:
        query = query.where(Event.target_type == target_type)
    if target_id:
        query = query.where(Event.target_id == target_id)
    if action:
        query = query.where(Event.action == action)
    items, next_cursor = await services.paginate(
        session, query, created_col=Event.at, id_col=Event.id, cursor=cursor, limit=limit
    )
    return {"items": items, "next_cursor": next_cursor}
