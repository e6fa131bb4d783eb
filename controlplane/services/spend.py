"""What was spent, by whom, on what: reports over ``spend_daily``, the audit store's costs rolled up per
day at ingest (one row per day, provider, model, environment, team, project, user, service account and
token).

A report groups by any combination of :data:`GROUPS` over a window of whole days (UTC; the end is
exclusive; by default the current calendar month), filtered by any dimension, and names what the ids
are (team and project names, user emails, service-account and token names). Reading the rollup, not
the request records, is what keeps a month's report under a second at tens of millions of requests: a
month of spend is at most one row per day and token and model, however many requests there were.

A report is computed whole and then sorted, so a page is an offset into it (the cursor carries the
offset); the window-function totals come with the same scan. Spend goes on being added while pages
are read, so a report read page by page may shift; an export (CSV or JSON lines) is one consistent
snapshot.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.errors import Code, Invalid
from controlplane.services.rows import offset_cursor, offset_of


@dataclass(frozen=True)
class Group:
    """One thing to group by: the column of ``spend_daily`` (``s``) it is, and what names it."""

    key: str
    expression: str
    #: (the name's column, its SQL, the join that finds it) for an id.
    name: tuple[str, str, str] | None = None


GROUPS: dict[str, Group] = {group.key: group for group in (
    Group("user", "s.user_id", ("user_email", "u.email", "LEFT JOIN users u ON u.id = p.user_id")),
    Group("service_account", "s.service_account_id",
          ("service_account_name", "a.name", "LEFT JOIN service_accounts a ON a.id = p.service_account_id")),
    Group("team", "s.team_id", ("team_name", "t.name", "LEFT JOIN teams t ON t.id = p.team_id")),
    Group("project", "s.project_id", ("project_name", "j.name", "LEFT JOIN projects j ON j.id = p.project_id")),
    Group("token", "s.token_id", ("token_name", "k.name", "LEFT JOIN tokens k ON k.id = p.token_id")),
    Group("model", "s.model"),
    Group("provider", "s.provider"),
    Group("environment", "s.environment"),
    Group("day", "s.day"),
    Group("month", "to_char(s.day, 'YYYY-MM')"),
)}
#: The id column each id group is reported as (the others keep their own name).
ID_COLUMNS = {"user": "user_id", "service_account": "service_account_id", "team": "team_id",
              "project": "project_id", "token": "token_id"}
MEASURES = ("requests", "input_tokens", "cached_tokens", "output_tokens", "cost_usd", "estimated_requests")
#: Filters: the query parameter and the column of ``spend_daily`` it matches exactly.
FILTERS = ("team_id", "project_id", "user_id", "service_account_id", "token_id", "model", "provider", "environment")
SORTS = {"-cost_usd": "p.cost_usd DESC", "cost_usd": "p.cost_usd", "-requests": "p.requests DESC",
         "requests": "p.requests", "group": None}
_CURSOR_ID = "spend"
#: PostgreSQL settings of a report's transaction. A month's report by token and model hashes tens of
#: thousands of groups of six sums each: with the default 4 MB of work_mem the aggregate spills to disk
#: and takes about twice as long (bench/auditquery.py).
SETTINGS = {"work_mem": "64MB"}


def parse_groups(group_by: str) -> list[str]:
    """``team,model`` → ``["team", "model"]`` (each once, in the order given); the route's pattern has
    already refused anything else."""
    return list(dict.fromkeys(part.strip() for part in group_by.split(",") if part.strip()))


def _month_start(day: date) -> date:
    return day.replace(day=1)


def _next_month(day: date) -> date:
    return (day.replace(day=28) + timedelta(days=4)).replace(day=1)


def window(start: date | None, end: date | None, *, today: date | None = None) -> tuple[date, date]:
    """The days a report covers, ``[start, end)``: by default the calendar month of today (UTC); with
    only an end, the calendar month of the day before it; with only a start, up to the end of this month."""
    today = today or datetime.now(UTC).date()
    try:
        if end is None:
            end = _next_month(today)
        if start is None:
            start = _month_start(end - timedelta(days=1))
    except (OverflowError, ValueError):  # the first or last representable days
        start = start or date.min
        end = end or date.max
    if start >= end:
        raise Invalid(Code.WINDOW_EMPTY, "start must be before end (end is exclusive).")
    return start, end


@dataclass
class Report:
    """One report's question: what to group by, over which days, for whom."""

    groups: list[str]
    start: date
    end: date
    filters: dict[str, Any]
    sort: str = "-cost_usd"

    def _aggregate(self) -> tuple[str, dict[str, Any]]:
        clauses = ["s.day >= :start", "s.day < :end"]
        params: dict[str, Any] = {"start": self.start, "end": self.end}
        for name in FILTERS:
            value = self.filters.get(name)
            if value is not None:
                clauses.append(f"s.{name} = :{name}")
                params[name] = value
        keys = [f"{GROUPS[g].expression} AS {ID_COLUMNS.get(g, g)}" for g in self.groups]
        sums = [f"sum(s.{m})::bigint AS {m}" if m != "cost_usd" else "sum(s.cost_usd) AS cost_usd" for m in MEASURES]
        group_by = f" GROUP BY {', '.join(str(i + 1) for i in range(len(keys)))}" if keys else ""
        query = (f"SELECT {', '.join([*keys, *sums])} FROM spend_daily s WHERE {' AND '.join(clauses)}"  # noqa: S608
                 + group_by)
        return query, params

    @property
    def key_columns(self) -> list[str]:
        return [ID_COLUMNS.get(g, g) for g in self.groups]

    @property
    def columns(self) -> list[str]:
        """The report's columns: each group's key (and, for an id, its name), then the measures."""
        columns: list[str] = []
        for g in self.groups:
            columns.append(ID_COLUMNS.get(g, g))
            name = GROUPS[g].name
            if name:
                columns.append(name[0])
        return [*columns, *MEASURES]

    def _order(self) -> str:
        keys = [f"p.{column} NULLS LAST" for column in self.key_columns]
        first = SORTS[self.sort]
        return ", ".join([first, *keys] if first else keys) or "p.cost_usd DESC"

    def _named(self, inner: str, *, casts: bool) -> str:
        """``inner`` (as ``p``) with the name of every id, in report order. ``casts``: dates and money as
        text, for an export (JSON lines has no decimal or date type)."""
        selected, joins = [], []
        for g in self.groups:
            column = ID_COLUMNS.get(g, g)
            selected.append(f"p.{column}::text AS {column}" if casts and g == "day" else f"p.{column}")
            name = GROUPS[g].name
            if name:
                selected.append(f"{name[1]} AS {name[0]}")
                joins.append(name[2])
        selected += [f"p.{m}::text AS {m}" if casts and m == "cost_usd" else f"p.{m}" for m in MEASURES]
        extra = [] if casts else ["p.total_groups", *(f"p.total_{m}" for m in MEASURES)]
        return (f"SELECT {', '.join([*selected, *extra])} FROM ({inner}) p {' '.join(joins)}"  # noqa: S608
                f" ORDER BY {self._order()}")

    def page_sql(self, *, limit: int, offset: int) -> tuple[str, dict[str, Any]]:
        """One page, with the totals of the whole report on every row (window functions over the groups,
        computed in the same scan); names are looked up for the page's rows only."""
        aggregate, params = self._aggregate()
        totals = ", ".join(["count(*) OVER () AS total_groups",
                            *(f"sum(p.{m}) OVER () AS total_{m}" for m in MEASURES)])
        inner = (f"SELECT p.*, {totals} FROM ({aggregate}) p ORDER BY {self._order()}"  # noqa: S608
                 " LIMIT :limit OFFSET :offset")
        return self._named(inner, casts=False), params | {"limit": limit, "offset": offset}

    def totals_sql(self) -> tuple[str, dict[str, Any]]:
        aggregate, params = self._aggregate()
        sums = ", ".join(["count(*) AS total_groups", *(f"COALESCE(sum(p.{m}), 0) AS total_{m}" for m in MEASURES)])
        return f"SELECT {sums} FROM ({aggregate}) p", params  # noqa: S608

    def export_sql(self) -> tuple[str, dict[str, Any]]:
        """Every group, named and sorted, for a streamed export."""
        aggregate, params = self._aggregate()
        return self._named(aggregate, casts=True), params


