"""Ingest of request records shipped by the data plane: idempotent, chained, in one transaction.

The data plane ships two kinds of line from its spool: a *decision* (written by authz at Check
time) and an *outcome* (Envoy's access log after the response: status, latency, bytes, token usage).
A decision becomes the request's row in ``request_records``; an outcome goes to
``request_outcomes`` and, when no decision exists because Envoy answered by itself (body too
large, no route, authz unreachable), it also becomes the request's row, with ``source = 'envoy'``.

Shipping is at-least-once, so a line whose ``(request_id, at)`` is already stored is skipped: a batch
may be sent twice and the store still holds exactly one row per request. The check runs under the
chain's advisory lock, which also serialises ``seq``, so two control-plane replicas cannot race.

Cost: a batch's lines are validated straight from the request body (:func:`parse_body`), split
into rows without re-serialising the models, hashed with one shared JSON encoder (the canonical form
of :mod:`controlplane.audit.chain`, checked against :func:`chain.link` on every batch) and COPYed.
What is left per batch is one advisory lock, one duplicate probe and one chain-head read per table,
which is why the shipper sends large batches.

Over 450 lines because storing a batch (sanitising, idempotence, both chains, costing, the spend
rollup) is one transaction whose steps must be read together.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal

import structlog
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from controlplane.audit import chain, signing
from controlplane.metrics import INGEST_RECORDS

log = structlog.get_logger("controlplane.audit.ingest")

#: The longest text a record keeps of a value the client chose; longer values are cut, not refused.
TEXT_LIMIT = 512
REQUEST_ID_LIMIT = 128
Text = Annotated[str, StringConstraints(max_length=TEXT_LIMIT)]
#: What PostgreSQL text cannot hold (NUL) or UTF-8 cannot encode (lone surrogates) becomes U+FFFD.
_UNSTORABLE = {0: "\ufffd", **{code: "\ufffd" for code in range(0xD800, 0xE000)}}


def storable(value: str, limit: int) -> str:
    """``value`` as a text column can hold it: unstorable characters replaced, cut to ``limit``."""
    if "\x00" in value or not value.isascii():
        value = value.translate(_UNSTORABLE)
    return value[:limit]


class _Line(BaseModel):
    """Lines are what a client's request became, so every text in one is made storable rather than
    refused: one hostile value must never stop the lines behind it. A line that needed that says so
    (``sanitized``), and so does its row."""

    model_config = ConfigDict(extra="forbid")

    at: AwareDatetime
    request_id: Annotated[str, StringConstraints(min_length=1, max_length=REQUEST_ID_LIMIT)]
    sanitized: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        changed = {}
        for name, value in data.items():
            if isinstance(value, str) and name not in ("at", "kind"):
                fixed = storable(value, REQUEST_ID_LIMIT if name == "request_id" else TEXT_LIMIT)
                if fixed != value:
                    changed[name] = fixed
        if not changed:
            return data
        return data | changed | {"sanitized": True}


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
    project_id: uuid.UUID | None = None
    project: Text | None = None
    #: The budget or rate limit that refused the request: ``budget|rate:<scope type>:<scope id>``.
    limit_scope: Annotated[str, StringConstraints(max_length=120)] | None = None


Money = Annotated[Decimal, Field(ge=0, lt=Decimal("1e10"))]


class SpendLine(BaseModel):
    """Whom an outcome's cost counts against, for the spend rollup (``spend_daily``); not in the chain."""

    model_config = ConfigDict(extra="forbid")

    token_id: uuid.UUID
    owner_type: Literal["user", "service_account"] | None = None
    owner_id: uuid.UUID | None = None
    team_id: uuid.UUID | None = None
    project_id: uuid.UUID | None = None
    environment: Text | None = None
    provider: Text | None = None
    model: Text | None = None
    input_tokens: int = Field(default=0, ge=0)
    cached_tokens: int = Field(default=0, ge=0)
    output_tokens: int = Field(default=0, ge=0)
    cost_usd: float = Field(default=0.0, ge=0)
    estimated: bool = False

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        # As in every line: what a client chose (the model) is stored, never a reason to refuse.
        if isinstance(data, dict):
            return {name: storable(value, TEXT_LIMIT) if isinstance(value, str) else value
                    for name, value in data.items()}
        return data


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
    #: False when Envoy answered without an authz decision (authz unreachable or too slow, a
    #: malformed request): what the client saw was Envoy's answer, whatever authz may have recorded.
    decided: bool
    #: What authz answered, as Envoy saw it (its dynamic metadata); null when it did not answer.
    authz_decision: Annotated[str, StringConstraints(max_length=64)] | None = None
    method: Text | None = None
    route: Text | None = None
    cached_tokens: int | None = Field(default=None, ge=0)
    #: What the request cost in USD (null: it has no price, see ``price_version``).
    cost_usd: Money | None = None
    cost_input_usd: Money | None = None
    cost_cached_usd: Money | None = None
    cost_output_usd: Money | None = None
    #: The price used (``genai-prices <version>``, ``override:<id>``) or ``unpriced``.
    price_version: Annotated[str, StringConstraints(max_length=64)] | None = None
    #: The provider reported no usage: the cost is an estimate from the bytes exchanged.
    usage_estimated: bool | None = None
    spend: SpendLine | None = None

    @model_validator(mode="after")
    def _at_scale(self) -> OutcomeLine:
        # Stored at the money columns' scale, so the row holds exactly what is hashed.
        for name in ("cost_usd", "cost_input_usd", "cost_cached_usd", "cost_output_usd"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, chain.money(value))
        return self


class IngestBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    records: list[Annotated[DecisionLine | OutcomeLine, Field(discriminator="kind")]] = Field(max_length=20_000)


def _inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON schema with its ``$defs`` references replaced by the definitions (none are recursive),
    so it can stand alone inside the OpenAPI document."""
    definitions = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk(definitions[ref.removeprefix("#/$defs/")])
            # A discriminator's mapping names definitions by reference too; oneOf alone says it all.
            return {key: walk({k: v for k, v in value.items() if k != "mapping"} if key == "discriminator"
                              else value) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(item) for item in node]
        return node

    return walk(schema)


#: ``openapi_extra`` for the ingest route, which reads its body itself (see :func:`parse_body`).
INGEST_REQUEST_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": _inlined(IngestBatch.model_json_schema())}}}}


class IngestResult(BaseModel):
    accepted: int
    duplicates: int


def _envoy_record(line: OutcomeLine) -> dict[str, Any]:
    """The request's record when authz recorded no decision for it: Envoy answered alone, or authz's
    answer could not be recorded (``audit_unavailable``) or came too late, or authz died mid-Check."""
    if line.decided and line.authz_decision:
        decision = line.authz_decision
    else:
        decision = f"envoy:{line.details or line.response_flags or 'unknown'}"
    return {"at": line.at, "request_id": line.request_id, "source": "envoy", "token_id": None, "user_id": None,
            "user_email": None, "team": None, "environment": None, "provider": None, "method": line.method,
            "route": line.route, "model": None, "decision": decision[:64], "status": line.status,
            "sanitized": line.sanitized, "project_id": None, "project": None, "limit_scope": None}


_RECORD_FIELDS = tuple(f for f in (*chain.FIELDS[chain.REQUESTS], *chain.EXTENSIONS[chain.REQUESTS])
                       if f not in ("seq", "source"))
_OUTCOME_FIELDS = tuple(f for f in (*chain.FIELDS[chain.OUTCOMES], *chain.EXTENSIONS[chain.OUTCOMES]) if f != "seq")


def split(batch: IngestBatch) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows for ``request_records`` and ``request_outcomes``, in the order of the batch's lines."""
    records: list[dict[str, Any]] = []
    outcomes: list[dict[str, Any]] = []
    for line in batch.records:
        # The validated field values, read directly: model_dump would copy and re-check each one.
        values = line.__dict__
        if isinstance(line, DecisionLine):
            record = {name: values[name] for name in _RECORD_FIELDS}
            record["source"] = "authz"
            records.append(record)
            continue
        outcome = {name: values[name] for name in _OUTCOME_FIELDS}
        outcome["spend"] = values["spend"]
        outcomes.append(outcome)
        # Every request gets a record: this one stands in unless a decision exists (checked at write).
        records.append(_envoy_record(line))
    return records, outcomes


