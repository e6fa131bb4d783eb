"""Notification channels and delivery, against a real stack and a real HTTP receiver.

The stack is this module's own: its control plane delivers every 0.2 s, retries after 0.3 s (doubling)
and gives up after 3 attempts, so retries and give-ups happen within a test. The receiver is an
``http.server`` on 127.0.0.1 in a thread; each path answers with the statuses a test queues for it
(200 once they run out), and records every request it got.

Also here, in-process against the stack's database: :func:`controlplane.services.notifications.enqueue`
(the outbox the budget evaluator calls) and two delivery rounds at once (two control-plane replicas),
which must never send one delivery twice.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from authz.config import sqlalchemy_url
from controlplane.core.signatures import sign, verify
from controlplane.models import NotificationDelivery
from controlplane.services import delivery, notifications
from controlplane.stack.runner import Stack, StackSettings
from tests.e2e.conftest import Gateway, free_port

pytestmark = pytest.mark.e2e

MAX_ATTEMPTS = 3


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """An HTTP server that answers each path with queued statuses (then 200) and records what it got."""

    url: str = ""
    got: list[Received] = field(default_factory=list)
    statuses: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    delays: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.got if r.path == path]

    def answer(self, path: str, *statuses: int) -> str:
        self.statuses[path].extend(statuses)
        return self.url + path


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with state.lock:
                state.got.append(Received(self.path, dict(self.headers.items()), body, time.time()))
                queued = state.statuses[self.path]
                status = queued.pop(0) if queued else 200
            time.sleep(state.delays.get(self.path, 0))
            answer = b'{"ok": true}' if status < 300 else b"receiver says no"
            self.send_response(status)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def stack() -> Iterator[Gateway]:
    """A stack of this module's own, delivering fast and giving up after MAX_ATTEMPTS."""
    data_dir = Path(tempfile.mkdtemp(prefix="keyward-notify-"))
    settings = StackSettings(
        data_dir=data_dir, gateway_port=free_port(), api_port=free_port(), mock_port=free_port(),
        admin_token=None, openai_api_key=None, anthropic_api_key=None, database_url=None,
        envoy_concurrency=1, notification_interval_seconds=0.2, notification_retry_seconds=0.3,
        notification_max_attempts=MAX_ATTEMPTS,
    )
    running = Stack(settings=settings, report=lambda _message: None)
    info = running.start(timeout=120)
    gateway = Gateway(running, info)
    try:
        yield gateway
    finally:
        gateway.close()
        running.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def channel(stack: Gateway, url: str, kind: str = "webhook", name: str | None = None) -> dict:
    reply = stack.admin.post("/notification-channels", json={"name": name or _name(kind), "kind": kind, "url": url})
    assert reply.status_code == 201, reply.text
    return reply.json()


def send_test(stack: Gateway, channel_id: str) -> str:
    reply = stack.admin.post(f"/notification-channels/{channel_id}/test")
    assert reply.status_code == 202, reply.text
    return reply.json()["delivery_id"]


def deliveries(stack: Gateway, **params: Any) -> list[dict]:
    reply = stack.admin.get("/notification-deliveries", params={"limit": 500, **params})
    assert reply.status_code == 200, reply.text
    return reply.json()["items"]


def settled(stack: Gateway, delivery_id: str, timeout: float = 15) -> dict:
    """The delivery once it is delivered or failed."""
    found: dict = {}

    def done() -> bool:
        found.update(next(d for d in deliveries(stack) if d["id"] == delivery_id))
        return found["status"] != "pending"

    stack.wait_until(done, timeout=timeout, what=f"delivery {delivery_id} to settle")
    return found


def events(stack: Gateway, **params: Any) -> list[dict]:
    reply = stack.admin.get("/audit/events", params={"limit": 500, **params})
    assert reply.status_code == 200, reply.text
    return reply.json()["items"]


# -- channels -------------------------------------------------------------------------------------


