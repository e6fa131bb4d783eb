"""The scopes budgets and rate limits attach to (a team, a project, a person, a service account, a
token), the teams each one acts under, and which policy is in effect for it.

One rule, shared with authz's enforcement: what applies to a scope is its own row (``budgets``,
``rate_limits``) if it has one, else the default its team's access profile gives its scope type. A
team and a project act under that team; a service account and a token under the team they belong to
(a token from before teams, under none); a person under every team they belong to, so a person in
two teams can have two defaults, one for the tokens of each. :func:`effective` answers one entry per
profile that gives a default (teams with the same profile share it), or the scope's own row alone.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, get_args

from sqlalchemy import ColumnElement, and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane import schemas
from controlplane.errors import Code, NotFound
from controlplane.models import AccessProfile, Membership, Project, ServiceAccount, Team, Token, User
from controlplane.services.rows import paginate, sort_key

T = TypeVar("T")

SCOPE_TYPES: tuple[str, ...] = get_args(schemas.ScopeType)
#: A scope type's not-found code and the word a message uses for it.
_MISSING = {"team": (Code.TEAM_NOT_FOUND, "team"), "project": (Code.PROJECT_NOT_FOUND, "project"),
            "user": (Code.USER_NOT_FOUND, "user"),
            "service_account": (Code.SERVICE_ACCOUNT_NOT_FOUND, "service account"),
            "token": (Code.TOKEN_NOT_FOUND, "token")}

Key = tuple[str, uuid.UUID]


@dataclass(frozen=True)
class Governing:
    """A team a scope acts under, and that team's access profile (None: the team has none)."""

    team_id: uuid.UUID
    profile: AccessProfile | None


@dataclass(frozen=True)
class Scope:
    type: str
    id: uuid.UUID
    #: The team's, project's or service account's name, the person's email, the token's name.
    name: str
    teams: tuple[Governing, ...]

    @property
    def key(self) -> Key:
        return (self.type, self.id)

    @property
    def team_ids(self) -> list[uuid.UUID]:
        return [governing.team_id for governing in self.teams]


@dataclass
class Effective(Generic[T]):
    """A policy in effect for a scope: ``explicit`` or ``profile:<name>``, the teams whose tokens it
    applies to, and the policy itself."""

    source: str
    team_ids: list[uuid.UUID]
    spec: T
    profile_id: uuid.UUID | None = field(default=None, compare=False)


async def load(session: AsyncSession, ids: Mapping[str, Any]) -> dict[Key, Scope]:
    """The scopes named by ``ids`` (scope type -> a list of ids, or a one-column SELECT of them) that
    exist, each with the teams it acts under and their profiles: a fixed number of queries, however
    many scopes."""
    found: dict[Key, tuple[str, list[uuid.UUID]]] = {}

    def wanted(scope_type: str) -> Any | None:
        chosen = ids.get(scope_type)
        return None if chosen is None or (isinstance(chosen, list | tuple | set) and not chosen) else chosen

    if (chosen := wanted("team")) is not None:
        for team_id, name in (await session.execute(select(Team.id, Team.name).where(Team.id.in_(chosen)))).all():
            found[("team", team_id)] = (name, [team_id])
    owned: tuple[tuple[str, Any, Any], ...] = (("project", Project, Project.name),
                                                ("service_account", ServiceAccount, ServiceAccount.name),
                                                ("token", Token, Token.name))
    for scope_type, model, name_column in owned:
        if (chosen := wanted(scope_type)) is not None:
            rows = (await session.execute(select(model.id, name_column, model.team_id)
                                          .where(model.id.in_(chosen)))).all()
            for scope_id, name, team_id in rows:
                found[(scope_type, scope_id)] = (name, [team_id] if team_id is not None else [])
    if (chosen := wanted("user")) is not None:
        people = (await session.execute(select(User.id, User.email).where(User.id.in_(chosen)))).all()
        for user_id, email in people:
            found[("user", user_id)] = (email, [])
        memberships = (await session.execute(select(Membership.user_id, Membership.team_id)
                                             .where(Membership.user_id.in_(chosen)))).all()
        for user_id, team_id in memberships:
            if ("user", user_id) in found:
                found[("user", user_id)][1].append(team_id)
    team_ids = {team_id for _, teams in found.values() for team_id in teams}
    governing: dict[uuid.UUID, tuple[str, AccessProfile | None]] = {}
    if team_ids:
        rows = (await session.execute(select(Team.id, Team.name, AccessProfile)
                                      .outerjoin(AccessProfile, AccessProfile.id == Team.profile_id)
                                      .where(Team.id.in_(team_ids)))).all()
        governing = {team_id: (name, profile) for team_id, name, profile in rows}

    def under(teams: list[uuid.UUID]) -> tuple[Governing, ...]:  # by team name, as people read them
        known = sorted((t for t in teams if t in governing), key=lambda t: (governing[t][0].lower(), str(t)))
        return tuple(Governing(team_id, governing[team_id][1]) for team_id in known)

    return {key: Scope(key[0], key[1], name, under(teams)) for key, (name, teams) in found.items()}


