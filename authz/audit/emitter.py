"""Put every decision and every outcome on the audit spool, and own the rule "no record, no request".

:meth:`AuditEmitter.decision` runs inside every Check, before the answer leaves: it spools the
decision line, and when the spool refuses it (a full disk, a file-size limit: any :class:`OSError`)
it hands back an ``audit_unavailable`` decision instead, so the request is refused with a 503 rather
than served unrecorded. The audit promise outranks availability.

:meth:`AuditEmitter.outcomes` spools the outcome lines of Envoy's access-log entries. Those requests
are already answered, so a line that cannot be built or written is counted and logged, and costs only
itself: never the other lines of its message, never the access-log stream.

Logging on these paths cannot raise (:mod:`authz.logs`), even when the full disk that refused the
line is the one the log goes to, so the answer stays ``audit_unavailable`` rather than an error.

Both run on gRPC threads (Checks on the Check pool, access-log streams on the stream pool); the spool
takes its own lock.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import structlog
from envoy.data.accesslog.v3.accesslog_pb2 import HTTPAccessLogEntry

from authz.audit.records import decision_line, outcome_line
from authz.metrics import AUDIT_SPOOL_FAILURES
from authz.outcomes import DENIALS, Outcome
from authz.pipeline import Decision
from authz.request import GatewayRequest

log = structlog.get_logger("authz.audit")


class AuditSpool(Protocol):
    """Where lines go (:class:`authz.audit.spool.Spool`): each call writes everything or raises :class:`OSError`."""

    def append(self, record: dict[str, Any]) -> None: ...

    def append_many(self, records: Iterable[dict[str, Any]]) -> None: ...


class AuditEmitter:
    def __init__(self, spool: AuditSpool, *, clock: Callable[[], float] = time.time) -> None:
        self._spool = spool
        self._clock = clock

    def decision(self, decision: Decision, request: GatewayRequest) -> Decision:
        """Spool the decision line; returns the decision to answer with: ``decision`` itself once it
        is recorded, an ``audit_unavailable`` refusal when it could not be."""
        status = None if decision.allowed else DENIALS[decision.outcome].http_status
        try:
            self._spool.append(decision_line(decision, request, self._clock(), status))
        except OSError as exc:
            AUDIT_SPOOL_FAILURES.labels("decision").inc()
            log.error("audit.spool_failed", error=str(exc), request_id=request.request_id)
            return Decision(Outcome.AUDIT_UNAVAILABLE, decision.api, decision.record, decision.model)
        return decision

    def outcomes(self, entries: Sequence[HTTPAccessLogEntry]) -> None:
        """Spool one outcome line per access-log entry, all in one write when possible."""
        lines = []
        for entry in entries:
            try:
                lines.append(outcome_line(entry))
            except Exception as exc:  # an entry no line can be built from: a bug, but only its own line
                AUDIT_SPOOL_FAILURES.labels("outcome").inc()
                log.error("audit.outcome_unreadable", error=f"{type(exc).__name__}: {exc}",
                          request_id=entry.request.request_id)
        try:
            self._spool.append_many(lines)
        except OSError:
            # The batch failed as a whole (nothing of it was written): try line by line, so one
            # failure costs only the lines that really could not be written.
            self._one_by_one(lines)

    def _one_by_one(self, lines: Iterable[dict[str, Any]]) -> None:
        for line in lines:
            try:
                self._spool.append(line)
            except OSError as exc:
                AUDIT_SPOOL_FAILURES.labels("outcome").inc()
                log.error("audit.spool_failed", error=str(exc), request_id=line["request_id"])
