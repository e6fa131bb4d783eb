"""Access reviews: open one over a scope of the credential register, freeze its rows as items, close it
with a report bound to the events chain; schedules that open reviews on a cadence; and the triggers
(an owner change, a wider catalog, a new provider) that add items to an open triggered review.

Over 450 lines because a review's life (open, freeze, report, close) and the two ways reviews open
(schedules, triggers) share the item and scope definitions; carrying out decisions and exceptions is
in :mod:`controlplane.services.exceptions`.

Invariants:

* An item's ``snapshot`` is the register row (:func:`controlplane.services.register.register_rows`)
  as it was when the item was made; nothing rewrites it. What a decision changed is in ``result``.
* An item is *decided* when it has a decision other than ``escalate``, and, for a ``keep`` that needed
  an exception, once that exception is approved. Everything else is still open, and the report says so.
* A closed review's report is canonical JSON (sorted keys, no whitespace, UTF-8); its sha256 is stored
  with it and recorded in the ``review.closed`` event, so the report is bound to the events hash chain:
  changing a stored report breaks the hash; changing the hash breaks the chain.
* Carrying decisions out needs the lifecycle services, which call this module's triggers; so the
  decisions live beside the exceptions (:mod:`controlplane.services.exceptions`), and this module
  imports no service that changes credentials.
"""

from __future__ import annotations

import calendar
import csv
import hashlib
import io
import json
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Select, exists, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane import schemas
from controlplane.audit.events import Actor, record_event
from controlplane.core.config import get_settings
from controlplane.errors import Code, Conflict, NotFound
from controlplane.models import (
    AccessException,
    AccessProfile,
    AccessReview,
    AccessReviewItem,
    AccessReviewSchedule,
    ApiCredential,
    Membership,
    ScimCredential,
    ServiceAccount,
    Team,
    Token,
    User,
)
from controlplane.services.register import register_rows
from controlplane.services.rows import get_or_404, paginate, public

SYSTEM = Actor(name="system:reviews", mechanism="system")
#: The reviewer of last resort: any admin.
ADMIN_REVIEWER = "admin"
#: An escalated item's reviewer when no security reviewer is configured.
SECURITY_REVIEWER = "security"
#: A triggered review is due this long after it opens.
TRIGGERED_DUE_DAYS = 14
#: Items one trigger adds at most (a profile used by many teams): the rest wait for a scheduled review.
TRIGGER_LIMIT = 1000
#: The subject types whose rows carry a team.
_TEAMED: dict[str, Any] = {"token": Token, "service_account": ServiceAccount, "api_credential": ApiCredential}


