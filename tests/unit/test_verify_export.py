"""``keyward audit verify-export``: exports written as the server writes them, then tampered with.

Rows are chained with :func:`controlplane.audit.chain.link` (as the writers do) and formatted with the
exports' own cell and JSON functions, so a round trip that loses anything (a null read back as an
empty text, a timestamp's microseconds, a JSON field's key order) fails here.

Last, the one piece of the break-glass summary that a real stack cannot show: a read whose count cannot
be written is kept and written with the next (controlplane.audit.break_glass)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from controlplane.audit import chain, exports, signing
from controlplane.audit.queries import EVENT_CHAIN_COLUMNS, REQUEST_CHAIN_COLUMNS
from controlplane.audit.verify import ExportUnreadable, verify_export

KEY = signing.new_private_key()
SIGNER = signing.Signer(KEY)
PUBLIC = SIGNER.public_key
START = datetime(2026, 11, 30, 9, 0, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _signer() -> Iterator[None]:
    signing.install(SIGNER)
    yield


def events(count: int) -> list[dict[str, Any]]:
    rows, prev = [], chain.GENESIS
    for seq in range(1, count + 1):
        row: dict[str, Any] = {
            "seq": seq, "at": START + timedelta(seconds=seq),  # whole seconds: isoformat drops the microseconds
            "actor": "admin:bootstrap", "mechanism": "cli" if seq % 2 else "api", "action": "token.issued",
            "target_type": "token", "target_id": str(uuid.uuid4()),
            "before": None if seq % 3 else {"name": "old", "n": 1.5, "z": [1, "two"]},
            "after": {"name": f"t{seq}", "quote": 'say "hi", then, go', "empty": ""},
        }
        digest = chain.link(chain.EVENTS, prev, row)
        rows.append(row | {"prev_hash": prev, "hash": digest})
        prev = digest
    return rows


def requests(count: int, late: int | None = None) -> list[dict[str, Any]]:
    """``late``: that seq was ingested late: its request happened before every other's."""
    rows, prev = [], chain.GENESIS
    for seq in range(1, count + 1):
        moment = START - timedelta(minutes=5) if seq == late else START + timedelta(microseconds=123457 * seq)
        record: dict[str, Any] = {
            "seq": seq, "at": moment, "request_id": f"req-{seq}",
            "source": "authz", "token_id": uuid.uuid4(), "user_id": uuid.uuid4(),
            "user_email": "" if seq == 2 else None if seq == 3 else f"u{seq}@example.com",
            "team": "research", "environment": "prod", "provider": "openai", "method": "POST",
            "route": "/v1/chat/completions", "model": "gpt-4o-mini", "decision": "allowed", "status": 200,
            "sanitized": True if seq == 4 else None, "project_id": None, "project": None,
            "limit_scope": None,
        }
        digest = chain.link(chain.REQUESTS, prev, record)
        exported = {column: None for column in REQUEST_CHAIN_COLUMNS} | {
            k: record[k] for k in record if k not in ("decision", "status", "sanitized")}
        exported |= {"decision": "envoy:timeout" if seq == 5 else "allowed", "authz_decision": "allowed",
                     "status": 504 if seq == 5 else 200, "duration_ms": 12, "sanitized": bool(record["sanitized"]),
                     "cost_usd": "0.0001500000", "record_decision": record["decision"],
                     "record_status": record["status"], "record_sanitized": record["sanitized"],
                     "prev_hash": prev, "hash": digest}
        rows.append(exported)
        prev = digest
    return rows


def export(rows: list[dict[str, Any]], columns: tuple[str, ...], fmt: str, *, signed: bool = False,
           table: str = chain.EVENTS) -> str:
    """The text the server streams for these rows (see controlplane.audit.exports._chunks)."""
    if fmt == "csv":
        text = ",".join(columns) + "\r\n" + "".join(
            ",".join(exports._exact_cell(row[c]) for c in columns) + "\r\n" for row in rows)
    else:
        text = "".join(json.dumps({c: exports._jsonable(row[c]) for c in columns}) + "\n" for row in rows)
    if signed:
        import hashlib

        digest = hashlib.sha256(b"".join(row["hash"] for row in rows)).hexdigest()
        head_row = rows[-1]
        head = {"seq": head_row["seq"], "hash": head_row["hash"].hex(),
                "signature": SIGNER.sign(table, head_row["seq"], head_row["hash"]).hex()}
        document = exports.trailer(table, rows=len(rows), first_seq=rows[0]["seq"], last_seq=rows[-1]["seq"],
                                   digest=digest, head=head, filters={"actor": "admin:bootstrap"})
        line = json.dumps(document, separators=(",", ":"))
        text += f"# {exports.TRAILER} {line}\r\n" if fmt == "csv" else json.dumps({exports.TRAILER: document}) + "\n"
    return text


def lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_an_untouched_export_of_events_is_intact(fmt: str) -> None:
    rows = events(12)
    report = verify_export(export(rows, EVENT_CHAIN_COLUMNS, fmt))
    assert report.findings == []
    assert (report.chain, report.rows, report.first_seq, report.last_seq) == ("events", 12, 1, 12)
    assert (report.first_hash, report.last_hash) == (rows[0]["hash"].hex(), rows[-1]["hash"].hex())
    assert report.signature == "absent"


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_an_untouched_export_of_requests_keeps_nulls_empty_texts_and_microseconds(fmt: str) -> None:
    report = verify_export(export(requests(6), REQUEST_CHAIN_COLUMNS, fmt))
    assert report.findings == []
    assert (report.chain, report.rows) == ("request_records", 6)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_signed_export_verifies_with_the_public_key(fmt: str) -> None:
    text = export(events(5), EVENT_CHAIN_COLUMNS, fmt, signed=True)
    report = verify_export(text, public_key=PUBLIC)
    assert report.findings == [] and report.signature == "valid"
    assert verify_export(text).signature == "not checked"
    other = signing.Signer(signing.new_private_key()).public_key
    forged = verify_export(text, public_key=other)
    assert forged.signature == "invalid" and "signature does not verify" in forged.findings[0]


def test_an_edited_row_is_named_with_its_seq_and_both_hashes() -> None:
    rows = events(6)
    text = export(rows, EVENT_CHAIN_COLUMNS, "csv").replace('"t4"', '"t4-renamed"')
    report = verify_export(text)
    assert not report.intact
    expected = chain.link(chain.EVENTS, rows[3]["prev_hash"],
                          rows[3] | {"after": rows[3]["after"] | {"name": "t4-renamed"}})
    assert report.findings[0] == (f"row 4 (seq 4): its fields do not match its hash: expected {expected.hex()}, "
                                  f"found {rows[3]['hash'].hex()}: the row was edited")


def test_a_null_turned_into_an_empty_text_is_an_edit() -> None:
    text = export(requests(4), REQUEST_CHAIN_COLUMNS, "csv")
    header, *body = lines(text)
    columns = header.strip().split(",")
    cells = body[2].rstrip("\r\n").split(",")
    cells[columns.index("user_email")] = '""'  # seq 3's user_email was null
    body[2] = ",".join(cells) + "\r\n"
    report = verify_export(header + "".join(body))
    assert report.findings and report.findings[0].startswith("row 3 (seq 3): its fields do not match its hash")


def test_an_edit_with_a_recomputed_hash_breaks_the_next_link() -> None:
    rows = events(5)
    forged = rows[2] | {"actor": "someone-else"}
    forged["hash"] = chain.link(chain.EVENTS, forged["prev_hash"], forged)
    report = verify_export(export([*rows[:2], forged, *rows[3:]], EVENT_CHAIN_COLUMNS, "jsonl"))
    assert len(report.findings) == 1
    assert report.findings[0].startswith("row 4 (seq 4): prev_hash ")
    assert f"is not the hash of seq 3 (row 3: {forged['hash'].hex()})" in report.findings[0]


