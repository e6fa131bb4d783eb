"""Walk the audit chains and name the first record that breaks them; remember how far they verified.

For each chain, rows are read in ``seq`` order through a server-side cursor. A row is broken when:

* its ``seq`` is not the one expected (rows were deleted, or inserted out of order),
* its ``prev_hash`` is not the hash of the row before it (a predecessor was removed or reordered),
* its ``hash`` does not match its own contents (it was modified).

Checkpoints add more checks: a checkpoint whose row no longer has the pinned hash, and a checkpoint
beyond the last row (the newest rows were deleted). A ``retention`` checkpoint is the anchor where a
chain starts after old partitions were exported and dropped.

With the control plane's public key, signatures are checked too (:mod:`controlplane.audit.signing`):
a ``signed`` checkpoint whose signature does not verify is a forgery, and rows after the last valid
signature were appended by someone without the key (a database role writing directly). Without the
key the chains are still walked, and the report says the signatures were not checked.

Markers (``audit_verifications``). The control plane records each verification it makes: "chain C
verified from seq A to seq N, whose hash is H, at time T: intact (or the findings)", signed with its
audit signing key under a purpose of its own, which the database never holds. An **incremental**
verification starts from the newest marker whose signature verifies (a forged one is ignored, and
named): it checks that the row at seq N still has hash H, then walks only the rows after N. Because
each hash covers every row before it, a chain rewritten up to N (rows edited and re-hashed, removed or
inserted) cannot keep H at N; so the rows up to N are still the ones verified, *unless* one was edited
in place leaving its stored hashes alone, or a checkpoint pinning an old row was forged: only a
**full** verification (every row re-hashed from the chain's start) finds those. When the newest marker
recorded a break, the next verification walks the whole chain again, so a break is never forgotten by
starting past it. The API verifies incrementally by default (``?full=true``: in full); the control
plane's duties verify incrementally every minute and in full every day (settings).

Hashing runs in a worker thread, one batch of rows at a time, so a long walk leaves the control
plane's event loop free to answer requests.

Over 450 lines because online verification (full and incremental, with signed markers) and offline
export verification share the chain rules and must never drift apart.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from controlplane.audit import chain
from controlplane.audit.signing import Signer, Verifier

CHAINS = (chain.EVENTS, chain.REQUESTS, chain.OUTCOMES)
#: Rows fetched, then hashed off the event loop, at a time.
BATCH = 5000
#: Markers read, newest first, looking for one whose signature verifies. Beyond that many forged or
#: foreign markers in a row, verification starts from the chain's start (slower, never less sound).
MARKER_LOOKBACK = 20
#: Key for pg_try_advisory_lock: one replica at a time runs the verification duties.
DUTY_LOCK = 0x4B57_0010


@dataclass
class Finding:
    chain: str
    seq: int
    problem: str
    identity: str = ""

    def __str__(self) -> str:
        who = f" ({self.identity})" if self.identity else ""
        return f"{self.chain} seq {self.seq}{who}: {self.problem}"


@dataclass(frozen=True)
class Marker:
    """One recorded verification of a chain (a row of ``audit_verifications``)."""

    chain: str
    kind: str
    base_id: int | None
    from_seq: int
    to_seq: int
    to_hash: bytes
    rows: int
    ok: bool
    findings: list[dict[str, Any]]
    verified_at: datetime
    duration_ms: int
    id: int | None = None
    signature: bytes = b""

    def document(self) -> dict[str, Any]:
        """What the signature covers: everything but the row's id (assigned by the database)."""
        return {"chain": self.chain, "kind": self.kind, "base_id": self.base_id, "from_seq": self.from_seq,
                "to_seq": self.to_seq, "to_hash": self.to_hash.hex(), "rows": self.rows, "ok": self.ok,
                "findings": self.findings, "verified_at": chain.plain(self.verified_at),
                "duration_ms": self.duration_ms}

    def public(self) -> dict[str, Any]:
        return self.document() | {"id": self.id, "verified_at": self.verified_at, "signature": self.signature.hex()}

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Marker:
        findings = row["findings"]
        if isinstance(findings, str):  # a connection without the JSON codec
            findings = json.loads(findings)
        return cls(chain=row["chain"], kind=row["kind"], base_id=row["base_id"], from_seq=row["from_seq"],
                   to_seq=row["to_seq"], to_hash=bytes(row["to_hash"]), rows=row["rows"], ok=row["ok"],
                   findings=list(findings), verified_at=row["verified_at"], duration_ms=row["duration_ms"],
                   id=row["id"], signature=bytes(row["signature"]))


