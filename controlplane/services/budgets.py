"""Budgets: what a scope may spend per period, how much of it is spent, and the thresholds announced.

A scope's budget is its own row in ``budgets`` if it has one, else its team's profile default for its
scope type (:mod:`controlplane.services.scopes`): the rule authz enforces. A period is the calendar
month or day in UTC, or an explicit budget's fixed window ``[window_start, window_end)``; what is
spent in it is the sum of the scope's daily ``usage_counters`` (cost in USD, summed over every authz
replica) of every UTC day it touches, as authz counts it (:func:`day_span`: a window that begins or
ends mid-day counts that whole day).

Postures: ``hard`` refuses at 100%, ``alert`` only announces, ``alert_then_hard`` announces each
threshold and refuses at 100%. Every threshold reached is announced once per scope and period
(:func:`evaluate_thresholds`, a control-plane duty): a ``budget_alerts`` row, an event and a
notification to every enabled channel, in one transaction, so an announcement is never lost to a
crash nor made twice.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, delete, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane import schemas
from controlplane.audit.events import Actor, record_event
from controlplane.errors import Code, NotFound
from controlplane.models import Budget, BudgetAlert, Project, Team, UsageCounter
from controlplane.services import notifications, scopes
from controlplane.services.rows import public
from controlplane.services.scopes import Effective, Scope

SYSTEM = Actor(name="system:budgets", mechanism="system")
MICRO = Decimal("0.000001")
CENT = Decimal("0.01")


# -- periods and arithmetic (pure) ----------------------------------------------------------------


def calendar_period(period: str, now: datetime) -> tuple[datetime, datetime]:
    """The calendar ``month`` or ``day`` (UTC) that ``now`` falls in: ``[start, end)``."""
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return day, day + timedelta(days=1)
    start = day.replace(day=1)
    end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    return start, end


def day_span(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """The UTC days a period touches, ``[first midnight, last midnight)``: what its spend is summed over."""
    first = start.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    last = end.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return first, last if last == end.astimezone(UTC) else last + timedelta(days=1)


def period_bounds(spec: schemas.BudgetSet, now: datetime) -> tuple[datetime, datetime]:
    """The period of ``spec`` that ``now`` falls in (a window: the window, whenever now is)."""
    if spec.period == "window":
        assert spec.window_start is not None and spec.window_end is not None
        return spec.window_start, spec.window_end
    return calendar_period(spec.period, now)


def measure(entry: Effective[schemas.BudgetSet], spent: Decimal, now: datetime) -> schemas.BudgetUtilisation:
    """A budget in effect and what is spent in its current period, as the API shows it."""
    spec = entry.spec
    start, end = period_bounds(spec, now)
    amount = spec.amount_usd
    active = start <= now < end
    return schemas.BudgetUtilisation(
        source=entry.source, team_ids=entry.team_ids, amount_usd=amount, period=spec.period, posture=spec.posture,
        thresholds=spec.thresholds, period_start=start, period_end=end, active=active,
        spent_usd=spent.quantize(MICRO), percent=(spent * 100 / amount).quantize(CENT),
        remaining_usd=max(amount - spent, Decimal(0)).quantize(MICRO),
        # Compared exactly, not through the rounded percentage: 79.999% has not reached 80%.
        thresholds_reached=[t for t in spec.thresholds if spent * 100 >= amount * t],
        refused=active and spec.posture != "alert" and spent >= amount,
    )


def _explicit(row: Budget) -> schemas.BudgetSet:
    return schemas.BudgetSet(amount_usd=row.amount_usd, period=row.period,  # type: ignore[arg-type]
                             window_start=row.window_start, window_end=row.window_end,
                             posture=row.posture, thresholds=list(row.thresholds))  # type: ignore[arg-type]


def _default(document: dict[str, Any]) -> schemas.BudgetSet:
    return schemas.BudgetSet.model_validate(document)


def in_effect(scope: Scope, row: Budget | None) -> list[Effective[schemas.BudgetSet]]:
    return scopes.effective(scope, _explicit(row) if row is not None else None, "budget_defaults", _default)


# -- explicit budgets -----------------------------------------------------------------------------


def _of(scope_type: str, scope_id: uuid.UUID) -> Any:
    return and_(Budget.scope_type == scope_type, Budget.scope_id == scope_id)


async def list_budgets(
    session: AsyncSession, *, within_team: uuid.UUID | None, scope_type: str | None, scope_id: uuid.UUID | None,
    sort: str, cursor: str | None, limit: int,
) -> dict[str, Any]:
    """The scopes' own budgets (not the profile defaults: see the profiles, or a scope's utilisation)."""
    return await scopes.list_own(session, Budget, within_team=within_team, scope_type=scope_type,
                                 scope_id=scope_id, sort=sort, cursor=cursor, limit=limit)


async def set_budget(session: AsyncSession, *, actor: Actor, scope_type: str, scope_id: uuid.UUID,
                     data: schemas.BudgetSet) -> Budget:
    """Give a scope its own budget, or replace the one it has (authz hears of it at once: the
    ``budgets`` trigger). The period's spend is not reset: it is what was spent, whatever the budget."""
    await scopes.get(session, scope_type=scope_type, scope_id=scope_id)
    current = await session.scalar(select(Budget).where(_of(scope_type, scope_id)).with_for_update())
    before = public(schemas.BudgetPublic, current) if current is not None else None
    fields = {"amount_usd": data.amount_usd, "period": data.period, "window_start": data.window_start,
              "window_end": data.window_end, "posture": data.posture, "thresholds": data.thresholds}
    upsert = insert(Budget).values(id=uuid.uuid4(), scope_type=scope_type, scope_id=scope_id, **fields)
    upsert = upsert.on_conflict_do_update(index_elements=[Budget.scope_type, Budget.scope_id],
                                          set_={**fields, "updated_at": func.now()})
    budget = (await session.scalars(upsert.returning(Budget),
                                    execution_options={"populate_existing": True})).one()
    await record_event(session, actor=actor, action="budget.set", target_type=scope_type, target_id=str(scope_id),
                       before=before, after=public(schemas.BudgetPublic, budget))
    return budget


