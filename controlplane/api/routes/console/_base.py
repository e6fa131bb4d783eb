"""What every console page shares: who is signed in (as a :class:`~controlplane.api.deps.Caller`, so the
console applies the admin API's role rules through the same service functions), the CSRF check on every
form, the navigation each role sees, and rendering.

A page declares the roles that may see it, the same role sets as its admin-API counterpart; a form that
changes something is checked by :func:`posted`: a live session, a same-site Origin, the session's CSRF
token. Every change is recorded with the mechanism ``console``.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any
from urllib.parse import parse_qs, quote, urlsplit

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from itsdangerous import BadSignature, URLSafeSerializer

from controlplane.api.deps import Caller
from controlplane.core.config import Settings, get_settings
from controlplane.core.db import get_sessionmaker
from controlplane.errors import KeywardError
from controlplane.models import Team
from controlplane.oidc.signin import ADMIN_ROLES, SESSION_COOKIE, csrf_token
from controlplane.services import console_sessions
from controlplane.services.console_sessions import ConsoleSession
from controlplane.web.console import render

ADMIN = ("admin",)
READERS = ("admin", "auditor", "owner")
AUDITORS = ("admin", "auditor")
SPEND_READERS = ("admin", "auditor", "finance")
EVERYONE = ("admin", "auditor", "finance", "owner")


@dataclass(frozen=True)
class Section:
    path: str
    label: str
    roles: tuple[str, ...]
    #: Other paths whose pages belong to this section (highlighted in the navigation).
    also: tuple[str, ...] = ()

    def covers(self, path: str) -> bool:
        if path == self.path:
            return True
        prefixes = self.also if self.path == "/console" else (self.path, *self.also)
        return any(path == prefix or path.startswith(prefix + "/") for prefix in prefixes)


#: The console's sections, in the navigation's order, with who may open each.
SECTIONS = (
    Section("/console", "Overview", EVERYONE, also=("/console/access",)),
    Section("/console/tokens", "Tokens", READERS),
    Section("/console/people", "People", READERS),
    Section("/console/teams", "Teams & policy", EVERYONE),
    Section("/console/audit", "Audit log", AUDITORS),
    Section("/console/spend", "Spend", EVERYONE),
    Section("/console/reviews", "Reviews & register", READERS,
            also=("/console/exceptions", "/console/register", "/console/evidence")),
)


class SignInRequired(Exception):
    """No live console session: the browser is sent to the sign-in page (then back to ``next``)."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


class ConsoleRefused(Exception):
    """The signed-in person may not see or do this; answered with a page (403 unless told)."""

    def __init__(self, title: str, message: str, status_code: int = 403) -> None:
        super().__init__(message)
        self.title = title
        self.message = message
        self.status_code = status_code


@dataclass(frozen=True)
class Console:
    """The signed-in console user: their session, the caller the services see, and the page's CSRF token."""

    session: ConsoleSession
    caller: Caller
    csrf: str
    team_name: str | None = None
    sections: tuple[Section, ...] = field(default=())

    @property
    def role(self) -> str:
        return self.caller.role

    @property
    def name(self) -> str:
        return self.session.email or "bootstrap admin"

    @property
    def acts(self) -> bool:
        """Whether this role changes anything at all (action buttons are shown only then)."""
        return self.caller.role in ("admin", "owner")

    def may(self, *roles: str) -> bool:
        return self.caller.role in roles

    def require(self, roles: Iterable[str]) -> None:
        if self.caller.role not in tuple(roles):
            raise ConsoleRefused("Not for your role", f"The {self.caller.role} role may not open this page or do this.")


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def set_session_cookie(response: Response, request: Request, secret: str, max_age: int) -> None:
    response.set_cookie(SESSION_COOKIE, secret, max_age=max_age, path="/", httponly=True, samesite="lax",
                        secure=_secure(request))


def require_secret(settings: Settings) -> str:
    if not settings.session_secret:
        raise ConsoleRefused("The console is off", "KEYWARD_SESSION_SECRET is not set, so this Keyward cannot keep "
                             "browser sessions.", 404)
    return settings.session_secret