@dataclass
class ChainReport:
    chain: str
    #: Records the verification vouches for: from the chain's start (or retention anchor) to its head.
    records: int = 0
    findings: list[Finding] = field(default_factory=list)
    #: The last row checked, and the highest seq a valid signature covers (None: not checked).
    head_seq: int | None = None
    head_hash: bytes | None = None
    signed_seq: int | None = None
    #: full: every row from the chain's start; incremental: the rows after ``base``.
    kind: str = "full"
    base: Marker | None = None
    #: The first seq this verification hashed, and how many rows it hashed.
    from_seq: int = 1
    rows_checked: int = 0
    #: False when the walk stopped at ``max_rows`` before the chain's head.
    complete: bool = True
    duration_ms: int = 0
    #: Newer markers skipped because their signature does not verify (ids).
    ignored_markers: list[int] = field(default_factory=list)
    #: The marker this verification recorded, if any.
    marker: Marker | None = None


def _identity(table: str, row: Mapping[str, Any]) -> str:
    if table == chain.EVENTS:
        return f"event {row['action']} on {row['target_type']} {row['target_id']} at {row['at'].isoformat()}"
    return f"request {row['request_id']} at {row['at'].isoformat()}"


@dataclass
class Walk:
    """The checks on consecutive rows of one chain, fed a batch at a time (in a worker thread)."""

    table: str
    expected_seq: int
    prev_hash: bytes
    pinned: dict[int, bytes] = field(default_factory=dict)
    #: Rows beyond this seq carry no valid signature (None: signatures not checked).
    signed_seq: int | None = None
    rows: int = 0
    finding: Finding | None = None

    @property
    def last_seq(self) -> int:
        return self.expected_seq - 1

    def feed(self, rows: Sequence[Mapping[str, Any]]) -> bool:
        """Check ``rows``; False once a row breaks the chain (``finding`` says which, and why)."""
        table, link = self.table, chain.link
        for row in rows:
            self.rows += 1
            seq = row["seq"]
            if seq != self.expected_seq:
                problem = (f"records {self.expected_seq}..{seq - 1} are missing (deleted)" if seq > self.expected_seq
                           else f"out of order: seq {seq} follows seq {self.expected_seq - 1}")
                return self._broken(seq, problem, row)
            if bytes(row["prev_hash"]) != self.prev_hash:
                return self._broken(seq, "does not link to the record before it (that record was modified, "
                                         "removed or reordered)", row)
            digest = link(table, self.prev_hash, row)
            if digest != bytes(row["hash"]):
                return self._broken(seq, "its contents were modified", row)
            if seq in self.pinned and self.pinned[seq] != digest:
                return self._broken(seq, "differs from its checkpoint", row)
            if self.signed_seq is not None and seq > self.signed_seq:
                return self._broken(seq, "no signature covers this record: it was appended by someone without "
                                         "the signing key", row)
            self.prev_hash, self.expected_seq = digest, seq + 1
        return True

    def _broken(self, seq: int, problem: str, row: Mapping[str, Any]) -> bool:
        self.finding = Finding(self.table, seq, problem, _identity(self.table, row))
        return False


def _columns(table: str) -> str:
    return ", ".join([*chain.FIELDS[table], *chain.EXTENSIONS[table], "prev_hash", "hash"])


