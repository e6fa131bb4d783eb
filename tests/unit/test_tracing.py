"""authz's traces (authz/tracing.py) against the OpenTelemetry SDK's in-memory exporter: the Check's span
follows the parent Envoy sends (sampled or not), a request without one is sampled at the ratio, the
GenAI span of an outcome line joins the trace Envoy logged, carries the GenAI attributes and nothing
secret, and tracing never fails a Check or the reading of the audit log. With tracing off nothing of
OpenTelemetry's SDK or exporter is imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from authz.audit.costing import Costing
from authz.audit.records import outcome_line
from authz.cache import ModelCatalog, TokenCache, TokenRecord
from authz.meter import Meter
from authz.outcomes import Outcome
from authz.pipeline import Decision, Limits
from authz.request import GatewayRequest
from authz.routes import Api
from authz.tracing import CHECK_SPAN, Tracing

ROOT = Path(__file__).resolve().parents[2]
RECORD = TokenRecord(token_id="tok-1", token_hash="ab" * 32, user_id="user-1", user_email="dev@example.com",
                     team="research", environment="dev", catalog=ModelCatalog(["*"]), expires_at=None,
                     owner_active=True, team_id="team-1", owner_id="user-1", project_id="proj-1", project="chatbot")
SECRET = "kw_pat_" + "s3cr3t" * 6


class Context:
    """What the Check reads of gRPC's servicer context: the call's metadata."""

    def __init__(self, traceparent: str | None = None) -> None:
        self.metadata = (("x-envoy-expected-rq-timeout-ms", "1000"),)
        if traceparent is not None:
            self.metadata += (("traceparent", traceparent),)

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata


def traceparent(sampled: bool = True) -> tuple[str, str, str]:
    trace_id, span_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}", trace_id, span_id


def tracing(ratio: float = 1.0) -> tuple[Tracing, InMemorySpanExporter]:
    exported = InMemorySpanExporter()
    cache = TokenCache()
    cache.upsert(RECORD)
    return Tracing(exported, ratio, records=cache.by_id, schedule_delay_millis=10), exported


def spans(tracer: Tracing, exported: InMemorySpanExporter) -> list[ReadableSpan]:
    tracer.provider.force_flush()
    return list(exported.get_finished_spans())


def request() -> GatewayRequest:
    return GatewayRequest(request_id=str(uuid.uuid4()), method="POST", path="/openai/v1/chat/completions",
                          credential=SECRET, credential_unreadable=False, content_type="application/json",
                          body=b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "the prompt"}]}',
                          body_truncated=False)


ALLOWED = Decision(Outcome.ALLOWED, Api.OPENAI, RECORD, "gpt-4o-mini")


def check(tracer: Tracing, context: Context | None, decision: Decision | None = ALLOWED) -> GatewayRequest:
    asked = request()
    begun = tracer.begin(context)
    if begun is not None:
        begun.end(decision, asked)
    return asked


def test_the_check_is_a_child_of_the_span_envoy_sends() -> None:
    tracer, exported = tracing()
    parent, trace_id, span_id = traceparent()
    asked = check(tracer, Context(parent))
    (span,) = spans(tracer, exported)
    assert span.name == CHECK_SPAN and span.kind is SpanKind.SERVER
    assert format(span.context.trace_id, "032x") == trace_id
    assert span.parent is not None and format(span.parent.span_id, "016x") == span_id and span.parent.is_remote
    assert dict(span.attributes or {}) == {
        "keyward.request_id": asked.request_id, "keyward.decision": "allowed", "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o-mini", "keyward.token_id": "tok-1", "keyward.user": "dev@example.com",
        "keyward.team": "research", "keyward.project": "chatbot",
    }


def test_the_check_span_is_current_while_the_check_runs() -> None:
    from opentelemetry import trace

    tracer, _ = tracing()
    parent, trace_id, _ = traceparent()
    begun = tracer.begin(Context(parent))
    assert begun is not None
    assert format(trace.get_current_span().get_span_context().trace_id, "032x") == trace_id
    begun.end(ALLOWED, request())
    assert not trace.get_current_span().get_span_context().is_valid


def test_a_trace_that_is_not_sampled_records_nothing() -> None:
    tracer, exported = tracing(ratio=1.0)
    assert tracer.begin(Context(traceparent(sampled=False)[0])) is None
    assert spans(tracer, exported) == []


@pytest.mark.parametrize(("ratio", "recorded"), [(0.0, 0), (1.0, 1)])
def test_a_check_without_a_parent_is_sampled_at_the_ratio(ratio: float, recorded: int) -> None:
    tracer, exported = tracing(ratio)
    for malformed in (None, "00-zz-yy-01", f"00-{'0' * 32}-{'1' * 16}-01"):
        check(tracer, Context(malformed))
    check(tracer, None)
    found = spans(tracer, exported)
    assert len(found) == 4 * recorded
    assert all(span.parent is None for span in found)


def test_a_sampled_parent_is_followed_whatever_the_ratio() -> None:
    tracer, exported = tracing(ratio=0.0)
    check(tracer, Context(traceparent()[0]))
    assert len(spans(tracer, exported)) == 1


def test_a_failed_check_is_an_error_span_and_a_denial_says_why() -> None:
    tracer, exported = tracing()
    check(tracer, Context(traceparent()[0]), decision=None)
    check(tracer, Context(traceparent()[0]), decision=Decision(Outcome.TOKEN_REVOKED, Api.OPENAI, RECORD))
    failed, denied = spans(tracer, exported)
    assert failed.status.status_code is StatusCode.ERROR
    assert (denied.attributes or {})["keyward.decision"] == Outcome.TOKEN_REVOKED.value


def test_ending_a_check_span_never_raises() -> None:
    tracer, _ = tracing()
    begun = tracer.begin(Context(traceparent()[0]))
    assert begun is not None
    begun.end(ALLOWED, None)  # type: ignore[arg-type]  # a bug in the attributes, not in the Check


# -- the GenAI span of an outcome line ------------------------------------------------------------


def envoy_line(**fields: Any) -> dict[str, Any]:
    """One line of Envoy's audit log (audit_log_format in controlplane/stack/envoy_config.py)."""
    return {"at": "2026-06-01T12:00:00.000000Z", "request_id": str(uuid.uuid4()), "status": 200,
            "details": "via_upstream", "method": "POST", "route": "/openai/v1/chat/completions",
            "token_id": "tok-1", "decision": "allowed", "provider": "openai", "model": "gpt-4o-mini",
            "response_model": "gpt-4o-mini-2024-07-18", "duration_ms": 250, "upstream_ms": 200,
            "bytes_in": 400, "bytes_out": 800, "prompt_tokens": 9, "completion_tokens": 6, **fields}


