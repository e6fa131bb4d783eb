"""The configured upstreams: parsing ``KEYWARD_UPSTREAMS``, which upstream serves an API by default, and the
tables that say where each kind's requests and keys go."""

from __future__ import annotations

import doctest
import json

import pytest

import authz.upstreams
from authz.routes import SERVED, api_of
from authz.upstreams import (
    KEY_HEADERS,
    PREFIXES,
    PRICE_PROVIDERS,
    SERVES,
    UPSTREAM_PATHS,
    Api,
    Kind,
    Upstream,
    Upstreams,
    key_variable,
)

AZURE = {"name": "azure-east", "kind": "azure", "url": "https://east.openai.azure.com"}
BEDROCK = {"name": "bedrock-us", "kind": "bedrock", "url": "https://bedrock-runtime.us-east-1.amazonaws.com",
           "region": "us-east-1"}
MISTRAL = {"name": "mistral", "kind": "mistral", "url": "https://api.mistral.ai"}
VLLM = {"name": "vllm", "kind": "openai-compatible", "url": "http://vllm.internal:8000/proxy/"}
GEMINI = {"name": "gemini", "kind": "gemini", "url": "https://generativelanguage.googleapis.com"}
GEMINI_OPENAI = {"name": "gemini-compat", "kind": "gemini-openai", "url": "https://generativelanguage.googleapis.com"}
DOCS = {"name": "docs", "kind": "mcp", "url": "https://mcp.example.com/docs/mcp"}


def parse(*entries: dict) -> Upstreams:
    return Upstreams.parse(json.dumps(list(entries)))


def test_the_doctests_hold() -> None:
    assert doctest.testmod(authz.upstreams).failed == 0


@pytest.mark.parametrize("text", [None, "", "  \n", "[]"])
def test_without_a_list_only_the_two_builtins_exist(text: str | None) -> None:
    upstreams = Upstreams.parse(text)
    assert upstreams.all == (Upstream("openai", Kind.OPENAI, "https://api.openai.com"),
                             Upstream("anthropic", Kind.ANTHROPIC, "https://api.anthropic.com"))
    assert upstreams.default(Api.OPENAI).name == "openai"  # type: ignore[union-attr]
    assert upstreams.default(Api.ANTHROPIC).name == "anthropic"  # type: ignore[union-attr]
    assert [api for api in Api if upstreams.default(api) is not None] == [Api.OPENAI, Api.ANTHROPIC]


def test_the_builtins_take_their_urls_from_their_own_settings() -> None:
    upstreams = Upstreams.parse(json.dumps([AZURE]), openai_url="http://mock:9000/", anthropic_url="http://mock:9001")
    assert upstreams.get("openai").url == "http://mock:9000"  # type: ignore[union-attr]
    assert upstreams.get("anthropic").url == "http://mock:9001"  # type: ignore[union-attr]


def test_entries_are_kept_in_order_after_the_builtins() -> None:
    upstreams = parse(AZURE, BEDROCK, VLLM, DOCS)
    assert upstreams.names() == ["openai", "anthropic", "azure-east", "bedrock-us", "vllm", "docs"]
    assert upstreams.get("bedrock-us") == Upstream("bedrock-us", Kind.BEDROCK, BEDROCK["url"], "us-east-1")
    assert upstreams.get("vllm").url == "http://vllm.internal:8000/proxy"  # type: ignore[union-attr]
    assert upstreams.get("nowhere") is None


def test_an_api_goes_to_its_own_kind_by_default_whatever_the_order() -> None:
    upstreams = parse(VLLM, GEMINI_OPENAI, AZURE, MISTRAL, GEMINI, BEDROCK, DOCS)
    defaults = {api: upstreams.default(api) for api in Api}
    assert {api: u.name if u else None for api, u in defaults.items()} == {
        Api.OPENAI: "openai",  # not vllm, which comes first but speaks the OpenAI API as a guest
        Api.ANTHROPIC: "anthropic",
        Api.AZURE: "azure-east",
        Api.GEMINI: "gemini",
        Api.BEDROCK: "bedrock-us",
        Api.MISTRAL: "mistral",
        Api.MCP: None,  # an MCP request always names its server
    }
    assert [u.name for u in upstreams.serving(Api.OPENAI)] == ["openai", "vllm", "gemini-compat", "azure-east",
                                                                "mistral"]


def test_the_first_of_a_kind_is_its_apis_default() -> None:
    second = {**AZURE, "name": "azure-west", "url": "https://west.openai.azure.com"}
    assert parse(AZURE, second).default(Api.AZURE).name == "azure-east"  # type: ignore[union-attr]
    assert parse(second, AZURE).default(Api.AZURE).name == "azure-west"  # type: ignore[union-attr]


def test_an_api_no_upstream_serves_has_no_default() -> None:
    upstreams = parse(AZURE)
    assert upstreams.default(Api.GEMINI) is None and upstreams.serving(Api.BEDROCK) == []


