"""The shipper: spooled lines to the control plane, in order, at least once, through an injected client.

The control plane is an ``httpx.MockTransport`` whose answers are scripted per POST; the spool is a
real one in ``tmp_path``, so positions, segment files and deletions are the real thing. Pauses go
through an injected ``sleep``, so back-off is measured, not waited for.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from authz.audit.shipper import (
    MAX_BACKOFF_SECONDS,
    MAX_RETRY_AFTER_SECONDS,
    REASON_CHARS,
    SERVER_ERROR_ATTEMPTS,
    Shipper,
)
from authz.audit.spool import Spool
from authz.supervisor import Supervisor
from tests.unit.faults import FullDisk, Naps, logging_to, until

URL = "http://controlplane.test/api/v1/audit/ingest"
TOKEN = "kw_ingest_0123456789abcdef"
CONNECT_ERROR = "connect-error"


# -- a scripted control plane ---------------------------------------------------------------------


@dataclass
class ControlPlane:
    """Answers each POST with the next scripted status (200 once the script runs out); ``CONNECT_ERROR``
    fails the request in the transport. Every attempt is kept, delivered or not."""

    script: list[int | str] = field(default_factory=list)
    attempts: list[httpx.Request] = field(default_factory=list)

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.attempts.append(request)
        answer = self.script.pop(0) if self.script else 200
        if answer == CONNECT_ERROR:
            raise httpx.ConnectError("connection refused", request=request)
        assert isinstance(answer, int)
        if answer == 422:
            return httpx.Response(422, json={"detail": [{"loc": ["body", "records", 0], "msg": "bad line"}]})
        return httpx.Response(answer, json={"accepted": 0, "duplicates": 0})

    @property
    def batches(self) -> list[list[dict[str, Any]]]:
        return [json.loads(request.content)["records"] for request in self.attempts]

    def numbers(self) -> list[int]:
        """The ``n`` of every record sent, over all attempts, in order."""
        return [line["n"] for batch in self.batches for line in batch]


# -- factories ------------------------------------------------------------------------------------


def fixed_record(n: int, width: int = 50) -> dict[str, Any]:
    """A record whose spooled line (newline included) is exactly ``width`` bytes, so segment layouts are exact."""
    bare = len(json.dumps({"n": n, "pad": ""}, separators=(",", ":"))) + 1
    return {"n": n, "pad": "x" * (width - bare)}


def fill(spool: Spool, count: int, *, start: int = 0, width: int = 50) -> None:
    for n in range(start, start + count):
        spool.append(fixed_record(n, width))


def raw_lines(spool: Spool) -> list[bytes]:
    return [line for segment in spool.segments() for line in segment.read_bytes().splitlines()]


def total_bytes(spool: Spool) -> int:
    return sum(segment.stat().st_size for segment in spool.segments())


def segment_name(number: int) -> str:
    return f"{number:016d}.jsonl"


def pending_bytes(shipper: Shipper, spool: Spool) -> int:
    """Bytes spooled past the shipper's position: what is not yet confirmed by the control plane."""
    name, offset = shipper.position()
    return sum(segment.stat().st_size - (offset if segment.name == name else 0)
               for segment in spool.segments() if segment.name >= name)


@pytest.fixture
def control_plane() -> ControlPlane:
    return ControlPlane()


@pytest.fixture
async def client(control_plane: ControlPlane) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(control_plane.handler)) as opened:
        yield opened


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def spool(spool_dir: Path) -> Iterator[Spool]:
    """A segment holds two 50-byte lines (``fixed_record``); the third goes to the next segment."""
    opened = Spool(spool_dir, segment_bytes=100)
    yield opened
    opened.close()


def shipper_for(spool: Spool, client: httpx.AsyncClient, *, batch_lines: int = 2000) -> Shipper:
    return Shipper(spool, client=client, url=URL, token=TOKEN, batch_lines=batch_lines, idle_seconds=0.01)


async def ship_all(shipper: Shipper) -> list[int]:
    """Ship until a round sends nothing; returns the line count of every round (the last one is 0)."""
    counts = [await shipper.ship_once()]
    while counts[-1]:
        counts.append(await shipper.ship_once())
    return counts


# -- the request ----------------------------------------------------------------------------------


async def test_nothing_to_ship_sends_nothing(spool: Spool, client: httpx.AsyncClient,
                                             control_plane: ControlPlane) -> None:
    shipper = shipper_for(spool, client)
    assert await shipper.ship_once() == 0
    assert control_plane.attempts == []
    assert pending_bytes(shipper, spool) == 0


