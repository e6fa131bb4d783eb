"""Injected faults shared by the unit tests: a log stream on a full disk, virtual time, and naps.

Nothing here patches production code; each fake is handed to it through a parameter it takes anyway
(``authz.logs.configure(stream=...)``, the ``clock`` and ``sleep`` of the shipper and the supervisor).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import logging
from collections.abc import Callable, Iterator

import structlog

from authz import logs


class FullDisk(io.TextIOBase):
    """A log stream on a disk that may be full: while ``full``, every write fails with ENOSPC."""

    def __init__(self, *, full: bool = True) -> None:
        self.full = full
        self.written: list[str] = []
        self.refused = 0

    def write(self, text: str) -> int:
        if self.full:
            self.refused += 1
            raise OSError(errno.ENOSPC, "No space left on device")
        self.written.append(text)
        return len(text)

    def flush(self) -> None:
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device")


@contextlib.contextmanager
def logging_to(stream: io.TextIOBase) -> Iterator[None]:
    """Configure logging as the authz process does, onto ``stream``; put everything back afterwards."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, raise_exceptions = list(root.handlers), logging.raiseExceptions
    logs.configure("info", stream=stream)  # type: ignore[arg-type]
    # Module loggers must not stay bound to this test's stream once it is over.
    structlog.configure(cache_logger_on_first_use=False)
    try:
        yield
    finally:
        structlog.reset_defaults()
        structlog.configure(**saved)
        root.handlers[:] = handlers
        logging.raiseExceptions = raise_exceptions


class Clock:
    """A clock that moves only when told to."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Naps:
    """An injected ``sleep`` that records each pause and returns at once (after letting others run)."""

    def __init__(self) -> None:
        self.taken: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.taken.append(seconds)
        await asyncio.sleep(0)


class Gate:
    """An injected ``sleep`` that holds every sleeper until the test lets it go, then moves ``clock``
    on by the time it asked for: virtual time, one step at a time."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.asked: list[float] = []
        self._waiting: list[tuple[float, asyncio.Future[None]]] = []

    async def __call__(self, seconds: float) -> None:
        self.asked.append(seconds)
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((seconds, future))
        await future

    @property
    def sleeping(self) -> int:
        return len(self._waiting)

    def open(self) -> float:
        """Wake the first sleeper, after its time has passed; returns the seconds it slept."""
        seconds, future = self._waiting.pop(0)
        self.clock.advance(seconds)
        future.set_result(None)
        return seconds


async def until(condition: Callable[[], bool], *, within: float = 5.0, what: str = "condition") -> None:
    """Let the loop run until ``condition`` holds (real time, bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)
