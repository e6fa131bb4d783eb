"""The admin API's role matrix: every operation, for every kind of caller.

:data:`MATRIX` is the one statement of who may do what. Each operation of the live OpenAPI document
(but those in NOT_ROLE_CHECKED: the health probes, the data plane's ingest and the public steps of
signing in with OIDC) has a row naming the roles that may call it, and
:func:`test_the_matrix_covers_exactly_the_openapi_operations` fails when an endpoint has no row, so
a new endpoint cannot ship without a decision about its roles.

Each cell is one test: the operation, called as one kind of caller, against real objects made by the
:func:`world` fixture (teams A and B, each with its own profile, a member, a service account and a
token). "owner" is the owner credential of team A acting on team A's objects; "owner_other" is that
same credential acting on team B's objects (a list is filtered to team B, a path names B's object).
Operations that change or destroy state act on objects made for that cell alone (a fresh user, token
or credential), so no cell depends on another or on their order.

An allowed cell must answer 2xx: the requests are built to succeed (stricter than "not 401/403").
A denied cell must answer 403 with ``team_forbidden`` when the role could do this to its own team,
``role_forbidden`` otherwise; the unauthenticated kinds must answer 401 ``credential_invalid``. The
``/api/v1/me…`` rows (SIGN_IN_ONLY) answer only to a sign-in, never to an admin-API credential: 401
``sign_in_required`` for every kind, the bootstrap token included.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import httpx
import pytest

from authz.tokens import generate_token
from tests.e2e.conftest import Gateway

pytestmark = pytest.mark.e2e

# -- who may do what ------------------------------------------------------------------------------

ADMIN, AUDITOR, FINANCE, OWNER, OWNER_OTHER = "admin", "auditor", "finance", "owner", "owner_other"
ROLES = (ADMIN, AUDITOR, FINANCE, OWNER, OWNER_OTHER)

ADMIN_ONLY = frozenset({ADMIN})
AUDIT = frozenset({ADMIN, AUDITOR})
#: Not team-scoped, or filtered to the caller's team: an owner may call it whatever it names.
READ_ANY = frozenset({ADMIN, AUDITOR, OWNER, OWNER_OTHER})
#: One team's object: an owner only for their own team.
READ_TEAM = frozenset({ADMIN, AUDITOR, OWNER})
MANAGE_TEAM = frozenset({ADMIN, OWNER})
#: Spend policy (projects, budgets, rate limits): finance reads it too; an owner, their own team's.
READ_SPEND_ANY = frozenset({ADMIN, AUDITOR, FINANCE, OWNER, OWNER_OTHER})
READ_SPEND_TEAM = frozenset({ADMIN, AUDITOR, FINANCE, OWNER})
#: Prices: not a team's business.
READ_PRICES = frozenset({ADMIN, AUDITOR, FINANCE})
#: A signed-in user's own API: no admin-API credential is a sign-in, whatever its role (401
#: ``sign_in_required``; 404 ``oidc_not_configured`` when sign-in with OIDC is off).
SIGN_IN_ONLY: frozenset[str] = frozenset()

MATRIX: dict[str, frozenset[str]] = {
    "POST /api/v1/users": ADMIN_ONLY,
    "GET /api/v1/users": READ_ANY,
    "GET /api/v1/users/{user_id}": READ_ANY,
    "PATCH /api/v1/users/{user_id}": ADMIN_ONLY,
    "POST /api/v1/users/{user_id}/tokens/revoke": ADMIN_ONLY,
    "POST /api/v1/teams": ADMIN_ONLY,
    "GET /api/v1/teams": READ_ANY,
    "GET /api/v1/teams/{team_id}": READ_TEAM,
    "PATCH /api/v1/teams/{team_id}": ADMIN_ONLY,
    "GET /api/v1/teams/{team_id}/members": READ_TEAM,
    # Who belongs to a team decides whose tokens it may mint: enlisting people is the admins' (or the IdP's).
    "PUT /api/v1/teams/{team_id}/members/{user_id}": ADMIN_ONLY,
    "DELETE /api/v1/teams/{team_id}/members/{user_id}": MANAGE_TEAM,
    "POST /api/v1/teams/{team_id}/tokens/revoke": MANAGE_TEAM,
    "POST /api/v1/profiles": ADMIN_ONLY,
    "GET /api/v1/profiles": READ_ANY,
    "GET /api/v1/profiles/{profile_id}": READ_ANY,
    "PATCH /api/v1/profiles/{profile_id}": ADMIN_ONLY,
    "POST /api/v1/service-accounts": MANAGE_TEAM,
    "GET /api/v1/service-accounts": READ_ANY,
    "GET /api/v1/service-accounts/{account_id}": READ_TEAM,
    "PATCH /api/v1/service-accounts/{account_id}": MANAGE_TEAM,
    "POST /api/v1/tokens": MANAGE_TEAM,
    "GET /api/v1/tokens": READ_ANY,
    "GET /api/v1/tokens/dormant": READ_ANY,
    "GET /api/v1/tokens/{token_id}": READ_TEAM,
    "PATCH /api/v1/tokens/{token_id}": MANAGE_TEAM,
    "POST /api/v1/tokens/{token_id}/revoke": MANAGE_TEAM,
    "POST /api/v1/tokens/{token_id}/rotate": MANAGE_TEAM,
    "POST /api/v1/credentials": ADMIN_ONLY,
    "POST /api/v1/console/links": ADMIN_ONLY,
    "GET /api/v1/credentials": AUDIT,
    "POST /api/v1/credentials/{credential_id}/revoke": ADMIN_ONLY,
    "PATCH /api/v1/credentials/{credential_id}": ADMIN_ONLY,
    # The credential register: an owner reads its own team's rows (the filter is forced to it).
    "GET /api/v1/register": READ_TEAM,
    "GET /api/v1/whoami": frozenset({ADMIN, AUDITOR, FINANCE, OWNER, OWNER_OTHER}),
    # Effective access: an owner's answers are filtered to its own team.
    "GET /api/v1/access": READ_ANY,
    "GET /api/v1/access/users/{user_id}": READ_ANY,
    "GET /api/v1/access/service-accounts/{account_id}": READ_TEAM,
    "GET /api/v1/access/refused": READ_ANY,
    "GET /api/v1/usage": frozenset({ADMIN, AUDITOR, FINANCE}),
    "POST /api/v1/projects": MANAGE_TEAM,
    "GET /api/v1/projects": READ_SPEND_ANY,
    "GET /api/v1/projects/{project_id}": READ_SPEND_TEAM,
    "PATCH /api/v1/projects/{project_id}": ADMIN_ONLY,
    "POST /api/v1/projects/{project_id}/close": ADMIN_ONLY,
    "GET /api/v1/budgets": READ_SPEND_ANY,
    "PUT /api/v1/budgets/{scope_type}/{scope_id}": ADMIN_ONLY,
    "DELETE /api/v1/budgets/{scope_type}/{scope_id}": ADMIN_ONLY,
    "GET /api/v1/budgets/{scope_type}/{scope_id}/utilisation": READ_SPEND_TEAM,
    "GET /api/v1/rate-limits": READ_SPEND_ANY,
    "PUT /api/v1/rate-limits/{scope_type}/{scope_id}": ADMIN_ONLY,
    "GET /api/v1/rate-limits/{scope_type}/{scope_id}": READ_SPEND_TEAM,
    "DELETE /api/v1/rate-limits/{scope_type}/{scope_id}": ADMIN_ONLY,
    "GET /api/v1/rate-limits/{scope_type}/{scope_id}/effective": READ_SPEND_TEAM,
    "GET /api/v1/prices": READ_PRICES,
    "POST /api/v1/prices": ADMIN_ONLY,
    "GET /api/v1/prices/overrides": READ_PRICES,
    # Spend: finance's reason to exist; an owner reads its own team's (the filter is forced to it).
    "GET /api/v1/spend": frozenset({ADMIN, AUDITOR, FINANCE, OWNER}),
    "POST /api/v1/notification-channels": ADMIN_ONLY,
    "GET /api/v1/notification-channels": AUDIT,
    "GET /api/v1/notification-channels/{channel_id}": AUDIT,
    "PATCH /api/v1/notification-channels/{channel_id}": ADMIN_ONLY,
    "DELETE /api/v1/notification-channels/{channel_id}": ADMIN_ONLY,
    "POST /api/v1/notification-channels/{channel_id}/rotate-secret": ADMIN_ONLY,
    "POST /api/v1/notification-channels/{channel_id}/test": ADMIN_ONLY,
    "GET /api/v1/notification-deliveries": AUDIT,
    "GET /api/v1/audit/requests": AUDIT,
    "GET /api/v1/audit/events": AUDIT,
    "GET /api/v1/audit/users/{user_id}/activity": AUDIT,
    "GET /api/v1/audit/public-key": AUDIT,
    "GET /api/v1/audit/verify": AUDIT,
    "GET /api/v1/evidence": AUDIT,
    "POST /api/v1/scim-connections": ADMIN_ONLY,
    "GET /api/v1/scim-connections": AUDIT,
    "POST /api/v1/scim-connections/{connection_id}/credentials": ADMIN_ONLY,
    "GET /api/v1/scim-connections/{connection_id}/credentials": AUDIT,
    "POST /api/v1/scim-connections/{connection_id}/credentials/{credential_id}/revoke": ADMIN_ONLY,
    "POST /api/v1/scim-connections/{connection_id}/adopt": ADMIN_ONLY,
    # Access reviews: admins open, close and schedule them and judge exceptions (never their own); an
    # owner reads and decides its own team's items; auditors read; finance has no business here.
    "POST /api/v1/reviews": ADMIN_ONLY,
    "GET /api/v1/reviews": READ_ANY,
    "GET /api/v1/reviews/{review_id}": READ_TEAM,
    "GET /api/v1/reviews/{review_id}/items/{item_id}": READ_TEAM,
    "POST /api/v1/reviews/{review_id}/items/{item_id}/decide": MANAGE_TEAM,
    "POST /api/v1/reviews/{review_id}/close": ADMIN_ONLY,
    "GET /api/v1/reviews/{review_id}/report": AUDIT,
    "POST /api/v1/exceptions": MANAGE_TEAM,
    "GET /api/v1/exceptions": READ_ANY,
    "GET /api/v1/exceptions/{exception_id}": READ_TEAM,
    "POST /api/v1/exceptions/{exception_id}/approve": ADMIN_ONLY,
    "POST /api/v1/exceptions/{exception_id}/reject": ADMIN_ONLY,
    "POST /api/v1/exceptions/{exception_id}/withdraw": MANAGE_TEAM,
    "POST /api/v1/review-schedules": ADMIN_ONLY,
    "PATCH /api/v1/review-schedules/{schedule_id}": ADMIN_ONLY,
    "GET /api/v1/review-schedules": AUDIT,
    "GET /api/v1/me": SIGN_IN_ONLY,
    "GET /api/v1/me/tokens": SIGN_IN_ONLY,
    "POST /api/v1/me/tokens": SIGN_IN_ONLY,
    "POST /api/v1/me/tokens/{token_id}/revoke": SIGN_IN_ONLY,
    "POST /api/v1/me/logout": SIGN_IN_ONLY,
}

#: Not in the matrix: unauthenticated probes, the data plane's ingest (its own token; see
#: test_no_role_credential_can_ingest), and the public steps of signing in with OIDC.
NOT_ROLE_CHECKED = {"GET /healthz", "GET /livez", "GET /readyz", "POST /api/v1/audit/ingest", "GET /api/v1/auth/oidc",
                    "POST /api/v1/auth/oidc/cli-token"}

#: Callers with no valid admin-API credential: always 401.
UNAUTHENTICATED = ("none", "garbage", "forged", "revoked", "pat")
#: The bootstrap token is an admin.
BOOTSTRAP = "bootstrap"
KINDS = (*ROLES, BOOTSTRAP, *UNAUTHENTICATED)

Side = Literal["A", "B"]


def expectation(operation: str, kind: str) -> tuple[int | None, str | None]:
    """``(None, None)`` when the call must be allowed, else the status and code it must be denied with."""
    allowed = MATRIX[operation]
    if not allowed:  # SIGN_IN_ONLY
        return 401, "sign_in_required"
    if kind in UNAUTHENTICATED:
        return 401, "credential_invalid"
    if kind == BOOTSTRAP or kind in allowed:
        assert kind != BOOTSTRAP or ADMIN in allowed
        return None, None
    if kind == OWNER_OTHER and OWNER in allowed:
        return 403, "team_forbidden"
    return 403, "role_forbidden"


# -- the objects the cells act on -----------------------------------------------------------------


@dataclass
class Team:
    team: dict
    profile: dict
    member: dict
    account: dict
    token: dict


@dataclass
class World:
    gateway: Gateway
    sides: dict[str, Team]
    clients: dict[str, httpx.Client]
    credentials: dict[str, dict] = field(default_factory=dict)
    scim_connection: dict = field(default_factory=dict)
    oidc: bool = False

    @property
    def admin(self) -> httpx.Client:
        return self.gateway.admin

    def made(self, reply: httpx.Response, status: int = 201) -> dict:
        assert reply.status_code == status, reply.text
        return reply.json()

    # Throwaway objects for the cells that change or destroy what they act on.

    def fresh_user(self, side: Side | None = None) -> dict:
        user = self.gateway.user()
        if side is not None:
            self.gateway.join(user, self.sides[side].team)
        return user

    def fresh_token(self, side: Side) -> dict:
        team = self.sides[side]
        return self.made(self.admin.post("/tokens", json={
            "user_id": team.member["id"], "team_id": team.team["id"], "name": f"cell-{uuid.uuid4().hex[:6]}"}))

    def fresh_scim_credential(self) -> dict:
        return self.made(self.admin.post(f"/scim-connections/{self.scim_connection['id']}/credentials"))

    def fresh_credential(self) -> dict:
        return self.made(self.admin.post("/credentials", json={"name": f"cell-{uuid.uuid4().hex[:6]}",
                                                               "role": "auditor"}))

    def fresh_project(self, side: Side) -> dict:
        return self.made(self.admin.post("/projects", json={"team_id": self.sides[side].team["id"],
                                                            "name": f"cell-{uuid.uuid4().hex[:6]}"}))

    def fresh_budget(self, side: Side) -> str:
        """The path of a budget on a fresh project of ``side``'s team (not on the team: its tokens stay usable)."""
        path = f"/budgets/project/{self.fresh_project(side)['id']}"
        self.made(self.admin.put(path, json={"amount_usd": "1000"}), 200)
        return path

    def fresh_rate_limit(self, side: Side) -> str:
        path = f"/rate-limits/project/{self.fresh_project(side)['id']}"
        self.made(self.admin.put(path, json={"rpm": 1000}), 200)
        return path


