"""The admin API: authentication, validation, conflicts, transactions, events, health."""

from __future__ import annotations

import base64
import json
import time

import httpx
import pytest

from tests.e2e.conftest import Gateway

pytestmark = pytest.mark.e2e


def test_admin_api_requires_the_admin_token(gateway: Gateway) -> None:
    base = f"{gateway.info.api_url}/api/v1"
    for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"}, {"Authorization": "Basic abc"}):
        response = httpx.get(f"{base}/users", headers=headers)
        assert response.status_code == 401
        assert response.json()["code"] == "credential_invalid"
    # A PAT is not an admin credential.
    pat = gateway.mint().secret
    assert httpx.get(f"{base}/users", headers={"Authorization": f"Bearer {pat}"}).status_code == 401


def test_mint_shows_the_secret_once_and_stores_no_secret(gateway: Gateway) -> None:
    minted = gateway.mint()
    assert minted.secret.startswith("kw_pat_")
    assert minted.token["hint"] == f"kw_pat_…{minted.secret[-4:]}"
    fetched = gateway.admin.get(f"/tokens/{minted.id}").json()
    listed = gateway.admin.get("/tokens", params={"user_id": minted.user["id"]}).json()
    for document in (fetched, listed):
        assert minted.secret not in str(document)
        assert "token_hash" not in str(document)
    from tests.e2e.test_denials import sql

    [row] = sql(gateway, "SELECT * FROM tokens WHERE id = $1::uuid", minted.id)  # type: ignore[misc]
    assert minted.secret not in str(dict(row))
    assert len(row["token_hash"]) == 64


def test_validation_errors_are_422_with_field_errors(gateway: Gateway) -> None:
    user = gateway.user()
    cases = [
        ("/users", {"email": "not-an-email"}),
        ("/users", {"email": "ok@example.com", "role": "admin"}),  # unknown field
        ("/tokens", {"user_id": user["id"], "name": "x", "environment": "moon"}),
        ("/tokens", {"user_id": user["id"], "name": "x", "models": []}),
        ("/tokens", {"user_id": user["id"], "name": "x", "models": ["gpt 4; drop"]}),
        ("/tokens", {"user_id": "not-a-uuid", "name": "x"}),
        ("/tokens", {"user_id": user["id"], "name": "x", "expires_in_days": 100000}),
    ]
    for path, body in cases:
        response = gateway.admin.post(path, json=body)
        assert response.status_code == 422, (path, body, response.text)
        assert response.json()["detail"]


