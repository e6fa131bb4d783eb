"""The audit store end to end: every request and every action, append-only, tamper-evident, nothing lost."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import resource
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import anthropic
import asyncpg
import httpx
import openai
import pytest

from tests.e2e.conftest import Gateway
from tests.e2e.test_denials import sql

pytestmark = pytest.mark.e2e


def wait_for_records(gateway: Gateway, request_ids: list[str], timeout: float = 20) -> dict[str, dict]:
    """Poll the audit API until every request id is stored with its outcome; return them by id."""
    found: dict[str, dict] = {}

    def complete() -> bool:
        start = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
        page = gateway.admin.get("/audit/requests", params={"start": start, "limit": 500,
                                                            "format": "jsonl"})
        rows = [json.loads(line) for line in page.text.splitlines()]
        found.update({r["request_id"]: r for r in rows if r["request_id"] in request_ids})
        return all(rid in found and found[rid]["duration_ms"] is not None for rid in request_ids)

    gateway.wait_until(complete, timeout=timeout, what=f"{len(request_ids)} audit records")
    return found


def test_allowed_denied_and_envoy_answered_requests_are_recorded(gateway: Gateway) -> None:
    minted = gateway.mint(models=["gpt-4o-mini"], team="research", environment="prod")
    allowed = gateway.chat(minted.secret)
    denied = gateway.chat(minted.secret, model="gpt-4o")
    too_large = gateway.http.post("/openai/v1/chat/completions", content=b"x" * 1_200_000,
                                  headers={"Authorization": f"Bearer {minted.secret}"})
    ids = [r.headers["x-request-id"] for r in (allowed, denied, too_large)]
    records = wait_for_records(gateway, ids)

    ok = records[ids[0]]
    assert ok["source"] == "authz"
    assert ok["decision"] == "allowed"
    assert ok["token_id"] == minted.id and ok["user_id"] == minted.user["id"]
    assert ok["user_email"] == minted.user["email"]
    assert (ok["team"], ok["environment"], ok["provider"], ok["model"]) == ("research", "prod", "openai",
                                                                            "gpt-4o-mini")
    assert (ok["method"], ok["route"]) == ("POST", "/openai/v1/chat/completions")
    assert ok["status"] == 200 and ok["upstream_status"] == 200
    assert (ok["prompt_tokens"], ok["completion_tokens"]) == (9, 6)
    assert ok["bytes_out"] > 0 and ok["duration_ms"] >= 0

    no = records[ids[1]]
    assert (no["decision"], no["status"], no["model"]) == ("model_not_allowed", 403, "gpt-4o")
    assert no["upstream_status"] is None and no["prompt_tokens"] is None

    big = records[ids[2]]
    assert big["source"] == "envoy"
    assert big["status"] == 413
    assert big["decision"].startswith("envoy:")


def test_streamed_usage_is_recorded_for_both_apis(gateway: Gateway) -> None:
    minted = gateway.mint()
    with openai.OpenAI(base_url=gateway.openai_base, api_key=minted.secret) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True,
            stream_options={"include_usage": True},
        )
        for _chunk in raw.parse():
            pass
    with anthropic.Anthropic(base_url=gateway.anthropic_base, api_key=minted.secret) as claude:
        with claude.messages.with_streaming_response.create(
            model="claude-haiku-4-5", max_tokens=32, messages=[{"role": "user", "content": "hi"}], stream=True,
        ) as streamed:
            anthropic_id = streamed.headers["x-request-id"]
            for _line in streamed.iter_lines():
                pass
    records = wait_for_records(gateway, [raw.headers["x-request-id"], anthropic_id])
    for record in records.values():
        assert record["decision"] == "allowed" and record["status"] == 200
        assert (record["prompt_tokens"], record["completion_tokens"]) == (9, 6), record


def test_every_mutating_admin_endpoint_records_an_event(gateway: Gateway) -> None:
    spec = httpx.get(f"{gateway.info.api_url}/openapi.json").json()
    # Self-service and sign-in endpoints act for the signed-in user; tests/e2e/test_oidc.py checks
    # their events (mechanism oidc).
    mutating = {(method.upper(), path) for path, ops in spec["paths"].items() for method in ops
                if method in ("post", "put", "patch", "delete") and path != "/api/v1/audit/ingest"
                and not path.startswith(("/api/v1/me", "/api/v1/auth/oidc"))}
    admin = gateway.admin

    def ok(response: httpx.Response) -> dict:
        assert response.status_code in (200, 201, 204), response.text
        return response.json() if response.content else {}

    user, other = gateway.user(), gateway.user()
    profile = ok(admin.post("/profiles", json={"name": f"p-{user['id'][:8]}", "catalog": [
        {"provider": "*", "pattern": "*"}], "environments": ["dev"]}))
    team = ok(admin.post("/teams", json={"name": f"t-{user['id'][:8]}", "profile_id": profile["id"]}))
    exercised: dict[tuple[str, str], tuple[str, str, str]] = {}

    def did(method: str, path: str, target_type: str, target_id: str, action: str) -> None:
        exercised[(method, "/api/v1" + path)] = (target_type, target_id, action)

    did("POST", "/users", "user", user["id"], "user.created")
    did("POST", "/profiles", "profile", profile["id"], "policy.created")
    did("POST", "/teams", "team", team["id"], "team.created")
    ok(admin.patch(f"/users/{user['id']}", json={"display_name": "Ada"}))
    did("PATCH", "/users/{user_id}", "user", user["id"], "user.updated")
    ok(admin.patch(f"/profiles/{profile['id']}", json={"description": "changed"}))
    did("PATCH", "/profiles/{profile_id}", "profile", profile["id"], "policy.changed")
    ok(admin.patch(f"/teams/{team['id']}", json={"description": "changed"}))
    did("PATCH", "/teams/{team_id}", "team", team["id"], "team.updated")
    for member in (user, other):
        ok(admin.put(f"/teams/{team['id']}/members/{member['id']}", json={"role": "member"}))
    did("PUT", "/teams/{team_id}/members/{user_id}", "team", team["id"], "team.member_set")
    account = ok(admin.post("/service-accounts", json={"name": "batch", "team_id": team["id"],
                                                       "business_owner_id": user["id"],
                                                       "technical_owner_id": other["id"]}))
    did("POST", "/service-accounts", "service_account", account["id"], "service_account.created")
    ok(admin.patch(f"/service-accounts/{account['id']}", json={"description": "nightly"}))
    did("PATCH", "/service-accounts/{account_id}", "service_account", account["id"], "service_account.updated")
    token = ok(admin.post("/tokens", json={"user_id": user["id"], "team_id": team["id"], "name": "a"}))
    did("POST", "/tokens", "token", token["id"], "token.issued")
    ok(admin.patch(f"/tokens/{token['id']}", json={"models": ["gpt-4o-mini"]}))
    did("PATCH", "/tokens/{token_id}", "token", token["id"], "token.narrowed")
    rotated = ok(admin.post(f"/tokens/{token['id']}/rotate", json={"grace_hours": 1}))
    did("POST", "/tokens/{token_id}/rotate", "token", token["id"], "token.rotated")
    ok(admin.post(f"/tokens/{token['id']}/revoke", json={"reason": "test"}))
    did("POST", "/tokens/{token_id}/revoke", "token", token["id"], "token.revoked")
    ok(admin.post(f"/users/{user['id']}/tokens/revoke", json={"reason": "bulk"}))
    did("POST", "/users/{user_id}/tokens/revoke", "token", rotated["new"]["id"], "token.revoked")
    other_token = ok(admin.post("/tokens", json={"user_id": other["id"], "team_id": team["id"], "name": "b"}))
    ok(admin.post(f"/teams/{team['id']}/tokens/revoke", json={}))
    did("POST", "/teams/{team_id}/tokens/revoke", "token", other_token["id"], "token.revoked")
    ok(admin.delete(f"/teams/{team['id']}/members/{other['id']}"))
    did("DELETE", "/teams/{team_id}/members/{user_id}", "team", team["id"], "team.member_removed")
    credential = ok(admin.post("/credentials", json={"name": "ci", "role": "auditor"}))
    did("POST", "/credentials", "credential", credential["id"], "credential.issued")
    ok(admin.post(f"/credentials/{credential['id']}/revoke"))
    did("POST", "/credentials/{credential_id}/revoke", "credential", credential["id"], "credential.revoked")

    link = ok(admin.post("/console/links"))
    did("POST", "/console/links", "sign_in", link["id"], "console.link_created")

    scim = ok(admin.post("/scim-connections", json={"name": f"scim-{user['id'][:8]}", "idp": "okta"}))
    conn_id = scim["connection"]["id"]
    did("POST", "/scim-connections", "scim_connection", conn_id, "scim.connection_created")
    second = ok(admin.post(f"/scim-connections/{conn_id}/credentials"))
    did("POST", "/scim-connections/{connection_id}/credentials", "scim_connection", conn_id, "scim.credential_issued")
    ok(admin.post(f"/scim-connections/{conn_id}/credentials/{second['id']}/revoke"))
    did("POST", "/scim-connections/{connection_id}/credentials/{credential_id}/revoke", "scim_connection", conn_id,
        "scim.credential_revoked")
    ok(admin.post(f"/scim-connections/{conn_id}/adopt", json={"user_ids": [other["id"]]}))
    did("POST", "/scim-connections/{connection_id}/adopt", "user", other["id"], "scim.handed_over")

    hook = ok(admin.post("/notification-channels", json={"name": f"hook-{user['id'][:8]}", "kind": "webhook",
                                                         "url": "http://127.0.0.1:9/keyward-audit"}))
    did("POST", "/notification-channels", "notification_channel", hook["id"], "notification_channel.created")
    ok(admin.patch(f"/notification-channels/{hook['id']}", json={"url": "http://127.0.0.1:9/keyward-audit-2"}))
    did("PATCH", "/notification-channels/{channel_id}", "notification_channel", hook["id"],
        "notification_channel.changed")
    ok(admin.post(f"/notification-channels/{hook['id']}/rotate-secret"))
    did("POST", "/notification-channels/{channel_id}/rotate-secret", "notification_channel", hook["id"],
        "notification_channel.secret_rotated")
    assert admin.post(f"/notification-channels/{hook['id']}/test").status_code == 202
    did("POST", "/notification-channels/{channel_id}/test", "notification_channel", hook["id"],
        "notification_channel.tested")
    ok(admin.delete(f"/notification-channels/{hook['id']}"))
    did("DELETE", "/notification-channels/{channel_id}", "notification_channel", hook["id"],
        "notification_channel.removed")

    project = ok(admin.post("/projects", json={"team_id": team["id"], "name": f"proj-{user['id'][:8]}"}))
    did("POST", "/projects", "project", project["id"], "project.created")
    ok(admin.patch(f"/projects/{project['id']}", json={"description": "the assistant"}))
    did("PATCH", "/projects/{project_id}", "project", project["id"], "project.changed")
    ok(admin.post(f"/projects/{project['id']}/close"))
    did("POST", "/projects/{project_id}/close", "project", project["id"], "project.closed")
    ok(admin.put(f"/budgets/team/{team['id']}", json={"amount_usd": "50"}))
    did("PUT", "/budgets/{scope_type}/{scope_id}", "team", team["id"], "budget.set")
    ok(admin.delete(f"/budgets/team/{team['id']}"))
    did("DELETE", "/budgets/{scope_type}/{scope_id}", "team", team["id"], "budget.removed")
    ok(admin.put(f"/rate-limits/user/{user['id']}", json={"rpm": 60}))
    did("PUT", "/rate-limits/{scope_type}/{scope_id}", "user", user["id"], "rate_limit.set")
    ok(admin.delete(f"/rate-limits/user/{user['id']}"))
    did("DELETE", "/rate-limits/{scope_type}/{scope_id}", "user", user["id"], "rate_limit.removed")
    price = ok(admin.post("/prices", json={"provider": "openai", "model": f"audit-{user['id'][:8]}",
                                           "input_per_mtok": "1", "output_per_mtok": "2"}))
    did("POST", "/prices", "price", f"openai:{price['model']}", "price.overridden")

    ok(admin.patch(f"/credentials/{credential['id']}", json={"purpose": "the audit export job"}))
    did("PATCH", "/credentials/{credential_id}", "credential", credential["id"], "credential.updated")

    # Reviews and exceptions; approving and rejecting take a second admin (four eyes).
    second_admin = ok(admin.post("/credentials", json={"name": f"second-{user['id'][:8]}", "role": "admin"}))
    approver = httpx.Client(base_url=str(admin.base_url), timeout=10,
                            headers={"Authorization": f"Bearer {second_admin['token']}"})
    actors = {}
    due = (datetime.now(UTC) + timedelta(days=14)).isoformat()
    review = ok(admin.post("/reviews", json={"name": f"r-{user['id'][:8]}", "due_at": due,
                                             "scope": {"team_id": team["id"]}}))
    did("POST", "/reviews", "review", review["id"], "review.opened")
    account_item = next(item for item in review["items"] if item["subject_type"] == "service_account")
    ok(admin.post(f"/reviews/{review['id']}/items/{account_item['id']}/decide",
                  json={"decision": "escalate", "reason": "needs the security team"}))
    did("POST", "/reviews/{review_id}/items/{item_id}/decide", "review_item", account_item["id"],
        "review.item_decided")
    ok(admin.post(f"/reviews/{review['id']}/close"))
    did("POST", "/reviews/{review_id}/close", "review", review["id"], "review.closed")
    expires = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    wanted = {"subject_type": "service_account", "subject_id": account["id"], "condition": "dormant",
              "reason": "seasonal job", "expires_at": expires}
    approved, rejected = ok(admin.post("/exceptions", json=wanted)), ok(admin.post("/exceptions", json=wanted))
    did("POST", "/exceptions", "exception", approved["id"], "exception.requested")
    ok(approver.post(f"/exceptions/{approved['id']}/approve"))
    did("POST", "/exceptions/{exception_id}/approve", "exception", approved["id"], "exception.approved")
    ok(approver.post(f"/exceptions/{rejected['id']}/reject"))
    did("POST", "/exceptions/{exception_id}/reject", "exception", rejected["id"], "exception.rejected")
    actors[approved["id"]] = actors[rejected["id"]] = f"credential:{second_admin['name']}"
    approver.close()
    ok(admin.post(f"/exceptions/{approved['id']}/withdraw"))
    did("POST", "/exceptions/{exception_id}/withdraw", "exception", approved["id"], "exception.withdrawn")
    schedule = ok(admin.post("/review-schedules", json={"name": f"s-{user['id'][:8]}", "cadence": "quarterly",
                                                         "first_run_at": expires}))
    did("POST", "/review-schedules", "review_schedule", schedule["id"], "review.schedule_created")
    ok(admin.patch(f"/review-schedules/{schedule['id']}", json={"enabled": False}))
    did("PATCH", "/review-schedules/{schedule_id}", "review_schedule", schedule["id"], "review.schedule_updated")

    assert mutating == set(exercised), f"mutating endpoints without an event test: {mutating - set(exercised)}"
    for target_type, target_id, action in exercised.values():
        events = admin.get("/audit/events", params={"target_id": target_id, "action": action}).json()["items"]
        assert events, f"no {action} event for {target_type} {target_id}"
        assert events[0]["target_type"] == target_type
        expected_actor = actors.get(target_id, "admin:bootstrap") if action in (
            "exception.approved", "exception.rejected") else "admin:bootstrap"
        assert events[0]["actor"] == expected_actor and events[0]["mechanism"] == "api", events[0]


def test_nothing_is_lost_when_the_control_plane_is_killed_under_load(gateway: Gateway) -> None:
    minted = gateway.mint()
    request_ids: list[str] = []
    statuses: list[int] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + 8

    def load() -> None:
        with httpx.Client(base_url=gateway.url, timeout=10) as client:
            while time.monotonic() < stop_at:
                reply = client.post("/openai/v1/chat/completions",
                                    headers={"Authorization": f"Bearer {minted.secret}"},
                                    json={"model": "gpt-4o-mini", "messages": []})
                with lock:
                    request_ids.append(reply.headers["x-request-id"])
                    statuses.append(reply.status_code)

    workers = [threading.Thread(target=load) for _ in range(4)]
    for worker in workers:
        worker.start()
    time.sleep(2)
    controlplane = gateway.stack.services["controlplane"]
    controlplane.stop(signal.SIGKILL)
    time.sleep(3)  # down while requests keep flowing: the gateway does not need the control plane
    gateway.stack.restart("controlplane")
    for worker in workers:
        worker.join()
    assert set(statuses) == {200}
    expected = len(request_ids)
    assert expected > 100

    def stored() -> tuple[int, int, int]:
        rows = sql(gateway, """
            SELECT (SELECT count(*) FROM request_records WHERE request_id = ANY($1::text[])) AS records,
                   (SELECT count(DISTINCT request_id) FROM request_records WHERE request_id = ANY($1::text[])) AS ids,
                   (SELECT count(*) FROM request_outcomes WHERE request_id = ANY($1::text[])) AS outcomes
        """, request_ids)
        return tuple(rows[0].values())  # type: ignore[index,return-value]

    gateway.wait_until(lambda: stored()[2] >= expected, timeout=30, what="spool to drain")
    records, distinct, outcomes = stored()
    print(f"\n{expected} requests under load with the control plane SIGKILLed for 3 s: "
          f"{records} records, {distinct} distinct, {outcomes} outcomes")
    assert (records, distinct, outcomes) == (expected, expected, expected)


def verify(gateway: Gateway) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "controlplane.cli", "audit", "verify",
                           "--database-url", gateway.info.owner_database_url,
                           "--public-key", gateway.audit_public_key],
                          capture_output=True, text=True, timeout=120)


def _settled(gateway: Gateway) -> None:
    minted = gateway.mint()
    response = gateway.chat(minted.secret)
    wait_for_records(gateway, [response.headers["x-request-id"]])


def test_the_public_key_is_served_to_auditors(gateway: Gateway) -> None:
    reply = gateway.admin.get("/audit/public-key")
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"algorithm": "Ed25519", "public_key": gateway.audit_public_key}


def test_verify_passes_on_an_untouched_store(gateway: Gateway) -> None:
    _settled(gateway)
    result = verify(gateway)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "request_records" in result.stdout and "chain intact" in result.stdout


@pytest.mark.parametrize("attack", ["update", "delete", "reorder"])
def test_verify_names_the_tampered_record(gateway: Gateway, attack: str) -> None:
    _settled(gateway)
    [victim, neighbour] = sql(gateway, "SELECT * FROM request_records ORDER BY seq DESC LIMIT 2 OFFSET 1")  # type: ignore[misc]
    seq = victim["seq"]
    columns = list(victim.keys())
    placeholders = ", ".join(f"${i + 1}" for i in range(len(columns)))
    restore = f"INSERT INTO request_records ({', '.join(columns)}) VALUES ({placeholders})"
    if attack == "update":
        sql(gateway, "UPDATE request_records SET model = 'gpt-5-secret' WHERE seq = $1", seq)
        undo = [("UPDATE request_records SET model = $2 WHERE seq = $1", seq, victim["model"])]
        named = seq
    elif attack == "delete":
        sql(gateway, "DELETE FROM request_records WHERE seq = $1", seq)
        undo = [(restore, *victim.values())]
        named = seq + 1
    else:
        sql(gateway, "UPDATE request_records SET seq = CASE seq WHEN $1 THEN $2 ELSE $1 END WHERE seq IN ($1, $2)",
            seq, neighbour["seq"])
        undo = [("UPDATE request_records SET seq = CASE seq WHEN $1 THEN $2 ELSE $1 END WHERE seq IN ($1, $2)",
                 seq, neighbour["seq"])]
        named = neighbour["seq"]
    try:
        result = verify(gateway)
        assert result.returncode == 1, result.stdout
        assert f"request_records seq {named}" in result.stdout, result.stdout
        assert "TAMPERED" in result.stdout
    finally:
        for statement, *args in undo:
            sql(gateway, statement, *args)
    assert verify(gateway).returncode == 0


def test_verify_detects_a_modified_event(gateway: Gateway) -> None:
    minted = gateway.mint()
    [event] = sql(gateway, "SELECT seq, actor FROM events WHERE target_id = $1", minted.id)  # type: ignore[misc]
    sql(gateway, "UPDATE events SET actor = 'someone-else' WHERE seq = $1", event["seq"])
    try:
        result = verify(gateway)
        assert result.returncode == 1
        assert f"events seq {event['seq']}" in result.stdout
    finally:
        sql(gateway, "UPDATE events SET actor = $2 WHERE seq = $1", event["seq"], event["actor"])


@contextmanager
def _chain_held(gateway: Gateway) -> Iterator[None]:
    """Hold the request chain's writer lock: no ingest may link a real record to a forged one meanwhile."""
    from controlplane.audit import chain

    async def lock() -> asyncpg.Connection:
        connection = await asyncpg.connect(gateway.info.owner_database_url)
        await connection.execute("SELECT pg_advisory_lock($1)", chain.LOCKS[chain.REQUESTS])
        return connection

    loop = asyncio.new_event_loop()  # the connection lives on this loop until the lock is let go
    connection = loop.run_until_complete(lock())
    try:
        yield
    finally:
        loop.run_until_complete(connection.close())
        loop.close()


