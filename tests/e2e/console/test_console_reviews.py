"""The console's Reviews & register section in a real browser: a small access review completed end to end
(with an exception someone else approves, and a rotation whose secret is shown once), what an auditor
sees and may not do, and the register with its filters, pages, CSV export and the evidence pack."""

from __future__ import annotations

import csv
import io
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from tests.e2e.conftest import Gateway, Minted
from tests.e2e.console.conftest import Browser, Console, unique
from tests.e2e.oidc.harness import ACCOUNTS
from tests.e2e.test_spend_admin import events, made

pytestmark = pytest.mark.e2e

ADELE = f"oidc:{ACCOUNTS['adele'].email}"
BOOTSTRAP = "admin:bootstrap"


@dataclass
class Scope:
    """One team's credentials: Bob's token, and a service account whose business owner left (flagged
    orphaned, so keeping it needs an exception) with its one token."""

    team: dict
    bob_token: Minted
    account: dict
    account_token: dict


def small_scope(gateway: Gateway) -> Scope:
    admin = gateway.admin
    team = gateway.team(unique("console-reviews"))
    bob_token = gateway.mint(gateway.user(), team)
    dave, erin = gateway.user(), gateway.user()
    for person in (dave, erin):
        gateway.join(person, team)
    account = made(admin.post("/service-accounts", json={
        "name": unique("etl"), "team_id": team["id"], "business_owner_id": dave["id"],
        "technical_owner_id": erin["id"]}))
    account_token = made(admin.post("/tokens", json={"service_account_id": account["id"], "name": "etl",
                                                     "environment": "dev"}))
    made(admin.patch(f"/users/{dave['id']}", json={"status": "deprovisioned"}), 200)  # dave left
    return Scope(team, bob_token, account, account_token)


def set_date(browser: Browser, css: str, day: str) -> None:
    """A date input's value, set as the page would get it (typing depends on the browser's locale)."""
    browser.driver.execute_script("arguments[0].value = arguments[1];", browser.find(css), day)


def in_days(days: int) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).date().isoformat()


def accessible(browser: Browser) -> None:
    violations = browser.axe()
    assert violations == [], [(v["id"], v["help"], [n.get("target") for n in v["nodes"]][:3]) for v in violations]


def decide(browser: Browser, review_id: str, subject_id: str, decision: str, reason: str,
           expires: str | None = None, check: bool = False) -> None:
    """Open the item's decide page from the review and carry ``decision`` out."""
    browser.open(f"/console/reviews/{review_id}")
    browser.submit_and_wait(f"tr[data-subject='{subject_id}'] a[href$='/decide']")
    if check:
        accessible(browser)
    browser.fill("#decide select[name=decision]", decision)
    browser.fill("#decide input[name=reason]", reason)
    if decision == "rotate":
        browser.fill("#decide input[name=grace_hours]", "0")
    if expires:
        set_date(browser, "#decide input[name=exception_expires]", expires)
    browser.submit_and_wait("#decide button[type=submit]")


