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
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

import asyncpg
import structlog

from authz.cache import Interner, TokenCache
from authz.metrics import LISTENER_RECONNECTS, SNAPSHOT_REVOKED, SNAPSHOT_SECONDS, SNAPSHOT_TOKENS
from authz.snapshot import AFFECTED_KINDS, load_affected, load_snapshot, load_tokens

log = structlog.get_logger("authz.listener")

_CONNECTION_LOST = "__connection_lost__"


class ChangeListener:
    """Runs forever: LISTEN, snapshot, apply notifications; reconnect and reload on any loss."""

    def __init__(
        self,
        *,
        dsn: str,
        channel: str,
        cache: TokenCache,
        keepalive_seconds: float = 5.0,
        max_backoff_seconds: float = 2.0,
    ) -> None:
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
            self._dsn, server_settings={"application_name": "keyward-authz-listener"}, timeout=10
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
            self.ready.set()
            await self._apply_forever(connection)
        finally:
            if not connection.is_closed():
                connection.terminate()

    async def _reload(self, connection: asyncpg.Connection) -> int:
        """Replace the whole cache with a fresh snapshot; returns the number of live tokens loaded."""
        interner = Interner()
        snapshot = await load_snapshot(connection, interner)
        self._cache.replace_all(snapshot.records, snapshot.revoked)
        SNAPSHOT_REVOKED.set(len(snapshot.revoked))
        # The old interner goes with the old records: catalogs no token uses any more are freed.
        self._interner = interner
        return len(snapshot.records)

    async def _apply_forever(self, connection: asyncpg.Connection) -> None:
        while True:
            try:
                first = await asyncio.wait_for(self._queue.get(), timeout=self._keepalive)
            except TimeoutError:
                # Quiet channel: prove the connection still answers, so a silent death is noticed.
                await asyncio.wait_for(connection.fetchval("SELECT 1"), timeout=self._keepalive)
                continue
            payloads = [first]
            while not self._queue.empty():
                payloads.append(self._queue.get_nowait())
            if _CONNECTION_LOST in payloads:
                raise ConnectionResetError("listener connection closed")
            await self.apply(connection, payloads)

    async def apply(self, connection: asyncpg.Connection, payloads: Iterable[str]) -> None:
        """Re-read the tokens, owners, teams and profiles named by ``payloads`` and fold them into the cache."""
        token_ids: set[str] = set()
        affected: dict[str, set[str]] = {kind: set() for kind in AFFECTED_KINDS}
        for payload in payloads:
            kind, _, ident = payload.partition(":")
            if kind == "token":
                token_ids.add(ident)
            elif kind == "member":
                affected[kind].add(ident.partition(":")[0])
            elif kind in affected:
                affected[kind].add(ident)
            elif kind == "reload":
                await self._reload(connection)
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
        log.debug("changes.applied", tokens=len(token_ids), **{k: len(v) for k, v in affected.items() if v})
