"""``/reviews``, ``/exceptions`` and ``/review-schedules``: access reviews over the credential register,
exceptions that need a second person and an expiry, and reviews opened on a cadence.

Who may do what: admins open and close reviews, approve and reject exceptions, and schedule reviews;
an item is decided by an admin or by the owner of the item's team (its default reviewer, acting with
an owner credential, which sees only its team's items and exceptions); auditors read everything,
change nothing; finance has no business here. Every decision is carried out in the request's transaction
through the normal lifecycle (:mod:`controlplane.services.exceptions`).
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, status
from fastapi.responses import PlainTextResponse

from controlplane import errors, schemas
from controlplane.api.deps import Admin, Auditor, Caller, Cursor, Limit, Manager, Reader, SessionDep, SettingsDep
from controlplane.errors import Code, Conflict
from controlplane.models import AccessReviewItem
from controlplane.services import exceptions, reviews

router = APIRouter(tags=["access reviews"], responses=errors.responses(401, 403, 422))


async def _visible_review(session: SessionDep, caller: Caller, review_id: uuid.UUID) -> Any:
    review = await reviews.get_review(session, review_id=review_id)
    if caller.within_team is not None and not await reviews.items_of(session, [review.id],
                                                                      within_team=caller.within_team):
        caller.require_team(None)  # a review with none of this owner's team's items: not theirs
    return review


async def _item_team(session: SessionDep, item: AccessReviewItem) -> uuid.UUID | None:
    return (await reviews.subject_teams(session, [(item.subject_type, item.subject_id)])).get(item.subject_id)


def _may_decide(caller: Caller, team_id: uuid.UUID | None) -> None:
    """An admin, or the owner of the item's team (the default reviewer, acting with its owner credential)."""
    if caller.role != "admin":
        caller.require_team(team_id)


# -- reviews --------------------------------------------------------------------------------------


@router.post("/reviews", status_code=status.HTTP_201_CREATED, response_model=schemas.ReviewDetail,
             responses=errors.responses(404, body=True))
async def open_review(data: schemas.ReviewCreate, session: SessionDep, caller: Admin) -> dict[str, Any]:
    """Open a review: every register row in the scope becomes an item, frozen now, with a reviewer (the
    owner of the credential's team, else the configured security reviewer, else any admin)."""
    review = await reviews.open_review(session, actor=caller.actor, name=data.name, scope=data.scope,
                                       due_at=data.due_at)
    return await reviews.review_document(session, review)


@router.get("/reviews", response_model=schemas.Page[schemas.ReviewPublic])
async def list_reviews(
    session: SessionDep, caller: Reader, limit: Limit = 100, cursor: Cursor = None,
    status_filter: Annotated[Literal["open", "closed"] | None, Query(alias="status")] = None,
) -> dict[str, Any]:
    """Reviews, newest first, with their progress (a team owner: those with items of its team, counted
    over those items)."""
    return await reviews.list_reviews(session, within_team=caller.within_team, status=status_filter, cursor=cursor,
                                      limit=limit)


@router.get("/reviews/{review_id}", response_model=schemas.ReviewDetail, responses=errors.responses(404))
async def get_review(review_id: uuid.UUID, session: SessionDep, caller: Reader) -> dict[str, Any]:
    """A review with its items (their frozen snapshots, decisions and state) and its progress."""
    review = await _visible_review(session, caller, review_id)
    return await reviews.review_document(session, review, within_team=caller.within_team)


@router.get("/reviews/{review_id}/items/{item_id}", response_model=schemas.ReviewItemPublic,
            responses=errors.responses(404))
async def get_item(review_id: uuid.UUID, item_id: uuid.UUID, session: SessionDep, caller: Reader) -> dict[str, Any]:
    """One item, with ``suggested_models``: what narrowing offers (the models used in the 30 days before)."""
    item = await reviews.get_item(session, review_id=review_id, item_id=item_id)
    caller.require_visible(await _item_team(session, item))
    return await reviews.item_with_state(session, item)


@router.post("/reviews/{review_id}/items/{item_id}/decide", response_model=schemas.ItemDecided,
             responses=errors.responses(404, 409, body=True))
async def decide_item(review_id: uuid.UUID, item_id: uuid.UUID, data: schemas.ItemDecide, session: SessionDep,
                      caller: Manager, settings: SettingsDep) -> dict[str, Any]:
    """Decide one item: keep (despite flags: with an exception someone else approves), narrow, rotate (the
    new secret is in this response only), reassign, disable, delete or escalate; always with a reason.
    The decision is carried out now, through the normal lifecycle, and audited."""
    item = await reviews.get_item(session, review_id=review_id, item_id=item_id)
    _may_decide(caller, await _item_team(session, item))
    outcome = await exceptions.decide(session, actor=caller.actor, item=item, data=data, hash_key=settings.hash_key,
                                      max_days=settings.exception_max_days)
    return {"item": await reviews.item_with_state(session, outcome.item), "secrets": outcome.secrets or None}


@router.post("/reviews/{review_id}/close", response_model=schemas.ReviewReport, responses=errors.responses(404, 409))
async def close_review(review_id: uuid.UUID, session: SessionDep, caller: Admin) -> dict[str, Any]:
    """Close a review: its report (who decided what and when, what changed, what remains open, the
    exceptions and their expiry) is stored with its sha256, which the ``review.closed`` event records."""
    review = await reviews.close_review(session, actor=caller.actor, review_id=review_id)
    return {"review_id": review.id, "report": review.report, "sha256": review.report_sha256}


