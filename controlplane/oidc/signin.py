"""Who may sign in, in which role, and the sign-ins that follow.

After the issuer vouched for an identity (:mod:`controlplane.oidc.client`), :func:`admit` decides:

* the e-mail claim names the Keyward user (case-insensitive); an e-mail the IdP says is unverified is
  refused;
* an identity Keyward does not know is created just in time (``KEYWARD_OIDC_JIT_PROVISIONING``,
  ``user.created`` with mechanism ``oidc``) or refused;
* a suspended or deprovisioned user is refused;
* the groups claim may map to an admin role (admin before auditor before finance); everyone else signs
  in as ``self``: their own tokens, within the profiles of their teams, and nothing of the admin API.

Each sign-in is an event (``admin.login`` for an admin role, ``user.login`` otherwise), each refusal
too (``user.login_refused``). A sign-in becomes a row of ``sign_ins``: a browser session behind the
``keyward_session`` cookie (``kw_sess_…``) or a ``keyward login`` credential (``kw_cli_…``), stored
as keyed hashes, checked on every request against the user's current status.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from fastapi import Request
from pydantic import ValidationError
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane import schemas
from controlplane.audit.events import Actor, record_event
from controlplane.core.config import Settings
from controlplane.core.db import get_sessionmaker
from controlplane.errors import Code, Forbidden, NotFound
from controlplane.models import SignIn, User
from controlplane.oidc.client import Issuer, claim, issuer_for
from controlplane.services import credentials, users

SESSION_COOKIE = "keyward_session"
CSRF_HEADER = "X-CSRF-Token"
SELF = "self"
ADMIN_ROLES = ("admin", "auditor", "finance")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
Kind = Literal["web", "cli"]
_KINDS = {"web": credentials.WEB_SESSION, "cli": credentials.CLI_SIGN_IN}


class Refused(Exception):
    """The identity is genuine, but may not sign in here."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class SignedIn:
    id: uuid.UUID
    kind: str
    user_id: uuid.UUID
    email: str
    role: str
    expires_at: datetime

    @property
    def actor(self) -> Actor:
        return actor_for(self.email)


def configured_issuer(settings: Settings) -> Issuer:
    """The configured issuer, or a 404 that says sign-in is off."""
    if not settings.oidc_issuer:
        raise NotFound(Code.OIDC_NOT_CONFIGURED, "Sign-in with OpenID Connect is not configured on this Keyward "
                       "(KEYWARD_OIDC_ISSUER is unset).")
    return issuer_for(settings.oidc_issuer)


def redirect_uri(settings: Settings) -> str:
    """Where the issuer sends the browser back after sign-in."""
    return (settings.oidc_redirect_base or "").rstrip("/") + "/auth/callback"


def actor_for(email: str) -> Actor:
    return Actor(name=f"oidc:{email}", mechanism="oidc")


def groups_of(claims: dict[str, Any], settings: Settings) -> set[str]:
    value = claim(claims, settings.oidc_groups_claim)
    if isinstance(value, str):
        return {value}
    if isinstance(value, list):
        return {str(item) for item in value if isinstance(item, str | int)}
    return set()


def role_for(groups: set[str], settings: Settings) -> tuple[str, list[str]]:
    """The session's role and the groups that gave it."""
    for role in ADMIN_ROLES:
        matched = sorted(groups & settings.oidc_groups(role))
        if matched:
            return role, matched
    return SELF, []


def email_of(claims: dict[str, Any]) -> str:
    email = claims.get("email")
    if not isinstance(email, str) or "@" not in email:
        raise Refused(Code.EMAIL_MISSING, "The identity provider gave no e-mail address for this identity, so it "
                      "cannot be matched to a Keyward user (is the email scope allowed for this client?).")
    if claims.get("email_verified") is False:
        raise Refused(Code.EMAIL_UNVERIFIED, f"The identity provider says {email} is not verified.")
    return email.strip()


async def admit(session: AsyncSession, settings: Settings, claims: dict[str, Any], *, via: Kind) -> tuple[User, str]:
    """The user this verified identity signs in as, and the role; records the sign-in event."""
    email = email_of(claims)
    role, matched = role_for(groups_of(claims, settings), settings)
    actor = actor_for(email)
    user = await session.scalar(select(User).where(func.lower(User.email) == email.lower()))
    if user is None:
        if not settings.oidc_jit_provisioning:
            raise Refused(Code.USER_UNKNOWN, f"{email} has no Keyward account, and this Keyward does not create "
                          "accounts at sign-in. Ask an administrator to add you.")
        name = claims.get("name") if isinstance(claims.get("name"), str) else None
        try:
            data = schemas.UserCreate(email=email, display_name=(name or "").strip()[:200] or None)
        except ValidationError as exc:
            raise Refused(Code.EMAIL_INVALID, f"{email} is not an address Keyward accepts.") from exc
        user = await users.create_user(session, actor=actor, data=data)
    if user.status != "active":
        raise Refused(Code(f"user_{user.status}"), f"The Keyward account {email} is {user.status}; it cannot sign in.")
    await record_event(session, actor=actor_for(user.email), action="user.login" if role == SELF else "admin.login",
                       target_type="user", target_id=str(user.id),
                       after={"role": role, "via": via, "subject": str(claims.get("sub")), "groups": matched})
    return user, role