async def verify_chain(connection: asyncpg.Connection, table: str, verifier: Verifier | None = None, *,
                       base: Marker | None = None, max_rows: int | None = None) -> ChainReport:
    """Verify one chain in one snapshot: in full, or (``base``: a marker whose signature was checked)
    the rows after it; at most ``max_rows`` rows (None: to the head)."""
    started = time.monotonic()
    report = ChainReport(table)
    async with connection.transaction(readonly=True, isolation="repeatable_read"):
        anchor = await connection.fetchrow(
            "SELECT seq, hash FROM audit_checkpoints WHERE chain = $1 AND kind = 'retention' "
            "ORDER BY seq DESC LIMIT 1", table)
        anchor_seq, start_hash = (anchor["seq"], bytes(anchor["hash"])) if anchor else (0, chain.GENESIS)
        start_seq = anchor_seq
        # A marker before the retention anchor says nothing the anchor does not: start there. One at the
        # anchor (an empty chain's) starts where the anchor does, if it agrees with it.
        if base is not None and base.to_seq == anchor_seq and base.to_hash == start_hash:
            report.kind, report.base = "incremental", base
        elif base is not None and base.to_seq > anchor_seq:
            report.kind, report.base = "incremental", base
            found = [bytes(r["hash"]) for r in await connection.fetch(
                f"SELECT hash FROM {table} WHERE seq = $1", base.to_seq)]  # noqa: S608 - a fixed table name
            if found != [base.to_hash]:
                problem = ("is gone since it was verified (deleted)" if not found else
                           f"appears {len(found)} times" if len(found) > 1 else
                           f"no longer has the hash verification {base.id} found at "
                           f"{chain.plain(base.verified_at)}: the chain was rewritten up to here since")
                report.findings.append(Finding(table, base.to_seq, problem))
                report.from_seq, report.duration_ms = base.to_seq, int((time.monotonic() - started) * 1000)
                return report
            start_seq, start_hash = base.to_seq, base.to_hash
        # An incremental walk checks the checkpoints from its marker on (a full one: every one).
        checkpoints = await connection.fetch(
            "SELECT seq, hash, kind, signature FROM audit_checkpoints WHERE chain = $1 AND seq >= $2 ORDER BY seq",
            table, start_seq if report.base is not None else -(2**63))
        pinned = {c["seq"]: bytes(c["hash"]) for c in checkpoints if c["kind"] == "periodic"}
        walk = Walk(table, start_seq + 1, start_hash, pinned)
        if verifier is not None:
            signed = []
            for checkpoint in (c for c in checkpoints if c["kind"] == "signed"):
                if verifier.valid(table, checkpoint["seq"], bytes(checkpoint["hash"]), bytes(checkpoint["signature"])):
                    signed.append(checkpoint)
                else:
                    report.findings.append(Finding(table, checkpoint["seq"], "a checkpoint's signature does not "
                                                   "verify (forged by someone without the signing key)"))
                    report.duration_ms = int((time.monotonic() - started) * 1000)
                    return report
            # A signed head pins its row like any checkpoint; the last one bounds what is Keyward's.
            walk.pinned |= {c["seq"]: bytes(c["hash"]) for c in signed}
            walk.signed_seq = report.signed_seq = max((c["seq"] for c in signed), default=0)
        # A full walk reads every row (a stray one before the anchor is out of order); an incremental
        # one only those after its marker.
        query = f"SELECT {_columns(table)} FROM {table}"  # noqa: S608 - fixed table and column names
        args: list[Any] = []
        if report.base is not None:
            query += " WHERE seq > $1"
            args.append(start_seq)
        query += " ORDER BY seq"
        if max_rows is not None:
            query += f" LIMIT {int(max_rows)}"
        cursor = await connection.cursor(query, *args)
        while batch := await cursor.fetch(BATCH):
            if not await asyncio.to_thread(walk.feed, batch):
                break
    report.from_seq, report.rows_checked = start_seq + 1, walk.rows
    report.records = start_seq - anchor_seq + walk.rows
    report.duration_ms = int((time.monotonic() - started) * 1000)
    if walk.finding is not None:
        report.findings.append(walk.finding)
        return report
    last_seq = walk.last_seq
    report.head_seq, report.head_hash = last_seq, walk.prev_hash if last_seq >= 1 else None
    report.complete = max_rows is None or walk.rows < max_rows
    if report.base is None and not report.complete:
        report.kind = "incremental"  # from the start, but not to the head: not a full verification
    beyond = [s for s in walk.pinned if s > last_seq] if report.complete else []
    if beyond:
        report.findings.append(Finding(table, last_seq + 1, f"records after seq {last_seq} are missing: a "
                                       f"checkpoint pins seq {max(beyond)}"))
    return report


async def connect(url: str) -> asyncpg.Connection:
    connection = await asyncpg.connect(url)
    # Events carry JSONB; hash it as the writer did, as decoded JSON.
    await connection.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    return connection


