"""What a page of people or service accounts adds to each row, read for those rows only in one set-based
query each: teams and membership roles, live tokens, the last gateway request, owners' names, the
service accounts a person answers for. The console's people pages read them (and nothing else needs
a whole page's worth at once)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func, or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.models import Membership, ServiceAccount, Team, User
from controlplane.services import lifecycle

#: The owner fields of a service account.
OWNER_FIELDS = ("business_owner", "technical_owner", "security_owner", "finance_owner")


async def memberships(session: AsyncSession, user_ids: list[uuid.UUID], within_team: uuid.UUID | None
                      ) -> dict[uuid.UUID, list[dict[str, Any]]]:
    """Each person's teams with their role (a team owner sees its own team's memberships only)."""
    query = (select(Membership.user_id, Team.id, Team.name, Membership.role).join(Team, Team.id == Membership.team_id)
             .where(Membership.user_id.in_(user_ids)).order_by(func.lower(Team.name)))
    if within_team is not None:
        query = query.where(Team.id == within_team)
    found: dict[uuid.UUID, list[dict[str, Any]]] = {}
    for user_id, team_id, name, role in await session.execute(query):
        found.setdefault(user_id, []).append({"id": team_id, "name": name, "role": role})
    return found


async def live_tokens(session: AsyncSession, column: Any, ids: list[uuid.UUID], within_team: uuid.UUID | None
                      ) -> dict[uuid.UUID, int]:
    """Live tokens (the token list's ``state=active``) per owner, among the tokens the caller may see."""
    query = (lifecycle.list_query(state="active", within_team=within_team).where(column.in_(ids))
             .with_only_columns(column, func.count()).group_by(column))
    return {owner: count for owner, count in await session.execute(query)}


LAST_REQUESTS_SQL = text("SELECT u.id, (SELECT max(r.at) FROM request_records r WHERE r.user_id = u.id) AS at"
                      " FROM unnest(CAST(:ids AS uuid[])) AS u(id)")


async def last_requests(session: AsyncSession, user_ids: list[uuid.UUID]) -> dict[uuid.UUID, Any]:
    """When each person last made a gateway request (the audit store's ``(user_id, at)`` index)."""
    if not user_ids:
        return {}
    rows = await session.execute(LAST_REQUESTS_SQL, {"ids": user_ids})
    return {uuid.UUID(str(user_id)): at for user_id, at in rows}


async def by_id(session: AsyncSession, model: Any, ids: set[Any]) -> dict[uuid.UUID, Any]:
    ids.discard(None)
    return {row.id: row for row in await session.scalars(select(model).where(model.id.in_(ids)))} if ids else {}




async def accounts_owned_by(session: AsyncSession, user_id: uuid.UUID, *, within_team: uuid.UUID | None,
                            limit: int) -> list[ServiceAccount]:
    """The service accounts a person is one of the owners of (of one team, for a team owner)."""
    query = select(ServiceAccount).where(or_(*(getattr(ServiceAccount, f"{field}_id") == user_id
                                               for field in OWNER_FIELDS)))
    if within_team is not None:
        query = query.where(ServiceAccount.team_id == within_team)
    return list((await session.scalars(query.order_by(func.lower(ServiceAccount.name)).limit(limit))).all())


async def active_member_emails(session: AsyncSession, team_id: uuid.UUID, limit: int = 200) -> list[str]:
    """The e-mail addresses of a team's active members (who may be named a service account's owner)."""
    return list((await session.scalars(
        select(User.email).join(Membership, Membership.user_id == User.id)
        .where(Membership.team_id == team_id, User.status == "active", User.deleted_at.is_(None))
        .order_by(func.lower(User.email)).limit(limit))).all())
