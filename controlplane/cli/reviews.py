"""``keyward review`` and ``keyward exception``: access reviews over the credential register
(``/api/v1/reviews``, ``/api/v1/review-schedules``) and exceptions that need a second person and an
expiry (``/api/v1/exceptions``).

A review end to end::

    keyward review open "Q3 production" --production-only --due 2026-10-01
    keyward review show REVIEW                      # items, frozen at open, with their state
    keyward review decide REVIEW ITEM narrow --reason "uses two models"
    keyward review decide REVIEW ITEM keep --reason "batch job" --exception-expires 2026-12-31
    keyward exception approve EXCEPTION             # someone other than the requester
    keyward review close REVIEW                     # the report and its sha256, bound to the audit chain
    keyward review report REVIEW --format csv > q3.csv
"""

from __future__ import annotations

import sys
from datetime import UTC, date, datetime, time
from enum import StrEnum
from typing import Annotated, Any, Literal

import typer

from controlplane.cli.client import connect, payload
from controlplane.cli.options import AllPages, CursorOpt, JsonOut, PageSize
from controlplane.cli.output import Columns, at, done, key, print_json, render_table, say, show_page, usage
from controlplane.cli.vocabulary import TEAMS, USERS, Env, RegisterKind

app = typer.Typer(help="Access reviews: decide, per credential, keep / narrow / rotate / reassign / disable / "
                       "delete / escalate.", no_args_is_help=True)
schedule_app = typer.Typer(help="Reviews opened on a cadence.", no_args_is_help=True)
app.add_typer(schedule_app, name="schedule")
exception_app = typer.Typer(help="Exceptions: keep a credential despite a failing condition, approved by someone "
                                 "else, until they expire.", no_args_is_help=True)

Subjects = Literal["token", "service_account", "api_credential", "scim_credential"]
Decision = Literal["keep", "narrow", "rotate", "reassign", "disable", "delete", "escalate"]
Cadence = Literal["weekly", "monthly", "quarterly", "yearly"]


class Employment(StrEnum):
    employee = "employee"
    contractor = "contractor"
    vendor = "vendor"
    service = "service"


class OwnerRole(StrEnum):
    business = "business"
    technical = "technical"
    security = "security"
    finance = "finance"


def _moment(value: str, option: str) -> str:
    """A day (midnight UTC) or an ISO timestamp, as the API's timezone-aware timestamp."""
    try:
        if len(value) == 10:
            return datetime.combine(date.fromisoformat(value), time(), tzinfo=UTC).isoformat()
        moment = datetime.fromisoformat(value)
    except ValueError:
        usage(f"{option} {value!r}: expected YYYY-MM-DD or an ISO timestamp")
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()


def _scope(api: Any, kinds: list[str] | None, team: str | None, environment: Any, employment: list[str] | None,
           production_only: bool) -> dict[str, Any]:
    return payload(kinds=kinds or None, team_id=api.id_of(TEAMS, team) if team else None,
                   environment=str(environment) if environment else None, employment_types=employment or None,
                   production_only=production_only or None)


def _progress(row: dict[str, Any]) -> str:
    p = row.get("progress") or {}
    return f"{p.get('decided', 0)}/{p.get('items', 0)}"


REVIEWS: Columns = [("ID", key("id")), ("NAME", key("name")), ("STATUS", key("status")),
                    ("DECIDED", _progress), ("DUE", at("due_at")), ("OPENED BY", key("opened_by")),
                    ("TRIGGER", key("trigger"))]
ITEMS: Columns = [("ITEM", key("id")), ("KIND", key("subject_type")),
                  ("SUBJECT", lambda r: r["snapshot"].get("alias") or r["subject_id"]),
                  ("OWNER", lambda r: (r["snapshot"].get("owner") or {}).get("email")
                   or (r["snapshot"].get("owner") or {}).get("name")),
                  ("REVIEWER", key("reviewer")), ("STATE", key("state")), ("DECISION", key("decision")),
                  ("SUGGESTED", lambda r: ", ".join(r.get("suggested_models") or []) or "-")]
