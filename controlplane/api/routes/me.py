"""The signed-in user's own API, and the ``keyward login`` exchange.

``/api/v1/me…`` answers to a sign-in, never to an admin-API credential: the ``keyward_session``
cookie of the browser (changes need the ``X-CSRF-Token`` header, whose value ``GET /api/v1/me``
gives) or the ``kw_cli_…`` bearer credential ``keyward login`` stores. A user lists, mints and revokes
their own tokens, within the profiles of their teams.

``POST /api/v1/auth/oidc/cli-token`` takes an ID token the command line obtained from the issuer
itself (its own public client, loopback redirect with PKCE) with the nonce it sent, checks it like the
browser callback does, and answers a short-lived credential in the role the user's IdP groups give.
Each ID token is exchanged at most once (its nonce is remembered).
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Depends, Query, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field

from controlplane import errors, schemas
from controlplane.api.deps import Bearer, Cursor, Limit, SessionDep, SettingsDep, presented
from controlplane.api.routes.tokens import revoked
from controlplane.core.db import get_sessionmaker
from controlplane.errors import Code, Unauthorized, Unavailable
from controlplane.oidc.client import OidcError
from controlplane.oidc.signin import (
    Refused,
    SignedIn,
    admit,
    authenticate,
    close,
    configured_issuer,
    csrf_token,
    open_sign_in,
    record_refusal,
)
from controlplane.services import revocation, selfservice, users

router = APIRouter(tags=["me"])

#: A CLI's ID token must be this fresh (seconds since it was issued) to be exchanged.
CLI_ID_TOKEN_MAX_AGE = 600


async def _signed_in(request: Request, bearer: Bearer, settings: SettingsDep) -> SignedIn:
    configured_issuer(settings)
    signed = await authenticate(request, presented(bearer), settings)
    if signed is None:
        raise Unauthorized(Code.SIGN_IN_REQUIRED, "Sign in first: the browser session from /auth/login, or the "
                           "credential `keyward login` stores. Admin-API credentials are not a sign-in.")
    return signed


Me = Annotated[SignedIn, Depends(_signed_in)]
_ME_ERRORS = errors.responses(401, 403, 404, 422)


@router.get("/me", response_model=schemas.Me, responses=_ME_ERRORS)
async def whoami_me(signed: Me, session: SessionDep, settings: SettingsDep) -> dict:
    """Who is signed in, in which role, until when, and their teams with each team's profile."""
    user = await users.get_user(session, user_id=signed.user_id)
    return {
        "user": schemas.UserPublic.model_validate(user), "role": signed.role, "via": signed.kind,
        "expires_at": signed.expires_at,
        "csrf_token": csrf_token(settings, signed.id) if signed.kind == "web" else None,
        "teams": await selfservice.my_teams(session, signed.user_id),
    }


@router.get("/me/tokens", response_model=schemas.Page[schemas.TokenPublic], responses=_ME_ERRORS)
async def my_tokens(
    signed: Me, session: SessionDep, limit: Limit = 100, cursor: Cursor = None,
    state: Annotated[Literal["active", "revoked", "expired"] | None, Query(description="active, revoked or expired.")]
    = None,
) -> dict:
    """Your tokens, newest first, never their secrets."""
    return await selfservice.my_tokens(session, signed.user_id, state=state, cursor=cursor, limit=limit)


@router.post("/me/tokens", status_code=status.HTTP_201_CREATED, response_model=schemas.TokenIssued,
             responses=errors.responses(401, 403, 404, 409, 422, body=True))
async def mint_my_token(data: schemas.MyTokenCreate, signed: Me, session: SessionDep,
                        settings: SettingsDep) -> dict:
    """Mint a token for yourself, for one of your teams. The secret is in this response only."""
    token, secret = await selfservice.mint_mine(session, user_id=signed.user_id, actor=signed.actor, data=data,
                                                hash_key=settings.hash_key)
    return {**schemas.TokenPublic.model_validate(token).model_dump(), "token": secret}


@router.post("/me/tokens/{token_id}/revoke", response_model=schemas.TokenRevoked,
             responses=errors.responses(401, 403, 404, 422, body=True))
