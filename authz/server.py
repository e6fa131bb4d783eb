"""The gRPC process: ``envoy.service.auth.v3.Authorization`` plus standard gRPC health checking.

The servicer is deliberately thin: protobuf in (:mod:`authz.request`), a decision from memory
(:mod:`authz.pipeline`), protobuf out (:mod:`authz.response`). Until the first snapshot is loaded it
answers UNAVAILABLE, which Envoy (``failure_mode_allow: false``) turns into a 503: fail closed.

Threads: gRPC is served by the *synchronous* ``grpc.server`` from a small thread pool, because a
Check costs far less CPU there than in ``grpc.aio`` (see ``bench/RESULTS.md``). Everything that is
asyncio (the LISTEN/NOTIFY listener that owns the token cache, the batched ``last_used_at`` writer,
the audit shipper and the spool's fsync timer) runs on one event loop in a background thread
(:class:`Background`). The main thread only starts things, waits for a signal and stops them in order.
Shared state is safe for this: the cache is mutated only on the loop thread, one dict operation at a
time, and read by Checks; :class:`~authz.audit.spool.Spool` and
:class:`~authz.usage.LastUsedTracker` take a lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import httpx
import structlog
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc
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

#: Threads for long-lived streams (Envoy's access-log streams, one per Envoy worker; health Watch)
#: and anything else. Each open stream holds one for its whole life, so they get their own pool,
#: created on demand, and can never starve Checks.
STREAM_THREADS = 256
#: Seconds in-flight RPCs get to finish on SIGTERM before they are cancelled.
SHUTDOWN_GRACE_SECONDS = 2.0


class _InPool:
    """A method handler's behaviour that grpc runs on its own thread pool (``experimental_thread_pool``)."""

    def __init__(self, behavior: Callable[..., Any], pool: futures.ThreadPoolExecutor) -> None:
        self._behavior = behavior
        self.experimental_thread_pool = pool

    def __call__(self, request: Any, context: Any) -> Any:
        return self._behavior(request, context)


class AuthorizationServicer:
    """``Check``: the request → decision → audit line → response, all in memory and synchronous."""

    def __init__(self, pipeline: Pipeline, ready: asyncio.Event, spool: Spool) -> None:
        self._pipeline = pipeline
        #: Only ``is_set()`` is read here (a plain attribute read), from worker threads.
        self._ready = ready
        self._spool = spool
        self._counters = {outcome: DECISIONS.labels(outcome.value) for outcome in Outcome}

    def check(self, request: CheckRequest, context: grpc.ServicerContext | None) -> CheckResponse:
        """What the server calls, on a worker thread."""
        if not self._ready.is_set():
            assert context is not None
            context.abort(grpc.StatusCode.UNAVAILABLE, "token snapshot not loaded yet")
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

    async def Check(self, request: CheckRequest, context: grpc.ServicerContext | None) -> CheckResponse:
        """The ``grpc.aio`` shape of :meth:`check` (kept for callers that await it, e.g. tests)."""
        return self.check(request, context)

    def add_to(self, server: grpc.Server, pool: futures.ThreadPoolExecutor) -> None:
        handlers = {"Check": grpc.unary_unary_rpc_method_handler(
            _InPool(self.check, pool),
            request_deserializer=CheckRequest.FromString,
            response_serializer=CheckResponse.SerializeToString,
        )}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
        # Registered methods are matched by the C core, without a lookup by name per call.
        server.add_registered_method_handlers(SERVICE_NAME, handlers)


class AccessLogReceiver(als_pb2_grpc.AccessLogServiceServicer):
    """Envoy's gRPC access log: one outcome line per finished request, spooled like decisions.

    Envoy batches entries into messages; each message's lines go to the spool in one write.
    """

    def __init__(self, spool: Spool) -> None:
        self._spool = spool

    def StreamAccessLogs(self, request_iterator: Iterator[als_pb2.StreamAccessLogsMessage],
                         context: Any) -> als_pb2.StreamAccessLogsResponse:
        for message in request_iterator:
            entries = message.http_logs.log_entry
            try:
                self._spool.append_many([outcome_line(entry) for entry in entries])
            except OSError:
                # The batch failed as a whole (nothing of it was written): try line by line, so one
                # failure costs only the lines that really could not be written.
                self._one_by_one(entries)
        return als_pb2.StreamAccessLogsResponse()

    def _one_by_one(self, entries: Any) -> None:
        for entry in entries:
            try:
                self._spool.append(outcome_line(entry))
            except OSError as exc:
                AUDIT_SPOOL_FAILURES.labels("outcome").inc()
                log.error("audit.spool_failed", error=str(exc), request_id=entry.request.request_id)


