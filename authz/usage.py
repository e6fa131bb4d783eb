"""``last_used_at`` without a database write per request.

The pipeline calls :meth:`LastUsedTracker.touch` (a dict assignment); a background task writes
everything touched since the last flush in one ``UPDATE … FROM unnest(…)`` every couple of seconds.
A flush that fails for any reason, or is cancelled, keeps its entries for the next one. The UPDATE
only sets ``last_used_at``, which the NOTIFY trigger does not watch, so it never echoes back to the
listener.

Postgres being unreachable is expected and waited out here (counted in
``keyward_authz_last_used_flush_failures_total``), so it never marks the task down: restarting authz
would not bring the database back. Anything else propagates to the supervisor, which restarts the
writer with its entries intact.

``touch`` runs on gRPC worker threads while ``take`` and ``restore`` run on the event loop's thread,
so the pending dict is only read, written or swapped under a lock.
"""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime

import asyncpg
import structlog

from authz.metrics import LAST_USED_FLUSH_FAILURES, LAST_USED_FLUSHES

log = structlog.get_logger("authz.usage")

#: What an unreachable or restarting database raises.
DATABASE_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)

_FLUSH_SQL = """
    UPDATE tokens SET last_used_at = v.at
    FROM unnest($1::uuid[], $2::timestamptz[]) AS v(id, at)
    WHERE tokens.id = v.id AND (tokens.last_used_at IS NULL OR tokens.last_used_at < v.at)
"""


class LastUsedTracker:
    def __init__(self) -> None:
        self._pending: dict[str, float] = {}
        self._lock = threading.Lock()

    def touch(self, token_id: str, at: float) -> None:
        with self._lock:
            self._pending[token_id] = at

    def take(self) -> dict[str, float]:
        with self._lock:
            pending, self._pending = self._pending, {}
        return pending

    def restore(self, pending: dict[str, float]) -> None:
        with self._lock:
            current = self._pending
            for token_id, at in pending.items():
                if at > current.get(token_id, 0.0):
                    current[token_id] = at

    async def flush(self, pool: asyncpg.Pool) -> int:
        pending = self.take()
        if not pending:
            return 0
        ids = list(pending)
        stamps = [datetime.fromtimestamp(pending[i], tz=UTC) for i in ids]
        try:
            await pool.execute(_FLUSH_SQL, ids, stamps)
        except BaseException:  # cancellation included: the final flush at shutdown takes them
            self.restore(pending)
            raise
        LAST_USED_FLUSHES.inc()
        return len(ids)

    async def run(self, pool: asyncpg.Pool, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.flush(pool)
            except DATABASE_ERRORS as exc:
                LAST_USED_FLUSH_FAILURES.inc()
                log.warning("last_used.flush_failed", error=f"{type(exc).__name__}: {exc}")
