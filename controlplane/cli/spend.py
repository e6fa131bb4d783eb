"""``keyward spend``: what was spent, grouped and filtered (``GET /api/v1/spend``): a table with a total
line, the API's JSON (``--json``), or the whole report as CSV or JSON lines on stdout (``--format``)."""

from __future__ import annotations

import sys
from datetime import date
from decimal import Decimal
from typing import Annotated, Any, Literal

import typer

from controlplane.cli.client import connect
from controlplane.cli.options import AllPages, CursorOpt, JsonOut, PageSize
from controlplane.cli.output import Columns, Row, key, note, print_json, render_table, say, usage
from controlplane.cli.scopes import project_id
from controlplane.cli.vocabulary import SERVICE_ACCOUNTS, TEAMS, USERS

#: What the API groups by (tests/e2e/test_cli_spend.py checks it matches the API), and per id group the
#: field that names it.
GROUPS = ("user", "service_account", "team", "project", "token", "model", "provider", "environment", "day", "month")
NAMED = {"user": ("user_id", "user_email"), "service_account": ("service_account_id", "service_account_name"),
         "team": ("team_id", "team_name"), "project": ("project_id", "project_name"),
         "token": ("token_id", "token_name")}
MEASURES: Columns = [("REQUESTS", key("requests")), ("INPUT", key("input_tokens")), ("CACHED", key("cached_tokens")),
                     ("OUTPUT", key("output_tokens")), ("COST USD", lambda r: _usd(r["cost_usd"])),
                     ("ESTIMATED", key("estimated_requests"))]


def _usd(value: Any) -> str:
    return f"{Decimal(str(value)):,.4f}"


def _groups(spec: str) -> list[str]:
    groups = [part.strip() for part in spec.split(",") if part.strip()]
    unknown = [g for g in groups if g not in GROUPS]
    if not groups or unknown:
        usage(f"--group-by {spec!r}: expected a comma-separated list of {', '.join(GROUPS)}")
    return groups


def _label(group: str) -> Any:
    """A group's cell: the name an id stands for (the id when it names nothing), or the value."""
    if group not in NAMED:
        return key(group)
    ident, name = NAMED[group]
    return lambda row: row.get(name) or row.get(ident) or "-"


def spend(
    group_by: Annotated[str, typer.Option("--group-by", help=f"Comma-separated: {', '.join(GROUPS)}.")] = "team",
    start: Annotated[str | None, typer.Option(help="First day, YYYY-MM-DD (default: the 1st of this month).")]
    = None,
    end: Annotated[str | None, typer.Option(help="Day after the last, YYYY-MM-DD (default: the 1st of next "
                                                 "month).")] = None,
    team: Annotated[str | None, typer.Option(help="Team id or name.")] = None,
    project: Annotated[str | None, typer.Option(help="Project id or name (looked up within --team if given).")]
    = None,
    user: Annotated[str | None, typer.Option(help="User id or email.")] = None,
    service_account: Annotated[str | None, typer.Option(help="Service account id or name.")] = None,
    token: Annotated[str | None, typer.Option(help="Token id.")] = None,
    model: Annotated[str | None, typer.Option()] = None,
    provider: Annotated[str | None, typer.Option()] = None,
    environment: Annotated[str | None, typer.Option()] = None,
    sort: Annotated[Literal["-cost_usd", "cost_usd", "-requests", "requests", "group"], typer.Option()]
    = "-cost_usd",
    export: Annotated[Literal["csv", "jsonl"] | None, typer.Option(
        "--format", help="Print the whole report as CSV or JSON lines (streamed; no total line).")] = None,
    limit: PageSize = None, cursor: CursorOpt = None, all_pages: AllPages = False, as_json: JsonOut = False,
) -> None:
    """Spend in USD, requests and tokens, grouped by any of user, service account, team, project, token,
    model, provider, environment, day, month; most expensive first, with a total."""
    groups = _groups(group_by)
    for option, value in (("--start", start), ("--end", end)):
        if value is not None:
            try:
                date.fromisoformat(value)
            except ValueError:
                usage(f"{option} {value!r}: expected a day, YYYY-MM-DD")
    api = connect()
    params: dict[str, Any] = {
        "group_by": ",".join(groups), "start": start, "end": end, "sort": sort,
        "team_id": api.id_of(TEAMS, team) if team else None,
        "project_id": project_id(api, project, team) if project else None,
        "user_id": api.id_of(USERS, user) if user else None,
        "service_account_id": api.id_of(SERVICE_ACCOUNTS, service_account) if service_account else None,
        "token_id": token, "model": model, "provider": provider, "environment": environment,
    }
    if export:
        api.export("/spend", params | {"format": export}, sys.stdout.write)
        return
    report = _pages(api, params, limit=limit, cursor=cursor, follow=all_pages)
    if as_json:
        print_json(report)
        return
    say(f"Spend from {report['start']} to {report['end']} (exclusive), by {', '.join(groups)}:")
    columns: Columns = [(g.replace("_", " ").upper(), _label(g)) for g in groups]
    total: Row = report["total"]
    if report["items"]:
        render_table(report["items"], [*columns, *MEASURES])
    else:
        say("No spend.")
    say(f"Total: {_usd(total['cost_usd'])} USD, {total['requests']:,} requests, {total['input_tokens']:,} input "
        f"tokens ({total['cached_tokens']:,} cached), {total['output_tokens']:,} output tokens, "
        f"{total['estimated_requests']:,} estimated; {total['groups']:,} groups.")
    if report.get("next_cursor"):
        note(f"More groups: add --all, or --cursor {report['next_cursor']}")


def _pages(api: Any, params: dict[str, Any], *, limit: int | None, cursor: str | None,
           follow: bool) -> dict[str, Any]:
    """One page, or with ``follow`` every page, as one report document."""
    params = params | {"limit": limit or (500 if follow else 100), "cursor": cursor}
    report: dict[str, Any] = api.get("/spend", params)
    while follow and report.get("next_cursor"):
        following = api.get("/spend", params | {"cursor": report["next_cursor"]})
        report = following | {"items": report["items"] + following["items"]}
    return report
