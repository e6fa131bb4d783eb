"""The figures of the console's overview: what a security lead asks first, each with the list behind it.

Counts come from the same queries and judgements as the lists they link to: live tokens and dormant
ones from :mod:`.lifecycle`, what the gateway would do with each token from :mod:`.access`, budgets
in effect from :mod:`.budgets`, the audit chains' newest signed verification from ``audit_verifications``.
A team owner's overview counts only their team.

Judging every live token costs about a second of CPU at 100,000 tokens, too slow for a landing page.
The whole-fleet reach summary is therefore kept: the ``overview`` duty refreshes it every
:data:`REACH_REFRESH_SECONDS` (the judging runs in a thread, off the event loop), and the page says how
old it is. A team's summary is small and judged on each view. Everything else is counted on each view.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.audit import queries
from controlplane.models import AuditVerification, Budget, SpendDaily, Team, Token
from controlplane.services import access, budgets, lifecycle

DORMANT_DAYS = 30
#: How often the ``overview`` duty judges every live token again; a view older than twice this judges anew.
REACH_REFRESH_SECONDS = 30.0

_fleet_reach: tuple[float, dict[str, Any]] | None = None


@dataclass(frozen=True)
class ChainStatus:
    chain: str
    kind: str
    ok: bool
    verified_at: datetime
    to_seq: int
    head: str


async def _count(session: AsyncSession, query: Any) -> int:
    return int(await session.scalar(select(func.count()).select_from(query.order_by(None).subquery())) or 0)


async def chain_status(session: AsyncSession) -> list[ChainStatus]:
    """Each chain's newest recorded verification (incremental or full)."""
    newest = (select(AuditVerification.chain, func.max(AuditVerification.id).label("id"))
              .group_by(AuditVerification.chain, AuditVerification.kind).subquery())
    rows = await session.scalars(select(AuditVerification).join(newest, AuditVerification.id == newest.c.id)
                                 .order_by(AuditVerification.chain, AuditVerification.kind))
    return [ChainStatus(chain=row.chain, kind=row.kind, ok=row.ok, verified_at=row.verified_at, to_seq=row.to_seq,
                        head=row.to_hash.hex()[:16]) for row in rows]


async def month_spend(session: AsyncSession, *, within_team: uuid.UUID | None, now: datetime) -> Decimal:
    start = now.date().replace(day=1)
    query = select(func.coalesce(func.sum(SpendDaily.cost_usd), 0)).where(SpendDaily.day >= start)
    if within_team is not None:
        query = query.where(SpendDaily.team_id == within_team)
    return Decimal(await session.scalar(query) or 0)


async def budgets_in_effect(session: AsyncSession, *, within_team: uuid.UUID | None, limit: int = 8
                            ) -> list[dict[str, Any]]:
    """The scopes with a budget of their own, with what is spent in the current period (fullest first)."""
    query = select(Budget.scope_type, Budget.scope_id)
    if within_team is not None:
        query = query.where(Budget.scope_type == "team", Budget.scope_id == within_team)
    measured = []
    for scope_type, scope_id in (await session.execute(query.limit(200))).all():
        found = await budgets.utilisation(session, scope_type=scope_type, scope_id=scope_id, within_team=within_team)
        for entry in found["budgets"]:
            measured.append({"scope_type": scope_type, "scope_id": scope_id, "scope_name": found["scope_name"],
                             "budget": entry})
    measured.sort(key=lambda row: row["budget"].percent, reverse=True)
    return measured[:limit]


async def reach_summary(session: AsyncSession, *, within_team: uuid.UUID | None, fresh: bool = False
                        ) -> dict[str, Any]:
    """:func:`access.summary` over the live tokens (of one team), with ``judged_at``; the fleet's is
    kept between refreshes (see the module docstring)."""
    global _fleet_reach
    if within_team is None and not fresh and _fleet_reach is not None \
            and time.monotonic() - _fleet_reach[0] < 2 * REACH_REFRESH_SECONDS:
        return _fleet_reach[1]
    where, params = ("t.team_id = $1::uuid", [str(within_team)]) if within_team is not None else ("", [])
    found = await access.records(session, where=where, params=params)
    now = time.time()
    judging = access.Judge(await access.universe(session), await access.limits(session, now), now)
    summary = await asyncio.to_thread(lambda: access.summary(judging.verdict(record) for record in found))
    summary["judged_at"] = datetime.fromtimestamp(now, tz=UTC)
    if within_team is None:
        _fleet_reach = (time.monotonic(), summary)
    return summary


async def figures(session: AsyncSession, *, within_team: uuid.UUID | None, now: datetime | None = None
                  ) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    day_ago = now - timedelta(hours=24)
    live = await _count(session, lifecycle.list_query(state="active", within_team=within_team))
    dormant = await _count(session, lifecycle.dormant_query(DORMANT_DAYS, within_team=within_team))
    reach = await reach_summary(session, within_team=within_team)
    revoked = select(Token.id).where(Token.revoked_at >= day_ago)
    if within_team is not None:
        revoked = revoked.where(Token.team_id == within_team)
    team_name = await session.scalar(select(Team.name).where(Team.id == within_team)) if within_team else None
    denials = await queries.refused_count(session, since=day_ago, team=team_name)
    return {
        "tokens_live": live,
        "tokens_usable": reach["tokens_usable"],
        "tokens_refused": reach["tokens_refused"],
        "by_provider": reach["by_provider"],
        "judged_at": reach["judged_at"],
        "dormant": dormant,
        "dormant_days": DORMANT_DAYS,
        "revoked_24h": await _count(session, revoked),
        "denials_24h": denials,
        "spend_month": await month_spend(session, within_team=within_team, now=now),
        "budgets": await budgets_in_effect(session, within_team=within_team),
        "chains": await chain_status(session),
        "since": day_ago,
    }
