from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Query, status

from controlplane import errors, schemas
from controlplane.api.deps import Admin, Cursor, Limit, Reader, SessionDep
from controlplane.models import User
from controlplane.services import users

router = APIRouter(prefix="/users", tags=["users"], responses=errors.responses(401, 403, 422))

UserSort = Literal["created_at", "-created_at", "email", "-email"]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=schemas.UserPublic,
             responses=errors.responses(409, body=True))
async def create_user(data: schemas.UserCreate, session: SessionDep, caller: Admin) -> User:
    return await users.create_user(session, actor=caller.actor, data=data)


@router.get("", response_model=schemas.Page[schemas.UserPublic])
async def list_users(
    session: SessionDep,
    _caller: Reader,
    limit: Limit = 100,
    cursor: Cursor = None,
    user_status: Annotated[schemas.UserStatus | None, Query(alias="status")] = None,
    email: Annotated[str | None, Query(max_length=320, description="Exact match, case-insensitive.")] = None,
    q: Annotated[str | None, Query(max_length=200, description="Substring of email or display name.")] = None,
    sort: UserSort = "created_at",
) -> dict:
    return await users.list_users(session, status=user_status, email=email, q=q, sort=sort, cursor=cursor,
                                  limit=limit)


@router.get("/{user_id}", response_model=schemas.UserPublic, responses=errors.responses(404))
async def get_user(user_id: uuid.UUID, session: SessionDep, _caller: Reader) -> User:
    return await users.get_user(session, user_id=user_id)


@router.patch("/{user_id}", response_model=schemas.UserPublic, responses=errors.responses(404, body=True))
async def update_user(user_id: uuid.UUID, data: schemas.UserUpdate, session: SessionDep, caller: Admin) -> User:
    """Suspending a user stops their tokens at the gateway; deprovisioning also revokes every one."""
    return await users.update_user(session, actor=caller.actor, user_id=user_id, data=data)


@router.post("/{user_id}/tokens/revoke", response_model=schemas.BulkRevoked,
             responses=errors.responses(404, body=True))
async def revoke_user_tokens(user_id: uuid.UUID, session: SessionDep, caller: Admin,
                             data: schemas.BulkRevoke | None = None) -> dict:
    """Revoke every live token the user owns, in one transaction."""
    count = await users.revoke_tokens(session, actor=caller.actor, user_id=user_id,
                                      reason=data.reason if data else None)
    return {"revoked": count}
