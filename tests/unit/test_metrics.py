"""The metrics' pure parts: bounded GenAI labels, the outcome histograms, refusal counters, the spool
backlog reading, the state collector, the control plane's HTTP middleware and route labels.

prometheus_client's registries are process-wide, so each test reads how much a series moved."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from prometheus_client import REGISTRY
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from authz.audit.costing import Costing
from authz.audit.records import outcome_line
from authz.audit.shipper import Shipper
from authz.audit.spool import Spool
from authz.cache import ModelCatalog, TokenCache, TokenRecord
from authz.limits import Budget, Policy, RateLimit
from authz.meter import Meter
from authz.metrics import STATE_GAUGES, StateCollector, gen_ai_labels
from authz.outcomes import Outcome
from authz.pipeline import Limits
from authz.prices import NAMES_KEPT, Override, PriceTable
from controlplane import metrics as cp_metrics
from controlplane.cli.stack import envoy_stats
from tests.unit import checkrequests as cr
from tests.unit.test_pipeline import Gateway, _limited


def moved(name: str, labels: dict[str, str], action: Callable[[], object], registry=REGISTRY) -> float:
    """How much the sample ``name{labels}`` changed while ``action`` ran (0 for a series that stays absent)."""
    before = registry.get_sample_value(name, labels) or 0.0
    action()
    return (registry.get_sample_value(name, labels) or 0.0) - before


# -- GenAI labels and histograms --------------------------------------------------------------------


def test_gen_ai_labels_are_bounded() -> None:
    assert gen_ai_labels("anthropic", "claude-haiku-4-5", "research") == ("anthropic", "claude-haiku-4-5", "research")
    assert gen_ai_labels("azure", None, None) == ("other", "other", "none")


def test_model_names_come_from_the_price_tables_whatever_the_client_sent() -> None:
    table = PriceTable([Override("o1", "openai", "in-house-7b", Decimal(0), None, Decimal(0), 0.0)])
    assert table.model_name("openai", "gpt-4o-mini-2024-07-18") == "gpt-4o-mini"  # the bundled table's id
    assert table.model_name("openai", "in-house-7b") == "in-house-7b"  # an admin's override
    assert table.model_name("anthropic", "in-house-7b") is None  # overrides are per provider
    assert table.model_name("openai", "gpt-4o-mini-made-up-by-a-client") is None
    for n in range(NAMES_KEPT + 5):  # names clients invent are not remembered without bound
        table.model_name("openai", f"made-up-{n}")
    assert len(table._names) <= NAMES_KEPT


def _costing(team: str | None = "research") -> Costing:
    cache = TokenCache()
    cache.upsert(TokenRecord(token_id="tok-1", token_hash="ab" * 32, user_id="user-1", user_email="dev@example.com",
                             team=team, environment="dev", catalog=ModelCatalog(["*"]), expires_at=None,
                             owner_active=True, team_id="team-1" if team else None, owner_id="user-1"))
    return Costing(cache, Limits(Meter()))


def _outcome(costing: Costing, **document: object) -> None:
    """Read one line of Envoy's audit log as the outcome log does: annotate, (spool,) settle."""
    full = {"at": "2026-06-01T12:00:00.000Z", "request_id": f"r-{id(document)}", "status": 200,
            "details": "via_upstream", "method": "POST", "route": "/openai/v1/chat/completions",
            "token_id": "tok-1", "decision": "allowed", "provider": "openai", "model": "gpt-4o-mini",
            "duration_ms": 250, "bytes_in": 400, "bytes_out": 800, **document}
    raw = json.dumps(full).encode()
    line = outcome_line(full, raw, "test")
    costing.annotate(line, full)
    costing.settle(line)


LABELS = {"gen_ai_system": "openai", "gen_ai_request_model": "gpt-4o-mini", "team": "research"}


def test_an_outcome_observes_the_tokens_the_provider_reported_and_its_duration() -> None:
    costing = _costing()
    send = lambda: _outcome(costing, prompt_tokens=9, completion_tokens=6,  # noqa: E731
                            model="gpt-4o-mini-2024-07-18")
    assert moved("gen_ai_client_token_usage_sum", LABELS | {"gen_ai_token_type": "input"}, send) == 9
    assert moved("gen_ai_client_token_usage_sum", LABELS | {"gen_ai_token_type": "output"}, send) == 6
    assert moved("gen_ai_client_token_usage_count", LABELS | {"gen_ai_token_type": "output"}, send) == 1
    assert moved("gen_ai_client_operation_duration_seconds_sum", LABELS, send) == pytest.approx(0.25)


