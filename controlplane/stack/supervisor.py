"""The stack's child processes: started so that they die with the runner, recorded so that a later run
can find them, and restarted with back-off when they crash.

Invariants:

* **A child never outlives the runner.** Each one asks the kernel (``prctl(PR_SET_PDEATHSIG)``) for a
  signal when the thread that started it ends, so even a SIGKILLed runner takes its children with it.
  That signal follows the *thread*, so a thread that starts a child must outlive it: the stack starts
  them from the thread that calls ``start``/``restart`` (the main thread of ``keyward up`` and of the
  tests) and from the :class:`Supervisor` thread, which ends only after every child has been stopped.
* **Children are in their own process group**, so the terminal's Ctrl-C reaches only the runner, which
  then stops them in order (Envoy drained first) instead of all at once.
* **Every running child has a pidfile** (``<data>/run/<name>.pid``: pid, argv, start time, how to stop
  it). A later run stops a child left over by an earlier one (:func:`stop_leftover`) only after
  checking ``/proc/<pid>/cmdline`` and the start time, so a recycled pid is never killed.
* **A child stopped on purpose** (:meth:`Service.stop`) stays stopped; a child that exits by itself is
  restarted after a back-off of 0.5 s doubling up to 10 s, reset once it has run for 30 s.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from controlplane.stack.redact import LogFile

__all__ = ["Backoff", "Service", "Supervisor", "describe_exit", "leftover", "pid_alive", "stop_leftover", "terminate"]

_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _death_signal(sig: int) -> Callable[[], None] | None:
    """The ``preexec_fn`` that makes the child receive ``sig`` when the starting thread ends.

    It runs in the child between fork and exec, after any change of user (a credential change clears
    the setting). Everything it calls is resolved before the fork.
    """
    if _LIBC is None:
        return None
    prctl = _LIBC.prctl
    parent = os.getpid()
    kill, getppid, getpid = os.kill, os.getppid, os.getpid

    def preexec() -> None:
        if prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if getppid() != parent:  # the runner died before the setting took effect
            kill(getpid(), sig)

    return preexec


# -- processes by pid ---------------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    return raw[raw.rindex(")") + 2 :].split()


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a process that has not exited (a zombie has)."""
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def start_ticks(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[19]) if fields is not None else None


def cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0")[:-1]]


def terminate(pid: int, sig: int, timeout: float, wait: Callable[[float], bool] | None = None) -> None:
    """Send ``sig`` (and SIGCONT, for a stopped process), then SIGKILL after ``timeout`` seconds.

    ``wait(timeout)`` returns True once the process is gone; for a child, it must also reap it.
    """
    gone = wait or (lambda seconds: _poll(lambda: not pid_alive(pid), seconds))
    for each in (sig, signal.SIGCONT):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, each)
    if gone(timeout):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    gone(5)


