"""``keyward profiles``: access profiles, what a team's tokens may do: the model catalog (entries
``PROVIDER:PATTERN[@env1,env2]``), the environments, token lifetimes, limits. Named by id or name."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal

import typer

from controlplane.cli.client import Api, connect, payload
from controlplane.cli.options import AllPages, CursorOpt, Description, JsonOut, PageSize, ProfileRef
from controlplane.cli.output import Columns, Row, key, show_page, show_record, usage
from controlplane.cli.vocabulary import PROFILES, Env, model_spec, parse_model

app = typer.Typer(help="Access profiles: model catalog, environments, token lifetimes.", no_args_is_help=True)

COLUMNS: Columns = [
    ("ID", key("id")), ("NAME", key("name")), ("MODELS", lambda r: [model_spec(e) for e in r["catalog"]]),
    ("ENVIRONMENTS", key("environments")), ("DEFAULT DAYS", key("default_token_days")),
    ("MAX DAYS", key("max_token_days")), ("DORMANT DAYS", key("dormant_disable_days")),
]
CATALOG_HELP = "Catalog entry PROVIDER:PATTERN\\[@env1,env2], repeatable (provider: openai, anthropic or *)."
ENVS_HELP = "Allowed token environment, repeatable."
ModelsOpt = Annotated[list[str] | None, typer.Option("--model", help=CATALOG_HELP)]
EnvsOpt = Annotated[list[Env] | None, typer.Option("--environment", help=ENVS_HELP)]
DefaultDays = Annotated[int | None, typer.Option(min=1, max=3650, help="Default token lifetime (API default 30).")]
MaxDays = Annotated[int | None, typer.Option(min=1, max=3650, help="Longest token lifetime (API default 90).")]
DormantDays = Annotated[int | None, typer.Option(min=1, max=3650, help="Revoke tokens unused this many days.")]
RateLimit = Annotated[int | None, typer.Option(min=1, help="Requests per minute.")]
Budget = Annotated[str | None, typer.Option(help="Monthly budget in USD, e.g. 250.00.")]


def _budget(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        Decimal(value)
    except InvalidOperation:
        usage(f"--monthly-budget-usd {value!r} is not a number")
    return value


def _fields(models: list[str] | None, environments: list[Env] | None, **fields: Any) -> dict[str, Any]:
    return payload(catalog=[parse_model(m) for m in models] if models else None,
                   environments=[str(e) for e in environments] if environments else None, **fields)


def _show(api: Api, profile: Row, as_json: bool, note: str | None = None) -> None:
    readable = profile if as_json else {**profile, "catalog": [model_spec(e) for e in profile["catalog"]]}
    show_record(readable, as_json, labels=api.labels, note=note)


@app.command("list")
def profiles_list(
    sort: Annotated[Literal["created_at", "-created_at", "name", "-name"], typer.Option()] = "name",
    limit: PageSize = None, cursor: CursorOpt = None, all_pages: AllPages = False, as_json: JsonOut = False,
) -> None:
    """List access profiles."""
    page = connect().listing("/profiles", {"sort": sort}, limit=limit, cursor=cursor, follow=all_pages)
    show_page(page, COLUMNS, as_json, "profiles")


@app.command("show")
def profiles_show(profile: ProfileRef, as_json: JsonOut = False) -> None:
    """Show one access profile."""
    api = connect()
    _show(api, api.find(PROFILES, profile), as_json)


@app.command("create")
def profiles_create(
    name: Annotated[str, typer.Argument()],
    models: Annotated[list[str], typer.Option("--model", help=CATALOG_HELP)],
    environments: Annotated[list[Env], typer.Option("--environment", help=ENVS_HELP)],
    default_token_days: DefaultDays = None, max_token_days: MaxDays = None, dormant_days: DormantDays = None,
    rate_limit_rpm: RateLimit = None, monthly_budget_usd: Budget = None, description: Description = None,
    as_json: JsonOut = False,
) -> None:
    """Create an access profile, e.g. --model openai:gpt-4o* --model anthropic:claude-*@prod --environment dev
    --environment prod."""
    api = connect()
    body = _fields(models, environments, name=name, description=description,
                   default_token_days=default_token_days, max_token_days=max_token_days,
                   dormant_disable_days=dormant_days, rate_limit_rpm=rate_limit_rpm,
                   monthly_budget_usd=_budget(monthly_budget_usd))
    _show(api, api.post("/profiles", body), as_json, note=f"Created profile {name}.")


_CLEARED = {"description": "description", "dormant-days": "dormant_disable_days",
            "rate-limit-rpm": "rate_limit_rpm", "monthly-budget-usd": "monthly_budget_usd"}


@app.command("update")
def profiles_update(
    profile: ProfileRef,
    name: Annotated[str | None, typer.Option("--name", help="New name.")] = None,
    models: ModelsOpt = None, environments: EnvsOpt = None,
    default_token_days: DefaultDays = None, max_token_days: MaxDays = None, dormant_days: DormantDays = None,
    rate_limit_rpm: RateLimit = None, monthly_budget_usd: Budget = None, description: Description = None,
    clear: Annotated[list[str] | None, typer.Option(
        help="Unset one of: description, dormant-days, rate-limit-rpm, monthly-budget-usd (repeatable).")] = None,
    as_json: JsonOut = False,
) -> None:
    """Change an access profile. --model and --environment replace the whole list; narrowing applies
    to every live token of every team using the profile at once."""
    unknown = [c for c in clear or [] if c not in _CLEARED]
    if unknown:
        usage(f"--clear {unknown[0]!r}: expected one of {', '.join(_CLEARED)}")
    body = _fields(models, environments, name=name, description=description,
                   default_token_days=default_token_days, max_token_days=max_token_days,
                   dormant_disable_days=dormant_days, rate_limit_rpm=rate_limit_rpm,
                   monthly_budget_usd=_budget(monthly_budget_usd))
    body |= {_CLEARED[c]: None for c in clear or []}
    if not body:
        usage("nothing to change: give at least one option")
    api = connect()
    updated = api.patch(f"/profiles/{api.id_of(PROFILES, profile)}", body)
    _show(api, updated, as_json, note=f"Updated profile {updated['name']}.")
