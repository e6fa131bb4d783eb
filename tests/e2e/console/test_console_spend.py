"""The console's spend page against the real stack: real requests through the gateway, spend rolled up
at ingest and read back through the page, its chart, its export, and who may see what.

This month's spend is made by chat requests with minted tokens, for a model priced by an override (so
the amounts are large enough to read); spend in November 2024, a month no other test writes, is put
straight into the rollup (as tests/e2e/test_spend_report.py does) so that the chart has several days
and several teams.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import httpx
import pytest

from controlplane.web.console import usd
from tests.e2e.conftest import Gateway, Minted
from tests.e2e.console.conftest import Browser, Console
from tests.e2e.oidc.harness import ACCOUNTS
from tests.e2e.test_denials import sql

pytestmark = pytest.mark.e2e

NOVEMBER = {"start": "2024-11-01", "end": "2024-12-01"}


@dataclass
class World:
    a: dict
    b: dict
    alice: Minted
    bob: Minted
    model: str


def _priced_model(gateway: Gateway) -> str:
    """A model of its own, priced by an override: $0.069 a request with the mock provider's usage."""
    name = f"console-spend-{uuid.uuid4().hex[:8]}"
    reply = gateway.admin.post("/prices", json={"provider": "openai", "model": name, "input_per_mtok": "1000",
                                                "output_per_mtok": "10000", "effective_from": "2020-01-01T00:00:00Z"})
    assert reply.status_code == 201, reply.text
    return name


def _rollup(gateway: Gateway, day: date, team: dict, cost: str, model: str = "gpt-4o", requests: int = 1) -> None:
    sql(gateway, """
        INSERT INTO spend_daily (day, provider, model, environment, team_id, requests, input_tokens, cached_tokens,
                                 output_tokens, cost_usd, estimated_requests)
        VALUES ($1, 'openai', $2, 'prod', $3, $4, 100, 0, 10, $5, 0)
    """, day, model, uuid.UUID(team["id"]), requests, Decimal(cost))


def api_report(gateway: Gateway, **params: str) -> dict:
    reply = gateway.admin.get("/spend", params=params)
    assert reply.status_code == 200, reply.text
    return reply.json()


@pytest.fixture(scope="module")
def world(gateway: Gateway) -> World:
    # "0-…" sorts first, so the test IdP's team owner (who may own other tests' teams) owns this one.
    a = gateway.team(f"0-console-spend-a-{uuid.uuid4().hex[:6]}")
    b = gateway.team(f"console-spend-b-{uuid.uuid4().hex[:6]}")
    model = _priced_model(gateway)
    alice, bob = gateway.mint(team=a), gateway.mint(team=b)
    for minted, count in ((alice, 3), (bob, 1)):
        for _ in range(count):
            reply = gateway.chat(minted.secret, model=model)
            assert reply.status_code == 200, reply.text

    def arrived() -> bool:
        return [api_report(gateway, team_id=team["id"])["total"]["requests"] for team in (a, b)] == [3, 1]

    gateway.wait_until(arrived, timeout=30, what="the requests' spend to be rolled up")
    for day, team, cost in ((3, a, "2.00"), (3, b, "1.00"), (4, a, "1.00"), (10, b, "3.00")):
        _rollup(gateway, date(2024, 11, day), team, cost)
    _rollup(gateway, date(2024, 11, 10), b, "0.50", model="gpt-4o-mini")
    return World(a, b, alice, bob, model)


def _bars(browser: Browser) -> dict[str, dict]:
    """The chart's bars by day: their total and their segments' series and heights."""
    bars = {}
    for bar in browser.all("svg[data-chart=spend] g[data-day]"):
        segments = {rect.get_attribute("data-series"): float(rect.get_attribute("height"))
                    for rect in bar.find_elements("css selector", "rect[data-series]")}
        bars[bar.get_attribute("data-day")] = {"total": Decimal(bar.get_attribute("data-total")), "segments": segments}
    return bars


def test_this_month_shows_the_requests_sent_through_the_gateway(gateway: Gateway, console: Console,
                                                                world: World, shot) -> None:
    browser = console.as_bootstrap(f"/console/spend?group=user&team_id={world.a['id']}")
    expected = api_report(gateway, team_id=world.a["id"], group_by="user")
    assert Decimal(expected["total"]["cost_usd"]) > 0
    assert browser.find("[data-figure=total-cost]").text == usd(Decimal(expected["total"]["cost_usd"]))
    assert browser.find("[data-figure=total-requests]").text == "3"
    [row] = browser.all("table[data-table=top] tbody tr")
    assert world.alice.user["email"] in row.text
    # One bar per day of this month; today's holds alice's spend, as her own series.
    today = datetime.now(UTC).date()
    first = today.replace(day=1)
    days = ((first + timedelta(days=32)).replace(day=1) - first).days
    bars = _bars(browser)
    assert len(bars) == days and min(bars) == first.isoformat()
    assert bars[today.isoformat()]["total"] == Decimal(expected["total"]["cost_usd"])
    assert list(bars[today.isoformat()]["segments"]) == [world.alice.user["email"]]
    assert sum(1 for bar in bars.values() if bar["segments"]) == 1
    violations = browser.axe()
    assert violations == [], [(v["id"], v["help"], [n.get("target") for n in v["nodes"]][:3]) for v in violations]


