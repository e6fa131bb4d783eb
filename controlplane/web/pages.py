"""Server-rendered HTML of the control plane's own pages: plain forms, no script, every value escaped.

Rendering only: the routes (:mod:`controlplane.api.routes.web`) fetch what a page shows through the
services and pass it in. Every page is sent with headers that forbid caching and framing.
"""

from __future__ import annotations

from datetime import datetime
from html import escape

from fastapi.responses import HTMLResponse

from controlplane import schemas
from controlplane.models import Token

ENVIRONMENTS = ("dev", "staging", "prod", "ci")
HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "Referrer-Policy": "no-referrer",
}

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
    return HTMLResponse(document, status_code=status_code, headers=HEADERS)


def problem(status_code: int, title: str, message: str, *, again: bool = True) -> HTMLResponse:
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


def me(*, email: str, role: str, csrf: str, teams: list[schemas.MyTeam], tokens: list[Token],
       team_names: dict, issued: tuple[Token, str] | None = None, error: str | None = None,
       status_code: int = 200) -> HTMLResponse:
    """The engineer's own page: their tokens, a form to mint one, a revoke button per live token."""
    rows = tokens
    csrf = escape(csrf)
    role_note = "" if role == "self" else f" · role <strong>{escape(role)}</strong>"
    parts = [
        f"<header><h1>Your Keyward tokens</h1><form class=inline method=post action='/auth/logout'>"
        f"<input type=hidden name=csrf value='{csrf}'><span class=muted>{escape(email)}{role_note}</span> "
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
                f"</td><td>{escape(team_names.get(token.team_id, '—') if token.team_id else '—')}</td>"
                f"<td>{escape(token.environment)}</td><td>{_when(token.expires_at)}</td>"
                f"<td>{_when(token.last_used_at)}</td><td>{state}</td><td>{action}</td></tr>")
        parts.append("<table><thead><tr><th>Name</th><th>Token</th><th>Team</th><th>Environment</th>"
                     "<th>Expires</th><th>Last used</th><th>State</th><th></th></tr></thead>"
                     f"<tbody>{''.join(body)}</tbody></table>")
    return page("Your tokens", "".join(parts), status_code)
