"""What Envoy receives: the CheckResponse for an allowed request and for every kind of denial."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from envoy.config.core.v3.base_pb2 import HeaderValueOption
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse

from authz import request as request_codec
from authz import response as response_codec
from authz.cache import NO_PROFILE, ModelCatalog, ProfileCatalog, TokenCache, TokenRecord
from authz.limits import Budget, Policy, RateLimit
from authz.mcp import ToolCatalog
from authz.meter import Hit, Meter
from authz.outcomes import Outcome
from authz.pipeline import Decision, Limits, Pipeline
from authz.routes import DEFAULT_FAMILIES, Api, Family
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
    Outcome.ENDPOINT_NOT_ALLOWED: (403, PERMISSION_DENIED),
    Outcome.UPSTREAM_UNAVAILABLE: (503, UNAVAILABLE),
    Outcome.LENGTH_REQUIRED: (411, INVALID_ARGUMENT),
    Outcome.BODY_NOT_FORM: (400, INVALID_ARGUMENT),
    Outcome.TOOL_NOT_ALLOWED: (403, PERMISSION_DENIED),
    Outcome.RPC_INVALID: (400, INVALID_ARGUMENT),
}
#: OpenAI's error type per outcome, where it is not ``invalid_request_error``.
OPENAI_TYPES = {Outcome.AUDIT_UNAVAILABLE: "api_error", Outcome.POLICY_STALE: "api_error",
                Outcome.UPSTREAM_UNAVAILABLE: "api_error", Outcome.BUDGET_EXCEEDED: "insufficient_quota",
                Outcome.RATE_LIMITED: "requests"}
DENIALS = list(EXPECTED)
ANTHROPIC_TYPES = {
    401: "authentication_error",
    404: "not_found_error",
    413: "request_too_large",
    411: "invalid_request_error",
    400: "invalid_request_error",
    403: "permission_error",
    503: "api_error",
    429: "rate_limit_error",
}
#: Google's status names (``google.rpc.Code``) and AWS's error types by HTTP status, written out here.
GOOGLE_STATUSES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                   411: "INVALID_ARGUMENT", 413: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE"}
AWS_TYPES = {400: "ValidationException", 401: "UnrecognizedClientException", 403: "AccessDeniedException",
             404: "ResourceNotFoundException", 411: "ValidationException", 413: "ValidationException",
             429: "ThrottlingException", 503: "ServiceUnavailableException"}
#: The gateway's JSON-RPC codes: not authorised, and a tool or server outside the catalog.
RPC_NOT_AUTHORISED, RPC_TOOL_NOT_ALLOWED = -32030, -32031


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


def decision(outcome: Outcome, api: Api | None = Api.OPENAI, model: str | None = None, *,
             upstream: str | None = None, rpc_id: object = None, **fields) -> Decision:
    with_record = outcome not in (Outcome.TOKEN_MISSING, Outcome.TOKEN_MALFORMED, Outcome.TOKEN_UNKNOWN,
                                  Outcome.CREDENTIAL_AMBIGUOUS)
    return Decision(outcome, api, record(**fields) if with_record else None, model, upstream=upstream, rpc_id=rpc_id)


def build(outcome: Outcome, api: Api | None = Api.OPENAI, model: str | None = None, **fields) -> CheckResponse:
    return response_codec.build(decision(outcome, api, model, **fields), REQUEST_ID)


def headers_of(response: CheckResponse) -> dict[str, str]:
    return {option.header.key: option.header.value for option in response.denied_response.headers}


def body_of(response: CheckResponse) -> dict:
    return json.loads(response.denied_response.body)


def metadata_of(response: CheckResponse) -> dict:
    return dict(response.dynamic_metadata.items())


def test_expectations_cover_every_denial() -> None:
    assert set(EXPECTED) == set(Outcome) - {Outcome.ALLOWED, Outcome.ANSWERED}


# -- allowed --------------------------------------------------------------------------------------


def test_allowed_removes_every_client_credential_header() -> None:
    response = build(Outcome.ALLOWED, model="gpt-4o-mini", upstream="openai")
    assert response.WhichOneof("http_response") == "ok_response"
    assert response.status.code == 0
    assert set(response.ok_response.headers_to_remove) == {
        "authorization", "x-api-key", "api-key", "x-goog-api-key", "proxy-authorization", "x-amz-security-token",
    }
    # Only where to route it: Envoy injects the provider key itself, from its own secret.
    assert {option.header.key: option.header.value for option in response.ok_response.headers} == {
        "x-keyward-upstream": "openai"}


def test_the_routing_header_names_the_upstream_and_overwrites_any_sent() -> None:
    response = build(Outcome.ALLOWED, model="gpt-4o", upstream="azure-east")
    (option,) = list(response.ok_response.headers)
    assert (option.header.key, option.header.value) == ("x-keyward-upstream", "azure-east")
    assert option.append_action == HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    assert metadata_of(response)["provider"] == "azure-east"


def test_a_stream_that_did_not_ask_for_usage_is_marked_for_envoy() -> None:
    marked = decision(Outcome.ALLOWED, model="gpt-4o-mini", upstream="openai")
    marked.stream_usage = True
    headers = {o.header.key: o.header.value for o in response_codec.build(marked, REQUEST_ID).ok_response.headers}
    assert headers == {"x-keyward-upstream": "openai", response_codec.STREAM_USAGE_HEADER: "1"}


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
@pytest.mark.parametrize("api", [*Api, None], ids=lambda api: api.value if api else "no-api")
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
    # boto3 takes a Bedrock error's code from this header; no other API has it.
    assert headers.get("x-amzn-errortype") == (AWS_TYPES[http_status] if api is Api.BEDROCK else None)


@pytest.mark.parametrize("outcome", DENIALS, ids=lambda o: o.value)
@pytest.mark.parametrize("api", [Api.OPENAI, Api.AZURE, Api.MISTRAL, None],
                         ids=lambda api: api.value if api else "no-api")
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


@pytest.mark.parametrize("outcome", DENIALS, ids=lambda o: o.value)
def test_gemini_shaped_body(outcome: Outcome) -> None:
    """What google-genai's ``APIError`` reads: ``error.code``, ``error.message``, ``error.status``."""
    http_status = EXPECTED[outcome][0]
    error = body_of(build(outcome, Api.GEMINI))["error"]
    assert error["code"] == http_status and error["status"] == GOOGLE_STATUSES[http_status] and error["message"]
    assert error["details"] == [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": outcome.value,
                                 "domain": "keyward", "metadata": {"request_id": REQUEST_ID}}]