def test_a_webhook_secret_is_shown_once_and_recorded_nowhere(stack: Gateway, receiver: Receiver) -> None:
    created = channel(stack, receiver.url + "/once")
    secret = created["signing_secret"]
    assert secret.startswith("kw_whsec_") and len(secret) > 40
    assert created["enabled"] is True and created["kind"] == "webhook" and created["url"] == receiver.url + "/once"
    shown = stack.admin.get(f"/notification-channels/{created['id']}")
    assert shown.status_code == 200 and "signing_secret" not in shown.json()
    listed = stack.admin.get("/notification-channels", params={"limit": 500}).json()["items"]
    assert [c for c in listed if c["id"] == created["id"]] == [shown.json()]
    assert secret not in json.dumps(listed)
    rotated = stack.admin.post(f"/notification-channels/{created['id']}/rotate-secret")
    assert rotated.status_code == 200, rotated.text
    assert rotated.json()["signing_secret"].startswith("kw_whsec_") and rotated.json()["signing_secret"] != secret
    recorded = events(stack, target_type="notification_channel", target_id=created["id"])
    assert [e["action"] for e in recorded] == ["notification_channel.created", "notification_channel.secret_rotated"]
    assert secret not in json.dumps(recorded) and rotated.json()["signing_secret"] not in json.dumps(recorded)
    assert recorded[0]["after"]["name"] == created["name"] and recorded[0]["actor"] == "admin:bootstrap"


def test_a_slack_url_is_its_credential_and_is_shown_shortened(stack: Gateway, receiver: Receiver) -> None:
    url = f"{receiver.url}/services/T000/B000/XXXXsecretpartABCD"
    created = channel(stack, url, kind="slack")
    assert created["signing_secret"] is None
    assert created["url"] == f"{receiver.url}/…ABCD"
    assert stack.admin.get(f"/notification-channels/{created['id']}").json()["url"] == f"{receiver.url}/…ABCD"
    recorded = events(stack, target_type="notification_channel", target_id=created["id"])
    assert "secretpart" not in json.dumps(recorded)
    # A Slack channel has no signing secret to rotate.
    reply = stack.admin.post(f"/notification-channels/{created['id']}/rotate-secret")
    assert reply.status_code == 409 and reply.json()["code"] == "notification_channel_unsigned", reply.text
    # Changing only the secret part of the URL is still a recorded change.
    reply = stack.admin.patch(f"/notification-channels/{created['id']}", json={"url": url[:-4] + "WXYZ"})
    assert reply.status_code == 200, reply.text
    assert [e["action"] for e in events(stack, target_type="notification_channel", target_id=created["id"])] == [
        "notification_channel.created", "notification_channel.changed"]


@pytest.mark.parametrize("url", ["ftp://example.com/hook", "example.com/hook", "javascript:alert(1)", "http://",
                                 "http://exa mple.com/", "http://example.com:99999/"])
def test_only_http_urls_are_channels(stack: Gateway, url: str) -> None:
    reply = stack.admin.post("/notification-channels", json={"name": _name("bad"), "kind": "webhook", "url": url})
    assert reply.status_code == 422, reply.text
    assert reply.json()["detail"][0]["loc"] == ["body", "url"], reply.text
    reply = stack.admin.post("/notification-channels", json={"name": _name("bad"), "kind": "teams", "url":
                                                             "https://example.com"})
    assert reply.status_code == 422 and reply.json()["detail"][0]["loc"] == ["body", "kind"], reply.text


def test_names_are_unique_and_missing_channels_are_404(stack: Gateway, receiver: Receiver) -> None:
    first = channel(stack, receiver.url + "/x")
    reply = stack.admin.post("/notification-channels", json={"name": first["name"].upper(), "kind": "slack",
                                                             "url": "https://example.com/x"})
    assert reply.status_code == 409 and reply.json()["code"] == "notification_channel_exists", reply.text
    other = channel(stack, receiver.url + "/y")
    reply = stack.admin.patch(f"/notification-channels/{other['id']}", json={"name": first["name"]})
    assert reply.status_code == 409 and reply.json()["code"] == "notification_channel_exists", reply.text
    reply = stack.admin.patch(f"/notification-channels/{other['id']}", json={"enabled": None})
    assert reply.status_code == 422, reply.text
    missing = uuid.uuid4()
    for method, path in (("GET", ""), ("PATCH", ""), ("DELETE", ""), ("POST", "/test"), ("POST", "/rotate-secret")):
        reply = stack.admin.request(method, f"/notification-channels/{missing}{path}",
                                    json={"name": "x"} if method == "PATCH" else None)
        assert reply.status_code == 404 and reply.json()["code"] == "notification_channel_not_found", reply.text


