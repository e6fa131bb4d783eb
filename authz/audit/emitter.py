"""Put every decision on the audit spool, and own the rule "no record, no request".

:meth:`AuditEmitter.decision` runs inside every Check, before the answer leaves: it spools the
decision line, and when the spool refuses it (a full disk, a file-size limit: any :class:`OSError`)
it hands back an ``audit_unavailable`` decision instead, so the request is refused with a 503 rather
than served unrecorded. The audit promise outranks availability.

A Check that runs after Envoy has already answered without it (authz stalled past Envoy's timeout)
records nothing: Envoy's own outcome line is that request's record (:mod:`authz.audit.outcome_log`),
and a decision line would claim an access that never happened.

Logging on this path cannot raise (:mod:`authz.logs`), even when the full disk that refused the line
is the one the log goes to, so the answer stays ``audit_unavailable`` rather than an error. It runs on
the Check threads; the spool takes its own lock.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import structlog

from authz.audit.records import decision_line
from authz.metrics import AUDIT_SPOOL_FAILURES, LATE_CHECKS
from authz.outcomes import DENIALS, Outcome
from authz.pipeline import Decision
from authz.request import GatewayRequest

log = structlog.get_logger("authz.audit")


class AuditSpool(Protocol):
    """Where lines go (:class:`authz.audit.spool.Spool`): each call writes everything or raises :class:`OSError`."""

    def append(self, record: dict[str, Any]) -> None: ...

    def append_many(self, records: Iterable[dict[str, Any]]) -> None: ...


class AuditEmitter:
    def __init__(self, spool: AuditSpool, *, clock: Callable[[], float] = time.time,
                 late: Callable[[float | None], bool] | None = None) -> None:
        self._spool = spool
        self._clock = clock
        #: Whether Envoy has answered a request that started then without waiting for this Check.
        self._late = late

    def decision(self, decision: Decision, request: GatewayRequest) -> Decision:
        """Spool the decision line; returns the decision to answer with: ``decision`` itself once it
        is recorded (or once it is moot: Envoy answered already), an ``audit_unavailable`` refusal when
        it could not be recorded."""
        if self._late is not None and self._late(request.started):
            LATE_CHECKS.inc()
            return decision
        status = None if decision.allowed else 200 if decision.outcome is Outcome.ANSWERED \
            else DENIALS[decision.outcome].http_status
        try:
            self._spool.append(decision_line(decision, request, self._clock(), status))
        except OSError as exc:
            AUDIT_SPOOL_FAILURES.labels("decision").inc()
            log.error("audit.spool_failed", error=str(exc), request_id=request.request_id)
            return Decision(Outcome.AUDIT_UNAVAILABLE, decision.api, decision.record, decision.model)
        return decision
