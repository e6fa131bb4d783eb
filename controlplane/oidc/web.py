"""The browser side of sign-in: ``/auth/login``, ``/auth/callback``, ``/auth/logout`` and ``/me``.

``/auth/login`` sends the browser to the issuer with an authorization-code request (PKCE S256, state,
nonce); the three values wait in a short-lived cookie signed with ``KEYWARD_SESSION_SECRET``
(HttpOnly, SameSite=Lax, path ``/auth``). ``/auth/callback`` checks the state against that cookie,
exchanges the code, verifies the ID token (signature against the JWKS, issuer, audience, expiry,
nonce), admits the user (:func:`controlplane.oidc.signin.admit`) and sets the ``keyward_session``
cookie (HttpOnly, SameSite=Lax, Secure when the redirect base is https, ``KEYWARD_OIDC_SESSION_MINUTES``).

``/me`` is a small server-rendered page, plain HTML forms and no script: the user's tokens (hint,
team, environment, expiry, last use), a form to mint one for one of their teams (the secret is shown
once, in that response only) and a revoke button per live token. Every form carries a CSRF token
derived from the session; the pages are never cached and may not be framed.
"""

from __future__ import annotations

import hmac
import re
import uuid
from datetime import datetime
from html import escape
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer
from pydantic import ValidationError
from sqlalchemy import select

from controlplane import tokens as lifecycle
from controlplane.api.deps import SettingsDep
from controlplane.core.config import Settings
from controlplane.core.db import get_sessionmaker
from controlplane.errors import KeywardError, NotFound
from controlplane.models import Team, Token
from controlplane.oidc import selfservice
from controlplane.oidc.client import Issuer, LoginRequest, OidcError, issuer_for
from controlplane.oidc.signin import (
    SESSION_COOKIE,
    Refused,
    SignedIn,
    admit,
    close,
    csrf_ok,
    csrf_token,
    lookup,
    open_sign_in,
    record_refusal,
)

router = APIRouter(include_in_schema=False)

LOGIN_COOKIE = "keyward_oidc_login"
LOGIN_MAX_AGE = 600
ENVIRONMENTS = ("dev", "staging", "prod", "ci")
_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "Referrer-Policy": "no-referrer",
}


def issuer(settings: Settings) -> Issuer:
    """The configured issuer, or a 404 that says sign-in is off."""
    if not settings.oidc_issuer:
        raise NotFound("oidc_not_configured",
                       "Sign-in with OpenID Connect is not configured on this Keyward (KEYWARD_OIDC_ISSUER is unset).")
    return issuer_for(settings.oidc_issuer)


def _serializer(settings: Settings) -> URLSafeTimedSerializer:
    assert settings.session_secret
    return URLSafeTimedSerializer(settings.session_secret, salt="keyward.oidc.login")


def _secure(settings: Settings) -> bool:
    return (settings.oidc_redirect_base or "").startswith("https://")


def redirect_uri(settings: Settings) -> str:
    return (settings.oidc_redirect_base or "").rstrip("/") + "/auth/callback"


_LOCAL_PATH = re.compile(r"^/(?![/\\])[A-Za-z0-9/_.~%?=&+-]{0,400}$")


def _local_path(value: str | None) -> str:
    """Where to go after sign-in: a path on this site only (no open redirect)."""
    return value if value and _LOCAL_PATH.match(value) else "/me"


# -- rendering ------------------------------------------------------------------------------------

_STYLE = """
body{font:15px/1.45 system-ui,sans-serif;max-width:64rem;margin:2rem auto;padding:0 1rem;color:#1d1d1f}
h1{font-size:1.4rem} h2{font-size:1.1rem;margin-top:2rem} table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:.35rem .5rem;border-bottom:1px solid #ddd;font-size:.92rem}
code{background:#f3f3f3;padding:.1rem .3rem;border-radius:3px} .muted{color:#666}
.secret{background:#fff8d6;border:1px solid #e6c200;padding:1rem;border-radius:6px;word-break:break-all}
.error{background:#fdecec;border:1px solid #e08080;padding:.8rem;border-radius:6px}
form.inline{display:inline} label{display:inline-block;margin:.3rem 1rem .3rem 0}
header{display:flex;justify-content:space-between;align-items:center}
"""


def page(title: str, body: str, status_code: int = 200) -> HTMLResponse:
    document = (f"<!doctype html><html lang=en><head><meta charset=utf-8>"
                f"<meta name=viewport content='width=device-width,initial-scale=1'>"
                f"<title>{escape(title)} · Keyward</title><style>{_STYLE}</style></head>"
                f"<body>{body}</body></html>")
    return HTMLResponse(document, status_code=status_code, headers=_HEADERS)


def _problem(status_code: int, title: str, message: str, *, again: bool = True) -> HTMLResponse:
    link = "<p><a href='/auth/login'>Sign in again</a></p>" if again else ""
    return page(title, f"<h1>{escape(title)}</h1><p class=error>{escape(message)}</p>{link}", status_code)


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else "—"


