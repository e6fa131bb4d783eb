"""The PAT never reaches a provider; the provider key never reaches a client, a log or an error."""

from __future__ import annotations

import json
from pathlib import Path

import anthropic
import openai
import pytest

from controlplane.stack.envoy_config import write_secret
from tests.e2e.conftest import Gateway

pytestmark = pytest.mark.e2e


def _headers(record: dict) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for key, value in record["headers"]:
        found.setdefault(key.lower(), []).append(value)
    return found


def test_openai_route_gets_provider_key_and_never_the_pat(gateway: Gateway) -> None:
    minted = gateway.mint()
    gateway.forget_received()
    reply = gateway.http.post(
        "/openai/v1/chat/completions",
        headers={
            "Authorization": f"Bearer {minted.secret}",
            # A client trying to bring its own provider credentials: all must be dropped.
            "x-api-key": "sk-ant-client-supplied",
            "api-key": "azure-client-supplied",
            "x-goog-api-key": "google-client-supplied",
            "proxy-authorization": "Basic Y2xpZW50OnN1cHBsaWVk",
        },
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert reply.status_code == 200, reply.text
    [record] = gateway.received()
    headers = _headers(record)
    assert headers["authorization"] == [f"Bearer {gateway.provider_keys['openai']}"]
    for dropped in ("x-api-key", "api-key", "x-goog-api-key", "proxy-authorization"):
        assert dropped not in headers
    assert minted.secret not in json.dumps(record)
    assert record["path"] == "/v1/chat/completions"


def test_anthropic_route_gets_provider_key_and_never_the_pat(gateway: Gateway) -> None:
    minted = gateway.mint()
    gateway.forget_received()
    reply = gateway.http.post(
        "/anthropic/v1/messages",
        headers={
            "x-api-key": minted.secret,
            "anthropic-version": "2023-06-01",
            "authorization": "Bearer sk-openai-client-supplied",
        },
        json={"model": "claude-haiku-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert reply.status_code == 200, reply.text
    [record] = gateway.received()
    headers = _headers(record)
    assert headers["x-api-key"] == [gateway.provider_keys["anthropic"]]
    assert "authorization" not in headers
    assert minted.secret not in json.dumps(record)


def test_provider_keys_never_leave_envoy(gateway: Gateway) -> None:
    minted = gateway.mint(models=["gpt-4o-mini"])
    responses = []
    with openai.OpenAI(base_url=gateway.openai_base, api_key=minted.secret, max_retries=0) as client:
        responses.append(
            client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
            ).http_response
        )
    # Denials of every kind, and an Envoy-made error.
    responses.append(gateway.chat(minted.secret, model="gpt-4o"))
    responses.append(gateway.chat("kw_pat_nope"))
    responses.append(
        gateway.http.post(
            "/openai/v1/chat/completions",
            content=b"x" * 2_000_000,
            headers={"Authorization": f"Bearer {minted.secret}"},
        )
    )
    with anthropic.Anthropic(base_url=gateway.anthropic_base, api_key=minted.secret, max_retries=0) as client:
        with pytest.raises(anthropic.PermissionDeniedError) as denied:
            client.messages.create(model="claude-opus-4-6", max_tokens=5, messages=[{"role": "user", "content": "x"}])
        responses.append(denied.value.response)
    keys = list(gateway.provider_keys.values())
    for response in responses:
        exposed = response.text + json.dumps(dict(response.headers))
        for key in keys:
            assert key not in exposed, f"provider key leaked in a {response.status_code} response"
    # Nor in any log line of any process, nor in the rendered Envoy config.
    logs = gateway.info.logs_dir
    rendered = (gateway.stack.data_dir / "envoy" / "envoy.yaml").read_text()
    for key in keys:
        for path in logs.iterdir():
            assert key not in path.read_text(errors="replace"), f"provider key in {path.name}"
        assert key not in rendered
        assert minted.secret not in (logs / "access.log").read_text()


def test_secret_files_are_private(gateway: Gateway) -> None:
    secrets_dir = gateway.stack.data_dir / "envoy" / "secrets"
    for name in ("openai.json", "anthropic.json"):
        assert (secrets_dir / name).stat().st_mode & 0o777 == 0o600
    assert (gateway.stack.data_dir / "secrets" / "admin_token").stat().st_mode & 0o777 == 0o600


def test_authz_process_holds_no_provider_key(gateway: Gateway) -> None:
    authz = gateway.stack.services["authz"]
    assert authz.process is not None
    environ = Path(f"/proc/{authz.process.pid}/environ").read_bytes()
    for key in gateway.provider_keys.values():
        assert key.encode() not in environ
    assert b"KEYWARD_ADMIN_TOKEN" not in environ


def test_provider_key_rotation_is_picked_up_without_a_restart(gateway: Gateway) -> None:
    secret_file = gateway.stack.data_dir / "envoy" / "secrets" / "openai.json"
    envoy = gateway.stack.services["envoy"].process
    assert envoy is not None
    minted = gateway.mint()
    original = gateway.provider_keys["openai"]

    def provider_saw(key: str) -> bool:
        gateway.forget_received()
        gateway.chat(minted.secret)
        return any(_headers(r).get("authorization") == [f"Bearer {key}"] for r in gateway.received())

    try:
        write_secret(secret_file, "openai-key", "Bearer rotated-provider-key")
        gateway.wait_until(lambda: provider_saw("rotated-provider-key"), timeout=10, what="rotated key")
    finally:
        write_secret(secret_file, "openai-key", f"Bearer {original}")
        gateway.wait_until(lambda: gateway.status_of(minted.secret) == 200, timeout=10, what="original key")
    assert envoy.poll() is None and gateway.stack.services["envoy"].process is envoy


def test_client_headers_the_provider_must_not_see_are_removed(gateway: Gateway) -> None:
    minted = gateway.mint()
    gateway.forget_received()
    client_headers = {
        # A token in a cookie is still a token; the organization and project are the gateway's to choose;
        # x-keyward-* is Keyward's own namespace, whatever its case.
        "cookie": f"session={minted.secret}; theme=dark",
        "openai-organization": "org-chosen-by-client",
        "openai-project": "proj_chosen_by_client",
        "x-keyward-foo": "client",
        "X-Keyward-User": "someone-else@example.com",
    }
    chat = gateway.http.post(
        "/openai/v1/chat/completions",
        headers={"Authorization": f"Bearer {minted.secret}", **client_headers},
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
    )
    message = gateway.http.post(
        "/anthropic/v1/messages",
        headers={"x-api-key": minted.secret, "anthropic-version": "2023-06-01", **client_headers},
        json={"model": "claude-haiku-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert (chat.status_code, message.status_code) == (200, 200), (chat.text, message.text)
    records = gateway.received()
    assert len(records) == 2
    for record in records:
        headers = _headers(record)
        for name in ("cookie", "openai-organization", "openai-project"):
            assert name not in headers, f"{name} reached {record['path']}"
        assert not [name for name in headers if name.startswith("x-keyward-")], headers
        assert minted.secret not in json.dumps(record)
        # Headers the API needs still pass.
        assert headers["content-type"] == ["application/json"]
    assert _headers(records[1])["anthropic-version"] == ["2023-06-01"]