EXCEPTIONS: Columns = [("ID", key("id")), ("KIND", key("subject_type")), ("SUBJECT", key("subject_id")),
                       ("CONDITION", key("condition")), ("STATUS", key("status")), ("EXPIRES", at("expires_at")),
                       ("REQUESTED BY", key("requested_by")), ("APPROVED BY", key("approved_by"))]


@app.command("open")
def review_open(
    name: Annotated[str, typer.Argument()],
    due: Annotated[str, typer.Option(help="Due date, YYYY-MM-DD or an ISO timestamp.")],
    kind: Annotated[list[RegisterKind] | None, typer.Option(
        help="Register kinds: personal, service, admin, scim (repeatable; all by default).")] = None,
    team: Annotated[str | None, typer.Option(help="Team id or name.")] = None,
    environment: Annotated[Env | None, typer.Option()] = None,
    employment: Annotated[list[Employment] | None, typer.Option(
        help="Only credentials owned by people of this kind (repeatable: contractor, vendor, …).")] = None,
    production_only: Annotated[bool, typer.Option("--production-only")] = False,
    as_json: JsonOut = False,
) -> None:
    """Open a review: the register rows in scope become its items, frozen now."""
    api = connect()
    review = api.post("/reviews", {"name": name, "due_at": _moment(due, "--due"),
                                   "scope": _scope(api, [str(k) for k in kind or []], team, environment,
                                                   [str(e) for e in employment or []], production_only)})
    if as_json:
        print_json(review)
        return
    say(f"Opened review {review['name']} ({review['id']}) with {len(review['items'])} item(s), due "
        f"{review['due_at']}.")


@app.command("list")
def review_list(
    status: Annotated[Literal["open", "closed"] | None, typer.Option()] = None,
    limit: PageSize = None, cursor: CursorOpt = None, all_pages: AllPages = False, as_json: JsonOut = False,
) -> None:
    """Reviews, newest first, with how many items are decided."""
    page = connect().listing("/reviews", {"status": status}, limit=limit, cursor=cursor, follow=all_pages)
    show_page(page, REVIEWS, as_json, "reviews")


@app.command("show")
def review_show(review: Annotated[str, typer.Argument(help="Review id.")], as_json: JsonOut = False) -> None:
    """A review's items: what each credential was when the review opened, and what was decided."""
    found = connect().get(f"/reviews/{review}")
    if as_json:
        print_json(found)
        return
    p = found["progress"]
    say(f"{found['name']} ({found['status']}, due {found['due_at']}): {p['decided']} decided, {p['open']} open, "
        f"{p['escalated']} escalated, {p['awaiting_exception']} awaiting an exception, of {p['items']}.")
    render_table(found["items"], ITEMS)


@app.command("decide")
def review_decide(
    review: Annotated[str, typer.Argument(help="Review id.")],
    item: Annotated[str, typer.Argument(help="Item id.")],
    decision: Annotated[Decision, typer.Argument()],
    reason: Annotated[str, typer.Option(help="Why (required, recorded).")],
    model: Annotated[list[str] | None, typer.Option(help="narrow: a model to keep (repeatable; default: the "
                                                         "models used in 30 days).")] = None,
    grace_hours: Annotated[float, typer.Option(min=0, max=720, help="rotate: how long the old secret works.")]
    = 24,
    new_owner: Annotated[str | None, typer.Option(help="reassign: the new owner (user id or email).")] = None,
    owner_role: Annotated[list[OwnerRole] | None, typer.Option(
        help="reassign of a service account: which owner(s) to replace.")] = None,
    exception_expires: Annotated[str | None, typer.Option(
        help="keep despite flags: when the exception ends (YYYY-MM-DD).")] = None,
    as_json: JsonOut = False,
) -> None:
    """Decide one item; the decision is carried out now (rotate prints the new secret once)."""
    api = connect()
    body = payload(decision=str(decision), reason=reason, models=model or None,
                   grace_hours=grace_hours if decision == "rotate" else None,
                   new_owner_id=api.id_of(USERS, new_owner) if new_owner else None,
                   owner_roles=[str(r) for r in owner_role] if owner_role else None,
                   exception_expires_at=_moment(exception_expires, "--exception-expires") if exception_expires
                   else None)
    decided = api.post(f"/reviews/{review}/items/{item}/decide", body)
    if as_json:
        print_json(decided)
        return
    result = decided["item"]
    say(f"Item {result['id']}: {result['decision']} ({result['state']}).")
    if result.get("exception_id"):
        say(f"Exception {result['exception_id']} filed: it counts once someone else approves it.")
    for issued in decided.get("secrets") or []:
        say(f"\nNew secret for token {issued['token_id']}, shown this once:\n")
        say(issued["token"] + "\n")


