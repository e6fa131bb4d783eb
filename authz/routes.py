"""Which provider APIs the gateway serves, and which endpoints of each.

The gateway is an allowlist: a path that is not listed here is refused before it reaches a provider,
so a new provider endpoint (say, one that takes the model from a multipart form) cannot be used to
slip past the model catalog until someone decides how to check it.

OpenAI clients use ``base_url=<gateway>/openai/v1``; Anthropic clients use ``base_url=<gateway>/anthropic``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Api(enum.Enum):
    OPENAI = "openai"
    ANTHROPIC = "anthropic"


class ModelSource(enum.Enum):
    NONE = "none"  # listing endpoints: no model involved
    BODY = "body"  # JSON body field ``model``, required
    PATH = "path"  # last path segment (``GET /v1/models/{model}``)


@dataclass(frozen=True, slots=True)
class Endpoint:
    api: Api
    method: str
    model_source: ModelSource
    #: An OpenAI endpoint whose streams report usage only when asked (``stream_options.include_usage``).
    streams_usage: bool = False
    #: The provider charges nothing for it (listing models, counting tokens, moderation): no budget
    #: applies, and its outcome costs nothing.
    free: bool = False


#: The endpoints where the gateway asks for usage in a stream the client did not ask it for.
_STREAM_USAGE = {(Api.OPENAI, "chat/completions"), (Api.OPENAI, "completions")}
#: The endpoints that cost nothing.
_FREE = {(Api.OPENAI, "models"), (Api.OPENAI, "moderations"), (Api.ANTHROPIC, "models"),
         (Api.ANTHROPIC, "messages/count_tokens")}


_PREFIXES = {"/openai/v1/": Api.OPENAI, "/anthropic/v1/": Api.ANTHROPIC}

_ENDPOINTS: dict[tuple[Api, str, str], ModelSource] = {
    (Api.OPENAI, "POST", "chat/completions"): ModelSource.BODY,
    (Api.OPENAI, "POST", "completions"): ModelSource.BODY,
    (Api.OPENAI, "POST", "embeddings"): ModelSource.BODY,
    (Api.OPENAI, "POST", "responses"): ModelSource.BODY,
    (Api.OPENAI, "POST", "moderations"): ModelSource.BODY,
    (Api.OPENAI, "GET", "models"): ModelSource.NONE,
    (Api.ANTHROPIC, "POST", "messages"): ModelSource.BODY,
    (Api.ANTHROPIC, "POST", "messages/count_tokens"): ModelSource.BODY,
    (Api.ANTHROPIC, "GET", "models"): ModelSource.NONE,
}


def api_of(path: str) -> Api | None:
    """The API a request path belongs to, used to shape errors even for unknown endpoints."""
    for prefix, api in _PREFIXES.items():
        if path.startswith(prefix):
            return api
    return None


def match(method: str, path: str) -> tuple[Endpoint | None, str | None]:
    """Return the endpoint and, for ``models/{model}``, the model named in the path."""
    path = path.split("?", 1)[0]
    api = api_of(path)
    if api is None:
        return None, None
    rest = path[path.index("/v1/") + 4 :].rstrip("/")
    source = _ENDPOINTS.get((api, method, rest))
    if source is not None:
        return Endpoint(api, method, source, (api, rest) in _STREAM_USAGE, (api, rest) in _FREE), None
    head, _, tail = rest.rpartition("/")
    if method == "GET" and head == "models" and tail:
        return Endpoint(api, method, ModelSource.PATH, free=True), tail
    return None, None
