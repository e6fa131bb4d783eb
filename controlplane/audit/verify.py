"""Walk every audit chain and name the first record that breaks it.

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
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import asyncpg

from controlplane.audit import chain
from controlplane.audit.signing import Verifier

CHAINS = (chain.EVENTS, chain.REQUESTS, chain.OUTCOMES)


@dataclass
class Finding:
    chain: str
    seq: int
    problem: str
    identity: str = ""

    def __str__(self) -> str:
        who = f" ({self.identity})" if self.identity else ""
        return f"{self.chain} seq {self.seq}{who}: {self.problem}"


@dataclass
class ChainReport:
    chain: str
    records: int = 0
    findings: list[Finding] = field(default_factory=list)
    #: The last row checked, and the highest seq a valid signature covers (None: not checked).
    head_seq: int | None = None
    head_hash: bytes | None = None
    signed_seq: int | None = None


def _identity(table: str, row: asyncpg.Record) -> str:
    if table == chain.EVENTS:
        return f"event {row['action']} on {row['target_type']} {row['target_id']} at {row['at'].isoformat()}"
    return f"request {row['request_id']} at {row['at'].isoformat()}"


async def _rows(connection: asyncpg.Connection, table: str) -> AsyncIterator[asyncpg.Record]:
    columns = ", ".join([*chain.FIELDS[table], *chain.EXTENSIONS[table], "prev_hash", "hash"])
    async for row in connection.cursor(f"SELECT {columns} FROM {table} ORDER BY seq", prefetch=5000):  # noqa: S608
        yield row


async def verify_chain(connection: asyncpg.Connection, table: str, verifier: Verifier | None = None) -> ChainReport:
    report = ChainReport(table)
    checkpoints = await connection.fetch(
        "SELECT seq, hash, kind, signature FROM audit_checkpoints WHERE chain = $1 ORDER BY seq", table
    )
    anchor = max((c for c in checkpoints if c["kind"] == "retention"), key=lambda c: c["seq"], default=None)
    expected_seq, prev_hash = (anchor["seq"] + 1, bytes(anchor["hash"])) if anchor else (1, chain.GENESIS)
    pinned = {c["seq"]: bytes(c["hash"]) for c in checkpoints if c["kind"] == "periodic"}
    if verifier is not None:
        signed = []
        for checkpoint in (c for c in checkpoints if c["kind"] == "signed"):
            if verifier.valid(table, checkpoint["seq"], bytes(checkpoint["hash"]), bytes(checkpoint["signature"])):
                signed.append(checkpoint)
            else:
                report.findings.append(Finding(table, checkpoint["seq"], "a checkpoint's signature does not "
                                               "verify (forged by someone without the signing key)"))
                return report
        # A signed head pins its row like any checkpoint; the last one bounds what is Keyward's.
        pinned |= {c["seq"]: bytes(c["hash"]) for c in signed}
        report.signed_seq = max((c["seq"] for c in signed), default=0)
    last_seq = expected_seq - 1
    async with connection.transaction(readonly=True, isolation="repeatable_read"):
        async for row in _rows(connection, table):
            report.records += 1
            seq = row["seq"]
            if seq != expected_seq:
                problem = (f"records {expected_seq}..{seq - 1} are missing (deleted)" if seq > expected_seq
                           else f"out of order: seq {seq} follows seq {expected_seq - 1}")
                report.findings.append(Finding(table, seq, problem, _identity(table, row)))
                return report
            if bytes(row["prev_hash"]) != prev_hash:
                report.findings.append(Finding(table, seq, "does not link to the record before it "
                                               "(that record was modified, removed or reordered)",
                                               _identity(table, row)))
                return report
            digest = chain.link(table, prev_hash, row)
            if digest != bytes(row["hash"]):
                report.findings.append(Finding(table, seq, "its contents were modified", _identity(table, row)))
                return report
            if seq in pinned and pinned[seq] != digest:
                report.findings.append(Finding(table, seq, "differs from its checkpoint", _identity(table, row)))
                return report
            if report.signed_seq is not None and seq > report.signed_seq:
                report.findings.append(Finding(table, seq, "no signature covers this record: it was appended by "
                                               "someone without the signing key", _identity(table, row)))
                return report
            prev_hash, expected_seq, last_seq = digest, seq + 1, seq
    report.head_seq, report.head_hash = last_seq, prev_hash if last_seq >= 1 else None
    beyond = [s for s in pinned if s > last_seq]
    if beyond:
        report.findings.append(Finding(table, last_seq + 1, f"records after seq {last_seq} are missing: a "
                                       f"checkpoint pins seq {max(beyond)}"))
    return report


async def verify_all(url: str, *, public_key: str | None = None) -> list[ChainReport]:
    """Every chain's report; signatures are checked when ``public_key`` is given."""
    verifier = Verifier(public_key) if public_key else None
    connection = await asyncpg.connect(url)
    # Events carry JSONB; hash it as the writer did, as decoded JSON.
    await connection.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    try:
        return [await verify_chain(connection, table, verifier) for table in CHAINS]
    finally:
        await connection.close()
