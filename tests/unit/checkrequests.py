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
from urllib.parse import quote

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


# curl $GW/openai/v1/fine_tuning/jobs -H "Authorization: Bearer $PAT" -H 'Content-Type: application/json' -d '{"model":"gpt-4o-mini","training_file":"file-abc123"}'
def openai_fine_tuning_job(token: str) -> CheckRequest:
    return check_request("POST", "/openai/v1/fine_tuning/jobs", {**_JSON, **_bearer(token)},
                         _json({"model": OPENAI_MODEL, "training_file": "file-abc123"}))


# -- endpoint families ------------------------------------------------------------------------------

# curl $GW/openai/v1/images/generations -H "Authorization: Bearer $PAT" -H 'Content-Type: application/json' -d '{"model":"gpt-image-1","prompt":"a lighthouse"}'
def openai_image(token: str, model: str = "gpt-image-1") -> CheckRequest:
    return check_request("POST", "/openai/v1/images/generations", {**_OPENAI_SDK, **_bearer(token)},
                         _json({"model": model, "prompt": "a lighthouse"}))


# curl $GW/openai/v1/batches -H "Authorization: Bearer $PAT" -H 'Content-Type: application/json' -d '{"input_file_id":"file-abc123","endpoint":"/v1/chat/completions","completion_window":"24h"}'
def openai_batch(token: str, endpoint: object = "/v1/chat/completions") -> CheckRequest:
    body = _json({"input_file_id": "file-abc123", "endpoint": endpoint, "completion_window": "24h"})
    return check_request("POST", "/openai/v1/batches", {**_OPENAI_SDK, **_bearer(token)}, body)


# curl $GW/anthropic/v1/messages/batches -H "x-api-key: $PAT" -H 'anthropic-version: 2023-06-01' -H 'Content-Type: application/json' -d '{"requests":[{"custom_id":"r0","params":{"model":"claude-3-5-haiku-latest","max_tokens":64,"messages":[{"role":"user","content":"Say hi"}]}}]}'
def anthropic_batch(token: str, models: Sequence[object] = (ANTHROPIC_MODEL,)) -> CheckRequest:
    requests = [{"custom_id": f"r{index}", "params": {"model": model, "max_tokens": 64,
                                                       "messages": [{"role": "user", "content": "Say hi"}]}}
                for index, model in enumerate(models)]
    return check_request("POST", "/anthropic/v1/messages/batches", {**_ANTHROPIC_SDK, "x-api-key": token},
                         _json({"requests": requests}))


# -- uploads ----------------------------------------------------------------------------------------

#: What httpx (under the OpenAI SDK) uses: 32 lower-case hex digits.
BOUNDARY = "d3a3bb4f7565d98774f756c84e738921"
RECORDING = b"RIFF" + bytes(range(256)) * 4096  # a megabyte of "audio"


def form(fields: Sequence[tuple[str, bytes]], boundary: str = BOUNDARY) -> bytes:
    """A multipart/form-data body as httpx writes it: the fields in order, a ``file`` field as a WAV upload."""
    parts = []
    for name, value in fields:
        file = '; filename="speech.wav"\r\nContent-Type: audio/wav' if name == "file" else ""
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"{file}\r\n\r\n'.encode()
                     + value + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


# curl $GW/openai/v1/audio/transcriptions -H "Authorization: Bearer $PAT" -F model=whisper-1 -F file=@speech.wav   (Envoy passes authz the first 64 KiB and adds x-envoy-auth-partial-body: true)
def openai_transcription(
    token: str,
    model: str = "whisper-1",
    *,
    body: bytes | None = None,
    content_type: str = f"multipart/form-data; boundary={BOUNDARY}",
    declared: int | bool | None = True,
    head: int = 65_536,
    path: str = "/openai/v1/audio/transcriptions",
) -> CheckRequest:
    """``declared``: True for the body's true size, an int to claim another, None for no content-length
    (a chunked upload)."""
    whole = body if body is not None else form([("model", model.encode()), ("file", RECORDING)])
    length = str(len(whole)) if declared is True else (None if declared is None else str(declared))
    headers = {"content-type": content_type, **_bearer(token), "content-length": length}
    if len(whole) > head:
        headers[PARTIAL_BODY_HEADER] = "true"
    return check_request("POST", path, headers, whole[:head])


# curl "$GW/azure/openai/deployments/whisper/audio/transcriptions?api-version=2024-10-21" -H "api-key: $PAT" -F model=whisper -F file=@speech.wav
def azure_transcription(token: str, deployment: str = "whisper") -> CheckRequest:
    whole = form([("model", deployment.encode()), ("file", RECORDING)])
    return check_request("POST", f"/azure/openai/deployments/{deployment}/audio/transcriptions?api-version=2024-10-21",
                         {"content-type": f"multipart/form-data; boundary={BOUNDARY}", "api-key": token,
                          "content-length": str(len(whole)), PARTIAL_BODY_HEADER: "true"}, whole[:65_536])


# -- the other APIs, as their SDKs send them ---------------------------------------------------------