@app.command("close")
def review_close(review: Annotated[str, typer.Argument(help="Review id.")], as_json: JsonOut = False) -> None:
    """Close a review: its report is stored, and its sha256 recorded in the audit chain."""
    closed = connect().post(f"/reviews/{review}/close")
    counts = closed["report"]["counts"]
    done(as_json, closed, f"Closed review {review}: {counts['decided']} of {counts['items']} decided, "
                          f"{len(closed['report']['remaining_open'])} left open. Report sha256 {closed['sha256']}.")


@app.command("report")
def review_report(
    review: Annotated[str, typer.Argument(help="Review id.")],
    format: Annotated[Literal["json", "csv"], typer.Option("--format")] = "json",
) -> None:
    """A closed review's report: the JSON document with its sha256, or its items as CSV."""
    api = connect()
    if format == "csv":
        api.export(f"/reviews/{review}/report", {"format": "csv"}, sys.stdout.write)
        return
    print_json(api.get(f"/reviews/{review}/report"))


@schedule_app.command("add")
def schedule_add(
    name: Annotated[str, typer.Argument()],
    cadence: Annotated[Cadence, typer.Option()],
    due_days: Annotated[int, typer.Option(min=1, max=365, help="Each review is due this many days after it opens.")]
    = 14,
    first_run: Annotated[str | None, typer.Option(help="When the first review opens (default: now).")] = None,
    kind: Annotated[list[RegisterKind] | None, typer.Option(help="Register kinds (repeatable).")] = None,
    team: Annotated[str | None, typer.Option(help="Team id or name.")] = None,
    environment: Annotated[Env | None, typer.Option()] = None,
    employment: Annotated[list[Employment] | None, typer.Option()] = None,
    production_only: Annotated[bool, typer.Option("--production-only")] = False,
    as_json: JsonOut = False,
) -> None:
    """Open a review of a scope every week, month, quarter or year."""
    api = connect()
    made = api.post("/review-schedules", payload(
        name=name, cadence=str(cadence), due_days=due_days,
        first_run_at=_moment(first_run, "--first-run") if first_run else None,
        scope=_scope(api, [str(k) for k in kind or []], team, environment, [str(e) for e in employment or []],
                     production_only)))
    done(as_json, made, f"Scheduled {made['name']} ({made['cadence']}), first review {made['next_run_at']}.")


@schedule_app.command("update")
def schedule_update(
    schedule: Annotated[str, typer.Argument(help="Schedule id.")],
    enabled: Annotated[bool | None, typer.Option("--enabled/--paused", help="Resume or pause it.")] = None,
    cadence: Annotated[Cadence | None, typer.Option()] = None,
    due_days: Annotated[int | None, typer.Option(min=1, max=365)] = None,
    next_run: Annotated[str | None, typer.Option(help="When its next review opens.")] = None,
    as_json: JsonOut = False,
) -> None:
    """Pause or resume a schedule, or change its cadence, due days or next run."""
    body = payload(enabled=enabled, cadence=str(cadence) if cadence else None, due_days=due_days,
                   next_run_at=_moment(next_run, "--next-run") if next_run else None)
    if not body:
        usage("nothing to change: give --enabled/--paused, --cadence, --due-days or --next-run")
    changed = connect().patch(f"/review-schedules/{schedule}", body)
    done(as_json, changed, f"Schedule {changed['name']}: {'enabled' if changed['enabled'] else 'paused'}, "
                           f"{changed['cadence']}, next review {changed['next_run_at']}.")


