"""Incremental verification against the real store: each verification records a signed marker
("verified up to seq N, whose hash is H"); the next one checks that row N still has H and hashes only
the rows after it. A marker forged by the application's database role is ignored, a tail rewritten
after a marker is caught, and a full verification is still one request (or one CLI flag) away."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from controlplane.audit import chain, signing
from controlplane.audit import verify as verify_module
from tests.e2e.conftest import Gateway
from tests.e2e.test_audit import _chain_held, _settled, wait_for_records
from tests.e2e.test_audit_export_verify import credential
from tests.e2e.test_cli import keyward
from tests.e2e.test_denials import sql

pytestmark = pytest.mark.e2e

REQUESTS = chain.REQUESTS


def verified(gateway: Gateway, **params: str) -> dict[str, Any]:
    with credential(gateway, "auditor") as auditor:
        reply = auditor.get("/audit/verify", params=params, timeout=120)
    assert reply.status_code == 200, reply.text
    return reply.json()


def _chains(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["chain"]: c for c in result["chains"]}


def _reached(report: dict[str, Any]) -> int:
    """The seq the chain's newest marker now ends at (recorded now, or the one this started from)."""
    marker = report["marker"] or report["from_marker"]
    assert marker is not None and marker["ok"], report
    return int(marker["to_seq"])


def test_an_incremental_verification_hashes_only_the_rows_after_the_marker(gateway: Gateway) -> None:
    _settled(gateway)
    before = _chains(verified(gateway))[REQUESTS]
    minted = gateway.mint()
    ids = [gateway.chat(minted.secret).headers["x-request-id"] for _ in range(4)]
    wait_for_records(gateway, ids)
    result = verified(gateway)
    assert result["intact"] is True and result["kind"] == "incremental"
    report = _chains(result)[REQUESTS]
    base = report["from_marker"]
    assert report["kind"] == "incremental" and base["to_seq"] >= _reached(before)
    [row] = sql(gateway, "SELECT count(*) AS n, max(seq) AS head FROM request_records WHERE seq > $1",  # type: ignore[misc]
                base["to_seq"])
    # The verification duty may have covered the new rows in between: then its marker is the base.
    [mine] = sql(gateway, "SELECT max(seq) AS seq FROM request_records WHERE request_id = ANY($1::text[])",  # type: ignore[misc]
                 ids)
    assert report["rows_checked"] == row["n"] and report["from_seq"] == base["to_seq"] + 1
    assert row["n"] > 0 or base["to_seq"] >= mine["seq"]
    assert report["head_seq"] == row["head"] and report["records"] > report["rows_checked"]
    assert report["marker"]["to_seq"] == row["head"] and report["marker"]["kind"] == "incremental"
    verifier = signing.Verifier(gateway.audit_public_key)
    head = report["signed_head"]
    assert verifier.valid(REQUESTS, head["seq"], bytes.fromhex(head["hash"]), bytes.fromhex(head["signature"]))

    full = verified(gateway, full="true")
    assert full["kind"] == "full" and full["intact"] is True
    for name, chain_report in _chains(full).items():
        assert chain_report["from_marker"] is None and chain_report["from_seq"] == 1, name
        assert chain_report["rows_checked"] == chain_report["records"] >= report["rows_checked"]
        assert chain_report["last_full"]["id"] == chain_report["marker"]["id"]


