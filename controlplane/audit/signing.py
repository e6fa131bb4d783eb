"""Signed chain heads: proof that Keyward, and not merely someone with database access, wrote a row.

Every transaction that appends to an audit chain (an event, an ingest batch) ends by inserting a
``signed`` checkpoint (:meth:`Signer.checkpoint`): the new head's ``seq`` and hash, signed with the
control plane's Ed25519 key.
The key is a setting (``KEYWARD_AUDIT_SIGNING_KEY``), never stored in the database; its public half
is published (``GET /api/v1/audit/public-key``, and ``make up`` writes it next to the other secrets),
so anyone can verify an export or the store itself without a secret.

Verification markers (``audit_verifications``, :mod:`controlplane.audit.verify`) are signed with the
same key under a purpose of their own, so whoever can write to the database cannot claim "verified up
to seq N" either.

A row appended with a valid hash link but no signature after it (a forgery by a database role, or a
write that bypassed the control plane) is reported by ``keyward audit verify``; so is a checkpoint
whose signature does not verify.

The process installs its signer once at start-up (:func:`install`); :func:`current` is what writers
use. A writer with no signer installed fails loudly rather than leave an unsigned head.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from controlplane.audit import chain
from controlplane.core.keys import decode_key, encode_key

#: What a signature covers, besides the chain, seq and hash: the purpose, so a signature made for
#: anything else can never pass as a checkpoint's.
_PURPOSE = "keyward.audit.checkpoint.v1"
#: The purpose of an export's trailer signature (:mod:`controlplane.audit.exports`): never a checkpoint's.
_EXPORT_PURPOSE = "keyward.audit.export.v1"
#: The purpose of a verification marker's signature (:mod:`controlplane.audit.verify`): "this process
#: verified the chain up to seq N, whose hash is H". Never a checkpoint's, nor an export's.
_MARKER_PURPOSE = "keyward.audit.verification.v1"


def message(chain_name: str, seq: int, digest: bytes) -> bytes:
    return chain.ENCODE([_PURPOSE, chain_name, seq, bytes(digest).hex()]).encode()


def export_message(document: Mapping[str, Any]) -> bytes:
    """What an export's trailer signature covers: its whole document (chain, rows, digest, head, …)."""
    return chain.ENCODE([_EXPORT_PURPOSE, dict(document)]).encode()


def marker_message(document: Mapping[str, Any]) -> bytes:
    """What a verification marker's signature covers: its whole document (chain, kind, range, head, …)."""
    return chain.ENCODE([_MARKER_PURPOSE, dict(document)]).encode()


def new_private_key() -> str:
    """A fresh signing key, as the setting takes it."""
    return encode_key(Ed25519PrivateKey.generate().private_bytes_raw())


class Signer:
    def __init__(self, private_key: str) -> None:
        self._key = Ed25519PrivateKey.from_private_bytes(decode_key(private_key, "the audit signing key"))
        self.public_key = encode_key(self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))

    def sign(self, chain_name: str, seq: int, digest: bytes) -> bytes:
        return self._key.sign(message(chain_name, seq, digest))

    def sign_export(self, document: Mapping[str, Any]) -> bytes:
        return self._key.sign(export_message(document))

    def sign_marker(self, document: Mapping[str, Any]) -> bytes:
        return self._key.sign(marker_message(document))

    def checkpoint(self, chain_name: str, seq: int, digest: bytes) -> tuple[str, int, bytes, str, bytes]:
        """The ``audit_checkpoints`` row (chain, seq, hash, kind, signature) that signs a new head."""
        return chain_name, seq, bytes(digest), "signed", self.sign(chain_name, seq, digest)


class Verifier:
    def __init__(self, public_key: str) -> None:
        self._key = Ed25519PublicKey.from_public_bytes(decode_key(public_key, "the audit public key"))

    def valid(self, chain_name: str, seq: int, digest: bytes, signature: bytes) -> bool:
        try:
            self._key.verify(bytes(signature), message(chain_name, seq, digest))
        except InvalidSignature:
            return False
        return True

    def valid_export(self, document: Mapping[str, Any], signature: bytes) -> bool:
        try:
            self._key.verify(bytes(signature), export_message(document))
        except InvalidSignature:
            return False
        return True

    def valid_marker(self, document: Mapping[str, Any], signature: bytes) -> bool:
        try:
            self._key.verify(bytes(signature), marker_message(document))
        except InvalidSignature:
            return False
        return True


_installed: Signer | None = None


def install(signer: Signer) -> None:
    global _installed
    _installed = signer


def current() -> Signer:
    if _installed is None:
        raise RuntimeError("no audit signer installed: the process must call signing.install() at start-up")
    return _installed