def _total(row: Any) -> dict[str, Any]:
    """The ``total_*`` columns as the report's total (window sums are numeric: counts become ints)."""
    total: dict[str, Any] = {m: (Decimal if m == "cost_usd" else int)(row[f"total_{m}"] or 0) for m in MEASURES}
    return {**total, "groups": int(row["total_groups"])}


def _offset(cursor: str | None) -> int:
    return offset_of(cursor, _CURSOR_ID)


async def report(session: AsyncSession, *, groups: list[str], start: date | None, end: date | None,
                 filters: dict[str, Any], sort: str, cursor: str | None, limit: int) -> dict[str, Any]:
    """One page of the report, its total over every group and the window it covers."""
    first, last = window(start, end)
    question = Report(groups=groups, start=first, end=last, filters=filters, sort=sort)
    offset = _offset(cursor)
    for name, value in SETTINGS.items():  # for this transaction only
        await session.execute(text("SELECT set_config(:name, :value, true)"), {"name": name, "value": value})
    query, params = question.page_sql(limit=limit + 1, offset=offset)
    rows = (await session.execute(text(query), params)).mappings().all()
    if rows:
        total = _total(rows[0])
    else:
        totals, params = question.totals_sql()
        total = _total((await session.execute(text(totals), params)).mappings().one())
    items = [{column: row[column] for column in question.columns} for row in rows[:limit]]
    return {"start": first, "end": last, "group_by": groups, "items": items, "total": total,
            "next_cursor": offset_cursor(offset + limit, _CURSOR_ID) if len(rows) > limit else None}


def export(*, groups: list[str], start: date | None, end: date | None,
           filters: dict[str, Any], sort: str) -> tuple[str, dict[str, Any], list[str]]:
    """The SQL and columns of a whole report, for :func:`controlplane.audit.exports.stream`."""
    first, last = window(start, end)
    question = Report(groups=groups, start=first, end=last, filters=filters, sort=sort)
    query, params = question.export_sql()
    return query, params, question.columns


def filters_of(**values: uuid.UUID | str | None) -> dict[str, Any]:
    """The report's filters from the query parameters of the same names (unknown names are a bug)."""
    assert set(values) <= set(FILTERS), set(values) - set(FILTERS)
    return {name: value for name, value in values.items() if value is not None}
