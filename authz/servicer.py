"""``envoy.service.auth.v3.Authorization``: the thin gRPC servicer Envoy's ext_authz filter calls.

A Check only converts and delegates: protobuf in (:mod:`authz.request`), a decision from memory
(:mod:`authz.pipeline`), the decision line on the audit spool (:mod:`authz.audit.emitter`, which may
turn it into ``audit_unavailable``), protobuf out (:mod:`authz.response`). Until the first snapshot is
loaded it answers UNAVAILABLE, which Envoy (``failure_mode_allow: false``) turns into a 503: fail
closed.

Checks run on the worker threads of the synchronous ``grpc.server`` (their own small pool, see
:meth:`AuthorizationServicer.add_to`), several at once: they only read the token cache, and what they
write (the spool, the usage tracker, metrics) takes its own lock.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse

from authz import request as request_codec
from authz import response as response_codec
from authz.audit.emitter import AuditEmitter
from authz.audit.outcome_log import InFlight
from authz.metrics import CHECK_SECONDS, DECISIONS
from authz.outcomes import Outcome
from authz.pipeline import Decision, Pipeline
from authz.tracing import Tracing

SERVICE_NAME = "envoy.service.auth.v3.Authorization"


class _InPool:
    """A method handler's behaviour that grpc runs on its own thread pool (``experimental_thread_pool``)."""

    def __init__(self, behavior: Callable[..., Any], pool: futures.ThreadPoolExecutor) -> None:
        self._behavior = behavior
        self.experimental_thread_pool = pool

    def __call__(self, request: Any, context: Any) -> Any:
        return self._behavior(request, context)


class AuthorizationServicer:
    """``Check``: the request → decision → audit line → response, all in memory and synchronous."""

    def __init__(self, pipeline: Pipeline, ready: asyncio.Event, audit: AuditEmitter, in_flight: InFlight,
                 tracing: Tracing | None = None) -> None:
        self._pipeline = pipeline
        #: OpenTelemetry (:mod:`authz.tracing`); ``None``: off, and a Check does nothing for it.
        self._tracing = tracing
        #: Requests being decided: Envoy's outcome line for one waits until its decision is spooled.
        self._in_flight = in_flight
        #: Only ``is_set()`` is read here (a plain attribute read), from worker threads.
        self._ready = ready
        self._audit = audit
        self._counters = {outcome: DECISIONS.labels(outcome.value) for outcome in Outcome}
        self._durations = {outcome: CHECK_SECONDS.labels(outcome.value) for outcome in Outcome}

    def check(self, request: CheckRequest, context: grpc.ServicerContext | None) -> CheckResponse:
        """What the server calls, on a worker thread."""
        started = time.perf_counter()
        if not self._ready.is_set():
            assert context is not None
            context.abort(grpc.StatusCode.UNAVAILABLE, "token snapshot not loaded yet")
        gateway_request = request_codec.parse(request)
        traced = self._tracing.begin(context) if self._tracing is not None else None
        self._in_flight.begin(gateway_request.request_id)
        decision: Decision | None = None
        try:
            decision = self._audit.decision(self._pipeline.decide(gateway_request), gateway_request)
        finally:
            self._in_flight.end(gateway_request.request_id)
            if traced is not None:
                traced.end(decision, gateway_request)
        self._counters[decision.outcome].inc()
        response = response_codec.build(decision, gateway_request.request_id, self._pipeline.upstreams)
        self._durations[decision.outcome].observe(time.perf_counter() - started)
        return response

    def add_to(self, server: grpc.Server, pool: futures.ThreadPoolExecutor) -> None:
        """Register ``Check`` on ``server``, to run on ``pool`` rather than the server's own threads."""
        handlers = {"Check": grpc.unary_unary_rpc_method_handler(
            _InPool(self.check, pool),
            request_deserializer=CheckRequest.FromString,
            response_serializer=CheckResponse.SerializeToString,
        )}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
        # Registered methods are matched by the C core, without a lookup by name per call.
        server.add_registered_method_handlers(SERVICE_NAME, handlers)
