"""``GET …/models``, answered by the gateway: the models the caller's token may use, in the API's shape.

The gateway answers rather than the provider because no provider knows the token's catalog, and one
base URL may reach several upstreams (OpenAI, Azure, a vLLM server) whose lists would each be partial.
A model is listed when the token may call it through this API: an exact catalog entry names it; a
pattern (``gpt-4o*``) lists the models of the bundled price table that match it for that upstream's
provider. A self-hosted model is listed when the catalog names it exactly.

The answer is computed per request (a listing is rare and costs well under a millisecond for a
catalog of a few entries) and never touches the network.
"""

from __future__ import annotations

import json
from functools import cache

import genai_prices

from authz.cache import TokenRecord
from authz.prices import bundled_provider
from authz.upstreams import Api, Upstreams


@cache
def _known(price_provider: str) -> tuple[str, ...]:
    """The model ids the bundled price table knows for a provider (e.g. ``google``)."""
    for provider in genai_prices.data_snapshot.get_snapshot().providers:
        if provider.id == price_provider:
            return tuple(sorted(model.id for model in provider.models))
    return ()


def models_for(record: TokenRecord, api: Api, upstreams: Upstreams) -> list[tuple[str, str]]:
    """``(model, upstream)`` pairs the token may call through ``api``, sorted by model."""
    found: dict[str, str] = {}
    profile = record.profile
    if profile is None:  # a token from before teams: its own list is its catalog, on the default upstream
        default = upstreams.default(api)
        offered = [(catalog, default.name if default else "") for catalog in (record.catalog,)]
    else:
        offered = profile.offered(api.value, record.environment)
    for catalog, named in offered:
        upstream = upstreams.get(named) if named else upstreams.default(api)
        if upstream is None or api not in upstream.apis:
            continue
        candidates = list(catalog.entries)
        price_provider = bundled_provider(upstream.name)
        if price_provider is not None:
            candidates += _known(price_provider)
        for model in candidates:
            if model in found or any(c in model for c in "*?[") or not catalog.allows(model):
                continue
            # The first entry offering a model decides its upstream (as a request's routing does).
            if profile is not None and profile.route(api.value, record.environment, model) != (named or ""):
                continue
            if record.catalog.allows(model):
                found[model] = upstream.name
    return sorted(found.items())


def listing(record: TokenRecord, api: Api, upstreams: Upstreams) -> bytes:
    """The body of the API's own model list."""
    models = models_for(record, api, upstreams)
    if api is Api.ANTHROPIC:
        data = [{"type": "model", "id": m, "display_name": m, "created_at": "1970-01-01T00:00:00Z"} for m, _ in models]
        document: dict = {"data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
                          "last_id": data[-1]["id"] if data else None}
    elif api is Api.GEMINI:
        document = {"models": [{"name": f"models/{m}", "baseModelId": m, "displayName": m,
                                "supportedGenerationMethods": ["generateContent", "countTokens", "embedContent"]}
                               for m, _ in models]}
    else:
        document = {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": upstream}
                                               for m, upstream in models]}
    return json.dumps(document).encode()
