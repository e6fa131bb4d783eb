"""Typed errors of the control plane, each with a stable machine code and an HTTP status.

    KeywardError
    ├── NotFound          404  <resource>_not_found
    ├── Conflict          409  <resource>_exists, token_revoked, …
    ├── Invalid           422  validation beyond the schema (lifetime too long, …)
    ├── Unauthorized      401  credential_invalid, ingest_token_invalid
    └── Forbidden         403  role_forbidden, team_forbidden

A value the schema admits but PostgreSQL cannot store or compare (a NUL character in a text, a
number past a column's range: SQLSTATE class 22, "data exception") is the client's error too: 422
``value_invalid``, not a 500.

Responses keep FastAPI's shape (``{"detail": …}``) and add ``code``, so clients can branch on it.
:func:`responses` documents them in the OpenAPI document, so a client (or a schema-driven test) knows
every status an operation can answer and the body that comes with it.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import DBAPIError


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


class ErrorBody(BaseModel):
    detail: str = Field(description="What went wrong, for a person.")
    code: str = Field(description="A stable machine code: credential_invalid, role_forbidden, team_not_found, …")


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class UnprocessableBody(BaseModel):
    """A 422: either the request does not match the schema (``detail`` lists the field errors, as FastAPI
    reports them) or it fails a check beyond the schema (``detail`` is a message, with a ``code``)."""

    detail: str | list[FieldError]
    code: str | None = None


_DESCRIPTIONS = {
    400: "The body could not be read (not UTF-8 text).",
    401: "No valid credential (credential_invalid, ingest_token_invalid).",
    403: "The credential's role or team may not do this (role_forbidden, team_forbidden).",
    404: "A referenced object does not exist (<resource>_not_found).",
    409: "The request conflicts with the current state (<resource>_exists, token_not_live, …).",
    413: "The body is larger than the control plane accepts (body_too_large).",
    422: "The request does not match the schema, or fails a check beyond it.",
}


class UnreadableBody(BaseModel):
    detail: str


_MODELS: dict[int, type[BaseModel]] = {400: UnreadableBody, 422: UnprocessableBody}


def responses(*statuses: int, body: bool = False) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error statuses an operation (or a router's operations) can answer;
    ``body``: the operation reads a request body, which can be unreadable (400) or too large (413)."""
    documented: dict[int | str, dict[str, Any]] = {}
    for status in (*statuses, 400, 413) if body else statuses:
        entry: dict[str, Any] = {"model": _MODELS.get(status, ErrorBody), "description": _DESCRIPTIONS[status]}
        if status == 401:
            entry["headers"] = {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}}
        documented[status] = entry
    return documented


async def _handle(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, KeywardError)
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
    return JSONResponse({"detail": exc.message, "code": exc.code}, status_code=exc.status_code, headers=headers)


async def _handle_data(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DBAPIError)
    if str(getattr(exc.orig, "sqlstate", None) or "").startswith("22"):
        return await _handle(request, Invalid("value_invalid", "A value in the request is not one the database "
                                              "takes (a NUL character, a number out of range)."))
    raise exc


def install(app: FastAPI) -> None:
    app.add_exception_handler(KeywardError, _handle)
    app.add_exception_handler(DBAPIError, _handle_data)
