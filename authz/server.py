"""The gRPC process: ``envoy.service.auth.v3.Authorization`` plus standard gRPC health checking.

The servicer is deliberately thin: protobuf in (:mod:`authz.request`), a decision from memory
(:mod:`authz.pipeline`), protobuf out (:mod:`authz.response`). Until the first snapshot is loaded it
answers UNAVAILABLE, which Envoy (``failure_mode_allow: false``) turns into a 503: fail closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

import asyncpg
import grpc
import structlog
from envoy.service.auth.v3 import external_auth_pb2_grpc
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import start_http_server

from authz import request as request_codec
from authz import response as response_codec
from authz.cache import TokenCache
from authz.config import AuthzSettings
from authz.logs import configure as configure_logging
from authz.metrics import DECISIONS
from authz.outcomes import Outcome
from authz.pipeline import Pipeline
from authz.store import ChangeListener
from authz.usage import LastUsedTracker

log = structlog.get_logger("authz")

SERVICE_NAME = "envoy.service.auth.v3.Authorization"


class AuthorizationServicer(external_auth_pb2_grpc.AuthorizationServicer):
    def __init__(self, pipeline: Pipeline, ready: asyncio.Event) -> None:
        self._pipeline = pipeline
        self._ready = ready
        self._counters = {outcome: DECISIONS.labels(outcome.value) for outcome in Outcome}

    async def Check(self, request: CheckRequest, context: grpc.aio.ServicerContext) -> CheckResponse:
        if not self._ready.is_set():
            await context.abort(grpc.StatusCode.UNAVAILABLE, "token snapshot not loaded yet")
        gateway_request = request_codec.parse(request)
        decision = self._pipeline.decide(gateway_request)
        self._counters[decision.outcome].inc()
        return response_codec.build(decision, gateway_request.request_id)


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

    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(AuthorizationServicer(pipeline, listener.ready), server)
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
    tasks = [
        asyncio.create_task(listener.run(), name="listener"),
        asyncio.create_task(tracker.run(pool, settings.last_used_flush_seconds), name="last-used"),
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


def main() -> None:
    settings = AuthzSettings()  # type: ignore[call-arg]
    configure_logging(settings.log_level)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
