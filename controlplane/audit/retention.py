"""Retention: the only way audit rows leave the store, and itself an audited act.

For every monthly partition older than the cut-off (by month of ingest), in order: export its rows
to ``<export_dir>/<table>-<YYYY_MM>.jsonl.gz`` in chain order with their hashes, pin the last
exported row as a ``retention`` checkpoint (where verification of the remaining chain starts),
record a ``retention.applied`` event naming the export and its SHA-256, and drop the partition, all
in one transaction per partition. It needs the owner's credentials: the application role cannot
drop anything.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from authz.config import sqlalchemy_url
from controlplane.audit import chain
from controlplane.audit.events import Actor, record_event

_PARTITIONS = """
SELECT c.relname FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent
WHERE p.relname = :parent ORDER BY c.relname
"""


@dataclass
class Dropped:
    table: str
    partition: str
    rows: int
    last_seq: int | None
    export_file: Path
    export_sha256: str


@dataclass
class _Export:
    table: str
    partition: str
    rows: int
    last_seq: int | None
    last_hash: bytes | None
    path: Path
    sha256: str


def _month_of(partition: str) -> date:
    year, month = partition.rsplit("_", 2)[-2:]
    return date(int(year), int(month), 1)


def cutoff_month(today: date, keep_months: int) -> date:
    index = today.year * 12 + today.month - 1 - keep_months
    return date(index // 12, index % 12 + 1, 1)


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes | memoryview):
        return bytes(value).hex()
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if hasattr(value, "hex") and not isinstance(value, int | float | str):
        return str(value)
    return value


async def apply_retention(owner_url: str, *, keep_months: int, export_dir: Path, actor: Actor,
                          today: date | None = None) -> list[Dropped]:
    cutoff = cutoff_month(today or datetime.now(UTC).date(), keep_months)
    export_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before any I/O on the database
    engine = create_async_engine(sqlalchemy_url(owner_url))
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    dropped: list[Dropped] = []
    try:
        for table in (chain.REQUESTS, chain.OUTCOMES):
            async with sessions() as session:
                names = (await session.execute(text(_PARTITIONS), {"parent": table})).scalars().all()
            for name in names:
                if _month_of(name) >= cutoff:
                    continue
                async with sessions() as session, session.begin():
                    exported = await _export(session, table, name, export_dir)
                async with sessions() as session, session.begin():
                    dropped.append(await _drop(session, exported, actor))
    finally:
        await engine.dispose()
    return dropped


async def _export(session: Any, table: str, partition: str, export_dir: Path) -> _Export:
    path = export_dir / f"{table}-{partition.rsplit('_', 2)[-2]}_{partition.rsplit('_', 1)[-1]}.jsonl.gz"
    digest = hashlib.sha256()
    rows = 0
    last: dict[str, Any] | None = None
    result = await session.stream(text(f'SELECT * FROM "{partition}" ORDER BY seq'))  # noqa: S608 - catalog name
    with gzip.open(path, "wb") as handle:
        async for row in result.mappings():
            line = (json.dumps({k: _jsonable(v) for k, v in row.items()}, sort_keys=True) + "\n").encode()
            handle.write(line)
            digest.update(line)
            rows += 1
            last = dict(row)
    return _Export(table, partition, rows, last["seq"] if last else None, bytes(last["hash"]) if last else None,
                   path, digest.hexdigest())


async def _drop(session: Any, exported: _Export, actor: Actor) -> Dropped:
    # Old partitions only receive rows through the owner: still, drop only what was exported.
    count = (await session.execute(text(f'SELECT count(*) FROM "{exported.partition}"'))).scalar_one()  # noqa: S608
    if count != exported.rows:
        raise RuntimeError(f"{exported.partition} changed during export ({exported.rows} exported, {count} now)")
    if exported.last_seq is not None:
        await session.execute(
            text("INSERT INTO audit_checkpoints (chain, seq, hash, kind) VALUES (:chain, :seq, :hash, 'retention')"),
            {"chain": exported.table, "seq": exported.last_seq, "hash": exported.last_hash},
        )
    await record_event(session, actor=actor, action="retention.applied", target_type="partition",
                       target_id=exported.partition,
                       after={"table": exported.table, "rows": exported.rows, "last_seq": exported.last_seq,
                              "export_file": str(exported.path), "export_sha256": exported.sha256})
    await session.execute(text(f'DROP TABLE "{exported.partition}"'))
    return Dropped(exported.table, exported.partition, exported.rows, exported.last_seq, exported.path,
                   exported.sha256)
