"""Verification markers: "verified up to seq N, whose hash is H", signed, and the incremental
verification that starts from the newest valid one.

The chain lives in :class:`Store`, a stand-in for the few statements :mod:`controlplane.audit.verify`
sends (injected as its connection), so every case runs in milliseconds and counts the rows hashed.
The same behaviour against a real database is in ``tests/e2e/test_verify_incremental.py``.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from controlplane.audit import chain, signing, verify
from controlplane.audit.signing import Signer, Verifier

EVENTS = chain.EVENTS


def _event(seq: int, prev_hash: bytes, *, actor: str = "admin:bootstrap") -> dict[str, Any]:
    row: dict[str, Any] = {"seq": seq, "at": datetime(2026, 12, 1, tzinfo=UTC) + timedelta(seconds=seq),
                           "actor": actor, "mechanism": "api", "action": "token.created", "target_type": "token",
                           "target_id": str(uuid.UUID(int=seq)), "before": None, "after": {"n": seq}}
    return row | {"prev_hash": prev_hash, "hash": chain.link(EVENTS, prev_hash, row)}


class Cursor:
    def __init__(self, rows: list[dict[str, Any]], store: Store) -> None:
        self._rows, self._store = rows, store

    async def fetch(self, n: int) -> list[dict[str, Any]]:
        batch, self._rows = self._rows[:n], self._rows[n:]
        self._store.read += len(batch)
        return batch


class Store:
    """One chain (events) with its checkpoints and markers, answering the statements verify sends."""

    def __init__(self, signer: Signer) -> None:
        self.signer = signer
        self.rows: list[dict[str, Any]] = []
        self.checkpoints: list[dict[str, Any]] = []
        self.markers: list[dict[str, Any]] = []
        #: Rows handed to the walk, across every cursor.
        self.read = 0

    def append(self, count: int) -> None:
        for _ in range(count):
            prev = self.rows[-1]["hash"] if self.rows else chain.GENESIS
            self.rows.append(_event(len(self.rows) + 1, prev))
        head = self.rows[-1]
        self.checkpoints.append({"seq": head["seq"], "hash": head["hash"], "kind": "signed",
                                 "signature": self.signer.sign(EVENTS, head["seq"], head["hash"])})

    def rewrite_from(self, seq: int, actor: str) -> None:
        """Edit row ``seq`` and re-hash every row from it on, as someone with write access could."""
        for index in range(seq - 1, len(self.rows)):
            prev = self.rows[index - 1]["hash"] if index else chain.GENESIS
            self.rows[index] = _event(index + 1, prev, actor=actor if index == seq - 1 else "admin:bootstrap")

    # -- the connection's surface ----------------------------------------------------------------

    @asynccontextmanager
    async def transaction(self, **_options: Any) -> AsyncIterator[None]:
        yield

    async def fetchrow(self, query: str, *args: Any) -> dict[str, Any] | None:
        assert "kind = 'retention'" in query
        return None

    async def fetch(self, query: str, *args: Any) -> list[dict[str, Any]]:
        if query.startswith("SELECT hash FROM events WHERE seq = $1"):
            return [{"hash": r["hash"]} for r in self.rows if r["seq"] == args[0]]
        if "FROM audit_checkpoints" in query:
            return [c for c in self.checkpoints if c["seq"] >= args[1]]
        if "FROM audit_verifications" in query:
            table, kind, n = args
            found = [m for m in self.markers if m["chain"] == table and kind in (None, m["kind"])]
            return sorted(found, key=lambda m: (m["verified_at"], m["id"]), reverse=True)[:n]
        raise AssertionError(query)

    async def cursor(self, query: str, *args: Any) -> Cursor:
        rows = [r for r in self.rows if not args or r["seq"] > args[0]]
        if limit := re.search(r"LIMIT (\d+)$", query):
            rows = rows[: int(limit.group(1))]
        return Cursor(rows, self)

    async def fetchval(self, query: str, *args: Any) -> Any:
        assert query.startswith("INSERT INTO audit_verifications")
        names = ("chain", "kind", "base_id", "from_seq", "to_seq", "to_hash", "rows", "ok", "findings",
                 "verified_at", "duration_ms", "signature")
        self.markers.append(dict(zip(names, args, strict=True)) | {"id": len(self.markers) + 1})
        return len(self.markers)


@pytest.fixture
def signer() -> Signer:
    return Signer(signing.new_private_key())


@pytest.fixture
def store(signer: Signer) -> Store:
    created = Store(signer)
    created.append(100)
    return created


def run(store: Store, *, full: bool = False, max_rows: int | None = None) -> verify.ChainReport:
    store.read = 0
    return asyncio.run(verify.verify_marked(store, EVENTS, store.signer, full=full, max_rows=max_rows))  # type: ignore[arg-type]


def test_the_first_verification_is_full_and_records_a_signed_marker(store: Store, signer: Signer) -> None:
    report = run(store)
    assert (report.kind, report.rows_checked, report.records, report.findings) == ("full", 100, 100, [])
    marker = report.marker
    assert marker is not None and (marker.ok, marker.to_seq, marker.to_hash) == (True, 100, store.rows[-1]["hash"])
    assert Verifier(signer.public_key).valid_marker(marker.document(), marker.signature)


def test_incremental_verification_hashes_only_the_rows_after_the_marker(store: Store) -> None:
    first = run(store)
    store.append(7)
    report = run(store)
    assert report.kind == "incremental" and report.base is not None and report.base.id == first.marker.id  # type: ignore[union-attr]
    assert (report.rows_checked, store.read, report.from_seq, report.head_seq) == (7, 7, 101, 107)
    assert report.records == 107 and report.findings == []
    # Nothing new: nothing hashed, nothing recorded, the marker still holds.
    again = run(store)
    assert (again.rows_checked, store.read, again.marker, again.findings) == (0, 0, None, [])
    assert again.base is not None and again.base.to_seq == 107


def test_a_round_bounded_by_max_rows_goes_on_from_its_marker(store: Store) -> None:
    first = run(store, max_rows=60)
    assert (first.kind, first.rows_checked, first.complete, first.head_seq) == ("incremental", 60, False, 60)
    second = run(store, max_rows=60)
    assert (second.base.to_seq, second.rows_checked, second.head_seq, second.findings) == (60, 40, 100, [])  # type: ignore[union-attr]


def test_a_forged_marker_is_ignored_and_named(store: Store) -> None:
    run(store)
    store.append(5)
    # Someone with write access claims "verified up to 105" with a made-up signature, and with another key.
    head = store.rows[-1]
    forged = {"chain": EVENTS, "kind": "full", "base_id": None, "from_seq": 1, "to_seq": 105, "to_hash": head["hash"],
              "rows": 105, "ok": True, "findings": [], "verified_at": datetime.now(UTC) + timedelta(hours=1),
              "duration_ms": 1}
    store.markers.append(forged | {"id": 50, "signature": b"\x00" * 64})
    other = Signer(signing.new_private_key())
    document = verify.Marker(**{k: v for k, v in forged.items()}).document()
    store.markers.append(forged | {"id": 51, "signature": other.sign_marker(document)})
    report = run(store)
    assert set(report.ignored_markers) == {50, 51}
    assert report.base is not None and report.base.to_seq == 100
    assert report.rows_checked == 5  # the forged marker would have made it 0


def test_a_marker_whose_fields_were_changed_no_longer_verifies(store: Store) -> None:
    first = run(store)
    store.markers[-1]["to_seq"] = 90  # edited after signing: the signature no longer covers it
    store.append(3)
    report = run(store)
    assert report.ignored_markers == [first.marker.id]  # type: ignore[union-attr]
    assert report.kind == "full" and report.rows_checked == 103


def test_a_tail_rewritten_after_the_marker_is_detected(store: Store) -> None:
    run(store)
    store.rewrite_from(40, actor="someone-else")  # edited and re-hashed through the head: links all agree
    store.append(2)
    report = run(store)
    [finding] = report.findings
    assert finding.seq == 100 and "no longer has the hash verification" in finding.problem
    assert report.rows_checked == 0 and report.marker is not None and report.marker.ok is False
    # The next verification does not start past a break: it walks the whole chain again.
    again = run(store)
    assert again.kind == "full" and again.base is None and again.findings


def test_a_deleted_marker_row_is_detected(store: Store) -> None:
    run(store)
    store.rows = store.rows[:99]
    [finding] = run(store).findings
    assert (finding.seq, finding.problem) == (100, "is gone since it was verified (deleted)")


def test_a_row_edited_in_place_before_the_marker_is_found_only_by_a_full_verification(store: Store) -> None:
    run(store)
    store.rows[9] = store.rows[9] | {"actor": "someone-else"}  # stored hashes left alone
    store.append(1)
    assert run(store).findings == []  # what incremental verification cannot see (the README says so)
    [finding] = run(store, full=True).findings
    assert finding.seq == 10 and finding.problem == "its contents were modified"


def test_a_row_appended_without_a_signature_after_the_marker_is_detected(store: Store) -> None:
    run(store)
    head = store.rows[-1]
    store.rows.append(_event(101, head["hash"]))  # linked, but no signed checkpoint covers it
    [finding] = run(store).findings
    assert finding.seq == 101 and "no signature covers" in finding.problem


def test_a_marker_signature_is_never_a_checkpoint_or_export_signature(signer: Signer) -> None:
    verifier = Verifier(signer.public_key)
    digest = b"\x11" * 32
    document = {"chain": EVENTS, "seq": 5, "hash": digest.hex()}
    assert not verifier.valid_marker(document, signer.sign_export(document))
    assert not verifier.valid_export(document, signer.sign_marker(document))
    checkpoint = signer.sign(EVENTS, 5, digest)
    assert not verifier.valid_marker(document, checkpoint)
    assert verifier.valid_marker(document, signer.sign_marker(document))


def test_marker_of_a_failed_verification_vouches_for_nothing_new() -> None:
    report = verify.ChainReport(EVENTS, findings=[verify.Finding(EVENTS, 7, "its contents were modified")],
                                from_seq=1, rows_checked=7)
    marker = verify.marker_of(report)
    assert (marker.ok, marker.to_seq, marker.rows, marker.kind) == (False, 0, 7, "full")
    assert marker.findings == [{"seq": 7, "problem": "its contents were modified", "identity": ""}]
    assert replace(marker, ok=True).document() != marker.document()


def test_an_empty_chain_is_verified_incrementally_from_its_marker(signer: Signer) -> None:
    empty = Store(signer)
    first = run(empty)
    assert (first.kind, first.rows_checked, first.marker.to_seq, first.marker.to_hash) == ("full", 0, 0, chain.GENESIS)  # type: ignore[union-attr]
    again = run(empty)
    assert (again.kind, again.marker, again.findings) == ("incremental", None, [])
    empty.append(2)
    grown = run(empty)
    assert (grown.kind, grown.rows_checked, grown.head_seq) == ("incremental", 2, 2)