async def verify_all(url: str, *, public_key: str | None = None) -> list[ChainReport]:
    """Every chain's report, in full, straight from the database (no marker is read or recorded: that
    takes the signing key); signatures are checked when ``public_key`` is given."""
    verifier = Verifier(public_key) if public_key else None
    connection = await connect(url)
    try:
        return [await verify_chain(connection, table, verifier) for table in CHAINS]
    finally:
        await connection.close()


# -- markers ----------------------------------------------------------------------------------------


async def newest_marker(connection: asyncpg.Connection, table: str, verifier: Verifier, *,
                        kind: str | None = None) -> tuple[Marker | None, list[int]]:
    """The newest marker of ``table`` (of ``kind``, if given) whose signature verifies, and the ids of
    newer ones skipped because theirs does not (written by someone without the signing key)."""
    rows = await connection.fetch(MARKERS_SQL.format("$1", "$2", "$3"), table, kind, MARKER_LOOKBACK)
    return first_valid(rows, table, verifier)


#: The newest markers of a chain (of a kind, if not null), newest first; placeholders for the chain,
#: the kind and how many, formatted in as the driver spells them.
MARKERS_SQL = ("SELECT * FROM audit_verifications WHERE chain = {0} AND (CAST({1} AS text) IS NULL OR kind = {1}) "
               "ORDER BY verified_at DESC, id DESC LIMIT {2}")


def first_valid(rows: Sequence[Mapping[str, Any]], table: str,
                verifier: Verifier) -> tuple[Marker | None, list[int]]:
    """The first of ``rows`` (newest first) that is a marker of ``table`` whose signature verifies, and
    the ids of those before it whose signature does not."""
    ignored: list[int] = []
    for row in rows:
        marker = Marker.from_row(row)
        if marker.chain == table and verifier.valid_marker(marker.document(), marker.signature):
            return marker, ignored
        ignored.append(row["id"])
    return None, ignored


def marker_of(report: ChainReport, *, verified_at: datetime | None = None) -> Marker:
    """The marker recording ``report`` (unsigned, without an id)."""
    if report.findings or report.head_seq is None:
        # Nothing is vouched for past where this run started.
        to_seq = report.from_seq - 1
        to_hash = report.base.to_hash if report.base and report.base.to_seq == to_seq else b""
    else:
        to_seq, to_hash = report.head_seq, report.head_hash or chain.GENESIS
    return Marker(chain=report.chain, kind=report.kind, base_id=report.base.id if report.base else None,
                  from_seq=report.from_seq, to_seq=to_seq, to_hash=to_hash, rows=report.rows_checked,
                  ok=not report.findings,
                  findings=[{"seq": f.seq, "problem": f.problem, "identity": f.identity} for f in report.findings],
                  verified_at=verified_at or datetime.now(UTC), duration_ms=report.duration_ms)


async def record(connection: asyncpg.Connection, marker: Marker, signer: Signer) -> Marker:
    """Sign ``marker`` and append it to ``audit_verifications``."""
    signature = signer.sign_marker(marker.document())
    marker_id = await connection.fetchval(
        "INSERT INTO audit_verifications (chain, kind, base_id, from_seq, to_seq, to_hash, rows, ok, findings, "
        "verified_at, duration_ms, signature) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) "
        "RETURNING id", marker.chain, marker.kind, marker.base_id, marker.from_seq, marker.to_seq, marker.to_hash,
        marker.rows, marker.ok, marker.findings, marker.verified_at, marker.duration_ms, signature)
    return replace(marker, id=marker_id, signature=signature)


async def verify_marked(connection: asyncpg.Connection, table: str, signer: Signer, *, full: bool = False,
                        max_rows: int | None = None) -> ChainReport:
    """Verify ``table`` from its newest valid marker (``full``: from its start) and record the result.

    A marker that recorded a break is no place to start: the chain is then walked from its start again.
    Nothing is recorded when nothing new was checked and the marker it started from still holds."""
    verifier = Verifier(signer.public_key)
    base, ignored = (None, []) if full else await newest_marker(connection, table, verifier)
    report = await verify_chain(connection, table, verifier, base=base if base and base.ok else None,
                                max_rows=max_rows)
    report.ignored_markers = ignored
    if report.findings or report.rows_checked or report.base is None:
        report.marker = await record(connection, marker_of(report), signer)
    return report


# -- what the API answers ---------------------------------------------------------------------------


