"""Exceptions, and the review decisions that act on credentials.

An exception keeps a credential despite a failing condition (``owners_not_distinct``,
``rotation_overdue``, ``dormant``, ``broader_than_used``, ``review_keep``, …), for a bounded time:

* it is requested with a reason and an expiry (required, at most ``max_days`` ahead);
* someone other than the requester approves or rejects it (four eyes: refused here with 403
  ``four_eyes_required``, and by the table's CHECK should anything get past);
* when it expires, the duty (:func:`expire`) marks it ``expired``, records ``exception.expired``,
  reopens the review item it came from, and, by policy (``KEYWARD_EXPIRED_EXCEPTION_DISABLES``, on by
  default), disables the credential through the normal lifecycle.

Review decisions (:func:`decide`) live here rather than in :mod:`controlplane.services.reviews`
because carrying one out calls the lifecycle and service-account services, which themselves call the
review triggers: the import graph stays a tree. Every decision is carried out in the caller's
transaction by the same functions the API uses (``lifecycle.narrow``, ``lifecycle.rotate``,
``lifecycle.revoke``, ``service_accounts.update_service_account``, the credential revocations), whose
own events are recorded, and then ``review.item_decided`` records the item's before and after.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Select, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane import schemas
from controlplane.audit.events import Actor, record_event
from controlplane.errors import Code, Conflict, Forbidden, Invalid, NotFound
from controlplane.models import (
    AccessException,
    AccessReviewItem,
    ApiCredential,
    ScimCredential,
    ServiceAccount,
    Token,
    User,
)
from controlplane.services import api_credentials, lifecycle, reviews, scim_connections, service_accounts
from controlplane.services.rows import get_or_404, paginate, public

SYSTEM = Actor(name="system:exceptions", mechanism="system")
_SUBJECTS: dict[str, Any] = {"token": Token, "service_account": ServiceAccount, "api_credential": ApiCredential,
                             "scim_credential": ScimCredential}


def _public(exception: AccessException) -> dict[str, Any]:
    return public(schemas.ExceptionPublic, exception)


async def subject_exists(session: AsyncSession, subject_type: str, subject_id: uuid.UUID) -> Any:
    row = await session.get(_SUBJECTS[subject_type], subject_id)
    if row is None:
        raise NotFound(Code.SUBJECT_NOT_FOUND, f"No {subject_type.replace('_', ' ')} with id {subject_id}.")
    return row


async def get_exception(session: AsyncSession, *, exception_id: uuid.UUID) -> AccessException:
    return await get_or_404(session, AccessException, exception_id, code=Code.EXCEPTION_NOT_FOUND, label="exception")


# -- the exception's life -------------------------------------------------------------------------


async def request(session: AsyncSession, *, actor: Actor, data: schemas.ExceptionRequest, max_days: int,
                  review_item_id: uuid.UUID | None = None) -> AccessException:
    """File a pending exception; it counts once someone else approves it."""
    await subject_exists(session, data.subject_type, data.subject_id)
    now = datetime.now(UTC)
    if data.expires_at <= now:
        raise Invalid(Code.EXCEPTION_EXPIRY, "An exception's expiry must be in the future.")
    if data.expires_at > now + timedelta(days=max_days):
        raise Invalid(Code.EXCEPTION_EXPIRY, f"An exception may run at most {max_days} days; ask again when it ends.")
    exception = AccessException(id=uuid.uuid4(), subject_type=data.subject_type, subject_id=data.subject_id,
                                condition=data.condition, reason=data.reason, requested_by=actor.name,
                                status="pending", expires_at=data.expires_at, created_at=now,
                                review_item_id=review_item_id)
    session.add(exception)
    await session.flush()
    await session.refresh(exception)
    await record_event(session, actor=actor, action="exception.requested", target_type="exception",
                       target_id=str(exception.id), after=_public(exception))
    return exception


def _pending(exception: AccessException) -> None:
    if exception.status != "pending":
        raise Conflict(Code.EXCEPTION_NOT_PENDING, f"Exception {exception.id} is {exception.status}, not pending.")


async def _decide_exception(session: AsyncSession, *, actor: Actor, exception_id: uuid.UUID, approve: bool,
                            note: str | None) -> AccessException:
    exception = await get_exception(session, exception_id=exception_id)
    _pending(exception)
    if actor.name == exception.requested_by:
        raise Forbidden(Code.FOUR_EYES_REQUIRED, "An exception is approved or rejected by someone other than "
                                                 f"its requester ({exception.requested_by}).")
    now = datetime.now(UTC)
    if approve and exception.expires_at <= now:
        raise Conflict(Code.EXCEPTION_EXPIRY, "This exception's expiry has passed; it cannot be approved.")
    before = _public(exception)
    exception.status = "approved" if approve else "rejected"
    exception.approved_by = actor.name
    exception.decided_at = now
    await session.flush()
    await record_event(session, actor=actor, action="exception.approved" if approve else "exception.rejected",
                       target_type="exception", target_id=str(exception.id), before=before,
                       after=_public(exception) | ({"note": note} if note else {}))
    if not approve:
        await _reopen_tied(session, actor=actor, exception=exception, why="exception_rejected")
    return exception


async def approve(session: AsyncSession, *, actor: Actor, exception_id: uuid.UUID,
                  note: str | None = None) -> AccessException:
    return await _decide_exception(session, actor=actor, exception_id=exception_id, approve=True, note=note)


async def reject(session: AsyncSession, *, actor: Actor, exception_id: uuid.UUID,
                 note: str | None = None) -> AccessException:
    return await _decide_exception(session, actor=actor, exception_id=exception_id, approve=False, note=note)


async def withdraw(session: AsyncSession, *, actor: Actor, exception_id: uuid.UUID) -> AccessException:
    """End a pending or approved exception now; the item it kept is reviewed again."""
    exception = await get_exception(session, exception_id=exception_id)
    if exception.status not in ("pending", "approved"):
        raise Conflict(Code.EXCEPTION_NOT_PENDING, f"Exception {exception.id} is already {exception.status}.")
    before = _public(exception)
    exception.status = "withdrawn"
    exception.decided_at = exception.decided_at or datetime.now(UTC)
    await session.flush()
    await record_event(session, actor=actor, action="exception.withdrawn", target_type="exception",
                       target_id=str(exception.id), before=before, after=_public(exception))
    await _reopen_tied(session, actor=actor, exception=exception, why="exception_withdrawn")
    return exception


async def _reopen_tied(session: AsyncSession, *, actor: Actor, exception: AccessException, why: str) -> None:
    if exception.review_item_id is None:
        return
    item = await session.get(AccessReviewItem, exception.review_item_id)
    if item is not None and item.exception_id == exception.id:
        await reviews.reopen(session, actor=actor, item=item, why=why)


def list_query(*, within_team: uuid.UUID | None, status: str | None, subject_id: uuid.UUID | None) -> Select:
    query = select(AccessException)
    if status:
        query = query.where(AccessException.status == status)
    if subject_id is not None:
        query = query.where(AccessException.subject_id == subject_id)
    if within_team is not None:
        query = query.where(or_(*(AccessException.subject_id.in_(select(model.id).where(model.team_id == within_team))
                                  for model in (Token, ServiceAccount, ApiCredential))))
    return query


async def list_exceptions(session: AsyncSession, *, within_team: uuid.UUID | None, status: str | None,
                          subject_id: uuid.UUID | None, cursor: str | None, limit: int) -> dict[str, Any]:
    return await paginate(session, list_query(within_team=within_team, status=status, subject_id=subject_id),
                          sort=AccessException.created_at, id_col=AccessException.id, cursor=cursor, limit=limit,
                          descending=True)


async def subject_team(session: AsyncSession, subject_type: str, subject_id: uuid.UUID) -> uuid.UUID | None:
    return (await reviews.subject_teams(session, [(subject_type, subject_id)])).get(subject_id)


# -- disabling a credential -----------------------------------------------------------------------


async def disable(session: AsyncSession, *, actor: Actor, subject_type: str, subject_id: uuid.UUID,
                  reason: str, delete: bool = False) -> dict[str, Any]:
    """Stop a credential at the gateway (or at the admin API / SCIM) through its own lifecycle; the
    row and its history stay. ``delete`` also revokes a service account's tokens."""
    if subject_type == "token":
        token = await lifecycle.revoke(session, actor=actor, token_id=subject_id, reason=reason)
        return {"token_revoked": str(token.id),
                "revoked_at": token.revoked_at.isoformat() if token.revoked_at else None}
    if subject_type == "service_account":
        account = await service_accounts.get_service_account(session, account_id=subject_id)
        changed: dict[str, Any] = {}
        if account.status != "disabled":
            await service_accounts.update_service_account(session, actor=actor, account_id=subject_id,
                                                          data=schemas.ServiceAccountUpdate(status="disabled"))
            changed["service_account_disabled"] = str(subject_id)
        if delete:
            changed["tokens_revoked"] = await lifecycle.revoke_where(session, actor=actor, reason=reason,
                                                                     service_account_id=subject_id)
        return changed
    if subject_type == "api_credential":
        credential = await api_credentials.revoke_credential(session, actor=actor, credential_id=subject_id)
        return {"credential_revoked": str(credential.id)}
    scim = await subject_exists(session, "scim_credential", subject_id)
    await scim_connections.revoke_credential(session, actor=actor, connection_id=scim.connection_id,
                                             credential_id=subject_id)
    return {"scim_credential_revoked": str(subject_id)}


