"""The control plane's Prometheus metrics, served at ``GET /metrics`` on its own app (not in the OpenAPI
document, no credential asked).

``/metrics`` answers anyone who can reach the control plane's port, like ``/healthz``: in Kubernetes
the chart's NetworkPolicy admits the monitoring namespace and its ServiceMonitor scrapes it; on
``make up`` it is on 127.0.0.1. So nothing here may be a secret or name a person: label values are
methods, route templates (``/api/v1/tokens/{token_id}``, never the path a client sent), status
codes, chain and duty names, scope types, and team and project names. Every value is a count, a
duration, a ratio or a timestamp.

Metrics live in a registry of their own (:data:`REGISTRY`), not prometheus_client's global one: the
control plane imports parts of authz (the pipeline, the listener of its token mirror) whose
``keyward_authz_*`` metrics describe authz, not this process.

* HTTP: :class:`HttpMetrics`, an ASGI middleware: ``keyward_controlplane_http_requests_total{method,
  route,status}`` and ``keyward_controlplane_http_request_duration_seconds{method,route}``. A request
  no route matched (a 404, a body refused before routing) is ``route="unmatched"``.
* Audit: ``keyward_audit_chain_intact{chain}`` and ``keyward_audit_chain_verified_timestamp_seconds
  {chain}`` from the verification duties (only the replica that ran the round has them: aggregate with
  ``min`` / ``max``), ``keyward_audit_ingest_records_total`` (records stored, duplicates not counted).
* Budgets: ``keyward_budget_utilisation_ratio{scope_type,scope}``, spent / amount of the current period
  of every team and project budget in effect, refreshed by the ``budgets`` duty on every replica
  (:func:`set_budget_utilisation`), never computed by a scrape. ``scope`` is the team's name, or
  ``<team>/<project>`` (project names are unique within their team only).
* Revocation: ``keyward_revocation_confirm_seconds``, from a revocation's commit until every live authz
  replica confirmed it (or the wait ran out: then about ``KEYWARD_REVOCATION_WAIT_SECONDS``).
* Duties: ``keyward_duty_failures_total{duty}`` (failed rounds) and ``keyward_duty_up{duty}`` (1 while
  it runs and ticks, as ``/livez`` judges it; the long-running listeners too).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REGISTRY = CollectorRegistry(auto_describe=True)
for _standard in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):  # the process's CPU, memory, GC
    REGISTRY.register(_standard)

HTTP_REQUESTS = Counter("keyward_controlplane_http_requests_total", "HTTP requests answered, by route template",
                        ["method", "route", "status"], registry=REGISTRY)
HTTP_SECONDS = Histogram("keyward_controlplane_http_request_duration_seconds",
                         "Time to answer an HTTP request (to its last byte), by route template", ["method", "route"],
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
                         registry=REGISTRY)
CHAIN_INTACT = Gauge("keyward_audit_chain_intact", "1 if the latest verification of the chain found it intact, else 0",
                     ["chain"], registry=REGISTRY)
CHAIN_VERIFIED = Gauge("keyward_audit_chain_verified_timestamp_seconds",
                       "When the chain was last verified (seconds since the epoch)", ["chain"], registry=REGISTRY)
INGEST_RECORDS = Counter("keyward_audit_ingest_records_total",
                         "Audit records (decisions and outcomes) stored from the data plane, duplicates not counted",
                         registry=REGISTRY)
REVOCATION_CONFIRM = Histogram(
    "keyward_revocation_confirm_seconds",
    "From a revocation's commit until every live authz replica confirmed it (or the wait ran out)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0), registry=REGISTRY)
DUTY_FAILURES = Counter("keyward_duty_failures_total", "Failed rounds of a background duty", ["duty"],
                        registry=REGISTRY)

#: HTTP methods kept as they are; any other is ``other`` (a client chooses the method).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"


def route_of(scope: Scope, base: str = "") -> str:
    """The template of the route that answered (the router leaves the route in ``scope``), never the raw
    path. ``base`` is the ``root_path`` the request arrived with: what the mounts it went through added
    to it is their prefix (their literal paths: no mount of this app has a parameter in its path).

    An included router's prefix (``/api/v1``) is not in its routes' own ``path`` on recent FastAPI: it is
    the raw path's leading segments beyond the template's (literal too: no prefix here has a parameter).

    >>> from starlette.routing import Route
    >>> route_of({"route": Route("/tokens/{token_id}", lambda r: None), "path": "/api/v1/tokens/1234"})
    '/api/v1/tokens/{token_id}'
    >>> route_of({"path": "/api/v1/tokens/1234"})
    'unmatched'
    """
    route = scope.get("route")
    template = getattr(route, "path", None)
    if not isinstance(template, str):
        return UNMATCHED
    root = str(scope.get("root_path", ""))
    prefix = root[len(base):]
    if isinstance(route, Mount):  # an app mounted whole (static files): its root_path ends with its own path
        return f"{prefix.removesuffix(template)}{template}/{{path}}"
    path = str(scope.get("path", ""))
    path = path[len(root):] if path.startswith(root) else path
    extra = path.count("/") - template.count("/")
    if extra > 0 and ":path}" not in template:
        prefix += "/".join(path.split("/")[: extra + 1])
    return prefix + template


class HttpMetrics:
    """Count and time every HTTP request by method, route template and status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        base = scope.get("root_path", "")
        status = 500  # what the client gets if the app raises before answering

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            method = scope.get("method", "")
            method = method if method in METHODS else "other"
            route = route_of(scope, base)
            HTTP_REQUESTS.labels(method, route, str(status)).inc()
            HTTP_SECONDS.labels(method, route).observe(time.perf_counter() - started)


