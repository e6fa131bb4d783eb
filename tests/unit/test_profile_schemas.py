"""Endpoint permissions, catalog upstreams and the MCP tool catalog as the control plane takes them: the
schemas (what a request may say), the profile service's checks against the configured upstreams (what it
may name), the settings that hold those upstreams, and the CLI's syntax for all of it."""

from __future__ import annotations

import json
import secrets
from typing import Any, get_args

import pytest
import typer
from pydantic import ValidationError

from authz.routes import DEFAULT_FAMILIES, Family
from authz.upstreams import NAME, Api, Upstreams
from controlplane import schemas
from controlplane.audit import signing
from controlplane.cli import vocabulary
from controlplane.cli.output import Exit
from controlplane.core.config import Settings
from controlplane.errors import Code, Invalid
from controlplane.services.profiles import check_catalog, check_tools

UPSTREAMS = Upstreams.parse(json.dumps([
    {"name": "azure-east", "kind": "azure", "url": "https://east.openai.azure.com"},
    {"name": "vllm", "kind": "openai-compatible", "url": "http://vllm.internal:8000"},
    {"name": "gemini", "kind": "gemini", "url": "https://generativelanguage.googleapis.com"},
    {"name": "la-plateforme", "kind": "mistral", "url": "https://api.mistral.ai"},
    {"name": "bedrock-us", "kind": "bedrock", "url": "https://bedrock-runtime.us-east-1.amazonaws.com",
     "region": "us-east-1"},
    {"name": "docs", "kind": "mcp", "url": "https://mcp.internal/docs"},
]))


def profile(**fields: Any) -> schemas.ProfileCreate:
    return schemas.ProfileCreate.model_validate({"name": "p", "catalog": [], "environments": ["dev"], **fields})


def entries(*catalog: dict[str, Any]) -> list[schemas.CatalogEntry]:
    return [schemas.CatalogEntry.model_validate(entry) for entry in catalog]


def refusal(call: Any) -> Invalid:
    with pytest.raises(Invalid) as caught:
        call()
    return caught.value


# -- catalog entries ----------------------------------------------------------------------------------


def test_a_catalog_entry_applies_to_every_model_api_or_all_of_them_and_never_to_mcp() -> None:
    assert get_args(schemas.Provider) == (*(api.value for api in Api if api is not Api.MCP), "*")
    for provider in get_args(schemas.Provider):
        assert schemas.CatalogEntry(provider=provider, pattern="m").provider == provider
    with pytest.raises(ValidationError):
        schemas.CatalogEntry.model_validate({"provider": "mcp", "pattern": "search_*"})


def test_an_entry_without_an_upstream_keeps_its_old_shape_and_one_with_it_carries_it() -> None:
    plain, routed = entries({"provider": "openai", "pattern": "gpt-4o*"},
                            {"provider": "openai", "pattern": "gpt-4o", "environments": ["prod"],
                             "upstream": "azure-east"})
    assert plain.model_dump(mode="json") == {"provider": "openai", "pattern": "gpt-4o*", "environments": None}
    assert routed.model_dump(mode="json") == {"provider": "openai", "pattern": "gpt-4o", "environments": ["prod"],
                                              "upstream": "azure-east"}
    # What the service stores is the profile's dump: the same shapes inside it.
    stored = profile(catalog=[plain, routed]).model_dump(mode="json")["catalog"]
    assert stored == [plain.model_dump(mode="json"), routed.model_dump(mode="json")]


@pytest.mark.parametrize("name", ["Azure", "a", "-azure", "azure-", "azure_east", "a" * 33, "", "azure\n"])
def test_an_upstream_is_named_as_the_gateway_names_them(name: str) -> None:
    assert not NAME.match(name)
    with pytest.raises(ValidationError):
        schemas.CatalogEntry.model_validate({"provider": "openai", "pattern": "m", "upstream": name})
    with pytest.raises(ValidationError):
        schemas.ToolEntry.model_validate({"server": name, "tools": "*"})


