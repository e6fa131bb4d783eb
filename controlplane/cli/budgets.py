"""``keyward budgets``: a scope's own budget (in place of its profile's default) and what is spent
against every budget in effect. ``keyward budgets set team research 50 --posture alert_then_hard
--threshold 80 --threshold 100`` gives team research $50 a month, announced at 80% and refused at 100%."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

import typer

from controlplane.cli.client import Api, connect, payload
from controlplane.cli.options import AllPages, CursorOpt, JsonOut, PageSize
from controlplane.cli.output import (
    Columns,
    Row,
    at,
    cell,
    key,
    print_json,
    render_table,
    say,
    show_page,
    show_record,
    usage,
)
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

app = typer.Typer(help="Budgets: what a scope may spend per period, and how much of it is spent.",
                  no_args_is_help=True)
Posture = Literal["hard", "alert", "alert_then_hard"]
Period = Literal["month", "day", "window"]
Sort = Literal["created_at", "-created_at", "updated_at", "-updated_at"]
POSTURE_HELP = ("hard: refused at 100%; alert: announced only; alert_then_hard: announced at each threshold, "
                "refused at 100%.")


def _moment(value: datetime | None) -> str | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()


def period_text(row: Row) -> str:
    if row.get("period") == "window":
        return f"{at('window_start')(row)} → {at('window_end')(row)}"
    return str(row.get("period"))


def _columns(api: Api) -> Columns:
    return [("ID", key("id")), ("SCOPE", lambda r: label(api, r["scope_type"], r["scope_id"])),
            ("AMOUNT USD", key("amount_usd")), ("PERIOD", period_text), ("POSTURE", key("posture")),
            ("THRESHOLDS %", key("thresholds")), ("UPDATED", at("updated_at"))]


def _teams(api: Api, ids: list[str]) -> list[str]:
    return [api.label(TEAMS, ident) for ident in ids]


def _utilisation_columns(api: Api) -> Columns:
    return [("SOURCE", key("source")), ("TEAMS", lambda r: _teams(api, r["team_ids"])),
            ("AMOUNT USD", key("amount_usd")), ("POSTURE", key("posture")),
            ("PERIOD", lambda r: f"{r['period']} {at('period_start')(r)} → {at('period_end')(r)}"),
            ("SPENT USD", key("spent_usd")), ("%", key("percent")), ("REMAINING USD", key("remaining_usd")),
            ("REACHED %", key("thresholds_reached")), ("REFUSED", key("refused"))]


@app.command("set")
def budgets_set(
    kind: ScopeTypeArg,
    scope: ScopeArg,
    amount: Annotated[str, typer.Argument(metavar="AMOUNT", help="US dollars per period, e.g. 50 or 12.5.")],
    period: Annotated[Period, typer.Option(help="Calendar month or day (UTC), or a fixed window.")] = "month",
    window_start: Annotated[datetime | None, typer.Option("--from", help="With --period window: its start "
                                                                         "(UTC unless an offset is given).")] = None,
    window_end: Annotated[datetime | None, typer.Option("--until", help="With --period window: its end "
                                                                        "(excluded).")] = None,
    posture: Annotated[Posture, typer.Option(help=POSTURE_HELP)] = "alert_then_hard",
    thresholds: Annotated[list[int] | None, typer.Option(
        "--threshold", min=1, max=1000, help="Percentage announced when reached, repeatable (default 50, 80, 100).")]
    = None,
    team: ProjectTeam = None,
    as_json: JsonOut = False,
) -> None:
    """Give a scope its own budget, or replace the one it has (all of it: what is not given takes the
    default). The gateway applies it at once."""
    windowed = window_start is not None or window_end is not None
    if (period == "window" and (window_start is None or window_end is None)) or (period != "window" and windowed):
        usage("--period window needs --from and --until, and only it takes them")
    api = connect()
    spelled = scope_type(kind)
    ident = scope_id(api, spelled, scope, team)
    body = payload(amount_usd=amount, period=period, window_start=_moment(window_start),
                   window_end=_moment(window_end), posture=posture, thresholds=thresholds or None)
    budget = api.put(f"/budgets/{spelled}/{ident}", body)
    note = (f"Budget of {label(api, spelled, ident)}: ${budget['amount_usd']} per {period_text(budget)}, "
            f"{budget['posture']}, announced at {cell(budget['thresholds'])}%.")
    show_record(budget, as_json, note=note)


@app.command("list")
def budgets_list(
    kind: Annotated[str | None, typer.Option("--scope-type", help=f"Only this scope type: {SCOPE_HELP}")] = None,
    scope: Annotated[str | None, typer.Option("--scope", help="Only this scope (with --scope-type).")] = None,
    team: ProjectTeam = None,
    sort: Annotated[Sort, typer.Option()] = "created_at",
    limit: PageSize = None, cursor: CursorOpt = None, all_pages: AllPages = False, as_json: JsonOut = False,
) -> None:
    """List the scopes' own budgets (the defaults are in the profiles: keyward profiles show)."""
    if scope and not kind:
        usage("--scope needs --scope-type")
    api = connect()
    spelled = scope_type(kind) if kind else None
    ident = scope_id(api, spelled, scope, team) if spelled and scope else None
    page = api.listing("/budgets", {"scope_type": spelled, "scope_id": ident, "sort": sort}, limit=limit,
                       cursor=cursor, follow=all_pages)
    show_page(page, _columns(api), as_json, "budgets")


@app.command("show")
def budgets_show(kind: ScopeTypeArg, scope: ScopeArg, team: ProjectTeam = None, as_json: JsonOut = False) -> None:
    """Every budget in effect for a scope (its own, or its profile's default per team), the current
    period, what is spent in it, and whether the gateway refuses now."""
    api = connect()
    spelled = scope_type(kind)
    document = api.get(f"/budgets/{spelled}/{scope_id(api, spelled, scope, team)}/utilisation")
    if as_json:
        print_json(document)
        return
    name = f"{document['scope_type']} {document['scope_name']}"
    if not document["budgets"]:
        say(f"No budget applies to {name}: the gateway refuses none of its requests for spend.")
        return
    say(f"Budgets of {name}:")
    render_table(document["budgets"], _utilisation_columns(api))


@app.command("remove")
def budgets_remove(kind: ScopeTypeArg, scope: ScopeArg, team: ProjectTeam = None, as_json: JsonOut = False) -> None:
    """Remove a scope's own budget: its profile's default, if any, applies again."""
    remove_own(connect(), "/budgets", "budget", kind, scope, team, as_json)
