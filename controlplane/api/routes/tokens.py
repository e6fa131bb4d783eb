from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Body, Query, status
from sqlalchemy import select

from controlplane import schemas, services
from controlplane.api.deps import AdminActor, Cursor, Limit, SessionDep, SettingsDep
from controlplane.models import Token

router = APIRouter(prefix="/tokens", tags=["tokens"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=schemas.TokenIssued)
async def mint_token(data: schemas.TokenCreate, session: SessionDep, actor: AdminActor, settings: SettingsDep) -> dict:
    """Mint a personal access token. The secret is in this response and nowhere else, ever."""
    token, secret = await services.mint_token(
        session,
        actor=actor,
        data=data,
        hash_key=settings.hash_key,
        default_days=settings.default_token_days,
        max_days=settings.max_token_days,
    )
    return {**schemas.TokenPublic.model_validate(token).model_dump(), "token": secret}


@router.get("", response_model=schemas.Page[schemas.TokenPublic])
async def list_tokens(
    session: SessionDep,
    _actor: AdminActor,
    limit: Limit = 100,
    cursor: Cursor = None,
    user_id: uuid.UUID | None = None,
    revoked: Annotated[bool | None, Query(description="true: only revoked; false: only live.")] = None,
) -> dict:
    query = select(Token)
    if user_id:
        query = query.where(Token.user_id == user_id)
    if revoked is not None:
        query = query.where(Token.revoked_at.is_not(None) if revoked else Token.revoked_at.is_(None))
    items, next_cursor = await services.paginate(
        session, query, created_col=Token.created_at, id_col=Token.id, cursor=cursor, limit=limit
    )
    return {"items": items, "next_cursor": next_cursor}


@router.get("/{token_id}", response_model=schemas.TokenPublic)
async def get_token(token_id: uuid.UUID, session: SessionDep, _actor: AdminActor) -> Token:
    return await services.get_token(session, token_id=token_id)


@router.post("/{token_id}/revoke", response_model=schemas.TokenPublic)
async def revoke_token(
    token_id: uuid.UUID,
    session: SessionDep,
    actor: AdminActor,
    data: Annotated[schemas.TokenRevoke | None, Body()] = None,
) -> Token:
    """Revoke a token; the gateway refuses it within a second. Revoking twice is not an error."""
    return await services.revoke_token(session, actor=actor, token_id=token_id, reason=data.reason if data else None)
