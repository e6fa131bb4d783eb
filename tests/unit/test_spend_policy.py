"""The pure parts of spend policy: budget periods, what is spent against a budget, and which policy is
in effect for a scope (its own, or its teams' profile defaults)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from controlplane import schemas
from controlplane.models import AccessProfile
from controlplane.services.budgets import calendar_period, measure, period_bounds
from controlplane.services.scopes import Effective, Governing, Scope, effective, within


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


@pytest.mark.parametrize(("now", "period", "start", "end"), [
    (utc(2026, 5, 17, 13, 45), "month", utc(2026, 5, 1), utc(2026, 6, 1)),
    (utc(2026, 12, 31, 23, 59, 59), "month", utc(2026, 12, 1), utc(2027, 1, 1)),
    (utc(2026, 2, 1), "month", utc(2026, 2, 1), utc(2026, 3, 1)),
    (utc(2026, 5, 17, 13, 45), "day", utc(2026, 5, 17), utc(2026, 5, 18)),
    (utc(2026, 12, 31, 0, 0), "day", utc(2026, 12, 31), utc(2027, 1, 1)),
    # Periods are UTC whatever the offset of the moment asked about: 01:00 at +02:00 is the day before.
    (datetime(2026, 6, 1, 1, 0, tzinfo=timezone(timedelta(hours=2))), "month", utc(2026, 5, 1), utc(2026, 6, 1)),
    (datetime(2026, 6, 1, 1, 0, tzinfo=timezone(timedelta(hours=2))), "day", utc(2026, 5, 31), utc(2026, 6, 1)),
])
def test_calendar_periods_are_utc_and_end_excluded(now: datetime, period: str, start: datetime, end: datetime) -> None:
    assert calendar_period(period, now) == (start, end)


def test_a_window_is_its_own_period_whenever_it_is_asked_about() -> None:
    spec = schemas.BudgetSet(amount_usd=Decimal(10), period="window", window_start=utc(2026, 3, 1, 12),
                             window_end=utc(2026, 3, 8))
    assert period_bounds(spec, utc(2030, 1, 1)) == (utc(2026, 3, 1, 12), utc(2026, 3, 8))


def _entry(**fields: object) -> Effective[schemas.BudgetSet]:
    return Effective("explicit", [], schemas.BudgetSet.model_validate({"amount_usd": "25", **fields}))


@pytest.mark.parametrize(("posture", "spent", "reached", "refused"), [
    ("alert_then_hard", "12.4999", [], False),
    ("alert_then_hard", "12.5", [50], False),
    ("alert_then_hard", "19.9999", [50], False),  # 79.9996% rounds to 80.00 but has not reached 80
    ("alert_then_hard", "20", [50, 80], False),
    ("alert_then_hard", "25", [50, 80, 100], True),
    ("hard", "30", [50, 80, 100], True),
    ("alert", "30", [50, 80, 100], False),
])
def test_thresholds_are_compared_exactly_and_only_hard_postures_refuse(posture: str, spent: str, reached: list[int],
                                                                       refused: bool) -> None:
    measured = measure(_entry(posture=posture), Decimal(spent), utc(2026, 5, 17))
    assert measured.thresholds_reached == reached and measured.refused is refused
    assert measured.remaining_usd == max(Decimal(25) - Decimal(spent), Decimal(0))
    assert measured.period_start == utc(2026, 5, 1) and measured.active


def test_a_window_not_current_refuses_nothing() -> None:
    entry = _entry(period="window", window_start="2026-01-01T00:00:00Z", window_end="2026-02-01T00:00:00Z",
                   posture="hard")
    measured = measure(entry, Decimal(100), utc(2026, 5, 17))
    assert measured.active is False and measured.refused is False and measured.percent == Decimal("400.00")


def _profile(name: str, **defaults: dict) -> AccessProfile:
    return AccessProfile(id=uuid.uuid4(), name=name, budget_defaults=defaults, rate_limit_defaults={})


def test_a_person_gets_one_entry_per_profile_of_their_teams() -> None:
    tight, loose, bare = (_profile("tight", user={"amount_usd": "20"}), _profile("loose", user={"amount_usd": "50"}),
                          _profile("bare", team={"amount_usd": "500"}))
    teams = [uuid.uuid4() for _ in range(5)]
    person = Scope("user", uuid.uuid4(), "ada@example.com", (
        Governing(teams[0], tight), Governing(teams[1], loose), Governing(teams[2], tight), Governing(teams[3], bare),
        Governing(teams[4], None)))
    entries = effective(person, None, "budget_defaults", schemas.BudgetSet.model_validate)
    assert [(e.source, e.team_ids, e.spec.amount_usd) for e in entries] == [
        ("profile:tight", [teams[0], teams[2]], Decimal(20)), ("profile:loose", [teams[1]], Decimal(50))]
    assert [(e.source, e.team_ids) for e in within(entries, teams[2])] == [("profile:tight", [teams[2]])]
    assert within(entries, teams[3]) == []
    own = schemas.BudgetSet(amount_usd=Decimal(5))
    [explicit] = effective(person, own, "budget_defaults", schemas.BudgetSet.model_validate)
    assert explicit.source == "explicit" and explicit.team_ids == teams and explicit.spec is own
