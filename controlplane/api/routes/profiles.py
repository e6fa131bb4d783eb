from __future__ import annotations

import uuid
from typing import Literal

from fastapi import APIRouter, status
from sqlalchemy import func, select

from controlplane import directory, errors, schemas, services
from controlplane.api.deps import Admin, Cursor, Limit, Reader, SessionDep
from controlplane.api.routes._listing import sort_key
from controlplane.models import AccessProfile

router = APIRouter(prefix="/profiles", tags=["access profiles"], responses=errors.responses(401, 403, 422))


@router.post("", status_code=status.HTTP_201_CREATED, response_model=schemas.ProfilePublic,
             responses=errors.responses(409, body=True))
async def create_profile(data: schemas.ProfileCreate, session: SessionDep, caller: Admin) -> AccessProfile:
    return await directory.create_profile(session, actor=caller.actor, data=data)


@router.get("", response_model=schemas.Page[schemas.ProfilePublic])
async def list_profiles(
    session: SessionDep,
    _caller: Reader,
    limit: Limit = 100,
    cursor: Cursor = None,
    sort: Literal["created_at", "-created_at", "name", "-name"] = "name",
) -> dict:
    column, descending = sort_key(sort, {"created_at": AccessProfile.created_at,
                                         "name": func.lower(AccessProfile.name)})
    items, next_cursor = await services.paginate(session, select(AccessProfile), sort=column,
                                                 id_col=AccessProfile.id, cursor=cursor, limit=limit,
                                                 descending=descending)
    return {"items": items, "next_cursor": next_cursor}


@router.get("/{profile_id}", response_model=schemas.ProfilePublic, responses=errors.responses(404))
async def get_profile(profile_id: uuid.UUID, session: SessionDep, _caller: Reader) -> AccessProfile:
    return await directory.get_profile(session, profile_id=profile_id)


@router.patch("/{profile_id}", response_model=schemas.ProfilePublic,
              responses=errors.responses(404, 409, body=True))
async def update_profile(profile_id: uuid.UUID, data: schemas.ProfileUpdate, session: SessionDep,
                         caller: Admin) -> AccessProfile:
    """Narrowing a profile narrows every token of every team that uses it, without re-issuing."""
    return await directory.update_profile(session, actor=caller.actor, profile_id=profile_id, data=data)