async def endpoint(_request: Request) -> Response:
    """``GET /metrics``: the Prometheus text format."""
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


def chain_verified(chain: str, *, intact: bool, at: float) -> None:
    """A verification of ``chain`` finished at ``at`` (seconds since the epoch)."""
    CHAIN_INTACT.labels(chain).set(1 if intact else 0)
    CHAIN_VERIFIED.labels(chain).set(at)


class _State(Collector):
    """Gauges whose set of series changes (budgets come and go, duties are registered at start-up):
    each scrape yields what is there now."""

    def __init__(self) -> None:
        #: (scope type, scope label) -> spent / amount, replaced whole by each refresh.
        self.utilisation: Mapping[tuple[str, str], float] = {}
        #: Duty name -> whether it is alive, read at scrape time.
        self.duties: Callable[[], Mapping[str, bool]] = dict

    def describe(self) -> Iterable[Metric]:
        return [GaugeMetricFamily("keyward_budget_utilisation_ratio", "", labels=["scope_type", "scope"]),
                GaugeMetricFamily("keyward_duty_up", "", labels=["duty"])]

    def collect(self) -> Iterable[Metric]:
        ratio = GaugeMetricFamily(
            "keyward_budget_utilisation_ratio",
            "Spent / amount of the current period of each team and project budget in effect (1: reached)",
            labels=["scope_type", "scope"])
        for (scope_type, scope), value in sorted(self.utilisation.items()):
            ratio.add_metric([scope_type, scope], value)
        yield ratio
        up = GaugeMetricFamily("keyward_duty_up", "1 while a background duty runs and ticks, else 0", labels=["duty"])
        try:
            duties = self.duties()
        except Exception:  # a broken reading must not fail the scrape
            duties = {}
        for name, alive in sorted(duties.items()):
            up.add_metric([name], 1.0 if alive else 0.0)
        yield up


_STATE = _State()
REGISTRY.register(_STATE)


def set_budget_utilisation(ratios: Mapping[tuple[str, str], float]) -> None:
    """Replace the budget gauges with this refresh's (a budget removed since is gone from the next scrape)."""
    _STATE.utilisation = dict(ratios)


def watch_duties(read: Callable[[], Mapping[str, bool]]) -> None:
    """Report ``keyward_duty_up`` from ``read()`` (duty name -> alive) at every scrape."""
    _STATE.duties = read