def parse_body(body: bytes | str) -> IngestBatch:
    """Validate a request body (JSON) into a batch without building Python objects for the JSON first.

    A body pydantic's strict JSON reader refuses for its characters alone (bytes that are not UTF-8,
    an escaped lone surrogate) is read again leniently, so those lines are stored, sanitized, rather
    than refused with every good line of the batch."""
    try:
        return IngestBatch.model_validate_json(body)
    except ValidationError as exc:
        if not any(error["type"] == "json_invalid" for error in exc.errors()):
            raise
        strict = exc
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        raise strict from None
    return IngestBatch.model_validate(document)


# -- the chain, fast --------------------------------------------------------------------------------

_canonical_encode = chain.ENCODE


def _iso(value: Any) -> Any:
    return value.astimezone(UTC).isoformat(timespec="microseconds") if isinstance(value, datetime) else value


def _text(value: Any) -> Any:
    return str(value) if isinstance(value, uuid.UUID) else value


def _converters(table: str) -> tuple[Callable[[Any], Any] | None, ...]:
    """Per chain field, how :func:`chain._plain` would change its value (None: it would not). Only
    ``at`` (a datetime) and the UUID columns can hold anything but text, numbers, booleans and nulls."""
    special: dict[str, Callable[[Any], Any]] = {"at": _iso, "token_id": _text, "user_id": _text}
    return tuple(special.get(name) for name in _COLUMNS[table])


#: The columns a batch writes, in order: the chain's fields (``seq`` first), then its extensions.
_COLUMNS = {table: (*chain.FIELDS[table][1:], *chain.EXTENSIONS[table]) for table in (chain.REQUESTS, chain.OUTCOMES)}
_CONVERTERS = {table: _converters(table) for table in (chain.REQUESTS, chain.OUTCOMES)}


def _digests(table: str, prev_hash: bytes, first_seq: int, rows: Sequence[Sequence[Any]]) -> list[bytes]:
    """The chain hashes of ``rows`` (values in :data:`_COLUMNS` order, ``seq`` excluded), linked from
    ``prev_hash``: byte for byte what :func:`chain.link` computes, without a dict or an encoder per row."""
    converters = _CONVERTERS[table]
    extensions = chain.EXTENSIONS[table]
    base = len(converters) - len(extensions)
    sha256 = hashlib.sha256
    digests = []
    seq = first_seq
    for row in rows:
        values: list[Any] = [table, seq]
        values.extend([value if convert is None else convert(value)
                       for convert, value in zip(converters[:base], row[:base], strict=True)])
        extended = {name: chain.plain(value) for name, value in zip(extensions, row[base:], strict=True)
                    if value is not None}
        if extended:
            values.append(extended)
        prev_hash = sha256(prev_hash + _canonical_encode(values).encode()).digest()
        digests.append(prev_hash)
        seq += 1
    return digests


#: The spend rollup's dimensions, in ``spend_daily``'s key order.
_SPEND_KEY = ("day", "provider", "model", "environment", "team_id", "project_id", "user_id", "service_account_id",
              "token_id")