def canonical(document: Any) -> bytes:
    """The one byte form a report is hashed in: sorted keys, no whitespace, UTF-8."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_of(document: Any) -> str:
    return hashlib.sha256(canonical(document)).hexdigest()


def _plain(document: Any) -> Any:
    """``document`` as JSON gives it back: what a JSONB column returns is what was hashed."""
    return json.loads(json.dumps(document, default=str))


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


# -- scope → register rows ------------------------------------------------------------------------


async def _scoped_ids(session: AsyncSession, scope: dict[str, Any]) -> set[uuid.UUID] | None:
    """The subject ids ``employment_types`` and ``production_only`` leave (None: no such narrowing)."""
    found: set[uuid.UUID] | None = None
    kinds = scope.get("employment_types")
    if kinds:
        people = select(User.id).where(User.employment_type.in_(kinds))
        accounts = select(ServiceAccount.id).where(or_(*(getattr(ServiceAccount, f"{role}_owner_id").in_(people)
                                                         for role in ("business", "technical"))))
        ids = set((await session.scalars(select(Token.id).where(
            or_(Token.user_id.in_(people), Token.service_account_id.in_(accounts))))).all())
        ids |= set((await session.scalars(accounts)).all())
        ids |= set((await session.scalars(select(ApiCredential.id).where(ApiCredential.owner_id.in_(people)))).all())
        found = ids
    if scope.get("production_only"):
        prod = select(Token.id).where(Token.environment == "prod", Token.revoked_at.is_(None))
        ids = set((await session.scalars(prod)).all())
        ids |= {ident for ident in (await session.scalars(select(Token.service_account_id).where(
            Token.environment == "prod", Token.revoked_at.is_(None)))).all() if ident is not None}
        ids |= set((await session.scalars(select(ApiCredential.id))).all())
        ids |= set((await session.scalars(select(ScimCredential.id))).all())
        found = ids if found is None else found & ids
    return found


async def rows_in_scope(session: AsyncSession, scope: dict[str, Any],
                        subject_ids: Iterable[uuid.UUID] | None = None) -> list[dict[str, Any]]:
    """The register rows a review of ``scope`` covers (within ``subject_ids``, if given)."""
    narrowed = await _scoped_ids(session, scope)
    if subject_ids is not None:
        wanted = set(subject_ids)
        narrowed = wanted if narrowed is None else narrowed & wanted
    if narrowed is not None and not narrowed:
        return []
    team_id = scope.get("team_id")
    rows = await register_rows(
        session, team_id=uuid.UUID(str(team_id)) if team_id else None, environment=scope.get("environment"),
        kinds=scope.get("kinds"), subject_ids=sorted(narrowed, key=str) if narrowed is not None else None)
    return [_plain(row) for row in rows]


# -- reviewers ------------------------------------------------------------------------------------


async def subject_teams(session: AsyncSession, subjects: Iterable[tuple[str, uuid.UUID]]) -> dict[uuid.UUID, uuid.UUID]:
    """Subject id -> the team it belongs to (tokens, service accounts, team-owner admin credentials)."""
    wanted: dict[str, list[uuid.UUID]] = {}
    for kind, ident in subjects:
        if kind in _TEAMED:
            wanted.setdefault(kind, []).append(ident)
    found: dict[uuid.UUID, uuid.UUID] = {}
    for kind, ids in wanted.items():
        model = _TEAMED[kind]
        for ident, team_id in await session.execute(select(model.id, model.team_id).where(model.id.in_(ids))):
            if team_id is not None:
                found[ident] = team_id
    return found


async def _team_owners(session: AsyncSession, team_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, str]:
    """Team -> the email of its longest-standing active owner."""
    rows = await session.execute(
        select(Membership.team_id, User.email).join(User, User.id == Membership.user_id)
        .where(Membership.team_id.in_(list(team_ids)), Membership.role == "owner", User.status == "active")
        .order_by(Membership.created_at))
    owners: dict[uuid.UUID, str] = {}
    for team_id, email in rows:
        owners.setdefault(team_id, email)
    return owners


def security_reviewer() -> str:
    return get_settings().security_reviewer or ADMIN_REVIEWER


def escalation_reviewer() -> str:
    """Who an escalated item goes to: the configured security reviewer, else the security role."""
    return get_settings().security_reviewer or SECURITY_REVIEWER


# -- opening --------------------------------------------------------------------------------------


async def _add_items(session: AsyncSession, review: AccessReview, rows: Sequence[dict[str, Any]],
                     extra: dict[str, Any] | None = None) -> list[AccessReviewItem]:
    subjects = [(row["subject_type"], uuid.UUID(str(row["id"]))) for row in rows]
    teams = await subject_teams(session, subjects)
    owners = await _team_owners(session, set(teams.values()))
    fallback = security_reviewer()
    items = []
    for row, (kind, ident) in zip(rows, subjects, strict=True):
        team = teams.get(ident)
        item = AccessReviewItem(id=uuid.uuid4(), review_id=review.id, subject_type=kind, subject_id=ident,
                                snapshot={**row, **(extra or {})},
                                reviewer=owners.get(team, fallback) if team else fallback)
        session.add(item)
        items.append(item)
    await session.flush()
    return items


def _scope_document(scope: schemas.ReviewScope | dict[str, Any]) -> dict[str, Any]:
    if isinstance(scope, schemas.ReviewScope):
        return scope.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
    return dict(scope)


async def open_review(session: AsyncSession, *, actor: Actor, name: str, scope: schemas.ReviewScope | dict[str, Any],
                      due_at: datetime, schedule_id: uuid.UUID | None = None,
                      trigger: str | None = None) -> AccessReview:
    """Open a review: every register row in ``scope`` becomes an item, frozen now."""
    document = _scope_document(scope)
    if document.get("team_id"):
        await get_or_404(session, Team, uuid.UUID(str(document["team_id"])), code=Code.TEAM_NOT_FOUND, label="team")
    review = AccessReview(id=uuid.uuid4(), name=name, scope=document, status="open", opened_by=actor.name,
                          due_at=due_at, schedule_id=schedule_id, trigger=trigger)
    session.add(review)
    await session.flush()
    items = await _add_items(session, review, await rows_in_scope(session, document))
    await session.refresh(review)
    await record_event(session, actor=actor, action="review.opened", target_type="review", target_id=str(review.id),
                       after=public(schemas.ReviewPublic, review) | {"items": len(items)})
    return review


# -- reading --------------------------------------------------------------------------------------


async def get_review(session: AsyncSession, *, review_id: uuid.UUID) -> AccessReview:
    return await get_or_404(session, AccessReview, review_id, code=Code.REVIEW_NOT_FOUND, label="review")


async def get_item(session: AsyncSession, *, review_id: uuid.UUID, item_id: uuid.UUID) -> AccessReviewItem:
    item = await session.get(AccessReviewItem, item_id)
    if item is None or item.review_id != review_id:
        raise NotFound(Code.REVIEW_ITEM_NOT_FOUND, f"Review {review_id} has no item {item_id}.")
    return item


def _of_team(team_id: uuid.UUID) -> Any:
    """SQL: the item's subject belongs to ``team_id``."""
    return or_(*(AccessReviewItem.subject_id.in_(select(model.id).where(model.team_id == team_id))
                 for model in _TEAMED.values()))


