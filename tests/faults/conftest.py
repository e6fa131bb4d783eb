"""A stack of its own for the fault-injection suite, a load generator, and the checks every fault ends with.

The faults kill, stop and starve the stack's children, so they never touch the session's ``gateway``.
After each fault, :func:`assert_recorded` proves the promise the audit store makes: every response a
client saw has exactly one record, with the status the client saw, and the chains verify.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

import asyncpg
import httpx
import pytest

from controlplane.audit.queries import DECISION
from controlplane.audit.verify import verify_all
from controlplane.stack.runner import Stack, StackSettings
from controlplane.stack.supervisor import pid_alive
from tests.e2e.conftest import Gateway, free_port

#: Envoy's timeout for a Check in this stack: short, so a stalled authz shows within the test.
AUTHZ_TIMEOUT = 0.5


class FaultStack(Gateway):
    """The stack under test, with ways to hurt it."""

    def pid(self, name: str) -> int:
        process = self.stack.services[name].process
        assert process is not None
        return process.pid

    def signal(self, name: str, signum: int) -> int:
        pid = self.pid(name)
        os.kill(pid, signum)
        return pid

    def kill(self, name: str) -> int:
        pid = self.signal(name, signal.SIGKILL)
        self.wait_until(lambda: not pid_alive(pid), timeout=10, what=f"{name} to die")
        return pid

    def back(self, name: str, old: int, timeout: float = 60) -> None:
        """Wait until the supervisor has restarted ``name`` and it answers its readiness probe."""
        service = self.stack.services[name]
        self.wait_until(lambda: service.alive() and self.pid(name) != old and self.stack.ready(name),
                        timeout=timeout, what=f"{name} to come back")

    def sql(self, query: str, *args: object) -> list[asyncpg.Record]:
        async def run() -> list[asyncpg.Record]:
            connection = await asyncpg.connect(self.info.owner_database_url)
            try:
                return await connection.fetch(query, *args)
            finally:
                await connection.close()

        return asyncio.run(run())


@pytest.fixture(scope="session")
def faulted() -> Iterator[FaultStack]:
    data_dir = Path(tempfile.mkdtemp(prefix="keyward-faults-"))
    settings = StackSettings(
        data_dir=data_dir, gateway_port=free_port(), api_port=free_port(), mock_port=free_port(),
        admin_token=None, openai_api_key=None, anthropic_api_key=None, database_url=None,
        mock_stream_interval=0.01, lifecycle_interval_seconds=1, envoy_concurrency=2,
        authz_timeout_seconds=AUTHZ_TIMEOUT,
    )
    stack = Stack(settings=settings, report=lambda _message: None)
    info = stack.start(timeout=120)
    gateway = FaultStack(stack, info)
    try:
        yield gateway
    finally:
        gateway.close()
        stack.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


# -- load -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """A response a client received: its request id (Envoy sets one on every answer) and status."""

    request_id: str
    status: int
    secret: str
    url: str
    sent: float
    received: float


@dataclass
class Load:
    """Threads sending chat completions until stopped, keeping every response they got. A request
    that got no response (a connection refused or cut) was never seen by its client, so it needs no
    record; those are only counted."""

    targets: list[tuple[str, str]]  # (gateway URL, secret)
    threads: int = 4
    pause: float = 0.01
    seen: list[Seen] = field(default_factory=list)
    unanswered: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> Load:
        for index in range(self.threads):
            worker = threading.Thread(target=self._run, args=(index,), daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(30)

    def _run(self, index: int) -> None:
        with httpx.Client(timeout=10) as client:
            turn = index
            while not self._stop.is_set():
                url, secret = self.targets[turn % len(self.targets)]
                turn += 1
                sent = time.time()
                try:
                    reply = client.post(f"{url}/openai/v1/chat/completions",
                                        headers={"Authorization": f"Bearer {secret}"},
                                        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
                except httpx.TransportError:
                    with self._lock:
                        self.unanswered += 1
                    time.sleep(self.pause)
                    continue
                request_id = reply.headers.get("x-request-id")
                with self._lock:
                    if request_id:
                        self.seen.append(Seen(request_id, reply.status_code, secret, url, sent, time.time()))
                    else:
                        self.unanswered += 1
                time.sleep(self.pause)

    def statuses(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for seen in self.seen:
            counts[seen.status] = counts.get(seen.status, 0) + 1
        return counts


# -- the checks every fault ends with ----------------------------------------------------------------

_RECORDS = f"""
SELECT r.request_id, count(*) OVER (PARTITION BY r.request_id) AS copies, {DECISION} AS decision,
       COALESCE(o.status, r.status) AS status, o.upstream_status