def test_estimates_refusals_and_free_endpoints_are_no_reported_usage() -> None:
    costing = _costing()
    tokens = LABELS | {"gen_ai_token_type": "input"}
    # No usage in the answer: the cost is estimated from bytes, but no token count is made up.
    assert moved("gen_ai_client_token_usage_count", tokens, lambda: _outcome(costing)) == 0
    assert moved("gen_ai_client_operation_duration_seconds_count", LABELS, lambda: _outcome(costing)) == 1
    # Refused: nothing reached a provider.
    refused = lambda: _outcome(costing, decision="token_revoked", status=401, details="ext_authz_denied",  # noqa: E731
                               prompt_tokens=9)
    assert moved("gen_ai_client_operation_duration_seconds_count", LABELS, refused) == 0
    # Listing models costs nothing and reports no usage.
    listing = lambda: _outcome(costing, method="GET", route="/openai/v1/models", model=None)  # noqa: E731
    assert moved("gen_ai_client_token_usage_count", tokens | {"gen_ai_request_model": "other"}, listing) == 0


def test_a_model_no_table_knows_and_a_token_without_a_team_get_bounded_labels() -> None:
    costing = _costing(team=None)
    labels = {"gen_ai_system": "openai", "gen_ai_request_model": "other", "team": "none",
              "gen_ai_token_type": "input"}
    send = lambda: _outcome(costing, model="client-invented-model-123", prompt_tokens=5,  # noqa: E731
                            completion_tokens=1)
    assert moved("gen_ai_client_token_usage_sum", labels, send) == 5


# -- refusal counters ---------------------------------------------------------------------------------


def test_a_check_refused_by_a_rate_limit_is_counted_by_scope_type() -> None:
    gw = Gateway()
    token = gw.mint()
    _limited(gw, Policy({}, {("token", "tok-1"): RateLimit(rpm=1)}))

    def two() -> None:
        outcomes = [gw.check(cr.openai_chat(token)).outcome for _ in range(2)]
        assert outcomes == [Outcome.ALLOWED, Outcome.RATE_LIMITED]

    assert moved("keyward_authz_rate_limit_refusals_total", {"scope_type": "token"}, two) == 1


def test_a_what_if_question_is_no_refusal() -> None:
    gw = Gateway()
    token = gw.mint(team_id="team-1")
    limits = _limited(gw, Policy({("team", "team-1"): Budget(0.0, "month", "hard")}, {}))
    record = gw.records["tok-1"]

    def ask() -> None:
        assert limits.exhausted(record, gw.now, {}) is not None  # the control plane's what-if, dry

    assert moved("keyward_authz_budget_refusals_total", {"scope_type": "team"}, ask) == 0
    check = lambda: gw.check(cr.openai_chat(token))  # noqa: E731
    assert moved("keyward_authz_budget_refusals_total", {"scope_type": "team"}, check) == 1


# -- state read at scrape time ------------------------------------------------------------------------


def _spool_line(spool: Spool, at: str, request_id: str) -> None:
    spool.append({"kind": "decision", "at": at, "request_id": request_id, "decision": "allowed"})


