"""``keyward users``: people. Create, list, suspend and activate them, deprovision someone who left,
revoke every token a person owns. A user is named by id or email."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

import typer

from controlplane.cli.client import connect, payload
from controlplane.cli.options import AllPages, CursorOpt, JsonOut, PageSize, ReasonOpt, UserRef, Yes
from controlplane.cli.output import Columns, at, confirm, done, key, show_page, show_record, usage
from controlplane.cli.vocabulary import USERS

app = typer.Typer(help="People: create, suspend, deprovision, revoke their tokens.", no_args_is_help=True)
COLUMNS: Columns = [("ID", key("id")), ("EMAIL", key("email")), ("NAME", key("display_name")),
                    ("STATUS", key("status")), ("CREATED", at("created_at"))]


@app.command("list")
def users_list(
    status: Annotated[Literal["active", "suspended", "deprovisioned"] | None, typer.Option()] = None,
    search: Annotated[str | None, typer.Option(help="Substring of email or display name.")] = None,
    sort: Annotated[Literal["created_at", "-created_at", "email", "-email"], typer.Option()] = "created_at",
    limit: PageSize = None, cursor: CursorOpt = None, all_pages: AllPages = False, as_json: JsonOut = False,
) -> None:
    """List users."""
    page = connect().listing("/users", {"status": status, "q": search, "sort": sort}, limit=limit, cursor=cursor,
                             follow=all_pages)
    show_page(page, COLUMNS, as_json, "users")


@app.command("create")
def users_create(
    email: Annotated[str, typer.Argument()],
    name: Annotated[str | None, typer.Option("--name", help="Display name.")] = None,
    external_id: Annotated[str | None, typer.Option(help="The identity provider's id.")] = None,
    as_json: JsonOut = False,
) -> None:
    """Create a user."""
    api = connect()
    user = api.post("/users", payload(email=email, display_name=name, external_id=external_id))
    show_record(user, as_json, labels=api.labels, note=f"Created user {user['email']}.")


@app.command("update")
def users_update(
    user: UserRef,
    name: Annotated[str | None, typer.Option("--name", help="Display name.")] = None,
    employment_type: Annotated[Literal["employee", "contractor", "vendor", "service"] | None, typer.Option()]
    = None,
    end_date: Annotated[str | None, typer.Option(help="Last day of access, YYYY-MM-DD: the day after, they are "
                                                      "deprovisioned.")] = None,
    clear_end_date: Annotated[bool, typer.Option("--clear-end-date", help="Remove the end date.")] = False,
    as_json: JsonOut = False,
) -> None:
    """Change a user's display name, employment type or end date."""
    if end_date is not None:
        try:
            date.fromisoformat(end_date)
        except ValueError:
            usage(f"--end-date {end_date!r}: expected a day, YYYY-MM-DD")
    body = payload(display_name=name, employment_type=employment_type, end_date=end_date)
    if clear_end_date:
        body["end_date"] = None
    if not body:
        usage("nothing to change: give at least one option")
    api = connect()
    updated = api.patch(f"/users/{api.id_of(USERS, user)}", body)
    show_record(updated, as_json, labels=api.labels, note=f"Updated user {updated['email']}.")


@app.command("show")
def users_show(user: UserRef, as_json: JsonOut = False) -> None:
    """Show one user."""
    api = connect()
    show_record(api.find(USERS, user), as_json, labels=api.labels)


def _set_status(ref: str, status: str, as_json: bool, message: str) -> None:
    record = connect().set_status(USERS, ref, status)
    done(as_json, record, message.format(email=record["email"]))


@app.command("suspend")
def users_suspend(user: UserRef, as_json: JsonOut = False) -> None:
    """Suspend a user: their tokens stop working at the gateway at once (and work again on activate)."""
    _set_status(user, "suspended", as_json, "Suspended {email}: their tokens are refused until activated.")


@app.command("activate")
def users_activate(user: UserRef, as_json: JsonOut = False) -> None:
    """Re-activate a suspended user."""
    _set_status(user, "active", as_json, "Activated {email}.")


@app.command("deprovision")
def users_deprovision(user: UserRef, yes: Yes = False, as_json: JsonOut = False) -> None:
    """Deprovision a user (someone who left): every token they own is revoked."""
    confirm(f"Deprovision {user} and revoke every token they own?", yes)
    _set_status(user, "deprovisioned", as_json, "Deprovisioned {email}; every token of theirs is revoked.")


@app.command("revoke-tokens")
def users_revoke_tokens(user: UserRef, reason: ReasonOpt = None, yes: Yes = False, as_json: JsonOut = False) -> None:
    """Revoke every live token a user owns, in one transaction."""
    api = connect()
    user_id = api.id_of(USERS, user)
    confirm(f"Revoke every live token of {user}?", yes)
    result = api.post(f"/users/{user_id}/tokens/revoke", payload(reason=reason))
    done(as_json, result, f"Revoked {result['revoked']} token(s) of {user}.")