async def test_the_request_carries_the_token_and_the_exact_lines_as_json(
    spool: Spool, client: httpx.AsyncClient, control_plane: ControlPlane
) -> None:
    spool.append({"n": 0, "user_email": "zoë@example.com", "model": None, "route": "/openai/v1/chat/completions"})
    spool.append({"n": 1, "text": "quote \" and newline \n"})
    lines = raw_lines(spool)

    assert await shipper_for(spool, client).ship_once() == 2

    [request] = control_plane.attempts
    assert request.method == "POST"
    assert str(request.url) == URL
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["content-type"] == "application/json"
    body = json.loads(request.content)
    assert body == {"records": [json.loads(line) for line in lines]}
    for line in lines:  # the spooled bytes are forwarded verbatim, not re-encoded
        assert line in request.content


# -- order and batches ----------------------------------------------------------------------------


async def test_ships_in_order_across_segments_in_batches(spool: Spool, client: httpx.AsyncClient,
                                                         control_plane: ControlPlane) -> None:
    fill(spool, 9)  # segments: [0 1] [2 3] [4 5] [6 7] [8]
    assert len(spool.segments()) == 5

    counts = await ship_all(shipper_for(spool, client, batch_lines=4))

    assert counts == [4, 4, 1, 0]
    assert [len(batch) for batch in control_plane.batches] == [4, 4, 1]
    assert control_plane.numbers() == list(range(9))


async def test_a_batch_may_end_exactly_at_a_segment_boundary(spool: Spool, client: httpx.AsyncClient,
                                                            control_plane: ControlPlane) -> None:
    fill(spool, 6)  # [0 1] [2 3] [4 5]: batches of 2 end at every boundary

    assert await ship_all(shipper_for(spool, client, batch_lines=2)) == [2, 2, 2, 0]
    assert control_plane.numbers() == list(range(6))


async def test_lines_written_while_shipping_are_picked_up_next_round(spool: Spool, client: httpx.AsyncClient,
                                                                     control_plane: ControlPlane) -> None:
    shipper = shipper_for(spool, client, batch_lines=100)
    fill(spool, 3)
    assert await shipper.ship_once() == 3
    fill(spool, 4, start=3)
    assert await shipper.ship_once() == 4
    assert control_plane.numbers() == list(range(7))


async def test_reads_large_segments_in_windows_without_losing_or_splitting_a_line(
    spool_dir: Path, client: httpx.AsyncClient, control_plane: ControlPlane
) -> None:
    spool = Spool(spool_dir, segment_bytes=2 << 20)
    try:
        # A full 2 MiB segment, then a current one; 1 KiB lines, so a 1 MiB read ends exactly on a line end.
        fill(spool, 2600, width=1024)
        assert [p.stat().st_size for p in spool.segments()] == [2 << 20, 552 * 1024]
        shipper = shipper_for(spool, client, batch_lines=100_000)
        counts = await ship_all(shipper)
        assert len(counts) > 3  # it took more than one read window per segment
        assert control_plane.numbers() == list(range(2600))
        assert pending_bytes(shipper, spool) == 0
    finally:
        spool.close()


async def test_a_partial_trailing_line_waits_until_it_is_complete(spool: Spool, client: httpx.AsyncClient,
                                                                   control_plane: ControlPlane) -> None:
    spool.append({"n": 0})
    with spool.current.open("ab") as writer:  # another writer, caught in the middle of a line
        writer.write(b'{"n":1,"pad":"hal')
    shipper = shipper_for(spool, client)

    assert await shipper.ship_once() == 1
    assert await shipper.ship_once() == 0
    assert len(control_plane.attempts) == 1
    assert pending_bytes(shipper, spool) == len(b'{"n":1,"pad":"hal')

    with spool.current.open("ab") as writer:
        writer.write(b'f"}\n')
    assert await shipper.ship_once() == 1
    assert control_plane.batches == [[{"n": 0}], [{"n": 1, "pad": "half"}]]
    assert pending_bytes(shipper, spool) == 0


# -- the position ---------------------------------------------------------------------------------


