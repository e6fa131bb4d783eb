"""Dependencies shared by the routes: a transactional session and the authenticated caller.

Callers authenticate with a bearer credential and act in one role:

* ``admin`` — everything; the bootstrap ``KEYWARD_ADMIN_TOKEN`` is an admin flagged as break-glass:
  every change made with it (any method but GET and HEAD) is recorded as an ``admin.break_glass_used``
  event, committed on its own so that a failing request is still on record, and its reads are counted
  per hour and summarised as one ``admin.break_glass_reads`` event (:mod:`controlplane.audit.break_glass`);
* ``auditor`` — reads everything, changes nothing;
* ``finance`` — usage and spend only (``/usage``, ``/spend``), and reads spend policy (projects,
  budgets, rate limits, prices);
* ``owner`` — manages the tokens, members and service accounts of one team, opens its projects and
  reads its spend policy;
* ``self`` — someone signed in with OIDC whose IdP groups give no admin role: only ``/api/v1/me…``,
  so every role set here refuses it. A signed-in admin, auditor or finance user acts in that role
  through the session cookie (changes need its ``X-CSRF-Token`` header) or a ``keyward login``
  credential.

Admin-API credentials (``kw_api_…``) are minted at ``/api/v1/credentials`` and stored as keyed hashes.

The caller's actor names the door it came through: ``cli`` when the request carries the ``keyward``
CLI's ``Keyward-Client: cli`` header (:data:`CLIENT_HEADER`), else ``api`` (``oidc`` for the browser
session). Any other value of the header is ignored.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.audit import break_glass
from controlplane.audit.events import Actor, record_event
from controlplane.core.config import Settings, get_settings
from controlplane.core.db import get_sessionmaker
from controlplane.errors import Code, Forbidden, Unauthorized
from controlplane.oidc import signin
from controlplane.services import api_credentials, credentials

_bearer = HTTPBearer(auto_error=False, description="An admin-API credential (kw_api_…) or the bootstrap token.")


@dataclass(frozen=True)
class Caller:
    actor: Actor
    role: str
    team_id: uuid.UUID | None = None
    break_glass: bool = False

    def may_manage(self, team_id: uuid.UUID | None) -> bool:
        return self.role == "admin" or (self.role == "owner" and team_id is not None and team_id == self.team_id)

    def require_team(self, team_id: uuid.UUID | None) -> None:
        if not self.may_manage(team_id):
            raise Forbidden(Code.TEAM_FORBIDDEN, "This credential may not manage that team's resources.")

    @property
    def within_team(self) -> uuid.UUID | None:
        """The one team whose resources this caller may see (a team owner), or None: every team."""
        return self.team_id if self.role == "owner" else None

    def require_visible(self, team_id: uuid.UUID | None) -> None:
        """Readers see everything; a team owner only their own team's resources."""
        if self.role == "owner":
            self.require_team(team_id)


async def _session() -> AsyncIterator[AsyncSession]:
    """One transaction per request: it commits when the route returns and rolls back on any error."""
    async with get_sessionmaker()() as session, session.begin():
        yield session


def presented(bearer: HTTPAuthorizationCredentials | None) -> str:
    return bearer.credentials if bearer else ""


Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


#: The header the ``keyward`` CLI sends; its one accepted value makes the caller's mechanism ``cli``.
CLIENT_HEADER = "Keyward-Client"
_READS = frozenset({"GET", "HEAD"})


def mechanism(request: Request, default: str = "api") -> str:
    return "cli" if request.headers.get(CLIENT_HEADER) == "cli" else default


def _route(request: Request) -> str:
    """The route's template (``/api/v1/users/{user_id}``), so per-route counts stay few."""
    path = request.url.path
    template = getattr(request.scope.get("route"), "path", None)
    if not isinstance(template, str):
        return path[:200]
    # The route may be the router's own, without the prefix it was included under (/api/v1).
    prefix = "/api/v1" if path.startswith("/api/v1/") and not template.startswith("/api/v1") else ""
    return (prefix + template)[:200]


async def _caller(request: Request, bearer: Bearer, settings: Annotated[Settings, Depends(get_settings)]) -> Caller:
    secret = presented(bearer)
    if credentials.matches(secret, settings.admin_token):
        caller = Caller(Actor(name="admin:bootstrap", mechanism=mechanism(request)), "admin", break_glass=True)
        if request.method in _READS:
            await break_glass.count_read(_route(request))
            return caller
        async with get_sessionmaker()() as session, session.begin():
            await record_event(session, actor=caller.actor, action="admin.break_glass_used", target_type="api",
                               target_id=f"{request.method} {request.url.path}"[:200])
        return caller
    if credentials.API.well_formed(secret):
        async with get_sessionmaker()() as session, session.begin():
            credential = await api_credentials.authenticate(session, secret, hash_key=settings.hash_key)
        if credential is not None:
            return Caller(Actor(name=f"credential:{credential.name}", mechanism=mechanism(request)), credential.role,
                          credential.team_id)
    # Sign-in with OIDC: a `keyward login` credential (kw_cli_…) or, with no bearer, the browser session
    # cookie. Its role is the IdP groups' admin role, or "self", which no role set below admits.
    signed_in = await signin.authenticate(request, secret, settings)
    if signed_in is not None:
        actor = signed_in.actor
        return Caller(Actor(name=actor.name, mechanism=mechanism(request, actor.mechanism)), signed_in.role)
    raise Unauthorized(Code.CREDENTIAL_INVALID, "A valid admin-API bearer credential is required.")


def allow(*roles: str) -> Callable[..., Coroutine[Any, Any, Caller]]:
    async def check(caller: Annotated[Caller, Depends(_caller)]) -> Caller:
        if caller.role not in roles:
            raise Forbidden(Code.ROLE_FORBIDDEN, f"The {caller.role} role may not do this.")
        return caller

    return check


def _ingest(bearer: Bearer, settings: Annotated[Settings, Depends(get_settings)]) -> Actor:
    if not credentials.matches(presented(bearer), settings.ingest_token):
        raise Unauthorized(Code.INGEST_TOKEN_INVALID, "A valid data-plane ingest token is required.")
    return Actor(name="dataplane", mechanism="system")


# scope="function": commit before the response is sent, so a 201 always means "it is in the database".
SessionDep = Annotated[AsyncSession, Depends(_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_settings)]
IngestCaller = Annotated[Actor, Depends(_ingest)]
#: Role sets, named by what they may do.
Admin = Annotated[Caller, Depends(allow("admin"))]
Manager = Annotated[Caller, Depends(allow("admin", "owner"))]
Reader = Annotated[Caller, Depends(allow("admin", "auditor", "owner"))]
Auditor = Annotated[Caller, Depends(allow("admin", "auditor"))]
UsageReader = Annotated[Caller, Depends(allow("admin", "auditor", "finance"))]
AnyCaller = Annotated[Caller, Depends(allow("admin", "auditor", "finance", "owner"))]
Limit = Annotated[int, Query(ge=1, le=500, description="Page size.")]
Cursor = Annotated[str | None, Query(max_length=400, description="next_cursor from the previous page.")]
