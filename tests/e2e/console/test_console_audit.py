"""The console's audit log: requests and events filtered down to one minute, the export of exactly what
the filter shows, a record's outcome and chain link, and who may not look."""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from urllib.parse import quote

import pytest
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.support.expected_conditions import staleness_of
from selenium.webdriver.support.ui import WebDriverWait

from tests.e2e.conftest import Gateway, Minted
from tests.e2e.console.conftest import Browser, Console
from tests.e2e.test_audit import wait_for_records
from tests.e2e.test_spend_admin import events

pytestmark = pytest.mark.e2e

MINUTE = "%Y-%m-%dT%H:%M"
AUDIT_PAGES = ("/console/audit", "/console/audit?kind=events", "/console/audit/export?format=csv",
               "/console/audit/requests/anything", "/console/audit/events/1")


@dataclass
class Traffic:
    """Gateway requests of one user: some before a minute, the rest within it."""

    minted: Minted
    minute: datetime
    before: list[str]
    within: list[str]
    records: dict[str, dict]

    @property
    def email(self) -> str:
        return str(self.minted.user["email"])

    @property
    def minute_text(self) -> str:
        return self.minute.strftime(MINUTE)

    @property
    def allowed(self) -> str:
        return self.within[0]

    @property
    def denied(self) -> str:
        return self.within[1]


@pytest.fixture(scope="module")
def traffic(gateway: Gateway) -> Traffic:
    minted = gateway.mint(models=["gpt-4o-mini"])
    earlier = gateway.chat(minted.secret)
    assert earlier.status_code == 200, earlier.text
    # The next requests happen in the next minute, so the one above is outside it.
    now = datetime.now(UTC)
    minute = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    time.sleep((minute - now).total_seconds() + 0.5)
    allowed = gateway.chat(minted.secret)
    denied = gateway.chat(minted.secret, model="gpt-4o")
    assert (allowed.status_code, denied.status_code) == (200, 403)
    before, within = [earlier.headers["x-request-id"]], [r.headers["x-request-id"] for r in (allowed, denied)]
    records = wait_for_records(gateway, before + within)
    for request_id in within:
        assert minute <= datetime.fromisoformat(records[request_id]["at"]) < minute + timedelta(minutes=1)
    return Traffic(minted, minute, before, within, records)


def _follow(browser: Browser, css: str) -> None:
    """Click a link or a form's button and wait for the next page, like ``Browser.submit_and_wait``, but
    riding out chromedriver's passing "node does not belong to the document" while the page is replaced."""
    page = browser.find("html")
    browser.click(css)
    WebDriverWait(browser.driver, 15, ignored_exceptions=(WebDriverException,)).until(staleness_of(page))


def _shown(browser: Browser) -> list[str]:
    return [row.get_attribute("data-request-id") for row in browser.all("tr[data-request-id]")]


def _accessible(browser: Browser) -> None:
    violations = browser.axe()
    assert violations == [], [(v["id"], v["help"], [n.get("target") for n in v["nodes"]][:3]) for v in violations]


