"""Revoked means revoked from the instant the API answers: two gateway replicas (two authz, two Envoys,
one Postgres) under load, many revocations, and not one request allowed after a revoke returned.
"""

from __future__ import annotations

import time

import pytest

from tests.faults.conftest import FaultStack, Load, assert_recorded

pytestmark = pytest.mark.e2e

TOKENS = 30


def test_no_request_is_allowed_after_a_revoke_returns_on_any_replica(faulted: FaultStack) -> None:
    second = faulted.stack.pairs.get("b") or faulted.stack.add_gateway("b")
    minted = [faulted.mint() for _ in range(TOKENS)]
    for token in minted:
        faulted.wait_until(lambda token=token: faulted.http.get(  # type: ignore[misc]
            f"{second.gateway_url}/openai/v1/keyward-probe",
            headers={"Authorization": f"Bearer {token.secret}"}).status_code == 404, what="replica b to know it")
    targets = [(url, token.secret) for token in minted for url in (faulted.url, second.gateway_url)]
    returned: dict[str, float] = {}
    answers: list[dict] = []
    with Load(targets, threads=4, pause=0.002) as load:
        time.sleep(0.5)
        for token in minted:
            reply = faulted.admin.post(f"/tokens/{token.id}/revoke", json={"reason": "revocation test"})
            returned[token.secret] = time.time()
            assert reply.status_code == 200, reply.text
            answers.append(reply.json()["revocation"])
            time.sleep(0.05)
        time.sleep(0.5)

    # Every revocation was confirmed by both replicas, within the wait.
    unconfirmed = [a for a in answers if not a["applied"] or len(a["confirmed"]) != 2]
    assert unconfirmed == [], unconfirmed[:3]
    # No response to a request sent after its token's revoke returned was a success.
    after = [s for s in load.seen if s.secret in returned and s.sent > returned[s.secret]]
    assert after, "the load sent nothing after the revocations"
    served = [(s.url, s.request_id) for s in after if s.status == 200]
    assert served == [], f"{len(served)} requests served after their revoke returned: {served[:3]}"
    # And the store agrees: no allowed decision stamped after the revoke returned.
    found = assert_recorded(faulted, load)
    late_allowed = [s.request_id for s in after if found.decision[s.request_id] == "allowed"]
    assert late_allowed == []
    # The applied instant is on record, per replica, next to the revocation.
    events = faulted.admin.get("/audit/events", params={"target_id": minted[0].id,
                                                        "action": "revocation.confirmed"}).json()["items"]
    assert len(events) == 1 and len(events[0]["after"]["confirmed"]) == 2
    waited = sorted(a["waited_ms"] for a in answers)
    print(f"\n{TOKENS} revocations under load on 2 replicas: {len(load.seen)} responses, {len(after)} after a "
          f"revoke returned, 0 served; confirmation wait p50 {waited[len(waited) // 2]} ms, max {waited[-1]} ms")
