"""The token lifecycle through Envoy: teams and profiles, environments, rotation, expiry, dormancy."""

from __future__ import annotations

import time
import uuid

import pytest

from tests.e2e.conftest import Gateway
from tests.e2e.test_denials import assert_openai_error, sql

pytestmark = pytest.mark.e2e


def _profile(gateway: Gateway, **fields: object) -> dict:
    body = {"name": f"p-{uuid.uuid4().hex[:8]}", "catalog": [{"provider": "*", "pattern": "*"}],
            "environments": ["dev", "staging", "prod", "ci"], **fields}
    reply = gateway.admin.post("/profiles", json=body)
    assert reply.status_code == 201, reply.text
    return reply.json()


def _team(gateway: Gateway, profile: dict) -> dict:
    return gateway.team(f"t-{uuid.uuid4().hex[:8]}", profile_id=profile["id"])


def test_starter_profiles_are_seeded(gateway: Gateway) -> None:
    names = {p["name"] for p in gateway.admin.get("/profiles", params={"limit": 500}).json()["items"]}
    assert {"Experiment", "Production", "Restricted"} <= names


def test_a_dev_token_is_refused_a_prod_only_model(gateway: Gateway) -> None:
    profile = _profile(gateway, catalog=[{"provider": "openai", "pattern": "gpt-4o*"},
                                         {"provider": "openai", "pattern": "o3*", "environments": ["prod"]}])
    team = _team(gateway, profile)
    dev, prod = gateway.mint(team=team, environment="dev"), gateway.mint(team=team, environment="prod")
    body = assert_openai_error(gateway.chat(dev.secret, model="o3-mini"), 403, "environment_not_allowed")
    assert "prod" in body["error"]["message"] and "dev" in body["error"]["message"]
    assert gateway.chat(prod.secret, model="o3-mini").status_code == 200
    assert gateway.chat(dev.secret, model="gpt-4o-mini").status_code == 200
    assert_openai_error(gateway.chat(dev.secret, model="claude-haiku-4-5"), 403, "model_not_allowed")


def test_minting_is_bounded_by_the_profile(gateway: Gateway) -> None:
    team = _team(gateway, _profile(gateway, environments=["dev"], default_token_days=7, max_token_days=30))
    user = gateway.user()
    gateway.join(user, team)
    base = {"user_id": user["id"], "team_id": team["id"], "name": "x"}
    for extra, code in (({"expires_in_days": 31}, "lifetime_too_long"), ({"environment": "prod"},
                        "environment_not_allowed")):
        reply = gateway.admin.post("/tokens", json=base | extra)
        assert reply.status_code == 422 and reply.json()["code"] == code, reply.text
    stranger = gateway.user()
    reply = gateway.admin.post("/tokens", json=base | {"user_id": stranger["id"]})
    assert reply.status_code == 409 and reply.json()["code"] == "not_a_member"
    minted = gateway.admin.post("/tokens", json=base).json()
    lifetime = minted["expires_at"][:10]
    assert lifetime >= time.strftime("%Y-%m-%d", time.gmtime(time.time() + 6 * 86400))


def test_a_rotated_token_works_during_the_grace_period_and_fails_after(gateway: Gateway) -> None:
    minted = gateway.mint()
    reply = gateway.admin.post(f"/tokens/{minted.id}/rotate", json={"grace_hours": 0.001})  # 3.6 s
    assert reply.status_code == 201, reply.text
    rotated = reply.json()
    new_secret = rotated["new"]["token"]
    assert rotated["new"]["rotated_from"] == minted.id
    gateway.wait_until(lambda: gateway.known(new_secret), what="successor")
    assert gateway.status_of(minted.secret) == 200, "the old token must keep working during the grace period"
    assert gateway.status_of(new_secret) == 200
    gateway.wait_until(lambda: gateway.status_of(minted.secret) == 401, timeout=8, what="grace deadline")
    assert_openai_error(gateway.chat(minted.secret), 401, "token_expired")
    assert gateway.status_of(new_secret) == 200
    # Both ends are on record: the rotation, and the old token's expiry (written by the lifecycle duty).
    gateway.wait_until(lambda: gateway.admin.get("/audit/events", params={
        "target_id": minted.id, "action": "token.expired"}).json()["items"] != [], timeout=5, what="expiry event")
    [event] = gateway.admin.get("/audit/events", params={"target_id": minted.id, "action": "token.rotated"}).json()[
        "items"]
    assert event["after"]["successor"] == rotated["new"]["id"]


