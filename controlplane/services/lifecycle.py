"""The token lifecycle: mint, list, narrow, rotate with overlap, revoke (one, a user's, a team's),
expire and retire dormant tokens, each step recorded as an event in the transaction that makes it.

The policy rule: a token acts for one team and gets that team's access profile. It is minted for an
active user who belongs to the team, or for an active service account the team owns; its lifetime
is bounded by the profile, its model list can only narrow the profile's catalog and its endpoint
families (null: the profile's, as they change) only the profile's families. It may carry one
of the team's open projects (a service account's token, the account's project unless told otherwise),
which its spend rolls up to. A live token can be narrowed in place; anything wider needs a new token.
Narrowing endpoint families is judged against what the token may call now: its own list within its
profile's current one.

Register fields (purpose, workload, declared secret location, and for a personal token a backup owner:
an active user other than its owner) are set at mint or later, each change an event. A service account
acts in production when it holds a live ``prod`` token: minting one needs its business and technical
owners to be different people, unless an approved, unexpired access exception with the condition
``owners_not_distinct`` covers the account (:func:`require_distinct_owners`).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Select, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from authz.cache import ModelCatalog
from authz.routes import LEGACY_FAMILIES
from controlplane import schemas
from controlplane.audit.events import Actor, record_event
from controlplane.errors import Code, Conflict, Invalid, NotFound
from controlplane.models import AccessException, AccessProfile, Membership, ServiceAccount, Team, Token, User
from controlplane.services import credentials, projects
from controlplane.services.rows import EPOCH, get_or_404, paginate, public, sort_key


def _public(token: Token) -> dict[str, Any]:
    return public(schemas.TokenPublic, token)


async def get_token(session: AsyncSession, *, token_id: uuid.UUID) -> Token:
    return await get_or_404(session, Token, token_id, code=Code.TOKEN_NOT_FOUND, label="token")


async def _team_and_profile(session: AsyncSession, team_id: uuid.UUID) -> tuple[Team, AccessProfile]:
    team = await get_or_404(session, Team, team_id, code=Code.TEAM_NOT_FOUND, label="team")
    if team.deleted_at is not None:
        raise NotFound(Code.TEAM_NOT_FOUND, f"Team {team.id} was deleted: it takes no new tokens.")
    if team.profile_id is None:
        raise Conflict(Code.TEAM_HAS_NO_PROFILE,
                       f"Team {team.name} has no access profile, so its tokens could do nothing.")
    profile = await session.get(AccessProfile, team.profile_id)
    assert profile is not None
    return team, profile


async def resolve_team(session: AsyncSession, data: schemas.TokenCreate) -> uuid.UUID:
    """The team a new token acts for, checking that its owner may act for it."""
    if data.service_account_id is not None:
        account = await get_or_404(session, ServiceAccount, data.service_account_id,
                                   code=Code.SERVICE_ACCOUNT_NOT_FOUND, label="service account")
        if account.status != "active":
            raise Conflict(Code.SERVICE_ACCOUNT_DISABLED, f"Service account {account.name} is disabled.")
        if data.team_id is not None and data.team_id != account.team_id:
            raise Invalid(Code.TEAM_MISMATCH, "A service account's tokens act for the team that owns it.")
        return account.team_id
    assert data.user_id is not None
    owner = await get_or_404(session, User, data.user_id, code=Code.USER_NOT_FOUND, label="user")
    if owner.status != "active":
        raise Conflict(Code.USER_NOT_ACTIVE,
                       f"User {owner.id} is {owner.status}; tokens are only minted for active users.")
    teams = (await session.scalars(select(Membership.team_id).where(Membership.user_id == owner.id))).all()
    if data.team_id is None:
        if len(teams) != 1:
            raise Invalid(Code.TEAM_REQUIRED, f"User {owner.email} belongs to {len(teams)} teams: give team_id.")
        return teams[0]
    if data.team_id not in teams:
        raise Conflict(Code.NOT_A_MEMBER, f"User {owner.email} is not a member of team {data.team_id}.")
    return data.team_id


def _offered(profile: AccessProfile, pattern: str) -> bool:
    """An exact model name must be in the profile's catalog; a pattern narrows at the gateway."""
    if any(c in pattern for c in "*?["):
        return True
    return any(ModelCatalog([entry["pattern"]]).allows(pattern) for entry in profile.catalog)


