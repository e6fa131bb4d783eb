"""Offboarding triggers that act, against the real stack: a departed owner's service account is flagged,
then disabled once the grace passes without a new owner (its tokens refused at the gateway), or kept
when reassigned in time; an admin credential likewise; a contractor's end date deprovisions them; a
token left unrotated past its profile's policy is revoked; closing a project revokes its tokens.

The duty runs on the test stack's lifecycle interval (0.5 s). Grace periods are not waited out: the
deadline is moved into the past in the database (as its owner), which is what the passing of time does.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Gateway
from tests.e2e.test_denials import sql
from tests.e2e.test_scim import GROUP, PATCH, USER, connection
from tests.e2e.test_spend_admin import _unique, events, made

pytestmark = pytest.mark.e2e

#: The duty's interval is 0.5 s on the test stack: a few rounds, and a margin.
DUTY_WAIT = 5


def account(gateway: Gateway, team: dict, business: dict, technical: dict) -> dict:
    return made(gateway.admin.post("/service-accounts", json={
        "name": _unique("agent"), "team_id": team["id"], "business_owner_id": business["id"],
        "technical_owner_id": technical["id"]}))


def working_token(gateway: Gateway, **fields: Any) -> str:
    minted = made(gateway.admin.post("/tokens", json={"name": _unique("t"), **fields}))
    gateway.wait_until(lambda: gateway.status_of(minted["token"]) == 200, what="the new token to work")
    return str(minted["token"])


def get(gateway: Gateway, path: str) -> dict:
    return made(gateway.admin.get(path), 200)


def deadline_passes(gateway: Gateway, table: str, ident: str) -> None:
    sql(gateway, f"UPDATE {table} SET reassign_by = now() - interval '1 minute' WHERE id = $1::uuid", ident)


def test_a_departed_owners_service_account_is_disabled_after_the_grace(gateway: Gateway) -> None:
    # The business owner is managed by an IdP, which deprovisions them over SCIM.
    _, scim_token = connection(gateway, "okta")
    with httpx.Client(base_url=f"{gateway.info.api_url}/scim/v2", timeout=10,
                      headers={"Authorization": f"Bearer {scim_token}"}) as okta:
        login = f"lee.{uuid.uuid4().hex[:8]}@example.com"
        lee = made(okta.post("/Users", json={"schemas": [USER], "userName": login, "active": True}))
        group = made(okta.post("/Groups", json={"schemas": [GROUP], "displayName": _unique("g"),
                                                "members": [{"value": lee["id"]}]}))
        made(gateway.admin.patch(f"/teams/{group['id']}", json={"profile_id": gateway.profile()["id"]}), 200)
        team = get(gateway, f"/teams/{group['id']}")
        technical = gateway.user()
        robot = account(gateway, team, {"id": lee["id"]}, technical)
        secret = working_token(gateway, service_account_id=robot["id"], environment="prod")
        personal = working_token(gateway, user_id=lee["id"], team_id=team["id"])

        before = datetime.now(UTC)
        made(okta.patch(f"/Users/{lee['id']}", json={"schemas": [PATCH], "Operations": [
            {"op": "replace", "value": {"active": False}}]}), 200)

    # Their own token is revoked at once; the account is flagged, and keeps working through the grace.
    assert gateway.status_of(personal) == 401
    flagged = get(gateway, f"/service-accounts/{robot['id']}")
    deadline = datetime.fromisoformat(flagged["reassign_by"])
    assert before + timedelta(days=7) - timedelta(minutes=1) < deadline < datetime.now(UTC) + timedelta(days=7)
    assert "business owner" in flagged["flagged_reason"] and login in flagged["flagged_reason"]
    assert flagged["status"] == "active" and gateway.status_of(secret) == 200
    [event] = events(gateway, target_id=robot["id"], action="service_account.flagged")
    assert event["mechanism"] == "scim" and event["after"]["reassign_by"] == flagged["reassign_by"]
    [deprovision] = events(gateway, target_id=lee["id"], action="scim.deprovision")
    assert deprovision["after"]["service_accounts_flagged"] == [robot["id"]]
    row = [r for r in made(gateway.admin.get("/register", params={"orphaned": "true", "team_id": team["id"]}),
                           200)["items"] if r["id"] == robot["id"]]
    assert row and row[0]["flags"]["reassign_by"] == flagged["reassign_by"]

    # Nobody reassigned it: once the deadline passes, the duty disables it and the gateway refuses its token.
    deadline_passes(gateway, "service_accounts", robot["id"])
    gateway.wait_until(lambda: get(gateway, f"/service-accounts/{robot['id']}")["status"] == "disabled",
                       timeout=DUTY_WAIT, what="the offboarding duty to disable the account")
    gateway.wait_until(lambda: gateway.status_of(secret) == 401, timeout=2, what="the gateway to refuse its token")
    reply = gateway.chat(secret)
    assert reply.status_code == 401 and reply.json()["error"]["code"] == "owner_disabled"
    [disabled] = events(gateway, target_id=robot["id"], action="service_account.disabled")
    assert disabled["actor"] == "system:offboarding" and disabled["after"]["status"] == "disabled"
    assert "not reassigned" in disabled["after"]["reason"]


def test_a_service_account_reassigned_in_time_is_not_disabled(gateway: Gateway) -> None:
    team = gateway.team(_unique("offboard"))
    leaver, technical, successor = gateway.user(), gateway.user(), gateway.user()
    kept = account(gateway, team, leaver, technical)
    dropped = account(gateway, team, technical, leaver)
    secret = working_token(gateway, service_account_id=kept["id"])
    dropped_secret = working_token(gateway, service_account_id=dropped["id"])
    made(gateway.admin.patch(f"/users/{leaver['id']}", json={"status": "deprovisioned"}), 200)
    assert get(gateway, f"/service-accounts/{kept['id']}")["reassign_by"] is not None
    assert "technical owner" in get(gateway, f"/service-accounts/{dropped['id']}")["flagged_reason"]

    # A new business owner in time clears the flag, with an event; a departed person cannot be named.
    refused = gateway.admin.patch(f"/service-accounts/{kept['id']}", json={"technical_owner_id": leaver["id"]})
    assert refused.status_code == 422 and refused.json()["code"] == "owner_not_active"
    reassigned = made(gateway.admin.patch(f"/service-accounts/{kept['id']}",
                                          json={"business_owner_id": successor["id"]}), 200)
    assert reassigned["reassign_by"] is None and reassigned["flagged_reason"] is None
    [cleared] = events(gateway, target_id=kept["id"], action="service_account.reassigned")
    assert cleared["before"]["reassign_by"] is not None and cleared["after"]["reassign_by"] is None

    # The other account's deadline passes: once the duty has disabled it, it has also been through the
    # reassigned one, which stays active and usable.
    deadline_passes(gateway, "service_accounts", dropped["id"])
    gateway.wait_until(lambda: gateway.status_of(dropped_secret) == 401, timeout=DUTY_WAIT,
                       what="the duty to disable the account nobody reassigned")
    assert get(gateway, f"/service-accounts/{kept['id']}")["status"] == "active"
    assert gateway.status_of(secret) == 200
    assert not events(gateway, target_id=kept["id"], action="service_account.disabled")


def test_a_departed_owners_admin_credential_is_flagged_then_revoked(gateway: Gateway) -> None:
    owner, successor = gateway.user(), gateway.user()
    lapsed = made(gateway.admin.post("/credentials", json={"name": _unique("lapsed"), "role": "auditor",
                                                           "owner_id": owner["id"]}))
    handed = made(gateway.admin.post("/credentials", json={"name": _unique("handed"), "role": "auditor",
                                                           "owner_id": owner["id"]}))

    def whoami(credential: dict) -> int:
        return gateway.admin.get("/whoami", headers={"Authorization": f"Bearer {credential['token']}"}).status_code

    made(gateway.admin.patch(f"/users/{owner['id']}", json={"status": "deprovisioned"}), 200)
    listed = {c["id"]: c for c in get(gateway, "/credentials?limit=500")["items"]}
    assert listed[lapsed["id"]]["reassign_by"] and listed[handed["id"]]["reassign_by"]
    assert whoami(lapsed) == 200
    made(gateway.admin.patch(f"/credentials/{handed['id']}", json={"owner_id": successor["id"]}), 200)
    assert events(gateway, target_id=handed["id"], action="credential.reassigned")
    deadline_passes(gateway, "api_credentials", lapsed["id"])
    sql(gateway, "UPDATE api_credentials SET reassign_by = now() - interval '1 minute' WHERE id = $1::uuid "
        "AND reassign_by IS NOT NULL", handed["id"])  # cleared: nothing to pass
    gateway.wait_until(lambda: whoami(lapsed) == 401, timeout=DUTY_WAIT, what="the duty to revoke the credential")
    assert whoami(handed) == 200
    [revoked] = events(gateway, target_id=lapsed["id"], action="credential.revoked")
    assert revoked["actor"] == "system:offboarding" and "not reassigned" in revoked["after"]["reason"]


def test_a_contractor_past_their_end_date_is_deprovisioned_by_the_duty(gateway: Gateway) -> None:
    team = gateway.team(_unique("contractors"))
    contractor, colleague = gateway.user(employment_type="contractor"), gateway.user()
    gateway.join(contractor, team)
    secret = working_token(gateway, user_id=contractor["id"], team_id=team["id"])
    robot = account(gateway, team, colleague, contractor)
    # Their last day is today: still in.
    made(gateway.admin.patch(f"/users/{contractor['id']}", json={"end_date": date.today().isoformat()}), 200)
    assert get(gateway, f"/users/{contractor['id']}")["status"] == "active"
    yesterday = (date.today() - timedelta(days=1)).isoformat()
    made(gateway.admin.patch(f"/users/{contractor['id']}", json={"end_date": yesterday}), 200)
    gateway.wait_until(lambda: gateway.status_of(secret) == 401, timeout=DUTY_WAIT,
                       what="the duty to deprovision the contractor")
    user = get(gateway, f"/users/{contractor['id']}")
    assert user["status"] == "deprovisioned" and user["employment_type"] == "contractor"
    [event] = events(gateway, target_id=contractor["id"], action="user.deprovisioned")
    assert event["actor"] == "system:offboarding" and f"end_date {yesterday} passed" in event["after"]["reason"]
    assert get(gateway, f"/service-accounts/{robot['id']}")["reassign_by"] is not None


def test_a_token_left_unrotated_past_its_profiles_policy_is_revoked(gateway: Gateway) -> None:
    profile = made(gateway.admin.post("/profiles", json={
        "name": _unique("rotating"), "catalog": [{"provider": "*", "pattern": "*"}], "environments": ["dev"],
        "default_token_days": 90, "max_token_days": 365, "rotation_days": 30, "rotation_disable_days": 10}))
    team = gateway.team(_unique("rotating"), profile_id=profile["id"])
    user = gateway.user()
    gateway.join(user, team)
    late = made(gateway.admin.post("/tokens", json={"user_id": user["id"], "team_id": team["id"], "name": "late"}))
    overdue = made(gateway.admin.post("/tokens", json={"user_id": user["id"], "team_id": team["id"], "name": "due"}))
    # 35 days old: rotation overdue (flagged), not yet past the 10 days' grace. 45 days: past it.
    sql(gateway, "UPDATE tokens SET created_at = now() - interval '35 days' WHERE id = $1::uuid", overdue["id"])
    sql(gateway, "UPDATE tokens SET created_at = now() - interval '45 days' WHERE id = $1::uuid", late["id"])
    gateway.wait_until(lambda: gateway.status_of(late["token"]) == 401, timeout=DUTY_WAIT,
                       what="the rotation policy to revoke the token")
    [revoked] = events(gateway, target_id=late["id"], action="token.revoked")
    assert revoked["actor"] == "system:rotation-policy" and "not rotated" in revoked["after"]["revoke_reason"]
    gateway.wait_until(lambda: gateway.status_of(overdue["token"]) == 200, what="the overdue token to still work")
    [row] = [r for r in made(gateway.admin.get("/register", params={"team_id": team["id"], "overdue": "true"}),
                             200)["items"]]
    assert row["id"] == overdue["id"] and row["flags"]["overdue"] == ["rotation_overdue", "never_used"]
    assert row["rotation"]["disable_at"][:10] == (datetime.fromisoformat(row["created_at"])
                                                  + timedelta(days=40)).date().isoformat()


def test_closing_a_project_revokes_its_tokens_and_keeps_its_usage(gateway: Gateway) -> None:
    team = gateway.team(_unique("projects"))
    user = gateway.user()
    gateway.join(user, team)
    project = made(gateway.admin.post("/projects", json={"team_id": team["id"], "name": _unique("pilot")}))
    carried = working_token(gateway, user_id=user["id"], team_id=team["id"], project_id=project["id"])
    other = working_token(gateway, user_id=user["id"], team_id=team["id"])
    sql(gateway, "INSERT INTO spend_daily (day, provider, model, team_id, project_id, user_id, requests, cost_usd) "
        "VALUES (current_date, 'openai', 'gpt-4o-mini', $1::uuid, $2::uuid, $3::uuid, 3, 0.5)",
        team["id"], project["id"], user["id"])

    closed = made(gateway.admin.post(f"/projects/{project['id']}/close"), 200)
    assert closed["status"] == "closed" and closed["tokens_revoked"] == 1 and closed["revocation"]["applied"]
    # Final when the API answers: the very next request is refused; the team's other token still works.
    assert gateway.status_of(carried) == 401 and gateway.status_of(other) == 200
    assert events(gateway, target_id=project["id"], action="project.closed")
    revoked = [e for e in events(gateway, target_type="token", action="token.revoked")
               if e["after"].get("reason") == f"project {project['name']} closed"]
    assert len(revoked) == 1
    # The rollup keeps what the project spent (the rows written above, and the real request that proved the
    # token worked once it is ingested).
    spend = made(gateway.admin.get("/spend", params={"group_by": "project", "project_id": project["id"]}), 200)
    assert spend["total"]["requests"] >= 3
    again = made(gateway.admin.post(f"/projects/{project['id']}/close"), 200)
    assert again["tokens_revoked"] == 0 and again["revocation"] is None


def test_a_deleted_team_loses_its_tokens_and_its_service_accounts(gateway: Gateway) -> None:
    _, scim_token = connection(gateway, "okta")
    with httpx.Client(base_url=f"{gateway.info.api_url}/scim/v2", timeout=10,
                      headers={"Authorization": f"Bearer {scim_token}"}) as okta:
        member = made(okta.post("/Users", json={"schemas": [USER], "userName": f"kim.{uuid.uuid4().hex[:8]}@x.com",
                                                "active": True}))
        group = made(okta.post("/Groups", json={"schemas": [GROUP], "displayName": _unique("g"),
                                                "members": [{"value": member["id"]}]}))
        made(gateway.admin.patch(f"/teams/{group['id']}", json={"profile_id": gateway.profile()["id"]}), 200)
        team = get(gateway, f"/teams/{group['id']}")
        robot = account(gateway, team, {"id": member["id"]}, gateway.user())
        robot_secret = working_token(gateway, service_account_id=robot["id"])
        personal = working_token(gateway, user_id=member["id"], team_id=team["id"])
        assert okta.delete(f"/Groups/{group['id']}").status_code == 204
    gateway.wait_until(lambda: gateway.status_of(robot_secret) == 401 and gateway.status_of(personal) == 401,
                       timeout=2, what="the deleted team's tokens to be refused")
    assert get(gateway, f"/service-accounts/{robot['id']}")["status"] == "disabled"
    [disabled] = events(gateway, target_id=robot["id"], action="service_account.disabled")
    assert disabled["mechanism"] == "scim" and "group deleted" in disabled["after"]["reason"]
    reply = gateway.admin.post("/tokens", json={"service_account_id": robot["id"], "name": "x"})
    assert reply.status_code == 409 and reply.json()["code"] == "service_account_disabled"
    # Enabled again by hand, it still gets no new token for a team that is gone.
    made(gateway.admin.patch(f"/service-accounts/{robot['id']}", json={"status": "active"}), 200)
    reply = gateway.admin.post("/tokens", json={"service_account_id": robot["id"], "name": "x"})
    assert reply.status_code == 404 and reply.json()["code"] == "team_not_found"
