"""Render Envoy's configuration for the gateway and write the provider-key secrets it reads.

Provider keys go into SDS files (mode 0600) in Envoy's own secrets directory and nowhere else: not
into the rendered config, not into authz's environment, not into a log line. Envoy watches the
directory, so rotating a key is a file replacement that no client notices.

Envoy's admin interface can raise the log level (Envoy then logs request headers, tokens included)
or stop the gateway, so it listens on a Unix socket only its owner may use (mode 0600), unless a
``host:port`` is given on purpose.

What reaches a provider from the client is only what the API needs: credential headers, cookies,
``openai-organization`` / ``openai-project`` (the gateway's own configuration decides those) and any
``x-keyward-*`` header are removed.
"""

from __future__ import annotations

import json
import os
import re
import string
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from authz import routes, upstreams
from authz.upstreams import Api, Kind

TEMPLATE = Path(__file__).resolve().parents[2] / "envoy" / "gateway.yaml"

_GENERIC_MESSAGE = "Gateway error (%RESPONSE_CODE_DETAILS%): %LOCAL_REPLY_BODY%"
_OPENAI_ERROR = {
    "error": {
        "message": "%LOCAL_REPLY_BODY%",
        "type": "invalid_request_error",
        "param": None,
        "code": "%RESPONSE_CODE_DETAILS%",
        "request_id": "%REQ(X-REQUEST-ID)%",
    }
}


def _anthropic_error(kind: str) -> dict:
    return {
        "type": "error",
        "error": {"type": kind, "message": "%LOCAL_REPLY_BODY%", "code": "%RESPONSE_CODE_DETAILS%"},
        "request_id": "%REQ(X-REQUEST-ID)%",
    }


# Envoy's own local replies (not authz denials, which carry their own body) by response flag:
# downstream protocol errors, unreachable or failing upstreams, timeouts, and authz failures.
_ENVOY_FLAGS = ["DPE", "UH", "UF", "UO", "URX", "NR", "UT", "UC", "UMSDR", "DT", "SI", "NC"]


@dataclass(frozen=True)
class Upstream:
    """Where a provider lives: scheme, host, port and base path of its API."""

    scheme: str
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, url: str) -> Upstream:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"upstream URL must be http(s)://host[:port][/path], got {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return cls(parts.scheme, parts.hostname, port, parts.path.rstrip("/"))

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        return self.host if self.port == default else f"{self.host}:{self.port}"


def _mapper(
    status: int | None, body: dict, *, anthropic: bool, flags: list[str] | None = None, details: str | None = None
) -> dict:
    filters: list[dict] = []
    if status is not None:
        filters.append(
            {
                "status_code_filter": {
                    "comparison": {
                        "op": "EQ",
                        "value": {"default_value": status, "runtime_key": f"keyward.local_reply.{status}"},
                    }
                }
            }
        )
    if flags:
        filters.append({"response_flag_filter": {"flags": flags}})
    if details:
        # Envoy's own reason for the reply; tells "authz unreachable" from an authz denial with a body
        # ("!ext_authz_denied": any reply but an authz denial, which carries its own body and shape).
        expression = (f"response.code_details != '{details[1:]}'" if details.startswith("!")
                      else f"response.code_details == '{details}'")
        filters.append({"extension_filter": {
            "name": "envoy.access_loggers.extension_filters.cel",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter",
                "expression": expression,
            },
        }})
    if anthropic:
        filters.append({"header_filter": {"header": {"name": ":path", "string_match": {"prefix": "/anthropic/"}}}})
    match = filters[0] if len(filters) == 1 else {"and_filter": {"filters": filters}}
    return {"filter": match, "body_format_override": {"json_format": body, "content_type": "application/json"}}


def _with_message(body: dict, message: str) -> dict:
    return json.loads(json.dumps(body).replace("%LOCAL_REPLY_BODY%", message))


