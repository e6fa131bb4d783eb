"""The control plane's ASGI app: admin API under ``/api/v1``, health at ``/healthz`` and ``/readyz``,
Prometheus metrics at ``/metrics`` (:mod:`controlplane.metrics`)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import structlog
from fastapi import FastAPI
from sqlalchemy import text
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from authz import prices as price_table
from authz.config import asyncpg_dsn
from controlplane import errors, metrics, tracing
from controlplane.api.routes import (
    access,
    audit,
    budgets,
    console,
    credentials,
    evidence,
    health,
    me,
    notifications,
    prices,
    profiles,
    projects,
    rate_limits,
    register,
    reviews,
    scim_connections,
    service_accounts,
    spend,
    teams,
    tokens,
    usage,
    users,
    web,
)
from controlplane.audit import break_glass, signing
from controlplane.audit import verify as audit_verify
from controlplane.background import Duty
from controlplane.core.config import get_settings
from controlplane.core.db import get_engine, get_sessionmaker
from controlplane.logging import RequestId
from controlplane.logging import configure as configure_logging
from controlplane.scim import errors as scim_errors
from controlplane.scim import routes as scim_routes
from controlplane.scim.errors import ScimError
from controlplane.services import delivery, lifecycle, offboarding, overview, revocation
from controlplane.services import exceptions as review_exceptions
from controlplane.services import reviews as review_service
from controlplane.services.budgets import evaluate_thresholds, utilisation_ratios
from controlplane.services.mirror import mirror


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with a 413 before the route reads them."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await _too_large(send, self.max_bytes)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise _BodyTooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _BodyTooLarge:
            await _too_large(send, self.max_bytes)


class _BodyTooLarge(Exception):
    pass


async def _too_large(send: Send, limit: int) -> None:
    body = b'{"detail":"Request body larger than %d bytes.","code":"body_too_large"}' % limit
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _lifecycle_round() -> None:
    """Expiry events and the dormant-token policy. One replica at a time does the work (a
    transaction-scoped advisory lock); the others skip that round."""
    async with get_sessionmaker()() as session, session.begin():
        if await session.scalar(text("SELECT pg_try_advisory_xact_lock(4924001)")):
            expired = await lifecycle.record_expirations(session)
            retired = await lifecycle.retire_dormant(session)
            await revocation.forget_departed(session)
            if expired or retired:
                structlog.get_logger("controlplane.lifecycle").info("lifecycle.applied", expired=expired,
                                                                    dormant_revoked=retired)


async def _offboarding_round() -> None:
    """Offboarding triggers that are due: accounts not reassigned in time disabled, people past their
    end date deprovisioned, tokens left unrotated revoked (:mod:`controlplane.services.offboarding`).
    One replica at a time (a transaction-scoped advisory lock), in its own transaction."""
    async with get_sessionmaker()() as session, session.begin():
        if await session.scalar(text("SELECT pg_try_advisory_xact_lock(4924020)")):
            done = await offboarding.run(session)
            if any(done.values()):
                structlog.get_logger("controlplane.offboarding").info("offboarding.applied", **done)


async def _notification_round() -> None:
    """Send the due notification deliveries (budget alerts, tests); see :mod:`controlplane.services.delivery`
    for why replicas never send one twice."""
    settings = get_settings()
    policy = delivery.Policy(max_attempts=settings.notification_max_attempts,
                             retry_seconds=settings.notification_retry_seconds,
                             retry_max_seconds=settings.notification_retry_max_seconds,
                             timeout_seconds=settings.notification_timeout_seconds)
    async with get_sessionmaker()() as session, session.begin():
        await delivery.deliver_due(session, policy=policy)


async def _budget_round() -> None:
    """Announce the budget thresholds reached since the last round. One replica at a time does the
    work (a transaction-scoped advisory lock), so a threshold is announced once. Then refresh this
    replica's ``keyward_budget_utilisation_ratio`` gauges."""
    async with get_sessionmaker()() as session, session.begin():
        if await session.scalar(text("SELECT pg_try_advisory_xact_lock(4924010)")):
            reached = await evaluate_thresholds(session)
            if reached:
                structlog.get_logger("controlplane.budgets").info("budgets.thresholds_reached", reached=reached)
    # Every replica keeps its budget gauges current (a few reads), so any replica's /metrics has them.
    async with get_sessionmaker()() as session:
        metrics.set_budget_utilisation(await utilisation_ratios(session))


async def _reviews_round() -> None:
    """Access reviews' duties: expire exceptions (reopening their items, disabling by policy) and open the
    scheduled reviews that are due. One replica at a time (a transaction-scoped advisory lock)."""
    settings = get_settings()
    async with get_sessionmaker()() as session, session.begin():
        if await session.scalar(text("SELECT pg_try_advisory_xact_lock(4924011)")):
            expired = await review_exceptions.expire(session, disables=settings.expired_exception_disables)
            opened = await review_service.run_schedules(session)
            if expired or opened:
                structlog.get_logger("controlplane.reviews").info("reviews.applied", exceptions_expired=expired,
                                                                  reviews_opened=opened)