_ROLL_UP_SQL = """
    INSERT INTO spend_daily AS s (day, provider, model, environment, team_id, project_id, user_id,
                                  service_account_id, token_id, requests, input_tokens, cached_tokens,
                                  output_tokens, cost_usd, estimated_requests)
    SELECT * FROM unnest($1::date[], $2::text[], $3::text[], $4::text[], $5::uuid[], $6::uuid[], $7::uuid[],
                         $8::uuid[], $9::uuid[], $10::bigint[], $11::bigint[], $12::bigint[], $13::bigint[],
                         $14::numeric[], $15::bigint[])
    ON CONFLICT ON CONSTRAINT spend_daily_key DO UPDATE SET
        requests = s.requests + EXCLUDED.requests, input_tokens = s.input_tokens + EXCLUDED.input_tokens,
        cached_tokens = s.cached_tokens + EXCLUDED.cached_tokens,
        output_tokens = s.output_tokens + EXCLUDED.output_tokens, cost_usd = s.cost_usd + EXCLUDED.cost_usd,
        estimated_requests = s.estimated_requests + EXCLUDED.estimated_requests
"""


async def _roll_up(connection: Any, outcomes: Sequence[dict[str, Any]]) -> None:
    """Add the newly stored outcomes' costs to ``spend_daily``, in the batch's transaction: a resent
    outcome was not stored again, so it is not counted again."""
    totals: dict[tuple[Any, ...], list[Any]] = {}
    for outcome in outcomes:
        spend: SpendLine | None = outcome.get("spend")
        if spend is None:
            continue
        user = spend.owner_id if spend.owner_type == "user" else None
        account = spend.owner_id if spend.owner_type == "service_account" else None
        key = (outcome["at"].astimezone(UTC).date(), spend.provider, spend.model, spend.environment, spend.team_id,
               spend.project_id, user, account, spend.token_id)
        slot = totals.get(key)
        if slot is None:
            slot = totals[key] = [0, 0, 0, 0, Decimal(0), 0]
        slot[0] += 1
        slot[1] += spend.input_tokens
        slot[2] += spend.cached_tokens
        slot[3] += spend.output_tokens
        slot[4] += outcome["cost_usd"] or 0
        slot[5] += 1 if spend.estimated else 0
    if not totals:
        return
    keys = list(totals)
    columns = [[key[i] for key in keys] for i in range(len(_SPEND_KEY))]
    values = [[totals[key][i] for key in keys] for i in range(6)]
    await connection.execute(_ROLL_UP_SQL, *columns, *values)


