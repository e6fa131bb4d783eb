"""Effective access against the gateway itself: what ``/access`` says a token can do is what Envoy
and authz do with it.

A randomised population (seeded, so a failure can be replayed: the seed is in the assertion message)
of people and service accounts in teams with narrow, environment-bound catalogs, with the traps an
auditor falls into: an owner who left the team after minting (``not_a_member``), a suspended owner, a
disabled service account, a token of an environment its profile no longer allows, a team whose hard
budget is spent. Then every token asks the real gateway for every probe model of both providers and
the answer is compared with ``/access``, ``/access/refused`` and the token list's effective status.
"""

from __future__ import annotations

import os
import random
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from fnmatch import fnmatchcase
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Gateway, Minted
from tests.e2e.test_cli import document, keyward
from tests.e2e.test_denials import sql

pytestmark = pytest.mark.e2e

#: The models every token asks for; a profile named "access-universe" names each exactly, so every one is
#: in the universe ``/access`` answers over whatever the bundled price table holds.
PROBES = {
    "openai": ["gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "o3-mini"],
    "anthropic": ["claude-3-5-haiku-latest", "claude-sonnet-4-0", "claude-opus-4-1"],
}
PATTERNS = {"openai": ["gpt-4o*", "gpt-4.1-mini", "o3-*"], "anthropic": ["claude-3-5-*", "claude-sonnet-*"]}
ENVIRONMENTS = ["dev", "staging", "prod", "ci"]


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _made(reply: Any, status: int = 201) -> dict:
    assert reply.status_code == status, reply.text
    return reply.json()


def ask(gateway: Gateway, secret: str, provider: str, model: str) -> tuple[int, str | None]:
    """The gateway's answer to one request: its status and, when refused, its machine code."""
    body = {"model": model, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
    if provider == "openai":
        reply = gateway.http.post("/openai/v1/chat/completions", json=body,
                                  headers={"Authorization": f"Bearer {secret}"})
    else:
        reply = gateway.http.post("/anthropic/v1/messages", json=body,
                                  headers={"x-api-key": secret, "anthropic-version": "2023-06-01"})
    if reply.status_code == 200:
        return 200, None
    return reply.status_code, reply.json()["error"].get("code")


def _random_catalog(rng: random.Random) -> list[dict]:
    entries = []
    for provider, patterns in PATTERNS.items():
        for pattern in rng.sample(patterns, rng.randint(0, len(patterns))):
            environments = rng.choice([None, None, ["prod"], ["dev", "staging"]])
            entries.append({"provider": provider, "pattern": pattern, "environments": environments})
    return entries or [{"provider": "openai", "pattern": "gpt-4o-mini", "environments": None}]


class Population:
    """Teams, people, service accounts and their tokens, built through the admin API."""

    def __init__(self, gateway: Gateway, rng: random.Random) -> None:
        self.gateway = gateway
        self.rng = rng
        self.tokens: list[Minted] = []
        #: token id -> what was done to it (for the failure message).
        self.story: dict[str, str] = {}

    def profile(self, catalog: list[dict], environments: list[str] | None = None) -> dict:
        return _made(self.gateway.admin.post("/profiles", json={
            "name": _name("access-profile"), "catalog": catalog, "environments": environments or ENVIRONMENTS,
            "default_token_days": 30, "max_token_days": 365}))

    def build(self) -> None:
        gateway, rng = self.gateway, self.rng
        self.profile([{"provider": p, "pattern": m} for p, models in PROBES.items() for m in models])
        teams = []
        for _ in range(4):
            profile = self.profile(_random_catalog(rng), rng.choice([None, ["dev", "prod"], ["prod", "ci"]]))
            teams.append((gateway.team(_name("access-team"), profile_id=profile["id"]), profile))
        for index in range(12):
            user = gateway.user(display_name=f"person {index}")
            for team, profile in rng.sample(teams, rng.randint(1, 2)):
                gateway.join(user, team)
                environment = rng.choice(profile["environments"])
                offered = sorted({entry["pattern"] for entry in profile["catalog"]})
                models = rng.choice([["*"], ["*"], rng.sample(offered, 1)])
                token = _made(gateway.admin.post("/tokens", json={
                    "user_id": user["id"], "team_id": team["id"], "name": _name("t"),
                    "environment": environment, "models": models}))
                minted = Minted(user, token)
                self.tokens.append(minted)
                self.story[minted.id] = f"{user['email']} in {team['name']} ({environment}, models {models})"
        self.service_accounts(teams)
        self.traps(teams)

    def service_accounts(self, teams: list[tuple[dict, dict]]) -> None:
        gateway = self.gateway
        for index in range(3):
            team, profile = teams[index]
            owners = [gateway.user(), gateway.user()]
            for owner in owners:
                gateway.join(owner, team)
            account = _made(gateway.admin.post("/service-accounts", json={
                "name": _name("access-sa"), "team_id": team["id"], "business_owner_id": owners[0]["id"],
                "technical_owner_id": owners[1]["id"]}))
            token = _made(gateway.admin.post("/tokens", json={
                "service_account_id": account["id"], "team_id": team["id"], "name": _name("sa"),
                "environment": profile["environments"][0]}))
            minted = Minted({"id": account["id"], "email": f"service-account:{account['name']}"}, token)
            self.tokens.append(minted)
            self.story[minted.id] = f"service account {account['name']} in {team['name']}"
            if index == 0:
                _made(gateway.admin.patch(f"/service-accounts/{account['id']}", json={"status": "disabled"}), 200)
                self.story[minted.id] += ", disabled"

    def traps(self, teams: list[tuple[dict, dict]]) -> None:
        gateway, rng = self.gateway, self.rng
        people = [t for t in self.tokens if "@" in t.user["email"] and not t.user["email"].startswith("service")]
        left, suspended = rng.sample(people, 2)
        while suspended.user["id"] == left.user["id"]:
            suspended = rng.choice(people)
        team_of = {t["id"]: t for t, _ in teams}
        reply = gateway.admin.delete(f"/teams/{left.token['team_id']}/members/{left.user['id']}")
        assert reply.status_code == 204, reply.text
        self.story[left.id] += f", owner left {team_of[left.token['team_id']]['name']}"
        _made(gateway.admin.patch(f"/users/{suspended.user['id']}", json={"status": "suspended"}), 200)
        for token in self.tokens:
            if token.user["id"] == suspended.user["id"]:
                self.story[token.id] += ", owner suspended"
        # A profile that stops offering an environment its tokens were minted for.
        team, profile = teams[1]
        person = gateway.user()
        gateway.join(person, team)
        token = _made(gateway.admin.post("/tokens", json={
            "user_id": person["id"], "team_id": team["id"], "name": _name("t"), "environment": "prod"}))
        self.tokens.append(Minted(person, token))
        self.story[token["id"]] = f"{person['email']} in {team['name']} (prod), then prod dropped from the profile"
        remaining = [e for e in profile["environments"] if e != "prod"] or ["staging"]
        _made(gateway.admin.patch(f"/profiles/{profile['id']}", json={"environments": remaining}), 200)
        # A team whose hard monthly budget is spent (as authz would have counted it).
        team, profile = teams[2]
        _made(gateway.admin.put(f"/budgets/team/{team['id']}", json={"amount_usd": "1.00", "posture": "hard"}),
              200)
        today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        sql(gateway, """
            INSERT INTO usage_counters (scope_type, scope_id, bucket, bucket_start, requests, tokens, cost_usd,
                                        updated_at)
            VALUES ('team', $1::uuid, 'day', $2, 1, 100, $3, now())
            ON CONFLICT (scope_type, scope_id, bucket, bucket_start) DO UPDATE SET cost_usd = EXCLUDED.cost_usd,
                updated_at = now()
        """, team["id"], today, Decimal("5"))
        # The spend above reaches authz with its next meter sync (every 0.25 s), not with the notification
        # stream: wait until the gateway itself refuses a token of that team for its budget.
        self.await_spent_budget(team, profile)
        # Everything above reached authz before this token does (one ordered notification stream).
        gateway.mint()

    def await_spent_budget(self, team: dict, profile: dict) -> None:
        gateway = self.gateway
        offered = [(environment, provider, model) for environment in profile["environments"]
                   for provider, models in PROBES.items() for model in models
                   if any(entry["provider"] in ("*", provider) and fnmatchcase(model, entry["pattern"])
                          and (not entry["environments"] or environment in entry["environments"])
                          for entry in profile["catalog"])]
        environment, provider, model = offered[0]
        probe_user = gateway.user(display_name="budget probe")
        gateway.join(probe_user, team)
        probe = _made(gateway.admin.post("/tokens", json={
            "user_id": probe_user["id"], "team_id": team["id"], "name": _name("probe"), "environment": environment}))
        gateway.wait_until(lambda: gateway.known(probe["token"]), what="the probe token to reach authz")
        gateway.wait_until(lambda: ask(gateway, probe["token"], provider, model)[1] == "budget_exceeded",
                           timeout=10, what="authz to count the team's spent budget")
        _made(gateway.admin.post(f"/tokens/{probe['id']}/revoke", json={"reason": "probe done"}), 200)


def reach_of(gateway: Gateway, provider: str, model: str) -> set[str]:
    found: set[str] = set()
    cursor = None
    while True:
        params = {"provider": provider, "model": model, "limit": 500, **({"cursor": cursor} if cursor else {})}
        page = _made(gateway.admin.get("/access", params=params), 200)
        found |= {item["token_id"] for item in page["items"]}
        if not (cursor := page["next_cursor"]):
            return found


def refused_rows(gateway: Gateway) -> list[dict]:
    rows: list[dict] = []
    cursor = None
    while True:
        page = _made(gateway.admin.get("/access/refused", params={"limit": 7, **({"cursor": cursor} if cursor
                                                                                  else {})}), 200)
        rows += page["items"]
        if not (cursor := page["next_cursor"]):
            assert page["total"] == len(rows)
            return rows


@pytest.fixture(scope="module")
def population(gateway: Gateway) -> Population:
    seed = int(os.environ.get("KEYWARD_TEST_SEED", random.randrange(1 << 30)))
    built = Population(gateway, random.Random(seed))
    built.seed = seed  # type: ignore[attr-defined]
    built.build()
    return built


def test_access_agrees_with_the_gateway_for_every_token_and_model(gateway: Gateway, population: Population) -> None:
    seed = population.seed  # type: ignore[attr-defined]
    refused = {row["token"]["token_id"]: row["token"]["effective"] for row in refused_rows(gateway)}
    disagreements = []
    allowed_somewhere = refused_somewhere = budget_seen = 0
    for provider, models in PROBES.items():
        for model in models:
            granted = reach_of(gateway, provider, model)
            for token in population.tokens:
                status, code = ask(gateway, token.secret, provider, model)
                says = token.id in granted
                if (status == 200) != says:
                    disagreements.append(f"{provider}/{model}: gateway {status} {code}, /access "
                                         f"{'grants' if says else 'refuses'}: {population.story[token.id]}")
                # A refusal of the token itself is the gateway's answer to every model; a spent budget
                # is its answer to the models the catalog offers (the others are refused as such).
                expected = refused.get(token.id)
                per_model = {"model_not_allowed", "environment_not_allowed"}
                if expected == "budget_exceeded":
                    budget_seen += code == "budget_exceeded"
                    ok = code in per_model | {"budget_exceeded"}
                else:
                    ok = expected in (None, "no_model") or code == expected
                if status != 200 and not ok:
                    disagreements.append(f"{provider}/{model}: gateway says {code}, /access/refused says "
                                         f"{refused[token.id]}: {population.story[token.id]}")
                allowed_somewhere += status == 200
                refused_somewhere += status != 200
    assert not disagreements, f"seed {seed}:\n" + "\n".join(disagreements)
    # The comparison meant something: both answers occurred, and every trap is among the refused.
    assert allowed_somewhere and refused_somewhere and budget_seen, seed
    codes = set(refused.values())
    assert {"not_a_member", "owner_disabled", "environment_not_allowed", "budget_exceeded"} <= codes, (seed, codes)


def test_token_lists_show_effective_status_beside_stored(gateway: Gateway, population: Population) -> None:
    refused = {row["token"]["token_id"]: row["token"]["effective"] for row in refused_rows(gateway)}
    for token in population.tokens:
        listed = _made(gateway.admin.get(f"/tokens/{token.id}"), 200)
        assert listed["status"] == "active"
        assert listed["effective_status"] == refused.get(token.id, "usable"), population.story[token.id]


def test_what_one_person_can_reach(gateway: Gateway, population: Population) -> None:
    person = next(t for t in population.tokens if not t.user["email"].startswith("service-account:"))
    answer = _made(gateway.admin.get(f"/access/users/{person.user['id']}"), 200)
    assert answer["name"] == person.user["email"]
    mine = {t.id for t in population.tokens if t.user["id"] == person.user["id"]}
    assert {row["token_id"] for row in answer["tokens"]} == mine
    for row in answer["tokens"]:
        for provider, models in row["models"].items():
            for model in models:
                if model in PROBES[provider]:
                    secret = next(t.secret for t in population.tokens if t.id == row["token_id"])
                    assert ask(gateway, secret, provider, model)[0] == 200, (row, model)


def test_revoked_token_leaves_reach_at_once(gateway: Gateway) -> None:
    minted = gateway.mint()
    assert minted.id in reach_of(gateway, "openai", "gpt-4o-mini")
    gateway.revoke(minted.id)
    assert minted.id not in reach_of(gateway, "openai", "gpt-4o-mini")
    assert _made(gateway.admin.get(f"/tokens/{minted.id}"), 200)["effective_status"] == "token_revoked"


def test_a_team_owner_sees_only_their_team(gateway: Gateway, population: Population) -> None:
    owner = gateway.user()
    team = gateway.team(_name("access-owned"))
    gateway.join(owner, team, role="owner")
    mine = gateway.mint(team=team)
    credential = _made(gateway.admin.post("/credentials", json={
        "name": _name("owner-cred"), "role": "owner", "team_id": team["id"]}))
    headers = {"Authorization": f"Bearer {credential['token']}"}
    page = _made(gateway.admin.get("/access", params={"limit": 500}, headers=headers), 200)
    assert {item["token_id"] for item in page["items"]} == {mine.id}
    assert page["summary"]["tokens_stored_live"] == 1


def test_keyward_access_cli(gateway: Gateway, population: Population) -> None:
    refused = refused_rows(gateway)
    result = keyward(gateway, "access", "refused", "--all", "--json")
    assert result.returncode == 0, result.stderr
    assert {row["token"]["token_id"] for row in document(result)["items"]} == {
        row["token"]["token_id"] for row in refused}
    result = keyward(gateway, "access", "reach", "--provider", "anthropic", "--all", "--json")
    assert result.returncode == 0, result.stderr
    assert {row["token_id"] for row in document(result)["items"]} == reach_of(gateway, "anthropic", "*")


def test_answers_stay_right_when_the_mirror_loses_postgres(gateway: Gateway) -> None:
    """The control plane's mirror of the gateway's cache cut off (its backend terminated): a revocation
    made right after is in the very next answer, from the mirror once it has reconnected and reloaded,
    or from a direct read until then."""
    for _ in range(3):
        minted = gateway.mint()
        assert minted.id in reach_of(gateway, "openai", "gpt-4o-mini")
        killed = sql(gateway, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE application_name = 'keyward-controlplane-mirror'")
        assert killed, "the mirror's connection was not found"
        gateway.revoke(minted.id)
        assert minted.id not in reach_of(gateway, "openai", "gpt-4o-mini")
    gateway.wait_until(lambda: bool(sql(gateway, "SELECT 1 FROM pg_stat_activity WHERE application_name = "
                                                 "'keyward-controlplane-mirror'")), what="the mirror to reconnect")
    assert httpx.get(f"{gateway.info.api_url}/livez").json()["duties"]["token-mirror"] is True