def test_complete_a_small_access_review_with_an_exception(gateway: Gateway, console: Console, shot) -> None:
    scope = small_scope(gateway)
    bob, account, account_token = scope.bob_token.id, scope.account["id"], scope.account_token["id"]
    admin = console.as_bootstrap("/console/reviews")

    # Open a review over the team's credentials.
    name = unique("console-review")
    admin.fill("#open-review input[name=name]", name)
    admin.fill("#open-review select[name=team_id]", scope.team["id"])
    admin.submit_and_wait("#open-review button[type=submit]")
    assert admin.path.startswith("/console/reviews/") and f"Opened the review {name}" in admin.text
    review_id = admin.path.split("?")[0].rsplit("/", 1)[1]
    subjects = {row.get_attribute("data-subject") for row in admin.all("tr[data-item]")}
    assert subjects == {bob, account, account_token}
    assert admin.find("[data-progress]").get_attribute("data-progress") == "0/3"

    # Keep Bob's token; keeping the orphaned account needs an exception (refused without an expiry).
    decide(admin, review_id, bob, "keep", "daily use", check=True)
    assert "Decided" in admin.text and "keep" in admin.text
    admin.fill("form.filters select[name=state]", "undecided")
    admin.submit_and_wait("form.filters button[type=submit]")
    assert {row.get_attribute("data-subject") for row in admin.all("tr[data-item]")} == {account, account_token}
    decide(admin, review_id, account, "keep", "migration ends this month")
    assert "needs an exception" in admin.text
    decide(admin, review_id, account, "keep", "migration ends this month", expires=in_days(30))
    assert "someone else must approve it" in admin.text
    assert admin.find(f"tr[data-subject='{account}'] [data-state]").get_attribute("data-state") == \
        "awaiting_exception"

    # Rotate the account's token: the new secret is shown once, and works at the gateway.
    decide(admin, review_id, account_token, "rotate", "secret was in a CI log")
    secret = admin.find(".secret").text
    assert secret.startswith("kw_") and "only time" in admin.text
    accessible(admin)
    gateway.wait_until(lambda: gateway.known(secret), what="the rotated secret to reach authz")
    admin.open(f"/console/reviews/{review_id}")
    assert secret not in admin.driver.page_source
    assert admin.find("[data-progress]").get_attribute("data-progress") == "2/3"

    # The requester cannot approve its own exception; the OIDC admin, someone else, does.
    exception_id = made(gateway.admin.get(f"/reviews/{review_id}"), 200)
    exception_id = next(i["exception_id"] for i in exception_id["items"] if i["subject_id"] == account)
    admin.open("/console/exceptions?status=pending")
    row = f"tr[data-exception='{exception_id}']"
    assert "awaiting someone else" in admin.find(row).text and not admin.all(f"{row} a[href$='/approve']")
    adele = console.as_role("admin", "/console/exceptions?status=pending")
    accessible(adele)
    adele.submit_and_wait(f"{row} a[href$='/approve']")
    adele.fill("input[name=note]", "checked with the data team")
    adele.submit_and_wait(f"form[action='/console/exceptions/{exception_id}/approve'] button[type=submit]")
    assert "is approved" in adele.text
    assert made(gateway.admin.get(f"/exceptions/{exception_id}"), 200)["approved_by"] == ADELE

    # Every item decided: close the review, after a confirmation.
    admin.open(f"/console/reviews/{review_id}")
    assert admin.find("[data-progress]").get_attribute("data-progress") == "3/3"
    shot(admin, "review")
    admin.submit_and_wait(f"a[href='/console/reviews/{review_id}/close']")
    admin.submit_and_wait(f"form[action='/console/reviews/{review_id}/close'] button[type=submit]")
    assert admin.find("[data-status]").get_attribute("data-status") == "closed" and "sha256" in admin.text
    assert not admin.all("a[href$='/decide']")
    admin.open("/console/reviews")
    assert name in admin.text
    accessible(admin)
    shot(admin, "reviews")

    # The report: the API's document, as a download, listing each decision.
    with admin.http() as client:
        reply = client.get(f"/console/reviews/{review_id}/report")
    assert reply.status_code == 200 and "attachment" in reply.headers["content-disposition"]
    assert reply.json() == made(gateway.admin.get(f"/reviews/{review_id}/report"), 200)
    report = reply.json()["report"]
    decided = {row["subject_id"]: row for row in report["items"]}
    assert {s: row["decision"] for s, row in decided.items()} == {bob: "keep", account: "keep",
                                                                  account_token: "rotate"}
    assert all(row["decided_by"] == BOOTSTRAP and row["state"] == "decided" for row in decided.values())
    assert decided[account]["exception_id"] == exception_id
    (exception,) = report["exceptions"]
    assert exception["status"] == "approved" and exception["approved_by"] == ADELE

    # Every change is on record, by the console.
    item_ids = [row["item_id"] for row in report["items"]]
    recorded = [*events(gateway, action="review.opened", target_id=review_id),
                *events(gateway, action="review.closed", target_id=review_id),
                *events(gateway, action="exception.requested", target_id=exception_id),
                *events(gateway, action="exception.approved", target_id=exception_id),
                *(e for item in item_ids for e in events(gateway, action="review.item_decided", target_id=item))]
    assert len(recorded) == 7
    assert {e["mechanism"] for e in recorded} == {"console"}
    assert {e["actor"] for e in recorded} == {BOOTSTRAP, ADELE}
    assert [e["actor"] for e in recorded if e["action"] == "exception.approved"] == [ADELE]


