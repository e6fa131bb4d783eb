"""The gRPC process: ``envoy.service.auth.v3.Authorization`` plus standard gRPC health checking.

The servicer is deliberately thin: protobuf in (:mod:`authz.request`), a decision from memory
(:mod:`authz.pipeline`), protobuf out (:mod:`authz.response`). Until the first snapshot is loaded it
answers UNAVAILABLE, which Envoy (``failure_mode_allow: false``) turns into a 503: fail closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import httpx
import structlog
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc
from envoy.service.auth.v3 import external_auth_pb2_grpc
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import start_http_server

from authz import request as request_codec
from authz import response as response_codec
from authz.audit.records import decision_line, outcome_line
from authz.audit.shipper import Shipper, sync_forever
from authz.audit.spool import Spool
from authz.cache import TokenCache
from authz.config import AuthzSettings
from authz.logs import configure as configure_logging
from authz.metrics import AUDIT_SPOOL_FAILURES, DECISIONS
from authz.outcomes import DENIALS, Outcome
from authz.pipeline import Decision, Pipeline
from authz.store import ChangeListener
from authz.usage import LastUsedTracker

log = structlog.get_logger("authz")

SERVICE_NAME = "envoy.service.auth.v3.Authorization"


class AuthorizationServicer(external_auth_pb2_grpc.AuthorizationServicer):
    def __init__(self, pipeline: Pipeline, ready: asyncio.Event, spool: Spool) -> None:
        self._pipeline = pipeline
        self._ready = ready
        self._spool = spool
        self._counters = {outcome: DECISIONS.labels(outcome.value) for outcome in Outcome}

    async def Check(self, request: CheckRequest, context: grpc.aio.ServicerContext) -> CheckResponse:
        if not self._ready.is_set():
            await context.abort(grpc.StatusCode.UNAVAILABLE, "token snapshot not loaded yet")
        gateway_request = request_codec.parse(request)
        decision = self._pipeline.decide(gateway_request)
        status = None if decision.allowed else DENIALS[decision.outcome].http_status
        try:
            self._spool.append(decision_line(decision, gateway_request, time.time(), status))
        except OSError as exc:
            # No record, no request: the audit promise outranks availability.
            AUDIT_SPOOL_FAILURES.labels("decision").inc()
            log.error("audit.spool_failed", error=str(exc), request_id=gateway_request.request_id)
            decision = Decision(Outcome.AUDIT_UNAVAILABLE, decision.api, decision.record, decision.model)
        self._counters[decision.outcome].inc()
        return response_codec.build(decision, gateway_request.request_id)


class AccessLogReceiver(als_pb2_grpc.AccessLogServiceServicer):
    """Envoy's gRPC access log: one outcome line per finished request, spooled like decisions."""

    def __init__(self, spool: Spool) -> None:
        self._spool = spool

    async def StreamAccessLogs(self, request_iterator: Any, context: Any) -> als_pb2.StreamAccessLogsResponse:
        async for message in request_iterator:
            for entry in message.http_logs.log_entry:
                try:
                    self._spool.append(outcome_line(entry))
                except OSError as exc:
                    AUDIT_SPOOL_FAILURES.labels("outcome").inc()
                    log.error("audit.spool_failed", error=str(exc), request_id=entry.request.request_id)
        return als_pb2.StreamAccessLogsResponse()


async def serve(settings: AuthzSettings) -> None:
    cache = TokenCache()
    tracker = LastUsedTracker()
    listener = ChangeListener(
        dsn=settings.database_url,
        channel=settings.notify_channel,
        cache=cache,
        keepalive_seconds=settings.listener_keepalive_seconds,
    )
    pipeline = Pipeline(cache=cache, hash_key=settings.hash_key, usage=tracker)
    spool = Spool(Path(settings.audit_spool_dir))

    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(
        AuthorizationServicer(pipeline, listener.ready, spool), server
    )
    als_pb2_grpc.add_AccessLogServiceServicer_to_server(AccessLogReceiver(spool), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    server.add_insecure_port(settings.authz_address)
    await server.start()
    if settings.authz_metrics_port:
        start_http_server(settings.authz_metrics_port, addr="127.0.0.1")
    log.info("authz.listening", address=settings.authz_address)

    pool = await asyncpg.create_pool(
        settings.database_url,
        min_size=1,
        max_size=2,
        server_settings={"application_name": "keyward-authz-usage"},
    )
    client = httpx.AsyncClient(timeout=httpx.Timeout(30, connect=2))
    shipper = Shipper(spool, client=client, url=settings.ingest_url, token=settings.ingest_token,
                      batch_lines=settings.audit_batch_lines)
    tasks = [
        asyncio.create_task(listener.run(), name="listener"),
        asyncio.create_task(tracker.run(pool, settings.last_used_flush_seconds), name="last-used"),
        asyncio.create_task(shipper.run(), name="audit-shipper"),
        asyncio.create_task(sync_forever(spool, settings.audit_fsync_seconds), name="audit-fsync"),
    ]
    await listener.ready.wait()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("authz.ready", tokens=len(cache))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("authz.stopping")
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.stop(grace=2)
    for task in tasks:
        task.cancel()
    with contextlib.suppress(Exception):
        await tracker.flush(pool)  # do not lose the last few seconds of last_used_at
    await pool.close()
    await client.aclose()
    spool.close()


def main() -> None:
    # Past a file-size limit, writes must fail with EFBIG (and deny the request), not kill us.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    settings = AuthzSettings()  # type: ignore[call-arg]
    configure_logging(settings.log_level)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