async def test_the_position_is_persisted_after_a_200(spool: Spool, spool_dir: Path, client: httpx.AsyncClient,
                                                     control_plane: ControlPlane) -> None:
    fill(spool, 3)  # [0 1] [2]
    shipper = shipper_for(spool, client, batch_lines=1)
    assert not (spool_dir / "shipped.pos").exists()

    await shipper.ship_once()
    assert (spool_dir / "shipped.pos").read_text() == f"{segment_name(1)} 50\n"
    await shipper.ship_once()
    assert shipper.position() == (segment_name(2), 0)


@pytest.mark.parametrize("failure", [500, 503, 401, 409, 204, CONNECT_ERROR])
async def test_a_failed_post_raises_keeps_the_position_and_the_same_lines_are_resent(
    failure: int | str, spool: Spool, spool_dir: Path, client: httpx.AsyncClient, control_plane: ControlPlane
) -> None:
    fill(spool, 5)
    shipper = shipper_for(spool, client, batch_lines=3)
    assert await shipper.ship_once() == 3  # lines 0-2 are confirmed
    position, pending = shipper.position(), pending_bytes(shipper, spool)
    saved = (spool_dir / "shipped.pos").read_bytes()

    control_plane.script = [failure]
    with pytest.raises(httpx.ConnectError if failure == CONNECT_ERROR else httpx.HTTPStatusError):
        await shipper.ship_once()

    assert shipper.position() == position
    assert pending_bytes(shipper, spool) == pending
    assert (spool_dir / "shipped.pos").read_bytes() == saved
    assert await shipper.ship_once() == 2
    failed, resent = control_plane.attempts[1:]
    assert resent.content == failed.content
    assert control_plane.numbers() == [0, 1, 2, 3, 4, 3, 4]


async def test_after_a_failure_a_restarted_shipper_resends_from_the_saved_position(
    spool: Spool, client: httpx.AsyncClient, control_plane: ControlPlane
) -> None:
    fill(spool, 4)
    control_plane.script = [200, 500]
    first = shipper_for(spool, client, batch_lines=2)
    await first.ship_once()
    with pytest.raises(httpx.HTTPStatusError):
        await first.ship_once()

    restarted = shipper_for(spool, client, batch_lines=2)
    assert await ship_all(restarted) == [2, 0]
    assert control_plane.numbers() == [0, 1, 2, 3, 2, 3]


async def test_nothing_is_resent_after_a_restart_once_confirmed(spool_dir: Path, client: httpx.AsyncClient,
                                                                control_plane: ControlPlane) -> None:
    spool = Spool(spool_dir, segment_bytes=100)
    fill(spool, 3)
    await ship_all(shipper_for(spool, client))
    spool.close()

    reopened = Spool(spool_dir, segment_bytes=100)
    try:
        fill(reopened, 2, start=3)
        await ship_all(shipper_for(reopened, client))
    finally:
        reopened.close()
    assert control_plane.numbers() == [0, 1, 2, 3, 4]


# -- rejected batches -----------------------------------------------------------------------------


class Picky(ControlPlane):
    """Refuses with ``status`` every batch that holds one of the ``bad`` record numbers and stores the
    rest, each line once (as ingest's idempotency does); ``interrupt`` answers chosen attempts (by
    number, from 0) with something else, as a store going down for a moment would."""

    def __init__(self, bad: set[int], status: int = 422, *, reason: str = "bad line",
                 interrupt: dict[int, int | str] | None = None) -> None:
        super().__init__()
        self.bad = bad
        self.status = status
        self.reason = reason
        self.interrupt = interrupt or {}
        self.stored: list[int] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        attempt = len(self.attempts)
        self.attempts.append(request)
        if attempt in self.interrupt:
            answer = self.interrupt[attempt]
            if answer == CONNECT_ERROR:
                raise httpx.ConnectError("connection refused", request=request)
            assert isinstance(answer, int)
            return httpx.Response(answer, text="store unavailable")
        numbers = [line["n"] for line in json.loads(request.content)["records"]]
        if self.bad & set(numbers):
            return httpx.Response(self.status, text=self.reason)
        self.stored += [n for n in numbers if n not in self.stored]
        return httpx.Response(200, json={"accepted": len(numbers), "duplicates": 0})


def rejected_entries(spool_dir: Path) -> list[dict[str, Any]]:
    path = spool_dir / "rejected" / "rejected.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def quarantined(status: int) -> float:
    return REGISTRY.get_sample_value("keyward_authz_audit_lines_quarantined_total", {"status": str(status)}) or 0.0


