"""The routing header belongs to authz, credentials in URLs never travel, upstream keys rotate in place.

Against the provider stack (every kind of upstream, mocked): a client cannot choose its upstream by
sending ``x-keyward-upstream`` itself; a ``?key=`` query parameter (Gemini's other way to pass a key)
is removed before the request leaves; an AWS session token a client sends never reaches Bedrock; and
replacing an upstream's key file (an Azure key, Bedrock's AWS credentials) is picked up by Envoy
without a restart.
"""

from __future__ import annotations

import uuid
from urllib.parse import parse_qs

import pytest

from authz.upstreams import Upstreams
from controlplane.stack.envoy_config import write_upstream_key
from tests.e2e.conftest import Minted, ProviderGateway

pytestmark = pytest.mark.e2e

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def minted(providers: ProviderGateway) -> Minted:
    reply = providers.admin.post("/profiles", json={
        "name": f"routing-{uuid.uuid4().hex[:6]}", "environments": ["dev"],
        "catalog": [{"provider": "openai", "pattern": "gpt-4o", "upstream": "azure"},
                    {"provider": "*", "pattern": "*"}]})
    assert reply.status_code == 201, reply.text
    return providers.mint(team=providers.team(profile_id=reply.json()["id"]))


def _last(providers: ProviderGateway, fragment: str) -> dict:
    found = [r for r in providers.received() if fragment in r["path"]]
    assert found, f"nothing reached {fragment}"
    return found[-1]


def test_a_client_cannot_choose_its_upstream(providers: ProviderGateway, minted: Minted) -> None:
    providers.forget_received()
    reply = providers.http.post("/openai/v1/chat/completions", json=CHAT, headers={
        "Authorization": f"Bearer {minted.secret}", "x-keyward-upstream": "vllm"})
    assert reply.status_code == 200, reply.text
    (received,) = providers.received()
    assert received["path"] == "/v1/chat/completions"  # the openai upstream, at the mock's root
    assert not any(name.lower().startswith("x-keyward") for name, _ in received["headers"])
    # And the catalog's choice wins over the client's for a routed model.
    providers.forget_received()
    reply = providers.http.post("/openai/v1/chat/completions", json={**CHAT, "model": "gpt-4o"}, headers={
        "Authorization": f"Bearer {minted.secret}", "x-keyward-upstream": "openai"})
    assert reply.status_code == 200, reply.text
    assert providers.received()[-1]["path"] == "/x/azure/openai/v1/chat/completions"


def test_a_key_in_the_query_string_never_travels(providers: ProviderGateway, minted: Minted) -> None:
    providers.forget_received()
    reply = providers.http.post(
        "/gemini/v1beta/models/gemini-2.0-flash:generateContent",
        params={"key": minted.secret, "api_key": "AIza-client-own", "alt": "json"},
        headers={"x-goog-api-key": minted.secret}, json={"contents": [{"parts": [{"text": "hi"}]}]})
    assert reply.status_code == 200, reply.text
    received = _last(providers, "/x/gemini/")
    assert parse_qs(received["query"]) == {"alt": ["json"]}
    assert minted.secret not in repr(received) and "AIza-client-own" not in repr(received)


def test_a_clients_aws_session_token_never_reaches_bedrock(providers: ProviderGateway, minted: Minted) -> None:
    providers.forget_received()
    reply = providers.http.post(
        "/bedrock/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse",
        headers={"Authorization": f"Bearer {minted.secret}", "x-amz-security-token": "client-session-token"},
        json={"messages": [{"role": "user", "content": [{"text": "hi"}]}]})
    assert reply.status_code == 200, reply.text
    received = _last(providers, "/x/bedrock/")
    names = {name.lower() for name, _ in received["headers"]}
    assert "x-amz-security-token" not in names
    assert "client-session-token" not in repr(received) and minted.secret not in repr(received)


@pytest.mark.parametrize("name", ["azure", "bedrock"])
def test_an_upstream_key_rotates_without_a_restart(providers: ProviderGateway, minted: Minted, name: str) -> None:
    upstream = Upstreams.parse(providers.stack.settings.upstreams).get(name)
    assert upstream is not None
    secrets_dir = providers.stack.data_dir / "envoy" / "secrets"
    envoy = providers.stack.services["envoy"].process
    assert envoy is not None
    pid = envoy.pid
    original = providers.upstream_keys[name]
    wrong = "AKIAWRONGKEY0000:not-the-secret" if name == "bedrock" else "not-the-azure-key"

    def status() -> int:
        if name == "azure":
            return providers.http.post("/openai/v1/chat/completions", json={**CHAT, "model": "gpt-4o"},
                                       headers={"Authorization": f"Bearer {minted.secret}"}).status_code
        return providers.http.post(
            "/bedrock/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse",
            headers={"Authorization": f"Bearer {minted.secret}"},
            json={"messages": [{"role": "user", "content": [{"text": "hi"}]}]}).status_code

    assert status() == 200
    try:
        write_upstream_key(secrets_dir, upstream, wrong)
        providers.wait_until(lambda: status() in (401, 403), timeout=15, what=f"Envoy to use the new {name} key")
    finally:
        write_upstream_key(secrets_dir, upstream, original)
        providers.wait_until(lambda: status() == 200, timeout=15, what=f"the original {name} key again")
    assert envoy.pid == pid and envoy.poll() is None  # the same Envoy process throughout