def local_reply_mappers() -> list[dict]:
    """JSON bodies, in the called API's shape, for every reply Envoy makes up itself."""
    unavailable = "The gateway's authorization service is unavailable; the request was not forwarded."
    openai_503 = _with_message(_OPENAI_ERROR, unavailable)
    anthropic_503 = _with_message(_anthropic_error("api_error"), unavailable)
    too_large = "The request body is larger than the gateway accepts."
    openai_413 = _with_message(_OPENAI_ERROR, too_large)
    anthropic_413 = _with_message(_anthropic_error("request_too_large"), too_large)
    no_route = "No provider route for this path: use /openai/v1/… or /anthropic/v1/…."
    openai_404 = _with_message(_OPENAI_ERROR, no_route)
    return [
        _mapper(404, openai_404, anthropic=False, flags=["NR"]),
        _mapper(503, anthropic_503, anthropic=True, flags=["UAEX"], details="ext_authz_error"),
        _mapper(503, openai_503, anthropic=False, flags=["UAEX"], details="ext_authz_error"),
        _mapper(413, anthropic_413, anthropic=True, details="!ext_authz_denied"),
        _mapper(413, openai_413, anthropic=False, details="!ext_authz_denied"),
        _mapper(
            None, _with_message(_anthropic_error("api_error"), _GENERIC_MESSAGE), anthropic=True, flags=_ENVOY_FLAGS
        ),
        _mapper(None, _with_message(_OPENAI_ERROR, _GENERIC_MESSAGE), anthropic=False, flags=_ENVOY_FLAGS),
    ]


USAGE_NAMESPACE = "keyward.usage"

# (JSON path in the provider's response, metadata key): both APIs' names map onto one pair.
_USAGE_PATHS = [
    (("usage", "prompt_tokens"), "prompt_tokens"),
    (("usage", "completion_tokens"), "completion_tokens"),
    (("usage", "input_tokens"), "prompt_tokens"),
    (("usage", "output_tokens"), "completion_tokens"),
    (("message", "usage", "input_tokens"), "prompt_tokens"),
    # Cached input: OpenAI's chat and responses APIs (part of the prompt tokens), Anthropic's cache
    # reads and writes (apart from its input tokens), in JSON and in a stream's message_start.
    (("usage", "prompt_tokens_details", "cached_tokens"), "cached_tokens"),
    (("usage", "input_tokens_details", "cached_tokens"), "cached_tokens"),
    (("usage", "cache_read_input_tokens"), "cached_tokens"),
    (("message", "usage", "cache_read_input_tokens"), "cached_tokens"),
    (("usage", "cache_creation_input_tokens"), "cache_write_tokens"),
    (("message", "usage", "cache_creation_input_tokens"), "cache_write_tokens"),
    # OpenAI's Responses API streams its usage in the response.completed event.
    (("response", "usage", "input_tokens"), "prompt_tokens"),
    (("response", "usage", "output_tokens"), "completion_tokens"),
    (("response", "usage", "input_tokens_details", "cached_tokens"), "cached_tokens"),
    # Gemini: usageMetadata in the answer and in every streamed chunk (cumulative: the last one counts).
    (("usageMetadata", "promptTokenCount"), "prompt_tokens"),
    (("usageMetadata", "candidatesTokenCount"), "completion_tokens"),
    (("usageMetadata", "cachedContentTokenCount"), "cached_tokens"),
    # Bedrock's Converse API (its stream is AWS's binary event stream: BEDROCK_STREAM_USAGE_LUA reads that).
    (("usage", "inputTokens"), "prompt_tokens"),
    (("usage", "outputTokens"), "completion_tokens"),
    (("usage", "cacheReadInputTokens"), "cached_tokens"),
    (("usage", "cacheWriteInputTokens"), "cache_write_tokens"),
]
#: The model that answered (JSON bodies, OpenAI's stream chunks, Anthropic's message_start), for the
#: GenAI span's ``gen_ai.response.model`` (:mod:`authz.tracing`).
_RESPONSE_MODEL_PATHS = [(("model",), "response_model"), (("message", "model"), "response_model"),
                         (("response", "model"), "response_model"), (("modelVersion",), "response_model")]


