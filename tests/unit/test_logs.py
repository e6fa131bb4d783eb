"""Logging never raises: a log line that cannot be written is counted and dropped, never an exception.

The stream is a fake full disk (every write fails with ENOSPC), handed to the process's own
``authz.logs.configure``.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import structlog
from prometheus_client import REGISTRY

from authz.logs import SafeLogger
from tests.unit.faults import FullDisk, logging_to

REPO = Path(__file__).resolve().parents[2]


def failures() -> float:
    return REGISTRY.get_sample_value("keyward_authz_log_write_failures_total") or 0.0


def test_a_log_call_on_a_full_disk_returns_and_is_counted() -> None:
    disk = FullDisk()
    before = failures()
    with logging_to(disk):
        log = structlog.get_logger("authz.test")
        log.error("audit.spool_failed", error="[Errno 28] No space left on device")
        log.warning("listener.disconnected")
        try:
            raise OSError(errno.EFBIG, "File too large")
        except OSError:
            log.exception("background.task_failed")
    assert disk.refused == 3
    assert failures() == before + 3


def test_once_there_is_room_lines_are_written_again() -> None:
    disk = FullDisk()
    with logging_to(disk):
        log = structlog.get_logger("authz.test")
        log.error("lost")
        disk.full = False
        log.error("kept", n=1)
    [line] = disk.written
    assert json.loads(line) | {"time": None} == {"time": None, "level": "error", "process": "authz", "event": "kept",
                                                 "n": 1}


class Closed(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.close()


def test_a_closed_stream_is_counted_too() -> None:
    before = failures()
    SafeLogger(Closed()).error("nowhere to go")  # ValueError: I/O operation on closed file
    assert failures() == before + 1


@pytest.mark.parametrize("kind", [BrokenPipeError, PermissionError])
def test_any_os_error_of_the_stream_is_swallowed(kind: type[OSError]) -> None:
    class Broken(io.StringIO):
        def write(self, text: str) -> int:
            raise kind("cannot write")

    SafeLogger(Broken()).info("x")


def test_the_standard_library_handlers_do_not_raise_or_print_either(capsys: pytest.CaptureFixture[str]) -> None:
    with logging_to(FullDisk()):
        assert logging.raiseExceptions is False
        handler = logging.StreamHandler(FullDisk())
        handler.handle(logging.LogRecord("httpx", logging.WARNING, __file__, 1, "no room", None, None))
    assert capsys.readouterr().err == ""  # no "--- Logging error ---" traceback on stderr


# The child caps its own file size with RLIMIT_FSIZE and ignores SIGXFSZ, as the authz process does,
# with stdout and stderr on one file, as the stack runs it: past the limit the kernel refuses the
# log's writes with EFBIG, for real. It reports on a pipe, which no file-size limit applies to.
_PAST_THE_LIMIT = textwrap.dedent(
    """
    import json, os, resource, signal, sys
    import structlog
    from prometheus_client import REGISTRY
    from authz.logs import configure

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    configure("info")
    log = structlog.get_logger("authz.test")
    log.info("before.the.limit")
    size = os.fstat(2).st_size
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 10, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    for n in range(50):
        log.error("audit.spool_failed", n=n, error="[Errno 27] File too large")
    failures = REGISTRY.get_sample_value("keyward_authz_log_write_failures_total")
    os.write(int(sys.argv[1]), json.dumps({"failures": failures, "alive": True}).encode())
    """
)


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE is Linux behaviour here")
def test_a_real_file_size_limit_on_the_log_does_not_stop_the_caller(tmp_path: Path) -> None:
    report, report_writer = os.pipe()
    try:
        with (tmp_path / "authz.log").open("wb") as log_file:
            child = subprocess.run([sys.executable, "-c", _PAST_THE_LIMIT, str(report_writer)], cwd=REPO,
                                   stdout=log_file, stderr=subprocess.STDOUT, pass_fds=(report_writer,),
                                   timeout=60, check=False)
        os.close(report_writer)
        with os.fdopen(report, "rb") as reader:
            reported = reader.read()
    finally:
        with contextlib.suppress(OSError):
            os.close(report_writer)
    logged = (tmp_path / "authz.log").read_text()
    assert child.returncode == 0, logged
    outcome = json.loads(reported)
    assert outcome["alive"], logged
    # Each refused write is counted (a line cut short by the limit may leave its tail buffered, and
    # that tail is what the next write refuses, so the count is close to, not exactly, 50).
    assert 45 <= outcome["failures"] <= 50, outcome
    assert json.loads(logged.splitlines()[0])["event"] == "before.the.limit"
