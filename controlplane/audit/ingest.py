"""Ingest of request records shipped by the data plane: idempotent, chained, in one transaction.

The data plane ships two kinds of line from its spool: a *decision* (written by authz at Check
time) and an *outcome* (Envoy's access log after the response: status, latency, bytes, token usage).
A decision becomes the request's row in ``request_records``; an outcome goes to
``request_outcomes`` and, when no decision exists because Envoy answered by itself (body too
large, no route, authz unreachable), it also becomes the request's row, with ``source = 'envoy'``.

Shipping is at-least-once, so a line whose ``(request_id, at)`` is already stored is skipped: a batch
may be sent twice and the store still holds exactly one row per request. The check runs under the
chain's advisory lock, which also serialises ``seq``, so two control-plane replicas cannot race.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from controlplane.audit import chain

CHECKPOINT_EVERY = 10_000

Text = Annotated[str, StringConstraints(max_length=512)]


class _Line(BaseModel):
    model_config = ConfigDict(extra="forbid")

    at: AwareDatetime
    request_id: Annotated[str, StringConstraints(min_length=1, max_length=128)]


class DecisionLine(_Line):
    kind: Literal["decision"]
    token_id: uuid.UUID | None = None
    user_id: uuid.UUID | None = None
    user_email: Text | None = None
    team: Text | None = None
    environment: Text | None = None
    provider: Text | None = None
    method: Text | None = None
    route: Text | None = None
    model: Text | None = None
    decision: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    status: int | None = Field(default=None, ge=100, le=599)


class OutcomeLine(_Line):
    kind: Literal["outcome"]
    status: int = Field(ge=0, le=599)
    upstream_status: int | None = Field(default=None, ge=100, le=599)
    response_flags: Text | None = None
    details: Text | None = None
    duration_ms: int | None = Field(default=None, ge=0)
    upstream_ms: int | None = Field(default=None, ge=0)
    bytes_in: int | None = Field(default=None, ge=0)
    bytes_out: int | None = Field(default=None, ge=0)
    prompt_tokens: int | None = Field(default=None, ge=0)
    completion_tokens: int | None = Field(default=None, ge=0)
    #: False when the request never got an authz decision (Envoy answered it alone).
    decided: bool
    method: Text | None = None
    route: Text | None = None


class IngestBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    records: list[Annotated[DecisionLine | OutcomeLine, Field(discriminator="kind")]] = Field(max_length=20_000)


class IngestResult(BaseModel):
    accepted: int
    duplicates: int


def _envoy_record(line: OutcomeLine) -> dict[str, Any]:
    reason = line.details or line.response_flags or "unknown"
    return {"at": line.at, "request_id": line.request_id, "source": "envoy", "token_id": None, "user_id": None,
            "user_email": None, "team": None, "environment": None, "provider": None, "method": line.method,
            "route": line.route, "model": None, "decision": f"envoy:{reason}"[:64], "status": line.status}


def split(batch: IngestBatch) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    records: list[dict[str, Any]] = []
    outcomes: list[dict[str, Any]] = []
    for line in batch.records:
        if isinstance(line, DecisionLine):
            records.append(line.model_dump(exclude={"kind"}) | {"source": "authz"})
            continue
        outcomes.append(line.model_dump(include=set(chain.FIELDS[chain.OUTCOMES]) - {"seq"}))
        if not line.decided:
            records.append(_envoy_record(line))
    return records, outcomes


class Ingestor:
    """Writes batches with an asyncpg connection inside the caller's transaction."""

    def __init__(self) -> None:
        self._months: set[date] = set()

    async def ingest(self, connection: Any, batch: IngestBatch) -> IngestResult:
        records, outcomes = split(batch)
        now = datetime.now(UTC)
        await self._ensure_partitions(connection, (now, now + timedelta(days=32)))
        stored = 0
        for table, rows in ((chain.REQUESTS, records), (chain.OUTCOMES, outcomes)):
            stored += await self._append(connection, table, rows)
        return IngestResult(accepted=stored, duplicates=len(records) + len(outcomes) - stored)

    async def _ensure_partitions(self, connection: Any, stamps: Iterable[datetime]) -> None:
        months = {stamp.date().replace(day=1) for stamp in stamps} - self._months
        for month in sorted(months):
            await connection.execute("SELECT keyward_ensure_audit_partition($1)", month)
            self._months.add(month)

    async def _append(self, connection: Any, table: str, rows: Sequence[dict[str, Any]]) -> int:
        if not rows:
            return 0
        await connection.execute("SELECT pg_advisory_xact_lock($1)", chain.LOCKS[table])
        existing = await connection.fetch(
            f"SELECT request_id, at FROM {table} WHERE request_id = ANY($1::text[])",  # noqa: S608 - fixed names
            list({row["request_id"] for row in rows}),
        )
        seen = {(r["request_id"], r["at"]) for r in existing}
        fresh = []
        for row in sorted(rows, key=lambda r: r["at"]):
            key = (row["request_id"], row["at"])
            if key not in seen:
                seen.add(key)
                fresh.append(row)
        if not fresh:
            return 0
        head = await connection.fetchrow(f"SELECT seq, hash FROM {table} ORDER BY seq DESC LIMIT 1")  # noqa: S608
        seq, prev_hash = (head["seq"], bytes(head["hash"])) if head else (0, chain.GENESIS)
        columns = [*chain.FIELDS[table], "prev_hash", "hash"]
        tuples = []
        checkpoints = []
        for row in fresh:
            seq += 1
            row = row | {"seq": seq}
            digest = chain.link(table, prev_hash, row)
            tuples.append((*tuple(row[c] for c in chain.FIELDS[table]), prev_hash, digest))
            if seq % CHECKPOINT_EVERY == 0:
                checkpoints.append((table, seq, digest, "periodic"))
            prev_hash = digest
        await connection.copy_records_to_table(table, records=tuples, columns=columns)
        if checkpoints:
            await connection.executemany(
                "INSERT INTO audit_checkpoints (chain, seq, hash, kind) VALUES ($1, $2, $3, $4)", checkpoints
            )
        return len(fresh)
