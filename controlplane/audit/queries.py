"""Read side of the audit store: the questions auditors ask, as bound-parameter SQL.

Request queries always carry a time window; partitions are by ingest time (``stored_at``), which is
never earlier than the request time, so a lower bound on it prunes older months. Postgres walks the
``(user_id, at)``, ``(team, at)``, ``(token_id, at)`` or ``(at)`` index; outcomes are joined by
request id within a minute of the decision, which the ``request_id`` index answers per partition.

A request's ``decision`` is what the client got: authz's decision, unless Envoy answered without
acting on one (authz too slow or gone: the outcome says ``decided`` false), and then Envoy's own
answer (``envoy:<reason>``). What authz had decided stays visible as ``authz_decision``. So a request
that authz allowed but Envoy never forwarded is never counted as allowed.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.audit import chain
from controlplane.errors import Code, Invalid

REQUEST_COLUMNS = (
    "seq", "at", "request_id", "source", "token_id", "user_id", "user_email", "team", "environment", "provider",
    "method", "route", "model", "decision", "authz_decision", "status", "upstream_status", "response_flags", "details",
    "duration_ms", "upstream_ms", "bytes_in", "bytes_out", "prompt_tokens", "completion_tokens", "sanitized",
    "project_id", "project", "limit_scope", "cached_tokens", "cost_usd", "cost_input_usd", "cost_cached_usd",
    "cost_output_usd", "price_version", "usage_estimated",
)

#: An export of requests that ``keyward audit verify-export`` can check: besides what the client got,
#: each record's own fields as its hash covers them (``record_*``: the decision, status and sanitized
#: flag authz recorded, before the outcome is folded in) and its place in the chain.
REQUEST_CHAIN_COLUMNS = (*REQUEST_COLUMNS, "record_decision", "record_status", "record_sanitized", "prev_hash",
                         "hash")

#: What the client got (see the module docstring), as SQL over ``r`` and its outcome ``o``.
DECISION = """CASE WHEN r.source = 'authz' AND o.decided IS FALSE
     THEN left('envoy:' || COALESCE(o.details, o.response_flags, 'unknown'), 64) ELSE r.decision END"""

_OUTCOME = """
LEFT JOIN LATERAL (
    SELECT * FROM request_outcomes o
    WHERE o.request_id = r.request_id
      AND o.at BETWEEN r.at - interval '1 minute' AND r.at + interval '1 minute'
      -- an outcome is stored after it happened: this bound lets Postgres skip older partitions
      AND o.stored_at >= r.at - interval '1 day'
    ORDER BY o.seq LIMIT 1
) o ON true
"""

_SELECT_REQUESTS = f"""
SELECT r.seq, r.at, r.request_id, r.source, r.token_id, r.user_id, r.user_email, r.team, r.environment,
       r.provider, r.method, r.route, r.model, {DECISION} AS decision,
       CASE WHEN r.source = 'authz' THEN r.decision END AS authz_decision, COALESCE(o.status, r.status) AS status,
       o.upstream_status, o.response_flags, o.details, o.duration_ms, o.upstream_ms, o.bytes_in, o.bytes_out,
       o.prompt_tokens, o.completion_tokens, COALESCE(r.sanitized OR o.sanitized, r.sanitized, o.sanitized, false)
       AS sanitized, r.project_id, r.project, r.limit_scope, o.cached_tokens, o.cost_usd, o.cost_input_usd,
       o.cost_cached_usd, o.cost_output_usd, o.price_version, COALESCE(o.usage_estimated, false) AS usage_estimated