# -- delivery -------------------------------------------------------------------------------------


def test_a_webhook_delivery_is_signed_and_verifies(stack: Gateway, receiver: Receiver) -> None:
    path = f"/signed-{uuid.uuid4().hex[:6]}"
    created = channel(stack, receiver.url + path)
    delivery_id = send_test(stack, created["id"])
    got = settled(stack, delivery_id)
    assert got["status"] == "delivered" and got["attempts"] == 1 and got["last_error"] is None
    assert got["delivered_at"] is not None and got["kind"] == "notification.test"
    [request] = receiver.on(path)
    headers = {k.lower(): v for k, v in request.headers.items()}
    assert headers["content-type"] == "application/json"
    assert headers["keyward-event"] == "notification.test"
    assert headers["keyward-delivery"] == delivery_id
    signature = headers["keyward-signature"]
    assert verify(created["signing_secret"], signature, request.body)
    timestamp = int(signature.split(",")[0].removeprefix("t="))
    assert abs(timestamp - request.at) < 5
    # The signature covers the body and the time: any change, or another secret, fails.
    assert not verify(created["signing_secret"], signature, request.body + b" ")
    assert not verify("kw_whsec_another", signature, request.body)
    assert not verify(created["signing_secret"], signature, request.body, now=timestamp + 3600)
    document = json.loads(request.body)
    assert set(document) == {"id", "kind", "created_at", "data"}
    assert document["id"] == delivery_id and document["kind"] == "notification.test"
    assert document["data"]["channel"] == created["name"] and "summary" in document["data"]


def test_a_rotated_secret_signs_from_then_on(stack: Gateway, receiver: Receiver) -> None:
    path = f"/rotated-{uuid.uuid4().hex[:6]}"
    created = channel(stack, receiver.url + path)
    new = stack.admin.post(f"/notification-channels/{created['id']}/rotate-secret").json()["signing_secret"]
    assert settled(stack, send_test(stack, created["id"]))["status"] == "delivered"
    [request] = receiver.on(path)
    assert verify(new, request.headers["Keyward-Signature"], request.body)
    assert not verify(created["signing_secret"], request.headers["Keyward-Signature"], request.body)


def test_a_slack_channel_gets_a_message_for_people(stack: Gateway, receiver: Receiver) -> None:
    path = f"/slack-{uuid.uuid4().hex[:6]}"
    created = channel(stack, receiver.url + path, kind="slack")
    assert settled(stack, send_test(stack, created["id"]))["status"] == "delivered"
    [request] = receiver.on(path)
    assert "Keyward-Signature" not in request.headers
    message = json.loads(request.body)
    assert message["text"].startswith("Keyward test notification: Test notification from Keyward to channel "
                                      f"{created['name']}")
    assert message["blocks"][0] == {"type": "header", "text": {"type": "plain_text",
                                                               "text": "Keyward test notification"}}
    assert any(block["type"] == "section" for block in message["blocks"])


def test_a_receiver_that_fails_once_gets_it_on_the_retry(stack: Gateway, receiver: Receiver) -> None:
    path = f"/flaky-{uuid.uuid4().hex[:6]}"
    created = channel(stack, receiver.answer(path, 500))
    delivery_id = send_test(stack, created["id"])
    got = settled(stack, delivery_id)
    assert got["status"] == "delivered" and got["attempts"] == 2 and got["last_error"] is None
    first, second = receiver.on(path)
    assert first.headers["Keyward-Delivery"] == second.headers["Keyward-Delivery"] == delivery_id
    assert first.body == second.body  # the same document, signed again for the retry
    assert all(verify(created["signing_secret"], r.headers["Keyward-Signature"], r.body) for r in (first, second))
    assert second.at - first.at >= 0.25  # the back-off: 0.3 s after the first failure


