"""Every decision authz can reach, and the one table that maps each to gRPC code, HTTP status and error.

Stable machine codes (``token_revoked``, ``model_not_allowed``, …) appear in error bodies, in the
access log's ``reason`` field and as metric labels, so one word means the same thing everywhere.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from authz.routes import Api


class Outcome(enum.Enum):
    ALLOWED = "allowed"
    TOKEN_MISSING = "token_missing"
    CREDENTIAL_AMBIGUOUS = "credential_ambiguous"
    TOKEN_MALFORMED = "token_malformed"
    TOKEN_UNKNOWN = "token_unknown"
    TOKEN_REVOKED = "token_revoked"
    TOKEN_EXPIRED = "token_expired"
    OWNER_DISABLED = "owner_disabled"
    ROUTE_UNKNOWN = "route_unknown"
    BODY_TOO_LARGE = "body_too_large"
    BODY_NOT_JSON = "body_not_json"
    BODY_AMBIGUOUS = "body_ambiguous"
    MODEL_MISSING = "model_missing"
    MODEL_NOT_ALLOWED = "model_not_allowed"
    ENVIRONMENT_NOT_ALLOWED = "environment_not_allowed"
    NOT_A_MEMBER = "not_a_member"
    TEAM_HAS_NO_PROFILE = "team_has_no_profile"
    AUDIT_UNAVAILABLE = "audit_unavailable"
    POLICY_STALE = "policy_stale"
    BUDGET_EXCEEDED = "budget_exceeded"
    RATE_LIMITED = "rate_limit_exceeded"


@dataclass(frozen=True, slots=True)
class Denial:
    http_status: int
    grpc_code: int
    openai_type: str
    anthropic_type: str
    message: str


# google.rpc.Code values
_INVALID_ARGUMENT, _NOT_FOUND, _PERMISSION_DENIED, _RESOURCE_EXHAUSTED, _UNAVAILABLE, _UNAUTHENTICATED = (
    3, 5, 7, 8, 14, 16)

_AUTH = ("invalid_request_error", "authentication_error")

DENIALS: dict[Outcome, Denial] = {
    Outcome.TOKEN_MISSING: Denial(
        401,
        _UNAUTHENTICATED,
        *_AUTH,
        "No API key provided. Send your Keyward personal access token as "
        "'Authorization: Bearer <token>' or 'x-api-key: <token>'.",
    ),
    Outcome.CREDENTIAL_AMBIGUOUS: Denial(
        400,
        _INVALID_ARGUMENT,
        "invalid_request_error",
        "invalid_request_error",
        "The request presents more than one API key in the same header ('Authorization' or 'x-api-key' "
        "sent twice, or with two comma-separated values). Send exactly one.",
    ),
    Outcome.TOKEN_MALFORMED: Denial(
        401,
        _UNAUTHENTICATED,
        *_AUTH,
        "The API key is not a Keyward personal access token (wrong prefix, length or checksum). "
        "Check for a typo or a truncated copy.",
    ),
    Outcome.TOKEN_UNKNOWN: Denial(401, _UNAUTHENTICATED, *_AUTH, "Invalid API key."),
    Outcome.TOKEN_REVOKED: Denial(401, _UNAUTHENTICATED, *_AUTH, "This API key has been revoked."),
    Outcome.TOKEN_EXPIRED: Denial(401, _UNAUTHENTICATED, *_AUTH, "This API key has expired."),
    Outcome.OWNER_DISABLED: Denial(401, _UNAUTHENTICATED, *_AUTH, "The owner of this API key is not active."),
    Outcome.ROUTE_UNKNOWN: Denial(
        404,
        _NOT_FOUND,
        "invalid_request_error",
        "not_found_error",
        "This endpoint is not served by the gateway.",
    ),
    Outcome.BODY_TOO_LARGE: Denial(
        413,
        _INVALID_ARGUMENT,
        "invalid_request_error",
        "request_too_large",
        "The request body is larger than the gateway accepts.",
    ),
    Outcome.BODY_NOT_JSON: Denial(
        400,
        _INVALID_ARGUMENT,
        "invalid_request_error",
        "invalid_request_error",
        "The request body must be a JSON object.",
    ),
    Outcome.BODY_AMBIGUOUS: Denial(
        400,
        _INVALID_ARGUMENT,
        "invalid_request_error",
        "invalid_request_error",
        "The request body repeats a key within one JSON object; APIs differ on which value counts, "
        "so the gateway does not guess. Send each key once.",
    ),
    Outcome.MODEL_MISSING: Denial(
        400,
        _INVALID_ARGUMENT,
        "invalid_request_error",
        "invalid_request_error",
        "The request body must name a model as a string field 'model'.",
    ),
    Outcome.MODEL_NOT_ALLOWED: Denial(
        403,
        _PERMISSION_DENIED,
        "invalid_request_error",
        "permission_error",
        "This API key may not use the requested model.",
    ),
    Outcome.ENVIRONMENT_NOT_ALLOWED: Denial(
        403,
        _PERMISSION_DENIED,
        "invalid_request_error",
        "permission_error",
        "This API key's environment may not use the requested model or endpoint.",
    ),
    Outcome.NOT_A_MEMBER: Denial(
        403,
        _PERMISSION_DENIED,
        "invalid_request_error",
        "permission_error",
        "The owner of this API key no longer belongs to the key's team.",
    ),
    Outcome.TEAM_HAS_NO_PROFILE: Denial(
        403,
        _PERMISSION_DENIED,
        "invalid_request_error",
        "permission_error",
        "This API key's team has no access profile, so the key may use nothing.",
    ),
    Outcome.AUDIT_UNAVAILABLE: Denial(
        503,
        _UNAVAILABLE,
        "api_error",
        "api_error",
        "The gateway cannot record this request, so it does not serve it. Try again shortly.",
    ),
    Outcome.POLICY_STALE: Denial(
        503,
        _UNAVAILABLE,
        "api_error",
        "api_error",
        "The gateway has lost contact with its policy store and cannot confirm that this API key is "
        "still valid, so it does not serve it. Try again shortly.",
    ),
    # OpenAI's own word for a spent quota; the SDKs raise RateLimitError for any 429.
    Outcome.BUDGET_EXCEEDED: Denial(
        429,
        _RESOURCE_EXHAUSTED,
        "insufficient_quota",
        "rate_limit_error",
        "A spending budget that applies to this API key is reached.",
    ),
    Outcome.RATE_LIMITED: Denial(
        429,
        _RESOURCE_EXHAUSTED,
        "requests",
        "rate_limit_error",
        "A rate limit that applies to this API key is reached.",
    ),
}


def error_body(outcome: Outcome, api: Api | None, request_id: str, detail: str | None = None,
               limit: dict | None = None) -> dict:
    """The provider-shaped error document for a denial (OpenAI's shape when the API is unknown).
    ``limit`` (which budget or rate limit refused, and until when) goes inside the error object."""
    denial = DENIALS[outcome]
    message = f"{denial.message} {detail}" if detail else denial.message
    extra = {"limit": limit} if limit is not None else {}
    if api is Api.ANTHROPIC:
        return {
            "type": "error",
            "error": {"type": denial.anthropic_type, "message": message, "code": outcome.value, **extra},
            "request_id": request_id,
        }
    return {
        "error": {
            "message": message,
            "type": denial.openai_type,
            "param": None,
            "code": outcome.value,
            "request_id": request_id,
            **extra,
        }
    }
