"""Keep the token cache equal to Postgres: a snapshot at start, then LISTEN/NOTIFY.

The control plane's triggers send ``token:<id>``, ``user:<id>``, ``team:<id>``, ``profile:<id>``,
``sa:<id>`` or ``member:<user>:<team>`` on the ``keyward_changes`` channel from the transaction that
made the change (``reload`` asks for a whole new snapshot). The listener owns one dedicated connection and
does, in order: LISTEN, load the snapshot, then apply notifications one batch at a time. LISTEN comes
before the snapshot so no change can fall between the two. When the connection dies (a restart,
``pg_terminate_backend``, a network cut) it reconnects and reloads the whole snapshot, so changes made
while it was away are not lost.

What a database does (restart, terminate the backend, drop off the network) is expected and handled
here, by reconnecting and reloading; anything else propagates to the supervisor
(:mod:`authz.supervisor`), whose restart of :meth:`ChangeListener.run` reconnects and reloads too, so
the cache never stays behind Postgres.

All of this runs on the event loop's thread, off the request path: it is the only writer of the
cache, and a Check only ever reads it. Each full snapshot is built through a fresh
:class:`~authz.cache.Interner`, which the updates until the next snapshot then share.

Revocation is final when the control plane says so, and that rests on this listener:

* it keeps this replica's row in ``authz_replicas`` fresh (about every second, on the listening
  connection itself, so a heartbeat means "connected and applying"); a clean stop deletes the row;
* a revoking transaction ends with ``ack:<id>``; once everything before it in its batch is applied,
  the listener answers ``<replica>:<id>:<applied at>`` on ``keyward_acks``;
* after a (re)load, the notifications queued while the snapshot was read are applied before Checks
  are answered: a change committed after the snapshot began is never missed, not even briefly.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

import asyncpg
import structlog

from authz.cache import Interner, TokenCache
from authz.limits import Policy
from authz.metrics import LISTENER_RECONNECTS, SNAPSHOT_REVOKED, SNAPSHOT_SECONDS, SNAPSHOT_TOKENS
from authz.snapshot import AFFECTED_KINDS, load_affected, load_policy, load_snapshot, load_tokens

log = structlog.get_logger("authz.listener")

_CONNECTION_LOST = "__connection_lost__"
ACKS_CHANNEL = "keyward_acks"
#: How often the replica's row is refreshed (the control plane counts a replica alive for a few beats).
HEARTBEAT_SECONDS = 1.0
_HEARTBEAT_SQL = """
    INSERT INTO authz_replicas (id, host, pid, started_at, seen_at, stale_after_seconds, loaded_at)
    VALUES ($1, $2, $3, $4, now(), $5, $6)
    ON CONFLICT (id) DO UPDATE SET host = EXCLUDED.host, pid = EXCLUDED.pid, started_at = EXCLUDED.started_at,
        seen_at = now(), stale_after_seconds = EXCLUDED.stale_after_seconds, loaded_at = EXCLUDED.loaded_at
