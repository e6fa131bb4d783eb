"""The authz process: settings, the gRPC server, the background tasks, signals, in that order.

One server carries ``envoy.service.auth.v3.Authorization`` (:mod:`authz.servicer`) and standard gRPC
health checking under three names (Envoy's outcome of each request reaches authz through a file,
:mod:`authz.audit.outcome_log`, not through this server, so it does not depend on authz being up):

* ``""`` and ``envoy.service.auth.v3.Authorization`` (readiness): SERVING once the first token
  snapshot is loaded, until shutdown;
* ``keyward.authz.Background`` (liveness, :mod:`authz.supervisor`): SERVING while every background
  task runs (or has been failing for less than ``KEYWARD_BACKGROUND_GRACE_SECONDS``) and the event
  loop answers within ``KEYWARD_LOOP_STALL_SECONDS``; NOT_SERVING otherwise. The main thread judges
  it every half second, from outside the loop it judges.

Threads: gRPC is served by the *synchronous* ``grpc.server`` from a small thread pool, because a
Check costs far less CPU there than in ``grpc.aio`` (see ``bench/RESULTS.md``). Everything that is
asyncio (the LISTEN/NOTIFY listener that owns the token cache, the batched ``last_used_at`` writer,
the audit shipper and the spool's fsync timer) runs on one event loop in a background thread
(:class:`~authz.loop.LoopThread`), each task under the :class:`~authz.supervisor.Supervisor`, which
restarts whatever fails. The main thread only starts things, publishes the background health, waits
for a signal and stops them in order. Shared state is safe for this: the cache is mutated only on the
loop thread, one dict or set operation at a time, and read by Checks; :class:`~authz.audit.spool.Spool`,
:class:`~authz.usage.LastUsedTracker` and the supervisor's task states take a lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import signal
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
import httpx
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import start_http_server

from authz.audit.costing import Costing
from authz.audit.emitter import AuditEmitter
from authz.audit.outcome_log import InFlight, OutcomeLog
from authz.audit.shipper import Shipper, sync_forever
from authz.audit.spool import Spool
from authz.cache import TokenCache
from authz.config import AuthzSettings
from authz.limits import Policy
from authz.listener import ChangeListener
from authz.logs import configure as configure_logging
from authz.loop import LoopThread
from authz.meter import Meter
from authz.meter_sync import MeterSync
from authz.metrics import STATE
from authz.pipeline import Limits, Pipeline
from authz.prices import PriceTable
from authz.prices import configure as configure_prices
from authz.servicer import SERVICE_NAME, AuthorizationServicer
from authz.supervisor import BACKGROUND_SERVICE, BackgroundHealth, LoopWatch, Supervisor
from authz.tracing import Tracing
from authz.tracing import build as build_tracing
from authz.usage import LastUsedTracker

log = structlog.get_logger("authz")

#: Threads for long-lived streams (Envoy's access-log streams, one per Envoy worker; health Watch)
#: and anything else. Each open stream holds one for its whole life, so they get their own pool,
#: created on demand, and can never starve Checks.
STREAM_THREADS = 256
#: Seconds in-flight RPCs get to finish on SIGTERM before they are cancelled.
SHUTDOWN_GRACE_SECONDS = 2.0
#: How often the main thread judges the background tasks and the loop.
HEALTH_TICK_SECONDS = 0.5


def build_server(pipeline: Pipeline, ready: asyncio.Event, audit: AuditEmitter, in_flight: InFlight,
                 check_threads: int, tracing: Tracing | None = None) -> tuple[grpc.Server, health.HealthServicer]:
    streams = futures.ThreadPoolExecutor(max_workers=STREAM_THREADS, thread_name_prefix="authz-stream")
    checks = futures.ThreadPoolExecutor(max_workers=check_threads, thread_name_prefix="authz-check")
    server = grpc.server(streams, options=[("grpc.so_reuseport", 0)])
    AuthorizationServicer(pipeline, ready, audit, in_flight, tracing).add_to(server, checks)
    health_servicer = health.HealthServicer(experimental_non_blocking=True, experimental_thread_pool=streams)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    return server, health_servicer


def _set_health(health_servicer: health.HealthServicer, status: int, names: tuple[str, ...] = ("", SERVICE_NAME)
                ) -> None:
    for name in names:
        health_servicer.set(name, status)


@dataclass(slots=True)
class _Background:
    """What :func:`_start_background` started on the loop, for :func:`_stop_background` to stop."""

    task: asyncio.Task
    supervisor: Supervisor
    pool: asyncpg.Pool
    client: httpx.AsyncClient
    outcomes: OutcomeLog
    shipper: Shipper
    meter_sync: MeterSync
    waiter: asyncio.Task


def _envoy_reopener(address: str | None) -> Callable[[], Awaitable[None]] | None:
    """What asks Envoy to reopen its log files (after the audit log was rotated), over its control socket."""
    if not address:
        return None
    transport = httpx.AsyncHTTPTransport(uds=address[len("unix:"):]) if address.startswith("unix:") else None
    base = "http://envoy-control" if transport else f"http://{address}"

    async def reopen() -> None:
        async with httpx.AsyncClient(transport=transport, base_url=base, timeout=5) as client:
            try:
                reply = await client.post("/reopen_logs")
            except httpx.HTTPError as exc:
                raise OSError(f"Envoy's control socket: {type(exc).__name__}: {exc}") from exc
        if reply.status_code != 200:
            raise OSError(f"Envoy refused to reopen its logs: {reply.status_code}")

    return reopen


async def _both(first: asyncio.Event, second: asyncio.Event, then: asyncio.Event) -> None:
    await first.wait()
    await second.wait()
    then.set()


async def _start_background(settings: AuthzSettings, listener: ChangeListener, tracker: LastUsedTracker,
                            spool: Spool, in_flight: InFlight, costing: Costing,
                            ready: asyncio.Event, tracing: Tracing | None = None) -> _Background:
    pool = await asyncpg.create_pool(
        settings.database_url,
        min_size=1,
        max_size=2,
        server_settings={"application_name": "keyward-authz-usage"},
    )
    client = httpx.AsyncClient(timeout=httpx.Timeout(30, connect=2))
    shipper = Shipper(spool, client=client, url=settings.ingest_url, token=settings.ingest_token,
                      batch_lines=settings.audit_batch_lines,
                      batch_bytes=settings.audit_batch_bytes)
    outcomes = OutcomeLog(Path(settings.envoy_audit_log), spool, in_flight=in_flight, source=listener.replica or "",
                          reopen=_envoy_reopener(settings.envoy_control),
                          rotate_bytes=settings.envoy_audit_log_rotate_bytes, costing=costing, tracing=tracing)
    meter_sync = MeterSync(costing.limits.meter, pool, interval=settings.meter_sync_seconds,
                           earliest=costing.limits.earliest_window)
    supervisor = Supervisor({
        "listener": listener.run,
        "meter-sync": meter_sync.run,
        "audit-outcomes": outcomes.run,
        "last-used": lambda: tracker.run(pool, settings.last_used_flush_seconds),
        "audit-shipper": shipper.run,
        "audit-fsync": lambda: sync_forever(spool, settings.audit_fsync_seconds),
    })
    waiter = asyncio.create_task(_both(listener.ready, meter_sync.synced, ready), name="ready")
    return _Background(asyncio.create_task(supervisor.run(), name="supervisor"), supervisor, pool, client, outcomes,
                       shipper, meter_sync, waiter)


#: How long a clean stop spends shipping what is spooled (the rest waits in the spool for the next start;
#: in Kubernetes the spool's emptyDir does not outlive the pod, hence the effort).
FINAL_SHIP_SECONDS = 5.0


async def _stop_background(started: _Background, *, tracker: LastUsedTracker, listener: ChangeListener) -> None:
    started.task.cancel()
    await asyncio.gather(started.task, return_exceptions=True)
    # Envoy stops first and Checks have ended: what is left of its audit log goes to the spool, and the
    # spool to the control plane.
    with contextlib.suppress(Exception):
        started.outcomes.drain()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(started.shipper.drain(), timeout=FINAL_SHIP_SECONDS)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(listener.retire(started.pool), timeout=2)  # no revocation waits for us now
    with contextlib.suppress(Exception):
        await tracker.flush(started.pool)  # do not lose the last few seconds of last_used_at
    with contextlib.suppress(Exception):
        await asyncio.wait_for(started.meter_sync.sync_once(), timeout=2)  # nor the last spend counted
    with contextlib.suppress(Exception):
        await asyncio.wait_for(started.pool.close(), timeout=5)
    await started.client.aclose()


class SpoolInUse(RuntimeError):
    pass


def claim_spool(directory: Path) -> tuple[int, str]:
    """Make this process the only authz using ``directory`` (an exclusive lock held for its lifetime)
    and return the lock's descriptor and this replica's id, which follows from it: the host and the
    spool. Two processes appending to one spool would interleave records, and one that restarts
    takes over its predecessor's place among the replicas instead of leaving a ghost that revocations
    wait for."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(directory / ".authz.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SpoolInUse(f"another authz process is using the audit spool {directory}") from None
    where = hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:8]
    return fd, f"{socket.gethostname()}:{where}"