# -- expiry (a duty) ------------------------------------------------------------------------------


async def expire(session: AsyncSession, *, disables: bool, now: datetime | None = None) -> int:
    """Mark approved (and still pending) exceptions past their expiry as ``expired``; reopen the item each
    came from; and, when ``disables`` and the exception had been approved, disable its credential."""
    now = now or datetime.now(UTC)
    due = (await session.scalars(select(AccessException).where(
        AccessException.status.in_(("approved", "pending")), AccessException.expires_at <= now)
        .order_by(AccessException.expires_at).with_for_update(skip_locked=True).limit(500))).all()
    for exception in due:
        before = _public(exception)
        was = exception.status
        exception.status = "expired"
        await session.flush()
        disabled: dict[str, Any] | None = None
        if disables and was == "approved":
            subject = await session.get(_SUBJECTS[exception.subject_type], exception.subject_id)
            if subject is not None:
                disabled = await disable(session, actor=SYSTEM, subject_type=exception.subject_type,
                                         subject_id=exception.subject_id,
                                         reason=f"exception {exception.id} ({exception.condition}) expired")
        await record_event(session, actor=SYSTEM, action="exception.expired", target_type="exception",
                           target_id=str(exception.id), before=before,
                           after=_public(exception) | {"disabled": disabled})
        await _reopen_tied(session, actor=SYSTEM, exception=exception, why="exception_expired")
    return len(due)


