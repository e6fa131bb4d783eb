"""SCIM connections: one per IdP, each the actor of the changes it pushes, with bearer credentials
(``kw_scim_…``) that SCIM, and only SCIM, accepts.

Two credentials can be valid at once: mint the new one, switch the IdP over, then revoke the old.

A connection manages only what it provisioned (:mod:`controlplane.scim.store`); :func:`hand_over` is
the admin's explicit act that gives it people or teams it did not create.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane import schemas
from controlplane.audit.events import Actor, record_event
from controlplane.errors import Code, Conflict, NotFound
from controlplane.models import ScimConnection, ScimCredential, Team, User
from controlplane.services import credentials
from controlplane.services.rows import get_or_404, paginate


async def get_connection(session: AsyncSession, *, connection_id: uuid.UUID) -> ScimConnection:
    return await get_or_404(session, ScimConnection, connection_id, code=Code.SCIM_CONNECTION_NOT_FOUND,
                            label="SCIM connection")


async def list_connections(session: AsyncSession, *, cursor: str | None, limit: int) -> dict[str, Any]:
    return await paginate(session, select(ScimConnection), sort=ScimConnection.created_at, id_col=ScimConnection.id,
                          cursor=cursor, limit=limit)


async def create_connection(session: AsyncSession, *, actor: Actor, data: schemas.ScimConnectionCreate,
                            hash_key: bytes) -> tuple[ScimConnection, ScimCredential, str]:
    """A connection for an IdP, with its first credential (the secret is returned once)."""
    if await session.scalar(select(ScimConnection.id).where(ScimConnection.name == data.name)):
        raise Conflict(Code.SCIM_CONNECTION_EXISTS, f"A SCIM connection named {data.name} exists.")
    connection = ScimConnection(id=uuid.uuid4(), name=data.name, idp=data.idp)
    session.add(connection)
    await session.flush()
    await session.refresh(connection)
    await record_event(session, actor=actor, action="scim.connection_created", target_type="scim_connection",
                       target_id=str(connection.id), after={"name": connection.name, "idp": connection.idp})
    credential, secret = await issue_credential(session, actor=actor, connection_id=connection.id,
                                                hash_key=hash_key)
    return connection, credential, secret


async def issue_credential(session: AsyncSession, *, actor: Actor, connection_id: uuid.UUID,
                           hash_key: bytes) -> tuple[ScimCredential, str]:
    """A further credential, for rotation with overlap: the old one keeps working until revoked."""
    connection = await get_connection(session, connection_id=connection_id)
    issued = credentials.issue(credentials.SCIM, hash_key)
    credential = ScimCredential(id=uuid.uuid4(), connection_id=connection.id, token_hash=issued.token_hash,
                                hint=issued.hint)
    session.add(credential)
    await session.flush()
    await session.refresh(credential)
    await record_event(session, actor=actor, action="scim.credential_issued", target_type="scim_connection",
                       target_id=str(connection.id), after={"credential_id": str(credential.id),
                                                            "hint": credential.hint})
    return credential, issued.secret


async def list_credentials(session: AsyncSession, *, connection_id: uuid.UUID) -> list[ScimCredential]:
    return list((await session.scalars(select(ScimCredential).where(ScimCredential.connection_id == connection_id)
                                       .order_by(ScimCredential.created_at))).all())


async def revoke_credential(session: AsyncSession, *, actor: Actor, connection_id: uuid.UUID,
                            credential_id: uuid.UUID) -> ScimCredential:
    credential = await session.get(ScimCredential, credential_id)
    if credential is None or credential.connection_id != connection_id:
        raise NotFound(Code.SCIM_CREDENTIAL_NOT_FOUND, f"No SCIM credential with id {credential_id}.")
    if credential.revoked_at is None:
        credential.revoked_at = datetime.now(UTC)
        await session.flush()
        await record_event(session, actor=actor, action="scim.credential_revoked", target_type="scim_connection",
                           target_id=str(connection_id), after={"credential_id": str(credential.id)})
    return credential


async def authenticate(session: AsyncSession, presented: str, *, hash_key: bytes) -> ScimConnection | None:
    """The connection a SCIM bearer credential belongs to, if the credential is live."""
    credential = await credentials.authenticate(session, credentials.SCIM, presented, hash_key=hash_key,
                                                table=ScimCredential)
    return None if credential is None else await session.get(ScimConnection, credential.connection_id)



async def hand_over(session: AsyncSession, *, actor: Actor, connection_id: uuid.UUID,
                    data: schemas.ScimHandover) -> dict[str, int]:
    """Make the connection the manager of these users and teams, one event each (before: who managed
    it until now; None: Keyward's admins)."""
    connection = await get_connection(session, connection_id=connection_id)
    counts = {"users": 0, "teams": 0}
    for model, ids, kind, code, label in ((User, data.user_ids, "users", Code.USER_NOT_FOUND, "user"),
                                          (Team, data.team_ids, "teams", Code.TEAM_NOT_FOUND, "team")):
        for ident in dict.fromkeys(ids):
            row: Any = await get_or_404(session, model, ident, code=code, label=label)
            if row.deleted_at is not None:
                raise NotFound(code, f"No {label} with id {ident}.")
            if row.scim_connection_id == connection.id:
                continue
            before = {"scim_connection_id": str(row.scim_connection_id) if row.scim_connection_id else None}
            row.scim_connection_id = connection.id
            await record_event(session, actor=actor, action="scim.handed_over", target_type=label,
                               target_id=str(ident), before=before,
                               after={"scim_connection_id": str(connection.id), "connection": connection.name})
            counts[kind] += 1
    await session.flush()
    return counts
