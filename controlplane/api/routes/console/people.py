"""The console's people pages: people (users) and service accounts, each with what it can reach now and
its tokens; deprovisioning, suspending, reactivating a person and revoking their tokens; reassigning the
owners of a service account and disabling it.

The role sets and checks are the admin API's: ``/users`` (admins, auditors and team owners read every
person; only admins change one), ``/service-accounts`` (a team owner sees and manages its own team's),
``/access/users|service-accounts/{id}`` (a team owner sees the tokens acting for its team),
``/audit/users/{id}/activity`` (admins and auditors). A person's suspension or deprovisioning and the
revocation of their tokens run inside :func:`revocation.revoking`, as the API's do, so the page answers
once every gateway replica refuses the tokens, and says so.

The list pages are cursor pages from the services (50 rows); what a row adds (teams, live tokens, last
request, owners' names) is read for those rows only, in one set-based query each.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane import schemas
from controlplane.api.routes.console._base import (
    ADMIN,
    AUDITORS,
    READERS,
    Console,
    ConsoleRefused,
    PostedForm,
    SignedConsole,
    back,
    page,
    reporting,
)
from controlplane.api.routes.console._forms import person_id, validated
from controlplane.audit import queries
from controlplane.core.db import get_sessionmaker
from controlplane.models import ServiceAccount, Team, Token, User
from controlplane.services import access, directory, lifecycle, revocation, service_accounts, teams, users

router = APIRouter(include_in_schema=False)

PEOPLE = "/console/people"
ACCOUNTS = "/console/people/service-accounts"
PAGE = 50
#: Who changes a service account (the API's ``Manager``): an admin, or the owner of its team.
MANAGERS = ("admin", "owner")
USER_STATUSES = ("active", "suspended", "deprovisioned")
ACCOUNT_STATUSES = ("active", "disabled")
#: The owners a service account names: form field, label, and whether it may be left empty.
OWNERS = (("business_owner", "Business owner", False), ("technical_owner", "Technical owner", False),
          ("security_owner", "Security owner", True), ("finance_owner", "Finance owner", True))
#: A person's status change: the button, the question asked first, and whether it is destructive.
STATUS_CHANGES = {
    "deprovisioned": ("Deprovision", "Deprovision {who}? Every token they own is revoked now and for good, and the "
                      "service accounts and admin credentials they own are flagged for reassignment.", True),
    "suspended": ("Suspend", "Suspend {who}? The gateway refuses their tokens until they are reactivated.", True),
    "active": ("Reactivate", "Reactivate {who}? Their tokens that are still live (not revoked, not expired) work "
               "again at the gateway.", False),
}
ACCOUNT_CHANGES = {
    "disabled": ("Disable", "Disable the service account {who}? The gateway refuses its tokens at once.", True),
    "active": ("Enable", "Enable the service account {who}? Its live tokens work again at the gateway.", False),
}


def _pick(value: str | None, allowed: tuple[str, ...], default: str | None = None) -> str | None:
    """A filter's or sort's value if it is one of ``allowed`` (a form's "any" sends an empty one)."""
    return value if value in allowed else default


def _confirmed(revoking: revocation.Revoking) -> str:
    """What the gateway replicas said about a revocation, as the API's ``revocation`` document says it."""
    confirmation = revoking.confirmation
    if confirmation is None:
        return ""
    if confirmation.applied:
        return f"Every gateway replica confirmed it ({len(confirmation.confirmed)} in {confirmation.waited_ms} ms)."
    return (f"Not yet confirmed by {', '.join(confirmation.unconfirmed)}: those replicas may let the tokens "
            "through until they catch up.")


# -- people -----------------------------------------------------------------------------------------------


@router.get(PEOPLE)
async def people_page(request: Request, console: SignedConsole,
                      status: Annotated[str | None, Query(max_length=16)] = None,
                      q: Annotated[str | None, Query(max_length=200)] = None,
                      sort: Annotated[str | None, Query(max_length=20)] = None,
                      cursor: Annotated[str | None, Query(max_length=400)] = None) -> HTMLResponse:
    """People with their status, teams, live tokens and last request; filtered, sorted, 50 a page."""
    console.require(READERS)
    team = console.caller.within_team
    order = _pick(sort, ("email", "-email", "created_at", "-created_at"), "email")
    async with get_sessionmaker()() as session, session.begin():
        with reporting("That list cannot be shown"):
            found = await users.list_users(session, status=_pick(status, USER_STATUSES), email=None,
                                           q=(q or "").strip() or None, sort=order or "email", cursor=cursor,
                                           limit=PAGE)
        ids = [user.id for user in found["items"]]
        memberships = await directory.memberships(session, ids, team)
        live = await directory.live_tokens(session, Token.user_id, ids, team)
        last = await directory.last_requests(session, ids) if console.may(*AUDITORS) else None
    return page(request, console, "console/people.html", title="People", people=found["items"],
                next_cursor=found["next_cursor"], memberships=memberships, live=live, last=last, sort=order,
                statuses=[(value, value) for value in USER_STATUSES])


@router.get(ACCOUNTS)
async def service_accounts_page(request: Request, console: SignedConsole,
                                team_id: Annotated[str | None, Query(max_length=40)] = None,
                                status: Annotated[str | None, Query(max_length=16)] = None,
                                sort: Annotated[str | None, Query(max_length=20)] = None,
                                cursor: Annotated[str | None, Query(max_length=400)] = None) -> HTMLResponse:
    """Service accounts (a team owner: its team's) with team, owners, status and the reassignment flag."""
    console.require(READERS)
    within = console.caller.within_team
    order = _pick(sort, ("name", "-name", "created_at", "-created_at"), "name")
    try:
        team_filter = uuid.UUID(team_id) if team_id else None
    except ValueError:
        team_filter = None
    async with get_sessionmaker()() as session, session.begin():
        with reporting("That list cannot be shown"):
            found = await service_accounts.list_service_accounts(
                session, within_team=within, team_id=team_filter, status=_pick(status, ACCOUNT_STATUSES),
                sort=order or "name", cursor=cursor, limit=PAGE)
        accounts = found["items"]
        team_choices = (await teams.list_teams(session, within_team=within, name=None, profile_id=None, sort="name",
                                               cursor=None, limit=500))["items"]
        names = await directory.by_id(session, Team, {a.team_id for a in accounts})
        owners = await directory.by_id(session, User, {a.business_owner_id for a in accounts}
                              | {a.technical_owner_id for a in accounts})
        live = await directory.live_tokens(session, Token.service_account_id, [a.id for a in accounts], within)
    return page(request, console, "console/service_accounts.html", title="Service accounts", accounts=accounts,
                next_cursor=found["next_cursor"], team_names={key: team.name for key, team in names.items()},
                team_choices=team_choices, owners=owners, live=live, sort=order,
                statuses=[(value, value) for value in ACCOUNT_STATUSES])


@router.get(PEOPLE + "/{user_id}")
async def person_page(request: Request, console: SignedConsole, user_id: uuid.UUID,
                      cursor: Annotated[str | None, Query(max_length=400)] = None) -> HTMLResponse:
    """One person: status, teams, what each live token may reach now, their tokens, their last request."""
    console.require(READERS)
    team = console.caller.within_team
    async with get_sessionmaker()() as session, session.begin():
        with reporting("That person cannot be shown"):
            user = await users.get_user(session, user_id=user_id)
            tokens = await lifecycle.page(session, lifecycle.list_query(within_team=team, user_id=user_id),
                                          sort="-created_at", cursor=cursor, limit=PAGE)
        await access.annotate(session, tokens["items"])
        reach = await access.of_identity(session, identity_type="user", identity_id=user_id, team_id=team)
        memberships = (await directory.memberships(session, [user_id], team)).get(user_id, [])
        live = (await directory.live_tokens(session, Token.user_id, [user_id], team)).get(user_id, 0)
        activity = await queries.user_activity(session, user_id) if console.may(*AUDITORS) else None
        owned = await directory.accounts_owned_by(session, user_id, within_team=team, limit=PAGE)
    return page(request, console, "console/person.html", title=user.email, person=user, tokens=tokens["items"],
                next_cursor=tokens["next_cursor"], reach=reach, memberships=memberships, live=live,
                activity=activity, owned=owned, changes=STATUS_CHANGES, now=datetime.now(UTC))


@router.get(PEOPLE + "/{user_id}/status/confirm")
async def confirm_status(request: Request, console: SignedConsole, user_id: uuid.UUID,
                         status: Annotated[str, Query(max_length=16)] = "deprovisioned") -> HTMLResponse:
    console.require(ADMIN)
    if status not in STATUS_CHANGES:
        raise ConsoleRefused("Unknown change", "A person's status is active, suspended or deprovisioned.", 422)
    async with get_sessionmaker()() as session, session.begin():
        with reporting("That person cannot be shown"):
            user = await users.get_user(session, user_id=user_id)
        live = (await directory.live_tokens(session, Token.user_id, [user_id], None)).get(user_id, 0)
    button, question, danger = STATUS_CHANGES[status]
    return page(request, console, "console/confirm.html", title=f"{button} {user.email}",
                question=question.format(who=user.email),
                details=[("Person", user.email), ("Status now", user.status), ("Live tokens", live)],
                action=f"{PEOPLE}/{user_id}/status", hidden=[("status", status)], inputs=[], button=button,
                danger=danger, cancel=f"{PEOPLE}/{user_id}")


@router.post(PEOPLE + "/{user_id}/status")
async def change_status(user_id: uuid.UUID, form: PostedForm) -> RedirectResponse:
    """The API's ``PATCH /users/{id}`` with a status: suspending or deprovisioning runs inside
    ``revocation.revoking``, so it answers once every gateway replica refuses the person's tokens."""
    console = form.console
    console.require(ADMIN)
    wanted = form.get("status")
    if wanted not in STATUS_CHANGES:
        raise ConsoleRefused("That was not done", "A person's status is active, suspended or deprovisioned.", 422)
    data = validated(schemas.UserUpdate, dict(status=wanted))
    actor = console.caller.actor
    with reporting("That was not done"):
        if wanted in ("suspended", "deprovisioned"):
            async with revocation.revoking(actor=actor, target_type="user", target_id=str(user_id)) as revoking:
                user = await users.update_user(revoking.session, actor=actor, user_id=user_id, data=data)
            done = f"{user.email} is {user.status}. {_confirmed(revoking)}"
        else:
            async with get_sessionmaker()() as session, session.begin():
                user = await users.update_user(session, actor=actor, user_id=user_id, data=data)
            done = f"{user.email} is {user.status}."
    return back(f"{PEOPLE}/{user_id}", done.strip())


@router.get(PEOPLE + "/{user_id}/revoke-tokens/confirm")
async def confirm_revoke_tokens(request: Request, console: SignedConsole, user_id: uuid.UUID) -> HTMLResponse:
    console.require(ADMIN)
    async with get_sessionmaker()() as session, session.begin():
        with reporting("That person cannot be shown"):
            user = await users.get_user(session, user_id=user_id)
        live = (await directory.live_tokens(session, Token.user_id, [user_id], None)).get(user_id, 0)
    return page(request, console, "console/confirm.html", title=f"Revoke every token of {user.email}",
                question=f"Revoke all {live} live tokens of {user.email}? The gateway refuses them at once; a "
                         "revoked token cannot be restored.",
                details=[("Person", user.email), ("Status", user.status), ("Live tokens", live)],
                action=f"{PEOPLE}/{user_id}/revoke-tokens", hidden=[],
                inputs=[{"name": "reason", "label": "Reason (optional, kept in the audit log)", "kind": "text",
                         "value": "", "required": False}],
                button="Revoke every token", danger=True, cancel=f"{PEOPLE}/{user_id}")


@router.post(PEOPLE + "/{user_id}/revoke-tokens")
async def revoke_tokens(user_id: uuid.UUID, form: PostedForm) -> RedirectResponse:
    """The API's ``POST /users/{id}/tokens/revoke``, in one transaction, confirmed by every replica."""
    console = form.console
    console.require(ADMIN)
    data = validated(schemas.BulkRevoke, dict(reason=form.get("reason").strip() or None))
    actor = console.caller.actor
    with reporting("The tokens were not revoked"):
        async with revocation.revoking(actor=actor, target_type="user", target_id=str(user_id)) as revoking:
            count = await users.revoke_tokens(revoking.session, actor=actor, user_id=user_id, reason=data.reason)
    plural = "" if count == 1 else "s"
    return back(f"{PEOPLE}/{user_id}", f"{count} token{plural} revoked. {_confirmed(revoking)}".strip())


# -- service accounts ------------------------------------------------------------------------------------


async def _visible_account(session: AsyncSession, console: Console, account_id: uuid.UUID, *,
                           manage: bool) -> ServiceAccount:
    """The account, if this caller may see it (``manage``: change it), as the API's routes check."""
    account = await service_accounts.get_service_account(session, account_id=account_id)
    if manage:
        console.caller.require_team(account.team_id)
    else:
        console.caller.require_visible(account.team_id)
    return account


@router.get(ACCOUNTS + "/{account_id}")
async def service_account_page(request: Request, console: SignedConsole, account_id: uuid.UUID,
                               cursor: Annotated[str | None, Query(max_length=400)] = None) -> HTMLResponse:
    """One service account: its owners, what each live token may reach now, its tokens; and for those who
    manage it, the form that reassigns its owners."""
    console.require(READERS)
    within = console.caller.within_team
    async with get_sessionmaker()() as session, session.begin():
        with reporting("That service account cannot be shown"):
            account = await _visible_account(session, console, account_id, manage=False)
            tokens = await lifecycle.page(session, lifecycle.list_query(within_team=within,
                                                                        service_account_id=account_id),
                                          sort="-created_at", cursor=cursor, limit=PAGE)
        await access.annotate(session, tokens["items"])
        reach = await access.of_identity(session, identity_type="service_account", identity_id=account_id)
        team = await session.get(Team, account.team_id)
        people = await directory.by_id(session, User, {getattr(account, f"{field}_id") for field, _, _ in OWNERS})
        candidates: list[str] = []
        if console.caller.may_manage(account.team_id):  # suggestions for the owner fields: the team's people
            candidates = await directory.active_member_emails(session, account.team_id)
    owners = [{"field": field, "label": label, "optional": optional,
               "person": people.get(getattr(account, f"{field}_id"))} for field, label, optional in OWNERS]
    return page(request, console, "console/service_account.html", title=account.name, account=account,
                team=team, owners=owners, tokens=tokens["items"], next_cursor=tokens["next_cursor"], reach=reach,
                candidates=candidates, manages=console.caller.may_manage(account.team_id), changes=ACCOUNT_CHANGES,
                now=datetime.now(UTC))


@router.post(ACCOUNTS + "/{account_id}/owners")
async def reassign_owners(account_id: uuid.UUID, form: PostedForm) -> RedirectResponse:
    """The API's ``PATCH /service-accounts/{id}`` with the four owners, named by e-mail; giving a flagged
    account active owners clears its flag (the service does)."""
    console = form.console
    console.require(MANAGERS)
    async with get_sessionmaker()() as session, session.begin():
        with reporting("The owners were not changed"):
            account = await _visible_account(session, console, account_id, manage=True)
            changes: dict[str, uuid.UUID | None] = {}
            for field, label, optional in OWNERS:
                email = form.get(field).strip()
                if not email and not optional:
                    raise ConsoleRefused("The owners were not changed", f"{label} is required.", 422)
                changes[f"{field}_id"] = await person_id(session, email, label) if email else None
            data = validated(schemas.ServiceAccountUpdate, changes)
            flagged = account.reassign_by is not None
            account = await service_accounts.update_service_account(session, actor=console.caller.actor,
                                                                    account_id=account_id, data=data)
            cleared = flagged and account.reassign_by is None
    done = f"The owners of {account.name} were updated" + ("; it is no longer flagged for reassignment." if cleared
                                                           else ".")
    return back(f"{ACCOUNTS}/{account_id}", done)


@router.get(ACCOUNTS + "/{account_id}/status/confirm")
async def confirm_account_status(request: Request, console: SignedConsole, account_id: uuid.UUID,
                                 status: Annotated[str, Query(max_length=16)] = "disabled") -> HTMLResponse:
    console.require(MANAGERS)
    if status not in ACCOUNT_CHANGES:
        raise ConsoleRefused("Unknown change", "A service account is active or disabled.", 422)
    async with get_sessionmaker()() as session, session.begin():
        with reporting("That service account cannot be shown"):
            account = await _visible_account(session, console, account_id, manage=True)
        live = (await directory.live_tokens(session, Token.service_account_id, [account_id], None)).get(account_id, 0)
    button, question, danger = ACCOUNT_CHANGES[status]
    return page(request, console, "console/confirm.html", title=f"{button} {account.name}",
                question=question.format(who=account.name),
                details=[("Service account", account.name), ("Status now", account.status), ("Live tokens", live)],
                action=f"{ACCOUNTS}/{account_id}/status", hidden=[("status", status)], inputs=[], button=button,
                danger=danger, cancel=f"{ACCOUNTS}/{account_id}")


@router.post(ACCOUNTS + "/{account_id}/status")
async def change_account_status(account_id: uuid.UUID, form: PostedForm) -> RedirectResponse:
    """The API's ``PATCH /service-accounts/{id}`` with a status: disabling stops its tokens at once."""
    console = form.console
    console.require(MANAGERS)
    wanted = form.get("status")
    if wanted not in ACCOUNT_CHANGES:
        raise ConsoleRefused("That was not done", "A service account is active or disabled.", 422)
    data = validated(schemas.ServiceAccountUpdate, dict(status=wanted))
    async with get_sessionmaker()() as session, session.begin():
        with reporting("That was not done"):
            await _visible_account(session, console, account_id, manage=True)
            account = await service_accounts.update_service_account(session, actor=console.caller.actor,
                                                                    account_id=account_id, data=data)
    return back(f"{ACCOUNTS}/{account_id}", f"{account.name} is {account.status}.")