async def list_reviews(session: AsyncSession, *, within_team: uuid.UUID | None, status: str | None,
                       cursor: str | None, limit: int) -> dict[str, Any]:
    query: Select = select(AccessReview)
    if status:
        query = query.where(AccessReview.status == status)
    if within_team is not None:
        query = query.where(exists().where(AccessReviewItem.review_id == AccessReview.id, _of_team(within_team)))
    page = await paginate(session, query, sort=AccessReview.opened_at, id_col=AccessReview.id, cursor=cursor,
                          limit=limit, descending=True)
    progress = await progress_of(session, [review.id for review in page["items"]], within_team=within_team)
    page["items"] = [public(schemas.ReviewPublic, review) | {"progress": progress.get(review.id, _empty())}
                     for review in page["items"]]
    return page


async def items_of(session: AsyncSession, review_ids: Sequence[uuid.UUID], *,
                   within_team: uuid.UUID | None = None) -> list[AccessReviewItem]:
    query = select(AccessReviewItem).where(AccessReviewItem.review_id.in_(list(review_ids)))
    if within_team is not None:
        query = query.where(_of_team(within_team))
    return list((await session.scalars(query.order_by(AccessReviewItem.subject_type, AccessReviewItem.id))).all())


async def _exceptions_of(session: AsyncSession, items: Iterable[AccessReviewItem]) -> dict[uuid.UUID, AccessException]:
    ids = [item.exception_id for item in items if item.exception_id is not None]
    if not ids:
        return {}
    return {e.id: e for e in (await session.scalars(select(AccessException).where(AccessException.id.in_(ids))))}


def state_of(item: AccessReviewItem, exception: AccessException | None) -> str:
    if item.decision is None:
        return "open"
    if item.decision == "escalate":
        return "escalated"
    if item.decision == "keep" and item.exception_id is not None and (exception is None
                                                                      or exception.status != "approved"):
        return "awaiting_exception"
    return "decided"


def _empty() -> dict[str, int]:
    return {"items": 0, "decided": 0, "open": 0, "escalated": 0, "awaiting_exception": 0}


