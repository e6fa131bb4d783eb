"""Budgets and rate limits enforced in memory, with counts that every authz replica shares through Postgres.

What a Check does (:meth:`Meter.admit`, on a Check thread, no I/O): for each scope of the request that
has a rate limit or a budget, compare what is counted with the limit; refuse with the first one
exceeded, or admit the request, count it, and reserve its estimated cost.

What an outcome does (:meth:`Meter.settle`, on the loop thread, when Envoy's outcome line is read):
release the reservation and count the real cost and tokens against every scope of the request.

What the sync does (:class:`authz.meter_sync.MeterSync`, every few hundred milliseconds): add this
replica's deltas to ``usage_counters`` and read back every row any replica changed, so each replica
sees the others' spend within about one interval.

Invariants:

* every count is ``what Postgres had at the last sync + what this replica added since``: the deltas
  taken for a write stay counted, and the values read back replace them once written (a failed write
  gives the deltas back, so nothing is lost while Postgres is away);
* a request's reservation is an upper bound of its cost whenever the client bounds its output
  (``max_tokens``): every input byte counts as a token and the output as its limit (else
  :data:`DEFAULT_OUTPUT_RESERVE`). A request is admitted while the spend plus every reservation,
  its own included, stays within the budget; one whose reservation does not fit in what is left is
  admitted only alone (nothing else in flight), so a small budget still serves one request at a time.
  So one replica admits at most the budget plus one request's cost. Across replicas, each may also
  admit what the others admitted in the last sync interval before it hears of it;
* a budget's period is made of UTC days (``usage_counters`` day buckets); a rate limit's window is the
  last minute, estimated from two fixed minutes (the previous one weighted by how much of it is still
  inside the window);
* a reservation whose outcome never comes (Envoy died) is released after :data:`INFLIGHT_SECONDS`.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from authz.limits import DAY, Budget, RateLimit, ScopeKey

MINUTE = 60
#: Output tokens reserved for a request that does not bound its output.
DEFAULT_OUTPUT_RESERVE = 1024
#: How long a reservation waits for its outcome before it is released.
INFLIGHT_SECONDS = 1800.0


def _month_of(day: int) -> int:
    moment = datetime.fromtimestamp(day * DAY, tz=UTC)
    return moment.year * 12 + moment.month - 1


@dataclass(slots=True)
class _Counter:
    #: Day index (days since the epoch) -> cost in USD.
    days: dict[int, float] = field(default_factory=dict)
    #: The month ``month_cost`` adds up (``year * 12 + month - 1``), and its sum.
    month: int = -1
    month_cost: float = 0.0
    #: Estimated cost of this replica's admitted requests whose outcome has not come yet.
    reserved: float = 0.0
    #: Minute index -> [requests, tokens]; the current and the previous minute are kept.
    minutes: dict[int, list[int]] = field(default_factory=dict)
    #: ``days`` and ``minutes`` as Postgres had them at the last sync: every replica's, this one's
    #: written ones included. What was counted since is this replica's alone.
    synced_days: dict[int, float] = field(default_factory=dict)
    synced_minutes: dict[int, list[int]] = field(default_factory=dict)

    def add_cost(self, day: int, cost: float) -> None:
        self.days[day] = self.days.get(day, 0.0) + cost
        if _month_of(day) == self.month:
            self.month_cost += cost

    def set_day(self, day: int, cost: float) -> None:
        self.add_cost(day, cost - self.days.get(day, 0.0))

    def month_spent(self, day: int) -> float:
        month = _month_of(day)
        if month != self.month:
            self.month = month
            self.month_cost = sum(cost for d, cost in self.days.items() if _month_of(d) == month)
        return self.month_cost

    def spent(self, budget: Budget, now: float) -> float:
        day = int(now // DAY)
        if budget.window is not None:
            first, last = int(budget.window[0] // DAY), math.ceil(budget.window[1] / DAY)
            return sum(cost for d, cost in self.days.items() if first <= d < last)
        if budget.period == "day":
            return self.days.get(day, 0.0)
        return self.month_spent(day)

    def synced_spent(self, budget: Budget, now: float) -> float:
        """What :meth:`spent` was at the last sync."""
        day = int(now // DAY)
        if budget.window is not None:
            first, last = int(budget.window[0] // DAY), math.ceil(budget.window[1] / DAY)
        elif budget.period == "day":
            first, last = day, day + 1
        else:
            month = _month_of(day)
            return sum(cost for d, cost in self.synced_days.items() if _month_of(d) == month)
        return sum(cost for d, cost in self.synced_days.items() if first <= d < last)

    def window(self, now: float, *, synced: bool = False) -> tuple[float, float]:
        """Requests and tokens in the minute up to ``now`` (sliding, from two fixed minutes); as at the
        last sync with ``synced``."""
        minutes = self.synced_minutes if synced else self.minutes
        minute = int(now // MINUTE)
        weight = 1.0 - (now % MINUTE) / MINUTE
        current = minutes.get(minute)
        previous = minutes.get(minute - 1)
        requests = (current[0] if current else 0) + (previous[0] * weight if previous else 0.0)
        tokens = (current[1] if current else 0) + (previous[1] * weight if previous else 0.0)
        return requests, tokens

    def count(self, minute: int, requests: int, tokens: int) -> None:
        slot = self.minutes.get(minute)
        if slot is None:
            slot = self.minutes[minute] = [0, 0]
            for old in [m for m in self.minutes if m < minute - 1]:
                del self.minutes[old]
        slot[0] += requests
        slot[1] += tokens


@dataclass(frozen=True, slots=True)
class Hit:
    """Why a request is refused: the limit, its scope, and when trying again can help."""

    kind: str  # "budget" or "rate"
    scope: ScopeKey
    #: Seconds until the limit can let a request through again (at least 1).
    retry_after: int
    #: The end of the budget's period (seconds since the epoch); None for a rate limit.
    period_end: float | None
    #: What was exceeded, in words (amount and spend, or the limit per minute).
    what: str


@dataclass(frozen=True, slots=True)
class Admission:
    hit: Hit | None
    #: ``x-ratelimit-*`` headers of the tightest rate limit that applies, for the client either way.
    headers: tuple[tuple[str, str], ...] = ()


ADMITTED = Admission(None)


@dataclass(slots=True)
class _Inflight:
    #: Every scope the request counts against; those with a rate limit; those holding its reservation.
    keys: tuple[ScopeKey, ...]
    rated: tuple[ScopeKey, ...]
    reserving: tuple[ScopeKey, ...]
    estimate: float
    at: float


def _seconds(value: float) -> str:
    """A duration as the OpenAI API writes it in ``x-ratelimit-reset-*`` (``6m0s``, ``1.5s``)."""
    value = max(value, 0.0)
    minutes, seconds = divmod(value, 60)
    text = f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{text}" if minutes else text


def _rate_headers(limit: RateLimit, requests: float, tokens: float, now: float) -> tuple[tuple[str, str], ...]:
    reset = MINUTE - now % MINUTE
    headers: list[tuple[str, str]] = []
    if limit.rpm:
        headers += [("x-ratelimit-limit-requests", str(limit.rpm)),
                    ("x-ratelimit-remaining-requests", str(max(0, int(limit.rpm - requests)))),
                    ("x-ratelimit-reset-requests", _seconds(reset))]
    if limit.tpm:
        headers += [("x-ratelimit-limit-tokens", str(limit.tpm)),
                    ("x-ratelimit-remaining-tokens", str(max(0, int(limit.tpm - tokens)))),
                    ("x-ratelimit-reset-tokens", _seconds(reset))]
    return tuple(headers)


def _wait_for_rate(used: float, previous: float, limit: int, now: float, needed: float = 1.0) -> int:
    """Seconds until the sliding count has room for ``needed`` more, if nothing else is counted: the
    previous minute's share decays through this minute, then this minute's through the next."""
    into = now % MINUTE
    current = used - previous * (1.0 - into / MINUTE)
    room = limit - needed
    if current <= room and previous > 0:
        # previous * (1 - (into + t) / 60) + current <= room
        return max(1, math.ceil(MINUTE * (1.0 - (room - current) / previous) - into))
    if current <= 0:
        return 1
    # Next minute, this one is the previous: current * (1 - t' / 60) <= room.
    return max(1, math.ceil(MINUTE - into + MINUTE * max(0.0, 1.0 - room / current)))


class Meter:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._counters: dict[ScopeKey, _Counter] = {}
        self._inflight: dict[str, _Inflight] = {}
        #: (scope type, id, bucket, bucket start) -> [requests, tokens, cost] not yet written.
        self._deltas: dict[tuple[str, str, str, int], list[float]] = {}
        #: How many replicas share every limit (set by the sync): each may use its share of what was
        #: left at the last sync until the next, so together they stay within the limit.
        self.replicas = 1

    # -- the Check --------------------------------------------------------------------------------

    def admit(self, request_id: str, keys: tuple[ScopeKey, ...],
              guards: Sequence[tuple[ScopeKey, Budget | None, RateLimit | None]], estimate: float,
              now: float, *, record: bool = True) -> Admission:
        """Refuse with the first limit this request would exceed, or count it and reserve ``estimate``
        (``record=False``: only answer)."""
        minute = int(now // MINUTE)
        headers: tuple[tuple[str, str], ...] = ()
        tightest = math.inf
        replicas = self.replicas
        with self._lock:
            counters = self._counters
            for key, budget, limit in guards:
                counter = counters.get(key)
                if counter is None:
                    counter = counters[key] = _Counter()
                if limit is not None:
                    requests, tokens = counter.window(now)
                    previous = counter.minutes.get(minute - 1)
                    if replicas > 1:  # this replica's share of what was left at the last sync
                        synced_requests, synced_tokens = counter.window(now, synced=True)
                        over_requests = limit.rpm is not None and requests - synced_requests + 1 > \
                            (limit.rpm - synced_requests) / replicas
                        over_tokens = limit.tpm is not None and tokens - synced_tokens > \
                            (limit.tpm - synced_tokens) / replicas
                    else:
                        over_requests = limit.rpm is not None and requests + 1 > limit.rpm
                        over_tokens = limit.tpm is not None and tokens >= limit.tpm
                    if over_requests:
                        assert limit.rpm is not None
                        wait = _wait_for_rate(requests, previous[0] if previous else 0, limit.rpm, now)
                        return Admission(Hit("rate", key, wait, None, f"{limit.rpm} requests per minute"),
                                         _rate_headers(limit, requests, tokens, now))
                    if over_tokens:
                        assert limit.tpm is not None
                        wait = _wait_for_rate(tokens, previous[1] if previous else 0, limit.tpm, now)
                        return Admission(Hit("rate", key, wait, None, f"{limit.tpm} tokens per minute"),
                                         _rate_headers(limit, requests, tokens, now))
                    room = min(limit.rpm - requests if limit.rpm else math.inf,
                               limit.tpm - tokens if limit.tpm else math.inf)
                    if room < tightest:
                        tightest, headers = room, _rate_headers(limit, requests + 1, tokens, now)
                if budget is not None and budget.refuses:
                    settled = counter.spent(budget, now)
                    spent = settled + counter.reserved
                    # This replica's room: what was left at the last sync, shared among the replicas,
                    # less what it has used since (one replica: simply what is left).
                    base = counter.synced_spent(budget, now) if replicas > 1 else settled
                    room = (budget.amount - base) / replicas - (settled - base)
                    # Refused once reached. Below that, a request whose worst case does not fit in the
                    # room still runs, but alone: only while nothing else is in flight here.
                    if spent >= budget.amount or room <= 0 or (counter.reserved
                                                               and counter.reserved + estimate > room):
                        end = budget.bounds(now)[1]
                        what = f"${budget.amount:,.2f} per {budget.period}; ${spent:,.4f} spent or reserved"
                        return Admission(Hit("budget", key, max(1, math.ceil(end - now)), end, what), headers)
            if not record:
                return Admission(None, headers) if headers else ADMITTED
            rated = tuple(key for key, _, limit in guards if limit is not None)
            for key in rated:
                counters[key].count(minute, 1, 0)
                self._add_delta(key, "minute", minute * MINUTE, 1, 0, 0.0)
            reserving = tuple(key for key, budget, _ in guards if estimate and budget is not None and budget.refuses)
            for key in reserving:
                counters[key].reserved += estimate
            self._inflight[request_id] = _Inflight(keys, rated, reserving, estimate, now)
        return Admission(None, headers) if headers else ADMITTED

    # -- the outcome ------------------------------------------------------------------------------

    def settle(self, request_id: str, keys: tuple[ScopeKey, ...], cost: float, tokens: int,
               at: float) -> None:
        """Count a finished request: its cost (USD) against every scope, its tokens against the rate
        limits, and release what was reserved for it. ``keys`` are used when this replica did not
        admit the request itself (it restarted in between)."""
        day, minute = int(at // DAY), int(at // MINUTE)
        with self._lock:
            inflight = self._inflight.pop(request_id, None)
            if inflight is not None:
                keys = inflight.keys
                self._release(inflight)
            for key in keys:
                counter = self._counters.get(key)
                if counter is None:
                    counter = self._counters[key] = _Counter()
                if cost:
                    counter.add_cost(day, cost)
                self._add_delta(key, "day", day * DAY, 1, tokens, cost)
            for key in inflight.rated if inflight is not None else ():
                if tokens:
                    self._counters[key].count(minute, 0, tokens)
                    self._add_delta(key, "minute", minute * MINUTE, 0, tokens, 0.0)

    def _release(self, inflight: _Inflight) -> None:
        for key in inflight.reserving:
            counter = self._counters[key]
            counter.reserved = max(0.0, counter.reserved - inflight.estimate)

    def forget(self, request_id: str) -> None:
        """A request that was admitted but never reached a provider: release it, count nothing."""
        with self._lock:
            inflight = self._inflight.pop(request_id, None)
            if inflight is not None:
                self._release(inflight)

    def expire(self, now: float, older_than: float = INFLIGHT_SECONDS) -> int:
        with self._lock:
            stale = [rid for rid, inflight in self._inflight.items() if now - inflight.at > older_than]
            for rid in stale:
                self._release(self._inflight.pop(rid))
        return len(stale)

    # -- sharing with the other replicas -------------------------------------------------------------

    def _add_delta(self, key: ScopeKey, bucket: str, start: int, requests: int, tokens: int, cost: float) -> None:
        slot = self._deltas.get((key[0], key[1], bucket, start))
        if slot is None:
            self._deltas[(key[0], key[1], bucket, start)] = [requests, tokens, cost]
        else:
            slot[0] += requests
            slot[1] += tokens
            slot[2] += cost

    def take_deltas(self) -> dict[tuple[str, str, str, int], list[float]]:
        with self._lock:
            taken, self._deltas = self._deltas, {}
        return taken

    def give_back(self, deltas: dict[tuple[str, str, str, int], list[float]]) -> None:
        """Deltas whose write failed: counted again with the next write."""
        with self._lock:
            for (scope_type, scope_id, bucket, start), (requests, tokens, cost) in deltas.items():
                self._add_delta((scope_type, scope_id), bucket, start, int(requests), int(tokens), cost)

    def apply(self, rows: Iterable[tuple[str, str, str, float, int, int, float]], now: float) -> None:
        """Totals read from ``usage_counters`` (scope type, id, bucket, bucket start, requests, tokens,
        cost): each replaces this replica's count, plus what it added since its last write."""
        current = int(now // MINUTE)
        with self._lock:
            for scope_type, scope_id, bucket, start, requests, tokens, cost in rows:
                key = (scope_type, scope_id)
                pending = self._deltas.get((scope_type, scope_id, bucket, int(start)))
                counter = self._counters.get(key)
                if counter is None:
                    counter = self._counters[key] = _Counter()
                if bucket == "day":
                    day = int(start // DAY)
                    counter.synced_days[day] = cost
                    counter.set_day(day, cost + (pending[2] if pending else 0.0))
                else:
                    minute = int(start // MINUTE)
                    if minute < current - 1:
                        continue
                    counter.synced_minutes[minute] = [requests, tokens]
                    for old in [m for m in counter.synced_minutes if m < current - 1]:
                        del counter.synced_minutes[old]
                    counter.minutes[minute] = [requests + int(pending[0] if pending else 0),
                                               tokens + int(pending[1] if pending else 0)]

    # -- reading ----------------------------------------------------------------------------------

    def spent(self, key: ScopeKey, budget: Budget, now: float) -> float:
        with self._lock:
            counter = self._counters.get(key)
            return counter.spent(budget, now) if counter is not None else 0.0

    def reserved(self, key: ScopeKey) -> float:
        with self._lock:
            counter = self._counters.get(key)
            return counter.reserved if counter is not None else 0.0

    @property
    def inflight(self) -> int:
        return len(self._inflight)