@dataclass
class Call:
    method: str
    path: str
    params: dict[str, Any] | None = None
    json: Any = None


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _channel(w: World, *, enabled: bool = False) -> dict:
    """A fresh webhook channel to a port nobody listens on, paused unless ``enabled`` (so the alerts other
    tests raise are not queued for it)."""
    channel = w.made(w.admin.post("/notification-channels", json={
        "name": _unique("roles"), "kind": "webhook", "url": "http://127.0.0.1:9/keyward-roles"}))
    if not enabled:
        w.made(w.admin.patch(f"/notification-channels/{channel['id']}", json={"enabled": False}), 200)
    return channel


def _profile_body() -> dict:
    return {"name": _unique("roles-profile"), "catalog": [{"provider": "*", "pattern": "*"}],
            "environments": ["dev", "staging", "prod", "ci"], "default_token_days": 30, "max_token_days": 365}


def _in_days(days: int) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).isoformat()


def _review(w: World, side: Side, *, closed: bool = False) -> dict:
    """A fresh review of ``side``'s team's personal tokens (its member's token among them)."""
    review = w.made(w.admin.post("/reviews", json={
        "name": _unique("roles-review"), "due_at": "2099-01-01T00:00:00Z",
        "scope": {"team_id": w.sides[side].team["id"], "kinds": ["personal"]}}))
    if closed:
        w.made(w.admin.post(f"/reviews/{review['id']}/close"), 200)
    return review