def serve(settings: AuthzSettings, stop: threading.Event) -> None:
    """Run until ``stop`` is set (SIGTERM or SIGINT in :func:`main`), then shut down in order."""
    spool_dir = Path(settings.audit_spool_dir)
    claim, replica = claim_spool(spool_dir)
    try:
        _serve(settings, stop, Spool(spool_dir), replica)
    finally:
        os.close(claim)


def _state(cache: TokenCache, listener: ChangeListener, shipper: Shipper) -> Callable[[], dict[str, float]]:
    """The state gauges (:data:`authz.metrics.STATE_GAUGES`), read when Prometheus scrapes, not kept on
    the request path."""
    def read() -> dict[str, float]:
        backlog, oldest = shipper.backlog()
        return {"keyward_authz_cache_tokens": len(cache), "keyward_authz_snapshot_age_seconds": listener.silence(),
                "keyward_authz_listener_connected": float(listener.connected),
                "keyward_authz_spool_backlog_bytes": backlog, "keyward_authz_spool_oldest_unshipped_seconds": oldest}

    return read


def _adopt(limits: Limits) -> Callable[[Policy], None]:
    def adopt(policy: Policy) -> None:
        limits.policy = policy
        log.info("policy.loaded", budgets=len(policy.budgets), rate_limits=len(policy.rate_limits))

    return adopt


