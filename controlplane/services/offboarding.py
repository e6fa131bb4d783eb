"""Offboarding triggers that act: what happens to credentials when the people, teams and projects
behind them go away, and the duty that carries out what is due.

* A person departs (:func:`user_departed`, called by every deprovisioning path: the admin API, SCIM
  deactivation and deletion, a past ``end_date``): their personal tokens are revoked, and every
  active service account they own (business or technical owner) and every live admin credential they
  answer for (``owner_id``) is flagged for reassignment: ``reassign_by`` = now + the grace
  (``KEYWARD_REASSIGN_GRACE_DAYS``, default 7), ``flagged_reason``, and an event. Security and
  finance owners are informed by the register, not flagged: the account still has someone to run it.
* Giving a flagged account (credential) owners who are all active clears the flag, with an event
  (:func:`clear_if_reassigned`).
* The duty (:func:`run`, on the control plane's lifecycle timer, one replica at a time) disables a
  service account still flagged past ``reassign_by`` (authz then refuses its tokens: their owner is
  not active) and revokes such an admin credential; deprovisions people whose ``end_date`` has passed;
  and revokes tokens left unrotated past their profile's opt-in ``rotation_disable_days``.

Closing a project (:func:`close_project`) revokes the tokens that carry it; deleting a team
(:func:`team_deleted`, when its SCIM group is deleted) revokes its tokens and disables its service
accounts. Every change is recorded as an event in the transaction that makes it; usage records are
never touched.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane import schemas
from controlplane.audit.events import Actor, record_event
from controlplane.core.config import get_settings
from controlplane.models import AccessProfile, ApiCredential, Project, ServiceAccount, Team, Token, User
from controlplane.services import lifecycle, projects
from controlplane.services.rows import public

SYSTEM = Actor(name="system:offboarding", mechanism="system")
ROTATION = Actor(name="system:rotation-policy", mechanism="system")
#: Rows a round handles at most, like the other lifecycle duties; the rest wait for the next round.
_BATCH = 1000


@dataclass
class Departure:
    """What one person's departure did."""

    tokens_revoked: int = 0
    service_accounts_flagged: list[str] = field(default_factory=list)
    credentials_flagged: list[str] = field(default_factory=list)


def departed(user: User | None) -> bool:
    """Gone, as far as owning things goes: unknown, not active, or deleted."""
    return user is None or user.status != "active" or user.deleted_at is not None


def grace() -> timedelta:
    return timedelta(days=get_settings().reassign_grace_days)


async def user_departed(session: AsyncSession, *, actor: Actor, user_id: uuid.UUID, reason: str) -> Departure:
    """Everything a departure sets off, in the caller's transaction: personal tokens revoked, owned
    service accounts and admin credentials flagged for reassignment."""
    outcome = Departure()
    outcome.tokens_revoked = await lifecycle.revoke_where(session, actor=actor, reason=reason, user_id=user_id)
    user = await session.get(User, user_id)
    who = user.email if user is not None else str(user_id)
    deadline = datetime.now(UTC) + grace()
    accounts = (await session.scalars(
        select(ServiceAccount).where(ServiceAccount.status == "active", ServiceAccount.reassign_by.is_(None),
                                     or_(ServiceAccount.business_owner_id == user_id,
                                         ServiceAccount.technical_owner_id == user_id))
        .with_for_update())).all()
    for account in accounts:
        roles = [role for role, owner in (("business", account.business_owner_id),
                                          ("technical", account.technical_owner_id)) if owner == user_id]
        before = public(schemas.ServiceAccountPublic, account)
        account.reassign_by = deadline
        account.flagged_reason = f"{' and '.join(roles)} owner {who} departed ({reason})"
        await session.flush()
        await session.refresh(account)
        await record_event(session, actor=actor, action="service_account.flagged", target_type="service_account",
                           target_id=str(account.id), before=before,
                           after=public(schemas.ServiceAccountPublic, account))
        outcome.service_accounts_flagged.append(str(account.id))
    credentials = (await session.scalars(
        select(ApiCredential).where(ApiCredential.revoked_at.is_(None), ApiCredential.reassign_by.is_(None),
                                    or_(ApiCredential.owner_id == user_id, ApiCredential.user_id == user_id))
        .with_for_update())).all()
    for credential in credentials:
        before = public(schemas.CredentialPublic, credential)
        credential.reassign_by = deadline
        credential.flagged_reason = f"owner {who} departed ({reason})"
        await session.flush()
        await record_event(session, actor=actor, action="credential.flagged", target_type="credential",
                           target_id=str(credential.id), before=before,
                           after=public(schemas.CredentialPublic, credential))
        outcome.credentials_flagged.append(str(credential.id))
    return outcome


async def close_project(session: AsyncSession, *, actor: Actor, project_id: uuid.UUID) -> tuple[Project, int]:
    """Close a project and revoke every live token that carries it (one ``token.revoked`` event each,
    with the project as the reason); its usage records are kept. Closing again revokes what may still
    be live, which is nothing. Returns the project and the number of tokens revoked."""
    project = await projects.close_project(session, actor=actor, project_id=project_id)
    revoked = await lifecycle.revoke_where(session, actor=actor, reason=f"project {project.name} closed",
                                           project_id=project.id)
    return project, revoked


async def team_deleted(session: AsyncSession, *, actor: Actor, team_id: uuid.UUID, reason: str) -> int:
    """A team is going away: every live token acting for it is revoked and its active service accounts
    are disabled (they act for no other team), one event each. Returns the tokens revoked."""
    revoked = await lifecycle.revoke_where(session, actor=actor, reason=reason, team_id=team_id)
    accounts = (await session.scalars(select(ServiceAccount).where(
        ServiceAccount.team_id == team_id, ServiceAccount.status == "active").with_for_update())).all()
    for account in accounts:
        await _disable(session, actor, account, reason)
    return revoked