async def test_a_422_sets_aside_only_the_bad_lines(spool: Spool, spool_dir: Path) -> None:
    fill(spool, 8)
    lines = raw_lines(spool)
    picky = Picky(bad={1, 6})
    before = quarantined(422)
    async with httpx.AsyncClient(transport=httpx.MockTransport(picky.handler)) as client:
        shipper = shipper_for(spool, client, batch_lines=4)
        assert await ship_all(shipper) == [4, 4, 0]
    assert picky.stored == [0, 2, 3, 4, 5, 7]  # every good line landed, in order
    entries = rejected_entries(spool_dir)
    assert [entry["line"] for entry in entries] == [json.loads(lines[1]), json.loads(lines[6])]
    assert {(entry["status"], entry["reason"]) for entry in entries} == {(422, "bad line")}
    rejected = spool_dir / "rejected" / "rejected.jsonl"
    assert rejected.stat().st_mode & 0o777 == 0o600
    assert (spool_dir / "rejected").stat().st_mode & 0o777 == 0o700
    assert pending_bytes(shipper, spool) == 0
    assert quarantined(422) == before + 2


async def test_a_batch_that_keeps_failing_with_500_is_isolated_and_never_blocks_the_rest(
    spool: Spool, spool_dir: Path
) -> None:
    """The NUL incident: ingest answers 500 for any batch holding one line, for ever."""
    fill(spool, 8)
    poison = json.loads(raw_lines(spool)[3])
    picky = Picky(bad={3}, status=500, reason="Internal Server Error: " + "x" * 5000)
    before = quarantined(500)
    async with httpx.AsyncClient(transport=httpx.MockTransport(picky.handler)) as client:
        shipper = shipper_for(spool, client, batch_lines=4)
        for _ in range(SERVER_ERROR_ATTEMPTS - 1):  # it may be transient: the same batch is retried
            with pytest.raises(httpx.HTTPStatusError):
                await shipper.ship_once()
            assert pending_bytes(shipper, spool) == 400
        assert await ship_all(shipper) == [4, 4, 0]
    assert picky.stored == [0, 1, 2, 4, 5, 6, 7]  # every good line, in order
    [entry] = rejected_entries(spool_dir)
    assert entry["line"] == poison
    assert entry["status"] == 500
    assert entry["reason"] == ("Internal Server Error: " + "x" * 5000)[:REASON_CHARS]
    assert datetime.fromisoformat(entry["quarantined_at"]).tzinfo is not None
    assert pending_bytes(shipper, spool) == 0  # the position moved past it
    assert quarantined(500) == before + 1


async def test_run_keeps_going_past_a_poison_line(spool: Spool, spool_dir: Path) -> None:
    fill(spool, 6)
    picky = Picky(bad={2}, status=500)
    naps = Naps()
    async with httpx.AsyncClient(transport=httpx.MockTransport(picky.handler)) as client:
        shipper = Shipper(spool, client=client, url=URL, token=TOKEN, batch_lines=4, idle_seconds=0.01,
                          sleep=naps)
        running = asyncio.create_task(shipper.run())
        try:
            await until(lambda: picky.stored == [0, 1, 3, 4, 5], what="the good lines")
            fill(spool, 2, start=6)  # and what arrives afterwards follows
            await until(lambda: picky.stored == [0, 1, 3, 4, 5, 6, 7], what="the later lines")
        finally:
            running.cancel()
            with pytest.raises(asyncio.CancelledError):
                await running
    assert [entry["line"]["n"] for entry in rejected_entries(spool_dir)] == [2]


async def test_a_single_line_gets_its_own_attempts_before_it_is_set_aside(spool: Spool, spool_dir: Path) -> None:
    fill(spool, 2)
    # Three 500s for the pair; then the pair's halves: line 0 fine, line 1 refused once, then fine.
    picky = Picky(bad=set(), interrupt={0: 500, 1: 500, 2: 500, 4: 500})
    async with httpx.AsyncClient(transport=httpx.MockTransport(picky.handler)) as client:
        shipper = shipper_for(spool, client)
        for _ in range(SERVER_ERROR_ATTEMPTS - 1):
            with pytest.raises(httpx.HTTPStatusError):
                await shipper.ship_once()
        assert await shipper.ship_once() == 2
    assert picky.stored == [0, 1]
    assert rejected_entries(spool_dir) == []


