"""Keep the background tasks running, and say so: the supervisor and the ``keyward.authz.Background`` health.

Every coroutine the event loop runs for the life of the process (the listener, the ``last_used_at``
writer, the audit shipper, the spool's fsync timer) runs under :class:`Supervisor`. What a task
expects (Postgres restarting, the control plane down) it handles itself; anything else it raises
ends up here.

Invariants:

* a task that raises an :class:`Exception`, or returns, is recorded (its error, when its current
  run of failures began), marked down and started again after a back-off: 0.1 s doubling to 5 s,
  back to 0.1 s once a run has lasted ``healthy_after`` seconds. Nothing a task raises stops the
  others or the supervisor; only cancellation (:class:`asyncio.CancelledError`) stops a task, which
  is then shown down (a task that cancelled itself stays down, and the health says so);
* a task counts as failing from its first failure until it has run ``healthy_after`` seconds
  without one, so a task that fails at once on every restart stays failing however often it is
  restarted;
* :class:`BackgroundHealth` is read from another thread (the main one), because the loop it judges
  may be the thing that is stuck. It is SERVING while no task has been down longer than the grace
  and the loop runs a callback within ``stall_seconds``, NOT_SERVING otherwise.

The Prometheus view is ``keyward_authz_background_task_up{task}`` (1 running, 0 waiting to be
restarted), ``keyward_authz_background_task_restarts_total{task}`` and
``keyward_authz_loop_stall_seconds``; each failure is logged at error level as
``background.task_failed`` with the task, the error and how long it has been failing.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace

import structlog
from grpc_health.v1 import health, health_pb2

from authz.metrics import BACKGROUND_TASK_RESTARTS, BACKGROUND_TASK_UP, LOOP_STALL_SECONDS

log = structlog.get_logger("authz.supervisor")

#: The gRPC health service name that reports the background tasks (the liveness probe asks for it).
BACKGROUND_SERVICE = "keyward.authz.Background"

Factory = Callable[[], Awaitable[None]]
Sleep = Callable[[float], Awaitable[None]]


@dataclass(slots=True)
class TaskState:
    name: str
    up: bool = False
    restarts: int = 0
    last_error: str | None = None
    #: When the current run of failures began (``clock`` time); ``None`` while the task is healthy.
    failing_since: float | None = None
    #: When the task was last started.
    started_at: float | None = None


class Supervisor:
    def __init__(
        self,
        tasks: Mapping[str, Factory],
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        first_backoff: float = 0.1,
        max_backoff: float = 5.0,
        healthy_after: float = 10.0,
    ) -> None:
        self._tasks = dict(tasks)
        self._clock = clock
        self._sleep = sleep
        self._first_backoff = first_backoff
        self._max_backoff = max_backoff
        self._healthy_after = healthy_after
        self._lock = threading.Lock()  # states are written on the loop thread, read from the main one
        self._states = {name: TaskState(name) for name in self._tasks}
        for name in self._tasks:
            BACKGROUND_TASK_UP.labels(name).set(0)
            BACKGROUND_TASK_RESTARTS.labels(name)  # the series exists, at 0, before the first restart

    async def run(self) -> None:
        """Run every task until cancelled; cancelling this cancels them all."""
        async with asyncio.TaskGroup() as group:
            for name, factory in self._tasks.items():
                group.create_task(self._keep(name, factory), name=name)

    def states(self) -> dict[str, TaskState]:
        """A consistent copy of every task's state."""
        with self._lock:
            self._heal(self._clock())
            return {name: replace(state) for name, state in self._states.items()}

    def down_too_long(self, grace: float, now: float | None = None) -> list[str]:
        """The tasks that are down and have been failing for longer than ``grace`` seconds."""
        now = self._clock() if now is None else now
        with self._lock:
            self._heal(now)
            return [state.name for state in self._states.values()
                    if not state.up and state.failing_since is not None and now - state.failing_since > grace]

    def _heal(self, now: float) -> None:
        """End the run of failures of every task that has now run ``healthy_after`` seconds (lock held)."""
        for state in self._states.values():
            if state.up and state.started_at is not None and now - state.started_at >= self._healthy_after:
                state.failing_since = None

    async def _keep(self, name: str, factory: Factory) -> None:
        backoff = self._first_backoff
        while True:
            self._started(name)
            failure: Exception | None = None
            try:
                await factory()
                error = "returned"  # a background task is meant to run for ever
            except asyncio.CancelledError:
                # Stop, as asked. Should the task have cancelled itself, it is gone for good: shown
                # down, so the health says so once the grace has passed.
                self._failed(name, "cancelled")
                raise
            except Exception as exc:  # anything but cancellation: record it, restart the task
                failure, error = exc, f"{type(exc).__name__}: {exc}"
            ran, failing_for = self._failed(name, error)
            if ran >= self._healthy_after:
                backoff = self._first_backoff
            log.error("background.task_failed", task=name, error=error, restart_in=backoff,
                      failing_for=round(failing_for, 3), exc_info=failure)
            await self._sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff)
            with self._lock:
                self._states[name].restarts += 1
            BACKGROUND_TASK_RESTARTS.labels(name).inc()

    def _started(self, name: str) -> None:
        with self._lock:
            state = self._states[name]
            state.up, state.started_at = True, self._clock()
        BACKGROUND_TASK_UP.labels(name).set(1)

    def _failed(self, name: str, error: str) -> tuple[float, float]:
        """Mark the task down; returns how long its last run lasted and how long it has been failing."""
        now = self._clock()
        with self._lock:
            self._heal(now)
            state = self._states[name]
            ran = now - (state.started_at if state.started_at is not None else now)
            if state.failing_since is None:
                state.failing_since = now
            state.up, state.last_error = False, error
            failing_for = now - state.failing_since
        BACKGROUND_TASK_UP.labels(name).set(0)
        return ran, failing_for


