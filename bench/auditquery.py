"""Audit queries at scale: millions of synthetic request records, then the auditors' questions, timed.

Generation (SQL only, as the database owner): ``generate_series`` rows spread evenly over ``days``
days starting at :data:`EPOCH` (a quiet past, so the rows sit in months no live ingest touches),
from ``users`` users in ``teams`` teams with ``tokens_per_team`` tokens each, several models, a
realistic mix of decisions, and one outcome per request. Each month is loaded into its own table
*before* it becomes a partition, then attached (``ALTER TABLE … ATTACH PARTITION`` builds the
partition's indexes in one sort each, far faster than maintaining seven indexes row by row), under
the name ``keyward_ensure_audit_partition`` gives the month, so that function treats it as the month's
partition. The synthetic rows bypass the hash chain: their ``seq`` is negative (the live chain's head,
the highest ``seq``, is untouched, so ingest goes on linking correctly) and their hashes are empty.
``keyward audit verify`` therefore fails while they are attached; :func:`drop` detaches and drops
them again. Then ``ANALYZE``.

Queries: each is run through the admin API (what an auditor waits for, JSON decoding included) and
as its SQL (from :mod:`controlplane.audit.queries`) under ``EXPLAIN (ANALYZE, BUFFERS)``.

Spend (:func:`generate_spend`): ``spend_daily``, the rollup ingest adds every costed request to, filled
as ingest would have filled it for the same synthetic requests: the allowed requests of the same
``generate_series`` formula (same users, teams, tokens, models, environments and token counts), grouped
by day and dimension, each team's tokens spread over four projects, priced per model. Its rows are not
partitioned: they are days in :data:`EPOCH`'s months, which :func:`drop_spend` deletes again. Then the
questions finance asks (:func:`spend_questions`), asked the same way.

``.venv/bin/python bench/auditquery.py --rows 3000000`` runs the spend part alone, on a stack of its own
(:func:`main`; ``--with-records`` adds the request records and the auditors' questions, ``--plans``
prints the plans). At these dimensions ``spend_daily`` is full from about 3 million requests on (one row
per day, token and model, and each synthetic person uses three of the six models), so 3 million requests
give the table 10 million do.

Over 450 lines because it generates the synthetic audit and spend data and states every question
with its SQL, side by side, so a question and the data it is asked of are read together.
"""

from __future__ import annotations

import asyncio
import re
import statistics
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import httpx

#: Where the synthetic history starts: far from today, so its months are its own partitions.
EPOCH = datetime(2020, 1, 1, tzinfo=UTC)
MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1", "claude-3-5-sonnet-latest", "claude-3-5-haiku-latest",
          "text-embedding-3-small")
TABLES = ("request_records", "request_outcomes")


@dataclass
class Generated:
    rows: int
    days: int
    users: int
    teams: int
    tokens_per_team: int
    months: list[str]
    seconds: dict[str, float] = field(default_factory=dict)
    sizes: dict[str, str] = field(default_factory=dict)
    probe_user: str = ""


def _months(first: datetime, last: datetime) -> list[date]:
    month = first.date().replace(day=1)
    months = []
    while month <= last.date():
        months.append(month)
        month = (month.replace(day=28) + timedelta(days=4)).replace(day=1)
    return months


