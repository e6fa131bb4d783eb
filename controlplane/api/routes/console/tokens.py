"""The console's tokens pages: search every token, open one, and mint, revoke, rotate or narrow.

The same role sets and checks as the admin API (:mod:`controlplane.api.routes.tokens`): admins, auditors
and team owners read (an owner only their team's tokens), admins and the owner of a token's team act,
through the same service functions, recorded with the mechanism ``console``. A secret (mint, rotation)
is written into the answer to the POST that made it, sent ``no-store``, and kept nowhere: no redirect
carries it, no page shows it again. The search is :mod:`controlplane.services.token_search`.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from datetime import UTC, date, datetime, time
from typing import Annotated, Any, TypeVar, get_args

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane import schemas
from controlplane.api.deps import Caller
from controlplane.api.routes.console._base import (
    READERS,
    Console,
    ConsoleRefused,
    PostedForm,
    SignedConsole,
    back,
    page,
    reporting,
)
from controlplane.api.routes.console._forms import (
    a_day,
    a_number,
    an_id,
    not_understood,
    one_of,
    person_id,
    team_choices,
    validated,
)
from controlplane.core.config import Settings, get_settings
from controlplane.core.db import get_sessionmaker
from controlplane.errors import KeywardError
from controlplane.models import Token
from controlplane.schemas.register import SecretLocation
from controlplane.services import access, lifecycle, revocation, service_accounts, token_search
from controlplane.web.console import when

router = APIRouter(include_in_schema=False)

#: The admin API's ``Manager`` role set: who may mint, revoke, rotate and narrow.
MANAGERS = ("admin", "owner")
PAGE_SIZE = 50
STATES = ("active", "revoked", "expired")
ENVIRONMENTS = get_args(schemas.Environment)
SECRET_LOCATIONS = get_args(SecretLocation)
#: The lists of choices a form offers (teams, service accounts) stop here.
CHOICES = 200
SettingsDep = Annotated[Settings, Depends(get_settings)]
T = TypeVar("T")


# -- reading what was sent ------------------------------------------------------------------------

def _utc_day(moment: datetime) -> date:
    return moment.astimezone(UTC).date()


def _models(text: str) -> list[str]:
    return [model for model in re.split(r"[\s,]+", text) if model]


def _search(params: Mapping[str, str]) -> dict[str, Any]:
    """The list's filters, each checked (an empty field is no filter)."""
    dormant = a_number(params.get("dormant_days"), "Unused for days", low=1, high=3650)
    before = a_day(params.get("expires_before"), "Expires before")
    sort = params.get("sort") or ("last_used_at" if dormant else "-created_at")
    if sort.lstrip("-") not in token_search.SORTS:
        raise not_understood(f"The list sorts by one of {', '.join(token_search.SORTS)} (- first for descending).")
    return {
        "team_id": an_id(params.get("team_id"), "Team"), "user_id": an_id(params.get("user_id"), "User"),
        "service_account_id": an_id(params.get("service_account_id"), "Service account"),
        "environment": one_of(params.get("environment"), ENVIRONMENTS, "Environment"),
        "state": one_of(params.get("state"), STATES, "State"),
        "name": (params.get("name") or "").strip()[:200] or None,
        "owner": (params.get("owner") or "").strip()[:200] or None,
        "dormant_days": int(dormant) if dormant else None,
        "expires_before": datetime.combine(before, time(), tzinfo=UTC) if before else None,
        "effective": one_of(params.get("effective"), token_search.EFFECTIVE, "At the gateway"),
        "sort": sort, "cursor": (params.get("cursor") or None),
    }


# -- the list and one token -----------------------------------------------------------------------

@router.get("/console/tokens")
async def tokens_page(request: Request, console: SignedConsole) -> HTMLResponse:
    """Every token the caller may see, filtered and sorted, 50 a page with their status at the gateway."""
    console.require(READERS)
    search = _search(request.query_params)
    scope = {key: search[key] for key in ("team_id", "user_id", "service_account_id")}
    within = console.caller.within_team
    async with get_sessionmaker()() as session, session.begin():
        query = token_search.search_query(
            within_team=within, **scope, environment=search["environment"], state=search["state"],
            name=search["name"], owner=search["owner"], dormant_days=search["dormant_days"],
            expires_before=search["expires_before"])
        if search["effective"]:
            query = await token_search.with_effective(session, query, search["effective"], within_team=within,
                                                      **scope)
        with reporting("That page cannot be shown"):
            found = await token_search.page(session, query, sort=search["sort"], cursor=search["cursor"],
                                            limit=PAGE_SIZE)
        total = await token_search.count(session, query)
        await access.annotate(session, found["items"])
        rows = [schemas.TokenPublic.model_validate(token) for token in found["items"]]
        labels = await token_search.names(session, found["items"])
        offered = await team_choices(session, console)
    if search["team_id"] is not None and str(search["team_id"]) not in dict(offered):
        offered.append((str(search["team_id"]), str(search["team_id"])))  # past the first CHOICES teams
    return page(request, console, "console/tokens.html", title="Tokens", rows=rows, labels=labels, total=total,
                next_cursor=found["next_cursor"], sort=search["sort"], teams=offered,
                states=[(state, state) for state in STATES], environments=[(env, env) for env in ENVIRONMENTS],
                effective_codes=token_search.EFFECTIVE)


