"""Personal access token format.

A PAT looks like ``kw_pat_<30 random base62 chars><6 base62 chars of CRC32>``:

* ``kw_pat_`` is a fixed prefix so secret scanners (and people) recognise a leaked token;
* 30 base62 characters carry ~178 bits of entropy from :mod:`secrets`;
* the trailing checksum lets the gateway reject a mistyped or truncated token before any
  lookup, the way GitHub's ``ghp_`` tokens do.

Only :func:`hash_token` (HMAC-SHA256 under a server-side key) is ever stored or cached.
The control plane mints with :func:`generate_token`; authz checks with :func:`is_well_formed`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import zlib

__all__ = [
    "TOKEN_LENGTH",
    "TOKEN_PREFIX",
    "check_hash_key",
    "generate_token",
    "hash_token",
    "is_well_formed",
    "token_hint",
]

TOKEN_PREFIX = "kw_pat_"
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_RANDOM_CHARS = 30
_CHECKSUM_CHARS = 6
TOKEN_LENGTH = len(TOKEN_PREFIX) + _RANDOM_CHARS + _CHECKSUM_CHARS


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, rest = divmod(number, 62)
        digits.append(_ALPHABET[rest])
    return "".join(reversed(digits))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode("ascii")), _CHECKSUM_CHARS)


def generate_token(prefix: str = TOKEN_PREFIX) -> str:
    """Return a fresh PAT. The caller shows it once and stores only :func:`hash_token`.

    Other Keyward credentials (admin-API credentials, ``kw_api_``) share the format under their
    own prefix, so neither can be mistaken for the other.
    """
    body = "".join(secrets.choice(_ALPHABET) for _ in range(_RANDOM_CHARS))
    return f"{prefix}{body}{_checksum(body)}"


def is_well_formed(token: str, prefix: str = TOKEN_PREFIX) -> bool:
    """True when ``token`` has the prefix, the length, the alphabet and a valid checksum."""
    if len(token) != len(prefix) + _RANDOM_CHARS + _CHECKSUM_CHARS or not token.startswith(prefix):
        return False
    rest = token[len(prefix) :]
    if not rest.isascii() or not rest.isalnum():
        return False
    body, checksum = rest[:_RANDOM_CHARS], rest[_RANDOM_CHARS:]
    return hmac.compare_digest(_checksum(body), checksum)


def hash_token(token: str, key: bytes) -> str:
    """Keyed hash stored in Postgres and used as the cache key (hex, 64 chars)."""
    return hmac.new(key, token.encode("ascii"), hashlib.sha256).hexdigest()


def check_hash_key(value: str) -> str:
    """Validate ``KEYWARD_TOKEN_HASH_KEY`` (hex, at least 32 bytes); both processes' settings use this."""
    try:
        raw = bytes.fromhex(value)
    except ValueError as exc:
        raise ValueError("KEYWARD_TOKEN_HASH_KEY must be hex") from exc
    if len(raw) < 32:
        raise ValueError("KEYWARD_TOKEN_HASH_KEY must be at least 32 bytes (64 hex characters)")
    return value


def token_hint(token: str, prefix: str = TOKEN_PREFIX) -> str:
    """What lists may show of a token: its prefix and its last four characters."""
    return f"{prefix}…{token[-4:]}"