@pytest.mark.parametrize("name", ["ab", "azure-east", "a" * 32, "vllm-2", "docs"])
def test_every_name_the_gateway_takes_the_schemas_take(name: str) -> None:
    assert NAME.match(name)
    assert schemas.CatalogEntry(provider="openai", pattern="m", upstream=name).upstream == name
    assert schemas.ToolEntry(server=name, tools="*").server == name


# -- endpoint families --------------------------------------------------------------------------------


def test_a_new_profile_allows_every_family_that_acts_on_one_model_unless_told() -> None:
    default = profile().model_dump(mode="json")["endpoints"]
    assert default == sorted(f.value for f in DEFAULT_FAMILIES)
    assert not {"files", "batches", "tools"} & set(default)
    assert profile(endpoints=["tools", "chat"]).endpoints == [Family.TOOLS, Family.CHAT]
    assert schemas.family_values([Family.TOOLS, Family.CHAT]) == ["chat", "tools"]


@pytest.mark.parametrize("endpoints", [[], ["chat", "chat"], ["teleport"], ["CHAT"], "chat", None])
def test_a_profiles_families_are_known_unique_and_at_least_one(endpoints: Any) -> None:
    with pytest.raises(ValidationError):
        profile(endpoints=endpoints)
    with pytest.raises(ValidationError):
        schemas.ProfileUpdate.model_validate({"endpoints": endpoints})


def test_a_repeated_family_is_named_in_the_error() -> None:
    with pytest.raises(ValidationError, match="embeddings given more than once"):
        profile(endpoints=["chat", "embeddings", "embeddings"])


def test_an_update_may_leave_endpoints_and_tools_out_but_not_null_them() -> None:
    assert schemas.ProfileUpdate.model_validate({"name": "q"}).model_dump(exclude_unset=True) == {"name": "q"}
    for field in ("endpoints", "tools"):
        with pytest.raises(ValidationError, match="may be left out but not set to null"):
            schemas.ProfileUpdate.model_validate({field: None})
    cleared = schemas.ProfileUpdate.model_validate({"tools": [], "endpoints": ["files"]})
    assert cleared.tools == [] and cleared.endpoints == [Family.FILES]


def test_tokens_narrow_families_only_by_listing_them() -> None:
    base = {"user_id": "00000000-0000-0000-0000-000000000001", "name": "t"}
    assert schemas.TokenCreate.model_validate(base).endpoints is None
    assert schemas.TokenCreate.model_validate({**base, "endpoints": ["chat"]}).endpoints == [Family.CHAT]
    for bad in ([], ["chat", "chat"], ["teleport"]):
        with pytest.raises(ValidationError):
            schemas.TokenCreate.model_validate({**base, "endpoints": bad})
    assert schemas.TokenNarrow.model_validate({"endpoints": ["embeddings"]}).endpoints == [Family.EMBEDDINGS]
    # Null would mean "the profile's, whatever they become": a widening, refused by the schema.
    for model in (schemas.TokenNarrow, schemas.TokenUpdate):
        with pytest.raises(ValidationError, match="may be left out but not set to null"):
            model.model_validate({"endpoints": None})
    assert "endpoints" not in schemas.TokenUpdate.model_validate({"purpose": None}).model_fields_set


# -- the MCP tool catalog ----------------------------------------------------------------------------


def test_tool_entries_name_a_server_and_a_tool_pattern() -> None:
    made = profile(tools=[{"server": "docs", "tools": "search_*"}, {"server": "docs", "tools": "add"}])
    assert made.model_dump(mode="json")["tools"] == [{"server": "docs", "tools": "search_*"},
                                                     {"server": "docs", "tools": "add"}]
    for bad in ({"server": "docs"}, {"server": "docs", "tools": ""}, {"server": "docs", "tools": "a b"},
                {"server": "docs", "tools": "*", "extra": 1}):
        with pytest.raises(ValidationError):
            profile(tools=[bad])
    many = [{"server": "docs", "tools": f"t{i}"} for i in range(schemas.identities.MAX_TOOL_ENTRIES + 1)]
    with pytest.raises(ValidationError):
        profile(tools=many)
    assert len(profile(tools=many[:-1]).tools) == schemas.identities.MAX_TOOL_ENTRIES


