from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Query

from controlplane import errors, schemas
from controlplane.api.deps import SessionDep, UsageReader
from controlplane.audit import queries

router = APIRouter(tags=["usage"], responses=errors.responses(401, 403, 422))


@router.get("/usage", response_model=list[schemas.UsageRow])
async def usage(
    session: SessionDep,
    _caller: UsageReader,
    group_by: Literal["team", "user", "model", "provider", "environment", "token"] = "team",
    start: Annotated[datetime | None, Query(description="Default: end - 30 days.")] = None,
    end: datetime | None = None,
) -> list[dict]:
    """Requests and token usage per team, user, model, provider, environment or token, from the audit store."""
    start, end = queries.window(start, end, default=timedelta(days=30))
    return await queries.usage(session, group_by=group_by, start=start, end=end)