async def record_refusal(claims: dict[str, Any], refusal: Refused, *, via: Kind) -> None:
    """A refused sign-in is on record too (in a transaction of its own: the sign-in's rolled back)."""
    email = claims.get("email") if isinstance(claims.get("email"), str) else None
    async with get_sessionmaker()() as session, session.begin():
        user_id = await session.scalar(select(User.id).where(func.lower(User.email) == email.lower())) if email \
            else None
        await record_event(session, actor=actor_for(email or f"sub:{claims.get('sub')}"),
                           action="user.login_refused", target_type="user",
                           target_id=str(user_id or email or claims.get("sub"))[:200],
                           after={"reason": refusal.code, "via": via, "subject": str(claims.get("sub"))})


def _nonce_hash(nonce: str, settings: Settings) -> str:
    return hmac.new(settings.hash_key, b"nonce:" + nonce.encode(), hashlib.sha256).hexdigest()


async def open_sign_in(session: AsyncSession, settings: Settings, *, user: User, role: str, kind: Kind,
                       subject: str, nonce: str | None = None) -> tuple[SignIn, str]:
    """A new session (web) or credential (cli); the secret is returned once and only its hash is kept."""
    issued = credentials.issue(_KINDS[kind], settings.hash_key)
    lifetime = (timedelta(minutes=settings.oidc_session_minutes) if kind == "web"
                else timedelta(hours=settings.oidc_cli_credential_hours))
    row = SignIn(id=uuid.uuid4(), kind=kind, user_id=user.id, role=role, token_hash=issued.token_hash,
                 nonce_hash=_nonce_hash(nonce, settings) if nonce else None, subject=subject[:500],
                 expires_at=datetime.now(UTC) + lifetime)
    session.add(row)
    try:
        await session.flush()
    except IntegrityError as exc:
        raise Refused(Code.ID_TOKEN_REPLAYED, "This ID token was already exchanged; sign in again.") from exc
    return row, issued.secret


async def lookup(secret: str, kind: Kind, settings: Settings) -> SignedIn | None:
    """The live sign-in behind a session cookie or CLI credential, if any (its user must be active)."""
    if not _KINDS[kind].well_formed(secret):
        return None
    async with get_sessionmaker()() as session, session.begin():
        active = select(User.id).where(User.status == "active")
        sign_in = await credentials.authenticate(session, _KINDS[kind], secret, hash_key=settings.hash_key,
                                                 table=SignIn, where=(SignIn.kind == kind, SignIn.user_id.in_(active)))
        if sign_in is None:
            return None
        # The query admits only sign-ins of an active user (never the bootstrap admin's console session).
        assert sign_in.user_id is not None
        user = await session.get(User, sign_in.user_id)
        assert user is not None
        return SignedIn(id=sign_in.id, kind=sign_in.kind, user_id=sign_in.user_id, email=user.email,
                        role=sign_in.role, expires_at=sign_in.expires_at)


def csrf_token(settings: Settings, sign_in_id: uuid.UUID) -> str:
    assert settings.session_secret
    return hmac.new(settings.session_secret.encode(), f"csrf:{sign_in_id}".encode(), hashlib.sha256).hexdigest()


def csrf_ok(settings: Settings, signed: SignedIn, presented: str | None) -> bool:
    return bool(presented) and hmac.compare_digest(csrf_token(settings, signed.id).encode(), (presented or "").encode())


async def authenticate(request: Request, presented: str, settings: Settings) -> SignedIn | None:
    """The sign-in an API request carries: a ``keyward login`` bearer credential, or (no bearer at all)
    the session cookie, which must come with the ``X-CSRF-Token`` header on anything but a read."""
    if not settings.oidc_enabled:
        return None
    if presented:
        return await lookup(presented, "cli", settings)
    signed = await lookup(request.cookies.get(SESSION_COOKIE, ""), "web", settings)
    if signed is not None and request.method not in SAFE_METHODS \
            and not csrf_ok(settings, signed, request.headers.get(CSRF_HEADER)):
        raise Forbidden(Code.CSRF_TOKEN_INVALID, f"A change made with the session cookie needs the {CSRF_HEADER} "
                        "header (csrf_token in GET /api/v1/me).")
    return signed


async def close(session: AsyncSession, signed: SignedIn) -> None:
    await session.execute(update(SignIn).where(SignIn.id == signed.id, SignIn.revoked_at.is_(None))
                          .values(revoked_at=datetime.now(UTC)))
    await record_event(session, actor=signed.actor, action="user.logout", target_type="user",
                       target_id=str(signed.user_id), after={"via": signed.kind})