FROM request_records r
LEFT JOIN LATERAL (
    SELECT * FROM request_outcomes o WHERE o.request_id = r.request_id
      AND o.at BETWEEN r.at - interval '1 minute' AND r.at + interval '1 minute' ORDER BY o.seq LIMIT 1
) o ON true
WHERE r.request_id = ANY($1::text[])
"""


@dataclass
class Recorded:
    records: int
    copies: dict[str, int]
    status: dict[str, int | None]
    decision: dict[str, str]
    #: What the provider answered, where the request reached it.
    upstream: dict[str, int | None]


def recorded(stack: FaultStack, seen: list[Seen]) -> Recorded:
    rows = stack.sql(_RECORDS, [s.request_id for s in seen])
    return Recorded(len(rows), {r["request_id"]: r["copies"] for r in rows},
                    {r["request_id"]: r["status"] for r in rows}, {r["request_id"]: r["decision"] for r in rows},
                    {r["request_id"]: r["upstream_status"] for r in rows})


def assert_recorded(stack: FaultStack, load: Load, *, timeout: float = 90,
                    unknown_status_after: float | None = None) -> Recorded:
    """Every response the load saw has exactly one record, with the status the client saw, and the
    audit chains verify. ``unknown_status_after``: a response received after this instant may have a
    record without a status (Envoy was killed before it logged the outcome), never no record."""
    seen = load.seen
    excused = {s.request_id for s in seen if unknown_status_after is not None and s.received >= unknown_status_after}
    assert seen, "the load saw no response at all"
    wanted = {s.request_id for s in seen}
    assert len(wanted) == len(seen), "Envoy gave two responses the same request id"

    def complete() -> bool:
        found = recorded(stack, seen)
        return wanted <= set(found.copies) and all(found.status[r] is not None for r in wanted - excused)

    deadline = time.monotonic() + timeout
    while not complete() and time.monotonic() < deadline:
        time.sleep(0.2)
    found = recorded(stack, seen)
    missing = sorted(wanted - set(found.copies))
    doubled = {r: n for r, n in found.copies.items() if n != 1}
    wrong = {s.request_id: (s.status, found.status.get(s.request_id)) for s in seen
             if found.status.get(s.request_id) != s.status
             and not (s.request_id in excused and found.status.get(s.request_id) is None)}
    # A request recorded as allowed reached the provider: its answer came from upstream.
    allowed_but_refused = {s.request_id: s.status for s in seen
                           if found.decision.get(s.request_id) == "allowed" and found.upstream.get(s.request_id) is None
                           and s.request_id not in excused}
    assert (missing, doubled, wrong, allowed_but_refused) == ([], {}, {}, {}), (
        f"{len(seen)} responses ({load.statuses()}): missing {missing[:5]}, doubled {list(doubled.items())[:5]}, "
        f"status differs {list(wrong.items())[:5]}, 'allowed' though refused {list(allowed_but_refused.items())[:5]}")
    assert_chains_verify(stack)
    return found


def assert_chains_verify(stack: FaultStack) -> None:
    reports = asyncio.run(verify_all(stack.info.owner_database_url, public_key=stack.audit_public_key))
    findings = [str(finding) for report in reports for finding in report.findings]
    assert findings == [], findings


# -- a network partition between one process and Postgres ------------------------------------------


class Partition:
    """A Unix-socket relay in front of the embedded Postgres, for one process to connect through.

    :meth:`cut` makes it a black hole, as a network partition does: connections stay open, nothing
    crosses in either direction, new ones are accepted and then hear nothing. :meth:`heal` drops what
    was held (the peers see their connections reset) and relays again.
    """

    def __init__(self, database_url: str) -> None:
        parts = urlsplit(database_url)
        upstream_dir = Path(parse_qs(parts.query)["host"][0])
        self._upstream = str(next(upstream_dir.glob(".s.PGSQL.*")))
        self._dir = Path(tempfile.mkdtemp(prefix="kw-cut-"))
        self._listen = self._dir / Path(self._upstream).name
        self.url = urlunsplit(parts._replace(query=f"host={self._dir}"))
        self._open = threading.Event()
        self._open.set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="partition", daemon=True)

    def __enter__(self) -> Partition:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_unix_server(self._serve, path=str(self._listen)), self._loop).result(10)
        return self

    def __exit__(self, *_exc: object) -> None:
        async def close() -> None:
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._server.wait_closed()

        self._open.set()
        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def cut(self) -> None:
        self._open.clear()

    def heal(self) -> None:
        self._open.set()

        def reset() -> None:
            for writer in list(self._writers):
                writer.transport.abort()
            self._writers.clear()

        self._loop.call_soon_threadsafe(reset)

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self._writers.add(client_writer)
        try:
            server_reader, server_writer = await asyncio.open_unix_connection(self._upstream)
        except OSError:
            client_writer.transport.abort()
            self._writers.discard(client_writer)
            return
        self._writers.add(server_writer)
        try:
            await asyncio.gather(self._pipe(client_reader, server_writer), self._pipe(server_reader, client_writer),
                                 return_exceptions=True)
        finally:
            for writer in (client_writer, server_writer):
                writer.transport.abort()
                self._writers.discard(writer)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            while not self._open.is_set():  # held, as a partition holds it, until healed (then reset)
                await asyncio.sleep(0.05)
                if writer.transport.is_closing():
                    return
            writer.write(data)
            await writer.drain()