def _schedule(w: World, side: Side) -> dict:
    return w.made(w.admin.post("/review-schedules", json={
        "name": _unique("roles-schedule"), "cadence": "yearly", "first_run_at": "2099-01-01T00:00:00Z",
        "scope": {"team_id": w.sides[side].team["id"]}}))


def _item(w: World, side: Side) -> str:
    review = _review(w, side)
    return f"/reviews/{review['id']}/items/{review['items'][0]['id']}"


def _exception(w: World, side: Side, *, by_third_party: bool = False) -> str:
    """A pending exception on ``side``'s service account, requested by the bootstrap token, or by a fresh
    admin credential (so that no cell's caller is its requester)."""
    body = {"subject_type": "service_account", "subject_id": w.sides[side].account["id"],
            "condition": "review_keep", "reason": "role matrix", "expires_at": _in_days(30)}
    if not by_third_party:
        return f"/exceptions/{w.made(w.admin.post('/exceptions', json=body))['id']}"
    secret = w.made(w.admin.post("/credentials", json={"name": _unique("roles-requester"), "role": "admin"}))["token"]
    with httpx.Client(base_url=w.admin.base_url, timeout=10, headers={"Authorization": f"Bearer {secret}"}) as other:
        return f"/exceptions/{w.made(other.post('/exceptions', json=body))['id']}"


