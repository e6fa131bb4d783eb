"""Access reviews end to end on a realistic population: two teams with owners, a contractor, a service
account whose business owner departed. Each decision is checked where it matters: at the gateway (a
real request through Envoy), in the stored rows, and in the events chain."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Gateway
from tests.e2e.test_cli import document, keyward, ok
from tests.e2e.test_denials import sql

pytestmark = pytest.mark.e2e

#: The review duty runs on the lifecycle interval (0.5 s in the test stack): a few rounds and a margin.
DUTY_WAIT = 10


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def made(reply: httpx.Response, status: int = 201) -> Any:
    assert reply.status_code == status, reply.text
    return reply.json()


def refused_with(reply: httpx.Response, status: int, code: str) -> None:
    assert reply.status_code == status, reply.text
    assert reply.json()["code"] == code, reply.text


def events(gateway: Gateway, **filters: str) -> list[dict]:
    return made(gateway.admin.get("/audit/events", params={**filters, "limit": 500}), 200)["items"]


def canonical_sha256(document: Any) -> str:
    return hashlib.sha256(json.dumps(document, sort_keys=True, separators=(",", ":"),
                                     ensure_ascii=False).encode()).hexdigest()


def later(days: float) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).isoformat()


@dataclass
class Population:
    alpha: dict
    beta: dict
    alice: dict  # alpha's owner
    bob: dict  # an alpha engineer
    carol: dict  # a contractor in beta
    erin: dict  # beta's technical owner of the ETL account
    etl: dict  # beta's service account; its business owner departed
    second_admin: httpx.Client  # a second person with the admin role, for four eyes
    second_admin_name: str


@pytest.fixture(scope="module")
def population(gateway: Gateway) -> Any:
    admin = gateway.admin
    profile = made(admin.post("/profiles", json={
        "name": _unique("reviews-profile"),
        "catalog": [{"provider": "openai", "pattern": "gpt-4o-mini"}, {"provider": "openai", "pattern": "gpt-4o"}],
        "environments": ["dev", "prod"], "default_token_days": 30, "max_token_days": 365}))
    alpha = gateway.team(_unique("reviews-alpha"), profile_id=profile["id"])
    beta = gateway.team(_unique("reviews-beta"), profile_id=profile["id"])
    alice, bob, erin, dave = gateway.user(), gateway.user(), gateway.user(), gateway.user()
    carol = gateway.user(employment_type="contractor")
    gateway.join(alice, alpha, "owner")
    gateway.join(bob, alpha)
    gateway.join(carol, beta)
    for person in (erin, dave):
        gateway.join(person, beta)
    etl = made(admin.post("/service-accounts", json={
        "name": _unique("etl"), "team_id": beta["id"], "business_owner_id": dave["id"],
        "technical_owner_id": erin["id"]}))
    made(admin.post("/tokens", json={"service_account_id": etl["id"], "name": "etl-dev", "environment": "dev"}))
    made(admin.patch(f"/users/{dave['id']}", json={"status": "deprovisioned"}), 200)  # dave left
    name = _unique("reviews-second-admin")
    credential = made(admin.post("/credentials", json={"name": name, "role": "admin"}))
    second = httpx.Client(base_url=f"{gateway.info.api_url}/api/v1", timeout=10,
                          headers={"Authorization": f"Bearer {credential['token']}"})
    try:
        yield Population(alpha, beta, alice, bob, carol, erin, etl, second, f"credential:{name}")
    finally:
        second.close()


def mint(gateway: Gateway, user: dict, team: dict, **fields: Any) -> dict:
    token = made(gateway.admin.post("/tokens", json={"user_id": user["id"], "team_id": team["id"],
                                                     "name": _unique("tok"), **fields}))
    gateway.wait_until(lambda: gateway.known(token["token"]), what="token to reach authz")
    return token


def open_review(gateway: Gateway, **scope: Any) -> dict:
    return made(gateway.admin.post("/reviews", json={"name": _unique("review"), "scope": scope,
                                                     "due_at": later(14)}))


def item_of(review: dict, subject_id: str) -> dict:
    found = [item for item in review["items"] if item["subject_id"] == subject_id]
    assert len(found) == 1, [item["subject_id"] for item in review["items"]]
    return found[0]


def decide(gateway: Gateway, review: dict, item: dict, client: httpx.Client | None = None, status: int = 200,
           **body: Any) -> Any:
    reply = (client or gateway.admin).post(f"/reviews/{review['id']}/items/{item['id']}/decide", json=body)
    return made(reply, status) if status == 200 else reply


def gateway_status(gateway: Gateway, secret: str, model: str = "gpt-4o-mini") -> int:
    return gateway.chat(secret, model=model).status_code


def used(gateway: Gateway, token: dict, model: str) -> None:
    """A day of spend on ``model`` yesterday: what the register reads as "used in the last 30 days"."""
    sql(gateway, "INSERT INTO spend_daily (day, provider, model, environment, team_id, user_id, token_id, requests, "
                 "input_tokens, cached_tokens, output_tokens, cost_usd, estimated_requests) "
                 "VALUES (current_date - 1, 'openai', $1, $2, $3::uuid, $4::uuid, $5::uuid, 3, 30, 0, 30, 0.001, 0)",
        model, token["environment"], token["team_id"], token["user_id"], token["id"])


# -- opening: a frozen register -------------------------------------------------------------------


def test_a_review_freezes_the_register_rows_in_its_scope(gateway: Gateway, population: Population) -> None:
    token = mint(gateway, population.bob, population.alpha, models=["gpt-4o-mini", "gpt-4o"], purpose="reports")
    review = open_review(gateway, team_id=population.alpha["id"], kinds=["personal"])
    item = item_of(review, token["id"])
    assert item["subject_type"] == "token" and item["state"] == "open" and item["decision"] is None
    # The reviewer is the owner of the credential's team.
    assert item["reviewer"] == population.alice["email"]
    assert item["snapshot"]["id"] == token["id"] and item["snapshot"]["purpose"] == "reports"
    assert review["progress"] == {"items": len(review["items"]), "decided": 0, "open": len(review["items"]),
                                  "escalated": 0, "awaiting_exception": 0}
    frozen = item["snapshot"]

    # Changing the token afterwards changes the token, not what the reviewer judged.
    made(gateway.admin.patch(f"/tokens/{token['id']}", json={"models": ["gpt-4o-mini"], "purpose": "changed"}), 200)
    assert made(gateway.admin.get(f"/tokens/{token['id']}"), 200)["models"] == ["gpt-4o-mini"]
    again = made(gateway.admin.get(f"/reviews/{review['id']}/items/{item['id']}"), 200)
    assert again["snapshot"] == frozen
    assert [e for e in events(gateway, action="review.opened", target_id=review["id"])]


def test_a_contractor_scope_holds_only_contractor_credentials(gateway: Gateway, population: Population) -> None:
    contractor = mint(gateway, population.carol, population.beta)
    employee = mint(gateway, population.erin, population.beta)
    review = open_review(gateway, employment_types=["contractor"], team_id=population.beta["id"])
    subjects = {item["subject_id"] for item in review["items"]}
    assert contractor["id"] in subjects
    assert employee["id"] not in subjects


# -- decisions, carried out -----------------------------------------------------------------------


def test_narrow_offers_the_models_used_and_the_gateway_then_refuses_the_rest(gateway: Gateway,
                                                                            population: Population) -> None:
    token = mint(gateway, population.bob, population.alpha, models=["gpt-4o-mini", "gpt-4o"])
    used(gateway, token, "gpt-4o-mini")
    assert gateway_status(gateway, token["token"], "gpt-4o") == 200
    review = open_review(gateway, team_id=population.alpha["id"], kinds=["personal"])
    item = item_of(review, token["id"])
    assert item["suggested_models"] == ["gpt-4o-mini"]

    decided = decide(gateway, review, item, decision="narrow", reason="only gpt-4o-mini is used")
    assert decided["item"]["state"] == "decided" and decided["item"]["decided_by"] == "admin:bootstrap"
    assert decided["item"]["result"]["narrowed"][0]["models_after"] == ["gpt-4o-mini"]
    assert made(gateway.admin.get(f"/tokens/{token['id']}"), 200)["models"] == ["gpt-4o-mini"]
    gateway.wait_until(lambda: gateway_status(gateway, token["token"], "gpt-4o") == 403, what="narrowing at authz")
    assert gateway_status(gateway, token["token"], "gpt-4o-mini") == 200

    recorded = events(gateway, action="review.item_decided", target_id=item["id"])
    assert len(recorded) == 1
    assert recorded[0]["before"]["decision"] is None and recorded[0]["after"]["decision"] == "narrow"
    assert events(gateway, action="token.narrowed", target_id=token["id"])


def test_disable_stops_the_token_at_the_gateway(gateway: Gateway, population: Population) -> None:
    token = mint(gateway, population.bob, population.alpha)
    review = open_review(gateway, team_id=population.alpha["id"], kinds=["personal"])
    decided = decide(gateway, review, item_of(review, token["id"]), decision="disable", reason="not needed")
    assert decided["item"]["result"]["token_revoked"] == token["id"]
    gateway.wait_until(lambda: gateway_status(gateway, token["token"]) == 401, what="revocation at authz")
    assert events(gateway, action="token.revoked", target_id=token["id"])


def test_a_decision_needs_a_reason(gateway: Gateway, population: Population) -> None:
    token = mint(gateway, population.bob, population.alpha)
    review = open_review(gateway, team_id=population.alpha["id"], kinds=["personal"])
    reply = decide(gateway, review, item_of(review, token["id"]), status=422, decision="disable", reason=" ")
    assert reply.status_code == 422
    assert gateway_status(gateway, token["token"]) == 200


def test_rotate_returns_the_new_secret_once_and_the_old_one_stops(gateway: Gateway, population: Population) -> None:
    token = mint(gateway, population.bob, population.alpha)
    review = open_review(gateway, team_id=population.alpha["id"], kinds=["personal"])
    decided = decide(gateway, review, item_of(review, token["id"]), decision="rotate", reason="secret on a laptop",
                     grace_hours=0)
    (secret,) = decided["secrets"]
    assert secret["token"] != token["token"]
    gateway.wait_until(lambda: gateway.known(secret["token"]), what="successor at authz")
    assert gateway_status(gateway, secret["token"]) == 200
    gateway.wait_until(lambda: gateway_status(gateway, token["token"]) == 401, what="old secret to stop")
    # The secret is not kept anywhere: reading the item again shows no secret.
    again = made(gateway.admin.get(f"/reviews/{review['id']}"), 200)
    assert secret["token"] not in json.dumps(again)


def test_reassign_moves_a_service_account_and_refuses_a_personal_token(gateway: Gateway,
                                                                       population: Population) -> None:
    review = open_review(gateway, team_id=population.beta["id"])
    account_item = item_of(review, population.etl["id"])
    assert account_item["snapshot"]["flags"]["orphaned"] is True, "a departed owner flags the service account"
    newcomer = gateway.user()
    decided = decide(gateway, review, account_item, decision="reassign", reason="dave left",
                     new_owner_id=newcomer["id"])
    after = decided["item"]["result"]["reassigned"]["after"]
    assert after == {"business_owner_id": newcomer["id"]}  # the departed owner, not the active one
    account = made(gateway.admin.get(f"/service-accounts/{population.etl['id']}"), 200)
    assert account["business_owner_id"] == newcomer["id"]
    assert account["technical_owner_id"] == population.erin["id"]

    token = mint(gateway, population.carol, population.beta)
    review = open_review(gateway, team_id=population.beta["id"], kinds=["personal"])
    refused_with(decide(gateway, review, item_of(review, token["id"]), status=409, decision="reassign",
                        reason="carol leaves", new_owner_id=newcomer["id"]), 409, "token_owner_fixed")


def test_escalate_keeps_the_item_open_for_security(gateway: Gateway, population: Population) -> None:
    token = mint(gateway, population.bob, population.alpha)
    review = open_review(gateway, team_id=population.alpha["id"], kinds=["personal"])
    decided = decide(gateway, review, item_of(review, token["id"]), decision="escalate", reason="unclear owner")
    assert decided["item"]["state"] == "escalated"
    assert decided["item"]["reviewer"] == "security"
    progress = made(gateway.admin.get(f"/reviews/{review['id']}"), 200)["progress"]
    assert progress["escalated"] == 1 and progress["decided"] == 0


def test_a_team_owner_decides_its_own_teams_items_only(gateway: Gateway, population: Population) -> None:
    owner = made(gateway.admin.post("/credentials", json={"name": _unique("alpha-owner"), "role": "owner",
                                                          "team_id": population.alpha["id"]}))
    ours, theirs = mint(gateway, population.bob, population.alpha), mint(gateway, population.carol, population.beta)
    review = open_review(gateway, kinds=["personal"], environment="dev")
    with httpx.Client(base_url=f"{gateway.info.api_url}/api/v1", timeout=10,
                      headers={"Authorization": f"Bearer {owner['token']}"}) as client:
        seen = made(client.get(f"/reviews/{review['id']}"), 200)
        assert {item["subject_id"] for item in seen["items"]} >= {ours["id"]}
        assert theirs["id"] not in {item["subject_id"] for item in seen["items"]}
        decide(gateway, review, item_of(review, ours["id"]), client=client, decision="keep", reason="in use")
        refused_with(decide(gateway, review, item_of(review, theirs["id"]), client=client, status=403,
                            decision="disable", reason="not mine"), 403, "team_forbidden")


# -- exceptions: four eyes and expiry -------------------------------------------------------------


def test_keeping_a_flagged_credential_needs_an_exception_someone_else_approves(gateway: Gateway,
                                                                               population: Population) -> None:
    account = made(gateway.admin.post("/service-accounts", json={
        "name": _unique("batch"), "team_id": population.beta["id"], "business_owner_id": population.carol["id"],
        "technical_owner_id": population.erin["id"]}))
    account_token = made(gateway.admin.post("/tokens", json={"service_account_id": account["id"], "name": "batch",
                                                             "environment": "dev"}))
    gateway.wait_until(lambda: gateway.known(account_token["token"]), what="token to reach authz")
    # Its business owner leaves: the account is flagged for reassignment (orphaned).
    leaver = gateway.user()
    gateway.join(leaver, population.beta)
    made(gateway.admin.patch(f"/service-accounts/{account['id']}", json={"business_owner_id": leaver["id"]}), 200)
    made(gateway.admin.patch(f"/users/{leaver['id']}", json={"status": "deprovisioned"}), 200)

    review = open_review(gateway, team_id=population.beta["id"], kinds=["service"])
    item = item_of(review, account["id"])
    assert item["snapshot"]["flags"]["orphaned"] is True
    refused_with(decide(gateway, review, item, status=422, decision="keep", reason="still needed"), 422,
                 "exception_required")
    kept = decide(gateway, review, item, decision="keep", reason="migration ends in a week",
                  exception_expires_at=later(7))
    assert kept["item"]["state"] == "awaiting_exception"
    exception_id = kept["item"]["exception_id"]
    exception = made(gateway.admin.get(f"/exceptions/{exception_id}"), 200)
    assert exception["status"] == "pending" and exception["requested_by"] == "admin:bootstrap"
    assert exception["review_item_id"] == item["id"]

    # Four eyes: the requester cannot approve it; someone else can.
    refused_with(gateway.admin.post(f"/exceptions/{exception_id}/approve"), 403, "four_eyes_required")
    approved = made(population.second_admin.post(f"/exceptions/{exception_id}/approve"), 200)
    assert approved["status"] == "approved" and approved["approved_by"] == population.second_admin_name
    refused_with(population.second_admin.post(f"/exceptions/{exception_id}/approve"), 409, "exception_not_pending")
    assert made(gateway.admin.get(f"/reviews/{review['id']}/items/{item['id']}"), 200)["state"] == "decided"
    # The database refuses a self-approval too, whatever the API does.
    with pytest.raises(Exception, match="access_exceptions_four_eyes"):
        sql(gateway, "UPDATE access_exceptions SET approved_by = requested_by WHERE id = $1::uuid", exception_id)

    # Expiry: back-date the exception; the duty expires it, reopens the item and disables the account.
    assert gateway_status(gateway, account_token["token"]) == 200
    sql(gateway, "UPDATE access_exceptions SET created_at = now() - interval '8 days', "
                 "expires_at = now() - interval '1 second' WHERE id = $1::uuid", exception_id)
    gateway.wait_until(lambda: made(gateway.admin.get(f"/exceptions/{exception_id}"), 200)["status"] == "expired",
                       timeout=DUTY_WAIT, what="the exception to expire")
    reopened = made(gateway.admin.get(f"/reviews/{review['id']}/items/{item['id']}"), 200)
    assert reopened["state"] == "open" and reopened["decision"] is None and reopened["reopened_at"]
    expired = events(gateway, action="exception.expired", target_id=exception_id)
    assert len(expired) == 1 and expired[0]["after"]["disabled"]["service_account_disabled"] == account["id"]
    assert events(gateway, action="review.item_reopened", target_id=item["id"])
    assert made(gateway.admin.get(f"/service-accounts/{account['id']}"), 200)["status"] == "disabled"
    gateway.wait_until(lambda: gateway_status(gateway, account_token["token"]) == 401, what="disabled at authz")


def test_an_exception_needs_an_expiry_within_the_limit(gateway: Gateway, population: Population) -> None:
    body = {"subject_type": "service_account", "subject_id": population.etl["id"], "condition": "owners_not_distinct",
            "reason": "one person team"}
    assert gateway.admin.post("/exceptions", json=body).status_code == 422
    refused_with(gateway.admin.post("/exceptions", json={**body, "expires_at": later(400)}), 422, "exception_expiry")
    refused_with(gateway.admin.post("/exceptions", json={**body, "expires_at": later(-1)}), 422, "exception_expiry")
    refused_with(gateway.admin.post("/exceptions", json={**body, "subject_id": str(uuid.uuid4()),
                                                         "expires_at": later(30)}), 404, "subject_not_found")
    pending = made(gateway.admin.post("/exceptions", json={**body, "expires_at": later(30)}))
    rejected = made(population.second_admin.post(f"/exceptions/{pending['id']}/reject", json={"note": "no"}), 200)
    assert rejected["status"] == "rejected"
    listed = made(gateway.admin.get("/exceptions", params={"subject_id": population.etl["id"]}), 200)["items"]
    assert pending["id"] in {e["id"] for e in listed}


# -- closing: a report bound to the chain ---------------------------------------------------------


def test_closing_stores_a_report_whose_hash_is_in_the_audit_chain(gateway: Gateway, population: Population) -> None:
    kept, dropped = mint(gateway, population.bob, population.alpha), mint(gateway, population.bob, population.alpha)
    review = open_review(gateway, team_id=population.alpha["id"], kinds=["personal"])
    decide(gateway, review, item_of(review, kept["id"]), decision="keep", reason="daily use")
    decide(gateway, review, item_of(review, dropped["id"]), decision="disable", reason="duplicate")
    refused_with(gateway.admin.get(f"/reviews/{review['id']}/report"), 409, "review_open")

    closed = made(gateway.admin.post(f"/reviews/{review['id']}/close"), 200)
    report = closed["report"]
    assert closed["sha256"] == canonical_sha256(report)
    rows = {row["subject_id"]: row for row in report["items"]}
    assert rows[kept["id"]]["decision"] == "keep" and rows[kept["id"]]["decided_by"] == "admin:bootstrap"
    assert rows[dropped["id"]]["changed"]["token_revoked"] == dropped["id"]
    assert report["counts"]["decided"] == 2
    assert len(report["remaining_open"]) == report["counts"]["items"] - 2
    assert report["review"]["closed_by"] == "admin:bootstrap"

    fetched = made(gateway.admin.get(f"/reviews/{review['id']}/report"), 200)
    assert fetched["sha256"] == closed["sha256"] == canonical_sha256(fetched["report"])
    (event,) = events(gateway, action="review.closed", target_id=review["id"])
    assert event["after"]["report_sha256"] == closed["sha256"]
    stored = sql(gateway, "SELECT report_sha256 FROM access_reviews WHERE id = $1::uuid", review["id"])
    assert stored[0]["report_sha256"] == closed["sha256"]  # type: ignore[index]

    csv_reply = gateway.admin.get(f"/reviews/{review['id']}/report", params={"format": "csv"})
    assert csv_reply.status_code == 200 and csv_reply.headers["content-type"].startswith("text/csv")
    assert kept["id"] in csv_reply.text and "disable" in csv_reply.text

    # A closed review's items are final.
    refused_with(decide(gateway, review, item_of(review, kept["id"]), status=409, decision="disable",
                        reason="too late"), 409, "review_closed")
    refused_with(gateway.admin.post(f"/reviews/{review['id']}/close"), 409, "review_closed")


# -- cadence and triggers -------------------------------------------------------------------------


def test_a_schedule_opens_a_review_when_due_and_moves_on(gateway: Gateway, population: Population) -> None:
    schedule = made(gateway.admin.post("/review-schedules", json={
        "name": _unique("monthly-ops"), "cadence": "monthly", "due_days": 10, "first_run_at": later(1),
        "scope": {"team_id": population.alpha["id"], "kinds": ["personal"]}}))

    def opened() -> list[dict]:
        return [r for r in made(gateway.admin.get("/reviews", params={"limit": 500}), 200)["items"]
                if r["schedule_id"] == schedule["id"]]

    assert opened() == []
    sql(gateway, "UPDATE access_review_schedules SET next_run_at = now() - interval '1 minute' WHERE id = $1::uuid",
        schedule["id"])
    gateway.wait_until(lambda: bool(opened()), timeout=DUTY_WAIT, what="the scheduled review to open")
    (review,) = opened()
    assert review["progress"]["items"] >= 1 and review["opened_by"] == "system:reviews"
    listed = made(gateway.admin.get("/review-schedules", params={"limit": 500}), 200)["items"]
    moved = next(s for s in listed if s["id"] == schedule["id"])
    assert datetime.fromisoformat(moved["next_run_at"]) > datetime.now(UTC) + timedelta(days=27)

    # A paused schedule opens nothing, however overdue: a witness schedule due at the same time opens
    # its review in the same duty round.
    made(gateway.admin.patch(f"/review-schedules/{schedule['id']}", json={"enabled": False}), 200)
    witness = made(gateway.admin.post("/review-schedules", json={
        "name": _unique("witness"), "cadence": "weekly", "first_run_at": later(1),
        "scope": {"team_id": population.alpha["id"], "kinds": ["admin"]}}))
    sql(gateway, "UPDATE access_review_schedules SET next_run_at = now() - interval '1 minute' "
                 "WHERE id = ANY($1::uuid[])", [schedule["id"], witness["id"]])
    gateway.wait_until(lambda: any(r["schedule_id"] == witness["id"] for r in made(
        gateway.admin.get("/reviews", params={"limit": 500}), 200)["items"]), timeout=DUTY_WAIT,
        what="the witness schedule's review")
    assert len(opened()) == 1
    refused_with(gateway.admin.patch(f"/review-schedules/{uuid.uuid4()}", json={"enabled": True}), 404,
                 "review_schedule_not_found")


def test_an_owner_change_adds_the_account_to_a_triggered_review(gateway: Gateway, population: Population) -> None:
    account = made(gateway.admin.post("/service-accounts", json={
        "name": _unique("svc"), "team_id": population.alpha["id"], "business_owner_id": population.alice["id"],
        "technical_owner_id": population.bob["id"]}))
    made(gateway.admin.patch(f"/service-accounts/{account['id']}",
                             json={"technical_owner_id": population.alice["id"]}), 200)
    reviews = made(gateway.admin.get("/reviews", params={"status": "open", "limit": 500}), 200)["items"]
    triggered = [r for r in reviews if r["trigger"] == "owner_change"]
    assert len(triggered) == 1
    review = made(gateway.admin.get(f"/reviews/{triggered[0]['id']}"), 200)
    item = item_of(review, account["id"])
    assert item["snapshot"]["trigger"]["owners"] == {"technical": population.alice["id"]}


def test_a_wider_catalog_adds_the_teams_tokens_to_a_triggered_review(gateway: Gateway,
                                                                     population: Population) -> None:
    narrow = made(gateway.admin.post("/profiles", json={
        "name": _unique("narrow"), "catalog": [{"provider": "openai", "pattern": "gpt-4o-mini"}],
        "environments": ["dev"], "default_token_days": 30, "max_token_days": 90}))
    team = gateway.team(_unique("reviews-gamma"), profile_id=narrow["id"])
    engineer = gateway.user()
    gateway.join(engineer, team)
    token = mint(gateway, engineer, team)
    made(gateway.admin.patch(f"/profiles/{narrow['id']}", json={"catalog": [
        {"provider": "openai", "pattern": "gpt-4o-mini"}, {"provider": "anthropic", "pattern": "claude-*"}]}), 200)
    reviews = made(gateway.admin.get("/reviews", params={"status": "open", "limit": 500}), 200)["items"]
    (review,) = [r for r in reviews if r["trigger"] == "new_provider"]
    item = item_of(made(gateway.admin.get(f"/reviews/{review['id']}"), 200), token["id"])
    assert item["snapshot"]["trigger"]["gained"] == [{"provider": "anthropic", "pattern": "claude-*"}]


# -- the command line -----------------------------------------------------------------------------


def test_the_cli_walks_a_review_and_an_exception(gateway: Gateway, population: Population) -> None:
    token = mint(gateway, population.bob, population.alpha)
    review = document(keyward(gateway, "review", "open", _unique("cli-review"), "--due", later(7)[:10],
                              "--team", population.alpha["name"], "--kind", "personal", "--json"))
    item = item_of(review, token["id"])
    listed = document(keyward(gateway, "review", "list", "--status", "open", "--json", "--all"))
    assert review["id"] in {r["id"] for r in listed["items"]}
    assert item["id"] in ok(keyward(gateway, "review", "show", review["id"]))
    decided = document(keyward(gateway, "review", "decide", review["id"], item["id"], "disable", "--reason",
                               "left the project", "--json"))
    assert decided["item"]["decision"] == "disable"
    gateway.wait_until(lambda: gateway_status(gateway, token["token"]) == 401, what="revocation at authz")
    assert events(gateway, action="review.item_decided", target_id=item["id"])[0]["mechanism"] in ("cli", "api")
    closed = document(keyward(gateway, "review", "close", review["id"], "--json"))
    assert closed["sha256"] == canonical_sha256(closed["report"])
    assert item["id"] in ok(keyward(gateway, "review", "report", review["id"], "--format", "csv"))

    requested = document(keyward(gateway, "exception", "request", "service_account", population.etl["id"],
                                 "--condition", "owners_not_distinct", "--reason", "two-person team",
                                 "--expires", later(30)[:10], "--json"))
    refusal = keyward(gateway, "exception", "approve", requested["id"])
    assert refusal.returncode != 0 and "four_eyes_required" in refusal.stderr + refusal.stdout
    assert requested["id"] in ok(keyward(gateway, "exception", "list", "--status", "pending"))
    schedule = document(keyward(gateway, "review", "schedule", "add", _unique("quarterly-security"), "--cadence",
                                "quarterly", "--first-run", later(30)[:10], "--production-only", "--json"))
    assert schedule["scope"] == {"production_only": True}
    assert schedule["id"] in ok(keyward(gateway, "review", "schedule", "list", "--all"))