def report_document(report: ChainReport) -> dict[str, Any]:
    """A chain's report as the API and ``--json`` give it."""
    return {"chain": report.chain, "records": report.records, "intact": not report.findings,
            "head_seq": report.head_seq, "head_hash": report.head_hash.hex() if report.head_hash else None,
            "signed_seq": report.signed_seq,
            "findings": [{"seq": f.seq, "problem": f.problem, "identity": f.identity} for f in report.findings]}


def marker_summary(marker: Marker | None) -> dict[str, Any] | None:
    if marker is None:
        return None
    return {"id": marker.id, "kind": marker.kind, "verified_at": marker.verified_at, "ok": marker.ok,
            "from_seq": marker.from_seq, "to_seq": marker.to_seq, "to_hash": marker.to_hash.hex(),
            "rows": marker.rows, "duration_ms": marker.duration_ms, "findings": marker.findings,
            "signature": marker.signature.hex()}


async def signed_head(connection: asyncpg.Connection, table: str, seq: int) -> dict[str, Any] | None:
    """The signed checkpoint at ``seq``, as anyone can check it against the public key."""
    row = await connection.fetchrow(
        "SELECT seq, hash, signature FROM audit_checkpoints WHERE chain = $1 AND kind = 'signed' "
        "AND seq = $2 ORDER BY id DESC LIMIT 1", table, seq)
    if row is None:
        return None
    return {"seq": row["seq"], "hash": bytes(row["hash"]).hex(), "signature": bytes(row["signature"]).hex()}


async def last_full(connection: asyncpg.Connection, table: str, verifier: Verifier) -> dict[str, Any] | None:
    """The newest full verification of ``table`` whose signature verifies: when, and what it found."""
    marker, _ignored = await newest_marker(connection, table, verifier, kind="full")
    return marker_summary(marker)


#: One verification at a time per process (the API's and the duties'): each may hash many rows.
_running: asyncio.Lock | None = None


def _lock() -> asyncio.Lock:
    global _running
    if _running is None:
        _running = asyncio.Lock()
    return _running


async def verify_store(url: str, *, signer: Signer, full: bool = False) -> dict[str, Any]:
    """What ``GET /api/v1/audit/verify`` answers: every chain verified (incrementally from its newest
    valid marker, or ``full``) with its signatures checked, the marker it started from and the one it
    recorded, the rows hashed, the last full verification, and the last validly signed head (seq, hash,
    Ed25519 signature), which anyone can check against the published public key."""
    verifier = Verifier(signer.public_key)
    async with _lock():
        started = time.monotonic()
        connection = await connect(url)
        try:
            chains = []
            for table in CHAINS:
                report = await verify_marked(connection, table, signer, full=full)
                head = await signed_head(connection, table, report.signed_seq) if report.signed_seq else None
                chains.append(report_document(report) | {
                    "signed_head": head, "kind": report.kind, "from_marker": marker_summary(report.base),
                    "from_seq": report.from_seq, "rows_checked": report.rows_checked,
                    "duration_ms": report.duration_ms, "marker": marker_summary(report.marker),
                    "ignored_markers": report.ignored_markers,
                    "last_full": await last_full(connection, table, verifier)})
        finally:
            await connection.close()
    return {"intact": all(c["intact"] for c in chains), "signatures_checked": True, "public_key": signer.public_key,
            "kind": "full" if all(c["kind"] == "full" for c in chains) else "incremental",
            "rows_checked": sum(c["rows_checked"] for c in chains), "verified_at": datetime.now(UTC),
            "duration_ms": int((time.monotonic() - started) * 1000), "chains": chains}


async def verification_round(url: str, *, signer: Signer, full: bool, max_rows: int | None,
                             full_every: timedelta | None = None) -> list[ChainReport]:
    """One round of the control plane's verification duties: each chain verified incrementally (its
    walk bounded by ``max_rows``, so a round stays short and the next one goes on from its marker), or
    ``full`` those whose newest valid full verification is older than ``full_every`` (None: every one).
    One replica at a time (an advisory lock), and never beside another verification in this process:
    otherwise this round is skipped."""
    if _lock().locked():
        return []
    async with _lock():
        connection = await connect(url)
        try:
            if not await connection.fetchval("SELECT pg_try_advisory_lock($1)", DUTY_LOCK):
                return []
            try:
                reports = []
                verifier = Verifier(signer.public_key)
                for table in CHAINS:
                    if full and full_every is not None:
                        last, _ignored = await newest_marker(connection, table, verifier, kind="full")
                        if last is not None and last.verified_at > datetime.now(UTC) - full_every:
                            continue
                    reports.append(await verify_marked(connection, table, signer, full=full, max_rows=max_rows))
                return reports
            finally:
                await connection.execute("SELECT pg_advisory_unlock($1)", DUTY_LOCK)
        finally:
            await connection.close()


