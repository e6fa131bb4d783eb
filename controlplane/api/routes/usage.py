from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from sqlalchemy import text

from controlplane import errors, schemas
from controlplane.api.deps import SessionDep, UsageReader
from controlplane.errors import Invalid

router = APIRouter(tags=["usage"], responses=errors.responses(401, 403, 422))

_GROUPS = {"team": "r.team", "user": "r.user_email", "model": "r.model", "provider": "r.provider",
           "environment": "r.environment", "token": "r.token_id::text"}


@router.get("/usage", response_model=list[schemas.UsageRow])
async def usage(
    session: SessionDep,
    _caller: UsageReader,
    group_by: Literal["team", "user", "model", "provider", "environment", "token"] = "team",
    start: Annotated[datetime | None, Query(description="Default: end - 30 days.")] = None,
    end: datetime | None = None,
) -> list[dict]:
    """Requests and token usage per team, user, model, provider, environment or token, from the audit store."""
    end = end or datetime.now(UTC)
    try:
        start = start or end - timedelta(days=30)
    except OverflowError:  # an end within 30 days of 0001-01-01
        start = datetime.min.replace(tzinfo=UTC)
    if start.tzinfo is None or end.tzinfo is None or start >= end:
        raise Invalid("window_invalid", "start and end must carry a timezone, and start must be before end.")
    column = _GROUPS[group_by]
    query = f"""
        SELECT {column} AS key, count(*) AS requests, count(*) FILTER (WHERE r.decision = 'allowed') AS allowed,
               COALESCE(sum(o.prompt_tokens), 0) AS prompt_tokens,
               COALESCE(sum(o.completion_tokens), 0) AS completion_tokens
        FROM request_records r
        LEFT JOIN request_outcomes o ON o.request_id = r.request_id
             AND o.at BETWEEN r.at - interval '1 minute' AND r.at + interval '1 minute'
        WHERE r.at >= :start AND r.at < :end
        GROUP BY 1 ORDER BY requests DESC LIMIT 1000
    """  # noqa: S608 - the grouped column comes from a fixed table
    rows = (await session.execute(text(query), {"start": start, "end": end})).mappings().all()
    return [dict(row) for row in rows]
