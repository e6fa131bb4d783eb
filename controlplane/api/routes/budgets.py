"""Budgets: admins set and remove a scope's own budget; finance, auditors and team owners (their own
team's scopes) read them and what is spent against every budget in effect."""

from __future__ import annotations

import uuid
from typing import Literal

from fastapi import APIRouter, Response, status

from controlplane import errors, schemas
from controlplane.api.deps import Admin, AnyCaller, Caller, Cursor, Limit, SessionDep
from controlplane.models import Budget
from controlplane.services import budgets, scopes

router = APIRouter(prefix="/budgets", tags=["budgets"], responses=errors.responses(401, 403, 422))

PolicySort = Literal["created_at", "-created_at", "updated_at", "-updated_at"]


def require_scope_visible(caller: Caller, scope: scopes.Scope) -> None:
    """Readers see every scope; a team owner only their own team's: the team, its projects, service
    accounts and tokens, and its members."""
    caller.require_visible(caller.team_id if caller.team_id in scope.team_ids else None)


@router.get("", response_model=schemas.Page[schemas.BudgetPublic])
async def list_budgets(
    session: SessionDep,
    caller: AnyCaller,
    limit: Limit = 100,
    cursor: Cursor = None,
    scope_type: schemas.ScopeType | None = None,
    scope_id: uuid.UUID | None = None,
    sort: PolicySort = "created_at",
) -> dict:
    """The scopes' own budgets; the defaults are in the access profiles (``budget_defaults``)."""
    return await budgets.list_budgets(session, within_team=caller.within_team, scope_type=scope_type,
                                      scope_id=scope_id, sort=sort, cursor=cursor, limit=limit)


@router.put("/{scope_type}/{scope_id}", response_model=schemas.BudgetPublic,
            responses=errors.responses(404, body=True))
async def set_budget(scope_type: schemas.ScopeType, scope_id: uuid.UUID, data: schemas.BudgetSet,
                     session: SessionDep, caller: Admin) -> Budget:
    """Give a scope its own budget in place of its profile's default, or replace the one it has. The
    gateway applies it at once."""
    return await budgets.set_budget(session, actor=caller.actor, scope_type=scope_type, scope_id=scope_id,
                                    data=data)


@router.delete("/{scope_type}/{scope_id}", status_code=status.HTTP_204_NO_CONTENT,
               responses=errors.responses(404))
async def remove_budget(scope_type: schemas.ScopeType, scope_id: uuid.UUID, session: SessionDep,
                        caller: Admin) -> Response:
    """Remove a scope's own budget: its profile's default, if any, applies again."""
    await budgets.remove_budget(session, actor=caller.actor, scope_type=scope_type, scope_id=scope_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{scope_type}/{scope_id}/utilisation", response_model=schemas.Utilisation,
            responses=errors.responses(404))
async def utilisation(scope_type: schemas.ScopeType, scope_id: uuid.UUID, session: SessionDep,
                      caller: AnyCaller) -> dict:
    """Every budget in effect for the scope (its own, or its profile default, per team where that
    differs), the current period, what is spent in it, and whether the gateway refuses now."""
    require_scope_visible(caller, await scopes.get(session, scope_type=scope_type, scope_id=scope_id))
    return await budgets.utilisation(session, scope_type=scope_type, scope_id=scope_id,
                                     within_team=caller.within_team)
