"""The gateway's token cache, mirrored in the control plane: what effective-access questions read.

Judging every live token from a fresh query costs seconds at a hundred thousand tokens (the five-table
row and a record built from each). Instead each control-plane process keeps what authz keeps: the
same snapshot and the same LISTEN/NOTIFY updates (:class:`authz.listener.ChangeListener`, passive: it
is no gateway replica, so it writes no heartbeat row and no revocation waits for it), built into the
same records by the same code.

Read-your-writes: :meth:`TokenMirror.current` first sends an ``ack:<id>`` on the changes channel and
waits until the mirror has applied it. NOTIFY delivers in commit order, so every change committed
before the question is in the answer. When the mirror cannot answer promptly (still loading its
first snapshot, its connection lost), the question is answered from a direct query instead: slower,
never wrong.
"""

from __future__ import annotations

import asyncio
import uuid
from functools import cache

import asyncpg
import structlog

from authz.cache import TokenCache, TokenRecord
from authz.config import asyncpg_dsn
from authz.listener import ChangeListener
from controlplane.core.config import get_settings
from controlplane.services.revocation import CHANGES_CHANNEL

log = structlog.get_logger("controlplane.mirror")

#: How long a question waits for the mirror to apply what was committed before it.
BARRIER_SECONDS = 2.0
APPLICATION_NAME = "keyward-controlplane-mirror"
#: Past this long since the mirror last heard from Postgres, it is not trusted.
MAX_STALENESS_SECONDS = 15.0


class TokenMirror:
    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self.cache = TokenCache()
        self._waiting: dict[str, asyncio.Event] = {}
        self._listener = ChangeListener(dsn=dsn, channel=CHANGES_CHANNEL, cache=self.cache, replica=None,
                                        max_staleness_seconds=MAX_STALENESS_SECONDS, on_acks=self._applied,
                                        application_name=APPLICATION_NAME)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._listener.run(), name="token-mirror")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    def _applied(self, acks: list[str]) -> None:
        for ack in acks:
            event = self._waiting.get(ack)
            if event is not None:
                event.set()

    async def current(self) -> list[TokenRecord] | None:
        """The live records, with everything committed before this call applied; None when the mirror
        cannot say so within :data:`BARRIER_SECONDS` (ask Postgres directly then)."""
        if not self._listener.ready.is_set() or self.cache.stale():
            return None
        ack = f"mirror-{uuid.uuid4()}"
        arrived = self._waiting[ack] = asyncio.Event()
        try:
            connection = await asyncpg.connect(self._dsn, timeout=BARRIER_SECONDS,
                                               server_settings={"application_name": "keyward-controlplane-barrier"})
            try:
                await connection.execute("SELECT pg_notify($1, $2)", CHANGES_CHANNEL, f"ack:{ack}")
            finally:
                await connection.close()
            await asyncio.wait_for(arrived.wait(), timeout=BARRIER_SECONDS)
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            log.warning("mirror.behind", error=f"{type(exc).__name__}: {exc}")
            return None
        finally:
            self._waiting.pop(ack, None)
        return self.cache.live()


@cache
def mirror() -> TokenMirror:
    """The process's one mirror (started by the app's lifespan)."""
    return TokenMirror(asyncpg_dsn(get_settings().database_url))
