"""Ship spooled lines to the control plane, in order, at least once.

Invariants:

* the position (segment, byte offset) advances only past lines the control plane confirmed (200) or
  that were set aside, and is persisted atomically, so a restart of either side resends at most
  one batch, which the idempotent ingest skips;
* while the control plane is down or busy (no connection, 429, 502, 503, 504) the spool grows and
  nothing is dropped: the same batch is retried for as long as it takes, never more than a second
  apart (or after ``Retry-After``, when the control plane asks for longer), so shipping resumes
  within about a second of the store coming back;
* no batch can block the ones behind it. Lines the control plane refuses (413, 422), and a batch
  that keeps failing with any other server error (500 and the like, three attempts), are halved
  until the lines it cannot store are alone; the rest are shipped and those few are quarantined;
* a quarantined line is never dropped silently: it goes to ``rejected/rejected.jsonl`` with the
  answer that refused it, is counted in ``keyward_authz_audit_lines_quarantined_total`` and logged
  at error level as ``audit.lines_quarantined`` (the alert). Each line of that file is
  ``{"quarantined_at", "status", "reason", "line"}``, ``line`` being the original record (or, if it
  was not JSON, its text), so ``jq -c .line`` gives back what to replay;
* an error of the local disk (reading the spool, writing the position or the quarantine file)
  is not handled here: it propagates, the task's supervisor restarts the shipper, and it resumes
  from the persisted position, so nothing is skipped.

A batch that was not full means the spool is drained: the shipper then waits ``idle_seconds`` before
the next, so under steady load batches hold what arrived in that time rather than the few lines that
arrived during one round trip. Most of ingest's cost is per batch (a request, a transaction, the chain
head), so this is what keeps the control plane's cost per record low.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx
import structlog

from authz.audit.records import seconds_of
from authz.audit.spool import Spool
from authz.metrics import AUDIT_LINES_QUARANTINED, AUDIT_LINES_SHIPPED, AUDIT_SHIP_FAILURES, SHIPPER_UP

log = structlog.get_logger("authz.audit.shipper")

#: The store is down or busy: retry the same lines for as long as it takes.
UNAVAILABLE = frozenset({429, 502, 503, 504})
#: The store says these lines cannot be stored: isolate them at once.
REFUSED = frozenset({413, 422})
#: Attempts of one batch answered with another server error (500…) before its lines are isolated.
SERVER_ERROR_ATTEMPTS = 3
#: Longest pause between attempts, unless the control plane's ``Retry-After`` asks for more.
MAX_BACKOFF_SECONDS = 1.0
#: Longest ``Retry-After`` honoured; a larger one is a misconfiguration, not a reason to stop for hours.
MAX_RETRY_AFTER_SECONDS = 60.0
#: How much of a refusing answer's body is kept with the quarantined line.
REASON_CHARS = 2000

Sleep = Callable[[float], Awaitable[None]]
#: Where a spooled line's time is: ``at`` is the second key of both kinds of line (``{"kind":…,"at":"…"``).
_AT = re.compile(rb'"at":"([^"]{1,64})"')


@dataclass(slots=True)
class _Batch:
    #: The position the batch starts at.
    start: tuple[str, int]
    #: Where the next batch starts once this one is settled (past the last line, or at the start of
    #: the next segment when this one ends a segment, so that segment can be released).
    end: tuple[str, int]
    lines: list[bytes] = field(default_factory=list)
    #: The position just past each line, so a batch can be confirmed part by part.
    ends: list[tuple[str, int]] = field(default_factory=list)


def _refuses_lines(status: int) -> bool:
    """An answer that may be about the lines themselves rather than about the store."""
    return status in REFUSED or (status >= 500 and status not in UNAVAILABLE)


def _retry_after(response: httpx.Response | None) -> float | None:
    value = response.headers.get("retry-after") if response is not None else None
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # the HTTP-date form: rare from our own control plane, and the cap applies anyway
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


class Shipper:
    def __init__(self, spool: Spool, *, client: httpx.AsyncClient, url: str, token: str,
                 batch_lines: int = 2000, idle_seconds: float = 0.25, batch_bytes: int = 1_000_000,
                 sleep: Sleep = asyncio.sleep, clock: Callable[[], float] = time.time) -> None:
        self._spool = spool
        self._client = client
        self._url = url
        self._token = token
        self._batch_lines = batch_lines
        #: The request body stays under this (the control plane refuses bodies over 1 MiB by default).
        self._batch_bytes = batch_bytes
        self._idle = idle_seconds
        self._sleep = sleep
        self._clock = clock
        self._position_file = spool.directory / "shipped.pos"
        #: Where the batch that last failed with a server error starts, and how often it failed.
        self._strikes: tuple[tuple[str, int], int] | None = None

    # -- position ---------------------------------------------------------------------------------

    def position(self) -> tuple[str, int]:
        try:
            name, offset = self._position_file.read_text().split()
            return name, int(offset)
        except (FileNotFoundError, ValueError):
            segments = self._spool.segments()
            return (segments[0].name if segments else self._spool.current.name), 0

    def _save(self, name: str, offset: int) -> None:
        staging = self._position_file.with_suffix(".tmp")
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{name} {offset}\n")
        os.replace(staging, self._position_file)

    def backlog(self) -> tuple[int, float]:
        """Bytes spooled past the shipped position, and the age in seconds of the first of those lines
        (0 when none waits). Read from the files only, so any thread may ask (the metrics scrape does)."""
        name, offset = self.position()
        waiting, oldest = 0, 0.0
        for segment in self._spool.segments():
            if segment.name < name:
                continue
            start = offset if segment.name == name else 0
            try:
                size = segment.stat().st_size
                if size > start and not waiting:
                    with segment.open("rb") as handle:
                        handle.seek(start)
                        found = _AT.search(handle.read(512))
                    if found:
                        oldest = max(0.0, self._clock() - seconds_of(found.group(1).decode("ascii", "replace")))
            except FileNotFoundError:  # shipped and released meanwhile
                continue
            waiting += max(0, size - start)
        return waiting, oldest

    # -- reading ----------------------------------------------------------------------------------

    def _read_batch(self) -> _Batch:
        """Whole lines from the position on, crossing into later segments, each with its end position."""
        name, offset = self.position()
        batch = _Batch((name, offset), (name, offset))
        size = len(b'{"records":[]}')
        for segment in self._spool.segments():
            if segment.name < name:
                continue
            start = offset if segment.name == name else 0
            with segment.open("rb") as handle:
                handle.seek(start)
                data = handle.read(1 << 20)
            complete = data[: data.rfind(b"\n") + 1]
            for line in complete.splitlines():
                if len(batch.lines) == self._batch_lines or (batch.lines and size + len(line) + 1 > self._batch_bytes):
                    batch.end = (segment.name, start)
                    return batch
                start += len(line) + 1
                batch.lines.append(line)
                batch.ends.append((segment.name, start))
                size += len(line) + 1
            batch.end = (segment.name, start)
            if len(complete) < len(data) or segment == self._spool.current or len(data) == 1 << 20:
                break
        return batch

    def _release_shipped_segments(self, name: str) -> None:
        for segment in self._spool.segments():
            if segment.name < name and segment != self._spool.current:
                segment.unlink(missing_ok=True)

    # -- shipping ---------------------------------------------------------------------------------

    async def drain(self) -> int:
        """Ship until the spool is empty (a clean stop's last effort; what is left stays spooled)."""
        total = 0
        while shipped := await self.ship_once():
            total += shipped
        return total

    async def ship_once(self) -> int:
        """Ship (or set aside) the next batch; raises while the store cannot take it."""
        batch = self._read_batch()
        if not batch.lines:
            return 0
        response = await self._post(batch.lines)
        if response.status_code != 200:
            if not self._isolate_now(batch.start, response.status_code):
                raise self._failure(response)
            await self._isolate(batch, 0, len(batch.lines), response)
        self._strikes = None
        self._save(*batch.end)
        self._release_shipped_segments(batch.end[0])
        return len(batch.lines)

    def _isolate_now(self, start: tuple[str, int], status: int) -> bool:
        """Whether a batch's failure is about its lines: a refusal at once, another server error only
        once the same batch has failed :data:`SERVER_ERROR_ATTEMPTS` times (it may be transient)."""
        if status in REFUSED:
            return True
        if not _refuses_lines(status):
            return False
        failures = self._strikes[1] + 1 if self._strikes and self._strikes[0] == start else 1
        self._strikes = (start, failures)
        return failures >= SERVER_ERROR_ATTEMPTS

    async def _isolate(self, batch: _Batch, lo: int, hi: int, refusal: httpx.Response) -> None:
        """Halve ``lines[lo:hi]`` until the lines the store refuses are alone; ship the others, set
        those aside. The position follows every part settled, so an outage halfway resends nothing
        twice and quarantines nothing twice."""
        if hi - lo == 1:
            refusal = await self._last_word(batch.lines[lo], refusal)
            if refusal.status_code != 200:
                self._quarantine(batch.lines[lo], refusal)
            self._save(*batch.ends[lo])
            return
        middle = (lo + hi) // 2
        for part_lo, part_hi in ((lo, middle), (middle, hi)):
            response = await self._post(batch.lines[part_lo:part_hi])
            if response.status_code == 200:
                self._save(*batch.ends[part_hi - 1])
            elif _refuses_lines(response.status_code):
                await self._isolate(batch, part_lo, part_hi, response)
            else:
                raise self._failure(response)

    async def _last_word(self, line: bytes, refusal: httpx.Response) -> httpx.Response:
        """A single line refused by a server error gets the same attempts as a batch before it is
        set aside: a 500 that came and went must not quarantine a good line."""
        attempts = 1
        while refusal.status_code not in REFUSED and attempts < SERVER_ERROR_ATTEMPTS:
            refusal = await self._post([line])
            attempts += 1
            if refusal.status_code == 200:
                break
            if not _refuses_lines(refusal.status_code):
                raise self._failure(refusal)
        return refusal

    async def _post(self, lines: list[bytes]) -> httpx.Response:
        body = b'{"records":[' + b",".join(lines) + b"]}"
        response = await self._client.post(
            self._url, content=body,
            headers={"Authorization": f"Bearer {self._token}", "content-type": "application/json"},
        )
        if response.status_code == 200:
            AUDIT_LINES_SHIPPED.inc(len(lines))
        return response

    @staticmethod
    def _failure(response: httpx.Response) -> httpx.HTTPStatusError:
        return httpx.HTTPStatusError(f"ingest answered {response.status_code}", request=response.request,
                                     response=response)

    def _quarantine(self, line: bytes, refusal: httpx.Response) -> None:
        reason = refusal.text[:REASON_CHARS]
        try:
            original = json.loads(line)
        except ValueError:
            original = line.decode("utf-8", "replace")
        entry = {
            "quarantined_at": datetime.fromtimestamp(self._clock(), tz=UTC).isoformat(timespec="microseconds"),
            "status": refusal.status_code,
            "reason": reason,
            "line": original,
        }
        rejected = self._spool.directory / "rejected"
        rejected.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(rejected / "rejected.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "ab") as handle:
            # ASCII: whatever the line held (a lone surrogate, say) is written as a JSON escape.
            handle.write(json.dumps(entry, separators=(",", ":")).encode() + b"\n")
        AUDIT_LINES_QUARANTINED.labels(str(refusal.status_code)).inc()
        log.error("audit.lines_quarantined", lines=1, status=refusal.status_code, reason=reason,
                  file=str(rejected / "rejected.jsonl"))

    async def run(self) -> None:
        """Ship forever. The store being unreachable or busy is waited out here; anything else (a
        failing disk) propagates to the supervisor, which restarts this from the saved position.
        ``keyward_authz_shipper_up`` is 1 while this runs and its last attempt did not fail."""
        backoff = self._idle
        SHIPPER_UP.set(1)
        try:
            while True:
                try:
                    shipped = await self.ship_once()
                except httpx.HTTPError as exc:
                    response = exc.response if isinstance(exc, httpx.HTTPStatusError) else None
                    wait = _retry_after(response) or backoff
                    AUDIT_SHIP_FAILURES.inc()
                    SHIPPER_UP.set(0)
                    log.warning("audit.ship_failed", error=f"{type(exc).__name__}: {exc}", retry_in=wait)
                    await self._sleep(wait)
                    backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
                    continue
                backoff = self._idle
                SHIPPER_UP.set(1)
                if shipped < self._batch_lines:
                    await self._sleep(self._idle)
        finally:
            SHIPPER_UP.set(0)  # failed (the supervisor starts it again) or stopped


async def sync_forever(spool: Spool, interval: float, sleep: Sleep = asyncio.sleep) -> None:
    """fsync the open segment on a timer: one disk flush per interval, not one per request. A failing
    fsync propagates to the supervisor, which reports the task down and restarts it."""
    while True:
        await sleep(interval)
        spool.sync()