async def _visible(session: AsyncSession, caller: Caller, token_id: uuid.UUID) -> Token:
    with reporting("That token cannot be shown"):
        token = await lifecycle.get_token(session, token_id=token_id)
        caller.require_visible(token.team_id)
    return token


async def _managed(session: AsyncSession, caller: Caller, token_id: uuid.UUID) -> Token:
    """As the admin API's: the token, if this caller may manage its team."""
    token = await lifecycle.get_token(session, token_id=token_id)
    caller.require_team(token.team_id)
    return token


@router.get("/console/tokens/{token_id:uuid}")
async def token_page(request: Request, console: SignedConsole, token_id: uuid.UUID) -> HTMLResponse:
    """One token: every field, its owner and team, what the gateway would do with it now, and actions."""
    console.require(READERS)
    async with get_sessionmaker()() as session, session.begin():
        token = await _visible(session, console.caller, token_id)
        await access.annotate(session, [token])
        shown = schemas.TokenPublic.model_validate(token)
        labels = await token_search.names(session, [token])
        later = [schemas.TokenPublic.model_validate(t) for t in await token_search.successors(session, token_id)]
        families = await lifecycle.families_now(session, token)
    effective = shown.effective_status or "token_unknown"
    return page(request, console, "console/token.html", title=f"Token {shown.name}", token=shown, labels=labels,
                successors=later, families=families, reason=None if effective == "usable" else access.reason(effective),
                may_act=console.may(*MANAGERS) and console.caller.may_manage(token.team_id))


# -- actions: each a confirmation page, then the API's own service call ----------------------------

def _facts(token: schemas.TokenPublic, labels: dict[str, dict[uuid.UUID, str]]) -> list[tuple[str, str]]:
    if token.user_id is not None:
        owner = labels["users"].get(token.user_id)
    else:
        account = token.service_account_id
        owner = f"service account {labels['accounts'].get(account, str(account)) if account else '?'}"
    team = labels["teams"].get(token.team_id) if token.team_id else None
    return [("Token", f"{token.name} ({token.hint})"), ("Owner", owner or "—"), ("Team", team or "—"),
            ("Environment", token.environment), ("Expires", when(token.expires_at) if token.expires_at else "never")]


async def _confirming(console: Console, token_id: uuid.UUID
                      ) -> tuple[schemas.TokenPublic, dict[str, dict[uuid.UUID, str]]]:
    """The token an action is about, with the names it refers to, if this signed-in person may act on it
    (the API's checks)."""
    console.require(MANAGERS)
    async with get_sessionmaker()() as session, session.begin():
        with reporting("Not yours to change"):
            token = await _managed(session, console.caller, token_id)
        shown = schemas.TokenPublic.model_validate(token)
        labels = await token_search.names(session, [token])
    return shown, labels


@router.get("/console/tokens/{token_id:uuid}/revoke")
async def confirm_revoke(request: Request, console: SignedConsole, token_id: uuid.UUID) -> HTMLResponse:
    token, labels = await _confirming(console, token_id)
    return page(request, console, "console/confirm.html", title=f"Revoke {token.name}",
                question="Revoke this token? Every gateway replica refuses it from the moment this is done; it "
                         "cannot be undone.", details=_facts(token, labels),
                action=f"/console/tokens/{token_id}/revoke", hidden=[],
                inputs=[{"name": "reason", "label": "Reason (recorded in the audit log)", "kind": "text", "value": "",
                         "required": False}],
                button="Revoke the token", danger=True, cancel=f"/console/tokens/{token_id}")


