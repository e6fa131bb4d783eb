"""Turn Envoy's ``CheckRequest`` into the one small value the pipeline works on.

Envoy is configured with ``encode_raw_headers: true`` so header values arrive as bytes: a client
can send any octet in a header, and a non-UTF-8 credential must become a clean 401, not a protobuf
decode error that would surface as a 503.

Invariants:

* a credential header (``authorization``, ``x-api-key``, ``api-key``, ``x-goog-api-key``) sent twice is marked
  :attr:`GatewayRequest.credential_ambiguous`, never resolved by "last one wins". Raw headers arrive
  one entry per header line for most names (``x-api-key`` sent twice is two entries), but Envoy's
  header map joins repeats of the headers it keeps in a fixed slot, ``authorization`` among them,
  into one value with commas (``Bearer A,Bearer B``, checked against Envoy 1.40), and without raw
  headers it joins every repeat that way. No credential contains a comma, so a comma in a
  credential header means two values and is ambiguous too;
* :attr:`GatewayRequest.request_id` is never empty: ``x-request-id``, else Envoy's stream id, else a
  fresh one. It keeps the client's bytes losslessly (undecodable ones as lone surrogates); the audit
  record, not this module, decides how to store them.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from envoy.service.auth.v3.external_auth_pb2 import CheckRequest
from google.protobuf.timestamp_pb2 import Timestamp

from authz.tokens import TOKEN_PREFIX

_PARTIAL_BODY_HEADER = "x-envoy-auth-partial-body"
_PREFIX = TOKEN_PREFIX.encode()
#: Where each SDK puts its key: OpenAI, Mistral, Bedrock (its API keys) and MCP ``Authorization``,
#: Anthropic ``x-api-key``, Azure OpenAI ``api-key``, Gemini ``x-goog-api-key``.
_CREDENTIAL_HEADERS = ("authorization", "x-api-key", "api-key", "x-goog-api-key")
#: The API whose SDK sends its key in that header, tried first for requests to it.
_NATIVE = {"/anthropic/": "x-api-key", "/azure/": "api-key", "/gemini/": "x-goog-api-key"}
_WANTED = (*_CREDENTIAL_HEADERS, "content-type", "content-length", "x-request-id", _PARTIAL_BODY_HEADER)


@dataclass(slots=True)
class GatewayRequest:
    request_id: str
    method: str
    path: str
    #: The presented credential, or ``None`` when it is absent or not even text.
    credential: str | None
    #: The credential header held bytes that are not ASCII.
    credential_unreadable: bool
    #: The media type lower-cased, its parameters as sent: a multipart boundary is case-sensitive.
    content_type: str
    body: bytes
    body_truncated: bool
    #: A credential header came more than once, or with more than one value.
    credential_ambiguous: bool = False
    #: When Envoy received the request (seconds since the epoch), if it said.
    started: float | None = None
    #: The declared body size (``content-length``), if the client declared one that is a number.
    content_length: int | None = None


def _bearer(authorization: bytes) -> bytes:
    scheme, _, value = authorization.strip().partition(b" ")
    # A bare value without a scheme is still a credential attempt; judge it, do not ignore it.
    return value.strip() if scheme.lower() == b"bearer" else authorization.strip()


def _credential_from(path: str, presented: dict[str, bytes]) -> tuple[str | None, bool]:
    """Pick the presented PAT. Clients may send a second, provider-style credential alongside it
    (an Anthropic client with a stale ``Authorization`` header, say), so a value with the Keyward
    prefix wins; otherwise the API's native header does (``x-api-key`` for Anthropic)."""
    native = next((header for prefix, header in _NATIVE.items() if path.startswith(prefix)), "authorization")
    candidates = []
    for header in (native, *_CREDENTIAL_HEADERS):
        value = presented.get(header)
        if value:
            value = _bearer(value) if header == "authorization" else value.strip()
            if value:
                candidates.append(value)
    if not candidates:
        return None, False
    raw = next((value for value in candidates if value.startswith(_PREFIX)), candidates[0])
    try:
        return raw.decode("ascii"), False
    except UnicodeDecodeError:
        return None, True


def parse(check: CheckRequest) -> GatewayRequest:
    http = check.attributes.request.http
    wanted: dict[str, bytes] = {}
    repeated = False
    if http.header_map.headers:
        for header in http.header_map.headers:
            key = header.key
            if key in _WANTED:
                if key in wanted and key in _CREDENTIAL_HEADERS:
                    repeated = True
                wanted[key] = header.raw_value or header.value.encode()
    else:  # Envoy configured without raw headers (older configs): the plain map, repeats comma-joined.
        for key in _WANTED:
            if key in http.headers:
                wanted[key] = http.headers[key].encode()
    credential, unreadable = _credential_from(http.path, wanted)
    length = wanted.get("content-length", b"")
    body = http.raw_body or http.body.encode()
    return GatewayRequest(
        request_id=wanted.get("x-request-id", b"").decode("utf-8", "surrogateescape") or http.id
        or str(uuid.uuid4()),
        method=http.method,
        path=http.path,
        credential=credential,
        credential_unreadable=unreadable,
        content_type=_content_type(wanted.get("content-type", b"")),
        body=body,
        body_truncated=wanted.get(_PARTIAL_BODY_HEADER) == b"true",
        credential_ambiguous=repeated or any(b"," in wanted.get(header, b"") for header in _CREDENTIAL_HEADERS),
        started=_seconds(check.attributes.request.time),
        content_length=int(length) if length.isdigit() and len(length) < 19 else None,
    )


def _content_type(value: bytes) -> str:
    """Lower-case the media type only. A boundary lower-cased here would let the gateway read one form
    while the provider reads another (parts under the real boundary, behind a decoy "preamble")."""
    media_type, separator, parameters = value.decode("latin-1").partition(";")
    return media_type.lower() + separator + parameters


def _seconds(stamp: Timestamp) -> float | None:
    return stamp.seconds + stamp.nanos / 1e9 if stamp.seconds or stamp.nanos else None