async def remove_budget(session: AsyncSession, *, actor: Actor, scope_type: str, scope_id: uuid.UUID) -> None:
    """Remove a scope's own budget: its profile's default (if any) applies again."""
    current = await session.scalar(select(Budget).where(_of(scope_type, scope_id)).with_for_update())
    if current is None:
        raise NotFound(Code.BUDGET_NOT_FOUND, f"The {scope_type} {scope_id} has no budget of its own.")
    before = public(schemas.BudgetPublic, current)
    await session.execute(delete(Budget).where(Budget.id == current.id))
    await record_event(session, actor=actor, action="budget.removed", target_type=scope_type,
                       target_id=str(scope_id), before=before)


# -- utilisation ----------------------------------------------------------------------------------


async def _spent(session: AsyncSession, scope: Scope, start: datetime, end: datetime) -> Decimal:
    start, end = day_span(start, end)
    total = await session.scalar(
        select(func.coalesce(func.sum(UsageCounter.cost_usd), 0)).where(
            UsageCounter.scope_type == scope.type, UsageCounter.scope_id == scope.id, UsageCounter.bucket == "day",
            UsageCounter.bucket_start >= start, UsageCounter.bucket_start < end))
    return Decimal(total or 0)


async def utilisation(session: AsyncSession, *, scope_type: str, scope_id: uuid.UUID,
                      within_team: uuid.UUID | None = None, now: datetime | None = None) -> dict[str, Any]:
    """Every budget in effect for a scope (its own, or its profile default per team where that
    differs) with its current period, what is spent in it and whether the gateway now refuses.
    ``within_team``: only what applies to that team's tokens (a team owner's view)."""
    now = now or datetime.now(UTC)
    scope = await scopes.get(session, scope_type=scope_type, scope_id=scope_id)
    row = await session.scalar(select(Budget).where(_of(scope_type, scope_id)))
    measured = []
    for entry in scopes.within(in_effect(scope, row), within_team):
        start, end = period_bounds(entry.spec, now)
        measured.append(measure(entry, await _spent(session, scope, start, end), now))
    return {"scope_type": scope.type, "scope_id": scope.id, "scope_name": scope.name, "budgets": measured}


# -- thresholds -----------------------------------------------------------------------------------


async def evaluate_thresholds(session: AsyncSession, *, now: datetime | None = None) -> int:
    """Announce every budget threshold reached and not yet announced; how many were.

    Looks at every scope with spend this month (daily ``usage_counters`` rows), the budgets in effect
    for it whose period is current, and what is spent in each. A threshold reached gets a
    ``budget_alerts`` row (its key: scope, period start, threshold, so once per period), a
    ``budget.threshold_reached`` event and a notification to every enabled channel, all in the
    caller's transaction. A fixed number of queries per round, plus one insert per announcement."""
    now = now or datetime.now(UTC)
    month_start, month_end = calendar_period("month", now)
    counted = (select(UsageCounter.scope_type, UsageCounter.scope_id)
               .where(UsageCounter.bucket == "day", UsageCounter.bucket_start >= month_start,
                      UsageCounter.bucket_start < month_end)
               .distinct().subquery())
    loaded = await scopes.load(session, {kind: select(counted.c.scope_id).where(counted.c.scope_type == kind)
                                         for kind in scopes.SCOPE_TYPES})
    rows = (await session.scalars(select(Budget).join(counted, and_(counted.c.scope_type == Budget.scope_type,
                                                                     counted.c.scope_id == Budget.scope_id)))).all()
    explicit = {(row.scope_type, row.scope_id): row for row in rows}
    due: list[tuple[Scope, Effective[schemas.BudgetSet], datetime, datetime]] = []
    for key, scope in loaded.items():
        for entry in in_effect(scope, explicit.get(key)):
            start, end = period_bounds(entry.spec, now)
            if start <= now < end:
                due.append((scope, entry, start, end))
    if not due:
        return 0
    earliest = min(day_span(start, end)[0] for _, _, start, end in due)
    days: dict[scopes.Key, list[tuple[datetime, Decimal]]] = {}
    spend = await session.execute(
        select(UsageCounter.scope_type, UsageCounter.scope_id, UsageCounter.bucket_start, UsageCounter.cost_usd)
        .join(counted, and_(counted.c.scope_type == UsageCounter.scope_type,
                            counted.c.scope_id == UsageCounter.scope_id))
        .where(UsageCounter.bucket == "day", UsageCounter.bucket_start >= earliest))
    for scope_type, scope_id, day, cost in spend.all():
        days.setdefault((scope_type, scope_id), []).append((day, cost))
    alerts = await session.execute(
        select(BudgetAlert.scope_type, BudgetAlert.scope_id, BudgetAlert.period_start, BudgetAlert.threshold)
        .join(counted, and_(counted.c.scope_type == BudgetAlert.scope_type,
                            counted.c.scope_id == BudgetAlert.scope_id))
        .where(BudgetAlert.period_start >= earliest))
    announced = {tuple(alert) for alert in alerts.all()}
    reached = 0
    # A person with two teams' defaults in one period shares one alert per threshold (budget_alerts'
    # key has no team): the tighter budget announces first.
    for scope, entry, start, end in sorted(due, key=lambda item: item[1].spec.amount_usd):
        first, last = day_span(start, end)
        spent = sum((cost for day, cost in days.get(scope.key, []) if first <= day < last), Decimal(0))
        measured = measure(entry, spent, now)
        for threshold in measured.thresholds_reached:
            if (scope.type, scope.id, start, threshold) in announced:
                continue
            announced.add((scope.type, scope.id, start, threshold))
            if await _announce(session, scope, threshold, measured):
                reached += 1
    return reached