# -- review decisions -----------------------------------------------------------------------------


@dataclass
class Outcome:
    item: AccessReviewItem
    #: rotate: the successors' ids and secrets, for the caller to show once.
    secrets: list[dict[str, str]] = field(default_factory=list)


def _flags(snapshot: dict[str, Any]) -> list[str]:
    """The failing conditions of a register row's ``flags``: each true flag by name, each reason of a
    list-valued one (``overdue``: rotation_overdue, never_used, dormant, …)."""
    flags = snapshot.get("flags") or {}
    if isinstance(flags, list):
        return sorted({str(flag.get("code") if isinstance(flag, dict) else flag) for flag in flags})
    found: set[str] = set()
    for name, value in flags.items():
        if name in ("reassign_by", "flagged_reason"):
            if value:
                found.add("reassignment_due")
        elif isinstance(value, list | tuple):
            found.update(str(reason.get("code") if isinstance(reason, dict) else reason) for reason in value)
        elif value:
            found.add(name)
    return sorted(found)


async def _live_tokens(session: AsyncSession, account_id: uuid.UUID) -> list[Token]:
    now = datetime.now(UTC)
    return list((await session.scalars(select(Token).where(
        Token.service_account_id == account_id, Token.revoked_at.is_(None),
        or_(Token.expires_at.is_(None), Token.expires_at > now)).order_by(Token.created_at))).all())


