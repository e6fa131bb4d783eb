"""Prices: what each model costs now (the bundled table under the admins' overrides) and the override
history. Admins override; finance and auditors read."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, status

from controlplane import errors, schemas
from controlplane.api.deps import Admin, Cursor, Limit, SessionDep, UsageReader
from controlplane.models import PriceOverride
from controlplane.services import prices

router = APIRouter(prefix="/prices", tags=["prices"], responses=errors.responses(401, 403, 422))

ModelQuery = Annotated[schemas.ModelName | None, Query(description="Exact model name.")]


@router.get("", response_model=list[schemas.PricePublic])
async def list_prices(session: SessionDep, _caller: UsageReader, provider: schemas.PricedProvider | None = None,
                      model: ModelQuery = None) -> list[schemas.PricePublic]:
    """The price in effect now (per million tokens) of every model a profile's catalog names exactly,
    requests used in the last 30 days, or an override prices; or ``unpriced``. With both ``provider``
    and ``model``, that model's price even if nothing names it."""
    return await prices.list_prices(session, provider=provider, model=model)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=schemas.PriceOverridePublic,
             responses=errors.responses(body=True))
async def override_price(data: schemas.PriceOverrideCreate, session: SessionDep, caller: Admin) -> PriceOverride:
    """Price a model from ``effective_from`` (default now) on, in place of the bundled table: a
    negotiated price, or a self-hosted model at zero or a set rate. The gateway uses it at once."""
    return await prices.override_price(session, actor=caller.actor, data=data)


@router.get("/overrides", response_model=schemas.Page[schemas.PriceOverridePublic])
async def list_overrides(
    session: SessionDep,
    _caller: UsageReader,
    limit: Limit = 100,
    cursor: Cursor = None,
    provider: schemas.PricedProvider | None = None,
    model: ModelQuery = None,
    sort: Literal["effective_from", "-effective_from", "created_at", "-created_at"] = "effective_from",
) -> dict:
    """Every override ever made, in force or replaced: the price history."""
    return await prices.list_overrides(session, provider=provider, model=model, sort=sort, cursor=cursor,
                                       limit=limit)
