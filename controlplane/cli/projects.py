"""``keyward projects``: a team's units of work. A token (and a service account, as its tokens'
default) may carry one of its team's open projects; spend rolls up to it. Named by id, or by name
(with ``--team`` when two teams use the name)."""

from __future__ import annotations

from typing import Annotated, Literal

import typer

from controlplane.cli.client import Api, connect, payload
from controlplane.cli.options import AllPages, CursorOpt, Description, JsonOut, PageSize
from controlplane.cli.output import Columns, at, done, key, show_page, show_record, usage
from controlplane.cli.scopes import ProjectTeam, project_id
from controlplane.cli.vocabulary import TEAMS

app = typer.Typer(help="Projects: a team's units of work, which tokens carry and spend rolls up to.",
                  no_args_is_help=True)
ProjectRef = Annotated[str, typer.Argument(help="Project id or name.", metavar="PROJECT")]
Status = Literal["open", "closed"]


def _columns(api: Api) -> Columns:
    return [("ID", key("id")), ("NAME", key("name")), ("TEAM", lambda r: api.label(TEAMS, r["team_id"])),
            ("STATUS", key("status")), ("DESCRIPTION", key("description")), ("CREATED", at("created_at")),
            ("CLOSED", lambda r: at("closed_at")(r) if r.get("closed_at") else "-")]


@app.command("list")
def projects_list(
    team: Annotated[str | None, typer.Option(help="Team id or name.")] = None,
    status: Annotated[Status | None, typer.Option()] = None,
    name: Annotated[str | None, typer.Option(help="Exact name, case-insensitive.")] = None,
    sort: Annotated[Literal["created_at", "-created_at", "name", "-name"], typer.Option()] = "created_at",
    limit: PageSize = None, cursor: CursorOpt = None, all_pages: AllPages = False, as_json: JsonOut = False,
) -> None:
    """List projects."""
    api = connect()
    filters = {"team_id": api.id_of(TEAMS, team) if team else None, "status": status, "name": name, "sort": sort}
    page = api.listing("/projects", filters, limit=limit, cursor=cursor, follow=all_pages)
    show_page(page, _columns(api), as_json, "projects")


@app.command("create")
def projects_create(
    name: Annotated[str, typer.Argument()],
    team: Annotated[str, typer.Option(help="The team it belongs to (id or name).")],
    description: Description = None,
    as_json: JsonOut = False,
) -> None:
    """Create a project in a team."""
    api = connect()
    created = api.post("/projects", payload(team_id=api.id_of(TEAMS, team), name=name, description=description))
    show_record(created, as_json, labels=api.labels, note=f"Created project {created['name']} in team {team}.")


@app.command("show")
def projects_show(project: ProjectRef, team: ProjectTeam = None, as_json: JsonOut = False) -> None:
    """Show one project."""
    api = connect()
    show_record(api.get(f"/projects/{project_id(api, project, team)}"), as_json, labels=api.labels)


@app.command("update")
def projects_update(
    project: ProjectRef,
    team: ProjectTeam = None,
    name: Annotated[str | None, typer.Option("--name", help="New name.")] = None,
    description: Description = None,
    as_json: JsonOut = False,
) -> None:
    """Rename a project or change its description."""
    body = payload(name=name, description=description)
    if not body:
        usage("nothing to change: give --name or --description")
    api = connect()
    updated = api.patch(f"/projects/{project_id(api, project, team)}", body)
    show_record(updated, as_json, labels=api.labels, note=f"Updated project {updated['name']}.")


@app.command("close")
def projects_close(project: ProjectRef, team: ProjectTeam = None, as_json: JsonOut = False) -> None:
    """Close a project: no new token may carry it, and its live tokens are revoked (its usage is kept)."""
    api = connect()
    closed = api.post(f"/projects/{project_id(api, project, team)}/close")
    done(as_json, closed, f"Closed project {closed['name']}; it takes no new tokens, and "
                          f"{closed.get('tokens_revoked', 0)} token(s) carrying it were revoked.")
