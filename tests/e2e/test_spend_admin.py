"""The admin surface of spend policy against the real stack: projects (and the tokens and service
accounts that carry them), budgets and what is spent against them, threshold announcements, rate
limits, prices and their overrides.

What authz counts is stood in for by rows written straight into ``usage_counters`` (as the database
owner), the table authz keeps: the control plane's arithmetic is what is under test here.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Gateway
from tests.e2e.test_denials import sql

pytestmark = pytest.mark.e2e

#: How long the budget duty may take to notice a threshold: its default interval (10 s) twice, and a margin.
ALERT_WAIT = 10


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def made(reply: Any, status: int = 201) -> dict:
    assert reply.status_code == status, reply.text
    return reply.json()


def refused_with(reply: Any, status: int, code: str) -> dict:
    assert reply.status_code == status, reply.text
    assert reply.json()["code"] == code, reply.text
    return reply.json()


def events(gateway: Gateway, **filters: str) -> list[dict]:
    reply = gateway.admin.get("/audit/events", params={**filters, "limit": 500})
    assert reply.status_code == 200, reply.text
    return reply.json()["items"]


def profile(gateway: Gateway, **fields: Any) -> dict:
    return made(gateway.admin.post("/profiles", json={
        "name": _unique("spend-profile"), "catalog": [{"provider": "*", "pattern": "*"}],
        "environments": ["dev", "prod"], "default_token_days": 30, "max_token_days": 365, **fields}))


def team(gateway: Gateway, profile_id: str | None = None, name: str | None = None) -> dict:
    return gateway.team(name or _unique("spend-team"), profile_id=profile_id)


def project(gateway: Gateway, team_id: str, name: str | None = None) -> dict:
    return made(gateway.admin.post("/projects", json={"team_id": team_id, "name": name or _unique("proj")}))


def member(gateway: Gateway, *teams: dict) -> dict:
    user = gateway.user()
    for each in teams:
        gateway.join(user, each)
    return user


def count(gateway: Gateway, scope_type: str, scope_id: str, day: datetime, cost: str, bucket: str = "day") -> None:
    """What authz would have counted: the scope's spend in the bucket starting at ``day``."""
    sql(gateway, """
        INSERT INTO usage_counters (scope_type, scope_id, bucket, bucket_start, requests, tokens, cost_usd, updated_at)
        VALUES ($1, $2::uuid, $3, $4, 1, 100, $5, now())
        ON CONFLICT (scope_type, scope_id, bucket, bucket_start) DO UPDATE SET cost_usd = EXCLUDED.cost_usd
    """, scope_type, scope_id, bucket, day, Decimal(cost))