def test_mcp_finds_only_mcp_servers() -> None:
    upstreams = parse(AZURE, DOCS)
    assert upstreams.mcp("docs") == Upstream("docs", Kind.MCP, DOCS["url"])
    assert upstreams.mcp("azure-east") is None and upstreams.mcp("openai") is None and upstreams.mcp("jira") is None


def _refused(entries: object) -> str:
    with pytest.raises(ValueError) as refused:
        Upstreams.parse(json.dumps(entries))
    return str(refused.value)


@pytest.mark.parametrize(
    ("entries", "says"),
    [
        pytest.param({"name": "x"}, "JSON list", id="an-object"),
        pytest.param(None, "JSON list", id="null"),
        pytest.param(["azure-east"], "[0] must be an object", id="a-string-entry"),
        pytest.param([{**AZURE, "key": "sk-123"}], "unknown fields: key", id="a-key"),
        pytest.param([{**AZURE, "api_key": "x", "headers": {}}], "api_key, headers", id="unknown-fields"),
        pytest.param([{**AZURE, "name": "a"}], ".name", id="name-too-short"),
        pytest.param([{**AZURE, "name": "a" * 33}], ".name", id="name-too-long"),
        pytest.param([{**AZURE, "name": "Azure"}], ".name", id="name-upper-case"),
        pytest.param([{**AZURE, "name": "azure_east"}], ".name", id="name-underscore"),
        pytest.param([{**AZURE, "name": "1azure"}], ".name", id="name-starts-with-a-digit"),
        pytest.param([{**AZURE, "name": "azure-"}], ".name", id="name-ends-with-a-dash"),
        pytest.param([{**AZURE, "name": "azure-east\n"}], ".name", id="name-with-a-final-newline"),
        pytest.param([{**AZURE, "name": 7}], ".name", id="name-not-a-string"),
        pytest.param([{**AZURE, "kind": "azure-openai"}], ".kind must be one of", id="unknown-kind"),
        pytest.param([{**AZURE, "kind": None}], ".kind must be one of", id="no-kind"),
        pytest.param([{**AZURE, "url": "ftp://east.openai.azure.com"}], ".url", id="url-scheme"),
        pytest.param([{**AZURE, "url": "https://"}], ".url", id="url-without-host"),
        pytest.param([{**AZURE, "url": "https://u:p@east.openai.azure.com"}], ".url", id="url-credentials"),
        pytest.param([{**AZURE, "url": "https://east.openai.azure.com?api-key=x"}], ".url", id="url-query"),
        pytest.param([{**AZURE, "url": "https://east.openai.azure.com#x"}], ".url", id="url-fragment"),
        pytest.param([{**AZURE, "url": None}], ".url", id="no-url"),
        pytest.param([{**BEDROCK, "region": None}], ".region must be an AWS region", id="bedrock-without-region"),
        pytest.param([{**BEDROCK, "region": "US-EAST-1"}], ".region must be an AWS region", id="region-upper-case"),
        pytest.param([{**BEDROCK, "region": "us-east-1\n"}], ".region must be an AWS region", id="region-newline"),
        pytest.param([{**BEDROCK, "region": "useast1"}], ".region must be an AWS region", id="region-shape"),
        pytest.param([{**AZURE, "region": "us-east-1"}], "region applies to bedrock only", id="region-elsewhere"),
        pytest.param([AZURE, {**AZURE, "url": "https://other.openai.azure.com"}], "names an upstream twice",
                     id="a-name-twice"),
        pytest.param([{**AZURE, "name": "openai"}], "cannot redefine openai", id="redefines-openai"),
        pytest.param([{**AZURE, "name": "anthropic", "kind": "anthropic"}], "cannot redefine anthropic",
                     id="redefines-anthropic"),
    ],
)
def test_a_list_that_is_not_valid_is_refused_with_a_reason(entries: object, says: str) -> None:
    assert says in _refused(entries)


def test_text_that_is_not_json_is_refused() -> None:
    with pytest.raises(ValueError, match="JSON list"):
        Upstreams.parse("[{name: azure}]")


def test_the_error_points_at_the_entry() -> None:
    assert _refused([AZURE, {**MISTRAL, "kind": "nope"}]).startswith("KEYWARD_UPSTREAMS[1].kind")


@pytest.mark.parametrize("region", ["us-east-1", "eu-central-1", "ap-southeast-2", "us-gov-west-1"])
def test_aws_regions(region: str) -> None:
    assert parse({**BEDROCK, "region": region}).get("bedrock-us").region == region  # type: ignore[union-attr]


@pytest.mark.parametrize("name", ["ab", "a" * 32, "azure-east-2", "a1"])
def test_names_at_the_bounds(name: str) -> None:
    assert parse({**AZURE, "name": name}).get(name) is not None