def outcome(tracer: Tracing, document: dict[str, Any]) -> dict[str, Any]:
    """Read it as the outcome log does: the outcome line, costed, then its span."""
    cache = TokenCache()
    cache.upsert(RECORD)
    line = outcome_line(document, json.dumps(document).encode(), "test")
    Costing(cache, Limits(Meter())).annotate(line, document)
    tracer.outcome(line, document)
    return line


def test_an_outcome_emits_the_genai_span_under_envoys_upstream_span() -> None:
    tracer, exported = tracing()
    parent, trace_id, span_id = traceparent()
    line = outcome(tracer, envoy_line(traceparent=parent))
    (span,) = spans(tracer, exported)
    assert span.name == "chat gpt-4o-mini" and span.kind is SpanKind.CLIENT
    assert format(span.context.trace_id, "032x") == trace_id
    assert span.parent is not None and format(span.parent.span_id, "016x") == span_id
    attributes = dict(span.attributes or {})
    assert attributes == {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.system": "openai",
        "gen_ai.request.model": "gpt-4o-mini", "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
        "gen_ai.usage.input_tokens": 9, "gen_ai.usage.output_tokens": 6,
        "keyward.request_id": line["request_id"], "keyward.decision": "allowed",
        "keyward.cost_usd": float(line["cost_usd"]), "keyward.token_id": "tok-1", "keyward.user": "dev@example.com",
        "keyward.user_id": "user-1", "keyward.environment": "dev", "keyward.team": "research",
        "keyward.project": "chatbot",
    }
    assert attributes["keyward.cost_usd"] > 0
    # The provider call's own times: it ended with the response and took upstream_ms of it.
    assert span.end_time is not None and span.start_time is not None
    assert (span.end_time - span.start_time) / 1e6 == pytest.approx(200)


def test_an_anthropic_answer_is_a_chat_with_anthropics_names() -> None:
    tracer, exported = tracing()
    outcome(tracer, envoy_line(traceparent=traceparent()[0], route="/anthropic/v1/messages", provider="anthropic",
                               model="claude-haiku-4-5", response_model="claude-haiku-4-5-20251001"))
    (span,) = spans(tracer, exported)
    assert span.name == "chat claude-haiku-4-5"
    assert (span.attributes or {})["gen_ai.system"] == "anthropic"