def test_malformed_json_is_422_and_writes_nothing(gateway: Gateway) -> None:
    before = gateway.admin.get("/users", params={"limit": 500}).json()
    response = gateway.admin.post("/users", content=b'{"email": ', headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert gateway.admin.get("/users", params={"limit": 500}).json()["items"] == before["items"]


def test_oversized_admin_body_is_413(gateway: Gateway) -> None:
    response = gateway.admin.post(
        "/users", content=b"{" + b" " * 2_000_000 + b"}", headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json()["code"] == "body_too_large"


def test_duplicate_email_is_409_case_insensitively(gateway: Gateway) -> None:
    user = gateway.user()
    response = gateway.admin.post("/users", json={"email": user["email"].upper()})
    assert response.status_code == 409
    assert response.json()["code"] == "user_exists"


def test_unknown_ids_are_404(gateway: Gateway) -> None:
    missing = "00000000-0000-4000-8000-000000000000"
    assert gateway.admin.get(f"/users/{missing}").json()["code"] == "user_not_found"
    assert gateway.admin.post(f"/tokens/{missing}/revoke").status_code == 404
    response = gateway.admin.post("/tokens", json={"user_id": missing, "name": "x"})
    assert response.status_code == 404


def test_tokens_cannot_be_minted_for_inactive_users(gateway: Gateway) -> None:
    user = gateway.user()
    gateway.admin.patch(f"/users/{user['id']}", json={"status": "suspended"})
    response = gateway.admin.post("/tokens", json={"user_id": user["id"], "name": "x"})
    assert response.status_code == 409
    assert response.json()["code"] == "user_not_active"
    events = gateway.admin.get("/audit/events", params={"target_type": "token", "action": "token.issued"}).json()
    assert all(e["after"]["user_id"] != user["id"] for e in events["items"])


def test_pagination_walks_every_item_once(gateway: Gateway) -> None:
    for _ in range(5):
        gateway.user()
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = gateway.admin.get("/users", params=params).json()
        seen += [u["id"] for u in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    everything = gateway.admin.get("/users", params={"limit": 500}).json()["items"]
    assert seen == [u["id"] for u in everything]
    assert gateway.admin.get("/users", params={"cursor": "garbage!"}).status_code == 422


def _cursor(*parts: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(parts)).encode()).decode()


@pytest.mark.parametrize(("path", "params", "cursor"), [
    # A sort key of the wrong type: text where a timestamp is sorted on, and the other way round.
    ("/users", {"sort": "created_at"}, _cursor("sNOT A TIME", "00000000-0000-0000-0000-000000000000")),
    ("/users", {"sort": "email"}, _cursor("d2026-01-01T00:00:00+00:00", "00000000-0000-0000-0000-000000000000")),
    ("/tokens", {"sort": "-last_used_at"}, _cursor("i42", "00000000-0000-0000-0000-000000000000")),
    ("/tokens", {"sort": "created_at"}, _cursor("d2026-01-01T00:00:00", "00000000-0000-0000-0000-000000000000")),
    ("/teams", {}, _cursor("d2026-01-01T00:00:00+00:00", "not-a-uuid")),
    ("/users", {}, _cursor(["d2026"], "x")),
    ("/users", {}, _cursor("d2026-01-01T00:00:00+00:00")),
    ("/audit/requests", {}, _cursor("sNOT A TIME", "1")),
    ("/audit/requests", {}, _cursor("d2026-01-01T00:00:00+00:00", "1; DROP TABLE users")),
    ("/audit/events", {}, "99999999999999999999999"),
    ("/audit/events", {}, "-1"),
])
def test_a_tampered_cursor_is_a_422_not_a_500(gateway: Gateway, path: str, params: dict, cursor: str) -> None:
    reply = gateway.admin.get(path, params={**params, "cursor": cursor})
    assert reply.status_code == 422, reply.text
    assert reply.json()["code"] == "cursor_invalid"


def test_every_action_is_an_event_with_actor_and_mechanism(gateway: Gateway) -> None:
    minted = gateway.mint()
    gateway.revoke(minted.id, reason="left the company")
    user_events = gateway.admin.get("/audit/events", params={"target_id": minted.user["id"]}).json()["items"]
    token_events = gateway.admin.get("/audit/events", params={"target_id": minted.id}).json()["items"]
    assert [e["action"] for e in user_events] == ["user.created"]
    assert [e["action"] for e in token_events] == ["token.issued", "token.revoked", "revocation.confirmed"]
    for event in user_events + token_events:
        assert event["actor"] == "admin:bootstrap"
        assert event["mechanism"] == "api"
        assert event["at"]
    assert token_events[1]["before"]["revoked_at"] is None
    assert token_events[1]["after"]["revoke_reason"] == "left the company"
    assert minted.secret not in str(token_events)


def test_health_endpoints(gateway: Gateway) -> None:
    assert httpx.get(f"{gateway.info.api_url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{gateway.info.api_url}/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    assert gateway.stack.authz_serving()
    assert gateway.stack.envoy_ready()
    live = httpx.get(f"{gateway.info.api_url}/livez").json()
    duties = ("lifecycle", "offboarding", "notifications", "budgets", "reviews", "break-glass", "overview",
              "verify-audit", "verify-audit-full")
    assert live["duties"] == {**dict.fromkeys(duties, True), "revocation-acks": True, "token-mirror": True}
    time.sleep(1.2)  # a few rounds of the lifecycle duty (every 0.5 s here)
    assert httpx.get(f"{gateway.info.api_url}/livez").json()["failed_rounds"] == dict.fromkeys(duties, 0)


def test_openapi_document_lists_the_admin_api(gateway: Gateway) -> None:
    spec = httpx.get(f"{gateway.info.api_url}/openapi.json").json()
    for path in ("/api/v1/users", "/api/v1/tokens", "/api/v1/tokens/{token_id}/revoke", "/api/v1/audit/events"):
        assert path in spec["paths"]
    issued = spec["components"]["schemas"]["TokenIssued"]["properties"]
    public = spec["components"]["schemas"]["TokenPublic"]["properties"]
    assert "token" in issued and "token" not in public
    assert "token_hash" not in issued and "token_hash" not in public


def test_updates_refuse_explicit_nulls_for_required_fields(gateway: Gateway) -> None:
    team = gateway.team()
    profile_id = team["profile_id"]
    for field in ("name", "catalog", "environments", "default_token_days", "max_token_days"):
        response = gateway.admin.patch(f"/profiles/{profile_id}", json={field: None})
        assert response.status_code == 422, (field, response.text)
    assert gateway.admin.patch(f"/teams/{team['id']}", json={"name": None}).status_code == 422
    widened = gateway.admin.patch(f"/profiles/{profile_id}", json={"default_token_days": 3000})
    assert widened.status_code == 422 and widened.json()["code"] == "profile_days"


def test_service_accounts_filter_by_status(gateway: Gateway) -> None:
    team, owner = gateway.team(), gateway.user()
    account = gateway.admin.post("/service-accounts", json={
        "name": "filtered", "team_id": team["id"], "business_owner_id": owner["id"],
        "technical_owner_id": owner["id"]}).json()
    gateway.admin.patch(f"/service-accounts/{account['id']}", json={"status": "disabled"})
    disabled = gateway.admin.get("/service-accounts", params={"status": "disabled", "team_id": team["id"]}).json()
    active = gateway.admin.get("/service-accounts", params={"status": "active", "team_id": team["id"]}).json()
    assert [a["id"] for a in disabled["items"]] == [account["id"]] and active["items"] == []
