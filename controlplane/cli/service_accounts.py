"""``keyward service-accounts``: workloads owned by a team, with a business and a technical owner.
Disabling one stops its tokens at once. Named by id or name."""

from __future__ import annotations

from typing import Annotated, Literal

import typer

from controlplane.cli.client import Api, connect, payload
from controlplane.cli.options import AllPages, CursorOpt, Description, JsonOut, PageSize
from controlplane.cli.output import Columns, at, done, key, show_page, show_record
from controlplane.cli.register import ClearOpt, PurposeOpt, WorkloadOpt, register_fields
from controlplane.cli.scopes import project_id
from controlplane.cli.vocabulary import SERVICE_ACCOUNTS, TEAMS, USERS

app = typer.Typer(help="Service accounts: workloads owned by a team.", no_args_is_help=True)
AccountRef = Annotated[str, typer.Argument(help="Service account id or name.", metavar="SERVICE_ACCOUNT")]


def _columns(api: Api) -> Columns:
    return [("ID", key("id")), ("NAME", key("name")), ("TEAM", lambda r: api.label(TEAMS, r["team_id"])),
            ("STATUS", key("status")), ("BUSINESS OWNER", lambda r: api.label(USERS, r["business_owner_id"])),
            ("TECHNICAL OWNER", lambda r: api.label(USERS, r["technical_owner_id"])),
            ("CREATED", at("created_at"))]


@app.command("list")
def accounts_list(
    team: Annotated[str | None, typer.Option(help="Team id or name.")] = None,
    status: Annotated[Literal["active", "disabled"] | None, typer.Option()] = None,
    sort: Annotated[Literal["created_at", "-created_at", "name", "-name"], typer.Option()] = "created_at",
    limit: PageSize = None, cursor: CursorOpt = None, all_pages: AllPages = False, as_json: JsonOut = False,
) -> None:
    """List service accounts."""
    api = connect()
    filters = {"team_id": api.id_of(TEAMS, team) if team else None, "status": status, "sort": sort}
    page = api.listing("/service-accounts", filters, limit=limit, cursor=cursor, follow=all_pages)
    show_page(page, _columns(api), as_json, "service accounts")


@app.command("create")
def accounts_create(
    name: Annotated[str, typer.Argument()],
    team: Annotated[str, typer.Option(help="The owning team (id or name); its tokens act for it.")],
    business_owner: Annotated[str, typer.Option(help="User id or email.")],
    technical_owner: Annotated[str, typer.Option(help="User id or email.")],
    project: Annotated[str | None, typer.Option(help="An open project of the team (id or name): the default "
                                                     "project of its tokens.")] = None,
    description: Description = None,
    as_json: JsonOut = False,
) -> None:
    """Create a service account."""
    api = connect()
    body = payload(name=name, description=description, team_id=api.id_of(TEAMS, team),
                   business_owner_id=api.id_of(USERS, business_owner),
                   technical_owner_id=api.id_of(USERS, technical_owner),
                   project_id=project_id(api, project, team) if project else None)
    show_record(api.post("/service-accounts", body), as_json, labels=api.labels,
                note=f"Created service account {name}.")


@app.command("show")
def accounts_show(account: AccountRef, as_json: JsonOut = False) -> None:
    """Show one service account."""
    api = connect()
    show_record(api.find(SERVICE_ACCOUNTS, account), as_json, labels=api.labels)


OwnerOpt = Annotated[str | None, typer.Option(help="User id or email (an active person).")]


@app.command("update")
def accounts_update(
    account: AccountRef, purpose: PurposeOpt = None, workload: WorkloadOpt = None,
    business_owner: OwnerOpt = None, technical_owner: OwnerOpt = None, security_owner: OwnerOpt = None,
    finance_owner: OwnerOpt = None, description: Description = None, clear: ClearOpt = None,
    as_json: JsonOut = False,
) -> None:
    """Change a service account's owners and register fields (--clear purpose|workload|security-owner|
    finance-owner|description). New active owners clear a reassignment flag."""
    api = connect()

    def user(ref: str | None) -> str | None:
        return api.id_of(USERS, ref) if ref else None

    body = register_fields(clear, {"purpose": "purpose", "workload": "workload", "security-owner": "security_owner_id",
                                   "finance-owner": "finance_owner_id", "description": "description"},
                           purpose=purpose, workload=workload, description=description,
                           business_owner_id=user(business_owner), technical_owner_id=user(technical_owner),
                           security_owner_id=user(security_owner), finance_owner_id=user(finance_owner))
    updated = api.patch(f"/service-accounts/{api.id_of(SERVICE_ACCOUNTS, account)}", body)
    show_record(updated, as_json, labels=api.labels, note=f"Updated service account {updated['name']}.")


def _set_status(ref: str, status: str, as_json: bool, message: str) -> None:
    record = connect().set_status(SERVICE_ACCOUNTS, ref, status)
    done(as_json, record, message.format(name=record["name"]))


@app.command("disable")
def accounts_disable(account: AccountRef, as_json: JsonOut = False) -> None:
    """Disable a service account: its tokens stop working at the gateway at once."""
    _set_status(account, "disabled", as_json, "Disabled service account {name}; its tokens are refused.")


@app.command("enable")
def accounts_enable(account: AccountRef, as_json: JsonOut = False) -> None:
    """Enable a disabled service account."""
    _set_status(account, "active", as_json, "Enabled service account {name}.")
