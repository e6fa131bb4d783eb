"""``keyward prices``: what each model costs now (per million tokens: the bundled genai-prices table, or
an admin's override), and overrides: ``keyward prices override openai llama-3-local --input 0 --output 0``
makes a self-hosted model free from now on."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer

from controlplane.cli.client import connect, payload
from controlplane.cli.options import AllPages, CursorOpt, JsonOut, PageSize
from controlplane.cli.output import Columns, at, key, print_json, render_table, say, show_page, show_record

app = typer.Typer(help="Prices: what each model costs, and admins' overrides.", no_args_is_help=True)
#: A configured upstream's name (openai, anthropic, azure-east, …): the API refuses others.
Provider = str

COLUMNS: Columns = [("PROVIDER", key("provider")), ("MODEL", key("model")), ("SOURCE", key("source")),
                    ("INPUT /MTOK", key("input_per_mtok")), ("CACHED /MTOK", key("cached_input_per_mtok")),
                    ("OUTPUT /MTOK", key("output_per_mtok")), ("VERSION", key("version")),
                    ("SINCE", lambda r: at("effective_from")(r) if r.get("effective_from") else "-"),
                    ("LISTED FOR", key("named_by"))]
HISTORY: Columns = [("ID", key("id")), ("PROVIDER", key("provider")), ("MODEL", key("model")),
                    ("INPUT /MTOK", key("input_per_mtok")), ("CACHED /MTOK", key("cached_input_per_mtok")),
                    ("OUTPUT /MTOK", key("output_per_mtok")), ("FROM", at("effective_from")),
                    ("BY", key("created_by")), ("NOTE", key("note"))]


@app.command("list")
def prices_list(
    provider: Annotated[Provider | None, typer.Option()] = None,
    model: Annotated[str | None, typer.Option(help="Exact model name; with --provider, priced even if no "
                                                   "catalog, request or override names it.")] = None,
    history: Annotated[bool, typer.Option("--history", help="List every override ever made instead.")] = False,
    limit: PageSize = None, cursor: CursorOpt = None, all_pages: AllPages = False, as_json: JsonOut = False,
) -> None:
    """The price in effect now of every model a catalog names, requests used (30 days) or an override
    prices; with --history, the overrides themselves."""
    api = connect()
    if history:
        page = api.listing("/prices/overrides", {"provider": provider, "model": model}, limit=limit, cursor=cursor,
                           follow=all_pages)
        show_page(page, HISTORY, as_json, "price overrides")
        return
    listed = api.get("/prices", {"provider": provider, "model": model})
    if as_json:
        print_json(listed)
    elif listed:
        render_table(listed, COLUMNS)
    else:
        say("No models to price.")


@app.command("override")
def prices_override(
    provider: Annotated[Provider, typer.Argument()],
    model: Annotated[str, typer.Argument(help="Exact model name, as the provider reports it.")],
    input_price: Annotated[str, typer.Option("--input", help="USD per million input tokens.")],
    output_price: Annotated[str, typer.Option("--output", help="USD per million output tokens.")],
    cached_price: Annotated[str | None, typer.Option("--cached-input", help="USD per million cached input "
                                                                           "tokens (default: the input price).")]
    = None,
    effective_from: Annotated[datetime | None, typer.Option("--from", help="When it takes effect (default now; "
                                                                           "UTC unless an offset is given).")]
    = None,
    note: Annotated[str | None, typer.Option(help="Why, e.g. the contract it comes from.")] = None,
    as_json: JsonOut = False,
) -> None:
    """Price a model from now (or --from) on, in place of the bundled table. Overrides are never edited:
    a later one replaces it."""
    if effective_from is not None and effective_from.tzinfo is None:
        effective_from = effective_from.replace(tzinfo=UTC)
    body = payload(provider=provider, model=model, input_per_mtok=input_price, output_per_mtok=output_price,
                   cached_input_per_mtok=cached_price, note=note,
                   effective_from=effective_from.isoformat() if effective_from else None)
    created = connect().post("/prices", body)
    show_record(created, as_json, note=f"{provider} {model} is priced by {created['version']} from "
                                       f"{at('effective_from')(created)}.")
