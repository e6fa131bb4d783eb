"""Prices: what a model costs now, and the admins' overrides of the bundled table.

The price of a request is decided by :class:`authz.prices.PriceTable`, the bundled ``genai-prices``
table under the overrides in ``price_overrides`` (the latest ``effective_from`` not after the
request wins). This module answers with the same table, built from the same rows, so what the API
shows is what authz charges. An override is never edited or removed: a new one with a later
``effective_from`` replaces it, and the rows are the price history.

Which models are listed: every exact model name in an access profile's catalog (a pattern names no
model), every model requests used in the last 30 days (``spend_daily``, the audit store's daily
rollup), every model an override prices, and the one a query names in full.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from authz.prices import Override, PriceTable
from authz.upstreams import Api, Kind
from controlplane import schemas
from controlplane.audit.events import Actor, record_event
from controlplane.core.config import get_settings
from controlplane.errors import Code, Invalid
from controlplane.models import AccessProfile, PriceOverride, SpendDaily
from controlplane.services.rows import paginate, public, sort_key


def priced_providers() -> tuple[str, ...]:
    """The providers requests are priced for: every configured upstream but the MCP servers."""
    return tuple(u.name for u in get_settings().upstream_list.all if u.kind is not Kind.MCP)


def _priced_as(entry: dict[str, Any]) -> str | None:
    """The upstream a catalog entry's models are priced at: the one it names, or its API's default."""
    if entry.get("upstream"):
        return str(entry["upstream"])
    try:
        upstream = get_settings().upstream_list.default(Api(str(entry.get("provider", ""))))
    except ValueError:
        return None  # "*": every provider
    return upstream.name if upstream is not None else None

#: How far back a model used by requests is listed.
SEEN_DAYS = 30
_MILLION = Decimal(1_000_000)
#: The price columns' precision (``price_overrides``: numeric(14, 6)).
_PER_MTOK = Decimal("0.000001")
_PATTERN = frozenset("*?[")


def _override(row: PriceOverride) -> Override:
    return Override(id=str(row.id), provider=row.provider, model=row.model, input_per_mtok=row.input_per_mtok,
                    cached_input_per_mtok=row.cached_input_per_mtok, output_per_mtok=row.output_per_mtok,
                    effective_from=row.effective_from.timestamp())


async def _overrides(session: AsyncSession) -> list[PriceOverride]:
    """Every override, oldest effective first (of two from the same moment, the later made wins)."""
    return list((await session.scalars(
        select(PriceOverride).order_by(PriceOverride.effective_from, PriceOverride.created_at))).all())


def _per_mtok(rate: float) -> Decimal:
    return (Decimal(repr(rate)) * _MILLION).quantize(_PER_MTOK)


def price(table: PriceTable, rows: dict[str, PriceOverride], provider: str, model: str, at: datetime,
          named_by: list[str]) -> schemas.PricePublic:
    """The price of ``provider``'s ``model`` at ``at``: an override's exact figures, the bundled table's
    (its base tier, per million tokens), or unpriced."""
    rates = table.rates(provider, model, at.timestamp())
    common: dict[str, Any] = {"provider": provider, "model": model, "named_by": named_by}
    if rates is None:
        return schemas.PricePublic(**common, source="unpriced", input_per_mtok=None, cached_input_per_mtok=None,
                                   output_per_mtok=None, version=None, effective_from=None)
    row = rows.get(rates.version.removeprefix("override:")) if rates.version.startswith("override:") else None
    if row is not None:
        return schemas.PricePublic(**common, source="override", input_per_mtok=row.input_per_mtok,
                                   cached_input_per_mtok=row.cached_input_per_mtok
                                   if row.cached_input_per_mtok is not None else row.input_per_mtok,
                                   output_per_mtok=row.output_per_mtok, version=rates.version,
                                   effective_from=row.effective_from)
    return schemas.PricePublic(**common, source="bundled", input_per_mtok=_per_mtok(rates.input),
                               cached_input_per_mtok=_per_mtok(rates.cached_input),
                               output_per_mtok=_per_mtok(rates.output), version=rates.version, effective_from=None)


async def _named(session: AsyncSession, table: PriceTable, overrides: list[PriceOverride],
                 now: datetime) -> dict[tuple[str, str], list[str]]:
    """(provider, model) -> why it is listed."""
    named: dict[tuple[str, str], list[str]] = {}

    def add(provider: str, model: str, why: str) -> None:
        reasons = named.setdefault((provider, model), [])
        if why not in reasons:
            reasons.append(why)

    providers = priced_providers()
    for catalog in (await session.scalars(select(AccessProfile.catalog))).all():
        for entry in catalog or []:
            model, provider = str(entry.get("pattern", "")), _priced_as(entry)
            if not model or _PATTERN & set(model):
                continue
            if provider is not None:
                add(provider, model, "catalog")
                continue
            # Any provider: listed where a table prices it, or under every provider if none does.
            priced = [p for p in providers if table.rates(p, model, now.timestamp()) is not None]
            for each in priced or providers:
                add(each, model, "catalog")
    since = (now - timedelta(days=SEEN_DAYS)).astimezone(UTC).date()
    seen = await session.execute(select(SpendDaily.provider, SpendDaily.model).distinct().where(
        SpendDaily.day >= since, SpendDaily.provider.is_not(None), SpendDaily.model.is_not(None)))
    for used_provider, used_model in seen.tuples().all():
        add(str(used_provider), str(used_model), "spend")
    for row in overrides:
        add(row.provider, row.model, "override")
    return named


async def list_prices(session: AsyncSession, *, provider: str | None, model: str | None,
                      now: datetime | None = None) -> list[schemas.PricePublic]:
    """The price in effect now of every model listed (see the module's docstring), by provider and
    model; ``provider`` and ``model`` filter exactly, and both together ask for that model even if
    nothing names it."""
    now = now or datetime.now(UTC)
    overrides = await _overrides(session)
    table = PriceTable(_override(row) for row in overrides)
    named = await _named(session, table, overrides, now)
    if provider is not None and model is not None:
        named.setdefault((provider, model), []).append("query")
    rows = {str(row.id): row for row in overrides}
    return [price(table, rows, p, m, now, why) for (p, m), why in sorted(named.items())
            if (provider is None or p == provider) and (model is None or m == model)]


async def override_price(session: AsyncSession, *, actor: Actor, data: schemas.PriceOverrideCreate) -> PriceOverride:
    """Price ``provider``'s ``model`` from ``effective_from`` (default: now) on; authz prices requests
    with it from then (it hears of the new row at once). The event's ``before`` is the price this
    replaces at that moment."""
    if data.provider not in priced_providers():
        raise Invalid(Code.UPSTREAM_UNKNOWN, f"No upstream named {data.provider!r} serves models here: "
                                             f"{', '.join(priced_providers())}.")
    effective_from = data.effective_from or datetime.now(UTC)
    overrides = await _overrides(session)
    table = PriceTable(_override(row) for row in overrides)
    before = price(table, {str(row.id): row for row in overrides}, data.provider, data.model, effective_from, [])
    row = PriceOverride(id=uuid.uuid4(), provider=data.provider, model=data.model, input_per_mtok=data.input_per_mtok,
                        cached_input_per_mtok=data.cached_input_per_mtok, output_per_mtok=data.output_per_mtok,
                        effective_from=effective_from, note=data.note, created_by=actor.name)
    session.add(row)
    await session.flush()
    await session.refresh(row)
    await record_event(session, actor=actor, action="price.overridden", target_type="price",
                       target_id=f"{data.provider}:{data.model}",
                       before=before.model_dump(mode="json", exclude={"named_by"}),
                       after=public(schemas.PriceOverridePublic, row))
    return row


async def list_overrides(session: AsyncSession, *, provider: str | None, model: str | None, sort: str,
                         cursor: str | None, limit: int) -> dict[str, Any]:
    """Every override ever made (the price history): none is edited or removed."""
    query = select(PriceOverride)
    if provider is not None:
        query = query.where(PriceOverride.provider == provider)
    if model is not None:
        query = query.where(PriceOverride.model == model)
    column, descending = sort_key(sort, {"effective_from": PriceOverride.effective_from,
                                         "created_at": PriceOverride.created_at})
    return await paginate(session, query, sort=column, id_col=PriceOverride.id, cursor=cursor, limit=limit,
                          descending=descending)
