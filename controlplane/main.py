"""The control plane's ASGI app: admin API under ``/api/v1``, health at ``/healthz`` and ``/readyz``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI
from sqlalchemy import text
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from authz.logs import configure as configure_logging
from controlplane import errors
from controlplane.api.routes import (
    audit,
    budgets,
    credentials,
    health,
    me,
    notifications,
    prices,
    profiles,
    projects,
    rate_limits,
    scim_connections,
    service_accounts,
    spend,
    teams,
    tokens,
    usage,
    users,
    web,
)
from controlplane.audit import signing
from controlplane.background import Duty
from controlplane.core.config import get_settings
from controlplane.core.db import get_engine, get_sessionmaker
from controlplane.scim import errors as scim_errors
from controlplane.scim import routes as scim_routes
from controlplane.scim.errors import ScimError
from controlplane.services import delivery, lifecycle, revocation
from controlplane.services.budgets import evaluate_thresholds


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
    work (a transaction-scoped advisory lock), so a threshold is announced once."""
    async with get_sessionmaker()() as session, session.begin():
        if await session.scalar(text("SELECT pg_try_advisory_xact_lock(4924010)")):
            reached = await evaluate_thresholds(session)
            if reached:
                structlog.get_logger("controlplane.budgets").info("budgets.thresholds_reached", reached=reached)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    duties = [Duty("lifecycle", get_settings().lifecycle_interval_seconds, _lifecycle_round),
              Duty("notifications", get_settings().notification_interval_seconds, _notification_round),
              Duty("budgets", get_settings().budget_alert_interval_seconds, _budget_round)]
    acks = revocation.listener()
    app.state.duties = duties
    app.state.long_running = {"revocation-acks": acks}
    acks.start()
    for duty in duties:
        duty.start()
    yield
    for duty in duties:
        await duty.stop()
    await acks.stop()
    await get_engine().dispose()


def create_app() -> FastAPI:
    settings = get_settings()
    # The same logging as authz: one JSON line per event, and a log write that fails never raises.
    configure_logging(settings.log_level)
    signing.install(signing.Signer(settings.audit_signing_key))
    app = FastAPI(
        title="Keyward control plane",
        version="0.1.0",
        description="Identities, personal access tokens and audit events for the Keyward AI gateway.",
        lifespan=_lifespan,
    )
    errors.install(app, shapes={"/scim/": scim_errors.shape})
    app.add_exception_handler(ScimError, scim_errors.handle)
    app.include_router(scim_routes.router)
    app.include_router(health.router)
    app.include_router(web.router)
    app.include_router(me.router, prefix="/api/v1")
    for module in (users, teams, profiles, service_accounts, tokens, credentials, usage, audit, scim_connections):
        app.include_router(module.router, prefix="/api/v1")
    for module in (notifications, spend):
        app.include_router(module.router, prefix="/api/v1")
    for module in (projects, budgets, rate_limits, prices):
        app.include_router(module.router, prefix="/api/v1")
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    return app