async def test_a_500_that_clears_up_quarantines_nothing(spool: Spool, spool_dir: Path,
                                                        client: httpx.AsyncClient,
                                                        control_plane: ControlPlane) -> None:
    fill(spool, 3)
    control_plane.script = [500] * (SERVER_ERROR_ATTEMPTS - 1)
    shipper = shipper_for(spool, client)
    for _ in range(SERVER_ERROR_ATTEMPTS - 1):
        with pytest.raises(httpx.HTTPStatusError):
            await shipper.ship_once()
    assert await shipper.ship_once() == 3
    assert control_plane.numbers() == [0, 1, 2] * SERVER_ERROR_ATTEMPTS
    assert rejected_entries(spool_dir) == []


@pytest.mark.parametrize("failure", [429, 502, 503, 504, 401, 404, CONNECT_ERROR])
async def test_a_store_that_is_down_or_busy_is_waited_out_and_nothing_is_quarantined(
    failure: int | str, spool: Spool, spool_dir: Path, client: httpx.AsyncClient, control_plane: ControlPlane
) -> None:
    fill(spool, 3)
    control_plane.script = [failure] * 10
    shipper = shipper_for(spool, client)
    for _ in range(10):
        with pytest.raises(httpx.HTTPError):
            await shipper.ship_once()
    assert await shipper.ship_once() == 3
    assert rejected_entries(spool_dir) == []
    assert pending_bytes(shipper, spool) == 0


async def test_an_outage_halfway_through_isolation_settles_nothing_twice(spool: Spool, spool_dir: Path) -> None:
    fill(spool, 4)
    # 0: the batch of 4 is refused; 1: lines 0-1 refused; 2: line 0 ships; 3: line 1 alone is
    # refused and set aside; 4: the store goes down before lines 2-3 are sent.
    picky = Picky(bad={1}, interrupt={4: 503})
    async with httpx.AsyncClient(transport=httpx.MockTransport(picky.handler)) as client:
        shipper = shipper_for(spool, client)
        with pytest.raises(httpx.HTTPStatusError):
            await shipper.ship_once()
        assert pending_bytes(shipper, spool) == 100  # the settled half is behind the position already
        assert await ship_all(shipper) == [2, 0]
    assert picky.stored == [0, 2, 3]
    assert [entry["line"]["n"] for entry in rejected_entries(spool_dir)] == [1]
    assert [[line["n"] for line in batch] for batch in picky.batches[5:]] == [[2, 3]]  # nothing settled is resent


# -- waiting for the store ------------------------------------------------------------------------


async def run_until(shipper: Shipper, condition: Any) -> None:
    running = asyncio.create_task(shipper.run())
    try:
        await until(condition, what="shipping to resume")
    finally:
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running


async def test_the_back_off_never_exceeds_a_second_so_recovery_is_prompt(spool: Spool,
                                                                       control_plane: ControlPlane,
                                                                       client: httpx.AsyncClient) -> None:
    fill(spool, 3)
    control_plane.script = [CONNECT_ERROR] * 30  # a long outage
    naps = Naps()
    shipper = Shipper(spool, client=client, url=URL, token=TOKEN, idle_seconds=0.25, sleep=naps)
    await run_until(shipper, lambda: control_plane.numbers()[-3:] == [0, 1, 2] and not control_plane.script)
    pauses = naps.taken[:30]
    assert pauses[:3] == [0.25, 0.5, 1.0]
    assert max(pauses) == MAX_BACKOFF_SECONDS == 1.0  # the store back: shipping resumes within a second


@pytest.mark.parametrize(("header", "pause"), [("7", 7.0), ("86400", MAX_RETRY_AFTER_SECONDS), ("soon", 0.25)])
async def test_retry_after_is_honoured_within_reason(header: str, pause: float, spool: Spool) -> None:
    fill(spool, 1)
    answers = [httpx.Response(503, headers={"retry-after": header}), httpx.Response(200, json={})]
    sent: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(len(sent))
        return answers.pop(0) if answers else httpx.Response(200, json={})

    naps = Naps()
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        shipper = Shipper(spool, client=client, url=URL, token=TOKEN, idle_seconds=0.25, sleep=naps)
        await run_until(shipper, lambda: len(sent) >= 2)
    assert naps.taken[0] == pause


# -- a full disk ----------------------------------------------------------------------------------


