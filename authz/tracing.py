"""OpenTelemetry traces of authz: each Check as a span in the request's trace, and the request's GenAI span.

Off unless ``KEYWARD_OTLP_ENDPOINT`` is set: :func:`build` then returns ``None``, nothing of the
OpenTelemetry SDK or its exporter is imported, and a Check does nothing more than test for ``None``.

On, two spans per sampled request, both in the trace Envoy's tracer started or continued
(``controlplane/stack/envoy_config.py``, :func:`~controlplane.stack.envoy_config.tracing`):

* **the Check** (``envoy.service.auth.v3.Authorization/Check``, kind SERVER), started and ended on the
  Check's thread. Its parent is the ``traceparent`` of the ext_authz call's gRPC metadata: Envoy's span
  for that call, a child of its request span. (The CheckRequest's HTTP headers would only hold what the
  client sent, so a Check parented there would skip Envoy's spans.) Sampled as the parent says; a Check
  without one starts a trace sampled at ``KEYWARD_TRACE_SAMPLE_RATIO``. It carries the decision and who
  asked (``keyward.*``), the provider and the requested model (``gen_ai.*``). It is the current span
  while the Check runs, so log lines written then carry its trace id.
* **the GenAI span** (``{gen_ai.operation.name} {gen_ai.request.model}``, kind CLIENT), the OpenTelemetry
  GenAI semantic conventions on the provider call: provider, request and response model, input and
  output tokens, plus Keyward's attributes and the request's cost. What the provider answered is only
  known once Envoy writes the request's outcome line, which authz reads (:mod:`authz.audit.outcome_log`)
  and prices (:mod:`authz.audit.costing`) on its event loop, so the span is emitted there, after the
  fact, with the request's own times. It joins the trace through the line itself: Envoy's audit log
  format records ``%REQ(traceparent)%``, which by the time Envoy logs is the context its router wrote
  into the upstream request, the span of the call to the provider. That keeps no state between the
  Check and the outcome (nothing to bound or expire, nothing lost when authz restarts between them) and
  puts the GenAI span under the upstream call it describes. Only requests the Check allowed that a
  provider answered get one, and only when Envoy's upstream span is sampled.

Never in an attribute: prompt or completion content (authz reads the body for the model and nothing
else of it is kept), a credential (the token is known by its id), a provider key (authz never has one).
Client-chosen text (the model names) is cut to :data:`_TEXT` characters.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from authz.audit.records import seconds_of
from authz.routes import Family, ModelSource, match

if TYPE_CHECKING:
    from contextvars import Token

    import grpc
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span

    from authz.cache import TokenRecord
    from authz.config import AuthzSettings
    from authz.pipeline import Decision
    from authz.request import GatewayRequest

log = structlog.get_logger("authz.tracing")

SERVICE_NAME = "keyward-authz"
CHECK_SPAN = "envoy.service.auth.v3.Authorization/Check"
#: A ``traceparent`` whose trace is not sampled: nothing is recorded for it.
_UNSAMPLED = object()
#: Longest client-chosen text (a model name) in an attribute.
_TEXT = 256
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
#: ``gen_ai.operation.name`` by (API, endpoint); other endpoints (listing models, counting tokens,
#: moderation) are no GenAI operation and get no GenAI span.
_OPERATIONS = {
    Family.CHAT: "chat",
    Family.RESPONSES: "chat",
    Family.COMPLETIONS: "text_completion",
    Family.EMBEDDINGS: "embeddings",
    Family.TOOLS: "execute_tool",
}


def build(settings: AuthzSettings, records: Callable[[str], TokenRecord | None]) -> Tracing | None:
    """Tracing as ``settings`` say: ``None`` (off, nothing imported) without an OTLP endpoint. ``records``
    finds a token's record by id (for who a GenAI span's request was for)."""
    if not settings.otlp_endpoint:
        return None
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    exporter = OTLPSpanExporter(endpoint=settings.otlp_endpoint,
                                insecure=settings.otlp_endpoint.startswith("http://"), timeout=5)
    return Tracing(exporter, settings.trace_sample_ratio, records=records)


def _text(value: object) -> str | None:
    return value[:_TEXT] if isinstance(value, str) and value not in ("", "-") else None


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def who(record: TokenRecord | None, *, full: bool = True) -> dict[str, str]:
    """Keyward's attributes for whom a request was made: ids and names, never a credential. Not ``full``:
    the few the Check's span carries (every attribute costs the Check a few µs, and more to export)."""
    if record is None:
        return {}
    found = {"keyward.token_id": record.token_id, "keyward.user": record.user_email,
             "keyward.team": record.team, "keyward.project": record.project}
    if full:
        found.update({"keyward.user_id": record.user_id, "keyward.environment": record.environment})
    return {key: value for key, value in found.items() if value}


