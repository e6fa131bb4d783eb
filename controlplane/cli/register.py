"""``keyward register``: the credential register (``GET /api/v1/register``): every credential with its
owner, purpose, environment, what it can reach now, use, rotation, offboarding triggers and flags. A
table, the API's JSON (``--json``), or every matching row as CSV (``--csv``) or JSON lines
(``--jsonl``) on stdout. ``--orphaned``, ``--overdue`` and ``--broader`` narrow it to what needs a
decision."""

from __future__ import annotations

import sys
from enum import StrEnum
from typing import Annotated, Any

import typer

from controlplane.cli.client import connect
from controlplane.cli.options import AllPages, CursorOpt, JsonOut, PageSize
from controlplane.cli.output import Columns, Row, note, print_json, render_table, say, usage, when
from controlplane.cli.vocabulary import TEAMS, USERS, Env, RegisterKind


class SecretLocation(StrEnum):
    """Where a secret lives (the names of places, not secrets)."""

    vault = "vault"
    cloud_secret_manager = "cloud_secret_manager"  # noqa: S105
    ci_secret_store = "ci_secret_store"  # noqa: S105
    kubernetes_secret = "kubernetes_secret"  # noqa: S105
    password_manager = "password_manager"  # noqa: S105
    laptop = "laptop"
    other = "other"


PurposeOpt = Annotated[str | None, typer.Option(help="What it is for (register field).")]
WorkloadOpt = Annotated[str | None, typer.Option(help="The service or repository that uses it.")]
LocationOpt = Annotated[SecretLocation | None, typer.Option(help="Where its secret is declared to live.")]
ClearOpt = Annotated[list[str] | None, typer.Option("--clear", help="Unset a register field (repeatable).")]


def register_fields(clear: list[str] | None, clearable: dict[str, str], **fields: Any) -> dict[str, Any]:
    """A PATCH body of register fields: those given, and null for each ``--clear`` (option name ->
    field name in ``clearable``); a usage error for an unknown one or when nothing is given."""
    body = {name: str(value) if isinstance(value, StrEnum) else value for name, value in fields.items()
            if value is not None}
    for option in clear or []:
        if option not in clearable:
            usage(f"--clear {option!r}: expected one of {', '.join(clearable)}")
        body[clearable[option]] = None
    if not body:
        usage("nothing to change: give at least one option")
    return body


def _owner(row: Row) -> str:
    owner = row.get("owner") or {}
    who = owner.get("email") or owner.get("name") or "-"
    return who if owner.get("status") in (None, "active") else f"{who} ({owner['status']})"


def _flags(row: Row) -> str:
    flags = row["flags"]
    shown = [*flags["overdue"]]
    if flags["orphaned"]:
        shown.insert(0, "orphaned")
    if flags["broader_than_used"]:
        shown.append("broader_than_used")
    if flags.get("reassign_by"):
        shown.append(f"reassign by {when(flags['reassign_by'])}")
    return ", ".join(shown) or "-"


def _environment(row: Row) -> str:
    value = row.get("environment")
    return ", ".join(value) if isinstance(value, list) else value or "-"


COLUMNS: Columns = [
    ("KIND", lambda r: r["kind"] if r["subject_type"] != "service_account" else "service account"),
    ("ALIAS", lambda r: r["alias"]), ("ID", lambda r: r["id"]), ("OWNER", _owner),
    ("TEAM", lambda r: (r.get("team") or {}).get("name") or "-"), ("ENV", _environment),
    ("PURPOSE", lambda r: r.get("purpose") or "-"),
    ("EFFECTIVE", lambda r: r["effective"]["effective"]),
    ("LAST USED", lambda r: when(r["last_used_at"]) if r.get("last_used_at") else "never"),
    ("REQ 30D", lambda r: (r.get("usage") or {}).get("requests_30d", "-")),
    ("ROTATE BY", lambda r: when((r.get("rotation") or {}).get("due_at"))),
    ("FLAGS", _flags),
]


def register(
    team: Annotated[str | None, typer.Option(help="Team id or name.")] = None,
    environment: Annotated[Env | None, typer.Option()] = None,
    owner: Annotated[str | None, typer.Option(help="User id or email: the rows they answer for.")] = None,
    kind: Annotated[list[RegisterKind] | None, typer.Option(help="personal, service, admin or scim; repeatable.")]
    = None,
    orphaned: Annotated[bool, typer.Option("--orphaned", help="Only rows whose owner departed or is unknown.")]
    = False,
    overdue: Annotated[bool, typer.Option("--overdue", help="Only rows overdue: rotation, never used, dormant.")]
    = False,
    broader: Annotated[bool, typer.Option("--broader", help="Only rows that reach models they did not call in "
                                                            "30 days.")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Every matching row as CSV on stdout.")] = False,
    as_jsonl: Annotated[bool, typer.Option("--jsonl", help="Every matching row as JSON lines on stdout.")] = False,
    limit: PageSize = None, cursor: CursorOpt = None, all_pages: AllPages = False, as_json: JsonOut = False,
) -> None:
    """The credential register: every token, service account, admin and SCIM credential, with owners,
    purpose, environment, effective access, use, rotation, offboarding triggers and flags."""
    if sum((as_csv, as_jsonl, as_json)) > 1:
        usage("give at most one of --json, --csv and --jsonl")
    api = connect()
    params: dict[str, Any] = {
        "team_id": api.id_of(TEAMS, team) if team else None,
        "environment": str(environment) if environment else None,
        "owner_id": api.id_of(USERS, owner) if owner else None,
        "kind": [str(k) for k in kind] if kind else None,
        "orphaned": "true" if orphaned else None, "overdue": "true" if overdue else None,
        "broader": "true" if broader else None,
    }
    if as_csv or as_jsonl:
        api.export("/register", params | {"format": "csv" if as_csv else "jsonl"}, sys.stdout.write)
        return
    page = api.get("/register", params | {"limit": limit or (500 if all_pages else 100), "cursor": cursor})
    while all_pages and page.get("next_cursor"):
        following = api.get("/register", params | {"limit": limit or 500, "cursor": page["next_cursor"]})
        page = following | {"items": page["items"] + following["items"]}
    if as_json:
        print_json(page)
        return
    if page["items"]:
        render_table(page["items"], COLUMNS)
    else:
        say("No credentials match.")
    say(f"{len(page['items'])} of {page['total']} row(s).")
    if page.get("next_cursor"):
        note(f"More rows: add --all, or --cursor {page['next_cursor']}")
