"""The upstreams an operator configures: named provider endpoints (and MCP servers) behind the gateway.

Clients speak one of a few APIs, each under its own path prefix (:class:`Api`); an upstream is one
configured endpoint of some :class:`Kind` (OpenAI, an Azure OpenAI resource, Gemini, Bedrock in one
region, a vLLM server, an MCP server, …) with its own key, which only Envoy holds. A kind serves one
or more APIs (Azure serves its own deployment paths and the OpenAI API; Gemini's OpenAI-compatible
endpoint and any OpenAI-compatible server serve the OpenAI API), so one OpenAI base URL can reach
several upstreams: the access profile's catalog names which upstream serves a model, and authz tells
Envoy with a routing header (:data:`ROUTE_HEADER`).

The list reaches every process as ``KEYWARD_UPSTREAMS`` (JSON: names, kinds, URLs, a region; never a
key). ``openai`` and ``anthropic`` always exist, from their own settings; the list adds others.

>>> ups = Upstreams.parse('[{"name": "azure-east", "kind": "azure", "url": "https://e.openai.azure.com"}]')
>>> [u.name for u in ups.serving(Api.OPENAI)]
['openai', 'azure-east']
>>> ups.default(Api.AZURE).name
'azure-east'
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

#: The request header authz sets to the chosen upstream's name; Envoy routes on it. No client can set
#: it: Envoy drops every ``x-keyward-*`` header a client sends before any filter runs.
ROUTE_HEADER = "x-keyward-upstream"


class Api(enum.Enum):
    """An API clients speak to the gateway, by the path prefix their SDK's base URL points at."""

    OPENAI = "openai"  # /openai/v1/…
    ANTHROPIC = "anthropic"  # /anthropic/v1/…
    AZURE = "azure"  # /azure/openai/deployments/{deployment}/…?api-version=…, /azure/openai/v1/…
    GEMINI = "gemini"  # /gemini/v1beta/models/{model}:generateContent
    BEDROCK = "bedrock"  # /bedrock/model/{model}/converse (Bedrock Runtime)
    MISTRAL = "mistral"  # /mistral/v1/…
    MCP = "mcp"  # /mcp/{server}


#: The path prefix of each API at the gateway.
PREFIXES: dict[Api, str] = {
    Api.OPENAI: "/openai/v1/",
    Api.ANTHROPIC: "/anthropic/v1/",
    Api.AZURE: "/azure/",
    Api.GEMINI: "/gemini/",
    Api.BEDROCK: "/bedrock/",
    Api.MISTRAL: "/mistral/v1/",
    Api.MCP: "/mcp/",
}


class Kind(enum.Enum):
    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    AZURE = "azure"
    GEMINI = "gemini"
    GEMINI_OPENAI = "gemini-openai"
    BEDROCK = "bedrock"
    MISTRAL = "mistral"
    OPENAI_COMPATIBLE = "openai-compatible"
    MCP = "mcp"


#: The APIs each kind serves, its own first.
SERVES: dict[Kind, tuple[Api, ...]] = {
    Kind.OPENAI: (Api.OPENAI,),
    Kind.ANTHROPIC: (Api.ANTHROPIC,),
    Kind.AZURE: (Api.AZURE, Api.OPENAI),
    Kind.GEMINI: (Api.GEMINI,),
    Kind.GEMINI_OPENAI: (Api.OPENAI,),
    Kind.BEDROCK: (Api.BEDROCK,),
    Kind.MISTRAL: (Api.MISTRAL, Api.OPENAI),
    Kind.OPENAI_COMPATIBLE: (Api.OPENAI,),
    Kind.MCP: (Api.MCP,),
}