def midnight(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def month_of(moment: datetime) -> tuple[datetime, datetime]:
    start = midnight(moment).replace(day=1)
    end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    return start, end


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


# -- projects -------------------------------------------------------------------------------------


def test_a_project_is_created_renamed_and_closed_with_an_event_for_each(gateway: Gateway) -> None:
    owner_team, other_team = team(gateway), team(gateway)
    name = _unique("Research")
    created = project(gateway, owner_team["id"], name)
    assert created["status"] == "open" and created["closed_at"] is None and created["team_id"] == owner_team["id"]
    # Unique per team, whatever the case; another team may use the name.
    refused_with(gateway.admin.post("/projects", json={"team_id": owner_team["id"], "name": name.upper()}),
                 409, "project_exists")
    project(gateway, other_team["id"], name)
    refused_with(gateway.admin.post("/projects", json={"team_id": str(uuid.uuid4()), "name": "x"}),
                 404, "team_not_found")

    renamed = made(gateway.admin.patch(f"/projects/{created['id']}", json={"name": name + "-2",
                                                                           "description": "two"}), 200)
    assert renamed["name"] == name + "-2" and renamed["description"] == "two"
    closed = made(gateway.admin.post(f"/projects/{created['id']}/close"), 200)
    assert closed["status"] == "closed" and closed["closed_at"] is not None
    again = made(gateway.admin.post(f"/projects/{created['id']}/close"), 200)  # idempotent
    assert again["closed_at"] == closed["closed_at"]

    recorded = events(gateway, target_type="project", target_id=created["id"])
    assert [e["action"] for e in recorded] == ["project.created", "project.changed", "project.closed"]
    assert recorded[0]["before"] is None and recorded[0]["after"]["name"] == name
    assert recorded[1]["before"]["name"] == name and recorded[1]["after"]["name"] == name + "-2"
    assert recorded[2]["before"]["status"] == "open" and recorded[2]["after"]["status"] == "closed"

    listed = made(gateway.admin.get("/projects", params={"team_id": owner_team["id"], "status": "closed"}), 200)
    assert [p["id"] for p in listed["items"]] == [created["id"]]
    by_name = made(gateway.admin.get("/projects", params={"name": name.lower()}), 200)["items"]
    assert {p["team_id"] for p in by_name} == {other_team["id"]}  # the other was renamed
    refused_with(gateway.admin.get(f"/projects/{uuid.uuid4()}"), 404, "project_not_found")


def test_a_token_carries_an_open_project_of_its_own_team(gateway: Gateway) -> None:
    mine, theirs = team(gateway), team(gateway)
    user = member(gateway, mine)
    open_project, foreign = project(gateway, mine["id"]), project(gateway, theirs["id"])
    closed = project(gateway, mine["id"])
    made(gateway.admin.post(f"/projects/{closed['id']}/close"), 200)

    def mint(project_id: str) -> Any:
        return gateway.admin.post("/tokens", json={"user_id": user["id"], "team_id": mine["id"], "name": "p",
                                                   "project_id": project_id})

    token = made(mint(open_project["id"]))
    assert token["project_id"] == open_project["id"]
    assert made(gateway.admin.get(f"/tokens/{token['id']}"), 200)["project_id"] == open_project["id"]
    [issued] = events(gateway, target_type="token", target_id=token["id"], action="token.issued")
    assert issued["after"]["project_id"] == open_project["id"]
    refused_with(mint(foreign["id"]), 422, "project_not_in_team")
    refused_with(mint(closed["id"]), 422, "project_closed")
    refused_with(mint(str(uuid.uuid4())), 404, "project_not_found")
    plain = made(gateway.admin.post("/tokens", json={"user_id": user["id"], "team_id": mine["id"], "name": "p"}))
    assert plain["project_id"] is None

    # A successor keeps its predecessor's project; closing the project revokes its tokens (their
    # records and spend stay with the project).
    rotated = made(gateway.admin.post(f"/tokens/{token['id']}/rotate", json={"grace_hours": 1}))
    assert rotated["new"]["project_id"] == open_project["id"]
    closing = made(gateway.admin.post(f"/projects/{open_project['id']}/close"), 200)
    assert closing["tokens_revoked"] == 2
    refused_with(gateway.admin.post(f"/tokens/{rotated['new']['id']}/rotate", json={"grace_hours": 1}),
                 409, "token_not_live")
    gone = made(gateway.admin.get(f"/tokens/{rotated['new']['id']}"), 200)
    assert gone["revoked_at"] is not None and gone["project_id"] == open_project["id"]


def test_a_service_accounts_project_is_the_default_of_its_tokens(gateway: Gateway) -> None:
    mine, theirs = team(gateway), team(gateway)
    person = member(gateway, mine)
    default, other = project(gateway, mine["id"]), project(gateway, mine["id"])
    body = {"name": _unique("agent"), "team_id": mine["id"], "business_owner_id": person["id"],
            "technical_owner_id": person["id"]}
    refused_with(gateway.admin.post("/service-accounts", json={**body, "project_id": project(gateway, theirs["id"])
                                                               ["id"]}), 422, "project_not_in_team")
    account = made(gateway.admin.post("/service-accounts", json={**body, "project_id": default["id"]}))
    assert account["project_id"] == default["id"]

    def mint(**fields: Any) -> dict:
        return made(gateway.admin.post("/tokens", json={"service_account_id": account["id"], "name": "a", **fields}))

    assert mint()["project_id"] == default["id"]
    assert mint(project_id=other["id"])["project_id"] == other["id"]

    made(gateway.admin.post(f"/projects/{other['id']}/close"), 200)
    refused_with(gateway.admin.patch(f"/service-accounts/{account['id']}", json={"project_id": other["id"]}),
                 422, "project_closed")
    # The account's closed default refuses its new tokens, saying whose project it is.
    made(gateway.admin.post(f"/projects/{default['id']}/close"), 200)
    reply = gateway.admin.post("/tokens", json={"service_account_id": account["id"], "name": "a"})
    refused_with(reply, 422, "project_closed")
    assert account["name"] in reply.json()["detail"]
    cleared = made(gateway.admin.patch(f"/service-accounts/{account['id']}", json={"project_id": None}), 200)
    assert cleared["project_id"] is None
    assert mint()["project_id"] is None
    [update] = events(gateway, target_type="service_account", target_id=account["id"],
                      action="service_account.updated")
    assert update["before"]["project_id"] == default["id"] and update["after"]["project_id"] is None


# -- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "body"), [
    ("PUT", "/budgets/team/{team}", {"amount_usd": 0}),
    ("PUT", "/budgets/team/{team}", {"amount_usd": -5}),
    ("PUT", "/budgets/team/{team}", {"amount_usd": "12345678901.5"}),
    ("PUT", "/budgets/team/{team}", {"amount_usd": "1.00001"}),
    ("PUT", "/budgets/team/{team}", {"amount_usd": 10, "period": "week"}),
    ("PUT", "/budgets/team/{team}", {"amount_usd": 10, "period": "window"}),
    ("PUT", "/budgets/team/{team}", {"amount_usd": 10, "period": "window", "window_start": "2026-02-01T00:00:00Z",
                                     "window_end": "2026-01-01T00:00:00Z"}),
    ("PUT", "/budgets/team/{team}", {"amount_usd": 10, "period": "window", "window_start": "2026-01-01T00:00:00",
                                     "window_end": "2026-02-01T00:00:00"}),
    ("PUT", "/budgets/team/{team}", {"amount_usd": 10, "window_start": "2026-01-01T00:00:00Z",
                                     "window_end": "2026-02-01T00:00:00Z"}),
    ("PUT", "/budgets/team/{team}", {"amount_usd": 10, "posture": "soft"}),
    ("PUT", "/budgets/team/{team}", {"amount_usd": 10, "thresholds": [0]}),
    ("PUT", "/budgets/team/{team}", {"amount_usd": 10, "scope": "team"}),
    ("PUT", "/budgets/organisation/{team}", {"amount_usd": 10}),
    ("PUT", "/budgets/team/not-a-uuid", {"amount_usd": 10}),
    ("PUT", "/rate-limits/team/{team}", {}),
    ("PUT", "/rate-limits/team/{team}", {"rpm": 0}),
    ("PUT", "/rate-limits/team/{team}", {"rpm": 2**40}),
    ("PUT", "/rate-limits/team/{team}", {"rpm": 10, "rph": 10}),
    ("POST", "/prices", {"provider": "openai", "model": "gpt-*", "input_per_mtok": 1, "output_per_mtok": 1}),
    ("POST", "/prices", {"provider": "*", "model": "m", "input_per_mtok": 1, "output_per_mtok": 1}),
    ("POST", "/prices", {"provider": "openai", "model": "m", "input_per_mtok": -1, "output_per_mtok": 1}),
    ("POST", "/prices", {"provider": "openai", "model": "m", "input_per_mtok": 1}),
    ("POST", "/prices", {"provider": "openai", "model": "m", "input_per_mtok": 1, "output_per_mtok": 1,
                         "effective_from": "0001-01-01T00:00:00+01:00"}),
    ("POST", "/projects", {"team_id": "{team}", "name": ""}),
    ("POST", "/projects", {"team_id": "{team}", "name": "x", "budget": 5}),
])
def test_bad_input_is_a_422_in_fastapis_shape_and_changes_nothing(gateway: Gateway, method: str, path: str,
                                                                   body: dict) -> None:
    chosen = team(gateway)
    filled = {k: (v.replace("{team}", chosen["id"]) if isinstance(v, str) else v) for k, v in body.items()}
    reply = gateway.admin.request(method, path.replace("{team}", chosen["id"]), json=filled)
    assert reply.status_code == 422, reply.text
    detail = reply.json()["detail"]
    assert isinstance(detail, list) and all({"loc", "msg", "type"} <= set(e) for e in detail), reply.text
    assert events(gateway, target_id=chosen["id"], action="budget.set") == []
    assert made(gateway.admin.get("/budgets", params={"scope_id": chosen["id"]}), 200)["items"] == []
    assert made(gateway.admin.get("/rate-limits", params={"scope_id": chosen["id"]}), 200)["items"] == []


