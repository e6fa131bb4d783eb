from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Query, status

from controlplane import errors, schemas
from controlplane.api.deps import Cursor, Limit, Manager, Reader, SessionDep
from controlplane.models import ServiceAccount
from controlplane.services import service_accounts

router = APIRouter(prefix="/service-accounts", tags=["service accounts"],
                   responses=errors.responses(401, 403, 422))


@router.post("", status_code=status.HTTP_201_CREATED, response_model=schemas.ServiceAccountPublic,
             responses=errors.responses(404, 409, body=True))
async def create_service_account(data: schemas.ServiceAccountCreate, session: SessionDep,
                                 caller: Manager) -> ServiceAccount:
    caller.require_team(data.team_id)
    return await service_accounts.create_service_account(session, actor=caller.actor, data=data)


@router.get("", response_model=schemas.Page[schemas.ServiceAccountPublic])
async def list_service_accounts(
    session: SessionDep,
    caller: Reader,
    limit: Limit = 100,
    cursor: Cursor = None,
    team_id: uuid.UUID | None = None,
    status_filter: Annotated[Literal["active", "disabled"] | None, Query(alias="status")] = None,
    sort: Literal["created_at", "-created_at", "name", "-name"] = "created_at",
) -> dict:
    return await service_accounts.list_service_accounts(session, within_team=caller.within_team, team_id=team_id,
                                                        status=status_filter, sort=sort, cursor=cursor, limit=limit)


@router.get("/{account_id}", response_model=schemas.ServiceAccountPublic, responses=errors.responses(404))
async def get_service_account(account_id: uuid.UUID, session: SessionDep, caller: Reader) -> ServiceAccount:
    account = await service_accounts.get_service_account(session, account_id=account_id)
    caller.require_visible(account.team_id)
    return account


@router.patch("/{account_id}", response_model=schemas.ServiceAccountPublic,
              responses=errors.responses(404, body=True))
async def update_service_account(account_id: uuid.UUID, data: schemas.ServiceAccountUpdate, session: SessionDep,
                                 caller: Manager) -> ServiceAccount:
    """Disabling a service account stops its tokens at the gateway at once."""
    account = await service_accounts.get_service_account(session, account_id=account_id)
    caller.require_team(account.team_id)
    return await service_accounts.update_service_account(session, actor=caller.actor, account_id=account_id,
                                                         data=data)