# -- exports, offline -------------------------------------------------------------------------------
#
# ``keyward audit verify-export FILE`` checks an export of events or requests (CSV or JSON lines, see
# :mod:`controlplane.audit.exports`) with no database: each row's hash is recomputed from its fields
# with :func:`controlplane.audit.chain.link`, exactly as the writer computed it; each row whose
# predecessor in the chain is in the file must link to it; the rows must be in the export's order. A
# filtered export has gaps in ``seq``; its signed trailer (``signed=true``) then proves that no row was
# removed, added or moved: it states the number of rows and a digest of their hashes in file order,
# under the control plane's signature. Without a trailer a gap cannot be told from a removal, unless the
# export is known to be complete (``--complete``).

#: The columns an export must carry for each chain, besides ``prev_hash`` and ``hash``.
EXPORT_COLUMNS: dict[str, tuple[str, ...]] = {
    chain.EVENTS: chain.FIELDS[chain.EVENTS],
    chain.REQUESTS: (*(f for f in chain.FIELDS[chain.REQUESTS] if f not in ("decision", "status")),
                     *(f for f in chain.EXTENSIONS[chain.REQUESTS] if f != "sanitized"),
                     "record_decision", "record_status", "record_sanitized"),
}
#: A request export's columns whose hashed value is the record's own (the others are what the client got).
_RECORDED = {"decision": "record_decision", "status": "record_status", "sanitized": "record_sanitized"}
_INTEGERS = {"seq", "record_status"}
_JSON_FIELDS = {"before", "after"}
TRAILER_KEY = "keyward_export"
_CSV_TRAILER = f"# {TRAILER_KEY} "
#: Findings listed before the verifier stops reading: the first is the one to act on.
MAX_FINDINGS = 20


class ExportUnreadable(ValueError):
    """The file is not an export this verifier reads (not CSV / JSON lines, or columns missing)."""


@dataclass
class ExportReport:
    chain: str
    rows: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    first_hash: str | None = None
    last_hash: str | None = None
    #: Ranges of seq between the first and last row that the file does not hold.
    gaps: list[tuple[int, int]] = field(default_factory=list)
    trailer: dict[str, Any] | None = None
    #: "valid", "not checked" (no public key) or "absent" (no trailer).
    signature: str = "absent"
    findings: list[str] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return not self.findings

    def document(self) -> dict[str, Any]:
        return {"chain": self.chain, "intact": self.intact, "rows": self.rows, "first_seq": self.first_seq,
                "last_seq": self.last_seq, "first_hash": self.first_hash, "last_hash": self.last_hash,
                "gaps": [list(gap) for gap in self.gaps], "signature": self.signature,
                "trailer": self.trailer, "findings": self.findings}


def _csv_records(text: str) -> Iterator[list[str | None]]:
    """CSV records in which a quoted empty field is ``""`` and an unquoted empty one is None (a null):
    the distinction the exports' CSV makes and :mod:`csv` does not keep."""
    i, n = 0, len(text)
    while i < n:
        fields: list[str | None] = []
        while True:
            if i < n and text[i] == '"':
                parts, i = [], i + 1
                while True:
                    j = text.find('"', i)
                    if j < 0:
                        raise ExportUnreadable("a quoted CSV field is never closed")
                    parts.append(text[i:j])
                    if text.startswith('"', j + 1):
                        parts.append('"')
                        i = j + 2
                        continue
                    i = j + 1
                    break
                fields.append("".join(parts))
                if i < n and text[i] not in ",\r\n":
                    raise ExportUnreadable("a CSV field has text after its closing quote")
            else:
                j = i
                while j < n and text[j] not in ",\r\n":
                    j += 1
                fields.append(text[i:j] or None)
                i = j
            if i < n and text[i] == ",":
                i += 1
                continue
            if i < n and text[i] == "\r":
                i += 1
            if i < n and text[i] == "\n":
                i += 1
            break
        yield fields