async def _project(session: AsyncSession, data: schemas.TokenCreate, team_id: uuid.UUID, *,
                   inherit: bool) -> uuid.UUID | None:
    """The project a new token carries: the one asked for, else (``inherit``) its service account's;
    open, and the team's. A rotation's successor keeps its predecessor's, none included."""
    project_id, inherited = data.project_id, None
    if project_id is None and inherit and data.service_account_id is not None:
        account = await session.get(ServiceAccount, data.service_account_id)
        if account is not None and account.project_id is not None:
            project_id, inherited = account.project_id, f"service account {account.name}"
    if project_id is not None:
        await projects.require_open(session, project_id=project_id, team_id=team_id, inherited_from=inherited)
    return project_id


#: The exception condition that lets a production service account keep one person as both owners.
OWNERS_NOT_DISTINCT = "owners_not_distinct"


async def require_distinct_owners(session: AsyncSession, *, account_id: uuid.UUID, business: uuid.UUID,
                                  technical: uuid.UUID, name: str) -> None:
    """A production service account needs a business and a technical owner who are different people,
    unless an approved exception that has not expired says otherwise (a 422 ``owners_not_distinct``)."""
    if business != technical:
        return
    excepted = await session.scalar(select(AccessException.id).where(
        AccessException.subject_type == "service_account", AccessException.subject_id == account_id,
        AccessException.condition == OWNERS_NOT_DISTINCT, AccessException.status == "approved",
        AccessException.expires_at > func.now()).limit(1))
    if excepted is None:
        raise Invalid(Code.OWNERS_NOT_DISTINCT,
                      f"Service account {name} acts in production: its business and technical owners must be "
                      f"different people (or an approved access exception '{OWNERS_NOT_DISTINCT}' must cover it).")


async def has_prod_tokens(session: AsyncSession, account_id: uuid.UUID) -> bool:
    return bool(await session.scalar(select(Token.id).where(
        Token.service_account_id == account_id, Token.environment == "prod", Token.revoked_at.is_(None),
        or_(Token.expires_at.is_(None), Token.expires_at > func.now())).limit(1)))


async def check_backup_owner(session: AsyncSession, *, owner_id: uuid.UUID | None,
                             backup_owner_id: uuid.UUID | None) -> None:
    """A backup owner is for a personal token, and is an active user other than its owner (422
    ``backup_owner_invalid``; an unknown user is a 404)."""
    if backup_owner_id is None:
        return
    if owner_id is None:
        raise Invalid(Code.BACKUP_OWNER_INVALID, "Only a personal token has a backup owner; a service account's "
                                                 "tokens answer to its owners.")
    if backup_owner_id == owner_id:
        raise Invalid(Code.BACKUP_OWNER_INVALID, "The backup owner must be someone other than the token's owner.")
    backup = await get_or_404(session, User, backup_owner_id, code=Code.USER_NOT_FOUND, label="user")
    if backup.status != "active" or backup.deleted_at is not None:
        raise Invalid(Code.BACKUP_OWNER_INVALID, f"User {backup.email} is {backup.status}; a backup owner must be "
                                                 "active.")