async def _announce(session: AsyncSession, scope: Scope, threshold: int,
                    measured: schemas.BudgetUtilisation) -> bool:
    """Record one threshold reached, once: False if another transaction recorded it first."""
    inserted = await session.scalar(
        insert(BudgetAlert).values(scope_type=scope.type, scope_id=scope.id, period_start=measured.period_start,
                                   threshold=threshold, amount_usd=measured.amount_usd,
                                   spent_usd=measured.spent_usd)
        .on_conflict_do_nothing().returning(BudgetAlert.threshold))
    if inserted is None:
        return False
    document = {"scope_type": scope.type, "scope_id": str(scope.id), "scope_name": scope.name,
                "threshold": threshold, **measured.model_dump(mode="json")}
    await record_event(session, actor=SYSTEM, action="budget.threshold_reached", target_type=scope.type,
                       target_id=str(scope.id), after=document)
    await notifications.enqueue(session, kind="budget.threshold_reached", payload=document)
    return True


# -- utilisation for the metrics -----------------------------------------------------------------


async def utilisation_ratios(session: AsyncSession, *, now: datetime | None = None) -> dict[tuple[str, str], float]:
    """Spent / amount in the current period of every team and project budget in effect (its own, or its
    profile's default), keyed by scope type and name (a project's is ``<team>/<project>``): the
    ``keyward_budget_utilisation_ratio`` gauge. Live teams and open projects only; a fixed number of
    queries, however many scopes. Where two budgets apply to one scope, the fuller one counts."""
    now = now or datetime.now(UTC)
    loaded = await scopes.load(session, {"team": select(Team.id).where(Team.deleted_at.is_(None)),
                                         "project": select(Project.id).where(Project.status == "open")})
    rows = (await session.scalars(select(Budget).where(Budget.scope_type.in_(("team", "project"))))).all()
    explicit = {(row.scope_type, row.scope_id): row for row in rows}
    due: list[tuple[Scope, schemas.BudgetSet, datetime, datetime]] = []
    for key, scope in loaded.items():
        for entry in in_effect(scope, explicit.get(key)):
            start, end = period_bounds(entry.spec, now)
            if start <= now < end and entry.spec.amount_usd > 0:
                due.append((scope, entry.spec, start, end))
    if not due:
        return {}
    earliest = min(day_span(start, end)[0] for _, _, start, end in due)
    days: dict[scopes.Key, list[tuple[datetime, Decimal]]] = {}
    spend = await session.execute(
        select(UsageCounter.scope_type, UsageCounter.scope_id, UsageCounter.bucket_start, UsageCounter.cost_usd)
        .where(UsageCounter.bucket == "day", UsageCounter.scope_type.in_(("team", "project")),
               UsageCounter.bucket_start >= earliest))
    for scope_type, scope_id, day, cost in spend.all():
        days.setdefault((scope_type, scope_id), []).append((day, cost))
    team_names = {scope.id: scope.name for scope in loaded.values() if scope.type == "team"}
    ratios: dict[tuple[str, str], float] = {}
    for scope, spec, start, end in due:
        first, last = day_span(start, end)
        spent = sum((cost for day, cost in days.get(scope.key, []) if first <= day < last), Decimal(0))
        label = scope.name
        if scope.type == "project" and scope.teams and scope.teams[0].team_id in team_names:
            label = f"{team_names[scope.teams[0].team_id]}/{scope.name}"
        ratio = float(spent / spec.amount_usd)
        ratios[(scope.type, label)] = max(ratio, ratios.get((scope.type, label), 0.0))
    return ratios
