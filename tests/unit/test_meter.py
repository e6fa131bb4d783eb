"""The meter alone: reservations, settling, sliding rate windows, budget periods, and the exchange with
the other replicas (deltas out, totals in), with a settable clock and no database."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest

from authz.limits import DAY, Budget, RateLimit
from authz.meter import MINUTE, Meter

NOW = datetime(2026, 12, 15, 12, 0, 30, tzinfo=UTC).timestamp()  # 30 s into a minute, mid-month
TEAM = ("team", "t-1")
TOKEN = ("token", "k-1")


def budget(amount: float, period: str = "month", posture: str = "hard", window: tuple[float, float] | None = None
           ) -> Budget:
    return Budget(amount, period, posture, window=window)


def test_reservations_bound_what_is_admitted_and_settling_releases_them() -> None:
    meter = Meter()
    guards = [(TEAM, budget(1.0), None)]
    admitted = [f"r{i}" for i in range(10) if meter.admit(f"r{i}", (TOKEN, TEAM), guards, 0.3, NOW).hit is None]
    assert admitted == ["r0", "r1", "r2"]  # 0.9 reserved; a fourth would make 1.2
    assert meter.reserved(TEAM) == pytest.approx(0.9)
    refused = meter.admit("r9", (TOKEN, TEAM), guards, 0.3, NOW).hit
    assert refused is not None and refused.kind == "budget" and refused.scope == TEAM
    assert refused.period_end == datetime(2027, 1, 1, tzinfo=UTC).timestamp()
    # Each really cost 0.1: the reservations go, the costs stay, room comes back.
    for request_id in admitted:
        meter.settle(request_id, (), 0.1, 20, NOW)
    assert meter.reserved(TEAM) == 0.0
    assert meter.spent(TEAM, budget(1.0), NOW) == pytest.approx(0.3)
    assert meter.spent(TOKEN, budget(1.0), NOW) == pytest.approx(0.3)  # every scope of the request counts it
    assert meter.admit("r10", (TOKEN, TEAM), guards, 0.3, NOW).hit is None


def test_an_alert_budget_never_refuses_and_reserves_nothing() -> None:
    meter = Meter()
    guards = [(TEAM, budget(0.01, posture="alert"), None)]
    assert all(meter.admit(f"r{i}", (TEAM,), guards, 1.0, NOW).hit is None for i in range(5))
    assert meter.reserved(TEAM) == 0.0


def test_budget_periods() -> None:
    meter = Meter()
    yesterday, last_month = NOW - DAY, datetime(2026, 11, 30, 12, tzinfo=UTC).timestamp()
    for at, cost in ((last_month, 5.0), (yesterday, 2.0), (NOW, 1.0)):
        meter.settle(f"r{at}", (TEAM,), cost, 0, at)
    assert meter.spent(TEAM, budget(100), NOW) == pytest.approx(3.0)  # this month only
    assert meter.spent(TEAM, budget(100, "day"), NOW) == pytest.approx(1.0)
    window = (last_month - 3600, yesterday + 3600)
    assert meter.spent(TEAM, budget(100, "window", window=window), NOW) == pytest.approx(7.0)
    # A new month starts from nothing.
    assert meter.spent(TEAM, budget(100), datetime(2027, 1, 1, 0, 0, 1, tzinfo=UTC).timestamp()) == 0.0


def test_the_rate_window_slides_and_says_when_to_retry() -> None:
    meter = Meter()
    guards = [(TOKEN, None, RateLimit(rpm=10))]
    minute_start = NOW - NOW % MINUTE
    for i in range(10):  # all in the previous minute
        assert meter.admit(f"a{i}", (TOKEN,), guards, 0, minute_start - 1).hit is None
    # 30 s into the next minute half of them still count: 5 more fit, the sixth waits.
    assert all(meter.admit(f"b{i}", (TOKEN,), guards, 0, NOW).hit is None for i in range(5))
    hit = meter.admit("b5", (TOKEN,), guards, 0, NOW).hit
    assert hit is not None and hit.kind == "rate" and hit.period_end is None
    assert 1 <= hit.retry_after <= 30
    later = NOW + hit.retry_after
    assert meter.admit("b6", (TOKEN,), guards, 0, later).hit is None


def test_tokens_per_minute_count_what_finished() -> None:
    meter = Meter()
    guards = [(TOKEN, None, RateLimit(tpm=100))]
    assert meter.admit("a", (TOKEN,), guards, 0, NOW).hit is None
    meter.settle("a", (TOKEN,), 0.0, 100, NOW)
    admission = meter.admit("b", (TOKEN,), guards, 0, NOW)
    assert admission.hit is not None and admission.hit.what == "100 tokens per minute"
    assert dict(admission.headers)["x-ratelimit-remaining-tokens"] == "0"


def test_deltas_out_totals_in() -> None:
    mine, theirs = Meter(), Meter()
    mine.settle("a", (TEAM,), 0.25, 10, NOW)
    theirs.settle("b", (TEAM,), 0.5, 10, NOW)
    taken = mine.take_deltas()
    day_start = NOW - NOW % DAY
    assert taken == {("team", "t-1", "day", int(day_start)): [1, 10, 0.25]}
    mine.settle("c", (TEAM,), 0.125, 10, NOW)  # while the write is under way
    # Postgres now holds both replicas' writes: 0.75. Mine adds what it counted since it took.
    mine.apply([("team", "t-1", "day", day_start, 2, 20, 0.75)], NOW)
    assert mine.spent(TEAM, budget(10), NOW) == pytest.approx(0.875)
    # A write that failed gives the deltas back: nothing is lost.
    again = mine.take_deltas()
    mine.give_back(again)
    assert mine.take_deltas() == again


def test_a_reservation_without_an_outcome_is_released_in_the_end() -> None:
    meter = Meter()
    meter.admit("lost", (TEAM,), [(TEAM, budget(1.0), None)], 0.5, NOW)
    assert meter.expire(NOW + 60) == 0 and meter.reserved(TEAM) == 0.5
    assert meter.expire(NOW + 3600) == 1 and meter.reserved(TEAM) == 0.0


def test_concurrent_checks_never_reserve_past_the_budget() -> None:
    meter = Meter()
    guards = [(TEAM, budget(10.0), None)]
    admitted: list[str] = []
    start = threading.Barrier(8)

    def check(worker: int) -> None:
        start.wait()
        for i in range(500):
            if meter.admit(f"{worker}-{i}", (TEAM,), guards, 0.07, NOW).hit is None:
                admitted.append(f"{worker}-{i}")

    threads = [threading.Thread(target=check, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(admitted) == int(10.0 // 0.07)
    assert meter.reserved(TEAM) <= 10.0


def test_a_request_larger_than_what_is_left_runs_alone() -> None:
    meter = Meter()
    guards = [(TEAM, budget(1.0), None)]
    assert meter.admit("a", (TEAM,), guards, 5.0, NOW).hit is None  # nothing in flight: it may run
    assert meter.admit("b", (TEAM,), guards, 5.0, NOW).hit is not None  # not beside it
    meter.settle("a", (), 0.6, 10, NOW)
    assert meter.admit("c", (TEAM,), guards, 5.0, NOW).hit is None
    meter.settle("c", (), 0.6, 10, NOW)  # 1.2: past the budget by less than one request
    assert meter.admit("d", (TEAM,), guards, 0.0, NOW).hit is not None  # reached: nothing more


def test_replicas_share_what_was_left_at_the_last_sync() -> None:
    meter = Meter()
    meter.replicas = 2
    guards = [(TEAM, budget(1.0), RateLimit(rpm=10))]
    admitted = [i for i in range(10) if meter.admit(f"r{i}", (TEAM,), guards, 0.1, NOW).hit is None]
    assert len(admitted) == 5  # half of the budget's room, half of the minute's requests
    for i in admitted:
        meter.settle(f"r{i}", (), 0.1, 0, NOW)
    # The sync: Postgres has both replicas' 0.5 spent and 10 requests this minute. Nothing is left.
    day_start, minute_start = NOW - NOW % DAY, NOW - NOW % MINUTE
    meter.take_deltas()
    meter.apply([("team", "t-1", "day", day_start, 10, 0, 1.0),
                 ("team", "t-1", "minute", minute_start, 10, 0, 0.0)], NOW)
    hit = meter.admit("late", (TEAM,), guards, 0.1, NOW).hit
    assert hit is not None
    # Alone, one replica has all of it.
    meter.replicas = 1
    assert meter.admit("alone", (TEAM,), [(TEAM, budget(2.0), None)], 0.1, NOW).hit is None
