"""Revoked means revoked from the instant the API answers: two gateway replicas (two authz, two Envoys,
one Postgres) under load, many revocations, and not one request allowed after a revoke returned; and
a replica cut off from Postgres stops allowing before any revocation stops waiting for it.
"""

from __future__ import annotations

import time

import httpx
import pytest

from tests.faults.conftest import FaultStack, Load, Partition, assert_recorded

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


#: The staleness bound of the replica the partition test cuts off (short, to keep the test short).
STALE = 3.0


def test_a_replica_cut_off_from_postgres_stops_allowing_before_revocations_stop_waiting_for_it(
        faulted: FaultStack) -> None:
    with Partition(faulted.info.database_url) as partition:
        pair = faulted.stack.add_gateway("p", authz_env={
            "DATABASE_URL": partition.url, "KEYWARD_MAX_STALENESS_SECONDS": str(STALE),
            "KEYWARD_LISTENER_KEEPALIVE_SECONDS": "1"})
        try:
            _partitioned_replica(faulted, partition, pair.gateway_url, faulted.pid(pair.authz))
        finally:
            faulted.stack.remove_gateway("p")


def _partitioned_replica(faulted: FaultStack, partition: Partition, url: str, pid: int) -> None:
    def chat(secret: str) -> httpx.Response:
        return faulted.http.post(f"{url}/openai/v1/chat/completions", headers={"Authorization": f"Bearer {secret}"},
                                 json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})

    def revoke(token_id: str) -> dict:
        reply = faulted.admin.post(f"/tokens/{token_id}/revoke", json={"reason": "partition test"})
        assert reply.status_code == 200, reply.text
        return reply.json()["revocation"]

    first, second = faulted.mint(), faulted.mint()
    for token in (first, second):
        faulted.wait_until(lambda token=token: chat(token.secret).status_code == 200,  # type: ignore[misc]
                           what="the cut-off replica to know the tokens")
    replica = faulted.sql("SELECT id FROM authz_replicas WHERE pid = $1", pid)[0]["id"]

    partition.cut()
    # Revoked while the replica cannot hear it: the answer says so, naming it.
    answer = revoke(first.id)
    assert answer["applied"] is False and answer["unconfirmed"] == [replica], answer
    answer_ms = answer["waited_ms"]
    # Within its bound it stops allowing anything, the revoked token included.
    refusing = faulted.wait_until(lambda: chat(second.secret).status_code == 503, timeout=STALE + 1,
                                  what="the cut-off replica to refuse")
    for secret in (first.secret, second.secret):
        refused = chat(secret)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "policy_stale", refused.text

    # Only after that does the control plane stop waiting for it: a revocation is applied again,
    # and the replica it no longer waits for refuses already.
    forgotten = refusing + faulted.wait_until(lambda: not faulted.sql(
        "SELECT 1 FROM authz_replicas WHERE id = $1"
        " AND seen_at + make_interval(secs => stale_after_seconds + 2) > now()", replica),
        timeout=STALE + 5, what="the control plane to stop waiting for the cut-off replica")
    answer = revoke(second.id)
    assert answer["applied"] is True and replica not in answer["confirmed"], answer
    assert chat(second.secret).status_code == 503

    partition.heal()
    # Back in touch: it reloads, and both revocations hold there too.
    back = faulted.wait_until(lambda: chat(first.secret).status_code == 401, timeout=30, what="the replica to reload")
    for secret in (first.secret, second.secret):
        refused = chat(secret)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "token_revoked", refused.text
    print(f"\npartition (bound {STALE:.0f} s): revoke answered applied=false naming the replica; it refused "
          f"everything {refusing + answer_ms / 1000:.1f} s after the cut, the control plane stopped waiting for it "
          f"{forgotten + answer_ms / 1000:.1f} s after; back and refusing both tokens as revoked "
          f"{back:.1f} s after healing")
