"""What the admin API does, as keyword-only functions over one session each.

Every mutating function records its event through :func:`record_event` in the caller's transaction,
so a change and its audit record commit together or not at all.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Select, func, select, text, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from authz.tokens import generate_token, hash_token, token_hint
from controlplane import schemas
from controlplane.audit import chain
from controlplane.errors import Conflict, Invalid, NotFound
from controlplane.models import Event, Token, User


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


def encode_cursor(created_at: datetime, row_id: Any) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{row_id}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        created, _, row_id = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        return datetime.fromisoformat(created), row_id
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise Invalid("cursor_invalid", "The cursor is not one this API issued.") from exc


async def paginate(
    session: AsyncSession, query: Select, *, created_col: Any, id_col: Any, cursor: str | None, limit: int
) -> tuple[list[Any], str | None]:
    """Keyset pagination on ``(created_at, id)``: stable under inserts, no OFFSET scans."""
    if cursor:
        created_at, row_id = decode_cursor(cursor)
        try:
            key: Any = id_col.type.python_type(row_id)
        except (ValueError, TypeError) as exc:
            raise Invalid("cursor_invalid", "The cursor is not one this API issued.") from exc
        query = query.where(tuple_(created_col, id_col) > tuple_(created_at, key))
    rows = list((await session.scalars(query.order_by(created_col, id_col).limit(limit + 1))).all())
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    last = rows[-1]
    return rows, encode_cursor(getattr(last, created_col.key), getattr(last, id_col.key))


# -- users ----------------------------------------------------------------------------------------


async def get_user(session: AsyncSession, *, user_id: uuid.UUID) -> User:
    user = await session.get(User, user_id)
    if user is None:
        raise NotFound("user_not_found", f"No user with id {user_id}.")
    return user


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
        await revoke_user_tokens(session, actor=actor, user_id=user.id, reason="owner deprovisioned")
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


# -- tokens ---------------------------------------------------------------------------------------


async def get_token(session: AsyncSession, *, token_id: uuid.UUID) -> Token:
    token = await session.get(Token, token_id)
    if token is None:
        raise NotFound("token_not_found", f"No token with id {token_id}.")
    return token


async def mint_token(
    session: AsyncSession, *, actor: Actor, data: schemas.TokenCreate, hash_key: bytes, default_days: int, max_days: int
) -> tuple[Token, str]:
    """Create a token and return it with its secret, which the caller shows once and forgets."""
    owner = await get_user(session, user_id=data.user_id)
    if owner.status != "active":
        raise Conflict(
            "user_not_active", f"User {owner.id} is {owner.status}; tokens can only be minted for active users."
        )
    days = data.expires_in_days or default_days
    if days > max_days:
        raise Invalid("lifetime_too_long", f"expires_in_days may be at most {max_days}.")
    secret = generate_token()
    token = Token(
        id=uuid.uuid4(),
        token_hash=hash_token(secret, hash_key),
        hint=token_hint(secret),
        name=data.name,
        user_id=owner.id,
        team=data.team,
        environment=data.environment,
        models=list(dict.fromkeys(data.models)),
        scopes=sorted(set(data.scopes)),
        created_by=actor.name,
        expires_at=datetime.now(UTC) + timedelta(days=days),
    )
    session.add(token)
    await session.flush()
    await session.refresh(token)
    await record_event(
        session,
        actor=actor,
        action="token.issued",
        target_type="token",
        target_id=str(token.id),
        after=_public(schemas.TokenPublic, token),
    )
    return token, secret


async def revoke_token(session: AsyncSession, *, actor: Actor, token_id: uuid.UUID, reason: str | None) -> Token:
    """Revoke one token. Revoking a revoked token changes nothing and succeeds (idempotent)."""
    token = await get_token(session, token_id=token_id)
    if token.revoked_at is not None:
        return token
    before = _public(schemas.TokenPublic, token)
    token.revoked_at = datetime.now(UTC)
    token.revoked_by = actor.name
    token.revoke_reason = reason
    await session.flush()
    await record_event(
        session,
        actor=actor,
        action="token.revoked",
        target_type="token",
        target_id=str(token.id),
        before=before,
        after=_public(schemas.TokenPublic, token),
    )
    return token


async def revoke_user_tokens(session: AsyncSession, *, actor: Actor, user_id: uuid.UUID, reason: str) -> int:
    revoked = (
        await session.scalars(
            update(Token)
            .where(Token.user_id == user_id, Token.revoked_at.is_(None))
            .values(revoked_at=func.now(), revoked_by=actor.name, revoke_reason=reason)
            .returning(Token.id)
        )
    ).all()
    for token_id in revoked:
        await record_event(
            session,
            actor=actor,
            action="token.revoked",
            target_type="token",
            target_id=str(token_id),
            after={"reason": reason},
        )
    return len(revoked)