def test_the_schema_says_tools_need_the_tools_family() -> None:
    described = schemas.ProfileCreate.model_json_schema()["properties"]["tools"]["description"]
    assert "'tools' endpoint family" in described


# -- what the profile service checks against the configured upstreams ---------------------------------


@pytest.mark.parametrize(("provider", "upstream"), [
    ("openai", "openai"), ("openai", "azure-east"), ("azure", "azure-east"), ("openai", "vllm"),
    ("gemini", "gemini"), ("mistral", "la-plateforme"), ("openai", "la-plateforme"), ("bedrock", "bedrock-us"),
    ("anthropic", "anthropic"), ("*", "azure-east"), ("*", "vllm"),
])
def test_an_entry_may_name_an_upstream_that_serves_its_api(provider: str, upstream: str) -> None:
    check_catalog(entries({"provider": provider, "pattern": "m", "upstream": upstream}), UPSTREAMS)


@pytest.mark.parametrize(("provider", "upstream"), [
    ("anthropic", "azure-east"), ("gemini", "vllm"), ("openai", "gemini"), ("openai", "bedrock-us"),
    ("azure", "openai"), ("mistral", "vllm"), ("openai", "docs"), ("*", "docs"),
])
def test_an_entry_may_not_name_an_upstream_that_does_not_serve_its_api(provider: str, upstream: str) -> None:
    refused = refusal(lambda: check_catalog(
        entries({"provider": "openai", "pattern": "ok"}, {"provider": provider, "pattern": "m", "upstream": upstream}),
        UPSTREAMS))
    assert refused.code is Code.UPSTREAM_WRONG_API and refused.status_code == 422
    assert refused.message.startswith("catalog[1] ") and upstream in refused.message


def test_an_entry_may_not_name_an_upstream_the_gateway_does_not_have() -> None:
    refused = refusal(lambda: check_catalog(entries({"provider": "openai", "pattern": "m", "upstream": "azure-west"}),
                                            UPSTREAMS))
    assert refused.code is Code.UPSTREAM_UNKNOWN and "azure-west" in refused.message
    assert "azure-east" in refused.message  # says what is configured
    # Without KEYWARD_UPSTREAMS only the built-in two exist.
    bare = Upstreams.parse(None)
    check_catalog(entries({"provider": "anthropic", "pattern": "claude-*", "upstream": "anthropic"}), bare)
    assert refusal(lambda: check_catalog(entries({"provider": "openai", "pattern": "m", "upstream": "azure-east"}),
                                         bare)).code is Code.UPSTREAM_UNKNOWN


def test_entries_without_an_upstream_need_nothing_configured() -> None:
    check_catalog(entries({"provider": "gemini", "pattern": "gemini-*"}, {"provider": "*", "pattern": "*"}),
                  Upstreams.parse(None))


def test_tool_entries_must_name_a_configured_mcp_server() -> None:
    check_tools([schemas.ToolEntry(server="docs", tools="*")], UPSTREAMS)
    for server in ("jira", "azure-east", "openai"):
        refused = refusal(lambda server=server: check_tools(
            [schemas.ToolEntry(server="docs", tools="*"), schemas.ToolEntry(server=server, tools="*")], UPSTREAMS))
        assert refused.code is Code.MCP_SERVER_UNKNOWN and refused.message.startswith("tools[1] ")
        assert "MCP servers: docs" in refused.message
    assert "MCP servers: none" in refusal(lambda: check_tools(
        [schemas.ToolEntry(server="docs", tools="*")], Upstreams.parse(None))).message


# -- settings ----------------------------------------------------------------------------------------