def _serve(settings: AuthzSettings, stop: threading.Event, spool: Spool, replica: str) -> None:
    cache = TokenCache()
    tracker = LastUsedTracker()
    limits = Limits(Meter())
    upstreams = settings.upstream_list
    configure_prices(upstreams)
    PriceTable().warm()  # the bundled price table loads once, here, not in the first outcome
    listener = ChangeListener(
        dsn=settings.database_url,
        channel=settings.notify_channel,
        cache=cache,
        keepalive_seconds=settings.listener_keepalive_seconds,
        max_staleness_seconds=settings.max_staleness_seconds,
        replica=replica,
        on_policy=_adopt(limits),
    )
    pipeline = Pipeline(cache=cache, hash_key=settings.hash_key, usage=tracker, limits=limits, upstreams=upstreams)
    #: Set once the first snapshot is in and the meter knows the stored spend: Checks wait for both.
    ready = asyncio.Event()

    in_flight = InFlight(settings.envoy_authz_timeout_seconds)
    tracing = build_tracing(settings, cache.by_id)
    log.info("authz.tracing", enabled=tracing is not None, endpoint=settings.otlp_endpoint,
             sample_ratio=settings.trace_sample_ratio)
    server, health_servicer = build_server(pipeline, ready, AuditEmitter(spool, late=in_flight.moot),
                                           in_flight, settings.authz_check_threads, tracing)
    _set_health(health_servicer, health_pb2.HealthCheckResponse.NOT_SERVING, ("", SERVICE_NAME, BACKGROUND_SERVICE))
    server.add_insecure_port(settings.authz_address)
    server.start()
    background = LoopThread()
    started: _Background | None = None
    try:
        if settings.authz_metrics_port:
            start_http_server(settings.authz_metrics_port, addr="127.0.0.1")
        log.info("authz.listening", address=settings.authz_address)
        background.start()
        started = background.call(_start_background(settings, listener, tracker, spool, in_flight,
                                                    Costing(cache, limits), ready, tracing))
        STATE.watch("authz", _state(cache, listener, started.shipper))
        liveness = BackgroundHealth(started.supervisor, LoopWatch(background.loop),
                                    grace=settings.background_grace_seconds,
                                    stall_seconds=settings.loop_stall_seconds)
        liveness.publish(health_servicer)
        # Serve health as soon as the first snapshot is in: wait for it on the loop, but keep an eye
        # on ``stop`` so a SIGTERM during a slow first load still shuts down cleanly.
        waiting = asyncio.run_coroutine_threadsafe(ready.wait(), background.loop)
        next_tick = time.monotonic()
        while not stop.is_set():
            if time.monotonic() >= next_tick:
                liveness.publish(health_servicer)
                next_tick = time.monotonic() + HEALTH_TICK_SECONDS
            with contextlib.suppress(futures.TimeoutError):
                waiting.result(timeout=0.05)
                _set_health(health_servicer, health_pb2.HealthCheckResponse.SERVING)
                log.info("authz.ready", tokens=len(cache), revoked=cache.revoked_count)
                break
        while not stop.wait(HEALTH_TICK_SECONDS):
            liveness.publish(health_servicer)
        waiting.cancel()
        log.info("authz.stopping")
    finally:
        # Also on a failed start: open streams hold pool threads, and the interpreter would wait
        # for those at exit, so the server must always be stopped.
        _set_health(health_servicer, health_pb2.HealthCheckResponse.NOT_SERVING,
                    ("", SERVICE_NAME, BACKGROUND_SERVICE))
        server.stop(grace=SHUTDOWN_GRACE_SECONDS).wait()
        try:
            if started is not None:
                background.call(_stop_background(started, tracker=tracker, listener=listener), timeout=15)
        finally:
            background.stop()
            spool.close()
            if tracing is not None:
                tracing.shutdown()
    log.info("authz.stopped")


def main() -> None:
    # Past a file-size limit, writes must fail with EFBIG (and deny the request), not kill us.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    settings = AuthzSettings()  # type: ignore[call-arg]
    configure_logging(settings.log_level)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda _signum, _frame: stop.set())
    try:
        serve(settings, stop)
    except SpoolInUse as exc:
        log.error("authz.spool_in_use", error=str(exc))
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