async def _tokens_of(session: AsyncSession, item: AccessReviewItem, decision: str) -> list[Token]:
    if item.subject_type == "token":
        return [await lifecycle.get_token(session, token_id=item.subject_id)]
    if item.subject_type == "service_account":
        return await _live_tokens(session, item.subject_id)
    kind = item.subject_type.replace("_", " ")
    raise Conflict(Code.DECISION_NOT_APPLICABLE, f"{decision} applies to tokens and service accounts, not an {kind}.")


async def _narrow(session: AsyncSession, actor: Actor, item: AccessReviewItem,
                  data: schemas.ItemDecide) -> dict[str, Any]:
    models = data.models or reviews.suggested_models(item.snapshot)
    if not models:
        raise Invalid(Code.NOTHING_TO_NARROW_TO, "No model was used in the 30 days before the review: give models, "
                                                 "or disable the credential instead.")
    changed = []
    for token in await _tokens_of(session, item, "narrow"):
        before = list(token.models)
        narrowed = await lifecycle.narrow(session, actor=actor, token_id=token.id,
                                          data=schemas.TokenNarrow(models=models))
        changed.append({"token_id": str(token.id), "models_before": before, "models_after": list(narrowed.models)})
    return {"narrowed": changed}


async def _rotate(session: AsyncSession, actor: Actor, item: AccessReviewItem, data: schemas.ItemDecide,
                  hash_key: bytes) -> tuple[dict[str, Any], list[dict[str, str]]]:
    rotated, secrets = [], []
    for token in await _tokens_of(session, item, "rotate"):
        new, secret, old = await lifecycle.rotate(session, actor=actor, token_id=token.id,
                                                  data=schemas.TokenRotate(grace_hours=data.grace_hours),
                                                  hash_key=hash_key)
        rotated.append({"token_id": str(old.id), "successor_id": str(new.id),
                        "old_expires_at": old.expires_at.isoformat() if old.expires_at else None})
        secrets.append({"token_id": str(new.id), "token": secret})
    return {"rotated": rotated}, secrets


async def _reassign(session: AsyncSession, actor: Actor, item: AccessReviewItem,
                    data: schemas.ItemDecide) -> dict[str, Any]:
    assert data.new_owner_id is not None
    owner = await get_or_404(session, User, data.new_owner_id, code=Code.USER_NOT_FOUND, label="user")
    if owner.status != "active":
        raise Conflict(Code.USER_NOT_ACTIVE, f"User {owner.email} is {owner.status}; only an active person can own it.")
    if item.subject_type == "token":
        raise Conflict(Code.TOKEN_OWNER_FIXED, "A token's owner is fixed (its secret is in its owner's hands): "
                                               "disable it and mint the new owner their own, or reassign the "
                                               "service account it belongs to.")
    if item.subject_type == "service_account":
        account = await service_accounts.get_service_account(session, account_id=item.subject_id)
        roles: list[str] | None = list(data.owner_roles) if data.owner_roles else None
        if roles is None:
            owners = {role: getattr(account, f"{role}_owner_id", None)
                      for role in ("business", "technical", "security", "finance")}
            active = set((await session.scalars(select(User.id).where(
                User.id.in_([o for o in owners.values() if o is not None]), User.status == "active"))).all())
            roles = [role for role, ident in owners.items() if ident is not None and ident not in active] or [
                "technical"]
        fields = set(schemas.ServiceAccountUpdate.model_fields)
        unsupported = [role for role in roles if f"{role}_owner_id" not in fields]
        if unsupported:
            raise Invalid(Code.DECISION_NOT_APPLICABLE,
                          f"The {', '.join(unsupported)} owner cannot be set through a service-account update.")
        before = {f"{role}_owner_id": str(getattr(account, f"{role}_owner_id", None)) for role in roles}
        update = schemas.ServiceAccountUpdate.model_validate({f"{role}_owner_id": owner.id for role in roles})
        await service_accounts.update_service_account(session, actor=actor, account_id=account.id, data=update)
        return {"reassigned": {"before": before, "after": {f"{role}_owner_id": str(owner.id) for role in roles}}}
    if item.subject_type == "api_credential":
        credential = await get_or_404(session, ApiCredential, item.subject_id, code=Code.CREDENTIAL_NOT_FOUND,
                                      label="credential")
        before_owner = str(credential.owner_id) if credential.owner_id else None
        await api_credentials.update_credential(session, actor=actor, credential_id=credential.id,
                                                data=schemas.CredentialUpdate(owner_id=owner.id))
        return {"reassigned": {"before": {"owner_id": before_owner}, "after": {"owner_id": str(owner.id)}}}
    raise Conflict(Code.DECISION_NOT_APPLICABLE, "A SCIM credential belongs to its connection, not to a person.")


