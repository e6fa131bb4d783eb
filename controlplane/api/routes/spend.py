"""``/spend``: what was spent, grouped and filtered any way finance asks, as a page or a streamed export.

Admins, auditors and finance read every team's spend; a team owner reads only its own team's (the
team filter is forced to it; asking for another team is a 403 ``team_forbidden``).
"""

from __future__ import annotations

import uuid
from datetime import date
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from controlplane import errors, schemas
from controlplane.api.deps import AnyCaller, Cursor, Limit, SessionDep
from controlplane.audit import exports
from controlplane.services import spend

router = APIRouter(tags=["spend"], responses=errors.responses(401, 403, 422))

_GROUP = "(?:" + "|".join(spend.GROUPS) + ")"
GroupBy = Annotated[str, Query(
    max_length=200, pattern=rf"^\s*{_GROUP}\s*(?:,\s*{_GROUP}\s*)*$",
    description="Comma-separated, any of: " + ", ".join(spend.GROUPS) + ".")]
_TEXT = {"schema": {"type": "string"}}
EXPORTS: dict[int | str, dict[str, Any]] = {
    200: {"description": "json: one page with the total; csv / jsonl: every group, streamed (no total row).",
          "content": {media: _TEXT for media in exports.MEDIA_TYPES.values()}}
}
Text = Annotated[str | None, Query(max_length=200)]


@router.get("/spend", response_model=schemas.SpendReport, response_model_exclude_unset=True,
            responses=errors.responses(403) | EXPORTS)
async def spend_report(
    session: SessionDep,
    caller: AnyCaller,
    group_by: GroupBy = "team",
    start: Annotated[date | None, Query(description="First day (UTC); default: the first of this month.")] = None,
    end: Annotated[date | None, Query(description="Day after the last (exclusive); default: the first of next "
                                                  "month.")] = None,
    team_id: uuid.UUID | None = None,
    project_id: uuid.UUID | None = None,
    user_id: uuid.UUID | None = None,
    service_account_id: uuid.UUID | None = None,
    token_id: uuid.UUID | None = None,
    model: Text = None,
    provider: Text = None,
    environment: Text = None,
    sort: schemas.SpendSort = "-cost_usd",
    limit: Limit = 100,
    cursor: Cursor = None,
    format: Annotated[Literal["json", "csv", "jsonl"],
                      Query(description="json: one page; csv / jsonl: the whole report, streamed")] = "json",
) -> Any:
    """Requests, tokens and cost (USD) per group, most expensive first, with the total of every group.
    Each row carries the keys grouped by: ids with what they name (team and project names, user emails,
    service-account and token names), models, providers, environments, days or months."""
    if team_id is not None:
        caller.require_visible(team_id)
    filters = spend.filters_of(team_id=caller.within_team or team_id, project_id=project_id, user_id=user_id,
                               service_account_id=service_account_id, token_id=token_id, model=model,
                               provider=provider, environment=environment)
    groups = spend.parse_groups(group_by)
    if format != "json":
        query, params, columns = spend.export(groups=groups, start=start, end=end, filters=filters, sort=sort)
        return StreamingResponse(await exports.stream(query, params, columns, format, settings=spend.SETTINGS),
                                 media_type=exports.MEDIA_TYPES[format],
                                 headers={"content-disposition": f'attachment; filename="spend.{format}"'})
    return await spend.report(session, groups=groups, start=start, end=end, filters=filters, sort=sort,
                              cursor=cursor, limit=limit)
