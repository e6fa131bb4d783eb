"""The supervisor of the background tasks, and the ``keyward.authz.Background`` health it feeds.

Time is virtual: the supervisor's clock is a :class:`~tests.unit.faults.Clock` and its ``sleep`` a
:class:`~tests.unit.faults.Gate`, so every back-off is seen and nothing waits for real. Health is
read from a real ``grpc_health`` servicer, the one the process serves.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import threading
from collections.abc import Awaitable, Callable, Iterator

import pytest
from grpc_health.v1 import health, health_pb2
from prometheus_client import REGISTRY

from authz.loop import LoopThread
from authz.supervisor import BACKGROUND_SERVICE, BackgroundHealth, LoopWatch, Supervisor
from tests.unit.faults import Clock, Gate, logging_to, until

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
GRACE = 30.0
_names = itertools.count()


@pytest.fixture(autouse=True)
def logged() -> Iterator[io.StringIO]:
    """The process's JSON logging (failures are logged with their traceback), into a buffer."""
    buffer = io.StringIO()
    with logging_to(buffer):
        yield buffer


def task_name() -> str:
    """Metric series are process-wide: each test's task gets a name of its own."""
    return f"test-task-{next(_names)}"


def up(task: str) -> float | None:
    return REGISTRY.get_sample_value("keyward_authz_background_task_up", {"task": task})


def restarts(task: str) -> float | None:
    return REGISTRY.get_sample_value("keyward_authz_background_task_restarts_total", {"task": task})


def status(servicer: health.HealthServicer) -> int:
    return servicer.Check(health_pb2.HealthCheckRequest(service=BACKGROUND_SERVICE), None).status


class Script:
    """A task factory: each run does the next step (raise this, return, or run until cancelled)."""

    def __init__(self, *steps: BaseException | str) -> None:
        self.steps = list(steps)
        self.runs = 0
        self.cancelled = 0

    async def __call__(self) -> None:
        self.runs += 1
        step = self.steps.pop(0) if self.steps else "run"
        if isinstance(step, BaseException):
            raise step
        if step == "run":
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise


class Harness:
    """A supervisor on virtual time, its health on a real health servicer, judged on this loop."""

    def __init__(self, tasks: dict[str, Callable[[], Awaitable[None]]], *, healthy_after: float = 10.0) -> None:
        self.clock = Clock()
        self.gate = Gate(self.clock)
        self.supervisor = Supervisor(tasks, clock=self.clock, sleep=self.gate, healthy_after=healthy_after)
        self.watch = LoopWatch(asyncio.get_running_loop(), clock=self.clock)
        self.health = BackgroundHealth(self.supervisor, self.watch, grace=GRACE, stall_seconds=10.0)
        self.servicer = health.HealthServicer()
        self.task = asyncio.create_task(self.supervisor.run())

    async def publish(self) -> int:
        self.health.publish(self.servicer)
        await asyncio.sleep(0)  # this loop answers the watch's poke: it is not stalled
        return status(self.servicer)

    async def sleeping(self, count: int = 1) -> None:
        await until(lambda: self.gate.sleeping >= count, what="a task waiting to be restarted")

    async def stop(self) -> None:
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task


async def test_a_task_that_raises_is_restarted_and_shown_down_then_up() -> None:
    name = task_name()
    flaky = Script(RuntimeError("boom"))
    h = Harness({name: flaky})
    try:
        await h.sleeping()
        state = h.supervisor.states()[name]
        assert (state.up, state.restarts, state.last_error) == (False, 0, "RuntimeError: boom")
        assert state.failing_since == h.clock.now
        assert (up(name), restarts(name)) == (0.0, 0.0)
        assert await h.publish() == SERVING  # down, but not yet for longer than the grace

        h.clock.advance(GRACE + 1)
        assert await h.publish() == NOT_SERVING

        assert h.gate.open() == 0.1  # the first back-off
        await until(lambda: h.supervisor.states()[name].up, what="the restart")
        assert flaky.runs == 2
        assert (up(name), restarts(name)) == (1.0, 1.0)
        assert await h.publish() == SERVING
    finally:
        await h.stop()
    assert flaky.cancelled == 1  # cancelling the supervisor stops the task


async def test_a_task_that_keeps_failing_is_not_serving_after_the_grace() -> None:
    name, healthy = task_name(), task_name()
    always = Script(*[OSError(28, "No space left on device")] * 100)
    h = Harness({name: always, healthy: Script()})
    try:
        verdicts = []
        while h.clock.now - 1_000.0 <= GRACE + 10:
            await h.sleeping()
            verdicts.append((h.clock.now - 1_000.0, await h.publish()))
            h.gate.open()
        assert all(verdict == SERVING for at, verdict in verdicts if at <= GRACE)
        assert all(verdict == NOT_SERVING for at, verdict in verdicts if at > GRACE)
        assert any(at > GRACE for at, _ in verdicts)
        # Restarted every time, and every time it failed at once: still one run of failures.
        state = h.supervisor.states()[name]
        assert state.restarts >= 8 and state.failing_since == 1_000.0
        assert state.last_error == "OSError: [Errno 28] No space left on device"
        assert h.supervisor.states()[healthy].up
    finally:
        await h.stop()