class Ingestor:
    """Writes batches with an asyncpg connection inside the caller's transaction."""

    def __init__(self) -> None:
        self._months: set[date] = set()

    async def ingest(self, connection: Any, batch: IngestBatch) -> IngestResult:
        """Store a batch in one transaction of its own: all of it or nothing, and the chains' advisory
        locks held until commit. (A connection borrowed from a SQLAlchemy session is not in a
        transaction yet: its adapter begins one only at its own first statement.)"""
        records, outcomes = split(batch)
        now = datetime.now(UTC)
        await self._ensure_partitions(connection, (now, now + timedelta(days=32)))
        stored = 0
        async with connection.transaction():
            for table, rows in ((chain.REQUESTS, records), (chain.OUTCOMES, outcomes)):
                stored += await self._append(connection, table, rows)
        INGEST_RECORDS.inc(stored)  # committed
        return IngestResult(accepted=stored, duplicates=len(records) + len(outcomes) - stored)

    async def _ensure_partitions(self, connection: Any, stamps: Iterable[datetime]) -> None:
        months = {stamp.date().replace(day=1) for stamp in stamps} - self._months
        for month in sorted(months):
            await connection.execute("SELECT keyward_ensure_audit_partition($1)", month)
            self._months.add(month)

    @staticmethod
    async def _recorded(connection: Any, rows: Sequence[dict[str, Any]]) -> set[str]:
        """Request ids among the outcomes' stand-in records that already have a record (a decision in
        this batch, or anything in the store): one request, one record. A decision precedes its outcome
        in the spool, so only the outcomes whose decision went in an earlier batch, or never came, cost a
        probe."""
        decided = {row["request_id"] for row in rows if row["source"] == "authz"}
        envoy = [row for row in rows if row["source"] == "envoy" and row["request_id"] not in decided]
        if not envoy:
            return decided
        stored = await connection.fetch(
            "SELECT k.request_id FROM unnest($1::text[], $2::timestamptz[]) AS k(request_id, at)"
            " CROSS JOIN LATERAL (SELECT 1 FROM request_records r WHERE r.request_id = k.request_id"
            " AND r.at BETWEEN k.at - interval '1 hour' AND k.at + interval '1 hour' LIMIT 1) AS stored",
            [row["request_id"] for row in envoy], [row["at"] for row in envoy])
        return decided | {r["request_id"] for r in stored}

    async def _append(self, connection: Any, table: str, rows: Sequence[dict[str, Any]]) -> int:
        if not rows:
            return 0
        await connection.execute("SELECT pg_advisory_xact_lock($1)", chain.LOCKS[table])
        # Under the lock: what of this batch is stored already (a resent batch, or part of one). One
        # index probe per line and partition, whatever the table's size or statistics: LATERAL with a
        # LIMIT runs per line, so the planner cannot turn it into a scan of the current partition
        # (which it did for "request_id = ANY(…)" while the month's partition was young, at a cost
        # that grew with every row stored).
        existing = await connection.fetch(
            "SELECT k.request_id, k.at FROM unnest($1::text[], $2::timestamptz[]) AS k(request_id, at)"  # noqa: S608
            f" CROSS JOIN LATERAL (SELECT 1 FROM {table} r WHERE r.request_id = k.request_id"
            " AND r.at = k.at LIMIT 1) AS stored",
            [row["request_id"] for row in rows], [row["at"] for row in rows],
        )
        seen = {(r["request_id"], r["at"]) for r in existing}
        recorded = await self._recorded(connection, rows) if table == chain.REQUESTS else set()
        fresh = []
        for row in sorted(rows, key=lambda r: r["at"]):
            key = (row["request_id"], row["at"])
            if key not in seen and not (row.get("source") == "envoy" and row["request_id"] in recorded):
                seen.add(key)
                fresh.append(row)
        if not fresh:
            return 0
        head = await connection.fetchrow(f"SELECT seq, hash FROM {table} ORDER BY seq DESC LIMIT 1")  # noqa: S608
        seq, prev_hash = (head["seq"], bytes(head["hash"])) if head else (0, chain.GENESIS)
        assert chain.FIELDS[table][0] == "seq"
        values = [[row[name] for name in _COLUMNS[table]] for row in fresh]
        digests = _digests(table, prev_hash, seq + 1, values)
        # The fast hashes must be chain.link's: prove it on the batch's first row (a mismatch would
        # only show at the next verify, as a store that looks tampered with).
        reference = chain.link(table, prev_hash, fresh[0] | {"seq": seq + 1})
        if digests[0] != reference:
            log.error("audit.fast_chain_mismatch", table=table)
            digests = []
            for number, row in enumerate(fresh, start=seq + 1):
                digests.append(chain.link(table, digests[-1] if digests else prev_hash, row | {"seq": number}))
        tuples = []
        link_from = prev_hash
        for number, (row_values, digest) in enumerate(zip(values, digests, strict=True), start=seq + 1):
            tuples.append((number, *row_values, link_from, digest))
            link_from = digest
        columns = ["seq", *_COLUMNS[table], "prev_hash", "hash"]
        await connection.copy_records_to_table(table, records=tuples, columns=columns)
        await connection.execute(
            "INSERT INTO audit_checkpoints (chain, seq, hash, kind, signature) VALUES ($1, $2, $3, $4, $5)",
            *signing.current().checkpoint(table, seq + len(fresh), link_from))
        if table == chain.OUTCOMES:
            await _roll_up(connection, fresh)
        return len(fresh)
