"""Proving the audit store from outside it: exports verified offline, the chains verified through the
API, the bootstrap token's reads summarised, the CLI's actions recorded as ``cli``, and the auditor's
queries from the command line."""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from controlplane.audit.signing import Verifier
from controlplane.audit.verify import verify_export
from tests.e2e.conftest import Gateway
from tests.e2e.test_audit import wait_for_records
from tests.e2e.test_cli import keyward
from tests.e2e.test_denials import sql

pytestmark = pytest.mark.e2e


def credential(gateway: Gateway, role: str) -> httpx.Client:
    reply = gateway.admin.post("/credentials", json={"name": f"{role}-{uuid.uuid4().hex[:8]}", "role": role})
    assert reply.status_code == 201, reply.text
    return httpx.Client(base_url=gateway.admin.base_url, timeout=30,
                        headers={"Authorization": f"Bearer {reply.json()['token']}"})


def _traffic(gateway: Gateway) -> tuple[dict, list[str], datetime]:
    """A person with a token who made two requests (one allowed, one refused); the window holding them."""
    start = datetime.now(UTC) - timedelta(seconds=5)
    minted = gateway.mint(team=f"export-{uuid.uuid4().hex[:6]}", models=["gpt-4o-mini"])
    ids = [gateway.chat(minted.secret).headers["x-request-id"],
           gateway.chat(minted.secret, model="no-such-model-x").headers["x-request-id"]]
    wait_for_records(gateway, ids)
    return minted.user, ids, start


def test_request_and_event_exports_verify_offline_and_name_a_tampered_row(gateway: Gateway, tmp_path: Path) -> None:
    user, ids, start = _traffic(gateway)
    window = {"start": start.isoformat(), "user": user["email"]}
    for fmt in ("csv", "jsonl"):
        exported = gateway.admin.get("/audit/requests", params=window | {"format": fmt, "signed": "true"})
        assert exported.status_code == 200, exported.text
        report = verify_export(exported.text, public_key=gateway.audit_public_key)
        assert report.findings == [], report.findings
        assert (report.chain, report.rows, report.signature) == ("request_records", 3, "valid")  # probe + 2
        assert all(request_id in exported.text for request_id in ids)
        unsigned = gateway.admin.get("/audit/requests", params=window | {"format": fmt})
        assert verify_export(unsigned.text).findings == []
        assert "keyward_export" not in unsigned.text

    events = gateway.admin.get("/audit/events", params={"start": start.isoformat(), "format": "jsonl",
                                                        "signed": "true"}).text
    report = verify_export(events, public_key=gateway.audit_public_key, complete=True)
    assert report.findings == [] and report.rows >= 3 and report.signature == "valid"

    # Through the CLI, as an auditor would: an intact file, then one with an edited row.
    path = tmp_path / "requests.csv"
    path.write_text(gateway.admin.get("/audit/requests", params=window | {"format": "csv", "signed": "true"}).text)
    result = keyward(gateway, "audit", "verify-export", str(path), "--public-key", gateway.audit_public_key)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "request_records: 3 rows" in result.stdout and "signature valid" in result.stdout
    path.write_text(path.read_text().replace('"gpt-4o-mini"', '"gpt-5-secret"', 1))
    result = keyward(gateway, "audit", "verify-export", str(path), "--public-key", gateway.audit_public_key)
    assert result.returncode == 1
    assert "its fields do not match its hash: expected " in result.stdout and "found " in result.stdout

    # A row removed from an events export.
    lines = events.splitlines(keepends=True)
    path = tmp_path / "events.jsonl"
    path.write_text("".join(lines[:1] + lines[2:]))
    result = keyward(gateway, "audit", "verify-export", str(path), "--json")
    assert result.returncode == 1
    assert any("rows were removed or added" in f for f in json.loads(result.stdout)["findings"])


