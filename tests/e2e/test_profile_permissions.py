"""Endpoint permissions, catalog upstreams and the MCP tool catalog through the admin API, against the stack
whose gateway is configured with upstreams besides the built-in two (the session's provider stack).

Profiles grant endpoint families (by default every family that acts on one model), name the upstream that
serves a catalog entry's models and list MCP tools; each name is checked against the configured upstreams.
Tokens narrow the families and can never widen them; every change is on record. The gateway applies a
token's narrowing, the CLI speaks the same words, and the console shows them."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from authz.routes import DEFAULT_FAMILIES
from tests.e2e.conftest import Gateway, ProviderGateway
from tests.e2e.test_cli import document, keyward
from tests.e2e.test_spend_admin import events, made, refused_with

pytestmark = pytest.mark.e2e

DEFAULT = sorted(f.value for f in DEFAULT_FAMILIES)


@pytest.fixture(scope="module")
def routed(providers: ProviderGateway) -> Gateway:
    """The provider stack (tests/e2e/conftest.py): besides openai and anthropic its gateway knows azure (Azure
    OpenAI), vllm (OpenAI-compatible), gemini, mistral, bedrock and the MCP servers docs and code."""
    return providers


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def create(gateway: Gateway, **fields: Any) -> httpx.Response:
    return gateway.admin.post("/profiles", json={
        "name": _name("perm"), "catalog": [{"provider": "*", "pattern": "*"}], "environments": ["dev", "prod"],
        "max_token_days": 365, **fields})


def only_event(gateway: Gateway, action: str, target_id: str) -> dict:
    [found] = events(gateway, action=action, target_id=target_id)
    return found


# -- profiles --------------------------------------------------------------------------------------------


def test_a_profile_grants_the_model_families_unless_told_and_stores_what_it_is_told(routed: Gateway) -> None:
    plain = made(create(routed))
    assert plain["endpoints"] == DEFAULT and plain["tools"] == []
    granted = made(create(routed, endpoints=["tools", "chat", "files"],
                          tools=[{"server": "docs", "tools": "search_*"}, {"server": "docs", "tools": "add"}]))
    assert granted["endpoints"] == ["chat", "files", "tools"]
    assert granted["tools"] == [{"server": "docs", "tools": "search_*"}, {"server": "docs", "tools": "add"}]
    assert made(routed.admin.get(f"/profiles/{granted['id']}"), 200) == granted
    listed = routed.admin.get("/profiles", params={"limit": 500}).json()["items"]
    assert [p["endpoints"] for p in listed if p["id"] == plain["id"]] == [DEFAULT]


def test_catalog_entries_carry_an_upstream_only_when_they_name_one(routed: Gateway) -> None:
    catalog: list[dict[str, Any]] = [
        {"provider": "openai", "pattern": "gpt-4o", "upstream": "azure"},
        {"provider": "azure", "pattern": "gpt-4o-deployment", "environments": ["prod"], "upstream": "azure"},
        {"provider": "openai", "pattern": "llama-*", "upstream": "vllm"},
        {"provider": "*", "pattern": "shared-*", "upstream": "vllm"},
        {"provider": "anthropic", "pattern": "claude-*", "upstream": "anthropic"},
        {"provider": "openai", "pattern": "gpt-4o-mini"}]
    profile = made(create(routed, catalog=catalog))
    assert profile["catalog"] == [
        {"environments": None, **entry} if "environments" not in entry else entry for entry in catalog]
    assert "upstream" not in profile["catalog"][-1]


@pytest.mark.parametrize(("fields", "code", "words"), [
    ({"catalog": [{"provider": "openai", "pattern": "m", "upstream": "azure-west"}]}, "upstream_unknown",
     "azure-west"),
    ({"catalog": [{"provider": "anthropic", "pattern": "m", "upstream": "azure"}]}, "upstream_wrong_api",
     "azure"),
    ({"catalog": [{"provider": "gemini", "pattern": "m", "upstream": "vllm"}]}, "upstream_wrong_api", "vllm"),
    ({"catalog": [{"provider": "*", "pattern": "m", "upstream": "docs"}]}, "upstream_wrong_api", "MCP tools"),
    ({"tools": [{"server": "jira", "tools": "*"}]}, "mcp_server_unknown", "MCP servers: docs, code"),
    ({"tools": [{"server": "azure", "tools": "*"}]}, "mcp_server_unknown", "azure"),
])
def test_names_the_gateway_does_not_serve_that_way_are_refused(routed: Gateway, fields: dict, code: str,
                                                                words: str) -> None:
    name = _name("refused")
    body = refused_with(create(routed, name=name, **fields), 422, code)
    assert words in body["detail"]
    assert not [p for p in routed.admin.get("/profiles", params={"limit": 500}).json()["items"] if p["name"] == name]
    # An update is held to the same rule, and changes nothing when refused.
    profile = made(create(routed))
    refused_with(routed.admin.patch(f"/profiles/{profile['id']}", json={"description": "x", **fields}), 422, code)
    assert made(routed.admin.get(f"/profiles/{profile['id']}"), 200) == profile


@pytest.mark.parametrize("fields", [
    {"endpoints": []}, {"endpoints": ["chat", "chat"]}, {"endpoints": ["teleport"]},
    {"catalog": [{"provider": "mcp", "pattern": "*"}]},
    {"catalog": [{"provider": "openai", "pattern": "m", "upstream": "Azure East"}]},
    {"tools": [{"server": "docs"}]}, {"tools": [{"server": "docs", "tools": "a b"}]},
    {"tools": [{"server": "docs", "tools": f"t{i}"} for i in range(501)]},
])
def test_malformed_permissions_are_refused_by_the_schema(routed: Gateway, fields: dict) -> None:
    reply = create(routed, **fields)
    assert reply.status_code == 422, reply.text
    assert isinstance(reply.json()["detail"], list)  # FastAPI's field errors
    profile = made(create(routed))
    patched = routed.admin.patch(f"/profiles/{profile['id']}", json=fields)
    assert patched.status_code == 422, patched.text


def test_an_update_may_not_null_endpoints_or_tools(routed: Gateway) -> None:
    profile = made(create(routed))
    for field in ("endpoints", "tools"):
        reply = routed.admin.patch(f"/profiles/{profile['id']}", json={field: None})
        assert reply.status_code == 422 and "may be left out but not set to null" in reply.text, reply.text


def test_profile_changes_record_the_new_fields(routed: Gateway) -> None:
    profile = made(create(routed, endpoints=["chat"], tools=[{"server": "docs", "tools": "search_*"}]))
    created = only_event(routed, "policy.created", profile["id"])
    assert created["after"]["endpoints"] == ["chat"]
    assert created["after"]["tools"] == [{"server": "docs", "tools": "search_*"}]
    changed = made(routed.admin.patch(f"/profiles/{profile['id']}", json={
        "endpoints": ["embeddings", "chat", "tools"], "tools": [{"server": "docs", "tools": "*"}],
        "catalog": [{"provider": "openai", "pattern": "gpt-4o", "upstream": "azure"}]}), 200)
    assert changed["endpoints"] == ["chat", "embeddings", "tools"]
    event = only_event(routed, "policy.changed", profile["id"])
    assert event["before"]["endpoints"] == ["chat"] and event["after"]["endpoints"] == ["chat", "embeddings", "tools"]
    assert event["before"]["tools"] == [{"server": "docs", "tools": "search_*"}]
    assert event["after"]["tools"] == [{"server": "docs", "tools": "*"}]
    # An update stores entries as given (environments left out stay out, as they always did).
    assert event["after"]["catalog"] == [{"provider": "openai", "pattern": "gpt-4o", "upstream": "azure"}]
    # Leaving the new fields out keeps them; clearing the tool catalog is an empty list.
    renamed = made(routed.admin.patch(f"/profiles/{profile['id']}", json={"name": _name("renamed")}), 200)
    assert renamed["endpoints"] == changed["endpoints"] and renamed["tools"] == changed["tools"]
    cleared = made(routed.admin.patch(f"/profiles/{profile['id']}", json={"tools": []}), 200)
    assert cleared["tools"] == [] and cleared["endpoints"] == changed["endpoints"]


# -- tokens ----------------------------------------------------------------------------------------------


def team_with(routed: Gateway, endpoints: list[str]) -> tuple[dict, dict]:
    profile = made(create(routed, endpoints=endpoints))
    return profile, routed.team(_name("perm-team"), profile_id=profile["id"])


def mint(routed: Gateway, team: dict, **fields: Any) -> httpx.Response:
    user = routed.user()
    routed.join(user, team)
    return routed.admin.post("/tokens", json={"user_id": user["id"], "team_id": team["id"], "name": "perm",
                                              **fields})


def test_a_token_is_minted_with_the_profiles_families_or_fewer(routed: Gateway) -> None:
    _, team = team_with(routed, ["chat", "embeddings", "models"])
    inherited = made(mint(routed, team))
    assert inherited["endpoints"] is None
    narrowed = made(mint(routed, team, endpoints=["models", "chat"]))
    assert narrowed["endpoints"] == ["chat", "models"]
    issued = only_event(routed, "token.issued", narrowed["id"])
    assert issued["after"]["endpoints"] == ["chat", "models"]
    assert made(routed.admin.get(f"/tokens/{narrowed['id']}"), 200)["endpoints"] == ["chat", "models"]
    body = refused_with(mint(routed, team, endpoints=["chat", "files"]), 422, "endpoint_not_in_profile")
    assert "files" in body["detail"] and "chat" not in body["detail"].split("(")[0]
    for bad in ([], ["chat", "chat"], ["teleport"]):
        assert mint(routed, team, endpoints=bad).status_code == 422


def test_a_live_token_narrows_its_families_and_never_widens_them(routed: Gateway) -> None:
    profile, team = team_with(routed, ["chat", "embeddings", "models"])
    token = made(mint(routed, team))
    # null: the profile's; narrowing is judged against what the token may call now.
    narrowed = made(routed.admin.patch(f"/tokens/{token['id']}", json={"endpoints": ["chat", "embeddings"]}), 200)
    assert narrowed["endpoints"] == ["chat", "embeddings"]
    event = only_event(routed, "token.narrowed", token["id"])
    assert event["before"]["endpoints"] is None and event["after"]["endpoints"] == ["chat", "embeddings"]
    body = refused_with(routed.admin.patch(f"/tokens/{token['id']}", json={"endpoints": ["chat", "models"]}), 422,
                        "widening_requires_new_token")
    assert "models" in body["detail"]
    refused_with(routed.admin.patch(f"/tokens/{token['id']}", json={"endpoints": ["files"]}), 422,
                 "widening_requires_new_token")
    # Null would hand it back whatever the profile allows: not a narrowing.
    assert routed.admin.patch(f"/tokens/{token['id']}", json={"endpoints": None}).status_code == 422
    assert made(routed.admin.get(f"/tokens/{token['id']}"), 200)["endpoints"] == ["chat", "embeddings"]
    # The profile bounds it too: once the profile drops embeddings, the token cannot list it again.
    made(routed.admin.patch(f"/profiles/{profile['id']}", json={"endpoints": ["chat", "models"]}), 200)
    refused_with(routed.admin.patch(f"/tokens/{token['id']}", json={"endpoints": ["embeddings"]}), 422,
                 "widening_requires_new_token")
    assert made(routed.admin.patch(f"/tokens/{token['id']}", json={"endpoints": ["chat"], "purpose": "testing"}),
                200)["endpoints"] == ["chat"]
    # A rotation's successor keeps the narrowing.
    rotated = made(routed.admin.post(f"/tokens/{token['id']}/rotate", json={"grace_hours": 0}), 201)
    assert rotated["new"]["endpoints"] == ["chat"]


def test_the_gateway_applies_a_tokens_narrowing(routed: Gateway) -> None:
    _, team = team_with(routed, ["chat", "embeddings"])
    minted = routed.mint(team=team)

    def embeddings() -> int:
        return routed.http.post("/openai/v1/embeddings", headers={"Authorization": f"Bearer {minted.secret}"},
                                json={"model": "text-embedding-3-small", "input": "hi"}).status_code

    assert embeddings() == 200 and routed.status_of(minted.secret) == 200
    made(routed.admin.patch(f"/tokens/{minted.id}", json={"endpoints": ["chat"]}), 200)
    routed.wait_until(lambda: embeddings() == 403, what="the token's narrowing to reach authz")
    assert routed.status_of(minted.secret) == 200
    # And a profile's: dropping chat from it leaves the token (narrowed to chat) nothing.
    made(routed.admin.patch(f"/profiles/{team['profile_id']}", json={"endpoints": ["embeddings"]}), 200)
    routed.wait_until(lambda: routed.status_of(minted.secret) == 403, what="the profile's narrowing to reach authz")


# -- the CLI and the console ------------------------------------------------------------------------------


def test_the_cli_grants_routes_and_narrows(routed: Gateway) -> None:
    name = _name("cli-perm")
    profile = document(keyward(routed, "profiles", "create", name, "--model", "openai:gpt-4o*@prod=azure",
                               "--model", "anthropic:claude-*", "--environment", "dev", "--environment", "prod",
                               "--endpoints", "chat,embeddings", "--endpoints", "tools", "--tool", "docs:search_*",
                               "--json"))
    assert profile["catalog"] == [
        {"provider": "openai", "pattern": "gpt-4o*", "environments": ["prod"], "upstream": "azure"},
        {"provider": "anthropic", "pattern": "claude-*", "environments": None}]
    assert profile["endpoints"] == ["chat", "embeddings", "tools"]
    assert profile["tools"] == [{"server": "docs", "tools": "search_*"}]
    shown = keyward(routed, "profiles", "show", name)
    assert shown.returncode == 0, shown.stderr
    assert "openai:gpt-4o*@prod=azure" in shown.stdout and "docs:search_*" in shown.stdout
    refused = keyward(routed, "profiles", "update", name, "--tool", "jira:*")
    assert refused.returncode != 0 and "mcp_server_unknown" in refused.stderr + refused.stdout
    updated = document(keyward(routed, "profiles", "update", name, "--endpoints", "chat", "--clear", "tools",
                               "--json"))
    assert updated["endpoints"] == ["chat"] and updated["tools"] == []
    assert keyward(routed, "profiles", "create", _name("x"), "--model", "openai:m", "--environment", "dev",
                   "--endpoints", "chat,teleport").returncode == 2

    team = routed.team(_name("cli-perm-team"), profile_id=profile["id"])
    made(routed.admin.patch(f"/profiles/{profile['id']}", json={"endpoints": ["chat", "embeddings"]}), 200)
    user = routed.user()
    routed.join(user, team)
    token = document(keyward(routed, "tokens", "mint", "--user", user["email"], "--team", team["name"],
                             "--endpoints", "chat,embeddings", "--json"))
    assert token["endpoints"] == ["chat", "embeddings"]
    narrowed = document(keyward(routed, "tokens", "narrow", token["id"], "--endpoints", "chat", "--json"))
    assert narrowed["endpoints"] == ["chat"]
    wider = keyward(routed, "tokens", "narrow", token["id"], "--endpoints", "chat,embeddings")
    assert wider.returncode != 0 and "widening_requires_new_token" in wider.stderr + wider.stdout


def test_the_console_shows_families_upstreams_tools_and_a_tokens_narrowing(routed: Gateway) -> None:
    # "0-…" sorts first, so the profile is on the first page of the teams page's profiles.
    profile = made(create(routed, name=_name("0-console-perm"), endpoints=["chat", "tools"],
                          tools=[{"server": "docs", "tools": "search_*"}],
                          catalog=[{"provider": "openai", "pattern": "gpt-4o", "upstream": "azure"},
                                   {"provider": "openai", "pattern": "gpt-4o-mini"}]))
    team = routed.team(_name("console-perm"), profile_id=profile["id"])
    token = made(mint(routed, team, endpoints=["chat"]))
    link = made(routed.admin.post("/console/links"))["path"]
    with httpx.Client(base_url=routed.info.api_url, follow_redirects=True, timeout=10) as browser:
        assert browser.get(link).status_code == 200
        page = browser.get(f"/console/teams/{team['id']}")
        assert page.status_code == 200, page.text
        html = page.text
        assert "<dd data-endpoints><code>chat</code> <code>tools</code></dd>" in html
        assert '<td data-upstream="azure"><code>azure</code></td>' in html
        assert """<td data-upstream="">the provider's default</td>""" in html
        assert 'data-table="tools"' in html and "<code>docs</code></td><td><code>search_*</code>" in html
        listing = browser.get("/console/teams").text
        assert f'id="profile-{profile["id"]}"' in listing and '<code>azure</code>' in listing
        detail = browser.get(f"/console/tokens/{token['id']}")
        assert detail.status_code == 200, detail.text
        assert 'data-endpoints="chat">narrowed to <code>chat</code>; may call now: <code>chat</code>' in detail.text
        assert "<script" not in html and "<script" not in detail.text