def _state(token: Token) -> str:
    if token.revoked_at is not None:
        return "revoked"
    if token.expires_at is not None and token.expires_at <= datetime.now(token.expires_at.tzinfo):
        return "expired"
    return "active"


async def render_me(settings: Settings, signed: SignedIn, *, issued: tuple[Token, str] | None = None,
                    error: str | None = None, status_code: int = 200) -> HTMLResponse:
    async with get_sessionmaker()() as session, session.begin():
        teams = await selfservice.my_teams(session, signed.user_id)
        rows = (await session.scalars(
            lifecycle.list_query(user_id=signed.user_id).order_by(Token.created_at.desc()).limit(200))).all()
        names = dict((await session.execute(select(Team.id, Team.name).where(
            Team.id.in_({t.team_id for t in rows if t.team_id})))).tuples().all()) if rows else {}
    csrf = escape(csrf_token(settings, signed.id))
    role = "" if signed.role == "self" else f" · role <strong>{escape(signed.role)}</strong>"
    parts = [
        f"<header><h1>Your Keyward tokens</h1><form class=inline method=post action='/auth/logout'>"
        f"<input type=hidden name=csrf value='{csrf}'><span class=muted>{escape(signed.email)}{role}</span> "
        f"<button type=submit>Sign out</button></form></header>"
    ]
    if error:
        parts.append(f"<p class=error role=alert>{escape(error)}</p>")
    if issued is not None:
        token, secret = issued
        parts.append(
            f"<div class=secret><p><strong>Your new token {escape(token.name)}</strong> — copy it now: Keyward "
            f"keeps only a hash and will never show it again.</p><p><code id=secret>{escape(secret)}</code></p>"
            f"<p class=muted>Expires {_when(token.expires_at)}. Use it as the api_key of the OpenAI or Anthropic "
            f"SDK, with the gateway as base_url.</p></div>")
    parts.append("<h2>New token</h2>")
    usable = [team for team in teams if team.profile is not None]
    if not usable:
        parts.append("<p class=muted>You are not a member of any team with an access profile yet, so there is "
                     "nothing a token could do. Ask a team owner or an administrator to add you.</p>")
    else:
        options = "".join(
            f"<option value='{team.id}'>{escape(team.name)} ({escape(team.profile.name)}: "
            f"{escape(', '.join(team.profile.environments))}; up to {team.profile.max_token_days} days)</option>"
            for team in usable if team.profile is not None)
        environments = "".join(f"<option>{env}</option>" for env in ENVIRONMENTS)
        parts.append(
            f"<form method=post action='/me/tokens'><input type=hidden name=csrf value='{csrf}'>"
            f"<label>Name <input name=name required maxlength=200 placeholder=laptop></label>"
            f"<label>Team <select name=team_id>{options}</select></label>"
            f"<label>Environment <select name=environment>{environments}</select></label>"
            f"<label>Expires in <input name=expires_in_days type=number min=1 max=3650 size=5> days "
            f"<span class=muted>(blank: the profile's default)</span></label> "
            f"<button type=submit>Mint token</button></form>")
    parts.append("<h2>Your tokens</h2>")
    if not rows:
        parts.append("<p class=muted>None yet.</p>")
    else:
        body = []
        for token in rows:
            state = _state(token)
            action = (f"<form class=inline method=post action='/me/tokens/{token.id}/revoke'>"
                      f"<input type=hidden name=csrf value='{csrf}'><button type=submit>Revoke</button></form>"
                      if state == "active" else "")
            body.append(
                f"<tr data-token-id='{token.id}'><td>{escape(token.name)}</td><td><code>{escape(token.hint)}</code>"
                f"</td><td>{escape(names.get(token.team_id, '—') if token.team_id else '—')}</td>"
                f"<td>{escape(token.environment)}</td><td>{_when(token.expires_at)}</td>"
                f"<td>{_when(token.last_used_at)}</td><td>{state}</td><td>{action}</td></tr>")
        parts.append("<table><thead><tr><th>Name</th><th>Token</th><th>Team</th><th>Environment</th>"
                     "<th>Expires</th><th>Last used</th><th>State</th><th></th></tr></thead>"
                     f"<tbody>{''.join(body)}</tbody></table>")
    return page("Your tokens", "".join(parts), status_code)


# -- sign-in --------------------------------------------------------------------------------------


@router.get("/auth/login")
async def login(settings: SettingsDep, next: str | None = None) -> Response:
    """Send the browser to the identity provider."""
    provider = issuer(settings)
    attempt = LoginRequest.new()
    assert settings.oidc_client_id
    try:
        url = await provider.authorization_url(client_id=settings.oidc_client_id, redirect_uri=redirect_uri(settings),
                                               scopes=settings.oidc_scopes, request=attempt)
    except OidcError as exc:
        return _problem(502, "Sign-in is unavailable", exc.message)
    response = RedirectResponse(url, status_code=303, headers={"Cache-Control": "no-store"})
    pending = {"state": attempt.state, "nonce": attempt.nonce, "verifier": attempt.code_verifier,
               "next": _local_path(next)}
    response.set_cookie(LOGIN_COOKIE, _serializer(settings).dumps(pending), max_age=LOGIN_MAX_AGE, path="/auth",
                        httponly=True, samesite="lax", secure=_secure(settings))
    return response


