"""The events chain: who did what, through which door, recorded in the transaction of the change.

Every mutating service function calls :func:`record_event` inside the caller's transaction, so a
change and its audit record commit together or not at all, with the signed checkpoint of the new
head (:mod:`controlplane.audit.signing`). The transaction-scoped advisory lock
serialises writers until commit, so ``seq`` and ``prev_hash`` always name the row committed just
before; it is released with the transaction, whatever its outcome.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.audit import chain, signing
from controlplane.models import Event


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
    """Append one event to the events hash chain, inside the caller's transaction."""
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
    fields = {field: getattr(event, field) for field in chain.FIELDS[chain.EVENTS]}
    event.hash = chain.link(chain.EVENTS, prev_hash, fields)
    session.add(event)
    await session.flush()
    row = signing.current().checkpoint(chain.EVENTS, seq, event.hash)
    await session.execute(
        text("INSERT INTO audit_checkpoints (chain, seq, hash, kind, signature) "
             "VALUES (:chain, :seq, :hash, :kind, :signature)"),
        dict(zip(("chain", "seq", "hash", "kind", "signature"), row, strict=True)))
    return event
