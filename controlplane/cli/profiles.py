"""``keyward profiles``: access profiles, what a team's tokens may do: the model catalog (entries
``PROVIDER:PATTERN[@env1,env2][=UPSTREAM]``), the endpoint families (``--endpoints chat,embeddings``), the
MCP tool catalog (entries ``SERVER:PATTERN``), the environments, token lifetimes, and the default budgets
(``SCOPE=AMOUNT[/PERIOD][:POSTURE]``) and rate limits (``SCOPE=Nrpm[,Ntpm]``) of every scope under a
team with the profile. Named by id or name."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import typer

from controlplane.cli.client import Api, connect, payload
from controlplane.cli.options import AllPages, CursorOpt, Description, JsonOut, PageSize, ProfileRef
from controlplane.cli.output import Columns, Row, key, show_page, show_record, usage
from controlplane.cli.vocabulary import (
    FAMILIES,
    MODEL_SYNTAX,
    PROFILES,
    PROVIDERS,
    Env,
    budget_spec,
    model_spec,
    parse_budget,
    parse_endpoints,
    parse_model,
    parse_rate_limit,
    parse_tool,
    rate_limit_spec,
    tool_spec,
)

app = typer.Typer(help="Access profiles: model catalog, environments, token lifetimes.", no_args_is_help=True)

COLUMNS: Columns = [
    ("ID", key("id")), ("NAME", key("name")), ("MODELS", lambda r: [model_spec(e) for e in r["catalog"]]),
    ("ENVIRONMENTS", key("environments")), ("ENDPOINTS", key("endpoints")),
    ("TOOLS", lambda r: [tool_spec(e) for e in r.get("tools", [])]), ("DEFAULT DAYS", key("default_token_days")),
    ("MAX DAYS", key("max_token_days")), ("DORMANT DAYS", key("dormant_disable_days")),
    ("BUDGETS", lambda r: [budget_spec(s, b) for s, b in r["budget_defaults"].items()]),
    ("RATE LIMITS", lambda r: [rate_limit_spec(s, limit) for s, limit in r["rate_limit_defaults"].items()]),
]
# Typer renders help as Rich markup: "[@…]" and "[/…]" would read as tags, so they are escaped.
CATALOG_HELP = (f"Catalog entry {MODEL_SYNTAX.replace('[@', chr(92) + '[@')}, repeatable (provider: "
                f"{', '.join(PROVIDERS)}; =UPSTREAM: the configured upstream that serves these models, e.g. "
                "openai:gpt-4o*=azure-east; default: the provider's own).")
ENVS_HELP = "Allowed token environment, repeatable."
ENDPOINTS_HELP = (f"Endpoint families its tokens may call, comma-separated (of {', '.join(FAMILIES)}); "
                  "files, batches and tools are granted only by name.")
TOOLS_HELP = ("MCP tool entry SERVER:PATTERN (a configured MCP server, a tool name or pattern, e.g. docs:search_*), "
              "repeatable; used only with the tools endpoint family.")
ModelsOpt = Annotated[list[str] | None, typer.Option("--model", help=CATALOG_HELP)]
EnvsOpt = Annotated[list[Env] | None, typer.Option("--environment", help=ENVS_HELP)]
EndpointsOpt = Annotated[list[str] | None, typer.Option(
    "--endpoints", help=ENDPOINTS_HELP + " Default at create: every family that acts on one model.")]
ToolsOpt = Annotated[list[str] | None, typer.Option("--tool", help=TOOLS_HELP)]
DefaultDays = Annotated[int | None, typer.Option(min=1, max=3650, help="Default token lifetime (API default 30).")]
MaxDays = Annotated[int | None, typer.Option(min=1, max=3650, help="Longest token lifetime (API default 90).")]
DormantDays = Annotated[int | None, typer.Option(min=1, max=3650, help="Revoke tokens unused this many days.")]
RotationDays = Annotated[int | None, typer.Option(min=1, max=3650, help="Rotation cadence of its tokens, in days.")]
RotationDisableDays = Annotated[int | None, typer.Option(
    min=1, max=3650, help="Revoke tokens this many days past their rotation due date (needs --rotation-days).")]
Budgets = Annotated[list[str] | None, typer.Option(
    "--budget", help="Default budget of a scope type, SCOPE=AMOUNT\\[/PERIOD][:POSTURE] (e.g. team=200 or "
                     "user=20/day:hard), repeatable; replaces all the profile's budget defaults.")]
RateLimits = Annotated[list[str] | None, typer.Option(
    "--rate-limit", help="Default rate limit of a scope type, SCOPE=Nrpm[,Ntpm] (e.g. token=60rpm), repeatable; "
                         "replaces all the profile's rate-limit defaults.")]


def _per_scope(specs: list[str] | None, parse: Any, option: str) -> dict[str, Any] | None:
    if not specs:
        return None
    parsed: dict[str, Any] = {}
    for spec in specs:
        scope, value = parse(spec)
        if scope in parsed:
            usage(f"{option}: {scope} given twice")
        parsed[scope] = value
    return parsed


def _fields(models: list[str] | None, environments: list[Env] | None, budgets: list[str] | None,
            rate_limits: list[str] | None, endpoints: list[str] | None, tools: list[str] | None,
            **fields: Any) -> dict[str, Any]:
    return payload(catalog=[parse_model(m) for m in models] if models else None,
                   environments=[str(e) for e in environments] if environments else None,
                   endpoints=parse_endpoints(endpoints), tools=[parse_tool(t) for t in tools] if tools else None,
                   budget_defaults=_per_scope(budgets, parse_budget, "--budget"),
                   rate_limit_defaults=_per_scope(rate_limits, parse_rate_limit, "--rate-limit"), **fields)


def _show(api: Api, profile: Row, as_json: bool, note: str | None = None) -> None:
    readable = profile if as_json else {
        **profile, "catalog": [model_spec(e) for e in profile["catalog"]],
        "tools": [tool_spec(e) for e in profile.get("tools", [])],
        "budget_defaults": [budget_spec(s, b) for s, b in profile["budget_defaults"].items()],
        "rate_limit_defaults": [rate_limit_spec(s, limit) for s, limit in profile["rate_limit_defaults"].items()]}
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
    endpoints: EndpointsOpt = None, tools: ToolsOpt = None,
    default_token_days: DefaultDays = None, max_token_days: MaxDays = None, dormant_days: DormantDays = None,
    budgets: Budgets = None, rate_limits: RateLimits = None, description: Description = None,
    rotation_days: RotationDays = None, rotation_disable_days: RotationDisableDays = None,
    as_json: JsonOut = False,
) -> None:
    """Create an access profile, e.g. --model openai:gpt-4o* --model anthropic:claude-*@prod --environment dev
    --environment prod --endpoints chat,embeddings,tools --tool docs:search_* --budget team=500
    --rate-limit token=60rpm."""
    api = connect()
    body = _fields(models, environments, budgets, rate_limits, endpoints, tools, name=name, description=description,
                   default_token_days=default_token_days, max_token_days=max_token_days,
                   dormant_disable_days=dormant_days, rotation_days=rotation_days,
                   rotation_disable_days=rotation_disable_days)
    _show(api, api.post("/profiles", body), as_json, note=f"Created profile {name}.")


#: What --clear takes, and the field and value it sends.
_CLEARED: dict[str, tuple[str, Any]] = {
    "description": ("description", None), "dormant-days": ("dormant_disable_days", None),
    "budgets": ("budget_defaults", {}), "rate-limits": ("rate_limit_defaults", {}),
    "rotation-days": ("rotation_days", None), "rotation-disable-days": ("rotation_disable_days", None),
    "tools": ("tools", []),
}


@app.command("update")
def profiles_update(
    profile: ProfileRef,
    name: Annotated[str | None, typer.Option("--name", help="New name.")] = None,
    models: ModelsOpt = None, environments: EnvsOpt = None,
    endpoints: Annotated[list[str] | None, typer.Option("--endpoints", help=ENDPOINTS_HELP)] = None,
    tools: ToolsOpt = None,
    default_token_days: DefaultDays = None, max_token_days: MaxDays = None, dormant_days: DormantDays = None,
    budgets: Budgets = None, rate_limits: RateLimits = None, description: Description = None,
    rotation_days: RotationDays = None, rotation_disable_days: RotationDisableDays = None,
    clear: Annotated[list[str] | None, typer.Option(
        help="Unset one of: description, dormant-days, budgets, rate-limits, rotation-days, "
             "rotation-disable-days, tools (repeatable).")] = None,
    as_json: JsonOut = False,
) -> None:
    """Change an access profile. --model, --environment, --endpoints and --tool replace the whole list;
    narrowing applies to every live token of every team using the profile at once."""
    unknown = [c for c in clear or [] if c not in _CLEARED]
    if unknown:
        usage(f"--clear {unknown[0]!r}: expected one of {', '.join(_CLEARED)}")
    body = _fields(models, environments, budgets, rate_limits, endpoints, tools, name=name, description=description,
                   default_token_days=default_token_days, max_token_days=max_token_days,
                   dormant_disable_days=dormant_days, rotation_days=rotation_days,
                   rotation_disable_days=rotation_disable_days)
    if tools and "tools" in (clear or []):
        usage("give --tool or --clear tools, not both")
    body |= dict(_CLEARED[c] for c in clear or [])
    if not body:
        usage("nothing to change: give at least one option")
    api = connect()
    updated = api.patch(f"/profiles/{api.id_of(PROFILES, profile)}", body)
    _show(api, updated, as_json, note=f"Updated profile {updated['name']}.")
