"""``keyward tokens``: personal access tokens. Mint one (its secret is printed once), list them (hints
only), narrow one in place, rotate it with a grace period, revoke it, report dormant ones."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

import typer

from controlplane.cli.client import Api, connect, payload
from controlplane.cli.options import AllPages, CursorOpt, JsonOut, PageSize, QuietOpt, ReasonOpt
from controlplane.cli.output import (
    Columns,
    Row,
    at,
    cell,
    done,
    key,
    say,
    show_page,
    show_record,
    show_secret,
    state,
    usage,
    when,
)
from controlplane.cli.register import ClearOpt, LocationOpt, PurposeOpt, WorkloadOpt, register_fields
from controlplane.cli.scopes import project_id
from controlplane.cli.vocabulary import FAMILIES, SERVICE_ACCOUNTS, TEAMS, USERS, Env, parse_endpoints

app = typer.Typer(help="Personal access tokens: mint, list, narrow, rotate, revoke.", no_args_is_help=True)
TokenId = Annotated[str, typer.Argument(help="Token id.", metavar="TOKEN_ID")]
EndpointsOpt = Annotated[list[str] | None, typer.Option(
    "--endpoints", help=f"Narrow to these endpoint families, comma-separated (of {', '.join(FAMILIES)}; each one the "
                        "team's profile allows). Default: the profile's, as they change.")]
TokenSort = Literal["created_at", "-created_at", "last_used_at", "-last_used_at", "expires_at", "-expires_at",
                    "name", "-name"]


def _owner(api: Api, row: Row) -> str:
    if row.get("user_id"):
        return api.label(USERS, row["user_id"])
    return "sa:" + api.label(SERVICE_ACCOUNTS, row.get("service_account_id"))


def _columns(api: Api) -> Columns:
    return [("ID", key("id")), ("NAME", key("name")), ("HINT", key("hint")), ("OWNER", lambda r: _owner(api, r)),
            ("TEAM", lambda r: api.label(TEAMS, r["team_id"])), ("ENV", key("environment")),
            ("MODELS", key("models")), ("STATE", state), ("EXPIRES", at("expires_at")),
            ("LAST USED", lambda r: when(r["last_used_at"]) if r["last_used_at"] else "never")]


def _summary(api: Api, heading: str, token: Row) -> Callable[[], str]:
    return lambda: (f"{heading} {token['name']} ({token['hint']}) for {_owner(api, token)}, team "
                    f"{api.label(TEAMS, token['team_id'])}, {token['environment']}, expires "
                    f"{when(token['expires_at'])}. Token id: {token['id']}")


@app.command("mint")
def tokens_mint(
    user: Annotated[str | None, typer.Option(help="Owner: user id or email.")] = None,
    service_account: Annotated[str | None, typer.Option(help="Owner: service account id or name.")] = None,
    team: Annotated[str | None, typer.Option(help="Team the token acts for (id or name); default: the "
                                                  "user's only team.")] = None,
    project: Annotated[str | None, typer.Option(help="An open project of the team (id or name) its spend rolls "
                                                     "up to; a service account's default: its own.")] = None,
    name: Annotated[str, typer.Option(help="What the token is for, e.g. laptop or ci.")] = "cli",
    env: Annotated[Env, typer.Option(help="Token environment.")] = Env.dev,
    models: Annotated[list[str] | None, typer.Option(
        "--model", help="Narrow to these models or patterns, repeatable (default: all the profile offers).")] = None,
    endpoints: EndpointsOpt = None,
    scopes: Annotated[list[str] | None, typer.Option("--scope", help="Scope, repeatable.")] = None,
    expires_in_days: Annotated[int | None, typer.Option(min=1, help="Default: the profile's default.")] = None,
    quiet: QuietOpt = False,
    as_json: JsonOut = False,
) -> None:
    """Mint a token. The secret is printed once and can never be shown again."""
    if (user is None) == (service_account is None):
        usage("give exactly one of --user and --service-account")
    api = connect()
    body = payload(user_id=api.id_of(USERS, user) if user else None,
                   service_account_id=api.id_of(SERVICE_ACCOUNTS, service_account) if service_account else None,
                   team_id=api.id_of(TEAMS, team) if team else None,
                   project_id=project_id(api, project, team) if project else None, name=name, environment=str(env),
                   models=models or None, endpoints=parse_endpoints(endpoints), scopes=scopes or None,
                   expires_in_days=expires_in_days)
    issued = api.post("/tokens", body)
    show_secret(issued, as_json, quiet, _summary(api, "Minted token", issued))


@app.command("list")
def tokens_list(
    user: Annotated[str | None, typer.Option(help="User id or email.")] = None,
    team: Annotated[str | None, typer.Option(help="Team id or name.")] = None,
    service_account: Annotated[str | None, typer.Option(help="Service account id or name.")] = None,
    env: Annotated[Env | None, typer.Option()] = None,
    state: Annotated[Literal["active", "revoked", "expired"] | None, typer.Option()] = None,
    name: Annotated[str | None, typer.Option(help="Substring of the token's name.")] = None,
    sort: Annotated[TokenSort, typer.Option()] = "created_at",
    limit: PageSize = None, cursor: CursorOpt = None, all_pages: AllPages = False, as_json: JsonOut = False,
) -> None:
    """List tokens (never their secrets: each shows its prefix and last four characters)."""
    api = connect()
    filters = {"user_id": api.id_of(USERS, user) if user else None,
               "team_id": api.id_of(TEAMS, team) if team else None,
               "service_account_id": api.id_of(SERVICE_ACCOUNTS, service_account) if service_account else None,
               "environment": str(env) if env else None, "state": state, "name": name, "sort": sort}
    page = api.listing("/tokens", filters, limit=limit, cursor=cursor, follow=all_pages)
    show_page(page, _columns(api), as_json, "tokens")


@app.command("show")
def tokens_show(token_id: TokenId, as_json: JsonOut = False) -> None:
    """Show one token."""
    api = connect()
    show_record(api.get(f"/tokens/{token_id}"), as_json, labels=api.labels)


@app.command("dormant")
def tokens_dormant(
    days: Annotated[int, typer.Option(min=1, max=3650, help="Unused for at least this many days.")] = 30,
    team: Annotated[str | None, typer.Option(help="Team id or name.")] = None,
    sort: Annotated[TokenSort, typer.Option()] = "last_used_at",
    limit: PageSize = None, cursor: CursorOpt = None, all_pages: AllPages = False, as_json: JsonOut = False,
) -> None:
    """Live tokens unused for --days days (never used: minted more than --days ago)."""
    api = connect()
    filters = {"days": days, "team_id": api.id_of(TEAMS, team) if team else None, "sort": sort}
    page = api.listing("/tokens/dormant", filters, limit=limit, cursor=cursor, follow=all_pages)
    show_page(page, _columns(api), as_json, "dormant tokens")


@app.command("revoke")
def tokens_revoke(token_id: TokenId, reason: ReasonOpt = None, as_json: JsonOut = False) -> None:
    """Revoke a token; the gateway refuses it within a second."""
    token = connect().post(f"/tokens/{token_id}/revoke", payload(reason=reason))
    done(as_json, token, f"Revoked token {token['name']} ({token['hint']}).")


@app.command("rotate")
def tokens_rotate(
    token_id: TokenId,
    grace_hours: Annotated[float, typer.Option(min=0, max=720, help="How long the old token keeps working.")] = 24,
    name: Annotated[str | None, typer.Option(help="Name of the new token (default: the old one's).")] = None,
    quiet: QuietOpt = False,
    as_json: JsonOut = False,
) -> None:
    """Mint a successor with the same attributes; the old token works until the grace period ends."""
    api = connect()
    rotated = api.post(f"/tokens/{token_id}/rotate", payload(grace_hours=grace_hours, name=name))
    if not as_json and not quiet:
        say(f"Old token {rotated['old']['hint']} works until {when(rotated['old']['expires_at'])}.")
    show_secret(rotated["new"], as_json, quiet, _summary(api, "New token", rotated["new"]), document=rotated)


@app.command("set")
def tokens_set(
    token_id: TokenId, purpose: PurposeOpt = None, workload: WorkloadOpt = None,
    secret_location: LocationOpt = None,
    backup_owner: Annotated[str | None, typer.Option(help="A personal token's backup owner: user id or email "
                                                          "(active, not its owner).")] = None,
    clear: ClearOpt = None, as_json: JsonOut = False,
) -> None:
    """Set a token's register fields: purpose, workload, secret location, backup owner (--clear
    purpose|workload|secret-location|backup-owner unsets one)."""
    api = connect()
    body = register_fields(clear, {"purpose": "purpose", "workload": "workload", "secret-location": "secret_location",
                                   "backup-owner": "backup_owner_id"},
                           purpose=purpose, workload=workload, secret_location=secret_location,
                           backup_owner_id=api.id_of(USERS, backup_owner) if backup_owner else None)
    token = api.patch(f"/tokens/{token_id}", body)
    done(as_json, token, f"Updated token {token['name']} ({token['hint']}).")


@app.command("narrow")
def tokens_narrow(
    token_id: TokenId,
    models: Annotated[list[str] | None, typer.Option("--model", help="The new, narrower model list, "
                                                                     "repeatable.")] = None,
    endpoints: Annotated[list[str] | None, typer.Option(
        "--endpoints", help="The new, narrower endpoint families, comma-separated: each one the token may call "
                            "now.")] = None,
    expires_at: Annotated[datetime | None, typer.Option(help="An earlier expiry (UTC unless an offset is "
                                                             "given).")] = None,
    expires_in_days: Annotated[float | None, typer.Option(min=0, help="An earlier expiry, from now.")] = None,
    as_json: JsonOut = False,
) -> None:
    """Narrow a live token in place (fewer models or endpoint families, an earlier expiry); widening needs a
    new token."""
    if expires_at and expires_in_days is not None:
        usage("give --expires-at or --expires-in-days, not both")
    if expires_in_days is not None:
        expires_at = datetime.now(UTC) + timedelta(days=expires_in_days)
    if expires_at and expires_at.tzinfo is None:
        expires_at = expires_at.replace(tzinfo=UTC)
    body = payload(models=models or None, endpoints=parse_endpoints(endpoints),
                   expires_at=expires_at.isoformat() if expires_at else None)
    if not body:
        usage("nothing to narrow: give --model, --endpoints or an earlier expiry")
    token = connect().patch(f"/tokens/{token_id}", body)
    families = cell(token["endpoints"]) if token.get("endpoints") is not None else "the profile's"
    done(as_json, token, f"Narrowed token {token['name']} ({token['hint']}): models "
                         f"{cell(token['models'])}, endpoints {families}, expires {when(token['expires_at'])}.")
