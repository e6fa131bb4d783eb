"""Hostile input on every gateway route: whatever a client sends (NUL, bytes that are not UTF-8, lone
surrogates, a megabyte, duplicate keys, duplicate credentials, requests Envoy itself refuses), every
response is recorded once, nothing is set aside as unstorable, and the store keeps ingesting.
"""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from authz.routes import SERVED
from authz.upstreams import PREFIXES
from tests.faults.conftest import FaultStack, Load, Seen, assert_recorded

pytestmark = pytest.mark.e2e


def _concrete(template: str) -> str:
    return template.replace("{model}", "gpt-4o-mini").replace("{id}", "file-abc123").replace("{server}", "docs")


#: Every endpoint of every API (those whose upstream this stack lacks are refused after the Check, 503).
ROUTES = sorted({(method, PREFIXES[api] + _concrete(rest)) for api, method, rest, _ in SERVED}
                | {("POST", "/openai/v1/not-an-endpoint")})

#: (name, body bytes, content type) sent to every route.
BODIES: list[tuple[str, bytes, str]] = [
    ("nul-in-model", b'{"model":"gpt-4o-mini\\u0000x","messages":[]}', "application/json"),
    ("raw-nul", b'{"model":"gpt-4o-mini\x00x"}', "application/json"),
    ("invalid-utf8", b'{"model":"gpt-4o-\xff\xfe","messages":[]}', "application/json"),
    ("lone-surrogate", b'{"model":"\\ud800","messages":[]}', "application/json"),
    ("megabyte-model", b'{"model":"' + b"m" * 1_000_000 + b'"}', "application/json"),
    ("duplicate-model", b'{"model":"gpt-4o-mini","model":"o1-pro","messages":[]}', "application/json"),
    ("not-json", b"\x00\x01\x02 garbage", "application/json"),
    ("nested-bomb", b'{"model":' + b"[" * 50_000 + b"]" * 50_000 + b"}", "application/json"),
]


def _send(client: httpx.Client, stack: FaultStack, method: str, path: str, headers: list[tuple[bytes, bytes]],
          body: bytes | None, seen: list[Seen], secret: str) -> httpx.Response:
    sent = time.time()
    reply = client.request(method, stack.url + path, headers=headers, content=body)
    request_id = reply.headers.get("x-request-id")
    assert request_id, (method, path, reply.status_code)
    seen.append(Seen(request_id, reply.status_code, secret, stack.url, sent, time.time()))
    assert reply.status_code < 500 or reply.status_code == 503, (method, path, reply.status_code, reply.text[:200])
    return reply


def test_hostile_requests_on_every_route_are_each_recorded_once(faulted: FaultStack) -> None:
    minted = faulted.mint()
    auth = [(b"authorization", f"Bearer {minted.secret}".encode())]
    seen: list[Seen] = []
    with httpx.Client(timeout=30) as client:
        for method, path in ROUTES:
            for _name, body, content_type in BODIES:
                _send(client, faulted, method, path, [*auth, (b"content-type", content_type.encode())],
                      body if method == "POST" else None, seen, minted.secret)
            for headers in (
                [(b"x-api-key", minted.secret.encode()), (b"x-api-key", b"kw_pat_other")],
                [(b"authorization", f"Bearer {minted.secret}".encode()), (b"authorization", b"Bearer x")],
                [(b"authorization", b"Bearer kw_pat_\xff\xfe")],
                [*auth, (b"x-request-id", b"\xff\xfe-client-chosen")],
                [*auth, (b"x-keyward-user", b"someone-else"), (b"cookie", minted.secret.encode())],
            ):
                _send(client, faulted, method, path, [*headers, (b"content-type", b"application/json")],
                      b'{"model":"gpt-4o-mini","messages":[]}' if method == "POST" else None, seen, minted.secret)
    envoy_refused = _raw_requests(faulted)
    load = Load([])
    load.seen = seen
    assert_recorded(faulted, load)
    # Requests Envoy refused before they had an id are recorded too, under an id made from the line.
    def refused() -> list[int]:
        rows = faulted.sql("SELECT status FROM request_records WHERE request_id LIKE 'envoy-%' AND at > $1",
                           envoy_refused["since"])
        return sorted(r["status"] for r in rows)

    faulted.wait_until(lambda: len(refused()) >= len(envoy_refused["statuses"]), timeout=30,
                       what="the requests Envoy refused alone to be recorded")
    assert refused() == sorted(envoy_refused["statuses"])
    # Nothing was set aside as unstorable, and the store still takes new records.
    rejected = faulted.stack.data_dir / "spool" / "rejected" / "rejected.jsonl"
    assert not rejected.exists() or rejected.read_text() == ""
    after = faulted.chat(minted.secret)
    load.seen = [Seen(after.headers["x-request-id"], after.status_code, minted.secret, faulted.url, 0, 0)]
    assert_recorded(faulted, load)
    print(f"\nhostile input: {len(seen)} responses on {len(ROUTES)} routes, all recorded once; "
          f"{len(envoy_refused['statuses'])} requests Envoy refused alone recorded; nothing quarantined")


def _raw_requests(stack: FaultStack) -> dict:
    """Requests Envoy refuses itself, before any request id exists: an escaped NUL in the path, a
    malformed header, headers too large, garbage instead of HTTP."""
    from datetime import UTC, datetime

    since = datetime.now(UTC)
    port = int(stack.url.rsplit(":", 1)[1])
    statuses = []
    for raw in (b"POST /openai/v1/chat%00/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
                b"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
                b"GET /openai/v1/models HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
                b"BLAH\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
            connection.sendall(raw)
            head = connection.recv(100)
        statuses.append(int(head.split(b" ")[1]))
    return {"since": since, "statuses": statuses}


def test_the_routes_under_test_are_every_route_served() -> None:
    # A new endpoint joins the hostile run without anyone remembering to add it.
    assert {path for _method, path in ROUTES} >= {PREFIXES[api] + _concrete(rest) for api, _m, rest, _ in SERVED}
    assert json.loads(BODIES[0][1].decode())["model"] == "gpt-4o-mini\x00x"
