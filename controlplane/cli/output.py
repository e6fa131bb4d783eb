"""What every command prints, and how it exits.

* Tables by default (Rich): ids and hints never wrap, so they stay copyable; piped output is as wide as
  the table, never cut at 80 columns.
* ``--json``: stdout carries the API's JSON document and nothing else.
* A new secret is printed once, alone on its own line (``--quiet``: alone on stdout).
* A failure is one line on stderr, ``error: …``, never a traceback, and one of the :class:`Exit` codes.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from enum import IntEnum
from typing import Any, NoReturn

import typer
from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text


class Exit(IntEnum):
    """The CLI's exit codes: the same for every command."""

    DONE = 0
    #: The API refused (4xx/5xx), or a name matched no or several records.
    REFUSED = 1
    USAGE = 2
    #: No usable connection: configuration, credential, network, timeout.
    CONNECTION = 3


out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

Row = dict[str, Any]
Columns = Sequence[tuple[str, Callable[[Any], object]]]
#: (field name, id) → a readable name for the id, or None (see :meth:`controlplane.cli.client.Api.labels`).
Labels = Callable[[str, str], str | None]


def fail(message: str, code: Exit = Exit.REFUSED) -> NoReturn:
    """One line on stderr, then exit with ``code``."""
    err.print(f"error: {' '.join(message.split())}", markup=False, soft_wrap=True)
    raise typer.Exit(code)


def usage(message: str) -> NoReturn:
    fail(message, Exit.USAGE)


def say(message: str) -> None:
    """One plain line for a human on stdout (no markup: names may hold brackets)."""
    out.print(message, markup=False, soft_wrap=True)


def note(message: str) -> None:
    """A remark on stderr, which leaves stdout to the result."""
    err.print(message, markup=False, soft_wrap=True)


def confirm(question: str, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        usage(f"{question} Add --yes to confirm.")
    if not typer.confirm(question, err=True):
        raise typer.Exit(Exit.REFUSED)


# -- cells ----------------------------------------------------------------------------------------


def when(value: object) -> str:
    """A timestamp as ``YYYY-MM-DD HH:MMZ`` (UTC)."""
    if not isinstance(value, str):
        return cell(value)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%MZ")


def cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(cell(v) for v in value) or "-"
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def key(name: str) -> Callable[[Row], object]:
    return lambda row: row.get(name)


def at(name: str) -> Callable[[Row], object]:
    return lambda row: when(row.get(name))


def state(row: Row) -> str:
    """A token's or credential's state: revoked, expired or active."""
    if row.get("revoked_at"):
        return "revoked"
    expires = row.get("expires_at")
    if expires and datetime.fromisoformat(expires) <= datetime.now(UTC):
        return "expired"
    return "active"


# -- documents ------------------------------------------------------------------------------------


def render_table(rows: Sequence[Any], columns: Columns, *, header: bool = True) -> None:
    """The one renderer: a Rich table whose ids and hints never wrap. Without ``header``: a record,
    label then value."""
    table = Table(box=box.SIMPLE_HEAD if header else None, show_header=header, show_edge=False, pad_edge=False)
    for index, (title, _) in enumerate(columns):
        label = not header and index == 0
        table.add_column(title, no_wrap=label or title in ("ID", "HINT"), overflow="fold",
                         style="bold" if label else None)
    for row in rows:
        table.add_row(*(Text(cell(getter(row))) for _, getter in columns))
    if out.is_terminal:
        out.print(table)
    else:
        width = Measurement.get(out, out.options.update(max_width=100_000), table).maximum
        Console(width=width, highlight=False).print(table)


def print_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2) + "\n")


def show_record(record: Row, as_json: bool, *, labels: Labels | None = None, note: str | None = None) -> None:
    """One record: the JSON document, or a two-column table of its fields (times in UTC, ids with the
    name ``labels`` gives them), after an optional one-line note."""
    if as_json:
        print_json(record)
        return
    if note:
        say(note)
    pairs = []
    for name, value in record.items():
        shown = when(value) if name.endswith("_at") else cell(value)
        label = labels(name, value) if labels and isinstance(value, str) and value else None
        if label is not None:
            shown = f"{value} ({label})"
        pairs.append((name.replace("_", " "), shown))
    render_table(pairs, [("", lambda p: p[0]), ("", lambda p: p[1])], header=False)


def show_page(page: dict[str, Any], columns: Columns, as_json: bool, noun: str) -> None:
    if as_json:
        print_json(page)
        return
    if page["items"]:
        render_table(page["items"], columns)
    else:
        say(f"No {noun}.")
    if page.get("next_cursor"):
        note(f"More {noun}: add --all, or --cursor {page['next_cursor']}")


def done(as_json: bool, document: Any, message: str) -> None:
    """The outcome of an action: the JSON document, or one line for a human. A revocation that not
    every gateway replica has confirmed yet says so on stderr, in both modes."""
    if as_json:
        print_json(document)
    else:
        say(message)
    revocation = document.get("revocation") if isinstance(document, dict) else None
    if isinstance(revocation, dict) and revocation.get("applied") is False:
        note("warning: not yet confirmed by gateway replica(s) " + ", ".join(revocation.get("unconfirmed") or [])
             + f" after {revocation.get('waited_ms')} ms; they may accept the revoked token(s) until they apply it")


def show_secret(issued: Row, as_json: bool, quiet: bool, summary: Callable[[], str], *,
                document: Any = None, use: str = "") -> None:
    """A new secret, once: alone on its own line after a summary; alone on stdout with --quiet;
    inside the API's JSON document with --json."""
    if as_json:
        print_json(document if document is not None else issued)
    elif quiet:
        sys.stdout.write(issued["token"] + "\n")
    else:
        say(summary())
        say(f"\nSecret, shown this once (Keyward keeps only a hash; store it now{use}):\n")
        say(issued["token"] + "\n")
