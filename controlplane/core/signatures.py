"""The signature on every generic-webhook notification, and how a receiver checks it.

A webhook channel has a signing secret (shown once, when it is created or rotated). Each request
carries ``Keyward-Signature: t=<unix seconds>,v1=<hex>``, where ``<hex>`` is HMAC-SHA256 under the
secret of ``"<t>.<body>"`` (the timestamp, a dot, the raw request body bytes). Signing the timestamp
with the body lets a receiver refuse a replayed request: an old ``t`` is refused even though the
signature is valid. Several ``v1=`` values may appear (a receiver accepts the request if any matches),
so the scheme can carry two signatures while a secret is rotated.

A receiver verifies, before it parses the JSON (see docs/NOTIFICATIONS.md)::

    from controlplane.core.signatures import verify
    if not verify(secret, request.headers["Keyward-Signature"], raw_body):
        return 401

This module has no dependency beyond the standard library, so a receiver may copy it as is.
"""

from __future__ import annotations

import hashlib
import hmac
import time

HEADER = "Keyward-Signature"
#: How old (or how far in the future) a signature's timestamp may be, by default, in seconds.
TOLERANCE_SECONDS = 300


def _mac(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, *, timestamp: int | None = None) -> str:
    """The ``Keyward-Signature`` header value for ``body`` sent at ``timestamp`` (default: now)."""
    moment = int(time.time()) if timestamp is None else timestamp
    return f"t={moment},v1={_mac(secret, moment, body)}"


def verify(secret: str, header: str, body: bytes, *, tolerance: float = TOLERANCE_SECONDS,
           now: float | None = None) -> bool:
    """Whether ``header`` is a valid signature of ``body`` under ``secret``, made within ``tolerance``
    seconds of ``now``. Compares in constant time; a malformed header is simply not valid."""
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isdigit():
            timestamp = int(value)
        elif name == "v1" and value:
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = _mac(secret, timestamp, body)
    return any(hmac.compare_digest(expected, candidate) for candidate in candidates)
