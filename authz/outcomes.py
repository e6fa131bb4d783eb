"""Every decision authz can reach, and the one table that maps each to gRPC code, HTTP status and error.

Stable machine codes (``token_revoked``, ``model_not_allowed``, …) appear in error bodies, in the
access log's ``reason`` field and as metric labels, so one word means the same thing everywhere.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from authz import mcp
from authz.upstreams import Api


class Outcome(enum.Enum):
    ALLOWED = "allowed"
    #: Let through, and answered by the gateway itself (``GET …/models``, from the token's catalog): no
    #: provider saw it, so the record does not say "allowed".
    ANSWERED = "answered"
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
    ENDPOINT_NOT_ALLOWED = "endpoint_not_allowed"
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    LENGTH_REQUIRED = "length_required"
    BODY_NOT_FORM = "body_not_form"
    TOOL_NOT_ALLOWED = "tool_not_allowed"
    RPC_INVALID = "rpc_invalid"


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
    Outcome.ENDPOINT_NOT_ALLOWED: Denial(
        403,
        _PERMISSION_DENIED,
        "invalid_request_error",
        "permission_error",
        "This API key may not call this endpoint.",
    ),
    Outcome.UPSTREAM_UNAVAILABLE: Denial(
        503,
        _UNAVAILABLE,
        "api_error",
        "api_error",
        "The gateway has no provider configured for this request; an administrator must fix the access "
        "profile or the gateway's upstreams.",
    ),
    Outcome.LENGTH_REQUIRED: Denial(
        411,
        _INVALID_ARGUMENT,
        "invalid_request_error",
        "invalid_request_error",
        "An upload must declare its size (Content-Length).",
    ),
    Outcome.BODY_NOT_FORM: Denial(
        400,
        _INVALID_ARGUMENT,
        "invalid_request_error",
        "invalid_request_error",
        "The request body must be multipart/form-data.",
    ),
    Outcome.TOOL_NOT_ALLOWED: Denial(
        403,
        _PERMISSION_DENIED,
        "invalid_request_error",
        "permission_error",
        "This API key may not call this MCP server or tool.",
    ),
    Outcome.RPC_INVALID: Denial(
        400,
        _INVALID_ARGUMENT,
        "invalid_request_error",
        "invalid_request_error",
        "The request body must be one JSON-RPC 2.0 message (or a batch of them) the gateway can read.",
    ),
}

#: Google's status names (``google.rpc.Code``) by HTTP status, for Gemini's error shape.
_GOOGLE_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                  411: "INVALID_ARGUMENT", 413: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE"}
#: AWS's error types by HTTP status (boto3 reads ``x-amzn-ErrorType``; :func:`aws_error_type`).
_AWS_TYPES = {400: "ValidationException", 401: "UnrecognizedClientException", 403: "AccessDeniedException",
              404: "ResourceNotFoundException", 411: "ValidationException", 413: "ValidationException",
              429: "ThrottlingException", 503: "ServiceUnavailableException"}
#: JSON-RPC error codes for MCP denials (:mod:`authz.mcp`): a body the gateway cannot read, a tool or
#: server outside the catalog, and every other refusal ("not authorised").
_RPC_CODES = {Outcome.RPC_INVALID: mcp.INVALID_REQUEST, Outcome.BODY_AMBIGUOUS: mcp.INVALID_REQUEST,
              Outcome.TOOL_NOT_ALLOWED: mcp.TOOL_NOT_ALLOWED}
_RPC_DENIED = mcp.NOT_AUTHORISED


def aws_error_type(outcome: Outcome) -> str:
    """The ``x-amzn-ErrorType`` a Bedrock client reads a denial's error code from."""
    return _AWS_TYPES.get(DENIALS[outcome].http_status, "AccessDeniedException")


def error_body(outcome: Outcome, api: Api | None, request_id: str, detail: str | None = None,
               limit: dict | None = None, rpc_id: object = None, rpc_code: int | None = None) -> dict:
    """The provider-shaped error document for a denial (OpenAI's shape when the API is unknown; Azure's
    and Mistral's clients read it too). ``limit`` (which budget or rate limit refused, and until when)
    goes inside the error object. An MCP denial is a JSON-RPC error answering ``rpc_id`` (with ``rpc_code``
    when the body itself was the problem)."""
    denial = DENIALS[outcome]
    message = f"{denial.message} {detail}" if detail else denial.message
    extra = {"limit": limit} if limit is not None else {}
    if api is Api.GEMINI:
        return {"error": {"code": denial.http_status, "message": message,
                          "status": _GOOGLE_STATUS.get(denial.http_status, "UNKNOWN"),
                          "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": outcome.value,
                                       "domain": "keyward", "metadata": {"request_id": request_id}}]}}
    if api is Api.BEDROCK:
        return {"message": message, "code": outcome.value, "request_id": request_id, **extra}
    if api is Api.MCP:
        code = rpc_code if rpc_code is not None else _RPC_CODES.get(outcome, _RPC_DENIED)
        return {"jsonrpc": "2.0", "id": rpc_id,
                "error": {"code": code, "message": message, "data": {"code": outcome.value, "request_id": request_id}}}
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
