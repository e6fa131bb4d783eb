from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, status
from sqlalchemy import func, select

from controlplane import schemas, services
from controlplane.api.deps import AdminActor, Cursor, Limit, SessionDep
from controlplane.models import User

router = APIRouter(prefix="/users", tags=["users"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=schemas.UserPublic)
async def create_user(data: schemas.UserCreate, session: SessionDep, actor: AdminActor) -> User:
    return await services.create_user(session, actor=actor, data=data)


@router.get("", response_model=schemas.Page[schemas.UserPublic])
async def list_users(
    session: SessionDep,
    _actor: AdminActor,
    limit: Limit = 100,
    cursor: Cursor = None,
    user_status: Annotated[schemas.UserStatus | None, Query(alias="status")] = None,
    email: Annotated[str | None, Query(max_length=320, description="Exact match, case-insensitive.")] = None,
) -> dict:
    query = select(User)
    if user_status:
        query = query.where(User.status == user_status)
    if email:
        query = query.where(func.lower(User.email) == email.lower())
    items, next_cursor = await services.paginate(
        session, query, created_col=User.created_at, id_col=User.id, cursor=cursor, limit=limit
    )
    return {"items": items, "next_cursor": next_cursor}


@router.get("/{user_id}", response_model=schemas.UserPublic)
async def get_user(user_id: uuid.UUID, session: SessionDep, _actor: AdminActor) -> User:
    return await services.get_user(session, user_id=user_id)


@router.patch("/{user_id}", response_model=schemas.UserPublic)
async def update_user(user_id: uuid.UUID, data: schemas.UserUpdate, session: SessionDep, actor: AdminActor) -> User:
    """Suspending a user stops their tokens at the gateway; deprovisioning also revokes every one."""
    return await services.update_user(session, actor=actor, user_id=user_id, data=data)
