"""OpenTelemetry traces of the control plane: a span per API request (FastAPI), one per database call
(asyncpg, under SQLAlchemy and direct), exported over OTLP/gRPC to ``KEYWARD_OTLP_ENDPOINT``. Off, and
nothing imported, without it.

The database spans come from the asyncpg instrumentation, which every query goes through (SQLAlchemy's
asyncpg dialect and the modules that use asyncpg directly); the SQLAlchemy instrumentation does not
support SQLAlchemy 2.1 and declines to instrument it.

* Sampling: a caller's ``traceparent`` decides (a sampled one is continued); a request without one
  starts a trace sampled at ``KEYWARD_TRACE_SAMPLE_RATIO``. Database calls outside any request (the
  background duties, every few seconds) start no trace of their own.
* While a request is handled its span is the current one, so log lines written then can carry its
  trace id (:mod:`authz.logs` reads the current span).
* Never in an attribute: a credential. Request headers are not recorded (the instrumentation records
  none unless asked), and the query string is dropped from the URL attributes: sign-in links and the
  OIDC callback carry one-time codes there. Statements are recorded with their placeholders, never their
  parameters.
* The health and metrics endpoints are not traced.
"""

from __future__ import annotations

import atexit
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI
    from opentelemetry.sdk.trace import TracerProvider

    from controlplane.core.config import Settings

SERVICE_NAME = "keyward-controlplane"
#: Not traced: probes and scrapes (regular expressions, matched against the URL).
EXCLUDED_URLS = "/healthz,/readyz,/livez,/metrics"
#: URL attributes that may hold the query string (older and current HTTP semantic conventions).
_URL_ATTRIBUTES = ("http.target", "http.url", "url.full")
#: How long the exit waits for the last spans to be sent.
SHUTDOWN_SECONDS = 3.0


def _without_query(span: Any, scope: dict[str, Any]) -> None:
    """The request span's URL attributes without the query string (it can hold one-time codes)."""
    if not span.is_recording() or not scope.get("query_string"):
        return
    attributes = getattr(span, "attributes", None) or {}
    for key in _URL_ATTRIBUTES:
        value = attributes.get(key)
        if isinstance(value, str) and "?" in value:
            span.set_attribute(key, value.split("?", 1)[0])
    if "url.query" in attributes:
        span.set_attribute("url.query", "")


def provider(settings: Settings) -> TracerProvider | None:
    """The control plane's tracer provider as ``settings`` say (``None``: tracing off, nothing imported)."""
    if not settings.otlp_endpoint:
        return None
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import (
        Decision,
        ParentBased,
        Sampler,
        SamplingResult,
        TraceIdRatioBased,
    )

    class RequestsOnly(Sampler):
        """Parent-based at the ratio, except that a client span with no parent (a duty's query) is dropped."""

        def __init__(self, ratio: float) -> None:
            self._inner = ParentBased(TraceIdRatioBased(ratio))

        def should_sample(self, parent_context: Any, trace_id: int, name: str, kind: Any = None,
                          attributes: Any = None, links: Any = None, trace_state: Any = None) -> SamplingResult:
            parent = trace.get_current_span(parent_context).get_span_context()
            if not parent.is_valid and kind is trace.SpanKind.CLIENT:
                return SamplingResult(Decision.DROP)
            return self._inner.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

        def get_description(self) -> str:
            return f"RequestsOnly{{{self._inner.get_description()}}}"

    made = TracerProvider(sampler=RequestsOnly(settings.trace_sample_ratio),
                          resource=Resource.create({"service.name": SERVICE_NAME}), shutdown_on_exit=False)
    made.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(
        endpoint=settings.otlp_endpoint, insecure=settings.otlp_endpoint.startswith("http://"), timeout=5)))
    return made


def install(app: FastAPI, settings: Settings) -> TracerProvider | None:
    """Trace ``app``'s requests and this process's database calls when an OTLP endpoint is set; returns
    the provider (``None``: off). Spans still queued at exit are sent, for a few seconds at most."""
    tracer_provider = provider(settings)
    if tracer_provider is None:
        return None
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(app, tracer_provider=tracer_provider, excluded_urls=EXCLUDED_URLS,
                                       server_request_hook=_without_query, exclude_spans=["receive", "send"])
    instrumentor = AsyncPGInstrumentor(capture_parameters=False)  # parameters can be credentials' hashes
    if not instrumentor.is_instrumented_by_opentelemetry:  # once per process (create_app may run again)
        instrumentor.instrument(tracer_provider=tracer_provider)
    atexit.register(_shutdown, tracer_provider)
    return tracer_provider


def _shutdown(tracer_provider: TracerProvider) -> None:
    stopping = threading.Thread(target=tracer_provider.shutdown, name="tracing-shutdown", daemon=True)
    stopping.start()
    stopping.join(SHUTDOWN_SECONDS)
