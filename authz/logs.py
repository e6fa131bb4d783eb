"""structlog set-up shared by Keyward's processes: JSON lines on stderr, one event per line, one schema.

The schema (every process, Envoy and the stack runner included, follows it): each line is one JSON
object that starts with

* ``time``: RFC 3339, UTC (``2025-06-01T12:00:00.123456Z``);
* ``level``: ``debug``, ``info``, ``warning``, ``error`` or ``critical``;
* ``process``: ``authz``, ``controlplane``, ``envoy``, ``mock-provider``, ``stack`` or ``postgres``;
* ``event``: what happened (``listener.disconnected``; for a foreign library's line, its message);
* ``request_id``: when the line belongs to a request (bound with structlog's contextvars);
* ``trace_id`` and ``span_id``: when an OpenTelemetry span is active (tracing on);

followed by the event's own fields. The standard library's loggers (uvicorn, asyncio, gRPC, warnings)
are rendered the same way, with a ``logger`` field naming their logger.

No credential reaches a line: every string field is scrubbed of Keyward credentials (``kw_pat_…``),
bearer tokens and provider-shaped keys (``sk-…``) before it is rendered, so a line carries none even
where no redactor reads the process's output (a container's stderr). The local stack's runner redacts
every line again, with the values of its own secrets too (``controlplane/stack/redact.py``).

Invariant: logging never raises. Error paths log (a spool that cannot be written, a lost connection),
and the disk that just failed is often the one the log goes to, so a log call that raised would turn
a handled error into a dead task or a failed Check. A line that cannot be written is dropped and
counted in ``keyward_authz_log_write_failures_total``; an event that cannot be rendered (a field whose
``repr`` raises) is logged as ``log.unrenderable`` with its event name; the standard library's handlers
drop theirs through ``Handler.handleError``, silently (``logging.raiseExceptions = False``: no
traceback to the broken stream either).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
from collections.abc import MutableMapping, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from authz.metrics import LOG_WRITE_FAILURES

__all__ = ["SCHEMA", "SafeLogger", "SafeLoggerFactory", "configure", "json_line", "scrub", "utc_now"]

#: The fields every line starts with, in this order; ``request_id``, ``trace_id`` and ``span_id`` follow
#: when there is one.
SCHEMA = ("time", "level", "process", "event")
_OPTIONAL = ("request_id", "trace_id", "span_id")

#: Keyward credentials (controlplane/services/credentials.py) and provider-shaped keys (OpenAI ``sk-``,
#: ``sk-proj-``; Anthropic ``sk-ant-``).
_CREDENTIAL = re.compile(r"kw_(?:pat|api|scim|sess|cli|admin|link)_[A-Za-z0-9_\-]+|(?<![\w-])sk-[A-Za-z0-9_\-]{8,}")
_BEARER = re.compile(r"(?i)(\bbearer[ \t]+)(?!\[REDACTED\])[^\s'\",;]+")
REDACTED = "[REDACTED]"
_LEVELS = {"warn": "warning", "exception": "error", "fatal": "critical", "err": "error", "msg": "info"}


def utc_now() -> str:
    """The current time as the schema writes it (RFC 3339, UTC, microseconds)."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def scrub(text: str) -> str:
    """``text`` without Keyward credentials, bearer tokens or provider-shaped keys."""
    if "kw_" in text or "sk-" in text:
        text = _CREDENTIAL.sub(REDACTED, text)
    if "earer" in text or "EARER" in text:
        text = _BEARER.sub(r"\1" + REDACTED, text)
    return text


