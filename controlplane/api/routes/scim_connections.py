"""SCIM connections: one per IdP, each with bearer credentials that SCIM (and only SCIM) accepts.

Two credentials can be valid at once: mint the new one, switch the IdP over, then revoke the old.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Literal

from fastapi import APIRouter, status
from pydantic import BaseModel
from sqlalchemy import select

from authz.tokens import generate_token, hash_token, token_hint
from controlplane import errors, schemas, services
from controlplane.api.deps import Admin, Auditor, Cursor, Limit, SessionDep, SettingsDep
from controlplane.errors import Conflict, NotFound
from controlplane.models import ScimConnection, ScimCredential
from controlplane.scim.routes import SCIM_CREDENTIAL_PREFIX

router = APIRouter(prefix="/scim-connections", tags=["SCIM connections"],
                   responses=errors.responses(401, 403, 422))


class ConnectionCreate(schemas._Input):
    name: schemas.Name
    idp: Literal["okta", "entra", "google", "other"]


class ConnectionPublic(schemas._Output):
    id: uuid.UUID
    name: str
    idp: str
    created_at: datetime


class CredentialPublic(schemas._Output):
    id: uuid.UUID
    connection_id: uuid.UUID
    hint: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class CredentialIssued(CredentialPublic):
    token: str


class ConnectionIssued(BaseModel):
    connection: ConnectionPublic
    credential: CredentialIssued


async def _issue(session: SessionDep, connection: ScimConnection, hash_key: bytes, actor: services.Actor) -> dict:
    secret = generate_token(SCIM_CREDENTIAL_PREFIX)
    credential = ScimCredential(id=uuid.uuid4(), connection_id=connection.id, token_hash=hash_token(secret, hash_key),
                                hint=token_hint(secret, SCIM_CREDENTIAL_PREFIX))
    session.add(credential)
    await session.flush()
    await session.refresh(credential)
    await services.record_event(session, actor=actor, action="scim.credential_issued", target_type="scim_connection",
                                target_id=str(connection.id), after={"credential_id": str(credential.id),
                                                                     "hint": credential.hint})
    return {**CredentialPublic.model_validate(credential).model_dump(), "token": secret}


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ConnectionIssued,
             responses=errors.responses(409, body=True))
async def create_connection(data: ConnectionCreate, session: SessionDep, caller: Admin, settings: SettingsDep) -> dict:
    """Create a connection for an IdP; the response holds its first SCIM credential, shown once."""
    if await session.scalar(select(ScimConnection.id).where(ScimConnection.name == data.name)):
        raise Conflict("scim_connection_exists", f"A SCIM connection named {data.name} exists.")
    connection = ScimConnection(id=uuid.uuid4(), name=data.name, idp=data.idp)
    session.add(connection)
    await session.flush()
    await session.refresh(connection)
    await services.record_event(session, actor=caller.actor, action="scim.connection_created",
                                target_type="scim_connection", target_id=str(connection.id),
                                after={"name": connection.name, "idp": connection.idp})
    credential = await _issue(session, connection, settings.hash_key, caller.actor)
    return {"connection": connection, "credential": credential}


@router.get("", response_model=schemas.Page[ConnectionPublic])
async def list_connections(session: SessionDep, _caller: Auditor, limit: Limit = 100, cursor: Cursor = None) -> dict:
    items, next_cursor = await services.paginate(session, select(ScimConnection), sort=ScimConnection.created_at,
                                                 id_col=ScimConnection.id, cursor=cursor, limit=limit)
    return {"items": items, "next_cursor": next_cursor}


@router.post("/{connection_id}/credentials", status_code=status.HTTP_201_CREATED, response_model=CredentialIssued,
             responses=errors.responses(404))
async def issue_credential(connection_id: uuid.UUID, session: SessionDep, caller: Admin, settings: SettingsDep) -> dict:
    """A further credential for rotation with overlap: the old one keeps working until revoked."""
    connection = await session.get(ScimConnection, connection_id)
    if connection is None:
        raise NotFound("scim_connection_not_found", f"No SCIM connection with id {connection_id}.")
    return await _issue(session, connection, settings.hash_key, caller.actor)


@router.get("/{connection_id}/credentials", response_model=list[CredentialPublic])
async def list_credentials(connection_id: uuid.UUID, session: SessionDep, _caller: Auditor) -> list[ScimCredential]:
    return list((await session.scalars(select(ScimCredential).where(ScimCredential.connection_id == connection_id)
                                       .order_by(ScimCredential.created_at))).all())


@router.post("/{connection_id}/credentials/{credential_id}/revoke", response_model=CredentialPublic,
             responses=errors.responses(404))
async def revoke_credential(connection_id: uuid.UUID, credential_id: uuid.UUID, session: SessionDep,
                            caller: Admin) -> ScimCredential:
    credential = await session.get(ScimCredential, credential_id)
    if credential is None or credential.connection_id != connection_id:
        raise NotFound("scim_credential_not_found", f"No SCIM credential with id {credential_id}.")
    if credential.revoked_at is None:
        credential.revoked_at = datetime.now(UTC)
        await session.flush()
        await services.record_event(session, actor=caller.actor, action="scim.credential_revoked",
                                    target_type="scim_connection", target_id=str(connection_id),
                                    after={"credential_id": str(credential.id)})
    return credential
