"""What Envoy receives: the CheckResponse for an allowed request and for every kind of denial."""

from __future__ import annotations

import json
import time

import pytest
from envoy.service.auth.v3.external_auth_pb2 import CheckResponse

from authz import request as request_codec
from authz import response as response_codec
from authz.cache import NO_PROFILE, ModelCatalog, ProfileCatalog, TokenCache, TokenRecord
from authz.limits import Budget, Policy, RateLimit
from authz.meter import Meter
from authz.outcomes import Outcome
from authz.pipeline import Decision, Limits, Pipeline
from authz.routes import Api
from authz.tokens import TOKEN_PREFIX, generate_token, hash_token
from tests.unit import checkrequests as cr

REQUEST_ID = "5d3f0a8e-1b9c-4e0f-9a51-7c2b8e6d4f10"
HASH_KEY = bytes.fromhex("a5" * 32)
NOW = 1_750_000_000.0

#: google.rpc.Code numbers and HTTP statuses, written out independently of authz.outcomes.
UNAUTHENTICATED, NOT_FOUND, PERMISSION_DENIED, INVALID_ARGUMENT, UNAVAILABLE, RESOURCE_EXHAUSTED = 16, 5, 7, 3, 14, 8
EXPECTED = {
    Outcome.TOKEN_MISSING: (401, UNAUTHENTICATED),
    Outcome.CREDENTIAL_AMBIGUOUS: (400, INVALID_ARGUMENT),
    Outcome.TOKEN_MALFORMED: (401, UNAUTHENTICATED),
    Outcome.TOKEN_UNKNOWN: (401, UNAUTHENTICATED),
    Outcome.TOKEN_REVOKED: (401, UNAUTHENTICATED),
    Outcome.TOKEN_EXPIRED: (401, UNAUTHENTICATED),
    Outcome.OWNER_DISABLED: (401, UNAUTHENTICATED),
    Outcome.ROUTE_UNKNOWN: (404, NOT_FOUND),
    Outcome.BODY_TOO_LARGE: (413, INVALID_ARGUMENT),
    Outcome.BODY_NOT_JSON: (400, INVALID_ARGUMENT),
    Outcome.BODY_AMBIGUOUS: (400, INVALID_ARGUMENT),
    Outcome.MODEL_MISSING: (400, INVALID_ARGUMENT),
    Outcome.MODEL_NOT_ALLOWED: (403, PERMISSION_DENIED),
    Outcome.ENVIRONMENT_NOT_ALLOWED: (403, PERMISSION_DENIED),
    Outcome.NOT_A_MEMBER: (403, PERMISSION_DENIED),
    Outcome.TEAM_HAS_NO_PROFILE: (403, PERMISSION_DENIED),
    Outcome.AUDIT_UNAVAILABLE: (503, UNAVAILABLE),
    Outcome.POLICY_STALE: (503, UNAVAILABLE),
    Outcome.BUDGET_EXCEEDED: (429, RESOURCE_EXHAUSTED),
    Outcome.RATE_LIMITED: (429, RESOURCE_EXHAUSTED),
}
#: OpenAI's error type per outcome, where it is not ``invalid_request_error``.
OPENAI_TYPES = {Outcome.AUDIT_UNAVAILABLE: "api_error", Outcome.POLICY_STALE: "api_error",
                Outcome.BUDGET_EXCEEDED: "insufficient_quota", Outcome.RATE_LIMITED: "requests"}
DENIALS = list(EXPECTED)
ANTHROPIC_TYPES = {
    401: "authentication_error",
    404: "not_found_error",
    413: "request_too_large",
    400: "invalid_request_error",
    403: "permission_error",
    503: "api_error",
    429: "rate_limit_error",
}