async def progress_of(session: AsyncSession, review_ids: Sequence[uuid.UUID], *,
                      within_team: uuid.UUID | None = None) -> dict[uuid.UUID, dict[str, int]]:
    items = await items_of(session, review_ids, within_team=within_team)
    exceptions = await _exceptions_of(session, items)
    found: dict[uuid.UUID, dict[str, int]] = {}
    for item in items:
        counts = found.setdefault(item.review_id, _empty())
        counts["items"] += 1
        counts[state_of(item, exceptions.get(item.exception_id) if item.exception_id else None)] += 1
    return found


def suggested_models(snapshot: dict[str, Any]) -> list[str]:
    """The models the credential actually called in the 30 days before the snapshot (the register's
    ``usage.models_30d``, per provider): the narrowing offered."""
    used = (snapshot.get("usage") or {}).get("models_30d") or {}
    return sorted({str(model) for models in used.values() for model in models})


def item_document(item: AccessReviewItem, exception: AccessException | None) -> dict[str, Any]:
    return public(schemas.ReviewItemPublic, item) | {"state": state_of(item, exception),
                                                     "suggested_models": suggested_models(item.snapshot)}


async def review_document(session: AsyncSession, review: AccessReview, *,
                          within_team: uuid.UUID | None = None) -> dict[str, Any]:
    items = await items_of(session, [review.id], within_team=within_team)
    exceptions = await _exceptions_of(session, items)
    documents = [item_document(item, exceptions.get(item.exception_id) if item.exception_id else None)
                 for item in items]
    counts = _empty()
    for document in documents:
        counts["items"] += 1
        counts[document["state"]] += 1
    return public(schemas.ReviewPublic, review) | {"progress": counts, "items": documents}


async def item_with_state(session: AsyncSession, item: AccessReviewItem) -> dict[str, Any]:
    exception = await session.get(AccessException, item.exception_id) if item.exception_id else None
    return item_document(item, exception)


def require_open(review: AccessReview) -> None:
    if review.status != "open":
        raise Conflict(Code.REVIEW_CLOSED, f"Review {review.name} is closed; its items can no longer change.")


async def reopen(session: AsyncSession, *, actor: Actor, item: AccessReviewItem, why: str) -> None:
    """Clear an item's decision so it is reviewed again (its exception was rejected, withdrawn or expired).
    An item of a closed review is not touched (its report is final): the subject gets an item in the open
    triggered review for ``why`` instead."""
    review = await get_review(session, review_id=item.review_id)
    if review.status != "open":
        await triggered(session, actor=actor, trigger=why, subjects=[(item.subject_type, item.subject_id)],
                        detail={"previous_item": str(item.id), "previous_review": str(review.id)})
        return
    before = public(schemas.ReviewItemPublic, item)
    item.decision = item.decided_by = item.decided_at = None
    item.reason = None
    item.reopened_at = datetime.now(UTC)
    await session.flush()
    await record_event(session, actor=actor, action="review.item_reopened", target_type="review_item",
                       target_id=str(item.id), before=before,
                       after=public(schemas.ReviewItemPublic, item) | {"why": why})


# -- closing and the report -----------------------------------------------------------------------