# -- budgets --------------------------------------------------------------------------------------


def test_a_budget_is_set_replaced_and_removed_with_before_and_after(gateway: Gateway) -> None:
    chosen = team(gateway)
    path = f"/budgets/team/{chosen['id']}"
    first = made(gateway.admin.put(path, json={"amount_usd": "50", "thresholds": [100, 80, 80]}), 200)
    assert first["scope_type"] == "team" and first["scope_id"] == chosen["id"]
    assert Decimal(first["amount_usd"]) == 50 and first["period"] == "month"
    assert first["posture"] == "alert_then_hard" and first["thresholds"] == [80, 100]
    window = {"amount_usd": "75.5", "period": "window", "window_start": "2026-03-01T00:00:00+01:00",
              "window_end": "2026-04-01T00:00:00Z", "posture": "hard"}
    second = made(gateway.admin.put(path, json=window), 200)
    assert second["id"] == first["id"] and second["created_at"] == first["created_at"]
    assert Decimal(second["amount_usd"]) == Decimal("75.5") and second["posture"] == "hard"
    assert at(second["window_start"]) == datetime(2026, 2, 28, 23, tzinfo=UTC)
    assert second["thresholds"] == [50, 80, 100]  # replaced whole: the default thresholds again

    listed = made(gateway.admin.get("/budgets", params={"scope_type": "team", "scope_id": chosen["id"]}), 200)
    assert [b["id"] for b in listed["items"]] == [first["id"]]
    assert gateway.admin.delete(path).status_code == 204
    refused_with(gateway.admin.delete(path), 404, "budget_not_found")
    assert made(gateway.admin.get("/budgets", params={"scope_id": chosen["id"]}), 200)["items"] == []

    recorded = events(gateway, target_type="team", target_id=chosen["id"])
    budget_events = [e for e in recorded if e["action"].startswith("budget.")]
    assert [e["action"] for e in budget_events] == ["budget.set", "budget.set", "budget.removed"]
    assert budget_events[0]["before"] is None and budget_events[0]["after"]["thresholds"] == [80, 100]
    assert budget_events[1]["before"] == budget_events[0]["after"]
    assert budget_events[1]["after"]["period"] == "window"
    assert budget_events[2]["before"]["id"] == first["id"] and budget_events[2]["after"] is None
    assert all(e["actor"] == "admin:bootstrap" for e in budget_events)


