"""SCIM users and groups backed by Keyward's users, teams and memberships.

* ``userName`` is the user's login (stored in ``users.email``, unique case-insensitively); the rest of
  the SCIM document is kept as sent (validated by ``scim2-models``) so GET returns what the IdP wrote.
* ``active: false`` (PATCH or PUT) or DELETE deprovisions: in the same transaction the user becomes
  inactive and every token they own is revoked, with a ``scim.deprovision`` event naming the SCIM
  connection. Reactivation restores the account but never resurrects a token.
* Groups are teams; adding a member grants the team's access profile, removing one narrows their
  tokens for that team at once (authz hears about it through NOTIFY).
* Each connection sees and changes only what it provisioned: its own users and groups, and as group
  members only its own users. People an admin created, or another IdP pushed, are invisible to it
  (a 404, or a ``uniqueness`` conflict naming the way out) until an admin hands them over
  (``POST /api/v1/scim-connections/{id}/adopt``). So one IdP can never deprovision, rename or
  enlist someone it does not manage.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from scim2_models import Context, EnterpriseUser, Group, User
from sqlalchemy import ColumnElement, and_, delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.audit.events import Actor, record_event
from controlplane.models import Membership, Team
from controlplane.models import User as UserRow
from controlplane.scim.errors import ScimError
from controlplane.scim.filters import CORE_GROUP, CORE_USER, ENTERPRISE, Column, Translator, member_relation
from controlplane.services import offboarding

USER_SCHEMAS = {CORE_USER}
GROUP_SCHEMAS = {CORE_GROUP}
_USER_MODEL = User[EnterpriseUser]


@dataclass(frozen=True)
class Connection:
    id: uuid.UUID
    name: str

    @property
    def actor(self) -> Actor:
        return Actor(name=f"scim:{self.name}", mechanism="scim")


def _stamp(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _meta(kind: str, row_id: uuid.UUID, created: datetime, modified: datetime, base: str) -> dict[str, Any]:
    return {"resourceType": kind, "created": _stamp(created), "lastModified": _stamp(modified),
            "location": f"{base}/{kind}s/{row_id}", "version": f'W/"{int(modified.timestamp() * 1_000_000)}"'}


async def search(session: AsyncSession, *, model: Any, live: ColumnElement[bool], translator: Translator,
                 filter_text: str | None, start: int, count: int) -> tuple[list[Any], int]:
    """One page of live users or groups matching a SCIM filter, in a stable order, and the total."""
    query = select(model).where(live)
    if filter_text:
        query = query.where(translator.where(filter_text))
    total = await session.scalar(select(func.count()).select_from(query.subquery()))
    rows = (await session.scalars(query.order_by(model.created_at, model.id).offset(start - 1).limit(count))).all()
    return list(rows), total or 0


# -- users ----------------------------------------------------------------------------------------


def _validate_user(payload: Any, context: Context) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise ScimError.invalid_syntax("the body must be a JSON object")
    payload = {k: v for k, v in payload.items() if k not in ("meta", "groups", "id")}  # read-only, ignored
    try:
        model = _USER_MODEL.model_validate(payload, scim_ctx=context)
    except ValidationError as exc:
        raise ScimError.invalid_value(f"invalid User: {exc.errors()[0]['msg']} at {exc.errors()[0]['loc']}") from exc
    if not model.user_name:
        raise ScimError.invalid_value("userName is required")
    return model.model_dump(scim_ctx=Context.RESOURCE_REPLACEMENT_RESPONSE)


async def teams_of(session: AsyncSession, user_ids: list[uuid.UUID]) -> dict[uuid.UUID, list[tuple[Any, str]]]:
    """Each user's teams, for many users in one query (a list page renders without N+1 queries)."""
    found: dict[uuid.UUID, list[tuple[Any, str]]] = {user_id: [] for user_id in user_ids}
    rows = await session.execute(
        select(Membership.user_id, Team.id, Team.name).join(Team, Team.id == Membership.team_id)
        .where(Membership.user_id.in_(user_ids), Team.deleted_at.is_(None)).order_by(Team.name)
    )
    for user_id, team_id, name in rows:
        found[user_id].append((team_id, name))
    return found


async def user_document(session: AsyncSession, user: UserRow, base: str,
                        teams: list[tuple[Any, str]] | None = None) -> dict[str, Any]:
    attributes = dict(user.scim_attributes or {})
    if teams is None:
        teams = (await teams_of(session, [user.id]))[user.id]
    schemas = [CORE_USER] + ([ENTERPRISE] if ENTERPRISE in attributes else [])
    document = {**attributes, "schemas": schemas, "id": str(user.id), "userName": user.email,
                "active": user.status == "active"}
    if user.external_id:
        document["externalId"] = user.external_id
    if user.display_name and "displayName" not in document:
        document["displayName"] = user.display_name
    if teams:
        document["groups"] = [{"value": str(team_id), "display": name, "type": "direct"} for team_id, name in teams]
    document["meta"] = _meta("User", user.id, user.created_at, user.updated_at, base)
    return document