async def _disable(session: AsyncSession, actor: Actor, account: ServiceAccount, reason: str) -> None:
    """Disable a service account (the gateway refuses its tokens at once), with its event."""
    before = public(schemas.ServiceAccountPublic, account)
    account.status = "disabled"
    await session.flush()
    await session.refresh(account)
    await record_event(session, actor=actor, action="service_account.disabled", target_type="service_account",
                       target_id=str(account.id), before=before,
                       after=public(schemas.ServiceAccountPublic, account) | {"reason": reason})


async def clear_if_reassigned(session: AsyncSession, *, actor: Actor, row: ServiceAccount | ApiCredential) -> bool:
    """Clear a reassignment flag once every owner that runs the thing is an active person again; an
    event records it. True when the flag was cleared."""
    if row.reassign_by is None:
        return False
    owners: tuple[uuid.UUID | None, ...]
    if isinstance(row, ServiceAccount):
        owners = (row.business_owner_id, row.technical_owner_id)
        published: type[schemas.Output] = schemas.ServiceAccountPublic
        target_type, action = "service_account", "service_account.reassigned"
    else:
        owners = (row.owner_id,)
        published, target_type, action = schemas.CredentialPublic, "credential", "credential.reassigned"
    for owner_id in owners:
        if owner_id is None or departed(await session.get(User, owner_id)):
            return False
    before = public(published, row)
    row.reassign_by = None
    row.flagged_reason = None
    await session.flush()
    await session.refresh(row)
    await record_event(session, actor=actor, action=action, target_type=target_type, target_id=str(row.id),
                       before=before, after=public(published, row))
    return True


# -- the duty -------------------------------------------------------------------------------------


async def _end_dates(session: AsyncSession, today: date) -> int:
    """Deprovision people whose ``end_date`` has passed (their last day was before today)."""
    people = (await session.scalars(
        select(User).where(User.end_date < today, User.status != "deprovisioned", User.deleted_at.is_(None))
        .with_for_update(skip_locked=True).limit(_BATCH))).all()
    for user in people:
        before = public(schemas.UserPublic, user)
        user.status = "deprovisioned"
        await session.flush()
        reason = f"{user.employment_type} end_date {user.end_date.isoformat() if user.end_date else ''} passed"
        done = await user_departed(session, actor=SYSTEM, user_id=user.id, reason=reason)
        await session.refresh(user)
        await record_event(session, actor=SYSTEM, action="user.deprovisioned", target_type="user",
                           target_id=str(user.id), before=before,
                           after=public(schemas.UserPublic, user) | {"reason": reason,
                                                                     "tokens_revoked": done.tokens_revoked})
    return len(people)


async def _overdue_reassignments(session: AsyncSession, now: datetime) -> int:
    accounts = (await session.scalars(
        select(ServiceAccount).where(ServiceAccount.status == "active", ServiceAccount.reassign_by <= now)
        .with_for_update(skip_locked=True).limit(_BATCH))).all()
    for account in accounts:
        deadline = account.reassign_by.isoformat() if account.reassign_by else None
        await _disable(session, SYSTEM, account, f"not reassigned by {deadline}: {account.flagged_reason}")
    credentials = (await session.scalars(
        select(ApiCredential).where(ApiCredential.revoked_at.is_(None), ApiCredential.reassign_by <= now)
        .with_for_update(skip_locked=True).limit(_BATCH))).all()
    for credential in credentials:
        before = public(schemas.CredentialPublic, credential)
        credential.revoked_at = now
        await session.flush()
        await record_event(session, actor=SYSTEM, action="credential.revoked", target_type="credential",
                           target_id=str(credential.id), before=before,
                           after=public(schemas.CredentialPublic, credential)
                           | {"reason": f"not reassigned by {before['reassign_by']}: {credential.flagged_reason}"})
    return len(accounts) + len(credentials)


async def _unrotated(session: AsyncSession) -> int:
    """Revoke live tokens past their rotation due date (``created_at`` + the profile's
    ``rotation_days``) by more than the profile's opt-in ``rotation_disable_days``."""
    due = Token.created_at + func.make_interval(0, 0, 0, AccessProfile.rotation_days)
    rows = (await session.execute(
        select(Token.id, due.label("due"), AccessProfile.rotation_disable_days)
        .join(Team, Team.id == Token.team_id)
        .join(AccessProfile, AccessProfile.id == Team.profile_id)
        .where(AccessProfile.rotation_days.is_not(None), AccessProfile.rotation_disable_days.is_not(None),
               Token.revoked_at.is_(None), or_(Token.expires_at.is_(None), Token.expires_at > func.now()),
               due + func.make_interval(0, 0, 0, AccessProfile.rotation_disable_days) < func.now())
        .limit(_BATCH))).all()
    for token_id, due_at, days in rows:
        await lifecycle.revoke(session, actor=ROTATION, token_id=token_id,
                               reason=f"not rotated: due {due_at.date().isoformat()}, revoked {days} days past it")
    return len(rows)


async def run(session: AsyncSession, *, now: datetime | None = None) -> dict[str, Any]:
    """One round of the duty, in the caller's transaction; what it did, by kind."""
    moment = now or datetime.now(UTC)
    return {"ended": await _end_dates(session, moment.date()),
            "disabled": await _overdue_reassignments(session, moment),
            "unrotated_revoked": await _unrotated(session)}