class Tracing:
    """Authz's tracer provider (batched OTLP export off the request path) and its two kinds of span."""

    def __init__(self, exporter: SpanExporter, sample_ratio: float, *,
                 records: Callable[[str], TokenRecord | None] = lambda _token_id: None,
                 schedule_delay_millis: float = 1000) -> None:
        from opentelemetry import context, trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

        self._context, self._trace = context, trace
        self.provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(sample_ratio)),
                                       resource=Resource.create({"service.name": SERVICE_NAME}),
                                       shutdown_on_exit=False)
        self.provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=schedule_delay_millis))
        self._tracer = self.provider.get_tracer("keyward.authz")
        self._records = records
        self._server, self._client = trace.SpanKind.SERVER, trace.SpanKind.CLIENT

    def _parent(self, traceparent: str | None) -> Any:
        """The context of a sampled W3C ``traceparent`` (a remote parent); ``None`` for none or a malformed
        one (a new trace), :data:`_UNSAMPLED` for one whose trace is not sampled."""
        found = _TRACEPARENT.fullmatch(traceparent) if traceparent else None
        if found is None or found[1] == "0" * 32 or found[2] == "0" * 16:
            return None
        if not int(found[3], 16) & 1:
            return _UNSAMPLED
        trace = self._trace
        parent = trace.SpanContext(int(found[1], 16), int(found[2], 16), is_remote=True,
                                   trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED))
        return trace.set_span_in_context(trace.NonRecordingSpan(parent))

    # -- the Check --------------------------------------------------------------------------------

    def begin(self, context: grpc.ServicerContext | None) -> CheckSpan | None:
        """Start the Check's span, a child of the ``traceparent`` in the call's gRPC metadata, and make it
        current on this thread until :meth:`CheckSpan.end`; ``None`` (and nothing more done) when the
        trace is not sampled."""
        traceparent = None
        if context is not None:
            for key, value in context.invocation_metadata():
                if key == "traceparent":
                    traceparent = value
                    break
        parent = self._parent(traceparent)
        if parent is _UNSAMPLED:
            return None  # what the parent-based sampler would decide, without building a span to drop
        span = self._tracer.start_span(CHECK_SPAN, context=parent, kind=self._server)
        if not span.is_recording():
            return None
        return CheckSpan(self, span, self._context.attach(self._trace.set_span_in_context(span)))

    # -- the outcome ------------------------------------------------------------------------------

    def outcome(self, line: dict[str, Any], document: dict[str, Any]) -> None:
        """Emit the GenAI span of one outcome ``line`` (costed), read from Envoy's audit log ``document``.
        Never raises: tracing must not stop the audit log from being read."""
        try:
            self._outcome(line, document)
        except Exception as exc:
            log.warning("tracing.outcome_failed", error=f"{type(exc).__name__}: {exc}",
                        request_id=line.get("request_id"))

    def _outcome(self, line: dict[str, Any], document: dict[str, Any]) -> None:
        if document.get("decision") != "allowed" or line.get("upstream_status") is None:
            return
        parent = self._parent(_text(document.get("traceparent")))
        if parent is None or parent is _UNSAMPLED:
            return  # no trace to join, or one that is not recorded
        provider, model = _text(document.get("provider")), _text(document.get("model"))
        found = match(_text(document.get("method")) or "", _text(document.get("route")) or "")
        if found is None or provider is None:
            return
        operation = _OPERATIONS.get(found.endpoint.family)
        if operation is None or found.endpoint.model_source is ModelSource.NONE:
            return
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": operation, "gen_ai.provider.name": provider, "gen_ai.system": provider,
            "keyward.request_id": line["request_id"], "keyward.decision": "allowed",
        }
        if model:
            attributes["gen_ai.request.model"] = model
        if response_model := _text(document.get("response_model")):
            attributes["gen_ai.response.model"] = response_model
        if not line.get("usage_estimated"):
            for key, value in (("gen_ai.usage.input_tokens", line.get("prompt_tokens")),
                               ("gen_ai.usage.output_tokens", line.get("completion_tokens")),
                               ("gen_ai.usage.cache_read_input_tokens", line.get("cached_tokens")),
                               ("gen_ai.usage.cache_creation_input_tokens", document.get("cache_write_tokens"))):
                if (count := _count(value)) is not None:
                    attributes[key] = count
        else:
            attributes["keyward.usage_estimated"] = True
        if isinstance(line.get("cost_usd"), str):
            attributes["keyward.cost_usd"] = float(line["cost_usd"])
        spend = line.get("spend") or {}
        token_id = spend.get("token_id") or _text(document.get("token_id"))
        if token_id:
            attributes["keyward.token_id"] = token_id
            attributes.update(who(self._records(token_id)))
        status = line["upstream_status"]
        if status >= 400:
            attributes["error.type"] = str(status)
        # The provider call's own times: it ended when the response did, and took upstream_ms of it.
        started = seconds_of(line["at"])
        ended = started + (line.get("duration_ms") or 0) / 1000
        upstream_ms = line.get("upstream_ms")
        begun = max(started, ended - upstream_ms / 1000) if upstream_ms is not None else started
        span = self._tracer.start_span(f"{operation} {model or ''}".strip(), context=parent, kind=self._client,
                                       attributes=attributes, start_time=int(begun * 1e9))
        if status >= 400:
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR))
        span.end(end_time=int(ended * 1e9))

    def shutdown(self, timeout: float = 3.0) -> None:
        """Export what is queued and stop (at a clean stop), waiting ``timeout`` seconds at most: a
        collector that does not answer must not hold up the process's exit (the exporter is a daemon)."""
        stopping = threading.Thread(target=self.provider.shutdown, name="tracing-shutdown", daemon=True)
        stopping.start()
        stopping.join(timeout)


class CheckSpan:
    """One Check's span while it runs (:meth:`Tracing.begin`)."""

    __slots__ = ("_span", "_token", "_tracing")

    def __init__(self, tracing: Tracing, span: Span, token: Token[Context]) -> None:
        self._tracing, self._span, self._token = tracing, span, token

    def end(self, decision: Decision | None, request: GatewayRequest) -> None:
        """End it with what was decided (``None``: the Check failed), on the Check's thread. Never raises:
        tracing must not fail a Check."""
        span, trace = self._span, self._tracing._trace
        try:
            self._tracing._context.detach(self._token)
            attributes: dict[str, Any] = {"keyward.request_id": request.request_id[:_TEXT]}
            if decision is None:
                span.set_status(trace.Status(trace.StatusCode.ERROR))
            else:
                attributes["keyward.decision"] = decision.outcome.value
                if decision.api is not None:
                    attributes["gen_ai.provider.name"] = decision.api.value
                if model := _text(decision.model):
                    attributes["gen_ai.request.model"] = model
                attributes.update(who(decision.record, full=False))
            span.set_attributes(attributes)
        except Exception as exc:
            log.warning("tracing.check_failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            span.end()