def test_the_chart_stacks_a_segment_per_group_in_a_bar_per_day(gateway: Gateway, console: Console, world: World,
                                                               shot) -> None:
    browser = console.as_bootstrap("/console/spend?group=team&start=2024-11-01&end=2024-12-01")
    bars = _bars(browser)
    assert len(bars) == 30 and sorted(bars)[0] == "2024-11-01" and sorted(bars)[-1] == "2024-11-30"
    a, b = world.a["name"], world.b["name"]
    assert set(bars["2024-11-03"]["segments"]) == {a, b}
    assert bars["2024-11-03"]["total"] == Decimal("3.00")
    # Heights are in proportion to the money: $2 for a, $1 for b on the 3rd.
    heights = bars["2024-11-03"]["segments"]
    assert heights[a] == pytest.approx(2 * heights[b], rel=0.02)
    assert set(bars["2024-11-04"]["segments"]) == {a} and set(bars["2024-11-10"]["segments"]) == {b}
    assert all(not bars[day]["segments"] for day in bars if day not in ("2024-11-03", "2024-11-04", "2024-11-10"))
    # The legend names the series; the table alternative has the same figures.
    assert [item.text for item in browser.all("figcaption .legend li")] == [b, a]
    table = browser.find("table[data-table=chart]")
    assert table.get_attribute("textContent").count("2024-11-") == 3
    # Top spenders, most expensive first, and the total.
    rows = [row.text for row in browser.all("table[data-table=top] tbody tr")]
    assert b in rows[0] and "$4.50" in rows[0] and a in rows[1] and "$3.00" in rows[1]
    assert browser.find("[data-figure=total-cost]").text == "$7.50"
    shot(browser, "spend")
    assert browser.axe() == []

    # Grouped by model, the series change; a filter narrows the chart and the table.
    browser.open("/console/spend?group=model&start=2024-11-01&end=2024-12-01")
    bars = _bars(browser)
    assert set(bars["2024-11-10"]["segments"]) == {"gpt-4o", "gpt-4o-mini"}
    browser.fill("form.filters input[name=model]", "gpt-4o-mini")
    browser.submit_and_wait("form.filters button[type=submit]")
    assert "model=gpt-4o-mini" in browser.path
    assert browser.find("[data-figure=total-cost]").text == "$0.5000"
    assert [day for day, bar in _bars(browser).items() if bar["segments"]] == ["2024-11-10"]
    # A top spender's link narrows the page to it.
    browser.open("/console/spend?group=team&start=2024-11-01&end=2024-12-01")
    browser.submit_and_wait(f"table[data-table=top] a[href*='team_id={world.a['id']}']")
    assert browser.find("[data-figure=total-cost]").text == "$3.00"


def test_the_export_is_the_apis_export_of_the_same_filter(gateway: Gateway, console: Console, world: World) -> None:
    browser = console.as_bootstrap("/console/spend?group=team&start=2024-11-01&end=2024-12-01")
    link = browser.find("a[href^='/console/spend/export'][href*='format=csv']").get_attribute("href")
    assert "group=team" in link and "start=2024-11-01" in link
    with browser.http() as client:
        for fmt in ("csv", "jsonl"):
            mine = client.get("/console/spend/export", params={"format": fmt, "group": "team", **NOVEMBER})
            assert mine.status_code == 200, mine.text
            assert mine.headers["content-disposition"] == f'attachment; filename="spend.{fmt}"'
            theirs = gateway.admin.get("/spend", params={"format": fmt, "group_by": "team", **NOVEMBER})
            assert mine.headers["content-type"] == theirs.headers["content-type"]
            assert mine.text == theirs.text and world.a["name"] in mine.text and world.b["name"] in mine.text
        this_month = {"group": "user", "team_id": world.a["id"]}
        mine = client.get("/console/spend/export", params={"format": "csv", **this_month})
        theirs = gateway.admin.get("/spend", params={"format": "csv", "group_by": "user", "team_id": world.a["id"]})
        assert mine.text == theirs.text and world.alice.user["email"] in mine.text
        assert client.get("/console/spend/export", params={"format": "xml"}).status_code == 422
        assert client.get("/console/spend", params={"group": "everything"}).status_code == 422
        assert client.get("/console/spend", params={"start": "2024-12-01", "end": "2024-11-01"}).status_code == 422
    with httpx.Client(base_url=gateway.info.api_url, timeout=10) as stranger:
        assert stranger.get("/console/spend/export", params={"format": "csv"}).status_code == 303


def test_a_team_owner_sees_only_their_team_and_finance_sees_every_team(gateway: Gateway, console: Console,
                                                                        world: World) -> None:
    owner = console.as_role("owner", "/console/spend?group=team&start=2024-11-01&end=2024-12-01", team=world.a)
    try:
        rows = [row.text for row in owner.all("table[data-table=top] tbody tr")]
        assert len(rows) == 1 and world.a["name"] in rows[0]
        assert owner.find("[data-figure=total-cost]").text == "$3.00"
        owner.open(f"/console/spend?team_id={world.b['id']}")
        assert "may not manage that team" in owner.text
        with owner.http() as client:
            assert client.get("/console/spend", params={"team_id": world.b["id"]}).status_code == 403
            export = client.get("/console/spend/export", params={"format": "jsonl", "group": "team", **NOVEMBER})
            assert export.status_code == 200 and world.a["id"] in export.text and world.b["id"] not in export.text
    finally:
        person = console.person(ACCOUNTS["otto"])
        gateway.admin.delete(f"/teams/{world.a['id']}/members/{person['id']}")

    finance = console.as_role("finance", "/console/spend?group=team&start=2024-11-01&end=2024-12-01")
    rows = [row.text for row in finance.all("table[data-table=top] tbody tr")]
    assert any(world.a["name"] in row for row in rows) and any(world.b["name"] in row for row in rows)
    assert finance.all("main form[method=post]") == []
    assert finance.axe() == []