class Background:
    """An asyncio event loop in a daemon thread, for the work that is asyncio by nature."""

    def __init__(self) -> None:
        try:
            import uvloop  # optional: a faster loop for asyncpg and httpx when present

            self.loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        except ImportError:
            self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="authz-loop", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def start(self) -> None:
        self._thread.start()

    def call(self, coroutine: Coroutine[Any, Any, Any], timeout: float | None = None) -> Any:
        """Run ``coroutine`` on the loop and wait for its result from the calling thread."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self.loop.close()


def build_server(pipeline: Pipeline, ready: asyncio.Event, spool: Spool, check_threads: int
                 ) -> tuple[grpc.Server, health.HealthServicer]:
    streams = futures.ThreadPoolExecutor(max_workers=STREAM_THREADS, thread_name_prefix="authz-stream")
    checks = futures.ThreadPoolExecutor(max_workers=check_threads, thread_name_prefix="authz-check")
    server = grpc.server(streams, options=[("grpc.so_reuseport", 0)])
    AuthorizationServicer(pipeline, ready, spool).add_to(server, checks)
    als_pb2_grpc.add_AccessLogServiceServicer_to_server(AccessLogReceiver(spool), server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True, experimental_thread_pool=streams)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    return server, health_servicer


def _set_health(health_servicer: health.HealthServicer, status: int) -> None:
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, status)


async def _start_background(settings: AuthzSettings, listener: ChangeListener, tracker: LastUsedTracker,
                            spool: Spool, batch_bytes: int
                            ) -> tuple[list[asyncio.Task], asyncpg.Pool, httpx.AsyncClient]:
    pool = await asyncpg.create_pool(
        settings.database_url,
        min_size=1,
        max_size=2,
        server_settings={"application_name": "keyward-authz-usage"},
    )
    client = httpx.AsyncClient(timeout=httpx.Timeout(30, connect=2))
    shipper = Shipper(spool, client=client, url=settings.ingest_url, token=settings.ingest_token,
                      batch_lines=settings.audit_batch_lines,
                      batch_bytes=batch_bytes)
    tasks = [
        asyncio.create_task(listener.run(), name="listener"),
        asyncio.create_task(tracker.run(pool, settings.last_used_flush_seconds), name="last-used"),
        asyncio.create_task(shipper.run(), name="audit-shipper"),
        asyncio.create_task(sync_forever(spool, settings.audit_fsync_seconds), name="audit-fsync"),
    ]
    return tasks, pool, client


async def _stop_background(tasks: list[asyncio.Task], pool: asyncpg.Pool, client: httpx.AsyncClient, *,
                           tracker: LastUsedTracker) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    with contextlib.suppress(Exception):
        await tracker.flush(pool)  # do not lose the last few seconds of last_used_at
    with contextlib.suppress(Exception):
        await asyncio.wait_for(pool.close(), timeout=5)
    await client.aclose()


def serve(settings: AuthzSettings, stop: threading.Event) -> None:
    """Run until ``stop`` is set (SIGTERM or SIGINT in :func:`main`), then shut down in order."""
    check_threads = settings.authz_check_threads
    batch_bytes = settings.audit_batch_bytes
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

    server, health_servicer = build_server(pipeline, listener.ready, spool, check_threads)
    _set_health(health_servicer, health_pb2.HealthCheckResponse.NOT_SERVING)
    server.add_insecure_port(settings.authz_address)
    server.start()
    background = Background()
    started: tuple[list[asyncio.Task], asyncpg.Pool, httpx.AsyncClient] | None = None
    try:
        if settings.authz_metrics_port:
            start_http_server(settings.authz_metrics_port, addr="127.0.0.1")
        log.info("authz.listening", address=settings.authz_address)
        background.start()
        started = background.call(_start_background(settings, listener, tracker, spool, batch_bytes))
        # Serve health as soon as the first snapshot is in: wait for it on the loop, but keep an eye
        # on ``stop`` so a SIGTERM during a slow first load still shuts down cleanly.
        ready = asyncio.run_coroutine_threadsafe(listener.ready.wait(), background.loop)
        while not stop.is_set():
            with contextlib.suppress(futures.TimeoutError):
                ready.result(timeout=0.05)
                _set_health(health_servicer, health_pb2.HealthCheckResponse.SERVING)
                log.info("authz.ready", tokens=len(cache))
                break
        while not stop.wait(0.5):
            pass
        ready.cancel()
        log.info("authz.stopping")
    finally:
        # Also on a failed start: open streams hold pool threads, and the interpreter would wait
        # for those at exit, so the server must always be stopped.
        _set_health(health_servicer, health_pb2.HealthCheckResponse.NOT_SERVING)
        server.stop(grace=SHUTDOWN_GRACE_SECONDS).wait()
        try:
            if started is not None:
                background.call(_stop_background(*started, tracker=tracker), timeout=15)
        finally:
            background.stop()
            spool.close()
    log.info("authz.stopped")


def main() -> None:
    # Past a file-size limit, writes must fail with EFBIG (and deny the request), not kill us.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    settings = AuthzSettings()  # type: ignore[call-arg]
    configure_logging(settings.log_level)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda _signum, _frame: stop.set())
    serve(settings, stop)


if __name__ == "__main__":
    main()