async def revoke_my_token(token_id: uuid.UUID, signed: Me,
                          data: Annotated[schemas.MyTokenRevoke | None, Body()] = None) -> dict:
    """Revoke one of your tokens (idempotent); answers once the gateway refuses it. Anyone else's token
    is not found."""
    async with revocation.revoking(actor=signed.actor, target_type="token", target_id=str(token_id)) as revoking:
        token = await selfservice.revoke_mine(revoking.session, user_id=signed.user_id, actor=signed.actor,
                                              token_id=token_id, reason=data.reason if data else None)
    return revoked(token, revoking)


@router.post("/me/logout", status_code=status.HTTP_204_NO_CONTENT, responses=_ME_ERRORS)
async def logout_me(signed: Me, session: SessionDep) -> Response:
    """End this session, or revoke this `keyward login` credential."""
    await close(session, signed)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# -- keyward login --------------------------------------------------------------------------------


class OidcConfig(BaseModel):
    issuer: str
    cli_client_id: str = Field(description="The public client `keyward login` uses, with a loopback redirect.")
    scopes: str
    login_url: str = Field(description="Where a browser signs in.")


class CliTokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id_token: str = Field(min_length=1, max_length=16_384)
    nonce: str = Field(min_length=16, max_length=512, description="The nonce the CLI sent with its request.")
    access_token: str | None = Field(default=None, max_length=16_384,
                                     description="Lets Keyward read userinfo when the ID token lacks claims.")


class CliCredential(BaseModel):
    token: str = Field(description="A kw_cli_ bearer credential. Shown once; store it with mode 0600.")
    expires_at: datetime
    role: str
    email: str
    user_id: uuid.UUID


@router.get("/auth/oidc", response_model=OidcConfig, responses=errors.responses(404))
async def oidc_config(settings: SettingsDep) -> dict:
    """What `keyward login` needs to sign in against this Keyward's identity provider (no credential)."""
    configured_issuer(settings)
    assert settings.oidc_issuer and settings.oidc_client_id
    return {"issuer": settings.oidc_issuer, "cli_client_id": settings.oidc_cli_client_id or settings.oidc_client_id,
            "scopes": settings.oidc_scopes,
            "login_url": (settings.oidc_redirect_base or "").rstrip("/") + "/auth/login"}


@router.post("/auth/oidc/cli-token", status_code=status.HTTP_201_CREATED, response_model=CliCredential,
             responses=errors.responses(401, 403, 404, 422, 502, body=True))
async def cli_token(data: CliTokenRequest, settings: SettingsDep) -> dict:
    """Exchange an ID token from the CLI's own sign-in (the CLI client's audience, the nonce it sent,
    at most 10 minutes old, never twice) for a short-lived credential."""
    provider = configured_issuer(settings)
    audience = settings.oidc_cli_client_id or settings.oidc_client_id
    assert audience
    try:
        claims = await provider.identity({"id_token": data.id_token, "access_token": data.access_token},
                                         audience=audience, nonce=data.nonce,
                                         wanted=("email", settings.oidc_groups_claim))
    except OidcError as exc:
        if exc.unavailable:
            raise Unavailable(exc.code, exc.message) from exc
        raise Unauthorized(exc.code, exc.message) from exc
    issued_at = claims.get("iat")
    if not isinstance(issued_at, int | float) or time.time() - issued_at > CLI_ID_TOKEN_MAX_AGE:
        raise Unauthorized(Code.ID_TOKEN_STALE, "The ID token is more than 10 minutes old; sign in again.")
    try:
        async with get_sessionmaker()() as session, session.begin():
            user, role = await admit(session, settings, claims, via="cli")
            row, secret = await open_sign_in(session, settings, user=user, role=role, kind="cli",
                                             subject=str(claims["sub"]), nonce=data.nonce)
    except Refused as refusal:
        await record_refusal(claims, refusal, via="cli")
        raise errors.Forbidden(refusal.code, refusal.message) from refusal
    return {"token": secret, "expires_at": row.expires_at, "role": role, "email": user.email, "user_id": user.id}
