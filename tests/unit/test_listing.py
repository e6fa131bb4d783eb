"""``GET …/models`` answered by the gateway: exactly the models the token may call through that API, each with
the upstream the Check would send it to, in the API's own shape."""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterator

import genai_prices
import pytest

from authz import prices
from authz.cache import ModelCatalog, ProfileCatalog, TokenRecord
from authz.listing import listing, models_for
from authz.outcomes import Outcome
from authz.pipeline import judge
from authz.request import GatewayRequest
from authz.routes import DEFAULT_FAMILIES, probe
from authz.upstreams import Api, Upstreams

NOW = 1_750_000_000.0
UPSTREAMS = Upstreams.parse(json.dumps([
    {"name": "azure-east", "kind": "azure", "url": "https://east.openai.azure.com"},
    {"name": "vllm", "kind": "openai-compatible", "url": "http://vllm.internal:8000"},
    {"name": "gemini", "kind": "gemini", "url": "https://generativelanguage.googleapis.com"},
    {"name": "mistral", "kind": "mistral", "url": "https://api.mistral.ai"},
]))


@pytest.fixture(autouse=True)
def priced(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Price each upstream under its kind's provider, as authz does at start, and put the old mapping back."""
    monkeypatch.setattr(prices, "_BUNDLED", {})
    monkeypatch.setattr(prices, "_CACHE_APART", set())
    prices.configure(UPSTREAMS)
    yield


def bundled(provider: str, pattern: str) -> set[str]:
    """The bundled price table's models of ``provider`` matching ``pattern``, read here, not through authz."""
    return {model.id for found in genai_prices.data_snapshot.get_snapshot().providers if found.id == provider
            for model in found.models if fnmatch.fnmatchcase(model.id, pattern)}


def token(entries: list, *, models: tuple[str, ...] = ("*",), environment: str = "dev",
          legacy: bool = False) -> TokenRecord:
    profile = None if legacy else ProfileCatalog(entries, ["dev", "prod"])
    return TokenRecord(token_id="tok-1", token_hash="h", user_id="u", user_email="dev@example.com", team="t",
                       environment=environment, catalog=ModelCatalog(models), expires_at=None, owner_active=True,
                       profile=profile)


def listed(record: TokenRecord, api: Api = Api.OPENAI) -> dict[str, str]:
    return dict(models_for(record, api, UPSTREAMS))


def test_exact_names_are_listed_on_their_upstream() -> None:
    record = token([("openai", "gpt-4o", None), ("openai", "llama-3.1-70b", None, "vllm")])
    assert listed(record) == {"gpt-4o": "openai", "llama-3.1-70b": "vllm"}


def test_a_pattern_lists_the_bundled_models_of_its_upstreams_provider() -> None:
    record = token([("openai", "gpt-4o-mini*", None), ("openai", "o3*", None, "azure-east")])
    openai_minis, azure_o3s = bundled("openai", "gpt-4o-mini*"), bundled("azure", "o3*")
    assert "gpt-4o-mini" in openai_minis and "o3-mini" in azure_o3s
    expected = {m: "openai" for m in openai_minis} | {m: "azure-east" for m in azure_o3s}
    assert listed(record) == expected


def test_a_pattern_on_a_self_hosted_server_lists_nothing() -> None:
    # No price table knows a vLLM server's models: only exact entries can name them.
    assert listed(token([("openai", "llama-*", None, "vllm")])) == {}


def test_the_first_entry_offering_a_model_decides_its_upstream() -> None:
    record = token([("openai", "gpt-4o", None, "azure-east"), ("openai", "gpt-4o*", None)])
    models = listed(record)
    assert models["gpt-4o"] == "azure-east" and models["gpt-4o-mini"] == "openai"
    assert [m for m, _ in models_for(record, Api.OPENAI, UPSTREAMS)].count("gpt-4o") == 1


def test_a_model_routed_to_an_upstream_the_gateway_lacks_is_not_listed() -> None:
    record = token([("openai", "gpt-4o", None, "azure-west"), ("openai", "gpt-4o*", None)])
    models = listed(record)
    assert "gpt-4o" not in models and "gpt-4o-mini" in models


def test_only_upstreams_serving_the_api_are_listed() -> None:
    record = token([("*", "claude-3-5-haiku-latest", None, "anthropic"), ("*", "mistral-large-latest", None)])
    assert listed(record, Api.OPENAI) == {"mistral-large-latest": "openai"}
    # An entry for every API ("*") offers its model through the Anthropic API too, as the Check would.
    assert listed(record, Api.ANTHROPIC) == {"claude-3-5-haiku-latest": "anthropic",
                                             "mistral-large-latest": "anthropic"}
    assert listed(record, Api.MISTRAL) == {"mistral-large-latest": "mistral"}


def test_each_api_lists_its_own_entries() -> None:
    record = token([("openai", "gpt-4o", None), ("anthropic", "claude-3-5-haiku-latest", None),
                    ("gemini", "gemini-2.0-*", None)])
    assert listed(record, Api.OPENAI) == {"gpt-4o": "openai"}
    assert listed(record, Api.ANTHROPIC) == {"claude-3-5-haiku-latest": "anthropic"}
    gemini = bundled("google", "gemini-2.0-*")
    assert "gemini-2.0-flash" in gemini and listed(record, Api.GEMINI) == {m: "gemini" for m in gemini}


def test_a_listing_is_per_environment() -> None:
    entries = [("openai", "gpt-4o", None), ("openai", "o3-mini", ("prod",))]
    assert listed(token(entries, environment="dev")) == {"gpt-4o": "openai"}
    assert listed(token(entries, environment="prod")) == {"gpt-4o": "openai", "o3-mini": "openai"}


def test_the_tokens_own_list_narrows_the_listing() -> None:
    record = token([("openai", "gpt-4o*", None)], models=("gpt-4o", "o1"))
    assert listed(record) == {"gpt-4o": "openai"}


def test_a_token_from_before_teams_lists_its_own_list_on_the_default_upstream() -> None:
    record = token([], models=("gpt-4o-mini*", "my-model"), legacy=True)
    assert listed(record) == {m: "openai" for m in bundled("openai", "gpt-4o-mini*") | {"my-model"}}
    assert listed(record, Api.GEMINI) == {"my-model": "gemini"}


@pytest.mark.parametrize("api", [Api.OPENAI, Api.ANTHROPIC, Api.GEMINI, Api.MISTRAL, Api.AZURE],
                         ids=lambda api: api.value)
def test_every_listed_model_is_one_the_check_allows_on_the_listed_upstream(api: Api) -> None:
    """The listing and the Check never disagree: each model listed is allowed and routed where the listing says;
    each bundled model left out is refused."""
    record = token([("openai", "gpt-4o", None, "azure-east"), ("*", "gpt-4o*", None), ("openai", "o3*", ("prod",)),
                    ("gemini", "gemini-2.0-*", None), ("*", "claude-3-5-*", None),
                    ("mistral", "mistral-large*", None), ("azure", "o1*", None)],
                   models=("gpt-*", "claude-3-5-haiku*", "gemini-*", "mistral-*", "o1*", "o3*"))
    models = dict(models_for(record, api, UPSTREAMS))
    assert models
    provider = {Api.OPENAI: "openai", Api.ANTHROPIC: "anthropic", Api.GEMINI: "google", Api.MISTRAL: "mistral",
                Api.AZURE: "azure"}[api]
    for model in models.keys() | bundled(provider, "*"):
        method, path, body = probe(api, DEFAULT_FAMILIES, model)  # type: ignore[misc]
        request = GatewayRequest("r", method, path, None, False, "application/json", body, False)
        decision = judge(record, request, NOW, UPSTREAMS)
        if model in models:
            assert decision.outcome is Outcome.ALLOWED, model
            assert decision.upstream == models[model], model
        else:
            assert decision.outcome is not Outcome.ALLOWED, model


# -- shapes ---------------------------------------------------------------------------------------


def test_the_openai_shape() -> None:
    record = token([("openai", "gpt-4o", None, "azure-east"), ("openai", "llama-3.1-70b", None, "vllm")])
    assert json.loads(listing(record, Api.OPENAI, UPSTREAMS)) == {"object": "list", "data": [
        {"id": "gpt-4o", "object": "model", "created": 0, "owned_by": "azure-east"},
        {"id": "llama-3.1-70b", "object": "model", "created": 0, "owned_by": "vllm"}]}


def test_the_mistral_api_lists_in_the_openai_shape() -> None:
    document = json.loads(listing(token([("mistral", "mistral-large-latest", None)]), Api.MISTRAL, UPSTREAMS))
    assert document["object"] == "list" and document["data"][0]["owned_by"] == "mistral"


def test_the_anthropic_shape() -> None:
    record = token([("anthropic", "claude-3-5-haiku-latest", None), ("anthropic", "claude-3-opus-latest", None)])
    assert json.loads(listing(record, Api.ANTHROPIC, UPSTREAMS)) == {
        "data": [{"type": "model", "id": m, "display_name": m, "created_at": "1970-01-01T00:00:00Z"}
                 for m in ("claude-3-5-haiku-latest", "claude-3-opus-latest")],
        "has_more": False, "first_id": "claude-3-5-haiku-latest", "last_id": "claude-3-opus-latest"}


def test_the_gemini_shape() -> None:
    document = json.loads(listing(token([("gemini", "gemini-2.0-flash", None)]), Api.GEMINI, UPSTREAMS))
    assert document == {"models": [{"name": "models/gemini-2.0-flash", "baseModelId": "gemini-2.0-flash",
                                    "displayName": "gemini-2.0-flash",
                                    "supportedGenerationMethods": ["generateContent", "countTokens", "embedContent"]}]}


@pytest.mark.parametrize("api", [Api.OPENAI, Api.ANTHROPIC, Api.GEMINI], ids=lambda api: api.value)
def test_nothing_to_list_is_an_empty_list(api: Api) -> None:
    document = json.loads(listing(token([("openai", "gpt-4o", ("prod",))]), api, UPSTREAMS))
    assert (document.get("data") if api is not Api.GEMINI else document["models"]) == []
