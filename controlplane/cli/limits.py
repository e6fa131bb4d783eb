"""``keyward limits``: a scope's own rate limit (requests and tokens per minute, in place of its
profile's default) and the limits in effect. ``keyward limits set user ada@example.com --rpm 30``."""

from __future__ import annotations

from typing import Annotated, Literal

import typer

from controlplane.cli.client import Api, connect, payload
from controlplane.cli.options import AllPages, CursorOpt, JsonOut, PageSize
from controlplane.cli.output import Columns, at, key, print_json, render_table, say, show_page, show_record, usage
from controlplane.cli.scopes import (
    SCOPE_HELP,
    ProjectTeam,
    ScopeArg,
    ScopeTypeArg,
    label,
    remove_own,
    scope_id,
    scope_type,
)
from controlplane.cli.vocabulary import TEAMS

app = typer.Typer(help="Rate limits: requests and tokens per minute for a scope.", no_args_is_help=True)
Sort = Literal["created_at", "-created_at", "updated_at", "-updated_at"]


def _columns(api: Api) -> Columns:
    return [("ID", key("id")), ("SCOPE", lambda r: label(api, r["scope_type"], r["scope_id"])),
            ("RPM", key("rpm")), ("TPM", key("tpm")), ("UPDATED", at("updated_at"))]


def _effective_columns(api: Api) -> Columns:
    return [("SOURCE", key("source")), ("TEAMS", lambda r: [api.label(TEAMS, t) for t in r["team_ids"]]),
            ("RPM", key("rpm")), ("TPM", key("tpm"))]


@app.command("set")
def limits_set(
    kind: ScopeTypeArg,
    scope: ScopeArg,
    rpm: Annotated[int | None, typer.Option(min=1, max=2**31 - 1, help="Requests per minute.")] = None,
    tpm: Annotated[int | None, typer.Option(min=1, max=2**62, help="Tokens (input + output) per minute.")] = None,
    team: ProjectTeam = None,
    as_json: JsonOut = False,
) -> None:
    """Give a scope its own rate limit, or replace the one it has (all of it: a measure not given is not
    limited). The gateway applies it at once."""
    if rpm is None and tpm is None:
        usage("give --rpm, --tpm or both")
    api = connect()
    spelled = scope_type(kind)
    ident = scope_id(api, spelled, scope, team)
    limit = api.put(f"/rate-limits/{spelled}/{ident}", payload(rpm=rpm, tpm=tpm))
    shown = ", ".join(f"{limit[unit]} {unit}" for unit in ("rpm", "tpm") if limit.get(unit))
    show_record(limit, as_json, note=f"Rate limit of {label(api, spelled, ident)}: {shown}.")


@app.command("list")
def limits_list(
    kind: Annotated[str | None, typer.Option("--scope-type", help=f"Only this scope type: {SCOPE_HELP}")] = None,
    scope: Annotated[str | None, typer.Option("--scope", help="Only this scope (with --scope-type).")] = None,
    team: ProjectTeam = None,
    sort: Annotated[Sort, typer.Option()] = "created_at",
    limit: PageSize = None, cursor: CursorOpt = None, all_pages: AllPages = False, as_json: JsonOut = False,
) -> None:
    """List the scopes' own rate limits (the defaults are in the profiles: keyward profiles show)."""
    if scope and not kind:
        usage("--scope needs --scope-type")
    api = connect()
    spelled = scope_type(kind) if kind else None
    ident = scope_id(api, spelled, scope, team) if spelled and scope else None
    page = api.listing("/rate-limits", {"scope_type": spelled, "scope_id": ident, "sort": sort}, limit=limit,
                       cursor=cursor, follow=all_pages)
    show_page(page, _columns(api), as_json, "rate limits")


@app.command("show")
def limits_show(kind: ScopeTypeArg, scope: ScopeArg, team: ProjectTeam = None, as_json: JsonOut = False) -> None:
    """The rate limits in effect for a scope: its own, or its profile's default per team."""
    api = connect()
    spelled = scope_type(kind)
    document = api.get(f"/rate-limits/{spelled}/{scope_id(api, spelled, scope, team)}/effective")
    if as_json:
        print_json(document)
        return
    name = f"{document['scope_type']} {document['scope_name']}"
    if not document["limits"]:
        say(f"No rate limit applies to {name}.")
        return
    say(f"Rate limits of {name}:")
    render_table(document["limits"], _effective_columns(api))


@app.command("remove")
def limits_remove(kind: ScopeTypeArg, scope: ScopeArg, team: ProjectTeam = None, as_json: JsonOut = False) -> None:
    """Remove a scope's own rate limit: its profile's default, if any, applies again."""
    remove_own(connect(), "/rate-limits", "rate limit", kind, scope, team, as_json)
