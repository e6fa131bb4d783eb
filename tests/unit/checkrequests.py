# ruff: noqa: E501  (each curl command stays on one line so it can be pasted into a shell)
"""Canned Envoy ``CheckRequest``s, shaped the way the gateway's ext_authz filter sends them.

The filter runs with ``encode_raw_headers: true`` and ``with_request_body.pack_as_bytes: true``, so
header values arrive as bytes in ``attributes.request.http.header_map.headers[]`` (``key`` +
``raw_value``, lower-case names, pseudo-headers included) and the body arrives in ``raw_body``.
``attributes.request.http.id`` is Envoy's numeric stream id; the audit id is the ``x-request-id``
header Envoy generates.

Each canned request is preceded by the curl command that would produce it, with ``$GW`` the gateway's
URL and ``$PAT`` a personal access token (the ``token`` argument).
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Mapping, Sequence

from envoy.config.core.v3.base_pb2 import HeaderValue
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest

HOST = "gateway.keyward.test:8080"
PARTIAL_BODY_HEADER = "x-envoy-auth-partial-body"

#: ``None`` as a value drops a header the builder would otherwise send (e.g. ``x-request-id``).
Headers = Mapping[str, str | bytes | None]

_stream_ids = itertools.count(7_140_265_520_518_711_301)


def check_request(
    method: str,
    path: str,
    headers: Headers | None = None,
    body: bytes = b"",
    *,
    request_id: str | None = None,
    raw_headers: bool = True,
    repeated: Sequence[tuple[str, str | bytes]] = (),
) -> CheckRequest:
    """A CheckRequest for one HTTP request; ``raw_headers=False`` mimics a config without raw headers.

    ``repeated`` headers are sent after the others, as further entries even when ``headers`` already
    has one of that name (Envoy's raw header map); without raw headers they are comma-joined to it,
    as Envoy does for its plain map.
    """
    request_id = request_id or str(uuid.uuid4())
    values: dict[str, bytes] = {
        ":authority": HOST.encode(),
        ":path": path.encode(),
        ":method": method.encode(),
        ":scheme": b"http",
        "x-request-id": request_id.encode(),
    }
    if body:
        values["content-length"] = str(len(body)).encode()
    for key, value in (headers or {}).items():
        if value is None:
            values.pop(key.lower(), None)
        else:
            values[key.lower()] = value if isinstance(value, bytes) else value.encode("latin-1")

    check = CheckRequest()
    http = check.attributes.request.http
    http.id = str(next(_stream_ids))
    http.method = method
    http.path = path
    http.host = HOST
    http.scheme = "http"
    http.protocol = "HTTP/1.1"
    http.size = len(body)
    extra = [(key.lower(), value if isinstance(value, bytes) else value.encode("latin-1")) for key, value in repeated]
    if raw_headers:
        http.header_map.headers.extend(HeaderValue(key=k, raw_value=v) for k, v in [*values.items(), *extra])
        http.raw_body = body
    else:
        for key, value in values.items():
            http.headers[key] = value.decode()
        for key, value in extra:
            http.headers[key] = f"{http.headers[key]},{value.decode()}" if key in http.headers else value.decode()
        http.body = body.decode()
    return check


def mistyped(token: str) -> str:
    """``token`` with one character of its random part changed: right shape, wrong checksum."""
    position = len("kw_pat_") + 3
    return token[:position] + ("b" if token[position] == "a" else "a") + token[position + 1 :]


def _json(document: object) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


_JSON = {"content-type": "application/json"}
# What the official SDKs send besides the credential.
_OPENAI_SDK = {**_JSON, "accept": "application/json", "user-agent": "OpenAI/Python 1.99.0"}
_ANTHROPIC_SDK = {**_JSON, "accept": "application/json", "anthropic-version": "2023-06-01",
                  "user-agent": "Anthropic/Python 0.60.0"}

OPENAI_MODEL = "gpt-4o-mini"
ANTHROPIC_MODEL = "claude-3-5-haiku-latest"


def chat_body(model: object = OPENAI_MODEL) -> bytes:
    return _json({"model": model, "messages": [{"role": "user", "content": "Say hi"}]})


# -- the happy paths of the two SDKs --------------------------------------------------------------

# curl $GW/openai/v1/chat/completions -H "Authorization: Bearer $PAT" -H 'Content-Type: application/json' -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hi"}]}'
def openai_chat(
    token: str, model: str = OPENAI_MODEL, *, request_id: str | None = None, raw_headers: bool = True
) -> CheckRequest:
    return check_request("POST", "/openai/v1/chat/completions", {**_OPENAI_SDK, **_bearer(token)},
                         chat_body(model), request_id=request_id, raw_headers=raw_headers)


# curl $GW/anthropic/v1/messages -H "x-api-key: $PAT" -H 'anthropic-version: 2023-06-01' -H 'Content-Type: application/json' -d '{"model":"claude-3-5-haiku-latest","max_tokens":64,"messages":[{"role":"user","content":"Say hi"}]}'
def anthropic_messages(
    token: str, model: str = ANTHROPIC_MODEL, *, request_id: str | None = None
) -> CheckRequest:
    body = _json({"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": "Say hi"}]})
    return check_request("POST", "/anthropic/v1/messages", {**_ANTHROPIC_SDK, "x-api-key": token},
                         body, request_id=request_id)


# curl $GW/openai/v1/models -H "Authorization: Bearer $PAT"
def openai_models(token: str) -> CheckRequest:
    return check_request("GET", "/openai/v1/models", {"accept": "application/json", **_bearer(token)})


# curl "$GW/anthropic/v1/models?limit=20" -H "x-api-key: $PAT" -H 'anthropic-version: 2023-06-01'
def anthropic_models(token: str) -> CheckRequest:
    return check_request("GET", "/anthropic/v1/models?limit=20",
                         {"anthropic-version": "2023-06-01", "x-api-key": token})


# curl $GW/openai/v1/models/gpt-4o-mini -H "Authorization: Bearer $PAT"
def openai_model(token: str, model: str = OPENAI_MODEL) -> CheckRequest:
    return check_request("GET", f"/openai/v1/models/{model}", _bearer(token))


# -- credentials ----------------------------------------------------------------------------------

# curl $GW/openai/v1/chat/completions -H 'Content-Type: application/json' -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hi"}]}'
def no_credential() -> CheckRequest:
    return check_request("POST", "/openai/v1/chat/completions", _JSON, chat_body())


# curl $GW/openai/v1/chat/completions -H 'Content-Type: application/json' -d 'hello, is this thing on?'
def no_credential_garbage_body() -> CheckRequest:
    return check_request("POST", "/openai/v1/chat/completions", _JSON, b"hello, is this thing on?")


# curl $GW/openai/v1/chat/completions -H "Authorization: $VALUE" -H 'Content-Type: application/json' -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hi"}]}'
def with_authorization(value: str | bytes) -> CheckRequest:
    return check_request("POST", "/openai/v1/chat/completions", {**_JSON, "authorization": value}, chat_body())


# curl $GW/openai/v1/chat/completions -H $'Authorization: Bearer \xff\xfe' -H 'Content-Type: application/json' -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hi"}]}'
def non_utf8_bearer() -> CheckRequest:
    return with_authorization(b"Bearer \xff\xfe")


# curl $GW/anthropic/v1/messages -H 'x-api-key;' -H 'anthropic-version: 2023-06-01' -H 'Content-Type: application/json' -d '{"model":"claude-3-5-haiku-latest","max_tokens":64,"messages":[{"role":"user","content":"Say hi"}]}'
def empty_x_api_key() -> CheckRequest:
    return anthropic_messages("")


# curl $GW/anthropic/v1/messages -H "x-api-key: $PAT" -H "x-api-key: $OTHER" -H 'anthropic-version: 2023-06-01' -H 'Content-Type: application/json' -d '{"model":"claude-3-5-haiku-latest","max_tokens":64,"messages":[{"role":"user","content":"Say hi"}]}'   (two entries in Envoy's raw header map)
def two_x_api_keys(token: str, other: str, *, raw_headers: bool = True) -> CheckRequest:
    body = _json({"model": ANTHROPIC_MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": "Say hi"}]})
    return check_request("POST", "/anthropic/v1/messages", {**_ANTHROPIC_SDK, "x-api-key": token}, body,
                         raw_headers=raw_headers, repeated=[("x-api-key", other)])


# curl $GW/openai/v1/chat/completions -H "Authorization: Bearer $PAT" -H "Authorization: Bearer $OTHER" -H 'Content-Type: application/json' -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hi"}]}'   (Envoy joins the two into one value: "Bearer $PAT,Bearer $OTHER")
def two_authorizations(token: str, other: str) -> CheckRequest:
    return with_authorization(f"Bearer {token},Bearer {other}")


# -- bodies ---------------------------------------------------------------------------------------

# curl $GW/openai/v1/chat/completions -H "Authorization: Bearer $PAT" -H 'Content-Type: application/json' --data-binary @two-megabytes.json   (Envoy forwards the first max_request_bytes and adds x-envoy-auth-partial-body: true)
def truncated_chat(token: str) -> CheckRequest:
    body = _json({"model": OPENAI_MODEL, "messages": [{"role": "user", "content": "x" * 4096}]})
    return check_request("POST", "/openai/v1/chat/completions",
                         {**_JSON, **_bearer(token), PARTIAL_BODY_HEADER: "true"}, body[:1024])


# curl $GW/openai/v1/chat/completions -H "Authorization: Bearer $PAT" -H 'Content-Type: application/json' -d "$BODY"
def chat_with_body(token: str, body: bytes, content_type: str = "application/json") -> CheckRequest:
    return check_request("POST", "/openai/v1/chat/completions",
                         {"content-type": content_type, **_bearer(token)}, body)


# curl $GW/openai/v1/chat/completions -H "Authorization: Bearer $PAT" -H 'Content-Type: application/json' -d 'model=gpt-4o-mini&stream=true'
def garbage_body(token: str) -> CheckRequest:
    return chat_with_body(token, b"model=gpt-4o-mini&stream=true")


# curl $GW/openai/v1/chat/completions -H "Authorization: Bearer $PAT" -H 'Content-Type: application/json' -d '[{"model":"gpt-4o-mini"}]'
def array_body(token: str) -> CheckRequest:
    return chat_with_body(token, _json([{"model": OPENAI_MODEL}]))


# curl $GW/openai/v1/chat/completions -H "Authorization: Bearer $PAT" -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hi"}]}'   (curl -d defaults to a form content type)
def form_encoded_body(token: str) -> CheckRequest:
    return chat_with_body(token, chat_body(), "application/x-www-form-urlencoded")


# curl $GW/openai/v1/chat/completions -H "Authorization: Bearer $PAT" -H 'Content-Type: application/json' -d '{"model":"gpt-4o-mini","model":"gpt-4o","messages":[{"role":"user","content":"Say hi"}]}'
def duplicate_model(token: str, first: str = OPENAI_MODEL, second: str = "gpt-4o") -> CheckRequest:
    body = (b'{"model":' + json.dumps(first).encode() + b',"model":' + json.dumps(second).encode()
            + b',"messages":[{"role":"user","content":"Say hi"}]}')
    return chat_with_body(token, body)


# curl $GW/openai/v1/chat/completions -H "Authorization: Bearer $PAT" -H 'Content-Type: application/json' -d '{"messages":[{"role":"user","content":"Say hi"}]}'
def body_without_model(token: str) -> CheckRequest:
    return chat_with_body(token, _json({"messages": [{"role": "user", "content": "Say hi"}]}))


# -- routes ---------------------------------------------------------------------------------------

# curl $GW/openai/v1/files -H "Authorization: Bearer $PAT"
def openai_files(token: str) -> CheckRequest:
    return check_request("GET", "/openai/v1/files", _bearer(token))


# curl -X DELETE $GW/openai/v1/models/ft:gpt-4o-mini:acme::abc123 -H "Authorization: Bearer $PAT"
def delete_model(token: str) -> CheckRequest:
    return check_request("DELETE", "/openai/v1/models/ft:gpt-4o-mini:acme::abc123", _bearer(token))


# curl $GW/v1/chat/completions -H "Authorization: Bearer $PAT" -H 'Content-Type: application/json' -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hi"}]}'
def unprefixed_chat(token: str) -> CheckRequest:
    return check_request("POST", "/v1/chat/completions", {**_JSON, **_bearer(token)}, chat_body())


# curl $GW/anthropic/v1/complete -H "x-api-key: $PAT" -H 'anthropic-version: 2023-06-01' -H 'Content-Type: application/json' -d '{"model":"claude-2.1","prompt":"\n\nHuman: hi\n\nAssistant:","max_tokens_to_sample":64}'
def anthropic_legacy_complete(token: str) -> CheckRequest:
    body = _json({"model": "claude-2.1", "prompt": "\n\nHuman: hi\n\nAssistant:", "max_tokens_to_sample": 64})
    return check_request("POST", "/anthropic/v1/complete", {**_ANTHROPIC_SDK, "x-api-key": token}, body)