@pytest.mark.parametrize("outcome", DENIALS, ids=lambda o: o.value)
def test_bedrock_shaped_body(outcome: Outcome) -> None:
    body = body_of(build(outcome, Api.BEDROCK))
    assert set(body) == {"message", "code", "request_id"}
    assert body["code"] == outcome.value and body["request_id"] == REQUEST_ID and body["message"]


@pytest.mark.parametrize("outcome", DENIALS, ids=lambda o: o.value)
@pytest.mark.parametrize("rpc_id", [7, "call-1", None])
def test_mcp_denials_are_json_rpc_errors_answering_the_message(outcome: Outcome, rpc_id: object) -> None:
    body = body_of(build(outcome, Api.MCP, rpc_id=rpc_id))
    assert set(body) == {"jsonrpc", "id", "error"}
    assert body["jsonrpc"] == "2.0" and body["id"] == rpc_id
    expected_code = {Outcome.TOOL_NOT_ALLOWED: RPC_TOOL_NOT_ALLOWED, Outcome.RPC_INVALID: -32600,
                     Outcome.BODY_AMBIGUOUS: -32600}.get(outcome, RPC_NOT_AUTHORISED)
    assert body["error"]["code"] == expected_code and body["error"]["message"]
    assert body["error"]["data"] == {"code": outcome.value, "request_id": REQUEST_ID}


def test_a_limit_goes_into_each_apis_error() -> None:
    hit = Hit("budget", ("team", "team-1"), 3600, NOW + 3600, "USD 10/month")
    for api, find in [(Api.OPENAI, lambda b: b["error"]), (Api.ANTHROPIC, lambda b: b["error"]),
                      (Api.BEDROCK, lambda b: b)]:
        refused = decision(Outcome.BUDGET_EXCEEDED, api)
        refused.hit = hit
        limit = find(body_of(response_codec.build(refused, REQUEST_ID)))["limit"]
        assert (limit["kind"], limit["scope"], limit["id"]) == ("budget", "team", "team-1"), api


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


ANY = ProfileCatalog([("*", "*", None)], ["prod"])
TOOLS = ProfileCatalog([("*", "*", None)], ["prod"], families=DEFAULT_FAMILIES | {Family.TOOLS},
                       tools=ToolCatalog([("docs", "search_*")]))

