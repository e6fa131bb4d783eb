from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response, status
from sqlalchemy import func, select

from controlplane import directory, errors, schemas, services, tokens
from controlplane.api.deps import Admin, Cursor, Limit, Manager, Reader, SessionDep
from controlplane.api.routes._listing import sort_key
from controlplane.models import Membership, Team

router = APIRouter(prefix="/teams", tags=["teams"], responses=errors.responses(401, 403, 422))

TeamSort = Literal["created_at", "-created_at", "name", "-name"]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=schemas.TeamPublic,
             responses=errors.responses(404, 409, body=True))
async def create_team(data: schemas.TeamCreate, session: SessionDep, caller: Admin) -> Team:
    return await directory.create_team(session, actor=caller.actor, data=data)


@router.get("", response_model=schemas.Page[schemas.TeamPublic])
async def list_teams(
    session: SessionDep,
    caller: Reader,
    limit: Limit = 100,
    cursor: Cursor = None,
    name: Annotated[str | None, Query(max_length=200, description="Exact match, case-insensitive.")] = None,
    profile_id: uuid.UUID | None = None,
    sort: TeamSort = "created_at",
) -> dict:
    query = select(Team)
    if caller.role == "owner":
        query = query.where(Team.id == caller.team_id)
    if name:
        query = query.where(func.lower(Team.name) == name.lower())
    if profile_id:
        query = query.where(Team.profile_id == profile_id)
    column, descending = sort_key(sort, {"created_at": Team.created_at, "name": func.lower(Team.name)})
    items, next_cursor = await services.paginate(session, query, sort=column, id_col=Team.id, cursor=cursor,
                                                 limit=limit, descending=descending)
    return {"items": items, "next_cursor": next_cursor}


@router.get("/{team_id}", response_model=schemas.TeamPublic, responses=errors.responses(404))
async def get_team(team_id: uuid.UUID, session: SessionDep, caller: Reader) -> Team:
    if caller.role == "owner":
        caller.require_team(team_id)
    return await directory.get_team(session, team_id=team_id)


@router.patch("/{team_id}", response_model=schemas.TeamPublic, responses=errors.responses(404, 409, body=True))
async def update_team(team_id: uuid.UUID, data: schemas.TeamUpdate, session: SessionDep, caller: Admin) -> Team:
    """Changing a team's profile changes what every token of the team may do, at once."""
    return await directory.update_team(session, actor=caller.actor, team_id=team_id, data=data)


@router.get("/{team_id}/members", response_model=schemas.Page[schemas.MembershipPublic],
            responses=errors.responses(404))
async def list_members(
    team_id: uuid.UUID,
    session: SessionDep,
    caller: Reader,
    limit: Limit = 100,
    cursor: Cursor = None,
    role: schemas.MemberRole | None = None,
) -> dict:
    if caller.role == "owner":
        caller.require_team(team_id)
    await directory.get_team(session, team_id=team_id)
    query = select(Membership).where(Membership.team_id == team_id)
    if role:
        query = query.where(Membership.role == role)
    items, next_cursor = await services.paginate(session, query, sort=Membership.created_at,
                                                 id_col=Membership.user_id, cursor=cursor, limit=limit)
    return {"items": items, "next_cursor": next_cursor}


@router.put("/{team_id}/members/{user_id}", response_model=schemas.MembershipPublic,
            responses=errors.responses(404, body=True))
async def set_member(team_id: uuid.UUID, user_id: uuid.UUID, session: SessionDep, caller: Manager,
                     data: schemas.MembershipSet | None = None) -> Membership:
    """Add a user to the team (or change their role). Idempotent."""
    caller.require_team(team_id)
    return await directory.set_member(session, actor=caller.actor, team_id=team_id, user_id=user_id,
                                      role=(data or schemas.MembershipSet()).role)


@router.delete("/{team_id}/members/{user_id}", status_code=status.HTTP_204_NO_CONTENT,
               responses=errors.responses(404))
async def remove_member(team_id: uuid.UUID, user_id: uuid.UUID, session: SessionDep, caller: Manager) -> Response:
    """Remove a member: their tokens for this team stop working at once."""
    caller.require_team(team_id)
    await directory.remove_member(session, actor=caller.actor, team_id=team_id, user_id=user_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{team_id}/tokens/revoke", response_model=schemas.BulkRevoked,
             responses=errors.responses(404, body=True))
async def revoke_team_tokens(team_id: uuid.UUID, session: SessionDep, caller: Manager,
                             data: schemas.BulkRevoke | None = None) -> dict:
    """Revoke every live token that acts for the team, and no one else's."""
    caller.require_team(team_id)
    await directory.get_team(session, team_id=team_id)
    count = await tokens.revoke_where(session, actor=caller.actor, team_id=team_id,
                                      reason=(data.reason if data and data.reason else "all of the team's tokens"))
    return {"revoked": count}
