"""The endpoint allowlist: what is served in which API and family, where the model comes from, and what is refused."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest

from authz.routes import (
    DEFAULT_FAMILIES,
    LEGACY_FAMILIES,
    MAX_NAME_CHARS,
    SERVED,
    Api,
    Endpoint,
    Family,
    Match,
    ModelSource,
    api_of,
    family_of_target,
    match,
    probe,
)

F, S = Family, ModelSource
MB = 1024 * 1024
#: The largest upload of each family, as the providers document them (written out, not imported).
UPLOADS = {F.AUDIO: 25 * MB, F.IMAGES: 50 * MB, F.FILES: 512 * MB}

# The whole allowlist, written out independently of the implementation's tables: (method, path template after
# the API's prefix, family, model source, flags). Flags: "usage" (an OpenAI stream that reports usage only when
# asked), "free", "listing", "upload".
OPENAI = [
    ("POST", "chat/completions", F.CHAT, S.BODY, "usage"),
    ("POST", "completions", F.COMPLETIONS, S.BODY, "usage"),
    ("POST", "responses", F.RESPONSES, S.BODY, ""),  # reports usage in its stream unasked
    ("GET", "responses/{id}", F.RESPONSES, S.NONE, "free"),
    ("DELETE", "responses/{id}", F.RESPONSES, S.NONE, "free"),
    ("GET", "responses/{id}/input_items", F.RESPONSES, S.NONE, "free"),
    ("POST", "responses/{id}/cancel", F.RESPONSES, S.NONE, "free"),
    ("POST", "embeddings", F.EMBEDDINGS, S.BODY, ""),
    ("POST", "moderations", F.MODERATIONS, S.BODY, "free"),
    ("POST", "images/generations", F.IMAGES, S.BODY, ""),
    ("POST", "images/edits", F.IMAGES, S.FORM, "upload"),
    ("POST", "images/variations", F.IMAGES, S.FORM, "upload"),
    ("POST", "audio/transcriptions", F.AUDIO, S.FORM, "upload"),
    ("POST", "audio/translations", F.AUDIO, S.FORM, "upload"),
    ("POST", "audio/speech", F.AUDIO, S.BODY, ""),
    ("POST", "files", F.FILES, S.NONE, "free upload"),
    ("GET", "files", F.FILES, S.NONE, "free"),
    ("GET", "files/{id}", F.FILES, S.NONE, "free"),
    ("DELETE", "files/{id}", F.FILES, S.NONE, "free"),
    ("GET", "files/{id}/content", F.FILES, S.NONE, "free"),
    ("POST", "uploads", F.FILES, S.NONE, "free"),
    ("POST", "uploads/{id}/parts", F.FILES, S.NONE, "free upload"),
    ("POST", "uploads/{id}/complete", F.FILES, S.NONE, "free"),
    ("POST", "uploads/{id}/cancel", F.FILES, S.NONE, "free"),
    ("POST", "batches", F.BATCHES, S.TARGET, "free"),
    ("GET", "batches", F.BATCHES, S.NONE, "free"),
    ("GET", "batches/{id}", F.BATCHES, S.NONE, "free"),
    ("POST", "batches/{id}/cancel", F.BATCHES, S.NONE, "free"),
    ("GET", "models", F.MODELS, S.NONE, "free listing"),
    ("GET", "models/{model}", F.MODELS, S.PATH, "free"),
]
ANTHROPIC = [
    ("POST", "messages", F.CHAT, S.BODY, ""),
    ("POST", "messages/count_tokens", F.COUNT_TOKENS, S.BODY, "free"),
    ("POST", "messages/batches", F.BATCHES, S.BATCH, "free"),
    ("GET", "messages/batches", F.BATCHES, S.NONE, "free"),
    ("GET", "messages/batches/{id}", F.BATCHES, S.NONE, "free"),
    ("GET", "messages/batches/{id}/results", F.BATCHES, S.NONE, "free"),
    ("POST", "messages/batches/{id}/cancel", F.BATCHES, S.NONE, "free"),
    ("DELETE", "messages/batches/{id}", F.BATCHES, S.NONE, "free"),
    ("GET", "models", F.MODELS, S.NONE, "free listing"),
    ("GET", "models/{model}", F.MODELS, S.PATH, "free"),
]
AZURE = [
    ("POST", "openai/deployments/{model}/chat/completions", F.CHAT, S.PATH, "usage"),
    ("POST", "openai/deployments/{model}/completions", F.COMPLETIONS, S.PATH, "usage"),
    ("POST", "openai/deployments/{model}/embeddings", F.EMBEDDINGS, S.PATH, ""),
    ("POST", "openai/deployments/{model}/images/generations", F.IMAGES, S.PATH, ""),
    ("POST", "openai/deployments/{model}/audio/transcriptions", F.AUDIO, S.PATH, "upload"),
    ("POST", "openai/deployments/{model}/audio/translations", F.AUDIO, S.PATH, "upload"),
    ("POST", "openai/deployments/{model}/audio/speech", F.AUDIO, S.PATH, ""),
    # Azure's v1 API is the OpenAI API, deployment as the body's model.
    *[(method, "openai/v1/" + rest, family, source, flags) for method, rest, family, source, flags in OPENAI],
]
GEMINI = [
    (method, f"{version}/{rest}", family, source, flags)
    for version in ("v1beta", "v1")
    for method, rest, family, source, flags in [
        ("POST", "models/{model}:generateContent", F.CHAT, S.PATH, ""),
        ("POST", "models/{model}:streamGenerateContent", F.CHAT, S.PATH, ""),
        ("POST", "models/{model}:countTokens", F.COUNT_TOKENS, S.PATH, "free"),
        ("POST", "models/{model}:embedContent", F.EMBEDDINGS, S.PATH, ""),
        ("POST", "models/{model}:batchEmbedContents", F.EMBEDDINGS, S.PATH, ""),
        ("GET", "models", F.MODELS, S.NONE, "free listing"),
        ("GET", "models/{model}", F.MODELS, S.PATH, "free"),
    ]
]
BEDROCK = [
    ("POST", "model/{model}/converse", F.CHAT, S.PATH, ""),
    ("POST", "model/{model}/converse-stream", F.CHAT, S.PATH, ""),
    ("POST", "model/{model}/invoke", F.CHAT, S.PATH, ""),
    ("POST", "model/{model}/invoke-with-response-stream", F.CHAT, S.PATH, ""),
    ("POST", "model/{model}/count-tokens", F.COUNT_TOKENS, S.PATH, "free"),
]
MISTRAL = [
    ("POST", "chat/completions", F.CHAT, S.BODY, ""),  # Mistral's streams report usage unasked
    ("POST", "fim/completions", F.COMPLETIONS, S.BODY, ""),
    ("POST", "embeddings", F.EMBEDDINGS, S.BODY, ""),
    ("POST", "moderations", F.MODERATIONS, S.BODY, "free"),
    ("POST", "chat/moderations", F.MODERATIONS, S.BODY, "free"),
    ("GET", "models", F.MODELS, S.NONE, "free listing"),
    ("GET", "models/{model}", F.MODELS, S.PATH, "free"),
]
MCP = [
    ("POST", "{server}", F.TOOLS, S.RPC, "free"),
    ("GET", "{server}", F.TOOLS, S.NONE, "free"),
    ("DELETE", "{server}", F.TOOLS, S.NONE, "free"),
]
TABLES = {Api.OPENAI: OPENAI, Api.ANTHROPIC: ANTHROPIC, Api.AZURE: AZURE, Api.GEMINI: GEMINI, Api.BEDROCK: BEDROCK,
          Api.MISTRAL: MISTRAL, Api.MCP: MCP}
PREFIXES = {Api.OPENAI: "/openai/v1/", Api.ANTHROPIC: "/anthropic/v1/", Api.AZURE: "/azure/", Api.GEMINI: "/gemini/",
            Api.BEDROCK: "/bedrock/", Api.MISTRAL: "/mistral/v1/", Api.MCP: "/mcp/"}
#: A model for each API's paths, as its SDK sends it, and the name the gateway checks.
SAMPLE_MODELS = {
    Api.OPENAI: ("ft:gpt-4o-mini:acme::abc123", "ft:gpt-4o-mini:acme::abc123"),
    Api.ANTHROPIC: ("claude-3-5-haiku-latest", "claude-3-5-haiku-latest"),
    Api.AZURE: ("prod-gpt-4o", "prod-gpt-4o"),
    Api.GEMINI: ("gemini-2.0-flash", "gemini-2.0-flash"),
    Api.BEDROCK: ("anthropic.claude-3-haiku-20240307-v1%3A0", "anthropic.claude-3-haiku-20240307-v1:0"),
    Api.MISTRAL: ("mistral-large-latest", "mistral-large-latest"),
}


def _cases() -> list[tuple[str, str, Match]]:
    cases = []
    for api, table in TABLES.items():
        sent, model = SAMPLE_MODELS.get(api, ("", ""))
        for method, rest, family, source, flags in table:
            words = flags.split()
            endpoint = Endpoint(api, family, source, streams_usage="usage" in words, free="free" in words,
                                listing="listing" in words, upload_limit=UPLOADS[family] if "upload" in words else None)
            path = PREFIXES[api] + rest.replace("{model}", sent).replace("{id}", "batch_abc123").replace(
                "{server}", "docs")
            expected = Match(endpoint, model=model if "{model}" in rest else None,
                             server="docs" if "{server}" in rest else None)
            cases.append((method, path, expected))
    return cases


CASES = _cases()


def _id(case: tuple) -> str:
    return f"{case[0]} {case[1]}"


def test_the_written_allowlist_is_the_served_one() -> None:
    """A new endpoint in the implementation must be added here, with its family and model source, to pass."""
    written = sorted((api.value, method, rest, family.value) for api, table in TABLES.items()
                     for method, rest, family, _, _ in table)
    served = sorted((api.value, method, rest, family.value) for api, method, rest, family in SERVED)
    assert served == written


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_allowlisted_endpoint_matches(case: tuple) -> None:
    method, path, expected = case
    assert match(method, path) == expected


@pytest.mark.parametrize("case", CASES, ids=_id)
@pytest.mark.parametrize("query", ["?beta=true", "?api-version=2024-10-21", "?alt=sse&x=%2F", "?"])
def test_query_string_is_ignored(case: tuple, query: str) -> None:
    method, path, expected = case
    assert match(method, path + query) == expected


HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"


@pytest.mark.parametrize(
    ("method", "path", "model"),
    [
        ("GET", "/openai/v1/models/gpt-4o?expand=true", "gpt-4o"),
        ("POST", "/azure/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21", "gpt-4o"),
        ("POST", "/azure/openai/deployments/my%20deployment/embeddings", "my deployment"),
        ("POST", "/gemini/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse", "gemini-2.5-pro"),
        ("POST", "/gemini/v1/models/text-embedding-004:embedContent", "text-embedding-004"),
        ("GET", "/gemini/v1beta/models/gemini-2.0-flash", "gemini-2.0-flash"),
        ("POST", "/bedrock/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse", HAIKU),
        ("POST", "/bedrock/model/anthropic.claude-3-haiku-20240307-v1%3a0/converse-stream", HAIKU),
        ("POST", "/bedrock/model/anthropic.claude-3-haiku-20240307-v1:0/invoke", HAIKU),
        ("POST", "/bedrock/model/us.anthropic.claude-3-5-haiku-20241022-v1%3A0/invoke-with-response-stream",
         "us.anthropic.claude-3-5-haiku-20241022-v1:0"),
        ("POST", "/bedrock/model/amazon.titan-embed-text-v2%3A0/invoke", "amazon.titan-embed-text-v2:0"),
        ("GET", "/mistral/v1/models/codestral-latest", "codestral-latest"),
        ("GET", "/anthropic/v1/models/claude-%C3%A9t%C3%A9", "claude-été"),
    ],
)
def test_the_model_in_the_path_is_url_decoded(method: str, path: str, model: str) -> None:
    found = match(method, path)
    assert found is not None and found.model == model and found.server is None


def test_an_mcp_path_names_its_server() -> None:
    found = match("POST", "/mcp/github")
    assert found is not None and (found.server, found.model) == ("github", None)
    assert found.endpoint.family is Family.TOOLS and found.endpoint.model_source is ModelSource.RPC


def test_a_name_of_the_longest_length_is_a_name() -> None:
    name = "m" * MAX_NAME_CHARS
    found = match("POST", f"/gemini/v1beta/models/{name}:generateContent")
    assert found is not None and found.model == name
    escaped = "%6D" * MAX_NAME_CHARS  # the length that counts is the decoded one
    found = match("POST", f"/bedrock/model/{escaped}/converse")
    assert found is not None and found.model == name


@pytest.mark.parametrize(
    ("method", "path"),
    [
        pytest.param("POST", "/bedrock/model/anthropic%2Fclaude/converse", id="encoded-slash"),
        pytest.param("POST", "/bedrock/model/anthropic%2fclaude/converse", id="encoded-slash-lower-case"),
        pytest.param("POST", "/bedrock/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ainference-profile%2Fus.x/converse",
                     id="arn-with-encoded-slash"),
        pytest.param("POST", "/azure/openai/deployments/%2E%2E/chat/completions", id="encoded-dot-dot"),
        pytest.param("POST", "/azure/openai/deployments/../chat/completions", id="dot-dot"),
        pytest.param("POST", "/azure/openai/deployments/./chat/completions", id="dot"),
        pytest.param("POST", "/azure/openai/deployments/%2e/chat/completions", id="encoded-dot"),
        pytest.param("GET", "/openai/v1/models/gpt-4o%ff", id="invalid-utf8-escape"),
        pytest.param("GET", "/openai/v1/models/%C3", id="truncated-utf8-escape"),
        pytest.param("GET", "/openai/v1/models/gpt%zz4o", id="not-an-escape"),
        pytest.param("GET", "/openai/v1/models/gpt-4o%4", id="short-escape"),
        pytest.param("GET", "/openai/v1/models/gpt-4o%", id="lone-percent"),
        pytest.param("POST", "/gemini/v1beta/models/gemini%00:generateContent", id="nul"),
        pytest.param("POST", "/gemini/v1beta/models/gemini%0A:generateContent", id="newline"),
        pytest.param("POST", "/gemini/v1beta/models/gemini%7F:generateContent", id="delete"),
        pytest.param("POST", "/gemini/v1beta/models/:generateContent", id="empty-model"),
        pytest.param("POST", "/gemini/v1beta/models/gemini-2.0-flash%3AgenerateContent:countTokens",
                     id="gemini-second-action-escaped"),
        pytest.param("POST", "/gemini/v1beta/models/gemini-2.0-flash:generateContent:countTokens",
                     id="gemini-second-action"),
        pytest.param("GET", "/gemini/v1beta/models/gemini-2.0-flash:generateContent", id="gemini-action-as-get"),
        pytest.param("POST", "/gemini/v1beta/models/" + "m" * (MAX_NAME_CHARS + 1) + ":generateContent",
                     id="over-long"),
        pytest.param("POST", "/bedrock/model/" + "%6D" * (MAX_NAME_CHARS + 1) + "/converse", id="over-long-escaped"),
        pytest.param("POST", "/bedrock/model//converse", id="empty-segment"),
        pytest.param("POST", "/mcp/", id="no-server"),
        pytest.param("POST", "/mcp/docs%2Fadmin", id="server-encoded-slash"),
        pytest.param("POST", "/mcp/..", id="server-dot-dot"),
        pytest.param("POST", "/mcp/" + "s" * (MAX_NAME_CHARS + 1), id="server-over-long"),
        pytest.param("DELETE", "/mcp/docs%ff", id="server-invalid-escape"),
    ],
)
def test_hostile_path_segments_give_none(method: str, path: str) -> None:
    assert match(method, path) is None


@pytest.mark.parametrize(
    "path",
    [
        "/openai/v1/fine_tuning/jobs",
        "/openai/v1/assistants",
        "/openai/v1/realtime/sessions",
        "/openai/v1/chat/completions/extra",
        "/openai/v1/models/gpt-4o/permissions",
        "/openai/v1/files/file-1/content/extra",
        "/openai/v2/chat/completions",
        "/v1/chat/completions",
        "/anthropic/v1/complete",
        "/anthropic/v1/messages/batches/b1/extra",
        "/anthropic/messages",
        "/azure/openai/deployments/gpt-4o/assistants",
        "/azure/openai/deployments/gpt-4o",
        "/azure/openai/chat/completions",
        "/azure/openai/v1/fine_tuning/jobs",
        "/gemini/v1beta/models/gemini-2.0-flash:generateImages",
        "/gemini/v1alpha/models/gemini-2.0-flash:generateContent",
        "/gemini/v1beta/tunedModels/x:generateContent",
        "/gemini/v1beta/cachedContents",
        "/bedrock/model/amazon.nova-pro-v1:0/converse/extra",
        "/bedrock/model-invocation-job",
        "/bedrock/guardrail/g1/version/1/apply",
        "/mistral/v1/agents/completions",
        "/mistral/v1/fine_tuning/jobs",
        "/mistral/chat/completions",
        "/mcp/docs/sse",
        "/mcp",
        "/",
        "",
    ],
)
@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
def test_unknown_endpoint_gives_none(method: str, path: str) -> None:
    assert match(method, path) is None


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/openai/v1/chat/completions"),
        ("PUT", "/openai/v1/chat/completions"),
        ("POST", "/openai/v1/models"),
        ("POST", "/openai/v1/models/gpt-4o"),
        ("DELETE", "/openai/v1/models/ft:gpt-4o-mini:acme::abc123"),  # deletes a fine-tuned model
        ("PATCH", "/openai/v1/files/file-1"),
        ("GET", "/openai/v1/audio/transcriptions"),
        ("GET", "/anthropic/v1/messages"),
        ("DELETE", "/anthropic/v1/messages"),
        ("HEAD", "/anthropic/v1/models"),
        ("GET", "/azure/openai/deployments/gpt-4o/chat/completions"),
        ("POST", "/gemini/v1beta/models"),
        ("POST", "/gemini/v1beta/models/gemini-2.0-flash"),
        ("GET", "/bedrock/model/amazon.nova-pro-v1:0/converse"),
        ("DELETE", "/mistral/v1/chat/completions"),
        ("PUT", "/mcp/docs"),
        ("post", "/openai/v1/chat/completions"),
    ],
)
def test_wrong_method_gives_none(method: str, path: str) -> None:
    assert match(method, path) is None


# -- families ---------------------------------------------------------------------------------------


def test_default_families_are_those_acting_on_one_model() -> None:
    assert DEFAULT_FAMILIES == {F.CHAT, F.RESPONSES, F.COMPLETIONS, F.EMBEDDINGS, F.MODERATIONS, F.IMAGES, F.AUDIO,
                                F.MODELS, F.COUNT_TOKENS}


def test_legacy_tokens_keep_what_the_gateway_served_before_families() -> None:
    assert LEGACY_FAMILIES == {F.CHAT, F.RESPONSES, F.COMPLETIONS, F.EMBEDDINGS, F.MODERATIONS, F.MODELS,
                               F.COUNT_TOKENS}


def test_every_family_has_endpoints_and_only_stored_data_batches_and_tools_are_outside_the_defaults() -> None:
    served = {found.endpoint.family for _, _, found in CASES}
    assert served == set(Family)
    assert served - DEFAULT_FAMILIES == {F.FILES, F.BATCHES, F.TOOLS}


@pytest.mark.parametrize(
    ("target", "family"),
    [
        ("/v1/chat/completions", F.CHAT),
        ("/v1/completions", F.COMPLETIONS),
        ("/v1/responses", F.RESPONSES),
        ("/v1/embeddings", F.EMBEDDINGS),
        ("/v1/moderations", F.MODERATIONS),
        ("/v1/files", None),  # no model in a JSON body: not something a batch runs
        ("/v1/batches", None),
        ("/v1/audio/transcriptions", None),
        ("/v1/models", None),
        ("/v1/responses/resp_1/cancel", None),
        ("/v1/fine_tuning/jobs", None),
        ("/openai/v1/chat/completions", None),
        ("chat/completions", None),
        ("/v1/chat/completions?x=1", None),
        ("", None),
        (None, None),
        (42, None),
        (["/v1/chat/completions"], None),
    ],
)
def test_family_of_an_openai_batch_target(target: object, family: Family | None) -> None:
    assert family_of_target(target) is family


# -- probes (the control plane's "may this token use this model") -----------------------------------


MODEL_APIS = [api for api in Api if api is not Api.MCP]
MODEL_FAMILIES = [family for family in Family if family in DEFAULT_FAMILIES]


@pytest.mark.parametrize("api", MODEL_APIS, ids=[api.value for api in MODEL_APIS])
@pytest.mark.parametrize("family", MODEL_FAMILIES, ids=[family.value for family in MODEL_FAMILIES])
def test_a_probe_is_a_request_the_allowlist_matches_with_its_model(api: Api, family: Family) -> None:
    model = SAMPLE_MODELS[api][1]
    found = probe(api, frozenset({family}), model)
    if found is None:
        assert not any(f.endpoint.family is family and f.endpoint.api is api and m == "POST"
                       and f.endpoint.model_source in (S.BODY, S.PATH) for m, _, f in CASES)
        return
    method, path, body = found
    matched = match(method, path)
    assert matched is not None and matched.endpoint.family is family and matched.endpoint.api is api
    if matched.endpoint.model_source is S.PATH:
        assert matched.model == model
    else:
        assert json.loads(body)["model"] == model


def test_a_probe_asks_through_the_first_family_in_order_of_preference() -> None:
    method, path, _ = probe(Api.OPENAI, frozenset({F.EMBEDDINGS, F.CHAT}), "gpt-4o")  # type: ignore[misc]
    assert (method, path) == ("POST", "/openai/v1/chat/completions")
    _, path, _ = probe(Api.OPENAI, frozenset({F.EMBEDDINGS, F.COUNT_TOKENS}), "x")  # type: ignore[misc]
    assert path == "/openai/v1/embeddings"
    _, path, _ = probe(Api.BEDROCK, frozenset({F.CHAT}), "a/b:c")  # type: ignore[misc]
    assert path == "/bedrock/model/" + quote("a/b:c", safe="") + "/converse"


@pytest.mark.parametrize("families", [frozenset(), frozenset({F.FILES, F.BATCHES, F.MODELS})])
def test_no_probe_without_a_family_that_names_a_model(families: frozenset[Family]) -> None:
    assert probe(Api.OPENAI, families, "gpt-4o") is None
    assert probe(Api.MCP, frozenset(Family), "docs") is None


# -- the API of a path ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "api"),
    [
        ("/openai/v1/chat/completions", Api.OPENAI),
        ("/openai/v1/anything/at/all?x=1", Api.OPENAI),
        ("/anthropic/v1/messages", Api.ANTHROPIC),
        ("/anthropic/v1/unknown", Api.ANTHROPIC),
        ("/azure/openai/deployments/x/chat/completions", Api.AZURE),
        ("/gemini/v1beta/models", Api.GEMINI),
        ("/bedrock/model/x/converse", Api.BEDROCK),
        ("/mistral/v1/chat/completions", Api.MISTRAL),
        ("/mcp/docs", Api.MCP),
        ("/openai/v1", None),
        ("/openai/v2/chat/completions", None),
        ("/anthropic/messages", None),
        ("/mistral/v2/chat/completions", None),
        ("/mcp", None),
        ("/v1/chat/completions", None),
        ("/healthz", None),
    ],
)
def test_api_of(path: str, api: Api | None) -> None:
    assert api_of(path) is api
