"""What each request costs, and budgets and rate limits enforced at the gateway, against the real stack:
real Envoy (with its Lua filter asking streams for usage), real authz, the mock provider's known usage,
and the official OpenAI and Anthropic SDKs backing off a rate limit on their own.

Models named ``spend-test-*`` are unknown to the bundled price table; each test prices the one it uses
with an override, so nothing here changes what other tests' requests cost.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from decimal import Decimal

import anthropic
import httpx
import openai
import pytest

from tests.e2e.conftest import Gateway, Minted
from tests.e2e.test_audit import wait_for_records
from tests.e2e.test_denials import sql

pytestmark = pytest.mark.e2e

#: The mock provider's usage: 9 prompt tokens, and one output token per word, six at most.
PROMPT, WORDS = 9, 6


def _model(gateway: Gateway, *, input_per_mtok: int = 1000, output_per_mtok: int = 10_000) -> str:
    """A model of its own, priced by an override (from a moment ago)."""
    name = f"spend-test-{uuid.uuid4().hex[:8]}"
    for provider in ("openai", "anthropic"):
        reply = gateway.admin.post("/prices", json={
            "provider": provider, "model": name, "input_per_mtok": str(input_per_mtok),
            "output_per_mtok": str(output_per_mtok), "effective_from": "2026-01-01T00:00:00Z"})
        assert reply.status_code == 201, reply.text
    return name


def _cost(model_prices: tuple[int, int], prompt: int = PROMPT, completion: int = WORDS) -> Decimal:
    per_input, per_output = model_prices
    return (Decimal(prompt) * per_input + Decimal(completion) * per_output) / 1_000_000


def _chat(gateway: Gateway, secret: str, model: str, **body: object) -> httpx.Response:
    return gateway.http.post("/openai/v1/chat/completions", headers={"Authorization": f"Bearer {secret}"},
                             json={"model": model, "messages": [{"role": "user", "content": "hi"}], **body})


def _own_team(gateway: Gateway) -> tuple[dict, Minted]:
    team = gateway.team()
    return team, gateway.mint(team=team)


def _budget(gateway: Gateway, scope: str, scope_id: str, amount: str, posture: str = "hard") -> None:
    reply = gateway.admin.put(f"/budgets/{scope}/{scope_id}", json={"amount_usd": amount, "posture": posture})
    assert reply.status_code in (200, 201), reply.text


def _spend_it_all(gateway: Gateway, secret: str, model: str) -> None:
    """Send requests until the budget is reached, not merely too reserved for one more: refused again
    once everything in flight has settled (a request that does not fit runs alone until then)."""
    def reached() -> bool:
        if _chat(gateway, secret, model, max_tokens=WORDS).status_code != 429:
            return False
        time.sleep(0.5)
        return _chat(gateway, secret, model, max_tokens=WORDS).status_code == 429

    gateway.wait_until(reached, timeout=30, what="the budget to be spent")


def test_every_request_records_its_cost(gateway: Gateway) -> None:
    model = _model(gateway)
    team, minted = _own_team(gateway)
    plain = _chat(gateway, minted.secret, model)
    bounded = _chat(gateway, minted.secret, model, max_tokens=2)
    listing = gateway.http.get("/openai/v1/models", headers={"Authorization": f"Bearer {minted.secret}"})
    ids = [r.headers["x-request-id"] for r in (plain, bounded, listing)]
    records = wait_for_records(gateway, ids)
    first, second, free = (records[i] for i in ids)
    assert Decimal(first["cost_usd"]) == _cost((1000, 10_000))
    assert Decimal(first["cost_input_usd"]) + Decimal(first["cost_output_usd"]) == Decimal(first["cost_usd"])
    assert first["price_version"].startswith("override:") and first["usage_estimated"] is False
    assert Decimal(second["cost_usd"]) == _cost((1000, 10_000), completion=2)  # what the provider reported
    # The gateway answers a model listing itself: no provider saw it, nothing was spent.
    assert free["decision"] == "answered" and Decimal(free["cost_usd"]) == 0
    # The rollup /spend reads from has the same money, per team.
    rolled = sql(gateway, "SELECT sum(cost_usd) AS cost, sum(requests) AS n FROM spend_daily WHERE team_id = $1::uuid",
                 team["id"])[0]
    assert rolled["cost"] == Decimal(first["cost_usd"]) + Decimal(second["cost_usd"]) and rolled["n"] == 2


def test_a_stream_that_did_not_ask_for_usage_gets_it_asked_for(gateway: Gateway) -> None:
    model = _model(gateway)
    _, minted = _own_team(gateway)
    client = openai.OpenAI(base_url=f"{gateway.url}/openai/v1", api_key=minted.secret, max_retries=0)
    with client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                        stream=True) as stream:
        chunks = list(stream)
        request_id = stream.response.headers["x-request-id"]
    # The SDK handles the extra last chunk: no choices, the usage.
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from the mock provider."
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    asked = [r for r in gateway.received() if ["x-request-id", request_id] in r["headers"]]
    assert asked and json.loads(asked[0]["body"])["stream_options"] == {"include_usage": True}
    record = wait_for_records(gateway, [request_id])[request_id]
    assert (record["prompt_tokens"], record["completion_tokens"]) == (PROMPT, WORDS)
    assert record["usage_estimated"] is False and Decimal(record["cost_usd"]) == _cost((1000, 10_000))
    # A client that chose its stream options keeps them: then no usage comes, and the cost is an
    # estimate from the bytes, marked as such, never a silent zero.
    own = _chat(gateway, minted.secret, model, stream=True, stream_options={"include_usage": False})
    estimated = wait_for_records(gateway, [own.headers["x-request-id"]])[own.headers["x-request-id"]]
    assert estimated["usage_estimated"] is True and Decimal(estimated["cost_usd"]) > 0
    assert estimated["prompt_tokens"] is None


def test_an_unpriced_model_says_so_until_an_admin_prices_it(gateway: Gateway) -> None:
    _, minted = _own_team(gateway)
    model = f"spend-test-local-{uuid.uuid4().hex[:6]}"
    before = _chat(gateway, minted.secret, model)
    record = wait_for_records(gateway, [before.headers["x-request-id"]])[before.headers["x-request-id"]]
    assert (record["cost_usd"], record["price_version"]) == (None, "unpriced")
    reply = gateway.admin.post("/prices", json={"provider": "openai", "model": model, "input_per_mtok": "0",
                                                "output_per_mtok": "0"})
    assert reply.status_code == 201, reply.text
    time.sleep(0.5)  # the override reached authz (a NOTIFY)
    after = _chat(gateway, minted.secret, model).headers["x-request-id"]
    record = wait_for_records(gateway, [after])[after]
    assert record["price_version"] == f"override:{reply.json()['id']}" and Decimal(record["cost_usd"]) == 0


def test_a_spent_budget_refuses_before_the_provider_in_each_api_s_shape(gateway: Gateway) -> None:
    model = _model(gateway)  # $0.069 a request
    team, minted = _own_team(gateway)
    _budget(gateway, "team", team["id"], "0.50")
    _spend_it_all(gateway, minted.secret, model)
    gateway.forget_received()
    refused = _chat(gateway, minted.secret, model)
    assert refused.status_code == 429 and gateway.received() == []
    error = refused.json()["error"]
    assert (error["code"], error["type"]) == ("budget_exceeded", "insufficient_quota")
    assert error["limit"]["scope"] == "team" and error["limit"]["id"] == team["id"]
    assert refused.headers["x-should-retry"] == "false" and int(refused.headers["retry-after"]) > 0
    claude = gateway.http.post("/anthropic/v1/messages", headers={"x-api-key": minted.secret,
                                                                   "anthropic-version": "2023-06-01"},
                               json={"model": model, "max_tokens": 5, "messages": []})
    assert claude.status_code == 429 and claude.json()["error"]["type"] == "rate_limit_error", claude.text
    # The SDKs raise at once, without retrying a budget that no retry can help.
    sdk = openai.OpenAI(base_url=f"{gateway.url}/openai/v1", api_key=minted.secret)
    started = time.monotonic()
    with pytest.raises(openai.RateLimitError) as raised:
        sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    assert time.monotonic() - started < 2 and raised.value.code == "budget_exceeded"
    # The record says which budget refused it; the spend admitted stayed within it.
    record = wait_for_records(gateway, [refused.headers["x-request-id"]])[refused.headers["x-request-id"]]
    assert (record["decision"], record["limit_scope"]) == ("budget_exceeded", f"budget:team:{team['id']}")
    spent = sql(gateway, "SELECT sum(cost_usd) AS s FROM spend_daily WHERE team_id = $1::uuid", team["id"])[0]["s"]
    assert Decimal("0.50") <= spent <= Decimal("0.50") + _cost((1000, 10_000))  # at most one request past it
    # An alert-only posture announces and never refuses.
    _budget(gateway, "team", team["id"], "0.50", posture="alert")
    gateway.wait_until(lambda: _chat(gateway, minted.secret, model).status_code == 200, timeout=5,
                       what="the alert-only budget to reach authz")


def test_a_budget_survives_a_restart_of_authz(gateway: Gateway) -> None:
    model = _model(gateway)
    team, minted = _own_team(gateway)
    _budget(gateway, "team", team["id"], "0.30")
    _spend_it_all(gateway, minted.secret, model)
    time.sleep(0.5)  # the last counts reach Postgres
    gateway.stack.restart("authz")
    assert _chat(gateway, minted.secret, model).status_code == 429  # the stored spend, not zero


def test_rate_limits_speak_openai_s_headers_and_the_sdks_back_off_and_succeed(gateway: Gateway) -> None:
    model = _model(gateway, input_per_mtok=0, output_per_mtok=0)
    _, minted = _own_team(gateway)
    rpm = 20
    reply = gateway.admin.put(f"/rate-limits/token/{minted.id}", json={"rpm": rpm})
    assert reply.status_code in (200, 201), reply.text
    # Spend the minute's allowance near its end, so the window frees a request a few seconds later.
    wait = 60 - time.time() % 60
    if wait > 8:
        time.sleep(wait - 8)
    time.sleep(0.3)  # the limit reached authz
    statuses = []
    for _ in range(rpm):
        response = _chat(gateway, minted.secret, model)
        statuses.append(response.status_code)
    assert statuses == [200] * rpm, statuses
    assert response.headers["x-ratelimit-limit-requests"] == str(rpm)
    assert response.headers["x-ratelimit-remaining-requests"] == "0"
    assert response.headers["x-ratelimit-reset-requests"].endswith("s")
    refused = _chat(gateway, minted.secret, model)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(refused.headers["retry-after"]) <= 15 and "x-should-retry" not in refused.headers
    # Both SDKs read retry-after, wait, and get through, with their default retries.
    outcomes: dict[str, object] = {}

    def with_openai() -> None:
        client = openai.OpenAI(base_url=f"{gateway.url}/openai/v1", api_key=minted.secret)
        outcomes["openai"] = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}]).choices[0].message.content

    def with_anthropic() -> None:
        client = anthropic.Anthropic(base_url=f"{gateway.url}/anthropic", api_key=minted.secret)
        outcomes["anthropic"] = client.messages.create(model=model, max_tokens=5,
                                                       messages=[{"role": "user", "content": "hi"}]).content[0].text

    threads = [threading.Thread(target=with_openai), threading.Thread(target=with_anthropic)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert outcomes.get("openai") and outcomes.get("anthropic"), outcomes
    assert time.monotonic() - started < 30