#: How to call each operation as a caller acting on ``side``'s objects: a valid request, so that an
#: allowed caller gets a 2xx. Keys must be exactly those of MATRIX.
Recipe = Callable[[World, Side], Call]
REQUESTS: dict[str, Recipe] = {
    "POST /api/v1/users": lambda w, s: Call("POST", "/users", json={"email": f"{_unique('roles')}@example.com"}),
    "GET /api/v1/users": lambda w, s: Call("GET", "/users", params={"email": w.sides[s].member["email"]}),
    "GET /api/v1/users/{user_id}": lambda w, s: Call("GET", f"/users/{w.sides[s].member['id']}"),
    "PATCH /api/v1/users/{user_id}": lambda w, s: Call("PATCH", f"/users/{w.sides[s].member['id']}",
                                                       json={"display_name": "Renamed by the role matrix"}),
    "POST /api/v1/users/{user_id}/tokens/revoke": lambda w, s: Call(
        "POST", f"/users/{w.fresh_user(s)['id']}/tokens/revoke", json={"reason": "role matrix"}),
    "POST /api/v1/teams": lambda w, s: Call("POST", "/teams", json={"name": _unique("roles-team")}),
    "GET /api/v1/teams": lambda w, s: Call("GET", "/teams", params={"name": w.sides[s].team["name"]}),
    "GET /api/v1/teams/{team_id}": lambda w, s: Call("GET", f"/teams/{w.sides[s].team['id']}"),
    "PATCH /api/v1/teams/{team_id}": lambda w, s: Call("PATCH", f"/teams/{w.sides[s].team['id']}",
                                                       json={"description": "described by the role matrix"}),
    "GET /api/v1/teams/{team_id}/members": lambda w, s: Call("GET", f"/teams/{w.sides[s].team['id']}/members"),
    "PUT /api/v1/teams/{team_id}/members/{user_id}": lambda w, s: Call(
        "PUT", f"/teams/{w.sides[s].team['id']}/members/{w.fresh_user()['id']}", json={"role": "member"}),
    "DELETE /api/v1/teams/{team_id}/members/{user_id}": lambda w, s: Call(
        "DELETE", f"/teams/{w.sides[s].team['id']}/members/{w.fresh_user(s)['id']}"),
    # Revokes every live token of the team: the cells that need a live token mint their own.
    "POST /api/v1/teams/{team_id}/tokens/revoke": lambda w, s: Call(
        "POST", f"/teams/{w.sides[s].team['id']}/tokens/revoke", json={"reason": "role matrix"}),
    "POST /api/v1/profiles": lambda w, s: Call("POST", "/profiles", json=_profile_body()),
    "GET /api/v1/profiles": lambda w, s: Call("GET", "/profiles", params={"limit": 5}),
    "GET /api/v1/profiles/{profile_id}": lambda w, s: Call("GET", f"/profiles/{w.sides[s].profile['id']}"),
    "PATCH /api/v1/profiles/{profile_id}": lambda w, s: Call("PATCH", f"/profiles/{w.sides[s].profile['id']}",
                                                             json={"description": "described by the role matrix"}),
    "POST /api/v1/service-accounts": lambda w, s: Call("POST", "/service-accounts", json={
        "name": _unique("roles-sa"), "team_id": w.sides[s].team["id"],
        "business_owner_id": w.sides[s].member["id"], "technical_owner_id": w.sides[s].member["id"]}),
    "GET /api/v1/service-accounts": lambda w, s: Call("GET", "/service-accounts",
                                                      params={"team_id": w.sides[s].team["id"]}),
    "GET /api/v1/service-accounts/{account_id}": lambda w, s: Call(
        "GET", f"/service-accounts/{w.sides[s].account['id']}"),
    "PATCH /api/v1/service-accounts/{account_id}": lambda w, s: Call(
        "PATCH", f"/service-accounts/{w.sides[s].account['id']}", json={"description": "role matrix"}),
    "POST /api/v1/tokens": lambda w, s: Call("POST", "/tokens", json={
        "user_id": w.sides[s].member["id"], "team_id": w.sides[s].team["id"], "name": _unique("roles")}),
    "GET /api/v1/tokens": lambda w, s: Call("GET", "/tokens", params={"team_id": w.sides[s].team["id"]}),
    "GET /api/v1/tokens/dormant": lambda w, s: Call("GET", "/tokens/dormant",
                                                    params={"team_id": w.sides[s].team["id"], "days": 1}),
    "GET /api/v1/tokens/{token_id}": lambda w, s: Call("GET", f"/tokens/{w.sides[s].token['id']}"),
    "PATCH /api/v1/tokens/{token_id}": lambda w, s: Call("PATCH", f"/tokens/{w.fresh_token(s)['id']}",
                                                         json={"models": ["gpt-4o-mini"]}),
    "POST /api/v1/tokens/{token_id}/revoke": lambda w, s: Call(
        "POST", f"/tokens/{w.fresh_token(s)['id']}/revoke", json={"reason": "role matrix"}),
    "POST /api/v1/tokens/{token_id}/rotate": lambda w, s: Call(
        "POST", f"/tokens/{w.fresh_token(s)['id']}/rotate", json={"grace_hours": 0}),
    "POST /api/v1/console/links": lambda w, s: Call("POST", "/console/links"),
    "POST /api/v1/credentials": lambda w, s: Call("POST", "/credentials",
                                                  json={"name": _unique("roles"), "role": "finance"}),
    "GET /api/v1/credentials": lambda w, s: Call("GET", "/credentials", params={"limit": 5}),
    "PATCH /api/v1/credentials/{credential_id}": lambda w, s: Call(
        "PATCH", f"/credentials/{w.fresh_credential()['id']}", json={"purpose": "role matrix"}),
    "GET /api/v1/register": lambda w, s: Call("GET", "/register", params={"team_id": w.sides[s].team["id"]}),
    "POST /api/v1/credentials/{credential_id}/revoke": lambda w, s: Call(
        "POST", f"/credentials/{w.fresh_credential()['id']}/revoke"),
    "GET /api/v1/whoami": lambda w, s: Call("GET", "/whoami"),
    "GET /api/v1/access": lambda w, s: Call("GET", "/access", params={"provider": "openai", "limit": 5}),
    "GET /api/v1/access/users/{user_id}": lambda w, s: Call("GET", f"/access/users/{w.sides[s].member['id']}"),
    "GET /api/v1/access/service-accounts/{account_id}": lambda w, s: Call(
        "GET", f"/access/service-accounts/{w.sides[s].account['id']}"),
    "GET /api/v1/access/refused": lambda w, s: Call("GET", "/access/refused"),
    "GET /api/v1/usage": lambda w, s: Call("GET", "/usage", params={"group_by": "team"}),
    "POST /api/v1/projects": lambda w, s: Call("POST", "/projects", json={"team_id": w.sides[s].team["id"],
                                                                         "name": _unique("roles-project")}),
    "GET /api/v1/projects": lambda w, s: Call("GET", "/projects", params={"team_id": w.sides[s].team["id"]}),
    "GET /api/v1/projects/{project_id}": lambda w, s: Call("GET", f"/projects/{w.fresh_project(s)['id']}"),
    "PATCH /api/v1/projects/{project_id}": lambda w, s: Call("PATCH", f"/projects/{w.fresh_project(s)['id']}",
                                                             json={"description": "role matrix"}),
    "POST /api/v1/projects/{project_id}/close": lambda w, s: Call(
        "POST", f"/projects/{w.fresh_project(s)['id']}/close"),
    "GET /api/v1/budgets": lambda w, s: Call("GET", "/budgets", params={"scope_type": "team",
                                                                        "scope_id": w.sides[s].team["id"]}),
    "PUT /api/v1/budgets/{scope_type}/{scope_id}": lambda w, s: Call(
        "PUT", f"/budgets/project/{w.fresh_project(s)['id']}", json={"amount_usd": "1000"}),
    "DELETE /api/v1/budgets/{scope_type}/{scope_id}": lambda w, s: Call("DELETE", w.fresh_budget(s)),
    "GET /api/v1/budgets/{scope_type}/{scope_id}/utilisation": lambda w, s: Call(
        "GET", f"/budgets/team/{w.sides[s].team['id']}/utilisation"),
    "GET /api/v1/rate-limits": lambda w, s: Call("GET", "/rate-limits", params={"scope_type": "team",
                                                                                "scope_id": w.sides[s].team["id"]}),
    "PUT /api/v1/rate-limits/{scope_type}/{scope_id}": lambda w, s: Call(
        "PUT", f"/rate-limits/project/{w.fresh_project(s)['id']}", json={"rpm": 1000}),
    "GET /api/v1/rate-limits/{scope_type}/{scope_id}": lambda w, s: Call("GET", w.fresh_rate_limit(s)),
    "DELETE /api/v1/rate-limits/{scope_type}/{scope_id}": lambda w, s: Call("DELETE", w.fresh_rate_limit(s)),
    "GET /api/v1/rate-limits/{scope_type}/{scope_id}/effective": lambda w, s: Call(
        "GET", f"/rate-limits/team/{w.sides[s].team['id']}/effective"),
    "GET /api/v1/prices": lambda w, s: Call("GET", "/prices", params={"provider": "openai"}),
    "POST /api/v1/prices": lambda w, s: Call("POST", "/prices", json={
        "provider": "openai", "model": _unique("roles-model"), "input_per_mtok": 1, "output_per_mtok": 2}),
    "GET /api/v1/prices/overrides": lambda w, s: Call("GET", "/prices/overrides", params={"limit": 5}),
    "GET /api/v1/spend": lambda w, s: Call("GET", "/spend", params={"group_by": "team,model",
                                                                    "team_id": w.sides[s].team["id"]}),
    "POST /api/v1/notification-channels": lambda w, s: Call("POST", "/notification-channels", json={
        "name": _unique("roles"), "kind": "slack", "url": "http://127.0.0.1:9/keyward-roles"}),
    "GET /api/v1/notification-channels": lambda w, s: Call("GET", "/notification-channels", params={"limit": 5}),
    "GET /api/v1/notification-channels/{channel_id}": lambda w, s: Call(
        "GET", f"/notification-channels/{_channel(w)['id']}"),
    "PATCH /api/v1/notification-channels/{channel_id}": lambda w, s: Call(
        "PATCH", f"/notification-channels/{_channel(w)['id']}", json={"name": _unique("roles")}),
    "DELETE /api/v1/notification-channels/{channel_id}": lambda w, s: Call(
        "DELETE", f"/notification-channels/{_channel(w)['id']}"),
    "POST /api/v1/notification-channels/{channel_id}/rotate-secret": lambda w, s: Call(
        "POST", f"/notification-channels/{_channel(w)['id']}/rotate-secret"),
    "POST /api/v1/notification-channels/{channel_id}/test": lambda w, s: Call(
        "POST", f"/notification-channels/{_channel(w, enabled=True)['id']}/test"),
    "GET /api/v1/notification-deliveries": lambda w, s: Call("GET", "/notification-deliveries",
                                                             params={"limit": 5}),
    "GET /api/v1/audit/requests": lambda w, s: Call("GET", "/audit/requests", params={"limit": 5}),
    "GET /api/v1/audit/events": lambda w, s: Call("GET", "/audit/events", params={"limit": 5}),
    "GET /api/v1/audit/users/{user_id}/activity": lambda w, s: Call(
        "GET", f"/audit/users/{w.sides[s].member['id']}/activity"),
    "GET /api/v1/audit/public-key": lambda w, s: Call("GET", "/audit/public-key"),
    "GET /api/v1/audit/verify": lambda w, s: Call("GET", "/audit/verify"),
    "GET /api/v1/evidence": lambda w, s: Call("GET", "/evidence", params={"verify": "false", "format": "json"}),
    "POST /api/v1/scim-connections": lambda w, s: Call("POST", "/scim-connections",
                                                       json={"name": _unique("roles"), "idp": "okta"}),
    "GET /api/v1/scim-connections": lambda w, s: Call("GET", "/scim-connections", params={"limit": 5}),
    "POST /api/v1/scim-connections/{connection_id}/credentials": lambda w, s: Call(
        "POST", f"/scim-connections/{w.scim_connection['id']}/credentials"),
    "GET /api/v1/scim-connections/{connection_id}/credentials": lambda w, s: Call(
        "GET", f"/scim-connections/{w.scim_connection['id']}/credentials"),
    "POST /api/v1/scim-connections/{connection_id}/credentials/{credential_id}/revoke": lambda w, s: Call(
        "POST", f"/scim-connections/{w.scim_connection['id']}/credentials/{w.fresh_scim_credential()['id']}/revoke"),
    "POST /api/v1/scim-connections/{connection_id}/adopt": lambda w, s: Call(
        "POST", f"/scim-connections/{w.scim_connection['id']}/adopt", json={"user_ids": [w.fresh_user()["id"]]}),
    "POST /api/v1/reviews": lambda w, s: Call("POST", "/reviews", json={
        "name": _unique("roles-review"), "due_at": "2099-01-01T00:00:00Z",
        "scope": {"team_id": w.sides[s].team["id"], "kinds": ["personal"]}}),
    "GET /api/v1/reviews": lambda w, s: Call("GET", "/reviews", params={"limit": 5}),
    "GET /api/v1/reviews/{review_id}": lambda w, s: Call("GET", f"/reviews/{_review(w, s)['id']}"),
    "GET /api/v1/reviews/{review_id}/items/{item_id}": lambda w, s: Call("GET", _item(w, s)),
    "POST /api/v1/reviews/{review_id}/items/{item_id}/decide": lambda w, s: Call(
        "POST", f"{_item(w, s)}/decide", json={"decision": "escalate", "reason": "role matrix"}),
    "POST /api/v1/reviews/{review_id}/close": lambda w, s: Call("POST", f"/reviews/{_review(w, s)['id']}/close"),
    "GET /api/v1/reviews/{review_id}/report": lambda w, s: Call(
        "GET", f"/reviews/{_review(w, s, closed=True)['id']}/report"),
    "POST /api/v1/exceptions": lambda w, s: Call("POST", "/exceptions", json={
        "subject_type": "service_account", "subject_id": w.sides[s].account["id"], "condition": "review_keep",
        "reason": "role matrix", "expires_at": _in_days(30)}),
    "GET /api/v1/exceptions": lambda w, s: Call("GET", "/exceptions", params={"limit": 5}),
    "GET /api/v1/exceptions/{exception_id}": lambda w, s: Call("GET", _exception(w, s)),
    "POST /api/v1/exceptions/{exception_id}/approve": lambda w, s: Call(
        "POST", f"{_exception(w, s, by_third_party=True)}/approve"),
    "POST /api/v1/exceptions/{exception_id}/reject": lambda w, s: Call(
        "POST", f"{_exception(w, s, by_third_party=True)}/reject"),
    "POST /api/v1/exceptions/{exception_id}/withdraw": lambda w, s: Call("POST", f"{_exception(w, s)}/withdraw"),
    "POST /api/v1/review-schedules": lambda w, s: Call("POST", "/review-schedules", json={
        "name": _unique("roles-schedule"), "cadence": "yearly", "first_run_at": "2099-01-01T00:00:00Z",
        "scope": {"team_id": w.sides[s].team["id"]}}),
    "PATCH /api/v1/review-schedules/{schedule_id}": lambda w, s: Call(
        "PATCH", f"/review-schedules/{_schedule(w, s)['id']}", json={"enabled": False}),
    "GET /api/v1/review-schedules": lambda w, s: Call("GET", "/review-schedules", params={"limit": 5}),
    "GET /api/v1/me": lambda w, s: Call("GET", "/me"),
    "GET /api/v1/me/tokens": lambda w, s: Call("GET", "/me/tokens"),
    "POST /api/v1/me/tokens": lambda w, s: Call("POST", "/me/tokens", json={"name": _unique("roles")}),
    "POST /api/v1/me/tokens/{token_id}/revoke": lambda w, s: Call(
        "POST", f"/me/tokens/{w.sides[s].token['id']}/revoke"),
    "POST /api/v1/me/logout": lambda w, s: Call("POST", "/me/logout"),
}