async def mint(
    session: AsyncSession, *, actor: Actor, data: schemas.TokenCreate, team_id: uuid.UUID, hash_key: bytes,
    rotated_from: uuid.UUID | None = None,
) -> tuple[Token, str]:
    """Create a token and return it with its secret, which the caller shows once and forgets."""
    await check_backup_owner(session, owner_id=data.user_id, backup_owner_id=data.backup_owner_id)
    if data.service_account_id is not None and data.environment == "prod":
        account = await session.get(ServiceAccount, data.service_account_id)
        if account is not None:
            await require_distinct_owners(session, account_id=account.id, business=account.business_owner_id,
                                          technical=account.technical_owner_id, name=account.name)
    team, profile = await _team_and_profile(session, team_id)
    if data.environment not in profile.environments:
        raise Invalid(Code.ENVIRONMENT_NOT_ALLOWED,
                      f"Team {team.name}'s profile {profile.name} allows {', '.join(profile.environments)} tokens.")
    days = data.expires_in_days or profile.default_token_days
    if days > profile.max_token_days:
        raise Invalid(Code.LIFETIME_TOO_LONG,
                      f"Profile {profile.name} allows tokens of at most {profile.max_token_days} days.")
    missing = [m for m in data.models if not _offered(profile, m)]
    if missing:
        raise Invalid(Code.MODEL_NOT_IN_PROFILE, f"Not in profile {profile.name}: {', '.join(missing)}.")
    # A rotation's successor keeps its predecessor's list as it is: never wider than the predecessor, and
    # the gateway bounds it by the profile's current families anyway.
    if data.endpoints is not None and rotated_from is None:
        outside = [f.value for f in data.endpoints if f.value not in profile.endpoints]
        if outside:
            raise Invalid(Code.ENDPOINT_NOT_IN_PROFILE,
                          f"Profile {profile.name} does not allow {', '.join(outside)} (it allows "
                          f"{', '.join(profile.endpoints)}).")
    project_id = await _project(session, data, team.id, inherit=rotated_from is None)
    issued = credentials.issue(credentials.PAT, hash_key)
    token = Token(
        id=uuid.uuid4(),
        token_hash=issued.token_hash,
        hint=issued.hint,
        name=data.name,
        user_id=data.user_id,
        service_account_id=data.service_account_id,
        team_id=team.id,
        project_id=project_id,
        environment=data.environment,
        models=list(dict.fromkeys(data.models)),
        endpoints=schemas.family_values(data.endpoints) if data.endpoints is not None else None,
        scopes=sorted(set(data.scopes)),
        created_by=actor.name,
        expires_at=datetime.now(UTC) + timedelta(days=days),
        rotated_from=rotated_from,
        purpose=data.purpose,
        workload=data.workload,
        secret_location=data.secret_location,
        backup_owner_id=data.backup_owner_id,
    )
    session.add(token)
    await session.flush()
    await session.refresh(token)
    await record_event(session, actor=actor, action="token.issued", target_type="token", target_id=str(token.id),
                       after=_public(token))
    return token, issued.secret


def list_query(
    *,
    within_team: uuid.UUID | None = None,
    user_id: uuid.UUID | None = None,
    team_id: uuid.UUID | None = None,
    service_account_id: uuid.UUID | None = None,
    environment: str | None = None,
    state: str | None = None,
    name: str | None = None,
) -> Select:
    query = select(Token)
    for column, value in ((Token.team_id, within_team), (Token.user_id, user_id), (Token.team_id, team_id),
                          (Token.service_account_id, service_account_id), (Token.environment, environment)):
        if value is not None:
            query = query.where(column == value)
    now = func.now()
    if state == "active":
        query = query.where(Token.revoked_at.is_(None), or_(Token.expires_at.is_(None), Token.expires_at > now))
    elif state == "revoked":
        query = query.where(Token.revoked_at.is_not(None))
    elif state == "expired":
        query = query.where(Token.revoked_at.is_(None), Token.expires_at <= now)
    if name:
        query = query.where(func.lower(Token.name).contains(name.lower(), autoescape=True))
    return query


def dormant_query(days: int, *, within_team: uuid.UUID | None = None, team_id: uuid.UUID | None = None) -> Select:
    """Live tokens unused for ``days`` (never used: minted more than ``days`` ago)."""
    cutoff = func.now() - timedelta(days=days)
    return list_query(state="active", within_team=within_team, team_id=team_id).where(
        or_(Token.last_used_at < cutoff, (Token.last_used_at.is_(None)) & (Token.created_at < cutoff))
    )


#: The orders a token list can be sorted in; a NULL time sorts as the earliest.
_SORTS = {"created_at": Token.created_at, "name": func.lower(Token.name),
          "last_used_at": func.coalesce(Token.last_used_at, EPOCH),
          "expires_at": func.coalesce(Token.expires_at, EPOCH)}


async def page(session: AsyncSession, query: Select, *, sort: str, cursor: str | None, limit: int) -> dict[str, Any]:
    """One page of a :func:`list_query` or :func:`dormant_query`, sorted by ``sort`` (``-`` descending)."""
    column, descending = sort_key(sort, _SORTS)
    return await paginate(session, query, sort=column, id_col=Token.id, cursor=cursor, limit=limit,
                          descending=descending)


async def revoke(session: AsyncSession, *, actor: Actor, token_id: uuid.UUID, reason: str | None) -> Token:
    """Revoke one token. Revoking a revoked token changes nothing and succeeds (idempotent)."""
    token = await get_token(session, token_id=token_id)
    if token.revoked_at is not None:
        return token
    before = _public(token)
    token.revoked_at = datetime.now(UTC)
    token.revoked_by = actor.name
    token.revoke_reason = reason
    await session.flush()
    await record_event(session, actor=actor, action="token.revoked", target_type="token", target_id=str(token.id),
                       before=before, after=_public(token))
    return token


