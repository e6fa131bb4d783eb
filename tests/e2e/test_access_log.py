"""Every request, allowed or denied, leaves an access-log record with identity, model and timing."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import Gateway

pytestmark = pytest.mark.e2e


def test_allowed_request_is_attributed(gateway: Gateway) -> None:
    minted = gateway.mint(team="platform", environment="staging")
    response = gateway.chat(minted.secret)
    assert response.status_code == 200
    record = gateway.log_record(response.headers["x-request-id"])
    assert record["decision"] == "allowed"
    assert record["token_id"] == minted.id
    assert record["user_id"] == minted.user["id"]
    assert record["user"] == minted.user["email"]
    assert record["team"] == "platform"
    assert record["environment"] == "staging"
    assert record["provider"] == "openai"
    assert record["model"] == "gpt-4o-mini"
    assert record["status"] == 200
    assert record["route"] == "/openai/v1/chat/completions"
    assert isinstance(record["duration_ms"], int)
    assert record["time"].endswith("Z")


def test_denied_request_is_recorded_with_reason(gateway: Gateway) -> None:
    minted = gateway.mint(models=["gpt-4o-mini"])
    response = gateway.chat(minted.secret, model="gpt-4o")
    assert response.status_code == 403
    record = gateway.log_record(response.headers["x-request-id"])
    assert record["decision"] == "model_not_allowed"
    assert record["token_id"] == minted.id
    assert record["model"] == "gpt-4o"
    assert record["status"] == 403

    anonymous = gateway.chat(None)
    record = gateway.log_record(anonymous.headers["x-request-id"])
    assert record["decision"] == "token_missing"
    assert record["status"] == 401
    assert record["token_id"] is None


def test_client_cannot_choose_its_request_id(gateway: Gateway) -> None:
    minted = gateway.mint()
    response = gateway.http.post(
        "/openai/v1/chat/completions",
        headers={"Authorization": f"Bearer {minted.secret}", "x-request-id": "forged-id"},
        json={"model": "gpt-4o-mini", "messages": []},
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"] != "forged-id"