@pytest.fixture(scope="module")
def world(gateway: Gateway) -> Iterator[World]:
    admin = gateway.admin

    def made(reply: httpx.Response) -> dict:
        assert reply.status_code == 201, reply.text
        return reply.json()

    sides: dict[str, Team] = {}
    for side in ("A", "B"):
        profile = made(admin.post("/profiles", json=_profile_body()))
        team = gateway.team(_unique(f"roles-{side}"), profile_id=profile["id"])
        member = gateway.user()
        gateway.join(member, team)
        account = made(admin.post("/service-accounts", json={
            "name": _unique("roles-sa"), "team_id": team["id"],
            "business_owner_id": member["id"], "technical_owner_id": member["id"]}))
        token = made(admin.post("/tokens", json={"user_id": member["id"], "team_id": team["id"], "name": "roles"}))
        sides[side] = Team(team, profile, member, account, token)

    credentials = {
        role: made(admin.post("/credentials", json={"name": _unique(f"roles-{role}"), "role": role}))
        for role in (ADMIN, AUDITOR, FINANCE)
    }
    owner = made(admin.post("/credentials", json={"name": _unique("roles-owner"), "role": "owner",
                                                  "team_id": sides["A"].team["id"]}))
    credentials[OWNER] = credentials[OWNER_OTHER] = owner
    revoked = made(admin.post("/credentials", json={"name": _unique("roles-revoked"), "role": "admin"}))
    secrets: dict[str, str | None] = {role: credential["token"] for role, credential in credentials.items()}
    secrets |= {
        BOOTSTRAP: gateway.info.admin_token,
        "none": None,
        "garbage": "not-a-credential-at-all",
        "forged": generate_token("kw_api_"),  # well formed, checksum and all, but never issued
        "revoked": revoked["token"],
        "pat": sides["A"].token["token"],  # a personal access token is not an admin credential
    }
    clients = {
        kind: httpx.Client(base_url=f"{gateway.info.api_url}/api/v1", timeout=10,
                           headers={"Authorization": f"Bearer {secret}"} if secret is not None else {})
        for kind, secret in secrets.items()
    }
    # The revoked credential worked until it was revoked.
    assert clients["revoked"].get("/whoami").status_code == 200
    assert admin.post(f"/credentials/{revoked['id']}/revoke").status_code == 200
    assert set(clients) == set(KINDS)
    scim_connection = made(admin.post("/scim-connections", json={"name": _unique("roles"), "idp": "other"}))
    oidc = httpx.get(f"{gateway.info.api_url}/api/v1/auth/oidc", timeout=10).status_code == 200
    try:
        yield World(gateway, sides, clients, credentials, scim_connection["connection"], oidc)
    finally:
        for client in clients.values():
            client.close()


