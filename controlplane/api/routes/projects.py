"""Projects: a team's units of work, which tokens carry and spend rolls up to. Admins manage them; a
team owner may open one in their own team; finance, auditors and team owners (their own team's) read."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Query, status

from controlplane import errors, schemas
from controlplane.api.deps import Admin, AnyCaller, Cursor, Limit, Manager, SessionDep
from controlplane.models import Project
from controlplane.services import offboarding, projects, revocation

router = APIRouter(prefix="/projects", tags=["projects"], responses=errors.responses(401, 403, 422))


@router.post("", status_code=status.HTTP_201_CREATED, response_model=schemas.ProjectPublic,
             responses=errors.responses(404, 409, body=True))
async def create_project(data: schemas.ProjectCreate, session: SessionDep, caller: Manager) -> Project:
    caller.require_team(data.team_id)
    return await projects.create_project(session, actor=caller.actor, data=data)


@router.get("", response_model=schemas.Page[schemas.ProjectPublic])
async def list_projects(
    session: SessionDep,
    caller: AnyCaller,
    limit: Limit = 100,
    cursor: Cursor = None,
    team_id: uuid.UUID | None = None,
    status_filter: Annotated[schemas.ProjectStatus | None, Query(alias="status")] = None,
    name: Annotated[str | None, Query(max_length=200, description="Exact match, case-insensitive.")] = None,
    sort: Literal["created_at", "-created_at", "name", "-name"] = "created_at",
) -> dict:
    """Projects (a team owner: their own team's)."""
    return await projects.list_projects(session, within_team=caller.within_team, team_id=team_id,
                                        status=status_filter, name=name, sort=sort, cursor=cursor, limit=limit)


@router.get("/{project_id}", response_model=schemas.ProjectPublic, responses=errors.responses(404))
async def get_project(project_id: uuid.UUID, session: SessionDep, caller: AnyCaller) -> Project:
    project = await projects.get_project(session, project_id=project_id)
    caller.require_visible(project.team_id)
    return project


@router.patch("/{project_id}", response_model=schemas.ProjectPublic, responses=errors.responses(404, 409, body=True))
async def update_project(project_id: uuid.UUID, data: schemas.ProjectUpdate, session: SessionDep,
                         caller: Admin) -> Project:
    return await projects.update_project(session, actor=caller.actor, project_id=project_id, data=data)


@router.post("/{project_id}/close", response_model=schemas.ProjectClosed, responses=errors.responses(404))
async def close_project(project_id: uuid.UUID, caller: Admin) -> dict:
    """Close a project: no new token may carry it, and every live token carrying it is revoked (its usage
    records are kept). Answers once every gateway replica refuses them (``revocation``). Closing twice
    is not an error."""
    async with revocation.revoking(actor=caller.actor, target_type="project", target_id=str(project_id)) as revoking:
        project, revoked = await offboarding.close_project(revoking.session, actor=caller.actor,
                                                           project_id=project_id)
        revoking.needed = revoked > 0
    return {**schemas.ProjectPublic.model_validate(project).model_dump(), "tokens_revoked": revoked,
            "revocation": revoking.confirmation.document() if revoking.confirmation else None}
