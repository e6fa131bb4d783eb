"""The console's access reviews (open one, decide its items, close it, its report) and exceptions (request
one, approve or reject it as someone else, withdraw it); the register and the evidence pack, in the same
section, are in :mod:`.register`.

Each page mirrors its admin-API route (``api/routes/reviews.py``): the
same role sets, the API's own checks (``_visible_review``, ``_item_team``, ``_may_decide`` are imported,
not copied) and the same service functions, acting as the console's actor (mechanism ``console``).
A decision that mints secrets (rotate) answers with a page showing them once instead of a redirect.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar, get_args

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane import schemas
from controlplane.api.deps import Cursor, SettingsDep
from controlplane.api.routes.console._base import (
    ADMIN,
    AUDITORS,
    READERS,
    Console,
    ConsoleRefused,
    PostedForm,
    SignedConsole,
    back,
    page,
    reporting,
)
from controlplane.api.routes.console._forms import a_day_end, an_id, person_id, team_choices, validated
from controlplane.api.routes.reviews import _item_team, _may_decide, _visible_review
from controlplane.core.db import get_sessionmaker
from controlplane.errors import KeywardError
from controlplane.services import exceptions, register, reviews, teams
from controlplane.services.rows import offset_cursor, offset_of

router = APIRouter(include_in_schema=False)

#: Who changes items and exceptions of a team (the API's ``Manager``): an admin, or the team's owner.
MANAGERS = ("admin", "owner")
PAGE_SIZE = 50
_ITEMS_CURSOR = "review-items"
_ITEM_STATES = ("undecided", "open", "escalated", "awaiting_exception", "decided")
_ENVIRONMENTS = get_args(schemas.Environment)
_DOWNLOAD = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
M = TypeVar("M", bound=BaseModel)


def _last_day(days: int) -> str:
    """The last date a date field may hold so that its end of day is at most ``days`` ahead."""
    return (datetime.now(UTC) + timedelta(days=days) - timedelta(days=1)).date().isoformat()


async def _scope_team(session: AsyncSession, scope: dict[str, Any]) -> Any:
    """The team a review's scope names, to show its name (None if none, or it is gone)."""
    if not scope.get("team_id"):
        return None
    try:
        return await teams.get_team(session, team_id=uuid.UUID(str(scope["team_id"])))
    except KeywardError:
        return None


# -- reviews --------------------------------------------------------------------------------------


@router.get("/console/reviews")
async def reviews_page(request: Request, console: SignedConsole, status: str | None = None,
                       cursor: Cursor = None) -> HTMLResponse:
    """Reviews, newest first, with progress (a team owner: those with items of its team); admins open one."""
    console.require(READERS)
    async with get_sessionmaker()() as session, session.begin():
        with reporting("Reviews could not be listed"):
            listed = await reviews.list_reviews(session, within_team=console.caller.within_team,
                                                status=status if status in ("open", "closed") else None,
                                                cursor=cursor, limit=PAGE_SIZE)
        team_options = await team_choices(session, console) if console.may(*ADMIN) else []
    return page(request, console, "console/reviews.html", title="Access reviews",
                reviews=[schemas.ReviewPublic.model_validate(r) for r in listed["items"]],
                next_cursor=listed["next_cursor"], teams=team_options, kinds=register.KINDS,
                environments=_ENVIRONMENTS, employment_types=get_args(schemas.EmploymentType),
                default_due=(datetime.now(UTC) + timedelta(days=14)).date().isoformat(), now=datetime.now(UTC))


@router.post("/console/reviews")
async def open_review(form: PostedForm) -> Response:
    """Open a review over a scope: every register row in it becomes an item, frozen now (admins)."""
    form.console.require(ADMIN)
    scope: dict[str, Any] = {"kinds": form.lists.get("kinds") or None, "team_id": form.get("team_id") or None,
                             "environment": form.get("environment") or None,
                             "employment_types": form.lists.get("employment_types") or None,
                             "production_only": form.get("production_only") == "true"}
    data = validated(schemas.ReviewCreate, {"name": form.get("name"), "due_at": a_day_end(form.get("due"), "Due"),
                                             "scope": {k: v for k, v in scope.items() if v}})
    async with get_sessionmaker()() as session, session.begin():
        with reporting("The review was not opened"):
            review = await reviews.open_review(session, actor=form.console.caller.actor, name=data.name,
                                               scope=data.scope, due_at=data.due_at)
    return back(f"/console/reviews/{review.id}", f"Opened the review {review.name}.")


