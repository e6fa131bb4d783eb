"""Typed errors of the control plane, each with a stable machine code and an HTTP status.

    KeywardError
    ├── Unreadable        400  body_unreadable (not UTF-8 text)
    ├── NotFound          404  <resource>_not_found
    ├── Conflict          409  <resource>_exists, token_revoked, …
    ├── Invalid           422  validation beyond the schema (lifetime too long, …)
    ├── Unauthorized      401  credential_invalid, ingest_token_invalid
    ├── Forbidden         403  role_forbidden, team_forbidden
    ├── Unavailable       502  the identity provider could not be reached
    └── ServiceUnavailable 503 database_unavailable (with Retry-After)

Every code is a member of :class:`Code`, the one registry of the admin API's machine codes: response
bodies, log events and metric labels use the same words. (The gateway's denial codes are
``authz.outcomes.Outcome``; SCIM errors carry RFC 7644 ``scimType`` values.)

A value the schema admits but PostgreSQL cannot store or compare (a NUL character in a text, a
number past a column's range: SQLSTATE class 22, "data exception") is the client's error too: 422
``value_invalid``, not a 500. A database that cannot be reached, or that is shutting down or
refusing connections, is a 503 ``database_unavailable`` with ``Retry-After``: nothing was written
(every request is one transaction), and the same request will work once the database is back.

Responses keep FastAPI's shape (``{"detail": …}``) and add ``code``, so clients can branch on it.
:func:`responses` documents them in the OpenAPI document, so a client (or a schema-driven test) knows
every status an operation can answer and the body that comes with it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy.exc import DBAPIError, InterfaceError
from sqlalchemy.exc import TimeoutError as PoolTimeout


class Code(enum.StrEnum):
    """Every machine code the admin API, SCIM connections and sign-in answer with."""

    # authentication and roles
    CREDENTIAL_INVALID = "credential_invalid"
    INGEST_TOKEN_INVALID = "ingest_token_invalid"
    SIGN_IN_REQUIRED = "sign_in_required"
    CSRF_TOKEN_INVALID = "csrf_token_invalid"
    ROLE_FORBIDDEN = "role_forbidden"
    TEAM_FORBIDDEN = "team_forbidden"
    # the service itself
    DATABASE_UNAVAILABLE = "database_unavailable"
    # requests
    BODY_UNREADABLE = "body_unreadable"
    BODY_TOO_LARGE = "body_too_large"
    VALUE_INVALID = "value_invalid"
    CURSOR_INVALID = "cursor_invalid"
    TIMEZONE_REQUIRED = "timezone_required"
    WINDOW_EMPTY = "window_empty"
    WINDOW_TOO_LARGE = "window_too_large"
    # resources
    USER_NOT_FOUND = "user_not_found"
    USER_EXISTS = "user_exists"
    USER_NOT_ACTIVE = "user_not_active"
    TEAM_NOT_FOUND = "team_not_found"
    TEAM_EXISTS = "team_exists"
    TEAM_HAS_NO_PROFILE = "team_has_no_profile"
    TEAM_REQUIRED = "team_required"
    TEAM_MISMATCH = "team_mismatch"
    MEMBERSHIP_NOT_FOUND = "membership_not_found"
    NOT_A_MEMBER = "not_a_member"
    PROFILE_NOT_FOUND = "profile_not_found"
    PROFILE_EXISTS = "profile_exists"
    PROFILE_DAYS = "profile_days"
    UPSTREAM_UNKNOWN = "upstream_unknown"
    UPSTREAM_WRONG_API = "upstream_wrong_api"
    MCP_SERVER_UNKNOWN = "mcp_server_unknown"
    SERVICE_ACCOUNT_NOT_FOUND = "service_account_not_found"
    SERVICE_ACCOUNT_EXISTS = "service_account_exists"
    SERVICE_ACCOUNT_DISABLED = "service_account_disabled"
    CREDENTIAL_NOT_FOUND = "credential_not_found"
    SCIM_CONNECTION_NOT_FOUND = "scim_connection_not_found"
    SCIM_CONNECTION_EXISTS = "scim_connection_exists"
    SCIM_CREDENTIAL_NOT_FOUND = "scim_credential_not_found"
    NOTIFICATION_CHANNEL_NOT_FOUND = "notification_channel_not_found"
    NOTIFICATION_CHANNEL_EXISTS = "notification_channel_exists"
    NOTIFICATION_CHANNEL_DISABLED = "notification_channel_disabled"
    NOTIFICATION_CHANNEL_UNSIGNED = "notification_channel_unsigned"
    # the token lifecycle
    TOKEN_NOT_FOUND = "token_not_found"
    TOKEN_NOT_LIVE = "token_not_live"
    TOKEN_REVOKED = "token_revoked"
    TOKEN_WITHOUT_TEAM = "token_without_team"
    ENVIRONMENT_NOT_ALLOWED = "environment_not_allowed"
    LIFETIME_TOO_LONG = "lifetime_too_long"
    MODEL_NOT_IN_PROFILE = "model_not_in_profile"
    ENDPOINT_NOT_IN_PROFILE = "endpoint_not_in_profile"
    WIDENING_REQUIRES_NEW_TOKEN = "widening_requires_new_token"
    # spend policy: projects, budgets, rate limits
    PROJECT_NOT_FOUND = "project_not_found"
    PROJECT_EXISTS = "project_exists"
    PROJECT_CLOSED = "project_closed"
    PROJECT_NOT_IN_TEAM = "project_not_in_team"
    BUDGET_NOT_FOUND = "budget_not_found"
    RATE_LIMIT_NOT_FOUND = "rate_limit_not_found"
    # sign-in with OpenID Connect
    OIDC_NOT_CONFIGURED = "oidc_not_configured"
    ISSUER_UNREACHABLE = "issuer_unreachable"
    ISSUER_ERROR = "issuer_error"
    ISSUER_MISMATCH = "issuer_mismatch"
    CODE_REJECTED = "code_rejected"
    ID_TOKEN_MISSING = "id_token_missing"
    ID_TOKEN_INVALID = "id_token_invalid"
    ID_TOKEN_STALE = "id_token_stale"
    ID_TOKEN_REPLAYED = "id_token_replayed"
    USERINFO_MISMATCH = "userinfo_mismatch"
    EMAIL_MISSING = "email_missing"
    EMAIL_UNVERIFIED = "email_unverified"
    EMAIL_INVALID = "email_invalid"
    USER_UNKNOWN = "user_unknown"
    USER_SUSPENDED = "user_suspended"
    USER_DEPROVISIONED = "user_deprovisioned"
    # the credential register and offboarding
    OWNERS_NOT_DISTINCT = "owners_not_distinct"
    OWNER_NOT_ACTIVE = "owner_not_active"
    BACKUP_OWNER_INVALID = "backup_owner_invalid"
    ROTATION_DAYS_REQUIRED = "rotation_days_required"
    # access reviews and exceptions
    REVIEW_NOT_FOUND = "review_not_found"
    REVIEW_CLOSED = "review_closed"
    REVIEW_OPEN = "review_open"
    REVIEW_ITEM_NOT_FOUND = "review_item_not_found"
    REVIEW_SCHEDULE_NOT_FOUND = "review_schedule_not_found"
    DECISION_NOT_APPLICABLE = "decision_not_applicable"
    TOKEN_OWNER_FIXED = "token_owner_fixed"
    NOTHING_TO_NARROW_TO = "nothing_to_narrow_to"
    EXCEPTION_REQUIRED = "exception_required"
    EXCEPTION_NOT_FOUND = "exception_not_found"
    EXCEPTION_NOT_PENDING = "exception_not_pending"
    EXCEPTION_EXPIRY = "exception_expiry"
    FOUR_EYES_REQUIRED = "four_eyes_required"
    SUBJECT_NOT_FOUND = "subject_not_found"


class KeywardError(Exception):
    status_code = 400

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Unreadable(KeywardError):
    status_code = 400


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


class Unavailable(KeywardError):
    status_code = 502


class ServiceUnavailable(KeywardError):
    status_code = 503


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
    502: "The identity provider could not be reached.",
    503: "The database cannot be reached right now (database_unavailable); retry after Retry-After seconds.",
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


#: Seconds a client is asked to wait when the database is unavailable: the least the header can say,
#: because the audit shipper honours it, and recovery must not wait on a long hint.
RETRY_AFTER_SECONDS = 1
#: SQLSTATEs of a database that is away, not of a bad request: connection exceptions (class 08),
#: shutting down or not yet accepting connections (57P01-57P03), too many connections (53300).
_UNAVAILABLE_STATES = ("08", "57P01", "57P02", "57P03", "53300")


#: Replies for a 503 on paths with their own error shape (SCIM, the console's pages), by path prefix.
Shape = Callable[[int, str], Response]


def _reply(exc: KeywardError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
    if isinstance(exc, ServiceUnavailable):
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
    return JSONResponse({"detail": exc.message, "code": str(exc.code)}, status_code=exc.status_code, headers=headers)


async def _handle(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, KeywardError)
    return _reply(exc)


def _database_away() -> ServiceUnavailable:
    return ServiceUnavailable(Code.DATABASE_UNAVAILABLE, "The database cannot be reached right now; nothing was "
                              f"changed. Retry in {RETRY_AFTER_SECONDS} seconds.")


def install(app: FastAPI, *, shapes: dict[str, Shape] | None = None) -> None:
    """Answer every typed error, and every database failure, as a JSON body with a stable code; on a
    path with its own protocol (``shapes``), a database outage is answered in that protocol's shape."""

    def unavailable(request: Request) -> Response:
        error = _database_away()
        for prefix, shape in (shapes or {}).items():
            if request.url.path.startswith(prefix):
                reply = shape(error.status_code, error.message)
                reply.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
                return reply
        return _reply(error)

    async def data_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, DBAPIError)
        state = str(getattr(exc.orig, "sqlstate", None) or "")
        if state.startswith("22"):
            return _reply(Invalid(Code.VALUE_INVALID, "A value in the request is not one the database takes "
                                  "(a NUL character, a number out of range)."))
        if exc.connection_invalidated or state.startswith(_UNAVAILABLE_STATES) or isinstance(exc, InterfaceError):
            return unavailable(request)
        raise exc

    async def unreachable(request: Request, _exc: Exception) -> Response:
        """No connection at all: refused, timed out, or none free in the pool within its timeout."""
        return unavailable(request)

    app.add_exception_handler(KeywardError, _handle)
    app.add_exception_handler(DBAPIError, data_error)
    for kind in (OSError, PoolTimeout, asyncpg.exceptions.ConnectionDoesNotExistError,
                 asyncpg.exceptions.CannotConnectNowError, asyncpg.exceptions.TooManyConnectionsError):
        app.add_exception_handler(kind, unreachable)
