"""The evidence pack's departed section asks a few grouped queries for everyone at once; this proves it
answers exactly what the per-person question (``GET /audit/users/{id}/activity``, i.e.
:func:`controlplane.audit.queries.user_activity`) answers, person by person, including requests allowed
after a deprovisioning and one Envoy answered alone (never counted as allowed).

Those two requests are written inside a transaction that is rolled back: the shared store's chains
and its evidence ("0 allowed after deprovisioning") stay as they were."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from authz.config import sqlalchemy_url
from controlplane.audit import queries
from controlplane.services import evidence
from tests.e2e.conftest import Gateway
from tests.e2e.test_audit import wait_for_records

pytestmark = pytest.mark.e2e

_RECORD = """INSERT INTO request_records (seq, at, request_id, source, user_id, user_email, decision, prev_hash, hash)
             VALUES (:seq, :at, :request_id, 'authz', :user_id, 'x@example.com', 'allowed', '\\x', '\\x')"""
_OUTCOME = """INSERT INTO request_outcomes (seq, at, request_id, status, details, decided, prev_hash, hash)
              VALUES (:seq, :at, :request_id, 503, 'authz_timeout', false, '\\x', '\\x')"""


async def _compare(owner_url: str, late: uuid.UUID) -> list[dict]:
    engine = create_async_engine(sqlalchemy_url(owner_url))
    try:
        async with engine.connect() as connection:
            transaction = await connection.begin()
            session = AsyncSession(bind=connection)
            at = datetime.now(UTC) + timedelta(minutes=5)
            # Two requests authz allowed after ``late`` was deprovisioned; Envoy answered the second alone.
            for n, request_id in enumerate((f"late-{uuid.uuid4()}", f"envoy-{uuid.uuid4()}")):
                await session.execute(text(_RECORD), {"seq": -10_000_000 - n, "at": at + timedelta(seconds=n),
                                                      "request_id": request_id, "user_id": late})
                if n:
                    await session.execute(text(_OUTCOME), {"seq": -10_000_000 - n, "request_id": request_id,
                                                           "at": at + timedelta(seconds=n)})
            grouped = await evidence.departed(session)
            for person in grouped["people"]:
                one = await queries.user_activity(session, person["user_id"])
                event, last, allowed = one["disabled_by"] or {}, one["last_request"] or {}, \
                    one["last_allowed_request"] or {}
                assert person == {
                    "user_id": person["user_id"], "email": person["email"],
                    "deprovision_event_seq": event.get("seq"), "deprovision_event_action": event.get("action"),
                    "deprovision_event_at": event.get("at"), "deprovision_event_actor": event.get("actor"),
                    "effective_at": one["effective_at"], "last_request_id": last.get("request_id"),
                    "last_request_seq": last.get("seq"), "last_request_at": last.get("at"),
                    "last_request_decision": last.get("decision"),
                    "last_allowed_request_id": allowed.get("request_id"),
                    "last_allowed_request_seq": allowed.get("seq"), "last_allowed_request_at": allowed.get("at"),
                    "allowed_after_deprovision": one["allowed_after_disabled"],
                    "allowed_after_deprovision_examples": [
                        {"request_id": r["request_id"], "seq": r["seq"], "at": r["at"]}
                        for r in one["allowed_after_disabled_examples"]],
                }, person["email"]
            await transaction.rollback()
            return grouped["people"]
    finally:
        await engine.dispose()


def test_the_grouped_departed_section_answers_as_the_per_person_question(gateway: Gateway) -> None:
    suffix = uuid.uuid4().hex[:6]
    team = gateway.team(f"dep-{suffix}")
    people = [gateway.mint(gateway.user(email=f"dep{n}-{suffix}@example.com"), team, models=["gpt-4o-mini"])
              for n in range(3)]
    ids = [gateway.chat(minted.secret).headers["x-request-id"] for minted in people[:2]]
    ids.append(gateway.chat(people[1].secret, model="no-such-model-x").headers["x-request-id"])
    wait_for_records(gateway, ids)
    for minted in people:
        reply = gateway.admin.patch(f"/users/{minted.user['id']}", json={"status": "deprovisioned"})
        assert reply.status_code == 200, reply.text
    ids.append(gateway.chat(people[0].secret).headers["x-request-id"])  # refused: revoked
    wait_for_records(gateway, ids)
    late = uuid.UUID(people[2].user["id"])
    found = {str(p["user_id"]): p for p in asyncio.run(_compare(gateway.info.owner_database_url, late))}
    first, second, third = (found[m.user["id"]] for m in people)
    assert first["last_allowed_request_id"] == ids[0] and first["last_request_id"] == ids[3]
    assert first["allowed_after_deprovision"] == 0 and second["last_request_id"] == ids[2]
    assert second["last_request_decision"] == "model_not_allowed"
    # The one authz allowed and the client got counts; the one Envoy answered alone does not.
    assert third["allowed_after_deprovision"] == 1 and third["last_request_decision"].startswith("envoy:")
    [example] = third["allowed_after_deprovision_examples"]
    assert example["request_id"].startswith("late-")
    # Rolled back: the store holds neither request.
    assert gateway.admin.get(f"/audit/users/{late}/activity").json()["allowed_after_disabled"] == 0
