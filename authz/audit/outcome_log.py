"""Envoy's audit log, read into the spool: the record of what each request became, kept by Envoy itself.

Envoy writes one JSON line per finished request to its audit log, a file (``audit_log_format`` in
``envoy/gateway.yaml``): status, timing, bytes, token usage, and whether it acted on an authz
decision. The file is on disk whether authz is up or not, so when authz is down, stalled or
restarting the lines wait there, and authz reads them when it is back, from the position it saved:
the record of what happened does not depend on the part that failed.

Invariants:

* a line is spooled before the position after it is saved (at least once: ingest keeps a line it
  already has once), and only once it is complete (it ends with a newline);
* a request's decision line precedes its outcome line in the spool. An outcome whose request a
  Check of this process is still deciding (:class:`InFlight`) waits for that decision. An outcome
  Envoy answered without a decision (authz too slow, gone, or never asked) waits until no Check for
  it could still be recorded: past the request's start plus Envoy's authz timeout plus
  :data:`LATE_MARGIN_SECONDS` (:meth:`InFlight.moot` makes such a late Check record nothing). So a
  request never has two records, and never a false "allowed";
* rotation: once the file has passed ``rotate_bytes`` and all of it is read, it is renamed to
  ``<name>.1`` and Envoy is asked to reopen its logs; the renamed file (held open) is read to its end
  and deleted once Envoy writes to the new one. A ``<name>.1`` left from before a restart is read
  first. If Envoy cannot be asked, it keeps writing to the renamed file, which is read as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog

from authz.audit.costing import Costing
from authz.audit.records import outcome_line, seconds_of
from authz.metrics import AUDIT_OUTCOME_LINES_READ, AUDIT_OUTCOME_LINES_UNREADABLE
from authz.tracing import Tracing

log = structlog.get_logger("authz.audit.outcome_log")

#: How far past Envoy's authz timeout a Check still counts as on time (clock granularity, scheduling).
LATE_MARGIN_SECONDS = 0.25
#: Read at most this much of the file per round.
_CHUNK = 1 << 20


class InFlight:
    """Request ids of Checks between their start and their decision line, and the deadline after
    which a Check's decision no longer matters (Envoy has answered without it).

    ``begin``/``end`` run on gRPC threads and ``__contains__`` on the loop thread: single set
    operations, atomic under the GIL."""

    def __init__(self, authz_timeout: float, *, clock: Callable[[], float] = time.time) -> None:
        self.authz_timeout = authz_timeout
        self._clock = clock
        self._ids: set[str] = set()

    def begin(self, request_id: str) -> None:
        self._ids.add(request_id)

    def end(self, request_id: str) -> None:
        self._ids.discard(request_id)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._ids

    def closed_after(self, started: float) -> float:
        """When a request that started at ``started`` can no longer be decided in time."""
        return started + self.authz_timeout + LATE_MARGIN_SECONDS

    def moot(self, started: float | None) -> bool:
        """Whether Envoy has answered a request that started at ``started`` without this Check."""
        return started is not None and self._clock() > self.closed_after(started)


class OutcomeSpool(Protocol):
    directory: Path

    def append_many(self, records: Iterable[dict[str, Any]]) -> None: ...


@dataclass
class _Position:
    inode: int
    offset: int


@dataclass
class _Rotation:
    started: float
    #: Envoy confirmed it reopened its logs (it writes new lines to a new file from then on).
    reopened: bool = False
    #: Since when the renamed file has given nothing new while a new file exists.
    quiet_since: float | None = None


class OutcomeLog:
    def __init__(self, path: Path, spool: OutcomeSpool, *, in_flight: InFlight, source: str,
                 reopen: Callable[[], Awaitable[None]] | None = None, rotate_bytes: int = 64 << 20,
                 poll_seconds: float = 0.05, settle_seconds: float = 1.0,
                 clock: Callable[[], float] = time.time, costing: Costing | None = None,
                 tracing: Tracing | None = None) -> None:
        self.path = path
        self.rotated = path.with_name(path.name + ".1")
        self._spool = spool
        self._in_flight = in_flight
        self._source = source
        self._reopen = reopen
        self._rotate_bytes = rotate_bytes
        self._poll = poll_seconds
        self._settle = settle_seconds
        self._clock = clock
        self._position_file = spool.directory / "outcomes.pos"
        self._fd: int | None = None
        self._inode = 0
        self._offset = 0
        #: The rotation under way, if any: the file held open is the renamed one.
        self._rotation: _Rotation | None = None
        #: Prices each outcome and counts it against budgets and rate limits (:mod:`authz.audit.costing`).
        self._costing = costing
        #: Emits each outcome's GenAI span (:mod:`authz.tracing`); ``None``: tracing off.
        self._tracing = tracing

    # -- position ---------------------------------------------------------------------------------

    def _saved(self) -> _Position | None:
        try:
            document = json.loads(self._position_file.read_text())
            return _Position(int(document["inode"]), int(document["offset"]))
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None

    def _save(self) -> None:
        staging = self._position_file.with_suffix(".tmp")
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump({"inode": self._inode, "offset": self._offset}, handle)
        os.replace(staging, self._position_file)

    # -- the file being read ----------------------------------------------------------------------

    def _open(self) -> bool:
        """Open the file to read next: a rotated file not yet finished, else the current one; resume at
        the saved offset when it is the file the position was saved for."""
        saved = self._saved()
        for candidate, rotated in ((self.rotated, True), (self.path, False)):
            try:
                fd = os.open(candidate, os.O_RDONLY)
            except FileNotFoundError:
                continue
            self._fd, self._inode = fd, os.fstat(fd).st_ino
            self._offset = saved.offset if saved is not None and saved.inode == self._inode else 0
            if rotated:  # finish it first; asking Envoy to reopen again does no harm
                self._rotation = _Rotation(started=self._clock())
            return True
        return False

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # -- reading ----------------------------------------------------------------------------------

    def read_once(self, *, final: bool = False) -> int:
        """Spool what is ready of the file; returns the number of lines spooled. ``final``: the process
        is stopping and answers no more Checks, so no outcome needs to wait for a late one."""
        if self._fd is None and not self._open():
            return 0
        assert self._fd is not None
        data = os.pread(self._fd, _CHUNK, self._offset)
        complete = data[: data.rfind(b"\n") + 1]
        lines, consumed = self._ready(complete, final=final)
        if lines:
            self._spool.append_many(lines)
            if self._costing is not None:  # only once spooled: a line read again is not counted twice
                for line in lines:
                    self._costing.settle(line)
        if consumed:
            self._offset += consumed
            self._save()
            AUDIT_OUTCOME_LINES_READ.inc(len(lines))
        if consumed == len(data) and len(data) < _CHUNK:  # read to the end of what is there
            self._at_end()
        return len(lines)

    def _ready(self, complete: bytes, *, final: bool = False) -> tuple[list[dict[str, Any]], int]:
        """The outcome lines that may be spooled now, from the start of ``complete``, and the bytes they
        (and any unreadable lines among them) take: up to the first line that must wait."""
        lines: list[dict[str, Any]] = []
        consumed = 0
        now = self._clock()
        for raw in complete.splitlines(keepends=True):
            try:
                document = json.loads(raw)
                if not isinstance(document, dict):
                    raise ValueError("not a JSON object")
            except (ValueError, RecursionError) as exc:
                # Envoy writes whole JSON objects; anything else is damage, kept out of the store.
                AUDIT_OUTCOME_LINES_UNREADABLE.inc()
                log.error("audit.outcome_unreadable", error=str(exc), line=raw[:200].decode("utf-8", "replace"))
                consumed += len(raw)
                continue
            line = outcome_line(document, raw.rstrip(b"\n"), self._source)
            if self._costing is not None:
                self._costing.annotate(line, document)
            if line["request_id"] in self._in_flight:
                break  # its decision is being written: this outcome must follow it
            if not final and not line["decided"] and now <= self._in_flight.closed_after(seconds_of(line["at"])):
                break  # a Check for it could still be recorded: wait until none can
            if self._tracing is not None:
                self._tracing.outcome(line, document)
            lines.append(line)
            consumed += len(raw)
        return lines, consumed

    def _at_end(self) -> None:
        """At the end of the file being read: rotate it when it has grown big, or finish a rotated one."""
        assert self._fd is not None
        if self._rotation is None:
            if os.fstat(self._fd).st_size >= self._rotate_bytes and not self.rotated.exists():
                os.rename(self.path, self.rotated)
                self._rotation = _Rotation(started=self._clock())
                log.info("audit.outcome_log_rotated", path=str(self.rotated))
            return
        try:
            current = self.path.stat().st_ino
        except FileNotFoundError:
            current = None
        if current is None or current == self._inode:
            return  # Envoy has not opened a new file yet: it still writes here
        now = self._clock()
        rotation = self._rotation
        rotation.quiet_since = rotation.quiet_since or now
        if rotation.reopened and now - rotation.quiet_since >= self._settle:
            # Nothing new for a while, and Envoy writes to the new file: this one is finished.
            self._close()
            with contextlib.suppress(FileNotFoundError):
                if self.rotated.stat().st_ino == self._inode:
                    self.rotated.unlink()
            self._rotation = None
            self._offset = 0

    def drain(self) -> int:
        """At a clean stop (Envoy stopped first, no Check answered any more): spool everything left."""
        total = 0
        while spooled := self.read_once(final=True):
            total += spooled
        return total

    async def run(self) -> None:
        """Read forever; after a rotation, ask Envoy to reopen its logs (a failure is retried)."""
        backoff = self._poll
        while True:
            spooled = self.read_once()
            rotation = self._rotation
            if rotation is not None and not rotation.reopened and self._reopen is not None:
                try:
                    await self._reopen()
                    rotation.reopened = True
                    backoff = self._poll
                except (OSError, ValueError) as exc:  # Envoy away: it keeps writing to the renamed file
                    log.warning("audit.reopen_failed", error=f"{type(exc).__name__}: {exc}")
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
            elif rotation is not None and self._reopen is None:
                rotation.reopened = True  # nothing to ask: whoever rotates Envoy's logs did
            if not spooled:
                await asyncio.sleep(self._poll)