@router.post("/console/tokens/{token_id:uuid}/revoke")
async def revoke(form: PostedForm, token_id: uuid.UUID) -> Response:
    """As ``POST /api/v1/tokens/{id}/revoke``: done once every gateway replica confirms, or says which did not."""
    console = form.console
    console.require(MANAGERS)
    data = validated(schemas.TokenRevoke, dict(reason=form.get("reason").strip() or None))
    caller = console.caller
    with reporting("The token was not revoked"):
        async with revocation.revoking(actor=caller.actor, target_type="token", target_id=str(token_id)) as revoking:
            await _managed(revoking.session, caller, token_id)
            await lifecycle.revoke(revoking.session, actor=caller.actor, token_id=token_id, reason=data.reason)
    confirmation = revoking.confirmation
    assert confirmation is not None
    done = ("Revoked: every gateway replica refuses it now." if confirmation.applied else
            f"Revoked, but {', '.join(confirmation.unconfirmed)} did not confirm within the wait.")
    return back(f"/console/tokens/{token_id}", done)


@router.get("/console/tokens/{token_id:uuid}/rotate")
async def confirm_rotate(request: Request, console: SignedConsole, token_id: uuid.UUID) -> HTMLResponse:
    token, labels = await _confirming(console, token_id)
    return page(request, console, "console/confirm.html", title=f"Rotate {token.name}",
                question="Mint a successor with the same owner, team, environment and models? Its secret is shown "
                         "once, on the next page. The old token keeps working for the grace period, then expires.",
                details=_facts(token, labels), action=f"/console/tokens/{token_id}/rotate", hidden=[],
                inputs=[{"name": "grace", "label": "Grace period", "kind": "number", "value": "24", "required": True,
                         "min": 0},
                        {"name": "unit", "label": "Grace period unit", "kind": "select", "value": "hours",
                         "options": [("hours", "hours"), ("minutes", "minutes")], "required": True},
                        {"name": "name", "label": "New name (optional: keeps this one)", "kind": "text", "value": "",
                         "required": False}],
                button="Rotate the token", danger=False, cancel=f"/console/tokens/{token_id}")


@router.post("/console/tokens/{token_id:uuid}/rotate")
async def rotate(request: Request, form: PostedForm, token_id: uuid.UUID, settings: SettingsDep) -> HTMLResponse:
    """As ``POST /api/v1/tokens/{id}/rotate``; the successor's secret is in this answer only."""
    console = form.console
    console.require(MANAGERS)
    amount = a_number(form.get("grace"), "Grace period", low=0, high=30 * 24 * 60)
    per_hour = 60 if form.get("unit") == "minutes" else 1
    data = validated(schemas.TokenRotate, dict(grace_hours=(amount if amount is not None else 24) / per_hour,
                  name=form.get("name").strip() or None))
    caller = console.caller
    async with get_sessionmaker()() as session, session.begin():
        with reporting("The token was not rotated"):
            await _managed(session, caller, token_id)
            new, secret, old = await lifecycle.rotate(session, actor=caller.actor, token_id=token_id, data=data,
                                                      hash_key=settings.hash_key)
        issued, previous = schemas.TokenPublic.model_validate(new), schemas.TokenPublic.model_validate(old)
        labels = await token_search.names(session, [new])
    # Committed: only now is the secret shown (the API answers after its commit too).
    return page(request, console, "console/token_minted.html", title=f"Rotated {previous.name}", token=issued,
                secret=secret, old=previous, labels=labels)


@router.get("/console/tokens/{token_id:uuid}/narrow")
async def confirm_narrow(request: Request, console: SignedConsole, token_id: uuid.UUID) -> HTMLResponse:
    token, labels = await _confirming(console, token_id)
    backup = labels["users"].get(token.backup_owner_id) if token.backup_owner_id else None
    expiry = _utc_day(token.expires_at).isoformat() if token.expires_at else ""
    inputs = [
        {"name": "models", "label": "Models (names or patterns, comma-separated; only fewer)", "kind": "text",
         "value": ", ".join(token.models), "required": True},
        {"name": "expires", "label": "Expires at the end of (UTC; only earlier)", "kind": "date", "value": expiry,
         "required": False, **({"max": expiry} if expiry else {})},
        {"name": "purpose", "label": "Purpose", "kind": "text", "value": token.purpose or "", "required": False},
        {"name": "workload", "label": "Workload (service or repository)", "kind": "text",
         "value": token.workload or "", "required": False},
        {"name": "secret_location", "label": "Where the secret lives", "kind": "select",
         "value": token.secret_location or "", "required": False,
         "options": [("", "not declared"), *((value, value) for value in SECRET_LOCATIONS)]},
    ]
    if token.user_id is not None:
        inputs.append({"name": "backup_owner", "label": "Backup owner (an active user's e-mail)", "kind": "text",
                       "value": backup or "", "required": False})
    return page(request, console, "console/confirm.html", title=f"Narrow {token.name}",
                question="Narrow this token in place (fewer models, an earlier expiry) or change its register fields. "
                         "Anything wider needs a new token. An emptied field is cleared.",
                details=_facts(token, labels), action=f"/console/tokens/{token_id}/narrow", hidden=[], inputs=inputs,
                button="Save the changes", danger=False, cancel=f"/console/tokens/{token_id}")


