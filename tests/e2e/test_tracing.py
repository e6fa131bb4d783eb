"""OpenTelemetry traces from the real stack, received by a real OTLP/gRPC collector started here
(tests/e2e/otlp_collector.py: ``opentelemetry-proto``'s TraceService on grpcio, in a process of its own).

A stack of its own with ``otlp_endpoint`` pointing at the collector (the session's shared ``gateway`` runs
without tracing): Envoy's tracer, authz's Check and GenAI spans and the control plane's request and
database spans all arrive over OTLP/gRPC as ``ExportTraceServiceRequest`` messages, and the tests read
them as a tracing backend would.

* a client's sampled ``traceparent`` is continued: one trace, the client's id, Envoy's request span under
  the client's span, authz's Check under Envoy's ext_authz span, the GenAI span under Envoy's call to
  the provider with the GenAI attributes (usage equal to what the provider reported), and the
  provider receives the trace context too;
* a request without one starts a new trace (the ratio is 1.0);
* the control plane's API requests are traced with their database calls, the query string dropped;
* no secret and no prompt or completion anywhere in any span;
* with no endpoint (the shared stack) nothing is configured to export: no tracer in Envoy, authz says
  tracing is off (that it then imports no exporter is checked in tests/unit/test_tracing.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanProto

from controlplane.stack.runner import Stack, StackSettings
from tests.e2e.conftest import Gateway, Minted, free_port

pytestmark = pytest.mark.e2e

#: Envoy sends its spans every 5 s (its default flush interval), authz every second, the control plane
#: every 5 s.
EXPORT_WAIT = 30
CHECK_SPAN = "envoy.service.auth.v3.Authorization/Check"
EXT_AUTHZ_SPAN = "async envoy.service.auth.v3.Authorization.Check egress"
PROMPT = f"tracing-prompt-{uuid.uuid4().hex}"
TEAM = f"tracing-{uuid.uuid4().hex[:6]}"
#: What the mock provider answers (controlplane/stack/mock_provider.py).
COMPLETION = "Hello from the mock provider."
ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    start: int
    end: int
    attributes: dict[str, Any]


class Collector:
    """The OTLP/gRPC receiver (tests/e2e/otlp_collector.py, a process of its own) and what it received."""

    def __init__(self, spans_file: Path) -> None:
        self._file = spans_file
        self._process = subprocess.Popen([sys.executable, "-m", "tests.e2e.otlp_collector", str(spans_file)],
                                         cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert self._process.stdout is not None
        self.port = int(self._process.stdout.readline())

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._process.terminate()
        self._process.wait(10)
        if self._process.stdout is not None:
            self._process.stdout.close()

    def all(self) -> list[Span]:
        text = self._file.read_text() if self._file.exists() else ""
        return [Span(**json.loads(line)) for line in text.splitlines() if line.endswith("}")]

    def trace(self, trace_id: str) -> list[Span]:
        return [span for span in self.all() if span.trace_id == trace_id]

    def wait(self, found: Callable[[], Any], what: str, timeout: float = EXPORT_WAIT) -> Any:
        """Wait until ``found()`` gives something truthy, and return it."""
        deadline = time.monotonic() + timeout
        while not (result := found()):
            if time.monotonic() > deadline:
                seen = [(span.service, span.name, span.kind, span.trace_id[:8], span.parent_id) for span in self.all()]
                raise AssertionError(f"no {what} within {timeout}s; spans received: {seen}")
            time.sleep(0.2)
        return result


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    spans = Path(tempfile.mkdtemp(prefix="keyward-otlp-")) / "spans.jsonl"
    receiver = Collector(spans)
    try:
        yield receiver
    finally:
        receiver.stop()
        shutil.rmtree(spans.parent, ignore_errors=True)


@pytest.fixture(scope="module")
def traced(collector: Collector) -> Iterator[Gateway]:
    """A stack of its own whose Envoy, authz and control plane send their traces to ``collector``."""
    data_dir = Path(tempfile.mkdtemp(prefix="keyward-tracing-"))
    settings = StackSettings(
        data_dir=data_dir, gateway_port=free_port(), api_port=free_port(), mock_port=free_port(),
        admin_token=None, openai_api_key=None, anthropic_api_key=None, database_url=None,
        mock_stream_interval=0.01, envoy_concurrency=2,
        otlp_endpoint=collector.endpoint, trace_sample_ratio=1.0,
    )
    stack = Stack(settings=settings, report=lambda _message: None)
    try:
        gateway = Gateway(stack, stack.start(timeout=120))
        yield gateway
        gateway.close()
    finally:
        stack.stop()
        if not os.environ.get("KEYWARD_TEST_KEEP_DATA"):  # set it to read the stack's logs after a run
            shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def minted(traced: Gateway) -> Minted:
    return traced.mint(team=TEAM)


def _traceparent() -> tuple[str, str, str]:
    trace_id, span_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def _send(gateway: Gateway, minted: Minted, shape: str, headers: dict[str, str]) -> tuple[httpx.Response, dict]:
    """One request of ``shape`` through the gateway; returns the response and the usage the provider reported."""
    if shape == "anthropic":
        reply = gateway.http.post("/anthropic/v1/messages", headers={
            "x-api-key": minted.secret, "anthropic-version": "2023-06-01", **headers,
        }, json={"model": "claude-haiku-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": PROMPT}]})
        usage = reply.json()["usage"]
        return reply, {"input": usage["input_tokens"], "output": usage["output_tokens"]}
    body: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": PROMPT}]}
    if shape == "openai-stream":
        body["stream"] = True  # no stream_options: the gateway asks the provider for the usage itself
    reply = gateway.http.post("/openai/v1/chat/completions", headers={"Authorization": f"Bearer {minted.secret}",
                                                                      **headers}, json=body)
    if shape == "openai-stream":
        chunks = [json.loads(line[len("data: "):]) for line in reply.text.splitlines()
                  if line.startswith("data: {")]
        usage = next(chunk["usage"] for chunk in chunks if chunk.get("usage"))
    else:
        usage = reply.json()["usage"]
    return reply, {"input": usage["prompt_tokens"], "output": usage["completion_tokens"]}


def _one(spans: list[Span], **match: Any) -> Span:
    found = [span for span in spans if all(getattr(span, key) == value for key, value in match.items())]
    assert len(found) == 1, (match, [(s.service, s.name) for s in spans])
    return found[0]


@pytest.mark.parametrize(("shape", "provider", "model"), [
    ("openai", "openai", "gpt-4o-mini"),
    ("openai-stream", "openai", "gpt-4o-mini"),
    ("anthropic", "anthropic", "claude-haiku-4-5"),
])
def test_a_client_trace_is_continued_through_envoy_authz_and_the_provider_call(
        traced: Gateway, collector: Collector, minted: Minted, shape: str, provider: str, model: str) -> None:
    parent, trace_id, client_span = _traceparent()
    traced.forget_received()
    reply, usage = _send(traced, minted, shape, {"traceparent": parent})
    assert reply.status_code == 200, reply.text
    request_id = reply.headers["x-request-id"]
    router = f"router {provider} egress"

    def complete() -> list[Span]:
        spans = collector.trace(trace_id)
        names = {(span.service, span.name) for span in spans}
        wanted = {("keyward-gateway", "ingress"), ("keyward-gateway", EXT_AUTHZ_SPAN), ("keyward-gateway", router),
                  ("keyward-authz", CHECK_SPAN), ("keyward-authz", f"chat {model}")}
        return spans if wanted <= names else []

    spans = collector.wait(complete, f"complete trace {trace_id}")
    ingress = _one(spans, service="keyward-gateway", name="ingress")
    ext_authz = _one(spans, service="keyward-gateway", name=EXT_AUTHZ_SPAN)
    upstream = _one(spans, service="keyward-gateway", name=router)
    check = _one(spans, service="keyward-authz", name=CHECK_SPAN)
    genai = _one(spans, service="keyward-authz", name=f"chat {model}")
    # One trace, the client's: Envoy's request under the client's span, the Check under Envoy's call to
    # authz, the GenAI span under Envoy's call to the provider.
    assert ingress.parent_id == client_span
    assert ext_authz.parent_id == ingress.span_id and upstream.parent_id == ingress.span_id
    assert check.parent_id == ext_authz.span_id and check.kind == SpanProto.SPAN_KIND_SERVER
    assert genai.parent_id == upstream.span_id and genai.kind == SpanProto.SPAN_KIND_CLIENT
    assert ingress.attributes.get("guid:x-request-id") == request_id
    tagged = [span for span in collector.all() if span.attributes.get("keyward.request_id") == request_id]
    assert {span.trace_id for span in tagged} == {trace_id} and len(tagged) == 2
    # The Check says what was decided and for whom; the GenAI span what the provider did.
    assert check.attributes["keyward.decision"] == "allowed"
    assert check.attributes["gen_ai.request.model"] == model
    assert check.attributes["keyward.user"] == minted.user["email"]
    assert check.attributes["keyward.token_id"] == minted.id
    assert check.attributes["keyward.team"] == TEAM
    attributes = genai.attributes
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.system"] == attributes["gen_ai.provider.name"] == provider
    assert attributes["gen_ai.request.model"] == model
    assert attributes["gen_ai.response.model"] == model  # the mock answers with the model asked for
    assert attributes["gen_ai.usage.input_tokens"] == usage["input"]
    assert attributes["gen_ai.usage.output_tokens"] == usage["output"]
    assert attributes["keyward.user"] == minted.user["email"]
    assert attributes["keyward.token_id"] == minted.id
    assert attributes["keyward.team"] == TEAM
    assert attributes["keyward.decision"] == "allowed"
    assert isinstance(attributes["keyward.cost_usd"], float) and attributes["keyward.cost_usd"] > 0
    # W3C trace context out: the provider was called within the same trace, from Envoy's upstream span.
    (called,) = [r for r in traced.received() if r["path"].endswith(("/chat/completions", "/messages"))]
    sent = {key.lower(): value for key, value in called["headers"]}
    assert sent["traceparent"] == f"00-{trace_id}-{upstream.span_id}-01"


def test_a_request_without_a_trace_starts_one(traced: Gateway, collector: Collector, minted: Minted) -> None:
    reply, _ = _send(traced, minted, "openai", {})
    assert reply.status_code == 200, reply.text
    request_id = reply.headers["x-request-id"]
    check = collector.wait(
        lambda: next((span for span in collector.all() if span.name == CHECK_SPAN
                      and span.attributes.get("keyward.request_id") == request_id), None),
        f"the Check span of {request_id}")

    def complete() -> list[Span]:
        spans = collector.trace(check.trace_id)
        return spans if {"ingress", EXT_AUTHZ_SPAN, "chat gpt-4o-mini"} <= {span.name for span in spans} else []

    spans = collector.wait(complete, f"the new trace {check.trace_id}")
    ingress = _one(spans, name="ingress")
    assert ingress.parent_id == "" and ingress.attributes.get("guid:x-request-id") == request_id
    assert check.parent_id == _one(spans, name=EXT_AUTHZ_SPAN).span_id


def test_a_denied_request_has_its_check_span_and_no_genai_span(traced: Gateway, collector: Collector) -> None:
    parent, trace_id, _ = _traceparent()
    reply = traced.http.post("/openai/v1/chat/completions",
                             headers={"Authorization": "Bearer kw_pat_not-a-real-token", "traceparent": parent},
                             json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": PROMPT}]})
    assert reply.status_code == 401, reply.text
    check = collector.wait(lambda: next((s for s in collector.trace(trace_id) if s.name == CHECK_SPAN), None),
                           "the denied request's Check span")
    assert check.attributes["keyward.decision"] != "allowed"
    assert "keyward.user" not in check.attributes and "keyward.token_id" not in check.attributes
    time.sleep(2)  # the outcome line has long been read by now
    assert [span.name for span in collector.trace(trace_id) if span.service == "keyward-authz"] == [CHECK_SPAN]


def test_the_control_plane_traces_its_requests_and_their_queries(traced: Gateway, collector: Collector) -> None:
    parent, trace_id, client_span = _traceparent()
    one_time = f"code-{uuid.uuid4().hex}"
    reply = traced.admin.get("/users", params={"limit": 5, "code": one_time}, headers={"traceparent": parent})
    assert reply.status_code == 200, reply.text

    def complete() -> list[Span]:
        spans = [span for span in collector.trace(trace_id) if span.service == "keyward-controlplane"]
        kinds = {span.kind for span in spans}
        return spans if {SpanProto.SPAN_KIND_SERVER, SpanProto.SPAN_KIND_CLIENT} <= kinds else []

    spans = collector.wait(complete, "the control plane's request and database spans")
    server = _one(spans, kind=SpanProto.SPAN_KIND_SERVER)
    assert server.parent_id == client_span and server.attributes.get("http.route") == "/api/v1/users"
    queries = [span for span in spans if span.kind == SpanProto.SPAN_KIND_CLIENT]
    assert queries and all(span.attributes.get("db.system") == "postgresql" for span in queries)
    ids = {span.span_id for span in spans}
    assert all(span.parent_id in ids for span in queries)
    # The query string can carry one-time codes (sign-in links, the OIDC callback): it is dropped.
    assert one_time not in json.dumps([span.attributes for span in spans])
    # Background duties' queries start no traces of their own.
    assert not [span for span in collector.all() if span.service == "keyward-controlplane" and not span.parent_id
                and span.kind == SpanProto.SPAN_KIND_CLIENT]


def test_no_secret_and_no_content_in_any_span(traced: Gateway, collector: Collector, minted: Minted) -> None:
    """Runs last: every span this module's stack sent, Envoy's, authz's and the control plane's."""
    parent, trace_id, _ = _traceparent()
    reply, _ = _send(traced, minted, "openai", {"traceparent": parent})
    assert reply.status_code == 200
    collector.wait(lambda: any(span.name.startswith("chat ") for span in collector.trace(trace_id)), "a GenAI span")
    time.sleep(6)  # one more flush of every exporter
    authz_env = traced.stack.services["authz"].env
    controlplane_env = traced.stack.services["controlplane"].env
    secrets = {
        "the token": minted.secret,
        "the admin token": traced.info.admin_token,
        "the OpenAI key": traced.provider_keys["openai"],
        "the Anthropic key": traced.provider_keys["anthropic"],
        "the token hash key": authz_env["KEYWARD_TOKEN_HASH_KEY"],
        "the ingest token": authz_env["KEYWARD_INGEST_TOKEN"],
        "the session secret": controlplane_env["KEYWARD_SESSION_SECRET"],
        "the audit signing key": controlplane_env["KEYWARD_AUDIT_SIGNING_KEY"],
        "the prompt": PROMPT,
        "the completion": COMPLETION,
    }
    spans = collector.all()
    assert {span.service for span in spans} == {"keyward-gateway", "keyward-authz", "keyward-controlplane"}
    text = json.dumps([[span.name, span.attributes] for span in spans])
    for what, secret in secrets.items():
        assert secret not in text, f"{what} is in a span"
    assert "Bearer " not in text and "kw_pat_" not in text


# -- tracing off ----------------------------------------------------------------------------------


def test_without_an_endpoint_nothing_is_set_up_to_export(gateway: Gateway) -> None:
    """The session's stack runs without tracing: no tracer in Envoy, none in authz or the control plane."""
    config = yaml.safe_load((gateway.stack.data_dir / "envoy" / "envoy.yaml").read_text())
    listeners = config["static_resources"]["listeners"]
    managers = [listener["filter_chains"][0]["filters"][0]["typed_config"] for listener in listeners]
    assert not any("tracing" in manager for manager in managers)
    assert "opentelemetry" not in {cluster["name"] for cluster in config["static_resources"]["clusters"]}
    for name in ("authz", "controlplane"):
        assert gateway.stack.services[name].env["KEYWARD_OTLP_ENDPOINT"] == ""
    said = [json.loads(line) for line in (gateway.info.logs_dir / "authz.log").read_text().splitlines()
            if '"authz.tracing"' in line]
    assert said and said[-1]["enabled"] is False, said