async def build_report(session: AsyncSession, review: AccessReview) -> dict[str, Any]:
    items = await items_of(session, [review.id])
    exceptions = await _exceptions_of(session, items)
    tied = (await session.scalars(select(AccessException).where(
        AccessException.review_item_id.in_([item.id for item in items])))).all() if items else []
    every = {e.id: e for e in (*exceptions.values(), *tied)}
    rows, remaining = [], []
    counts = _empty()
    for item in items:
        state = state_of(item, exceptions.get(item.exception_id) if item.exception_id else None)
        counts["items"] += 1
        counts[state] += 1
        snapshot = item.snapshot
        rows.append({
            "item_id": str(item.id), "subject_type": item.subject_type, "subject_id": str(item.subject_id),
            "subject": snapshot.get("name") or snapshot.get("alias") or str(item.subject_id),
            "owner": snapshot.get("owner"), "flags": snapshot.get("flags"), "reviewer": item.reviewer,
            "state": state, "decision": item.decision, "reason": item.reason, "decided_by": item.decided_by,
            "decided_at": _iso(item.decided_at), "changed": item.result, "reopened_at": _iso(item.reopened_at),
            "exception_id": str(item.exception_id) if item.exception_id else None,
        })
        if state != "decided":
            remaining.append({"item_id": str(item.id), "subject_type": item.subject_type,
                              "subject_id": str(item.subject_id), "state": state, "reviewer": item.reviewer})
    return _plain({
        "review": {"id": str(review.id), "name": review.name, "scope": review.scope, "opened_by": review.opened_by,
                   "opened_at": _iso(review.opened_at), "due_at": _iso(review.due_at), "closed_by": review.closed_by,
                   "closed_at": _iso(review.closed_at), "trigger": review.trigger,
                   "schedule_id": str(review.schedule_id) if review.schedule_id else None},
        "counts": counts,
        "items": rows,
        "remaining_open": remaining,
        "exceptions": [{"id": str(e.id), "subject_type": e.subject_type, "subject_id": str(e.subject_id),
                        "condition": e.condition, "reason": e.reason, "status": e.status,
                        "requested_by": e.requested_by, "approved_by": e.approved_by,
                        "expires_at": _iso(e.expires_at), "decided_at": _iso(e.decided_at)}
                       for e in sorted(every.values(), key=lambda e: str(e.id))],
    })


async def close_review(session: AsyncSession, *, actor: Actor, review_id: uuid.UUID) -> AccessReview:
    """Close a review: store its report and the report's sha256, and record ``review.closed`` with the hash."""
    review = await get_review(session, review_id=review_id)
    require_open(review)
    before = public(schemas.ReviewPublic, review)
    review.status = "closed"
    review.closed_by = actor.name
    review.closed_at = datetime.now(UTC)
    report = await build_report(session, review)
    review.report = report
    review.report_sha256 = sha256_of(report)
    await session.flush()
    await record_event(session, actor=actor, action="review.closed", target_type="review", target_id=str(review.id),
                       before=before, after=public(schemas.ReviewPublic, review)
                       | {"report_sha256": review.report_sha256, "counts": report["counts"]})
    return review


REPORT_COLUMNS = ("item_id", "subject_type", "subject_id", "subject", "reviewer", "state", "decision", "reason",
                  "decided_by", "decided_at", "reopened_at", "exception_id", "changed")