@schedule_app.command("list")
def schedule_list(limit: PageSize = None, cursor: CursorOpt = None, all_pages: AllPages = False,
                  as_json: JsonOut = False) -> None:
    """Review schedules and when each opens its next review."""
    page = connect().listing("/review-schedules", {}, limit=limit, cursor=cursor, follow=all_pages)
    show_page(page, [("ID", key("id")), ("NAME", key("name")), ("CADENCE", key("cadence")),
                     ("DUE DAYS", key("due_days")), ("NEXT RUN", at("next_run_at")), ("ENABLED", key("enabled"))],
              as_json, "schedules")


@exception_app.command("request")
def exception_request(
    subject_type: Annotated[Subjects, typer.Argument()],
    subject_id: Annotated[str, typer.Argument()],
    condition: Annotated[str, typer.Option(help="The failing condition: owners_not_distinct, rotation_overdue, …")],
    reason: Annotated[str, typer.Option()],
    expires: Annotated[str, typer.Option(help="When it ends, YYYY-MM-DD (required: every exception expires).")],
    as_json: JsonOut = False,
) -> None:
    """Ask to keep a credential despite a failing condition; someone else approves it."""
    made = connect().post("/exceptions", {"subject_type": str(subject_type), "subject_id": subject_id,
                                          "condition": condition, "reason": reason,
                                          "expires_at": _moment(expires, "--expires")})
    done(as_json, made, f"Requested exception {made['id']} ({made['condition']}) until {made['expires_at']}; "
                        "it counts once someone else approves it.")


def _decide(exception: str, verb: str, note: str | None, as_json: bool) -> None:
    decided = connect().post(f"/exceptions/{exception}/{verb}", payload(note=note))
    done(as_json, decided, f"Exception {decided['id']} is {decided['status']} (by {decided['approved_by']}).")


@exception_app.command("approve")
def exception_approve(exception: Annotated[str, typer.Argument(help="Exception id.")],
                      note: Annotated[str | None, typer.Option()] = None, as_json: JsonOut = False) -> None:
    """Approve a pending exception (not your own)."""
    _decide(exception, "approve", note, as_json)


@exception_app.command("reject")
def exception_reject(exception: Annotated[str, typer.Argument(help="Exception id.")],
                     note: Annotated[str | None, typer.Option()] = None, as_json: JsonOut = False) -> None:
    """Reject a pending exception (not your own); its review item is reopened."""
    _decide(exception, "reject", note, as_json)


@exception_app.command("withdraw")
def exception_withdraw(exception: Annotated[str, typer.Argument(help="Exception id.")],
                       as_json: JsonOut = False) -> None:
    """End a pending or approved exception now; its review item is reopened."""
    withdrawn = connect().post(f"/exceptions/{exception}/withdraw")
    done(as_json, withdrawn, f"Exception {withdrawn['id']} is {withdrawn['status']}.")


@exception_app.command("list")
def exception_list(
    status: Annotated[Literal["pending", "approved", "rejected", "expired", "withdrawn"] | None,
                      typer.Option()] = None,
    subject: Annotated[str | None, typer.Option(help="A credential's id.")] = None,
    limit: PageSize = None, cursor: CursorOpt = None, all_pages: AllPages = False, as_json: JsonOut = False,
) -> None:
    """Exceptions, newest first."""
    page = connect().listing("/exceptions", {"status": status, "subject_id": subject}, limit=limit, cursor=cursor,
                             follow=all_pages)
    show_page(page, EXCEPTIONS, as_json, "exceptions")
