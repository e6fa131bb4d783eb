"""Projects: units of work a team pays for. A token (and a service account, as the default of its
tokens) may carry one of its team's open projects, and spend rolls up token → owner → project → team,
so a project can have a budget and a rate limit of its own.

A closed project takes no new tokens. Closing one through the API also revokes every live token that
carries it (an offboarding trigger: the work is over, so are its credentials; see
:func:`controlplane.services.offboarding.close_project`); its usage and spend records are kept.
Names are unique within a team, compared case-insensitively, like every other name here.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane import schemas
from controlplane.audit.events import Actor, record_event
from controlplane.errors import Code, Conflict, Invalid
from controlplane.models import Project, Team
from controlplane.services.rows import flush_unique, get_or_404, insert_recorded, paginate, public, sort_key


async def get_project(session: AsyncSession, *, project_id: uuid.UUID) -> Project:
    return await get_or_404(session, Project, project_id, code=Code.PROJECT_NOT_FOUND, label="project")


async def list_projects(
    session: AsyncSession, *, within_team: uuid.UUID | None, team_id: uuid.UUID | None, status: str | None,
    name: str | None, sort: str, cursor: str | None, limit: int,
) -> dict[str, Any]:
    query = select(Project)
    for column, value in ((Project.team_id, within_team), (Project.team_id, team_id), (Project.status, status)):
        if value is not None:
            query = query.where(column == value)
    if name:
        query = query.where(func.lower(Project.name) == name.lower())
    column, descending = sort_key(sort, {"created_at": Project.created_at, "name": func.lower(Project.name)})
    return await paginate(session, query, sort=column, id_col=Project.id, cursor=cursor, limit=limit,
                          descending=descending)


def _exists(name: str) -> tuple[Code, str]:
    return Code.PROJECT_EXISTS, f"The team already has a project named {name}."


async def create_project(session: AsyncSession, *, actor: Actor, data: schemas.ProjectCreate) -> Project:
    await get_or_404(session, Team, data.team_id, code=Code.TEAM_NOT_FOUND, label="team")
    duplicate = await session.scalar(select(Project.id).where(
        Project.team_id == data.team_id, func.lower(Project.name) == data.name.lower()))
    if duplicate:
        raise Conflict(*_exists(data.name))
    project: Project = await insert_recorded(
        session, Project(id=uuid.uuid4(), status="open", **data.model_dump()), actor=actor, action="project.created",
        target_type="project", published=schemas.ProjectPublic, conflict=_exists(data.name))
    return project


async def update_project(session: AsyncSession, *, actor: Actor, project_id: uuid.UUID,
                         data: schemas.ProjectUpdate) -> Project:
    project = await get_project(session, project_id=project_id)
    before = public(schemas.ProjectPublic, project)
    for field, value in data.model_dump(exclude_unset=True).items():
        setattr(project, field, value)
    await flush_unique(session, *_exists(project.name))
    await session.refresh(project)
    await record_event(session, actor=actor, action="project.changed", target_type="project",
                       target_id=str(project.id), before=before, after=public(schemas.ProjectPublic, project))
    return project


async def close_project(session: AsyncSession, *, actor: Actor, project_id: uuid.UUID) -> Project:
    """Close a project: no new token may carry it. Closing a closed project changes nothing and
    succeeds (idempotent), like revoking a revoked token."""
    project = await get_project(session, project_id=project_id)
    if project.status == "closed":
        return project
    before = public(schemas.ProjectPublic, project)
    project.status = "closed"
    project.closed_at = datetime.now(UTC)
    await session.flush()
    await record_event(session, actor=actor, action="project.closed", target_type="project",
                       target_id=str(project.id), before=before, after=public(schemas.ProjectPublic, project))
    return project


async def require_open(session: AsyncSession, *, project_id: uuid.UUID, team_id: uuid.UUID,
                       inherited_from: str | None = None) -> Project:
    """The project a new token (or a service account) will carry: one of ``team_id``'s, and open.
    ``inherited_from`` names where it came from when the caller did not choose it, for the message."""
    project = await get_project(session, project_id=project_id)
    whose = f" ({inherited_from}'s project)" if inherited_from else ""
    if project.team_id != team_id:
        raise Invalid(Code.PROJECT_NOT_IN_TEAM,
                      f"Project {project.name}{whose} belongs to another team than {team_id}.")
    if project.status != "open":
        raise Invalid(Code.PROJECT_CLOSED, f"Project {project.name}{whose} is closed: it takes no new tokens.")
    return project