def _scrubbed(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if depth < 4 and isinstance(value, dict):
        return {scrub(str(k)): _scrubbed(v, depth + 1) for k, v in value.items()}
    if depth < 4 and isinstance(value, list | tuple | set | frozenset):
        return [_scrubbed(v, depth + 1) for v in value]
    return value


def json_line(process: str, event: str, *, level: str = "info", **fields: Any) -> str:
    """One line of the schema, for a writer that is not a structlog logger (the stack runner's own log,
    the Postgres lines it reshapes). Never raises: a field that cannot be rendered is written as text."""
    record = {"time": fields.pop("time", None) or utc_now(), "level": level, "process": process,
              "event": scrub(event), **{k: _scrubbed(v) for k, v in fields.items()}}
    try:
        return json.dumps(record, default=_fallback)
    except Exception:  # a circular structure, a repr that raises
        return json.dumps({k: record[k] for k in SCHEMA})


def _fallback(value: Any) -> str:
    try:
        return scrub(repr(value))
    except Exception:
        return f"<unrepresentable {type(value).__name__}>"


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


class _StdlibHandler(logging.Handler):
    """The standard library's records, rendered in the schema and written by the same :class:`SafeLogger`
    (one lock, one failure count)."""

    def __init__(self, sink: SafeLogger, formatter: logging.Formatter, level: int) -> None:
        super().__init__(level)
        self.sink = sink
        self.setFormatter(formatter)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # handleError is silent (raiseExceptions is False)
            self.handleError(record)
            return
        self.sink.msg(line)


def _level(_: WrappedLogger, method: str, event: EventDict) -> EventDict:
    level = event.get("level") or method
    event["level"] = _LEVELS.get(level, level)
    return event


def _process(name: str) -> Processor:
    def add(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
        event["process"] = name
        return event

    return add


def _trace_context() -> Processor | None:
    """``trace_id`` and ``span_id`` of the active OpenTelemetry span; None when OpenTelemetry is not
    installed (logging works without tracing). Without a configured tracer the current span is the
    invalid one, and nothing is added."""
    try:
        from opentelemetry import trace
    except ImportError:
        return None

    def add(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
        if "trace_id" not in event:
            context = trace.get_current_span().get_span_context()
            if context.is_valid:
                event["trace_id"] = format(context.trace_id, "032x")
                event["span_id"] = format(context.span_id, "016x")
        return event

    return add


def _foreign(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """A standard-library record: its logger's name; its arguments are already in its message."""
    record = event.get("_record")
    event.pop("positional_args", None)
    if record is not None and "logger" not in event:
        event["logger"] = record.name
    return event


def _ordered(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    head = {key: event.pop(key, None) for key in SCHEMA}
    head.update({key: event.pop(key) for key in _OPTIONAL if event.get(key) is not None})
    head.update({scrub(str(key)): _scrubbed(value) for key, value in event.items()})
    head["event"] = scrub(str(head["event"]))
    return head


class _Render:
    """The processors from the level on, then JSON; whatever one of them raises, a line is still made."""

    def __init__(self, processors: Sequence[Processor], process: str) -> None:
        self._processors = processors
        self._renderer = structlog.processors.JSONRenderer(default=_fallback)
        self._process = process

    def __call__(self, logger: WrappedLogger, method: str, event: EventDict) -> str:
        try:
            for processor in self._processors:
                event = processor(logger, method, event)  # type: ignore[assignment]
            return self._renderer(logger, method, event)  # type: ignore[return-value]
        except Exception:  # logging never raises
            name = event.get("event") if isinstance(event, MutableMapping) else None
            return json_line(self._process, "log.unrenderable", level="error",
                             original_event=_fallback(name) if not isinstance(name, str) else name)


def _render(process: str) -> _Render:
    trace = _trace_context()
    return _Render([
        _level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="time"),
        _process(process),
        *([trace] if trace else []),
        structlog.processors.format_exc_info,
        _ordered,
    ], process)


def configure(level: str = "info", *, stream: TextIO | None = None, process: str = "authz",
              foreign: Sequence[Processor] = ()) -> None:
    """Log in the schema as ``process``, to ``stream`` (stderr). ``foreign``: processors for the standard
    library's records only, run first (the control plane's turns uvicorn's access lines into fields).

    On stderr (a process's own log, ``stream`` unset), Python's warnings and uncaught exceptions are
    logged in the schema too, so nothing the process prints is plain text."""
    logging.raiseExceptions = False
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    factory = SafeLoggerFactory(stream)
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*foreign, _foreign, structlog.contextvars.merge_contextvars],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, _render(process)],
        pass_foreign_args=True,
    )
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if not isinstance(h, _StdlibHandler)]
    root.addHandler(_StdlibHandler(factory(), formatter, numeric))
    root.setLevel(numeric)
    # One INFO line per audit batch POST is noise; failures are logged by the shipper itself.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, _render(process)],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    if stream is None:
        _route_the_rest()


def _route_the_rest() -> None:
    logging.captureWarnings(True)  # a warning is a line of the schema (logger py.warnings), not plain text
    crashed = logging.getLogger("process")

    def uncaught(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        if issubclass(kind, KeyboardInterrupt):
            sys.__excepthook__(kind, value, tb)
            return
        crashed.critical("process.uncaught_exception", exc_info=(kind, value, tb))

    def uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit or args.exc_value is None:
            return
        crashed.critical("thread.uncaught_exception", exc_info=(args.exc_type, args.exc_value, args.exc_traceback))

    sys.excepthook = uncaught
    threading.excepthook = uncaught_in_thread

