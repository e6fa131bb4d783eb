"""The API's words as the CLI knows them: environments, roles, providers, endpoint families, the
catalog-entry and tool-entry syntaxes, and the resources a command may name by email or name.

The enums repeat :mod:`controlplane.schemas` so the CLI starts without importing pydantic;
tests/e2e/test_cli.py checks they still match.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from controlplane.cli.output import usage


class Env(StrEnum):
    dev = "dev"
    staging = "staging"
    prod = "prod"
    ci = "ci"


class Role(StrEnum):
    admin = "admin"
    auditor = "auditor"
    finance = "finance"
    owner = "owner"


PROVIDERS = ("openai", "anthropic", "azure", "gemini", "bedrock", "mistral", "*")

#: The endpoint families a profile allows and a token narrows (authz.routes.Family).
FAMILIES = ("chat", "responses", "completions", "embeddings", "moderations", "images", "audio", "files", "batches",
            "models", "count_tokens", "tools")

MODEL_SYNTAX = "PROVIDER:PATTERN[@env1,env2][=UPSTREAM]"


def parse_model(spec: str) -> dict[str, Any]:
    """``PROVIDER:PATTERN[@env1,env2][=UPSTREAM]`` → a catalog entry. ``=UPSTREAM`` names the configured
    upstream that serves the models (no model name contains ``=``). The ``@…`` suffix is read as
    environments only when each item is one (a model name may contain ``@``).

    >>> parse_model("anthropic:claude-*@dev,ci")
    {'provider': 'anthropic', 'pattern': 'claude-*', 'environments': ['dev', 'ci']}
    >>> parse_model("openai:gpt-4o*@prod=azure-east")
    {'provider': 'openai', 'pattern': 'gpt-4o*', 'environments': ['prod'], 'upstream': 'azure-east'}
    """
    provider, sep, rest = spec.partition(":")
    rest, equals, upstream = rest.partition("=")
    if not sep or provider not in PROVIDERS or not rest or (equals and not upstream):
        usage(f"--model {spec!r}: expected {MODEL_SYNTAX} with PROVIDER one of {', '.join(PROVIDERS)} "
              "(e.g. openai:gpt-4o*, anthropic:claude-*@dev,ci or openai:gpt-4o=azure-east)")
    routed = {"upstream": upstream} if equals else {}
    pattern, at_sign, envs = rest.rpartition("@")
    names = envs.split(",")
    if at_sign and pattern and all(name in Env.__members__ for name in names):
        return {"provider": provider, "pattern": pattern, "environments": names, **routed}
    return {"provider": provider, "pattern": rest, **routed}


def model_spec(entry: dict[str, Any]) -> str:
    """A catalog entry back in the ``PROVIDER:PATTERN[@env1,env2][=UPSTREAM]`` syntax."""
    envs, upstream = entry.get("environments"), entry.get("upstream")
    return (f"{entry.get('provider')}:{entry.get('pattern')}" + (f"@{','.join(envs)}" if envs else "")
            + (f"={upstream}" if upstream else ""))


def parse_tool(spec: str) -> dict[str, str]:
    """``SERVER:PATTERN`` → a tool-catalog entry: the MCP server's upstream name, a tool name or pattern.

    >>> parse_tool("docs:search_*")
    {'server': 'docs', 'tools': 'search_*'}
    """
    server, sep, tools = spec.partition(":")
    if not sep or not server or not tools:
        usage(f"--tool {spec!r}: expected SERVER:PATTERN, an MCP server and a tool name or pattern "
              "(e.g. docs:search_* or github:*)")
    return {"server": server, "tools": tools}


def tool_spec(entry: dict[str, Any]) -> str:
    return f"{entry.get('server')}:{entry.get('tools')}"


def parse_endpoints(specs: list[str] | None) -> list[str] | None:
    """``--endpoints chat,embeddings`` (repeatable) → the families, each once, in the order given; None
    when none is given.

    >>> parse_endpoints(["chat,embeddings", "tools"])
    ['chat', 'embeddings', 'tools']
    """
    if not specs:
        return None
    names = [name.strip() for spec in specs for name in spec.split(",") if name.strip()]
    unknown = [name for name in names if name not in FAMILIES]
    if unknown or not names:
        usage(f"--endpoints {','.join(specs)!r}: expected comma-separated endpoint families, of "
              f"{', '.join(FAMILIES)}")
    return list(dict.fromkeys(names))


SCOPES = ("token", "user", "service_account", "project", "team")
POSTURES = ("hard", "alert", "alert_then_hard")
_BUDGET_SYNTAX = ("SCOPE=AMOUNT[/PERIOD][:POSTURE] (e.g. team=200, user=20/day:hard; SCOPE one of "
                  f"{', '.join(SCOPES)}; PERIOD month or day; POSTURE one of {', '.join(POSTURES)})")
_LIMIT_SYNTAX = ("SCOPE=Nrpm[,Ntpm] (e.g. token=60rpm or user=30rpm,60000tpm; SCOPE one of "
                 f"{', '.join(SCOPES)})")


def _scoped(option: str, spec: str, syntax: str) -> tuple[str, str]:
    scope, sep, rest = spec.partition("=")
    if not sep or scope not in SCOPES or not rest:
        usage(f"{option} {spec!r}: expected {syntax}")
    return scope, rest


def parse_budget(spec: str) -> tuple[str, dict[str, Any]]:
    """``SCOPE=AMOUNT[/PERIOD][:POSTURE]`` → (scope type, a budget without its scope).

    >>> parse_budget("user=20/day:hard")
    ('user', {'amount_usd': '20', 'period': 'day', 'posture': 'hard'})
    """
    scope, rest = _scoped("--budget", spec, _BUDGET_SYNTAX)
    rest, colon, posture = rest.partition(":")
    amount, slash, period = rest.partition("/")
    try:
        valid = float(amount) > 0
    except ValueError:
        valid = False
    if not valid or (slash and period not in ("month", "day")) or (colon and posture not in POSTURES):
        usage(f"--budget {spec!r}: expected {_BUDGET_SYNTAX}")
    return scope, {"amount_usd": amount, **({"period": period} if slash else {}),
                   **({"posture": posture} if colon else {})}


def parse_rate_limit(spec: str) -> tuple[str, dict[str, int]]:
    """``SCOPE=Nrpm[,Ntpm]`` → (scope type, a rate limit without its scope).

    >>> parse_rate_limit("user=30rpm,60000tpm")
    ('user', {'rpm': 30, 'tpm': 60000})
    """
    scope, rest = _scoped("--rate-limit", spec, _LIMIT_SYNTAX)
    limits: dict[str, int] = {}
    for part in rest.split(","):
        unit = part[-3:]
        if unit not in ("rpm", "tpm") or unit in limits or not part[:-3].isdigit() or int(part[:-3]) <= 0:
            usage(f"--rate-limit {spec!r}: expected {_LIMIT_SYNTAX}")
        limits[unit] = int(part[:-3])
    return scope, limits


def budget_spec(scope: str, budget: dict[str, Any]) -> str:
    """A budget back in the ``SCOPE=AMOUNT/PERIOD:POSTURE`` syntax."""
    return f"{scope}={budget.get('amount_usd')}/{budget.get('period', 'month')}:{budget.get('posture')}"


def rate_limit_spec(scope: str, limit: dict[str, Any]) -> str:
    return f"{scope}=" + ",".join(f"{limit[unit]}{unit}" for unit in ("rpm", "tpm") if limit.get(unit))


class RegisterKind(StrEnum):
    """The credential register's kinds of row."""

    personal = "personal"
    service = "service"
    admin = "admin"
    scim = "scim"


@dataclass(frozen=True)
class Kind:
    """A resource the CLI names: its path and the field a human names it by."""

    noun: str
    path: str
    key: str  # email or name
    query: str | None = None  # the list endpoint's exact, case-insensitive filter on ``key``, if any


USERS = Kind("user", "/users", "email", "email")
TEAMS = Kind("team", "/teams", "name", "name")
PROFILES = Kind("profile", "/profiles", "name")
SERVICE_ACCOUNTS = Kind("service account", "/service-accounts", "name")
CREDENTIALS = Kind("credential", "/credentials", "name")
#: Named by name within a team (two teams may each have a "research"): see cli/projects.py project_id.
PROJECTS = Kind("project", "/projects", "name", "name")

#: Id fields a record table shows with the name of what they point to.
ID_FIELDS = {"user_id": USERS, "team_id": TEAMS, "profile_id": PROFILES, "service_account_id": SERVICE_ACCOUNTS,
             "business_owner_id": USERS, "technical_owner_id": USERS, "project_id": PROJECTS}
