"""Getting into the console: the one-time link, OIDC, the session cookie, CSRF, CSP, and the overview."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.e2e.conftest import Gateway
from tests.e2e.console.conftest import Console
from tests.e2e.oidc.harness import ACCOUNTS
from tests.e2e.test_spend_admin import events, refused_with

pytestmark = pytest.mark.e2e


def _session_client(gateway: Gateway, secret: str, **headers: str) -> httpx.Client:
    return httpx.Client(base_url=gateway.info.api_url, cookies={"keyward_session": secret}, headers=headers,
                        timeout=10, follow_redirects=False)


def test_the_one_time_link_signs_in_once(gateway: Gateway, console: Console, shot) -> None:
    link = console.link()
    first = console.browsers().open(link)
    first.wait_for(lambda b: b.path == "/console", what="the overview")
    assert "Overview" in first.title and "bootstrap admin" in first.text
    cookie = first.cookie("keyward_session")
    assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    shot(first, "overview")

    # The same link, again, in another browser: refused, and on record.
    second = console.browsers().open(link)
    assert second.path.startswith("/console/enter") and "does not work" in second.text
    assert second.cookie("keyward_session") is None
    refused = events(gateway, action="admin.login_refused")
    assert refused and refused[-1]["after"] == {"via": "link", "reason": "spent"}
    logins = [e for e in events(gateway, action="admin.login") if e["after"].get("via") == "link"]
    assert logins and logins[-1]["mechanism"] == "console" and logins[-1]["actor"] == "admin:bootstrap"

    # The session is for the console only: the admin API and /me do not take it.
    with _session_client(gateway, cookie["value"]) as client:
        assert client.get("/api/v1/users").status_code == 401
        page = client.get("/console")
        assert page.status_code == 200
        assert "script-src" not in page.headers["content-security-policy"]
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert page.headers["x-frame-options"] == "DENY" and page.headers["cache-control"] == "no-store"


def test_a_garbage_or_expired_link_is_refused(gateway: Gateway, console: Console) -> None:
    browser = console.browsers()
    for code in ("kw_link_garbage", "nonsense", ""):
        browser.open(f"/console/enter?code={code}")
        assert "does not work" in browser.text and browser.cookie("keyward_session") is None
    browser.open("/console")
    assert browser.path.startswith("/console/sign-in")


def test_signed_out_pages_send_to_sign_in_and_back(gateway: Gateway, console: Console) -> None:
    browser = console.browsers().open("/console/access?provider=openai")
    assert browser.path == "/console/sign-in?next=%2Fconsole%2Faccess%3Fprovider%3Dopenai"
    with httpx.Client(base_url=gateway.info.api_url, timeout=10) as client:
        assert client.get("/console/static/console.css").status_code == 200
        reply = client.get("/console", follow_redirects=False)
        assert reply.status_code == 303 and reply.headers["location"].startswith("/console/sign-in")


def test_a_forged_post_is_refused(gateway: Gateway, console: Console) -> None:
    browser = console.as_bootstrap()
    secret = browser.cookie("keyward_session")["value"]
    csrf = browser.find("form[action='/console/sign-out'] input[name=csrf]").get_attribute("value")
    with _session_client(gateway, secret) as client:
        assert client.post("/console/sign-out", data={}).status_code == 403
        assert client.post("/console/sign-out", data={"csrf": "0" * 64}).status_code == 403
        # The right token from another site (the browser's Origin) is refused too.
        assert client.post("/console/sign-out", data={"csrf": csrf},
                           headers={"Origin": "https://evil.example"}).status_code == 403
        assert client.get("/console").status_code == 200  # still signed in: nothing was done
    browser.click("form[action='/console/sign-out'] button")
    browser.wait_for(lambda b: b.path.startswith("/console/sign-in"), what="the sign-in page")
    with _session_client(gateway, secret) as client:
        assert client.get("/console").status_code == 303


def test_oidc_admin_signs_in_and_a_person_without_a_role_is_sent_to_me(gateway: Gateway, console: Console) -> None:
    adele = ACCOUNTS["adele"]
    console.person(adele)
    browser = console.through_oidc(adele)
    browser.wait_for(lambda b: b.path == "/console", what="the overview")
    assert adele.email in browser.text and "admin" in browser.find("[data-role]").text

    nora = ACCOUNTS["nora"]
    console.person(nora)
    other = console.through_oidc(nora)
    assert "/me" in other.text and "no console role" in other.text


def test_the_overview_is_accessible(console: Console) -> None:
    browser = console.as_bootstrap()
    violations = browser.axe()
    assert violations == [], [(v["id"], v["help"], [n.get("target") for n in v["nodes"]][:3]) for v in violations]
    # Keyboard: the first Tab reaches the skip link, which leads to the content.
    from selenium.webdriver.common.keys import Keys

    browser.find("body").send_keys(Keys.TAB)
    focused = browser.driver.switch_to.active_element
    assert focused.get_attribute("class") == "skip"


def test_each_role_signs_in_through_oidc_and_sees_its_sections(gateway: Gateway, console: Console) -> None:
    team = gateway.team(f"0-0-roles-{uuid.uuid4().hex[:6]}")  # sorts first: the owner works on this team
    expected = {
        "auditor": ["Overview", "Tokens", "People", "Teams & policy", "Audit log", "Spend", "Reviews & register"],
        "finance": ["Overview", "Teams & policy", "Spend"],
        "owner": ["Overview", "Tokens", "People", "Teams & policy", "Spend", "Reviews & register"],
    }
    for role, sections in expected.items():
        browser = console.as_role(role, team=team)
        assert [link.text for link in browser.all("nav[aria-label='Console sections'] a")] == sections, role
        if role == "owner":
            assert team["name"] in browser.text
        # A section the role may not open is refused by the server, not merely hidden.
        if role == "finance":
            browser.open("/console/access")
            assert "Not for your role" in browser.text


def test_keyward_console_link_prints_a_link_that_signs_in(gateway: Gateway, console: Console) -> None:
    from tests.e2e.test_cli import document, keyward

    minted = document(keyward(gateway, "console", "link", "--json"))
    assert minted["url"].startswith(gateway.info.api_url + "/console/enter?code=kw_link_")
    browser = console.browsers().open(minted["url"])
    browser.wait_for(lambda b: b.path == "/console", what="the overview")
    created = events(gateway, action="console.link_created")
    assert created and created[-1]["mechanism"] == "cli"


def test_two_browsers_racing_with_one_link_get_one_session(gateway: Gateway, console: Console) -> None:
    from concurrent.futures import ThreadPoolExecutor

    link = console.link()

    def enter(_: int) -> int:
        with httpx.Client(timeout=10, follow_redirects=False) as client:
            return client.get(link).status_code

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(enter, range(8)))
    assert sorted(answers) == [303] + [403] * 7


def test_a_link_from_a_non_admin_credential_is_refused(gateway: Gateway) -> None:
    minted = gateway.admin.post("/credentials", json={"name": f"aud-{uuid.uuid4().hex[:6]}", "role": "auditor"})
    assert minted.status_code == 201, minted.text
    with httpx.Client(base_url=gateway.info.api_url, timeout=10,
                      headers={"Authorization": f"Bearer {minted.json()['token']}"}) as client:
        reply = client.post("/api/v1/console/links")
    refused_with(reply, 403, "role_forbidden")
