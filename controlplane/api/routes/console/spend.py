"""The console's spend page: what was spent in a window, grouped by team, project, model or person,
as a stacked bar chart by day, the top spenders and the total; and its export (CSV or JSON lines).

The same report as the admin API's ``/spend`` (:func:`controlplane.services.spend.report` and
:func:`~controlplane.services.spend.export`, streamed by :func:`controlplane.audit.exports.stream`),
with the same roles: admins, auditors and finance read every team's spend, a team owner only their own
team's (the team filter is forced to it; asking for another team is refused). The chart is inline SVG
laid out by :mod:`controlplane.web.charts`: the few biggest spenders each get a series and everything
else is one grey series (see :func:`_cells` for the reports it reads).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, StreamingResponse
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.api.routes.console._base import EVERYONE, Console, ConsoleRefused, SignedConsole, page, reporting
from controlplane.api.routes.console._forms import a_day, not_understood
from controlplane.audit import exports
from controlplane.core.db import get_sessionmaker
from controlplane.services import spend
from controlplane.services.prices import priced_providers
from controlplane.web import charts

router = APIRouter(include_in_schema=False)

#: What the page groups by, and the filter that narrows a report to one of its groups.
GROUPINGS = {"team": ("Team", "team_id"), "project": ("Project", "project_id"), "model": ("Model", "model"),
             "user": ("Person", "user_id")}
PLURALS = {"team": "teams", "project": "projects", "model": "models", "user": "people"}
#: The column naming each group in a report row.
NAMES = {"team": "team_name", "project": "project_name", "model": "model", "user": "user_email"}
#: Spenders with a series of their own in the chart; the rest are one "everything else" series.
SERIES = 6
#: Rows of a report by period and group read at once for the chart (beyond: one report per series).
CELLS = 5000
PAGE = 50
#: Longest window the page charts by day; a longer one is charted by month.
DAILY_DAYS = 92
LONGEST_DAYS = 731
ENVIRONMENTS = ("dev", "staging", "prod", "ci")
_IDS = ("team_id", "project_id", "user_id")
_TEXTS = ("model", "provider", "environment")


@dataclass
class Question:
    """A spend question from the page's query string, checked like the API checks its parameters."""

    group: str
    start: date
    end: date
    filters: dict[str, Any]
    cursor: str | None = None
    #: The filters the person chose (a team owner's forced team filter is not one of them).
    chosen: dict[str, str] = field(default_factory=dict)

    @property
    def by_day(self) -> bool:
        return (self.end - self.start).days <= DAILY_DAYS


def _bad(message: str) -> ConsoleRefused:
    return not_understood(message, "That report cannot be made")


def ask(console: Console, params: Mapping[str, str]) -> Question:
    """The question in ``params`` (what the page's filter form sends), or a 422 page; a team owner's
    asking for another team's spend is a 403, as at ``/api/v1/spend``."""
    group = params.get("group") or "team"
    if group not in GROUPINGS:
        raise _bad(f"Group by one of: {', '.join(GROUPINGS)}.")
    chosen: dict[str, Any] = {}
    for name in _IDS:
        if value := params.get(name):
            try:
                chosen[name] = uuid.UUID(value)
            except ValueError:
                raise _bad(f"{name} must be an id.") from None
    for name in _TEXTS:
        if value := (params.get(name) or "").strip():
            if len(value) > 200:
                raise _bad(f"{name} is too long.")
            chosen[name] = value
    with reporting("That report cannot be made"):
        if "team_id" in chosen:
            console.caller.require_visible(chosen["team_id"])
        start, end = spend.window(a_day(params.get("start"), "start"), a_day(params.get("end"), "end"))
    if (end - start).days > LONGEST_DAYS:
        raise _bad(f"Choose a window of at most {LONGEST_DAYS} days (the export has no such limit).")
    filters = spend.filters_of(**{**chosen, "team_id": console.caller.within_team or chosen.get("team_id")})
    return Question(group=group, start=start, end=end, filters=filters, cursor=params.get("cursor") or None,
                    chosen={name: str(value) for name, value in chosen.items()})


def columns(question: Question) -> list[tuple[str, str]]:
    """The chart's columns: every day of the window ('1', or 'Mar 1' on the first of a month), or
    every month of a long one."""
    if question.by_day:
        days = [question.start + timedelta(days=n) for n in range((question.end - question.start).days)]
        return [(day.isoformat(), day.strftime("%b %-d") if day.day == 1 or n == 0 else str(day.day))
                for n, day in enumerate(days)]
    months, month = [], question.start.replace(day=1)
    while month < question.end:
        months.append((month.strftime("%Y-%m"), month.strftime("%b %Y")))
        month = (month.replace(day=28) + timedelta(days=4)).replace(day=1)
    return months


def _label(row: Mapping[str, Any], group: str) -> str:
    return str(row.get(NAMES[group]) or row.get(spend.ID_COLUMNS.get(group, group)) or "")


def _period(question: Question) -> str:
    return "day" if question.by_day else "month"