def test_a_dead_url_fails_after_the_attempts_with_an_event(stack: Gateway, receiver: Receiver) -> None:
    dead = channel(stack, f"http://127.0.0.1:{free_port()}/nobody-home")
    delivery_id = send_test(stack, dead["id"])
    got = settled(stack, delivery_id)
    assert got["status"] == "failed" and got["attempts"] == MAX_ATTEMPTS and got["delivered_at"] is None
    assert got["last_error"] and "Connect" in got["last_error"], got
    # A receiver that answers, but always with an error, fails the same way; its answer is kept.
    path = f"/refusing-{uuid.uuid4().hex[:6]}"
    refusing = channel(stack, receiver.answer(path, *[503] * MAX_ATTEMPTS))
    refused = settled(stack, send_test(stack, refusing["id"]))
    assert refused["status"] == "failed" and refused["last_error"] == "HTTP 503: receiver says no"
    assert len(receiver.on(path)) == MAX_ATTEMPTS
    [event] = events(stack, action="notification.failed", target_id=delivery_id)
    assert event["actor"] == "system:notifications" and event["mechanism"] == "system"
    assert event["target_type"] == "notification_delivery"
    assert event["after"]["channel_id"] == dead["id"] and event["after"]["attempts"] == MAX_ATTEMPTS
    assert [d["id"] for d in deliveries(stack, status="failed", channel_id=dead["id"])] == [delivery_id]
    assert deliveries(stack, status="delivered", channel_id=dead["id"]) == []


def test_a_paused_channel_holds_its_deliveries_and_a_removed_one_gives_them_up(stack: Gateway,
                                                                                receiver: Receiver) -> None:
    path = f"/paused-{uuid.uuid4().hex[:6]}"
    created = channel(stack, receiver.answer(path, 500))
    delivery_id = send_test(stack, created["id"])
    stack.wait_until(lambda: len(receiver.on(path)) == 1, what="the first attempt")
    reply = stack.admin.patch(f"/notification-channels/{created['id']}", json={"enabled": False})
    assert reply.status_code == 200 and reply.json()["enabled"] is False, reply.text
    time.sleep(1.5)  # five rounds, and the retry was due after 0.3 s
    [held] = [d for d in deliveries(stack, channel_id=created["id"])]
    assert held["status"] == "pending" and held["attempts"] == 1 and len(receiver.on(path)) == 1
    reply = stack.admin.post(f"/notification-channels/{created['id']}/test")
    assert reply.status_code == 409 and reply.json()["code"] == "notification_channel_disabled", reply.text
    removed = stack.admin.delete(f"/notification-channels/{created['id']}")
    assert removed.status_code == 200 and removed.json()["enabled"] is False, removed.text
    [given_up] = deliveries(stack, channel_id=created["id"])
    assert given_up["id"] == delivery_id and given_up["status"] == "failed"
    assert given_up["last_error"] == notifications.REMOVED
    recorded = events(stack, target_type="notification_channel", target_id=created["id"])
    assert [e["action"] for e in recorded] == ["notification_channel.created", "notification_channel.tested",
                                               "notification_channel.changed", "notification_channel.removed"]
    assert recorded[2]["before"]["enabled"] is True and recorded[2]["after"]["enabled"] is False
    assert recorded[3]["after"]["abandoned_deliveries"] == 1
    # Still there, with its history; an admin may put it back in service.
    assert stack.admin.get(f"/notification-channels/{created['id']}").status_code == 200
    reply = stack.admin.patch(f"/notification-channels/{created['id']}", json={"enabled": True})
    assert reply.status_code == 200 and reply.json()["enabled"] is True
    assert settled(stack, send_test(stack, created["id"]))["status"] == "delivered"


# -- in-process: the outbox, and two replicas at once ----------------------------------------------


def _run(stack: Gateway, work: Any) -> Any:
    async def main() -> Any:
        engine = create_async_engine(sqlalchemy_url(stack.info.database_url))
        try:
            return await work(engine)
        finally:
            await engine.dispose()

    return asyncio.run(main())


