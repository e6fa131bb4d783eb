"""Turn Envoy's ``CheckRequest`` into the one small value the pipeline works on.

Envoy is configured with ``encode_raw_headers: true`` so header values arrive as bytes: a client
can send any octet in a header, and a non-UTF-8 credential must become a clean 401, not a protobuf
decode error that would surface as a 503.

Invariants:

* a credential header (``authorization``, ``x-api-key``) sent twice is marked
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
_CREDENTIAL_HEADERS = ("authorization", "x-api-key")
_WANTED = (*_CREDENTIAL_HEADERS, "content-type", "x-request-id", _PARTIAL_BODY_HEADER)


@dataclass(slots=True)
class GatewayRequest:
    request_id: str
    method: str
    path: str
    #: The presented credential, or ``None`` when it is absent or not even text.
    credential: str | None
    #: The credential header held bytes that are not ASCII.
    credential_unreadable: bool
    content_type: str
    body: bytes
    body_truncated: bool
    #: A credential header came more than once, or with more than one value.
    credential_ambiguous: bool = False
    #: When Envoy received the request (seconds since the epoch), if it said.
    started: float | None = None


def _bearer(authorization: bytes) -> bytes:
    scheme, _, value = authorization.strip().partition(b" ")
    # A bare value without a scheme is still a credential attempt; judge it, do not ignore it.
    return value.strip() if scheme.lower() == b"bearer" else authorization.strip()


def _credential_from(path: str, authorization: bytes | None, api_key: bytes | None) -> tuple[str | None, bool]:
    """Pick the presented PAT. Clients may send a second, provider-style credential alongside it
    (an Anthropic client with a stale ``Authorization`` header, say), so a value with the Keyward
    prefix wins; otherwise the API's native header does (``x-api-key`` for Anthropic)."""
    from_authorization = _bearer(authorization) if authorization else b""
    from_api_key = api_key.strip() if api_key else b""
    native_first = (
        (from_api_key, from_authorization) if path.startswith("/anthropic/") else (from_authorization, from_api_key)
    )
    candidates = [value for value in native_first if value]
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
    authorization, api_key = wanted.get("authorization"), wanted.get("x-api-key")
    credential, unreadable = _credential_from(http.path, authorization, api_key)
    body = http.raw_body or http.body.encode()
    return GatewayRequest(
        request_id=wanted.get("x-request-id", b"").decode("utf-8", "surrogateescape") or http.id
        or str(uuid.uuid4()),
        method=http.method,
        path=http.path,
        credential=credential,
        credential_unreadable=unreadable,
        content_type=wanted.get("content-type", b"").decode("latin-1").lower(),
        body=body,
        body_truncated=wanted.get(_PARTIAL_BODY_HEADER) == b"true",
        credential_ambiguous=repeated or b"," in (authorization or b"") or b"," in (api_key or b""),
        started=_seconds(check.attributes.request.time),
    )


def _seconds(stamp: Timestamp) -> float | None:
    return stamp.seconds + stamp.nanos / 1e9 if stamp.seconds or stamp.nanos else None
