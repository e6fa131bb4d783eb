"""Teams, memberships, access profiles, service accounts and admin-API credentials.

Every mutation records an event in the caller's transaction. Changes that alter what a token may
do (a team's profile, a profile's catalog, a membership, a service account's status) reach authz
through the NOTIFY triggers of migration 0003, so they apply to live tokens at once: narrowing
never needs a re-issue.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from authz.tokens import generate_token, hash_token, token_hint
from controlplane import schemas
from controlplane.errors import Conflict, Invalid, NotFound
from controlplane.models import AccessProfile, ApiCredential, Membership, ServiceAccount, Team
from controlplane.services import Actor, get_or_404, get_user, record_event

CREDENTIAL_PREFIX = "kw_api_"


def _dump(model: type[schemas._Output], row: Any) -> dict[str, Any]:
    return model.model_validate(row).model_dump(mode="json")


async def _flush_unique(session: AsyncSession, code: str, message: str) -> None:
    try:
        await session.flush()
    except IntegrityError as exc:
        raise Conflict(code, message) from exc


async def _create(session: AsyncSession, row: Any, *, actor: Actor, action: str, target_type: str,
                  public: type[schemas._Output], conflict: tuple[str, str]) -> Any:
    """Insert ``row`` (a unique-index race becomes the 409 ``conflict``), then record ``action``."""
    session.add(row)
    await _flush_unique(session, *conflict)
    await session.refresh(row)
    await record_event(session, actor=actor, action=action, target_type=target_type, target_id=str(row.id),
                       after=_dump(public, row))
    return row


# -- profiles -------------------------------------------------------------------------------------


async def get_profile(session: AsyncSession, *, profile_id: uuid.UUID) -> AccessProfile:
    return await get_or_404(session, AccessProfile, profile_id, code="profile_not_found", label="access profile")


async def create_profile(session: AsyncSession, *, actor: Actor, data: schemas.ProfileCreate) -> AccessProfile:
    if await session.scalar(select(AccessProfile.id).where(func.lower(AccessProfile.name) == data.name.lower())):
        raise Conflict("profile_exists", f"An access profile named {data.name} exists.")
    fields = data.model_dump(mode="json")
    fields["monthly_budget_usd"] = data.monthly_budget_usd
    profile: AccessProfile = await _create(
        session, AccessProfile(id=uuid.uuid4(), **fields), actor=actor, action="policy.created",
        target_type="profile", public=schemas.ProfilePublic,
        conflict=("profile_exists", f"An access profile named {data.name} exists."))
    return profile


async def update_profile(session: AsyncSession, *, actor: Actor, profile_id: uuid.UUID,
                         data: schemas.ProfileUpdate) -> AccessProfile:
    profile = await get_profile(session, profile_id=profile_id)
    before = _dump(schemas.ProfilePublic, profile)
    changes = data.model_dump(mode="json", exclude_unset=True)
    if "monthly_budget_usd" in changes:
        changes["monthly_budget_usd"] = data.monthly_budget_usd
    for field, value in changes.items():
        setattr(profile, field, value)
    if profile.default_token_days > profile.max_token_days:
        raise Invalid("profile_days", "default_token_days cannot exceed max_token_days.")
    await _flush_unique(session, "profile_exists", f"An access profile named {profile.name} exists.")
    await session.refresh(profile)
    await record_event(session, actor=actor, action="policy.changed", target_type="profile",
                       target_id=str(profile.id), before=before, after=_dump(schemas.ProfilePublic, profile))
    return profile


# -- teams and memberships ------------------------------------------------------------------------


async def get_team(session: AsyncSession, *, team_id: uuid.UUID) -> Team:
    return await get_or_404(session, Team, team_id, code="team_not_found", label="team")


async def create_team(session: AsyncSession, *, actor: Actor, data: schemas.TeamCreate) -> Team:
    if data.profile_id is not None:
        await get_profile(session, profile_id=data.profile_id)
    if await session.scalar(select(Team.id).where(func.lower(Team.name) == data.name.lower())):
        raise Conflict("team_exists", f"A team named {data.name} exists.")
    team: Team = await _create(
        session, Team(id=uuid.uuid4(), **data.model_dump()), actor=actor, action="team.created",
        target_type="team", public=schemas.TeamPublic, conflict=("team_exists", f"A team named {data.name} exists."))
    return team


async def update_team(session: AsyncSession, *, actor: Actor, team_id: uuid.UUID, data: schemas.TeamUpdate) -> Team:
    team = await get_team(session, team_id=team_id)
    before = _dump(schemas.TeamPublic, team)
    changes = data.model_dump(exclude_unset=True)
    if changes.get("profile_id") is not None:
        await get_profile(session, profile_id=changes["profile_id"])
    for field, value in changes.items():
        setattr(team, field, value)
    await _flush_unique(session, "team_exists", f"A team named {team.name} exists.")
    await session.refresh(team)
    action = "policy.changed" if "profile_id" in changes else "team.updated"
    await record_event(session, actor=actor, action=action, target_type="team", target_id=str(team.id),
                       before=before, after=_dump(schemas.TeamPublic, team))
    return team


async def set_member(session: AsyncSession, *, actor: Actor, team_id: uuid.UUID, user_id: uuid.UUID,
                     role: str) -> Membership:
    await get_team(session, team_id=team_id)
    await get_user(session, user_id=user_id)
    membership = await session.get(Membership, (team_id, user_id))
    before = _dump(schemas.MembershipPublic, membership) if membership else None
    if membership is None:
        membership = Membership(team_id=team_id, user_id=user_id, role=role)
        session.add(membership)
    elif membership.role == role:
        return membership
    else:
        membership.role = role
    await session.flush()
    await session.refresh(membership)
    await record_event(session, actor=actor, action="team.member_set", target_type="team", target_id=str(team_id),
                       before=before, after=_dump(schemas.MembershipPublic, membership))
    return membership


async def remove_member(session: AsyncSession, *, actor: Actor, team_id: uuid.UUID, user_id: uuid.UUID) -> None:
    """Removing a member narrows their tokens for that team at once (authz sees the NOTIFY)."""
    membership = await session.get(Membership, (team_id, user_id))
    if membership is None:
        raise NotFound("membership_not_found", f"User {user_id} is not a member of team {team_id}.")
    before = _dump(schemas.MembershipPublic, membership)
    await session.execute(delete(Membership).where(Membership.team_id == team_id, Membership.user_id == user_id))
    await record_event(session, actor=actor, action="team.member_removed", target_type="team",
                       target_id=str(team_id), before=before)


# -- service accounts -----------------------------------------------------------------------------


async def get_service_account(session: AsyncSession, *, account_id: uuid.UUID) -> ServiceAccount:
    return await get_or_404(session, ServiceAccount, account_id, code="service_account_not_found",
                            label="service account")


async def create_service_account(session: AsyncSession, *, actor: Actor,
                                 data: schemas.ServiceAccountCreate) -> ServiceAccount:
    await get_team(session, team_id=data.team_id)
    for owner in (data.business_owner_id, data.technical_owner_id):
        await get_user(session, user_id=owner)
    duplicate = await session.scalar(select(ServiceAccount.id).where(
        ServiceAccount.team_id == data.team_id, func.lower(ServiceAccount.name) == data.name.lower()))
    if duplicate:
        raise Conflict("service_account_exists", f"Team {data.team_id} already has a service account {data.name}.")
    account: ServiceAccount = await _create(
        session, ServiceAccount(id=uuid.uuid4(), **data.model_dump()), actor=actor,
        action="service_account.created", target_type="service_account", public=schemas.ServiceAccountPublic,
        conflict=("service_account_exists", f"A service account named {data.name} exists."))
    return account


async def update_service_account(session: AsyncSession, *, actor: Actor, account_id: uuid.UUID,
                                 data: schemas.ServiceAccountUpdate) -> ServiceAccount:
    account = await get_service_account(session, account_id=account_id)
    before = _dump(schemas.ServiceAccountPublic, account)
    changes = data.model_dump(exclude_unset=True)
    for owner_field in ("business_owner_id", "technical_owner_id"):
        if changes.get(owner_field) is not None:
            await get_user(session, user_id=changes[owner_field])
    for field, value in changes.items():
        if value is not None:
            setattr(account, field, value)
    await session.flush()
    await session.refresh(account)
    await record_event(session, actor=actor, action="service_account.updated", target_type="service_account",
                       target_id=str(account.id), before=before, after=_dump(schemas.ServiceAccountPublic, account))
    return account


# -- admin-API credentials ------------------------------------------------------------------------


async def issue_credential(session: AsyncSession, *, actor: Actor, data: schemas.CredentialCreate,
                           hash_key: bytes) -> tuple[ApiCredential, str]:
    if data.team_id is not None:
        await get_team(session, team_id=data.team_id)
    secret = generate_token(CREDENTIAL_PREFIX)
    credential = ApiCredential(
        id=uuid.uuid4(), name=data.name, role=data.role, team_id=data.team_id,
        token_hash=hash_token(secret, hash_key), hint=token_hint(secret, CREDENTIAL_PREFIX), created_by=actor.name,
        expires_at=datetime.now(UTC) + timedelta(days=data.expires_in_days) if data.expires_in_days else None,
    )
    session.add(credential)
    await session.flush()
    await session.refresh(credential)
    await record_event(session, actor=actor, action="credential.issued", target_type="credential",
                       target_id=str(credential.id), after=_dump(schemas.CredentialPublic, credential))
    return credential, secret


async def revoke_credential(session: AsyncSession, *, actor: Actor, credential_id: uuid.UUID) -> ApiCredential:
    credential = await session.get(ApiCredential, credential_id)
    if credential is None:
        raise NotFound("credential_not_found", f"No credential with id {credential_id}.")
    if credential.revoked_at is None:
        before = _dump(schemas.CredentialPublic, credential)
        credential.revoked_at = datetime.now(UTC)
        await session.flush()
        await record_event(session, actor=actor, action="credential.revoked", target_type="credential",
                           target_id=str(credential.id), before=before,
                           after=_dump(schemas.CredentialPublic, credential))
    return credential
