"""Budgets and rate limits in the benchmark: what they cost a Check, and how far two gateway replicas
sharing one budget let a burst past it.

* Check CPU with limits on: the same Check RPC as the main measurement, with a budget on the bench
  token's team and a rate limit on the token (both far from reached, so every Check is admitted and
  every limit is evaluated), against the same Check with none.
* Overshoot: a second gateway replica (authz + Envoy) joins the stack; a burst of clients sends
  requests of a known cost through both against a small team budget; the admitted spend is read from
  the audit store's rollup.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx

#: An override makes the mock-shaped answer (9 prompt tokens, 6 output tokens) cost $0.069.
PER_INPUT, PER_OUTPUT = 1000, 10_000
REQUEST_COST = (Decimal(9) * PER_INPUT + Decimal(6) * PER_OUTPUT) / 1_000_000


@dataclass
class Overshoot:
    replicas: int
    clients: int
    seconds: float
    budget_usd: Decimal
    requests: int
    admitted: int
    admitted_usd: Decimal
    sync_seconds: float

    @property
    def over_usd(self) -> Decimal:
        return max(Decimal(0), self.admitted_usd - self.budget_usd)

    @property
    def rate_per_replica(self) -> float:
        return self.requests / self.seconds / self.replicas


def limits_on(admin: httpx.Client, team_id: str, token_id: str) -> list[str]:
    """A budget and a rate limit that apply to every bench Check and never refuse; returns the paths
    that remove them again."""
    admin.put(f"/budgets/team/{team_id}", json={"amount_usd": "1000000000", "posture": "hard"}).raise_for_status()
    admin.put(f"/rate-limits/token/{token_id}", json={"rpm": 2_000_000_000}).raise_for_status()
    return [f"/budgets/team/{team_id}", f"/rate-limits/token/{token_id}"]


def price(admin: httpx.Client, model: str) -> None:
    admin.post("/prices", json={"provider": "openai", "model": model, "input_per_mtok": str(PER_INPUT),
                                "output_per_mtok": str(PER_OUTPUT), "effective_from": "2020-01-01T00:00:00Z"}
               ).raise_for_status()


def burst(urls: list[str], secret: str, model: str, *, clients: int, seconds: float) -> tuple[dict[int, int], int]:
    """``clients`` threads sending chat completions round robin over ``urls`` for ``seconds``: the
    statuses seen, and the number of requests."""
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    start = threading.Barrier(clients)
    body: dict[str, Any] = {"model": model, "max_tokens": 6, "messages": [{"role": "user", "content": "hi"}]}

    def client(index: int) -> None:
        with httpx.Client(timeout=10) as http:
            start.wait()
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                status = http.post(f"{urls[index % len(urls)]}/openai/v1/chat/completions", json=body,
                                   headers={"Authorization": f"Bearer {secret}"}).status_code
                with lock:
                    statuses[status] = statuses.get(status, 0) + 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 30)
    return statuses, sum(statuses.values())
