"""The console's people pages against the real stack: the lists, a person and a service account, and the
actions (deprovision, suspend, reactivate, revoke every token, reassign owners, disable), each with its
effect at the gateway and its audit event (mechanism ``console``); who sees which buttons, and that the
server refuses the rest."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.conftest import Gateway
from tests.e2e.console.conftest import Browser, Console
from tests.e2e.test_spend_admin import _unique, events, made

pytestmark = pytest.mark.e2e


def _clean(browser: Browser) -> None:
    violations = browser.axe()
    assert violations == [], [(v["id"], v["help"], [n.get("target") for n in v["nodes"]][:3]) for v in violations]


def _account(gateway: Gateway, team: dict, business: dict, technical: dict) -> dict:
    return made(gateway.admin.post("/service-accounts", json={
        "name": _unique("agent"), "team_id": team["id"], "business_owner_id": business["id"],
        "technical_owner_id": technical["id"]}))


def _working_token(gateway: Gateway, **fields: Any) -> dict:
    minted = made(gateway.admin.post("/tokens", json={"name": _unique("t"), **fields}))
    gateway.wait_until(lambda: gateway.status_of(minted["token"]) == 200, what="the new token to work")
    return minted


def _confirm(browser: Browser, action: str) -> None:
    """Click an action's button, then the confirmation page's."""
    browser.submit_and_wait(f"[data-action='{action}']")
    browser.submit_and_wait("main form.stack button[type=submit]")


def _last_event(gateway: Gateway, **filters: str) -> dict:
    found = events(gateway, **filters)
    assert found, filters
    return found[-1]


def test_deprovision_a_person(gateway: Gateway, console: Console, shot) -> None:
    """The issue's scenario: an admin deprovisions someone in the console; from the answer on, the gateway
    refuses their token, their status says so, and the event names the console."""
    team = gateway.team(_unique("people"))
    minted = gateway.mint(team=team)
    person = minted.user
    assert gateway.chat(minted.secret).status_code == 200

    browser = console.as_bootstrap(f"/console/people/{person['id']}")
    assert person["email"] in browser.find("h1").text
    assert browser.find("[data-status]").text == "active"
    assert browser.find("dd[data-live]").get_attribute("data-live") == "1"
    assert team["name"] in browser.text
    assert browser.all(f"table[aria-label='Effective access'] tr[data-token='{minted.id}']")
    assert "usable" in browser.find(f"table[aria-label='Effective access'] tr[data-token='{minted.id}']").text
    _clean(browser)
    shot(browser, "person")

    browser.submit_and_wait("[data-action='deprovision']")
    assert browser.path == f"/console/people/{person['id']}/status/confirm?status=deprovisioned"
    assert "revoked" in browser.text and person["email"] in browser.text
    browser.submit_and_wait("main form.stack button[type=submit]")
    assert browser.path.startswith(f"/console/people/{person['id']}?done=")
    flash = browser.find(".flash").text
    assert "is deprovisioned" in flash and "confirmed" in flash, flash
    assert browser.find("[data-status]").text == "deprovisioned"

    # The answer came once every replica applied it: the gateway refuses the token now, not eventually.
    reply = gateway.chat(minted.secret)
    assert reply.status_code == 401, reply.text
    assert reply.json()["error"]["code"] == "token_revoked"
    assert made(gateway.admin.get(f"/users/{person['id']}"), 200)["status"] == "deprovisioned"
    assert "revoked" in browser.find(f"table[aria-label='Tokens'] tr[data-token='{minted.id}']").text
    assert browser.find("dd[data-allowed-after]").get_attribute("data-allowed-after") == "0"

    deprovisioned = _last_event(gateway, target_id=person["id"], action="user.deprovisioned")
    assert deprovisioned["mechanism"] == "console" and deprovisioned["actor"] == "admin:bootstrap"
    assert deprovisioned["after"]["status"] == "deprovisioned"
    revoked = _last_event(gateway, target_id=minted.id, action="token.revoked")
    assert revoked["mechanism"] == "console"
    confirmed = _last_event(gateway, target_id=person["id"], action="revocation.confirmed")
    assert confirmed["mechanism"] == "console" and confirmed["after"]["applied"] is True


def test_revoke_every_token_then_suspend_and_reactivate(gateway: Gateway, console: Console) -> None:
    team = gateway.team(_unique("people"))
    first = gateway.mint(team=team)
    person = first.user
    second = gateway.mint(person, team)
    browser = console.as_bootstrap(f"/console/people/{person['id']}")
    assert browser.find("dd[data-live]").get_attribute("data-live") == "2"

    browser.submit_and_wait("[data-action='revoke-tokens']")
    browser.fill("main form.stack input[name=reason]", "laptop stolen")
    browser.submit_and_wait("main form.stack button[type=submit]")
    assert "2 tokens revoked" in browser.find(".flash").text
    for minted in (first, second):
        assert gateway.chat(minted.secret).status_code == 401
        event = _last_event(gateway, target_id=minted.id, action="token.revoked")
        assert event["mechanism"] == "console" and event["after"]["reason"] == "laptop stolen"
    assert not browser.all("[data-action='revoke-tokens']")  # nothing live is left to revoke

    # Suspension stops a live token at the gateway; reactivation lets it through again.
    third = gateway.mint(person, team)
    browser.open(f"/console/people/{person['id']}")
    _confirm(browser, "suspend")
    assert browser.find("[data-status]").text == "suspended"
    reply = gateway.chat(third.secret)
    assert reply.status_code == 401 and reply.json()["error"]["code"] == "owner_disabled"
    suspended = _last_event(gateway, target_id=person["id"], action="user.suspended")
    assert suspended["mechanism"] == "console"

    _confirm(browser, "reactivate")
    assert browser.find("[data-status]").text == "active"
    gateway.wait_until(lambda: gateway.status_of(third.secret) == 200, what="the token to work again")
    assert _last_event(gateway, target_id=person["id"], action="user.activated")["mechanism"] == "console"


def test_the_people_list_filters_sorts_and_pages(gateway: Gateway, console: Console, shot) -> None:
    marker = _unique("plist")
    team = gateway.team(_unique("people"))
    alice = gateway.user(email=f"{marker}-alice@example.com", display_name="Alice Example")
    bob = gateway.user(email=f"{marker}-bob@example.com")
    gateway.mint(alice, team)
    made(gateway.admin.patch(f"/users/{bob['id']}", json={"status": "suspended"}), 200)

    browser = console.as_bootstrap(f"/console/people?q={marker}")
    rows = browser.all("tr[data-person]")
    assert [row.get_attribute("data-person") for row in rows] == [alice["id"], bob["id"]]
    alice_row = browser.find(f"tr[data-person='{alice['id']}']")
    assert team["name"] in alice_row.text and "Alice Example" in alice_row.text
    assert alice_row.find_element("css selector", "td[data-live]").get_attribute("data-live") == "1"
    assert "suspended" in browser.find(f"tr[data-person='{bob['id']}']").text
    assert "Last request" in browser.text  # admins and auditors see it
    _clean(browser)
    shot(browser, "people")

    # Sorting by e-mail, descending, keeps the filter.
    browser.submit_and_wait("th a[href*='sort=-email']")
    assert f"q={marker}" in browser.path
    assert [row.get_attribute("data-person") for row in browser.all("tr[data-person]")] == [bob["id"], alice["id"]]

    # The status filter, through the form.
    browser.fill("form.filters select[name=status]", "suspended")
    browser.submit_and_wait("form.filters button[type=submit]")
    assert [row.get_attribute("data-person") for row in browser.all("tr[data-person]")] == [bob["id"]]

    # Fifty a page, then the next page by cursor.
    for index in range(50):
        gateway.user(email=f"{marker}-z{index:02d}@example.com")
    browser.open(f"/console/people?q={marker}")
    assert len(browser.all("tr[data-person]")) == 50
    browser.submit_and_wait("a[rel=next]")
    assert "cursor=" in browser.path and len(browser.all("tr[data-person]")) == 2


def test_reassign_and_disable_a_service_account(gateway: Gateway, console: Console, shot) -> None:
    team = gateway.team(_unique("robots"))
    leaver, technical, successor = gateway.user(), gateway.user(), gateway.user()
    gateway.join(successor, team)
    robot = _account(gateway, team, leaver, technical)
    token = _working_token(gateway, service_account_id=robot["id"])
    made(gateway.admin.patch(f"/users/{leaver['id']}", json={"status": "deprovisioned"}), 200)

    # The list shows it flagged, with its team and owners.
    browser = console.as_bootstrap(f"/console/people/service-accounts?team_id={team['id']}")
    row = browser.find(f"tr[data-account='{robot['id']}']")
    assert team["name"] in row.text and leaver["email"] in row.text and row.find_elements("css selector",
                                                                                           "[data-flagged]")
    _clean(browser)

    browser.submit_and_wait(f"tr[data-account='{robot['id']}'] a")
    assert browser.path == f"/console/people/service-accounts/{robot['id']}"
    assert browser.all("p[data-flagged]") and leaver["email"] in browser.find("tr[data-owner=business_owner]").text
    assert browser.all(f"table[aria-label='Effective access'] tr[data-token='{token['id']}']")
    _clean(browser)
    shot(browser, "service-account")

    # A person who does not exist is refused, and nothing changes.
    browser.fill("#reassign input[name=business_owner]", "nobody-at-all@example.com")
    browser.submit_and_wait("#reassign button[type=submit]")
    assert "nobody has the e-mail address" in browser.text
    assert made(gateway.admin.get(f"/service-accounts/{robot['id']}"), 200)["business_owner_id"] == leaver["id"]

    browser.open(f"/console/people/service-accounts/{robot['id']}")
    browser.fill("#reassign input[name=business_owner]", successor["email"])
    browser.submit_and_wait("#reassign button[type=submit]")
    assert "no longer flagged" in browser.find(".flash").text
    assert successor["email"] in browser.find("tr[data-owner=business_owner]").text
    assert not browser.all("p[data-flagged]")
    stored = made(gateway.admin.get(f"/service-accounts/{robot['id']}"), 200)
    assert stored["business_owner_id"] == successor["id"] and stored["reassign_by"] is None
    updated = _last_event(gateway, target_id=robot["id"], action="service_account.updated")
    assert updated["mechanism"] == "console" and updated["actor"] == "admin:bootstrap"
    assert updated["after"]["business_owner_id"] == successor["id"]
    assert gateway.status_of(token["token"]) == 200

    # Disabling it stops its token at the gateway.
    _confirm(browser, "disable")
    assert "is disabled" in browser.find(".flash").text
    gateway.wait_until(lambda: gateway.status_of(token["token"]) == 401, what="the gateway to refuse its token")
    disabled = _last_event(gateway, target_id=robot["id"], action="service_account.updated")
    assert disabled["mechanism"] == "console" and disabled["after"]["status"] == "disabled"


def test_an_auditor_sees_no_actions_and_forged_posts_are_refused(gateway: Gateway, console: Console) -> None:
    team = gateway.team(_unique("people"))
    minted = gateway.mint(team=team)
    person = minted.user
    robot = _account(gateway, team, person, gateway.user())
    auditor = console.as_role("auditor", f"/console/people/{person['id']}")
    csrf = auditor.csrf
    assert person["email"] in auditor.text and "Activity" in auditor.text
    assert not auditor.all("[data-action]") and not auditor.all("main form[method=post]")
    auditor.open(f"/console/people/service-accounts/{robot['id']}")
    assert robot["name"] in auditor.text
    assert not auditor.all("[data-action]") and not auditor.all("#reassign")
    auditor.open(f"/console/people/{person['id']}/status/confirm?status=deprovisioned")
    assert "Not for your role" in auditor.text

    # The auditor's own session and CSRF token: refused for the role.
    with auditor.http() as client:
        for path, data in ((f"/console/people/{person['id']}/status", {"status": "deprovisioned"}),
                           (f"/console/people/{person['id']}/revoke-tokens", {}),
                           (f"/console/people/service-accounts/{robot['id']}/owners",
                            {"business_owner": person["email"], "technical_owner": person["email"]}),
                           (f"/console/people/service-accounts/{robot['id']}/status", {"status": "disabled"})):
            assert client.post(path, data={"csrf": csrf, **data}).status_code == 403, path

    # An admin's session without the right CSRF token, or from another site: refused too.
    admin = console.as_bootstrap(f"/console/people/{person['id']}")
    with admin.http() as client:
        path = f"/console/people/{person['id']}/status"
        assert client.post(path, data={"status": "deprovisioned"}).status_code == 403
        assert client.post(path, data={"status": "deprovisioned", "csrf": "0" * 64}).status_code == 403
        assert client.post(path, data={"status": "deprovisioned", "csrf": admin.csrf},
                           headers={"Origin": "https://evil.example"}).status_code == 403
    assert made(gateway.admin.get(f"/users/{person['id']}"), 200)["status"] == "active"
    assert gateway.chat(minted.secret).status_code == 200
    assert not events(gateway, target_id=person["id"], action="user.deprovisioned")


def test_a_team_owner_sees_their_teams_accounts_and_tokens_only(gateway: Gateway, console: Console) -> None:
    mine, theirs = gateway.team(_unique("owned")), gateway.team(_unique("other"))
    person, other = gateway.user(), gateway.user()
    in_mine = gateway.mint(person, mine)
    in_theirs = gateway.mint(person, theirs)
    my_robot = _account(gateway, mine, person, other)
    their_robot = _account(gateway, theirs, person, other)

    owner = console.as_role("owner", "/console/people/service-accounts", team=mine)
    listed = {row.get_attribute("data-account") for row in owner.all("tr[data-account]")}
    assert my_robot["id"] in listed and their_robot["id"] not in listed
    _clean(owner)

    owner.open(f"/console/people/service-accounts/{their_robot['id']}")
    assert "may not manage that team" in owner.text
    owner.open(f"/console/people/service-accounts/{my_robot['id']}")
    assert owner.all("#reassign") and owner.all("[data-action='disable']")

    # A person's page: the tokens acting for the owner's team only, no activity, no admin actions.
    owner.open(f"/console/people/{person['id']}")
    tokens = {row.get_attribute("data-token") for row in owner.all("table[aria-label='Tokens'] tr[data-token]")}
    assert tokens == {in_mine.id}
    reach = {row.get_attribute("data-token")
             for row in owner.all("table[aria-label='Effective access'] tr[data-token]")}
    assert reach == {in_mine.id}
    assert mine["name"] in owner.text and theirs["name"] not in owner.text
    assert not owner.all("[data-action]") and "Activity" not in owner.text
    with owner.http() as client:
        reply = client.post(f"/console/people/{person['id']}/status",
                            data={"csrf": owner.csrf, "status": "deprovisioned"})
        assert reply.status_code == 403
        reply = client.post(f"/console/people/service-accounts/{their_robot['id']}/status",
                            data={"csrf": owner.csrf, "status": "disabled"})
        assert reply.status_code == 403
    assert gateway.status_of(in_theirs.secret) == 200
    assert made(gateway.admin.get(f"/service-accounts/{their_robot['id']}"), 200)["status"] == "active"
