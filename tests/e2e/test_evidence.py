"""The evidence pack end to end, on a small realistic population: two teams, an employee, a contractor who
leaves (deprovisioned, then tries their old token through Envoy), a person removed from their team whose
token still says active (the not-a-member trap), and a service account. Every answer is checked against
what really happened, with the record ids."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import uuid
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from controlplane.audit.signing import Verifier
from tests.e2e.conftest import Gateway
from tests.e2e.test_audit import wait_for_records
from tests.e2e.test_audit_export_verify import credential
from tests.e2e.test_cli import keyward

pytestmark = pytest.mark.e2e

FILES = {"reach.json", "reach.csv", "departed.json", "departed.csv", "requests.csv", "tokens.json",
         "revocation_latency.json", "register.json", "register.csv", "reviews.json", "chain.json", "index.html"}


@dataclass
class Population:
    start: datetime
    ada: dict
    carl: dict
    nora: dict
    ada_token: str
    carl_token: str
    nora_token: str
    account: dict
    account_token: str
    ada_request: str
    carl_allowed: str
    carl_refused: str
    review: dict
    exception: dict


@pytest.fixture(scope="module")
def population(gateway: Gateway) -> Population:
    start = datetime.now(UTC) - timedelta(seconds=5)
    suffix = uuid.uuid4().hex[:6]
    research, vendor = gateway.team(f"ev-research-{suffix}"), gateway.team(f"ev-vendor-{suffix}")
    ada = gateway.user(email=f"ada-{suffix}@example.com")
    carl = gateway.user(email=f"carl-{suffix}@vendor.example", employment_type="contractor")
    nora = gateway.user(email=f"nora-{suffix}@example.com")
    bob = gateway.user(email=f"bob-{suffix}@example.com")
    ada_token = gateway.mint(ada, research, environment="prod")
    carl_token = gateway.mint(carl, vendor)
    nora_token = gateway.mint(nora, research)
    gateway.join(bob, research)
    reply = gateway.admin.post("/service-accounts", json={
        "name": f"ev-batch-{suffix}", "team_id": research["id"], "business_owner_id": ada["id"],
        "technical_owner_id": bob["id"]})
    assert reply.status_code == 201, reply.text
    account = reply.json()
    reply = gateway.admin.post("/tokens", json={"service_account_id": account["id"], "team_id": research["id"],
                                                "name": "batch", "environment": "ci"})
    assert reply.status_code == 201, reply.text
    account_token = reply.json()

    ada_request = gateway.chat(ada_token.secret)
    carl_allowed = gateway.chat(carl_token.secret)
    assert ada_request.status_code == carl_allowed.status_code == 200
    # Carl leaves: deprovisioned, then tries his old token through Envoy.
    assert gateway.admin.patch(f"/users/{carl['id']}", json={"status": "deprovisioned"}).status_code == 200
    carl_refused = gateway.chat(carl_token.secret)
    assert carl_refused.status_code == 401
    # Nora is removed from her team: her token's row still says active.
    assert gateway.admin.delete(f"/teams/{research['id']}/members/{nora['id']}").status_code in (200, 204)
    gateway.wait_until(lambda: gateway.status_of(nora_token.secret) == 403, what="not a member")
    ids = [r.headers["x-request-id"] for r in (ada_request, carl_allowed, carl_refused)]
    wait_for_records(gateway, ids)
    # An access review of the research team, and an exception asked for the service account.
    review = gateway.admin.post("/reviews", json={"name": f"ev-review-{suffix}", "scope": {"team_id": research["id"]},
                                                  "due_at": (datetime.now(UTC) + timedelta(days=14)).isoformat()})
    assert review.status_code == 201, review.text
    exception = gateway.admin.post("/exceptions", json={
        "subject_type": "service_account", "subject_id": account["id"], "condition": "owners_not_distinct",
        "reason": "a one-person team until March", "expires_at": (datetime.now(UTC) + timedelta(days=30)).isoformat()})
    assert exception.status_code == 201, exception.text
    return Population(start, ada, carl, nora, ada_token.id, carl_token.id, nora_token.id, account,
                      account_token["id"], *ids, review=review.json(), exception=exception.json())


@pytest.fixture(scope="module")
def pack(gateway: Gateway, population: Population) -> dict:
    with credential(gateway, "auditor") as auditor:
        reply = auditor.get("/evidence", params={"format": "json", "start": population.start.isoformat()},
                            timeout=60)
    assert reply.status_code == 200, reply.text
    return reply.json()


def _json(pack: dict, name: str) -> dict:
    return json.loads(pack["files"][name])


def _csv(pack: dict, name: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(pack["files"][name])))


def test_every_file_is_in_the_manifest_with_its_sha256(pack: dict) -> None:
    listed = {entry["name"]: entry for entry in pack["manifest"]["files"]}
    assert set(listed) == set(pack["files"]) == FILES
    for name, content in pack["files"].items():
        assert listed[name]["sha256"] == hashlib.sha256(content.encode()).hexdigest()
        assert listed[name]["bytes"] == len(content.encode())
    assert pack["manifest"]["generated_by"].startswith("credential:auditor-")


def test_who_can_reach_each_provider_now(pack: dict, population: Population) -> None:
    reach = _json(pack, "reach.json")
    for provider in ("openai", "anthropic"):
        owners = {i["owner_id"]: i for i in reach["providers"][provider]["identities"]}
        assert population.ada["id"] in owners and population.account["id"] in owners
        assert owners[population.ada["id"]]["tokens"] == [population.ada_token]
        assert owners[population.account["id"]]["owner_type"] == "service_account"
        assert population.carl["id"] not in owners, "a departed contractor still reaches " + provider
        assert population.nora["id"] not in owners, "the not-a-member trap: her token says active"
    rows = _csv(pack, "reach.csv")
    ada_rows = [r for r in rows if r["token_id"] == population.ada_token]
    assert {r["provider"] for r in ada_rows} == {"openai", "anthropic"}
    assert all(r["environment"] == "prod" and "gpt-4o-mini" in r["models"] for r in ada_rows
               if r["provider"] == "openai")


def test_stored_versus_effective_tokens(pack: dict, population: Population) -> None:
    tokens = _json(pack, "tokens.json")
    refused = {t["token_id"]: t for t in tokens["active_but_refused"]}
    assert refused[population.nora_token]["refusal"] == "not_a_member"
    assert population.carl_token not in refused  # revoked when he was deprovisioned: not stored active
    assert tokens["effective_usable"] + sum(tokens["effective_refused"].values()) \
        == tokens["stored_active"] + tokens["stored_expired_not_revoked"]
    assert tokens["effective_usable"] < tokens["stored_active"]
    assert tokens["stored_revoked"] >= 1


def test_a_departed_person_has_zero_requests_allowed_after_deprovisioning(pack: dict, population: Population
                                                                          ) -> None:
    departed = _json(pack, "departed.json")
    [carl] = [p for p in departed["people"] if p["user_id"] == population.carl["id"]]
    assert carl["deprovision_event_action"] == "user.deprovisioned" and carl["deprovision_event_seq"] > 0
    assert carl["allowed_after_deprovision"] == 0 and carl["allowed_after_deprovision_examples"] == []
    assert carl["last_allowed_request_id"] == population.carl_allowed
    assert carl["last_request_id"] == population.carl_refused
    assert carl["last_request_decision"] == "token_revoked"
    assert datetime.fromisoformat(carl["last_allowed_request_at"]) < datetime.fromisoformat(carl["effective_at"])
    assert departed["total_allowed_after_deprovision"] == 0
    assert "count(*)" in departed["query"]["sql"] and ":since" in departed["query"]["sql"]
    [row] = [r for r in _csv(pack, "departed.csv") if r["user_id"] == population.carl["id"]]
    assert (row["allowed_after_deprovision"], row["last_allowed_request_id"]) == ("0", population.carl_allowed)


def test_who_made_the_requests_in_the_window(pack: dict, population: Population) -> None:
    rows = {r["request_id"]: r for r in _csv(pack, "requests.csv")}
    assert rows[population.ada_request]["user_email"] == population.ada["email"]
    assert rows[population.ada_request]["decision"] == "allowed"
    assert rows[population.carl_refused]["user_email"] == population.carl["email"]
    assert rows[population.carl_refused]["decision"] == "token_revoked"
    assert all(datetime.fromisoformat(r["at"]) >= population.start for r in rows.values())


def test_revocation_latency_is_measured_from_the_revoke_event_to_the_replicas(pack: dict, population: Population
                                                                              ) -> None:
    latency = _json(pack, "revocation_latency.json")
    [carl] = [r for r in latency["revocations"] if r["target_id"] == population.carl["id"]]
    assert carl["revoke_event_action"] == "user.deprovisioned" and carl["applied"] is True
    assert carl["replicas_confirmed"] and 0 <= carl["latency_ms"] < 5000
    assert carl["confirmation_event_seq"] > carl["revoke_event_seq"]
    assert latency["measured"] >= 1 and latency["max_ms"] >= carl["latency_ms"]


def test_register_reviews_and_chain(gateway: Gateway, pack: dict, population: Population) -> None:
    register = _json(pack, "register.json")
    ids = {row["id"] for row in register["rows"]}
    assert {population.ada_token, population.account["id"]} <= ids
    assert population.account["id"] in pack["files"]["register.csv"]
    reviews = _json(pack, "reviews.json")
    [review] = [r for r in reviews["reviews"] if r["id"] == population.review["id"]]
    assert review["status"] == "open" and review["closed_event"] is None
    assert sum(review["items"].values()) == len(population.review["items"]) > 0
    assert review["items"].get("undecided") == len(population.review["items"])
    [exception] = [e for e in reviews["open_exceptions"] if e["id"] == population.exception["id"]]
    assert (exception["subject_id"], exception["status"]) == (population.account["id"], "pending")
    assert exception["expires_at"] and exception["requested_by"] == "admin:bootstrap"
    chain = _json(pack, "chain.json")
    assert chain["intact"] is True
    verifier = Verifier(gateway.audit_public_key)
    for report in chain["chains"]:
        head = report["signed_head"]
        assert verifier.valid(report["chain"], head["seq"], bytes.fromhex(head["hash"]),
                              bytes.fromhex(head["signature"]))


def test_the_summary_page_is_self_contained_and_names_the_records(pack: dict, population: Population) -> None:
    page = pack["files"]["index.html"]
    assert page.startswith("<!doctype html>")
    assert not re.search(r"<script|<link|<img|src=|href=|@import|url\(", page, re.I)
    for evidence in (population.carl["email"], population.carl_allowed, population.carl_refused,
                     population.ada["email"], population.ada_request, population.nora_token):
        assert evidence in page
    assert "requests allowed after deprovisioning: <span class='ok'>0</span>" in page


def test_the_zip_and_the_cli_write_the_same_files(gateway: Gateway, population: Population, tmp_path: Path) -> None:
    with credential(gateway, "auditor") as auditor:
        reply = auditor.get("/evidence", params={"verify": "false"}, timeout=60)
    assert reply.status_code == 200 and reply.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(reply.content)) as archive:
        manifest = json.loads(archive.read("manifest.json"))
        assert {e["name"] for e in manifest["files"]} == FILES
        for entry in manifest["files"]:
            assert hashlib.sha256(archive.read(entry["name"])).hexdigest() == entry["sha256"]
        assert json.loads(archive.read("chain.json"))["verified"] is False

    out = tmp_path / "evidence"
    result = keyward(gateway, "evidence", "--out", str(out), "--since", population.start.isoformat())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "requests allowed after deprovisioning 0" in " ".join(result.stdout.split())
    written = json.loads((out / "manifest.json").read_text())
    assert {p.name for p in out.iterdir()} == FILES | {"manifest.json"}
    for entry in written["files"]:
        assert hashlib.sha256((out / entry["name"]).read_bytes()).hexdigest() == entry["sha256"]
    assert population.carl_refused in (out / "requests.csv").read_text()


def test_only_auditors_and_admins_get_the_pack(gateway: Gateway) -> None:
    with credential(gateway, "finance") as finance:
        assert finance.get("/evidence", params={"verify": "false"}).status_code == 403
    assert httpx.get(f"{gateway.info.api_url}/api/v1/evidence").status_code == 401
    bad = gateway.admin.get("/evidence", params={"start": "2026-01-02T00:00:00Z", "end": "2026-01-01T00:00:00Z"})
    assert bad.status_code == 422 and bad.json()["code"] == "window_empty"
