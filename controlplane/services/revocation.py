"""Revocation is final when the API says so: a revoke answers once every live authz replica has applied it.

A revoking request runs in :func:`revoking`: its transaction also sends ``ack:<id>`` on the changes
channel, after the rows it changed, so a replica applies those rows before it reaches the ack. After
commit, the control plane waits (at most ``KEYWARD_REVOCATION_WAIT_SECONDS``) until every replica seen
alive in the last few seconds (``authz_replicas``) has answered on ``keyward_acks`` with the time it
applied the change. The answer says which replicas confirmed, and which did not within the wait:
"from this response on, the gateway refuses" holds exactly when ``applied`` is true. The outcome is
recorded as a ``revocation.confirmed`` event with each replica's applied time, which is the instant
to measure "no request after the revocation" against (an event's own time is taken before its
transaction commits).

Every control-plane process keeps one LISTEN connection for acks (:class:`AckListener`), opened at
start-up and reopened after any loss; a waiter registered before commit cannot miss its acks.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import structlog
from sqlalchemy import delete, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from authz.config import asyncpg_dsn
from controlplane.audit.events import Actor, record_event
from controlplane.core.config import get_settings
from controlplane.core.db import get_sessionmaker
from controlplane.metrics import REVOCATION_CONFIRM
from controlplane.models import AuthzReplica

log = structlog.get_logger("controlplane.revocation")

CHANGES_CHANNEL = "keyward_changes"
ACKS_CHANNEL = "keyward_acks"
#: A replica is waited for while it may still be allowing requests: until its last heartbeat plus its
#: own staleness bound (``stale_after_seconds``; past it the replica refuses everything), plus this
#: margin. A replica that lost Postgres therefore shows as unconfirmed rather than being forgotten
#: while it can still serve. One that stopped cleanly has left the table.
MARGIN_SECONDS = 2.0
#: While waiting, how often the replicas' rows are read again: one that stopped cleanly is no longer
#: waited for, and one whose snapshot began after the commit has the change, ack or not.
POLL_SECONDS = 0.25


@dataclass
class Confirmation:
    """What the replicas said about one revocation."""

    applied: bool
    #: Replica id -> when it applied the change (its own clock).
    confirmed: dict[str, datetime] = field(default_factory=dict)
    unconfirmed: list[str] = field(default_factory=list)
    waited_ms: int = 0

    def document(self) -> dict[str, Any]:
        return {"applied": self.applied, "confirmed": {k: v.isoformat() for k, v in self.confirmed.items()},
                "unconfirmed": self.unconfirmed, "waited_ms": self.waited_ms}


class _Pending:
    def __init__(self) -> None:
        self.acks: dict[str, datetime] = {}
        self.arrived = asyncio.Event()


class AckListener:
    """The process's LISTEN connection on ``keyward_acks``, and the waiters for each ack id."""

    def __init__(self, dsn: str, *, max_backoff: float = 1.0) -> None:
        self._dsn = dsn
        self._max_backoff = max_backoff
        self._pending: dict[str, _Pending] = {}
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="revocation-acks")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            try:
                await self._listen()
            except Exception as exc:  # a lost connection, an outage: listen again, whatever it was
                log.warning("revocation.listener_lost", error=f"{type(exc).__name__}: {exc}")
            self.listening.clear()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff)

    async def _listen(self) -> None:
        connection = await asyncpg.connect(self._dsn, timeout=10,
                                           server_settings={"application_name": "keyward-controlplane-acks"})
        lost = asyncio.Event()
        try:
            connection.add_termination_listener(lambda _c: lost.set())
            await connection.add_listener(ACKS_CHANNEL, lambda _c, _pid, _ch, payload: self._arrived(payload))
            self.listening.set()
            while not lost.is_set():
                try:
                    await asyncio.wait_for(lost.wait(), timeout=5)
                except TimeoutError:  # a quiet channel: prove the connection still answers
                    await asyncio.wait_for(connection.fetchval("SELECT 1"), timeout=5)
        finally:
            if not connection.is_closed():
                connection.terminate()

    def _arrived(self, payload: str) -> None:
        # "<replica>:<ack id>:<applied at>"; a replica id has colons of its own (host:pid:random).
        parts = payload.rsplit(":", 2)
        if len(parts) != 3:
            return
        replica, ack_id, applied = parts
        pending = self._pending.get(ack_id)
        if pending is None:
            return
        try:
            at = datetime.fromtimestamp(float(applied), tz=UTC)
        except ValueError:
            at = datetime.now(UTC)
        pending.acks[replica] = at
        pending.arrived.set()

    def expect(self, ack_id: str) -> _Pending:
        pending = self._pending[ack_id] = _Pending()
        return pending

    def forget(self, ack_id: str) -> None:
        self._pending.pop(ack_id, None)

    async def wait(self, ack_id: str, replicas: set[str], within: float,
                   recheck: Callable[[set[str]], Awaitable[dict[str, datetime | None]]] | None = None,
                   ) -> Confirmation:
        """Wait until every replica in ``replicas`` has confirmed ``ack_id``, for at most ``within``
        seconds. ``recheck(missing)`` returns, for each missing replica that still has a row, a time
        at which it is known to have the change (its snapshot began after the commit) or None: a
        replica without a row stopped cleanly and is not waited for any more."""
        pending = self._pending[ack_id]
        started = time.monotonic()
        deadline = started + within
        needed = set(replicas)
        # Acks arrive through a callback on this same event loop, so nothing lands between a check
        # and the clear that follows it.
        while not needed <= set(pending.acks):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            pending.arrived.clear()
            try:
                await asyncio.wait_for(pending.arrived.wait(),
                                       timeout=remaining if recheck is None else min(remaining, POLL_SECONDS))
            except TimeoutError:
                if recheck is None:
                    break
                missing = needed - set(pending.acks)
                found = await recheck(missing)
                needed -= missing - set(found)
                for replica, loaded in found.items():
                    if loaded is not None:
                        pending.acks.setdefault(replica, loaded)
        waited = int((time.monotonic() - started) * 1000)
        confirmed = {replica: at for replica, at in pending.acks.items() if replica in needed}
        missing_now = sorted(needed - set(confirmed))
        return Confirmation(applied=not missing_now, confirmed=confirmed, unconfirmed=missing_now,
                            waited_ms=waited)


