"""What ``/proc`` tells about CPU and memory: per process, and for the whole machine."""

from __future__ import annotations

import os
from dataclasses import dataclass

_TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3… of ``/proc/<pid>/stat`` (index 0 is the state), or None when the process has gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            stat = handle.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may hold spaces; the fields after it start at the last ')'.
    return stat[stat.rindex(")") + 2 :].split()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds; 0 when it has gone."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / _TICK if fields else 0.0


def tree_cpu_seconds(root: int) -> float:
    """CPU of a process and all its descendants, plus what its exited, reaped children used (cutime).

    For a forking server such as Postgres: the postmaster, every live backend, and the backends that
    ended (their time is in the postmaster's cutime + cstime once it has reaped them).
    """
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields:
                parents[int(entry.name)] = int(fields[1])
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier.extend(children)
    total = sum(cpu_seconds(pid) for pid in tree)
    fields = _stat_fields(root)
    if fields:
        total += (int(fields[13]) + int(fields[14])) / _TICK
    return total


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in KiB."""
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    return values


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent not idle since boot (user+nice+system+irq+softirq+steal)."""
    with open("/proc/stat") as handle:
        fields = [int(v) for v in handle.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / _TICK


@dataclass
class CpuWindow:
    """CPU used by named processes (or process trees), and by the whole machine, over one interval."""

    pids: dict[str, int]
    #: Names in ``pids`` to measure with :func:`tree_cpu_seconds`.
    trees: frozenset[str] = frozenset()
    _start: dict[str, float] | None = None
    _machine_start: float = 0.0
    used: dict[str, float] | None = None
    machine: float = 0.0

    def _read(self) -> dict[str, float]:
        return {name: (tree_cpu_seconds if name in self.trees else cpu_seconds)(pid)
                for name, pid in self.pids.items()}

    def __enter__(self) -> CpuWindow:
        self._start = self._read()
        self._machine_start = machine_busy_seconds()
        return self

    def __exit__(self, *_exc: object) -> None:
        assert self._start is not None
        self.machine = machine_busy_seconds() - self._machine_start
        self.used = {name: value - self._start[name] for name, value in self._read().items()}


def nproc() -> int:
    return len(os.sched_getaffinity(0))


def cpu_model() -> str:
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())
