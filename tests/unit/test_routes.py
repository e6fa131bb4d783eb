"""The endpoint allowlist: what is served, where the model comes from, and what is refused."""

from __future__ import annotations

import pytest

from authz.routes import Api, Endpoint, ModelSource, api_of, match

OPENAI, ANTHROPIC = Api.OPENAI, Api.ANTHROPIC
BODY, NONE, PATH = ModelSource.BODY, ModelSource.NONE, ModelSource.PATH

#: The whole allowlist, written out independently of the implementation's table.
ALLOWLIST = [
    ("POST", "/openai/v1/chat/completions", OPENAI, BODY),
    ("POST", "/openai/v1/completions", OPENAI, BODY),
    ("POST", "/openai/v1/embeddings", OPENAI, BODY),
    ("POST", "/openai/v1/responses", OPENAI, BODY),
    ("POST", "/openai/v1/moderations", OPENAI, BODY),
    ("GET", "/openai/v1/models", OPENAI, NONE),
    ("POST", "/anthropic/v1/messages", ANTHROPIC, BODY),
    ("POST", "/anthropic/v1/messages/count_tokens", ANTHROPIC, BODY),
    ("GET", "/anthropic/v1/models", ANTHROPIC, NONE),
]


def _id(case: tuple) -> str:
    return f"{case[0]} {case[1]}"


def _shape(found: tuple[Endpoint | None, str | None]) -> tuple:
    endpoint, model = found
    assert endpoint is not None
    return (endpoint.api, endpoint.method, endpoint.model_source), model


@pytest.mark.parametrize("case", ALLOWLIST, ids=_id)
def test_allowlisted_endpoint_matches(case: tuple) -> None:
    method, path, api, source = case
    assert _shape(match(method, path)) == ((api, method, source), None)


@pytest.mark.parametrize("case", ALLOWLIST, ids=_id)
@pytest.mark.parametrize("query", ["?beta=true", "?limit=20&after_id=x", "?"])
def test_query_string_is_ignored(case: tuple, query: str) -> None:
    method, path, api, source = case
    assert _shape(match(method, path + query)) == ((api, method, source), None)


@pytest.mark.parametrize(
    ("path", "api", "model"),
    [
        ("/openai/v1/models/gpt-4o-mini", OPENAI, "gpt-4o-mini"),
        ("/openai/v1/models/ft:gpt-4o-mini:acme::abc123", OPENAI, "ft:gpt-4o-mini:acme::abc123"),
        ("/openai/v1/models/gpt-4o?expand=true", OPENAI, "gpt-4o"),
        ("/anthropic/v1/models/claude-3-5-haiku-latest", ANTHROPIC, "claude-3-5-haiku-latest"),
    ],
)
def test_get_model_by_id_takes_the_model_from_the_path(path: str, api: Api, model: str) -> None:
    assert match("GET", path) == (Endpoint(api, "GET", PATH, free=True), model)


@pytest.mark.parametrize(
    ("method", "path", "free", "streams_usage"),
    [
        ("POST", "/openai/v1/chat/completions", False, True),
        ("POST", "/openai/v1/completions", False, True),
        ("POST", "/openai/v1/responses", False, False),  # reports usage in its stream unasked
        ("POST", "/openai/v1/embeddings", False, False),
        ("POST", "/openai/v1/moderations", True, False),
        ("GET", "/openai/v1/models", True, False),
        ("POST", "/anthropic/v1/messages", False, False),
        ("POST", "/anthropic/v1/messages/count_tokens", True, False),
        ("GET", "/anthropic/v1/models", True, False),
    ],
)
def test_which_endpoints_cost_and_which_streams_need_asking_for_usage(method: str, path: str, free: bool,
                                                                     streams_usage: bool) -> None:
    endpoint, _ = match(method, path)
    assert endpoint is not None and (endpoint.free, endpoint.streams_usage) == (free, streams_usage)


@pytest.mark.parametrize(
    "path",
    [
        "/openai/v1/files",
        "/openai/v1/audio/transcriptions",  # multipart: the model is not in a JSON body
        "/openai/v1/images/generations",
        "/openai/v1/fine_tuning/jobs",
        "/openai/v1/chat/completions/extra",
        "/openai/v1/models/gpt-4o/permissions",
        "/openai/v2/chat/completions",
        "/v1/chat/completions",
        "/anthropic/v1/complete",
        "/anthropic/v1/messages/batches",
        "/anthropic/messages",
        "/",
        "",
    ],
)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_unknown_endpoint_gives_none(method: str, path: str) -> None:
    assert match(method, path) == (None, None)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/openai/v1/chat/completions"),
        ("PUT", "/openai/v1/chat/completions"),
        ("POST", "/openai/v1/models"),
        ("POST", "/openai/v1/models/gpt-4o"),
        ("DELETE", "/openai/v1/models/ft:gpt-4o-mini:acme::abc123"),  # deletes a fine-tuned model
        ("GET", "/anthropic/v1/messages"),
        ("DELETE", "/anthropic/v1/messages"),
        ("HEAD", "/anthropic/v1/models"),
        ("post", "/openai/v1/chat/completions"),
    ],
)
def test_wrong_method_gives_none(method: str, path: str) -> None:
    assert match(method, path) == (None, None)


@pytest.mark.parametrize(
    ("path", "api"),
    [
        ("/openai/v1/chat/completions", OPENAI),
        ("/openai/v1/anything/at/all?x=1", OPENAI),
        ("/anthropic/v1/messages", ANTHROPIC),
        ("/anthropic/v1/unknown", ANTHROPIC),
        ("/openai/v1", None),
        ("/openai/v2/chat/completions", None),
        ("/anthropic/messages", None),
        ("/v1/chat/completions", None),
        ("/healthz", None),
    ],
)
def test_api_of(path: str, api: Api | None) -> None:
    assert api_of(path) is api
