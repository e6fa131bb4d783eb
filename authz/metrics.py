"""Prometheus metrics of the authz process (served on ``KEYWARD_AUTHZ_METRICS_PORT`` when set).

Label values come from fixed sets (outcome codes, task names, HTTP statuses, scope types), never from
a request; the GenAI histograms' model and team labels are bounded by the price tables and the
snapshot's teams (:func:`gen_ai_labels`).
"""

from collections.abc import Callable, Iterable, Mapping

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

DECISIONS = Counter("keyward_authz_decisions_total", "Check decisions by outcome", ["outcome"])
SNAPSHOT_SECONDS = Gauge("keyward_authz_snapshot_seconds", "Duration of the last snapshot load")
SNAPSHOT_TOKENS = Gauge("keyward_authz_snapshot_tokens", "Tokens in the last snapshot")
SNAPSHOT_REVOKED = Gauge("keyward_authz_snapshot_revoked_tokens", "Revoked tokens in the last snapshot")
LISTENER_RECONNECTS = Counter("keyward_authz_listener_reconnects_total", "Listener connection losses")
LAST_USED_FLUSHES = Counter("keyward_authz_last_used_flushes_total", "Batched last_used_at writes")
LAST_USED_FLUSH_FAILURES = Counter(
    "keyward_authz_last_used_flush_failures_total", "Batched last_used_at writes that failed (kept for the next)"
)
AUDIT_LINES_SHIPPED = Counter("keyward_authz_audit_lines_shipped_total", "Audit lines confirmed by the control plane")
AUDIT_SHIP_FAILURES = Counter("keyward_authz_audit_ship_failures_total", "Failed attempts to ship audit lines")
AUDIT_SPOOL_FAILURES = Counter(
    "keyward_authz_audit_spool_failures_total", "Audit lines that could not be spooled", ["kind"]
)
AUDIT_LINES_QUARANTINED = Counter(
    "keyward_authz_audit_lines_quarantined_total",
    "Audit lines the control plane could not store, set aside in rejected/rejected.jsonl",
    ["status"],
)
LOG_WRITE_FAILURES = Counter(
    "keyward_authz_log_write_failures_total", "Log lines that could not be written (a full disk, a closed stream)"
)
BACKGROUND_TASK_UP = Gauge(
    "keyward_authz_background_task_up", "1 while a background task runs, 0 while it waits to be restarted", ["task"]
)
BACKGROUND_TASK_RESTARTS = Counter(
    "keyward_authz_background_task_restarts_total", "Restarts of a background task after it failed", ["task"]
)
LOOP_STALL_SECONDS = Gauge(
    "keyward_authz_loop_stall_seconds", "How long the event loop has left a callback waiting (0: responsive)"
)
AUDIT_OUTCOME_LINES_READ = Counter(
    "keyward_authz_audit_outcome_lines_total", "Lines of Envoy's audit log read into the spool"
)
AUDIT_OUTCOME_LINES_UNREADABLE = Counter(
    "keyward_authz_audit_outcome_lines_unreadable_total", "Lines of Envoy's audit log that were not JSON objects"
)
LATE_CHECKS = Counter(
    "keyward_authz_late_checks_total",
    "Checks decided after Envoy had answered without them (authz stalled): recorded by Envoy's outcome instead",
)

# -- issue 13: latency, state, refusals, GenAI usage ------------------------------------------------

#: A Check takes about a hundred microseconds; Envoy gives up on one after its timeout (1 s by default).
CHECK_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
CHECK_SECONDS = Histogram(
    "keyward_authz_check_duration_seconds",
    "Time authz spent on a Check, from the request to the answer (audit line included), by outcome",
    ["outcome"], buckets=CHECK_BUCKETS,
)
RATE_LIMIT_REFUSALS = Counter(
    "keyward_authz_rate_limit_refusals_total", "Requests refused by a rate limit, by the scope type whose limit it was",
    ["scope_type"],
)
BUDGET_REFUSALS = Counter(
    "keyward_authz_budget_refusals_total", "Requests refused by a budget, by the scope type whose budget it was",
    ["scope_type"],
)
SHIPPER_UP = Gauge(
    "keyward_authz_shipper_up",
    "1 while the audit shipper runs and its last attempt reached the control plane, 0 while it fails or is down",
)
_REFUSALS = {"budget": BUDGET_REFUSALS, "rate": RATE_LIMIT_REFUSALS}


def count_refusal(kind: str, scope_type: str) -> None:
    """One request refused by a limit of ``kind`` (``budget`` or ``rate``) of a scope of ``scope_type``."""
    counter = _REFUSALS.get(kind)
    if counter is not None:
        counter.labels(scope_type).inc()