#: Envoy's Lua filter: asks the provider for a stream's usage when authz says the client did not.
STREAM_USAGE_LUA = """
function envoy_on_request(handle)
  local headers = handle:headers()
  if headers:get("x-keyward-stream-usage") == nil then
    return
  end
  headers:remove("x-keyward-stream-usage")
  local body = handle:body()
  if body == nil then
    return
  end
  local text = body:getBytes(0, body:length())
  local open = string.find(text, "{", 1, true)
  if open == nil then
    return
  end
  local patched = string.sub(text, 1, open) .. '"stream_options":{"include_usage":true},' .. string.sub(text, open + 1)
  body:setBytes(patched)
  if headers:get("content-length") ~= nil then
    headers:replace("content-length", tostring(string.len(patched)))
  end
end
"""


#: Envoy's Lua filter on Bedrock's routes: its streams are AWS's binary event stream, which no JSON or
#: SSE parser reads, so this reads the usage from the stream's last event (``metadata``: ``"usage":
#: {"inputTokens":…}`` in Converse, ``"amazon-bedrock-invocationMetrics"`` in InvokeModel's) as the
#: chunks pass, without holding them back.
BEDROCK_STREAM_USAGE_LUA = """
local names = {
  {"inputTokens", "prompt_tokens"}, {"outputTokens", "completion_tokens"},
  {"cacheReadInputTokens", "cached_tokens"}, {"cacheWriteInputTokens", "cache_write_tokens"},
  {"inputTokenCount", "prompt_tokens"}, {"outputTokenCount", "completion_tokens"},
  {"cacheReadInputTokenCount", "cached_tokens"}, {"cacheWriteInputTokenCount", "cache_write_tokens"},
}
local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local function unbase64(text)
  local bits = text:gsub("[^%w%+/]", ""):gsub(".", function(c)
    local index = alphabet:find(c, 1, true) - 1
    local out = ""
    for i = 6, 1, -1 do
      out = out .. (index % 2 ^ i - index % 2 ^ (i - 1) > 0 and "1" or "0")
    end
    return out
  end)
  return (bits:gsub("%d%d%d?%d?%d?%d?%d?%d?", function(byte)
    if #byte ~= 8 then
      return ""
    end
    local value = 0
    for i = 1, 8 do
      value = value + (byte:sub(i, i) == "1" and 2 ^ (8 - i) or 0)
    end
    return string.char(value)
  end))
end
local function scan(text, found)
  for _, pair in ipairs(names) do
    for value in string.gmatch(text, '"' .. pair[1] .. '"%s*:%s*(%d+)') do
      found[pair[2]] = tonumber(value)
    end
  end
end
function envoy_on_response(handle)
  local kind = handle:headers():get("content-type") or ""
  if string.find(kind, "eventstream", 1, true) == nil then
    return
  end
  local found = {}
  local pending = ""
  for chunk in handle:bodyChunks() do
    pending = pending .. chunk:getBytes(0, chunk:length())
    -- Whole events only: an event's JSON payload ends with "}" before the frame's CRC.
    local last = 0
    for stop in string.gmatch(pending, "()}") do
      last = stop
    end
    if last > 0 then
      local complete = string.sub(pending, 1, last)
      scan(complete, found)
      for encoded in string.gmatch(complete, '"bytes"%s*:%s*"([%w%+/=]+)"') do
        local decoded = unbase64(encoded)
        if string.find(decoded, "invocationMetrics", 1, true) then
          scan(decoded, found)
        end
      end
      pending = string.sub(pending, last + 1)
    end
  end
  local metadata = handle:streamInfo():dynamicMetadata()
  for key, value in pairs(found) do
    metadata:set("keyward.usage", key, value)
  end
end
"""