def test_a_marker_forged_by_the_application_role_is_ignored(gateway: Gateway) -> None:
    _settled(gateway)
    verified(gateway)
    [head] = sql(gateway, "SELECT seq, hash FROM request_records ORDER BY seq DESC LIMIT 1")  # type: ignore[misc]
    # "Verified up to the head, an hour from now", without the signing key: the signature is made up.
    [forged] = sql(gateway, """
        INSERT INTO audit_verifications (chain, kind, from_seq, to_seq, to_hash, rows, ok, findings, verified_at,
                                         duration_ms, signature)
        VALUES ($1, 'full', 1, $2, $3, $2, true, '[]', now() + interval '1 hour', 1, $4) RETURNING id""",
                   REQUESTS, head["seq"] + 1000, head["hash"], b"\x01" * 64, as_app=True)
    try:
        minted = gateway.mint()
        request_id = gateway.chat(minted.secret).headers["x-request-id"]
        wait_for_records(gateway, [request_id])
        report = _chains(verified(gateway))[REQUESTS]
        assert forged["id"] in report["ignored_markers"]
        assert report["intact"] is True and report["from_marker"]["id"] != forged["id"]
        assert report["from_marker"]["to_seq"] < head["seq"] + 1000
        # The new record was checked now, or by the verification duty in between (its marker is the base).
        [new] = sql(gateway, "SELECT seq FROM request_records WHERE request_id = $1", request_id)  # type: ignore[misc]
        assert report["rows_checked"] >= 1 or report["from_marker"]["to_seq"] >= new["seq"]
    finally:
        sql(gateway, "DELETE FROM audit_verifications WHERE id = $1", forged["id"])
    # The application role may add markers, never change or remove one.
    for statement in ("UPDATE audit_verifications SET ok = true", "DELETE FROM audit_verifications"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            sql(gateway, statement, as_app=True)


def test_a_tail_rewritten_after_the_marker_is_detected(gateway: Gateway) -> None:
    _settled(gateway)
    with _chain_held(gateway):  # no ingest links a new record to the rewritten one meanwhile
        report = _chains(verified(gateway))[REQUESTS]
        seq = _reached(report)
        [row] = sql(gateway, "SELECT * FROM request_records WHERE seq = $1", seq)  # type: ignore[misc]
        # Rewritten and re-hashed, so its own link checks out: only the marker's hash tells.
        changed = dict(row) | {"model": "gpt-5-secret"}
        digest = chain.link(REQUESTS, bytes(row["prev_hash"]), changed)
        sql(gateway, "UPDATE request_records SET model = $2, hash = $3 WHERE seq = $1", seq, "gpt-5-secret", digest)
        try:
            broken = verified(gateway)
            found = _chains(broken)[REQUESTS]
            assert broken["intact"] is False and found["kind"] == "incremental"
            [finding] = found["findings"]
            assert finding["seq"] == seq and "no longer has the hash verification" in finding["problem"]
            assert found["marker"]["ok"] is False
            failed = found["marker"]["id"]
            cli = keyward(gateway, "audit", "verify", "--public-key", gateway.audit_public_key)
            assert cli.returncode == 1 and f"request_records seq {seq}" in cli.stdout
        finally:
            sql(gateway, "UPDATE request_records SET model = $2, hash = $3 WHERE seq = $1", seq, row["model"],
                row["hash"])
        # A break is never started past: the next verification walks the whole chain again.
        healed = _chains(verified(gateway))[REQUESTS]
        assert healed["intact"] is True
        assert healed["kind"] == "full" or (healed["from_marker"]["kind"] == "full"
                                            and healed["from_marker"]["id"] > failed)


def test_the_cli_says_which_verification_ran(gateway: Gateway) -> None:
    _settled(gateway)
    incremental = keyward(gateway, "audit", "verify", "--public-key", gateway.audit_public_key)
    assert incremental.returncode == 0, incremental.stdout + incremental.stderr
    assert "Verified (incremental)" in incremental.stdout and "last full verification" in incremental.stdout
    full = keyward(gateway, "audit", "verify", "--full", "--public-key", gateway.audit_public_key)
    assert full.returncode == 0, full.stdout + full.stderr
    assert "Verified (full)" in full.stdout and full.stdout.count("chain intact") == 3


def test_the_duty_verifies_in_full_only_when_due(gateway: Gateway) -> None:
    _settled(gateway)
    verified(gateway, full="true")
    signer = signing.Signer((gateway.stack.data_dir / "secrets" / "audit_signing_key").read_text().strip())

    def round_(full: bool, every: timedelta | None) -> list[verify_module.ChainReport]:
        return asyncio.run(verify_module.verification_round(gateway.info.database_url, signer=signer, full=full,
                                                            max_rows=None if full else 3, full_every=every))

    assert round_(True, timedelta(hours=1)) == []  # every chain was verified in full a moment ago
    reports = round_(True, timedelta(0))
    assert [r.kind for r in reports] == ["full"] * 3 and all(r.marker and r.marker.ok for r in reports)
    minted = gateway.mint(team=f"duty-{uuid.uuid4().hex[:6]}")
    wait_for_records(gateway, [gateway.chat(minted.secret).headers["x-request-id"] for _ in range(5)])
    # Incremental rounds of at most 3 rows each catch up, each from the last one's marker.
    seen: list[int] = []
    for _ in range(10):
        [report] = [r for r in round_(False, None) if r.chain == REQUESTS]
        assert report.findings == [] and report.rows_checked <= 3
        seen.append(report.rows_checked)
        if report.complete:
            break
    assert sum(seen) >= 5 and seen[-1] < 3


def test_the_evidence_pack_verifies_incrementally_and_states_the_last_full_verification(gateway: Gateway) -> None:
    verified(gateway, full="true")
    with credential(gateway, "auditor") as auditor:
        reply = auditor.get("/evidence", params={"format": "json"}, timeout=60)
        quick = json.loads(reply.json()["files"]["chain.json"])
        assert quick["kind"] == "incremental" and quick["intact"] is True
        assert quick["last_full"]["intact"] is True and quick["last_full"]["verified_at"]
        assert all(c["last_full"]["ok"] for c in quick["chains"])
        assert "Only a full verification" in quick["note"]
        full = json.loads(auditor.get("/evidence", params={"format": "json", "verify": "full"},
                                      timeout=120).json()["files"]["chain.json"])
        assert full["kind"] == "full" and full["last_full"]["verified_at"] > quick["last_full"]["verified_at"]
