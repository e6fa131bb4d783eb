"""Keep the token cache equal to Postgres: a snapshot at start, then LISTEN/NOTIFY.

The control plane's triggers send ``token:<id>`` or ``user:<id>`` on the ``keyward_changes`` channel
from the transaction that made the change. The listener owns one dedicated connection and does, in
order: LISTEN, load the snapshot, then apply notifications one batch at a time. LISTEN comes before
the snapshot so no change can fall between the two. When the connection dies (a restart,
``pg_terminate_backend``, a network cut) it reconnects and reloads the whole snapshot, so changes made
while it was away are not lost.

All of this runs off the request path; a Check only ever reads the cache.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

import asyncpg
import structlog

from authz.cache import TokenCache, TokenRecord, catalog_for
from authz.metrics import LISTENER_RECONNECTS, SNAPSHOT_SECONDS, SNAPSHOT_TOKENS

log = structlog.get_logger("authz.store")

_RECORD_COLUMNS = """
    SELECT t.id::text AS token_id, t.token_hash, t.user_id::text AS user_id, u.email, t.team,
           t.environment, t.models, extract(epoch FROM t.expires_at)::float8 AS expires_at,
           u.status = 'active' AS owner_active, t.revoked_at IS NOT NULL AS revoked, t.name
    FROM tokens t JOIN users u ON u.id = t.user_id
"""
SNAPSHOT_SQL = _RECORD_COLUMNS + " WHERE t.revoked_at IS NULL"
_BY_TOKEN_SQL = _RECORD_COLUMNS + " WHERE t.id = ANY($1::uuid[])"
_BY_USER_SQL = _RECORD_COLUMNS + " WHERE t.user_id = ANY($1::uuid[]) AND t.revoked_at IS NULL"

_CONNECTION_LOST = "__connection_lost__"


def record_from_row(row: asyncpg.Record) -> TokenRecord:
    return TokenRecord(
        token_id=row["token_id"],
        token_hash=row["token_hash"],
        user_id=row["user_id"],
        user_email=row["email"],
        team=row["team"],
        environment=row["environment"],
        catalog=catalog_for(row["models"]),
        expires_at=row["expires_at"],
        owner_active=row["owner_active"],
        revoked=row["revoked"],
        name=row["name"],
    )


async def load_snapshot(connection: asyncpg.Connection, *, batch: int = 20_000) -> list[TokenRecord]:
    """Every live token with its owner's state, streamed through a cursor to bound memory."""
    records: list[TokenRecord] = []
    async with connection.transaction(readonly=True, isolation="repeatable_read"):
        async for row in connection.cursor(SNAPSHOT_SQL, prefetch=batch):
            records.append(record_from_row(row))
    return records


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
        #: Set once the first snapshot is in the cache; authz refuses Checks until then.
        self.ready = asyncio.Event()
        self.connected = False

    async def run(self) -> None:
        backoff = 0.05
        while True:
            try:
                await self._session()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                log.warning("listener.disconnected", error=f"{type(exc).__name__}: {exc}")
            self.connected = False
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
            records = await load_snapshot(connection)
            self._cache.replace_all(records)
            elapsed = time.perf_counter() - started
            SNAPSHOT_SECONDS.set(elapsed)
            SNAPSHOT_TOKENS.set(len(records))
            log.info("snapshot.loaded", tokens=len(records), seconds=round(elapsed, 3))
            self.connected = True
            self.ready.set()
            await self._apply_forever(connection)
        finally:
            if not connection.is_closed():
                connection.terminate()

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
        """Re-read the tokens and users named by ``payloads`` and fold them into the cache."""
        token_ids: set[str] = set()
        user_ids: set[str] = set()
        for payload in payloads:
            kind, _, ident = payload.partition(":")
            if kind == "token":
                token_ids.add(ident)
            elif kind == "user":
                user_ids.add(ident)
            elif kind == "reload":
                self._cache.replace_all(await load_snapshot(connection))
                return
        if token_ids:
            rows = await connection.fetch(_BY_TOKEN_SQL, list(token_ids))
            found = set()
            for row in rows:
                record = record_from_row(row)
                found.add(record.token_id)
                self._cache.upsert(record)
            for token_id in token_ids - found:
                self._cache.forget(token_id)
        if user_ids:
            for row in await connection.fetch(_BY_USER_SQL, list(user_ids)):
                self._cache.upsert(record_from_row(row))
        log.debug("changes.applied", tokens=len(token_ids), users=len(user_ids))
