"""Every kind of Keyward credential, in one place: its prefix, how it is minted, hashed, shown and checked.

A credential is ``<prefix><30 random base62 characters><6-character checksum>`` (the token format of
:mod:`authz.tokens`, shared with the gateway, which must not import control-plane code). Only its
keyed hash is stored; the secret is returned once by :func:`issue` and never again. Lists show the
display hint: the prefix and the last four characters.

========================  ===============  ==========================================================
kind                      prefix           checked by
========================  ===============  ==========================================================
personal access token     ``kw_pat_``      authz, on every gateway request (from its cache)
admin-API credential      ``kw_api_``      :func:`authenticate` against ``api_credentials``
SCIM credential           ``kw_scim_``     :func:`authenticate` against ``scim_credentials``
browser session           ``kw_sess_``     :func:`authenticate` against ``sign_ins`` (kind web)
``keyward login``         ``kw_cli_``      :func:`authenticate` against ``sign_ins`` (kind cli)
bootstrap admin token     ``kw_admin_``    :func:`matches`, against the configured value
========================  ===============  ==========================================================

The prefixes differ so that a credential of one kind can never be mistaken for another, and secret
scanners can tell them apart.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from authz.tokens import TOKEN_PREFIX, generate_token, hash_token, is_well_formed, token_hint

#: ``last_used_at`` is written at most this often per credential: a busy credential costs one UPDATE
#: a minute, not one per request.
LAST_USED_RESOLUTION = timedelta(minutes=1)

Row = TypeVar("Row")


@dataclass(frozen=True, slots=True)
class Kind:
    name: str
    prefix: str

    def well_formed(self, presented: str) -> bool:
        """Prefix, length, alphabet and checksum: a typo or another kind is refused before any lookup."""
        return is_well_formed(presented, self.prefix)

    def hint(self, secret: str) -> str:
        return token_hint(secret, self.prefix)


PAT = Kind("personal access token", TOKEN_PREFIX)
API = Kind("admin-API credential", "kw_api_")
SCIM = Kind("SCIM credential", "kw_scim_")
WEB_SESSION = Kind("browser session", "kw_sess_")
CLI_SIGN_IN = Kind("keyward login credential", "kw_cli_")
BOOTSTRAP = Kind("bootstrap admin token", "kw_admin_")
CONSOLE_LINK = Kind("one-time console sign-in link", "kw_link_")


@dataclass(frozen=True, slots=True)
class Issued:
    """A new credential: the secret (shown once), what is stored of it, and what lists show."""

    secret: str
    token_hash: str
    hint: str


def issue(kind: Kind, hash_key: bytes) -> Issued:
    secret = generate_token(kind.prefix)
    return Issued(secret=secret, token_hash=hash_token(secret, hash_key), hint=kind.hint(secret))


def matches(presented: str, configured: str | None) -> bool:
    """A secret configured rather than stored (the bootstrap admin token, the ingest token), compared
    in constant time."""
    return bool(configured) and bool(presented) and hmac.compare_digest(presented.encode(), (configured or "").encode())


async def authenticate(
    session: AsyncSession,
    kind: Kind,
    presented: str,
    *,
    hash_key: bytes,
    table: type[Row],
    where: Iterable[ColumnElement[bool]] = (),
) -> Row | None:
    """The live row of ``table`` that ``presented`` is the secret of, or None.

    Live: not revoked and, where the table has an expiry, not expired. Its ``last_used_at`` is brought
    up to date at most once per :data:`LAST_USED_RESOLUTION`, in the caller's transaction.
    """
    if not kind.well_formed(presented):
        return None
    columns: Any = table
    row = await session.scalar(select(table).where(columns.token_hash == hash_token(presented, hash_key), *where))
    if row is None:
        return None
    stored: Any = row
    now = datetime.now(UTC)
    expires_at = getattr(stored, "expires_at", None)
    if stored.revoked_at is not None or (expires_at is not None and expires_at <= now):
        return None
    if stored.last_used_at is None or now - stored.last_used_at > LAST_USED_RESOLUTION:
        await session.execute(update(table).where(columns.id == stored.id).values(last_used_at=now))
    return row