def _forge_next_record(gateway: Gateway, **changes: object) -> int:
    """Append, as the application's own database role, a record with a valid hash link: what someone
    holding the app's database credentials but not the control plane's signing key can write."""
    from controlplane.audit import chain

    [head] = sql(gateway, "SELECT * FROM request_records ORDER BY seq DESC LIMIT 1")  # type: ignore[misc]
    fields = chain.FIELDS[chain.REQUESTS]
    row = {name: head[name] for name in (*fields, *chain.EXTENSIONS[chain.REQUESTS])}
    row |= {"seq": head["seq"] + 1, "request_id": f"forged-{uuid.uuid4()}", "decision": "allowed", **changes}
    digest = chain.link(chain.REQUESTS, bytes(head["hash"]), row)
    columns = [*row, "prev_hash", "hash"]
    sql(gateway, f"INSERT INTO request_records ({', '.join(columns)}) "
                 f"VALUES ({', '.join(f'${i + 1}' for i in range(len(columns)))})",
        *row.values(), bytes(head["hash"]), digest, as_app=True)
    return int(row["seq"])  # type: ignore[call-overload]


def test_verify_detects_a_record_appended_without_the_signing_key(gateway: Gateway) -> None:
    _settled(gateway)
    with _chain_held(gateway):
        seq = _forge_next_record(gateway, model="gpt-4o-mini")
        try:
            result = verify(gateway)
            assert result.returncode == 1, result.stdout
            assert f"request_records seq {seq}" in result.stdout and "no signature covers" in result.stdout
        finally:
            sql(gateway, "DELETE FROM request_records WHERE seq = $1", seq)
    assert verify(gateway).returncode == 0


