from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Query, status
from sqlalchemy import func, select

from controlplane import directory, errors, schemas, services
from controlplane.api.deps import Cursor, Limit, Manager, Reader, SessionDep
from controlplane.api.routes._listing import sort_key
from controlplane.models import ServiceAccount

router = APIRouter(prefix="/service-accounts", tags=["service accounts"],
                   responses=errors.responses(401, 403, 422))


@router.post("", status_code=status.HTTP_201_CREATED, response_model=schemas.ServiceAccountPublic,
             responses=errors.responses(404, 409, body=True))
async def create_service_account(data: schemas.ServiceAccountCreate, session: SessionDep,
                                 caller: Manager) -> ServiceAccount:
    caller.require_team(data.team_id)
    return await directory.create_service_account(session, actor=caller.actor, data=data)


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
    query = select(ServiceAccount)
    if caller.role == "owner":
        query = query.where(ServiceAccount.team_id == caller.team_id)
    if team_id:
        query = query.where(ServiceAccount.team_id == team_id)
    if status_filter:
        query = query.where(ServiceAccount.status == status_filter)
    column, descending = sort_key(sort, {"created_at": ServiceAccount.created_at,
                                         "name": func.lower(ServiceAccount.name)})
    items, next_cursor = await services.paginate(session, query, sort=column, id_col=ServiceAccount.id,
                                                 cursor=cursor, limit=limit, descending=descending)
    return {"items": items, "next_cursor": next_cursor}


@router.get("/{account_id}", response_model=schemas.ServiceAccountPublic, responses=errors.responses(404))
async def get_service_account(account_id: uuid.UUID, session: SessionDep, caller: Reader) -> ServiceAccount:
    account = await directory.get_service_account(session, account_id=account_id)
    if caller.role == "owner":
        caller.require_team(account.team_id)
    return account


@router.patch("/{account_id}", response_model=schemas.ServiceAccountPublic,
              responses=errors.responses(404, body=True))
async def update_service_account(account_id: uuid.UUID, data: schemas.ServiceAccountUpdate, session: SessionDep,
                                 caller: Manager) -> ServiceAccount:
    """Disabling a service account stops its tokens at the gateway at once."""
    account = await directory.get_service_account(session, account_id=account_id)
    caller.require_team(account.team_id)
    return await directory.update_service_account(session, actor=caller.actor, account_id=account_id, data=data)