async def _console(request: Request, settings: Annotated[Settings, Depends(get_settings)]) -> Console:
    require_secret(settings)
    next_path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    secret = request.cookies.get(SESSION_COOKIE, "")
    async with get_sessionmaker()() as session, session.begin():
        signed = await console_sessions.lookup(session, secret, settings) if secret else None
        if signed is None:
            raise SignInRequired(next_path)
        team_id = team_name = None
        role = signed.role
        if role not in ADMIN_ROLES:
            assert signed.user_id is not None
            team_id = await console_sessions.owned_team(session, signed.user_id)
            if team_id is None:
                raise ConsoleRefused("The console is for administrators", "You are signed in, but your identity "
                                     "provider's groups give you no console role and you own no team. Your own "
                                     "tokens are at /me.")
            role = "owner"
            team = await session.get(Team, team_id)
            team_name = team.name if team else None
    caller = Caller(signed.actor, role, team_id)
    visible = tuple(section for section in SECTIONS if role in section.roles)
    return Console(session=signed, caller=caller, csrf=csrf_token(settings, signed.id), team_name=team_name,
                   sections=visible)


SignedConsole = Annotated[Console, Depends(_console)]


async def form_fields(request: Request) -> dict[str, list[str]]:
    return parse_qs((await request.body()).decode("utf-8", "replace"), keep_blank_values=True)


def _same_origin(request: Request) -> bool:
    """A browser's Origin (or, without one, Referer) must be this site; a request with neither is a
    non-browser client, which the CSRF token alone checks."""
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source or source == "null":
        return source is None
    parts = urlsplit(source)
    return f"{parts.scheme}://{parts.netloc}" == f"{request.url.scheme}://{request.url.netloc}"


@dataclass(frozen=True)
class Posted:
    """A console form that passed the checks: who sent it and its fields (first value of each)."""

    console: Console
    fields: dict[str, str]
    lists: dict[str, list[str]]

    def get(self, name: str, default: str = "") -> str:
        return self.fields.get(name, default)


async def _posted(request: Request, console: SignedConsole) -> Posted:
    lists = await form_fields(request)
    presented = (lists.get("csrf") or [""])[0]
    if not _same_origin(request) or not presented or not hmac.compare_digest(console.csrf.encode(),
                                                                             presented.encode()):
        raise ConsoleRefused("Refused", "This form's CSRF token is missing or wrong, or it was sent from another "
                             "site. Reload the page and try again.")
    return Posted(console=console, fields={name: values[0] for name, values in lists.items()}, lists=lists)


PostedForm = Annotated[Posted, Depends(_posted)]


def _flashes() -> URLSafeSerializer:
    return URLSafeSerializer(require_secret(get_settings()), salt="keyward.console.flash")


def _flash(request: Request) -> str | None:
    """What the last change did, as :func:`back` signed it (a forged message in the URL is not shown)."""
    raw = request.query_params.get("done")
    if not raw:
        return None
    try:
        value = _flashes().loads(raw)
    except BadSignature:
        return None
    return value if isinstance(value, str) else None


def page(request: Request, console: Console, template: str, *, title: str, status_code: int = 200,
         **context: Any) -> HTMLResponse:
    """A console page in its layout: navigation for the role, the signed-in user, flash message."""
    params = {key: value for key, value in request.query_params.items() if key != "done"}
    return render(template, {"me": console, "title": title, "path": request.url.path, "params": params,
                             "flash": _flash(request), **context}, status_code=status_code)


def refused_page(request: Request, exc: ConsoleRefused) -> HTMLResponse:
    return render("console/problem.html", {"title": exc.title, "message": exc.message, "me": None,
                                           "path": request.url.path}, status_code=exc.status_code)


def back(path: str, done: str) -> RedirectResponse:
    """After a change: back to the page it was made from, saying what was done (Post/Redirect/Get)."""
    separator = "&" if "?" in path else "?"
    return RedirectResponse(f"{path}{separator}done={quote(_flashes().dumps(done))}", status_code=303)


@contextmanager
def reporting(title: str = "That was not done") -> Iterator[None]:
    """A service's refusal (its KeywardError) becomes a console page with the same status and message."""
    try:
        yield
    except KeywardError as exc:
        raise ConsoleRefused(title, exc.message, exc.status_code) from exc


async def on_sign_in_required(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SignInRequired)
    return RedirectResponse("/console/sign-in?next=" + quote(exc.next_path, safe=""), status_code=303,
                            headers={"Cache-Control": "no-store"})


async def on_refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ConsoleRefused)
    return refused_page(request, exc)