def _records_sql(table: str) -> str:
    # $1 rows, $2 days, $3 users, $4 teams, $5 tokens per team, $6 first i, $7 last i, $8 probe user id.
    # Row i happens at EPOCH + i * (days / rows), with up to a second of jitter; user i*7919 mod users
    # (user 0 is the probe user, a real row in ``users``); a user's team is user mod teams; each user
    # uses two of the team's tokens. 2% of requests were answered by Envoy alone (no identity).
    return f"""
    INSERT INTO {table} (seq, at, request_id, source, token_id, user_id, user_email, team, environment,
                         provider, method, route, model, decision, status, prev_hash, hash, stored_at)
    SELECT -$1::bigint + i - 1, at, md5('req' || i)::uuid::text,
           CASE WHEN envoy THEN 'envoy' ELSE 'authz' END,
           CASE WHEN envoy THEN NULL ELSE md5('token' || (u % $4) || '-' || ((u / $4) * 2 + i % 2) % $5)::uuid END,
           CASE WHEN envoy THEN NULL WHEN u = 0 THEN $8::uuid ELSE md5('user' || u)::uuid END,
           CASE WHEN envoy THEN NULL ELSE 'user' || u || '@example.com' END,
           CASE WHEN envoy THEN NULL ELSE 'team-' || lpad((u % $4)::text, 2, '0') END,
           CASE WHEN envoy THEN NULL ELSE (ARRAY['dev', 'staging', 'prod', 'ci'])[(1 + u % 4)::int] END,
           CASE WHEN envoy THEN NULL WHEN m >= 4 THEN 'anthropic' ELSE 'openai' END,
           'POST',
           CASE WHEN m >= 4 THEN '/anthropic/v1/messages' ELSE '/openai/v1/chat/completions' END,
           CASE WHEN envoy THEN NULL ELSE (ARRAY{list(MODELS)!r})[m::int] END,
           CASE WHEN envoy THEN 'envoy:request_payload_too_large'
                WHEN d < 93 THEN 'allowed' WHEN d < 96 THEN 'model_not_allowed'
                WHEN d < 98 THEN 'token_revoked' WHEN d < 99 THEN 'token_unknown' ELSE 'token_expired' END,
           CASE WHEN envoy THEN 413 WHEN d < 93 THEN NULL WHEN d < 96 THEN 403 ELSE 401 END,
           '\\x'::bytea, '\\x'::bytea, at + interval '2 seconds'
    FROM (
        SELECT i, (i * 7919) % $3 AS u, 1 + (i * 31 + i / 7) % {len(MODELS)} AS m, (i * 37 + i / 11) % 100 AS d,
               i % 50 = 49 AS envoy,
               timestamptz '{EPOCH.isoformat()}' + make_interval(secs => i * ($2::float8 * 86400 / $1)
                                                                 + ((i * 0.618) % 1)::float8) AS at
        FROM generate_series($6::bigint, $7::bigint) AS i
    ) AS g
    """  # noqa: S608 - fixed table names


def _outcomes_sql(table: str) -> str:
    return f"""
    INSERT INTO {table} (seq, at, request_id, status, upstream_status, response_flags, details, duration_ms,
                         upstream_ms, bytes_in, bytes_out, prompt_tokens, completion_tokens, prev_hash, hash,
                         stored_at)
    SELECT -$1::bigint + i - 1, at + interval '1 millisecond', md5('req' || i)::uuid::text,
           CASE WHEN envoy THEN 413 WHEN d < 93 THEN 200 WHEN d < 96 THEN 403 ELSE 401 END,
           CASE WHEN d < 93 AND NOT envoy THEN 200 END,
           CASE WHEN d >= 93 AND NOT envoy THEN 'UAEX' END,
           CASE WHEN envoy THEN 'request_payload_too_large' WHEN d < 93 THEN 'via_upstream'
                ELSE 'ext_authz_denied' END,
           CASE WHEN d < 93 AND NOT envoy THEN 200 + (i * 13) % 9000 ELSE 1 END,
           CASE WHEN d < 93 AND NOT envoy THEN 150 + (i * 13) % 8900 END,
           200 + (i * 17) % 8000, CASE WHEN d < 93 AND NOT envoy THEN 300 + (i * 19) % 20000 ELSE 180 END,
           CASE WHEN d < 93 AND NOT envoy THEN 10 + (i * 23) % 3000 END,
           CASE WHEN d < 93 AND NOT envoy THEN 1 + (i * 29) % 800 END,
           '\\x'::bytea, '\\x'::bytea, at + interval '3 seconds'
    FROM (
        SELECT i, (i * 37 + i / 11) % 100 AS d, i % 50 = 49 AS envoy,
               timestamptz '{EPOCH.isoformat()}' + make_interval(secs => i * ($2::float8 * 86400 / $1)
                                                                 + ((i * 0.618) % 1)::float8) AS at
        FROM generate_series($3::bigint, $4::bigint) AS i
    ) AS g
    """  # noqa: S608 - fixed table names


def _index_of(moment: datetime, rows: int, days: int) -> int:
    """The first row i whose (jitter-free) time is at or after ``moment``."""
    return max(0, min(rows, int((moment - EPOCH).total_seconds() / (days * 86400 / rows))))


def _bounds(month: date) -> tuple[datetime, datetime]:
    following = (month.replace(day=28) + timedelta(days=4)).replace(day=1)
    return (datetime(month.year, month.month, 1, tzinfo=UTC),
            datetime(following.year, following.month, 1, tzinfo=UTC))


