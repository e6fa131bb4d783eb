"""A stand-in for every provider API the gateway reaches, for tests and demos. The project's one fake.

At the root it is OpenAI and Anthropic (``/v1/…``): requests carrying an ``anthropic-version``
header are answered in Anthropic's shapes and checked against ``MOCK_ANTHROPIC_KEY``, others in
OpenAI's against ``MOCK_OPENAI_KEY``, because both APIs share paths such as ``/v1/models``. Each named
upstream of ``MOCK_UPSTREAMS`` (``{"<name>": {"kind", "key", "region"}}``) is served under
``/x/<name>/`` in its kind's API, paths and shapes (:mod:`controlplane.stack.mock`): OpenAI-compatible
servers, Azure OpenAI, Gemini (native and OpenAI-compatible), Bedrock (SigV4-signed), Mistral, Anthropic.

It answers every endpoint family, streaming included (one event every ``MOCK_STREAM_INTERVAL`` seconds,
so a client can see that chunks arrive one by one), and it insists on the credential Envoy must inject:
a request without the right key (or signature) gets the provider's own 401/403, which is how the tests
see injection work. It records every request it receives (path, headers, body), refused ones included,
and serves the log at ``GET /__mock__/requests`` (``DELETE`` clears it) so tests can prove what did and
did not reach the provider.

It logs in Keyward's schema as ``mock-provider`` (:mod:`controlplane.logging`): uvicorn's lines, and
never a request's headers, so never the provider key Envoy injected.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from authz.upstreams import UPSTREAM_PATHS, Api, Kind
from controlplane.logging import configure as configure_logging
from controlplane.stack.mock import anthropic, bedrock, gemini, openai
from controlplane.stack.mock.core import Account, Mock, MockSettings, Recorder, UpstreamSpec, key_denial, root_denial


def _base(kind: Kind, api: Api) -> str:
    """Where ``api``'s families sit at an upstream of ``kind``: the path Envoy sends, without its slash."""
    return UPSTREAM_PATHS[kind][api].rstrip("/")


def _named(mock: Mock, name: str, spec: UpstreamSpec) -> list[BaseRoute]:
    kind = spec.kind
    account = Account(name, kind, spec.key, bedrock.sigv4_denial if kind is Kind.BEDROCK else key_denial,
                      region=spec.region)
    if kind in (Kind.OPENAI, Kind.OPENAI_COMPATIBLE, Kind.GEMINI_OPENAI):
        routes = mock.routes(account, _base(kind, Api.OPENAI), openai.TABLE)
    elif kind is Kind.MISTRAL:
        routes = mock.routes(account, _base(kind, Api.MISTRAL), openai.TABLE + openai.MISTRAL_TABLE)
    elif kind is Kind.AZURE:
        routes = openai.azure_routes(mock, account)
    elif kind is Kind.ANTHROPIC:
        routes = mock.routes(account, _base(kind, Api.ANTHROPIC), anthropic.NAMED_TABLE)
    elif kind is Kind.GEMINI:
        routes = mock.routes(account, _base(kind, Api.GEMINI), gemini.TABLE)
    elif kind is Kind.BEDROCK:
        routes = mock.routes(account, _base(kind, Api.BEDROCK), bedrock.TABLE)
    else:
        raise ValueError(f"the mock serves no {kind.value} upstream")
    return [Mount(f"/x/{name}", routes=routes)]


def create_app() -> Starlette:
    settings = MockSettings()
    configure_logging(settings.log_level, process="mock-provider")
    recorder = Recorder()
    mock = Mock(recorder, settings.stream_interval)
    root = Account(None, None, "", root_denial(settings))

    async def recorded(request: Request) -> Response:
        if request.method == "DELETE":
            recorder.requests.clear()
            return Response(status_code=204)
        return JSONResponse(recorder.requests)

    routes: list[BaseRoute] = [
        *mock.routes(root, "/v1", openai.TABLE),
        *mock.routes(root, "/v1", anthropic.TABLE),
        Route("/__mock__/requests", recorded, methods=["GET", "DELETE"]),
    ]
    for name, spec in settings.upstreams.items():
        routes += _named(mock, name, spec)
    return Starlette(routes=routes)