@router.get("/auth/callback")
async def callback(request: Request, settings: SettingsDep, code: str | None = None, state: str | None = None,
                   error: str | None = None, error_description: str | None = None) -> Response:
    """Where the identity provider sends the browser back."""
    provider = issuer(settings)
    pending: dict[str, Any] | None = None
    raw = request.cookies.get(LOGIN_COOKIE)
    if raw:
        try:
            pending = _serializer(settings).loads(raw, max_age=LOGIN_MAX_AGE)
        except BadSignature:
            pending = None
    if not isinstance(pending, dict):
        return _problem(400, "Sign-in expired", "This sign-in was not started in this browser, or took longer than "
                        "10 minutes.")
    if error:
        return _clear(_problem(403, "The identity provider refused the sign-in",
                               f"{error}: {error_description or 'no description'}"))
    if not state or not hmac.compare_digest(state.encode(), str(pending.get("state", "")).encode()):
        return _clear(_problem(400, "Sign-in refused", "The state parameter does not match the sign-in this browser "
                               "started (a forged or replayed callback)."))
    if not code:
        return _clear(_problem(400, "Sign-in refused", "The identity provider sent no authorization code."))
    assert settings.oidc_client_id
    try:
        answer = await provider.exchange_code(client_id=settings.oidc_client_id,
                                              client_secret=settings.oidc_client_secret, code=code,
                                              redirect_uri=redirect_uri(settings), code_verifier=pending["verifier"])
        claims = await provider.identity(answer, audience=settings.oidc_client_id, nonce=pending["nonce"],
                                         wanted=("email", settings.oidc_groups_claim))
    except OidcError as exc:
        return _clear(_problem(502 if exc.unavailable else 400, "Sign-in refused", exc.message))
    try:
        async with get_sessionmaker()() as session, session.begin():
            user, role = await admit(session, settings, claims, via="web")
            _row, secret = await open_sign_in(session, settings, user=user, role=role, kind="web",
                                              subject=str(claims["sub"]))
    except Refused as refusal:
        await record_refusal(claims, refusal, via="web")
        return _clear(_problem(403, "You cannot sign in to Keyward", refusal.message, again=False))
    response = RedirectResponse(_local_path(pending.get("next")), status_code=303,
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
    issuer(settings)
    signed = await lookup(request.cookies.get(SESSION_COOKIE, ""), "web", settings)
    if signed is None:
        return None, {}, RedirectResponse("/auth/login?next=/me", status_code=303)
    form = await _form(request)
    if not csrf_ok(settings, signed, form.get("csrf")):
        return signed, form, _problem(403, "Refused", "The form's CSRF token is missing or wrong; reload the page.",
                                      again=False)
    return signed, form, None


@router.post("/auth/logout")
async def logout(request: Request, settings: SettingsDep) -> Response:
    signed, _form_fields, refusal = await _signed_in_form(request, settings)
    if refusal is not None or signed is None:
        return refusal or RedirectResponse("/auth/login", status_code=303)
    async with get_sessionmaker()() as session, session.begin():
        await close(session, signed)
    response = page("Signed out", "<h1>Signed out</h1><p><a href='/auth/login'>Sign in again</a></p>")
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


# -- /me ------------------------------------------------------------------------------------------


@router.get("/me")
async def me_page(request: Request, settings: SettingsDep) -> Response:
    issuer(settings)
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
        data = selfservice.MyTokenCreate(
            name=form.get("name", ""), team_id=form.get("team_id") or None,  # type: ignore[arg-type]
            environment=form.get("environment") or "dev",  # type: ignore[arg-type]
            expires_in_days=int(form["expires_in_days"]) if form.get("expires_in_days", "").strip() else None,
        )
    except (ValidationError, ValueError) as exc:
        return await render_me(settings, signed, error=f"That token cannot be minted: {_explain(exc)}",
                               status_code=422)
    try:
        async with get_sessionmaker()() as session, session.begin():
            token, secret = await selfservice.mint_mine(session, signed, data, settings.hash_key)
    except KeywardError as exc:
        return await render_me(settings, signed, error=exc.message, status_code=exc.status_code)
    return await render_me(settings, signed, issued=(token, secret))


@router.post("/me/tokens/{token_id}/revoke")
async def revoke_from_page(token_id: uuid.UUID, request: Request, settings: SettingsDep) -> Response:
    signed, _fields, refusal = await _signed_in_form(request, settings)
    if refusal is not None or signed is None:
        return refusal or RedirectResponse("/me", status_code=303)
    try:
        async with get_sessionmaker()() as session, session.begin():
            await selfservice.revoke_mine(session, signed, token_id, "revoked by its owner at /me")
    except KeywardError as exc:
        return await render_me(settings, signed, error=exc.message, status_code=exc.status_code)
    return RedirectResponse("/me", status_code=303)


def _explain(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'form'}: {err['msg']}" for err in exc.errors())
    return str(exc)
