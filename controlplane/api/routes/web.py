"""The browser side of sign-in: ``/auth/login``, ``/auth/callback``, ``/auth/logout`` and ``/me``.

``/auth/login`` sends the browser to the issuer with an authorization-code request (PKCE S256, state,
nonce); the three values wait in a short-lived cookie signed with ``KEYWARD_SESSION_SECRET``
(HttpOnly, SameSite=Lax, path ``/auth``). ``/auth/callback`` checks the state against that cookie,
exchanges the code, verifies the ID token (signature against the JWKS, issuer, audience, expiry,
nonce), admits the user (:func:`controlplane.oidc.signin.admit`) and sets the ``keyward_session``
cookie (HttpOnly, SameSite=Lax, Secure when the redirect base is https, ``KEYWARD_OIDC_SESSION_MINUTES``).

``/me`` is a small server-rendered page (:mod:`controlplane.web.pages`): the user's tokens, a form to
mint one for one of their teams (the secret is shown once, in that response only) and a revoke
button per live token. Every form carries a CSRF token derived from the session.
"""

from __future__ import annotations

import hmac
import re
import uuid
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer
from pydantic import ValidationError

from controlplane import schemas
from controlplane.api.deps import SettingsDep
from controlplane.core.config import Settings
from controlplane.core.db import get_sessionmaker
from controlplane.errors import KeywardError
from controlplane.models import Token
from controlplane.oidc.client import LoginRequest, OidcError
from controlplane.oidc.signin import (
    SESSION_COOKIE,
    Refused,
    SignedIn,
    admit,
    close,
    configured_issuer,
    csrf_ok,
    csrf_token,
    lookup,
    open_sign_in,
    record_refusal,
    redirect_uri,
)
from controlplane.services import revocation, selfservice
from controlplane.web import pages

router = APIRouter(include_in_schema=False)

LOGIN_COOKIE = "keyward_oidc_login"
LOGIN_MAX_AGE = 600


def _serializer(settings: Settings) -> URLSafeTimedSerializer:
    assert settings.session_secret
    return URLSafeTimedSerializer(settings.session_secret, salt="keyward.oidc.login")


def _secure(settings: Settings) -> bool:
    return (settings.oidc_redirect_base or "").startswith("https://")


_LOCAL_PATH = re.compile(r"^/(?![/\\])[A-Za-z0-9/_.~%?=&+-]{0,400}$")


def local_path(value: str | None, default: str = "/me") -> str:
    """Where to go after sign-in: a path on this site only (no open redirect)."""
    return value if value and _LOCAL_PATH.match(value) else default


async def render_me(settings: Settings, signed: SignedIn, *, issued: tuple[Token, str] | None = None,
                    error: str | None = None, status_code: int = 200) -> HTMLResponse:
    async with get_sessionmaker()() as session, session.begin():
        teams = await selfservice.my_teams(session, signed.user_id)
        tokens, team_names = await selfservice.recent_tokens(session, signed.user_id)
    return pages.me(email=signed.email, role=signed.role, csrf=csrf_token(settings, signed.id), teams=teams,
                    tokens=tokens, team_names=team_names, issued=issued, error=error, status_code=status_code)


# -- sign-in --------------------------------------------------------------------------------------


@router.get("/auth/login")
async def login(settings: SettingsDep, next: str | None = None) -> Response:
    """Send the browser to the identity provider."""
    provider = configured_issuer(settings)
    attempt = LoginRequest.new()
    assert settings.oidc_client_id
    try:
        url = await provider.authorization_url(client_id=settings.oidc_client_id, redirect_uri=redirect_uri(settings),
                                               scopes=settings.oidc_scopes, request=attempt)
    except OidcError as exc:
        return pages.problem(502, "Sign-in is unavailable", exc.message)
    response = RedirectResponse(url, status_code=303, headers={"Cache-Control": "no-store"})
    pending = {"state": attempt.state, "nonce": attempt.nonce, "verifier": attempt.code_verifier,
               "next": local_path(next)}
    response.set_cookie(LOGIN_COOKIE, _serializer(settings).dumps(pending), max_age=LOGIN_MAX_AGE, path="/auth",
                        httponly=True, samesite="lax", secure=_secure(settings))
    return response


