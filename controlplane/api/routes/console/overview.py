"""The console's overview: what to look at first, each figure linking to the list behind it; and who
can reach a provider now (the list behind the per-provider figures)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from controlplane.api.routes.console._base import EVERYONE, READERS, SignedConsole, page
from controlplane.core.db import get_sessionmaker
from controlplane.services import access, overview

router = APIRouter(include_in_schema=False)


@router.get("/console")
async def overview_page(request: Request, console: SignedConsole) -> HTMLResponse:
    console.require(EVERYONE)
    async with get_sessionmaker()() as session, session.begin():
        figures = await overview.figures(session, within_team=console.caller.within_team)
    return page(request, console, "console/overview.html", title="Overview", figures=figures)


@router.get("/console/access")
async def reach_page(request: Request, console: SignedConsole,
                     provider: Annotated[str | None, Query(max_length=40)] = None,
                     model: Annotated[str | None, Query(max_length=200)] = None,
                     environment: Annotated[str | None, Query(max_length=16)] = None) -> HTMLResponse:
    """Who can reach a provider (a model, an environment) now: one row per usable grant."""
    console.require(READERS)
    team = console.caller.within_team
    where, params = ("t.team_id = $1::uuid", [str(team)]) if team is not None else ("", [])
    async with get_sessionmaker()() as session, session.begin():
        verdicts, _ = await access.judged(session, where=where, params=params)
    rows = access.reach(verdicts, provider=provider or None, model=model or None, environment=environment or None)
    rows.sort(key=lambda row: (row["owner"] or "", row["token_name"]))
    return page(request, console, "console/reach.html", title="Who can reach", rows=rows[:500], total=len(rows),
                providers=access.providers())