#: Envoy's Lua filter on Anthropic's routes: a message batch names its results by absolute URL
#: (``results_url``, at the provider's host), which the Anthropic SDK follows with the client's
#: credentials, so the client's PAT would go straight to the provider. The URL is rewritten to the same
#: path at the gateway, as the client reached it. Only message-batch answers are read (small JSON);
#: streams pass untouched.
ANTHROPIC_BATCH_LUA = """
function envoy_on_request(handle)
  local path = handle:headers():get(":path") or ""
  if string.find(path, "/messages/batches", 1, true) == nil then
    return
  end
  local scheme = handle:headers():get("x-forwarded-proto") or "http"
  local authority = handle:headers():get(":authority") or ""
  handle:streamInfo():dynamicMetadata():set("keyward.batch", "base", scheme .. "://" .. authority .. "/anthropic")
end
function envoy_on_response(handle)
  local found = handle:streamInfo():dynamicMetadata():get("keyward.batch")
  if found == nil or found["base"] == nil then
    return
  end
  local body = handle:body()
  if body == nil then
    return
  end
  local text = body:getBytes(0, body:length())
  local base = string.gsub(found["base"], "%%", "%%%%")
  local at_provider = '("results_url"%s*:%s*")[^"]-(/v1/messages/batches/)'
  local rewritten, count = string.gsub(text, at_provider, "%1" .. base .. "%2")
  if count > 0 then
    body:setBytes(rewritten)
    handle:headers():replace("content-length", tostring(string.len(rewritten)))
  end
end
"""


def audit_log_format() -> dict:
    """The format of Envoy's audit log, one JSON object per finished request, which authz reads
    (``authz.audit.records.outcome_line``): metadata only, never content."""
    return {"json_format": {
        "at": "%START_TIME(%Y-%m-%dT%H:%M:%S.%6fZ)%",
        "request_id": "%REQ(X-REQUEST-ID)%",
        "connection": "%CONNECTION_ID%",
        "method": "%REQ(:METHOD)%",
        "route": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
        "status": "%RESPONSE_CODE%",
        "details": "%RESPONSE_CODE_DETAILS%",
        "flags": "%RESPONSE_FLAGS%",
        "duration_ms": "%DURATION%",
        "upstream_ms": "%COMMON_DURATION(US_TX_BEG:US_RX_END:ms)%",
        "bytes_in": "%BYTES_RECEIVED%",
        "bytes_out": "%BYTES_SENT%",
        "prompt_tokens": f"%DYNAMIC_METADATA({USAGE_NAMESPACE}:prompt_tokens)%",
        "completion_tokens": f"%DYNAMIC_METADATA({USAGE_NAMESPACE}:completion_tokens)%",
        "cached_tokens": f"%DYNAMIC_METADATA({USAGE_NAMESPACE}:cached_tokens)%",
        "cache_write_tokens": f"%DYNAMIC_METADATA({USAGE_NAMESPACE}:cache_write_tokens)%",
        "decision": "%DYNAMIC_METADATA(envoy.filters.http.ext_authz:decision)%",
        # What the outcome's cost is computed from, and whom it counts against, should authz have
        # restarted between the decision and the outcome.
        "token_id": "%DYNAMIC_METADATA(envoy.filters.http.ext_authz:token_id)%",
        "provider": "%DYNAMIC_METADATA(envoy.filters.http.ext_authz:provider)%",
        "model": "%DYNAMIC_METADATA(envoy.filters.http.ext_authz:model)%",
        # For the request's GenAI span (authz.tracing), not stored: the model the provider says answered,
        # and the trace context of Envoy's upstream span (its router writes it into the request's
        # headers), which that span joins.
        "response_model": f"%DYNAMIC_METADATA({USAGE_NAMESPACE}:response_model)%",
        "traceparent": "%REQ(TRACEPARENT)%",
    }}


def usage_rules() -> list[dict]:
    return [
        {"selectors": [{"key": part} for part in path],
         "on_present": {"metadata_namespace": USAGE_NAMESPACE, "key": key, "type": kind}}
        for paths, kind in ((_USAGE_PATHS, "NUMBER"), (_RESPONSE_MODEL_PATHS, "STRING"))
        for path, key in paths
    ]


#: Mode of Envoy's admin socket: its owner only.
ADMIN_SOCKET_MODE = 0o600