# curl "$GW/azure/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21" -H "api-key: $PAT" -H 'Content-Type: application/json' -d '{"model":"gpt-4o","messages":[{"role":"user","content":"Say hi"}]}'
def azure_chat(token: str, deployment: str = "gpt-4o", *, header: str = "api-key") -> CheckRequest:
    credential = _bearer(token) if header == "authorization" else {header: token}
    return check_request("POST", f"/azure/openai/deployments/{quote(deployment, safe='')}/chat/completions"
                         "?api-version=2024-10-21",
                         {**_JSON, "accept": "application/json", "user-agent": "AzureOpenAI/Python 1.99.0",
                          **credential}, chat_body(deployment))


# curl $GW/gemini/v1beta/models/gemini-2.0-flash:generateContent -H "x-goog-api-key: $PAT" -H 'Content-Type: application/json' -d '{"contents":[{"parts":[{"text":"Say hi"}],"role":"user"}]}'
def gemini_generate(token: str, model: str = "gemini-2.0-flash", *, header: str = "x-goog-api-key") -> CheckRequest:
    return check_request("POST", f"/gemini/v1beta/models/{model}:generateContent",
                         {**_JSON, "user-agent": "google-genai-sdk/1.30.0 gl-python/3.11.7", header: token},
                         _json({"contents": [{"parts": [{"text": "Say hi"}], "role": "user"}]}))


# curl $GW/gemini/v1beta/models -H "x-goog-api-key: $PAT"
def gemini_models(token: str) -> CheckRequest:
    return check_request("GET", "/gemini/v1beta/models", {"x-goog-api-key": token})


# curl "$GW/bedrock/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse" -H "Authorization: Bearer $PAT" -H 'Content-Type: application/json' -d '{"messages":[{"role":"user","content":[{"text":"Say hi"}]}]}'   (boto3 with AWS_BEARER_TOKEN_BEDROCK=$PAT)
def bedrock_converse(token: str, model_id: str = "anthropic.claude-3-haiku-20240307-v1:0") -> CheckRequest:
    return check_request("POST", f"/bedrock/model/{quote(model_id, safe='')}/converse",
                         {**_JSON, "user-agent": "Boto3/1.40.0 md/Botocore#1.40.0", **_bearer(token)},
                         _json({"messages": [{"role": "user", "content": [{"text": "Say hi"}]}]}))


# curl $GW/mistral/v1/chat/completions -H "Authorization: Bearer $PAT" -H 'Content-Type: application/json' -d '{"model":"mistral-large-latest","messages":[{"role":"user","content":"Say hi"}],"stream":true}'
def mistral_chat(token: str, model: str = "mistral-large-latest", *, stream: bool = False) -> CheckRequest:
    body = _json({"model": model, "messages": [{"role": "user", "content": "Say hi"}], "stream": stream})
    return check_request("POST", "/mistral/v1/chat/completions", {**_JSON, **_bearer(token)}, body)


# curl $GW/openai/v1/chat/completions -H "Authorization: Bearer $PAT" -H 'Content-Type: application/json' -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hi"}],"stream":true}'
def openai_stream(token: str, model: str = OPENAI_MODEL, **extra: object) -> CheckRequest:
    body = _json({"model": model, "messages": [{"role": "user", "content": "Say hi"}], "stream": True, **extra})
    return check_request("POST", "/openai/v1/chat/completions", {**_OPENAI_SDK, **_bearer(token)}, body)


# -- MCP (Streamable HTTP, as the MCP SDK sends it) ----------------------------------------------------

_MCP_CLIENT = {**_JSON, "accept": "application/json, text/event-stream", "mcp-protocol-version": "2025-06-18",
               "mcp-session-id": "5f1c0f6e8b2d4a7c9e3b1a0d2c4e6f80"}


# curl $GW/mcp/docs -H "Authorization: Bearer $PAT" -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' -d '{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"search_docs","arguments":{"query":"budgets"}}}'
def mcp_call(token: str, server: str = "docs", tool: str = "search_docs", rpc_id: object = 7) -> CheckRequest:
    body = _json({"jsonrpc": "2.0", "id": rpc_id, "method": "tools/call",
                  "params": {"name": tool, "arguments": {"query": "budgets"}}})
    return mcp_post(token, body, server)


# curl $GW/mcp/docs -H "Authorization: Bearer $PAT" -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' -d "$BODY"
def mcp_post(token: str, body: bytes, server: str = "docs") -> CheckRequest:
    return check_request("POST", f"/mcp/{server}", {**_MCP_CLIENT, **_bearer(token)}, body)


# curl -N $GW/mcp/docs -H "Authorization: Bearer $PAT" -H 'Accept: text/event-stream' -H 'Mcp-Session-Id: 5f1c…'   (the server's event stream; DELETE ends the session)
def mcp_stream(token: str, server: str = "docs", method: str = "GET") -> CheckRequest:
    return check_request(method, f"/mcp/{server}", {"accept": "text/event-stream", **_bearer(token),
                                                     "mcp-session-id": _MCP_CLIENT["mcp-session-id"]})
