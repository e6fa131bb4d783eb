"""The credential register against the real stack: its fields, edited and validated through the API and
the CLI, and ``GET /api/v1/register`` with its filters (orphaned, overdue, broader than used) and CSV.

What authz would have rolled up is stood in for by rows written straight into ``spend_daily`` (as the
database owner), and ages by back-dated ``created_at`` / ``last_used_at``: the register's arithmetic is
what is under test here.
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from controlplane.services.register import COLUMNS
from tests.e2e.conftest import Gateway
from tests.e2e.test_cli import keyward, ok
from tests.e2e.test_denials import sql
from tests.e2e.test_spend_admin import _unique, events, made, refused_with

pytestmark = pytest.mark.e2e


def profile(gateway: Gateway, **fields: Any) -> dict:
    return made(gateway.admin.post("/profiles", json={
        "name": _unique("register"), "catalog": [{"provider": "*", "pattern": "*"}],
        "environments": ["dev", "prod"], "default_token_days": 90, "max_token_days": 365, **fields}))


def account(gateway: Gateway, team: dict, business: dict, technical: dict, **fields: Any) -> dict:
    return made(gateway.admin.post("/service-accounts", json={
        "name": _unique("agent"), "team_id": team["id"], "business_owner_id": business["id"],
        "technical_owner_id": technical["id"], **fields}))


def token(gateway: Gateway, **fields: Any) -> dict:
    return made(gateway.admin.post("/tokens", json={"name": _unique("t"), **fields}))


def rows(gateway: Gateway, **params: Any) -> list[dict]:
    return made(gateway.admin.get("/register", params={"limit": 500, **params}), 200)["items"]


def row(found: list[dict], ident: str) -> dict:
    matching = [r for r in found if r["id"] == ident]
    assert len(matching) == 1, f"{ident} in {[r['id'] for r in found]}"
    return matching[0]


def used(gateway: Gateway, minted: dict, team: dict, model: str, days_ago: int, requests: int) -> None:
    """What ingest would have rolled up: ``requests`` requests of ``minted`` to ``model``, ``days_ago``."""
    sql(gateway, """
        INSERT INTO spend_daily (day, provider, model, environment, team_id, user_id, service_account_id, token_id,
                                 requests, cost_usd)
        VALUES ($1, 'openai', $2, $3, $4::uuid, $5::uuid, $6::uuid, $7::uuid, $8, 0.01)
    """, date.today() - timedelta(days=days_ago), model, minted["environment"], team["id"], minted["user_id"],
        minted["service_account_id"], minted["id"], requests)


def test_register_fields_are_edited_and_validated_with_an_event_each(gateway: Gateway) -> None:
    team = gateway.team(_unique("reg-fields"), profile_id=profile(gateway)["id"])
    owner, backup, gone = gateway.user(), gateway.user(), gateway.user()
    for person in (owner, backup, gone):
        gateway.join(person, team)
    made(gateway.admin.patch(f"/users/{gone['id']}", json={"status": "deprovisioned"}), 200)
    personal = token(gateway, user_id=owner["id"], team_id=team["id"], purpose="code review bot",
                     secret_location="laptop")
    assert (personal["purpose"], personal["secret_location"]) == ("code review bot", "laptop")

    # A personal token: purpose, workload, secret location, a backup owner; null clears a field.
    updated = made(gateway.admin.patch(f"/tokens/{personal['id']}", json={
        "workload": "github.com/acme/reviewer", "secret_location": "vault", "backup_owner_id": backup["id"]}), 200)
    assert updated["workload"] == "github.com/acme/reviewer" and updated["secret_location"] == "vault"
    assert updated["backup_owner_id"] == backup["id"] and updated["purpose"] == "code review bot"
    cleared = made(gateway.admin.patch(f"/tokens/{personal['id']}", json={"purpose": None}), 200)
    assert cleared["purpose"] is None and cleared["workload"] == "github.com/acme/reviewer"
    changes = events(gateway, target_type="token", target_id=personal["id"], action="token.updated")
    assert len(changes) == 2
    assert changes[0]["before"]["secret_location"] == "laptop" and changes[0]["after"]["secret_location"] == "vault"

    # Validation: a location outside the vocabulary is a schema error; the backup owner is someone
    # else, active, and only for a personal token.
    bad = gateway.admin.patch(f"/tokens/{personal['id']}", json={"secret_location": "sticky-note"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "secret_location"]
    refused_with(gateway.admin.patch(f"/tokens/{personal['id']}", json={"backup_owner_id": owner["id"]}),
                 422, "backup_owner_invalid")
    refused_with(gateway.admin.patch(f"/tokens/{personal['id']}", json={"backup_owner_id": gone["id"]}),
                 422, "backup_owner_invalid")
    refused_with(gateway.admin.patch(f"/tokens/{personal['id']}", json={"backup_owner_id": str(uuid.uuid4())}),
                 404, "user_not_found")
    assert gateway.admin.patch(f"/tokens/{personal['id']}", json={"colour": "red"}).status_code == 422

    # Service accounts: four owners, purpose, workload; every owner named is active.
    robot = account(gateway, team, owner, backup, purpose="nightly summaries", workload="acme/batch",
                    security_owner_id=backup["id"])
    assert robot["purpose"] == "nightly summaries" and robot["security_owner_id"] == backup["id"]
    refused_with(gateway.admin.patch(f"/service-accounts/{robot['id']}", json={"finance_owner_id": gone["id"]}),
                 422, "owner_not_active")
    robot = made(gateway.admin.patch(f"/service-accounts/{robot['id']}", json={
        "finance_owner_id": owner["id"], "security_owner_id": None}), 200)
    assert robot["finance_owner_id"] == owner["id"] and robot["security_owner_id"] is None
    robot_token = token(gateway, service_account_id=robot["id"])
    refused_with(gateway.admin.patch(f"/tokens/{robot_token['id']}", json={"backup_owner_id": backup["id"]}),
                 422, "backup_owner_invalid")

    # A production service account needs two different people as business and technical owner...
    solo = account(gateway, team, owner, owner)
    token(gateway, service_account_id=solo["id"], environment="dev")  # not production: fine
    refused_with(gateway.admin.post("/tokens", json={"service_account_id": solo["id"], "name": "p",
                                                     "environment": "prod"}), 422, "owners_not_distinct")
    token(gateway, service_account_id=robot["id"], environment="prod")
    refused_with(gateway.admin.patch(f"/service-accounts/{robot['id']}", json={"technical_owner_id": owner["id"]}),
                 422, "owners_not_distinct")
    # ... unless an approved exception that has not expired covers it (a pending or expired one does not).
    for status, expires in (("pending", "now() + interval '30 days'"), ("approved", "now() + interval '30 days'")):
        sql(gateway, f"""
            INSERT INTO access_exceptions (id, subject_type, subject_id, condition, reason, requested_by,
                                           approved_by, status, expires_at, created_at)
            VALUES ($1::uuid, 'service_account', $2::uuid, 'owners_not_distinct', 'two-person team',
                    'alice', $3, $4, {expires}, now() - interval '1 day')
        """, str(uuid.uuid4()), solo["id"], "bob" if status == "approved" else None, status)
        if status == "pending":
            refused_with(gateway.admin.post("/tokens", json={"service_account_id": solo["id"], "name": "p",
                                                             "environment": "prod"}), 422, "owners_not_distinct")
    token(gateway, service_account_id=solo["id"], environment="prod")

    # People: employment type and end date; profiles: the rotation cadence; credentials: owner and purpose.
    person = made(gateway.admin.patch(f"/users/{owner['id']}", json={"employment_type": "contractor",
                                                                     "end_date": "2099-01-31"}), 200)
    assert person["employment_type"] == "contractor" and person["end_date"] == "2099-01-31"
    assert gateway.admin.patch(f"/users/{owner['id']}", json={"employment_type": "intern"}).status_code == 422
    assert made(gateway.admin.patch(f"/users/{owner['id']}", json={"end_date": None}), 200)["end_date"] is None
    refused_with(gateway.admin.post("/profiles", json={
        "name": _unique("rot"), "catalog": [], "environments": ["dev"], "rotation_disable_days": 5}),
        422, "rotation_days_required")
    rotating = profile(gateway, rotation_days=90, rotation_disable_days=14)
    assert (rotating["rotation_days"], rotating["rotation_disable_days"]) == (90, 14)
    refused_with(gateway.admin.patch(f"/profiles/{rotating['id']}", json={"rotation_days": None}),
                 422, "rotation_days_required")
    credential = made(gateway.admin.post("/credentials", json={"name": _unique("ci"), "role": "auditor",
                                                               "purpose": "evidence export", "owner_id": owner["id"]}))
    refused_with(gateway.admin.patch(f"/credentials/{credential['id']}", json={"owner_id": gone["id"]}),
                 422, "owner_not_active")
    changed = made(gateway.admin.patch(f"/credentials/{credential['id']}", json={
        "secret_location": "ci_secret_store", "owner_id": backup["id"]}), 200)
    assert changed["owner_id"] == backup["id"] and changed["purpose"] == "evidence export"
    assert "token" not in changed and "token_hash" not in changed
    for target_type, target_id, action in (("service_account", robot["id"], "service_account.updated"),
                                           ("user", owner["id"], "user.updated"),
                                           ("credential", credential["id"], "credential.updated")):
        assert events(gateway, target_type=target_type, target_id=target_id, action=action)

    # The CLI sets the same fields through the same API.
    out = json.loads(ok(keyward(gateway, "tokens", "set", personal["id"], "--purpose", "reviews",
                                "--secret-location", "password_manager", "--clear", "backup-owner", "--json")))
    assert (out["purpose"], out["secret_location"], out["backup_owner_id"]) == ("reviews", "password_manager", None)
    out = json.loads(ok(keyward(gateway, "service-accounts", "update", robot["id"], "--workload", "acme/batch-v2",
                                "--security-owner", backup["email"], "--json")))
    assert out["workload"] == "acme/batch-v2" and out["security_owner_id"] == backup["id"]
    failed = keyward(gateway, "tokens", "set", personal["id"], "--backup-owner", owner["email"])
    assert failed.returncode == 1 and "backup_owner_invalid" in failed.stderr


def test_the_register_answers_who_owns_what_and_what_needs_a_decision(gateway: Gateway) -> None:
    team = gateway.team(_unique("reg"), profile_id=profile(gateway, rotation_days=30)["id"])
    other_team = gateway.team(_unique("reg-other"))
    ada, bob, cy, dee = (gateway.user() for _ in range(4))
    for person in (ada, bob, cy, dee):
        gateway.join(person, team)
    gateway.join(ada, other_team)

    wide = token(gateway, user_id=ada["id"], team_id=team["id"], purpose="assistant", backup_owner_id=bob["id"])
    narrow = token(gateway, user_id=ada["id"], team_id=team["id"], models=["gpt-4o-mini"])
    idle = token(gateway, user_id=bob["id"], team_id=team["id"])
    stale = token(gateway, user_id=cy["id"], team_id=team["id"], environment="prod")
    elsewhere = token(gateway, user_id=ada["id"], team_id=other_team["id"])
    robot = account(gateway, team, dee, cy, purpose="triage")
    robot_token = token(gateway, service_account_id=robot["id"], environment="prod")
    for minted, days_ago, requests in ((wide, 2, 5), (wide, 20, 7), (narrow, 1, 3), (robot_token, 3, 4)):
        used(gateway, minted, team, "gpt-4o-mini", days_ago, requests)
    now = datetime.now(UTC)
    sql(gateway, "UPDATE tokens SET last_used_at = $2 WHERE id = ANY($1::uuid[])",
        [wide["id"], narrow["id"], robot_token["id"]], now - timedelta(hours=1))
    sql(gateway, "UPDATE tokens SET created_at = $2 WHERE id = $1::uuid", idle["id"], now - timedelta(days=10))
    sql(gateway, "UPDATE tokens SET created_at = $2, last_used_at = $3 WHERE id = $1::uuid", stale["id"],
        now - timedelta(days=45), now - timedelta(days=40))

    found = rows(gateway, team_id=team["id"])
    assert {r["id"] for r in found} == {wide["id"], narrow["id"], idle["id"], stale["id"], robot["id"],
                                        robot_token["id"]}
    first = row(found, wide["id"])
    assert first["subject_type"] == "token" and first["kind"] == "personal"
    assert first["alias"] == f"{wide['name']} ({wide['hint']})" and wide["token"] not in json.dumps(first)
    assert first["owner"]["id"] == ada["id"] and first["owner"]["status"] == "active"
    assert first["backup_owner"]["id"] == bob["id"] and first["purpose"] == "assistant"
    assert first["team"]["id"] == team["id"] and first["environment"] == "dev"
    assert first["effective"]["stored"] == "active" and first["effective"]["effective"] == "usable"
    assert "gpt-4o-mini" in first["effective"]["models"]["openai"]
    assert first["usage"] == {"requests_7d": 5, "requests_30d": 12, "models_30d": {"openai": ["gpt-4o-mini"]}}
    assert first["rotation"]["cadence_days"] == 30 and not first["rotation"]["overdue"]
    assert first["rotation"]["due_at"][:10] == (datetime.fromisoformat(first["created_at"])
                                                + timedelta(days=30)).date().isoformat()
    assert "owner deprovisioned" in first["offboarding_triggers"]
    assert first["flags"] == {"orphaned": False, "overdue": [], "broader_than_used": True, "reassign_by": None,
                              "flagged_reason": None}
    assert row(found, narrow["id"])["flags"]["broader_than_used"] is False  # it reaches only what it calls
    assert row(found, idle["id"])["flags"]["overdue"] == ["never_used"]
    assert row(found, stale["id"])["flags"]["overdue"] == ["rotation_overdue", "dormant"]
    service = row(found, robot["id"])
    assert service["subject_type"] == "service_account" and service["kind"] == "service"
    assert service["owners"]["business"]["id"] == dee["id"] and service["owners"]["technical"]["id"] == cy["id"]
    assert service["environment"] == ["prod"] and service["purpose"] == "triage"
    assert service["usage"]["requests_30d"] == 4 and service["effective"]["live_tokens"] == 1
    assert row(found, robot_token["id"])["owner"] == {"type": "service_account", "id": robot["id"],
                                                      "name": robot["name"], "status": "active"}

    # Filters: overdue, broader than used, environment, owner, kind.
    assert {r["id"] for r in rows(gateway, team_id=team["id"], overdue="true")} == {idle["id"], stale["id"]}
    assert {r["id"] for r in rows(gateway, team_id=team["id"], broader="true")} == {
        wide["id"], robot["id"], robot_token["id"]}
    assert {r["id"] for r in rows(gateway, team_id=team["id"], environment="prod")} == {
        stale["id"], robot["id"], robot_token["id"]}
    assert {r["id"] for r in rows(gateway, owner_id=ada["id"])} == {wide["id"], narrow["id"], elsewhere["id"]}
    assert {r["id"] for r in rows(gateway, owner_id=cy["id"])} == {stale["id"], robot["id"], robot_token["id"]}
    assert {r["id"] for r in rows(gateway, team_id=team["id"], kind="service")} == {robot["id"], robot_token["id"]}

    # Orphaned: a suspended owner's live token; a deprovisioned owner's service account and its tokens
    # (the owner's own tokens are revoked, so they leave the register).
    made(gateway.admin.patch(f"/users/{bob['id']}", json={"status": "suspended"}), 200)
    made(gateway.admin.patch(f"/users/{dee['id']}", json={"status": "deprovisioned"}), 200)
    orphans = rows(gateway, team_id=team["id"], orphaned="true")
    assert {r["id"] for r in orphans} == {idle["id"], robot["id"], robot_token["id"]}
    assert row(orphans, idle["id"])["owner"]["status"] == "suspended"
    assert row(orphans, idle["id"])["effective"]["effective"] == "owner_disabled"
    flagged = row(orphans, robot["id"])
    assert flagged["owners"]["business"]["status"] == "deprovisioned" and flagged["flags"]["reassign_by"]
    assert "business owner" in flagged["flags"]["flagged_reason"]
    # An open exception and the last review show on the row they concern.
    exception_id = str(uuid.uuid4())
    sql(gateway, """
        INSERT INTO access_exceptions (id, subject_type, subject_id, condition, reason, requested_by, approved_by,
                                       status, expires_at, created_at)
        VALUES ($1::uuid, 'token', $2::uuid, 'dormant', 'on leave', 'alice', 'bob', 'approved',
                now() + interval '20 days', now() - interval '1 day')
    """, exception_id, stale["id"])
    stale_row = row(rows(gateway, team_id=team["id"]), stale["id"])
    assert [(e["id"], e["condition"]) for e in stale_row["open_exceptions"]] == [(exception_id, "dormant")]
    assert stale_row["last_review"] is None

    # A team owner reads only its own team; asking for another is refused.
    owner_credential = made(gateway.admin.post("/credentials", json={
        "name": _unique("owner"), "role": "owner", "team_id": team["id"], "owner_id": ada["id"]}))
    headers = {"Authorization": f"Bearer {owner_credential['token']}"}
    mine = made(gateway.admin.get("/register", params={"limit": 500}, headers=headers), 200)
    assert {r["team"]["id"] for r in mine["items"] if r["team"]} == {team["id"]}
    assert mine["total"] == len(mine["items"]) and elsewhere["id"] not in {r["id"] for r in mine["items"]}
    refused_with(gateway.admin.get("/register", params={"team_id": other_team["id"]}, headers=headers),
                 403, "team_forbidden")

    # Pages, and the same rows as CSV, from the API and the CLI. The team's owner credential is a row too.
    page = made(gateway.admin.get("/register", params={"team_id": team["id"], "limit": 2}), 200)
    assert len(page["items"]) == 2 and page["total"] == 7 and page["next_cursor"]
    rest = made(gateway.admin.get("/register", params={"team_id": team["id"], "limit": 500,
                                                       "cursor": page["next_cursor"]}), 200)
    assert len(rest["items"]) == 5 and rest["next_cursor"] is None
    assert owner_credential["id"] in {r["id"] for r in rest["items"] + page["items"]}
    exported = gateway.admin.get("/register", params={"team_id": team["id"], "format": "csv"})
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
    lines = list(csv.DictReader(io.StringIO(exported.text)))
    assert tuple(lines[0]) == COLUMNS and len(lines) == 7
    by_id = {line["id"]: line for line in lines}
    assert by_id[robot["id"]]["orphaned"] == "True" and by_id[robot["id"]]["business_owner"] == dee["email"]
    assert by_id[wide["id"]]["models_used_30d"] == "openai:gpt-4o-mini"
    assert by_id[stale["id"]]["overdue"] == "rotation_overdue dormant"
    cli = ok(keyward(gateway, "register", "--team", team["name"], "--csv"))
    assert {line["id"] for line in csv.DictReader(io.StringIO(cli))} == set(by_id)
    table = ok(keyward(gateway, "register", "--team", team["name"], "--orphaned"))
    assert robot["name"] in table and "orphaned" in table and "3 of 3 row(s)." in table
    lines_json = [json.loads(line) for line in
                  gateway.admin.get("/register", params={"team_id": team["id"], "format": "jsonl"}).text.splitlines()]
    assert {r["id"] for r in lines_json} == set(by_id)


def test_admin_and_scim_credentials_are_register_rows(gateway: Gateway) -> None:
    keeper, leaver = gateway.user(), gateway.user()
    kept = made(gateway.admin.post("/credentials", json={"name": _unique("kept"), "role": "auditor",
                                                         "owner_id": keeper["id"], "secret_location": "vault"}))
    ownerless = made(gateway.admin.post("/credentials", json={"name": _unique("ownerless"), "role": "finance"}))
    left = made(gateway.admin.post("/credentials", json={"name": _unique("left"), "role": "auditor",
                                                         "owner_id": leaver["id"]}))
    made(gateway.admin.patch(f"/users/{leaver['id']}", json={"status": "deprovisioned"}), 200)
    connection = made(gateway.admin.post("/scim-connections", json={"name": _unique("okta"), "idp": "okta"}))

    found = rows(gateway, kind="admin")
    assert {r["kind"] for r in found} == {"admin"}
    first = row(found, kept["id"])
    assert first["owner"]["id"] == keeper["id"] and first["secret_location"] == "vault"
    assert first["effective"]["role"] == "auditor" and first["effective"]["stored"] == "active"
    assert first["alias"] == f"{kept['name']} ({kept['hint']})" and kept["token"] not in json.dumps(first)
    assert row(found, ownerless["id"])["flags"]["orphaned"] is True  # no one answers for it
    gone = row(found, left["id"])
    assert gone["flags"]["orphaned"] is True and gone["flags"]["reassign_by"] is not None
    scim = row(rows(gateway, kind="scim"), connection["credential"]["id"])
    assert scim["owner"]["type"] == "scim_connection" and scim["owner"]["name"] == connection["connection"]["name"]
    assert scim["flags"]["orphaned"] is False
    assert {r["id"] for r in rows(gateway, owner_id=keeper["id"])} == {kept["id"]}
