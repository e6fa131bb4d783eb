"""Prometheus metrics of the real stack, scraped as Prometheus would after real gateway traffic: authz's
endpoint (the port ``make up`` gives it), the control plane's ``/metrics`` and Envoy's stats through
its admin socket. Values must move with the traffic, GenAI token usage must equal what the mock
provider reported, labels must stay bounded (no token, user or e-mail), and no secret may appear."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from authz.outcomes import Outcome
from authz.tokens import generate_token
from tests.e2e.conftest import Gateway

pytestmark = pytest.mark.e2e

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class Scrape:
    """One scrape: its text, and every sample by name and labels."""

    def __init__(self, url: str, *, transport: httpx.BaseTransport | None = None) -> None:
        with httpx.Client(transport=transport, timeout=10) as client:
            reply = client.get(url)
        assert reply.status_code == 200, reply.text
        self.text = reply.text
        self.samples: Samples = {}
        self.families = list(text_string_to_metric_families(self.text))
        for family in self.families:
            for sample in family.samples:
                self.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def value(self, name: str, **labels: str) -> float:
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def has(self, name: str, **labels: str) -> bool:
        return (name, frozenset(labels.items())) in self.samples

    def labelled(self, name: str) -> list[dict[str, str]]:
        return [dict(labels) for (sample, labels) in self.samples if sample == name]

    def label_values(self) -> set[str]:
        """Every label value but team and scope names (which an admin chooses, and may look like anything)."""
        return {value for (_, labels) in self.samples for key, value in labels if key not in ("team", "scope")}


def authz(gateway: Gateway) -> Scrape:
    assert gateway.info.authz_metrics_url is not None
    return Scrape(gateway.info.authz_metrics_url)


def controlplane(gateway: Gateway) -> Scrape:
    return Scrape(f"{gateway.info.api_url}/metrics")


def eventually(scrape: Callable[[], Scrape], condition: Callable[[Scrape], bool], *, timeout: float = 15,
               what: str) -> Scrape:
    deadline = time.monotonic() + timeout
    while True:
        latest = scrape()
        if condition(latest):
            return latest
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


def secrets_of(gateway: Gateway) -> list[str]:
    authz_env = gateway.stack.services["authz"].env
    cp_env = gateway.stack.services["controlplane"].env
    return [gateway.info.admin_token, *gateway.provider_keys.values(), authz_env["KEYWARD_INGEST_TOKEN"],
            authz_env["KEYWARD_TOKEN_HASH_KEY"], cp_env["KEYWARD_SESSION_SECRET"], cp_env["KEYWARD_AUDIT_SIGNING_KEY"]]


def _chats(gateway: Gateway, secret: str, count: int) -> tuple[int, int]:
    """``count`` chat completions through the gateway; the usage the mock provider reported, summed."""
    prompt = completion = 0
    for _ in range(count):
        reply = gateway.chat(secret)
        assert reply.status_code == 200, reply.text
        usage = reply.json()["usage"]
        prompt, completion = prompt + usage["prompt_tokens"], completion + usage["completion_tokens"]
    return prompt, completion


def test_authz_metrics_follow_the_traffic(gateway: Gateway) -> None:
    team = gateway.team(f"metrics-{uuid.uuid4().hex[:8]}")
    minted = gateway.mint(team=team)
    labels = {"gen_ai_system": "openai", "gen_ai_request_model": "gpt-4o-mini", "team": team["name"]}
    before = authz(gateway)
    prompt, completion = _chats(gateway, minted.secret, 3)
    assert gateway.chat(None).status_code == 401  # token_missing
    assert gateway.chat(generate_token()).status_code == 401  # token_unknown
    # Outcomes are read from Envoy's audit log off the request path: wait for the third.
    after = eventually(lambda: authz(gateway),
                       lambda s: s.value("gen_ai_client_operation_duration_seconds_count", **labels) >= 3,
                       what="three outcomes read and priced")

    def moved(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    # GenAI usage is exactly what the provider reported, under bounded labels.
    assert moved("gen_ai_client_token_usage_sum", **labels, gen_ai_token_type="input") == prompt
    assert moved("gen_ai_client_token_usage_sum", **labels, gen_ai_token_type="output") == completion
    assert moved("gen_ai_client_token_usage_count", **labels, gen_ai_token_type="input") == 3
    assert moved("gen_ai_client_operation_duration_seconds_count", **labels) == 3
    assert moved("gen_ai_client_operation_duration_seconds_sum", **labels) > 0
    # Decisions and the Check histogram moved together, outcome by outcome.
    assert moved("keyward_authz_decisions_total", outcome="allowed") >= 3
    assert moved("keyward_authz_decisions_total", outcome=Outcome.TOKEN_MISSING.value) >= 1
    assert moved("keyward_authz_decisions_total", outcome=Outcome.TOKEN_UNKNOWN.value) >= 1
    for outcome in Outcome:
        assert after.value("keyward_authz_check_duration_seconds_count", outcome=outcome.value) == \
            after.value("keyward_authz_decisions_total", outcome=outcome.value), outcome
    allowed = after.value("keyward_authz_check_duration_seconds_count", outcome="allowed")
    assert after.value("keyward_authz_check_duration_seconds_bucket", outcome="allowed", le="+Inf") == allowed
    assert 0 < after.value("keyward_authz_check_duration_seconds_sum", outcome="allowed") < allowed  # < 1 s each
    # State, read at scrape time.
    assert after.value("keyward_authz_cache_tokens") >= 1
    assert after.value("keyward_authz_listener_connected") == 1
    assert 0 <= after.value("keyward_authz_snapshot_age_seconds") < 15  # the cache's staleness bound
    assert after.value("keyward_authz_shipper_up") == 1
    for gauge in ("keyward_authz_spool_backlog_bytes", "keyward_authz_spool_oldest_unshipped_seconds"):
        assert after.has(gauge) and after.value(gauge) >= 0
    assert {s["task"] for s in after.labelled("keyward_authz_background_task_up")} >= {"listener", "audit-shipper"}
    assert all(after.value("keyward_authz_background_task_up", **s) == 1
               for s in after.labelled("keyward_authz_background_task_up"))
    # Bounded labels: no token, user or address; no secret anywhere.
    values = after.label_values()
    assert not any(UUID.search(value) for value in values), sorted(v for v in values if UUID.search(v))
    for private in (minted.secret, minted.id, minted.user["id"], minted.user["email"], *secrets_of(gateway)):
        assert private not in after.text
    assert "@" not in after.text


def test_the_spool_backlog_drains_to_nothing(gateway: Gateway) -> None:
    minted = gateway.mint()
    _chats(gateway, minted.secret, 2)
    # Shipped within a round or two (the shipper waits a quarter second when idle).
    eventually(lambda: authz(gateway), lambda s: s.value("keyward_authz_spool_backlog_bytes") == 0
               and s.value("keyward_authz_spool_oldest_unshipped_seconds") == 0, what="the spool to drain")


def _rate_limited(gateway: Gateway, secret: str) -> int:
    """Requests until a rate limit of one a minute refuses one (the minute may turn in between)."""
    refused = 0
    for _ in range(6):
        reply = gateway.chat(secret)
        if reply.status_code == 429:
            assert reply.json()["error"]["code"] == "rate_limit_exceeded"
            refused += 1
            if refused == 2:
                return refused
    return refused


def test_refusals_by_a_limit_are_counted_by_scope_type(gateway: Gateway) -> None:
    minted = gateway.mint()
    reply = gateway.admin.put(f"/rate-limits/token/{minted.id}", json={"rpm": 1})
    assert reply.status_code in (200, 201), reply.text
    before = authz(gateway)
    refused = _rate_limited(gateway, minted.secret)
    assert refused >= 1
    after = authz(gateway)
    moved = after.value("keyward_authz_rate_limit_refusals_total", scope_type="token") - \
        before.value("keyward_authz_rate_limit_refusals_total", scope_type="token")
    assert moved == refused
    # A team's budget spent by one request of a pricey model (its own price): the next is refused.
    model = f"metrics-test-{uuid.uuid4().hex[:8]}"
    reply = gateway.admin.post("/prices", json={"provider": "openai", "model": model, "input_per_mtok": "1000",
                                                "output_per_mtok": "10000", "effective_from": "2026-01-01T00:00:00Z"})
    assert reply.status_code == 201, reply.text
    team = gateway.team()
    poor = gateway.mint(team=team)
    reply = gateway.admin.put(f"/budgets/team/{team['id']}", json={"amount_usd": "0.0001", "posture": "hard"})
    assert reply.status_code in (200, 201), reply.text
    gateway.wait_until(lambda: gateway.chat(poor.secret, model=model).status_code == 429, timeout=10,
                       what="the budget to be spent")
    before = authz(gateway)
    assert gateway.chat(poor.secret, model=model).json()["error"]["code"] == "budget_exceeded"
    after = authz(gateway)
    assert after.value("keyward_authz_budget_refusals_total", scope_type="team") - \
        before.value("keyward_authz_budget_refusals_total", scope_type="team") == 1


def test_controlplane_metrics_name_routes_by_template(gateway: Gateway) -> None:
    minted = gateway.mint()
    before = controlplane(gateway)
    gateway.revoke(minted.id)
    assert gateway.admin.get(f"/tokens/{uuid.uuid4()}").status_code == 404
    after = controlplane(gateway)
    revoke = {"method": "POST", "route": "/api/v1/tokens/{token_id}/revoke", "status": "200"}
    assert after.value("keyward_controlplane_http_requests_total", **revoke) - \
        before.value("keyward_controlplane_http_requests_total", **revoke) == 1
    missing = {"method": "GET", "route": "/api/v1/tokens/{token_id}", "status": "404"}
    assert after.value("keyward_controlplane_http_requests_total", **missing) - \
        before.value("keyward_controlplane_http_requests_total", **missing) == 1
    assert after.value("keyward_controlplane_http_request_duration_seconds_count", method="POST",
                       route="/api/v1/tokens/{token_id}/revoke") >= 1
    # Every revocation waits for the replicas' confirmation, and is timed.
    assert after.value("keyward_revocation_confirm_seconds_count") - \
        before.value("keyward_revocation_confirm_seconds_count") == 1
    assert after.value("keyward_revocation_confirm_seconds_sum") > \
        before.value("keyward_revocation_confirm_seconds_sum")
    routes = {labels["route"] for labels in after.labelled("keyward_controlplane_http_requests_total")}
    assert all(route == "unmatched" or route.startswith("/") for route in routes)
    assert not any(UUID.search(value) for value in after.label_values())
    # The duties, as /livez judges them.
    duties = {labels["duty"]: after.value("keyward_duty_up", **labels) for labels in after.labelled("keyward_duty_up")}
    assert duties.keys() >= {"budgets", "lifecycle", "verify-audit", "revocation-acks", "token-mirror"}
    assert set(duties.values()) == {1.0}
    assert after.has("keyward_duty_failures_total", duty="budgets")
    # Not part of the admin API's document; no secret, no person.
    assert "/metrics" not in httpx.get(f"{gateway.info.api_url}/openapi.json").json()["paths"]
    for private in (minted.secret, minted.id, minted.user["email"], *secrets_of(gateway)):
        assert private not in after.text


def test_ingest_and_budget_utilisation_reach_the_controlplane_metrics(gateway: Gateway) -> None:
    team = gateway.team(f"metrics-{uuid.uuid4().hex[:8]}")
    minted = gateway.mint(team=team)
    before = controlplane(gateway)
    _chats(gateway, minted.secret, 2)
    eventually(lambda: controlplane(gateway), lambda s: s.value("keyward_audit_ingest_records_total")
               >= before.value("keyward_audit_ingest_records_total") + 4, what="2 decisions and 2 outcomes stored")
    unbudgeted = gateway.team(f"metrics-{uuid.uuid4().hex[:8]}")
    reply = gateway.admin.put(f"/budgets/team/{team['id']}", json={"amount_usd": "100", "posture": "alert"})
    assert reply.status_code in (200, 201), reply.text
    ratio = {"scope_type": "team", "scope": team["name"]}

    def refreshed(scrape: Scrape) -> bool:
        return scrape.value("keyward_budget_utilisation_ratio", **ratio) > 0

    after = eventually(lambda: controlplane(gateway), refreshed, what="the budgets duty to refresh the gauge")
    utilisation = gateway.admin.get(f"/budgets/team/{team['id']}/utilisation").json()["budgets"][0]
    assert after.value("keyward_budget_utilisation_ratio", **ratio) * 100 == \
        pytest.approx(float(utilisation["percent"]), abs=0.01)
    # A team without a budget (its profile gives none either) has no gauge, in a refresh after it existed.
    assert not after.has("keyward_budget_utilisation_ratio", scope_type="team", scope=unbudgeted["name"])


def test_envoy_stats_are_read_through_the_admin_socket(gateway: Gateway) -> None:
    with gateway.stack.envoy_admin() as admin:
        reply = admin.get("/stats/prometheus")
    assert reply.status_code == 200
    families = {family.name for family in text_string_to_metric_families(reply.text)}
    assert "envoy_http_downstream_rq" in families or "envoy_http_downstream_rq_total" in families


def test_the_audit_chains_report_their_last_verification(gateway: Gateway) -> None:
    # The verification duty runs every minute: this waits for its first round after the stack started.
    after = eventually(lambda: controlplane(gateway), lambda s: len(s.labelled("keyward_audit_chain_intact")) >= 3,
                       timeout=90, what="the verify-audit duty's first round")
    for labels in after.labelled("keyward_audit_chain_intact"):
        assert after.value("keyward_audit_chain_intact", **labels) == 1, labels
        verified = after.value("keyward_audit_chain_verified_timestamp_seconds", **labels)
        assert time.time() - 120 < verified <= time.time() + 1
