"""Revocation is immediate, survives a lost listener connection and a restart of authz, and
last_used_at stays current."""

from __future__ import annotations

import signal
import statistics
import time
from datetime import UTC, datetime

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from authz.tokens import generate_token
from tests.e2e.conftest import Gateway
from tests.e2e.test_denials import assert_openai_error, sql

pytestmark = pytest.mark.e2e


def test_revocation_takes_effect_within_a_second(gateway: Gateway) -> None:
    delays = []
    for _ in range(10):
        minted = gateway.mint()
        assert gateway.status_of(minted.secret) == 200
        gateway.revoke(minted.id)
        delays.append(
            gateway.wait_until(lambda m=minted: gateway.status_of(m.secret) == 401, timeout=1, what="revocation")
        )
    print(
        f"\nrevocation propagation over {len(delays)} revocations: "
        f"median {statistics.median(delays) * 1000:.1f} ms, max {max(delays) * 1000:.1f} ms"
    )


def _health(gateway: Gateway, service: str) -> int:
    address = gateway.stack.services["authz"].env["KEYWARD_AUTHZ_ADDRESS"]
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
    return reply.status


def test_a_revocation_survives_a_restart_of_authz(gateway: Gateway) -> None:
    revoked, live = gateway.mint(), gateway.mint()
    gateway.revoke(revoked.id)
    gateway.wait_until(lambda: gateway.status_of(revoked.secret) == 401, timeout=1, what="revocation")
    assert_openai_error(gateway.chat(revoked.secret), 401, "token_revoked")

    gateway.stack.restart("authz")  # a fresh process: everything it knows comes from its first snapshot

    assert_openai_error(gateway.chat(revoked.secret), 401, "token_revoked")
    assert gateway.status_of(live.secret) == 200
    assert_openai_error(gateway.chat(generate_token()), 401, "token_unknown")  # only revoked ones are known
    gateway.wait_until(lambda: _health(gateway, "keyward.authz.Background") == health_pb2.HealthCheckResponse.SERVING,
                       timeout=2, what="the background tasks to report healthy")


def test_revoke_is_idempotent(gateway: Gateway) -> None:
    minted = gateway.mint()
    first = gateway.revoke(minted.id, reason="first")
    second = gateway.revoke(minted.id, reason="second")
    assert first["revoked_at"] == second["revoked_at"]
    assert second["revoke_reason"] == "first"
    events = gateway.admin.get("/audit/events", params={"target_id": minted.id, "action": "token.revoked"}).json()
    assert len(events["items"]) == 1


def _listener_pids(gateway: Gateway) -> list[int]:
    rows = sql(gateway, "SELECT pid FROM pg_stat_activity WHERE application_name = 'keyward-authz-listener'")
    return [row["pid"] for row in rows]  # type: ignore[attr-defined]


def test_listener_reconnects_and_reloads_after_pg_terminate_backend(gateway: Gateway) -> None:
    survivor, revoked_in_gap = gateway.mint(), gateway.mint()
    [old_pid] = _listener_pids(gateway)
    sql(gateway, "SELECT pg_terminate_backend($1)", old_pid)
    # Changes made while authz is not listening: the snapshot reload must pick them up.
    sql(gateway, "UPDATE tokens SET revoked_at = now(), revoked_by = 'test' WHERE id = $1::uuid", revoked_in_gap.id)
    minted_in_gap = gateway.mint()
    gateway.wait_until(lambda: _listener_pids(gateway) not in ([], [old_pid]), timeout=10, what="reconnect")
    gateway.wait_until(lambda: gateway.status_of(revoked_in_gap.secret) == 401, timeout=2, what="gap revocation")
    assert gateway.status_of(survivor.secret) == 200
    assert gateway.status_of(minted_in_gap.secret) == 200
    # And the new connection listens: a fresh revocation is immediate again.
    gateway.revoke(survivor.id)
    gateway.wait_until(lambda: gateway.status_of(survivor.secret) == 401, timeout=1, what="revocation after reconnect")