@pytest.mark.parametrize(("scope_type", "code"), [
    ("team", "team_not_found"), ("project", "project_not_found"), ("user", "user_not_found"),
    ("service_account", "service_account_not_found"), ("token", "token_not_found"),
])
def test_a_budget_or_limit_for_a_scope_that_does_not_exist_is_a_404(gateway: Gateway, scope_type: str,
                                                                    code: str) -> None:
    missing = str(uuid.uuid4())
    refused_with(gateway.admin.put(f"/budgets/{scope_type}/{missing}", json={"amount_usd": 1}), 404, code)
    refused_with(gateway.admin.put(f"/rate-limits/{scope_type}/{missing}", json={"rpm": 1}), 404, code)
    refused_with(gateway.admin.get(f"/budgets/{scope_type}/{missing}/utilisation"), 404, code)
    refused_with(gateway.admin.get(f"/rate-limits/{scope_type}/{missing}/effective"), 404, code)
    assert events(gateway, target_id=missing) == []


def test_utilisation_sums_the_days_of_the_current_period(gateway: Gateway) -> None:
    default = {"team": {"amount_usd": "200", "period": "month", "posture": "hard", "thresholds": [80, 100]}}
    chosen = team(gateway, profile(gateway, budget_defaults=default)["id"])
    scope = chosen["id"]
    now = datetime.now(UTC)
    today, yesterday, long_ago = midnight(now), midnight(now) - timedelta(days=1), midnight(now) - timedelta(days=40)
    month_start, month_end = month_of(now)
    count(gateway, "team", scope, today, "12.5")
    count(gateway, "team", scope, yesterday, "7.5")
    count(gateway, "team", scope, long_ago, "1000")  # an earlier month
    count(gateway, "team", scope, now.replace(second=0, microsecond=0), "500", bucket="minute")  # not a day
    count(gateway, "project", scope, today, "300")  # another scope type, same id
    month_spent = Decimal("12.5") + (Decimal("7.5") if yesterday >= month_start else 0)

    def utilisation() -> list[dict]:
        document = made(gateway.admin.get(f"/budgets/team/{scope}/utilisation"), 200)
        assert document["scope_type"] == "team" and document["scope_id"] == scope
        assert document["scope_name"] == chosen["name"]
        return document["budgets"]

    [by_default] = utilisation()
    assert by_default["source"].startswith("profile:spend-profile-") and by_default["team_ids"] == [scope]
    assert Decimal(by_default["amount_usd"]) == 200 and by_default["posture"] == "hard"
    assert (at(by_default["period_start"]), at(by_default["period_end"])) == (month_start, month_end)
    assert Decimal(by_default["spent_usd"]) == month_spent
    assert Decimal(by_default["percent"]) == (month_spent / 2).quantize(Decimal("0.01"))
    assert Decimal(by_default["remaining_usd"]) == 200 - month_spent
    assert by_default["thresholds_reached"] == [] and by_default["refused"] is False and by_default["active"]

    # Its own budget takes the default's place; 80% of 25 is reached exactly at 20.
    made(gateway.admin.put(f"/budgets/team/{scope}", json={"amount_usd": str(month_spent * 100 / 80)}), 200)
    [own] = utilisation()
    assert own["source"] == "explicit" and Decimal(own["percent"]) == 80
    assert own["thresholds_reached"] == [50, 80] and own["refused"] is False
    made(gateway.admin.put(f"/budgets/team/{scope}", json={"amount_usd": str(month_spent), "posture": "hard"}), 200)
    [spent] = utilisation()
    assert spent["refused"] is True and Decimal(spent["remaining_usd"]) == 0 and Decimal(spent["percent"]) == 100
    made(gateway.admin.put(f"/budgets/team/{scope}", json={"amount_usd": "10", "posture": "alert"}), 200)
    [alerting] = utilisation()
    assert alerting["refused"] is False and alerting["thresholds_reached"] == [50, 80, 100]
    assert Decimal(alerting["remaining_usd"]) == 0 and Decimal(alerting["percent"]) > 100

    made(gateway.admin.put(f"/budgets/team/{scope}", json={"amount_usd": "50", "period": "day"}), 200)
    [daily] = utilisation()
    assert (at(daily["period_start"]), at(daily["period_end"])) == (today, today + timedelta(days=1))
    assert Decimal(daily["spent_usd"]) == Decimal("12.5")
    window = {"amount_usd": "5000", "period": "window", "window_start": (today - timedelta(days=45)).isoformat(),
              "window_end": (today + timedelta(days=1)).isoformat()}
    made(gateway.admin.put(f"/budgets/team/{scope}", json=window), 200)
    [windowed] = utilisation()
    assert Decimal(windowed["spent_usd"]) == Decimal("1020") and windowed["active"] is True
    past = {**window, "window_end": (today - timedelta(days=2)).isoformat()}
    made(gateway.admin.put(f"/budgets/team/{scope}", json=past), 200)
    [ended] = utilisation()
    assert Decimal(ended["spent_usd"]) == Decimal("1000") and ended["active"] is False and ended["refused"] is False

    assert gateway.admin.delete(f"/budgets/team/{scope}").status_code == 204
    assert utilisation()[0]["source"] == by_default["source"]