def test_verify_detects_a_forged_signature(gateway: Gateway) -> None:
    _settled(gateway)
    with _chain_held(gateway):
        seq = _forge_next_record(gateway)
        [forged] = sql(gateway, "SELECT hash FROM request_records WHERE seq = $1", seq)  # type: ignore[misc]
        sql(gateway, "INSERT INTO audit_checkpoints (chain, seq, hash, kind, signature) "
                     "VALUES ('request_records', $1, $2, 'signed', $3)", seq, forged["hash"], b"\x00" * 64,
            as_app=True)
        try:
            result = verify(gateway)
            assert result.returncode == 1, result.stdout
            assert "signature does not verify" in result.stdout
        finally:
            sql(gateway, "DELETE FROM audit_checkpoints WHERE chain = 'request_records' AND seq = $1", seq)
            sql(gateway, "DELETE FROM request_records WHERE seq = $1", seq)
    assert verify(gateway).returncode == 0


@pytest.mark.parametrize("kind", ["retention", "periodic"])
def test_the_application_role_cannot_write_an_anchor(gateway: Gateway, kind: str) -> None:
    # Verification starts at the newest retention anchor: an app-written one could hide everything before it.
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        sql(gateway, "INSERT INTO audit_checkpoints (chain, seq, hash, kind) VALUES ('events', 1, $1, $2)",
            b"\x00" * 32, kind, as_app=True)


