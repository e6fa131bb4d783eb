from __future__ import annotations

from fastapi import APIRouter
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
