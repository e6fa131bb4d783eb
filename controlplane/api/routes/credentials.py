from __future__ import annotations

import uuid

from fastapi import APIRouter, status

from controlplane import errors, schemas
from controlplane.api.deps import Admin, AnyCaller, Auditor, Cursor, Limit, SessionDep, SettingsDep
from controlplane.models import ApiCredential
from controlplane.services import api_credentials

router = APIRouter(tags=["admin access"], responses=errors.responses(401))


@router.post("/credentials", status_code=status.HTTP_201_CREATED, response_model=schemas.CredentialIssued,
             responses=errors.responses(403, 404, 422, body=True))
async def issue_credential(data: schemas.CredentialCreate, session: SessionDep, caller: Admin,
                           settings: SettingsDep) -> dict:
    """An admin-API credential with a role (admin, auditor, finance, or owner of one team). Shown once."""
    credential, secret = await api_credentials.issue_credential(session, actor=caller.actor, data=data,
                                                                hash_key=settings.hash_key)
    return {**schemas.CredentialPublic.model_validate(credential).model_dump(), "token": secret}


@router.get("/credentials", response_model=schemas.Page[schemas.CredentialPublic],
            responses=errors.responses(403, 422))
async def list_credentials(session: SessionDep, _caller: Auditor, limit: Limit = 100, cursor: Cursor = None) -> dict:
    """Every credential, never its secret. Auditors read it too: who may do what is their question."""
    return await api_credentials.list_credentials(session, cursor=cursor, limit=limit)


@router.patch("/credentials/{credential_id}", response_model=schemas.CredentialPublic,
              responses=errors.responses(403, 404, 422, body=True))
async def update_credential(credential_id: uuid.UUID, data: schemas.CredentialUpdate, session: SessionDep,
                            caller: Admin) -> ApiCredential:
    """Set a credential's register fields: purpose, owner (an active user; naming one clears a
    reassignment flag), declared secret location. Null clears a field."""
    return await api_credentials.update_credential(session, actor=caller.actor, credential_id=credential_id,
                                                   data=data)


@router.post("/credentials/{credential_id}/revoke", response_model=schemas.CredentialPublic,
             responses=errors.responses(403, 404, 422))
async def revoke_credential(credential_id: uuid.UUID, session: SessionDep, caller: Admin) -> ApiCredential:
    return await api_credentials.revoke_credential(session, actor=caller.actor, credential_id=credential_id)


@router.get("/whoami", response_model=schemas.WhoAmI)
async def whoami(caller: AnyCaller) -> dict:
    """Who this credential is, its role, and whether it is the break-glass bootstrap token."""
    return {"actor": caller.actor.name, "role": caller.role, "team_id": caller.team_id,
            "break_glass": caller.break_glass}
