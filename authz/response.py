"""Build Envoy's ``CheckResponse`` from a :class:`~authz.pipeline.Decision`.

An allowed request leaves with the client's credentials marked for removal (Envoy injects the
provider key itself, later, from its own secret) and with dynamic metadata naming the token, user,
team, environment and model, which Envoy's access log records. A denial carries the status and the
provider-shaped JSON body from :mod:`authz.outcomes`, plus the same metadata so the access log can
say who was refused and why.

Rate limits speak the OpenAI API's headers (``x-ratelimit-limit-requests`` and kin) on every answer
they apply to, so the SDKs' own back-off works unchanged; a 429 adds ``retry-after`` and, for a spent
budget (no retry helps before the period ends), ``x-should-retry: false``, which the OpenAI and
Anthropic SDKs honour.

An OpenAI stream that did not ask for usage gets ``x-keyward-stream-usage: 1``: Envoy's Lua filter
then adds ``"stream_options": {"include_usage": true}`` to the body (``envoy/gateway.yaml``), so the
provider reports the usage its cost is computed from. The stream then ends with one more chunk, with
empty ``choices`` and the usage, which the SDKs handle.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from envoy.config.core.v3.base_pb2 import HeaderValue, HeaderValueOption
from envoy.service.auth.v3.external_auth_pb2 import CheckResponse, DeniedHttpResponse, OkHttpResponse
from envoy.type.v3.http_status_pb2 import HttpStatus
from google.protobuf.struct_pb2 import Struct
from google.rpc.status_pb2 import Status

from authz.listing import listing
from authz.outcomes import DENIALS, Outcome, aws_error_type, error_body
from authz.pipeline import Decision
from authz.upstreams import ROUTE_HEADER, Api, Upstreams

#: Every header through which a client could present a credential to a provider (an AWS session token
#: included: Envoy signs Bedrock requests with its own credentials).
CLIENT_CREDENTIAL_HEADERS = (
    "authorization",
    "x-api-key",
    "api-key",
    "x-goog-api-key",
    "proxy-authorization",
    "x-amz-security-token",
)

#: Query parameters through which a client could present a credential (Gemini's ``?key=``, and kin): removed
#: from every allowed request, so neither a PAT nor a client's own provider key rides to an upstream in a URL.
CLIENT_CREDENTIAL_PARAMETERS = ("key", "api_key", "api-key", "access_token")

_JSON = HeaderValueOption(header=HeaderValue(key="content-type", value="application/json"))
STREAM_USAGE_HEADER = "x-keyward-stream-usage"
_STREAM_USAGE = HeaderValueOption(header=HeaderValue(key=STREAM_USAGE_HEADER, value="1"),
                                  append_action=HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD)
_NO_RETRY = HeaderValueOption(header=HeaderValue(key="x-should-retry", value="false"))
_WWW_AUTHENTICATE = HeaderValueOption(header=HeaderValue(key="www-authenticate", value='Bearer realm="keyward"'))


def _metadata(decision: Decision) -> Struct:
    fields: dict[str, str] = {"decision": decision.outcome.value}
    record = decision.record
    if record is not None:
        fields.update(
            token_id=record.token_id,
            user_id=record.user_id,
            user=record.user_email,
            environment=record.environment,
        )
        if record.team:
            fields["team"] = record.team
        if record.project:
            fields["project"] = record.project
    if decision.upstream is not None:
        fields["provider"] = decision.upstream
    elif decision.api is not None:
        fields["provider"] = decision.api.value
    if decision.model is not None:
        fields["model"] = decision.model
    metadata = Struct()
    metadata.update(fields)
    return metadata


def _headers(pairs: tuple[tuple[str, str], ...]) -> list[HeaderValueOption]:
    return [HeaderValueOption(header=HeaderValue(key=key, value=value)) for key, value in pairs]


def _limit(decision: Decision) -> dict | None:
    hit = decision.hit
    if hit is None:
        return None
    found = {"kind": hit.kind, "scope": hit.scope[0], "id": hit.scope[1], "retry_after_seconds": hit.retry_after}
    if hit.period_end is not None:
        found["period_end"] = datetime.fromtimestamp(hit.period_end, tz=UTC).isoformat(timespec="seconds")
    return found


def build(decision: Decision, request_id: str, upstreams: Upstreams | None = None) -> CheckResponse:
    if decision.outcome is Outcome.ANSWERED:
        return _listing(decision, upstreams)
    if decision.allowed:
        ok = OkHttpResponse(headers_to_remove=CLIENT_CREDENTIAL_HEADERS,
                            query_parameters_to_remove=CLIENT_CREDENTIAL_PARAMETERS)
        if decision.upstream is not None:
            ok.headers.append(HeaderValueOption(header=HeaderValue(key=ROUTE_HEADER, value=decision.upstream),
                                                append_action=HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD))
        if decision.headers:
            ok.response_headers_to_add.extend(_headers(decision.headers))
        if decision.stream_usage:
            ok.headers.append(_STREAM_USAGE)
        return CheckResponse(status=Status(code=0), ok_response=ok, dynamic_metadata=_metadata(decision))
    denial = DENIALS[decision.outcome]
    body = json.dumps(error_body(decision.outcome, decision.api, request_id, decision.detail, _limit(decision),
                                 decision.rpc_id, decision.rpc_code))
    headers = [_JSON]
    if decision.api is Api.BEDROCK:
        headers.append(HeaderValueOption(header=HeaderValue(key="x-amzn-errortype",
                                                            value=aws_error_type(decision.outcome))))
    if denial.http_status == 401:
        headers.append(_WWW_AUTHENTICATE)
    if decision.hit is not None:
        headers.append(HeaderValueOption(header=HeaderValue(key="retry-after", value=str(decision.hit.retry_after))))
        if decision.hit.kind == "budget":
            headers.append(_NO_RETRY)
    headers.extend(_headers(decision.headers))
    return CheckResponse(
        status=Status(code=denial.grpc_code, message=decision.outcome.value),
        denied_response=DeniedHttpResponse(
            status=HttpStatus(code=denial.http_status),
            headers=headers,
            body=body,
        ),
        dynamic_metadata=_metadata(decision),
    )


def _listing(decision: Decision, upstreams: Upstreams | None) -> CheckResponse:
    """``GET …/models`` answered here, from the token's catalog (:mod:`authz.listing`): Envoy sends the
    body as the reply (a denied response with status 200; the audit log records it as allowed)."""
    assert decision.api is not None and decision.record is not None
    body = listing(decision.record, decision.api, upstreams if upstreams is not None else Upstreams.parse(None))
    headers = [_JSON, *_headers(decision.headers)]
    return CheckResponse(
        status=Status(code=7, message="answered by the gateway"),
        denied_response=DeniedHttpResponse(status=HttpStatus(code=200), headers=headers, body=body.decode()),
        dynamic_metadata=_metadata(decision),
    )