def _typed(name: str, value: Any, *, from_csv: bool) -> Any:
    if value is None:
        return None
    if name == "at":
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is None:
            raise ValueError("a timestamp without a timezone")
        return moment
    if not from_csv:
        return value
    if name in _INTEGERS:
        return int(value)
    if name == "record_sanitized":
        if value.lower() not in ("true", "false"):
            raise ValueError(f"{value!r} is not true or false")
        return value.lower() == "true"
    if name in _JSON_FIELDS:
        return json.loads(value)
    return value


def read_export(text: str) -> tuple[str, list[dict[str, Any]], dict[str, Any] | None]:
    """The chain an export is of, its rows (typed as the writer hashed them), and its trailer."""
    body, trailer = text, None
    stripped = text.rstrip("\r\n")
    last = stripped[stripped.rfind("\n") + 1:]
    from_csv = not stripped.lstrip().startswith("{")
    if from_csv and last.startswith(_CSV_TRAILER):
        trailer = json.loads(last[len(_CSV_TRAILER):])
        body = stripped[: len(stripped) - len(last)]
    elif not from_csv and last.startswith("{") and TRAILER_KEY in (parsed := json.loads(last)):
        trailer = parsed[TRAILER_KEY]
        body = stripped[: len(stripped) - len(last)]
    if from_csv:
        records = iter(_csv_records(body))
        header = next(records, None)
        if not header or any(name is None for name in header):
            raise ExportUnreadable("the CSV file has no header row")
        columns = [str(name) for name in header]
        raw = []
        for number, values in enumerate(records, start=1):
            if len(values) != len(columns):
                raise ExportUnreadable(f"row {number} has {len(values)} fields, the header {len(columns)}")
            raw.append(dict(zip(columns, values, strict=True)))
    else:
        try:
            raw = [json.loads(line) for line in body.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise ExportUnreadable(f"not JSON lines: {exc}") from None
        columns = list(raw[0]) if raw else []
    if not raw and trailer is not None:
        columns = [*EXPORT_COLUMNS.get(str(trailer.get("chain")), ()), "prev_hash", "hash"]
    found = chain.REQUESTS if "request_id" in columns else chain.EVENTS if "action" in columns else None
    if found is None:
        raise ExportUnreadable("neither an export of events nor of requests (no action or request_id column)")
    missing = [name for name in (*EXPORT_COLUMNS[found], "prev_hash", "hash") if name not in columns]
    if missing:
        raise ExportUnreadable(f"an export of {found} without the columns the hash covers: {', '.join(missing)} "
                               "(export it again: every export since this release carries them)")
    rows = []
    for number, row in enumerate(raw, start=1):
        try:
            rows.append({name: _typed(name, value, from_csv=from_csv) for name, value in row.items()})
        except (ValueError, TypeError) as exc:
            raise ExportUnreadable(f"row {number}: {exc}") from None
    return found, rows, trailer


def _record(table: str, row: Mapping[str, Any]) -> dict[str, Any]:
    """The fields the chain hashes, from an exported row."""
    names = (*chain.FIELDS[table], *chain.EXTENSIONS[table])
    return {name: row.get(_RECORDED[name] if table == chain.REQUESTS and name in _RECORDED else name)
            for name in names}


def _hex(value: Any) -> bytes | None:
    try:
        return bytes.fromhex(value) if isinstance(value, str) and len(value) == 64 else None
    except ValueError:
        return None


def verify_export(text: str, *, public_key: str | None = None, complete: bool = False) -> ExportReport:
    """Check an export's rows against their hashes, their links and, if it has one, its trailer (see
    above). ``complete``: the export was not filtered, so a gap in ``seq`` is a removed row."""
    table, rows, trailer = read_export(text)
    report = ExportReport(table, rows=len(rows), trailer=trailer)

    def found(problem: str) -> bool:
        report.findings.append(problem)
        return len(report.findings) >= MAX_FINDINGS

    by_seq: dict[int, tuple[int, bytes, bytes]] = {}
    digest = hashlib.sha256()
    previous: tuple[Any, ...] | None = None
    for number, row in enumerate(rows, start=1):
        seq, prev_hash, stated = row.get("seq"), _hex(row.get("prev_hash")), _hex(row.get("hash"))
        if not isinstance(seq, int) or prev_hash is None or stated is None:
            if found(f"row {number}: seq, prev_hash or hash is missing or malformed"):
                break
            continue
        digest.update(stated)
        place = (row["at"], seq) if table == chain.REQUESTS else (seq,)
        if previous is not None and place <= previous:
            if found(f"row {number} (seq {seq}): out of order, it follows seq {previous[-1]}: rows were reordered"):
                break
        previous = place
        if seq in by_seq:
            if found(f"row {number} (seq {seq}): seq {seq} appears twice (rows {by_seq[seq][0]} and {number})"):
                break
            continue
        expected = chain.link(table, prev_hash, _record(table, row))
        if expected != stated:
            if found(f"row {number} (seq {seq}): its fields do not match its hash: expected {expected.hex()}, "
                     f"found {stated.hex()}: the row was edited"):
                break
        if seq == 1 and prev_hash != chain.GENESIS:
            if found(f"row {number} (seq 1): the chain's first record must follow the genesis hash"):
                break
        by_seq[seq] = (number, stated, prev_hash)
    for seq, (number, _stated, prev_hash) in sorted(by_seq.items()):
        before = by_seq.get(seq - 1)
        if before is not None and before[1] != prev_hash and len(report.findings) < MAX_FINDINGS:
            report.findings.append(
                f"row {number} (seq {seq}): prev_hash {prev_hash.hex()} is not the hash of seq {seq - 1} "
                f"(row {before[0]}: {before[1].hex()}): a row was edited, removed or reordered")
    seqs = sorted(by_seq)
    if seqs:
        report.first_seq, report.last_seq = seqs[0], seqs[-1]
        report.first_hash, report.last_hash = by_seq[seqs[0]][1].hex(), by_seq[seqs[-1]][1].hex()
        report.gaps = [(a + 1, b - 1) for a, b in itertools.pairwise(seqs) if b - a > 1]
    if trailer is None:
        if complete and report.gaps:
            for low, high in report.gaps[:MAX_FINDINGS]:
                report.findings.append(f"seq {low}..{high} are missing from a complete export: rows were removed")
    else:
        _check_trailer(report, trailer, digest.hexdigest(), by_seq, public_key)
    return report


def _check_trailer(report: ExportReport, trailer: Mapping[str, Any], digest: str,
                   by_seq: Mapping[int, tuple[int, bytes, bytes]], public_key: str | None) -> None:
    if trailer.get("chain") != report.chain:
        report.findings.append(f"the trailer is for {trailer.get('chain')}, the rows are {report.chain}")
    if trailer.get("rows") != report.rows:
        report.findings.append(f"the trailer says {trailer.get('rows')} rows, the file holds {report.rows}: "
                               "rows were removed or added")
    elif trailer.get("digest") != digest:
        report.findings.append(f"the rows' hashes in file order digest to {digest}, the trailer says "
                               f"{trailer.get('digest')}: a row was replaced, edited or moved")
    head = trailer.get("head")
    if isinstance(head, dict) and head.get("seq") in by_seq and by_seq[head["seq"]][1].hex() != head.get("hash"):
        report.findings.append(f"seq {head['seq']} differs from the chain's signed head in the trailer")
    if public_key is None:
        report.signature = "not checked"
        return
    verifier = Verifier(public_key)
    document = {k: v for k, v in trailer.items() if k != "signature"}
    signature = _signature(trailer.get("signature"))
    if signature is None or not verifier.valid_export(document, signature):
        report.findings.append("the trailer's signature does not verify with this public key: the trailer "
                               "(and so the rows it counts) was not written by this Keyward")
        report.signature = "invalid"
        return
    if isinstance(head, dict):
        head_signature, head_hash = _signature(head.get("signature")), _hex(head.get("hash"))
        if head_signature is None or head_hash is None or not verifier.valid(
                report.chain, int(head["seq"]), head_hash, head_signature):
            report.findings.append("the chain head in the trailer carries no valid signature")
            report.signature = "invalid"
            return
    report.signature = "valid"


def _signature(value: Any) -> bytes | None:
    try:
        return bytes.fromhex(value) if isinstance(value, str) else None
    except ValueError:
        return None