#: authz (in Envoy's group, in Kubernetes) may ask Envoy to reopen its logs, and nothing else.
CONTROL_SOCKET_MODE = 0o660


def _address(address: str, mode: int | None = None) -> dict:
    """``unix:/path`` (a pipe, with ``mode`` when given) or ``host:port``."""
    if address.startswith("unix:"):
        pipe: dict = {"path": address[len("unix:") :]}
        if mode is not None:
            pipe["mode"] = mode
        return {"pipe": pipe}
    host, _, port = address.rpartition(":")
    return {"socket_address": {"address": host, "port_value": int(port)}}


def openai_headers(organization: str | None, project: str | None) -> list[dict]:
    """The ``openai-organization`` / ``openai-project`` headers the gateway sends, from its own settings
    (the client's were removed): overwritten, never appended to."""
    return [
        {"header": {"key": key, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
        for key, value in (("openai-organization", organization), ("openai-project", project))
        if value
    ]


def aws_signing(region: str, credentials_file: Path) -> dict:
    """Envoy's AWS request-signing filter (SigV4 for Bedrock, payload included) with credentials from a
    shared-credentials file in Envoy's secrets directory, re-read when it is replaced (rotation without a
    restart). Only this provider is asked: not the environment, not an instance profile."""
    return {
        "name": "envoy.filters.http.aws_request_signing",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.aws_request_signing.v3.AwsRequestSigning",
            "service_name": "bedrock",
            "region": region,
            "use_unsigned_payload": False,
            "credential_provider": {
                "custom_credential_provider_chain": True,
                "credentials_file_provider": {
                    "credentials_data_source": {"filename": str(credentials_file),
                                                "watched_directory": {"path": str(credentials_file.parent)}},
                    "profile": "default",
                },
            },
        },
    }


def credential_injector(name: str, *, secret_file: Path, header: str) -> dict:
    """The upstream filter that sets ``header`` to the provider key from an SDS file."""
    return {
        "name": "envoy.filters.http.credential_injector",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.credential_injector.v3.CredentialInjector",
            "overwrite": True,
            "allow_request_without_credential": False,
            "credential": {
                "name": "envoy.http.injected_credentials.generic",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.http.injected_credentials.generic.v3.Generic",
                    "credential": {
                        "name": f"{name}-key",
                        "sds_config": {
                            "path_config_source": {
                                "path": str(secret_file),
                                "watched_directory": {"path": str(secret_file.parent)},
                            }
                        },
                    },
                    "header": header,
                },
            },
        },
    }


def provider_cluster(name: str, upstream: Upstream, *, secret_file: Path, header: str | None = None,
                     aws_region: str | None = None) -> dict:
    """A provider cluster whose upstream filter injects the provider key from an SDS file (``header``), or
    signs each request with AWS SigV4 (``aws_region``: Bedrock, credentials from ``secret_file``)."""
    if aws_region is not None:
        injector = aws_signing(aws_region, secret_file)
    else:
        assert header is not None
        injector = credential_injector(name, secret_file=secret_file, header=header)
    cluster: dict = {
        "name": name,
        "type": "STRICT_DNS" if not _is_ip(upstream.host) else "STATIC",
        "dns_lookup_family": "V4_PREFERRED",
        "connect_timeout": "5s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http_protocol_options": {}},
                "http_filters": [
                    injector,
                    {
                        "name": "envoy.filters.http.upstream_codec",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"
                        },
                    },
                ],
            }
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {"socket_address": {"address": upstream.host, "port_value": upstream.port}}
                            }
                        }
                    ]
                }
            ],
        },
    }
    if upstream.scheme == "https":
        cluster["transport_socket"] = upstream_tls(upstream.host)
    return cluster


#: Envoy's cluster for the OTLP/gRPC collector, and the service name its spans carry.
OTLP_CLUSTER = "opentelemetry"
ENVOY_SERVICE_NAME = "keyward-gateway"