async def _by_period(session: AsyncSession, question: Question, filters: dict[str, Any]) -> dict[str, Decimal]:
    found = await spend.report(session, groups=[_period(question)], start=question.start, end=question.end,
                               filters=filters, sort="group", cursor=None, limit=CELLS)
    return {str(row[_period(question)]): Decimal(row["cost_usd"] or 0) for row in found["items"]}


async def _cells(session: AsyncSession, question: Question, series: dict[Any, str]
                 ) -> tuple[dict[str, Decimal], dict[tuple[str, str], Decimal]]:
    """Each period's total and each series' spend in it. One report by period and group when it has
    at most :data:`CELLS` rows (a month by team, project or model); else one report per series,
    filtered to it, and one of the periods' totals (a month by person, with thousands of people)."""
    period, group = _period(question), question.group
    key_column = spend.ID_COLUMNS.get(group, group)
    totals: dict[str, Decimal] = {}
    values: dict[tuple[str, str], Decimal] = {}
    found = await spend.report(session, groups=[period, group], start=question.start, end=question.end,
                               filters=question.filters, sort="-cost_usd", cursor=None, limit=CELLS)
    if found["next_cursor"] is None:
        for row in found["items"]:
            key, cost = str(row[period]), Decimal(row["cost_usd"] or 0)
            totals[key] = totals.get(key, Decimal(0)) + cost
            if (name := series.get(row[key_column])) is not None:
                values[(key, name)] = cost
        return totals, values
    for ident, name in series.items():
        narrowed = {**question.filters, GROUPINGS[group][1]: ident}
        for key, cost in (await _by_period(session, question, narrowed)).items():
            values[(key, name)] = cost
    return await _by_period(session, question, question.filters), values


async def chart(session: AsyncSession, question: Question, top: list[dict[str, Any]]) -> charts.StackedChart:
    """The stacked chart: the biggest spenders in ``top`` (with a key: spend with no project or no
    person has none, so it is in "everything else") each a series, the rest one grey series."""
    key_column = spend.ID_COLUMNS.get(question.group, question.group)
    series: dict[Any, str] = {}
    for row in [row for row in top if row.get(key_column) is not None][:SERIES]:
        name = _label(row, question.group)
        while name in series.values():  # two projects of the same name, in different teams
            name += " (2)"
        series[row[key_column]] = name
    totals, values = await _cells(session, question, series)
    names, other = list(series.values()), "Everything else"
    for key, total in totals.items():
        rest = total - sum((values.get((key, name), Decimal(0)) for name in names), Decimal(0))
        if rest > 0:
            values[(key, other)] = rest
    shown = [*names, other] if any(name == other for _, name in values) else names
    return charts.stacked(columns(question), shown, values, width=960,
                          colours=charts.fills(len(shown), other=len(shown) > len(names)))


@router.get("/console/spend")
async def spend_page(request: Request, console: SignedConsole) -> HTMLResponse:
    console.require(EVERYONE)
    question = ask(console, request.query_params)
    async with get_sessionmaker()() as session, session.begin():
        with reporting("That report cannot be made"):
            found = await spend.report(session, groups=[question.group], start=question.start, end=question.end,
                                       filters=question.filters, sort="-cost_usd", cursor=question.cursor,
                                       limit=PAGE)
            top = found["items"]
            if question.cursor:
                top = (await spend.report(session, groups=[question.group], start=question.start,
                                          end=question.end, filters=question.filters, sort="-cost_usd", cursor=None,
                                          limit=SERIES + 1))["items"]
            drawn = await chart(session, question, top)
    total = found["total"]
    rows = [{**row, "label": _label(row, question.group),
             "share": (Decimal(row["cost_usd"] or 0) * 100 / total["cost_usd"]).quantize(Decimal("0.1"))
             if total["cost_usd"] else Decimal(0)} for row in found["items"]]
    return page(request, console, "console/spend.html", title="Spend", question=question, rows=rows, total=total,
                next_cursor=found["next_cursor"], chart=drawn, groupings=GROUPINGS,
                providers=[(p, p) for p in priced_providers()], environments=[(e, e) for e in ENVIRONMENTS],
                key_column=spend.ID_COLUMNS.get(question.group, question.group),
                last_day=question.end - timedelta(days=1), plural=PLURALS)


@router.get("/console/spend/export")
async def spend_export(request: Request, console: SignedConsole) -> StreamingResponse:
    """The whole report of the page's filter, as ``/api/v1/spend?format=csv|jsonl&group_by=<group>``
    streams it: the same columns, most expensive first."""
    console.require(EVERYONE)
    fmt = request.query_params.get("format", "csv")
    if fmt not in exports.MEDIA_TYPES:
        raise _bad("Export as csv or jsonl.")
    question = ask(console, request.query_params)
    with reporting("That report cannot be exported"):
        query, params, names = spend.export(groups=[question.group], start=question.start, end=question.end,
                                            filters=question.filters, sort="-cost_usd")
    body = await exports.stream(query, params, names, fmt, settings=spend.SETTINGS)  # type: ignore[arg-type]
    return StreamingResponse(body, media_type=exports.MEDIA_TYPES[fmt],
                             headers={"content-disposition": f'attachment; filename="spend.{fmt}"',
                                      "cache-control": "no-store", "x-content-type-options": "nosniff"})