async def test_back_off_doubles_to_five_seconds_and_resets_after_a_healthy_run() -> None:
    name = task_name()
    failing = Script(*[ValueError("x")] * 9, "healthy-for-a-while", ValueError("again"))

    async def factory() -> None:
        if failing.steps and failing.steps[0] == "healthy-for-a-while":
            failing.steps.pop(0)
            h.clock.advance(10.0)  # it ran ``healthy_after`` seconds before failing
            raise ValueError("after a good run")
        await failing()

    h = Harness({name: factory})
    try:
        for _ in range(11):
            await h.sleeping()
            h.gate.open()
        await until(lambda: h.supervisor.states()[name].up, what="the last restart")
        assert h.gate.asked == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0, 0.1, 0.2]
    finally:
        await h.stop()


async def test_a_failure_after_a_healthy_run_starts_a_new_grace() -> None:
    name = task_name()
    h = Harness({name: Script(RuntimeError("first"), "run")})
    try:
        await h.sleeping()
        h.clock.advance(GRACE)
        h.gate.open()
        await until(lambda: h.supervisor.states()[name].up, what="the restart")
        h.clock.advance(10.0)  # healthy long enough
        assert h.supervisor.states()[name].failing_since is None
    finally:
        await h.stop()


async def test_a_failure_is_logged_as_an_error_with_its_traceback(logged: io.StringIO) -> None:
    name = task_name()
    h = Harness({name: Script(RuntimeError("boom"))})
    try:
        await h.sleeping()
    finally:
        await h.stop()
    [line] = [json.loads(text) for text in logged.getvalue().splitlines()
              if json.loads(text)["event"] == "background.task_failed"]
    assert (line["level"], line["task"], line["error"], line["restart_in"]) == ("error", name, "RuntimeError: boom",
                                                                                0.1)
    assert "Traceback" in line["exception"] and "boom" in line["exception"]


async def test_a_task_that_returns_is_restarted_too() -> None:
    name = task_name()
    h = Harness({name: Script("return")})
    try:
        await h.sleeping()
        assert h.supervisor.states()[name].last_error == "returned"
        h.gate.open()
        await until(lambda: h.supervisor.states()[name].up, what="the restart")
    finally:
        await h.stop()


async def test_a_task_that_cancels_itself_stops_and_is_shown_down() -> None:
    gone, steady = task_name(), task_name()
    h = Harness({gone: Script(asyncio.CancelledError()), steady: Script()})
    try:
        await until(lambda: not h.supervisor.states()[gone].up and h.supervisor.states()[gone].last_error
                    == "cancelled", what="the task to stop")
        assert h.gate.asked == []  # not restarted: cancellation means stop
        assert h.supervisor.states()[steady].up and not h.task.done()
        h.clock.advance(GRACE + 1)
        assert await h.publish() == NOT_SERVING
    finally:
        await h.stop()


async def test_one_failing_task_does_not_disturb_the_others() -> None:
    failing, steady = task_name(), task_name()
    steady_task = Script()
    h = Harness({failing: Script(KeyError("bug")), steady: steady_task})
    try:
        await h.sleeping()
        assert h.supervisor.states()[steady].up and steady_task.runs == 1
        assert (up(failing), up(steady)) == (0.0, 1.0)
    finally:
        await h.stop()


def test_a_stalled_loop_is_not_serving_even_with_every_task_up() -> None:
    clock = Clock()
    loop_thread = LoopThread()
    loop_thread.start()
    servicer = health.HealthServicer()
    try:
        name = task_name()
        supervisor = Supervisor({name: Script()}, clock=clock)
        running = loop_thread.call(_start(supervisor), timeout=5)
        watch = LoopWatch(loop_thread.loop, clock=clock)
        verdict = BackgroundHealth(supervisor, watch, grace=GRACE, stall_seconds=10.0)

        def answered() -> bool:
            return watch.stalled_for() == 0.0

        assert verdict.publish(servicer)
        _wait(answered)

        blocker = threading.Event()
        loop_thread.loop.call_soon_threadsafe(blocker.wait, 10)  # a blocking call on the loop
        assert verdict.publish(servicer)  # pokes; the loop cannot answer
        clock.advance(10.5)
        assert not verdict.publish(servicer)
        assert status(servicer) == NOT_SERVING
        assert REGISTRY.get_sample_value("keyward_authz_loop_stall_seconds") == 10.5

        blocker.set()
        _wait(answered)
        assert verdict.publish(servicer)
        assert status(servicer) == SERVING
        loop_thread.call(_cancel(running), timeout=5)
    finally:
        loop_thread.stop()


async def _start(supervisor: Supervisor) -> asyncio.Task[None]:
    return asyncio.create_task(supervisor.run())


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def _wait(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    done = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        done.wait(0.01)
    raise AssertionError("timed out")