#: Where a request's path goes at an upstream of each kind, per API: the gateway's prefix is replaced
#: by this one, after the upstream URL's own path. (An upstream URL is the provider's host, plus a path
#: only when it sits behind a proxy; an MCP server's URL is its whole endpoint.)
UPSTREAM_PATHS: dict[Kind, dict[Api, str]] = {
    Kind.OPENAI: {Api.OPENAI: "/v1/"},
    Kind.ANTHROPIC: {Api.ANTHROPIC: "/v1/"},
    # Azure's deployment paths as its SDK sends them; and its v1 API, where the body's model is the deployment.
    Kind.AZURE: {Api.AZURE: "/", Api.OPENAI: "/openai/v1/"},
    Kind.GEMINI: {Api.GEMINI: "/"},
    Kind.GEMINI_OPENAI: {Api.OPENAI: "/v1beta/openai/"},
    Kind.BEDROCK: {Api.BEDROCK: "/"},
    Kind.MISTRAL: {Api.MISTRAL: "/v1/", Api.OPENAI: "/v1/"},
    Kind.OPENAI_COMPATIBLE: {Api.OPENAI: "/v1/"},
    Kind.MCP: {Api.MCP: ""},
}

#: The header each kind's key goes in, and how (``{key}`` is the key). Bedrock is signed instead
#: (SigV4, by Envoy's AWS request-signing filter).
KEY_HEADERS: dict[Kind, tuple[str, str] | None] = {
    Kind.OPENAI: ("Authorization", "Bearer {key}"),
    Kind.ANTHROPIC: ("x-api-key", "{key}"),
    Kind.AZURE: ("api-key", "{key}"),
    Kind.GEMINI: ("x-goog-api-key", "{key}"),
    Kind.GEMINI_OPENAI: ("Authorization", "Bearer {key}"),
    Kind.BEDROCK: None,
    Kind.MISTRAL: ("Authorization", "Bearer {key}"),
    Kind.OPENAI_COMPATIBLE: ("Authorization", "Bearer {key}"),
    Kind.MCP: ("Authorization", "Bearer {key}"),
}

#: The provider id of the bundled price table (genai-prices) each kind's models are priced under; None:
#: none (a self-hosted server: priced by an admin's override for the upstream's name, or unpriced).
PRICE_PROVIDERS: dict[Kind, str | None] = {
    Kind.OPENAI: "openai", Kind.ANTHROPIC: "anthropic", Kind.AZURE: "azure", Kind.GEMINI: "google",
    Kind.GEMINI_OPENAI: "google", Kind.BEDROCK: "aws", Kind.MISTRAL: "mistral", Kind.OPENAI_COMPATIBLE: None,
    Kind.MCP: None,
}
#: Kinds whose reported input tokens leave out cache reads and writes (Anthropic's convention).
CACHE_APART = frozenset({Kind.ANTHROPIC, Kind.BEDROCK})

# \Z, not $: "$" also matches before a final newline, and a name ends up in headers and variable names.
#: Names of Envoy clusters of the gateway's own that an upstream's cluster (named like the upstream) would clash with.
RESERVED = frozenset({"opentelemetry"})

NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]\Z")
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d\Z")


@dataclass(frozen=True, slots=True)
class Upstream:
    name: str
    kind: Kind
    url: str
    #: Bedrock's AWS region (the signature's scope).
    region: str | None = None

    @property
    def apis(self) -> tuple[Api, ...]:
        return SERVES[self.kind]


def _upstream(entry: object, index: int) -> Upstream:
    if not isinstance(entry, dict):
        raise ValueError(f"KEYWARD_UPSTREAMS[{index}] must be an object")
    unknown = set(entry) - {"name", "kind", "url", "region"}
    if unknown:
        raise ValueError(f"KEYWARD_UPSTREAMS[{index}] has unknown fields: {', '.join(sorted(unknown))} "
                         "(keys are never part of it: KEYWARD_UPSTREAM_KEY_<NAME>)")
    name, kind, url, region = entry.get("name"), entry.get("kind"), entry.get("url"), entry.get("region")
    if not isinstance(name, str) or not NAME.match(name):
        raise ValueError(f"KEYWARD_UPSTREAMS[{index}].name must be lower-case letters, digits and dashes "
                         "(2 to 32, starting with a letter)")
    try:
        parsed_kind = Kind(kind)
    except ValueError:
        raise ValueError(f"KEYWARD_UPSTREAMS[{index}].kind must be one of "
                         f"{', '.join(k.value for k in Kind)}") from None
    parts = urlsplit(url) if isinstance(url, str) else None
    if (parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.username
            or parts.password or parts.query or parts.fragment):
        raise ValueError(f"KEYWARD_UPSTREAMS[{index}].url must be http(s)://host[:port][/path], without "
                         "credentials or a query")
    if parsed_kind is Kind.BEDROCK:
        if not isinstance(region, str) or not _REGION.match(region):
            raise ValueError(f"KEYWARD_UPSTREAMS[{index}].region must be an AWS region (us-east-1) for bedrock")
    elif region is not None:
        raise ValueError(f"KEYWARD_UPSTREAMS[{index}].region applies to bedrock only")
    assert isinstance(url, str)
    return Upstream(name, parsed_kind, url.rstrip("/"), region)