def test_a_persons_budget_is_per_team_where_the_defaults_differ(gateway: Gateway) -> None:
    tight = profile(gateway, budget_defaults={"user": {"amount_usd": "20", "posture": "hard"}})
    loose = profile(gateway, budget_defaults={"user": {"amount_usd": "50", "period": "day", "posture": "alert"}})
    bare = profile(gateway)
    first, second = team(gateway, tight["id"], _unique("a-team")), team(gateway, tight["id"], _unique("b-team"))
    third, fourth = team(gateway, loose["id"]), team(gateway, bare["id"])
    person = member(gateway, first, second, third, fourth)
    count(gateway, "user", person["id"], midnight(datetime.now(UTC)), "10")

    document = made(gateway.admin.get(f"/budgets/user/{person['id']}/utilisation"), 200)
    assert document["scope_name"] == person["email"]
    by_source = {b["source"]: b for b in document["budgets"]}
    assert set(by_source) == {f"profile:{tight['name']}", f"profile:{loose['name']}"}
    assert by_source[f"profile:{tight['name']}"]["team_ids"] == [first["id"], second["id"]]
    assert by_source[f"profile:{tight['name']}"]["percent"] == "50.00"
    assert by_source[f"profile:{loose['name']}"]["team_ids"] == [third["id"]]
    assert by_source[f"profile:{loose['name']}"]["period"] == "day"

    # A team owner sees what applies to their own team's tokens only; another team's owner, nothing.
    owner = made(gateway.admin.post("/credentials", json={"name": _unique("owner"), "role": "owner",
                                                          "team_id": third["id"]}))
    with httpx.Client(base_url=f"{gateway.info.api_url}/api/v1", timeout=10,
                      headers={"Authorization": f"Bearer {owner['token']}"}) as as_owner:
        seen = made(as_owner.get(f"/budgets/user/{person['id']}/utilisation"), 200)["budgets"]
        assert [(b["source"], b["team_ids"]) for b in seen] == [(f"profile:{loose['name']}", [third["id"]])]
        stranger = member(gateway, first)
        refused_with(as_owner.get(f"/budgets/user/{stranger['id']}/utilisation"), 403, "team_forbidden")

    made(gateway.admin.put(f"/budgets/user/{person['id']}", json={"amount_usd": "40"}), 200)
    [own] = made(gateway.admin.get(f"/budgets/user/{person['id']}/utilisation"), 200)["budgets"]
    assert own["source"] == "explicit" and set(own["team_ids"]) == {first["id"], second["id"], third["id"],
                                                                     fourth["id"]}
    assert own["percent"] == "25.00"


