"""structlog set-up shared by Keyward's processes: JSON lines on stderr, one event per line.

Invariant: logging never raises. Error paths log (a spool that cannot be written, a lost connection),
and the disk that just failed is often the one the log goes to, so a log call that raised would turn
a handled error into a dead task or a failed Check. A line that cannot be written is dropped and
counted in ``keyward_authz_log_write_failures_total``; the standard library's handlers drop theirs
through ``Handler.handleError``, silently (``logging.raiseExceptions = False``: no traceback to the
broken stream either).
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any, TextIO

import structlog

from authz.metrics import LOG_WRITE_FAILURES


class SafeLogger:
    """structlog's final logger: writes each rendered line to ``stream`` (stderr by default, looked up
    at write time), and counts instead of raising when it cannot."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._lock = threading.Lock()  # gRPC threads and the loop thread log at once: no interleaving

    def msg(self, message: str) -> None:
        stream = self._stream or sys.stderr
        try:
            with self._lock:
                stream.write(message + "\n")
                stream.flush()
        except (OSError, ValueError):  # ENOSPC, EFBIG, EPIPE; ValueError: the stream was closed
            LOG_WRITE_FAILURES.inc()

    log = debug = info = warn = warning = error = err = critical = exception = fatal = failure = msg


class SafeLoggerFactory:
    def __init__(self, stream: TextIO | None = None) -> None:
        self._logger = SafeLogger(stream)

    def __call__(self, *args: Any) -> SafeLogger:
        return self._logger


def configure(level: str = "info", *, stream: TextIO | None = None) -> None:
    logging.raiseExceptions = False
    logging.basicConfig(format="%(message)s", level=level.upper(), stream=stream or sys.stderr)
    # One INFO line per audit batch POST is noise; failures are logged by the shipper itself.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=SafeLoggerFactory(stream),
        cache_logger_on_first_use=True,
    )