def test_the_backlog_is_what_lies_past_the_shipped_position(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", segment_bytes=150)  # a new segment every line or two
    shipper = Shipper(spool, client=httpx.AsyncClient(), url="http://cp/ingest", token="t" * 16,
                      clock=lambda: 1_780_000_100.0)
    assert shipper.backlog() == (0, 0.0)
    for n, second in enumerate((0, 40, 90)):
        at = datetime(2026, 5, 28, 20, 13, 20, tzinfo=UTC) + timedelta(seconds=second)
        _spool_line(spool, at.isoformat(timespec="microseconds"), f"r{n}")
    total = sum(path.stat().st_size for path in spool.segments())
    assert len(spool.segments()) >= 2
    waiting, oldest = shipper.backlog()
    assert waiting == total
    # 1_780_000_100 is 2026-05-28T20:28:20Z: the first line is 15 minutes old.
    assert oldest == pytest.approx(900.0)
    first = spool.segments()[0]
    first_line = first.read_bytes().split(b"\n")[0]
    shipper._save(first.name, len(first_line) + 1)  # the first line shipped
    waiting, oldest = shipper.backlog()
    assert waiting == total - len(first_line) - 1 and oldest == pytest.approx(860.0)
    last = spool.segments()[-1]
    shipper._save(last.name, last.stat().st_size)  # everything shipped
    assert shipper.backlog() == (0, 0.0)


def test_a_failing_reading_leaves_only_its_own_gauges_out() -> None:
    collector = StateCollector()

    def broken() -> dict[str, float]:
        raise OSError("spool unreadable")

    collector.watch("spool", broken)
    collector.watch("cache", lambda: {"keyward_authz_cache_tokens": 3})
    found = {family.name: family.samples[0].value for family in collector.collect()}
    assert found == {"keyward_authz_cache_tokens": 3}
    collector.watch("cache", lambda: {"keyward_authz_cache_tokens": 4})  # a restart replaces its source
    assert [family.samples[0].value for family in collector.collect()] == [4]
    assert {family.name for family in collector.describe()} == set(STATE_GAUGES)


# -- the control plane's HTTP metrics ---------------------------------------------------------------


def _app() -> Starlette:
    async def item(request: Request) -> PlainTextResponse:
        return PlainTextResponse(request.path_params["item_id"])

    async def broken(_request: Request) -> PlainTextResponse:
        raise RuntimeError("bug")

    app = Starlette(routes=[Route("/things/{item_id}", item), Route("/broken", broken),
                            Mount("/nested", routes=[Route("/{item_id}", item)]),
                            Mount("/static", app=PlainTextResponse("a file"))])
    app.add_middleware(cp_metrics.HttpMetrics)
    return app


def _requests(method: str, route: str, status: int) -> dict[str, str]:
    return {"method": method, "route": route, "status": str(status)}


def test_requests_are_counted_by_route_template_never_by_path() -> None:
    client = TestClient(_app(), raise_server_exceptions=False)
    name = "keyward_controlplane_http_requests_total"
    registry = cp_metrics.REGISTRY
    assert moved(name, _requests("GET", "/things/{item_id}", 200), lambda: client.get("/things/secret-ish-id"),
                 registry) == 1
    assert moved(name, _requests("GET", "unmatched", 404), lambda: client.get("/nowhere/u-1234"), registry) == 1
    assert moved(name, _requests("POST", "/things/{item_id}", 405), lambda: client.post("/things/1"), registry) == 1
    assert moved(name, _requests("GET", "/broken", 500), lambda: client.get("/broken"), registry) == 1
    assert moved(name, _requests("other", "/things/{item_id}", 405), lambda: client.request("BREW", "/things/1"),
                 registry) == 1
    assert moved(name, _requests("GET", "/nested/{item_id}", 200), lambda: client.get("/nested/x"), registry) == 1
    assert moved(name, _requests("GET", "/static/{path}", 200), lambda: client.get("/static/css/x.css"),
                 registry) == 1
    assert moved("keyward_controlplane_http_request_duration_seconds_count",
                 {"method": "GET", "route": "/things/{item_id}"}, lambda: client.get("/things/2"), registry) == 1
    scrape = cp_metrics.generate_latest(registry).decode()
    assert "secret-ish-id" not in scrape and "u-1234" not in scrape


def test_an_included_router_s_prefix_is_part_of_the_template() -> None:
    router = APIRouter()

    @router.get("/tokens/{token_id}")
    async def read(token_id: str) -> dict[str, str]:
        return {"id": token_id}

    @router.post("/tokens/{token_id}/revoke")
    async def revoke(token_id: str) -> dict[str, str]:
        return {"id": token_id}

    app = FastAPI()
    app.include_router(router, prefix="/api/v1")
    app.add_middleware(cp_metrics.HttpMetrics)
    client = TestClient(app)
    name, registry = "keyward_controlplane_http_requests_total", cp_metrics.REGISTRY
    assert moved(name, _requests("GET", "/api/v1/tokens/{token_id}", 200), lambda: client.get("/api/v1/tokens/t-9"),
                 registry) == 1
    assert moved(name, _requests("POST", "/api/v1/tokens/{token_id}/revoke", 200),
                 lambda: client.post("/api/v1/tokens/t-9/revoke"), registry) == 1
    assert "t-9" not in cp_metrics.generate_latest(registry).decode()


def test_budget_and_duty_gauges_show_what_is_there_now() -> None:
    cp_metrics.set_budget_utilisation({("team", "research"): 0.5, ("project", "research/alpha"): 1.25})
    cp_metrics.watch_duties(lambda: {"budgets": True, "lifecycle": False})
    value = cp_metrics.REGISTRY.get_sample_value
    assert value("keyward_budget_utilisation_ratio", {"scope_type": "project", "scope": "research/alpha"}) == 1.25
    assert value("keyward_duty_up", {"duty": "lifecycle"}) == 0
    cp_metrics.set_budget_utilisation({("team", "research"): 0.75})  # the project's budget was removed
    assert value("keyward_budget_utilisation_ratio", {"scope_type": "project", "scope": "research/alpha"}) is None
    assert value("keyward_budget_utilisation_ratio", {"scope_type": "team", "scope": "research"}) == 0.75
    cp_metrics.chain_verified("events", intact=False, at=1_780_000_000.0)
    assert value("keyward_audit_chain_intact", {"chain": "events"}) == 0
    assert value("keyward_audit_chain_verified_timestamp_seconds", {"chain": "events"}) == 1_780_000_000.0


def test_the_banner_says_how_to_read_envoy_s_stats() -> None:
    assert envoy_stats("unix:/d/run/envoy-admin.sock") == \
        "curl --unix-socket /d/run/envoy-admin.sock http://envoy/stats/prometheus"
    assert envoy_stats("127.0.0.1:9901") == "http://127.0.0.1:9901/stats/prometheus"