async def get(session: AsyncSession, *, scope_type: str, scope_id: uuid.UUID) -> Scope:
    """One scope, or a 404 with the code of its kind (``team_not_found``, ``token_not_found``, …)."""
    scope = (await load(session, {scope_type: [scope_id]})).get((scope_type, scope_id))
    if scope is None:
        code, label = _MISSING[scope_type]
        raise NotFound(code, f"No {label} with id {scope_id}.")
    return scope


def visible_to(team_id: uuid.UUID, scope_type: Any, scope_id: Any) -> ColumnElement[bool]:
    """A condition on a table's ``(scope_type, scope_id)`` columns: the scope is ``team_id``'s (the team
    itself, one of its projects, service accounts or tokens, or one of its members)."""
    return or_(
        and_(scope_type == "team", scope_id == team_id),
        and_(scope_type == "project", scope_id.in_(select(Project.id).where(Project.team_id == team_id))),
        and_(scope_type == "service_account",
             scope_id.in_(select(ServiceAccount.id).where(ServiceAccount.team_id == team_id))),
        and_(scope_type == "token", scope_id.in_(select(Token.id).where(Token.team_id == team_id))),
        and_(scope_type == "user", scope_id.in_(select(Membership.user_id).where(Membership.team_id == team_id))),
    )


def effective(scope: Scope, explicit: T | None, defaults: str, parse: Callable[[dict[str, Any]], T]
              ) -> list[Effective[T]]:
    """What is in effect for ``scope``: its own policy (``explicit``) for every team it acts under, or
    else one entry per profile whose ``defaults`` (``budget_defaults``, ``rate_limit_defaults``) give its
    scope type one, with the teams that have that profile."""
    if explicit is not None:
        return [Effective("explicit", scope.team_ids, explicit)]
    by_profile: dict[uuid.UUID, Effective[T]] = {}
    for governing in scope.teams:
        profile = governing.profile
        default = (getattr(profile, defaults) or {}).get(scope.type) if profile is not None else None
        if profile is None or default is None:
            continue
        if profile.id in by_profile:
            by_profile[profile.id].team_ids.append(governing.team_id)
        else:
            by_profile[profile.id] = Effective(f"profile:{profile.name}", [governing.team_id], parse(default),
                                               profile.id)
    return list(by_profile.values())


def within(entries: list[Effective[T]], team_id: uuid.UUID | None) -> list[Effective[T]]:
    """The entries that apply to ``team_id``'s tokens, each narrowed to that team (None: all of them)."""
    if team_id is None:
        return entries
    return [Effective(e.source, [team_id], e.spec, e.profile_id) for e in entries if team_id in e.team_ids]


async def list_own(
    session: AsyncSession, policy: Any, *, within_team: uuid.UUID | None, scope_type: str | None,
    scope_id: uuid.UUID | None, sort: str, cursor: str | None, limit: int,
) -> dict[str, Any]:
    """The scopes' own budgets or rate limits (``policy``: the model, with ``scope_type``, ``scope_id``
    and timestamps), not the profile defaults; a team owner's only over the scopes it sees."""
    query = select(policy)
    if scope_type is not None:
        query = query.where(policy.scope_type == scope_type)
    if scope_id is not None:
        query = query.where(policy.scope_id == scope_id)
    if within_team is not None:
        query = query.where(visible_to(within_team, policy.scope_type, policy.scope_id))
    column, descending = sort_key(sort, {"created_at": policy.created_at, "updated_at": policy.updated_at})
    return await paginate(session, query, sort=column, id_col=policy.id, cursor=cursor, limit=limit,
                          descending=descending)