# -- the tables ------------------------------------------------------------------------------------


def test_each_kind_has_a_path_for_exactly_the_apis_it_serves_its_own_first() -> None:
    for kind in Kind:
        assert set(UPSTREAM_PATHS[kind]) == set(SERVES[kind]), kind
    assert {kind: SERVES[kind][0] for kind in (Kind.OPENAI, Kind.ANTHROPIC, Kind.AZURE, Kind.GEMINI, Kind.BEDROCK,
                                               Kind.MISTRAL, Kind.MCP)} == {
        Kind.OPENAI: Api.OPENAI, Kind.ANTHROPIC: Api.ANTHROPIC, Kind.AZURE: Api.AZURE, Kind.GEMINI: Api.GEMINI,
        Kind.BEDROCK: Api.BEDROCK, Kind.MISTRAL: Api.MISTRAL, Kind.MCP: Api.MCP}


@pytest.mark.parametrize(
    ("kind", "api", "gateway_path", "upstream_path"),
    [
        (Kind.OPENAI, Api.OPENAI, "/openai/v1/chat/completions", "/v1/chat/completions"),
        (Kind.ANTHROPIC, Api.ANTHROPIC, "/anthropic/v1/messages", "/v1/messages"),
        (Kind.AZURE, Api.AZURE, "/azure/openai/deployments/gpt-4o/chat/completions",
         "/openai/deployments/gpt-4o/chat/completions"),
        (Kind.AZURE, Api.OPENAI, "/openai/v1/chat/completions", "/openai/v1/chat/completions"),
        (Kind.GEMINI, Api.GEMINI, "/gemini/v1beta/models/gemini-2.0-flash:generateContent",
         "/v1beta/models/gemini-2.0-flash:generateContent"),
        (Kind.GEMINI_OPENAI, Api.OPENAI, "/openai/v1/chat/completions", "/v1beta/openai/chat/completions"),
        (Kind.BEDROCK, Api.BEDROCK, "/bedrock/model/x/converse", "/model/x/converse"),
        (Kind.MISTRAL, Api.MISTRAL, "/mistral/v1/fim/completions", "/v1/fim/completions"),
        (Kind.MISTRAL, Api.OPENAI, "/openai/v1/embeddings", "/v1/embeddings"),
        (Kind.OPENAI_COMPATIBLE, Api.OPENAI, "/openai/v1/completions", "/v1/completions"),
        (Kind.MCP, Api.MCP, "/mcp/docs", ""),
    ],
)
def test_where_a_gateway_path_lands_at_each_kind(kind: Kind, api: Api, gateway_path: str, upstream_path: str) -> None:
    prefix = PREFIXES[api]
    assert gateway_path.startswith(prefix)
    rest = gateway_path[len(prefix):]
    # An MCP server's URL is its whole endpoint: the server's name in the gateway path goes nowhere.
    assert (UPSTREAM_PATHS[kind][api] + rest if kind is not Kind.MCP else UPSTREAM_PATHS[kind][api]) == upstream_path


def test_prefixes_are_disjoint_so_a_path_has_one_api() -> None:
    for api, prefix in PREFIXES.items():
        assert prefix.startswith("/") and prefix.endswith("/")
        assert not [other for other, p in PREFIXES.items() if other is not api and p.startswith(prefix)]
        assert api_of(prefix + "x") is api
    assert {api for api, *_ in SERVED} == set(Api)


def test_keys_and_prices_are_known_for_every_kind() -> None:
    assert set(KEY_HEADERS) == set(Kind) and set(PRICE_PROVIDERS) == set(Kind)
    assert KEY_HEADERS[Kind.BEDROCK] is None  # signed by Envoy, no key header
    assert KEY_HEADERS[Kind.AZURE] == ("api-key", "{key}")
    assert KEY_HEADERS[Kind.GEMINI] == ("x-goog-api-key", "{key}")
    assert KEY_HEADERS[Kind.ANTHROPIC] == ("x-api-key", "{key}")
    assert all(value == ("Authorization", "Bearer {key}") for kind, value in KEY_HEADERS.items()
               if kind not in (Kind.BEDROCK, Kind.AZURE, Kind.GEMINI, Kind.ANTHROPIC))
    assert PRICE_PROVIDERS[Kind.OPENAI_COMPATIBLE] is None and PRICE_PROVIDERS[Kind.GEMINI_OPENAI] == "google"


@pytest.mark.parametrize(("name", "variable"), [("azure-east", "KEYWARD_UPSTREAM_KEY_AZURE_EAST"),
                                                ("vllm", "KEYWARD_UPSTREAM_KEY_VLLM"),
                                                ("a-b-c9", "KEYWARD_UPSTREAM_KEY_A_B_C9")])
def test_key_variable(name: str, variable: str) -> None:
    assert key_variable(name) == variable