async def decide(session: AsyncSession, *, actor: Actor, item: AccessReviewItem, data: schemas.ItemDecide,
                 hash_key: bytes, max_days: int) -> Outcome:
    """Carry out one decision on ``item`` through the normal lifecycle, and record ``review.item_decided``."""
    review = await reviews.get_review(session, review_id=item.review_id)
    reviews.require_open(review)
    before = public(schemas.ReviewItemPublic, item)
    secrets: list[dict[str, str]] = []
    result: dict[str, Any]
    exception_id: uuid.UUID | None = None
    if data.decision == "keep":
        flags = _flags(item.snapshot)
        result = {"kept": True}
        if flags:
            if data.exception_expires_at is None:
                raise Invalid(Code.EXCEPTION_REQUIRED, f"Keeping it despite {', '.join(flags)} needs an exception: "
                                                       "give exception_expires_at; someone else approves it.")
            exception = await request(session, actor=actor, max_days=max_days, review_item_id=item.id,
                                      data=schemas.ExceptionRequest(
                                          subject_type=item.subject_type,  # type: ignore[arg-type]
                                          subject_id=item.subject_id,
                                          condition=data.condition or ",".join(flags)[:100],
                                          reason=data.reason, expires_at=data.exception_expires_at))
            exception_id = exception.id
            result |= {"exception_id": str(exception.id), "conditions": flags}
    elif data.decision == "narrow":
        result = await _narrow(session, actor, item, data)
    elif data.decision == "rotate":
        result, secrets = await _rotate(session, actor, item, data, hash_key)
    elif data.decision == "reassign":
        result = await _reassign(session, actor, item, data)
    elif data.decision in ("disable", "delete"):
        deleting = data.decision == "delete"
        result = await disable(session, actor=actor, subject_type=item.subject_type, subject_id=item.subject_id,
                               reason=f"access review {review.name}: {data.reason}", delete=deleting)
        if deleting:
            result["deleted"] = True  # retired for good; the row and its history stay as evidence
    else:  # escalate: stays open, for the security reviewer
        result = {"escalated_from": item.reviewer}
        item.reviewer = reviews.escalation_reviewer()
    if item.exception_id is not None and item.exception_id != exception_id:
        # A new decision supersedes a keep that was waiting on (or had) an exception.
        previous = await session.get(AccessException, item.exception_id)
        if previous is not None and previous.status in ("pending", "approved"):
            prior = _public(previous)
            previous.status = "withdrawn"
            previous.decided_at = previous.decided_at or datetime.now(UTC)
            await session.flush()
            await record_event(session, actor=actor, action="exception.withdrawn", target_type="exception",
                               target_id=str(previous.id), before=prior,
                               after=_public(previous) | {"superseded_by": data.decision})
    item.decision = data.decision
    item.reason = data.reason
    item.decided_by = actor.name
    item.decided_at = datetime.now(UTC)
    item.result = result
    item.exception_id = exception_id
    await session.flush()
    await record_event(session, actor=actor, action="review.item_decided", target_type="review_item",
                       target_id=str(item.id), before=before,
                       after=public(schemas.ReviewItemPublic, item) | {"review_id": str(review.id)})
    return Outcome(item, secrets)