async def _user_named(session: AsyncSession, user_name: str, exclude: uuid.UUID | None = None) -> UserRow | None:
    query = select(UserRow).where(func.lower(UserRow.email) == user_name.lower(), UserRow.deleted_at.is_(None))
    if exclude is not None:
        query = query.where(UserRow.id != exclude)
    return await session.scalar(query)


async def _live(session: AsyncSession, connection: Connection, model: Any, kind: str, ident: str) -> Any:
    """The row ``ident`` names, if it exists, was not deleted through SCIM and belongs to this
    connection; a SCIM 404 otherwise (another owner's row is not this connection's to see)."""
    try:
        key = uuid.UUID(ident)
    except ValueError as exc:
        raise ScimError.not_found(f"{kind} {ident} not found") from exc
    row = await session.get(model, key)
    if row is None or row.deleted_at is not None or row.scim_connection_id != connection.id:
        raise ScimError.not_found(f"{kind} {ident} not found")
    return row


def _taken(kind: str, name: str, row: Any, connection: Connection) -> ScimError:
    if row.scim_connection_id == connection.id:
        return ScimError.uniqueness(f"{kind} {name} is taken")
    return ScimError.uniqueness(f"{kind} {name} exists in Keyward but was not provisioned by this connection; "
                                "an admin can hand it over (POST /api/v1/scim-connections/{id}/adopt)")


async def get_user(session: AsyncSession, connection: Connection, user_id: str) -> UserRow:
    user: UserRow = await _live(session, connection, UserRow, "User", user_id)
    return user


