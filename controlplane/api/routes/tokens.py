from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Query, status

from controlplane import errors, schemas
from controlplane.api.deps import Caller, Cursor, Limit, Manager, Reader, SessionDep, SettingsDep
from controlplane.models import Token
from controlplane.services import access, lifecycle, revocation

router = APIRouter(prefix="/tokens", tags=["tokens"], responses=errors.responses(401, 403, 422))

TokenSort = Literal["created_at", "-created_at", "last_used_at", "-last_used_at", "expires_at", "-expires_at",
                    "name", "-name"]
TokenState = Literal["active", "revoked", "expired"]


def revoked(token: Token, revoking: revocation.Revoking) -> dict:
    assert revoking.confirmation is not None
    return {**schemas.TokenPublic.model_validate(token).model_dump(), "revocation": revoking.confirmation.document()}


def _issued(token: Token, secret: str) -> dict:
    return {**schemas.TokenPublic.model_validate(token).model_dump(), "token": secret}


async def _managed(session: SessionDep, caller: Caller, token_id: uuid.UUID) -> Token:
    token = await lifecycle.get_token(session, token_id=token_id)
    caller.require_team(token.team_id)
    return token


@router.post("", status_code=status.HTTP_201_CREATED, response_model=schemas.TokenIssued,
             responses=errors.responses(404, 409, body=True))
async def mint_token(data: schemas.TokenCreate, session: SessionDep, caller: Manager, settings: SettingsDep) -> dict:
    """Mint a personal access token. The secret is in this response and nowhere else, ever."""
    team_id = await lifecycle.resolve_team(session, data)
    caller.require_team(team_id)
    token, secret = await lifecycle.mint(session, actor=caller.actor, data=data, team_id=team_id,
                                         hash_key=settings.hash_key)
    return _issued(token, secret)


@router.get("", response_model=schemas.Page[schemas.TokenPublic])
async def list_tokens(
    session: SessionDep,
    caller: Reader,
    limit: Limit = 100,
    cursor: Cursor = None,
    user_id: uuid.UUID | None = None,
    team_id: uuid.UUID | None = None,
    service_account_id: uuid.UUID | None = None,
    environment: schemas.Environment | None = None,
    state: Annotated[TokenState | None, Query(description="active, revoked or expired.")] = None,
    name: Annotated[str | None, Query(max_length=200, description="Substring of the token's name.")] = None,
    sort: TokenSort = "created_at",
) -> dict:
    """Tokens, never their secrets: each shows its prefix and last four characters."""
    query = lifecycle.list_query(within_team=caller.within_team, user_id=user_id, team_id=team_id,
                                 service_account_id=service_account_id, environment=environment, state=state,
                                 name=name)
    page = await lifecycle.page(session, query, sort=sort, cursor=cursor, limit=limit)
    await access.annotate(session, page["items"])
    return page


@router.get("/dormant", response_model=schemas.Page[schemas.TokenPublic])
async def dormant_tokens(
    session: SessionDep,
    caller: Reader,
    days: Annotated[int, Query(gt=0, le=3650, description="Unused for at least this many days.")] = 30,
    team_id: uuid.UUID | None = None,
    limit: Limit = 100,
    cursor: Cursor = None,
    sort: TokenSort = "last_used_at",
) -> dict:
    """Live tokens unused for ``days`` days, or never used and minted more than ``days`` ago."""
    query = lifecycle.dormant_query(days, within_team=caller.within_team, team_id=team_id)
    page = await lifecycle.page(session, query, sort=sort, cursor=cursor, limit=limit)
    await access.annotate(session, page["items"])
    return page


@router.get("/{token_id}", response_model=schemas.TokenPublic, responses=errors.responses(404))
async def get_token(token_id: uuid.UUID, session: SessionDep, caller: Reader) -> Token:
    token = await lifecycle.get_token(session, token_id=token_id)
    caller.require_visible(token.team_id)
    await access.annotate(session, [token])
    return token


@router.patch("/{token_id}", response_model=schemas.TokenPublic, responses=errors.responses(404, 409, body=True))
async def narrow_token(token_id: uuid.UUID, data: schemas.TokenUpdate, session: SessionDep, caller: Manager) -> Token:
    """Narrow a live token (fewer models, an earlier expiry) without re-issuing it, and/or set its register
    fields: purpose, workload, secret_location, and for a personal token backup_owner_id (an active user
    other than its owner). Null clears a register field; each change is an event."""
    await _managed(session, caller, token_id)
    return await lifecycle.update_token(session, actor=caller.actor, token_id=token_id, data=data)


@router.post("/{token_id}/revoke", response_model=schemas.TokenRevoked, responses=errors.responses(404, body=True))
async def revoke_token(
    token_id: uuid.UUID,
    caller: Manager,
    data: Annotated[schemas.TokenRevoke | None, Body()] = None,
) -> dict:
    """Revoke a token. The answer comes once every gateway replica refuses it (``revocation.applied``), or
    says which replicas did not confirm within the wait. Revoking twice is not an error."""
    async with revocation.revoking(actor=caller.actor, target_type="token", target_id=str(token_id)) as revoking:
        await _managed(revoking.session, caller, token_id)
        token = await lifecycle.revoke(revoking.session, actor=caller.actor, token_id=token_id,
                                       reason=data.reason if data else None)
    return revoked(token, revoking)


@router.post("/{token_id}/rotate", status_code=status.HTTP_201_CREATED, response_model=schemas.TokenRotated,
             responses=errors.responses(404, 409, body=True))
async def rotate_token(token_id: uuid.UUID, session: SessionDep, caller: Manager, settings: SettingsDep,
                       data: Annotated[schemas.TokenRotate | None, Body()] = None) -> dict:
    """Mint a successor now; the old token keeps working until the grace deadline, then expires."""
    await _managed(session, caller, token_id)
    new, secret, old = await lifecycle.rotate(session, actor=caller.actor, token_id=token_id,
                                              data=data or schemas.TokenRotate(), hash_key=settings.hash_key)
    return {"new": _issued(new, secret), "old": old}