async def revoke_where(
    session: AsyncSession, *, actor: Actor, reason: str, user_id: uuid.UUID | None = None,
    team_id: uuid.UUID | None = None, service_account_id: uuid.UUID | None = None,
    project_id: uuid.UUID | None = None,
) -> int:
    """Revoke every live token of a user, a team, a service account or a project, one event per token."""
    conditions: list[Any] = [Token.revoked_at.is_(None)]
    for column, value in ((Token.user_id, user_id), (Token.team_id, team_id),
                          (Token.service_account_id, service_account_id), (Token.project_id, project_id)):
        if value is not None:
            conditions.append(column == value)
    assert len(conditions) > 1, "refusing to revoke every token"
    revoked = (
        await session.scalars(
            update(Token).where(*conditions)
            .values(revoked_at=func.now(), revoked_by=actor.name, revoke_reason=reason)
            .returning(Token.id)
        )
    ).all()
    for token_id in revoked:
        await record_event(session, actor=actor, action="token.revoked", target_type="token",
                           target_id=str(token_id), after={"reason": reason})
    return len(revoked)


async def rotate(
    session: AsyncSession, *, actor: Actor, token_id: uuid.UUID, data: schemas.TokenRotate, hash_key: bytes
) -> tuple[Token, str, Token]:
    """Mint a successor with the same attributes; the old token works until the grace deadline."""
    old = await get_token(session, token_id=token_id)
    now = datetime.now(UTC)
    if old.revoked_at is not None or (old.expires_at is not None and old.expires_at <= now):
        raise Conflict(Code.TOKEN_NOT_LIVE, "Only a live token can be rotated; mint a new one instead.")
    if old.team_id is None:
        raise Conflict(Code.TOKEN_WITHOUT_TEAM, "This token predates teams; mint a new one for a team instead.")
    before = _public(old)
    request = schemas.TokenCreate(
        user_id=old.user_id, service_account_id=old.service_account_id, team_id=old.team_id,
        name=data.name or old.name, environment=old.environment, models=old.models, scopes=old.scopes,  # type: ignore[arg-type]
        endpoints=old.endpoints,  # type: ignore[arg-type]
        project_id=old.project_id, purpose=old.purpose, workload=old.workload,
        secret_location=old.secret_location,  # type: ignore[arg-type]
        backup_owner_id=old.backup_owner_id,
    )
    # The successor is a new token: its owner must still be allowed one (active, still in the team).
    await resolve_team(session, request)
    new, secret = await mint(session, actor=actor, data=request, team_id=old.team_id, hash_key=hash_key,
                             rotated_from=old.id)
    deadline = now + timedelta(hours=data.grace_hours)
    if old.expires_at is None or deadline < old.expires_at:
        old.expires_at = deadline
    await session.flush()
    await record_event(session, actor=actor, action="token.rotated", target_type="token", target_id=str(old.id),
                       before=before, after=_public(old) | {"successor": str(new.id)})
    return new, secret, old


def _covered(current: list[str], pattern: str) -> bool:
    # A new entry narrows when the current list already matches it, read as a name: gpt-4o-mini*
    # is inside gpt-4o*; gpt-* is not.
    return ModelCatalog(current).allows(pattern)


async def families_now(session: AsyncSession, token: Token) -> list[str]:
    """The endpoint families the token may call now, as the gateway reckons them: its profile's (a token
    from before teams: the legacy set; a team without a profile: none), narrowed by its own list."""
    if token.team_id is None:
        allowed = {f.value for f in LEGACY_FAMILIES}
    else:
        team = await session.get(Team, token.team_id)
        profile = await session.get(AccessProfile, team.profile_id) if team and team.profile_id else None
        allowed = set(profile.endpoints) if profile is not None else set()
    if token.endpoints is not None:
        allowed &= set(token.endpoints)
    return sorted(allowed)


