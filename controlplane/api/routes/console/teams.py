"""The console's teams and spend policy: teams with their profile, members, budgets in effect and rate
limits; access profiles with their catalogs; the scopes' own budgets and rate limits; one team's page;
and the changes an admin (or, for its members and projects, a team owner) makes to them.

Each read and each change is the admin API's, with its roles (:mod:`controlplane.api.routes.teams`,
``profiles``, ``budgets``, ``rate_limits``, ``projects``): teams, members and profiles for admins,
auditors and team owners (their own team); budgets, rate limits, projects and utilisation for finance
too, so finance sees a team's spend policy and not its people. Budgets and rate limits are set and
removed by admins only; a team owner removes members and opens projects of their own team.
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane import schemas
from controlplane.api.routes.budgets import require_scope_visible
from controlplane.api.routes.console._base import (
    ADMIN,
    EVERYONE,
    READERS,
    Console,
    ConsoleRefused,
    PostedForm,
    SignedConsole,
    back,
    page,
    reporting,
)
from controlplane.api.routes.console._forms import an_id, not_understood, validated
from controlplane.core.db import get_sessionmaker
from controlplane.services import budgets, profiles, projects, rate_limits, scopes, teams, users

router = APIRouter(include_in_schema=False)

PAGE = 50
SORTS = ("name", "-name", "created_at", "-created_at")
MANAGERS = ("admin", "owner")


# -- reading the query and the forms ----------------------------------------------------------------


def _bad(message: str, title: str = "That was not done") -> ConsoleRefused:
    return not_understood(message, title)


def scope_of(value: str | None) -> tuple[str, uuid.UUID] | None:
    """``team:<id>`` (the overview's links) → ``("team", id)``."""
    if not value:
        return None
    scope_type, _, scope_id = value.partition(":")
    if scope_type not in scopes.SCOPE_TYPES:
        raise _bad(f"A scope is one of {', '.join(scopes.SCOPE_TYPES)}, a colon and an id.")
    ident = an_id(scope_id, "The scope's id")
    if ident is None:
        raise _bad("A scope is its type, a colon and an id (team:7c0e4f52-…).")
    return scope_type, ident


def _back(value: str, default: str) -> str:
    """Where a policy form returns to: a page of this section, never another site."""
    safe = value.startswith("/console/teams") and not any(c in value for c in "\\\r\n") and "//" not in value
    return value if safe else default


def _budget_spec(form: PostedForm) -> schemas.BudgetSet:
    period = form.get("period", "month")
    data: dict[str, Any] = {"amount_usd": form.get("amount_usd").strip(), "period": period,
                            "posture": form.get("posture", "alert_then_hard")}
    thresholds = [part.strip() for part in form.get("thresholds").split(",") if part.strip()]
    if thresholds:
        data["thresholds"] = thresholds
    if period == "window":
        for name in ("window_start", "window_end"):
            data[name] = f"{form.get(name)}T00:00:00Z" if form.get(name) else None
    return validated(schemas.BudgetSet, data)


def _rate_spec(form: PostedForm) -> schemas.RateLimitSet:
    data = {name: form.get(name).strip() or None for name in ("rpm", "tpm")}
    return validated(schemas.RateLimitSet, data)


# -- what the pages show ------------------------------------------------------------------------------


def catalog_of(profile: Any) -> list[dict[str, Any]]:
    """A profile's catalog per provider: each provider's model patterns, where they may be used, and the
    upstream that serves them (None: the API's default one)."""
    by_provider: dict[str, list[dict[str, Any]]] = {}
    for entry in profile.catalog:
        environments = entry.get("environments")
        by_provider.setdefault(entry["provider"], []).append(
            {"pattern": entry["pattern"], "environments": ", ".join(environments) if environments else "every "
             "environment the profile allows", "upstream": entry.get("upstream")})
    return [{"provider": "every provider" if name == "*" else name, "entries": entries}
            for name, entries in sorted(by_provider.items(), key=lambda item: (item[0] == "*", item[0]))]


async def _policy(session: AsyncSession, console: Console, scope_type: str, scope_id: uuid.UUID) -> dict[str, Any]:
    """A scope's budgets in effect (with what is spent) and its rate limits, as ``/budgets/{scope}/
    utilisation`` and ``/rate-limits/{scope}/effective`` answer them, and whether it has its own."""
    within = console.caller.within_team
    used = await budgets.utilisation(session, scope_type=scope_type, scope_id=scope_id, within_team=within)
    limits = await rate_limits.effective(session, scope_type=scope_type, scope_id=scope_id, within_team=within)
    return {"scope_type": scope_type, "scope_id": scope_id, "name": used["scope_name"], "budgets": used["budgets"],
            "limits": limits["limits"], "own_budget": any(b.source == "explicit" for b in used["budgets"]),
            "own_limit": any(entry["source"] == "explicit" for entry in limits["limits"])}


async def _named(session: AsyncSession, rows: list[Any]) -> list[dict[str, Any]]:
    """Budgets or rate limits with the name of their scope (one query per scope type)."""
    wanted: dict[str, list[uuid.UUID]] = {}
    for row in rows:
        wanted.setdefault(row.scope_type, []).append(row.scope_id)
    found = await scopes.load(session, wanted)
    return [{"row": row, "name": found[(row.scope_type, row.scope_id)].name
             if (row.scope_type, row.scope_id) in found else "(gone)"} for row in rows]


@router.get("/console/teams")
async def teams_page(request: Request, console: SignedConsole) -> HTMLResponse:
    """Teams (profile, members, budgets in effect, rate limits), profiles, and the scopes' own budgets
    and rate limits; ``?scope=<type>:<id>`` shows that scope's policy and narrows the lists to it."""
    console.require(EVERYONE)
    params = request.query_params
    sort = params.get("sort") or "name"
    if sort not in SORTS:
        raise _bad(f"Sort by one of {', '.join(SORTS)}.", "Not a list")
    focus = scope_of(params.get("scope"))
    within = console.caller.within_team
    context: dict[str, Any] = {"sort": sort, "focus": None, "teams": [], "profiles": [], "next_cursor": None,
                               "profiles_cursor": None}
    async with get_sessionmaker()() as session, session.begin():
        with reporting("That cannot be shown"):
            if focus is not None:
                require_scope_visible(console.caller, await scopes.get(session, scope_type=focus[0],
                                                                       scope_id=focus[1]))
                context["focus"] = await _policy(session, console, *focus)
            if console.may(*READERS):
                found = await teams.list_teams(session, within_team=within, name=params.get("name") or None,
                                               profile_id=an_id(params.get("profile_id"), "profile_id"), sort=sort,
                                               cursor=params.get("cursor") or None, limit=PAGE)
                listed = await profiles.list_profiles(session, sort="name", cursor=params.get("profiles_cursor")
                                                      or None, limit=PAGE)
                known = {profile.id: profile for profile in listed["items"]}
                counts = await teams.member_counts(session, team_ids=[team.id for team in found["items"]])
                for team in found["items"]:
                    if team.profile_id is not None and team.profile_id not in known:
                        known[team.profile_id] = await profiles.get_profile(session, profile_id=team.profile_id)
                    context["teams"].append({"team": team, "profile": known.get(team.profile_id),
                                             "members": counts.get(team.id, 0),
                                             **await _policy(session, console, "team", team.id)})
                context.update(next_cursor=found["next_cursor"], profiles_cursor=listed["next_cursor"],
                               profiles=[{"profile": p, "catalog": catalog_of(p)} for p in listed["items"]])
            kind, ident = focus if focus is not None else (None, None)
            own = await budgets.list_budgets(session, within_team=within, scope_type=kind, scope_id=ident,
                                             sort="-updated_at", cursor=params.get("budgets_cursor") or None,
                                             limit=PAGE)
            limits = await rate_limits.list_rate_limits(session, within_team=within, scope_type=kind,
                                                        scope_id=ident, sort="-updated_at",
                                                        cursor=params.get("limits_cursor") or None, limit=PAGE)
            context.update(own_budgets=await _named(session, own["items"]), budgets_cursor=own["next_cursor"],
                           own_limits=await _named(session, limits["items"]), limits_cursor=limits["next_cursor"])
    return page(request, console, "console/teams.html", title="Teams & policy", **context)


@router.get("/console/teams/policy/{kind}/remove")
async def remove_policy_confirm(request: Request, console: SignedConsole, kind: str) -> HTMLResponse:
    """Confirm removing a scope's own budget or rate limit (its profile's default applies again)."""
    console.require(ADMIN)
    what = _kind(kind)
    scope_type, scope_id = scope_of(request.query_params.get("scope")) or _missing_scope()
    async with get_sessionmaker()() as session, session.begin():
        with reporting("That cannot be removed"):
            scope = await scopes.get(session, scope_type=scope_type, scope_id=scope_id)
    default = f"/console/teams/{scope_id}" if scope_type == "team" else f"/console/teams?scope={scope_type}:{scope_id}"
    back_to = _back(request.query_params.get("back", ""), default)
    return page(request, console, "console/confirm.html", title=f"Remove the {what}?",
                question=f"Remove the {what} of its own from the {scope_type} {scope.name}? Its profile's default "
                         f"{what}, if it has one, applies again at once.",
                details=[("Scope", f"{scope_type} {scope.name}"), ("Id", str(scope_id))],
                action=f"/console/teams/policy/{kind}/remove",
                hidden=[("scope_type", scope_type), ("scope_id", str(scope_id)), ("back", back_to)], inputs=[],
                button=f"Remove the {what}", danger=True, cancel=back_to)


def _kind(kind: str) -> str:
    if kind not in ("budget", "rate-limit"):
        raise ConsoleRefused("Not found", "There is no such policy.", 404)
    return "budget" if kind == "budget" else "rate limit"


def _missing_scope() -> tuple[str, uuid.UUID]:
    raise _bad("Say which scope: ?scope=<type>:<id>.")


def _posted_scope(form: PostedForm) -> tuple[str, uuid.UUID, str]:
    scope = scope_of(f"{form.get('scope_type')}:{form.get('scope_id')}")
    assert scope is not None
    default = f"/console/teams?scope={scope[0]}:{scope[1]}"
    return scope[0], scope[1], _back(form.get("back"), default)


@router.post("/console/teams/policy/{kind}")
async def set_policy(kind: str, form: PostedForm) -> RedirectResponse:
    """Give a scope its own budget or rate limit, or replace the one it has (admins only)."""
    form.console.require(ADMIN)
    what = _kind(kind)
    scope_type, scope_id, back_to = _posted_scope(form)
    actor = form.console.caller.actor
    async with get_sessionmaker()() as session, session.begin():
        with reporting(f"The {what} was not set"):
            if kind == "budget":
                await budgets.set_budget(session, actor=actor, scope_type=scope_type, scope_id=scope_id,
                                         data=_budget_spec(form))
            else:
                await rate_limits.set_rate_limit(session, actor=actor, scope_type=scope_type, scope_id=scope_id,
                                                 data=_rate_spec(form))
    return back(back_to, f"The {scope_type}'s {what} is set; the gateway applies it at once.")


@router.post("/console/teams/policy/{kind}/remove")
async def remove_policy(kind: str, form: PostedForm) -> RedirectResponse:
    form.console.require(ADMIN)
    what = _kind(kind)
    scope_type, scope_id, back_to = _posted_scope(form)
    actor = form.console.caller.actor
    async with get_sessionmaker()() as session, session.begin():
        with reporting(f"The {what} was not removed"):
            if kind == "budget":
                await budgets.remove_budget(session, actor=actor, scope_type=scope_type, scope_id=scope_id)
            else:
                await rate_limits.remove_rate_limit(session, actor=actor, scope_type=scope_type, scope_id=scope_id)
    return back(back_to, f"The {scope_type}'s own {what} is removed.")


# -- one team ------------------------------------------------------------------------------------------


@router.get("/console/teams/{team_id}")
async def team_page(request: Request, console: SignedConsole, team_id: uuid.UUID) -> HTMLResponse:
    """A team's members and profile (for the roles that read teams), its budgets in effect, rate limits
    and projects (for every role that reads spend policy)."""
    console.require(EVERYONE)
    context: dict[str, Any] = {"team": None, "profile": None, "catalog": [], "members": [], "members_cursor": None,
                               "all_profiles": []}
    async with get_sessionmaker()() as session, session.begin():
        with reporting("That team cannot be shown"):
            console.caller.require_visible(team_id)
            if console.may(*READERS):
                team = context["team"] = await teams.get_team(session, team_id=team_id)
                if team.profile_id is not None:
                    profile = context["profile"] = await profiles.get_profile(session, profile_id=team.profile_id)
                    context["catalog"] = catalog_of(profile)
                found = await teams.list_members(session, team_id=team_id, role=None,
                                                 cursor=request.query_params.get("cursor") or None, limit=PAGE)
                people = await scopes.load(session, {"user": [m.user_id for m in found["items"]]})
                context["members"] = [{"membership": m, "email": people[("user", m.user_id)].name
                                       if ("user", m.user_id) in people else str(m.user_id)} for m in found["items"]]
                context["members_cursor"] = found["next_cursor"]
                if console.may(*ADMIN):
                    context["all_profiles"] = (await profiles.list_profiles(session, sort="name", cursor=None,
                                                                            limit=200))["items"]
            policy = await _policy(session, console, "team", team_id)
            listed = await projects.list_projects(session, within_team=console.caller.within_team, team_id=team_id,
                                                  status=None, name=None, sort="name", cursor=None, limit=PAGE)
            project_rows = [{"project": p, **await _policy(session, console, "project", p.id)}
                            for p in listed["items"]]
    return page(request, console, "console/team.html", title=f"Team {policy['name']}", team_id=team_id,
                policy=policy, projects=project_rows, more_projects=listed["next_cursor"] is not None,
                manages=console.caller.may_manage(team_id), **context)


@router.post("/console/teams/{team_id}/members")
async def add_member(team_id: uuid.UUID, form: PostedForm) -> RedirectResponse:
    """Add a person (by email) to the team or change their role: admins only, as in the API."""
    form.console.require(ADMIN)
    email, role = form.get("email").strip(), form.get("role", "member")
    data = validated(schemas.MembershipSet, {"role": role})
    async with get_sessionmaker()() as session, session.begin():
        with reporting("The member was not added"):
            found = (await users.list_users(session, status=None, email=email, q=None, sort="email", cursor=None,
                                            limit=1))["items"] if email else []
            if not found:
                raise ConsoleRefused("The member was not added", f"No one has the email {email or '(empty)'}.", 404)
            await teams.set_member(session, actor=form.console.caller.actor, team_id=team_id, user_id=found[0].id,
                                   role=data.role)
    return back(f"/console/teams/{team_id}", f"{email} is a {data.role} of the team.")


@router.get("/console/teams/{team_id}/members/{user_id}/remove")
async def remove_member_confirm(request: Request, console: SignedConsole, team_id: uuid.UUID,
                                user_id: uuid.UUID) -> HTMLResponse:
    console.require(MANAGERS)
    async with get_sessionmaker()() as session, session.begin():
        with reporting("That member cannot be removed"):
            console.caller.require_team(team_id)
            team = await teams.get_team(session, team_id=team_id)
            person = await users.get_user(session, user_id=user_id)
    return page(request, console, "console/confirm.html", title="Remove the member?",
                question=f"Remove {person.email} from {team.name}? Their tokens for this team stop working at once.",
                details=[("Team", team.name), ("Person", person.email)],
                action=f"/console/teams/{team_id}/members/{user_id}/remove", hidden=[], inputs=[],
                button="Remove from the team", danger=True, cancel=f"/console/teams/{team_id}")


@router.post("/console/teams/{team_id}/members/{user_id}/remove")
async def remove_member(team_id: uuid.UUID, user_id: uuid.UUID, form: PostedForm) -> RedirectResponse:
    form.console.require(MANAGERS)
    async with get_sessionmaker()() as session, session.begin():
        with reporting("The member was not removed"):
            form.console.caller.require_team(team_id)
            await teams.remove_member(session, actor=form.console.caller.actor, team_id=team_id, user_id=user_id)
    return back(f"/console/teams/{team_id}", "The member is removed; their tokens for the team stop working.")


@router.get("/console/teams/{team_id}/profile")
async def profile_confirm(request: Request, console: SignedConsole, team_id: uuid.UUID) -> HTMLResponse:
    """Confirm a team's new profile: it changes what every token of the team may do, at once."""
    console.require(ADMIN)
    chosen = an_id(request.query_params.get("profile_id"), "profile_id")
    async with get_sessionmaker()() as session, session.begin():
        with reporting("That profile cannot be chosen"):
            team = await teams.get_team(session, team_id=team_id)
            new = await profiles.get_profile(session, profile_id=chosen) if chosen else None
            old = await profiles.get_profile(session, profile_id=team.profile_id) if team.profile_id else None
    name = new.name if new else "no profile (its tokens may use nothing)"
    return page(request, console, "console/confirm.html", title="Change the team's profile?",
                question=f"Give {team.name} {name}? What every token of the team may do changes at once.",
                details=[("Team", team.name), ("Profile now", old.name if old else "none"), ("New profile", name)],
                action=f"/console/teams/{team_id}/profile", hidden=[("profile_id", str(chosen or ""))], inputs=[],
                button="Change the profile", danger=new is None, cancel=f"/console/teams/{team_id}")


@router.post("/console/teams/{team_id}/profile")
async def change_profile(team_id: uuid.UUID, form: PostedForm) -> RedirectResponse:
    form.console.require(ADMIN)
    data = validated(schemas.TeamUpdate, {"profile_id": an_id(form.get("profile_id"), "profile_id")})
    async with get_sessionmaker()() as session, session.begin():
        with reporting("The profile was not changed"):
            await teams.update_team(session, actor=form.console.caller.actor, team_id=team_id, data=data)
    return back(f"/console/teams/{team_id}", "The team's profile is changed; its tokens follow it at once.")


@router.post("/console/teams/{team_id}/projects")
async def open_project(team_id: uuid.UUID, form: PostedForm) -> RedirectResponse:
    """Open a project in the team: admins, and the team's owner, as in the API."""
    form.console.require(MANAGERS)
    data = validated(schemas.ProjectCreate, {"team_id": team_id, "name": form.get("name"),
                                              "description": form.get("description").strip() or None})
    async with get_sessionmaker()() as session, session.begin():
        with reporting("The project was not opened"):
            form.console.caller.require_team(team_id)
            project = await projects.create_project(session, actor=form.console.caller.actor, data=data)
    return back(f"/console/teams/{team_id}", f"Project {project.name} is open.")