_listener: AckListener | None = None


def listener() -> AckListener:
    global _listener
    if _listener is None:
        _listener = AckListener(asyncpg_dsn(get_settings().database_url))
    return _listener


async def live_replicas(session: AsyncSession) -> tuple[set[str], datetime]:
    """The replicas that may still be allowing requests, and Postgres's clock now (after the commit
    that is being confirmed, so a snapshot that began later has it). Both by Postgres's clock alone."""
    now = (await session.execute(text("SELECT now()"))).scalar_one()
    may_serve = AuthzReplica.seen_at + func.make_interval(
        0, 0, 0, 0, 0, 0, AuthzReplica.stale_after_seconds + MARGIN_SECONDS) > now
    return set((await session.scalars(select(AuthzReplica.id).where(may_serve))).all()), now


def _recheck(committed_at: datetime) -> Callable[[set[str]], Awaitable[dict[str, datetime | None]]]:
    async def recheck(missing: set[str]) -> dict[str, datetime | None]:
        async with get_sessionmaker()() as session:
            rows = (await session.execute(select(AuthzReplica.id, AuthzReplica.loaded_at)
                                          .where(AuthzReplica.id.in_(missing)))).all()
        return {replica: loaded if loaded is not None and loaded > committed_at else None
                for replica, loaded in rows}

    return recheck


@dataclass
class Revoking:
    """A revocation in progress: its session, and once committed, what the replicas said. A body that
    turns out to revoke nothing (an update that deactivated no one) sets ``needed`` to False, and then
    nothing is waited for or recorded."""

    session: AsyncSession
    confirmation: Confirmation | None = None
    needed: bool = True

    def header(self) -> str:
        """The ``Keyward-Revocation`` response header, for protocols whose bodies are not ours (SCIM)."""
        if self.confirmation is None:
            return "none"
        if self.confirmation.applied:
            return "applied"
        return "unconfirmed; replicas=" + ",".join(self.confirmation.unconfirmed)


@asynccontextmanager
async def revoking(*, actor: Actor, target_type: str, target_id: str) -> AsyncIterator[Revoking]:
    """Run the body in a transaction that also asks every replica to confirm, then wait for them.

    A body that raises rolls everything back and waits for nothing."""
    acks = listener()
    ack_id = uuid.uuid4().hex
    acks.expect(ack_id)
    try:
        async with get_sessionmaker()() as session, session.begin():
            state = Revoking(session)
            yield state
            if state.needed:
                # Last in the transaction: NOTIFYs are delivered in order, so this follows every change.
                await session.execute(text("SELECT pg_notify(:channel, :payload)"),
                                      {"channel": CHANGES_CHANNEL, "payload": f"ack:{ack_id}"})
        if not state.needed:
            return
        committed = time.monotonic()
        async with get_sessionmaker()() as session:
            replicas, committed_at = await live_replicas(session)
        state.confirmation = await acks.wait(ack_id, replicas, get_settings().revocation_wait_seconds,
                                             _recheck(committed_at))
        REVOCATION_CONFIRM.observe(time.monotonic() - committed)
    finally:
        acks.forget(ack_id)
    async with get_sessionmaker()() as session, session.begin():
        await record_event(session, actor=actor, action="revocation.confirmed", target_type=target_type,
                           target_id=target_id, after=state.confirmation.document())
    if not state.confirmation.applied:
        log.warning("revocation.unconfirmed", target_type=target_type, target_id=target_id,
                    unconfirmed=state.confirmation.unconfirmed)


async def forget_departed(session: AsyncSession, *, older_than: timedelta = timedelta(days=1)) -> int:
    """Drop the rows of replicas that stopped beating long ago (crashed ones never say goodbye)."""
    cutoff = datetime.now(UTC) - older_than
    result = await session.execute(delete(AuthzReplica).where(AuthzReplica.seen_at < cutoff))
    return int(getattr(result, "rowcount", 0) or 0)