async def test_a_full_disk_window_stops_nothing_for_good(spool: Spool, spool_dir: Path) -> None:
    """The position file cannot be written and the log cannot be written, for a while: the shipper
    fails, is restarted by its supervisor, and once there is room ships every line, in order."""
    fill(spool, 5)
    store = Picky(bad=set())
    disk = FullDisk()
    obstacle = spool_dir / "shipped.tmp"  # the position's staging file: a directory cannot be opened (EISDIR)
    obstacle.mkdir()
    failures_before = REGISTRY.get_sample_value("keyward_authz_log_write_failures_total") or 0.0
    with logging_to(disk):
        async with httpx.AsyncClient(transport=httpx.MockTransport(store.handler)) as client:
            shipper = Shipper(spool, client=client, url=URL, token=TOKEN, batch_lines=2, idle_seconds=0.01,
                              sleep=Naps())
            supervisor = Supervisor({"full-disk-shipper": shipper.run}, first_backoff=0.001, max_backoff=0.01)
            running = asyncio.create_task(supervisor.run())
            try:
                await until(lambda: supervisor.states()["full-disk-shipper"].restarts >= 3, what="restarts")
                state = supervisor.states()["full-disk-shipper"]
                assert state.failing_since is not None
                assert "IsADirectoryError" in (state.last_error or "")
                assert pending_bytes(shipper, spool) == total_bytes(spool)  # nothing confirmed, nothing skipped
                fill(spool, 3, start=5)  # requests go on being recorded meanwhile
                assert disk.refused > 0  # and the log could not be written either

                obstacle.rmdir()  # room again
                disk.full = False
                await until(lambda: store.stored == list(range(8)), what="every line")
                await until(lambda: supervisor.states()["full-disk-shipper"].up, what="the shipper up")
            finally:
                running.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await running
    assert pending_bytes(shipper, spool) == 0
    first_sent = list(dict.fromkeys(store.numbers()))  # resends are fine (ingest is idempotent); order is not
    assert first_sent == list(range(8))
    assert (REGISTRY.get_sample_value("keyward_authz_log_write_failures_total") or 0.0) > failures_before


# -- segments -------------------------------------------------------------------------------------


async def test_shipped_segments_are_deleted_but_the_current_one_never(
    spool: Spool, client: httpx.AsyncClient, control_plane: ControlPlane
) -> None:
    fill(spool, 7)  # [0 1] [2 3] [4 5] [6]
    shipper = shipper_for(spool, client, batch_lines=3)
    names = [segment_name(n) for n in range(1, 5)]
    assert [p.name for p in spool.segments()] == names

    await shipper.ship_once()  # 0 1 2: segment 1 is done, segment 2 only half
    assert [p.name for p in spool.segments()] == names[1:]
    await shipper.ship_once()  # 3 4 5
    assert [p.name for p in spool.segments()] == names[3:]
    await shipper.ship_once()  # 6: everything is shipped, the current segment stays
    assert spool.segments() == [spool.current]
    assert spool.current.exists()

    fill(spool, 1, start=7)  # and the spool keeps writing into it
    assert await shipper.ship_once() == 1
    assert spool.segments() == [spool.current]
    assert control_plane.numbers() == list(range(8))


async def test_a_fully_shipped_segment_survives_while_it_is_current(spool_dir: Path, client: httpx.AsyncClient,
                                                                   control_plane: ControlPlane) -> None:
    spool = Spool(spool_dir, segment_bytes=1 << 20)
    try:
        fill(spool, 3)
        shipper = shipper_for(spool, client)
        await ship_all(shipper)
        await ship_all(shipper)
        assert spool.segments() == [spool.current]
        assert spool.current.read_bytes().count(b"\n") == 3
    finally:
        spool.close()


async def test_a_failed_post_deletes_nothing(spool: Spool, client: httpx.AsyncClient,
                                             control_plane: ControlPlane) -> None:
    fill(spool, 5)
    before = spool.segments()
    control_plane.script = [500]
    with pytest.raises(httpx.HTTPStatusError):
        await shipper_for(spool, client, batch_lines=4).ship_once()
    assert spool.segments() == before


# -- pending bytes --------------------------------------------------------------------------------


async def test_pending_bytes_counts_down_to_zero(spool: Spool, client: httpx.AsyncClient,
                                                 control_plane: ControlPlane) -> None:
    fill(spool, 5)
    shipper = shipper_for(spool, client, batch_lines=3)
    assert pending_bytes(shipper, spool) == total_bytes(spool) == 250

    await shipper.ship_once()
    assert pending_bytes(shipper, spool) == 100
    await shipper.ship_once()
    assert pending_bytes(shipper, spool) == 0

    fill(spool, 1, start=5)
    assert pending_bytes(shipper, spool) == 50