def test_thresholds_are_announced_once_each_per_period(gateway: Gateway) -> None:
    channel = str(uuid.uuid4())
    sql(gateway, "INSERT INTO notification_channels (id, name, kind, url) VALUES ($1::uuid, $2, 'slack', $3)",
        channel, _unique("budget-alerts"), "http://127.0.0.1:9/hooks/budget-alerts")
    chosen = team(gateway)
    scope = chosen["id"]
    made(gateway.admin.put(f"/budgets/team/{scope}", json={"amount_usd": "10", "thresholds": [50, 80, 100],
                                                             "posture": "alert_then_hard"}), 200)
    now = datetime.now(UTC)
    month_start, month_end = month_of(now)
    # Announced last month: this month announces it again.
    sql(gateway, "INSERT INTO budget_alerts (scope_type, scope_id, period_start, threshold, amount_usd, spent_usd) "
        "VALUES ('team', $1::uuid, $2, 50, 10, 6)", scope, month_of(month_start - timedelta(days=1))[0])

    def announced() -> list[dict]:
        return events(gateway, target_type="team", target_id=scope, action="budget.threshold_reached")

    count(gateway, "team", scope, midnight(now), "6")
    gateway.wait_until(lambda: len(announced()) >= 1, timeout=ALERT_WAIT, what="the 50% threshold announced")
    [fifty] = announced()
    after = fifty["after"]
    assert fifty["actor"] == "system:budgets" and fifty["mechanism"] == "system"
    assert after["threshold"] == 50 and after["scope_name"] == chosen["name"] and after["source"] == "explicit"
    assert Decimal(after["amount_usd"]) == 10 and Decimal(after["spent_usd"]) == 6 and after["percent"] == "60.00"
    assert after["posture"] == "alert_then_hard" and after["refused"] is False
    assert (at(after["period_start"]), at(after["period_end"])) == (month_start, month_end)

    count(gateway, "team", scope, midnight(now), "10.5")
    gateway.wait_until(lambda: len(announced()) >= 3, timeout=ALERT_WAIT, what="the 80% and 100% thresholds")
    # A scope crossing a threshold after that: the duty has looked at the first one again since.
    marker = team(gateway)
    made(gateway.admin.put(f"/budgets/team/{marker['id']}", json={"amount_usd": "1", "thresholds": [100]}), 200)
    count(gateway, "team", marker["id"], midnight(now), "2")
    gateway.wait_until(lambda: bool(events(gateway, target_id=marker["id"], action="budget.threshold_reached")),
                       timeout=ALERT_WAIT, what="a later round")

    reached = announced()
    assert sorted(e["after"]["threshold"] for e in reached) == [50, 80, 100]
    hundred = next(e for e in reached if e["after"]["threshold"] == 100)
    assert hundred["after"]["refused"] is True and hundred["after"]["percent"] == "105.00"
    rows = sql(gateway, "SELECT threshold, period_start, amount_usd, spent_usd FROM budget_alerts "
               "WHERE scope_type = 'team' AND scope_id = $1::uuid ORDER BY period_start, threshold", scope)
    assert [(r["threshold"], r["period_start"]) for r in rows] == [  # type: ignore[union-attr]
        (50, month_of(month_start - timedelta(days=1))[0]), (50, month_start), (80, month_start), (100, month_start)]
    deliveries = sql(gateway, "SELECT payload FROM notification_deliveries WHERE channel_id = $1::uuid "
                     "AND kind = 'budget.threshold_reached' AND payload->>'scope_id' = $2", channel, scope)
    payloads = [json.loads(r["payload"]) for r in deliveries]  # type: ignore[union-attr]
    assert sorted(p["threshold"] for p in payloads) == [50, 80, 100]
    assert all(p["scope_type"] == "team" and p["amount_usd"] for p in payloads)
    # No round failed on the way (the duty logs and counts a failed round, and goes on).
    assert httpx.get(f"{gateway.info.api_url}/livez").json()["failed_rounds"]["budgets"] == 0