def test_an_auditor_sees_no_actions_and_a_forged_post_is_refused(gateway: Gateway, console: Console) -> None:
    scope = small_scope(gateway)
    review = made(gateway.admin.post("/reviews", json={"name": unique("audited"), "scope": {
        "team_id": scope.team["id"]}, "due_at": (datetime.now(UTC) + timedelta(days=7)).isoformat()}))
    item = review["items"][0]
    exception = made(gateway.admin.post("/exceptions", json={
        "subject_type": "service_account", "subject_id": scope.account["id"], "condition": "orphaned",
        "reason": "waiting for a new owner", "expires_at": (datetime.now(UTC) + timedelta(days=10)).isoformat()}))

    auditor = console.as_role("auditor", f"/console/reviews/{review['id']}")
    assert len(auditor.all("tr[data-item]")) == 3
    posting = "form[method=post]:not([action='/console/sign-out'])"
    assert not auditor.all("a[href$='/decide']") and not auditor.all("a[href$='/close']") and not auditor.all(posting)
    accessible(auditor)
    auditor.open("/console/reviews")
    assert review["name"] in auditor.text and not auditor.all("#open-review") and not auditor.all(posting)
    auditor.open("/console/exceptions")
    assert auditor.all(f"tr[data-exception='{exception['id']}']")
    assert not auditor.all("a[href*='/approve']") and not auditor.all("a[href*='/withdraw']")
    assert not auditor.all("a[href='/console/exceptions/new']")
    auditor.open(f"/console/register?team_id={scope.team['id']}")
    assert auditor.all("a[data-export]") and auditor.all("a[data-evidence]")
    assert not auditor.all("a[href^='/console/exceptions/new']")
    token = auditor.csrf
    auditor.open(f"/console/reviews/{review['id']}/items/{item['id']}/decide")
    assert "Not for your role" in auditor.text

    # Forged POSTs: the auditor's own valid CSRF token does not give it a role; no token, nothing.
    decide_path = f"/console/reviews/{review['id']}/items/{item['id']}/decide"
    with auditor.http() as client:
        for path, fields in ((f"/console/reviews/{review['id']}/close", {}),
                             (decide_path, {"decision": "disable", "reason": "forged"}),
                             (f"/console/exceptions/{exception['id']}/approve", {}),
                             ("/console/reviews", {"name": "forged", "due": "2099-01-01"})):
            assert client.post(path, data={"csrf": token, **fields}).status_code == 403, path
    admin = console.as_bootstrap(f"/console/reviews/{review['id']}")
    with admin.http() as client:
        assert client.post(f"/console/reviews/{review['id']}/close", data={}).status_code == 403
        assert client.post(decide_path, data={"csrf": "0" * 64, "decision": "disable",
                                              "reason": "forged"}).status_code == 403
    after = made(gateway.admin.get(f"/reviews/{review['id']}"), 200)
    assert after["status"] == "open" and after["progress"]["decided"] == 0
    assert made(gateway.admin.get(f"/exceptions/{exception['id']}"), 200)["status"] == "pending"
    assert gateway.status_of(scope.bob_token.secret) == 200


def test_a_team_owner_decides_only_its_own_teams_items(gateway: Gateway, console: Console) -> None:
    ours_team, theirs_team = gateway.team(unique("console-owned")), gateway.team(unique("console-other"))
    ours, theirs = gateway.mint(gateway.user(), ours_team), gateway.mint(gateway.user(), theirs_team)
    review = made(gateway.admin.post("/reviews", json={"name": unique("every-personal"), "scope": {
        "kinds": ["personal"]}, "due_at": (datetime.now(UTC) + timedelta(days=7)).isoformat()}))
    theirs_item = next(i for i in review["items"] if i["subject_id"] == theirs.id)

    owner = console.as_role("owner", f"/console/reviews/{review['id']}", team=ours_team)
    assert {row.get_attribute("data-subject") for row in owner.all("tr[data-item]")} == {ours.id}
    assert not owner.all("a[href$='/close']")
    decide(owner, review["id"], ours.id, "disable", "nobody uses it")
    assert "Decided" in owner.text
    gateway.wait_until(lambda: gateway.status_of(ours.secret) == 401, what="the disabled token to stop")
    (decided,) = events(gateway, action="review.item_decided",
                        target_id=next(i["id"] for i in review["items"] if i["subject_id"] == ours.id))
    assert decided["mechanism"] == "console" and decided["actor"] == f"oidc:{ACCOUNTS['otto'].email}"

    # Another team's item: not offered, and refused when asked for.
    owner.open(f"/console/reviews/{review['id']}/items/{theirs_item['id']}/decide")
    assert "may not manage that team" in owner.text
    assert gateway.status_of(theirs.secret) == 200


