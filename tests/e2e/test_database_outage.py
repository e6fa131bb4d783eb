"""With its database unreachable, the control plane answers 503 with a JSON body and Retry-After on
every route (SCIM in SCIM's shape), stays alive (``/livez``), says it is not ready (``/readyz``), and
serves again as soon as the database is back.

A control-plane process of its own, started by the test, pointed first at a port nobody listens on
and then at the stack's real database.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import parse_qs, urlsplit, urlunsplit

import httpx
import pytest

from authz.tokens import generate_token
from controlplane.audit import signing
from controlplane.services import credentials
from tests.e2e.conftest import Gateway, free_port

pytestmark = pytest.mark.e2e

ADMIN_TOKEN = "kw_admin_" + secrets.token_urlsafe(24)


@contextmanager
def control_plane(database_url: str, hash_key: str) -> Iterator[httpx.Client]:
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("KEYWARD_", "DATABASE_URL"))}
    env |= {"DATABASE_URL": database_url, "KEYWARD_ADMIN_TOKEN": ADMIN_TOKEN, "KEYWARD_TOKEN_HASH_KEY": hash_key,
            "KEYWARD_AUDIT_SIGNING_KEY": signing.new_private_key(), "KEYWARD_LIFECYCLE_INTERVAL_SECONDS": "0.2",
            "KEYWARD_SESSION_SECRET": secrets.token_urlsafe(32)}
    process = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "controlplane.main:create_app",
                                "--host", "127.0.0.1", "--port", str(port)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=15,
                          headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                client.get("/healthz")
                break
            except httpx.TransportError:
                assert process.poll() is None, "the control plane exited at start"
                assert time.monotonic() < deadline, "the control plane did not start"
                time.sleep(0.1)
        yield client
    finally:
        client.close()
        process.terminate()
        process.wait(10)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # closed again when this returns: nobody listens there


@pytest.fixture(scope="module")
def hash_key(gateway: Gateway) -> str:
    return gateway.stack.services["controlplane"].env["KEYWARD_TOKEN_HASH_KEY"]


@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", "/api/v1/users", None),
    ("POST", "/api/v1/users", {"email": "outage@example.com"}),
    ("GET", "/api/v1/tokens", None),
    ("POST", "/api/v1/tokens/00000000-0000-0000-0000-000000000000/revoke", None),
    ("GET", "/api/v1/audit/events", None),
])
def test_the_admin_api_answers_503_json_with_retry_after(hash_key: str, method: str, path: str,
                                                         body: dict | None) -> None:
    with control_plane(f"postgresql://keyward@127.0.0.1:{_closed_port()}/keyward", hash_key) as client:
        reply = client.request(method, path, json=body)
        assert reply.status_code == 503, reply.text
        assert reply.headers["content-type"] == "application/json"
        assert reply.json()["code"] == "database_unavailable"
        assert int(reply.headers["retry-after"]) > 0


def test_scim_answers_503_in_scims_shape_and_the_process_stays_alive(hash_key: str) -> None:
    with control_plane(f"postgresql://keyward@127.0.0.1:{_closed_port()}/keyward", hash_key) as client:
        # Well formed, so it is looked up (a malformed one is refused before any lookup).
        credential = generate_token(credentials.SCIM.prefix)
        reply = client.get("/scim/v2/Users", headers={"Authorization": f"Bearer {credential}"})
        assert reply.status_code == 503, reply.text
        assert reply.headers["content-type"].startswith("application/scim+json")
        assert reply.json()["schemas"] == ["urn:ietf:params:scim:api:messages:2.0:Error"]
        assert reply.json()["status"] == "503"
        assert client.get("/readyz").status_code == 503
        time.sleep(1)  # several lifecycle rounds fail meanwhile; the duty must survive them
        live = client.get("/livez")
        assert live.status_code == 200, live.text
        duties = live.json()["duties"]
        assert all(duties.values()) and {"lifecycle", "budgets", "notifications", "offboarding", "reviews",
                                         "revocation-acks", "token-mirror"} <= set(duties), duties


def test_the_console_answers_503_with_a_page_and_signs_nobody_in(hash_key: str) -> None:
    with control_plane(f"postgresql://keyward@127.0.0.1:{_closed_port()}/keyward", hash_key) as client:
        link = generate_token(credentials.CONSOLE_LINK.prefix)
        session = generate_token(credentials.WEB_SESSION.prefix)
        entered = client.get(f"/console/enter?code={link}")
        client.cookies.set("keyward_session", session)
        for reply in (entered, client.get("/console")):
            assert reply.status_code == 503, reply.text
            assert reply.headers["content-type"].startswith("text/html")
            assert "cannot reach its database" in reply.text and int(reply.headers["retry-after"]) > 0
            assert "set-cookie" not in reply.headers


def test_the_same_process_serves_once_the_database_answers(gateway: Gateway, hash_key: str) -> None:
    # The stack's database, reached through a port that is closed at first and opens mid-test.
    port = _closed_port()
    parts = urlsplit(gateway.info.database_url)
    socket_dir = parse_qs(parts.query).get("host", [None])[0]
    url = urlunsplit(parts._replace(netloc=f"{parts.username}:{parts.password or ''}@127.0.0.1:{port}", query=""))
    with control_plane(url, hash_key) as client:
        assert client.get("/api/v1/users").status_code == 503
        with _forward(port, socket_dir, parts.hostname, parts.port or 5432):
            Gateway.wait_until(lambda: client.get("/api/v1/users").status_code == 200, timeout=10,
                               what="the admin API to answer once the database is back")


@contextmanager
def _forward(port: int, socket_dir: str | None, host: str | None, pg_port: int) -> Iterator[None]:
    """A TCP listener on ``port`` that relays each connection to the stack's Postgres."""
    import threading

    listener = socket.create_server(("127.0.0.1", port))
    stop = threading.Event()

    def upstream() -> socket.socket:
        if socket_dir:
            conn = socket.socket(socket.AF_UNIX)
            conn.connect(f"{socket_dir}/.s.PGSQL.{pg_port}")
            return conn
        return socket.create_connection((host or "127.0.0.1", pg_port))

    open_sockets: list[socket.socket] = []

    def pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

    def relay(client: socket.socket) -> None:
        with client, upstream() as server:
            open_sockets.extend((client, server))
            back = threading.Thread(target=pump, args=(server, client), daemon=True)
            back.start()
            pump(client, server)
            back.join()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=relay, args=(client,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(2)
        listener.close()
        for open_socket in open_sockets:  # connections the control plane still holds
            with contextlib.suppress(OSError):
                open_socket.shutdown(socket.SHUT_RDWR)