# -- rate limits ----------------------------------------------------------------------------------


def test_rate_limits_are_set_shown_in_effect_and_removed(gateway: Gateway) -> None:
    defaults = {"token": {"rpm": 60, "tpm": 200000}, "user": {"rpm": 30}}
    chosen = team(gateway, profile(gateway, rate_limit_defaults=defaults)["id"])
    token = gateway.mint(team=chosen).token
    path = f"/rate-limits/token/{token['id']}"

    def effective() -> list[dict]:
        document = made(gateway.admin.get(f"{path}/effective"), 200)
        assert document["scope_name"] == token["name"]
        return document["limits"]

    [default] = effective()
    assert default["source"].startswith("profile:") and (default["rpm"], default["tpm"]) == (60, 200000)
    assert default["team_ids"] == [chosen["id"]]
    refused_with(gateway.admin.get(path), 404, "rate_limit_not_found")
    # A team whose profile gives teams no default has no limit in effect.
    assert made(gateway.admin.get(f"/rate-limits/team/{chosen['id']}/effective"), 200)["limits"] == []

    first = made(gateway.admin.put(path, json={"rpm": 5}), 200)
    assert (first["rpm"], first["tpm"]) == (5, None)
    assert made(gateway.admin.get(path), 200) == first
    second = made(gateway.admin.put(path, json={"tpm": 1000}), 200)
    assert second["id"] == first["id"] and (second["rpm"], second["tpm"]) == (None, 1000)
    [own] = effective()
    assert own == {"source": "explicit", "team_ids": [chosen["id"]], "rpm": None, "tpm": 1000}
    listed = made(gateway.admin.get("/rate-limits", params={"scope_type": "token", "scope_id": token["id"]}), 200)
    assert [item["id"] for item in listed["items"]] == [first["id"]]

    assert gateway.admin.delete(path).status_code == 204
    refused_with(gateway.admin.delete(path), 404, "rate_limit_not_found")
    assert effective() == [default]
    recorded = [e for e in events(gateway, target_type="token", target_id=token["id"])
                if e["action"].startswith("rate_limit.")]
    assert [e["action"] for e in recorded] == ["rate_limit.set", "rate_limit.set", "rate_limit.removed"]
    assert recorded[0]["before"] is None and recorded[0]["after"]["rpm"] == 5
    assert recorded[1]["before"]["rpm"] == 5 and recorded[1]["after"] == second
    assert recorded[2]["before"] == second and recorded[2]["after"] is None


# -- prices ---------------------------------------------------------------------------------------


def test_prices_list_the_catalog_models_used_and_overridden(gateway: Gateway) -> None:
    private, used = _unique("private-llm"), "claude-sonnet-4-5"
    profile(gateway, catalog=[{"provider": "openai", "pattern": "gpt-4o-mini"},
                              {"provider": "openai", "pattern": "gpt-4o*"},  # a pattern names no model
                              {"provider": "openai", "pattern": private}])
    sql(gateway, "INSERT INTO spend_daily (day, provider, model, requests, cost_usd) VALUES ($1, 'anthropic', $2, 1, 1)"
        " ON CONFLICT DO NOTHING", datetime.now(UTC).date(), used)

    def prices(**params: str) -> dict[tuple[str, str], dict]:
        listed = made(gateway.admin.get("/prices", params=params), 200)
        return {(p["provider"], p["model"]): p for p in listed}

    listed = prices()
    mini = listed[("openai", "gpt-4o-mini")]
    assert mini["source"] == "bundled" and mini["version"].startswith("genai-prices ")
    assert Decimal(mini["input_per_mtok"]) > 0 and Decimal(mini["output_per_mtok"]) > Decimal(mini["input_per_mtok"])
    assert "catalog" in mini["named_by"] and mini["effective_from"] is None
    assert not any(model.endswith("*") for _, model in listed)
    assert listed[("anthropic", used)]["source"] == "bundled" and "spend" in listed[("anthropic", used)]["named_by"]
    unpriced = listed[("openai", private)]
    assert unpriced["source"] == "unpriced" and unpriced["input_per_mtok"] is None and unpriced["version"] is None

    override = made(gateway.admin.post("/prices", json={"provider": "openai", "model": private, "input_per_mtok": 0,
                                                        "output_per_mtok": "0.5", "note": "self-hosted"}))
    assert override["version"] == f"override:{override['id']}" and override["created_by"] == "admin:bootstrap"
    later = made(gateway.admin.post("/prices", json={
        "provider": "openai", "model": private, "input_per_mtok": 9, "output_per_mtok": 9,
        "effective_from": (datetime.now(UTC) + timedelta(days=30)).isoformat()}))
    now_priced = prices(provider="openai", model=private)[("openai", private)]
    assert now_priced["source"] == "override" and now_priced["version"] == override["version"]
    assert Decimal(now_priced["input_per_mtok"]) == 0 and Decimal(now_priced["cached_input_per_mtok"]) == 0
    assert Decimal(now_priced["output_per_mtok"]) == Decimal("0.5")
    assert at(now_priced["effective_from"]) == at(override["effective_from"])
    assert set(prices(provider="anthropic")) == {k for k in listed if k[0] == "anthropic"}
    asked = prices(provider="openai", model="gpt-4.1")[("openai", "gpt-4.1")]
    assert asked["named_by"] == ["query"] and asked["source"] == "bundled"

    history = made(gateway.admin.get("/prices/overrides", params={"model": private}), 200)["items"]
    assert [h["id"] for h in history] == [override["id"], later["id"]]
    [first_event, second_event] = events(gateway, target_type="price", target_id=f"openai:{private}")
    assert first_event["action"] == "price.overridden" and first_event["before"]["source"] == "unpriced"
    assert first_event["after"] == override
    assert second_event["before"]["version"] == override["version"] and second_event["after"]["id"] == later["id"]


