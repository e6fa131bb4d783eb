"""Which endpoints the gateway serves, in which API, of which family, and where each names its model.

The gateway is an allowlist: a path that is not listed here is refused before it reaches a provider,
so a new provider endpoint cannot be used to slip past the model catalog until someone decides how to
check it. Each endpoint belongs to one :class:`Family`; access profiles (and tokens, by narrowing)
name the families they may call.

Clients keep their SDK's base URL at the gateway (:data:`authz.upstreams.PREFIXES`): OpenAI
``<gateway>/openai/v1``, Anthropic ``<gateway>/anthropic``, Azure OpenAI ``azure_endpoint=<gateway>/azure``,
Gemini ``<gateway>/gemini``, Bedrock Runtime ``endpoint_url=<gateway>/bedrock``, Mistral
``<gateway>/mistral``, MCP ``<gateway>/mcp/<server>``.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass
from urllib.parse import quote, unquote

from authz.upstreams import PREFIXES, Api

__all__ = ["Api", "Endpoint", "Family", "Match", "ModelSource", "api_of", "match"]


class Family(enum.Enum):
    CHAT = "chat"
    RESPONSES = "responses"
    COMPLETIONS = "completions"
    EMBEDDINGS = "embeddings"
    MODERATIONS = "moderations"
    IMAGES = "images"
    AUDIO = "audio"
    #: Stored files and uploads: they act on data, not on one model.
    FILES = "files"
    #: Batches run many requests later, off the gateway: a permission of their own.
    BATCHES = "batches"
    MODELS = "models"
    COUNT_TOKENS = "count_tokens"
    #: MCP tool servers (the profile's tool catalog says which servers and tools).
    TOOLS = "tools"


#: What a profile allows when it does not say: every family that acts on one model. Files and batches
#: (stored data, and requests run later outside the Check) and MCP tools must be granted by name.
DEFAULT_FAMILIES = frozenset(Family) - {Family.FILES, Family.BATCHES, Family.TOOLS}
#: The families tokens minted before teams existed (no profile) keep: what the gateway served then.
LEGACY_FAMILIES = frozenset({Family.CHAT, Family.RESPONSES, Family.COMPLETIONS, Family.EMBEDDINGS,
                             Family.MODERATIONS, Family.MODELS, Family.COUNT_TOKENS})


class ModelSource(enum.Enum):
    NONE = "none"  # no model involved (listing, stored files and batches, an MCP stream)
    BODY = "body"  # JSON body field ``model``, required
    PATH = "path"  # in the path (``models/{model}``, Gemini, Bedrock, Azure deployments)
    FORM = "form"  # a multipart form field ``model`` (audio, image edits), read from the body's head
    BATCH = "batch"  # Anthropic message batches: every ``requests[].params.model``
    TARGET = "target"  # OpenAI batches: the body's ``endpoint`` names the family the batch runs
    RPC = "rpc"  # MCP: a JSON-RPC message, whose ``tools/call`` names a tool


@dataclass(frozen=True, slots=True)
class Endpoint:
    api: Api
    family: Family
    model_source: ModelSource
    #: An OpenAI endpoint whose streams report usage only when asked (``stream_options.include_usage``).
    streams_usage: bool = False
    #: The provider charges nothing for it here (listing models, counting tokens, moderation, stored
    #: files and batches, which are billed when they run): no budget applies, and its outcome costs nothing.
    free: bool = False
    #: ``GET …/models``: the gateway answers it from the token's catalog (:mod:`authz.listing`).
    listing: bool = False
    #: The body is an upload: Envoy passes authz only its head, and the Check bounds its declared size.
    upload_limit: int | None = None


@dataclass(frozen=True, slots=True)
class Match:
    endpoint: Endpoint
    #: The model named in the path, URL-decoded, if the endpoint puts it there.
    model: str | None = None
    #: The MCP server named in the path.
    server: str | None = None


_MB = 1024 * 1024
#: The largest upload each family takes (what the providers themselves accept).
UPLOAD_LIMITS = {Family.AUDIO: 25 * _MB, Family.IMAGES: 50 * _MB, Family.FILES: 512 * _MB}

F, S = Family, ModelSource
_SEGMENT = r"[^/]+"

# (method, path after the API's prefix, family, model source, flags). ``{model}`` and ``{id}`` are one
# path segment. The OpenAI families, as OpenAI, Azure's v1 API and any OpenAI-compatible server serve them.
_OPENAI: list[tuple[str, str, Family, ModelSource, str]] = [
    ("POST", "chat/completions", F.CHAT, S.BODY, "stream_usage"),
    ("POST", "completions", F.COMPLETIONS, S.BODY, "stream_usage"),
    ("POST", "responses", F.RESPONSES, S.BODY, ""),
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

_ANTHROPIC: list[tuple[str, str, Family, ModelSource, str]] = [
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

# Azure OpenAI: the deployment (which the catalog knows as the model) is in the path, as its SDK sends it
# (``?api-version=`` passes through); its v1 API is the OpenAI one.
_AZURE: list[tuple[str, str, Family, ModelSource, str]] = [
    ("POST", "openai/deployments/{model}/chat/completions", F.CHAT, S.PATH, "stream_usage"),
    ("POST", "openai/deployments/{model}/completions", F.COMPLETIONS, S.PATH, "stream_usage"),
    ("POST", "openai/deployments/{model}/embeddings", F.EMBEDDINGS, S.PATH, ""),
    ("POST", "openai/deployments/{model}/images/generations", F.IMAGES, S.PATH, ""),
    ("POST", "openai/deployments/{model}/audio/transcriptions", F.AUDIO, S.PATH, "upload"),
    ("POST", "openai/deployments/{model}/audio/translations", F.AUDIO, S.PATH, "upload"),
    ("POST", "openai/deployments/{model}/audio/speech", F.AUDIO, S.PATH, ""),
    *[(method, "openai/v1/" + rest, family, source, flags) for method, rest, family, source, flags in _OPENAI],
]

# Gemini's native API: ``models/{model}:{action}`` under its version.
_GEMINI: list[tuple[str, str, Family, ModelSource, str]] = [
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

# Bedrock Runtime: the model id (URL-encoded: ``anthropic.claude-3-haiku-20240307-v1%3A0``) in the path.
_BEDROCK: list[tuple[str, str, Family, ModelSource, str]] = [
    ("POST", "model/{model}/converse", F.CHAT, S.PATH, ""),
    ("POST", "model/{model}/converse-stream", F.CHAT, S.PATH, ""),
    ("POST", "model/{model}/invoke", F.CHAT, S.PATH, ""),
    ("POST", "model/{model}/invoke-with-response-stream", F.CHAT, S.PATH, ""),
    ("POST", "model/{model}/count-tokens", F.COUNT_TOKENS, S.PATH, "free"),
]

_MISTRAL: list[tuple[str, str, Family, ModelSource, str]] = [
    ("POST", "chat/completions", F.CHAT, S.BODY, ""),
    ("POST", "fim/completions", F.COMPLETIONS, S.BODY, ""),
    ("POST", "embeddings", F.EMBEDDINGS, S.BODY, ""),
    ("POST", "moderations", F.MODERATIONS, S.BODY, "free"),
    ("POST", "chat/moderations", F.MODERATIONS, S.BODY, "free"),
    ("GET", "models", F.MODELS, S.NONE, "free listing"),
    ("GET", "models/{model}", F.MODELS, S.PATH, "free"),
]

# MCP's Streamable HTTP transport: POST carries JSON-RPC, GET opens the server's event stream, DELETE ends
# the session.
_MCP: list[tuple[str, str, Family, ModelSource, str]] = [
    ("POST", "{server}", F.TOOLS, S.RPC, "free"),
    ("GET", "{server}", F.TOOLS, S.NONE, "free"),
    ("DELETE", "{server}", F.TOOLS, S.NONE, "free"),
]

_TABLES = {Api.OPENAI: _OPENAI, Api.ANTHROPIC: _ANTHROPIC, Api.AZURE: _AZURE, Api.GEMINI: _GEMINI,
           Api.BEDROCK: _BEDROCK, Api.MISTRAL: _MISTRAL, Api.MCP: _MCP}


def _endpoint(api: Api, family: Family, source: ModelSource, flags: str) -> Endpoint:
    words = flags.split()
    return Endpoint(api, family, source, streams_usage="stream_usage" in words, free="free" in words,
                    listing="listing" in words,
                    upload_limit=UPLOAD_LIMITS[family] if "upload" in words else None)


# Exact paths by dictionary (the common case: one lookup); templated ones by one regex per API and method.
_EXACT: dict[tuple[Api, str, str], Endpoint] = {}
_TEMPLATED: dict[tuple[Api, str], list[tuple[re.Pattern[str], Endpoint]]] = {}
for _api, _table in _TABLES.items():
    for _method, _rest, _family, _source, _flags in _table:
        _found = _endpoint(_api, _family, _source, _flags)
        if "{" not in _rest:
            _EXACT[(_api, _method, _rest)] = _found
            continue
        _regex = re.escape(_rest).replace(r"\{model\}", f"(?P<model>{_SEGMENT})").replace(
            r"\{id\}", _SEGMENT).replace(r"\{server\}", f"(?P<server>{_SEGMENT})")
        _TEMPLATED.setdefault((_api, _method), []).append((re.compile(_regex + r"\Z"), _found))

#: Every (API, method, path template) served, for documentation and tests.
SERVED = [(api, method, rest, family) for api, table in _TABLES.items() for method, rest, family, _, _ in table]

#: No provider names a model (or an MCP server) this long: a longer one is garbage, not a name to check.
MAX_NAME_CHARS = 256
#: A ``%`` that does not start an escape: servers differ on it (kept as is, refused, or decoded anyway).
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
#: Control characters: no model or server has them; they would only reach logs and the provider's path.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def api_of(path: str) -> Api | None:
    """The API a request path belongs to, used to shape errors even for unknown endpoints."""
    for api, prefix in PREFIXES.items():
        if path.startswith(prefix):
            return api
    return None


def match(method: str, path: str) -> Match | None:
    """The endpoint of ``method path`` (the query ignored) and the model or server its path names."""
    path = path.split("?", 1)[0]
    api = api_of(path)
    if api is None:
        return None
    rest = path[len(PREFIXES[api]):].rstrip("/")
    exact = _EXACT.get((api, method, rest))
    if exact is not None:
        return Match(exact)
    for regex, endpoint in _TEMPLATED.get((api, method), ()):
        found = regex.match(rest)
        if found is None:
            continue
        groups = found.groupdict()
        name = groups.get("model") or groups.get("server")
        if name is not None:
            if "%" in name:
                if _BAD_ESCAPE.search(name):
                    return None
                try:
                    name = unquote(name, errors="strict")
                except UnicodeDecodeError:
                    return None
            # "." and ".." are dot segments a server may resolve after decoding: the path it runs would
            # not be the one checked here.
            if (not name or len(name) > MAX_NAME_CHARS or "/" in name or name in (".", "..")
                    or _CONTROL.search(name)):
                return None
            # Gemini's model ids have no colon; one (``x%3AgenerateContent:countTokens``) would put a second
            # action in the path, and the provider might run that one instead of the one checked.
            if api is Api.GEMINI and ":" in name:
                return None
        return Match(endpoint, model=groups.get("model") and name, server=groups.get("server") and name)
    return None


def family_of_target(target: object) -> Family | None:
    """The family an OpenAI batch runs (its ``endpoint``: ``/v1/chat/completions``, …), if it is one.

    >>> family_of_target("/v1/chat/completions")
    <Family.CHAT: 'chat'>
    """
    if not isinstance(target, str) or not target.startswith("/v1/"):
        return None
    endpoint = _EXACT.get((Api.OPENAI, "POST", target[len("/v1/"):]))
    return endpoint.family if endpoint is not None and endpoint.model_source is ModelSource.BODY else None


#: The families a question "may this token use this model" is asked through, in order of preference.
_PROBED = (Family.CHAT, Family.EMBEDDINGS, Family.COMPLETIONS, Family.RESPONSES, Family.IMAGES, Family.AUDIO,
           Family.MODERATIONS, Family.COUNT_TOKENS)


def probe(api: Api, families: frozenset[Family], model: str) -> tuple[str, str, bytes] | None:
    """A request (method, path, JSON body) that asks ``api`` for ``model`` through the first of the token's
    ``families`` that names a model in a JSON body or the path; None when none does.

    >>> probe(Api.GEMINI, frozenset({Family.CHAT}), "gemini-2.0-flash")[1]
    '/gemini/v1beta/models/gemini-2.0-flash:generateContent'
    """
    for family in _PROBED:
        if family not in families:
            continue
        for method, rest, table_family, source, _ in _TABLES[api]:
            if table_family is family and method == "POST" and source in (ModelSource.BODY, ModelSource.PATH):
                path = PREFIXES[api] + rest.replace("{model}", quote(model, safe=""))
                body = json.dumps({"model": model, "max_tokens": 1, "messages": [], "input": ""}).encode()
                return method, path, body
    return None
