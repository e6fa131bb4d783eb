"""Amazon Bedrock Runtime: Converse, ConverseStream, InvokeModel and InvokeModelWithResponseStream,
behind AWS Signature Version 4, checked as AWS documents it.

Every request must be signed for service ``bedrock`` in the upstream's region with its access key
(the key is ``<access key id>:<secret access key>``); :func:`verify` rebuilds the canonical request
from what arrived (method, the path as sent, double URI-encoded as non-S3 services do, the query, the
signed headers, the payload's SHA-256) and compares signatures. A request that fails gets AWS's 403:
``{"message": …}`` with the error in ``x-amzn-ErrorType``, as botocore reads it. This is how tests
prove Envoy signed a request with the right credentials.

Streams are AWS event streams (``application/vnd.amazon.eventstream``): binary frames with a prelude,
typed headers (``:event-type``, ``:content-type``, ``:message-type``) and CRC-32 checksums.
Usage: input 9 tokens, one output token per word.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import struct
import zlib
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, unquote

from starlette.responses import JSONResponse, Response, StreamingResponse

from . import anthropic
from .core import PROMPT_TOKENS, Call, Handler, Problem, limit, new_id, paced, words

SERVICE = "bedrock"
ALGORITHM = "AWS4-HMAC-SHA256"
#: How far a signature's time may be from the mock's clock, as AWS allows.
SKEW = timedelta(minutes=5)
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
EVENT_STREAM = "application/vnd.amazon.eventstream"
_MISMATCH = ("The request signature we calculated does not match the signature you provided. Check your AWS "
             "Secret Access Key and signing method. Consult the service documentation for details.")
_LATENCY_MS = 42


def _refusal(error: str, message: str) -> Response:
    return JSONResponse({"message": message}, 403, headers={"x-amzn-ErrorType": error,
                                                            "x-amzn-RequestId": new_id("", 32)})


def _normalized(path: str) -> str:
    """The path without dot segments and empty ones (AWS removes consecutive slashes), its ends kept."""
    segments: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if segments:
                segments.pop()
        elif segment and segment != ".":
            segments.append(segment)
    tail = "/" if path.endswith("/") and segments else ""
    return "/" + "/".join(segments) + tail


def canonical_uri(raw_path: str) -> str:
    """The canonical URI of a non-S3 service: the path as sent (encoded once) is encoded again."""
    return quote(_normalized(raw_path), safe="/~")


def canonical_query(raw_query: str) -> str:
    pairs = []
    for pair in raw_query.split("&") if raw_query else []:
        name, _, value = pair.partition("=")
        pairs.append((quote(unquote(name), safe="-_.~"), quote(unquote(value), safe="-_.~")))
    return "&".join(f"{name}={value}" for name, value in sorted(pairs))


def signing_key(secret: str, day: str, region: str, service: str) -> bytes:
    key = f"AWS4{secret}".encode()
    for part in (day, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def verify(call: Call, access_key: str, secret: str, region: str, *, at: datetime | None = None) -> Response | None:
    """None when the request carries a valid SigV4 signature by ``access_key`` for ``region``; else AWS's 403."""
    headers = call.request.headers
    authorization = headers.get("authorization")
    if not authorization:
        return _refusal("MissingAuthenticationTokenException", "Missing Authentication Token")
    algorithm, _, rest = authorization.partition(" ")
    fields = dict(part.strip().partition("=")[::2] for part in rest.split(","))
    credential, signed, signature = fields.get("Credential"), fields.get("SignedHeaders"), fields.get("Signature")
    if algorithm != ALGORITHM or not credential or not signed or not signature:
        return _refusal("IncompleteSignatureException",
                        f"Authorization header requires the {ALGORITHM} algorithm and 'Credential', 'SignedHeaders' "
                        "and 'Signature' parameters.")
    scope = credential.split("/")
    if len(scope) != 5 or scope[4] != "aws4_request":
        return _refusal("IncompleteSignatureException", f"Credential is malformed: {credential}")
    key_id, day, scoped_region, service, _ = scope
    if not hmac.compare_digest(key_id.encode(), access_key.encode()):
        return _refusal("UnrecognizedClientException", "The security token included in the request is invalid.")
    if scoped_region != region:
        return _refusal("InvalidSignatureException", f"Credential should be scoped to a valid region, not "
                                                     f"'{scoped_region}'.")
    if service != SERVICE:
        return _refusal("InvalidSignatureException", f"Credential should be scoped to correct service: '{SERVICE}'.")
    stamp = headers.get("x-amz-date", "")
    try:
        signed_at = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        return _refusal("IncompleteSignatureException", "Authorization requires an X-Amz-Date header (ISO 8601).")
    if stamp[:8] != day:
        return _refusal("InvalidSignatureException", "Date in Credential scope does not match YYYYMMDD from "
                                                     "ISO-8601 version of date from HTTP.")
    clock = at or datetime.now(UTC)
    if abs(clock - signed_at) > SKEW:
        return _refusal("InvalidSignatureException", f"Signature expired: {stamp} is now earlier than "
                                                     f"{(clock - SKEW).strftime('%Y%m%dT%H%M%SZ')}.")
    names = signed.split(";")
    if "host" not in names:
        return _refusal("InvalidSignatureException", "'Host' must be a signed header.")
    body_hash = hashlib.sha256(call.body).hexdigest()
    declared = headers.get("x-amz-content-sha256")
    if declared not in (None, UNSIGNED_PAYLOAD, body_hash):
        return _refusal("InvalidSignatureException", "The provided 'x-amz-content-sha256' header does not match "
                                                     "what was computed.")
    scope_text = f"{day}/{region}/{SERVICE}/aws4_request"
    canonical = "\n".join([
        call.request.method,
        canonical_uri(call.request.scope["raw_path"].decode("latin-1")),
        canonical_query(call.request.scope.get("query_string", b"").decode("latin-1")),
        "".join(f"{name}:{','.join(' '.join(v.split()) for v in headers.getlist(name))}\n" for name in names),
        signed,
        declared or body_hash,
    ])
    to_sign = "\n".join([ALGORITHM, stamp, scope_text, hashlib.sha256(canonical.encode()).hexdigest()])
    expected = hmac.new(signing_key(secret, day, region, SERVICE), to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        return _refusal("InvalidSignatureException", _MISMATCH)
    return None


def sigv4_denial(call: Call) -> Response | None:
    access_key, _, secret = call.account.key.partition(":")
    assert call.account.region is not None
    return verify(call, access_key, secret, call.account.region)


# -- event streams -------------------------------------------------------------------------------------------


def frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message: prelude (lengths, CRC), string-typed headers, payload, message CRC."""
    encoded = b"".join(
        bytes([len(name)]) + name.encode() + b"\x07" + struct.pack(">H", len(value.encode())) + value.encode()
        for name, value in headers.items()
    )
    prelude = struct.pack(">II", 12 + len(encoded) + len(payload) + 4, len(encoded))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    message = prelude + encoded + payload
    return message + struct.pack(">I", zlib.crc32(message))


def event(name: str, data: dict[str, Any]) -> bytes:
    return frame({":event-type": name, ":content-type": "application/json", ":message-type": "event"},
                 json.dumps(data).encode())


# -- the operations ------------------------------------------------------------------------------------------


def _usage(said: list[str]) -> dict[str, int]:
    return {"inputTokens": PROMPT_TOKENS, "outputTokens": len(said), "totalTokens": PROMPT_TOKENS + len(said)}


def _converse_said(call: Call) -> list[str]:
    body = call.json()
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        raise Problem(400, "1 validation error detected: Value null at 'messages' failed to satisfy constraint: "
                           "Member must not be null")
    config = body.get("inferenceConfig")
    return words(limit(config if isinstance(config, dict) else {}, "maxTokens"))


def _request_id() -> dict[str, str]:
    return {"x-amzn-RequestId": new_id("", 32)}


async def converse(call: Call) -> Response:
    said = _converse_said(call)
    return JSONResponse({"output": {"message": {"role": "assistant", "content": [{"text": "".join(said)}]}},
                         "stopReason": "end_turn", "usage": _usage(said), "metrics": {"latencyMs": _LATENCY_MS}},
                        headers=_request_id())


async def converse_stream(call: Call) -> Response:
    said = _converse_said(call)
    frames = [event("messageStart", {"role": "assistant"})]
    frames += [event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": word}}) for word in said]
    frames += [
        event("contentBlockStop", {"contentBlockIndex": 0}),
        event("messageStop", {"stopReason": "end_turn"}),
        event("metadata", {"usage": _usage(said), "metrics": {"latencyMs": _LATENCY_MS}}),
    ]
    return StreamingResponse(paced(frames, call.interval), media_type=EVENT_STREAM, headers=_request_id())


def _anthropic_said(call: Call, model_id: str) -> list[str]:
    body = call.json()
    if "anthropic." not in model_id:
        raise Problem(400, "The provided model identifier is invalid.")
    if not isinstance(body.get("anthropic_version"), str):
        raise Problem(400, "Malformed input request: #: required key [anthropic_version] not found, please reformat "
                           "your input and try again.")
    if not isinstance(body.get("messages"), list) or not isinstance(body.get("max_tokens"), int):
        raise Problem(400, "Malformed input request: #: required key [messages, max_tokens] not found, please "
                           "reformat your input and try again.")
    return words(limit(body, "max_tokens"))


def _token_headers(said: list[str]) -> dict[str, str]:
    return {"x-amzn-bedrock-input-token-count": str(PROMPT_TOKENS),
            "x-amzn-bedrock-output-token-count": str(len(said)),
            "x-amzn-bedrock-invocation-latency": str(_LATENCY_MS), **_request_id()}


async def invoke(call: Call) -> Response:
    model_id = call.request.path_params["model_id"]
    if "titan-embed" in model_id:
        body = call.json()
        if not isinstance(body.get("inputText"), str):
            raise Problem(400, "Malformed input request: #: required key [inputText] not found, please reformat "
                               "your input and try again.")
        return JSONResponse({"embedding": [0.1, 0.2, 0.3], "inputTextTokenCount": PROMPT_TOKENS},
                            headers=_token_headers([]))
    said = _anthropic_said(call, model_id)
    return JSONResponse(anthropic.message(model_id, said), headers=_token_headers(said))


async def invoke_stream(call: Call) -> Response:
    model_id = call.request.path_params["model_id"]
    said = _anthropic_said(call, model_id)
    events = [data for _, data in anthropic.stream_events(model_id, said)]
    events[-1] = {**events[-1], "amazon-bedrock-invocationMetrics": {
        "inputTokenCount": PROMPT_TOKENS, "outputTokenCount": len(said), "invocationLatency": _LATENCY_MS,
        "firstByteLatency": _LATENCY_MS // 2}}
    frames = [event("chunk", {"bytes": base64.b64encode(json.dumps(data).encode()).decode()}) for data in events]
    return StreamingResponse(paced(frames, call.interval), media_type=EVENT_STREAM,
                             headers={"x-amzn-bedrock-content-type": "application/json", **_request_id()})


TABLE: list[tuple[str, Handler, list[str]]] = [
    ("/model/{model_id:path}/converse", converse, ["POST"]),
    ("/model/{model_id:path}/converse-stream", converse_stream, ["POST"]),
    ("/model/{model_id:path}/invoke", invoke, ["POST"]),
    ("/model/{model_id:path}/invoke-with-response-stream", invoke_stream, ["POST"]),
]
