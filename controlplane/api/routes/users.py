from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Query, status

from controlplane import errors, schemas
from controlplane.api.deps import Admin, Cursor, Limit, Reader, SessionDep
from controlplane.models import User
from controlplane.services import revocation, users

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


@router.patch("/{user_id}", response_model=schemas.UserUpdated, responses=errors.responses(404, body=True))
async def update_user(user_id: uuid.UUID, data: schemas.UserUpdate, session: SessionDep, caller: Admin) -> dict:
    """Suspending a user stops their tokens at the gateway; deprovisioning also revokes every one. Either
    answers once every gateway replica has applied it (``revocation``), or says which did not."""
    if data.status in ("suspended", "deprovisioned"):
        async with revocation.revoking(actor=caller.actor, target_type="user", target_id=str(user_id)) as revoking:
            user = await users.update_user(revoking.session, actor=caller.actor, user_id=user_id, data=data)
        assert revoking.confirmation is not None
        return {**schemas.UserPublic.model_validate(user).model_dump(),
                "revocation": revoking.confirmation.document()}
    user = await users.update_user(session, actor=caller.actor, user_id=user_id, data=data)
    return {**schemas.UserPublic.model_validate(user).model_dump(), "revocation": None}


@router.post("/{user_id}/tokens/revoke", response_model=schemas.BulkRevoked,
             responses=errors.responses(404, body=True))
async def revoke_user_tokens(user_id: uuid.UUID, caller: Admin, data: schemas.BulkRevoke | None = None) -> dict:
    """Revoke every live token the user owns, in one transaction; answers once the gateway refuses them."""
    async with revocation.revoking(actor=caller.actor, target_type="user", target_id=str(user_id)) as revoking:
        count = await users.revoke_tokens(revoking.session, actor=caller.actor, user_id=user_id,
                                          reason=data.reason if data else None)
    assert revoking.confirmation is not None
    return {"revoked": count, "revocation": revoking.confirmation.document()}
