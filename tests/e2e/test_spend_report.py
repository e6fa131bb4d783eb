"""``GET /api/v1/spend`` over ``spend_daily``, against the real stack.

The rollup's rows are written here straight into the database as its owner (ingest, which adds to
them in production, is tested on its own), for teams, people, a service account, a project and tokens
made through the admin API, so the report's names are real ones. Most rows are in March 2025, a month
no other test writes; a few are in the current month, for the default window. Every test filters by
this module's teams, so spend other tests cause does not change the answers.
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Gateway
from tests.e2e.test_denials import sql

pytestmark = pytest.mark.e2e

MARCH = {"start": "2025-03-01", "end": "2025-04-01"}


@dataclass
class World:
    a: dict
    b: dict
    alice: dict
    bob: dict
    robot: dict
    project: dict
    tokens: dict[str, dict]
    today: date
    readers: dict[str, httpx.Client]

    @property
    def teams(self) -> set[str]:
        return {self.a["id"], self.b["id"]}


def _made(reply: httpx.Response) -> dict:
    assert reply.status_code == 201, reply.text
    return reply.json()


def _spend(gateway: Gateway, day: date, team: dict, *, model: str = "gpt-4o", provider: str = "openai",
           environment: str = "prod", project: dict | None = None, user: dict | None = None,
           account: dict | None = None, token: dict | None = None, requests: int = 1, input_tokens: int = 100,
           cached_tokens: int = 0, output_tokens: int = 10, cost: str = "0.01", estimated: int = 0) -> None:
    def ident(row: dict | None) -> uuid.UUID | None:
        return uuid.UUID(row["id"]) if row else None

    sql(gateway, """
        INSERT INTO spend_daily (day, provider, model, environment, team_id, project_id, user_id, service_account_id,
                                 token_id, requests, input_tokens, cached_tokens, output_tokens, cost_usd,
                                 estimated_requests)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
    """, day, provider, model, environment, ident(team), ident(project), ident(user), ident(account), ident(token),
        requests, input_tokens, cached_tokens, output_tokens, Decimal(cost), estimated)


@pytest.fixture(scope="module")
def world(gateway: Gateway) -> Iterator[World]:
    admin = gateway.admin
    a, b = gateway.team(f"spend-a-{uuid.uuid4().hex[:6]}"), gateway.team(f"spend-b-{uuid.uuid4().hex[:6]}")
    alice, bob = gateway.user(display_name="Alice"), gateway.user(display_name="Bob")
    gateway.join(alice, a)
    gateway.join(bob, b)
    robot = _made(admin.post("/service-accounts", json={
        "name": f"spend-robot-{uuid.uuid4().hex[:6]}", "team_id": a["id"], "business_owner_id": alice["id"],
        "technical_owner_id": alice["id"]}))
    project = {"id": str(uuid.uuid4()), "name": f"spend-project-{uuid.uuid4().hex[:6]}"}
    sql(gateway, "INSERT INTO projects (id, team_id, name) VALUES ($1, $2, $3)", uuid.UUID(project["id"]),
        uuid.UUID(a["id"]), project["name"])
    tokens = {
        "alice": _made(admin.post("/tokens", json={"user_id": alice["id"], "team_id": a["id"], "name": "alice-t"})),
        "bob": _made(admin.post("/tokens", json={"user_id": bob["id"], "team_id": b["id"], "name": "bob-t"})),
        "robot": _made(admin.post("/tokens", json={"service_account_id": robot["id"], "team_id": a["id"],
                                                   "name": "robot-t"})),
    }
    march = date(2025, 3, 1)
    _spend(gateway, march.replace(day=3), a, project=project, user=alice, token=tokens["alice"], requests=10,
           input_tokens=1000, cached_tokens=200, output_tokens=500, cost="1.50")
    _spend(gateway, march.replace(day=3), a, model="gpt-4o-mini", user=alice, token=tokens["alice"], requests=5,
           input_tokens=500, output_tokens=100, cost="0.10", estimated=1)
    _spend(gateway, march.replace(day=4), a, model="claude-sonnet-4", provider="anthropic", environment="dev",
           project=project, account=robot, token=tokens["robot"], requests=7, input_tokens=700, output_tokens=300,
           cost="2.25")
    _spend(gateway, march.replace(day=10), b, user=bob, token=tokens["bob"], requests=3, input_tokens=300,
           output_tokens=60, cost="0.60")
    # Outside March: the day before and the day after.
    _spend(gateway, date(2025, 2, 28), a, user=alice, token=tokens["alice"], requests=100, cost="9.00")
    _spend(gateway, date(2025, 4, 1), a, user=alice, token=tokens["alice"], requests=200, cost="19.00")
    # This month (the default window), and last month, which the default leaves out.
    today = datetime.now(UTC).date()
    _spend(gateway, today.replace(day=1), a, user=alice, token=tokens["alice"], requests=2, cost="0.40")
    _spend(gateway, (today.replace(day=1) - timedelta(days=1)).replace(day=15), a, user=alice,
           token=tokens["alice"], requests=1000, cost="500")
    readers: dict[str, httpx.Client] = {}
    for role, team in (("auditor", None), ("finance", None), ("owner", a)):
        credential = _made(admin.post("/credentials", json={
            "name": f"spend-{role}-{uuid.uuid4().hex[:6]}", "role": role, **({"team_id": team["id"]} if team else {})}))
        readers[role] = httpx.Client(base_url=f"{gateway.info.api_url}/api/v1", timeout=10,
                                     headers={"Authorization": f"Bearer {credential['token']}"})
    try:
        yield World(a, b, alice, bob, robot, project, tokens, today, readers)
    finally:
        for client in readers.values():
            client.close()


def report(gateway: Gateway, client: httpx.Client | None = None, **params: Any) -> dict:
    reply = (client or gateway.admin).get("/spend", params=params)
    assert reply.status_code == 200, reply.text
    return reply.json()


def ours(world: World, items: list[dict]) -> list[dict]:
    return [item for item in items if item.get("team_id", world.a["id"]) in world.teams]


def costs(items: list[dict], *keys: str) -> list[tuple]:
    return [(*(item[k] for k in keys), Decimal(item["cost_usd"])) for item in items]


# -- grouping -------------------------------------------------------------------------------------


def test_by_team_in_a_window_most_expensive_first_with_names_and_a_total(gateway: Gateway, world: World) -> None:
    for team in (world.a, world.b):
        body = report(gateway, group_by="team", team_id=team["id"], **MARCH)
        assert body["start"] == "2025-03-01" and body["end"] == "2025-04-01" and body["group_by"] == ["team"]
        [row] = body["items"]
        assert set(row) == {"team_id", "team_name", "requests", "input_tokens", "cached_tokens", "output_tokens",
                            "cost_usd", "estimated_requests"}
        assert row["team_id"] == team["id"] and row["team_name"] == team["name"]
    body = report(gateway, group_by="team", team_id=world.a["id"], **MARCH)
    [row] = body["items"]
    assert (row["requests"], row["input_tokens"], row["cached_tokens"], row["output_tokens"]) == (22, 2200, 200, 900)
    assert Decimal(row["cost_usd"]) == Decimal("3.85") and row["estimated_requests"] == 1
    assert body["total"]["groups"] == 1 and Decimal(body["total"]["cost_usd"]) == Decimal("3.85")
    assert body["next_cursor"] is None


def test_by_team_and_model_sorted_by_cost(gateway: Gateway, world: World) -> None:
    body = report(gateway, group_by="team,model", team_id=world.a["id"], **MARCH)
    assert costs(body["items"], "team_name", "model") == [
        (world.a["name"], "claude-sonnet-4", Decimal("2.25")), (world.a["name"], "gpt-4o", Decimal("1.50")),
        (world.a["name"], "gpt-4o-mini", Decimal("0.10"))]
    cheapest = report(gateway, group_by="model", team_id=world.a["id"], sort="cost_usd", **MARCH)
    assert [i["model"] for i in cheapest["items"]] == ["gpt-4o-mini", "gpt-4o", "claude-sonnet-4"]
    busiest = report(gateway, group_by="model", team_id=world.a["id"], sort="-requests", **MARCH)
    assert [i["requests"] for i in busiest["items"]] == [10, 7, 5]


def test_by_user_service_account_project_and_token_with_what_each_id_names(gateway: Gateway, world: World) -> None:
    by_user = report(gateway, group_by="user,model", team_id=world.a["id"], **MARCH)["items"]
    assert costs(by_user, "user_email", "model") == [
        (None, "claude-sonnet-4", Decimal("2.25")),  # the service account's: no person
        (world.alice["email"], "gpt-4o", Decimal("1.50")), (world.alice["email"], "gpt-4o-mini", Decimal("0.10"))]
    assert by_user[0]["user_id"] is None and by_user[1]["user_id"] == world.alice["id"]
    by_account = report(gateway, group_by="service_account", team_id=world.a["id"], **MARCH)["items"]
    assert costs(by_account, "service_account_id", "service_account_name") == [
        (world.robot["id"], world.robot["name"], Decimal("2.25")), (None, None, Decimal("1.60"))]
    by_project = report(gateway, group_by="project", team_id=world.a["id"], **MARCH)["items"]
    assert costs(by_project, "project_name") == [(world.project["name"], Decimal("3.75")), (None, Decimal("0.10"))]
    by_token = report(gateway, group_by="token,environment", team_id=world.a["id"], **MARCH)["items"]
    assert costs(by_token, "token_name", "environment") == [("robot-t", "dev", Decimal("2.25")),
                                                             ("alice-t", "prod", Decimal("1.60"))]
    assert by_token[0]["token_id"] == world.tokens["robot"]["id"]


def test_by_day_and_by_month(gateway: Gateway, world: World) -> None:
    days = report(gateway, group_by="day", team_id=world.a["id"], sort="group", **MARCH)["items"]
    assert costs(days, "day") == [("2025-03-03", Decimal("1.60")), ("2025-03-04", Decimal("2.25"))]
    months = report(gateway, group_by="month,provider", team_id=world.a["id"], sort="group", start="2025-02-01",
                    end="2025-05-01")["items"]
    assert costs(months, "month", "provider") == [
        ("2025-02", "openai", Decimal("9.00")), ("2025-03", "anthropic", Decimal("2.25")),
        ("2025-03", "openai", Decimal("1.60")), ("2025-04", "openai", Decimal("19.00"))]


def test_every_filter_narrows_the_report(gateway: Gateway, world: World) -> None:
    def total(**filters: str) -> Decimal:
        return Decimal(report(gateway, group_by="team", **MARCH, **filters)["total"]["cost_usd"])

    a = world.a["id"]
    assert total(team_id=a) == Decimal("3.85")
    assert total(team_id=a, model="gpt-4o") == Decimal("1.50")
    assert total(team_id=a, provider="anthropic") == Decimal("2.25")
    assert total(team_id=a, environment="prod") == Decimal("1.60")
    assert total(user_id=world.alice["id"]) == Decimal("1.60")
    assert total(user_id=world.bob["id"]) == Decimal("0.60")
    assert total(service_account_id=world.robot["id"]) == Decimal("2.25")
    assert total(project_id=world.project["id"]) == Decimal("3.75")
    assert total(token_id=world.tokens["bob"]["id"]) == Decimal("0.60")
    assert total(team_id=a, model="no-such-model") == Decimal("0")
    empty = report(gateway, group_by="team", team_id=a, model="no-such-model", **MARCH)
    assert empty["items"] == [] and empty["total"]["groups"] == 0 and empty["total"]["requests"] == 0


def test_the_default_window_is_this_calendar_month(gateway: Gateway, world: World) -> None:
    body = report(gateway, group_by="team", team_id=world.a["id"])
    first = world.today.replace(day=1)
    assert body["start"] == first.isoformat()
    assert body["end"] == (first.replace(day=28) + timedelta(days=4)).replace(day=1).isoformat()
    [row] = body["items"]
    assert Decimal(row["cost_usd"]) == Decimal("0.40") and row["requests"] == 2


def test_pages_walk_every_group_once_with_the_total_on_each(gateway: Gateway, world: World) -> None:
    params = {"group_by": "model", "team_id": world.a["id"], "limit": 1, **MARCH}
    seen, cursor = [], None
    while True:
        body = report(gateway, **params, **({"cursor": cursor} if cursor else {}))
        assert body["total"]["groups"] == 3 and Decimal(body["total"]["cost_usd"]) == Decimal("3.85")
        seen += [i["model"] for i in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == ["claude-sonnet-4", "gpt-4o", "gpt-4o-mini"]
    for bad in ("garbage", "WyJkMjAyNS0wMS0wMVQwMDowMDowMCswMDowMCIsICJzcGVuZCJd"):  # ["d2025-…", "spend"]
        reply = gateway.admin.get("/spend", params={**params, "cursor": bad})
        assert reply.status_code == 422 and reply.json()["code"] == "cursor_invalid", reply.text


@pytest.mark.parametrize(("params", "loc"), [
    ({"group_by": "team,bogus"}, ["query", "group_by"]),
    ({"group_by": ""}, ["query", "group_by"]),
    ({"group_by": "team;drop table users"}, ["query", "group_by"]),
    ({"start": "March"}, ["query", "start"]),
    ({"sort": "name"}, ["query", "sort"]),
    ({"format": "xml"}, ["query", "format"]),
    ({"team_id": "not-a-uuid"}, ["query", "team_id"]),
])
def test_bad_questions_are_422_in_fastapis_shape(gateway: Gateway, params: dict, loc: list) -> None:
    reply = gateway.admin.get("/spend", params=params)
    assert reply.status_code == 422, reply.text
    assert reply.json()["detail"][0]["loc"] == loc, reply.text


def test_an_empty_window_is_422(gateway: Gateway) -> None:
    for window in ({"start": "2025-03-02", "end": "2025-03-02"}, {"start": "2025-03-02", "end": "2025-03-01"},
                   {"end": "0001-01-01"}):
        reply = gateway.admin.get("/spend", params=window)
        assert reply.status_code == 422 and reply.json()["code"] == "window_empty", reply.text


# -- exports --------------------------------------------------------------------------------------


def test_csv_and_jsonl_exports_stream_every_group(gateway: Gateway, world: World) -> None:
    params = {"group_by": "team,model", "team_id": world.a["id"], **MARCH}
    reply = gateway.admin.get("/spend", params={**params, "format": "csv"})
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/csv"), reply.text
    assert reply.headers["content-disposition"] == 'attachment; filename="spend.csv"'
    rows = list(csv.reader(io.StringIO(reply.text)))
    assert rows[0] == ["team_id", "team_name", "model", "requests", "input_tokens", "cached_tokens", "output_tokens",
                       "cost_usd", "estimated_requests"]
    assert [(r[2], Decimal(r[7])) for r in rows[1:]] == [
        ("claude-sonnet-4", Decimal("2.25")), ("gpt-4o", Decimal("1.50")), ("gpt-4o-mini", Decimal("0.10"))]
    assert rows[1][:2] == [world.a["id"], world.a["name"]]
    reply = gateway.admin.get("/spend", params={**params, "group_by": "day,user", "format": "jsonl"})
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in reply.text.splitlines()]
    assert [(line["day"], line["user_email"], Decimal(line["cost_usd"])) for line in lines] == [
        ("2025-03-04", None, Decimal("2.25")), ("2025-03-03", world.alice["email"], Decimal("1.60"))]
    empty = gateway.admin.get("/spend", params={**params, "model": "none", "format": "csv"})
    assert empty.text == ("team_id,team_name,model,requests,input_tokens,cached_tokens,output_tokens,cost_usd,"
                          "estimated_requests\r\n")


# -- who may read what ----------------------------------------------------------------------------


def test_auditors_and_finance_read_every_team(gateway: Gateway, world: World) -> None:
    for role in ("auditor", "finance"):
        body = report(gateway, world.readers[role], group_by="team", **MARCH)
        assert {world.a["id"], world.b["id"]} <= {i["team_id"] for i in body["items"]}


def test_a_team_owner_reads_only_its_own_team(gateway: Gateway, world: World) -> None:
    owner = world.readers["owner"]
    body = report(gateway, owner, group_by="team", **MARCH)
    assert [(i["team_id"], Decimal(i["cost_usd"])) for i in body["items"]] == [(world.a["id"], Decimal("3.85"))]
    assert Decimal(body["total"]["cost_usd"]) == Decimal("3.85")
    # Bob is in team B: his spend is not the owner's to see, even by asking for it.
    assert report(gateway, owner, group_by="user", user_id=world.bob["id"], **MARCH)["items"] == []
    assert len(report(gateway, owner, group_by="team", team_id=world.a["id"], **MARCH)["items"]) == 1
    reply = owner.get("/spend", params={"team_id": world.b["id"], **MARCH})
    assert reply.status_code == 403 and reply.json()["code"] == "team_forbidden", reply.text
    export = owner.get("/spend", params={"group_by": "team", "format": "csv", **MARCH})
    assert export.status_code == 200
    assert [r[0] for r in list(csv.reader(io.StringIO(export.text)))[1:]] == [world.a["id"]]


def test_usage_is_deprecated_in_favour_of_spend(gateway: Gateway) -> None:
    reply = gateway.admin.get("/usage", params={"group_by": "team"})
    assert reply.status_code == 200, reply.text
    assert reply.headers["deprecation"] == "true"
    assert reply.headers["link"] == '</api/v1/spend>; rel="successor-version"'
    document = httpx.get(f"{gateway.info.api_url}/openapi.json", timeout=10).json()
    assert document["paths"]["/api/v1/usage"]["get"]["deprecated"] is True
    assert "deprecated" not in document["paths"]["/api/v1/spend"]["get"]
