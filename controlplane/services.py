"""What the admin API does, as keyword-only functions over one session each.

Every mutating function records its event through :func:`record_event` in the caller's transaction,
so a change and its audit record commit together or not at all.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Select, func, select, text, tuple_
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane import schemas
from controlplane.audit import chain
from controlplane.errors import Conflict, Invalid, NotFound
from controlplane.models import Event, User

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Actor:
    """Who did it, and through which door (``api``, ``cli``, ``scim``, ``oidc``, ``system``)."""

    name: str
    mechanism: str = "api"


async def record_event(
    session: AsyncSession,
    *,
    actor: Actor,
    action: str,
    target_type: str,
    target_id: str,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> Event:
    """Append one event to the events hash chain, inside the caller's transaction.

    The advisory lock serialises writers until commit, so seq and prev_hash always name the row
    committed just before; it is released with the transaction, whatever its outcome.
    """
    await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": chain.LOCKS[chain.EVENTS]})
    head = (await session.execute(select(Event.seq, Event.hash).order_by(Event.seq.desc()).limit(1))).first()
    seq, prev_hash = (head[0] + 1, head[1]) if head else (1, chain.GENESIS)
    event = Event(
        seq=seq,
        at=datetime.now(UTC),
        actor=actor.name,
        mechanism=actor.mechanism,
        action=action,
        target_type=target_type,
        target_id=target_id,
        before=before,
        after=after,
        prev_hash=prev_hash,
    )
    event.hash = chain.link(chain.EVENTS, prev_hash, _event_fields(event))
    session.add(event)
    await session.flush()
    return event


def _event_fields(event: Event) -> dict[str, Any]:
    return {field: getattr(event, field) for field in chain.FIELDS[chain.EVENTS]}


def _public(model: type[schemas._Output], row: Any) -> dict[str, Any]:
    return model.model_validate(row).model_dump(mode="json")


# -- pagination -----------------------------------------------------------------------------------


def _tagged(value: Any) -> str:
    if isinstance(value, datetime):
        return "d" + value.isoformat()
    if isinstance(value, int):
        return "i" + str(value)
    return "s" + str(value)


def _untagged(text_value: str) -> Any:
    tag, rest = text_value[:1], text_value[1:]
    if tag == "d":
        return datetime.fromisoformat(rest)
    if tag == "i":
        return int(rest)
    if tag == "s":
        return rest
    raise ValueError(tag)


def encode_cursor(value: Any, row_id: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps([_tagged(value), str(row_id)]).encode()).decode()


def decode_cursor(cursor: str) -> tuple[Any, str]:
    try:
        value, row_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        return _untagged(value), row_id
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError) as exc:
        raise Invalid("cursor_invalid", "The cursor is not one this API issued.") from exc


#: A timestamp earlier than any row, so NULL sorts first under keyset pagination.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


async def paginate(
    session: AsyncSession,
    query: Select,
    *,
    sort: Any,
    id_col: Any,
    cursor: str | None,
    limit: int,
    descending: bool = False,
) -> tuple[list[Any], str | None]:
    """Keyset pagination on ``(sort, id)``: stable under inserts, no OFFSET scans. ``sort`` may be a
    column or an expression (``coalesce(last_used_at, EPOCH)``); the cursor carries its value."""
    key = query.add_columns(sort.label("_sort_key"))
    if cursor:
        value, row_id = decode_cursor(cursor)
        try:
            ident = id_col.type.python_type(row_id)
        except (ValueError, TypeError) as exc:
            raise Invalid("cursor_invalid", "The cursor is not one this API issued.") from exc
        key_now, key_then = tuple_(sort, id_col), tuple_(value, ident)
        after = key_now < key_then if descending else key_now > key_then
        key = key.where(after)
    order = (sort.desc(), id_col.desc()) if descending else (sort, id_col)
    rows = list((await session.execute(key.order_by(*order).limit(limit + 1))).all())
    items = [row[0] for row in rows[:limit]]
    if len(rows) <= limit:
        return items, None
    last = rows[limit - 1]
    return items, encode_cursor(last[-1], getattr(last[0], id_col.key))


# -- users ----------------------------------------------------------------------------------------


async def get_or_404(session: AsyncSession, model: type[T], ident: Any, *, code: str, label: str) -> T:
    """The row of ``model`` with primary key ``ident``, or a 404 with a stable code."""
    row = await session.get(model, ident)
    if row is None:
        raise NotFound(code, f"No {label} with id {ident}.")
    return row


async def get_user(session: AsyncSession, *, user_id: uuid.UUID) -> User:
    return await get_or_404(session, User, user_id, code="user_not_found", label="user")


async def create_user(session: AsyncSession, *, actor: Actor, data: schemas.UserCreate) -> User:
    exists = await session.scalar(select(User.id).where(func.lower(User.email) == data.email.lower()))
    if exists is not None:
        raise Conflict("user_exists", f"A user with email {data.email} already exists.")
    user = User(id=uuid.uuid4(), email=data.email, display_name=data.display_name, external_id=data.external_id)
    session.add(user)
    try:
        await session.flush()
    except IntegrityError as exc:  # a concurrent create won the race on the unique index
        raise Conflict("user_exists", f"A user with email {data.email} already exists.") from exc
    await session.refresh(user)
    await record_event(
        session,
        actor=actor,
        action="user.created",
        target_type="user",
        target_id=str(user.id),
        after=_public(schemas.UserPublic, user),
    )
    return user


async def update_user(session: AsyncSession, *, actor: Actor, user_id: uuid.UUID, data: schemas.UserUpdate) -> User:
    user = await get_user(session, user_id=user_id)
    before = _public(schemas.UserPublic, user)
    changes = data.model_dump(exclude_unset=True, exclude_none=True)
    if not changes:
        return user
    for field, value in changes.items():
        setattr(user, field, value)
    await session.flush()
    if changes.get("status") == "deprovisioned":
        from controlplane import tokens  # tokens builds on this module

        await tokens.revoke_where(session, actor=actor, reason="owner deprovisioned", user_id=user.id)
    await session.refresh(user)
    action = {"active": "user.activated", "suspended": "user.suspended", "deprovisioned": "user.deprovisioned"}.get(
        changes.get("status", ""), "user.updated"
    )
    await record_event(
        session,
        actor=actor,
        action=action,
        target_type="user",
        target_id=str(user.id),
        before=before,
        after=_public(schemas.UserPublic, user),
    )
    return user
