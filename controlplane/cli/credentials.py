"""``keyward credentials``: credentials for the admin API itself, each with a role (admin, auditor,
finance, or owner of one team). A new one's secret is printed once. Named by id or name."""

from __future__ import annotations

from typing import Annotated

import typer

from controlplane.cli.client import connect, payload
from controlplane.cli.options import AllPages, CursorOpt, JsonOut, PageSize, QuietOpt
from controlplane.cli.output import Columns, at, done, key, show_page, show_record, show_secret, state
from controlplane.cli.register import ClearOpt, LocationOpt, PurposeOpt, register_fields
from controlplane.cli.vocabulary import CREDENTIALS, TEAMS, USERS, Role

app = typer.Typer(help="Admin-API credentials with a role (admin, auditor, finance, team owner).",
                  no_args_is_help=True)


@app.command("create")
def credentials_create(
    name: Annotated[str, typer.Argument()],
    role: Annotated[Role, typer.Option(help="owner needs --team.")],
    team: Annotated[str | None, typer.Option(help="The team an owner credential manages (id or name).")] = None,
    expires_in_days: Annotated[int | None, typer.Option(min=1, max=3650)] = None,
    quiet: QuietOpt = False,
    as_json: JsonOut = False,
) -> None:
    """Issue a credential for the admin API. Its secret is printed once."""
    api = connect()
    issued = api.post("/credentials", payload(name=name, role=str(role), team_id=api.id_of(TEAMS, team) if team
                                              else None, expires_in_days=expires_in_days))
    show_secret(issued, as_json, quiet, lambda: f"Issued {issued['role']} credential {issued['name']} "
                f"({issued['hint']}), id {issued['id']}.", use="; use it as KEYWARD_API_TOKEN")


@app.command("list")
def credentials_list(limit: PageSize = None, cursor: CursorOpt = None, all_pages: AllPages = False,
                     as_json: JsonOut = False) -> None:
    """List admin-API credentials (never their secrets)."""
    api = connect()
    columns: Columns = [("ID", key("id")), ("NAME", key("name")), ("ROLE", key("role")),
                        ("TEAM", lambda r: api.label(TEAMS, r["team_id"])), ("HINT", key("hint")),
                        ("STATE", state), ("EXPIRES", at("expires_at")), ("LAST USED", at("last_used_at")),
                        ("CREATED BY", key("created_by"))]
    show_page(api.listing("/credentials", {}, limit=limit, cursor=cursor, follow=all_pages), columns, as_json,
              "credentials")


@app.command("update")
def credentials_update(
    credential: Annotated[str, typer.Argument(help="Credential id or name.", metavar="CREDENTIAL")],
    purpose: PurposeOpt = None,
    owner: Annotated[str | None, typer.Option(help="The person answerable for it: user id or email.")] = None,
    secret_location: LocationOpt = None, clear: ClearOpt = None, as_json: JsonOut = False,
) -> None:
    """Set an admin-API credential's register fields (--clear purpose|owner|secret-location). A new
    active owner clears a reassignment flag."""
    api = connect()
    body = register_fields(clear, {"purpose": "purpose", "owner": "owner_id", "secret-location": "secret_location"},
                           purpose=purpose, owner_id=api.id_of(USERS, owner) if owner else None,
                           secret_location=secret_location)
    updated = api.patch(f"/credentials/{api.id_of(CREDENTIALS, credential)}", body)
    show_record(updated, as_json, labels=api.labels, note=f"Updated credential {updated['name']}.")


@app.command("revoke")
def credentials_revoke(
    credential: Annotated[str, typer.Argument(help="Credential id or name.", metavar="CREDENTIAL")],
    as_json: JsonOut = False,
) -> None:
    """Revoke an admin-API credential."""
    api = connect()
    revoked = api.post(f"/credentials/{api.id_of(CREDENTIALS, credential)}/revoke")
    done(as_json, revoked, f"Revoked credential {revoked['name']} ({revoked['hint']}).")