def settings(**fields: Any) -> Settings:
    return Settings(database_url="postgresql://k@127.0.0.1/k", admin_token="a" * 32,
                    token_hash_key=secrets.token_hex(32), audit_signing_key=signing.new_private_key(), **fields)


def test_the_control_plane_reads_the_upstreams_authz_and_envoy_get(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KEYWARD_UPSTREAMS", "KEYWARD_ENVIRONMENT"):
        monkeypatch.delenv(name, raising=False)
    assert settings().upstream_list.names() == ["openai", "anthropic"]
    configured = json.dumps([{"name": "docs", "kind": "mcp", "url": "https://mcp.internal/docs"}])
    monkeypatch.setenv("KEYWARD_UPSTREAMS", configured)
    assert settings().upstream_list.mcp("docs") is not None
    for bad in ("not json", '[{"name": "x", "kind": "azure", "url": "https://x"}]',
                '[{"name": "docs", "kind": "mcp", "url": "https://m", "key": "sk-1"}]'):
        with pytest.raises(ValidationError, match="KEYWARD_UPSTREAMS"):
            settings(upstreams=bad)


# -- the CLI's syntax --------------------------------------------------------------------------------


def test_the_cli_knows_the_apis_words() -> None:
    assert vocabulary.PROVIDERS == get_args(schemas.Provider)
    assert vocabulary.FAMILIES == tuple(f.value for f in Family)


@pytest.mark.parametrize(("spec", "entry"), [
    ("openai:gpt-4o*", {"provider": "openai", "pattern": "gpt-4o*"}),
    ("openai:gpt-4o=azure-east", {"provider": "openai", "pattern": "gpt-4o", "upstream": "azure-east"}),
    ("openai:gpt-4o*@prod,ci=azure-east", {"provider": "openai", "pattern": "gpt-4o*", "environments": ["prod", "ci"],
                                           "upstream": "azure-east"}),
    ("bedrock:anthropic.claude-3-haiku-20240307-v1:0", {"provider": "bedrock",
                                                        "pattern": "anthropic.claude-3-haiku-20240307-v1:0"}),
    ("*:llama-*@dev=vllm", {"provider": "*", "pattern": "llama-*", "environments": ["dev"], "upstream": "vllm"}),
    ("openai:ft:gpt-4o:acme@2024=azure-east", {"provider": "openai", "pattern": "ft:gpt-4o:acme@2024",
                                               "upstream": "azure-east"}),
])
def test_catalog_entries_round_trip_through_the_cli_syntax(spec: str, entry: dict[str, Any]) -> None:
    assert vocabulary.parse_model(spec) == entry
    assert vocabulary.model_spec(entry) == spec
    schemas.CatalogEntry.model_validate(entry)  # what the CLI sends, the API takes


@pytest.mark.parametrize("spec", ["openai:gpt-4o=", "mcp:search_*", "openai:", "gpt-4o", "openai:=azure-east"])
def test_a_malformed_catalog_entry_is_a_usage_error(spec: str) -> None:
    with pytest.raises(typer.Exit) as exited:
        vocabulary.parse_model(spec)
    assert exited.value.exit_code == Exit.USAGE


def test_tools_and_endpoints_in_the_cli_syntax() -> None:
    assert vocabulary.parse_tool("docs:search_*") == {"server": "docs", "tools": "search_*"}
    assert vocabulary.tool_spec({"server": "docs", "tools": "search_*"}) == "docs:search_*"
    assert vocabulary.parse_endpoints(["chat, embeddings", "tools,chat"]) == ["chat", "embeddings", "tools"]
    assert vocabulary.parse_endpoints(None) is None and vocabulary.parse_endpoints([]) is None
    for bad_tool in ("docs", ":x", "docs:"):
        with pytest.raises(typer.Exit):
            vocabulary.parse_tool(bad_tool)
    for bad_endpoints in (["chat,teleport"], [","], ["Chat"]):
        with pytest.raises(typer.Exit):
            vocabulary.parse_endpoints(bad_endpoints)
