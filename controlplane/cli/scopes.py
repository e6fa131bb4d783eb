"""How ``keyward budgets`` and ``keyward limits`` name a scope: its type (``team``, ``project``,
``user``, ``service-account``, ``token``) and an id, or the name or email the CLI already resolves (a
project by name within ``--team`` when two teams use the name; a token by id only)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from controlplane.cli.client import Api, is_id
from controlplane.cli.output import done, fail, usage
from controlplane.cli.vocabulary import PROJECTS, SCOPES, SERVICE_ACCOUNTS, TEAMS, USERS, Kind

TOKENS = Kind("token", "/tokens", "name")
#: What names each scope type (a token: its id).
KINDS = {"team": TEAMS, "project": PROJECTS, "user": USERS, "service_account": SERVICE_ACCOUNTS, "token": TOKENS}
SCOPE_HELP = "team, project, user, service-account or token."

ScopeTypeArg = Annotated[str, typer.Argument(metavar="SCOPE_TYPE", help=SCOPE_HELP)]
ScopeArg = Annotated[str, typer.Argument(metavar="SCOPE", help="Id, or a team's, project's or service account's "
                                                                "name, or a user's email (a token: its id).")]
ProjectTeam = Annotated[str | None, typer.Option("--team", help="The team of a project named by name (id or "
                                                                "name), when several teams have one so named.")]


def scope_type(value: str) -> str:
    """A scope type as the API spells it (``service-account`` → ``service_account``)."""
    spelled = value.strip().lower().replace("-", "_")
    if spelled not in SCOPES:
        usage(f"scope type {value!r}: expected one of {SCOPE_HELP}")
    return spelled


def project_id(api: Api, ref: str, team: str | None = None) -> str:
    """A project's id from an id, or its name (within ``team`` when given)."""
    if is_id(ref):
        return ref
    params: dict[str, Any] = {"name": ref, "limit": 2, "team_id": api.id_of(TEAMS, team) if team else None}
    found = api.get(PROJECTS.path, params)["items"]
    where = f" in team {team}" if team else ""
    if not found:
        fail(f"no project named {ref!r}{where}")
    if len(found) > 1:
        fail(f"{len(found)} projects are named {ref!r}; add --team, or give an id: "
             + ", ".join(item["id"] for item in found))
    return str(found[0]["id"])


def scope_id(api: Api, kind: str, ref: str, team: str | None = None) -> str:
    if kind == "project":
        return project_id(api, ref, team)
    if kind == "token":
        if not is_id(ref):
            usage(f"a token is named by its id, not {ref!r}")
        return ref
    return api.id_of(KINDS[kind], ref)


def label(api: Api, kind: str, ident: str) -> str:
    """``team research`` for a table cell (the id when it cannot be looked up)."""
    return f"{kind} {api.label(KINDS[kind], ident)}" if kind in KINDS else f"{kind} {ident}"


def remove_own(api: Api, path: str, noun: str, kind: str, scope: str, team: str | None, as_json: bool) -> None:
    """Remove a scope's own budget or rate limit (``path``: /budgets or /rate-limits)."""
    spelled = scope_type(kind)
    ident = scope_id(api, spelled, scope, team)
    api.delete(f"{path}/{spelled}/{ident}")
    done(as_json, {"scope_type": spelled, "scope_id": ident, "removed": True},
         f"Removed the {noun} of {label(api, spelled, ident)}; its profile's default applies again.")