def test_a_rewritten_tail_is_caught_by_the_signed_trailer() -> None:
    rows = events(5)
    text = export(rows, EVENT_CHAIN_COLUMNS, "jsonl", signed=True)
    forged, prev = [], rows[1]["hash"]
    for row in rows[2:]:  # edit seq 3 and rechain everything after it
        changed = row | {"actor": "someone-else"} if row["seq"] == 3 else dict(row)
        changed["prev_hash"] = prev
        changed["hash"] = prev = chain.link(chain.EVENTS, prev, changed)
        forged.append(changed)
    trailer_line = lines(text)[-1]
    tampered = export([*rows[:2], *forged], EVENT_CHAIN_COLUMNS, "jsonl") + trailer_line
    report = verify_export(tampered, public_key=PUBLIC)
    assert any("digest to" in f for f in report.findings)
    assert any("differs from the chain's signed head" in f for f in report.findings)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_removed_row(fmt: str) -> None:
    text = export(events(6), EVENT_CHAIN_COLUMNS, fmt)
    header = 1 if fmt == "csv" else 0
    kept = lines(text)
    del kept[header + 2]  # seq 3
    unsigned = verify_export("".join(kept))
    assert unsigned.findings == [] and unsigned.gaps == [(3, 3)]  # a gap, as a filtered export has
    complete = verify_export("".join(kept), complete=True)
    assert complete.findings == ["seq 3..3 are missing from a complete export: rows were removed"]

    signed = lines(export(events(6), EVENT_CHAIN_COLUMNS, fmt, signed=True))
    del signed[header + 2]
    report = verify_export("".join(signed), public_key=PUBLIC)
    assert report.findings == ["the trailer says 6 rows, the file holds 5: rows were removed or added"]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_reordered_rows(fmt: str) -> None:
    text = export(events(5), EVENT_CHAIN_COLUMNS, fmt)
    header = 1 if fmt == "csv" else 0
    body = lines(text)
    body[header + 1], body[header + 2] = body[header + 2], body[header + 1]
    report = verify_export("".join(body))
    assert report.findings[0] == "row 3 (seq 2): out of order, it follows seq 3: rows were reordered"


def test_requests_are_in_time_order_and_a_moved_row_is_out_of_order() -> None:
    rows = requests(4, late=3)  # the export's order is (at, seq): seq 3 comes first
    ordered = [rows[2], rows[0], rows[1], rows[3]]
    assert verify_export(export(ordered, REQUEST_CHAIN_COLUMNS, "csv")).findings == []
    moved = [rows[0], rows[1], rows[2], rows[3]]
    report = verify_export(export(moved, REQUEST_CHAIN_COLUMNS, "csv"))
    assert report.findings == ["row 3 (seq 3): out of order, it follows seq 2: rows were reordered"]


def test_an_export_without_the_hashed_fields_is_refused() -> None:
    old = ("seq,at,actor,mechanism,action,target_type,target_id,before,after\r\n"
           "1,2026-01-01T00:00:00+00:00,a,api,x,y,z,,\r\n")
    with pytest.raises(ExportUnreadable, match="without the columns the hash covers: prev_hash, hash"):
        verify_export(old)
    with pytest.raises(ExportUnreadable, match="neither an export of events nor of requests"):
        verify_export("a,b\r\n1,2\r\n")


# -- the bootstrap token's reads: counted, and carried over when the count cannot be written ----------


class _Sessions:
    """A session factory whose sessions fail (the database is down) or record what they execute."""

    def __init__(self, *, fail: bool) -> None:
        self.fail = fail
        self.executed: list[dict[str, Any]] = []

    def __call__(self) -> _Sessions:
        return self

    async def __aenter__(self) -> _Sessions:
        if self.fail:
            raise OSError("connection refused")
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def begin(self) -> _Sessions:
        return self

    async def execute(self, _statement: object, params: dict[str, Any]) -> None:
        self.executed.append(params)


def test_a_read_that_cannot_be_counted_is_kept_and_counted_with_the_next() -> None:
    import asyncio

    from controlplane.audit import break_glass

    down, up = _Sessions(fail=True), _Sessions(fail=False)
    assert asyncio.run(break_glass.count_read("/api/v1/users", sessions=down)) is False
    assert asyncio.run(break_glass.count_read("/api/v1/users", sessions=down)) is False
    assert break_glass.unrecorded() == 2
    assert asyncio.run(break_glass.count_read("/api/v1/teams", sessions=up)) is True
    [written] = up.executed
    assert written["reads"] == 3
    assert json.loads(written["paths"]) == {"/api/v1/users": 2, "/api/v1/teams": 1}
    assert written["first_at"] <= datetime.now(UTC)
    assert break_glass.unrecorded() == 0
