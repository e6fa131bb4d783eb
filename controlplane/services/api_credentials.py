"""Admin-API credentials (``kw_api_…``): a bearer credential with a role (admin, auditor, finance, or
owner of one team), minted once, stored as a keyed hash, revocable.

Register fields: a purpose, the person answerable for it (``owner_id``, an active user) and where its
secret is declared to live. When that person departs the credential is flagged for reassignment
(:mod:`controlplane.services.offboarding`); naming an active owner clears the flag."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane import schemas
from controlplane.audit.events import Actor, record_event
from controlplane.errors import Code, Invalid
from controlplane.models import ApiCredential, User
from controlplane.services import credentials, offboarding
from controlplane.services.rows import get_or_404, paginate, public
from controlplane.services.teams import get_team


async def list_credentials(session: AsyncSession, *, cursor: str | None, limit: int) -> dict[str, Any]:
    return await paginate(session, select(ApiCredential), sort=ApiCredential.created_at, id_col=ApiCredential.id,
                          cursor=cursor, limit=limit)


async def issue_credential(session: AsyncSession, *, actor: Actor, data: schemas.CredentialCreate,
                           hash_key: bytes) -> tuple[ApiCredential, str]:
    """A new credential and its secret, which the caller shows once and forgets."""
    if data.team_id is not None:
        await get_team(session, team_id=data.team_id)
    if data.owner_id is not None:
        await _owner(session, data.owner_id)
    issued = credentials.issue(credentials.API, hash_key)
    credential = ApiCredential(
        id=uuid.uuid4(), name=data.name, role=data.role, team_id=data.team_id, token_hash=issued.token_hash,
        hint=issued.hint, created_by=actor.name,
        expires_at=datetime.now(UTC) + timedelta(days=data.expires_in_days) if data.expires_in_days else None,
        purpose=data.purpose, owner_id=data.owner_id, secret_location=data.secret_location,
    )
    session.add(credential)
    await session.flush()
    await session.refresh(credential)
    await record_event(session, actor=actor, action="credential.issued", target_type="credential",
                       target_id=str(credential.id), after=public(schemas.CredentialPublic, credential))
    return credential, issued.secret


async def _owner(session: AsyncSession, user_id: uuid.UUID) -> User:
    user = await get_or_404(session, User, user_id, code=Code.USER_NOT_FOUND, label="user")
    if offboarding.departed(user):
        raise Invalid(Code.OWNER_NOT_ACTIVE, f"User {user.email} is {user.status}: an owner must be an active person.")
    return user


async def update_credential(session: AsyncSession, *, actor: Actor, credential_id: uuid.UUID,
                            data: schemas.CredentialUpdate) -> ApiCredential:
    """Change a credential's register fields (null clears one), with an event; a new active owner clears
    a reassignment flag (a second event)."""
    credential = await get_or_404(session, ApiCredential, credential_id, code=Code.CREDENTIAL_NOT_FOUND,
                                  label="credential")
    changes = data.model_dump(exclude_unset=True)
    if not changes:
        return credential
    if changes.get("owner_id") is not None and changes["owner_id"] != credential.owner_id:
        await _owner(session, changes["owner_id"])
    before = public(schemas.CredentialPublic, credential)
    for field, value in changes.items():
        setattr(credential, field, value)
    await session.flush()
    await record_event(session, actor=actor, action="credential.updated", target_type="credential",
                       target_id=str(credential.id), before=before,
                       after=public(schemas.CredentialPublic, credential))
    await offboarding.clear_if_reassigned(session, actor=actor, row=credential)
    return credential


async def revoke_credential(session: AsyncSession, *, actor: Actor, credential_id: uuid.UUID) -> ApiCredential:
    """Revoke a credential; revoking it again changes nothing."""
    credential = await get_or_404(session, ApiCredential, credential_id, code=Code.CREDENTIAL_NOT_FOUND,
                                  label="credential")
    if credential.revoked_at is None:
        before = public(schemas.CredentialPublic, credential)
        credential.revoked_at = datetime.now(UTC)
        await session.flush()
        await record_event(session, actor=actor, action="credential.revoked", target_type="credential",
                           target_id=str(credential.id), before=before,
                           after=public(schemas.CredentialPublic, credential))
    return credential


async def authenticate(session: AsyncSession, presented: str, *, hash_key: bytes) -> ApiCredential | None:
    return await credentials.authenticate(session, credentials.API, presented, hash_key=hash_key,
                                          table=ApiCredential)