async def narrow(session: AsyncSession, *, actor: Actor, token_id: uuid.UUID, data: schemas.TokenNarrow) -> Token:
    token = await get_token(session, token_id=token_id)
    if token.revoked_at is not None:
        raise Conflict(Code.TOKEN_REVOKED, "A revoked token cannot be changed.")
    before = _public(token)
    if data.models is not None:
        wider = [m for m in data.models if not _covered(token.models, m)]
        if wider:
            raise Invalid(Code.WIDENING_REQUIRES_NEW_TOKEN,
                          f"{', '.join(wider)} would widen this token; mint a new token instead.")
        token.models = list(dict.fromkeys(data.models))
    if data.endpoints is not None:
        now = await families_now(session, token)
        wider = [f.value for f in data.endpoints if f.value not in now]
        if wider:
            raise Invalid(Code.WIDENING_REQUIRES_NEW_TOKEN,
                          f"{', '.join(wider)} would widen this token (it may call {', '.join(now) or 'nothing'}); "
                          "mint a new token instead.")
        token.endpoints = schemas.family_values(data.endpoints)
    if data.expires_at is not None:
        if token.expires_at is not None and data.expires_at > token.expires_at:
            raise Invalid(Code.WIDENING_REQUIRES_NEW_TOKEN, "A later expiry would widen this token; mint a new one.")
        token.expires_at = max(data.expires_at, datetime.now(UTC))
    await session.flush()
    await record_event(session, actor=actor, action="token.narrowed", target_type="token", target_id=str(token.id),
                       before=before, after=_public(token))
    return token


#: The register fields of a token, as :class:`schemas.TokenUpdate` names them.
REGISTER_FIELDS = ("purpose", "workload", "secret_location", "backup_owner_id")


async def update_token(session: AsyncSession, *, actor: Actor, token_id: uuid.UUID, data: schemas.TokenUpdate) -> Token:
    """Narrow a live token (``token.narrowed``) and/or change its register fields (``token.updated``)."""
    given = data.model_fields_set
    narrowed = [name for name in ("models", "endpoints", "expires_at") if name in given]
    if narrowed:
        await narrow(session, actor=actor, token_id=token_id,
                     data=schemas.TokenNarrow(**{name: getattr(data, name) for name in narrowed}))
    token = await get_token(session, token_id=token_id)
    changes = {name: getattr(data, name) for name in REGISTER_FIELDS if name in given}
    if not changes:
        return token
    if token.revoked_at is not None:
        raise Conflict(Code.TOKEN_REVOKED, "A revoked token cannot be changed.")
    if changes.get("backup_owner_id") is not None:
        await check_backup_owner(session, owner_id=token.user_id, backup_owner_id=changes["backup_owner_id"])
    before = _public(token)
    for name, value in changes.items():
        setattr(token, name, value)
    await session.flush()
    await record_event(session, actor=actor, action="token.updated", target_type="token", target_id=str(token.id),
                       before=before, after=_public(token))
    return token


# -- background duties ----------------------------------------------------------------------------

SYSTEM = Actor(name="system:lifecycle", mechanism="system")


async def record_expirations(session: AsyncSession) -> int:
    """One ``token.expired`` event per token whose expiry passed (rotations end this way too)."""
    expired = (
        await session.scalars(
            select(Token).where(Token.revoked_at.is_(None), Token.expires_at <= func.now(),
                                Token.expired_recorded_at.is_(None))
            .with_for_update(skip_locked=True).limit(1000)
        )
    ).all()
    for token in expired:
        token.expired_recorded_at = datetime.now(UTC)
        await record_event(session, actor=SYSTEM, action="token.expired", target_type="token",
                           target_id=str(token.id),
                           after={"expires_at": token.expires_at.isoformat() if token.expires_at else None})
    return len(expired)


async def retire_dormant(session: AsyncSession) -> int:
    """Revoke tokens that stayed unused past their profile's opt-in ``dormant_disable_days``."""
    rows = (
        await session.execute(
            select(Token.id, AccessProfile.dormant_disable_days)
            .join(Team, Team.id == Token.team_id)
            .join(AccessProfile, AccessProfile.id == Team.profile_id)
            .where(
                AccessProfile.dormant_disable_days.is_not(None),
                Token.revoked_at.is_(None),
                or_(Token.expires_at.is_(None), Token.expires_at > func.now()),
                func.coalesce(Token.last_used_at, Token.created_at)
                < func.now() - func.make_interval(0, 0, 0, AccessProfile.dormant_disable_days),
            )
            .limit(1000)
        )
    ).all()
    actor = Actor(name="system:dormant-policy", mechanism="system")
    for token_id, days in rows:
        await revoke(session, actor=actor, token_id=token_id, reason=f"dormant for {days} days")
    return len(rows)