async def _overview_round() -> None:
    """Judge every live token again for the console's overview (:mod:`controlplane.services.overview`)."""
    async with get_sessionmaker()() as session, session.begin():
        await overview.reach_summary(session, within_team=None, fresh=True)


async def _break_glass_round() -> None:
    """One ``admin.break_glass_reads`` event per finished hour of bootstrap-token reads (see
    :mod:`controlplane.audit.break_glass`); rows are locked, so replicas never summarise one twice."""
    async with get_sessionmaker()() as session, session.begin():
        await break_glass.summarise(session)


#: Rows of each chain one incremental verification round hashes at most (a few seconds' work): a
#: backlog is caught up over several rounds, each recording how far it got.
VERIFY_ROUND_ROWS = 250_000


async def _verify_round(*, full: bool) -> None:
    """Verify the audit chains, incrementally from each one's newest signed marker, or in full those not
    verified in full for ``full_verify_hours`` (the duty looks hourly, so restarts never postpone it),
    and record each result as a signed marker (:mod:`controlplane.audit.verify`). One replica at a time."""
    settings = get_settings()
    reports = await audit_verify.verification_round(
        asyncpg_dsn(settings.database_url), signer=signing.current(), full=full,
        max_rows=None if full else VERIFY_ROUND_ROWS,
        full_every=timedelta(hours=settings.full_verify_hours) if full else None)
    log = structlog.get_logger("controlplane.audit")
    for report in reports:
        metrics.chain_verified(report.chain, intact=not report.findings,
                               at=report.marker.verified_at.timestamp() if report.marker else time.time())
        if report.findings:
            log.warning("audit.chain_broken", chain=report.chain, kind=report.kind,
                        finding=str(report.findings[0]), marker=report.marker.id if report.marker else None)
    if full and reports:
        log.info("audit.full_verification", intact=not any(r.findings for r in reports),
                 rows=sum(r.rows_checked for r in reports))


async def _incremental_verify_round() -> None:
    await _verify_round(full=False)


async def _full_verify_round() -> None:
    await _verify_round(full=True)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    duties = [Duty("lifecycle", get_settings().lifecycle_interval_seconds, _lifecycle_round),
              Duty("offboarding", get_settings().lifecycle_interval_seconds, _offboarding_round),
              Duty("notifications", get_settings().notification_interval_seconds, _notification_round),
              Duty("budgets", get_settings().budget_alert_interval_seconds, _budget_round),
              Duty("reviews", get_settings().lifecycle_interval_seconds, _reviews_round),
              Duty("break-glass", get_settings().lifecycle_interval_seconds, _break_glass_round),
              Duty("overview", overview.REACH_REFRESH_SECONDS, _overview_round),
              Duty("verify-audit", get_settings().verify_interval_seconds, _incremental_verify_round),
              Duty("verify-audit-full", min(3600.0, get_settings().full_verify_hours * 3600), _full_verify_round)]
    acks = revocation.listener()
    tokens = mirror()
    app.state.duties = duties
    app.state.long_running = {"revocation-acks": acks, "token-mirror": tokens}
    metrics.watch_duties(lambda: {duty.name: duty.alive() for duty in duties}
                         | {name: task.alive() for name, task in app.state.long_running.items()})
    acks.start()
    tokens.start()
    for duty in duties:
        duty.start()
    yield
    for duty in duties:
        await duty.stop()
    await acks.stop()
    await tokens.stop()
    await get_engine().dispose()


def create_app() -> FastAPI:
    settings = get_settings()
    # The same logging as authz: one JSON line per event, and a log write that fails never raises; uvicorn's
    # own lines too (controlplane.logging).
    configure_logging(settings.log_level)
    signing.install(signing.Signer(settings.audit_signing_key))
    # Spend reports and budgets price an upstream's models under its kind's provider (an Azure upstream's
    # under azure), as authz does when it meters them.
    price_table.configure(settings.upstream_list)
    app = FastAPI(
        title="Keyward control plane",
        version="0.1.0",
        description="Identities, personal access tokens and audit events for the Keyward AI gateway.",
        lifespan=_lifespan,
    )
    errors.install(app, shapes={"/scim/": scim_errors.shape, "/console": console.outage_page})
    app.add_exception_handler(ScimError, scim_errors.handle)
    app.include_router(scim_routes.router)
    app.include_router(health.router)
    app.include_router(web.router)
    console.install(app)
    app.include_router(me.router, prefix="/api/v1")
    for module in (users, teams, profiles, service_accounts, tokens, credentials, usage, audit, scim_connections,
                   notifications, spend, projects, budgets, rate_limits, prices, access, reviews, register,
                   evidence):
        app.include_router(module.router, prefix="/api/v1")
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    # Prometheus: unauthenticated, outside the OpenAPI document, nothing secret (see controlplane.metrics).
    app.add_route("/metrics", metrics.endpoint, include_in_schema=False)
    app.add_middleware(metrics.HttpMetrics)  # outside BodyLimit: counts what it refuses too
    app.add_middleware(RequestId)  # each request's id on its log lines and in X-Request-Id
    # OpenTelemetry, outermost, when KEYWARD_OTLP_ENDPOINT is set: each request's span is current inside.
    tracing.install(app, settings)
    return app