class Upstreams:
    """The configured upstreams, in order: ``openai`` and ``anthropic`` first, then the operator's."""

    __slots__ = ("_by_name", "_defaults", "all")

    def __init__(self, upstreams: list[Upstream]) -> None:
        self.all = tuple(upstreams)
        self._by_name = {u.name: u for u in upstreams}
        if len(self._by_name) != len(self.all):
            raise ValueError("KEYWARD_UPSTREAMS names an upstream twice")
        self._defaults: dict[Api, Upstream] = {}
        for api in Api:
            serving = self.serving(api)
            # An API's own kind first (the OpenAI API goes to OpenAI unless the catalog says otherwise).
            native = [u for u in serving if u.apis[0] is api]
            if serving and api is not Api.MCP:
                self._defaults[api] = (native or serving)[0]

    @classmethod
    def parse(cls, text: str | None, *, openai_url: str = "https://api.openai.com",
              anthropic_url: str = "https://api.anthropic.com") -> Upstreams:
        builtin = [Upstream("openai", Kind.OPENAI, openai_url.rstrip("/")),
                   Upstream("anthropic", Kind.ANTHROPIC, anthropic_url.rstrip("/"))]
        if not text or not text.strip():
            return cls(builtin)
        try:
            entries = json.loads(text)
        except ValueError:
            raise ValueError("KEYWARD_UPSTREAMS must be a JSON list of upstreams") from None
        if not isinstance(entries, list):
            raise ValueError("KEYWARD_UPSTREAMS must be a JSON list of upstreams")
        added = [_upstream(entry, index) for index, entry in enumerate(entries)]
        clash = {u.name for u in added} & {"openai", "anthropic"}
        if clash:
            raise ValueError(f"KEYWARD_UPSTREAMS cannot redefine {', '.join(sorted(clash))}: "
                             "set KEYWARD_OPENAI_UPSTREAM / KEYWARD_ANTHROPIC_UPSTREAM instead")
        taken = {u.name for u in added} & RESERVED
        if taken:
            raise ValueError(f"KEYWARD_UPSTREAMS cannot use the name {', '.join(sorted(taken))}: Envoy's own "
                             "cluster of that name exists")
        return cls(builtin + added)

    def get(self, name: str) -> Upstream | None:
        return self._by_name.get(name)

    def serving(self, api: Api) -> list[Upstream]:
        return [u for u in self.all if api in u.apis]

    def default(self, api: Api) -> Upstream | None:
        """The upstream a request of ``api`` goes to when the catalog does not name one."""
        return self._defaults.get(api)

    def mcp(self, server: str) -> Upstream | None:
        upstream = self._by_name.get(server)
        return upstream if upstream is not None and upstream.kind is Kind.MCP else None

    def names(self) -> list[str]:
        return [u.name for u in self.all]


def key_variable(name: str) -> str:
    """The environment variable holding an upstream's key (Envoy's side only).

    >>> key_variable("azure-east")
    'KEYWARD_UPSTREAM_KEY_AZURE_EAST'
    """
    return "KEYWARD_UPSTREAM_KEY_" + name.upper().replace("-", "_")
