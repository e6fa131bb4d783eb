"""Envoy's audit log, read into the spool: each line becomes one storable outcome line, exactly once, in
order, after its request's decision, through restarts, rotations and a full disk.

The lines are shaped the way Envoy writes them with ``audit_log_format()``
(``controlplane/stack/envoy_config.py``): numbers as JSON numbers, ``null`` for what is missing, ``"-"``
for no response flags.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
from pathlib import Path
from typing import Any

import pytest

from authz.audit.outcome_log import LATE_MARGIN_SECONDS, InFlight, OutcomeLog
from authz.audit.records import outcome_line
from authz.audit.spool import Spool
from controlplane.audit.ingest import OutcomeLine, parse_body

AT = "2026-12-01T11:40:42.886054Z"
AT_SECONDS = 1_796_125_242.886054
SOURCE = "replica-a"
MEGABYTE = 1_000_000


def envoy_line(**overrides: Any) -> dict[str, Any]:
    """An allowed chat completion that reached the provider, as Envoy logs it."""
    return {
        "at": AT, "request_id": "8d3c2f7e-5b1a-4c9e-9f0d-2a6b7c8d9e0f", "connection": 7, "method": "POST",
        "route": "/openai/v1/chat/completions?api-version=2024-06-01", "status": 200, "details": "via_upstream",
        "flags": "-", "duration_ms": 1234, "upstream_ms": 1197, "bytes_in": 1843, "bytes_out": 2201,
        "prompt_tokens": 1234, "completion_tokens": 56, "decision": "allowed", **overrides,
    }


def outcome(**overrides: Any) -> dict[str, Any]:
    document = envoy_line(**overrides)
    return outcome_line(document, json.dumps(document).encode(), SOURCE)


# -- one line -------------------------------------------------------------------------------------


def test_an_allowed_request_that_reached_the_provider() -> None:
    assert outcome() == {
        "kind": "outcome", "at": AT, "request_id": "8d3c2f7e-5b1a-4c9e-9f0d-2a6b7c8d9e0f", "status": 200,
        "upstream_status": 200, "response_flags": None, "details": "via_upstream", "duration_ms": 1234,
        "upstream_ms": 1197, "bytes_in": 1843, "bytes_out": 2201, "prompt_tokens": 1234, "completion_tokens": 56,
        "decided": True, "authz_decision": "allowed", "method": "POST", "route": "/openai/v1/chat/completions",
    }


@pytest.mark.parametrize(("overrides", "decided"), [
    ({}, True),
    ({"decision": "token_revoked", "status": 401, "details": "ext_authz_denied", "flags": "UAEX"}, True),
    ({"decision": None, "status": 503, "details": "ext_authz_error", "flags": "UAEX"}, False),  # authz too slow
    ({"decision": None, "status": 413, "details": "request_payload_too_large"}, False),
    ({"decision": None, "status": 400, "details": "http1.codec_error", "flags": "DPE", "request_id": None}, False),
], ids=["allowed", "denied", "authz-timeout", "envoy-413", "malformed"])
def test_decided_says_whether_envoy_acted_on_an_authz_decision(overrides: dict, decided: bool) -> None:
    assert outcome(**overrides)["decided"] is decided


@pytest.mark.parametrize(("overrides", "upstream_status"), [
    ({}, 200),
    ({"status": 429}, 429),
    ({"status": 503, "details": "upstream_reset_before_response_started{remote_connection_failure}",
      "flags": "UF"}, None),
    ({"status": 401, "details": "ext_authz_denied"}, None),
    ({"status": 0, "details": "downstream_remote_disconnect"}, None),
], ids=["200", "429", "connect-failure", "denied", "client-left"])
def test_upstream_status_only_when_the_provider_answered(overrides: dict, upstream_status: int | None) -> None:
    assert outcome(**overrides)["upstream_status"] == upstream_status


def test_what_envoy_leaves_unset_is_null() -> None:
    line = outcome(flags="-", upstream_ms=None, prompt_tokens=None, completion_tokens=None, duration_ms="-")
    assert (line["response_flags"], line["upstream_ms"], line["prompt_tokens"], line["duration_ms"]) == \
        (None, None, None, None)


def test_a_request_without_an_id_gets_one_from_its_line_the_same_every_time() -> None:
    malformed = envoy_line(request_id=None, status=431, details="http1.headers_too_large", decision=None)
    raw = json.dumps(malformed).encode()
    first, again = outcome_line(malformed, raw, SOURCE), outcome_line(malformed, raw, SOURCE)
    assert first["request_id"].startswith("envoy-") and first["request_id"] == again["request_id"]
    assert outcome_line(malformed, raw, "replica-b")["request_id"] != first["request_id"]
    assert OutcomeLine.model_validate(first).request_id == first["request_id"]


def test_hostile_values_stay_storable_and_the_line_says_so() -> None:
    line = outcome(request_id="r" * MEGABYTE, route="/" + "o\x00" * MEGABYTE, details="d\ud800" * MEGABYTE,
                   method="GET\x00", flags="X" * MEGABYTE)
    assert (len(line["request_id"]), len(line["route"]), len(line["details"])) == (128, 512, 512)
    assert "\x00" not in line["route"] + line["method"] and "\ud800" not in line["details"]
    assert len(line["response_flags"]) == 512 and line["sanitized"] is True
    body = b'{"records":[' + json.dumps(line, ensure_ascii=False).encode() + b"]}"
    [parsed] = parse_body(body).records
    assert parsed.route == line["route"] and parsed.sanitized is True


def test_a_clean_line_has_no_sanitized_key() -> None:
    assert "sanitized" not in outcome()


# -- the file -------------------------------------------------------------------------------------


class Clock:
    def __init__(self, now: float = AT_SECONDS + 60) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool")


def write(path: Path, *documents: dict[str, Any], partial: bytes = b"") -> None:
    with path.open("ab") as handle:
        for document in documents:
            handle.write(json.dumps(document).encode() + b"\n")
        handle.write(partial)


def spooled_ids(spool: Spool) -> list[str]:
    lines = []
    for segment in spool.segments():
        lines += [json.loads(line) for line in segment.read_bytes().splitlines()]
    return [line["request_id"] for line in lines]


def reader(path: Path, spool: Spool, *, in_flight: InFlight | None = None, clock: Clock | None = None,
           **options: Any) -> OutcomeLog:
    clock = clock or Clock()
    return OutcomeLog(path, spool, in_flight=in_flight or InFlight(1.0, clock=clock), source=SOURCE, clock=clock,
                      **options)


def test_complete_lines_are_spooled_once_and_a_restart_resumes_where_it_left(tmp_path: Path, spool: Spool) -> None:
    log = tmp_path / "audit.jsonl"
    write(log, envoy_line(request_id="r1"), envoy_line(request_id="r2"), partial=b'{"at": "2026-')
    assert reader(log, spool).read_once() == 2
    write(log, {}, partial=b"")  # Envoy finishes the torn line (here: a line of its own)
    restarted = reader(log, spool)
    write(log, envoy_line(request_id="r3"))
    restarted.read_once()
    assert spooled_ids(spool)[:2] == ["r1", "r2"] and spooled_ids(spool)[-1] == "r3"
    assert spooled_ids(spool).count("r1") == 1


def test_an_outcome_waits_for_its_requests_decision_and_keeps_order(tmp_path: Path, spool: Spool) -> None:
    log = tmp_path / "audit.jsonl"
    clock = Clock()
    in_flight = InFlight(1.0, clock=clock)
    in_flight.begin("r2")
    tail = reader(log, spool, in_flight=in_flight, clock=clock)
    write(log, envoy_line(request_id="r1"), envoy_line(request_id="r2"), envoy_line(request_id="r3"))
    assert tail.read_once() == 1
    assert spooled_ids(spool) == ["r1"]
    spool.append({"kind": "decision", "request_id": "r2"})  # the Check writes its decision, then ends
    in_flight.end("r2")
    tail.read_once()
    assert spooled_ids(spool) == ["r1", "r2", "r2", "r3"]


def test_an_undecided_outcome_waits_until_no_late_check_could_be_recorded(tmp_path: Path, spool: Spool) -> None:
    log = tmp_path / "audit.jsonl"
    clock = Clock(AT_SECONDS + 0.5)
    in_flight = InFlight(1.0, clock=clock)
    tail = reader(log, spool, in_flight=in_flight, clock=clock)
    write(log, envoy_line(request_id="timed-out", decision=None, status=503, details="ext_authz_error"),
          envoy_line(request_id="after"))
    assert tail.read_once() == 0
    clock.now = AT_SECONDS + 1.0 + LATE_MARGIN_SECONDS / 2
    assert not in_flight.moot(AT_SECONDS) and tail.read_once() == 0  # a Check could still be recorded
    clock.now = AT_SECONDS + 1.0 + LATE_MARGIN_SECONDS + 0.01
    assert in_flight.moot(AT_SECONDS)  # from now on a Check for it records nothing
    assert tail.read_once() == 2
    assert spooled_ids(spool) == ["timed-out", "after"]


def test_an_unreadable_line_is_counted_and_passed_over(tmp_path: Path, spool: Spool) -> None:
    log = tmp_path / "audit.jsonl"
    log.write_bytes(json.dumps(envoy_line(request_id="r1")).encode() + b"\n\x00garbage\n[1, 2]\n"
                    + json.dumps(envoy_line(request_id="r2")).encode() + b"\n")
    reader(log, spool).read_once()
    assert spooled_ids(spool) == ["r1", "r2"]


class FullSpool(Spool):
    full = True

    def append_many(self, records: Any) -> None:
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device")
        super().append_many(records)


def test_a_full_disk_loses_nothing_the_next_round_takes_it(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    spool = FullSpool(tmp_path / "spool")
    write(log, envoy_line(request_id="r1"), envoy_line(request_id="r2"))
    tail = reader(log, spool)
    with pytest.raises(OSError):
        tail.read_once()  # the supervisor restarts the task
    spool.full = False
    reader(log, spool).read_once()
    assert spooled_ids(spool) == ["r1", "r2"]


def test_rotation_renames_asks_envoy_to_reopen_and_finishes_the_old_file(tmp_path: Path, spool: Spool) -> None:
    log = tmp_path / "audit.jsonl"
    clock = Clock()
    reopened: list[float] = []

    async def reopen() -> None:
        reopened.append(clock.now)

    tail = reader(log, spool, clock=clock, reopen=reopen, rotate_bytes=1 << 16, poll_seconds=0.001,
                  settle_seconds=1.0)
    write(log, *(envoy_line(request_id=f"a{i}") for i in range(200)))  # past 64 KiB
    assert tail.read_once() == 200
    assert tail.rotated.exists() and not log.exists()

    async def rounds(count: int) -> None:
        task = asyncio.create_task(tail.run())
        for _ in range(count):
            await asyncio.sleep(0.002)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(rounds(5))
    assert len(reopened) == 1
    write(tail.rotated, envoy_line(request_id="late-old"))  # flushed by Envoy before it reopened
    write(log, envoy_line(request_id="b0"))  # and the first line of the new file
    asyncio.run(rounds(5))
    assert tail.rotated.exists()  # not quiet long enough yet
    clock.now += 2
    asyncio.run(rounds(5))
    assert not tail.rotated.exists()
    ids = spooled_ids(spool)
    assert ids == [f"a{i}" for i in range(200)] + ["late-old", "b0"]


def test_a_restart_during_a_rotation_finishes_the_renamed_file_first(tmp_path: Path, spool: Spool) -> None:
    log = tmp_path / "audit.jsonl"
    write(log, *(envoy_line(request_id=f"a{i}") for i in range(200)))
    first = reader(log, spool, rotate_bytes=1 << 16)
    first.read_once()
    write(first.rotated, envoy_line(request_id="late-old"))
    write(log, envoy_line(request_id="b0"))
    restarted = reader(log, spool, rotate_bytes=1 << 16)
    for _ in range(3):
        restarted.read_once()
    assert spooled_ids(spool) == [f"a{i}" for i in range(200)] + ["late-old"]  # b0 waits for the old file
    assert os.path.exists(first.rotated)


def test_when_envoy_cannot_be_asked_to_reopen_nothing_is_lost(tmp_path: Path, spool: Spool) -> None:
    log = tmp_path / "audit.jsonl"

    async def refuse() -> None:
        raise OSError("Envoy's control socket: ConnectError")

    tail = reader(log, spool, reopen=refuse, rotate_bytes=1 << 16, poll_seconds=0.001)
    write(log, *(envoy_line(request_id=f"a{i}") for i in range(200)))
    tail.read_once()
    write(tail.rotated, envoy_line(request_id="still-old"))  # Envoy keeps writing to the renamed file

    async def rounds() -> None:
        task = asyncio.create_task(tail.run())
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(rounds())
    assert spooled_ids(spool)[-1] == "still-old"


def test_a_clean_stop_spools_everything_left_without_waiting(tmp_path: Path, spool: Spool) -> None:
    log = tmp_path / "audit.jsonl"
    clock = Clock(AT_SECONDS + 0.1)
    tail = reader(log, spool, clock=clock)
    write(log, envoy_line(request_id="timed-out", decision=None, status=503, details="ext_authz_error"),
          envoy_line(request_id="after"))
    assert tail.read_once() == 0  # a late Check could still be recorded
    assert tail.drain() == 2  # at a stop none can: nothing waits, nothing is left behind
    assert spooled_ids(spool) == ["timed-out", "after"]