def _name_parts(attributes: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
    name = attributes.get("name") or {}
    display = attributes.get("displayName") or name.get("formatted")
    if not display and (name.get("givenName") or name.get("familyName")):
        display = " ".join(p for p in (name.get("givenName"), name.get("familyName")) if p)
    return display, name.get("givenName"), name.get("familyName")


async def create_user(session: AsyncSession, connection: Connection, payload: Any) -> UserRow:
    attributes = _validate_user(payload, Context.RESOURCE_CREATION_REQUEST)
    user_name = attributes["userName"]
    if (existing := await _user_named(session, user_name)) is not None:
        raise _taken("userName", user_name, existing, connection)
    display, given, family = _name_parts(attributes)
    active = attributes.get("active", True) is not False
    user = UserRow(id=uuid.uuid4(), email=user_name, display_name=display, given_name=given, family_name=family,
                   external_id=attributes.get("externalId"), status="active" if active else "deprovisioned",
                   scim_connection_id=connection.id, scim_attributes=_stored(attributes))
    session.add(user)
    await session.flush()
    await session.refresh(user)
    await record_event(session, actor=connection.actor, action="user.created", target_type="user",
                       target_id=str(user.id), after={"userName": user.email, "active": active,
                                                      "externalId": user.external_id})
    return user


def _stored(attributes: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attributes.items() if k not in ("schemas", "id", "meta", "groups", "userName",
                                                              "active", "externalId", "password")}


async def replace_user(session: AsyncSession, connection: Connection, user: UserRow, payload: Any) -> UserRow:
    attributes = _validate_user(payload, Context.RESOURCE_REPLACEMENT_REQUEST)
    user_name = attributes["userName"]
    if (existing := await _user_named(session, user_name, exclude=user.id)) is not None:
        raise _taken("userName", user_name, existing, connection)
    before = {"userName": user.email, "active": user.status == "active", "externalId": user.external_id}
    display, given, family = _name_parts(attributes)
    user.email, user.display_name, user.given_name, user.family_name = user_name, display, given, family
    user.external_id = attributes.get("externalId")
    user.scim_attributes = _stored(attributes)
    await _set_active(session, connection, user, attributes.get("active", True) is not False)
    await session.flush()
    await session.refresh(user)
    await record_event(session, actor=connection.actor, action="user.updated", target_type="user",
                       target_id=str(user.id), before=before,
                       after={"userName": user.email, "active": user.status == "active",
                              "externalId": user.external_id})
    return user


async def _set_active(session: AsyncSession, connection: Connection, user: UserRow, active: bool) -> None:
    """Deactivation deprovisions whatever the user's state (an admin may have suspended them first) and
    revokes every live token; reactivation undoes only a deprovisioning and never revives a token. An
    admin's suspension is the admin's to lift: the IdP saying "active" does not lift it."""
    if not active:
        was = user.status
        user.status = "deprovisioned"
        await session.flush()
        departure = await offboarding.user_departed(session, actor=connection.actor, user_id=user.id,
                                                    reason=f"deprovisioned by SCIM connection {connection.name}")
        revoked = departure.tokens_revoked
        if was != "deprovisioned" or revoked:
            await record_event(session, actor=connection.actor, action="scim.deprovision", target_type="user",
                               target_id=str(user.id),
                               after={"tokens_revoked": revoked, "was": was,
                                      "service_accounts_flagged": departure.service_accounts_flagged,
                                      "credentials_flagged": departure.credentials_flagged})
    elif user.status == "deprovisioned":
        user.status = "active"  # old tokens stay revoked: reactivation never resurrects them
        await record_event(session, actor=connection.actor, action="scim.reactivate", target_type="user",
                           target_id=str(user.id))


async def delete_user(session: AsyncSession, connection: Connection, user: UserRow) -> None:
    await _set_active(session, connection, user, False)
    user.deleted_at = datetime.now(UTC)
    # Free the userName for a later create; the audit trail keeps the original.
    original = user.email
    user.email = f"{original}#deleted-{user.id}"
    await session.execute(delete(Membership).where(Membership.user_id == user.id))
    await session.flush()
    await record_event(session, actor=connection.actor, action="user.deleted", target_type="user",
                       target_id=str(user.id), before={"userName": original})


USER_FILTER = Translator(
    columns={
        "id": Column("users.id", kind="uuid"),
        "userName": Column("users.email"),
        "externalId": Column("users.external_id", case_exact=True),
        "active": Column("users.status", kind="active"),
        "displayName": Column("users.display_name"),
        "name.givenName": Column("users.given_name"),
        "name.familyName": Column("users.family_name"),
        "meta.created": Column("users.created_at", kind="datetime"),
        "meta.lastModified": Column("users.updated_at", kind="datetime"),
    },
    json_column="users.scim_attributes",
    allowed={"title", "nickName", "profileUrl", "userType", "preferredLanguage", "locale", "timezone", "name",
             "emails", "phoneNumbers", "ims", "photos", "addresses", "entitlements", "roles", "x509Certificates",
             "displayName"},
    extension=(ENTERPRISE, {"employeeNumber", "costCenter", "organization", "division", "department", "manager"}),
    relations={},
)


# -- groups ---------------------------------------------------------------------------------------


GROUP_FILTER = Translator(
    columns={
        "id": Column("teams.id", kind="uuid"),
        "displayName": Column("teams.name"),
        "externalId": Column("teams.external_id", case_exact=True),
        "meta.created": Column("teams.created_at", kind="datetime"),
        "meta.lastModified": Column("teams.updated_at", kind="datetime"),
    },
    json_column="'{}'::jsonb",
    allowed=set(),
    extension=None,
    relations={"members": member_relation},
)


async def group_document(session: AsyncSession, team: Team, base: str, *, members: bool = True) -> dict[str, Any]:
    document: dict[str, Any] = {"schemas": [CORE_GROUP], "id": str(team.id), "displayName": team.name}
    if team.external_id:
        document["externalId"] = team.external_id
    if members:
        rows = (await session.execute(
            select(UserRow.id, UserRow.email).join(Membership, Membership.user_id == UserRow.id)
            .where(Membership.team_id == team.id).order_by(UserRow.email)
        )).all()
        document["members"] = [{"value": str(uid), "display": email, "$ref": f"{base}/Users/{uid}", "type": "User"}
                               for uid, email in rows]
    document["meta"] = _meta("Group", team.id, team.created_at, team.updated_at, base)
    return document


async def get_group(session: AsyncSession, connection: Connection, group_id: str) -> Team:
    team: Team = await _live(session, connection, Team, "Group", group_id)
    return team


def _validate_group(payload: Any, context: Context) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise ScimError.invalid_syntax("the body must be a JSON object")
    payload = {k: v for k, v in payload.items() if k not in ("meta", "id")}
    # Entra ID adds its own schema URN to groups; what matters is the core Group schema.
    payload["schemas"] = [CORE_GROUP]
    try:
        model = Group.model_validate(payload, scim_ctx=context)
    except ValidationError as exc:
        raise ScimError.invalid_value(f"invalid Group: {exc.errors()[0]['msg']} at {exc.errors()[0]['loc']}") from exc
    if not model.display_name:
        raise ScimError.invalid_value("displayName is required")
    return {"displayName": model.display_name, "externalId": model.external_id,
            "members": [m.value for m in (model.members or []) if m.value] if model.members is not None else None}


async def _team_named(session: AsyncSession, name: str, exclude: uuid.UUID | None = None) -> Team | None:
    query = select(Team).where(func.lower(Team.name) == name.lower())
    if exclude is not None:
        query = query.where(Team.id != exclude)
    return await session.scalar(query)


async def create_group(session: AsyncSession, connection: Connection, payload: Any) -> Team:
    fields = _validate_group(payload, Context.RESOURCE_CREATION_REQUEST)
    if (existing := await _team_named(session, fields["displayName"])) is not None:
        raise _taken("displayName", fields["displayName"], existing, connection)
    team = Team(id=uuid.uuid4(), name=fields["displayName"], external_id=fields["externalId"],
                scim_connection_id=connection.id)
    session.add(team)
    await session.flush()
    await session.refresh(team)
    await record_event(session, actor=connection.actor, action="team.created", target_type="team",
                       target_id=str(team.id), after={"displayName": team.name, "externalId": team.external_id})
    if fields["members"]:
        await set_members(session, connection, team, fields["members"])
    return team


async def set_members(session: AsyncSession, connection: Connection, team: Team, wanted: list[str]) -> None:
    """Make the team's members exactly ``wanted`` (user ids), one event per change."""
    wanted_ids: set[uuid.UUID] = set()
    for value in wanted:
        try:
            wanted_ids.add(uuid.UUID(str(value)))
        except ValueError as exc:
            raise ScimError.invalid_value(f"member {value!r} is not a user id") from exc
    existing_users = set((await session.scalars(
        select(UserRow.id).where(UserRow.id.in_(wanted_ids), UserRow.deleted_at.is_(None),
                                 UserRow.scim_connection_id == connection.id))).all())
    unknown = wanted_ids - existing_users
    if unknown:
        raise ScimError.invalid_value(f"unknown member(s): {', '.join(sorted(map(str, unknown)))}")
    current = set((await session.scalars(select(Membership.user_id).where(Membership.team_id == team.id))).all())
    for user_id in sorted(wanted_ids - current):
        session.add(Membership(team_id=team.id, user_id=user_id, role="member"))
        await record_event(session, actor=connection.actor, action="team.member_set", target_type="team",
                           target_id=str(team.id), after={"user_id": str(user_id), "role": "member"})
    removed = current - wanted_ids
    if removed:
        await session.execute(delete(Membership).where(Membership.team_id == team.id,
                                                       Membership.user_id.in_(removed)))
        for user_id in sorted(removed):
            await record_event(session, actor=connection.actor, action="team.member_removed", target_type="team",
                               target_id=str(team.id), before={"user_id": str(user_id)})
    team.updated_at = datetime.now(UTC)
    await session.flush()


async def replace_group(session: AsyncSession, connection: Connection, team: Team, payload: Any) -> Team:
    fields = _validate_group(payload, Context.RESOURCE_REPLACEMENT_REQUEST)
    if (existing := await _team_named(session, fields["displayName"], exclude=team.id)) is not None:
        raise _taken("displayName", fields["displayName"], existing, connection)
    if (team.name, team.external_id) != (fields["displayName"], fields["externalId"]):
        before = {"displayName": team.name, "externalId": team.external_id}
        team.name, team.external_id = fields["displayName"], fields["externalId"]
        await session.flush()
        await record_event(session, actor=connection.actor, action="team.updated", target_type="team",
                           target_id=str(team.id), before=before,
                           after={"displayName": team.name, "externalId": team.external_id})
    await set_members(session, connection, team, fields["members"] or [])
    await session.refresh(team)
    return team


async def delete_group(session: AsyncSession, connection: Connection, team: Team) -> None:
    """The team stays (its tokens and history refer to it), emptied and unlinked from the IdP."""
    await set_members(session, connection, team, [])
    await offboarding.team_deleted(session, actor=connection.actor, team_id=team.id,
                                   reason=f"group deleted by SCIM connection {connection.name}")
    team.name = f"{team.name}#deleted-{team.id}"  # frees the displayName for a new group
    team.deleted_at = datetime.now(UTC)
    await session.flush()
    await record_event(session, actor=connection.actor, action="team.deleted", target_type="team",
                       target_id=str(team.id))


def live_users(connection: Connection) -> ColumnElement[bool]:
    return and_(UserRow.deleted_at.is_(None), UserRow.scim_connection_id == connection.id)


def live_groups(connection: Connection) -> ColumnElement[bool]:
    return and_(Team.deleted_at.is_(None), Team.scim_connection_id == connection.id)
