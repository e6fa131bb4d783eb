"""Rendering of the admin console: one Jinja2 environment, its filters, and the headers every page carries.

Pages are plain HTML forms and links, with no script at all, so the Content-Security-Policy can forbid
every script: sorting and filtering are links and GET forms, confirmations are a page of their own,
charts and utilisation bars are server-side SVG and ``<meter>`` elements. The one stylesheet is served
by Keyward itself (``/console/static/console.css``), so the console works air-gapped.

What a page shows is fetched by its route (:mod:`controlplane.api.routes.console`) through the services
and passed in; templates only lay it out. Autoescaping is on for every template.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"

CSP = ("default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; "
       "base-uri 'none'")
HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": CSP,
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def ago(value: datetime | None, *, now: datetime | None = None) -> str:
    """'never', 'just now', '5 minutes ago', '2 hours ago', '47 days ago' (or 'in 3 days' ahead)."""
    if value is None:
        return "never"
    seconds = int(((now or datetime.now(UTC)) - value).total_seconds())
    ahead = seconds < 0
    seconds = abs(seconds)
    if seconds < 60:
        return "just now"
    for size, unit in ((86400, "day"), (3600, "hour"), (60, "minute")):
        if seconds >= size:
            count = seconds // size
            text = f"{count} {unit}{'' if count == 1 else 's'}"
            return f"in {text}" if ahead else f"{text} ago"
    raise AssertionError("unreachable")


def when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if value else "—"


def usd(value: Decimal | float | int | None) -> str:
    """Dollars and cents; below a dollar, four places; below a hundredth of a cent, two significant digits
    (a single small request costs that little, and "$0.0000" would say it was free)."""
    if value is None:
        return "—"
    amount = Decimal(value)
    if abs(amount) >= 1 or amount == 0:
        return f"${amount:,.2f}"
    places = max(4, 1 - amount.adjusted())
    return f"${amount:,.{places}f}"


def query(params: Mapping[str, Any], **changes: Any) -> str:
    """The query string of ``params`` with ``changes`` applied (None removes a key); empty values dropped."""
    merged = {**params, **changes}
    kept = {key: value for key, value in merged.items() if value not in (None, "")}
    return "?" + urlencode(kept, doseq=True) if kept else "?"


def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(default=True),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(ago=ago, when=when, usd=usd)
    env.globals.update(query=query)
    return env


_ENV = _environment()


def render(template: str, context: Mapping[str, Any], *, status_code: int = 200) -> HTMLResponse:
    return HTMLResponse(_ENV.get_template(template).render(**context), status_code=status_code, headers=HEADERS)