@router.post("/console/tokens/{token_id:uuid}/narrow")
async def narrow(form: PostedForm, token_id: uuid.UUID) -> Response:
    """As ``PATCH /api/v1/tokens/{id}``: only what the form changed is sent, an emptied field clears."""
    console = form.console
    console.require(MANAGERS)
    caller = console.caller
    async with get_sessionmaker()() as session, session.begin():
        with reporting("The token was not changed"):
            token = await _managed(session, caller, token_id)
            changes: dict[str, Any] = {}
            models = _models(form.get("models"))
            if models != list(token.models):
                changes["models"] = models
            expires = a_day(form.get("expires"), "Expiry")
            if expires is not None and (token.expires_at is None or expires != _utc_day(token.expires_at)):
                changes["expires_at"] = datetime.combine(expires, time(23, 59, 59), tzinfo=UTC)
            for name in ("purpose", "workload", "secret_location"):
                if name in form.fields and (form.get(name).strip() or None) != getattr(token, name):
                    changes[name] = form.get(name).strip() or None
            if "backup_owner" in form.fields:
                email = form.get("backup_owner").strip()
                backup = await person_id(session, email, "Backup owner") if email else None
                if backup != token.backup_owner_id:
                    changes["backup_owner_id"] = backup
            if not changes:
                return back(f"/console/tokens/{token_id}", "Nothing was changed.")
            data = validated(schemas.TokenUpdate, changes)
            await lifecycle.update_token(session, actor=caller.actor, token_id=token_id, data=data)
    return back(f"/console/tokens/{token_id}", f"Saved: {', '.join(sorted(changes))}.")


# -- minting --------------------------------------------------------------------------------------

async def _mint_form(request: Request, console: Console, values: Mapping[str, str], *, error: str | None = None,
                     status_code: int = 200) -> HTMLResponse:
    async with get_sessionmaker()() as session, session.begin():
        offered = await team_choices(session, console)
        found = await service_accounts.list_service_accounts(
            session, within_team=console.caller.within_team, team_id=None, status="active", sort="name",
            cursor=None, limit=CHOICES)
    accounts = [(str(account.id), account.name) for account in found["items"]]
    # Asked for by id (a link from a person, a team or a service account) but past the first CHOICES.
    for key, choices in (("team_id", offered), ("service_account_id", accounts)):
        wanted = values.get(key)
        if wanted and wanted not in dict(choices):
            choices.append((wanted, wanted))
    return page(request, console, "console/token_new.html", title="Mint a token", values=values, error=error,
                teams=offered, accounts=accounts, environments=ENVIRONMENTS,
                secret_locations=SECRET_LOCATIONS, status_code=status_code)


@router.get("/console/tokens/new")
async def new_token(request: Request, console: SignedConsole) -> HTMLResponse:
    console.require(MANAGERS)
    return await _mint_form(request, console, {"environment": "dev", "models": "*", **request.query_params})


@router.post("/console/tokens/new")
async def mint(request: Request, form: PostedForm, settings: SettingsDep) -> HTMLResponse:
    """As ``POST /api/v1/tokens``; the secret is in this answer and nowhere else, ever."""
    console = form.console
    console.require(MANAGERS)
    caller = console.caller
    try:
        async with get_sessionmaker()() as session, session.begin():
            email = form.get("owner_email").strip()
            document = {
                "user_id": await person_id(session, email, "User") if email else None,
                "service_account_id": an_id(form.get("service_account_id"), "Service account"),
                "team_id": an_id(form.get("team_id"), "Team"), "name": form.get("name"),
                "environment": form.get("environment") or "dev", "models": _models(form.get("models")) or ["*"],
                "expires_in_days": a_number(form.get("expires_in_days"), "Lifetime", low=1, high=3650),
                **{name: form.get(name).strip() or None for name in ("purpose", "workload", "secret_location")},
            }
            data = validated(schemas.TokenCreate, document)
            team_id = await lifecycle.resolve_team(session, data)
            caller.require_team(team_id)
            token, secret = await lifecycle.mint(session, actor=caller.actor, data=data, team_id=team_id,
                                                 hash_key=settings.hash_key)
            issued = schemas.TokenPublic.model_validate(token)
            labels = await token_search.names(session, [token])
    except (KeywardError, ConsoleRefused) as exc:
        status = exc.status_code
        return await _mint_form(request, console, form.fields, error=exc.message, status_code=status)
    return page(request, console, "console/token_minted.html", title=f"Minted {issued.name}", token=issued,
                secret=secret, old=None, labels=labels)
