"""The audit signing keys' text form: 32 raw bytes (an Ed25519 seed or public key) in url-safe base64.

Here, below both the settings that validate ``KEYWARD_AUDIT_SIGNING_KEY`` and the signer that uses it.
"""

from __future__ import annotations

import base64
import binascii


def decode_key(value: str, what: str) -> bytes:
    """32 bytes from base64 in either alphabet, with or without padding; a clear error otherwise."""
    text = value.strip()
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"{what} must be base64 (url-safe alphabet)") from exc
    if len(raw) != 32:
        raise ValueError(f"{what} must be 32 bytes, base64-encoded")
    return raw


def encode_key(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def check_private_key(value: str) -> str:
    """Validate ``KEYWARD_AUDIT_SIGNING_KEY`` (an Ed25519 seed, 32 bytes, base64)."""
    decode_key(value, "KEYWARD_AUDIT_SIGNING_KEY")
    return value
