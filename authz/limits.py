"""Budgets and rate limits as the hot path reads them: which apply to a request, from memory.

A request is attributed to up to four scopes: its token, its owner (a user or a service account), its
project (if the token has one) and its team. Each scope may have a budget and a rate limit: its own
(``budgets`` / ``rate_limits`` rows, :class:`Policy`), else the default its team's access profile
gives that scope type (``budget_defaults`` / ``rate_limit_defaults``, compiled into the
:class:`~authz.cache.ProfileCatalog`). A :class:`Policy` is immutable and swapped whole when any
budget, limit or price changes (``limits:*`` notifications), so a Check reads a consistent one.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from authz.prices import PriceTable

SCOPE_TYPES = ("token", "user", "service_account", "project", "team")
POSTURES = ("hard", "alert", "alert_then_hard")
DAY = 86_400

#: (scope type, id).
ScopeKey = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Budget:
    amount: float
    #: ``month`` or ``day`` (calendar, UTC), or ``window`` (``window`` says which).
    period: str
    posture: str
    thresholds: tuple[int, ...] = (50, 80, 100)
    #: [start, end) in seconds since the epoch, for a ``window`` budget.
    window: tuple[float, float] | None = None
    #: ``explicit`` (its own row) or ``profile`` (its team's default).
    source: str = "explicit"

    @property
    def refuses(self) -> bool:
        """Whether reaching 100% refuses requests (``alert`` only announces)."""
        return self.posture != "alert"

    def bounds(self, now: float) -> tuple[float, float]:
        """The current period, [start, end) in seconds since the epoch."""
        if self.window is not None:
            return self.window
        if self.period == "day":
            start = now - now % DAY
            return start, start + DAY
        moment = datetime.fromtimestamp(now, tz=UTC)
        first = datetime(moment.year, moment.month, 1, tzinfo=UTC).timestamp()
        days = calendar.monthrange(moment.year, moment.month)[1]
        return first, first + days * DAY


@dataclass(frozen=True, slots=True)
class RateLimit:
    rpm: int | None = None
    tpm: int | None = None


def budget_from(spec: Mapping[str, Any], *, source: str, window: tuple[float, float] | None = None) -> Budget:
    """A budget from its stored shape (a ``budgets`` row or a profile's ``budget_defaults`` entry)."""
    return Budget(amount=float(spec["amount_usd"]), period=str(spec.get("period") or "month"),
                  posture=str(spec.get("posture") or "alert_then_hard"),
                  thresholds=tuple(int(t) for t in spec.get("thresholds") or (50, 80, 100)),
                  window=window, source=source)


def rate_limit_from(spec: Mapping[str, Any]) -> RateLimit:
    rpm, tpm = spec.get("rpm"), spec.get("tpm")
    return RateLimit(rpm=int(rpm) if rpm else None, tpm=int(tpm) if tpm else None)


def defaults_from(budgets: Mapping[str, Any] | None, limits: Mapping[str, Any] | None
                  ) -> tuple[dict[str, Budget], dict[str, RateLimit]]:
    """A profile's defaults, per scope type (unknown scope types are ignored)."""
    return ({scope: budget_from(spec, source="profile") for scope, spec in (budgets or {}).items()
             if scope in SCOPE_TYPES and spec},
            {scope: rate_limit_from(spec) for scope, spec in (limits or {}).items()
             if scope in SCOPE_TYPES and spec})


@dataclass(frozen=True, slots=True)
class Policy:
    """The explicit budgets and rate limits, and the price table: everything a change to
    ``budgets``, ``rate_limits`` or ``price_overrides`` replaces."""

    budgets: Mapping[ScopeKey, Budget] = field(default_factory=dict)
    rate_limits: Mapping[ScopeKey, RateLimit] = field(default_factory=dict)
    prices: PriceTable = field(default_factory=PriceTable)

    def budget(self, key: ScopeKey, defaults: Mapping[str, Budget]) -> Budget | None:
        found = self.budgets.get(key)
        return found if found is not None else defaults.get(key[0])

    def rate_limit(self, key: ScopeKey, defaults: Mapping[str, RateLimit]) -> RateLimit | None:
        found = self.rate_limits.get(key)
        return found if found is not None else defaults.get(key[0])


def policy_from(budget_rows: Iterable[Mapping[str, Any]], limit_rows: Iterable[Mapping[str, Any]],
                prices: PriceTable) -> Policy:
    budgets: dict[ScopeKey, Budget] = {}
    for row in budget_rows:
        window = None
        if row["period"] == "window":
            window = (row["window_start"].timestamp(), row["window_end"].timestamp())
        budgets[(row["scope_type"], str(row["scope_id"]))] = budget_from(row, source="explicit", window=window)
    limits = {(row["scope_type"], str(row["scope_id"])): rate_limit_from(row) for row in limit_rows}
    return Policy(budgets, limits, prices)