@pytest.mark.parametrize("fields", [
    {"traceparent": None},  # Envoy does not trace
    {"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-00"},  # not sampled
    {"decision": "token_revoked", "status": 401, "details": "ext_authz_denied"},  # refused
    {"decision": None, "status": 503, "details": "ext_authz_error"},  # no decision
    {"status": 503, "details": "upstream_reset_before_response_started", "flags": "UF"},  # no provider answer
    {"method": "GET", "route": "/openai/v1/models", "model": None},  # not a GenAI operation
], ids=["untraced", "unsampled", "refused", "undecided", "unanswered", "listing"])
def test_no_genai_span_without_a_sampled_trace_and_a_provider_answer(fields: dict[str, Any]) -> None:
    tracer, exported = tracing()
    outcome(tracer, envoy_line(**{"traceparent": traceparent()[0], **fields}))
    assert spans(tracer, exported) == []


def test_an_estimated_usage_is_not_reported_as_the_providers() -> None:
    tracer, exported = tracing()
    outcome(tracer, envoy_line(traceparent=traceparent()[0], prompt_tokens=None, completion_tokens=None))
    (span,) = spans(tracer, exported)
    attributes = dict(span.attributes or {})
    assert attributes["keyward.usage_estimated"] is True
    assert "gen_ai.usage.input_tokens" not in attributes and "gen_ai.usage.output_tokens" not in attributes


def test_a_provider_error_is_an_error_span() -> None:
    tracer, exported = tracing()
    outcome(tracer, envoy_line(traceparent=traceparent()[0], status=429, prompt_tokens=None, completion_tokens=None))
    (span,) = spans(tracer, exported)
    assert span.status.status_code is StatusCode.ERROR and (span.attributes or {})["error.type"] == "429"


def test_reading_a_strange_line_never_raises() -> None:
    tracer, exported = tracing()
    tracer.outcome({"request_id": "r"}, {"decision": "allowed"})  # no upstream status: nothing
    tracer.outcome({"request_id": "r", "upstream_status": 200}, {"decision": "allowed", "traceparent": 7})
    broken = outcome(tracer, envoy_line(traceparent=traceparent()[0]))
    broken["at"] = None  # type: ignore[assignment]
    tracer.outcome(broken, envoy_line(traceparent=traceparent()[0]))
    assert len(spans(tracer, exported)) == 1  # the well-formed one


def test_no_secret_and_no_content_in_any_attribute() -> None:
    tracer, exported = tracing()
    check(tracer, Context(traceparent()[0]))
    outcome(tracer, envoy_line(traceparent=traceparent()[0]))
    for span in spans(tracer, exported):
        text = json.dumps(dict(span.attributes or {}))
        assert SECRET not in text and "the prompt" not in text and "ab" * 32 not in text


# -- off --------------------------------------------------------------------------------------------


def test_off_without_an_endpoint_and_nothing_of_the_sdk_is_imported() -> None:
    """In a fresh interpreter, the way the authz process builds it."""
    script = """
import sys
from authz.config import AuthzSettings
from authz.tracing import build
import authz.process
settings = AuthzSettings(database_url="postgresql://x@127.0.0.1:1/x", token_hash_key="ab" * 32,
                         audit_spool_dir="/tmp/none", envoy_audit_log="/tmp/none", ingest_url="http://127.0.0.1:1",
                         ingest_token="i" * 16)
assert settings.otlp_endpoint is None, settings.otlp_endpoint
assert build(settings, lambda token_id: None) is None
loaded = sorted(name for name in sys.modules if name.startswith(("opentelemetry.sdk", "opentelemetry.exporter")))
assert not loaded, loaded
print("off")
"""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("KEYWARD_", "OTEL_"))}
    # The standard variable does not turn tracing on: only KEYWARD_OTLP_ENDPOINT does.
    env |= {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317", "KEYWARD_OTLP_ENDPOINT": ""}
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0 and result.stdout.strip() == "off", result.stdout + result.stderr


def test_the_otlp_exporter_loads_beside_the_envoy_protos() -> None:
    """xds-protos ships an old copy of opentelemetry-proto's modules at the same paths; the install
    (Makefile, k8s/Dockerfile) puts opentelemetry-proto's own back. Without it the exporter cannot load."""
    code = ("import envoy.service.auth.v3.external_auth_pb2\n"
            "from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter\n"
            "from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