@router.get("/console/reviews/{review_id}")
async def review_page(request: Request, review_id: uuid.UUID, console: SignedConsole, state: str | None = None,
                      cursor: Cursor = None) -> HTMLResponse:
    """A review's items (register rows frozen at open), their state and decisions, 50 a page."""
    console.require(READERS)
    async with get_sessionmaker()() as session, session.begin():
        with reporting("This review cannot be shown"):
            review = await _visible_review(session, console.caller, review_id)
            document = await reviews.review_document(session, review, within_team=console.caller.within_team)
            offset = offset_of(cursor, _ITEMS_CURSOR)
        team = await _scope_team(session, review.scope)
    detail = schemas.ReviewDetail.model_validate(document)
    wanted = state if state in _ITEM_STATES else None
    items = [item for item in detail.items
             if wanted is None or item.state == wanted or (wanted == "undecided" and item.state != "decided")]
    shown = items[offset:offset + PAGE_SIZE]
    more = offset_cursor(offset + PAGE_SIZE, _ITEMS_CURSOR) if len(items) > offset + PAGE_SIZE else None
    return page(request, console, "console/review.html", title=f"Review {detail.name}", review=detail,
                items=shown, matching=len(items), next_cursor=more, states=_ITEM_STATES,
                team_name=team.name if team else None, report_sha256=review.report_sha256, now=datetime.now(UTC))


@router.get("/console/reviews/{review_id}/items/{item_id}/decide")
async def decide_page(request: Request, review_id: uuid.UUID, item_id: uuid.UUID,
                      console: SignedConsole, settings: SettingsDep) -> HTMLResponse:
    """The decision form for one item: what the reviewer judged (its frozen row) and what each decision does."""
    console.require(MANAGERS)
    async with get_sessionmaker()() as session, session.begin():
        with reporting("This item cannot be decided"):
            item = await reviews.get_item(session, review_id=review_id, item_id=item_id)
            _may_decide(console.caller, await _item_team(session, item))
            review = await reviews.get_review(session, review_id=review_id)
            reviews.require_open(review)
            document = await reviews.item_with_state(session, item)
    shown = schemas.ReviewItemPublic.model_validate(document)
    return page(request, console, "console/review_decide.html", title="Decide an item", review_name=review.name,
                item=shown, snapshot=shown.snapshot, flags=exceptions._flags(shown.snapshot),
                decisions=("keep", "narrow", "rotate", "reassign", "disable", "delete", "escalate"),
                chosen=request.query_params.get("decision", "keep"), latest=_last_day(settings.exception_max_days))


async def _decision(session: AsyncSession, form: PostedForm) -> schemas.ItemDecide:
    """The decide form as the API's ItemDecide: only the fields given (the models only to narrow)."""
    new_owner = form.get("new_owner").strip()
    fields = {"decision": form.get("decision"), "reason": form.get("reason"),
              "models": form.get("models").replace(",", " ").split() if form.get("decision") == "narrow" else None,
              "grace_hours": form.get("grace_hours").strip(), "owner_roles": form.lists.get("owner_roles"),
              "new_owner_id": await person_id(session, new_owner, "New owner") if new_owner else None,
              "exception_expires_at": a_day_end(form.get("exception_expires"), "Exception expires"),
              "condition": form.get("condition").strip()}
    return validated(schemas.ItemDecide, {name: value for name, value in fields.items() if value})