@pytest.mark.parametrize("departure", ["left the team", "suspended", "deprovisioned"])
def test_rotation_is_refused_when_the_owner_may_no_longer_hold_a_token(gateway: Gateway, departure: str) -> None:
    # A successor minted now would be a token its owner may not have, waiting to come alive again.
    team = gateway.team()
    minted = gateway.mint(team=team)
    user_id = minted.user["id"]
    if departure == "left the team":
        assert gateway.admin.delete(f"/teams/{team['id']}/members/{user_id}").status_code == 204
        code = "not_a_member"
    else:
        assert gateway.admin.patch(f"/users/{user_id}", json={"status": departure}).status_code == 200
        code = "user_not_active"
    reply = gateway.admin.post(f"/tokens/{minted.id}/rotate", json={"grace_hours": 24})
    if departure == "deprovisioned":  # deprovisioning revoked the token itself
        code = "token_not_live"
    assert reply.status_code == 409, reply.text
    assert reply.json()["code"] == code
    tokens = gateway.admin.get("/tokens", params={"user_id": user_id}).json()["items"]
    assert [t["id"] for t in tokens] == [minted.id]  # no successor was minted


def test_a_dormant_token_is_disabled_by_an_opt_in_policy(gateway: Gateway) -> None:
    team = _team(gateway, _profile(gateway, dormant_disable_days=5))
    dormant, busy = gateway.mint(team=team), gateway.mint(team=team)
    assert gateway.status_of(busy.secret) == 200
    gateway.wait_until(lambda: gateway.admin.get(f"/tokens/{busy.id}").json()["last_used_at"] is not None,
                       timeout=5, what="last_used_at")
    # Pretend both were minted ten days ago; only the busy one was used since.
    sql(gateway, "UPDATE tokens SET created_at = now() - interval '10 days' WHERE id = ANY($1::uuid[])",
        [dormant.id, busy.id])
    gateway.wait_until(lambda: gateway.status_of(dormant.secret) == 401, timeout=5, what="dormant policy")
    assert_openai_error(gateway.chat(dormant.secret), 401, "token_revoked")
    assert gateway.status_of(busy.secret) == 200
    [event] = gateway.admin.get("/audit/events", params={"target_id": dormant.id,
                                                         "action": "token.revoked"}).json()["items"]
    assert event["actor"] == "system:dormant-policy" and event["mechanism"] == "system"


def test_the_dormant_report_lists_unused_tokens(gateway: Gateway) -> None:
    team = _team(gateway, _profile(gateway))
    never_used, used = gateway.mint(team=team), gateway.mint(team=team)
    assert gateway.status_of(used.secret) == 200
    sql(gateway, "UPDATE tokens SET created_at = now() - interval '40 days' WHERE id = ANY($1::uuid[])",
        [never_used.id, used.id])
    gateway.wait_until(lambda: gateway.admin.get(f"/tokens/{used.id}").json()["last_used_at"] is not None,
                       timeout=5, what="last_used_at")
    report = gateway.admin.get("/tokens/dormant", params={"days": 30, "team_id": team["id"]}).json()
    assert [t["id"] for t in report["items"]] == [never_used.id]


def test_revoking_a_team_cuts_every_member_and_no_one_else(gateway: Gateway) -> None:
    profile = _profile(gateway)
    team, other_team = _team(gateway, profile), _team(gateway, profile)
    members = [gateway.mint(team=team) for _ in range(3)]
    bystander = gateway.mint(team=other_team)
    both = gateway.mint(members[0].user, team=other_team)  # same person, other team: not affected
    reply = gateway.admin.post(f"/teams/{team['id']}/tokens/revoke", json={"reason": "incident"})
    assert reply.json()["revoked"] == 3 and reply.json()["revocation"]["applied"] is True
    for minted in members:
        gateway.wait_until(lambda m=minted: gateway.status_of(m.secret) == 401, timeout=1, what="team revocation")
    assert gateway.status_of(bystander.secret) == 200
    assert gateway.status_of(both.secret) == 200