def test_last_used_at_is_current_within_seconds(gateway: Gateway) -> None:
    minted = gateway.mint()
    assert gateway.admin.get(f"/tokens/{minted.id}").json()["last_used_at"] is None
    before = datetime.now(UTC)
    for _ in range(20):
        assert gateway.status_of(minted.secret) == 200

    def written() -> bool:
        return gateway.admin.get(f"/tokens/{minted.id}").json()["last_used_at"] is not None

    gateway.wait_until(written, timeout=6, what="last_used_at")
    stamp = datetime.fromisoformat(gateway.admin.get(f"/tokens/{minted.id}").json()["last_used_at"])
    assert before.timestamp() - 1 <= stamp.timestamp() <= time.time() + 1


def test_last_used_at_is_batched_not_written_per_request(gateway: Gateway) -> None:
    minted = gateway.mint()
    time.sleep(2.5)  # let any pending flush go out first
    # A statement-level trigger counts UPDATE statements that touch last_used_at.
    sql(gateway, "CREATE TABLE IF NOT EXISTS test_flushes (at timestamptz DEFAULT clock_timestamp())")
    sql(
        gateway,
        """CREATE OR REPLACE FUNCTION test_count_flush() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
                    BEGIN INSERT INTO test_flushes DEFAULT VALUES; RETURN NULL; END $$""",
    )
    sql(
        gateway,
        """CREATE TRIGGER test_count_flush AFTER UPDATE OF last_used_at ON tokens
                    FOR EACH STATEMENT EXECUTE FUNCTION test_count_flush()""",
    )
    try:
        for _ in range(50):
            assert gateway.status_of(minted.secret) == 200
        gateway.wait_until(
            lambda: gateway.admin.get(f"/tokens/{minted.id}").json()["last_used_at"] is not None,
            timeout=6,
            what="last_used_at",
        )
        time.sleep(2.5)  # one more flush interval: nothing further may be written
        flushes = sql(gateway, "SELECT count(*) AS n FROM test_flushes")[0]["n"]  # type: ignore[index]
        assert 1 <= flushes <= 2, f"{flushes} UPDATE statements for 50 requests: not batched"
    finally:
        sql(gateway, "DROP TRIGGER test_count_flush ON tokens")
        sql(gateway, "DROP FUNCTION test_count_flush()")
        sql(gateway, "DROP TABLE test_flushes")


def test_authz_down_fails_closed_with_503(gateway: Gateway) -> None:
    minted = gateway.mint()
    authz = gateway.stack.services["authz"]
    gateway.forget_received()
    try:
        authz.stop(signal.SIGKILL)
        response = gateway.chat(minted.secret)
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/json"
        assert "authorization service is unavailable" in response.json()["error"]["message"]
        response = gateway.http.post(
            "/anthropic/v1/messages",
            headers={"x-api-key": minted.secret},
            json={"model": "claude-haiku-4-5", "max_tokens": 5, "messages": []},
        )
        assert response.status_code == 503
        assert response.json()["type"] == "error"
        assert gateway.received() == [], "a request was forwarded without a decision"
    finally:
        gateway.stack.restart("authz")
    assert gateway.status_of(minted.secret) == 200


def test_a_killed_authz_leaves_no_ghost_for_revocations_to_wait_for(gateway: Gateway) -> None:
    # The restarted process is the same replica (its id follows from its spool), and its snapshot
    # began after the revocation: confirmed at once, not "unconfirmed" until the dead one times out.
    before = {row["id"] for row in sql(gateway, "SELECT id FROM authz_replicas")}
    minted, revoked_while_down = gateway.mint(), gateway.mint()
    gateway.stack.services["authz"].stop(signal.SIGKILL)
    try:
        answer = gateway.revoke(revoked_while_down.id)["revocation"]
        assert answer["applied"] is False and len(answer["unconfirmed"]) == 1  # nobody applied it: said so
    finally:
        gateway.stack.restart("authz")
    answer = gateway.revoke(minted.id)["revocation"]
    assert answer["applied"] is True and set(answer["confirmed"]) == before, answer
    assert {row["id"] for row in sql(gateway, "SELECT id FROM authz_replicas")} == before
    assert_openai_error(gateway.chat(revoked_while_down.secret), 401, "token_revoked")
