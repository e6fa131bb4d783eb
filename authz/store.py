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
import json
import time
from collections.abc import Iterable

import asyncpg
import structlog

from authz.cache import ProfileCatalog, TokenCache, TokenRecord, catalog_for, profile_for
from authz.metrics import LISTENER_RECONNECTS, SNAPSHOT_SECONDS, SNAPSHOT_TOKENS

log = structlog.get_logger("authz.store")

# One row per token with everything a Check needs: the owner's state (a user or a service account),
# whether the owner still belongs to the token's team, and the team's access profile.
_RECORD_COLUMNS = """
    SELECT t.id::text AS token_id, t.token_hash, t.user_id::text AS user_id,
           COALESCE(u.email, 'service-account:' || sa.name) AS email, tm.name AS team,
           t.environment, t.models, extract(epoch FROM t.expires_at)::float8 AS expires_at,
           COALESCE(u.status = 'active', sa.status = 'active') AS owner_active,
           t.revoked_at IS NOT NULL AS revoked, t.name,
           t.team_id IS NOT NULL AS has_team, p.id::text AS profile_id,
           extract(epoch FROM p.updated_at)::float8 AS profile_version, p.catalog::text AS catalog,
           p.environments AS profile_environments,
           CASE WHEN t.team_id IS NULL THEN true
                WHEN t.user_id IS NOT NULL THEN m.user_id IS NOT NULL
                ELSE sa.team_id = t.team_id END AS member
    FROM tokens t
    LEFT JOIN memberships m ON m.user_id = t.user_id AND m.team_id = t.team_id
    LEFT JOIN users u ON u.id = t.user_id
    LEFT JOIN service_accounts sa ON sa.id = t.service_account_id
    LEFT JOIN teams tm ON tm.id = t.team_id
    LEFT JOIN access_profiles p ON p.id = tm.profile_id
"""
SNAPSHOT_SQL = _RECORD_COLUMNS + " WHERE t.revoked_at IS NULL"
_BY_TOKEN_SQL = _RECORD_COLUMNS + " WHERE t.id = ANY($1::uuid[])"
_LIVE = " AND t.revoked_at IS NULL"
#: NOTIFY payload kind -> the tokens it can affect.
_AFFECTED_SQL = {
    "user": _RECORD_COLUMNS + " WHERE t.user_id = ANY($1::uuid[])" + _LIVE,
    "team": _RECORD_COLUMNS + " WHERE t.team_id = ANY($1::uuid[])" + _LIVE,
    "profile": _RECORD_COLUMNS + " WHERE tm.profile_id = ANY($1::uuid[])" + _LIVE,
    "sa": _RECORD_COLUMNS + " WHERE t.service_account_id = ANY($1::uuid[])" + _LIVE,
    # "member:<user>:<team>": the user's tokens of that team (filtered below; one query per batch).
    "member": _RECORD_COLUMNS + " WHERE t.user_id = ANY($1::uuid[])" + _LIVE,
}
_NO_PROFILE = profile_for("none", (), ())
_COMPILED: dict[tuple[str, float], ProfileCatalog] = {}

_CONNECTION_LOST = "__connection_lost__"


def _profile(row: asyncpg.Record) -> ProfileCatalog | None:
    if not row["has_team"]:
        return None  # a token from before teams: its own model list is its policy
    if row["profile_id"] is None:
        return _NO_PROFILE  # a team without a profile may use nothing
    # Keyed by id and version (updated_at), so a million rows of a few profiles parse a few catalogs.
    key = (row["profile_id"], row["profile_version"])
    profile = _COMPILED.get(key)
    if profile is None:
        entries = [(e["provider"], e["pattern"], tuple(e["environments"]) if e.get("environments") else None)
                   for e in json.loads(row["catalog"])]
        profile = _COMPILED[key] = profile_for(f"{key}", entries, row["profile_environments"])
    return profile


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
        profile=_profile(row),
        member=row["member"],
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
        affected: dict[str, set[str]] = {kind: set() for kind in _AFFECTED_SQL}
        for payload in payloads:
            kind, _, ident = payload.partition(":")
            if kind == "token":
                token_ids.add(ident)
            elif kind == "member":
                affected[kind].add(ident.partition(":")[0])
            elif kind in affected:
                affected[kind].add(ident)
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
        for kind, idents in affected.items():
            if idents:
                for row in await connection.fetch(_AFFECTED_SQL[kind], list(idents)):
                    self._cache.upsert(record_from_row(row))
        log.debug("changes.applied", tokens=len(token_ids), **{k: len(v) for k, v in affected.items() if v})