def test_removing_a_member_narrows_their_tokens_at_once(gateway: Gateway) -> None:
    team = _team(gateway, _profile(gateway))
    minted = gateway.mint(team=team)
    assert gateway.admin.delete(f"/teams/{team['id']}/members/{minted.user['id']}").status_code == 204
    gateway.wait_until(lambda: gateway.status_of(minted.secret) == 403, timeout=1, what="membership removal")
    assert_openai_error(gateway.chat(minted.secret), 403, "not_a_member")
    gateway.join(minted.user, team)
    gateway.wait_until(lambda: gateway.status_of(minted.secret) == 200, timeout=1, what="membership restored")


def test_a_members_role_changes_and_their_token_keeps_working(gateway: Gateway) -> None:
    team = _team(gateway, _profile(gateway))
    minted = gateway.mint(team=team)
    for role in ("owner", "member"):
        reply = gateway.admin.put(f"/teams/{team['id']}/members/{minted.user['id']}", json={"role": role})
        assert reply.status_code == 200 and reply.json()["role"] == role, reply.text
    members = gateway.admin.get(f"/teams/{team['id']}/members", params={"role": "member"}).json()["items"]
    assert [m["user_id"] for m in members] == [minted.user["id"]]
    assert gateway.status_of(minted.secret) == 200


def test_narrowing_applies_without_reissue_and_widening_is_refused(gateway: Gateway) -> None:
    profile = _profile(gateway)
    team = _team(gateway, profile)
    minted = gateway.mint(team=team, models=["gpt-4o*"])
    assert gateway.chat(minted.secret, model="gpt-4o").status_code == 200
    reply = gateway.admin.patch(f"/tokens/{minted.id}", json={"models": ["gpt-4o-mini"]})
    assert reply.status_code == 200, reply.text
    gateway.wait_until(lambda: gateway.chat(minted.secret, model="gpt-4o").status_code == 403, timeout=1,
                       what="token narrowing")
    assert gateway.chat(minted.secret, model="gpt-4o-mini").status_code == 200
    wider = gateway.admin.patch(f"/tokens/{minted.id}", json={"models": ["gpt-*"]})
    assert wider.status_code == 422 and wider.json()["code"] == "widening_requires_new_token"
    later = gateway.admin.patch(f"/tokens/{minted.id}", json={"expires_at": "2999-01-01T00:00:00Z"})
    assert later.status_code == 422
    # The profile narrows every token of the team at once, too.
    gateway.admin.patch(f"/profiles/{profile['id']}", json={"catalog": [{"provider": "anthropic", "pattern": "*"}]})
    gateway.wait_until(lambda: gateway.chat(minted.secret, model="gpt-4o-mini").status_code == 403, timeout=1,
                       what="profile narrowing")


def test_service_account_tokens_follow_the_account(gateway: Gateway) -> None:
    team = _team(gateway, _profile(gateway))
    owner, tech = gateway.user(), gateway.user()
    account = gateway.admin.post("/service-accounts", json={
        "name": "nightly-batch", "team_id": team["id"], "business_owner_id": owner["id"],
        "technical_owner_id": tech["id"]}).json()
    token = gateway.admin.post("/tokens", json={"service_account_id": account["id"], "name": "batch",
                                                "environment": "prod"}).json()
    secret = token["token"]
    assert token["team_id"] == team["id"] and token["user_id"] is None
    gateway.wait_until(lambda: gateway.status_of(secret) == 200, timeout=2, what="service account token")
    response = gateway.chat(secret)
    record = gateway.log_record(response.headers["x-request-id"])
    assert record["user"] == "service-account:nightly-batch"
    gateway.admin.patch(f"/service-accounts/{account['id']}", json={"status": "disabled"})
    gateway.wait_until(lambda: gateway.status_of(secret) == 401, timeout=1, what="service account disabled")
    assert_openai_error(gateway.chat(secret), 401, "owner_disabled")


def test_a_profile_changed_outside_the_api_still_applies_at_once(gateway: Gateway) -> None:
    """authz caches compiled profiles by version; a trigger stamps every change, however it is made."""
    profile = _profile(gateway)
    minted = gateway.mint(team=_team(gateway, profile))
    assert gateway.chat(minted.secret, model="gpt-4o-mini").status_code == 200
    sql(gateway, """UPDATE access_profiles SET catalog = '[{"provider": "anthropic", "pattern": "*"}]'
                    WHERE id = $1::uuid""", profile["id"])
    gateway.wait_until(lambda: gateway.chat(minted.secret, model="gpt-4o-mini").status_code == 403, timeout=1,
                       what="profile change by SQL")
