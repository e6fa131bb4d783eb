"""The console's Tokens section: search and filter, one token, and mint, revoke, rotate and narrow, each
through the admin API's own service functions and checks, recorded with the mechanism ``console``."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from tests.e2e.conftest import Gateway
from tests.e2e.console.conftest import Browser, Console, console_form_fields, unique
from tests.e2e.oidc.harness import ACCOUNTS
from tests.e2e.test_denials import assert_openai_error, sql
from tests.e2e.test_spend_admin import events, made

pytestmark = pytest.mark.e2e

SUBMIT = "form.stack [type=submit]"


def _listed(browser: Browser) -> list[str]:
    return [row.get_attribute("data-token") for row in browser.all("tr[data-token]")]


def _accessible(browser: Browser) -> None:
    violations = browser.axe()
    assert violations == [], [(v["id"], v["help"], [n.get("target") for n in v["nodes"]][:3]) for v in violations]


def _api_token(gateway: Gateway, token_id: str) -> dict:
    return made(gateway.admin.get(f"/tokens/{token_id}"), 200)


def _only(found: list[dict]) -> dict:
    assert len(found) == 1, found
    return found[0]


def test_find_a_dormant_token_and_revoke_it_then_the_gateway_refuses_it(gateway: Gateway, console: Console,
                                                                          shot) -> None:
    team = gateway.team()
    dormant, busy = gateway.mint(team=team, name=unique("dormant")), gateway.mint(team=team, name=unique("busy"))
    assert gateway.status_of(busy.secret) == 200
    # As tests/e2e/test_lifecycle.py does: pretend both were minted 40 days ago; only one was used since.
    sql(gateway, "UPDATE tokens SET created_at = now() - interval '40 days' WHERE id = ANY($1::uuid[])",
        [dormant.id, busy.id])
    gateway.wait_until(lambda: _api_token(gateway, busy.id)["last_used_at"] is not None, what="last_used_at")

    browser = console.as_bootstrap(f"/console/tokens?team_id={team['id']}")
    assert set(_listed(browser)) == {dormant.id, busy.id}
    browser.fill("select[name=state]", "active")
    browser.fill("input[name=dormant_days]", "30")
    browser.submit_and_wait("form.filters [type=submit]")
    assert "dormant_days=30" in browser.path and f"team_id={team['id']}" in browser.path
    assert _listed(browser) == [dormant.id]
    row = browser.find(f"tr[data-token='{dormant.id}']")
    assert "never" in row.text and "40 days ago" in row.text and "usable" in row.text
    _accessible(browser)
    shot(browser, "tokens")

    browser.submit_and_wait(f"tr[data-token='{dormant.id}'] a[href='/console/tokens/{dormant.id}']")
    assert browser.find("[data-effective]").text == "usable" and dormant.token["hint"] in browser.text
    assert dormant.user["email"] in browser.text and team["name"] in browser.text
    _accessible(browser)
    shot(browser, "token")

    browser.submit_and_wait("a[data-action=revoke]")
    assert browser.path == f"/console/tokens/{dormant.id}/revoke" and "cannot be undone" in browser.text
    _accessible(browser)
    browser.fill("input[name=reason]", "dormant for 40 days")
    browser.submit_and_wait(SUBMIT)
    assert browser.path.startswith(f"/console/tokens/{dormant.id}?done=")
    assert "every gateway replica refuses it now" in browser.text
    assert browser.find("[data-status]").text == "revoked"
    assert browser.find("[data-effective]").text == "token_revoked"
    assert not browser.all("a[data-action]")

    # The revoke answered once every replica applied it: the very next request is refused.
    assert_openai_error(gateway.chat(dormant.secret), 401, "token_revoked")
    assert gateway.status_of(busy.secret) == 200
    event = _only(events(gateway, action="token.revoked", target_id=dormant.id))
    assert event["mechanism"] == "console" and event["actor"] == "admin:bootstrap"
    assert event["after"]["revoke_reason"] == "dormant for 40 days"
    confirmed = _only(events(gateway, action="revocation.confirmed", target_id=dormant.id))
    assert confirmed["mechanism"] == "console" and confirmed["after"]["applied"] is True


def test_filters_sorts_and_pages(gateway: Gateway, console: Console) -> None:
    team = gateway.team()
    alpha, bravo = gateway.mint(team=team, name="alpha-x"), gateway.mint(team=team, name="bravo-x")
    charlie = gateway.mint(team=team, name="charlie-x", environment="prod", expires_in_days=2)
    browser = console.as_bootstrap(f"/console/tokens?team_id={team['id']}&sort=name")
    assert _listed(browser) == [alpha.id, bravo.id, charlie.id]
    browser.submit_and_wait("th[aria-sort=ascending] a")  # the Name header again: descending
    assert "sort=-name" in browser.path and _listed(browser) == [charlie.id, bravo.id, alpha.id]

    base = f"/console/tokens?team_id={team['id']}&sort=name"
    in_five_days = (datetime.now(UTC) + timedelta(days=5)).date().isoformat()
    for extra, expected in ((f"&owner={bravo.user['email'][:12].upper()}", [bravo.id]),
                            ("&environment=prod", [charlie.id]), (f"&expires_before={in_five_days}", [charlie.id]),
                            ("&name=RAVO", [bravo.id]), ("&state=expired", [])):
        browser.open(base + extra)
        assert _listed(browser) == expected, extra

    # The gateway's view: alpha's owner left the team, so the gateway refuses alpha (its row says active).
    assert gateway.admin.delete(f"/teams/{team['id']}/members/{alpha.user['id']}").status_code == 204
    gateway.wait_until(lambda: _api_token(gateway, alpha.id)["effective_status"] == "not_a_member",
                       what="the mirror to see the departure")
    browser.open(base + "&effective=not_a_member")
    assert _listed(browser) == [alpha.id]
    assert browser.find(f"tr[data-token='{alpha.id}'] [data-effective]").text == "not_a_member"
    browser.open(base + "&state=active&effective=usable")
    assert _listed(browser) == [bravo.id, charlie.id]

    # Revoked, newest revocation first (the overview's "revoked in 24 hours" link).
    gateway.revoke(bravo.id)
    gateway.revoke(charlie.id)
    browser.open(f"/console/tokens?state=revoked&sort=-revoked_at&team_id={team['id']}")
    assert _listed(browser) == [charlie.id, bravo.id]
    browser.open(f"/console/tokens?team_id={team['id']}&effective=token_revoked&sort=name")
    assert _listed(browser) == [bravo.id, charlie.id]

    # Every link the overview makes opens a list.
    with browser.http() as client:
        for link in ("state=active", "state=active&effective=usable", "state=active&dormant_days=30",
                     "state=revoked&sort=-revoked_at", "effective=not_a_member",
                     "state=active&effective=budget_exceeded"):
            reply = client.get(f"/console/tokens?{link}")
            assert reply.status_code == 200 and "<h1>Tokens" in reply.text, link
        for bad in ("sort=secret", "dormant_days=abc", "team_id=nope", "effective=whatever", "cursor=garbage"):
            reply = client.get(f"/console/tokens?{bad}")
            assert reply.status_code == 422, bad

    # 50 a page, with a cursor to the next.
    crowd = gateway.team()
    member = gateway.user()
    gateway.join(member, crowd)
    for index in range(51):
        made(gateway.admin.post("/tokens", json={"user_id": member["id"], "team_id": crowd["id"],
                                                 "name": f"crowd-{index:02d}"}))
    browser.open(f"/console/tokens?team_id={crowd['id']}&sort=name")
    first = _listed(browser)
    assert len(first) == 50 and "50 of 51" in browser.find(".pager").text
    browser.submit_and_wait("a[rel=next]")
    rest = _listed(browser)
    assert len(rest) == 1 and rest[0] not in first
    assert browser.find(f"tr[data-token='{rest[0]}'] a").text == "crowd-50"


def test_rotation_shows_the_secret_once_and_the_old_token_works_during_the_grace(gateway: Gateway,
                                                                                 console: Console) -> None:
    old = gateway.mint(name=unique("rotating"))
    browser = console.as_bootstrap(f"/console/tokens/{old.id}")
    browser.submit_and_wait("a[data-action=rotate]")
    _accessible(browser)
    browser.fill("input[name=grace]", "10")
    browser.fill("select[name=unit]", "minutes")
    browser.submit_and_wait(SUBMIT)
    # The answer to the POST itself: no redirect, nothing in the URL.
    assert browser.path == f"/console/tokens/{old.id}/rotate"
    secret = browser.find("[data-secret]").text
    assert secret.startswith("kw_") and secret not in browser.driver.current_url
    assert "shown this once" in browser.text
    _accessible(browser)
    new_id = browser.find("[data-token-link]").get_attribute("href").rsplit("/", 1)[1]

    gateway.wait_until(lambda: gateway.known(secret), what="the successor to reach authz")
    assert gateway.status_of(secret) == 200
    assert gateway.status_of(old.secret) == 200, "the old token keeps working during the grace period"
    deadline = datetime.fromisoformat(_api_token(gateway, old.id)["expires_at"])
    assert timedelta(minutes=9) < deadline - datetime.now(UTC) <= timedelta(minutes=10)
    assert _api_token(gateway, new_id)["rotated_from"] == old.id
    event = _only(events(gateway, action="token.rotated", target_id=old.id))
    assert event["mechanism"] == "console" and event["after"]["successor"] == new_id

    # Never again: not on the new token's page, nor on the old one's.
    for token_id in (new_id, old.id):
        browser.open(f"/console/tokens/{token_id}")
        assert secret not in browser.driver.page_source
    assert "Successors" in browser.text and new_id in browser.driver.page_source

    # Replayed by a client: the secret is in a no-store answer that redirects nowhere.
    confirm = f"/console/tokens/{new_id}/rotate"
    browser.open(confirm)
    fields = console_form_fields(browser, "form.stack")
    with browser.http() as client:
        reply = client.post(confirm, data={**fields, "grace": "0", "unit": "hours"})
    assert reply.status_code == 200 and "location" not in reply.headers
    assert reply.headers["cache-control"] == "no-store"
    assert reply.text.count("data-secret") == 1
    gateway.wait_until(lambda: gateway.status_of(secret) == 401, timeout=8, what="the end of a zero grace")


def test_mint_for_a_person_and_for_a_service_account(gateway: Gateway, console: Console) -> None:
    team = gateway.team()
    person, other = gateway.user(), gateway.user()
    gateway.join(person, team)
    gateway.join(other, team)
    account = made(gateway.admin.post("/service-accounts", json={
        "name": unique("0-console-sa"), "team_id": team["id"], "business_owner_id": person["id"],
        "technical_owner_id": other["id"]}))

    browser = console.as_bootstrap("/console/tokens")
    browser.submit_and_wait("a[data-action=mint]")
    _accessible(browser)
    # A mistake comes back with the form as it was filled in.
    browser.fill("input[name=name]", "laptop")
    browser.fill("input[name=owner_email]", "nobody-" + person["email"])
    browser.submit_and_wait(SUBMIT)
    assert "nobody has the e-mail address" in browser.find(".error").text
    assert browser.find("input[name=name]").get_attribute("value") == "laptop"

    browser.fill("input[name=owner_email]", person["email"])  # their only team: the team is left to default
    browser.fill("select[name=environment]", "staging")
    browser.fill("input[name=models]", "gpt-4o-mini, claude-*")
    browser.fill("select[name=secret_location]", "password_manager")
    browser.submit_and_wait(SUBMIT)
    assert browser.path == "/console/tokens/new"
    secret = browser.find("[data-secret]").text
    token_id = browser.find("[data-token-link]").get_attribute("href").rsplit("/", 1)[1]
    minted = _api_token(gateway, token_id)
    assert (minted["user_id"], minted["team_id"], minted["environment"], minted["models"],
            minted["secret_location"]) == (person["id"], team["id"], "staging", ["gpt-4o-mini", "claude-*"],
                                           "password_manager")
    gateway.wait_until(lambda: gateway.known(secret), what="the new token to reach authz")
    assert gateway.status_of(secret) == 200
    issued = _only(events(gateway, action="token.issued", target_id=token_id))
    assert issued["mechanism"] == "console" and issued["actor"] == "admin:bootstrap"

    browser.open("/console/tokens/new")
    browser.fill("input[name=name]", "ci")
    browser.fill("select[name=service_account_id]", account["id"])
    browser.fill("select[name=environment]", "ci")
    browser.submit_and_wait(SUBMIT)
    secret = browser.find("[data-secret]").text
    token_id = browser.find("[data-token-link]").get_attribute("href").rsplit("/", 1)[1]
    assert _api_token(gateway, token_id)["service_account_id"] == account["id"]
    gateway.wait_until(lambda: gateway.known(secret), what="the service account's token to reach authz")
    assert gateway.status_of(secret) == 200


def test_narrow_a_token_in_place(gateway: Gateway, console: Console) -> None:
    minted = gateway.mint(name=unique("narrow"), models=["gpt-4o*", "claude-*"])
    assert gateway.status_of(minted.secret) == 200
    before = datetime.fromisoformat(minted.token["expires_at"])
    browser = console.as_bootstrap(f"/console/tokens/{minted.id}")
    browser.submit_and_wait("a[data-action=narrow]")
    _accessible(browser)
    earlier = (before - timedelta(days=3)).date()
    browser.fill("input[name=models]", "gpt-4o-mini")
    browser.driver.execute_script("arguments[0].value = arguments[1]", browser.find("input[name=expires]"),
                                  earlier.isoformat())
    browser.fill("input[name=purpose]", "nightly evaluation")
    browser.submit_and_wait(SUBMIT)
    assert "Saved: expires_at, models, purpose." in browser.text
    token = _api_token(gateway, minted.id)
    assert token["models"] == ["gpt-4o-mini"] and token["purpose"] == "nightly evaluation"
    assert datetime.fromisoformat(token["expires_at"]).date() == earlier
    gateway.wait_until(lambda: gateway.chat(minted.secret, model="claude-haiku-4-5").status_code == 403,
                       what="the narrowing to reach authz")
    assert_openai_error(gateway.chat(minted.secret, model="claude-haiku-4-5"), 403, "model_not_allowed")
    assert gateway.status_of(minted.secret) == 200
    for action in ("token.narrowed", "token.updated"):
        assert _only(events(gateway, action=action, target_id=minted.id))["mechanism"] == "console"

    # Wider is a new token, not an edit: refused with the API's words.
    browser.open(f"/console/tokens/{minted.id}/narrow")
    browser.fill("input[name=models]", "*")
    browser.submit_and_wait(SUBMIT)
    assert "would widen this token" in browser.text
    assert _api_token(gateway, minted.id)["models"] == ["gpt-4o-mini"]


def test_an_auditor_sees_no_actions_and_a_forged_post_is_refused(gateway: Gateway, console: Console) -> None:
    minted = gateway.mint(name=unique("audited"))
    auditor = console.as_role("auditor", f"/console/tokens/{minted.id}")
    assert minted.token["hint"] in auditor.text
    assert not auditor.all("a[data-action]") and not auditor.all("main form")
    auditor.open("/console/tokens")
    assert minted.id in _listed(auditor) and not auditor.all("a[data-action=mint]")
    csrf = auditor.find("form[action='/console/sign-out'] input[name=csrf]").get_attribute("value")
    auditor.open(f"/console/tokens/{minted.id}/revoke")
    assert "Not for your role" in auditor.text
    actions = {f"/console/tokens/{minted.id}/revoke": {"reason": "forged"},
               f"/console/tokens/{minted.id}/rotate": {"grace": "0", "unit": "hours"},
               f"/console/tokens/{minted.id}/narrow": {"models": "gpt-4o-mini"},
               "/console/tokens/new": {"name": "forged", "owner_email": minted.user["email"]}}
    with auditor.http() as client:
        for path, fields in actions.items():
            assert client.post(path, data={**fields, "csrf": csrf}).status_code == 403, path  # the role
            assert client.post(path, data=fields).status_code == 403, path  # no CSRF token

    admin = console.as_bootstrap(f"/console/tokens/{minted.id}/revoke")
    fields = console_form_fields(admin, "form.stack")
    with admin.http() as client:
        assert client.post(f"/console/tokens/{minted.id}/revoke", data={"reason": "forged"}).status_code == 403
        assert client.post(f"/console/tokens/{minted.id}/revoke", data={**fields, "csrf": "0" * 64}).status_code == 403
        assert client.post(f"/console/tokens/{minted.id}/revoke", data=fields,
                           headers={"Origin": "https://evil.example"}).status_code == 403
    assert gateway.status_of(minted.secret) == 200
    assert events(gateway, action="token.revoked", target_id=minted.id) == []


def test_a_team_owner_acts_on_its_own_teams_tokens_only(gateway: Gateway, console: Console) -> None:
    # First by name, so it is the team the console signs Otto in for even if he owns another.
    team, other = gateway.team(f"0-tokens-{uuid.uuid4().hex[:8]}"), gateway.team()
    own, foreign = gateway.mint(team=team, name=unique("own")), gateway.mint(team=other, name=unique("foreign"))
    browser = console.as_role("owner", "/console/tokens", team=team)
    try:
        listed = _listed(browser)
        assert own.id in listed and foreign.id not in listed
        browser.open(f"/console/tokens/{foreign.id}")
        assert "may not manage" in browser.text
        browser.open(f"/console/tokens/{own.id}")
        browser.submit_and_wait("a[data-action=revoke]")
        fields = console_form_fields(browser, "form.stack")
        with browser.http() as client:
            refused = client.post(f"/console/tokens/{foreign.id}/revoke", data=fields)
            assert refused.status_code == 403
        browser.submit_and_wait(SUBMIT)
        assert_openai_error(gateway.chat(own.secret), 401, "token_revoked")
        assert gateway.status_of(foreign.secret) == 200
        event = _only(events(gateway, action="token.revoked", target_id=own.id))
        otto = ACCOUNTS["otto"]
        assert event["mechanism"] == "console" and event["actor"] == f"oidc:{otto.email}"
    finally:
        # Otto owns no team after this test (the console picks one owned team by name).
        gateway.admin.delete(f"/teams/{team['id']}/members/{console.person(ACCOUNTS['otto'])['id']}")
