from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response, status

from controlplane import errors, schemas
from controlplane.api.deps import Admin, Cursor, Limit, Manager, Reader, SessionDep
from controlplane.models import Membership, Team
from controlplane.services import revocation, teams

router = APIRouter(prefix="/teams", tags=["teams"], responses=errors.responses(401, 403, 422))

TeamSort = Literal["created_at", "-created_at", "name", "-name"]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=schemas.TeamPublic,
             responses=errors.responses(404, 409, body=True))
async def create_team(data: schemas.TeamCreate, session: SessionDep, caller: Admin) -> Team:
    return await teams.create_team(session, actor=caller.actor, data=data)


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
    return await teams.list_teams(session, within_team=caller.within_team, name=name, profile_id=profile_id,
                                  sort=sort, cursor=cursor, limit=limit)


@router.get("/{team_id}", response_model=schemas.TeamPublic, responses=errors.responses(404))
async def get_team(team_id: uuid.UUID, session: SessionDep, caller: Reader) -> Team:
    caller.require_visible(team_id)
    return await teams.get_team(session, team_id=team_id)


@router.patch("/{team_id}", response_model=schemas.TeamPublic, responses=errors.responses(404, 409, body=True))
async def update_team(team_id: uuid.UUID, data: schemas.TeamUpdate, session: SessionDep, caller: Admin) -> Team:
    """Changing a team's profile changes what every token of the team may do, at once."""
    return await teams.update_team(session, actor=caller.actor, team_id=team_id, data=data)


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
    caller.require_visible(team_id)
    return await teams.list_members(session, team_id=team_id, role=role, cursor=cursor, limit=limit)


@router.put("/{team_id}/members/{user_id}", response_model=schemas.MembershipPublic,
            responses=errors.responses(404, body=True))
async def set_member(team_id: uuid.UUID, user_id: uuid.UUID, session: SessionDep, caller: Admin,
                     data: schemas.MembershipSet | None = None) -> Membership:
    """Add a user to the team (or change their role). Idempotent. Admins only: membership decides
    whose tokens a team owner may mint, so owners cannot enlist people themselves."""
    return await teams.set_member(session, actor=caller.actor, team_id=team_id, user_id=user_id,
                                  role=(data or schemas.MembershipSet()).role)


@router.delete("/{team_id}/members/{user_id}", status_code=status.HTTP_204_NO_CONTENT,
               responses=errors.responses(404))
async def remove_member(team_id: uuid.UUID, user_id: uuid.UUID, session: SessionDep, caller: Manager) -> Response:
    """Remove a member: their tokens for this team stop working at once."""
    caller.require_team(team_id)
    await teams.remove_member(session, actor=caller.actor, team_id=team_id, user_id=user_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{team_id}/tokens/revoke", response_model=schemas.BulkRevoked,
             responses=errors.responses(404, body=True))
async def revoke_team_tokens(team_id: uuid.UUID, caller: Manager, data: schemas.BulkRevoke | None = None) -> dict:
    """Revoke every live token that acts for the team, and no one else's; answers once the gateway refuses them."""
    caller.require_team(team_id)
    async with revocation.revoking(actor=caller.actor, target_type="team", target_id=str(team_id)) as revoking:
        count = await teams.revoke_tokens(revoking.session, actor=caller.actor, team_id=team_id,
                                          reason=data.reason if data else None)
    assert revoking.confirmation is not None
    return {"revoked": count, "revocation": revoking.confirmation.document()}
