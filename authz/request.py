"""Turn Envoy's ``CheckRequest`` into the one small value the pipeline works on.

Envoy is configured with ``encode_raw_headers: true`` so header values arrive as bytes: a client
can send any octet in a header, and a non-UTF-8 credential must become a clean 401, not a protobuf
decode error that would surface as a 503.
"""

from __future__ import annotations

from dataclasses import dataclass

from envoy.service.auth.v3.external_auth_pb2 import CheckRequest

from authz.tokens import TOKEN_PREFIX

_PARTIAL_BODY_HEADER = "x-envoy-auth-partial-body"
_PREFIX = TOKEN_PREFIX.encode()


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
    if http.header_map.headers:
        for header in http.header_map.headers:
            key = header.key
            if key in ("authorization", "x-api-key", "content-type", "x-request-id", _PARTIAL_BODY_HEADER):
                wanted[key] = header.raw_value or header.value.encode()
    else:  # Envoy configured without raw headers (older configs): the plain map.
        for key in ("authorization", "x-api-key", "content-type", "x-request-id", _PARTIAL_BODY_HEADER):
            if key in http.headers:
                wanted[key] = http.headers[key].encode()
    credential, unreadable = _credential_from(http.path, wanted.get("authorization"), wanted.get("x-api-key"))
    body = http.raw_body or http.body.encode()
    return GatewayRequest(
        request_id=wanted.get("x-request-id", b"").decode("ascii", "replace") or http.id,
        method=http.method,
        path=http.path,
        credential=credential,
        credential_unreadable=unreadable,
        content_type=wanted.get("content-type", b"").decode("latin-1").lower(),
        body=body,
        body_truncated=wanted.get(_PARTIAL_BODY_HEADER) == b"true",
    )