def record(**fields: object) -> TokenRecord:
    values: dict = {
        "token_id": "tok-7",
        "token_hash": "hash-7",
        "user_id": "user-3",
        "user_email": "ada@example.com",
        "team": "research",
        "environment": "prod",
        "catalog": ModelCatalog(["gpt-4o-mini"]),
        "expires_at": None,
        "owner_active": True,
        **fields,
    }
    return TokenRecord(**values)


def decision(outcome: Outcome, api: Api | None = Api.OPENAI, model: str | None = None, **fields) -> Decision:
    with_record = outcome not in (Outcome.TOKEN_MISSING, Outcome.TOKEN_MALFORMED, Outcome.TOKEN_UNKNOWN,
                                  Outcome.CREDENTIAL_AMBIGUOUS)
    return Decision(outcome, api, record(**fields) if with_record else None, model)


def build(outcome: Outcome, api: Api | None = Api.OPENAI, model: str | None = None, **fields) -> CheckResponse:
    return response_codec.build(decision(outcome, api, model, **fields), REQUEST_ID)


def headers_of(response: CheckResponse) -> dict[str, str]:
    return {option.header.key: option.header.value for option in response.denied_response.headers}


def body_of(response: CheckResponse) -> dict:
    return json.loads(response.denied_response.body)


def metadata_of(response: CheckResponse) -> dict:
    return dict(response.dynamic_metadata.items())


def test_expectations_cover_every_denial() -> None:
    assert set(EXPECTED) == set(Outcome) - {Outcome.ALLOWED}


# -- allowed --------------------------------------------------------------------------------------


def test_allowed_removes_every_client_credential_header() -> None:
    response = build(Outcome.ALLOWED, model="gpt-4o-mini")
    assert response.WhichOneof("http_response") == "ok_response"
    assert response.status.code == 0
    assert set(response.ok_response.headers_to_remove) == {
        "authorization", "x-api-key", "api-key", "x-goog-api-key", "proxy-authorization",
    }
    assert not response.ok_response.headers  # nothing added: Envoy injects the provider key itself


def test_allowed_carries_dynamic_metadata() -> None:
    response = build(Outcome.ALLOWED, Api.ANTHROPIC, model="claude-3-5-haiku-latest")
    assert metadata_of(response) == {
        "decision": "allowed",
        "token_id": "tok-7",
        "user_id": "user-3",
        "user": "ada@example.com",
        "team": "research",
        "environment": "prod",
        "provider": "anthropic",
        "model": "claude-3-5-haiku-latest",
    }


def test_allowed_metadata_without_model_or_team() -> None:
    metadata = metadata_of(build(Outcome.ALLOWED, Api.OPENAI, team=None))
    assert metadata["provider"] == "openai"
    assert "model" not in metadata
    assert "team" not in metadata


# -- denied ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("outcome", DENIALS, ids=lambda o: o.value)
@pytest.mark.parametrize("api", [Api.OPENAI, Api.ANTHROPIC, None], ids=["openai", "anthropic", "no-api"])
def test_denial_status_codes_and_headers(outcome: Outcome, api: Api | None) -> None:
    http_status, grpc_code = EXPECTED[outcome]
    response = build(outcome, api)
    assert response.WhichOneof("http_response") == "denied_response"
    assert response.denied_response.status.code == http_status
    assert response.status.code == grpc_code
    assert response.status.message == outcome.value
    headers = headers_of(response)
    assert headers["content-type"] == "application/json"
    if http_status == 401:
        assert headers["www-authenticate"] == 'Bearer realm="keyward"'
    else:
        assert "www-authenticate" not in headers


@pytest.mark.parametrize("outcome", DENIALS, ids=lambda o: o.value)
@pytest.mark.parametrize("api", [Api.OPENAI, None], ids=["openai", "no-api"])
def test_openai_shaped_body(outcome: Outcome, api: Api | None) -> None:
    body = body_of(build(outcome, api))
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code", "request_id"}
    assert error["param"] is None
    assert error["code"] == outcome.value
    assert error["type"] == OPENAI_TYPES.get(outcome, "invalid_request_error")
    assert error["request_id"] == REQUEST_ID
    assert isinstance(error["message"], str)
    assert error["message"]