@pytest.mark.parametrize("statement", [
    "UPDATE request_records SET model = 'x'",
    "DELETE FROM request_records",
    "UPDATE request_outcomes SET status = 200",
    "DELETE FROM events",
    "UPDATE events SET actor = 'x'",
    "TRUNCATE request_records",
    "DROP TABLE request_outcomes",
    "DELETE FROM audit_checkpoints",
])
def test_the_application_role_cannot_rewrite_history(gateway: Gateway, statement: str) -> None:
    with pytest.raises((asyncpg.InsufficientPrivilegeError, asyncpg.exceptions.InsufficientPrivilegeError)):
        sql(gateway, statement, as_app=True)


def test_requests_are_denied_when_they_cannot_be_recorded(gateway: Gateway) -> None:
    minted = gateway.mint()
    authz = gateway.stack.services["authz"].process
    assert authz is not None
    spool = gateway.stack.data_dir / "spool"
    current = max(spool.glob("*.jsonl"))
    gateway.forget_received()
    # The spool file may not grow: every append fails with EFBIG, as on a full disk.
    resource.prlimit(authz.pid, resource.RLIMIT_FSIZE, (current.stat().st_size, resource.RLIM_INFINITY))
    try:
        response = gateway.chat(minted.secret)
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "audit_unavailable"
        assert gateway.received() == [], "an unrecorded request reached the provider"
    finally:
        resource.prlimit(authz.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    assert gateway.chat(minted.secret).status_code == 200


def test_a_deprovisioned_contractor_has_zero_requests_allowed_afterwards(gateway: Gateway) -> None:
    minted = gateway.mint()
    before = gateway.chat(minted.secret)
    assert before.status_code == 200
    gateway.admin.patch(f"/users/{minted.user['id']}", json={"status": "deprovisioned"})
    gateway.wait_until(lambda: gateway.status_of(minted.secret) == 401, timeout=1, what="deprovision")
    after = gateway.chat(minted.secret)
    wait_for_records(gateway, [before.headers["x-request-id"], after.headers["x-request-id"]])
    activity = gateway.admin.get(f"/audit/users/{minted.user['id']}/activity").json()
    assert activity["disabled_at"] is not None
    assert activity["disabled_by"]["action"] == "user.deprovisioned"
    assert activity["allowed_after_disabled"] == 0
    assert activity["allowed_after_disabled_examples"] == []
    assert activity["last_allowed_request"]["request_id"] == before.headers["x-request-id"]
    assert activity["last_request"]["request_id"] == after.headers["x-request-id"]
    assert activity["last_request"]["decision"] == "token_revoked"


def test_who_made_the_request_at_a_given_minute_and_exports(gateway: Gateway) -> None:
    minted = gateway.mint(team="night-shift")
    response = gateway.chat(minted.secret)
    request_id = response.headers["x-request-id"]
    record = wait_for_records(gateway, [request_id])[request_id]
    at = datetime.fromisoformat(record["at"])
    window = {"start": (at - timedelta(seconds=30)).isoformat(), "end": (at + timedelta(seconds=30)).isoformat(),
              "team": "night-shift", "decision": "allowed"}  # mint() probed the token once: route_unknown
    page = gateway.admin.get("/audit/requests", params=window).json()
    assert [r["request_id"] for r in page["items"]] == [request_id]
    assert page["items"][0]["user_email"] == minted.user["email"]
    exported = gateway.admin.get("/audit/requests", params=window | {"format": "csv"})
    assert exported.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert [r["request_id"] for r in rows] == [request_id]
    lines = gateway.admin.get("/audit/requests", params=window | {"format": "jsonl"}).text.splitlines()
    assert [json.loads(line)["request_id"] for line in lines] == [request_id]
    events = gateway.admin.get("/audit/events", params={"target_id": minted.id, "format": "jsonl"}).text
    assert [json.loads(line)["action"] for line in events.splitlines()] == ["token.issued"]


def test_bad_audit_queries_are_422(gateway: Gateway) -> None:
    for params in ({"start": "2026-01-02T00:00:00Z", "end": "2026-01-01T00:00:00Z"},
                   {"start": "2026-01-01T00:00:00"}, {"status": "999"}, {"format": "xml"}, {"cursor": "!!"}):
        response = gateway.admin.get("/audit/requests", params=params)
        assert response.status_code == 422, (params, response.text)


def test_ingest_requires_the_data_plane_credential(gateway: Gateway) -> None:
    url = f"{gateway.info.api_url}/api/v1/audit/ingest"
    assert httpx.post(url, json={"records": []}).status_code == 401
    admin = {"Authorization": f"Bearer {gateway.info.admin_token}"}
    assert httpx.post(url, json={"records": []}, headers=admin).status_code == 401


def _decisions(count: int, prefix: str) -> list[dict]:
    return [{"kind": "decision", "at": datetime.now(UTC).isoformat(), "request_id": f"{prefix}-{uuid.uuid4()}",
             "decision": "allowed", "user_email": "ada@example.com", "model": "gpt-4o-mini"} for _ in range(count)]


def test_concurrent_ingests_append_one_chain(gateway: Gateway) -> None:
    # Two gateway replicas ship at once: each batch holds the chain's lock until it commits, so seq
    # never repeats and the chain stays whole.
    url = f"{gateway.info.api_url}/api/v1/audit/ingest"
    token = (gateway.stack.data_dir / "secrets" / "ingest_token").read_text().strip()
    batches = [_decisions(50, "concurrent") for _ in range(16)]
    start = threading.Barrier(len(batches))
    statuses: list[int] = []

    def ship(lines: list[dict]) -> None:
        with httpx.Client(timeout=60) as client:
            start.wait()
            statuses.append(client.post(url, json={"records": lines},
                                        headers={"Authorization": f"Bearer {token}"}).status_code)

    threads = [threading.Thread(target=ship, args=(batch,)) for batch in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert statuses == [200] * len(batches)
    ids = [line["request_id"] for batch in batches for line in batch]
    rows = sql(gateway, "SELECT request_id FROM request_records WHERE request_id = ANY($1::text[])", ids)
    assert len(rows) == len({row["request_id"] for row in rows}) == len(ids)
    assert sql(gateway, "SELECT seq FROM request_records GROUP BY seq HAVING count(*) > 1") == []
    result = verify(gateway)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_batch_that_fails_midway_stores_nothing(gateway: Gateway) -> None:
    # The route hands the ingestor a connection that is not in a transaction yet; a failure after the
    # records are written (here: signing the outcomes' head) must leave none of them behind.
    from controlplane.audit import chain, signing
    from controlplane.audit.ingest import IngestBatch, Ingestor

    class FailsOnOutcomes(signing.Signer):
        def checkpoint(self, chain_name: str, seq: int, digest: bytes) -> tuple[str, int, bytes, str, bytes]:
            if chain_name == chain.OUTCOMES:
                raise RuntimeError("the disk went away")
            return super().checkpoint(chain_name, seq, digest)

    lines = _decisions(5, "midway")
    lines.append({"kind": "outcome", "at": datetime.now(UTC).isoformat(), "request_id": lines[0]["request_id"],
                  "status": 200, "decided": True})
    batch = IngestBatch.model_validate({"records": lines})
    key = (gateway.stack.data_dir / "secrets" / "audit_signing_key").read_text().strip()

    async def ingest() -> None:
        previous = signing._installed
        signing.install(FailsOnOutcomes(key))
        connection = await asyncpg.connect(gateway.info.database_url)
        try:
            await Ingestor().ingest(connection, batch)
        finally:
            await connection.close()
            signing._installed = previous

    with pytest.raises(RuntimeError, match="the disk went away"):
        asyncio.run(ingest())
    ids = [line["request_id"] for line in lines]
    assert sql(gateway, "SELECT request_id FROM request_records WHERE request_id = ANY($1::text[])", ids) == []


@pytest.mark.parametrize("role", ["keyward_app", "postgres"])
def test_the_embedded_database_wants_a_password_even_on_its_socket(gateway: Gateway, role: str) -> None:
    # Without it, any local user could log in as the owner and rewrite history.
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(gateway.info.database_url)
    passwordless = urlunsplit(parts._replace(netloc=f"{role}@{parts.netloc.rpartition('@')[2]}"))

    async def connect() -> None:
        connection = await asyncpg.connect(passwordless)
        await connection.close()

    with pytest.raises((asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError)):
        asyncio.run(connect())