def _poll(done: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def describe_exit(code: int | None) -> str:
    if code is None:
        return "running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


# -- pidfiles --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Leftover:
    name: str
    pid: int
    pidfile: Path
    #: How the child asks to be stopped (Postgres: SIGINT, its fast shutdown).
    stop_signal: int = signal.SIGTERM


def leftover(pidfile: Path) -> Leftover | None:
    """The process a pidfile names, if it is still running *and* is the very process recorded."""
    try:
        record = json.loads(pidfile.read_text())
        pid, argv, ticks = int(record["pid"]), list(record["argv"]), record.get("start_ticks")
        stop_signal = int(record.get("stop_signal", signal.SIGTERM))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not pid_alive(pid) or cmdline(pid) != argv:
        return None
    if ticks is not None and start_ticks(pid) != ticks:
        return None
    return Leftover(pidfile.stem, pid, pidfile, stop_signal)


def stop_leftover(found: Leftover, timeout: float = 10) -> None:
    terminate(found.pid, found.stop_signal, timeout)
    found.pidfile.unlink(missing_ok=True)


def _write_pidfile(path: Path, pid: int, argv: list[str], stop_signal: int) -> None:
    staging = path.with_suffix(".tmp")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({"pid": pid, "argv": argv, "start_ticks": start_ticks(pid), "stop_signal": int(stop_signal)},
                  handle)
    os.replace(staging, path)


# -- restart policy ------------------------------------------------------------------------------------


@dataclass
class Backoff:
    """Delay before restarting a crashed child: ``initial`` doubling up to ``cap``; a child that ran for
    ``stable`` seconds before it crashed starts again from ``initial``.

    >>> b = Backoff()
    >>> [b.next_delay(uptime=1) for _ in range(7)]
    [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    >>> b.next_delay(uptime=60)
    0.5
    """

    initial: float = 0.5
    cap: float = 10.0
    stable: float = 30.0
    failures: int = 0

    def next_delay(self, uptime: float) -> float:
        if uptime >= self.stable:
            self.failures = 0
        delay = min(self.initial * 2**self.failures, self.cap)
        self.failures += 1
        return delay


# -- one child -------------------------------------------------------------------------------------


@dataclass(eq=False)
class Service:
    """One child process of the stack. ``start``/``stop`` are safe from any thread."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: LogFile
    pidfile: Path
    #: How to ask it to stop (Postgres: SIGINT, its fast shutdown).
    stop_signal: int = signal.SIGTERM
    #: What it receives when the runner dies.
    death_signal: int = signal.SIGTERM
    stop_timeout: float = 10
    #: Run as this user (Postgres, when the runner is root).
    user: int | None = None
    group: int | None = None
    #: Called before every start, under the service's lock (clearing a stale socket, a foreign postmaster).
    before_start: Callable[[], None] | None = None
    process: subprocess.Popen | None = None
    #: False once stopped on purpose: the supervisor leaves it down.
    wanted: bool = False
    started_at: float = 0.0
    restarts: int = 0
    backoff: Backoff = field(default_factory=Backoff)
    #: When the supervisor will start it again (None: not scheduled).
    restart_at: float | None = None
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    _pumps: list[threading.Thread] = field(default_factory=list, repr=False)

    @property
    def log_path(self) -> Path:
        return self.log.path

    def start(self) -> None:
        with self._lock:
            if self.alive():
                return
            self.started_at = time.monotonic()
            self.restart_at = None
            if self.before_start is not None:
                self.before_start()
            process = subprocess.Popen(
                self.argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                process_group=0,
                user=self.user,
                group=self.group,
                extra_groups=[] if self.group is not None else None,
                preexec_fn=_death_signal(self.death_signal),
            )
            assert process.stdout is not None
            self._pumps = [t for t in self._pumps if t.is_alive()]
            self._pumps.append(self.log.pump(process.stdout, self.name))
            self.process = process
            self.wanted = True
            _write_pidfile(self.pidfile, process.pid, self.argv, self.stop_signal)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, sig: int | None = None, timeout: float | None = None) -> None:
        """Stop it on purpose (it stays down until :meth:`start`): ``sig``, then SIGKILL after ``timeout``."""
        with self._lock:
            self.wanted = False
            self.restart_at = None
            process = self.process
            if process is not None and process.poll() is None:
                terminate(process.pid, sig or self.stop_signal, self.stop_timeout if timeout is None else timeout,
                          wait=lambda seconds: _reaped(process, seconds))
            self.pidfile.unlink(missing_ok=True)

    def flush_log(self, timeout: float = 2) -> None:
        """Wait for the log pumps to copy what the stopped process wrote."""
        for pump in self._pumps:
            pump.join(timeout)


def _reaped(process: subprocess.Popen, timeout: float) -> bool:
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        return False
    return True


# -- the supervisor ------------------------------------------------------------------------------------


class Supervisor(threading.Thread):
    """Restarts any wanted child that exited, after its back-off; reports each exit and restart.

    :meth:`pause` stops restarts (the stack is stopping); :meth:`finish` ends the thread. A stack
    pauses, stops its children, then finishes: children this thread started get their death signal
    when it ends, so it must outlive them.
    """

    def __init__(self, services: list[Service], report: Callable[[str], None], interval: float = 0.1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(name="stack-supervisor", daemon=True)
        self._services = services
        self._report = report
        self._interval = interval
        self._clock = clock
        self._paused = threading.Event()
        self._finished = threading.Event()

    def run(self) -> None:
        while not self._finished.wait(self._interval):
            if self._paused.is_set():
                continue
            for service in self._services:
                try:
                    self._tend(service)
                except Exception as exc:  # a supervisor that dies would take its children with it
                    self._report(f"supervisor: {service.name}: {type(exc).__name__}: {exc}")

    def watch(self, service: Service) -> None:
        """Tend one more child from now on (list append: safe beside the loop that reads it)."""
        self._services.append(service)

    def pause(self) -> None:
        self._paused.set()

    def finish(self) -> None:
        self._paused.set()
        self._finished.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(5)

    def _tend(self, service: Service) -> None:
        if not service._lock.acquire(blocking=False):
            return  # being started or stopped by someone else right now
        try:
            if self._paused.is_set() or not service.wanted or service.alive():
                return
            now = self._clock()
            if service.restart_at is None:
                code = service.process.returncode if service.process is not None else None
                uptime = now - service.started_at
                delay = service.backoff.next_delay(uptime)
                service.restart_at = now + delay
                self._report(f"{service.name} stopped unexpectedly ({describe_exit(code)}) after {uptime:.1f} s; "
                             f"restarting in {delay:g} s (see {service.log_path})")
                return
            if now < service.restart_at:
                return
            service.restarts += 1
            try:
                service.start()
            except Exception as exc:
                service.process = None
                service.restart_at = None
                self._report(f"{service.name} could not be restarted: {type(exc).__name__}: {exc}")
                return
            assert service.process is not None
            self._report(f"{service.name} restarted (pid {service.process.pid}, restart {service.restarts})")
        finally:
            service._lock.release()