# -- the matrix -----------------------------------------------------------------------------------


def _openapi_operations(gateway: Gateway) -> set[str]:
    document = httpx.get(f"{gateway.info.api_url}/openapi.json", timeout=10).json()
    methods = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
    return {f"{method.upper()} {path}" for path, item in document["paths"].items() for method in item
            if method in methods}


def test_the_matrix_covers_exactly_the_openapi_operations(gateway: Gateway) -> None:
    live = _openapi_operations(gateway) - NOT_ROLE_CHECKED
    assert sorted(live - set(MATRIX)) == [], "operations without a row in MATRIX: decide who may call them"
    assert sorted(set(MATRIX) - live) == [], "rows in MATRIX for operations the API no longer has"
    assert set(REQUESTS) == set(MATRIX)
    assert all(roles <= set(ROLES) for roles in MATRIX.values())


CELLS = [pytest.param(operation, kind, id=f"{operation} as {kind}") for operation in MATRIX for kind in KINDS]


@pytest.mark.parametrize(("operation", "kind"), CELLS)
def test_role_matrix(world: World, operation: str, kind: str) -> None:
    side: Side = "B" if kind == OWNER_OTHER else "A"
    call = REQUESTS[operation](world, side)
    method, _path = operation.split(" ", 1)
    assert call.method == method
    reply = world.clients[kind].request(call.method, call.path, params=call.params, json=call.json)
    status, code = expectation(operation, kind)
    where = f"{kind} {call.method} {call.path} -> {reply.status_code} {reply.text[:300]}"
    if code == "sign_in_required" and not world.oidc:
        status, code = 404, "oidc_not_configured"
    if status is None:
        assert 200 <= reply.status_code < 300, f"should be allowed: {where}"
    else:
        assert reply.status_code == status, f"should be denied with {status} {code}: {where}"
        assert reply.json()["code"] == code, where
        if status == 401:
            assert reply.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("kind", KINDS)