# GenAI semantic conventions (``gen_ai.client.token.usage``, ``gen_ai.client.operation.duration``) with
# their recommended buckets. Labels are bounded whatever clients send: the provider is one of the APIs
# authz routes (else ``other``); the model is the name a price table knows it by (the bundled table's
# model id, or an admin's override), else ``other``; the team is the token's team's name from the
# snapshot (``none`` for a token without one). Never a user, a token or an e-mail address.
GEN_AI_SYSTEMS = frozenset({"openai", "anthropic"})
OTHER = "other"
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
OPERATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
GEN_AI_TOKENS = Histogram(
    "gen_ai_client_token_usage",
    "Tokens per request the provider reported, by token type (input, output)",
    ["gen_ai_system", "gen_ai_request_model", "team", "gen_ai_token_type"], buckets=TOKEN_BUCKETS,
)
GEN_AI_DURATION = Histogram(
    "gen_ai_client_operation_duration_seconds",
    "Duration of requests let through to a provider, as Envoy measured them (a stream: to its last byte)",
    ["gen_ai_system", "gen_ai_request_model", "team"], buckets=OPERATION_BUCKETS,
)


def gen_ai_labels(provider: str | None, model: str | None, team: str | None) -> tuple[str, str, str]:
    """The bounded label values of one outcome: ``model`` must already be a price table's name (or None).

    >>> gen_ai_labels("openai", "gpt-4o-mini", "research")
    ('openai', 'gpt-4o-mini', 'research')
    >>> gen_ai_labels("bedrock", None, None)
    ('other', 'other', 'none')
    """
    return (provider if provider in GEN_AI_SYSTEMS else OTHER, model or OTHER, team or "none")


#: The histograms' children per label values (as bounded as the labels), so an outcome skips ``labels()``.
_GEN_AI_CHILDREN: dict[tuple[str, str, str], tuple[Histogram, Histogram, Histogram]] = {}


def observe_gen_ai(labels: tuple[str, str, str], *, seconds: float | None, input_tokens: int | None,
                   output_tokens: int | None) -> None:
    """One request's GenAI metrics (off the request path: when its outcome is read, on the loop thread)."""
    children = _GEN_AI_CHILDREN.get(labels)
    if children is None:
        children = _GEN_AI_CHILDREN[labels] = (GEN_AI_DURATION.labels(*labels), GEN_AI_TOKENS.labels(*labels, "input"),
                                               GEN_AI_TOKENS.labels(*labels, "output"))
    duration, tokens_in, tokens_out = children
    if seconds is not None:
        duration.observe(seconds)
    if input_tokens is not None:
        tokens_in.observe(input_tokens)
    if output_tokens is not None:
        tokens_out.observe(output_tokens)


#: Gauges of state, read when Prometheus scrapes rather than kept current by the code that changes it.
STATE_GAUGES = {
    "keyward_authz_cache_tokens": "Token records in the cache (revoked tombstones included)",
    "keyward_authz_snapshot_age_seconds":
        "Seconds since the cache last heard from Postgres (a snapshot, a NOTIFY batch or a heartbeat)",
    "keyward_authz_listener_connected": "1 while the LISTEN connection to Postgres is up and applying, else 0",
    "keyward_authz_spool_backlog_bytes": "Bytes of audit lines spooled and not yet confirmed by the control plane",
    "keyward_authz_spool_oldest_unshipped_seconds": "Age of the oldest audit line not yet shipped (0: none waiting)",
}


class StateCollector(Collector):
    """The :data:`STATE_GAUGES`, each from a reading function the process registers (:meth:`watch`).

    A reading that fails is left out of that scrape (and the others still answer): a scrape never
    raises, and never touches the request path."""

    def __init__(self) -> None:
        self._sources: dict[str, Callable[[], Mapping[str, float]]] = {}

    def watch(self, name: str, source: Callable[[], Mapping[str, float]]) -> None:
        """Read ``source`` at every scrape (in place of any source registered under ``name`` before)."""
        self._sources[name] = source

    def describe(self) -> Iterable[Metric]:
        return [GaugeMetricFamily(name, doc) for name, doc in STATE_GAUGES.items()]

    def collect(self) -> Iterable[Metric]:
        values: dict[str, float] = {}
        for source in list(self._sources.values()):
            try:
                values.update(source())
            except Exception:  # noqa: S112 - a broken reading must not take the other metrics down with it
                continue
        for name, doc in STATE_GAUGES.items():
            if name in values:
                yield GaugeMetricFamily(name, doc, value=values[name])


STATE = StateCollector()
REGISTRY.register(STATE)
