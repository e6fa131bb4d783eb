from __future__ import annotations

import uuid
from typing import Literal

from fastapi import APIRouter, status

from controlplane import errors, schemas
from controlplane.api.deps import Admin, Cursor, Limit, Reader, SessionDep
from controlplane.models import AccessProfile
from controlplane.services import profiles

router = APIRouter(prefix="/profiles", tags=["access profiles"], responses=errors.responses(401, 403, 422))


@router.post("", status_code=status.HTTP_201_CREATED, response_model=schemas.ProfilePublic,
             responses=errors.responses(409, body=True))
async def create_profile(data: schemas.ProfileCreate, session: SessionDep, caller: Admin) -> AccessProfile:
    return await profiles.create_profile(session, actor=caller.actor, data=data)


@router.get("", response_model=schemas.Page[schemas.ProfilePublic])
async def list_profiles(
    session: SessionDep,
    _caller: Reader,
    limit: Limit = 100,
    cursor: Cursor = None,
    sort: Literal["created_at", "-created_at", "name", "-name"] = "name",
) -> dict:
    return await profiles.list_profiles(session, sort=sort, cursor=cursor, limit=limit)


@router.get("/{profile_id}", response_model=schemas.ProfilePublic, responses=errors.responses(404))
async def get_profile(profile_id: uuid.UUID, session: SessionDep, _caller: Reader) -> AccessProfile:
    return await profiles.get_profile(session, profile_id=profile_id)


@router.patch("/{profile_id}", response_model=schemas.ProfilePublic,
              responses=errors.responses(404, 409, body=True))
async def update_profile(profile_id: uuid.UUID, data: schemas.ProfileUpdate, session: SessionDep,
                         caller: Admin) -> AccessProfile:
    """Narrowing a profile narrows every token of every team that uses it, without re-issuing."""
    return await profiles.update_profile(session, actor=caller.actor, profile_id=profile_id, data=data)
