"""The bootstrap token's reads, summarised: one event per hour instead of one per read.

The bootstrap ``KEYWARD_ADMIN_TOKEN`` is break-glass: every use of it must be on record. Its writes
are recorded one by one (``admin.break_glass_used``, :mod:`controlplane.api.deps`), so a real change
is never buried. Its reads (GET, HEAD) are counted instead, in ``break_glass_reads``: one row per UTC
hour with the count, the first and last read and the reads per route (the route's template, e.g.
``/api/v1/users/{user_id}``, so the paths stay few). A periodic duty (:func:`summarise`) then records
one ``admin.break_glass_reads`` event per finished hour, with those figures, and marks the row
summarised; that event is on the hash chain like any other.

Counting a read is one small upsert in its own transaction, committed before the read is answered.
It never fails the read: if it cannot be written (the database is unreachable, a lock times out), the
read is logged at error level with its route and kept in this process's memory, and added to the
next upsert that succeeds. So a read is lost only if the process dies before the database comes back,
and then its error line in the log remains.

An hour is summarised once it has been over for a minute: an upsert that took its ``now()`` just
before the hour turned has committed by then, so no read lands in a row already summarised.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.audit.events import Actor, record_event
from controlplane.core.db import get_sessionmaker

log = structlog.get_logger("controlplane.audit.break_glass")

ACTOR = "admin:bootstrap"
#: The summary is written by the control plane's duty, on behalf of the bootstrap token's reads.
SUMMARY_ACTOR = Actor(name=ACTOR, mechanism="system")

_UPSERT = text("""
INSERT INTO break_glass_reads AS b (hour, reads, first_at, last_at, paths)
VALUES (date_trunc('hour', now(), 'UTC'), :reads, LEAST(CAST(:first_at AS timestamptz), now()), now(),
        CAST(:paths AS jsonb))
ON CONFLICT (hour) DO UPDATE SET
    reads = b.reads + EXCLUDED.reads,
    first_at = LEAST(b.first_at, EXCLUDED.first_at),
    last_at = GREATEST(b.last_at, EXCLUDED.last_at),
    paths = (SELECT jsonb_object_agg(key, total) FROM (
                 SELECT key, sum(value::bigint) AS total FROM (
                     SELECT * FROM jsonb_each_text(b.paths) UNION ALL SELECT * FROM jsonb_each_text(EXCLUDED.paths)
                 ) both_ GROUP BY key) summed)
""")


class _Unrecorded:
    """Reads whose upsert failed, carried to the next one that succeeds."""

    def __init__(self) -> None:
        self.paths: Counter[str] = Counter()
        self.first_at: datetime | None = None

    def add(self, path: str, at: datetime) -> None:
        self.paths[path] += 1
        self.first_at = at if self.first_at is None else min(self.first_at, at)

    def clear(self) -> None:
        self.paths.clear()
        self.first_at = None


_unrecorded = _Unrecorded()


def unrecorded() -> int:
    """Reads counted in memory only, waiting for the database (0 in a healthy process)."""
    return sum(_unrecorded.paths.values())


async def count_read(path: str, *, sessions: Callable[[], Any] | None = None) -> bool:
    """Count one read by the bootstrap token (and any carried over); False if it could not be written.
    ``sessions``: the session factory (the process's own by default)."""
    now = datetime.now(UTC)
    paths = _unrecorded.paths + Counter({path: 1})
    first_at = min(_unrecorded.first_at, now) if _unrecorded.first_at else now
    try:
        async with (sessions or get_sessionmaker())() as session, session.begin():
            await session.execute(_UPSERT, {"reads": sum(paths.values()), "first_at": first_at,
                                            "paths": json.dumps(dict(paths))})
    except Exception as exc:  # never fail the read; never forget it either (see the module docstring)
        _unrecorded.add(path, now)
        log.error("audit.break_glass_read_unrecorded", path=path, at=now.isoformat(), pending=unrecorded(),
                  error=f"{type(exc).__name__}: {exc}")
        return False
    _unrecorded.clear()
    return True


async def summarise(session: AsyncSession) -> int:
    """Record one ``admin.break_glass_reads`` event per finished hour not yet summarised; how many."""
    rows = (await session.execute(text(
        "SELECT hour, reads, first_at, last_at, paths FROM break_glass_reads "
        "WHERE summarised_at IS NULL AND hour <= now() - interval '61 minutes' "
        "ORDER BY hour FOR UPDATE SKIP LOCKED"))).mappings().all()
    for row in rows:
        after: dict[str, Any] = {
            "hour": row["hour"].astimezone(UTC).isoformat(), "reads": row["reads"],
            "first_at": row["first_at"].astimezone(UTC).isoformat(),
            "last_at": row["last_at"].astimezone(UTC).isoformat(), "paths": row["paths"]}
        await record_event(session, actor=SUMMARY_ACTOR, action="admin.break_glass_reads", target_type="api",
                           target_id=f"reads {after['hour']}", after=after)
        await session.execute(text("UPDATE break_glass_reads SET summarised_at = now() WHERE hour = :hour"),
                              {"hour": row["hour"]})
    return len(rows)