async def _load(owner_dsn: str, parent: str, months: list[date], rows: int, days: int, users: int, teams: int,
                tokens_per_team: int, probe_user: str, log: Any) -> tuple[float, float]:
    """One table's months: load each into a table of its own, then attach it (building its indexes)."""
    connection = await asyncpg.connect(owner_dsn, timeout=30, command_timeout=3600)
    try:
        await connection.execute("SET maintenance_work_mem = '512MB'; SET synchronous_commit = off")
        started = time.perf_counter()
        delay = "2 seconds" if parent == "request_records" else "3 seconds"
        for month in months:
            first, following = _bounds(month)
            name = f"{parent}_{month:%Y_%m}"
            if await connection.fetchval("SELECT to_regclass($1)", name) is not None:
                raise RuntimeError(f"{name} exists already: the synthetic months must be empty")
            await connection.execute(f"CREATE TABLE {name} (LIKE {parent} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
            # The rows whose stored_at (= at + a few seconds) falls in the month, with a margin for jitter.
            low = max(1, _index_of(first, rows, days) - 20)
            high = min(rows, _index_of(following, rows, days) + 20)
            where = f" WHERE at + interval '{delay}' >= ${{}} AND at + interval '{delay}' < ${{}}"
            if parent == "request_records":
                await connection.execute(_records_sql(name) + where.format(9, 10), rows, days, users, teams,
                                         tokens_per_team, low, high, probe_user, first, following)
            else:
                await connection.execute(_outcomes_sql(name) + where.format(5, 6), rows, days, low, high, first,
                                         following)
            log(f"  {name}: loaded ({time.perf_counter() - started:.0f} s)")
        loaded = time.perf_counter() - started
        for month in months:
            first, following = _bounds(month)
            # ATTACH builds every index the parent has, each in one sort.
            await connection.execute(f"ALTER TABLE {parent} ATTACH PARTITION {parent}_{month:%Y_%m}"
                                     f" FOR VALUES FROM ('{first.date()}') TO ('{following.date()}')")
            log(f"  {parent}_{month:%Y_%m}: attached, indexes built ({time.perf_counter() - started:.0f} s)")
        return loaded, time.perf_counter() - started - loaded
    finally:
        await connection.close()


async def generate(owner_dsn: str, probe_user: str, *, rows: int, days: int = 60, users: int = 2000,
                   teams: int = 50, tokens_per_team: int = 100, log: Any = print) -> Generated:
    """Load ``rows`` synthetic requests (and their outcomes) into partitions of their own; ANALYZE.
    The two tables load side by side, one connection (one core) each."""
    months = _months(EPOCH, EPOCH + timedelta(days=days, seconds=10))
    result = Generated(rows, days, users, teams, tokens_per_team, [m.strftime("%Y_%m") for m in months],
                       probe_user=probe_user)
    timings = await asyncio.gather(*(_load(owner_dsn, parent, months, rows, days, users, teams, tokens_per_team,
                                           probe_user, log) for parent in TABLES))
    result.seconds["load"] = max(t[0] for t in timings)
    result.seconds["attach + indexes"] = max(t[1] for t in timings)
    connection = await asyncpg.connect(owner_dsn, timeout=30, command_timeout=3600)
    try:
        for month in months:
            # A no-op now: the proof that each partition has the name the function gives the month.
            await connection.execute("SELECT keyward_ensure_audit_partition($1)", month)
        started = time.perf_counter()
        await connection.execute("ANALYZE request_records; ANALYZE request_outcomes")
        result.seconds["analyze"] = time.perf_counter() - started
        for parent in TABLES:
            result.sizes[parent] = await connection.fetchval(
                "SELECT pg_size_pretty(sum(pg_total_relation_size(c.oid))) FROM pg_class c"
                " WHERE c.relname = ANY($1::text[])", [f"{parent}_{m:%Y_%m}" for m in months])
    finally:
        await connection.close()
    return result


async def drop(owner_dsn: str, generated: Generated) -> None:
    """Detach and drop the synthetic partitions: the store is the live chain alone again."""
    connection = await asyncpg.connect(owner_dsn, timeout=30, command_timeout=600)
    try:
        for suffix in generated.months:
            for parent in TABLES:
                await connection.execute(f"ALTER TABLE {parent} DETACH PARTITION {parent}_{suffix}")
                await connection.execute(f"DROP TABLE {parent}_{suffix}")
    finally:
        await connection.close()


# -- the questions ----------------------------------------------------------------------------------


@dataclass
class Question:
    key: str
    title: str
    method: str
    path: str
    params: dict[str, Any]
    #: (label, SQL with :named parameters, parameters) run under EXPLAIN (ANALYZE, BUFFERS).
    sql: list[tuple[str, str, dict[str, Any]]]
    #: PostgreSQL settings the API's transaction runs the SQL with (set for the SQL alone too).
    settings: dict[str, str] = field(default_factory=dict)
    api_ms: list[float] = field(default_factory=list)
    sql_ms: dict[str, list[float]] = field(default_factory=dict)
    plans: dict[str, str] = field(default_factory=dict)
    answer: str = ""

    @property
    def p50(self) -> float:
        return statistics.median(self.api_ms)

    @property
    def worst(self) -> float:
        return max(self.api_ms)


# -- spend ------------------------------------------------------------------------------------------

#: USD per million tokens (input, cached input, output) of each of :data:`MODELS`, in order.
PRICES = ((0.15, 0.075, 0.60), (2.50, 1.25, 10.00), (2.00, 0.50, 8.00), (3.00, 0.30, 15.00), (0.80, 0.08, 4.00),
          (0.02, 0.02, 0.00))
PROJECTS_PER_TEAM = 4
#: Days of spend one INSERT … SELECT aggregates.
SPEND_CHUNK_DAYS = 5


@dataclass
class SpendGenerated:
    rows: int
    first_day: date
    last_day: date
    seconds: dict[str, float] = field(default_factory=dict)
    size: str = ""


def _team_id(team: int) -> str:
    """The id the synthetic spend gives team ``team`` (whose records say ``team-NN``)."""
    import hashlib
    import uuid

    return str(uuid.UUID(hashlib.md5(f"team-{team:02d}".encode(), usedforsecurity=False).hexdigest()))


def _spend_sql() -> str:
    # $1 rows, $2 days, $3 users, $4 teams, $5 tokens per team, $6 first i, $7 last i, $8 probe user,
    # $9 first instant, $10 instant after. The dimensions are the records' (see _records_sql), the token
    # counts the outcomes' (see _outcomes_sql); only allowed requests reach a provider and cost anything.
    column = ", ".join
    prices = [column(f"{p[k]}" for p in PRICES) for k in range(3)]
    return f"""
    INSERT INTO spend_daily (day, provider, model, environment, team_id, project_id, user_id, service_account_id,
                             token_id, requests, input_tokens, cached_tokens, output_tokens, cost_usd,
                             estimated_requests)
    SELECT (at AT TIME ZONE 'UTC')::date, CASE WHEN m >= 4 THEN 'anthropic' ELSE 'openai' END,
           (ARRAY{list(MODELS)!r})[m::int], (ARRAY['dev', 'staging', 'prod', 'ci'])[(1 + u % 4)::int],
           md5('team-' || lpad((u % $4)::text, 2, '0'))::uuid,
           md5('project-' || (u % $4) || '-' || tok % {PROJECTS_PER_TEAM})::uuid,
           CASE WHEN u = 0 THEN $8::uuid ELSE md5('user' || u)::uuid END, NULL,
           md5('token' || (u % $4) || '-' || tok)::uuid,
           count(*), sum(p), sum(c), sum(o),
           sum(((p - c) * (ARRAY[{prices[0]}])[m::int] + c * (ARRAY[{prices[1]}])[m::int]
                + o * (ARRAY[{prices[2]}])[m::int]) / 1000000.0)::numeric(20, 10),
           count(*) FILTER (WHERE i % 200 = 3)
    FROM (
        SELECT i, u, m, ((u / $4) * 2 + i % 2) % $5 AS tok, 10 + (i * 23) % 3000 AS p,
               CASE WHEN i % 3 = 0 THEN (10 + (i * 23) % 3000) / 4 ELSE 0 END AS c, 1 + (i * 29) % 800 AS o, at
        FROM (
            SELECT i, (i * 7919) % $3 AS u, 1 + (i * 31 + i / 7) % {len(MODELS)} AS m,
                   (i * 37 + i / 11) % 100 AS d, i % 50 = 49 AS envoy,
                   timestamptz '{EPOCH.isoformat()}' + make_interval(secs => i * ($2::float8 * 86400 / $1)
                                                                     + ((i * 0.618) % 1)::float8) AS at
            FROM generate_series($6::bigint, $7::bigint) AS i
        ) AS g
        WHERE d < 93 AND NOT envoy AND at >= $9 AND at < $10
    ) AS allowed
    GROUP BY 1, 2, 3, 4, 5, 6, 7, 9
    """  # noqa: S608 - fixed SQL


async def _load_spend(owner_dsn: str, generated: Generated, chunks: list[tuple[datetime, datetime]],
                      log: Any) -> None:
    connection = await asyncpg.connect(owner_dsn, timeout=30, command_timeout=3600)
    try:
        await connection.execute("SET work_mem = '256MB'; SET synchronous_commit = off")
        for first, following in chunks:
            low = max(1, _index_of(first, generated.rows, generated.days) - 20)
            high = min(generated.rows, _index_of(following, generated.rows, generated.days) + 20)
            await connection.execute(_spend_sql(), generated.rows, generated.days, generated.users, generated.teams,
                                     generated.tokens_per_team, low, high, generated.probe_user, first, following)
            log(f"  spend_daily: {first:%Y-%m-%d} to {following:%Y-%m-%d} loaded")
    finally:
        await connection.close()


async def generate_spend(owner_dsn: str, generated: Generated, *, log: Any = print) -> SpendGenerated:
    """Fill ``spend_daily`` as ingest would have for ``generated``'s requests (which need not be loaded):
    chunks of days on two connections side by side; ANALYZE."""
    first_day, last_day = EPOCH.date(), (EPOCH + timedelta(days=generated.days, seconds=10)).date()
    connection = await asyncpg.connect(owner_dsn, timeout=30, command_timeout=600)
    try:
        if await connection.fetchval("SELECT count(*) FROM spend_daily WHERE day BETWEEN $1 AND $2", first_day,
                                     last_day):
            raise RuntimeError("spend_daily has rows in the synthetic days already")
    finally:
        await connection.close()
    chunks = []
    day = EPOCH
    while day.date() <= last_day:
        chunks.append((day, day + timedelta(days=SPEND_CHUNK_DAYS)))
        day += timedelta(days=SPEND_CHUNK_DAYS)
    started = time.perf_counter()
    await asyncio.gather(*(_load_spend(owner_dsn, generated, chunks[k::2], log) for k in range(2)))
    result = SpendGenerated(0, first_day, last_day)
    result.seconds["load"] = time.perf_counter() - started
    connection = await asyncpg.connect(owner_dsn, timeout=30, command_timeout=3600)
    try:
        started = time.perf_counter()
        await connection.execute("ANALYZE spend_daily")
        result.seconds["analyze"] = time.perf_counter() - started
        result.rows = await connection.fetchval("SELECT count(*) FROM spend_daily WHERE day BETWEEN $1 AND $2",
                                                first_day, last_day)
        result.size = await connection.fetchval("SELECT pg_size_pretty(pg_total_relation_size('spend_daily'))")
    finally:
        await connection.close()
    return result


async def drop_spend(owner_dsn: str, spend: SpendGenerated) -> None:
    """Delete the synthetic days of ``spend_daily`` again."""
    connection = await asyncpg.connect(owner_dsn, timeout=30, command_timeout=600)
    try:
        await connection.execute("DELETE FROM spend_daily WHERE day BETWEEN $1 AND $2", spend.first_day,
                                 spend.last_day)
        await connection.execute("VACUUM ANALYZE spend_daily")
    finally:
        await connection.close()


def spend_questions(generated: Generated) -> list[Question]:
    """The questions finance asks, over the synthetic history's one whole calendar month (February 2020)."""
    from controlplane.services.spend import SETTINGS, Report

    start, end = date(2020, 2, 1), date(2020, 3, 1)
    team = _team_id(7)
    window = {"start": start.isoformat(), "end": end.isoformat()}

    def sql(label: str, groups: list[str], *, export: bool = False, **filters: Any) -> tuple[str, str, dict]:
        report = Report(groups=groups, start=start, end=end, filters=filters)
        return (label, *(report.export_sql() if export else report.page_sql(limit=101, offset=0)))

    items = [
        Question("spend-team-month", "Spend by team, one month, every team (a page, with the total)", "GET", "/spend",
                 {"group_by": "team", **window}, [sql("page", ["team"])]),
        Question("spend-user-model", "Spend by user and model, one month, every team (first page, with the total)",
                 "GET", "/spend", {"group_by": "user,model", **window}, [sql("page", ["user", "model"])]),
        Question("spend-team-days", "One team's spend by day, one month", "GET", "/spend",
                 {"group_by": "day", "team_id": team, **window}, [sql("page", ["day"], team_id=team)]),
        Question("spend-user-days", "One user's spend by day and model, one month", "GET", "/spend",
                 {"group_by": "day,model", "user_id": generated.probe_user, **window},
                 [sql("page", ["day", "model"], user_id=generated.probe_user)]),
        Question("spend-token-csv", "CSV export of spend by token and model, one month (every group, streamed)",
                 "GET", "/spend", {"group_by": "token,model", "format": "csv", **window},
                 [sql("export", ["token", "model"], export=True)]),
    ]
    for question in items:
        question.settings = dict(SETTINGS)
    return items


def questions(generated: Generated) -> list[Question]:
    """The auditors' questions, pointed at the synthetic history."""
    from controlplane.audit.queries import USER_ACTIVITY, RequestFilter

    day = EPOCH + timedelta(days=37)  # a day well inside the history
    minute = day.replace(hour=4, minute=13)
    team = "team-07"
    window = (day, day + timedelta(days=7))
    user = generated.probe_user
    since = EPOCH + timedelta(days=generated.days // 2)

    def page(**filters: Any) -> tuple[str, dict[str, Any]]:
        return RequestFilter(**filters).sql(limit=101)

    q1 = page(start=minute, end=minute + timedelta(minutes=1))
    q3 = page(start=window[0], end=window[1], team=team, model="gpt-4o", status=200, decision="allowed")
    q4 = RequestFilter(start=day, end=day + timedelta(days=1), team=team).sql(limit=None)
    activity = [(name, USER_ACTIVITY[name], {"user_id": user}) for name in ("last_request", "last_allowed")]
    activity.append(("count_allowed_after", USER_ACTIVITY["count_allowed_after"], {"user_id": user, "since": since}))
    return [
        Question("at-0413", f"Who made the requests at {minute:%Y-%m-%d %H:%M} UTC (one minute, every team)",
                 "GET", "/audit/requests", {"start": minute.isoformat(), "end": (minute + timedelta(minutes=1))
                                             .isoformat(), "limit": 100}, [("page", *q1)]),
        Question("user-activity", "A user's last request, last allowed request, and allowed requests after a time",
                 "GET", f"/audit/users/{user}/activity", {}, activity),
        Question("team-window", f"Every request of {team} in 7 days, model gpt-4o, status 200, allowed (first page)",
                 "GET", "/audit/requests", {"start": window[0].isoformat(), "end": window[1].isoformat(),
                                            "team": team, "model": "gpt-4o", "status": 200, "decision": "allowed",
                                            "limit": 100}, [("page", *q3)]),
        Question("team-day-csv", f"CSV export of one day of {team} (streamed, every row)",
                 "GET", "/audit/requests", {"start": day.isoformat(), "end": (day + timedelta(days=1)).isoformat(),
                                            "team": team, "format": "csv"}, [("export", *q4)]),
    ]


_NAMED = re.compile(r"(?<!:):([a-z_]+)\b")


def positional(sql: str, params: dict[str, Any]) -> tuple[str, list[Any]]:
    """SQLAlchemy ``:name`` parameters to asyncpg's ``$n``."""
    order: list[str] = []

    def number(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in order:
            order.append(name)
        return f"${order.index(name) + 1}"

    return _NAMED.sub(number, sql), [params[name] for name in order]


def _describe(reply: httpx.Response, question: Question) -> str:
    if question.params.get("format") == "csv":
        return f"{max(0, reply.text.count(chr(10)) - 1):,} CSV rows, {len(reply.content) / 1024:,.0f} KiB"
    body = reply.json()
    if "total" in body:  # a spend report
        more = " (more pages)" if body.get("next_cursor") else ""
        return (f"{len(body['items'])} rows{more} of {body['total']['groups']:,} groups, "
                f"${float(body['total']['cost_usd']):,.2f} in total")
    if "items" in body:
        more = " (more pages)" if body.get("next_cursor") else ""
        return f"{len(body['items'])} rows{more}"
    last = (body.get("last_request") or {}).get("at")
    return f"last request {last}; allowed after disabled: {body.get('allowed_after_disabled')}"


async def _explain(owner_dsn: str, items: list[Question], repeats: int) -> None:
    connection = await asyncpg.connect(owner_dsn, timeout=30, command_timeout=600)
    try:
        for question in items:
            await connection.execute("RESET ALL")
            for name, value in question.settings.items():
                await connection.execute("SELECT set_config($1, $2, false)", name, value)
            for label, sql, params in question.sql:
                query, args = positional(sql, params)
                timings = []
                for _ in range(repeats):
                    started = time.perf_counter()
                    await connection.fetch(query, *args)
                    timings.append((time.perf_counter() - started) * 1000)
                question.sql_ms[label] = timings
                plan = await connection.fetch("EXPLAIN (ANALYZE, BUFFERS) " + query, *args)
                question.plans[label] = "\n".join(r[0] for r in plan)
    finally:
        await connection.close()


def ask(api: httpx.Client, owner_dsn: str, generated: Generated, repeats: int = 5,
        items: list[Question] | None = None) -> list[Question]:
    """Each question (by default the auditors') ``repeats`` times through the API, then its SQL
    ``repeats`` times and explained."""
    items = questions(generated) if items is None else items
    for question in items:
        for _ in range(repeats):
            started = time.perf_counter()
            reply = api.request(question.method, question.path, params=question.params)
            question.api_ms.append((time.perf_counter() - started) * 1000)
            if reply.status_code != 200:
                raise RuntimeError(f"{question.key}: {reply.status_code} {reply.text[:300]}")
            question.answer = _describe(reply, question)
    asyncio.run(_explain(owner_dsn, items, repeats))
    return items


def main() -> None:
    """The spend questions alone (and with ``--with-records`` the auditors' too) on a stack of this
    run's own in a temporary directory: for developing them without ``make bench``."""
    import argparse
    import shutil
    import socket
    import tempfile
    import warnings
    from pathlib import Path

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000, help="synthetic requests (default 1,000,000)")
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--with-records", action="store_true", help="load the request records too, and ask the "
                                                                     "auditors' questions")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--plans", action="store_true", help="print each query's EXPLAIN (ANALYZE, BUFFERS)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    from controlplane.stack.runner import Stack, StackSettings

    def port() -> int:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            return int(probe.getsockname()[1])

    work = Path(tempfile.mkdtemp(prefix="keyward-spendbench-"))
    stack = Stack(settings=StackSettings(data_dir=work / "stack", gateway_port=port(), api_port=port(),
                                         mock_port=port(), admin_token=None, database_url=None,
                                         openai_api_key=None, anthropic_api_key=None, envoy_concurrency=1),
                  report=lambda _message: None)
    try:
        info = stack.start(timeout=120)
        with httpx.Client(base_url=f"{info.api_url}/api/v1", timeout=300,
                          headers={"Authorization": f"Bearer {info.admin_token}"}) as api:
            probe = api.post("/users", json={"email": "spend-probe@example.com"}).json()
            if args.with_records:
                generated = asyncio.run(generate(info.owner_database_url, probe["id"], rows=args.rows,
                                                 days=args.days))
            else:
                months = _months(EPOCH, EPOCH + timedelta(days=args.days, seconds=10))
                generated = Generated(args.rows, args.days, 2000, 50, 100, [m.strftime("%Y_%m") for m in months],
                                      probe_user=probe["id"])
            spend = asyncio.run(generate_spend(info.owner_database_url, generated))
            print(f"spend_daily: {spend.rows:,} rows for {args.rows:,} requests, "
                  + ", ".join(f"{k} {v:.1f} s" for k, v in spend.seconds.items()) + f"; table {spend.size}")
            try:
                items = spend_questions(generated) + (questions(generated) if args.with_records else [])
                for q in ask(api, info.owner_database_url, generated, args.repeats, items=items):
                    sql = "; ".join(f"{label} p50 {statistics.median(ms):,.1f} ms" for label, ms in q.sql_ms.items())
                    print(f"{q.key}: API p50 {q.p50:,.0f} ms, max {q.worst:,.0f} ms; SQL {sql} ({q.answer})")
                    for plan in q.plans.values() if args.plans else ():
                        print(plan)
            finally:
                asyncio.run(drop_spend(info.owner_database_url, spend))
                if args.with_records:
                    asyncio.run(drop(info.owner_database_url, generated))
    finally:
        stack.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
