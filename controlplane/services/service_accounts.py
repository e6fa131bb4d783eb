"""Service accounts: workload and agent identities owned by a team, with a named business and
technical owner. Disabling one stops its tokens at the gateway at once. One may name an open project
of its team: the project its tokens carry unless minted with another.

Register fields: purpose, workload, and a security and a finance owner besides the business and the
technical one. Every owner named is an active person (422 ``owner_not_active``). An account that acts in
production (a live ``prod`` token) keeps a business and a technical owner who are different people
unless an exception covers it (:func:`controlplane.services.lifecycle.require_distinct_owners`). Giving
an account flagged for reassignment (an owner departed) active owners clears the flag.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane import schemas
from controlplane.audit.events import Actor, record_event
from controlplane.errors import Code, Conflict, Invalid
from controlplane.models import ServiceAccount, User
from controlplane.services import lifecycle, offboarding, reviews
from controlplane.services.projects import require_open
from controlplane.services.rows import get_or_404, insert_recorded, paginate, public, sort_key
from controlplane.services.teams import get_team


async def get_service_account(session: AsyncSession, *, account_id: uuid.UUID) -> ServiceAccount:
    return await get_or_404(session, ServiceAccount, account_id, code=Code.SERVICE_ACCOUNT_NOT_FOUND,
                            label="service account")


async def list_service_accounts(
    session: AsyncSession, *, within_team: uuid.UUID | None, team_id: uuid.UUID | None, status: str | None,
    sort: str, cursor: str | None, limit: int,
) -> dict[str, Any]:
    query = select(ServiceAccount)
    for column, value in ((ServiceAccount.team_id, within_team), (ServiceAccount.team_id, team_id),
                          (ServiceAccount.status, status)):
        if value:
            query = query.where(column == value)
    column, descending = sort_key(sort, {"created_at": ServiceAccount.created_at,
                                         "name": func.lower(ServiceAccount.name)})
    return await paginate(session, query, sort=column, id_col=ServiceAccount.id, cursor=cursor, limit=limit,
                          descending=descending)


#: The owners a service account names, each a person who must be active when named.
OWNER_FIELDS = ("business_owner_id", "technical_owner_id", "security_owner_id", "finance_owner_id")
#: Fields an update may set to null (the rest may only be left out).
_NULLABLE = ("security_owner_id", "finance_owner_id", "purpose", "workload", "description")


async def _owner(session: AsyncSession, user_id: uuid.UUID) -> User:
    user = await get_or_404(session, User, user_id, code=Code.USER_NOT_FOUND, label="user")
    if offboarding.departed(user):
        raise Invalid(Code.OWNER_NOT_ACTIVE, f"User {user.email} is {user.status}: an owner must be an active person.")
    return user


async def create_service_account(session: AsyncSession, *, actor: Actor,
                                 data: schemas.ServiceAccountCreate) -> ServiceAccount:
    await get_team(session, team_id=data.team_id)
    for owner_field in OWNER_FIELDS:
        if getattr(data, owner_field) is not None:
            await _owner(session, getattr(data, owner_field))
    if data.project_id is not None:
        await require_open(session, project_id=data.project_id, team_id=data.team_id)
    duplicate = await session.scalar(select(ServiceAccount.id).where(
        ServiceAccount.team_id == data.team_id, func.lower(ServiceAccount.name) == data.name.lower()))
    if duplicate:
        raise Conflict(Code.SERVICE_ACCOUNT_EXISTS, f"Team {data.team_id} already has a service account {data.name}.")
    account: ServiceAccount = await insert_recorded(
        session, ServiceAccount(id=uuid.uuid4(), **data.model_dump()), actor=actor,
        action="service_account.created", target_type="service_account", published=schemas.ServiceAccountPublic,
        conflict=(Code.SERVICE_ACCOUNT_EXISTS, f"A service account named {data.name} exists."))
    return account


async def update_service_account(session: AsyncSession, *, actor: Actor, account_id: uuid.UUID,
                                 data: schemas.ServiceAccountUpdate) -> ServiceAccount:
    account = await get_service_account(session, account_id=account_id)
    before = public(schemas.ServiceAccountPublic, account)
    changes = data.model_dump(exclude_unset=True)
    for owner_field in OWNER_FIELDS:
        if changes.get(owner_field) is not None and changes[owner_field] != getattr(account, owner_field):
            await _owner(session, changes[owner_field])
    if "project_id" in changes:  # null clears it: the account's new tokens carry no project by default
        if changes["project_id"] is not None:
            await require_open(session, project_id=changes["project_id"], team_id=account.team_id)
        account.project_id = changes.pop("project_id")
    for field, value in changes.items():
        if value is not None or field in _NULLABLE:
            setattr(account, field, value)
    if account.business_owner_id == account.technical_owner_id and await lifecycle.has_prod_tokens(session,
                                                                                                  account.id):
        await lifecycle.require_distinct_owners(session, account_id=account.id, business=account.business_owner_id,
                                                technical=account.technical_owner_id, name=account.name)
    await session.flush()
    await session.refresh(account)
    await record_event(session, actor=actor, action="service_account.updated", target_type="service_account",
                       target_id=str(account.id), before=before, after=public(schemas.ServiceAccountPublic, account))
    await offboarding.clear_if_reassigned(session, actor=actor, row=account)
    await reviews.on_owner_change(session, actor=actor, account=account, before=before)
    return account
