"""The meter's exchange with Postgres: this replica's deltas out, every replica's totals in.

Every ``interval`` seconds :meth:`MeterSync.sync_once` adds the deltas the meter collected to
``usage_counters`` (one statement) and reads back every row changed since the last read (by any
replica), which the meter takes as its new totals. It runs under the supervisor: a failure (Postgres
away) gives the deltas back to the meter and propagates, and the restart goes on from there. Minute
rows older than ten minutes are deleted now and then: they only ever served a rate limit.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import asyncpg

from authz.limits import DAY
from authz.meter import MINUTE, Meter

#: How far back the sync reads rows again (commit order is not ``updated_at`` order).
_REREAD_SECONDS = 2.0

_UPSERT_SQL = """
    INSERT INTO usage_counters AS c (scope_type, scope_id, bucket, bucket_start, requests, tokens, cost_usd,
                                     updated_at)
    SELECT t, i::uuid, b, to_timestamp(s), r, k, v, clock_timestamp()
    FROM unnest($1::text[], $2::text[], $3::text[], $4::float8[], $5::bigint[], $6::bigint[], $7::numeric[])
        AS d(t, i, b, s, r, k, v)
    ON CONFLICT (scope_type, scope_id, bucket, bucket_start) DO UPDATE
        SET requests = c.requests + EXCLUDED.requests, tokens = c.tokens + EXCLUDED.tokens,
            cost_usd = c.cost_usd + EXCLUDED.cost_usd, updated_at = clock_timestamp()
"""
_CHANGED_SQL = """
    SELECT scope_type, scope_id::text, bucket, extract(epoch FROM bucket_start)::float8, requests, tokens,
           cost_usd::float8, updated_at
    FROM usage_counters
    WHERE updated_at > $1 AND ((bucket = 'day' AND bucket_start >= $2) OR (bucket = 'minute' AND bucket_start >= $3))
"""
#: The replicas that share every limit: those beating now (a silent one serves nothing of its share).
_REPLICAS_SQL = "SELECT count(*) FROM authz_replicas WHERE seen_at > now() - interval '3 seconds'"
_FORGET_MINUTES_SQL = ("DELETE FROM usage_counters WHERE bucket = 'minute' "
                       "AND bucket_start < now() - interval '10 minutes'")


def _month_start(now: float) -> datetime:
    moment = datetime.fromtimestamp(now, tz=UTC)
    return datetime(moment.year, moment.month, 1, tzinfo=UTC)


class MeterSync:
    """Writes the meter's deltas and reads every replica's totals back, every ``interval`` seconds."""

    def __init__(self, meter: Meter, pool: asyncpg.Pool, *, interval: float,
                 earliest: Callable[[], float | None] = lambda: None, clock: Callable[[], float] = time.time) -> None:
        self._meter = meter
        self._pool = pool
        self._interval = interval
        self._clock = clock
        self._since = datetime.fromtimestamp(0, tz=UTC)
        #: The start of the earliest window budget, if any: days before this month may be needed.
        self._earliest = earliest
        self._read_from: float | None = None
        self._rounds = 0
        #: Set once a sync has completed: the meter knows the stored spend, not only its own.
        self.synced = asyncio.Event()

    async def run(self) -> None:
        while True:
            await self.sync_once()
            await asyncio.sleep(self._interval)

    async def sync_once(self) -> None:
        now = self._clock()
        deltas = self._meter.take_deltas()
        try:
            async with self._pool.acquire() as connection:
                if deltas:
                    keys = list(deltas)
                    await connection.execute(
                        _UPSERT_SQL, [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys],
                        [float(k[3]) for k in keys], [int(deltas[k][0]) for k in keys],
                        [int(deltas[k][1]) for k in keys], [deltas[k][2] for k in keys])
                month = _month_start(now)
                earliest = self._earliest()
                if earliest is not None and (self._read_from is None or earliest < self._read_from):
                    # A window budget reaching back further than was read: read it all again.
                    self._read_from, self._since = earliest, datetime.fromtimestamp(0, tz=UTC)
                first_day = month if earliest is None else min(
                    month, datetime.fromtimestamp(earliest - earliest % DAY, tz=UTC))
                rows = await connection.fetch(_CHANGED_SQL, self._since, first_day,
                                              datetime.fromtimestamp(now - 2 * MINUTE, tz=UTC))
                replicas = await connection.fetchval(_REPLICAS_SQL)
                self._rounds += 1
                if self._rounds % 240 == 0:
                    await connection.execute(_FORGET_MINUTES_SQL)
        except BaseException:
            self._meter.give_back(deltas)
            raise
        if rows:
            latest = max(row["updated_at"] for row in rows)
            self._since = max(self._since, latest - timedelta(seconds=_REREAD_SECONDS))
        self._meter.apply(((r[0], r[1], r[2], r[3], r[4], r[5], r[6]) for r in rows), now)
        self._meter.replicas = max(1, int(replicas or 1))
        self._meter.expire(now)
        self.synced.set()