def _csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_filter_the_audit_log_to_one_minute_and_export_it(gateway: Gateway, console: Console, traffic: Traffic,
                                                          shot) -> None:
    browser = console.as_role("auditor", "/console/audit?kind=requests")
    assert browser.title.startswith("Audit log")
    assert browser.all("main form[method=post]") == []  # an auditor reads; nothing here changes anything

    # Who called in that minute: the user's e-mail and the minute, in the filter form.
    browser.fill("form.filters input[name=user]", traffic.email)
    browser.driver.execute_script("arguments[0].value = arguments[1]", browser.find("input[name=minute]"),
                                  traffic.minute_text)
    _follow(browser, "form.filters button[type=submit]")
    assert f"minute={quote(traffic.minute_text, safe='')}" in browser.path
    assert _shown(browser) == traffic.within
    assert "exactly the minute" in browser.text
    decisions = [cell.text for cell in browser.all("td[data-decision]")]
    assert decisions == ["allowed", "model_not_allowed"]
    _accessible(browser)
    shot(browser, "audit")

    # Export: exactly the rows the table shows, as the admin API exports the same filter.
    href = browser.find("a[data-export=csv]").get_attribute("href")
    with browser.http() as client:
        exported = client.get(href)
        assert exported.status_code == 200, exported.text
        assert exported.headers["content-type"].startswith("text/csv")
        assert exported.headers["content-disposition"].startswith("attachment;")
        rows = _csv_rows(exported.text)
        assert [row["request_id"] for row in rows] == traffic.within
        assert {row["user_email"] for row in rows} == {traffic.email}
        api = gateway.admin.get("/audit/requests", params={
            "start": traffic.minute.isoformat(), "end": (traffic.minute + timedelta(minutes=1)).isoformat(),
            "user": traffic.email, "format": "csv"})
        assert api.status_code == 200 and exported.text == api.text

        # The same minute without the user: every caller then, and nothing from before it.
        browser.open(f"/console/audit?kind=requests&minute={traffic.minute_text}")
        shown = _shown(browser)
        assert set(traffic.within) <= set(shown) and not set(traffic.before) & set(shown)
        everyone = _csv_rows(client.get(browser.find("a[data-export=csv]").get_attribute("href")).text)
        assert set(traffic.within) <= {row["request_id"] for row in everyone}
        assert not set(traffic.before) & {row["request_id"] for row in everyone}
        for row in everyone:
            assert traffic.minute <= datetime.fromisoformat(row["at"]) < traffic.minute + timedelta(minutes=1)

        # JSON lines and a signed export work too (the trailer is the last line).
        signed = client.get(browser.find("a[data-export=jsonl-signed]").get_attribute("href"))
        assert signed.status_code == 200 and signed.headers["content-type"].startswith("application/x-ndjson")
        assert '"keyward_export"' in signed.text.splitlines()[-1]

    # The since/until pair gives the same minute, and from a whole day the row's "that minute" link does.
    until = (traffic.minute + timedelta(minutes=1)).strftime(MINUTE)
    browser.open(f"/console/audit?kind=requests&user={quote(traffic.email)}&since={traffic.minute_text}"
                 f"&until={until}")
    assert _shown(browser) == traffic.within
    browser.open(f"/console/audit?kind=requests&user={quote(traffic.email)}")
    day = _shown(browser)
    assert set(traffic.before + traffic.within) <= set(day)
    _follow(browser, f"tr[data-request-id='{traffic.allowed}'] a[href*='minute=']")
    assert _shown(browser) == traffic.within


def test_a_record_shows_its_outcome_and_its_chain_link(gateway: Gateway, console: Console, traffic: Traffic,
                                                       shot) -> None:
    browser = console.as_bootstrap(f"/console/audit?kind=requests&user={quote(traffic.email)}"
                                   f"&minute={traffic.minute_text}")
    _follow(browser, f"tr[data-request-id='{traffic.allowed}'] td a")
    assert browser.path.startswith(f"/console/audit/requests/{traffic.allowed}")
    record = traffic.records[traffic.allowed]
    assert browser.find("[data-field=decision]").text == "allowed"
    assert browser.find("[data-field=status]").text.startswith("200")
    assert "ms" in browser.find("[data-field=latency]").text
    assert browser.find("[data-field=usage]").text.startswith("9 prompt tokens")
    assert "6 completion tokens" in browser.find("[data-field=usage]").text
    # Every digit of the cost, as stored (not rounded to cents).
    assert browser.find("[data-field=cost]").text.startswith("$" + format(Decimal(record["cost_usd"]).normalize(), "f"))
    # The chain link, as the API's export states the record.
    assert browser.find("[data-field=seq]").text == str(record["seq"])
    assert browser.find("[data-field=hash]").text == record["hash"]
    assert browser.find("[data-field=prev_hash]").text == record["prev_hash"]
    assert browser.find("[data-field=links]").text.startswith("links to the previous record")
    assert browser.find("[data-field=intact]").text.startswith("intact")
    assert browser.find("a[data-link=user]").get_attribute("href").endswith(
        f"/console/people/{traffic.minted.user['id']}")
    assert browser.find("a[data-link=token]").get_attribute("href").endswith(f"/console/tokens/{traffic.minted.id}")
    _accessible(browser)
    shot(browser, "audit-record")

    # Its predecessor's hash is its prev_hash.
    _follow(browser, "[data-chain] a[href*='seq=']")
    assert browser.find("[data-field=seq]").text == str(record["seq"] - 1)
    assert browser.find("[data-field=hash]").text == record["prev_hash"]

    denied = traffic.records[traffic.denied]
    browser.open(f"/console/audit/requests/{traffic.denied}")
    assert browser.find("[data-field=decision]").text == "model_not_allowed"
    assert browser.find("[data-field=status]").text.startswith("403")
    assert browser.find("[data-field=hash]").text == denied["hash"]

    # An event: the token's issuing, with its chain link and a link to the token.
    issued = events(gateway, action="token.issued", target_id=traffic.minted.id)
    assert len(issued) == 1
    exported = gateway.admin.get("/audit/events", params={"action": "token.issued", "target_id": traffic.minted.id,
                                                          "format": "jsonl"})
    chained = json.loads(exported.text.splitlines()[0])
    browser.open(f"/console/audit/events/{issued[0]['seq']}")
    assert browser.find("[data-field=actor]").text == issued[0]["actor"]
    assert browser.find("[data-field=mechanism]").text == issued[0]["mechanism"]
    assert browser.find("a[data-link=token]").get_attribute("href").endswith(f"/console/tokens/{traffic.minted.id}")
    assert browser.find("[data-field=hash]").text == chained["hash"]
    assert browser.find("[data-field=links]").text.startswith("links to the previous record")
    assert browser.find("[data-field=intact]").text.startswith("intact")
    _accessible(browser)

    # Records that do not exist.
    with browser.http() as client:
        assert client.get("/console/audit/requests/no-such-request").status_code == 404
        assert client.get("/console/audit/events/not-a-seq").status_code == 404
        assert client.get("/console/audit/events/999999999").status_code == 404