def report_csv(report: dict[str, Any]) -> str:
    """The report's items, one row each (``changed`` as JSON)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(REPORT_COLUMNS)
    for row in report.get("items", []):
        writer.writerow([json.dumps(row.get(c), sort_keys=True) if c == "changed" else row.get(c) or ""
                         for c in REPORT_COLUMNS])
    return out.getvalue()


# -- triggers -------------------------------------------------------------------------------------


async def triggered(session: AsyncSession, *, actor: Actor, trigger: str,
                    subjects: Sequence[tuple[str, uuid.UUID]], detail: dict[str, Any] | None = None) -> int:
    """Add items for ``subjects`` to the open review for ``trigger`` (opened now if there is none); a
    subject with an undecided item there already is not added twice. Returns the items added."""
    if not subjects:
        return 0
    review = await session.scalar(select(AccessReview).where(
        AccessReview.status == "open", AccessReview.trigger == trigger, AccessReview.schedule_id.is_(None))
        .order_by(AccessReview.opened_at.desc()).limit(1))
    if review is None:
        review = AccessReview(id=uuid.uuid4(), name=f"Triggered: {trigger.replace('_', ' ')}",
                              scope={"trigger": trigger}, status="open", opened_by=actor.name,
                              due_at=datetime.now(UTC) + timedelta(days=TRIGGERED_DUE_DAYS), trigger=trigger)
        session.add(review)
        await session.flush()
        await session.refresh(review)
        await record_event(session, actor=actor, action="review.opened", target_type="review",
                           target_id=str(review.id), after=public(schemas.ReviewPublic, review))
    pending = set((await session.scalars(select(AccessReviewItem.subject_id).where(
        AccessReviewItem.review_id == review.id, AccessReviewItem.decision.is_(None)))).all())
    wanted = {ident for _, ident in subjects if ident not in pending}
    # Asked for a service account, the register also gives its tokens: the trigger is about the account.
    rows = [row for row in await rows_in_scope(session, {}, wanted) if uuid.UUID(str(row["id"])) in wanted] \
        if wanted else []
    items = await _add_items(session, review, rows, {"trigger": {"kind": trigger, **(detail or {})}})
    for item in items:
        await record_event(session, actor=actor, action="review.item_added", target_type="review",
                           target_id=str(review.id),
                           after={"item_id": str(item.id), "subject_type": item.subject_type,
                                  "subject_id": str(item.subject_id), "trigger": trigger, **(detail or {})})
    return len(items)


async def on_owner_change(session: AsyncSession, *, actor: Actor, account: ServiceAccount,
                          before: dict[str, Any]) -> None:
    """A service account's owners changed: its new owners' stewardship is reviewed."""
    changed = {}
    for role in ("business", "technical", "security", "finance"):
        field = f"{role}_owner_id"
        now = _str(getattr(account, field, None))
        if field in before and before[field] != now:
            changed[role] = now
    if changed:
        await triggered(session, actor=actor, trigger="owner_change", subjects=[("service_account", account.id)],
                        detail={"owners": changed})


def _str(value: Any) -> str | None:
    return str(value) if value is not None else None


def _entries(catalog: Iterable[dict[str, Any]] | None) -> set[tuple[str, str]]:
    return {(str(e.get("provider")), str(e.get("pattern"))) for e in catalog or []}


def _widening(before: Iterable[dict[str, Any]] | None, after: Iterable[dict[str, Any]] | None) -> tuple[str, list]:
    """("new_provider" | "scope_widening" | "", the entries gained) between two catalogs."""
    old, new = _entries(before), _entries(after)
    gained = sorted(new - old)
    if not gained:
        return "", []
    providers = {provider for provider, _ in old}
    fresh = "*" not in providers and any(provider not in providers for provider, _ in gained)
    return ("new_provider" if fresh else "scope_widening"), [{"provider": p, "pattern": m} for p, m in gained]


async def _live_tokens(session: AsyncSession, team_ids: Sequence[uuid.UUID]) -> list[tuple[str, uuid.UUID]]:
    ids = (await session.scalars(select(Token.id).where(
        Token.team_id.in_(list(team_ids)), Token.revoked_at.is_(None),
        or_(Token.expires_at.is_(None), Token.expires_at > func.now())).limit(TRIGGER_LIMIT))).all()
    return [("token", ident) for ident in ids]


def _more_permissions(before: dict[str, Any] | None, after: AccessProfile) -> dict[str, list]:
    """The endpoint families and MCP tool entries ``after`` grants that ``before`` did not."""
    families = sorted(set(after.endpoints or ()) - set((before or {}).get("endpoints") or ()))
    old_tools = {(t.get("server"), t.get("tools")) for t in (before or {}).get("tools") or ()}
    tools = [t for t in after.tools or () if (t.get("server"), t.get("tools")) not in old_tools]
    return {key: value for key, value in (("gained_endpoints", families), ("gained_tools", tools)) if value}


async def on_profile_change(session: AsyncSession, *, actor: Actor, profile: AccessProfile,
                            before: dict[str, Any]) -> None:
    """A profile's catalog gained entries, or it grants more endpoint families or MCP tools: every live
    token of every team using it is reviewed."""
    trigger, gained = _widening(before.get("catalog"), profile.catalog)
    more = _more_permissions(before, profile)
    if trigger or more:
        teams = (await session.scalars(select(Team.id).where(Team.profile_id == profile.id,
                                                             Team.deleted_at.is_(None)))).all()
        await triggered(session, actor=actor, trigger=trigger or "scope_widening",
                        subjects=await _live_tokens(session, teams),
                        detail={"profile_id": str(profile.id), "gained": gained, **more})


async def on_team_profile_change(session: AsyncSession, *, actor: Actor, team: Team,
                                 before_profile_id: uuid.UUID | None) -> None:
    """A team moved to another profile: when the new catalog is wider, the team's live tokens are reviewed."""
    if team.profile_id is None or team.profile_id == before_profile_id:
        return
    old = await session.get(AccessProfile, before_profile_id) if before_profile_id else None
    new = await session.get(AccessProfile, team.profile_id)
    trigger, gained = _widening(old.catalog if old else [], new.catalog if new else [])
    if trigger:
        await triggered(session, actor=actor, trigger=trigger, subjects=await _live_tokens(session, [team.id]),
                        detail={"team_id": str(team.id), "profile_id": str(team.profile_id), "gained": gained})


