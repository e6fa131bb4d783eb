"""The shipper: spooled lines to the control plane, in order, at least once, through an injected client.

The control plane is an ``httpx.MockTransport`` whose answers are scripted per POST; the spool is a
real one in ``tmp_path``, so positions, segment files and deletions are the real thing.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from authz.audit.shipper import Shipper
from authz.audit.spool import Spool

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
    """Refuses (422) every batch that holds one of the ``bad`` record numbers, accepts the rest."""

    def __init__(self, bad: set[int]) -> None:
        super().__init__()
        self.bad = bad
        self.stored: list[int] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.attempts.append(request)
        numbers = [line["n"] for line in json.loads(request.content)["records"]]
        if self.bad & set(numbers):
            return httpx.Response(422, json={"detail": [{"msg": "bad line"}]})
        self.stored += numbers
        return httpx.Response(200, json={"accepted": len(numbers), "duplicates": 0})


async def test_a_422_sets_aside_only_the_bad_lines(spool: Spool, spool_dir: Path) -> None:
    fill(spool, 8)
    lines = raw_lines(spool)
    picky = Picky(bad={1, 6})
    async with httpx.AsyncClient(transport=httpx.MockTransport(picky.handler)) as client:
        shipper = shipper_for(spool, client, batch_lines=4)
        assert await ship_all(shipper) == [4, 4, 0]
    assert picky.stored == [0, 2, 3, 4, 5, 7]  # every good line landed, in order
    rejected = spool_dir / "rejected" / "rejected.jsonl"
    assert rejected.read_bytes() == lines[1] + b"\n" + lines[6] + b"\n"
    assert rejected.stat().st_mode & 0o777 == 0o600
    assert (spool_dir / "rejected").stat().st_mode & 0o777 == 0o700
    assert pending_bytes(shipper, spool) == 0


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
