"""Access profiles: what a team may use (a model catalog per provider and environment, the token
environments, token lifetimes) and the default budgets and rate limits of every scope under it. A
change reaches every token of every team using the profile at once, through the NOTIFY triggers of
migrations 0003 and 0009: narrowing never needs a re-issue.

``rotation_days`` is the rotation cadence of the profile's tokens (the register flags a token not
rotated within it); ``rotation_disable_days``, opt-in and only with a cadence, has the offboarding duty
revoke a token that many days past its rotation due date.

Endpoint permissions and routing are part of the profile too: ``endpoints``, the endpoint families its
teams' tokens may call (tokens may narrow them, never widen); catalog entries may name the ``upstream``
that serves their models, and ``tools`` lists the MCP servers and tools its agents may call. Whatever
names an upstream must name one the gateway is configured with (``KEYWARD_UPSTREAMS``) that serves what
it is used for; that is checked here, where the admin API and the console both come through."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from authz.upstreams import Api, Kind, Upstreams
from controlplane import schemas
from controlplane.audit.events import Actor, record_event
from controlplane.core.config import get_settings
from controlplane.errors import Code, Conflict, Invalid
from controlplane.models import AccessProfile
from controlplane.services import reviews
from controlplane.services.rows import flush_unique, get_or_404, insert_recorded, paginate, public, sort_key


async def get_profile(session: AsyncSession, *, profile_id: uuid.UUID) -> AccessProfile:
    return await get_or_404(session, AccessProfile, profile_id, code=Code.PROFILE_NOT_FOUND, label="access profile")


async def list_profiles(session: AsyncSession, *, sort: str, cursor: str | None, limit: int) -> dict[str, Any]:
    column, descending = sort_key(sort, {"created_at": AccessProfile.created_at,
                                         "name": func.lower(AccessProfile.name)})
    return await paginate(session, select(AccessProfile), sort=column, id_col=AccessProfile.id, cursor=cursor,
                          limit=limit, descending=descending)


def _exists(name: str) -> tuple[Code, str]:
    return Code.PROFILE_EXISTS, f"An access profile named {name} exists."


def _rotation(rotation_days: int | None, rotation_disable_days: int | None) -> None:
    if rotation_disable_days is not None and rotation_days is None:
        raise Invalid(Code.ROTATION_DAYS_REQUIRED,
                      "rotation_disable_days counts from the rotation due date: set rotation_days too.")


def check_catalog(catalog: list[schemas.CatalogEntry], upstreams: Upstreams) -> None:
    """Every upstream a catalog entry names is configured (422 ``upstream_unknown``) and serves the entry's
    API, or for ``*`` some model API (422 ``upstream_wrong_api``)."""
    for index, entry in enumerate(catalog):
        if entry.upstream is None:
            continue
        upstream = upstreams.get(entry.upstream)
        if upstream is None:
            raise Invalid(Code.UPSTREAM_UNKNOWN,
                          f"catalog[{index}] names the upstream {entry.upstream}, which the gateway is not configured "
                          f"with (configured: {', '.join(upstreams.names())}).")
        model_apis = [api.value for api in upstream.apis if api is not Api.MCP]
        if not model_apis or (entry.provider != "*" and entry.provider not in model_apis):
            serves = ", ".join(model_apis) + " APIs" if model_apis else "MCP tools, not models"
            raise Invalid(Code.UPSTREAM_WRONG_API,
                          f"catalog[{index}] offers {entry.provider} models through the upstream {upstream.name}, "
                          f"but that {upstream.kind.value} upstream serves {serves}.")


def check_tools(tools: list[schemas.ToolEntry], upstreams: Upstreams) -> None:
    """Every server a tool entry names is a configured MCP server (422 ``mcp_server_unknown``)."""
    for index, entry in enumerate(tools):
        if upstreams.mcp(entry.server) is None:
            servers = [u.name for u in upstreams.all if u.kind is Kind.MCP]
            raise Invalid(Code.MCP_SERVER_UNKNOWN,
                          f"tools[{index}] names the MCP server {entry.server}, which the gateway is not configured "
                          f"with (MCP servers: {', '.join(servers) or 'none'}).")


async def create_profile(session: AsyncSession, *, actor: Actor, data: schemas.ProfileCreate,
                         upstreams: Upstreams | None = None) -> AccessProfile:
    """``upstreams``: what names in the catalog and the tool catalog are checked against (default: the
    settings' ``KEYWARD_UPSTREAMS``)."""
    if await session.scalar(select(AccessProfile.id).where(func.lower(AccessProfile.name) == data.name.lower())):
        raise Conflict(*_exists(data.name))
    _rotation(data.rotation_days, data.rotation_disable_days)
    configured = upstreams if upstreams is not None else get_settings().upstream_list
    check_catalog(data.catalog, configured)
    check_tools(data.tools, configured)
    fields = data.model_dump(mode="json", exclude_none=False)
    fields["budget_defaults"] = data.budget_defaults.model_dump(mode="json", exclude_none=True)
    fields["rate_limit_defaults"] = data.rate_limit_defaults.model_dump(mode="json", exclude_none=True)
    fields["endpoints"] = schemas.family_values(data.endpoints)
    profile: AccessProfile = await insert_recorded(
        session, AccessProfile(id=uuid.uuid4(), **fields), actor=actor, action="policy.created",
        target_type="profile", published=schemas.ProfilePublic, conflict=_exists(data.name))
    return profile


async def update_profile(session: AsyncSession, *, actor: Actor, profile_id: uuid.UUID,
                         data: schemas.ProfileUpdate, upstreams: Upstreams | None = None) -> AccessProfile:
    """Only what the update gives is checked against ``upstreams``: an upstream the operator has since
    removed does not block an unrelated change (authz refuses the models routed to it meanwhile)."""
    profile = await get_profile(session, profile_id=profile_id)
    before = public(schemas.ProfilePublic, profile)
    configured = upstreams if upstreams is not None else get_settings().upstream_list
    if data.catalog is not None:
        check_catalog(data.catalog, configured)
    if data.tools is not None:
        check_tools(data.tools, configured)
    changes = data.model_dump(mode="json", exclude_unset=True)
    for field in ("budget_defaults", "rate_limit_defaults"):
        if field in changes:  # stored without the scope types that have none
            changes[field] = getattr(data, field).model_dump(mode="json", exclude_none=True)
    if data.endpoints is not None:
        changes["endpoints"] = schemas.family_values(data.endpoints)
    for field, value in changes.items():
        setattr(profile, field, value)
    if profile.default_token_days > profile.max_token_days:
        raise Invalid(Code.PROFILE_DAYS, "default_token_days cannot exceed max_token_days.")
    _rotation(profile.rotation_days, profile.rotation_disable_days)
    await flush_unique(session, *_exists(profile.name))
    await session.refresh(profile)
    await record_event(session, actor=actor, action="policy.changed", target_type="profile",
                       target_id=str(profile.id), before=before, after=public(schemas.ProfilePublic, profile))
    await reviews.on_profile_change(session, actor=actor, profile=profile, before=before)
    return profile