def test_the_server_verifies_the_chains_for_an_auditor(gateway: Gateway) -> None:
    _traffic(gateway)
    with credential(gateway, "auditor") as auditor:
        reply = auditor.get("/audit/verify")
    assert reply.status_code == 200, reply.text
    result = reply.json()
    assert result["intact"] is True and result["signatures_checked"] is True
    assert result["public_key"] == gateway.audit_public_key
    verifier = Verifier(gateway.audit_public_key)
    chains = {c["chain"]: c for c in result["chains"]}
    assert set(chains) == {"events", "request_records", "request_outcomes"}
    for name, report in chains.items():
        assert report["findings"] == [] and report["records"] > 0
        head = report["signed_head"]
        assert head["seq"] == report["signed_seq"] <= report["head_seq"]
        assert verifier.valid(name, head["seq"], bytes.fromhex(head["hash"]), bytes.fromhex(head["signature"]))
    with credential(gateway, "finance") as finance:
        assert finance.get("/audit/verify").status_code == 403

    # The CLI asks the API by default, and checks the heads' signatures against the key it is given.
    result_cli = keyward(gateway, "audit", "verify", "--public-key", gateway.audit_public_key)
    assert result_cli.returncode == 0, result_cli.stdout + result_cli.stderr
    assert result_cli.stdout.count("chain intact") == 3 and "(signature valid)" in result_cli.stdout
    # A key other than the control plane's: the heads do not verify.
    from controlplane.audit import signing

    other = signing.Signer(signing.new_private_key()).public_key
    refused = keyward(gateway, "audit", "verify", "--public-key", other)
    assert refused.returncode == 1 and "TAMPERED" in refused.stdout


def _events(gateway: Gateway, action: str) -> int:
    [row] = sql(gateway, "SELECT count(*) AS n FROM events WHERE action = $1", action)  # type: ignore[misc]
    return int(row["n"])


def test_bootstrap_reads_are_summarised_per_hour_and_writes_recorded_one_by_one(gateway: Gateway) -> None:
    used = _events(gateway, "admin.break_glass_used")
    hour_row = "SELECT reads, paths FROM break_glass_reads WHERE hour = date_trunc('hour', now(), 'UTC')"
    before = sql(gateway, hour_row)
    reads_before = before[0]["reads"] if before else 0  # type: ignore[index]
    for _ in range(7):
        assert gateway.admin.get("/users", params={"limit": 1}).status_code == 200
    assert gateway.admin.get("/audit/public-key").status_code == 200
    assert _events(gateway, "admin.break_glass_used") == used, "a read recorded an event of its own"
    [row] = sql(gateway, hour_row)  # type: ignore[misc]
    assert row["reads"] == reads_before + 8
    assert json.loads(row["paths"])["/api/v1/users"] >= 7

    created = gateway.admin.post("/users", json={"email": f"bg-{uuid.uuid4().hex[:8]}@example.com"})
    assert created.status_code == 201
    assert _events(gateway, "admin.break_glass_used") == used + 1

    # The hour is over (back-dated), so the duty summarises it: one event, with the counts.
    hours = random.randint(1_000, 100_000)
    [moved] = sql(gateway, "UPDATE break_glass_reads SET hour = hour - make_interval(hours => $1) "  # type: ignore[misc]
                  "WHERE hour = date_trunc('hour', now(), 'UTC') RETURNING hour, reads, first_at, last_at", hours)
    target = f"reads {moved['hour'].astimezone(UTC).isoformat()}"
    query = "SELECT actor, mechanism, after FROM events WHERE action = 'admin.break_glass_reads' AND target_id = $1"
    gateway.wait_until(lambda: bool(sql(gateway, query, target)), timeout=10, what="the hour's summary event")
    gateway.wait_until(lambda: bool(sql(gateway, "SELECT 1 FROM break_glass_reads WHERE hour = $1 AND "
                                             "summarised_at IS NOT NULL", moved["hour"])), what="summarised")
    [summary] = sql(gateway, query, target)  # type: ignore[misc]
    after = json.loads(summary["after"])
    assert (summary["actor"], summary["mechanism"]) == ("admin:bootstrap", "system")
    assert after["reads"] == moved["reads"] >= 8
    assert datetime.fromisoformat(after["first_at"]) == moved["first_at"]
    assert datetime.fromisoformat(after["last_at"]) == moved["last_at"]
    gateway.wait_until(lambda: _events(gateway, "admin.break_glass_reads") >= 1, what="duty")
    assert len(sql(gateway, query, target)) == 1  # type: ignore[arg-type]