@router.post("/console/reviews/{review_id}/items/{item_id}/decide")
async def decide_item(request: Request, review_id: uuid.UUID, item_id: uuid.UUID, form: PostedForm,
                      settings: SettingsDep) -> Response:
    """Carry one decision out now, through the normal lifecycle (``exceptions.decide``), as the API does."""
    console = form.console
    console.require(MANAGERS)
    async with get_sessionmaker()() as session, session.begin():
        with reporting("The decision was not carried out"):
            data = await _decision(session, form)
            item = await reviews.get_item(session, review_id=review_id, item_id=item_id)
            _may_decide(console.caller, await _item_team(session, item))
            outcome = await exceptions.decide(session, actor=console.caller.actor, item=item, data=data,
                                              hash_key=settings.hash_key, max_days=settings.exception_max_days)
            subject = str(outcome.item.snapshot.get("alias") or outcome.item.subject_id)
            awaiting = outcome.item.exception_id is not None
    if outcome.secrets:
        return page(request, console, "console/review_secrets.html", title="New secrets, shown once",
                    secrets=outcome.secrets, subject=subject, review_id=review_id)
    said = f"Decided {subject}: {data.decision}."
    if awaiting:
        said += " An exception was requested; someone else must approve it."
    return back(f"/console/reviews/{review_id}", said)


@router.get("/console/reviews/{review_id}/close")
async def close_confirm(request: Request, review_id: uuid.UUID, console: SignedConsole) -> HTMLResponse:
    console.require(ADMIN)
    async with get_sessionmaker()() as session, session.begin():
        with reporting("This review cannot be closed"):
            review = await reviews.get_review(session, review_id=review_id)
            reviews.require_open(review)
            counts = (await reviews.progress_of(session, [review.id])).get(review.id, {"items": 0, "decided": 0})
    return page(request, console, "console/confirm.html", title="Close the review",
                question="Closing stores the review's report, with its sha256 recorded in the audit chain. Its "
                         "items can no longer change; what is still open is listed in the report as open.",
                details=[("Review", review.name), ("Decided", f"{counts['decided']} of {counts['items']} items")],
                action=f"/console/reviews/{review_id}/close", hidden=[], inputs=[], button="Close the review",
                danger=False, cancel=f"/console/reviews/{review_id}")


@router.post("/console/reviews/{review_id}/close")
async def close_review(review_id: uuid.UUID, form: PostedForm) -> Response:
    form.console.require(ADMIN)
    async with get_sessionmaker()() as session, session.begin():
        with reporting("The review was not closed"):
            review = await reviews.close_review(session, actor=form.console.caller.actor, review_id=review_id)
    return back(f"/console/reviews/{review_id}", f"Closed {review.name}; report sha256 {review.report_sha256}.")


@router.get("/console/reviews/{review_id}/report")
async def review_report(review_id: uuid.UUID, console: SignedConsole,
                        format: Literal["json", "csv"] = "json") -> Response:
    """A closed review's report as a download: the API's document (``GET /api/v1/reviews/{id}/report``)."""
    console.require(AUDITORS)
    async with get_sessionmaker()() as session, session.begin():
        with reporting("No report"):
            review = await reviews.get_review(session, review_id=review_id)
    if review.report is None:
        raise ConsoleRefused("No report yet", "The review is still open: its report exists once it is closed.", 409)
    name = f"review-{review.id}.{format}"
    headers = {**_DOWNLOAD, "Content-Disposition": f'attachment; filename="{name}"'}
    if format == "csv":
        return PlainTextResponse(reviews.report_csv(review.report), media_type="text/csv", headers=headers)
    document = schemas.ReviewReport(review_id=review.id, report=review.report, sha256=review.report_sha256 or "")
    return JSONResponse(document.model_dump(mode="json"), headers=headers)


# -- exceptions -----------------------------------------------------------------------------------


@router.get("/console/exceptions")
async def exceptions_page(request: Request, console: SignedConsole, status: str | None = None,
                          subject_id: str | None = None, cursor: Cursor = None) -> HTMLResponse:
    """Exceptions, newest first, with their expiry (a team owner: those of its team's credentials)."""
    console.require(READERS)
    statuses = ("pending", "approved", "rejected", "expired", "withdrawn")
    async with get_sessionmaker()() as session, session.begin():
        with reporting("Exceptions could not be listed"):
            listed = await exceptions.list_exceptions(
                session, within_team=console.caller.within_team, status=status if status in statuses else None,
                subject_id=an_id(subject_id, "Credential id"), cursor=cursor, limit=PAGE_SIZE)
    return page(request, console, "console/exceptions.html", title="Exceptions", exceptions=listed["items"],
                next_cursor=listed["next_cursor"], statuses=[(s, s) for s in statuses], now=datetime.now(UTC))