"""


class ChangeListener:
    """Runs forever: LISTEN, snapshot, apply notifications; reconnect and reload on any loss."""

    def __init__(
        self,
        *,
        dsn: str,
        channel: str,
        cache: TokenCache,
        replica: str | None,
        max_staleness_seconds: float,
        keepalive_seconds: float = 5.0,
        max_backoff_seconds: float = 2.0,
        on_policy: Callable[[Policy], None] | None = None,
        on_acks: Callable[[list[str]], None] | None = None,
        application_name: str = "keyward-authz-listener",
    ) -> None:
        self._application_name = application_name
        #: A passive listener (``replica`` None: the control plane's mirror of the gateway's cache) is
        #: no replica: it writes no heartbeat row and answers acks to ``on_acks``, not to the channel.
        self._on_acks = on_acks
        #: Takes every budgets / rate limits / prices policy loaded (with a snapshot, or on ``limits:*``).
        self._on_policy = on_policy
        #: This process's name among the replicas (:func:`authz.process.claim_spool`).
        self.replica = replica
        #: How long the cache may answer after the last proof that Postgres was answering.
        self._max_staleness = max_staleness_seconds
        #: Postgres's clock when the current snapshot began: changes committed before it are in it.
        self._loaded_at: datetime | None = None
        self._started_at = datetime.now(UTC)
        self._dsn = dsn
        self._channel = channel
        self._cache = cache
        self._keepalive = keepalive_seconds
        self._max_backoff = max_backoff_seconds
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        #: The compiled catalogs and profiles of the current snapshot, shared by the updates that follow it.
        self._interner = Interner()
        #: Set once the first snapshot is in the cache; authz refuses Checks until then.
        self.ready = asyncio.Event()
        self._beat = 0.0
        self._created = time.monotonic()
        #: True while the LISTEN connection is up and its notifications are being applied (metrics).
        self.connected = False

    async def run(self) -> None:
        backoff = 0.05
        while True:
            try:
                await self._session()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                log.warning("listener.disconnected", error=f"{type(exc).__name__}: {exc}")
            LISTENER_RECONNECTS.inc()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff)

    async def _session(self) -> None:
        connection = await asyncpg.connect(
            self._dsn, server_settings={"application_name": self._application_name}, timeout=10
        )
        try:
            # A fresh queue: notifications from a dead connection were covered by the snapshot below.
            self._queue = asyncio.Queue()
            connection.add_termination_listener(lambda _c: self._queue.put_nowait(_CONNECTION_LOST))
            await connection.add_listener(self._channel, lambda _c, _pid, _ch, payload: self._queue.put_nowait(payload))
            started = time.perf_counter()
            tokens = await self._reload(connection)
            elapsed = time.perf_counter() - started
            SNAPSHOT_SECONDS.set(elapsed)
            SNAPSHOT_TOKENS.set(tokens)
            log.info("snapshot.loaded", tokens=tokens, revoked=self._cache.revoked_count, seconds=round(elapsed, 3))
            await self._apply_queued(connection)
            await self._heartbeat(connection)
            self.ready.set()
            self.connected = True
            await self._apply_forever(connection)
        finally:
            self.connected = False
            if not connection.is_closed():
                connection.terminate()

    async def _reload(self, connection: asyncpg.Connection) -> int:
        """Replace the whole cache with a fresh snapshot; returns the number of live tokens loaded."""
        interner = Interner()
        loaded_at = await connection.fetchval("SELECT now()")
        snapshot = await load_snapshot(connection, interner)
        await self._reload_policy(connection)
        self._loaded_at = loaded_at
        self._cache.replace_all(snapshot.records, snapshot.revoked)
        SNAPSHOT_REVOKED.set(len(snapshot.revoked))
        # The old interner goes with the old records: catalogs no token uses any more are freed.
        self._interner = interner
        return len(snapshot.records)

    async def _reload_policy(self, connection: asyncpg.Connection) -> None:
        if self._on_policy is not None:
            self._on_policy(await load_policy(connection))

    async def _heartbeat(self, connection: asyncpg.Connection) -> None:
        """Refresh this replica's row; it also proves the connection still answers (a silent death is
        noticed within the keepalive), and so keeps the cache fresh for ``max_staleness`` more.

        Measured from before the beat is sent, so the cache turns stale no later than the control plane's
        ``seen_at + stale_after_seconds``: by the time a revocation stops waiting for a silent replica,
        that replica already refuses everything."""
        sent = time.monotonic()
        if self.replica is None:
            await asyncio.wait_for(connection.execute("SELECT 1"), timeout=self._keepalive)
        else:
            await asyncio.wait_for(connection.execute(_HEARTBEAT_SQL, self.replica, socket.gethostname(),
                                                      os.getpid(), self._started_at, self._max_staleness,
                                                      self._loaded_at),
                                   timeout=self._keepalive)
        self._beat = sent
        self._cache.fresh_until = sent + self._max_staleness

    def silence(self) -> float:
        """Seconds since the listener last heard from Postgres (since it was made, if it never has)."""
        return time.monotonic() - (self._beat or self._created)

    async def _apply_queued(self, connection: asyncpg.Connection) -> None:
        payloads = []
        while not self._queue.empty():
            payloads.append(self._queue.get_nowait())
        if _CONNECTION_LOST in payloads:
            raise ConnectionResetError("listener connection closed")
        if payloads:
            await self.apply(connection, payloads)

    async def _apply_forever(self, connection: asyncpg.Connection) -> None:
        while True:
            try:
                first = await asyncio.wait_for(self._queue.get(), timeout=HEARTBEAT_SECONDS)
            except TimeoutError:
                await self._heartbeat(connection)
                continue
            self._queue.put_nowait(first)  # keep order: the batch is everything queued now
            await self._apply_queued(connection)
            if time.monotonic() - self._beat >= HEARTBEAT_SECONDS:  # a busy channel still beats
                await self._heartbeat(connection)

    async def retire(self, pool: asyncpg.Pool) -> None:
        """On a clean stop: leave the replicas, so no revocation waits for this process any more."""
        if self.replica is not None:
            await pool.execute("DELETE FROM authz_replicas WHERE id = $1", self.replica)

    async def apply(self, connection: asyncpg.Connection, payloads: Iterable[str]) -> None:
        """Re-read the tokens, owners, teams and profiles named by ``payloads`` and fold them into the cache."""
        token_ids: set[str] = set()
        affected: dict[str, set[str]] = {kind: set() for kind in AFFECTED_KINDS}
        acks: list[str] = []
        policy_changed = False
        for payload in payloads:
            kind, _, ident = payload.partition(":")
            if kind == "ack":
                acks.append(ident)
            elif kind == "limits":
                policy_changed = True
            elif kind == "token":
                token_ids.add(ident)
            elif kind == "member":
                affected[kind].add(ident.partition(":")[0])
            elif kind in affected:
                affected[kind].add(ident)
            elif kind == "reload":
                await self._reload(connection)
                await self._acknowledge(connection, [p.partition(":")[2] for p in payloads if p.startswith("ack:")])
                return
        if token_ids:
            found = set()
            for record in await load_tokens(connection, token_ids, self._interner):
                found.add(record.token_id)
                self._cache.upsert(record)  # a revoked token stays, as a tombstone and in the revoked set
            for token_id in token_ids - found:
                self._cache.forget(token_id)
        for kind, idents in affected.items():
            if idents:
                for record in await load_affected(connection, kind, idents, self._interner):
                    self._cache.upsert(record)
        if policy_changed:
            await self._reload_policy(connection)
        await self._acknowledge(connection, acks)
        log.debug("changes.applied", tokens=len(token_ids), acks=len(acks),
                  **{k: len(v) for k, v in affected.items() if v})

    async def _acknowledge(self, connection: asyncpg.Connection, acks: list[str]) -> None:
        """Tell the control plane that everything up to these ack requests is applied (a whole batch is
        applied before any of its acks is sent, so an ack never runs ahead of a change before it)."""
        if acks and self._on_acks is not None:
            self._on_acks(acks)
        elif acks and self.replica is not None:
            applied = f"{time.time():.6f}"
            await connection.execute("SELECT pg_notify($1, x) FROM unnest($2::text[]) AS x", ACKS_CHANNEL,
                                     [f"{self.replica}:{ack}:{applied}" for ack in acks])