def test_an_action_through_the_cli_is_recorded_with_mechanism_cli(gateway: Gateway) -> None:
    email = f"cli-{uuid.uuid4().hex[:8]}@example.com"
    created = json.loads(keyward(gateway, "users", "create", email, "--json").stdout)
    via_api = gateway.user()
    forged = gateway.admin.post("/users", json={"email": f"f-{uuid.uuid4().hex[:8]}@example.com"},
                                headers={"Keyward-Client": "console"})
    assert forged.status_code == 201
    with credential(gateway, "admin") as admin:
        by_credential = admin.post("/users", json={"email": f"c-{uuid.uuid4().hex[:8]}@example.com"},
                                   headers={"Keyward-Client": "cli"}).json()

    def mechanism_of(user_id: str) -> str:
        [event] = gateway.admin.get("/audit/events", params={"target_id": user_id, "action": "user.created"}
                                    ).json()["items"]
        return str(event["mechanism"])

    assert mechanism_of(created["id"]) == "cli"
    assert mechanism_of(by_credential["id"]) == "cli"
    assert mechanism_of(via_api["id"]) == "api"
    assert mechanism_of(forged.json()["id"]) == "api"  # any other value is ignored


def test_the_auditors_queries_from_the_cli(gateway: Gateway, tmp_path: Path) -> None:
    user, ids, start = _traffic(gateway)
    found = json.loads(keyward(gateway, "audit", "requests", "--user", user["email"], "--start", start.isoformat(),
                               "--json").stdout)
    assert [r["request_id"] for r in found["items"]][-2:] == ids
    by_id = json.loads(keyward(gateway, "audit", "requests", "--user", user["id"], "--decision", "allowed",
                               "--start", start.isoformat(), "--json").stdout)
    assert [r["request_id"] for r in by_id["items"]] == ids[:1]
    table = keyward(gateway, "audit", "requests", "--user", user["email"], "--start", start.isoformat())
    assert table.returncode == 0 and ids[0] in table.stdout and user["email"] in table.stdout

    exported = keyward(gateway, "audit", "requests", "--user", user["email"], "--start", start.isoformat(), "--csv")
    assert exported.returncode == 0, exported.stderr
    assert verify_export(exported.stdout, public_key=gateway.audit_public_key).signature == "valid"
    path = tmp_path / "requests.csv"
    path.write_text(exported.stdout)
    assert keyward(gateway, "audit", "verify-export", str(path)).returncode == 0

    events = json.loads(keyward(gateway, "audit", "events", "--target-id", user["id"], "--json").stdout)
    assert [e["action"] for e in events["items"]] == ["user.created"]
    jsonl = keyward(gateway, "audit", "events", "--target-type", "user", "--target-id", user["id"], "--jsonl")
    assert json.loads(jsonl.stdout.splitlines()[0])["action"] == "user.created"

    activity = json.loads(keyward(gateway, "audit", "user-activity", user["email"], "--json").stdout)
    assert activity["last_request"]["request_id"] == ids[1]
    assert activity["last_allowed_request"]["request_id"] == ids[0]
    row = keyward(gateway, "audit", "user-activity", user["email"], "--csv").stdout.splitlines()
    assert row[0].startswith("user_id,email,status,last_request_id") and ids[1] in row[1]
