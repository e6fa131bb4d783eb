"""Every denial class, through Envoy, in the error shape of the API being called."""

from __future__ import annotations

import asyncio
import socket

import asyncpg
import pytest

from authz.tokens import generate_token
from tests.e2e.conftest import Gateway

pytestmark = pytest.mark.e2e

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
MESSAGE = {"model": "claude-haiku-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}


def sql(gateway: Gateway, query: str, *args: object, as_app: bool = False) -> object:
    """Run SQL as the database owner (an operator, or an attacker with superuser rights), or as the
    application's own role when ``as_app``."""

    async def run() -> object:
        url = gateway.info.database_url if as_app else gateway.info.owner_database_url
        connection = await asyncpg.connect(url)
        try:
            return await connection.fetch(query, *args)
        finally:
            await connection.close()

    return asyncio.run(run())


def assert_openai_error(response, status: int, code: str) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    assert body["error"]["request_id"] == response.headers["x-request-id"]
    return body


def assert_anthropic_error(response, status: int, kind: str) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == kind
    assert body["request_id"] == response.headers["x-request-id"]
    return body


def nothing_forwarded(gateway: Gateway) -> None:
    assert gateway.received() == [], "a denied request reached the provider"


@pytest.fixture(autouse=True)
def _clean_provider_log(gateway: Gateway) -> None:
    gateway.forget_received()


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "token_missing"),
        ({"Authorization": "Bearer"}, "token_missing"),
        ({"x-api-key": ""}, "token_missing"),
        ({"Authorization": "Bearer sk-proj-abcdefghijklmnopqrstuvwxyz0123456789"}, "token_malformed"),
        ({"Authorization": "Bearer ghp_abcdefghijklmnopqrstuvwxyz0123456789"}, "token_malformed"),
        ({"Authorization": "Bearer kw_pat_short"}, "token_malformed"),
        ({"Authorization": f"Bearer {generate_token()}"}, "token_unknown"),
    ],
    ids=["absent", "empty-bearer", "empty-api-key", "openai-key", "other-prefix", "truncated", "unknown"],
)
def test_bad_credentials_are_401(gateway: Gateway, headers: dict, code: str) -> None:
    response = gateway.http.post("/openai/v1/chat/completions", headers=headers, json=CHAT)
    assert_openai_error(response, 401, code)
    assert response.headers["www-authenticate"].startswith("Bearer")
    nothing_forwarded(gateway)


def test_mistyped_token_is_rejected_by_checksum(gateway: Gateway) -> None:
    secret = gateway.mint().secret
    typo = secret[:12] + ("A" if secret[12] != "A" else "B") + secret[13:]
    assert_openai_error(gateway.chat(typo), 401, "token_malformed")
    nothing_forwarded(gateway)


def test_non_utf8_credential_header_is_401(gateway: Gateway) -> None:
    request = (
        b"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: gw\r\n"
        b"Authorization: Bearer kw_pat_\xff\xfe\xfd\r\nContent-Type: application/json\r\n"
        b"Content-Length: 2\r\nConnection: close\r\n\r\n{}"
    )
    port = int(gateway.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(request)
        raw = b""
        while chunk := conn.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401"), head
    assert b'"token_malformed"' in body
    nothing_forwarded(gateway)


def test_revoked_token_is_401(gateway: Gateway) -> None:
    minted = gateway.mint()
    gateway.revoke(minted.id)
    gateway.wait_until(lambda: gateway.status_of(minted.secret) == 401, timeout=1, what="revocation")
    assert_openai_error(gateway.chat(minted.secret), 401, "token_revoked")


def test_expired_token_is_401(gateway: Gateway) -> None:
    minted = gateway.mint()
    sql(gateway, "UPDATE tokens SET expires_at = now() - interval '1 second' WHERE id = $1::uuid", minted.id)
    # Waiting with a chat would send one to the provider while the change is on its way (correctly: it was
    # not expired yet); the probe is refused after authentication (404) until the token is refused (401).
    gateway.wait_until(lambda: not gateway.known(minted.secret), timeout=1, what="expiry")
    assert_openai_error(gateway.chat(minted.secret), 401, "token_expired")
    nothing_forwarded(gateway)


def test_suspended_owner_is_401_and_reactivation_restores(gateway: Gateway) -> None:
    minted = gateway.mint()
    user_id = minted.user["id"]
    assert gateway.admin.patch(f"/users/{user_id}", json={"status": "suspended"}).status_code == 200
    gateway.wait_until(lambda: gateway.status_of(minted.secret) == 401, timeout=1, what="suspension")
    assert_openai_error(gateway.chat(minted.secret), 401, "owner_disabled")
    assert gateway.admin.patch(f"/users/{user_id}", json={"status": "active"}).status_code == 200
    gateway.wait_until(lambda: gateway.status_of(minted.secret) == 200, timeout=1, what="reactivation")


def test_deprovisioned_owner_loses_every_token(gateway: Gateway) -> None:
    user = gateway.user()
    first, second = gateway.mint(user), gateway.mint(user)
    assert gateway.admin.patch(f"/users/{user['id']}", json={"status": "deprovisioned"}).status_code == 200
    for minted in (first, second):
        gateway.wait_until(lambda m=minted: gateway.status_of(m.secret) == 401, timeout=1, what="deprovision")
        assert gateway.admin.get(f"/tokens/{minted.id}").json()["revoked_at"] is not None


def test_model_outside_catalog_is_403_in_both_shapes(gateway: Gateway) -> None:
    minted = gateway.mint(models=["gpt-4o-mini", "claude-haiku-*"])
    assert gateway.chat(minted.secret, model="gpt-4o-mini").status_code == 200
    gateway.forget_received()
    assert_openai_error(gateway.chat(minted.secret, model="gpt-4o"), 403, "model_not_allowed")
    response = gateway.http.post(
        "/anthropic/v1/messages",
        json={**MESSAGE, "model": "claude-opus-4-6"},
        headers={"x-api-key": minted.secret, "anthropic-version": "2023-06-01"},
    )
    assert_anthropic_error(response, 403, "permission_error")
    assert (
        gateway.http.get("/openai/v1/models/gpt-4o", headers={"Authorization": f"Bearer {minted.secret}"}).status_code
        == 403
    )
    nothing_forwarded(gateway)
    response = gateway.http.post(
        "/anthropic/v1/messages", json=MESSAGE, headers={"x-api-key": minted.secret, "anthropic-version": "2023-06-01"}
    )
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("body", "content_type", "code"),
    [
        (b"{not json", "application/json", "body_not_json"),
        (b"[1, 2, 3]", "application/json", "body_not_json"),
        (b"\xff\xfe garbage", "application/json", "body_not_json"),
        (b"model=gpt-4o-mini", "application/x-www-form-urlencoded", "body_not_json"),
        (b'{"messages": []}', "application/json", "model_missing"),
        (b'{"model": 42}', "application/json", "model_missing"),
    ],
    ids=["garbage", "array", "binary", "form", "no-model", "model-not-string"],
)
def test_bad_bodies_are_400(gateway: Gateway, body: bytes, content_type: str, code: str) -> None:
    secret = gateway.mint().secret
    response = gateway.http.post(
        "/openai/v1/chat/completions",
        content=body,
        headers={"Authorization": f"Bearer {secret}", "content-type": content_type},
    )
    assert_openai_error(response, 400, code)
    nothing_forwarded(gateway)


