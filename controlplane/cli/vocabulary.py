"""The API's words as the CLI knows them: environments, roles, providers, the catalog-entry syntax, and
the resources a command may name by email or name.

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


PROVIDERS = ("openai", "anthropic", "*")


def parse_model(spec: str) -> dict[str, Any]:
    """``PROVIDER:PATTERN[@env1,env2]`` → a catalog entry. The ``@…`` suffix is read as environments
    only when each item is one (a model name may contain ``@``).

    >>> parse_model("anthropic:claude-*@dev,ci")
    {'provider': 'anthropic', 'pattern': 'claude-*', 'environments': ['dev', 'ci']}
    """
    provider, sep, rest = spec.partition(":")
    if not sep or provider not in PROVIDERS or not rest:
        usage(f"--model {spec!r}: expected PROVIDER:PATTERN[@env1,env2] with PROVIDER one of "
              f"{', '.join(PROVIDERS)} (e.g. openai:gpt-4o* or anthropic:claude-*@dev,ci)")
    pattern, at_sign, envs = rest.rpartition("@")
    names = envs.split(",")
    if at_sign and pattern and all(name in Env.__members__ for name in names):
        return {"provider": provider, "pattern": pattern, "environments": names}
    return {"provider": provider, "pattern": rest}


def model_spec(entry: dict[str, Any]) -> str:
    """A catalog entry back in the ``PROVIDER:PATTERN[@env1,env2]`` syntax."""
    envs = entry.get("environments")
    return f"{entry.get('provider')}:{entry.get('pattern')}" + (f"@{','.join(envs)}" if envs else "")


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

#: Id fields a record table shows with the name of what they point to.
ID_FIELDS = {"user_id": USERS, "team_id": TEAMS, "profile_id": PROFILES, "service_account_id": SERVICE_ACCOUNTS,
             "business_owner_id": USERS, "technical_owner_id": USERS}