class LoopWatch:
    """Whether an event loop still runs callbacks, asked from another thread.

    :meth:`poke` posts a callback unless one is still waiting; :meth:`stalled_for` is how long the
    waiting one has waited. A loop that runs nothing (a blocking call, an endless computation) lets
    that grow; a responsive one keeps it near zero.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._loop = loop
        self._clock = clock
        self._lock = threading.Lock()
        self._waiting_since: float | None = None

    def poke(self) -> None:
        with self._lock:
            if self._waiting_since is not None:
                return
            self._waiting_since = self._clock()
        try:
            self._loop.call_soon_threadsafe(self._answered)
        except RuntimeError:  # the loop is closed: it will never answer, and waiting_since says so
            pass

    def _answered(self) -> None:
        with self._lock:
            self._waiting_since = None

    def stalled_for(self, now: float | None = None) -> float:
        now = self._clock() if now is None else now
        with self._lock:
            return 0.0 if self._waiting_since is None else max(0.0, now - self._waiting_since)


class BackgroundHealth:
    """The ``keyward.authz.Background`` verdict: are the background tasks and their loop alive?"""

    def __init__(self, supervisor: Supervisor, watch: LoopWatch, *, grace: float, stall_seconds: float) -> None:
        self._supervisor = supervisor
        self._watch = watch
        self._grace = grace
        self._stall = stall_seconds
        self._published: int | None = None

    def serving(self) -> bool:
        stalled = self._watch.stalled_for()
        LOOP_STALL_SECONDS.set(stalled)
        return stalled <= self._stall and not self._supervisor.down_too_long(self._grace)

    def publish(self, servicer: health.HealthServicer) -> bool:
        """Judge now and set :data:`BACKGROUND_SERVICE` on ``servicer`` (only when it changes, so Watch
        streams hear of changes, not of every tick); then ask the loop for its next sign of life."""
        serving = self.serving()
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        if status != self._published:
            servicer.set(BACKGROUND_SERVICE, status)
            self._published = status
            if not serving:
                log.error("background.not_serving", down=self._supervisor.down_too_long(self._grace),
                          loop_stalled_seconds=round(self._watch.stalled_for(), 3))
        self._watch.poke()
        return serving
