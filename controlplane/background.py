"""Work the control plane does on a timer, off the request path, and how its liveness is judged.

A :class:`Duty` runs one round every ``interval`` seconds for as long as the process lives. A round
that fails, for any reason, is logged and counted; the next round comes all the same, so a database
outage or a bug in one round never ends the duty. ``/livez`` asks :meth:`Duty.alive`: the task is
still running and has ticked recently. A duty that stopped ticking (its task died, or the event loop
is stuck) makes the process fail its liveness probe, and Kubernetes restarts it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog

from controlplane.metrics import DUTY_FAILURES

log = structlog.get_logger("controlplane.background")


class Duty:
    def __init__(self, name: str, interval: float, round_: Callable[[], Awaitable[object]], *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.interval = interval
        self._round = round_
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        #: When the duty last began a round (monotonic seconds), whatever the round's outcome.
        self.last_tick: float = clock()
        self.failures = 0
        self._failed = DUTY_FAILURES.labels(name)  # the series exists (at 0) before the first failure

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.last_tick = self._clock()
            try:
                await self._round()
            except Exception as exc:
                self.failures += 1
                self._failed.inc()
                log.warning("duty.round_failed", duty=self.name, error=f"{type(exc).__name__}: {exc}")

    def alive(self, *, grace: float = 30.0) -> bool:
        """Running, and ticked within three intervals (at least ``grace`` seconds)."""
        running = self._task is not None and not self._task.done()
        return running and self._clock() - self.last_tick <= max(3 * self.interval, grace)