def tracing(sample_ratio: float) -> dict:
    """The gateway listener's OpenTelemetry tracer: W3C ``traceparent`` in and out (to authz's Check,
    whose gRPC metadata carries the ext_authz span, and to the provider), a span per request and one per
    upstream call, sent over OTLP/gRPC.

    Sampling is the tracer's own parent-based sampler, not the connection manager's random sampling
    (which overrides a client's sampled flag): a client's ``traceparent`` decides (sampled: continued,
    whatever the ratio; not sampled: not recorded); a request without one starts a trace sampled at
    ``sample_ratio``, decided from its trace id."""
    return {
        "spawn_upstream_span": True,
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                "grpc_service": {"envoy_grpc": {"cluster_name": OTLP_CLUSTER}, "timeout": "2s"},
                "service_name": ENVOY_SERVICE_NAME,
                "sampler": {
                    "name": "envoy.tracers.opentelemetry.samplers.parent_based",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.tracers.opentelemetry.samplers.v3"
                                 ".ParentBasedSamplerConfig",
                        "wrapped_sampler": {
                            "name": "envoy.tracers.opentelemetry.samplers.trace_id_ratio_based",
                            "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.tracers.opentelemetry.samplers.v3"
                                         ".TraceIdRatioBasedSamplerConfig",
                                "sampling_percentage": {"numerator": int(sample_ratio * 1_000_000),
                                                        "denominator": "MILLION"},
                            },
                        },
                    },
                },
            },
        },
    }


def otlp_cluster(endpoint: str) -> dict:
    """The OTLP/gRPC collector at ``endpoint`` (``http(s)://host:port``): HTTP/2, TLS for https."""
    upstream = Upstream.parse(endpoint)
    cluster: dict = {
        "name": OTLP_CLUSTER,
        "type": "STRICT_DNS" if not _is_ip(upstream.host) else "STATIC",
        "dns_lookup_family": "V4_PREFERRED",
        "connect_timeout": "2s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": OTLP_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {
                "address": {"socket_address": {"address": upstream.host, "port_value": upstream.port}}}}]}],
        },
    }
    if upstream.scheme == "https":
        cluster["transport_socket"] = upstream_tls(upstream.host, alpn=["h2"])
    return cluster


def upstream_tls(host: str, *, alpn: list[str] | None = None) -> dict:
    """TLS to an upstream: SNI and a certificate for ``host`` from the system's CAs (``alpn``: h2 for gRPC)."""
    context: dict = {"validation_context": {
        "trusted_ca": {"filename": "/etc/ssl/certs/ca-certificates.crt"},
        "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": host}}],
    }}
    if alpn:
        context = {"alpn_protocols": alpn, **context}
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": host,
            "common_tls_context": context,
        },
    }


def _is_ip(host: str) -> bool:
    return all(part.isdigit() for part in host.split(".")) and host.count(".") == 3