@pytest.mark.parametrize("outcome", DENIALS, ids=lambda o: o.value)
def test_anthropic_shaped_body(outcome: Outcome) -> None:
    body = body_of(build(outcome, Api.ANTHROPIC))
    assert set(body) == {"type", "error", "request_id"}
    assert body["type"] == "error"
    assert body["request_id"] == REQUEST_ID
    assert set(body["error"]) == {"type", "message", "code"}
    assert body["error"]["type"] == ANTHROPIC_TYPES[EXPECTED[outcome][0]]
    assert body["error"]["code"] == outcome.value
    assert body["error"]["message"]


def test_model_not_allowed_names_the_model() -> None:
    response = response_codec.build(
        Decision(Outcome.MODEL_NOT_ALLOWED, Api.OPENAI, record(), "gpt-4o", detail="Model: 'gpt-4o'."),
        REQUEST_ID,
    )
    assert "'gpt-4o'" in body_of(response)["error"]["message"]
    assert metadata_of(response)["model"] == "gpt-4o"


@pytest.mark.parametrize(
    ("outcome", "says"),
    [(Outcome.CREDENTIAL_AMBIGUOUS, "more than one API key"), (Outcome.BODY_AMBIGUOUS, "repeats a key")],
    ids=lambda value: value.value if isinstance(value, Outcome) else None,
)
@pytest.mark.parametrize("api", [Api.OPENAI, Api.ANTHROPIC], ids=["openai", "anthropic"])
def test_ambiguous_requests_are_400_invalid_request_errors_that_say_why(outcome: Outcome, says: str,
                                                                        api: Api) -> None:
    response = build(outcome, api)
    assert response.denied_response.status.code == 400
    assert response.status.code == INVALID_ARGUMENT
    error = body_of(response)["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == outcome.value
    assert says in error["message"]


def test_denial_metadata_says_who_was_refused_and_why() -> None:
    assert metadata_of(build(Outcome.TOKEN_REVOKED, Api.ANTHROPIC)) == {
        "decision": "token_revoked",
        "token_id": "tok-7",
        "user_id": "user-3",
        "user": "ada@example.com",
        "team": "research",
        "environment": "prod",
        "provider": "anthropic",
    }
    assert metadata_of(build(Outcome.TOKEN_MISSING, None)) == {"decision": "token_missing"}


# -- end to end: request id and secrecy -----------------------------------------------------------


class _Sink:
    def touch(self, token_id: str, at: float) -> None:
        pass


def _run(check, cache: TokenCache, policy: Policy | None = None) -> CheckResponse:
    limits = Limits(Meter(), policy) if policy is not None else None
    pipeline = Pipeline(cache=cache, hash_key=HASH_KEY, usage=_Sink(), clock=lambda: NOW, limits=limits)
    parsed = request_codec.parse(check)
    if limits is not None:
        pipeline.decide(parsed)  # the request before: a rate limit of one per minute is used up
    return response_codec.build(pipeline.decide(parsed), parsed.request_id)


@pytest.mark.parametrize(
    ("canned", "api"),
    [(cr.openai_chat, Api.OPENAI), (cr.anthropic_messages, Api.ANTHROPIC)],
    ids=["openai", "anthropic"],
)
def test_request_id_from_envoy_ends_up_in_the_body(canned, api: Api) -> None:
    response = _run(canned(generate_token(), request_id=REQUEST_ID), TokenCache())
    body = body_of(response)
    request_id = body["error"]["request_id"] if api is Api.OPENAI else body["request_id"]
    assert request_id == REQUEST_ID


def test_envoy_stream_id_stands_in_for_a_missing_request_id() -> None:
    check = cr.check_request("GET", "/anthropic/v1/models", {"x-request-id": None})
    body = body_of(_run(check, TokenCache()))
    assert body["request_id"] == check.attributes.request.http.id
    assert body["request_id"].isdigit()


#: For each outcome: the request (given the minted PAT) and the stored token's state.
SCENARIOS = {
    Outcome.ALLOWED: (cr.openai_chat, {}),
    Outcome.TOKEN_MISSING: (lambda pat: cr.no_credential(), {}),
    Outcome.CREDENTIAL_AMBIGUOUS: (lambda pat: cr.two_x_api_keys(pat, pat), {}),
    Outcome.TOKEN_MALFORMED: (lambda pat: cr.anthropic_messages(cr.mistyped(pat)), {}),
    Outcome.TOKEN_UNKNOWN: (cr.openai_chat, {"token_hash": "someone-else"}),
    Outcome.TOKEN_REVOKED: (cr.anthropic_messages, {"revoked": True}),
    Outcome.TOKEN_EXPIRED: (cr.openai_chat, {"expires_at": NOW - 1}),
    Outcome.OWNER_DISABLED: (cr.openai_chat, {"owner_active": False}),
    Outcome.ROUTE_UNKNOWN: (cr.openai_files, {}),
    Outcome.BODY_TOO_LARGE: (cr.truncated_chat, {}),
    Outcome.BODY_NOT_JSON: (cr.garbage_body, {}),
    Outcome.BODY_AMBIGUOUS: (cr.duplicate_model, {}),
    Outcome.MODEL_MISSING: (cr.body_without_model, {}),
    Outcome.MODEL_NOT_ALLOWED: (lambda pat: cr.openai_chat(pat, "gpt-4o"), {}),
    Outcome.ENVIRONMENT_NOT_ALLOWED: (cr.openai_chat, {"profile": ProfileCatalog([("*", "*", None)], ["nowhere"])}),
    Outcome.NOT_A_MEMBER: (cr.openai_chat, {"member": False}),
    Outcome.TEAM_HAS_NO_PROFILE: (cr.anthropic_messages, {"profile": NO_PROFILE}),
    Outcome.POLICY_STALE: (cr.openai_chat, {}),
    Outcome.BUDGET_EXCEEDED: (cr.openai_chat, {"team_id": "team-1"}),
    Outcome.RATE_LIMITED: (cr.openai_chat, {}),
}
#: What makes the limited outcomes happen: a spent budget, a rate limit of zero room.
LIMITS = {
    Outcome.BUDGET_EXCEEDED: Policy({("team", "team-1"): Budget(1e-12, "month", "hard")}),
    Outcome.RATE_LIMITED: Policy({}, {("token", "tok-7"): RateLimit(rpm=1)}),
}


# AUDIT_UNAVAILABLE comes from the audit emitter, not the pipeline: see test_pipeline.test_audit_unavailable.
@pytest.mark.parametrize("outcome", [o for o in Outcome if o is not Outcome.AUDIT_UNAVAILABLE], ids=lambda o: o.value)
def test_pat_never_appears_in_the_response(outcome: Outcome) -> None:
    pat = generate_token()
    canned, state = SCENARIOS[outcome]
    cache = TokenCache()
    cache.upsert(record(**{"token_hash": hash_token(pat, HASH_KEY), **state}))
    if outcome is Outcome.POLICY_STALE:
        cache.fresh_until = time.monotonic() - 1
    check = canned(pat)

    response = _run(check, cache, LIMITS.get(outcome))

    assert metadata_of(response)["decision"] == outcome.value
    presented = {Outcome.TOKEN_MISSING: None, Outcome.TOKEN_MALFORMED: cr.mistyped(pat)}.get(outcome, pat)
    if presented is not None:
        assert presented.encode() in check.SerializeToString()  # the request did carry it
    wire = response.SerializeToString()
    for secret in {pat, presented or pat}:
        assert secret.encode() not in wire
        assert secret[len(TOKEN_PREFIX) :].encode() not in wire
    assert hash_token(pat, HASH_KEY).encode() not in wire
