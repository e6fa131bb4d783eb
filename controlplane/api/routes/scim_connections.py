"""SCIM connections: one per IdP, each with bearer credentials that SCIM (and only SCIM) accepts.

Two credentials can be valid at once: mint the new one, switch the IdP over, then revoke the old.
"""

from __future__ import annotations

import uuid

from fastapi import APIRouter, status

from controlplane import errors, schemas
from controlplane.api.deps import Admin, Auditor, Cursor, Limit, SessionDep, SettingsDep
from controlplane.models import ScimCredential
from controlplane.services import scim_connections

router = APIRouter(prefix="/scim-connections", tags=["SCIM connections"],
                   responses=errors.responses(401, 403, 422))


def _issued(credential: ScimCredential, secret: str) -> dict:
    return {**schemas.ScimCredentialPublic.model_validate(credential).model_dump(), "token": secret}


@router.post("", status_code=status.HTTP_201_CREATED, response_model=schemas.ScimConnectionIssued,
             responses=errors.responses(409, body=True))
async def create_connection(data: schemas.ScimConnectionCreate, session: SessionDep, caller: Admin,
                            settings: SettingsDep) -> dict:
    """Create a connection for an IdP; the response holds its first SCIM credential, shown once."""
    connection, credential, secret = await scim_connections.create_connection(
        session, actor=caller.actor, data=data, hash_key=settings.hash_key)
    return {"connection": connection, "credential": _issued(credential, secret)}


@router.get("", response_model=schemas.Page[schemas.ScimConnectionPublic])
async def list_connections(session: SessionDep, _caller: Auditor, limit: Limit = 100, cursor: Cursor = None) -> dict:
    return await scim_connections.list_connections(session, cursor=cursor, limit=limit)


@router.post("/{connection_id}/credentials", status_code=status.HTTP_201_CREATED,
             response_model=schemas.ScimCredentialIssued, responses=errors.responses(404))
async def issue_credential(connection_id: uuid.UUID, session: SessionDep, caller: Admin, settings: SettingsDep) -> dict:
    """A further credential for rotation with overlap: the old one keeps working until revoked."""
    credential, secret = await scim_connections.issue_credential(session, actor=caller.actor,
                                                                 connection_id=connection_id,
                                                                 hash_key=settings.hash_key)
    return _issued(credential, secret)


@router.get("/{connection_id}/credentials", response_model=list[schemas.ScimCredentialPublic])
async def list_credentials(connection_id: uuid.UUID, session: SessionDep, _caller: Auditor) -> list[ScimCredential]:
    return await scim_connections.list_credentials(session, connection_id=connection_id)


@router.post("/{connection_id}/credentials/{credential_id}/revoke", response_model=schemas.ScimCredentialPublic,
             responses=errors.responses(404))
async def revoke_credential(connection_id: uuid.UUID, credential_id: uuid.UUID, session: SessionDep,
                            caller: Admin) -> ScimCredential:
    return await scim_connections.revoke_credential(session, actor=caller.actor, connection_id=connection_id,
                                                    credential_id=credential_id)


@router.post("/{connection_id}/adopt", response_model=schemas.ScimHandedOver,
             responses=errors.responses(404, body=True))
async def hand_over(connection_id: uuid.UUID, data: schemas.ScimHandover, session: SessionDep, caller: Admin) -> dict:
    """Hand users and teams over to this connection: it manages them from now on (and may deactivate or
    delete them). A connection never touches what it did not provision unless an admin does this."""
    return await scim_connections.hand_over(session, actor=caller.actor, connection_id=connection_id, data=data)