def write_secret(path: Path, name: str, value: str) -> None:
    """Write one SDS secret file atomically with mode 0600 (Envoy picks up the rename)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    document = {
        "resources": [
            {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
                "name": name,
                "generic_secret": {"secret": {"inline_string": value}},
            }
        ]
    }
    _write_private(path, json.dumps(document))


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    staging = path.with_suffix(".tmp")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(staging, path)


@dataclass(frozen=True)
class GatewayLayout:
    gateway_port: int
    #: ``unix:/path`` (mode 0600) or, on purpose only, ``127.0.0.1:port``.
    admin_address: str
    authz_address: str
    access_log_path: Path
    #: Envoy's audit log (read by authz) and the socket where authz asks it to reopen its logs.
    audit_log_path: Path
    control_address: str
    secrets_dir: Path
    openai: Upstream
    anthropic: Upstream
    listen_address: str = "127.0.0.1"
    max_body_bytes: int = 1_048_576
    authz_timeout: str = "1s"
    node_id: str = "keyward-gateway-0"
    #: Sent to OpenAI as openai-organization / openai-project when set; clients cannot choose them.
    openai_organization: str | None = None
    openai_project: str | None = None
    #: OpenTelemetry traces to this OTLP/gRPC collector (``http(s)://host:port``); ``None``: no tracer.
    otlp_endpoint: str | None = None
    trace_sample_ratio: float = 1.0
    #: The operator's other upstreams (Azure, Gemini, Bedrock, Mistral, OpenAI-compatible servers, MCP
    #: servers), each where Envoy reaches it.
    extra: tuple[Target, ...] = ()

    @property
    def targets(self) -> tuple[Target, ...]:
        return (Target(upstreams.Upstream("openai", Kind.OPENAI, ""), self.openai),
                Target(upstreams.Upstream("anthropic", Kind.ANTHROPIC, ""), self.anthropic), *self.extra)


@dataclass(frozen=True)
class Target:
    """An upstream (:mod:`authz.upstreams`) and where Envoy reaches it (its URL, or the mock provider's)."""

    upstream: upstreams.Upstream
    url: Upstream


#: How much of an upload's body authz sees: enough for the form fields the SDKs send before the file.
UPLOAD_HEAD_BYTES = 65_536


def _header_is(name: str) -> list[dict]:
    return [{"name": upstreams.ROUTE_HEADER, "string_match": {"exact": name}}]


def upstream_routes(targets: tuple[Target, ...]) -> list[dict]:
    """One route per upstream and API it serves, chosen by authz's routing header (after ext_authz, whose
    ``clear_route_cache`` makes Envoy match again): the upstream's cluster, its path and its host."""
    routes = []
    for target in targets:
        upstream, url = target.upstream, target.url
        for api in upstream.apis:
            suffix = upstreams.UPSTREAM_PATHS[upstream.kind][api]
            if api is Api.MCP:
                match: dict = {"path_separated_prefix": f"/mcp/{upstream.name}"}
                rewrite = url.path or "/"
            else:
                match = {"prefix": upstreams.PREFIXES[api]}
                rewrite = url.path + suffix
            found: dict = {
                "match": {**match, "headers": _header_is(upstream.name)},
                "route": {"cluster": upstream.name, "prefix_rewrite": rewrite, "host_rewrite_literal": url.host_header,
                          "timeout": "600s"},
            }
            script = {Kind.BEDROCK: BEDROCK_STREAM_USAGE_LUA, Kind.ANTHROPIC: ANTHROPIC_BATCH_LUA}.get(upstream.kind)
            if script is not None:
                found["typed_per_filter_config"] = {"envoy.filters.http.lua": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute",
                    "source_code": {"inline_string": script}}}
            routes.append(found)
    return routes


def _upload_matches() -> list[dict]:
    """A route match for every upload path (:data:`authz.routes.SERVED` endpoints with an upload limit)."""
    matches: list[dict] = []
    for api, method, rest, _ in routes.SERVED:
        found = routes.match(method, upstreams.PREFIXES[api] + rest.replace("{model}", "m").replace("{id}", "i"))
        if found is None or found.endpoint.upload_limit is None:
            continue
        path = upstreams.PREFIXES[api] + rest
        if "{" not in path:
            matches.append({"path": path})
        else:
            regex = re.escape(path).replace(r"\{model\}", "[^/]+").replace(r"\{id\}", "[^/]+")
            matches.append({"safe_regex": {"regex": regex}})
    return matches


def entry_routes() -> list[dict]:
    """The routes a request matches before authz has chosen its upstream. They decide only how much of
    the body authz sees (an upload: its head, the rest streams through) and never forward anything: a
    request that authz allowed without naming an upstream gets a 503 (fail closed)."""
    unchosen = {"direct_response": {"status": 503, "body": {"inline_string": "No upstream was chosen."}}}
    head = {"envoy.filters.http.ext_authz": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
        "check_settings": {"with_request_body": {"max_request_bytes": UPLOAD_HEAD_BYTES,
                                                 "allow_partial_message": True, "pack_as_bytes": True}},
    }}
    entries = [{"match": match, **unchosen, "typed_per_filter_config": head} for match in _upload_matches()]
    entries += [{"match": {"prefix": prefix}, **unchosen} for prefix in upstreams.PREFIXES.values()]
    return entries