@router.get("/console/exceptions/new")
async def exception_form(request: Request, console: SignedConsole, settings: SettingsDep) -> HTMLResponse:
    console.require(MANAGERS)
    return page(request, console, "console/exception_new.html", title="Request an exception",
                subject_types=get_args(schemas.SubjectType),
                latest=_last_day(settings.exception_max_days), max_days=settings.exception_max_days)


@router.post("/console/exceptions")
async def request_exception(form: PostedForm, settings: SettingsDep) -> Response:
    """Ask to keep a credential despite a failing condition, until an expiry; someone else approves."""
    console = form.console
    console.require(MANAGERS)
    data = validated(schemas.ExceptionRequest, {
        "subject_type": form.get("subject_type"), "subject_id": form.get("subject_id").strip(),
        "condition": form.get("condition"), "reason": form.get("reason"),
        "expires_at": a_day_end(form.get("expires"), "Expires")})
    async with get_sessionmaker()() as session, session.begin():
        with reporting("The exception was not requested"):
            await exceptions.subject_exists(session, data.subject_type, data.subject_id)
            console.caller.require_team(await exceptions.subject_team(session, data.subject_type, data.subject_id))
            await exceptions.request(session, actor=console.caller.actor, data=data,
                                     max_days=settings.exception_max_days)
    return back("/console/exceptions?status=pending", "Exception requested; someone else must approve it.")


_EXCEPTION_ACTIONS = {
    "approve": ("Approve the exception", "The credential is kept until the exception expires."),
    "reject": ("Reject the exception", "The review item it came from is reviewed again."),
    "withdraw": ("Withdraw the exception", "It ends now; the review item it kept is reviewed again."),
}


async def _exception_for(session: AsyncSession, console: Console, exception_id: uuid.UUID, action: str) -> Any:
    """The exception, once the caller may do ``action`` to it: approve and reject are for admins (never
    the requester, which the service refuses); withdraw for an admin or the owner of its credential's team."""
    if action not in _EXCEPTION_ACTIONS:
        raise ConsoleRefused("Not found", "No such action on an exception.", 404)
    console.require(ADMIN if action != "withdraw" else MANAGERS)
    exception = await exceptions.get_exception(session, exception_id=exception_id)
    if action == "withdraw":
        console.caller.require_team(await exceptions.subject_team(session, exception.subject_type,
                                                                  exception.subject_id))
    return exception


@router.get("/console/exceptions/{exception_id}/{action}")
async def exception_confirm(request: Request, exception_id: uuid.UUID, action: str,
                            console: SignedConsole) -> HTMLResponse:
    async with get_sessionmaker()() as session, session.begin():
        with reporting("This cannot be done to the exception"):
            exception = await _exception_for(session, console, exception_id, action)
    title, effect = _EXCEPTION_ACTIONS[action]
    note = [{"name": "note", "label": "Note (optional)", "kind": "text", "value": "", "required": False}]
    return page(request, console, "console/confirm.html", title=title, question=effect,
                details=[("Credential", f"{exception.subject_type} {exception.subject_id}"),
                         ("Condition", exception.condition), ("Reason", exception.reason),
                         ("Requested by", exception.requested_by), ("Status", exception.status),
                         ("Expires", exception.expires_at.isoformat())],
                action=f"/console/exceptions/{exception_id}/{action}", hidden=[],
                inputs=note if action != "withdraw" else [], button=title, danger=action != "approve",
                cancel="/console/exceptions")


@router.post("/console/exceptions/{exception_id}/{action}")
async def exception_action(exception_id: uuid.UUID, action: str, form: PostedForm) -> Response:
    console = form.console
    note = validated(schemas.ExceptionDecision, {"note": form.get("note") or None}).note
    async with get_sessionmaker()() as session, session.begin():
        with reporting("That was not done to the exception"):
            await _exception_for(session, console, exception_id, action)
            actor = console.caller.actor
            if action == "approve":
                done = await exceptions.approve(session, actor=actor, exception_id=exception_id, note=note)
            elif action == "reject":
                done = await exceptions.reject(session, actor=actor, exception_id=exception_id, note=note)
            else:
                done = await exceptions.withdraw(session, actor=actor, exception_id=exception_id)
    return back("/console/exceptions", f"The exception for {done.subject_type} {done.subject_id} is {done.status}.")
