"""``keyward projects``, ``budgets``, ``limits`` and ``prices`` (spend policy) against the real stack, run
as a process the way an operator runs them (see tests/e2e/test_cli.py)."""

from __future__ import annotations

import typing
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import get_args

import pytest

from controlplane import schemas
from controlplane.cli import budgets, prices, projects, vocabulary
from tests.e2e.conftest import Gateway
from tests.e2e.test_cli import document, keyward, ok
from tests.e2e.test_denials import sql

pytestmark = pytest.mark.e2e


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def refused(result: typing.Any, code: str, exit_code: int = 1) -> str:
    assert result.returncode == exit_code, (result.args, result.stdout, result.stderr)
    assert result.stderr.startswith("error: ") and code in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1  # one line, never a traceback
    return str(result.stderr)


def test_the_spend_vocabularies_match_the_api() -> None:
    assert vocabulary.SCOPES == get_args(schemas.ScopeType)
    assert vocabulary.POSTURES == get_args(schemas.Posture)
    assert get_args(budgets.Posture) == get_args(schemas.Posture)
    assert get_args(budgets.Period) == get_args(schemas.Period)
    # A provider is any configured upstream's name (the API checks it against the configuration).
    assert prices.Provider is str and get_args(schemas.PricedProvider)[0] is str
    assert get_args(projects.Status) == get_args(schemas.ProjectStatus)


def test_projects_are_named_by_name_within_a_team_and_carried_by_tokens(gateway: Gateway) -> None:
    team, other = gateway.team(_unique("cli-spend")), gateway.team(_unique("cli-spend"))
    name = _unique("research")
    created = document(keyward(gateway, "projects", "create", name, "--team", team["name"], "--description",
                               "the research", "--json"))
    assert created["team_id"] == team["id"] and created["status"] == "open"
    listed = ok(keyward(gateway, "projects", "list", "--team", team["name"]))
    assert created["id"] in listed and name in listed and team["name"] in listed

    # Another team's project of the same name: a bare name is ambiguous, --team settles it.
    twin = document(keyward(gateway, "projects", "create", name, "--team", other["id"], "--json"))
    said = refused(keyward(gateway, "projects", "show", name), "2 projects are named", exit_code=1)
    assert created["id"] in said and twin["id"] in said
    shown = document(keyward(gateway, "projects", "show", name, "--team", team["name"], "--json"))
    assert shown["id"] == created["id"]
    renamed = document(keyward(gateway, "projects", "update", name, "--team", team["name"], "--name", name + "-x",
                               "--json"))
    assert renamed["name"] == name + "-x"

    user = gateway.user()
    gateway.join(user, team)
    token = document(keyward(gateway, "tokens", "mint", "--user", user["email"], "--team", team["name"],
                             "--project", name + "-x", "--json"))
    assert token["project_id"] == created["id"] and token["team_id"] == team["id"]
    shown_token = ok(keyward(gateway, "tokens", "show", token["id"]))
    assert "project id" in shown_token and f"{created['id']} ({name}-x)" in shown_token  # named in the table

    said = ok(keyward(gateway, "projects", "close", name + "-x", "--team", team["id"]))
    assert "Closed project" in said
    refused(keyward(gateway, "tokens", "mint", "--user", user["email"], "--team", team["name"], "--project",
                    created["id"]), "project_closed")
    refused(keyward(gateway, "projects", "show", "no-such-project"), "no project named 'no-such-project'")
    refused(keyward(gateway, "projects", "update", name + "-x", "--team", team["id"]), "nothing to change", 2)