FROM request_records r""" + _OUTCOME  # noqa: S608 - fixed SQL fragments only
_CHAINED = ", r.decision AS record_decision, r.status AS record_status, r.sanitized AS record_sanitized, " \
    "r.prev_hash, r.hash\nFROM request_records r"
_SELECT_REQUESTS_CHAINED = _SELECT_REQUESTS.replace("\nFROM request_records r", _CHAINED, 1)


@dataclass
class RequestFilter:
    start: datetime
    end: datetime
    user_id: uuid.UUID | None = None
    user_email: str | None = None
    team: str | None = None
    token_id: uuid.UUID | None = None
    model: str | None = None
    decision: str | None = None
    status: int | None = None
    provider: str | None = None
    after: tuple[datetime, int] | None = None
    extra: list[str] = field(default_factory=list)
    #: Every decision but this one: ``"allowed"`` keeps each request the client was refused, by authz
    #: or by Envoy (the decision as :data:`DECISION` states it).
    decision_other_than: str | None = None

    def sql(self, *, limit: int | None, chained: bool = False) -> tuple[str, dict[str, Any]]:
        """``chained``: with the columns of :data:`REQUEST_CHAIN_COLUMNS`."""
        # stored_at >= at (less any clock skew between hosts), so this bound prunes older months.
        clauses = ["r.at >= :start", "r.at < :end",
                   "r.stored_at >= CAST(:start AS timestamptz) - interval '1 day'"]
        params: dict[str, Any] = {"start": self.start, "end": self.end}
        for column, value in (("user_id", self.user_id), ("team", self.team), ("token_id", self.token_id),
                              ("model", self.model), ("provider", self.provider)):
            if value is not None:
                clauses.append(f"r.{column} = :{column}")
                params[column] = value
        if self.decision is not None:
            clauses.append(f"{DECISION} = :decision")
            params["decision"] = self.decision
        if self.decision_other_than is not None:
            clauses.append(f"{DECISION} <> :decision_other_than")
            params["decision_other_than"] = self.decision_other_than
        if self.user_email is not None:
            clauses.append("lower(r.user_email) = lower(:user_email)")
            params["user_email"] = self.user_email
        if self.status is not None:
            clauses.append("COALESCE(o.status, r.status) = :status")
            params["status"] = self.status
        if self.after is not None:
            clauses.append("(r.at, r.seq) > (:after_at, :after_seq)")
            params["after_at"], params["after_seq"] = self.after
        query = ((_SELECT_REQUESTS_CHAINED if chained else _SELECT_REQUESTS) + " WHERE " + " AND ".join(clauses)
                 + " ORDER BY r.at, r.seq")
        if limit is not None:
            query += " LIMIT :limit"
            params["limit"] = limit
        return query, params


_ALLOWED = f"r.user_id = :user_id AND r.decision = 'allowed' AND {DECISION} = 'allowed'"
USER_ACTIVITY = {
    "last_request": _SELECT_REQUESTS + " WHERE r.user_id = :user_id ORDER BY r.at DESC, r.seq DESC LIMIT 1",
    "last_allowed": _SELECT_REQUESTS + f" WHERE {_ALLOWED} ORDER BY r.at DESC, r.seq DESC LIMIT 1",
    "allowed_after": _SELECT_REQUESTS + f" WHERE {_ALLOWED} AND r.at > :since ORDER BY r.at, r.seq LIMIT 100",
    "count_allowed_after": "SELECT count(*) FROM request_records r" + _OUTCOME  # noqa: S608 - fixed fragments
    + f" WHERE {_ALLOWED} AND r.at > :since",
    "disabled_event": "SELECT * FROM events WHERE target_type = 'user' AND target_id = :user_id_text"
    " AND action IN ('user.deprovisioned', 'user.suspended', 'scim.deprovision') ORDER BY seq DESC LIMIT 1",
    # When every gateway replica confirmed that disabling: the instant "nothing allowed after" is about.
    "confirmed_event": "SELECT * FROM events WHERE target_type = 'user' AND target_id = :user_id_text"
    " AND action = 'revocation.confirmed' AND seq > :after_seq ORDER BY seq LIMIT 1",
}


def window(start: datetime | None, end: datetime | None, *, default: timedelta) -> tuple[datetime, datetime]:
    """The time window a query covers: ``end`` defaults to now, ``start`` to ``end - default``."""
    end = end or datetime.now(UTC)
    try:
        start = start or end - default
    except OverflowError:  # an end within ``default`` of 0001-01-01
        start = datetime.min.replace(tzinfo=UTC)
    if start.tzinfo is None or end.tzinfo is None:
        raise Invalid(Code.TIMEZONE_REQUIRED, "start and end must carry a timezone (e.g. 2026-11-22T04:13:00Z).")
    if start >= end:
        raise Invalid(Code.WINDOW_EMPTY, "start must be before end.")
    return start, end


async def request_page(session: AsyncSession, filters: RequestFilter, *, cursor: tuple[Any, str] | None,
                       limit: int) -> tuple[list[dict[str, Any]], tuple[datetime, int] | None]:
    """One page of requests in ``(at, seq)`` order, and where the next page starts (None: the last)."""
    if cursor is not None:
        at, seq = cursor
        if not isinstance(at, datetime) or at.tzinfo is None or not seq.isdigit():
            raise Invalid(Code.CURSOR_INVALID, "The cursor is not one this API issued.")
        filters.after = (at, int(seq))
    query, params = filters.sql(limit=limit + 1)
    rows = [dict(row) for row in (await session.execute(text(query), params)).mappings().all()]
    following = (rows[limit - 1]["at"], rows[limit - 1]["seq"]) if len(rows) > limit else None
    return rows[:limit], following


_REFUSED = text("""
SELECT (SELECT count(*) FROM request_records r
        WHERE r.stored_at >= :stored AND r.at >= :since AND r.decision <> 'allowed'
          AND (CAST(:team AS text) IS NULL OR r.team = :team))
     + (SELECT count(DISTINCT r.request_id) FROM request_outcomes o JOIN request_records r
          ON r.request_id = o.request_id AND r.at BETWEEN o.at - interval '1 minute' AND o.at + interval '1 minute'
         AND r.stored_at >= :records_stored
        WHERE o.stored_at >= :stored AND o.at >= :since AND o.decided IS FALSE AND r.source = 'authz'
          AND r.decision = 'allowed' AND (CAST(:team AS text) IS NULL OR r.team = :team))
