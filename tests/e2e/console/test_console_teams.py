"""The console's teams and spend policy against the real stack: teams with their profile, members,
budgets in effect (spent by real requests through the gateway) and rate limits; one team's page; the
changes an admin makes there, each seen in the admin API and on record with the mechanism ``console``;
and what auditors, finance and a team owner may see and do."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal

import pytest

from tests.e2e.conftest import Gateway, Minted
from tests.e2e.console.conftest import Browser, Console, console_form_fields
from tests.e2e.oidc.harness import ACCOUNTS
from tests.e2e.test_spend_admin import events, made

pytestmark = pytest.mark.e2e


@dataclass
class World:
    profile: dict
    team: dict
    other: dict
    project: dict
    member: Minted
    owner: dict


@pytest.fixture(scope="module")
def world(gateway: Gateway) -> World:
    profile = made(gateway.admin.post("/profiles", json={
        "name": f"console-policy-{uuid.uuid4().hex[:6]}", "description": "For the console's tests",
        "catalog": [{"provider": "openai", "pattern": "gpt-4o*"},
                    {"provider": "anthropic", "pattern": "claude-*", "environments": ["dev"]},
                    {"provider": "*", "pattern": "console-policy-*"}],
        "environments": ["dev", "prod"], "default_token_days": 14, "max_token_days": 60,
        "budget_defaults": {"team": {"amount_usd": "1", "period": "month"}},
        "rate_limit_defaults": {"team": {"rpm": 600, "tpm": 100000}}}))
    # "0-…" sorts first, so the test IdP's team owner (who may own other tests' teams) owns this one.
    team = gateway.team(f"0-console-team-{uuid.uuid4().hex[:6]}", profile_id=profile["id"])
    other = gateway.team(f"console-other-{uuid.uuid4().hex[:6]}")
    project = made(gateway.admin.post("/projects", json={"team_id": team["id"], "name": "console-project"}))
    member = gateway.mint(team=team, environment="prod")
    # Real spend against the team's budget: requests through the gateway, counted by authz.
    model = f"console-policy-{uuid.uuid4().hex[:6]}"
    made(gateway.admin.post("/prices", json={"provider": "openai", "model": model, "input_per_mtok": "1000",
                                             "output_per_mtok": "10000", "effective_from": "2020-01-01T00:00:00Z"}))
    for _ in range(2):  # $0.069 each, with max_tokens bounding what the gateway reserves
        reply = gateway.http.post("/openai/v1/chat/completions",
                                  headers={"Authorization": f"Bearer {member.secret}"},
                                  json={"model": model, "max_tokens": 6,
                                        "messages": [{"role": "user", "content": "hi"}]})
        assert reply.status_code == 200, reply.text

    def spent() -> bool:
        used = gateway.admin.get(f"/budgets/team/{team['id']}/utilisation").json()["budgets"]
        return bool(used) and Decimal(used[0]["spent_usd"]) > 0

    gateway.wait_until(spent, timeout=60, what="the team's spend to be counted")
    owner = gateway.user(email=f"owner-{uuid.uuid4().hex[:6]}@example.com")
    gateway.join(owner, team, role="owner")
    return World(profile, team, other, project, member, owner)


def _clean(browser: Browser) -> None:
    violations = browser.axe()
    assert violations == [], [(v["id"], v["help"], [n.get("target") for n in v["nodes"]][:3]) for v in violations]


def _by_console(gateway: Gateway, action: str, target_id: str) -> dict:
    found = events(gateway, action=action, target_id=target_id)
    assert found, f"no {action} event for {target_id}"
    assert found[-1]["mechanism"] == "console" and found[-1]["actor"] == "admin:bootstrap", found[-1]
    return found[-1]


def _post_forms(browser: Browser) -> list[str]:
    """The actions of the page's forms that change something (the header's sign-out aside)."""
    return [form.get_attribute("action") for form in browser.all("main form[method=post]")]


def test_the_teams_page_shows_teams_profiles_and_policy(gateway: Gateway, console: Console, world: World,
                                                        shot) -> None:
    browser = console.as_bootstrap(f"/console/teams?name={world.team['name']}")
    [row] = browser.all("table[data-table=teams] tbody tr")
    assert row.get_attribute("data-team") == world.team["id"]
    assert world.profile["name"] in row.text and "600 rpm" in row.text and "100,000 tpm" in row.text
    cells = row.find_elements("css selector", "td")
    assert cells[1].text == "2"  # the minted token's owner and the team owner
    used = gateway.admin.get(f"/budgets/team/{world.team['id']}/utilisation").json()["budgets"][0]
    meter = row.find_element("css selector", "meter")
    assert Decimal(meter.get_attribute("value")) == pytest.approx(Decimal(used["percent"]), abs=Decimal("0.02"))
    # The profile with its catalog per provider and environment, and its token lifetimes.
    card = browser.find(f"[data-profile='{world.profile['id']}']")
    assert "14 days by default, at most 60" in card.text and "dev, prod" in card.text
    catalog = card.find_element("css selector", "table[data-table=catalog]").text
    assert "openai gpt-4o*" in catalog and "anthropic claude-* dev" in catalog and "every provider" in catalog
    # Sorting is a link; the name filter narrows.
    browser.open("/console/teams?sort=-name")
    names = [r.find_element("css selector", "th").text for r in browser.all("table[data-table=teams] tbody tr")]
    assert names == sorted(names, key=str.lower, reverse=True)
    assert browser.find("th[aria-sort=descending]").text.startswith("Team")
    browser.open(f"/console/teams?profile_id={world.profile['id']}")
    assert [r.get_attribute("data-team") for r in browser.all("table[data-table=teams] tbody tr")] == [
        world.team["id"]]
    browser.open("/console/teams")
    shot(browser, "teams")
    _clean(browser)


def test_a_scope_link_shows_and_highlights_that_scope(gateway: Gateway, console: Console, world: World) -> None:
    browser = console.as_bootstrap(f"/console/teams?scope=team:{world.team['id']}")
    focus = browser.find("[data-scope='team:" + world.team["id"] + "']")
    assert world.team["name"] in focus.text and "default of profile " + world.profile["name"] in focus.text
    assert browser.find(f"tr[data-team='{world.team['id']}']").get_attribute("aria-current") == "true"
    browser.open(f"/console/teams?scope=project:{world.project['id']}")
    assert "The project console-project" in browser.text
    assert "No budget applies" in browser.text  # the profile gives teams a default, not projects
    browser.open(f"/console/teams?scope=team:{uuid.uuid4()}")
    assert "No team" in browser.text
    _clean(browser)


def test_an_admin_sets_and_removes_a_budget_and_a_rate_limit(gateway: Gateway, console: Console,
                                                             world: World, shot) -> None:
    team_id = world.team["id"]
    browser = console.as_bootstrap(f"/console/teams/{team_id}")
    shot(browser, "team")
    _clean(browser)
    # A budget of its own, set in the console: in the API at once, on record as the console's.
    form = "form[action='/console/teams/policy/budget']"
    browser.fill(f"{form} input[name=amount_usd]", "25")
    browser.fill(f"{form} select[name=posture]", "hard")
    browser.fill(f"{form} input[name=thresholds]", "75, 90")
    browser.submit_and_wait(f"{form} button[type=submit]")
    assert browser.path.startswith(f"/console/teams/{team_id}?done=") and "budget is set" in browser.text
    [budget] = gateway.admin.get("/budgets", params={"scope_type": "team", "scope_id": team_id}).json()["items"]
    assert (Decimal(budget["amount_usd"]), budget["posture"], budget["thresholds"]) == (Decimal(25), "hard", [75, 90])
    _by_console(gateway, "budget.set", team_id)
    assert browser.find("table[data-table=budgets-team] tr[data-source=explicit]")
    # Removing it asks first, then the profile's default applies again.
    browser.submit_and_wait("a[data-action=remove-budget]")
    assert "Remove the budget?" in browser.title
    browser.submit_and_wait("main form button[type=submit]")
    assert "own budget is removed" in browser.text
    assert gateway.admin.get("/budgets", params={"scope_id": team_id}).json()["items"] == []
    _by_console(gateway, "budget.removed", team_id)
    # A rate limit, the same way.
    form = "form[action='/console/teams/policy/rate-limit']"
    browser.fill(f"{form} input[name=rpm]", "42")
    browser.submit_and_wait(f"{form} button[type=submit]")
    limit = made(gateway.admin.get(f"/rate-limits/team/{team_id}"), 200)
    assert (limit["rpm"], limit["tpm"]) == (42, None)
    _by_console(gateway, "rate_limit.set", team_id)
    browser.submit_and_wait("a[data-action=remove-rate-limit]")
    browser.submit_and_wait("main form button[type=submit]")
    assert gateway.admin.get(f"/rate-limits/team/{team_id}").status_code == 404
    _by_console(gateway, "rate_limit.removed", team_id)
    # A bad amount is refused with the API's reason, and nothing changes.
    with browser.http() as client:
        csrf = console_form_fields(browser, "form[action='/console/teams/policy/budget']")["csrf"]
        refused = client.post("/console/teams/policy/budget", data={
            "csrf": csrf, "scope_type": "team", "scope_id": team_id, "amount_usd": "-3", "back": "https://evil.example"})
        assert refused.status_code == 422 and "amount_usd" in refused.text
        # A form's way back is a console page, never another site.
        done = client.post("/console/teams/policy/rate-limit", data={
            "csrf": csrf, "scope_type": "project", "scope_id": world.project["id"], "rpm": "5",
            "back": "https://evil.example/"})
        assert done.status_code == 303 and done.headers["location"].startswith(
            f"/console/teams?scope=project:{world.project['id']}")
    assert gateway.admin.get("/budgets", params={"scope_id": team_id}).json()["items"] == []


def test_an_admin_manages_members_and_the_profile(gateway: Gateway, console: Console, world: World) -> None:
    team_id = world.team["id"]
    newcomer = gateway.user()
    browser = console.as_bootstrap(f"/console/teams/{team_id}")
    browser.fill("form[action$='/members'] input[name=email]", newcomer["email"])
    browser.submit_and_wait("button[data-action=add-member]")
    assert f"{newcomer['email']} is a member" in browser.text
    members = gateway.admin.get(f"/teams/{team_id}/members").json()["items"]
    assert newcomer["id"] in [m["user_id"] for m in members]
    _by_console(gateway, "team.member_set", team_id)
    browser.submit_and_wait(f"tr[data-member='{newcomer['id']}'] a[data-action=remove-member]")
    assert newcomer["email"] in browser.text and "Remove the member?" in browser.title
    browser.submit_and_wait("main form button[type=submit]")
    members = gateway.admin.get(f"/teams/{team_id}/members").json()["items"]
    assert newcomer["id"] not in [m["user_id"] for m in members]
    removed = _by_console(gateway, "team.member_removed", team_id)
    assert removed["before"]["user_id"] == newcomer["id"]
    # An unknown email is refused, saying so.
    browser.fill("form[action$='/members'] input[name=email]", "nobody-console@example.com")
    browser.submit_and_wait("button[data-action=add-member]")
    assert "No one has the email" in browser.text
    # A new profile, confirmed first.
    other = made(gateway.admin.post("/profiles", json={
        "name": f"console-other-{uuid.uuid4().hex[:6]}", "catalog": [{"provider": "*", "pattern": "*"}],
        "environments": ["dev", "prod"]}))
    browser.open(f"/console/teams/{team_id}")
    browser.fill("form[action$='/profile'] select[name=profile_id]", other["id"])
    browser.submit_and_wait("button[data-action=change-profile]")
    assert "Change the team's profile?" in browser.title and world.profile["name"] in browser.text
    _clean(browser)
    browser.submit_and_wait("main form button[type=submit]")
    assert made(gateway.admin.get(f"/teams/{team_id}"), 200)["profile_id"] == other["id"]
    _by_console(gateway, "policy.changed", team_id)
    made(gateway.admin.patch(f"/teams/{team_id}", json={"profile_id": world.profile["id"]}), 200)


def test_finance_reads_policy_without_people_or_actions(gateway: Gateway, console: Console, world: World) -> None:
    made(gateway.admin.put(f"/budgets/project/{world.project['id']}", json={"amount_usd": "9"}), 200)
    browser = console.as_role("finance", "/console/teams")
    assert browser.all("table[data-table=teams]") == [] and browser.all("[data-profile]") == []
    assert browser.find(f"table[data-table=own-budgets] tr[data-scope='project:{world.project['id']}']")
    assert _post_forms(browser) == [] and browser.all("[data-action]") == []
    _clean(browser)
    browser.open(f"/console/teams/{world.team['id']}")
    assert world.team["name"] in browser.find("h1").text
    assert browser.find("table[data-table=budgets-team] meter")
    assert "console-project" in browser.find("table[data-table=projects]").text
    assert browser.all("table[data-table=members]") == [] and _post_forms(browser) == []
    assert browser.all("[data-action]") == []
    _clean(browser)
    # Forged changes are refused by the server, whatever the page showed: with the session's own CSRF
    # token (the role may not), and without one.
    csrf = console_form_fields(browser, "form[action='/console/sign-out']")["csrf"]
    with browser.http() as client:
        budget = {"scope_type": "team", "scope_id": world.team["id"], "amount_usd": "1"}
        assert client.post("/console/teams/policy/budget", data={"csrf": csrf, **budget}).status_code == 403
        assert client.post("/console/teams/policy/budget", data=budget).status_code == 403
        assert client.post(f"/console/teams/{world.team['id']}/members/{world.owner['id']}/remove",
                           data={"csrf": csrf}).status_code == 403
        assert client.get(f"/console/teams/policy/budget/remove?scope=project:{world.project['id']}").status_code \
            == 403
    assert made(gateway.admin.get(f"/budgets/project/{world.project['id']}/utilisation"), 200)["budgets"]
    assert not [b for b in gateway.admin.get("/budgets", params={"scope_id": world.team["id"]}).json()["items"]]


def test_an_auditor_sees_everything_and_changes_nothing(gateway: Gateway, console: Console, world: World) -> None:
    browser = console.as_role("auditor", f"/console/teams/{world.team['id']}")
    assert browser.find("table[data-table=members]") and _post_forms(browser) == []
    assert browser.all("[data-action]") == []
    csrf = console_form_fields(browser, "form[action='/console/sign-out']")["csrf"]
    with browser.http() as client:
        assert client.post(f"/console/teams/{world.team['id']}/profile",
                           data={"csrf": csrf, "profile_id": ""}).status_code == 403
    assert made(gateway.admin.get(f"/teams/{world.team['id']}"), 200)["profile_id"] == world.profile["id"]


def test_a_team_owner_manages_members_of_their_team_only(gateway: Gateway, console: Console, world: World) -> None:
    browser = console.as_role("owner", "/console/teams", team=world.team)
    otto = console.person(ACCOUNTS["otto"])
    try:
        assert [r.get_attribute("data-team") for r in browser.all("table[data-table=teams] tbody tr")] == [
            world.team["id"]]
        browser.open(f"/console/teams/{world.team['id']}")
        # An owner removes members and opens projects, and sets no budget, as in the API.
        assert browser.all("form[action='/console/teams/policy/budget']") == []
        assert browser.all("button[data-action=add-member]") == []
        browser.fill("form[action$='/projects'] input[name=name]", "owners-project")
        browser.submit_and_wait("button[data-action=open-project]")
        assert "owners-project" in browser.find("table[data-table=projects]").text
        leaving = gateway.user()
        gateway.join(leaving, world.team)
        browser.open(f"/console/teams/{world.team['id']}")
        browser.submit_and_wait(f"tr[data-member='{leaving['id']}'] a[data-action=remove-member]")
        browser.submit_and_wait("main form button[type=submit]")
        members = gateway.admin.get(f"/teams/{world.team['id']}/members").json()["items"]
        assert leaving["id"] not in [m["user_id"] for m in members]
        csrf = console_form_fields(browser, "form[action='/console/sign-out']")["csrf"]
        browser.open(f"/console/teams/{world.other['id']}")
        assert "may not manage that team" in browser.text
        with browser.http() as client:
            assert client.get(f"/console/teams/{world.other['id']}").status_code == 403
            assert client.post("/console/teams/policy/rate-limit", data={
                "csrf": csrf, "scope_type": "team", "scope_id": world.team["id"], "rpm": "1"}).status_code == 403
            assert client.post(f"/console/teams/{world.other['id']}/projects",
                               data={"csrf": csrf, "name": "not-mine"}).status_code == 403
    finally:
        gateway.admin.delete(f"/teams/{world.team['id']}/members/{otto['id']}")