def test_no_role_credential_can_ingest(world: World, kind: str) -> None:
    """The audit ingest takes the data plane's token and nothing else, whatever the role."""
    reply = world.clients[kind].post("/audit/ingest", json={"records": []})
    assert reply.status_code == 401, reply.text
    assert reply.json()["code"] == "ingest_token_invalid"


# -- break-glass, whoami, team scoping ------------------------------------------------------------


def test_whoami_names_the_role_and_flags_only_the_bootstrap_token_as_break_glass(world: World) -> None:
    bootstrap = world.clients[BOOTSTRAP].get("/whoami").json()
    assert bootstrap == {"actor": "admin:bootstrap", "role": "admin", "team_id": None, "break_glass": True}
    for role in (ADMIN, AUDITOR, FINANCE, OWNER):
        credential = world.credentials[role]
        me = world.clients[role].get("/whoami").json()
        assert me == {"actor": f"credential:{credential['name']}", "role": role,
                      "team_id": credential["team_id"], "break_glass": False}
    assert world.clients[OWNER].get("/whoami").json()["team_id"] == world.sides["A"].team["id"]


def test_every_break_glass_write_is_recorded_with_method_and_path(world: World) -> None:
    missing = uuid.uuid4()
    # A failing request (404, 422) is on record too; a minted admin credential's request is not break-glass.
    # Reads are counted per hour and recorded as one summary event (tests/e2e/test_audit_export_verify.py).
    assert world.clients[BOOTSTRAP].get(f"/users/{missing}").status_code == 404
    assert world.clients[BOOTSTRAP].patch(f"/teams/{missing}", json={"no such field": 1}).status_code == 422
    assert world.clients[ADMIN].get(f"/profiles/{missing}").status_code == 404

    def recorded(target: str) -> list[dict]:
        reply = world.clients[AUDITOR].get("/audit/events", params={
            "action": "admin.break_glass_used", "target_id": target})
        assert reply.status_code == 200, reply.text
        return reply.json()["items"]

    assert recorded(f"GET /api/v1/users/{missing}") == []
    [event] = recorded(f"PATCH /api/v1/teams/{missing}")
    assert event["actor"] == "admin:bootstrap" and event["mechanism"] == "api" and event["target_type"] == "api"
    assert recorded(f"GET /api/v1/profiles/{missing}") == []
    # The filter is the one the brief's reader would use.
    listed = world.clients[AUDITOR].get("/audit/events", params={"action": "admin.break_glass_used",
                                                                 "limit": 500}).json()["items"]
    assert all(item["action"] == "admin.break_glass_used" for item in listed)


