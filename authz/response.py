"""Build Envoy's ``CheckResponse`` from a :class:`~authz.pipeline.Decision`.

An allowed request leaves with the client's credentials marked for removal (Envoy injects the
provider key itself, later, from its own secret) and with dynamic metadata naming the token, user,
team, environment and model, which Envoy's access log records. A denial carries the status and the
provider-shaped JSON body from :mod:`authz.outcomes`, plus the same metadata so the access log can
say who was refused and why.
"""

from __future__ import annotations

import json

from envoy.config.core.v3.base_pb2 import HeaderValue, HeaderValueOption
from envoy.service.auth.v3.external_auth_pb2 import CheckResponse, DeniedHttpResponse, OkHttpResponse
from envoy.type.v3.http_status_pb2 import HttpStatus
from google.protobuf.struct_pb2 import Struct
from google.rpc.status_pb2 import Status

from authz.outcomes import DENIALS, error_body
from authz.pipeline import Decision

#: Every header through which a client could present a credential to a provider.
CLIENT_CREDENTIAL_HEADERS = (
    "authorization",
    "x-api-key",
    "api-key",
    "x-goog-api-key",
    "proxy-authorization",
)

_JSON = HeaderValueOption(header=HeaderValue(key="content-type", value="application/json"))
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
    if decision.api is not None:
        fields["provider"] = decision.api.value
    if decision.model is not None:
        fields["model"] = decision.model
    metadata = Struct()
    metadata.update(fields)
    return metadata


def build(decision: Decision, request_id: str) -> CheckResponse:
    if decision.allowed:
        return CheckResponse(
            status=Status(code=0),
            ok_response=OkHttpResponse(headers_to_remove=CLIENT_CREDENTIAL_HEADERS),
            dynamic_metadata=_metadata(decision),
        )
    denial = DENIALS[decision.outcome]
    body = json.dumps(error_body(decision.outcome, decision.api, request_id, decision.detail))
    headers = [_JSON]
    if denial.http_status == 401:
        headers.append(_WWW_AUTHENTICATE)
    return CheckResponse(
        status=Status(code=denial.grpc_code, message=decision.outcome.value),
        denied_response=DeniedHttpResponse(
            status=HttpStatus(code=denial.http_status),
            headers=headers,
            body=body,
        ),
        dynamic_metadata=_metadata(decision),
    )
