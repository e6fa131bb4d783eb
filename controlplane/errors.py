"""Typed errors of the control plane, each with a stable machine code and an HTTP status.

    KeywardError
    ├── NotFound          404  <resource>_not_found
    ├── Conflict          409  <resource>_exists, token_revoked, …
    ├── Invalid           422  validation beyond the schema (lifetime too long, …)
    ├── Unauthorized      401  credential_invalid, ingest_token_invalid
    └── Forbidden         403  role_forbidden, team_forbidden

Responses keep FastAPI's shape (``{"detail": …}``) and add ``code``, so clients can branch on it.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


class KeywardError(Exception):
    status_code = 400

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class NotFound(KeywardError):
    status_code = 404


class Conflict(KeywardError):
    status_code = 409


class Invalid(KeywardError):
    status_code = 422


class Unauthorized(KeywardError):
    status_code = 401


class Forbidden(KeywardError):
    status_code = 403


async def _handle(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, KeywardError)
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
    return JSONResponse({"detail": exc.message, "code": exc.code}, status_code=exc.status_code, headers=headers)


def install(app: FastAPI) -> None:
    app.add_exception_handler(KeywardError, _handle)