def render(layout: GatewayLayout) -> dict:
    text = string.Template(TEMPLATE.read_text()).substitute(
        node_id=layout.node_id,
        admin_address=json.dumps(_address(layout.admin_address, ADMIN_SOCKET_MODE)),
        listen_address=layout.listen_address,
        gateway_port=layout.gateway_port,
        access_log_path=layout.access_log_path,
        audit_log_path=layout.audit_log_path,
        audit_log_format=json.dumps(audit_log_format()),
        control_address=json.dumps(_address(layout.control_address, CONTROL_SOCKET_MODE)),
        local_reply_mappers=json.dumps(local_reply_mappers()),
        authz_timeout=layout.authz_timeout,
        max_body_bytes=layout.max_body_bytes,
        routes=json.dumps(upstream_routes(layout.targets) + entry_routes()),
        authz_address=json.dumps(_address(layout.authz_address)),
        json_usage_rules=json.dumps(usage_rules()),
        sse_usage_rules=json.dumps([{"rule": rule} for rule in usage_rules()]),
        stream_usage_lua=json.dumps(STREAM_USAGE_LUA),
    )
    config = yaml.safe_load(text)
    added = openai_headers(layout.openai_organization, layout.openai_project)
    if added:
        for listener in config["static_resources"]["listeners"]:
            manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
            for host in manager["route_config"]["virtual_hosts"]:
                for route in host["routes"]:
                    if route.get("route", {}).get("cluster") == "openai":
                        route["request_headers_to_add"] = added
    clusters = config["static_resources"]["clusters"]
    if layout.otlp_endpoint:
        (gateway,) = [listener["filter_chains"][0]["filters"][0]["typed_config"]
                      for listener in config["static_resources"]["listeners"] if listener["name"] == "gateway"]
        gateway["tracing"] = tracing(layout.trace_sample_ratio)
        clusters.append(otlp_cluster(layout.otlp_endpoint))
    for target in layout.targets:
        clusters.append(upstream_cluster(target, layout.secrets_dir))
    return config


def secret_file(secrets_dir: Path, upstream: upstreams.Upstream) -> Path:
    """Where an upstream's key lives in Envoy's secrets directory (Bedrock's: an AWS credentials file)."""
    return secrets_dir / (f"{upstream.name}.credentials" if upstream.kind is Kind.BEDROCK else f"{upstream.name}.json")


def upstream_cluster(target: Target, secrets_dir: Path) -> dict:
    upstream = target.upstream
    key_header = upstreams.KEY_HEADERS[upstream.kind]
    return provider_cluster(upstream.name, target.url, secret_file=secret_file(secrets_dir, upstream),
                            header=key_header[0] if key_header else None,
                            aws_region=upstream.region if upstream.kind is Kind.BEDROCK else None)


def write_upstream_key(secrets_dir: Path, upstream: upstreams.Upstream, key: str) -> None:
    """Write an upstream's key where its cluster reads it (mode 0600, replaced atomically). Bedrock's key
    is ``<access key id>:<secret access key>[:<session token>]``."""
    path = secret_file(secrets_dir, upstream)
    key_header = upstreams.KEY_HEADERS[upstream.kind]
    if key_header is None:
        access_key, _, rest = key.partition(":")
        secret, _, session = rest.partition(":")
        if not access_key or not secret:
            raise ValueError(f"the key of {upstream.name} must be <access key id>:<secret access key>")
        lines = ["[default]", f"aws_access_key_id = {access_key}", f"aws_secret_access_key = {secret}"]
        if session:
            lines.append(f"aws_session_token = {session}")
        _write_private(path, "\n".join(lines) + "\n")
        return
    write_secret(path, f"{upstream.name}-key", key_header[1].format(key=key))


def write_provider_secrets(secrets_dir: Path, *, openai_key: str, anthropic_key: str) -> None:
    write_upstream_key(secrets_dir, upstreams.Upstream("openai", Kind.OPENAI, ""), openai_key)
    write_upstream_key(secrets_dir, upstreams.Upstream("anthropic", Kind.ANTHROPIC, ""), anthropic_key)