def test_denied_means_every_refusal_and_events_filter_by_target(gateway: Gateway, console: Console,
                                                                traffic: Traffic) -> None:
    browser = console.as_bootstrap()
    # The overview's count of refusals leads here.
    _follow(browser, "a[data-figure=denials-24h]")
    assert browser.path.startswith("/console/audit?kind=requests&decision=denied&since=")
    assert browser.find("select[name=decision] option[selected]").get_attribute("value") == "denied"
    assert "allowed" not in [cell.text for cell in browser.all("td[data-decision]")]
    browser.fill("form.filters input[name=user]", traffic.email)
    _follow(browser, "form.filters button[type=submit]")
    shown = _shown(browser)
    assert traffic.denied in shown and traffic.allowed not in shown and not set(traffic.before) & set(shown)
    assert all(cell.text != "allowed" for cell in browser.all("td[data-decision]"))
    browser.fill("form.filters select[name=decision]", "allowed")
    _follow(browser, "form.filters button[type=submit]")
    assert set(_shown(browser)) == {traffic.allowed, *traffic.before}

    # Events: by action and target, each linking to its detail.
    since = (datetime.now(UTC) - timedelta(hours=1)).strftime(MINUTE)
    browser.open(f"/console/audit?kind=events&action=token.issued&target_type=token&target_id={traffic.minted.id}"
                 f"&since={since}")
    rows = browser.all("tr[data-seq]")
    assert len(rows) == 1 and rows[0].find_element("css selector", "td[data-action]").text == "token.issued"
    _accessible(browser)
    browser.fill("form.filters input[name=action]", "token.revoked")
    _follow(browser, "form.filters button[type=submit]")
    assert browser.all("tr[data-seq]") == []

    # A filter that is not one is answered with a page saying why.
    with browser.http() as client:
        for bad in ("since=yesterday", "token_id=nope", "status=999", "kind=tokens", "since=2030-01-01T00:00",
                    "cursor=garbage"):
            reply = client.get(f"/console/audit?{bad}")
            said = ("not valid", "cannot be shown", "not an id")
            assert reply.status_code == 422 and any(words in reply.text for words in said), bad
        assert client.get("/console/audit/export?format=xml").status_code == 422


def test_finance_and_owner_are_refused_the_audit_log(gateway: Gateway, console: Console) -> None:
    team = gateway.team()
    for role in ("finance", "owner"):
        browser = console.as_role(role, team=team)
        assert "Audit log" not in [a.text for a in browser.all("nav[aria-label='Console sections'] a")]
        browser.open("/console/audit?kind=requests")
        assert "Not for your role" in browser.text
        with browser.http() as client:
            for path in AUDIT_PAGES:
                reply = client.get(path)
                assert reply.status_code == 403, (role, path, reply.status_code)
                assert "Not for your role" in reply.text
            # Nothing here changes anything: there is no form to forge.
            assert client.post("/console/audit", data={}).status_code == 405