# -- who sees what --------------------------------------------------------------------------------


def test_a_team_owner_reads_only_their_own_teams_spend_policy(gateway: Gateway) -> None:
    mine, theirs = team(gateway), team(gateway)
    own_project, other_project = project(gateway, mine["id"]), project(gateway, theirs["id"])
    person = member(gateway, mine)
    for scope_type, scope_id in (("team", mine["id"]), ("project", own_project["id"]), ("user", person["id"]),
                                 ("team", theirs["id"]), ("project", other_project["id"])):
        made(gateway.admin.put(f"/budgets/{scope_type}/{scope_id}", json={"amount_usd": "1000"}), 200)
        made(gateway.admin.put(f"/rate-limits/{scope_type}/{scope_id}", json={"rpm": 1000}), 200)
    owner = made(gateway.admin.post("/credentials", json={"name": _unique("owner"), "role": "owner",
                                                          "team_id": mine["id"]}))
    finance = made(gateway.admin.post("/credentials", json={"name": _unique("finance"), "role": "finance"}))
    mine_ids = {mine["id"], own_project["id"], person["id"]}
    with httpx.Client(base_url=f"{gateway.info.api_url}/api/v1", timeout=10,
                      headers={"Authorization": f"Bearer {owner['token']}"}) as as_owner, \
         httpx.Client(base_url=f"{gateway.info.api_url}/api/v1", timeout=10,
                      headers={"Authorization": f"Bearer {finance['token']}"}) as as_finance:
        for path in ("/budgets", "/rate-limits"):
            seen = {item["scope_id"] for item in made(as_owner.get(path, params={"limit": 500}), 200)["items"]}
            assert mine_ids <= seen and not seen & {theirs["id"], other_project["id"]}, path
            everything = made(as_finance.get(path, params={"limit": 500}), 200)["items"]
            assert {theirs["id"], other_project["id"]} <= {item["scope_id"] for item in everything}, path
        listed = made(as_owner.get("/projects", params={"limit": 500}), 200)["items"]
        assert {p["team_id"] for p in listed} == {mine["id"]}
        refused_with(as_owner.get(f"/projects/{other_project['id']}"), 403, "team_forbidden")
        refused_with(as_owner.get(f"/rate-limits/project/{other_project['id']}"), 403, "team_forbidden")
        assert made(as_owner.get(f"/rate-limits/project/{own_project['id']}"), 200)["rpm"] == 1000
        # An owner opens projects in their own team only, and sets no budget, not even their own team's.
        project_of_mine = made(as_owner.post("/projects", json={"team_id": mine["id"], "name": _unique("own")}))
        assert project_of_mine["team_id"] == mine["id"]
        refused_with(as_owner.post("/projects", json={"team_id": theirs["id"], "name": "x"}), 403, "team_forbidden")
        refused_with(as_owner.put(f"/budgets/team/{mine['id']}", json={"amount_usd": 1}), 403, "role_forbidden")
        refused_with(as_owner.get("/prices"), 403, "role_forbidden")
        refused_with(as_finance.post(f"/projects/{own_project['id']}/close"), 403, "role_forbidden")
        assert made(as_finance.get("/prices", params={"provider": "openai"}), 200) is not None