# -- schedules ------------------------------------------------------------------------------------


def _add_months(moment: datetime, months: int) -> datetime:
    month = moment.month - 1 + months
    year, month = moment.year + month // 12, month % 12 + 1
    return moment.replace(year=year, month=month, day=min(moment.day, calendar.monthrange(year, month)[1]))


def next_run(moment: datetime, cadence: str) -> datetime:
    if cadence == "weekly":
        return moment + timedelta(days=7)
    return _add_months(moment, {"monthly": 1, "quarterly": 3, "yearly": 12}[cadence])


async def create_schedule(session: AsyncSession, *, actor: Actor, data: schemas.ScheduleCreate) -> AccessReviewSchedule:
    scope = _scope_document(data.scope)
    if scope.get("team_id"):
        await get_or_404(session, Team, uuid.UUID(str(scope["team_id"])), code=Code.TEAM_NOT_FOUND, label="team")
    schedule = AccessReviewSchedule(id=uuid.uuid4(), name=data.name, scope=scope, cadence=data.cadence,
                                    due_days=data.due_days, next_run_at=data.first_run_at or datetime.now(UTC),
                                    enabled=True)
    session.add(schedule)
    await session.flush()
    await session.refresh(schedule)
    await record_event(session, actor=actor, action="review.schedule_created", target_type="review_schedule",
                       target_id=str(schedule.id), after=public(schemas.SchedulePublic, schedule))
    return schedule


async def update_schedule(session: AsyncSession, *, actor: Actor, schedule_id: uuid.UUID,
                          data: schemas.ScheduleUpdate) -> AccessReviewSchedule:
    schedule = await get_or_404(session, AccessReviewSchedule, schedule_id, code=Code.REVIEW_SCHEDULE_NOT_FOUND,
                                label="review schedule")
    before = public(schemas.SchedulePublic, schedule)
    for name, value in data.model_dump(exclude_unset=True).items():
        setattr(schedule, name, value)
    await session.flush()
    await record_event(session, actor=actor, action="review.schedule_updated", target_type="review_schedule",
                       target_id=str(schedule.id), before=before, after=public(schemas.SchedulePublic, schedule))
    return schedule


async def list_schedules(session: AsyncSession, *, cursor: str | None, limit: int) -> dict[str, Any]:
    return await paginate(session, select(AccessReviewSchedule), sort=AccessReviewSchedule.created_at,
                          id_col=AccessReviewSchedule.id, cursor=cursor, limit=limit)


async def run_schedules(session: AsyncSession, *, now: datetime | None = None) -> int:
    """Open a review for every enabled schedule whose ``next_run_at`` passed, and move it to the next
    run after now (runs missed while the control plane was down open one review, not one each)."""
    now = now or datetime.now(UTC)
    due = (await session.scalars(select(AccessReviewSchedule).where(
        AccessReviewSchedule.enabled, AccessReviewSchedule.next_run_at <= now)
        .with_for_update(skip_locked=True).limit(100))).all()
    for schedule in due:
        await open_review(session, actor=SYSTEM, name=f"{schedule.name} {now:%Y-%m-%d}", scope=schedule.scope,
                          due_at=now + timedelta(days=schedule.due_days), schedule_id=schedule.id)
        before = schedule.next_run_at
        upcoming = before
        while upcoming <= now:
            upcoming = next_run(upcoming, schedule.cadence)
        schedule.next_run_at = upcoming
        await session.flush()
        await record_event(session, actor=SYSTEM, action="review.schedule_ran", target_type="review_schedule",
                           target_id=str(schedule.id),
                           before={"next_run_at": _iso(before)}, after={"next_run_at": _iso(upcoming)})
    return len(due)

