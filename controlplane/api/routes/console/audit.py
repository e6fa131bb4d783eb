"""The console's audit log: gateway requests and recorded events as filterable tables, each record's
detail with its place in the hash chain, and the filtered rows as a streamed export.

Who may look is the admin API's ``/audit`` role set (admin, auditor), and every read goes through the
same queries (:mod:`controlplane.audit.queries`) and exports (:mod:`controlplane.audit.exports`), so
a console export carries exactly the columns, chain fields and optional signed trailer of the API's.

Times are UTC. A ``datetime-local`` input sends no zone, so a time without one is read as UTC;
``minute=2026-11-22T04:13`` is the window of exactly that minute ("who called at 04:13"), and wins
over ``since``/``until``. Without a window the pages show the last 24 hours, as the API does.
``decision=denied`` keeps every request whose decision was not ``allowed``.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, StreamingResponse

from authz.outcomes import Outcome
from controlplane.api.routes.console._base import AUDITORS, Console, ConsoleRefused, SignedConsole, page, reporting
from controlplane.api.routes.console._forms import an_id, given, not_understood
from controlplane.audit import chain, exports, queries
from controlplane.core.db import get_sessionmaker
from controlplane.services.rows import decode_cursor, encode_cursor

router = APIRouter(include_in_schema=False)

#: Rows per page of the tables.
PAGE_SIZE = 50
KINDS = ("requests", "events")
#: The console's name for every decision but ``allowed`` (what the overview's denial count links to).
DENIED = "denied"
#: How a time is written into links and ``datetime-local`` inputs (UTC, no zone).
_LOCAL = "%Y-%m-%dT%H:%M:%S"
_MINUTE = "%Y-%m-%dT%H:%M"
#: The quick links of the window.
QUICK = (("last hour", timedelta(hours=1)), ("last 24 hours", timedelta(days=1)), ("last 7 days", timedelta(days=7)))
#: The users and tokens a record names are shown on these pages.
TARGET_PAGES = {"user": "/console/people/{}", "token": "/console/tokens/{}"}

Short = Annotated[str | None, Query(max_length=64)]
Name = Annotated[str | None, Query(max_length=200)]
Email = Annotated[str | None, Query(max_length=320)]


def invalid(message: str) -> ConsoleRefused:
    return not_understood(message, "That filter is not valid")


def _instant(name: str, value: str | None) -> datetime | None:
    """A time from a link (ISO 8601, with or without a zone) or a ``datetime-local`` input (no zone: UTC)."""
    value = given(value)
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise invalid(f"{name} must be a time such as 2026-11-22T04:13 (UTC) or 2026-11-22T04:13:00Z.") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _status(value: str | None) -> int | None:
    value = given(value)
    if value is None:
        return None
    if not value.isdigit() or int(value) > 599:
        raise invalid("status must be an HTTP status between 0 and 599.")
    return int(value)


def local(value: datetime) -> str:
    """A time as the filters write it: UTC, without a zone (a ``datetime-local`` input's value)."""
    return value.astimezone(UTC).strftime(_LOCAL)


def minute_of(value: datetime) -> str:
    """The minute of a time, as ``minute=`` takes it."""
    return value.astimezone(UTC).strftime(_MINUTE)


@dataclass(frozen=True)
class AuditFilters:
    """What a page or an export of the audit log is filtered by, checked once for both."""

    console: Console
    kind: str
    start: datetime
    end: datetime
    #: The minute asked for with ``minute=`` (then ``start``/``end`` are its bounds).
    minute: datetime | None
    #: Whether ``end`` was asked for (otherwise it is "now" when the page was made).
    end_given: bool
    user: str | None
    token_id: uuid.UUID | None
    team: str | None
    model: str | None
    decision: str | None
    status: int | None
    actor: str | None
    action: str | None
    target_type: str | None
    target_id: str | None

    def requests(self) -> queries.RequestFilter:
        denied = self.decision == DENIED
        return queries.RequestFilter(start=self.start, end=self.end, user_email=self.user, team=self.team,
                                     token_id=self.token_id, model=self.model,
                                     decision=None if denied else self.decision, status=self.status,
                                     decision_other_than="allowed" if denied else None)

    def events(self) -> queries.EventFilter:
        return queries.EventFilter(target_type=self.target_type, target_id=self.target_id, action=self.action,
                                   actor=self.actor, start=self.start, end=self.end)

    def stated(self) -> dict[str, Any]:
        """The filters a signed export's trailer states."""
        if self.kind == "events":
            return {"target_type": self.target_type, "target_id": self.target_id, "action": self.action,
                    "actor": self.actor, "start": self.start, "end": self.end}
        return {"start": self.start, "end": self.end, "user": self.user, "team": self.team,
                "token_id": self.token_id, "model": self.model, "decision": self.decision, "status": self.status}


async def _filters(
    console: SignedConsole,
    kind: Short = "requests",
    user: Email = None,
    token_id: Short = None,
    team: Name = None,
    model: Name = None,
    decision: Short = None,
    status: Short = None,
    actor: Name = None,
    action: Short = None,
    target_type: Short = None,
    target_id: Name = None,
    since: Short = None,
    until: Short = None,
    minute: Short = None,
) -> AuditFilters:
    # The role first: someone who may not read the audit log learns nothing from their filters.
    console.require(AUDITORS)
    if (kind or "requests") not in KINDS:
        raise invalid("kind is requests or events.")
    at = _instant("minute", minute)
    if at is not None:
        at = at.replace(second=0, microsecond=0)
        start, end = at, at + timedelta(minutes=1)
    else:
        with reporting("That filter is not valid"):
            start, end = queries.window(_instant("since", since), _instant("until", until), default=timedelta(days=1))
    return AuditFilters(
        console=console, kind=kind or "requests", start=start, end=end, minute=at,
        end_given=at is not None or given(until) is not None, user=given(user),
        token_id=an_id(token_id, "token id"), team=given(team), model=given(model), decision=given(decision),
        status=_status(status), actor=given(actor), action=given(action), target_type=given(target_type),
        target_id=given(target_id))


Filters = Annotated[AuditFilters, Depends(_filters)]
Cursor = Annotated[str | None, Query(max_length=400)]


def _decisions(current: str | None) -> list[tuple[str, str]]:
    """The decision filter's choices: allowed, every refusal, then each of authz's decisions."""
    choices = [("allowed", "allowed"), (DENIED, "denied (anything but allowed)")]
    choices += [(outcome.value, outcome.value) for outcome in Outcome if outcome is not Outcome.ALLOWED]
    if current and current not in {value for value, _ in choices}:
        choices.append((current, current))  # e.g. envoy:<reason>, from a record's link
    return choices


@router.get("/console/audit")
async def audit_log(request: Request, filters: Filters, cursor: Cursor = None) -> HTMLResponse:
    """One page of requests or events (oldest first, as the API pages them) under the filters."""
    next_cursor: str | None
    async with get_sessionmaker()() as session, session.begin():
        with reporting("That page of the audit log cannot be shown"):
            if filters.kind == "requests":
                rows, following = await queries.request_page(
                    session, filters.requests(), cursor=decode_cursor(cursor) if cursor else None, limit=PAGE_SIZE)
                next_cursor = encode_cursor(*following) if following else None
            else:
                found = await queries.event_page(session, filters.events(), cursor=cursor, limit=PAGE_SIZE)
                rows, next_cursor = found["items"], found["next_cursor"]
    params = {key: value for key, value in request.query_params.items() if key != "done"}
    # The export covers what this page covers: without an end, "now" as the page was made.
    exported = {key: value for key, value in params.items() if key != "cursor"} | {"kind": filters.kind}
    if not filters.end_given:
        exported["until"] = filters.end.isoformat()
    now = datetime.now(UTC)
    quick = [(label, (now - span).strftime(_MINUTE)) for label, span in QUICK]
    return page(request, filters.console, "console/audit.html", title="Audit log", kind=filters.kind, rows=rows,
                next_cursor=next_cursor, filters=filters, quick=quick, exported=exported,
                decisions=_decisions(filters.decision), local=local, minute_of=minute_of)


@router.get("/console/audit/export")
async def export(filters: Filters, format: Annotated[str, Query(max_length=8)] = "csv",
                 signed: Annotated[bool, Query()] = False) -> StreamingResponse:
    """The rows under the filters, streamed as the API exports them (same columns, chain fields and, with
    ``signed``, the signed trailer ``keyward audit verify-export`` checks)."""
    if format not in exports.MEDIA_TYPES:
        raise invalid("format is csv or jsonl.")
    fmt: exports.Format = "csv" if format == "csv" else "jsonl"
    columns: tuple[str, ...]
    if filters.kind == "requests":
        query, params = filters.requests().sql(limit=None, chained=True)
        columns, chain_name = queries.REQUEST_CHAIN_COLUMNS, chain.REQUESTS
    else:
        query, params = filters.events().sql()
        columns, chain_name = queries.EVENT_CHAIN_COLUMNS, chain.EVENTS
    with reporting("That export cannot be made"):
        chunks = await exports.stream(query, params, columns, fmt,
                                      chained=exports.Chained(chain_name, signed, filters.stated()))
    name = f"{filters.kind}-{filters.start.strftime('%Y%m%dT%H%M')}-{filters.end.strftime('%Y%m%dT%H%M')}"
    return StreamingResponse(chunks, media_type=exports.MEDIA_TYPES[fmt],
                             headers={"content-disposition": f'attachment; filename="{name}.{fmt}"',
                                      "cache-control": "no-store"})


def exact(value: Decimal | None) -> str:
    """An amount with every digit it was stored with (the ``usd`` filter rounds, an audit record must not)."""
    return "—" if value is None else "$" + format(value.normalize(), "f")


def _pretty(value: Any) -> str | None:
    return None if value is None else json.dumps(value, indent=2, sort_keys=True, default=str)


@router.get("/console/audit/requests/{request_id}")
async def request_record(request: Request, console: SignedConsole, request_id: str, seq: Short = None
                         ) -> HTMLResponse:
    """One request: every field, what happened (status, latency, usage, cost) and its chain link.
    A request id is normally on one record; ``seq`` picks one of several."""
    console.require(AUDITORS)
    async with get_sessionmaker()() as session, session.begin():
        records = await queries.requests_with_id(session, request_id[:200])
        chosen = next((r for r in records if not seq or str(r["seq"]) == seq), None)
        if chosen is None:
            raise ConsoleRefused("No such request", "No stored request has that id (and seq). Records reach the "
                                 "audit store a few seconds after the request.", 404)
        link = await queries.chain_link(session, chain.REQUESTS, chosen["seq"])
    return page(request, console, "console/audit_request.html", title=f"Request {chosen['request_id']}",
                record=chosen, others=[r for r in records if r is not chosen], link=link, exact=exact,
                minute=minute_of(chosen["at"]))


@router.get("/console/audit/events/{seq}")
async def event_record(request: Request, console: SignedConsole, seq: str) -> HTMLResponse:
    """One event (by its place in the events chain, ``seq``): every field, before and after, its chain link."""
    console.require(AUDITORS)
    async with get_sessionmaker()() as session, session.begin():
        event = await queries.event_at(session, int(seq)) if seq.isdigit() and len(seq) <= 18 else None
        if event is None:
            raise ConsoleRefused("No such event", f"No event has seq {seq[:20]!r}.", 404)
        link = await queries.chain_link(session, chain.EVENTS, event["seq"])
    target = TARGET_PAGES.get(event["target_type"])
    return page(request, console, "console/audit_event.html", title=f"Event {event['seq']}", event=event, link=link,
                target_page=target.format(event["target_id"]) if target else None,
                before=_pretty(event["before"]), after=_pretty(event["after"]),
                minute=minute_of(event["at"]))