def test_oversized_body_is_413_in_both_shapes(gateway: Gateway) -> None:
    secret = gateway.mint().secret
    huge = b'{"model": "gpt-4o-mini", "pad": "' + b"x" * 1_100_000 + b'"}'
    response = gateway.http.post(
        "/openai/v1/chat/completions",
        content=huge,
        headers={"Authorization": f"Bearer {secret}", "content-type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json()["error"]["message"]
    response = gateway.http.post(
        "/anthropic/v1/messages", content=huge, headers={"x-api-key": secret, "content-type": "application/json"}
    )
    assert_anthropic_error(response, 413, "request_too_large")
    nothing_forwarded(gateway)


def test_unauthenticated_garbage_gets_401_not_400(gateway: Gateway) -> None:
    response = gateway.http.post(
        "/openai/v1/chat/completions", content=b"{oops", headers={"content-type": "application/json"}
    )
    assert_openai_error(response, 401, "token_missing")


def test_unknown_endpoint_is_404_and_never_forwarded(gateway: Gateway) -> None:
    secret = gateway.mint().secret
    response = gateway.http.post("/openai/v1/fine_tuning/jobs", headers={"Authorization": f"Bearer {secret}"},
                                 json={})
    assert_openai_error(response, 404, "route_unknown")
    # Outside the provider prefixes Envoy has no route at all and answers by itself.
    response = gateway.http.get("/somewhere/else", headers={"Authorization": f"Bearer {secret}"})
    assert_openai_error(response, 404, "route_not_found")
    response = gateway.http.post(
        "/anthropic/v1/complete", json=MESSAGE, headers={"x-api-key": secret, "anthropic-version": "2023-06-01"}
    )
    assert_anthropic_error(response, 404, "not_found_error")
    nothing_forwarded(gateway)


def test_anthropic_auth_errors_use_anthropic_shape(gateway: Gateway) -> None:
    response = gateway.http.post("/anthropic/v1/messages", json=MESSAGE, headers={"anthropic-version": "2023-06-01"})
    body = assert_anthropic_error(response, 401, "authentication_error")
    assert body["error"]["code"] == "token_missing"


def test_a_body_that_names_the_model_twice_is_400_and_never_forwarded(gateway: Gateway) -> None:
    # A provider that reads the first key would run gpt-4o, which authz would never have checked.
    minted = gateway.mint(models=["gpt-4o-mini"])
    body = b'{"model":"gpt-4o","model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
    response = gateway.http.post(
        "/openai/v1/chat/completions",
        content=body,
        headers={"Authorization": f"Bearer {minted.secret}", "content-type": "application/json"},
    )
    assert_openai_error(response, 400, "body_ambiguous")
    nothing_forwarded(gateway)


@pytest.mark.parametrize("header", ["x-api-key", "authorization"])
def test_a_credential_header_sent_twice_is_400_and_never_forwarded(gateway: Gateway, header: str) -> None:
    first, second = gateway.mint(), gateway.mint()
    values = [first.secret, second.secret] if header == "x-api-key" else [f"Bearer {first.secret}",
                                                                         f"Bearer {second.secret}"]
    response = gateway.http.post(
        "/anthropic/v1/messages",
        json=MESSAGE,
        headers=[(header, value) for value in values] + [("anthropic-version", "2023-06-01")],
    )
    body = assert_anthropic_error(response, 400, "invalid_request_error")
    assert body["error"]["code"] == "credential_ambiguous"
    nothing_forwarded(gateway)