def test_an_owner_cannot_enlist_someone_and_mint_a_token_in_their_name(world: World) -> None:
    owner = world.clients[OWNER]
    a, b = world.sides["A"], world.sides["B"]
    enlisted = owner.put(f"/teams/{a.team['id']}/members/{b.member['id']}", json={"role": "member"})
    assert enlisted.status_code == 403 and enlisted.json()["code"] == "role_forbidden", enlisted.text
    minted = owner.post("/tokens", json={"user_id": b.member["id"], "team_id": a.team["id"], "name": "borrowed"})
    assert minted.status_code == 409 and minted.json()["code"] == "not_a_member", minted.text
    members = world.clients[ADMIN].get(f"/teams/{a.team['id']}/members", params={"limit": 500}).json()["items"]
    assert b.member["id"] not in {m["user_id"] for m in members}


def test_an_owner_lists_only_their_own_teams_objects(world: World) -> None:
    owner = world.clients[OWNER]
    a, b = world.sides["A"], world.sides["B"]
    for path, params in (("/tokens", {}), ("/tokens", {"team_id": b.team["id"]}), ("/tokens/dormant", {"days": 1}),
                         ("/service-accounts", {}), ("/teams", {})):
        reply = owner.get(path, params={**params, "limit": 500})
        assert reply.status_code == 200, reply.text
        items = reply.json()["items"]
        team_of = (lambda item: item["id"]) if path == "/teams" else (lambda item: item["team_id"])
        assert {team_of(item) for item in items} <= {a.team["id"]}, (path, params)
    tokens = {t["id"] for t in owner.get("/tokens", params={"limit": 500}).json()["items"]}
    assert a.token["id"] in tokens and b.token["id"] not in tokens
    accounts = {s["id"] for s in owner.get("/service-accounts", params={"limit": 500}).json()["items"]}
    assert a.account["id"] in accounts and b.account["id"] not in accounts
    # An admin sees either team's.
    for side in (a, b):
        listed = world.clients[ADMIN].get("/tokens", params={"team_id": side.team["id"], "limit": 500}).json()
        assert side.token["id"] in {t["id"] for t in listed["items"]}
