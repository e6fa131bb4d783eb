"""``/usage`` (deprecated): request counts and tokens from the request records; ``/spend`` supersedes it.

It stays, unchanged, for the clients that read it: its ``requests`` counts every request the gateway
answered, refused ones included, and ``allowed`` those it let through, which ``spend_daily`` (costs
only) cannot say; re-implementing it there would silently change both numbers. Its tokens are the
same outcomes' usage that ``/spend`` sums. It scans the request records of its window (seconds at
tens of millions of requests), has no cost and no project, and groups by one thing: ``/spend``
answers from the daily rollup, with cost, in any grouping. Its answers say so: ``Deprecation: true``
and a ``Link`` to ``/api/v1/spend``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response

from controlplane import errors, schemas
from controlplane.api.deps import SessionDep, UsageReader
from controlplane.audit import queries

router = APIRouter(tags=["usage"], responses=errors.responses(401, 403, 422))


@router.get("/usage", response_model=list[schemas.UsageRow], deprecated=True)
async def usage(
    response: Response,
    session: SessionDep,
    _caller: UsageReader,
    group_by: Literal["team", "user", "model", "provider", "environment", "token"] = "team",
    start: Annotated[datetime | None, Query(description="Default: end - 30 days.")] = None,
    end: datetime | None = None,
) -> list[dict]:
    """Deprecated: use ``GET /api/v1/spend`` (cost, projects, any grouping, from the daily rollup).

    Requests (refused ones included) and token usage per team, user, model, provider, environment or
    token, from the audit store's request records."""
    response.headers["Deprecation"] = "true"
    response.headers["Link"] = '</api/v1/spend>; rel="successor-version"'
    start, end = queries.window(start, end, default=timedelta(days=30))
    return await queries.usage(session, group_by=group_by, start=start, end=end)
