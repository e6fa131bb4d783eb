"""Budgets and rate limits under concurrent load, on one gateway replica and shared by two (two authz,
two Envoys, one Postgres): what is admitted past a limit is measured and held to the stated bound.

The bound (README, "Budgets, rate limits and cost"):

* one replica admits at most the budget plus one request's cost: every in-flight request holds a
  reservation that bounds its cost (its input bytes and its ``max_tokens``), and a request whose
  reservation does not fit in what is left runs only alone;
* with N replicas, each may use its share (1/N) of what was left at its last sync; what the others
  spent since is not yet in that figure, so each may add at most what it admits during the time its
  spend takes to reach the others (two sync intervals, ``KEYWARD_METER_SYNC_SECONDS``, plus a
  request's duration), and one request of its own.
"""

from __future__ import annotations

import threading
import time
from decimal import Decimal

import httpx
import pytest

from tests.faults.conftest import FaultStack

pytestmark = pytest.mark.e2e

#: An override makes the mock's fixed usage (9 prompt tokens, 6 output) cost $0.069 a request.
PER_INPUT, PER_OUTPUT = 1000, 10_000
REQUEST_COST = (Decimal(9) * PER_INPUT + Decimal(6) * PER_OUTPUT) / 1_000_000
SYNC_SECONDS = 0.25


def _priced_model(stack: FaultStack, name: str) -> str:
    reply = stack.admin.post("/prices", json={"provider": "openai", "model": name, "input_per_mtok": str(PER_INPUT),
                                              "output_per_mtok": str(PER_OUTPUT),
                                              "effective_from": "2026-01-01T00:00:00Z"})
    assert reply.status_code == 201, reply.text
    return name


class Burst:
    """``clients`` threads sending chat completions to ``urls`` (round robin) for ``seconds``."""

    def __init__(self, urls: list[str], secret: str, model: str, *, clients: int, seconds: float) -> None:
        self.urls, self.secret, self.model = urls, secret, model
        self.clients, self.seconds = clients, seconds
        self.statuses: dict[int, int] = {}
        self.ids: list[str] = []
        self._lock = threading.Lock()

    def run(self) -> Burst:
        start = threading.Barrier(self.clients)
        threads = [threading.Thread(target=self._client, args=(i, start)) for i in range(self.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(self.seconds + 30)
        return self

    def _client(self, index: int, start: threading.Barrier) -> None:
        url = self.urls[index % len(self.urls)]
        with httpx.Client(timeout=10) as client:
            start.wait()
            deadline = time.monotonic() + self.seconds
            while time.monotonic() < deadline:
                reply = client.post(f"{url}/openai/v1/chat/completions",
                                    headers={"Authorization": f"Bearer {self.secret}"},
                                    json={"model": self.model, "max_tokens": 6,
                                          "messages": [{"role": "user", "content": "hi"}]})
                with self._lock:
                    self.statuses[reply.status_code] = self.statuses.get(reply.status_code, 0) + 1
                    if reply.status_code == 200:
                        self.ids.append(reply.headers["x-request-id"])
                if reply.status_code == 429:
                    time.sleep(0.01)


def _admitted_spend(stack: FaultStack, team_id: str, served: int) -> Decimal:
    """What the audit store says the team's admitted requests cost, once every one is recorded."""
    query = "SELECT COALESCE(sum(cost_usd), 0) AS cost, COALESCE(sum(requests), 0) AS n FROM spend_daily" \
            " WHERE team_id = $1::uuid"
    stack.wait_until(lambda: stack.sql(query, team_id)[0]["n"] >= served, timeout=60, what="the spend to be recorded")
    return stack.sql(query, team_id)[0]["cost"]


def _team_with_budget(stack: FaultStack, amount: str) -> tuple[dict, str]:
    team = stack.team()
    reply = stack.admin.put(f"/budgets/team/{team['id']}", json={"amount_usd": amount, "posture": "hard"})
    assert reply.status_code in (200, 201), reply.text
    minted = stack.mint(team=team)
    time.sleep(0.5)  # the budget reached authz
    return team, minted.secret


def test_64_concurrent_clients_against_a_1_dollar_budget(faulted: FaultStack) -> None:
    model = _priced_model(faulted, "budget-race-one")
    team, secret = _team_with_budget(faulted, "1")
    burst = Burst([faulted.url], secret, model, clients=64, seconds=4).run()
    served = burst.statuses.get(200, 0)
    spent = _admitted_spend(faulted, team["id"], served)
    print(f"\n64 clients, $1 budget, one replica: {sum(burst.statuses.values())} requests {burst.statuses}; "
          f"admitted ${spent} ({served} requests at ${REQUEST_COST}), overshoot ${max(Decimal(0), spent - 1)} "
          f"(bound ${REQUEST_COST})")
    assert burst.statuses.get(429, 0) > 0 and served > 0
    assert spent <= 1 + REQUEST_COST
    assert set(burst.statuses) <= {200, 429}, burst.statuses


def test_a_budget_and_a_rate_limit_hold_across_two_replicas(faulted: FaultStack) -> None:
    second = faulted.stack.pairs.get("b") or faulted.stack.add_gateway("b")
    model = _priced_model(faulted, "budget-race-two")
    team, secret = _team_with_budget(faulted, "2")
    urls = [faulted.url, second.gateway_url]
    seconds = 4.0
    burst = Burst(urls, secret, model, clients=32, seconds=seconds).run()
    served = burst.statuses.get(200, 0)
    spent = _admitted_spend(faulted, team["id"], served)
    rate = sum(burst.statuses.values()) / seconds / len(urls)  # requests per second per replica
    lag = 2 * SYNC_SECONDS + 0.2  # a request's duration here is well under 0.2 s
    bound = len(urls) * REQUEST_COST + (len(urls) - 1) * Decimal(str(rate * lag)) * REQUEST_COST
    print(f"\n$2 budget on two replicas: {served} admitted of {sum(burst.statuses.values())}, admitted ${spent}, "
          f"overshoot ${max(Decimal(0), spent - 2)} (bound ${bound.quantize(Decimal('0.001'))} at "
          f"{rate:.0f} requests/s per replica)")
    assert spent <= 2 + bound and burst.statuses.get(429, 0) > 0

    # A rate limit shared by the two replicas.
    minted = faulted.mint(team=faulted.team())
    rpm = 60
    reply = faulted.admin.put(f"/rate-limits/token/{minted.id}", json={"rpm": rpm})
    assert reply.status_code in (200, 201), reply.text
    free = _priced_model(faulted, "rate-race-two")
    time.sleep(0.5)
    burst = Burst(urls, minted.secret, free, clients=16, seconds=3).run()
    admitted = burst.statuses.get(200, 0)
    rate = sum(burst.statuses.values()) / 3 / len(urls)
    # The sliding window lets the requests of a minute that is passing count less: 3 s of 60.
    bound = (len(urls) - 1) * rate * SYNC_SECONDS + rpm * 3 / 60
    print(f"{rpm} rpm on two replicas: {admitted} admitted of {sum(burst.statuses.values())}, overshoot "
          f"{max(0, admitted - rpm)} (bound {bound:.0f} at {rate:.0f} requests/s per replica)")
    assert rpm <= admitted <= rpm + bound