""")


async def refused_count(session: AsyncSession, *, since: datetime, team: str | None = None) -> int:
    """How many requests since ``since`` got no answer from the provider: what ``decision=denied`` lists
    (:data:`DECISION` is not 'allowed'), counted without joining every record to its outcome. Two parts:
    records whose own decision refused; and authz-allowed records Envoy answered itself (their outcome
    says the decision was not acted on), which are few."""
    # Rows are partitioned by when they were stored, a little after the request: bound both.
    found = await session.execute(_REFUSED, {"since": since, "stored": since - timedelta(hours=1),
                                              "records_stored": since - timedelta(days=1), "team": team})
    return int(found.scalar_one())


async def requests_with_id(session: AsyncSession, request_id: str, *, limit: int = 10) -> list[dict[str, Any]]:
    """The records carrying a request id (normally one), each with its outcome and its chain fields
    (:data:`REQUEST_CHAIN_COLUMNS`), in chain order. The ``request_id`` index answers per partition."""
    query = _SELECT_REQUESTS_CHAINED + " WHERE r.request_id = :request_id ORDER BY r.seq LIMIT :limit"
    rows = (await session.execute(text(query), {"request_id": request_id, "limit": limit})).mappings().all()
    return [dict(row) for row in rows]


async def event_at(session: AsyncSession, seq: int) -> dict[str, Any] | None:
    """The event at ``seq`` in its chain, with its chain fields."""
    row = (await session.execute(text("SELECT * FROM events WHERE seq = :seq"), {"seq": seq})).mappings().first()
    return dict(row) if row else None


#: The tables of the chains a record's link can be checked in (fixed names, interpolated into SQL).
_CHAIN_TABLES = {chain.EVENTS: "events", chain.REQUESTS: "request_records"}


async def chain_link(session: AsyncSession, chain_name: str, seq: int) -> dict[str, Any] | None:
    """Where the record at ``seq`` stands in its hash chain, as ``keyward audit verify`` would judge
    that one link: whether its ``prev_hash`` is the hash of the record before it (for the first record
    of the chain, the genesis value; after retention, the hash its ``retention`` checkpoint pins), and
    whether its ``hash`` is that of its own contents. None: no record at ``seq``.

    Answers ``seq``, ``prev_hash`` and ``hash`` (hex), ``copies`` (rows with this seq: 1 unless the
    store was tampered with), ``previous`` (``kind``: record, genesis, retention or missing, its
    ``seq``, ``hash`` and, for a request, ``request_id``), ``links`` and ``intact`` (booleans)."""
    table = _CHAIN_TABLES[chain_name]
    columns = ", ".join([*chain.FIELDS[chain_name], *chain.EXTENSIONS[chain_name], "prev_hash", "hash"])
    rows = (await session.execute(
        text(f"SELECT {columns} FROM {table} WHERE seq IN (:seq, :before) ORDER BY seq"),  # noqa: S608
        {"seq": seq, "before": seq - 1})).mappings().all()
    own = [row for row in rows if row["seq"] == seq]
    if not own:
        return None
    record = dict(own[0])
    before = [row for row in rows if row["seq"] == seq - 1]
    previous: dict[str, Any] = {"kind": "missing", "seq": seq - 1, "hash": None, "request_id": None}
    if before:
        previous |= {"kind": "record", "hash": bytes(before[0]["hash"]),
                     "request_id": before[0].get("request_id") if chain_name == chain.REQUESTS else None}
    elif seq == 1:
        previous |= {"kind": "genesis", "hash": chain.GENESIS}
    else:
        anchor = (await session.execute(text(
            "SELECT hash FROM audit_checkpoints WHERE chain = :chain AND kind = 'retention' AND seq = :before "
            "ORDER BY id DESC LIMIT 1"), {"chain": chain_name, "before": seq - 1})).first()
        if anchor is not None:
            previous |= {"kind": "retention", "hash": bytes(anchor[0])}
    prev_hash, own_hash = bytes(record["prev_hash"]), bytes(record["hash"])
    return {
        "seq": seq, "prev_hash": prev_hash.hex(), "hash": own_hash.hex(), "copies": len(own),
        "previous": previous | {"hash": previous["hash"].hex() if previous["hash"] is not None else None},
        "links": previous["hash"] is not None and previous["hash"] == prev_hash,
        "intact": chain.link(chain_name, prev_hash, record) == own_hash,
    }


EVENT_COLUMNS = ("seq", "at", "actor", "mechanism", "action", "target_type", "target_id", "before", "after")
#: An export of events that ``keyward audit verify-export`` can check.
EVENT_CHAIN_COLUMNS = (*EVENT_COLUMNS, "prev_hash", "hash")


@dataclass
class EventFilter:
    target_type: str | None = None
    target_id: str | None = None
    action: str | None = None
    actor: str | None = None
    start: datetime | None = None
    end: datetime | None = None

    def sql(self, *, after_seq: int | None = None) -> tuple[str, dict[str, Any]]:
        """Events in chain order; ``after_seq`` continues a previous page."""
        clauses: list[str] = ["true"]
        params: dict[str, Any] = {}
        for column in ("target_type", "target_id", "action", "actor"):
            value = getattr(self, column)
            if value is not None:
                clauses.append(f"{column} = :{column}")
                params[column] = value
        if self.start is not None:
            clauses.append("at >= :start")
            params["start"] = self.start
        if self.end is not None:
            clauses.append("at < :end")
            params["end"] = self.end
        if after_seq is not None:
            clauses.append("seq > :after")
            params["after"] = after_seq
        return "SELECT * FROM events WHERE " + " AND ".join(clauses) + " ORDER BY seq", params  # noqa: S608


async def event_page(session: AsyncSession, filters: EventFilter, *, cursor: str | None,
                     limit: int) -> dict[str, Any]:
    after = None
    if cursor:
        if not cursor.isdigit() or len(cursor) > 18:  # a bigint, as this API issues it
            raise Invalid(Code.CURSOR_INVALID, "The cursor is not one this API issued.")
        after = int(cursor)
    query, params = filters.sql(after_seq=after)
    rows = (await session.execute(text(query + " LIMIT :limit"), params | {"limit": limit + 1})).mappings().all()
    return {"items": [dict(r) for r in rows[:limit]],
            "next_cursor": str(rows[limit - 1]["seq"]) if len(rows) > limit else None}


async def user_activity(session: AsyncSession, user_id: uuid.UUID) -> dict[str, Any]:
    """When the user last made a request, and whether anything of theirs was allowed after they were
    disabled (with examples as evidence). The ``user`` key is left for the caller to fill."""
    params: dict[str, Any] = {"user_id": user_id}

    async def one(name: str, extra: dict[str, Any] | None = None) -> dict | None:
        row = (await session.execute(text(USER_ACTIVITY[name]), params | (extra or {}))).mappings().first()
        return dict(row) if row else None

    disabled = await one("disabled_event", {"user_id_text": str(user_id)})
    answer: dict[str, Any] = {
        "last_request": await one("last_request"),
        "last_allowed_request": await one("last_allowed"),
        "disabled_at": disabled["at"] if disabled else None,
        "disabled_by": disabled,
        "effective_at": None,
        "allowed_after_disabled": None,
        "allowed_after_disabled_examples": [],
    }
    if disabled:
        # Requests are judged from the moment every replica confirmed the disabling; without a
        # confirmation (an older record, or a replica that did not answer), from the event itself.
        confirmed = await one("confirmed_event", {"user_id_text": str(user_id), "after_seq": disabled["seq"]})
        effective = disabled["at"]
        if confirmed and confirmed["after"] and confirmed["after"].get("applied") and confirmed["after"]["confirmed"]:
            effective = max(datetime.fromisoformat(at) for at in confirmed["after"]["confirmed"].values())
        answer["effective_at"] = effective
        since = {"since": effective}
        answer["allowed_after_disabled"] = (
            await session.execute(text(USER_ACTIVITY["count_allowed_after"]), params | since)
        ).scalar_one()
        rows = (await session.execute(text(USER_ACTIVITY["allowed_after"]), params | since)).mappings().all()
        answer["allowed_after_disabled_examples"] = [dict(r) for r in rows]
    return answer


#: What usage can be grouped by, and the column of request_records that holds it.
USAGE_GROUPS = {"team": "r.team", "user": "r.user_email", "model": "r.model", "provider": "r.provider",
                "environment": "r.environment", "token": "r.token_id::text"}


async def usage(session: AsyncSession, *, group_by: str, start: datetime, end: datetime) -> list[dict[str, Any]]:
    """Requests and token usage per group in a window, busiest first (at most 1000 groups)."""
    query = f"""
        SELECT {USAGE_GROUPS[group_by]} AS key, count(*) AS requests,
               count(*) FILTER (WHERE r.decision = 'allowed') AS allowed,
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
