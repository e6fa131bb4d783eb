from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from controlplane.core.db import get_engine
from controlplane.migrate import head_revision

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict:
    """The process is up. Says nothing about the database."""
    return {"status": "ok"}


@router.get("/livez")
async def livez(request: Request) -> JSONResponse:
    """The process is alive: its background duties still run (a dead one fails this, and the
    orchestrator restarts the process). Says nothing about the database, which a restart cannot fix."""
    timed = getattr(request.app.state, "duties", [])
    duties = {duty.name: duty.alive() for duty in timed}
    duties |= {name: task.alive() for name, task in getattr(request.app.state, "long_running", {}).items()}
    status = 200 if all(duties.values()) else 503
    # Failed rounds do not fail liveness (a restart cannot fix a database outage), but they show here.
    failures = {duty.name: duty.failures for duty in timed}
    return JSONResponse({"status": "ok" if status == 200 else "dead", "duties": duties, "failed_rounds": failures},
                        status_code=status)


@router.get("/readyz")
async def readyz() -> JSONResponse:
    """Ready only when the database answers and its schema is at the latest migration."""
    try:
        async with get_engine().connect() as connection:
            current = await connection.scalar(text("SELECT version_num FROM alembic_version"))
    except (SQLAlchemyError, OSError) as exc:
        return JSONResponse({"status": "unavailable", "database": type(exc).__name__}, status_code=503)
    head = head_revision()
    if current != head:
        return JSONResponse({"status": "migrating", "schema": current, "expected": head}, status_code=503)
    return JSONResponse({"status": "ready", "schema": current})