@router.get("/reviews/{review_id}/report", response_model=schemas.ReviewReport,
            responses=errors.responses(404, 409) | {200: {"content": {"text/csv": {"schema": {"type": "string"}}}}})
async def review_report(review_id: uuid.UUID, session: SessionDep, _caller: Auditor,
                        format: Literal["json", "csv"] = "json") -> Any:
    """A closed review's report: JSON with its sha256, or its items as CSV."""
    review = await reviews.get_review(session, review_id=review_id)
    if review.report is None:
        raise Conflict(Code.REVIEW_OPEN, "The review is still open: its report exists once it is closed.")
    if format == "csv":
        return PlainTextResponse(reviews.report_csv(review.report), media_type="text/csv",
                                 headers={"content-disposition": f'attachment; filename="review-{review.id}.csv"'})
    return {"review_id": review.id, "report": review.report, "sha256": review.report_sha256}


# -- exceptions -----------------------------------------------------------------------------------


@router.post("/exceptions", status_code=status.HTTP_201_CREATED, response_model=schemas.ExceptionPublic,
             responses=errors.responses(404, body=True))
async def request_exception(data: schemas.ExceptionRequest, session: SessionDep, caller: Manager,
                            settings: SettingsDep) -> Any:
    """Ask to keep a credential despite a failing condition, until ``expires_at``; someone else approves."""
    await exceptions.subject_exists(session, data.subject_type, data.subject_id)
    caller.require_team(await exceptions.subject_team(session, data.subject_type, data.subject_id))
    return await exceptions.request(session, actor=caller.actor, data=data, max_days=settings.exception_max_days)


@router.get("/exceptions", response_model=schemas.Page[schemas.ExceptionPublic])
async def list_exceptions(
    session: SessionDep, caller: Reader, limit: Limit = 100, cursor: Cursor = None,
    status_filter: Annotated[schemas.ExceptionStatus | None, Query(alias="status")] = None,
    subject_id: uuid.UUID | None = None,
) -> dict[str, Any]:
    """Exceptions, newest first (a team owner: those of its team's credentials)."""
    return await exceptions.list_exceptions(session, within_team=caller.within_team, status=status_filter,
                                            subject_id=subject_id, cursor=cursor, limit=limit)


@router.get("/exceptions/{exception_id}", response_model=schemas.ExceptionPublic, responses=errors.responses(404))
async def get_exception(exception_id: uuid.UUID, session: SessionDep, caller: Reader) -> Any:
    exception = await exceptions.get_exception(session, exception_id=exception_id)
    caller.require_visible(await exceptions.subject_team(session, exception.subject_type, exception.subject_id))
    return exception


@router.post("/exceptions/{exception_id}/approve", response_model=schemas.ExceptionPublic,
             responses=errors.responses(404, 409, body=True))
async def approve_exception(exception_id: uuid.UUID, session: SessionDep, caller: Admin,
                            data: schemas.ExceptionDecision | None = None) -> Any:
    """Approve a pending exception: never its own requester (403 ``four_eyes_required``)."""
    return await exceptions.approve(session, actor=caller.actor, exception_id=exception_id,
                                    note=data.note if data else None)


@router.post("/exceptions/{exception_id}/reject", response_model=schemas.ExceptionPublic,
             responses=errors.responses(404, 409, body=True))
async def reject_exception(exception_id: uuid.UUID, session: SessionDep, caller: Admin,
                           data: schemas.ExceptionDecision | None = None) -> Any:
    """Reject a pending exception (not its own requester); the review item it came from is reopened."""
    return await exceptions.reject(session, actor=caller.actor, exception_id=exception_id,
                                   note=data.note if data else None)


@router.post("/exceptions/{exception_id}/withdraw", response_model=schemas.ExceptionPublic,
             responses=errors.responses(404, 409))
async def withdraw_exception(exception_id: uuid.UUID, session: SessionDep, caller: Manager) -> Any:
    """End a pending or approved exception now (an admin, or the owner of the credential's team)."""
    exception = await exceptions.get_exception(session, exception_id=exception_id)
    caller.require_team(await exceptions.subject_team(session, exception.subject_type, exception.subject_id))
    return await exceptions.withdraw(session, actor=caller.actor, exception_id=exception_id)


# -- schedules ------------------------------------------------------------------------------------


@router.post("/review-schedules", status_code=status.HTTP_201_CREATED, response_model=schemas.SchedulePublic,
             responses=errors.responses(404, body=True))
async def create_schedule(data: schemas.ScheduleCreate, session: SessionDep, caller: Admin) -> Any:
    """Open a review of ``scope`` every week, month, quarter or year, due ``due_days`` after it opens."""
    return await reviews.create_schedule(session, actor=caller.actor, data=data)


@router.patch("/review-schedules/{schedule_id}", response_model=schemas.SchedulePublic,
              responses=errors.responses(404, body=True))
async def update_schedule(schedule_id: uuid.UUID, data: schemas.ScheduleUpdate, session: SessionDep,
                          caller: Admin) -> Any:
    """Pause (``enabled: false``) or resume a schedule, or change its cadence, due days or next run."""
    return await reviews.update_schedule(session, actor=caller.actor, schedule_id=schedule_id, data=data)


@router.get("/review-schedules", response_model=schemas.Page[schemas.SchedulePublic])
async def list_schedules(session: SessionDep, _caller: Auditor, limit: Limit = 100, cursor: Cursor = None) -> Any:
    return await reviews.list_schedules(session, cursor=cursor, limit=limit)
