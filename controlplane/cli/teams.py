"""``keyward teams``: teams, the access profile each follows, their members, and their tokens. A team
is named by id or name."""

from __future__ import annotations

from typing import Annotated, Literal

import typer

from controlplane.cli.client import Api, connect, payload
from controlplane.cli.options import (
    AllPages,
    CursorOpt,
    JsonOut,
    PageSize,
    ProfileRef,
    ReasonOpt,
    TeamRef,
    UserRef,
    Yes,
)
from controlplane.cli.output import Columns, at, confirm, done, key, show_page, show_record
from controlplane.cli.vocabulary import PROFILES, TEAMS, USERS

app = typer.Typer(help="Teams: their access profile, members, and tokens.", no_args_is_help=True)


def _columns(api: Api) -> Columns:
    return [("ID", key("id")), ("NAME", key("name")), ("PROFILE", lambda r: api.label(PROFILES, r["profile_id"])),
            ("DESCRIPTION", key("description")), ("CREATED", at("created_at"))]


@app.command("list")
def teams_list(
    name: Annotated[str | None, typer.Option(help="Exact name, case-insensitive.")] = None,
    profile: Annotated[str | None, typer.Option(help="Only teams using this profile (id or name).")] = None,
    sort: Annotated[Literal["created_at", "-created_at", "name", "-name"], typer.Option()] = "created_at",
    limit: PageSize = None, cursor: CursorOpt = None, all_pages: AllPages = False, as_json: JsonOut = False,
) -> None:
    """List teams."""
    api = connect()
    profile_id = api.id_of(PROFILES, profile) if profile else None
    page = api.listing("/teams", {"name": name, "profile_id": profile_id, "sort": sort}, limit=limit,
                       cursor=cursor, follow=all_pages)
    show_page(page, _columns(api), as_json, "teams")


@app.command("create")
def teams_create(
    name: Annotated[str, typer.Argument()],
    profile: Annotated[str | None, typer.Option(help="Access profile (id or name); without one, no token "
                                                     "can be minted for the team.")] = None,
    description: Annotated[str | None, typer.Option()] = None,
    as_json: JsonOut = False,
) -> None:
    """Create a team."""
    api = connect()
    profile_id = api.id_of(PROFILES, profile) if profile else None
    team = api.post("/teams", payload(name=name, description=description, profile_id=profile_id))
    show_record(team, as_json, labels=api.labels, note=f"Created team {team['name']}.")


@app.command("show")
def teams_show(team: TeamRef, as_json: JsonOut = False) -> None:
    """Show one team."""
    api = connect()
    show_record(api.find(TEAMS, team), as_json, labels=api.labels)


@app.command("set-profile")
def teams_set_profile(team: TeamRef, profile: ProfileRef, as_json: JsonOut = False) -> None:
    """Give a team an access profile: every token of the team follows it at once."""
    api = connect()
    team_id, profile_id = api.id_of(TEAMS, team), api.id_of(PROFILES, profile)
    updated = api.patch(f"/teams/{team_id}", {"profile_id": profile_id})
    done(as_json, updated, f"Team {updated['name']} now uses profile {profile}.")


@app.command("members")
def teams_members(
    team: TeamRef,
    role: Annotated[Literal["member", "owner"] | None, typer.Option()] = None,
    limit: PageSize = None, cursor: CursorOpt = None, all_pages: AllPages = False, as_json: JsonOut = False,
) -> None:
    """List a team's members."""
    api = connect()
    page = api.listing(f"/teams/{api.id_of(TEAMS, team)}/members", {"role": role}, limit=limit, cursor=cursor,
                       follow=all_pages)
    columns: Columns = [("USER ID", key("user_id")), ("EMAIL", lambda r: api.label(USERS, r["user_id"])),
                        ("ROLE", key("role")), ("SINCE", at("created_at"))]
    show_page(page, columns, as_json, "members")


@app.command("add-member")
def teams_add_member(
    team: TeamRef, user: UserRef,
    role: Annotated[Literal["member", "owner"], typer.Option()] = "member",
    as_json: JsonOut = False,
) -> None:
    """Add a user to a team, or change their role there."""
    api = connect()
    membership = api.put(f"/teams/{api.id_of(TEAMS, team)}/members/{api.id_of(USERS, user)}", {"role": role})
    article = "an" if membership["role"] == "owner" else "a"
    done(as_json, membership, f"{user} is {article} {membership['role']} of team {team}.")


@app.command("remove-member")
def teams_remove_member(team: TeamRef, user: UserRef, as_json: JsonOut = False) -> None:
    """Remove a user from a team: their tokens for the team stop working at once."""
    api = connect()
    team_id, user_id = api.id_of(TEAMS, team), api.id_of(USERS, user)
    api.delete(f"/teams/{team_id}/members/{user_id}")
    done(as_json, {"team_id": team_id, "user_id": user_id, "removed": True}, f"Removed {user} from team {team}.")


@app.command("revoke-tokens")
def teams_revoke_tokens(team: TeamRef, reason: ReasonOpt = None, yes: Yes = False, as_json: JsonOut = False) -> None:
    """Revoke every live token that acts for a team."""
    api = connect()
    team_id = api.id_of(TEAMS, team)
    confirm(f"Revoke every live token of team {team}?", yes)
    result = api.post(f"/teams/{team_id}/tokens/revoke", payload(reason=reason))
    done(as_json, result, f"Revoked {result['revoked']} token(s) of team {team}.")