def test_enqueue_queues_one_delivery_per_enabled_channel_in_the_callers_transaction(stack: Gateway,
                                                                                     receiver: Receiver) -> None:
    paused = channel(stack, receiver.url + "/paused-enqueue")
    stack.admin.patch(f"/notification-channels/{paused['id']}", json={"enabled": False})
    enabled = {c["id"] for c in stack.admin.get("/notification-channels", params={"enabled": True, "limit": 500})
               .json()["items"]}
    assert enabled and paused["id"] not in enabled
    kind = f"e2e.enqueued.{uuid.uuid4().hex[:6]}"

    async def work(engine: Any) -> tuple[int, int, list[NotificationDelivery]]:
        async with engine.connect() as connection:
            async with AsyncSession(bind=connection) as session, session.begin():
                rolled_back = await notifications.enqueue(session, kind=kind, payload={"n": 1})
                await session.rollback()
            async with AsyncSession(bind=connection) as session, session.begin():
                queued = await notifications.enqueue(session, kind=kind, payload={"summary": "hi", "n": 2})
            async with AsyncSession(bind=connection) as session:
                rows = list((await session.scalars(select(NotificationDelivery)
                                                   .where(NotificationDelivery.kind == kind))).all())
        return rolled_back, queued, rows

    rolled_back, queued, rows = _run(stack, work)
    assert rolled_back == queued == len(enabled)
    # Only the committed call left deliveries, one per enabled channel, due at once.
    assert sorted(str(r.channel_id) for r in rows) == sorted(enabled)
    assert {r.payload["n"] for r in rows} == {2}
    assert all(r.status in ("pending", "delivered", "failed") for r in rows)
    stack.wait_until(lambda: all(d["status"] != "pending" for d in deliveries(stack, kind=kind)), timeout=15,
                     what="the enqueued deliveries to be attempted")


def test_two_replicas_delivering_at_once_never_send_one_twice(stack: Gateway, receiver: Receiver) -> None:
    path = f"/slow-{uuid.uuid4().hex[:6]}"
    receiver.delays[path] = 0.5  # each send holds its round (and its row locks) for half a second
    created = channel(stack, receiver.url + path)
    ids = {send_test(stack, created["id"]) for _ in range(12)}
    policy = delivery.Policy(max_attempts=MAX_ATTEMPTS, retry_seconds=0.3, timeout_seconds=5)

    async def work(engine: Any) -> list[int]:
        async def replica() -> int:
            sent = 0
            for _ in range(6):
                async with AsyncSession(bind=engine) as session, session.begin():
                    sent += await delivery.deliver_due(session, policy=policy)
            return sent

        # Two more replicas besides the stack's own control plane, all three rounds overlapping.
        return list(await asyncio.gather(replica(), replica()))

    _run(stack, work)
    stack.wait_until(lambda: all(d["status"] == "delivered" for d in deliveries(stack, channel_id=created["id"])),
                     timeout=20, what="every delivery to be delivered")
    sent = [r.headers["Keyward-Delivery"] for r in receiver.on(path)]
    assert sorted(sent) == sorted(ids), "each delivery must arrive exactly once"
    assert all(d["attempts"] == 1 for d in deliveries(stack, channel_id=created["id"]))


def test_signatures_made_by_sign_verify_and_nothing_else_does() -> None:
    body = b'{"id":"x"}'
    header = sign("s3cret", body, timestamp=1_700_000_000)
    assert header.startswith("t=1700000000,v1=") and len(header.split("v1=")[1]) == 64
    assert verify("s3cret", header, body, now=1_700_000_100)
    assert verify("s3cret", f"{header},v1={'0' * 64}", body, now=1_700_000_000)  # any v1 may match
    for bad in ("", "t=,v1=", "v1=" + header.split("v1=")[1], header.split(",")[0], "garbage"):
        assert not verify("s3cret", bad, body, now=1_700_000_000)
    assert not verify("s3cret", header, body, now=1_700_000_000 + 301)
