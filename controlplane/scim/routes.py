"""The ``/scim/v2`` endpoints. Bodies are read by hand so that every error, malformed JSON included,
comes back in the RFC 7644 Error shape with ``application/scim+json``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from scim2_models import Context, EnterpriseUser, Group, ResourceType, Schema, ServiceProviderConfig, User
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.core.config import Settings, get_settings
from controlplane.core.db import get_sessionmaker
from controlplane.models import Team
from controlplane.models import User as UserRow
from controlplane.scim import store
from controlplane.scim.documents import apply_patch, project
from controlplane.scim.errors import SCIM_JSON, ScimError
from controlplane.scim.filters import CORE_GROUP, CORE_USER, ENTERPRISE
from controlplane.services import revocation, scim_connections

MAX_BODY = 1_048_576
#: The largest page, also the page size when a client gives no count (RFC 7644 §3.4.2.4).
MAX_COUNT = 1000
LIST_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:ListResponse"
SEARCH_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:SearchRequest"

router = APIRouter(prefix="/scim/v2", include_in_schema=False)
_bearer = HTTPBearer(auto_error=False)


async def _session() -> AsyncIterator[AsyncSession]:
    async with get_sessionmaker()() as session, session.begin():
        yield session


async def _connection(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    settings: Annotated[Settings, Depends(get_settings)],
) -> store.Connection:
    presented = credentials.credentials if credentials else ""
    async with get_sessionmaker()() as session, session.begin():
        connection = await scim_connections.authenticate(session, presented, hash_key=settings.hash_key)
    if connection is None:
        raise ScimError(401, "A valid SCIM bearer credential is required.")
    return store.Connection(connection.id, connection.name)


SessionDep = Annotated[AsyncSession, Depends(_session, scope="function")]
#: On a user change that deactivated someone: "applied" once every gateway replica refuses their
#: tokens, else "unconfirmed; replicas=…" (see controlplane.services.revocation).
REVOCATION_HEADER = "Keyward-Revocation"


def _changing(connection: store.Connection, user_id: str) -> Any:
    """A user change in its own transaction, confirmed by every gateway replica if it deactivates."""
    return revocation.revoking(actor=connection.actor, target_type="user", target_id=user_id[:100])
ConnectionDep = Annotated[store.Connection, Depends(_connection)]


def _reply(document: Any, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(document, status_code=status, media_type=SCIM_JSON, headers=headers)


async def _body(request: Request) -> Any:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in ("application/scim+json", "application/json"):
        raise ScimError(415, "Send application/scim+json or application/json.")
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise ScimError(413, f"Request bodies are limited to {MAX_BODY} bytes.")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ScimError.invalid_syntax(f"The body is not valid JSON: {exc}") from exc


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/") + "/scim/v2"


@dataclass
class Search:
    """A query, from the URL (GET) or from a SearchRequest body (POST …/.search)."""

    filter: str | None = None
    start: int = 1
    count: int = MAX_COUNT
    attributes: list[str] | None = None
    excluded: list[str] | None = None

    @classmethod
    def build(cls, filter_text: Any, start: Any, count: Any, attributes: Any, excluded: Any) -> Search:
        try:
            start_index = max(1, int(start if start is not None else 1))
            page = min(MAX_COUNT, max(0, int(count if count is not None else MAX_COUNT)))
        except (TypeError, ValueError) as exc:
            raise ScimError.invalid_value("startIndex and count must be integers") from exc
        if filter_text is not None and not isinstance(filter_text, str):
            raise ScimError.invalid_filter("filter must be a string")
        return cls(filter_text, start_index, page, _names(attributes), _names(excluded))


def _names(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [a.strip() for a in value.split(",") if a.strip()]
    if isinstance(value, list) and all(isinstance(a, str) for a in value):
        return value
    raise ScimError.invalid_value("attributes must be a comma-separated string or a list of names")


def _from_query(request: Request) -> Search:
    query = request.query_params
    return Search.build(query.get("filter"), query.get("startIndex"), query.get("count"),
                        query.get("attributes"), query.get("excludedAttributes"))


async def _from_body(request: Request) -> Search:
    body = await _body(request)
    if not isinstance(body, dict) or SEARCH_SCHEMA not in (body.get("schemas") or []):
        raise ScimError.invalid_syntax(f"a search body must carry the {SEARCH_SCHEMA} schema")
    return Search.build(body.get("filter"), body.get("startIndex"), body.get("count"), body.get("attributes"),
                        body.get("excludedAttributes"))


# -- discovery ------------------------------------------------------------------------------------


@router.get("/ServiceProviderConfig")
async def service_provider_config(connection: ConnectionDep) -> JSONResponse:
    config = ServiceProviderConfig.model_validate({
        "documentationUri": "https://github.com/keyward/keyward#scim",
        "patch": {"supported": True},
        "bulk": {"supported": False, "maxOperations": 0, "maxPayloadSize": 0},
        "filter": {"supported": True, "maxResults": MAX_COUNT},
        "changePassword": {"supported": False},
        "sort": {"supported": False},
        "etag": {"supported": False},
        "authenticationSchemes": [{"type": "oauthbearertoken", "name": "OAuth Bearer Token",
                                   "description": "A per-connection bearer credential (kw_scim_…).",
                                   "primary": True}],
    })
    return _reply(config.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE))


def _resource_types(base: str) -> list[dict[str, Any]]:
    user = ResourceType.model_validate({
        "id": "User", "name": "User", "endpoint": "/Users", "schema": CORE_USER, "description": "User Account",
        "schemaExtensions": [{"schema": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User",
                              "required": False}],
        "meta": {"resourceType": "ResourceType", "location": f"{base}/ResourceTypes/User"}})
    group = ResourceType.model_validate({
        "id": "Group", "name": "Group", "endpoint": "/Groups", "schema": CORE_GROUP, "description": "Group",
        "meta": {"resourceType": "ResourceType", "location": f"{base}/ResourceTypes/Group"}})
    return [t.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE) for t in (user, group)]


def _list(resources: list[dict[str, Any]], total: int, start: int) -> dict[str, Any]:
    return {"schemas": [LIST_SCHEMA], "totalResults": total, "startIndex": start, "itemsPerPage": len(resources),
            "Resources": resources}


@router.get("/ResourceTypes")
async def resource_types(request: Request, connection: ConnectionDep) -> JSONResponse:
    types = _resource_types(_base(request))
    return _reply(_list(types, len(types), 1))


@router.get("/ResourceTypes/{name}")
async def resource_type(name: str, request: Request, connection: ConnectionDep) -> JSONResponse:
    for item in _resource_types(_base(request)):
        if item["id"] == name:
            return _reply(item)
    raise ScimError.not_found(f"ResourceType {name} not found")


def _schemas(base: str) -> list[dict[str, Any]]:
    documents = []
    for model in (User, EnterpriseUser, Group):
        schema: Schema = model.to_schema()
        document = schema.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE)
        document["meta"] = {"resourceType": "Schema", "location": f"{base}/Schemas/{schema.id}"}
        documents.append(document)
    return documents


@router.get("/Schemas")
async def schemas(request: Request, connection: ConnectionDep) -> JSONResponse:
    documents = _schemas(_base(request))
    return _reply(_list(documents, len(documents), 1))


@router.get("/Schemas/{schema_id}")
async def schema(schema_id: str, request: Request, connection: ConnectionDep) -> JSONResponse:
    for document in _schemas(_base(request)):
        if document["id"] == schema_id:
            return _reply(document)
    raise ScimError.not_found(f"Schema {schema_id} not found")


# -- users ----------------------------------------------------------------------------------------


async def _search(request: Request, session: AsyncSession, search: Search, *, model: Any, live: Any,
                  translator: Any, render: Any, prepare: Any = None) -> JSONResponse:
    """One listing for users and groups: filter, count, stable order, page, render, project."""
    rows, total = await store.search(session, model=model, live=live, translator=translator, filter_text=search.filter,
                                     start=search.start, count=search.count)
    render = await prepare(session, rows) if prepare else render
    resources = [project(await render(session, row, _base(request)), search.attributes, search.excluded)
                 for row in rows]
    return _reply(_list(resources, total, search.start))


async def _search_users(request: Request, session: AsyncSession, connection: store.Connection,
                        search: Search) -> JSONResponse:
    async def prepare(session: AsyncSession, rows: Any) -> Any:
        teams = await store.teams_of(session, [row.id for row in rows])

        async def render(session: AsyncSession, user: UserRow, base: str) -> dict[str, Any]:
            return await store.user_document(session, user, base, teams[user.id])

        return render

    return await _search(request, session, search, model=UserRow, live=store.live_users(connection),
                         translator=store.USER_FILTER, render=store.user_document, prepare=prepare)


@router.get("/Users")
async def list_users(request: Request, session: SessionDep, connection: ConnectionDep) -> JSONResponse:
    return await _search_users(request, session, connection, _from_query(request))


@router.post("/Users/.search")
async def search_users(request: Request, session: SessionDep, connection: ConnectionDep) -> JSONResponse:
    return await _search_users(request, session, connection, await _from_body(request))


@router.post("/Users")
async def create_user(request: Request, session: SessionDep, connection: ConnectionDep) -> JSONResponse:
    user = await store.create_user(session, connection, await _body(request))
    document = await store.user_document(session, user, _base(request))
    return _reply(document, 201, {"Location": document["meta"]["location"]})


@router.get("/Users/{user_id}")
async def get_user(user_id: str, request: Request, session: SessionDep, connection: ConnectionDep) -> JSONResponse:
    user = await store.get_user(session, connection, user_id)
    search = _from_query(request)
    return _reply(project(await store.user_document(session, user, _base(request)), search.attributes,
                          search.excluded))


@router.put("/Users/{user_id}")
async def replace_user(user_id: str, request: Request, connection: ConnectionDep) -> JSONResponse:
    body = await _body(request)
    async with _changing(connection, user_id) as change:
        user = await store.get_user(change.session, connection, user_id)
        was = user.status
        user = await store.replace_user(change.session, connection, user, body)
        document = await store.user_document(change.session, user, _base(request))
        change.needed = user.status != was and user.status != "active"
    return _reply(document, headers={REVOCATION_HEADER: change.header()})


@router.patch("/Users/{user_id}")
async def patch_user(user_id: str, request: Request, connection: ConnectionDep) -> JSONResponse:
    body = await _body(request)
    base = _base(request)
    async with _changing(connection, user_id) as change:
        user = await store.get_user(change.session, connection, user_id)
        was = user.status
        current = await store.user_document(change.session, user, base)
        current.pop("meta", None)
        current.pop("groups", None)
        patched = apply_patch(current, body, {CORE_USER}, extensions={ENTERPRISE})
        user = await store.replace_user(change.session, connection, user, patched)
        document = await store.user_document(change.session, user, base)
        change.needed = user.status != was and user.status != "active"
    return _reply(document, headers={REVOCATION_HEADER: change.header()})


@router.delete("/Users/{user_id}")
async def delete_user(user_id: str, connection: ConnectionDep) -> Response:
    async with _changing(connection, user_id) as change:
        user = await store.get_user(change.session, connection, user_id)
        await store.delete_user(change.session, connection, user)
    return Response(status_code=204, headers={REVOCATION_HEADER: change.header()})


# -- groups ---------------------------------------------------------------------------------------


def _wants_members(attributes: list[str] | None, excluded: list[str] | None) -> bool:
    if excluded and "members" in excluded:
        return False
    return not attributes or "members" in attributes


async def _search_groups(request: Request, session: AsyncSession, connection: store.Connection,
                         search: Search) -> JSONResponse:
    members = _wants_members(search.attributes, search.excluded)

    async def render(session: AsyncSession, team: Team, base: str) -> dict[str, Any]:
        return await store.group_document(session, team, base, members=members)

    return await _search(request, session, search, model=Team, live=store.live_groups(connection),
                         translator=store.GROUP_FILTER, render=render)


@router.get("/Groups")
async def list_groups(request: Request, session: SessionDep, connection: ConnectionDep) -> JSONResponse:
    return await _search_groups(request, session, connection, _from_query(request))


@router.post("/Groups/.search")
async def search_groups(request: Request, session: SessionDep, connection: ConnectionDep) -> JSONResponse:
    return await _search_groups(request, session, connection, await _from_body(request))


@router.post("/Groups")
async def create_group(request: Request, session: SessionDep, connection: ConnectionDep) -> JSONResponse:
    team = await store.create_group(session, connection, await _body(request))
    document = await store.group_document(session, team, _base(request))
    return _reply(document, 201, {"Location": document["meta"]["location"]})


@router.get("/Groups/{group_id}")
async def get_group(group_id: str, request: Request, session: SessionDep, connection: ConnectionDep) -> JSONResponse:
    team = await store.get_group(session, connection, group_id)
    search = _from_query(request)
    document = await store.group_document(session, team, _base(request),
                                          members=_wants_members(search.attributes, search.excluded))
    return _reply(project(document, search.attributes, search.excluded))


@router.put("/Groups/{group_id}")
async def replace_group(group_id: str, request: Request, session: SessionDep,
                        connection: ConnectionDep) -> JSONResponse:
    team = await store.get_group(session, connection, group_id)
    team = await store.replace_group(session, connection, team, await _body(request))
    return _reply(await store.group_document(session, team, _base(request)))


@router.patch("/Groups/{group_id}")
async def patch_group(group_id: str, request: Request, session: SessionDep, connection: ConnectionDep) -> Response:
    team = await store.get_group(session, connection, group_id)
    body = await _body(request)
    base = _base(request)
    current = await store.group_document(session, team, base)
    current.pop("meta", None)
    patched = apply_patch(current, body, {CORE_GROUP})
    # Okta re-sends the group's id inside path-less replace values; it must not change.
    if str(patched.get("id", team.id)) != str(team.id):
        raise ScimError.mutability("id is immutable")
    team = await store.replace_group(session, connection, team, patched)
    if request.query_params.get("excludedAttributes") == "members":
        return _reply(await store.group_document(session, team, base, members=False))
    return _reply(await store.group_document(session, team, base))


@router.delete("/Groups/{group_id}")
async def delete_group(group_id: str, session: SessionDep, connection: ConnectionDep) -> Response:
    team = await store.get_group(session, connection, group_id)
    await store.delete_group(session, connection, team)
    return Response(status_code=204)


@router.post("/.search")
async def search_all(request: Request, session: SessionDep, connection: ConnectionDep) -> JSONResponse:
    """A search across users and groups (RFC 7644 §3.4.3). A filter naming an attribute only one type
    has selects from that type; one that neither type knows is an invalidFilter error."""
    search = await _from_body(request)
    found: list[dict[str, Any]] = []
    total = 0
    errors: list[ScimError] = []
    for searcher in (_search_users, _search_groups):
        try:
            reply = await searcher(request, session, connection, Search(search.filter, 1, MAX_COUNT, search.attributes,
                                                            search.excluded))
        except ScimError as exc:
            errors.append(exc)
            continue
        document = json.loads(bytes(reply.body))
        found += document["Resources"]
        total += document["totalResults"]
    if len(errors) == 2:
        raise errors[0]
    page = found[search.start - 1 : search.start - 1 + search.count]
    return _reply(_list(page, total, search.start))


_READ_ONLY = {"ServiceProviderConfig", "ResourceTypes", "Schemas"}


@router.api_route("/{anything:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
async def unknown(anything: str, connection: ConnectionDep) -> Response:
    """Anything else under /scim/v2 is a SCIM error, not the framework's."""
    if anything.split("/")[0] in _READ_ONLY:
        raise ScimError(405, f"/{anything} is read-only")
    raise ScimError.not_found(f"/{anything} is not a SCIM endpoint of this server")