def test_the_register_filters_pages_exports_and_links_the_evidence_pack(gateway: Gateway, console: Console,
                                                                       shot) -> None:
    scope = small_scope(gateway)
    crowd = gateway.team(unique("console-register-crowd"))
    person = gateway.user()
    gateway.join(person, crowd)
    for number in range(52):
        made(gateway.admin.post("/tokens", json={"user_id": person["id"], "team_id": crowd["id"],
                                                 "name": f"crowd-{number}"}))

    auditor = console.as_role("auditor", "/console/register")
    auditor.fill("form.filters select[name=team_id]", scope.team["id"])
    auditor.submit_and_wait("form.filters button[type=submit]")
    rows = {row.get_attribute("data-row") for row in auditor.all("tr[data-row]")}
    assert rows == {scope.bob_token.id, scope.account["id"], scope.account_token["id"]}
    assert "orphaned" in auditor.find(f"tr[data-row='{scope.account['id']}']").text
    accessible(auditor)
    shot(auditor, "register")

    # Filters combine: the personal kind; only the orphaned rows.
    auditor.fill("form.filters select[name=kind]", "personal")
    auditor.submit_and_wait("form.filters button[type=submit]")
    assert [row.get_attribute("data-row") for row in auditor.all("tr[data-row]")] == [scope.bob_token.id]
    auditor.open(f"/console/register?team_id={scope.team['id']}&only=orphaned")
    orphaned = {row.get_attribute("data-row") for row in auditor.all("tr[data-row]")}
    assert scope.account["id"] in orphaned and scope.bob_token.id not in orphaned

    # Pages of 50.
    auditor.open(f"/console/register?team_id={crowd['id']}")
    assert len(auditor.all("tr[data-row]")) == 50 and "50 of 52" in auditor.text
    auditor.submit_and_wait("a[rel=next]")
    assert len(auditor.all("tr[data-row]")) == 2 and f"team_id={crowd['id']}" in auditor.path

    # The CSV export of the current filter is the API's.
    auditor.open(f"/console/register?team_id={scope.team['id']}&kind=personal&kind=service")
    export = auditor.find("a[data-export]").get_attribute("href")
    with auditor.http() as client:
        reply = client.get(export)
        assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/csv")
        ours = list(csv.DictReader(io.StringIO(reply.text)))
        api = gateway.admin.get("/register", params={"team_id": scope.team["id"], "kind": ["personal", "service"],
                                                     "format": "csv"})
        theirs = list(csv.DictReader(io.StringIO(api.text)))
        assert reply.text.splitlines()[0] == api.text.splitlines()[0]
        assert [row["id"] for row in ours] == [row["id"] for row in theirs] and len(ours) == 3

        # The evidence pack: the API's zip (built on request, a few seconds on big data).
        pack = client.get(auditor.find("a[data-evidence]").get_attribute("href"))
    assert pack.status_code == 200 and pack.headers["content-type"] == "application/zip"
    assert "attachment" in pack.headers["content-disposition"]
    from_api = gateway.admin.get("/evidence", timeout=60)
    names = zipfile.ZipFile(io.BytesIO(pack.content)).namelist()
    assert names == zipfile.ZipFile(io.BytesIO(from_api.content)).namelist() and "register.csv" in names
    manifest = zipfile.ZipFile(io.BytesIO(pack.content)).read("manifest.json")
    assert f"oidc:{ACCOUNTS['audrey'].email}".encode() in manifest