def test_budgets_set_show_list_and_remove(gateway: Gateway) -> None:
    team = gateway.team(_unique("cli-budget"))
    set_ = document(keyward(gateway, "budgets", "set", "team", team["name"], "50", "--period", "month", "--posture",
                            "alert_then_hard", "--threshold", "80", "--threshold", "100", "--json"))
    assert set_["scope_type"] == "team" and set_["scope_id"] == team["id"]
    assert Decimal(set_["amount_usd"]) == 50 and set_["thresholds"] == [80, 100]
    day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    sql(gateway, "INSERT INTO usage_counters (scope_type, scope_id, bucket, bucket_start, cost_usd, updated_at) "
        "VALUES ('team', $1::uuid, 'day', $2, $3, now())", team["id"], day, Decimal("40"))

    shown = document(keyward(gateway, "budgets", "show", "team", team["id"], "--json"))
    [budget] = shown["budgets"]
    assert budget["source"] == "explicit" and budget["percent"] == "80.00" and budget["thresholds_reached"] == [80]
    table = ok(keyward(gateway, "budgets", "show", "team", team["name"]))
    assert f"Budgets of team {team['name']}" in table and "explicit" in table and "80.00" in table
    listed = document(keyward(gateway, "budgets", "list", "--scope-type", "team", "--scope", team["name"], "--json"))
    assert [b["id"] for b in listed["items"]] == [set_["id"]]
    assert team["name"] in ok(keyward(gateway, "budgets", "list", "--scope-type", "team", "--scope", team["id"]))

    # A project by name within its team, a window, and a service account spelled with a hyphen.
    name = _unique("proj")
    project = document(keyward(gateway, "projects", "create", name, "--team", team["name"], "--json"))
    windowed = document(keyward(gateway, "budgets", "set", "project", name, "--team", team["name"], "100",
                                "--period", "window", "--from", "2026-01-01", "--until", "2026-02-01T00:00:00+01:00",
                                "--posture", "hard", "--json"))
    assert windowed["scope_id"] == project["id"] and windowed["window_start"].startswith("2026-01-01T00:00:00")
    assert datetime.fromisoformat(windowed["window_end"]) == datetime(2026, 1, 31, 23, tzinfo=UTC)

    refused(keyward(gateway, "budgets", "set", "team", team["name"], "5", "--period", "window"), "--from", 2)
    refused(keyward(gateway, "budgets", "set", "token", "not-an-id", "5"), "by its id", 2)
    refused(keyward(gateway, "budgets", "set", "organisation", team["name"], "5"), "scope type", 2)
    refused(keyward(gateway, "budgets", "set", "team", team["name"], "0"), "amount_usd")

    said = ok(keyward(gateway, "budgets", "remove", "team", team["name"]))
    assert "Removed the budget of team" in said
    refused(keyward(gateway, "budgets", "remove", "team", team["name"]), "budget_not_found")
    empty = ok(keyward(gateway, "budgets", "show", "team", team["name"]))
    assert "No budget applies" in empty  # the shared test profile gives teams no default


def test_limits_set_show_list_and_remove(gateway: Gateway) -> None:
    profile = gateway.admin.post("/profiles", json={
        "name": _unique("cli-limits"), "catalog": [{"provider": "*", "pattern": "*"}], "environments": ["dev"],
        "rate_limit_defaults": {"service_account": {"rpm": 120}}}).json()
    team = gateway.team(_unique("cli-limits"), profile_id=profile["id"])
    owner = gateway.user()
    account = gateway.admin.post("/service-accounts", json={
        "name": _unique("agent"), "team_id": team["id"], "business_owner_id": owner["id"],
        "technical_owner_id": owner["id"]}).json()

    by_default = ok(keyward(gateway, "limits", "show", "service-account", account["name"]))
    assert f"profile:{profile['name']}" in by_default and "120" in by_default
    limit = document(keyward(gateway, "limits", "set", "service-account", account["name"], "--rpm", "30",
                             "--tpm", "6000", "--json"))
    assert (limit["scope_type"], limit["scope_id"], limit["rpm"], limit["tpm"]) == (
        "service_account", account["id"], 30, 6000)
    effective = document(keyward(gateway, "limits", "show", "service_account", account["id"], "--json"))
    assert effective["limits"] == [{"source": "explicit", "team_ids": [team["id"]], "rpm": 30, "tpm": 6000}]
    listed = ok(keyward(gateway, "limits", "list", "--scope-type", "service-account", "--scope", account["name"]))
    assert limit["id"] in listed and account["name"] in listed
    refused(keyward(gateway, "limits", "set", "team", team["name"]), "--rpm", 2)

    assert "Removed the rate limit" in ok(keyward(gateway, "limits", "remove", "service-account", account["name"]))
    again = document(keyward(gateway, "limits", "show", "service-account", account["name"], "--json"))
    assert [(e["source"], e["rpm"]) for e in again["limits"]] == [(f"profile:{profile['name']}", 120)]


def test_prices_list_and_override(gateway: Gateway) -> None:
    model = _unique("local-llm")
    said = ok(keyward(gateway, "prices", "override", "openai", model, "--input", "0", "--output", "0.25",
                      "--note", "self-hosted"))
    assert f"openai {model} is priced by override:" in said
    [price] = document(keyward(gateway, "prices", "list", "--provider", "openai", "--model", model, "--json"))
    assert price["source"] == "override" and Decimal(price["output_per_mtok"]) == Decimal("0.25")
    table = ok(keyward(gateway, "prices", "list", "--provider", "openai"))
    assert model in table and "override" in table
    [bundled] = document(keyward(gateway, "prices", "list", "--provider", "openai", "--model", "gpt-4o-mini",
                                 "--json"))
    assert bundled["source"] == "bundled" and bundled["version"].startswith("genai-prices")
    history = document(keyward(gateway, "prices", "list", "--history", "--model", model, "--json"))
    assert [(h["model"], h["note"]) for h in history["items"]] == [(model, "self-hosted")]
    refused(keyward(gateway, "prices", "override", "openai", "gpt-*", "--input", "1", "--output", "1"), "model")