#: For each outcome: the request (given the minted PAT) and the stored token's state.
SCENARIOS: dict[Outcome, tuple[Callable[[str], CheckRequest], dict[str, Any]]] = {
    Outcome.ALLOWED: (cr.openai_chat, {}),
    Outcome.ANSWERED: (cr.openai_models, {}),
    Outcome.TOKEN_MISSING: (lambda pat: cr.no_credential(), {}),
    Outcome.CREDENTIAL_AMBIGUOUS: (lambda pat: cr.two_x_api_keys(pat, pat), {}),
    Outcome.TOKEN_MALFORMED: (lambda pat: cr.anthropic_messages(cr.mistyped(pat)), {}),
    Outcome.TOKEN_UNKNOWN: (cr.openai_chat, {"token_hash": "someone-else"}),
    Outcome.TOKEN_REVOKED: (cr.anthropic_messages, {"revoked": True}),
    Outcome.TOKEN_EXPIRED: (cr.openai_chat, {"expires_at": NOW - 1}),
    Outcome.OWNER_DISABLED: (cr.openai_chat, {"owner_active": False}),
    Outcome.ROUTE_UNKNOWN: (cr.openai_fine_tuning_job, {}),
    Outcome.ENDPOINT_NOT_ALLOWED: (cr.openai_files, {}),  # a token from before teams: no files
    Outcome.UPSTREAM_UNAVAILABLE: (cr.openai_chat, {"profile": ProfileCatalog([("openai", "*", None, "azure-west")],
                                                                              ["prod"])}),
    Outcome.LENGTH_REQUIRED: (lambda pat: cr.openai_transcription(pat, declared=None), {"profile": ANY}),
    Outcome.BODY_NOT_FORM: (lambda pat: cr.openai_transcription(pat, content_type="application/json"),
                            {"profile": ANY}),
    Outcome.TOOL_NOT_ALLOWED: (lambda pat: cr.mcp_call(pat, tool="delete_page"), {"profile": TOOLS}),
    Outcome.RPC_INVALID: (lambda pat: cr.mcp_post(pat, b"not json"), {"profile": TOOLS}),
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


def test_pat_never_appears_in_a_listing() -> None:
    pat = generate_token()
    cache = TokenCache()
    cache.upsert(record(token_hash=hash_token(pat, HASH_KEY)))
    response = _run(cr.openai_models(pat), cache)
    assert response.denied_response.status.code == 200
    assert pat.encode() not in response.SerializeToString()
    assert pat[len(TOKEN_PREFIX):].encode() not in response.SerializeToString()


# -- model listings: answered by the gateway ---------------------------------------------------------


def _listing(api: Api, **fields: Any) -> Decision:
    listed = decision(Outcome.ANSWERED, api, upstream=api.value, **fields)
    listed.listing = True
    return listed


def test_a_listing_is_the_gateways_own_answer_with_status_200() -> None:
    listed = _listing(Api.OPENAI, catalog=ModelCatalog(["gpt-4o-mini", "my-model"]))
    listed.headers = (("x-ratelimit-limit-requests", "60"),)
    response = response_codec.build(listed, REQUEST_ID)
    assert response.WhichOneof("http_response") == "denied_response"
    # Envoy answers with denied_response only when the status is not OK; OK would forward the request.
    assert response.status.code != 0
    assert response.denied_response.status.code == 200
    assert headers_of(response) == {"content-type": "application/json", "x-ratelimit-limit-requests": "60"}
    assert body_of(response) == {"object": "list", "data": [
        {"id": "gpt-4o-mini", "object": "model", "created": 0, "owned_by": "openai"},
        {"id": "my-model", "object": "model", "created": 0, "owned_by": "openai"}]}
    assert metadata_of(response)["decision"] == "answered"


def test_a_listing_in_the_anthropic_shape() -> None:
    response = response_codec.build(_listing(Api.ANTHROPIC, catalog=ModelCatalog(["claude-b", "claude-a"])),
                                    REQUEST_ID)
    body = body_of(response)
    assert [m["id"] for m in body["data"]] == ["claude-a", "claude-b"]
    assert body["data"][0] == {"type": "model", "id": "claude-a", "display_name": "claude-a",
                               "created_at": "1970-01-01T00:00:00Z"}
    assert (body["has_more"], body["first_id"], body["last_id"]) == (False, "claude-a", "claude-b")


def test_an_empty_listing_is_still_a_listing() -> None:
    body = body_of(response_codec.build(_listing(Api.ANTHROPIC, catalog=ModelCatalog([])), REQUEST_ID))
    assert body == {"data": [], "has_more": False, "first_id": None, "last_id": None}
