"""``keyward access``: what the gateway would let each token do now (``/api/v1/access``).

``keyward access reach --provider anthropic`` answers "who can reach Anthropic right now" (people and
service accounts, the token that grants it, the models); ``keyward access user ada@example.com`` what
one person can reach, token by token; ``keyward access refused`` the tokens that look active but that
the gateway refuses, and why."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from controlplane.cli.client import connect
from controlplane.cli.options import AllPages, CursorOpt, JsonOut, PageSize
from controlplane.cli.output import Columns, key, print_json, render_table, say
from controlplane.cli.vocabulary import SERVICE_ACCOUNTS, USERS, Env, Kind

app = typer.Typer(help="Effective access: what the gateway would let each token do now.", no_args_is_help=True)


def _models(models: dict[str, list[str]]) -> str:
    parts = []
    for provider, names in models.items():
        if names:
            shown = ", ".join(names[:4]) + (f" (+{len(names) - 4})" if len(names) > 4 else "")
            parts.append(f"{provider}: {shown}")
    return "; ".join(parts) or "-"


GRANTS: Columns = [("OWNER", key("owner")), ("TEAM", key("team")), ("ENV", key("environment")),
                   ("TOKEN", key("token_name")), ("TOKEN ID", key("token_id")),
                   ("MODELS", lambda r: _models(r["models"]))]
TOKENS: Columns = [("TOKEN", key("token_name")), ("TOKEN ID", key("token_id")), ("TEAM", key("team")),
                   ("ENV", key("environment")), ("STORED", key("stored")), ("EFFECTIVE", key("effective")),
                   ("MODELS", lambda r: _models(r["models"]))]


@app.command("reach")
def access_reach(
    provider: Annotated[str | None, typer.Option(help="openai or anthropic (all when left out).")] = None,
    model: Annotated[str | None, typer.Option(help="A model name or a pattern, e.g. gpt-4o*.")] = None,
    environment: Annotated[Env | None, typer.Option()] = None,
    limit: PageSize = None, cursor: CursorOpt = None, all_pages: AllPages = False, as_json: JsonOut = False,
) -> None:
    """Who can reach a provider (a model, an environment) now, and with which token."""
    api = connect()
    filters = {"provider": provider, "model": model, "environment": str(environment) if environment else None}
    page = api.listing("/access", filters, limit=limit, cursor=cursor, follow=all_pages)
    if as_json:
        print_json(page)
        return
    summary: dict[str, Any] = page.get("summary") or {}
    render_table(page["items"], GRANTS)
    reach = summary.get("by_provider", {})
    say(f"{len(page['items'])} token(s) shown. Live tokens: {summary.get('tokens_stored_live', 0)}, usable "
        f"{summary.get('tokens_usable', 0)}, refused {sum(summary.get('tokens_refused', {}).values())}; "
        + ", ".join(f"{p}: {r['identities']} identities with {r['tokens']} token(s)" for p, r in reach.items()))


@app.command("user")
def access_user(user: Annotated[str, typer.Argument(help="Id or email.")], as_json: JsonOut = False) -> None:
    """What one person can reach now, token by token."""
    _identity(USERS, "users", user, as_json)


@app.command("service-account")
def access_service_account(account: Annotated[str, typer.Argument(help="Id or name.")],
                           as_json: JsonOut = False) -> None:
    """What one service account can reach now, token by token."""
    _identity(SERVICE_ACCOUNTS, "service-accounts", account, as_json)


def _identity(kind: Kind, path: str, ref: str, as_json: bool) -> None:
    api = connect()
    found = api.get(f"/access/{path}/{api.id_of(kind, ref)}")
    if as_json:
        print_json(found)
        return
    render_table(found["tokens"], TOKENS)


@app.command("refused")
def access_refused(limit: PageSize = None, cursor: CursorOpt = None, all_pages: AllPages = False,
                   as_json: JsonOut = False) -> None:
    """Tokens whose row says active that the gateway refuses, with its reason."""
    found = connect().listing("/access/refused", {}, limit=limit, cursor=cursor, follow=all_pages)
    if as_json:
        print_json(found)
        return
    render_table([{**row["token"], "owner": row["owner"]} for row in found["items"]],
                 [("OWNER", key("owner")), *TOKENS[:4], ("EFFECTIVE", key("effective")), ("WHY", key("reason"))])