@router.get("/auth/callback")
async def callback(request: Request, settings: SettingsDep, code: str | None = None, state: str | None = None,
                   error: str | None = None, error_description: str | None = None) -> Response:
    """Where the identity provider sends the browser back."""
    provider = configured_issuer(settings)
    pending: dict[str, Any] | None = None
    raw = request.cookies.get(LOGIN_COOKIE)
    if raw:
        try:
            pending = _serializer(settings).loads(raw, max_age=LOGIN_MAX_AGE)
        except BadSignature:
            pending = None
    if not isinstance(pending, dict):
        return pages.problem(400, "Sign-in expired", "This sign-in was not started in this browser, or took "
                             "longer than 10 minutes.")
    if error:
        return _clear(pages.problem(403, "The identity provider refused the sign-in",
                                    f"{error}: {error_description or 'no description'}"))
    if not state or not hmac.compare_digest(state.encode(), str(pending.get("state", "")).encode()):
        return _clear(pages.problem(400, "Sign-in refused", "The state parameter does not match the sign-in this "
                                    "browser started (a forged or replayed callback)."))
    if not code:
        return _clear(pages.problem(400, "Sign-in refused", "The identity provider sent no authorization code."))
    assert settings.oidc_client_id
    try:
        answer = await provider.exchange_code(client_id=settings.oidc_client_id,
                                              client_secret=settings.oidc_client_secret, code=code,
                                              redirect_uri=redirect_uri(settings), code_verifier=pending["verifier"])
        claims = await provider.identity(answer, audience=settings.oidc_client_id, nonce=pending["nonce"],
                                         wanted=("email", settings.oidc_groups_claim))
    except OidcError as exc:
        return _clear(pages.problem(502 if exc.unavailable else 400, "Sign-in refused", exc.message))
    try:
        async with get_sessionmaker()() as session, session.begin():
            user, role = await admit(session, settings, claims, via="web")
            _row, secret = await open_sign_in(session, settings, user=user, role=role, kind="web",
                                              subject=str(claims["sub"]))
    except Refused as refusal:
        await record_refusal(claims, refusal, via="web")
        return _clear(pages.problem(403, "You cannot sign in to Keyward", refusal.message, again=False))
    response = RedirectResponse(local_path(pending.get("next")), status_code=303,
                                headers={"Cache-Control": "no-store"})
    response.set_cookie(SESSION_COOKIE, secret, max_age=settings.oidc_session_minutes * 60, path="/", httponly=True,
                        samesite="lax", secure=_secure(settings))
    return _clear(response)


def _clear(response: Response) -> Response:
    response.delete_cookie(LOGIN_COOKIE, path="/auth")
    return response


async def _form(request: Request) -> dict[str, str]:
    fields = parse_qs((await request.body()).decode("utf-8", "replace"), keep_blank_values=True)
    return {name: values[0] for name, values in fields.items()}


async def _signed_in_form(request: Request, settings: Settings
                          ) -> tuple[SignedIn | None, dict[str, str], Response | None]:
    """The session and the posted form, or the response that refuses them (no session, bad CSRF)."""
    configured_issuer(settings)
    signed = await lookup(request.cookies.get(SESSION_COOKIE, ""), "web", settings)
    if signed is None:
        return None, {}, RedirectResponse("/auth/login?next=/me", status_code=303)
    form = await _form(request)
    if not csrf_ok(settings, signed, form.get("csrf")):
        return signed, form, pages.problem(403, "Refused", "The form's CSRF token is missing or wrong; reload the "
                                           "page.", again=False)
    return signed, form, None


@router.post("/auth/logout")
async def logout(request: Request, settings: SettingsDep) -> Response:
    signed, _form_fields, refusal = await _signed_in_form(request, settings)
    if refusal is not None or signed is None:
        return refusal or RedirectResponse("/auth/login", status_code=303)
    async with get_sessionmaker()() as session, session.begin():
        await close(session, signed)
    response = pages.page("Signed out", "<h1>Signed out</h1><p><a href='/auth/login'>Sign in again</a></p>")
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


# -- /me ------------------------------------------------------------------------------------------


@router.get("/me")
async def me_page(request: Request, settings: SettingsDep) -> Response:
    configured_issuer(settings)
    signed = await lookup(request.cookies.get(SESSION_COOKIE, ""), "web", settings)
    if signed is None:
        return RedirectResponse("/auth/login?next=" + quote("/me"), status_code=303)
    return await render_me(settings, signed)


@router.post("/me/tokens")
async def mint_from_page(request: Request, settings: SettingsDep) -> Response:
    signed, form, refusal = await _signed_in_form(request, settings)
    if refusal is not None or signed is None:
        return refusal or RedirectResponse("/me", status_code=303)
    try:
        data = schemas.MyTokenCreate(
            name=form.get("name", ""), team_id=form.get("team_id") or None,  # type: ignore[arg-type]
            environment=form.get("environment") or "dev",  # type: ignore[arg-type]
            expires_in_days=int(form["expires_in_days"]) if form.get("expires_in_days", "").strip() else None,
        )
    except (ValidationError, ValueError) as exc:
        return await render_me(settings, signed, error=f"That token cannot be minted: {_explain(exc)}",
                               status_code=422)
    try:
        async with get_sessionmaker()() as session, session.begin():
            token, secret = await selfservice.mint_mine(session, user_id=signed.user_id, actor=signed.actor, data=data,
                                                         hash_key=settings.hash_key)
    except KeywardError as exc:
        return await render_me(settings, signed, error=exc.message, status_code=exc.status_code)
    return await render_me(settings, signed, issued=(token, secret))


@router.post("/me/tokens/{token_id}/revoke")
async def revoke_from_page(token_id: uuid.UUID, request: Request, settings: SettingsDep) -> Response:
    signed, _fields, refusal = await _signed_in_form(request, settings)
    if refusal is not None or signed is None:
        return refusal or RedirectResponse("/me", status_code=303)
    try:
        async with revocation.revoking(actor=signed.actor, target_type="token", target_id=str(token_id)) as change:
            await selfservice.revoke_mine(change.session, user_id=signed.user_id, actor=signed.actor,
                                          token_id=token_id, reason="revoked by its owner at /me")
    except KeywardError as exc:
        return await render_me(settings, signed, error=exc.message, status_code=exc.status_code)
    return RedirectResponse("/me", status_code=303)


def _explain(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'form'}: {err['msg']}" for err in exc.errors())
    return str(exc)
