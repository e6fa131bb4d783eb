"""The console's credential register (filtered, paged, exported as CSV) and the evidence pack, in the
Reviews & register section. Each mirrors its admin-API route (``api/routes/register.py``,
``evidence.py``): the same role sets, filters and service functions."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal, get_args
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from sqlalchemy.ext.asyncio import AsyncSession

from authz.config import asyncpg_dsn
from controlplane import schemas
from controlplane.api.deps import Cursor, SettingsDep
from controlplane.api.routes.console._base import AUDITORS, READERS, Console, SignedConsole, page, reporting
from controlplane.api.routes.console._forms import an_id, person_id, team_choices
from controlplane.audit import exports
from controlplane.core.db import get_sessionmaker
from controlplane.services import evidence, register
from controlplane.services.rows import offset_cursor, offset_of

router = APIRouter(include_in_schema=False)

PAGE_SIZE = 50
_REGISTER_CURSOR = "register"  # the API's kind, so a page's cursor means the same on both surfaces
_FLAGS = ("orphaned", "overdue", "broader")
_ENVIRONMENTS = get_args(schemas.Environment)
_DOWNLOAD = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def _when(text: object) -> datetime | None:
    return datetime.fromisoformat(text) if isinstance(text, str) and text else None


async def _register_filters(request: Request, console: Console, session: AsyncSession) -> tuple[dict, dict]:
    """The register's filters from the query (the API's, forced to an owner's team) and the query they
    came from (repeatable ``kind`` kept), for the filter form, the pager and the export link."""
    params = request.query_params
    kinds = [kind for kind in params.getlist("kind") if kind in register.KINDS]
    team_id = an_id(params.get("team_id"), "Team")
    if team_id is not None:
        console.caller.require_visible(team_id)
    environment = params.get("environment") if params.get("environment") in _ENVIRONMENTS else None
    owner = params.get("owner", "").strip()
    only = params.getlist("only")
    flags = {flag: flag in only or params.get(flag) == "true" for flag in _FLAGS}
    filters = {"team_id": console.caller.within_team or team_id, "environment": environment,
               "owner_id": await person_id(session, owner, "Owner") if owner else None, "kinds": kinds or None,
               "orphaned": flags["orphaned"], "overdue": flags["overdue"], "broader": flags["broader"]}
    shown = {"team_id": str(team_id) if team_id else None, "environment": environment, "owner": owner or None,
             "kind": kinds, "only": [flag for flag, on in flags.items() if on]}
    return filters, {key: value for key, value in shown.items() if value}


@router.get("/console/register")
async def register_page(request: Request, console: SignedConsole, cursor: Cursor = None) -> HTMLResponse:
    """The credential register, 50 rows a page, only the page's rows built (``register.register_page``)."""
    console.require(READERS)
    async with get_sessionmaker()() as session, session.begin():
        with reporting("The register cannot be shown"):
            filters, shown = await _register_filters(request, console, session)
            offset = offset_of(cursor, _REGISTER_CURSOR)
            rows, total = await register.register_page(session, offset=offset, limit=PAGE_SIZE, **filters)
        team_options = await team_choices(session, console)
    more = offset_cursor(offset + PAGE_SIZE, _REGISTER_CURSOR) if total > offset + PAGE_SIZE else None
    for row in rows:
        row["last_used"] = _when(row.get("last_used_at"))
        row["rotation_due"] = _when((row.get("rotation") or {}).get("due_at"))
    return page(request, console, "console/register.html", title="Credential register", rows=rows, total=total,
                next_cursor=more, filters=shown | ({"cursor": cursor} if cursor else {}),
                export="/console/register/export?" + urlencode(shown, doseq=True), teams=team_options,
                kinds=register.KINDS, environments=_ENVIRONMENTS)


@router.get("/console/register/export")
async def register_export(request: Request, console: SignedConsole,
                          format: Literal["csv", "jsonl"] = "csv") -> Response:
    """Every row matching the filters, as the API's ``format=csv`` export (``register.export``)."""
    console.require(READERS)
    async with get_sessionmaker()() as session, session.begin():
        with reporting("The register cannot be exported"):
            filters, _ = await _register_filters(request, console, session)
            rows = await register.register_rows(session, **filters)
    return StreamingResponse(iter(register.export(rows, format)), media_type=exports.MEDIA_TYPES[format],
                             headers={**_DOWNLOAD, "Content-Disposition": f'attachment; filename="register.{format}"'})


@router.get("/console/evidence")
async def evidence_pack(
    console: SignedConsole, settings: SettingsDep, start: datetime | None = None, end: datetime | None = None,
    verify: Annotated[Literal["incremental", "full", "true", "false"], Query()] = "incremental",
    format: Literal["zip", "json"] = "zip",
) -> Response:
    """The evidence pack, as ``GET /api/v1/evidence`` builds it (admins and auditors). It answers every
    question at once over the whole register and audit store: a few seconds on a large deployment."""
    console.require(AUDITORS)
    async with get_sessionmaker()() as session, session.begin():
        with reporting("The evidence pack was not built"):
            start, end = evidence.check_window(start, end)
            chain = {"true": "incremental", "false": "none"}.get(verify, verify)
            pack = await evidence.build(session, start=start, end=end, verify=chain,
                                        database_url=asyncpg_dsn(settings.database_url),
                                        generated_by=console.caller.actor.name)
    if format == "json":
        return JSONResponse({"manifest": pack.manifest,
                             "files": {name: content.decode() for name, content in pack.files.items()}},
                            headers=_DOWNLOAD)
    stamp = pack.manifest["generated_at"][:19].replace(":", "").replace("-", "")
    return Response(pack.zip(), media_type="application/zip", headers={
        **_DOWNLOAD, "Content-Disposition": f'attachment; filename="keyward-evidence-{stamp}.zip"'})
